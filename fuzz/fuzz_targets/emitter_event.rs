//! The emitter's event decoding, as a replica reads an event from a
//! broadcast block: the record (`EventRecord`), its payload under the
//! schema (examples/example.proto plus the built-in `EventPeer`), and a
//! peer announcement's addresses.
//!
//! Oracles: nothing panics; a record re-encodes to its bytes; a payload
//! that decodes re-encodes to a value that decodes the same; the
//! addresses learned are at most `MAX_ADDRS_PER_AUTHOR`, sorted, without
//! repeats, and only ever for the announcing author.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use peermq::emitter::{event_peer_addresses, EventRecord, Schema, MAX_ADDRS_PER_AUTHOR};
use peermq::PeerId;

fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        Schema::parse(
            "example.proto",
            include_str!("../../examples/example.proto"),
        )
        .expect("the example schema compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(record) = EventRecord::decode(data) else {
        return;
    };
    assert_eq!(record.encode(), data, "a record decodes exactly");
    let schema = schema();
    let Some(value) = schema.decode(record.name, record.payload) else {
        return;
    };
    let bytes = schema
        .encode(record.name, &value)
        .expect("a decoded value encodes");
    assert_eq!(schema.decode(record.name, &bytes).as_ref(), Some(&value));
    // The author is whoever the value names, or another key.
    let named = value["id"]
        .as_str()
        .and_then(|s| s.parse::<PeerId>().ok())
        .unwrap_or(PeerId([7; 32]));
    for author in [named, PeerId([8; 32])] {
        if let Some(addrs) = event_peer_addresses(&value, &author) {
            assert_eq!(value["id"].as_str(), Some(author.to_string().as_str()));
            assert!(addrs.len() <= MAX_ADDRS_PER_AUTHOR);
            assert!(addrs.windows(2).all(|w| w[0] < w[1]), "{addrs:?}");
        }
    }
});
