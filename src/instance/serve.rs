//! What a login gives sshd, from the current cache state, checked at every login at a cost that
//! grows with this host's groups and not with the size of a group or of the fleet.
//!
//! - **Trust**: with `verify_key`, each host group's seal (see [`crate::bucket::group_lookup`]) is
//!   verified over the statement this login expects (its own deployment, the state's generation,
//!   `not_after`, canary, the group's SHA-256 and lookup root); the state's `not_after` must lie
//!   ahead and its generation must not be below the highest one the cache switched to (a rolled
//!   back cache). A group an older publisher did not seal is checked the old way: the whole
//!   index's signature, then the group file's SHA-256 (slower, and only until the publisher is
//!   upgraded). A cache edited on disk, by anyone without the signing key, is refused here.
//! - **With `%f`**: only the lines whose key has that fingerprint, plus `cert-authority` lines
//!   (they match a certificate, not `%f`), read from the lookup: one 12 KiB table and one or two
//!   buckets per group, each hashed against the sealed root.
//! - **Without `%f`**: every line, each file hashed against its sealed SHA-256.
//! - **The canary**: its line comes first, from the sealed statement; no group line with the
//!   canary's fingerprint is ever printed; offered the canary key, a login prints its line alone.
//!
//! The output is built in memory and written by the caller in one go.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::FileExt as _;
use std::time::SystemTime;

use anyhow::{Context as _, bail};

use super::Attribution;
use super::state::{self, GroupState, State};
use crate::bucket::group_lookup::{self, CA_BUCKET, Lookup, Statement, TABLE_BYTES, Table};
use crate::bucket::index::Index;
use crate::bucket::signing::{self, Verifier};
use crate::digest::sha256_hex;
use crate::settings::InstanceSettings;

/// What a login serves.
#[derive(Debug, Default)]
pub struct Served {
    /// The lines for sshd, each ending in a newline.
    pub output: Vec<u8>,
    /// The host groups served (possibly with no line for this key).
    pub groups: Vec<String>,
    /// The host groups that could not be served, with why.
    pub refused: Vec<(String, String)>,
    /// Who the offered key belongs to on this host.
    pub attribution: Option<Attribution>,
}

/// What a login checks the state against: its settings, not the cache's word.
pub struct Expect<'a> {
    pub instance: &'a InstanceSettings,
    pub deployment: &'a str,
    pub verifier: Option<&'a Verifier>,
    pub now: SystemTime,
}

/// Serves `groups` (this host's) from `state` for the offered `fingerprint` (sshd's `%f`), or
/// every key without one. An error refuses the whole state (rolled back, expired, past
/// `max_stale`); a group that does not check out is refused alone.
pub fn serve(
    state: &State,
    groups: &[String],
    fingerprint: Option<&str>,
    expect: &Expect,
) -> anyhow::Result<Served> {
    let manifest = &state.manifest;
    let seen = state::seen(
        state
            .dir
            .parent()
            .context("the cache state has no parent directory")?,
    );
    if manifest.generation < seen {
        bail!(
            "the cached state is generation {}, older than generation {seen} this cache already \
             served (rolled back)",
            manifest.generation
        );
    }
    if expect.verifier.is_some() {
        let not_after = manifest
            .not_after
            .as_deref()
            .context("the cached index is signed but has no not_after")?;
        if signing::parse_time(not_after)? <= expect.now {
            bail!(
                "the cached index expired at {not_after} (is the publisher running? is `keyhole refresh`?)"
            );
        }
    }
    let age = manifest.age(expect.now);
    if age > expect.instance.max_stale {
        bail!(
            "the cache was last confirmed {} ago, past max_stale {} (is `keyhole refresh` running? can this host reach S3?)",
            humantime::format_duration(std::time::Duration::from_secs(age.as_secs())),
            humantime::format_duration(expect.instance.max_stale)
        );
    }

    let canary_line = manifest.canary.as_deref();
    let canary_fingerprint = canary_line.and_then(crate::bucket::canary_line::fingerprint);
    let offered_canary = fingerprint.is_some() && fingerprint == canary_fingerprint.as_deref();
    let mut trust = Trust::new(state, expect);
    let mut served = Served::default();
    let mut lines = Vec::new();
    let mut attribution: Option<Attribution> = None;
    for group in groups {
        let Some(entry) = manifest.groups.get(group) else {
            served.refused.push((
                group.clone(),
                "not in the cached state (a refresh has not fetched it yet)".into(),
            ));
            continue;
        };
        let result = trust.check(group, entry).and_then(|checked| {
            if !entry.published {
                return Ok(());
            }
            let source = GroupSource {
                state,
                group,
                entry,
                sealed: checked,
            };
            match fingerprint {
                Some(fingerprint) if !offered_canary => {
                    let mut buckets = vec![CA_BUCKET];
                    buckets.push(group_lookup::bucket_of(fingerprint));
                    for (bucket, entries) in source.buckets(&buckets)? {
                        for found in group_lookup::entries(&entries) {
                            let matches = bucket == CA_BUCKET || found.fingerprint == fingerprint;
                            if !matches || Some(found.fingerprint) == canary_fingerprint.as_deref()
                            {
                                continue;
                            }
                            lines.push(found.line.to_owned());
                            if bucket != CA_BUCKET {
                                attribution
                                    .get_or_insert_with(|| Attribution {
                                        user: found.user.clone(),
                                        groups: BTreeMap::new(),
                                    })
                                    .groups
                                    .insert(group.clone(), found.via.clone());
                            }
                        }
                    }
                }
                Some(_) => {}
                None => {
                    let skip = match &canary_fingerprint {
                        Some(canary) => source.lines_of(canary)?,
                        None => BTreeSet::new(),
                    };
                    let body = source.body()?;
                    for line in String::from_utf8_lossy(&body).lines() {
                        if !line.is_empty() && !line.starts_with('#') && !skip.contains(line) {
                            lines.push(line.to_owned());
                        }
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => served.groups.push(group.clone()),
            Err(error) => served.refused.push((group.clone(), format!("{error:#}"))),
        }
    }
    if served.groups.is_empty() {
        return Ok(served);
    }
    // The canary first, and only alongside the people's keys: a host that fails closed serves no
    // canary either, so the probe sees it. Its line is trusted only as far as a seal (or the
    // index) vouched for it.
    if let Some(canary) = canary_line.filter(|_| trust.canary_vouched) {
        served.output.extend_from_slice(canary.as_bytes());
        served.output.push(b'\n');
    }
    if offered_canary {
        served.attribution = canary_fingerprint
            .as_deref()
            .and_then(|fp| Attribution::canary(canary_line, fp));
        return Ok(served);
    }
    for line in lines {
        served.output.extend_from_slice(line.as_bytes());
        served.output.push(b'\n');
    }
    served.attribution = attribution;
    Ok(served)
}

/// Checks groups against seals (or, for unsealed ones, the whole index, verified once).
struct Trust<'a> {
    state: &'a State,
    expect: &'a Expect<'a>,
    /// The whole index, verified, once a group needed it.
    index: Option<Result<Index, String>>,
    /// Whether the canary line was covered by what was checked (always without a verifier).
    canary_vouched: bool,
}

impl<'a> Trust<'a> {
    fn new(state: &'a State, expect: &'a Expect<'a>) -> Trust<'a> {
        Trust {
            state,
            expect,
            index: None,
            canary_vouched: expect.verifier.is_none(),
        }
    }

    /// Ok(true): the group's lookup root is sealed (its table may be trusted once it hashes to
    /// it); Ok(false): only the file's SHA-256 is vouched for (unsealed, or no verifier and no
    /// root), so lookups are rebuilt from the file.
    fn check(&mut self, group: &str, entry: &GroupState) -> anyhow::Result<bool> {
        let manifest = &self.state.manifest;
        // A group the index does not name grants nothing and nothing of it is read.
        if !entry.published {
            return Ok(false);
        }
        let Some(verifier) = self.expect.verifier else {
            return Ok(true);
        };
        if let Some(seal) = &entry.seal {
            let (root, signature) =
                group_lookup::split_seal(seal).context("the cached seal is malformed")?;
            if root != entry.lookup {
                bail!("the cached lookup is not the one its seal names");
            }
            Statement {
                deployment: self.expect.deployment,
                group,
                generation: manifest.generation,
                not_after: manifest.not_after.as_deref().unwrap_or_default(),
                sha256: &entry.sha256,
                lookup: &entry.lookup,
                canary: manifest.canary.as_deref().unwrap_or_default(),
            }
            .verify(verifier, signature)
            .context("the cached group does not match its seal (edited on disk, or another deployment's)")?;
            self.canary_vouched = true;
            return Ok(true);
        }
        let index = self
            .index
            .get_or_insert_with(|| open_index(self.state, verifier, self.expect.deployment))
            .as_ref()
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        let named = index.groups.get(group).map(|g| g.sha256.as_str());
        if named != Some(entry.sha256.as_str()) {
            bail!("the cached group is not what the cached index names (edited on disk)");
        }
        self.canary_vouched = true;
        Ok(false)
    }
}

/// The cached index, verified, and matching what the state says it was built from.
fn open_index(state: &State, verifier: &Verifier, deployment: &str) -> Result<Index, String> {
    let manifest = &state.manifest;
    let bytes = state.index_bytes().map_err(|e| format!("{e:#}"))?;
    let index = Index::open(&bytes, Some(verifier))
        .map_err(|e| format!("refusing the cached index: {e}"))?;
    index
        .check_deployment(deployment, true)
        .map_err(|e| format!("refusing the cached index: {e}"))?;
    if index.generation != manifest.generation
        || index.not_after != manifest.not_after
        || index.canary != manifest.canary
    {
        return Err("the cached state is not what its cached index says (edited on disk)".into());
    }
    Ok(index)
}

/// One group's cached files, read as little as the login needs.
struct GroupSource<'a> {
    state: &'a State,
    group: &'a str,
    entry: &'a GroupState,
    /// The lookup root is sealed: read the table and the buckets. Otherwise rebuild the lookup
    /// from the file, checked against its SHA-256.
    sealed: bool,
}

impl GroupSource<'_> {
    /// The file, checked against its (sealed) SHA-256.
    fn body(&self) -> anyhow::Result<Vec<u8>> {
        let body = self.state.body(self.group)?;
        if sha256_hex(&body) != self.entry.sha256 {
            bail!("the cached file does not hash to its sealed SHA-256 (edited on disk)");
        }
        Ok(body)
    }

    /// The entries of `buckets`, each checked against the sealed root.
    fn buckets(&self, buckets: &[usize]) -> anyhow::Result<Vec<(usize, Vec<u8>)>> {
        if !self.sealed {
            let lookup = Lookup::build(&self.body()?);
            return Ok(buckets
                .iter()
                .map(|&b| (b, lookup.bucket(b).to_vec()))
                .collect());
        }
        let path = self.state.lookup_path(self.group);
        let file = fs::File::open(&path)
            .with_context(|| format!("opening the cache file {}", path.display()))?;
        let mut table = vec![0; TABLE_BYTES];
        file.read_exact_at(&mut table, 0)
            .with_context(|| format!("reading {}", path.display()))?;
        let table = Table::new(&table).context("a cached lookup table is short")?;
        if table.root() != self.entry.lookup {
            bail!("the cached lookup does not hash to its sealed root (edited on disk)");
        }
        let mut found = Vec::with_capacity(buckets.len());
        for &bucket in buckets {
            let (offset, length, expected) = table
                .bucket(bucket)
                .context("a cached lookup table is short")?;
            let mut entries = vec![0; length];
            file.read_exact_at(&mut entries, offset)
                .with_context(|| format!("reading {}", path.display()))?;
            if !group_lookup::bucket_matches(&entries, expected) {
                bail!("a cached lookup bucket does not hash to its sealed root (edited on disk)");
            }
            found.push((bucket, entries));
        }
        Ok(found)
    }

    /// The exact lines whose key has `fingerprint`.
    fn lines_of(&self, fingerprint: &str) -> anyhow::Result<BTreeSet<String>> {
        let bucket = group_lookup::bucket_of(fingerprint);
        let mut lines = BTreeSet::new();
        for (_, entries) in self.buckets(&[bucket, CA_BUCKET])? {
            lines.extend(
                group_lookup::entries(&entries)
                    .filter(|entry| entry.fingerprint == fingerprint)
                    .map(|entry| entry.line.to_owned()),
            );
        }
        Ok(lines)
    }
}
