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

    /// Records a verified receipt; returns the blocks it newly acknowledges
    /// (nothing is stored for a receipt that adds nothing).
    pub fn add<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        feed: &FeedId,
        receipt: Receipt,
    ) -> RangeSet {
        let mut newly = receipt.ranges.clone();
        newly.subtract(&self.acked);
        if newly.is_empty() {
            return newly;
        }
        self.acked.union(&receipt.ranges);
        if receipt.ranges == self.acked {
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
