//! The client's error type.

use spawnd_protocol::{EncodeError, ErrorKind, ErrorReply};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong talking to spawnd.
///
/// The messages are lowercase, say what failed and what to check; [`ClientError::Daemon`]
/// displays exactly as the daemon wrote it (`Kind: message`).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to (no such file, nothing listening, permission
    /// denied, ...).
    #[error("cannot connect to spawnd at {}: {source}; {}", .path.display(), connect_hint(.source))]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The daemon's listen backlog stayed full for the whole connect timeout: it is not
    /// accepting connections fast enough (overloaded or stuck).
    #[error(
        "cannot connect to spawnd at {}: its listen backlog stayed full for {} ms (the daemon is \
         not accepting connections: it is overloaded or stuck; check its log and `spawnctl \
         status`, then retry)",
        .path.display(),
        .waited.as_millis()
    )]
    Busy { path: PathBuf, waited: Duration },

    /// The connection ended while the call waited for its answer (the daemon stopped or
    /// restarted, refused this peer's credentials, or closed a connection whose answers were
    /// not read). The request may or may not have been carried out.
    #[error(
        "connection to spawnd was closed before it answered (the daemon stopped or restarted, \
         or it does not accept this user: check that it runs and that this user is the hub \
         user, an admin, or allowed self-service); connect again to retry"
    )]
    Disconnected,

    /// The connection had already been closed when the request was to be sent, so the daemon
    /// never received it and nothing was done. The daemon closes connections that stay idle
    /// for its `idle_timeout`, and all of them when it restarts: send the request again on a
    /// new connection ([`crate::ReconnectingClient`] does so by itself).
    #[error(
        "connection to spawnd was already closed, so the request was not sent (spawnd closes \
         connections idle for longer than its idle_timeout, and all of them when it restarts); \
         nothing was done: connect again and retry"
    )]
    Closed,

    /// The daemon answered with an error. Displays as the daemon wrote it: `Kind: message`.
    #[error(transparent)]
    Daemon(ErrorReply),

    /// The daemon sent something this client cannot read (malformed, oversized or unattributable
    /// packet).
    #[error("protocol error talking to spawnd: {0} (do the client and daemon versions match?)")]
    Protocol(String),

    /// The daemon answered with a response of the wrong kind for the request.
    #[error(
        "spawnd answered a {request} request with an unexpected {response} response (do the \
         client and daemon versions match?)"
    )]
    Unexpected {
        request: &'static str,
        response: &'static str,
    },

    /// The request could not be encoded (for example it is larger than a packet).
    #[error("request could not be sent: {0}")]
    Encode(#[from] EncodeError),

    /// A local failure setting up or using the connection.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl ClientError {
    /// The daemon's error kind, when the daemon answered with an error.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Daemon(reply) => Some(reply.kind),
            _ => None,
        }
    }

    /// The daemon's error, when it answered with one.
    pub fn daemon_error(&self) -> Option<&ErrorReply> {
        match self {
            ClientError::Daemon(reply) => Some(reply),
            _ => None,
        }
    }

    /// True when the daemon could not be reached or the connection to it broke: connect
    /// failures, a full listen backlog, a closed connection. Says nothing about the servers it
    /// supervises (they outlive the daemon), so a hub must not take this as "the server died".
    pub fn is_daemon_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Busy { .. }
                | ClientError::Disconnected
                | ClientError::Closed
        )
    }

    pub(crate) fn io(what: &'static str, source: io::Error) -> Self {
        ClientError::Io { what, source }
    }
}

/// What the operator should check for a connect error.
fn connect_hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
            "no socket at that path: is spawnd running, and is the socket path right \
             (spawnctl --socket or SPAWND_SOCKET, `socket` in spawnd.toml)?"
        }
        Some(libc::ECONNREFUSED) => {
            "the socket file exists but nothing listens on it: spawnd is not running (or, with \
             systemd, spawnd.socket is stopped); start it: `systemctl start spawnd.socket \
             spawnd.service`"
        }
        Some(libc::ENOTSOCK) => "that path is not a socket: is the socket path right?",
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "permission denied: this user must be in the socket's group (`socket_group` in \
             spawnd.toml, default the hub user's primary group) and the socket's mode 0660; \
             check `ls -l` of the socket and `id`"
        }
        Some(libc::EPROTOTYPE) => {
            "that socket is not a SOCK_SEQPACKET socket: is the path really spawnd's socket?"
        }
        Some(libc::ENAMETOOLONG) => "the socket path is too long for a Unix socket (107 bytes)",
        _ => "is spawnd running, and is the socket path right?",
    }
}
