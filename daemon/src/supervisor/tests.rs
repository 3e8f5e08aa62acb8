//! The supervisor's decisions against the fake host: stop escalation (with tokio's paused
//! clock, so the profile's timeouts are checked exactly, in milliseconds), re-adoption,
//! recovery from cgroups, paging, and the errors' wire form. What only the kernel can show
//! (real pidfds, cgroups, users) is left to the integration tests.

use super::recovery::{RecoveryRules, adopt, vet};
use super::*;
use crate::host::fake::{Event, FakeHost, Proc};
use crate::state::{RECORD_VERSION, Record};
use crate::tree;
use spawnd_protocol::{ErrorKind, ErrorReply};
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use tokio::time::Instant;

const HUB: u32 = 990;
const ALICE: u32 = 1001;
const BOB: u32 = 1002;
const TIMEOUTS: StopTimeouts = StopTimeouts {
    interrupt: Duration::from_secs(30),
    term: Duration::from_secs(5),
    kill: Duration::from_secs(2),
};
const CGROUPS: &str = "/fake/cgroup/spawnd";

fn process_groups() -> TreeMode {
    TreeMode::ProcessGroup {
        reason: "unit test".into(),
    }
}

fn cgroups() -> TreeMode {
    TreeMode::Cgroup {
        base: PathBuf::from(CGROUPS),
    }
}

/// A state directory of its own for each test.
fn state_dir() -> StateDir {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("spawnd-sup-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    StateDir::open(&dir).expect("a temporary state directory")
}

fn supervisor(host: &Arc<FakeHost>, tree: TreeMode) -> Arc<Supervisor> {
    Arc::new(Supervisor::with_host(tree, state_dir(), host.clone()))
}

fn rules() -> RecoveryRules {
    RecoveryRules {
        min_uid: 1000,
        hub_uid: HUB,
        log_dir: PathBuf::from("/fake/log"),
        default_timeouts: TIMEOUTS,
    }
}

fn alice() -> ServerId {
    ServerId::new("alice", "")
}

fn new_server(id: &ServerId, uid: u32, owner_uid: u32) -> NewServer {
    NewServer {
        id: id.clone(),
        uid,
        owner_uid,
        profile: "default".into(),
        port: None,
        log_path: PathBuf::from("/fake/log/x.log"),
        timeouts: TIMEOUTS,
    }
}

/// Reserves and launches `id` as the daemon's child `pid` (on the fake host already).
fn launch(sup: &Arc<Supervisor>, id: &ServerId, pid: i32, cgroup: Option<PathBuf>) -> u64 {
    let reservation = sup
        .reserve(new_server(id, ALICE, HUB))
        .expect("the name is free");
    let placeholder = std::fs::File::open("/dev/null").expect("/dev/null");
    let launched = Launched {
        pid,
        pidfd: placeholder.into(),
    };
    sup.record_launch(
        &reservation,
        launched,
        cgroup,
        "/fake/log/x.log".into(),
        None,
    );
    reservation.instance
}

fn record(id: &ServerId, instance: u64, pid: i32, start_ticks: u64, uid: u32) -> Record {
    Record {
        version: RECORD_VERSION,
        user: id.user.clone(),
        server: id.server.clone(),
        uid,
        owner_uid: HUB,
        instance,
        pid,
        start_ticks,
        cgroup: None,
        profile: "default".into(),
        port: None,
        log_file: None,
        started_at: 1_700_000_000,
        exit: None,
        exited_at: None,
        interrupt_timeout_ms: 30_000,
        term_timeout_ms: 5_000,
        kill_timeout_ms: 2_000,
    }
}

fn state_of(sup: &Supervisor, id: &ServerId) -> ServerState {
    sup.poll(id, None).expect("a known server").state
}

/// The offset from `start` of each event, with the event.
fn timeline(host: &FakeHost, start: Instant) -> Vec<(Duration, Event)> {
    host.events()
        .into_iter()
        .map(|(at, event)| (at - start, event))
        .collect()
}

fn signal_event(pid: i32, signal: i32) -> Event {
    Event::Signal {
        pid: Pid::from_raw(pid),
        signal,
    }
}

// Stop escalation.

#[tokio::test(start_paused = true)]
async fn stop_sends_sigint_sigterm_then_kills_the_group_and_sigkills_after_the_timeouts() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(400, ALICE).child());
    host.ignore(400, libc::SIGINT);
    host.ignore(400, libc::SIGTERM);
    let sup = supervisor(&host, process_groups());
    let instance = launch(&sup, &alice(), 400, None);

    let start = Instant::now();
    let stopped = sup.stop(&alice(), None, false).await.expect("stopped");

    assert_eq!(stopped, (instance, ExitStatus::Signal(libc::SIGKILL)));
    let seen = timeline(&host, start);
    let secs = Duration::from_secs;
    assert_eq!(
        seen[..4],
        [
            (secs(0), signal_event(400, libc::SIGINT)),
            (secs(30), signal_event(400, libc::SIGTERM)),
            (secs(35), Event::KillGroup(Pid::from_raw(400))),
            (secs(35), signal_event(400, libc::SIGKILL)),
        ],
        "{seen:?}"
    );
    assert!(!host.alive(400));
}

#[tokio::test(start_paused = true)]
async fn stop_now_skips_sigint() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(401, ALICE).child());
    host.ignore(401, libc::SIGTERM);
    let sup = supervisor(&host, process_groups());
    launch(&sup, &alice(), 401, None);

    let start = Instant::now();
    sup.stop(&alice(), None, true).await.expect("stopped");

    assert_eq!(host.signals_to(401), [libc::SIGTERM, libc::SIGKILL]);
    let sigkill_at = timeline(&host, start)
        .into_iter()
        .find(|(_, event)| *event == signal_event(401, libc::SIGKILL))
        .map(|(at, _)| at);
    assert_eq!(sigkill_at, Some(TIMEOUTS.term));
}

#[tokio::test(start_paused = true)]
async fn a_server_that_exits_on_sigint_gets_nothing_more() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(402, ALICE).child());
    let sup = supervisor(&host, process_groups());
    let instance = launch(&sup, &alice(), 402, None);

    let start = Instant::now();
    let stopped = sup.stop(&alice(), None, false).await.expect("stopped");

    assert_eq!(stopped, (instance, ExitStatus::Signal(libc::SIGINT)));
    assert_eq!(host.signals_to(402), [libc::SIGINT]);
    assert!(
        start.elapsed() < TIMEOUTS.interrupt,
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn in_cgroup_mode_the_cgroup_is_killed_before_sigkill_and_removed_after() {
    let host = Arc::new(FakeHost::new());
    let dir = tree::cgroup_dir(Path::new(CGROUPS), "alice", "", 1);
    host.add(Proc::new(403, ALICE).child().in_cgroup(&dir));
    host.add(Proc::new(404, ALICE).session(403).in_cgroup(&dir));
    for pid in [403, 404] {
        host.ignore(pid, libc::SIGINT);
        host.ignore(pid, libc::SIGTERM);
    }
    let sup = supervisor(&host, cgroups());
    launch(&sup, &alice(), 403, Some(dir.clone()));

    sup.stop(&alice(), None, false).await.expect("stopped");

    let events: Vec<Event> = host.events().into_iter().map(|(_, e)| e).collect();
    let position = |wanted: &Event| events.iter().position(|e| e == wanted);
    let killed = position(&Event::KillCgroup(dir.clone())).expect("the cgroup was killed");
    let sigkill = position(&signal_event(403, libc::SIGKILL)).expect("SIGKILL was sent");
    let removed = position(&Event::RemoveCgroup(dir.clone())).expect("the cgroup was removed");
    assert!(killed < sigkill && sigkill < removed, "{events:?}");
    assert!(!host.alive(404), "the rest of the tree is dead too");
    assert!(!host.has_cgroup(&dir));
}

#[tokio::test(start_paused = true)]
async fn a_stop_forgets_the_server_and_its_record() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(405, ALICE).child());
    let sup = supervisor(&host, process_groups());
    launch(&sup, &alice(), 405, None);
    sup.persist(&alice()).expect("recorded");
    assert_eq!(sup.state.load_all().0.len(), 1);

    sup.stop(&alice(), None, false).await.expect("stopped");

    assert!(matches!(
        sup.poll(&alice(), None),
        Err(SupervisorError::NotFound(_))
    ));
    assert!(sup.state.load_all().0.is_empty());
}

#[tokio::test(start_paused = true)]
async fn stopping_a_starting_server_is_busy() {
    let host = Arc::new(FakeHost::new());
    let sup = supervisor(&host, process_groups());
    sup.reserve(new_server(&alice(), ALICE, HUB)).expect("free");

    let error = sup.stop(&alice(), None, false).await.expect_err("busy");

    assert!(matches!(error, SupervisorError::StillStarting(_)));
    let reply = ErrorReply::from(error);
    assert_eq!(reply.kind, ErrorKind::Busy);
    assert_eq!(
        reply.message,
        "server alice is still starting; stop it again in a moment"
    );
    assert_eq!(state_of(&sup, &alice()), ServerState::Starting);
}

#[tokio::test(start_paused = true)]
async fn a_stale_instance_is_refused_and_nothing_is_signalled() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(406, ALICE).child());
    let sup = supervisor(&host, process_groups());
    let instance = launch(&sup, &alice(), 406, None);
    let stale = Some(instance - 1);

    let stop = sup.stop(&alice(), stale, false).await;
    let signal = sup.signal(&alice(), stale, libc::SIGUSR1);
    let poll = sup.poll(&alice(), stale);

    for result in [stop.map(drop), signal, poll.map(drop)] {
        match result {
            Err(SupervisorError::StaleInstance { asked, current, .. }) => {
                assert_eq!((asked, current), (instance - 1, instance));
            }
            other => panic!("not refused as stale: {other:?}"),
        }
    }
    assert!(host.signals_to(406).is_empty());
    assert_eq!(state_of(&sup, &alice()), ServerState::Running);
}

// The exit watcher.

#[tokio::test(start_paused = true)]
async fn an_exit_is_recorded_with_its_status_and_persisted() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(407, ALICE).child());
    let sup = supervisor(&host, process_groups());
    launch(&sup, &alice(), 407, None);

    host.exit(407, 3);
    while state_of(&sup, &alice()) == ServerState::Running {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    assert_eq!(
        state_of(&sup, &alice()),
        ServerState::Exited(ExitStatus::Code(3))
    );
    // The group is killed before the leader is reaped (process-group mode).
    assert_eq!(
        host.events().last().map(|(_, e)| e.clone()),
        Some(Event::KillGroup(Pid::from_raw(407)))
    );
    // Persisted by the watcher, after the exit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (records, _) = sup.state.load_all();
    assert_eq!(records[0].exit, Some(ExitStatus::Code(3)));
}

/// A wait for the exit that fails is no exit: the process group of a live server is not
/// killed and the server is not reported exited; the real exit is still seen afterwards.
#[tokio::test(start_paused = true)]
async fn a_failed_wait_for_the_exit_kills_nothing() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(409, ALICE).child());
    host.fail_exit_waits(3);
    let sup = supervisor(&host, process_groups());
    launch(&sup, &alice(), 409, None);

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(host.alive(409));
    assert_eq!(state_of(&sup, &alice()), ServerState::Running);
    assert!(
        !host
            .events()
            .iter()
            .any(|(_, e)| matches!(e, Event::KillGroup(_))),
        "{:?}",
        host.events()
    );

    host.exit(409, 0);
    while state_of(&sup, &alice()) == ServerState::Running {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        state_of(&sup, &alice()),
        ServerState::Exited(ExitStatus::Code(0))
    );
}

#[tokio::test(start_paused = true)]
async fn signal_reaches_the_main_process_and_then_reports_no_process() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(408, ALICE).child());
    host.ignore(408, libc::SIGUSR1);
    let sup = supervisor(&host, process_groups());
    launch(&sup, &alice(), 408, None);

    sup.signal(&alice(), None, libc::SIGUSR1).expect("sent");
    assert_eq!(host.signals_to(408), [libc::SIGUSR1]);

    host.exit(408, 0);
    while state_of(&sup, &alice()) == ServerState::Running {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let error = sup
        .signal(&alice(), None, libc::SIGUSR1)
        .expect_err("exited");
    assert_eq!(
        ErrorReply::from(error).message,
        "server alice is exited; there is no process to signal"
    );
}

// Re-adoption after a restart.

/// A supervisor that recovers `records` from its state directory on the fake host.
fn recovered(
    host: &Arc<FakeHost>,
    tree: TreeMode,
    records: &[Record],
) -> (Arc<Supervisor>, Recovery) {
    let sup = supervisor(host, tree);
    for rec in records {
        sup.state.save(rec).expect("saved");
    }
    let report = sup.recover_with(&rules());
    (sup, report)
}

#[tokio::test(start_paused = true)]
async fn the_same_pid_start_time_and_uid_is_adopted_and_stopped_as_before() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(500, ALICE).started_at(777));
    let rec = record(&alice(), 9, 500, 777, ALICE);

    let (sup, report) = recovered(&host, process_groups(), &[rec]);

    assert_eq!(report.adopted, 1);
    assert_eq!(state_of(&sup, &alice()), ServerState::Running);
    let stopped = sup.stop(&alice(), Some(9), false).await.expect("stopped");
    // Not our child: only its parent learns how it ended.
    assert_eq!(stopped, (9, ExitStatus::Unknown));
    assert_eq!(host.signals_to(500), [libc::SIGINT]);
}

#[tokio::test(start_paused = true)]
async fn a_pid_with_another_start_time_is_not_adopted_and_never_signalled() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(501, ALICE).started_at(999));
    let rec = record(&alice(), 9, 501, 777, ALICE);

    let (sup, report) = recovered(&host, process_groups(), &[rec]);

    assert_eq!((report.adopted, report.exited), (0, 1));
    assert_eq!(
        state_of(&sup, &alice()),
        ServerState::Exited(ExitStatus::Unknown)
    );
    sup.stop(&alice(), None, true).await.expect("forgotten");
    assert!(host.events().is_empty(), "{:?}", host.events());
    assert!(host.alive(501));
    let refused = adopt(&*host, Pid::from_raw(501), 777, Uid::from_raw(ALICE), None);
    assert!(matches!(refused, Err(AdoptError::StartTimeDiffers(_))));
}

#[tokio::test(start_paused = true)]
async fn a_pid_of_another_uid_is_not_adopted() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(502, BOB).started_at(777));

    let refused = adopt(&*host, Pid::from_raw(502), 777, Uid::from_raw(ALICE), None);
    assert_eq!(
        refused.expect_err("wrong uid").to_string(),
        format!("pid 502 runs as uid {BOB}, not the recorded uid {ALICE}")
    );
    let (_, report) = recovered(
        &host,
        process_groups(),
        &[record(&alice(), 9, 502, 777, ALICE)],
    );
    assert_eq!((report.adopted, report.exited), (0, 1));
    assert!(host.events().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_pid_outside_the_servers_cgroup_is_not_adopted() {
    let host = Arc::new(FakeHost::new());
    let own = tree::cgroup_dir(Path::new(CGROUPS), "alice", "", 9);
    host.add_cgroup(&own);
    host.add(
        Proc::new(503, ALICE)
            .started_at(777)
            .in_cgroup("/elsewhere"),
    );
    let mut rec = record(&alice(), 9, 503, 777, ALICE);
    rec.cgroup = Some(own.clone());

    let (_, report) = recovered(&host, cgroups(), &[rec]);

    assert_eq!((report.adopted, report.exited), (0, 1));
    assert!(host.signals_to(503).is_empty());
    let refused = adopt(
        &*host,
        Pid::from_raw(503),
        777,
        Uid::from_raw(ALICE),
        Some(&own),
    );
    assert!(matches!(refused, Err(AdoptError::NotInCgroup { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_record_of_an_exit_is_reported_with_its_status_and_its_pid_left_alone() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(504, ALICE).started_at(777));
    let mut rec = record(&alice(), 9, 504, 777, ALICE);
    rec.exit = Some(ExitStatus::Code(0));

    let (sup, report) = recovered(&host, process_groups(), &[rec]);

    assert_eq!(report, Recovery::default());
    assert_eq!(
        state_of(&sup, &alice()),
        ServerState::Exited(ExitStatus::Code(0))
    );
    assert!(host.events().is_empty());
}

#[test]
fn vet_refuses_root_low_uids_non_server_pids_and_foreign_cgroups() {
    let rules = rules();
    let check = |rec: Record| vet(rec, &rules, &cgroups()).map(drop);

    assert_eq!(
        check(record(&alice(), 9, 600, 1, 0)),
        Err(VetError::UidNotAllowed {
            uid: 0,
            min_uid: 1000
        })
    );
    assert!(matches!(
        check(record(&alice(), 9, 600, 1, 999)),
        Err(VetError::UidNotAllowed { uid: 999, .. })
    ));
    assert_eq!(
        check(record(&alice(), 9, 1, 1, ALICE)),
        Err(VetError::NotAServersPid(1))
    );
    let mut foreign = record(&alice(), 9, 600, 1, ALICE);
    foreign.cgroup = Some(PathBuf::from(CGROUPS).join("bob/@default.9"));
    assert!(matches!(
        check(foreign),
        Err(VetError::ForeignCgroup { .. })
    ));
    let mut long = record(&alice(), 9, 600, 1, ALICE);
    long.kill_timeout_ms = u64::MAX;
    let vetted = vet(long, &rules, &cgroups()).expect("valid");
    assert_eq!(
        vetted.kill_timeout_ms,
        crate::config::MAX_TIMEOUT_SECS * 1000
    );
}

#[tokio::test(start_paused = true)]
async fn an_invalid_record_is_set_aside_and_nothing_it_names_is_touched() {
    let host = Arc::new(FakeHost::new());
    host.add(Proc::new(601, 0).started_at(777));

    let (sup, report) = recovered(&host, process_groups(), &[record(&alice(), 9, 601, 777, 0)]);

    assert_eq!(report.unreadable, 1);
    assert!(sup.poll(&alice(), None).is_err());
    assert!(host.events().is_empty());
    assert!(sup.state.load_all().0.is_empty(), "moved aside");
}

// Recovery from cgroups (no record).

#[tokio::test(start_paused = true)]
async fn recovery_from_a_cgroup_adopts_the_first_session_leader_of_the_users_uid() {
    let host = Arc::new(FakeHost::new());
    host.add_user("alice", ALICE);
    let dir = tree::cgroup_dir(Path::new(CGROUPS), "alice", "lab.v2", 7);
    // A root session leader started first, a process of the user in the server's session
    // (no leader, whenever it started), the server, and a later session leader of the user
    // (a kernel in its own session).
    host.add(Proc::new(700, 0).started_at(10).in_cgroup(&dir));
    host.add(
        Proc::new(702, ALICE)
            .started_at(40)
            .session(701)
            .in_cgroup(&dir),
    );
    host.add(Proc::new(701, ALICE).started_at(50).in_cgroup(&dir));
    host.add(Proc::new(703, ALICE).started_at(90).in_cgroup(&dir));

    let (sup, report) = recovered(&host, cgroups(), &[]);

    assert_eq!(report.from_cgroups, 1);
    let id = ServerId::new("alice", "lab.v2");
    let polled = sup
        .poll(&id, Some(7))
        .expect("re-adopted under its instance");
    assert_eq!((polled.pid, polled.state), (701, ServerState::Running));
    let page = sup.list(Scope::StartedBy(HUB), None, 10);
    assert_eq!(page.servers[0].profile, "(recovered)");
    assert!(host.events().is_empty(), "{:?}", host.events());
}

#[tokio::test(start_paused = true)]
async fn a_tree_of_a_stale_instance_is_killed() {
    let host = Arc::new(FakeHost::new());
    host.add_user("alice", ALICE);
    let stale = tree::cgroup_dir(Path::new(CGROUPS), "alice", "", 7);
    host.add(Proc::new(710, ALICE).in_cgroup(&stale));
    let mut rec = record(&alice(), 8, 711, 1, ALICE);
    rec.exit = Some(ExitStatus::Code(0));

    let (_, report) = recovered(&host, cgroups(), &[rec]);

    assert_eq!(report.from_cgroups, 0);
    assert_eq!(
        host.events().first().map(|(_, e)| e.clone()),
        Some(Event::KillCgroup(stale))
    );
    assert!(!host.alive(710));
}

#[tokio::test(start_paused = true)]
async fn an_empty_server_cgroup_is_removed() {
    let host = Arc::new(FakeHost::new());
    let empty = tree::cgroup_dir(Path::new(CGROUPS), "bob", "lab", 3);
    host.add_cgroup(&empty);

    let (sup, report) = recovered(&host, cgroups(), &[]);

    assert_eq!(report.from_cgroups, 0);
    assert!(!host.has_cgroup(&empty));
    assert_eq!(sup.counts(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_cgroup_of_a_user_below_min_uid_is_not_recovered() {
    let host = Arc::new(FakeHost::new());
    host.add_user("daemon", 500);
    let dir = tree::cgroup_dir(Path::new(CGROUPS), "daemon", "", 4);
    host.add(Proc::new(720, 500).in_cgroup(&dir));

    let (sup, report) = recovered(&host, cgroups(), &[]);

    assert_eq!(report.from_cgroups, 0);
    assert_eq!(sup.counts(), (0, 0));
    assert!(host.alive(720));
    assert!(host.events().is_empty());
}

// Paging.

fn reserve_many(sup: &Supervisor, servers: &[(&str, &str, u32, u32)]) {
    for (user, server, uid, owner) in servers {
        let id = ServerId::new(*user, *server);
        sup.reserve(new_server(&id, *uid, *owner)).expect("free");
    }
}

fn names(page: &ServerPage) -> Vec<String> {
    page.servers.iter().map(|s| s.server.to_string()).collect()
}

#[tokio::test]
async fn list_pages_in_name_order_after_the_cursor() {
    let host = Arc::new(FakeHost::new());
    let sup = supervisor(&host, process_groups());
    reserve_many(
        &sup,
        &[
            ("carol", "", 1003, HUB),
            ("alice", "b", ALICE, HUB),
            ("bob", "", BOB, HUB),
            ("alice", "", ALICE, HUB),
            ("alice", "a", ALICE, HUB),
        ],
    );

    let first = sup.list(Scope::All, None, 2);
    assert_eq!(names(&first), ["alice", "alice/a"]);
    let second = sup.list(Scope::All, first.next.as_ref(), 2);
    assert_eq!(names(&second), ["alice/b", "bob"]);
    let last = sup.list(Scope::All, second.next.as_ref(), 2);
    assert_eq!(names(&last), ["carol"]);
    assert_eq!(last.next, None);
    assert_eq!(sup.list(Scope::All, None, 5).next, None);
}

#[tokio::test]
async fn list_shows_each_viewer_its_own_and_pages_over_what_it_sees() {
    let host = Arc::new(FakeHost::new());
    let sup = supervisor(&host, process_groups());
    let other_hub = 991;
    reserve_many(
        &sup,
        &[
            ("alice", "", ALICE, HUB),
            ("alice", "x", ALICE, other_hub),
            ("bob", "", BOB, HUB),
            ("bob", "y", BOB, other_hub),
            ("carol", "", 1003, HUB),
        ],
    );

    assert_eq!(sup.list(Scope::All, None, 10).servers.len(), 5);
    let hub = sup.list(Scope::StartedBy(HUB), None, 2);
    assert_eq!(names(&hub), ["alice", "bob"]);
    assert_eq!(hub.next, Some(ServerId::new("bob", "")));
    let rest = sup.list(Scope::StartedBy(HUB), hub.next.as_ref(), 2);
    assert_eq!(names(&rest), ["carol"]);
    assert_eq!(rest.next, None);
    let bob = sup.list(Scope::OwnedBy(BOB), None, 10);
    assert_eq!(names(&bob), ["bob", "bob/y"]);
}

// The errors on the wire.

#[test]
fn errors_become_replies_of_the_right_kind_with_their_messages() {
    let id = alice();
    let cases = [
        (
            SupervisorError::NotFound(id.clone()),
            ErrorKind::NotFound,
            "no server alice is known to spawnd",
        ),
        (
            SupervisorError::StaleInstance {
                id: id.clone(),
                asked: 3,
                current: 4,
            },
            ErrorKind::NotFound,
            "server alice instance 3 is gone; the current instance is 4 (the caller's record \
             is stale, so nothing was done)",
        ),
        (
            SupervisorError::AlreadyRunning {
                id: id.clone(),
                state: ServerState::Running,
                instance: 4,
                pid: Pid::from_raw(77),
            },
            ErrorKind::AlreadyRunning,
            "server alice is already running (instance 4, pid 77); stop it first",
        ),
        (
            SupervisorError::JustExited(id.clone()),
            ErrorKind::NotFound,
            "server alice has just exited",
        ),
        (
            SupervisorError::StuckInKernel {
                id: id.clone(),
                pid: Pid::from_raw(77),
            },
            ErrorKind::Internal,
            "server alice (pid 77) did not exit after SIGKILL; it may be stuck in the kernel \
             (state D): check `cat /proc/77/stack`",
        ),
    ];
    for (error, kind, message) in cases {
        let reply = ErrorReply::from(error);
        assert_eq!((reply.kind, reply.message.as_str()), (kind, message));
    }
}

#[tokio::test]
async fn a_second_start_of_a_live_name_is_already_running() {
    let host = Arc::new(FakeHost::new());
    let sup = supervisor(&host, process_groups());
    sup.reserve(new_server(&alice(), ALICE, HUB)).expect("free");

    let reply = ErrorReply::from(
        sup.reserve(new_server(&alice(), ALICE, HUB))
            .expect_err("taken"),
    );

    assert_eq!(reply.kind, ErrorKind::AlreadyRunning);
    assert!(
        reply
            .message
            .starts_with("server alice is already starting")
    );
}
