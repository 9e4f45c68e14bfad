//! Sending side of a queue feed: what the recipient acknowledged, the
//! receipts that prove it, and what was pruned.
//!
//! Receipts arrive as deltas (a sparse reader's cumulative set would make
//! every receipt grow with its fragmentation), so the proof of delivery is a
//! short log of receipts whose union is the acknowledged set. A receipt that
//! covers everything acknowledged so far replaces the log.
//!
//! What a receipt writes is what it adds: itself and a few numbers. The
//! acknowledged set is the union of a checkpoint and the receipts logged
//! since, rebuilt when the outbox is loaded; the checkpoint is rewritten once
//! every [`CHECKPOINT_EVERY`] receipts (and after one that claims blocks
//! not written yet, so that a load counts only what exists), so a receipt
//! costs a write of its own size, and the whole set once per checkpoint.
//!
//! ```text
//! Receipts table, per feed:
//!   feed id            header: version 3 | first | next | checkpoint (u64 LE)
//!   feed id | 'a'      the acknowledged set when receipt `checkpoint` was due
//!   feed id | 'p'      the pruned set (written by pruning only)
//!                      (both sets in the compact form of `RangeSet`)
//!   feed id | 'r' | i  receipt i, for first <= i < next
//! acknowledged = set at 'a'  ∪  receipts checkpoint..next
//! ```

use std::ops::{Bound, ControlFlow};

use crate::feed::FeedId;
use crate::ranges::RangeSet;
use crate::store::{Store, StoreError, Table, Txn};
use crate::wire::receipt::Receipt;

/// The layout above; version 2 kept both sets in the header record, and is
/// still read (and rewritten as version 3 at the next receipt or prune).
const OUTBOX_VERSION: u8 = 3;
const OUTBOX_VERSION_WHOLE: u8 = 2;
const MAX_STORED_RANGES: usize = 1 << 20;
/// Receipts logged between two checkpoints of the acknowledged set.
pub const CHECKPOINT_EVERY: u64 = 64;
/// Most separate ranges the acknowledged set may hold. An honest reader
/// acknowledges what it downloaded, in order or in a few sparse runs; past
/// this many runs, receipts that add runs are ignored (their blocks stay
/// unacknowledged and unpruned, which loses nothing), so a recipient
/// acknowledging every other block cannot make the set, a checkpoint of it,
/// or a load of it, as large as the feed.
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
    /// Receipts from this position on are not in the stored checkpoint.
    checkpoint: u64,
    /// Loaded from the version 2 layout: the checkpoint and the pruned set
    /// are not stored on their own yet.
    whole: bool,
}

fn key(feed: &FeedId, tag: u8) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[..32].copy_from_slice(&feed.0);
    k[32] = tag;
    k
}

fn receipt_key(feed: &FeedId, i: u64) -> [u8; 41] {
    let mut k = [0u8; 41];
    k[..33].copy_from_slice(&key(feed, b'r'));
    k[33..].copy_from_slice(&i.to_be_bytes());
    k
}

fn u64_at(bytes: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(8 * i..8 * i + 8)?.try_into().ok()?,
    ))
}

impl Outbox {
    pub fn load<S: Store>(txn: &Txn<'_, S>, feed: &FeedId) -> Result<Self, StoreError> {
        let Some(bytes) = txn.get(Table::Receipts, &feed.0)? else {
            return Ok(Outbox::default());
        };
        let corrupt = || StoreError::Corrupted(format!("receipt record of feed {feed} is damaged"));
        let set = |bytes: Option<&[u8]>| match bytes {
            None => Ok(RangeSet::new()),
            Some(b) => match RangeSet::decode_compact(b, MAX_STORED_RANGES) {
                Some((set, [])) => Ok(set),
                _ => Err(corrupt()),
            },
        };
        let (&v, rest) = bytes.split_first().ok_or_else(corrupt)?;
        let mut outbox = match v {
            OUTBOX_VERSION_WHOLE => {
                let (acked, rest) =
                    RangeSet::decode(rest, MAX_STORED_RANGES).ok_or_else(corrupt)?;
                let (pruned, rest) =
                    RangeSet::decode(rest, MAX_STORED_RANGES).ok_or_else(corrupt)?;
                let (first, next) = (u64_at(rest, 0), u64_at(rest, 1));
                let (Some(first), Some(next), 16) = (first, next, rest.len()) else {
                    return Err(corrupt());
                };
                if first > next {
                    return Err(corrupt());
                }
                Outbox {
                    acked,
                    pruned,
                    first,
                    next,
                    checkpoint: next,
                    whole: true,
                }
            }
            OUTBOX_VERSION => {
                let (Some(first), Some(next), Some(checkpoint), 24) = (
                    u64_at(rest, 0),
                    u64_at(rest, 1),
                    u64_at(rest, 2),
                    rest.len(),
                ) else {
                    return Err(corrupt());
                };
                if !(first <= checkpoint && checkpoint <= next) {
                    return Err(corrupt());
                }
                Outbox {
                    acked: set(txn.get(Table::Receipts, &key(feed, b'a'))?)?,
                    pruned: set(txn.get(Table::Receipts, &key(feed, b'p'))?)?,
                    first,
                    next,
                    checkpoint,
                    whole: false,
                }
            }
            _ => return Err(corrupt()),
        };
        for r in outbox.logged(txn, feed, outbox.checkpoint)? {
            outbox.acked.union(&r.ranges);
        }
        // The first and last receipts the header counts are there: a
        // damaged count would otherwise be walked to its end (`add`).
        if outbox.first < outbox.next {
            for i in [outbox.first, outbox.next - 1] {
                if txn.get(Table::Receipts, &receipt_key(feed, i))?.is_none() {
                    return Err(corrupt());
                }
            }
        }
        Ok(outbox)
    }

    /// Writes the header, and whatever the version 2 layout kept in it.
    fn save_header<S: Store>(&mut self, txn: &mut Txn<'_, S>, feed: &FeedId) {
        if std::mem::take(&mut self.whole) {
            self.save_checkpoint(txn, feed);
            self.save_pruned(txn, feed);
        }
        let mut out = vec![OUTBOX_VERSION];
        for v in [self.first, self.next, self.checkpoint] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        txn.put_owned(Table::Receipts, &feed.0, out);
    }

    fn save_checkpoint<S: Store>(&mut self, txn: &mut Txn<'_, S>, feed: &FeedId) {
        let mut out = Vec::new();
        self.acked.encode_compact(&mut out);
        txn.put_owned(Table::Receipts, &key(feed, b'a'), out);
        self.checkpoint = self.next;
    }

    fn save_pruned<S: Store>(&self, txn: &mut Txn<'_, S>, feed: &FeedId) {
        let mut out = Vec::new();
        self.pruned.encode_compact(&mut out);
        txn.put_owned(Table::Receipts, &key(feed, b'p'), out);
    }

    /// Records that the bytes of `blocks` were dropped.
    pub fn add_pruned<S: Store>(&mut self, txn: &mut Txn<'_, S>, feed: &FeedId, blocks: &RangeSet) {
        self.pruned.union(blocks);
        self.save_pruned(txn, feed);
        self.save_header(txn, feed);
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
        let receipt_ranges = receipt.ranges.clone();
        let mut claimed = receipt_ranges.clone();
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
            // It proves everything on its own: the older receipts, and the
            // checkpoint they were folded into, can go.
            for i in self.first..self.next {
                txn.delete(Table::Receipts, &receipt_key(feed, i));
            }
            txn.delete(Table::Receipts, &key(feed, b'a'));
            self.first = self.next;
            self.checkpoint = self.next;
        }
        let mut enc = Vec::new();
        receipt.encode(&mut enc);
        txn.put_owned(Table::Receipts, &receipt_key(feed, self.next), enc);
        self.next += 1;
        // A receipt claiming blocks past the feed's length is kept whole
        // (its signature covers all of it), but a load would count all of
        // it: the clipped set is checkpointed now, after it.
        let overreaching = claimed != receipt_ranges;
        if overreaching || self.next - self.checkpoint >= CHECKPOINT_EVERY {
            self.save_checkpoint(txn, feed);
        }
        self.save_header(txn, feed);
        newly
    }

    /// The retained receipts, oldest first: together they prove delivery of
    /// every acknowledged block.
    pub fn receipts<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        feed: &FeedId,
    ) -> Result<Vec<Receipt>, StoreError> {
        self.logged(txn, feed, self.first)
    }

    /// The receipts logged from position `from` on.
    fn logged<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        feed: &FeedId,
        from: u64,
    ) -> Result<Vec<Receipt>, StoreError> {
        let lo = receipt_key(feed, from);
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
        if bad || out.len() as u64 != self.next - from {
            return Err(StoreError::Corrupted(format!(
                "a stored receipt of feed {feed} is damaged or missing"
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::rng::SeededRng;
    use crate::store::{MemStore, WriteBatch};
    use std::cell::Cell;

    /// A store that counts the bytes each commit writes.
    struct Counting {
        inner: MemStore,
        last: Cell<usize>,
    }

    impl Store for Counting {
        type Reader<'a> = <MemStore as Store>::Reader<'a>;

        fn reader(&self) -> Result<Self::Reader<'_>, StoreError> {
            self.inner.reader()
        }

        fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
            let bytes = batch
                .iter()
                .map(|(_, k, v)| k.len() + v.map_or(0, <[u8]>::len))
                .sum();
            self.last.set(bytes);
            self.inner.commit(batch)
        }
    }

    impl Counting {
        fn new() -> Self {
            Counting {
                inner: MemStore::new(),
                last: Cell::new(0),
            }
        }
    }

    const FEED: FeedId = FeedId([5; 32]);

    fn receipt(key: &Keypair, ranges: RangeSet) -> Receipt {
        Receipt::sign(key, FEED, ranges)
    }

    /// Acknowledges every other block of `0..2n`, one receipt each, and
    /// returns the most bytes one of those commits wrote.
    fn fragment(store: &Counting, key: &Keypair, outbox: &mut Outbox, n: u64) -> usize {
        let mut most = 0;
        for i in 0..n {
            let mut txn = Txn::begin(store).unwrap();
            let r = receipt(key, RangeSet::from_range(2 * i, 2 * i + 1));
            assert!(!outbox.add(&mut txn, &FEED, r, u64::MAX).is_empty());
            txn.commit().unwrap();
            most = most.max(store.last.get());
        }
        most
    }

    #[test]
    fn a_receipt_writes_what_it_adds_not_the_whole_acknowledged_set() {
        let store = Counting::new();
        let key = Keypair::generate(&mut SeededRng::from_u64(3));
        let mut outbox = Outbox::default();
        fragment(&store, &key, &mut outbox, 3_000);
        assert_eq!(outbox.acked.range_count(), 3_000);
        // The whole set takes some 6 KB; a receipt between checkpoints
        // writes itself and a header, and a checkpoint is amortized over
        // CHECKPOINT_EVERY receipts.
        let mut bytes = Vec::new();
        for i in 3_000..3_000 + CHECKPOINT_EVERY {
            let mut txn = Txn::begin(&store).unwrap();
            let r = receipt(&key, RangeSet::from_range(2 * i, 2 * i + 1));
            outbox.add(&mut txn, &FEED, r, u64::MAX);
            txn.commit().unwrap();
            bytes.push(store.last.get());
        }
        let mut whole = Vec::new();
        outbox.acked.encode_compact(&mut whole);
        assert!(whole.len() > 6_000, "{}", whole.len());
        let mean = bytes.iter().sum::<usize>() / bytes.len();
        assert!(mean < 400, "a receipt writes {mean} bytes on average");
        assert!(bytes.iter().filter(|&&b| b > 400).count() <= 1, "{bytes:?}");
    }

    #[test]
    fn the_acknowledged_set_is_rebuilt_from_checkpoint_and_log_after_a_restart() {
        let store = Counting::new();
        let key = Keypair::generate(&mut SeededRng::from_u64(3));
        let mut outbox = Outbox::default();
        fragment(&store, &key, &mut outbox, CHECKPOINT_EVERY * 2 + 7);
        let mut txn = Txn::begin(&store).unwrap();
        outbox.add_pruned(&mut txn, &FEED, &RangeSet::from_range(0, 1));
        txn.commit().unwrap();
        let txn = Txn::begin(&store).unwrap();
        let again = Outbox::load(&txn, &FEED).unwrap();
        assert_eq!(again.acked, outbox.acked);
        assert_eq!(again.pruned, RangeSet::from_range(0, 1));
        assert_eq!(
            again.receipts(&txn, &FEED).unwrap().len() as u64,
            CHECKPOINT_EVERY * 2 + 7
        );
        drop(txn);

        // One receipt covering everything replaces the log and checkpoint.
        let mut txn = Txn::begin(&store).unwrap();
        let all = RangeSet::from_range(0, 1_000);
        outbox.add(&mut txn, &FEED, receipt(&key, all.clone()), u64::MAX);
        txn.commit().unwrap();
        let txn = Txn::begin(&store).unwrap();
        let again = Outbox::load(&txn, &FEED).unwrap();
        assert_eq!(again.acked, all);
        assert_eq!(again.receipts(&txn, &FEED).unwrap().len(), 1);
    }

    #[test]
    fn a_receipt_for_blocks_not_written_yet_counts_only_what_exists_after_a_reload_too() {
        let store = Counting::new();
        let key = Keypair::generate(&mut SeededRng::from_u64(3));
        let mut outbox = Outbox::default();
        let mut txn = Txn::begin(&store).unwrap();
        let r = receipt(&key, RangeSet::from_range(0, 1_000));
        assert_eq!(
            outbox.add(&mut txn, &FEED, r, 10),
            RangeSet::from_range(0, 10)
        );
        txn.commit().unwrap();
        let txn = Txn::begin(&store).unwrap();
        let again = Outbox::load(&txn, &FEED).unwrap();
        assert_eq!(again.acked, RangeSet::from_range(0, 10));
        assert_eq!(again.receipts(&txn, &FEED).unwrap().len(), 1);
    }

    #[test]
    fn a_version_2_record_reads_and_is_rewritten_in_the_new_layout() {
        let store = MemStore::new();
        let key = Keypair::generate(&mut SeededRng::from_u64(3));
        let acked = RangeSet::from_range(0, 10);
        let mut txn = Txn::begin(&store).unwrap();
        let mut enc = Vec::new();
        receipt(&key, acked.clone()).encode(&mut enc);
        txn.put_owned(Table::Receipts, &receipt_key(&FEED, 0), enc);
        let mut old = vec![OUTBOX_VERSION_WHOLE];
        acked.encode(&mut old);
        RangeSet::from_range(0, 4).encode(&mut old);
        old.extend_from_slice(&0u64.to_le_bytes());
        old.extend_from_slice(&1u64.to_le_bytes());
        txn.put_owned(Table::Receipts, &FEED.0, old);
        txn.commit().unwrap();

        let mut txn = Txn::begin(&store).unwrap();
        let mut outbox = Outbox::load(&txn, &FEED).unwrap();
        assert_eq!(
            (outbox.acked.clone(), outbox.pruned.clone()),
            (acked, RangeSet::from_range(0, 4))
        );
        outbox.add(
            &mut txn,
            &FEED,
            receipt(&key, RangeSet::from_range(20, 21)),
            u64::MAX,
        );
        txn.commit().unwrap();
        let txn = Txn::begin(&store).unwrap();
        assert_eq!(
            txn.get(Table::Receipts, &FEED.0).unwrap().unwrap()[0],
            OUTBOX_VERSION
        );
        let again = Outbox::load(&txn, &FEED).unwrap();
        let mut want = RangeSet::from_range(0, 10);
        want.insert(20, 21);
        assert_eq!(again.acked, want);
        assert_eq!(again.pruned, RangeSet::from_range(0, 4));
        assert_eq!(again.receipts(&txn, &FEED).unwrap().len(), 2);
    }
}
