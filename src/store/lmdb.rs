//! The durable store, on LMDB through `heed`.
//!
//! The only `unsafe` in the crate lives here: heed marks opening and resizing
//! an environment unsafe because LMDB cannot check their preconditions.
#![allow(unsafe_code)]

use std::ops::Bound;
use std::path::{Path, PathBuf};

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
    /// The map never grows past this; a commit that would needs
    /// [`StoreError::Full`] handling by the caller.
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
pub struct LmdbStore {
    env: Env<WithoutTls>,
    dbs: [Database<'static, Bytes, Bytes>; Table::ALL.len()],
    path: PathBuf,
    max_map_size: usize,
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
        std::fs::create_dir_all(&path).map_err(io)?;
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
        let wtxn = env.write_txn().map_err(|e| backend(&path, e))?;
        let dbs = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                let mut dbs = Vec::with_capacity(Table::ALL.len());
                for table in Table::ALL {
                    dbs.push(opener.create_database::<Bytes, Bytes>(wtxn, Some(table.name()))?);
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
            path,
            max_map_size: options.max_map_size.max(initial),
        })
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
                Ok(true) => return Ok(()),
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
            Ok(true) => Ok(()),
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
        self.store
            .db(table)
            .get(self.txn.get(), key)
            .map_err(|e| backend(&self.store.path, e))
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
            if visit(k, v).is_break() {
                break;
            }
        }
        Ok(())
    }
}

fn backend(path: &Path, e: heed::Error) -> StoreError {
    match e {
        heed::Error::Mdb(MdbError::Corrupted) | heed::Error::Mdb(MdbError::PageNotFound) => {
            StoreError::Corrupted(format!("LMDB reports a damaged page in {}", path.display()))
        }
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
                "{} does not hold a readable LMDB environment",
                path.display()
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
