//! The durable store, on LMDB through `heed`.
//!
//! The only `unsafe` in the crate lives here: heed marks opening and resizing
//! an environment unsafe because LMDB cannot check their preconditions.
#![allow(unsafe_code)]

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use heed::types::Bytes;
use heed::{
    CommitOrAbort, Database, Env, EnvOpenOptions, MdbError, PutFlags, RoTxn, RwTxn, WithoutTls,
};

use super::{Store, StoreError, StoreRead, Table, Visit, WriteBatch};

/// Tuning of an [`LmdbStore`].
#[derive(Clone, Debug)]
pub struct LmdbOptions {
    /// Map size to start with. The map grows on demand; on Linux an unused
    /// map costs address space, not disk.
    pub initial_map_size: usize,
    /// The map never grows past this; a commit that would fails with
    /// [`StoreError::Full`], writing nothing.
    pub max_map_size: usize,
    /// Whether a commit waits until its data is on disk (`true`, the
    /// default: commits survive a power loss). `false` sets LMDB's
    /// `MDB_NOSYNC`: commits still survive a crash of the process, since
    /// the OS holds the written pages, but the last ones may be lost if the
    /// machine goes down. It is the mode of stores that do not fsync per
    /// write, which benchmarks compare against; do not use it for messages
    /// you acknowledge to others. It also sets `MDB_WRITEMAP`: commits
    /// write into the shared map instead of through `pwrite`, which halves
    /// the cost of a small commit, and `data.mdb` shows the map's size
    /// (sparse: only what is used takes disk). Every process on one data
    /// directory must use the same setting: LMDB's processes with and
    /// without `MDB_WRITEMAP` do not cooperate.
    ///
    /// Do not turn it off where the disk may fill up: with `MDB_WRITEMAP`
    /// the file is as long as the map but sparse, and a write into a hole
    /// on a full disk cannot fail with an error. The kernel kills the
    /// process with `SIGBUS` instead. With `sync` on (the default), LMDB
    /// maps the file read-only and writes with `pwrite`, so a full disk is
    /// an error ([`StoreError::DiskFull`]) that writes nothing.
    pub sync: bool,
}

impl Default for LmdbOptions {
    fn default() -> Self {
        LmdbOptions {
            initial_map_size: 1 << 30,
            max_map_size: 1 << 40,
            sync: true,
        }
    }
}

/// A store in an LMDB environment in one directory.
///
/// Commits are durable (LMDB syncs on commit). Several processes may open the
/// same directory at once: LMDB's lock file coordinates them, and each
/// commit is visible to every reader that starts after it. Opening does no
/// work proportional to the amount of data stored.
///
/// Faults:
///
/// - A full disk fails the commit with [`StoreError::DiskFull`], and a
///   full map (past [`LmdbOptions::max_map_size`]) with
///   [`StoreError::Full`]. Either way nothing of the commit is written
///   (the previous meta page still names the last good tree), reads keep
///   working, and the next commit after space returns succeeds.
/// - A `data.mdb` shorter than its last committed page (truncated by a
///   failed copy or a full disk outside LMDB) is refused at open with
///   [`StoreError::Corrupted`] naming the file: reading the missing pages
///   through the map would kill the process with `SIGBUS`. An empty
///   `data.mdb` is taken for one whose creation was interrupted, and
///   starts a new store.
/// - LMDB keeps no checksums. A damaged meta page is refused at open; a
///   damaged tree page is found when a read or a commit reaches it, if
///   its header no longer makes sense ([`StoreError::Corrupted`] naming
///   the file). What LMDB cannot see, the core's records catch: see the
///   module documentation of [`crate::store`].
pub struct LmdbStore {
    env: Env<WithoutTls>,
    dbs: [Database<'static, Bytes, Bytes>; Table::ALL.len()],
    path: PathBuf,
    max_map_size: usize,
    /// LMDB's page size in this environment.
    page: usize,
    /// Whether LMDB writes with `pwrite` (no `MDB_WRITEMAP`): then
    /// `data.mdb` ends near its last page, and [`keep_tail`] keeps a
    /// sparse tail past it.
    tail: bool,
    /// The length `data.mdb` was last seen or made to have.
    covered: AtomicU64,
}

impl std::fmt::Debug for LmdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LmdbStore {
    /// Opens (creating if needed) the store in directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, LmdbOptions::default())
    }

    /// Opens the store in `dir` with explicit options.
    pub fn open_with(dir: impl AsRef<Path>, options: LmdbOptions) -> Result<Self, StoreError> {
        let path = dir.as_ref().to_path_buf();
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        // Private to this user from its first moment: it will hold the
        // identity's secret (LMDB creates its files 0600 itself).
        let mut dir_builder = std::fs::DirBuilder::new();
        dir_builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir_builder, 0o700);
        dir_builder.create(&path).map_err(io)?;
        // Its length before LMDB opens it: with WRITEMAP, opening extends
        // the file to the map's size, which would hide a truncation.
        let data_len = std::fs::metadata(path.join(DATA_FILE))
            .ok()
            .map(|m| m.len());
        let page = page_size();
        let initial = round_up(options.initial_map_size.max(page), page);
        let mut builder = EnvOpenOptions::new().read_txn_without_tls();
        builder.max_dbs(Table::ALL.len() as u32).map_size(initial);
        // Reads are point lookups, mostly: read-ahead would pull whole runs
        // of the file into memory (and into our RSS) for a sparse reader.
        let mut flags = heed::EnvFlags::NO_READ_AHEAD;
        if !options.sync {
            flags |= heed::EnvFlags::NO_SYNC | heed::EnvFlags::WRITE_MAP;
        }
        // SAFETY: NO_READ_AHEAD only changes the kernel's paging advice;
        // NO_SYNC only weakens durability against power loss, which
        // `LmdbOptions::sync` documents, and cannot corrupt the environment
        // on a process crash. WRITE_MAP makes the map writable, so a stray
        // write through a pointer into it could corrupt the file; this
        // crate only ever reads the map through shared slices, and writes
        // through LMDB's calls.
        unsafe {
            builder.flags(flags);
        }
        // SAFETY: heed requires that this process does not open the same
        // environment twice, which heed itself checks (EnvAlreadyOpened), and
        // that the files are not modified except through LMDB, which other
        // peermq processes respect.
        let env = unsafe { builder.open(&path) }.map_err(|e| map_open_error(&path, e))?;
        if let Some(before) = data_len {
            check_length(&env, &path, before, !options.sync)?;
        }
        let page = env.unnamed_database_stat().page_size as usize;
        let covered = match options.sync {
            true => keep_tail(&env, &path, page, 0),
            false => 0,
        };
        let wtxn = env.write_txn().map_err(|e| backend(&path, e))?;
        let dbs = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                // Tables are created only where the main table's count (on
                // the meta page, read under the writer lock) agrees that
                // they are missing: LMDB would write a new table's record
                // into a damaged page as if it were whole, which corrupts
                // memory, not just the file.
                let tables = env.unnamed_database_stat().entries;
                let mut found = Vec::with_capacity(Table::ALL.len());
                for table in Table::ALL {
                    found.push(opener.open_database::<Bytes, Bytes>(wtxn, Some(table.name()))?);
                }
                let present = found.iter().filter(|d| d.is_some()).count();
                if present != tables && present < Table::ALL.len() {
                    return Err(heed::Error::Mdb(MdbError::Corrupted));
                }
                let mut dbs = Vec::with_capacity(Table::ALL.len());
                for (table, db) in Table::ALL.into_iter().zip(found) {
                    dbs.push(match db {
                        Some(db) => db,
                        None => opener.create_database::<Bytes, Bytes>(wtxn, Some(table.name()))?,
                    });
                }
                let dbs: [Database<'_, Bytes, Bytes>; Table::ALL.len()] = dbs
                    .try_into()
                    .map_err(|_| heed::Error::Mdb(MdbError::Incompatible))?;
                Ok(CommitOrAbort::<_, ()>::Commit(dbs))
            })
            .map_err(|e| backend(&path, e))?;
        let CommitOrAbort::Commit(dbs) = dbs else {
            return Err(StoreError::Backend(format!(
                "{}: could not create tables",
                path.display()
            )));
        };
        Ok(LmdbStore {
            env,
            dbs,
            page,
            tail: options.sync,
            covered: AtomicU64::new(covered),
            path,
            max_map_size: options.max_map_size.max(initial),
        })
    }

    /// After a commit: keeps the sparse tail past the last page that
    /// [`keep_tail`] made, once the file grew into it.
    fn after_commit(&self) {
        if !self.tail {
            return;
        }
        let used = (self.env.info().last_page_number as u64 + 1) * self.page as u64;
        if used + TAIL / 2 > self.covered.load(Ordering::Relaxed) {
            let covered = keep_tail(&self.env, &self.path, self.page, used);
            self.covered.fetch_max(covered, Ordering::Relaxed);
        }
    }

    /// Checks that `key` and `value`, which LMDB found in its map, can be
    /// what it stored: LMDB trusts the lengths in its pages, so a damaged
    /// one would hand out a slice running past the end of the file, and
    /// reading it would kill the process with `SIGBUS`.
    ///
    /// A key is at most 511 bytes. A value that fits in a page lies within
    /// one; a longer one sits on overflow pages right after their header,
    /// which must say so, count at least the pages the length needs (LMDB
    /// may rewrite a shorter value into a longer run), and lie within what
    /// was committed. Costs a few comparisons, no system call.
    fn check_entry(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        const HEADER: usize = 16; // LMDB's page header
        const OVERFLOW: u16 = 0x04; // LMDB's P_OVERFLOW page flag
        let page = self.page;
        let damaged = || {
            StoreError::Corrupted(format!(
                "LMDB found a damaged page in {}",
                self.path.join(DATA_FILE).display()
            ))
        };
        if key.len() > 511 {
            return Err(damaged());
        }
        let len = value.len();
        if len + HEADER <= page {
            // Pages start at multiples of the page size from the map's
            // start, which mmap aligns to at least 4 KiB; with bigger pages
            // a page's start is not known here.
            let fits = page != 4096 || (value.as_ptr() as usize % page) + len <= page;
            return if fits { Ok(()) } else { Err(damaged()) };
        }
        if page == 4096 && value.as_ptr() as usize % page != HEADER {
            return Err(damaged());
        }
        // SAFETY: LMDB hands out a value longer than a page only from an
        // overflow page, at its header's end: the 16 bytes before it are
        // that header, within the committed file (LMDB checked the page's
        // number). Were the value's length damaged on a leaf page instead,
        // the node header and key before the value, behind the page's own
        // header, put those 16 bytes in the same page. Read as bytes,
        // unaligned, never written.
        let header: [u8; HEADER] =
            unsafe { std::ptr::read_unaligned(value.as_ptr().sub(HEADER).cast()) };
        let pgno = u64::from_le_bytes(header[..8].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes([header[10], header[11]]);
        let pages = u64::from(u32::from_le_bytes([
            header[12], header[13], header[14], header[15],
        ]));
        let needed = ((HEADER + len - 1) / page + 1) as u64;
        let last = self.env.info().last_page_number as u64;
        let within = pgno
            .checked_add(pages)
            .is_some_and(|end| end <= last.saturating_add(1));
        if flags & OVERFLOW == 0 || pages < needed || !within {
            return Err(damaged());
        }
        Ok(())
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current map size in bytes.
    pub fn map_size(&self) -> usize {
        self.env.info().map_size
    }

    fn db(&self, table: Table) -> &Database<'static, Bytes, Bytes> {
        &self.dbs[table.position()]
    }

    fn try_commit(&self, batch: &WriteBatch) -> Result<bool, heed::Error> {
        let mut wtxn = self.env.write_txn()?;
        if !self.apply(&mut wtxn, batch)? {
            return Ok(false);
        }
        wtxn.commit()?;
        Ok(true)
    }

    /// Writes `batch` in `wtxn` if its preconditions hold; `false` (and
    /// nothing written) if one does not.
    fn apply(&self, wtxn: &mut RwTxn<'_>, batch: &WriteBatch) -> Result<bool, heed::Error> {
        // The write lock is held from here: checking preconditions inside it
        // makes the check-and-write atomic across processes.
        for (table, key, want) in batch.expectations() {
            if self.db(table).get(wtxn, key)? != want {
                return Ok(false);
            }
        }
        for table in Table::ALL {
            let mut writes = batch.table(table).peekable();
            if writes.peek().is_none() {
                continue;
            }
            let db = self.db(table);
            // Keys come sorted, so those past the table's end are appended,
            // which fills pages instead of splitting each in half: appends
            // leave a file half as big.
            let end = db.last(wtxn)?.map(|(k, _)| k.to_vec());
            for (key, value) in writes {
                match value {
                    Some(v) if end.as_deref().is_none_or(|e| key > e) => {
                        db.put_with_flags(wtxn, PutFlags::APPEND, key, v)?
                    }
                    Some(v) => db.put(wtxn, key, v)?,
                    None => {
                        db.delete(wtxn, key)?;
                    }
                }
            }
        }
        Ok(true)
    }

    /// Begins a transaction with `begin`, once more after adopting the map
    /// size if another process grew it meanwhile.
    fn begin<'a, T>(
        &'a self,
        begin: impl Fn(&'a Env<WithoutTls>) -> Result<T, heed::Error>,
    ) -> Result<T, StoreError> {
        match begin(&self.env) {
            Err(heed::Error::Mdb(MdbError::MapResized)) => {
                self.adopt_foreign_resize()?;
                begin(&self.env)
            }
            other => other,
        }
        .map_err(|e| backend(&self.path, e))
    }

    /// Adopts a map size another process grew the environment to.
    fn adopt_foreign_resize(&self) -> Result<(), StoreError> {
        // SAFETY: called only when no transaction of ours is alive: the
        // failed begin or commit has already been dropped, and readers are
        // never held across commits (see `Txn::commit`).
        unsafe { self.env.resize(0) }.map_err(|e| backend(&self.path, e))
    }

    fn grow(&self) -> Result<(), StoreError> {
        let current = self.map_size();
        if current >= self.max_map_size {
            return Err(StoreError::Full {
                used: current as u64,
                max: self.max_map_size as u64,
            });
        }
        let next = round_up(
            current.saturating_mul(2).min(self.max_map_size),
            page_size(),
        );
        // SAFETY: as in `adopt_foreign_resize`, no transaction of ours is alive.
        unsafe { self.env.resize(next) }.map_err(|e| backend(&self.path, e))
    }
}

impl Store for LmdbStore {
    type Reader<'a> = LmdbReader<'a>;

    fn reader(&self) -> Result<LmdbReader<'_>, StoreError> {
        let txn = self.begin(|env| env.read_txn())?;
        Ok(LmdbReader {
            txn: ReadTxn::Shared(txn),
            store: self,
        })
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        loop {
            match self.try_commit(&batch) {
                Ok(true) => {
                    self.after_commit();
                    return Ok(());
                }
                Ok(false) => return Err(StoreError::Conflict),
                Err(heed::Error::Mdb(MdbError::MapFull)) => self.grow()?,
                Err(heed::Error::Mdb(MdbError::MapResized)) => self.adopt_foreign_resize()?,
                Err(e) => return Err(backend(&self.path, e)),
            }
        }
    }

    /// A write transaction, used for reading: LMDB's writer lock, shared by
    /// every process on the environment, is held until it ends.
    fn exclusive_reader(&self) -> Result<LmdbReader<'_>, StoreError> {
        let txn = self.begin(|env| env.write_txn())?;
        Ok(LmdbReader {
            txn: ReadTxn::Exclusive(txn),
            store: self,
        })
    }

    fn commit_under(&self, reader: LmdbReader<'_>, batch: WriteBatch) -> Result<(), StoreError> {
        let mut wtxn = match reader.txn {
            ReadTxn::Exclusive(wtxn) => wtxn,
            ReadTxn::Shared(rtxn) => {
                drop(rtxn);
                return self.commit(batch);
            }
        };
        let applied = self.apply(&mut wtxn, &batch).and_then(|ok| {
            if ok {
                wtxn.commit().map(|()| true)
            } else {
                Ok(false)
            }
        });
        match applied {
            Ok(true) => {
                self.after_commit();
                Ok(())
            }
            Ok(false) => Err(StoreError::Conflict),
            // The transaction is gone (aborted on error): grow or adopt the
            // map with none alive, then commit the ordinary way.
            Err(heed::Error::Mdb(MdbError::MapFull)) => {
                self.grow()?;
                self.commit(batch)
            }
            Err(heed::Error::Mdb(MdbError::MapResized)) => {
                self.adopt_foreign_resize()?;
                self.commit(batch)
            }
            Err(e) => Err(backend(&self.path, e)),
        }
    }
}

/// The LMDB transaction behind an [`LmdbReader`].
enum ReadTxn<'a> {
    /// A read transaction: a snapshot, no lock.
    Shared(RoTxn<'a, WithoutTls>),
    /// A write transaction only read through until it commits: holds the
    /// writer lock ([`Store::exclusive_reader`]).
    Exclusive(RwTxn<'a>),
}

impl<'a> ReadTxn<'a> {
    fn get(&self) -> &RoTxn<'a, WithoutTls> {
        match self {
            ReadTxn::Shared(t) => t,
            ReadTxn::Exclusive(t) => t,
        }
    }
}

/// A read transaction on an [`LmdbStore`].
pub struct LmdbReader<'a> {
    txn: ReadTxn<'a>,
    store: &'a LmdbStore,
}

impl StoreRead for LmdbReader<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        let value = self
            .store
            .db(table)
            .get(self.txn.get(), key)
            .map_err(|e| backend(&self.store.path, e))?;
        if let Some(v) = value {
            self.store.check_entry(key, v)?;
        }
        Ok(value)
    }

    fn scan(
        &self,
        table: Table,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        // LMDB has no empty keys, and rejects an empty key even as a bound.
        let lo = match range.0 {
            Bound::Included([]) | Bound::Excluded([]) => Bound::Unbounded,
            other => other,
        };
        if matches!(range.1, Bound::Included([]) | Bound::Excluded([])) {
            return Ok(());
        }
        let iter = self
            .store
            .db(table)
            .range(self.txn.get(), &(lo, range.1))
            .map_err(|e| backend(&self.store.path, e))?;
        for entry in iter {
            let (k, v) = entry.map_err(|e| backend(&self.store.path, e))?;
            self.store.check_entry(k, v)?;
            if visit(k, v).is_break() {
                break;
            }
        }
        Ok(())
    }
}

/// The file LMDB keeps the data in, in the data directory.
const DATA_FILE: &str = "data.mdb";

/// Refuses an environment whose data file is shorter than its last
/// committed page: LMDB would read the missing pages through the map, and
/// the kernel answers that with `SIGBUS`. `before` is the file's length
/// before LMDB opened it; `writemap` whether LMDB runs with `MDB_WRITEMAP`.
/// Reads no page but the meta pages.
fn check_length(
    env: &Env<WithoutTls>,
    path: &Path,
    before: u64,
    writemap: bool,
) -> Result<(), StoreError> {
    let page = env.unnamed_database_stat().page_size as u64;
    let last = env.info().last_page_number as u64;
    let needed = last.saturating_add(1).saturating_mul(page);
    // Another process may have committed (and grown the file) between our
    // look at it and LMDB's; the file never shrinks, so a look now
    // settles it (without WRITEMAP, which cannot hide a truncation).
    let now = std::fs::metadata(path.join(DATA_FILE)).map_or(0, |m| m.len());
    let len = if writemap { before } else { before.max(now) };
    if len < needed {
        return Err(StoreError::Corrupted(format!(
            "{} is truncated: it holds {len} bytes, but its last commit uses {needed}",
            path.join(DATA_FILE).display()
        )));
    }
    Ok(())
}

/// Sparse bytes kept in `data.mdb` past its last committed page, when LMDB
/// writes with `pwrite` (with `MDB_WRITEMAP` the file spans the whole map
/// already). LMDB trusts the offsets and lengths in its pages: a damaged
/// one makes it read up to 64 KiB past a page, and past the end of the
/// file that is `SIGBUS`. Within this tail it reads zeros instead, finds
/// the page damaged, and says so. The tail takes no disk space.
const TAIL: u64 = 1 << 20;

/// Makes `data.mdb` in `dir` reach [`TAIL`] past its last committed page,
/// and returns its length (`at_least` if it could not look). Takes LMDB's
/// writer lock, so that no process writes pages meanwhile: the file only
/// ever grows. Best effort: a failure leaves the file as it was.
fn keep_tail(env: &Env<WithoutTls>, dir: &Path, page: usize, at_least: u64) -> u64 {
    let Ok(lock) = env.write_txn() else {
        return at_least;
    };
    let used = (env.info().last_page_number as u64 + 1) * page as u64;
    let want = used + TAIL;
    let covered = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(DATA_FILE))
        .and_then(|f| {
            let len = f.metadata()?.len();
            if len < want {
                f.set_len(want)?;
            }
            Ok(len.max(want))
        })
        .unwrap_or(at_least);
    drop(lock);
    covered
}

/// Whether an I/O error means the disk (or the user's quota on it) is full.
fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

fn backend(path: &Path, e: heed::Error) -> StoreError {
    match e {
        heed::Error::Mdb(MdbError::Corrupted)
        | heed::Error::Mdb(MdbError::PageNotFound)
        | heed::Error::Mdb(MdbError::Invalid) => StoreError::Corrupted(format!(
            "LMDB found a damaged page in {}",
            path.join(DATA_FILE).display()
        )),
        heed::Error::Mdb(MdbError::Panic) => StoreError::Backend(format!(
            "LMDB hit an unrecoverable write error on {} earlier and refuses further writes; \
             restart the process to reopen it (what was committed before is intact)",
            path.join(DATA_FILE).display()
        )),
        heed::Error::Io(source) if is_disk_full(&source) => StoreError::DiskFull {
            path: path.display().to_string(),
        },
        heed::Error::Io(source) => StoreError::Io {
            path: path.display().to_string(),
            source,
        },
        other => StoreError::Backend(format!("{} (in {})", other, path.display())),
    }
}

fn map_open_error(path: &Path, e: heed::Error) -> StoreError {
    match e {
        heed::Error::Mdb(MdbError::Invalid) | heed::Error::Mdb(MdbError::VersionMismatch) => {
            StoreError::Corrupted(format!(
                "{} is not a readable LMDB file (damaged, or not LMDB)",
                path.join(DATA_FILE).display()
            ))
        }
        heed::Error::EnvAlreadyOpened => StoreError::Backend(format!(
            "{} is already open in this process; share the open store instead of opening it twice",
            path.display()
        )),
        other => backend(path, other),
    }
}

fn page_size() -> usize {
    // LMDB requires map sizes in whole OS pages; 64 KiB is a multiple of
    // every page size Linux, macOS and Windows use.
    1 << 16
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Txn;

    /// The directory and the files holding the identity's secret are
    /// created closed to group and others (whatever the umask), with no
    /// chmod after the fact.
    #[cfg(unix)]
    #[test]
    fn a_new_store_is_private_to_its_user() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("parent").join("data");
        drop(LmdbStore::open(&dir).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for p in [
            dir.clone(),
            tmp.path().join("parent"),
            dir.join(DATA_FILE),
            dir.join("lock.mdb"),
        ] {
            assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
        }
    }

    #[test]
    fn an_exclusive_transaction_makes_other_writers_wait_instead_of_conflicting() {
        let dir = tempfile::tempdir().unwrap();
        let store = LmdbStore::open(dir.path()).unwrap();
        let key = b"marks";
        let mut t = Txn::begin(&store).unwrap();
        t.put(Table::Inbox, key, b"0");
        t.commit().unwrap();
        let mut mine = Txn::begin_exclusive(&store).unwrap();
        let seen = mine.get(Table::Inbox, key).unwrap().map(<[u8]>::to_vec);
        // Another writer, read from the same state, tries to commit while
        // ours is open: it waits for ours, then finds the record changed.
        let theirs = std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                let mut t = Txn::begin(&store).unwrap();
                t.put_expecting(Table::Inbox, key, b"2".to_vec(), Some(b"0"));
                t.commit()
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            mine.put_expecting(Table::Inbox, key, b"1".to_vec(), seen.as_deref());
            mine.commit()
                .expect("nobody committed under an exclusive transaction");
            other.join().unwrap()
        });
        assert!(matches!(theirs, Err(StoreError::Conflict)), "{theirs:?}");
        let r = store.reader().unwrap();
        assert_eq!(r.get(Table::Inbox, key).unwrap(), Some(&b"1"[..]));
    }

    #[test]
    fn a_store_without_sync_keeps_its_commits_across_reopen_and_growth() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LmdbOptions {
            initial_map_size: 1 << 16,
            sync: false,
            ..LmdbOptions::default()
        };
        {
            let store = LmdbStore::open_with(dir.path(), opts.clone()).unwrap();
            for i in 0u32..64 {
                let mut t = Txn::begin_exclusive(&store).unwrap();
                t.put(Table::Blocks, &i.to_be_bytes(), &[i as u8; 4096]);
                t.commit().unwrap();
            }
            assert!(store.map_size() > 1 << 16, "the map grew");
        }
        let store = LmdbStore::open_with(dir.path(), opts).unwrap();
        let r = store.reader().unwrap();
        for i in 0u32..64 {
            assert_eq!(
                r.get(Table::Blocks, &i.to_be_bytes()).unwrap(),
                Some(&[i as u8; 4096][..])
            );
        }
    }

    #[test]
    fn grows_the_map_and_fails_clearly_at_the_ceiling() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LmdbOptions {
            initial_map_size: 1 << 16,
            max_map_size: 1 << 22,
            ..LmdbOptions::default()
        };
        let store = LmdbStore::open_with(dir.path(), opts).unwrap();
        let before = store.map_size();
        let mut t = Txn::begin(&store).unwrap();
        t.put(Table::Blocks, b"a", &vec![7u8; 1 << 20]);
        t.commit().unwrap();
        assert!(store.map_size() > before, "map grew from {before}");
        let mut t = Txn::begin(&store).unwrap();
        t.put(Table::Blocks, b"b", &vec![7u8; 8 << 20]);
        let err = t.commit().unwrap_err();
        assert!(matches!(err, StoreError::Full { .. }), "{err}");
        assert!(err.to_string().contains("raise the maximum map size"));
        // The failed commit wrote nothing, and the store still works.
        let r = store.reader().unwrap();
        assert_eq!(
            r.get(Table::Blocks, b"a").unwrap().map(|v| v.len()),
            Some(1 << 20)
        );
        assert_eq!(r.get(Table::Blocks, b"b").unwrap(), None);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LmdbStore::open(dir.path()).unwrap();
            let mut t = Txn::begin(&store).unwrap();
            t.put(Table::Meta, b"k", b"v");
            t.commit().unwrap();
        }
        let store = LmdbStore::open(dir.path()).unwrap();
        assert_eq!(
            store.reader().unwrap().get(Table::Meta, b"k").unwrap(),
            Some(&b"v"[..])
        );
    }

    #[test]
    fn a_file_that_is_not_lmdb_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.mdb"), vec![0xAB; 1 << 16]).unwrap();
        let err = LmdbStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted(_)), "{err}");
    }
}
