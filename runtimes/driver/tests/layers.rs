//! The crate's modules form layers: each imports only the modules declared
//! before it in `src/lib.rs`. Read as text, the way a reviewer would check
//! it by hand: every `crate::name` and `super::name` path in a module's
//! files (tests and comments aside) must name a module further up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The top-level modules, in the order `lib.rs` declares them.
fn layers(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_string())
        })
        .collect()
}

/// Every `.rs` file of module `name`: `name.rs`, or all of `name/`.
fn files(src: &Path, name: &str) -> Vec<PathBuf> {
    let single = src.join(format!("{name}.rs"));
    if single.exists() {
        return vec![single];
    }
    let mut out = Vec::new();
    let mut dirs = vec![src.join(name)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read a module directory") {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The code of a file without its unit tests and comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers following `prefix` in `text`.
fn paths_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .filter(|(i, _)| {
            // Not the tail of a longer path such as `$crate::`.
            !text[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
        })
        .map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = layers(&src);
    assert!(
        order.len() >= 8,
        "lib.rs declares the layers: found only {order:?}"
    );
    let rank: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut wrong = Vec::new();
    for (i, module) in order.iter().enumerate() {
        for file in files(&src, module) {
            let text = code(&std::fs::read_to_string(&file).expect("read a source file"));
            let top_level = file.parent() == Some(src.as_path());
            let mut used = paths_after(&text, "crate::");
            if top_level {
                // In `name.rs`, `super::` is the crate root.
                used.extend(paths_after(&text, "super::"));
            }
            for u in used {
                if rank.get(u).is_some_and(|&r| r > i) {
                    wrong.push(format!(
                        "{} imports `{u}`, a layer above `{module}`",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
