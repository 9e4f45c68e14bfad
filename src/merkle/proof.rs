//! Range and upgrade proofs.
//!
//! One proof type covers both jobs. A [`RangeProof`] shows that blocks
//! `[start, end)` belong to the tree of `length` blocks, assuming the verifier
//! already holds the full roots of a tree of `base` blocks (its last verified
//! length; 0 if it has none). With an empty range it is an upgrade proof from
//! `base` to `length`: the verifier recomputes the new roots from its old ones,
//! which proves the new tree extends the old.
//!
//! Prover and verifier walk the same tree in the same order, so the proof
//! carries only hashes and sizes, never indices: each node is one the verifier
//! could neither compute from the blocks nor find among its own roots.

use super::{flat, Node};

/// A Merkle proof for a contiguous range of blocks, and/or an upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeProof {
    /// First block proven.
    pub start: u64,
    /// One past the last block proven (`start == end` proves no block).
    pub end: u64,
    /// The tree length the proof reaches: that of the signed head it ends in.
    pub length: u64,
    /// The verifier is assumed to hold the full roots of this length.
    pub base: u64,
    /// A length between `base` and `length` whose full roots the proof
    /// shows as well (carried or computed, never hidden inside a larger
    /// carried node): a verifier that has meanwhile verified this length can
    /// compare its roots with the new tree. Equal to `base` when no more is
    /// shown, and always so with a `trusted` node.
    pub shown: u64,
    /// A node the verifier already holds that covers the range: the walk
    /// starts there instead of at the roots of `length`, so the proof stops
    /// where the verifier's own tree takes over (and needs no signed head).
    pub trusted: Option<u64>,
    /// Sibling nodes, in walk order.
    pub nodes: Vec<Node>,
}

/// What a verified proof established.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// The full roots of the tree of `length` blocks; hash them with
    /// [`super::tree_hash`] and compare against a signed head.
    pub roots: Vec<Node>,
    /// Every node the verifier learned (leaves, parents and proof nodes),
    /// ready to be stored so the verifier can later prove to others.
    pub learned: Vec<Node>,
}

/// Why a proof was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The proof's range does not fit its length, or its base exceeds it.
    #[error("proof range {start}..{end} against base {base} does not fit length {length}")]
    Range {
        /// Claimed first block.
        start: u64,
        /// Claimed end.
        end: u64,
        /// Claimed length.
        length: u64,
        /// Claimed base.
        base: u64,
    },
    /// The number of blocks given does not match the range.
    #[error("proof covers {expected} blocks but {got} were supplied")]
    BlockCount {
        /// Blocks in the range.
        expected: u64,
        /// Blocks supplied.
        got: usize,
    },
    /// The proof ran out of nodes.
    #[error("proof is missing nodes")]
    Truncated,
    /// The proof has nodes left over after the walk.
    #[error("proof has {0} unused nodes")]
    Excess(usize),
    /// The verifier lacks one of its own base roots.
    #[error("verifier does not hold its base root node {0}")]
    MissingBase(u64),
    /// A recomputed node disagrees with one the verifier already trusted.
    #[error("node {0} does not match the verified tree")]
    Mismatch(u64),
}

/// Builds a proof for blocks `[start, end)` of the tree of `length` blocks,
/// for a verifier holding the roots of `base` blocks, or holding node
/// `trusted` (see [`RangeProof::trusted`]).
///
/// `node` fetches a stored node by flat-tree index. The caller guarantees
/// `start <= end <= length`, `base <= length`, and that `trusted` covers the
/// range within `length` ([`fits`]).
pub fn prove<E>(
    start: u64,
    end: u64,
    length: u64,
    base: u64,
    trusted: Option<u64>,
    node: impl FnMut(u64) -> Result<Node, E>,
) -> Result<RangeProof, E> {
    prove_walk(Walk::new(start, end, base, base, trusted), length, node)
}

/// Like [`prove`] without a trusted node, also showing the full roots of
/// `shown` (see [`RangeProof::shown`]). The caller guarantees
/// `base <= shown <= length`.
pub fn prove_showing<E>(
    start: u64,
    end: u64,
    length: u64,
    base: u64,
    shown: u64,
    node: impl FnMut(u64) -> Result<Node, E>,
) -> Result<RangeProof, E> {
    prove_walk(Walk::new(start, end, base, shown, None), length, node)
}

fn prove_walk<E>(
    walk: Walk,
    length: u64,
    mut node: impl FnMut(u64) -> Result<Node, E>,
) -> Result<RangeProof, E> {
    let mut nodes = Vec::new();
    for top in walk.tops(length) {
        walk.prove(top, &mut node, &mut nodes)?;
    }
    Ok(RangeProof {
        start: walk.start,
        end: walk.end,
        length,
        base: walk.base,
        shown: walk.shown,
        trusted: walk.top,
        nodes,
    })
}

/// Whether a proof's shape is consistent: the range within the length, the
/// base no longer than it, and a trusted node, if any, covering a non-empty
/// range inside the tree. (A proof's `shown` length must also lie between
/// its base and its length, and equal the base with a trusted node: see
/// [`verify`].)
pub fn fits(start: u64, end: u64, length: u64, base: u64, trusted: Option<u64>) -> bool {
    let shape = start <= end && end <= length && base <= length && length <= flat::MAX_LENGTH;
    match trusted {
        None => shape,
        Some(t) => {
            let (lo, hi) = flat::blocks(t);
            shape
                && start < end
                && lo <= start
                && end <= hi
                && hi <= length
                && t < 2 * flat::MAX_LENGTH
        }
    }
}

/// Checks `proof` against the blocks it covers (`blocks[i]` is block
/// `proof.start + i`), using `trusted` to look up the verifier's base roots.
///
/// On success, returns the recomputed roots of `proof.length`; the caller
/// must still compare their [`super::tree_hash`] with a signed head.
pub fn verify<B: AsRef<[u8]>>(
    proof: &RangeProof,
    blocks: &[B],
    mut trusted: impl FnMut(u64) -> Option<Node>,
) -> Result<Verified, ProofError> {
    let RangeProof {
        start,
        end,
        length,
        base,
        shown,
        trusted: top,
        ..
    } = *proof;
    let shown_fits = base <= shown && shown <= length && (top.is_none() || shown == base);
    if !fits(start, end, length, base, top) || !shown_fits {
        return Err(ProofError::Range {
            start,
            end,
            length,
            base,
        });
    }
    if (end - start) != blocks.len() as u64 {
        return Err(ProofError::BlockCount {
            expected: end - start,
            got: blocks.len(),
        });
    }
    let walk = Walk::new(start, end, base, shown, top);
    let mut state = VerifyState {
        blocks,
        proof: proof.nodes.iter(),
        trusted: &mut trusted,
        out: Verified {
            roots: Vec::new(),
            learned: Vec::with_capacity(2 * blocks.len() + proof.nodes.len()),
        },
    };
    for root in walk.tops(length) {
        let n = walk.verify(root, &mut state)?;
        state.out.roots.push(n);
    }
    let left = state.proof.len();
    if left > 0 {
        return Err(ProofError::Excess(left));
    }
    Ok(state.out)
}

/// The shared walk: which nodes a proof holds is decided identically on both
/// sides.
struct Walk {
    start: u64,
    end: u64,
    base: u64,
    base_roots: Vec<u64>,
    shown: u64,
    top: Option<u64>,
}

enum Step {
    /// Descend into the children.
    Split,
    /// The verifier holds this node as a base root.
    Trusted,
    /// The proof carries this node.
    Carried,
}

impl Walk {
    fn new(start: u64, end: u64, base: u64, shown: u64, top: Option<u64>) -> Self {
        match top {
            // Below a trusted node the verifier's base plays no part; the
            // trusted node itself is what the walk must reproduce.
            Some(t) => Walk {
                start,
                end,
                base: 0,
                base_roots: vec![t],
                shown: 0,
                top,
            },
            None => Walk {
                start,
                end,
                base,
                base_roots: flat::full_roots(base),
                shown,
                top,
            },
        }
    }

    /// Where the walk starts: the trusted node, or the full roots.
    fn tops(&self, length: u64) -> Vec<u64> {
        match self.top {
            Some(t) => vec![t],
            None => flat::full_roots(length),
        }
    }

    fn is_base_root(&self, i: u64) -> bool {
        self.base_roots.binary_search(&i).is_ok()
    }

    fn step(&self, i: u64) -> Step {
        let (lo, hi) = flat::blocks(i);
        let touches_range = self.start < self.end && lo < self.end && self.start < hi;
        if touches_range {
            Step::Split
        } else if self.is_base_root(i) {
            Step::Trusted
        } else if lo < self.base && self.base < hi {
            // Straddles the verifier's old length: its left part is made of
            // base roots the verifier holds.
            Step::Split
        } else if lo < self.shown && self.shown < hi {
            // Straddles the length to show: carried whole, it would hide
            // the roots of that length inside it.
            Step::Split
        } else {
            Step::Carried
        }
    }

    fn prove<E>(
        &self,
        i: u64,
        node: &mut impl FnMut(u64) -> Result<Node, E>,
        out: &mut Vec<Node>,
    ) -> Result<(), E> {
        match self.step(i) {
            Step::Split => {
                if let Some((l, r)) = flat::children(i) {
                    self.prove(l, node, out)?;
                    self.prove(r, node, out)?;
                }
                Ok(())
            }
            Step::Trusted => Ok(()),
            Step::Carried => {
                out.push(node(i)?);
                Ok(())
            }
        }
    }

    fn verify<B: AsRef<[u8]>, T: FnMut(u64) -> Option<Node>>(
        &self,
        i: u64,
        st: &mut VerifyState<'_, B, T>,
    ) -> Result<Node, ProofError> {
        let node = match self.step(i) {
            Step::Split => {
                let n = match flat::children(i) {
                    None => {
                        let seq = i / 2;
                        let data = st.blocks[(seq - self.start) as usize].as_ref();
                        Node::leaf(seq, data)
                    }
                    Some((l, r)) => {
                        let left = self.verify(l, st)?;
                        let right = self.verify(r, st)?;
                        Node::parent(&left, &right)
                    }
                };
                if self.is_base_root(i) {
                    let t = (st.trusted)(i).ok_or(ProofError::MissingBase(i))?;
                    if t != n {
                        return Err(ProofError::Mismatch(i));
                    }
                    if flat::depth(i) > 0 {
                        // A held node: nothing new to learn about it.
                        return Ok(n);
                    }
                }
                n
            }
            Step::Trusted => return (st.trusted)(i).ok_or(ProofError::MissingBase(i)),
            Step::Carried => {
                let p = st.proof.next().ok_or(ProofError::Truncated)?;
                Node { index: i, ..*p }
            }
        };
        st.out.learned.push(node);
        Ok(node)
    }
}

struct VerifyState<'a, B, T> {
    blocks: &'a [B],
    proof: std::slice::Iter<'a, Node>,
    trusted: &'a mut T,
    out: Verified,
}

#[cfg(test)]
mod tests {
    use super::super::{append_leaves, tree_hash};
    use super::*;
    use std::collections::HashMap;

    fn tree(n: u64) -> (Vec<Vec<u8>>, HashMap<u64, Node>, Vec<Node>) {
        let data: Vec<Vec<u8>> = (0..n).map(|i| format!("block {i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let mut roots = Vec::new();
        let mut created = Vec::new();
        append_leaves(&mut roots, 0, &refs, &mut created);
        let map = created.into_iter().map(|n| (n.index, n)).collect();
        (data, map, roots)
    }

    fn roots_of(map: &HashMap<u64, Node>, len: u64) -> Vec<Node> {
        flat::full_roots(len).into_iter().map(|i| map[&i]).collect()
    }

    #[test]
    fn every_range_of_small_trees_verifies() {
        for len in 1..=17u64 {
            let (data, map, roots) = tree(len);
            for base in 0..=len {
                for start in 0..=len {
                    for end in start..=len {
                        let p =
                            prove(start, end, len, base, None, |i| Ok::<_, ()>(map[&i])).unwrap();
                        let base_roots = roots_of(&map, base);
                        let v = verify(&p, &data[start as usize..end as usize], |i| {
                            base_roots.iter().find(|n| n.index == i).copied()
                        })
                        .unwrap_or_else(|e| panic!("len {len} base {base} {start}..{end}: {e}"));
                        assert_eq!(tree_hash(&v.roots), tree_hash(&roots));
                    }
                }
            }
        }
    }

    #[test]
    fn a_proof_showing_a_length_reveals_each_of_its_roots() {
        for len in 1..=17u64 {
            let (data, map, roots) = tree(len);
            for base in 0..=len {
                for shown in base..=len {
                    for (start, end) in [(0, 0), (len / 2, len / 2 + 1), (len - 1, len)] {
                        let p =
                            prove_showing(start, end, len, base, shown, |i| Ok::<_, ()>(map[&i]))
                                .unwrap();
                        let base_roots = roots_of(&map, base);
                        let v = verify(&p, &data[start as usize..end as usize], |i| {
                            base_roots.iter().find(|n| n.index == i).copied()
                        })
                        .unwrap_or_else(|e| panic!("len {len} base {base} shown {shown}: {e}"));
                        assert_eq!(tree_hash(&v.roots), tree_hash(&roots));
                        for r in roots_of(&map, shown) {
                            assert!(
                                base_roots.contains(&r) || v.learned.contains(&r),
                                "len {len} base {base} shown {shown} {start}..{end}: root {} hidden",
                                r.index
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn range_proof_is_logarithmic_and_shared() {
        let (_, map, _) = tree(4096);
        let single = prove(1000, 1001, 4096, 0, None, |i| Ok::<_, ()>(map[&i])).unwrap();
        let range = prove(1000, 2000, 4096, 0, None, |i| Ok::<_, ()>(map[&i])).unwrap();
        assert!(single.nodes.len() <= 12, "{}", single.nodes.len());
        assert!(range.nodes.len() <= 24, "{}", range.nodes.len());
    }

    #[test]
    fn upgrade_needs_old_roots_and_rejects_a_forked_prefix() {
        let (_, map, roots) = tree(100);
        let p = prove(100, 100, 100, 37, None, |i| Ok::<_, ()>(map[&i])).unwrap();
        let base = roots_of(&map, 37);
        let v = verify::<&[u8]>(&p, &[], |i| base.iter().find(|n| n.index == i).copied()).unwrap();
        assert_eq!(tree_hash(&v.roots), tree_hash(&roots));
        // A verifier whose prefix differs (a fork) cannot reach the same roots.
        let (_, other, _) = tree(37);
        let mut forked = roots_of(&other, 37);
        forked[0].hash.0[0] ^= 1;
        let v =
            verify::<&[u8]>(&p, &[], |i| forked.iter().find(|n| n.index == i).copied()).unwrap();
        assert_ne!(tree_hash(&v.roots), tree_hash(&roots));
        assert_eq!(
            verify::<&[u8]>(&p, &[], |_| None),
            Err(ProofError::MissingBase(flat::full_roots(37)[0]))
        );
    }
}

#[cfg(test)]
mod trusted_tests {
    use super::super::append_leaves;
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_proof_below_a_trusted_node_is_short_and_checked_against_it() {
        let data: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let (mut roots, mut created) = (Vec::new(), Vec::new());
        append_leaves(&mut roots, 0, &refs, &mut created);
        let map: HashMap<u64, Node> = created.into_iter().map(|n| (n.index, n)).collect();
        // Every node covering block 300 inside the tree, from the leaf up.
        let mut t = flat::leaf(300);
        while flat::blocks(t).1 <= 1000 {
            let p = prove(300, 301, 1000, 0, Some(t), |i| Ok::<_, ()>(map[&i])).unwrap();
            assert_eq!(
                p.nodes.len() as u32,
                flat::depth(t),
                "one sibling per level below {t}"
            );
            let v = verify(&p, &data[300..301], |i| map.get(&i).copied()).unwrap();
            assert_eq!(v.roots, vec![map[&t]]);
            assert!(v.learned.iter().any(|n| n.index == flat::leaf(300)));
            let mut bad = data[300].clone();
            bad[0] ^= 1;
            assert_eq!(
                verify(&p, &[bad], |i| map.get(&i).copied()),
                Err(ProofError::Mismatch(t))
            );
            t = flat::parent(t);
        }
        // A trusted node that does not cover the range is refused.
        assert!(!fits(300, 301, 1000, 0, Some(flat::leaf(301))));
        assert!(!fits(300, 300, 1000, 0, Some(flat::leaf(300))));
        assert!(!fits(
            990,
            991,
            1000,
            0,
            Some(flat::parent(flat::parent(flat::leaf(1000))))
        ));
    }
}
