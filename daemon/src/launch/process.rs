//! The launcher: the small single-threaded process that creates every server.
//!
//! The daemon starts it by executing its own binary (`spawnd launcher`, with the daemon's end
//! of a socketpair as descriptor 3): a fresh address space that never held a request, a token
//! or another user's data, as systemd's `systemd-executor` and OpenSSH's privilege separation
//! do. It keeps `CAP_SETUID`, `CAP_SETGID` and `CAP_KILL` and nothing else.
//!
//! For each request it creates the process with a copying `clone3(CLONE_PARENT | CLONE_PIDFD |
//! CLONE_INTO_CGROUP)`: the server is born in its cgroup, as a child of the **daemon** (which
//! therefore reaps it and learns its exact exit status through the pidfd), with a memory that
//! is a copy of the launcher's, never the daemon's. The request's strings are not copied: the
//! child gets pointers into the received packet, and the launcher clears the packet as soon as
//! the child exists, so it never holds more than the request in hand.
//!
//! The launcher never waits for a child: it hands the daemon the child's pidfd and the read end
//! of its report pipe, and the daemon watches the set-up (and kills a child that does not get to
//! its exec in time). So a child that stalls (a home directory on a file system that hangs, a
//! user who stops it) delays no other launch.

use super::child::{self, ChildSpec};
use super::wire::{self, Method, Outcome, Reply, Request};
use crate::sys::{CLONE_INTO_CGROUP, CLONE_PARENT, CLONE_PIDFD, CloneArgs};
use std::ffi::c_char;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The channel's descriptor in the launcher (the daemon puts it there before exec).
pub const CHANNEL_FD: RawFd = 3;

/// The one byte the launcher sends on its channel once it is ready for requests.
pub const READY: u8 = 1;

/// Why the launcher stopped.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error(
        "descriptor {CHANNEL_FD} is not a socket; the launcher is started by the daemon, not by hand"
    )]
    NoChannel,
    #[error("could not drop capabilities: {0}")]
    Privileges(#[from] crate::privileges::PrivilegeError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> LauncherError {
    move |source| LauncherError::Io { what, source }
}

/// The launcher's main loop: serves requests until the daemon closes the channel.
pub fn run() -> Result<(), LauncherError> {
    // SAFETY: fstat on a descriptor number; no memory is shared.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(CHANNEL_FD, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    if !is_socket {
        return Err(LauncherError::NoChannel);
    }
    // SAFETY: the daemon put the channel at this number for us; nothing else owns it.
    let channel = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    prepare_descriptors().map_err(io_err("preparing descriptors"))?;
    // SAFETY: prctl(PR_SET_NAME) with a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"spawnd-launcher".as_ptr()) };
    crate::privileges::reduce(&crate::privileges::LAUNCHER)?;
    wire::send(channel.as_fd(), &[READY], &[]).map_err(io_err("announcing readiness"))?;
    Launcher::new(channel).serve()
}

/// Descriptors 0 to 2 open (so that received ones land above the channel), and nothing else
/// open but the channel.
fn prepare_descriptors() -> io::Result<()> {
    for fd in 0..CHANNEL_FD {
        // SAFETY: fcntl(F_GETFD) on a number only reads its flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: open returns the lowest free number, which is `fd`.
            let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if null != fd {
                return Err(io::Error::other("descriptors 0 to 2 could not be opened"));
            }
        }
    }
    // SAFETY: closes every descriptor above the channel; the launcher owns none of them.
    if unsafe { libc::syscall(libc::SYS_close_range, CHANNEL_FD as u32 + 1, u32::MAX, 0u32) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct Launcher {
    channel: OwnedFd,
    /// The packet being handled; cleared once its child exists.
    packet: Vec<u8>,
}

impl Launcher {
    fn new(channel: OwnedFd) -> Launcher {
        Launcher {
            channel,
            packet: vec![0u8; wire::MAX_REQUEST],
        }
    }

    /// Handles requests one at a time until the daemon closes the channel. Each takes a clone
    /// and two messages: the launcher never waits for a child, so a child that stalls delays
    /// nothing (the daemon watches it through the pidfd and report pipe it receives).
    fn serve(mut self) -> Result<(), LauncherError> {
        while self.receive()? {}
        Ok(())
    }

    /// Receives and handles one request; false at end of file.
    fn receive(&mut self) -> Result<bool, LauncherError> {
        let received =
            wire::recv::<{ wire::MAX_REQUEST_FDS }>(self.channel.as_fd(), &mut self.packet)
                .map_err(io_err("receiving a request"))?;
        let wire::Received {
            len,
            fds,
            truncated,
        } = received;
        if len == 0 && fds.is_empty() {
            return Ok(false);
        }
        let mut fds = fds.into_iter();
        let Some(reply) = fds.next() else {
            // Nowhere to answer: a request without its reply socket is a bug in the daemon.
            clear(&mut self.packet[..len]);
            return Err(LauncherError::Io {
                what: "receiving a request",
                source: io::Error::other("a request came without its reply socket"),
            });
        };
        let rest: Vec<OwnedFd> = fds.collect();
        let outcome = if truncated {
            Err(Outcome::Invalid)
        } else {
            self.start(len, reply.as_fd(), &rest)
        };
        clear(&mut self.packet[..len]);
        // The log and the cgroup directory are the child's now (or of no use): close them
        // before answering, so that the daemon never sees them open after the launch.
        drop(rest);
        if let Err(outcome) = outcome {
            let _ = send_reply(reply.as_fd(), Reply::Done(outcome), &[]);
        }
        Ok(true)
    }

    /// Creates the child for the request in `packet[..len]`, hands the daemon its pid, its
    /// pidfd and the read end of its report pipe on `reply`, then lets the child go on.
    fn start(&self, len: usize, reply: BorrowedFd<'_>, fds: &[OwnedFd]) -> Result<(), Outcome> {
        let request = wire::decode_request(&self.packet[..len]).map_err(|_| Outcome::Invalid)?;
        let (log, cgroup) = match (fds, request.cgroup) {
            ([log], false) => (log, None),
            ([log, dir], true) => (log, Some(dir)),
            _ => return Err(Outcome::Invalid),
        };
        let (argv, envp) = pointers(&request).ok_or(Outcome::Invalid)?;
        let (Some(program), Some(home)) = (request.program.c_str(), request.home.c_str()) else {
            return Err(Outcome::Invalid);
        };
        // Never a server as root, whatever the daemon asked (it refuses that itself).
        if request.uid == 0 || argv.len() < 2 {
            return Err(Outcome::Invalid);
        }
        let limits: Vec<(libc::__rlimit_resource_t, libc::rlimit)> = request
            .limits
            .iter()
            .map(|&(resource, value)| (resource, rlimit(value, value)))
            .collect();
        let pipe_failed = |e: io::Error| Outcome::CloneFailed {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        };
        // The launcher polls the report pipe; the child waits on the hand-over pipe.
        let (report_read, report_write) = pipe(true).map_err(pipe_failed)?;
        let (go_read, go_write) = pipe(false).map_err(pipe_failed)?;
        let spec = ChildSpec {
            program,
            argv: &argv,
            envp: &envp,
            groups: &request.groups,
            uid: request.uid,
            gid: request.gid,
            home,
            umask: request.umask as libc::mode_t,
            limits: &limits,
            nofile: request.nofile.map(|(soft, hard)| rlimit(soft, hard)),
            nofile_required: request.nofile_required,
            log: log.as_raw_fd(),
            report: report_write.as_raw_fd(),
            go: go_read.as_raw_fd(),
            pause_before_exec: request.pause_before_exec,
        };
        let (pid, pidfd, method) = spawn(&spec, cgroup.map(AsFd::as_fd))
            .map_err(|errno| Outcome::CloneFailed { errno })?;
        drop(report_write);
        drop(go_read);
        // The child waits (still root, holding nothing but its own descriptors) until the
        // daemon has its pidfd: a child the daemon does not know of never becomes the user.
        let handed = send_reply(
            reply,
            Reply::Cloned { pid, method },
            &[pidfd.as_raw_fd(), report_read.as_raw_fd()],
        );
        if handed.is_ok() {
            // SAFETY: write(2) of one byte from a local to the pipe we own.
            unsafe { libc::write(go_write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        } else {
            // The daemon no longer waits for this launch: it must not run.
            let _ = crate::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        }
        drop(go_write);
        Ok(())
    }
}

/// Null-terminated pointer arrays into the request's strings, if every one is a C string.
fn pointers(request: &Request<'_>) -> Option<(Vec<*const c_char>, Vec<*const c_char>)> {
    let array = |strings: &[wire::Bytes<'_>]| -> Option<Vec<*const c_char>> {
        let mut out = Vec::with_capacity(strings.len() + 1);
        for s in strings {
            out.push(s.c_str()?.as_ptr());
        }
        out.push(std::ptr::null());
        Some(out)
    };
    Some((array(&request.argv)?, array(&request.envp)?))
}

fn rlimit(soft: u64, hard: u64) -> libc::rlimit {
    libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    }
}

/// Overwrites a request once its child exists, so that no later child inherits it.
fn clear(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: a valid, aligned, exclusive pointer into the slice; volatile so that the
        // compiler cannot drop the writes as dead.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// A close-on-exec pipe; its read end does not block when `nonblocking_read`.
fn pipe(nonblocking_read: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if nonblocking_read {
        // SAFETY: F_SETFL on a descriptor we own.
        if unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((read, write))
}

/// Creates the child: `clone3` born in its cgroup, or, where a seccomp filter refuses clone3
/// (ENOSYS), the older `clone` with the child writing `cgroup.procs`. Both with CLONE_PARENT
/// (the daemon is the parent) and CLONE_PIDFD, whose descriptor is trusted only when the call
/// succeeded. Returns the errno of the failed call.
fn spawn(
    spec: &ChildSpec<'_>,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<(i32, OwnedFd, Method), i32> {
    let mut pidfd: libc::c_int = -1;
    let mut flags = CLONE_PARENT | CLONE_PIDFD;
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let args = CloneArgs {
        flags,
        pidfd: (&raw mut pidfd) as u64,
        // CLONE_PARENT: the child's exit signal is the launcher's own (SIGCHLD); clone3
        // insists on 0 here.
        exit_signal: 0,
        cgroup: cgroup.map_or(0, |fd| fd.as_raw_fd() as u64),
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack duplicates the (single-threaded)
    // launcher like fork; the child only runs child::setup, which never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    } as libc::pid_t;
    if pid == 0 {
        // SAFETY: we are the new child; it was created inside its cgroup (or has none).
        unsafe { child::setup(spec, None) }
    }
    if pid > 0 {
        // SAFETY: clone3 succeeded, so the kernel wrote a new pidfd for the child here.
        return Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }, Method::Clone3));
    }
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    if errno != libc::ENOSYS {
        return Err(errno);
    }
    let procs = match cgroup {
        Some(dir) => Some(
            nix::fcntl::openat(
                dir,
                "cgroup.procs",
                nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| e as i32)?,
        ),
        None => None,
    };
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the legacy clone without CLONE_VM and with a null stack duplicates the launcher
    // like fork; CLONE_PIDFD writes the pidfd through the parent_tid argument.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (CLONE_PARENT | CLONE_PIDFD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            &raw mut pidfd,
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    } as libc::pid_t;
    if pid == 0 {
        // SAFETY: we are the new child; it enters its cgroup itself.
        unsafe { child::setup(spec, procs.as_ref().map(AsRawFd::as_raw_fd)) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: clone succeeded, so the kernel wrote a new pidfd for the child here.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }, Method::Clone))
}

fn send_reply(socket: BorrowedFd<'_>, reply: Reply, fds: &[RawFd]) -> io::Result<()> {
    let mut buf = [0u8; wire::MAX_REPLY];
    let bytes = postcard::to_slice(&reply, &mut buf).map_err(io::Error::other)?;
    wire::send(socket, bytes, fds)
}
