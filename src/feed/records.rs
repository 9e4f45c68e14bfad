//! How a feed lies in the store.
//!
//! A block's record holds its leaf node and then its bytes: `hash (32) |
//! size (8, LE) | data`. The bytes are present exactly when the record is
//! longer than 40 bytes or the block is empty; a record of just the leaf node
//! keeps the tree provable after the bytes were cleared or pruned, or when
//! only the hash was ever learned. Parent nodes live in [`Table::Nodes`].
//! One put per block and about one per parent is the whole cost of an append.

use crate::merkle::{flat, Node, NODE_LEN};
use crate::store::{keys, Store, Table, Txn};

use super::{FeedError, FeedId};

/// A block record as read from the store.
pub(super) struct Leaf<'a> {
    pub node: Node,
    /// `None` when only the hash is held.
    pub data: Option<&'a [u8]>,
}

fn corrupt(feed: &FeedId, index: u64, what: &'static str) -> FeedError {
    FeedError::Corrupt {
        feed: *feed,
        seq: flat::blocks(index).0,
        what,
    }
}

/// Reads block `seq`'s record.
pub(super) fn read_leaf<'t, S: Store>(
    txn: &'t Txn<'_, S>,
    feed: &FeedId,
    seq: u64,
) -> Result<Option<Leaf<'t>>, FeedError> {
    let index = flat::leaf(seq);
    let Some(rec) = txn.get(Table::Blocks, &keys::feed_seq(feed, seq))? else {
        return Ok(None);
    };
    let node = rec
        .get(..NODE_LEN)
        .and_then(|b| Node::decode(index, b))
        .ok_or(corrupt(feed, index, "block record"))?;
    let rest = &rec[NODE_LEN..];
    let data = match rest.len() as u64 {
        n if n == node.size => Some(rest),
        0 => None,
        _ => return Err(corrupt(feed, index, "block record")),
    };
    Ok(Some(Leaf { node, data }))
}

/// Reads any tree node.
pub(super) fn read_node<S: Store>(
    txn: &Txn<'_, S>,
    feed: &FeedId,
    index: u64,
) -> Result<Option<Node>, FeedError> {
    if flat::depth(index) == 0 {
        return Ok(read_leaf(txn, feed, index / 2)?.map(|l| l.node));
    }
    match txn.get(Table::Nodes, &keys::feed_seq(feed, index))? {
        None => Ok(None),
        Some(bytes) => {
            Node::decode(index, bytes)
                .map(Some)
                .ok_or(corrupt(feed, index, "tree node"))
        }
    }
}

/// Writes a leaf together with its block bytes.
pub(super) fn write_block<S: Store>(txn: &mut Txn<'_, S>, feed: &FeedId, node: &Node, data: &[u8]) {
    let mut rec = Vec::with_capacity(NODE_LEN + data.len());
    rec.extend_from_slice(&node.encode());
    rec.extend_from_slice(data);
    txn.put_owned(Table::Blocks, &keys::feed_seq(feed, node.index / 2), rec);
}

/// Writes a node learned from a proof. A leaf is written only where no
/// record exists, so held bytes are never replaced by a bare hash; parents
/// are immutable once verified, so rewriting one is harmless.
pub(super) fn write_learned<S: Store>(
    txn: &mut Txn<'_, S>,
    feed: &FeedId,
    node: &Node,
) -> Result<(), FeedError> {
    if flat::depth(node.index) == 0 {
        let key = keys::feed_seq(feed, node.index / 2);
        if txn.get(Table::Blocks, &key)?.is_none() {
            txn.put_owned(Table::Blocks, &key, node.encode().to_vec());
        }
    } else {
        txn.put_owned(
            Table::Nodes,
            &keys::feed_seq(feed, node.index),
            node.encode().to_vec(),
        );
    }
    Ok(())
}

/// Drops block `seq`'s bytes but keeps its leaf node, so the feed stays
/// provable. Returns whether bytes were dropped.
pub(super) fn drop_data<S: Store>(
    txn: &mut Txn<'_, S>,
    feed: &FeedId,
    seq: u64,
) -> Result<bool, FeedError> {
    let node = match read_leaf(txn, feed, seq)? {
        Some(Leaf {
            node,
            data: Some(d),
        }) if !d.is_empty() => node,
        _ => return Ok(false),
    };
    txn.put_owned(
        Table::Blocks,
        &keys::feed_seq(feed, seq),
        node.encode().to_vec(),
    );
    Ok(true)
}
