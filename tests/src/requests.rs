//! Building requests for the daemon and checking its answers.

use spawnd_client::{Client, ClientError};
use spawnd_protocol::{ErrorKind, ErrorReply, ServerId, StartRequest, Started};

/// The id of `user`'s server named `server` (`""` for the default server).
pub fn sid(user: &str, server: &str) -> ServerId {
    ServerId::new(user, server)
}

/// A start request with no arguments, no environment and no port.
pub fn start_req(user: &str, server: &str, profile: &str) -> StartRequest {
    StartRequest {
        server: sid(user, server),
        profile: profile.to_owned(),
        args: Vec::new(),
        env: Vec::new(),
        port: None,
    }
}

/// Unwraps a daemon error of `kind` (panics on success or any other error).
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    kind: ErrorKind,
) -> ErrorReply {
    match result {
        Err(ClientError::Daemon(reply)) if reply.kind == kind => reply,
        other => panic!("expected a {kind} error from the daemon, got {other:?}"),
    }
}

/// Starts a server and fails the test with the daemon's answer if that does not work.
pub async fn start(client: &Client, req: StartRequest) -> Started {
    let what = format!("start {} (profile {:?})", req.server, req.profile);
    client
        .start(req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}
