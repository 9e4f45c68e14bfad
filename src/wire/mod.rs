//! The wire format: protocol messages and the frames that carry them.
//!
//! After the Noise handshake, each side sends a stream of encrypted frames
//! ([`frame`]). Decrypted, the frames form one byte stream of messages, each
//! `len: u32 LE | type: u8 | body`, where `len` counts the type byte and the
//! body. Many small messages share one frame, and one large message spans
//! many frames. PROTOCOL.md describes every byte.

pub mod envelope;
pub mod frame;
pub mod mailboxes;
mod message;
pub mod receipt;

pub use mailboxes::MailboxList;
pub(crate) use message::MAX_RECEIPT_RANGES;
pub use message::{
    CloseCode, DataMsg, HandshakePayload, Message, MessageError, RangeRequest, RefuseReason,
    MAX_REQUEST_RANGES, MSG_HEADER_LEN,
};
pub use receipt::Receipt;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 6;
