//! Signed receipts: the recipient's proof that blocks of a feed arrived.

use crate::feed::FeedId;
use crate::identity::{Keypair, PeerId, Signature};
use crate::ranges::RangeSet;

const RECEIPT_CONTEXT: &[u8] = b"peermq v1 receipt\0";

/// A receipt signed by a feed's recipient: "I hold (or have deliberately
/// discarded) these blocks of this feed, durably".
///
/// Receipts are cumulative: a newer one covers everything an older one did.
/// A sender may prune acknowledged blocks, and can show a receipt to anyone
/// as proof of delivery ([`Receipt::verify`] needs only the signer's key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The feed.
    pub feed: FeedId,
    /// Who signed: the feed's recipient.
    pub signer: PeerId,
    /// The acknowledged blocks.
    pub ranges: RangeSet,
    /// Ed25519 signature by `signer` over the fields above.
    pub signature: Signature,
}

impl Receipt {
    fn signing_bytes(feed: &FeedId, signer: &PeerId, ranges: &RangeSet) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(RECEIPT_CONTEXT.len() + 64 + 4 + 16 * ranges.range_count());
        out.extend_from_slice(RECEIPT_CONTEXT);
        out.extend_from_slice(&feed.0);
        out.extend_from_slice(&signer.0);
        ranges.encode(&mut out);
        out
    }

    /// Signs a receipt for `ranges` of `feed`.
    pub fn sign(key: &Keypair, feed: FeedId, ranges: RangeSet) -> Self {
        let signer = key.peer_id();
        let signature = key.sign(&Self::signing_bytes(&feed, &signer, &ranges));
        Receipt {
            feed,
            signer,
            ranges,
            signature,
        }
    }

    /// Checks the signature against the embedded signer.
    pub fn verify(&self) -> bool {
        self.signer
            .verify(
                &Self::signing_bytes(&self.feed, &self.signer, &self.ranges),
                &self.signature,
            )
            .is_ok()
    }

    /// Encodes as feed, signer, ranges, signature.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_with(out, RangeSet::encode);
    }

    /// Encodes as the wire carries it: [`Receipt::encode`] with the ranges
    /// in [`RangeSet::encode_compact`] form. The signature is over the
    /// fixed-width form either way, so it checks whichever was received.
    pub fn encode_compact(&self, out: &mut Vec<u8>) {
        self.encode_with(out, RangeSet::encode_compact);
    }

    /// Decodes [`Receipt::encode`]'s bytes exactly, accepting at most
    /// `max_ranges` ranges.
    pub fn decode(bytes: &[u8], max_ranges: usize) -> Option<Self> {
        Self::decode_with(bytes, |b| RangeSet::decode(b, max_ranges))
    }

    /// Decodes [`Receipt::encode_compact`]'s bytes exactly, accepting at
    /// most `max_ranges` ranges.
    pub fn decode_compact(bytes: &[u8], max_ranges: usize) -> Option<Self> {
        Self::decode_with(bytes, |b| RangeSet::decode_compact(b, max_ranges))
    }

    fn encode_with(&self, out: &mut Vec<u8>, ranges: impl FnOnce(&RangeSet, &mut Vec<u8>)) {
        out.extend_from_slice(&self.feed.0);
        out.extend_from_slice(&self.signer.0);
        ranges(&self.ranges, out);
        out.extend_from_slice(&self.signature);
    }

    fn decode_with(
        bytes: &[u8],
        ranges: impl FnOnce(&[u8]) -> Option<(RangeSet, &[u8])>,
    ) -> Option<Self> {
        let feed = FeedId(bytes.get(..32)?.try_into().ok()?);
        let signer = PeerId(bytes.get(32..64)?.try_into().ok()?);
        let (ranges, rest) = ranges(bytes.get(64..)?)?;
        let signature: Signature = rest.try_into().ok()?;
        Some(Receipt {
            feed,
            signer,
            ranges,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    #[test]
    fn receipts_verify_roundtrip_and_reject_changes() {
        let key = Keypair::generate(&mut SeededRng::from_u64(2));
        let r = Receipt::sign(&key, FeedId([1; 32]), RangeSet::from_range(0, 10));
        assert!(r.verify());
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(Receipt::decode(&buf, 8), Some(r.clone()));
        let mut compact = Vec::new();
        r.encode_compact(&mut compact);
        assert_eq!(compact.len(), 64 + 3 + 64);
        let back = Receipt::decode_compact(&compact, 8).unwrap();
        assert!(back.verify());
        assert_eq!(back, r);
        let mut widened = r.clone();
        widened.ranges.insert(10, 11);
        assert!(!widened.verify());
        let mut other_feed = r;
        other_feed.feed.0[0] ^= 1;
        assert!(!other_feed.verify());
    }
}
