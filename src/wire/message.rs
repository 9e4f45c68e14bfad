//! Protocol messages and their encoding.

use crate::feed::{FeedDescriptor, FeedId, SignedHead, SIGNED_HEAD_LEN};
use crate::identity::{PeerId, Signature, SIGNATURE_LEN};
use crate::merkle::flat::{self, MAX_LENGTH};
use crate::merkle::{fits, Hash, Node, RangeProof};
use crate::varint;

use super::{MailboxList, Receipt};

/// Bytes before each message's body: `len: u32 LE` and `type: u8`.
pub const MSG_HEADER_LEN: usize = 5;

const T_HEAD: u8 = 1;
const T_REQUEST: u8 = 2;
const T_DATA: u8 = 3;
const T_NO_DATA: u8 = 4;
const T_ACK: u8 = 5;
const T_KEEPALIVE: u8 = 6;
const T_CLOSE: u8 = 7;
const T_SUMMARY: u8 = 8;
const T_HAVE: u8 = 9;
const T_MAILBOXES: u8 = 10;
const T_REFUSED: u8 = 11;
const T_HELD: u8 = 12;

/// Most entries a have-list may carry.
pub const MAX_HAVE_ENTRIES: usize = 1 << 16;

/// Most proof nodes a data message may carry: two paths of a 2^64 tree.
pub const MAX_PROOF_NODES: usize = 130;
/// Most ranges one request message may carry (each is one request against
/// the responder's limit of requests in flight).
pub const MAX_REQUEST_RANGES: usize = 256;
/// Most ranges a receipt may carry.
pub const MAX_RECEIPT_RANGES: usize = 4096;
/// Longest close text, in bytes.
pub const MAX_CLOSE_TEXT: usize = 256;

/// One protocol message, borrowing block bytes from the receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A feed's latest signed head, with the descriptor it was derived from.
    Head {
        /// Author and kind of the feed.
        desc: FeedDescriptor,
        /// The head.
        head: SignedHead,
    },
    /// Asks for ranges of blocks of `feed`, each its own request: range `i`
    /// has id `first_id + i`, which the answer (a [`DataMsg`] or a
    /// [`Message::NoData`]) names instead of the feed. Sparse readers ask for
    /// many small ranges at once, so the feed id is sent once for all.
    Request {
        /// The feed.
        feed: FeedId,
        /// The requester's verified length: proofs are made for a verifier
        /// that holds the roots of `base` blocks.
        base: u64,
        /// Id of the first range; the others follow in order.
        first_id: u64,
        /// The ranges (at most [`MAX_REQUEST_RANGES`]).
        ranges: Vec<RangeRequest>,
    },
    /// Blocks with their proof.
    Data(DataMsg<'a>),
    /// The sender cannot serve blocks `[start, end)` of request `request`,
    /// where `start` is the request's first block.
    NoData {
        /// The request's id.
        request: u64,
        /// End of the refused blocks.
        end: u64,
    },
    /// A signed receipt.
    Ack(Receipt),
    /// Nothing; keeps an idle connection alive.
    Keepalive,
    /// The sender is closing the connection.
    Close {
        /// Why.
        code: CloseCode,
        /// Detail for humans.
        text: &'a str,
    },
    /// A digest of the broadcast feeds the sender can serve: how many, and
    /// BLAKE3 over the sorted `(feed id, length)` pairs. Equal digests mean
    /// nothing to exchange, so a reconnect costs the same whatever the
    /// number of feeds.
    Summary {
        /// Number of feeds.
        count: u32,
        /// The digest.
        digest: [u8; 32],
    },
    /// The broadcast feeds the sender can serve, with their lengths, sent
    /// when summaries differ; the receiver answers with heads of the feeds
    /// it holds more of.
    Have {
        /// `(feed id, length)`, sorted by feed id.
        feeds: Vec<(FeedId, u64)>,
    },
    /// The sender's signed list of its mailboxes, sent by a recipient to
    /// each peer it connects to.
    Mailboxes(MailboxList),
    /// A mailbox will not hold `feed` (announced with a head): a polite
    /// refusal, which leaves the connection open.
    Refused {
        /// The feed refused.
        feed: FeedId,
        /// Why.
        reason: RefuseReason,
    },
    /// A mailbox tells the author of `feed` that it stores the feed's
    /// blocks `[0, length)`, less those the recipient acknowledged (whose
    /// bytes it dropped): what waits there for the recipient. Informational
    /// (the author shows it in its status); a mailbox that lies here only
    /// misinforms its own author.
    Held {
        /// The author's queue feed.
        feed: FeedId,
        /// Length of the prefix of the feed the mailbox stores.
        length: u64,
    },
    /// A message type this version does not know; skipped.
    Unknown {
        /// Its type byte.
        kind: u8,
    },
}

/// Why a mailbox refused to hold a feed ([`Message::Refused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// The feed's recipient has not named this node as its mailbox.
    NotNamed,
    /// A quota (per sender or per recipient) is used up; it frees as the
    /// recipient collects its mail.
    Full,
    /// This node does not serve as a mailbox.
    NotAMailbox,
    /// A reason this version does not know.
    Other(u8),
}

impl RefuseReason {
    fn code(self) -> u8 {
        match self {
            RefuseReason::NotNamed => 1,
            RefuseReason::Full => 2,
            RefuseReason::NotAMailbox => 3,
            RefuseReason::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            1 => RefuseReason::NotNamed,
            2 => RefuseReason::Full,
            3 => RefuseReason::NotAMailbox,
            c => RefuseReason::Other(c),
        }
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefuseReason::NotNamed => f.write_str("the recipient has not named this mailbox"),
            RefuseReason::Full => f.write_str("the mailbox's quota is used up"),
            RefuseReason::NotAMailbox => f.write_str("the peer is not a mailbox"),
            RefuseReason::Other(c) => write!(f, "refused (reason {c})"),
        }
    }
}

/// One range of a [`Message::Request`]: blocks `[start, end)`.
/// `start == end` asks for the head only (an upgrade proof).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    /// First block wanted.
    pub start: u64,
    /// One past the last block wanted.
    pub end: u64,
    /// A node the requester holds (or will, see PROTOCOL.md) that covers
    /// the range; the proof may stop there, and then carries no head.
    pub trusted: Option<u64>,
}

/// Blocks `proof.start..proof.end` of the feed request `request` asked for,
/// proven against `head`.
#[derive(Debug, PartialEq, Eq)]
pub struct DataMsg<'a> {
    /// Id of the request this answers.
    pub request: u64,
    /// The head the proof ends in; absent when the proof stops at a node
    /// the requester trusts.
    pub head: Option<SignedHead>,
    /// The proof (with a head, its `length` equals the head's).
    pub proof: RangeProof,
    /// The blocks.
    pub blocks: Vec<&'a [u8]>,
}

/// Why a connection was closed, as carried in a close message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// No reason given, or an orderly shutdown.
    Normal = 0,
    /// The dialer is not an authorized peer.
    Unauthorized = 1,
    /// A frame or message could not be parsed.
    Malformed = 2,
    /// A signature or proof did not verify.
    BadData = 3,
    /// A size limit was exceeded.
    TooLarge = 4,
    /// A message arrived that the state does not allow.
    Unexpected = 5,
    /// A duplicate connection between the same peers lost the tie-break.
    Duplicate = 6,
    /// The peer was removed.
    Removed = 7,
    /// Nothing was heard for too long.
    Idle = 8,
    /// Too many requests in flight.
    Overloaded = 9,
    /// A code this version does not know.
    Other = 0xffff,
}

impl CloseCode {
    fn from_u16(v: u16) -> Self {
        use CloseCode::*;
        [
            Normal,
            Unauthorized,
            Malformed,
            BadData,
            TooLarge,
            Unexpected,
            Duplicate,
            Removed,
            Idle,
            Overloaded,
        ]
        .into_iter()
        .find(|c| *c as u16 == v)
        .unwrap_or(Other)
    }
}

/// Why bytes did not decode as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The body ended early.
    #[error("message type {0} is truncated")]
    Truncated(u8),
    /// The body has bytes left over.
    #[error("message type {0} has trailing bytes")]
    Trailing(u8),
    /// A field is out of its allowed range.
    #[error("message type {kind}: {what}")]
    Invalid {
        /// Message type.
        kind: u8,
        /// What is wrong.
        what: &'static str,
    },
}

/// The handshake payload each side sends inside the Noise handshake: its
/// protocol version, its ed25519 identity, and that identity's signature over
/// its Noise static key and the handshake so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakePayload {
    /// Highest protocol version the sender speaks.
    pub version: u16,
    /// The sender's identity.
    pub identity: PeerId,
    /// Signature binding the Noise static key and this handshake to
    /// `identity` ([`HandshakePayload::signing_bytes`]).
    pub signature: Signature,
}

const HANDSHAKE_MAGIC: &[u8; 6] = b"peermq";
const HANDSHAKE_CONTEXT: &[u8] = b"peermq v4 handshake\0";

impl HandshakePayload {
    /// Encoded size.
    pub const LEN: usize = 6 + 2 + 32 + SIGNATURE_LEN;

    /// The bytes an identity signs: a context string, the sender's Noise
    /// static key, and the Noise handshake hash just before the message that
    /// carries the payload. The hash covers both ephemeral keys, or the
    /// peer's for the listener's payload, so a signature vouches for one
    /// session only: a payload captured from one handshake is worthless in
    /// any other.
    pub fn signing_bytes(noise_static: &[u8], handshake_hash: &[u8]) -> Vec<u8> {
        [HANDSHAKE_CONTEXT, noise_static, handshake_hash].concat()
    }

    /// Encodes as magic, version, identity, signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(HANDSHAKE_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.identity.0);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes [`HandshakePayload::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::LEN || &bytes[..6] != HANDSHAKE_MAGIC {
            return None;
        }
        Some(HandshakePayload {
            version: u16::from_le_bytes(bytes[6..8].try_into().ok()?),
            identity: PeerId(bytes[8..40].try_into().ok()?),
            signature: bytes[40..].try_into().ok()?,
        })
    }

    /// Checks that `identity` signed `noise_static` in the handshake whose
    /// hash, before this payload's message, was `handshake_hash`.
    pub fn vouches_for(&self, noise_static: &[u8], handshake_hash: &[u8]) -> bool {
        self.identity
            .verify(
                &Self::signing_bytes(noise_static, handshake_hash),
                &self.signature,
            )
            .is_ok()
    }
}

/// Writes a message header and returns where the length goes, so the body
/// can be written in place and the length patched after.
fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind]);
    at
}

fn finish(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

impl Message<'_> {
    /// Appends the encoded message (header included) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Head { desc, head } => {
                let at = begin(out, T_HEAD);
                desc.encode(out);
                out.extend_from_slice(&head.encode());
                finish(out, at);
            }
            Message::Request {
                feed,
                base,
                first_id,
                ranges,
            } => {
                let at = begin(out, T_REQUEST);
                out.extend_from_slice(&feed.0);
                for v in [*base, *first_id, ranges.len() as u64] {
                    varint::write(out, v);
                }
                for r in ranges {
                    varint::write(out, r.start);
                    varint::write(out, r.end - r.start);
                    write_trusted(out, r.trusted);
                }
                finish(out, at);
            }
            Message::Data(d) => DataMsg::encode_parts(
                d.request,
                d.head.as_ref(),
                &d.proof,
                d.blocks.iter().copied(),
                out,
            ),
            Message::NoData { request, end } => {
                let at = begin(out, T_NO_DATA);
                varint::write(out, *request);
                varint::write(out, *end);
                finish(out, at);
            }
            Message::Ack(r) => {
                let at = begin(out, T_ACK);
                r.encode_compact(out);
                finish(out, at);
            }
            Message::Keepalive => {
                let at = begin(out, T_KEEPALIVE);
                finish(out, at);
            }
            Message::Close { code, text } => {
                let at = begin(out, T_CLOSE);
                out.extend_from_slice(&(*code as u16).to_le_bytes());
                let mut end = text.len().min(MAX_CLOSE_TEXT);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&text.as_bytes()[..end]);
                finish(out, at);
            }
            Message::Summary { count, digest } => {
                let at = begin(out, T_SUMMARY);
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(digest);
                finish(out, at);
            }
            Message::Have { feeds } => {
                let at = begin(out, T_HAVE);
                out.extend_from_slice(&(feeds.len() as u32).to_le_bytes());
                for (f, len) in feeds {
                    out.extend_from_slice(&f.0);
                    out.extend_from_slice(&len.to_le_bytes());
                }
                finish(out, at);
            }
            Message::Mailboxes(list) => {
                let at = begin(out, T_MAILBOXES);
                list.encode(out);
                finish(out, at);
            }
            Message::Refused { feed, reason } => {
                let at = begin(out, T_REFUSED);
                out.extend_from_slice(&feed.0);
                out.push(reason.code());
                finish(out, at);
            }
            Message::Held { feed, length } => {
                let at = begin(out, T_HELD);
                out.extend_from_slice(&feed.0);
                varint::write(out, *length);
                finish(out, at);
            }
            Message::Unknown { kind } => {
                let at = begin(out, *kind);
                finish(out, at);
            }
        }
    }

    /// Decodes one message from `kind` and `body` (the header already
    /// split off). `max_blocks` bounds the blocks of a data message.
    pub fn decode(kind: u8, body: &[u8], max_blocks: u64) -> Result<Message<'_>, MessageError> {
        let mut r = Reader { bytes: body, kind };
        let msg = match kind {
            T_HEAD => {
                let (desc, rest) =
                    FeedDescriptor::decode(body).ok_or(MessageError::Truncated(kind))?;
                r.bytes = rest;
                let head = SignedHead::decode(r.take(SIGNED_HEAD_LEN)?)
                    .ok_or(MessageError::Truncated(kind))?;
                if head.feed != desc.id() {
                    return Err(MessageError::Invalid {
                        kind,
                        what: "head does not match its descriptor",
                    });
                }
                if head.length > MAX_LENGTH {
                    return Err(MessageError::Invalid {
                        kind,
                        what: "head length beyond the protocol maximum",
                    });
                }
                Message::Head { desc, head }
            }
            T_REQUEST => {
                let feed = FeedId(r.array()?);
                let (base, first_id, count) = (r.varint()?, r.varint()?, r.varint()?);
                if count == 0 || count > MAX_REQUEST_RANGES as u64 {
                    return Err(MessageError::Invalid {
                        kind,
                        what: "a request carries 1 to 256 ranges",
                    });
                }
                if first_id.checked_add(count - 1).is_none() {
                    return Err(MessageError::Invalid {
                        kind,
                        what: "request ids overflow",
                    });
                }
                let mut ranges = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let start = r.varint()?;
                    let end = start
                        .checked_add(r.varint()?)
                        .ok_or(MessageError::Invalid {
                            kind,
                            what: "request range overflows",
                        })?;
                    let trusted = r.trusted()?;
                    ranges.push(RangeRequest {
                        start,
                        end,
                        trusted,
                    });
                }
                Message::Request {
                    feed,
                    base,
                    first_id,
                    ranges,
                }
            }
            T_DATA => Message::Data(DataMsg::decode(&mut r, max_blocks)?),
            T_NO_DATA => Message::NoData {
                request: r.varint()?,
                end: r.varint()?,
            },
            T_ACK => {
                let receipt = Receipt::decode_compact(body, MAX_RECEIPT_RANGES).ok_or(
                    MessageError::Invalid {
                        kind,
                        what: "bad receipt",
                    },
                )?;
                r.bytes = &[];
                Message::Ack(receipt)
            }
            T_KEEPALIVE => Message::Keepalive,
            T_CLOSE => {
                let code = CloseCode::from_u16(u16::from_le_bytes(r.array()?));
                let text = std::str::from_utf8(r.take(r.bytes.len().min(MAX_CLOSE_TEXT))?)
                    .map_err(|_| MessageError::Invalid {
                        kind,
                        what: "close text is not UTF-8",
                    })?;
                Message::Close { code, text }
            }
            T_SUMMARY => {
                let count = u32::from_le_bytes(r.array()?);
                Message::Summary {
                    count,
                    digest: r.array()?,
                }
            }
            T_HAVE => {
                let n = u32::from_le_bytes(r.array()?) as usize;
                if n > MAX_HAVE_ENTRIES || r.bytes.len() != n * 40 {
                    return Err(MessageError::Invalid {
                        kind,
                        what: "have-list length does not match its count",
                    });
                }
                let mut feeds = Vec::with_capacity(n);
                for _ in 0..n {
                    let f = FeedId(r.array()?);
                    feeds.push((f, r.u64()?));
                }
                Message::Have { feeds }
            }
            T_MAILBOXES => {
                let list = MailboxList::decode(body).ok_or(MessageError::Invalid {
                    kind,
                    what: "bad mailbox list",
                })?;
                r.bytes = &[];
                Message::Mailboxes(list)
            }
            T_REFUSED => {
                let feed = FeedId(r.array()?);
                let [code] = r.array()?;
                Message::Refused {
                    feed,
                    reason: RefuseReason::from_code(code),
                }
            }
            T_HELD => Message::Held {
                feed: FeedId(r.array()?),
                length: r.varint()?,
            },
            other => {
                r.bytes = &[];
                Message::Unknown { kind: other }
            }
        };
        if !r.bytes.is_empty() {
            return Err(MessageError::Trailing(kind));
        }
        Ok(msg)
    }
}

impl<'a> DataMsg<'a> {
    /// Encodes a data message from parts, so a sender need not collect its
    /// blocks into a `DataMsg` first. A proof rooted at a trusted node needs
    /// no head; pass `None`.
    pub fn encode_parts<'b>(
        request: u64,
        head: Option<&SignedHead>,
        proof: &RangeProof,
        blocks: impl Iterator<Item = &'b [u8]>,
        out: &mut Vec<u8>,
    ) {
        let at = begin(out, T_DATA);
        varint::write(out, request);
        match head {
            Some(h) => {
                out.push(1);
                out.extend_from_slice(&h.encode());
            }
            None => out.push(0),
        }
        for v in [proof.start, proof.end, proof.base] {
            varint::write(out, v);
        }
        if head.is_some() {
            varint::write(out, proof.shown);
        }
        write_trusted(out, proof.trusted);
        varint::write(out, proof.nodes.len() as u64);
        for n in &proof.nodes {
            out.extend_from_slice(&n.hash.0);
            varint::write(out, n.size);
        }
        for b in blocks {
            varint::write(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        finish(out, at);
    }

    fn decode(r: &mut Reader<'a>, max_blocks: u64) -> Result<Self, MessageError> {
        let kind = r.kind;
        let request = r.varint()?;
        let head = match r.array::<1>()?[0] {
            0 => None,
            1 => Some(
                SignedHead::decode(r.take(SIGNED_HEAD_LEN)?)
                    .ok_or(MessageError::Truncated(kind))?,
            ),
            _ => {
                return Err(MessageError::Invalid {
                    kind,
                    what: "bad head flag",
                })
            }
        };
        let (start, end, base) = (r.varint()?, r.varint()?, r.varint()?);
        let shown = match head {
            Some(_) => r.varint()?,
            None => base,
        };
        let trusted = r.trusted()?;
        // Without a head, the proof reaches only its trusted node; the
        // shortest tree holding that node stands in for the length.
        let length = match (&head, trusted) {
            (Some(h), _) => h.length,
            (None, Some(t)) => flat::blocks(t).1,
            (None, None) => {
                return Err(MessageError::Invalid {
                    kind,
                    what: "data without a head or a trusted node",
                })
            }
        };
        if !fits(start, end, length, base, trusted) {
            return Err(MessageError::Invalid {
                kind,
                what: "data range does not fit its head",
            });
        }
        if shown < base || shown > length || (trusted.is_some() && shown != base) {
            return Err(MessageError::Invalid {
                kind,
                what: "data shows a length outside its base and head",
            });
        }
        if end - start > max_blocks {
            return Err(MessageError::Invalid {
                kind,
                what: "too many blocks in one data message",
            });
        }
        let n = r.varint()?;
        if n > MAX_PROOF_NODES as u64 {
            return Err(MessageError::Invalid {
                kind,
                what: "too many proof nodes",
            });
        }
        let mut nodes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            // Indices are implied by the walk; 0 is a placeholder.
            let hash = Hash(r.array()?);
            nodes.push(Node {
                index: 0,
                hash,
                size: r.varint()?,
            });
        }
        let count = (end - start) as usize;
        // Each block costs at least its length byte, so a count the body
        // cannot hold is refused before anything is allocated for it.
        if count > r.bytes.len() {
            return Err(MessageError::Truncated(kind));
        }
        let mut blocks = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.varint()?;
            let len = usize::try_from(len).map_err(|_| MessageError::Truncated(kind))?;
            blocks.push(r.take(len)?);
        }
        Ok(DataMsg {
            request,
            head,
            proof: RangeProof {
                start,
                end,
                length,
                base,
                shown,
                trusted,
                nodes,
            },
            blocks,
        })
    }
}

/// A trusted-node field: 0 for none, else the node's index plus one.
/// No node has index `u64::MAX`: it is sent as `u64::MAX - 1`, which is
/// not one either, so the peer still refuses it (instead of this panicking
/// or wrapping to "none").
fn write_trusted(out: &mut Vec<u8>, trusted: Option<u64>) {
    varint::write(out, trusted.map_or(0, |t| t.saturating_add(1)));
}

struct Reader<'a> {
    bytes: &'a [u8],
    kind: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if self.bytes.len() < n {
            return Err(MessageError::Truncated(self.kind));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        self.take(N)?
            .try_into()
            .map_err(|_| MessageError::Truncated(self.kind))
    }

    fn u64(&mut self) -> Result<u64, MessageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn varint(&mut self) -> Result<u64, MessageError> {
        let (v, used) = varint::read(self.bytes).ok_or(MessageError::Truncated(self.kind))?;
        self.bytes = &self.bytes[used..];
        Ok(v)
    }

    fn trusted(&mut self) -> Result<Option<u64>, MessageError> {
        Ok(self.varint()?.checked_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::merkle::Hash;
    use crate::ranges::RangeSet;
    use crate::rng::SeededRng;

    /// A proof of block 2 up to node 3 (blocks 0..4), as a verifier holding
    /// that node asks for it.
    fn block_2_below_node_3(nodes: Vec<Node>) -> RangeProof {
        RangeProof {
            start: 2,
            end: 3,
            length: 4,
            base: 0,
            shown: 0,
            trusted: Some(3),
            nodes,
        }
    }

    fn roundtrip(m: Message<'_>) {
        let mut buf = Vec::new();
        m.encode(&mut buf);
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, buf.len());
        let back = Message::decode(buf[4], &buf[MSG_HEADER_LEN..], 1000).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn every_message_roundtrips() {
        let mut key = Keypair::generate(&mut SeededRng::from_u64(1));
        let desc = FeedDescriptor::queue(key.peer_id(), PeerId([3; 32]));
        let head = SignedHead::sign(&mut key, desc.id(), 5, Hash([9; 32]));
        roundtrip(Message::Head { desc, head });
        roundtrip(Message::Request {
            feed: desc.id(),
            base: 2,
            first_id: 300,
            ranges: vec![
                RangeRequest {
                    start: 1,
                    end: 4,
                    trusted: None,
                },
                RangeRequest {
                    start: 1 << 40,
                    end: (1 << 40) + 1,
                    trusted: Some(0),
                },
                RangeRequest {
                    start: 9,
                    end: 9,
                    trusted: Some(7),
                },
            ],
        });
        let node = Node {
            index: 0,
            hash: Hash([1; 32]),
            size: 3,
        };
        let proof = RangeProof {
            start: 1,
            end: 3,
            length: 5,
            base: 0,
            shown: 0,
            trusted: None,
            nodes: vec![node, node],
        };
        roundtrip(Message::Data(DataMsg {
            request: 0,
            head: Some(head),
            proof,
            blocks: vec![b"ab", b""],
        }));
        // Below a trusted node: no head, and the length is the node's end.
        roundtrip(Message::Data(DataMsg {
            request: u64::MAX,
            head: None,
            proof: block_2_below_node_3(vec![node]),
            blocks: vec![b"c"],
        }));
        roundtrip(Message::NoData {
            request: 12,
            end: 9,
        });
        roundtrip(Message::Ack(Receipt::sign(
            &key,
            desc.id(),
            RangeSet::from_range(0, 5),
        )));
        roundtrip(Message::Keepalive);
        roundtrip(Message::Close {
            code: CloseCode::Idle,
            text: "quiet",
        });
        roundtrip(Message::Summary {
            count: 3,
            digest: [7; 32],
        });
        roundtrip(Message::Have {
            feeds: vec![(desc.id(), 4), (FeedId([1; 32]), 0)],
        });
        let mailboxes = [PeerId([4; 32]), PeerId([5; 32])];
        roundtrip(Message::Mailboxes(MailboxList::sign(&key, 2, mailboxes)));
        roundtrip(Message::Refused {
            feed: desc.id(),
            reason: RefuseReason::Full,
        });
        roundtrip(Message::Refused {
            feed: desc.id(),
            reason: RefuseReason::Other(77),
        });
        roundtrip(Message::Held {
            feed: desc.id(),
            length: 1 << 40,
        });
        roundtrip(Message::Unknown { kind: 200 });
    }

    #[test]
    fn bounds_are_enforced_before_allocation() {
        let mut key = Keypair::generate(&mut SeededRng::from_u64(1));
        let head = SignedHead::sign(&mut key, FeedId([0; 32]), MAX_LENGTH, Hash([0; 32]));
        let mut body = vec![0, 1];
        body.extend_from_slice(&head.encode());
        for v in [0u64, MAX_LENGTH, 0, 0, 0] {
            varint::write(&mut body, v);
        }
        let err = Message::decode(T_DATA, &body, 4096).unwrap_err();
        assert_eq!(
            err,
            MessageError::Invalid {
                kind: T_DATA,
                what: "too many blocks in one data message"
            }
        );
        let err = Message::decode(T_DATA, &body, u64::MAX).unwrap_err();
        assert_eq!(err, MessageError::Truncated(T_DATA));
    }

    fn request_body(count: u64, first_id: u64) -> Vec<u8> {
        let mut body = vec![5; 32];
        for v in [0, first_id, count] {
            varint::write(&mut body, v);
        }
        body
    }

    #[test]
    fn request_range_counts_and_ids_are_bounded() {
        let invalid = |what| MessageError::Invalid {
            kind: T_REQUEST,
            what,
        };
        // A count is refused before any range is read or allocated.
        let err = Message::decode(T_REQUEST, &request_body(1 << 40, 0), 1).unwrap_err();
        assert_eq!(err, invalid("a request carries 1 to 256 ranges"));
        let err = Message::decode(T_REQUEST, &request_body(0, 0), 1).unwrap_err();
        assert_eq!(err, invalid("a request carries 1 to 256 ranges"));
        let err = Message::decode(T_REQUEST, &request_body(2, u64::MAX), 1).unwrap_err();
        assert_eq!(err, invalid("request ids overflow"));
        // A range whose end passes 2^64.
        let mut body = request_body(1, 0);
        for v in [u64::MAX, 1, 0] {
            varint::write(&mut body, v);
        }
        let err = Message::decode(T_REQUEST, &body, 1).unwrap_err();
        assert_eq!(err, invalid("request range overflows"));
        // Fewer ranges than counted.
        let err = Message::decode(T_REQUEST, &request_body(3, 0), 1).unwrap_err();
        assert_eq!(err, MessageError::Truncated(T_REQUEST));
    }

    #[test]
    fn proof_nodes_carry_sizes_as_varints() {
        // One 100-byte block with two proof nodes: each node is its hash
        // and one or two size bytes, not 40.
        let node = |size| Node {
            index: 0,
            hash: Hash([4; 32]),
            size,
        };
        let proof = block_2_below_node_3(vec![node(100), node(200)]);
        let block = [7u8; 100];
        let mut out = Vec::new();
        DataMsg::encode_parts(1, None, &proof, [&block[..]].into_iter(), &mut out);
        // header | id | no head | start end base trusted | n | 2 nodes | len | block
        assert_eq!(
            out.len(),
            MSG_HEADER_LEN + 1 + 1 + 4 + 1 + (33 + 34) + 1 + 100
        );
    }
}
