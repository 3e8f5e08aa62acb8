//! Robustness under hostile input and load, with figures (see RELIABILITY.md).
//!
//! - the fuzz seed corpus (`fuzz/corpus/`) matches the protocol (not root);
//! - abuse of the hub role: hostile names, lists over the limits, bad environment names get
//!   typed errors and nothing is executed;
//! - a lecture: 200 simultaneous starts from several hub connections, then 200 stops;
//! - 1,000 clients × 100 requests: no error, no growth of the daemon's memory or descriptors;
//! - a soak of start/stop cycles (`SPAWND_SOAK_CYCLES`, default 500; `scripts/reliability
//!   --soak 10000` runs the full one): no zombie, no leaked descriptor, memory back near its
//!   baseline, no record, temporary file or cgroup left.
//!
//! The tests with a daemon need root: they are marked ignored, so run them as root with
//! `cargo test -p spawnd-tests --test robustness -- --include-ignored`.
//!
//! The load tests print their figures (`cargo test ... -- --nocapture` shows them) and take
//! the `HEAVY` lock, so that they do not compete with each other for the two cores.

use spawnd_client::{Client, ClientError};
use spawnd_protocol::{
    DaemonStatus, ErrorKind, ErrorReply, ExitStatus, LogTail, MAX_ARGS, MAX_ENV, MAX_LIST_PAGE,
    MAX_LOG_LINES, MAX_PACKET, MAX_STRING, Polled, Request, Response, ServerId, ServerInfo,
    ServerPage, ServerState, StartRequest, Started, decode_request, decode_response,
    encode_request, encode_response,
};
use spawnd_tests::{
    DaemonOptions, PROFILE_PATH, Profile, RawConn, RawRecv, TestDaemon, add_test_user, connect_as,
    procfs, require_root, sid, start_req, users, wait_for, wait_for_async,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// helpers

/// Held by the load tests, so that they measure the daemon and not each other. (Each test has
/// its own runtime; tokio's mutex works across them.)
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This test process opens many sockets: allow it its hard limit of descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// Options for the load tests: the daemon logs at `info`, as it would in production (`debug`
/// audits every poll).
fn load_options(profiles: Vec<Profile>, default: &str, extra: &str) -> DaemonOptions {
    DaemonOptions {
        profiles,
        default_profile: default.to_owned(),
        extra_config: format!("{extra}\n"),
        env: vec![("SPAWND_LOG".into(), "info".into())],
        ..DaemonOptions::default()
    }
}

fn hub_client_fd(d: &TestDaemon) -> std::os::fd::OwnedFd {
    let h = &users().hub;
    connect_as(&d.socket, h.uid, h.gid, &h.groups).expect("connect as the hub")
}

/// The p-th percentile (0..=100) of sorted durations.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Every file under `dir` (recursively), relative paths.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Subdirectories of `dir`, recursively (cgroups are directories).
fn dirs_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path());
            out.extend(dirs_under(&e.path()));
        }
    }
    out
}

/// What a daemon holds, as the kernel sees it.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    fds: usize,
    rss_kib: u64,
    threads: u64,
}

fn footprint(pid: u32) -> Footprint {
    Footprint {
        fds: procfs::fd_count(pid).expect("the daemon's /proc/PID/fd"),
        rss_kib: procfs::rss_kib(pid).expect("the daemon's VmRSS"),
        threads: procfs::status_number(pid, "Threads").expect("the daemon's Threads"),
    }
}

/// The daemon's footprint once its background work has settled: the state directory's fsync
/// thread opens each record and directory for a moment after a write, so the descriptor count
/// is the lowest seen over a short while.
fn settled_footprint(pid: u32) -> Footprint {
    let mut fp = footprint(pid);
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(10));
        fp.fds = fp
            .fds
            .min(procfs::fd_count(pid).expect("the daemon's /proc/PID/fd"));
    }
    fp
}

/// Waits (bounded) until the daemon's descriptor count is back to `fds`; returns the count
/// last seen.
fn wait_fds(pid: u32, fds: usize, timeout: Duration) -> usize {
    wait_for(timeout, || {
        let n = procfs::fd_count(pid)?;
        (n <= fds).then_some(n)
    })
    .unwrap_or_else(|| procfs::fd_count(pid).unwrap_or(usize::MAX))
}

/// Waits (bounded) until nothing of any server is left: no live child of the daemon, no
/// record in the state directory, no temporary file, no per-server cgroup. Panics with what is
/// left otherwise.
fn assert_nothing_left(d: &TestDaemon, what: &str) {
    let state = d.dir.state_dir();
    let left = wait_for(Duration::from_secs(20), || {
        let children = procfs::servers_of(d.pid());
        let zombies = procfs::zombie_children(d.pid());
        let records = files_under(&state);
        let cgroups = d.cgroup_base.as_deref().map(dirs_under).unwrap_or_default();
        (children.is_empty() && zombies.is_empty() && records.is_empty() && cgroups.is_empty())
            .then_some(())
    });
    if left.is_none() {
        panic!(
            "{what}: something was left after 20 s: children {:?}, zombies {:?}, state files \
             {:?}, cgroups {:?}",
            procfs::servers_of(d.pid()),
            procfs::zombie_children(d.pid()),
            files_under(&state),
            d.cgroup_base.as_deref().map(dirs_under)
        );
    }
}

/// The ERROR lines of the daemon's log.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(" ERROR ")).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. the fuzz seed corpus

/// A postcard unsigned varint.
fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn pstring(s: &[u8], out: &mut Vec<u8>) {
    varint(s.len() as u64, out);
    out.extend_from_slice(s);
}

/// A `Start` packet built by hand (so that it can break what `encode_request` refuses: the
/// packet size, UTF-8).
fn raw_start(id: u32, user: &[u8], server: &[u8], args: &[Vec<u8>]) -> Vec<u8> {
    let mut p = Vec::new();
    varint(1, &mut p); // version
    varint(u64::from(id), &mut p);
    varint(0, &mut p); // Request::Start
    pstring(user, &mut p);
    pstring(server, &mut p);
    pstring(b"", &mut p); // profile
    varint(args.len() as u64, &mut p);
    for a in args {
        pstring(a, &mut p);
    }
    varint(0, &mut p); // env
    p.push(0); // port: None
    p
}

fn enc(id: u32, r: &Request) -> Vec<u8> {
    encode_request(id, r).expect("encode a seed")
}

fn start_with(f: impl FnOnce(&mut StartRequest)) -> Request {
    let mut s = StartRequest {
        server: sid("alice", "gpu"),
        profile: "default".into(),
        args: vec!["--debug".into()],
        env: vec![
            ("JUPYTERHUB_API_TOKEN".into(), "0123456789abcdef".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ],
        port: Some(8888),
    };
    f(&mut s);
    Request::Start(s)
}

/// The request seeds: (file name, bytes, whether `decode_request` must accept them).
fn request_seeds() -> Vec<(&'static str, Vec<u8>, bool)> {
    let id = sid("alice", "");
    let long = "x".repeat(MAX_STRING);
    let mut seeds: Vec<(&'static str, Vec<u8>, bool)> = vec![
        (
            "start-default-server",
            enc(1, &Request::Start(start_req("alice", "", ""))),
            true,
        ),
        ("start-named-full", enc(2, &start_with(|_| {})), true),
        (
            "start-user-at-domain",
            enc(
                3,
                &start_with(|s| s.server = sid("bob@example.org", "a.b-c_d")),
            ),
            true,
        ),
        (
            "start-256-args",
            enc(4, &start_with(|s| s.args = vec!["a".into(); MAX_ARGS])),
            true,
        ),
        (
            "start-512-env",
            enc(
                5,
                &start_with(|s| s.env = vec![("JPY_X".into(), String::new()); MAX_ENV]),
            ),
            true,
        ),
        (
            "start-arg-at-max-string",
            enc(6, &start_with(|s| s.args = vec![long.clone()])),
            true,
        ),
        (
            "poll",
            enc(
                7,
                &Request::Poll {
                    server: id.clone(),
                    instance: None,
                },
            ),
            true,
        ),
        (
            "poll-instance",
            enc(
                8,
                &Request::Poll {
                    server: sid("alice", "gpu"),
                    instance: Some(u64::MAX),
                },
            ),
            true,
        ),
        (
            "stop",
            enc(
                9,
                &Request::Stop {
                    server: id.clone(),
                    instance: Some(1_764_000_000_000_000),
                    now: false,
                },
            ),
            true,
        ),
        (
            "stop-now",
            enc(
                10,
                &Request::Stop {
                    server: id.clone(),
                    instance: None,
                    now: true,
                },
            ),
            true,
        ),
        (
            "signal",
            enc(
                11,
                &Request::Signal {
                    server: id.clone(),
                    instance: None,
                    signal: 15,
                },
            ),
            true,
        ),
        (
            "signal-64",
            enc(
                12,
                &Request::Signal {
                    server: id.clone(),
                    instance: Some(3),
                    signal: 64,
                },
            ),
            true,
        ),
        (
            "list",
            enc(
                13,
                &Request::List {
                    after: None,
                    limit: 0,
                },
            ),
            true,
        ),
        (
            "list-after",
            enc(
                14,
                &Request::List {
                    after: Some(sid("alice", "gpu")),
                    limit: MAX_LIST_PAGE,
                },
            ),
            true,
        ),
        (
            "logs",
            enc(
                15,
                &Request::Logs {
                    server: id.clone(),
                    lines: MAX_LOG_LINES,
                },
            ),
            true,
        ),
        ("status", enc(16, &Request::Status), true),
        ("status-id-max", enc(u32::MAX, &Request::Status), true),
        // Refused ones: each exercises one check of the decoder.
        ("empty", Vec::new(), false),
        ("version-only", vec![1], false),
        ("version-2", vec![2, 17, 6], false),
        ("unknown-variant", vec![1, 18, 7], false),
        (
            "overlong-varint-id",
            vec![1, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 6],
            false,
        ),
        (
            "trailing-bytes",
            [enc(19, &Request::Status), vec![0]].concat(),
            false,
        ),
        (
            "truncated-start",
            {
                let v = enc(20, &start_with(|_| {}));
                v[..v.len() / 2].to_vec()
            },
            false,
        ),
        (
            "user-traversal",
            enc(21, &Request::Start(start_req("../../etc", "", ""))),
            false,
        ),
        (
            "server-slash",
            enc(22, &Request::Start(start_req("alice", "a/b", ""))),
            false,
        ),
        (
            "server-dotdot",
            enc(
                23,
                &Request::Logs {
                    server: sid("alice", ".."),
                    lines: 1,
                },
            ),
            false,
        ),
        (
            "user-nul",
            enc(24, &Request::Start(start_req("al\0ice", "", ""))),
            false,
        ),
        (
            "profile-traversal",
            enc(25, &Request::Start(start_req("alice", "", "../x"))),
            false,
        ),
        (
            "start-257-args",
            enc(
                26,
                &start_with(|s| s.args = vec![String::new(); MAX_ARGS + 1]),
            ),
            false,
        ),
        (
            "start-513-env",
            enc(
                27,
                &start_with(|s| s.env = vec![("JPY_X".into(), String::new()); MAX_ENV + 1]),
            ),
            false,
        ),
        (
            "start-arg-over-max-string",
            enc(28, &start_with(|s| s.args = vec![format!("{long}x")])),
            false,
        ),
        (
            "start-arg-nul",
            enc(29, &start_with(|s| s.args = vec!["a\0b".into()])),
            false,
        ),
        (
            "start-env-name-invalid",
            enc(
                30,
                &start_with(|s| s.env = vec![("A=B".into(), "c".into())]),
            ),
            false,
        ),
        (
            "start-env-value-nul",
            enc(
                31,
                &start_with(|s| s.env = vec![("LANG".into(), "C\0".into())]),
            ),
            false,
        ),
        (
            "signal-0",
            enc(
                32,
                &Request::Signal {
                    server: id.clone(),
                    instance: None,
                    signal: 0,
                },
            ),
            false,
        ),
        (
            "signal-65",
            enc(
                33,
                &Request::Signal {
                    server: id.clone(),
                    instance: None,
                    signal: 65,
                },
            ),
            false,
        ),
        (
            "list-over-page",
            enc(
                34,
                &Request::List {
                    after: None,
                    limit: MAX_LIST_PAGE + 1,
                },
            ),
            false,
        ),
        (
            "logs-over-lines",
            enc(
                35,
                &Request::Logs {
                    server: id,
                    lines: MAX_LOG_LINES + 1,
                },
            ),
            false,
        ),
        (
            "string-not-utf8",
            raw_start(36, b"al\xffice", b"", &[]),
            false,
        ),
        (
            "bool-not-0-or-1",
            {
                let mut v = enc(
                    37,
                    &Request::Stop {
                        server: sid("a", ""),
                        instance: None,
                        now: true,
                    },
                );
                let last = v.len() - 1;
                v[last] = 2;
                v
            },
            false,
        ),
        (
            "huge-length-prefix",
            {
                // A Start whose user name claims 2^32 bytes: must fail without allocating.
                let mut v = vec![1, 38, 0];
                varint(1 << 32, &mut v);
                v.extend_from_slice(b"alice");
                v
            },
            false,
        ),
    ];
    seeds.sort_by(|a, b| a.0.cmp(b.0));
    seeds
}

/// The response seeds: (file name, bytes, whether `decode_response` must accept them).
fn response_seeds() -> Vec<(&'static str, Vec<u8>, bool)> {
    let r = |id: u32, resp: &Response| encode_response(id, resp).expect("encode a seed");
    let info = |server: &str, state: ServerState| ServerInfo {
        server: sid("alice", server),
        instance: 1_764_000_000_000_001,
        uid: 1001,
        pid: 4242,
        state,
        profile: "default".into(),
        port: Some(8888),
        started_at: 1_764_000_000,
        exited_at: None,
    };
    let mut seeds: Vec<(&'static str, Vec<u8>, bool)> = vec![
        (
            "error-policy-denied",
            r(
                1,
                &Response::Error(ErrorReply::new(
                    ErrorKind::PolicyDenied,
                    "user bob is not a member of group jupyterhub-users",
                )),
            ),
            true,
        ),
        (
            "error-internal",
            r(
                2,
                &Response::Error(ErrorReply::new(ErrorKind::Internal, "")),
            ),
            true,
        ),
        (
            "started",
            r(
                3,
                &Response::Started(Started {
                    instance: 1_764_000_000_000_001,
                    pid: 4242,
                    dropped_env: vec!["LD_PRELOAD".into(), "PYTHONPATH".into()],
                    log_path: "/var/log/spawnd/alice/@default.log".into(),
                }),
            ),
            true,
        ),
        (
            "polled-running",
            r(
                4,
                &Response::Polled(Polled {
                    instance: 1,
                    pid: 4242,
                    state: ServerState::Running,
                }),
            ),
            true,
        ),
        (
            "polled-exited-signal",
            r(
                5,
                &Response::Polled(Polled {
                    instance: 1,
                    pid: 4242,
                    state: ServerState::Exited(ExitStatus::Signal(9)),
                }),
            ),
            true,
        ),
        (
            "stopped-code",
            r(
                6,
                &Response::Stopped {
                    instance: 1,
                    exit: ExitStatus::Code(-1),
                },
            ),
            true,
        ),
        (
            "stopped-unknown",
            r(
                7,
                &Response::Stopped {
                    instance: 1,
                    exit: ExitStatus::Unknown,
                },
            ),
            true,
        ),
        ("signalled", r(8, &Response::Signalled), true),
        (
            "servers",
            r(
                9,
                &Response::Servers(ServerPage {
                    servers: vec![
                        info("", ServerState::Running),
                        info("gpu", ServerState::Starting),
                        ServerInfo {
                            exited_at: Some(1_764_000_100),
                            ..info("old", ServerState::Exited(ExitStatus::Code(3)))
                        },
                        info("x", ServerState::Stopping),
                    ],
                    next: Some(sid("alice", "x")),
                }),
            ),
            true,
        ),
        (
            "logs",
            r(
                10,
                &Response::Logs(LogTail {
                    path: "/var/log/spawnd/alice/@default.log".into(),
                    lines: vec!["READY".into(), String::new(), "ünïcödé".into()],
                    truncated: true,
                }),
            ),
            true,
        ),
        (
            "status",
            r(
                11,
                &Response::Status(DaemonStatus {
                    version: "0.1.0".into(),
                    protocol: 1,
                    pid: 1,
                    uptime_secs: 86_400,
                    running: 200,
                    exited: 3,
                    tree_kill: "cgroup-v2 (/sys/fs/cgroup/spawnd)".into(),
                    capabilities: vec!["CAP_SETUID".into(), "CAP_KILL".into()],
                    your_role: "hub".into(),
                }),
            ),
            true,
        ),
        ("empty", Vec::new(), false),
        ("unknown-variant", vec![1, 12, 8], false),
        ("unknown-error-kind", vec![1, 13, 0, 9, 0], false),
        (
            "trailing-bytes",
            [r(14, &Response::Signalled), vec![0]].concat(),
            false,
        ),
        ("version-2", vec![2, 15, 4], false),
    ];
    seeds.sort_by(|a, b| a.0.cmp(b.0));
    seeds
}

/// Checks the committed seed corpus of a fuzz target against `seeds` (and that each seed is
/// accepted or refused as expected); with `SPAWND_WRITE_FUZZ_SEEDS=1`, writes it instead.
fn check_seed_dir(
    target: &str,
    seeds: &[(&'static str, Vec<u8>, bool)],
    accepts: impl Fn(&[u8]) -> bool,
) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let write = std::env::var_os("SPAWND_WRITE_FUZZ_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).expect("mkdir corpus");
    }
    for (name, bytes, ok) in seeds {
        assert!(bytes.len() <= MAX_PACKET, "seed {name} is over MAX_PACKET");
        assert_eq!(
            accepts(bytes),
            *ok,
            "{target} seed {name}: decoder {} it",
            if *ok { "refused" } else { "accepted" }
        );
        let path = dir.join(name);
        if write {
            std::fs::write(&path, bytes).expect("write seed");
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate the seed corpus with `SPAWND_WRITE_FUZZ_SEEDS=1 cargo test \
                 -p spawnd-tests --test robustness fuzz_seed_corpus`",
                path.display()
            )
        });
        assert!(
            committed == *bytes,
            "{} is not the current encoding; regenerate it with `SPAWND_WRITE_FUZZ_SEEDS=1 \
             cargo test -p spawnd-tests --test robustness fuzz_seed_corpus`",
            path.display()
        );
    }
}

/// The committed seeds are valid encodings of every request and response variant (and the
/// edge cases the decoder must refuse), in the protocol's current encoding.
#[test]
fn fuzz_seed_corpus_matches_the_protocol() {
    check_seed_dir("decode_request", &request_seeds(), |b| {
        decode_request(b).is_ok()
    });
    check_seed_dir("decode_response", &response_seeds(), |b| {
        decode_response(b).is_ok()
    });
}

// ---------------------------------------------------------------------------------------------
// 2. abuse of the hub role

/// Sends `packet` and returns the error the daemon answers with (panics on anything else).
fn refused(conn: &RawConn, what: &str, packet: &[u8]) -> (u32, ErrorReply) {
    conn.send(packet)
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    match conn.recv(Duration::from_secs(10)).expect("recv") {
        RawRecv::Packet(p) => {
            let env =
                decode_response(&p).unwrap_or_else(|e| panic!("{what}: undecodable answer: {e}"));
            match env.body {
                Response::Error(reply) => (env.id, reply),
                other => panic!("{what}: answered {other:?} instead of an error"),
            }
        }
        other => panic!("{what}: no answer ({other:?})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn hub_role_abuse_gets_typed_errors_and_runs_nothing() {
    require_root!();
    let u = users();
    // A user of this test alone (A and B run servers in the load tests beside it), so that
    // "no process of the target user" is exact.
    let target = add_test_user("abuse", &["-m", "-G", &u.group.name]);
    let d = TestDaemon::start(DaemonOptions::default());
    let a = target.name.as_str();
    let long = "x".repeat(MAX_STRING + 1);
    let start = |user: &str, server: &str| Request::Start(start_req(user, server, ""));
    let start_a = |f: &dyn Fn(&mut StartRequest)| {
        let mut s = start_req(a, "", "");
        f(&mut s);
        Request::Start(s)
    };
    // (what, request, words the message must contain)
    let cases: Vec<(&str, Request, Vec<&str>)> = vec![
        ("NUL in the user name", start("spw\0root", ""), vec!["user"]),
        ("NUL in the server name", start(a, "x\0y"), vec!["server"]),
        ("/ in the user name", start("a/b", ""), vec!["user", "/"]),
        ("user name ../../etc", start("../../etc", ""), vec!["user"]),
        ("user name ..", start("..", ""), vec!["user"]),
        ("user name .", start(".", ""), vec!["user"]),
        ("empty user name", start("", ""), vec!["user", "empty"]),
        (
            "user name of 65 bytes",
            start(&"a".repeat(65), ""),
            vec!["64"],
        ),
        ("/ in the server name", start(a, "a/b"), vec!["server", "/"]),
        ("server name ..", start(a, ".."), vec!["server"]),
        (
            "server name ../../../etc/cron.d/x",
            start(a, "../../../etc/cron.d/x"),
            vec!["server"],
        ),
        ("server name .hidden", start(a, ".hidden"), vec!["server"]),
        (
            "profile name ../x",
            start_a(&|s| s.profile = "../x".into()),
            vec!["profile"],
        ),
        (
            "257 arguments",
            start_a(&|s| s.args = vec!["--x".into(); MAX_ARGS + 1]),
            vec!["257", "256"],
        ),
        (
            "513 environment variables",
            start_a(&|s| {
                s.env = (0..=MAX_ENV)
                    .map(|i| (format!("JUPYTERHUB_X{i}"), "v".into()))
                    .collect()
            }),
            vec!["513", "512"],
        ),
        (
            "an argument of 16 KiB + 1",
            start_a(&|s| s.args = vec![long.clone()]),
            vec!["argument 0", "16384"],
        ),
        (
            "NUL in an argument",
            start_a(&|s| s.args = vec!["--ok".into(), "--a\0b".into()]),
            vec!["argument 1", "NUL"],
        ),
        (
            "NUL in an environment value",
            start_a(&|s| s.env = vec![("JUPYTERHUB_USER".into(), "a\0b".into())]),
            vec!["JUPYTERHUB_USER", "NUL"],
        ),
        (
            "an environment value of 16 KiB + 1",
            start_a(&|s| s.env = vec![("LANG".into(), long.clone())]),
            vec!["LANG", "16384"],
        ),
        (
            "environment name with =",
            start_a(&|s| s.env = vec![("LD_PRELOAD=/tmp/x.so JPY_A".into(), "1".into())]),
            vec!["environment name"],
        ),
        (
            "empty environment name",
            start_a(&|s| s.env = vec![(String::new(), "1".into())]),
            vec!["environment name"],
        ),
        (
            "environment name starting with a digit",
            start_a(&|s| s.env = vec![("1JPY".into(), "1".into())]),
            vec!["environment name"],
        ),
        (
            "NUL in an environment name",
            start_a(&|s| s.env = vec![("JPY_\0LD_PRELOAD".into(), "1".into())]),
            vec!["environment name"],
        ),
        (
            "environment name with a dash",
            start_a(&|s| s.env = vec![("JUPYTERHUB-X".into(), "1".into())]),
            vec!["environment name"],
        ),
        (
            "poll ../x",
            Request::Poll {
                server: sid("../x", ""),
                instance: None,
            },
            vec!["user"],
        ),
        (
            "stop a/../b",
            Request::Stop {
                server: sid(a, "a/../b"),
                instance: None,
                now: true,
            },
            vec!["server"],
        ),
        (
            "signal 0",
            Request::Signal {
                server: sid(a, ""),
                instance: None,
                signal: 0,
            },
            vec!["signal 0"],
        ),
        (
            "signal -9",
            Request::Signal {
                server: sid(a, ""),
                instance: None,
                signal: -9,
            },
            vec!["signal -9"],
        ),
        (
            "logs of /etc/shadow",
            Request::Logs {
                server: sid("/etc", "shadow"),
                lines: 10,
            },
            vec!["user"],
        ),
        (
            "logs of 10001 lines",
            Request::Logs {
                server: sid(a, ""),
                lines: MAX_LOG_LINES + 1,
            },
            vec!["10001"],
        ),
        (
            "list of 201",
            Request::List {
                after: None,
                limit: MAX_LIST_PAGE + 1,
            },
            vec!["201"],
        ),
    ];

    let conn = d.raw_as(&u.hub);
    let mut tried = 0;
    for (i, (what, request, words)) in cases.iter().enumerate() {
        let id = 100 + i as u32;
        let packet = encode_request(id, request).expect("encode");
        let (got_id, reply) = refused(&conn, what, &packet);
        assert_eq!(
            (got_id, reply.kind),
            (id, ErrorKind::InvalidRequest),
            "{what}: {reply:?}"
        );
        for w in words {
            assert!(
                reply.message.contains(w),
                "{what}: the message should say {w:?}: {:?}",
                reply.message
            );
        }
        assert!(
            reply.message.len() < 1024,
            "{what}: a hostile input must not be echoed at length ({} bytes)",
            reply.message.len()
        );
        tried += 1;
    }

    // Packets encode_request refuses to build: over 64 KiB, and a name that is not UTF-8.
    let huge = raw_start(900, a.as_bytes(), b"", &vec![vec![b'a'; 16_000]; 5]);
    assert!(huge.len() > MAX_PACKET);
    let (_, reply) = refused(&conn, "a 80 KB start", &huge);
    assert_eq!(reply.kind, ErrorKind::InvalidRequest, "{reply:?}");
    assert!(reply.message.contains("65536"), "{}", reply.message);
    let (id, reply) = refused(
        &conn,
        "a user name that is not UTF-8",
        &raw_start(901, b"\xff/../root", b"", &[]),
    );
    assert_eq!(
        (id, reply.kind),
        (901, ErrorKind::InvalidRequest),
        "{reply:?}"
    );
    tried += 2;

    // The typed client sends what it is given: the daemon's error reaches the caller as is.
    let hub = d.hub_client().await;
    match hub.start(start_req("../../root", "", "")).await {
        Err(ClientError::Daemon(e)) if e.kind == ErrorKind::InvalidRequest => {}
        other => panic!("the client got {other:?} for a traversal"),
    }
    tried += 1;

    // The connection and the daemon still serve.
    assert!(matches!(
        conn.request(7, &Request::Status).body,
        Response::Status(_)
    ));
    hub.status().await.expect("status after the abuse");

    // Nothing was executed or created.
    assert!(
        d.admin_client()
            .await
            .list()
            .await
            .expect("list")
            .is_empty(),
        "a refused request left a server"
    );
    assert_eq!(
        procfs::servers_of(d.pid()),
        Vec::<u32>::new(),
        "the daemon started a process"
    );
    assert_eq!(
        procfs::pids_of_uid(target.uid),
        Vec::<u32>::new(),
        "{} has processes",
        target.name
    );
    assert_eq!(
        files_under(&d.log_dir()),
        Vec::<PathBuf>::new(),
        "a refused request created a log"
    );
    assert_eq!(files_under(&d.dir.state_dir()), Vec::<PathBuf>::new());
    if let Some(base) = &d.cgroup_base {
        assert_eq!(dirs_under(base), Vec::<PathBuf>::new());
    }

    // Names that are names but not allowed: the start goes ahead without them, they are
    // reported as dropped (never their values), and the server does not get them.
    let hostile = [
        "LD_PRELOAD",
        "LD_AUDIT",
        "GCONV_PATH",
        "PATH",
        "HOME",
        "SHELL",
        "USER",
        "LOGNAME",
        "BASH_ENV",
        "PYTHONSTARTUP",
    ];
    let mut req = start_req(a, "env", "");
    req.env = hostile
        .iter()
        .map(|n| ((*n).to_owned(), "/tmp/evil".to_owned()))
        .collect();
    req.env.push(("JUPYTERHUB_USER".into(), a.into()));
    let started = hub.start(req).await.expect("start with dropped names");
    let mut expected: Vec<String> = hostile.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(started.dropped_env, expected);
    let environ = wait_for(Duration::from_secs(5), || {
        let e = procfs::environ(started.pid)?;
        e.iter()
            .any(|v| v.starts_with("JUPYTERHUB_USER="))
            .then_some(e)
    })
    .expect("the server's environment");
    for v in &environ {
        assert!(!v.contains("/tmp/evil"), "{v} reached the server");
    }
    assert!(environ.contains(&format!("PATH={PROFILE_PATH}")));
    assert!(environ.contains(&format!("HOME={}", target.home.display())));
    assert!(
        !d.stderr().contains("/tmp/evil"),
        "a dropped value was logged"
    );
    hub.stop(&sid(a, "env"), None, true).await.expect("stop");
    tried += 1;
    eprintln!("hub-role abuse: {tried} hostile requests, each refused or dropped; nothing ran");
}

// ---------------------------------------------------------------------------------------------
// 3. a lecture: 200 simultaneous starts

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
        .map(|_| Client::from_fd(hub_client_fd(&d)).expect("client"))
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
// 4. 1,000 clients × 100 requests

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
        .map(|_| Client::from_fd(hub_client_fd(d)).expect("client"))
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

// ---------------------------------------------------------------------------------------------
// 5. soak: start/stop cycles

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
    let _heavy = HEAVY.lock().await;
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
        .map(|_| Client::from_fd(hub_client_fd(&d)).expect("client"))
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
