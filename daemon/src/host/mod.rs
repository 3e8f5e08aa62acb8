//! What the supervisor asks of the host, as one narrow trait: processes through pidfds and
//! signals, `/proc`, the servers' cgroups, and user lookups.
//!
//! [`SystemHost`] is the kernel (it calls [`crate::sys`] and [`crate::tree`]); the tests'
//! fake (`host::fake`) keeps processes, cgroups and users in memory, so that stop escalation,
//! re-adoption and recovery are decided and checked without root, in milliseconds. What only
//! the kernel can show (real pidfds, cgroups, users) stays with the integration tests.

use crate::sys::{self, Reaped};
use crate::tree;
use nix::unistd::{Pid, Uid, User};
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

#[cfg(test)]
pub mod fake;

/// A future a host hands out (boxed, so that [`Host`] can be used as `dyn Host`).
pub type HostFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A handle to one process, for good: on the real host a pidfd, so that a recycled pid is
/// never hit. Cheap to clone (the descriptor is shared).
#[derive(Debug, Clone)]
pub struct Pidfd(Handle);

#[derive(Debug, Clone)]
enum Handle {
    Kernel(Arc<OwnedFd>),
    /// A process of the tests' fake host, by its index there.
    #[cfg(test)]
    Fake(usize),
}

impl Pidfd {
    fn kernel(&self) -> io::Result<&Arc<OwnedFd>> {
        match &self.0 {
            Handle::Kernel(fd) => Ok(fd),
            #[cfg(test)]
            Handle::Fake(_) => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }
}

/// Everything the supervisor does to processes, `/proc`, cgroups and the user database.
/// Signals are numbers (0 probes for existence), as on the wire.
pub trait Host: Send + Sync + fmt::Debug {
    /// Opens a pidfd to `pid`; ESRCH if there is no such process. Whether it is still the
    /// process the caller means is the caller's question (start time, uid).
    fn pidfd_open(&self, pid: Pid) -> io::Result<Pidfd>;

    /// Takes over the pidfd of a child the daemon has just launched.
    fn launched_pidfd(&self, pid: Pid, pidfd: OwnedFd) -> Pidfd;

    /// Sends `signal` through the pidfd; ESRCH once the process is gone.
    fn pidfd_signal(&self, pidfd: &Pidfd, signal: i32) -> io::Result<()>;

    /// Reaps the process without blocking: `Ok(None)` while it runs, ECHILD if it is not the
    /// daemon's child (only its parent learns how it ended).
    fn pidfd_reap(&self, pidfd: &Pidfd) -> io::Result<Option<Reaped>>;

    /// Resolves once the process has exited (the pidfd is readable); does not reap it.
    fn pidfd_exited<'a>(&'a self, pidfd: &'a Pidfd) -> HostFuture<'a, io::Result<()>>;

    /// SIGKILLs the process group `pgid`. Only while the group's leader is not reaped (see
    /// [`tree::kill_group`]).
    fn kill_process_group(&self, pgid: Pid) -> io::Result<()>;

    /// A process's start time in clock ticks since boot (with the pid, its identity).
    fn start_time(&self, pid: Pid) -> io::Result<u64>;

    /// A process's real uid.
    fn real_uid(&self, pid: Pid) -> io::Result<Uid>;

    /// A process's session id.
    fn session(&self, pid: Pid) -> io::Result<Pid>;

    /// The names of the directories in a cgroup directory (empty if it cannot be read).
    fn cgroup_children(&self, dir: &Path) -> Vec<String>;

    /// Whether the cgroup directory exists.
    fn cgroup_exists(&self, dir: &Path) -> bool;

    /// The processes in a cgroup (`cgroup.procs`).
    fn cgroup_procs(&self, dir: &Path) -> io::Result<Vec<Pid>>;

    /// Whether the cgroup still holds processes.
    fn cgroup_populated(&self, dir: &Path) -> bool;

    /// Kills every process in the cgroup.
    fn kill_cgroup(&self, dir: &Path) -> io::Result<()>;

    /// Removes an empty server cgroup, and its user's directory when no other server of the
    /// user has one.
    fn remove_cgroup(&self, dir: &Path) -> io::Result<()>;

    /// The uid of the user of this name, if there is one.
    fn user_uid(&self, name: &str) -> Option<Uid>;
}

/// The kernel, `/proc`, the cgroup file system and NSS.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemHost;

impl Host for SystemHost {
    fn pidfd_open(&self, pid: Pid) -> io::Result<Pidfd> {
        let fd = sys::pidfd_open(pid.as_raw())?;
        Ok(Pidfd(Handle::Kernel(Arc::new(fd))))
    }

    fn launched_pidfd(&self, _pid: Pid, pidfd: OwnedFd) -> Pidfd {
        Pidfd(Handle::Kernel(Arc::new(pidfd)))
    }

    fn pidfd_signal(&self, pidfd: &Pidfd, signal: i32) -> io::Result<()> {
        sys::pidfd_send_signal(pidfd.kernel()?.as_fd(), signal)
    }

    fn pidfd_reap(&self, pidfd: &Pidfd) -> io::Result<Option<Reaped>> {
        sys::waitid_pidfd(pidfd.kernel()?.as_fd())
    }

    fn pidfd_exited<'a>(&'a self, pidfd: &'a Pidfd) -> HostFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let fd = pidfd.kernel()?.clone();
            match sys::register_pidfd(fd.clone()) {
                Ok(registered) => match registered.readable().await {
                    // Readable: the process has exited. The readiness is not cleared, since
                    // the registration ends here.
                    Ok(_ready) => return Ok(()),
                    Err(e) => tracing::error!("waiting on a pidfd failed: {e}"),
                },
                Err(e) => tracing::error!("cannot register a pidfd with the event loop: {e}"),
            }
            // Fallback: a blocking wait on a blocking thread.
            tokio::task::spawn_blocking(move || sys::wait_pidfd_readable(fd.as_fd()))
                .await
                .map_err(io::Error::other)?
        })
    }

    fn kill_process_group(&self, pgid: Pid) -> io::Result<()> {
        tree::kill_group(pgid.as_raw())
    }

    fn start_time(&self, pid: Pid) -> io::Result<u64> {
        sys::process_start_time(pid.as_raw())
    }

    fn real_uid(&self, pid: Pid) -> io::Result<Uid> {
        sys::process_uid(pid.as_raw()).map(Uid::from_raw)
    }

    fn session(&self, pid: Pid) -> io::Result<Pid> {
        sys::process_session(pid.as_raw()).map(Pid::from_raw)
    }

    fn cgroup_children(&self, dir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|entry| entry.path().is_dir())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn cgroup_exists(&self, dir: &Path) -> bool {
        dir.exists()
    }

    fn cgroup_procs(&self, dir: &Path) -> io::Result<Vec<Pid>> {
        tree::cgroup_procs(dir).map(|pids| pids.into_iter().map(Pid::from_raw).collect())
    }

    fn cgroup_populated(&self, dir: &Path) -> bool {
        tree::populated(dir)
    }

    fn kill_cgroup(&self, dir: &Path) -> io::Result<()> {
        tree::kill_cgroup(dir)
    }

    fn remove_cgroup(&self, dir: &Path) -> io::Result<()> {
        tree::remove_cgroup(dir)
    }

    fn user_uid(&self, name: &str) -> Option<Uid> {
        User::from_name(name).ok().flatten().map(|user| user.uid)
    }
}
