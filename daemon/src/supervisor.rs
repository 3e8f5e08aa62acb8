//! The table of servers and their supervision.
//!
//! Each server is our child, held by a pidfd from the moment of spawn. Its exit is an event
//! (the pidfd becomes readable), its status exact (waitid on the pidfd), and signals go through
//! the pidfd, so a recycled PID can never be hit. Poll is answered from the table.

use crate::launch::Launched;
use crate::sys::{self, Reaped};
use crate::tree::{self, TreeMode};
use spawnd_protocol::{
    ErrorKind, ErrorReply, ExitStatus, Polled, ServerId, ServerInfo, ServerPage, ServerState,
};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// How long a stop waits after each signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopTimeouts {
    pub interrupt: Duration,
    pub term: Duration,
    pub kill: Duration,
}

/// What a server record says about its process.
#[derive(Debug, Clone)]
struct Process {
    pid: i32,
    pidfd: Arc<OwnedFd>,
    cgroup: Option<PathBuf>,
    /// Becomes true once the main process has exited and the rest of its tree is gone.
    gone: watch::Receiver<bool>,
}

#[derive(Debug, Clone)]
struct Entry {
    instance: u64,
    uid: u32,
    /// The uid of the peer that started it (the hub's list shows what the hub started).
    owner_uid: u32,
    profile: String,
    port: Option<u16>,
    started_at: SystemTime,
    exited_at: Option<SystemTime>,
    log_path: PathBuf,
    timeouts: StopTimeouts,
    state: ServerState,
    process: Option<Process>,
}

/// Who is asking to see servers.
#[derive(Debug, Clone, Copy)]
pub enum Viewer {
    All,
    StartedBy(u32),
    OwnedBy(u32),
}

/// The daemon's servers.
#[derive(Debug)]
pub struct Supervisor {
    table: Mutex<BTreeMap<ServerId, Entry>>,
    tree: TreeMode,
    next_instance: AtomicU64,
}

/// A reservation for a server that is being started, to be completed with
/// [`Supervisor::running`] or dropped with [`Supervisor::abandon`].
#[derive(Debug, Clone)]
pub struct Reservation {
    pub id: ServerId,
    pub instance: u64,
}

/// What a new server record starts with.
#[derive(Debug, Clone)]
pub struct NewServer {
    pub id: ServerId,
    pub uid: u32,
    pub owner_uid: u32,
    pub profile: String,
    pub port: Option<u16>,
    pub log_path: PathBuf,
    pub timeouts: StopTimeouts,
}

fn not_found(id: &ServerId) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::NotFound,
        format!("no server {id} is known to spawnd"),
    )
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Entry {
    fn check_instance(&self, id: &ServerId, want: Option<u64>) -> Result<(), ErrorReply> {
        match want {
            Some(w) if w != self.instance => Err(ErrorReply::new(
                ErrorKind::NotFound,
                format!(
                    "server {id} instance {w} is gone; the current instance is {} (the \
                     caller's record is stale, so nothing was done)",
                    self.instance
                ),
            )),
            _ => Ok(()),
        }
    }

    fn info(&self, id: &ServerId) -> ServerInfo {
        ServerInfo {
            server: id.clone(),
            instance: self.instance,
            uid: self.uid,
            pid: self.process.as_ref().map_or(0, |p| p.pid as u32),
            state: self.state,
            profile: self.profile.clone(),
            port: self.port,
            started_at: epoch_secs(self.started_at),
            exited_at: self.exited_at.map(epoch_secs),
        }
    }
}

impl Supervisor {
    pub fn new(tree: TreeMode) -> Supervisor {
        // Instance ids stay unique across daemon restarts: start from the clock.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Supervisor {
            table: Mutex::new(BTreeMap::new()),
            tree,
            next_instance: AtomicU64::new(seed),
        }
    }

    pub fn tree(&self) -> &TreeMode {
        &self.tree
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<ServerId, Entry>> {
        // A panic while holding the lock would be a bug; the table itself stays consistent
        // (every update is a single assignment), so keep serving rather than poisoning.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the name for a new start. A running, starting or stopping server of that name is
    /// `AlreadyRunning`; an exited one is replaced.
    pub fn reserve(&self, new: NewServer) -> Result<Reservation, ErrorReply> {
        let mut table = self.table();
        if let Some(old) = table.get(&new.id)
            && !matches!(old.state, ServerState::Exited(_))
        {
            return Err(ErrorReply::new(
                ErrorKind::AlreadyRunning,
                format!(
                    "server {} is already {} (instance {}, pid {}); stop it first",
                    new.id,
                    old.state,
                    old.instance,
                    old.process.as_ref().map_or(0, |p| p.pid)
                ),
            ));
        }
        let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
        table.insert(
            new.id.clone(),
            Entry {
                instance,
                uid: new.uid,
                owner_uid: new.owner_uid,
                profile: new.profile,
                port: new.port,
                started_at: SystemTime::now(),
                exited_at: None,
                log_path: new.log_path,
                timeouts: new.timeouts,
                state: ServerState::Starting,
                process: None,
            },
        );
        Ok(Reservation {
            id: new.id,
            instance,
        })
    }

    /// Drops a reservation whose start failed.
    pub fn abandon(&self, r: &Reservation) {
        let mut table = self.table();
        if table.get(&r.id).is_some_and(|e| e.instance == r.instance) {
            table.remove(&r.id);
        }
    }

    /// Records a started server and begins watching it.
    pub fn running(
        self: &Arc<Self>,
        r: &Reservation,
        launched: Launched,
        cgroup: Option<PathBuf>,
        log_path: PathBuf,
    ) {
        let (tx, rx) = watch::channel(false);
        let pidfd = Arc::new(launched.pidfd);
        let process = Process {
            pid: launched.pid,
            pidfd: pidfd.clone(),
            cgroup: cgroup.clone(),
            gone: rx,
        };
        {
            let mut table = self.table();
            if let Some(e) = table.get_mut(&r.id).filter(|e| e.instance == r.instance) {
                e.state = ServerState::Running;
                e.process = Some(process);
                e.log_path = log_path;
            }
        }
        let me = self.clone();
        let (id, instance, pid) = (r.id.clone(), r.instance, launched.pid);
        tokio::spawn(async move {
            let status = wait_exit(pidfd).await;
            me.exited(&id, instance, status);
            if let Err(e) = tree::reap_tree(cgroup, pid, Duration::from_secs(10)).await {
                tracing::warn!(server = %id, instance, "could not clean up the process tree: {e}");
            }
            let _ = tx.send(true);
        });
    }

    fn exited(&self, id: &ServerId, instance: u64, status: ExitStatus) {
        let mut table = self.table();
        if let Some(e) = table.get_mut(id).filter(|e| e.instance == instance) {
            e.state = ServerState::Exited(status);
            e.exited_at = Some(SystemTime::now());
            let pid = e.process.as_ref().map_or(0, |p| p.pid);
            tracing::info!(server = %id, instance, pid, "server exited: {status}");
        }
    }

    pub fn poll(&self, id: &ServerId, instance: Option<u64>) -> Result<Polled, ErrorReply> {
        let table = self.table();
        let e = table.get(id).ok_or_else(|| not_found(id))?;
        e.check_instance(id, instance)?;
        Ok(Polled {
            instance: e.instance,
            pid: e.process.as_ref().map_or(0, |p| p.pid as u32),
            state: e.state,
        })
    }

    /// The uid a server runs as, and its log, if it is known.
    pub fn owner_and_log(&self, id: &ServerId) -> Option<(u32, PathBuf)> {
        self.table().get(id).map(|e| (e.uid, e.log_path.clone()))
    }

    /// Sends one signal to the server's main process.
    pub fn signal(
        &self,
        id: &ServerId,
        instance: Option<u64>,
        signal: i32,
    ) -> Result<(), ErrorReply> {
        let table = self.table();
        let e = table.get(id).ok_or_else(|| not_found(id))?;
        e.check_instance(id, instance)?;
        let p = match (&e.state, &e.process) {
            (ServerState::Running | ServerState::Stopping, Some(p)) => p,
            (state, _) => {
                return Err(ErrorReply::new(
                    ErrorKind::NotFound,
                    format!("server {id} is {state}; there is no process to signal"),
                ));
            }
        };
        sys::pidfd_send_signal(p.pidfd.as_fd(), signal).map_err(|e| {
            if e.raw_os_error() == Some(libc::ESRCH) {
                ErrorReply::new(ErrorKind::NotFound, format!("server {id} has just exited"))
            } else {
                ErrorReply::new(ErrorKind::Internal, format!("could not signal {id}: {e}"))
            }
        })
    }

    /// Stops a server: SIGINT (unless `now`), SIGTERM, then SIGKILL of the whole tree, each
    /// followed by its timeout; returns once the server and its tree are gone, and forgets it.
    pub async fn stop(
        &self,
        id: &ServerId,
        instance: Option<u64>,
        now: bool,
    ) -> Result<(u64, ExitStatus), ErrorReply> {
        let (instance, process, timeouts, exited) = {
            let mut table = self.table();
            let e = table.get_mut(id).ok_or_else(|| not_found(id))?;
            e.check_instance(id, instance)?;
            let exited = match e.state {
                ServerState::Starting => {
                    return Err(ErrorReply::new(
                        ErrorKind::Busy,
                        format!("server {id} is still starting; stop it again in a moment"),
                    ));
                }
                ServerState::Exited(_) => true,
                ServerState::Running | ServerState::Stopping => {
                    e.state = ServerState::Stopping;
                    false
                }
            };
            (e.instance, e.process.clone(), e.timeouts, exited)
        };
        if let Some(mut p) = process {
            if !exited {
                let mut steps = Vec::with_capacity(3);
                if !now {
                    steps.push((libc::SIGINT, timeouts.interrupt));
                }
                steps.push((libc::SIGTERM, timeouts.term));
                steps.push((libc::SIGKILL, timeouts.kill));
                for (signal, wait) in steps {
                    if *p.gone.borrow() {
                        break;
                    }
                    if signal == libc::SIGKILL
                        && let Err(e) = tree::kill_tree(p.cgroup.as_deref(), p.pid)
                    {
                        tracing::warn!(server = %id, "could not kill the process tree: {e}");
                    }
                    match sys::pidfd_send_signal(p.pidfd.as_fd(), signal) {
                        Ok(()) => tracing::debug!(server = %id, signal, "sent"),
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                        Err(e) => tracing::warn!(server = %id, signal, "could not signal: {e}"),
                    }
                    if wait_gone(&mut p.gone, wait).await {
                        break;
                    }
                }
            }
            // The exit watcher reaps the tree within its own bounded time.
            if !wait_gone(&mut p.gone, Duration::from_secs(15)).await {
                return Err(ErrorReply::new(
                    ErrorKind::Internal,
                    format!(
                        "server {id} (pid {}) did not exit after SIGKILL; it may be stuck in the \
                         kernel (state D): check `cat /proc/{}/stack`",
                        p.pid, p.pid
                    ),
                ));
            }
        }
        let mut table = self.table();
        match table.get(id) {
            Some(e) if e.instance == instance => {
                let status = match e.state {
                    ServerState::Exited(s) => s,
                    _ => ExitStatus::Unknown,
                };
                table.remove(id);
                Ok((instance, status))
            }
            // Another stop finished first and forgot it; the server is gone all the same.
            _ => Ok((instance, ExitStatus::Unknown)),
        }
    }

    /// One page of the servers `viewer` may see, in (user, server) order after `after`.
    pub fn list(&self, viewer: Viewer, after: Option<&ServerId>, limit: usize) -> ServerPage {
        let table = self.table();
        let range = match after {
            Some(a) => table.range((Bound::Excluded(a.clone()), Bound::Unbounded)),
            None => table.range::<ServerId, _>(..),
        };
        let mut servers = Vec::with_capacity(limit.min(64));
        let mut next = None;
        for (id, e) in range {
            let visible = match viewer {
                Viewer::All => true,
                Viewer::StartedBy(uid) => e.owner_uid == uid,
                Viewer::OwnedBy(uid) => e.uid == uid,
            };
            if !visible {
                continue;
            }
            if servers.len() == limit {
                next = servers.last().map(|s: &ServerInfo| s.server.clone());
                break;
            }
            servers.push(e.info(id));
        }
        ServerPage { servers, next }
    }

    /// (running or starting or stopping, exited)
    pub fn counts(&self) -> (u32, u32) {
        let table = self.table();
        let exited = table
            .values()
            .filter(|e| matches!(e.state, ServerState::Exited(_)))
            .count();
        ((table.len() - exited) as u32, exited as u32)
    }
}

/// Waits until the process behind `pidfd` exits, and reaps it.
async fn wait_exit(pidfd: Arc<OwnedFd>) -> ExitStatus {
    let to_status = |r: Reaped| match r {
        Reaped::Exited(c) => ExitStatus::Code(c),
        Reaped::Killed(s) => ExitStatus::Signal(s),
    };
    // SAFETY: the AsyncFd owns a clone of the Arc, so the pidfd stays open and is not replaced
    // for as long as it is registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(pidfd.clone(), tokio::io::Interest::READABLE) };
    match registered {
        Ok(afd) => loop {
            let mut guard = match afd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!("waiting on a pidfd failed: {e}");
                    break;
                }
            };
            match sys::waitid_pidfd(pidfd.as_fd()) {
                Ok(Some(r)) => return to_status(r),
                Ok(None) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!("waitid on a pidfd failed: {e}");
                    return ExitStatus::Unknown;
                }
            }
        },
        Err(e) => tracing::error!("cannot register a pidfd with the event loop: {e}"),
    }
    // Fallback: a blocking wait on a blocking thread.
    let fd = pidfd.clone();
    match tokio::task::spawn_blocking(move || sys::waitid_pidfd_blocking(fd.as_fd())).await {
        Ok(Ok(r)) => to_status(r),
        _ => ExitStatus::Unknown,
    }
}

/// Waits up to `timeout` for the server to be gone; true if it is.
async fn wait_gone(gone: &mut watch::Receiver<bool>, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, gone.wait_for(|g| *g)).await,
        Ok(Ok(_))
    )
}
