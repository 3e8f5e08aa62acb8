//! What a valid configuration is: the [`Config`] and [`Profile`] types, the defaults and limits
//! of every key, and [`ConfigError`], the problems of a configuration file.
//!
//! A value of these types is only ever made by `settings.rs` and `profile.rs` from a file
//! without problems: the documentation of each field says what was checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::env::env_allowed;
use super::parse::Problem;
use super::rlimits::Rlimit;

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
/// Default for a profile's `umask`.
pub const DEFAULT_UMASK: u32 = 0o022;
/// Default for a profile's `interrupt_timeout`.
pub const DEFAULT_INTERRUPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for a profile's `term_timeout`.
pub const DEFAULT_TERM_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for a profile's `kill_timeout`.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The daemon's connection limits (issue: a daemon every host relies on must survive floods).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
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

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
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
    /// the ELF interpreter) passed [`check_program`](super::check_program) at load time.
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
    pub limits: Vec<(Rlimit, u64)>,
}

impl Profile {
    /// Whether a client-supplied variable name may pass: matches env_keep and is not forbidden.
    pub fn env_allowed(&self, name: &str) -> bool {
        env_allowed(&self.env_keep, name)
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
    pub limits: ConnectionLimits,
    /// How long a new server process may take to execute its program before it is killed.
    pub launch_timeout: Duration,
    pub default_profile: String,
    pub profiles: BTreeMap<String, Profile>,
}

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
