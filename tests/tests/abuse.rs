//! Hostile input from peers (see RELIABILITY.md):
//!
//! - the fuzz seed corpus (`fuzz/corpus/`) matches the protocol: every seed is built with the
//!   protocol's own encoder, and each seed the decoder must refuse is a valid encoding with one
//!   deliberate change (this one needs no root);
//! - abuse of the hub role: hostile names, lists and strings over the limits, bad environment
//!   names, packets the encoder refuses to build get typed errors and nothing is executed (a
//!   table of named cases: a failure names every case that failed);
//! - names that are names but not allowed in the environment are dropped, reported, and never
//!   reach the server or the log.
//!
//! The tests with a daemon need root: they are marked ignored, so run them as root with
//! `cargo test -p spawnd-tests --test abuse -- --include-ignored`.

use serde::Serialize;
use spawnd_client::{Client, ClientError};
use spawnd_protocol::{
    DaemonStatus, Envelope, ErrorKind, ErrorReply, ExitStatus, Header, LogTail, MAX_ARGS, MAX_ENV,
    MAX_LIST_PAGE, MAX_LOG_LINES, MAX_PACKET, MAX_STRING, Polled, Request, Response, ServerInfo,
    ServerPage, ServerState, StartRequest, Started, VERSION, decode_request, decode_response,
    encode_request, encode_response,
};
use spawnd_tests::{
    DaemonOptions, PROFILE_PATH, RawConn, RawRecv, TestDaemon, TestUser, add_test_user, dirs_under,
    files_under, procfs, require_root, sid, start_req, users, wait_for,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// 1. the fuzz seed corpus
//
// Every seed starts from what `encode_request` / `encode_response` produce, so that the seeds
// follow the wire format when it changes (`SPAWND_WRITE_FUZZ_SEEDS=1` then rewrites them). A
// seed the decoder must refuse changes one thing in such an encoding; the piece it puts in
// (a version, a length, a variant tag) is written by postcard, the protocol's own
// serialisation, and where it goes is found in the encoding, never a hand-counted offset.

/// postcard's encoding of one value (a field, a length prefix, a variant tag) as it appears
/// inside a packet.
fn wire<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encodes the value")
}

/// The first bytes of every packet with request id `id`: the protocol's [`Header`].
fn header(id: u32) -> Vec<u8> {
    wire(&Header {
        version: VERSION,
        id,
    })
}

/// What follows the header in `packet`, an encoding with request id `id`.
fn body_of(id: u32, packet: &[u8]) -> &[u8] {
    let header = header(id);
    assert!(
        packet.starts_with(&header),
        "an encoding with id {id} starts with its header"
    );
    &packet[header.len()..]
}

/// `packet` (an encoding of the last variant of its enum) with the variant tag after it: a
/// variant the decoder does not know, with nothing after the tag.
fn next_variant(id: u32, packet: &[u8]) -> Vec<u8> {
    let (tag, _) = postcard::take_from_bytes::<u32>(body_of(id, packet)).expect("a variant tag");
    [header(id), wire(&(tag + 1))].concat()
}

/// Where `needle` stands in `haystack`; panics unless it stands there exactly once.
fn position_once(haystack: &[u8], needle: &[u8]) -> usize {
    let found: Vec<usize> = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "{needle:?} stands once in the encoding");
    found[0]
}

/// `packet` with the bytes `from` (found exactly once) replaced by `to`, of the same length.
fn replace_once(mut packet: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len(), "a replacement of the same length");
    let at = position_once(&packet, from);
    packet[at..at + from.len()].copy_from_slice(to);
    packet
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
        ("health", enc(99, &Request::Health), true),
        // Refused ones: each exercises one check of the decoder.
        ("empty", Vec::new(), false),
        ("version-only", wire(&VERSION), false),
        (
            "version-2",
            wire(&Envelope {
                version: VERSION + 1,
                id: 17,
                body: Request::Status,
            }),
            false,
        ),
        // Health is the last variant of Request.
        (
            "unknown-variant",
            next_variant(18, &enc(18, &Request::Health)),
            false,
        ),
        (
            "overlong-varint-id",
            // An id of 39 bits where the protocol has 32: a varint one byte too long.
            [
                wire(&(VERSION, (1u64 << 39) - 1)),
                body_of(0, &enc(0, &Request::Status)).to_vec(),
            ]
            .concat(),
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
            replace_once(
                enc(36, &Request::Start(start_req("al?ice", "", ""))),
                b"al?ice",
                b"al\xffice",
            ),
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
                assert_eq!(v[last..], wire(&true), "`now` is the last byte of a Stop");
                v[last] = 2;
                v
            },
            false,
        ),
        (
            "huge-length-prefix",
            {
                // A Start whose user name claims 2^32 bytes: must fail without allocating.
                let v = enc(38, &Request::Start(start_req("alice", "", "")));
                let at = position_once(&v, &wire("alice"));
                [&v[..at], &wire(&(1u64 << 32)), b"alice"].concat()
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
    // The last variant of Response.
    let status = Response::Status(DaemonStatus {
        version: "0.1.0".into(),
        protocol: 1,
        pid: 1,
        uptime_secs: 86_400,
        running: 200,
        exited: 3,
        tree_kill: "cgroup-v2 (/sys/fs/cgroup/spawnd)".into(),
        capabilities: vec!["CAP_SETUID".into(), "CAP_KILL".into()],
        your_role: "hub".into(),
    });
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
        ("status", r(11, &status), true),
        (
            "health",
            r(
                15,
                &Response::Health(vec![
                    "THE HUB CANNOT CONNECT: jupyterhub cannot connect".into(),
                ]),
            ),
            true,
        ),
        ("empty", Vec::new(), false),
        // Health is the last variant of Response.
        (
            "unknown-variant",
            next_variant(12, &r(12, &Response::Health(Vec::new()))),
            false,
        ),
        (
            "unknown-error-kind",
            {
                // Internal is the last ErrorKind: the one after it, with an empty message.
                let v = r(
                    13,
                    &Response::Error(ErrorReply::new(ErrorKind::Internal, "")),
                );
                let (tag, rest) = postcard::take_from_bytes::<u32>(body_of(13, &v))
                    .expect("the Error variant's tag");
                let (kind, rest) =
                    postcard::take_from_bytes::<u32>(rest).expect("the ErrorKind's tag");
                [header(13), wire(&tag), wire(&(kind + 1)), rest.to_vec()].concat()
            },
            false,
        ),
        (
            "trailing-bytes",
            [r(14, &Response::Signalled), vec![0]].concat(),
            false,
        ),
        (
            "version-2",
            wire(&Envelope {
                version: VERSION + 1,
                id: 15,
                body: Response::Signalled,
            }),
            false,
        ),
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
                 -p spawnd-tests --test abuse fuzz_seed_corpus`",
                path.display()
            )
        });
        assert!(
            committed == *bytes,
            "{} is not the current encoding; regenerate it with `SPAWND_WRITE_FUZZ_SEEDS=1 \
             cargo test -p spawnd-tests --test abuse fuzz_seed_corpus`",
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

/// What an abuse case sends, and how.
enum Sent {
    /// A request `encode_request` builds, sent on the raw connection with the id `100 + its
    /// row in the table`; the answer must carry that id.
    Request(Request),
    /// A packet `encode_request` refuses to build, sent on the raw connection; the answer must
    /// carry `id`.
    Packet { bytes: Vec<u8>, id: u32 },
    /// A start request through the typed client: the daemon's error must reach the caller as
    /// is (`ClientError::Daemon`).
    Client(StartRequest),
}

/// One hostile request and what it must get: an error of `kind` whose message says each of
/// `says`, never echoing the hostile input at length.
struct Abuse {
    name: &'static str,
    sent: Sent,
    kind: ErrorKind,
    says: &'static [&'static str],
}

/// A `Start` request encoded as `encode_request` would, but without its size check.
fn encode_unchecked(id: u32, request: &Request) -> Vec<u8> {
    wire(&Envelope {
        version: VERSION,
        id,
        body: request,
    })
}

/// The hostile requests of [`hub_role_abuse_gets_typed_errors_and_runs_nothing`], aimed at
/// the user `a`.
fn abuse_cases(a: &str) -> Vec<Abuse> {
    let long = "x".repeat(MAX_STRING + 1);
    let start = |user: &str, server: &str| Request::Start(start_req(user, server, ""));
    let start_a = |f: &dyn Fn(&mut StartRequest)| {
        let mut s = start_req(a, "", "");
        f(&mut s);
        Request::Start(s)
    };
    let invalid = |name, request, says| Abuse {
        name,
        sent: Sent::Request(request),
        kind: ErrorKind::InvalidRequest,
        says,
    };
    // A start of 80 KB: five arguments of 16,000 bytes.
    let huge = {
        let mut s = start_req(a, "", "");
        s.args = vec!["a".repeat(16_000); 5];
        Request::Start(s)
    };
    assert!(
        encode_request(900, &huge).is_err(),
        "encode_request refuses to build the 80 KB start"
    );
    vec![
        invalid("NUL in the user name", start("spw\0root", ""), &["user"]),
        invalid("NUL in the server name", start(a, "x\0y"), &["server"]),
        invalid("/ in the user name", start("a/b", ""), &["user", "/"]),
        invalid("user name ../../etc", start("../../etc", ""), &["user"]),
        invalid("user name ..", start("..", ""), &["user"]),
        invalid("user name .", start(".", ""), &["user"]),
        invalid("empty user name", start("", ""), &["user", "empty"]),
        invalid("user name of 65 bytes", start(&"a".repeat(65), ""), &["64"]),
        invalid("/ in the server name", start(a, "a/b"), &["server", "/"]),
        invalid("server name ..", start(a, ".."), &["server"]),
        invalid(
            "server name ../../../etc/cron.d/x",
            start(a, "../../../etc/cron.d/x"),
            &["server"],
        ),
        invalid("server name .hidden", start(a, ".hidden"), &["server"]),
        invalid(
            "profile name ../x",
            start_a(&|s| s.profile = "../x".into()),
            &["profile"],
        ),
        invalid(
            "257 arguments",
            start_a(&|s| s.args = vec!["--x".into(); MAX_ARGS + 1]),
            &["257", "256"],
        ),
        invalid(
            "513 environment variables",
            start_a(&|s| {
                s.env = (0..=MAX_ENV)
                    .map(|i| (format!("JUPYTERHUB_X{i}"), "v".into()))
                    .collect()
            }),
            &["513", "512"],
        ),
        invalid(
            "an argument of 16 KiB + 1",
            start_a(&|s| s.args = vec![long.clone()]),
            &["argument 0", "16384"],
        ),
        invalid(
            "NUL in an argument",
            start_a(&|s| s.args = vec!["--ok".into(), "--a\0b".into()]),
            &["argument 1", "NUL"],
        ),
        invalid(
            "NUL in an environment value",
            start_a(&|s| s.env = vec![("JUPYTERHUB_USER".into(), "a\0b".into())]),
            &["JUPYTERHUB_USER", "NUL"],
        ),
        invalid(
            "an environment value of 16 KiB + 1",
            start_a(&|s| s.env = vec![("LANG".into(), long.clone())]),
            &["LANG", "16384"],
        ),
        invalid(
            "environment name with =",
            start_a(&|s| s.env = vec![("LD_PRELOAD=/tmp/x.so JPY_A".into(), "1".into())]),
            &["environment name"],
        ),
        invalid(
            "empty environment name",
            start_a(&|s| s.env = vec![(String::new(), "1".into())]),
            &["environment name"],
        ),
        invalid(
            "environment name starting with a digit",
            start_a(&|s| s.env = vec![("1JPY".into(), "1".into())]),
            &["environment name"],
        ),
        invalid(
            "NUL in an environment name",
            start_a(&|s| s.env = vec![("JPY_\0LD_PRELOAD".into(), "1".into())]),
            &["environment name"],
        ),
        invalid(
            "environment name with a dash",
            start_a(&|s| s.env = vec![("JUPYTERHUB-X".into(), "1".into())]),
            &["environment name"],
        ),
        invalid(
            "poll ../x",
            Request::Poll {
                server: sid("../x", ""),
                instance: None,
            },
            &["user"],
        ),
        invalid(
            "stop a/../b",
            Request::Stop {
                server: sid(a, "a/../b"),
                instance: None,
                now: true,
            },
            &["server"],
        ),
        invalid(
            "signal 0",
            Request::Signal {
                server: sid(a, ""),
                instance: None,
                signal: 0,
            },
            &["signal 0"],
        ),
        invalid(
            "signal -9",
            Request::Signal {
                server: sid(a, ""),
                instance: None,
                signal: -9,
            },
            &["signal -9"],
        ),
        invalid(
            "logs of /etc/shadow",
            Request::Logs {
                server: sid("/etc", "shadow"),
                lines: 10,
            },
            &["user"],
        ),
        invalid(
            "logs of 10001 lines",
            Request::Logs {
                server: sid(a, ""),
                lines: MAX_LOG_LINES + 1,
            },
            &["10001"],
        ),
        invalid(
            "list of 201",
            Request::List {
                after: None,
                limit: MAX_LIST_PAGE + 1,
            },
            &["201"],
        ),
        // Packets encode_request refuses to build: over 64 KiB (its header is not read: the
        // answer carries id 0), and a user name that is not UTF-8.
        Abuse {
            name: "a 80 KB start",
            sent: Sent::Packet {
                bytes: encode_unchecked(900, &huge),
                id: 0,
            },
            kind: ErrorKind::InvalidRequest,
            says: &["65536"],
        },
        Abuse {
            name: "a user name that is not UTF-8",
            sent: Sent::Packet {
                bytes: replace_once(
                    enc(901, &Request::Start(start_req("?/../root", "", ""))),
                    b"?/../root",
                    b"\xff/../root",
                ),
                id: 901,
            },
            kind: ErrorKind::InvalidRequest,
            says: &[],
        },
        Abuse {
            name: "through the typed client: user name ../../root",
            sent: Sent::Client(start_req("../../root", "", "")),
            kind: ErrorKind::InvalidRequest,
            says: &[],
        },
    ]
}

/// Sends `packet` and returns the error the daemon answers with, or what it did instead.
fn refused(conn: &RawConn, packet: &[u8]) -> Result<(u32, ErrorReply), String> {
    conn.send(packet).map_err(|e| format!("send: {e}"))?;
    match conn.recv(Duration::from_secs(10)) {
        Ok(RawRecv::Packet(p)) => {
            let env = decode_response(&p).map_err(|e| format!("undecodable answer: {e}"))?;
            match env.body {
                Response::Error(reply) => Ok((env.id, reply)),
                other => Err(format!("answered {other:?} instead of an error")),
            }
        }
        Ok(other) => Err(format!("no answer ({other:?})")),
        Err(e) => Err(format!("recv: {e}")),
    }
}

/// What is wrong with the answer `got` to `case` (nothing when it is as it must be).
fn problems(
    case: &Abuse,
    expected_id: Option<u32>,
    got: (Option<u32>, &ErrorReply),
) -> Vec<String> {
    let (got_id, reply) = got;
    let mut out = Vec::new();
    if (got_id, reply.kind) != (expected_id, case.kind) {
        out.push(format!(
            "answered id {got_id:?} {}, expected id {expected_id:?} {}: {reply:?}",
            reply.kind, case.kind
        ));
    }
    for w in case.says {
        if !reply.message.contains(w) {
            out.push(format!("the message should say {w:?}: {:?}", reply.message));
        }
    }
    if reply.message.len() >= 1024 {
        out.push(format!(
            "a hostile input must not be echoed at length ({} bytes)",
            reply.message.len()
        ));
    }
    out
}

/// A user of one test alone, so that "no process of the target user" is exact.
fn target_user(tag: &str) -> TestUser {
    add_test_user(tag, &["-m", "-G", &users().group.name])
}

/// Every case of [`abuse_cases`] is answered with its typed error (a failure lists every case
/// that was not, by name); then the connection and the daemon still serve, and nothing was
/// executed or created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn hub_role_abuse_gets_typed_errors_and_runs_nothing() {
    require_root!();
    let u = users();
    let target = target_user("abuse");
    let d = TestDaemon::start(DaemonOptions::default());
    let cases = abuse_cases(&target.name);

    let first_conn = d.raw_as(&u.hub);
    let mut conn = None::<RawConn>;
    let hub = d.hub_client().await;
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let raw = conn.as_ref().unwrap_or(&first_conn);
        let answer = match &case.sent {
            Sent::Request(request) => {
                let id = 100 + i as u32;
                let packet = encode_request(id, request).expect("encode");
                refused(raw, &packet).map(|(got, reply)| (Some(id), Some(got), reply))
            }
            Sent::Packet { bytes, id } => {
                refused(raw, bytes).map(|(got, reply)| (Some(*id), Some(got), reply))
            }
            Sent::Client(request) => match hub.start(request.clone()).await {
                Err(ClientError::Daemon(reply)) => Ok((None, None, reply)),
                other => Err(format!("the client got {other:?}")),
            },
        };
        match answer {
            Ok((expected_id, got_id, reply)) => {
                for p in problems(case, expected_id, (got_id, &reply)) {
                    failures.push(format!("{}: {p}", case.name));
                }
            }
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                // A fresh connection for the cases after it, so that each is judged alone.
                if !matches!(case.sent, Sent::Client(_)) {
                    conn = Some(d.raw_as(&u.hub));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile requests were not refused as they must be:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );

    // The connection and the daemon still serve.
    assert!(matches!(
        first_conn.request(7, &Request::Status).body,
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
    eprintln!(
        "hub-role abuse: {} hostile requests, each refused with a typed error; nothing ran",
        cases.len()
    );
}

/// Names that are names but not allowed: the start goes ahead without them, they are reported
/// as dropped (never their values), and the server does not get them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run as root with --include-ignored"]
async fn hub_role_disallowed_environment_names_are_dropped_and_never_reach_the_server() {
    require_root!();
    let target = target_user("dropenv");
    let d = TestDaemon::start(DaemonOptions::default());
    let a = target.name.as_str();
    let hub: Client = d.hub_client().await;
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
    eprintln!(
        "hub-role abuse: {} disallowed environment names dropped and reported; none reached \
         the server or the log",
        hostile.len()
    );
}
