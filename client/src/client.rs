//! The async client: one connection, many concurrent calls, one reader task.

use crate::calls::{self, Call, Incoming, Lister};
use crate::{ClientError, connect};
use spawnd_protocol::{
    DaemonStatus, ExitStatus, LogTail, MAX_PACKET, Polled, Request, Response, ServerId, ServerInfo,
    ServerPage, StartRequest, Started, encode_request,
};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio_seqpacket::UnixSeqpacket;

/// How long [`Client::connect`] keeps retrying while the daemon's listen backlog is full.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Reply = Result<Response, ClientError>;

/// Why the connection became unusable; turned into one [`ClientError`] per pending call.
#[derive(Debug, Clone)]
enum Failure {
    Disconnected,
    Protocol(String),
}

impl Failure {
    fn to_error(&self) -> ClientError {
        match self {
            Failure::Disconnected => ClientError::Disconnected,
            Failure::Protocol(reason) => ClientError::Protocol(reason.clone()),
        }
    }
}

#[derive(Debug)]
struct State {
    /// Calls waiting for their response, by request id.
    pending: HashMap<u32, oneshot::Sender<Reply>>,
    /// The next id to try. Wraps; 0 is never used (the daemon answers a request whose header
    /// it could not read with id 0, so an id-0 response belongs to no call).
    next_id: u32,
    /// False once the connection is closed or unusable: every later call fails.
    open: bool,
}

/// The part shared between the callers and the reader task.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                next_id: 1,
                open: true,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections below cannot panic, but a poisoned lock must not wedge the
        // client either.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Allocates an unused id and registers the call under it; [`ClientError::Closed`] once
    /// the connection is closed (nothing is sent then).
    fn register(&self, tx: oneshot::Sender<Reply>) -> Result<u32, ClientError> {
        let mut state = self.lock();
        if !state.open {
            return Err(ClientError::Closed);
        }
        let id = loop {
            let id = state.next_id;
            state.next_id = state.next_id.wrapping_add(1);
            if id != 0 && !state.pending.contains_key(&id) {
                break id;
            }
        };
        state.pending.insert(id, tx);
        Ok(id)
    }

    /// Hands a reply to the call waiting for `id`. False when no call waits for it.
    fn deliver(&self, id: u32, reply: Reply) -> bool {
        let tx = self.lock().pending.remove(&id);
        match tx {
            Some(tx) => {
                // The caller may have given up meanwhile; then nobody wants the reply.
                let _ = tx.send(reply);
                true
            }
            None => false,
        }
    }

    fn forget(&self, id: u32) {
        self.lock().pending.remove(&id);
    }

    /// Refuses later calls, but leaves the pending ones to the reader: the daemon answers
    /// what it received before it stopped reading, then ends the connection.
    fn stop_sending(&self) {
        self.lock().open = false;
    }

    /// Marks the connection unusable and fails every pending call.
    fn close(&self, failure: &Failure) {
        let pending: Vec<_> = {
            let mut state = self.lock();
            state.open = false;
            state.pending.drain().map(|(_, tx)| tx).collect()
        };
        for tx in pending {
            let _ = tx.send(Err(failure.to_error()));
        }
    }

    fn is_open(&self) -> bool {
        self.lock().open
    }
}

/// Removes a call's registration when the call ends in any way (answered, failed, or its
/// future dropped), so an abandoned id is free again and a late reply is ignored.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

struct Inner {
    socket: Arc<UnixSeqpacket>,
    shared: Arc<Shared>,
    reader: AbortHandle,
    /// Keeps at most [`MAX_IN_FLIGHT`] requests outstanding: further calls wait their turn
    /// instead of being answered `Busy` by the daemon.
    window: tokio::sync::Semaphore,
}

/// Requests one connection keeps in flight at most (the daemon's default
/// `max_requests_in_flight`); calls beyond it wait for an answer to come back first.
pub const MAX_IN_FLIGHT: usize = 64;

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop the reader, which closes the socket.
        self.reader.abort();
    }
}

/// A connection to spawnd.
///
/// Cheap to clone (all clones share one connection) and safe to use from many tasks at once:
/// each call carries its own request id and the responses, in whatever order the daemon sends
/// them, go to the call they answer. When the connection drops, every pending call fails with
/// [`ClientError::Disconnected`] (the daemon may have acted on it), and every later call with
/// [`ClientError::Closed`] (nothing was sent). The daemon closes connections that stay idle
/// for its `idle_timeout`. There is no silent reconnect here: connect again to retry, or use
/// [`ReconnectingClient`](crate::ReconnectingClient), which does.
///
/// Calls do not time out by themselves (a `stop` legitimately takes as long as the profile's
/// timeouts); wrap them in `tokio::time::timeout` if needed. A call whose future is dropped is
/// forgotten and its response, if it comes, ignored.
///
/// The client does not check requests against the protocol's limits; the daemon does, and
/// answers with an `InvalidRequest` error saying what is wrong.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.shared.lock();
        f.debug_struct("Client")
            .field("socket", &self.inner.socket)
            .field("open", &state.open)
            .field("pending", &state.pending.len())
            .finish()
    }
}

impl Client {
    /// Connects to the daemon's socket, waiting up to [`DEFAULT_CONNECT_TIMEOUT`] while its
    /// listen backlog is full. Needs a tokio runtime with IO and time enabled.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::connect_timeout(path, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// Connects to the daemon's socket, waiting up to `timeout` while its listen backlog is
    /// full (then [`ClientError::Busy`]). Other connect failures are reported at once as
    /// [`ClientError::Connect`].
    pub async fn connect_timeout(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let fd = connect::connect_fd(path.as_ref(), timeout).await?;
        Client::from_fd(fd)
    }

    /// Wraps an already-connected `SOCK_SEQPACKET` socket (it is made non-blocking if it is
    /// not). Must be called inside a tokio runtime with IO enabled: it spawns the reader task
    /// there.
    pub fn from_fd(fd: OwnedFd) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            ClientError::io(
                "the spawnd client must be created inside a tokio runtime",
                io::Error::other(e),
            )
        })?;
        connect::prepare_fd(&fd, true)?;
        let socket = UnixSeqpacket::try_from(fd)
            .map_err(|e| ClientError::io("cannot register the socket with the tokio runtime", e))?;
        let socket = Arc::new(socket);
        let shared = Arc::new(Shared::new());
        let reader = runtime
            .spawn(read_loop(Arc::clone(&socket), Arc::clone(&shared)))
            .abort_handle();
        Ok(Client {
            inner: Arc::new(Inner {
                socket,
                shared,
                reader,
                window: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            }),
        })
    }

    /// False once the connection has been lost; every call then fails with
    /// [`ClientError::Closed`].
    pub fn is_open(&self) -> bool {
        self.inner.shared.is_open()
    }

    /// Sends one request and waits for its response. A [`Response::Error`] becomes
    /// [`ClientError::Daemon`].
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        match self.call(&request).await? {
            Response::Error(reply) => Err(ClientError::Daemon(reply)),
            response => Ok(response),
        }
    }

    async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        // Never closed, so acquiring cannot fail; a closed window would mean no connection.
        let _slot = self
            .inner
            .window
            .acquire()
            .await
            .map_err(|_| ClientError::Disconnected)?;
        let shared = &*self.inner.shared;
        let (tx, rx) = oneshot::channel();
        let id = shared.register(tx)?;
        let _guard = PendingGuard { shared, id };
        let packet = encode_request(id, request)?;
        match self.inner.socket.send(&packet).await {
            Ok(n) if n == packet.len() => {}
            Ok(n) => {
                let failure = Failure::Protocol(format!(
                    "only {n} of {} bytes of a request were sent",
                    packet.len()
                ));
                shared.close(&failure);
                return Err(failure.to_error());
            }
            Err(e) if is_disconnect(&e) => {
                // The daemon no longer reads this connection (it closes idle ones by shutting
                // down its reading first), so this request never reached it. Those sent before
                // are still answered: leave them to the reader.
                shared.stop_sending();
                return Err(ClientError::Closed);
            }
            Err(e) => return Err(ClientError::io("cannot send a request to spawnd", e)),
        }
        match rx.await {
            Ok(reply) => reply,
            // The reader went away without answering: the connection is gone.
            Err(_) => Err(ClientError::Disconnected),
        }
    }

    /// Sends a typed call and reads its answer.
    async fn run<T>(&self, call: Call<T>) -> Result<T, ClientError> {
        let (request, answer) = call.split();
        answer(self.request(request).await?)
    }

    /// Starts a server.
    pub async fn start(&self, request: StartRequest) -> Result<Started, ClientError> {
        self.run(calls::start(request)).await
    }

    /// The current state of a server; with `instance`, only if that is the current instance.
    pub async fn poll(
        &self,
        server: &ServerId,
        instance: Option<u64>,
    ) -> Result<Polled, ClientError> {
        self.run(calls::poll(server, instance)).await
    }

    /// Stops a server and waits until it is gone. Returns the instance that was stopped and how
    /// it ended.
    pub async fn stop(
        &self,
        server: &ServerId,
        instance: Option<u64>,
        now: bool,
    ) -> Result<(u64, ExitStatus), ClientError> {
        self.run(calls::stop(server, instance, now)).await
    }

    /// Sends `signal` to the server's main process.
    pub async fn signal(
        &self,
        server: &ServerId,
        instance: Option<u64>,
        signal: i32,
    ) -> Result<(), ClientError> {
        self.run(calls::signal(server, instance, signal)).await
    }

    /// One page of the servers this caller may see, after `after`, at most `limit` (the daemon
    /// refuses more than [`MAX_LIST_PAGE`](spawnd_protocol::MAX_LIST_PAGE)).
    pub async fn list_page(
        &self,
        after: Option<ServerId>,
        limit: u32,
    ) -> Result<ServerPage, ClientError> {
        self.run(calls::list_page(after, limit)).await
    }

    /// Every server this caller may see, following the pages to the end.
    pub async fn list(&self) -> Result<Vec<ServerInfo>, ClientError> {
        let mut lister = Lister::default();
        while let Some(page) = lister.next_page() {
            lister.add(self.run(page).await?)?;
        }
        Ok(lister.into_servers())
    }

    /// The last `lines` lines of a server's log.
    pub async fn logs(&self, server: &ServerId, lines: u32) -> Result<LogTail, ClientError> {
        self.run(calls::logs(server, lines)).await
    }

    /// The daemon's version, uptime, counts and supervision mode.
    pub async fn status(&self) -> Result<DaemonStatus, ClientError> {
        self.run(calls::status()).await
    }

    /// Problems the daemon sees with its own set-up (a socket the hub cannot reach), each a
    /// sentence for the operator; empty when none. Admin and hub only.
    pub async fn health(&self) -> Result<Vec<String>, ClientError> {
        self.run(calls::health()).await
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
    )
}

/// The name of a response variant, for error messages.
/// Reads every packet from the daemon and hands each response to the call it answers, until
/// the connection ends or becomes unusable; then fails every pending call.
async fn read_loop(socket: Arc<UnixSeqpacket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_PACKET];
    let failure = loop {
        let info = match socket.recv(&mut buf).await {
            Ok(info) => info,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break Failure::Disconnected,
        };
        // The protocol has no empty packets: 0 bytes is the end of the connection.
        if info.bytes_read() == 0 && !info.truncated() {
            break Failure::Disconnected;
        }
        let packet = &buf[..info.bytes_read().min(buf.len())];
        match calls::interpret(packet, info.truncated()) {
            // When no call waits for it, the call gave up (its future was dropped).
            Incoming::Reply(id, reply) => {
                shared.deliver(id, reply);
            }
            Incoming::Fatal(reason) => break Failure::Protocol(reason),
        }
    };
    shared.close(&failure);
    // Let the daemon see the end of a connection this side no longer reads.
    let _ = socket.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests;
