//! An in-memory store for tests and simulations, with a crash model.

use std::hash::Hasher;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashTable;

use super::batch::Key;
use super::{Store, StoreError, StoreRead, Table, Visit, WriteBatch};

/// One table: a hash index over entries kept in insertion order.
///
/// Hashing, not a B-tree: point reads and writes dominate, and comparing
/// 40-byte keys that share a 32-byte feed prefix all the way down a big
/// B-tree costs more than one hash. The index holds only positions, so it
/// stays small enough to sit in cache, and new entries are written one
/// after another instead of into random slots of a big table: an append of
/// many blocks costs no cache miss per block. Scans, which are rare and over
/// small tables, sort. The hasher is fixed (the core draws no OS randomness)
/// and cheap: keys are our own, so there is no flooding to defend against.
#[derive(Clone, Default)]
struct Map {
    entries: Vec<Option<(Key, Vec<u8>)>>,
    /// Each entry's hash and position: growing the index never touches the
    /// entries.
    index: HashTable<(u64, usize)>,
    /// Deleted entries not yet compacted away.
    holes: usize,
}

fn hash_key(key: &[u8]) -> u64 {
    let mut h = KeyHasher::default();
    h.write(key);
    h.finish()
}

/// Whether index slot `(h, i)` is the entry of `key` (whose hash is `hash`).
fn holds(entries: &[Option<(Key, Vec<u8>)>], (h, i): (u64, usize), hash: u64, key: &[u8]) -> bool {
    h == hash
        && entries[i]
            .as_ref()
            .is_some_and(|(k, _)| k.as_slice() == key)
}

impl Map {
    fn position(&self, key: &[u8]) -> Option<usize> {
        let hash = hash_key(key);
        self.index
            .find(hash, |&slot| holds(&self.entries, slot, hash, key))
            .map(|&(_, i)| i)
    }

    fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        let i = self.position(key)?;
        self.entries[i].as_ref().map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &[u8]) -> Option<&mut Vec<u8>> {
        let i = self.position(key)?;
        self.entries[i].as_mut().map(|(_, v)| v)
    }

    fn insert(&mut self, key: Key, value: Vec<u8>) {
        let hash = hash_key(&key);
        let entries = &self.entries;
        let entry = self
            .index
            .entry(hash, |&slot| holds(entries, slot, hash, &key), |&(h, _)| h);
        match entry {
            hashbrown::hash_table::Entry::Occupied(e) => {
                if let Some((_, v)) = &mut self.entries[e.get().1] {
                    *v = value;
                }
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((hash, self.entries.len()));
                self.entries.push(Some((key, value)));
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        let hash = hash_key(key);
        let entries = &self.entries;
        let found = self
            .index
            .find_entry(hash, |&slot| holds(entries, slot, hash, key));
        if let Ok(found) = found {
            let ((_, i), _) = found.remove();
            self.entries[i] = None;
            self.holes += 1;
            if self.holes > 1024 && self.holes > self.entries.len() / 2 {
                self.compact();
            }
        }
    }

    /// Drops the holes deletes left, and rebuilds the index.
    fn compact(&mut self) {
        self.entries.retain(Option::is_some);
        self.holes = 0;
        self.index.clear();
        for (at, e) in self.entries.iter().enumerate() {
            if let Some((k, _)) = e {
                let hash = hash_key(k);
                self.index.insert_unique(hash, (hash, at), |&(h, _)| h);
            }
        }
    }

    fn len(&self) -> usize {
        self.entries.len() - self.holes
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

/// A multiply-rotate hash over 8-byte words (in the style of FxHash), with
/// a splitmix64 finish.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        // The multiply only carries low bits upwards; keys differ in their
        // last bytes (big-endian seqs), so mix high bits back down before
        // the table takes its bucket index from the low ones.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[derive(Clone, Default)]
struct Tables {
    maps: [Map; Table::ALL.len()],
}

#[derive(Default)]
struct Shared {
    /// Committed state. Readers hold a clone of the `Arc`, so a commit never
    /// waits for them: it copies only if a reader is still alive.
    committed: Arc<Tables>,
    fail_commits: u32,
    commits: u64,
    /// The most bytes (keys and values) the store may hold, if limited.
    capacity: Option<u64>,
    /// Bytes held, kept up to date while `capacity` is set.
    used: u64,
}

impl Tables {
    /// Bytes of keys and values held.
    fn bytes(&self) -> u64 {
        self.maps
            .iter()
            .flat_map(Map::iter)
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}

/// A store held in memory.
///
/// Clones share one state, which models a disk: drop a node (a crash), open a
/// new one on a clone, and it sees exactly what was committed. Writes that
/// were never committed are gone, as they would be after a power cut.
///
/// Faults, for tests and simulations: [`MemStore::fail_commits`] fails the
/// next commits ([`StoreError::Injected`]), and [`MemStore::set_capacity`]
/// models a full disk: a commit that would grow the store past the
/// capacity fails with [`StoreError::Full`], writing nothing, while one
/// that shrinks it (pruning, clearing) still goes through.
#[derive(Clone, Default)]
pub struct MemStore {
    shared: Arc<Mutex<Shared>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic elsewhere cannot leave `Shared` half-updated (commits swap
        // in a finished map), so a poisoned lock is still consistent.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next `n` commits fail with [`StoreError::Injected`], writing
    /// nothing.
    pub fn fail_commits(&self, n: u32) {
        self.lock().fail_commits = n;
    }

    /// Limits the store to `bytes` of keys and values (`None`: no limit),
    /// as a full disk would. A commit that would leave the store holding
    /// more than that, and more than it held before, fails with
    /// [`StoreError::Full`] and writes nothing; reads keep working. Lift
    /// the limit (or raise it) and the same commit succeeds: space
    /// returned. [`MemStore::used_bytes`] is what it holds now, so
    /// `set_capacity(Some(store.used_bytes()))` fills it up exactly.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        let mut shared = self.lock();
        if bytes.is_some() && shared.capacity.is_none() {
            shared.used = shared.committed.bytes();
        }
        shared.capacity = bytes;
    }

    /// Bytes of keys and values the store holds now.
    pub fn used_bytes(&self) -> u64 {
        let shared = self.lock();
        match shared.capacity {
            Some(_) => shared.used,
            None => shared.committed.bytes(),
        }
    }

    /// How many commits have succeeded so far; tests use it to check that a
    /// batch of work costs one transaction.
    pub fn commit_count(&self) -> u64 {
        self.lock().commits
    }

    /// A copy of what is committed now that shares nothing with this store
    /// from here on: a backup, which simulations restore to make a node
    /// sign a second history over its first.
    pub fn snapshot(&self) -> MemStore {
        let committed = self.lock().committed.clone();
        let copy = MemStore::new();
        copy.lock().committed = committed;
        copy
    }

    /// Total number of stored entries across all tables.
    pub fn entry_count(&self) -> usize {
        self.lock().committed.maps.iter().map(|m| m.len()).sum()
    }

    /// Applies `f` to the raw committed bytes of `key`, if present: a test
    /// hook for simulating on-disk corruption.
    pub fn tamper(&self, table: Table, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut shared = self.lock();
        let tables = Arc::make_mut(&mut shared.committed);
        match tables.maps[table.position()].get_mut(key) {
            Some(v) => {
                f(v);
                true
            }
            None => false,
        }
    }
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("MemStore")
            .field("commits", &s.commits)
            .finish_non_exhaustive()
    }
}

/// A snapshot of a [`MemStore`].
pub struct MemReader {
    tables: Arc<Tables>,
}

impl Store for MemStore {
    type Reader<'a> = MemReader;

    fn reader(&self) -> Result<MemReader, StoreError> {
        Ok(MemReader {
            tables: Arc::clone(&self.lock().committed),
        })
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut shared = self.lock();
        if shared.fail_commits > 0 {
            shared.fail_commits -= 1;
            return Err(StoreError::Injected);
        }
        for (table, key, want) in batch.expectations() {
            if shared.committed.maps[table.position()]
                .get(key)
                .map(|v| v.as_slice())
                != want
            {
                return Err(StoreError::Conflict);
            }
        }
        if let Some(max) = shared.capacity {
            let used = shared.used;
            let after = used.saturating_add_signed(growth(&shared.committed, &batch));
            if after > max && after > used {
                return Err(StoreError::Full { used, max });
            }
            shared.used = after;
        }
        let tables = Arc::make_mut(&mut shared.committed);
        for (table, key, value) in batch.drain() {
            let map = &mut tables.maps[table.position()];
            match value {
                Some(v) => {
                    map.insert(key, v);
                }
                None => map.remove(key.as_slice()),
            }
        }
        shared.commits += 1;
        Ok(())
    }
}

/// How many bytes `batch` adds to `tables` (negative: frees).
fn growth(tables: &Tables, batch: &WriteBatch) -> i64 {
    let mut delta = 0i64;
    for table in Table::ALL {
        let map = &tables.maps[table.position()];
        for (key, value) in batch.table(table) {
            let old = map.get(key).map(|v| (key.len() + v.len()) as i64);
            delta -= old.unwrap_or(0);
            delta += value.map_or(0, |v| (key.len() + v.len()) as i64);
        }
    }
    delta
}

impl StoreRead for MemReader {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        Ok(self.tables.maps[table.position()]
            .get(key)
            .map(|v| v.as_slice()))
    }

    fn scan(
        &self,
        table: Table,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let mut hits: Vec<(&[u8], &[u8])> = self.tables.maps[table.position()]
            .iter()
            .filter(|(k, _)| RangeBounds::<[u8]>::contains(&range, *k))
            .collect();
        hits.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in hits {
            if visit(k, v).is_break() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_compact_and_everything_left_is_found() {
        let store = MemStore::new();
        let key = |i: u32| i.to_be_bytes();
        let mut batch = WriteBatch::new();
        for i in 0..5000u32 {
            batch.put(Table::Blocks, &key(i), &key(i * 3));
        }
        store.commit(batch).unwrap();
        let mut batch = WriteBatch::new();
        for i in (0..5000u32).filter(|i| i % 5 != 0) {
            batch.delete(Table::Blocks, &key(i));
        }
        // Overwrites land in place.
        batch.put(Table::Blocks, &key(10), b"ten");
        store.commit(batch).unwrap();
        assert_eq!(store.entry_count(), 1000);
        let r = store.reader().unwrap();
        for i in 0..5000u32 {
            let want = match i {
                10 => Some(&b"ten"[..]),
                i if i % 5 == 0 => Some(&key(i * 3)[..]),
                _ => None,
            };
            assert_eq!(r.get(Table::Blocks, &key(i)).unwrap(), want, "key {i}");
        }
        let mut seen = Vec::new();
        r.scan(
            Table::Blocks,
            (Bound::Unbounded, Bound::Unbounded),
            &mut |k, _| {
                seen.push(k.to_vec());
                std::ops::ControlFlow::Continue(())
            },
        )
        .unwrap();
        let want: Vec<Vec<u8>> = (0..5000u32)
            .filter(|i| i % 5 == 0)
            .map(|i| key(i).to_vec())
            .collect();
        assert_eq!(seen, want);
        // The holes are gone, not merely skipped.
        let shared = store.lock();
        let map = &shared.committed.maps[Table::Blocks.position()];
        assert!(
            map.entries.len() < 2000,
            "{} entries kept",
            map.entries.len()
        );
    }
}
