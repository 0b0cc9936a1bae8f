//! The render memo: for each access group, the digest of everything its file is rendered from
//! (see [`crate::publisher::render::Renderer::input_digest`]) and the SHA-256, people and keys of
//! the file that input rendered to. A run whose inputs did not change finds every group's
//! SHA-256 here instead of hashing every group's whole text: that text is the size of the bucket
//! (90 MB for 10,000 people, five times that for 50,000), and hashing it was most of a quiet run.
//!
//! Each entry is a fact about a pure function ("this input renders to this file"), so an entry
//! from an older run, from `plan` or from `publish` is as good as any other, and a missing or
//! refused memo only costs the hashing. What changes rendering is in the input digest (every
//! member's name, chain and key lines, in order, and the group's name) or in [`FORMAT`], which
//! is bumped whenever the rendering code changes what it writes. Groups with `options`, or with
//! a member whose home could not be read (lines carried from the published file), have no input
//! digest and are always hashed.
//!
//! Trust: the memo lives beside the lock file with the directory and homes states, and like
//! them it is believed only as this user's private file with a valid checksum and the right
//! format, deployment and keyhole version; whoever can write that directory can already change
//! what the publisher reads.
//!
//! File format: one header line `keyhole-render-memo <format> <sha256 of the rest>`, then the
//! JSON body. Written with `crate::private_file`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::publisher::render::Digest;

/// The memo's file name, in the lock file's directory.
pub const MEMO_FILE: &str = "render-memo";

/// The memo's format, and with it the rendering's: bump it whenever rendering writes other bytes
/// for the same input.
pub const FORMAT: u32 = 1;

const MAGIC: &str = "keyhole-render-memo";

/// The largest memo read (5,000 access groups take about 1 MB).
const LIMIT: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    /// The deployment and keyhole version it was written by.
    binding: String,
    groups: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    input: String,
    sha256: String,
    users: usize,
    keys: usize,
}

/// The memo as loaded, and the entries this run found or made.
#[derive(Debug)]
pub struct RenderMemo {
    path: PathBuf,
    binding: String,
    loaded: BTreeMap<String, Entry>,
    next: BTreeMap<String, Entry>,
}

/// Where the memo lives: beside `lock_file`.
pub fn path_beside(lock_file: &Path) -> PathBuf {
    crate::private_file::beside(lock_file, MEMO_FILE)
}

impl RenderMemo {
    /// The memo at `path`; one that is missing or cannot be believed is empty (and logged).
    pub fn load(path: PathBuf, deployment: &str) -> RenderMemo {
        let binding = format!("{deployment} keyhole {}", env!("CARGO_PKG_VERSION"));
        let loaded = match crate::private_file::read_private(&path, LIMIT) {
            Ok(bytes) => match decode(&bytes, &binding) {
                Ok(groups) => groups,
                Err(why) => {
                    tracing::info!(
                        "the render memo {} is not used: {why}; every group is hashed",
                        path.display()
                    );
                    BTreeMap::new()
                }
            },
            Err(crate::private_file::Unread::Missing) => BTreeMap::new(),
            Err(crate::private_file::Unread::Refused(why)) => {
                tracing::warn!(
                    "the render memo {} is not used: {why}; every group is hashed",
                    path.display()
                );
                BTreeMap::new()
            }
        };
        RenderMemo {
            path,
            binding,
            next: loaded.clone(),
            loaded,
        }
    }

    /// What `group` rendered to the last time its input was `input`.
    pub fn get(&self, group: &str, input: &str) -> Option<Digest> {
        self.next
            .get(group)
            .filter(|entry| entry.input == input)
            .map(|entry| Digest {
                sha256: entry.sha256.clone(),
                users: entry.users,
                keys: entry.keys,
            })
    }

    /// Records that `group`'s `input` renders to `digest`.
    pub fn put(&mut self, group: &str, input: String, digest: &Digest) {
        self.next.insert(
            group.to_owned(),
            Entry {
                input,
                sha256: digest.sha256.clone(),
                users: digest.users,
                keys: digest.keys,
            },
        );
    }

    /// Forgets every group `keep` says no to (groups no longer in the policy).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.next.retain(|group, _| keep(group));
    }

    /// Writes the memo when this run changed it. A memo that cannot be written costs the next
    /// run the hashing; it is logged, never an error.
    pub fn store(&self) {
        if self.next == self.loaded {
            return;
        }
        let body = Body {
            binding: self.binding.clone(),
            groups: self.next.clone(),
        };
        let written = serde_json::to_vec(&body)
            .map_err(std::io::Error::other)
            .and_then(|body| {
                let header = crate::private_file::checksummed(MAGIC, FORMAT, &body);
                crate::private_file::write_atomically(&self.path, &[header.as_bytes(), &body])
            });
        if let Err(error) = written {
            tracing::warn!(
                "could not write the render memo {}: {error}; the next run hashes every group",
                self.path.display()
            );
        }
    }
}

/// The entries of a memo file, if it is one of this format, binding and checksum.
fn decode(bytes: &[u8], binding: &str) -> Result<BTreeMap<String, Entry>, String> {
    let body = crate::private_file::checked_body(bytes, MAGIC, FORMAT, "render memo")?;
    let body: Body =
        serde_json::from_slice(body).map_err(|error| format!("it is damaged ({error})"))?;
    if body.binding != binding {
        return Err(format!(
            "it was written for {:?}, not {binding:?}",
            body.binding
        ));
    }
    Ok(body.groups)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn digest(sha256: &str) -> Digest {
        Digest {
            sha256: sha256.to_owned(),
            users: 2,
            keys: 3,
        }
    }

    #[test]
    fn an_entry_answers_only_for_its_group_and_input_and_survives_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("publish.lock"));
        let mut memo = RenderMemo::load(path.clone(), "s3://bucket/ssh/");
        memo.put("ag-web", "input-1".to_owned(), &digest("aaa"));
        memo.store();
        let memo = RenderMemo::load(path, "s3://bucket/ssh/");
        assert_eq!(memo.get("ag-web", "input-1"), Some(digest("aaa")));
        assert_eq!(memo.get("ag-web", "input-2"), None);
        assert_eq!(memo.get("ag-db", "input-1"), None);
    }

    #[test]
    fn a_damaged_foreign_or_shared_memo_is_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("publish.lock"));
        let mut memo = RenderMemo::load(path.clone(), "s3://bucket/ssh/");
        memo.put("ag-web", "input-1".to_owned(), &digest("aaa"));
        memo.store();

        // Another deployment.
        let other = RenderMemo::load(path.clone(), "s3://other/ssh/");
        assert_eq!(other.get("ag-web", "input-1"), None);

        // One byte of the body changed: the checksum fails.
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8(bytes).unwrap().replace("aaa", "bbb");
        std::fs::write(&path, text).unwrap();
        let damaged = RenderMemo::load(path.clone(), "s3://bucket/ssh/");
        assert_eq!(damaged.get("ag-web", "input-1"), None);

        // Readable by others.
        memo.loaded.clear();
        memo.store();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let shared = RenderMemo::load(path, "s3://bucket/ssh/");
        assert_eq!(shared.get("ag-web", "input-1"), None);
    }
}
