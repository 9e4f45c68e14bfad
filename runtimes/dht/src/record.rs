//! What a node publishes about itself: a pkarr signed packet (a small DNS
//! packet signed by the node's ed25519 key, stored on the DHT under that
//! key) holding one TXT record at `_peermq`:
//!
//! ```text
//! _peermq  TXT  "v=1"  "addr=192.0.2.7:4000"  "addr=[2001:db8::7]:4000"  "relay=https://relay.example/"  "mbox=<64 hex>"
//! ```
//!
//! `mbox` names a mailbox that holds the node's mail while it is away
//! (`peermq add-mailbox`); the record is signed by the node's own key, so
//! it says so as surely as the node's signed list of mailboxes does.
//!
//! A reader trusts nothing it did not check: the packet's signature (pkarr
//! checks it against the key it carries), that the key is the one looked
//! up, that it is recent, and every string in it.

use std::net::SocketAddr;

use peermq::PeerId;
use pkarr::dns::rdata::{RData, TXT};
use pkarr::dns::Name;
use pkarr::{Keypair, SignedPacket, Timestamp};

/// The DNS name our TXT record sits at.
const NAME: &str = "_peermq";
/// The record format, the first string of the TXT record.
const VERSION: &str = "v=1";
/// Most addresses a record carries (more are ignored when publishing and
/// refused when reading).
pub const MAX_ADDRS: usize = 8;
/// Most mailboxes a record names (the protocol's limit).
pub const MAX_MAILBOXES: usize = peermq::wire::mailboxes::MAX_MAILBOXES;
/// Longest relay URL accepted.
pub const MAX_RELAY_LEN: usize = 256;
/// Records older than this are stale: their node has stopped
/// republishing (it republishes every [`crate::REPUBLISH`]).
pub const MAX_AGE_SECS: u64 = 2 * 60 * 60;
/// How far in the future a record's time may be (clocks differ).
pub const MAX_SKEW_SECS: u64 = 10 * 60;
/// TTL given to DNS resolvers of the record (pkarr uses it for caching).
const TTL: u32 = 300;

/// Where a node may be reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Direct addresses, best first.
    pub addrs: Vec<SocketAddr>,
    /// The relay the node is reachable through (its home relay), if any.
    pub relay: Option<String>,
    /// The mailboxes that hold the node's mail while it is away.
    pub mailboxes: Vec<PeerId>,
}

/// Why a found record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// The packet is signed by another key than the one looked up.
    #[error("the record is signed by another key than {0}")]
    ForeignKey(PeerId),
    /// The packet is older than [`MAX_AGE_SECS`].
    #[error("the record is {0} s old: its node stopped publishing")]
    Stale(u64),
    /// The packet claims a time too far in the future.
    #[error("the record is dated {0} s in the future")]
    Future(u64),
    /// The bytes are not a valid signed packet, or not our record.
    #[error("the record is malformed: {0}")]
    Malformed(String),
}

impl Record {
    /// Signs this record with `key`, dated `now` (microseconds since the
    /// Unix epoch).
    pub fn sign(&self, key: &Keypair, now: u64) -> Result<SignedPacket, RecordError> {
        let strings: Vec<String> = std::iter::once(VERSION.to_string())
            .chain(
                self.addrs
                    .iter()
                    .take(MAX_ADDRS)
                    .map(|a| format!("addr={a}")),
            )
            .chain(
                self.relay
                    .iter()
                    .filter(|r| r.len() <= MAX_RELAY_LEN)
                    .map(|r| format!("relay={r}")),
            )
            .chain(
                self.mailboxes
                    .iter()
                    .take(MAX_MAILBOXES)
                    .map(|m| format!("mbox={m}")),
            )
            .collect();
        let mut txt = TXT::new();
        for s in &strings {
            txt.add_string(s).map_err(malformed)?;
        }
        SignedPacket::builder()
            .txt(Name::new(NAME).map_err(malformed)?, txt, TTL)
            .timestamp(Timestamp::from(now))
            .sign(key)
            .map_err(malformed)
    }

    /// Reads the record in `packet`, found when looking up `peer` at time
    /// `now` (microseconds since the Unix epoch), checking it is `peer`'s,
    /// recent, and well formed.
    pub fn open(packet: &SignedPacket, peer: &PeerId, now: u64) -> Result<Record, RecordError> {
        if packet.public_key().as_bytes() != peer.as_bytes() {
            return Err(RecordError::ForeignKey(*peer));
        }
        let at = packet.timestamp().as_u64();
        if at > now.saturating_add(MAX_SKEW_SECS * 1_000_000) {
            return Err(RecordError::Future((at - now) / 1_000_000));
        }
        let age = now.saturating_sub(at) / 1_000_000;
        if age > MAX_AGE_SECS {
            return Err(RecordError::Stale(age));
        }
        let mut found = None;
        for rr in packet.resource_records(NAME) {
            if let RData::TXT(txt) = &rr.rdata {
                if found.is_some() {
                    return Err(RecordError::Malformed("two _peermq records".into()));
                }
                found = Some(parse(txt)?);
            }
        }
        found.ok_or_else(|| RecordError::Malformed("no _peermq record".into()))
    }

    /// Reads a record from the bytes a DHT node stores for `peer` (the
    /// signature, the time and the DNS packet), as [`Record::open`]. The
    /// signature is checked here.
    pub fn from_stored(bytes: &[u8], peer: &PeerId, now: u64) -> Result<Record, RecordError> {
        let key = pkarr::PublicKey::try_from(peer.as_bytes())
            .map_err(|_| RecordError::Malformed(format!("{peer} is not a valid key")))?;
        let packet =
            SignedPacket::from_relay_payload(&key, &bytes.to_vec().into()).map_err(malformed)?;
        Record::open(&packet, peer, now)
    }
}

fn parse(txt: &TXT<'_>) -> Result<Record, RecordError> {
    let mut record = Record::default();
    let mut version = false;
    for (key, value) in txt.iter_raw() {
        let value = value
            .map(std::str::from_utf8)
            .transpose()
            .map_err(|_| RecordError::Malformed("a value is not UTF-8".into()))?;
        match (key, value) {
            (b"v", Some("1")) => version = true,
            (b"v", _) => {
                return Err(RecordError::Malformed(format!(
                    "unknown version {value:?}; upgrade peermq"
                )))
            }
            (b"addr", Some(addr)) => {
                if record.addrs.len() == MAX_ADDRS {
                    return Err(RecordError::Malformed("too many addresses".into()));
                }
                let addr = addr
                    .parse()
                    .map_err(|_| RecordError::Malformed(format!("bad address {addr:?}")))?;
                record.addrs.push(addr);
            }
            (b"relay", Some(url)) if url.len() <= MAX_RELAY_LEN && record.relay.is_none() => {
                record.relay = Some(url.to_string());
            }
            (b"relay", _) => return Err(RecordError::Malformed("bad relay".into())),
            (b"mbox", Some(id)) if record.mailboxes.len() < MAX_MAILBOXES => {
                let id = id
                    .parse()
                    .map_err(|_| RecordError::Malformed(format!("bad mailbox {id:?}")))?;
                record.mailboxes.push(id);
            }
            (b"mbox", _) => return Err(RecordError::Malformed("bad or too many mailboxes".into())),
            // Later versions may add keys; this one ignores them.
            _ => {}
        }
    }
    if !version {
        return Err(RecordError::Malformed("no version".into()));
    }
    Ok(record)
}

fn malformed(e: impl std::fmt::Display) -> RecordError {
    RecordError::Malformed(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000_000;

    fn key(n: u8) -> (Keypair, PeerId) {
        let k = Keypair::from_secret_key(&[n; 32]);
        let id = PeerId(*k.public_key().as_bytes());
        (k, id)
    }

    fn record() -> Record {
        Record {
            addrs: vec![
                "192.0.2.7:4000".parse().unwrap(),
                "[2001:db8::7]:4000".parse().unwrap(),
            ],
            relay: Some("https://relay.example/".into()),
            mailboxes: vec![PeerId([7; 32]), PeerId([9; 32])],
        }
    }

    #[test]
    fn a_record_reads_back_as_signed() {
        let (k, id) = key(1);
        let packet = record().sign(&k, NOW).unwrap();
        assert_eq!(Record::open(&packet, &id, NOW + 1).unwrap(), record());
        let stored = packet.to_relay_payload();
        assert_eq!(Record::from_stored(&stored, &id, NOW).unwrap(), record());
    }

    #[test]
    fn a_record_signed_by_another_key_is_refused() {
        let (k1, _) = key(1);
        let (_, id2) = key(2);
        let packet = record().sign(&k1, NOW).unwrap();
        assert_eq!(
            Record::open(&packet, &id2, NOW),
            Err(RecordError::ForeignKey(id2))
        );
        // Presented as id2's stored value, the signature does not verify.
        let stored = packet.to_relay_payload();
        assert!(matches!(
            Record::from_stored(&stored, &id2, NOW),
            Err(RecordError::Malformed(_))
        ));
    }

    #[test]
    fn stale_and_future_records_are_refused() {
        let (k, id) = key(1);
        let old = record().sign(&k, NOW).unwrap();
        let later = NOW + (MAX_AGE_SECS + 1) * 1_000_000;
        assert!(matches!(
            Record::open(&old, &id, later),
            Err(RecordError::Stale(_))
        ));
        let ahead = record()
            .sign(&k, NOW + (MAX_SKEW_SECS + 60) * 1_000_000)
            .unwrap();
        assert!(matches!(
            Record::open(&ahead, &id, NOW),
            Err(RecordError::Future(_))
        ));
    }

    #[test]
    fn malformed_packets_are_refused_whatever_byte_changes() {
        let (k, id) = key(1);
        let stored = record().sign(&k, NOW).unwrap().to_relay_payload();
        for i in 0..stored.len() {
            let mut bad = stored.to_vec();
            bad[i] ^= 0x20;
            assert!(
                Record::from_stored(&bad, &id, NOW).is_err(),
                "byte {i} changed and the record still opened"
            );
        }
        for n in [0, 10, 64, 72, 100] {
            assert!(Record::from_stored(&stored[..n.min(stored.len())], &id, NOW).is_err());
        }
    }

    #[test]
    fn a_record_without_our_version_or_with_bad_strings_is_refused() {
        let (k, id) = key(1);
        let sign = |strings: &[&str]| {
            let mut txt = TXT::new();
            for s in strings {
                txt.add_string(s).unwrap();
            }
            SignedPacket::builder()
                .txt(Name::new(NAME).unwrap(), txt, TTL)
                .timestamp(Timestamp::from(NOW))
                .sign(&k)
                .unwrap()
        };
        for strings in [
            &["addr=192.0.2.7:4000"][..],
            &["v=2", "addr=192.0.2.7:4000"],
            &["v=1", "addr=not an address"],
            &["v=1", "relay"],
        ] {
            assert!(
                matches!(
                    Record::open(&sign(strings), &id, NOW),
                    Err(RecordError::Malformed(_))
                ),
                "{strings:?} opened"
            );
        }
        let many: Vec<String> = (0..=MAX_ADDRS)
            .map(|i| format!("addr=192.0.2.{i}:1"))
            .collect();
        let mut strings = vec!["v=1"];
        strings.extend(many.iter().map(String::as_str));
        assert!(Record::open(&sign(&strings), &id, NOW).is_err());
        // Unknown keys are a later version's business.
        let ok = Record::open(&sign(&["v=1", "future=x"]), &id, NOW).unwrap();
        assert_eq!(ok, Record::default());
    }
}
