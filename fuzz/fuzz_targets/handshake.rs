//! The Noise XX handshake with its identity payloads, both roles, each
//! step (PROTOCOL.md section 2).
//!
//! The remote end is written here against snow directly (through
//! `peermq::noise`), so it can put any payload inside a correctly
//! encrypted handshake message: a wrong version, a signature over the
//! wrong hash or static key, another identity, garbage. It can also
//! replace or corrupt a whole handshake message, add bytes after it, and
//! cut the byte stream anywhere.
//!
//! Oracles: nothing panics and `handle_input` never fails; a handshake
//! without a fault completes with the identity H; a connection is never
//! authenticated as anyone but H, nor with a payload whose signature
//! does not bind H to this handshake.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peermq::noise::{self, StaticKey};
use peermq::wire::{HandshakePayload, PROTOCOL_VERSION};
use peermq::{Config, ConnId, Entropy, Instant, Node, Output, SeededRng};
use peermq_fuzz::{fixture, KeyPick, A_SEED};

#[derive(Arbitrary, Debug)]
struct Input {
    /// The node dials (Noise initiator) rather than listens.
    node_dials: bool,
    /// Dialing: to an address, taking whoever answers, rather than to H's
    /// key.
    dial_any: bool,
    /// The node accepts any peer (`Config::open`).
    open: bool,
    /// The remote's static Noise key seed.
    static_seed: u8,
    fault: Fault,
    /// Where the byte stream is cut into two `handle_input` calls.
    split: u16,
    /// Plaintext sent after the handshake.
    after: Vec<u8>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Step {
    /// The remote's first handshake message (message 1 when the node
    /// listens, 2 when it dials).
    First,
    /// The remote's second (message 3; the node listens).
    Second,
}

#[derive(Arbitrary, Debug)]
enum Fault {
    None,
    /// The message replaced by these bytes (framed).
    Replace(Step, Vec<u8>),
    /// The message's frame as these raw bytes (no frame added).
    RawFrame(Step, Vec<u8>),
    /// A bit of the framed message flipped.
    Flip(Step, u16, u8),
    /// Bytes after the message, in the same input.
    Extra(Step, Vec<u8>),
    /// A payload in message 1, which must be empty.
    FirstPayload(Vec<u8>),
    /// The identity payload changed.
    Payload(PayloadFault),
}

#[derive(Arbitrary, Debug)]
enum PayloadFault {
    /// These bytes instead.
    Bytes(Vec<u8>),
    /// Another version, signed properly.
    Version(u16),
    /// Another identity, signed by it (`Other`: not signed).
    Signer(KeyPick),
    /// Signed over the wrong handshake hash.
    HashBit(u8),
    /// Signed over the wrong Noise static key.
    StaticBit(u8),
    /// A bit of the signature flipped.
    SigBit(u16),
    /// A bit of the magic flipped.
    Magic(u8),
    /// Cut short.
    Truncate(u8),
    /// Longer.
    Long(Vec<u8>),
}

impl PayloadFault {
    /// Whether the payload still proves H's identity for this handshake.
    fn keeps_h_valid(&self) -> bool {
        match self {
            PayloadFault::Signer(k) => matches!(k, KeyPick::H),
            other => other.keeps_signature_valid(),
        }
    }

    /// Whether the payload still proves its signer's identity for this
    /// handshake (the signer may be another key than H).
    fn keeps_signature_valid(&self) -> bool {
        match self {
            PayloadFault::Version(v) => *v >= PROTOCOL_VERSION,
            PayloadFault::Signer(k) => k.key().is_some(),
            PayloadFault::Long(b) => b.is_empty(),
            _ => false,
        }
    }

    /// Who the payload says signed it.
    fn signer(&self) -> KeyPick {
        match self {
            PayloadFault::Signer(k) => *k,
            _ => KeyPick::H,
        }
    }
}

/// Builds the remote's identity payload for the message `hs` writes next.
fn payload(hs: &snow::HandshakeState, static_pub: &[u8], fault: Option<&PayloadFault>) -> Vec<u8> {
    let mut hash = hs.get_handshake_hash().to_vec();
    let mut stat = static_pub.to_vec();
    let mut signer = KeyPick::H;
    let mut version = PROTOCOL_VERSION;
    match fault {
        Some(PayloadFault::HashBit(b)) => hash[(*b as usize / 8) % 32] ^= 1 << (b % 8),
        Some(PayloadFault::StaticBit(b)) => stat[(*b as usize / 8) % 32] ^= 1 << (b % 8),
        Some(PayloadFault::Signer(k)) => signer = *k,
        Some(PayloadFault::Version(v)) => version = *v,
        _ => {}
    }
    let bytes = HandshakePayload::signing_bytes(&stat, &hash);
    let signature = match signer.key() {
        Some(k) => k.sign(&bytes),
        None => [3; 64],
    };
    let mut out = HandshakePayload {
        version,
        identity: signer.id(),
        signature,
    }
    .encode();
    match fault {
        Some(PayloadFault::Bytes(b)) => out = b.clone(),
        Some(PayloadFault::SigBit(b)) => {
            let i = 40 + (*b as usize / 8) % 64;
            out[i] ^= 1 << (b % 8);
        }
        Some(PayloadFault::Magic(b)) => out[(*b as usize / 8) % 6] ^= 1 << (b % 8),
        Some(PayloadFault::Truncate(n)) => out.truncate(*n as usize % out.len()),
        Some(PayloadFault::Long(b)) => out.extend_from_slice(b),
        _ => {}
    }
    out
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len().min(u16::MAX as usize) as u16)
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(body);
    out
}

/// The node's bytes on `conn` so far.
fn take(node: &mut Node<peermq::MemStore>, conn: ConnId) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(o) = node.poll_output() {
        if let Output::Transmit { conn: c, bytes } = o {
            if c == conn {
                out.extend_from_slice(&bytes);
            }
        }
    }
    out
}

/// Splits the first frame off `bytes`.
fn first_frame(bytes: &[u8]) -> Option<&[u8]> {
    let len = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]) as usize;
    bytes.get(2..2 + len)
}

fuzz_target!(|input: Input| run(input));

fn run(input: Input) {
    let f = fixture();
    let h = f.h_key.peer_id();
    let config = Config {
        open: input.open,
        ..peermq_fuzz::config(false)
    };
    let mut node = Node::open(
        f.a_store.snapshot(),
        config,
        Entropy::deterministic(A_SEED),
        Instant::ZERO,
    )
    .expect("a memory store opens");
    let now = Instant::ZERO;
    let mut rng = SeededRng::from_u64(u64::from(input.static_seed));
    let Ok(key) = StaticKey::generate(rng.fork()) else {
        return;
    };
    let Ok(mut hs) = noise::handshake(&key, rng.fork(), !input.node_dials) else {
        return;
    };
    let conn = if input.node_dials {
        if input.dial_any {
            node.connect_any(now)
        } else {
            node.connect(h, now)
        }
    } else {
        node.accept(now)
    };

    // The remote's messages, each a step the fault may hit.
    let mut buf = vec![0u8; 65535];
    let mut scratch = vec![0u8; 65535];
    let steps = if input.node_dials { 1 } else { 2 };
    let mut delivered_all = true;
    for i in 0..steps {
        let step = if i == 0 { Step::First } else { Step::Second };
        // The node speaks before the remote's message when it dials (its
        // message 1) and between the remote's two when it listens
        // (message 2).
        if input.node_dials || i == 1 {
            let bytes = take(&mut node, conn);
            let Some(msg) = first_frame(&bytes) else {
                delivered_all = false;
                break;
            };
            if hs.read_message(msg, &mut scratch).is_err() {
                delivered_all = false;
                break;
            }
        }
        let carries_identity = input.node_dials || step == Step::Second;
        let body = if carries_identity {
            let fault = match &input.fault {
                Fault::Payload(p) => Some(p),
                _ => None,
            };
            payload(&hs, &key.public, fault)
        } else {
            match &input.fault {
                Fault::FirstPayload(p) => p.clone(),
                _ => Vec::new(),
            }
        };
        let Ok(n) = hs.write_message(&body, &mut buf) else {
            delivered_all = false;
            break;
        };
        let mut wire = frame(&buf[..n]);
        match &input.fault {
            Fault::Replace(s, b) if *s == step => wire = frame(b),
            Fault::RawFrame(s, b) if *s == step => wire = b.clone(),
            Fault::Flip(s, at, bit) if *s == step => {
                let k = *at as usize % wire.len();
                wire[k] ^= 1 << (bit % 8);
            }
            Fault::Extra(s, b) if *s == step => wire.extend_from_slice(b),
            _ => {}
        }
        let k = input.split as usize % (wire.len() + 1);
        for piece in [&wire[..k], &wire[k..]] {
            if !piece.is_empty() {
                node.handle_input(conn, piece, now)
                    .expect("a memory store does not fail");
            }
        }
    }

    let peer = node.peer_of(conn);
    if let Some(p) = peer {
        // Only a key that signed this very handshake is authenticated, and
        // one other than H only by a node open to anyone.
        match &input.fault {
            Fault::Payload(f) => {
                assert!(
                    f.keeps_signature_valid(),
                    "authenticated with a bad payload: {f:?}"
                );
                assert_eq!(
                    p,
                    f.signer().id(),
                    "authenticated as another than the signer"
                );
            }
            _ => assert_eq!(p, h, "authenticated as another than H"),
        }
        assert!(p == h || input.open, "an unauthorized key was let in");
    }
    let clean = matches!(input.fault, Fault::None)
        || matches!(&input.fault, Fault::Payload(p) if p.keeps_h_valid());
    if clean && delivered_all {
        assert_eq!(peer, Some(h), "a clean handshake with H completes");
    }

    // After the handshake: a transport message from the remote.
    if peer.is_some() && hs.is_handshake_finished() {
        if let Ok(mut t) = hs.into_transport_mode() {
            let _ = take(&mut node, conn);
            let plain = &input.after[..input.after.len().min(60000)];
            if let Ok(n) = t.write_message(plain, &mut buf) {
                node.handle_input(conn, &frame(&buf[..n]), now)
                    .expect("a memory store does not fail");
            }
        }
    }
}
