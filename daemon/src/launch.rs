//! Starting a server process as its user.
//!
//! Everything that allocates (argument and environment arrays, the group list, paths) is
//! computed in [`LaunchSpec::new`], before the clone. The child is created with
//! `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_INTO_CGROUP)` on x86_64 (see the
//! `vfork` module: nothing is copied, and the child is born in its cgroup), and elsewhere, or
//! on kernels that refuse those flags, with a copying clone3 or fork.
//!
//! Between the clone and exec the child makes only async-signal-safe system calls, in this
//! order: reset signals, enter the server's cgroup (only where it was not born in it),
//! `setsid`, the profile's resource limits, `setgroups`, `setresgid`, `setresuid`, check that
//! uid 0 cannot be regained, a new session keyring of its own, `chdir` to the home directory
//! (as the user, so permissions are the user's), `umask`, stdin from /dev/null, stdout and
//! stderr to the log, every other descriptor close-on-exec, the server's fd limit, `execve`.
//! A failing step writes `(step, errno)` to a close-on-exec pipe and exits; the parent reads
//! the pipe, so it learns the exact step and error, or (end of file) that exec succeeded. A
//! child that has not exec'd within [`set_launch_timeout`] (30 s) is killed by a watchdog, and
//! the start fails saying so: the waiting thread is never held for good.

use std::ffi::{CString, c_char};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// `struct clone_args` of clone3(2), up to the `cgroup` field (Linux 5.7).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// keyctl(2) operation: join (here: create) an anonymous session keyring.
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;

/// The soft open-file limit servers get (the daemon's own, before it raised it for its
/// pidfds); 0 = leave the inherited limit alone.
static SERVER_NOFILE_SOFT: AtomicU64 = AtomicU64::new(0);

/// Records the soft RLIMIT_NOFILE that servers should start with.
pub fn set_server_nofile_soft(soft: u64) {
    SERVER_NOFILE_SOFT.store(soft, Ordering::Relaxed);
}

/// One step of the child's set-up, as reported back through the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Signals = 1,
    Cgroup = 2,
    Setsid = 3,
    Setgroups = 4,
    Setgid = 5,
    Setuid = 6,
    RegainRoot = 7,
    Chdir = 8,
    Stdio = 9,
    Exec = 10,
    Keyring = 11,
    Limits = 12,
}

impl Step {
    fn from_u8(b: u8) -> Option<Step> {
        use Step::*;
        [
            Signals, Cgroup, Setsid, Setgroups, Setgid, Setuid, RegainRoot, Chdir, Stdio, Exec,
            Keyring, Limits,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The child reported a failed step.
    #[error("{}", describe(*step, *errno, spec))]
    Child {
        step: Step,
        errno: i32,
        spec: Box<SpecSummary>,
    },
    /// The child did not get to exec in time and was killed (see [`set_launch_timeout`]).
    #[error(
        "the server process of {} did not get as far as starting {} within {} s and was killed: \
         it was stopped by a signal, or its home directory {} or the program is on a file \
         system that hangs; check them and start again",
        spec.user, spec.program, timeout.as_secs_f64(), spec.home
    )]
    TimedOut {
        timeout: std::time::Duration,
        spec: Box<SpecSummary>,
    },
    /// The daemon could not fork or set up the launch.
    #[error("could not start a process for user {user}: {what}: {source}")]
    Parent {
        user: String,
        what: &'static str,
        source: io::Error,
    },
}

/// What an error message needs to know about the launch.
#[derive(Debug, Clone)]
pub struct SpecSummary {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub program: String,
    pub home: String,
    /// The profile's resource limits, as `name=value` for messages.
    pub limits: String,
    /// Whether the profile sets RLIMIT_NPROC (else the daemon's own applies).
    pub sets_nproc: bool,
}

fn describe(step: Step, errno: i32, s: &SpecSummary) -> String {
    let err = io::Error::from_raw_os_error(errno);
    let user = &s.user;
    match step {
        // Over RLIMIT_NPROC, the kernel lets setresuid succeed and fails the execve instead.
        Step::Exec | Step::Setuid if errno == libc::EAGAIN => {
            let limit = if s.sets_nproc {
                "the profile's nproc limit"
            } else {
                "RLIMIT_NPROC of the daemon, which servers inherit; under systemd LimitNPROC= in \
                 spawnd.service"
            };
            format!(
                "could not start the server of {user}: the user has too many processes ({limit}); \
                 stop some of the user's processes or raise the limit"
            )
        }
        Step::Exec if errno == libc::ENOENT && std::path::Path::new(&s.program).exists() => {
            match interpreter_of(&s.program) {
                Some(interp) => format!(
                    "could not execute {} as user {user}: its interpreter {interp} (named on its \
                     first line, #!) does not exist; reinstall the environment it belongs to or \
                     fix the profile's command",
                    s.program
                ),
                None => format!(
                    "could not execute {} as user {user}: the file exists but its program loader \
                     or a library it needs is missing ({err})",
                    s.program
                ),
            }
        }
        Step::Chdir => format!(
            "the home directory {} of user {user} is missing or not accessible to that user \
             ({err}); create it (for example with `mkhomedir_helper {user}`) or fix its \
             ownership and permissions",
            s.home
        ),
        Step::Exec => format!(
            "could not execute {} as user {user} ({err}); check that the file exists and that \
             the user can read and execute it and every directory above it",
            s.program
        ),
        Step::Setgroups | Step::Setgid | Step::Setuid => format!(
            "could not switch to user {user} (uid {}, gid {}) at {step}: {err}; the daemon \
             needs CAP_SETUID and CAP_SETGID",
            s.uid, s.gid
        ),
        Step::RegainRoot => format!(
            "refusing to run the server of {user}: after switching to uid {} the process could \
             still regain root",
            s.uid
        ),
        Step::Cgroup => format!("could not move the server of {user} into its cgroup: {err}"),
        Step::Limits => format!(
            "could not set the resource limits of the server of {user} ({}): {err}; spawnd can \
             only lower limits, so a value above the daemon's own hard limit is refused (raise \
             the daemon's, e.g. LimitMEMLOCK= or LimitNPROC= in spawnd.service, or lower the \
             profile's)",
            s.limits
        ),
        Step::Keyring => format!(
            "refusing to run the server of {user}: it could not get a session keyring of its \
             own ({err}), and it must not share the daemon's with other users' servers"
        ),
        Step::Signals | Step::Setsid | Step::Stdio => {
            format!("could not set up the server process of {user} at {step}: {err}")
        }
    }
}

/// The interpreter named by a script's `#!` line, if it has one.
fn interpreter_of(program: &str) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program)
        .and_then(|mut f| f.read(&mut head))
        .ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let text = String::from_utf8_lossy(line);
    text.split_whitespace().next().map(str::to_string)
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Step::Signals => "signal reset",
            Step::Cgroup => "cgroup entry",
            Step::Setsid => "setsid",
            Step::Setgroups => "setgroups",
            Step::Setgid => "setresgid",
            Step::Setuid => "setresuid",
            Step::RegainRoot => "root regain check",
            Step::Chdir => "chdir to home",
            Step::Stdio => "standard streams",
            Step::Exec => "exec",
            Step::Keyring => "session keyring",
            Step::Limits => "resource limits",
        };
        f.write_str(s)
    }
}

/// Everything the child needs, prepared before fork.
#[derive(Debug)]
pub struct LaunchSpec {
    program: CString,
    // Owned storage behind the pointer arrays.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    home: CString,
    umask: libc::mode_t,
    dev_null: CString,
    /// The profile's limits other than RLIMIT_NOFILE, set before the identity changes.
    limits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// RLIMIT_NOFILE for the server (the profile's, or the daemon's soft limit from before it
    /// raised its own), set last.
    nofile: Option<libc::rlimit>,
    /// Whether failing to set `nofile` fails the start (the profile asked for it).
    nofile_required: bool,
    log: OwnedFd,
    cgroup: Option<CgroupFds>,
    summary: SpecSummary,
    /// Tests only: the child stops itself right before exec, as a user's SIGSTOP could.
    #[cfg(test)]
    stop_before_exec: bool,
}

// SAFETY: the raw pointers point into the CStrings owned by the same struct, which are never
// mutated; moving the struct between threads moves their heap buffers' owners, not the buffers.
unsafe impl Send for LaunchSpec {}

/// Inputs of [`LaunchSpec::new`].
#[derive(Debug)]
pub struct LaunchInput<'a> {
    pub user: &'a str,
    pub uid: u32,
    pub gid: u32,
    /// Full group list; passed to setgroups as is.
    pub groups: &'a [u32],
    pub home: &'a str,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub umask: u32,
    /// The profile's resource limits (soft = hard).
    pub limits: &'a [(crate::config::Limit, u64)],
    /// Where stdout and stderr go.
    pub log: OwnedFd,
    /// The server's cgroup, if it has one.
    pub cgroup: Option<CgroupFds>,
}

/// A server's cgroup, opened before fork: the directory (for `clone3(CLONE_INTO_CGROUP)`,
/// which creates the child inside it) and its `cgroup.procs` (for kernels without it, where
/// the child moves itself by writing to it).
#[derive(Debug)]
pub struct CgroupFds {
    pub dir: OwnedFd,
    pub procs: OwnedFd,
}

fn cstring(what: &'static str, s: &str, user: &str) -> Result<CString, LaunchError> {
    CString::new(s).map_err(|_| LaunchError::Parent {
        user: user.to_string(),
        what,
        source: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })
}

impl LaunchSpec {
    pub fn new(input: LaunchInput<'_>) -> Result<LaunchSpec, LaunchError> {
        let user = input.user;
        let argv = input
            .argv
            .iter()
            .map(|a| cstring("argument", a, user))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = input.argv.first() else {
            return Err(LaunchError::Parent {
                user: user.to_string(),
                what: "command",
                source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
            });
        };
        let program = cstring("program", first, user)?;
        let envp = input
            .env
            .iter()
            .map(|(k, v)| cstring("environment", &format!("{k}={v}"), user))
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const c_char> = envp.iter().map(|a| a.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        let rlimit = |v: u64| libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        let mut limits = Vec::new();
        let mut nofile = None;
        for &(limit, value) in input.limits {
            if limit == crate::config::Limit::Nofile {
                nofile = Some(rlimit(value));
            } else {
                limits.push((limit.resource(), rlimit(value)));
            }
        }
        let nofile_required = nofile.is_some();
        let summary_limits = input
            .limits
            .iter()
            .map(|(l, v)| match *v {
                crate::config::UNLIMITED => format!("{}=unlimited", l.key()),
                v => format!("{}={v}", l.key()),
            })
            .collect::<Vec<_>>()
            .join(", ");
        Ok(LaunchSpec {
            program,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
            groups: input.groups.to_vec(),
            uid: input.uid,
            gid: input.gid,
            home: cstring("home directory", input.home, user)?,
            umask: input.umask as libc::mode_t,
            dev_null: c"/dev/null".to_owned(),
            limits,
            nofile: nofile.or_else(server_nofile),
            nofile_required,
            log: input.log,
            cgroup: input.cgroup,
            summary: SpecSummary {
                user: user.to_string(),
                uid: input.uid,
                gid: input.gid,
                program: first.clone(),
                home: input.home.to_string(),
                limits: summary_limits,
                sets_nproc: input
                    .limits
                    .iter()
                    .any(|(l, _)| *l == crate::config::Limit::Nproc),
            },
            #[cfg(test)]
            stop_before_exec: false,
        })
    }
}

fn server_nofile() -> Option<libc::rlimit> {
    let soft = SERVER_NOFILE_SOFT.load(Ordering::Relaxed);
    if soft == 0 {
        return None;
    }
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } < 0 {
        return None;
    }
    Some(libc::rlimit {
        rlim_cur: soft.min(current.rlim_max),
        rlim_max: current.rlim_max,
    })
}

/// A started server: its pid and a pidfd opened while it was still our unreaped child (so the
/// pidfd can only ever refer to it).
#[derive(Debug)]
pub struct Launched {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Forks, sets the child up and executes the server. Blocks until the exec has succeeded or
/// failed (a few milliseconds); call it from a blocking thread.
pub fn launch(spec: LaunchSpec) -> Result<Launched, LaunchError> {
    let parent_err = |what: &'static str, source: io::Error| LaunchError::Parent {
        user: spec.summary.user.clone(),
        what,
        source,
    };
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(parent_err("pipe", io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut empty_set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a sigset_t we own.
    unsafe { libc::sigemptyset(&mut empty_set) };

    // Until the exec, the watchdog may kill the child through the pidfd the kernel writes here.
    let watch = watchdog::watch();
    let mut method = Method::Fork;
    let mut pid = -1;
    let mut moved_at_birth = false;
    let cgroup_dir = spec.cgroup.as_ref().map(|cg| cg.dir.as_raw_fd());

    // The fast way (x86_64): a vfork-like clone3 that shares the daemon's memory until exec,
    // so nothing is copied, and creates the child inside its cgroup.
    #[cfg(target_arch = "x86_64")]
    {
        let child = vfork::Child {
            spec: &spec,
            empty_set: &empty_set,
            report: write_end.as_raw_fd(),
        };
        match vfork::spawn(&child, cgroup_dir, watch.pidfd_slot()) {
            Ok(p) => {
                pid = p;
                moved_at_birth = true;
                method = Method::Vfork;
            }
            Err(e) if clone3_unsupported(&e) => {}
            Err(e) => return Err(parent_err("clone3", e)),
        }
    }

    // Otherwise a copy of the process. With a cgroup, clone3(CLONE_INTO_CGROUP) creates the
    // child inside it (a migration by writing cgroup.procs waits for an RCU grace period:
    // milliseconds, more under load) and CLONE_PIDFD returns the pidfd with it. Kernels
    // before 5.7 fall back to fork.
    if let (true, Some(dir)) = (pid < 0, cgroup_dir) {
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP | CLONE_PIDFD,
            pidfd: watch.pidfd_slot() as u64,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM (or a stack) duplicates the process like fork. It
        // bypasses glibc's fork, so the child must not touch glibc state that other threads may
        // have held (locks, the thread list): child_setup makes raw system calls only.
        pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            ) as libc::pid_t
        };
        if pid < 0 {
            let e = io::Error::last_os_error();
            if !clone3_unsupported(&e) {
                return Err(parent_err("clone3", e));
            }
        } else {
            moved_at_birth = true;
            method = Method::Clone3;
        }
    }
    if pid < 0 {
        // SAFETY: fork is called with everything the child needs already computed; the child
        // branch below only makes async-signal-safe calls and ends in execve or _exit.
        pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(parent_err("fork", io::Error::last_os_error()));
        }
    }
    if pid == 0 {
        // SAFETY: we are the freshly created child (a copy, not sharing memory); child_setup
        // never returns.
        unsafe { child_setup(&spec, &empty_set, write_end.as_raw_fd(), !moved_at_birth) }
    }
    drop(write_end);
    method.note(spec.cgroup.is_some());

    let clone_pidfd = watch.pidfd();
    let pidfd = if clone_pidfd >= 0 {
        // SAFETY: the kernel returned this new (close-on-exec) pidfd through clone_args.
        Ok(unsafe { OwnedFd::from_raw_fd(clone_pidfd) })
    } else {
        // Our child cannot be reaped by anyone else, so this pidfd is for it and nothing else.
        let opened = crate::sys::pidfd_open(pid);
        if let Ok(fd) = &opened {
            watch.set_pidfd(fd.as_raw_fd());
        }
        opened
    };

    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reading into the remaining part of a local buffer.
        let n = unsafe {
            libc::read(
                read_end.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                report.len() - got,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    // Before the pidfd can be closed: the watchdog no longer uses it after this.
    if watch.finish() {
        reap(pid);
        return Err(LaunchError::TimedOut {
            timeout: watchdog::timeout(),
            spec: Box::new(spec.summary.clone()),
        });
    }
    if got == 0 {
        // End of file: the pipe was closed by a successful exec.
        return match pidfd {
            Ok(pidfd) => Ok(Launched { pid, pidfd }),
            Err(e) => {
                kill_and_reap(pid);
                Err(parent_err("pidfd_open", e))
            }
        };
    }
    reap(pid);
    let step = Step::from_u8(report[0]).unwrap_or(Step::Exec);
    let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
    Err(LaunchError::Child {
        step,
        errno,
        spec: Box::new(spec.summary.clone()),
    })
}

/// How a child was created; the daemon says once which one the host allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Method {
    Vfork = 1,
    Clone3 = 2,
    Fork = 3,
}

impl Method {
    /// Logs the method the first time it is used (and whenever it changes).
    fn note(self, cgroup: bool) {
        static LAST: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        if LAST.swap(self as u8, Ordering::Relaxed) == self as u8 {
            return;
        }
        match (self, cgroup) {
            (Method::Vfork, _) => tracing::info!(
                "servers start with clone3(CLONE_VM|CLONE_VFORK), in their cgroup from birth"
            ),
            (Method::Clone3, _) => tracing::info!(
                "servers start with a copying clone3 (no vfork-like clone3 here), in their \
                 cgroup from birth"
            ),
            (Method::Fork, true) => tracing::warn!(
                "servers start with fork: clone3 is not available (a kernel before 5.7, or a \
                 seccomp filter that refuses it), so each enters its cgroup by writing \
                 cgroup.procs, which waits for an RCU grace period: starts take milliseconds \
                 longer"
            ),
            (Method::Fork, false) => tracing::info!("servers start with fork"),
        }
    }
}

/// Errors of clone3 that mean "this kernel cannot do that": fall back to an older way.
fn clone3_unsupported(e: &io::Error) -> bool {
    let unsupported = [libc::ENOSYS, libc::E2BIG, libc::EINVAL, libc::EOPNOTSUPP];
    e.raw_os_error().is_some_and(|n| unsupported.contains(&n))
}

fn reap(pid: i32) {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child; status is a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

fn kill_and_reap(pid: i32) {
    // SAFETY: our own unreaped child; its pid cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid);
}

/// The child between fork and exec. Only async-signal-safe calls: no allocation, no locks, no
/// logging, no panics.
///
/// # Safety
/// Must only be called in the child right after fork.
unsafe fn child_setup(
    spec: &LaunchSpec,
    empty_set: &libc::sigset_t,
    report: RawFd,
    enter_cgroup: bool,
) -> ! {
    // SAFETY: every call below is an async-signal-safe system call on data
    // that was fully prepared before fork and is not modified here.
    unsafe {
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
        // which a parent of the daemon may have left ignored. An all-zero kernel sigaction is
        // SIG_DFL with no flags and an empty mask.
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
        check!(
            Step::Signals,
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                std::ptr::from_ref(empty_set),
                std::ptr::null_mut::<libc::sigset_t>(),
                8usize
            )
        );
        if let (true, Some(cg)) = (enter_cgroup, &spec.cgroup) {
            // "0" moves the writing process itself into the cgroup, before it can fork.
            check!(
                Step::Cgroup,
                libc::write(cg.procs.as_raw_fd(), b"0".as_ptr().cast(), 1)
            );
        }
        check!(Step::Setsid, libc::setsid());
        // The profile's limits, before the identity changes (as PAM's limits.conf would be):
        // setresuid then checks RLIMIT_NPROC against the user's processes, and exec fails
        // with EAGAIN, which is reported, if the user already has too many.
        for (resource, limit) in &spec.limits {
            check!(Step::Limits, libc::setrlimit(*resource, limit));
        }
        // Raw system calls, not glibc's wrappers: those broadcast the change to every thread
        // glibc knows of, taking locks that another thread of the daemon may have held when
        // clone3 copied the process. The child has one thread, so the raw calls cover it all.
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
        #[cfg(test)]
        if spec.stop_before_exec {
            libc::syscall(
                libc::SYS_kill,
                libc::syscall(libc::SYS_getpid),
                libc::SIGSTOP,
            );
        }
        // Every process inherits its parent's session keyring: without a new one, all
        // servers would share the daemon's, and one user could read keys another stored.
        // Joined after setresuid, the new anonymous keyring belongs to the user.
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
        let null = libc::open(spec.dev_null.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        check!(Step::Stdio, null);
        check!(Step::Stdio, libc::dup2(null, 0));
        let log = spec.log.as_raw_fd();
        check!(Step::Stdio, libc::dup2(log, 1));
        check!(Step::Stdio, libc::dup2(log, 2));
        // Everything above 2 closes at exec, including the report pipe (which must stay open
        // until then) and whatever the daemon had open.
        check!(
            Step::Stdio,
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC
            )
        );
        // Last, since the child still holds every descriptor the daemon had (they close at
        // exec): lowering the limit earlier would make the opens above fail with EMFILE.
        if let Some(limit) = &spec.nofile {
            // Lowering a limit needs no privilege. A failure leaves the daemon's limit: fatal
            // only when the profile asked for this one.
            if libc::setrlimit(libc::RLIMIT_NOFILE, limit) < 0 && spec.nofile_required {
                fail(report, Step::Limits, *libc::__errno_location());
            }
        }
        libc::execve(
            spec.program.as_ptr(),
            spec.argv_ptrs.as_ptr(),
            spec.envp_ptrs.as_ptr(),
        );
        fail(report, Step::Exec, *libc::__errno_location());
    }
}

/// Reports a failed step to the parent and exits. Async-signal-safe.
fn fail(report: RawFd, step: Step, errno: i32) -> ! {
    let e = errno.to_ne_bytes();
    let msg = [step as u8, e[0], e[1], e[2], e[3]];
    // SAFETY: write(2) and _exit(2) are async-signal-safe; msg is a local array.
    unsafe {
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// A vfork-like start: `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD [| CLONE_INTO_CGROUP])` on a
/// stack of its own, as glibc's `posix_spawn` does with `clone`. The child shares the daemon's
/// memory until it execs, so no page tables are copied (and no copy-on-write faults follow in
/// the daemon), and the calling thread sleeps in the kernel until the child has exec'd or
/// exited: when `spawn` returns, the child no longer uses its stack or anything of ours.
///
/// Why sharing memory with a child that becomes the user is safe:
/// - the child runs only [`child_setup`] (async-signal-safe calls on data prepared before the
///   clone, no allocation, no locks) on its own stack, and writes nothing the daemon reads
///   except errno, in the TLS of the calling thread, which sleeps until the child is gone;
/// - all signals are blocked across the clone, so none of the daemon's handlers can run in the
///   child; the child resets every disposition (its table is its own: no CLONE_SIGHAND) before
///   it unblocks them;
/// - once the child changes its uid, the kernel marks the shared memory not dumpable, so the
///   user cannot ptrace the child or read `/proc/PID/mem` in the moment before exec (that
///   needs CAP_SYS_PTRACE); exec then gives the server a fresh address space.
#[cfg(target_arch = "x86_64")]
mod vfork {
    use super::{CLONE_INTO_CGROUP, CLONE_PIDFD, CloneArgs, LaunchSpec, child_setup};
    use std::ffi::c_void;
    use std::io;
    use std::os::fd::RawFd;

    const CLONE_VM: u64 = 0x100;
    const CLONE_VFORK: u64 = 0x4000;
    /// The child's stack: `child_setup` needs a few hundred bytes; the rest is margin.
    const STACK_SIZE: usize = 64 * 1024;
    /// An inaccessible page below the stack, so that an overflow faults instead of writing
    /// into whatever lies below.
    const GUARD: usize = 4096;

    /// What the child needs; it lives on the parent's stack, which the child does not use.
    pub(super) struct Child<'a> {
        pub spec: &'a LaunchSpec,
        pub empty_set: &'a libc::sigset_t,
        pub report: RawFd,
    }

    /// An anonymous mapping for the child's stack, with a guard page at its low end.
    struct Stack {
        base: *mut c_void,
        len: usize,
    }

    impl Stack {
        fn new() -> io::Result<Stack> {
            let len = STACK_SIZE + GUARD;
            // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = Stack { base, len };
            // SAFETY: the range lies inside the mapping made above.
            let r = unsafe {
                libc::mprotect(
                    base.cast::<u8>().add(GUARD).cast(),
                    STACK_SIZE,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }

        /// The lowest usable address (the kernel starts the child at `low + STACK_SIZE`, which
        /// is 16-byte aligned since the mapping is page aligned).
        fn low(&self) -> u64 {
            self.base as u64 + GUARD as u64
        }
    }

    impl Drop for Stack {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `new`, which nothing uses any more
            // (the child has exec'd or exited before clone3 returned).
            unsafe { libc::munmap(self.base, self.len) };
        }
    }

    extern "C" fn entry(arg: *mut c_void) -> ! {
        // SAFETY: `arg` is the `Child` passed to `spawn`, whose caller sleeps in clone3
        // (CLONE_VFORK) until this process execs or exits, so it stays valid and unchanged.
        let child = unsafe { &*(arg as *const Child<'_>) };
        // SAFETY: we are the new child, on our own stack; child_setup never returns. The child
        // was created inside its cgroup (or has none), so it need not enter one.
        unsafe { child_setup(child.spec, child.empty_set, child.report, false) }
    }

    /// Starts the child; returns its pid once it has exec'd or exited; the kernel writes its
    /// pidfd to `pidfd` as it creates it. An error is the kernel's answer to clone3.
    pub(super) fn spawn(
        child: &Child<'_>,
        cgroup: Option<RawFd>,
        pidfd: *mut libc::c_int,
    ) -> io::Result<libc::pid_t> {
        let stack = Stack::new()?;
        let mut flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD;
        if cgroup.is_some() {
            flags |= CLONE_INTO_CGROUP;
        }
        let args = CloneArgs {
            flags,
            pidfd: pidfd as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.low(),
            stack_size: STACK_SIZE as u64,
            cgroup: cgroup.map_or(0, |fd| fd as u64),
            ..CloneArgs::default()
        };
        // SAFETY: sigset_t is plain data, initialised by sigfillset / pthread_sigmask below.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to local sigsets; only this thread's mask changes.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        }
        // SAFETY: `args` describes a child on `stack` (alive until after this returns) that
        // starts in `entry` with `child`, which outlives the call; see the module's comment.
        let ret = unsafe { clone3(&args, entry, std::ptr::from_ref(child) as *mut c_void) };
        // SAFETY: restores this thread's own mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        drop(stack);
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret as i32));
        }
        Ok(ret as libc::pid_t)
    }

    /// The raw clone3 system call. The child starts on the new stack with the registers of the
    /// parent at the call, so it finds `f` and `arg` in r13 and r12 and calls `f(arg)`, which
    /// never returns; the parent gets the child's pid or `-errno`.
    ///
    /// # Safety
    /// `args` must carry a valid stack with CLONE_VM, `f` must never return, and `arg` must stay
    /// valid until the child has exec'd or exited (CLONE_VFORK ensures that for the caller).
    unsafe fn clone3(
        args: &CloneArgs,
        f: extern "C" fn(*mut c_void) -> !,
        arg: *mut c_void,
    ) -> i64 {
        let ret: i64;
        // SAFETY: see the function's contract. The child branch never falls through to the
        // code after the asm block: it calls `f` on its own stack and `f` does not return.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "mov rdi, r12",
                "call r13",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") std::ptr::from_ref(args),
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") arg,
                in("r13") f,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
        ret
    }
}

/// Sets how long a child may take from its creation to its exec before it is killed (30 s by
/// default). The daemon's thread waits for the exec, and a child that never gets there (a user
/// who stops it with SIGSTOP in the moment after it took their uid, a home directory on a
/// file system that hangs) would otherwise hold that thread for good.
pub fn set_launch_timeout(timeout: std::time::Duration) {
    watchdog::set_timeout(timeout);
}

/// Kills children that have not exec'd within the timeout. One thread, started at the first
/// launch (after the daemon dropped its capabilities: they are per thread), looks at the
/// launches in progress a few times per timeout.
mod watchdog {
    use std::os::fd::BorrowedFd;
    use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, Once, PoisonError};
    use std::time::{Duration, Instant};

    static TIMEOUT_MS: AtomicU64 = AtomicU64::new(30_000);
    static PENDING: Mutex<Vec<Arc<Entry>>> = Mutex::new(Vec::new());
    static THREAD: Once = Once::new();

    pub(super) fn set_timeout(timeout: Duration) {
        TIMEOUT_MS.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    pub(super) fn timeout() -> Duration {
        Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
    }

    /// One launch in progress.
    struct Entry {
        since: Instant,
        /// The child's pidfd once it exists (the kernel writes it here during clone3), else -1.
        pidfd: AtomicI32,
        killed: AtomicBool,
    }

    /// A registered launch; unregistered by [`Watch::finish`] or when dropped.
    pub(super) struct Watch(Arc<Entry>);

    pub(super) fn watch() -> Watch {
        THREAD.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("spawnd-launch-watchdog".into())
                .spawn(run);
            if let Err(e) = spawned {
                tracing::warn!("no launch watchdog thread, starts are not timed: {e}");
            }
        });
        let entry = Arc::new(Entry {
            since: Instant::now(),
            pidfd: AtomicI32::new(-1),
            killed: AtomicBool::new(false),
        });
        lock().push(entry.clone());
        Watch(entry)
    }

    fn lock() -> std::sync::MutexGuard<'static, Vec<Arc<Entry>>> {
        PENDING.lock().unwrap_or_else(PoisonError::into_inner)
    }

    impl Watch {
        /// Where clone3 (CLONE_PIDFD) writes the child's pidfd.
        pub(super) fn pidfd_slot(&self) -> *mut libc::c_int {
            self.0.pidfd.as_ptr()
        }

        pub(super) fn pidfd(&self) -> libc::c_int {
            self.0.pidfd.load(Ordering::Acquire)
        }

        /// For a child made by fork: its pidfd, opened after the fact.
        pub(super) fn set_pidfd(&self, fd: libc::c_int) {
            self.0.pidfd.store(fd, Ordering::Release);
        }

        /// Stops watching (the watchdog will not touch the pidfd afterwards); true if the
        /// child was killed for taking too long.
        pub(super) fn finish(self) -> bool {
            let entry = self.0.clone();
            drop(self); // unregisters: the flag cannot change after this
            entry.killed.load(Ordering::Acquire)
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            lock().retain(|e| !Arc::ptr_eq(e, &self.0));
        }
    }

    fn run() {
        loop {
            let timeout = timeout();
            std::thread::sleep(
                (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            );
            // The lock is held while signalling: a launch unregisters (under it) before it
            // can close its pidfd, so the descriptor is still that child's.
            let pending = lock();
            for e in pending.iter() {
                if e.killed.load(Ordering::Acquire) || e.since.elapsed() < timeout {
                    continue;
                }
                let fd = e.pidfd.load(Ordering::Acquire);
                if fd < 0 {
                    continue;
                }
                // SAFETY: the pidfd stays open while its launch is registered (see above).
                let pidfd = unsafe { BorrowedFd::borrow_raw(fd) };
                match crate::sys::pidfd_send_signal(pidfd, libc::SIGKILL) {
                    Ok(()) => {
                        e.killed.store(true, Ordering::Release);
                        tracing::warn!(
                            "killed a server process that had not started its program after {} s",
                            timeout.as_secs_f64()
                        );
                    }
                    Err(err) => tracing::warn!("could not kill a stuck server process: {err}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn spec_for_nobody() -> Option<LaunchSpec> {
        let nobody = nix::unistd::User::from_name("nobody").ok().flatten()?;
        let log: OwnedFd = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .ok()?
            .into();
        LaunchSpec::new(LaunchInput {
            user: "nobody",
            uid: nobody.uid.as_raw(),
            gid: nobody.gid.as_raw(),
            groups: &[nobody.gid.as_raw()],
            home: "/",
            argv: &["/bin/true".to_owned()],
            env: &[],
            umask: 0o022,
            limits: &[],
            log,
            cgroup: None,
        })
        .ok()
    }

    /// SIGKILLs every stopped child of this process.
    fn kill_stopped_children() {
        let me = std::process::id().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let fields: Vec<&str> = after.split_whitespace().collect();
            if fields.first() == Some(&"T")
                && fields.get(1) == Some(&me.as_str())
                && let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>()
            {
                // SAFETY: a stopped child of ours; kill(2) takes any pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    #[test]
    fn a_child_that_never_reaches_exec_is_killed_and_reported() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (launches a process as the user nobody)");
            return;
        }
        set_launch_timeout(Duration::from_millis(300));
        let mut spec = spec_for_nobody().expect("a launch spec for the user nobody");
        spec.stop_before_exec = true;
        let t0 = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(launch(spec));
        });
        let Ok(result) = rx.recv_timeout(Duration::from_secs(10)) else {
            // Do not leave the stopped child behind: it is ours, stopped, and run as nobody.
            kill_stopped_children();
            panic!("the launch of a child stopped before exec did not return within 10 s");
        };
        let err = result.expect_err("a stopped child must not count as started");
        assert!(
            matches!(err, LaunchError::TimedOut { .. }),
            "expected a timeout, got {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("nobody") && message.contains("/bin/true"),
            "{message}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the launch waited {:?}",
            t0.elapsed()
        );
        // The watchdog leaves normal launches alone.
        let launched = launch(spec_for_nobody().expect("spec")).expect("a normal launch");
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(launched.pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
