//! Flat-tree index arithmetic.
//!
//! A binary Merkle tree laid out in one index space, as hypercore does: leaves
//! (blocks) sit at even indices (`2 * seq`), parents at odd ones, and a node's
//! depth is the number of trailing one bits of its index.
//!
//! ```text
//!        3
//!    1       5
//!  0   2   4   6
//! ```

/// Longest tree (in blocks) the numbering supports: every node index and
/// block bound then fits in a `u64`. Heads claiming more are refused.
pub const MAX_LENGTH: u64 = 1 << 62;

/// The depth of node `i`: 0 for a leaf.
pub fn depth(i: u64) -> u32 {
    (!i).trailing_zeros()
}

/// The position of node `i` among the nodes of its depth, from the left.
pub fn offset(i: u64) -> u64 {
    i.checked_shr(depth(i) + 1).unwrap_or(0)
}

/// The index of the node at `depth` and `offset`.
pub fn index(depth: u32, offset: u64) -> u64 {
    // Wrapping shifts keep this total; callers stay below MAX_LENGTH, where
    // nothing wraps.
    offset.wrapping_shl(depth + 1) | (1u64.wrapping_shl(depth).wrapping_sub(1))
}

/// The index of leaf (block) `seq`.
pub fn leaf(seq: u64) -> u64 {
    seq * 2
}

/// The parent of node `i`.
pub fn parent(i: u64) -> u64 {
    index(depth(i) + 1, offset(i) >> 1)
}

/// The sibling of node `i`.
pub fn sibling(i: u64) -> u64 {
    index(depth(i), offset(i) ^ 1)
}

/// The two children of node `i`, or `None` for a leaf.
pub fn children(i: u64) -> Option<(u64, u64)> {
    match depth(i) {
        0 => None,
        d => {
            let half = 1u64 << (d - 1);
            Some((i - half, i + half))
        }
    }
}

/// The blocks node `i` covers, as the half-open range `[first, end)`.
pub fn blocks(i: u64) -> (u64, u64) {
    let d = depth(i);
    let first = offset(i).wrapping_shl(d);
    (first, first.saturating_add(1u64.wrapping_shl(d)))
}

/// The full roots of a tree of `length` blocks, left to right.
///
/// A tree of `length` blocks is a forest of perfect subtrees, one per set bit
/// of `length`, largest first.
pub fn full_roots(length: u64) -> Vec<u64> {
    let mut roots = Vec::with_capacity(length.count_ones() as usize);
    let mut first = 0u64;
    let mut rest = length;
    while rest > 0 {
        let d = 63 - rest.leading_zeros();
        let span = 1u64 << d;
        roots.push(index(d, first >> d));
        first += span;
        rest -= span;
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tree_shape() {
        assert_eq!(depth(0), 0);
        assert_eq!(depth(1), 1);
        assert_eq!(depth(3), 2);
        assert_eq!(depth(7), 3);
        assert_eq!(parent(0), 1);
        assert_eq!(parent(2), 1);
        assert_eq!(parent(1), 3);
        assert_eq!(parent(5), 3);
        assert_eq!(sibling(1), 5);
        assert_eq!(sibling(4), 6);
        assert_eq!(children(3), Some((1, 5)));
        assert_eq!(children(1), Some((0, 2)));
        assert_eq!(children(6), None);
        assert_eq!(blocks(3), (0, 4));
        assert_eq!(blocks(11), (4, 8));
        assert_eq!(blocks(8), (4, 5));
    }

    #[test]
    fn roots_tile_the_tree() {
        assert_eq!(full_roots(0), Vec::<u64>::new());
        assert_eq!(full_roots(1), vec![0]);
        assert_eq!(full_roots(3), vec![1, 4]);
        assert_eq!(full_roots(4), vec![3]);
        assert_eq!(full_roots(7), vec![3, 9, 12]);
        for len in 0..300u64 {
            let mut next = 0;
            for r in full_roots(len) {
                let (a, b) = blocks(r);
                assert_eq!(a, next);
                next = b;
            }
            assert_eq!(next, len);
        }
    }

    #[test]
    fn parent_and_children_agree() {
        for i in 0..1000u64 {
            let p = parent(i);
            let (l, r) = children(p).unwrap();
            assert!(l == i || r == i);
            assert_eq!(sibling(i), if l == i { r } else { l });
        }
    }
}
