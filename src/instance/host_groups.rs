//! Which access groups this host serves: `[instance] access_groups` (baked into the settings),
//! plus the groups the EC2 instance was launched with, named in a tag or in the user data.
//!
//! The EC2 part is resolved only by `keyhole refresh` (from its timer) and cached in
//! `cache_dir/host-groups.json`; the login path reads that file and never asks IMDS, so an SSH
//! login costs the same whatever IMDS does.
//!
//! The tag is an access grant, and its removal a revocation: when IMDS answers that the instance
//! has no such tag (404 on the tag, or the key missing from the tag listing; and, with user data
//! as a second source, no line there either), the host has no access groups from EC2 any more
//! (logged as `access_groups_tag_absent`, counted in `refresh --metrics-file`). When IMDS cannot
//! answer (down, slow, 5xx, a refused token, tags not in the metadata at all), that says nothing
//! about the grant: the last resolved groups stay in force and `refresh` says so and exits
//! non-zero. A host that never resolved serves only its static groups (none, usually) until it
//! does. So `ec2:CreateTags` / `ec2:DeleteTags` on the tag key grant and revoke SSH access (and
//! `ec2:ModifyInstanceMetadataOptions`, which can hide tags from IMDS, keeps a grant from being
//! revoked): the README shows an IAM / SCP policy that leaves them to the provisioning role.
//!
//! Formats (the same list syntax in both places):
//! - **Tag** (`access_groups_tag = "KEY"`): the tag's value is a comma-separated list of access
//!   group names, e.g. `keyhole-access-groups=web-prod,db-prod`. An empty value means "no access
//!   groups": the way to take every team's access away from a running host on purpose.
//! - **User data** (`access_groups_user_data = true`): one line `keyhole-access-groups: web-prod,
//!   db-prod`, optionally behind `#` so that it sits as a comment in a shell script or a
//!   cloud-config file (`# keyhole-access-groups: web-prod`). Leading blanks are ignored. Two such
//!   lines are an error (which one would the operator mean?). Only text user data is read: a
//!   gzip'd or base64-encoded MIME part hides the line. The rest of the user data is never
//!   logged: it may hold secrets.
//!
//! With both set, the tag is asked first and the user data only when the instance has no such
//! tag or tags are not in its metadata: one AMI serves teams that launch either way. A name that
//! is not a valid access group name is reported and skipped; the others still count.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::Cache;
use super::imds::{Imds, ImdsFailure};
use crate::bucket::names::access_group_name_problem;
use crate::settings::{ImdsGroups, InstanceSettings};

/// The cache file with the last groups resolved from EC2.
pub const RESOLVED_FILE: &str = "host-groups.json";
/// The key of the user-data line (and a sensible tag key to use).
pub const USER_DATA_KEY: &str = "keyhole-access-groups";
/// One IMDS attempt; the real IMDS answers in milliseconds, a slow one is treated as down.
pub const IMDS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// All IMDS reads of one resolution together.
pub const IMDS_DEADLINE: Duration = Duration::from_secs(10);

/// The groups EC2 named for this host, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolved {
    /// Valid names, in the order given, without duplicates.
    pub groups: Vec<String>,
    /// Where they came from: `EC2 tag KEY` or `EC2 user data`.
    pub source: String,
    /// Unix time in milliseconds of the resolution.
    pub resolved_at_ms: u64,
    /// Names given that are not valid access group names (reported, not served).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<String>,
}

impl Resolved {
    pub fn age(&self, now: SystemTime) -> Duration {
        Duration::from_millis(super::unix_millis(now).saturating_sub(self.resolved_at_ms))
    }
}

/// The host's access groups for the login path: the static list, then the cached EC2 groups.
/// Reads one small file; never IMDS.
pub fn current(cache: &Cache, instance: &InstanceSettings) -> anyhow::Result<Vec<String>> {
    let mut groups = instance.access_groups.clone();
    if instance.imds.is_some()
        && let Some(resolved) = read_resolved(cache)?
    {
        for group in resolved.groups {
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
    }
    Ok(groups)
}

/// The cached resolution, if this host ever made one. A damaged file counts as none (and is
/// replaced by the next resolution), with a warning.
pub fn read_resolved(cache: &Cache) -> anyhow::Result<Option<Resolved>> {
    let path = cache.path(RESOLVED_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(anyhow::Error::new(error).context(format!("reading {}", path.display())));
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(resolved) => Ok(Some(resolved)),
        Err(error) => {
            tracing::warn!(path = %path.display(), "ignoring a damaged resolution of the host's access groups: {error}");
            Ok(None)
        }
    }
}

/// Replaces the cached resolution atomically (a login reads the old or the new file, whole).
pub fn write_resolved(cache: &Cache, resolved: &Resolved) -> anyhow::Result<()> {
    fs::create_dir_all(&cache.dir)
        .with_context(|| format!("creating the cache directory {}", cache.dir.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(&cache.dir)
        .with_context(|| format!("writing in the cache directory {}", cache.dir.display()))?;
    file.write_all(&serde_json::to_vec_pretty(resolved)?)?;
    file.write_all(b"\n")?;
    let target = cache.path(RESOLVED_FILE);
    file.persist(&target)
        .with_context(|| format!("replacing {}", target.display()))?;
    Ok(())
}

/// A comma-separated list of access group names: blanks trimmed, empty items and duplicates
/// dropped; invalid names go to the second list.
pub fn parse_list(value: &str) -> (Vec<String>, Vec<String>) {
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    let mut seen = BTreeSet::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !seen.insert(name) {
            continue;
        }
        if access_group_name_problem(name).is_some() {
            invalid.push(name.to_owned());
        } else {
            valid.push(name.to_owned());
        }
    }
    (valid, invalid)
}

/// The value of the `keyhole-access-groups:` line in the user data: `Ok(None)` without one,
/// an error with two or more (named by line number, never by content).
pub fn user_data_line(user_data: &str) -> Result<Option<String>, String> {
    let mut found: Vec<(usize, &str)> = Vec::new();
    for (number, line) in user_data.lines().enumerate() {
        let line = line.trim_start();
        let line = line.strip_prefix('#').unwrap_or(line).trim_start();
        if let Some(rest) = line.strip_prefix(USER_DATA_KEY)
            && let Some(value) = rest.trim_start().strip_prefix(':')
        {
            found.push((number + 1, value.trim()));
        }
    }
    match found.as_slice() {
        [] => Ok(None),
        [(_, value)] => Ok(Some((*value).to_owned())),
        several => Err(format!(
            "the user data has {} `{USER_DATA_KEY}:` lines (lines {}); keep exactly one",
            several.len(),
            several
                .iter()
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Why EC2 gave no groups this time, with what the operator should do.
#[derive(Debug, thiserror::Error)]
pub enum NotResolved {
    #[error("{0}")]
    Imds(#[from] ImdsFailure),
    #[error(
        "the instance's tags are not in its instance metadata (IMDS answers 404 for {}): enable them with `aws ec2 modify-instance-metadata-options --instance-id <id> --instance-metadata-tags enabled` (InstanceMetadataTags=enabled in the launch template), then tag the instance {key}=<access groups>",
        super::imds::TAGS_PATH
    )]
    TagsDisabled { key: String },
    #[error(
        "the instance has no tag {key}: tag it {key}=<access groups, comma-separated> (e.g. {key}=web-prod)"
    )]
    NoTag { key: String },
    #[error(
        "the user data has no `{USER_DATA_KEY}:` line: launch the instance with a user data line like `# {USER_DATA_KEY}: web-prod`"
    )]
    NoUserDataLine,
    #[error("{0}")]
    BadUserData(String),
    /// The tag did not answer and then neither did the user data: both reasons.
    #[error("{tag}; and {user_data}")]
    Neither {
        tag: Box<NotResolved>,
        user_data: Box<NotResolved>,
    },
}

impl NotResolved {
    /// Whether IMDS answered, definitively (404), that the instance has no such tag (and no
    /// user data line when that is a source too): the host's grant was removed. Everything else
    /// (IMDS down, slow, refusing, tags not in the metadata at all) says nothing about the grant,
    /// and the last resolved groups stay.
    pub fn revokes(&self) -> bool {
        match self {
            NotResolved::NoTag { .. } => true,
            NotResolved::Neither { tag, user_data } => {
                matches!(**tag, NotResolved::NoTag { .. })
                    && matches!(**user_data, NotResolved::NoUserDataLine)
            }
            _ => false,
        }
    }
}

fn absent_source(source: &ImdsGroups) -> String {
    match &source.tag {
        Some(key) => format!("EC2 tag {key}"),
        None => "EC2 user data".to_owned(),
    }
}

/// What to do on EC2 so that `source` can name this host's groups: said whenever a host has
/// never resolved any.
pub fn how_to_fix(source: &ImdsGroups) -> String {
    let mut ways = Vec::new();
    if let Some(key) = &source.tag {
        ways.push(format!(
            "launch (or modify) the instance with InstanceMetadataTags=enabled and tag it {key}=<access groups>"
        ));
    }
    if source.user_data {
        ways.push(format!(
            "put a line `# {USER_DATA_KEY}: <access groups>` in its user data"
        ));
    }
    format!(
        "{}; IMDS must be reachable at {} (HttpEndpoint=enabled, HttpTokens may be required)",
        ways.join(", or "),
        source.endpoint
    )
}

/// Asks IMDS for this host's groups (tag first, then user data) within [`IMDS_DEADLINE`].
pub async fn resolve(
    imds: &Imds,
    source: &ImdsGroups,
    now: SystemTime,
) -> Result<Resolved, NotResolved> {
    let work = async {
        let mut tag_failure = None;
        if let Some(key) = &source.tag {
            match from_tag(imds, key).await {
                Ok(value) => return Ok(resolved(&value, format!("EC2 tag {key}"), now)),
                // IMDS itself failing: the user data is behind the same service, and a fallback
                // to it could swap the groups on a blip. Keep what is cached instead.
                Err(error @ NotResolved::Imds(_)) => return Err(error),
                Err(error) => tag_failure = Some(error),
            }
        }
        if !source.user_data {
            return Err(tag_failure.unwrap_or(NotResolved::NoUserDataLine));
        }
        let user_data = match imds.user_data().await? {
            None => Err(NotResolved::NoUserDataLine),
            Some(text) => match user_data_line(&text) {
                Ok(Some(value)) => Ok(value),
                Ok(None) => Err(NotResolved::NoUserDataLine),
                Err(problem) => Err(NotResolved::BadUserData(problem)),
            },
        };
        match (user_data, tag_failure) {
            (Ok(value), _) => Ok(resolved(&value, "EC2 user data".to_owned(), now)),
            (Err(user_data), Some(tag)) => Err(NotResolved::Neither {
                tag: Box::new(tag),
                user_data: Box::new(user_data),
            }),
            (Err(user_data), None) => Err(user_data),
        }
    };
    match tokio::time::timeout(IMDS_DEADLINE, work).await {
        Ok(result) => result,
        Err(_) => Err(NotResolved::Imds(ImdsFailure::Unreachable {
            endpoint: imds.endpoint().to_owned(),
            path: "(all reads)".to_owned(),
            cause: format!("no answer within {IMDS_DEADLINE:?}"),
        })),
    }
}

async fn from_tag(imds: &Imds, key: &str) -> Result<String, NotResolved> {
    let Some(keys) = imds.tag_keys().await? else {
        return Err(NotResolved::TagsDisabled {
            key: key.to_owned(),
        });
    };
    if !keys.iter().any(|k| k == key) {
        return Err(NotResolved::NoTag {
            key: key.to_owned(),
        });
    }
    imds.tag(key).await?.ok_or_else(|| NotResolved::NoTag {
        key: key.to_owned(),
    })
}

fn resolved(value: &str, source: String, now: SystemTime) -> Resolved {
    let (groups, invalid) = parse_list(value);
    Resolved {
        groups,
        source,
        resolved_at_ms: super::unix_millis(now),
        invalid,
    }
}

/// `refresh`'s step: resolve from IMDS on a small runtime of its own and cache the result.
/// On failure the cached resolution is left as it was.
pub fn refresh(
    cache: &Cache,
    source: &ImdsGroups,
    now: SystemTime,
) -> anyhow::Result<Result<Resolved, NotResolved>> {
    let imds = Imds::new(&source.endpoint, IMDS_ATTEMPT_TIMEOUT)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = match runtime.block_on(resolve(&imds, source, now)) {
        // IMDS said, definitively, that the tag is not there: the grant is gone. A host whose
        // tag was removed serves no access group from EC2 any more (only the static list).
        Err(failure) if failure.revokes() => {
            tracing::warn!(
                event = "access_groups_tag_absent",
                "{failure}: this host now has no access groups from EC2 (a removed tag revokes \
                 them)"
            );
            Ok(Resolved {
                groups: Vec::new(),
                source: format!("{} (absent)", absent_source(source)),
                resolved_at_ms: super::unix_millis(now),
                invalid: Vec::new(),
            })
        }
        outcome => outcome,
    };
    if let Ok(resolved) = &outcome {
        let unchanged = read_resolved(cache)?.is_some_and(|cached| {
            cached.groups == resolved.groups
                && cached.source == resolved.source
                && cached.invalid == resolved.invalid
        });
        // Rewritten even when unchanged: its time says when EC2 last confirmed the groups.
        write_resolved(cache, resolved)?;
        if !unchanged {
            tracing::info!(groups = ?resolved.groups, source = %resolved.source, "this host's access groups changed");
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_trimmed_deduplicated_and_invalid_names_set_apart() {
        let (valid, invalid) = parse_list(" web-prod,db-prod ,, web-prod, Web Prod,x/y");
        assert_eq!(valid, ["web-prod", "db-prod"]);
        assert_eq!(invalid, ["Web Prod", "x/y"]);
        assert_eq!(parse_list(""), (vec![], vec![]));
    }

    #[test]
    fn the_user_data_line_may_be_a_comment_and_must_be_alone() {
        let script = "#!/bin/bash\n# keyhole-access-groups: web-prod, db-prod\nyum -y install x\n";
        assert_eq!(
            user_data_line(script),
            Ok(Some("web-prod, db-prod".to_owned()))
        );
        let cloud_config = "#cloud-config\n  #keyhole-access-groups:web-prod\npackages: [x]\n";
        assert_eq!(
            user_data_line(cloud_config),
            Ok(Some("web-prod".to_owned()))
        );
        assert_eq!(
            user_data_line("keyhole-access-groups : \n"),
            Ok(Some(String::new()))
        );
        assert_eq!(user_data_line("echo keyhole-access-groups: x\n"), Ok(None));
        assert_eq!(user_data_line("keyhole-access-groups-old: x\n"), Ok(None));
        let twice = "# keyhole-access-groups: a\nSECRET=hunter2\n# keyhole-access-groups: b\n";
        let error = user_data_line(twice).unwrap_err();
        assert!(error.contains("lines 1, 3"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn the_login_path_serves_static_groups_then_the_cached_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let mut instance = InstanceSettings {
            login_user: "ec2-user".into(),
            access_groups: vec!["sre".into()],
            cache_dir: dir.path().to_path_buf(),
            cache_ttl: Duration::from_secs(300),
            max_stale: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(3),
            verify_key: None,
            allow_unsigned: true,
            imds: Some(ImdsGroups {
                tag: Some("keyhole-access-groups".into()),
                user_data: false,
                endpoint: "http://127.0.0.1:9".into(),
            }),
            revoked_keys_file: Some(dir.path().join("revoked_keys")),
        };
        // Never resolved: only the static list.
        assert_eq!(current(&cache, &instance).unwrap(), ["sre"]);
        write_resolved(
            &cache,
            &Resolved {
                groups: vec!["web-prod".into(), "sre".into()],
                source: "EC2 tag keyhole-access-groups".into(),
                resolved_at_ms: 1,
                invalid: vec![],
            },
        )
        .unwrap();
        assert_eq!(current(&cache, &instance).unwrap(), ["sre", "web-prod"]);
        // A damaged file is no resolution.
        std::fs::write(dir.path().join(RESOLVED_FILE), b"{").unwrap();
        assert_eq!(current(&cache, &instance).unwrap(), ["sre"]);
        // Without an EC2 source a stale file is ignored.
        instance.imds = None;
        assert_eq!(current(&cache, &instance).unwrap(), ["sre"]);
    }
}
