//! The identity's secret never leaves the data directory: drives the real
//! `peermq` binary through a realistic flow with every log on
//! (`RUST_LOG=trace`), then reads each node's secret from its data
//! directory and looks for it, in every encoding it could be printed in, in
//! everything the commands wrote and every other file they left. Also: the
//! data directory is created private, and one open to others is warned
//! about with the fix.

#![cfg(unix)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use base64::Engine;

/// How long any one expected line may take (the machine may be busy).
const LINE_TIMEOUT: Duration = Duration::from_secs(40);

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

    /// `peermq -d NODE ARGS`, logging everything to stderr.
    fn command(&self, node: &str, args: &[&str]) -> Command {
        self.command_in(&self.dir(node), args)
    }

    /// `peermq -d DIR ARGS`, logging everything to stderr.
    fn command_in(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_peermq"));
        cmd.arg("-d")
            .arg(dir)
            .args(args)
            .env("PEERMQ_DISCOVERY_DIR", self.dir("discovery"))
            .env("RUST_LOG", "trace")
            .env_remove("PEERMQ_DATADIR")
            .env_remove("PEERMQ_TRANSPORT")
            .env_remove("PEERMQ_DHT")
            .env_remove("PEERMQ_BOOTSTRAP")
            .env_remove("PEERMQ_RELAY")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a command that must succeed, keeping all it wrote.
    fn run(&self, node: &str, args: &[&str], seen: &mut Vec<u8>) -> String {
        let out: Output = self
            .command(node, args)
            .output()
            .expect("run the peermq binary");
        seen.extend_from_slice(&out.stdout);
        seen.extend_from_slice(&out.stderr);
        assert!(
            out.status.success(),
            "peermq {args:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
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
        let stdout = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                all.extend_from_slice(line.as_bytes());
                all.push(b'\n');
                let _ = tx.send(line);
            }
            all
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stderr.read_to_end(&mut all);
            all
        });
        Running {
            what: format!("{node} {args:?}"),
            child,
            lines,
            output: Some((stdout, stderr)),
        }
    }
}

/// A long-running command.
struct Running {
    what: String,
    child: Child,
    lines: Receiver<String>,
    /// The threads collecting its stdout and its stderr.
    output: Option<(Collector, Collector)>,
}

/// A thread collecting all a stream carries.
type Collector = std::thread::JoinHandle<Vec<u8>>;

impl Running {
    /// Waits for a line containing `needle`.
    fn line_with(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("{} printed no line with {needle:?}: {e}", self.what),
            }
        }
    }

    /// Ctrl-C, then everything it wrote on stdout and stderr.
    fn stop(mut self) -> Vec<u8> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + LINE_TIMEOUT;
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        let (out, err) = self.output.take().expect("not stopped yet");
        let mut all = out.join().unwrap_or_default();
        all.extend(err.join().unwrap_or_default());
        all
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The identity's secret, read from the data directory (`data.mdb`).
fn secret_of(dir: &Path) -> [u8; 32] {
    let store = peermq::LmdbStore::open(dir).expect("open the data directory");
    let node = peermq::Node::open(
        store,
        peermq::Config::default(),
        peermq::Entropy::deterministic(0),
        peermq::Instant::ZERO,
    )
    .expect("open the node");
    node.keypair().to_bytes()
}

/// Every way the secret could be written out: raw, hex either case, the
/// base64 alphabets with and without padding, Rust's `Debug` of the array
/// and of a slice (decimal and hex), and the first half of each (a
/// truncated print is a leak too).
fn encodings(secret: &[u8; 32]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (what, bytes) in [("whole", &secret[..]), ("first half", &secret[..16])] {
        let mut add = |name: &str, text: Vec<u8>| out.push((format!("{name} ({what})"), text));
        add("raw bytes", bytes.to_vec());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        add("HEX", hex.to_uppercase().into_bytes());
        add("hex", hex.into_bytes());
        for (name, engine) in [
            ("base64", &base64::engine::general_purpose::STANDARD),
            (
                "base64 unpadded",
                &base64::engine::general_purpose::STANDARD_NO_PAD,
            ),
            ("base64url", &base64::engine::general_purpose::URL_SAFE),
            (
                "base64url unpadded",
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ),
        ] {
            // A padded encoding of the first half ends in `==`: search
            // without it, as a longer text could go on instead.
            let text = engine.encode(bytes);
            add(name, text.trim_end_matches('=').as_bytes().to_vec());
        }
        add("Debug", format!("{bytes:?}").into_bytes());
        add("Debug hex", format!("{bytes:x?}").into_bytes());
        add("Debug HEX", format!("{bytes:X?}").into_bytes());
        add("Debug pretty", format!("{bytes:#?}").into_bytes());
    }
    out
}

/// The encoding in which `secret` appears in `haystack`, if any.
fn find(secret: &[u8; 32], haystack: &[u8]) -> Option<String> {
    encodings(secret)
        .into_iter()
        .find(|(_, needle)| {
            haystack
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
        })
        .map(|(name, _)| name)
}

fn assert_absent(secret: &[u8; 32], haystack: &[u8], where_: &str) {
    if let Some(name) = find(secret, haystack) {
        panic!("the secret, as {name}, appears in {where_}");
    }
}

#[test]
fn the_search_finds_the_secret_in_every_encoding() {
    let secret: [u8; 32] = std::array::from_fn(|i| (i * 37 + 11) as u8);
    for (name, needle) in encodings(&secret) {
        let mut text = b"2024-01-01 TRACE peermq: key=".to_vec();
        text.extend_from_slice(&needle);
        text.extend_from_slice(b" more\n");
        assert!(find(&secret, &text).is_some(), "{name} is not found");
    }
    assert_eq!(find(&secret, b"nothing here"), None);
}

/// Every file under `dir` (no links followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn the_secret_is_never_printed_or_logged_even_at_trace_level() {
    let s = Sandbox::new();
    let mut seen = Vec::new();
    let a = s.run("a", &["id"], &mut seen).trim().to_string();
    let b = s.run("b", &["id"], &mut seen).trim().to_string();
    s.run("a", &["add-peer", &b], &mut seen);
    s.run("b", &["add-peer", &a], &mut seen);
    s.run("b", &["send", "--to", &a, "--message", "first"], &mut seen);
    s.run("a", &["peers"], &mut seen);

    let mut listen = s.spawn("a", &["listen"]);
    let mut connect = s.spawn("b", &["connect", &a]);
    listen.line_with(&format!("MESSAGE {b}@0 first"));
    connect.line_with(&format!("ACK {a}@0"));
    // Another process on a running node's directory, both ways.
    s.run("b", &["send", "--to", &a, "--message", "second"], &mut seen);
    listen.line_with(&format!("MESSAGE {b}@1 second"));
    s.run("a", &["send", "--to", &b, "--message", "back"], &mut seen);
    connect.line_with(&format!("MESSAGE {a}@0 back"));
    s.run("a", &["status"], &mut seen);
    s.run("b", &["status"], &mut seen);
    seen.extend(connect.stop());
    seen.extend(listen.stop());
    s.run("a", &["read", "--archived"], &mut seen);
    s.run("a", &["read", "--archived", "--json"], &mut seen);
    s.run("a", &["prune"], &mut seen);

    let log = String::from_utf8_lossy(&seen);
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the logs were on: {log}"
    );
    assert!(log.contains(&a) && log.contains(&b), "ids are printed");

    for node in ["a", "b"] {
        let secret = secret_of(&s.dir(node));
        assert_absent(&secret, &seen, &format!("the output (node {node})"));
        // Nor is it in any file but data.mdb: the address book, the live
        // connection files, the other node's files, discovery entries.
        for file in files_under(s.tmp.path()) {
            if file == s.dir(node).join("data.mdb") {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert_absent(&secret, &bytes, &file.display().to_string());
        }
    }
}

#[test]
fn a_data_directory_is_created_private_and_an_open_one_is_warned_about() {
    let s = Sandbox::new();
    let mut seen = Vec::new();
    let dir = s.dir("nested").join("a");
    let id = {
        let out = s
            .command_in(&dir, &["id"])
            .env_remove("RUST_LOG")
            .output()
            .expect("run peermq");
        assert!(out.status.success());
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for p in [dir.clone(), s.dir("nested"), dir.join("data.mdb")] {
        assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
    }

    // Opened by hand to the group: every command warns, naming the fix,
    // and still works.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = s
        .command_in(&dir, &["id"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run peermq");
    seen.extend_from_slice(&out.stderr);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), id);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("warning: ")
            && stderr.contains(&format!("chmod 700 {}", dir.display()))
            && stderr.contains("secret key"),
        "{stderr}"
    );
    // So does the key file's own mode.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(dir.join("data.mdb"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = s
        .command_in(&dir, &["id"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run peermq");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("chmod 600 {}", dir.join("data.mdb").display())),
        "{stderr}"
    );
    // The warning is logged too (RUST_LOG=warn), without the secret.
    let out = s
        .command_in(&dir, &["id"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run peermq");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains("WARN"), "{stderr}");
    seen.extend_from_slice(stderr.as_bytes());
    assert_absent(&secret_of(&dir), &seen, "the warnings");
}
