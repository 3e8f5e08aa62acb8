//! Stopping a server: SIGINT (unless `now`), SIGTERM, then SIGKILL of the whole tree, each
//! followed by its timeout; the stop returns once the server and its tree are gone.

use super::process::Process;
use super::{Supervisor, SupervisorError};
use nix::unistd::Pid;
use spawnd_protocol::{ExitStatus, ServerId, ServerState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a stop waits, after the last signal, for the exit watcher to see the server and
/// its tree gone (the watcher reaps the tree within its own bounded time).
const GONE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a stop waits after each signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopTimeouts {
    pub interrupt: Duration,
    pub term: Duration,
    pub kill: Duration,
}

impl StopTimeouts {
    /// A profile's timeouts, or the defaults where there is no profile.
    pub fn of(profile: Option<&crate::config::Profile>) -> StopTimeouts {
        use crate::config::{
            DEFAULT_INTERRUPT_TIMEOUT, DEFAULT_KILL_TIMEOUT, DEFAULT_TERM_TIMEOUT,
        };
        match profile {
            Some(p) => StopTimeouts {
                interrupt: p.interrupt_timeout,
                term: p.term_timeout,
                kill: p.kill_timeout,
            },
            None => StopTimeouts {
                interrupt: DEFAULT_INTERRUPT_TIMEOUT,
                term: DEFAULT_TERM_TIMEOUT,
                kill: DEFAULT_KILL_TIMEOUT,
            },
        }
    }

    /// The signals of a stop, each with how long to wait after it: SIGINT (skipped with
    /// `now`), SIGTERM, SIGKILL.
    pub(super) fn steps(&self, now: bool) -> Vec<(i32, Duration)> {
        let interrupt = (!now).then_some((libc::SIGINT, self.interrupt));
        interrupt
            .into_iter()
            .chain([(libc::SIGTERM, self.term), (libc::SIGKILL, self.kill)])
            .collect()
    }
}

/// A stop's view of the server, taken from the table as it began.
struct Stopping {
    instance: u64,
    pid: Pid,
    process: Option<Process>,
    timeouts: StopTimeouts,
    /// It had exited already: nothing to signal, only to forget.
    exited: bool,
}

impl Supervisor {
    /// Stops a server: SIGINT (unless `now`), SIGTERM, then SIGKILL of the whole tree, each
    /// followed by its timeout; returns once the server and its tree are gone, and forgets it.
    pub async fn stop(
        self: &Arc<Self>,
        id: &ServerId,
        instance: Option<u64>,
        now: bool,
    ) -> Result<(u64, ExitStatus), SupervisorError> {
        let stopping = self.begin_stop(id, instance)?;
        if let Some(mut process) = stopping.process {
            if !stopping.exited {
                escalate(id, &mut process, stopping.timeouts, now).await;
            }
            if !wait_gone(&mut process.gone, GONE_TIMEOUT).await {
                return Err(SupervisorError::StuckInKernel {
                    id: id.clone(),
                    pid: stopping.pid,
                });
            }
        }
        let status = self.forget(id, stopping.instance).await;
        Ok((stopping.instance, status))
    }

    /// Marks a running server as stopping. A starting server cannot be stopped yet.
    fn begin_stop(
        &self,
        id: &ServerId,
        instance: Option<u64>,
    ) -> Result<Stopping, SupervisorError> {
        let mut table = self.table();
        let entry = table
            .get_mut(id)
            .ok_or_else(|| SupervisorError::NotFound(id.clone()))?;
        entry.check_instance(id, instance)?;
        let exited = match entry.state {
            ServerState::Starting => return Err(SupervisorError::StillStarting(id.clone())),
            ServerState::Exited(_) => true,
            ServerState::Running | ServerState::Stopping => {
                entry.state = ServerState::Stopping;
                false
            }
        };
        Ok(Stopping {
            instance: entry.instance,
            pid: entry.pid,
            process: entry.process.clone(),
            timeouts: entry.timeouts,
            exited,
        })
    }

    /// Forgets a stopped server, in the table and then in the state directory (before the
    /// stop is answered: once Stop returns, no daemon will re-adopt it). Returns how it ended.
    async fn forget(self: &Arc<Self>, id: &ServerId, instance: u64) -> ExitStatus {
        let status = {
            let mut table = self.table();
            match table.get(id) {
                Some(entry) if entry.instance == instance => {
                    let status = match entry.state {
                        ServerState::Exited(status) => status,
                        _ => ExitStatus::Unknown,
                    };
                    table.remove(id);
                    status
                }
                // Another stop finished first and forgot it; the server is gone all the same.
                _ => return ExitStatus::Unknown,
            }
        };
        self.persist_blocking(id.clone()).await;
        status
    }
}

/// Sends the stop's signals until the server is gone; the tree is killed right before SIGKILL.
async fn escalate(id: &ServerId, process: &mut Process, timeouts: StopTimeouts, now: bool) {
    for (signal, wait) in timeouts.steps(now) {
        if process.is_gone() {
            return;
        }
        if signal == libc::SIGKILL
            && let Err(e) = process.kill_tree()
        {
            tracing::warn!(server = %id, "could not kill the process tree: {e}");
        }
        match process.leader.signal(signal) {
            Ok(()) => tracing::debug!(server = %id, signal, "sent"),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => tracing::warn!(server = %id, signal, "could not signal: {e}"),
        }
        if wait_gone(&mut process.gone, wait).await {
            return;
        }
    }
}

/// Waits up to `timeout` for the server to be gone; true if it is.
async fn wait_gone(gone: &mut watch::Receiver<bool>, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, gone.wait_for(|g| *g)).await,
        Ok(Ok(_))
    )
}
