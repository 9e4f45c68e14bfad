//! Queue feed blocks as their recipient opens them: the envelope
//! (src/wire/envelope.rs) and the sealed payload (src/identity/seal.rs).
//! Any block opens or fails without a panic; an envelope that opens
//! re-wraps to a block that opens the same; a sealed payload opens only
//! with the right sender, sequence number and bytes.
//!
//! Input: `seq: u8 | block` (the protocol vector `sealed_block_hello` is
//! block 0 of the vector author's queue feed to the vector recipient).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use peermq::identity::seal::Opener;
use peermq::wire::envelope::{open, wrap, wrap_sealed};
use peermq::{Keypair, PeerId};

/// The protocol vectors' recipient (seed 32 × 0x02) and author (0x01).
fn keys() -> &'static (Keypair, PeerId) {
    static K: OnceLock<(Keypair, PeerId)> = OnceLock::new();
    K.get_or_init(|| {
        (
            Keypair::from_bytes(&[2; 32]),
            Keypair::from_bytes(&[1; 32]).peer_id(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&seq, block)) = data.split_first() else {
        return;
    };
    let Ok(env) = open(block) else {
        return;
    };
    let rewrapped = match env.sealed {
        Some(e) => wrap_sealed(&env.schedule, &e, env.payload),
        None => wrap(&env.schedule, env.payload).into_owned(),
    };
    assert_eq!(open(&rewrapped), Ok(env), "an envelope re-wraps to itself");
    let _ = env.schedule.due(peermq::Timestamp::from_micros(1 << 50));
    let _ = env.schedule.is_deliverable();
    let Some(ephemeral) = env.sealed else {
        return;
    };
    let (me, author) = keys();
    let mut opener = Opener::new(me);
    let seq = u64::from(seq);
    if let Ok(plain) = opener.open(*author, &ephemeral, seq, env.payload) {
        assert_eq!(plain.len() + 16, env.payload.len());
        // Bound to the sender, the position and every byte.
        assert!(opener
            .open(PeerId([9; 32]), &ephemeral, seq, env.payload)
            .is_err());
        assert!(opener
            .open(*author, &ephemeral, seq + 1, env.payload)
            .is_err());
        let mut changed = env.payload.to_vec();
        changed[0] ^= 1;
        assert!(opener.open(*author, &ephemeral, seq, &changed).is_err());
    }
});
