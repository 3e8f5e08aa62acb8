//! Faults of the host and of the configuration: the profile's executable missing or unusable,
//! a user's home missing, a server that exits at once, the user's process limit exhausted, the
//! state or log directory full or unwritable, a user removed from the group while their server
//! runs. Each must give the caller a clear error, leave nothing half-done (no process, no
//! record, no cgroup, no temporary file) and leave the daemon serving.
//!
//! Every test uses users of its own (made with `add_test_user`), so that "no process of the
//! user" is exact even while the other tests of this file run beside it.

use spawnd_client::{Client, ClientError};
use spawnd_protocol::{ErrorKind, ExitStatus, ServerState};
use spawnd_tests::{
    DaemonOptions, Profile, TestDaemon, TestDir, TestUser, add_test_user, assert_says,
    check_config, expect_err, files_under, procfs, remove_from_group, require_root,
    run_with_timeout, sid, start, start_req, users, wait_for, wait_for_async,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// helpers

fn sleeper() -> Profile {
    Profile::command("sleeper", &["/bin/sleep", "1000"])
}

fn options(profiles: Vec<Profile>, default: &str) -> DaemonOptions {
    DaemonOptions {
        profiles,
        default_profile: default.to_owned(),
        ..DaemonOptions::default()
    }
}

/// A member of the notebook group with a home of its own.
fn group_member(tag: &str) -> TestUser {
    add_test_user(tag, &["-m", "-G", &users().group.name])
}

/// The per-server cgroups of `user` (any server, any instance) under the daemon's base.
fn cgroups_of(d: &TestDaemon, user: &str) -> Vec<PathBuf> {
    let Some(base) = &d.cgroup_base else {
        return Vec::new();
    };
    std::fs::read_dir(base.join(user))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// After a failed start of `user`/`server`: no process of the user but `live`, no record of
/// that server, no temporary state file, no cgroup of that server, nothing in the daemon's
/// list; and the daemon still answers. Waits (bounded) for what the daemon cleans up
/// asynchronously.
async fn assert_left_nothing(
    d: &TestDaemon,
    admin: &Client,
    user: &TestUser,
    server: &str,
    live: &[u32],
) {
    let stem = if server.is_empty() {
        "@default"
    } else {
        server
    };
    let record = d.record_path(&user.name, server);
    let clean = wait_for(Duration::from_secs(10), || {
        let stray: Vec<u32> = procfs::pids_of_uid(user.uid)
            .into_iter()
            .filter(|p| !live.contains(p))
            .collect();
        let tmp: Vec<PathBuf> = files_under(&d.dir.state_dir())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".tmp"))
            .collect();
        let cgroups: Vec<PathBuf> = cgroups_of(d, &user.name)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}.")))
            })
            .collect();
        (stray.is_empty() && tmp.is_empty() && cgroups.is_empty() && !record.exists()).then_some(())
    });
    assert!(
        clean.is_some(),
        "a failed start of {}/{server} left something: processes {:?} (live {live:?}), record \
         {} exists: {}, state files {:?}, cgroups {:?}",
        user.name,
        procfs::pids_of_uid(user.uid),
        record.display(),
        record.exists(),
        files_under(&d.dir.state_dir()),
        cgroups_of(d, &user.name)
    );
    let listed = admin.list().await.expect("list");
    assert!(
        !listed.iter().any(|s| s.server == sid(&user.name, server)),
        "a failed start is listed: {listed:?}"
    );
    admin.status().await.expect("the daemon keeps serving");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A tmpfs mounted for the life of the guard (lazily unmounted on drop, so a test that fails
/// while a server holds a file on it still cleans up).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, options: &str) -> Tmpfs {
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(path);
        let out = run_with_timeout(cmd, Duration::from_secs(10));
        assert!(out.success(), "mount tmpfs on {}: {out}", path.display());
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let mut cmd = Command::new("umount");
        cmd.arg("-l").arg(&self.path);
        let out = run_with_timeout(cmd, Duration::from_secs(10));
        if !out.success() {
            eprintln!("umount -l {}: {out}", self.path.display());
        }
    }
}

/// Fills the file system holding `dir`: files until no inode is left, then one file until no
/// block is left. Returns the files made (remove them to free the space).
fn fill(dir: &Path) -> Vec<PathBuf> {
    use std::io::Write;
    let mut made = Vec::new();
    for i in 0.. {
        let p = dir.join(format!("filler-{i}"));
        match std::fs::File::create(&p) {
            Ok(_) => made.push(p),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("create {}: {e}", p.display()),
        }
    }
    let first = made.first().expect("at least one inode was free").clone();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&first)
        .expect("open filler");
    let chunk = [0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("fill {}: {e}", first.display()),
        }
    }
    made
}

fn unfill(made: Vec<PathBuf>) {
    for p in made {
        std::fs::remove_file(&p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display()));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. the profile's executable

/// A root-owned copy of /bin/sleep at `<dir>/bin/server` (and its directory).
fn private_server(dir: &TestDir) -> PathBuf {
    let bin = dir.mkdir("bin", 0o755);
    let exe = bin.join("server");
    std::fs::copy("/bin/sleep", &exe).expect("copy /bin/sleep");
    chmod(&exe, 0o755);
    exe
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn check_config_names_a_missing_or_unexecutable_program() {
    require_root!();
    let dir = TestDir::new();
    let exe = private_server(&dir);
    let missing = exe.with_file_name("missing");
    let noexec = exe.with_file_name("noexec");
    std::fs::copy(&exe, &noexec).expect("copy");
    chmod(&noexec, 0o644);
    for (program, why) in [(&missing, "does not exist"), (&noexec, "not executable")] {
        let prog = program.display().to_string();
        let config = dir.write_config(
            "bad.toml",
            &options(
                vec![Profile::command("default", &[&prog, "1000"])],
                "default",
            ),
        );
        let out = check_config(&config);
        assert_eq!(out.code, Some(1), "check-config of {prog}: {out}");
        assert!(
            out.stderr.contains(&prog) && out.stderr.contains(why),
            "check-config must name {prog} and say {why:?}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn executable_removed_or_made_unusable_after_load_fails_cleanly() {
    require_root!();
    let user = group_member("exe");
    let dir = TestDir::new();
    let exe = private_server(&dir);
    let prog = exe.display().to_string();
    let d = TestDaemon::start_in(
        dir,
        options(
            vec![Profile::command("default", &[&prog, "1000"])],
            "default",
        ),
    );
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;
    let id = sid(&user.name, "");

    // It works as loaded.
    hub.start(start_req(&user.name, "", ""))
        .await
        .expect("start");
    hub.stop(&id, None, true).await.expect("stop");

    // Removed after the daemon loaded its configuration.
    let away = exe.with_file_name("server.away");
    std::fs::rename(&exe, &away).expect("rename");
    let e = hub.start(start_req(&user.name, "", "")).await;
    let e = match e {
        Err(ClientError::Daemon(e)) => e,
        other => panic!("start with the program missing: {other:?}"),
    };
    // A broken host, not a policy refusal.
    assert_eq!(e.kind, ErrorKind::SpawnFailed, "{e:?}");
    assert_says(&e, &[&prog, "does not exist"]);
    assert_left_nothing(&d, &admin, &user, "", &[]).await;

    // Not executable.
    std::fs::rename(&away, &exe).expect("rename back");
    chmod(&exe, 0o644);
    let e = match hub.start(start_req(&user.name, "", "")).await {
        Err(ClientError::Daemon(e)) => e,
        other => panic!("start with the program not executable: {other:?}"),
    };
    assert_eq!(e.kind, ErrorKind::SpawnFailed, "{e:?}");
    assert_says(&e, &[&prog, "not executable"]);
    assert_left_nothing(&d, &admin, &user, "", &[]).await;

    // Made writable by others: refused as unsafe (anyone could have replaced it).
    chmod(&exe, 0o757);
    let e = expect_err(
        hub.start(start_req(&user.name, "", "")).await,
        ErrorKind::PolicyDenied,
    );
    assert_says(&e, &[&prog, "unsafe", "writable by group or others"]);
    assert_left_nothing(&d, &admin, &user, "", &[]).await;

    // Executable by root only: safe by ownership, but the user cannot execute it. The child
    // fails at exec, after the identity change.
    chmod(&exe, 0o700);
    let e = expect_err(
        hub.start(start_req(&user.name, "", "")).await,
        ErrorKind::SpawnFailed,
    );
    assert_says(&e, &[&prog, &user.name, "Permission denied"]);
    assert_left_nothing(&d, &admin, &user, "", &[]).await;

    // Fixed: the next start works.
    chmod(&exe, 0o755);
    let s = hub
        .start(start_req(&user.name, "", ""))
        .await
        .expect("start");
    assert!(procfs::is_alive(s.pid));
    hub.stop(&id, None, true).await.expect("stop");
}

/// A profile whose program is a script with a `#!` interpreter that does not exist (the
/// everyday case: `jupyterhub-singleuser` of a virtualenv whose Python was removed by an
/// upgrade). execve answers ENOENT although the file exists; the message must not send the
/// operator looking for the script. (A configuration naming it from the start is refused at
/// load: here the interpreter goes away after the daemon loaded it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn missing_script_interpreter_is_named() {
    require_root!();
    let user = group_member("interp");
    let dir = TestDir::new();
    let bin = dir.mkdir("bin", 0o755);
    let script = bin.join("jupyterhub-singleuser");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 1000\n").expect("write");
    chmod(&script, 0o755);
    let prog = script.display().to_string();
    let d = TestDaemon::start_in(
        dir,
        options(vec![Profile::command("default", &[&prog])], "default"),
    );
    std::fs::write(&script, "#!/nonexistent/venv/bin/python3\nprint('hi')\n").expect("write");
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;
    let e = expect_err(
        hub.start(start_req(&user.name, "", "")).await,
        ErrorKind::SpawnFailed,
    );
    assert_left_nothing(&d, &admin, &user, "", &[]).await;
    assert_says(&e, &[&prog]);
    assert!(
        e.message.contains("/nonexistent/venv/bin/python3") || e.message.contains("interpreter"),
        "the program exists; what is missing is its #! interpreter, and the message should say \
         so: {:?}",
        e.message
    );
}

// ---------------------------------------------------------------------------------------------
// 2. the user's home

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn missing_or_inaccessible_home_is_a_clear_error() {
    require_root!();
    let group = users().group.name.clone();
    let missing_home = format!("/home/{}nohome-missing", users().prefix);
    let nohome = add_test_user("nohome", &["-M", "-d", &missing_home, "-G", &group]);
    assert!(!nohome.home.exists());
    // A home the user cannot enter (root's, 0700).
    let locked = group_member("lockedhome");
    nix::unistd::chown(
        &locked.home,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(0)),
    )
    .expect("chown home");
    chmod(&locked.home, 0o700);

    let d = TestDaemon::start(options(vec![sleeper()], "sleeper"));
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;
    for user in [&nohome, &locked] {
        let home = user.home.display().to_string();
        let e = expect_err(
            hub.start(start_req(&user.name, "", "")).await,
            ErrorKind::SpawnFailed,
        );
        assert_says(&e, &[&home, &user.name, "home directory"]);
        assert_left_nothing(&d, &admin, user, "", &[]).await;
    }
    // Fixed: the home is the user's again.
    nix::unistd::chown(
        &locked.home,
        Some(nix::unistd::Uid::from_raw(locked.uid)),
        Some(nix::unistd::Gid::from_raw(locked.gid)),
    )
    .expect("chown home back");
    let s = hub
        .start(start_req(&locked.name, "", ""))
        .await
        .expect("start once the home is fixed");
    assert_eq!(procfs::cwd(s.pid), Some(locked.home.clone()));
    hub.stop(&sid(&locked.name, ""), None, true)
        .await
        .expect("stop");
}

/// A start that fails after the daemon made the server's cgroup must remove all of it, as a
/// server's exit does (its instance cgroup, and the user's cgroup directory once it is empty):
/// a hub retrying a failing start for many users must not leave a directory per user behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn failed_start_leaves_no_cgroup_directory() {
    require_root!();
    let group = users().group.name.clone();
    let missing_home = format!("/home/{}cgleft-missing", users().prefix);
    let user = add_test_user("cgleft", &["-M", "-d", &missing_home, "-G", &group]);
    let d = TestDaemon::start(options(vec![sleeper()], "sleeper"));
    let Some(base) = d.cgroup_base.clone() else {
        eprintln!("skipped: no cgroup v2 on this host (process-group mode)");
        return;
    };
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;
    expect_err(
        hub.start(start_req(&user.name, "", "")).await,
        ErrorKind::SpawnFailed,
    );
    assert_left_nothing(&d, &admin, &user, "", &[]).await;
    let user_dir = base.join(&user.name);
    let removed = wait_for(Duration::from_secs(5), || {
        (!user_dir.exists()).then_some(())
    });
    assert!(
        removed.is_some(),
        "{} is left behind after a failed start (a server's exit removes it)",
        user_dir.display()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. a server that exits at once

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn server_that_exits_at_once_reports_its_status_and_output() {
    require_root!();
    let user = group_member("quick");
    let d = TestDaemon::start(options(
        vec![
            Profile::shell(
                "bye42",
                "echo quick-bye-on-stdout; echo quick-bye-on-stderr >&2; exit 42",
            ),
            Profile::shell("segv", "echo about-to-crash; kill -SEGV $$"),
        ],
        "bye42",
    ));
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;
    for (server, profile, exit, lines) in [
        (
            "bye",
            "bye42",
            ExitStatus::Code(42),
            &["quick-bye-on-stdout", "quick-bye-on-stderr"][..],
        ),
        (
            "crash",
            "segv",
            ExitStatus::Signal(libc::SIGSEGV),
            &["about-to-crash"][..],
        ),
    ] {
        let id = sid(&user.name, server);
        let started = hub
            .start(start_req(&user.name, server, profile))
            .await
            .expect("the exec succeeds; the exit comes after");
        let seen = wait_for_async(Duration::from_secs(10), || async {
            match hub.poll(&id, Some(started.instance)).await {
                Ok(p) => match p.state {
                    ServerState::Exited(e) => Some(e),
                    _ => None,
                },
                Err(e) => panic!("poll {id}: {e}"),
            }
        })
        .await;
        assert_eq!(seen, Some(exit), "{id}: Poll reports the exact exit status");
        let tail = hub.logs(&id, 20).await.expect("logs");
        for l in lines {
            assert!(
                tail.lines.iter().any(|x| x == l),
                "{id}: the log shows {l:?}: {:?}",
                tail.lines
            );
        }
        // Recorded as exited (with its status) until the hub stops it.
        let record = d.record_path(&user.name, server);
        let recorded = wait_for(Duration::from_secs(5), || {
            let text = std::fs::read_to_string(&record).ok()?;
            text.contains("\"exit\": {").then_some(text)
        });
        assert!(recorded.is_some(), "{id}: the record shows the exit");
        // The process is reaped and its cgroup gone, before any stop.
        let gone = wait_for(Duration::from_secs(5), || {
            (procfs::zombie_children(d.pid()).is_empty()
                && !procfs::is_alive(started.pid)
                && cgroups_of(&d, &user.name).is_empty())
            .then_some(())
        });
        assert!(gone.is_some(), "{id}: a zombie or a cgroup is left");
        let (instance, stopped) = hub.stop(&id, None, false).await.expect("stop");
        assert_eq!((instance, stopped), (started.instance, exit));
        expect_err(hub.poll(&id, None).await, ErrorKind::NotFound);
        assert_left_nothing(&d, &admin, &user, server, &[]).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. the user's process limit (fork/exec failing)

fn prlimit_nproc(pid: u32, soft: &str) {
    let mut cmd = Command::new("prlimit");
    cmd.arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nproc={soft}:"));
    let out = run_with_timeout(cmd, Duration::from_secs(10));
    assert!(out.success(), "prlimit --nproc={soft}: {out}");
}

fn nproc_soft(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max processes"))
        .expect("Max processes line");
    line.split_whitespace().nth(2).expect("soft").to_owned()
}

/// The launcher's RLIMIT_NPROC (the daemon's, inherited) is 2 and the user already runs 3
/// processes: setresuid marks the child as over the limit (the kernel checks the count before
/// the child itself is counted) and its execve fails with EAGAIN. The caller must learn that the user is at their process
/// limit (not be told to check the file's permissions), and nothing may be left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn exhausted_process_limit_is_a_clear_error() {
    require_root!();
    let user = group_member("nproc");
    let d = TestDaemon::start(options(vec![sleeper()], "sleeper"));
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;
    let mut live = Vec::new();
    for s in ["s1", "s2", "s3"] {
        live.push(
            hub.start(start_req(&user.name, s, ""))
                .await
                .expect("start")
                .pid,
        );
    }
    assert_eq!(procfs::pids_of_uid(user.uid).len(), 3);
    // Servers are created by the launcher: its limits are theirs.
    let pid = procfs::launchers_of(d.pid())[0];
    let soft = nproc_soft(pid);
    prlimit_nproc(pid, "2");
    let result = hub.start(start_req(&user.name, "s4", "")).await;
    prlimit_nproc(pid, &soft);
    let e = expect_err(result, ErrorKind::SpawnFailed);
    assert_left_nothing(&d, &admin, &user, "s4", &live).await;
    for p in &live {
        assert!(procfs::is_alive(*p), "a running server was hit");
    }
    // With the limit back, the same start works.
    hub.start(start_req(&user.name, "s4", ""))
        .await
        .expect("start once the limit is raised");
    for s in ["s1", "s2", "s3", "s4"] {
        hub.stop(&sid(&user.name, s), None, true)
            .await
            .expect("stop");
    }
    assert_says(&e, &[&user.name]);
    assert!(
        e.message.contains("RLIMIT_NPROC") || e.message.contains("too many processes"),
        "execve failed with EAGAIN because the user is at its process limit; the message \
         should say that: {:?}",
        e.message
    );
}

// ---------------------------------------------------------------------------------------------
// 5. the state directory full or unwritable

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn full_state_directory_fails_the_start_and_kills_the_server() {
    require_root!();
    let user = group_member("statefull");
    let dir = TestDir::new();
    let state = dir.state_dir();
    let _tmpfs = Tmpfs::mount(&state, "size=64k,nr_inodes=64,mode=0700");
    let d = TestDaemon::start_in(dir, options(vec![sleeper()], "sleeper"));
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;
    let ok = hub
        .start(start_req(&user.name, "ok", ""))
        .await
        .expect("start while there is space");
    let filler = fill(&state);

    let e = expect_err(
        hub.start(start_req(&user.name, "full", "")).await,
        ErrorKind::SpawnFailed,
    );
    assert_says(&e, &[&state.display().to_string(), "stopped again"]);
    assert_left_nothing(&d, &admin, &user, "full", &[ok.pid]).await;
    // The running server is untouched and still answered for.
    let p = hub.poll(&sid(&user.name, "ok"), None).await.expect("poll");
    assert_eq!((p.pid, p.state), (ok.pid, ServerState::Running));

    // Space again: the same start works.
    unfill(filler);
    hub.start(start_req(&user.name, "full", ""))
        .await
        .expect("start once there is space");
    for s in ["ok", "full"] {
        hub.stop(&sid(&user.name, s), None, true)
            .await
            .expect("stop");
    }
    let empty = wait_for(Duration::from_secs(5), || {
        files_under(&state).is_empty().then_some(())
    });
    assert!(empty.is_some(), "records left: {:?}", files_under(&state));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn unwritable_state_directory_fails_the_start_and_kills_the_server() {
    require_root!();
    let user = group_member("stateperm");
    let d = TestDaemon::start(options(vec![sleeper()], "sleeper"));
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;
    // The daemon runs without CAP_DAC_OVERRIDE: a directory without write permission stops it.
    let servers = d.dir.state_dir().join("servers");
    chmod(&servers, 0o500);
    let e = expect_err(
        hub.start(start_req(&user.name, "", "")).await,
        ErrorKind::SpawnFailed,
    );
    chmod(&servers, 0o700);
    assert_says(
        &e,
        &[&d.dir.state_dir().display().to_string(), "stopped again"],
    );
    assert_left_nothing(&d, &admin, &user, "", &[]).await;
    hub.start(start_req(&user.name, "", ""))
        .await
        .expect("start once writable");
    hub.stop(&sid(&user.name, ""), None, true)
        .await
        .expect("stop");
}

// ---------------------------------------------------------------------------------------------
// 6. the log directory full or unwritable

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn full_or_unwritable_log_directory_fails_the_start_cleanly() {
    require_root!();
    let user = group_member("logfull");
    let other = group_member("logperm");
    let dir = TestDir::new();
    let log = dir.log_dir();
    let _tmpfs = Tmpfs::mount(&log, "size=64k,nr_inodes=32,mode=0755");
    let d = TestDaemon::start_in(dir, options(vec![sleeper()], "sleeper"));
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;
    let ok = hub
        .start(start_req(&user.name, "ok", ""))
        .await
        .expect("start while there is space");
    let filler = fill(&log);

    let e = expect_err(
        hub.start(start_req(&user.name, "full", "")).await,
        ErrorKind::SpawnFailed,
    );
    assert_says(
        &e,
        &[
            "log file",
            &log.display().to_string(),
            "No space left on device",
        ],
    );
    assert_left_nothing(&d, &admin, &user, "full", &[ok.pid]).await;
    let p = hub.poll(&sid(&user.name, "ok"), None).await.expect("poll");
    assert_eq!((p.pid, p.state), (ok.pid, ServerState::Running));
    unfill(filler);

    // Unwritable: a user whose log directory does not exist yet.
    chmod(&log, 0o555);
    let e = expect_err(
        hub.start(start_req(&other.name, "", "")).await,
        ErrorKind::SpawnFailed,
    );
    chmod(&log, 0o755);
    assert_says(
        &e,
        &["log file", &log.display().to_string(), "Permission denied"],
    );
    assert_left_nothing(&d, &admin, &other, "", &[]).await;

    // Space and permission again: both starts work.
    hub.start(start_req(&user.name, "full", ""))
        .await
        .expect("start once there is space");
    hub.start(start_req(&other.name, "", ""))
        .await
        .expect("start once writable");
    for id in [
        sid(&user.name, "ok"),
        sid(&user.name, "full"),
        sid(&other.name, ""),
    ] {
        hub.stop(&id, None, true).await.expect("stop");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. a user removed from the group while their server runs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn user_removed_from_the_group_keeps_the_server_but_cannot_start_another() {
    require_root!();
    let user = group_member("gone");
    let group = users().group.name.clone();
    let d = TestDaemon::start(options(vec![sleeper()], "sleeper"));
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;
    let id = sid(&user.name, "");
    let s = hub
        .start(start_req(&user.name, "", ""))
        .await
        .expect("start");

    remove_from_group(&user.name, &group);

    // The running server is not touched: it runs, it is polled, listed and signalled.
    let p = hub.poll(&id, Some(s.instance)).await.expect("poll");
    assert_eq!((p.pid, p.state), (s.pid, ServerState::Running));
    assert!(procfs::is_alive(s.pid));
    assert!(
        admin
            .list()
            .await
            .expect("list")
            .iter()
            .any(|i| i.server == id)
    );
    hub.signal(&id, Some(s.instance), libc::SIGCONT)
        .await
        .expect("signal");

    // The next start is refused at once.
    let e = expect_err(
        hub.start(start_req(&user.name, "second", "")).await,
        ErrorKind::PolicyDenied,
    );
    assert_says(&e, &[&user.name, &group, "not a member"]);
    assert_left_nothing(&d, &admin, &user, "second", &[s.pid]).await;

    // Stopping it works as ever.
    let (instance, exit) = hub.stop(&id, None, false).await.expect("stop");
    assert_eq!(
        (instance, exit),
        (s.instance, ExitStatus::Signal(libc::SIGINT))
    );
    assert_left_nothing(&d, &admin, &user, "", &[]).await;
    // And a restart is refused too.
    expect_err(
        hub.start(start_req(&user.name, "", "")).await,
        ErrorKind::PolicyDenied,
    );
}

/// The hard limit of `resource` (a `/proc/PID/limits` row name such as "Max locked memory")
/// of process `pid`, `None` for unlimited.
fn hard_limit(pid: u32, row: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no {row:?} in /proc/{pid}/limits"));
    let fields: Vec<&str> = line[row.len()..].split_whitespace().collect();
    fields[1].parse().ok()
}

/// A profile's `limits` reach the server, soft and hard, as limits.conf would through PAM;
/// a limit the daemon cannot grant (it can only lower its own) fails the start, naming the
/// limits, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn profile_limits_reach_the_server_or_fail_clearly() {
    require_root!();
    let user = group_member("lim");
    let mut limited = Profile::command("limited", &["/bin/sleep", "1000"]);
    limited.limits = [
        ("nproc", "321"),
        ("nofile", "777"),
        ("as", "\"2G\""),
        ("core", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let mut too_high = Profile::command("too_high", &["/bin/sleep", "1000"]);
    too_high.limits = vec![("memlock".to_owned(), "\"unlimited\"".to_owned())];
    let mut one = Profile::command("one", &["/bin/sleep", "1000"]);
    one.limits = vec![("nproc".to_owned(), "1".to_owned())];
    let d = TestDaemon::start(options(vec![sleeper(), limited, too_high, one], "sleeper"));
    let hub = d.hub_client().await;
    let admin = d.admin_client().await;

    let s = start(&hub, start_req(&user.name, "", "limited")).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid)).expect("limits");
    for (row, value) in [
        ("Max processes", "321"),
        ("Max open files", "777"),
        ("Max address space", "2147483648"),
        ("Max core file size", "0"),
    ] {
        let line = limits
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row:?} in {limits}"));
        let fields: Vec<&str> = line[row.len()..].split_whitespace().collect();
        assert_eq!(
            (fields[0], fields[1]),
            (value, value),
            "{row} (soft, hard) of the server: {line}"
        );
    }
    hub.stop(&sid(&user.name, ""), None, true)
        .await
        .expect("stop");

    // Without the limits table, a server gets the daemon's limits as before.
    let plain = start(&hub, start_req(&user.name, "", "sleeper")).await;
    assert_eq!(
        hard_limit(plain.pid, "Max processes"),
        hard_limit(d.pid(), "Max processes"),
        "a profile without limits passes the daemon's RLIMIT_NPROC through"
    );

    // nproc = 1 while the user already runs two processes (the kernel refuses once the count
    // is over the limit): the start fails and says whose limit it was.
    let extra = start(&hub, start_req(&user.name, "extra", "sleeper")).await;
    let e = expect_err(
        hub.start(start_req(&user.name, "second", "one")).await,
        ErrorKind::SpawnFailed,
    );
    assert_says(&e, &["too many processes", "the profile's nproc limit"]);
    assert_left_nothing(&d, &admin, &user, "second", &[plain.pid, extra.pid]).await;
    for server in ["", "extra"] {
        hub.stop(&sid(&user.name, server), None, true)
            .await
            .expect("stop");
    }

    if hard_limit(d.pid(), "Max locked memory").is_none() {
        eprintln!("the daemon's hard RLIMIT_MEMLOCK is unlimited here: no limit to exceed");
        return;
    }
    let e = expect_err(
        hub.start(start_req(&user.name, "", "too_high")).await,
        ErrorKind::SpawnFailed,
    );
    assert_says(&e, &["resource limits", "memlock=unlimited", "only lower"]);
    assert_left_nothing(&d, &admin, &user, "", &[]).await;
}
