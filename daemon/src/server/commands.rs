//! What the daemon does for each request once it is authorized: start (handed to
//! [`crate::start`]), logs, health and status; and the owner lookup the authorization needs.
//! Poll, stop, signal and list are the supervisor's, called directly from the dispatch.

use super::{Daemon, Reply, err};
use crate::auth::{Peer, Role};
use crate::logs;
use crate::socket_access;
use crate::start::{self, Starter};
use spawnd_protocol::{
    DaemonStatus, ErrorKind, ErrorReply, LogTail, MAX_PACKET, Response, ServerId, StartRequest,
};
use std::sync::Arc;

impl Daemon {
    /// The uid a server belongs to, for a self-service user's request: the uid it runs as when
    /// the daemon knows it (whatever name it is listed under). For a server the daemon does
    /// not know (one it has forgotten, or its log), the peer's uid when the server is named
    /// after the peer's own account both ways: the peer's uid has that name, and that name has
    /// the peer's uid (another passwd entry sharing the uid, or one account's name in two
    /// directories, is not enough). Only the peer's own uid and name are ever looked up, so a
    /// peer cannot send the directory service after names of its choosing.
    pub(super) async fn owner_of(
        &self,
        peer: &Peer,
        id: &ServerId,
    ) -> Result<Option<u32>, ErrorReply> {
        if let Some(uid) = self.supervisor.uid_of(id) {
            return Ok(Some(uid));
        }
        let (uid, user) = (peer.uid, id.user.clone());
        let lookup = tokio::task::spawn_blocking(move || -> Result<Option<u32>, String> {
            use nix::unistd::{Uid, User};
            let own = User::from_uid(Uid::from_raw(uid))
                .map_err(|e| format!("could not look up uid {uid} in the passwd database: {e}"))?;
            if own.is_none_or(|own| own.name != user) {
                return Ok(None);
            }
            let named = User::from_name(&user).map_err(|e| {
                format!("could not look up user {user} in the passwd database: {e}")
            })?;
            Ok(named.filter(|named| named.uid.as_raw() == uid).map(|_| uid))
        })
        .await
        .map_err(|e| err(ErrorKind::Internal, format!("owner lookup failed: {e}")))?;
        lookup.map_err(|why| err(ErrorKind::Internal, why))
    }

    pub(super) async fn start(self: &Arc<Self>, peer: &Peer, req: &StartRequest) -> Reply {
        let config = self.config();
        let profile = start::profile_for(&config, req)?;
        // The user lookup (NSS may block), the checks and the launch happen on one blocking
        // thread: one hand-off per start.
        let me = self.clone();
        let (req, owner_uid) = (req.clone(), peer.uid);
        let started = tokio::task::spawn_blocking(move || {
            let starter = Starter {
                config: &config,
                supervisor: &me.supervisor,
                launcher: &me.launcher,
            };
            start::start(starter, owner_uid, &req, &profile)
        })
        .await
        .map_err(|e| err(ErrorKind::Internal, format!("start task failed: {e}")))?;
        Ok(Response::Started(started?))
    }

    pub(super) async fn logs(&self, id: &ServerId, lines: u32) -> Reply {
        let path = match self.supervisor.log_path(id) {
            Some(path) => path,
            None => logs::log_path(&self.config().log_dir, &id.user, &id.server),
        };
        let (p, id2) = (path.clone(), id.clone());
        let read = tokio::task::spawn_blocking(move || {
            logs::tail(&p, lines as usize, (MAX_PACKET - 8 * 1024) as u64)
        })
        .await
        .map_err(|e| err(ErrorKind::Internal, format!("log task failed: {e}")))?;
        let (mut lines, mut truncated) = read.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                err(
                    ErrorKind::NotFound,
                    format!("server {id2} has no log at {}", path.display()),
                )
            } else {
                err(
                    ErrorKind::Internal,
                    format!("could not read {}: {e}", path.display()),
                )
            }
        })?;
        // Keep the answer within one packet: each line costs its bytes plus a length prefix.
        let budget = MAX_PACKET - 1024 - path.as_os_str().len();
        let mut size: usize = lines.iter().map(|l| l.len() + 3).sum();
        let mut drop_front = 0;
        while size > budget && drop_front < lines.len() {
            size -= lines[drop_front].len() + 3;
            drop_front += 1;
        }
        if drop_front > 0 {
            lines.drain(..drop_front);
            truncated = true;
        }
        Ok(Response::Logs(LogTail {
            path: path.to_string_lossy().into_owned(),
            lines,
            truncated,
        }))
    }

    /// What the daemon finds wrong with its own set-up (NSS lookups: on a blocking thread).
    pub(super) async fn health(&self) -> Reply {
        let config = self.config();
        let problems = tokio::task::spawn_blocking(move || {
            socket_access::problems(&config.socket, config.hub_uid)
        })
        .await
        .map_err(|e| err(ErrorKind::Internal, format!("health task failed: {e}")))?;
        Ok(Response::Health(problems))
    }

    pub(super) fn status(&self, role: Role) -> Response {
        let (running, exited) = self.supervisor.counts();
        Response::Status(DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: spawnd_protocol::VERSION,
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            running,
            exited,
            tree_kill: self.supervisor.tree().describe(),
            capabilities: self.capabilities.clone(),
            your_role: role.to_string(),
        })
    }
}
