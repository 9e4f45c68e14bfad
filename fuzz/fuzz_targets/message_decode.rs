//! Decoding any bytes as any message type returns a message or an error,
//! and what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermq::wire::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    if let Ok(msg) = Message::decode(kind, body, 1 << 14) {
        if matches!(msg, Message::Unknown { .. } | Message::Close { .. }) {
            return;
        }
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(&out[5..], body, "re-encoding is exact");
    }
});
