//! Wire protocol of spawnd, version 1.
//!
//! This crate holds the message types exchanged between the `spawnd` daemon and its clients
//! (the hub's `SpawndSpawner`, `spawnctl`) and the codec that turns them into packets. It does
//! no I/O. The byte-level format is specified in this crate's `README.md`, which is enough to
//! write a client in another language.
//!
//! In short: one message per `SOCK_SEQPACKET` packet, at most [`MAX_PACKET`] bytes, encoded
//! with postcard. Every packet is an [`Envelope`] `{ version, id, body }`; a request's body is a
//! [`Request`], a response's body a [`Response`] carrying the same `id`. Enums only ever grow by
//! appending variants, since the variant index is what goes on the wire.

#![forbid(unsafe_code)]

mod codec;
mod names;

pub use codec::{
    DecodeError, EncodeError, Header, check_request, decode_request, decode_response,
    encode_request, encode_response, peek_header,
};
pub use names::{
    NameError, env_name_is_valid, validate_profile_name, validate_server_name, validate_user_name,
};

use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this crate speaks. A peer sending any other version gets an
/// [`ErrorKind::Unsupported`] error naming both.
pub const VERSION: u16 = 1;

/// Largest packet either side sends or accepts, in bytes. A larger packet is refused.
pub const MAX_PACKET: usize = 64 * 1024;

/// Longest user name accepted (`useradd` stops at 32, directory services go further).
pub const MAX_USER_LEN: usize = 64;
/// Longest server name accepted (JupyterHub named servers).
pub const MAX_SERVER_LEN: usize = 64;
/// Longest profile name accepted.
pub const MAX_PROFILE_LEN: usize = 64;
/// Most arguments a start request may append to the profile's command.
pub const MAX_ARGS: usize = 256;
/// Most environment variables a start request may carry.
pub const MAX_ENV: usize = 512;
/// Longest single argument, environment name or value, in bytes.
pub const MAX_STRING: usize = 16 * 1024;
/// Most lines a `Logs` request may ask for.
pub const MAX_LOG_LINES: u32 = 10_000;
/// Most servers in one `List` page.
pub const MAX_LIST_PAGE: u32 = 200;

/// Every packet: a version, a request id chosen by the client (echoed in the response), and the
/// body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u16,
    pub id: u32,
    pub body: T,
}

/// A server is named by its user and its server name; `""` is the user's default server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServerId {
    pub user: String,
    pub server: String,
}

impl ServerId {
    pub fn new(user: impl Into<String>, server: impl Into<String>) -> Self {
        ServerId {
            user: user.into(),
            server: server.into(),
        }
    }

    /// Checks the user and server names (see [`validate_user_name`], [`validate_server_name`]).
    pub fn validate(&self) -> Result<(), NameError> {
        validate_user_name(&self.user)?;
        validate_server_name(&self.server)
    }
}

impl fmt::Display for ServerId {
    /// `alice` for the default server, `alice/gpu` for a named one (how `spawnctl` takes them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.server.is_empty() {
            write!(f, "{}", self.user)
        } else {
            write!(f, "{}/{}", self.user, self.server)
        }
    }
}

/// What the hub asks for when it starts a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    pub server: ServerId,
    /// Name of a profile in the daemon's configuration; `""` means the configured default.
    pub profile: String,
    /// Arguments appended to the profile's fixed command (the executable is never the client's).
    pub args: Vec<String>,
    /// Environment the client would like the server to have. Only names on the profile's
    /// allow-list are kept; the others are reported back in [`Started::dropped_env`].
    pub env: Vec<(String, String)>,
    /// The port the hub expects the server to listen on, if it chose one (recorded, reported).
    pub port: Option<u16>,
}

/// Requests, version 1. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Start a server. Answered with [`Response::Started`] once the server's program has been
    /// executed, or with an error.
    Start(StartRequest),
    /// Current state of a server. `instance`, when given, must be the current instance.
    Poll {
        server: ServerId,
        instance: Option<u64>,
    },
    /// Stop a server: SIGINT, then SIGTERM, then SIGKILL of its whole tree, with the profile's
    /// timeouts (`now` skips SIGINT). Answered when the server is gone.
    Stop {
        server: ServerId,
        instance: Option<u64>,
        now: bool,
    },
    /// Send one signal to the server's main process.
    Signal {
        server: ServerId,
        instance: Option<u64>,
        signal: i32,
    },
    /// One page of the servers the caller may see, in (user, server) order, starting after
    /// `after` (or from the beginning), at most `limit` (capped at [`MAX_LIST_PAGE`]).
    List { after: Option<ServerId>, limit: u32 },
    /// The last `lines` lines of a server's log (capped at [`MAX_LOG_LINES`] and by the packet
    /// size).
    Logs { server: ServerId, lines: u32 },
    /// The daemon's version, uptime, counts and supervision mode.
    Status,
    /// Problems the daemon sees with its own set-up (such as a socket the hub cannot reach).
    Health,
}

impl Request {
    /// A short lowercase name for logs and audits.
    pub fn action(&self) -> &'static str {
        match self {
            Request::Start(_) => "start",
            Request::Poll { .. } => "poll",
            Request::Stop { .. } => "stop",
            Request::Signal { .. } => "signal",
            Request::List { .. } => "list",
            Request::Logs { .. } => "logs",
            Request::Status => "status",
            Request::Health => "health",
        }
    }

    /// The server the request is about, if any.
    pub fn target(&self) -> Option<&ServerId> {
        match self {
            Request::Start(s) => Some(&s.server),
            Request::Poll { server, .. }
            | Request::Stop { server, .. }
            | Request::Signal { server, .. }
            | Request::Logs { server, .. } => Some(server),
            Request::List { .. } | Request::Status | Request::Health => None,
        }
    }
}

/// How a server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It ended while the daemon was not watching (for example across a daemon restart).
    Unknown,
}

impl ExitStatus {
    /// The number JupyterHub's `poll()` returns: the exit code, `-signal` when killed by a
    /// signal (as Python's subprocess does), 0 when unknown.
    pub fn as_poll_code(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => -s,
            ExitStatus::Unknown => 0,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExitStatus::Unknown => write!(f, "exit status unknown"),
        }
    }
}

/// Where a server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerState {
    Running,
    /// A stop is under way.
    Stopping,
    Exited(ExitStatus),
    /// The start request is still being carried out (the process is not executing yet).
    Starting,
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerState::Running => f.write_str("running"),
            ServerState::Stopping => f.write_str("stopping"),
            ServerState::Exited(_) => f.write_str("exited"),
            ServerState::Starting => f.write_str("starting"),
        }
    }
}

/// The answer to a successful `Start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub instance: u64,
    pub pid: u32,
    /// Environment names the client sent that the profile does not allow (values never echoed).
    pub dropped_env: Vec<String>,
    /// The server's log file on the daemon's host.
    pub log_path: String,
}

/// The answer to `Poll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Polled {
    pub instance: u64,
    pub pid: u32,
    pub state: ServerState,
}

/// One line of `List`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub server: ServerId,
    pub instance: u64,
    pub uid: u32,
    pub pid: u32,
    pub state: ServerState,
    pub profile: String,
    pub port: Option<u16>,
    /// When the server was started, seconds since the Unix epoch.
    pub started_at: u64,
    /// When it exited, seconds since the Unix epoch, if it has.
    pub exited_at: Option<u64>,
}

/// The answer to `List`: one page, and the key to pass as `after` for the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerPage {
    pub servers: Vec<ServerInfo>,
    pub next: Option<ServerId>,
}

/// The answer to `Logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTail {
    pub path: String,
    pub lines: Vec<String>,
    /// True when fewer lines than asked were returned because of the packet size.
    pub truncated: bool,
}

/// The answer to `Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The daemon's package version.
    pub version: String,
    pub protocol: u16,
    pub pid: u32,
    pub uptime_secs: u64,
    pub running: u32,
    pub exited: u32,
    /// How a server's whole process tree is found and killed: `cgroup-v2 (PATH)` or
    /// `process-group`.
    pub tree_kill: String,
    /// The daemon's effective capabilities, by name.
    pub capabilities: Vec<String>,
    /// The role the daemon gave the caller.
    pub your_role: String,
}

/// What went wrong, for programs. The message says it for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The caller's role does not allow this request.
    Unauthorized,
    /// The configuration's policy refuses the target user or profile.
    PolicyDenied,
    /// No such server (or not that instance).
    NotFound,
    /// A server with that name is already running or starting.
    AlreadyRunning,
    /// The request is malformed or breaks a limit.
    InvalidRequest,
    /// The server could not be started.
    SpawnFailed,
    /// The daemon is at a limit; try again.
    Busy,
    /// The daemon does not support this (for example another protocol version).
    Unsupported,
    /// A bug or a host failure inside the daemon.
    Internal,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::PolicyDenied => "PolicyDenied",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::AlreadyRunning => "AlreadyRunning",
            ErrorKind::InvalidRequest => "InvalidRequest",
            ErrorKind::SpawnFailed => "SpawnFailed",
            ErrorKind::Busy => "Busy",
            ErrorKind::Unsupported => "Unsupported",
            ErrorKind::Internal => "Internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed error as the daemon sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ErrorReply {
    pub kind: ErrorKind,
    /// Written for the operator who reads it in the hub's spawn page or in `spawnctl`.
    pub message: String,
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorReply {
            kind,
            message: message.into(),
        }
    }
}

/// Responses, version 1. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Error(ErrorReply),
    Started(Started),
    Polled(Polled),
    /// The server is gone; how it ended.
    Stopped {
        instance: u64,
        exit: ExitStatus,
    },
    /// The signal was delivered.
    Signalled,
    Servers(ServerPage),
    Logs(LogTail),
    Status(DaemonStatus),
    /// The answer to `Health`: each problem a sentence for the operator; empty when none.
    Health(Vec<String>),
}

#[cfg(test)]
mod tests;
