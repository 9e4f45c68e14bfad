//! The envelope around a message in a queue feed: the sender's delivery
//! times, signed with the message because they are part of its block.
//!
//! ```text
//! plain block:      payload                         (does not start with MAGIC)
//! enveloped block:  MAGIC | field* | 0x00 | payload
//! field:            tag u8 (1..=255, increasing) | len varint | value
//!
//!   tag 1  not before   u64 LE, µs since the Unix epoch   (len 8)
//!   tag 2  expires at   u64 LE, µs since the Unix epoch   (len 8)
//!   tag 3  sealed       the batch's ephemeral X25519 key    (len 32):
//!                       the payload is sealed to the recipient
//!                       ([`crate::identity::seal`])
//! ```
//!
//! A message with no times is written plain, so it costs nothing, and
//! blocks written before envelopes existed read as they always did. The
//! one ambiguity, a plain payload that happens to start with `MAGIC`, is
//! removed by the writer: such a payload always gets an envelope (with no
//! fields). `MAGIC` starts with `0xff`, which no UTF-8 text does.
//!
//! An unknown tag makes the block unreadable rather than skipped: a field
//! this build does not know may change what the payload means (sealing,
//! for one), so guessing would deliver garbage.

use std::borrow::Cow;
use std::fmt;

use crate::time::Timestamp;
use crate::varint;

/// What an enveloped block starts with.
pub const MAGIC: [u8; 8] = *b"\xffpmqenv1";

const TAG_END: u8 = 0;
const TAG_NOT_BEFORE: u8 = 1;
const TAG_EXPIRES_AT: u8 = 2;
const TAG_SEALED: u8 = 3;

/// When the sender lets its message be delivered: not before one time,
/// not at or after another. The receiver's clock decides (PROTOCOL.md,
/// "Delivery times").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Schedule {
    /// Deliver no earlier than this.
    pub not_before: Option<Timestamp>,
    /// From this time on, do not deliver: dead-letter it as expired.
    pub expires_at: Option<Timestamp>,
}

/// Where a message stands at a given time, by its [`Schedule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// It may be delivered.
    Now,
    /// Not before this time.
    At(Timestamp),
    /// Its expiry passed.
    Expired,
}

impl Schedule {
    /// No times: deliver at once, never expire.
    pub const NONE: Schedule = Schedule {
        not_before: None,
        expires_at: None,
    };

    /// Not before `delay` after `now`, expiring `expire_in` after `now`
    /// (each `None`: not set), `now` being the sender's wall clock.
    pub fn from_now(
        now: Timestamp,
        delay: Option<std::time::Duration>,
        expire_in: Option<std::time::Duration>,
    ) -> Schedule {
        Schedule {
            not_before: delay.map(|d| now + d),
            expires_at: expire_in.map(|d| now + d),
        }
    }

    /// Whether it sets no time.
    pub fn is_empty(&self) -> bool {
        *self == Schedule::NONE
    }

    /// Where a message with this schedule stands at `now`. Expiry wins over
    /// a not-before time that has not come.
    pub fn due(&self, now: Timestamp) -> Due {
        match (self.expires_at, self.not_before) {
            (Some(exp), _) if now >= exp => Due::Expired,
            (_, Some(nb)) if now < nb => Due::At(nb),
            _ => Due::Now,
        }
    }

    /// Whether a message with this schedule could ever be delivered: its
    /// not-before time comes before its expiry.
    pub fn is_deliverable(&self) -> bool {
        match (self.not_before, self.expires_at) {
            (Some(nb), Some(exp)) => nb < exp,
            _ => true,
        }
    }
}

/// A block opened: the sender's schedule and the payload it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// When it may be delivered.
    pub schedule: Schedule,
    /// The ephemeral key of the epoch it was sealed in, if it was: then
    /// `payload` is the sealed message, which only the recipient opens.
    pub sealed: Option<[u8; 32]>,
    /// The application's message (sealed, with `sealed`).
    pub payload: &'a [u8],
}

/// Why a block that starts with [`MAGIC`] could not be opened. The block
/// is signed by its author, so this is the author's doing (or a newer
/// build's field): the message cannot be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// It ends inside the envelope.
    Truncated,
    /// A field this build does not know; a newer peermq wrote it.
    UnknownField(u8),
    /// A known field of the wrong length.
    FieldLength {
        /// The field.
        tag: u8,
        /// Its length.
        len: u64,
    },
    /// Fields out of order or repeated.
    Order(u8),
    /// The message is sealed, and does not open with this node's key: it
    /// was sealed to another key, or changed.
    Sealed,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::Truncated => f.write_str("the message ends inside its envelope"),
            EnvelopeError::UnknownField(t) => write!(
                f,
                "the envelope has field {t}, which this build does not know: upgrade peermq to read it"
            ),
            EnvelopeError::FieldLength { tag, len } => {
                write!(f, "envelope field {tag} is {len} bytes long")
            }
            EnvelopeError::Order(t) => write!(f, "envelope field {t} is out of order or repeated"),
            EnvelopeError::Sealed => f.write_str(
                "the message is sealed and does not open with this node's key: it was sealed to another key, or changed",
            ),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// The block that carries `payload` with `schedule`: the payload itself
/// when it needs no envelope (borrowed, no copy).
pub fn wrap<'a>(schedule: &Schedule, payload: &'a [u8]) -> Cow<'a, [u8]> {
    if schedule.is_empty() && !payload.starts_with(&MAGIC) {
        return Cow::Borrowed(payload);
    }
    Cow::Owned(enveloped(schedule, None, payload))
}

/// The block that carries `sealed`, a message sealed in the batch whose
/// ephemeral key is `ephemeral`, with `schedule`.
pub fn wrap_sealed(schedule: &Schedule, ephemeral: &[u8; 32], sealed: &[u8]) -> Vec<u8> {
    enveloped(schedule, Some(ephemeral), sealed)
}

/// The envelope of a message sealed in the batch whose ephemeral key is
/// `ephemeral`, with room for `payload_len` bytes of sealed payload to be
/// appended: [`wrap_sealed`] without the payload, for a sealer that
/// writes it in place.
pub fn sealed_header(schedule: &Schedule, ephemeral: &[u8; 32], payload_len: usize) -> Vec<u8> {
    let mut out = enveloped(schedule, Some(ephemeral), &[]);
    out.reserve_exact(payload_len);
    out
}

fn enveloped(schedule: &Schedule, ephemeral: Option<&[u8; 32]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 2 * 10 + 34 + 1 + payload.len());
    out.extend_from_slice(&MAGIC);
    for (tag, time) in [
        (TAG_NOT_BEFORE, schedule.not_before),
        (TAG_EXPIRES_AT, schedule.expires_at),
    ] {
        if let Some(t) = time {
            out.push(tag);
            varint::write(&mut out, 8);
            out.extend_from_slice(&t.as_micros().to_le_bytes());
        }
    }
    if let Some(e) = ephemeral {
        out.push(TAG_SEALED);
        varint::write(&mut out, 32);
        out.extend_from_slice(e);
    }
    out.push(TAG_END);
    out.extend_from_slice(payload);
    out
}

/// Opens `block`: its schedule and payload. A block without [`MAGIC`] is
/// a plain payload with no schedule.
pub fn open(block: &[u8]) -> Result<Opened<'_>, EnvelopeError> {
    let Some(mut rest) = block.strip_prefix(&MAGIC[..]) else {
        return Ok(Opened {
            schedule: Schedule::NONE,
            sealed: None,
            payload: block,
        });
    };
    let mut schedule = Schedule::NONE;
    let mut sealed = None;
    let mut last = TAG_END;
    loop {
        let (&tag, after) = rest.split_first().ok_or(EnvelopeError::Truncated)?;
        rest = after;
        if tag == TAG_END {
            return Ok(Opened {
                schedule,
                sealed,
                payload: rest,
            });
        }
        if tag <= last {
            return Err(EnvelopeError::Order(tag));
        }
        last = tag;
        let (len, n) = varint::read(rest).ok_or(EnvelopeError::Truncated)?;
        rest = &rest[n..];
        let value = usize::try_from(len)
            .ok()
            .and_then(|len| rest.get(..len))
            .ok_or(EnvelopeError::Truncated)?;
        rest = &rest[value.len()..];
        let wrong_length = EnvelopeError::FieldLength { tag, len };
        match tag {
            TAG_NOT_BEFORE | TAG_EXPIRES_AT => {
                let bytes: [u8; 8] = value.try_into().map_err(|_| wrong_length)?;
                let t = Some(Timestamp::from_micros(u64::from_le_bytes(bytes)));
                if tag == TAG_NOT_BEFORE {
                    schedule.not_before = t;
                } else {
                    schedule.expires_at = t;
                }
            }
            TAG_SEALED => sealed = Some(value.try_into().map_err(|_| wrong_length)?),
            other => return Err(EnvelopeError::UnknownField(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn at(s: u64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000)
    }

    #[test]
    fn a_message_without_times_is_its_own_block() {
        assert!(matches!(
            wrap(&Schedule::NONE, b"hello"),
            Cow::Borrowed(b"hello")
        ));
        let opened = open(b"hello").unwrap();
        assert_eq!(opened.payload, b"hello");
        assert!(opened.schedule.is_empty());
    }

    #[test]
    fn a_payload_that_looks_like_an_envelope_is_wrapped_and_comes_back_whole() {
        let mut tricky = MAGIC.to_vec();
        tricky.extend_from_slice(b"\x00rest");
        let block = wrap(&Schedule::NONE, &tricky);
        assert_ne!(&*block, &tricky[..]);
        assert_eq!(open(&block).unwrap().payload, &tricky[..]);
    }

    #[test]
    fn due_follows_the_schedule_and_expiry_wins() {
        let s = Schedule {
            not_before: Some(at(10)),
            expires_at: Some(at(20)),
        };
        assert_eq!(s.due(at(9)), Due::At(at(10)));
        assert_eq!(s.due(at(10)), Due::Now);
        assert_eq!(s.due(at(19)), Due::Now);
        assert_eq!(s.due(at(20)), Due::Expired);
        let never = Schedule {
            not_before: Some(at(20)),
            expires_at: Some(at(20)),
        };
        assert!(!never.is_deliverable());
        assert_eq!(never.due(at(5)), Due::At(at(20)));
    }

    #[test]
    fn bad_envelopes_are_refused_not_guessed() {
        let env = |rest: &[u8]| [&MAGIC[..], rest].concat();
        assert_eq!(open(&env(b"")), Err(EnvelopeError::Truncated));
        assert_eq!(open(&env(b"\x01\x08abc")), Err(EnvelopeError::Truncated));
        assert_eq!(
            open(&env(b"\x01\x04abcd\x00")),
            Err(EnvelopeError::FieldLength { tag: 1, len: 4 })
        );
        assert_eq!(
            open(&env(b"\x03\x04abcd\x00")),
            Err(EnvelopeError::FieldLength { tag: 3, len: 4 })
        );
        assert_eq!(
            open(&env(b"\x07\x00\x00")),
            Err(EnvelopeError::UnknownField(7))
        );
        assert_eq!(
            open(&env(b"\x02\x08aaaaaaaa\x01\x08aaaaaaaa\x00")),
            Err(EnvelopeError::Order(1))
        );
        assert_eq!(
            open(&env(b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")),
            Err(EnvelopeError::Truncated)
        );
    }

    quickcheck! {
        fn every_schedule_and_payload_round_trips(nb: Option<u64>, exp: Option<u64>, payload: Vec<u8>) -> bool {
            let schedule = Schedule {
                not_before: nb.map(Timestamp::from_micros),
                expires_at: exp.map(Timestamp::from_micros),
            };
            let block = wrap(&schedule, &payload);
            let sealed_block = wrap_sealed(&schedule, &[7; 32], &payload);
            open(&block) == Ok(Opened { schedule, sealed: None, payload: &payload })
                && open(&sealed_block) == Ok(Opened { schedule, sealed: Some([7; 32]), payload: &payload })
        }

        fn no_block_makes_open_panic(block: Vec<u8>, enveloped: bool) -> bool {
            let block = if enveloped { [&MAGIC[..], &block].concat() } else { block };
            let _ = open(&block);
            true
        }
    }
}
