//! Signing with the node's key, with nonces prepared while the node is idle.
//!
//! An ed25519 signature is `R = [r]B` and `s = r + H(R, A, M)·a`. RFC 8032
//! derives the nonce `r` from the message, so the costly part, the scalar
//! multiplication `[r]B`, can only start once the message exists: it is most
//! of a signature, and a send waits for it. A [`Signer`] given a nonce seed
//! derives `r` from a secret nonce key and a counter instead, computes `[r]B`
//! while the node has nothing else to do ([`Signer::sign_ahead`]), and a
//! signature then costs a hash and two scalar operations. The signatures
//! verify exactly as RFC 8032 ones do: how a signer picks `r` is its own
//! business, as long as `r` is secret and never used twice.
//!
//! Never twice is the rule that matters: two signatures sharing an `r` give
//! away the secret key. Within a `Signer` the counter only moves forward (and
//! a `Signer` cannot be cloned); across `Signer`s of one key (a restarted
//! node, another process on the same data directory) the nonce keys differ
//! because each is derived from its own seed, which must be fresh randomness
//! every time. Hence the core prepares nonces only when its caller passes
//! such a seed ([`crate::Entropy::sign_ahead`]); without one it signs as RFC
//! 8032 says. The nonce key also hashes in the secret key, so a seed that
//! leaks does not make nonces predictable.

use curve25519_dalek::{EdwardsPoint, Scalar};
use ed25519_dalek::hazmat::ExpandedSecretKey;
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

use super::{Keypair, PeerId, Signature};

/// Domain separation for the nonce key.
const NONCE_KEY_CONTEXT: &[u8] = b"peermq signing nonces v1";

/// Something that signs with an identity key: a [`Keypair`] (RFC 8032) or a
/// [`Signer`].
pub trait Sign {
    /// The public key signatures verify against.
    fn peer_id(&self) -> PeerId;

    /// Signs `message`.
    fn sign(&mut self, message: &[u8]) -> Signature;
}

impl Sign for Keypair {
    fn peer_id(&self) -> PeerId {
        Keypair::peer_id(self)
    }

    fn sign(&mut self, message: &[u8]) -> Signature {
        Keypair::sign(self, message)
    }
}

/// A node's signing key, able to prepare its next nonce ahead of time.
///
/// Deliberately not `Clone`: two copies would draw the same nonces.
pub struct Signer {
    key: Keypair,
    ahead: Option<Ahead>,
}

/// The state of signing with prepared nonces.
struct Ahead {
    secret: ExpandedSecretKey,
    nonce_key: [u8; 32],
    /// The counter the next signature's nonce is derived from.
    next: u64,
    /// The nonce for `next`, if already computed.
    ready: Option<Nonce>,
}

/// A nonce `r` and its commitment `R = [r]B`, compressed.
struct Nonce {
    r: Scalar,
    commitment: [u8; 32],
}

impl Signer {
    /// A signer for `key`. With `nonce_seed`, it derives nonces from that
    /// seed and can prepare them ahead ([`Signer::sign_ahead`]); the seed
    /// must be fresh randomness, never given to another `Signer` of the same
    /// key (see the module documentation). Without, it signs as RFC 8032.
    pub fn new(key: Keypair, nonce_seed: Option<[u8; 32]>) -> Self {
        let ahead = nonce_seed.map(|seed| {
            let mut secret_bytes = key.to_bytes();
            let secret = ExpandedSecretKey::from(&secret_bytes);
            secret_bytes.zeroize();
            let mut digest = Sha512::new()
                .chain_update(NONCE_KEY_CONTEXT)
                .chain_update(secret.hash_prefix)
                .chain_update(seed)
                .finalize();
            let mut nonce_key = [0u8; 32];
            nonce_key.copy_from_slice(&digest[..32]);
            digest.as_mut_slice().zeroize();
            Ahead {
                secret,
                nonce_key,
                next: 0,
                ready: None,
            }
        });
        Signer { key, ahead }
    }

    /// The key pair, for signatures nobody waits for (receipts, handshakes).
    pub fn keypair(&self) -> &Keypair {
        &self.key
    }

    /// Whether [`Signer::sign_ahead`] has work to do.
    pub fn can_sign_ahead(&self) -> bool {
        self.ahead.as_ref().is_some_and(|a| a.ready.is_none())
    }

    /// Computes the next signature's nonce now, so that signing later is
    /// quick. Returns whether there was anything to compute. Signatures are
    /// the same whether or not this is called.
    pub fn sign_ahead(&mut self) -> bool {
        match &mut self.ahead {
            Some(a) if a.ready.is_none() => {
                a.ready = Some(a.nonce(a.next));
                true
            }
            _ => false,
        }
    }
}

impl Sign for Signer {
    fn peer_id(&self) -> PeerId {
        self.key.peer_id()
    }

    fn sign(&mut self, message: &[u8]) -> Signature {
        let Some(a) = &mut self.ahead else {
            return self.key.sign(message);
        };
        // Fuzzing builds sign with a stand-in (`Keypair::sign`).
        if cfg!(fuzzing) {
            return self.key.sign(message);
        }
        let nonce = a.ready.take().unwrap_or_else(|| a.nonce(a.next));
        // A u64 of signatures is out of reach; wrapping would only ever
        // follow 2^64 of them.
        a.next = a.next.wrapping_add(1);
        let challenge = Sha512::new()
            .chain_update(nonce.commitment)
            .chain_update(self.key.peer_id().0)
            .chain_update(message)
            .finalize();
        let k = Scalar::from_bytes_mod_order_wide(&challenge.into());
        let s = k * a.secret.scalar + nonce.r;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&nonce.commitment);
        out[32..].copy_from_slice(s.as_bytes());
        out
    }
}

impl Ahead {
    /// The nonce for counter value `i`.
    fn nonce(&self, i: u64) -> Nonce {
        let mut digest = Sha512::new()
            .chain_update(self.nonce_key)
            .chain_update(i.to_le_bytes())
            .finalize();
        let mut wide = [0u8; 64];
        wide.copy_from_slice(&digest);
        let r = Scalar::from_bytes_mod_order_wide(&wide);
        wide.zeroize();
        digest.as_mut_slice().zeroize();
        let commitment = EdwardsPoint::mul_base(&r).compress().to_bytes();
        Nonce { r, commitment }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.nonce_key.zeroize();
    }
}

impl Drop for Nonce {
    fn drop(&mut self) {
        self.r.zeroize();
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("peer_id", &self.key.peer_id())
            .field("signs_ahead", &self.ahead.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    fn key(seed: u64) -> Keypair {
        Keypair::generate(&mut SeededRng::from_u64(seed))
    }

    #[test]
    fn prepared_signatures_verify_and_do_not_depend_on_preparing() {
        let mut eager = Signer::new(key(1), Some([7; 32]));
        let mut lazy = Signer::new(key(1), Some([7; 32]));
        let id = eager.peer_id();
        for i in 0..20u8 {
            let msg = [i; 40];
            assert!(eager.can_sign_ahead());
            assert!(eager.sign_ahead());
            assert!(!eager.can_sign_ahead() && !eager.sign_ahead());
            let a = eager.sign(&msg);
            let b = lazy.sign(&msg);
            assert_eq!(a, b, "signature {i}");
            id.verify(&msg, &a).unwrap();
            assert!(id.verify(&[i ^ 1; 40], &a).is_err());
        }
    }

    #[test]
    fn nonces_never_repeat_within_a_signer_or_across_seeds() {
        let mut seen = std::collections::HashSet::new();
        for seed in [[1u8; 32], [2; 32]] {
            let mut s = Signer::new(key(2), Some(seed));
            for _ in 0..50 {
                // The same message every time: only the nonce can vary R.
                let sig = s.sign(b"same");
                assert!(seen.insert(sig[..32].to_vec()), "a commitment repeated");
            }
        }
        // Another key with the same seed draws other nonces too.
        let sig = Signer::new(key(3), Some([1; 32])).sign(b"same");
        assert!(seen.insert(sig[..32].to_vec()));
    }

    #[test]
    fn without_a_seed_it_signs_as_rfc_8032() {
        let mut s = Signer::new(key(4), None);
        assert!(!s.can_sign_ahead() && !s.sign_ahead());
        assert_eq!(s.sign(b"m"), key(4).sign(b"m"));
    }
}
