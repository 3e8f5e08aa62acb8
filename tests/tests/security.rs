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
    DaemonOptions, Profile, TestDaemon, TestUser, add_test_user, cgroup_v2_root, expect_err,
    procfs, require_cgroup, require_root, sid, standard_profiles, start, start_req, users,
    wait_for, wait_for_async,
};
use std::os::unix::fs::MetadataExt;
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
#[ignore = "needs root: run as root with --include-ignored"]
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
        !procfs::same_memory(child, d.pid()),
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
#[ignore = "needs root: run as root with --include-ignored"]
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
#[ignore = "needs root: run as root with --include-ignored"]
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

/// A launcher that dies (killed, or a bug) fails the starts it has not handed over yet with a
/// clear message, creating nothing of them; a start whose process it had already handed over
/// goes on without it (the daemon watches that process itself); and it is replaced for the
/// next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_launcher_that_dies_fails_its_starts_and_is_replaced() {
    require_root!();
    let u = users();
    // A user of its own: tests beside this one run processes of A and B.
    let user = spawnd_tests::add_test_user("launchdies", &["-m", "-G", &u.group.name]);
    let d = TestDaemon::start(options(""));
    require_cgroup!(d);
    let hub = d.hub_client().await;
    let launchers = procfs::launchers_of(d.pid());
    assert_eq!(launchers.len(), 1, "one launcher: {launchers:?}");
    let signal = |pid: u32, signal: libc::c_int| {
        // SAFETY: kill(2) of a process of the test daemon's, found above.
        unsafe { libc::kill(pid as i32, signal) };
    };

    // A start the launcher has not taken when it dies (it is stopped, then killed).
    signal(launchers[0], libc::SIGSTOP);
    let pending = start_in_background(&hub, start_req(&user.name, "", ""));
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(launchers[0], libc::SIGKILL);
    let e = expect_err(pending.await.expect("task"), ErrorKind::SpawnFailed);
    assert!(
        e.message.contains("launcher") && e.message.contains("start again"),
        "{}",
        e.message
    );
    assert!(
        procfs::pids_of_uid(user.uid).is_empty(),
        "a process of the failed start runs"
    );
    assert!(cgroups_of(&d, &user).is_empty(), "a cgroup was left");
    assert!(is_gone(launchers[0]), "the dead launcher was not reaped");
    assert!(
        d.stderr().contains("the launcher process"),
        "the daemon did not log the launcher's failure"
    );

    // The next start gets a new launcher; one whose process was handed over (held at birth)
    // when that launcher dies completes all the same.
    let frozen = Frozen::new(&d, &u.b);
    let pending = start_in_background(&hub, start_req(&u.b.name, "", ""));
    let child = frozen.wait_for_process();
    let now = procfs::launchers_of(d.pid());
    assert_eq!(now.len(), 1, "one launcher: {now:?}");
    assert_ne!(now[0], launchers[0]);
    signal(now[0], libc::SIGKILL);
    frozen.thaw();
    let started = pending.await.expect("task").expect("the handed-over start");
    assert_eq!(started.pid, child);
    drop(frozen);
    start(&hub, start_req(&user.name, "", "")).await;
    for name in [&user.name, &u.b.name] {
        hub.stop(&sid(name, ""), None, true).await.expect("stop");
    }
}

/// Makes a process of `user` in a session of its own (so its process group id is its pid)
/// whose pid is `pid`, by setting the kernel's last pid just below it. Retries: other
/// processes on the machine may take the number first.
fn impostor_with_pid(pid: u32, user: &TestUser) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    for _ in 0..100 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let mut cmd = std::process::Command::new("/bin/sleep");
        cmd.arg("60").uid(user.uid).gid(user.gid);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().ok()?;
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// Finding 13: in process-group mode, the group of a server whose leader has been reaped must
/// never be signalled: its id may belong to an unrelated process by then. Here a re-adopted
/// server (another process's child after a daemon restart) exits while the daemon is stopped,
/// its parent reaps it, and an unrelated process of another user gets its pid and leads a
/// group with that id; when the daemon resumes and sees the exit, that process must survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_process_group_is_never_signalled_after_its_leader_is_gone() {
    require_root!();
    let u = users();
    let mut d = TestDaemon::start(DaemonOptions {
        cgroup: false,
        ..options("")
    });
    let server = {
        let hub = d.hub_client().await;
        start(&hub, start_req(&u.a.name, "", "")).await.pid
    };
    // A restart: the server is re-adopted, no longer the daemon's child.
    d.kill_hard();
    d.restart();
    let hub = d.hub_client().await;
    let polled = hub.poll(&sid(&u.a.name, ""), None).await.expect("poll");
    assert_eq!(polled.state, spawnd_protocol::ServerState::Running);
    let daemon = nix::unistd::Pid::from_raw(d.pid() as i32);
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP spawnd");
    // SAFETY: kill(2) of the server started above.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    let reaped = wait_for(Duration::from_secs(10), || is_gone(server).then_some(()));
    let impostor = reaped.and_then(|()| impostor_with_pid(server, &u.b));
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT spawnd");
    let Some(mut impostor) = impostor else {
        panic!("could not make a process with the server's pid {server} (reaped: {reaped:?})");
    };
    assert_eq!(
        procfs::pgrp(server),
        Some(server),
        "the impostor leads its group"
    );
    // The daemon sees the exit ...
    let exited = wait_for_async(Duration::from_secs(10), || async {
        let polled = hub.poll(&sid(&u.a.name, ""), None).await.ok()?;
        matches!(polled.state, spawnd_protocol::ServerState::Exited(_)).then_some(())
    })
    .await;
    assert!(exited.is_some(), "the daemon did not see the server's exit");
    // ... and signals no group: the unrelated process lives on.
    std::thread::sleep(Duration::from_millis(500));
    let alive = matches!(impostor.try_wait(), Ok(None));
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert!(
        alive,
        "an unrelated process that got the server's pid was killed"
    );
    let _ = hub.stop(&sid(&u.a.name, ""), None, true).await;
}

/// Writes a server record as a (forged) state file: the format's fields, plus `log_path`,
/// which earlier versions recorded and read back.
fn forge_record(d: &TestDaemon, server: &str, fields: serde_json::Value) {
    let u = users();
    let mut record = serde_json::json!({
        "version": 1,
        "user": u.a.name,
        "server": server,
        "uid": u.a.uid,
        "owner_uid": u.hub.uid,
        "instance": 7,
        "pid": 0,
        "start_ticks": 0,
        "cgroup": null,
        "profile": "sleeper",
        "port": null,
        "log_path": format!("{}/{}/{server}.log", d.log_dir().display(), u.a.name),
        "started_at": 1,
        "exit": null,
        "exited_at": null,
        "interrupt_timeout_ms": 100,
        "term_timeout_ms": 100,
        "kill_timeout_ms": 100,
    });
    for (k, v) in fields.as_object().expect("an object") {
        record[k] = v.clone();
    }
    let path = d.record_path(&u.a.name, server);
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
    std::fs::write(&path, serde_json::to_vec(&record).expect("json")).expect("write record");
}

/// Finding 10: the state directory's records are trusted only as far as the policy allows. A
/// forged record (restored from a backup, edited, written by a bug) naming a root process, a
/// file outside the log directory or a cgroup outside the daemon's base must not make the
/// daemon signal, read or kill them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn forged_state_records_are_checked_before_anything_they_name_is_used() {
    require_root!();
    let u = users();
    let mut d = TestDaemon::start(options(""));
    require_cgroup!(d);
    let root = spawnd_tests::cgroup_v2_root().expect("a cgroup v2 root");
    // A root process, a root-only file, and a cgroup outside the daemon's base holding
    // another root process.
    let mut root_process = std::process::Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    let root_pid = root_process.id();
    let ticks: u64 = procfs::stat_fields(root_pid).expect("stat")[19]
        .parse()
        .expect("start time");
    let secret = d.log_dir().parent().expect("test dir").join("root-secret");
    std::fs::write(&secret, "ROOT-ONLY-SECRET\n").expect("secret");
    let foreign = root.join(format!("spawnd-test-foreign-{}", std::process::id()));
    let _ = std::fs::remove_dir(&foreign);
    std::fs::create_dir(&foreign).expect("mkdir foreign cgroup");
    let mut foreign_process = std::process::Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    std::fs::write(
        foreign.join("cgroup.procs"),
        foreign_process.id().to_string(),
    )
    .expect("move into the foreign cgroup");

    d.kill_hard();
    forge_record(
        &d,
        "root-process",
        serde_json::json!({ "uid": 0, "pid": root_pid, "start_ticks": ticks }),
    );
    forge_record(
        &d,
        "stolen-log",
        serde_json::json!({ "log_path": secret, "exit": { "Code": 0 }, "exited_at": 1 }),
    );
    forge_record(
        &d,
        "foreign-cgroup",
        serde_json::json!({ "pid": 999_999, "cgroup": foreign }),
    );
    d.restart();
    let admin = d.admin_client().await;

    let mut problems = Vec::new();
    // The root process is no server: not adopted, so nothing can signal it through spawnd.
    let _ = admin
        .stop(&sid(&u.a.name, "root-process"), None, true)
        .await;
    // The forged log path is never read.
    if let Ok(tail) = admin.logs(&sid(&u.a.name, "stolen-log"), 100).await
        && tail.lines.iter().any(|l| l.contains("ROOT-ONLY-SECRET"))
    {
        problems.push(format!(
            "a forged record's log path was read back: {tail:?}"
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    if !matches!(root_process.try_wait(), Ok(None)) {
        problems.push("a root process named by a forged record was signalled".to_owned());
    }
    if !matches!(foreign_process.try_wait(), Ok(None)) {
        problems.push(
            "a cgroup outside the daemon's base, named by a forged record, was killed".to_owned(),
        );
    }
    for p in [&mut root_process, &mut foreign_process] {
        let _ = p.kill();
        let _ = p.wait();
    }
    let _ = std::fs::remove_dir(&foreign);
    assert!(problems.is_empty(), "{problems:#?}");
    // The records that fail the checks are set aside for the operator and said so.
    let aside: Vec<String> = std::fs::read_dir(
        d.record_path(&u.a.name, "x")
            .parent()
            .expect("the user's record directory"),
    )
    .expect("records")
    .flatten()
    .map(|e| e.file_name().to_string_lossy().into_owned())
    .filter(|n| n.contains(".json.invalid-"))
    .collect();
    assert_eq!(aside.len(), 2, "{aside:?}");
    assert!(d.stderr().contains("INVALID SERVER RECORD"));
}

/// Finding 11: `deny_users` holds for the account, not only for the name written there: a
/// second passwd entry with the same uid (as `toor` is for `root` on some systems, or an alias
/// a directory service answers to) must not get the denied account a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn deny_users_holds_for_every_name_of_the_account() {
    require_root!();
    let u = users();
    let denied = spawnd_tests::add_test_user("denied", &["-m", "-G", &u.group.name]);
    let alias = spawnd_tests::add_second_entry("denialias", &denied);
    let d = TestDaemon::start(DaemonOptions {
        deny_users: vec![denied.name.clone()],
        ..options("")
    });
    let hub = d.hub_client().await;
    let e = expect_err(
        hub.start(start_req(&denied.name, "", "")).await,
        ErrorKind::PolicyDenied,
    );
    assert!(e.message.contains("deny_users"), "{}", e.message);
    let e = expect_err(
        hub.start(start_req(&alias.name, "", "")).await,
        ErrorKind::PolicyDenied,
    );
    assert!(
        e.message.contains("deny_users") && e.message.contains(&denied.uid.to_string()),
        "{}",
        e.message
    );
    assert!(
        procfs::pids_of_uid(denied.uid).is_empty(),
        "a process of the denied account runs"
    );
}

/// Finding 9: a log is read back, written and emptied only if it is a plain file with one
/// name: a hard link placed in a log directory (to a file of root's) is never read back by
/// `logs`, and with `log_keep = 0` the file behind it is never emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_hard_link_in_a_log_directory_is_never_read_back_or_emptied() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(options("log_keep = 0"));
    let secret = d.log_dir().parent().expect("test dir").join("root-secret");
    std::fs::write(&secret, "ROOT-ONLY-SECRET\n").expect("secret");
    let user_logs = d.log_dir().join(&u.a.name);
    std::fs::create_dir_all(&user_logs).expect("mkdir");
    std::fs::hard_link(&secret, user_logs.join("@default.log")).expect("link");
    std::fs::hard_link(&secret, user_logs.join("gpu.log")).expect("link");
    let admin = d.admin_client().await;
    let mut problems = Vec::new();
    match admin.logs(&sid(&u.a.name, ""), 100).await {
        Ok(tail) if tail.lines.iter().any(|l| l.contains("ROOT-ONLY-SECRET")) => {
            problems.push(format!("a hard-linked file was read back: {tail:?}"));
        }
        Ok(_) => {}
        Err(e) => {
            let message = e.to_string();
            if !message.contains("hard links") {
                problems.push(format!("reading it back failed unclearly: {message}"));
            }
        }
    }
    let hub = d.hub_client().await;
    match hub.start(start_req(&u.a.name, "gpu", "")).await {
        Ok(_) => problems.push("a server was started onto a hard-linked log".to_owned()),
        Err(e) if !e.to_string().contains("hard links") => {
            problems.push(format!("the start failed unclearly: {e}"));
        }
        Err(_) => {}
    }
    let content = std::fs::read_to_string(&secret).expect("read the secret");
    if content != "ROOT-ONLY-SECRET\n" {
        problems.push(format!("the file behind the link was changed: {content:?}"));
    }
    let _ = hub.stop(&sid(&u.a.name, "gpu"), None, true).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Waits (15 s at most) until the log at `path` is at most 1 MiB and says it was cut; its text,
/// or its size when that does not happen.
fn wait_until_cut(path: &std::path::Path) -> Result<String, u64> {
    wait_for(Duration::from_secs(15), || {
        let text = String::from_utf8_lossy(&std::fs::read(path).ok()?).into_owned();
        (text.len() <= (1 << 20) && text.contains("log_max_size")).then_some(text)
    })
    .ok_or_else(|| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

/// Finding 9: logs are root's and outside their users' quotas, so a server that prints
/// without end must not fill the log file system: past `log_max_size` its oldest part is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_log_that_grows_past_log_max_size_is_cut() {
    require_root!();
    let u = users();
    let mut opts = options("log_max_size = \"1M\"");
    opts.profiles.push(Profile::shell(
        "chatty",
        "head -c 3145728 /dev/zero | tr '\\0' x; echo; echo LAST-LINE; exec sleep 1000",
    ));
    let d = TestDaemon::start(opts);
    let hub = d.hub_client().await;
    let started = start(&hub, start_req(&u.a.name, "", "chatty")).await;
    let log = PathBuf::from(&started.log_path);
    let text = wait_until_cut(&log)
        .unwrap_or_else(|size| panic!("the log was not cut below 1 MiB: {size} bytes"));
    // Where the file system can remove a file's start (ext4, XFS), the newest part stays.
    let stderr = d.stderr();
    assert!(
        stderr.contains("log_max_size"),
        "the daemon did not log the cut"
    );
    if stderr.contains("Collapsed") {
        assert!(text.contains("LAST-LINE"), "the newest lines were not kept");
    }
    hub.stop(&sid(&u.a.name, ""), None, true)
        .await
        .expect("stop");
}

/// Finding 12: `spawnctl logs` shows a user's bytes to an admin's terminal: escape sequences
/// in a log (retitle, clear, rewrite the screen; some terminals answer back) are shown as
/// visible escapes, on a terminal (here a pseudo-terminal made by `script`) and through a pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn spawnctl_logs_shows_escape_sequences_harmlessly_on_a_terminal() {
    require_root!();
    let u = users();
    let mut opts = options("");
    opts.profiles.push(Profile::shell(
        "escapes",
        "printf '\\033]0;pwned\\007\\033[2JHELLO\\n'; exec sleep 1000",
    ));
    let d = TestDaemon::start(opts);
    let hub = d.hub_client().await;
    start(&hub, start_req(&u.a.name, "", "escapes")).await;
    let command = format!(
        "{} --socket {} logs {}",
        spawnd_tests::bin_path("spawnctl", "SPAWNCTL_BIN").display(),
        d.socket.display(),
        u.a.name
    );
    let shown = wait_for(Duration::from_secs(5), || {
        let out = std::process::Command::new("script")
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("HELLO").then_some((out.stdout, text))
    });
    let (bytes, text) = shown.expect("spawnctl logs showed the server's line");
    assert!(
        !bytes.contains(&0x1b) && !bytes.contains(&0x07),
        "raw escape sequences reached the terminal: {text:?}"
    );
    assert!(text.contains("\\x1b]0;pwned\\x07\\x1b[2JHELLO"), "{text:?}");
    // Through a pipe too (into less -R or tail, it still reaches a terminal); --raw opts out.
    let piped = d.spawnctl(&["logs", &u.a.name]);
    assert!(
        piped.stdout.contains("\\x1b]0;pwned") && !piped.stdout.contains('\u{1b}'),
        "{piped}"
    );
    let raw = d.spawnctl(&["logs", "--raw", &u.a.name]);
    assert!(raw.stdout.contains("\u{1b}]0;pwned"), "{raw}");
    hub.stop(&sid(&u.a.name, ""), None, true)
        .await
        .expect("stop");
}

/// Finding 9, the review's follow-up: a server can allocate disk through its log descriptor
/// without changing the log's size (`fallocate` with `FALLOC_FL_KEEP_SIZE`); that space counts
/// against `log_max_size` too and is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn space_allocated_past_a_logs_end_counts_against_log_max_size() {
    require_root!();
    let u = users();
    let mut opts = options("log_max_size = \"1M\"");
    opts.profiles.push(Profile::command(
        "allocates",
        &[
            "/usr/bin/python3",
            "-c",
            "import ctypes, time; \
             r = ctypes.CDLL(None, use_errno=True).fallocate(1, 1, ctypes.c_long(0), \
             ctypes.c_long(256 << 20)); \
             print('fallocate', r, ctypes.get_errno(), flush=True); time.sleep(1000)",
        ],
    ));
    let d = TestDaemon::start(opts);
    let hub = d.hub_client().await;
    let started = start(&hub, start_req(&u.a.name, "", "allocates")).await;
    let log = PathBuf::from(&started.log_path);
    let allocated = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&log)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    };
    // It did allocate (the test means something) ...
    let text = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("fallocate"))
    })
    .expect("the server reported its fallocate");
    assert!(text.contains("fallocate 0 0"), "{text:?}");
    // ... and within a few checks the space is freed.
    let freed = wait_for(Duration::from_secs(10), || {
        (allocated() <= 2 << 20).then_some(())
    });
    assert!(
        freed.is_some(),
        "{} bytes stay allocated behind a log of {} bytes",
        allocated(),
        std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0)
    );
    hub.stop(&sid(&u.a.name, ""), None, true)
        .await
        .expect("stop");
}

/// A second name for a running server's log (a hard link, which its user can make only where
/// `fs.protected_hardlinks` is off) does not exempt the log from `log_max_size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_log_with_a_second_name_is_still_cut() {
    require_root!();
    let u = users();
    let mut opts = options("log_max_size = \"1M\"");
    opts.profiles.push(Profile::shell(
        "late-chatty",
        "sleep 1; head -c 3145728 /dev/zero | tr '\\0' x; echo; exec sleep 1000",
    ));
    let d = TestDaemon::start(opts);
    let hub = d.hub_client().await;
    let started = start(&hub, start_req(&u.a.name, "", "late-chatty")).await;
    let log = PathBuf::from(&started.log_path);
    std::fs::hard_link(&log, log.with_extension("second-name")).expect("link");
    let cut = wait_until_cut(&log);
    let _ = std::fs::remove_file(log.with_extension("second-name"));
    if let Err(size) = cut {
        panic!("a log with two names was not cut: {size} bytes");
    }
    hub.stop(&sid(&u.a.name, ""), None, true)
        .await
        .expect("stop");
}

/// Found in the review of the restructured daemon: self-service ownership of a server the
/// daemon does not know was decided by "any name whose `getpwnam` uid is the peer's". A second
/// passwd entry with the same uid (`useradd -o`, or an LDAP entry sharing a local uid) is a name
/// the hub may start servers under (it is its own `pw_name`), and its log directory is root's
/// alone (0700: its primary group is not a private group named after it). The peer cannot read
/// it on the file system, and the daemon must not read it back for it: the server must be named
/// after the peer's own account both ways (`server::owner_of`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_user_cannot_read_the_log_of_another_passwd_entry_with_its_uid() {
    require_root!();
    let u = users();
    let own = add_test_user("rvown", &["-m", "-G", &u.group.name]);
    let other = spawnd_tests::add_second_entry("rvother", &own);
    let mut profiles = standard_profiles();
    profiles.push(Profile::shell(
        "secret",
        "echo \"SECRET-OF-$USER\"; exec sleep 1000",
    ));
    let d = TestDaemon::start(DaemonOptions {
        self_service: true,
        profiles,
        ..DaemonOptions::default()
    });
    d.open_socket_to_all();
    let hub = d.hub_client().await;
    // The hub starts a server under the second name (it is canonical: getpwnam gives it back),
    // lets it write its log, and stops it: the daemon forgets it, the log stays.
    start(&hub, start_req(&other.name, "", "secret")).await;
    let log = d.log_dir().join(&other.name).join("@default.log");
    let wrote = wait_for(std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("SECRET-OF-"))
    });
    assert!(wrote.is_some(), "the server never wrote its log");
    hub.stop(&sid(&other.name, ""), None, true)
        .await
        .expect("stop");
    let dir = std::fs::metadata(log.parent().unwrap()).expect("log dir");
    assert_eq!(
        (dir.uid(), dir.gid(), dir.mode() & 0o777),
        (0, 0, 0o700),
        "the second entry's log directory is root's alone: the peer cannot read it itself"
    );

    // The peer, whose own passwd name is `own`, asks for the log under the other name.
    let peer = d.user_client(&own).await;
    assert_eq!(peer.status().await.expect("status").your_role, "user");
    let read = peer.logs(&sid(&other.name, ""), 10).await;
    if let Ok(tail) = &read {
        assert!(
            !tail.lines.iter().any(|l| l.contains("SECRET-OF-")),
            "uid {} read the log of {}, a name that is not its own: {tail:?}",
            own.uid,
            other.name
        );
    }
    expect_err(read, ErrorKind::Unauthorized);
}

/// Checked in the review: a server's cgroup (and its user's directory above it) is root's, so the
/// user's code in it can neither make cgroups below it (and plant a `<server>.<instance>`
/// name there for recovery to find), nor kill, freeze or leave it, nor move anything in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_server_cannot_make_leave_or_write_its_cgroups() {
    require_root!();
    let u = users();
    let Some(root) = cgroup_v2_root() else {
        eprintln!("skipped: no cgroup v2 on this host");
        return;
    };
    let script = format!(
        "R={root}; cg=\"$R$(sed -n 's/^0:://p' /proc/self/cgroup)\"; up=$(dirname \"$cg\"); \
         try() {{ if eval \"$2\" 2>/dev/null; then echo \"$1-ALLOWED\"; else echo \"$1-denied\"; fi; }}; \
         try MKDIR \"mkdir '$cg/x.1'\"; try MKDIRUP \"mkdir '$up/y.1'\"; \
         try KILL \"echo 1 > '$cg/cgroup.kill'\"; try FREEZE \"echo 1 > '$up/cgroup.freeze'\"; \
         sleep 1000 & s=$!; try LEAVE \"echo $s > '$R/cgroup.procs'\"; \
         try SUBTREE \"echo +pids > '$cg/cgroup.subtree_control'\"; \
         echo \"owner=$(stat -c '%u:%g %a' \"$cg\") up=$(stat -c '%u:%g %a' \"$up\")\"; echo CHECKED; wait",
        root = root.display()
    );
    let mut profiles = standard_profiles();
    profiles.push(Profile::shell("cgpoke", &script));
    let d = TestDaemon::start(DaemonOptions {
        profiles,
        ..DaemonOptions::default()
    });
    require_cgroup!(d);
    let hub = d.hub_client().await;
    start(&hub, start_req(&u.a.name, "cgpoke", "cgpoke")).await;
    let log = d.log_dir().join(&u.a.name).join("cgpoke.log");
    let text = wait_for(std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("CHECKED"))
    })
    .expect("the server never finished its checks");
    let user_dir = d.cgroup_base.as_ref().expect("base").join(&u.a.name);
    let mut owners = vec![std::fs::metadata(&user_dir).expect("user cgroup").uid()];
    for entry in std::fs::read_dir(&user_dir).expect("user cgroup").flatten() {
        owners.push(entry.metadata().expect("server cgroup").uid());
    }
    let _ = hub.stop(&sid(&u.a.name, "cgpoke"), None, true).await;
    assert!(!text.contains("ALLOWED"), "{text}");
    assert!(owners.iter().all(|&uid| uid == 0), "{owners:?}");
}
