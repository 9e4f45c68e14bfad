//! The errors of this crate, apart from everything that raises them, so
//! that every layer can name them without importing the one above.

use std::net::SocketAddr;

use peermq::{NodeError, PeerId, StoreError};

/// Something that failed. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MqError {
    /// The core refused the operation, or the store failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The store could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node was shut down (or its driver task stopped).
    #[error("the peermq node has shut down; open the data directory again to continue")]
    Closed,
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}; pick another address or port (port 0 lets the OS choose)")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Announcing a listener to a discovery mechanism failed.
    #[error("cannot announce our address {addr} for discovery: {source}")]
    Announce {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The transport made for the node's key failed to start
    /// ([`crate::Builder::transport_for`]).
    #[error("cannot start the transport: {0}")]
    Transport(#[source] std::io::Error),
    /// A discovery made for the node's key failed to start
    /// ([`crate::Builder::discovery_for`]).
    #[error("cannot start peer discovery: {0}")]
    Discovery(#[source] std::io::Error),
    /// The operating system gave no randomness for a new identity.
    #[error("the operating system gave no randomness to create an identity or session keys: {0}")]
    Randomness(String),
    /// Reading a message that arrived for [`crate::Mq::get`] failed after
    /// it was downloaded (the store failed; the message is kept and a
    /// later `get` may succeed).
    #[error("message {seq} from {from} arrived but could not be read: {reason}; call get again")]
    Get {
        /// The sender.
        from: PeerId,
        /// The message.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// Something the emitter could not do. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EmitterError {
    /// The node failed, was shut down, or could not listen.
    #[error(transparent)]
    Mq(#[from] MqError),
    /// The emitter core refused: most often a value that does not fit the
    /// schema ([`peermq::emitter::EmitterError::Invalid`], which names the
    /// field), or a store failure.
    #[error(transparent)]
    Core(#[from] peermq::emitter::EmitterError),
    /// Another [`crate::Consumer`] of this emitter holds the name: two
    /// readers of one saved position would each commit over the other's
    /// progress.
    #[error("consumer `{0}` is already running on this emitter; drop it first, or use another name for a second reader")]
    ConsumerBusy(String),
    /// The first attempt to reach an address failed. The emitter keeps
    /// retrying it with backoff; this only reports the first outcome.
    #[error("cannot reach {addr}: {reason}; still retrying in the background")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

impl EmitterError {
    /// Whether the error is a value that does not fit the schema (the
    /// caller's input), as opposed to the node or store failing.
    pub fn is_invalid(&self) -> bool {
        matches!(
            self,
            EmitterError::Core(peermq::emitter::EmitterError::Invalid(_))
        )
    }
}

impl From<StoreError> for EmitterError {
    fn from(e: StoreError) -> Self {
        EmitterError::Mq(MqError::Store(e))
    }
}
