//! Model test: `MemStore`, `LmdbStore` and a plain map agree under random
//! operation sequences, including aborted batches and close-and-reopen.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use peermq::store::{Store, Table};
use peermq::{LmdbStore, MemStore, Txn};
use quickcheck::{Arbitrary, Gen, QuickCheck};

const TABLES: [Table; 3] = [Table::Blocks, Table::Inbox, Table::Meta];

#[derive(Clone, Debug)]
enum Op {
    Put(usize, Vec<u8>, Vec<u8>),
    Delete(usize, Vec<u8>),
    Get(usize, Vec<u8>),
    Scan(usize, Vec<u8>, Vec<u8>, bool),
    Commit,
    Abort,
    Reopen,
}

fn small_key(g: &mut Gen) -> Vec<u8> {
    let len = 1 + usize::arbitrary(g) % 2;
    (0..len)
        .map(|_| *g.choose(&[0u8, 1, 2, 0xff]).unwrap_or(&0))
        .collect()
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        let t = usize::arbitrary(g) % TABLES.len();
        match u8::arbitrary(g) % 10 {
            0..=2 => Op::Put(t, small_key(g), Vec::<u8>::arbitrary(g)),
            3 => Op::Delete(t, small_key(g)),
            4 => Op::Get(t, small_key(g)),
            5 => Op::Scan(t, small_key(g), small_key(g), bool::arbitrary(g)),
            6 | 7 => Op::Commit,
            8 => Op::Abort,
            _ => Op::Reopen,
        }
    }
}

type Model = BTreeMap<(usize, Vec<u8>), Vec<u8>>;
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A backend under test plus its uncommitted operations.
trait Backend {
    fn store(&self) -> &dyn ErasedRun;
    fn reopen(&mut self);
}

/// Object-safe runner of one transaction over a store.
trait ErasedRun {
    fn run(&self, pending: &[Op], read: Option<&Op>, commit: bool) -> Result<Entries, String>;
}

impl<S: Store> ErasedRun for S {
    fn run(&self, pending: &[Op], read: Option<&Op>, commit: bool) -> Result<Entries, String> {
        let mut txn = Txn::begin(self).map_err(|e| e.to_string())?;
        for op in pending {
            match op {
                Op::Put(t, k, v) => txn.put(TABLES[*t], k, v),
                Op::Delete(t, k) => txn.delete(TABLES[*t], k),
                _ => {}
            }
        }
        let mut out = Vec::new();
        match read {
            Some(Op::Get(t, k)) => {
                if let Some(v) = txn.get(TABLES[*t], k).map_err(|e| e.to_string())? {
                    out.push((k.clone(), v.to_vec()));
                }
            }
            Some(Op::Scan(t, lo, hi, stop_early)) => {
                let range = (
                    Bound::Included(lo.as_slice()),
                    Bound::Excluded(hi.as_slice()),
                );
                if lo <= hi {
                    txn.scan(TABLES[*t], range, &mut |k, v| {
                        out.push((k.to_vec(), v.to_vec()));
                        if *stop_early && out.len() == 2 {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    })
                    .map_err(|e| e.to_string())?;
                }
            }
            _ => {}
        }
        if commit {
            txn.commit().map_err(|e| e.to_string())?;
        }
        Ok(out)
    }
}

struct Mem(MemStore);
impl Backend for Mem {
    fn store(&self) -> &dyn ErasedRun {
        &self.0
    }
    fn reopen(&mut self) {
        // A new handle on the same committed state, as after a crash.
        self.0 = self.0.clone();
    }
}

struct Lmdb(Option<LmdbStore>, tempfile::TempDir);
impl Backend for Lmdb {
    fn store(&self) -> &dyn ErasedRun {
        self.0.as_ref().expect("open")
    }
    fn reopen(&mut self) {
        self.0 = None;
        self.0 = Some(LmdbStore::open(self.1.path()).expect("reopen"));
    }
}

fn model_read(model: &Model, pending: &[Op], read: &Op) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut m = model.clone();
    apply(&mut m, pending);
    match read {
        Op::Get(t, k) => m
            .get(&(*t, k.clone()))
            .map(|v| vec![(k.clone(), v.clone())])
            .unwrap_or_default(),
        Op::Scan(t, lo, hi, stop) => {
            if lo > hi {
                return Vec::new();
            }
            let mut out: Vec<_> = m
                .range((*t, lo.clone())..(*t, hi.clone()))
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            if *stop {
                out.truncate(2);
            }
            out
        }
        _ => Vec::new(),
    }
}

fn apply(model: &mut Model, pending: &[Op]) {
    for op in pending {
        match op {
            Op::Put(t, k, v) => {
                model.insert((*t, k.clone()), v.clone());
            }
            Op::Delete(t, k) => {
                model.remove(&(*t, k.clone()));
            }
            _ => {}
        }
    }
}

fn agree(ops: Vec<Op>) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut backends: Vec<Box<dyn Backend>> = vec![
        Box::new(Mem(MemStore::new())),
        Box::new(Lmdb(Some(LmdbStore::open(dir.path()).expect("open")), dir)),
    ];
    let mut model = Model::new();
    let mut pending: Vec<Op> = Vec::new();
    for op in &ops {
        match op {
            Op::Put(..) | Op::Delete(..) => pending.push(op.clone()),
            Op::Get(..) | Op::Scan(..) => {
                let want = model_read(&model, &pending, op);
                for b in &backends {
                    if b.store().run(&pending, Some(op), false).as_ref() != Ok(&want) {
                        return false;
                    }
                }
            }
            Op::Commit => {
                for b in &backends {
                    if b.store().run(&pending, None, true).is_err() {
                        return false;
                    }
                }
                apply(&mut model, &pending);
                pending.clear();
            }
            Op::Abort => pending.clear(),
            Op::Reopen => {
                pending.clear();
                for b in backends.iter_mut() {
                    b.reopen();
                }
            }
        }
    }
    // Everything committed is there after a final reopen, and nothing else.
    for b in backends.iter_mut() {
        b.reopen();
        for t in 0..TABLES.len() {
            let all = Op::Scan(t, Vec::new(), vec![0xff; 4], false);
            if b.store().run(&[], Some(&all), false) != Ok(model_read(&model, &[], &all)) {
                return false;
            }
        }
    }
    true
}

#[test]
fn mem_and_lmdb_agree_with_the_model() {
    QuickCheck::new()
        .tests(150)
        .quickcheck(agree as fn(Vec<Op>) -> bool);
}
