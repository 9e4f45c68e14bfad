//! A recipient's signed list of the mailbox peers it trusts to hold its
//! mail.
//!
//! The recipient signs it, so anyone may carry it: the recipient hands it
//! to each peer it connects to (senders learn where to push, mailboxes
//! learn whom they serve), and a discovery record can publish it. A newer
//! version replaces an older one wherever it arrives, so removing a
//! mailbox takes effect as the new list spreads.
//!
//! ```text
//! list      = recipient (32) | version u64 LE | count u8 | mailbox id (32)* | signature (64)
//! signed    = "peermq v1 mailboxes\0" | recipient | version | count | mailbox ids
//! ```

use crate::identity::{Keypair, PeerId, Signature};

const CONTEXT: &[u8] = b"peermq v1 mailboxes\0";

/// Most mailboxes one recipient may name.
pub const MAX_MAILBOXES: usize = 8;

/// A recipient's signed list of its mailboxes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxList {
    /// Whose mail the mailboxes hold; the signer.
    pub recipient: PeerId,
    /// Higher replaces lower.
    pub version: u64,
    /// The mailboxes, sorted, without repeats (at most [`MAX_MAILBOXES`]).
    pub mailboxes: Vec<PeerId>,
    /// The recipient's signature over the fields above.
    pub signature: Signature,
}

impl MailboxList {
    fn signing_bytes(recipient: &PeerId, version: u64, mailboxes: &[PeerId]) -> Vec<u8> {
        let mut out = Vec::with_capacity(CONTEXT.len() + 41 + 32 * mailboxes.len());
        out.extend_from_slice(CONTEXT);
        Self::encode_fields(recipient, version, mailboxes, &mut out);
        out
    }

    fn encode_fields(recipient: &PeerId, version: u64, mailboxes: &[PeerId], out: &mut Vec<u8>) {
        out.extend_from_slice(&recipient.0);
        out.extend_from_slice(&version.to_le_bytes());
        out.push(mailboxes.len() as u8);
        for m in mailboxes {
            out.extend_from_slice(&m.0);
        }
    }

    /// `key`'s list of `mailboxes` (sorted and deduplicated here; at most
    /// [`MAX_MAILBOXES`] are kept), as version `version`.
    pub fn sign(key: &Keypair, version: u64, mailboxes: impl IntoIterator<Item = PeerId>) -> Self {
        let mut mailboxes: Vec<PeerId> = mailboxes.into_iter().collect();
        mailboxes.sort();
        mailboxes.dedup();
        mailboxes.truncate(MAX_MAILBOXES);
        let recipient = key.peer_id();
        let signature = key.sign(&Self::signing_bytes(&recipient, version, &mailboxes));
        MailboxList {
            recipient,
            version,
            mailboxes,
            signature,
        }
    }

    /// Whether the recipient signed exactly this list.
    pub fn verify(&self) -> bool {
        self.mailboxes.len() <= MAX_MAILBOXES
            && self.mailboxes.windows(2).all(|w| w[0] < w[1])
            && self
                .recipient
                .verify(
                    &Self::signing_bytes(&self.recipient, self.version, &self.mailboxes),
                    &self.signature,
                )
                .is_ok()
    }

    /// Whether `mailbox` is one the recipient named.
    pub fn names(&self, mailbox: &PeerId) -> bool {
        self.mailboxes.binary_search(mailbox).is_ok()
    }

    /// Appends the encoded list to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Self::encode_fields(&self.recipient, self.version, &self.mailboxes, out);
        out.extend_from_slice(&self.signature);
    }

    /// Decodes [`MailboxList::encode`]'s bytes exactly (the signature is
    /// not checked: see [`MailboxList::verify`]).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let recipient = PeerId(bytes.get(..32)?.try_into().ok()?);
        let version = u64::from_le_bytes(bytes.get(32..40)?.try_into().ok()?);
        let count = *bytes.get(40)? as usize;
        if count > MAX_MAILBOXES {
            return None;
        }
        let ids_end = 41 + 32 * count;
        let mailboxes = bytes
            .get(41..ids_end)?
            .chunks_exact(32)
            .map(|c| c.try_into().map(PeerId))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let signature: Signature = bytes.get(ids_end..)?.try_into().ok()?;
        Some(MailboxList {
            recipient,
            version,
            mailboxes,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use quickcheck::quickcheck;

    fn ids(n: u8) -> Vec<PeerId> {
        (0..n).rev().map(|i| PeerId([i; 32])).collect()
    }

    #[test]
    fn a_list_round_trips_sorted_and_verifies() {
        let key = Keypair::generate(&mut SeededRng::from_u64(3));
        let list = MailboxList::sign(&key, 7, ids(3).into_iter().chain(ids(1)));
        assert_eq!(
            list.mailboxes,
            vec![PeerId([0; 32]), PeerId([1; 32]), PeerId([2; 32])]
        );
        assert!(list.verify());
        assert!(list.names(&PeerId([1; 32])) && !list.names(&PeerId([9; 32])));
        let mut bytes = Vec::new();
        list.encode(&mut bytes);
        assert_eq!(MailboxList::decode(&bytes), Some(list));
    }

    #[test]
    fn too_many_mailboxes_are_cut_to_the_limit() {
        let key = Keypair::generate(&mut SeededRng::from_u64(3));
        let list = MailboxList::sign(&key, 1, ids(20));
        assert_eq!(list.mailboxes.len(), MAX_MAILBOXES);
        assert!(list.verify());
    }

    quickcheck! {
        fn every_changed_byte_is_refused(at: usize, flip: u8) -> bool {
            let key = Keypair::generate(&mut SeededRng::from_u64(4));
            let mut bytes = Vec::new();
            MailboxList::sign(&key, 2, ids(2)).encode(&mut bytes);
            if flip == 0 {
                return true;
            }
            let i = at % bytes.len();
            bytes[i] ^= flip;
            MailboxList::decode(&bytes).is_none_or(|l| !l.verify())
        }

        fn decoding_any_bytes_never_panics(bytes: Vec<u8>) -> bool {
            let _ = MailboxList::decode(&bytes);
            true
        }
    }
}
