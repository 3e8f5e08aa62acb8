//! The daemon under load, with figures (see RELIABILITY.md):
//!
//! - a lecture: 200 simultaneous starts from several hub connections, then 200 stops;
//! - 1,000 clients × 100 requests: no error, no growth of the daemon's memory or descriptors
//!   (`SPAWND_LOAD_ROUNDS` measured rounds, default 3; `scripts/reliability --load 10` runs
//!   more).
//!
//! They need root (each is marked ignored; run them with `-- --include-ignored`). They print
//! their figures (`cargo test ... -- --nocapture` shows them) and take the `HEAVY` lock, so that
//! they do not compete with each other for the two cores. (Cargo runs one test file at a time:
//! the soak in `soak.rs` never runs beside them.)

use spawnd_client::Client;
use spawnd_protocol::{ExitStatus, ServerId, ServerState, StartRequest};
use spawnd_tests::load::{
    assert_nothing_left, error_lines, footprint, load_options, ms, percentile, settled_footprint,
    wait_fds,
};
use spawnd_tests::{
    Profile, TestDaemon, procfs, raise_fd_limit, require_root, sid, start_req, users,
    wait_for_async,
};
use std::time::{Duration, Instant};

/// Held by the load tests, so that they measure the daemon and not each other. (Each test has
/// its own runtime; tokio's mutex works across them.)
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// 1. a lecture: 200 simultaneous starts

const LECTURE_READY: &str = "lecture-ready";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_lecture_of_200_simultaneous_starts_then_200_stops() {
    require_root!();
    let _heavy = HEAVY.lock().await;
    let u = users();
    let profile = Profile::shell("lecture", &format!("echo {LECTURE_READY}; exec sleep 1000"));
    let d = TestDaemon::start(load_options(vec![profile], "lecture", ""));
    const CONNECTIONS: usize = 8;
    const SERVERS: usize = 200;
    let hubs: Vec<Client> = (0..CONNECTIONS)
        .map(|_| Client::from_fd(d.hub_fd()).expect("client"))
        .collect();
    let ids: Vec<ServerId> = (0..SERVERS)
        .map(|i| {
            let user = if i % 2 == 0 { &u.a.name } else { &u.b.name };
            sid(user, &format!("lecture{:03}", i / 2))
        })
        .collect();

    // 9:00: every start is sent at once, spread over the hub's connections.
    let t0 = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let hub = hubs[i % CONNECTIONS].clone();
            let req = StartRequest {
                server: id.clone(),
                profile: String::new(),
                args: vec![],
                env: vec![("JUPYTERHUB_SERVER_NAME".into(), id.server.clone())],
                port: Some(20_000 + i as u16),
            };
            tokio::spawn(async move {
                let t = Instant::now();
                (hub.start(req).await, t.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(SERVERS);
    let mut started = Vec::with_capacity(SERVERS);
    for (task, id) in tasks.into_iter().zip(&ids) {
        let (result, took) = task.await.expect("start task");
        let s = result.unwrap_or_else(|e| panic!("start {id} failed during the lecture: {e}"));
        latencies.push(took);
        started.push(s);
    }
    let all_started = t0.elapsed();
    latencies.sort();

    // All 200 are running, each as its user, each a distinct process.
    let admin = d.admin_client().await;
    let list = admin.list().await.expect("list");
    assert_eq!(list.len(), SERVERS);
    assert!(list.iter().all(|s| s.state == ServerState::Running));
    let mut pids: Vec<u32> = started.iter().map(|s| s.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), SERVERS, "two starts share a pid");
    for (s, id) in started.iter().zip(&ids) {
        let uid = if id.user == u.a.name {
            u.a.uid
        } else {
            u.b.uid
        };
        assert_eq!(
            procfs::status_ids(s.pid, "Uid").and_then(|v| v.first().copied()),
            Some(uid),
            "{id} (pid {}) runs as the wrong user",
            s.pid
        );
    }
    // Every server got going (its log says so).
    let all_ready = wait_for_async(Duration::from_secs(30), || async {
        for (i, id) in ids.iter().enumerate() {
            let tail = hubs[i % CONNECTIONS].logs(id, 5).await.ok()?;
            if !tail.lines.iter().any(|l| l == LECTURE_READY) {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(
        all_ready.is_some(),
        "not every server printed its ready line"
    );
    let during = footprint(d.pid());

    // 10:30: everyone leaves at once.
    let t1 = Instant::now();
    let stops: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let hub = hubs[i % CONNECTIONS].clone();
            let id = id.clone();
            tokio::spawn(async move { (hub.stop(&id, None, false).await, id) })
        })
        .collect();
    for task in stops {
        let (result, id) = task.await.expect("stop task");
        let (_, exit) = result.unwrap_or_else(|e| panic!("stop {id}: {e}"));
        assert_eq!(
            exit,
            ExitStatus::Signal(libc::SIGINT),
            "{id}: sleep dies of the SIGINT"
        );
    }
    let all_stopped = t1.elapsed();
    assert!(admin.list().await.expect("list").is_empty());
    for pid in &pids {
        assert!(!procfs::is_alive(*pid), "pid {pid} survived its stop");
    }
    assert_nothing_left(&d, "after the lecture");
    for user in [&u.a, &u.b] {
        assert_eq!(procfs::pids_of_uid(user.uid), Vec::<u32>::new());
    }
    admin.status().await.expect("the daemon still serves");
    assert_eq!(error_lines(&d.stderr()), Vec::<&str>::new());
    eprintln!(
        "lecture: {SERVERS} simultaneous starts over {CONNECTIONS} hub connections: all \
         started in {} (start latency p50 {}, p95 {}, max {}); all stopped in {}; daemon while \
         200 ran: {} fds, {} KiB RSS, {} threads",
        ms(all_started),
        ms(percentile(&latencies, 50)),
        ms(percentile(&latencies, 95)),
        ms(percentile(&latencies, 100)),
        ms(all_stopped),
        during.fds,
        during.rss_kib,
        during.threads
    );
}

// ---------------------------------------------------------------------------------------------
// 2. 1,000 clients × 100 requests

/// One round: `clients` hub connections at once, each sending `per_client` requests one after
/// the other (polls of both servers, status, list), all clients concurrently. Returns the
/// number of answers and the time taken; panics on the first error.
async fn request_round(
    d: &TestDaemon,
    clients: usize,
    per_client: usize,
    servers: &[(ServerId, u64)],
) -> (usize, Duration) {
    let conns: Vec<Client> = (0..clients)
        .map(|_| Client::from_fd(d.hub_fd()).expect("client"))
        .collect();
    let t0 = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let servers = servers.to_vec();
            tokio::spawn(async move {
                let mut answered = 0usize;
                for j in 0..per_client {
                    let (id, instance) = &servers[(i + j) % servers.len()];
                    let ok = match (i + j) % 4 {
                        0 | 1 => c.poll(id, Some(*instance)).await.map(|p| {
                            assert_eq!(p.state, ServerState::Running, "{id}");
                        }),
                        2 => c.status().await.map(|s| assert_eq!(s.your_role, "hub")),
                        _ => c.list_page(None, 0).await.map(|p| {
                            assert_eq!(p.servers.len(), servers.len());
                        }),
                    };
                    if let Err(e) = ok {
                        return Err(format!("client {i}, request {j}: {e}"));
                    }
                    answered += 1;
                }
                Ok(answered)
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        answered += t
            .await
            .expect("client task")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    (answered, t0.elapsed())
}

/// 1,000 hub connections at once, each sending 100 requests: every one answered without
/// error, and afterwards the daemon holds exactly the descriptors it held before and no more
/// memory than after the warm-up round (within 4 MiB + 10 %), over three more rounds
/// (`SPAWND_LOAD_ROUNDS`). A daemon that kept a zero-filled 64 KiB receive buffer per open
/// connection grows by about 40 MiB after the warm-up (glibc reuses the freed buffers, and
/// `calloc` then touches every page) and keeps creeping up to a plateau near 100 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn a_thousand_clients_times_100_requests_leave_no_growth() {
    require_root!();
    let _heavy = HEAVY.lock().await;
    raise_fd_limit();
    let u = users();
    let d = TestDaemon::start(load_options(
        vec![Profile::command("sleeper", &["/bin/sleep", "1000"])],
        "sleeper",
        "max_connections = 2000\nmax_connections_per_uid = 1500",
    ));
    let hub = d.hub_client().await;
    let mut servers = Vec::new();
    for user in [&u.a, &u.b] {
        let s = hub
            .start(start_req(&user.name, "", ""))
            .await
            .expect("start");
        servers.push((sid(&user.name, ""), s.instance));
    }
    let pid = d.pid();
    let base = settled_footprint(pid);

    // Warm-up: one full round. The first burst of 1000 connections takes the daemon's heap to
    // its working size (each connection holds a 64 KiB receive buffer while it is open); what
    // counts is that further rounds do not add to it.
    let (n, warm_took) = request_round(&d, 1000, 100, &servers).await;
    assert_eq!(n, 100_000);
    let fds = wait_fds(pid, base.fds, Duration::from_secs(20));
    assert_eq!(fds, base.fds, "descriptors after the warm-up round");
    let warm = footprint(pid);

    let rounds_wanted: usize = std::env::var("SPAWND_LOAD_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("SPAWND_LOAD_ROUNDS is a number"))
        .unwrap_or(3);
    let mut rounds = Vec::new();
    for _ in 0..rounds_wanted {
        let (n, took) = request_round(&d, 1000, 100, &servers).await;
        assert_eq!(n, 100_000);
        let fds = wait_fds(pid, base.fds, Duration::from_secs(20));
        assert_eq!(
            fds, base.fds,
            "the daemon holds more descriptors after 1000 clients left"
        );
        rounds.push((took, footprint(pid)));
    }
    // The figures first, so that a failing run shows them too.
    let margin_kib = 4096 + warm.rss_kib / 10;
    let peak = rounds.iter().map(|r| r.1.rss_kib).max().unwrap_or(0);
    eprintln!(
        "1000 clients x 100 requests, warm-up round: 100000 answers, 0 errors in {} ({:.0} \
         requests/s)",
        ms(warm_took),
        100_000.0 / warm_took.as_secs_f64()
    );
    for (i, (took, f)) in rounds.iter().enumerate() {
        eprintln!(
            "1000 clients x 100 requests, round {}: 100000 answers, 0 errors in {} ({:.0} \
             requests/s); daemon afterwards: {} fds, {} KiB RSS, {} threads",
            i + 1,
            ms(*took),
            100_000.0 / took.as_secs_f64(),
            f.fds,
            f.rss_kib,
            f.threads
        );
    }
    eprintln!(
        "daemon footprint: before {} fds / {} KiB RSS; after the warm-up round {} fds / {} \
         KiB; after {} more rounds {} fds / {} KiB at most (allowed: {} KiB)",
        base.fds,
        base.rss_kib,
        warm.fds,
        warm.rss_kib,
        rounds.len(),
        rounds[rounds.len() - 1].1.fds,
        peak,
        warm.rss_kib + margin_kib
    );
    // The servers were never disturbed.
    for (id, instance) in &servers {
        let p = hub.poll(id, Some(*instance)).await.expect("poll");
        assert_eq!(p.state, ServerState::Running);
    }
    assert_eq!(error_lines(&d.stderr()), Vec::<&str>::new());
    // A small margin: the allocator does not hand back exactly the same pages every time.
    assert!(
        peak <= warm.rss_kib + margin_kib,
        "daemon RSS grew from {} KiB after the warm-up round to {peak} KiB after {} more \
         rounds of 100,000 requests: {:?}",
        warm.rss_kib,
        rounds.len(),
        rounds.iter().map(|r| r.1.rss_kib).collect::<Vec<_>>()
    );
    for (id, _) in &servers {
        hub.stop(id, None, true).await.expect("stop");
    }
}
