//! The replicated event emitter: typed events, causal delivery, named
//! consumers that resume where they stopped.
//!
//! Events are protobuf messages checked against a [`Schema`] loaded at run
//! time. [`Emitter::emit`] appends one to this node's broadcast feed
//! ([`crate::Node::broadcast`]), which the node relays through the mesh.
//! As the node reports broadcast blocks ([`crate::Event::Broadcast`]),
//! [`Emitter::handle_event`] delivers them in causal order: an event never
//! comes before the events its author had delivered when emitting it. Each
//! delivery gets a position in a local, persistent log, so a stream can start
//! from the beginning, from now, or from where a named consumer stopped.
//!
//! Like the node, the emitter does no I/O of its own: it works on a
//! [`crate::Node`] passed in by the driver.

mod book;
mod record;
mod schema;

pub use book::{event_peer_addresses, Book, Learned, MAX_ADDRS_PER_AUTHOR, MAX_BOOK_AUTHORS};
pub use record::EventRecord;
pub use schema::{Schema, SchemaError, ValidationError, EVENT_PEER};

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use serde_json::Value;

use crate::identity::PeerId;
use crate::node::{Event, Node, NodeError};
use crate::store::{Store, StoreError, Table, Txn};
use crate::time::Instant;

const K_LOG: u8 = b'L';
const K_DELIVERED: u8 = b'D';
const K_DECLARED: u8 = b'S';
const K_CONSUMER: u8 = b'C';
const K_LOG_LEN: &[u8] = b"N";

/// An emitter failure.
#[derive(Debug, thiserror::Error)]
pub enum EmitterError {
    /// The value does not fit the schema.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A consumer name is empty or too long.
    #[error("consumer names are 1 to 200 bytes; `{0}` is not")]
    ConsumerName(String),
}

/// An event delivered at this node.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivered {
    /// Its position in this node's delivery log, from 0.
    pub position: u64,
    /// Who emitted it.
    pub author: PeerId,
    /// Its position in the author's broadcast feed.
    pub seq: u64,
    /// The event type (empty if the block is not an event record).
    pub name: String,
    /// The event's protobuf bytes (the whole block if it is not a record).
    pub payload: Vec<u8>,
    /// The event as JSON with defaults filled in, or `None` when its type is
    /// not in the local schema: it still replicates and is delivered raw.
    pub value: Option<Value>,
    /// Causes it declared that this node will never have: `(author, count)`
    /// pairs whose author this node refuses ([`crate::Node::refuses`]: not
    /// replicated, forked, or over a quota). Empty when every cause was
    /// delivered first.
    pub unmet: Vec<(PeerId, u64)>,
}

/// The emitter's state next to a node.
#[derive(Debug)]
pub struct Emitter {
    schema: Schema,
    me: PeerId,
    /// Per author, how many of its events were delivered here.
    delivered: BTreeMap<PeerId, u64>,
    /// Per author, the count our last emitted event declared as seen.
    declared: BTreeMap<PeerId, u64>,
    log_len: u64,
    /// Per author whose next event waits, the cause it waits for: one per
    /// author, however many causes the event lists, checked in memory
    /// until it may be met, so an arrival costs reads only for what it can
    /// unblock.
    blocked: BTreeMap<PeerId, Waiting>,
}

/// An author's next event, waiting for one of its causes
/// ([`Emitter::waiting`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The event's author.
    pub author: PeerId,
    /// The event's number in its author's feed.
    pub seq: u64,
    /// The cause it waits for: this many events of that author delivered.
    pub cause: (PeerId, u64),
    /// Where the cause is in the event's list; those before it are met.
    at: usize,
}

fn key(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(tag);
    k.extend_from_slice(rest);
    k
}

fn read_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_le_bytes)
        .map_err(|_| StoreError::Corrupted(format!("emitter {what} record is damaged")))
}

fn scan_authors<S: Store>(txn: &Txn<'_, S>, tag: u8) -> Result<BTreeMap<PeerId, u64>, StoreError> {
    let mut out = BTreeMap::new();
    let mut bad = false;
    let lo = [tag];
    let hi = [tag + 1];
    txn.scan(
        Table::Events,
        (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
        &mut |k, v| {
            match (<[u8; 32]>::try_from(&k[1..]), <[u8; 8]>::try_from(v)) {
                (Ok(id), Ok(n)) => {
                    out.insert(PeerId(id), u64::from_le_bytes(n));
                }
                _ => bad = true,
            }
            ControlFlow::Continue(())
        },
    )?;
    if bad {
        return Err(StoreError::Corrupted(
            "emitter delivery records are damaged".into(),
        ));
    }
    Ok(out)
}

impl Emitter {
    /// Opens the emitter state kept in `node`'s store. Costs one read per
    /// author known, whatever the number of events.
    pub fn open<S: Store>(node: &Node<S>, schema: Schema) -> Result<Self, EmitterError> {
        let txn = Txn::begin(node.store())?;
        let log_len = match txn.get(Table::Events, K_LOG_LEN)? {
            Some(v) => read_u64(v, "log length")?,
            None => 0,
        };
        let delivered = scan_authors(&txn, K_DELIVERED)?;
        let declared = scan_authors(&txn, K_DECLARED)?;
        Ok(Emitter {
            schema,
            me: node.id(),
            delivered,
            declared,
            log_len,
            blocked: BTreeMap::new(),
        })
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Events delivered here so far; a stream "from now" starts here.
    pub fn log_len(&self) -> u64 {
        self.log_len
    }

    /// Validates `value` as an event of type `name` and emits it. Returns
    /// its seq in our broadcast feed once it is durable. A value that does
    /// not fit the schema is an error naming the field, never a panic.
    pub fn emit<S: Store>(
        &mut self,
        node: &mut Node<S>,
        name: &str,
        value: &Value,
        now: Instant,
    ) -> Result<u64, EmitterError> {
        let payload = self.schema.encode(name, value)?;
        self.emit_encoded(node, name, &payload, now)
    }

    /// Emits an already encoded event (its type need not be in our schema).
    pub fn emit_encoded<S: Store>(
        &mut self,
        node: &mut Node<S>,
        name: &str,
        payload: &[u8],
        now: Instant,
    ) -> Result<u64, EmitterError> {
        if name.is_empty() || name.len() > record::MAX_NAME {
            return Err(ValidationError::UnknownType {
                name: name.to_string(),
                known: self.schema.messages().join(", "),
            }
            .into());
        }
        // The causal past: what we delivered of each other author since our
        // previous event declared it.
        let deps: Vec<(PeerId, u64)> = self
            .delivered
            .iter()
            .filter(|(a, n)| **a != self.me && self.declared.get(a).copied().unwrap_or(0) < **n)
            .map(|(a, n)| (*a, *n))
            .collect();
        let block = EventRecord {
            name,
            deps: deps.clone(),
            payload,
        }
        .encode();
        let seq = node.broadcast(&block, now)?;
        if !deps.is_empty() {
            // Losing this (a crash right here) only makes the next event
            // declare these again.
            let mut txn = Txn::begin(node.store())?;
            for (a, n) in &deps {
                txn.put(Table::Events, &key(K_DECLARED, &a.0), &n.to_le_bytes());
            }
            txn.commit()?;
            self.declared.extend(deps);
        }
        Ok(seq)
    }

    /// Reacts to a node event: on [`Event::Broadcast`], delivers every event
    /// that became deliverable, in causal order, and returns them.
    pub fn handle_event<S: Store>(
        &mut self,
        node: &mut Node<S>,
        event: &Event,
    ) -> Result<Vec<Delivered>, EmitterError> {
        match event {
            Event::Broadcast { .. } => self.deliver_ready(node),
            _ => Ok(Vec::new()),
        }
    }

    /// Delivers whatever is held and causally ready, recording each in the
    /// delivery log in one commit.
    ///
    /// A cause is met once this node delivered that many of its author's
    /// events, or when it refuses that author (then the event is delivered
    /// with the cause in [`Delivered::unmet`], rather than held forever).
    /// An author whose next event waits is not read again until one of its
    /// causes may be met.
    pub fn deliver_ready<S: Store>(
        &mut self,
        node: &mut Node<S>,
    ) -> Result<Vec<Delivered>, EmitterError> {
        let mut out = Vec::new();
        let mut delivered = self.delivered.clone();
        let mut log_len = self.log_len;
        let held: BTreeMap<PeerId, u64> = node.broadcast_feeds().into_iter().collect();
        loop {
            let mut progress = false;
            for (&author, &have) in &held {
                if let Some(w) = self.blocked.get(&author) {
                    if !cause_met(node, &delivered, &author, &w.cause) {
                        continue;
                    }
                }
                loop {
                    let next = delivered.get(&author).copied().unwrap_or(0);
                    if next >= have {
                        break;
                    }
                    let Some(block) = node.broadcast_get(author, next)? else {
                        break;
                    };
                    // Resumed where it last waited: the causes before that
                    // were met then, and counts only grow.
                    let from = match self.blocked.get(&author) {
                        Some(w) if w.seq == next => w.at,
                        _ => 0,
                    };
                    let met = |d: &(PeerId, u64)| cause_met(node, &delivered, &author, d);
                    if let Some((at, cause)) = record::first_unmet(&block, from, met) {
                        let seq = next;
                        self.blocked.insert(
                            author,
                            Waiting {
                                author,
                                seq,
                                cause,
                                at,
                            },
                        );
                        break;
                    }
                    self.blocked.remove(&author);
                    // Not a record we understand: nothing it waited for.
                    let deps = EventRecord::decode(&block).map_or(Vec::new(), |r| r.deps);
                    let unmet = deps
                        .into_iter()
                        .filter(|(dep, len)| {
                            *dep != author && delivered.get(dep).copied().unwrap_or(0) < *len
                        })
                        .collect();
                    out.push(Delivered {
                        unmet,
                        ..self.describe(log_len, author, next, &block)
                    });
                    delivered.insert(author, next + 1);
                    log_len += 1;
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        if out.is_empty() {
            return Ok(out);
        }
        let mut txn = Txn::begin(node.store())?;
        for d in &out {
            let mut v = d.author.0.to_vec();
            v.extend_from_slice(&d.seq.to_le_bytes());
            txn.put_owned(Table::Events, &key(K_LOG, &d.position.to_be_bytes()), v);
        }
        for (author, n) in &delivered {
            if self.delivered.get(author) != Some(n) {
                txn.put(
                    Table::Events,
                    &key(K_DELIVERED, &author.0),
                    &n.to_le_bytes(),
                );
            }
        }
        txn.put(Table::Events, K_LOG_LEN, &log_len.to_le_bytes());
        txn.commit()?;
        self.delivered = delivered;
        self.log_len = log_len;
        Ok(out)
    }

    /// The events that wait for a cause, one per author at most (the
    /// author's next; its later ones wait behind it), as of the last
    /// [`Emitter::deliver_ready`]. A cause that never arrives holds back
    /// only its event's author, and costs one entry here.
    pub fn waiting(&self) -> impl Iterator<Item = &Waiting> {
        self.blocked.values()
    }

    fn describe(&self, position: u64, author: PeerId, seq: u64, block: &[u8]) -> Delivered {
        match EventRecord::decode(block) {
            Some(r) => Delivered {
                position,
                author,
                seq,
                name: r.name.to_string(),
                payload: r.payload.to_vec(),
                value: self.schema.decode(r.name, r.payload),
                unmet: Vec::new(),
            },
            None => Delivered {
                position,
                author,
                seq,
                name: String::new(),
                payload: block.to_vec(),
                value: None,
                unmet: Vec::new(),
            },
        }
    }

    /// Up to `limit` delivered events from log position `from`: a stream
    /// from the beginning starts at 0, a consumer at its saved position.
    pub fn read_log<S: Store>(
        &self,
        node: &mut Node<S>,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Delivered>, EmitterError> {
        let mut entries = Vec::new();
        {
            let txn = Txn::begin(node.store())?;
            let lo = key(K_LOG, &from.to_be_bytes());
            let hi = [K_LOG + 1];
            let mut bad = false;
            txn.scan(
                Table::Events,
                (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
                &mut |k, v| {
                    match (
                        k.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                        v.get(..32),
                        v.get(32..40),
                    ) {
                        (Some(pos), Some(a), Some(s)) if v.len() == 40 => {
                            let mut id = [0u8; 32];
                            id.copy_from_slice(a);
                            let mut seq = [0u8; 8];
                            seq.copy_from_slice(s);
                            entries.push((
                                u64::from_be_bytes(pos),
                                PeerId(id),
                                u64::from_le_bytes(seq),
                            ));
                        }
                        _ => bad = true,
                    }
                    if entries.len() >= limit {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )?;
            if bad {
                return Err(StoreError::Corrupted("emitter delivery log is damaged".into()).into());
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        for (pos, author, seq) in entries {
            if let Some(block) = node.broadcast_get(author, seq)? {
                out.push(self.describe(pos, author, seq, &block));
            }
        }
        Ok(out)
    }

    /// The saved position of consumer `name` (0 if it never saved one): the
    /// first event it has not acknowledged.
    pub fn consumer<S: Store>(&self, node: &Node<S>, name: &str) -> Result<u64, EmitterError> {
        check_consumer(name)?;
        let txn = Txn::begin(node.store())?;
        Ok(
            match txn.get(Table::Events, &key(K_CONSUMER, name.as_bytes()))? {
                Some(v) => read_u64(v, "consumer")?,
                None => 0,
            },
        )
    }

    /// Saves consumer `name`'s position durably: events before `position`
    /// are processed. Saving after processing gives at-least-once delivery
    /// across crashes.
    pub fn commit_consumer<S: Store>(
        &self,
        node: &Node<S>,
        name: &str,
        position: u64,
    ) -> Result<(), EmitterError> {
        check_consumer(name)?;
        let mut txn = Txn::begin(node.store())?;
        txn.put(
            Table::Events,
            &key(K_CONSUMER, name.as_bytes()),
            &position.min(self.log_len).to_le_bytes(),
        );
        txn.commit()?;
        Ok(())
    }
}

/// Whether `author`'s event may stop waiting for cause `(dep, len)`: it is
/// its own earlier event, delivered here, or of an author `node` refuses.
fn cause_met<S: Store>(
    node: &Node<S>,
    delivered: &BTreeMap<PeerId, u64>,
    author: &PeerId,
    (dep, len): &(PeerId, u64),
) -> bool {
    dep == author || delivered.get(dep).copied().unwrap_or(0) >= *len || node.refuses(dep)
}

fn check_consumer(name: &str) -> Result<(), EmitterError> {
    if name.is_empty() || name.len() > 200 {
        return Err(EmitterError::ConsumerName(name.to_string()));
    }
    Ok(())
}
