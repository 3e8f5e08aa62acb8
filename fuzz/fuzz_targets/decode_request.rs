//! Fuzzes the daemon's request decoder, `spawnd_protocol::decode_request`: the first code that
//! touches bytes a peer sent. Any packet must give `Ok` or a `DecodeError`, never a panic, an
//! abort, a hang or an allocation the packet size does not justify (libFuzzer's `-rss_limit_mb`
//! and `-malloc_limit_mb` catch those).
//!
//! What an accepted packet must also satisfy:
//! - it passes `check_request` (the decoder's own limits), and `peek_header` agrees with it;
//! - it encodes again within `MAX_PACKET`, and that encoding decodes to the same envelope.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spawnd_protocol::{MAX_PACKET, check_request, decode_request, encode_request, peek_header};
use std::hint::black_box;

fuzz_target!(|packet: &[u8]| {
    let decoded = decode_request(black_box(packet));
    let Ok(envelope) = black_box(decoded) else {
        return;
    };
    assert!(packet.len() <= MAX_PACKET, "accepted an oversized packet");
    let header = peek_header(packet).expect("an accepted packet has a readable header");
    assert_eq!(
        (header.version, header.id),
        (envelope.version, envelope.id),
        "peek_header disagrees with decode_request"
    );
    assert_eq!(
        check_request(&envelope.body),
        Ok(()),
        "decode_request accepted a request that breaks a limit"
    );
    let again = encode_request(envelope.id, &envelope.body)
        .expect("an accepted request encodes again within the packet limit");
    let back = decode_request(&again).expect("a re-encoded request decodes");
    assert_eq!(back, envelope, "the request changed in a round trip");
});
