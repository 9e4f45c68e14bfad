//! The application's handle on a running node ([`Mq`]), how it is opened
//! ([`Builder`]), and the queue service its driver runs.

mod events;
mod mail;
mod read;
mod service;
mod work;

pub use events::{EventStream, MqEvent};
pub use mail::MailStatus;
pub use read::RecordStream;
pub use work::Worker;

pub(crate) use events::Subscribers;
pub(crate) use service::{Queue, QueueCommand};

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use peermq::{
    Config, Entropy, Keypair, LmdbOptions, LmdbStore, Mailbox, MemStore, Node, PeerId, PeerStatus,
    Receipt, Schedule, Store,
};

use crate::discovery::{Discovery, LocalDiscovery, StaticDiscovery};
use crate::driver::{Command, CommandTx, Commands, Driver, Finders, Reply, Service};
use crate::error::MqError;
use crate::runtime::{ConnectionInfo, Runtime, Transport};

/// Opens an [`Mq`]: where its data lives, how it is tuned, how it finds
/// peers.
pub struct Builder {
    dir: PathBuf,
    config: Config,
    lmdb: LmdbOptions,
    local_dir: Option<PathBuf>,
    local: bool,
    /// Each made from the node's key once the store has given it (one
    /// given ready-made ignores the key).
    discoveries: Vec<MakeDiscovery>,
    sign_ahead: bool,
    transport: Option<MakeTransport>,
}

type MakeTransport = Box<dyn FnOnce(&Keypair) -> io::Result<Arc<dyn Transport>> + Send>;
type MakeDiscovery = Box<dyn FnOnce(&Keypair) -> io::Result<Arc<dyn Discovery>> + Send>;

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("local_dir", &self.local_dir)
            .field("local", &self.local)
            .field("sign_ahead", &self.sign_ahead)
            .field("transport", &self.transport.is_some())
            .field("discoveries", &self.discoveries.len())
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
            transport: None,
        }
    }

    /// Carries connections over `transport` instead of the runtime's own
    /// ([`Runtime::default_transport`], TCP): `listen` binds with it and
    /// every dial goes through it. The protocol's bytes are the same over
    /// any transport.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(Box::new(move |_| Ok(transport)));
        self
    }

    /// Carries connections over the transport `make` builds from the
    /// node's key pair, once the store has given it: for transports that
    /// authenticate with the node's own key, so that one key is the peer
    /// id everywhere (`peermq-iroh` keys its endpoint with it). An error
    /// from `make` fails the open with [`MqError::Transport`].
    pub fn transport_for(
        mut self,
        make: impl FnOnce(&Keypair) -> io::Result<Arc<dyn Transport>> + Send + 'static,
    ) -> Self {
        self.transport = Some(Box::new(make));
        self
    }

    /// Tunes the core. Its randomness ([`peermq::Entropy`]) is 32 fresh
    /// bytes from the operating system at every open, since keys must be
    /// unpredictable (and 32 more with [`Builder::sign_ahead`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Serves as a mailbox within `limits`: accepts connections from any
    /// identity, and holds the mail of recipients that name this node
    /// ([`Mq::add_mailbox`] on theirs) until they collect it. Sets
    /// [`Config::mailbox`], so give it after [`Builder::config`].
    pub fn mailbox(mut self, limits: peermq::MailboxLimits) -> Self {
        self.config.mailbox = Some(limits);
        self
    }

    /// Prepares each signature's nonce while the node is idle, which takes
    /// most of a signature's cost off `send` (see [`peermq::Entropy::sign_ahead`]).
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
        self.discoveries.push(Box::new(move |_| Ok(discovery)));
        self
    }

    /// Adds the discovery mechanism `make` builds from the node's key
    /// pair, once the store has given it: for one that publishes records
    /// signed by the node's key (`peermq-dht`). Asked in the order added,
    /// as [`Builder::discovery`]. An error from `make` fails the open with
    /// [`MqError::Discovery`].
    pub fn discovery_for(
        mut self,
        make: impl FnOnce(&Keypair) -> io::Result<Arc<dyn Discovery>> + Send + 'static,
    ) -> Self {
        self.discoveries.push(Box::new(make));
        self
    }

    /// Opens the node on an [`LmdbStore`] in the data directory and starts
    /// its driver task on `runtime`.
    ///
    /// A new data directory is created private to this user (see
    /// [`crate::datadir`]); one open to others is warned about (a
    /// `tracing` warning; [`crate::datadir::permission_warnings`] gives the
    /// text to show the user).
    pub fn open(self, runtime: Arc<dyn Runtime>) -> Result<Mq, MqError> {
        let store = self.open_store()?;
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
        let (mq, _) = self.launch(store, runtime, |_, queue| Ok::<_, MqError>(queue))?;
        Ok(mq)
    }

    /// Opens the LMDB store of the data directory.
    pub(crate) fn open_store(&self) -> Result<LmdbStore, MqError> {
        crate::datadir::prepare(&self.dir).map_err(|source| {
            MqError::Store(peermq::StoreError::Io {
                path: self.dir.display().to_string(),
                source,
            })
        })?;
        Ok(LmdbStore::open_with(&self.dir, self.lmdb.clone())?)
    }

    /// Opens the node on `store` and starts its driver task on `runtime`,
    /// running the service `wrap` makes out of the node and its queue
    /// service. Returns the queue handle and the service's command channel.
    pub(crate) fn launch<S, Sv, E>(
        self,
        store: S,
        runtime: Arc<dyn Runtime>,
        wrap: impl FnOnce(&mut Node<S>, Queue) -> Result<Sv, E>,
    ) -> Result<(Mq, CommandTx<S, Sv>), E>
    where
        S: Store + Send + 'static,
        Sv: Service<S>,
        Sv::Command: From<QueueCommand>,
        E: From<MqError>,
    {
        let mut entropy = Entropy::new(os_random()?);
        if self.sign_ahead {
            entropy = entropy.sign_ahead(os_random()?);
        }
        let mut node = Node::open(store, self.config, entropy, peermq::Instant::ZERO)
            .map_err(MqError::from)?;
        let id = node.id();
        let subscribers = Subscribers::default();
        let service = wrap(&mut node, Queue::new(subscribers.clone()))?;
        let statics = Arc::new(StaticDiscovery::new());
        let mut all: Vec<Arc<dyn Discovery>> = vec![statics.clone()];
        if self.local {
            let local = match self.local_dir {
                Some(d) => LocalDiscovery::in_dir(d),
                None => LocalDiscovery::new(),
            }
            .with_key(node.keypair());
            all.push(Arc::new(local));
        }
        for make in self.discoveries {
            all.push(make(node.keypair()).map_err(MqError::Discovery)?);
        }
        let finders = Finders {
            statics,
            all: Arc::new(all),
        };
        let transport = match self.transport {
            None => runtime.transport_for(node.keypair()),
            Some(make) => make(node.keypair()),
        }
        .map_err(MqError::Transport)?;
        let (tx, rx) = async_channel::bounded(64);
        let driver = Driver::new(
            node,
            service,
            runtime.clone(),
            transport.clone(),
            rx,
            finders,
        );
        runtime.spawn(Box::pin(driver.run()));
        let mq = Mq {
            inner: Arc::new(Inner {
                id,
                cmd: Box::new(tx.clone()),
                runtime,
                transport,
                subscribers,
            }),
        };
        Ok((mq, tx))
    }
}

/// 32 bytes from the operating system's random source.
fn os_random() -> Result<[u8; 32], MqError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| MqError::Randomness(e.to_string()))?;
    Ok(seed)
}

struct Inner {
    id: PeerId,
    cmd: Box<dyn Commands<QueueCommand>>,
    runtime: Arc<dyn Runtime>,
    transport: Arc<dyn Transport>,
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

    /// Asks the driver, and waits for the answer.
    async fn call<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command<QueueCommand>,
    ) -> Result<T, MqError> {
        let (tx, rx) = async_channel::bounded(1);
        self.inner.cmd.send(make(tx)).await?;
        rx.recv().await.map_err(|_| MqError::Closed)?
    }

    /// Asks the queue service, and waits for the answer.
    pub(crate) async fn queue<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> QueueCommand,
    ) -> Result<T, MqError> {
        self.call(|reply| Command::Service(make(reply))).await
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
        self.queue(|reply| QueueCommand::Peers { reply }).await
    }

    /// Sends `message` to `to`. When this returns, it is durably stored (it
    /// survives a crash), even while offline; it travels once a connection
    /// exists. Returns its seq.
    pub async fn send(&self, to: PeerId, message: impl Into<Vec<u8>>) -> Result<u64, MqError> {
        let messages = vec![message.into()];
        Ok(self
            .send_scheduled(to, messages, Schedule::NONE)
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
        self.send_scheduled(to, messages, Schedule::NONE).await
    }

    /// [`Mq::send_batch`] with delivery times, signed with the messages:
    /// `to` delivers none before `schedule.not_before` and dead-letters
    /// them once `schedule.expires_at` passed, by its own clock. Build
    /// the schedule from this machine's clock with
    /// `Schedule::from_now(wall_clock(), delay, expire_in)`.
    pub async fn send_scheduled(
        &self,
        to: PeerId,
        messages: Vec<Vec<u8>>,
        schedule: Schedule,
    ) -> Result<Range<u64>, MqError> {
        self.queue(|reply| QueueCommand::Send {
            to,
            messages,
            schedule,
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
        RecordStream::new(self.clone(), mailbox, live)
    }

    /// Message `seq` from `from`, downloading it (with its proof, and
    /// nothing else) if it has not arrived: the sparse read. Waits until it
    /// arrives; `None` if it was cleared here.
    pub async fn get(&self, from: PeerId, seq: u64) -> Result<Option<Vec<u8>>, MqError> {
        self.queue(|reply| QueueCommand::Get { from, seq, reply })
            .await
    }

    /// Marks message `seq` from `from` processed: it leaves the unread
    /// mailbox for the archived one. Returns `false` if it already was
    /// archived (by this process or another on the same data directory), so
    /// each message is processed once.
    pub async fn archive(&self, from: PeerId, seq: u64) -> Result<bool, MqError> {
        self.queue(|reply| QueueCommand::Archive { from, seq, reply })
            .await
    }

    /// Archives messages `seqs` from `from` in one commit, all or none.
    /// Returns, for each, whether it was newly archived.
    pub async fn archive_many(&self, from: PeerId, seqs: Vec<u64>) -> Result<Vec<bool>, MqError> {
        self.queue(|reply| QueueCommand::ArchiveMany { from, seqs, reply })
            .await
    }

    /// Drops message `seq` from `from` locally; it is never downloaded
    /// again. Returns `false` if it already was cleared.
    pub async fn clear(&self, from: PeerId, seq: u64) -> Result<bool, MqError> {
        self.queue(|reply| QueueCommand::Clear { from, seq, reply })
            .await
    }

    /// The latest signed receipt `to` gave for our messages: exportable
    /// proof of delivery ([`Receipt::verify`]).
    pub async fn receipt(&self, to: PeerId) -> Result<Option<Receipt>, MqError> {
        self.queue(|reply| QueueCommand::Receipt { to, reply })
            .await
    }

    /// Drops the bytes of our messages to `to` that it acknowledged, and,
    /// with `expired_grace`, of those it did not whose expiry passed that
    /// long ago by this machine's clock (a grace for the recipient's clock
    /// running behind). Their hashes stay, so the feed stays verifiable.
    /// Returns how many of each were dropped: (acknowledged, expired).
    pub async fn prune(
        &self,
        to: PeerId,
        expired_grace: Option<std::time::Duration>,
    ) -> Result<(u64, u64), MqError> {
        self.queue(|reply| QueueCommand::Prune {
            to,
            expired_grace,
            reply,
        })
        .await
    }

    /// Connection, acknowledgement and arrival events from now on. Each call
    /// makes an independent subscriber with its own bounded buffer.
    pub fn events(&self) -> EventStream {
        self.inner.subscribers.subscribe()
    }

    /// Accepts connections on `addr` (port 0 lets the OS pick) and announces
    /// it to discovery. Returns the bound address.
    pub async fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, MqError> {
        let listener = self
            .inner
            .transport
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

    /// The live connections whose handshake finished: with whom, which way,
    /// and how each runs (transport, direct or relayed, remote address).
    pub async fn connections(&self) -> Result<Vec<ConnectionInfo>, MqError> {
        self.call(|reply| Command::Connections { reply }).await
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
