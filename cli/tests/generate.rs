//! `completions SHELL` and `man` of both programs: what `cargo install
//! --path cli` users generate their shell completions and man pages with.

use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("PEERMQ_DATADIR")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the binary")
}

/// stdout of a command that must succeed silently on stderr.
fn ok(bin: &str, args: &[&str]) -> String {
    let out = run(bin, args);
    assert!(
        out.status.success(),
        "{args:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{args:?} wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The one error line of a usage mistake: exit code 2, nothing on stdout,
/// no panic.
fn usage_error(bin: &str, args: &[&str]) -> String {
    let out = run(bin, args);
    assert_eq!(out.status.code(), Some(2), "usage error for {args:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout for {args:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The commands `--help` lists, `help` aside.
fn commands(bin: &str) -> Vec<String> {
    let help = ok(bin, &["--help"]);
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    assert!(!names.is_empty(), "--help lists the commands: {help}");
    names
}

fn assert_man_page(page: &str, name: &str) {
    assert!(page.contains(&format!(".TH {name} 1")), "{page}");
    assert!(page.contains(".SH NAME"), "{page}");
    assert!(page.contains(".SH SYNOPSIS"), "{page}");
}

const PEERMQ: &str = env!("CARGO_BIN_EXE_peermq");
const HYPEM: &str = env!("CARGO_BIN_EXE_hypem");

#[test]
fn peermq_completions_name_every_command_in_every_shell() {
    let names = commands(PEERMQ);
    for must in ["send", "listen", "connect", "work", "completions", "man"] {
        assert!(names.iter().any(|n| n == must), "{must} in {names:?}");
    }
    let bash = ok(PEERMQ, &["completions", "bash"]);
    assert!(bash.contains("_peermq()"), "{bash}");
    let top = bash
        .lines()
        .find(|l| l.trim_start().starts_with("opts=\"") && l.contains(" send "))
        .expect("the top-level completions");
    for name in &names {
        assert!(
            top.split(['"', ' ']).any(|w| w == name),
            "bash completes `{name}`: {top}"
        );
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let script = ok(PEERMQ, &["completions", shell]);
        assert!(
            script.contains("peermq") && script.contains("add-peer"),
            "{shell}: {script}"
        );
    }
}

#[test]
fn peermq_man_page_and_pages() {
    let page = ok(PEERMQ, &["man"]);
    assert_man_page(&page, "peermq");
    assert!(page.contains("peermq\\-send(1)"), "{page}");

    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("man1");
    let listed = ok(PEERMQ, &["man", "--dir", dir.to_str().unwrap()]);
    let send = dir.join("peermq-send.1");
    assert!(
        listed.lines().any(|l| l == send.to_str().unwrap()),
        "{listed}"
    );
    assert_man_page(
        &std::fs::read_to_string(dir.join("peermq.1")).unwrap(),
        "peermq",
    );
    assert_man_page(&std::fs::read_to_string(&send).unwrap(), "peermq-send");
    assert!(!dir.join("peermq-help.1").exists(), "help has no page");

    // A directory that cannot be made: one line, exit code 1.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    for bin in [PEERMQ, HYPEM] {
        let out = run(bin, &["man", "--dir", file.join("man1").to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: cannot write the man pages into"),
            "{err}"
        );
    }
}

#[test]
fn hypem_completions_and_man_page() {
    assert_eq!(commands(HYPEM), ["completions", "man"]);
    let bash = ok(HYPEM, &["completions", "bash"]);
    assert!(bash.contains("_hypem()"), "{bash}");
    for word in ["completions", "man", "--db", "--target-port", "--no-repl"] {
        assert!(bash.contains(word), "bash completes `{word}`");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let script = ok(HYPEM, &["completions", shell]);
        assert!(script.contains("hypem"), "{shell}: {script}");
    }
    let page = ok(HYPEM, &["man"]);
    assert_man_page(&page, "hypem");
    assert!(page.contains("event emitter"), "{page}");

    // A command only as the first word: after --db, `man` is a schema file.
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let db = tmp.path().join("db");
    let out = run(HYPEM, &["--db", db.to_str().unwrap(), "man"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schema man"), "{err}");
}

#[test]
fn an_unknown_shell_is_a_usage_error_naming_the_shells() {
    for bin in [PEERMQ, HYPEM] {
        let e = usage_error(bin, &["completions", "tcsh"]);
        assert!(e.contains("invalid value 'tcsh'"), "{e}");
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            assert!(e.contains(shell), "{e}");
        }
        let e = usage_error(bin, &["completions"]);
        assert!(e.contains("<SHELL>"), "{e}");
    }
}
