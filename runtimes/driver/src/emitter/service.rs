//! The emitter's side of the driver: runs [`peermq::emitter::Emitter`]
//! next to the node, fans delivered events out to followers, announces our
//! listen addresses as `EventPeer` events and keeps connections to the
//! addresses peers announced ([`Dials`]). It wraps the queue's service, so
//! an emitter's [`crate::Mq`] handle works as any other.

use std::net::SocketAddr;

use async_channel::{Receiver, Sender};
use peermq::emitter::{Delivered, Emitter as CoreEmitter, Schema, EVENT_PEER};
use peermq::{ConnId, Event, Instant, Node, PeerId, Store};
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::dials::Dials;
use crate::driver::{answer, Ctx, Reply, Service};
use crate::error::EmitterError;
use crate::mq::{Queue, QueueCommand};
use crate::runtime::Connection;

/// Delivered events buffered per live follower. One that falls further
/// behind is dropped and reads the persistent log to catch up.
const FOLLOW_BUFFER: usize = 1024;

/// Where the answer of an emitter command goes.
pub(crate) type EReply<T> = Reply<T, EmitterError>;

/// An answer to [`EmitCommand::Follow`].
pub(crate) enum Follow {
    /// Logged events from the position asked for.
    Page(Vec<Delivered>),
    /// Caught up: every event delivered from now on comes through here,
    /// until the receiver falls too far behind and is dropped.
    Live(Receiver<Delivered>),
}

/// What an [`crate::Emitter`] asks of the driver.
pub(crate) enum EmitCommand {
    Emit {
        name: String,
        value: Value,
        reply: EReply<u64>,
    },
    EmitEncoded {
        name: String,
        payload: Vec<u8>,
        reply: EReply<u64>,
    },
    LogLen {
        reply: EReply<u64>,
    },
    Follow {
        from: u64,
        limit: usize,
        reply: EReply<Follow>,
    },
    Consumer {
        name: String,
        reply: EReply<u64>,
    },
    Commit {
        name: String,
        position: u64,
        reply: EReply<()>,
    },
    /// Emits our `EventPeer` if our listen addresses changed since the last
    /// one; answers with its seq, or `None` if nothing changed.
    Announce {
        advertise: Vec<SocketAddr>,
        reply: EReply<Option<u64>>,
    },
    ConnectAddr {
        addr: SocketAddr,
        reply: EReply<PeerId>,
    },
    KnownAddrs {
        reply: EReply<Vec<SocketAddr>>,
    },
}

/// The commands an emitter's driver takes: its queue's and its own.
pub(crate) enum EmitterCommand {
    Queue(QueueCommand),
    Emit(EmitCommand),
}

impl From<QueueCommand> for EmitterCommand {
    fn from(c: QueueCommand) -> Self {
        EmitterCommand::Queue(c)
    }
}

impl From<EmitCommand> for EmitterCommand {
    fn from(c: EmitCommand) -> Self {
        EmitterCommand::Emit(c)
    }
}

/// The emitter service.
pub(crate) struct Emitting {
    queue: Queue,
    core: CoreEmitter,
    followers: Vec<Sender<Delivered>>,
    /// Broadcast blocks arrived since the last delivery pass. Starts true,
    /// so blocks stored before a crash but not delivered go out at start.
    pending: bool,
    dials: Dials,
}

impl Emitting {
    /// Opens the emitter's state and address book kept in `node`'s store,
    /// around the node's queue service.
    pub(crate) fn open<S: Store>(
        node: &Node<S>,
        queue: Queue,
        schema: Schema,
    ) -> Result<Self, EmitterError> {
        Ok(Emitting {
            queue,
            core: CoreEmitter::open(node, schema)?,
            followers: Vec::new(),
            pending: true,
            dials: Dials::open(node)?,
        })
    }

    /// Delivers what became deliverable, fans it out, and learns the
    /// addresses announced in it.
    fn deliver<S: Store>(&mut self, cx: &mut Ctx<'_, S>) {
        if !std::mem::take(&mut self.pending) {
            return;
        }
        let delivered = match self.core.deliver_ready(cx.node) {
            Ok(d) => d,
            Err(e) => {
                // Nothing was recorded; the next block arriving retries.
                warn!(error = %e, "peermq: delivering events failed");
                return;
            }
        };
        for d in &delivered {
            self.followers.retain(|tx| tx.try_send(d.clone()).is_ok());
        }
        for d in delivered {
            if d.name != EVENT_PEER {
                continue;
            }
            match d
                .value
                .as_ref()
                .and_then(|v| peermq::emitter::event_peer_addresses(v, &d.author))
            {
                Some(list) => self.dials.learn(cx, d.author, list),
                None => {
                    debug!(peer = %d.author, "peermq: ignored an EventPeer that does not announce its author")
                }
            }
        }
    }

    /// A new live follower.
    fn follow(&mut self) -> Receiver<Delivered> {
        let (tx, rx) = async_channel::bounded(FOLLOW_BUFFER);
        self.followers.retain(|f| !f.is_closed());
        self.followers.push(tx);
        rx
    }

    fn on_emit<S: Store>(&mut self, cx: &mut Ctx<'_, S>, cmd: EmitCommand) {
        let now = cx.now;
        match cmd {
            EmitCommand::Emit { name, value, reply } => {
                let r = self.core.emit(cx.node, &name, &value, now);
                answer(reply, r.map_err(Into::into));
            }
            EmitCommand::EmitEncoded {
                name,
                payload,
                reply,
            } => {
                let r = self.core.emit_encoded(cx.node, &name, &payload, now);
                answer(reply, r.map_err(Into::into));
            }
            EmitCommand::LogLen { reply } => answer(reply, Ok(self.core.log_len())),
            EmitCommand::Follow { from, limit, reply } => {
                if from >= self.core.log_len() {
                    return answer(reply, Ok(Follow::Live(self.follow())));
                }
                match self.core.read_log(cx.node, from, limit.max(1)) {
                    Ok(page) if page.is_empty() => {
                        // Logged blocks that are gone cannot be yielded;
                        // follow live rather than spin on them.
                        warn!(
                            from,
                            "peermq: delivery log entries are missing; skipping to live events"
                        );
                        answer(reply, Ok(Follow::Live(self.follow())));
                    }
                    Ok(page) => answer(reply, Ok(Follow::Page(page))),
                    Err(e) => answer(reply, Err(e.into())),
                }
            }
            EmitCommand::Consumer { name, reply } => {
                answer(
                    reply,
                    self.core.consumer(cx.node, &name).map_err(Into::into),
                );
            }
            EmitCommand::Commit {
                name,
                position,
                reply,
            } => {
                let r = self.core.commit_consumer(cx.node, &name, position);
                answer(reply, r.map_err(Into::into));
            }
            EmitCommand::Announce { advertise, reply } => {
                let Some(list) = self.dials.advertise(cx.node, advertise) else {
                    return answer(reply, Ok(None));
                };
                let me = cx.node.id();
                let addresses: Vec<Value> = list
                    .iter()
                    .map(|a| json!({"ip": a.ip().to_string(), "port": a.port()}))
                    .collect();
                let value = json!({"id": me.to_string(), "addresses": addresses});
                let r = self.core.emit(cx.node, EVENT_PEER, &value, now);
                if r.is_ok() {
                    self.dials.announced_ours(cx.node, list);
                }
                answer(reply, r.map(Some).map_err(Into::into));
            }
            EmitCommand::ConnectAddr { addr, reply } => self.dials.connect(cx, addr, reply),
            EmitCommand::KnownAddrs { reply } => answer(reply, Ok(self.dials.known())),
        }
    }
}

impl<S: Store> Service<S> for Emitting {
    type Command = EmitterCommand;

    fn on_command(&mut self, cx: &mut Ctx<'_, S>, cmd: EmitterCommand) {
        match cmd {
            EmitterCommand::Queue(c) => self.queue.on_command(cx, c),
            EmitterCommand::Emit(c) => self.on_emit(cx, c),
        }
    }

    fn on_event(&mut self, cx: &mut Ctx<'_, S>, event: &Event) {
        match *event {
            Event::Connected { conn, peer } => self.dials.connected(conn, peer),
            Event::Disconnected {
                conn,
                peer,
                ref reason,
            } => self.dials.disconnected(cx, conn, peer, reason),
            Event::Broadcast { .. } => self.pending = true,
            Event::RelayRefused {
                peer,
                author,
                reason,
            } => {
                warn!(%peer, %author, %reason, "peermq: a relay holds no more of this author's events; they reach others through other relays")
            }
            _ => {}
        }
        self.queue.on_event(cx, event);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.dials.next_due()
    }

    fn on_timeout(&mut self, cx: &mut Ctx<'_, S>) {
        self.dials.redial(cx);
    }

    fn after_pump(&mut self, cx: &mut Ctx<'_, S>) {
        self.queue.after_pump(cx);
        self.deliver(cx);
    }

    fn on_close(&mut self, cx: &mut Ctx<'_, S>, conn: ConnId, reason: &str) {
        self.dials.closed(cx, conn, reason);
        self.queue.on_close(cx, conn, reason);
    }

    fn on_dialed(
        &mut self,
        cx: &mut Ctx<'_, S>,
        addr: SocketAddr,
        transport: Result<Connection, String>,
    ) {
        self.dials.dialed(cx, addr, transport);
    }
}
