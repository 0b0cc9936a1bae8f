//! The instance side: a local cache of this host's access group files, kept fresh from S3 and
//! served to sshd at every login.
//!
//! An instance reads `{prefix}index.json` (see [`crate::index`]: per access group the SHA-256 of
//! its file, and nothing per person) and the files of the access groups it serves, never the
//! owners object: what it fetches is proportional to what it serves, not to the company.
//!
//! The cache holds, per access group, the verified file body behind a one-line header recording
//! the object's ETag, the index generation and when it was last confirmed current; the verified
//! index; and an attribution file (fingerprint → person, and per access group the group chain
//! that gives the access), built from the cached group files themselves, whose `# bob via Web
//! Team` lines say who each key belongs to. Every file is written to a temporary file and renamed
//! into place, so a login running at the same moment reads either the old or the new copy, never
//! a mix.
//!
//! Trust: content enters the cache only after it checks out. A group file must hash to what the
//! index says; with `verify_key` set, the index must carry a valid SSHSIG signature (namespace
//! `keyhole`) and must not be past its `not_after`; and it must never be older (a lower
//! generation) than what is cached. Anything else is refused and the cached copy stays: a
//! tampered or rolled-back bucket can never change what sshd is given.
//!
//! This module must never print to stdout: only `cmd::authorized_keys` writes key lines there.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::group_file::PublishedFile;
use crate::index::{Index, Layout};
use crate::render::sha256_hex;
use crate::resolve::VIA_SEPARATOR;
use crate::settings::InstanceSettings;
use crate::signing::{self, Verifier};
use crate::store::{Fetched, ObjectStore};

pub mod doctor;
pub mod host_groups;
pub mod imds;
pub mod revoked;

const INDEX: &str = "index";
const ATTRIBUTION: &str = "attribution";
/// What keyhole before the index cached; removed by the first refresh that caches an index.
const LEGACY_MANIFEST: &str = "manifest";

/// What the cache knows about one cached object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The object's ETag. For the attribution file, which is no object: a digest of the group
    /// files it was built from, so it is rebuilt exactly when one of them changes.
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
        let canary = canary_line.and_then(crate::canary::fingerprint)?;
        (canary == fingerprint).then(|| Attribution {
            user: crate::canary::NAME.to_owned(),
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

    /// Takes the refresh lock (`.lock` in the cache directory), waiting for another refresh
    /// without blocking the runtime, so the caller's timeout still applies.
    async fn lock(&self) -> anyhow::Result<fs::File> {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating the cache directory {}", self.dir.display()))?;
        let path = self.path(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(fs::TryLockError::Error(error)) => {
                    return Err(
                        anyhow::Error::new(error).context(format!("locking {}", path.display()))
                    );
                }
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The cached copy of an access group's file, if any.
    pub fn group(&self, group: &str) -> anyhow::Result<Option<Cached>> {
        self.read(&group_file(group))
    }

    fn read(&self, name: &str) -> anyhow::Result<Option<Cached>> {
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

    /// Writes `body` under `name` atomically: a temporary file in the same directory, then rename.
    fn write(&self, name: &str, meta: &Meta, body: &[u8]) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating the cache directory {}", self.dir.display()))?;
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("writing in the cache directory {}", self.dir.display()))?;
        let header = serde_json::to_vec(meta)?;
        file.write_all(HEADER_PREFIX)?;
        file.write_all(&header)?;
        file.write_all(b"\n")?;
        file.write_all(body)?;
        let target = self.path(name);
        file.persist(&target)
            .with_context(|| format!("replacing the cache file {}", target.display()))?;
        Ok(())
    }

    /// Who owns `fingerprint` among this host's access groups, from the attribution file.
    pub fn attribution(&self, fingerprint: &str) -> anyhow::Result<Option<Attribution>> {
        let Some(cached) = self.read(ATTRIBUTION)? else {
            return Ok(None);
        };
        // One line per key: the fingerprint, a space, the attribution as JSON. Only the matching
        // line is parsed.
        let found = cached.body.split(|&b| b == b'\n').find_map(|line| {
            let rest = line.strip_prefix(fingerprint.as_bytes())?;
            rest.strip_prefix(b" ")
        });
        found
            .map(|json| serde_json::from_slice(json).context("reading the cached attribution"))
            .transpose()
    }

    /// The cached, verified index (verified when it was cached).
    pub fn index(&self) -> anyhow::Result<Option<(Meta, Index)>> {
        let Some(cached) = self.read(INDEX)? else {
            return Ok(None);
        };
        let index = Index::open(&cached.body, None).context("reading the cached index")?;
        Ok(Some((cached.meta, index)))
    }
}

fn group_file(group: &str) -> String {
    format!("group-{group}")
}

pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Brings the cache up to date: one conditional read of the index, and a group file read only
/// for this host's groups whose SHA-256 in the index differs from the cached one. Nothing
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
    // One refresh at a time: a slow refresh that validated generation N must not write after a
    // fast one wrote N+1. Everything below, the reading of what is cached included, happens
    // under the lock.
    let _lock = cache.lock().await?;
    let cached_index = cache.read(INDEX)?;
    let fetched = store
        .get(
            &layout.index(),
            cached_index.as_ref().map(|c| c.meta.etag.as_str()),
        )
        .await
        .context("fetching the index")?;
    let (bytes, etag) = match (fetched, &cached_index) {
        (Fetched::Object(object), _) => (object.body, object.etag),
        (Fetched::NotModified, Some(cached)) => (cached.body.clone(), cached.meta.etag.clone()),
        (Fetched::NotModified, None) => {
            bail!("the store answered 'not modified' for an index this host does not have")
        }
        (Fetched::Missing, _) => bail!("no index is published at {}", layout.index()),
    };
    // Verified every time, the cached copy too: the index is small, and a verify_key set (or
    // changed) since it was cached then applies at once.
    let index = Index::open(&bytes, verifier).context("refusing the index")?;
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
    let cached_groups = cached_groups(cache, instance)?;
    // The newest generation this host has seen: the cached index's, or any cached group file's
    // (they carry it too, so deleting the cached index does not open the door to a rollback).
    let seen = cached_index
        .iter()
        .map(|c| c.meta.generation)
        .chain(
            cached_groups
                .iter()
                .flat_map(|(_, c)| c.as_ref().map(|c| c.meta.generation)),
        )
        .max();
    if let Some(seen) = seen
        && index.generation < seen
    {
        bail!(
            "refusing the index: generation {} is older than the cached generation {seen} (rollback)",
            index.generation
        );
    }
    // A generation is committed once: the same generation with other content was written by a
    // publisher that lost the race, or forged with an old signature's generation.
    if let Some(cached) = &cached_index
        && cached.meta.generation == index.generation
        && cached.meta.sha256 != sha256_hex(&bytes)
    {
        bail!(
            "refusing the index: it differs from the cached index of the same generation {} \
             (two publishers, or a replayed generation)",
            index.generation
        );
    }

    let mut bodies = Vec::new();
    for (group, cached) in cached_groups {
        let name = group_file(&group);
        let confirmed = |etag: String, sha256: String| Meta {
            etag,
            confirmed_at_ms: unix_millis(now),
            generation: index.generation,
            sha256,
        };
        let Some(entry) = index.groups.get(&group) else {
            tracing::warn!(
                group,
                "this host's access group is not published: it grants no keys"
            );
            cache.write(&name, &confirmed(String::new(), sha256_hex(b"")), b"")?;
            bodies.push((group, Vec::new()));
            continue;
        };
        let (meta, body) = match cached {
            Some(cached) if cached.meta.sha256 == entry.sha256 => {
                (confirmed(cached.meta.etag, cached.meta.sha256), cached.body)
            }
            _ => {
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
                (confirmed(object.etag, sha256), object.body)
            }
        };
        cache.write(&name, &meta, &body)?;
        bodies.push((group, body));
    }

    write_attribution(cache, &bodies, index.generation, now)?;
    cache.write(
        INDEX,
        &Meta {
            etag,
            confirmed_at_ms: unix_millis(now),
            generation: index.generation,
            sha256: sha256_hex(&bytes),
        },
        &bytes,
    )?;
    if let Err(error) = fs::remove_file(cache.path(LEGACY_MANIFEST))
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::debug!("could not remove the old cached manifest: {error}");
    }
    Ok(index)
}

/// An instance without `verify_key` serves whatever the bucket holds: allowed only when the
/// settings say so (`allow_unsigned = true`), and then said at every refresh.
fn trust_unsigned(instance: &InstanceSettings, verifier: Option<&Verifier>) -> anyhow::Result<()> {
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

/// What may be given to sshd, checked against the cached index.
#[derive(Debug)]
pub struct Verified {
    /// This host's groups; `None` for a group whose cached file does not check out.
    pub groups: Vec<(String, Option<Cached>)>,
    /// The audit canary's line, from the verified index.
    pub canary: Option<String>,
}

/// Checks, at serving time, what is about to be given to sshd against the cached index: its
/// signature again (with `verifier`), its deployment, and each group's SHA-256. A cache file
/// edited on disk, body and header together, is refused here.
pub fn verified_for_serving(
    cache: &Cache,
    deployment: &str,
    verifier: Option<&Verifier>,
    groups: Vec<(String, Option<Cached>)>,
    instance: &InstanceSettings,
) -> anyhow::Result<Verified> {
    trust_unsigned(instance, verifier)?;
    let Some(cached) = cache.read(INDEX)? else {
        bail!("no cached index to check the cached group files against");
    };
    let index = Index::open(&cached.body, verifier).context("refusing the cached index")?;
    index
        .check_deployment(deployment, verifier.is_some())
        .context("refusing the cached index")?;
    let groups = groups
        .into_iter()
        .map(|(group, cached)| {
            let expected = index
                .groups
                .get(&group)
                .map_or_else(|| sha256_hex(b""), |entry| entry.sha256.clone());
            let cached = cached.filter(|cached| {
                let ok = cached.meta.sha256 == expected;
                if !ok {
                    tracing::error!(
                        group,
                        "the cached file does not match the cached index: not served"
                    );
                }
                ok
            });
            (group, cached)
        })
        .collect();
    Ok(Verified {
        groups,
        canary: index.canary,
    })
}

/// Rebuilds the attribution file from this host's verified group files, unless it was built
/// from exactly these files already (parsing every key costs more than a refresh should when
/// nothing changed).
fn write_attribution(
    cache: &Cache,
    bodies: &[(String, Vec<u8>)],
    generation: u64,
    now: SystemTime,
) -> anyhow::Result<()> {
    let sources = attribution_sources(bodies);
    if cache
        .read(ATTRIBUTION)?
        .is_some_and(|cached| cached.meta.etag == sources)
    {
        return Ok(());
    }
    let mut body = String::new();
    for (fingerprint, attribution) in attribute(bodies) {
        body.push_str(&fingerprint);
        body.push(' ');
        body.push_str(&serde_json::to_string(&attribution)?);
        body.push('\n');
    }
    cache.write(
        ATTRIBUTION,
        &Meta {
            etag: sources,
            confirmed_at_ms: unix_millis(now),
            generation,
            sha256: sha256_hex(body.as_bytes()),
        },
        body.as_bytes(),
    )
}

/// What an attribution file built from `bodies` records as its source: a digest of the groups
/// and their files' SHA-256, in order.
fn attribution_sources(bodies: &[(String, Vec<u8>)]) -> String {
    let sources: String = bodies
        .iter()
        .map(|(group, body)| format!("{group} {}\n", sha256_hex(body)))
        .collect();
    sha256_hex(sources.as_bytes())
}

/// Who owns `fingerprint` among the groups being served: from the attribution file when it was
/// built from exactly these files, else from the files themselves (a refresh may have replaced
/// them since), so a login is never attributed from other files than the ones sshd was given.
pub fn attribution_of(
    cache: &Cache,
    served: &[(String, Vec<u8>)],
    canary: Option<&str>,
    fingerprint: &str,
) -> anyhow::Result<Option<Attribution>> {
    if let Some(canary) = Attribution::canary(canary, fingerprint) {
        return Ok(Some(canary));
    }
    let built_from = cache.read(ATTRIBUTION)?.map(|cached| cached.meta.etag);
    if built_from.as_deref() == Some(attribution_sources(served).as_str()) {
        return cache.attribution(fingerprint);
    }
    Ok(attribute(served).remove(fingerprint))
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

/// This host's access groups with their cached copies (`None`: not cached), read once per login.
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

/// True when every access group is cached and younger than `cache_ttl`: such a login needs no
/// network at all.
pub fn all_fresh(
    groups: &[(String, Option<Cached>)],
    instance: &InstanceSettings,
    now: SystemTime,
) -> bool {
    groups.iter().all(|(_, cached)| {
        cached
            .as_ref()
            .is_some_and(|c| c.meta.age(now) < instance.cache_ttl)
    })
}

/// What to give sshd: each group's cached body if it was confirmed within `max_stale`. Groups past
/// that are left out (fail closed), and named in the second list.
pub fn servable(
    groups: Vec<(String, Option<Cached>)>,
    instance: &InstanceSettings,
    now: SystemTime,
) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for (group, cached) in groups {
        match cached {
            Some(cached) if cached.meta.age(now) <= instance.max_stale => {
                served.push((group, cached.body))
            }
            _ => refused.push(group),
        }
    }
    (served, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{self, KeyPolicy};

    fn instance(dir: &Path) -> InstanceSettings {
        InstanceSettings {
            login_user: "ec2-user".into(),
            access_groups: vec!["web".into(), "db".into()],
            cache_dir: dir.to_path_buf(),
            cache_ttl: Duration::from_secs(300),
            max_stale: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(3),
            verify_key: None,
            allow_unsigned: true,
            imds: None,
            revoked_keys_file: Some(dir.join("revoked_keys")),
        }
    }

    fn meta(body: &[u8], confirmed: SystemTime) -> Meta {
        Meta {
            etag: "\"e\"".into(),
            confirmed_at_ms: unix_millis(confirmed),
            generation: 7,
            sha256: sha256_hex(body),
        }
    }

    #[test]
    fn cached_files_round_trip_and_damaged_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let now = SystemTime::now();
        cache
            .write(
                "group-web",
                &meta(b"ssh-ed25519 AAAA bob\n", now),
                b"ssh-ed25519 AAAA bob\n",
            )
            .unwrap();
        let cached = cache.group("web").unwrap().unwrap();
        assert_eq!(cached.body, b"ssh-ed25519 AAAA bob\n");
        assert_eq!(cached.meta.generation, 7);
        assert_eq!(cache.group("db").unwrap(), None);

        // A body that no longer matches its header is not served.
        let path = dir.path().join("group-web");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"ssh-ed25519 BBBB mallory\n");
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(cache.group("web").unwrap(), None);
    }

    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq bob@desk";
    const CAROL: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+IR8TskynvftW3EfRyCVskOiAVP6iaiVeXwIV7bhM8 carol@host";

    fn fingerprint(line: &str) -> String {
        keys::parse_authorized_keys(line, &KeyPolicy::default()).keys[0]
            .fingerprint
            .as_str()
            .to_owned()
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
        use crate::group_file::block_header;
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

    #[test]
    fn the_attribution_file_answers_by_fingerprint_and_is_rebuilt_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let now = SystemTime::now();
        let web = format!("# bob via Web Team\n{BOB}\n").into_bytes();
        let groups = vec![("web-prod".to_string(), web.clone())];
        write_attribution(&cache, &groups, 3, now).unwrap();
        let bob = cache.attribution(&fingerprint(BOB)).unwrap().unwrap();
        assert_eq!(bob.describe(), "bob (web-prod via Web Team)");
        assert_eq!(cache.attribution(&fingerprint(CAROL)).unwrap(), None);
        // A fingerprint that is a prefix of a real one matches nothing.
        let prefix = &fingerprint(BOB)[..20];
        assert_eq!(cache.attribution(prefix).unwrap(), None);

        // Same files: the file is left as it was (its generation stays 3).
        write_attribution(&cache, &groups, 4, now).unwrap();
        assert_eq!(cache.read(ATTRIBUTION).unwrap().unwrap().meta.generation, 3);
        // A changed file: rebuilt.
        let changed = vec![(
            "web-prod".to_string(),
            format!("# carol\n{CAROL}\n").into_bytes(),
        )];
        write_attribution(&cache, &changed, 5, now).unwrap();
        assert_eq!(cache.attribution(&fingerprint(BOB)).unwrap(), None);
        assert_eq!(
            cache
                .attribution(&fingerprint(CAROL))
                .unwrap()
                .unwrap()
                .user,
            "carol"
        );
    }

    #[test]
    fn freshness_and_staleness_are_judged_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let settings = instance(dir.path());
        let now = SystemTime::now();
        cache
            .write("group-web", &meta(b"", now - Duration::from_secs(10)), b"")
            .unwrap();
        let groups = || cached_groups(&cache, &settings).unwrap();
        // db is missing: not fresh, and only web can be served.
        assert!(!all_fresh(&groups(), &settings, now));
        let (served, refused) = servable(groups(), &settings, now);
        assert_eq!((served.len(), refused), (1, vec!["db".to_string()]));
        cache
            .write("group-db", &meta(b"", now - Duration::from_secs(1800)), b"")
            .unwrap();
        // db is past cache_ttl but within max_stale: refresh wanted, both still servable.
        assert!(!all_fresh(&groups(), &settings, now));
        let (served, refused) = servable(groups(), &settings, now);
        assert_eq!((served.len(), refused.len()), (2, 0));
        // Ninety minutes later both are past max_stale: fail closed.
        let (served, refused) = servable(groups(), &settings, now + Duration::from_secs(5400));
        assert_eq!(served.len(), 0);
        assert_eq!(refused, ["web", "db"]);
        cache.write("group-web", &meta(b"", now), b"").unwrap();
        cache.write("group-db", &meta(b"", now), b"").unwrap();
        assert!(all_fresh(
            &groups(),
            &settings,
            now + Duration::from_millis(1)
        ));
    }
}
