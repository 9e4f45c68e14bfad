//! Sending side of a queue feed: what the recipient acknowledged, and what
//! was pruned.

use crate::feed::FeedId;
use crate::ranges::RangeSet;
use crate::store::{Store, StoreError, Table, Txn};
use crate::wire::receipt::Receipt;

const OUTBOX_VERSION: u8 = 1;
const MAX_STORED_RANGES: usize = 1 << 20;

/// Acknowledgement state of one outgoing feed, persisted per feed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outbox {
    /// The latest receipt from the recipient.
    pub receipt: Option<Receipt>,
    /// Blocks whose bytes were dropped after being acknowledged.
    pub pruned: RangeSet,
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
        let (pruned, rest) = RangeSet::decode(rest, MAX_STORED_RANGES).ok_or_else(corrupt)?;
        let receipt = if rest.is_empty() {
            None
        } else {
            let r = Receipt::decode(rest, MAX_STORED_RANGES).ok_or_else(corrupt)?;
            // A receipt is kept only after its signature checked out; one
            // that no longer does was damaged on disk.
            if !r.verify() || r.feed != *feed {
                return Err(corrupt());
            }
            Some(r)
        };
        Ok(Outbox { receipt, pruned })
    }

    pub fn save<S: Store>(&self, txn: &mut Txn<'_, S>, feed: &FeedId) {
        let mut out = vec![OUTBOX_VERSION];
        self.pruned.encode(&mut out);
        if let Some(r) = &self.receipt {
            r.encode(&mut out);
        }
        txn.put_owned(Table::Receipts, &feed.0, out);
    }

    /// The acknowledged blocks.
    pub fn acked(&self) -> RangeSet {
        self.receipt
            .as_ref()
            .map(|r| r.ranges.clone())
            .unwrap_or_default()
    }
}
