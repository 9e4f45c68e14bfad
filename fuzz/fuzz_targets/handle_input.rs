//! Arbitrary bytes from a peer, before and after an authenticated
//! handshake, must never make a node panic or fail (a peer's misbehaviour
//! only closes its connection).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermq::{Config, Instant, Keypair, MemStore, Node, Output, RawPeer, SeededRng};

fuzz_target!(|data: &[u8]| {
    let config = Config { store_poll_interval: None, ..Config::default() };
    let entropy = peermq::Entropy::deterministic(0);
    let Ok(mut node) = Node::open(MemStore::new(), config, entropy, Instant::ZERO) else { return };
    let conn = node.accept(Instant::ZERO);
    assert!(node.handle_input(conn, data, Instant::ZERO).is_ok());

    let key = Keypair::generate(&mut SeededRng::from_u64(1));
    let _ = node.add_peer(key.peer_id());
    let Ok(mut raw) = RawPeer::dial(&key, 2, node.id()) else { return };
    let conn = node.accept(Instant::ZERO);
    for _ in 0..3 {
        let bytes = raw.output().unwrap_or_default();
        assert!(node.handle_input(conn, &bytes, Instant::ZERO).is_ok());
        while let Some(out) = node.poll_output() {
            if let Output::Transmit { bytes, .. } = out {
                let _ = raw.input(&bytes);
            }
        }
    }
    raw.send_plaintext(data);
    let bytes = raw.output().unwrap_or_default();
    assert!(node.handle_input(conn, &bytes, Instant::ZERO).is_ok());
    while node.poll_output().is_some() {}
});
