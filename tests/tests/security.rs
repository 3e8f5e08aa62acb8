//! Findings of the security review, each reproduced against the real daemon with real users:
//! what a user can reach of a server process before its exec, and what one user's stalled or
//! killed start does to everyone else's.
//!
//! A new server is created inside its cgroup (`<base>/<user>/<server>.<instance>`): freezing
//! the user's directory of the daemon's cgroup base before a start (cgroup v2 `cgroup.freeze`)
//! holds the new process at its birth, which is how these tests catch a start half-way, as a
//! home directory on a file system that hangs or a user who stops the process would.

use spawnd_client::Client;
use spawnd_protocol::{ErrorKind, StartRequest};
use spawnd_tests::{
    DaemonOptions, Profile, TestDaemon, TestUser, expect_err, procfs, require_root, sid,
    standard_profiles, start, start_req, users, wait_for,
};
use std::path::PathBuf;
use std::time::Duration;

fn options(extra: &str) -> DaemonOptions {
    let mut profiles = standard_profiles();
    profiles.push(Profile::shell("sleeper", "echo started; exec sleep 1000"));
    DaemonOptions {
        profiles,
        default_profile: "sleeper".into(),
        extra_config: format!("{extra}\n"),
        ..DaemonOptions::default()
    }
}

macro_rules! require_cgroup {
    ($d:expr) => {
        if $d.cgroup_base.is_none() {
            eprintln!("skipped: needs a writable cgroup v2 hierarchy (/sys/fs/cgroup/unified)");
            return;
        }
    };
}

/// Freezes `user`'s directory under the daemon's cgroup base: every server process of that
/// user created from now on stops at its birth. Thawed (and removed if empty) on drop.
struct Frozen(PathBuf);

impl Frozen {
    fn new(d: &TestDaemon, user: &TestUser) -> Frozen {
        let dir = d
            .cgroup_base
            .as_ref()
            .expect("a cgroup base")
            .join(&user.name);
        std::fs::create_dir_all(&dir).expect("mkdir the user's cgroup");
        std::fs::write(dir.join("cgroup.freeze"), "1").expect("freeze");
        Frozen(dir)
    }

    /// The process that was born in a server cgroup below, once there is one.
    fn wait_for_process(&self) -> u32 {
        wait_for(Duration::from_secs(10), || {
            std::fs::read_dir(&self.0)
                .ok()?
                .flatten()
                .find_map(|server| {
                    let procs = std::fs::read_to_string(server.path().join("cgroup.procs")).ok()?;
                    procs.lines().next()?.trim().parse().ok()
                })
        })
        .expect("no server process was created within 10 s")
    }

    fn thaw(&self) {
        let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Whether two processes share their memory (kcmp KCMP_VM).
fn same_memory(a: u32, b: u32) -> bool {
    const KCMP_VM: libc::c_long = 1;
    // SAFETY: kcmp compares kernel objects of two pids; no memory of ours is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            a as libc::pid_t,
            b as libc::pid_t,
            KCMP_VM,
            0,
            0,
        )
    };
    assert!(r >= 0, "kcmp: {}", std::io::Error::last_os_error());
    r == 0
}

fn start_in_background(
    hub: &Client,
    req: StartRequest,
) -> tokio::task::JoinHandle<Result<spawnd_protocol::Started, spawnd_client::ClientError>> {
    let hub = hub.clone();
    tokio::spawn(async move { hub.start(req).await })
}

fn cgroups_of(d: &TestDaemon, user: &TestUser) -> Vec<PathBuf> {
    let dir = d
        .cgroup_base
        .as_ref()
        .expect("a cgroup base")
        .join(&user.name);
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn is_gone(pid: u32) -> bool {
    procfs::state(pid).is_none()
}

/// Finding 1: the process that becomes the user must not map the daemon's memory (with
/// CLONE_VM it did, until its exec: ptrace with suid_dumpable=1, core dumps with 2, and a
/// SIGQUIT that killed the daemon on kernels before 5.16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_process_never_shares_the_daemons_memory() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(options(""));
    require_cgroup!(d);
    let hub = d.hub_client().await;
    let frozen = Frozen::new(&d, &u.a);
    let pending = start_in_background(&hub, start_req(&u.a.name, "", ""));
    let child = frozen.wait_for_process();
    assert!(
        !same_memory(child, d.pid()),
        "the new server process shares the daemon's memory"
    );
    frozen.thaw();
    let started = pending.await.expect("task").expect("the start");
    assert_eq!(started.pid, child);
    hub.stop(&sid(&u.a.name, ""), None, true)
        .await
        .expect("stop");
}

/// Finding 2: a start that stalls before its exec must not hold up anyone else's. Every child
/// used to hold a copy of the daemon's descriptors, including the write ends of other launches'
/// report pipes: a stalled child kept another start from seeing its exec, and the launch
/// watchdog then killed that other user's running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_start_never_holds_up_another_users_start() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(options("launch_timeout = 3"));
    require_cgroup!(d);
    let hub = d.hub_client().await;
    // B's start is under way (its process exists, held at birth) ...
    let frozen_b = Frozen::new(&d, &u.b);
    let pending_b = start_in_background(&hub, start_req(&u.b.name, "", ""));
    let child_b = frozen_b.wait_for_process();
    // ... when A's process is created, and stalls.
    let frozen_a = Frozen::new(&d, &u.a);
    let pending_a = start_in_background(&hub, start_req(&u.a.name, "", ""));
    let child_a = frozen_a.wait_for_process();
    // B goes on: its start completes while A's process is still stalled.
    frozen_b.thaw();
    let started_b = tokio::time::timeout(Duration::from_secs(10), pending_b)
        .await
        .expect("B's start was held up by A's stalled process")
        .expect("task")
        .expect("B's start");
    assert_eq!(started_b.pid, child_b);
    assert!(!is_gone(child_a), "A's process went away too early");
    // A's is killed after launch_timeout and reported so; B's server is untouched.
    let e = expect_err(pending_a.await.expect("task"), ErrorKind::SpawnFailed);
    assert!(
        e.message.contains("within 3 s") && e.message.contains(&u.a.name),
        "{}",
        e.message
    );
    assert!(
        wait_for(Duration::from_secs(10), || is_gone(child_a).then_some(())).is_some(),
        "A's stalled process was not killed"
    );
    assert!(
        cgroups_of(&d, &u.a).is_empty(),
        "A's failed start left a cgroup"
    );
    let polled = hub.poll(&sid(&u.b.name, ""), None).await.expect("poll B");
    assert_eq!(polled.state, spawnd_protocol::ServerState::Running);
    assert!(procfs::is_alive(child_b), "B's server was killed");
    hub.stop(&sid(&u.b.name, ""), None, true)
        .await
        .expect("stop B");
}

/// Finding 4: a process killed before its exec (by its user, or the OOM killer) is a failed
/// start with the reason, not a server reported as started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_process_killed_before_its_exec_is_a_failed_start() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(options(""));
    require_cgroup!(d);
    let hub = d.hub_client().await;
    let frozen = Frozen::new(&d, &u.a);
    let pending = start_in_background(&hub, start_req(&u.a.name, "", ""));
    let child = frozen.wait_for_process();
    // SAFETY: kill(2) of the frozen server process found above (SIGKILL ends frozen tasks).
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
    let e = expect_err(pending.await.expect("task"), ErrorKind::SpawnFailed);
    assert!(
        e.message.contains("killed by signal 9") && e.message.contains("before it started"),
        "{}",
        e.message
    );
    // Nothing of it is left: no process, no record, no cgroup; the name is free again.
    assert!(
        wait_for(Duration::from_secs(5), || is_gone(child).then_some(())).is_some(),
        "the killed process was not reaped"
    );
    assert!(!d.record_path(&u.a.name, "").exists(), "a record was left");
    assert!(cgroups_of(&d, &u.a).is_empty(), "a cgroup was left");
    drop(frozen);
    start(&hub, start_req(&u.a.name, "", "")).await;
    hub.stop(&sid(&u.a.name, ""), None, true)
        .await
        .expect("stop");
}

/// A launcher that dies (killed, or a bug) fails the starts it had in flight with a clear
/// message, leaves nothing of them running, and is replaced for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_that_dies_fails_its_starts_and_is_replaced() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(options(""));
    require_cgroup!(d);
    let hub = d.hub_client().await;
    let launchers = procfs::launchers_of(d.pid());
    assert_eq!(launchers.len(), 1, "one launcher: {launchers:?}");
    let frozen = Frozen::new(&d, &u.a);
    let pending = start_in_background(&hub, start_req(&u.a.name, "", ""));
    let child = frozen.wait_for_process();
    // SAFETY: kill(2) of the daemon's launcher, found above.
    unsafe { libc::kill(launchers[0] as i32, libc::SIGKILL) };
    let e = expect_err(pending.await.expect("task"), ErrorKind::SpawnFailed);
    assert!(
        e.message.contains("launcher") && e.message.contains("start again"),
        "{}",
        e.message
    );
    assert!(
        wait_for(Duration::from_secs(10), || is_gone(child).then_some(())).is_some(),
        "the process of the failed start survived"
    );
    assert!(cgroups_of(&d, &u.a).is_empty(), "a cgroup was left");
    assert!(is_gone(launchers[0]), "the dead launcher was not reaped");
    drop(frozen);
    // The next start gets a new launcher.
    start(&hub, start_req(&u.b.name, "", "")).await;
    let now = procfs::launchers_of(d.pid());
    assert_eq!(now.len(), 1, "one launcher: {now:?}");
    assert_ne!(now[0], launchers[0]);
    assert!(
        d.stderr().contains("launcher"),
        "the daemon did not log the launcher's failure"
    );
    hub.stop(&sid(&u.b.name, ""), None, true)
        .await
        .expect("stop");
}
