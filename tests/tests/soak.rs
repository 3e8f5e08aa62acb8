//! A soak of start/stop cycles (`SPAWND_SOAK_CYCLES`, default 500; `scripts/reliability
//! --soak 10000` runs the full one): no zombie, no leaked descriptor, memory back near its
//! baseline, no record, temporary file or cgroup left.
//!
//! It needs root (it is marked ignored; run it with `-- --include-ignored`) and prints its
//! figures (`cargo test ... -- --nocapture` shows them).

use spawnd_client::Client;
use spawnd_protocol::{ExitStatus, Polled, ServerState, StartRequest};
use spawnd_tests::load::{
    assert_nothing_left, error_lines, footprint, load_options, ms, percentile, settled_footprint,
    wait_fds,
};
use spawnd_tests::{
    Profile, TestDaemon, files_under, procfs, require_root, sid, users, wait_for_async,
};
use std::time::{Duration, Instant};

/// Runs `cycles` start/stop cycles over `workers` concurrent servers (each worker its own
/// server name, users A and B alternating). Every tenth cycle runs a server that exits at
/// once, waits until Poll reports it exited, then stops (forgets) it; the others run `sleep`
/// and are stopped with `now`. Returns the start and stop latencies.
async fn soak_cycles(
    hubs: &[Client],
    workers: usize,
    cycles: usize,
    tag: &str,
) -> (Vec<Duration>, Vec<Duration>) {
    let u = users();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let hub = hubs[w % hubs.len()].clone();
            let user = if w % 2 == 0 { &u.a.name } else { &u.b.name };
            let id = sid(user, &format!("{tag}{w}"));
            let mine = cycles / workers + usize::from(w < cycles % workers);
            tokio::spawn(async move {
                let mut starts = Vec::with_capacity(mine);
                let mut stops = Vec::with_capacity(mine);
                for k in 0..mine {
                    let quick = k % 10 == 9;
                    let profile = if quick { "quick" } else { "sleeper" };
                    let req = StartRequest {
                        server: id.clone(),
                        profile: profile.into(),
                        args: vec![],
                        env: vec![],
                        port: None,
                    };
                    let t = Instant::now();
                    let started = hub
                        .start(req)
                        .await
                        .map_err(|e| format!("cycle {k} of {id}: start: {e}"))?;
                    starts.push(t.elapsed());
                    let expected = if quick {
                        let exit = wait_for_async(Duration::from_secs(10), || async {
                            match hub.poll(&id, Some(started.instance)).await {
                                Ok(Polled {
                                    state: ServerState::Exited(e),
                                    ..
                                }) => Some(Ok(e)),
                                Ok(_) => None,
                                Err(e) => Some(Err(e)),
                            }
                        })
                        .await
                        .ok_or_else(|| format!("cycle {k} of {id}: /bin/true did not exit"))?
                        .map_err(|e| format!("cycle {k} of {id}: poll: {e}"))?;
                        if exit != ExitStatus::Code(0) {
                            return Err(format!("cycle {k} of {id}: /bin/true ended {exit}"));
                        }
                        ExitStatus::Code(0)
                    } else {
                        ExitStatus::Signal(libc::SIGTERM)
                    };
                    let t = Instant::now();
                    let (instance, exit) = hub
                        .stop(&id, Some(started.instance), true)
                        .await
                        .map_err(|e| format!("cycle {k} of {id}: stop: {e}"))?;
                    stops.push(t.elapsed());
                    if (instance, exit) != (started.instance, expected) {
                        return Err(format!(
                            "cycle {k} of {id}: stopped {instance} {exit}, expected {} {expected}",
                            started.instance
                        ));
                    }
                }
                Ok::<_, String>((starts, stops))
            })
        })
        .collect();
    let mut starts = Vec::with_capacity(cycles);
    let mut stops = Vec::with_capacity(cycles);
    for t in tasks {
        let (s, p) = t.await.expect("worker").unwrap_or_else(|e| panic!("{e}"));
        starts.extend(s);
        stops.extend(p);
    }
    starts.sort();
    stops.sort();
    (starts, stops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn soak_start_stop_cycles_leak_nothing() {
    require_root!();
    let cycles: usize = std::env::var("SPAWND_SOAK_CYCLES")
        .ok()
        .map(|v| v.parse().expect("SPAWND_SOAK_CYCLES is a number"))
        .unwrap_or(500);
    const WORKERS: usize = 8;
    let d = TestDaemon::start(load_options(
        vec![
            Profile::command("sleeper", &["/bin/sleep", "1000"]),
            Profile::command("quick", &["/bin/true"]),
        ],
        "sleeper",
        "",
    ));
    let hubs: Vec<Client> = (0..2)
        .map(|_| Client::from_fd(d.hub_fd()).expect("client"))
        .collect();
    let pid = d.pid();

    // Warm-up: every worker's server name once (and the runtime's threads).
    soak_cycles(&hubs, WORKERS, WORKERS * 5, "soak").await;
    assert_nothing_left(&d, "after the warm-up");
    let base = settled_footprint(pid);

    let t0 = Instant::now();
    let (starts, stops) = soak_cycles(&hubs, WORKERS, cycles, "soak").await;
    let took = t0.elapsed();
    assert_eq!(starts.len(), cycles);

    assert_nothing_left(&d, "after the soak");
    assert_eq!(procfs::zombie_children(pid), Vec::<u32>::new(), "zombies");
    let fds = wait_fds(pid, base.fds, Duration::from_secs(20));
    assert_eq!(fds, base.fds, "the daemon leaked descriptors");
    let after = footprint(pid);
    let margin_kib = 2048 + base.rss_kib / 10;
    assert!(
        after.rss_kib <= base.rss_kib + margin_kib,
        "daemon RSS grew from {} KiB to {} KiB over {cycles} cycles",
        base.rss_kib,
        after.rss_kib
    );
    let admin = d.admin_client().await;
    assert!(admin.list().await.expect("list").is_empty());
    let status = admin.status().await.expect("status");
    assert_eq!((status.running, status.exited), (0, 0));
    // Logs: each server's current log and at most log_keep (3) older generations.
    let logs = files_under(&d.log_dir());
    assert!(
        logs.len() <= WORKERS * 4,
        "{} log files for {WORKERS} servers",
        logs.len()
    );
    for user in [&users().a, &users().b] {
        assert_eq!(procfs::pids_of_uid(user.uid), Vec::<u32>::new());
    }
    assert_eq!(error_lines(&d.stderr()), Vec::<&str>::new());
    eprintln!(
        "soak: {cycles} start/stop cycles ({WORKERS} concurrent servers) in {} ({:.0} \
         cycles/s); start p50 {} p99 {} max {}; stop p50 {} p99 {} max {}; daemon fds {} -> \
         {}, RSS {} -> {} KiB, threads {} -> {}; zombies 0, records 0, tmp files 0, cgroups 0",
        ms(took),
        cycles as f64 / took.as_secs_f64(),
        ms(percentile(&starts, 50)),
        ms(percentile(&starts, 99)),
        ms(percentile(&starts, 100)),
        ms(percentile(&stops, 50)),
        ms(percentile(&stops, 99)),
        ms(percentile(&stops, 100)),
        base.fds,
        after.fds,
        base.rss_kib,
        after.rss_kib,
        base.threads,
        after.threads
    );
}
