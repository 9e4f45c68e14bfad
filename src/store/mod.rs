//! Storage: a small synchronous key-value trait, and its two backends.
//!
//! The core keeps its whole state in a handful of [`Table`]s of sorted
//! byte keys. A backend only has to read committed values and apply a
//! [`WriteBatch`] atomically and durably; everything above that (key layout,
//! integrity checks) lives in the core, so porting peermq to another storage
//! engine means implementing two small traits.
//!
//! Work is batched: a [`Txn`] reads through to the store while collecting
//! writes, and commits them in one transaction at the end of a batch of work.
//!
//! # Faults
//!
//! **Out of space.** A commit that does not fit fails with
//! [`StoreError::DiskFull`] (the file system is full) or
//! [`StoreError::Full`] (LMDB's map reached `LmdbOptions::max_map_size`,
//! or a [`MemStore`]'s capacity), each saying what to do, and writes
//! nothing. The node stays consistent: `send` returns the error with no seq
//! taken (the next send after space returns gets the next seq), `archive`
//! and `clear` change nothing (a `clear` drops the bytes in the same commit
//! as its mark: never a mark over bytes no later `clear` drops), and blocks
//! that arrive
//! are not kept: the node resets its connections, reloads what it cached
//! from the store, and reconnects with a growing backoff (peers hear
//! `overloaded`) until a connection ends otherwise. Reads keep working
//! throughout, and everything resumes once space returns; nothing needs a
//! restart. [`MemStore::set_capacity`] models a full disk for tests and the
//! simulator.
//!
//! **Damage.** LMDB keeps no checksums. What is checked, and where:
//!
//! | damage | found | reported as |
//! |---|---|---|
//! | `data.mdb` truncated below its last page | at open | [`StoreError::Corrupted`] naming the file |
//! | a meta page (the first two pages) | at open | [`StoreError::Corrupted`] naming the file |
//! | a tree page whose header or lengths make no sense | when a read reaches it | [`StoreError::Corrupted`] naming the file |
//! | a record's bytes (a block, its tree nodes) | when read or served: a block against its leaf hash, a feed's roots against its signed head at load | [`crate::FeedError::Corrupt`] naming feed and seq |
//! | a record gone from under its key (a damaged key) | when a message recorded as arrived is read | [`crate::FeedError::Corrupt`] |
//! | node records (inbox marks, receipts, peers, feeds) that no longer decode | when loaded | [`StoreError::Corrupted`] naming the record |
//!
//! Not found: a flipped bit inside a record that still decodes and carries
//! no hash of its own, such as an inbox's archive marks (a message may show
//! as archived, or unread, again). A block is never returned with wrong
//! bytes, and one recorded as arrived is never silently skipped. LMDB reads
//! through a damaged page without crashing (the store keeps a sparse tail
//! past `data.mdb`'s last page, and checks every length LMDB hands out), but
//! a *write* into a damaged page can corrupt the process's memory: once a
//! store reports damage, restore the data directory from a backup rather
//! than write on.

mod batch;
pub mod keys;
#[cfg(feature = "lmdb")]
mod lmdb;
mod mem;
pub(crate) mod meta;
mod txn;

pub use batch::WriteBatch;
#[cfg(feature = "lmdb")]
pub use lmdb::{LmdbOptions, LmdbStore};
pub use mem::MemStore;
pub use txn::Txn;

use std::ops::{Bound, ControlFlow};

/// The tables the core keeps its state in.
///
/// Keys are big-endian so that byte order is numeric order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Node metadata: the identity secret, the format version.
    Meta,
    /// Authorized peers, by peer id.
    Peers,
    /// Feed descriptors and their latest signed heads, by feed id.
    Feeds,
    /// Blocks and the Merkle tree nodes they complete, by (feed id prefix,
    /// seq): see [`crate::feed::block_key`].
    Blocks,
    /// Inbox state per sender (what arrived; archive and clear marks), by
    /// sender id.
    Inbox,
    /// Signed receipts (acks), by (feed id, signer).
    Receipts,
    /// Broadcast feeds held (own and relayed), by feed id.
    Replicas,
    /// The emitter's local delivery log and consumer positions.
    Events,
    /// Evidence against authors who signed conflicting heads, by feed id.
    Forks,
    /// Mailboxes: recipients' signed lists, routes set locally, and the
    /// feeds a mailbox carries (see the node's `mailbox` module).
    Mail,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 10] = [
        Table::Meta,
        Table::Peers,
        Table::Feeds,
        Table::Blocks,
        Table::Inbox,
        Table::Receipts,
        Table::Replicas,
        Table::Events,
        Table::Forks,
        Table::Mail,
    ];

    /// The table's name in a backend (an LMDB named database, say).
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Peers => "peers",
            Table::Feeds => "feeds",
            Table::Blocks => "blocks",
            Table::Inbox => "inbox",
            Table::Receipts => "receipts",
            Table::Replicas => "replicas",
            Table::Events => "events",
            Table::Forks => "forks",
            Table::Mail => "mail",
        }
    }

    /// The table's position in [`Table::ALL`].
    pub fn position(self) -> usize {
        self as usize
    }
}

/// The callback of a scan: sees each key and value, and may stop the scan.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'a;

/// A storage backend.
///
/// Keys are 1 to 511 bytes long (LMDB's limit); the core never writes an
/// empty key.
///
/// All methods take `&self`: a backend handles its own locking, so a reader
/// and a commit may be issued from the same owner.
pub trait Store {
    /// A consistent read-only view of committed data.
    type Reader<'a>: StoreRead
    where
        Self: 'a;

    /// Opens a read view. Keep it short-lived: drop it before committing.
    fn reader(&self) -> Result<Self::Reader<'_>, StoreError>;

    /// Applies every write of `batch` atomically. When this returns `Ok`, the
    /// writes are durable (they survive a crash of the process or machine).
    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// A read view under which no other writer, in this process or
    /// another, commits until [`Store::commit_under`] ends it: for reading
    /// a record many writers contend for, changing it and writing it back
    /// without a [`StoreError::Conflict`]. Hold it for microseconds, and
    /// commit nothing else meanwhile (that would wait for itself).
    ///
    /// Optional: the default is [`Store::reader`], whose commits may
    /// conflict and are then retried by the caller.
    fn exclusive_reader(&self) -> Result<Self::Reader<'_>, StoreError> {
        self.reader()
    }

    /// Commits `batch`, whose reads were made under `reader` (from
    /// [`Store::exclusive_reader`] or [`Store::reader`]), and ends the
    /// reader. Durable as [`Store::commit`], which the default calls after
    /// dropping the reader.
    fn commit_under(&self, reader: Self::Reader<'_>, batch: WriteBatch) -> Result<(), StoreError> {
        drop(reader);
        self.commit(batch)
    }
}

/// Read access to committed data.
pub trait StoreRead {
    /// The value at `key` in `table`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<&[u8]>, StoreError>;

    /// Visits the entries of `table` with keys in `range`, in ascending key
    /// order, until `visit` breaks.
    fn scan(
        &self,
        table: Table,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError>;
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused an operation on the data directory.
    #[error("cannot use data directory {path}: {source}; check that it exists and is readable and writable")]
    Io {
        /// The directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store reached its configured maximum size (LMDB's map ceiling,
    /// or a [`MemStore`]'s capacity). Nothing of the commit was written;
    /// reads still work, and the same commit succeeds once there is room.
    #[error("store is full: {used} bytes of at most {max}; nothing was written. Free space (prune acknowledged messages: Node::prune, `peermq prune`; clear messages read) or raise the maximum map size (LmdbOptions::max_map_size), then retry")]
    Full {
        /// The size in use when it filled.
        used: u64,
        /// The configured ceiling.
        max: u64,
    },
    /// The file system holding the store has no space (or quota) left
    /// for the commit (`ENOSPC`, `EDQUOT`). Nothing of the commit was
    /// written; reads still work, and the same commit succeeds once
    /// there is space.
    #[error("no space left on the disk holding {path}; nothing was written and reads still work. Free disk space (delete other files, or prune acknowledged messages: Node::prune, `peermq prune`), then retry")]
    DiskFull {
        /// The data directory.
        path: String,
    },
    /// Stored bytes failed an integrity check.
    #[error("store is corrupted: {0}; restore the data directory from a backup")]
    Corrupted(String),
    /// The store was written by an incompatible version of peermq.
    #[error("store format {found} is not supported (this build reads format {supported}); use a matching peermq version")]
    Version {
        /// Format found on disk.
        found: u32,
        /// Format this build writes.
        supported: u32,
    },
    /// Another writer (often another process on the same data directory)
    /// changed a record this commit was based on; nothing was written. Reload
    /// and retry.
    #[error("another writer changed the store concurrently; retry")]
    Conflict,
    /// A failure injected by [`MemStore`] for fault testing.
    #[error("injected storage fault")]
    Injected,
    /// Any other backend failure.
    #[error("storage backend failed: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether the store or its disk is out of space ([`StoreError::Full`],
    /// [`StoreError::DiskFull`]): nothing was written, and the operation
    /// succeeds once space is freed.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full { .. } | StoreError::DiskFull { .. })
    }
}
