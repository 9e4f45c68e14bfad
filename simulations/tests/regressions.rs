//! Seeds that found bugs in the core, kept so the bugs stay fixed. Each
//! names the property it broke and the fix.

use peermq_sim::{generate, run, Params};

fn passes(seed: u64) {
    let r = run(&generate(seed, &Params::default()));
    assert!(r.failure.is_none(), "seed {seed}: {:?}", r.failure);
}

/// Liveness: a `get` was forgotten after a failed commit. `storage_failed`
/// dropped the in-memory inboxes, and with them the blocks the application
/// had asked for; a block that arrived in the failed batch had also left
/// `wanted` before the commit. Fixed: `wanted` survives a storage failure
/// and is emptied only after the commit.
#[test]
fn seed_147_get_survives_a_failed_commit() {
    passes(147);
}

/// Same bug, found again with the failure after the send.
#[test]
fn seed_515_get_survives_a_failed_commit() {
    passes(515);
}

/// Corruption undetected: a flipped byte in a frame's length prefix made
/// the receiver wait for a longer frame, swallowing every keepalive after
/// it; raw bytes refreshed `last_rx`, so the idle timeout never fired and
/// the connection hung with a message stuck behind it. Fixed: only frames
/// that decrypt count as hearing from the peer.
#[test]
fn seed_802_corrupted_length_prefix_times_out() {
    passes(802);
}

// Also found: a sparse reader holding more than 4,096 disjoint ranges
// signed a receipt the sender refused as malformed, closing the connection
// at every reconnect, so the reader could never fetch again. Fixed by
// acknowledging a prefix of at most 4,096 ranges. Kept by
// `sparse_download_reads_one_percent_of_a_million` in tests/scenarios.rs
// (seed 1 of the `sparse-download` scenario).

/// Liveness: a reader that restarted asked for "what comes next" from the
/// length it had just been re-told, which began at a block it already held
/// and the sender had pruned; the sender refused the whole request, and the
/// reader never asked for the new block again. Fixed: the standing request
/// starts past everything held, and a refusal covers only the blocks that
/// cannot be served.
#[test]
fn seed_209_standing_request_after_restart() {
    passes(209);
}

/// Liveness, with a mailbox: the sender left while the mailbox was
/// fetching its newest block, and the mailbox never asked for it again
/// (a closing connection released requests of broadcast feeds and inboxes
/// only), so the recipient was refused it at every visit. Fixed: a
/// carried feed's requests are released and planned again. The
/// recipient's side of the same bug is
/// `a_recipient_whose_mailbox_connection_drops_mid_request_asks_again` in
/// tests/mailbox.rs.
#[test]
fn seed_6_mailbox_asks_again_after_its_author_left_mid_request() {
    passes(6);
}

/// Liveness: a node whose clock stepped back 15 minutes (n3 at 12.6 s)
/// kept every deadline it had set before the step, so its receipts,
/// keepalives and redials waited out the 15 minutes as well, far past
/// the heal bound. Fixed: the node's clock never goes back (`State::tick`
/// keeps the step as a skew), and deadlines stay as far off as they were.
#[test]
fn seed_124_a_clock_stepped_back_stalls_no_deadline() {
    passes(124);
}
