//! Storage faults: a full store during a send, during replication and
//! during an archive; a damaged or truncated LMDB file; a disk that really
//! fills up. Each test names the behaviour it holds the node to.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Net;
use peermq::store::Table;
use peermq::{
    pump_pair, Config, Entropy, Event, FeedDescriptor, FeedError, Fetch, Instant, LmdbOptions,
    LmdbStore, Mailbox, MemStore, Node, NodeError, StoreError, Timestamp, Txn,
};

/// The receiver of [`Net::connected_pair`] (it authorized the other).
const A: usize = 0;
/// The sender, which dialed.
const B: usize = 1;

fn message(i: u64) -> Vec<u8> {
    format!("message {i:06} ").repeat(8).into_bytes()
}

/// What node `i` reads from `mailbox`, as (seq, bytes).
fn read(net: &mut Net, i: usize, mailbox: Mailbox) -> Vec<(u64, Vec<u8>)> {
    net.node(i)
        .read(mailbox, None, usize::MAX, Timestamp::EPOCH)
        .expect("reads work")
        .into_iter()
        .map(|r| (r.seq, r.data))
        .collect()
}

fn expected(seqs: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
    seqs.map(|s| (s, message(s))).collect()
}

fn is_full(e: &NodeError) -> bool {
    matches!(e, NodeError::Store(s) | NodeError::Feed(FeedError::Store(s)) if s.is_full())
}

/// A pair where B sent A `n` messages, all delivered and acknowledged.
fn pair_with(n: u64) -> (Net, peermq::PeerId, peermq::PeerId) {
    let (mut net, a, b) = Net::connected_pair();
    let now = net.now;
    for i in 0..n {
        net.node(B).send(a, &message(i), now).unwrap();
    }
    net.run_for(Duration::from_secs(5));
    assert_eq!(read(&mut net, A, Mailbox::Unread), expected(0..n));
    (net, a, b)
}

#[test]
fn a_send_on_a_full_store_fails_saying_what_to_do_and_the_next_send_after_space_returns_takes_the_next_seq(
) {
    let (mut net, a, _) = pair_with(3);
    let store = net.stores[B].clone();
    store.set_capacity(Some(store.used_bytes()));
    let now = net.now;
    let err = net.node(B).send(a, &message(3), now).unwrap_err();
    assert!(is_full(&err), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("nothing was written") && text.contains("Free space"),
        "{text}"
    );
    // A batch fails whole, too.
    let batch = [message(3), message(4)];
    assert!(is_full(
        &net.node(B).send_batch(a, &batch, now).unwrap_err()
    ));
    assert_eq!(net.node(B).status().unwrap()[0].sent, 3, "nothing appended");
    net.run_for(Duration::from_secs(5));
    store.set_capacity(None);
    let now = net.now;
    assert_eq!(net.node(B).send(a, &message(3), now).unwrap(), 3);
    assert_eq!(net.node(B).send_batch(a, &[message(4)], now).unwrap(), 4..5);
    net.run_for(Duration::from_secs(5));
    assert_eq!(read(&mut net, A, Mailbox::Unread), expected(0..5));
    assert_eq!(net.messages(A).len(), 5, "each delivered once, no gap");
    // The sender's feed verifies from its store, as a restart loads it.
    net.crash(B);
    net.restart(B);
    let now = net.now;
    assert_eq!(net.node(B).send(a, &message(5), now).unwrap(), 5);
}

#[test]
fn a_full_store_keeps_serving_reads() {
    let (mut net, a, b) = pair_with(4);
    let store = net.stores[A].clone();
    store.set_capacity(Some(store.used_bytes()));
    assert_eq!(read(&mut net, A, Mailbox::Unread), expected(0..4));
    let now = net.now;
    assert_eq!(
        net.node(A).get(b, 2, now, Timestamp::EPOCH).unwrap(),
        Fetch::Ready(message(2))
    );
    let status = net.node(A).status().unwrap();
    assert_eq!((status[0].received, status[0].unread), (4, 4));
    assert_eq!(net.node(B).acknowledged(a).unwrap().count(), 4);
}

#[test]
fn replication_into_a_full_store_keeps_what_was_verified_and_resumes_when_space_returns() {
    let (mut net, a, _) = pair_with(5);
    net.store_errors = Some(Vec::new());
    let store = net.stores[A].clone();
    store.set_capacity(Some(store.used_bytes()));
    net.take_events(A);
    let now = net.now;
    for i in 5..10 {
        net.node(B).send(a, &message(i), now).unwrap();
    }
    net.run_for(Duration::from_secs(60));
    let errors = net.store_errors.take().unwrap_or_default();
    assert!(!errors.is_empty(), "A could not store what arrived");
    for (i, e) in &errors {
        assert_eq!(*i, A);
        assert!(is_full(e), "{e}");
    }
    // What was verified stays, readable; nothing of the new is half there.
    assert_eq!(read(&mut net, A, Mailbox::Unread), expected(0..5));
    assert!(
        net.messages(A).is_empty(),
        "no message event for blocks not stored"
    );
    assert_eq!(net.node(B).acknowledged(a).unwrap().count(), 5);
    // A keeps reconnecting, but backs off while its store stays full
    // instead of reconnecting (and downloading again) at once.
    let connects = net
        .take_events(A)
        .iter()
        .filter(|e| matches!(e, Event::Connected { .. }))
        .count();
    assert!(connects <= 12, "{connects} reconnections in 60 s");
    store.set_capacity(None);
    net.run_for(Duration::from_secs(60));
    assert_eq!(read(&mut net, A, Mailbox::Unread), expected(0..10));
    let arrived: Vec<u64> = net.messages(A).iter().map(|m| m.1).collect();
    assert_eq!(arrived, (5..10).collect::<Vec<_>>());
    assert_eq!(net.node(B).acknowledged(a).unwrap().count(), 10);
}

#[test]
fn archive_on_a_full_store_fails_saying_so_and_leaves_the_inbox_as_it_was() {
    let (mut net, _, b) = pair_with(3);
    let store = net.stores[A].clone();
    store.set_capacity(Some(store.used_bytes()));
    let now = net.now;
    let err = net.node(A).archive(b, 1, now).unwrap_err();
    assert!(is_full(&err), "{err:?}");
    let err = net.node(A).archive_many(b, &[0, 2], now).unwrap_err();
    assert!(is_full(&err), "{err:?}");
    assert_eq!(read(&mut net, A, Mailbox::Unread), expected(0..3));
    assert!(read(&mut net, A, Mailbox::Archived).is_empty());
    store.set_capacity(None);
    assert!(
        net.node(A).archive(b, 1, now).unwrap(),
        "archived once, now"
    );
    assert!(!net.node(A).archive(b, 1, now).unwrap());
    assert_eq!(read(&mut net, A, Mailbox::Archived), vec![(1, message(1))]);
}

#[test]
fn clearing_on_a_full_store_frees_the_bytes_in_the_same_commit_as_the_mark() {
    let (mut net, _, b) = pair_with(3);
    let store = net.stores[A].clone();
    let before = store.used_bytes();
    store.set_capacity(Some(before));
    let commits = store.commit_count();
    let now = net.now;
    // Clearing is how a reader frees space: it must work on a full store,
    // and must never leave a cleared mark over bytes no later clear drops.
    assert!(net.node(A).clear(b, 1, now).unwrap());
    assert_eq!(store.commit_count(), commits + 1, "one commit");
    assert!(
        store.used_bytes() + 100 < before,
        "{} of {before}",
        store.used_bytes()
    );
    assert_eq!(
        read(&mut net, A, Mailbox::Unread),
        vec![(0, message(0)), (2, message(2))]
    );
    let now = net.now;
    assert_eq!(
        net.node(A).get(b, 1, now, Timestamp::EPOCH).unwrap(),
        Fetch::Cleared
    );
    assert!(!net.node(A).clear(b, 1, now).unwrap());
}

#[test]
fn a_block_whose_record_vanished_from_the_store_is_reported_as_damage_not_skipped() {
    let (mut net, a, b) = pair_with(3);
    // What a damaged LMDB page can do without an error of its own: a
    // record gone from under its key.
    let store = net.stores[A].clone();
    let key = peermq::feed::block_key(&FeedDescriptor::queue(b, a).id(), 1);
    let mut txn = Txn::begin(&store).unwrap();
    txn.delete(Table::Blocks, &key);
    txn.commit().unwrap();
    let err = net
        .node(A)
        .read(Mailbox::Unread, None, 10, Timestamp::EPOCH)
        .unwrap_err();
    assert!(
        matches!(err, NodeError::Feed(FeedError::Corrupt { seq: 1, .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("restore"), "{err}");
    let now = net.now;
    let err = net.node(A).get(b, 1, now, Timestamp::EPOCH).unwrap_err();
    assert!(matches!(err, NodeError::Feed(FeedError::Corrupt { .. })));
}

/// A node on LMDB in `dir` holding `n` messages from another.
fn lmdb_node_holding(dir: &Path, n: u64) {
    let now = Instant::ZERO;
    let mut a = Node::open(
        MemStore::new(),
        Config::default(),
        Entropy::deterministic(1),
        now,
    )
    .expect("open");
    let mut b = Node::open(
        LmdbStore::open(dir).expect("open store"),
        Config::default(),
        Entropy::deterministic(2),
        now,
    )
    .expect("open");
    b.add_peer(a.id()).unwrap();
    let msgs: Vec<Vec<u8>> = (0..n).map(message).collect();
    a.send_batch(b.id(), &msgs, now).unwrap();
    let ac = a.connect(b.id(), now);
    let bc = b.accept(now);
    pump_pair((&mut a, ac), (&mut b, bc), now).unwrap();
    let read = b
        .read(Mailbox::Unread, None, usize::MAX, Timestamp::EPOCH)
        .unwrap();
    assert_eq!(read.len() as u64, n);
}

/// The bytes of `data.mdb` in `dir` up to its last page in use (the store
/// keeps a sparse tail of zeros past it).
fn data_file(dir: &Path) -> Vec<u8> {
    let page = 4096;
    let mut data = std::fs::read(dir.join("data.mdb")).unwrap();
    let used = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    data.truncate(used.div_ceil(page) * page);
    data
}

/// Opens the node in `dir` and reads everything, as a node restarting on
/// a damaged disk would: the records, or the first error.
fn open_and_read(dir: &Path, options: LmdbOptions) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let store = LmdbStore::open_with(dir, options).map_err(|e| format!("open store: {e}"))?;
    let mut node = Node::open(
        store,
        Config::default(),
        Entropy::deterministic(2),
        Instant::ZERO,
    )
    .map_err(|e| format!("open node: {e}"))?;
    let records = node
        .read(Mailbox::Unread, None, usize::MAX, Timestamp::EPOCH)
        .map_err(|e| format!("read: {e}"))?;
    Ok(records.into_iter().map(|r| (r.seq, r.data)).collect())
}

#[test]
fn a_truncated_data_file_is_refused_at_open_with_an_error_naming_it() {
    let base = tempfile::tempdir().unwrap();
    lmdb_node_holding(base.path(), 1000);
    let data = data_file(base.path());
    let page = 4096;
    assert!(data.len() > 20 * page, "{} bytes", data.len());
    // Cut anywhere past the two meta pages: reading a page past the end
    // through the map would kill the process with SIGBUS.
    for keep in [2 * page, 3 * page + 100, data.len() / 2, data.len() - page] {
        for sync in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("data.mdb"), &data[..keep]).unwrap();
            let options = LmdbOptions {
                sync,
                ..LmdbOptions::default()
            };
            let err = LmdbStore::open_with(dir.path(), options).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, StoreError::Corrupted(_)), "{keep}: {err:?}");
            assert!(
                text.contains("data.mdb") && text.contains("truncated"),
                "{keep}: {text}"
            );
        }
    }
    // Into the meta pages: not an LMDB file any more.
    for keep in [100, page + 10] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.mdb"), &data[..keep]).unwrap();
        let err = LmdbStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted(_)), "{keep}: {err:?}");
        assert!(err.to_string().contains("data.mdb"), "{err}");
    }
}

#[test]
fn a_damaged_page_of_the_data_file_is_an_error_never_wrong_or_missing_records() {
    let base = tempfile::tempdir().unwrap();
    let n = 1000;
    lmdb_node_holding(base.path(), n);
    let data = data_file(base.path());
    let page = 4096;
    let want: Vec<(u64, Vec<u8>)> = (0..n).map(|s| (s, message(s))).collect();
    let mut errors = 0;
    // Each page in turn overwritten with garbage, or with a few bytes
    // flipped in its middle (a torn write, a bad sector).
    for p in 0..data.len() / page {
        for flip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = data.clone();
            let at = &mut bytes[p * page..(p + 1) * page];
            if flip {
                at[1000..1100].iter_mut().for_each(|b| *b ^= 0x5a);
            } else {
                at.iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b = (i * 7 + p) as u8);
            }
            std::fs::write(dir.path().join("data.mdb"), &bytes).unwrap();
            let outcome =
                std::panic::catch_unwind(|| open_and_read(dir.path(), LmdbOptions::default()));
            match outcome {
                Err(_) => panic!("page {p} (flip: {flip}): a panic"),
                Ok(Ok(records)) => assert!(
                    records == want,
                    "page {p} (flip: {flip}): {} records read as good, {} right",
                    records.len(),
                    records.iter().filter(|r| want.contains(r)).count()
                ),
                Ok(Err(e)) => {
                    errors += 1;
                    // LMDB's own findings name the file; ours name the
                    // feed and block.
                    assert!(e.contains("data.mdb") || e.contains("seq"), "page {p}: {e}");
                    assert!(e.contains("restore"), "page {p}: {e}");
                }
            }
        }
    }
    assert!(errors > data.len() / page / 2, "{errors} errors");
    // Either meta page damaged: refused at open.
    for p in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = data.clone();
        bytes[p * page + 16..p * page + 64].fill(0xee);
        std::fs::write(dir.path().join("data.mdb"), &bytes).unwrap();
        let err = open_and_read(dir.path(), LmdbOptions::default()).unwrap_err();
        assert!(
            err.starts_with("open store") && err.contains("data.mdb"),
            "{err}"
        );
    }
}

/// A small tmpfs mounted on a fresh temporary directory, unmounted when
/// dropped (even when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one of `size` (as `mount -o size=` takes it), or says why
    /// this machine does not allow it.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            // Its first line: the skip is reported in one.
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(err
                .lines()
                .next()
                .unwrap_or("mount failed")
                .trim()
                .to_string());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler`, up to the last byte.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x55u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&[0x55]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it open: detach it now, freed when
            // the last user goes.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[test]
fn a_full_disk_fails_sends_clearly_keeps_reads_and_resumes_when_space_returns() {
    let fs = match Tmpfs::mount("2M") {
        Ok(fs) => fs,
        Err(why) => {
            println!("skipped: cannot mount a small tmpfs to fill ({why}); run as root to test a full disk");
            return;
        }
    };
    let now = Instant::ZERO;
    let dir = fs.path().join("node");
    let mut b = Node::open(
        LmdbStore::open(&dir).unwrap(),
        Config::default(),
        Entropy::deterministic(2),
        now,
    )
    .unwrap();
    let mut a = Node::open(
        MemStore::new(),
        Config::default(),
        Entropy::deterministic(1),
        now,
    )
    .unwrap();
    let to = a.id();
    for i in 0..10 {
        b.send(to, &message(i), now).unwrap();
    }
    let filler = fs.fill();
    // LMDB reuses freed pages, so a few small commits may still fit in
    // what the file holds: send until the disk refuses.
    let big = |i: u64| message(i).repeat(200);
    let mut sent = 10;
    let err = loop {
        match b.send(to, &big(sent), now) {
            Ok(seq) => {
                assert_eq!(seq, sent);
                sent += 1;
                assert!(sent < 100, "the disk never filled up");
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            NodeError::Feed(FeedError::Store(StoreError::DiskFull { .. }))
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("no space left") && text.contains(&dir.display().to_string()),
        "{text}"
    );
    assert!(text.contains("Free disk space"), "{text}");
    // Reads still work.
    assert_eq!(b.status().unwrap()[0].sent, sent);
    std::fs::remove_file(filler).unwrap();
    // Space is back: the same store, without a restart, takes the send.
    assert_eq!(b.send(to, &big(sent), now).unwrap(), sent);
    sent += 1;
    a.add_peer(b.id()).unwrap();
    let bc = b.connect(to, now);
    let ac = a.accept(now);
    pump_pair((&mut b, bc), (&mut a, ac), now).unwrap();
    let got = a
        .read(Mailbox::Unread, None, usize::MAX, Timestamp::EPOCH)
        .unwrap();
    let want: Vec<Vec<u8>> = (0..sent)
        .map(|i| if i < 10 { message(i) } else { big(i) })
        .collect();
    assert_eq!(got.into_iter().map(|r| r.data).collect::<Vec<_>>(), want);
    drop(b);
    drop(fs);
}
