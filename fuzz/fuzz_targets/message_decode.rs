//! Message decoding: any type byte and body decode to a message or an
//! error, never a panic, and what decodes re-encodes to bytes that decode
//! to the same message (the encoding is canonical; a decoder may accept
//! non-minimal varints, PROTOCOL.md section 4, so the bytes themselves
//! may differ).
//!
//! Input: `type: u8 | body`, as after the 4-byte length of a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermq::wire::{Message, MSG_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    for max_blocks in [1 << 14, u64::MAX] {
        let Ok(msg) = Message::decode(kind, body, max_blocks) else {
            continue;
        };
        let mut out = Vec::new();
        msg.encode(&mut out);
        let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, out.len(), "the length prefix counts type and body");
        if matches!(msg, Message::Unknown { .. }) {
            // An unknown type's body is skipped, not kept.
            continue;
        }
        let again = Message::decode(out[4], &out[MSG_HEADER_LEN..], max_blocks)
            .expect("an encoded message decodes");
        assert_eq!(again, msg, "re-encoding keeps the message");
        let mut out2 = Vec::new();
        again.encode(&mut out2);
        assert_eq!(out2, out, "the encoding is canonical");
        assert!(out.len() <= data.len() + 4, "re-encoding never grows");
    }
});
