//! Shared fixtures of the fuzz targets, and of `examples/seeds.rs`, which
//! records the seed corpora with the same fixtures (so a recorded message
//! stream is valid input for the node the `handle_input` target builds).
//!
//! Everything is deterministic: the same input always runs the same way,
//! so any crash reproduces from its input file alone.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use peermq::feed::{Feed, FeedDescriptor, FeedId, SignedHead};
use peermq::wire::{DataMsg, Message};
use peermq::{
    Config, ConnId, Entropy, Instant, Keypair, MailboxList, MemStore, Node, Output, PeerId,
    RawPeer, Receipt, SeededRng, Txn,
};

/// The seed of node A's entropy: the node under test.
pub const A_SEED: u64 = 1;
/// The seed of peer H's entropy: the (hostile) peer that talks to A.
pub const H_SEED: u64 = 2;
/// The seed of X's entropy: a third author, whose queue feed to H a
/// mailbox may carry.
pub const X_SEED: u64 = 3;
/// The seed of the raw peer's Noise keys.
pub const RAW_SEED: u64 = 7;

/// The configuration every node of the fixtures runs with; `mailbox`
/// makes A serve as a mailbox.
pub fn config(mailbox: bool) -> Config {
    Config {
        store_poll_interval: None,
        mailbox: mailbox.then(peermq::MailboxLimits::default),
        ..Config::default()
    }
}

/// Opens a node on `store` with the deterministic entropy `seed`.
pub fn open(store: MemStore, seed: u64, mailbox: bool) -> Node<MemStore> {
    Node::open(
        store,
        config(mailbox),
        Entropy::deterministic(seed),
        Instant::ZERO,
    )
    .expect("a memory store opens")
}

/// The state the nodes start from, built once per process.
pub struct Fixture {
    /// A's key pair.
    pub a_key: Keypair,
    /// H's key pair.
    pub h_key: Keypair,
    /// X's key pair.
    pub x_key: Keypair,
    /// A's store: H authorized, three messages sent to H, one event
    /// broadcast.
    pub a_store: MemStore,
    /// H's store: five messages to A (one scheduled, one with an expiry),
    /// two events broadcast.
    pub h_store: MemStore,
    /// X's store: three messages to H.
    pub x_store: MemStore,
}

/// The fixture (built on first use).
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let t = Instant::ZERO;
        let mut a = open(MemStore::new(), A_SEED, false);
        let mut h = open(MemStore::new(), H_SEED, false);
        let mut x = open(MemStore::new(), X_SEED, false);
        let (a_id, h_id) = (a.id(), h.id());
        a.add_peer(h_id).expect("add peer");
        h.add_peer(a_id).expect("add peer");
        x.add_peer(h_id).expect("add peer");
        for m in [&b"a0"[..], b"a1", b"a2"] {
            a.send(h_id, m, t).expect("send");
        }
        a.broadcast(b"event a0", t).expect("broadcast");
        for m in [&b"hello"[..], b"world", b"!"] {
            h.send(a_id, m, t).expect("send");
        }
        let when = peermq::Timestamp::from_micros(1_800_000_000_000_000);
        let later = peermq::Schedule::from_now(
            when,
            Some(std::time::Duration::from_secs(60)),
            Some(std::time::Duration::from_secs(3600)),
        );
        h.send_scheduled(a_id, &[b"later"], &later, t)
            .expect("send");
        let expiring = peermq::Schedule::from_now(
            peermq::Timestamp::EPOCH,
            None,
            Some(std::time::Duration::from_secs(1)),
        );
        h.send_scheduled(a_id, &[b"expiring"], &expiring, t)
            .expect("send");
        h.broadcast(b"event h0", t).expect("broadcast");
        h.broadcast(b"event h1", t).expect("broadcast");
        for m in [&b"x0"[..], b"x1", b"x2"] {
            x.send(h_id, m, t).expect("send");
        }
        Fixture {
            a_key: a.keypair().clone(),
            h_key: h.keypair().clone(),
            x_key: x.keypair().clone(),
            a_store: a.into_store(),
            h_store: h.into_store(),
            x_store: x.into_store(),
        }
    })
}

/// A feed a structured message names.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FeedPick {
    /// H's queue feed to A.
    QueueHA,
    /// A's queue feed to H.
    QueueAH,
    /// H's broadcast feed.
    BroadcastH,
    /// A's broadcast feed.
    BroadcastA,
    /// X's queue feed to H (which A may carry as H's mailbox).
    QueueXH,
    /// Any id.
    Other([u8; 32]),
}

impl FeedPick {
    /// The feed's descriptor (for `Other`, a broadcast feed of that key)
    /// and the store holding its blocks, if any.
    pub fn resolve(self) -> (FeedDescriptor, Option<&'static MemStore>) {
        let f = fixture();
        let (a, h, x) = (f.a_key.peer_id(), f.h_key.peer_id(), f.x_key.peer_id());
        match self {
            FeedPick::QueueHA => (FeedDescriptor::queue(h, a), Some(&f.h_store)),
            FeedPick::QueueAH => (FeedDescriptor::queue(a, h), Some(&f.a_store)),
            FeedPick::BroadcastH => (FeedDescriptor::broadcast(h), Some(&f.h_store)),
            FeedPick::BroadcastA => (FeedDescriptor::broadcast(a), Some(&f.a_store)),
            FeedPick::QueueXH => (FeedDescriptor::queue(x, h), Some(&f.x_store)),
            FeedPick::Other(b) => (FeedDescriptor::broadcast(PeerId(b)), None),
        }
    }
}

/// A key that signs (or claims to sign) a structured message.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum KeyPick {
    /// H, the peer A talks to.
    H,
    /// A itself.
    A,
    /// X, a third party.
    X,
    /// An unknown key: the signature will not verify.
    Other([u8; 32]),
}

impl KeyPick {
    /// The key pair, if the fixture has it.
    pub fn key(self) -> Option<&'static Keypair> {
        let f = fixture();
        match self {
            KeyPick::H => Some(&f.h_key),
            KeyPick::A => Some(&f.a_key),
            KeyPick::X => Some(&f.x_key),
            KeyPick::Other(_) => None,
        }
    }

    /// The peer id.
    pub fn id(self) -> PeerId {
        match self {
            KeyPick::Other(b) => PeerId(b),
            k => k.key().map(Keypair::peer_id).unwrap_or(PeerId([0; 32])),
        }
    }
}

/// A change to an encoded message (header included), for messages that
/// are nearly right.
#[derive(Arbitrary, Debug, Clone)]
pub enum Mutation {
    /// Flips one bit.
    Flip {
        /// Byte offset (wrapped to the message).
        at: u16,
        /// Bit.
        bit: u8,
    },
    /// Sets one byte.
    Set {
        /// Byte offset (wrapped to the message).
        at: u16,
        /// New value.
        value: u8,
    },
    /// Cuts the body to `len` bytes, with the header's length fixed.
    Truncate(u16),
    /// Appends bytes to the body, with the header's length fixed.
    Extend(Vec<u8>),
    /// Inserts bytes into the body, with the header's length fixed.
    Insert {
        /// Offset into the body (wrapped).
        at: u16,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Changes the type byte.
    Kind(u8),
    /// Overwrites the header's length.
    Length(u32),
}

impl Mutation {
    /// Applies the mutation to one encoded message.
    pub fn apply(&self, msg: &mut Vec<u8>) {
        let fix_len = |m: &mut Vec<u8>| {
            let len = (m.len().saturating_sub(4)) as u32;
            if m.len() >= 4 {
                m[..4].copy_from_slice(&len.to_le_bytes());
            }
        };
        match self {
            Mutation::Flip { at, bit } => {
                if !msg.is_empty() {
                    let i = *at as usize % msg.len();
                    msg[i] ^= 1 << (bit % 8);
                }
            }
            Mutation::Set { at, value } => {
                if !msg.is_empty() {
                    let i = *at as usize % msg.len();
                    msg[i] = *value;
                }
            }
            Mutation::Truncate(len) => {
                msg.truncate(5 + *len as usize);
                fix_len(msg);
            }
            Mutation::Extend(bytes) => {
                msg.extend_from_slice(bytes);
                fix_len(msg);
            }
            Mutation::Insert { at, bytes } => {
                let body = msg.len().saturating_sub(5);
                let i = 5.min(msg.len()) + *at as usize % (body + 1);
                msg.splice(i..i, bytes.iter().copied());
                fix_len(msg);
            }
            Mutation::Kind(k) => {
                if msg.len() > 4 {
                    msg[4] = *k;
                }
            }
            Mutation::Length(l) => {
                if msg.len() >= 4 {
                    msg[..4].copy_from_slice(&l.to_le_bytes());
                }
            }
        }
    }
}

/// How a structured head is signed.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum HeadSig {
    /// The feed's current head, as its author signed it.
    Current,
    /// A head of `length` blocks over `root`, properly signed by the
    /// feed's author: a fork, unless it matches the real tree.
    Forged {
        /// Claimed length.
        length: u8,
        /// Claimed root.
        root: [u8; 32],
    },
    /// The current head with one signature bit flipped.
    BadSignature(u8),
}

/// A small or any `u64`: most interesting values are small.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Num {
    /// `0..=255`.
    Small(u8),
    /// Anything.
    Any(u64),
}

impl Num {
    /// The value.
    pub fn get(self) -> u64 {
        match self {
            Num::Small(v) => v.into(),
            Num::Any(v) => v,
        }
    }
}

/// A well-formed message (which may still say something wrong).
#[derive(Arbitrary, Debug, Clone)]
pub enum Msg {
    /// A head of a feed.
    Head {
        /// Whose.
        feed: FeedPick,
        /// How signed.
        sig: HeadSig,
    },
    /// A request for ranges of a feed.
    Request {
        /// Which feed.
        feed: FeedPick,
        /// The requester's verified length.
        base: Num,
        /// Id of the first range.
        first_id: Num,
        /// `(start, blocks, trusted)` per range.
        ranges: Vec<(Num, Num, Option<Num>)>,
    },
    /// Data for a request id, proven from the fixture's copy of a feed.
    Data {
        /// The request id it answers.
        request: Num,
        /// Which feed.
        feed: FeedPick,
        /// First block.
        start: u8,
        /// Blocks.
        blocks: u8,
        /// The base the proof assumes.
        base: u8,
        /// A node to stop the proof at (then there is no head).
        trusted: Option<u8>,
    },
    /// A refusal of a request.
    NoData {
        /// The request id.
        request: Num,
        /// End of the refused blocks.
        end: Num,
    },
    /// A receipt.
    Ack {
        /// The feed acknowledged.
        feed: FeedPick,
        /// Who signs it.
        signer: KeyPick,
        /// `(gap, blocks)` pairs.
        ranges: Vec<(u8, u8)>,
    },
    /// A keepalive.
    Keepalive,
    /// A close.
    Close {
        /// The code.
        code: u16,
        /// The text.
        text: String,
    },
    /// A summary of broadcast feeds.
    Summary {
        /// Their number.
        count: u32,
        /// Their digest.
        digest: [u8; 32],
    },
    /// A have-list.
    Have {
        /// `(feed, length)` entries.
        feeds: Vec<(FeedPick, Num)>,
    },
    /// A signed mailbox list.
    Mailboxes {
        /// The recipient who signs it.
        signer: KeyPick,
        /// Its version.
        version: Num,
        /// The mailboxes it names.
        mailboxes: Vec<KeyPick>,
    },
    /// A mailbox's refusal.
    Refused {
        /// The feed.
        feed: FeedPick,
        /// The reason code.
        reason: u8,
    },
    /// A mailbox's report of what it holds.
    Held {
        /// The feed.
        feed: FeedPick,
        /// The length held.
        length: Num,
    },
    /// A type this version does not know.
    Unknown {
        /// Its type byte.
        kind: u8,
        /// Its body.
        body: Vec<u8>,
    },
}

/// The encoded `msg`, header included.
pub fn encode(msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode(&mut out);
    out
}

/// The encoded data message answering request `id` for blocks
/// `[start, end)` of `desc` with a proof for a verifier at `base` (or
/// below node `trusted`), from the fixture's copy of the feed; `None` if
/// the fixture cannot prove that.
pub fn data_for(
    desc: FeedDescriptor,
    store: &MemStore,
    id: u64,
    start: u64,
    end: u64,
    base: u64,
    trusted: Option<u64>,
) -> Option<Vec<u8>> {
    let txn = Txn::begin(store).ok()?;
    let feed = Feed::load(&txn, &desc.id()).ok()??;
    let end = end.min(feed.len());
    let start = start.min(end);
    let (proof, head) = match trusted {
        Some(t) => (feed.prove_below(&txn, start, end, t).ok()?, None),
        None => (
            feed.prove(&txn, start, end, base.min(feed.len())).ok()?,
            feed.head().copied(),
        ),
    };
    let blocks = (start..end)
        .map(|s| feed.get(&txn, s).ok().flatten())
        .collect::<Option<Vec<Vec<u8>>>>()?;
    let mut out = Vec::new();
    DataMsg::encode_parts(
        id,
        head.as_ref(),
        &proof,
        blocks.iter().map(Vec::as_slice),
        &mut out,
    );
    Some(out)
}

fn head_of(desc: FeedDescriptor, store: Option<&MemStore>) -> Option<SignedHead> {
    let txn = Txn::begin(store?).ok()?;
    let feed = Feed::load(&txn, &desc.id()).ok()??;
    feed.head().copied()
}

fn author_key(desc: &FeedDescriptor) -> Option<&'static Keypair> {
    [KeyPick::H, KeyPick::A, KeyPick::X]
        .into_iter()
        .filter_map(KeyPick::key)
        .find(|k| k.peer_id() == desc.author)
}

impl Msg {
    /// The encoded message, header included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Head { feed, sig } => {
                let (desc, store) = feed.resolve();
                let current = head_of(desc, store);
                let head = match (sig, current) {
                    (HeadSig::Current, Some(h)) => h,
                    (HeadSig::BadSignature(bit), Some(mut h)) => {
                        h.signature[(*bit as usize / 8) % 64] ^= 1 << (bit % 8);
                        h
                    }
                    (HeadSig::Forged { .. }, _) | (_, None) => {
                        let (length, root) = match sig {
                            HeadSig::Forged { length, root } => (*length, *root),
                            _ => (1, [0; 32]),
                        };
                        match author_key(&desc) {
                            Some(k) => SignedHead::sign(
                                &mut k.clone(),
                                desc.id(),
                                length.into(),
                                peermq::merkle::Hash(root),
                            ),
                            None => SignedHead {
                                feed: desc.id(),
                                length: length.into(),
                                root: peermq::merkle::Hash(root),
                                signature: [0; 64],
                            },
                        }
                    }
                };
                encode(&Message::Head { desc, head })
            }
            Msg::Request {
                feed,
                base,
                first_id,
                ranges,
            } => {
                let ranges = ranges
                    .iter()
                    .map(|(s, n, t)| {
                        let start = s.get();
                        peermq::wire::RangeRequest {
                            start,
                            end: start.saturating_add(n.get()),
                            trusted: t.map(Num::get),
                        }
                    })
                    .collect();
                encode(&Message::Request {
                    feed: feed.resolve().0.id(),
                    base: base.get(),
                    first_id: first_id.get(),
                    ranges,
                })
            }
            Msg::Data {
                request,
                feed,
                start,
                blocks,
                base,
                trusted,
            } => {
                let (desc, store) = feed.resolve();
                let start = u64::from(*start);
                store
                    .and_then(|s| {
                        data_for(
                            desc,
                            s,
                            request.get(),
                            start,
                            start + u64::from(*blocks),
                            (*base).into(),
                            trusted.map(u64::from),
                        )
                    })
                    .unwrap_or_else(|| {
                        encode(&Message::NoData {
                            request: request.get(),
                            end: start,
                        })
                    })
            }
            Msg::NoData { request, end } => encode(&Message::NoData {
                request: request.get(),
                end: end.get(),
            }),
            Msg::Ack {
                feed,
                signer,
                ranges,
            } => {
                let mut set = peermq::RangeSet::new();
                let mut at = 0u64;
                for (gap, n) in ranges {
                    at += u64::from(*gap);
                    set.insert(at, at + u64::from(*n));
                    at += u64::from(*n);
                }
                let feed = feed.resolve().0.id();
                let receipt = match signer.key() {
                    Some(k) => Receipt::sign(k, feed, set),
                    None => Receipt {
                        feed,
                        signer: signer.id(),
                        ranges: set,
                        signature: [1; 64],
                    },
                };
                encode(&Message::Ack(receipt))
            }
            Msg::Keepalive => encode(&Message::Keepalive),
            Msg::Close { code, text } => {
                let mut out = encode(&Message::Close {
                    code: peermq::wire::CloseCode::Normal,
                    text,
                });
                out[5..7].copy_from_slice(&code.to_le_bytes());
                out
            }
            Msg::Summary { count, digest } => encode(&Message::Summary {
                count: *count,
                digest: *digest,
            }),
            Msg::Have { feeds } => {
                let mut feeds: Vec<(FeedId, u64)> = feeds
                    .iter()
                    .map(|(f, n)| (f.resolve().0.id(), n.get()))
                    .collect();
                feeds.sort();
                encode(&Message::Have { feeds })
            }
            Msg::Mailboxes {
                signer,
                version,
                mailboxes,
            } => {
                let ids: Vec<PeerId> = mailboxes.iter().map(|k| k.id()).collect();
                let list = match signer.key() {
                    Some(k) => MailboxList::sign(k, version.get(), ids),
                    None => MailboxList {
                        recipient: signer.id(),
                        version: version.get(),
                        mailboxes: ids,
                        signature: [2; 64],
                    },
                };
                encode(&Message::Mailboxes(list))
            }
            Msg::Refused { feed, reason } => {
                let mut out = encode(&Message::Refused {
                    feed: feed.resolve().0.id(),
                    reason: peermq::wire::RefuseReason::NotNamed,
                });
                if let Some(last) = out.last_mut() {
                    *last = *reason;
                }
                out
            }
            Msg::Held { feed, length } => encode(&Message::Held {
                feed: feed.resolve().0.id(),
                length: length.get(),
            }),
            Msg::Unknown { kind, body } => {
                let mut out = Vec::with_capacity(5 + body.len());
                out.extend_from_slice(&(body.len() as u32 + 1).to_le_bytes());
                out.push(*kind);
                out.extend_from_slice(body);
                out
            }
        }
    }
}

/// Splits a plaintext message stream into whole messages (header
/// included); a tail that is not a whole message is the last item.
pub fn split_messages(mut stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        let n = match stream.get(..4) {
            Some(l) => 4 + u32::from_le_bytes(l.try_into().unwrap_or([0; 4])) as usize,
            None => stream.len(),
        };
        let n = n.min(stream.len());
        out.push(&stream[..n]);
        stream = &stream[n..];
    }
    out
}

/// A request of A's that the raw peer may answer.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    /// The feed.
    pub feed: FeedId,
    /// The request id.
    pub id: u64,
    /// First block.
    pub start: u64,
    /// End.
    pub end: u64,
    /// A's verified length.
    pub base: u64,
    /// The node A trusts.
    pub trusted: Option<u64>,
}

/// Node A with an authenticated raw peer posing as H on connection
/// `conn`.
pub struct Session {
    /// The node under test.
    pub a: Node<MemStore>,
    /// H's end.
    pub raw: RawPeer,
    /// A's connection to H.
    pub conn: ConnId,
    /// Whether A closed the connection.
    pub closed: bool,
    /// A's requests not answered yet.
    pub asked: Vec<Asked>,
    /// Every message A sent (header included), in order.
    pub from_a: Vec<Vec<u8>>,
    /// The time.
    pub now: Instant,
}

impl Session {
    /// A (from the fixture's store) and a raw peer with H's key, after a
    /// completed handshake.
    pub fn new(mailbox: bool) -> Session {
        let f = fixture();
        let mut a = open(f.a_store.snapshot(), A_SEED, mailbox);
        let raw = RawPeer::dial(&f.h_key, RAW_SEED, a.id()).expect("raw peer");
        let conn = a.accept(Instant::ZERO);
        let mut s = Session {
            a,
            raw,
            conn,
            closed: false,
            asked: Vec::new(),
            from_a: Vec::new(),
            now: Instant::ZERO,
        };
        s.pump();
        assert!(s.raw.is_open(), "the fixture's handshake completes");
        s
    }

    /// Moves bytes both ways until nothing moves, then takes in what A
    /// sent: every message A sends must decode.
    pub fn pump(&mut self) {
        let others = self
            .raw
            .pump(&mut self.a, self.conn, self.now)
            .expect("a memory store does not fail");
        for o in others {
            if let Output::Close { conn, .. } = o {
                if conn == self.conn {
                    self.closed = true;
                }
            }
        }
        let Ok(msgs) = self.raw.messages() else {
            panic!("the node sent a message the raw peer cannot split");
        };
        for (kind, body) in msgs {
            let msg = Message::decode(kind, &body, u64::MAX)
                .unwrap_or_else(|e| panic!("the node sent a malformed message: {e}"));
            if let Message::Request {
                feed,
                base,
                first_id,
                ranges,
            } = &msg
            {
                for (i, r) in ranges.iter().enumerate() {
                    self.asked.push(Asked {
                        feed: *feed,
                        id: first_id + i as u64,
                        start: r.start,
                        end: r.end,
                        base: *base,
                        trusted: r.trusted,
                    });
                }
            }
            let mut m = Vec::with_capacity(5 + body.len());
            m.extend_from_slice(&(body.len() as u32 + 1).to_le_bytes());
            m.push(kind);
            m.extend_from_slice(&body);
            self.from_a.push(m);
        }
    }

    /// Sends plaintext to A, encrypted, delivered in two pieces split at
    /// `split` (wrapped), then pumps.
    pub fn send(&mut self, plaintext: &[u8], split: u16) {
        if self.closed {
            return;
        }
        self.raw.send_plaintext(plaintext);
        let wire = self.raw.output().unwrap_or_default();
        let k = if wire.is_empty() {
            0
        } else {
            split as usize % (wire.len() + 1)
        };
        for piece in [&wire[..k], &wire[k..]] {
            if !piece.is_empty() {
                self.a
                    .handle_input(self.conn, piece, self.now)
                    .expect("a memory store does not fail");
            }
        }
        self.pump();
    }

    /// A new connection from H, with a new handshake (the old one stays
    /// as it is, open or not).
    pub fn reconnect(&mut self) {
        let seed = RAW_SEED + 1 + self.conn.0;
        let Ok(raw) = RawPeer::dial(&fixture().h_key, seed, self.a.id()) else {
            return;
        };
        self.raw = raw;
        self.conn = self.a.accept(self.now);
        self.closed = false;
        self.asked.clear();
        self.pump();
    }

    /// Time passes: A's timers run.
    pub fn tick(&mut self, micros: u64) {
        self.now = Instant::from_micros(self.now.as_micros().saturating_add(micros));
        self.a
            .handle_timeout(self.now)
            .expect("a memory store does not fail");
        self.pump();
    }

    /// The data message answering A's request `asked`, if the fixture
    /// holds that feed.
    pub fn answer(&self, asked: &Asked) -> Option<Vec<u8>> {
        let f = fixture();
        [&f.h_store, &f.x_store, &f.a_store]
            .into_iter()
            .find_map(|s| {
                let txn = Txn::begin(s).ok()?;
                let feed = Feed::load(&txn, &asked.feed).ok()??;
                drop(txn);
                data_for(
                    *feed.descriptor(),
                    s,
                    asked.id,
                    asked.start,
                    asked.end,
                    asked.base,
                    asked.trusted,
                )
            })
    }
}

/// A deterministic key pair from `seed`, outside the fixture's.
pub fn key(seed: u64) -> Keypair {
    Keypair::generate(&mut SeededRng::from_u64(seed))
}
