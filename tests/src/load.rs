//! What the load and soak tests (`tests/load.rs`, `tests/soak.rs`) measure and check: the
//! daemon's footprint as the kernel sees it, latency figures, and that nothing of any server is
//! left behind.

use crate::checks::{dirs_under, files_under};
use crate::daemon::{DaemonOptions, Profile, TestDaemon};
use crate::{procfs, wait_for};
use std::time::Duration;

/// Options for the load tests: the daemon logs at `info`, as it would in production (`debug`
/// audits every poll).
pub fn load_options(profiles: Vec<Profile>, default: &str, extra: &str) -> DaemonOptions {
    DaemonOptions {
        profiles,
        default_profile: default.to_owned(),
        extra_config: format!("{extra}\n"),
        env: vec![("SPAWND_LOG".into(), "info".into())],
        ..DaemonOptions::default()
    }
}

/// What a daemon holds, as the kernel sees it.
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    pub fds: usize,
    pub rss_kib: u64,
    pub threads: u64,
}

pub fn footprint(pid: u32) -> Footprint {
    Footprint {
        fds: procfs::fd_count(pid).expect("the daemon's /proc/PID/fd"),
        rss_kib: procfs::rss_kib(pid).expect("the daemon's VmRSS"),
        threads: procfs::status_number(pid, "Threads").expect("the daemon's Threads"),
    }
}

/// The daemon's footprint once its background work has settled: the state directory's fsync
/// thread opens each record and directory for a moment after a write, so the descriptor count
/// is the lowest seen over a short while.
pub fn settled_footprint(pid: u32) -> Footprint {
    let mut fp = footprint(pid);
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(10));
        fp.fds = fp
            .fds
            .min(procfs::fd_count(pid).expect("the daemon's /proc/PID/fd"));
    }
    fp
}

/// Waits (bounded) until the daemon's descriptor count is back to `fds`; returns the count
/// last seen.
pub fn wait_fds(pid: u32, fds: usize, timeout: Duration) -> usize {
    wait_for(timeout, || {
        let n = procfs::fd_count(pid)?;
        (n <= fds).then_some(n)
    })
    .unwrap_or_else(|| procfs::fd_count(pid).unwrap_or(usize::MAX))
}

/// Waits (bounded) until nothing of any server is left: no live child of the daemon, no
/// record in the state directory, no temporary file, no per-server cgroup. Panics with what is
/// left otherwise.
pub fn assert_nothing_left(d: &TestDaemon, what: &str) {
    let state = d.dir.state_dir();
    let left = wait_for(Duration::from_secs(20), || {
        let children = procfs::servers_of(d.pid());
        let zombies = procfs::zombie_children(d.pid());
        let records = files_under(&state);
        let cgroups = d.cgroup_base.as_deref().map(dirs_under).unwrap_or_default();
        (children.is_empty() && zombies.is_empty() && records.is_empty() && cgroups.is_empty())
            .then_some(())
    });
    if left.is_none() {
        panic!(
            "{what}: something was left after 20 s: children {:?}, zombies {:?}, state files \
             {:?}, cgroups {:?}",
            procfs::servers_of(d.pid()),
            procfs::zombie_children(d.pid()),
            files_under(&state),
            d.cgroup_base.as_deref().map(dirs_under)
        );
    }
}

/// The ERROR lines of the daemon's log.
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(" ERROR ")).collect()
}

/// The p-th percentile (0..=100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

/// A duration in milliseconds, for the printed figures.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
