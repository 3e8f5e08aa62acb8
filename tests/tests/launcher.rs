//! The launcher, driven through the daemon library's own API with real users: what a server's
//! process holds between its creation and its exec, stalled and killed children, a launcher
//! that dies, and a clone that fails.
//!
//! A launch with `pause_before_exec` stops its child (SIGSTOP, as its user could) at the last
//! moment before exec, after it has become the user: the state the user can reach.

use spawnd::launch::{LaunchError, LaunchInput, LaunchSpec, Launched, Launcher};
use spawnd_tests::{TestUser, bin_path, cgroup_v2_root, procfs, require_root, users, wait_for};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A scratch directory for the logs, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("spawnd-launcher-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn log(&self, name: &str) -> (OwnedFd, PathBuf) {
        let path = self.0.join(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("log");
        (file.into(), path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn launcher() -> Launcher {
    Launcher::start(bin_path("spawnd", "SPAWND_BIN"), None).expect("start the launcher")
}

fn spec(
    user: &TestUser,
    argv: &[&str],
    env: &[(&str, &str)],
    log: OwnedFd,
    cgroup: Option<OwnedFd>,
    timeout: Duration,
) -> LaunchSpec {
    let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    LaunchSpec::new(LaunchInput {
        user: &user.name,
        uid: user.uid,
        gid: user.gid,
        groups: &user.groups,
        home: &user.home,
        argv: &argv,
        env: &env,
        umask: 0o022,
        limits: &[],
        log,
        cgroup,
        timeout,
    })
    .expect("a launch spec")
}

/// Reaps a started server (the test process is its parent: the launcher's parent).
fn reap(launched: Launched) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child; status is a local.
    unsafe { libc::waitpid(launched.pid, &mut status, 0) };
    status
}

/// The child of this test process (tests run side by side: the one writing to `log`) once it
/// has stopped itself.
fn wait_stopped_child(log: &Path) -> u32 {
    wait_for(Duration::from_secs(10), || {
        procfs::children_of(std::process::id())
            .into_iter()
            .find(|&p| {
                procfs::state(p) == Some('T')
                    && procfs::fds(p)
                        .is_some_and(|fds| fds.get(&1).map(PathBuf::as_path) == Some(log))
            })
    })
    .expect("the paused child did not stop within 10 s")
}

/// Whether `needle` appears in the readable memory of `pid`.
fn memory_contains(pid: u32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) else {
            continue;
        };
        let mut buf = vec![0u8; (hi - lo) as usize];
        if mem.seek(SeekFrom::Start(lo)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

fn token(tag: &str) -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("urandom");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{tag}-{hex}")
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn a_child_that_became_the_user_holds_nothing_but_its_own_launch() {
    require_root!();
    let u = users();
    let scratch = Scratch::new("holds");
    let launcher = launcher();
    let launcher_pid = launcher.pid().expect("a launcher");
    // Another user's launch first, with a token of its own, run to its end.
    let token_b = token("TOKEN_OF_B");
    let (log_b, _) = scratch.log("b.log");
    let b = launcher
        .launch(&spec(
            &u.b,
            &["/bin/true"],
            &[("JUPYTERHUB_API_TOKEN", &token_b)],
            log_b,
            None,
            Duration::from_secs(30),
        ))
        .expect("B's launch");
    reap(b);
    // Then A's, stopped by itself right before exec.
    let token_a = token("TOKEN_OF_A");
    let (log_a, log_a_path) = scratch.log("a.log");
    let spec_a = spec(
        &u.a,
        &["/bin/true"],
        &[("JUPYTERHUB_API_TOKEN", &token_a)],
        log_a,
        None,
        Duration::from_secs(30),
    )
    .pause_before_exec();
    let launcher = Arc::new(launcher);
    let l = launcher.clone();
    let pending = std::thread::spawn(move || l.launch(&spec_a));
    let child = wait_stopped_child(&log_a_path);

    // Every uid and gid is A's, with A's groups, in A's home.
    for field in ["Uid", "Gid"] {
        let ids = procfs::status_ids(child, field).expect("ids");
        let want = if field == "Uid" { u.a.uid } else { u.a.gid };
        assert!(ids.iter().all(|&i| i == want), "{field}: {ids:?}");
    }
    assert_eq!(procfs::cwd(child).as_deref(), Some(u.a.home.as_path()));
    // Exactly its standard streams (the log, /dev/null) and its report pipe: no descriptor of
    // the launcher, the daemon or another launch.
    let fds = procfs::fds(child).expect("fds");
    assert_eq!(
        fds.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2, 3],
        "{fds:?}"
    );
    assert_eq!(fds[&0], Path::new("/dev/null"));
    assert_eq!(fds[&1], log_a_path);
    assert_eq!(fds[&2], log_a_path);
    assert!(fds[&3].to_string_lossy().starts_with("pipe:"), "{fds:?}");
    // Its memory is its own: not the daemon's (this test process plays the daemon), not the
    // launcher's.
    assert!(
        !procfs::same_memory(child, std::process::id()),
        "shares the daemon's memory"
    );
    assert!(
        !procfs::same_memory(child, launcher_pid),
        "shares the launcher's memory"
    );
    // It holds its own token, never the other user's; the launcher holds neither any more.
    assert!(
        memory_contains(child, token_a.as_bytes()),
        "the memory scan works"
    );
    assert!(
        !memory_contains(child, token_b.as_bytes()),
        "B's token is in A's process"
    );
    assert!(
        !memory_contains(launcher_pid, token_a.as_bytes()),
        "the launcher kept A's token"
    );
    assert!(
        !memory_contains(launcher_pid, token_b.as_bytes()),
        "the launcher kept B's token"
    );

    // Killed before its exec: a failed start, not a running server.
    // SAFETY: kill(2) on the stopped child found above.
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
    let result = pending.join().expect("the launch thread");
    match result {
        Err(
            e @ LaunchError::KilledBeforeExec {
                signal: Some(9), ..
            },
        ) => {
            let message = e.to_string();
            assert!(
                message.contains(&u.a.name) && message.contains("SIGKILL"),
                "{message}"
            );
        }
        other => panic!("a child killed before exec was reported as {other:?}"),
    }
    assert!(
        wait_for(Duration::from_secs(5), || (!procfs::is_alive(child)
            && procfs::state(child).is_none())
        .then_some(()))
        .is_some(),
        "the killed child was not reaped"
    );
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn a_stalled_child_delays_no_other_launch_and_is_killed_after_its_timeout() {
    require_root!();
    let u = users();
    let scratch = Scratch::new("stall");
    let launcher = Arc::new(launcher());
    let (log, log_path) = scratch.log("stalled.log");
    let stalled =
        spec(&u.a, &["/bin/true"], &[], log, None, Duration::from_secs(3)).pause_before_exec();
    let l = launcher.clone();
    let pending = std::thread::spawn(move || l.launch(&stalled));
    let child = wait_stopped_child(&log_path);
    // Another user's launches go through while it is stalled, and their servers keep running.
    let mut servers = Vec::new();
    for i in 0..5 {
        let (log, _) = scratch.log(&format!("b{i}.log"));
        let launched = launcher
            .launch(&spec(
                &u.b,
                &["/bin/sleep", "30"],
                &[],
                log,
                None,
                Duration::from_secs(3),
            ))
            .expect("a launch beside a stalled one");
        servers.push(launched);
    }
    assert_eq!(procfs::state(child), Some('T'), "the stalled child went on");
    // The stalled one is killed after its timeout and reported so.
    match pending.join().expect("the launch thread") {
        Err(e @ LaunchError::TimedOut { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(&u.a.name) && message.contains("/bin/true"),
                "{message}"
            );
        }
        other => panic!("a stalled launch was reported as {other:?}"),
    }
    assert!(
        wait_for(Duration::from_secs(10), || procfs::state(child)
            .is_none()
            .then_some(()))
        .is_some(),
        "the stalled child was not killed and reaped"
    );
    for s in servers {
        assert_eq!(
            procfs::state(s.pid as u32).map(|c| c != 'Z'),
            Some(true),
            "a server beside the stall was hit"
        );
        // SAFETY: our own child, running /bin/sleep.
        unsafe { libc::kill(s.pid, libc::SIGKILL) };
        reap(s);
    }
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn a_launcher_that_dies_is_replaced_and_its_launches_in_flight_fail_cleanly() {
    require_root!();
    let u = users();
    let scratch = Scratch::new("dies");
    let launcher = Arc::new(launcher());
    let first = launcher.pid().expect("a launcher");
    // A launch the launcher has not taken yet (it is stopped) when it dies: it fails, and no
    // process of the user is created.
    let stop = |pid: u32, signal: libc::c_int| {
        // SAFETY: kill(2) of the launcher process this test started.
        unsafe { libc::kill(pid as i32, signal) };
    };
    stop(first, libc::SIGSTOP);
    let (log, queued_log) = scratch.log("a.log");
    let queued = spec(
        &u.a,
        &["/bin/true"],
        &[],
        log,
        None,
        Duration::from_secs(30),
    );
    let l = launcher.clone();
    let pending = std::thread::spawn(move || l.launch(&queued));
    std::thread::sleep(Duration::from_millis(200));
    stop(first, libc::SIGKILL);
    match pending.join().expect("the launch thread") {
        Err(e @ LaunchError::Launcher { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("launcher") && message.contains("start again"),
                "{message}"
            );
        }
        other => panic!("a launch queued when the launcher died was reported as {other:?}"),
    }
    let created = procfs::children_of(std::process::id())
        .into_iter()
        .any(|p| procfs::fds(p).is_some_and(|fds| fds.values().any(|f| *f == queued_log)));
    assert!(!created, "a process was created for the failed launch");
    assert!(
        procfs::state(first).is_none(),
        "the dead launcher was not reaped"
    );
    // A launch already handed over (its child paused before exec) goes on without the
    // launcher that made it: the daemon side watches the child itself.
    let second = {
        let (log, _) = scratch.log("b0.log");
        let launched = launcher
            .launch(&spec(
                &u.b,
                &["/bin/true"],
                &[],
                log,
                None,
                Duration::from_secs(30),
            ))
            .expect("a launch after the launcher died");
        assert_eq!(libc::WEXITSTATUS(reap(launched)), 0);
        launcher.pid().expect("a new launcher")
    };
    assert_ne!(second, first);
    let (log, log_path) = scratch.log("b.log");
    let handed_over = spec(
        &u.b,
        &["/bin/true"],
        &[],
        log,
        None,
        Duration::from_secs(30),
    )
    .pause_before_exec();
    let l = launcher.clone();
    let pending = std::thread::spawn(move || l.launch(&handed_over));
    let child = wait_stopped_child(&log_path);
    stop(second, libc::SIGKILL);
    // SAFETY: kill(2) of the stopped child found above.
    unsafe { libc::kill(child as i32, libc::SIGCONT) };
    let launched = pending
        .join()
        .expect("the launch thread")
        .expect("a launch handed over before its launcher died");
    assert_eq!(launched.pid as u32, child);
    assert_eq!(libc::WEXITSTATUS(reap(launched)), 0);
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn a_failed_clone_is_an_error_and_leaves_no_descriptor_behind() {
    require_root!();
    let Some(root) = cgroup_v2_root() else {
        eprintln!("skipped: needs a writable cgroup v2 hierarchy");
        return;
    };
    let u = users();
    let scratch = Scratch::new("clone");
    // Beside a threaded cgroup, a new cgroup is "domain invalid": it cannot hold a process,
    // so clone3(CLONE_INTO_CGROUP) fails there.
    let domain = root.join(format!("spawnd-test-threaded-{}", std::process::id()));
    let threaded = domain.join("t");
    let invalid = domain.join("x");
    for dir in [&invalid, &threaded, &domain] {
        let _ = std::fs::remove_dir(dir);
    }
    std::fs::create_dir_all(&threaded).expect("mkdir cgroups");
    std::fs::write(threaded.join("cgroup.type"), "threaded").expect("make it threaded");
    std::fs::create_dir(&invalid).expect("mkdir cgroup");
    let kind = std::fs::read_to_string(invalid.join("cgroup.type")).expect("cgroup.type");
    assert_eq!(kind.trim(), "domain invalid");
    let launcher = launcher();
    let pid = launcher.pid().expect("a launcher");
    let before = procfs::fds(pid).expect("launcher fds");
    for _ in 0..20 {
        let (log, _) = scratch.log("a.log");
        let dir: OwnedFd = std::fs::File::open(&invalid).expect("open cgroup").into();
        let result = launcher.launch(&spec(
            &u.a,
            &["/bin/true"],
            &[],
            log,
            Some(dir),
            Duration::from_secs(30),
        ));
        match result {
            Err(e @ LaunchError::Parent { .. }) => {
                assert!(e.to_string().contains("creating the process"), "{e}");
            }
            other => panic!("a clone into an invalid cgroup gave {other:?}"),
        }
    }
    // The launcher closes a launch's reply socket right after its answer.
    let after = wait_for(Duration::from_secs(2), || {
        procfs::fds(pid).filter(|fds| *fds == before)
    });
    assert!(
        after.is_some(),
        "the launcher's descriptors changed: {:?}, before {before:?}",
        procfs::fds(pid)
    );
    assert_eq!(launcher.pid(), Some(pid), "the launcher was replaced");
    for dir in [&invalid, &threaded, &domain] {
        let _ = std::fs::remove_dir(dir);
    }
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn many_launches_at_once_all_run_and_leave_the_launcher_as_it_was() {
    require_root!();
    let u = users();
    let scratch = Arc::new(Scratch::new("many"));
    let launcher = Arc::new(launcher());
    let pid = launcher.pid().expect("a launcher");
    let before = procfs::fds(pid).expect("launcher fds");
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let (launcher, scratch) = (launcher.clone(), scratch.clone());
            let user = if i % 2 == 0 { u.a.clone() } else { u.b.clone() };
            std::thread::spawn(move || {
                let (log, _) = scratch.log(&format!("{i}.log"));
                let token = format!("T{i}");
                launcher.launch(&spec(
                    &user,
                    &["/bin/sh", "-c", "exit 3"],
                    &[("X", &token)],
                    log,
                    None,
                    Duration::from_secs(30),
                ))
            })
        })
        .collect();
    for t in threads {
        let launched = t.join().expect("thread").expect("a launch");
        let status = reap(launched);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3,
            "exact exit status"
        );
    }
    let after = wait_for(Duration::from_secs(2), || {
        procfs::fds(pid).filter(|fds| *fds == before)
    });
    assert!(
        after.is_some(),
        "the launcher's descriptors changed: {:?}, before {before:?}",
        procfs::fds(pid)
    );
}
