//! A synchronous client: plain blocking system calls on its own connection, no runtime.

use crate::calls::{self, Call, Incoming, Lister};
use crate::{ClientError, DEFAULT_CONNECT_TIMEOUT, connect};
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv, send};
use spawnd_protocol::{
    DaemonStatus, ExitStatus, LogTail, MAX_PACKET, Polled, Request, Response, ServerId, ServerInfo,
    ServerPage, StartRequest, Started, encode_request,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The same calls as [`Client`](crate::Client), blocking the calling thread.
///
/// Each call is a blocking `send` of the request and a blocking `recv` of its answer on the
/// client's own connection: the fewest system calls a round trip can take (a poll costs about
/// what a bare `SOCK_SEQPACKET` echo costs, see BENCHMARKS.md). Calls from several threads
/// at once are safe and take turns on the connection, one request in flight at a time; for
/// many concurrent calls on one connection use the async [`Client`](crate::Client). Like it,
/// a call does not time out by itself (a `stop` takes as long as the profile's timeouts).
#[derive(Debug)]
pub struct BlockingClient {
    conn: Mutex<Conn>,
}

#[derive(Debug)]
struct Conn {
    /// Connected, blocking, close-on-exec.
    fd: OwnedFd,
    /// The next request id; wraps, and 0 is never used (an id-0 answer belongs to no call).
    next_id: u32,
    /// False once the connection is closed or unusable: every later call fails.
    open: bool,
    buf: Vec<u8>,
}

impl BlockingClient {
    /// Connects to the daemon's socket (see [`Client::connect`](crate::Client::connect)).
    pub fn connect(path: impl AsRef<Path>) -> Result<BlockingClient, ClientError> {
        BlockingClient::connect_timeout(path, DEFAULT_CONNECT_TIMEOUT)
    }

    /// Connects to the daemon's socket, waiting up to `timeout` while its listen backlog is
    /// full (see [`Client::connect_timeout`](crate::Client::connect_timeout)).
    pub fn connect_timeout(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<BlockingClient, ClientError> {
        BlockingClient::from_fd(connect::connect_fd_blocking(path.as_ref(), timeout)?)
    }

    /// Wraps an already-connected `SOCK_SEQPACKET` socket (it is made blocking if it is not).
    pub fn from_fd(fd: OwnedFd) -> Result<BlockingClient, ClientError> {
        connect::prepare_fd(&fd, false)?;
        Ok(BlockingClient {
            conn: Mutex::new(Conn {
                fd,
                next_id: 1,
                open: true,
                buf: vec![0u8; MAX_PACKET],
            }),
        })
    }

    /// False once the connection has been lost; every call then fails with
    /// [`ClientError::Closed`].
    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        // A call that panicked cannot have left the connection half-used: a request is one
        // packet, and an unread answer is skipped by id. So keep going.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one request and waits for its response. A [`Response::Error`] becomes
    /// [`ClientError::Daemon`].
    pub fn request(&self, request: Request) -> Result<Response, ClientError> {
        match self.lock().call(&request)? {
            Response::Error(reply) => Err(ClientError::Daemon(reply)),
            response => Ok(response),
        }
    }

    fn run<T>(&self, call: Call<T>) -> Result<T, ClientError> {
        let (request, answer) = call.split();
        answer(self.request(request)?)
    }

    /// See [`Client::start`](crate::Client::start).
    pub fn start(&self, request: StartRequest) -> Result<Started, ClientError> {
        self.run(calls::start(request))
    }

    /// See [`Client::poll`](crate::Client::poll).
    pub fn poll(&self, server: &ServerId, instance: Option<u64>) -> Result<Polled, ClientError> {
        self.run(calls::poll(server, instance))
    }

    /// See [`Client::stop`](crate::Client::stop).
    pub fn stop(
        &self,
        server: &ServerId,
        instance: Option<u64>,
        now: bool,
    ) -> Result<(u64, ExitStatus), ClientError> {
        self.run(calls::stop(server, instance, now))
    }

    /// See [`Client::signal`](crate::Client::signal).
    pub fn signal(
        &self,
        server: &ServerId,
        instance: Option<u64>,
        signal: i32,
    ) -> Result<(), ClientError> {
        self.run(calls::signal(server, instance, signal))
    }

    /// See [`Client::list_page`](crate::Client::list_page).
    pub fn list_page(
        &self,
        after: Option<ServerId>,
        limit: u32,
    ) -> Result<ServerPage, ClientError> {
        self.run(calls::list_page(after, limit))
    }

    /// See [`Client::list`](crate::Client::list).
    pub fn list(&self) -> Result<Vec<ServerInfo>, ClientError> {
        let mut lister = Lister::default();
        while let Some(page) = lister.next_page() {
            lister.add(self.run(page)?)?;
        }
        Ok(lister.into_servers())
    }

    /// See [`Client::logs`](crate::Client::logs).
    pub fn logs(&self, server: &ServerId, lines: u32) -> Result<LogTail, ClientError> {
        self.run(calls::logs(server, lines))
    }

    /// See [`Client::status`](crate::Client::status).
    pub fn status(&self) -> Result<DaemonStatus, ClientError> {
        self.run(calls::status())
    }

    /// See [`Client::health`](crate::Client::health).
    pub fn health(&self) -> Result<Vec<String>, ClientError> {
        self.run(calls::health())
    }
}

impl Conn {
    /// One round trip: send the request, then read until its answer arrives.
    fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        if !self.open {
            return Err(ClientError::Closed);
        }
        let id = self.next_id;
        self.next_id = match self.next_id.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        let packet = encode_request(id, request)?;
        loop {
            match send(self.fd.as_raw_fd(), &packet, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) if n == packet.len() => break,
                Ok(n) => {
                    return Err(self.fail(ClientError::Protocol(format!(
                        "only {n} of {} bytes of a request were sent",
                        packet.len()
                    ))));
                }
                Err(Errno::EINTR) => continue,
                // The daemon no longer reads this connection (an idle one it closed): the
                // request never reached it.
                Err(Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN) => {
                    return Err(self.fail(ClientError::Closed));
                }
                Err(e) => return Err(ClientError::io("cannot send a request to spawnd", e.into())),
            }
        }
        loop {
            // MSG_TRUNC: the packet's real length, so an oversized one is noticed.
            let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(_) => return Err(self.fail(ClientError::Disconnected)),
            };
            // The protocol has no empty packets: 0 bytes is the end of the connection.
            if n == 0 {
                return Err(self.fail(ClientError::Disconnected));
            }
            let truncated = n > self.buf.len();
            match calls::interpret(&self.buf[..n.min(self.buf.len())], truncated) {
                Incoming::Reply(got, reply) if got == id => return reply,
                // The answer to a call that failed before reading it (nothing else can be
                // in flight): skip it.
                Incoming::Reply(..) => continue,
                Incoming::Fatal(reason) => return Err(self.fail(ClientError::Protocol(reason))),
            }
        }
    }

    /// Marks the connection unusable (and lets the daemon see its end) and returns `error`.
    fn fail(&mut self, error: ClientError) -> ClientError {
        self.open = false;
        let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use spawnd_protocol::{ErrorKind, ErrorReply, ServerState, decode_request, encode_response};
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
    fn blocking_calls_round_trip_and_see_the_end() {
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
    fn a_request_the_daemon_no_longer_reads_is_not_sent() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        // What spawnd does to an idle connection before it closes it.
        nix::sys::socket::shutdown(b.as_raw_fd(), nix::sys::socket::Shutdown::Read).unwrap();
        let client = BlockingClient::from_fd(a).unwrap();
        let err = client.status().unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{err:?}");
        assert!(err.to_string().contains("not sent"), "{err}");
        assert!(!client.is_open());
        drop(b);
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
    fn stray_and_oversized_answers() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        // A daemon that first answers someone else, then too much, then properly.
        let daemon = std::thread::spawn(move || {
            connect::prepare_fd(&b, false).unwrap();
            let fd = b.as_raw_fd();
            let mut buf = vec![0u8; MAX_PACKET];
            let polled = |instance| {
                Response::Polled(Polled {
                    instance,
                    pid: 9,
                    state: ServerState::Running,
                })
            };
            for round in 0..3 {
                let n = recv(fd, &mut buf, MsgFlags::empty()).unwrap();
                let id = decode_request(&buf[..n]).unwrap().id;
                let mut answers = vec![];
                match round {
                    0 => {
                        answers.push(encode_response(id + 100, &polled(100)).unwrap());
                        answers.push(encode_response(id, &polled(1)).unwrap());
                    }
                    1 => {
                        let mut big = encode_response(id, &polled(2)).unwrap();
                        big.resize(MAX_PACKET + 10, 0);
                        answers.push(big);
                    }
                    _ => answers.push(encode_response(id, &polled(3)).unwrap()),
                }
                for answer in answers {
                    send(fd, &answer, MsgFlags::empty()).unwrap();
                }
            }
        });
        // Handed over non-blocking: made blocking, so the calls wait for their answers.
        let client = BlockingClient::from_fd(a).unwrap();
        let alice = ServerId::new("alice", "");
        assert_eq!(client.poll(&alice, None).unwrap().instance, 1);
        let err = client.poll(&alice, None).unwrap_err();
        assert!(
            matches!(&err, ClientError::Protocol(m) if m.contains("larger than")),
            "{err:?}"
        );
        // Packet boundaries hold: the connection is still good.
        assert_eq!(client.poll(&alice, None).unwrap().instance, 3);
        assert!(client.is_open());
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
