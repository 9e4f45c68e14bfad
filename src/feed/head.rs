//! Signed heads: an author's signature over a feed's length and tree hash.

use crate::identity::{PeerId, Sign, Signature, VerifyKey, SIGNATURE_LEN};
use crate::merkle::Hash;

use super::FeedId;

const HEAD_CONTEXT: &[u8] = b"peermq v1 signed head\0";

/// Encoded length of a [`SignedHead`].
pub const SIGNED_HEAD_LEN: usize = 32 + 8 + 32 + SIGNATURE_LEN;

/// The author's signed statement that feed `feed` has `length` blocks whose
/// tree hashes to `root`.
///
/// One head is signed per append batch, however many blocks the batch holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignedHead {
    /// The feed.
    pub feed: FeedId,
    /// Number of blocks.
    pub length: u64,
    /// [`crate::merkle::tree_hash`] of the full roots.
    pub root: Hash,
    /// The author's ed25519 signature over the three fields above.
    pub signature: Signature,
}

impl std::fmt::Debug for SignedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedHead")
            .field("feed", &self.feed)
            .field("length", &self.length)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl SignedHead {
    /// The exact bytes the author signs: a context string, then feed id,
    /// length and root.
    pub fn signing_bytes(feed: &FeedId, length: u64, root: &Hash) -> [u8; 22 + 72] {
        let mut out = [0u8; 22 + 72];
        out[..22].copy_from_slice(HEAD_CONTEXT);
        out[22..54].copy_from_slice(&feed.0);
        out[54..62].copy_from_slice(&length.to_le_bytes());
        out[62..].copy_from_slice(&root.0);
        out
    }

    /// Signs a head with the author's key.
    pub fn sign(key: &mut impl Sign, feed: FeedId, length: u64, root: Hash) -> Self {
        let signature = key.sign(&Self::signing_bytes(&feed, length, &root));
        SignedHead {
            feed,
            length,
            root,
            signature,
        }
    }

    /// Checks the signature against `author`.
    pub fn verify(&self, author: &PeerId) -> bool {
        self.verify_with(&author.verify_key())
    }

    /// Checks the signature against an author's parsed key.
    pub fn verify_with(&self, author: &VerifyKey) -> bool {
        author
            .verify(
                &Self::signing_bytes(&self.feed, self.length, &self.root),
                &self.signature,
            )
            .is_ok()
    }

    /// Encodes as feed id, length (LE), root, signature.
    pub fn encode(&self) -> [u8; SIGNED_HEAD_LEN] {
        let mut out = [0u8; SIGNED_HEAD_LEN];
        out[..32].copy_from_slice(&self.feed.0);
        out[32..40].copy_from_slice(&self.length.to_le_bytes());
        out[40..72].copy_from_slice(&self.root.0);
        out[72..].copy_from_slice(&self.signature);
        out
    }

    /// Decodes [`SignedHead::encode`]'s bytes (exactly [`SIGNED_HEAD_LEN`]).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != SIGNED_HEAD_LEN {
            return None;
        }
        Some(SignedHead {
            feed: FeedId(bytes[..32].try_into().ok()?),
            length: u64::from_le_bytes(bytes[32..40].try_into().ok()?),
            root: Hash(bytes[40..72].try_into().ok()?),
            signature: bytes[72..].try_into().ok()?,
        })
    }
}
