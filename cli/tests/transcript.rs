//! Drives the real `peermq` binary through the original README's
//! walk-through: two data directories on one machine, no address given
//! anywhere, Ctrl-C (SIGINT) on `connect` and a reconnect.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long any one expected line may take. Generous: the machine may be
/// busy with other builds; in practice lines come within a second or two.
const LINE_TIMEOUT: Duration = Duration::from_secs(25);

/// Temporary data directories and a private discovery directory, so that
/// tests running in parallel never find each other's nodes.
struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox {
            tmp: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn command(&self, node: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_peermq"));
        cmd.arg("-d")
            .arg(self.dir(node))
            .args(args)
            .env("PEERMQ_DISCOVERY_DIR", self.dir("discovery"))
            .env_remove("RUST_LOG")
            .env_remove("PEERMQ_DATADIR")
            .env_remove("PEERMQ_TRANSPORT")
            .env_remove("PEERMQ_DHT")
            .env_remove("PEERMQ_BOOTSTRAP")
            .env_remove("PEERMQ_RELAY")
            .stdin(Stdio::null());
        cmd
    }

    fn output(&self, node: &str, args: &[&str]) -> Output {
        self.command(node, args)
            .output()
            .expect("run the peermq binary")
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.output(node, args);
        assert!(
            out.status.success(),
            "peermq {args:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "peermq {args:?} wrote to stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn id(&self, node: &str) -> String {
        let out = self.ok(node, &["id"]);
        let id = out.trim_end_matches('\n').to_string();
        assert_eq!(out, format!("{id}\n"), "id prints exactly one line");
        assert_eq!(id.len(), 64, "an id is 64 hex characters: {id:?}");
        assert!(id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        id
    }

    fn send(&self, node: &str, to: &str, message: &str) {
        assert_eq!(
            self.ok(node, &["send", "--to", to, "--message", message]),
            "",
            "send prints nothing"
        );
    }

    fn spawn(&self, node: &str, args: &[&str]) -> Running {
        let mut child = self
            .command(node, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the peermq binary");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
            text
        });
        Running {
            what: format!("{node} {args:?}"),
            child,
            lines,
            stderr: Some(stderr),
        }
    }
}

/// A long-running command, its stdout read line by line.
struct Running {
    what: String,
    child: Child,
    lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// The next line it prints, waiting for it.
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{} printed no line within {LINE_TIMEOUT:?}", self.what)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                let stderr = self.take_stderr();
                panic!(
                    "{} ended ({status:?}) instead of printing a line; stderr: {stderr}",
                    self.what
                )
            }
        }
    }

    fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Ctrl-C: sends SIGINT, waits for the exit, and returns its status,
    /// the lines it printed after the last one read, and its stderr.
    fn interrupt(mut self) -> (ExitStatus, Vec<String>, String) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT failed");
        let deadline = Instant::now() + LINE_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {LINE_TIMEOUT:?} of Ctrl-C",
                self.what
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at end of file, which the exit caused.
        let rest: Vec<String> = self.lines.iter().collect();
        let stderr = self.take_stderr();
        (status, rest, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed assertion must not leave processes behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_clean_stop(what: &str, (status, rest, stderr): &(ExitStatus, Vec<String>, String)) {
    assert_eq!(
        status.code(),
        Some(0),
        "{what} stopped by Ctrl-C exits 0 (stderr: {stderr})"
    );
    assert!(
        rest.is_empty(),
        "{what} printed more than expected: {rest:?}"
    );
    assert!(stderr.is_empty(), "{what} wrote to stderr: {stderr}");
}

#[test]
fn the_original_walk_through_with_ctrl_c_and_reconnect() {
    let s = Sandbox::new();
    let a = s.id("a");
    let b = s.id("b");
    assert_ne!(a, b);
    assert_eq!(s.id("a"), a, "the identity is kept");

    // A allows B to connect; B queues three messages while offline.
    assert_eq!(s.ok("a", &["add-peer", &b]), "");
    for m in ["wow", "cool", "hiiiiiiii"] {
        s.send("b", &a, m);
    }

    // B connects first: A is not listening yet, so it waits for A.
    let mut connect = s.spawn("b", &["connect", &a]);
    let mut listen = s.spawn("a", &["listen"]);
    for (seq, m) in ["wow", "cool", "hiiiiiiii"].iter().enumerate() {
        assert_eq!(listen.line(), format!("MESSAGE {b}@{seq} {m}"));
    }
    for seq in 0..3 {
        assert_eq!(connect.line(), format!("ACK {a}@{seq}"));
    }

    // 1. Ctrl-C on B's connect: a clean exit.
    assert_clean_stop("connect", &connect.interrupt());

    // 2. More messages while disconnected.
    s.send("b", &a, "beep");
    s.send("b", &a, "boop");

    // 3. Reconnect; 4. A's still-running listen prints the new ones only.
    let mut connect = s.spawn("b", &["connect", &a]);
    assert_eq!(listen.line(), format!("MESSAGE {b}@3 beep"));
    assert_eq!(listen.line(), format!("MESSAGE {b}@4 boop"));
    assert_eq!(connect.line(), format!("ACK {a}@3"));
    assert_eq!(connect.line(), format!("ACK {a}@4"));
    assert_clean_stop("connect", &connect.interrupt());
    assert_clean_stop("listen", &listen.interrupt());

    // Everything was archived as it was printed.
    assert_eq!(s.ok("a", &["read"]), "");
    let archived = s.ok("a", &["read", "--archived"]);
    let expected: String = ["wow", "cool", "hiiiiiiii", "beep", "boop"]
        .iter()
        .enumerate()
        .map(|(seq, m)| format!("MESSAGE {b}@{seq} {m}\n"))
        .collect();
    assert_eq!(archived, expected);

    // Started again, listen prints nothing old: the first line it prints is
    // a message sent after the restart.
    let mut listen = s.spawn("a", &["listen"]);
    s.send("b", &a, "fresh");
    let mut connect = s.spawn("b", &["connect", &a]);
    assert_eq!(listen.line(), format!("MESSAGE {b}@5 fresh"));
    assert_eq!(connect.line(), format!("ACK {a}@5"));
    assert_clean_stop("connect", &connect.interrupt());
    assert_clean_stop("listen", &listen.interrupt());

    let status = s.ok("b", &["status"]);
    assert!(
        status.contains("6 sent, 6 acknowledged"),
        "B's status shows every message acknowledged: {status}"
    );
}

#[test]
fn messages_flow_both_ways_on_the_connection_b_dialed() {
    let s = Sandbox::new();
    let a = s.id("a");
    let b = s.id("b");
    s.ok("a", &["add-peer", &b]);
    let mut listen = s.spawn("a", &["listen", "--json"]);
    let mut connect = s.spawn("b", &["connect", &a, "--json"]);

    // `send` runs in another process on a data directory a running node
    // holds open; the running node sends it.
    s.send("b", &a, "ping");
    let got: serde_json::Value = serde_json::from_str(&listen.line()).expect("ndjson");
    assert_eq!(
        got,
        serde_json::json!({"from": b, "seq": 0, "data": "ping"})
    );
    let ack: serde_json::Value = serde_json::from_str(&connect.line()).expect("ndjson");
    assert_eq!(ack, serde_json::json!({"to": a, "seq": 0, "acked": true}));
    let status = s.ok("a", &["status"]);
    assert!(
        status.contains("connection:     direct over tcp to 127.0.0.1:")
            && status.contains("inbound (process "),
        "{status}"
    );

    // A answers B, which never authorized A: B dialed, so it accepts.
    let mut send = s
        .command("a", &["send", "--to", &b])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start send");
    std::io::Write::write_all(
        &mut send.stdin.take().expect("piped stdin"),
        &[b'p', 0xff, b'g'],
    )
    .expect("write the message");
    assert!(send.wait().expect("send ends").success());
    let got: serde_json::Value = serde_json::from_str(&connect.line()).expect("ndjson");
    assert_eq!(
        got,
        serde_json::json!({"from": a, "seq": 0, "data": "cP9n", "encoding": "base64"})
    );
    let ack: serde_json::Value = serde_json::from_str(&listen.line()).expect("ndjson");
    assert_eq!(ack, serde_json::json!({"to": b, "seq": 0, "acked": true}));

    // The connection is lost when A stops; B's running connect dials again
    // once A listens anew.
    assert_clean_stop("listen", &listen.interrupt());
    s.send("b", &a, "after the restart");
    let mut listen = s.spawn("a", &["listen", "--json"]);
    let got: serde_json::Value = serde_json::from_str(&listen.line()).expect("ndjson");
    assert_eq!(
        got,
        serde_json::json!({"from": b, "seq": 1, "data": "after the restart"})
    );
    let ack: serde_json::Value = serde_json::from_str(&connect.line()).expect("ndjson");
    assert_eq!(ack, serde_json::json!({"to": a, "seq": 1, "acked": true}));

    assert_clean_stop("connect", &connect.interrupt());
    assert_clean_stop("listen", &listen.interrupt());
    // B's connect archived what it printed.
    assert_eq!(s.ok("b", &["read"]), "");
    assert_eq!(
        s.ok("b", &["read", "--archived", "--json"]),
        format!("{{\"from\":\"{a}\",\"seq\":0,\"data\":\"cP9n\",\"encoding\":\"base64\"}}\n")
    );
}

#[test]
fn the_walk_through_runs_over_iroh() {
    let s = Sandbox::new();
    let a = s.id("a");
    let b = s.id("b");
    s.ok("a", &["add-peer", &b]);
    let iroh = ["--transport", "iroh", "--relay", "none"];
    s.send("b", &a, "over quic");
    let mut listen = s.spawn("a", &[&["listen"][..], &iroh].concat());
    let mut connect = s.spawn("b", &[&["connect", &a][..], &iroh].concat());
    assert_eq!(listen.line(), format!("MESSAGE {b}@0 over quic"));
    assert_eq!(connect.line(), format!("ACK {a}@0"));
    s.send("b", &a, "and again");
    assert_eq!(listen.line(), format!("MESSAGE {b}@1 and again"));
    assert_eq!(connect.line(), format!("ACK {a}@1"));
    // `status`, another process, shows how the running connect's
    // connection runs.
    let deadline = Instant::now() + LINE_TIMEOUT;
    let shown = loop {
        let status = s.ok("b", &["status"]);
        if let Some(line) = status.lines().find(|l| l.contains("connection:")) {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no connection in status: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(shown.contains("direct over iroh to 127.0.0.1:"), "{shown}");
    assert!(shown.contains("outbound"), "{shown}");
    assert_clean_stop("connect", &connect.interrupt());
    // Once it stopped, nothing is shown as connected.
    assert!(!s.ok("b", &["status"]).contains("connection:"));
    assert_clean_stop("listen", &listen.interrupt());
}

#[test]
fn a_key_not_found_within_the_wait_is_one_line_and_loses_nothing() {
    let s = Sandbox::new();
    let a = s.id("a");
    let b = s.id("b");
    s.send("b", &a, "still here");
    let out = s.output("b", &["connect", &a, "--wait", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let e = one_error_line(&out);
    assert!(e.contains(&a) && e.contains("within 1 s"), "{e}");
    assert!(e.contains("this machine's discovery directory"), "{e}");
    assert!(
        s.ok("b", &["status"]).contains("1 sent, 0 acknowledged"),
        "the message stays queued"
    );
    // It goes out on a later connect.
    s.ok("a", &["add-peer", &b]);
    let mut listen = s.spawn("a", &["listen"]);
    let mut connect = s.spawn("b", &["connect", &a, "--wait", "20"]);
    assert_eq!(listen.line(), format!("MESSAGE {b}@0 still here"));
    assert_eq!(connect.line(), format!("ACK {a}@0"));
    assert_clean_stop("connect", &connect.interrupt());
    assert_clean_stop("listen", &listen.interrupt());
}

/// The one line a failing command writes, checked to be exactly one line
/// with no panic or backtrace.
fn one_error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", out.stdout);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn mistakes_get_one_line_and_the_right_exit_code() {
    let s = Sandbox::new();
    let usage = |args: &[&str]| {
        let out = s.output("a", args);
        assert_eq!(out.status.code(), Some(2), "usage error for {args:?}");
        one_error_line(&out)
    };
    let e = usage(&["add-peer", "1f2e"]);
    assert!(e.contains("a peer id is 64 hex characters"), "{e}");
    let e = usage(&["send", "--to", &"z".repeat(64), "-m", "x"]);
    assert!(e.contains("not a hex digit"), "{e}");
    let e = usage(&["frobnicate"]);
    assert!(e.contains("unrecognized subcommand 'frobnicate'"), "{e}");
    let e = usage(&["connect", &"ab".repeat(32), "--addr", "nowhere"]);
    assert!(e.contains("HOST:PORT"), "{e}");
    let e = usage(&["listen", "--dht", "--bootstrap", "nowhere"]);
    assert!(e.contains("HOST:PORT"), "{e}");
    let e = usage(&["listen", "--transport", "iroh", "--relay", "relay.example"]);
    assert!(e.contains("not a relay URL"), "{e}");
    let e = usage(&["connect", &"ab".repeat(32), "--wait", "soon"]);
    assert!(e.contains("--wait"), "{e}");
    let e = usage(&["listen", "--transport", "pigeon"]);
    assert!(e.contains("tcp") && e.contains("iroh"), "{e}");
    let missing = s.dir("no-such.pem");
    let e = usage(&["listen", "--relay-ca", missing.to_str().unwrap()]);
    assert!(e.contains("cannot read"), "{e}");
    let not_pem = s.dir("not.pem");
    std::fs::write(&not_pem, "a note, no certificate\n").unwrap();
    let e = usage(&["listen", "--relay-ca", not_pem.to_str().unwrap()]);
    assert!(e.contains("no certificate"), "{e}");
    let out = s
        .command("a", &["id"])
        .env("PEERMQ_DHT", "maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("--dht"));
    let out = s
        .command("a", &["id"])
        .env("PEERMQ_DHT", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "PEERMQ_DHT=1 turns the DHT on");

    let runtime = |dir: &Path, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_peermq"))
            .arg("-d")
            .arg(dir)
            .args(args)
            .env("PEERMQ_DISCOVERY_DIR", s.dir("discovery"))
            .env_remove("RUST_LOG")
            .output()
            .expect("run peermq");
        assert_eq!(out.status.code(), Some(1), "runtime error for {args:?}");
        one_error_line(&out)
    };
    let file = s.dir("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let e = runtime(&file, &["id"]);
    assert!(e.contains("is not a directory"), "{e}");

    let corrupt = s.dir("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("data.mdb"), vec![0x5a; 64 << 10]).unwrap();
    let e = runtime(&corrupt, &["status"]);
    assert!(e.contains("corrupted"), "{e}");

    let a = s.id("a");
    let e = runtime(&s.dir("a"), &["send", "--to", &a, "-m", "me"]);
    assert!(e.contains("own id"), "{e}");
    let e = runtime(&s.dir("a"), &["read", "--category", "later"]);
    assert!(e.contains("no category `later`"), "{e}");
    let b = s.id("b");
    let e = runtime(&s.dir("a"), &["release", &b, "0", "7"]);
    assert!(e.contains("no longer held"), "{e}");
    let e = runtime(&s.dir("a"), &["move", &b, "0", "dead"]);
    assert!(e.contains("has not arrived"), "{e}");
}

#[test]
fn the_demo_shows_messages_and_acks_both_ways() {
    let out = Command::new(env!("CARGO_BIN_EXE_peermq"))
        .arg("demo")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}");
    let count = |prefix: &str| stdout.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("A: MESSAGE "), 3, "{stdout}");
    assert_eq!(count("B: ACK "), 3, "{stdout}");
    assert_eq!(count("B: MESSAGE "), 2, "{stdout}");
    assert_eq!(count("A: ACK "), 2, "{stdout}");
    assert!(stdout.contains("@2 hiiiiiiii\n"), "{stdout}");
}

#[test]
fn an_address_given_to_add_peer_is_used_by_a_later_connect() {
    let s = Sandbox::new();
    let a = s.id("a");
    let b = s.id("b");
    s.ok("a", &["add-peer", &b]);
    let port = free_port_outside_the_ephemeral_range();
    let mut listen = s.spawn("a", &["listen", "--port", &port.to_string()]);
    let addr = format!("127.0.0.1:{port}");
    s.ok("b", &["add-peer", &a, "--addr", &addr]);
    assert_eq!(s.ok("b", &["peers"]), format!("{a} {addr}\n"));
    s.send("b", &a, "over tcp");
    // B looks in another discovery directory, where A is not: only the
    // remembered address can lead it to A.
    let mut connect = s
        .command("b", &["connect", &a])
        .env("PEERMQ_DISCOVERY_DIR", s.dir("elsewhere"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start connect");
    assert_eq!(listen.line(), format!("MESSAGE {b}@0 over tcp"));
    let _ = connect.kill();
    let _ = connect.wait();
    assert_clean_stop("listen", &listen.interrupt());

    s.ok("b", &["remove-peer", &a]);
    assert_eq!(s.ok("b", &["peers"]), "");
}

/// A port free a moment ago, below Linux's ephemeral range (32768 and up):
/// one the OS just handed out for `:0` may be handed out again, as the source
/// port of another test's connection, before `listen` binds it; one below
/// that range is only ever taken by a process asking for it.
fn free_port_outside_the_ephemeral_range() -> u16 {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (0..10_000u16)
        .map(|i| 20_000 + (start - 20_000 + i) % 10_000)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port between 20000 and 30000")
}

/// `peermq work`: jobs arrive while it runs, each runs once with the
/// message on stdin; a worker killed with SIGKILL mid-job loses nothing:
/// restarted, it runs the killed job again once its lease lapses.
#[test]
fn work_runs_every_job_and_a_killed_worker_loses_none() {
    let s = Sandbox::new();
    let (a, b) = (s.id("a"), s.id("b"));
    s.ok("a", &["add-peer", &b]);
    for i in 0..4 {
        s.send("b", &a, &format!("job {i}"));
    }
    let log = s.dir("jobs.log");
    // Job 1 hangs on its first delivery: that is where the worker dies.
    let script = format!(
        "read -r body; echo \"start $PEERMQ_SEQ $PEERMQ_DELIVERY $body\" >> {log}; \
         if [ $PEERMQ_SEQ = 1 ] && [ $PEERMQ_DELIVERY = 1 ]; then exec sleep 30; fi; \
         echo \"end $PEERMQ_SEQ\" >> {log}",
        log = log.display()
    );
    let work_args = [
        "work", "-j", "2", "--lease", "1s", "--", "sh", "-c", &script,
    ];
    let mut worker = s.spawn("a", &work_args);
    let mut connect = s.spawn("b", &["connect", &a]);
    let mut done: Vec<String> = (0..3).map(|_| worker.line()).collect();
    done.sort();
    assert_eq!(
        done,
        [0, 2, 3]
            .iter()
            .map(|i| format!("DONE {b}@{i} delivery=1"))
            .collect::<Vec<_>>()
    );
    for i in 0..4 {
        assert_eq!(connect.line(), format!("ACK {a}@{i}"));
    }
    // SIGKILL: no chance to release anything.
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    drop(worker);

    let mut worker = s.spawn("a", &work_args);
    assert_eq!(worker.line(), format!("DONE {b}@1 delivery=2"));
    assert_clean_stop("work", &worker.interrupt());
    assert_clean_stop("connect", &connect.interrupt());

    let log = std::fs::read_to_string(&log).unwrap();
    let mut starts: Vec<&str> = log.lines().filter(|l| l.starts_with("start")).collect();
    starts.sort();
    assert_eq!(
        starts,
        [
            "start 0 1 job 0",
            "start 1 1 job 1",
            "start 1 2 job 1",
            "start 2 1 job 2",
            "start 3 1 job 3"
        ],
        "each job once, the killed one twice"
    );
    let mut ends: Vec<&str> = log.lines().filter(|l| l.starts_with("end")).collect();
    ends.sort();
    assert_eq!(
        ends,
        ["end 0", "end 1", "end 2", "end 3"],
        "every job completed"
    );
    let categories = s.ok("a", &["categories"]);
    assert_eq!(categories, "unread 0 (0 taken)\narchived 4\ndead 0\n");
}

#[test]
fn a_delayed_message_waits_for_its_time_and_an_expired_one_goes_to_dead() {
    let s = Sandbox::new();
    let (a, b) = (s.id("a"), s.id("b"));
    s.ok("a", &["add-peer", &b]);
    let send = |m: &str, extra: &[&str]| {
        let args = [&["send", "--to", &a, "--message", m][..], extra].concat();
        assert_eq!(s.ok("b", &args), "");
    };
    send("stale", &["--expire-in", "500ms"]);
    send("now", &[]);
    let sent_later = std::time::Instant::now();
    send("later", &["--delay", "3s"]);
    // The expiry passes while A cannot be reached.
    std::thread::sleep(Duration::from_millis(600));

    let mut listen = s.spawn("a", &["listen"]);
    let mut connect = s.spawn("b", &["connect", &a]);
    assert_eq!(listen.line(), format!("MESSAGE {b}@1 now"));
    assert_eq!(listen.line(), format!("MESSAGE {b}@2 later"));
    assert!(
        sent_later.elapsed() >= Duration::from_secs(3),
        "delivered before its time"
    );
    for seq in 0..3 {
        assert_eq!(connect.line(), format!("ACK {a}@{seq}"));
    }
    assert_clean_stop("connect", &connect.interrupt());
    assert_clean_stop("listen", &listen.interrupt());
    assert_eq!(
        s.ok("a", &["read", "--category", "dead"]),
        format!("MESSAGE {b}@0 stale\n")
    );
    assert_eq!(
        s.ok("b", &["prune"]),
        format!("PRUNED {a} acknowledged=3 expired=0\n")
    );

    let out = s.output(
        "b",
        &[
            "send",
            "--to",
            &a,
            "-m",
            "x",
            "--delay",
            "5s",
            "--expire-in",
            "1s",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("could never be delivered"));
    let out = s.output("b", &["send", "--to", &a, "-m", "x", "--delay", "-1s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        s.ok("b", &["status"]).contains("3 sent"),
        "nothing was queued"
    );
}

#[test]
fn mail_waits_in_a_mailbox_for_a_recipient_that_starts_after_the_sender_left() {
    let s = Sandbox::new();
    let (a, m, r) = (s.id("a"), s.id("m"), s.id("r"));
    let mut mailbox = s.spawn("m", &["mailbox"]);
    // R names M (and tells it, while it runs), and expects mail from A.
    s.ok("r", &["add-peer", &a]);
    assert_eq!(s.ok("r", &["add-mailbox", &m]), "");
    // A has never met R: it is told where R's mail goes.
    s.ok("a", &["add-peer", &r, "--mailbox", &m]);
    s.send("a", &r, "first letter");
    s.send("a", &r, "second letter");
    // A runs a while, R nowhere: the mail goes to the mailbox.
    let sender = s.spawn("a", &["listen"]);
    let held = format!("HELD {a} {r} held=2 acknowledged=0 bytes=");
    while !mailbox.line().starts_with(&held) {}
    assert_clean_stop("sender's listen", &sender.interrupt());

    // R starts after A left, and collects its mail from the mailbox.
    let mut recipient = s.spawn("r", &["listen"]);
    assert_eq!(recipient.line(), format!("MESSAGE {a}@0 first letter"));
    assert_eq!(recipient.line(), format!("MESSAGE {a}@1 second letter"));
    let collected = format!("HELD {a} {r} held=2 acknowledged=2 bytes=0");
    while mailbox.line() != collected {}
    assert_clean_stop("recipient's listen", &recipient.interrupt());

    // A's next start hears of the delivery from the mailbox.
    let mut sender = s.spawn("a", &["listen"]);
    assert_eq!(sender.line(), format!("ACK {r}@0"));
    assert_eq!(sender.line(), format!("ACK {r}@1"));
    assert_clean_stop("sender's listen", &sender.interrupt());
    let status = s.ok("a", &["status"]);
    assert!(status.contains("2 sent, 2 acknowledged"), "{status}");
    assert!(
        status.contains(&format!(
            "in mailbox {m}: 0 waiting, 2 of our messages stored there"
        )),
        "{status}"
    );
    let status = s.ok("m", &["status"]);
    assert!(
        status.contains(&format!(
            "holding mail from {a} for {r}: 2 held (0 bytes), 2 acknowledged"
        )),
        "{status}"
    );
    assert_clean_stop("mailbox", &mailbox.interrupt());
}
