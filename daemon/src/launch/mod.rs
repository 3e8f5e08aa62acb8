//! Starting a server process as its user.
//!
//! The daemon never creates a server itself. It prepares everything a launch needs
//! ([`LaunchSpec`]: the user's identity and groups, the arguments and environment, the log and
//! the cgroup, already opened) and hands it to its **launcher** ([`Launcher`]), a small
//! single-threaded process that it executes at start-up and that shares nothing with it: no
//! memory, no descriptors but its channel and those passed for the launch at hand
//! ([`process`]). The launcher creates the server with a copying `clone3`, as a child of the
//! daemon (CLONE_PARENT), born in its cgroup; the child becomes the user and executes the
//! program ([`child`]); the daemon gets the pidfd and later the exact exit status.
//!
//! What reaches the daemon is one of: the server runs ([`Launched`]), a set-up step failed
//! (which one, and the errno), the process was killed before it executed its program, it did
//! not get there within the launch timeout and was killed, or the launcher itself failed (it is
//! replaced, and nothing of the launch is left running).

pub mod child;
mod launcher;
pub mod process;
pub mod wire;

pub use launcher::{Launcher, OWN_EXECUTABLE};

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

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
    Handover = 13,
}

impl Step {
    fn from_u8(b: u8) -> Option<Step> {
        use Step::*;
        [
            Signals, Cgroup, Setsid, Setgroups, Setgid, Setuid, RegainRoot, Chdir, Stdio, Exec,
            Keyring, Limits, Handover,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The child reported a failed step.
    #[error("{}", step_failure_message(*step, *errno, spec))]
    Child {
        step: Step,
        errno: i32,
        spec: Box<SpecSummary>,
    },
    /// The child did not get to exec within the launch timeout and was killed.
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
    /// The child died before it executed its program, without reporting a failed step.
    #[error(
        "the server process of {} was killed{} before it started {}: another process of that \
         user, or the kernel's out-of-memory killer, ended it; start again",
        spec.user,
        signal.map(|s| format!(" by signal {s} ({})", signal_name(s))).unwrap_or_default(),
        spec.program
    )]
    KilledBeforeExec {
        signal: Option<i32>,
        spec: Box<SpecSummary>,
    },
    /// The daemon or the launcher could not create the process or set up the launch.
    #[error("could not start a process for user {user}: {what}: {source}")]
    Parent {
        user: String,
        what: &'static str,
        source: io::Error,
    },
    /// The launcher process failed while this launch was in flight; a new one is started for
    /// the next launch.
    #[error(
        "could not start the server of {user}: spawnd's launcher process {why}; it has been \
         replaced and nothing of this start is left running: start again"
    )]
    Launcher { user: String, why: String },
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned())
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

/// The message of a failed set-up step: what failed, for whom, and what the operator can do.
fn step_failure_message(step: Step, errno: i32, s: &SpecSummary) -> String {
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
        Step::Exec if errno == libc::EACCES && selinux_enforcing() => format!(
            "could not execute {} as user {user} ({err}); SELinux is enforcing: the file's \
             label (ls -Z) must be one that spawnd's policy lets its servers start from \
             (bin_t, usr_t or a shell), for example `semanage fcontext -a -t bin_t '{}' && \
             restorecon '{}'`; the denial is in the audit log (ausearch -m avc -ts recent); \
             else check that the user can read and execute it and every directory above it",
            s.program, s.program, s.program
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
        Step::Handover => format!(
            "could not start the server of {user}: spawnd's launcher process exited before it \
             handed the new process over, which then ended; it has been replaced: start again"
        ),
        Step::Signals | Step::Setsid | Step::Stdio => {
            format!("could not set up the server process of {user} at {step}: {err}")
        }
    }
}

/// Whether SELinux is enforcing on this host (`/sys/fs/selinux/enforce` reads 1): an exec
/// refused with EACCES is then most likely the policy's doing, not the file's mode.
fn selinux_enforcing() -> bool {
    std::fs::read_to_string("/sys/fs/selinux/enforce").is_ok_and(|v| v.trim() == "1")
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
            Step::Handover => "hand-over",
            Step::Limits => "resource limits",
        };
        f.write_str(s)
    }
}

/// Everything a launch needs, prepared by the daemon: owned strings ending in a NUL byte, the
/// identity, the limits and the open log and cgroup.
#[derive(Debug)]
pub struct LaunchSpec {
    program: Vec<u8>,
    home: Vec<u8>,
    argv: Vec<Vec<u8>>,
    envp: Vec<Vec<u8>>,
    groups: Vec<u32>,
    uid: u32,
    gid: u32,
    umask: u32,
    /// The profile's limits other than RLIMIT_NOFILE (soft = hard).
    limits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// The profile's RLIMIT_NOFILE, if it sets one (else the launcher's default for servers).
    nofile: Option<u64>,
    log: OwnedFd,
    cgroup: Option<OwnedFd>,
    timeout: Duration,
    pause_before_exec: bool,
    summary: SpecSummary,
}

/// Inputs of [`LaunchSpec::new`].
#[derive(Debug)]
pub struct LaunchInput<'a> {
    pub user: &'a str,
    pub uid: u32,
    pub gid: u32,
    /// Full group list; passed to setgroups as is.
    pub groups: &'a [u32],
    pub home: &'a std::path::Path,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub umask: u32,
    /// The profile's resource limits (soft = hard).
    pub limits: &'a [(crate::config::Rlimit, u64)],
    /// Where stdout and stderr go.
    pub log: OwnedFd,
    /// The server's cgroup directory, if it has one: the process is created inside it.
    pub cgroup: Option<OwnedFd>,
    /// A process that has not executed its program after this long is killed.
    pub timeout: Duration,
}

fn c_bytes(what: &'static str, s: &[u8], user: &str) -> Result<Vec<u8>, LaunchError> {
    if s.contains(&0) {
        return Err(LaunchError::Parent {
            user: user.to_string(),
            what,
            source: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
        });
    }
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s);
    v.push(0);
    Ok(v)
}

impl LaunchSpec {
    pub fn new(input: LaunchInput<'_>) -> Result<LaunchSpec, LaunchError> {
        use std::os::unix::ffi::OsStrExt;
        let user = input.user;
        let Some(first) = input.argv.first() else {
            return Err(LaunchError::Parent {
                user: user.to_string(),
                what: "command",
                source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
            });
        };
        let argv = input
            .argv
            .iter()
            .map(|a| c_bytes("argument", a.as_bytes(), user))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = input
            .env
            .iter()
            .map(|(k, v)| c_bytes("environment", format!("{k}={v}").as_bytes(), user))
            .collect::<Result<Vec<_>, _>>()?;
        let mut limits = Vec::new();
        let mut nofile = None;
        for &(limit, value) in input.limits {
            if limit == crate::config::Rlimit::Nofile {
                nofile = Some(value);
            } else {
                limits.push((limit.resource(), value));
            }
        }
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
            program: c_bytes("program", first.as_bytes(), user)?,
            home: c_bytes("home directory", input.home.as_os_str().as_bytes(), user)?,
            argv,
            envp,
            groups: input.groups.to_vec(),
            uid: input.uid,
            gid: input.gid,
            umask: input.umask,
            limits,
            nofile,
            log: input.log,
            cgroup: input.cgroup,
            timeout: input.timeout,
            pause_before_exec: false,
            summary: SpecSummary {
                user: user.to_string(),
                uid: input.uid,
                gid: input.gid,
                program: first.clone(),
                home: input.home.display().to_string(),
                limits: summary_limits,
                sets_nproc: input
                    .limits
                    .iter()
                    .any(|(l, _)| *l == crate::config::Rlimit::Nproc),
            },
        })
    }

    /// Tests only: the child stops itself (SIGSTOP) right before exec, as its user could stop
    /// it. The daemon never sets this.
    pub fn pause_before_exec(mut self) -> LaunchSpec {
        self.pause_before_exec = true;
        self
    }

    /// The log the server writes (the daemon keeps its descriptor, to watch the log's size).
    pub fn into_log(self) -> OwnedFd {
        self.log
    }
}

/// A started server: its pid and a pidfd the kernel made with it (so it can only ever refer to
/// that process). The server is a child of the daemon, which must reap it.
#[derive(Debug)]
pub struct Launched {
    pub pid: i32,
    pub pidfd: OwnedFd,
}
