//! The application's handle on a running node.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::Stream;
use peermq::ranges::RangeSet;
use peermq::store::meta;
use peermq::wire::Receipt;
use peermq::{
    CloseReason, Config, Keypair, LmdbOptions, LmdbStore, Mailbox, MemStore, Node, NodeError,
    PeerId, PeerStatus, Record, SeededRng, Store, StoreError, Txn,
};

use crate::discovery::{Discovery, LocalDiscovery, StaticDiscovery};
use crate::driver::{Command, Driver, Reply};
use crate::Runtime;

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
    /// The operating system gave no randomness for a new identity.
    #[error("the operating system gave no randomness to create an identity or session keys: {0}")]
    Randomness(String),
}

/// Something that happened, from [`Mq::events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MqEvent {
    /// A connection to `peer` finished its handshake.
    Connected {
        /// Who.
        peer: PeerId,
    },
    /// A connection ended.
    Disconnected {
        /// The peer, if the handshake had told us.
        peer: Option<PeerId>,
        /// Why.
        reason: CloseReason,
    },
    /// `to` durably stored and acknowledged messages `start..end` we sent it.
    Acked {
        /// The recipient.
        to: PeerId,
        /// First newly acknowledged seq.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// Message `seq` from `from` arrived and is unread.
    Message {
        /// The sender.
        from: PeerId,
        /// Its seq.
        seq: u64,
    },
    /// A message asked for with [`Mq::get`] arrived.
    Fetched {
        /// The sender.
        from: PeerId,
        /// Its seq.
        seq: u64,
    },
    /// This subscriber fell behind and `missed` events were dropped for it
    /// (events are buffered per subscriber, up to a bound, so that a
    /// forgotten subscriber cannot grow memory without limit).
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// Per-subscriber buffer of [`Mq::events`].
pub(crate) const EVENT_BUFFER: usize = 4096;

pub(crate) struct Subscriber {
    pub tx: Sender<MqEvent>,
    pub missed: u64,
}

pub(crate) type Subscribers = Arc<Mutex<Vec<Subscriber>>>;

/// Fans an event out to every subscriber without ever waiting on one.
///
/// A subscriber's last free slot is kept for a [`MqEvent::Lagged`] notice:
/// one that falls behind learns of it at once, even when no later event
/// comes to carry the news (a reader waiting for the last message of a
/// burst would otherwise wait forever).
pub(crate) fn publish(subs: &Subscribers, event: &MqEvent) {
    let mut subs = subs.lock().unwrap_or_else(|e| e.into_inner());
    subs.retain_mut(|s| {
        if s.missed > 0 && !s.tell_lag() {
            s.missed += 1;
            return !s.tx.is_closed();
        }
        let room = s.tx.capacity().map_or(usize::MAX, |c| c - s.tx.len());
        if room <= 1 {
            s.missed += 1;
            s.tell_lag();
            return !s.tx.is_closed();
        }
        match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(async_channel::TrySendError::Full(_)) => {
                s.missed += 1;
                true
            }
            Err(async_channel::TrySendError::Closed(_)) => false,
        }
    });
}

impl Subscriber {
    /// Sends the lag notice for what was missed; `false` if it did not fit.
    fn tell_lag(&mut self) -> bool {
        let sent = self
            .tx
            .try_send(MqEvent::Lagged {
                missed: self.missed,
            })
            .is_ok();
        if sent {
            self.missed = 0;
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> MqEvent {
        MqEvent::Message {
            from: PeerId([1; 32]),
            seq,
        }
    }

    #[test]
    fn a_lagging_subscriber_hears_of_it_even_when_nothing_follows() {
        let (tx, rx) = async_channel::bounded(4);
        let subs: Subscribers = Arc::new(Mutex::new(vec![Subscriber { tx, missed: 0 }]));
        // Ten events into room for four, then silence.
        for seq in 0..10 {
            publish(&subs, &message(seq));
        }
        let got: Vec<MqEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            vec![
                message(0),
                message(1),
                message(2),
                MqEvent::Lagged { missed: 1 }
            ]
        );
        // Once there is room again, the rest of the count (events 4..10, the
        // notice above told of 3) comes first.
        publish(&subs, &message(10));
        let got: Vec<MqEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, vec![MqEvent::Lagged { missed: 6 }, message(10)]);
    }
}

/// Opens an [`Mq`]: where its data lives, how it is tuned, how it finds
/// peers.
pub struct Builder {
    dir: PathBuf,
    config: Config,
    lmdb: LmdbOptions,
    local_dir: Option<PathBuf>,
    local: bool,
    discoveries: Vec<Arc<dyn Discovery>>,
    sign_ahead: bool,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("local_dir", &self.local_dir)
            .field("local", &self.local)
            .field("sign_ahead", &self.sign_ahead)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A node whose data (identity, feeds, inbox) lives in directory `dir`,
    /// created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Builder {
            dir: dir.into(),
            config: Config::default(),
            lmdb: LmdbOptions::default(),
            local_dir: None,
            local: true,
            discoveries: Vec::new(),
            sign_ahead: false,
        }
    }

    /// Tunes the core. Its `rng_seed` is replaced by 32 fresh bytes from the
    /// operating system at every open, since keys must be unpredictable, and
    /// its `nonce_seed` likewise when [`Builder::sign_ahead`] is on (else it
    /// is cleared).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Prepares each signature's nonce while the node is idle, which takes
    /// most of a signature's cost off `send` (see [`Config::nonce_seed`]).
    /// Off by default, because it is safe only where the running process is
    /// never copied: a VM snapshot restored twice, a cloned container or a
    /// `fork()` of a running node would sign two messages with one nonce and
    /// reveal the node's secret key. Turn it on for latency-critical nodes on
    /// hosts you control.
    pub fn sign_ahead(mut self, enabled: bool) -> Self {
        self.sign_ahead = enabled;
        self
    }

    /// Tunes the LMDB store.
    pub fn lmdb_options(mut self, options: LmdbOptions) -> Self {
        self.lmdb = options;
        self
    }

    /// Uses `dir` for local-machine discovery instead of
    /// [`LocalDiscovery::default_dir`].
    pub fn discovery_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.local_dir = Some(dir.into());
        self
    }

    /// Turns local-machine discovery on (the default) or off.
    pub fn local_discovery(mut self, enabled: bool) -> Self {
        self.local = enabled;
        self
    }

    /// Adds a discovery mechanism, asked after the addresses given with
    /// [`Mq::add_peer`] and after local-machine discovery.
    pub fn discovery(mut self, discovery: Arc<dyn Discovery>) -> Self {
        self.discoveries.push(discovery);
        self
    }

    /// Opens the node on an [`LmdbStore`] in the data directory and starts
    /// its driver task on `runtime`.
    pub fn open(self, runtime: Arc<dyn Runtime>) -> Result<Mq, MqError> {
        let store = LmdbStore::open_with(&self.dir, self.lmdb.clone())?;
        self.open_with_store(store, runtime)
    }

    /// Opens the node on an in-memory store (nothing survives the process):
    /// for tests and experiments.
    pub fn open_in_memory(self, runtime: Arc<dyn Runtime>) -> Result<Mq, MqError> {
        self.open_with_store(MemStore::new(), runtime)
    }

    /// Opens the node on any store and starts its driver task on `runtime`.
    pub fn open_with_store<S: Store + Send + 'static>(
        self,
        store: S,
        runtime: Arc<dyn Runtime>,
    ) -> Result<Mq, MqError> {
        self.start(store, runtime, None).map_err(|e| match e {
            crate::emitter::EmitterError::Mq(e) => e,
            // Without a schema no emitter error can arise; keep the
            // message rather than inventing a variant.
            other => MqError::Store(StoreError::Backend(other.to_string())),
        })
    }

    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub(crate) fn lmdb_opts(&self) -> &LmdbOptions {
        &self.lmdb
    }

    /// Opens the node and, given a schema (and the keys an emitter is
    /// restricted to), runs the event emitter in its driver task too.
    pub(crate) fn start<S: Store + Send + 'static>(
        self,
        store: S,
        runtime: Arc<dyn Runtime>,
        emitter: Option<(peermq::emitter::Schema, Vec<PeerId>)>,
    ) -> Result<Mq, crate::emitter::EmitterError> {
        ensure_identity(&store)?;
        let mut config = self.config;
        config.rng_seed = Some(os_random()?);
        config.nonce_seed = if self.sign_ahead {
            Some(os_random()?)
        } else {
            None
        };
        let start = runtime.now();
        let mut node = Node::open(store, config, peermq::Instant::ZERO).map_err(MqError::from)?;
        let id = node.id();
        let em = match emitter {
            Some((schema, allow)) => {
                // Before the driver starts, so that no connection is ever
                // admitted under a looser rule than asked for.
                for key in allow {
                    node.add_peer(key).map_err(MqError::from)?;
                }
                Some(crate::driver::EmitState::open(&node, schema)?)
            }
            None => None,
        };
        let statics = Arc::new(StaticDiscovery::new());
        let mut discoveries: Vec<Arc<dyn Discovery>> = vec![statics.clone()];
        if self.local {
            let local = match self.local_dir {
                Some(d) => LocalDiscovery::in_dir(d),
                None => LocalDiscovery::new(),
            };
            discoveries.push(Arc::new(local));
        }
        discoveries.extend(self.discoveries);
        let (cmd_tx, cmd_rx) = async_channel::bounded(64);
        let subscribers: Subscribers = Arc::default();
        let driver = Driver::new(
            node,
            runtime.clone(),
            start,
            cmd_rx,
            discoveries,
            statics,
            subscribers.clone(),
            em,
        );
        runtime.spawn(Box::pin(driver.run()));
        Ok(Mq {
            inner: Arc::new(Inner {
                id,
                cmd: cmd_tx,
                runtime,
                subscribers,
            }),
        })
    }
}

/// Creates the node's identity from operating-system randomness if the store
/// has none (the core only ever derives keys from seeds it is given).
/// 32 bytes from the operating system's random source.
fn os_random() -> Result<[u8; 32], MqError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| MqError::Randomness(e.to_string()))?;
    Ok(seed)
}

fn ensure_identity<S: Store>(store: &S) -> Result<(), MqError> {
    let mut txn = Txn::begin(store)?;
    meta::check_format(&mut txn)?;
    if meta::identity(&txn)?.is_some() {
        return Ok(());
    }
    let seed = os_random()?;
    meta::identity_or_insert(&mut txn, || {
        Keypair::generate(&mut SeededRng::from_seed(seed))
    })?;
    match txn.commit() {
        Ok(()) => Ok(()),
        // Another process created it at the same moment: use theirs.
        Err(StoreError::Conflict) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

struct Inner {
    id: PeerId,
    cmd: Sender<Command>,
    runtime: Arc<dyn Runtime>,
    subscribers: Subscribers,
}

/// A handle on a running peermq node. Cheap to clone; every clone talks to
/// the same driver task. The node shuts down gracefully when
/// [`Mq::shutdown`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Mq {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mq").field("id", &self.inner.id).finish()
    }
}

impl Mq {
    /// Starts configuring a node whose data lives in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> Builder {
        Builder::new(dir)
    }

    /// Hands `cmd` to the driver task.
    pub(crate) async fn command(&self, cmd: Command) -> Result<(), MqError> {
        self.inner.cmd.send(cmd).await.map_err(|_| MqError::Closed)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, MqError> {
        let (tx, rx) = async_channel::bounded(1);
        self.inner
            .cmd
            .send(make(tx))
            .await
            .map_err(|_| MqError::Closed)?;
        rx.recv().await.map_err(|_| MqError::Closed)?
    }

    /// This node's id: its public key.
    pub async fn id(&self) -> PeerId {
        self.inner.id
    }

    /// The runtime the node runs on.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.inner.runtime
    }

    /// Authorizes `peer` to dial us, and records `addr`, if given, as where
    /// [`Mq::connect`] reaches it. Returns whether the peer was new.
    pub async fn add_peer(&self, peer: PeerId, addr: Option<SocketAddr>) -> Result<bool, MqError> {
        self.call(|reply| Command::AddPeer { peer, addr, reply })
            .await
    }

    /// Revokes `peer`: it can no longer dial us, open connections with it
    /// close now, and we stop dialing it. Its messages stay. Returns whether
    /// it was authorized.
    pub async fn remove_peer(&self, peer: PeerId) -> Result<bool, MqError> {
        self.call(|reply| Command::RemovePeer { peer, reply }).await
    }

    /// Every peer we know of (authorized, connected, or one we exchanged
    /// messages with), with counts of what was sent, acknowledged, received
    /// and is unread.
    pub async fn peers(&self) -> Result<Vec<PeerStatus>, MqError> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// Sends `message` to `to`. When this returns, it is durably stored (it
    /// survives a crash), even while offline; it travels once a connection
    /// exists. Returns its seq.
    pub async fn send(&self, to: PeerId, message: impl Into<Vec<u8>>) -> Result<u64, MqError> {
        let messages = vec![message.into()];
        Ok(self
            .call(|reply| Command::Send {
                to,
                messages,
                reply,
            })
            .await?
            .start)
    }

    /// Sends several messages to `to` in one durable commit. Returns their
    /// seqs.
    pub async fn send_batch(
        &self,
        to: PeerId,
        messages: Vec<Vec<u8>>,
    ) -> Result<Range<u64>, MqError> {
        self.call(|reply| Command::Send {
            to,
            messages,
            reply,
        })
        .await
    }

    /// The messages of `mailbox`, in (sender, seq) order per sender. With
    /// `live`, the stream then waits for more (new arrivals for
    /// [`Mailbox::Unread`], new archives for [`Mailbox::Archived`]) and never
    /// ends while the node runs; without, it ends once caught up. Each
    /// message is yielded once per stream. Reading the unread mailbox moves
    /// the prefetch window ([`peermq::Prefetch::Window`]) past what was
    /// read, as archiving does, so a live stream that never archives still
    /// gets every message, downloaded a window ahead of it.
    pub fn read_stream(&self, mailbox: Mailbox, live: bool) -> RecordStream {
        let state = ReadState {
            mq: self.clone(),
            mailbox,
            live,
            seen: BTreeMap::new(),
            buf: VecDeque::new(),
            wait_past: None,
            done: false,
        };
        RecordStream {
            inner: Box::pin(futures_lite::stream::unfold(state, ReadState::next)),
        }
    }

    /// Message `seq` from `from`, downloading it (with its proof, and
    /// nothing else) if it has not arrived: the sparse read. Waits until it
    /// arrives; `None` if it was cleared here.
    pub async fn get(&self, from: PeerId, seq: u64) -> Result<Option<Vec<u8>>, MqError> {
        self.call(|reply| Command::Get { from, seq, reply }).await
    }

    /// Marks message `seq` from `from` processed: it leaves the unread
    /// mailbox for the archived one. Returns `false` if it already was
    /// archived (by this process or another on the same data directory), so
    /// each message is processed once.
    pub async fn archive(&self, from: PeerId, seq: u64) -> Result<bool, MqError> {
        self.call(|reply| Command::Archive { from, seq, reply })
            .await
    }

    /// Drops message `seq` from `from` locally; it is never downloaded
    /// again. Returns `false` if it already was cleared.
    pub async fn clear(&self, from: PeerId, seq: u64) -> Result<bool, MqError> {
        self.call(|reply| Command::Clear { from, seq, reply }).await
    }

    /// The latest signed receipt `to` gave for our messages: exportable
    /// proof of delivery ([`Receipt::verify`]).
    pub async fn receipt(&self, to: PeerId) -> Result<Option<Receipt>, MqError> {
        self.call(|reply| Command::Receipt { to, reply }).await
    }

    /// Connection, acknowledgement and arrival events from now on. Each call
    /// makes an independent subscriber with its own bounded buffer.
    pub fn events(&self) -> EventStream {
        let (tx, rx) = async_channel::bounded(EVENT_BUFFER);
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Subscriber { tx, missed: 0 });
        EventStream { rx: Box::pin(rx) }
    }

    /// Accepts connections on `addr` (port 0 lets the OS pick) and announces
    /// it to discovery. Returns the bound address.
    pub async fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, MqError> {
        let listener = self
            .inner
            .runtime
            .bind(addr)
            .await
            .map_err(|source| MqError::Listen { addr, source })?;
        self.call(|reply| Command::Listen { listener, reply }).await
    }

    /// Keeps a connection to `peer`: finds its address through discovery and
    /// dials it now, and again with the core's backoff whenever that fails or
    /// the connection drops, until [`Mq::disconnect`] or
    /// [`Mq::remove_peer`]. Returns at once; [`MqEvent::Connected`] tells
    /// when the connection is up.
    pub async fn connect(&self, peer: PeerId) -> Result<(), MqError> {
        self.call(|reply| Command::Connect { peer, reply }).await
    }

    /// Stops keeping a connection to `peer` and closes open ones.
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), MqError> {
        self.call(|reply| Command::Disconnect { peer, reply }).await
    }

    /// Stops the node gracefully: stops listening and withdraws discovery
    /// entries, tells every peer it is closing, writes out everything queued
    /// for the sockets (waiting up to a few seconds for slow peers), and
    /// closes the store. Every handle then returns [`MqError::Closed`].
    pub async fn shutdown(&self) -> Result<(), MqError> {
        let (tx, rx) = async_channel::bounded(1);
        if self
            .inner
            .cmd
            .send(Command::Shutdown { reply: tx })
            .await
            .is_err()
        {
            // Already shut down: nothing left to flush.
            return Ok(());
        }
        let _ = rx.recv().await;
        Ok(())
    }
}

/// A stream of received messages, from [`Mq::read_stream`].
pub struct RecordStream {
    inner: Pin<Box<dyn Stream<Item = Result<Record, MqError>> + Send>>,
}

impl std::fmt::Debug for RecordStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordStream { .. }")
    }
}

impl Stream for RecordStream {
    type Item = Result<Record, MqError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A stream of [`MqEvent`]s, from [`Mq::events`].
pub struct EventStream {
    rx: Pin<Box<Receiver<MqEvent>>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream { .. }")
    }
}

impl Stream for EventStream {
    type Item = MqEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MqEvent>> {
        self.rx.as_mut().poll_next(cx)
    }
}

/// Records asked of the driver per round trip.
const READ_PAGE: usize = 512;
/// How often a live stream looks again without being woken, which catches
/// what other processes sharing the data directory did.
const LIVE_RECHECK: Duration = Duration::from_millis(500);

struct ReadState {
    mq: Mq,
    mailbox: Mailbox,
    live: bool,
    /// What this stream yielded, per sender.
    seen: BTreeMap<PeerId, RangeSet>,
    buf: VecDeque<Record>,
    /// The generation a live stream caught up at: its next read waits in
    /// the driver until the generation moves past it.
    wait_past: Option<u64>,
    done: bool,
}

impl ReadState {
    async fn next(mut self) -> Option<(Result<Record, MqError>, Self)> {
        loop {
            if let Some(r) = self.buf.pop_front() {
                return Some((Ok(r), self));
            }
            if self.done {
                return None;
            }
            let seen = self.seen.clone();
            let mailbox = self.mailbox;
            let after = self.wait_past.take();
            let read = self.mq.call(|reply| Command::Read {
                mailbox,
                seen,
                limit: READ_PAGE,
                after,
                reply,
            });
            let got = if after.is_some() {
                let rt = self.mq.inner.runtime.clone();
                match crate::timeout(&*rt, LIVE_RECHECK, read).await {
                    Some(got) => got,
                    // Nothing woke us: read again now (`wait_past` is
                    // cleared), for what other processes did.
                    None => continue,
                }
            } else {
                read.await
            };
            let (records, generation) = match got {
                Ok(x) => x,
                Err(e) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
            };
            let full_page = records.len() >= READ_PAGE;
            for r in records {
                let seen = self.seen.entry(r.from).or_default();
                if !seen.contains(r.seq) {
                    seen.insert(r.seq, r.seq + 1);
                    self.buf.push_back(r);
                }
            }
            if full_page {
                continue;
            }
            // A short page means the stream was caught up at `generation`:
            // reading again before it moves would find nothing new.
            if self.live {
                self.wait_past = Some(generation);
            } else {
                self.done = true;
            }
        }
    }
}
