//! The publisher's head: its own record of the last index it committed or verified, kept beside
//! its lock file (`{lock_file's dir}/head.json`), never in the bucket.
//!
//! Anything in the bucket can be put back by whoever can write to it: an older `index.json`
//! carries a valid signature as long as it has not expired. The head is what lets the publisher
//! tell the current index from a replayed one: it refuses a base index with a lower generation
//! than the head's, or the same generation with other bytes (`published::Published::read`), and
//! carries lines for an unreadable home only out of the index the head names. The operator's way
//! past it is explicit (`publish --accept-index SHA256`, `--min-generation N`) and logged.
//!
//! The head also remembers since when each member's home has been continuously unreadable, so
//! that carrying their published lines stops after `homes.max_carry`.
//!
//! Written with temp file + fsync + rename (0600), so a crash leaves the old head or the new one,
//! never half of either. A head that exists but cannot be read or parsed stops the run (naming
//! the file): forgetting it silently would reopen the replay it exists to stop. A missing head is
//! a first run (or a new publisher host): the verified index in the bucket is trusted once and
//! becomes the head.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The head file's name, in the lock file's directory.
pub const HEAD_FILE: &str = "head.json";

/// What the publisher last committed or verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The index's generation.
    pub generation: u64,
    /// Hex SHA-256 of the index envelope's bytes (`index.json` as stored).
    pub sha256: String,
    /// Per member whose home could not be read, when it was first found unreadable (RFC 3339),
    /// continuously since: a readable home removes the entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown_since: BTreeMap<String, String>,
}

/// Where the head lives: beside `lock_file`.
pub fn path_beside(lock_file: &Path) -> PathBuf {
    crate::private_file::beside(lock_file, HEAD_FILE)
}

impl Head {
    /// The head at `path`; `None` when there is none yet.
    pub fn load(path: &Path) -> anyhow::Result<Option<Head>> {
        let text = match fs::read(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "reading the publisher's head {} (its record of the last index it committed)",
                    path.display()
                )));
            }
        };
        serde_json::from_slice(&text).map(Some).with_context(|| {
            format!(
                "{}: not a keyhole head file; restore it, or remove it to trust the bucket's \
                 signed index once",
                path.display()
            )
        })
    }

    /// Writes the head to `path` atomically, readable by its owner only.
    pub fn store(&self, path: &Path) -> anyhow::Result<()> {
        let write = || -> std::io::Result<()> {
            let mut json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
            json.push(b'\n');
            crate::private_file::write_atomically(path, &[&json])
        };
        write().with_context(|| format!("writing the publisher's head {}", path.display()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_head_round_trips_privately_and_a_damaged_one_stops_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("publish.lock"));
        assert_eq!(path, dir.path().join("head.json"));
        assert_eq!(Head::load(&path).unwrap(), None);
        let head = Head {
            generation: 7,
            sha256: "ab".repeat(32),
            unknown_since: BTreeMap::from([("carol".into(), "2026-01-01T00:00:00Z".into())]),
        };
        head.store(&path).unwrap();
        assert_eq!(Head::load(&path).unwrap(), Some(head));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("head.json.tmp").exists());
        fs::write(&path, "{\"generation\": ").unwrap();
        let error = Head::load(&path).unwrap_err();
        assert!(format!("{error:#}").contains("not a keyhole head file"));
    }
}
