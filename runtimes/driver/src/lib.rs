//! # peermq-driver
//!
//! The runtime-agnostic half of peermq's async adapters. The core
//! ([`peermq::Node`]) is a synchronous state machine; this crate runs one
//! driver task per node that owns it, feeds it socket bytes and timer ticks,
//! executes its outputs, and talks to any number of [`Mq`] handles through
//! bounded channels.
//!
//! An async runtime plugs in through the small [`Runtime`] trait (spawn,
//! sleep, the clock, in the style of quinn's), and bytes reach peers through
//! a [`Transport`] (connect, listen): TCP by default, set per node with
//! [`Builder::transport`]. The tokio, smol and async-std adapters differ
//! only in a few dozen lines each: `peermq-tokio`, `peermq-smol` and
//! `peermq-async-std`.
//!
//! How [`Mq::connect`] finds a peer's address is up to a [`Discovery`]:
//! addresses given to [`Mq::add_peer`], [`LocalDiscovery`] for processes on
//! one machine (on by default), `MdnsDiscovery` for peers on the local
//! network (with the `mdns` feature), or any other implementation of the
//! trait.
//!
//! ## Layers
//!
//! Each module imports only the ones listed before it (`tests/layers.rs`
//! checks):
//!
//! | module | holds |
//! |---|---|
//! | `runtime` | the [`Runtime`] (executor, clock) and [`Transport`] ([`Connection`]s, [`Listener`]s) seams |
//! | `error` | [`MqError`] and [`EmitterError`] |
//! | `datadir` | the data directory's files: created private, warned about when open to others |
//! | `discovery`, `mdns` | how a peer's key becomes addresses |
//! | `io` | socket tasks (read, write, accept, dial), by connection id |
//! | `driver` | the task that owns the node and pumps its outputs; the `Service` seam |
//! | `mq` | the queue service and the [`Mq`] handle |
//! | `emitter` | the emitter service, wrapping the queue's, and the [`Emitter`] handle |
//! | `conformance` | the suites every adapter runs (feature `conformance`) |

#![deny(unsafe_code)]
#![warn(missing_docs)]

// One group per layer, lowest first.
mod runtime;

mod error;

pub mod datadir;
mod discovery;
#[cfg(feature = "mdns")]
mod mdns;

mod io;

mod driver;

mod mq;

pub mod emitter;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use discovery::{process_alive, Discovery, LocalDiscovery, StaticDiscovery};
pub use emitter::{
    Consumer, Delivered, DeliveryStream, Emitter, EmitterBuilder, HandlerError, HandlerErrors,
    ListenerId, Schema, StartAt,
};
pub use error::{EmitterError, MqError};
pub use futures_lite::io::{AsyncRead, AsyncWrite};
pub use futures_lite::Stream;
#[cfg(feature = "mdns")]
pub use mdns::MdnsDiscovery;
pub use mq::{Builder, EventStream, MailStatus, Mq, MqEvent, RecordStream, Worker};
pub use peermq::{
    CarriedStatus, Category, CategoryCount, CloseReason, Config, DeadReason, HeldInMailbox, Lease,
    Mailbox, PeerId, PeerStatus, Prefetch, Record, Released, RetryPolicy, Schedule, StoreError,
    Taken, Timestamp,
};
pub use runtime::{
    timeout, wall_clock, BoxFuture, Connection, ConnectionInfo, Listener, ReadHalf, Route, RouteFn,
    Runtime, Transport, WriteHalf,
};
pub use serde_json;
