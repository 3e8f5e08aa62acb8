//! The daemon's configuration: `/etc/spawnd/spawnd.toml` (or `spawnd --config PATH`).
//!
//! [`Config::parse`] reads the TOML text, resolves the configured accounts through NSS and
//! validates everything it can without touching the directories the daemon will write (those
//! are checked by the daemon at start with [`check_private_dir`]). It never stops at the first
//! mistake: every problem is collected, each with the key it belongs to, so that an operator
//! running `spawnd check-config` sees the whole list at once.
//!
//! The file-system checks ([`check_program`], [`check_private_dir`]) are the guard against a
//! root process being tricked into running or writing something a user controls. They walk the
//! path one component at a time, following symbolic links themselves, so that every directory
//! crossed on the way (including those of intermediate links) is checked; [`check_program`]
//! does so for every file the command leads to (`#!` interpreters, `env`, the ELF interpreter).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Group, Uid, User};
use spawnd_protocol::{env_name_is_valid, validate_profile_name, validate_user_name};
use toml::{Table, Value};

mod program;
pub use program::{ProgramError, ProgramProblem, check_program};

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/spawnd/spawnd.toml";
/// Default for `socket`.
pub const DEFAULT_SOCKET: &str = "/run/spawnd/spawnd.sock";
/// Default for `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/spawnd";
/// Default for `log_dir`.
pub const DEFAULT_LOG_DIR: &str = "/var/log/spawnd";
/// Default for `log_keep`.
pub const DEFAULT_LOG_KEEP: u32 = 3;
/// Default for `log_max_size`: logs are root's and outside the users' quotas, so a notebook
/// that prints without end must not be able to fill the log file system.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 64 << 20;
/// Smallest accepted `log_max_size` (a cut keeps the newest half).
pub const MIN_LOG_MAX_SIZE: u64 = 64 << 10;
/// Largest accepted `log_keep`.
pub const MAX_LOG_KEEP: u32 = 100;
/// Default for `min_uid`.
pub const DEFAULT_MIN_UID: u32 = 1000;
/// Default for `default_profile`.
pub const DEFAULT_PROFILE: &str = "default";
/// Default for a profile's `path`.
pub const DEFAULT_SERVER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Default for a profile's `env_keep`.
pub const DEFAULT_ENV_KEEP: &[&str] = &["JUPYTERHUB_*", "JPY_*", "LANG", "LC_*", "TZ"];
/// Default for a profile's `umask`.
pub const DEFAULT_UMASK: u32 = 0o022;
/// Default for a profile's `interrupt_timeout`.
pub const DEFAULT_INTERRUPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for a profile's `term_timeout`.
pub const DEFAULT_TERM_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for a profile's `kill_timeout`.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest accepted stop timeout, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 3600;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Same limit as the kernel's (ELOOP).
const MAX_SYMLINK_HOPS: u32 = 40;

/// Variable names that start with one of these are never passed to a server.
const FORBIDDEN_PREFIXES: &[&str] = &["LD_", "MALLOC_"];
/// Variable names that are never passed to a server: glibc's "unsecure" variables (those it
/// strips for set-uid programs; TMPDIR excepted) and the ones spawnd sets from the passwd entry
/// and the profile.
const FORBIDDEN_NAMES: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TZDIR",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PATH",
];

const TOP_KEYS: &[&str] = &[
    "socket",
    "socket_group",
    "hub_user",
    "group",
    "admin_group",
    "self_service",
    "min_uid",
    "deny_users",
    "state_dir",
    "log_dir",
    "log_keep",
    "log_max_size",
    "cgroup",
    "on_shutdown",
    "max_connections",
    "max_connections_per_uid",
    "max_user_connections",
    "max_user_connections_per_uid",
    "max_requests_in_flight",
    "first_request_timeout",
    "launch_timeout",
    "idle_timeout",
    "send_timeout",
    "default_profile",
    "profiles",
];

const PROFILE_KEYS: &[&str] = &[
    "command",
    "path",
    "env",
    "env_keep",
    "umask",
    "allow_args",
    "interrupt_timeout",
    "term_timeout",
    "kill_timeout",
    "limits",
];

/// A resource limit a profile may set for its servers (`[profiles.NAME.limits]`), as
/// `limits.conf` does through PAM for a login: soft and hard both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Limit {
    As,
    Core,
    Cpu,
    Data,
    Fsize,
    Memlock,
    Nofile,
    Nproc,
    Stack,
}

impl Limit {
    const ALL: [Limit; 9] = [
        Limit::As,
        Limit::Core,
        Limit::Cpu,
        Limit::Data,
        Limit::Fsize,
        Limit::Memlock,
        Limit::Nofile,
        Limit::Nproc,
        Limit::Stack,
    ];

    /// The key in the configuration (the name `limits.conf` uses).
    pub fn key(self) -> &'static str {
        match self {
            Limit::As => "as",
            Limit::Core => "core",
            Limit::Cpu => "cpu",
            Limit::Data => "data",
            Limit::Fsize => "fsize",
            Limit::Memlock => "memlock",
            Limit::Nofile => "nofile",
            Limit::Nproc => "nproc",
            Limit::Stack => "stack",
        }
    }

    /// The `RLIMIT_*` resource.
    pub fn resource(self) -> libc::__rlimit_resource_t {
        match self {
            Limit::As => libc::RLIMIT_AS,
            Limit::Core => libc::RLIMIT_CORE,
            Limit::Cpu => libc::RLIMIT_CPU,
            Limit::Data => libc::RLIMIT_DATA,
            Limit::Fsize => libc::RLIMIT_FSIZE,
            Limit::Memlock => libc::RLIMIT_MEMLOCK,
            Limit::Nofile => libc::RLIMIT_NOFILE,
            Limit::Nproc => libc::RLIMIT_NPROC,
            Limit::Stack => libc::RLIMIT_STACK,
        }
    }

    /// Whether the limit counts bytes (and so takes K, M, G, T suffixes).
    fn is_bytes(self) -> bool {
        !matches!(self, Limit::Cpu | Limit::Nofile | Limit::Nproc)
    }
}

/// A limit's value: a number, or `u64::MAX` (`RLIM_INFINITY`) for "unlimited".
pub const UNLIMITED: u64 = libc::RLIM_INFINITY;

/// Default for `max_connections`: open connections at once, all peers together.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Default for `max_connections_per_uid`: what one uid may hold (the hub holds one connection
/// per client it makes, so this stays high).
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: u32 = 1024;
/// Default for `max_user_connections`: what self-service users may hold, all together. The rest
/// of `max_connections` is the hub's and the admins'.
pub const DEFAULT_MAX_USER_CONNECTIONS: u32 = 64;
/// Default for `max_user_connections_per_uid`: what one self-service user may hold.
pub const DEFAULT_MAX_USER_CONNECTIONS_PER_UID: u32 = 4;
/// Default for `max_requests_in_flight` (per connection).
pub const DEFAULT_MAX_REQUESTS_IN_FLIGHT: u32 = 64;
/// Default for `first_request_timeout`: a peer that connects and sends nothing is dropped.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `idle_timeout`: a connection with nothing in flight that sends nothing for this
/// long is closed. Well above the 30 s between a hub's polls of a running server.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default for `send_timeout`: a peer that leaves an answer unread for this long is
/// disconnected.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for `launch_timeout`: a new server process that has not executed its program after
/// this long (a home directory on a file system that hangs, a user who stopped it) is killed.
pub const DEFAULT_LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection limits (issue: a daemon every host relies on must survive floods).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections, all peers together.
    pub max_connections: u32,
    /// Open connections of one uid.
    pub max_connections_per_uid: u32,
    /// Open connections of self-service users (role `user`), all together: always less than
    /// `max_connections`, so that users can never take the hub's and the admins' connections.
    pub max_user_connections: u32,
    /// Open connections of one self-service user.
    pub max_user_connections_per_uid: u32,
    /// Requests of one connection being answered (past it: `Busy`); with the answers not sent
    /// yet, the connection never has more than this.
    pub max_requests_in_flight: u32,
    /// How long a new connection may stay silent before its first request.
    pub first_request_timeout: Duration,
    /// How long a connection with nothing in flight may stay silent after that.
    pub idle_timeout: Duration,
    /// How long one answer may wait for the peer to make room for it.
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            max_user_connections: DEFAULT_MAX_USER_CONNECTIONS,
            max_user_connections_per_uid: DEFAULT_MAX_USER_CONNECTIONS_PER_UID,
            max_requests_in_flight: DEFAULT_MAX_REQUESTS_IN_FLIGHT,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
        }
    }
}

/// What the daemon does with running servers when it is stopped (`on_shutdown = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnShutdown {
    /// Leave them running; the next daemon re-adopts them (the default).
    #[default]
    Keep,
    /// Stop every server (SIGINT, SIGTERM, SIGKILL of the tree) before exiting.
    Stop,
}

/// How servers are put into cgroups (`cgroup = ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSetting {
    /// The cgroup v2 mount + the daemon's own cgroup + `/spawnd`, or process groups when the
    /// host has no cgroup v2.
    Auto,
    /// Never use cgroups: process-group mode.
    Off,
    /// This directory is the base under which per-server cgroups are created.
    Path(PathBuf),
}

/// One `[profiles.NAME]` table: what a server is started with.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    /// `command[0]` is absolute, and it and what it runs (`#!` interpreters, `env`'s program,
    /// the ELF interpreter) passed [`check_program`] at load time.
    pub command: Vec<String>,
    /// PATH for the server.
    pub path: String,
    /// Fixed variables, set after the client's.
    pub env: BTreeMap<String, String>,
    /// Patterns for the client variables that may pass; a trailing `*` means prefix.
    pub env_keep: Vec<String>,
    pub umask: u32,
    /// May the hub append arguments to `command`?
    pub allow_args: bool,
    pub interrupt_timeout: Duration,
    pub term_timeout: Duration,
    pub kill_timeout: Duration,
    /// Resource limits for the servers (soft = hard), sorted by limit.
    pub limits: Vec<(Limit, u64)>,
}

impl Profile {
    /// Whether a client-supplied variable name may pass: matches env_keep and is not forbidden.
    pub fn env_allowed(&self, name: &str) -> bool {
        env_name_is_valid(name)
            && !env_forbidden(name)
            && self
                .env_keep
                .iter()
                .any(|pattern| pattern_matches(pattern, name))
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Names never passed to a server (LD_*, glibc unsecure vars..., HOME/USER/LOGNAME/SHELL/PATH).
pub fn env_forbidden(name: &str) -> bool {
    FORBIDDEN_PREFIXES.iter().any(|p| name.starts_with(p)) || FORBIDDEN_NAMES.contains(&name)
}

/// A forbidden name (or `PREFIX*` family) that `pattern` would admit, if any.
fn pattern_admits_forbidden(pattern: &str) -> Option<String> {
    match pattern.strip_suffix('*') {
        None => env_forbidden(pattern).then(|| pattern.to_owned()),
        Some(prefix) => {
            if let Some(fp) = FORBIDDEN_PREFIXES
                .iter()
                .find(|fp| fp.starts_with(prefix) || prefix.starts_with(*fp))
            {
                return Some(format!("{fp}*"));
            }
            FORBIDDEN_NAMES
                .iter()
                .find(|n| n.starts_with(prefix))
                .map(|n| (*n).to_owned())
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    pub socket: PathBuf,
    /// `socket_group` resolved; by default the hub user's primary gid.
    pub socket_gid: u32,
    pub hub_user: String,
    pub hub_uid: u32,
    pub group: String,
    pub group_gid: u32,
    pub admin_group: Option<String>,
    pub admin_gid: Option<u32>,
    pub self_service: bool,
    pub min_uid: u32,
    pub deny_users: BTreeSet<String>,
    /// The uids of the `deny_users` that exist (looked up at load and at each reload), so that
    /// another name for the same account (a second passwd entry with its uid, an alias in a
    /// directory service) is refused too.
    pub deny_uids: BTreeSet<u32>,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub log_keep: u32,
    /// A running server's log is cut (its oldest part removed) when it grows past this many
    /// bytes; `None`: never.
    pub log_max_size: Option<u64>,
    pub cgroup: CgroupSetting,
    pub on_shutdown: OnShutdown,
    pub limits: Limits,
    /// How long a new server process may take to execute its program before it is killed.
    pub launch_timeout: Duration,
    pub default_profile: String,
    pub profiles: BTreeMap<String, Profile>,
}

/// One thing wrong with the configuration. Displays as `KEY: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The TOML key (`socket`, `profiles.default.command`), or `(syntax)` / `(file)`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for Problem {}

/// Everything wrong with a configuration file. Displays one line per problem:
/// `PATH: KEY: message`.
// Not derived with thiserror: it would take the `source` field for the error source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {problem}", self.source.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if path.exists()
            && let Err(message) = check_config_file(path)
        {
            return Err(ConfigError {
                source: path.to_path_buf(),
                problems: vec![Problem {
                    key: "(file)".to_owned(),
                    message: format!(
                        "the configuration file must be root's and writable only by root: \
                         {message}"
                    ),
                }],
            });
        }
        match fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) => {
                let hint = if e.kind() == io::ErrorKind::NotFound {
                    "; create it (see the example spawnd.toml) or pass --config PATH".to_owned()
                } else {
                    String::new()
                };
                Err(ConfigError {
                    source: path.to_path_buf(),
                    problems: vec![Problem {
                        key: "(file)".to_owned(),
                        message: format!("cannot read the configuration file: {e}{hint}"),
                    }],
                })
            }
        }
    }

    /// Parses and validates configuration text; `source` is only used to name it.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let mut table: Table = match text.parse() {
            Ok(table) => table,
            Err(e) => {
                return Err(ConfigError {
                    source: source.to_path_buf(),
                    problems: vec![syntax_problem(text, &e)],
                });
            }
        };
        let mut p = Problems::default();
        p.unknown_keys(&table, TOP_KEYS, "", "top level");

        let socket = take_abs_path(&mut table, "socket", "socket", DEFAULT_SOCKET, &mut p);
        if let Some(socket) = &socket {
            check_socket_path(socket, &mut p);
        }

        let hub = match take_string(&mut table, "hub_user", "hub_user", &mut p) {
            Got::Absent => {
                p.add(
                    "hub_user",
                    "missing; set it to the account JupyterHub runs as, e.g. hub_user = \
                     \"jupyterhub\"",
                );
                None
            }
            Got::Invalid => None,
            Got::Value(name) => lookup_user(&name, "hub_user", &mut p).and_then(|user| {
                if user.uid.is_root() {
                    p.add(
                        "hub_user",
                        format!(
                            "{name:?} is root (uid 0); the hub must run as an unprivileged \
                             account, e.g. hub_user = \"jupyterhub\""
                        ),
                    );
                    None
                } else {
                    Some((name, user.uid.as_raw(), user.gid.as_raw()))
                }
            }),
        };

        let group = match take_string(&mut table, "group", "group", &mut p) {
            Got::Absent => {
                p.add(
                    "group",
                    "missing; set it to the group whose members may have a server started, \
                     e.g. group = \"jupyterhub-users\"",
                );
                None
            }
            Got::Invalid => None,
            Got::Value(name) => lookup_group(&name, "group", &mut p).map(|gid| (name, gid)),
        };

        let admin = match take_string(&mut table, "admin_group", "admin_group", &mut p) {
            Got::Absent => Some(None),
            Got::Invalid => None,
            Got::Value(name) => {
                lookup_group(&name, "admin_group", &mut p).map(|gid| Some((name, gid)))
            }
        };

        let socket_gid = match take_string(&mut table, "socket_group", "socket_group", &mut p) {
            Got::Absent => hub.as_ref().map(|(_, _, gid)| *gid),
            Got::Invalid => None,
            Got::Value(name) => lookup_group(&name, "socket_group", &mut p),
        };

        let self_service =
            take_bool(&mut table, "self_service", "self_service", &mut p).or_default(false);

        let min_uid = match take_integer(&mut table, "min_uid", "min_uid", &mut p) {
            Got::Absent => Some(DEFAULT_MIN_UID),
            Got::Invalid => None,
            Got::Value(n) => match u32::try_from(n) {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    p.add(
                        "min_uid",
                        format!(
                            "{n} is out of range; use a uid between 1 and {}, usually 1000",
                            u32::MAX
                        ),
                    );
                    None
                }
            },
        };

        let deny_users = match take_string_array(&mut table, "deny_users", "deny_users", &mut p) {
            Got::Absent => Some(BTreeSet::new()),
            Got::Invalid => None,
            Got::Value(names) => {
                let mut ok = true;
                for name in &names {
                    if let Err(e) = validate_user_name(name) {
                        p.add(
                            "deny_users",
                            format!("{name:?} is not a valid user name ({e}); fix or remove it"),
                        );
                        ok = false;
                    }
                }
                ok.then(|| names.into_iter().collect())
            }
        };

        let state_dir = take_abs_path(
            &mut table,
            "state_dir",
            "state_dir",
            DEFAULT_STATE_DIR,
            &mut p,
        );
        let log_dir = take_abs_path(&mut table, "log_dir", "log_dir", DEFAULT_LOG_DIR, &mut p);

        let log_keep = match take_integer(&mut table, "log_keep", "log_keep", &mut p) {
            Got::Absent => Some(DEFAULT_LOG_KEEP),
            Got::Invalid => None,
            Got::Value(n) => match u32::try_from(n) {
                Ok(n) if n <= MAX_LOG_KEEP => Some(n),
                _ => {
                    p.add(
                        "log_keep",
                        format!(
                            "{n} is out of range; keep between 0 and {MAX_LOG_KEEP} rotated logs"
                        ),
                    );
                    None
                }
            },
        };

        let log_max_size = match table.remove("log_max_size") {
            None => Some(Some(DEFAULT_LOG_MAX_SIZE)),
            Some(Value::String(s)) if s == "unlimited" => Some(None),
            Some(v) => {
                let size = match &v {
                    Value::Integer(n) => u64::try_from(*n).ok(),
                    Value::String(s) => parse_size(s),
                    _ => None,
                };
                match size {
                    Some(n) if n >= MIN_LOG_MAX_SIZE => Some(Some(n)),
                    _ => {
                        p.add(
                            "log_max_size",
                            format!(
                                "{v} is not a size of at least 64K; give bytes or a size such \
                                 as \"64M\", or \"unlimited\""
                            ),
                        );
                        None
                    }
                }
            }
        };

        let cgroup = match take_string(&mut table, "cgroup", "cgroup", &mut p) {
            Got::Absent => Some(CgroupSetting::Auto),
            Got::Invalid => None,
            Got::Value(s) if s == "auto" => Some(CgroupSetting::Auto),
            Got::Value(s) if s == "off" => Some(CgroupSetting::Off),
            Got::Value(s) => {
                if s.starts_with('/') && !s.contains('\0') {
                    Some(CgroupSetting::Path(PathBuf::from(s)))
                } else {
                    p.add(
                        "cgroup",
                        format!(
                            "{s:?} is neither \"auto\", \"off\" nor an absolute path; use one \
                             of those"
                        ),
                    );
                    None
                }
            }
        };

        let on_shutdown = match take_string(&mut table, "on_shutdown", "on_shutdown", &mut p) {
            Got::Absent => Some(OnShutdown::Keep),
            Got::Invalid => None,
            Got::Value(s) if s == "keep" => Some(OnShutdown::Keep),
            Got::Value(s) if s == "stop" => Some(OnShutdown::Stop),
            Got::Value(s) => {
                p.add(
                    "on_shutdown",
                    format!("{s:?} is neither \"keep\" nor \"stop\"; use one of those"),
                );
                None
            }
        };

        let mut count = |name: &str, default: u32, max: u32| -> u32 {
            match take_integer(&mut table, name, name, &mut p) {
                Got::Absent | Got::Invalid => default,
                Got::Value(n) => match u32::try_from(n) {
                    Ok(n) if (1..=max).contains(&n) => n,
                    _ => {
                        p.add(name, format!("{n} is out of range; use 1 to {max}"));
                        default
                    }
                },
            }
        };
        let max_connections = count("max_connections", DEFAULT_MAX_CONNECTIONS, 1 << 20);
        let max_connections_per_uid = count(
            "max_connections_per_uid",
            DEFAULT_MAX_CONNECTIONS_PER_UID,
            1 << 20,
        );
        let max_user_connections = count(
            "max_user_connections",
            DEFAULT_MAX_USER_CONNECTIONS,
            1 << 20,
        );
        let max_user_connections_per_uid = count(
            "max_user_connections_per_uid",
            DEFAULT_MAX_USER_CONNECTIONS_PER_UID,
            1 << 20,
        );
        let max_requests_in_flight = count(
            "max_requests_in_flight",
            DEFAULT_MAX_REQUESTS_IN_FLIGHT,
            1 << 16,
        );
        let mut seconds = |name: &str, default: Duration, positive: bool| -> Duration {
            let d = take_seconds(&mut table, name, name, default, &mut p);
            if positive && d.is_zero() {
                p.add(
                    name,
                    format!(
                        "must be more than 0 seconds (the default is {})",
                        default.as_secs()
                    ),
                );
                return default;
            }
            d
        };
        let first_request_timeout = seconds(
            "first_request_timeout",
            DEFAULT_FIRST_REQUEST_TIMEOUT,
            false,
        );
        let idle_timeout = seconds("idle_timeout", DEFAULT_IDLE_TIMEOUT, true);
        let send_timeout = seconds("send_timeout", DEFAULT_SEND_TIMEOUT, true);
        let limits = Limits {
            max_connections,
            max_connections_per_uid,
            max_user_connections,
            max_user_connections_per_uid,
            max_requests_in_flight,
            first_request_timeout,
            idle_timeout,
            send_timeout,
        };
        check_reserve(&limits, self_service.unwrap_or_default(), &mut p);

        let launch_timeout = take_seconds(
            &mut table,
            "launch_timeout",
            "launch_timeout",
            DEFAULT_LAUNCH_TIMEOUT,
            &mut p,
        );
        if launch_timeout.is_zero() {
            p.add(
                "launch_timeout",
                "0 would kill every server before it starts; give a number of seconds above 0",
            );
        }

        let default_profile =
            match take_string(&mut table, "default_profile", "default_profile", &mut p) {
                Got::Absent => Some(DEFAULT_PROFILE.to_owned()),
                Got::Invalid => None,
                Got::Value(s) => Some(s),
            };

        let mut profiles = BTreeMap::new();
        match table.remove("profiles") {
            None => p.add(
                "profiles",
                "no profile is defined; add at least one, e.g. [profiles.default] with command = \
                 [\"/opt/jupyterhub/bin/jupyterhub-singleuser\"]",
            ),
            Some(Value::Table(t)) => {
                if t.is_empty() {
                    p.add(
                        "profiles",
                        "no profile is defined; add at least one, e.g. [profiles.default] with \
                         command = [\"/opt/jupyterhub/bin/jupyterhub-singleuser\"]",
                    );
                }
                if let Some(default) = &default_profile
                    && !t.contains_key(default)
                {
                    let known: Vec<&str> = t.keys().map(String::as_str).collect();
                    p.add(
                        "default_profile",
                        if known.is_empty() {
                            format!("{default:?} names no profile; define [profiles.{default}]")
                        } else {
                            format!(
                                "{default:?} names no profile; use one of {} or define \
                                 [profiles.{}]",
                                known.join(", "),
                                quote_key(default)
                            )
                        },
                    );
                }
                for (name, value) in t {
                    if let Some(profile) = parse_profile(&name, value, &mut p) {
                        profiles.insert(name, profile);
                    }
                }
            }
            Some(other) => p.wrong_type("profiles", "a table of [profiles.NAME] tables", &other),
        }

        if !p.0.is_empty() {
            return Err(ConfigError {
                source: source.to_path_buf(),
                problems: p.0,
            });
        }
        // Every None above recorded a problem, so these defaults are never used.
        let (hub_user, hub_uid, _) = hub.unwrap_or_default();
        let (group, group_gid) = group.unwrap_or_default();
        let admin = admin.flatten();
        Ok(Config {
            source: source.to_path_buf(),
            socket: socket.unwrap_or_default(),
            socket_gid: socket_gid.unwrap_or_default(),
            hub_user,
            hub_uid,
            group,
            group_gid,
            admin_group: admin.as_ref().map(|(name, _)| name.clone()),
            admin_gid: admin.map(|(_, gid)| gid),
            self_service: self_service.unwrap_or_default(),
            min_uid: min_uid.unwrap_or(DEFAULT_MIN_UID),
            deny_uids: deny_users
                .iter()
                .flatten()
                .filter_map(|name| User::from_name(name).ok().flatten())
                .map(|u| u.uid.as_raw())
                .collect(),
            deny_users: deny_users.unwrap_or_default(),
            state_dir: state_dir.unwrap_or_default(),
            log_dir: log_dir.unwrap_or_default(),
            log_keep: log_keep.unwrap_or_default(),
            log_max_size: log_max_size.flatten(),
            cgroup: cgroup.unwrap_or(CgroupSetting::Auto),
            on_shutdown: on_shutdown.unwrap_or_default(),
            limits,
            launch_timeout,
            default_profile: default_profile.unwrap_or_default(),
            profiles,
        })
    }

    /// The profile called `name`; `""` means the default profile.
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        let name = if name.is_empty() {
            self.default_profile.as_str()
        } else {
            name
        };
        self.profiles.get(name)
    }
}

/// The connections self-service users may hold must leave some for the hub and the admins, and
/// one uid at its limit (the hub) must leave some for an admin. Without `self_service` there are
/// no user connections.
fn check_reserve(l: &Limits, self_service: bool, p: &mut Problems) {
    let users = if self_service {
        if l.max_user_connections >= l.max_connections {
            p.add(
                "max_user_connections",
                format!(
                    "{} would let self-service users take every connection (max_connections is \
                     {}); use less than max_connections, so that the hub and the admins keep \
                     the rest",
                    l.max_user_connections, l.max_connections
                ),
            );
            return;
        }
        l.max_user_connections
    } else {
        0
    };
    let left = l.max_connections - users;
    if l.max_connections_per_uid >= left {
        let what = if self_service {
            format!(
                "every connection the self-service users leave (max_connections {} - \
                 max_user_connections {users})",
                l.max_connections
            )
        } else {
            format!("every connection (max_connections {})", l.max_connections)
        };
        p.add(
            "max_connections_per_uid",
            format!(
                "{} would let one uid (the hub) take {what}; use less than {left}, so that an \
                 admin can always connect",
                l.max_connections_per_uid
            ),
        );
    }
}

/// What `spawnd check-config [PATH]` does: prints `PATH: ok` to stdout and returns true, or
/// prints each problem as `PATH: KEY: message` to stderr and returns false.
pub fn check_config_command(path: &Path) -> bool {
    match Config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            true
        }
        Err(e) => {
            for problem in &e.problems {
                eprintln!("{}: {problem}", path.display());
            }
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading values out of the TOML table

#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn wrong_type(&mut self, key: &str, expected: &str, found: &Value) {
        self.add(
            key,
            format!("must be {expected}, found {}", type_name(found)),
        );
    }

    /// One problem per key of `table` that is not in `known`. `prefix` is prepended to keys.
    fn unknown_keys(&mut self, table: &Table, known: &[&str], prefix: &str, place: &str) {
        for key in table.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let message = match suggest(key, known) {
                Some(s) => format!("unknown key; did you mean {s}?"),
                None => format!(
                    "unknown key; the keys allowed at {place} are {}",
                    known.join(", ")
                ),
            };
            self.add(&format!("{prefix}{}", quote_key(key)), message);
        }
    }
}

/// The closest known key to a misspelt one, if it is close enough to be a typo.
fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase().replace('-', "_");
    known
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len() / 2 + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A key as it would be written in TOML: bare when possible, quoted otherwise.
fn quote_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim().to_owned();
    let message = match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let before = text.get(..start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    };
    Problem {
        key: "(syntax)".to_owned(),
        message: format!("{message}; fix the TOML syntax"),
    }
}

/// The outcome of reading one key.
#[derive(Debug)]
enum Got<T> {
    /// The key is not there.
    Absent,
    /// The key is there but wrong; a problem has been recorded.
    Invalid,
    Value(T),
}

impl<T> Got<T> {
    /// `None` when invalid (a problem was recorded), the value or the default otherwise.
    fn or_default(self, default: T) -> Option<T> {
        match self {
            Got::Absent => Some(default),
            Got::Invalid => None,
            Got::Value(v) => Some(v),
        }
    }
}

fn take_string(t: &mut Table, name: &str, key: &str, p: &mut Problems) -> Got<String> {
    match t.remove(name) {
        None => Got::Absent,
        Some(Value::String(s)) => {
            if s.contains('\0') {
                p.add(key, "contains a NUL character; remove it");
                Got::Invalid
            } else {
                Got::Value(s)
            }
        }
        Some(other) => {
            p.wrong_type(key, "a string", &other);
            Got::Invalid
        }
    }
}

fn take_bool(t: &mut Table, name: &str, key: &str, p: &mut Problems) -> Got<bool> {
    match t.remove(name) {
        None => Got::Absent,
        Some(Value::Boolean(b)) => Got::Value(b),
        Some(other) => {
            p.wrong_type(key, "true or false", &other);
            Got::Invalid
        }
    }
}

fn take_integer(t: &mut Table, name: &str, key: &str, p: &mut Problems) -> Got<i64> {
    match t.remove(name) {
        None => Got::Absent,
        Some(Value::Integer(n)) => Got::Value(n),
        Some(other) => {
            p.wrong_type(key, "an integer", &other);
            Got::Invalid
        }
    }
}

/// An array of strings; every bad element is reported.
fn take_string_array(t: &mut Table, name: &str, key: &str, p: &mut Problems) -> Got<Vec<String>> {
    match t.remove(name) {
        None => Got::Absent,
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) if s.contains('\0') => {
                        p.add(
                            key,
                            format!("element {i} ({s:?}) contains a NUL character; remove it"),
                        );
                        ok = false;
                    }
                    Value::String(s) => out.push(s),
                    other => {
                        p.add(
                            key,
                            format!("element {i} must be a string, found {}", type_name(&other)),
                        );
                        ok = false;
                    }
                }
            }
            if ok { Got::Value(out) } else { Got::Invalid }
        }
        Some(other) => {
            p.wrong_type(key, "an array of strings", &other);
            Got::Invalid
        }
    }
}

fn take_abs_path(
    t: &mut Table,
    name: &str,
    key: &str,
    default: &str,
    p: &mut Problems,
) -> Option<PathBuf> {
    match take_string(t, name, key, p) {
        Got::Absent => Some(PathBuf::from(default)),
        Got::Invalid => None,
        Got::Value(s) if s.starts_with('/') => Some(PathBuf::from(s)),
        Got::Value(s) => {
            p.add(
                key,
                format!(
                    "{s:?} is not an absolute path; write it starting with '/', e.g. {default:?}"
                ),
            );
            None
        }
    }
}

fn check_socket_path(socket: &Path, p: &mut Problems) {
    let len = socket.as_os_str().len();
    if socket.file_name().is_none() || socket.as_os_str().to_string_lossy().ends_with('/') {
        p.add(
            "socket",
            format!(
                "{:?} does not name a file; give the socket's full path, e.g. {DEFAULT_SOCKET:?}",
                socket.display().to_string()
            ),
        );
    } else if len > MAX_SOCKET_PATH {
        p.add(
            "socket",
            format!(
                "{:?} is {len} bytes long; Unix socket paths are limited to {MAX_SOCKET_PATH} \
                 bytes, choose a shorter one",
                socket.display().to_string()
            ),
        );
    }
}

fn lookup_user(name: &str, key: &str, p: &mut Problems) -> Option<User> {
    if name.is_empty() {
        p.add(key, "is empty; give a user name");
        return None;
    }
    match User::from_name(name) {
        Ok(Some(user)) => Some(user),
        Ok(None) => {
            p.add(
                key,
                format!("user {name:?} does not exist; create it or correct the name"),
            );
            None
        }
        Err(e) => {
            p.add(key, format!("cannot look up user {name:?}: {e}; check NSS"));
            None
        }
    }
}

fn lookup_group(name: &str, key: &str, p: &mut Problems) -> Option<u32> {
    if name.is_empty() {
        p.add(key, "is empty; give a group name");
        return None;
    }
    match Group::from_name(name) {
        Ok(Some(group)) => Some(group.gid.as_raw()),
        Ok(None) => {
            p.add(
                key,
                format!("group {name:?} does not exist; create it or correct the name"),
            );
            None
        }
        Err(e) => {
            p.add(
                key,
                format!("cannot look up group {name:?}: {e}; check NSS"),
            );
            None
        }
    }
}

fn parse_profile(name: &str, value: Value, p: &mut Problems) -> Option<Profile> {
    let prefix = format!("profiles.{}", quote_key(name));
    let before = p.0.len();
    if name.is_empty() {
        p.add(&prefix, "the profile name is empty; give it a name");
    } else if let Err(e) = validate_profile_name(name) {
        p.add(&prefix, format!("{e}; rename the profile"));
    }
    let mut t = match value {
        Value::Table(t) => t,
        other => {
            p.wrong_type(&prefix, &format!("a table ([{prefix}])"), &other);
            return None;
        }
    };
    p.unknown_keys(
        &t,
        PROFILE_KEYS,
        &format!("{prefix}."),
        &format!("[{prefix}]"),
    );
    let key = |k: &str| format!("{prefix}.{k}");

    let before_command = p.0.len();
    let command = {
        let k = key("command");
        match take_string_array(&mut t, "command", &k, p) {
            Got::Absent => {
                p.add(
                    &k,
                    "missing; give the server's command line, e.g. command = \
                     [\"/opt/jupyterhub/bin/jupyterhub-singleuser\"]",
                );
                Vec::new()
            }
            Got::Invalid => Vec::new(),
            Got::Value(command) => {
                match command.first() {
                    None => p.add(
                        &k,
                        "is empty; give at least the executable, e.g. command = \
                         [\"/opt/jupyterhub/bin/jupyterhub-singleuser\"]",
                    ),
                    Some(exe) if !exe.starts_with('/') => p.add(
                        &k,
                        format!(
                            "the executable {exe:?} is not an absolute path; write its full \
                             path (PATH is not searched)"
                        ),
                    ),
                    // Checked with the profile's path, below.
                    Some(_) => {}
                }
                command
            }
        }
    };

    let command_ok = p.0.len() == before_command;
    let before_path = p.0.len();
    let path = {
        let k = key("path");
        match take_string(&mut t, "path", &k, p) {
            Got::Absent => DEFAULT_SERVER_PATH.to_owned(),
            Got::Invalid => String::new(),
            Got::Value(path) => {
                if path.is_empty() {
                    p.add(
                        &k,
                        format!("is empty; give a PATH such as {DEFAULT_SERVER_PATH:?}"),
                    );
                } else {
                    for entry in path.split(':') {
                        if entry.is_empty() {
                            p.add(
                                &k,
                                format!(
                                    "{path:?} has an empty entry (it would mean the current \
                                     directory); remove the extra ':'"
                                ),
                            );
                        } else if !entry.starts_with('/') {
                            p.add(
                                &k,
                                format!(
                                    "entry {entry:?} is not an absolute directory; use absolute \
                                     directories only"
                                ),
                            );
                        }
                    }
                }
                path
            }
        }
    };
    if command_ok && let Some(exe) = command.first() {
        // `env` in the chain searches the profile's path; a bad path is reported above.
        let search_path = (p.0.len() == before_path).then_some(path.as_str());
        match program::check_chain(&command, search_path) {
            Ok(()) => {}
            Err(e) if e.is_missing() => {
                p.add(
                    &key("command"),
                    format!("the executable {exe:?} cannot run: {e}"),
                );
            }
            Err(e) => p.add(
                &key("command"),
                format!("the executable {exe:?} cannot be trusted: {e}"),
            ),
        }
    }

    let env = {
        let k = key("env");
        let mut env = BTreeMap::new();
        match t.remove("env") {
            None => {}
            Some(Value::Table(vars)) => {
                for (var, value) in vars {
                    if !env_name_is_valid(&var) {
                        p.add(
                            &k,
                            format!(
                                "{var:?} is not a valid variable name; use letters, digits and \
                                 '_', not starting with a digit"
                            ),
                        );
                    } else if env_forbidden(&var) {
                        p.add(
                            &k,
                            format!(
                                "{var} may not be set for a server (loader, libc and \
                                 identity variables are never passed); remove it"
                            ),
                        );
                    }
                    match value {
                        Value::String(s) if s.contains('\0') => p.add(
                            &k,
                            format!("the value of {var} contains a NUL character; remove it"),
                        ),
                        Value::String(s) => {
                            env.insert(var, s);
                        }
                        other => p.add(
                            &k,
                            format!(
                                "the value of {var} must be a string, found {}; quote it",
                                type_name(&other)
                            ),
                        ),
                    }
                }
            }
            Some(other) => p.wrong_type(&k, "a table of NAME = \"value\"", &other),
        }
        env
    };

    let env_keep = {
        let k = key("env_keep");
        match take_string_array(&mut t, "env_keep", &k, p) {
            Got::Absent => DEFAULT_ENV_KEEP.iter().map(|s| (*s).to_owned()).collect(),
            Got::Invalid => Vec::new(),
            Got::Value(patterns) => {
                for pattern in &patterns {
                    let base = pattern.strip_suffix('*').unwrap_or(pattern);
                    if pattern.is_empty() || (!base.is_empty() && !env_name_is_valid(base)) {
                        p.add(
                            &k,
                            format!(
                                "{pattern:?} is not a valid pattern; use a variable name, \
                                 optionally ending in '*' to match a prefix"
                            ),
                        );
                    } else if let Some(bad) = pattern_admits_forbidden(pattern) {
                        p.add(
                            &k,
                            format!(
                                "{pattern:?} would admit {bad}, which is never passed to a \
                                 server; use a narrower pattern"
                            ),
                        );
                    }
                }
                patterns
            }
        }
    };

    let umask = {
        let k = key("umask");
        match t.remove("umask") {
            None => DEFAULT_UMASK,
            Some(Value::String(s)) => match parse_umask(&s) {
                Some(umask) => umask,
                None => {
                    p.add(
                        &k,
                        format!(
                            "{s:?} is not an octal umask of at most 0777; write it like \
                             \"0022\" or \"077\""
                        ),
                    );
                    DEFAULT_UMASK
                }
            },
            Some(Value::Integer(n)) => {
                p.add(
                    &k,
                    format!(
                        "must be an octal string, found the integer {n}; write it in quotes, \
                         e.g. umask = \"0022\""
                    ),
                );
                DEFAULT_UMASK
            }
            Some(other) => {
                p.wrong_type(&k, "an octal string such as \"0022\"", &other);
                DEFAULT_UMASK
            }
        }
    };

    let allow_args = take_bool(&mut t, "allow_args", &key("allow_args"), p)
        .or_default(true)
        .unwrap_or(true);
    let interrupt_timeout = take_seconds(
        &mut t,
        "interrupt_timeout",
        &key("interrupt_timeout"),
        DEFAULT_INTERRUPT_TIMEOUT,
        p,
    );
    let term_timeout = take_seconds(
        &mut t,
        "term_timeout",
        &key("term_timeout"),
        DEFAULT_TERM_TIMEOUT,
        p,
    );
    let kill_timeout = take_seconds(
        &mut t,
        "kill_timeout",
        &key("kill_timeout"),
        DEFAULT_KILL_TIMEOUT,
        p,
    );

    let limits = parse_limits(t.remove("limits"), &key("limits"), p);

    (p.0.len() == before).then(|| Profile {
        name: name.to_owned(),
        command,
        path,
        env,
        env_keep,
        umask,
        allow_args,
        interrupt_timeout,
        term_timeout,
        kill_timeout,
        limits,
    })
}

/// `[profiles.NAME.limits]`: `KEY = number`, a size such as `"16G"` for the byte limits, or
/// `"unlimited"`.
fn parse_limits(value: Option<Value>, k: &str, p: &mut Problems) -> Vec<(Limit, u64)> {
    let table = match value {
        None => return Vec::new(),
        Some(Value::Table(t)) => t,
        Some(other) => {
            p.wrong_type(k, "a table of LIMIT = value", &other);
            return Vec::new();
        }
    };
    let mut limits = Vec::new();
    for (name, value) in table {
        let Some(limit) = Limit::ALL.into_iter().find(|l| l.key() == name) else {
            let known: Vec<&str> = Limit::ALL.iter().map(|l| l.key()).collect();
            p.add(
                k,
                format!(
                    "unknown limit {name:?}; the limits are {}",
                    known.join(", ")
                ),
            );
            continue;
        };
        let unit = if limit.is_bytes() {
            "bytes, or a size such as \"16G\" (K, M, G, T: powers of 1024)"
        } else if limit == Limit::Cpu {
            "seconds"
        } else {
            "a count"
        };
        let parsed = match &value {
            Value::Integer(n) => u64::try_from(*n).ok(),
            Value::String(s) if s == "unlimited" || s == "infinity" => Some(UNLIMITED),
            Value::String(s) if limit.is_bytes() => parse_size(s),
            _ => None,
        };
        match parsed {
            Some(UNLIMITED) if limit == Limit::Nofile => p.add(
                k,
                "nofile cannot be unlimited on Linux; give a number (at most \
                 /proc/sys/fs/nr_open)",
            ),
            Some(v) => limits.push((limit, v)),
            None => p.add(
                k,
                format!("{name} = {value} is not a valid limit; give {unit}, or \"unlimited\""),
            ),
        }
    }
    limits.sort();
    limits
}

/// `"512"`, `"64K"`, `"16G"` (powers of 1024) as bytes.
fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        b'T' | b't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

fn parse_umask(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o777)
}

fn take_seconds(
    t: &mut Table,
    name: &str,
    key: &str,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    let out_of_range = |shown: String| {
        format!(
            "{shown} is out of range; give a number of seconds between 0 and {MAX_TIMEOUT_SECS}"
        )
    };
    match t.remove(name) {
        None => default,
        Some(Value::Integer(n)) => match u64::try_from(n) {
            Ok(secs) if secs <= MAX_TIMEOUT_SECS => Duration::from_secs(secs),
            _ => {
                p.add(key, out_of_range(n.to_string()));
                default
            }
        },
        Some(Value::Float(f)) => {
            // `MAX_TIMEOUT_SECS` is small: exact as f64.
            #[allow(clippy::cast_precision_loss)]
            let max = MAX_TIMEOUT_SECS as f64;
            if f.is_finite() && (0.0..=max).contains(&f) {
                Duration::from_secs_f64(f)
            } else {
                p.add(key, out_of_range(f.to_string()));
                default
            }
        }
        Some(other) => {
            p.wrong_type(key, "a number of seconds", &other);
            default
        }
    }
}

// ---------------------------------------------------------------------------------------------
// File-system checks

/// What kind of problem a path has: it decides whether a start fails as a broken install or is
/// refused as unsafe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// Nothing is there: a component does not exist, or one on the way is not a directory.
    Absent,
    /// Something is there but cannot serve: the wrong type of file, no execute bit, a loop of
    /// symbolic links, or it cannot be inspected.
    Unusable,
    /// Someone other than root could change it (or what it leads to).
    Unsafe,
}

/// Why a path failed the file-system checks. Displays as a message for the operator that
/// names the offending path and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PathError {
    pub problem: PathProblem,
    /// The path the message is about (a directory on the way, a link, the file itself).
    pub path: PathBuf,
    pub message: String,
}

impl PathError {
    fn new(problem: PathProblem, path: &Path, message: String) -> PathError {
        PathError {
            problem,
            path: path.to_path_buf(),
            message,
        }
    }
}

/// The end of a successful walk: the fully resolved path and what `lstat` said of it.
#[derive(Debug)]
struct Walked {
    resolved: PathBuf,
    meta: fs::Metadata,
}

/// One file that will be executed: it and every directory above it must be owned by root and
/// not writable by group or others; it must be a regular file with an execute bit. This checks
/// the file alone; a profile's command goes through [`check_program`], which applies it to
/// every file of the chain (`#!` interpreters, what `env` finds, the ELF interpreter).
///
/// Symbolic links are followed one hop at a time: every link must be owned by root, and every
/// directory crossed on the way (the link's own parents, the directories of its target, and so
/// on) must pass. A directory writable by group or others is accepted on the way only when it
/// is root-owned and sticky (like `/tmp`), since nobody else can then replace the root-owned
/// entry inside it. The directory that directly holds the file (and the one that holds each
/// link to it) gets no sticky exception: others could put files beside the program, which a
/// script's interpreter (Python's `sys.path[0]`) or the dynamic loader (`$ORIGIN`) load.
fn check_executable(path: &Path) -> Result<Walked, PathError> {
    walk(path, Target::Executable)
}

/// A directory the daemon writes as root (socket dir, state dir, log root): must be owned by
/// root and not writable by group or others; every ancestor (and every symbolic link on the
/// way) must be owned by root and either not writable by group or others or sticky (like
/// `/tmp`). Does not create anything. `Err(message)` names the offending path and says what to
/// fix.
pub fn check_private_dir(path: &Path) -> Result<(), String> {
    walk(path, Target::PrivateDir)
        .map(drop)
        .map_err(|e| e.message)
}

/// The configuration file: whoever can change it decides who is an admin and what runs as
/// every user, so it must be a regular file owned by root and not writable by group or others,
/// reached through root-owned directories (as for [`check_private_dir`]). A relative path is
/// taken from the current directory.
pub fn check_config_file(path: &Path) -> Result<(), String> {
    let path =
        std::path::absolute(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    walk(&path, Target::ConfigFile)
        .map(drop)
        .map_err(|e| e.message)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Executable,
    PrivateDir,
    ConfigFile,
}

#[derive(Debug)]
enum Step {
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> Vec<Step> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(Step::Name(name.to_os_string())),
            Component::ParentDir => Some(Step::Up),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn walk(path: &Path, target: Target) -> Result<Walked, PathError> {
    if !path.is_absolute() {
        return Err(PathError::new(
            PathProblem::Unsafe,
            path,
            format!(
                "{} is not an absolute path; give its full path",
                path.display()
            ),
        ));
    }
    let root = Path::new("/");
    let root_meta = inspect(root)?;
    check_ancestor(root, &root_meta)?;

    // `current` is always a fully resolved directory that has passed the ancestor checks;
    // `current_meta` is what lstat said of it.
    let mut current = PathBuf::from("/");
    let mut current_meta = root_meta.clone();
    let mut pending: VecDeque<Step> = steps(path).into();
    let mut hops = 0;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            Step::Up => {
                current.pop();
                current_meta = inspect(&current)?;
                continue;
            }
            Step::Name(name) => name,
        };
        let candidate = current.join(&name);
        let meta = inspect(&candidate)?;
        let last = pending.is_empty();
        if last && target == Target::Executable {
            // The file itself, or a link to it: whoever can add entries beside it decides
            // what the program loads from its own directory.
            check_holder(&current, &current_meta, &candidate)?;
        }
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(PathError::new(
                    PathProblem::Unusable,
                    path,
                    format!(
                        "{} has too many levels of symbolic links; point it at the real file",
                        path.display()
                    ),
                ));
            }
            if meta.uid() != 0 {
                return Err(not_root_owned(&candidate, meta.uid(), true));
            }
            let link = fs::read_link(&candidate).map_err(|e| {
                PathError::new(
                    PathProblem::Unusable,
                    &candidate,
                    format!("cannot read the symbolic link {}: {e}", candidate.display()),
                )
            })?;
            if link.is_absolute() {
                current = PathBuf::from("/");
                current_meta = root_meta.clone();
            }
            let mut resolved: VecDeque<Step> = steps(&link).into();
            resolved.extend(pending);
            pending = resolved;
            continue;
        }
        if last {
            check_final(&candidate, &meta, target)?;
            return Ok(Walked {
                resolved: candidate,
                meta,
            });
        }
        if !file_type.is_dir() {
            return Err(PathError::new(
                PathProblem::Absent,
                &candidate,
                format!("{} is not a directory; fix the path", candidate.display()),
            ));
        }
        check_ancestor(&candidate, &meta)?;
        current = candidate;
        current_meta = meta;
    }
    // The path ended on a directory already checked as an ancestor ("/", or a trailing "..").
    check_final(&current, &current_meta, target)?;
    Ok(Walked {
        resolved: current,
        meta: current_meta,
    })
}

fn inspect(path: &Path) -> Result<fs::Metadata, PathError> {
    fs::symlink_metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            PathError::new(
                PathProblem::Absent,
                path,
                format!("{} does not exist", path.display()),
            )
        } else {
            PathError::new(
                PathProblem::Unusable,
                path,
                format!("cannot inspect {}: {e}", path.display()),
            )
        }
    })
}

fn describe_owner(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

fn not_root_owned(path: &Path, uid: u32, link: bool) -> PathError {
    PathError::new(
        PathProblem::Unsafe,
        path,
        format!(
            "{} is owned by {}, not root; run chown {}root {}",
            path.display(),
            describe_owner(uid),
            if link { "-h " } else { "" },
            path.display()
        ),
    )
}

fn group_or_other_writable(path: &Path, mode: u32) -> PathError {
    PathError::new(
        PathProblem::Unsafe,
        path,
        format!(
            "{} is writable by group or others (mode {:04o}); run chmod go-w {}",
            path.display(),
            mode & 0o7777,
            path.display()
        ),
    )
}

/// A directory on the way: root-owned, and not writable by group or others unless sticky.
fn check_ancestor(path: &Path, meta: &fs::Metadata) -> Result<(), PathError> {
    if meta.uid() != 0 {
        return Err(not_root_owned(path, meta.uid(), false));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(group_or_other_writable(path, mode));
    }
    Ok(())
}

/// The directory that directly holds a program (or a link to it), already checked as an
/// ancestor: not writable by group or others, sticky or not.
fn check_holder(dir: &Path, meta: &fs::Metadata, file: &Path) -> Result<(), PathError> {
    let mode = meta.mode();
    if mode & 0o022 == 0 {
        return Ok(());
    }
    Err(PathError::new(
        PathProblem::Unsafe,
        dir,
        format!(
            "{} holds {} and is writable by group or others (mode {:04o}), so others could \
             put files beside it that it loads (a script's modules, $ORIGIN libraries); run \
             chmod go-w {}, or move the program to a directory only root can write",
            dir.display(),
            file.display(),
            mode & 0o7777,
            dir.display()
        ),
    ))
}

fn check_final(path: &Path, meta: &fs::Metadata, target: Target) -> Result<(), PathError> {
    let mode = meta.mode();
    let unusable = |message: String| Err(PathError::new(PathProblem::Unusable, path, message));
    match target {
        Target::Executable => {
            if !meta.file_type().is_file() {
                return unusable(format!(
                    "{} is not a regular file; point the command at the executable itself",
                    path.display()
                ));
            }
            if meta.uid() != 0 {
                return Err(not_root_owned(path, meta.uid(), false));
            }
            if mode & 0o022 != 0 {
                return Err(group_or_other_writable(path, mode));
            }
            if mode & 0o111 == 0 {
                return unusable(format!(
                    "{} is not executable (mode {:04o}); run chmod 755 {}",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                ));
            }
        }
        Target::ConfigFile => {
            if !meta.file_type().is_file() {
                return unusable(format!("{} is not a regular file", path.display()));
            }
            if meta.uid() != 0 {
                return Err(not_root_owned(path, meta.uid(), false));
            }
            if mode & 0o022 != 0 {
                return Err(group_or_other_writable(path, mode));
            }
        }
        Target::PrivateDir => {
            if !meta.file_type().is_dir() {
                return unusable(format!(
                    "{} is not a directory; remove it or choose another path",
                    path.display()
                ));
            }
            if meta.uid() != 0 {
                return Err(not_root_owned(path, meta.uid(), false));
            }
            if mode & 0o022 != 0 {
                return Err(group_or_other_writable(path, mode));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
