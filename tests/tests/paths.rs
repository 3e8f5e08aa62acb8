//! End-to-end tests of what the daemon checks about the program a profile runs beyond the
//! command itself (security review, issue 11, items 5 and 6): the `#!` interpreter of a script,
//! and the directory that directly holds the program. Real users, the real daemon on a real
//! socket. They need root: each is marked ignored (run them as root with
//! `-- --include-ignored`), and fails with `needs root` if included without root.
//!
//! The attack: an outsider (a local user in none of spawnd's groups) owns a directory with a
//! fake `python`; a root-owned script in a root-owned directory names it in its `#!` line. The
//! script passes every check of the command itself, and each server started with it would run
//! the outsider's code as its user.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use spawnd_client::Client;
use spawnd_protocol::ErrorKind;
use spawnd_tests::{
    DaemonOptions, Profile, TestDaemon, TestDir, TestUser, assert_no_servers_running, assert_says,
    bin_path, check_config, expect_err, require_root, run_with_timeout, sid, start_req, users,
    wait_for,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The files of the attack, in a test directory:
/// - `bin/run`: the profile's command, a root-owned script (0755) in a root-owned directory;
/// - `safe/python`: a root-owned fake python in a root-owned directory;
/// - `outsider/python`: the same fake python, file and directory owned by the outsider;
/// - `markers/` (1777): each fake python writes `markers/<which>-<uid>` when it runs, then
///   serves (sleeps).
struct Attack {
    run: PathBuf,
    safe_dir: PathBuf,
    safe_python: PathBuf,
    outsider_dir: PathBuf,
    outsider_python: PathBuf,
    markers: PathBuf,
}

impl Attack {
    fn new(dir: &TestDir) -> Attack {
        let outsider = &users().outsider;
        let bin = dir.mkdir("bin", 0o755);
        let markers = dir.mkdir("markers", 0o1777);
        let safe_dir = dir.mkdir("safe", 0o755);
        let outsider_dir = dir.mkdir("outsider", 0o755);
        let fake_python = |which: &str| {
            format!(
                "#!/bin/sh\n# a stand-in for python: records who ran it, then serves\n\
                 id -u > {}/{which}-$(id -u)\nexec sleep 1000\n",
                markers.display()
            )
        };
        let safe_python = safe_dir.join("python");
        write(&safe_python, &fake_python("safe"), 0o755);
        let outsider_python = outsider_dir.join("python");
        write(&outsider_python, &fake_python("outsider"), 0o755);
        for p in [&outsider_dir, &outsider_python] {
            std::os::unix::fs::chown(p, Some(outsider.uid), Some(outsider.gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        }
        let run = bin.join("run");
        let attack = Attack {
            run,
            safe_dir,
            safe_python,
            outsider_dir,
            outsider_python,
            markers,
        };
        attack.script_names(&attack.safe_python);
        attack
    }

    /// Rewrites `bin/run` (in place: still root's, 0755) to run `interpreter`.
    fn script_names(&self, interpreter: &Path) {
        write(
            &self.run,
            &format!(
                "#!{}\nprint(\"the notebook server\")\n",
                interpreter.display()
            ),
            0o755,
        );
    }

    fn options(&self) -> DaemonOptions {
        DaemonOptions {
            profiles: vec![Profile::command(
                "default",
                &[&self.run.display().to_string()],
            )],
            ..DaemonOptions::default()
        }
    }

    /// The markers written so far.
    fn markers(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.markers)
            .expect("read the markers directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Starts `user`'s server, waits until the interpreter has written `marker`, stops it.
async fn start_and_stop(hub: &Client, user: &TestUser, attack: &Attack, marker: &str) {
    let id = sid(&user.name, "");
    hub.start(start_req(&user.name, "", ""))
        .await
        .unwrap_or_else(|e| panic!("start {id}: {e}"));
    let path = attack.markers.join(marker);
    // The shell creates the file before `id -u` has written to it: wait for its line.
    wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|s| s.ends_with('\n'))
            .map(drop)
    })
    .unwrap_or_else(|| panic!("{} never got its line", path.display()));
    hub.stop(&id, None, true)
        .await
        .unwrap_or_else(|e| panic!("stop {id}: {e}"));
}

/// check-config (and so the daemon's start and every reload) refuses a script whose `#!`
/// interpreter another user controls, naming the interpreter.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn check_config_refuses_an_interpreter_another_user_controls() {
    require_root!();
    let dir = TestDir::new();
    let attack = Attack::new(&dir);
    let opts = attack.options();

    // The control: the same script naming the root-owned interpreter is fine.
    let good = dir.write_config("good.toml", &opts);
    let out = check_config(&good);
    assert_eq!(
        out.code,
        Some(0),
        "check-config with a safe interpreter: {out}"
    );

    attack.script_names(&attack.outsider_python);
    let bad = dir.write_config("bad.toml", &opts);
    let out = check_config(&bad);
    assert_eq!(
        out.code,
        Some(1),
        "check-config must refuse the outsider's interpreter: {out}"
    );
    let outsider = &users().outsider;
    for words in [
        "profiles.default.command",
        "cannot be trusted",
        "the #! interpreter of",
        &format!("#! {}", attack.outsider_python.display()),
        &format!(
            "{} is owned by {} (uid {}), not root",
            attack.outsider_dir.display(),
            outsider.name,
            outsider.uid
        ),
        &format!("chown root {}", attack.outsider_dir.display()),
    ] {
        assert!(
            out.stderr.contains(words),
            "check-config must say {words:?}: {out}"
        );
    }

    // The daemon refuses to start on it.
    let mut cmd = Command::new(bin_path("spawnd", "SPAWND_BIN"));
    cmd.arg("--config")
        .arg(&bad)
        .env("SPAWND_LOG", "debug")
        .env_remove("JOURNAL_STREAM")
        .env_remove("LISTEN_FDS");
    let run = run_with_timeout(cmd, Duration::from_secs(10));
    assert!(
        !run.timed_out && run.code.is_some_and(|c| c != 0),
        "spawnd must refuse to start with the outsider's interpreter: {run}"
    );
    assert!(
        run.stderr
            .contains(&attack.outsider_python.display().to_string()),
        "spawnd's refusal must name the interpreter: {run}"
    );
    assert!(attack.markers().is_empty(), "{:?}", attack.markers());
}

/// The chain is checked again at every start: a script rewritten after the daemon loaded its
/// configuration to name the outsider's interpreter is refused (PolicyDenied), and the
/// outsider's code never runs; a reload refuses it too. So is an interpreter whose directory
/// becomes sticky and world-writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_start_refuses_an_interpreter_made_unsafe_after_load() {
    require_root!();
    let user = &users().a;
    let dir = TestDir::new();
    let attack = Attack::new(&dir);
    let d = TestDaemon::start_in(dir, attack.options());
    let hub = d.hub_client().await;

    // The control: the safe interpreter runs, as the user.
    let safe_marker = format!("safe-{}", user.uid);
    start_and_stop(&hub, user, &attack, &safe_marker).await;
    assert_eq!(attack.markers(), std::slice::from_ref(&safe_marker));
    let ran_as = std::fs::read_to_string(attack.markers.join(&safe_marker)).expect("marker");
    assert_eq!(
        ran_as.trim(),
        user.uid.to_string(),
        "the interpreter ran as the user"
    );

    // The script now names the outsider's interpreter.
    attack.script_names(&attack.outsider_python);
    let e = expect_err(
        hub.start(start_req(&user.name, "", "")).await,
        ErrorKind::PolicyDenied,
    );
    assert_says(
        &e,
        &[
            "profile default is unsafe",
            &format!("the #! interpreter of {}", attack.run.display()),
            &format!("#! {}", attack.outsider_python.display()),
            &format!("{} is owned by", attack.outsider_dir.display()),
        ],
    );
    // Nothing ran: no server, and no marker (given time to appear, had anything started).
    assert_no_servers_running(&d);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        attack.markers(),
        std::slice::from_ref(&safe_marker),
        "the outsider's code ran"
    );

    // A reload refuses the configuration now, naming the interpreter.
    d.sighup();
    wait_for(Duration::from_secs(5), || {
        d.stderr().contains("reload refused").then_some(())
    })
    .unwrap_or_else(|| panic!("the refused reload is logged:\n{}", d.stderr()));
    assert!(
        d.stderr()
            .contains(&attack.outsider_python.display().to_string()),
        "the refused reload names the interpreter:\n{}",
        d.stderr()
    );
    expect_err(
        hub.start(start_req(&user.name, "", "")).await,
        ErrorKind::PolicyDenied,
    );

    // Back to the safe interpreter: starts work again.
    attack.script_names(&attack.safe_python);
    std::fs::remove_file(attack.markers.join(&safe_marker)).expect("rm marker");
    start_and_stop(&hub, user, &attack, &safe_marker).await;

    // The safe interpreter's directory made sticky and world-writable: others could put
    // modules beside it. Refused at the next start.
    std::fs::set_permissions(&attack.safe_dir, std::fs::Permissions::from_mode(0o1777))
        .expect("chmod 1777");
    let e = expect_err(
        hub.start(start_req(&user.name, "", "")).await,
        ErrorKind::PolicyDenied,
    );
    assert_says(
        &e,
        &[
            &format!(
                "{} holds {}",
                attack.safe_dir.display(),
                attack.safe_python.display()
            ),
            "(mode 1777)",
        ],
    );
    assert_no_servers_running(&d);
    std::fs::set_permissions(&attack.safe_dir, std::fs::Permissions::from_mode(0o755))
        .expect("chmod 755");

    // A missing interpreter is a broken install, not a refusal.
    let missing = attack.safe_dir.join("missing");
    attack.script_names(&missing);
    let e = expect_err(
        hub.start(start_req(&user.name, "", "")).await,
        ErrorKind::SpawnFailed,
    );
    assert_says(
        &e,
        &[
            "cannot run",
            &format!("{} does not exist", missing.display()),
        ],
    );
    assert_no_servers_running(&d);
    assert_eq!(
        attack.markers(),
        [safe_marker],
        "only the safe interpreter ran"
    );
}

/// A program directly in a sticky world-writable directory is refused; two levels below one
/// it is accepted.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn check_config_refuses_a_program_directly_in_a_sticky_directory() {
    require_root!();
    let dir = TestDir::new();
    let sticky = dir.mkdir("sticky", 0o1777);
    let direct = sticky.join("server");
    std::fs::copy("/bin/true", &direct).expect("copy /bin/true");
    std::fs::set_permissions(&direct, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let deep_dir = dir.mkdir("sticky/a", 0o755);
    std::fs::create_dir(deep_dir.join("b")).expect("mkdir");
    let deep = deep_dir.join("b/server");
    std::fs::copy("/bin/true", &deep).expect("copy /bin/true");
    std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let config = |program: &Path, file: &str| {
        dir.write_config(
            file,
            &DaemonOptions {
                profiles: vec![Profile::command(
                    "default",
                    &[&program.display().to_string()],
                )],
                ..DaemonOptions::default()
            },
        )
    };
    let out = check_config(&config(&direct, "direct.toml"));
    assert_eq!(out.code, Some(1), "{out}");
    let says = format!(
        "{} holds {} and is writable by group or others (mode 1777)",
        sticky.display(),
        direct.display()
    );
    assert!(
        out.stderr.contains(&says),
        "check-config must say {says:?}: {out}"
    );
    let out = check_config(&config(&deep, "deep.toml"));
    assert_eq!(out.code, Some(0), "{out}");
}
