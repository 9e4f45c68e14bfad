//! The binary's output contract, which scripts depend on.

use std::process::Command;

fn sim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_peermq-sim"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn one_seed_ends_with_ok_and_its_trace() {
    let (code, out, _) = sim(&["--seed", "5"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("seed 5: options: scenario=mix"), "{out}");
    let last = out.lines().last().unwrap_or_default();
    let trace = last.strip_prefix("seed 5: ok trace=").expect(last);
    assert_eq!(trace.len(), 64);
    assert!(out.contains("node-seconds per wall second"), "{out}");
    // And the same again.
    let (_, again, _) = sim(&["--seed", "5"]);
    assert_eq!(again.lines().last(), Some(last));
}

#[test]
fn many_seeds_end_with_the_tally() {
    let (code, out, _) = sim(&["--seeds", "3", "--start", "10", "--duration", "5"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().last(), Some("3 passed, 0 failed"), "{out}");
}

#[test]
fn options_are_honoured_and_printed() {
    let (code, out, _) = sim(&[
        "--seed",
        "2",
        "--nodes",
        "4",
        "--duration",
        "5",
        "--faults",
        "none",
        "--scenario",
        "mix",
    ]);
    assert_eq!(code, 0, "{out}");
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.contains("nodes=4") && first.contains("chaos=5s") && first.contains("faults=none"),
        "{first}"
    );
}

#[test]
fn malformed_arguments_give_one_line_and_exit_2() {
    for args in [
        vec!["--seed", "banana"],
        vec!["--seeds", "-3"],
        vec!["--seed", "1", "--scenario", "nope"],
        vec!["--seed", "1", "--faults", "extreme"],
        vec!["--seed", "1", "--nodes", "0"],
        vec!["--seed", "1", "--duration", "0"],
        vec!["--seed", "1", "--seeds", "2"],
        vec!["--start", "4"],
        vec![],
        vec!["--frobnicate"],
    ] {
        let (code, out, err) = sim(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn record_frames_writes_whole_frame_streams_and_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("peermq-sim-frames-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("a UTF-8 temp dir");
    let (code, out, _) = sim(&["--seed", "5", "--record-frames", d]);
    assert_eq!(code, 0, "{out}");
    let (_, plain, _) = sim(&["--seed", "5"]);
    assert_eq!(out.lines().last(), plain.lines().last(), "same trace");
    let files: Vec<_> = std::fs::read_dir(&dir).expect("the dir").collect();
    assert!(!files.is_empty(), "streams were written");
    for f in files {
        let bytes = std::fs::read(f.expect("an entry").path()).expect("a file");
        assert!(!bytes.is_empty() && bytes.len() <= 64 * 1024);
        // Whole frames: `len: u16 BE | len bytes`, to the last byte.
        let mut at = 0;
        while at < bytes.len() {
            at += 2 + u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize;
        }
        assert_eq!(at, bytes.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
