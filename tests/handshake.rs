//! Who may talk to whom: the handshake binds each identity to one session,
//! both sides check authorization before anything is served or accepted,
//! and no node is keyed from randomness it was not given.

use peermq::feed::FeedDescriptor;
use peermq::noise::{self, StaticKey};
use peermq::wire::frame::{write_frame, FrameReader};
use peermq::wire::{HandshakePayload, PROTOCOL_VERSION};
use peermq::{
    CloseReason, Config, ConnId, Entropy, Event, Instant, Keypair, Mailbox, MemStore, Node, Output,
    SeededRng, Timestamp,
};

const NOW: Instant = Instant::ZERO;

fn config() -> Config {
    Config {
        store_poll_interval: None,
        ..Config::default()
    }
}

/// What a node did with a connection: the peer it admitted, or why it
/// closed.
fn outcome(outputs: &[Output], conn: ConnId) -> Result<peermq::PeerId, CloseReason> {
    for out in outputs {
        match out {
            Output::Event(Event::Connected { conn: c, peer }) if *c == conn => return Ok(*peer),
            Output::Event(Event::Disconnected {
                conn: c, reason, ..
            }) if *c == conn => return Err(reason.clone()),
            _ => {}
        }
    }
    Err(CloseReason::Local)
}

/// Runs a dialer's side of the handshake by hand against listener `a`, as
/// identity `h` with Noise static key `s`: message 3 carries whatever
/// `payload` makes of the handshake hash it is signed over. Returns what `a`
/// decided, and the payload sent.
fn dial_by_hand(
    a: &mut Node<MemStore>,
    s: &StaticKey,
    seed: u64,
    payload: impl FnOnce(&[u8]) -> Vec<u8>,
) -> (Result<peermq::PeerId, CloseReason>, Vec<u8>) {
    let mut hs = noise::handshake(s, SeededRng::from_u64(seed), true).unwrap();
    let mut wire = Vec::new();
    write_frame(&mut wire, 65535, |buf| hs.write_message(&[], buf)).unwrap();
    let conn = a.accept(NOW);
    a.handle_input(conn, &wire, NOW).unwrap();
    let mut reply = Vec::new();
    let mut outputs = Vec::new();
    while let Some(out) = a.poll_output() {
        match out {
            Output::Transmit { bytes, .. } => reply.extend(bytes),
            other => outputs.push(other),
        }
    }
    let mut frames = FrameReader::new();
    let mut read = Vec::new();
    frames
        .push(&reply, |frame| {
            let mut buf = vec![0; frame.len()];
            hs.read_message(frame, &mut buf).map(|n| read.push(n))
        })
        .unwrap();
    assert_eq!(read.len(), 1, "the listener answered message 1");
    let ours = payload(hs.get_handshake_hash());
    let mut wire = Vec::new();
    write_frame(&mut wire, 65535, |buf| hs.write_message(&ours, buf)).unwrap();
    a.handle_input(conn, &wire, NOW).unwrap();
    while let Some(out) = a.poll_output() {
        outputs.push(out);
    }
    (outcome(&outputs, conn), ours)
}

fn signed_payload(h: &Keypair, s: &StaticKey, hash: &[u8]) -> Vec<u8> {
    HandshakePayload {
        version: PROTOCOL_VERSION,
        identity: h.peer_id(),
        signature: h.sign(&HandshakePayload::signing_bytes(&s.public, hash)),
    }
    .encode()
}

#[test]
fn an_identity_payload_replayed_in_another_session_is_refused() {
    // Whoever holds a node's Noise static key and one identity payload it
    // sent must not be able to pass as that node in a later session: the
    // payload is signed over the session's handshake hash.
    let mut a = Node::open(MemStore::new(), config(), Entropy::deterministic(1), NOW).unwrap();
    let h = Keypair::generate(&mut SeededRng::from_u64(50));
    a.add_peer(h.peer_id()).unwrap();
    let s = StaticKey::generate(SeededRng::from_u64(51)).unwrap();

    let (first, captured) = dial_by_hand(&mut a, &s, 1, |hash| signed_payload(&h, &s, hash));
    assert_eq!(first, Ok(h.peer_id()), "an honest handshake is admitted");

    let (replayed, _) = dial_by_hand(&mut a, &s, 2, |_| captured);
    let reason = replayed.expect_err("a replayed payload is refused");
    assert!(
        matches!(&reason, CloseReason::Handshake(m) if m.contains("did not sign")),
        "{reason:?}"
    );
}

#[test]
fn a_payload_that_signs_only_the_static_key_is_refused() {
    // Protocol 3's payload: a signature over the Noise static key alone,
    // valid in every session once seen.
    let mut a = Node::open(MemStore::new(), config(), Entropy::deterministic(1), NOW).unwrap();
    let h = Keypair::generate(&mut SeededRng::from_u64(50));
    a.add_peer(h.peer_id()).unwrap();
    let s = StaticKey::generate(SeededRng::from_u64(51)).unwrap();
    let (r, _) = dial_by_hand(&mut a, &s, 3, |_| {
        let mut old = b"peermq v1 noise static key\0".to_vec();
        old.extend_from_slice(&s.public);
        HandshakePayload {
            version: PROTOCOL_VERSION,
            identity: h.peer_id(),
            signature: h.sign(&old),
        }
        .encode()
    });
    assert!(
        matches!(&r, Err(CloseReason::Handshake(m)) if m.contains("did not sign")),
        "{r:?}"
    );
}

#[test]
fn the_identity_comes_from_the_entropy_given_when_the_store_has_none() {
    // A node cannot be opened without `Entropy` (it is an argument, and the
    // configuration holds no seed): no default makes every node share keys.
    let store = MemStore::new();
    let a = Node::open(store.clone(), config(), Entropy::deterministic(7), NOW)
        .unwrap()
        .id();
    let b = Node::open(MemStore::new(), config(), Entropy::deterministic(7), NOW)
        .unwrap()
        .id();
    assert_eq!(a, b, "the identity comes from the seed given");
    // Once stored, the identity stays whatever a later open is given.
    let again = Node::open(store, config(), Entropy::deterministic(8), NOW)
        .unwrap()
        .id();
    assert_eq!(again, a);
}

#[test]
fn debug_output_of_entropy_shows_no_seed() {
    let e = Entropy::new([0xab; 32]).sign_ahead([0xcd; 32]);
    let text = format!("{e:?}");
    assert!(text.contains("<secret>"), "{text}");
    assert!(
        !text.contains("171") && !text.contains("205") && !text.contains("ab"),
        "no seed byte is printed: {text}"
    );
}

/// Moves bytes between two nodes until nothing moves; returns the outputs
/// that were not bytes.
fn pump(
    x: &mut Node<MemStore>,
    xc: ConnId,
    y: &mut Node<MemStore>,
    yc: ConnId,
) -> (Vec<Output>, Vec<Output>) {
    peermq::pump_pair((x, xc), (y, yc), NOW).unwrap()
}

#[test]
fn a_restricted_node_that_dials_an_address_refuses_a_stranger_who_answers() {
    // A dials an address without knowing who listens there; a stranger in
    // open mode answers. A must neither serve it its broadcast feed nor take
    // its queue messages.
    let mut a = Node::open(MemStore::new(), config(), Entropy::deterministic(1), NOW).unwrap();
    let mut s = Node::open(
        MemStore::new(),
        Config {
            open: true,
            ..config()
        },
        Entropy::deterministic(2),
        NOW,
    )
    .unwrap();
    a.broadcast(b"for authorized peers only", NOW).unwrap();
    s.send(a.id(), b"unsolicited", NOW).unwrap();
    while a.poll_output().is_some() {}
    while s.poll_output().is_some() {}

    let ac = a.connect_any(NOW);
    let sc = s.accept(NOW);
    let (ao, so) = pump(&mut a, ac, &mut s, sc);

    assert_eq!(
        outcome(&ao, ac),
        Err(CloseReason::Unauthorized(s.id())),
        "A refuses the stranger"
    );
    assert!(
        outcome(&so, sc).is_err(),
        "the stranger never sees the handshake complete"
    );
    assert_eq!(
        s.broadcast_get(a.id(), 0).unwrap(),
        None,
        "nothing of A's feed was served"
    );
    assert!(a
        .read(Mailbox::Unread, None, 10, Timestamp::EPOCH)
        .unwrap()
        .is_empty());
    assert_eq!(
        s.feed_handle(FeedDescriptor::broadcast(a.id()))
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_node_that_dials_an_address_talks_to_an_authorized_peer_there() {
    let mut a = Node::open(MemStore::new(), config(), Entropy::deterministic(1), NOW).unwrap();
    let mut b = Node::open(MemStore::new(), config(), Entropy::deterministic(2), NOW).unwrap();
    a.add_peer(b.id()).unwrap();
    b.add_peer(a.id()).unwrap();
    b.send(a.id(), b"hello", NOW).unwrap();
    let ac = a.connect_any(NOW);
    let bc = b.accept(NOW);
    let (ao, _) = pump(&mut a, ac, &mut b, bc);
    assert_eq!(outcome(&ao, ac), Ok(b.id()));
    let unread = a.read(Mailbox::Unread, None, 10, Timestamp::EPOCH).unwrap();
    assert_eq!(unread.len(), 1);
    assert_eq!(unread[0].data, b"hello");
}

#[test]
fn an_open_node_that_dials_its_own_address_refuses_itself_and_does_not_retry() {
    let open = Config {
        open: true,
        ..config()
    };
    let mut a = Node::open(MemStore::new(), open, Entropy::deterministic(1), NOW).unwrap();
    let (dialed, accepted) = (a.connect_any(NOW), a.accept(NOW));
    let mut outputs = Vec::new();
    // One node, both ends: each connection's bytes go to the other.
    for _ in 0..10 {
        let mut moved = false;
        while let Some(out) = a.poll_output() {
            match out {
                Output::Transmit { conn, bytes } => {
                    let to = if conn == dialed { accepted } else { dialed };
                    a.handle_input(to, &bytes, NOW).unwrap();
                    moved = true;
                }
                other => outputs.push(other),
            }
        }
        if !moved {
            break;
        }
    }
    assert_eq!(outcome(&outputs, dialed), Err(CloseReason::Ourselves));
    assert!(CloseReason::Ourselves.to_string().contains("itself"));
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, Output::Event(Event::Connected { .. }))),
        "{outputs:?}"
    );
    assert!(!a.is_connected(&a.id()));
}

#[test]
fn a_dialer_proving_the_listeners_own_identity_is_refused() {
    // Someone holding our key (another process on our data directory, say)
    // dials us: the listener refuses it as itself, authorized or not.
    let open = Config {
        open: true,
        ..config()
    };
    let mut a = Node::open(MemStore::new(), open, Entropy::deterministic(1), NOW).unwrap();
    let me = a.keypair().clone();
    let s = StaticKey::generate(SeededRng::from_u64(51)).unwrap();
    let (outcome, _) = dial_by_hand(&mut a, &s, 1, |hash| signed_payload(&me, &s, hash));
    assert_eq!(outcome, Err(CloseReason::Ourselves));
}
