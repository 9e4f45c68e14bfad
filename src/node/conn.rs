//! One connection: the Noise handshake, frames, and the decrypted message
//! stream. Replication logic lives in the node; this is the secure pipe.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::feed::{FeedDescriptor, FeedId, SignedHead};
use crate::identity::{Keypair, PeerId};
use crate::noise::{MAX_NOISE_MESSAGE, MAX_PLAINTEXT};
use crate::time::Instant;
use crate::wire::frame::{write_frame, FrameReader};
use crate::wire::{HandshakePayload, Message, MSG_HEADER_LEN, PROTOCOL_VERSION};

use super::event::{CloseReason, ConnId};

/// Where a connection's security handshake stands.
enum Session {
    Handshake(Box<snow::HandshakeState>),
    Open(Box<snow::TransportState>),
    /// Between handshake and transport, or after a failure.
    Broken,
}

/// A request a peer asked us to serve.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ToServe {
    /// The id the peer gave it, named in our answer.
    pub id: u64,
    pub feed: FeedId,
    pub start: u64,
    pub end: u64,
    pub base: u64,
    pub trusted: Option<u64>,
}

/// What the handshake needs from the node.
pub(crate) struct HandshakeCtx<'a> {
    /// Our identity, which signs our handshake payload.
    pub identity: &'a Keypair,
    /// Our Noise static public key, which the payload vouches for.
    pub noise_public: &'a [u8],
    /// Whether a peer may talk to us, whichever side dialed: checked before
    /// anything is served or accepted.
    pub authorized: &'a dyn Fn(&PeerId) -> bool,
}

impl HandshakeCtx<'_> {
    /// Refuses a peer that proves our own identity: a dial that reached
    /// this very node (its own address, say, on a node that accepts
    /// anyone), which would otherwise only lose a duplicate tie-break.
    fn other_than_us(&self, peer: PeerId) -> Result<PeerId, CloseReason> {
        if peer == self.identity.peer_id() {
            Err(CloseReason::Ourselves)
        } else {
            Ok(peer)
        }
    }

    /// Our identity payload for the message `state` is about to write,
    /// signed over the handshake so far (PROTOCOL.md section 2).
    fn payload(&self, state: &snow::HandshakeState) -> Vec<u8> {
        let bytes = HandshakePayload::signing_bytes(self.noise_public, state.get_handshake_hash());
        HandshakePayload {
            version: PROTOCOL_VERSION,
            identity: self.identity.peer_id(),
            signature: self.identity.sign(&bytes),
        }
        .encode()
    }
}

pub(crate) struct Conn {
    pub id: ConnId,
    pub initiator: bool,
    /// For a dialed connection, the key we dialed.
    pub expected: Option<PeerId>,
    /// The authenticated peer, once the handshake is done.
    pub peer: Option<PeerId>,
    session: Session,
    frames: FrameReader,
    /// Decrypted bytes not yet parsed into messages.
    pub rx: Vec<u8>,
    /// `rx.len()` as last counted in the node's total of partly received
    /// bytes (see `State::account_rx`).
    pub rx_counted: usize,
    /// Plaintext messages waiting to be encrypted.
    pub tx_plain: Vec<u8>,
    /// Encrypted frames waiting to be transmitted.
    pub tx_wire: Vec<u8>,
    pub opened_at: Instant,
    pub last_rx: Instant,
    pub last_tx: Instant,
    /// Requests we sent and the peer has not answered yet.
    pub inflight: Vec<Inflight>,
    /// Id of our next request on this connection.
    next_request: u64,
    /// Requests from the peer waiting to be served.
    pub serve: VecDeque<ToServe>,
    /// Broadcast feeds the peer announced, with the length it can serve:
    /// only feeds we hold, so at most as many.
    pub remote_heads: BTreeMap<FeedId, u64>,
    /// Per feed we served, the length of the last head our data carried on
    /// this connection: later proofs show its roots, so the peer can check a
    /// pipelined answer's longer head against it (PROTOCOL.md section 6).
    /// Only feeds we hold, so at most as many.
    pub heads_sent: BTreeMap<FeedId, u64>,
    /// Summaries and have-lists the peer sent.
    pub exchanges: u32,
    /// Per feed, what our receipts on this connection acknowledged so far.
    pub acks_sent: BTreeMap<FeedId, crate::ranges::RangeSet>,
    /// The peer's requests for blocks of ours not yet written, answered as
    /// soon as they are.
    pub parked: Vec<ToServe>,
    /// What the peer may still be served this second.
    pub credit: ServeCredit,
    /// Broadcast feeds we told the peer we will not hold more of (at most
    /// [`MAX_REFUSALS_TOLD`]; past that we stop saying so).
    pub refused: BTreeSet<FeedId>,
}

/// Most refusals of broadcast feeds told on one connection.
pub(crate) const MAX_REFUSALS_TOLD: usize = 256;

/// A connection's serving budget, a token bucket: bytes of blocks the peer
/// may be served, refilled at [`crate::Config::max_serve_rate`] bytes a
/// second up to one second's worth. A peer asking for the same large range
/// over and over gets at most that, and waits for the rest, while the other
/// peers are served.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServeCredit {
    /// May go below zero by one data message, which the refill repays.
    bytes: i64,
    at: Instant,
}

impl ServeCredit {
    /// A full bucket (it is capped at the first refill).
    fn full(now: Instant) -> Self {
        ServeCredit {
            bytes: i64::MAX,
            at: now,
        }
    }

    /// Refills for the time since the last call and returns the bytes that
    /// may be served now. A clock that went back refills nothing.
    pub fn available(&mut self, now: Instant, rate: u64) -> i64 {
        let rate = rate.max(1);
        let elapsed = now.saturating_since(self.at).as_micros();
        let refill =
            i64::try_from(elapsed.saturating_mul(u128::from(rate)) / 1_000_000).unwrap_or(i64::MAX);
        let cap = i64::try_from(rate).unwrap_or(i64::MAX);
        self.bytes = self.bytes.saturating_add(refill).min(cap);
        self.at = self.at.max(now);
        self.bytes
    }

    /// Charges `cost` bytes.
    pub fn spend(&mut self, cost: usize) {
        self.bytes = self
            .bytes
            .saturating_sub(i64::try_from(cost).unwrap_or(i64::MAX));
    }

    /// When there is credit again, if none is left now.
    pub fn resumes(&self, rate: u64) -> Option<Instant> {
        (self.bytes <= 0).then(|| {
            let owed = u128::from(self.bytes.unsigned_abs()) + 1;
            let micros = owed * 1_000_000 / u128::from(rate.max(1)) + 1;
            self.at + std::time::Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
        })
    }
}

/// A request of ours awaiting its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inflight {
    /// Its id on this connection, which the answer names.
    pub id: u64,
    pub feed: FeedId,
    pub start: u64,
    pub end: u64,
    /// The node we told the peer to stop its proof at.
    pub trusted: Option<u64>,
    /// The verified length the answer's proof must start from, when it
    /// carries a head (set when the request is sent).
    pub base: u64,
    /// Whether the request went out (it is planned first, then sent).
    pub sent: bool,
    /// Our standing request, for blocks the peer has not written yet: it
    /// waits at the peer, so it does not count against our in-flight limit.
    pub standing: bool,
    /// The rest of a request whose last answer was not stored: its answers
    /// are dropped, and it no longer counts as our standing request.
    pub stale: bool,
}

impl Conn {
    pub fn new(
        id: ConnId,
        hs: snow::HandshakeState,
        expected: Option<PeerId>,
        now: Instant,
    ) -> Self {
        Conn {
            id,
            initiator: hs.is_initiator(),
            expected,
            peer: None,
            session: Session::Handshake(Box::new(hs)),
            frames: FrameReader::new(),
            rx: Vec::new(),
            rx_counted: 0,
            tx_plain: Vec::new(),
            tx_wire: Vec::new(),
            opened_at: now,
            last_rx: now,
            last_tx: now,
            inflight: Vec::new(),
            next_request: 0,
            serve: VecDeque::new(),
            remote_heads: BTreeMap::new(),
            heads_sent: BTreeMap::new(),
            exchanges: 0,
            acks_sent: BTreeMap::new(),
            parked: Vec::new(),
            credit: ServeCredit::full(now),
            refused: BTreeSet::new(),
        }
    }

    /// Plans a request for blocks `[start, end)` of `feed`, in flight from
    /// now on, and returns its id. A standing one asks for blocks the peer
    /// has not written yet.
    pub fn plan_request(&mut self, feed: FeedId, start: u64, end: u64, standing: bool) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        self.inflight.push(Inflight {
            id,
            feed,
            start,
            end,
            trusted: None,
            base: 0,
            sent: false,
            standing,
            stale: false,
        });
        id
    }

    /// Takes our in-flight request `id` off the list, once it is answered.
    pub fn take_request(&mut self, id: u64) -> Option<Inflight> {
        let i = self.inflight.iter().position(|r| r.id == id)?;
        Some(self.inflight.swap_remove(i))
    }

    /// Puts the rest of `asked`, from `end`, back in flight under its id:
    /// the responder answered up to its head, of length `end`, and holds the
    /// rest open, proven from that head (PROTOCOL.md section 7).
    pub fn reopen(&mut self, asked: &Inflight, end: u64) {
        self.inflight.push(Inflight {
            start: end,
            trusted: None,
            base: end,
            ..*asked
        });
    }

    /// Tells the peer that our queue feed `desc` grew from `from` blocks to
    /// `head`, and answers the requests it parked for what was just written.
    /// A parked request starting at `from` is answered with `head` in its
    /// data, so the separate announcement is skipped then.
    pub fn announce(&mut self, desc: FeedDescriptor, head: SignedHead, from: u64) {
        let feed = desc.id();
        let carried = self
            .parked
            .iter()
            .any(|w| w.feed == feed && w.start == from && w.trusted.is_none());
        if !carried {
            self.send(&Message::Head { desc, head });
        }
        self.serve.extend(self.parked.drain(..));
    }

    /// Whether our standing request is in flight.
    pub fn standing(&self) -> bool {
        self.inflight.iter().any(|r| r.standing && !r.stale)
    }

    /// Requests in flight that count against the limit.
    pub fn busy(&self) -> usize {
        self.inflight.len() - self.inflight.iter().filter(|r| r.standing).count()
    }

    pub fn is_open(&self) -> bool {
        matches!(self.session, Session::Open(_))
    }

    /// Writes the initiator's first handshake message.
    pub fn start(&mut self) -> Result<(), CloseReason> {
        let Session::Handshake(hs) = &mut self.session else {
            return Ok(());
        };
        write_frame(&mut self.tx_wire, MAX_NOISE_MESSAGE, |buf| {
            hs.write_message(&[], buf)
        })
        .map_err(|e| CloseReason::Handshake(e.to_string()))
    }

    /// Feeds transport bytes in: advances the handshake and appends
    /// decrypted plaintext to `rx`. Returns the peer when this input
    /// completed the handshake.
    pub fn receive(
        &mut self,
        input: &[u8],
        hs: &HandshakeCtx<'_>,
    ) -> Result<Option<PeerId>, CloseReason> {
        let mut completed = None;
        let Conn {
            session,
            frames,
            rx,
            tx_wire,
            expected,
            ..
        } = self;
        frames.push(input, |frame| {
            match session {
                Session::Open(t) => {
                    // Decrypt straight into the message buffer: plaintext is
                    // never longer than its frame.
                    let at = rx.len();
                    rx.resize(at + frame.len(), 0);
                    match t.read_message(frame, &mut rx[at..]) {
                        Ok(n) => rx.truncate(at + n),
                        Err(_) => {
                            rx.truncate(at);
                            return Err(CloseReason::Decrypt);
                        }
                    }
                }
                Session::Broken => {
                    return Err(CloseReason::Handshake("connection is broken".into()))
                }
                Session::Handshake(state) => {
                    // The peer's identity payload is signed over the hash as
                    // it stood before this message.
                    let hash_before: [u8; 32] = state
                        .get_handshake_hash()
                        .try_into()
                        .map_err(|_| CloseReason::Handshake("unexpected hash length".into()))?;
                    let mut scratch = vec![0u8; frame.len()];
                    let n = state
                        .read_message(frame, &mut scratch)
                        .map_err(|e| CloseReason::Handshake(e.to_string()))?;
                    let payload = &scratch[..n];
                    if state.is_initiator() {
                        // Message 2: the listener's identity. Checked in full
                        // before message 3 gives it ours.
                        let peer =
                            hs.other_than_us(check_identity(state, payload, &hash_before)?)?;
                        match *expected {
                            // The key the application dialed by name is the
                            // one it wants to talk to.
                            Some(want) if peer == want => {}
                            Some(want) => {
                                return Err(CloseReason::WrongPeer {
                                    expected: want,
                                    got: peer,
                                })
                            }
                            // Whoever answers at an address must pass the
                            // same check as a peer that dials us.
                            None if !(hs.authorized)(&peer) => {
                                return Err(CloseReason::Unauthorized(peer))
                            }
                            None => {}
                        }
                        let ours = hs.payload(state);
                        write_frame(tx_wire, MAX_NOISE_MESSAGE, |buf| {
                            state.write_message(&ours, buf)
                        })
                        .map_err(|e| CloseReason::Handshake(e.to_string()))?;
                        completed = Some(peer);
                    } else if !state.is_handshake_finished() && state.is_my_turn() {
                        // Message 1 read: answer with our identity.
                        if !payload.is_empty() {
                            return Err(CloseReason::Handshake(
                                "unexpected payload in the first message".into(),
                            ));
                        }
                        let ours = hs.payload(state);
                        write_frame(tx_wire, MAX_NOISE_MESSAGE, |buf| {
                            state.write_message(&ours, buf)
                        })
                        .map_err(|e| CloseReason::Handshake(e.to_string()))?;
                    } else {
                        // Message 3: the dialer's identity.
                        let peer =
                            hs.other_than_us(check_identity(state, payload, &hash_before)?)?;
                        if !(hs.authorized)(&peer) {
                            return Err(CloseReason::Unauthorized(peer));
                        }
                        completed = Some(peer);
                    }
                    if state.is_handshake_finished() {
                        if let Session::Handshake(done) =
                            std::mem::replace(session, Session::Broken)
                        {
                            let t = done
                                .into_transport_mode()
                                .map_err(|e| CloseReason::Handshake(e.to_string()))?;
                            *session = Session::Open(Box::new(t));
                        }
                    }
                }
            }
            Ok(())
        })?;
        if let Some(p) = completed {
            self.peer = Some(p);
        }
        Ok(completed)
    }

    /// Queues a message for sending (encrypted at the next flush).
    pub fn send(&mut self, msg: &Message<'_>) {
        msg.encode(&mut self.tx_plain);
    }

    /// Encrypts queued plaintext into frames.
    pub fn flush(&mut self, now: Instant) -> Result<(), CloseReason> {
        if self.tx_plain.is_empty() {
            return Ok(());
        }
        let Session::Open(t) = &mut self.session else {
            return Ok(());
        };
        for chunk in self.tx_plain.chunks(MAX_PLAINTEXT) {
            write_frame(
                &mut self.tx_wire,
                chunk.len() + crate::noise::TAG_LEN,
                |buf| t.write_message(chunk, buf),
            )
            .map_err(|e| CloseReason::Handshake(e.to_string()))?;
        }
        self.tx_plain.clear();
        self.last_tx = now;
        Ok(())
    }

    /// Takes the bytes ready for the wire.
    pub fn take_wire(&mut self) -> Option<Vec<u8>> {
        if self.tx_wire.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.tx_wire))
        }
    }
}

/// Splits the next whole message off `rx[*pos..]`: its type and body range.
/// Refuses a declared length over `max` before buffering any more of it.
pub(crate) fn next_message(
    rx: &[u8],
    pos: &mut usize,
    max: usize,
) -> Result<Option<(u8, usize, usize)>, CloseReason> {
    let avail = &rx[*pos..];
    if avail.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
    if len == 0 {
        return Err(CloseReason::Malformed("empty message".into()));
    }
    if len > max {
        return Err(CloseReason::TooLarge {
            size: len as u64,
            limit: max as u64,
        });
    }
    if avail.len() < 4 + len {
        return Ok(None);
    }
    let kind = avail[4];
    let body = (*pos + MSG_HEADER_LEN, *pos + 4 + len);
    *pos += 4 + len;
    Ok(Some((kind, body.0, body.1)))
}

fn check_identity(
    state: &snow::HandshakeState,
    payload: &[u8],
    hash_before: &[u8],
) -> Result<PeerId, CloseReason> {
    let p = HandshakePayload::decode(payload)
        .ok_or_else(|| CloseReason::Handshake("bad identity payload".into()))?;
    if p.version < PROTOCOL_VERSION {
        return Err(CloseReason::Handshake(format!(
            "peer speaks protocol {} but we need {}",
            p.version, PROTOCOL_VERSION
        )));
    }
    let remote_static = state
        .get_remote_static()
        .ok_or_else(|| CloseReason::Handshake("no remote static key".into()))?;
    if !p.vouches_for(remote_static, hash_before) {
        return Err(CloseReason::Handshake(format!(
            "{} did not sign its Noise key",
            p.identity
        )));
    }
    Ok(p.identity)
}
