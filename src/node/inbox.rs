//! Receiving side of a queue feed: which messages are held, read, cleared.
//!
//! Two records per sender, because two kinds of writer touch them: the
//! replicating node records what arrived (the *held* record, keyed by the
//! sender's id), while `archive` and `clear` may also come from another
//! process sharing the data directory (the *marks* record, keyed by the id
//! and `m`). Each write is conditional on the record being as last seen, so
//! concurrent writers never lose each other's updates.

use super::download::Download;
use super::marks::{corrupt, Marks, MAX_STORED_RANGES};
use crate::identity::PeerId;
use crate::ranges::RangeSet;
use crate::store::{Store, StoreError, Table, Txn};

const INBOX_VERSION: u8 = 1;

/// The state of messages from one sender.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inbox {
    /// What arrived and was asked for; `announced` is the longest verified
    /// length the sender announced.
    pub dl: Download,
    /// Blocks the application cleared: never shown, never downloaded again.
    pub cleared: RangeSet,
    /// Blocks the application archived (processed).
    pub archived: RangeSet,
    /// Blocks the application moved into a named category.
    pub moved: RangeSet,
    /// The held record as last committed (`None`: absent).
    held_record: Option<Vec<u8>>,
    /// In memory only: blocks below this were announced by `Event::Message`.
    pub notified: u64,
    /// In memory only: blocks asked for with `get`, not yet arrived.
    pub wanted: RangeSet,
    /// In memory only: blocks the sender said it cannot serve; not asked
    /// again until it announces a new head.
    pub refused: RangeSet,
    /// In memory only: the unread mailbox was read up to here. Reading
    /// without archiving moves the prefetch window too, or a live reader
    /// that only reads would stall one window past its cursor.
    pub read_to: u64,
}

impl Inbox {
    /// Loads the inbox of messages from `from` (empty if none is stored),
    /// whose feed is verified up to `verified` blocks: nothing past that
    /// can have arrived, so a record saying otherwise is damaged.
    pub fn load<S: Store>(
        txn: &Txn<'_, S>,
        from: &PeerId,
        verified: u64,
    ) -> Result<Self, StoreError> {
        let raw = txn.get(Table::Inbox, &from.0)?;
        let held = match raw {
            None => RangeSet::new(),
            Some(bytes) => {
                let (&v, rest) = bytes.split_first().ok_or_else(|| corrupt(from))?;
                let (held, rest) =
                    RangeSet::decode(rest, MAX_STORED_RANGES).ok_or_else(|| corrupt(from))?;
                let past_feed = held.count_within(verified, u64::MAX) > 0;
                if v != INBOX_VERSION || !rest.is_empty() || past_feed {
                    return Err(corrupt(from));
                }
                held
            }
        };
        let (marks, _) = Marks::load(txn, from)?;
        let notified = held.next_gap(0);
        Ok(Inbox {
            dl: Download {
                held,
                ..Download::default()
            },
            moved: marks.moved_union(),
            cleared: marks.cleared,
            archived: marks.archived,
            held_record: raw.map(<[u8]>::to_vec),
            notified,
            ..Default::default()
        })
    }

    /// Writes the held record into `txn`, conditional on the last one seen.
    pub fn save_held<S: Store>(&mut self, txn: &mut Txn<'_, S>, from: &PeerId) {
        let mut out = vec![INBOX_VERSION];
        self.dl.held.encode(&mut out);
        let before = self.held_record.replace(out.clone());
        txn.put_expecting(Table::Inbox, &from.0, out, before.as_deref());
    }

    /// Adopts marks read from the store (another process may have written).
    /// Returns whether they differ from what it had.
    pub fn set_marks(&mut self, marks: &Marks) -> bool {
        let moved = marks.moved_union();
        let changed =
            self.cleared != marks.cleared || self.archived != marks.archived || self.moved != moved;
        self.cleared = marks.cleared.clone();
        self.archived = marks.archived.clone();
        self.moved = moved;
        changed
    }

    /// Whether `seq` is held and still unread: not archived, moved or
    /// cleared.
    pub fn is_unread(&self, seq: u64) -> bool {
        self.dl.held.contains(seq)
            && !self.archived.contains(seq)
            && !self.cleared.contains(seq)
            && !self.moved.contains(seq)
    }

    /// Held messages not archived, moved or cleared.
    pub fn unread(&self) -> RangeSet {
        let mut r = self.dl.held.clone();
        r.subtract(&self.archived);
        r.subtract(&self.cleared);
        r.subtract(&self.moved);
        r
    }

    /// The reader's cursor: the first message not archived, moved or
    /// cleared.
    pub fn cursor(&self) -> u64 {
        let mut at = 0;
        loop {
            let next = self
                .moved
                .next_gap(self.cleared.next_gap(self.archived.next_gap(at)));
            if next == at {
                return at;
            }
            at = next;
        }
    }

    /// Where the prefetch window starts: the later of the cursor and how
    /// far the unread mailbox was read.
    pub fn window_start(&self) -> u64 {
        self.cursor().max(self.read_to)
    }

    /// Notes that the unread mailbox was read up to `end`; returns whether
    /// that moved the prefetch window.
    pub fn read_up_to(&mut self, end: u64) -> bool {
        let before = self.window_start();
        self.read_to = self.read_to.max(end);
        self.window_start() > before
    }

    /// What a receipt acknowledges: everything held or deliberately cleared.
    pub fn acknowledged(&self) -> RangeSet {
        let mut r = self.dl.held.clone();
        r.union(&self.cleared);
        r
    }
}
