//! The Merkle tree over a feed's blocks: hashing, roots and proofs.
//!
//! Every hash is BLAKE3 with a one-byte domain tag, and every node binds the
//! number of bytes under it, so a leaf can never pass for a parent, a parent
//! never for the tree hash, and no two trees of different byte length share a
//! node.

pub mod flat;
mod proof;

pub use proof::{fits, prove, prove_showing, verify, ProofError, RangeProof, Verified};

use std::fmt;

const LEAF_TAG: u8 = 0;
const PARENT_TAG: u8 = 1;
const ROOT_TAG: u8 = 2;
/// Blocks up to this size are hashed from one stack buffer.
const SMALL_LEAF: usize = 1024;
/// Blocks up to this size fit, with their tag and size, in two BLAKE3
/// blocks: the common case gets a buffer that small.
const TINY_LEAF: usize = 128 - 9;

/// A leaf's hash computed from one stack buffer of `N` bytes, which must
/// hold the tag, the size and `data`.
fn leaf_in_buffer<const N: usize>(data: &[u8]) -> blake3::Hash {
    let mut buf = [0u8; N];
    let end = 9 + data.len();
    buf[0] = LEAF_TAG;
    buf[1..9].copy_from_slice(&(data.len() as u64).to_le_bytes());
    buf[9..end].copy_from_slice(data);
    blake3::hash(&buf[..end])
}

/// A 32-byte BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", hex::encode(&self.0[..6]))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A node of the tree: its flat-tree index, its hash, and the number of block
/// bytes beneath it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    /// Flat-tree index (see [`flat`]).
    pub index: u64,
    /// The node's hash.
    pub hash: Hash,
    /// Total byte length of the blocks this node covers.
    pub size: u64,
}

/// Encoded size of a node's hash and size (the index travels implicitly).
pub const NODE_LEN: usize = 40;

impl Node {
    /// The leaf node of block `seq` holding `data`.
    pub fn leaf(seq: u64, data: &[u8]) -> Node {
        let size = data.len() as u64;
        // One contiguous hash call is markedly cheaper than three updates
        // for the small blocks a queue mostly carries; a buffer sized for
        // the commonest ones keeps zeroing it cheap too.
        let hash = if data.len() <= TINY_LEAF {
            leaf_in_buffer::<{ 9 + TINY_LEAF }>(data)
        } else if data.len() <= SMALL_LEAF {
            leaf_in_buffer::<{ 9 + SMALL_LEAF }>(data)
        } else {
            let mut h = blake3::Hasher::new();
            h.update(&[LEAF_TAG]);
            h.update(&size.to_le_bytes());
            h.update(data);
            h.finalize()
        };
        Node {
            index: flat::leaf(seq),
            hash: Hash(*hash.as_bytes()),
            size,
        }
    }

    /// The parent of two sibling nodes, `left` before `right`.
    pub fn parent(left: &Node, right: &Node) -> Node {
        // A proof's sibling sizes come from the peer: a sum past 2^64 must
        // not panic. Wrapping cannot forge a parent: for a given `left`,
        // each `right.size` gives a different sum, so a lie still changes
        // the hash.
        let size = left.size.wrapping_add(right.size);
        let mut buf = [0u8; 73];
        buf[0] = PARENT_TAG;
        buf[1..9].copy_from_slice(&size.to_le_bytes());
        buf[9..41].copy_from_slice(&left.hash.0);
        buf[41..].copy_from_slice(&right.hash.0);
        Node {
            index: flat::parent(left.index),
            hash: Hash(*blake3::hash(&buf).as_bytes()),
            size,
        }
    }

    /// Encodes hash and size (40 bytes); the index is the caller's to track.
    pub fn encode(&self) -> [u8; NODE_LEN] {
        let mut out = [0u8; NODE_LEN];
        out[..32].copy_from_slice(&self.hash.0);
        out[32..].copy_from_slice(&self.size.to_le_bytes());
        out
    }

    /// Decodes a node at `index` from [`Node::encode`]'s bytes.
    pub fn decode(index: u64, bytes: &[u8]) -> Option<Node> {
        if bytes.len() != NODE_LEN {
            return None;
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[..32]);
        let size = u64::from_le_bytes(bytes[32..].try_into().ok()?);
        Some(Node {
            index,
            hash: Hash(hash),
            size,
        })
    }
}

/// The hash of a whole tree: its full roots, in order, with their positions.
///
/// This is what a feed's author signs (together with the feed id and length).
pub fn tree_hash(roots: &[Node]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[ROOT_TAG]);
    for r in roots {
        h.update(&r.hash.0);
        h.update(&r.index.to_le_bytes());
        h.update(&r.size.to_le_bytes());
    }
    Hash(*h.finalize().as_bytes())
}

/// Appends leaves to a tree held as its full roots, returning every node the
/// append creates (leaves and the parents that become complete), in index
/// order of creation.
///
/// `roots` must be the full roots of a tree of `length` blocks; on return it
/// holds the roots of the longer tree.
pub fn append_leaves(
    roots: &mut Vec<Node>,
    length: u64,
    blocks: &[&[u8]],
    created: &mut Vec<Node>,
) {
    for (i, data) in blocks.iter().enumerate() {
        let mut node = Node::leaf(length + i as u64, data);
        created.push(node);
        // Merge while the newest root has an equal-depth left sibling: that is
        // exactly when a new parent becomes complete.
        while let Some(last) = roots.last() {
            if flat::depth(last.index) != flat::depth(node.index)
                || flat::sibling(node.index) != last.index
            {
                break;
            }
            let left = roots.pop().unwrap_or(node);
            node = Node::parent(&left, &node);
            created.push(node);
        }
        roots.push(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_builds_the_full_roots() {
        let data: Vec<Vec<u8>> = (0..13u8).map(|i| vec![i; i as usize]).collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let mut roots = Vec::new();
        let mut created = Vec::new();
        append_leaves(&mut roots, 0, &refs[..5], &mut created);
        append_leaves(&mut roots, 5, &refs[5..], &mut created);
        let idx: Vec<u64> = roots.iter().map(|n| n.index).collect();
        assert_eq!(idx, flat::full_roots(13));
        assert_eq!(
            roots.iter().map(|n| n.size).sum::<u64>(),
            (0..13u64).sum::<u64>()
        );
        // 13 leaves and 13 - popcount(13) parents.
        assert_eq!(created.len(), 13 + 13 - 3);
    }

    #[test]
    fn domains_are_separated() {
        let leaf = Node::leaf(0, &[]);
        let p = Node::parent(&leaf, &Node::leaf(1, &[]));
        assert_ne!(leaf.hash, p.hash);
        assert_ne!(tree_hash(&[]), leaf.hash);
        // Same bytes, different length claim → different leaf.
        assert_ne!(Node::leaf(0, b"ab").hash, Node::leaf(0, b"a").hash);
    }
}
