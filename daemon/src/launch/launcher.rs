//! The daemon's side of the launcher: starting it, sending it launches, replacing it when it
//! fails.

use super::process::{self, READY};
use super::wire::{self, Bytes, Method, Outcome, Reply, Request};
use super::{LaunchError, LaunchSpec, Launched, Step, child};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The daemon's own executable, which it runs as `spawnd launcher`. The link names the file the
/// daemon was started from even when an upgrade has replaced it on disk since, so daemon and
/// launcher always speak the same protocol.
pub const OWN_EXECUTABLE: &str = "/proc/self/exe";

/// How long a new launcher may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sending a request to the launcher may block (a launcher that stops reading its
/// channel is replaced).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a launch waits for the launcher's answer (it answers as soon as the child exists).
const REPLY_MARGIN: Duration = Duration::from_secs(10);

/// The launcher process and the daemon's end of its channel.
#[derive(Debug)]
pub struct Launcher {
    exe: PathBuf,
    /// RLIMIT_NOFILE for servers whose profile sets none (the daemon's soft limit from before
    /// it raised its own for its pidfds).
    server_nofile: Option<libc::rlimit>,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    /// Bumped at each replacement, so that concurrent launches that saw the same failure replace
    /// the launcher once.
    generation: u64,
    /// `None` after a failure, until the next launch starts a new launcher.
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    channel: Arc<OwnedFd>,
    /// Readable once the launcher has exited. Its death cannot be seen on the sockets alone: a
    /// child it created holds copies of them until it has closed its descriptors.
    pidfd: Arc<OwnedFd>,
    process: Child,
}

impl Running {
    fn exited(&self) -> bool {
        readable(self.pidfd.as_fd(), Duration::ZERO)
    }
}

/// Whether `fd` is readable within `timeout` (`Duration::ZERO`: now).
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pollfd = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd.
    let n = unsafe {
        libc::poll(
            pollfd.as_mut_ptr(),
            1,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    n > 0
}

fn lock(m: &Mutex<Current>) -> MutexGuard<'_, Current> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Launcher {
    /// Starts the launcher from `exe` (normally [`OWN_EXECUTABLE`]) and waits until it is
    /// ready. The daemon calls this after reducing its capabilities (the launcher gets the
    /// bounding set back at exec, as root does) and before any other thread exists.
    pub fn start(
        exe: impl AsRef<Path>,
        server_nofile: Option<libc::rlimit>,
    ) -> io::Result<Launcher> {
        let exe = exe.as_ref().to_path_buf();
        let running = spawn(&exe)?;
        Ok(Launcher {
            exe,
            server_nofile,
            current: Mutex::new(Current {
                generation: 0,
                running: Some(running),
            }),
        })
    }

    /// The launcher's pid, if one runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.current).running.as_ref().map(|r| r.process.id())
    }

    /// The channel to the current launcher and its pidfd, starting a new launcher after a
    /// failure.
    fn channel(&self, user: &str) -> Result<(u64, Arc<OwnedFd>, Arc<OwnedFd>), LaunchError> {
        let mut current = lock(&self.current);
        if current.running.as_ref().is_some_and(Running::exited) {
            let generation = current.generation;
            drop(current);
            self.failed(generation, "has exited");
            current = lock(&self.current);
        }
        if current.running.is_none() {
            let running = spawn(&self.exe).map_err(|e| LaunchError::Parent {
                user: user.to_string(),
                what: "starting a new launcher process",
                source: e,
            })?;
            tracing::warn!(pid = running.process.id(), "started a new launcher process");
            current.generation += 1;
            current.running = Some(running);
        }
        let generation = current.generation;
        let running = current.running.as_ref();
        running
            .map(|r| (generation, r.channel.clone(), r.pidfd.clone()))
            .ok_or_else(|| LaunchError::Launcher {
                user: user.to_string(),
                why: "is not running".into(),
            })
    }

    /// Ends a launcher that failed (once, whoever notices first); the next launch starts a new
    /// one.
    fn failed(&self, generation: u64, why: &str) {
        let mut current = lock(&self.current);
        if current.generation != generation {
            return;
        }
        if let Some(mut running) = current.running.take() {
            let pid = running.process.id();
            let _ = running.process.kill();
            let status = running.process.wait();
            tracing::error!(
                pid,
                ?status,
                "the launcher process {why}; a new one starts with the next launch"
            );
        }
    }

    /// Starts a server: sends the launch to the launcher and waits until its program runs or
    /// the launch has failed. Blocks for the child's set-up (normally a millisecond; at most
    /// the spec's timeout plus a margin): call from a blocking thread.
    pub fn launch(&self, spec: &LaunchSpec) -> Result<Launched, LaunchError> {
        let user = &spec.summary.user;
        let parent = |what: &'static str, source: io::Error| LaunchError::Parent {
            user: user.clone(),
            what,
            source,
        };
        let packet = self
            .encode(spec)
            .map_err(|e| parent("encoding the launch", e))?;
        let (reply, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| parent("socketpair", errno_io(e)))?;
        let mut fds = vec![theirs.as_raw_fd(), spec.log.as_raw_fd()];
        if let Some(dir) = &spec.cgroup {
            fds.push(dir.as_raw_fd());
        }
        let (generation, launcher) = self.send(user, &packet, &fds)?;
        drop(theirs);
        self.await_outcome(spec, reply.as_fd(), launcher.as_fd(), generation)
    }

    /// Sends a launch to the current launcher; returns its generation and pidfd. A launcher
    /// found dead when sending is replaced and the launch sent again: it never reached the dead
    /// one, so nothing of it can be running.
    fn send(
        &self,
        user: &str,
        packet: &[u8],
        fds: &[RawFd],
    ) -> Result<(u64, Arc<OwnedFd>), LaunchError> {
        let launcher_failed = |why: String| LaunchError::Launcher {
            user: user.to_string(),
            why,
        };
        let mut retried = false;
        loop {
            let (generation, channel, pidfd) = self.channel(user)?;
            match wire::send(channel.as_fd(), packet, fds) {
                Ok(()) => return Ok((generation, pidfd)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.failed(generation, "stopped reading its channel");
                    return Err(launcher_failed(format!(
                        "did not take the request within {} s",
                        SEND_TIMEOUT.as_secs()
                    )));
                }
                Err(e) if is_disconnected(&e) => {
                    self.failed(generation, &format!("has closed its channel ({e})"));
                    if retried {
                        return Err(launcher_failed(format!(
                            "could not be sent the request ({e})"
                        )));
                    }
                    retried = true;
                }
                // This request's own trouble (EMSGSIZE where net.core.wmem_default is small,
                // ENOBUFS): the launcher and the other launches are fine.
                Err(e) => {
                    return Err(LaunchError::Parent {
                        user: user.to_string(),
                        what: "sending the launch to the launcher (at most \
                               net.core.wmem_default bytes of arguments and environment)",
                        source: e,
                    });
                }
            }
        }
    }

    fn encode(&self, spec: &LaunchSpec) -> io::Result<Vec<u8>> {
        let nofile = match spec.nofile {
            Some(v) => Some((v, v)),
            None => self.server_nofile.map(|l| (l.rlim_cur, l.rlim_max)),
        };
        let request = Request {
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.groups.clone(),
            umask: spec.umask,
            limits: spec.limits.clone(),
            nofile,
            nofile_required: spec.nofile.is_some(),
            cgroup: spec.cgroup.is_some(),
            pause_before_exec: spec.pause_before_exec,
            program: Bytes(&spec.program),
            home: Bytes(&spec.home),
            argv: spec.argv.iter().map(|a| Bytes(a)).collect(),
            envp: spec.envp.iter().map(|e| Bytes(e)).collect(),
        };
        let packet = postcard::to_stdvec(&request).map_err(io::Error::other)?;
        if packet.len() > wire::MAX_REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "arguments and environment take {} bytes, more than the {} a launch may \
                     carry; send fewer or shorter ones",
                    packet.len(),
                    wire::MAX_REQUEST
                ),
            ));
        }
        Ok(packet)
    }

    /// Waits for the launcher's answer about one launch (watching the launcher's own life),
    /// then for the child's exec on its report pipe, killing it at the spec's timeout.
    fn await_outcome(
        &self,
        spec: &LaunchSpec,
        reply: BorrowedFd<'_>,
        launcher: BorrowedFd<'_>,
        generation: u64,
    ) -> Result<Launched, LaunchError> {
        let user = &spec.summary.user;
        let sent = Instant::now();
        // A launcher that fails is ended first; whatever it had handed over for this launch
        // (an answer that came too late to be waited for) is then killed: a child the daemon
        // does not watch must not run.
        let broken = |why: String| {
            self.failed(generation, &why);
            if readable(reply, Duration::ZERO)
                && let Ok(Some((_, fds))) = recv(reply)
            {
                kill_handed_over(fds);
            }
            LaunchError::Launcher {
                user: user.clone(),
                why,
            }
        };
        match wait_reply(reply, launcher, sent + REPLY_MARGIN) {
            Waited::Reply => {}
            Waited::LauncherExited => {
                return Err(broken("exited while it was starting this server".into()));
            }
            Waited::TimedOut => {
                return Err(broken(format!(
                    "did not answer within {} s",
                    REPLY_MARGIN.as_secs()
                )));
            }
        }
        let (message, fds) = match recv(reply) {
            Ok(Some(m)) => m,
            // End of file: the launcher dropped this launch, which only a failing one does.
            Ok(None) => return Err(broken("exited while it was starting this server".into())),
            Err(e) => {
                return Err(broken(format!(
                    "sent an answer that could not be read ({e})"
                )));
            }
        };
        let (pid, method) = match (message, fds.len()) {
            (Reply::Cloned { pid, method }, wire::CLONED_FDS) => (pid, method),
            (Reply::Done(outcome), 0) => return finish(outcome, None, spec),
            (other, _) => {
                kill_handed_over(fds);
                return Err(broken(format!("broke the protocol ({other:?})")));
            }
        };
        let Ok([pidfd, report]) = <[OwnedFd; wire::CLONED_FDS]>::try_from(fds) else {
            unreachable!(
                "the match above took exactly {} descriptors",
                wire::CLONED_FDS
            )
        };
        note(method, spec.cgroup.is_some());
        // From here on the child is the daemon's to watch: it goes on (the launcher let it
        // once this answer was sent) and ends its report pipe by exec or death.
        let deadline = sent + spec.timeout;
        let mut records = child::Report::default();
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if readable(report.as_fd(), left) {
                match records.read(report.as_fd()) {
                    child::Reading::Finished(outcome) => break outcome,
                    child::Reading::Pending => continue,
                }
            }
            if Instant::now() >= deadline {
                let _ = crate::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                // A child stopped after it reported a failed step: that step is the news.
                break match records.outcome() {
                    failed @ Outcome::Failed { .. } => failed,
                    _ => Outcome::TimedOut,
                };
            }
        };
        finish(outcome, Some((pid, pidfd)), spec)
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // Closing the channel ends the launcher; reap it.
        let mut current = lock(&self.current);
        if let Some(Running {
            channel,
            mut process,
            ..
        }) = current.running.take()
        {
            drop(channel);
            for _ in 0..100 {
                if !matches!(process.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

enum Waited {
    Reply,
    LauncherExited,
    TimedOut,
}

/// Waits until the launcher answers on `reply`, exits, or `deadline` passes. An answer that
/// is already there wins over the launcher's exit.
fn wait_reply(
    reply: BorrowedFd<'_>,
    launcher: BorrowedFd<'_>,
    deadline: std::time::Instant,
) -> Waited {
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pollfds = [reply, launcher].map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: a valid array of two pollfds.
        let n = unsafe {
            libc::poll(
                pollfds.as_mut_ptr(),
                2,
                left.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // poll on two valid descriptors does not fail otherwise; read and see.
            return Waited::Reply;
        }
        if pollfds[0].revents != 0 {
            return Waited::Reply;
        }
        if pollfds[1].revents != 0 {
            return Waited::LauncherExited;
        }
        if left.is_zero() {
            return Waited::TimedOut;
        }
    }
}

/// Turns the launcher's last word into the launch's result. Every child that did not become a
/// server is reaped here (it is the daemon's child).
fn finish(
    outcome: Outcome,
    child: Option<(i32, OwnedFd)>,
    spec: &LaunchSpec,
) -> Result<Launched, LaunchError> {
    let summary = || Box::new(spec.summary.clone());
    match (outcome, child) {
        (Outcome::Exec, Some((pid, pidfd))) => Ok(Launched { pid, pidfd }),
        (Outcome::Failed { step, errno }, child) => {
            reap(child);
            Err(LaunchError::Child {
                step: Step::from_u8(step).unwrap_or(Step::Exec),
                errno,
                spec: summary(),
            })
        }
        (Outcome::KilledBeforeExec, child) => {
            let signal = match reap(child) {
                Some(crate::sys::Reaped::Killed(s)) => Some(s),
                _ => None,
            };
            Err(LaunchError::KilledBeforeExec {
                signal,
                spec: summary(),
            })
        }
        (Outcome::TimedOut, child) => {
            // Killed by the launcher; it may take a while to die (a hung file system).
            if let Some((_, pidfd)) = child {
                reap_in_background(pidfd);
            }
            Err(LaunchError::TimedOut {
                timeout: spec.timeout,
                spec: summary(),
            })
        }
        (Outcome::CloneFailed { errno }, child) => {
            abandon(child);
            Err(LaunchError::Parent {
                user: spec.summary.user.clone(),
                what: "creating the process (clone3)",
                source: io::Error::from_raw_os_error(errno),
            })
        }
        (Outcome::Exec | Outcome::Invalid, child) => {
            abandon(child);
            Err(LaunchError::Launcher {
                user: spec.summary.user.clone(),
                why: "refused the launch as malformed (a bug in spawnd; please report it)".into(),
            })
        }
    }
}

/// Kills the child whose pidfd comes first in a `Cloned` answer that will not be followed
/// (a pidfd is the first descriptor of that answer; anything else ignores the signal).
fn kill_handed_over(fds: Vec<OwnedFd>) {
    if let Some(pidfd) = fds.into_iter().next() {
        abandon(Some((0, pidfd)));
    }
}

/// Kills a child that must not become a server, and reaps it.
fn abandon(child: Option<(i32, OwnedFd)>) {
    if let Some((_, pidfd)) = child {
        let _ = crate::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        reap_in_background(pidfd);
    }
}

/// Reaps a child that did not become a server (it reported a failure, or died): the launcher
/// answers only once the child is gone, but it is killed first all the same (it has nothing
/// left to do), and reaped on a thread of its own unless it is a zombie already, so that no
/// child can hold the daemon's thread. Returns how it ended when that is known at once.
fn reap(child: Option<(i32, OwnedFd)>) -> Option<crate::sys::Reaped> {
    let (_, pidfd) = child?;
    let _ = crate::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
    // Its descriptors close a moment before it becomes a zombie.
    readable(pidfd.as_fd(), Duration::from_secs(1));
    match crate::sys::waitid_pidfd(pidfd.as_fd()) {
        Ok(Some(reaped)) => Some(reaped),
        _ => {
            reap_in_background(pidfd);
            None
        }
    }
}

/// Reaps a killed child on a thread of its own: one in uninterruptible sleep (a hung file
/// system) dies only when its system call returns.
fn reap_in_background(pidfd: OwnedFd) {
    let spawned = std::thread::Builder::new()
        .name("spawnd-reap".into())
        .spawn(move || {
            let _ = crate::sys::waitid_pidfd_blocking(pidfd.as_fd());
        });
    if let Err(e) = spawned {
        tracing::warn!("no thread to reap a killed child (it stays a zombie): {e}");
    }
}

/// Starts a launcher process and waits for its readiness byte.
fn spawn(exe: &Path) -> io::Result<Running> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(errno_io)?;
    let theirs_fd = theirs.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .arg0("spawnd-launcher")
        .arg("launcher")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe
    // system calls (fcntl, dup2, close_range) on descriptor numbers.
    unsafe {
        command.pre_exec(move || {
            // The channel at its agreed number, kept across exec.
            let r = if theirs_fd == process::CHANNEL_FD {
                libc::fcntl(theirs_fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(theirs_fd, process::CHANNEL_FD)
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            // Nothing else of the daemon's crosses the exec (the launcher closes the rest too).
            if libc::syscall(
                libc::SYS_close_range,
                process::CHANNEL_FD as u32 + 1,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut process = command.spawn()?;
    drop(theirs);
    let ready = (|| {
        set_timeout(ours.as_fd(), libc::SO_RCVTIMEO, READY_TIMEOUT)?;
        let mut byte = [0u8; 1];
        // SAFETY: reads into a local one-byte buffer.
        let n = unsafe { libc::recv(ours.as_raw_fd(), byte.as_mut_ptr().cast(), 1, 0) };
        match n {
            1 if byte[0] == READY => Ok(()),
            0 => Err(io::Error::other(
                "it exited at start-up (its message is in the daemon's log)",
            )),
            n if n < 0 => Err(io::Error::last_os_error()),
            _ => Err(io::Error::other(
                "it sent something else than its readiness",
            )),
        }
    })();
    if let Err(e) = ready {
        let _ = process.kill();
        let status = process.wait();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "the launcher process {} did not get ready: {e} ({status:?})",
                exe.display()
            ),
        ));
    }
    set_timeout(ours.as_fd(), libc::SO_SNDTIMEO, SEND_TIMEOUT)?;
    // Our unreaped child: the pid cannot have been reused.
    let pidfd = crate::sys::pidfd_open(process.id() as i32)?;
    Ok(Running {
        channel: Arc::new(ours),
        pidfd: Arc::new(pidfd),
        process,
    })
}

fn set_timeout(fd: BorrowedFd<'_>, option: libc::c_int, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid timeval for its size, on a socket we hold.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_disconnected(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN | libc::ECONNREFUSED)
    )
}

/// Receives one reply and the descriptors it carries; `None` at end of file.
fn recv(reply: BorrowedFd<'_>) -> io::Result<Option<(Reply, Vec<OwnedFd>)>> {
    let mut buf = [0u8; wire::MAX_REPLY];
    let received = wire::recv::<{ wire::CLONED_FDS }>(reply, &mut buf)?;
    if received.is_end() {
        return Ok(None);
    }
    if received.truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "an oversized answer",
        ));
    }
    let reply = wire::decode_reply(&buf[..received.len])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(Some((reply, received.fds)))
}

/// Logs the way servers are created the first time it is used (and whenever it changes).
fn note(method: Method, cgroup: bool) {
    static LAST: AtomicU8 = AtomicU8::new(0);
    let code = method as u8 + 1;
    if LAST.swap(code, Ordering::Relaxed) == code {
        return;
    }
    match (method, cgroup) {
        (Method::Clone3, _) => tracing::info!(
            "servers start from the launcher with clone3(CLONE_PARENT|CLONE_PIDFD|CLONE_INTO_CGROUP), \
             in their cgroup from birth"
        ),
        (Method::Clone, true) => tracing::warn!(
            "servers start from the launcher with clone: clone3 is refused here (a seccomp \
             filter), so each enters its cgroup by writing cgroup.procs, which waits for an RCU \
             grace period: starts take milliseconds longer"
        ),
        (Method::Clone, false) => {
            tracing::info!("servers start from the launcher with clone (clone3 is refused here)")
        }
    }
}
