//! `Node::handle_input` after a completed handshake, structure-aware.
//!
//! Input: `script_len: u16 LE | script | stream`. `stream` is a plaintext
//! message stream from H (as `examples/seeds.rs` records it from a real
//! session between the fixture's A and H); `script` is a sequence of
//! [`Op`]s (built with `arbitrary`) that sends the stream's messages as
//! they are or mutated, well-formed messages built from fields (heads
//! signed by the right or the wrong key, forks, receipts, mailbox lists,
//! requests...), valid answers to A's own requests (proofs from the
//! fixture's feeds), raw bytes, local commands on A, and the passing of
//! time. What is left of the stream is sent after the script.
//!
//! Oracles: nothing panics, `handle_input`/`handle_timeout` never fail
//! (the store is in memory), every message A sends decodes, and after
//! all that A still reads its inbox.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use peermq::{Mailbox, Timestamp};
use peermq_fuzz::{fixture, split_messages, Msg, Mutation, Session};

#[derive(Arbitrary, Debug)]
enum Op {
    /// The next message of the stream, as it is.
    Next,
    /// The next message of the stream, changed.
    NextMutated(Mutation),
    /// A well-formed message.
    Build(Msg),
    /// A well-formed message, changed.
    BuildMutated(Msg, Mutation),
    /// Several messages in one piece of plaintext.
    Batch(Vec<Msg>),
    /// Raw plaintext.
    Raw(Vec<u8>),
    /// A valid answer to one of A's requests not answered yet, maybe
    /// changed.
    Answer {
        pick: u8,
        mutation: Option<Mutation>,
    },
    /// The split point of the next deliveries' ciphertext.
    Split(u16),
    /// Something A's application does.
    Local(Local),
    /// Time passes, in seconds.
    Tick(u16),
    /// A closed the connection, or the transport dropped: a new
    /// connection with a new handshake (at most twice a run).
    Reconnect,
}

#[derive(Arbitrary, Debug)]
enum Local {
    Send(u8),
    ReadAndArchive,
    Clear(u8),
    Prune,
    Broadcast(u8),
    Disconnect,
}

#[derive(Arbitrary, Debug)]
struct Script {
    mailbox: bool,
    ops: Vec<Op>,
}

fuzz_target!(|data: &[u8]| {
    let (script, stream) = match data {
        [a, b, rest @ ..] => {
            let n = (u16::from_le_bytes([*a, *b]) as usize).min(rest.len());
            rest.split_at(n)
        }
        _ => (&[][..], data),
    };
    let Ok(script) = Script::arbitrary_take_rest(Unstructured::new(script)) else {
        return;
    };
    run(&script, stream);
});

fn run(script: &Script, stream: &[u8]) {
    let h = fixture().h_key.peer_id();
    let mut s = Session::new(script.mailbox);
    let mut stream = split_messages(stream).into_iter();
    let mut split = 0u16;
    let mut reconnects = 0;
    for op in &script.ops {
        match op {
            Op::Next => {
                if let Some(m) = stream.next() {
                    s.send(m, split);
                }
            }
            Op::NextMutated(mutation) => {
                if let Some(m) = stream.next() {
                    let mut m = m.to_vec();
                    mutation.apply(&mut m);
                    s.send(&m, split);
                }
            }
            Op::Build(msg) => s.send(&msg.encode(), split),
            Op::BuildMutated(msg, mutation) => {
                let mut m = msg.encode();
                mutation.apply(&mut m);
                s.send(&m, split);
            }
            Op::Batch(msgs) => {
                let bytes: Vec<u8> = msgs.iter().flat_map(Msg::encode).collect();
                s.send(&bytes, split);
            }
            Op::Raw(bytes) => s.send(bytes, split),
            Op::Answer { pick, mutation } => {
                if s.asked.is_empty() {
                    continue;
                }
                let asked = s.asked.remove(*pick as usize % s.asked.len());
                if let Some(mut m) = s.answer(&asked) {
                    if let Some(mutation) = mutation {
                        mutation.apply(&mut m);
                    }
                    s.send(&m, split);
                }
            }
            Op::Split(at) => split = *at,
            Op::Local(local) => {
                let now = s.now;
                let wall = Timestamp::from_micros(now.as_micros());
                let a = &mut s.a;
                match local {
                    Local::Send(n) => {
                        let _ = a.send(h, &vec![*n; *n as usize], now);
                    }
                    Local::ReadAndArchive => {
                        let read = a.read(Mailbox::Unread, None, 16, wall).expect("read");
                        for r in read {
                            let _ = a.archive(r.from, r.seq, now);
                        }
                    }
                    Local::Clear(seq) => {
                        let _ = a.clear(h, (*seq).into(), now);
                    }
                    Local::Prune => {
                        let _ = a.prune(h);
                    }
                    Local::Broadcast(n) => {
                        let _ = a.broadcast(&vec![*n; *n as usize], now);
                    }
                    Local::Disconnect => a.disconnect(&h, now),
                }
                s.pump();
            }
            Op::Tick(secs) => s.tick(u64::from(*secs) * 1_000_000),
            Op::Reconnect => {
                if reconnects < 2 {
                    reconnects += 1;
                    s.reconnect();
                }
            }
        }
    }
    for m in stream {
        s.send(m, split);
    }
    // Whatever H did, A still reads what it holds.
    s.a.read(
        Mailbox::Unread,
        None,
        100,
        Timestamp::from_micros(s.now.as_micros()),
    )
    .expect("A reads its inbox");
}
