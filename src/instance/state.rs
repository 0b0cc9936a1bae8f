//! The instance cache's state: everything a login serves, as one directory switched atomically.
//!
//! `cache_dir/current` is a symbolic link to a `state-…` directory beside it holding
//! - `state.json` ([`Manifest`]): the generation, `not_after`, deployment and canary line of the
//!   index it was built from, when S3 last confirmed it, and per host group the file's SHA-256,
//!   its lookup root and the publisher's seal;
//! - `index`: the verified index envelope (for conditional reads, `whois`, and groups an older
//!   publisher did not seal);
//! - per host group `group-NAME` (the file) and `lookup-NAME` (its [`Lookup`] table and buckets).
//!
//! A refresh builds the next state in a new `state-…` directory and switches `current` to it with
//! one `rename` of a new link over the old one; until then logins serve the previous state, whole,
//! and a refresh that fails or is killed half-way leaves it untouched (the half-built directory is
//! removed then, or by the next refresh). The state before the current one is kept one refresh
//! longer, so a login that read `current` a moment before the switch finds its files.
//!
//! `cache_dir/generation` holds the highest index generation ever switched to; a state older than
//! it is a rollback and is not served.
//!
//! Nothing here trusts what it reads: the login path checks seals, hashes and times
//! (`instance::serve`), the refresh the index's signature.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::bucket::group_lookup::Lookup;

/// The link to the state being served.
pub const CURRENT: &str = "current";
/// The prefix of every state directory's name.
pub const STATE_PREFIX: &str = "state-";
const MANIFEST: &str = "state.json";
const INDEX: &str = "index";
/// The highest generation switched to.
pub const SEEN: &str = "generation";

/// What a state was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub generation: u64,
    #[serde(default)]
    pub deployment: Option<String>,
    #[serde(default)]
    pub not_after: Option<String>,
    /// The index object's ETag, for the next conditional read.
    pub index_etag: String,
    /// Hex SHA-256 of the cached index envelope.
    pub index_sha256: String,
    /// Unix milliseconds when S3 last confirmed this index current.
    pub confirmed_at_ms: u64,
    #[serde(default)]
    pub canary: Option<String>,
    pub groups: BTreeMap<String, GroupState>,
}

/// One host group in a state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupState {
    /// False for a host group the index does not name: it grants nothing.
    pub published: bool,
    pub sha256: String,
    /// Hex root of the group's lookup.
    pub lookup: String,
    /// The publisher's seal, as the index has it (`None`: unsigned, or an older publisher).
    #[serde(default)]
    pub seal: Option<String>,
}

impl Manifest {
    pub fn age(&self, now: SystemTime) -> Duration {
        Duration::from_millis(super::unix_millis(now).saturating_sub(self.confirmed_at_ms))
    }
}

/// The state being served.
#[derive(Debug, Clone)]
pub struct State {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl State {
    /// The state `cache_dir/current` names; `None` when there is none (never refreshed, or a
    /// cache written by a keyhole before states). A link that leaves the cache directory, or a
    /// damaged manifest, is refused.
    pub fn current(cache_dir: &Path) -> anyhow::Result<Option<State>> {
        let link = cache_dir.join(CURRENT);
        let target = match fs::read_link(&link) {
            Ok(target) => target,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(
                    anyhow::Error::new(error).context(format!("reading {}", link.display()))
                );
            }
        };
        let name = target.to_str().unwrap_or_default();
        if !name.starts_with(STATE_PREFIX) || name.contains('/') {
            bail!(
                "refusing {}: it points at {}, not at a state directory beside it",
                link.display(),
                target.display()
            );
        }
        let dir = cache_dir.join(name);
        let path = dir.join(MANIFEST);
        let bytes = fs::read(&path)
            .with_context(|| format!("reading the cache state {}", path.display()))?;
        let manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("refusing the damaged cache state {}", path.display()))?;
        Ok(Some(State { dir, manifest }))
    }

    pub fn body_path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("group-{group}"))
    }

    pub fn lookup_path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("lookup-{group}"))
    }

    /// A group's file, as cached (its hash is the caller's to check).
    pub fn body(&self, group: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.body_path(group);
        fs::read(&path).with_context(|| format!("reading the cache file {}", path.display()))
    }

    /// The cached index envelope.
    pub fn index_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let path = self.dir.join(INDEX);
        fs::read(&path).with_context(|| format!("reading the cached index {}", path.display()))
    }

    fn name(&self) -> Option<&str> {
        self.dir.file_name().and_then(|name| name.to_str())
    }
}

/// The highest generation this cache switched to (0: none recorded).
pub fn seen(cache_dir: &Path) -> u64 {
    fs::read_to_string(cache_dir.join(SEEN))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// The next state, being built in a directory of its own (removed unless [`Next::switch`]
/// succeeds).
#[derive(Debug)]
pub struct Next {
    dir: tempfile::TempDir,
}

impl Next {
    pub fn new(cache_dir: &Path) -> anyhow::Result<Next> {
        let dir = tempfile::Builder::new()
            .prefix(STATE_PREFIX)
            .tempdir_in(cache_dir)
            .with_context(|| format!("creating the next cache state in {}", cache_dir.display()))?;
        Ok(Next { dir })
    }

    /// Adds a group's file and lookup (built from `body`).
    pub fn add_group(&self, group: &str, body: &[u8], lookup: &Lookup) -> anyhow::Result<()> {
        self.write(&format!("group-{group}"), body)?;
        self.write(&format!("lookup-{group}"), &lookup.to_bytes())
    }

    /// Takes a group's file and lookup from `previous` (hard links; copies where links fail).
    pub fn reuse_group(&self, previous: &State, group: &str) -> anyhow::Result<()> {
        for (from, name) in [
            (previous.body_path(group), format!("group-{group}")),
            (previous.lookup_path(group), format!("lookup-{group}")),
        ] {
            let to = self.dir.path().join(&name);
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to)
                    .with_context(|| format!("copying {} into the next state", from.display()))?;
            }
        }
        Ok(())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.path().join(name);
        let mut file = fs::File::create(&path)
            .with_context(|| format!("writing the cache file {}", path.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("writing the cache file {}", path.display()))?;
        Ok(())
    }

    /// Writes the manifest and the index, then makes this the current state with one rename,
    /// records its generation, and removes every other state but the one it replaced.
    pub fn switch(self, manifest: &Manifest, index: &[u8]) -> anyhow::Result<()> {
        self.write(INDEX, index)?;
        self.write(MANIFEST, &serde_json::to_vec_pretty(manifest)?)?;
        let cache_dir = self
            .dir
            .path()
            .parent()
            .context("the next state has no parent directory")?
            .to_path_buf();
        let previous = State::current(&cache_dir).ok().flatten();
        let dir = self.dir.keep();
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("the next state's name is not UTF-8")?
            .to_owned();
        // Everything the state holds is on disk before the link names it.
        sync_dir(&dir);
        let staged = cache_dir.join(format!(".{CURRENT}-{name}"));
        let _ = fs::remove_file(&staged);
        std::os::unix::fs::symlink(&name, &staged)
            .with_context(|| format!("linking {}", staged.display()))?;
        if let Err(error) = fs::rename(&staged, cache_dir.join(CURRENT)) {
            let _ = fs::remove_file(&staged);
            let _ = fs::remove_dir_all(&dir);
            return Err(anyhow::Error::new(error).context("switching the cache to the next state"));
        }
        sync_dir(&cache_dir);
        let seen_path = cache_dir.join(SEEN);
        if seen(&cache_dir) < manifest.generation {
            let mut file = tempfile::NamedTempFile::new_in(&cache_dir)?;
            writeln!(file, "{}", manifest.generation)?;
            file.persist(&seen_path)
                .with_context(|| format!("writing {}", seen_path.display()))?;
        }
        let keep = [Some(name.as_str()), previous.as_ref().and_then(State::name)];
        prune(&cache_dir, &keep);
        Ok(())
    }
}

/// Removes every state directory but `keep` (and links left by a killed switch).
fn prune(cache_dir: &Path, keep: &[Option<&str>]) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(STATE_PREFIX) && !keep.contains(&Some(name)) {
            if let Err(error) = fs::remove_dir_all(entry.path()) {
                tracing::debug!("could not remove the old cache state {name}: {error}");
            }
        } else if name.starts_with(&format!(".{CURRENT}-")) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(file) = fs::File::open(dir) {
        let _ = file.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(generation: u64) -> Manifest {
        Manifest {
            generation,
            deployment: None,
            not_after: None,
            index_etag: "\"e\"".into(),
            index_sha256: "00".into(),
            confirmed_at_ms: 1,
            canary: None,
            groups: BTreeMap::new(),
        }
    }

    #[test]
    fn a_switch_replaces_the_state_whole_and_keeps_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        assert!(State::current(dir.path()).unwrap().is_none());
        let next = Next::new(dir.path()).unwrap();
        next.add_group("web", b"a\n", &Lookup::build(b"a\n"))
            .unwrap();
        next.switch(&manifest(1), b"{}").unwrap();
        let first = State::current(dir.path()).unwrap().unwrap();
        assert_eq!(first.body("web").unwrap(), b"a\n");
        assert_eq!(seen(dir.path()), 1);

        // A next state dropped before its switch changes nothing and leaves nothing.
        let abandoned = Next::new(dir.path()).unwrap();
        abandoned
            .add_group("web", b"b\n", &Lookup::build(b"b\n"))
            .unwrap();
        drop(abandoned);
        assert_eq!(State::current(dir.path()).unwrap().unwrap().dir, first.dir);

        for generation in [2, 3] {
            let next = Next::new(dir.path()).unwrap();
            next.reuse_group(&State::current(dir.path()).unwrap().unwrap(), "web")
                .unwrap();
            next.switch(&manifest(generation), b"{}").unwrap();
        }
        let states: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with(STATE_PREFIX))
            .collect();
        // The current one and the one it replaced.
        assert_eq!(states.len(), 2, "{states:?}");
        assert_eq!(seen(dir.path()), 3);
        assert!(!states.iter().any(|s| first.dir.ends_with(s)));
    }

    #[test]
    fn a_link_out_of_the_cache_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join(CURRENT)).unwrap();
        assert!(State::current(dir.path()).is_err());
    }
}
