//! A bare protocol endpoint, for conformance tests of ports and for testing
//! how a node treats a hostile peer.

use crate::identity::{Keypair, PeerId};
use crate::noise::{self, StaticKey};
use crate::rng::SeededRng;
use crate::time::Instant;
use crate::wire::Message;

use super::conn::{next_message, Conn, HandshakeCtx};
use super::{CloseReason, ConnId};

/// One end of a peermq connection with no node behind it: it performs the
/// authenticated Noise handshake for a given identity, then sends whatever
/// plaintext it is given (well-formed or not) and hands back the messages it
/// receives.
///
/// Use it to check a port of the protocol against this implementation, or
/// to play a misbehaving peer in tests. It accepts any remote identity.
pub struct RawPeer {
    conn: Conn,
    key: Keypair,
    noise_public: Vec<u8>,
}

impl RawPeer {
    fn new(key: &Keypair, seed: u64, expected: Option<PeerId>) -> Result<Self, CloseReason> {
        let mut rng = SeededRng::from_u64(seed);
        let static_key =
            StaticKey::generate(rng.fork()).map_err(|e| CloseReason::Handshake(e.to_string()))?;
        let hs = noise::handshake(&static_key, rng.fork(), expected.is_some())
            .map_err(|e| CloseReason::Handshake(e.to_string()))?;
        let mut conn = Conn::new(ConnId(0), hs, expected, Instant::ZERO);
        if expected.is_some() {
            // The dialer speaks first; a listener waits for it.
            conn.start()?;
        }
        Ok(RawPeer {
            conn,
            key: key.clone(),
            noise_public: static_key.public.clone(),
        })
    }

    /// A dialing end that expects to reach `remote`; its first handshake
    /// message is ready in [`RawPeer::output`].
    pub fn dial(key: &Keypair, seed: u64, remote: PeerId) -> Result<Self, CloseReason> {
        Self::new(key, seed, Some(remote))
    }

    /// A listening end.
    pub fn accept(key: &Keypair, seed: u64) -> Result<Self, CloseReason> {
        Self::new(key, seed, None)
    }

    /// Takes bytes from the other end: advances the handshake or decrypts.
    pub fn input(&mut self, bytes: &[u8]) -> Result<(), CloseReason> {
        let any = |_: &PeerId| true;
        let ctx = HandshakeCtx {
            identity: &self.key,
            noise_public: &self.noise_public,
            authorized: &any,
        };
        self.conn.receive(bytes, &ctx).map(|_| ())
    }

    /// Whether the handshake finished.
    pub fn is_open(&self) -> bool {
        self.conn.is_open()
    }

    /// The authenticated identity of the other end.
    pub fn peer(&self) -> Option<PeerId> {
        self.conn.peer
    }

    /// Queues a well-formed message.
    pub fn send(&mut self, msg: &Message<'_>) {
        self.conn.send(msg);
    }

    /// Queues raw plaintext, which need not be a valid message.
    pub fn send_plaintext(&mut self, bytes: &[u8]) {
        self.conn.tx_plain.extend_from_slice(bytes);
    }

    /// Encrypts what was queued and returns every byte to transmit.
    pub fn output(&mut self) -> Result<Vec<u8>, CloseReason> {
        self.conn.flush(Instant::ZERO)?;
        Ok(self.conn.take_wire().unwrap_or_default())
    }

    /// The complete messages received so far, as `(type, body)`.
    pub fn messages(&mut self) -> Result<Vec<(u8, Vec<u8>)>, CloseReason> {
        let mut pos = 0;
        let mut out = Vec::new();
        while let Some((kind, a, b)) = next_message(&self.conn.rx, &mut pos, usize::MAX)? {
            out.push((kind, self.conn.rx[a..b].to_vec()));
        }
        self.conn.rx.drain(..pos);
        Ok(out)
    }

    /// Moves bytes between this raw peer and `node`'s connection `conn` at
    /// time `now`, running the node's timers due by then, until neither has
    /// anything to send (as [`crate::pump_pair`] does for two nodes).
    /// Returns the node's other outputs (events, closes, bytes for other
    /// connections), in order; the messages this peer received wait in
    /// [`RawPeer::messages`]. Once this peer fails to read what the node
    /// sent (the node closed, or sent garbage), nothing more is fed to it.
    pub fn pump<S: crate::store::Store>(
        &mut self,
        node: &mut crate::node::Node<S>,
        conn: crate::node::ConnId,
        now: Instant,
    ) -> Result<Vec<crate::node::Output>, crate::node::NodeError> {
        use crate::node::Output;
        let mut others = Vec::new();
        let mut reading = true;
        loop {
            let mut moved = false;
            while let Some(out) = node.poll_output() {
                match out {
                    Output::Transmit { conn: c, bytes } if c == conn => {
                        moved = true;
                        reading = reading && self.input(&bytes).is_ok();
                    }
                    other => others.push(other),
                }
            }
            let bytes = if reading {
                self.output().unwrap_or_default()
            } else {
                Vec::new()
            };
            if !bytes.is_empty() {
                moved = true;
                node.handle_input(conn, &bytes, now)?;
            }
            if node.poll_timeout().is_some_and(|t| t <= now) {
                node.handle_timeout(now)?;
                moved = true;
            }
            if !moved {
                return Ok(others);
            }
        }
    }
}
