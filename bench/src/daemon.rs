//! Measurements against a running spawnd through the Rust client ([`spawnd_client::Client`]).

use crate::stats::{cgroup_cpu, pin_to, self_cpu, summary_json};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use spawnd_client::protocol::{ServerId, StartRequest};
use spawnd_client::{Client, ClientError};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A current-thread runtime: the caller and the client's reader task share one thread, as in
/// the client's blocking wrapper.
pub fn current_thread() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// A multi-thread runtime with one worker per CPU (for load generators).
pub fn multi_thread() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

fn start_request(server: &ServerId, profile: &str) -> StartRequest {
    StartRequest {
        server: server.clone(),
        profile: profile.to_string(),
        args: vec![],
        env: vec![],
        port: None,
    }
}

/// Counts errors by kind, keeping the first message of each.
#[derive(Debug, Default)]
struct Errors {
    by_kind: BTreeMap<String, (u64, String)>,
}

impl Errors {
    fn add(&mut self, e: &ClientError) {
        let kind = e
            .kind()
            .map_or_else(|| "client".to_string(), |k| k.to_string());
        let slot = self
            .by_kind
            .entry(kind)
            .or_insert_with(|| (0, e.to_string()));
        slot.0 += 1;
    }

    fn total(&self) -> u64 {
        self.by_kind.values().map(|(n, _)| n).sum()
    }

    fn to_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = self
            .by_kind
            .iter()
            .map(|(k, (n, msg))| (k.clone(), json!({ "count": n, "first": msg })))
            .collect();
        json!({ "total": self.total(), "kinds": kinds })
    }
}

/// Poll, status and list round trips, one at a time, against a server this starts (and stops
/// afterwards) with `profile`.
pub fn rtt(
    socket: &Path,
    user: &str,
    profile: &str,
    iters: usize,
    warmup: usize,
    cpu: Option<usize>,
) -> Result<Value> {
    pin_to(cpu).context("sched_setaffinity")?;
    let rt = current_thread()?;
    rt.block_on(async {
        let client = Client::connect(socket).await?;
        let id = ServerId::new(user, "rtt");
        let started = client.start(start_request(&id, profile)).await?;
        let instance = Some(started.instance);
        let mut out = serde_json::Map::new();
        let mut result: Result<()> = Ok(());
        for op in ["poll", "status", "list"] {
            let mut samples = Vec::with_capacity(iters);
            for i in 0..warmup + iters {
                let t0 = Instant::now();
                let r = match op {
                    "poll" => client.poll(&id, instance).await.map(drop),
                    "status" => client.status().await.map(drop),
                    _ => client.list_page(None, 200).await.map(drop),
                };
                let elapsed = t0.elapsed();
                if let Err(e) = r {
                    result = Err(e).with_context(|| format!("{op} failed"));
                    break;
                }
                if i >= warmup {
                    samples.push(elapsed);
                }
            }
            out.insert(op.to_string(), summary_json(&mut samples));
        }
        type Polls = fn(&Path, &ServerId, u64, usize, usize) -> Result<Vec<Duration>>;
        let others: [(&str, Polls); 2] =
            [("poll_raw", raw_polls), ("poll_blocking", blocking_polls)];
        for (key, polls) in others {
            if result.is_err() {
                break;
            }
            match polls(socket, &id, started.instance, iters, warmup) {
                Ok(mut samples) => {
                    out.insert(key.into(), summary_json(&mut samples));
                }
                Err(e) => result = Err(e),
            }
        }
        client.stop(&id, instance, true).await?;
        result?;
        out.insert("cpu".into(), json!(cpu));
        Ok(Value::Object(out))
    })
}

/// Polls over a second connection through the client library's `BlockingClient` (blocking
/// send and recv, no runtime).
fn blocking_polls(
    socket: &Path,
    id: &ServerId,
    instance: u64,
    iters: usize,
    warmup: usize,
) -> Result<Vec<Duration>> {
    let client = spawnd_client::BlockingClient::connect(socket)?;
    let mut samples = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        client.poll(id, Some(instance))?;
        let elapsed = t0.elapsed();
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

/// Polls over a second connection with bare blocking send/recv of the encoded request (no
/// client library): the daemon's own share of a round trip.
fn raw_polls(
    socket: &Path,
    id: &ServerId,
    instance: u64,
    iters: usize,
    warmup: usize,
) -> Result<Vec<Duration>> {
    use std::os::unix::ffi::OsStrExt;
    let fd = {
        // SAFETY: creating a socket; the result is checked.
        let fd =
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = socket.as_os_str().as_bytes();
    if path.len() >= addr.sun_path.len() {
        bail!("socket path too long");
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: addr is a valid sockaddr_un of the given size.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("connect");
    }
    let request = spawnd_client::protocol::encode_request(
        1,
        &spawnd_client::protocol::Request::Poll {
            server: id.clone(),
            instance: Some(instance),
        },
    )?;
    let mut buf = vec![0u8; 4096];
    let mut samples = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        // SAFETY: sending from a live slice.
        let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("send");
        }
        // SAFETY: receiving into a buffer of the given size.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let elapsed = t0.elapsed();
        if n <= 0 {
            bail!("the daemon closed the raw connection");
        }
        if i == 0 {
            let reply = spawnd_client::protocol::decode_response(&buf[..n as usize])?;
            if !matches!(reply.body, spawnd_client::protocol::Response::Polled(_)) {
                bail!("unexpected answer to a raw poll: {:?}", reply.body);
            }
        }
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

/// Blocks until the process behind `pidfd` has exited; returns when it saw it.
fn wait_exit_observed(pidfd: &OwnedFd) -> Instant {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd; no timeout.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Instant::now();
        }
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the calling thread SCHED_FIFO, so that it runs the moment it wakes (the exit observer
/// must not be delayed behind the daemon on a 2-core machine). Best effort.
fn realtime() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: pid 0 is the calling thread; param is a valid local.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

/// Start-to-running (Start request sent → Started received, which the daemon sends once the
/// server's exec has happened), then stop of a server that exits on its first signal (SIGINT):
/// the stop's round trip, and how long after the exit (seen on a pidfd by a real-time thread)
/// the Stopped answer arrived. Each start waits `gap` after the previous stop (isolated starts,
/// as a hub makes them).
pub fn spawn(
    socket: &Path,
    user: &str,
    profile: &str,
    iters: usize,
    warmup: usize,
    gap: Duration,
    daemon_cgroup: Option<&Path>,
) -> Result<Value> {
    let rt = current_thread()?;
    rt.block_on(async {
        let client = Client::connect(socket).await?;
        let id = ServerId::new(user, "spawn");
        let (mut start, mut stop, mut after_exit) = (vec![], vec![], vec![]);
        let (mut cpu_start, mut cpu_stop) = (Duration::ZERO, Duration::ZERO);
        for i in 0..warmup + iters {
            let c0 = cgroup_cpu(daemon_cgroup);
            let t0 = Instant::now();
            let started = client.start(start_request(&id, profile)).await?;
            let t_start = t0.elapsed();
            let c1 = cgroup_cpu(daemon_cgroup);
            let pidfd = pidfd_open(started.pid).context("pidfd_open of the server")?;
            let observer = std::thread::spawn(move || {
                realtime();
                wait_exit_observed(&pidfd)
            });
            // Let the observer block in poll before the stop begins.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let c2 = cgroup_cpu(daemon_cgroup);
            let t1 = Instant::now();
            client.stop(&id, Some(started.instance), false).await?;
            let t_done = Instant::now();
            let c3 = cgroup_cpu(daemon_cgroup);
            let exited = observer
                .join()
                .map_err(|_| anyhow::anyhow!("the exit observer panicked"))?;
            if i >= warmup {
                start.push(t_start);
                stop.push(t_done - t1);
                after_exit.push(t_done.saturating_duration_since(exited));
                if let (Some(c0), Some(c1), Some(c2), Some(c3)) = (c0, c1, c2, c3) {
                    cpu_start += c1.saturating_sub(c0);
                    cpu_stop += c3.saturating_sub(c2);
                }
            }
            tokio::time::sleep(gap).await;
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / iters.max(1) as f64;
        Ok(json!({
            "profile": profile,
            "gap_ms": gap.as_secs_f64() * 1e3,
            "start": summary_json(&mut start),
            "stop": summary_json(&mut stop),
            "stop_after_exit": summary_json(&mut after_exit),
            "daemon_cpu_us_per_start": daemon_cgroup.map(|_| per(cpu_start)),
            "daemon_cpu_us_per_stop": daemon_cgroup.map(|_| per(cpu_stop)),
        }))
    })
}

/// The (user, server) pairs of the scale test: `per_user` servers `s0000`… for each user.
pub fn scale_ids(users: &[String], per_user: usize) -> Vec<ServerId> {
    users
        .iter()
        .flat_map(|u| (0..per_user).map(move |i| ServerId::new(u.clone(), format!("s{i:04}"))))
        .collect()
}

async fn connect_many(socket: &Path, n: usize) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Client::connect(socket).await?);
    }
    Ok(clients)
}

/// What to do to every server of the scale test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    Start,
    Poll,
    Stop,
}

/// Applies `action` to every scale server with at most `window` requests in flight per
/// connection over `connections` connections (`window` 0: all at once, as `asyncio.gather`
/// over one connection would). Reports the wall time, the rate and the errors by kind.
pub fn many(
    socket: &Path,
    ids: Vec<ServerId>,
    action: Action,
    profile: &str,
    connections: usize,
    window: usize,
) -> Result<Value> {
    let rt = multi_thread()?;
    rt.block_on(async {
        let clients = connect_many(socket, connections.max(1)).await?;
        let total = ids.len();
        let limits: Vec<Option<Arc<Semaphore>>> = clients
            .iter()
            .map(|_| (window > 0).then(|| Arc::new(Semaphore::new(window))))
            .collect();
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in ids.into_iter().enumerate() {
            let c = i % clients.len();
            let client = clients[c].clone();
            let limit = limits[c].clone();
            let profile = profile.to_string();
            tasks.spawn(async move {
                let _permit = match &limit {
                    Some(s) => Some(s.clone().acquire_owned().await),
                    None => None,
                };
                let t = Instant::now();
                let r = match action {
                    Action::Start => client.start(start_request(&id, &profile)).await.map(drop),
                    Action::Poll => client.poll(&id, None).await.map(drop),
                    Action::Stop => client.stop(&id, None, false).await.map(drop),
                };
                (r, t.elapsed())
            });
        }
        let mut errors = Errors::default();
        let mut latencies = Vec::with_capacity(total);
        while let Some(done) = tasks.join_next().await {
            let (r, elapsed) = done.context("a request task panicked")?;
            match r {
                Ok(()) => latencies.push(elapsed),
                Err(e) => errors.add(&e),
            }
        }
        let wall = t0.elapsed();
        Ok(json!({
            "action": format!("{action:?}").to_lowercase(),
            "servers": total,
            "connections": clients.len(),
            "window": window,
            "wall_s": wall.as_secs_f64(),
            "per_s": total as f64 / wall.as_secs_f64(),
            "ok": latencies.len(),
            "latency": summary_json(&mut latencies),
            "errors": errors.to_json(),
        }))
    })
}

/// Times `Client::list` (every page) of all servers, `iters` times.
pub fn list_all(socket: &Path, iters: usize) -> Result<Value> {
    let rt = current_thread()?;
    rt.block_on(async {
        let client = Client::connect(socket).await?;
        let mut samples = Vec::with_capacity(iters);
        let mut count = 0;
        for _ in 0..iters {
            let t0 = Instant::now();
            count = client.list().await?.len();
            samples.push(t0.elapsed());
        }
        Ok(json!({ "servers": count, "list": summary_json(&mut samples) }))
    })
}

/// Closed-loop poll throughput: `clients` connections, each with `depth` tasks that poll the
/// scale servers one after the other for `seconds` (after a warm-up of a quarter of that).
/// Also reports the CPU the load generator and the daemon (its cgroup) spent per poll.
pub fn throughput(
    socket: &Path,
    ids: Vec<ServerId>,
    clients: usize,
    depth: usize,
    seconds: f64,
    daemon_cgroup: Option<PathBuf>,
) -> Result<Value> {
    if ids.is_empty() {
        bail!("no servers to poll");
    }
    let rt = multi_thread()?;
    rt.block_on(async {
        let conns = connect_many(socket, clients.max(1)).await?;
        let ids = Arc::new(ids);
        let counting = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let workers = conns.len() * depth.max(1);
        for w in 0..workers {
            let client = conns[w % conns.len()].clone();
            let (ids, counting, stop) = (ids.clone(), counting.clone(), stop.clone());
            let (done, failed) = (done.clone(), failed.clone());
            tasks.spawn(async move {
                let mut i = w * 7919;
                while !stop.load(Ordering::Relaxed) {
                    let id = &ids[i % ids.len()];
                    i += 1;
                    let ok = client.poll(id, None).await.is_ok();
                    if counting.load(Ordering::Relaxed) {
                        if ok {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_secs_f64(seconds / 4.0)).await;
        let (cpu0, dcpu0) = (self_cpu(), cgroup_cpu(daemon_cgroup.as_deref()));
        let t0 = Instant::now();
        counting.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        counting.store(false, Ordering::Relaxed);
        let wall = t0.elapsed();
        let (cpu1, dcpu1) = (self_cpu(), cgroup_cpu(daemon_cgroup.as_deref()));
        stop.store(true, Ordering::Relaxed);
        while tasks.join_next().await.is_some() {}
        let n = done.load(Ordering::Relaxed);
        let per_poll = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
        Ok(json!({
            "clients": conns.len(),
            "depth": depth,
            "seconds": wall.as_secs_f64(),
            "polls": n,
            "failed": failed.load(Ordering::Relaxed),
            "polls_per_s": n as f64 / wall.as_secs_f64(),
            "client_cpu_us_per_poll": per_poll(cpu1.saturating_sub(cpu0)),
            "daemon_cpu_us_per_poll": match (dcpu0, dcpu1) {
                (Some(a), Some(b)) => json!(per_poll(b.saturating_sub(a))),
                _ => Value::Null,
            },
        }))
    })
}
