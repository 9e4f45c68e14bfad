//! Sealing messages to their recipient, so that only the recipient's key
//! opens them: a carrier that stores and serves the feed, or a thief of
//! the data directory, holds ciphertext only.
//!
//! ```text
//! per epoch:   e  = fresh X25519 secret (from the node's seeded RNG)
//!              E  = e·G                              (sent in each envelope)
//!              R  = recipient's ed25519 key on the Montgomery curve
//!              k  = BLAKE3-derive_key("peermq v1 sealed message key",
//!                                     e·R | E | sender id | recipient id)
//! per message: sealed = XChaCha20-Poly1305(k, nonce = seq u64 LE | 16 zero
//!                       bytes, ad = "peermq v1 sealed\0" | sender id |
//!                       recipient id | seq u64 LE, plaintext)
//! ```
//!
//! The recipient's X25519 key is its identity converted, as libsodium's
//! `crypto_sign_ed25519_pk_to_curve25519` does, so a sender needs nothing
//! but the peer id it already addresses.
//!
//! A key serves one *epoch*: the messages one sender process seals to one
//! recipient until the node rotates it (see the node's `sealing` module).
//! Within an epoch every message has its own seq, so the seq alone makes
//! each nonce unique under the key; the seq in the associated data also
//! pins a sealed message to its position, and the two ids to its pair of
//! peers. An epoch spares both sides a key agreement per message: one
//! variable-base X25519 costs tens of microseconds, more than sealing a
//! small message.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::VerifyingKey;
use zeroize::Zeroize;

use super::{Keypair, PeerId};
use crate::rng::RandomSource;

const KEY_CONTEXT: &str = "peermq v1 sealed message key";
const AD_DOMAIN: &[u8] = b"peermq v1 sealed\0";
/// Bytes sealing adds to a message: the Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// Why a message could not be sealed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The recipient's id is not a valid ed25519 key, or one of small
    /// order, so nothing can be sealed to it.
    #[error("the recipient's key cannot receive sealed messages")]
    BadRecipient,
    /// The sender's ephemeral key is of small order: no secret agreed.
    #[error("the sealed message's key exchange is degenerate")]
    BadEphemeral,
    /// Authentication failed: the message was not sealed to this key, for
    /// this pair and position, or it was changed.
    #[error("the sealed message does not open with this node's key: it was sealed to another key, or changed")]
    Forged,
}

/// Seals the messages of one epoch from `sender` to `recipient`: one key
/// agreement, then one AEAD per message. The caller must never seal two
/// messages at one seq with one `Sealer` (or its clones).
#[derive(Clone)]
pub struct Sealer {
    sender: PeerId,
    recipient: PeerId,
    ephemeral: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("recipient", &self.recipient)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A fresh key agreement with `recipient`, its secret drawn from `rng`.
    pub fn new(
        rng: &mut impl RandomSource,
        sender: PeerId,
        recipient: PeerId,
    ) -> Result<Self, SealError> {
        let r = montgomery(&recipient).ok_or(SealError::BadRecipient)?;
        let mut e = [0u8; 32];
        rng.fill_bytes(&mut e);
        let ephemeral = MontgomeryPoint::mul_base_clamped(e).to_bytes();
        let shared = r.mul_clamped(e).to_bytes();
        e.zeroize();
        let cipher =
            cipher(shared, &ephemeral, &sender, &recipient).ok_or(SealError::BadRecipient)?;
        Ok(Sealer {
            sender,
            recipient,
            ephemeral,
            cipher,
        })
    }

    /// The ephemeral public key a recipient needs to open this epoch.
    pub fn ephemeral(&self) -> [u8; 32] {
        self.ephemeral
    }

    /// `plaintext`, as message `seq` of the sender's feed to the
    /// recipient, sealed: [`TAG_LEN`] bytes longer.
    pub fn seal(&self, seq: u64, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        self.seal_into(seq, plaintext, &mut out);
        out
    }

    /// [`Sealer::seal`], appending to `out` (after an envelope, say)
    /// instead of allocating.
    pub fn seal_into(&self, seq: u64, plaintext: &[u8], out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(plaintext);
        let ad = associated_data(&self.sender, &self.recipient, seq);
        // Encryption fails only for a message beyond 256 GiB, far past any
        // frame or block this crate admits.
        if let Ok(tag) = self
            .cipher
            .encrypt_in_place_detached(&nonce(seq), &ad, &mut out[at..])
        {
            out.extend_from_slice(&tag);
        }
    }
}

/// Epoch keys an [`Opener`] remembers: one per sender that seals to us at
/// once, for a busy inbox, at about 0.5 KiB each.
const OPENER_KEYS: usize = 64;

/// Opens messages sealed to one identity. Remembers the keys of the last
/// 64 epochs it opened, so the messages of one epoch cost one
/// key agreement.
pub struct Opener {
    me: PeerId,
    secret: [u8; 32],
    /// Most recently used last.
    keys: Vec<(PeerId, [u8; 32], XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl Opener {
    /// An opener for messages sealed to `keypair`'s identity.
    pub fn new(keypair: &Keypair) -> Self {
        Opener {
            me: keypair.peer_id(),
            secret: keypair.x25519_secret(),
            keys: Vec::new(),
        }
    }

    /// Message `seq` from `sender`, sealed with `ephemeral`, opened.
    ///
    /// # Errors
    ///
    /// [`SealError::Forged`] when it was not sealed to this identity by
    /// `sender` at `seq`, or any byte of it changed.
    pub fn open(
        &mut self,
        sender: PeerId,
        ephemeral: &[u8; 32],
        seq: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let mut out = sealed.to_vec();
        self.open_in_place(sender, ephemeral, seq, &mut out)?;
        Ok(out)
    }

    /// [`Opener::open`] on `buf` itself: on success it holds the message
    /// (the tag cut off); on failure its bytes are unspecified.
    pub fn open_in_place(
        &mut self,
        sender: PeerId,
        ephemeral: &[u8; 32],
        seq: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let ad = associated_data(&sender, &self.me, seq);
        let c = self.key(sender, ephemeral)?;
        let body = buf.len().checked_sub(TAG_LEN).ok_or(SealError::Forged)?;
        let tag = Tag::clone_from_slice(&buf[body..]);
        c.decrypt_in_place_detached(&nonce(seq), &ad, &mut buf[..body], &tag)
            .map_err(|_| SealError::Forged)?;
        buf.truncate(body);
        Ok(())
    }

    /// The key of `sender`'s epoch `ephemeral`: remembered, or agreed now
    /// (forgetting the least recently used when too many are held).
    fn key(
        &mut self,
        sender: PeerId,
        ephemeral: &[u8; 32],
    ) -> Result<&XChaCha20Poly1305, SealError> {
        let at = match self
            .keys
            .iter()
            .rposition(|(s, e, _)| *s == sender && e == ephemeral)
        {
            Some(at) => at,
            None => {
                let shared = MontgomeryPoint(*ephemeral)
                    .mul_clamped(self.secret)
                    .to_bytes();
                let c =
                    cipher(shared, ephemeral, &sender, &self.me).ok_or(SealError::BadEphemeral)?;
                if self.keys.len() >= OPENER_KEYS {
                    self.keys.remove(0);
                }
                self.keys.push((sender, *ephemeral, c));
                self.keys.len() - 1
            }
        };
        // Most recently used last, so that a hit on the newest is cheap.
        let last = self.keys.len() - 1;
        if at != last {
            let k = self.keys.remove(at);
            self.keys.push(k);
        }
        Ok(&self.keys[last].2)
    }
}

/// `id` as an X25519 public key, if it is a valid ed25519 key.
fn montgomery(id: &PeerId) -> Option<MontgomeryPoint> {
    VerifyingKey::from_bytes(&id.0)
        .ok()
        .map(|k| k.to_montgomery())
}

/// The batch cipher; `None` when the shared secret is all zeros (a key of
/// small order contributed nothing secret).
fn cipher(
    mut shared: [u8; 32],
    ephemeral: &[u8; 32],
    sender: &PeerId,
    recipient: &PeerId,
) -> Option<XChaCha20Poly1305> {
    if shared == [0; 32] {
        return None;
    }
    let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
    h.update(&shared);
    h.update(ephemeral);
    h.update(&sender.0);
    h.update(&recipient.0);
    let mut key = *h.finalize().as_bytes();
    shared.zeroize();
    let c = XChaCha20Poly1305::new(&key.into());
    key.zeroize();
    Some(c)
}

fn nonce(seq: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[..8].copy_from_slice(&seq.to_le_bytes());
    n.into()
}

/// Bytes of the associated data: domain, two ids, seq.
const AD_LEN: usize = AD_DOMAIN.len() + 32 + 32 + 8;

fn associated_data(sender: &PeerId, recipient: &PeerId, seq: u64) -> [u8; AD_LEN] {
    let mut ad = [0u8; AD_LEN];
    let (domain, rest) = ad.split_at_mut(AD_DOMAIN.len());
    domain.copy_from_slice(AD_DOMAIN);
    rest[..32].copy_from_slice(&sender.0);
    rest[32..64].copy_from_slice(&recipient.0);
    rest[64..].copy_from_slice(&seq.to_le_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use quickcheck::{quickcheck, TestResult};

    fn keys() -> (Keypair, Keypair, Keypair) {
        let mut rng = SeededRng::from_u64(7);
        (
            Keypair::generate(&mut rng),
            Keypair::generate(&mut rng),
            Keypair::generate(&mut rng),
        )
    }

    fn sealed(seq: u64, msg: &[u8]) -> (Keypair, Keypair, Keypair, [u8; 32], Vec<u8>) {
        let (a, b, c) = keys();
        let s = Sealer::new(&mut SeededRng::from_u64(1), a.peer_id(), b.peer_id()).unwrap();
        let out = s.seal(seq, msg);
        (a, b, c, s.ephemeral(), out)
    }

    #[test]
    fn the_recipient_opens_what_was_sealed_to_it() {
        let (a, b, _, e, out) = sealed(3, b"hello");
        assert_eq!(out.len(), 5 + TAG_LEN);
        assert!(!out.windows(5).any(|w| w == b"hello"));
        assert_eq!(
            Opener::new(&b).open(a.peer_id(), &e, 3, &out).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn a_third_key_cannot_open_and_neither_can_the_sender() {
        let (a, b, c, e, out) = sealed(0, b"secret");
        for other in [&c, &a] {
            let r = Opener::new(other).open(a.peer_id(), &e, 0, &out);
            assert_eq!(r, Err(SealError::Forged));
        }
        // Nor does it open as from another sender or at another position.
        let mut opener = Opener::new(&b);
        assert_eq!(
            opener.open(c.peer_id(), &e, 0, &out),
            Err(SealError::Forged)
        );
        assert_eq!(
            opener.open(a.peer_id(), &e, 1, &out),
            Err(SealError::Forged)
        );
        assert!(opener.open(a.peer_id(), &e, 0, &out).is_ok());
    }

    #[test]
    fn a_degenerate_ephemeral_key_is_refused() {
        let (a, b, _, _, out) = sealed(0, b"x");
        let zero = [0u8; 32];
        assert_eq!(
            Opener::new(&b).open(a.peer_id(), &zero, 0, &out),
            Err(SealError::BadEphemeral)
        );
    }

    #[test]
    fn one_epoch_shares_one_key_and_epochs_differ() {
        let (a, b, _) = keys();
        let mut rng = SeededRng::from_u64(2);
        let s1 = Sealer::new(&mut rng, a.peer_id(), b.peer_id()).unwrap();
        let s2 = Sealer::new(&mut rng, a.peer_id(), b.peer_id()).unwrap();
        assert_ne!(s1.ephemeral(), s2.ephemeral());
        assert_ne!(s1.seal(0, b"same"), s2.seal(0, b"same"));
        let mut opener = Opener::new(&b);
        for (s, seq) in [(&s1, 0), (&s1, 1), (&s2, 2), (&s1, 3), (&s2, 4)] {
            let out = s.seal(seq, b"m");
            assert_eq!(
                opener.open(a.peer_id(), &s.ephemeral(), seq, &out).unwrap(),
                b"m"
            );
        }
        assert_eq!(opener.keys.len(), 2);
    }

    #[test]
    fn the_opener_forgets_the_least_recently_used_key() {
        let (a, b, _) = keys();
        let mut rng = SeededRng::from_u64(3);
        let mut opener = Opener::new(&b);
        let first = Sealer::new(&mut rng, a.peer_id(), b.peer_id()).unwrap();
        let seal_open = |opener: &mut Opener, s: &Sealer, seq| {
            let out = s.seal(seq, b"m");
            opener.open(a.peer_id(), &s.ephemeral(), seq, &out).unwrap()
        };
        seal_open(&mut opener, &first, 0);
        for seq in 1..OPENER_KEYS as u64 + 4 {
            let s = Sealer::new(&mut rng, a.peer_id(), b.peer_id()).unwrap();
            seal_open(&mut opener, &s, seq);
            // `first`, used again each time, stays.
            seal_open(&mut opener, &first, seq + 1000);
        }
        assert_eq!(opener.keys.len(), OPENER_KEYS);
        assert!(opener.keys.iter().any(|(_, e, _)| *e == first.ephemeral()));
    }

    quickcheck! {
        fn every_changed_byte_is_refused(msg: Vec<u8>, at: usize, flip: u8) -> TestResult {
            if flip == 0 {
                return TestResult::discard();
            }
            let (a, b, _, e, mut out) = sealed(9, &msg);
            let i = at % out.len();
            out[i] ^= flip;
            TestResult::from_bool(
                Opener::new(&b).open(a.peer_id(), &e, 9, &out) == Err(SealError::Forged),
            )
        }

        fn every_changed_ephemeral_byte_is_refused(at: usize, flip: u8) -> TestResult {
            if flip == 0 {
                return TestResult::discard();
            }
            let (a, b, _, mut e, out) = sealed(9, b"payload");
            e[at % 32] ^= flip;
            TestResult::from_bool(Opener::new(&b).open(a.peer_id(), &e, 9, &out).is_err())
        }
    }
}
