//! The data directory's files, which hold the node's secret key.
//!
//! The identity's secret sits in the LMDB store, `data.mdb`, and nowhere
//! else: no file of its own, never printed or logged. So the directory is
//! created private to its user (mode `0700` on Unix, in one `mkdir`, with no
//! moment where it is open to others), and LMDB creates `data.mdb` and
//! `lock.mdb` with mode `0600` in the `open` call itself. A directory or
//! `data.mdb` that grants its group or others any access (made by hand, or
//! by an older version) is not changed behind the user's back, but each open
//! warns about it ([`permission_warnings`]), naming the path and the fix.

use std::io;
use std::path::Path;

/// The LMDB file that holds the identity's secret (with everything else).
pub const KEY_FILE: &str = "data.mdb";

/// Creates `dir` (and missing parents) private to this user if it does not
/// exist: mode `0700` on Unix, given to `mkdir` itself. An existing
/// directory is left as it is ([`permission_warnings`] says what is wrong
/// with it).
pub fn create_private(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// What is wrong with the permissions of data directory `dir` and of the
/// file holding its secret key, one sentence each naming the path and the
/// command that fixes it; empty when nothing is (and always, off Unix).
pub fn permission_warnings(dir: &Path) -> Vec<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| m.permissions().mode() & 0o7777)
        };
        let mut warnings = Vec::new();
        if let Some(m) = mode(dir).filter(|m| m & 0o077 != 0) {
            warnings.push(format!(
                "the data directory {} is open to other users (mode {m:04o}) and holds this \
                 node's secret key; make it private with `chmod 700 {}`",
                dir.display(),
                shell_word(dir)
            ));
        }
        let key = dir.join(KEY_FILE);
        if let Some(m) = mode(&key).filter(|m| m & 0o077 != 0) {
            warnings.push(format!(
                "{} holds this node's secret key but is open to other users (mode {m:04o}); \
                 make it private with `chmod 600 {}`",
                key.display(),
                shell_word(&key)
            ));
        }
        warnings
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Vec::new()
    }
}

/// `path` as one word for a shell command: quoted when it needs to be.
#[cfg(unix)]
fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c));
    if plain {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Creates the data directory privately and logs (warns) what is wrong
/// with its permissions: what every open of an LMDB-backed node does first.
pub(crate) fn prepare(dir: &Path) -> io::Result<()> {
    create_private(dir)?;
    for warning in permission_warnings(dir) {
        tracing::warn!(dir = %dir.display(), "{warning}");
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn fresh() -> PathBuf {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).unwrap();
        std::env::temp_dir().join(format!("peermq-datadir-test-{}", u64::from_le_bytes(seed)))
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_data_directory_is_private_and_draws_no_warning() {
        let root = fresh();
        let dir = root.join("nested").join("data");
        prepare(&dir).unwrap();
        // Whatever the umask, nothing is granted to group or others.
        assert_eq!(mode(&dir) & 0o077, 0, "{:o}", mode(&dir));
        assert_eq!(mode(&root.join("nested")) & 0o077, 0);
        assert!(permission_warnings(&dir).is_empty());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn an_open_directory_or_key_file_is_warned_about_with_the_fix() {
        let dir = fresh();
        create_private(&dir).unwrap();
        std::fs::write(dir.join(KEY_FILE), b"").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let warnings = permission_warnings(&dir);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains(&format!("chmod 700 {}", dir.display())),
            "{}",
            warnings[0]
        );
        assert!(warnings[0].contains("0750"), "{}", warnings[0]);
        let key = dir.join(KEY_FILE);
        assert!(
            warnings[1].contains(&format!("chmod 600 {}", key.display())),
            "{}",
            warnings[1]
        );
        // An existing directory is not changed behind the user's back.
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o750);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(permission_warnings(&dir).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_path_with_spaces_is_quoted_in_the_fix() {
        assert_eq!(shell_word(Path::new("/tmp/a b")), "'/tmp/a b'");
        assert_eq!(shell_word(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
        assert_eq!(shell_word(Path::new("/tmp/a-b_c.d")), "/tmp/a-b_c.d");
    }
}
