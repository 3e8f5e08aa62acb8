//! The socket: admitting peers, reading requests, answering them, auditing every one.

use crate::auth::{self, Peer, Role};
use crate::config::{Config, ConnectionLimits};
use crate::launch::Launcher;
use crate::logs;
use crate::socket_access;
use crate::start::{self, Starter};
use crate::supervisor::Supervisor;
use spawnd_protocol::{
    DaemonStatus, DecodeError, ErrorKind, ErrorReply, LogTail, MAX_LIST_PAGE, MAX_PACKET, Request,
    Response, ServerId, StartRequest, decode_request, encode_response,
};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
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

/// Requests with answers that may fill a whole packet (a page of servers, a log tail) that one
/// connection may have in flight, answered or not yet sent. Beyond it the connection's next
/// such request waits (its reading pauses) instead of being answered `Busy`. With
/// `max_requests_in_flight` for all of them, this bounds what one connection can make the
/// daemon hold to 4 answers of 64 KiB and a few dozen small ones.
const MAX_LARGE_IN_FLIGHT: u32 = 4;

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

    /// The uid a server belongs to, for a self-service user's request: the uid it runs as when
    /// the daemon knows it (whatever name it is listed under). For a server the daemon does
    /// not know (one it has forgotten, or its log), the peer's uid when the server is named
    /// after the peer's own account both ways: the peer's uid has that name, and that name has
    /// the peer's uid (another passwd entry sharing the uid, or one account's name in two
    /// directories, is not enough). Only the peer's own uid and name are ever looked up, so a
    /// peer cannot send the directory service after names of its choosing.
    async fn owner_of(&self, peer: &Peer, id: &ServerId) -> Result<Option<u32>, ErrorReply> {
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

    async fn start(self: &Arc<Self>, peer: &Peer, req: &StartRequest) -> Reply {
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

    async fn logs(&self, id: &ServerId, lines: u32) -> Reply {
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
    async fn health(&self) -> Reply {
        let config = self.config();
        let problems = tokio::task::spawn_blocking(move || {
            socket_access::problems(&config.socket, config.hub_uid)
        })
        .await
        .map_err(|e| err(ErrorKind::Internal, format!("health task failed: {e}")))?;
        Ok(Response::Health(problems))
    }

    fn status(&self, role: Role) -> Response {
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

/// One received packet.
enum Packet {
    Bytes(Vec<u8>),
    /// Larger than the protocol's maximum (the kernel truncated it).
    TooLarge,
    /// End of the connection (or an empty packet, which SOCK_SEQPACKET cannot tell apart).
    End,
}

thread_local! {
    /// One receive buffer of the protocol's maximum size per worker thread, instead of one per
    /// connection: a thousand idle connections would otherwise keep 64 MiB resident.
    static RECV_BUF: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; MAX_PACKET]);
}

/// Receives one packet, copying out only the bytes it holds. The thread's buffer is borrowed
/// only inside one poll, never across an await.
async fn recv_packet(socket: &UnixSeqpacket) -> std::io::Result<Packet> {
    std::future::poll_fn(|cx| {
        RECV_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            socket.poll_recv(cx, &mut buf).map_ok(|info| {
                if info.truncated() {
                    Packet::TooLarge
                } else if info.bytes_read() == 0 {
                    Packet::End
                } else {
                    Packet::Bytes(buf[..info.bytes_read()].to_vec())
                }
            })
        })
    })
    .await
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

/// Reads the peer's credentials as the kernel recorded them at connect time.
pub fn peer_of(socket: &UnixSeqpacket) -> std::io::Result<Peer> {
    let cred = socket.peer_cred()?;
    let groups = crate::sys::peer_groups(socket.as_fd())?;
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().unwrap_or(0),
        groups,
    })
}

/// The peer left an answer unread for the whole send timeout.
#[derive(Debug)]
struct Unread;

/// Sends one answer, waiting at most `timeout` for the peer to make room for it. Errors other
/// than the timeout (the peer is gone) are only logged: there is nobody to tell.
async fn send(
    socket: &UnixSeqpacket,
    id: u32,
    response: &Response,
    timeout: Duration,
) -> Result<(), Unread> {
    let bytes = match encode_response(id, response) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("could not encode a response: {e}");
            match encode_response(
                id,
                &Response::Error(err(ErrorKind::Internal, format!("response too large: {e}"))),
            ) {
                Ok(b) => b,
                Err(_) => return Ok(()),
            }
        }
    };
    match tokio::time::timeout(timeout, socket.send(&bytes)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::debug!("could not send a response: {e}");
            Ok(())
        }
        Err(_) => Err(Unread),
    }
}

/// One admitted connection: its socket, who is at the other end, the limits it was admitted
/// under, and what it has in flight.
#[derive(Debug)]
struct Conn {
    socket: UnixSeqpacket,
    peer: Peer,
    role: Role,
    limits: ConnectionLimits,
    flight: Mutex<Flight>,
    /// Woken whenever a request's answer has left, and when the connection is shut.
    changed: Notify,
}

#[derive(Debug)]
struct Flight {
    /// Requests being answered: past `max_requests_in_flight` a request is answered `Busy`.
    requests: u32,
    /// Answers waiting to be sent. With `requests` never more than `max_requests_in_flight`:
    /// while the peer leaves that many unread, its next request waits.
    unsent: u32,
    /// Requests and answers of both kinds whose answers may fill a packet.
    large: u32,
    /// When the connection last received a packet or sent the last answer it owed.
    last: tokio::time::Instant,
    /// Shut down because the peer does not read its answers: nothing more is read or sent.
    shut: bool,
}

/// What a request gets from its connection's limits.
enum Take {
    Slot(Slot),
    /// `max_requests_in_flight` requests are being answered.
    Busy,
    /// The connection was shut down meanwhile.
    Shut,
}

/// A request's place in its connection's limits, given back when dropped: after its answer
/// has been sent (or could not be).
struct Slot {
    conn: Arc<Conn>,
    large: bool,
    /// Its answer exists: it counts as unsent, no longer as being answered.
    answered: bool,
}

impl Slot {
    /// The answer exists. From now on the request no longer makes others `Busy` (a client that
    /// waits for an answer before sending more never sees `Busy`), but its answer still counts
    /// until sent.
    fn answered(&mut self) {
        let mut f = self.conn.flight();
        f.requests -= 1;
        f.unsent += 1;
        self.answered = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut f = self.conn.flight();
            if self.answered {
                f.unsent -= 1;
            } else {
                f.requests -= 1;
            }
            if self.large {
                f.large -= 1;
            }
            f.last = tokio::time::Instant::now();
        }
        self.conn.changed.notify_waiters();
    }
}

impl Conn {
    fn new(socket: UnixSeqpacket, peer: Peer, role: Role, limits: ConnectionLimits) -> Conn {
        Conn {
            socket,
            peer,
            role,
            limits,
            flight: Mutex::new(Flight {
                requests: 0,
                unsent: 0,
                large: 0,
                last: tokio::time::Instant::now(),
                shut: false,
            }),
            changed: Notify::new(),
        }
    }

    fn flight(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `check` gives a value, checking again whenever something changes.
    async fn wait_for<T>(&self, mut check: impl FnMut(&mut Flight) -> Option<T>) -> T {
        if let Some(v) = check(&mut self.flight()) {
            return v;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before checking: a change between the check and the wait is seen.
            changed.as_mut().enable();
            if let Some(v) = check(&mut self.flight()) {
                return v;
            }
            changed.await;
        }
    }

    /// A packet arrived.
    fn touch(&self) {
        self.flight().last = tokio::time::Instant::now();
    }

    fn is_shut(&self) -> bool {
        self.flight().shut
    }

    /// A place for one more request: `Busy` when `max_requests_in_flight` are being
    /// answered; else at once, or once answers the peer has not read yet have been sent (as
    /// many as the limit, or [`MAX_LARGE_IN_FLIGHT`] large ones when this one is large).
    async fn take(self: &Arc<Self>, large: bool) -> Take {
        let max = self.limits.max_requests_in_flight;
        let taken = self
            .wait_for(|f| {
                if f.shut {
                    Some(Err(Take::Shut))
                } else if f.requests >= max {
                    Some(Err(Take::Busy))
                } else if f.requests + f.unsent >= max || large && f.large >= MAX_LARGE_IN_FLIGHT {
                    None
                } else {
                    f.requests += 1;
                    if large {
                        f.large += 1;
                    }
                    Some(Ok(()))
                }
            })
            .await;
        match taken {
            Ok(()) => Take::Slot(Slot {
                conn: self.clone(),
                large,
                answered: false,
            }),
            Err(t) => t,
        }
    }

    /// `None` when nothing has been in flight and nothing received for `timeout`; else when
    /// to ask again: `timeout` after the last packet or answer, or from now while a request is
    /// in flight (its answer counts as activity when it leaves).
    fn idle_until(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        let f = self.flight();
        let now = tokio::time::Instant::now();
        if f.requests > 0 || f.unsent > 0 {
            Some(now + timeout)
        } else {
            (f.last + timeout > now).then_some(f.last + timeout)
        }
    }

    /// Every answer owed has been sent, or could not be.
    async fn drained(&self) {
        self.wait_for(|f| (f.requests == 0 && f.unsent == 0).then_some(()))
            .await;
    }

    /// Stops reading an idle connection. Requests that arrived before are still read and
    /// answered, then the connection ends; from now on the peer's sends fail (EPIPE), so a
    /// client knows for certain that a request it could not send was not received, and may
    /// send it again on a new connection. False when the connection cannot be shut down for
    /// reading (it is gone already): then it is simply dropped.
    fn close_idle(&self, spoke: bool, timeout: Duration) -> bool {
        let (key, what) = if spoke {
            ("idle_timeout", "an idle connection")
        } else {
            ("first_request_timeout", "a connection that sent nothing")
        };
        tracing::info!(
            target: "audit",
            peer_uid = self.peer.uid,
            peer_pid = self.peer.pid,
            role = %self.role,
            "closed {what}: no request for {timeout:?} ({key})"
        );
        match self.socket.shutdown(std::net::Shutdown::Read) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(peer_uid = self.peer.uid, "shutting down a connection: {e}");
                false
            }
        }
    }

    /// Sends the answer to a request, whose place is given back once it has left.
    async fn reply(&self, mut slot: Slot, id: u32, reply: Reply) {
        slot.answered();
        self.answer(id, &reply.unwrap_or_else(Response::Error))
            .await;
    }

    /// Sends one answer within `send_timeout`; shuts the connection down if the peer does not
    /// make room for it in that time.
    async fn answer(&self, id: u32, response: &Response) {
        if self.is_shut() {
            return;
        }
        if send(&self.socket, id, response, self.limits.send_timeout)
            .await
            .is_err()
        {
            self.shut_unread();
        }
    }

    /// The peer does not read its answers: stop reading and sending, so that it cannot make the
    /// daemon hold more of them.
    fn shut_unread(&self) {
        {
            let mut f = self.flight();
            if f.shut {
                return;
            }
            f.shut = true;
        }
        tracing::warn!(
            target: "audit",
            peer_uid = self.peer.uid,
            peer_pid = self.peer.pid,
            role = %self.role,
            "closed a connection: the peer does not read its answers (one waited {:?}, \
             send_timeout)",
            self.limits.send_timeout
        );
        if let Err(e) = self.socket.shutdown(std::net::Shutdown::Both) {
            tracing::debug!(peer_uid = self.peer.uid, "shutting down a connection: {e}");
        }
        self.changed.notify_waiters();
    }

    /// Answers a packet that is not a valid request.
    async fn refuse_packet(&self, e: &DecodeError) {
        let kind = match e {
            DecodeError::UnsupportedVersion { .. } => ErrorKind::Unsupported,
            _ => ErrorKind::InvalidRequest,
        };
        tracing::warn!(
            target: "audit",
            peer_uid = self.peer.uid,
            peer_pid = self.peer.pid,
            role = %self.role,
            "refused a packet: {e}"
        );
        self.answer(e.id(), &Response::Error(err(kind, e.to_string())))
            .await;
    }
}

/// Logs who asked for what and how it ended. The message itself says it all (`journalctl -u
/// spawnd` shows only messages): "hub uid 993 pid 4711: start alice/gpu: ok", "user uid 1001
/// pid 88: signal bob: refused (Unauthorized): ..."; the same facts are fields as well.
fn audit(peer: &Peer, role: Role, request: &Request, reply: &Reply) {
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
    // Read-only requests that succeed are frequent (the hub polls every server every 30 s),
    // so they are audited at debug level; changes and refusals at info.
    let changes = matches!(
        request,
        Request::Start(_) | Request::Stop { .. } | Request::Signal { .. }
    );
    if reply.is_err() || changes {
        audit_event!(tracing::Level::INFO);
    } else {
        audit_event!(tracing::Level::DEBUG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
