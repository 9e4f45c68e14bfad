//! Feed identities: who writes a feed, and for whom.

use std::fmt;

use crate::identity::PeerId;

/// What a feed carries and who may read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FeedKind {
    /// Queue messages from the author to one recipient.
    Queue {
        /// The peer the messages are addressed to.
        recipient: PeerId,
    },
    /// The author's broadcast feed of emitter events.
    Broadcast,
}

/// A feed's author and kind: everything its id is derived from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedDescriptor {
    /// The only key that can sign this feed's heads.
    pub author: PeerId,
    /// What the feed carries.
    pub kind: FeedKind,
}

impl FeedDescriptor {
    /// The queue feed from `author` to `recipient`.
    pub fn queue(author: PeerId, recipient: PeerId) -> Self {
        FeedDescriptor {
            author,
            kind: FeedKind::Queue { recipient },
        }
    }

    /// The broadcast feed of `author`.
    pub fn broadcast(author: PeerId) -> Self {
        FeedDescriptor {
            author,
            kind: FeedKind::Broadcast,
        }
    }

    /// The feed's id.
    ///
    /// Derived with BLAKE3 in key-derivation mode under a context string per
    /// kind, so a queue feed and a broadcast feed can never share an id, and
    /// A→B never collides with B→A (the original's storage bug).
    pub fn id(&self) -> FeedId {
        let h = match self.kind {
            FeedKind::Queue { recipient } => {
                let mut h = blake3::Hasher::new_derive_key("peermq v1 queue feed id");
                h.update(&self.author.0);
                h.update(&recipient.0);
                h
            }
            FeedKind::Broadcast => {
                let mut h = blake3::Hasher::new_derive_key("peermq v1 broadcast feed id");
                h.update(&self.author.0);
                h
            }
        };
        FeedId(*h.finalize().as_bytes())
    }

    /// Encodes the descriptor: author, a kind byte, and the recipient if any.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.author.0);
        match self.kind {
            FeedKind::Queue { recipient } => {
                out.push(0);
                out.extend_from_slice(&recipient.0);
            }
            FeedKind::Broadcast => out.push(1),
        }
    }

    /// Decodes a descriptor from the front of `bytes`, returning the rest.
    pub fn decode(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let author = PeerId(bytes.get(..32)?.try_into().ok()?);
        match bytes.get(32)? {
            0 => {
                let recipient = PeerId(bytes.get(33..65)?.try_into().ok()?);
                Some((FeedDescriptor::queue(author, recipient), &bytes[65..]))
            }
            1 => Some((FeedDescriptor::broadcast(author), &bytes[33..])),
            _ => None,
        }
    }
}

/// A feed's 32-byte id, derived from its [`FeedDescriptor`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedId(pub [u8; 32]);

impl fmt::Display for FeedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for FeedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FeedId({}…)", hex::encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_separate_direction_and_kind() {
        let a = PeerId([1; 32]);
        let b = PeerId([2; 32]);
        let ab = FeedDescriptor::queue(a, b).id();
        assert_ne!(ab, FeedDescriptor::queue(b, a).id());
        assert_ne!(ab, FeedDescriptor::broadcast(a).id());
        assert_ne!(
            FeedDescriptor::queue(a, a).id(),
            FeedDescriptor::broadcast(a).id()
        );
    }

    #[test]
    fn descriptor_roundtrip() {
        for d in [
            FeedDescriptor::queue(PeerId([3; 32]), PeerId([4; 32])),
            FeedDescriptor::broadcast(PeerId([5; 32])),
        ] {
            let mut buf = Vec::new();
            d.encode(&mut buf);
            buf.push(9);
            let (back, rest) = FeedDescriptor::decode(&buf).unwrap();
            assert_eq!(back, d);
            assert_eq!(rest, &[9]);
        }
        assert!(FeedDescriptor::decode(&[0; 32]).is_none());
    }
}
