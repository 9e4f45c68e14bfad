//! What a node tells its driver: outputs, events and close reasons.

use std::fmt;

use crate::identity::PeerId;
use crate::wire::CloseCode;

/// A connection handle, unique for the node's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// An action for the driver, from [`crate::Node::poll_output`].
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Write `bytes` to connection `conn`'s transport, in order.
    Transmit {
        /// The connection.
        conn: ConnId,
        /// Bytes to write.
        bytes: Vec<u8>,
    },
    /// Open a transport to `peer`, then report it with
    /// [`crate::Node::connect`] (or [`crate::Node::dial_failed`]).
    Dial {
        /// The peer to reach.
        peer: PeerId,
    },
    /// Close connection `conn`'s transport after writing what was
    /// transmitted before. The node has already forgotten it.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Something the application may want to know.
    Event(Event),
}

/// Something that happened, for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A connection finished its handshake with an authenticated peer.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Who is on the other end.
        peer: PeerId,
    },
    /// A connection ended.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// The peer, if the handshake had told us.
        peer: Option<PeerId>,
        /// Why it ended.
        reason: CloseReason,
    },
    /// Message `seq` from `from` arrived and is unread. Emitted in seq order
    /// per sender, exactly once per message per node run.
    Message {
        /// The sender.
        from: PeerId,
        /// Its position in the sender's feed to us.
        seq: u64,
    },
    /// A block asked for with [`crate::Node::get`] arrived (possibly ahead of
    /// the in-order [`Event::Message`] stream).
    Fetched {
        /// The sender.
        from: PeerId,
        /// The block.
        seq: u64,
    },
    /// Event `seq` of `author`'s broadcast feed is stored here (our own
    /// included). Reported once per block per node run, in seq order per
    /// author; read it with [`crate::Node::broadcast_get`].
    Broadcast {
        /// The author.
        author: PeerId,
        /// Its position in the author's broadcast feed.
        seq: u64,
    },
    /// A mailbox of `to` refused to hold our mail for it: `to` has not
    /// named it (yet: its list may not have reached it), its quota is used
    /// up, or it is no mailbox. The mail waits here, and goes when `to` or
    /// another of its mailboxes is reachable.
    MailboxRefused {
        /// The mailbox.
        mailbox: PeerId,
        /// The recipient whose mail it refused.
        to: PeerId,
        /// Why.
        reason: crate::wire::RefuseReason,
    },
    /// `peer` will not hold more of `author`'s broadcast feed, which we
    /// announced to it: a quota of its own is used up
    /// ([`crate::Config::max_author_bytes`] and the like). The events stay
    /// here, and reach others through other relays.
    RelayRefused {
        /// The relay.
        peer: PeerId,
        /// The author whose feed it refused.
        author: PeerId,
        /// Why.
        reason: crate::wire::RefuseReason,
    },
    /// `author` signed two conflicting heads of `feed` (see
    /// [`crate::node::ForkEvidence`]): the feed is no longer replicated, and
    /// the evidence is kept ([`crate::Node::forks`]). Reported once per feed.
    Forked {
        /// The feed's author, who signed both heads.
        author: PeerId,
        /// The feed.
        feed: crate::feed::FeedId,
    },
    /// Message `seq` from `from` went to the dead-letter category
    /// ([`crate::Category::DEAD`]) instead of being delivered again.
    DeadLettered {
        /// The sender.
        from: PeerId,
        /// The message.
        seq: u64,
        /// Why.
        reason: crate::DeadReason,
        /// How many times it had been delivered.
        deliveries: u32,
    },
    /// `to` durably acknowledged messages `start..end` of our feed to it.
    Acked {
        /// The recipient.
        to: PeerId,
        /// First newly acknowledged message.
        start: u64,
        /// One past the last.
        end: u64,
    },
}

/// Why a connection closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The dialer is not an authorized peer; `add_peer` it to allow it.
    Unauthorized(PeerId),
    /// The listener is not the key that was dialed.
    WrongPeer {
        /// The key dialed.
        expected: PeerId,
        /// The key that answered.
        got: PeerId,
    },
    /// The Noise handshake failed (bad message, or messages out of order).
    Handshake(String),
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// A frame did not decrypt: corrupted or forged bytes.
    Decrypt,
    /// A message did not parse.
    Malformed(String),
    /// A message exceeded the size limit.
    TooLarge {
        /// Declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A signature, proof or receipt did not verify.
    BadData(String),
    /// A message the connection's state does not allow.
    Unexpected(String),
    /// The peer has more requests outstanding than allowed.
    Overloaded,
    /// Another connection with the same peer won the tie-break.
    Duplicate,
    /// The peer proved this node's own identity: a dial reached this very
    /// node. Not retried.
    Ourselves,
    /// As many connections as allowed are open to us
    /// ([`crate::Config::max_inbound`]); this one was closed as it came.
    TooManyConnections {
        /// The limit.
        limit: usize,
    },
    /// The peer completed more than `limit` connections to us within
    /// `window`: the newest is closed, its open one kept.
    ConnectingTooOften {
        /// Connections allowed per window.
        limit: u32,
        /// The window.
        window: std::time::Duration,
    },
    /// The peer was removed with `remove_peer`.
    PeerRemoved,
    /// Nothing was heard for too long.
    IdleTimeout,
    /// The peer closed the connection, saying why.
    Remote {
        /// The peer's code.
        code: CloseCode,
        /// The peer's text.
        text: String,
    },
    /// The transport ended (reported with `handle_closed`).
    TransportClosed,
    /// The application closed it.
    Local,
    /// Our store failed while handling the connection's data; the data will
    /// be fetched again after reconnecting.
    Storage(String),
}

impl CloseReason {
    /// The code sent to the peer in a close message.
    pub fn code(&self) -> CloseCode {
        match self {
            CloseReason::Unauthorized(_) => CloseCode::Unauthorized,
            CloseReason::Malformed(_) | CloseReason::Decrypt | CloseReason::Handshake(_) => {
                CloseCode::Malformed
            }
            CloseReason::TooLarge { .. } => CloseCode::TooLarge,
            CloseReason::BadData(_) => CloseCode::BadData,
            CloseReason::Unexpected(_) => CloseCode::Unexpected,
            CloseReason::Overloaded
            | CloseReason::TooManyConnections { .. }
            | CloseReason::ConnectingTooOften { .. }
            | CloseReason::Storage(_) => CloseCode::Overloaded,
            CloseReason::Duplicate => CloseCode::Duplicate,
            CloseReason::PeerRemoved => CloseCode::Removed,
            CloseReason::IdleTimeout | CloseReason::HandshakeTimeout => CloseCode::Idle,
            _ => CloseCode::Normal,
        }
    }

    /// Whether a dial intent should try again after this.
    pub(crate) fn retry(&self) -> bool {
        !matches!(
            self,
            CloseReason::PeerRemoved
                | CloseReason::Local
                | CloseReason::Duplicate
                | CloseReason::Ourselves
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Unauthorized(p) => write!(
                f,
                "peer {p} is not authorized; run `peermq add-peer {p}` to allow it"
            ),
            CloseReason::WrongPeer { expected, got } => {
                write!(f, "dialed {expected} but {got} answered")
            }
            CloseReason::Handshake(e) => write!(f, "handshake failed: {e}"),
            CloseReason::HandshakeTimeout => f.write_str("handshake timed out"),
            CloseReason::Decrypt => {
                f.write_str("a frame failed to decrypt (corrupted or forged bytes)")
            }
            CloseReason::Malformed(e) => write!(f, "malformed message: {e}"),
            CloseReason::TooLarge { size, limit } => {
                write!(f, "message of {size} bytes exceeds the {limit}-byte limit")
            }
            CloseReason::BadData(e) => write!(f, "bad data: {e}"),
            CloseReason::Unexpected(e) => write!(f, "unexpected message: {e}"),
            CloseReason::Overloaded => f.write_str("peer sent too many requests"),
            CloseReason::Duplicate => f.write_str("duplicate connection"),
            CloseReason::Ourselves => {
                f.write_str("dialed this node itself (its own address or key)")
            }
            CloseReason::TooManyConnections { limit } => write!(
                f,
                "{limit} incoming connections are open, the most allowed (Config::max_inbound); try again later"
            ),
            CloseReason::ConnectingTooOften { limit, window } => write!(
                f,
                "more than {limit} connections from one peer in {} s; its open connection is kept",
                window.as_secs()
            ),
            CloseReason::PeerRemoved => f.write_str("peer removed"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::Remote { code, text } => write!(f, "closed by peer ({code:?}): {text}"),
            CloseReason::TransportClosed => f.write_str("transport closed"),
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::Storage(e) => write!(f, "storage failure: {e}"),
        }
    }
}
