//! Checks and small helpers that more than one test file uses.

use crate::cmd::{CmdOutput, run_with_timeout};
use crate::daemon::{TestDaemon, bin_path};
use crate::procfs;
use spawnd_protocol::ErrorReply;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Every file under `dir` (recursively, full paths, sorted); nothing when `dir` is unreadable.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Subdirectories of `dir`, recursively (cgroups are directories).
pub fn dirs_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path());
            out.extend(dirs_under(&e.path()));
        }
    }
    out
}

/// Prints the error the caller was given and checks that its message says each of `words`.
#[track_caller]
pub fn assert_says(reply: &ErrorReply, words: &[&str]) {
    eprintln!("the caller was told: {}: {}", reply.kind, reply.message);
    for w in words {
        assert!(
            reply.message.contains(w),
            "the {} message should say {w:?}: {:?}",
            reply.kind,
            reply.message
        );
    }
}

/// The daemon has no live child (no server), or the panic names each one's pid, command and
/// uids.
#[track_caller]
pub fn assert_no_servers_running(d: &TestDaemon) {
    let children = procfs::servers_of(d.pid());
    assert!(
        children.is_empty(),
        "the daemon has live children (servers) it should not have: {:?}",
        children
            .iter()
            .map(|&p| (p, procfs::comm(p), procfs::status_ids(p, "Uid")))
            .collect::<Vec<_>>()
    );
}

/// `spawnd check-config CONFIG` (20 s limit).
pub fn check_config(config: &Path) -> CmdOutput {
    let mut cmd = Command::new(bin_path("spawnd", "SPAWND_BIN"));
    cmd.arg("check-config").arg(config);
    run_with_timeout(cmd, Duration::from_secs(20))
}

/// For a test process that opens many sockets: raises its soft limit of descriptors to the
/// hard limit.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}
