//! A disk that really fills up, under a running node: a small tmpfs holds
//! its data directory. Skipped, with one line saying why, where the
//! machine does not let the test mount one (it needs root).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_lite::StreamExt;
use peermq::{Config, Mailbox, StoreError};
use peermq_tokio::{Mq, MqError, TokioRuntime};

/// A tmpfs of a few MiB on a fresh temporary directory, unmounted when
/// dropped, even when the test fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
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

    /// Writes a file until the file system has no byte left.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
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
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn message(i: u64) -> Vec<u8> {
    format!("message {i:06} ").repeat(1000).into_bytes()
}

fn is_disk_full(e: &MqError) -> bool {
    matches!(e, MqError::Node(n) if matches!(n.store_error(), Some(StoreError::DiskFull { .. })))
}

#[test]
fn a_node_whose_disk_fills_up_refuses_sends_clearly_keeps_serving_reads_and_resumes_when_space_returns(
) {
    let fs = match Tmpfs::mount("3M") {
        Ok(fs) => fs,
        Err(why) => {
            println!("skipped: cannot mount a small tmpfs to fill ({why}); run as root to test a full disk");
            return;
        }
    };
    let other = tempfile::tempdir().unwrap();
    common::runtime().block_on(async {
        let config = Config {
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(500),
            ..Config::default()
        };
        let open = |dir: PathBuf| {
            Mq::builder(dir)
                .config(config.clone())
                .discovery_dir(other.path().join("discovery"))
                .open(TokioRuntime::new())
                .unwrap()
        };
        // A's data directory is on the small disk; B's is not.
        let a = open(fs.path().join("a"));
        let b = open(other.path().join("b"));
        let (ida, idb) = (a.id().await, b.id().await);
        a.add_peer(idb, None).await.unwrap();
        b.add_peer(ida, None).await.unwrap();
        a.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        b.send(ida, "from b").await.unwrap();
        let mut sent = 0;
        while sent < 3 {
            a.send(idb, message(sent)).await.unwrap();
            sent += 1;
        }
        b.connect(ida).await.unwrap();
        let mut inbox = a.read_stream(Mailbox::Unread, true);
        let first = tokio::time::timeout(Duration::from_secs(20), inbox.next())
            .await
            .expect("B's message arrived")
            .expect("a record")
            .expect("read");
        assert_eq!(first.data, b"from b");

        let filler = fs.fill();
        // LMDB reuses freed pages, so a few commits may still fit in what
        // its file holds: send until the disk refuses.
        let err = loop {
            match a.send(idb, message(sent)).await {
                Ok(seq) => {
                    assert_eq!(seq, sent);
                    sent += 1;
                    assert!(sent < 200, "the disk never filled up");
                }
                Err(e) => break e,
            }
        };
        assert!(is_disk_full(&err), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("no space left") && text.contains("Free disk space"),
            "{text}"
        );
        assert!(
            text.contains(&fs.path().join("a").display().to_string()),
            "{text}"
        );
        // A full disk is a refusal, not a crash: the node still serves
        // reads, and its status.
        assert_eq!(a.get(idb, 0).await.unwrap(), Some(b"from b".to_vec()));
        let status = a.peers().await.unwrap();
        let of_b = status.iter().find(|p| p.peer == idb).expect("B");
        assert_eq!(of_b.sent, sent);

        std::fs::remove_file(filler).unwrap();
        // Space is back: the same running node takes the send.
        assert_eq!(a.send(idb, message(sent)).await.unwrap(), sent);
        sent += 1;
        // Everything A sent, before and after, reaches B intact.
        let mut got = Vec::new();
        let mut stream = b.read_stream(Mailbox::Unread, true);
        while (got.len() as u64) < sent {
            let r = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("A's messages arrive")
                .expect("a record")
                .expect("read");
            assert_eq!(r.from, ida);
            got.push((r.seq, r.data));
        }
        let want: Vec<(u64, Vec<u8>)> = (0..sent).map(|i| (i, message(i))).collect();
        assert_eq!(got, want);
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    });
    drop(fs);
}
