//! End-to-end tests of spawnd: real users, the real daemon on a real socket, real uid changes.
//! Each test starts its own daemon. They need root: each is marked ignored (run them as root
//! with `-- --include-ignored`), and fails with `needs root` if included without root.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use spawnd_client::Client;
use spawnd_protocol::{
    ErrorKind, ErrorReply, ExitStatus, LogTail, Request, Response, ServerId, ServerState,
    StartRequest,
};
use spawnd_tests::{
    DEFAULT_PROFILE_ENV, DaemonOptions, PROFILE_PATH, Profile, RawConn, RawRecv, TestDaemon,
    TestDir, TestUser, assert_no_servers_running, bin_path, connect_as, expect_err, procfs, ready,
    require_root, run_with_timeout, sid, start, start_req, users, wait_for, wait_for_async,
};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// helpers

/// The environment the hub sends in these tests: four allowed names, four that must be dropped.
fn hub_env(user: &str) -> Vec<(String, String)> {
    [
        ("JUPYTERHUB_API_TOKEN", format!("secret-token-of-{user}")),
        ("JUPYTERHUB_USER", user.to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("LC_ALL", "C.UTF-8".to_owned()),
        ("LD_PRELOAD", "/tmp/evil.so".to_owned()),
        ("LD_LIBRARY_PATH", "/tmp/evil".to_owned()),
        ("PYTHONPATH", "/tmp/evil-py".to_owned()),
        ("FOO", "bar".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The names of [`hub_env`] the default allow-list drops, sorted.
const DROPPED: [&str; 4] = ["FOO", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH"];

/// A start request as the hub sends it: [`hub_env`] and a port.
fn hub_start_req(user: &str, server: &str, profile: &str) -> StartRequest {
    StartRequest {
        env: hub_env(user),
        port: Some(48000),
        ..start_req(user, server, profile)
    }
}

/// Asks for the log until a line contains `needle` (5 s at most).
async fn wait_log(client: &Client, server: &ServerId, needle: &str) -> LogTail {
    let found = wait_for_async(Duration::from_secs(5), || async {
        let tail = client.logs(server, 200).await.ok()?;
        tail.lines
            .iter()
            .any(|l| l.contains(needle))
            .then_some(tail)
    })
    .await;
    match found {
        Some(tail) => tail,
        None => panic!(
            "the log of {server} never showed {needle:?} within 5 s; last lines: {:?}",
            client.logs(server, 50).await
        ),
    }
}

/// Polls until the server has exited (5 s at most).
async fn wait_exited(client: &Client, server: &ServerId) -> ExitStatus {
    let exit = wait_for_async(Duration::from_secs(5), || async {
        match client.poll(server, None).await {
            Ok(p) => match p.state {
                ServerState::Exited(e) => Some(e),
                _ => None,
            },
            Err(e) => panic!("poll {server}: {e}"),
        }
    })
    .await;
    exit.unwrap_or_else(|| panic!("{server} still not exited after 5 s"))
}

// ---------------------------------------------------------------------------------------------
// 1. a started server is the user's, in a clean environment

async fn check_started_server(d: &TestDaemon, hub: &Client, user: &TestUser, args: &[&str]) {
    let u = users();
    let server = sid(&user.name, "");
    let mut req = hub_start_req(&user.name, "", "");
    req.args = args.iter().map(|a| a.to_string()).collect();
    let started = start(hub, req).await;
    let pid = started.pid;

    assert_eq!(
        started.dropped_env, DROPPED,
        "dropped_env must list exactly the names the profile does not allow, sorted"
    );

    // The shell prints, then execs `sleep` in the same process: wait for that.
    let log = wait_log(hub, &server, ready::DEFAULT).await;
    let is_sleep = wait_for(Duration::from_secs(5), || {
        (procfs::comm(pid).as_deref() == Some("sleep")).then_some(())
    });
    assert!(
        is_sleep.is_some(),
        "pid {pid} never became `sleep` (comm {:?})",
        procfs::comm(pid)
    );

    // Identity: all four uids and gids, and the full group list.
    assert_eq!(
        procfs::status_ids(pid, "Uid"),
        Some(vec![user.uid; 4]),
        "Uid (real, effective, saved, fs) of {}'s server",
        user.name
    );
    assert_eq!(
        procfs::status_ids(pid, "Gid"),
        Some(vec![user.gid; 4]),
        "Gid of {}'s server",
        user.name
    );
    let mut groups = procfs::status_ids(pid, "Groups").expect("Groups line");
    groups.sort_unstable();
    assert_eq!(
        groups, user.groups,
        "supplementary groups of {}'s server must be `id -G {}`",
        user.name, user.name
    );
    assert!(groups.contains(&u.group.gid));
    if user.name == u.a.name {
        assert!(
            groups.contains(&u.extra_group.gid),
            "A's extra group X is missing: {groups:?}"
        );
    }

    // A fresh process's signal state: nothing blocked (the daemon blocks every signal around
    // the clone), nothing ignored (the daemon ignores SIGPIPE; ignored signals survive exec),
    // and no capabilities at all.
    for field in ["SigBlk", "SigIgn", "CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(
            procfs::status_mask(pid, field),
            Some(0),
            "{field} of {}'s server must be empty",
            user.name
        );
    }

    // Place: home, own session, exactly fds 0 (/dev/null), 1 and 2 (the log).
    assert_eq!(procfs::cwd(pid), Some(user.home.clone()), "cwd");
    assert_eq!(
        procfs::session(pid),
        Some(pid),
        "the server must lead its own session"
    );
    let log_path = PathBuf::from(&started.log_path);
    assert!(
        log_path.starts_with(d.log_dir().join(&user.name)),
        "log {} not under {}",
        log_path.display(),
        d.log_dir().join(&user.name).display()
    );
    // (`sleep` has just been exec'd: its dynamic loader may hold a library open for a moment.)
    let fds = wait_for(Duration::from_secs(5), || {
        procfs::fds(pid).filter(|fds| fds.len() == 3)
    })
    .unwrap_or_else(|| procfs::fds(pid).expect("fds"));
    let expected_fds: BTreeMap<i32, PathBuf> = [
        (0, PathBuf::from("/dev/null")),
        (1, log_path.clone()),
        (2, log_path.clone()),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        fds, expected_fds,
        "open descriptors of {}'s server",
        user.name
    );

    // The per-user log directory: root-owned, group = the user's primary group, 0750.
    let meta = std::fs::metadata(d.log_dir().join(&user.name)).expect("user log dir");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, user.gid, 0o750),
        "owner, group and mode of the user's log directory"
    );

    // Environment: exactly passwd's four, the profile's PATH, the allowed client variables
    // and the profile's env.
    let mut expected: Vec<String> = vec![
        format!("HOME={}", user.home.display()),
        format!("USER={}", user.name),
        format!("LOGNAME={}", user.name),
        format!("SHELL={}", user.shell),
        format!("PATH={PROFILE_PATH}"),
        format!("JUPYTERHUB_API_TOKEN=secret-token-of-{}", user.name),
        format!("JUPYTERHUB_USER={}", user.name),
        "LANG=C.UTF-8".to_owned(),
        "LC_ALL=C.UTF-8".to_owned(),
    ];
    expected.extend(DEFAULT_PROFILE_ENV.iter().map(|(k, v)| format!("{k}={v}")));
    expected.sort();

    // What the shell was executed with (it printed its own /proc/$$/environ, sorted).
    let all_lines = hub.logs(&server, 1000).await.expect("logs").lines;
    let begin = all_lines.iter().position(|l| l == "ENV-BEGIN");
    let end = all_lines.iter().position(|l| l == "ENV-END");
    let (Some(begin), Some(end)) = (begin, end) else {
        panic!("no ENV-BEGIN/ENV-END in the log: {all_lines:?}");
    };
    assert_eq!(
        all_lines[begin + 1..end].to_vec(),
        expected,
        "the environment {}'s server was executed with",
        user.name
    );
    // And what `sleep` got from the shell: the same, plus the PWD that dash always exports.
    let mut environ = procfs::environ(pid).expect("environ");
    environ.sort();
    let mut with_pwd = expected.clone();
    with_pwd.push(format!("PWD={}", user.home.display()));
    with_pwd.sort();
    assert_eq!(environ, with_pwd, "/proc/{pid}/environ");
    for bad in DROPPED {
        assert!(
            !environ.iter().any(|e| e.starts_with(&format!("{bad}="))),
            "{bad} reached the server"
        );
    }

    // What `id` said, through the daemon's Logs request.
    let text = log.lines.join("\n");
    assert!(text.contains(&format!("uid={}", user.uid)), "log: {text}");
    assert!(text.contains(&format!("gid={}", user.gid)), "log: {text}");
    assert!(
        text.contains(&format!("pwd={}", user.home.display())),
        "log: {text}"
    );
    let id_groups = log
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("groups="))
        .expect("groups= line in the log");
    let mut id_groups: Vec<u32> = id_groups
        .split_whitespace()
        .map(|g| g.parse().expect("gid"))
        .collect();
    id_groups.sort_unstable();
    assert_eq!(id_groups, user.groups, "`id -G` inside the server");
    // argv = the profile's command + the request's arguments, each one argument.
    let want = format!("args={}:{}", args.len(), args.join(" "));
    assert!(
        log.lines.contains(&want),
        "the hub's arguments: expected {want:?} in {:?}",
        log.lines
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn start_runs_server_as_the_user_in_a_clean_environment() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(DaemonOptions::default());
    let hub = d.hub_client().await;
    check_started_server(&d, &hub, &u.a, &[]).await;
    check_started_server(&d, &hub, &u.b, &["--ip=127.0.0.1", "two words"]).await;

    let listed = d.admin_client().await.list().await.expect("list");
    let mut names: Vec<String> = listed.iter().map(|s| s.server.user.clone()).collect();
    names.sort();
    assert_eq!(names, vec![u.a.name.clone(), u.b.name.clone()]);
    for s in &listed {
        let user = if s.server.user == u.a.name {
            &u.a
        } else {
            &u.b
        };
        assert_eq!(s.uid, user.uid);
        assert_eq!(s.state, ServerState::Running);
        assert_eq!(s.port, Some(48000));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. roles

/// Connects as `user`, sends a request, and expects the daemon to close the connection
/// (EOF, ECONNRESET or EPIPE) without answering.
fn expect_refused(d: &TestDaemon, user: &TestUser) {
    let conn = d.raw_as(user);
    let packet =
        spawnd_protocol::encode_request(1, &Request::Start(hub_start_req(&users().a.name, "", "")))
            .expect("encode");
    match conn.send(&packet) {
        Ok(_) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => return,
        Err(e) => panic!("send as {}: {e}", user.name),
    }
    match conn.recv(Duration::from_secs(5)) {
        Ok(RawRecv::Closed(_)) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
        Ok(RawRecv::Packet(p)) => panic!(
            "{} has no role, yet the daemon answered: {:?}",
            user.name,
            spawnd_protocol::decode_response(&p)
        ),
        Ok(RawRecv::TimedOut) => panic!(
            "the daemon did not close the connection of {} (no role) within 5 s",
            user.name
        ),
        Err(e) => panic!("recv as {}: {e}", user.name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn peers_without_a_role_are_disconnected() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(DaemonOptions::default());

    // First fence: the socket file is 0660 for the hub's group.
    let meta = std::fs::metadata(&d.socket).expect("socket");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, u.hub.gid, 0o660),
        "owner, group and mode of the socket"
    );
    let denied = connect_as(
        &d.socket,
        u.outsider.uid,
        u.outsider.gid,
        &u.outsider.groups,
    );
    assert_eq!(
        denied.map(drop).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EACCES)),
        "the socket's mode must keep an outsider out"
    );

    // Second fence: with the file open to all, the daemon's credential check refuses them.
    d.open_socket_to_all();
    expect_refused(&d, &u.outsider);
    // A is in the notebook group, but self_service is off.
    expect_refused(&d, &u.a);
    // Roles come from the kernel's group list of the connection, never from NSS: D without
    // the admin group in its credentials is nobody.
    let mut d_without_m = u.admin.clone();
    d_without_m.groups.retain(|&g| g != u.admin_group.gid);
    expect_refused(&d, &d_without_m);
    // Through the client library too: the call fails as a lost connection.
    let outsider = d.outsider_client().await;
    match outsider.status().await {
        Err(e) if e.is_daemon_unreachable() => {}
        other => panic!("an outsider's status request must fail as disconnected, got {other:?}"),
    }

    assert!(
        d.admin_client()
            .await
            .list()
            .await
            .expect("list")
            .is_empty(),
        "a refused peer's start request must not start anything"
    );
    assert_no_servers_running(&d);

    // The daemon still serves the others, with the right roles.
    let hub = d.hub_client().await.status().await.expect("hub status");
    assert_eq!(hub.your_role, "hub");
    let root = d.admin_client().await.status().await.expect("root status");
    assert_eq!(root.your_role, "admin");
    let member_of_admin_group = d.client_as(&u.admin).await.status().await;
    assert_eq!(
        member_of_admin_group.expect("admin group status").your_role,
        "admin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn self_service_user_manages_only_own_servers() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(DaemonOptions {
        self_service: true,
        ..DaemonOptions::default()
    });
    d.open_socket_to_all();
    let hub = d.hub_client().await;
    let a_server = sid(&u.a.name, "");
    let b_server = sid(&u.b.name, "");
    let a_started = start(&hub, hub_start_req(&u.a.name, "", "")).await;
    let b_started = start(&hub, hub_start_req(&u.b.name, "", "")).await;

    let a = d.user_client(&u.a).await;
    assert_eq!(a.status().await.expect("status as A").your_role, "user");

    let listed = a.list().await.expect("list as A");
    assert_eq!(
        listed.iter().map(|s| s.server.clone()).collect::<Vec<_>>(),
        vec![a_server.clone()],
        "A must see exactly its own server"
    );
    let polled = a.poll(&a_server, None).await.expect("A polls own server");
    assert_eq!(
        (polled.pid, polled.state),
        (a_started.pid, ServerState::Running)
    );
    a.logs(&a_server, 10).await.expect("A reads own log");

    expect_err(a.poll(&b_server, None).await, ErrorKind::Unauthorized);
    expect_err(a.logs(&b_server, 10).await, ErrorKind::Unauthorized);
    expect_err(a.stop(&b_server, None, true).await, ErrorKind::Unauthorized);
    expect_err(a.signal(&b_server, None, 15).await, ErrorKind::Unauthorized);
    expect_err(
        a.start(hub_start_req(&u.a.name, "other", "")).await,
        ErrorKind::Unauthorized,
    );
    assert!(
        a.poll(&sid(&u.a.name, "other"), None).await.is_err(),
        "A's refused start must not have started a server"
    );

    let (instance, _) = a
        .stop(&a_server, None, true)
        .await
        .expect("A stops own server");
    assert_eq!(instance, a_started.instance);
    expect_err(hub.poll(&a_server, None).await, ErrorKind::NotFound);

    // B's server was untouched by all of that.
    let b = hub.poll(&b_server, None).await.expect("poll B");
    assert_eq!((b.pid, b.state), (b_started.pid, ServerState::Running));
    assert!(procfs::is_alive(b_started.pid));
}

// ---------------------------------------------------------------------------------------------
// 3. start policy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn start_policy_denials() {
    require_root!();
    let u = users();
    let mut profiles = spawnd_tests::standard_profiles();
    let mut noargs = Profile::shell("noargs", "exec sleep 1000");
    noargs.allow_args = Some(false);
    profiles.push(noargs);
    let d = TestDaemon::start(DaemonOptions {
        deny_users: vec![u.b.name.clone()],
        profiles,
        ..DaemonOptions::default()
    });
    let hub = d.hub_client().await;
    let nosuch = format!("{}nobody", u.prefix);

    let cases: Vec<(StartRequest, Vec<String>)> = vec![
        (hub_start_req("root", "", ""), vec!["root".into()]),
        (
            hub_start_req(&u.outsider.name, "", ""),
            vec![u.outsider.name.clone(), u.group.name.clone()],
        ),
        (
            hub_start_req(&u.system.name, "", ""),
            vec![u.system.name.clone(), "min_uid".into()],
        ),
        (hub_start_req(&nosuch, "", ""), vec![nosuch.clone()]),
        (
            hub_start_req(&u.b.name, "", ""),
            vec![u.b.name.clone(), "deny".into()],
        ),
        (
            hub_start_req(&u.a.name, "", "nosuchprofile"),
            vec!["nosuchprofile".into(), "default".into(), "int7".into()],
        ),
        (
            StartRequest {
                args: vec!["--extra".into()],
                ..hub_start_req(&u.a.name, "", "noargs")
            },
            vec!["allow_args".into()],
        ),
    ];
    for (req, words) in cases {
        let what = format!("start {} profile {:?}", req.server, req.profile);
        let reply = expect_err(hub.start(req).await, ErrorKind::PolicyDenied);
        for w in &words {
            assert!(
                reply.message.contains(w.as_str()),
                "{what}: the message should name {w:?}: {:?}",
                reply.message
            );
        }
    }

    assert!(
        d.admin_client()
            .await
            .list()
            .await
            .expect("list")
            .is_empty(),
        "a refused start must leave no server"
    );
    assert_no_servers_running(&d);
    for user in [&u.outsider, &u.system] {
        assert_eq!(
            procfs::pids_of_uid(user.uid),
            Vec::<u32>::new(),
            "{} has processes after a refused start",
            user.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. poll and signal

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn poll_reports_running_and_exit() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(DaemonOptions::default());
    let hub = d.hub_client().await;

    let running = sid(&u.a.name, "");
    let started = start(&hub, hub_start_req(&u.a.name, "", "")).await;
    let polled = hub
        .poll(&running, Some(started.instance))
        .await
        .expect("poll");
    assert_eq!(
        (polled.instance, polled.pid, polled.state),
        (started.instance, started.pid, ServerState::Running)
    );

    // A server that exits by itself: exit code 3, seen by polling (no fixed sleep first).
    let exiting = sid(&u.b.name, "ex");
    let t0 = Instant::now();
    let ex = start(&hub, hub_start_req(&u.b.name, "ex", "exit3")).await;
    let exit = wait_exited(&hub, &exiting).await;
    assert_eq!(exit, ExitStatus::Code(3), "exit status of the exit3 server");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "exit3 sleeps 1 s before exiting"
    );
    let polled = hub.poll(&exiting, Some(ex.instance)).await.expect("poll");
    assert_eq!(polled.state, ServerState::Exited(ExitStatus::Code(3)));
    let log = hub.logs(&exiting, 50).await.expect("logs");
    assert!(
        log.lines.iter().any(|l| l.contains(ready::EXIT3)),
        "the exited server's log: {:?}",
        log.lines
    );

    // Signal: SIGTERM to the running server; it dies of it.
    hub.signal(&running, Some(started.instance), libc::SIGTERM)
        .await
        .expect("signal");
    assert_eq!(
        wait_exited(&hub, &running).await,
        ExitStatus::Signal(libc::SIGTERM)
    );
    let gone = wait_for(Duration::from_secs(2), || {
        (!procfs::is_alive(started.pid)).then_some(())
    });
    assert!(gone.is_some(), "pid {} still alive", started.pid);

    // Stopping an exited server returns its recorded exit and forgets it.
    let (instance, exit) = hub.stop(&exiting, None, false).await.expect("stop exited");
    assert_eq!((instance, exit), (ex.instance, ExitStatus::Code(3)));
    expect_err(hub.poll(&exiting, None).await, ErrorKind::NotFound);
}

// ---------------------------------------------------------------------------------------------
// 5. stop escalation

async fn stop_int7(hub: &Client, user: &str) {
    let server = sid(user, "int7");
    start(hub, hub_start_req(user, "int7", "int7")).await;
    wait_log(hub, &server, ready::INT7).await;
    let (_, exit) = hub.stop(&server, None, false).await.expect("stop int7");
    assert_eq!(exit, ExitStatus::Code(7), "SIGINT first: the trap exits 7");
    expect_err(hub.poll(&server, None).await, ErrorKind::NotFound);
}

async fn stop_ignore(hub: &Client, user: &str) {
    let server = sid(user, "ignore");
    let started = start(hub, hub_start_req(user, "ignore", "ignore")).await;
    wait_log(hub, &server, ready::IGNORE).await;
    let t0 = Instant::now();
    let (_, exit) = hub.stop(&server, None, false).await.expect("stop ignore");
    let took = t0.elapsed();
    assert_eq!(
        exit,
        ExitStatus::Signal(libc::SIGKILL),
        "a server ignoring INT and TERM ends by SIGKILL"
    );
    assert!(
        took >= Duration::from_secs(1),
        "interrupt_timeout 0.5 + term_timeout 0.5 must pass before SIGKILL; took {took:?}"
    );
    assert!(!procfs::is_alive(started.pid));
    expect_err(hub.poll(&server, None).await, ErrorKind::NotFound);
}

async fn stop_now(hub: &Client, user: &str) {
    let server = sid(user, "now");
    start(hub, hub_start_req(user, "now", "now")).await;
    wait_log(hub, &server, ready::NOW).await;
    let (_, exit) = hub.stop(&server, None, true).await.expect("stop now");
    assert_eq!(
        exit,
        ExitStatus::Code(9),
        "now=true skips SIGINT (exit 7) and sends SIGTERM (exit 9)"
    );
    expect_err(hub.poll(&server, None).await, ErrorKind::NotFound);
}

async fn stop_setsid(hub: &Client, user: &TestUser, cgroup_mode: bool) {
    let server = sid(&user.name, "setsid");
    start(hub, hub_start_req(&user.name, "setsid", "setsid")).await;
    let log = wait_log(hub, &server, "child=").await;
    let child: u32 = log
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("child="))
        .and_then(|p| p.trim().parse().ok())
        .expect("child=PID in the log");
    // The child really escaped: its own session, still the user's.
    let own_session = wait_for(Duration::from_secs(5), || {
        (procfs::session(child) == Some(child)).then_some(())
    });
    assert!(
        own_session.is_some(),
        "child {child} not in its own session"
    );
    assert_eq!(
        procfs::status_ids(child, "Uid").and_then(|v| v.first().copied()),
        Some(user.uid)
    );
    hub.stop(&server, None, false).await.expect("stop setsid");
    if !cgroup_mode {
        // A process that left the server's process group escapes process-group mode (the
        // daemon says so in its status); only cgroups can find it.
        eprintln!("note: process-group mode: not checking that child {child} was killed");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        expect_err(hub.poll(&server, None).await, ErrorKind::NotFound);
        return;
    }
    let gone = wait_for(Duration::from_secs(2), || {
        (!procfs::is_alive(child)).then_some(())
    });
    assert!(
        gone.is_some(),
        "the server's child {child} (own session) survived Stop: state {:?}",
        procfs::state(child)
    );
    expect_err(hub.poll(&server, None).await, ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn stop_escalates_and_kills_the_whole_tree() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(DaemonOptions::default());
    let hub = d.hub_client().await;
    let tree_kill = hub.status().await.expect("status").tree_kill;
    match &d.cgroup_base {
        Some(base) => assert_eq!(tree_kill, format!("cgroup-v2 ({})", base.display())),
        None => assert!(tree_kill.starts_with("process-group"), "{tree_kill}"),
    }
    // One connection, four stops in flight at once.
    tokio::join!(
        stop_int7(&hub, &u.a.name),
        stop_ignore(&hub, &u.a.name),
        stop_now(&hub, &u.b.name),
        stop_setsid(&hub, &u.b, d.cgroup_base.is_some()),
    );
    expect_err(
        hub.stop(&sid(&u.a.name, "nosuchserver"), None, false).await,
        ErrorKind::NotFound,
    );
    assert!(
        d.admin_client()
            .await
            .list()
            .await
            .expect("list")
            .is_empty()
    );
    assert_no_servers_running(&d);
}

// ---------------------------------------------------------------------------------------------
// 6. stale instances

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn stale_instance_is_not_found() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(DaemonOptions::default());
    let hub = d.hub_client().await;
    let server = sid(&u.a.name, "");

    let first = start(&hub, hub_start_req(&u.a.name, "", "")).await;
    wait_log(&hub, &server, ready::DEFAULT).await;
    expect_err(
        hub.start(hub_start_req(&u.a.name, "", "")).await,
        ErrorKind::AlreadyRunning,
    );
    let (stopped, _) = hub
        .stop(&server, Some(first.instance), true)
        .await
        .expect("stop first");
    assert_eq!(stopped, first.instance);

    let second = start(&hub, hub_start_req(&u.a.name, "", "")).await;
    assert_ne!(
        second.instance, first.instance,
        "each start is a new instance"
    );

    let old = Some(first.instance);
    expect_err(hub.stop(&server, old, true).await, ErrorKind::NotFound);
    expect_err(hub.poll(&server, old).await, ErrorKind::NotFound);
    expect_err(
        hub.signal(&server, old, libc::SIGKILL).await,
        ErrorKind::NotFound,
    );

    // None of that touched the new server.
    assert!(procfs::is_alive(second.pid), "the new server was hit");
    let polled = hub
        .poll(&server, Some(second.instance))
        .await
        .expect("poll new");
    assert_eq!(
        (polled.pid, polled.state),
        (second.pid, ServerState::Running)
    );
}

// ---------------------------------------------------------------------------------------------
// 7. malformed packets

/// Sends `packet` and returns the error the daemon answers with, or `None` if it closed the
/// connection instead.
fn send_bad(conn: &RawConn, what: &str, packet: &[u8]) -> Option<(u32, ErrorReply)> {
    match conn.send(packet) {
        Ok(n) => assert_eq!(n, packet.len(), "{what}: short send"),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
            return None;
        }
        Err(e) => panic!("{what}: send: {e}"),
    }
    match conn.recv(Duration::from_secs(5)).expect("recv") {
        RawRecv::Packet(p) => match spawnd_protocol::decode_response(&p) {
            Ok(env) => match env.body {
                Response::Error(reply) => Some((env.id, reply)),
                other => panic!("{what}: answered with {other:?} instead of an error"),
            },
            Err(e) => panic!("{what}: undecodable answer {p:?}: {e}"),
        },
        RawRecv::Closed(_) => None,
        RawRecv::TimedOut => panic!("{what}: no answer and no close within 5 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn malformed_packets_get_errors() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(DaemonOptions::default());

    let valid =
        spawnd_protocol::encode_request(41, &Request::Start(hub_start_req(&u.a.name, "", "")))
            .expect("encode");
    let mut wrong_version = spawnd_protocol::encode_request(42, &Request::Status).expect("encode");
    assert_eq!(wrong_version[0], 1, "version 1 is one varint byte");
    wrong_version[0] = 2;
    let mut trailing = spawnd_protocol::encode_request(43, &Request::Status).expect("encode");
    trailing.extend_from_slice(&[0, 0, 0]);
    // Version 1, id 44, then bytes that are no request (0xff.. is an overlong varint tag).
    let mut random = vec![1u8, 44];
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..61 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        random.push((x >> 24) as u8 | 0x80);
    }
    let oversized = vec![0x01u8; 70 * 1024];
    // Well-formed, but the user name is a path: every role must get InvalidRequest.
    let traversal = spawnd_protocol::encode_request(
        45,
        &Request::Logs {
            server: sid("../../etc", ""),
            lines: 5,
        },
    )
    .expect("encode");

    // (what, packet, error kind expected, id expected in the answer when one comes)
    let cases: Vec<(&str, Vec<u8>, ErrorKind, Option<u32>)> = vec![
        ("random bytes", random, ErrorKind::InvalidRequest, Some(44)),
        (
            "a truncated request",
            valid[..valid.len() / 2].to_vec(),
            ErrorKind::InvalidRequest,
            Some(41),
        ),
        (
            "a 70 KiB packet",
            oversized,
            ErrorKind::InvalidRequest,
            None,
        ),
        (
            "a version 2 packet",
            wrong_version,
            ErrorKind::Unsupported,
            Some(42),
        ),
        (
            "trailing bytes",
            trailing,
            ErrorKind::InvalidRequest,
            Some(43),
        ),
        (
            "a user name that is a path",
            traversal,
            ErrorKind::InvalidRequest,
            Some(45),
        ),
        (
            "an empty packet",
            Vec::new(),
            ErrorKind::InvalidRequest,
            Some(0),
        ),
    ];

    let mut conn = d.raw_as(&u.hub);
    for (what, packet, kind, id) in cases {
        match send_bad(&conn, what, &packet) {
            Some((got_id, reply)) => {
                assert_eq!(reply.kind, kind, "{what}: answered {reply:?}");
                if let Some(id) = id {
                    assert_eq!(got_id, id, "{what}: the answer's id");
                }
                if reply.kind == ErrorKind::Unsupported {
                    assert!(
                        reply.message.contains('2') && reply.message.contains('1'),
                        "the version error names both versions: {}",
                        reply.message
                    );
                }
                // The connection still answers a valid request.
                let ok = conn.request(7, &Request::Status);
                assert_eq!(ok.id, 7);
                assert!(
                    matches!(ok.body, Response::Status(_)),
                    "{what}: a valid request afterwards got {:?}",
                    ok.body
                );
            }
            None => {
                eprintln!("{what}: the daemon closed the connection; reconnecting");
                conn = d.raw_as(&u.hub);
            }
        }
        // Another hub client is unaffected.
        let other = d.hub_client().await;
        other
            .status()
            .await
            .unwrap_or_else(|e| panic!("after {what}: a second hub client's status: {e}"));
    }
    assert!(
        d.admin_client()
            .await
            .list()
            .await
            .expect("list")
            .is_empty(),
        "nothing may have been started by a malformed packet"
    );
    assert_no_servers_running(&d);
}

// ---------------------------------------------------------------------------------------------
// 8. spawnctl

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn spawnctl_lists_shows_logs_and_stops() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(DaemonOptions::default());
    let hub = d.hub_client().await;
    let started = start(&hub, hub_start_req(&u.a.name, "", "")).await;
    wait_log(&hub, &sid(&u.a.name, ""), ready::DEFAULT).await;

    let list = d.spawnctl(&["list", "--json"]);
    assert!(list.success(), "spawnctl list --json: {list}");
    let json: serde_json::Value = serde_json::from_str(&list.stdout)
        .unwrap_or_else(|e| panic!("spawnctl list --json is not JSON ({e}): {list}"));
    let servers = json
        .as_array()
        .unwrap_or_else(|| panic!("spawnctl list --json must print an array: {json}"));
    assert_eq!(servers.len(), 1, "{json}");
    let s = &servers[0];
    assert_eq!(s["user"].as_str(), Some(u.a.name.as_str()), "user in {s}");
    assert_eq!(s["server"].as_str(), Some(""), "server in {s}");
    assert_eq!(s["uid"].as_u64(), Some(u64::from(u.a.uid)), "uid in {s}");
    assert_eq!(
        s["pid"].as_u64(),
        Some(u64::from(started.pid)),
        "pid in {s}"
    );
    assert_eq!(s["state"].as_str(), Some("running"), "state in {s}");

    let logs = d.spawnctl(&["logs", &u.a.name]);
    assert!(logs.success(), "spawnctl logs: {logs}");
    assert!(
        logs.stdout.contains(&format!("uid={}", u.a.uid)) && logs.stdout.contains("READY"),
        "spawnctl logs shows the server's output: {logs}"
    );

    let stop = d.spawnctl(&["stop", &u.a.name]);
    assert!(stop.success(), "spawnctl stop: {stop}");
    expect_err(
        hub.poll(&sid(&u.a.name, ""), None).await,
        ErrorKind::NotFound,
    );
    let gone = wait_for(Duration::from_secs(2), || {
        (!procfs::is_alive(started.pid)).then_some(())
    });
    assert!(
        gone.is_some(),
        "spawnctl stop left pid {} alive",
        started.pid
    );

    let nobody = "nobodyhere";
    let missing = d.spawnctl(&["stop", nobody]);
    assert!(
        !missing.success() && !missing.timed_out,
        "spawnctl stop of an unknown server must fail: {missing}"
    );
    assert!(
        missing.stderr.contains("NotFound") && missing.stderr.contains(nobody),
        "stderr must carry the daemon's NotFound message: {missing}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. executable safety at config load

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn unsafe_profile_executable_is_refused() {
    require_root!();
    let dir = TestDir::new();
    let spawnd = bin_path("spawnd", "SPAWND_BIN");

    // A root-owned directory that its group may write, holding a copy of /bin/true.
    let unsafe_dir = dir.mkdir("groupwritable", 0o775);
    let exe = unsafe_dir.join("true");
    std::fs::copy("/bin/true", &exe).expect("copy /bin/true");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let valid = dir.write_config("valid.toml", &DaemonOptions::default());
    let mut opts = DaemonOptions::default();
    let mut profile = Profile::shell("default", "true");
    profile.command = vec![exe.display().to_string()];
    opts.profiles = vec![profile];
    let bad = dir.write_config("unsafe.toml", &opts);

    let check = |config: &Path| {
        let mut cmd = Command::new(&spawnd);
        cmd.arg("check-config").arg(config);
        run_with_timeout(cmd, Duration::from_secs(20))
    };

    let ok = check(&valid);
    assert_eq!(
        ok.code,
        Some(0),
        "check-config of the valid test config: {ok}"
    );
    assert!(
        ok.stdout.contains(&format!("{}: ok", valid.display())),
        "check-config prints `PATH: ok`: {ok}"
    );

    let refused = check(&bad);
    assert_eq!(
        refused.code,
        Some(1),
        "check-config of the unsafe config: {refused}"
    );
    assert!(
        refused.stderr.contains(&unsafe_dir.display().to_string()),
        "check-config must name {}: {refused}",
        unsafe_dir.display()
    );

    // The daemon itself refuses to start on it.
    let mut cmd = Command::new(&spawnd);
    cmd.arg("--config")
        .arg(&bad)
        .env("SPAWND_LOG", "debug")
        .env_remove("JOURNAL_STREAM")
        .env_remove("LISTEN_FDS");
    let run = run_with_timeout(cmd, Duration::from_secs(10));
    assert!(
        !run.timed_out && run.code.is_some_and(|c| c != 0),
        "spawnd must refuse to start on an unsafe executable: {run}"
    );
    assert!(
        run.stderr.contains(&unsafe_dir.display().to_string()),
        "spawnd's refusal must name {}: {run}",
        unsafe_dir.display()
    );
}

/// A socket the hub cannot reach (its group is one the hub is not in) is said loudly at
/// start-up and in `spawnctl status`; with the right group, nothing is said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_socket_the_hub_cannot_reach_is_reported() {
    require_root!();
    let u = users();
    let fine = TestDaemon::start(DaemonOptions::default());
    let problems = fine.admin_client().await.health().await.expect("health");
    assert!(problems.is_empty(), "{problems:?}");
    let status = fine.spawnctl(&["status"]);
    assert!(
        status.success() && status.stdout.contains("problems:      none"),
        "{status}"
    );
    assert!(!fine.stderr().contains("THE HUB CANNOT CONNECT"));

    // The admin group: the test hub is not a member.
    let d = TestDaemon::start(DaemonOptions {
        extra_config: format!("socket_group = \"{}\"\n", u.admin_group.name),
        ..DaemonOptions::default()
    });
    let expected = format!(
        "THE HUB CANNOT CONNECT: {} cannot connect to {}",
        u.hub.name,
        d.socket.display()
    );
    let logged = wait_for(Duration::from_secs(5), || {
        d.stderr().contains(&expected).then_some(())
    });
    assert!(logged.is_some(), "not logged at start-up: {}", d.stderr());
    let problems = d.admin_client().await.health().await.expect("health");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(&expected)
            && problems[0].contains(&format!("is not in group {}", u.admin_group.name)),
        "{problems:?}"
    );
    let status = d.spawnctl(&["status"]);
    assert!(
        status.success()
            && status
                .stdout
                .contains(&format!("PROBLEM:       {expected}")),
        "{status}"
    );
}
