//! The table of servers and their supervision.
//!
//! Each server is our child, held by a pidfd from the moment of spawn. Its exit is an event
//! (the pidfd becomes readable), its status exact (waitid on the pidfd), and signals go through
//! the pidfd, so a recycled PID can never be hit. Poll is answered from the table.
//!
//! Every change of a server is persisted to the state directory ([`crate::state`]); a
//! restarted daemon re-adopts each recorded server whose pid still has the recorded start
//! time and uid ([`Supervisor::recover`]), and servers it cannot vouch for are reported as
//! exited and never signalled.
//!
//! Here: the table and its queries. Beside it: [`process`] (a process under supervision and its
//! exit), [`stop`] (the escalation), [`recovery`] (after a restart), [`record`] (entries ↔
//! state records), [`error`]. Everything the supervisor does to the system goes through
//! [`crate::host::Host`].

mod error;
mod process;
mod record;
mod recovery;
mod stop;

#[cfg(test)]
mod tests;

pub use error::{AdoptError, SupervisorError, VetError};
pub use recovery::Recovery;
pub use stop::StopTimeouts;

use crate::auth::Scope;
use crate::host::{Host, SystemHost};
use crate::launch::Launched;
use crate::state::StateDir;
use crate::tree::TreeMode;
use nix::unistd::{Pid, Uid};
use process::Process;
use record::epoch_secs;
use spawnd_protocol::{ExitStatus, Polled, ServerId, ServerInfo, ServerPage, ServerState};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The pid of a server that is still starting.
const NO_PID: Pid = Pid::from_raw(0);

/// The servers by name.
type Table = BTreeMap<ServerId, Entry>;

#[derive(Debug, Clone)]
struct Entry {
    instance: u64,
    uid: Uid,
    /// The uid of the peer that started it (the hub's list shows what the hub started).
    owner_uid: Uid,
    profile: String,
    port: Option<u16>,
    started_at: SystemTime,
    exited_at: Option<SystemTime>,
    log_path: PathBuf,
    /// The log file (device, inode) the server writes: its size is watched only while the
    /// file under `log_path` is that one.
    log_file: Option<(u64, u64)>,
    timeouts: StopTimeouts,
    state: ServerState,
    process: Option<Process>,
    /// The server's main process ([`NO_PID`] while starting); kept after exit for reports.
    pid: Pid,
    /// Start time of the process in clock ticks since boot (with the pid, its identity).
    start_ticks: u64,
    cgroup: Option<PathBuf>,
}

/// Whether a caller with this scope ([`crate::auth::authorize`]) sees the entry in a list.
fn sees(scope: Scope, entry: &Entry) -> bool {
    match scope {
        Scope::All => true,
        Scope::StartedBy(uid) => entry.owner_uid.as_raw() == uid,
        Scope::OwnedBy(uid) => entry.uid.as_raw() == uid,
    }
}

/// The daemon's servers.
#[derive(Debug)]
pub struct Supervisor {
    table: Mutex<Table>,
    tree: TreeMode,
    host: Arc<dyn Host>,
    next_instance: AtomicU64,
    state: StateDir,
    /// Serialises state writes: each write records the table's truth at that moment, so the
    /// last write for a server always matches the table.
    state_io: Mutex<()>,
}

/// A reservation for a server that is being started, to be completed with
/// [`Supervisor::record_launch`] or dropped with [`Supervisor::abandon`].
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

impl Entry {
    fn check_instance(&self, id: &ServerId, want: Option<u64>) -> Result<(), SupervisorError> {
        match want {
            Some(asked) if asked != self.instance => Err(SupervisorError::StaleInstance {
                id: id.clone(),
                asked,
                current: self.instance,
            }),
            _ => Ok(()),
        }
    }

    fn info(&self, id: &ServerId) -> ServerInfo {
        ServerInfo {
            server: id.clone(),
            instance: self.instance,
            uid: self.uid.as_raw(),
            pid: self.pid.as_raw() as u32,
            state: self.state,
            profile: self.profile.clone(),
            port: self.port,
            started_at: epoch_secs(self.started_at),
            exited_at: self.exited_at.map(epoch_secs),
        }
    }
}

impl Supervisor {
    pub fn new(tree: TreeMode, state: StateDir) -> Supervisor {
        Supervisor::with_host(tree, state, Arc::new(SystemHost))
    }

    /// A supervisor that acts on the system through `host`.
    pub fn with_host(tree: TreeMode, state: StateDir, host: Arc<dyn Host>) -> Supervisor {
        // Instance ids stay unique across daemon restarts: start from the clock (and above
        // every recorded instance, see `recover`).
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Supervisor {
            table: Mutex::new(BTreeMap::new()),
            tree,
            host,
            next_instance: AtomicU64::new(seed),
            state,
            state_io: Mutex::new(()),
        }
    }

    /// Writes the table's current truth about `id` to the state directory: its record, or
    /// no record once it is forgotten. Blocking I/O: call from a blocking thread.
    pub fn persist(&self, id: &ServerId) -> std::io::Result<()> {
        let _io = self.state_io.lock().unwrap_or_else(|p| p.into_inner());
        let record = self
            .table()
            .get(id)
            .filter(|entry| entry.state != ServerState::Starting)
            .map(|entry| entry.record(id));
        match record {
            Some(record) => self.state.save(&record),
            None => self.state.remove(&id.user, &id.server),
        }
    }

    /// [`Self::persist`] on a blocking thread, logging failures.
    async fn persist_blocking(self: &Arc<Self>, id: ServerId) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = me.persist(&id) {
                tracing::error!(server = %id, "could not update the state directory: {e}");
            }
        })
        .await;
    }

    /// Waits (at most `timeout`) until every state write so far is durable.
    pub fn flush_state(&self, timeout: Duration) -> bool {
        self.state.flush(timeout)
    }

    pub fn tree(&self) -> &TreeMode {
        &self.tree
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock would be a bug; the table itself stays consistent
        // (every update is a single assignment), so keep serving rather than poisoning.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the name for a new start. A running, starting or stopping server of that name is
    /// `AlreadyRunning`; an exited one is replaced.
    pub fn reserve(&self, new: NewServer) -> Result<Reservation, SupervisorError> {
        let mut table = self.table();
        if let Some(old) = table.get(&new.id)
            && !matches!(old.state, ServerState::Exited(_))
        {
            return Err(SupervisorError::AlreadyRunning {
                id: new.id,
                state: old.state,
                instance: old.instance,
                pid: old.pid,
            });
        }
        let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
        table.insert(
            new.id.clone(),
            Entry {
                instance,
                uid: Uid::from_raw(new.uid),
                owner_uid: Uid::from_raw(new.owner_uid),
                profile: new.profile,
                port: new.port,
                started_at: SystemTime::now(),
                exited_at: None,
                log_path: new.log_path,
                log_file: None,
                timeouts: new.timeouts,
                state: ServerState::Starting,
                process: None,
                pid: NO_PID,
                start_ticks: 0,
                cgroup: None,
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

    /// Records that a reserved server has been launched (it is now running) and begins
    /// watching it. Call [`Self::persist`] afterwards.
    pub fn record_launch(
        self: &Arc<Self>,
        r: &Reservation,
        launched: Launched,
        cgroup: Option<PathBuf>,
        log_path: PathBuf,
        log_file: Option<(u64, u64)>,
    ) {
        let pid = Pid::from_raw(launched.pid);
        // Our unreaped child: /proc/PID is certainly it.
        let start_ticks = self.host.start_time(pid).unwrap_or(0);
        let pidfd = self.host.launched_pidfd(pid, launched.pidfd);
        self.supervise(
            &r.id,
            r.instance,
            pid,
            pidfd,
            cgroup.clone(),
            |table, process| {
                if let Some(entry) = table.get_mut(&r.id).filter(|e| e.instance == r.instance) {
                    entry.state = ServerState::Running;
                    entry.process = Some(process);
                    entry.log_path = log_path;
                    entry.log_file = log_file;
                    entry.start_ticks = start_ticks;
                    entry.pid = pid;
                    entry.cgroup = cgroup;
                }
            },
        );
    }

    /// Records the exit of a server's main process (its watcher calls this).
    fn exited(&self, id: &ServerId, instance: u64, status: ExitStatus) {
        let mut table = self.table();
        if let Some(entry) = table.get_mut(id).filter(|e| e.instance == instance) {
            entry.state = ServerState::Exited(status);
            entry.exited_at = Some(SystemTime::now());
            let pid = entry.pid.as_raw();
            tracing::info!(server = %id, instance, pid, "server exited: {status}");
        }
    }

    pub fn poll(&self, id: &ServerId, instance: Option<u64>) -> Result<Polled, SupervisorError> {
        let table = self.table();
        let entry = table
            .get(id)
            .ok_or_else(|| SupervisorError::NotFound(id.clone()))?;
        entry.check_instance(id, instance)?;
        Ok(Polled {
            instance: entry.instance,
            pid: entry.pid.as_raw() as u32,
            state: entry.state,
        })
    }

    /// The logs of the servers that run (path and file), to watch their size.
    pub fn running_logs(&self) -> Vec<(ServerId, PathBuf, (u64, u64))> {
        self.table()
            .iter()
            .filter(|(_, e)| matches!(e.state, ServerState::Running | ServerState::Stopping))
            .filter_map(|(id, e)| Some((id.clone(), e.log_path.clone(), e.log_file?)))
            .collect()
    }

    /// The uid a known server runs as.
    pub fn uid_of(&self, id: &ServerId) -> Option<u32> {
        self.table().get(id).map(|e| e.uid.as_raw())
    }

    /// The log file of a known server.
    pub fn log_path(&self, id: &ServerId) -> Option<PathBuf> {
        self.table().get(id).map(|e| e.log_path.clone())
    }

    /// Sends one signal to the server's main process.
    pub fn signal(
        &self,
        id: &ServerId,
        instance: Option<u64>,
        signal: i32,
    ) -> Result<(), SupervisorError> {
        let table = self.table();
        let entry = table
            .get(id)
            .ok_or_else(|| SupervisorError::NotFound(id.clone()))?;
        entry.check_instance(id, instance)?;
        let process = match (&entry.state, &entry.process) {
            (ServerState::Running | ServerState::Stopping, Some(process)) => process,
            (state, _) => {
                return Err(SupervisorError::NoProcess {
                    id: id.clone(),
                    state: *state,
                });
            }
        };
        process.leader.signal(signal).map_err(|source| {
            if source.raw_os_error() == Some(libc::ESRCH) {
                SupervisorError::JustExited(id.clone())
            } else {
                SupervisorError::Signal {
                    id: id.clone(),
                    source,
                }
            }
        })
    }

    /// SIGKILLs a server and its tree at once (a start that cannot be recorded).
    pub fn kill_now(&self, id: &ServerId, instance: u64) {
        let table = self.table();
        if let Some(entry) = table.get(id).filter(|e| e.instance == instance)
            && let Some(process) = &entry.process
        {
            let _ = process.kill_tree();
            let _ = process.leader.signal(libc::SIGKILL);
        }
    }

    /// Every server that is not known to have exited (for `on_shutdown = "stop"`).
    pub fn live_servers(&self) -> Vec<ServerId> {
        self.table()
            .iter()
            .filter(|(_, e)| !matches!(e.state, ServerState::Exited(_)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// One page of the servers a caller with `scope` may see, in (user, server) order after `after`.
    pub fn list(&self, scope: Scope, after: Option<&ServerId>, limit: usize) -> ServerPage {
        let table = self.table();
        let range = match after {
            Some(after) => table.range((Bound::Excluded(after.clone()), Bound::Unbounded)),
            None => table.range::<ServerId, _>(..),
        };
        let mut servers = Vec::with_capacity(limit.min(64));
        let mut next = None;
        for (id, entry) in range.filter(|(_, entry)| sees(scope, entry)) {
            if servers.len() == limit {
                next = servers.last().map(|s: &ServerInfo| s.server.clone());
                break;
            }
            servers.push(entry.info(id));
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
