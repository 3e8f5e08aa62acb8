//! The daemon's own life: socket activation, kill -9 and re-adoption, SIGTERM with and without
//! `on_shutdown = "stop"`, SIGHUP reloads, corrupt state. Real users, the real daemon, real
//! processes; a server that outlives its daemon must be found again by pid + start time + uid.

use spawnd_client::{Client, ClientError};
use spawnd_protocol::{ErrorKind, ExitStatus, ServerId, ServerState, StartRequest};
use spawnd_tests::{
    DaemonOptions, Profile, TestDaemon, procfs, require_cgroup, require_root, sid,
    standard_profiles, start, start_req, users, wait_for, wait_for_async,
};
use std::time::Duration;

fn req(user: &str, server: &str, profile: &str) -> StartRequest {
    StartRequest {
        port: Some(8888),
        ..start_req(user, server, profile)
    }
}

fn kind<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorKind {
    match r {
        Err(ClientError::Daemon(e)) => e.kind,
        other => panic!("expected a daemon error, got {other:?}"),
    }
}

/// Profiles for these tests: `default` from the standard set, `sleeper` that runs until
/// killed, `usr1` that writes a line to its log on each SIGUSR1, and `tree` with a child in its
/// own session.
fn options() -> DaemonOptions {
    let mut profiles = standard_profiles();
    profiles.push(Profile::shell("sleeper", "echo started; exec sleep 1000"));
    profiles.push(Profile::shell(
        "usr1",
        "trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.05; done",
    ));
    profiles.push(Profile::shell(
        "tree",
        "setsid sleep 1000 & echo child=$!; wait",
    ));
    DaemonOptions {
        profiles,
        ..DaemonOptions::default()
    }
}

// Most tests here need per-server cgroups (`require_cgroup!`): a server that outlives its
// daemon is not the new daemon's child, so only its cgroup lets the harness clean up whatever
// a failure leaves.

async fn wait_log_line(c: &Client, id: &ServerId, needle: &str) -> Vec<String> {
    wait_for_async(Duration::from_secs(5), || async {
        let t = c.logs(id, 100).await.ok()?;
        t.lines
            .iter()
            .any(|l| l.contains(needle))
            .then_some(t.lines)
    })
    .await
    .unwrap_or_else(|| panic!("{needle:?} never appeared in the log of {id}"))
}

fn child_pid(lines: &[String]) -> u32 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("child="))
        .and_then(|p| p.trim().parse().ok())
        .expect("child=PID in the log")
}

fn gone(pid: u32) -> bool {
    wait_for(Duration::from_secs(3), || {
        (!procfs::is_alive(pid)).then_some(())
    })
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn socket_activated_daemon_serves() {
    require_root!();
    let u = users();
    let d = TestDaemon::start_socket_activated(options());
    let hub = d.hub_client().await;
    let status = hub
        .status()
        .await
        .expect("status over the inherited socket");
    assert_eq!(status.your_role, "hub");
    let s = start(&hub, req(&u.a.name, "", "sleeper")).await;
    assert_eq!(procfs::status_ids(s.pid, "Uid").unwrap()[0], u.a.uid);
    // The inherited listening socket must not leak into servers. Started is answered at the
    // exec, while the dynamic loader may still hold a library open for a moment: wait for
    // that to pass (a leaked socket would stay).
    let settled = wait_for(Duration::from_secs(5), || {
        procfs::fds(s.pid).filter(|fds| fds.len() == 3)
    });
    let fds = settled.unwrap_or_else(|| procfs::fds(s.pid).expect("server fds"));
    assert_eq!(
        fds.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2],
        "{fds:?}"
    );
    hub.stop(&sid(&u.a.name, ""), None, true)
        .await
        .expect("stop");
    assert!(d.stderr().contains("ready"), "{}", d.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn kill9_daemon_then_servers_are_readopted() {
    require_root!();
    let u = users();
    let mut d = TestDaemon::start(options());
    require_cgroup!(d);
    let hub = d.hub_client().await;
    let a = sid(&u.a.name, "");
    let b = sid(&u.b.name, "");
    let sa = start(&hub, req(&u.a.name, "", "tree")).await;
    let sb = start(&hub, req(&u.b.name, "", "sleeper")).await;
    let child = child_pid(&wait_log_line(&hub, &a, "child=").await);
    let before = hub.list().await.expect("list");
    drop(hub);

    d.kill_hard();
    // While the daemon is away, B's server ends.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sb.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill B's server");
    assert!(gone(sb.pid) || procfs::state(sb.pid) == Some('Z'));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    d.restart();

    let hub = d.hub_client().await;
    let pa = hub
        .poll(&a, Some(sa.instance))
        .await
        .expect("poll A after restart");
    assert_eq!((pa.state, pa.pid), (ServerState::Running, sa.pid));
    let pb = hub
        .poll(&b, Some(sb.instance))
        .await
        .expect("poll B after restart");
    assert_eq!(pb.state, ServerState::Exited(ExitStatus::Unknown));

    // spawnctl shows the original pids and start times (so uptimes keep counting).
    let out = d.spawnctl(&["list", "--json"]);
    assert!(out.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["user"] == u.a.name.as_str())
        .expect("A listed");
    assert_eq!(row["pid"], sa.pid);
    assert_eq!(row["state"], "running");
    let started_before = before.iter().find(|i| i.server == a).unwrap().started_at;
    assert_eq!(row["started_at"], started_before);
    assert!(row["uptime_secs"].as_u64().unwrap() >= 1, "{row}");

    // Stop still takes the whole tree, the setsid child included.
    let (_, exit) = hub
        .stop(&a, Some(sa.instance), false)
        .await
        .expect("stop A");
    assert_eq!(
        exit,
        ExitStatus::Unknown,
        "not our child any more: status unknown"
    );
    assert!(gone(sa.pid), "A's server survived stop");
    assert!(gone(child), "A's setsid child survived stop");
    let (_, exit) = hub.stop(&b, None, false).await.expect("stop B (exited)");
    assert_eq!(exit, ExitStatus::Unknown);
    assert_eq!(kind(hub.poll(&a, None).await), ErrorKind::NotFound);
    assert!(
        !d.record_path(&u.a.name, "").exists(),
        "record kept after stop"
    );
    assert!(
        !d.record_path(&u.b.name, "").exists(),
        "record kept after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn recorded_pid_of_another_process_is_never_signalled() {
    require_root!();
    let u = users();
    let mut d = TestDaemon::start(options());
    require_cgroup!(d);
    let hub = d.hub_client().await;
    let a = sid(&u.a.name, "");
    let s = start(&hub, req(&u.a.name, "", "sleeper")).await;
    drop(hub);
    d.kill_hard();
    // The server dies while the daemon is away, and another process of the same user takes
    // a recorded pid: the daemon must tell it apart by its start time.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut impostor = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={}", u.a.uid),
            &format!("--regid={}", u.a.gid),
            "--init-groups",
            "sleep",
            "1000",
        ])
        .spawn()
        .expect("start the impostor");
    let record = d.record_path(&u.a.name, "");
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    rec["pid"] = impostor.id().into();
    std::fs::write(&record, serde_json::to_vec(&rec).unwrap()).unwrap();
    d.restart();

    let hub = d.hub_client().await;
    let p = hub.poll(&a, None).await.expect("poll");
    assert_eq!(p.state, ServerState::Exited(ExitStatus::Unknown));
    assert_eq!(
        kind(hub.signal(&a, None, libc::SIGTERM).await),
        ErrorKind::NotFound,
        "an exited server has nothing to signal"
    );
    hub.stop(&a, None, true)
        .await
        .expect("stop the exited record");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        impostor.try_wait().unwrap().is_none(),
        "the process that took the recorded pid was signalled"
    );
    assert!(
        d.stderr().contains("now belongs to another process"),
        "{}",
        d.stderr()
    );
    let _ = impostor.kill();
    let _ = impostor.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn sigterm_keeps_servers_unless_on_shutdown_stop() {
    require_root!();
    let u = users();
    let mut d = TestDaemon::start(options());
    require_cgroup!(d);
    let hub = d.hub_client().await;
    let s = start(&hub, req(&u.a.name, "", "sleeper")).await;
    drop(hub);
    assert!(d.terminate(Duration::from_secs(5)).success());
    assert!(
        procfs::is_alive(s.pid),
        "SIGTERM of the daemon killed a server"
    );
    d.restart();
    let hub = d.hub_client().await;
    let p = hub
        .poll(&sid(&u.a.name, ""), Some(s.instance))
        .await
        .expect("poll");
    assert_eq!((p.state, p.pid), (ServerState::Running, s.pid));
    drop(hub);

    // Now with on_shutdown = "stop" (applied by a reload).
    let cfg = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("on_shutdown = \"stop\"\n{cfg}")).unwrap();
    d.sighup();
    let hub = d.hub_client().await;
    wait_for_async(Duration::from_secs(5), || async {
        d.stderr().contains("configuration reloaded").then_some(())
    })
    .await
    .expect("reload logged");
    let s2 = start(&hub, req(&u.b.name, "", "tree")).await;
    let child = child_pid(&wait_log_line(&hub, &sid(&u.b.name, ""), "child=").await);
    drop(hub);
    assert!(d.terminate(Duration::from_secs(10)).success());
    for pid in [s.pid, s2.pid, child] {
        assert!(
            !procfs::is_alive(pid) || procfs::state(pid) == Some('Z'),
            "process {pid} survived a daemon shutdown with on_shutdown = \"stop\""
        );
    }
    assert!(!d.record_path(&u.a.name, "").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn sighup_applies_a_valid_config_and_refuses_an_invalid_one() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(options());
    let hub = d.hub_client().await;
    let s = start(&hub, req(&u.a.name, "", "sleeper")).await;
    let original = std::fs::read_to_string(&d.config).unwrap();

    // Valid: deny B from now on.
    let denied = original.replacen(
        "deny_users = [",
        &format!("deny_users = [\"{}\", ", u.b.name),
        1,
    );
    assert_ne!(denied, original, "the test config has a deny_users list");
    std::fs::write(&d.config, &denied).unwrap();
    d.sighup();
    let refused = wait_for_async(Duration::from_secs(5), || async {
        match hub.start(req(&u.b.name, "", "sleeper")).await {
            Err(ClientError::Daemon(e)) if e.kind == ErrorKind::PolicyDenied => Some(e),
            Ok(_) => {
                let _ = hub.stop(&sid(&u.b.name, ""), None, true).await;
                None
            }
            Err(_) => None,
        }
    })
    .await
    .expect("after SIGHUP, B is denied");
    assert!(
        refused.message.contains("deny_users"),
        "{}",
        refused.message
    );
    // The running server was not touched by the reload.
    let p = hub
        .poll(&sid(&u.a.name, ""), Some(s.instance))
        .await
        .unwrap();
    assert_eq!(p.state, ServerState::Running);

    // Invalid: the daemon keeps the last good config (B still denied, A still fine).
    std::fs::write(&d.config, "this is = not [valid toml").unwrap();
    d.sighup();
    wait_for(Duration::from_secs(5), || {
        d.stderr().contains("reload refused").then_some(())
    })
    .expect("the refused reload is logged");
    assert_eq!(
        kind(hub.start(req(&u.b.name, "", "sleeper")).await),
        ErrorKind::PolicyDenied
    );
    start(&hub, req(&u.a.name, "second", "sleeper")).await;
    assert_eq!(hub.status().await.unwrap().running, 2);
    std::fs::write(&d.config, &original).unwrap();
    hub.stop(&sid(&u.a.name, "second"), None, true)
        .await
        .unwrap();
    hub.stop(&sid(&u.a.name, ""), None, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn corrupt_state_is_set_aside_and_servers_recovered_from_cgroups() {
    require_root!();
    let u = users();
    let mut d = TestDaemon::start(options());
    require_cgroup!(d);
    let hub = d.hub_client().await;
    let a = sid(&u.a.name, "lab");
    let s = start(&hub, req(&u.a.name, "lab", "tree")).await;
    let child = child_pid(&wait_log_line(&hub, &a, "child=").await);
    drop(hub);
    d.kill_hard();
    let record = d.record_path(&u.a.name, "lab");
    std::fs::write(&record, b"\x00garbage{").unwrap();
    d.restart();

    let moved: Vec<_> = std::fs::read_dir(record.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("lab.json.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "the corrupt record is kept aside");
    assert!(
        d.stderr().contains("UNREADABLE SERVER RECORD"),
        "{}",
        d.stderr()
    );

    let hub = d.hub_client().await;
    let p = hub
        .poll(&a, Some(s.instance))
        .await
        .expect("recovered from its cgroup");
    assert_eq!((p.state, p.pid), (ServerState::Running, s.pid));
    assert!(
        d.record_path(&u.a.name, "lab").exists(),
        "a new record is written"
    );
    hub.stop(&a, None, false).await.expect("stop");
    assert!(
        gone(s.pid) && gone(child),
        "the recovered tree survived stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn log_stays_attached_and_signals_work_after_restart() {
    require_root!();
    let u = users();
    let mut d = TestDaemon::start(options());
    require_cgroup!(d);
    let hub = d.hub_client().await;
    let a = sid(&u.a.name, "");
    let s = start(&hub, req(&u.a.name, "", "usr1")).await;
    wait_log_line(&hub, &a, "ready").await;
    drop(hub);
    d.kill_hard();
    d.restart();
    let hub = d.hub_client().await;
    hub.signal(&a, Some(s.instance), libc::SIGUSR1)
        .await
        .expect("signal after restart");
    let lines = wait_log_line(&hub, &a, "got-usr1").await;
    assert!(lines.iter().any(|l| l == "ready"), "{lines:?}");
    hub.stop(&a, None, true).await.expect("stop");
    assert!(gone(s.pid));
}

/// A capability mask line (`CapEff:` etc.) of /proc/PID/status or /proc/PID/task/TID/status.
fn cap_mask(status_path: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(status_path).expect("read status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("{field} in {status_path}"));
    u64::from_str_radix(hex.trim(), 16).expect("hex mask")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn daemon_keeps_only_needed_capabilities_and_servers_have_none() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(options());
    // CAP_CHOWN 0, CAP_KILL 5, CAP_SETGID 6, CAP_SETUID 7, as far as this process holds them.
    let held = cap_mask("/proc/self/status", "CapPrm:");
    let bounding: u64 = held & ((1 << 0) | (1 << 5) | (1 << 6) | (1 << 7));
    assert_eq!(
        bounding & ((1 << 6) | (1 << 7)),
        (1 << 6) | (1 << 7),
        "tests need setuid/setgid"
    );
    // The daemon signals and chowns; it never changes uids itself (its launcher does).
    let daemon = bounding & ((1 << 0) | (1 << 5));
    let launcher = bounding & ((1 << 5) | (1 << 6) | (1 << 7));
    // Every thread of the daemon (capability sets are per thread), and the launcher.
    let mut tasks: Vec<(String, u64)> = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .expect("daemon tasks")
        .flatten()
        .map(|e| (e.path().join("status").display().to_string(), daemon))
        .collect();
    assert!(tasks.len() > 1, "the daemon runs threads");
    let launchers = procfs::launchers_of(d.pid());
    assert_eq!(launchers.len(), 1, "one launcher: {launchers:?}");
    tasks.push((format!("/proc/{}/status", launchers[0]), launcher));
    for (t, expected) in &tasks {
        assert_eq!(cap_mask(t, "CapEff:"), *expected, "{t} effective");
        assert_eq!(cap_mask(t, "CapPrm:"), *expected, "{t} permitted");
        assert_eq!(cap_mask(t, "CapInh:"), 0, "{t} inheritable");
        assert_eq!(cap_mask(t, "CapAmb:"), 0, "{t} ambient");
        assert_eq!(cap_mask(t, "CapBnd:"), bounding, "{t} bounding");
    }
    let hub = d.hub_client().await;
    let status = hub.status().await.expect("status");
    assert_eq!(status.capabilities, ["chown", "kill"]);

    let s = start(&hub, req(&u.a.name, "", "sleeper")).await;
    let server = format!("/proc/{}/status", s.pid);
    for field in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        assert_eq!(cap_mask(&server, field), 0, "server {field}");
    }
    assert_eq!(
        cap_mask(&server, "CapBnd:"),
        bounding,
        "server bounding set"
    );
    hub.stop(&sid(&u.a.name, ""), None, true)
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn systemd_is_told_ready_status_and_watchdog() {
    require_root!();
    // A stand-in for systemd's notification socket: the real sd_notify datagrams arrive here.
    let dir = std::env::temp_dir().join(format!("spawnd-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut opts = options();
    opts.env = vec![
        ("NOTIFY_SOCKET".into(), path.display().to_string()),
        ("WATCHDOG_USEC".into(), "200000".into()),
    ];
    let d = TestDaemon::start(opts);
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline
        && !(seen.contains("READY=1") && seen.matches("WATCHDOG=1").count() >= 2)
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(seen.contains("READY=1"), "{seen:?}");
    assert!(
        seen.contains("STATUS=0 servers running, 0 exited"),
        "{seen:?}"
    );
    assert!(
        seen.matches("WATCHDOG=1").count() >= 2,
        "watchdog petted repeatedly: {seen:?}"
    );
    // The daemon still serves, and its servers do not inherit NOTIFY_SOCKET.
    let u = users();
    let hub = d.hub_client().await;
    let s = start(&hub, req(&u.a.name, "", "sleeper")).await;
    let env = procfs::environ(s.pid).expect("environ");
    assert!(
        !env.iter().any(|v| v.starts_with("NOTIFY_SOCKET")),
        "{env:?}"
    );
    hub.stop(&sid(&u.a.name, ""), None, true)
        .await
        .expect("stop");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn servers_do_not_share_a_session_keyring() {
    require_root!();
    if std::process::Command::new("keyctl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("keyctl (Debian package keyutils) is needed; scripts/test installs it");
    }
    let u = users();
    let mut opts = options();
    opts.profiles.push(Profile::shell(
        "keystore",
        "keyctl add user spawnd-test-secret TOPSECRET @s >/dev/null && echo stored; exec sleep 1000",
    ));
    opts.profiles.push(Profile::shell(
        "keyread",
        "if keyctl request user spawnd-test-secret >/dev/null 2>&1; then echo key: found; \
         else echo key: not-found; fi; exec sleep 1000",
    ));
    // Under systemd, PAM gives the daemon a session keyring, which every child inherits.
    opts.wrapper = vec!["keyctl".into(), "session".into(), "-".into()];
    let d = TestDaemon::start(opts);
    let hub = d.hub_client().await;
    start(&hub, req(&u.a.name, "", "keystore")).await;
    wait_log_line(&hub, &sid(&u.a.name, ""), "stored").await;
    start(&hub, req(&u.b.name, "", "keyread")).await;
    let lines = wait_log_line(&hub, &sid(&u.b.name, ""), "key:").await;
    assert!(
        lines.iter().any(|l| l == "key: not-found"),
        "B's server could read a key A's server stored: {lines:?}"
    );
    for user in [&u.a.name, &u.b.name] {
        hub.stop(&sid(user, ""), None, true).await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn servers_start_past_the_inherited_fd_limit_and_get_it_back() {
    require_root!();
    let u = users();
    let mut opts = options();
    // systemd gives services a soft limit of 1024; a small one shows the same at 40 servers:
    // the daemon holds a pidfd per server, so it raises its own soft limit, and each server
    // gets the original one back.
    opts.wrapper = vec!["prlimit".into(), "--nofile=32:4096".into()];
    let d = TestDaemon::start(opts);
    let hub = d.hub_client().await;
    let mut pids = Vec::new();
    for i in 0..40 {
        let s = start(&hub, req(&u.a.name, &format!("n{i}"), "sleeper")).await;
        pids.push(s.pid);
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pids[39])).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["32", "4096"], "{line}");
    for i in 0..40 {
        hub.stop(&sid(&u.a.name, &format!("n{i}")), None, true)
            .await
            .expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_server_runs_in_its_own_cgroup_from_birth() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(options());
    require_cgroup!(d);
    let hub = d.hub_client().await;
    let s = start(&hub, req(&u.a.name, "lab", "sleeper")).await;
    let base = d.cgroup_base.clone().unwrap();
    let root = spawnd_tests::cgroup_v2_root().unwrap();
    let expected = format!(
        "/{}",
        base.join(&u.a.name)
            .join(format!("lab.{}", s.instance))
            .strip_prefix(&root)
            .unwrap()
            .display()
    );
    assert_eq!(procfs::cgroup(s.pid).as_deref(), Some(expected.as_str()));
    hub.stop(&sid(&u.a.name, "lab"), None, true)
        .await
        .expect("stop");
    assert!(
        !base
            .join(&u.a.name)
            .join(format!("lab.{}", s.instance))
            .exists()
    );
}

/// `systemctl status` shows the counts within a second or two of a change, without a
/// watchdog too (the status line was sent every 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn the_systemd_status_line_follows_the_servers_at_once() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("spawnd-notify-now-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut opts = options();
    opts.env = vec![("NOTIFY_SOCKET".into(), path.display().to_string())];
    let d = TestDaemon::start(opts);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let mut wait_for_text = |text: &str, within: Duration| {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline && !seen.contains(text) {
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        seen.contains(text)
    };
    assert!(wait_for_text(
        "STATUS=0 servers running, 0 exited",
        Duration::from_secs(5)
    ));
    let u = users();
    let hub = d.hub_client().await;
    start(&hub, req(&u.a.name, "", "sleeper")).await;
    assert!(
        wait_for_text("STATUS=1 servers running, 0 exited", Duration::from_secs(3)),
        "the status line did not follow the start"
    );
    hub.stop(&sid(&u.a.name, ""), None, true)
        .await
        .expect("stop");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
