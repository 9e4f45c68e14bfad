//! Forks: an author that signed two heads which cannot both be true.
//!
//! Honest authors fork too (a data directory restored from a backup, a
//! commit lost in a crash and the same length signed again), so a fork is
//! not a reason to close connections, which would only reconnect and meet
//! it again. The node keeps both heads as evidence against the author (not
//! the peer that carried them, which cannot forge an author's signature),
//! stops replicating that feed, and reports it once.

use std::collections::BTreeMap;

use crate::feed::{FeedDescriptor, FeedId, SignedHead, SIGNED_HEAD_LEN};
use crate::store::{Store, StoreError, Table, Txn};

const FORK_VERSION: u8 = 1;

/// Evidence that a feed's author signed two conflicting heads: both verify
/// against the author's key, and they describe trees that differ where they
/// overlap (at one length, different roots; at different lengths, a proof
/// the node checked showed a differing node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvidence {
    /// The forked feed.
    pub desc: FeedDescriptor,
    /// The head this node held.
    pub ours: SignedHead,
    /// The conflicting head a peer presented.
    pub theirs: SignedHead,
}

impl ForkEvidence {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORK_VERSION];
        self.desc.encode(&mut out);
        out.extend_from_slice(&self.ours.encode());
        out.extend_from_slice(&self.theirs.encode());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&v, rest) = bytes.split_first()?;
        if v != FORK_VERSION {
            return None;
        }
        let (desc, rest) = FeedDescriptor::decode(rest)?;
        if rest.len() != 2 * SIGNED_HEAD_LEN {
            return None;
        }
        let (a, b) = rest.split_at(SIGNED_HEAD_LEN);
        Some(ForkEvidence {
            desc,
            ours: SignedHead::decode(a)?,
            theirs: SignedHead::decode(b)?,
        })
    }

    /// Writes the evidence into `txn`, under the feed's id.
    pub(super) fn save<S: Store>(&self, txn: &mut Txn<'_, S>) {
        txn.put_owned(Table::Forks, &self.desc.id().0, self.encode());
    }
}

/// Every fork recorded in the store: one per forked feed.
pub(super) fn load_all<S: Store>(
    txn: &Txn<'_, S>,
) -> Result<BTreeMap<FeedId, ForkEvidence>, StoreError> {
    super::load_per_feed(txn, Table::Forks, "fork", |v| {
        ForkEvidence::decode(v).map(|f| (f.desc.id(), f))
    })
}
