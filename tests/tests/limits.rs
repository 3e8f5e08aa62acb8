//! Connection limits: many concurrent connections, floods past the limits, silent and idle
//! peers, too many requests in flight, peers that do not read their answers. The daemon must
//! answer `Busy` past a limit, keep serving the clients it already has, keep connections for
//! the hub and the admins whatever self-service users do, and never be blocked or grown by
//! peers that say nothing or read nothing.

use spawnd_client::{BlockingClient, Client, ClientError, ReconnectingClient};
use spawnd_protocol::{
    ErrorKind, ErrorReply, Request, Response, ServerId, StartRequest, decode_response,
    encode_request,
};
use spawnd_tests::{
    DaemonOptions, Profile, RawConn, RawRecv, TestDaemon, TestUser, add_test_user, connect_as,
    procfs, raise_fd_limit, require_root, sid, start, start_req, users, wait_for_async,
};
use std::time::{Duration, Instant};

fn options(extra: &str) -> DaemonOptions {
    DaemonOptions {
        extra_config: format!("{extra}\n"),
        ..DaemonOptions::default()
    }
}

fn hub_raw(d: &TestDaemon) -> RawConn {
    let h = &users().hub;
    RawConn::new(connect_as(&d.socket, h.uid, h.gid, &h.groups).expect("connect as hub"))
}

fn answer(conn: &RawConn, timeout: Duration) -> Option<(u32, Response)> {
    match conn.recv(timeout).expect("recv") {
        RawRecv::Packet(p) => {
            let env = decode_response(&p).expect("a valid response");
            Some((env.id, env.body))
        }
        RawRecv::Closed(_) | RawRecv::TimedOut => None,
    }
}

fn is_closed(conn: &RawConn, timeout: Duration) -> bool {
    matches!(conn.recv(timeout).expect("recv"), RawRecv::Closed(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_thousand_concurrent_connections_are_served() {
    require_root!();
    raise_fd_limit();
    let d = TestDaemon::start(options(
        "max_connections = 2000\nmax_connections_per_uid = 1500",
    ));
    let h = &users().hub;
    let started = Instant::now();
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let fd = connect_as(&d.socket, h.uid, h.gid, &h.groups).expect("connect");
        clients.push(Client::from_fd(fd).expect("client"));
    }
    // All of them open at once, each with a request in flight.
    let answers = futures_join_all(
        clients
            .iter()
            .cloned()
            .map(|c| async move { c.status().await }),
    )
    .await;
    let ok = answers.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ok,
        1000,
        "errors: {:?}",
        answers.iter().find(|r| r.is_err())
    );
    eprintln!(
        "1000 connections held and answered in {:?}",
        started.elapsed()
    );
    // A second round on the same connections: nothing was dropped.
    let again = futures_join_all(
        clients
            .iter()
            .cloned()
            .map(|c| async move { c.status().await }),
    )
    .await;
    assert!(again.iter().all(Result::is_ok));
}

/// `join_all` without a futures dependency: spawn each and await them in order.
async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_flood_past_the_limit_gets_busy_while_established_clients_keep_answers() {
    require_root!();
    raise_fd_limit();
    let d = TestDaemon::start(options("max_connections_per_uid = 20"));
    let h = &users().hub;
    let mut established = Vec::new();
    for _ in 0..20 {
        let fd = connect_as(&d.socket, h.uid, h.gid, &h.groups).expect("connect");
        let c = Client::from_fd(fd).expect("client");
        c.status().await.expect("an established client is served");
        established.push(c);
    }
    // The flood: 30 more connections of the same uid.
    for i in 0..30u32 {
        let conn = hub_raw(&d);
        conn.send(&encode_request(1000 + i, &Request::Status).unwrap())
            .expect("send");
        match answer(&conn, Duration::from_secs(5)) {
            Some((id, Response::Error(e))) => {
                assert_eq!(id, 1000 + i, "Busy answers the request it refuses");
                assert_eq!(e.kind, ErrorKind::Busy);
                assert!(
                    e.message.contains("max_connections_per_uid"),
                    "{}",
                    e.message
                );
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(
            is_closed(&conn, Duration::from_secs(5)),
            "the refused connection is closed"
        );
    }
    // Root (another uid) is not affected by the hub's flood.
    let admin = d.admin_client().await;
    admin.status().await.expect("admin served during the flood");
    for c in &established {
        c.status()
            .await
            .expect("established clients keep their answers");
    }
    // Once connections close, new ones are admitted again.
    established.truncate(10);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fd = connect_as(&d.socket, h.uid, h.gid, &h.groups).expect("connect");
    Client::from_fd(fd)
        .unwrap()
        .status()
        .await
        .expect("admitted again");
    assert!(
        d.stderr().contains("refused a connection: uid"),
        "the refusals are audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn silent_connections_are_dropped_and_block_nobody() {
    require_root!();
    let d = TestDaemon::start(options("first_request_timeout = 0.5"));
    let silent: Vec<RawConn> = (0..50).map(|_| hub_raw(&d)).collect();
    // Others are served at once while 50 peers hold connections and say nothing.
    let hub = d.hub_client().await;
    let t = Instant::now();
    hub.status().await.expect("served next to silent peers");
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "a silent peer delayed others"
    );
    for s in &silent {
        assert!(
            is_closed(s, Duration::from_secs(5)),
            "a silent connection was kept open"
        );
    }
    // A client that spoke first is not subject to the first-request timeout.
    tokio::time::sleep(Duration::from_millis(800)).await;
    hub.status()
        .await
        .expect("an established client survives idle time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn too_many_requests_in_flight_get_busy() {
    require_root!();
    let u = users();
    let d = TestDaemon::start(options("max_requests_in_flight = 2"));
    let hub = d.hub_client().await;
    for server in ["s1", "s2"] {
        hub.start(StartRequest {
            server: ServerId::new(&u.a.name, server),
            profile: "ignore".into(),
            args: vec![],
            env: vec![],
            port: None,
        })
        .await
        .expect("start");
    }
    // Wait until both trapped their signals (the profile prints a line when ready).
    for server in ["s1", "s2"] {
        let id = ServerId::new(&u.a.name, server);
        spawnd_tests::wait_for_async(Duration::from_secs(5), || async {
            let t = hub.logs(&id, 10).await.ok()?;
            (!t.lines.is_empty()).then_some(())
        })
        .await
        .expect("server ready");
    }
    let conn = hub_raw(&d);
    // Two stops that take about a second each (SIGINT and SIGTERM are ignored)...
    for (id, server) in [(1u32, "s1"), (2, "s2")] {
        let stop = Request::Stop {
            server: ServerId::new(&u.a.name, server),
            instance: None,
            now: false,
        };
        conn.send(&encode_request(id, &stop).unwrap()).unwrap();
    }
    // ...and a third request while they are in flight.
    conn.send(&encode_request(3, &Request::Status).unwrap())
        .unwrap();
    match answer(&conn, Duration::from_secs(1)) {
        Some((3, Response::Error(e))) => {
            assert_eq!(e.kind, ErrorKind::Busy);
            assert!(
                e.message.contains("max_requests_in_flight"),
                "{}",
                e.message
            );
        }
        other => panic!("expected Busy for request 3 first, got {other:?}"),
    }
    let mut stopped = 0;
    while let Some((id, body)) = answer(&conn, Duration::from_secs(10)) {
        assert!(matches!(body, Response::Stopped { .. }), "{id}: {body:?}");
        stopped += 1;
        if stopped == 2 {
            break;
        }
    }
    assert_eq!(stopped, 2);
    // The connection is usable again.
    conn.send(&encode_request(4, &Request::Status).unwrap())
        .unwrap();
    assert!(matches!(
        answer(&conn, Duration::from_secs(2)),
        Some((4, Response::Status(_)))
    ));
}

/// Opens connections as `user` until the daemon refuses one (at most `max`), each with one
/// request answered, so that it is established and then idle. Returns those it holds and the
/// refusal.
fn hold_connections(
    d: &TestDaemon,
    user: &TestUser,
    max: usize,
) -> (Vec<RawConn>, Option<ErrorReply>) {
    let mut held = Vec::new();
    for i in 0..max {
        let conn = d.raw_as(user);
        let id = i as u32 + 1;
        conn.send(&encode_request(id, &Request::Status).expect("encode"))
            .expect("send");
        match answer(&conn, Duration::from_secs(10)) {
            Some((got, Response::Status(_))) => {
                assert_eq!(got, id);
                held.push(conn);
            }
            Some((_, Response::Error(e))) if e.kind == ErrorKind::Busy => return (held, Some(e)),
            other => panic!("{}: expected Status or Busy, got {other:?}", user.name),
        }
    }
    (held, None)
}

/// A member of the notebook group, made for this test binary (`tag`: see `add_test_user`).
fn member(tag: &str) -> TestUser {
    add_test_user(tag, &["-M", "-G", &users().group.name])
}

fn self_service(extra: &str) -> DaemonOptions {
    DaemonOptions {
        self_service: true,
        ..options(extra)
    }
}

/// Security review, issue 11 item 7: four self-service users holding idle connections could
/// take every connection there is, and the hub and root got `Busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn self_service_users_at_their_limit_cannot_lock_out_the_hub_or_root() {
    require_root!();
    raise_fd_limit();
    let u = users();
    let (c, e) = (member("ssc"), member("sse"));
    // Room for 100 connections and 30 per uid: four users at 30 would hold them all.
    let d = TestDaemon::start(self_service(
        "max_connections = 100\nmax_connections_per_uid = 30",
    ));
    d.open_socket_to_all();
    let mut held = Vec::new();
    let mut refusals = Vec::new();
    for user in [&u.a, &u.b, &c, &e] {
        let (conns, refused) = hold_connections(&d, user, 40);
        refusals.push((user.name.clone(), conns.len(), refused));
        held.extend(conns);
    }
    // While the users hold every connection they may, the hub and root are admitted and
    // answered.
    let hub = d.hub_client().await;
    let status = hub.status().await.expect("the hub is served");
    assert_eq!(status.your_role, "hub");
    let root = d.admin_client().await;
    assert_eq!(
        root.status().await.expect("root is served").your_role,
        "admin"
    );
    // The hub has its own budget: many more connections of its own.
    let mut hubs = Vec::new();
    for _ in 0..28 {
        let h = d.hub_client().await;
        h.status().await.expect("another hub connection is served");
        hubs.push(h);
    }
    for (name, count, refused) in refusals {
        let refused = refused.unwrap_or_else(|| panic!("{name} was never refused"));
        assert_eq!(refused.kind, ErrorKind::Busy);
        assert!(
            refused.message.contains("max_user_connections_per_uid"),
            "{name}: {}",
            refused.message
        );
        assert_eq!(count, 4, "{name}: the default max_user_connections_per_uid");
    }
    // The users' connections are served as before.
    for conn in &held {
        assert!(matches!(
            conn.request(99, &Request::Status).body,
            Response::Status(_)
        ));
    }
    assert!(
        d.stderr().contains("max_user_connections_per_uid"),
        "the refusals are audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn self_service_users_together_stay_within_max_user_connections() {
    require_root!();
    let u = users();
    let c = member("ssf");
    let d = TestDaemon::start(self_service(
        "max_user_connections = 6\nmax_user_connections_per_uid = 4",
    ));
    d.open_socket_to_all();
    let (mut a, refused) = hold_connections(&d, &u.a, 10);
    assert_eq!(a.len(), 4);
    assert!(
        refused
            .unwrap()
            .message
            .contains("max_user_connections_per_uid")
    );
    let (b, refused) = hold_connections(&d, &u.b, 10);
    assert_eq!(b.len(), 2, "six for all users together");
    let refused = refused.unwrap();
    assert!(
        refused.message.contains("max_user_connections;"),
        "{}",
        refused.message
    );
    let (none, refused) = hold_connections(&d, &c, 10);
    assert!(none.is_empty());
    assert!(refused.unwrap().message.contains("max_user_connections;"));
    // The hub and root are not affected.
    let hub = d.hub_client().await;
    hub.status().await.expect("the hub is served");
    d.admin_client()
        .await
        .status()
        .await
        .expect("root is served");
    // Closed user connections make room for users again.
    a.truncate(2);
    let more = wait_for_async(Duration::from_secs(5), || async {
        let (conns, _) = hold_connections(&d, &c, 2);
        (conns.len() == 2).then_some(conns)
    })
    .await;
    assert!(more.is_some(), "closed connections were not given back");
}

/// Issue 11 item 7: only the first request had a timeout, so a peer could hold a connection for
/// ever by going quiet after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn idle_connections_are_closed_and_those_with_a_request_in_flight_are_not() {
    require_root!();
    let u = users();
    let mut opts = options("idle_timeout = 1");
    // A stop that takes 3 s: SIGINT is ignored until the profile's interrupt_timeout.
    opts.profiles.push(
        Profile::shell(
            "slowstop",
            "trap '' INT; echo slowstop-ready; while :; do sleep 0.1; done",
        )
        .timeouts(3.0, 5.0, 5.0),
    );
    let d = TestDaemon::start(opts);

    // Idle after one answer: closed once idle_timeout has passed, not before.
    let idle = hub_raw(&d);
    assert!(matches!(
        idle.request(1, &Request::Status).body,
        Response::Status(_)
    ));
    assert!(
        matches!(
            idle.recv(Duration::from_millis(300)).expect("recv"),
            RawRecv::TimedOut
        ),
        "closed before idle_timeout"
    );
    assert!(
        is_closed(&idle, Duration::from_secs(10)),
        "an idle connection was kept open"
    );
    assert!(d.stderr().contains("closed an idle connection"), "audited");

    // A request in flight for longer than idle_timeout: the connection stays for its answer.
    let hub = d.hub_client().await;
    let server = sid(&u.a.name, "slow");
    start(&hub, start_req(&u.a.name, "slow", "slowstop")).await;
    wait_for_async(Duration::from_secs(5), || async {
        let t = hub.logs(&server, 10).await.ok()?;
        t.lines.iter().any(|l| l == "slowstop-ready").then_some(())
    })
    .await
    .expect("server ready");
    let busy = hub_raw(&d);
    let stop = Request::Stop {
        server,
        instance: None,
        now: false,
    };
    busy.send(&encode_request(7, &stop).unwrap()).unwrap();
    match answer(&busy, Duration::from_secs(30)) {
        Some((7, Response::Stopped { .. })) => {}
        other => panic!("expected the stop's answer on a connection kept open, got {other:?}"),
    }
    // Idle from the answer on.
    assert!(
        matches!(
            busy.recv(Duration::from_millis(300)).expect("recv"),
            RawRecv::TimedOut
        ),
        "closed before idle_timeout after the answer"
    );
    assert!(
        is_closed(&busy, Duration::from_secs(10)),
        "kept open after its answer"
    );
}

/// What each client does with a connection the daemon closed while it was idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn clients_after_an_idle_close() {
    require_root!();
    let d = TestDaemon::start(options("idle_timeout = 1"));
    let h = &users().hub;
    let idle_closes = || d.stderr().matches("closed an idle connection").count();

    // The Rust Client does not reconnect: the next call says clearly that nothing was sent.
    let client = d.hub_client().await;
    client.status().await.expect("status");
    wait_for_async(Duration::from_secs(10), || async {
        (!client.is_open()).then_some(())
    })
    .await
    .expect("the client sees the connection closed");
    let err = client.status().await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    assert!(err.to_string().contains("idle_timeout"), "{err}");

    // So does the blocking client (spawnctl's).
    let fd = connect_as(&d.socket, h.uid, h.gid, &h.groups).expect("connect");
    let blocking = BlockingClient::from_fd(fd).expect("client");
    blocking.status().expect("status");
    let before = idle_closes();
    wait_for_async(Duration::from_secs(10), || async {
        (idle_closes() > before).then_some(())
    })
    .await
    .expect("the daemon closes the idle connection");
    let err = blocking.status().unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");

    // The reconnecting client (the hub's, through the Python binding) connects again and the
    // call succeeds.
    let spawnd = ReconnectingClient::new(&d.socket, Duration::from_secs(5));
    spawnd
        .call(|c| async move { c.status().await })
        .await
        .expect("status");
    let before = idle_closes();
    wait_for_async(Duration::from_secs(10), || async {
        (idle_closes() > before).then_some(())
    })
    .await
    .expect("the daemon closes the idle connection");
    let status = spawnd
        .call(|c| async move { c.status().await })
        .await
        .expect("the next call after an idle close succeeds");
    assert_eq!(status.your_role, "admin");
}

/// Issue 11 item 8: a peer that sent Logs requests and never read the answers made the daemon
/// keep every answer (3,000 requests 2 ms apart: 18 → 473 MB), and was never disconnected.
/// Runs with the default send_timeout (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_peer_that_does_not_read_its_answers_is_disconnected_and_does_not_grow_the_daemon() {
    require_root!();
    const SEND_TIMEOUT: Duration = Duration::from_secs(10);
    let u = users();
    let mut opts = options("");
    // About 300 KB of log, so that every Logs answer fills a packet.
    opts.profiles.push(Profile::shell(
        "chatty",
        "i=0; while [ $i -lt 3000 ]; do echo \"line $i of a log that fills every Logs answer \
         to the brim, ninety bytes or so, over and over\"; i=$((i+1)); done; \
         echo chatty-ready; exec sleep 1000",
    ));
    let d = TestDaemon::start(opts);
    let hub = d.hub_client().await;
    let server = sid(&u.a.name, "chatty");
    start(&hub, start_req(&u.a.name, "chatty", "chatty")).await;
    let tail = wait_for_async(Duration::from_secs(10), || async {
        let t = hub.logs(&server, 10_000).await.ok()?;
        (t.lines.last().map(String::as_str) == Some("chatty-ready")).then_some(t)
    })
    .await
    .expect("server ready");
    let answer_size: usize = tail.lines.iter().map(String::len).sum();
    assert!(
        answer_size > 48 * 1024,
        "a Logs answer of {answer_size} bytes"
    );
    let pid = d.pid();
    let base = procfs::rss_kib(pid).expect("VmRSS");

    // 3,000 Logs requests 2 ms apart on one connection that never reads.
    let flood = hub_raw(&d);
    let logs = encode_request(
        1,
        &Request::Logs {
            server: server.clone(),
            lines: 10_000,
        },
    )
    .unwrap();
    let flooder = std::thread::spawn(move || {
        let started = Instant::now();
        for sent in 0..3000u32 {
            if let Err(e) = flood.send(&logs) {
                return (sent, Some((e, started.elapsed())));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (3000, None)
    });
    // Meanwhile the hub keeps getting answers, and the daemon's memory is watched.
    let mut peak = base;
    let mut answered = 0;
    while !flooder.is_finished() {
        tokio::time::timeout(Duration::from_secs(10), hub.poll(&server, None))
            .await
            .expect("the hub waited 10 s for an answer during the flood")
            .expect("the hub's poll is answered");
        answered += 1;
        peak = peak.max(procfs::rss_kib(pid).expect("VmRSS"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (sent, failed) = flooder.join().expect("flooder");
    let grown = peak.saturating_sub(base);
    eprintln!(
        "sent {sent} Logs requests; daemon RSS {base} KiB, peak {peak} KiB (+{grown} KiB); \
         the hub got {answered} answers meanwhile"
    );
    let (error, after) = failed.unwrap_or_else(|| {
        panic!("the daemon took all {sent} requests of a peer that reads nothing (+{grown} KiB)")
    });
    // EPIPE once the daemon shut the connection down, ECONNRESET once it closed it with the
    // peer's requests unread.
    assert!(
        matches!(error.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
        "the daemon shut the connection down: {error}"
    );
    assert!(
        after < SEND_TIMEOUT + Duration::from_secs(20),
        "disconnected only after {after:?}"
    );
    assert!(
        grown < 32 * 1024,
        "the daemon grew by {grown} KiB for a peer that reads nothing"
    );
    assert!(
        d.stderr().contains("does not read its answers"),
        "the disconnection is audited"
    );
    hub.status().await.expect("the hub is still served");
}

/// A peer past its limit that connects in a loop and sends nothing: each refusal waits a
/// second for the request its `Busy` answers, and used to keep a descriptor for it, one per
/// attempt. At most 64 refusals wait at once; the others are closed unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn refused_connections_cannot_pile_up() {
    require_root!();
    raise_fd_limit();
    let u = users();
    let d = TestDaemon::start(self_service(""));
    d.open_socket_to_all();
    let (held, refused) = hold_connections(&d, &u.a, 10);
    assert!(refused.is_some());
    let pid = d.pid();
    let base = procfs::fd_count(pid).expect("fds");
    let mut attempts = Vec::new();
    let mut peak = base;
    for i in 0..400 {
        attempts.push(d.raw_as(&u.a));
        if i % 10 == 0 {
            peak = peak.max(procfs::fd_count(pid).expect("fds"));
        }
    }
    peak = peak.max(procfs::fd_count(pid).expect("fds"));
    eprintln!("daemon descriptors: {base} before 400 refused connections, {peak} at most");
    assert!(
        peak <= base + 64 + 8,
        "refused connections held {} descriptors",
        peak - base
    );
    assert!(d.stderr().contains("closed unread"), "audited");
    d.hub_client()
        .await
        .status()
        .await
        .expect("the hub is served");
    drop(held);
}
