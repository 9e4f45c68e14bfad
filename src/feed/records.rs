//! How a feed lies in the store.
//!
//! Every tree node lives in the record of the last block it covers: block
//! `seq`'s record holds its leaf and the parents that `seq` completes (one
//! per trailing one bit of `seq`, about one on average), then the block's
//! bytes. An append or a download thus costs one put per block, however
//! many nodes it creates, and the puts come in key order.
//!
//! Record of block `seq`, at key `first 16 bytes of the feed id | seq (8,
//! BE)` (128 bits tell feeds apart; the full id would make every record 16
//! bytes bigger):
//!
//! ```text
//! head (LEB128) | leaf? | parent* (hash 32 | size 8 LE) | data?
//! ```
//!
//! `head` is `present << 1 | has_data`. Bit 0 of `present` is the leaf, bit
//! `d ≥ 1` the parent of depth `d` whose last block is `seq`; the nodes
//! follow by increasing depth. With the block's bytes (`has_data`, which
//! needs the leaf), the leaf is its hash alone, its size being the length
//! of the bytes that end the record; without them the leaf is a whole node.
//! A record may hold parents without its leaf (learned from proofs of other
//! blocks); a leaf without its bytes keeps the tree provable after they were
//! cleared or pruned, or when only the hash was ever learned.

use smallvec::SmallVec;

use crate::merkle::{flat, Node, NODE_LEN};
use crate::store::{Store, Table, Txn};

use super::{FeedError, FeedId};

/// A block record as read from the store.
pub(super) struct Leaf<'a> {
    pub node: Node,
    /// `None` when only the hash is held.
    pub data: Option<&'a [u8]>,
}

/// A parsed record of one block.
struct Record<'a> {
    seq: u64,
    present: u64,
    /// The leaf's hash, or its whole node when the bytes are not held.
    leaf: &'a [u8],
    parents: &'a [u8],
    data: Option<&'a [u8]>,
}

/// Bytes of a leaf stored alongside its block's bytes: its hash alone.
const HASH_LEN: usize = 32;

impl<'a> Record<'a> {
    fn parse(feed: &FeedId, seq: u64, bytes: &'a [u8]) -> Result<Record<'a>, FeedError> {
        let bad = || corrupt(feed, seq, "block record");
        let (head, used) = crate::varint::read(bytes).ok_or_else(bad)?;
        let (present, has_data) = (head >> 1, head & 1 == 1);
        // Only parents that end at `seq` belong here, and bytes need a leaf.
        if present & !slots(seq) != 0 || (has_data && present & 1 == 0) {
            return Err(bad());
        }
        let leaf_len = match (present & 1 == 1, has_data) {
            (false, _) => 0,
            (true, true) => HASH_LEN,
            (true, false) => NODE_LEN,
        };
        let parents_len = (present >> 1).count_ones() as usize * NODE_LEN;
        let rest = &bytes[used..];
        let leaf = rest.get(..leaf_len).ok_or_else(bad)?;
        let parents = rest.get(leaf_len..leaf_len + parents_len).ok_or_else(bad)?;
        let rest = &rest[leaf_len + parents_len..];
        if !has_data && !rest.is_empty() {
            return Err(bad());
        }
        Ok(Record {
            seq,
            present,
            leaf,
            parents,
            data: has_data.then_some(rest),
        })
    }

    /// The node of `depth` ending at this block, if held.
    fn node(&self, depth: u32) -> Option<Node> {
        if depth > 62 || self.present & (1 << depth) == 0 {
            return None;
        }
        let index = index_ending_at(self.seq, depth);
        if depth == 0 {
            return match self.data {
                Some(data) => {
                    let mut node = [0u8; NODE_LEN];
                    node[..HASH_LEN].copy_from_slice(self.leaf);
                    node[HASH_LEN..].copy_from_slice(&(data.len() as u64).to_le_bytes());
                    Node::decode(index, &node)
                }
                None => Node::decode(index, self.leaf),
            };
        }
        let slot = (self.present & ((1 << depth) - 1) & !1).count_ones() as usize;
        Node::decode(index, &self.parents[slot * NODE_LEN..(slot + 1) * NODE_LEN])
    }
}

/// Encodes a record holding `nodes` (by increasing depth, each one of
/// `present`'s) and, with its leaf, the block's bytes.
fn encode(present: u64, nodes: impl Iterator<Item = Node>, data: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        2 + present.count_ones() as usize * NODE_LEN + data.map_or(0, <[u8]>::len),
    );
    let has_data = data.is_some() && present & 1 == 1;
    crate::varint::write(&mut out, present << 1 | u64::from(has_data));
    for node in nodes {
        let bytes = node.encode();
        if flat::depth(node.index) == 0 && has_data {
            out.extend_from_slice(&bytes[..HASH_LEN]);
        } else {
            out.extend_from_slice(&bytes);
        }
    }
    if let (true, Some(d)) = (has_data, data) {
        out.extend_from_slice(d);
    }
    out
}

/// The node of `depth` whose last block is `seq`.
fn index_ending_at(seq: u64, depth: u32) -> u64 {
    flat::index(depth, seq >> depth)
}

/// The `present` mask of a record holding every node block `seq` can hold:
/// its leaf and the parents it completes.
fn slots(seq: u64) -> u64 {
    (1u64 << (seq.trailing_ones() + 1).min(63)) - 1
}

/// Where node `index` is kept: the seq of its last block, and its depth.
fn position(index: u64) -> (u64, u32) {
    (flat::blocks(index).1 - 1, flat::depth(index))
}

/// Key of block `seq`'s record in [`Table::Blocks`], for tools that inspect
/// a store (or, in tests and simulations, damage one on purpose).
pub fn block_key(feed: &FeedId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&feed.0[..16]);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn corrupt(feed: &FeedId, seq: u64, what: &'static str) -> FeedError {
    FeedError::Corrupt {
        feed: *feed,
        seq,
        what,
    }
}

fn read_record<'t, S: Store>(
    txn: &'t Txn<'_, S>,
    feed: &FeedId,
    seq: u64,
) -> Result<Option<Record<'t>>, FeedError> {
    match txn.get(Table::Blocks, &block_key(feed, seq))? {
        None => Ok(None),
        Some(bytes) => Record::parse(feed, seq, bytes).map(Some),
    }
}

/// Reads block `seq`'s leaf and, if held, its bytes.
pub(super) fn read_leaf<'t, S: Store>(
    txn: &'t Txn<'_, S>,
    feed: &FeedId,
    seq: u64,
) -> Result<Option<Leaf<'t>>, FeedError> {
    let Some(record) = read_record(txn, feed, seq)? else {
        return Ok(None);
    };
    Ok(record.node(0).map(|node| Leaf {
        node,
        data: record.data,
    }))
}

/// Reads any tree node.
pub(super) fn read_node<S: Store>(
    txn: &Txn<'_, S>,
    feed: &FeedId,
    index: u64,
) -> Result<Option<Node>, FeedError> {
    let (seq, depth) = position(index);
    Ok(read_record(txn, feed, seq)?.and_then(|r| r.node(depth)))
}

/// Writes `nodes` (verified, or just created by an append; sorted here by
/// where they are kept) and the bytes of
/// the blocks `data` returns, merged into what the records already hold:
/// held bytes are never replaced by a bare hash, and a record that would not
/// change is not rewritten.
///
/// Records of blocks from `fresh_from` on are known not to exist yet (an
/// append past the end), which spares reading them.
pub(super) fn write_nodes<'d, S: Store>(
    txn: &mut Txn<'_, S>,
    feed: &FeedId,
    nodes: &mut [Node],
    data: impl Fn(u64) -> Option<&'d [u8]>,
    fresh_from: u64,
) -> Result<(), FeedError> {
    if !nodes.is_sorted_by_key(|n| position(n.index)) {
        nodes.sort_unstable_by_key(|n| position(n.index));
    }
    for group in nodes.chunk_by(|a, b| position(a.index).0 == position(b.index).0) {
        let seq = position(group[0].index).0;
        let new_present = group
            .iter()
            .fold(0u64, |m, n| m | 1 << flat::depth(n.index));
        let new_leaf = group.iter().find(|n| flat::depth(n.index) == 0);
        let bytes = new_leaf.and_then(|_| data(seq));
        // A record written whole (every node this block can hold, and its
        // bytes) owes nothing to what was there: the nodes are verified and
        // the bytes are the leaf's. Downloads write most blocks so, and skip
        // reading them first.
        let whole = bytes.is_some() && new_present == slots(seq);
        let existing = if seq < fresh_from && !whole {
            read_record(txn, feed, seq)?
        } else {
            None
        };
        let (old_present, kept_data) = match &existing {
            Some(old) => {
                let leaf_kept = match (old.node(0), new_leaf) {
                    (Some(a), Some(b)) => a == *b,
                    (Some(_), None) => true,
                    _ => false,
                };
                (old.present, if leaf_kept { old.data } else { None })
            }
            None => (0, None),
        };
        let present = old_present | new_present;
        if existing.is_some() && present == old_present && (bytes.is_none() || kept_data.is_some())
        {
            continue;
        }
        let data = bytes.or(kept_data);
        let mut nodes: SmallVec<[Node; 4]> = SmallVec::new();
        for depth in bits(present) {
            // A node may be listed twice (a root both learned and kept).
            let node = group
                .iter()
                .find(|n| flat::depth(n.index) == depth)
                .copied()
                .or_else(|| existing.as_ref().and_then(|old| old.node(depth)))
                .ok_or_else(|| corrupt(feed, seq, "block record"))?;
            nodes.push(node);
        }
        let record = encode(present, nodes.into_iter(), data);
        txn.put_owned(Table::Blocks, &block_key(feed, seq), record);
    }
    Ok(())
}

/// Drops block `seq`'s bytes but keeps its nodes, so the feed stays
/// provable. Returns whether bytes were dropped.
pub(super) fn drop_data<S: Store>(
    txn: &mut Txn<'_, S>,
    feed: &FeedId,
    seq: u64,
) -> Result<bool, FeedError> {
    let Some(record) = read_record(txn, feed, seq)? else {
        return Ok(false);
    };
    match record.data {
        Some(d) if !d.is_empty() => {}
        _ => return Ok(false),
    }
    let nodes: SmallVec<[Node; 4]> = bits(record.present)
        .map(|depth| record.node(depth))
        .collect::<Option<_>>()
        .ok_or_else(|| corrupt(feed, seq, "block record"))?;
    let kept = encode(record.present, nodes.into_iter(), None);
    txn.put_owned(Table::Blocks, &block_key(feed, seq), kept);
    Ok(true)
}

/// The positions of the set bits of `mask`, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        let bit = (mask != 0).then(|| mask.trailing_zeros())?;
        mask &= mask - 1;
        Some(bit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn feed() -> FeedId {
        FeedId([7; 32])
    }

    fn leaf(seq: u64, data: &[u8]) -> Node {
        Node::leaf(seq, data)
    }

    #[test]
    fn a_block_and_the_parents_it_completes_are_one_record() {
        let store = MemStore::new();
        let mut txn = Txn::begin(&store).unwrap();
        let (a, b) = (leaf(0, b"a"), leaf(1, b"b"));
        let p = Node::parent(&a, &b);
        let blocks: [&[u8]; 2] = [b"a", b"b"];
        write_nodes(
            &mut txn,
            &feed(),
            &mut [a, b, p],
            |s| Some(blocks[s as usize]),
            0,
        )
        .unwrap();
        txn.commit().unwrap();
        assert_eq!(store.entry_count(), 2);
        let txn = Txn::begin(&store).unwrap();
        assert_eq!(read_node(&txn, &feed(), 1).unwrap(), Some(p));
        let l = read_leaf(&txn, &feed(), 1).unwrap().unwrap();
        assert_eq!((l.node, l.data), (b, Some(&b"b"[..])));
    }

    #[test]
    fn merging_keeps_held_bytes_and_nodes() {
        let store = MemStore::new();
        let (a, b) = (leaf(0, b"a"), leaf(1, b"b"));
        let p = Node::parent(&a, &b);
        let mut txn = Txn::begin(&store).unwrap();
        // First the parent alone (learned from a proof of another block)...
        write_nodes(&mut txn, &feed(), &mut [p], |_| None, u64::MAX).unwrap();
        // ...then block 1's bytes, then its bare hash again.
        write_nodes(&mut txn, &feed(), &mut [b], |_| Some(&b"b"[..]), u64::MAX).unwrap();
        write_nodes(&mut txn, &feed(), &mut [b], |_| None, u64::MAX).unwrap();
        let l = read_leaf(&txn, &feed(), 1).unwrap().unwrap();
        assert_eq!(l.data, Some(&b"b"[..]));
        assert_eq!(read_node(&txn, &feed(), 1).unwrap(), Some(p));
        assert!(drop_data(&mut txn, &feed(), 1).unwrap());
        assert!(!drop_data(&mut txn, &feed(), 1).unwrap());
        let l = read_leaf(&txn, &feed(), 1).unwrap().unwrap();
        assert_eq!((l.node, l.data), (b, None));
        assert_eq!(read_node(&txn, &feed(), 1).unwrap(), Some(p));
        assert_eq!(read_leaf(&txn, &feed(), 0).unwrap().map(|l| l.node), None);
    }

    #[test]
    fn a_whole_record_replaces_a_partial_one() {
        let store = MemStore::new();
        let (a, b) = (leaf(0, b"a"), leaf(1, b"b"));
        let p = Node::parent(&a, &b);
        let mut txn = Txn::begin(&store).unwrap();
        // Block 1's hash alone, then block 1 with everything it can hold.
        write_nodes(&mut txn, &feed(), &mut [b], |_| None, u64::MAX).unwrap();
        write_nodes(
            &mut txn,
            &feed(),
            &mut [b, p],
            |_| Some(&b"b"[..]),
            u64::MAX,
        )
        .unwrap();
        let l = read_leaf(&txn, &feed(), 1).unwrap().unwrap();
        assert_eq!((l.node, l.data), (b, Some(&b"b"[..])));
        assert_eq!(read_node(&txn, &feed(), 1).unwrap(), Some(p));
    }

    #[test]
    fn a_record_claiming_foreign_parents_is_corrupt() {
        let store = MemStore::new();
        let mut txn = Txn::begin(&store).unwrap();
        // Block 0 completes no parent; bit 1 cannot be set in its record.
        let mut rec = vec![0b110];
        rec.extend_from_slice(&[0; 2 * NODE_LEN]);
        txn.put_owned(Table::Blocks, &block_key(&feed(), 0), rec);
        assert!(matches!(
            read_node(&txn, &feed(), 0),
            Err(FeedError::Corrupt { seq: 0, .. })
        ));
        txn.put_owned(Table::Blocks, &block_key(&feed(), 2), vec![0x80; 11]);
        assert!(read_leaf(&txn, &feed(), 2).is_err());
    }
}
