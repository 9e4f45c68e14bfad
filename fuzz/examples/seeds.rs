//! Writes the seed corpora: `RUSTFLAGS="--cfg fuzzing" cargo run
//! --release --example seeds [DIR]` (default `corpus`), from `fuzz/`.
//! The flag gives the signatures of fuzz builds (README.md, "Speed").
//!
//! Seeds come from the protocol vectors of PROTOCOL.md section 8, and
//! from a recorded session between the fixture's nodes A and H (with the
//! keys and stores the `handle_input` target uses, so the stream H sent
//! is valid input there): a relay in the middle, holding both nodes'
//! keys, decrypts every message and forwards it. The simulator's
//! recorded byte streams (`peermq-sim --record-frames`) seed
//! `frame_decode`; see run.sh and README.md.

use std::path::{Path, PathBuf};

use peermq::emitter::{EventRecord, Schema};
use peermq::wire::Message;
use peermq::{Instant, Keypair, Mailbox, MailboxList, Output, RawPeer, Timestamp};
use peermq_fuzz::{fixture, open, A_SEED, H_SEED};
use serde_json::json;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("create corpus dir");
    std::fs::write(d.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn vectors() -> Vec<(String, Vec<u8>)> {
    let doc = include_str!("../../PROTOCOL.md");
    let block = doc
        .split("```vectors")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("PROTOCOL.md has a vectors block");
    block
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(" = ")?;
            Some((k.trim().to_string(), hex_decode(v.trim())?))
        })
        .collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Relays between node A (as the fixture builds it) and a real node H,
/// decrypting in the middle: returns the plaintext messages each sent
/// (header included), H's first.
fn recorded_session() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let f = fixture();
    let mut a = open(f.a_store.snapshot(), A_SEED, false);
    let mut h = open(f.h_store.snapshot(), H_SEED, false);
    let (a_id, h_id) = (a.id(), h.id());
    // To A, the relay is H (the raw peer the fuzz target uses); to H, it
    // is A.
    let mut as_h = RawPeer::dial(&f.h_key, peermq_fuzz::RAW_SEED, a_id).expect("raw");
    let mut as_a = RawPeer::accept(&f.a_key, 11).expect("raw");
    let ca = a.accept(Instant::ZERO);
    let ch = h.connect(a_id, Instant::ZERO);
    let (mut from_h, mut from_a) = (Vec::new(), Vec::new());
    let mut now = Instant::ZERO;
    let wall = |now: Instant| Timestamp::from_micros(now.as_micros());
    for round in 0..40 {
        match round {
            5 => {
                h.send(a_id, b"more from h", now).expect("send");
            }
            8 => {
                for r in a.read(Mailbox::Unread, None, 10, wall(now)).expect("read") {
                    a.archive(r.from, r.seq, now).expect("archive");
                }
            }
            10 => {
                a.send(h_id, b"reply", now).expect("send");
                h.broadcast(b"event h2", now).expect("broadcast");
            }
            14 => {
                for r in h.read(Mailbox::Unread, None, 10, wall(now)).expect("read") {
                    h.archive(r.from, r.seq, now).expect("archive");
                }
            }
            20 => {
                let _ = a.add_mailbox(f.x_key.peer_id(), now);
            }
            _ => {}
        }
        now = now + std::time::Duration::from_millis(300);
        a.handle_timeout(now).expect("timeout");
        h.handle_timeout(now).expect("timeout");
        for _ in 0..50 {
            let mut moved = false;
            while let Some(o) = a.poll_output() {
                if let Output::Transmit { conn, bytes } = o {
                    if conn == ca {
                        moved = true;
                        let _ = as_h.input(&bytes);
                    }
                }
            }
            while let Some(o) = h.poll_output() {
                if let Output::Transmit { conn, bytes } = o {
                    if conn == ch {
                        moved = true;
                        let _ = as_a.input(&bytes);
                    }
                }
            }
            // A's messages, as the relay posing as H received them, go on
            // to H; H's the other way.
            for (kind, body) in as_h.messages().unwrap_or_default() {
                let m = message(kind, &body);
                as_a.send_plaintext(&m);
                from_a.push(m);
            }
            for (kind, body) in as_a.messages().unwrap_or_default() {
                let m = message(kind, &body);
                as_h.send_plaintext(&m);
                from_h.push(m);
            }
            let to_a = as_h.output().unwrap_or_default();
            if !to_a.is_empty() {
                moved = true;
                a.handle_input(ca, &to_a, now).expect("input");
            }
            let to_h = as_a.output().unwrap_or_default();
            if !to_h.is_empty() {
                moved = true;
                h.handle_input(ch, &to_h, now).expect("input");
            }
            if !moved {
                break;
            }
        }
    }
    assert!(!from_h.is_empty() && !from_a.is_empty(), "the session ran");
    (from_h, from_a)
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    m.push(kind);
    m.extend_from_slice(body);
    m
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let vectors = vectors();
    let get = |name: &str| {
        vectors
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("vector {name}"))
    };

    // Messages: every msg_* vector, and what A and H said to each other.
    let (from_h, from_a) = recorded_session();
    let mut msgs: Vec<(String, Vec<u8>)> = vectors
        .iter()
        .filter(|(k, _)| k.starts_with("msg_"))
        .cloned()
        .collect();
    for (i, m) in from_h.iter().enumerate() {
        msgs.push((format!("session-h-{i}"), m.clone()));
    }
    for (i, m) in from_a.iter().enumerate() {
        msgs.push((format!("session-a-{i}"), m.clone()));
    }
    for (name, m) in &msgs {
        write(&dir, "message_decode", name, &m[4..]);
        // frame_decode: one frame holding the message, cut in two.
        let mut input = frame(m);
        input.extend_from_slice(&[3, 1]);
        write(&dir, "frame_decode", name, &input);
    }

    // handle_input: `script_len = 0 | H's stream`: the recorded session
    // replayed; and the vectors, which name other keys.
    let h_stream: Vec<u8> = from_h.concat();
    let mut input = vec![0, 0];
    input.extend_from_slice(&h_stream);
    write(&dir, "handle_input", "session-h", &input);
    for (i, chunk) in from_h.chunks(4).enumerate() {
        let mut input = vec![0, 0];
        input.extend_from_slice(&chunk.concat());
        write(&dir, "handle_input", &format!("session-h-part-{i}"), &input);
    }
    let mut input = vec![0, 0];
    for (k, v) in &vectors {
        if k.starts_with("msg_") && k != "msg_close" {
            input.extend_from_slice(v);
        }
    }
    write(&dir, "handle_input", "vectors", &input);

    // Receipts: the msg_ack vector's body, compact (form 1) and plain (0).
    let ack = get("msg_ack");
    let mut compact = vec![1];
    compact.extend_from_slice(&ack[5..]);
    write(&dir, "receipt_verify", "msg-ack-compact", &compact);
    if let Ok(Message::Ack(r)) = Message::decode(ack[4], &ack[5..], 1) {
        let mut plain = vec![0];
        r.encode(&mut plain);
        write(&dir, "receipt_verify", "msg-ack-plain", &plain);
    }

    // Mailbox lists: signed by the vector author, naming two, and none.
    let author = Keypair::from_bytes(&[1; 32]);
    let recipient = Keypair::from_bytes(&[2; 32]);
    for (name, ids) in [
        ("two", vec![recipient.peer_id(), fixture().h_key.peer_id()]),
        ("none", vec![]),
    ] {
        let mut out = Vec::new();
        MailboxList::sign(&author, 3, ids).encode(&mut out);
        write(&dir, "mailbox_list", name, &out);
    }

    // Blocks: the envelope and sealed-block vectors, at seq 0.
    for name in [
        "sealed_block_hello",
        "envelope_hello_not_before_expires",
        "envelope_magic_escaped",
    ] {
        let mut input = vec![0];
        input.extend_from_slice(&get(name));
        write(&dir, "sealed_block", name, &input);
    }

    // Handshake payload vector, and neutral inputs for the structured
    // targets (all zeros: the first variant of everything, no fault).
    for t in ["handshake", "proof_verify", "store_records"] {
        write(&dir, t, "zeros", &[0; 64]);
    }

    // Emitter: the example schema, and events under it.
    let proto = include_str!("../../examples/example.proto");
    write(&dir, "emitter_schema", "example", proto.as_bytes());
    write(
        &dir,
        "emitter_schema",
        "nested",
        b"syntax = \"proto3\";\npackage p;\nimport \"google/protobuf/timestamp.proto\";\nenum E { A = 0; B = 1; }\nmessage M { message N { repeated int64 x = 1; } N n = 1; map<string, E> m = 2; oneof o { string s = 3; bytes b = 4; } google.protobuf.Timestamp t = 5; }\n",
    );
    let schema = Schema::parse("example.proto", proto).expect("example schema");
    let events = [
        ("Hello", json!({"from": "a", "message": "hi"})),
        ("userAdded", json!({"id": 7, "username": "x"})),
        (
            "EventPeer",
            json!({"id": author.peer_id().to_string(), "addresses": [{"ip": "10.0.0.1", "port": 4000}, {"ip": "::1", "port": 1}]}),
        ),
    ];
    for (name, value) in events {
        let payload = schema.encode(name, &value).expect("encode event");
        let record = EventRecord {
            name,
            deps: vec![(author.peer_id(), 3)],
            payload: &payload,
        };
        write(&dir, "emitter_event", name, &record.encode());
    }
    println!("seeds written to {}", dir.display());
}
