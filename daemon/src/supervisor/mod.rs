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

use crate::launch::Launched;
use crate::state::{RECORD_VERSION, Record, StateDir};
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
use tokio::sync::watch;

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

    fn of_record(rec: &Record) -> StopTimeouts {
        StopTimeouts {
            interrupt: Duration::from_millis(rec.interrupt_timeout_ms),
            term: Duration::from_millis(rec.term_timeout_ms),
            kill: Duration::from_millis(rec.kill_timeout_ms),
        }
    }
}

/// What a server record says about its process.
#[derive(Debug, Clone)]
struct Process {
    leader: Arc<Leader>,
    /// Becomes true once the main process has exited and the rest of its tree is gone.
    gone: watch::Receiver<bool>,
}

/// A server's main process: its pidfd, and (in process-group mode) its process group, whose id
/// is the leader's pid and so is certainly the server's only while the leader is not reaped.
#[derive(Debug)]
struct Leader {
    pid: i32,
    pidfd: Arc<OwnedFd>,
    /// Set once the leader has been reaped (by the daemon, whose child it is), or, for a
    /// re-adopted server (another process's child), once it has been seen gone. Held while
    /// the group is signalled, so that the daemon never reaps in between.
    reaped: Mutex<bool>,
}

impl Leader {
    fn new(pid: i32, pidfd: OwnedFd) -> Arc<Leader> {
        Arc::new(Leader {
            pid,
            pidfd: Arc::new(pidfd),
            reaped: Mutex::new(false),
        })
    }

    fn signal(&self, signal: i32) -> std::io::Result<()> {
        sys::pidfd_send_signal(self.pidfd.as_fd(), signal)
    }

    /// SIGKILLs the leader's process group, but only while the group id is still the
    /// server's: the daemon's own child before the daemon reaps it (a zombie leader keeps its
    /// pid, and so the group id, from being handed out again), a re-adopted server only while
    /// it still exists (its parent may reap it at any moment after its exit; a pid recycled in
    /// the microseconds between the check and the kill is the one case left open).
    fn kill_group(&self) -> std::io::Result<()> {
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if *reaped {
            return Ok(());
        }
        self.kill_group_unreaped()
    }

    /// [`Self::kill_group`] with the `reaped` lock held by the caller.
    fn kill_group_unreaped(&self) -> std::io::Result<()> {
        match self.signal(0) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            _ => tree::kill_group(self.pid),
        }
    }
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
    /// The log file (device, inode) the server writes: its size is watched only while the
    /// file under `log_path` is that one.
    log_file: Option<(u64, u64)>,
    timeouts: StopTimeouts,
    state: ServerState,
    process: Option<Process>,
    /// The server's main process (0 while starting); kept after exit for reports.
    pid: i32,
    /// Start time of the process in clock ticks since boot (with the pid, its identity).
    start_ticks: u64,
    cgroup: Option<PathBuf>,
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
    state: StateDir,
    /// Serialises state writes: each write records the table's truth at that moment, so the
    /// last write for a server always matches the table.
    state_io: Mutex<()>,
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

    fn record(&self, id: &ServerId) -> Record {
        let ms = |d: Duration| d.as_millis() as u64;
        Record {
            version: RECORD_VERSION,
            user: id.user.clone(),
            server: id.server.clone(),
            uid: self.uid,
            owner_uid: self.owner_uid,
            instance: self.instance,
            pid: self.pid,
            start_ticks: self.start_ticks,
            cgroup: self.cgroup.clone(),
            profile: self.profile.clone(),
            port: self.port,
            log_file: self.log_file,
            started_at: epoch_secs(self.started_at),
            exit: match self.state {
                ServerState::Exited(e) => Some(e),
                _ => None,
            },
            exited_at: self.exited_at.map(epoch_secs),
            interrupt_timeout_ms: ms(self.timeouts.interrupt),
            term_timeout_ms: ms(self.timeouts.term),
            kill_timeout_ms: ms(self.timeouts.kill),
        }
    }

    fn info(&self, id: &ServerId) -> ServerInfo {
        ServerInfo {
            server: id.clone(),
            instance: self.instance,
            uid: self.uid,
            pid: self.pid as u32,
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
        // Instance ids stay unique across daemon restarts: start from the clock (and above
        // every recorded instance, see `recover`).
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Supervisor {
            table: Mutex::new(BTreeMap::new()),
            tree,
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
            .filter(|e| e.state != ServerState::Starting)
            .map(|e| e.record(id));
        match record {
            Some(r) => self.state.save(&r),
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
                    new.id, old.state, old.instance, old.pid
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
                log_file: None,
                timeouts: new.timeouts,
                state: ServerState::Starting,
                process: None,
                pid: 0,
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

    /// Records a started server and begins watching it. Call [`Self::persist`] afterwards.
    pub fn running(
        self: &Arc<Self>,
        r: &Reservation,
        launched: Launched,
        cgroup: Option<PathBuf>,
        log_path: PathBuf,
        log_file: Option<(u64, u64)>,
    ) {
        // Our unreaped child: /proc/PID is certainly it.
        let start_ticks = sys::process_start_time(launched.pid).unwrap_or(0);
        let (tx, rx) = watch::channel(false);
        let leader = Leader::new(launched.pid, launched.pidfd);
        let process = Process {
            leader: leader.clone(),
            gone: rx,
        };
        {
            let mut table = self.table();
            if let Some(e) = table.get_mut(&r.id).filter(|e| e.instance == r.instance) {
                e.state = ServerState::Running;
                e.process = Some(process);
                e.log_path = log_path;
                e.log_file = log_file;
                e.start_ticks = start_ticks;
                e.pid = launched.pid;
                e.cgroup = cgroup.clone();
            }
        }
        self.watch(r.id.clone(), r.instance, leader, cgroup, tx);
    }

    /// Waits for the server's exit, records it, then kills what is left of its tree: its
    /// cgroup, or (process-group mode) its group, killed before the leader is reaped.
    fn watch(
        self: &Arc<Self>,
        id: ServerId,
        instance: u64,
        leader: Arc<Leader>,
        cgroup: Option<PathBuf>,
        gone: watch::Sender<bool>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let status = wait_exit(&leader, cgroup.is_none()).await;
            me.exited(&id, instance, status);
            if let Some(dir) = cgroup
                && let Err(e) = tree::reap_tree(dir, Duration::from_secs(10)).await
            {
                tracing::warn!(server = %id, instance, "could not clean up the process tree: {e}");
            }
            me.persist_blocking(id).await;
            let _ = gone.send(true);
        });
    }

    fn exited(&self, id: &ServerId, instance: u64, status: ExitStatus) {
        let mut table = self.table();
        if let Some(e) = table.get_mut(id).filter(|e| e.instance == instance) {
            e.state = ServerState::Exited(status);
            e.exited_at = Some(SystemTime::now());
            let pid = e.pid;
            tracing::info!(server = %id, instance, pid, "server exited: {status}");
        }
    }

    pub fn poll(&self, id: &ServerId, instance: Option<u64>) -> Result<Polled, ErrorReply> {
        let table = self.table();
        let e = table.get(id).ok_or_else(|| not_found(id))?;
        e.check_instance(id, instance)?;
        Ok(Polled {
            instance: e.instance,
            pid: e.pid as u32,
            state: e.state,
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
        self.table().get(id).map(|e| e.uid)
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
        p.leader.signal(signal).map_err(|e| {
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
        self: &Arc<Self>,
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
            (
                e.instance,
                e.process.clone().map(|p| (p, e.pid, e.cgroup.clone())),
                e.timeouts,
                exited,
            )
        };
        if let Some((mut p, pid, cgroup)) = process {
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
                    if signal == libc::SIGKILL {
                        let killed = match &cgroup {
                            Some(dir) => tree::kill_cgroup(dir),
                            None => p.leader.kill_group(),
                        };
                        if let Err(e) = killed {
                            tracing::warn!(server = %id, "could not kill the process tree: {e}");
                        }
                    }
                    match p.leader.signal(signal) {
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
                        pid, pid
                    ),
                ));
            }
        }
        let status = {
            let mut table = self.table();
            match table.get(id) {
                Some(e) if e.instance == instance => {
                    let status = match e.state {
                        ServerState::Exited(s) => s,
                        _ => ExitStatus::Unknown,
                    };
                    table.remove(id);
                    status
                }
                // Another stop finished first and forgot it; the server is gone all the same.
                _ => return Ok((instance, ExitStatus::Unknown)),
            }
        };
        // Forget it in the state directory before answering: once Stop returns, no daemon will
        // re-adopt it.
        self.persist_blocking(id.clone()).await;
        Ok((instance, status))
    }

    /// Takes back the servers a previous daemon left: every record whose pid still has the
    /// recorded start time and uid is re-adopted (a pidfd, an exit watcher, stop works as
    /// before; its exit status will be unknown, since it is not our child). The others are
    /// reported as exited and never signalled. In cgroup mode, server cgroups that no record
    /// explains (a lost or corrupt record) are re-adopted too. Call once, before serving.
    pub fn recover(self: &Arc<Self>, config: &crate::config::Config) -> Recovery {
        let mut report = Recovery::default();
        let (records, unreadable) = self.state.load_all();
        for u in unreadable {
            tracing::error!(
                path = %u.path.display(),
                moved_to = ?u.moved_to,
                "UNREADABLE SERVER RECORD, moved aside; the server it described is recovered \
                 from its cgroup if it has one: {}",
                u.error
            );
            report.unreadable += 1;
        }
        for rec in records {
            self.bump_instance(rec.instance);
            let id = rec.id();
            let rec = match vet(rec, config, &self.tree) {
                Ok(rec) => rec,
                Err(why) => {
                    let moved_to = self.state.set_aside(&id.user, &id.server, "invalid");
                    tracing::error!(
                        server = %id,
                        moved_to = ?moved_to,
                        "INVALID SERVER RECORD, moved aside and not used (nothing it names is \
                         signalled, read or removed): {why}"
                    );
                    report.unreadable += 1;
                    continue;
                }
            };
            let timeouts = StopTimeouts::of_record(&rec);
            let adopted = match rec.exit {
                Some(_) => Err("it had already exited".to_string()),
                None => adopt(rec.pid, rec.start_ticks, rec.uid, rec.cgroup.as_deref()),
            };
            match adopted {
                Ok(pidfd) => {
                    tracing::info!(server = %id, pid = rec.pid, instance = rec.instance, "re-adopted");
                    self.insert_adopted(&id, &rec, timeouts, pidfd, &config.log_dir);
                    report.adopted += 1;
                }
                Err(why) => {
                    if rec.exit.is_none() {
                        tracing::warn!(
                            server = %id,
                            pid = rec.pid,
                            "not re-adopted ({why}); reported as exited, pid not signalled"
                        );
                        report.exited += 1;
                    }
                    self.insert_exited(&id, &rec, timeouts, &config.log_dir);
                }
            }
        }
        if let TreeMode::Cgroup { base } = &self.tree {
            report.from_cgroups = self.recover_cgroups(base, config);
        }
        let ids: Vec<ServerId> = self.table().keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.persist(&id) {
                tracing::error!(server = %id, "could not update the state directory: {e}");
            }
        }
        report
    }

    fn bump_instance(&self, seen: u64) {
        self.next_instance
            .fetch_max(seen.saturating_add(1), Ordering::Relaxed);
    }

    fn entry_from(
        rec: &Record,
        timeouts: StopTimeouts,
        state: ServerState,
        log_path: PathBuf,
    ) -> Entry {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        Entry {
            instance: rec.instance,
            uid: rec.uid,
            owner_uid: rec.owner_uid,
            profile: rec.profile.clone(),
            port: rec.port,
            started_at: at(rec.started_at),
            exited_at: rec.exited_at.map(at),
            log_path,
            log_file: rec.log_file,
            timeouts,
            state,
            process: None,
            pid: rec.pid,
            start_ticks: rec.start_ticks,
            cgroup: rec.cgroup.clone(),
        }
    }

    fn insert_adopted(
        self: &Arc<Self>,
        id: &ServerId,
        rec: &Record,
        timeouts: StopTimeouts,
        pidfd: OwnedFd,
        log_dir: &std::path::Path,
    ) {
        let (tx, rx) = watch::channel(false);
        let leader = Leader::new(rec.pid, pidfd);
        let log_path = crate::logs::log_path(log_dir, &rec.user, &rec.server);
        let mut entry = Self::entry_from(rec, timeouts, ServerState::Running, log_path);
        entry.process = Some(Process {
            leader: leader.clone(),
            gone: rx,
        });
        self.table().insert(id.clone(), entry);
        self.watch(id.clone(), rec.instance, leader, rec.cgroup.clone(), tx);
    }

    /// A server that is gone (or cannot be vouched for): exited, with its recorded status or
    /// unknown. Its pid is never signalled; leftovers in its own cgroup are killed.
    fn insert_exited(
        self: &Arc<Self>,
        id: &ServerId,
        rec: &Record,
        timeouts: StopTimeouts,
        log_dir: &std::path::Path,
    ) {
        let status = rec.exit.unwrap_or(ExitStatus::Unknown);
        let log_path = crate::logs::log_path(log_dir, &rec.user, &rec.server);
        let mut entry = Self::entry_from(rec, timeouts, ServerState::Exited(status), log_path);
        entry.exited_at = entry.exited_at.or(Some(SystemTime::now()));
        let cgroup = entry.cgroup.clone();
        self.table().insert(id.clone(), entry);
        if let Some(dir) = cgroup.filter(|d| d.exists()) {
            let id = id.clone();
            tokio::spawn(async move {
                if let Err(e) = tree::reap_tree(dir, Duration::from_secs(10)).await {
                    tracing::warn!(server = %id, "could not clean up the old cgroup: {e}");
                }
            });
        }
    }

    /// Server cgroups (`<base>/<user>/<server>.<instance>`) that no record explains.
    fn recover_cgroups(
        self: &Arc<Self>,
        base: &std::path::Path,
        config: &crate::config::Config,
    ) -> u32 {
        let mut found = 0;
        let Ok(users) = std::fs::read_dir(base) else {
            return 0;
        };
        for user_dir in users.flatten().filter(|d| d.path().is_dir()) {
            let user = user_dir.file_name().to_string_lossy().into_owned();
            let Ok(servers) = std::fs::read_dir(user_dir.path()) else {
                continue;
            };
            for dir in servers.flatten().filter(|d| d.path().is_dir()) {
                let name = dir.file_name().to_string_lossy().into_owned();
                let Some((server, instance)) = tree::parse_cgroup_name(&name) else {
                    continue;
                };
                let id = ServerId::new(user.clone(), server.to_string());
                if id.validate().is_err() {
                    continue;
                }
                let known = self.table().get(&id).map(|e| e.instance);
                if known == Some(instance) {
                    continue;
                }
                let path = dir.path();
                if !tree::populated(&path) {
                    let _ = std::fs::remove_dir(&path);
                    continue;
                }
                if known.is_some() {
                    // Another instance of this server is recorded: this is a leftover tree.
                    tracing::warn!(server = %id, cgroup = %path.display(), "killing a stale server tree");
                    let _ = tree::kill_cgroup(&path);
                    continue;
                }
                match recover_from_cgroup(&id, instance, &path, config) {
                    Ok((rec, pidfd)) => {
                        tracing::warn!(
                            server = %id,
                            pid = rec.pid,
                            instance,
                            "re-adopted from its cgroup (its record was lost)"
                        );
                        self.bump_instance(instance);
                        let timeouts = StopTimeouts::of_record(&rec);
                        self.insert_adopted(&id, &rec, timeouts, pidfd, &config.log_dir);
                        found += 1;
                    }
                    Err(why) => tracing::warn!(
                        server = %id,
                        cgroup = %path.display(),
                        "cannot re-adopt the processes in this cgroup: {why}"
                    ),
                }
            }
        }
        found
    }

    /// SIGKILLs a server and its tree at once (a start that cannot be recorded).
    pub fn kill_now(&self, id: &ServerId, instance: u64) {
        let table = self.table();
        if let Some(e) = table.get(id).filter(|e| e.instance == instance)
            && let Some(p) = &e.process
        {
            let _ = match &e.cgroup {
                Some(dir) => tree::kill_cgroup(dir),
                None => p.leader.kill_group(),
            };
            let _ = p.leader.signal(libc::SIGKILL);
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

/// Checks a record against the policy before anything in it is used (records live in a
/// root-only directory, but one restored from a backup, edited by hand or written by a bug must
/// not make the daemon signal, read or remove what it names): the uid must be one that may
/// have a server, the pid a process's, the cgroup exactly the one the daemon makes for this
/// server under its own base, the timeouts within the configuration's bounds. The log path is
/// never taken from a record: it is derived from the configuration.
fn vet(mut rec: Record, config: &crate::config::Config, tree: &TreeMode) -> Result<Record, String> {
    if rec.uid == 0 || rec.uid < config.min_uid {
        return Err(format!(
            "uid {} may not have a server (root, or below min_uid {})",
            rec.uid, config.min_uid
        ));
    }
    if rec.pid <= 1 && rec.exit.is_none() {
        return Err(format!("pid {} is not a server's", rec.pid));
    }
    match (tree, &rec.cgroup) {
        (_, None) => {}
        (TreeMode::Cgroup { base }, Some(dir)) => {
            let expected = tree::cgroup_dir(base, &rec.user, &rec.server, rec.instance);
            if *dir != expected {
                return Err(format!(
                    "its cgroup {} is not the one spawnd makes for this server ({})",
                    dir.display(),
                    expected.display()
                ));
            }
        }
        (TreeMode::ProcessGroup { .. }, Some(dir)) => {
            tracing::warn!(
                server = %rec.id(),
                "the recorded cgroup {} is not used: cgroups are off now",
                dir.display()
            );
            rec.cgroup = None;
        }
    }
    let max_ms = crate::config::MAX_TIMEOUT_SECS * 1000;
    for ms in [
        &mut rec.interrupt_timeout_ms,
        &mut rec.term_timeout_ms,
        &mut rec.kill_timeout_ms,
    ] {
        *ms = (*ms).min(max_ms);
    }
    Ok(rec)
}

/// What [`Supervisor::recover`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Recorded servers still running, now supervised again.
    pub adopted: u32,
    /// Recorded servers that were gone (or whose pid now belongs to something else).
    pub exited: u32,
    /// Servers found in cgroups without a record.
    pub from_cgroups: u32,
    /// Records that could not be read (moved aside).
    pub unreadable: u32,
}

/// Opens a pidfd to `pid` and checks that it is still the recorded process: same start time
/// and same real uid. The pidfd is opened first and liveness checked after reading /proc, so
/// the /proc data cannot belong to a process that replaced it.
fn adopt(
    pid: i32,
    start_ticks: u64,
    uid: u32,
    cgroup: Option<&std::path::Path>,
) -> Result<OwnedFd, String> {
    if pid <= 1 {
        return Err(format!("recorded pid {pid} is not a server"));
    }
    let pidfd = sys::pidfd_open(pid).map_err(|e| format!("pid {pid} is gone ({e})"))?;
    let ticks = sys::process_start_time(pid).map_err(|e| format!("pid {pid} is gone ({e})"))?;
    if ticks != start_ticks {
        return Err(format!(
            "pid {pid} now belongs to another process (its start time differs)"
        ));
    }
    let real_uid = sys::process_uid(pid).map_err(|e| format!("pid {pid} is gone ({e})"))?;
    // Start times have a clock tick's resolution: a process of the same user started in the
    // same tick could match. A server also lives in its own cgroup, which nothing else enters.
    if let Some(dir) = cgroup {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if !procs.lines().any(|p| p.trim() == pid.to_string()) {
            return Err(format!(
                "pid {pid} now belongs to another process (it is not in the server's cgroup {})",
                dir.display()
            ));
        }
    }
    if real_uid != uid {
        return Err(format!(
            "pid {pid} runs as uid {real_uid}, not the recorded uid {uid}"
        ));
    }
    sys::pidfd_send_signal(pidfd.as_fd(), 0).map_err(|e| format!("pid {pid} is gone ({e})"))?;
    Ok(pidfd)
}

/// Finds a server's main process in its cgroup: the session leader (servers call setsid)
/// that started first, owned by the server's user.
fn recover_from_cgroup(
    id: &ServerId,
    instance: u64,
    cgroup: &std::path::Path,
    config: &crate::config::Config,
) -> Result<(Record, OwnedFd), String> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).map_err(|e| e.to_string())?;
    let user = nix::unistd::User::from_name(&id.user)
        .ok()
        .flatten()
        .ok_or_else(|| format!("user {} no longer exists", id.user))?;
    let uid = user.uid.as_raw();
    if uid == 0 || uid < config.min_uid {
        return Err(format!(
            "user {} has uid {uid}, which may not have a server (root, or below min_uid {})",
            id.user, config.min_uid
        ));
    }
    let main = procs
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|&pid| sys::process_session(pid).ok() == Some(pid))
        .filter(|&pid| sys::process_uid(pid).ok() == Some(uid))
        .filter_map(|pid| sys::process_start_time(pid).ok().map(|t| (t, pid)))
        .min()
        .ok_or_else(|| format!("no process of user {} leads a session in it", id.user))?;
    let (start_ticks, pid) = main;
    let pidfd = adopt(pid, start_ticks, uid, Some(cgroup))?;
    let now = epoch_secs(SystemTime::now());
    let timeouts = StopTimeouts::of(config.profile(""));
    let ms = |d: Duration| d.as_millis() as u64;
    let record = Record {
        version: RECORD_VERSION,
        user: id.user.clone(),
        server: id.server.clone(),
        uid,
        owner_uid: config.hub_uid,
        instance,
        pid,
        start_ticks,
        cgroup: Some(cgroup.to_path_buf()),
        profile: "(recovered)".into(),
        port: None,
        log_file: None,
        started_at: now,
        exit: None,
        exited_at: None,
        interrupt_timeout_ms: ms(timeouts.interrupt),
        term_timeout_ms: ms(timeouts.term),
        kill_timeout_ms: ms(timeouts.kill),
    };
    Ok((record, pidfd))
}

/// Waits until the leader exits and reaps it; with `kill_group` (process-group mode), kills
/// its group first, while the unreaped leader still holds the group id.
async fn wait_exit(leader: &Leader, kill_group: bool) -> ExitStatus {
    let to_status = |r: Reaped| match r {
        Reaped::Exited(c) => ExitStatus::Code(c),
        Reaped::Killed(s) => ExitStatus::Signal(s),
    };
    let reap = |wait: &dyn Fn() -> std::io::Result<Option<Reaped>>| -> Option<ExitStatus> {
        let mut reaped = leader.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if kill_group && let Err(e) = leader.kill_group_unreaped() {
            tracing::warn!(pid = leader.pid, "could not kill the process group: {e}");
        }
        let status = match wait() {
            Ok(Some(r)) => to_status(r),
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
    };
    let pidfd = &leader.pidfd;
    match sys::register_pidfd(pidfd.clone()) {
        Ok(afd) => loop {
            let mut guard = match afd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!("waiting on a pidfd failed: {e}");
                    break;
                }
            };
            // Readable: the leader has exited (it is a zombie until reaped here).
            match reap(&|| sys::waitid_pidfd(pidfd.as_fd())) {
                Some(status) => return status,
                None => guard.clear_ready(),
            }
        },
        Err(e) => tracing::error!("cannot register a pidfd with the event loop: {e}"),
    }
    // Fallback: a blocking wait for the exit on a blocking thread, then the reaping as above.
    let fd = pidfd.clone();
    let _ = tokio::task::spawn_blocking(move || sys::wait_pidfd_readable(fd.as_fd())).await;
    reap(&|| sys::waitid_pidfd(pidfd.as_fd())).unwrap_or(ExitStatus::Unknown)
}

/// Waits up to `timeout` for the server to be gone; true if it is.
async fn wait_gone(gone: &mut watch::Receiver<bool>, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, gone.wait_for(|g| *g)).await,
        Ok(Ok(_))
    )
}
