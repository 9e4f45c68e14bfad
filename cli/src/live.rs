//! The connections of a running `listen` or `connect`, for `peermq status`,
//! which runs in another process: each running command keeps a file
//! `live/PID` in the data directory, one JSON line per connection, rewritten
//! when its connections change, and removed when it stops. A file whose
//! process no longer runs (killed) is ignored and removed by the next
//! reader.

use std::path::{Path, PathBuf};

use peermq_tokio::{process_alive, ConnectionInfo, PeerId};
use serde_json::{json, Value};

/// Where a running command's file lives.
fn dir(datadir: &Path) -> PathBuf {
    datadir.join("live")
}

/// This process's file; removed on drop.
pub struct LiveFile {
    path: PathBuf,
    last: Option<Vec<ConnectionInfo>>,
}

impl LiveFile {
    /// The file of this process in `datadir` (written at the first
    /// [`LiveFile::update`]).
    pub fn new(datadir: &Path) -> Self {
        LiveFile {
            path: dir(datadir).join(std::process::id().to_string()),
            last: None,
        }
    }

    /// Records `conns` as this process's connections, if they changed.
    /// Best effort: a failure costs `status` its view, nothing else.
    pub fn update(&mut self, conns: Vec<ConnectionInfo>) {
        if self.last.as_ref() == Some(&conns) {
            return;
        }
        let text: String = conns
            .iter()
            .map(|c| {
                json!({
                    "peer": c.peer.to_string(),
                    "inbound": c.inbound,
                    "route": c.route.to_string(),
                })
                .to_string()
                    + "\n"
            })
            .collect();
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::create_dir_all(dir_of(&self.path))
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot record live connections for `status`");
        }
        self.last = Some(conns);
    }
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(path)
}

impl Drop for LiveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection of a running command, as `status` shows it.
pub struct Live {
    /// The peer.
    pub peer: PeerId,
    /// How it runs, in words: `direct over tcp to 127.0.0.1:4000`.
    pub route: String,
    /// `inbound` or `outbound`.
    pub way: &'static str,
    /// The process holding it.
    pub pid: u32,
}

/// The connections of every running command on `datadir`.
pub fn read_all(datadir: &Path) -> Vec<Live> {
    let Ok(entries) = std::fs::read_dir(dir(datadir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        out.extend(text.lines().filter_map(|l| parse(l, pid)));
    }
    out.sort_by_key(|c| (c.peer, c.pid));
    out
}

/// One line of a file; `None` for anything else (a file cut short).
fn parse(line: &str, pid: u32) -> Option<Live> {
    let v: Value = serde_json::from_str(line).ok()?;
    Some(Live {
        peer: v["peer"].as_str()?.parse().ok()?,
        route: v["route"].as_str()?.to_string(),
        way: if v["inbound"].as_bool()? {
            "inbound"
        } else {
            "outbound"
        },
        pid,
    })
}
