//! The instance side: a local cache of this host's access group files, kept fresh from S3 and
//! served to sshd at every login.
//!
//! The cache holds, per access group, the verified file body behind a one-line header recording
//! the object's ETag, the manifest generation and when it was last confirmed current; the
//! verified manifest; and a small attribution index (fingerprint → person and access groups) so
//! that naming the person behind a login never parses the whole manifest. Every file is written
//! to a temporary file and renamed into place, so a login running at the same moment reads either
//! the old or the new copy, never a mix.
//!
//! Trust: content enters the cache only after it checks out. A group file must hash to what the
//! manifest says; with `verify_key` set, the manifest must carry a valid SSHSIG signature
//! (namespace `keyhole`), must not be past its `not_after`, and must not be older (a lower
//! generation) than the one cached. Anything else is refused and the cached copy stays: a tampered
//! or rolled-back bucket can never change what sshd is given.
//!
//! This module must never print to stdout: only `cmd::authorized_keys` writes key lines there.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::render::sha256_hex;
use crate::resolve::VIA_SEPARATOR;
use crate::settings::InstanceSettings;
use crate::signing::{self, Verifier};
use crate::store::{Fetched, ObjectStore};

const MANIFEST: &str = "manifest";
const ATTRIBUTION: &str = "attribution";

/// What the cache knows about one cached object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
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

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The cached copy of an access group's file, if any.
    pub fn group(&self, group: &str) -> anyhow::Result<Option<Cached>> {
        self.read(&format!("group-{group}"))
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

    /// Who owns `fingerprint` among this host's access groups, from the attribution index:
    /// e.g. `bob (web-prod via Web Team)`.
    pub fn attribution(&self, fingerprint: &str) -> anyhow::Result<Option<String>> {
        let Some(index) = self.read(ATTRIBUTION)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&index.body);
        Ok(text.lines().find_map(|line| {
            let (key, who) = line.split_once(' ')?;
            (key == fingerprint).then(|| who.to_owned())
        }))
    }

    /// The cached, verified manifest.
    pub fn manifest(&self) -> anyhow::Result<Option<(Meta, Manifest)>> {
        let Some(cached) = self.read(MANIFEST)? else {
            return Ok(None);
        };
        let manifest = Manifest::parse(&cached.body).context("reading the cached manifest")?;
        Ok(Some((cached.meta, manifest)))
    }
}

pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where the objects are in the bucket.
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: String,
}

impl Layout {
    pub fn manifest(&self) -> String {
        format!("{}manifest.json", self.prefix)
    }
    pub fn signature(&self) -> String {
        format!("{}manifest.json.sig", self.prefix)
    }
    pub fn group(&self, group: &str) -> String {
        format!("{}{group}/authorized_keys", self.prefix)
    }
}

/// Brings the cache up to date: one manifest read (conditional), and a group file read only for
/// groups whose published SHA-256 differs from the cached one. Nothing unverified is cached.
pub async fn refresh(
    store: &impl ObjectStore,
    layout: &Layout,
    cache: &Cache,
    instance: &InstanceSettings,
    verifier: Option<&Verifier>,
    now: SystemTime,
) -> anyhow::Result<Manifest> {
    let cached_manifest = cache.read(MANIFEST)?;
    let fetched = store
        .get(
            &layout.manifest(),
            cached_manifest.as_ref().map(|c| c.meta.etag.as_str()),
        )
        .await
        .context("fetching the manifest")?;
    let (bytes, etag, verified) = match (fetched, &cached_manifest) {
        (Fetched::Object(object), _) => (object.body, object.etag, false),
        // The cached copy was verified when it was cached.
        (Fetched::NotModified, Some(cached)) => {
            (cached.body.clone(), cached.meta.etag.clone(), true)
        }
        (Fetched::NotModified, None) => {
            bail!("the store answered 'not modified' for a manifest this host does not have")
        }
        (Fetched::Missing, _) => bail!("no manifest is published at {}", layout.manifest()),
    };
    let manifest = Manifest::parse(&bytes)?;
    if let Some(verifier) = verifier {
        if !verified {
            let signature = match store
                .get(&layout.signature(), None)
                .await
                .context("fetching the manifest signature")?
            {
                Fetched::Object(object) => object.body,
                _ => bail!(
                    "the manifest is not signed ({} is missing), and instance.verify_key requires it",
                    layout.signature()
                ),
            };
            verifier
                .verify(&bytes, &String::from_utf8_lossy(&signature))
                .context("refusing the manifest: its signature does not verify")?;
        }
        // Checked every time: an unchanged manifest still expires.
        let not_after = manifest
            .not_after
            .as_deref()
            .context("refusing the manifest: it is signed but has no not_after")?;
        if signing::parse_time(not_after)? <= now {
            bail!("refusing the manifest: it expired at {not_after} (is the publisher running?)");
        }
    }
    if let Some(cached) = &cached_manifest
        && manifest.generation < cached.meta.generation
    {
        bail!(
            "refusing the manifest: generation {} is older than the cached generation {} (rollback)",
            manifest.generation,
            cached.meta.generation
        );
    }

    for group in &instance.access_groups {
        let Some(entry) = manifest.groups.get(group) else {
            tracing::warn!(
                group,
                "this host's access group is not published: it grants no keys"
            );
            let empty = Meta {
                etag: String::new(),
                confirmed_at_ms: unix_millis(now),
                generation: manifest.generation,
                sha256: sha256_hex(b""),
            };
            cache.write(&format!("group-{group}"), &empty, b"")?;
            continue;
        };
        let name = format!("group-{group}");
        let cached = cache.read(&name)?;
        let body = match &cached {
            Some(cached) if cached.meta.sha256 == entry.sha256 => cached.body.clone(),
            _ => {
                let key = layout.group(group);
                match store
                    .get(&key, None)
                    .await
                    .with_context(|| format!("fetching {key}"))?
                {
                    Fetched::Object(object) => {
                        let sha256 = sha256_hex(&object.body);
                        if sha256 != entry.sha256 {
                            bail!(
                                "refusing {key}: its SHA-256 {sha256} is not the {} the manifest records (tampered, or a publish in progress)",
                                entry.sha256
                            );
                        }
                        cache.write(
                            &name,
                            &Meta {
                                etag: object.etag,
                                confirmed_at_ms: unix_millis(now),
                                generation: manifest.generation,
                                sha256,
                            },
                            &object.body,
                        )?;
                        continue;
                    }
                    _ => bail!("{key} is listed in the manifest but missing from the bucket"),
                }
            }
        };
        let mut meta = cached.map(|c| c.meta).unwrap_or_else(|| Meta {
            etag: String::new(),
            confirmed_at_ms: 0,
            generation: 0,
            sha256: entry.sha256.clone(),
        });
        meta.confirmed_at_ms = unix_millis(now);
        meta.generation = manifest.generation;
        cache.write(&name, &meta, &body)?;
    }

    let index = index_body(&manifest, &instance.access_groups);
    cache.write(
        ATTRIBUTION,
        &attribution_meta(&manifest, now, &index),
        index.as_bytes(),
    )?;
    cache.write(
        MANIFEST,
        &Meta {
            etag,
            confirmed_at_ms: unix_millis(now),
            generation: manifest.generation,
            sha256: sha256_hex(&bytes),
        },
        &bytes,
    )?;
    Ok(manifest)
}

fn attribution_meta(manifest: &Manifest, now: SystemTime, body: &str) -> Meta {
    Meta {
        etag: String::new(),
        confirmed_at_ms: unix_millis(now),
        generation: manifest.generation,
        sha256: sha256_hex(body.as_bytes()),
    }
}

/// One line per key this host serves: `SHA256:… bob (web-prod via Web Team; db-prod)`.
fn index_body(manifest: &Manifest, groups: &[String]) -> String {
    let mine: BTreeSet<&str> = groups.iter().map(String::as_str).collect();
    let mut body = String::new();
    for (fingerprint, owner) in &manifest.fingerprints {
        let reasons: Vec<String> = owner
            .groups
            .iter()
            .filter(|g| mine.contains(g.as_str()))
            .map(|group| describe_grant(manifest, group, &owner.user))
            .collect();
        if !reasons.is_empty() {
            body.push_str(&format!(
                "{fingerprint} {} ({})\n",
                owner.user,
                reasons.join("; ")
            ));
        }
    }
    body
}

/// `web-prod via Web Team > Contractors`, or just `web-prod` for a person named directly.
pub fn describe_grant(manifest: &Manifest, group: &str, user: &str) -> String {
    let via = manifest
        .groups
        .get(group)
        .and_then(|entry| entry.via.get(user))
        .filter(|via| !via.is_empty());
    match via {
        Some(via) => format!("{group} via {}", via.join(VIA_SEPARATOR)),
        None => group.to_owned(),
    }
}

/// This host's access groups with their cached copies (`None`: not cached), read once per login.
pub fn cached_groups(
    cache: &Cache,
    instance: &InstanceSettings,
) -> anyhow::Result<Vec<(String, Option<Cached>)>> {
    instance
        .access_groups
        .iter()
        .map(|group| Ok((group.clone(), cache.group(group)?)))
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
) -> (Vec<Cached>, Vec<String>) {
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for (group, cached) in groups {
        match cached {
            Some(cached) if cached.meta.age(now) <= instance.max_stale => served.push(cached),
            _ => refused.push(group),
        }
    }
    (served, refused)
}

/// The owner of `fingerprint` and, per access group it is published in, the group chain that
/// gives that person access: what `whois` shows.
pub fn owner_of<'m>(
    manifest: &'m Manifest,
    fingerprint: &str,
) -> Option<(&'m str, BTreeMap<&'m str, Vec<String>>)> {
    let owner = manifest.fingerprints.get(fingerprint)?;
    let groups = owner
        .groups
        .iter()
        .map(|group| {
            let via = manifest
                .groups
                .get(group)
                .and_then(|entry| entry.via.get(&owner.user))
                .cloned()
                .unwrap_or_default();
            (group.as_str(), via)
        })
        .collect();
    Some((owner.user.as_str(), groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(dir: &Path) -> InstanceSettings {
        InstanceSettings {
            login_user: "ec2-user".into(),
            access_groups: vec!["web".into(), "db".into()],
            cache_dir: dir.to_path_buf(),
            cache_ttl: Duration::from_secs(300),
            max_stale: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(3),
            verify_key: None,
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
