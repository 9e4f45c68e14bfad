//! Receiving side of a queue feed: which messages are held, read, cleared.

use crate::identity::PeerId;
use crate::ranges::RangeSet;
use crate::store::{Store, StoreError, Table, Txn};

const INBOX_VERSION: u8 = 1;
/// Ranges a persisted set may hold; far more than any real pattern needs.
const MAX_STORED_RANGES: usize = 1 << 20;

/// The state of messages from one sender, persisted per sender.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inbox {
    /// Blocks whose bytes arrived and were stored (cleared ones leave).
    pub held: RangeSet,
    /// Blocks the application cleared: never shown, never downloaded again.
    pub cleared: RangeSet,
    /// Blocks the application archived (processed).
    pub archived: RangeSet,
    /// In memory only: blocks below this were announced by `Event::Message`.
    pub notified: u64,
    /// In memory only: the longest verified length the sender announced.
    pub remote_length: u64,
    /// In memory only: blocks asked for on some connection.
    pub requested: RangeSet,
    /// In memory only: blocks asked for with `get`, not yet arrived.
    pub wanted: RangeSet,
    /// In memory only: blocks the sender said it cannot serve; not asked
    /// again until it announces a new head.
    pub refused: RangeSet,
}

impl Inbox {
    /// Loads the inbox of messages from `from`.
    pub fn load<S: Store>(txn: &Txn<'_, S>, from: &PeerId) -> Result<Option<Self>, StoreError> {
        let Some(bytes) = txn.get(Table::Inbox, &from.0)? else {
            return Ok(None);
        };
        let corrupt = || StoreError::Corrupted(format!("inbox of messages from {from} is damaged"));
        let (&v, rest) = bytes.split_first().ok_or_else(corrupt)?;
        if v != INBOX_VERSION {
            return Err(corrupt());
        }
        let (held, rest) = RangeSet::decode(rest, MAX_STORED_RANGES).ok_or_else(corrupt)?;
        let (cleared, rest) = RangeSet::decode(rest, MAX_STORED_RANGES).ok_or_else(corrupt)?;
        let (archived, rest) = RangeSet::decode(rest, MAX_STORED_RANGES).ok_or_else(corrupt)?;
        if !rest.is_empty() {
            return Err(corrupt());
        }
        let notified = held.next_gap(0);
        Ok(Some(Inbox {
            held,
            cleared,
            archived,
            notified,
            ..Default::default()
        }))
    }

    /// Writes the persistent part into `txn`.
    pub fn save<S: Store>(&self, txn: &mut Txn<'_, S>, from: &PeerId) {
        let mut out = vec![INBOX_VERSION];
        self.held.encode(&mut out);
        self.cleared.encode(&mut out);
        self.archived.encode(&mut out);
        txn.put_owned(Table::Inbox, &from.0, out);
    }

    /// Whether `seq` is held, not archived and not cleared.
    pub fn is_unread(&self, seq: u64) -> bool {
        self.held.contains(seq) && !self.archived.contains(seq) && !self.cleared.contains(seq)
    }

    /// The reader's cursor: the first message neither archived nor cleared.
    pub fn cursor(&self) -> u64 {
        let mut at = 0;
        loop {
            let next = self.cleared.next_gap(self.archived.next_gap(at));
            if next == at {
                return at;
            }
            at = next;
        }
    }

    /// What a receipt acknowledges: everything held or deliberately cleared.
    pub fn acknowledged(&self) -> RangeSet {
        let mut r = self.held.clone();
        r.union(&self.cleared);
        r
    }
}
