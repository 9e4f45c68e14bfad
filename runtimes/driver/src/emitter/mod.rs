//! The replicated event emitter, async: the HyperEmitter API over
//! [`peermq::emitter`].
//!
//! An [`Emitter`] is a node whose driver task also runs the sans-IO
//! emitter core: typed events checked against a protobuf [`Schema`],
//! appended to this node's broadcast feed, relayed through the mesh, and
//! delivered here in causal order into a persistent delivery log. Everything
//! the application sees is read from that log, so a listener or a stream
//! that falls behind catches up from the store instead of losing events.
//!
//! ```no_run
//! # async fn demo(rt: std::sync::Arc<dyn peermq_driver::Runtime>) -> Result<(), peermq_driver::EmitterError> {
//! use futures_lite::StreamExt;
//! use peermq_driver::{Emitter, Schema, StartAt};
//!
//! let schema = Schema::parse("example.proto", "syntax = \"proto3\"; message Hello { string from = 1; }")
//!     .expect("a valid schema");
//! let em = Emitter::builder("emitter-data").open(rt, schema)?;
//! em.listen("127.0.0.1:0".parse().unwrap()).await?;
//! let mut all = em.stream(StartAt::Beginning).await?;
//! em.emit("Hello", serde_json::json!({"from": "Matteo"})).await?;
//! let first = all.next().await.expect("an event")?;
//! println!("{} {}", first.name, first.value.unwrap_or_default());
//! em.close().await
//! # }
//! ```

mod dials;
mod service;

#[cfg(feature = "conformance")]
pub(crate) use dials::MAX_LEARNED_ATTEMPTS;
pub use peermq::emitter::{Delivered, Schema, SchemaError, ValidationError, EVENT_PEER};

pub use crate::error::EmitterError;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_channel::{Receiver, Sender};
use futures_lite::{Stream, StreamExt};
use peermq::{Config, MemStore, PeerId, Store};
use serde_json::Value;
use tracing::warn;

use crate::driver::Command;
use crate::error::MqError;
use crate::mq::{Builder, EventStream, Mq};
use crate::runtime::Runtime;
use service::{EReply, EmitCommand, EmitterCommand, Emitting, Follow};

/// Where a stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// With the first event delivered after the stream was made.
    Now,
    /// With the first event ever delivered here: a replay of the whole log.
    Beginning,
}

/// A listener registered with [`Emitter::on`], for
/// [`Emitter::remove_listener`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(u64);

/// A listener's handler failed on an event. Reported through
/// [`Emitter::errors`] and logged; the listener keeps running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError {
    /// The listener.
    pub listener: ListenerId,
    /// The event type.
    pub name: String,
    /// The event's position in the delivery log.
    pub position: u64,
    /// What the handler returned.
    pub message: String,
}

/// Events asked of the driver per round trip when reading the log.
const PAGE: usize = 256;
/// Handler errors buffered for [`Emitter::errors`] subscribers.
const ERROR_BUFFER: usize = 1024;

/// Opens an [`Emitter`]: open to any peer by default, as HyperEmitter is.
pub struct EmitterBuilder {
    inner: Builder,
    config: Config,
    allow: Vec<PeerId>,
}

impl std::fmt::Debug for EmitterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmitterBuilder")
            .field("inner", &self.inner)
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl EmitterBuilder {
    /// An emitter whose data lives in directory `dir`, created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmitterBuilder {
            // Peers are found by address (`connect`, `EventPeer`), so the
            // machine-wide discovery directory is not needed.
            inner: Builder::new(dir).local_discovery(false),
            config: Config {
                open: true,
                ..Config::default()
            },
            allow: Vec::new(),
        }
    }

    /// Tunes the core. `open` is kept as given, except that
    /// [`EmitterBuilder::allow`] turns it off.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Restricts the emitter to the listed keys: only they may connect, and
    /// only their events (and ours) are relayed and delivered. Without any
    /// `allow`, every peer may connect and every author is relayed; events
    /// are signed by their authors either way.
    pub fn allow(mut self, key: PeerId) -> Self {
        self.allow.push(key);
        self
    }

    /// Accesses the underlying node builder (discovery, LMDB options).
    pub fn node(mut self, f: impl FnOnce(Builder) -> Builder) -> Self {
        self.inner = f(self.inner);
        self
    }

    /// Opens the emitter on an LMDB store in the data directory, and starts
    /// its driver task on `runtime`.
    pub fn open(self, runtime: Arc<dyn Runtime>, schema: Schema) -> Result<Emitter, EmitterError> {
        let store = self.inner.open_store()?;
        self.open_with_store(store, runtime, schema)
    }

    /// Opens the emitter on an in-memory store (nothing survives).
    pub fn open_in_memory(
        self,
        runtime: Arc<dyn Runtime>,
        schema: Schema,
    ) -> Result<Emitter, EmitterError> {
        self.open_with_store(MemStore::new(), runtime, schema)
    }

    /// Opens the emitter on any store.
    pub fn open_with_store<S: Store + Send + 'static>(
        self,
        store: S,
        runtime: Arc<dyn Runtime>,
        schema: Schema,
    ) -> Result<Emitter, EmitterError> {
        let mut config = self.config;
        if !self.allow.is_empty() {
            config.open = false;
        }
        let messages = schema.messages();
        let allow = self.allow;
        let (mq, cmd) = self
            .inner
            .config(config)
            .launch(store, runtime, |node, queue| {
                // Before the driver starts, so that no connection is ever
                // admitted under a looser rule than asked for.
                for key in allow {
                    node.add_peer(key).map_err(MqError::from)?;
                }
                Emitting::open(node, queue, schema)
            })?;
        Ok(Emitter {
            mq,
            cmd,
            inner: Arc::new(Shared {
                messages,
                listeners: Mutex::new(HashMap::new()),
                next_listener: AtomicU64::new(0),
                errors: Mutex::new(Vec::new()),
                consumers: Mutex::new(HashSet::new()),
            }),
        })
    }
}

struct Shared {
    messages: Vec<String>,
    /// Each listener's stop flag, checked before every handler call.
    listeners: Mutex<HashMap<ListenerId, Arc<AtomicBool>>>,
    next_listener: AtomicU64,
    errors: Mutex<Vec<Sender<HandlerError>>>,
    /// Names of the live [`Consumer`]s: one each at a time.
    consumers: Mutex<HashSet<String>>,
}

/// A replicated, persistent event emitter: HyperEmitter's API. Cheap to
/// clone; all clones share one node. Listeners and streams keep the node
/// running until [`Emitter::close`].
#[derive(Clone)]
pub struct Emitter {
    mq: Mq,
    cmd: Sender<Command<EmitterCommand>>,
    inner: Arc<Shared>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").field("mq", &self.mq).finish()
    }
}

impl Emitter {
    /// Starts configuring an emitter whose data lives in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> EmitterBuilder {
        EmitterBuilder::new(dir)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(EReply<T>) -> EmitCommand,
    ) -> Result<T, EmitterError> {
        let (tx, rx) = async_channel::bounded(1);
        let cmd = Command::Service(EmitterCommand::Emit(make(tx)));
        self.cmd.send(cmd).await.map_err(|_| MqError::Closed)?;
        rx.recv().await.map_err(|_| MqError::Closed)?
    }

    /// This node's id: the key its events are signed with.
    pub async fn id(&self) -> PeerId {
        self.mq.id().await
    }

    /// The underlying node handle (connection events, peers, queue).
    pub fn mq(&self) -> &Mq {
        &self.mq
    }

    /// The event types of the schema, `EventPeer` included.
    pub fn messages(&self) -> Vec<String> {
        self.inner.messages.clone()
    }

    /// Validates `value` as an event of type `name` and appends it to this
    /// node's broadcast feed; when this returns it is durable. Returns its
    /// seq in our feed. A value that does not fit the schema is an error
    /// naming the field ([`EmitterError::is_invalid`]). Two identical emits
    /// are two events.
    pub async fn emit(&self, name: &str, value: Value) -> Result<u64, EmitterError> {
        let name = name.to_string();
        self.call(|reply| EmitCommand::Emit { name, value, reply })
            .await
    }

    /// Emits an already encoded event, whose type need not be in our
    /// schema: it replicates all the same, and peers without the type
    /// receive it raw.
    pub async fn emit_encoded(&self, name: &str, payload: Vec<u8>) -> Result<u64, EmitterError> {
        let name = name.to_string();
        self.call(|reply| EmitCommand::EmitEncoded {
            name,
            payload,
            reply,
        })
        .await
    }

    /// How many events were delivered here so far.
    pub async fn log_len(&self) -> Result<u64, EmitterError> {
        self.call(|reply| EmitCommand::LogLen { reply }).await
    }

    /// Every delivered event, in delivery (causal) order, from `from` on.
    /// The stream never ends while the emitter runs.
    pub async fn stream(&self, from: StartAt) -> Result<DeliveryStream, EmitterError> {
        let start = match from {
            StartAt::Beginning => 0,
            StartAt::Now => self.log_len().await?,
        };
        Ok(self.stream_at(start, None))
    }

    /// Events of type `name` delivered from now on.
    pub async fn subscribe(&self, name: &str) -> Result<DeliveryStream, EmitterError> {
        let start = self.log_len().await?;
        Ok(self.stream_at(start, Some(name.to_string())))
    }

    /// Events from log position `position` on (a consumer's saved position,
    /// for instance).
    pub fn stream_at(&self, position: u64, name: Option<String>) -> DeliveryStream {
        let state = FollowState {
            em: self.clone(),
            next: position,
            name,
            buf: VecDeque::new(),
            live: None,
            done: false,
        };
        DeliveryStream {
            inner: Mutex::new(Box::pin(futures_lite::stream::unfold(
                state,
                FollowState::next,
            ))),
        }
    }

    /// Named consumer `name`, continuing after the last position it
    /// committed (from the beginning if it never did). Events it did not
    /// commit before a crash come again: at least once.
    ///
    /// A name is held by one live [`Consumer`] at a time, until it is
    /// dropped: [`EmitterError::ConsumerBusy`] otherwise.
    pub async fn resume(&self, name: &str) -> Result<Consumer, EmitterError> {
        let hold = ConsumerHold::take(&self.inner, name)?;
        let n = name.to_string();
        let position = self
            .call(|reply| EmitCommand::Consumer { name: n, reply })
            .await?;
        Ok(Consumer {
            name: name.to_string(),
            em: self.clone(),
            stream: self.stream_at(position, None),
            start: position,
            _hold: hold,
        })
    }

    /// Named consumer `name`, started over from the beginning: its saved
    /// position is reset first. As [`Emitter::resume`], the name must not
    /// be held by a live consumer.
    pub async fn from_scratch(&self, name: &str) -> Result<Consumer, EmitterError> {
        // Checked before the reset, so a busy name keeps its position.
        drop(ConsumerHold::take(&self.inner, name)?);
        self.commit(name, 0).await?;
        self.resume(name).await
    }

    async fn commit(&self, name: &str, position: u64) -> Result<(), EmitterError> {
        let name = name.to_string();
        self.call(|reply| EmitCommand::Commit {
            name,
            position,
            reply,
        })
        .await
    }

    /// Calls `handler` with every event of type `name` delivered from now
    /// on, once each, in delivery order. A handler's error is reported
    /// through [`Emitter::errors`] and logged, and the listener goes on.
    pub async fn on<F, Fut, E>(
        &self,
        name: &str,
        mut handler: F,
    ) -> Result<ListenerId, EmitterError>
    where
        F: FnMut(Delivered) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let mut stream = self.subscribe(name).await?;
        let id = ListenerId(self.inner.next_listener.fetch_add(1, Ordering::Relaxed));
        let stop = Arc::new(AtomicBool::new(false));
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, stop.clone());
        let shared = self.inner.clone();
        self.mq.runtime().spawn(Box::pin(async move {
            while let Some(item) = stream.next().await {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let d = match item {
                    Ok(d) => d,
                    Err(e) => {
                        warn!(error = %e, listener = id.0, "peermq: listener stopped: reading events failed");
                        return;
                    }
                };
                let (name, position) = (d.name.clone(), d.position);
                if let Err(e) = handler(d).await {
                    let err = HandlerError {
                        listener: id,
                        name,
                        position,
                        message: e.to_string(),
                    };
                    warn!(listener = id.0, event = %err.name, position, error = %err.message, "peermq: event handler failed");
                    shared.report(err);
                }
            }
        }));
        Ok(id)
    }

    /// [`Emitter::on`] with a plain function for handler.
    pub async fn on_sync<F, E>(
        &self,
        name: &str,
        mut handler: F,
    ) -> Result<ListenerId, EmitterError>
    where
        F: FnMut(Delivered) -> Result<(), E> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.on(name, move |d| std::future::ready(handler(d))).await
    }

    /// Stops listener `id`: its handler is not called again. Returns whether
    /// there was such a listener (an unknown id removes nothing).
    pub fn remove_listener(&self, id: ListenerId) -> bool {
        match self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            Some(stop) => {
                stop.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Handler failures from now on (each subscriber has its own bounded
    /// buffer; failures that do not fit are still logged).
    pub fn errors(&self) -> HandlerErrors {
        let (tx, rx) = async_channel::bounded(ERROR_BUFFER);
        self.inner
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        HandlerErrors { rx: Box::pin(rx) }
    }

    /// Connection events (see [`Mq::events`]).
    pub fn events(&self) -> EventStream {
        self.mq.events()
    }

    /// Accepts peers on `addr` (port 0 lets the OS pick) and announces it
    /// as an `EventPeer` event, unless our last announcement said the same.
    /// Returns the bound address.
    pub async fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, EmitterError> {
        self.listen_advertising(addr, None).await
    }

    /// [`Emitter::listen`], announcing `advertise` instead of the bound
    /// address (for a wildcard bind, or an address seen through NAT).
    pub async fn listen_advertising(
        &self,
        addr: SocketAddr,
        advertise: Option<SocketAddr>,
    ) -> Result<SocketAddr, EmitterError> {
        let bound = self.mq.listen(addr).await?;
        let advertise = vec![advertise.unwrap_or(bound)];
        self.call(|reply| EmitCommand::Announce { advertise, reply })
            .await?;
        Ok(bound)
    }

    /// Connects to the emitter at `addr`, whatever its key, and keeps
    /// reconnecting with backoff whenever the connection drops; the address
    /// is remembered across restarts. Returns the peer's key once the first
    /// connection is up, or the reason the first attempt failed (retries go
    /// on regardless).
    pub async fn connect(&self, addr: SocketAddr) -> Result<PeerId, EmitterError> {
        self.call(|reply| EmitCommand::ConnectAddr { addr, reply })
            .await
    }

    /// The addresses this emitter dials and keeps connected: those given to
    /// [`Emitter::connect`] and those other peers announced.
    pub async fn known_addresses(&self) -> Result<Vec<SocketAddr>, EmitterError> {
        self.call(|reply| EmitCommand::KnownAddrs { reply }).await
    }

    /// Stops the emitter gracefully (see [`Mq::shutdown`]); afterwards
    /// every call fails and every stream ends.
    pub async fn close(&self) -> Result<(), EmitterError> {
        for (_, stop) in self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            stop.store(true, Ordering::Release);
        }
        Ok(self.mq.shutdown().await?)
    }
}

impl Shared {
    fn report(&self, err: HandlerError) {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|tx| {
                !matches!(
                    tx.try_send(err.clone()),
                    Err(async_channel::TrySendError::Closed(_))
                )
            });
    }
}

/// Handler failures, from [`Emitter::errors`].
pub struct HandlerErrors {
    rx: Pin<Box<Receiver<HandlerError>>>,
}

impl std::fmt::Debug for HandlerErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerErrors { .. }")
    }
}

impl Stream for HandlerErrors {
    type Item = HandlerError;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<HandlerError>> {
        self.rx.as_mut().poll_next(cx)
    }
}

/// Delivered events in delivery order, from [`Emitter::stream`],
/// [`Emitter::subscribe`] or [`Emitter::stream_at`]. Each event is yielded
/// once; a stream that falls behind reads the persistent log to catch up,
/// so it never skips one. It ends when the emitter closes.
pub struct DeliveryStream {
    // The mutex is only ever reached through `&mut self` (never locked), and
    // makes the stream `Sync`, so a `&mut` to it can be held across awaits
    // in a `Send` future.
    inner: Mutex<EventsInner>,
}

type EventsInner = Pin<Box<dyn Stream<Item = Result<Delivered, EmitterError>> + Send>>;

impl std::fmt::Debug for DeliveryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliveryStream { .. }")
    }
}

impl Stream for DeliveryStream {
    type Item = Result<Delivered, EmitterError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let inner = self
            .get_mut()
            .inner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        inner.as_mut().poll_next(cx)
    }
}

struct FollowState {
    em: Emitter,
    /// The first log position not yet yielded or skipped.
    next: u64,
    name: Option<String>,
    buf: VecDeque<Delivered>,
    live: Option<Receiver<Delivered>>,
    done: bool,
}

impl FollowState {
    fn wanted(&self, d: &Delivered) -> bool {
        self.name.as_deref().is_none_or(|n| n == d.name)
    }

    async fn next(mut self) -> Option<(Result<Delivered, EmitterError>, Self)> {
        loop {
            while let Some(d) = self.buf.pop_front() {
                if d.position < self.next {
                    continue;
                }
                self.next = d.position + 1;
                if self.wanted(&d) {
                    return Some((Ok(d), self));
                }
            }
            if self.done {
                return None;
            }
            if let Some(rx) = &self.live {
                match rx.recv().await {
                    Ok(d) => self.buf.push_back(d),
                    // Dropped for lagging, or the emitter closed: the log
                    // read below tells which.
                    Err(_) => self.live = None,
                }
                continue;
            }
            let from = self.next;
            let got = self
                .em
                .call(|reply| EmitCommand::Follow {
                    from,
                    limit: PAGE,
                    reply,
                })
                .await;
            match got {
                Ok(Follow::Page(events)) => self.buf.extend(events),
                Ok(Follow::Live(rx)) => self.live = Some(rx),
                Err(EmitterError::Mq(MqError::Closed)) => return None,
                Err(e) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
            }
        }
    }
}

/// A named consumer's events, from [`Emitter::resume`] or
/// [`Emitter::from_scratch`]: a [`DeliveryStream`] from its saved position,
/// plus [`Consumer::commit`] to save progress.
pub struct Consumer {
    name: String,
    em: Emitter,
    stream: DeliveryStream,
    start: u64,
    _hold: ConsumerHold,
}

/// A consumer name held by a live [`Consumer`], given back on drop.
struct ConsumerHold {
    shared: Arc<Shared>,
    name: String,
}

impl ConsumerHold {
    fn take(shared: &Arc<Shared>, name: &str) -> Result<Self, EmitterError> {
        let mut held = shared.consumers.lock().unwrap_or_else(|e| e.into_inner());
        if !held.insert(name.to_string()) {
            return Err(EmitterError::ConsumerBusy(name.to_string()));
        }
        Ok(ConsumerHold {
            shared: shared.clone(),
            name: name.to_string(),
        })
    }
}

impl Drop for ConsumerHold {
    fn drop(&mut self) {
        let mut held = self
            .shared
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        held.remove(&self.name);
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("start", &self.start)
            .finish()
    }
}

impl Consumer {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log position this consumer started at.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Durably records that `event` and everything before it are processed:
    /// a later [`Emitter::resume`] starts after it. Commit after
    /// processing, for at-least-once delivery across crashes.
    pub async fn commit(&self, event: &Delivered) -> Result<(), EmitterError> {
        self.commit_position(event.position + 1).await
    }

    /// Durably records that every event before log position `position` is
    /// processed.
    pub async fn commit_position(&self, position: u64) -> Result<(), EmitterError> {
        self.em.commit(&self.name, position).await
    }
}

impl Stream for Consumer {
    type Item = Result<Delivered, EmitterError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}
