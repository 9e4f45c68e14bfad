//! Node identity: an ed25519 key pair, the public key as a peer id, and the
//! [`Signer`] that signs a node's feeds.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::rng::RandomSource;

pub mod seal;
mod signer;

pub use signer::{Sign, Signer};

/// Length in bytes of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// An ed25519 signature, as raw bytes.
pub type Signature = [u8; SIGNATURE_LEN];

/// A node's identity: its ed25519 signing key.
///
/// The secret never leaves this type except through [`Keypair::to_bytes`],
/// which exists so a store can persist it.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// Generates a fresh key pair from an injected random source.
    pub fn generate(rng: &mut impl RandomSource) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self::from_bytes(&secret)
    }

    /// Rebuilds a key pair from its 32-byte secret seed.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// Returns the 32-byte secret seed; store it somewhere private.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half, which is this node's id.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.signing.verifying_key().to_bytes())
    }

    /// The X25519 secret scalar of this identity (the ed25519 secret's
    /// expanded scalar bytes, as libsodium's `crypto_sign_ed25519_sk_to_curve25519`),
    /// for opening messages sealed to it. Never stored or sent.
    pub(crate) fn x25519_secret(&self) -> [u8; 32] {
        self.signing.to_scalar_bytes()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        scheme::sign(&self.signing, message)
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

/// A peer's id: its 32-byte ed25519 public key, shown as 64 lowercase hex
/// characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub [u8; 32]);

impl PeerId {
    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks `signature` over `message` against this public key.
    ///
    /// RFC 8032 verification with canonical encodings (a malleated `s` or a
    /// non-canonical `R` is rejected), and a weak (small-order) key verifies
    /// nothing. Together these make a signature bind its key and message
    /// without also checking `R`'s order at every verification, which costs
    /// a seventh of it.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), BadSignature> {
        self.verify_key().verify(message, signature)
    }

    /// The key parsed for checking signatures: keep it where one peer's
    /// signatures are checked again and again, since parsing (decompressing
    /// the curve point) costs a good part of a verification.
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey(
            VerifyingKey::from_bytes(&self.0)
                .ok()
                .filter(|k| !k.is_weak()),
        )
    }

    /// A short form for logs: the first 8 hex characters and an ellipsis.
    pub fn short(&self) -> String {
        format!("{}…", &hex::encode(&self.0[..4]))
    }
}

/// A peer's public key, parsed once for checking many of its signatures
/// (see [`PeerId::verify_key`]).
#[derive(Clone, Copy, Debug)]
pub struct VerifyKey(
    /// `None` for bytes that are not a valid key, or a weak one: nothing
    /// verifies.
    Option<VerifyingKey>,
);

impl VerifyKey {
    /// Checks `signature` over `message`, as [`PeerId::verify`].
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), BadSignature> {
        let key = self.0.as_ref().ok_or(BadSignature)?;
        scheme::verify(key, message, signature)
            .then_some(())
            .ok_or(BadSignature)
    }
}

/// ed25519 (RFC 8032, as ed25519-dalek checks it).
#[cfg(not(fuzzing))]
mod scheme {
    use super::Signature;
    use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

    pub(super) fn sign(key: &SigningKey, message: &[u8]) -> Signature {
        key.sign(message).to_bytes()
    }

    pub(super) fn verify(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        key.verify(message, &sig).is_ok()
    }
}

/// A stand-in for ed25519 in fuzzing builds only (`--cfg fuzzing`, which
/// cargo-fuzz sets; see fuzz/README.md). The targets that
/// open nodes spent most of each execution signing and checking heads,
/// receipts and handshakes; the curve arithmetic is ed25519-dalek's to
/// fuzz, what we fuzz is what our code does with the answer.
///
/// A signature is the message's BLAKE3 keyed by the public key, twice: the
/// right key and message verify, anything else does not (a fuzzer cannot
/// forge one any more than a real signature), and a weak or invalid key
/// still verifies nothing. Anyone holding the public key can sign, so
/// such a build must never meet a real peer.
#[cfg(fuzzing)]
mod scheme {
    use super::Signature;
    use ed25519_dalek::{SigningKey, VerifyingKey};

    fn keyed(public: &[u8; 32], message: &[u8]) -> Signature {
        let h = blake3::keyed_hash(public, message);
        let mut sig = [0u8; super::SIGNATURE_LEN];
        sig[..32].copy_from_slice(h.as_bytes());
        sig[32..].copy_from_slice(h.as_bytes());
        sig
    }

    pub(super) fn sign(key: &SigningKey, message: &[u8]) -> Signature {
        keyed(key.verifying_key().as_bytes(), message)
    }

    pub(super) fn verify(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
        keyed(key.as_bytes(), message) == *signature
    }
}

/// A signature did not verify against the claimed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify")]
pub struct BadSignature;

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        // Encoding 32 bytes into 64 always fits.
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

/// Why a string is not a peer id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdError {
    /// The string has the wrong length.
    #[error("a peer id is 64 hex characters, but this one has {0}; copy the whole output of `peermq id`")]
    Length(usize),
    /// The string holds a character that is not a hex digit.
    #[error("a peer id is 64 hex characters, but character {position} is {ch:?}, which is not a hex digit")]
    NotHex {
        /// 1-based position of the offending character.
        position: usize,
        /// The offending character.
        ch: char,
    },
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((i, ch)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(PeerIdError::NotHex {
                position: i + 1,
                ch,
            });
        }
        if s.len() != 64 {
            return Err(PeerIdError::Length(s.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| PeerIdError::Length(s.len()))?;
        Ok(PeerId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    #[test]
    fn keypair_roundtrips_through_bytes() {
        let kp = Keypair::generate(&mut SeededRng::from_u64(3));
        let again = Keypair::from_bytes(&kp.to_bytes());
        assert_eq!(kp.peer_id(), again.peer_id());
        let sig = again.sign(b"hello");
        kp.peer_id().verify(b"hello", &sig).unwrap();
        assert_eq!(kp.peer_id().verify(b"hellO", &sig), Err(BadSignature));
    }

    #[test]
    fn weak_keys_and_malleated_signatures_verify_nothing() {
        // The identity point as a key: with R = B and s = 1 the cofactorless
        // equation [s]B = R + [k]A holds for every message, so only the
        // weak-key check stands between this and a universal forgery.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&[0x66; 32]);
        sig[0] = 0x58;
        sig[32] = 1;
        assert_eq!(
            PeerId(identity).verify(b"anything", &sig),
            Err(BadSignature)
        );
        // s + l verifies the same equation; only the canonical s is taken.
        let kp = Keypair::generate(&mut SeededRng::from_u64(5));
        let good = kp.sign(b"m");
        kp.peer_id().verify(b"m", &good).unwrap();
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut bad = good;
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(bad[32 + i]) + u16::from(l[i]) + carry;
            bad[32 + i] = v as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0, "s + l fits 32 bytes");
        assert_eq!(kp.peer_id().verify(b"m", &bad), Err(BadSignature));
    }

    /// `Debug` of everything holding the identity's secret shows the
    /// public key at most: in no encoding does the secret appear.
    #[test]
    fn debug_output_never_shows_the_secret() {
        let kp = Keypair::generate(&mut SeededRng::from_u64(6));
        let secret = kp.to_bytes();
        let scalar = kp.x25519_secret();
        let shown = [
            format!("{kp:?}"),
            format!("{kp:#?}"),
            format!("{:?}", Signer::new(kp.clone(), None)),
            format!("{:#?}", Signer::new(kp.clone(), Some([7; 32]))),
        ];
        let forms = |bytes: &[u8; 32]| {
            [
                hex::encode(bytes),
                hex::encode_upper(bytes),
                hex::encode(&bytes[..8]),
                format!("{bytes:?}"),
                format!("{:?}", &bytes[..8]),
                format!("{bytes:x?}"),
                format!("{:?}", &bytes[..]),
            ]
        };
        for text in &shown {
            assert!(text.contains(&kp.peer_id().short()), "{text}");
            for form in forms(&secret).iter().chain(forms(&scalar).iter()) {
                assert!(!text.contains(form.as_str()), "{text} shows {form}");
            }
        }
    }

    #[test]
    fn peer_id_hex_roundtrip() {
        let id = Keypair::generate(&mut SeededRng::from_u64(4)).peer_id();
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(s.parse::<PeerId>().unwrap(), id);
        assert_eq!(s.to_uppercase().parse::<PeerId>().unwrap(), id);
    }

    #[test]
    fn bad_peer_ids_say_what_is_wrong() {
        assert_eq!("abc".parse::<PeerId>(), Err(PeerIdError::Length(3)));
        let mut s = "0".repeat(64);
        s.replace_range(9..10, "g");
        assert_eq!(
            s.parse::<PeerId>(),
            Err(PeerIdError::NotHex {
                position: 10,
                ch: 'g'
            })
        );
        let msg = "zz".parse::<PeerId>().unwrap_err().to_string();
        assert!(msg.contains("character 1 is 'z'"), "{msg}");
        let msg = "ab".parse::<PeerId>().unwrap_err().to_string();
        assert!(msg.contains("has 2"), "{msg}");
    }
}
