//! The socket: admitting peers, reading requests, authorizing and dispatching them, auditing
//! every one, sending the answers. Each command's work is in [`commands`] (a start in
//! [`crate::start`]); a connection's transport (packets, slots, timeouts) in [`conn`].

mod commands;
mod conn;

pub use conn::peer_of;
use conn::{Conn, Packet, Take, recv_packet, send};

use crate::auth::{self, Peer, Role};
use crate::config::{Config, ConnectionLimits};
use crate::launch::Launcher;
use crate::supervisor::Supervisor;
use spawnd_protocol::{
    DecodeError, ErrorKind, ErrorReply, MAX_LIST_PAGE, Request, Response, decode_request,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

/// The daemon's shared state.
#[derive(Debug)]
pub struct Daemon {
    config: RwLock<Arc<Config>>,
    supervisor: Arc<Supervisor>,
    /// Creates every server (a process of its own, see [`crate::launch`]).
    launcher: Launcher,
    started: Instant,
    connections: Mutex<Connections>,
    /// The daemon's effective capabilities, read once (they do not change after start-up).
    capabilities: Vec<String>,
}

/// Open connections: in all, per peer uid, of self-service users together; and refusals in
/// progress.
#[derive(Debug, Default)]
struct Connections {
    total: u32,
    per_uid: HashMap<u32, u32>,
    /// Connections of the `user` role (self-service users), all together.
    users: u32,
    /// Refused connections still waiting to be answered `Busy`.
    refusing: u32,
}

/// Refused connections answered `Busy` at once at most: each waits up to
/// [`REFUSAL_WAIT`] for the peer's first request, so a peer retrying past a limit in a loop
/// must not make the daemon hold a descriptor per attempt. Past it, refused connections are
/// closed unread.
const MAX_REFUSALS: u32 = 64;
/// How long a refused connection may take to send the request its `Busy` answers.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// One admitted connection; counted until dropped.
#[derive(Debug)]
struct Admitted {
    daemon: Arc<Daemon>,
    uid: u32,
    user: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.daemon.connections();
        c.total = c.total.saturating_sub(1);
        if self.user {
            c.users = c.users.saturating_sub(1);
        }
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

/// One refusal in progress; counted until dropped.
#[derive(Debug)]
struct Refusal(Arc<Daemon>);

impl Drop for Refusal {
    fn drop(&mut self) {
        let mut c = self.0.connections();
        c.refusing = c.refusing.saturating_sub(1);
    }
}

type Reply = Result<Response, ErrorReply>;

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(kind, message)
}

impl Daemon {
    pub fn new(config: Config, supervisor: Arc<Supervisor>, launcher: Launcher) -> Arc<Daemon> {
        Arc::new(Daemon {
            config: RwLock::new(Arc::new(config)),
            supervisor,
            launcher,
            started: Instant::now(),
            connections: Mutex::new(Connections::default()),
            capabilities: crate::sys::effective_capabilities(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the configuration (after a successful reload); applies to the next requests.
    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    fn connections(&self) -> MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts connections until the listener fails for good.
    pub async fn serve(self: Arc<Self>, mut listener: UnixSeqpacketListener) {
        loop {
            let socket = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: keep the daemon up, back off a little.
                    tracing::error!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = match peer_of(&socket) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(target: "audit", "refused a connection: cannot read its credentials: {e}");
                    continue;
                }
            };
            let config = self.config();
            let Some(role) = auth::role_of(&peer, &config) else {
                tracing::warn!(
                    target: "audit",
                    peer_uid = peer.uid,
                    peer_pid = peer.pid,
                    "refused a connection: no role for this uid (not root, admin, hub or \
                     self-service user)"
                );
                // Dropping closes it before a byte is read.
                continue;
            };
            match self.admit(&peer, role, &config.limits) {
                Ok(admitted) => {
                    tracing::debug!(peer_uid = peer.uid, peer_pid = peer.pid, %role, "connection");
                    let conn = Arc::new(Conn::new(socket, peer, role, config.limits));
                    tokio::spawn(self.clone().connection(conn, admitted));
                }
                Err(why) => {
                    let refusal = self.refusal();
                    tracing::warn!(
                        target: "audit",
                        peer_uid = peer.uid,
                        peer_pid = peer.pid,
                        %role,
                        "refused a connection: {why}{}",
                        if refusal.is_none() {
                            format!(
                                "; closed unread, as {MAX_REFUSALS} other refused connections \
                                 are still being answered"
                            )
                        } else {
                            String::new()
                        }
                    );
                    if let Some(refusal) = refusal {
                        let timeout = config.limits.send_timeout;
                        tokio::spawn(refuse_busy(socket, why, timeout, refusal));
                    }
                }
            }
        }
    }

    /// Counts a new connection against the limits, or says which limit it hits. Self-service
    /// users have their own, smaller limits, so that they never take the connections the hub
    /// and the admins need.
    fn admit(
        self: &Arc<Self>,
        peer: &Peer,
        role: Role,
        limits: &ConnectionLimits,
    ) -> Result<Admitted, String> {
        let user = role == Role::User;
        let mut open = self.connections();
        let mine = open.per_uid.get(&peer.uid).copied().unwrap_or(0);
        if user && open.users >= limits.max_user_connections {
            return Err(format!(
                "self-service users hold {} open connections, spawnd's max_user_connections; \
                 try again shortly",
                open.users
            ));
        }
        if user && mine >= limits.max_user_connections_per_uid {
            return Err(format!(
                "uid {} has {mine} open connections, spawnd's max_user_connections_per_uid; \
                 close some (one connection serves any number of concurrent requests)",
                peer.uid
            ));
        }
        if open.total >= limits.max_connections {
            return Err(format!(
                "spawnd has {} open connections, its max_connections; try again shortly",
                open.total
            ));
        }
        if mine >= limits.max_connections_per_uid {
            return Err(format!(
                "uid {} has {mine} open connections, spawnd's max_connections_per_uid; close \
                 some (one connection serves any number of concurrent requests)",
                peer.uid
            ));
        }
        open.total += 1;
        if user {
            open.users += 1;
        }
        *open.per_uid.entry(peer.uid).or_insert(0) += 1;
        Ok(Admitted {
            daemon: self.clone(),
            uid: peer.uid,
            user,
        })
    }

    /// Counts a refusal in progress, unless [`MAX_REFUSALS`] are.
    fn refusal(self: &Arc<Self>) -> Option<Refusal> {
        let mut open = self.connections();
        if open.refusing >= MAX_REFUSALS {
            return None;
        }
        open.refusing += 1;
        Some(Refusal(self.clone()))
    }

    /// Reads and answers a connection's requests until the peer ends it, it stays idle for
    /// too long, or the peer stops reading its answers. Returns (and gives its place back)
    /// once every answer it owes has been sent.
    async fn connection(self: Arc<Self>, conn: Arc<Conn>, _admitted: Admitted) {
        let limits = conn.limits;
        let mut spoke = false;
        let mut draining = false;
        // A peer that connects and says nothing, or stops talking, must not hold a connection
        // for long. One timer for the connection's life, set again only when it fires (not
        // at every request): then the connection is closed, or the timer set for the end of
        // the idle time counted from its last packet or answer.
        let idle = tokio::time::sleep(limits.first_request_timeout);
        tokio::pin!(idle);
        loop {
            let received = tokio::select! {
                // A request that has arrived is read even when the timer has fired too.
                biased;
                received = recv_packet(&conn.socket) => received,
                () = &mut idle, if !draining => {
                    let timeout = if spoke {
                        limits.idle_timeout
                    } else {
                        limits.first_request_timeout
                    };
                    if let Some(later) = conn.idle_until(timeout) {
                        idle.as_mut().reset(later);
                    } else if conn.close_idle(spoke, timeout) {
                        draining = true;
                    } else {
                        break;
                    }
                    continue;
                }
            };
            if conn.is_shut() {
                break;
            }
            let packet = match received {
                Ok(packet) => packet,
                Err(e) => {
                    tracing::debug!(peer_uid = conn.peer.uid, "connection ended: {e}");
                    break;
                }
            };
            if !spoke && !matches!(packet, Packet::End) {
                spoke = true;
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + limits.idle_timeout);
            }
            let bytes = match packet {
                Packet::TooLarge => {
                    conn.touch();
                    conn.refuse_packet(&DecodeError::TooLarge).await;
                    continue;
                }
                Packet::End => break,
                Packet::Bytes(bytes) => bytes,
            };
            conn.touch();
            let envelope = match decode_request(&bytes) {
                Ok(env) => env,
                Err(e) => {
                    conn.refuse_packet(&e).await;
                    continue;
                }
            };
            drop(bytes);
            let large = matches!(envelope.body, Request::Logs { .. } | Request::List { .. });
            let slot = match conn.take(large).await {
                Take::Slot(slot) => slot,
                Take::Busy => {
                    let reply = err(
                        ErrorKind::Busy,
                        format!(
                            "this connection already has {} requests in flight \
                             (max_requests_in_flight); wait for answers before sending more",
                            limits.max_requests_in_flight
                        ),
                    );
                    conn.answer(envelope.id, &Response::Error(reply)).await;
                    continue;
                }
                Take::Shut => break,
            };
            let request = envelope.body;
            if matches!(
                request,
                Request::Poll { .. } | Request::List { .. } | Request::Status
            ) {
                // Answered from the table in microseconds: inline, without a task or a hop to
                // another worker thread (the hub polls every server every 30 s).
                let reply = self.handle(&conn.peer, conn.role, &request).await;
                audit(&conn.peer, conn.role, &request, &reply);
                conn.reply(slot, envelope.id, reply).await;
                continue;
            }
            let me = self.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                let reply = me.handle(&conn.peer, conn.role, &request).await;
                audit(&conn.peer, conn.role, &request, &reply);
                conn.reply(slot, envelope.id, reply).await;
            });
        }
        conn.drained().await;
    }

    /// Answers one request: authorizes it ([`auth::authorize`]), then dispatches it.
    pub async fn handle(self: &Arc<Self>, peer: &Peer, role: Role, request: &Request) -> Reply {
        let owner = match request.target() {
            Some(id) if auth::needs_owner(role, request) => self.owner_of(peer, id).await?,
            _ => None,
        };
        let scope = auth::authorize(peer, role, request, owner)?;
        let sup = &self.supervisor;
        match request {
            Request::Start(start) => self.start(peer, start).await,
            Request::Poll { server, instance } => sup
                .poll(server, *instance)
                .map(Response::Polled)
                .map_err(ErrorReply::from),
            Request::Stop {
                server,
                instance,
                now,
            } => sup
                .stop(server, *instance, *now)
                .await
                .map(|(instance, exit)| Response::Stopped { instance, exit })
                .map_err(ErrorReply::from),
            Request::Signal {
                server,
                instance,
                signal,
            } => sup
                .signal(server, *instance, *signal)
                .map(|()| Response::Signalled)
                .map_err(ErrorReply::from),
            Request::List { after, limit } => {
                let limit = if *limit == 0 { MAX_LIST_PAGE } else { *limit };
                Ok(Response::Servers(sup.list(
                    scope,
                    after.as_ref(),
                    limit as usize,
                )))
            }
            Request::Logs { server, lines } => self.logs(server, *lines).await,
            Request::Status => Ok(self.status(role)),
            Request::Health => self.health().await,
        }
    }
}

/// Answers the first request of a connection over a limit with `Busy` (its id when it comes
/// within [`REFUSAL_WAIT`], else id 0), then closes it.
async fn refuse_busy(socket: UnixSeqpacket, why: String, timeout: Duration, _refusal: Refusal) {
    let id = match tokio::time::timeout(REFUSAL_WAIT, recv_packet(&socket)).await {
        Ok(Ok(Packet::Bytes(bytes))) => spawnd_protocol::peek_header(&bytes).map_or(0, |h| h.id),
        _ => 0,
    };
    let _ = send(
        &socket,
        id,
        &Response::Error(err(ErrorKind::Busy, why)),
        timeout,
    )
    .await;
}

/// Logs who asked for what and how it ended. The message itself says it all (`journalctl -u
/// spawnd` shows only messages): "hub uid 993 pid 4711: start alice/gpu: ok", "user uid 1001
/// pid 88: signal bob: refused (Unauthorized): ..."; the same facts are fields as well.
fn audit(peer: &Peer, role: Role, request: &Request, reply: &Reply) {
    // Read-only requests that succeed are frequent (the hub polls every server every 30 s),
    // so they are audited at debug level; changes and refusals at info. Nothing is formatted
    // for a level that is off: this runs for every request.
    let changes = matches!(
        request,
        Request::Start(_) | Request::Stop { .. } | Request::Signal { .. }
    );
    let important = reply.is_err() || changes;
    let enabled = if important {
        tracing::enabled!(target: "audit", tracing::Level::INFO)
    } else {
        tracing::enabled!(target: "audit", tracing::Level::DEBUG)
    };
    if !enabled {
        return;
    }
    let target = request
        .target()
        .map(ToString::to_string)
        .unwrap_or_default();
    let action = request.action();
    let (kind, outcome) = match reply {
        Ok(_) => (None, "ok".to_string()),
        Err(e) => (Some(e.kind), format!("refused ({}): {}", e.kind, e.message)),
    };
    let what = if target.is_empty() {
        action.to_string()
    } else {
        format!("{action} {target}")
    };
    macro_rules! audit_event {
        ($level:expr) => {
            tracing::event!(
                target: "audit",
                $level,
                peer_uid = peer.uid,
                peer_pid = peer.pid,
                %role,
                action,
                target,
                kind = kind.map(tracing::field::display),
                "{role} uid {} pid {}: {what}: {outcome}",
                peer.uid,
                peer.pid
            )
        };
    }
    if important {
        audit_event!(tracing::Level::INFO);
    } else {
        audit_event!(tracing::Level::DEBUG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spawnd_protocol::ServerId;

    /// What [`audit`] writes for one request, formatted as the journal shows it (no fields).
    fn audited(role: Role, request: &Request, reply: &Reply) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let peer = Peer {
            uid: 993,
            gid: 993,
            pid: 4711,
            groups: vec![],
        };
        tracing::subscriber::with_default(subscriber, || audit(&peer, role, request, reply));
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_audit_message_itself_says_who_did_what_and_how_it_ended() {
        let signal = Request::Signal {
            server: ServerId::new("alice", "gpu"),
            instance: None,
            signal: 9,
        };
        let line = audited(
            Role::User,
            &signal,
            &Err(err(
                ErrorKind::Unauthorized,
                "uid 993 may only act on its own servers",
            )),
        );
        assert!(
            line.contains(
                "user uid 993 pid 4711: signal alice/gpu: refused (Unauthorized): uid 993 may \
                 only act on its own servers"
            ) && line.contains(" INFO "),
            "{line}"
        );
        let stop = Request::Stop {
            server: ServerId::new("alice", ""),
            instance: None,
            now: false,
        };
        let stopped = Ok(Response::Stopped {
            instance: 1,
            exit: spawnd_protocol::ExitStatus::Code(0),
        });
        let line = audited(Role::Hub, &stop, &stopped);
        assert!(
            line.contains("hub uid 993 pid 4711: stop alice: ok") && line.contains(" INFO "),
            "{line}"
        );
        // Successful reads are frequent: debug, not info.
        let line = audited(Role::Admin, &Request::Status, &Ok(Response::Signalled));
        assert!(
            line.contains("admin uid 993 pid 4711: status: ok") && line.contains("DEBUG"),
            "{line}"
        );
    }
}
