//! # peermq
//!
//! A peer-to-peer message queue and replicated event emitter: the sans-IO
//! core.
//!
//! Peers are ed25519 keys ([`identity`]). Everything a node writes goes into
//! signed append-only [`feed`]s whose blocks are hashed into a flat-tree
//! [`merkle`] tree, so any subset of blocks can be verified against one
//! signed head. State lives behind the small [`store`] trait, with an
//! in-memory backend for tests and simulations and an LMDB backend for disk.
//!
//! The core does no I/O of its own: it reads no clock, opens no socket,
//! starts no thread and draws no OS randomness. Time and a seed come in from
//! the caller ([`rng`]), so the same inputs always give the same bytes.
//!
//! ## Example
//!
//! Two nodes in memory: B queues a message for A, the bytes of one
//! connection between them are pumped by hand ([`pump_pair`]; a driver such
//! as `peermq-tokio` carries them over a socket), A reads the message and
//! archives it, and A's signed acknowledgement comes back to B.
//!
//! ```
//! use peermq::{Config, Entropy, Event, Instant, Mailbox, MemStore, Node, Output, Timestamp};
//!
//! let now = Instant::ZERO;
//! // Fixed seeds for the example; a real node takes fresh OS randomness
//! // at every open (`Entropy::new`).
//! let open = |seed| {
//!     Node::open(MemStore::new(), Config::default(), Entropy::deterministic(seed), now)
//! };
//! let (mut a, mut b) = (open(1)?, open(2)?);
//! a.add_peer(b.id())?; // A lets B connect
//! let seq = b.send(a.id(), b"hello", now)?; // durable when it returns
//!
//! let b_conn = b.connect(a.id(), now);
//! let a_conn = a.accept(now);
//! let (at_a, _) = peermq::pump_pair((&mut a, a_conn), (&mut b, b_conn), now)?;
//! assert!(at_a.contains(&Output::Event(Event::Message { from: b.id(), seq })));
//!
//! // Reading takes the wall-clock time, for messages sent with delivery times.
//! let unread = a.read(Mailbox::Unread, None, 10, Timestamp::EPOCH)?;
//! assert_eq!((unread[0].from, unread[0].seq), (b.id(), seq));
//! assert_eq!(unread[0].data, b"hello");
//! assert!(a.archive(b.id(), seq, now)?); // newly archived: processed exactly once
//!
//! // A acknowledges once `Config::ack_delay` (10 ms) has passed, covering
//! // whatever else arrives meanwhile.
//! let later = now + std::time::Duration::from_millis(10);
//! let (_, at_b) = peermq::pump_pair((&mut a, a_conn), (&mut b, b_conn), later)?;
//! let acked = Event::Acked { to: a.id(), start: seq, end: seq + 1 };
//! assert!(at_b.contains(&Output::Event(acked)));
//! # Ok::<(), peermq::NodeError>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "emitter")]
pub mod emitter;
pub mod feed;
pub mod identity;
pub mod merkle;
pub mod node;
pub mod noise;
pub mod ranges;
pub mod rng;
pub mod store;
pub mod time;
mod varint;
pub mod wire;

pub use feed::{Feed, FeedDescriptor, FeedError, FeedId, FeedKind, SignedHead};
pub use identity::{Keypair, PeerId, PeerIdError, Sign, Signer, VerifyKey};
pub use node::pump_pair;
pub use node::{
    CarriedStatus, Category, CategoryCount, CategoryError, CloseReason, Config, ConnId, DeadReason,
    Event, Fetch, Footprint, HeldInMailbox, Lease, Mailbox, MailboxLimits, Node, NodeError, Output,
    PeerStatus, Prefetch, RawPeer, Record, Released, RetryPolicy, Taken, MAX_CATEGORY_LEN,
};
pub use ranges::RangeSet;
pub use rng::{Entropy, RandomSource, SeededRng};
#[cfg(feature = "lmdb")]
pub use store::{LmdbOptions, LmdbStore};
pub use store::{MemStore, Store, StoreError, Txn};
pub use time::{Instant, Timestamp};
pub use wire::envelope::{Due, Schedule};
pub use wire::{MailboxList, Receipt};
