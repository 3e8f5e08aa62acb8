//! The new process between its creation and the exec of the server's program.
//!
//! It runs in the launcher's child, a copy of the small single-threaded launcher (never of the
//! daemon), and makes only async-signal-safe system calls on data prepared before the clone:
//! no allocation, no locks, no logging, no panics. In this order:
//!
//! 1. signal dispositions reset and the mask cleared;
//! 2. where it was not created inside its cgroup, it enters it (`cgroup.procs`);
//! 3. **while still root**, its descriptors become exactly: 0 `/dev/null`, 1 and 2 the log,
//!    3 the report pipe (close-on-exec), 4 the hand-over pipe; every other one (the launcher's
//!    channel, other launches' pipes and pidfds, the cgroup directory) is closed;
//! 4. it waits for the launcher's byte on the hand-over pipe, sent once the daemon has its
//!    pidfd (end of file instead: the launcher is gone, and it exits), then closes that pipe;
//! 5. `setsid`, the profile's resource limits, `setgroups`, `setresgid`, `setresuid`, a check
//!    that uid 0 cannot be regained, a session keyring of its own, `chdir` to the home
//!    directory (as the user), `umask`, the server's open-file limit;
//! 6. a marker on the report pipe, then `execve`.
//!
//! So from the moment it belongs to the user, the process holds nothing but its own launch: its
//! memory is a copy of the launcher's, which holds no request but this one, and its descriptors
//! are its own standard streams and its report pipe. A user who stops, traces or kills it can
//! learn or change nothing of any other launch.
//!
//! The daemon reads the report pipe ([`Report`]): a failed step is `(step, errno)`; the marker
//! comes right before `execve`, so end of file after it means the program runs, and end of
//! file without it means the process died before it got there (killed by a signal).

use super::Step;
use super::wire::Outcome;
use std::ffi::{CStr, c_char};
use std::os::fd::RawFd;

/// keyctl(2) operation: join (here: create) an anonymous session keyring.
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;

/// The descriptor the report pipe is moved to.
pub(super) const REPORT_FD: RawFd = 3;
/// The descriptor the hand-over pipe is moved to.
const GO_FD: RawFd = 4;

/// What the report pipe carries: records of [`RECORD`] bytes.
pub(super) const RECORD: usize = 5;
/// The first byte of the record written right before `execve`.
pub(super) const EXEC_MARKER: u8 = 0xff;

/// Everything the child needs, prepared by the launcher before the clone. The pointers point
/// into the launcher's copy of the request, which the child has a copy of.
#[derive(Debug)]
pub(super) struct ChildSpec<'a> {
    pub program: &'a CStr,
    /// Null-terminated.
    pub argv: &'a [*const c_char],
    /// Null-terminated.
    pub envp: &'a [*const c_char],
    pub groups: &'a [libc::gid_t],
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub home: &'a CStr,
    pub umask: libc::mode_t,
    pub limits: &'a [(libc::__rlimit_resource_t, libc::rlimit)],
    pub nofile: Option<libc::rlimit>,
    pub nofile_required: bool,
    /// The log (stdout and stderr). Above [`REPORT_FD`].
    pub log: RawFd,
    /// The write end of the report pipe. Above [`REPORT_FD`].
    pub report: RawFd,
    /// The read end of the hand-over pipe. Above [`REPORT_FD`].
    pub go: RawFd,
    pub pause_before_exec: bool,
}

/// The child's whole life until exec. `cgroup_procs` is the server cgroup's `cgroup.procs`
/// when the child was not created inside it.
///
/// # Safety
/// Must only be called in a child just created by a copying clone of the single-threaded
/// launcher, with every descriptor of `spec` (log, report and hand-over pipes) open and above
/// [`REPORT_FD`], and descriptors 0 to [`REPORT_FD`] open (so that the ones opened here land
/// above it).
pub(super) unsafe fn setup(spec: &ChildSpec<'_>, cgroup_procs: Option<RawFd>) -> ! {
    // SAFETY: every call below is an async-signal-safe system call on data that was fully
    // prepared before the clone and is not modified here.
    unsafe {
        let mut report = spec.report;
        macro_rules! check {
            ($step:expr, $call:expr) => {
                if $call < 0 {
                    fail(report, $step, *libc::__errno_location());
                }
            };
        }
        // Rust ignores SIGPIPE, and ignored signals stay ignored across exec: restore every
        // disposition and unblock everything, as a fresh process expects. Raw system calls:
        // glibc's wrappers refuse the two real-time signals it keeps for itself (32 and 33),
        // which a parent may have left ignored. An all-zero kernel sigaction is SIG_DFL with no
        // flags and an empty mask.
        let default_action = [0u64; 4];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default_action.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let empty_set = 0u64;
        check!(
            Step::Signals,
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &raw const empty_set,
                std::ptr::null_mut::<u64>(),
                8usize
            )
        );
        if let Some(procs) = cgroup_procs {
            // "0" moves the writing process itself into the cgroup, before it can fork.
            check!(Step::Cgroup, libc::write(procs, b"0".as_ptr().cast(), 1));
        }
        // The descriptors, while still root: nothing but its own survives into the user's hands.
        // The standard streams first (0 to 2 are the launcher's own, never one of the
        // launch's), then the pipes onto 3 (the launcher's channel) and 4: whatever 4 held
        // has been copied by then.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        check!(Step::Stdio, null);
        check!(Step::Stdio, libc::dup2(null, 0));
        check!(Step::Stdio, libc::dup2(spec.log, 1));
        check!(Step::Stdio, libc::dup2(spec.log, 2));
        check!(Step::Stdio, move_to(report, REPORT_FD));
        report = REPORT_FD;
        check!(Step::Stdio, move_to(spec.go, GO_FD));
        check!(
            Step::Stdio,
            libc::syscall(libc::SYS_close_range, GO_FD as u32 + 1, u32::MAX, 0u32)
        );
        let mut go = 0u8;
        loop {
            let n = libc::read(GO_FD, (&raw mut go).cast(), 1);
            if n == 1 {
                break;
            }
            let errno = *libc::__errno_location();
            if n < 0 && errno == libc::EINTR {
                continue;
            }
            // The launcher is gone before the daemon knew of this process: it must not run.
            fail(
                report,
                Step::Handover,
                if n < 0 { errno } else { libc::EPIPE },
            );
        }
        libc::close(GO_FD);
        check!(Step::Setsid, libc::setsid());
        // The profile's limits, before the identity changes (as PAM's limits.conf would be):
        // setresuid then checks RLIMIT_NPROC against the user's processes, and exec fails
        // with EAGAIN, which is reported, if the user already has too many.
        for (resource, limit) in spec.limits {
            check!(Step::Limits, libc::setrlimit(*resource, limit));
        }
        check!(
            Step::Setgroups,
            libc::syscall(libc::SYS_setgroups, spec.groups.len(), spec.groups.as_ptr())
        );
        check!(
            Step::Setgid,
            libc::syscall(libc::SYS_setresgid, spec.gid, spec.gid, spec.gid)
        );
        check!(
            Step::Setuid,
            libc::syscall(libc::SYS_setresuid, spec.uid, spec.uid, spec.uid)
        );
        if libc::syscall(libc::SYS_setresuid, 0, 0, 0) == 0
            || libc::syscall(libc::SYS_setuid, 0) == 0
        {
            fail(report, Step::RegainRoot, libc::EPERM);
        }
        // Every process inherits its parent's session keyring: without a new one, all servers
        // would share the daemon's, and one user could read keys another stored. Joined after
        // setresuid, the new anonymous keyring belongs to the user.
        if libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<c_char>(),
        ) < 0
        {
            let errno = *libc::__errno_location();
            // A kernel without keyrings has nothing to share.
            if errno != libc::ENOSYS {
                fail(report, Step::Keyring, errno);
            }
        }
        check!(Step::Chdir, libc::chdir(spec.home.as_ptr()));
        libc::umask(spec.umask);
        if let Some(limit) = &spec.nofile {
            // Lowering a limit needs no privilege. A failure leaves the launcher's limit: fatal
            // only when the profile asked for this one.
            if libc::setrlimit(libc::RLIMIT_NOFILE, limit) < 0 && spec.nofile_required {
                fail(report, Step::Limits, *libc::__errno_location());
            }
        }
        if spec.pause_before_exec {
            libc::syscall(
                libc::SYS_kill,
                libc::syscall(libc::SYS_getpid),
                libc::SIGSTOP,
            );
        }
        let marker = [EXEC_MARKER; RECORD];
        libc::write(report, marker.as_ptr().cast(), RECORD);
        libc::execve(
            spec.program.as_ptr(),
            spec.argv.as_ptr(),
            spec.envp.as_ptr(),
        );
        fail(report, Step::Exec, *libc::__errno_location());
    }
}

/// Puts `fd` at `target`, close-on-exec (where it already is, it is only marked so).
/// Async-signal-safe; returns what the system call did (negative: failed, errno set).
unsafe fn move_to(fd: RawFd, target: RawFd) -> libc::c_long {
    // SAFETY: fcntl and dup3 on descriptor numbers; no memory is involved.
    unsafe {
        if fd == target {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) as libc::c_long
        } else {
            libc::syscall(libc::SYS_dup3, fd, target, libc::O_CLOEXEC)
        }
    }
}

/// Reports a failed step to the launcher and exits. Async-signal-safe.
fn fail(report: RawFd, step: Step, errno: i32) -> ! {
    let e = errno.to_ne_bytes();
    let record: [u8; RECORD] = [step as u8, e[0], e[1], e[2], e[3]];
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the record is a local array.
    unsafe {
        libc::write(report, record.as_ptr().cast(), RECORD);
        libc::_exit(127)
    }
}

/// What a child wrote on its report pipe, read by the daemon until end of file.
#[derive(Debug, Default)]
pub(super) struct Report {
    records: [u8; 2 * RECORD],
    got: usize,
}

/// Where reading a report stands.
#[derive(Debug)]
pub(super) enum Reading {
    /// Nothing more to read for now (the pipe does not block).
    Pending,
    /// End of file: the child has executed its program or is gone.
    Finished(Outcome),
}

impl Report {
    /// Reads what the child wrote, up to end of file. Only end of file ends a launch: a child
    /// may still be alive after its last record (stopped between a failed exec's report and
    /// its exit).
    pub(super) fn read(&mut self, pipe: std::os::fd::BorrowedFd<'_>) -> Reading {
        use std::os::fd::AsRawFd;
        let mut scratch = [0u8; RECORD];
        loop {
            let space: &mut [u8] = if self.got < self.records.len() {
                &mut self.records[self.got..]
            } else {
                // More than a child ever writes: keep the first records, drain the rest.
                &mut scratch
            };
            // SAFETY: reads into a buffer of ours, for its length.
            let n = unsafe { libc::read(pipe.as_raw_fd(), space.as_mut_ptr().cast(), space.len()) };
            if n > 0 {
                self.got = (self.got + n as usize).min(self.records.len());
                continue;
            }
            if n == 0 {
                return Reading::Finished(self.outcome());
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Reading::Pending,
                // Cannot happen on a pipe we hold; the child's fate is unknown: treat as killed.
                _ => return Reading::Finished(Outcome::KilledBeforeExec),
            }
        }
    }

    /// How the launch ended, from the records read so far (at end of file: for good).
    pub(super) fn outcome(&self) -> Outcome {
        let mut marker = false;
        for record in self.records[..self.got].chunks_exact(RECORD) {
            if record[0] == EXEC_MARKER {
                marker = true;
            } else {
                let errno = i32::from_ne_bytes([record[1], record[2], record[3], record[4]]);
                return Outcome::Failed {
                    step: record[0],
                    errno,
                };
            }
        }
        if marker {
            Outcome::Exec
        } else {
            Outcome::KilledBeforeExec
        }
    }
}
