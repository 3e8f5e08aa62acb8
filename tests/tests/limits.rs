//! Connection limits: many concurrent connections, floods past the limits, silent peers, too
//! many requests in flight. The daemon must answer `Busy` past a limit, keep serving the
//! clients it already has, and never be blocked by peers that say nothing.

use spawnd_client::Client;
use spawnd_protocol::{
    ErrorKind, Request, Response, ServerId, StartRequest, decode_response, encode_request,
};
use spawnd_tests::{DaemonOptions, RawConn, RawRecv, TestDaemon, connect_as, require_root, users};
use std::time::{Duration, Instant};

/// This test process opens many sockets: allow it its hard limit of descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

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
