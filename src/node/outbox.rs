//! Sending side of a queue feed: what the recipient acknowledged, the
//! receipts that prove it, and what was pruned.
//!
//! Receipts arrive as deltas (a sparse reader's cumulative set would make
//! every receipt grow with its fragmentation), so the proof of delivery is a
//! short log of receipts whose union is the acknowledged set. A receipt that
//! covers everything acknowledged so far replaces the log.

use std::ops::{Bound, ControlFlow};

use crate::feed::FeedId;
use crate::ranges::RangeSet;
use crate::store::{Store, StoreError, Table, Txn};
use crate::wire::receipt::Receipt;

const OUTBOX_VERSION: u8 = 2;
const MAX_STORED_RANGES: usize = 1 << 20;
/// Most separate ranges the acknowledged set may hold. The record holding
/// it is rewritten at every receipt, so a recipient acknowledging every
/// other block would otherwise make each receipt cost a write the size of
/// the feed. An honest reader acknowledges what it downloaded, in order or
/// in a few sparse runs; past this many runs, receipts that add runs are
/// ignored (their blocks stay unacknowledged and unpruned, which loses
/// nothing).
pub const MAX_ACKED_RANGES: usize = 4096;

/// Acknowledgement state of one outgoing feed, persisted per feed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outbox {
    /// Blocks the recipient acknowledged (the union of its receipts).
    pub acked: RangeSet,
    /// Blocks whose bytes were dropped after being acknowledged.
    pub pruned: RangeSet,
    /// Receipt log positions `[first, next)`.
    first: u64,
    next: u64,
}

fn receipt_key(feed: &FeedId, i: u64) -> [u8; 41] {
    let mut k = [0u8; 41];
    k[..32].copy_from_slice(&feed.0);
    k[32] = b'r';
    k[33..].copy_from_slice(&i.to_be_bytes());
    k
}

impl Outbox {
    pub fn load<S: Store>(txn: &Txn<'_, S>, feed: &FeedId) -> Result<Self, StoreError> {
        let Some(bytes) = txn.get(Table::Receipts, &feed.0)? else {
            return Ok(Outbox::default());
        };
        let corrupt = || StoreError::Corrupted(format!("receipt record of feed {feed} is damaged"));
        let (&v, rest) = bytes.split_first().ok_or_else(corrupt)?;
        if v != OUTBOX_VERSION {
            return Err(corrupt());
        }
        let (acked, rest) = RangeSet::decode(rest, MAX_STORED_RANGES).ok_or_else(corrupt)?;
        let (pruned, rest) = RangeSet::decode(rest, MAX_STORED_RANGES).ok_or_else(corrupt)?;
        let pos: [u8; 16] = rest.try_into().map_err(|_| corrupt())?;
        let first = u64::from_le_bytes(pos[..8].try_into().map_err(|_| corrupt())?);
        let next = u64::from_le_bytes(pos[8..].try_into().map_err(|_| corrupt())?);
        Ok(Outbox {
            acked,
            pruned,
            first,
            next,
        })
    }

    pub fn save<S: Store>(&self, txn: &mut Txn<'_, S>, feed: &FeedId) {
        let mut out = vec![OUTBOX_VERSION];
        self.acked.encode(&mut out);
        self.pruned.encode(&mut out);
        out.extend_from_slice(&self.first.to_le_bytes());
        out.extend_from_slice(&self.next.to_le_bytes());
        txn.put_owned(Table::Receipts, &feed.0, out);
    }

    /// Records a verified receipt for a feed of `length` blocks; returns the
    /// blocks it newly acknowledges. Only blocks that exist count: a
    /// recipient cannot acknowledge the future, or `prune` would later drop
    /// blocks it never received. Nothing is stored for a receipt that adds
    /// nothing, or that would fragment the set past [`MAX_ACKED_RANGES`].
    pub fn add<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        feed: &FeedId,
        receipt: Receipt,
        length: u64,
    ) -> RangeSet {
        let mut claimed = receipt.ranges.clone();
        claimed.remove(length, u64::MAX);
        let mut newly = claimed.clone();
        newly.subtract(&self.acked);
        if newly.is_empty() {
            return newly;
        }
        let mut acked = self.acked.clone();
        acked.union(&claimed);
        if acked.range_count() > MAX_ACKED_RANGES {
            return RangeSet::new();
        }
        self.acked = acked;
        if claimed == self.acked {
            // It proves everything on its own: the older receipts can go.
            for i in self.first..self.next {
                txn.delete(Table::Receipts, &receipt_key(feed, i));
            }
            self.first = self.next;
        }
        let mut enc = Vec::new();
        receipt.encode(&mut enc);
        txn.put_owned(Table::Receipts, &receipt_key(feed, self.next), enc);
        self.next += 1;
        self.save(txn, feed);
        newly
    }

    /// The retained receipts, oldest first: together they prove delivery of
    /// every acknowledged block.
    pub fn receipts<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        feed: &FeedId,
    ) -> Result<Vec<Receipt>, StoreError> {
        let lo = receipt_key(feed, self.first);
        let hi = receipt_key(feed, self.next);
        let mut out = Vec::new();
        let mut bad = false;
        txn.scan(
            Table::Receipts,
            (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
            &mut |_, v| {
                match Receipt::decode(v, MAX_STORED_RANGES) {
                    // Kept only after its signature checked out: one that no
                    // longer does was damaged on disk.
                    Some(r) if r.verify() && r.feed == *feed => out.push(r),
                    _ => bad = true,
                }
                ControlFlow::Continue(())
            },
        )?;
        if bad {
            return Err(StoreError::Corrupted(format!(
                "a stored receipt of feed {feed} is damaged"
            )));
        }
        Ok(out)
    }
}
