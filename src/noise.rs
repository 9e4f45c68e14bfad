//! Noise sessions whose randomness comes from the node's seeded RNG.
//!
//! snow takes its randomness from a [`CryptoResolver`]; ours hands it a
//! [`SeededRng`] stream and leaves the primitives to snow's resolvers, with
//! ring's ChaCha20-Poly1305 where available (several times faster than the
//! pure-Rust one on small messages).

use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use crate::rng::{RandomSource, SeededRng};

/// The Noise protocol every connection runs.
pub const NOISE_PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// Largest Noise message, tag included.
pub const MAX_NOISE_MESSAGE: usize = 65535;
/// Authentication tag added to every transport message.
pub const TAG_LEN: usize = 16;
/// Largest plaintext one transport message can carry.
pub const MAX_PLAINTEXT: usize = MAX_NOISE_MESSAGE - TAG_LEN;

struct SeededRandom(SeededRng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// A resolver whose RNG is deterministic.
struct Resolver {
    rng: std::sync::Mutex<Option<SeededRng>>,
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        // snow asks once per builder; each builder gets its own resolver.
        let rng = self.rng.lock().ok()?.take()?;
        Some(Box::new(SeededRandom(rng)))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        #[cfg(fuzzing)]
        if matches!(choice, DHChoice::Curve25519) {
            return Some(Box::<fuzzing::XorDh>::default());
        }
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        RingResolver
            .resolve_hash(choice)
            .or_else(|| DefaultResolver.resolve_hash(choice))
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver
            .resolve_cipher(choice)
            .or_else(|| DefaultResolver.resolve_cipher(choice))
    }
}

/// A stand-in for X25519 in fuzzing builds only (`--cfg fuzzing`, which
/// cargo-fuzz sets): the fuzz targets that run handshakes spent nearly
/// all their time in instrumented curve arithmetic, which is snow's and
/// curve25519-dalek's to fuzz, not ours. Everything around the key
/// agreement (our payloads, our state machine) runs as in production.
#[cfg(fuzzing)]
mod fuzzing {
    use snow::types::{Dh, Random};

    /// The public key is the private key, and both ends' shared secret is
    /// the XOR of the two: agreeing, cheap, and of course insecure.
    #[derive(Default)]
    pub(super) struct XorDh([u8; 32]);

    impl Dh for XorDh {
        fn name(&self) -> &'static str {
            "25519"
        }
        fn pub_len(&self) -> usize {
            32
        }
        fn priv_len(&self) -> usize {
            32
        }
        fn set(&mut self, privkey: &[u8]) {
            let n = privkey.len().min(32);
            self.0[..n].copy_from_slice(&privkey[..n]);
        }
        fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
            rng.try_fill_bytes(&mut self.0)
        }
        fn pubkey(&self) -> &[u8] {
            &self.0
        }
        fn privkey(&self) -> &[u8] {
            &self.0
        }
        fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
            for ((o, a), b) in out.iter_mut().zip(&self.0).zip(pubkey) {
                *o = a ^ b;
            }
            Ok(())
        }
    }
}

fn params() -> NoiseParams {
    // The pattern is a constant that snow parses; a failure here is a bug
    // caught by every test, never a runtime condition.
    NOISE_PATTERN
        .parse()
        .unwrap_or_else(|_| unreachable!("valid Noise pattern"))
}

fn builder<'a>(rng: SeededRng) -> snow::Builder<'a> {
    snow::Builder::with_resolver(
        params(),
        Box::new(Resolver {
            rng: std::sync::Mutex::new(Some(rng)),
        }),
    )
}

/// A Noise static key pair. The private half is wiped when dropped.
#[derive(Clone)]
pub struct StaticKey {
    /// The X25519 private key.
    pub private: Vec<u8>,
    /// The X25519 public key.
    pub public: Vec<u8>,
}

impl Drop for StaticKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.private);
    }
}

impl StaticKey {
    /// Generates a static key from `rng`.
    pub fn generate(rng: SeededRng) -> Result<Self, snow::Error> {
        let kp = builder(rng).generate_keypair()?;
        Ok(StaticKey {
            private: kp.private,
            public: kp.public,
        })
    }
}

/// Starts a handshake as initiator (dialer) or responder.
pub fn handshake(
    key: &StaticKey,
    rng: SeededRng,
    initiator: bool,
) -> Result<snow::HandshakeState, snow::Error> {
    let b = builder(rng).local_private_key(&key.private)?;
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
}
