//! An in-memory host for unit tests: processes (pid, start time, uid, session, cgroup, whether
//! the daemon is their parent, which signals they ignore), cgroups and users, and a log of
//! what was done to them, stamped with tokio's clock (so a test with paused time sees the
//! stop's timeouts exactly).

use super::{Handle, Host, HostFuture, Pidfd};
use crate::sys::Reaped;
use nix::unistd::{Pid, Uid};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;
use tokio::time::Instant;

/// Something the fake host was asked to do that changes the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A signal (not the probe 0) sent through a pidfd.
    Signal {
        pid: Pid,
        signal: i32,
    },
    KillGroup(Pid),
    KillCgroup(PathBuf),
    RemoveCgroup(PathBuf),
}

/// A process to put on the fake host. By default: started at tick `pid * 100`, its own
/// session leader, in no cgroup, not the daemon's child.
#[derive(Debug, Clone)]
pub struct Proc {
    pid: Pid,
    uid: Uid,
    start_ticks: u64,
    session: Pid,
    cgroup: Option<PathBuf>,
    child: bool,
}

impl Proc {
    pub fn new(pid: i32, uid: u32) -> Proc {
        Proc {
            pid: Pid::from_raw(pid),
            uid: Uid::from_raw(uid),
            start_ticks: pid as u64 * 100,
            session: Pid::from_raw(pid),
            cgroup: None,
            child: false,
        }
    }

    pub fn started_at(mut self, ticks: u64) -> Proc {
        self.start_ticks = ticks;
        self
    }

    pub fn session(mut self, session: i32) -> Proc {
        self.session = Pid::from_raw(session);
        self
    }

    pub fn in_cgroup(mut self, dir: impl Into<PathBuf>) -> Proc {
        self.cgroup = Some(dir.into());
        self
    }

    /// The daemon's own child (launched by it): its exit status can be reaped.
    pub fn child(mut self) -> Proc {
        self.child = true;
        self
    }
}

#[derive(Debug)]
struct FakeProcess {
    spec: Proc,
    ignores: BTreeSet<i32>,
    exit: Option<Reaped>,
    reaped: bool,
    exited: watch::Sender<bool>,
}

impl FakeProcess {
    /// Whether /proc shows it: until it is reaped (by the daemon, for its child; at once by
    /// its parent, for another's).
    fn visible(&self) -> bool {
        !self.reaped && (self.exit.is_none() || self.spec.child)
    }

    fn alive(&self) -> bool {
        self.exit.is_none()
    }

    fn end(&mut self, how: Reaped) {
        if self.exit.is_none() {
            self.exit = Some(how);
            self.exited.send_replace(true);
        }
    }
}

#[derive(Debug, Default)]
struct World {
    /// Every process ever added; a pidfd is an index here, so it names one process for good.
    processes: Vec<FakeProcess>,
    cgroups: BTreeSet<PathBuf>,
    users: BTreeMap<String, Uid>,
    events: Vec<(Instant, Event)>,
    /// How many of the next waits for an exit fail at once (as a failed poll would).
    failing_exit_waits: u32,
}

impl World {
    fn visible(&self, pid: Pid) -> Option<usize> {
        self.processes
            .iter()
            .rposition(|p| p.spec.pid == pid && p.visible())
    }

    fn record(&mut self, event: Event) {
        self.events.push((Instant::now(), event));
    }
}

/// The fake host. Processes exit on any signal they do not ignore (SIGKILL always), or when a
/// test makes them.
#[derive(Debug, Default)]
pub struct FakeHost {
    world: Mutex<World>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn fake_index(pidfd: &Pidfd) -> io::Result<usize> {
    match pidfd.0 {
        Handle::Fake(index) => Ok(index),
        Handle::Kernel(_) => Err(errno(libc::EBADF)),
    }
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a process (and creates its cgroup, if it names one).
    pub fn add(&self, spec: Proc) {
        let mut world = self.world();
        if let Some(dir) = &spec.cgroup {
            world.cgroups.insert(dir.clone());
        }
        let (exited, _) = watch::channel(false);
        world.processes.push(FakeProcess {
            spec,
            ignores: BTreeSet::new(),
            exit: None,
            reaped: false,
            exited,
        });
    }

    /// Makes the next `count` waits for an exit fail at once.
    pub fn fail_exit_waits(&self, count: u32) {
        self.world().failing_exit_waits = count;
    }

    /// Makes the live process `pid` ignore `signal`.
    pub fn ignore(&self, pid: i32, signal: i32) {
        let mut world = self.world();
        if let Some(index) = world.visible(Pid::from_raw(pid)) {
            world.processes[index].ignores.insert(signal);
        }
    }

    /// Makes the live process `pid` exit with `code`.
    pub fn exit(&self, pid: i32, code: i32) {
        let mut world = self.world();
        if let Some(index) = world.visible(Pid::from_raw(pid)) {
            world.processes[index].end(Reaped::Exited(code));
        }
    }

    pub fn add_user(&self, name: &str, uid: u32) {
        self.world().users.insert(name.into(), Uid::from_raw(uid));
    }

    /// Creates an (empty) cgroup directory.
    pub fn add_cgroup(&self, dir: impl Into<PathBuf>) {
        self.world().cgroups.insert(dir.into());
    }

    pub fn has_cgroup(&self, dir: &Path) -> bool {
        self.world().cgroups.contains(dir)
    }

    /// Whether a process of this pid runs.
    pub fn alive(&self, pid: i32) -> bool {
        let world = self.world();
        world
            .visible(Pid::from_raw(pid))
            .is_some_and(|index| world.processes[index].alive())
    }

    /// Everything done so far, with when.
    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.world().events.clone()
    }

    /// The signals sent to `pid` so far, in order.
    pub fn signals_to(&self, pid: i32) -> Vec<i32> {
        let pid = Pid::from_raw(pid);
        self.world()
            .events
            .iter()
            .filter_map(|(_, event)| match event {
                Event::Signal { pid: to, signal } if *to == pid => Some(*signal),
                _ => None,
            })
            .collect()
    }
}

impl Host for FakeHost {
    fn pidfd_open(&self, pid: Pid) -> io::Result<Pidfd> {
        let index = self
            .world()
            .visible(pid)
            .ok_or_else(|| errno(libc::ESRCH))?;
        Ok(Pidfd(Handle::Fake(index)))
    }

    fn launched_pidfd(&self, pid: Pid, _pidfd: OwnedFd) -> Pidfd {
        let index = self.world().visible(pid);
        Pidfd(Handle::Fake(index.unwrap_or(usize::MAX)))
    }

    fn pidfd_signal(&self, pidfd: &Pidfd, signal: i32) -> io::Result<()> {
        let index = fake_index(pidfd)?;
        let mut world = self.world();
        let process = world
            .processes
            .get_mut(index)
            .ok_or_else(|| errno(libc::ESRCH))?;
        if !process.visible() {
            return Err(errno(libc::ESRCH));
        }
        if signal == 0 {
            return Ok(());
        }
        let pid = process.spec.pid;
        if signal == libc::SIGKILL || !process.ignores.contains(&signal) {
            process.end(Reaped::Killed(signal));
        }
        world.record(Event::Signal { pid, signal });
        Ok(())
    }

    fn pidfd_reap(&self, pidfd: &Pidfd) -> io::Result<Option<Reaped>> {
        let index = fake_index(pidfd)?;
        let mut world = self.world();
        let process = world
            .processes
            .get_mut(index)
            .ok_or_else(|| errno(libc::ECHILD))?;
        if !process.spec.child || process.reaped {
            return Err(errno(libc::ECHILD));
        }
        let exit = process.exit;
        process.reaped = exit.is_some();
        Ok(exit)
    }

    fn pidfd_exited<'a>(&'a self, pidfd: &'a Pidfd) -> HostFuture<'a, io::Result<()>> {
        let exited = fake_index(pidfd).and_then(|index| {
            let mut world = self.world();
            if world.failing_exit_waits > 0 {
                world.failing_exit_waits -= 1;
                return Err(errno(libc::EIO));
            }
            let process = world
                .processes
                .get(index)
                .ok_or_else(|| errno(libc::EBADF))?;
            Ok(process.exited.subscribe())
        });
        Box::pin(async move {
            let mut exited = exited?;
            exited
                .wait_for(|exited| *exited)
                .await
                .map_err(io::Error::other)?;
            Ok(())
        })
    }

    fn kill_process_group(&self, pgid: Pid) -> io::Result<()> {
        let mut world = self.world();
        world.record(Event::KillGroup(pgid));
        for process in &mut world.processes {
            if process.spec.session == pgid && process.visible() {
                process.end(Reaped::Killed(libc::SIGKILL));
            }
        }
        Ok(())
    }

    fn start_time(&self, pid: Pid) -> io::Result<u64> {
        let world = self.world();
        let index = world.visible(pid).ok_or_else(|| errno(libc::ENOENT))?;
        Ok(world.processes[index].spec.start_ticks)
    }

    fn real_uid(&self, pid: Pid) -> io::Result<Uid> {
        let world = self.world();
        let index = world.visible(pid).ok_or_else(|| errno(libc::ENOENT))?;
        Ok(world.processes[index].spec.uid)
    }

    fn session(&self, pid: Pid) -> io::Result<Pid> {
        let world = self.world();
        let index = world.visible(pid).ok_or_else(|| errno(libc::ENOENT))?;
        Ok(world.processes[index].spec.session)
    }

    fn cgroup_children(&self, dir: &Path) -> Vec<String> {
        let world = self.world();
        let mut names: Vec<String> = world
            .cgroups
            .iter()
            .filter_map(|cgroup| {
                let below = cgroup.strip_prefix(dir).ok()?;
                below
                    .iter()
                    .next()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .filter(|name| !name.is_empty())
            .collect();
        names.dedup();
        names
    }

    fn cgroup_exists(&self, dir: &Path) -> bool {
        self.world().cgroups.contains(dir)
    }

    fn cgroup_procs(&self, dir: &Path) -> io::Result<Vec<Pid>> {
        let world = self.world();
        if !world.cgroups.contains(dir) {
            return Err(errno(libc::ENOENT));
        }
        Ok(world
            .processes
            .iter()
            .filter(|p| p.alive() && !p.reaped && p.spec.cgroup.as_deref() == Some(dir))
            .map(|p| p.spec.pid)
            .collect())
    }

    fn cgroup_populated(&self, dir: &Path) -> bool {
        self.cgroup_procs(dir).is_ok_and(|procs| !procs.is_empty())
    }

    fn kill_cgroup(&self, dir: &Path) -> io::Result<()> {
        let mut world = self.world();
        if !world.cgroups.contains(dir) {
            return Err(errno(libc::ENOENT));
        }
        world.record(Event::KillCgroup(dir.to_path_buf()));
        for process in &mut world.processes {
            if process.spec.cgroup.as_deref() == Some(dir) {
                process.end(Reaped::Killed(libc::SIGKILL));
            }
        }
        Ok(())
    }

    fn remove_cgroup(&self, dir: &Path) -> io::Result<()> {
        if self.cgroup_populated(dir) {
            return Err(errno(libc::EBUSY));
        }
        let mut world = self.world();
        if !world.cgroups.remove(dir) {
            return Err(errno(libc::ENOENT));
        }
        world.record(Event::RemoveCgroup(dir.to_path_buf()));
        Ok(())
    }

    fn user_uid(&self, name: &str) -> Option<Uid> {
        self.world().users.get(name).copied()
    }
}
