//! Fuzzes the client's response decoder, `spawnd_protocol::decode_response` (what the hub's
//! `SpawndSpawner` and `spawnctl` run on every packet from the daemon). Any packet must give
//! `Ok` or a `DecodeError`, never a panic, an abort, a hang or an unjustified allocation; an
//! accepted response must survive a round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spawnd_protocol::{MAX_PACKET, decode_response, encode_response, peek_header};
use std::hint::black_box;

fuzz_target!(|packet: &[u8]| {
    let decoded = decode_response(black_box(packet));
    let Ok(envelope) = black_box(decoded) else {
        return;
    };
    assert!(packet.len() <= MAX_PACKET, "accepted an oversized packet");
    let header = peek_header(packet).expect("an accepted packet has a readable header");
    assert_eq!((header.version, header.id), (envelope.version, envelope.id));
    let again = encode_response(envelope.id, &envelope.body)
        .expect("an accepted response encodes again within the packet limit");
    let back = decode_response(&again).expect("a re-encoded response decodes");
    assert_eq!(back, envelope, "the response changed in a round trip");
});
