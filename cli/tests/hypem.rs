//! `hypem` end to end: two real processes on loopback in `--no-repl` mode,
//! with temporary data directories.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

/// Guards against a hang; no test depends on how fast things are.
const WAIT: Duration = Duration::from_secs(30);

/// A copy of `examples/example.proto`, which lives at the repository root,
/// outside this crate: the published crate's tests read no file beyond it.
const SCHEMA: &str = r#"syntax = "proto3";

message Hello {
  string from = 1;
  string message = 2;
}

message userAdded {
  int32 id = 1;
  string username = 2;
}

message userRemoved {
  int32 id = 1;
}
"#;

/// The schema file in `dir`, written if missing.
fn schema(dir: &Path) -> PathBuf {
    let path = dir.join("example.proto");
    if !path.exists() {
        std::fs::write(&path, SCHEMA).expect("write the schema");
    }
    path
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
    err: Receiver<String>,
}

fn lines(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn hypem(db: &Path, extra: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hypem"))
        .arg("--no-repl")
        .arg("--db")
        .arg(db)
        .args(extra)
        .arg(schema(db.parent().expect("a parent")))
        // Nodes of one test find each other by key here, and only here.
        .env(
            "PEERMQ_DISCOVERY_DIR",
            db.parent().expect("a parent").join("discovery"),
        )
        .env_remove("PEERMQ_TRANSPORT")
        .env_remove("PEERMQ_DHT")
        .env_remove("PEERMQ_RELAY")
        .env_remove("PEERMQ_BOOTSTRAP")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hypem");
    let out = lines(child.stdout.take().expect("stdout"));
    let err = lines(child.stderr.take().expect("stderr"));
    Proc {
        stdin: child.stdin.take(),
        child,
        out,
        err,
    }
}

impl Proc {
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to hypem");
        stdin.flush().expect("flush");
    }

    fn next_out(&self) -> String {
        self.out.recv_timeout(WAIT).expect("a line on stdout")
    }

    fn next_err(&self) -> String {
        self.err.recv_timeout(WAIT).expect("a line on stderr")
    }

    /// The next stdout line that is not an EventPeer announcement.
    fn next_event(&self) -> String {
        loop {
            let l = self.next_out();
            if !l.starts_with(r#"{"name":"EventPeer""#) {
                return l;
            }
        }
    }

    /// Stops it as Ctrl-C or a service manager would, and waits for it.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait for hypem");
        assert!(exit.success(), "hypem exits cleanly on SIGTERM: {exit:?}");
    }
}

const HELLO: &str = r#"{"name":"Hello","payload":{"from":"Matteo","message":""}}"#;
const ADDED: &str = r#"{"name":"userAdded","payload":{"id":1,"username":"user"}}"#;
const REMOVED: &str = r#"{"name":"userRemoved","payload":{"id":1}}"#;

#[test]
fn two_processes_exchange_events_resume_and_replay() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (db_a, db_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = hypem(&db_a, &["--port", "0"]);
    let listening = a.next_err();
    let port = listening
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .expect("`listening on PORT HOST`")
        .to_string();
    assert!(listening.ends_with(" 127.0.0.1"), "{listening}");
    let peer = a.next_out();
    assert!(
        peer.starts_with(r#"{"name":"EventPeer","payload":{"id":""#)
            && peer.contains(&format!(
                r#""addresses":[{{"ip":"127.0.0.1","port":{port}}}]"#
            )),
        "{peer}"
    );

    let mut b = hypem(&db_b, &["--target-port", &port]);
    assert_eq!(b.next_err(), format!("connected to 127.0.0.1 {port}"));
    assert_eq!(b.next_out(), peer, "B receives A's EventPeer");

    // An event crosses, with the defaults filled in.
    a.send(r#"{"name":"Hello","payload":{"from":"Matteo"}}"#);
    assert_eq!(a.next_event(), HELLO);
    assert_eq!(b.next_event(), HELLO);

    // A bad line gets one error line naming the field; B keeps going.
    b.send(r#"{"name":"Hello","payload":{"from":3}}"#);
    let err = b.next_err();
    assert!(
        err.starts_with("error: line 1: ") && err.contains("`from`"),
        "{err}"
    );
    b.send("not json");
    assert!(b.next_err().starts_with("error: line 2: not JSON"));
    b.send(ADDED);
    assert_eq!(b.next_event(), ADDED);
    assert_eq!(a.next_event(), ADDED);
    b.stop();

    // While B is away A emits; B restarts without a target, reconnects to
    // its stored peer, and prints only what is new.
    a.send(REMOVED);
    assert_eq!(a.next_event(), REMOVED);
    let b = hypem(&db_b, &[]);
    assert_eq!(b.next_out(), REMOVED, "nothing old is printed again");
    b.stop();

    // --from-scratch replays everything, in delivery order.
    let b = hypem(&db_b, &["--from-scratch"]);
    let replay: Vec<String> = (0..4).map(|_| b.next_out()).collect();
    assert_eq!(
        replay,
        vec![peer.clone(), HELLO.into(), ADDED.into(), REMOVED.into()]
    );
    b.stop();
    a.stop();
}

#[test]
fn two_processes_over_iroh_meet_by_key() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (db_a, db_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let iroh = ["--transport", "iroh", "--relay", "none"];
    let mut a = hypem(&db_a, &[&["--port", "0"][..], &iroh].concat());
    assert!(a.next_err().starts_with("listening on "));
    let peer = a.next_out();
    let id = peer
        .strip_prefix(r#"{"name":"EventPeer","payload":{"id":""#)
        .and_then(|r| r.get(..64))
        .expect("A's EventPeer names its key")
        .to_string();

    let b = hypem(&db_b, &[&["--target-key", &id][..], &iroh].concat());
    assert_eq!(b.next_err(), format!("connected to {id}"));
    assert_eq!(b.next_out(), peer, "B receives A's EventPeer");
    a.send(r#"{"name":"Hello","payload":{"from":"Matteo"}}"#);
    assert_eq!(a.next_event(), HELLO);
    assert_eq!(b.next_event(), HELLO);
    b.stop();
    a.stop();
}

#[test]
fn usage_and_runtime_errors_are_one_line_with_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_hypem"))
        .output()
        .expect("run hypem");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--db"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_hypem"))
        .args([
            "--db",
            "x",
            "--transport",
            "iroh",
            "--relay",
            "nonsense",
            "s.proto",
        ])
        .output()
        .expect("run hypem");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a relay URL"), "{err}");

    let tmp = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_hypem"))
        .arg("--db")
        .arg(tmp.path().join("db"))
        .arg(tmp.path().join("missing.proto"))
        .stdin(Stdio::null())
        .output()
        .expect("run hypem");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing.proto"), "{err}");
}
