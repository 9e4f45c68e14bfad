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
