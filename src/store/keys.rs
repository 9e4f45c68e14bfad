//! Key layouts of the tables. Big-endian integers keep numeric order.

use crate::feed::FeedId;

/// Key of a per-feed, per-number record: feed id then a big-endian `u64`.
pub type FeedSeqKey = [u8; 40];

/// `(feed, n)` as a key: blocks and inbox entries by seq, nodes by index.
pub fn feed_seq(feed: &FeedId, n: u64) -> FeedSeqKey {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&feed.0);
    k[32..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Splits a [`feed_seq`] key; `None` if it is not one.
pub fn split_feed_seq(key: &[u8]) -> Option<(FeedId, u64)> {
    if key.len() != 40 {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&key[..32]);
    let n = u64::from_be_bytes(key[32..].try_into().ok()?);
    Some((FeedId(id), n))
}

/// Meta key of the node's identity secret.
pub const META_IDENTITY: &[u8] = b"identity";
/// Meta key of the store format version.
pub const META_FORMAT: &[u8] = b"format";
