//! How one event lies in a broadcast feed block.
//!
//! `version: u8 (1) | name_len: u16 | name (UTF-8) | deps: u16 count |
//! count × (author 32 | length u64) | payload (protobuf)`. `deps` lists, for
//! each other author whose events the emitter had delivered more of since
//! its previous event, how many it had delivered: the event's causal past.

use crate::identity::PeerId;

const RECORD_VERSION: u8 = 1;
/// Longest event type name.
pub const MAX_NAME: usize = 256;

/// A decoded event block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord<'a> {
    /// The event type.
    pub name: &'a str,
    /// Per other author, how many of its events precede this one.
    pub deps: Vec<(PeerId, u64)>,
    /// The protobuf-encoded value.
    pub payload: &'a [u8],
}

impl<'a> EventRecord<'a> {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(5 + self.name.len() + 40 * self.deps.len() + self.payload.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&(self.deps.len() as u16).to_le_bytes());
        for (author, len) in &self.deps {
            out.extend_from_slice(&author.0);
            out.extend_from_slice(&len.to_le_bytes());
        }
        out.extend_from_slice(self.payload);
        out
    }

    /// Decodes a block; `None` if it is not a record of this version.
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        let (&v, rest) = bytes.split_first()?;
        if v != RECORD_VERSION {
            return None;
        }
        let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        if n > MAX_NAME {
            return None;
        }
        let name = std::str::from_utf8(rest.get(2..2 + n)?).ok()?;
        let rest = &rest[2 + n..];
        let d = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let deps_bytes = rest.get(2..2 + d * 40)?;
        let deps = deps_bytes.chunks_exact(40).map(dep).collect();
        Some(EventRecord {
            name,
            deps,
            payload: &rest[2 + d * 40..],
        })
    }
}

/// The first of a block's causes, from the `from`-th on, that `met` says
/// is not met, with its index; `None` when all are (or the block is not a
/// record: nothing to wait for). Reads the causes in place: an event that
/// waits is resumed where it stopped, so each of its causes is looked at
/// about once, however many it lists.
pub fn first_unmet(
    block: &[u8],
    from: usize,
    mut met: impl FnMut(&(PeerId, u64)) -> bool,
) -> Option<(usize, (PeerId, u64))> {
    let deps = deps_bytes(block)?;
    deps.chunks_exact(40)
        .enumerate()
        .skip(from)
        .map(|(i, c)| (i, dep(c)))
        .find(|(_, d)| !met(d))
}

/// The causes' bytes of a record block.
fn deps_bytes(block: &[u8]) -> Option<&[u8]> {
    let (&v, rest) = block.split_first()?;
    if v != RECORD_VERSION {
        return None;
    }
    let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let rest = rest.get(2 + n..)?;
    let d = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    rest.get(2..2 + d * 40)
}

fn dep(c: &[u8]) -> (PeerId, u64) {
    let mut id = [0u8; 32];
    id.copy_from_slice(&c[..32]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&c[32..40]);
    (PeerId(id), u64::from_le_bytes(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let r = EventRecord {
            name: "Hello",
            deps: vec![(PeerId([1; 32]), 7)],
            payload: b"\x0a\x01x",
        };
        let bytes = r.encode();
        assert_eq!(EventRecord::decode(&bytes), Some(r));
        for cut in 0..bytes.len() - 3 {
            assert!(EventRecord::decode(&bytes[..cut]).is_none() || cut >= bytes.len() - 3);
        }
    }
}
