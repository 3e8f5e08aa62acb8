use super::*;
use proptest::prelude::*;

fn start(user: &str, server: &str) -> Request {
    Request::Start(StartRequest {
        server: ServerId::new(user, server),
        profile: "default".into(),
        args: vec!["--debug".into()],
        env: vec![("JUPYTERHUB_API_TOKEN".into(), "secret".into())],
        port: Some(8888),
    })
}

#[test]
fn request_round_trips() {
    let requests = vec![
        start("alice", ""),
        start("bob", "gpu-1"),
        Request::Poll {
            server: ServerId::new("alice", ""),
            instance: Some(7),
        },
        Request::Stop {
            server: ServerId::new("alice", "x"),
            instance: None,
            now: true,
        },
        Request::Signal {
            server: ServerId::new("alice", ""),
            instance: Some(1),
            signal: 15,
        },
        Request::List {
            after: Some(ServerId::new("a", "")),
            limit: 10,
        },
        Request::Logs {
            server: ServerId::new("alice", ""),
            lines: 50,
        },
        Request::Status,
        Request::Health,
    ];
    for (i, r) in requests.into_iter().enumerate() {
        let bytes = encode_request(i as u32, &r).unwrap();
        let back = decode_request(&bytes).unwrap();
        assert_eq!(back.version, VERSION);
        assert_eq!(back.id, i as u32);
        assert_eq!(back.body, r);
    }
}

#[test]
fn response_round_trips() {
    let responses = vec![
        Response::Error(ErrorReply::new(ErrorKind::PolicyDenied, "no")),
        Response::Started(Started {
            instance: 3,
            pid: 4242,
            dropped_env: vec!["LD_PRELOAD".into()],
            log_path: "/var/log/spawnd/alice/@default.log".into(),
        }),
        Response::Polled(Polled {
            instance: 3,
            pid: 1,
            state: ServerState::Exited(ExitStatus::Signal(9)),
        }),
        Response::Stopped {
            instance: 3,
            exit: ExitStatus::Unknown,
        },
        Response::Signalled,
        Response::Servers(ServerPage {
            servers: vec![],
            next: None,
        }),
        Response::Logs(LogTail {
            path: "p".into(),
            lines: vec!["a".into()],
            truncated: false,
        }),
        Response::Health(vec!["the hub cannot connect".into()]),
    ];
    for r in responses {
        let bytes = encode_response(9, &r).unwrap();
        assert_eq!(decode_response(&bytes).unwrap().body, r);
    }
}

#[test]
fn envelope_layout_is_version_id_body() {
    // The documented wire format: varint version, varint id, varint variant index, fields.
    let bytes = encode_request(300, &Request::Status).unwrap();
    assert_eq!(bytes, vec![0x01, 0xac, 0x02, 0x06]);
    // Appended variants take the next index: Health is request 7, its answer response 8.
    assert_eq!(
        encode_request(1, &Request::Health).unwrap(),
        vec![0x01, 0x01, 0x07]
    );
    assert_eq!(
        encode_response(1, &Response::Health(vec!["x".into()])).unwrap(),
        vec![0x01, 0x01, 0x08, 0x01, 0x01, b'x']
    );
    let bytes = encode_request(
        1,
        &Request::Poll {
            server: ServerId::new("al", ""),
            instance: Some(5),
        },
    )
    .unwrap();
    assert_eq!(bytes, vec![1, 1, 1, 2, b'a', b'l', 0, 1, 5]);
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_request(5, &Request::Status).unwrap();
    bytes.push(0);
    assert_eq!(
        decode_request(&bytes),
        Err(DecodeError::TrailingBytes { id: 5, extra: 1 })
    );
}

#[test]
fn truncated_packet_is_malformed() {
    let bytes = encode_request(5, &start("alice", "")).unwrap();
    for cut in 3..bytes.len() {
        match decode_request(&bytes[..cut]) {
            Err(DecodeError::Malformed { id: 5, .. }) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    assert_eq!(decode_request(&[]), Err(DecodeError::NoHeader));
}

#[test]
fn unknown_version_names_both() {
    let mut bytes = encode_request(77, &Request::Status).unwrap();
    bytes[0] = 2;
    let err = decode_request(&bytes).unwrap_err();
    assert_eq!(err, DecodeError::UnsupportedVersion { got: 2, id: 77 });
    let text = err.to_string();
    assert!(
        text.contains("version 2") && text.contains("version 1"),
        "{text}"
    );
}

#[test]
fn oversize_packet_is_refused() {
    let big = vec![0u8; MAX_PACKET + 1];
    assert_eq!(decode_request(&big), Err(DecodeError::TooLarge));
    let r = Request::Start(StartRequest {
        server: ServerId::new("alice", ""),
        profile: String::new(),
        args: vec!["x".repeat(MAX_STRING); 5],
        env: vec![],
        port: None,
    });
    assert!(matches!(
        encode_request(1, &r),
        Err(EncodeError::TooLarge { .. })
    ));
}

#[test]
fn hostile_lengths_fail_without_allocating() {
    // A string claiming 2^32 bytes must be refused, not allocated.
    let bytes = [1u8, 1, 5 /* Logs */, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(matches!(
        decode_request(&bytes),
        Err(DecodeError::Malformed { .. })
    ));
    // A list claiming a billion arguments.
    let bytes = [1u8, 1, 0, 1, b'a', 0, 0, 0xff, 0xff, 0xff, 0xff, 0x03];
    assert!(matches!(
        decode_request(&bytes),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn limits_are_enforced_with_reasons() {
    let cases: Vec<(Request, &str)> = vec![
        (start("../etc", ""), "user name"),
        (start("alice", "a/b"), "server name"),
        (start("al\0ce", ""), "user name"),
        (start("", ""), "user name is empty"),
        (start(&"a".repeat(65), ""), "65 bytes"),
        (
            Request::Start(StartRequest {
                server: ServerId::new("alice", ""),
                profile: String::new(),
                args: vec![String::new(); MAX_ARGS + 1],
                env: vec![],
                port: None,
            }),
            "arguments",
        ),
        (
            Request::Start(StartRequest {
                server: ServerId::new("alice", ""),
                profile: String::new(),
                args: vec![],
                env: vec![("BAD=NAME".into(), "v".into())],
                port: None,
            }),
            "environment name",
        ),
        (
            Request::Start(StartRequest {
                server: ServerId::new("alice", ""),
                profile: String::new(),
                args: vec!["a\0b".into()],
                env: vec![],
                port: None,
            }),
            "NUL",
        ),
        (
            Request::Signal {
                server: ServerId::new("alice", ""),
                instance: None,
                signal: 0,
            },
            "signal",
        ),
        (
            Request::List {
                after: None,
                limit: MAX_LIST_PAGE + 1,
            },
            "limit",
        ),
        (
            Request::Logs {
                server: ServerId::new("a", ""),
                lines: MAX_LOG_LINES + 1,
            },
            "log lines",
        ),
    ];
    for (req, needle) in cases {
        let bytes = encode_request(4, &req).unwrap();
        match decode_request(&bytes) {
            Err(DecodeError::Invalid { id: 4, reason }) => {
                assert!(
                    reason.contains(needle),
                    "{reason:?} should mention {needle:?}"
                )
            }
            other => panic!("{req:?}: {other:?}"),
        }
    }
}

#[test]
fn names() {
    for ok in [
        "alice",
        "a",
        "_x",
        "bob.smith",
        "u-1",
        "jo@example.org",
        &"a".repeat(64),
    ] {
        validate_user_name(ok).unwrap();
    }
    for bad in [
        "",
        ".",
        "..",
        "-x",
        ".hidden",
        "@x",
        "a/b",
        "a b",
        "a~b",
        "é",
        &"a".repeat(65),
    ] {
        assert!(validate_user_name(bad).is_err(), "{bad:?}");
    }
    validate_server_name("").unwrap();
    validate_server_name("gpu.2-x").unwrap();
    assert!(validate_server_name("..").is_err());
    assert!(validate_server_name("@default").is_err());
    assert!(
        validate_server_name("a@b").is_err(),
        "'@' would collide with @default files"
    );
    assert!(validate_profile_name("a.b").is_err());
    assert!(env_name_is_valid("LC_ALL") && env_name_is_valid("_X1"));
    assert!(!env_name_is_valid("1X") && !env_name_is_valid("") && !env_name_is_valid("A-B"));
}

#[test]
fn poll_codes_follow_python() {
    assert_eq!(ExitStatus::Code(3).as_poll_code(), 3);
    assert_eq!(ExitStatus::Signal(15).as_poll_code(), -15);
    assert_eq!(ExitStatus::Unknown.as_poll_code(), 0);
}

fn arb_id() -> impl Strategy<Value = ServerId> {
    (
        "[a-z_][a-z0-9_.-]{0,31}",
        "([A-Za-z0-9_][A-Za-z0-9_.-]{0,20})?",
    )
        .prop_map(|(u, s)| ServerId::new(u, s))
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            arb_id(),
            "[a-z_]{0,10}",
            proptest::collection::vec(".{0,20}", 0..5),
            proptest::collection::vec(("[A-Z_][A-Z0-9_]{0,10}", ".{0,20}"), 0..5),
            proptest::option::of(any::<u16>())
        )
            .prop_map(
                |(server, profile, args, env, port)| Request::Start(StartRequest {
                    server,
                    profile,
                    args: args
                        .into_iter()
                        .map(|a: String| a.replace('\0', ""))
                        .collect(),
                    env: env
                        .into_iter()
                        .map(|(k, v): (String, String)| (k, v.replace('\0', "")))
                        .collect(),
                    port
                })
            ),
        (arb_id(), any::<Option<u64>>())
            .prop_map(|(server, instance)| Request::Poll { server, instance }),
        (arb_id(), any::<Option<u64>>(), any::<bool>()).prop_map(|(server, instance, now)| {
            Request::Stop {
                server,
                instance,
                now,
            }
        }),
        (arb_id(), 1..=64i32).prop_map(|(server, signal)| Request::Signal {
            server,
            instance: None,
            signal
        }),
        (proptest::option::of(arb_id()), 0..=MAX_LIST_PAGE)
            .prop_map(|(after, limit)| Request::List { after, limit }),
        (arb_id(), 0..=MAX_LOG_LINES).prop_map(|(server, lines)| Request::Logs { server, lines }),
        Just(Request::Status),
        Just(Request::Health),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
        let _ = peek_header(&bytes);
    }

    #[test]
    fn valid_requests_round_trip(id in any::<u32>(), req in arb_request()) {
        let bytes = encode_request(id, &req).unwrap();
        let back = decode_request(&bytes).unwrap();
        prop_assert_eq!(back.id, id);
        prop_assert_eq!(back.body, req);
    }

    #[test]
    fn mutated_requests_never_panic(req in arb_request(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = encode_request(1, &req).unwrap();
        let i = pos % bytes.len();
        bytes[i] = byte;
        let _ = decode_request(&bytes);
    }
}
