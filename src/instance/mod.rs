//! The instance side: a local cache of this host's access group files, kept fresh from S3 and
//! served to sshd at every login.
//!
//! An instance reads `{prefix}index.json` (see [`crate::bucket::index`]: per access group the SHA-256 of
//! its file and the publisher's seal, nothing per person) and the files of the access groups it
//! serves, never the owners object: what it fetches is proportional to what it serves, not to the
//! company.
//!
//! The cache is one state directory switched atomically (see [`state`]): per host group the
//! verified file, its fingerprint lookup ([`crate::bucket::group_lookup`]) and its seal, plus the
//! verified index. A refresh builds the next state beside the current one and switches with one
//! rename, so a refresh that fails half-way (a missing object, a timeout, a kill) changes nothing
//! a login sees: the previous state is served, whole, within `max_stale`.
//!
//! Trust: content enters the cache only after it checks out. A group file must hash to what the
//! index says and its lookup to what its seal signs; with `verify_key` set, the index must carry
//! a valid SSHSIG signature (namespace `keyhole`), must not be past its `not_after`, must name
//! this deployment; and it must never be older (a lower generation) than what the cache served.
//! Anything else is refused and the current state stays. At login the state is checked again, at
//! a cost of O(host groups) ([`serve`]): seals, `not_after`, generation.
//!
//! Upgrading from a keyhole that cached files side by side (`group-NAME`, `index`,
//! `attribution` directly in `cache_dir`): the first refresh builds a state from the bucket and
//! removes them. A login before that refreshes first, as any login on a stale cache does; when S3
//! cannot be reached it builds the state from the old files instead, checked as the old version
//! checked them (the index's signature and every file's SHA-256), and serves it within
//! `max_stale` of when they were last confirmed. Nobody is locked out by the upgrade.
//!
//! This module must never print to stdout: only `cmd::authorized_keys` writes key lines there.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::bucket::group_file::PublishedFile;
use crate::bucket::group_file::VIA_SEPARATOR;
use crate::bucket::group_lookup::{self, Lookup, Statement};
use crate::bucket::index::{Index, Layout};
use crate::bucket::signing::{self, Verifier};
use crate::bucket::store::{Fetched, ObjectStore};
use crate::digest::sha256_hex;
use crate::settings::InstanceSettings;

pub mod doctor;
pub mod fetch;
pub mod host_groups;
pub mod imds;
pub mod revoked;
pub mod serve;
pub mod state;

use state::{GroupState, Manifest, Next, State};

/// What keyhole before cache states kept directly in `cache_dir` (read to upgrade, then removed).
const LEGACY_INDEX: &str = "index";
const LEGACY_ATTRIBUTION: &str = "attribution";
/// What keyhole before the index cached.
const LEGACY_MANIFEST: &str = "manifest";

/// What a cached object's header records (the format keyhole before cache states wrote, and
/// what [`Cache::group`] reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The object's ETag (empty for a group file reported from a cache state).
    pub etag: String,
    /// Unix time in milliseconds when this copy was last confirmed to be what S3 publishes.
    pub confirmed_at_ms: u64,
    pub generation: u64,
    /// Hex SHA-256 of the body.
    pub sha256: String,
}

impl Meta {
    pub fn age(&self, now: SystemTime) -> Duration {
        Duration::from_millis(unix_millis(now).saturating_sub(self.confirmed_at_ms))
    }
}

/// A cached object: its header and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub meta: Meta,
    pub body: Vec<u8>,
}

/// Who a key belongs to on this host: the person, and for each of this host's access groups the
/// key is in, the group chain that gives them access (empty: named directly).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attribution {
    pub user: String,
    pub groups: BTreeMap<String, Vec<String>>,
}

impl Attribution {
    /// The audit canary, when `fingerprint` is the canary key of `canary_line` (the line an index
    /// ships, see `canary`).
    pub fn canary(canary_line: Option<&str>, fingerprint: &str) -> Option<Attribution> {
        let canary = canary_line.and_then(crate::bucket::canary_line::fingerprint)?;
        (canary == fingerprint).then(|| Attribution {
            user: crate::bucket::canary_line::NAME.to_owned(),
            groups: BTreeMap::new(),
        })
    }

    /// `bob (web-prod via Web Team; db-prod)`: what the login line and `whois` print, with any
    /// control character in a name escaped (a name must not forge a log line).
    pub fn describe(&self) -> String {
        let grants: Vec<String> = self
            .groups
            .iter()
            .map(|(group, via)| {
                if via.is_empty() {
                    group.clone()
                } else {
                    format!("{group} via {}", via.join(VIA_SEPARATOR))
                }
            })
            .collect();
        if grants.is_empty() {
            return printable(&self.user);
        }
        printable(&format!("{} ({})", self.user, grants.join("; ")))
    }
}

/// `text` with control characters (line breaks, escapes, bidi overrides and other format
/// characters) escaped, for a log line that must stay one line and say what it says.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || is_format_char(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Unicode format characters that reorder or hide text: bidi embeddings, overrides and
/// isolates, and the line and paragraph separators.
fn is_format_char(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

const HEADER_PREFIX: &[u8] = b"# keyhole-cache ";

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    /// The cache at `dir`, refused when someone else could write to it: a directory not owned by
    /// the running user, or writable by its group or others, could be filled with keys that were
    /// never verified. A directory that does not exist yet is fine (the first refresh makes it).
    /// Both the login path and `refresh` open the cache through here.
    pub fn open(dir: &Path) -> anyhow::Result<Cache> {
        use std::os::unix::fs::MetadataExt as _;
        match fs::metadata(dir) {
            Ok(metadata) => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let euid = unsafe { libc::geteuid() };
                if metadata.uid() != euid {
                    bail!(
                        "refusing the cache directory {}: it is owned by uid {}, not by the user \
                         keyhole runs as (uid {euid})",
                        dir.display(),
                        metadata.uid()
                    );
                }
                if metadata.mode() & 0o022 != 0 {
                    bail!(
                        "refusing the cache directory {}: it is writable by its group or others \
                         (mode {:o})",
                        dir.display(),
                        metadata.mode() & 0o7777
                    );
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context(format!("reading the cache directory {}", dir.display())));
            }
        }
        Ok(Cache::new(dir))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn create(&self) -> anyhow::Result<fs::File> {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating the cache directory {}", self.dir.display()))?;
        let path = self.path(".lock");
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    /// Takes the refresh lock (`.lock` in the cache directory), waiting for another refresh
    /// without blocking the runtime, so the caller's timeout still applies.
    async fn lock(&self) -> anyhow::Result<fs::File> {
        let file = self.create()?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(fs::TryLockError::Error(error)) => {
                    return Err(anyhow::Error::new(error).context("locking the cache"));
                }
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The state logins serve, if a refresh ever built one.
    pub fn state(&self) -> anyhow::Result<Option<State>> {
        State::current(&self.dir)
    }

    /// An access group's cached file, as the current state holds it (`None`: not cached). For
    /// reports (`doctor`); the login path reads through [`serve`].
    pub fn group(&self, group: &str) -> anyhow::Result<Option<Cached>> {
        let Some(state) = self.state()? else {
            return Ok(None);
        };
        let Some(entry) = state.manifest.groups.get(group) else {
            return Ok(None);
        };
        let body = if entry.published {
            state.body(group)?
        } else {
            Vec::new()
        };
        Ok(Some(Cached {
            meta: Meta {
                etag: String::new(),
                confirmed_at_ms: state.manifest.confirmed_at_ms,
                generation: state.manifest.generation,
                sha256: entry.sha256.clone(),
            },
            body,
        }))
    }

    /// A file in the format keyhole before cache states wrote (a header line, then the body).
    fn read_legacy(&self, name: &str) -> anyhow::Result<Option<Cached>> {
        let path = self.path(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context(format!("reading the cache file {}", path.display())));
            }
        };
        let split = bytes.iter().position(|&b| b == b'\n');
        let parsed = split.and_then(|newline| {
            let header = bytes[..newline].strip_prefix(HEADER_PREFIX)?;
            let meta: Meta = serde_json::from_slice(header).ok()?;
            Some(Cached {
                meta,
                body: bytes[newline + 1..].to_vec(),
            })
        });
        match parsed {
            // A body that no longer matches its header was damaged: treat it as not cached.
            Some(cached) if sha256_hex(&cached.body) == cached.meta.sha256 => Ok(Some(cached)),
            _ => {
                tracing::warn!(path = %path.display(), "ignoring a damaged cache file");
                Ok(None)
            }
        }
    }

    /// Who owns `fingerprint` among this host's access groups, from the current state's lookups
    /// (for `whois` on an instance; a login attributes through [`serve`]).
    pub fn attribution(&self, fingerprint: &str) -> anyhow::Result<Option<Attribution>> {
        let Some(state) = self.state()? else {
            return Ok(None);
        };
        let bucket = group_lookup::bucket_of(fingerprint);
        let mut found: Option<Attribution> = None;
        for (group, entry) in &state.manifest.groups {
            if !entry.published {
                continue;
            }
            let lookup = Lookup::build(&state.body(group)?);
            for line in group_lookup::entries(lookup.bucket(bucket)) {
                if line.fingerprint == fingerprint {
                    found
                        .get_or_insert_with(|| Attribution {
                            user: line.user.clone(),
                            groups: BTreeMap::new(),
                        })
                        .groups
                        .insert(group.clone(), line.via.clone());
                }
            }
        }
        Ok(found)
    }

    /// The cached, verified index (verified when it was cached).
    pub fn index(&self) -> anyhow::Result<Option<(Meta, Index)>> {
        let Some(state) = self.state()? else {
            return Ok(None);
        };
        let bytes = state.index_bytes()?;
        let index = Index::open(&bytes, None).context("reading the cached index")?;
        let meta = Meta {
            etag: state.manifest.index_etag.clone(),
            confirmed_at_ms: state.manifest.confirmed_at_ms,
            generation: state.manifest.generation,
            sha256: state.manifest.index_sha256.clone(),
        };
        Ok(Some((meta, index)))
    }

    /// Removes what keyhole before cache states kept directly in the cache directory.
    fn remove_legacy(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let legacy = name.starts_with("group-")
                || [LEGACY_INDEX, LEGACY_ATTRIBUTION, LEGACY_MANIFEST].contains(&name);
            if legacy && let Err(error) = fs::remove_file(entry.path()) {
                tracing::debug!("could not remove the old cache file {name}: {error}");
            }
        }
    }
}

pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The index, opened and checked as an instance accepts it: its signature (with `verifier`), its
/// deployment, and (signed) its `not_after`.
fn accept_index(
    bytes: &[u8],
    deployment: &str,
    verifier: Option<&Verifier>,
    now: SystemTime,
) -> anyhow::Result<Index> {
    let index = Index::open(bytes, verifier).context("refusing the index")?;
    index
        .check_deployment(deployment, verifier.is_some())
        .context("refusing the index")?;
    if verifier.is_some() {
        // Checked every time: an unchanged index still expires.
        let not_after = index
            .not_after
            .as_deref()
            .context("refusing the index: it is signed but has no not_after")?;
        if signing::parse_time(not_after)? <= now {
            bail!("refusing the index: it expired at {not_after} (is the publisher running?)");
        }
    }
    // Never a not_after further ahead than MAX_VALIDITY (a signing key misused, or a clock).
    if verifier.is_some() {
        crate::bucket::trust::check_validity(&index, now).context("refusing the index")?;
    }
    Ok(index)
}

/// Where a host group's file comes from in the next state.
enum Source {
    /// Not in the index: grants nothing.
    Unpublished,
    /// The current state's copy, unchanged (its lookup is reused when it hashes to `root`).
    Current { root: String },
    /// Fetched, or read from a cache keyhole wrote before states.
    Body(Vec<u8>),
}

/// Brings the cache up to date: one conditional read of the index, and a group file read only
/// for this host's groups whose SHA-256 in the index differs from the cached one. The next state
/// is built beside the current one and switched to only when all of it checked out. Nothing
/// unverified is cached; nothing per person of the company is read.
pub async fn refresh(
    store: &impl ObjectStore,
    layout: &Layout,
    deployment: &str,
    cache: &Cache,
    instance: &InstanceSettings,
    verifier: Option<&Verifier>,
    now: SystemTime,
) -> anyhow::Result<Index> {
    trust_unsigned(instance, verifier)?;
    // One refresh at a time: a slow refresh that validated generation N must not switch after a
    // fast one switched to N+1. Everything below, the reading of what is cached included,
    // happens under the lock.
    let _lock = cache.lock().await?;
    let current = cache.state().unwrap_or_else(|error| {
        tracing::warn!("rebuilding the cache: {error:#}");
        None
    });
    let legacy = match &current {
        Some(_) => None,
        None => cache.read_legacy(LEGACY_INDEX)?,
    };
    let cached = match (&current, &legacy) {
        (Some(state), _) => state
            .index_bytes()
            .ok()
            .map(|bytes| (state.manifest.index_etag.clone(), bytes)),
        (None, Some(legacy)) => Some((legacy.meta.etag.clone(), legacy.body.clone())),
        (None, None) => None,
    };
    // Never back to format 1 once format 2 was trusted.
    let cached_format = cached
        .as_ref()
        .and_then(|(_, bytes)| Index::open(bytes, None).ok())
        .map(|index| index.format);
    let fetched = store
        .get(
            &layout.index(),
            cached.as_ref().map(|(etag, _)| etag.as_str()),
        )
        .await
        .context("fetching the index")?;
    let (bytes, etag) = match (fetched, cached) {
        (Fetched::Object(object), _) => (object.body, object.etag),
        (Fetched::NotModified, Some((etag, bytes))) => (bytes, etag),
        (Fetched::NotModified, None) => {
            bail!("the store answered 'not modified' for an index this host does not have")
        }
        (Fetched::Missing, _) => bail!("no index is published at {}", layout.index()),
    };
    // Verified every time, the cached copy too: the index is small, and a verify_key set (or
    // changed) since it was cached then applies at once.
    let index = accept_index(&bytes, deployment, verifier, now)?;
    crate::bucket::trust::check_format(&index, cached_format.map(|f| (f, "the cached index")))
        .context("refusing the index")?;
    let index_sha256 = sha256_hex(&bytes);
    check_not_rolled_back(cache, current.as_ref(), &index, &index_sha256)?;

    let groups = host_groups::current(cache, instance)?;
    let mut sources = Vec::new();
    for group in groups {
        let Some(entry) = index.groups.get(&group) else {
            tracing::warn!(
                group,
                "this host's access group is not published: it grants no keys"
            );
            sources.push((group, Source::Unpublished));
            continue;
        };
        let expected_root = entry
            .seal
            .as_deref()
            .and_then(group_lookup::split_seal)
            .map(|(root, _)| root.to_owned());
        let unchanged = current.as_ref().and_then(|state| {
            let cached = state.manifest.groups.get(&group)?;
            (cached.published && cached.sha256 == entry.sha256).then(|| cached.lookup.clone())
        });
        if let (Some(state), Some(root)) = (&current, unchanged)
            && expected_root
                .as_ref()
                .is_none_or(|expected| *expected == root)
            && reusable(state, &group, &entry.sha256, &root)
        {
            sources.push((group, Source::Current { root }));
            continue;
        }
        if let Some(old) = cache.read_legacy(&format!("group-{group}"))?
            && old.meta.sha256 == entry.sha256
        {
            sources.push((group, Source::Body(old.body)));
            continue;
        }
        let key = layout.group(&index, &group, &entry.sha256);
        let Fetched::Object(object) = store
            .get(&key, None)
            .await
            .with_context(|| format!("fetching {key}"))?
        else {
            bail!("{key} is listed in the index but missing from the bucket");
        };
        let sha256 = sha256_hex(&object.body);
        if sha256 != entry.sha256 {
            bail!(
                "refusing {key}: its SHA-256 {sha256} is not the {} the index records (tampered, or a publish in progress)",
                entry.sha256
            );
        }
        sources.push((group, Source::Body(object.body)));
    }

    // Issue 25's step goes here: the revocation list the verified index names is written for
    // sshd's RevokedKeys (`instance::revoked`), before the switch, so a refresh that cannot write
    // it switches nothing.

    build(
        cache,
        current.as_ref(),
        &index,
        (&bytes, &etag, &index_sha256),
        sources,
        unix_millis(now),
        deployment,
        verifier,
    )?;
    // What a keyhole before states cached is no longer needed once a state was switched to.
    cache.remove_legacy();
    Ok(index)
}

/// Whether the current state's copy of a group can be carried into the next one: its file still
/// hashes to `sha256` and its lookup table to `root`.
fn reusable(state: &State, group: &str, sha256: &str, root: &str) -> bool {
    let body_ok = state
        .body(group)
        .is_ok_and(|body| sha256_hex(&body) == sha256);
    let lookup_ok = fs::read(state.lookup_path(group)).is_ok_and(|bytes| {
        bytes
            .get(..group_lookup::TABLE_BYTES)
            .and_then(group_lookup::Table::new)
            .is_some_and(|table| table.root() == root)
    });
    body_ok && lookup_ok
}

/// Refuses an index older than what this cache served (a rollback), or of the same generation
/// with other content.
fn check_not_rolled_back(
    cache: &Cache,
    current: Option<&State>,
    index: &Index,
    index_sha256: &str,
) -> anyhow::Result<()> {
    // The newest generation this host has seen: the switch record, the current state's, or the
    // files a keyhole before states cached (they carry it too, so deleting one file does not open
    // the door to a rollback).
    let mut seen = state::seen(&cache.dir);
    if let Some(state) = current {
        seen = seen.max(state.manifest.generation);
    }
    for name in legacy_names(cache) {
        if let Ok(Some(old)) = cache.read_legacy(&name) {
            seen = seen.max(old.meta.generation);
            if name == LEGACY_INDEX
                && old.meta.generation == index.generation
                && old.meta.sha256 != index_sha256
            {
                bail!(
                    "refusing the index: it differs from the cached index of the same generation {} \
                     (two publishers, or a replayed generation)",
                    index.generation
                );
            }
        }
    }
    if index.generation < seen {
        bail!(
            "refusing the index: generation {} is older than the cached generation {seen} (rollback)",
            index.generation
        );
    }
    // A generation is committed once: the same generation with other content was written by a
    // publisher that lost the race, or forged with an old signature's generation.
    if let Some(state) = current
        && state.manifest.generation == index.generation
        && state.manifest.index_sha256 != index_sha256
    {
        bail!(
            "refusing the index: it differs from the cached index of the same generation {} \
             (two publishers, or a replayed generation)",
            index.generation
        );
    }
    Ok(())
}

/// The files a keyhole before states left in the cache directory.
fn legacy_names(cache: &Cache) -> Vec<String> {
    let Ok(entries) = fs::read_dir(&cache.dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name == LEGACY_INDEX || name.starts_with("group-"))
        .collect()
}

/// Builds the next state from `sources` (every seal checked against the lookup built here) and
/// switches to it.
#[allow(clippy::too_many_arguments)]
fn build(
    cache: &Cache,
    current: Option<&State>,
    index: &Index,
    (bytes, etag, index_sha256): (&[u8], &str, &str),
    sources: Vec<(String, Source)>,
    confirmed_at_ms: u64,
    deployment: &str,
    verifier: Option<&Verifier>,
) -> anyhow::Result<()> {
    let next = Next::new(&cache.dir)?;
    let mut groups = BTreeMap::new();
    for (group, source) in sources {
        let Some(entry) = index.groups.get(&group) else {
            next.add_group(&group, b"", &Lookup::build(b""))?;
            groups.insert(
                group,
                GroupState {
                    published: false,
                    sha256: sha256_hex(b""),
                    lookup: Lookup::build(b"").root(),
                    seal: None,
                },
            );
            continue;
        };
        let root = match source {
            Source::Current { root } => {
                let state = current.context("no current state to carry a group from")?;
                next.reuse_group(state, &group)?;
                root
            }
            Source::Body(body) => {
                let lookup = Lookup::build(&body);
                next.add_group(&group, &body, &lookup)?;
                lookup.root()
            }
            Source::Unpublished => bail!("access group {group} is published after all"),
        };
        if let (Some(verifier), Some(seal)) = (verifier, &entry.seal) {
            let (named, signature) = group_lookup::split_seal(seal).with_context(|| {
                format!("refusing the index: access group {group}'s seal is malformed")
            })?;
            if named != root {
                bail!(
                    "refusing the index: access group {group}'s seal names lookup {named}, its file gives {root}"
                );
            }
            Statement {
                deployment,
                group: &group,
                generation: index.generation,
                not_after: index.not_after.as_deref().unwrap_or_default(),
                sha256: &entry.sha256,
                lookup: &root,
                canary: index.canary.as_deref().unwrap_or_default(),
            }
            .verify(verifier, signature)
            .with_context(|| {
                format!("refusing the index: access group {group}'s seal does not verify")
            })?;
        }
        groups.insert(
            group,
            GroupState {
                published: true,
                sha256: entry.sha256.clone(),
                lookup: root,
                seal: entry.seal.clone(),
            },
        );
    }
    let manifest = Manifest {
        generation: index.generation,
        deployment: index.deployment.clone(),
        not_after: index.not_after.clone(),
        index_etag: etag.to_owned(),
        index_sha256: index_sha256.to_owned(),
        confirmed_at_ms,
        canary: index.canary.clone(),
        groups,
    };
    next.switch(&manifest, bytes)
}

/// A login's way through an upgrade when S3 cannot be reached: builds a state from the files a
/// keyhole before states cached, checked as that version checked them (the index's signature and
/// deployment, every file's SHA-256 against it), confirmed when they were. Returns whether it
/// built one. Needs no network.
pub fn upgrade_offline(
    cache: &Cache,
    instance: &InstanceSettings,
    deployment: &str,
    verifier: Option<&Verifier>,
) -> anyhow::Result<bool> {
    trust_unsigned(instance, verifier)?;
    if cache.state()?.is_some() {
        return Ok(false);
    }
    let Some(old_index) = cache.read_legacy(LEGACY_INDEX)? else {
        return Ok(false);
    };
    let lock = cache.create()?;
    // A login never waits for a refresh: one that holds the lock is building a state already.
    if lock.try_lock().is_err() {
        return Ok(false);
    }
    if cache.state()?.is_some() {
        return Ok(false);
    }
    let index = Index::open(&old_index.body, verifier).context("refusing the old cached index")?;
    index
        .check_deployment(deployment, verifier.is_some())
        .context("refusing the old cached index")?;
    let mut confirmed_at_ms = old_index.meta.confirmed_at_ms;
    let mut sources = Vec::new();
    for group in host_groups::current(cache, instance)? {
        let Some(entry) = index.groups.get(&group) else {
            sources.push((group, Source::Unpublished));
            continue;
        };
        let Some(old) = cache.read_legacy(&format!("group-{group}"))? else {
            bail!("the old cache has no copy of access group {group}");
        };
        if old.meta.sha256 != entry.sha256 {
            bail!("the old cache's copy of access group {group} is not what its index names");
        }
        confirmed_at_ms = confirmed_at_ms.min(old.meta.confirmed_at_ms);
        sources.push((group, Source::Body(old.body)));
    }
    build(
        cache,
        None,
        &index,
        (
            &old_index.body,
            &old_index.meta.etag,
            &sha256_hex(&old_index.body),
        ),
        sources,
        confirmed_at_ms,
        deployment,
        verifier,
    )?;
    tracing::info!(
        generation = index.generation,
        "built the cache state from the cache of the previous keyhole version (S3 unreachable)"
    );
    Ok(true)
}

/// An instance without `verify_key` serves whatever the bucket holds: allowed only when the
/// settings say so (`allow_unsigned = true`), and then said at every refresh.
pub(crate) fn trust_unsigned(
    instance: &InstanceSettings,
    verifier: Option<&Verifier>,
) -> anyhow::Result<()> {
    match (verifier, instance.allow_unsigned) {
        (Some(_), _) => Ok(()),
        (None, true) => {
            tracing::warn!(
                "instance.allow_unsigned: serving an index without checking a signature; whoever \
                 can write to the bucket decides who logs in here (set instance.verify_key)"
            );
            Ok(())
        }
        (None, false) => bail!(
            "instance.verify_key is not set: refusing to serve an unsigned index (set verify_key \
             to the publisher's public key, or allow_unsigned = true to accept that whoever can \
             write to the bucket decides who logs in here)"
        ),
    }
}

/// This host's access groups with their copies in the current state (`None`: not in it).
pub fn cached_groups(
    cache: &Cache,
    instance: &InstanceSettings,
) -> anyhow::Result<Vec<(String, Option<Cached>)>> {
    // The static list plus what `refresh` last resolved from EC2: never IMDS itself.
    host_groups::current(cache, instance)?
        .into_iter()
        .map(|group| {
            let cached = cache.group(&group)?;
            Ok((group, cached))
        })
        .collect()
}

/// Every key in these group files, by fingerprint, with the person whose block it is in and, per
/// group, that block's chain.
pub fn attribute(groups: &[(String, Vec<u8>)]) -> BTreeMap<String, Attribution> {
    let mut found: BTreeMap<String, Attribution> = BTreeMap::new();
    for (group, body) in groups {
        for block in PublishedFile::parse(body).blocks {
            for fingerprint in block.fingerprints() {
                found
                    .entry(fingerprint.to_owned())
                    .or_insert_with(|| Attribution {
                        user: block.user.clone(),
                        groups: BTreeMap::new(),
                    })
                    .groups
                    .insert(group.clone(), block.via.clone());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::memory_store::MemoryStore;
    use crate::keys::{self, KeyPolicy};
    use std::collections::HashMap;

    const DEPLOYMENT: &str = "s3://keys/";
    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq bob@desk";
    const CAROL: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+IR8TskynvftW3EfRyCVskOiAVP6iaiVeXwIV7bhM8 carol@host";

    fn fingerprint(line: &str) -> String {
        keys::parse_authorized_keys(line, &KeyPolicy::default()).keys[0]
            .fingerprint
            .as_str()
            .to_owned()
    }

    fn signer() -> (tempfile::TempDir, signing::Signer) {
        signer_from(9)
    }

    fn signer_from(seed: u8) -> (tempfile::TempDir, signing::Signer) {
        use ssh_key::private::{Ed25519Keypair, KeypairData};
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = ssh_key::PrivateKey::new(
            KeypairData::from(Ed25519Keypair::from_seed(&[seed; 32])),
            "test",
        )
        .unwrap();
        let path = dir.path().join("key");
        fs::write(&path, key.to_openssh(ssh_key::LineEnding::LF).unwrap()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let signer = signing::Signer::load(&path).unwrap();
        (dir, signer)
    }

    struct World {
        _key: tempfile::TempDir,
        signer: signing::Signer,
        verifier: Verifier,
        store: MemoryStore,
        cache_dir: tempfile::TempDir,
        layout: Layout,
    }

    impl World {
        fn new() -> World {
            let (key, signer) = signer();
            let verifier = Verifier::parse(&signer.public_key()).unwrap();
            World {
                _key: key,
                signer,
                verifier,
                store: MemoryStore::default(),
                cache_dir: tempfile::tempdir().unwrap(),
                layout: Layout {
                    prefix: String::new(),
                },
            }
        }

        fn instance(&self) -> InstanceSettings {
            InstanceSettings {
                login_user: "ec2-user".into(),
                access_groups: vec!["web".into(), "db".into()],
                cache_dir: self.cache_dir.path().to_path_buf(),
                cache_ttl: Duration::from_secs(300),
                max_stale: Duration::from_secs(3600),
                fetch_timeout: Duration::from_secs(3),
                verify_key: Some(self.signer.public_key()),
                allow_unsigned: false,
                imds: None,
                revoked_keys_file: None,
            }
        }

        fn cache(&self) -> Cache {
            Cache::new(self.cache_dir.path())
        }

        /// Publishes `groups` (name, body) as `generation`, sealed.
        fn publish(&self, generation: u64, groups: &[(&str, String)], canary: Option<&str>) {
            self.publish_by(&self.signer, generation, groups, canary);
        }

        /// Publishes `groups` as `generation`, sealed and signed by `signer`.
        fn publish_by(
            &self,
            signer: &signing::Signer,
            generation: u64,
            groups: &[(&str, String)],
            canary: Option<&str>,
        ) {
            let mut index = Index {
                generation,
                not_after: Some(signing::format_time(
                    SystemTime::now() + Duration::from_secs(86400),
                )),
                deployment: Some(DEPLOYMENT.into()),
                canary: canary.map(str::to_owned),
                ..Index::empty()
            };
            let mut roots = HashMap::new();
            for (name, body) in groups {
                let sha = sha256_hex(body.as_bytes());
                roots.insert(sha.clone(), Lookup::build(body.as_bytes()).root());
                let key = self.layout.group(&index, name, &sha);
                self.store.insert(&key, body.clone());
                index.groups.insert(
                    (*name).into(),
                    crate::bucket::index::IndexGroup {
                        sha256: sha,
                        users: 1,
                        keys: 1,
                        seal: None,
                    },
                );
            }
            crate::bucket::group_lookup::seal_with_roots(&mut index, &roots, signer).unwrap();
            let sealed = index.seal(Some(signer)).unwrap();
            self.store.insert(&self.layout.index(), sealed);
        }

        fn refresh(&self) -> anyhow::Result<Index> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(refresh(
                &self.store,
                &self.layout,
                DEPLOYMENT,
                &self.cache(),
                &self.instance(),
                Some(&self.verifier),
                SystemTime::now(),
            ))
        }

        fn serve(&self, fingerprint: Option<&str>) -> anyhow::Result<serve::Served> {
            let state = self.cache().state()?.context("no state")?;
            let instance = self.instance();
            let expect = serve::Expect {
                instance: &instance,
                deployment: DEPLOYMENT,
                verifier: Some(&self.verifier),
                now: SystemTime::now(),
            };
            serve::serve(&state, &instance.access_groups, fingerprint, &expect)
        }

        fn output(&self, fingerprint: Option<&str>) -> String {
            String::from_utf8(self.serve(fingerprint).unwrap().output).unwrap()
        }
    }

    fn web() -> String {
        format!(
            "# keyhole access group web: generated, do not edit\n# bob via Web Team\n{BOB}\n# carol\n{CAROL}\n"
        )
    }

    fn db() -> String {
        format!("# keyhole access group db: generated, do not edit\n# bob\n{BOB}\n")
    }

    #[test]
    fn with_a_fingerprint_only_its_lines_are_served_and_attributed() {
        let world = World::new();
        world.publish(1, &[("web", web()), ("db", db())], None);
        world.refresh().unwrap();
        let served = world.serve(Some(&fingerprint(BOB))).unwrap();
        assert_eq!(
            String::from_utf8(served.output).unwrap(),
            format!("{BOB}\n{BOB}\n")
        );
        assert_eq!(
            served.attribution.unwrap().describe(),
            "bob (db; web via Web Team)"
        );
        assert_eq!(
            world.output(Some(&fingerprint(CAROL))),
            format!("{CAROL}\n")
        );
        assert_eq!(world.output(Some("SHA256:nobody")), "");
        // Without one, everything, buffered.
        assert_eq!(world.output(None), format!("{BOB}\n{CAROL}\n{BOB}\n"));
    }

    #[test]
    fn a_refresh_keeps_serving_the_last_good_index_over_a_rolled_back_or_forged_one() {
        let world = World::new();
        world.publish(2, &[("web", web()), ("db", db())], None);
        assert_eq!(world.refresh().unwrap().generation, 2);
        // What is cached is the index as the bucket holds it, byte for byte.
        let index_bytes = world.store.body(&world.layout.index()).unwrap();
        let cached = || world.cache().state().unwrap().unwrap().manifest;
        assert_eq!(cached().generation, 2);
        assert_eq!(cached().index_sha256, sha256_hex(&index_bytes));
        let served = world.output(None);
        assert_eq!(served, format!("{BOB}\n{CAROL}\n{BOB}\n"));
        // Someone with write access to the bucket puts back generation 1, validly signed.
        world.publish(1, &[("web", db()), ("db", db())], None);
        let error = world.refresh().unwrap_err();
        assert!(format!("{error:#}").contains("(rollback)"), "{error:#}");
        assert_eq!(
            (cached().generation, world.output(None)),
            (2, served.clone())
        );
        // Or writes generation 3, signed with a key that is not the publisher's.
        let (_forger_dir, forger) = signer_from(7);
        world.publish_by(&forger, 3, &[("web", db()), ("db", db())], None);
        let error = world.refresh().unwrap_err();
        assert!(
            format!("{error:#}").contains("refusing the index"),
            "{error:#}"
        );
        assert_eq!(
            (cached().generation, world.output(None)),
            (2, served.clone())
        );
        // The publisher's own generation 3 is taken.
        world.publish(3, &[("web", db()), ("db", db())], None);
        assert_eq!(world.refresh().unwrap().generation, 3);
        assert_eq!(world.output(None), format!("{BOB}\n{BOB}\n"));
    }

    #[test]
    fn a_cache_edited_on_disk_is_refused_at_login() {
        let world = World::new();
        world.publish(1, &[("web", web()), ("db", db())], None);
        world.refresh().unwrap();
        let state = world.cache().state().unwrap().unwrap();
        // Carol's line replaced by mallory's in the lookup, table and all, and in the file.
        let mallory = web().replace(CAROL, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfszvdxQkh3m2q6wIUyF7P mallory");
        let path = state.lookup_path("web");
        fs::remove_file(&path).unwrap();
        fs::write(&path, Lookup::build(mallory.as_bytes()).to_bytes()).unwrap();
        let served = world.serve(Some(&fingerprint(BOB))).unwrap();
        assert_eq!(served.refused.len(), 1, "{served:?}");
        assert_eq!(served.groups, ["db"]);
        // The manifest edited to name the forged root: the seal does not cover it.
        let manifest_path = state.dir.join("state.json");
        let text = fs::read_to_string(&manifest_path).unwrap();
        let forged_root = Lookup::build(mallory.as_bytes()).root();
        let text = text.replace(&state.manifest.groups["web"].lookup, &forged_root);
        fs::write(&manifest_path, text).unwrap();
        let served = world.serve(None).unwrap();
        assert_eq!(served.groups, ["db"], "{served:?}");
    }

    #[test]
    fn a_rolled_back_state_and_an_expired_one_are_refused() {
        let world = World::new();
        world.publish(1, &[("web", web()), ("db", db())], None);
        world.refresh().unwrap();
        let old = world.cache().state().unwrap().unwrap();
        let saved = world.cache_dir.path().join("saved-state");
        fs::create_dir(&saved).unwrap();
        for entry in fs::read_dir(&old.dir).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), saved.join(entry.file_name())).unwrap();
        }
        world.publish(2, &[("web", db()), ("db", db())], None);
        world.refresh().unwrap();
        // Put generation 1 back as the current state.
        let back = world.cache_dir.path().join("state-rolled-back");
        fs::rename(&saved, &back).unwrap();
        let link = world.cache_dir.path().join(".link");
        std::os::unix::fs::symlink("state-rolled-back", &link).unwrap();
        fs::rename(&link, world.cache_dir.path().join(state::CURRENT)).unwrap();
        let error = world.serve(None).unwrap_err();
        assert!(format!("{error:#}").contains("rolled back"), "{error:#}");
    }

    #[test]
    fn a_refresh_that_fails_half_way_leaves_the_previous_state_served() {
        let world = World::new();
        world.publish(1, &[("web", web()), ("db", db())], None);
        world.refresh().unwrap();
        let before = world.output(None);
        let db_v2 = db().replace("# bob\n", "# bob via Ops\n");
        world.publish(
            2,
            &[("web", web().replace(CAROL, "")), ("db", db_v2.clone())],
            None,
        );
        let db_key = world
            .layout
            .group(&Index::empty(), "db", &sha256_hex(db_v2.as_bytes()));
        world.store.fail(&db_key);
        assert!(world.refresh().is_err());
        assert_eq!(world.output(None), before);
        let leftovers = fs::read_dir(world.cache_dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(state::STATE_PREFIX)
            })
            .count();
        assert_eq!(leftovers, 1);
        world.store.heal();
        world.refresh().unwrap();
        assert_ne!(world.output(None), before);
    }

    #[test]
    fn the_canary_comes_first_and_never_as_a_group_line() {
        let world = World::new();
        let canary = format!("{} {}", crate::bucket::canary_line::OPTIONS, CAROL);
        world.publish(1, &[("web", web()), ("db", db())], Some(&canary));
        world.refresh().unwrap();
        // Carol's key is the canary's: offered, only the canary's line.
        assert_eq!(
            world.output(Some(&fingerprint(CAROL))),
            format!("{canary}\n")
        );
        let all = world.output(None);
        assert_eq!(all, format!("{canary}\n{BOB}\n{BOB}\n"));
        let bob = world.output(Some(&fingerprint(BOB)));
        assert!(bob.starts_with(&canary), "{bob}");
    }

    #[test]
    fn an_old_cache_is_upgraded_without_the_network() {
        let world = World::new();
        world.publish(4, &[("web", web()), ("db", db())], None);
        let cache = world.cache();
        fs::create_dir_all(world.cache_dir.path()).unwrap();
        let index = world.store.body(&world.layout.index()).unwrap();
        let now = unix_millis(SystemTime::now());
        let legacy = |name: &str, body: &[u8]| {
            let meta = Meta {
                etag: "\"e\"".into(),
                confirmed_at_ms: now,
                generation: 4,
                sha256: sha256_hex(body),
            };
            let mut bytes = HEADER_PREFIX.to_vec();
            bytes.extend(serde_json::to_vec(&meta).unwrap());
            bytes.push(b'\n');
            bytes.extend_from_slice(body);
            fs::write(cache.path(name), bytes).unwrap();
        };
        legacy(LEGACY_INDEX, &index);
        legacy("group-web", web().as_bytes());
        legacy("group-db", db().as_bytes());
        assert!(
            upgrade_offline(&cache, &world.instance(), DEPLOYMENT, Some(&world.verifier)).unwrap()
        );
        assert_eq!(
            world.output(Some(&fingerprint(CAROL))),
            format!("{CAROL}\n")
        );
        // A refresh takes over from there and removes the old files.
        world.refresh().unwrap();
        assert!(!cache.path("group-web").exists());
        assert_eq!(
            world.output(Some(&fingerprint(CAROL))),
            format!("{CAROL}\n")
        );
    }

    #[test]
    fn keys_are_attributed_to_the_block_they_are_in_with_each_groups_chain() {
        let web = format!(
            "# keyhole access group web-prod: generated, do not edit\n# bob via Web Team > Contractors\n{BOB}\n# carol\nfrom=\"10.0.0.0/8\" {CAROL}\n"
        );
        let db = format!("# keyhole access group db-prod: generated, do not edit\n# bob\n{BOB}\n");
        let found = attribute(&[
            ("web-prod".into(), web.into_bytes()),
            ("db-prod".into(), db.into_bytes()),
            ("empty".into(), Vec::new()),
        ]);
        assert_eq!(found.len(), 2, "{found:?}");
        let bob = &found[&fingerprint(BOB)];
        assert_eq!(
            bob,
            &Attribution {
                user: "bob".into(),
                groups: BTreeMap::from([
                    ("db-prod".into(), vec![]),
                    (
                        "web-prod".into(),
                        vec!["Web Team".into(), "Contractors".into()]
                    ),
                ]),
            }
        );
        assert_eq!(
            bob.describe(),
            "bob (db-prod; web-prod via Web Team > Contractors)"
        );
        assert_eq!(found[&fingerprint(CAROL)].describe(), "carol (web-prod)");
    }

    #[test]
    fn a_name_cannot_pass_for_someone_else_nor_break_the_log_line() {
        use crate::bucket::group_file::block_header;
        // An AD account named "bob via Ops" holds CAROL's key; bob holds BOB.
        let body = format!(
            "{}{CAROL}\n{}{BOB}\n",
            block_header("bob via Ops", &["Web\nTeam"]),
            block_header("bob", &[] as &[&str])
        );
        let found = attribute(&[("web-prod".into(), body.into_bytes())]);
        let impostor = &found[&fingerprint(CAROL)];
        assert_eq!(impostor.user, "bob via Ops");
        assert_eq!(found[&fingerprint(BOB)].user, "bob");
        // The line break in the group's name is escaped in what is logged.
        assert_eq!(
            impostor.describe(),
            "bob via Ops (web-prod via Web\\u{a}Team)"
        );
        assert_eq!(printable("a\u{202E}b"), "a\\u{202e}b");
    }
}
