//! Harness for spawnd's end-to-end tests.
//!
//! These tests prove the privileged path for real: real users and groups (made with `useradd`
//! and `groupadd`), the real `spawnd` binary listening on a real socket, clients whose kernel
//! credentials really are those users', and servers that really change uid. They need root,
//! so every test that does carries `#[ignore = "needs root: run as root with --include-ignored"]`
//! and starts with [`require_root!`]: run as anyone else, the test runner counts those tests as
//! *ignored*, never as passed; run with `--include-ignored` but without root, each one fails
//! with `needs root: ...`. The few tests that need no root (the fuzz seed corpus check) are
//! plain `#[test]`s and run everywhere.
//!
//! - [`users()`] creates the test users and groups once per test process and removes them at
//!   exit (see [`users`] for who is who).
//! - [`TestDaemon::start`] runs a daemon in a fresh directory with a configuration built from
//!   [`DaemonOptions`]; dropping it stops the daemon and kills whatever it left behind.
//! - [`connect_as`] connects to a socket with another user's uid, gid and groups, from a
//!   throw-away thread, so the daemon sees that user in `SO_PEERCRED` / `SO_PEERGROUPS`.
//! - [`procfs`] reads what the kernel says about a process (ids, groups, fds, environment).
//! - [`RawConn`] is a bare `SOCK_SEQPACKET` connection for sending malformed packets.
//! - [`sid`], [`start_req`], [`start`] and [`expect_err`] build requests and check answers.
//! - [`files_under`], [`dirs_under`], [`assert_says`], [`assert_no_servers_running`],
//!   [`check_config`] and [`raise_fd_limit`]: checks shared by several test files.
//! - [`load`]: what the load and soak tests measure (the daemon's footprint, latencies) and
//!   check (nothing left behind, no ERROR line).
//!
//! Build the binaries first: `cargo build --workspace --bins`, then, as root,
//! `cargo test -p spawnd-tests -- --include-ignored --test-threads=4` (one file alone:
//! `cargo test -p spawnd-tests --test core -- --include-ignored`).

mod checks;
mod cmd;
mod daemon;
pub mod load;
mod peer;
pub mod procfs;
mod requests;
mod users;

pub use checks::{
    assert_no_servers_running, assert_says, check_config, dirs_under, files_under, raise_fd_limit,
};
pub use cmd::{CmdOutput, run_with_timeout};
pub use daemon::{
    DEFAULT_PROFILE_ENV, DaemonOptions, PROFILE_PATH, Profile, TestDaemon, TestDir, bin_path,
    cgroup_v2_root, ready, standard_profiles,
};
pub use peer::{RawConn, RawRecv, connect_as, connect_root};
pub use requests::{expect_err, sid, start, start_req};
pub use users::{
    TestGroup, TestUser, TestUsers, add_second_entry, add_test_user, remove_from_group, users,
};

use std::time::{Duration, Instant};

/// True when the tests run with effective uid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The first line of every test that needs root. Such a test is also marked
/// `#[ignore = "needs root: run as root with --include-ignored"]`, so that a run without root
/// counts it as ignored; this guard makes a run with `--include-ignored` but without root fail
/// loudly (`needs root: ...`) instead of passing a test that checked nothing.
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            $crate::is_root(),
            "needs root: this test creates users, runs the spawnd daemon and changes uids; run \
             it as root with `cargo test -p spawnd-tests -- --include-ignored`"
        );
    };
}

/// Returns from the calling test (after printing why) unless the daemon `$d` got a per-server
/// cgroup base (a writable cgroup v2 hierarchy). The test then counts as passed: the runner
/// cannot mark a test ignored once it runs, so the printed line is what says it was skipped.
#[macro_export]
macro_rules! require_cgroup {
    ($d:expr) => {
        if $d.cgroup_base.is_none() {
            eprintln!("skipped: needs a writable cgroup v2 hierarchy (/sys/fs/cgroup/unified)");
            return;
        }
    };
}

/// Calls `check` until it returns `Some`, or gives up after `timeout` and returns `None`.
/// Checks every 20 ms; the first check is immediate.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The async twin of [`wait_for`], for checks that talk to the daemon.
pub async fn wait_for_async<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
