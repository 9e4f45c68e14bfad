//! Signed append-only feeds.
//!
//! A [`Feed`] is the in-memory handle of one feed: its descriptor, its
//! latest verified [`SignedHead`] and the full roots of that head, which is
//! all an append or a proof needs besides the stored nodes. Loading one costs
//! a fixed handful of reads, whatever the feed's length.

mod head;
mod id;
mod records;

pub use head::{SignedHead, SIGNED_HEAD_LEN};
pub use id::{FeedDescriptor, FeedId, FeedKind};
pub use records::block_key;

use crate::identity::{PeerId, Sign, VerifyKey};
use crate::merkle::{self, flat, Node, ProofError, RangeProof};
use crate::store::{Store, StoreError, Table, Txn};

/// Why a feed operation failed. Every variant names the feed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Only a feed's author can append to it.
    #[error("feed {feed} is written by {author}, not by this key")]
    NotAuthor {
        /// The feed.
        feed: FeedId,
        /// Its author.
        author: PeerId,
    },
    /// A requested range lies beyond the feed's verified length.
    #[error("feed {feed} has {length} blocks; range {start}..{end} is out of bounds")]
    OutOfRange {
        /// The feed.
        feed: FeedId,
        /// Requested start.
        start: u64,
        /// Requested end.
        end: u64,
        /// Verified length.
        length: u64,
    },
    /// A head's signature does not verify against the feed's author.
    #[error("feed {feed}: head at length {length} has a bad signature")]
    BadSignature {
        /// The feed.
        feed: FeedId,
        /// The head's claimed length.
        length: u64,
    },
    /// A head names another feed.
    #[error("head for feed {got} offered for feed {feed}")]
    WrongFeed {
        /// The feed.
        feed: FeedId,
        /// The feed the head names.
        got: FeedId,
    },
    /// A proof did not check out.
    #[error("feed {feed}: bad proof for blocks {start}..{end}: {source}")]
    Proof {
        /// The feed.
        feed: FeedId,
        /// First block of the proof.
        start: u64,
        /// End of the proof's range.
        end: u64,
        /// What was wrong.
        #[source]
        source: ProofError,
    },
    /// A proof's recomputed tree does not hash to the signed root.
    #[error(
        "feed {feed}: blocks {start}..{end} do not hash to the signed root at length {length}"
    )]
    RootMismatch {
        /// The feed.
        feed: FeedId,
        /// First block of the proof.
        start: u64,
        /// End of the proof's range.
        end: u64,
        /// The head's length.
        length: u64,
    },
    /// A stored record failed its integrity check.
    #[error("feed {feed}, seq {seq}: stored {what} is corrupted; restore the data directory from a backup")]
    Corrupt {
        /// The feed.
        feed: FeedId,
        /// The block (or, for tree nodes, the first block the node covers).
        seq: u64,
        /// What was found damaged.
        what: &'static str,
    },
    /// A tree node needed for a proof is not stored here (this node holds
    /// the feed sparsely or pruned it).
    #[error("feed {feed}: tree node {index} is not stored here")]
    MissingNode {
        /// The feed.
        feed: FeedId,
        /// The node's flat-tree index.
        index: u64,
    },
    /// The author signed two heads that cannot both be true: trees that
    /// differ where they overlap. Both heads are the evidence, and it is
    /// the author's doing, not the peer's that carried them.
    #[error("feed {feed} forked: its author signed a head at length {} and a conflicting one at length {}", ours.length, theirs.length)]
    Fork {
        /// The feed.
        feed: FeedId,
        /// The head held here.
        ours: Box<SignedHead>,
        /// The conflicting head, verified against its own proof.
        theirs: Box<SignedHead>,
    },
    /// A longer head whose proof, made from a base shorter than the head held
    /// here (asked before an earlier answer grew the feed), hides a held root
    /// inside a larger node it carries: the two trees cannot be compared from
    /// it. Nothing is wrong yet; a proof from the held length, or one block
    /// past it from base 0, settles it.
    #[error("feed {feed}: a head at length {length} cannot be compared with the held tree at length {held} from its proof; ask for one proven from {held}")]
    Unconfirmed {
        /// The feed.
        feed: FeedId,
        /// The length held here.
        held: u64,
        /// The unconfirmed head's length.
        length: u64,
    },
}

/// One feed, as loaded from the store.
#[derive(Clone, Debug)]
pub struct Feed {
    desc: FeedDescriptor,
    id: FeedId,
    head: Option<SignedHead>,
    roots: Vec<Node>,
    /// Whether the store holds this feed's record as this handle knows it.
    persisted: bool,
    /// The author's key, parsed once.
    author_key: VerifyKey,
    /// The last head whose signature was checked without being adopted (an
    /// announcement): the data that follows it usually carries it again,
    /// and one signature check is a good part of a message's cost.
    checked: Option<SignedHead>,
}

const FEED_RECORD_VERSION: u8 = 1;

impl Feed {
    /// A feed with no blocks yet (nothing is stored until its first append or
    /// verified head).
    pub fn new(desc: FeedDescriptor) -> Self {
        Feed {
            id: desc.id(),
            desc,
            head: None,
            roots: Vec::new(),
            persisted: false,
            author_key: desc.author.verify_key(),
            checked: None,
        }
    }

    /// Loads feed `id`, checking its head's signature and that its stored
    /// roots hash to the signed root. `Ok(None)` if the store has no such feed.
    pub fn load<S: Store>(txn: &Txn<'_, S>, id: &FeedId) -> Result<Option<Self>, FeedError> {
        let Some(bytes) = txn.get(Table::Feeds, &id.0)? else {
            return Ok(None);
        };
        let corrupt = |what| FeedError::Corrupt {
            feed: *id,
            seq: 0,
            what,
        };
        let (&version, rest) = bytes.split_first().ok_or(corrupt("feed record"))?;
        if version != FEED_RECORD_VERSION {
            return Err(corrupt("feed record version"));
        }
        let (desc, rest) = FeedDescriptor::decode(rest).ok_or(corrupt("feed descriptor"))?;
        if desc.id() != *id {
            return Err(corrupt("feed descriptor"));
        }
        let mut feed = Feed::new(desc);
        feed.persisted = true;
        if rest.is_empty() {
            return Ok(Some(feed));
        }
        let head = SignedHead::decode(rest).ok_or(corrupt("signed head"))?;
        if head.length > flat::MAX_LENGTH {
            return Err(corrupt("signed head length"));
        }
        if head.feed != *id || !head.verify(&desc.author) {
            return Err(FeedError::BadSignature {
                feed: *id,
                length: head.length,
            });
        }
        let mut roots = Vec::new();
        for index in flat::full_roots(head.length) {
            let node = feed.stored_node(txn, index)?.ok_or(FeedError::Corrupt {
                feed: *id,
                seq: flat::blocks(index).0,
                what: "tree root",
            })?;
            roots.push(node);
        }
        if merkle::tree_hash(&roots) != head.root {
            return Err(FeedError::Corrupt {
                feed: *id,
                seq: head.length.saturating_sub(1),
                what: "tree roots",
            });
        }
        feed.head = Some(head);
        feed.roots = roots;
        Ok(Some(feed))
    }

    /// Loads feed `desc`, or starts an empty one.
    pub fn open<S: Store>(txn: &Txn<'_, S>, desc: FeedDescriptor) -> Result<Self, FeedError> {
        Ok(Self::load(txn, &desc.id())?.unwrap_or_else(|| Feed::new(desc)))
    }

    /// The feed id.
    pub fn id(&self) -> FeedId {
        self.id
    }

    /// Checks that `head` is this feed's and signed by its author, and
    /// remembers it, so that data carrying the same head again skips the
    /// signature check.
    pub fn check_head(&mut self, head: &SignedHead) -> bool {
        if head.feed != self.id || !self.signed(head) {
            return false;
        }
        if self.head.as_ref() != Some(head) {
            self.checked = Some(*head);
        }
        true
    }

    /// Whether `head`'s signature is good: checked now, or already (it is
    /// the adopted head or the last one checked).
    fn signed(&self, head: &SignedHead) -> bool {
        self.head.as_ref() == Some(head)
            || self.checked.as_ref() == Some(head)
            || head.verify_with(&self.author_key)
    }

    /// The feed's author and kind.
    pub fn descriptor(&self) -> &FeedDescriptor {
        &self.desc
    }

    /// The latest verified head, if any.
    pub fn head(&self) -> Option<&SignedHead> {
        self.head.as_ref()
    }

    /// The verified length: blocks `0..len()` exist (they may not all be
    /// stored here).
    pub fn len(&self) -> u64 {
        self.head.map_or(0, |h| h.length)
    }

    /// Whether the feed has no blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `blocks` as one batch: hashes them into the tree, signs one
    /// head for the whole batch, and writes blocks, nodes and head into
    /// `txn`. Returns the new head.
    ///
    /// The in-memory feed moves ahead at once; if the caller then fails to
    /// commit `txn`, it must drop this `Feed` and load it again.
    pub fn append_batch<S: Store, B: AsRef<[u8]>>(
        &mut self,
        txn: &mut Txn<'_, S>,
        key: &mut impl Sign,
        blocks: &[B],
    ) -> Result<SignedHead, FeedError> {
        if key.peer_id() != self.desc.author {
            return Err(FeedError::NotAuthor {
                feed: self.id,
                author: self.desc.author,
            });
        }
        let length = self.len();
        let before = self.record();
        let refs: Vec<&[u8]> = blocks.iter().map(|b| b.as_ref()).collect();
        let mut created = Vec::with_capacity(blocks.len() * 2);
        merkle::append_leaves(&mut self.roots, length, &refs, &mut created);
        let new_blocks = |seq: u64| {
            seq.checked_sub(length)
                .and_then(|i| refs.get(i as usize).copied())
        };
        records::write_nodes(txn, &self.id, &mut created, new_blocks, length)?;
        let new_len = length + blocks.len() as u64;
        let head = SignedHead::sign(key, self.id, new_len, merkle::tree_hash(&self.roots));
        self.head = Some(head);
        self.write_record(txn, before);
        Ok(head)
    }

    /// The feed's record as this handle last knew it committed.
    fn record(&self) -> Option<Vec<u8>> {
        if !self.persisted {
            return None;
        }
        let mut rec = Vec::with_capacity(1 + 65 + SIGNED_HEAD_LEN);
        rec.push(FEED_RECORD_VERSION);
        self.desc.encode(&mut rec);
        if let Some(h) = &self.head {
            rec.extend_from_slice(&h.encode());
        }
        Some(rec)
    }

    /// Writes the record, on condition that the store still holds `before`:
    /// if another process appended meanwhile, the commit fails with a
    /// conflict instead of overwriting its blocks.
    fn write_record<S: Store>(&mut self, txn: &mut Txn<'_, S>, before: Option<Vec<u8>>) {
        self.persisted = true;
        if let Some(rec) = self.record() {
            txn.put_expecting(Table::Feeds, &self.id.0, rec, before.as_deref());
        }
    }

    /// Whether the store's record differs from this handle's (another process
    /// appended): the caller should load the feed again.
    pub fn is_stale<S: Store>(&self, txn: &Txn<'_, S>) -> Result<bool, FeedError> {
        Ok(txn.get(Table::Feeds, &self.id.0)? != self.record().as_deref())
    }

    fn stored_node<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        index: u64,
    ) -> Result<Option<Node>, FeedError> {
        records::read_node(txn, &self.id, index)
    }

    /// Reads block `seq` if its bytes are stored here, checking them against
    /// their leaf hash so damaged bytes are reported, never returned.
    pub fn get<S: Store>(&self, txn: &Txn<'_, S>, seq: u64) -> Result<Option<Vec<u8>>, FeedError> {
        Ok(self.get_ref(txn, seq)?.map(<[u8]>::to_vec))
    }

    /// [`Feed::get`] without the copy: the bytes borrow from the transaction.
    pub fn get_ref<'t, S: Store>(
        &self,
        txn: &'t Txn<'_, S>,
        seq: u64,
    ) -> Result<Option<&'t [u8]>, FeedError> {
        if seq >= self.len() {
            return Ok(None);
        }
        let Some(records::Leaf {
            node,
            data: Some(data),
        }) = records::read_leaf(txn, &self.id, seq)?
        else {
            return Ok(None);
        };
        if Node::leaf(seq, data) != node {
            return Err(FeedError::Corrupt {
                feed: self.id,
                seq,
                what: "block",
            });
        }
        Ok(Some(data))
    }

    /// [`Feed::get`] of a block recorded as held (its arrival was
    /// committed, and it was not cleared since): bytes missing below the
    /// feed's length are damage (LMDB keeps no checksums, so a damaged
    /// page can lose records without an error of its own), reported as
    /// [`FeedError::Corrupt`] rather than passed off as a block that is
    /// not here yet. `Ok(None)` only past the feed's length.
    pub fn get_held<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, FeedError> {
        match self.get(txn, seq)? {
            None if seq < self.len() => Err(FeedError::Corrupt {
                feed: self.id,
                seq,
                what: "block (recorded as held, but missing)",
            }),
            got => Ok(got),
        }
    }

    /// Whether block `seq`'s bytes are stored here.
    pub fn has<S: Store>(&self, txn: &Txn<'_, S>, seq: u64) -> Result<bool, FeedError> {
        Ok(seq < self.len()
            && matches!(records::read_leaf(txn, &self.id, seq)?, Some(l) if l.data.is_some()))
    }

    /// Drops block `seq`'s bytes, keeping its hash so the feed stays
    /// verifiable and provable. Returns whether any bytes were dropped.
    pub fn drop_block<S: Store>(&self, txn: &mut Txn<'_, S>, seq: u64) -> Result<bool, FeedError> {
        records::drop_data(txn, &self.id, seq)
    }

    /// Proves blocks `[start, end)` against the current head, for a verifier
    /// that holds the roots of `base` blocks (its verified length).
    pub fn prove<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        start: u64,
        end: u64,
        base: u64,
    ) -> Result<RangeProof, FeedError> {
        self.prove_showing(txn, start, end, base, base)
    }

    /// Like [`Feed::prove`], also showing the full roots of `shown` blocks
    /// ([`RangeProof::shown`]): a length the verifier may have verified since
    /// it asked from `base`.
    pub fn prove_showing<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        start: u64,
        end: u64,
        base: u64,
        shown: u64,
    ) -> Result<RangeProof, FeedError> {
        let length = self.len();
        if start > end || end > length || base > shown || shown > length {
            return Err(FeedError::OutOfRange {
                feed: self.id,
                start,
                end,
                length,
            });
        }
        merkle::prove_showing(start, end, length, base, shown, |index| {
            self.stored_node(txn, index)?.ok_or(FeedError::MissingNode {
                feed: self.id,
                index,
            })
        })
    }

    /// Proves blocks `[start, end)` up to node `trusted` only, for a verifier
    /// that already holds that node (see [`Feed::trusted_node`]). Such a proof
    /// needs no signed head and is as short as the distance to that node.
    pub fn prove_below<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        start: u64,
        end: u64,
        trusted: u64,
    ) -> Result<RangeProof, FeedError> {
        let length = self.len();
        if !merkle::fits(start, end, length, 0, Some(trusted)) {
            return Err(FeedError::OutOfRange {
                feed: self.id,
                start,
                end,
                length,
            });
        }
        merkle::prove(start, end, length, 0, Some(trusted), |index| {
            self.stored_node(txn, index)?.ok_or(FeedError::MissingNode {
                feed: self.id,
                index,
            })
        })
    }

    /// The lowest node covering `[start, end)` within `known` blocks (a
    /// length the author signed) that this feed holds or that `coming` says
    /// an answer on its way will bring: a requester names it so the proof it
    /// gets back stops there. `None` if there is none (the proof then goes
    /// up to the roots of a signed head).
    pub fn trusted_node<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        start: u64,
        end: u64,
        known: u64,
        mut coming: impl FnMut(u64) -> bool,
    ) -> Result<Option<u64>, FeedError> {
        // What we verified ourselves counts as signed too.
        let known = known.max(self.len());
        if start >= end || end > known {
            return Ok(None);
        }
        let mut i = flat::leaf(start);
        while flat::blocks(i).1 < end {
            i = flat::parent(i);
        }
        while flat::blocks(i).1 <= known {
            if coming(i) || self.stored_node(txn, i)?.is_some() {
                return Ok(Some(i));
            }
            i = flat::parent(i);
        }
        Ok(None)
    }

    /// Checks blocks against a proof rooted at a node this feed holds
    /// ([`RangeProof::trusted`]), then stores them and the nodes learned.
    /// Nothing is written unless everything verifies.
    pub fn verify_below_and_store<S: Store, B: AsRef<[u8]>>(
        &mut self,
        txn: &mut Txn<'_, S>,
        proof: &RangeProof,
        blocks: &[B],
    ) -> Result<(), FeedError> {
        let (start, end) = (proof.start, proof.end);
        let bad = |source| FeedError::Proof {
            feed: self.id,
            start,
            end,
            source,
        };
        let Some(t) = proof.trusted else {
            return Err(bad(ProofError::MissingBase(0)));
        };
        if flat::blocks(t).1 > self.len() {
            return Err(bad(ProofError::MissingBase(t)));
        }
        let mut learned = self.check(txn, proof, blocks)?.learned;
        self.store_learned(txn, proof, blocks, &mut learned)
    }

    /// Runs the proof walk against this feed's stored nodes.
    fn check<S: Store, B: AsRef<[u8]>>(
        &self,
        txn: &Txn<'_, S>,
        proof: &RangeProof,
        blocks: &[B],
    ) -> Result<merkle::Verified, FeedError> {
        let mut store_err = None;
        let verified = merkle::verify(proof, blocks, |index| match self.stored_node(txn, index) {
            Ok(n) => n,
            Err(e) => {
                store_err = Some(e);
                None
            }
        });
        if let Some(e) = store_err {
            return Err(e);
        }
        verified.map_err(|source| FeedError::Proof {
            feed: self.id,
            start: proof.start,
            end: proof.end,
            source,
        })
    }

    fn store_learned<S: Store, B: AsRef<[u8]>>(
        &self,
        txn: &mut Txn<'_, S>,
        proof: &RangeProof,
        blocks: &[B],
        learned: &mut [Node],
    ) -> Result<(), FeedError> {
        let data = |seq: u64| {
            let i = seq.checked_sub(proof.start).filter(|_| seq < proof.end)?;
            blocks.get(i as usize).map(AsRef::as_ref)
        };
        // Any record may exist already: sparse downloads leave hashes and
        // parents behind.
        records::write_nodes(txn, &self.id, learned, data, u64::MAX)
    }

    /// Checks `blocks` (blocks `proof.start..proof.end`) against `head`
    /// through `proof`, then stores the blocks and every node learned, and
    /// adopts `head` if it is longer than the one held. The signature check is
    /// skipped when `head` is exactly the head already verified.
    ///
    /// Nothing is written unless everything verifies.
    pub fn verify_and_store<S: Store, B: AsRef<[u8]>>(
        &mut self,
        txn: &mut Txn<'_, S>,
        head: &SignedHead,
        proof: &RangeProof,
        blocks: &[B],
    ) -> Result<(), FeedError> {
        let mut learned = self.verify(txn, head, proof, blocks)?;
        self.store_learned(txn, proof, blocks, &mut learned)?;
        if head.length > self.len() {
            let before = self.record();
            self.roots = flat::full_roots(head.length)
                .into_iter()
                .map(|i| learned.iter().rev().find(|n| n.index == i).copied())
                .collect::<Option<Vec<_>>>()
                .ok_or(FeedError::Proof {
                    feed: self.id,
                    start: proof.start,
                    end: proof.end,
                    source: ProofError::Truncated,
                })?;
            self.head = Some(*head);
            self.write_record(txn, before);
        }
        Ok(())
    }

    /// Verifies without storing; returns the nodes learned.
    pub fn verify<S: Store, B: AsRef<[u8]>>(
        &self,
        txn: &Txn<'_, S>,
        head: &SignedHead,
        proof: &RangeProof,
        blocks: &[B],
    ) -> Result<Vec<Node>, FeedError> {
        let (start, end) = (proof.start, proof.end);
        if head.feed != self.id {
            return Err(FeedError::WrongFeed {
                feed: self.id,
                got: head.feed,
            });
        }
        if proof.length != head.length || proof.base > self.len() || proof.trusted.is_some() {
            return Err(FeedError::Proof {
                feed: self.id,
                start,
                end,
                source: ProofError::Range {
                    start,
                    end,
                    length: proof.length,
                    base: proof.base,
                },
            });
        }
        let verified = self.check(txn, proof, blocks)?;
        if merkle::tree_hash(&verified.roots) != head.root {
            return Err(FeedError::RootMismatch {
                feed: self.id,
                start,
                end,
                length: head.length,
            });
        }
        if !self.signed(head) {
            return Err(FeedError::BadSignature {
                feed: self.id,
                length: head.length,
            });
        }
        self.check_consistent(txn, head, proof, &verified)?;
        let mut learned = verified.learned;
        // Roots of the new head must be stored even when the walk took them
        // from the verifier's own base.
        learned.extend(verified.roots);
        Ok(learned)
    }

    /// Checks that `head`, whose proof verified, describes the same tree as
    /// the head held here wherever the proof shows both: an author that
    /// signs two different trees (a restored backup, a lost commit re-signed,
    /// or malice) is caught before anything of the second is stored.
    ///
    /// ```text
    /// held:   length 3, roots 1 (blocks 0..2) and 4 (block 2)
    /// longer: proven from base 3, the walk reproduced 1 and 4 from the
    ///         store: it agrees. Proven from a shorter base (asked before
    ///         the last answer grew the feed), each held root the proof
    ///         shows must equal it (the responder shows the roots of the
    ///         last head it sent us, `RangeProof::shown`); a root hidden
    ///         inside a larger node the proof carries (blocks 4..8 asked
    ///         from base 0, showing nothing more, carry node 3 over blocks
    ///         0..4 and both held roots) cannot be compared: Unconfirmed,
    ///         and nothing of it is stored
    /// equal:  the same root, or it is a fork
    /// shorter: its full roots are nodes of the held tree, compared with
    ///         the stored ones
    /// ```
    fn check_consistent<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        head: &SignedHead,
        proof: &RangeProof,
        verified: &merkle::Verified,
    ) -> Result<(), FeedError> {
        let Some(ours) = self.head else {
            return Ok(());
        };
        let fork = || FeedError::Fork {
            feed: self.id,
            ours: Box::new(ours),
            theirs: Box::new(*head),
        };
        if head.length == ours.length {
            return if head.root == ours.root {
                Ok(())
            } else {
                Err(fork())
            };
        }
        if head.length > ours.length {
            if proof.base == ours.length {
                return Ok(());
            }
            // Full roots of the proof's base were checked against the store
            // by the walk itself.
            let checked = flat::full_roots(proof.base);
            let mut hidden = false;
            for root in self.roots.iter().filter(|r| !checked.contains(&r.index)) {
                match verified.learned.iter().find(|n| n.index == root.index) {
                    Some(n) if n != root => return Err(fork()),
                    Some(_) => {}
                    None => hidden = true,
                }
            }
            return if hidden {
                Err(FeedError::Unconfirmed {
                    feed: self.id,
                    held: ours.length,
                    length: head.length,
                })
            } else {
                Ok(())
            };
        }
        for n in &verified.roots {
            if self
                .stored_node(txn, n.index)?
                .is_some_and(|held| held != *n)
            {
                return Err(fork());
            }
        }
        Ok(())
    }

    /// Two heads of this feed, both signed by its author, of one length and
    /// different trees: proof of a fork on their own. Heads of different
    /// lengths need a proof to conflict, which [`Feed::verify`] checks.
    pub fn conflicts_with(&self, head: &SignedHead) -> bool {
        self.head
            .is_some_and(|ours| ours.length == head.length && ours.root != head.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::rng::SeededRng;
    use crate::store::MemStore;

    #[test]
    fn dropped_bytes_keep_the_feed_provable() {
        let store = MemStore::new();
        let mut key = author();
        let mut feed = Feed::new(FeedDescriptor::broadcast(key.peer_id()));
        let mut txn = Txn::begin(&store).unwrap();
        let blocks: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i; 10]).collect();
        let head = feed.append_batch(&mut txn, &mut key, &blocks).unwrap();
        assert!(feed.drop_block(&mut txn, 4).unwrap());
        assert!(!feed.drop_block(&mut txn, 4).unwrap(), "already dropped");
        txn.commit().unwrap();
        let txn = Txn::begin(&store).unwrap();
        assert!(!feed.has(&txn, 4).unwrap());
        assert_eq!(feed.get(&txn, 4).unwrap(), None);
        // Its neighbours still prove, using block 4's kept hash.
        let p = feed.prove(&txn, 5, 6, 0).unwrap();
        let reader = MemStore::new();
        let rt = Txn::begin(&reader).unwrap();
        Feed::new(*feed.descriptor())
            .verify(&rt, &head, &p, &blocks[5..6])
            .unwrap();
    }

    fn author() -> Keypair {
        Keypair::generate(&mut SeededRng::from_u64(11))
    }

    #[test]
    fn an_announced_head_is_checked_once_and_forgeries_are_not() {
        let mut key = author();
        let desc = FeedDescriptor::broadcast(key.peer_id());
        let store = MemStore::new();
        let mut txn = Txn::begin(&store).unwrap();
        let mut writer = Feed::new(desc);
        let head = writer
            .append_batch(&mut txn, &mut key, &[b"a".as_slice(), b"b"])
            .unwrap();
        let proof = writer.prove(&txn, 0, 2, 0).unwrap();

        let mut reader = Feed::new(desc);
        let mut forged = head;
        forged.length += 1;
        assert!(!reader.check_head(&forged));
        let other = Feed::new(FeedDescriptor::broadcast(
            Keypair::generate(&mut SeededRng::from_u64(12)).peer_id(),
        ));
        assert!(!reader.check_head(&SignedHead {
            feed: other.id(),
            ..head
        }));
        assert!(reader.check_head(&head));
        assert_eq!(reader.checked, Some(head));
        // The data carrying that head is stored (its signature not checked
        // again), and a forged head is still refused there.
        let rstore = MemStore::new();
        let mut rt = Txn::begin(&rstore).unwrap();
        let blocks = [b"a".as_slice(), b"b"];
        let mut bad_sig = head;
        bad_sig.signature[0] ^= 1;
        assert!(!reader.check_head(&bad_sig));
        assert!(matches!(
            reader.verify_and_store(&mut rt, &bad_sig, &proof, &blocks),
            Err(FeedError::BadSignature { .. })
        ));
        reader
            .verify_and_store(&mut rt, &head, &proof, &blocks)
            .unwrap();
        assert_eq!(reader.len(), 2);
    }

    #[test]
    fn append_get_reload() {
        let store = MemStore::new();
        let mut key = author();
        let desc = FeedDescriptor::queue(key.peer_id(), PeerId([9; 32]));
        let mut txn = Txn::begin(&store).unwrap();
        let mut feed = Feed::open(&txn, desc).unwrap();
        feed.append_batch(&mut txn, &mut key, &[b"a".as_slice(), b"bb", b"ccc"])
            .unwrap();
        let head = feed.append_batch(&mut txn, &mut key, &[b"dddd"]).unwrap();
        txn.commit().unwrap();
        assert_eq!(store.commit_count(), 1);
        assert_eq!(head.length, 4);
        let txn = Txn::begin(&store).unwrap();
        let again = Feed::load(&txn, &desc.id()).unwrap().unwrap();
        assert_eq!(again.head(), Some(&head));
        assert_eq!(again.get(&txn, 2).unwrap().as_deref(), Some(&b"ccc"[..]));
        assert_eq!(again.get(&txn, 4).unwrap(), None);
    }

    #[test]
    fn not_the_author_cannot_append() {
        let store = MemStore::new();
        let mut txn = Txn::begin(&store).unwrap();
        let mut feed = Feed::new(FeedDescriptor::broadcast(PeerId([1; 32])));
        let err = feed
            .append_batch(&mut txn, &mut author(), &[b"x"])
            .unwrap_err();
        assert!(matches!(err, FeedError::NotAuthor { .. }));
    }

    #[test]
    fn corruption_on_disk_names_feed_and_seq() {
        let store = MemStore::new();
        let mut key = author();
        let desc = FeedDescriptor::broadcast(key.peer_id());
        let mut txn = Txn::begin(&store).unwrap();
        let mut feed = Feed::new(desc);
        feed.append_batch(&mut txn, &mut key, &[b"one".as_slice(), b"two"])
            .unwrap();
        txn.commit().unwrap();

        store.tamper(Table::Blocks, &records::block_key(&desc.id(), 1), |v| {
            *v.last_mut().unwrap() ^= 1
        });
        let txn = Txn::begin(&store).unwrap();
        let err = feed.get(&txn, 1).unwrap_err();
        assert!(
            matches!(
                err,
                FeedError::Corrupt {
                    seq: 1,
                    what: "block",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&desc.id().to_string()));
        drop(txn);

        store.tamper(Table::Feeds, &desc.id().0, |v| {
            let n = v.len();
            v[n - 1] ^= 1
        });
        let txn = Txn::begin(&store).unwrap();
        let err = Feed::load(&txn, &desc.id()).unwrap_err();
        assert!(
            matches!(err, FeedError::BadSignature { length: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn receiver_verifies_sparse_then_upgrades() {
        let mut key = author();
        let desc = FeedDescriptor::queue(key.peer_id(), PeerId([7; 32]));
        let writer = MemStore::new();
        let mut wt = Txn::begin(&writer).unwrap();
        let mut wf = Feed::new(desc);
        let blocks: Vec<Vec<u8>> = (0..50u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let h1 = wf.append_batch(&mut wt, &mut key, &blocks[..30]).unwrap();
        wt.commit().unwrap();

        let reader = MemStore::new();
        let mut rf = Feed::new(desc);
        // Block 17 alone, against the 30-block head.
        let wt = Txn::begin(&writer).unwrap();
        let p = wf.prove(&wt, 17, 18, 0).unwrap();
        drop(wt);
        let mut rt = Txn::begin(&reader).unwrap();
        rf.verify_and_store(&mut rt, &h1, &p, &blocks[17..18])
            .unwrap();
        rt.commit().unwrap();
        assert_eq!(rf.len(), 30);

        let mut wt = Txn::begin(&writer).unwrap();
        let h2 = wf.append_batch(&mut wt, &mut key, &blocks[30..]).unwrap();
        wt.commit().unwrap();
        let wt = Txn::begin(&writer).unwrap();
        let p = wf.prove(&wt, 40, 43, rf.len()).unwrap();
        let mut rt = Txn::begin(&reader).unwrap();
        rf.verify_and_store(&mut rt, &h2, &p, &blocks[40..43])
            .unwrap();
        rt.commit().unwrap();
        let rt = Txn::begin(&reader).unwrap();
        let back = Feed::load(&rt, &desc.id()).unwrap().unwrap();
        assert_eq!(back.len(), 50);
        assert_eq!(back.get(&rt, 41).unwrap(), Some(blocks[41].clone()));
        assert_eq!(back.get(&rt, 5).unwrap(), None);

        // A tampered block is refused and nothing is written.
        let p = wf.prove(&wt, 3, 4, rf.len()).unwrap();
        let mut rt = Txn::begin(&reader).unwrap();
        let err = rf
            .verify_and_store(&mut rt, &h2, &p, &[b"evil".to_vec()])
            .unwrap_err();
        assert!(
            matches!(
                err,
                FeedError::RootMismatch { .. } | FeedError::Proof { .. }
            ),
            "{err}"
        );
        assert!(!rt.is_dirty());
    }
}
