//! Frames and the message stream: `FrameReader` finds the same frames
//! whatever the chunking of the byte stream, and matches a plain
//! reference parser; each frame's bytes, taken as plaintext, split into
//! messages that decode or fail without a panic.
//!
//! Input: `stream | chunk lengths | n: u8`, the last byte counting the
//! chunk lengths before it (a raw stream is a valid input too). Seeded
//! with the byte streams the simulator delivers (`peermq-sim
//! --record-frames`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermq::wire::frame::{FrameReader, FRAME_HEADER_LEN};
use peermq::wire::Message;

/// Frames of `stream` by the book (PROTOCOL.md section 3), and the
/// length of the incomplete tail.
fn reference(mut stream: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    while stream.len() >= FRAME_HEADER_LEN {
        let len = u16::from_be_bytes([stream[0], stream[1]]) as usize;
        if stream.len() < FRAME_HEADER_LEN + len {
            break;
        }
        out.push(&stream[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]);
        stream = &stream[FRAME_HEADER_LEN + len..];
    }
    (out, stream.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_last() else {
        return;
    };
    let n = (n as usize).min(rest.len());
    let (stream, cuts) = rest.split_at(rest.len() - n);
    let (want, tail) = reference(stream);
    let mut reader = FrameReader::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::repeat_n(&255, stream.len())) {
        if at >= stream.len() {
            break;
        }
        let end = (at + c as usize).min(stream.len());
        reader
            .push(&stream[at..end], |f| {
                got.push(f.to_vec());
                Ok::<_, ()>(())
            })
            .unwrap();
        at = end;
    }
    assert_eq!(got, want, "frames do not depend on the chunking");
    assert_eq!(reader.buffered(), tail, "only the incomplete frame is held");

    // Each frame as a plaintext message stream.
    for frame in &want {
        let mut rest: &[u8] = frame;
        while rest.len() >= 5 {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            if len == 0 || rest.len() < 4 + len {
                break;
            }
            let _ = Message::decode(rest[4], &rest[5..4 + len], 1 << 14);
            rest = &rest[4 + len..];
        }
    }
});
