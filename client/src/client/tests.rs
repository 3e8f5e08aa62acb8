use super::*;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use spawnd_protocol::MAX_LIST_PAGE;
use spawnd_protocol::{
    Envelope, ErrorKind, ErrorReply, ServerState, VERSION, decode_request, encode_response,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;
use tokio_seqpacket::UnixSeqpacketListener;

/// The daemon's side of a test connection.
struct Peer {
    sock: UnixSeqpacket,
}

impl Peer {
    async fn recv(&self) -> Envelope<Request> {
        let mut buf = vec![0u8; MAX_PACKET];
        let info = self.sock.recv(&mut buf).await.unwrap();
        assert!(!info.truncated());
        decode_request(&buf[..info.bytes_read()]).unwrap()
    }

    async fn reply(&self, id: u32, response: &Response) {
        self.send_raw(&encode_response(id, response).unwrap()).await;
    }

    async fn send_raw(&self, bytes: &[u8]) {
        assert_eq!(self.sock.send(bytes).await.unwrap(), bytes.len());
    }
}

fn raw_pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .unwrap()
}

fn pair() -> (Client, Peer) {
    let (a, b) = raw_pair();
    let client = Client::from_fd(a).unwrap();
    let peer = Peer {
        sock: UnixSeqpacket::try_from(b).unwrap(),
    };
    (client, peer)
}

fn alice() -> ServerId {
    ServerId::new("alice", "")
}

fn polled(instance: u64) -> Response {
    Response::Polled(Polled {
        instance,
        pid: 1000 + instance as u32,
        state: ServerState::Running,
    })
}

/// A fresh directory for sockets, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "spawnd-client-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn client_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Client>();
    send_sync::<crate::BlockingClient>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let (client, _peer) = pair();
    let id = alice();
    send(&client.request(Request::Status));
    send(&client.stop(&id, None, false));
    send(&client.list());
    send(&Client::connect("/nonexistent"));
}

#[tokio::test]
async fn concurrent_requests_get_their_own_answers_out_of_order() {
    let (client, peer) = pair();
    let n = 20u64;
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { (i, client.poll(&alice(), Some(i)).await) })
        })
        .collect();
    let mut requests = Vec::new();
    for _ in 0..n {
        requests.push(peer.recv().await);
    }
    let mut ids: Vec<u32> = requests.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n as usize, "ids must be distinct");
    assert!(!ids.contains(&0), "id 0 is never used");
    // Answer in reverse order of arrival, each with the instance its request asked about.
    for request in requests.iter().rev() {
        assert_eq!(request.version, VERSION);
        let Request::Poll { instance, .. } = request.body else {
            panic!("{:?}", request.body)
        };
        peer.reply(request.id, &polled(instance.unwrap())).await;
    }
    for call in calls {
        let (i, result) = call.await.unwrap();
        let got = result.unwrap();
        assert_eq!(got.instance, i);
        assert_eq!(got.pid, 1000 + i as u32);
    }
    assert!(client.is_open());
}

#[tokio::test]
async fn disconnect_fails_pending_and_later_calls() {
    let (client, peer) = pair();
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.status().await }
    });
    let request = peer.recv().await;
    assert_eq!(request.body, Request::Status);
    drop(peer);
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Disconnected), "{err:?}");
    assert!(err.is_daemon_unreachable());
    assert_eq!(err.kind(), None);
    // Wait for the reader to notice (it already has: the pending call was failed by it).
    assert!(!client.is_open());
    // Later calls are not sent at all, and say so.
    let err = client.status().await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    assert!(err.is_daemon_unreachable());
    assert!(err.to_string().contains("not sent"), "{err}");
    assert!(err.to_string().contains("connect again"), "{err}");
}

/// The daemon closes an idle connection by shutting down its reading first, then answering what
/// had arrived, then closing. A request sent after that fails at once as not sent (`Closed`),
/// while one sent before is still answered.
#[tokio::test]
async fn a_request_the_daemon_no_longer_reads_is_not_sent_and_earlier_ones_are_answered() {
    let (client, peer) = pair();
    let before = tokio::spawn({
        let client = client.clone();
        async move { client.poll(&alice(), Some(1)).await }
    });
    let request = peer.recv().await;
    peer.sock.shutdown(std::net::Shutdown::Read).unwrap();
    let err = client.status().await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    assert!(!client.is_open());
    // The request that arrived before is answered on the same connection.
    peer.reply(request.id, &polled(1)).await;
    assert_eq!(before.await.unwrap().unwrap().instance, 1);
    drop(peer);
    let err = client.status().await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
}

#[tokio::test]
async fn daemon_error_becomes_daemon_variant() {
    let (client, peer) = pair();
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .start(StartRequest {
                    server: ServerId::new("bob", "gpu"),
                    profile: String::new(),
                    args: vec![],
                    env: vec![],
                    port: None,
                })
                .await
        }
    });
    let request = peer.recv().await;
    let message = "user bob is not a member of group jupyterhub-users";
    peer.reply(
        request.id,
        &Response::Error(ErrorReply::new(ErrorKind::PolicyDenied, message)),
    )
    .await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::PolicyDenied));
    assert_eq!(
        err.daemon_error().map(|e| e.message.as_str()),
        Some(message)
    );
    assert_eq!(err.to_string(), format!("PolicyDenied: {message}"));
    assert!(!err.is_daemon_unreachable());
    assert!(
        client.is_open(),
        "a daemon error leaves the connection usable"
    );
}

#[tokio::test]
async fn wrong_response_variant_is_unexpected() {
    let (client, peer) = pair();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.status().await }
    });
    let request = peer.recv().await;
    peer.reply(request.id, &Response::Signalled).await;
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Unexpected {
                request: "status",
                response: "Signalled"
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn undecodable_response_fails_only_its_call() {
    let (client, peer) = pair();
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.poll(&alice(), Some(1)).await }
    });
    let a = peer.recv().await;
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.poll(&alice(), Some(2)).await }
    });
    let b = peer.recv().await;
    // Version 1, the first call's id, then response variant 99: readable header, bad body.
    let mut bad = encode_response(a.id, &Response::Signalled).unwrap();
    let last = bad.len() - 1;
    bad[last] = 99;
    peer.send_raw(&bad).await;
    peer.reply(b.id, &polled(2)).await;
    let err = first.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    assert!(!err.is_daemon_unreachable());
    assert_eq!(second.await.unwrap().unwrap().instance, 2);
    assert!(client.is_open());
}

#[tokio::test]
async fn wrong_version_response_names_both_versions() {
    let (client, peer) = pair();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.status().await }
    });
    let request = peer.recv().await;
    let mut packet = encode_response(request.id, &Response::Signalled).unwrap();
    packet[0] = 7;
    peer.send_raw(&packet).await;
    let err = call.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("version 7") && err.contains("version 1"),
        "{err}"
    );
}

#[tokio::test]
async fn unreadable_packet_fails_every_call_and_closes() {
    let (client, peer) = pair();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.status().await })
        })
        .collect();
    for _ in 0..3 {
        peer.recv().await;
    }
    // A varint that never ends: no header can be read.
    peer.send_raw(&[0xff]).await;
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    }
    assert!(!client.is_open());
    let err = client.status().await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    // The client shut the connection down: the peer sees the end.
    let mut buf = [0u8; 16];
    assert_eq!(peer.sock.recv(&mut buf).await.unwrap().bytes_read(), 0);
}

#[tokio::test]
async fn id_zero_response_fails_every_call() {
    let (client, peer) = pair();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.status().await }
    });
    peer.recv().await;
    peer.reply(
        0,
        &Response::Error(ErrorReply::new(
            ErrorKind::InvalidRequest,
            "packet is empty",
        )),
    )
    .await;
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ClientError::Protocol(m) if m.contains("InvalidRequest: packet is empty")),
        "{err:?}"
    );
    assert!(!client.is_open());
}

#[tokio::test]
async fn truncated_packet_is_refused() {
    let (client, peer) = pair();
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.status().await }
    });
    let a = peer.recv().await;
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.poll(&alice(), None).await }
    });
    let b = peer.recv().await;
    // A valid header for the first call, then more than a packet's worth of bytes.
    let mut big = encode_response(a.id, &Response::Signalled).unwrap();
    big.resize(MAX_PACKET + 100, 0);
    peer.send_raw(&big).await;
    peer.reply(b.id, &polled(5)).await;
    let err = first.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ClientError::Protocol(m) if m.contains("larger than")),
        "{err:?}"
    );
    assert_eq!(second.await.unwrap().unwrap().instance, 5);
    assert!(client.is_open());

    // Oversized with no readable header: nothing to attribute it to, the connection is done.
    let third = tokio::spawn({
        let client = client.clone();
        async move { client.status().await }
    });
    peer.recv().await;
    peer.send_raw(&vec![0xff; MAX_PACKET + 1]).await;
    let err = third.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    assert!(!client.is_open());
}

#[tokio::test]
async fn abandoned_call_is_forgotten_and_late_reply_ignored() {
    let (client, peer) = pair();
    let gave_up = tokio::time::timeout(Duration::from_millis(20), client.status()).await;
    assert!(gave_up.is_err());
    let late = peer.recv().await;
    assert!(client.inner.shared.lock().pending.is_empty());
    peer.reply(late.id, &Response::Signalled).await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.poll(&alice(), None).await }
    });
    let request = peer.recv().await;
    assert_ne!(request.id, late.id);
    peer.reply(request.id, &polled(9)).await;
    assert_eq!(call.await.unwrap().unwrap().instance, 9);
}

#[test]
fn ids_wrap_and_skip_zero_and_ids_in_use() {
    let shared = Shared::new();
    shared.lock().next_id = u32::MAX - 1;
    let mut keep = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = oneshot::channel();
        keep.push(rx);
        shared.register(tx).unwrap();
    }
    let (tx, _rx) = oneshot::channel();
    let id = shared.register(tx).unwrap();
    assert_eq!(id, 1, "wraps past u32::MAX and skips 0");
    // Wrap again: MAX-1 and MAX are still in use, 0 is never used, 1 is in use.
    shared.lock().next_id = u32::MAX - 1;
    let (tx, _rx2) = oneshot::channel();
    assert_eq!(shared.register(tx).unwrap(), 2);
    shared.close(&Failure::Disconnected);
    let (tx, _rx3) = oneshot::channel();
    assert!(matches!(shared.register(tx), Err(ClientError::Closed)));
}

fn info(user: &str) -> ServerInfo {
    ServerInfo {
        server: ServerId::new(user, ""),
        instance: 1,
        uid: 1001,
        pid: 42,
        state: ServerState::Running,
        profile: "default".into(),
        port: None,
        started_at: 0,
        exited_at: None,
    }
}

#[tokio::test]
async fn list_follows_pages() {
    let (client, peer) = pair();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.list().await }
    });
    let first = peer.recv().await;
    assert_eq!(
        first.body,
        Request::List {
            after: None,
            limit: MAX_LIST_PAGE
        }
    );
    peer.reply(
        first.id,
        &Response::Servers(ServerPage {
            servers: vec![info("a"), info("b")],
            next: Some(ServerId::new("b", "")),
        }),
    )
    .await;
    let second = peer.recv().await;
    assert_eq!(
        second.body,
        Request::List {
            after: Some(ServerId::new("b", "")),
            limit: MAX_LIST_PAGE
        }
    );
    peer.reply(
        second.id,
        &Response::Servers(ServerPage {
            servers: vec![info("c")],
            next: None,
        }),
    )
    .await;
    let all = call.await.unwrap().unwrap();
    let users: Vec<_> = all.iter().map(|s| s.server.user.as_str()).collect();
    assert_eq!(users, ["a", "b", "c"]);
}

#[tokio::test]
async fn list_that_does_not_advance_is_an_error() {
    let (client, peer) = pair();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.list().await }
    });
    for _ in 0..2 {
        let request = peer.recv().await;
        peer.reply(
            request.id,
            &Response::Servers(ServerPage {
                servers: vec![],
                next: Some(ServerId::new("b", "")),
            }),
        )
        .await;
    }
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
}

#[tokio::test]
async fn stop_signal_logs_status_round_trip() {
    let (client, peer) = pair();
    let responder = tokio::spawn(async move {
        loop {
            let request = peer.recv().await;
            let response = match request.body {
                Request::Stop { instance, now, .. } => {
                    assert!(now);
                    Response::Stopped {
                        instance: instance.unwrap(),
                        exit: ExitStatus::Signal(9),
                    }
                }
                Request::Signal { signal, .. } => {
                    assert_eq!(signal, 15);
                    Response::Signalled
                }
                Request::Logs { lines, .. } => Response::Logs(LogTail {
                    path: "/var/log/spawnd/alice/@default.log".into(),
                    lines: vec!["x".into(); lines as usize],
                    truncated: false,
                }),
                Request::Status => Response::Status(DaemonStatus {
                    version: "0.1.0".into(),
                    protocol: VERSION,
                    pid: 1,
                    uptime_secs: 5,
                    running: 0,
                    exited: 0,
                    tree_kill: "process-group".into(),
                    capabilities: vec![],
                    your_role: "admin".into(),
                }),
                other => panic!("{other:?}"),
            };
            peer.reply(request.id, &response).await;
        }
    });
    assert_eq!(
        client.stop(&alice(), Some(4), true).await.unwrap(),
        (4, ExitStatus::Signal(9))
    );
    client.signal(&alice(), None, 15).await.unwrap();
    assert_eq!(client.logs(&alice(), 3).await.unwrap().lines.len(), 3);
    assert_eq!(client.status().await.unwrap().your_role, "admin");
    responder.abort();
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_connection() {
    let (client, peer) = pair();
    let clone = client.clone();
    drop(client);
    // A clone keeps it open.
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(clone);
    let mut buf = [0u8; 16];
    let info = tokio::time::timeout(Duration::from_secs(5), peer.sock.recv(&mut buf))
        .await
        .expect("the peer sees the end of the connection")
        .unwrap();
    assert_eq!(info.bytes_read(), 0);
}

#[tokio::test]
async fn from_fd_makes_a_blocking_socket_non_blocking() {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let client = Client::from_fd(a).unwrap();
    let flags = nix::fcntl::fcntl(&client.inner.socket, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert!(nix::fcntl::OFlag::from_bits_retain(flags).contains(nix::fcntl::OFlag::O_NONBLOCK));
    drop(b);
}

#[tokio::test]
async fn from_fd_refuses_a_stream_socket() {
    let (a, _b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let err = Client::from_fd(a).unwrap_err();
    assert!(err.to_string().contains("SOCK_SEQPACKET"), "{err}");
}

#[test]
fn from_fd_outside_a_runtime_is_an_error() {
    let (a, _b) = raw_pair();
    let err = Client::from_fd(a).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test]
async fn connect_to_missing_socket_explains() {
    let dir = TempDir::new();
    let path = dir.0.join("nope.sock");
    let err = Client::connect(&path).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.is_daemon_unreachable());
    let text = err.to_string();
    assert!(text.contains(&*path.to_string_lossy()), "{text}");
    assert!(text.contains("is spawnd running"), "{text}");
}

#[tokio::test]
async fn connect_to_stale_socket_explains() {
    let dir = TempDir::new();
    let path = dir.0.join("stale.sock");
    drop(UnixSeqpacketListener::bind(&path).unwrap());
    let err = Client::connect(&path).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("nothing listens"), "{err}");
    // With socket activation the file stays when spawnd.socket is stopped: say how to start
    // it, not only the daemon.
    assert!(
        err.to_string()
            .contains("`systemctl start spawnd.socket spawnd.service`"),
        "{err}"
    );
    let err = Client::connect(&dir.0).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("not a socket"), "{err}");
}

/// Connects without accepting until the listener's backlog refuses more; returns the queued
/// connections (they must stay open to keep the backlog full).
fn fill_backlog(path: &Path) -> Vec<OwnedFd> {
    let mut queued = Vec::new();
    loop {
        match connect::connect_once(path) {
            Ok(fd) => queued.push(fd),
            Err(nix::errno::Errno::EAGAIN) => return queued,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(queued.len() < 100, "the backlog never filled");
    }
}

#[tokio::test]
async fn full_backlog_retries_then_reports_busy() {
    let dir = TempDir::new();
    let path = dir.0.join("busy.sock");
    let _listener = UnixSeqpacketListener::bind_with_backlog(&path, 1).unwrap();
    let queued = fill_backlog(&path);
    assert!(!queued.is_empty());
    let t0 = Instant::now();
    let err = Client::connect_timeout(&path, Duration::from_millis(300))
        .await
        .unwrap_err();
    let waited = t0.elapsed();
    assert!(matches!(err, ClientError::Busy { .. }), "{err:?}");
    assert!(err.is_daemon_unreachable());
    assert!(err.to_string().contains("backlog"), "{err}");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test]
async fn full_backlog_connects_once_the_daemon_accepts() {
    let dir = TempDir::new();
    let path = dir.0.join("slow.sock");
    let mut listener = UnixSeqpacketListener::bind_with_backlog(&path, 1).unwrap();
    let _queued = fill_backlog(&path);
    let connecting = tokio::spawn({
        let path = path.clone();
        async move { Client::connect_timeout(&path, Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !connecting.is_finished(),
        "connect must wait, not succeed unconnected"
    );
    // The daemon starts accepting: serve Status on every connection.
    tokio::spawn(async move {
        loop {
            let sock = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let peer = Peer { sock };
                loop {
                    let request = peer.recv().await;
                    peer.reply(
                        request.id,
                        &Response::Error(ErrorReply::new(ErrorKind::Busy, "served")),
                    )
                    .await;
                }
            });
        }
    });
    let client = connecting.await.unwrap().unwrap();
    let err = client.status().await.unwrap_err();
    assert_eq!(err.to_string(), "Busy: served", "the connection is real");
}
