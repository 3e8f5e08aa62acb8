//! A server's process under supervision: its [`Leader`] (pidfd, and process group in
//! process-group mode), the one place a process comes under supervision
//! ([`Supervisor::supervise`]), and what happens at its exit.

use super::{Supervisor, Table};
use crate::host::{Host, Pidfd};
use crate::sys::Reaped;
use nix::unistd::Pid;
use spawnd_protocol::{ExitStatus, ServerId};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long what is left of a tree after its main process exited may take to die.
const TREE_REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// A server's process as its table entry holds it.
#[derive(Debug, Clone)]
pub(super) struct Process {
    pub(super) leader: Arc<Leader>,
    /// The server's own cgroup (cgroup mode); `None`: its process group stands for its tree.
    pub(super) cgroup: Option<PathBuf>,
    /// Becomes true once the main process has exited and the rest of its tree is gone.
    pub(super) gone: watch::Receiver<bool>,
}

impl Process {
    /// SIGKILLs the server's whole tree: its cgroup, or its process group.
    pub(super) fn kill_tree(&self) -> io::Result<()> {
        match &self.cgroup {
            Some(dir) => self.leader.host.kill_cgroup(dir),
            None => self.leader.kill_group(),
        }
    }

    pub(super) fn is_gone(&self) -> bool {
        *self.gone.borrow()
    }
}

/// A server's main process: its pidfd, and (in process-group mode) its process group, whose id
/// is the leader's pid and so is certainly the server's only while the leader is not reaped.
#[derive(Debug)]
pub(super) struct Leader {
    host: Arc<dyn Host>,
    pub(super) pid: Pid,
    pidfd: Pidfd,
    /// Set once the leader has been reaped (by the daemon, whose child it is), or, for a
    /// re-adopted server (another process's child), once it has been seen gone. Held while
    /// the group is signalled, so that the daemon never reaps in between.
    reaped: Mutex<bool>,
}

impl Leader {
    pub(super) fn signal(&self, signal: i32) -> io::Result<()> {
        self.host.pidfd_signal(&self.pidfd, signal)
    }

    /// SIGKILLs the leader's process group, but only while the group id is still the
    /// server's: the daemon's own child before the daemon reaps it (a zombie leader keeps its
    /// pid, and so the group id, from being handed out again), a re-adopted server only while
    /// it still exists (its parent may reap it at any moment after its exit; a pid recycled in
    /// the microseconds between the check and the kill is the one case left open).
    fn kill_group(&self) -> io::Result<()> {
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if *reaped {
            return Ok(());
        }
        self.kill_group_unreaped()
    }

    /// [`Self::kill_group`] with the `reaped` lock held by the caller.
    fn kill_group_unreaped(&self) -> io::Result<()> {
        match self.signal(0) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            _ => self.host.kill_process_group(self.pid),
        }
    }

    /// Reaps the leader if it has exited; with `kill_group` (process-group mode), kills its
    /// group first, while the unreaped leader still holds the group id. `None` while it runs.
    fn reap(&self, kill_group: bool) -> Option<ExitStatus> {
        let mut reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if kill_group && let Err(e) = self.kill_group_unreaped() {
            tracing::warn!(pid = %self.pid, "could not kill the process group: {e}");
        }
        let status = match self.host.pidfd_reap(&self.pidfd) {
            Ok(Some(Reaped::Exited(code))) => ExitStatus::Code(code),
            Ok(Some(Reaped::Killed(signal))) => ExitStatus::Signal(signal),
            Ok(None) => return None,
            // Not our child (re-adopted after a daemon restart): it has exited, but only its
            // parent learns how.
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => ExitStatus::Unknown,
            Err(e) => {
                tracing::error!("waitid on a pidfd failed: {e}");
                ExitStatus::Unknown
            }
        };
        *reaped = true;
        Some(status)
    }

    /// Waits until the leader exits and reaps it (see [`Self::reap`]). The group is killed
    /// and the leader reaped only once its pidfd says it exited: a failed wait is retried (at
    /// most once a second), never taken for an exit.
    async fn wait_exit(&self, kill_group: bool) -> ExitStatus {
        let mut pause = Duration::from_millis(50);
        loop {
            match self.host.pidfd_exited(&self.pidfd).await {
                Ok(()) => {
                    if let Some(status) = self.reap(kill_group) {
                        return status;
                    }
                    // Exited but nothing to reap yet: a tracer holds the zombie, or the
                    // kernel's surprise. Look again, less often the longer it lasts.
                }
                Err(e) => {
                    tracing::error!(pid = %self.pid, "waiting for a server's exit failed: {e}")
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

impl Supervisor {
    /// The one way a process comes under supervision, launched or re-adopted: `record` puts
    /// the [`Process`] into the table (under the table's lock, before its exit can be
    /// reported); then a watcher waits for the exit, records it, kills what is left of the
    /// tree (its cgroup; in process-group mode its group, before the leader is reaped),
    /// persists the exit and marks the process gone.
    pub(super) fn supervise(
        self: &Arc<Self>,
        id: &ServerId,
        instance: u64,
        pid: Pid,
        pidfd: Pidfd,
        cgroup: Option<PathBuf>,
        record: impl FnOnce(&mut Table, Process),
    ) {
        let (gone_tx, gone) = watch::channel(false);
        let leader = Arc::new(Leader {
            host: self.host.clone(),
            pid,
            pidfd,
            reaped: Mutex::new(false),
        });
        let process = Process {
            leader: leader.clone(),
            cgroup: cgroup.clone(),
            gone,
        };
        record(&mut self.table(), process);
        let me = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let status = leader.wait_exit(cgroup.is_none()).await;
            me.exited(&id, instance, status);
            if let Some(dir) = cgroup
                && let Err(e) = reap_cgroup(&*me.host, &dir, TREE_REAP_TIMEOUT).await
            {
                tracing::warn!(server = %id, instance, "could not clean up the process tree: {e}");
            }
            me.persist_blocking(id).await;
            let _ = gone_tx.send(true);
        });
    }

    /// Cleans up, in the background, the cgroup of a server that is no longer running.
    pub(super) fn reap_cgroup_later(&self, id: &ServerId, dir: PathBuf) {
        let (host, id) = (self.host.clone(), id.clone());
        tokio::spawn(async move {
            if let Err(e) = reap_cgroup(&*host, &dir, TREE_REAP_TIMEOUT).await {
                tracing::warn!(server = %id, "could not clean up the old cgroup: {e}");
            }
        });
    }
}

/// Kills whatever is left in a server's cgroup after its main process exited, waits (bounded)
/// until the cgroup is empty, and removes it.
async fn reap_cgroup(host: &dyn Host, dir: &Path, timeout: Duration) -> io::Result<()> {
    if host.cgroup_populated(dir) {
        host.kill_cgroup(dir)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut wait = Duration::from_millis(1);
        while host.cgroup_populated(dir) {
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("processes in {} survived SIGKILL", dir.display()),
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(20));
        }
    }
    host.remove_cgroup(dir)
}
