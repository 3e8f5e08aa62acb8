//! A synchronous client over the async one, with its own current-thread runtime.

use crate::{Client, ClientError, DEFAULT_CONNECT_TIMEOUT};
use spawnd_protocol::{
    DaemonStatus, ExitStatus, LogTail, Polled, Request, Response, ServerId, ServerInfo, ServerPage,
    StartRequest, Started,
};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;
use tokio::runtime::Runtime;

/// The same calls as [`Client`], blocking the calling thread.
///
/// Owns a current-thread tokio runtime that runs only while a call is in progress. Must not be
/// used from inside an async runtime (blocking there panics); use [`Client`] there. Calls from
/// several threads at once are fine: they share the connection like clones of a [`Client`].
#[derive(Debug)]
pub struct BlockingClient {
    // Declared before the runtime so that it is dropped first, while the runtime still exists.
    client: Client,
    runtime: Runtime,
}

fn new_runtime() -> Result<Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::io("cannot create the client's runtime", e))
}

impl BlockingClient {
    /// Connects to the daemon's socket (see [`Client::connect`]).
    pub fn connect(path: impl AsRef<Path>) -> Result<BlockingClient, ClientError> {
        BlockingClient::connect_timeout(path, DEFAULT_CONNECT_TIMEOUT)
    }

    /// Connects to the daemon's socket (see [`Client::connect_timeout`]).
    pub fn connect_timeout(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<BlockingClient, ClientError> {
        let runtime = new_runtime()?;
        let client = runtime.block_on(Client::connect_timeout(path, timeout))?;
        Ok(BlockingClient { client, runtime })
    }

    /// Wraps an already-connected `SOCK_SEQPACKET` socket (see [`Client::from_fd`]).
    pub fn from_fd(fd: OwnedFd) -> Result<BlockingClient, ClientError> {
        let runtime = new_runtime()?;
        let client = {
            let _context = runtime.enter();
            Client::from_fd(fd)?
        };
        Ok(BlockingClient { client, runtime })
    }

    /// False once the connection has been lost.
    pub fn is_open(&self) -> bool {
        self.client.is_open()
    }

    /// See [`Client::request`].
    pub fn request(&self, request: Request) -> Result<Response, ClientError> {
        self.runtime.block_on(self.client.request(request))
    }

    /// See [`Client::start`].
    pub fn start(&self, request: StartRequest) -> Result<Started, ClientError> {
        self.runtime.block_on(self.client.start(request))
    }

    /// See [`Client::poll`].
    pub fn poll(&self, server: &ServerId, instance: Option<u64>) -> Result<Polled, ClientError> {
        self.runtime.block_on(self.client.poll(server, instance))
    }

    /// See [`Client::stop`].
    pub fn stop(
        &self,
        server: &ServerId,
        instance: Option<u64>,
        now: bool,
    ) -> Result<(u64, ExitStatus), ClientError> {
        self.runtime
            .block_on(self.client.stop(server, instance, now))
    }

    /// See [`Client::signal`].
    pub fn signal(
        &self,
        server: &ServerId,
        instance: Option<u64>,
        signal: i32,
    ) -> Result<(), ClientError> {
        self.runtime
            .block_on(self.client.signal(server, instance, signal))
    }

    /// See [`Client::list_page`].
    pub fn list_page(
        &self,
        after: Option<ServerId>,
        limit: u32,
    ) -> Result<ServerPage, ClientError> {
        self.runtime.block_on(self.client.list_page(after, limit))
    }

    /// See [`Client::list`].
    pub fn list(&self) -> Result<Vec<ServerInfo>, ClientError> {
        self.runtime.block_on(self.client.list())
    }

    /// See [`Client::logs`].
    pub fn logs(&self, server: &ServerId, lines: u32) -> Result<LogTail, ClientError> {
        self.runtime.block_on(self.client.logs(server, lines))
    }

    /// See [`Client::status`].
    pub fn status(&self) -> Result<DaemonStatus, ClientError> {
        self.runtime.block_on(self.client.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use spawnd_protocol::{
        ErrorKind, ErrorReply, MAX_PACKET, ServerState, decode_request, encode_response,
    };
    use tokio_seqpacket::UnixSeqpacket;

    /// Runs a fake daemon on its own thread and runtime: answers Poll with the asked instance,
    /// anything else with a NotFound error, and hangs up after `answers` requests.
    fn fake_daemon(fd: OwnedFd, answers: usize) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let sock = UnixSeqpacket::try_from(fd).unwrap();
                let mut buf = vec![0u8; MAX_PACKET];
                for _ in 0..answers {
                    let info = sock.recv(&mut buf).await.unwrap();
                    let request = decode_request(&buf[..info.bytes_read()]).unwrap();
                    let response = match request.body {
                        Request::Poll { instance, .. } => Response::Polled(Polled {
                            instance: instance.unwrap_or(1),
                            pid: 7,
                            state: ServerState::Running,
                        }),
                        _ => Response::Error(ErrorReply::new(ErrorKind::NotFound, "no server")),
                    };
                    sock.send(&encode_response(request.id, &response).unwrap())
                        .await
                        .unwrap();
                }
            });
        })
    }

    #[test]
    fn blocking_calls_share_the_async_code() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let daemon = fake_daemon(b, 2);
        let client = BlockingClient::from_fd(a).unwrap();
        let alice = ServerId::new("alice", "");
        assert_eq!(client.poll(&alice, Some(3)).unwrap().instance, 3);
        let err = client.stop(&alice, None, false).unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::NotFound));
        assert_eq!(err.to_string(), "NotFound: no server");
        daemon.join().unwrap();
        // The fake daemon hung up.
        let err = client.status().unwrap_err();
        assert!(err.is_daemon_unreachable(), "{err:?}");
        assert!(!client.is_open());
    }

    #[test]
    fn blocking_calls_from_many_threads() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let daemon = fake_daemon(b, 8);
        let client = BlockingClient::from_fd(a).unwrap();
        std::thread::scope(|s| {
            for i in 0..8u64 {
                let client = &client;
                s.spawn(move || {
                    let got = client.poll(&ServerId::new("bob", "x"), Some(i)).unwrap();
                    assert_eq!(got.instance, i);
                });
            }
        });
        daemon.join().unwrap();
    }

    #[test]
    fn blocking_connect_errors() {
        let err = BlockingClient::connect_timeout(
            "/nonexistent/spawnd-client-test.sock",
            Duration::from_millis(10),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        assert!(err.is_daemon_unreachable());
    }
}
