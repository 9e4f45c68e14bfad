//! What both programs print about themselves for installation: a shell's
//! completion script (clap_complete) and the man pages (clap_mangen), both
//! generated from the same clap definition that parses the command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Prints the completion script of `cmd` for `shell` to standard output.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    // Into a buffer first: the generators panic on a failed write, and
    // `peermq completions bash | head` must end quietly.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    print(&script)
}

/// Prints the man page of `cmd`, in roff, to standard output (`peermq man >
/// peermq.1`); with `dir`, writes there the pages of `cmd` and of each of
/// its commands (`peermq.1`, `peermq-send.1`, ..., the ones the first
/// page's SUBCOMMANDS section names) and prints their paths.
pub fn man(cmd: clap::Command, dir: Option<&Path>) -> std::io::Result<()> {
    // `help` is the --help flag again: no page of its own.
    let mut cmd = cmd.disable_help_subcommand(true);
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        return print(&page);
    };
    // Built, each command knows its full name (`peermq-send`).
    cmd.build();
    let mut written = Vec::new();
    std::fs::create_dir_all(dir)
        .and_then(|()| write_pages(&cmd, dir, &mut written))
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot write the man pages into {}: {e}", dir.display()),
            )
        })?;
    let mut list = String::new();
    for path in written {
        list.push_str(&path.display().to_string());
        list.push('\n');
    }
    print(list.as_bytes())
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

fn print(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}
