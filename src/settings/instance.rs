//! `[instance]`: what an instance serves to sshd (its login user, its access groups, static or
//! from EC2 metadata) and how long its cache may answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::check::{Checker, check_non_empty};

#[derive(Debug, Clone)]
pub struct InstanceSettings {
    pub login_user: String,
    pub access_groups: Vec<String>,
    pub cache_dir: PathBuf,
    pub cache_ttl: Duration,
    pub max_stale: Duration,
    pub fetch_timeout: Duration,
    pub verify_key: Option<String>,
    /// Serve an index without checking a signature (no `verify_key`): an explicit choice, logged
    /// at every refresh, because then whoever can write to the bucket decides who logs in.
    pub allow_unsigned: bool,
    /// Where the host's access groups come from besides `access_groups`: the EC2 instance's
    /// identity, read from IMDS by `refresh` (never at login). `None`: the static list only.
    pub imds: Option<ImdsGroups>,
    /// `[instance] revoked_keys_file`: where `refresh` writes the revocation list for sshd's
    /// `RevokedKeys`. `None`: the default path, written only when a file (the package's) is
    /// there (see [`InstanceSettings::revoked_keys_path`]).
    pub revoked_keys_file: Option<PathBuf>,
}

impl InstanceSettings {
    /// The file sshd's `RevokedKeys` should name: `revoked_keys_file`, else the default.
    pub fn revoked_keys_path(&self) -> &Path {
        self.revoked_keys_file
            .as_deref()
            .unwrap_or(Path::new(crate::instance::revoked::DEFAULT_FILE))
    }
}

/// `[instance] access_groups_tag`, `access_groups_user_data` and `imds_endpoint`: the host's
/// access groups named at launch, in an EC2 tag or in the user data (see
/// [`crate::instance::host_groups`] for the formats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsGroups {
    /// The tag key whose value lists the groups (comma-separated); asked first.
    pub tag: Option<String>,
    /// Whether the user data is read when the tag does not answer.
    pub user_data: bool,
    /// The metadata service, default `http://169.254.169.254`.
    pub endpoint: String,
}

/// IMDS's link-local address: the only endpoint a real instance uses.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstance {
    login_user: Option<String>,
    access_groups: Option<Vec<String>>,
    cache_dir: Option<String>,
    cache_ttl: Option<String>,
    max_stale: Option<String>,
    fetch_timeout: Option<String>,
    verify_key: Option<String>,
    allow_unsigned: Option<bool>,
    access_groups_tag: Option<String>,
    access_groups_user_data: Option<bool>,
    imds_endpoint: Option<String>,
    revoked_keys_file: Option<String>,
}

pub(super) fn validate(raw: RawInstance, check: &mut Checker) -> Option<InstanceSettings> {
    const S: &str = "instance";
    let login_user = check.required(S, "login_user", check_non_empty(raw.login_user));
    let access_groups = raw.access_groups.unwrap_or_default();
    let imds = validate_imds_groups(
        raw.access_groups_tag,
        raw.access_groups_user_data.unwrap_or(false),
        raw.imds_endpoint,
        check,
    );
    if access_groups.is_empty() && imds.is_none() {
        check.error(
            S,
            "access_groups",
            "must name at least one access group (or set access_groups_tag or access_groups_user_data)",
        );
    }
    let cache_ttl = check.duration(S, "cache_ttl", raw.cache_ttl.as_deref(), "5m");
    let max_stale = check.duration(S, "max_stale", raw.max_stale.as_deref(), "24h");
    if max_stale < cache_ttl {
        check.error(S, "max_stale", "must not be shorter than cache_ttl");
    }
    Some(InstanceSettings {
        login_user: login_user?,
        access_groups,
        cache_dir: check.path(raw.cache_dir.as_deref().unwrap_or("/var/cache/keyhole")),
        cache_ttl,
        max_stale,
        fetch_timeout: check.duration(S, "fetch_timeout", raw.fetch_timeout.as_deref(), "3s"),
        verify_key: check.non_empty(S, "verify_key", raw.verify_key),
        allow_unsigned: raw.allow_unsigned.unwrap_or(false),
        imds,
        revoked_keys_file: raw
            .revoked_keys_file
            .as_deref()
            .map(|path| check.path(path)),
    })
}

/// The EC2 sources of the host's access groups. A tag key is what EC2 allows in instance
/// metadata: no spaces, no `/` (it becomes a path segment), at most 128 characters.
fn validate_imds_groups(
    tag: Option<String>,
    user_data: bool,
    endpoint: Option<String>,
    check: &mut Checker,
) -> Option<ImdsGroups> {
    const S: &str = "instance";
    let tag = check.non_empty(S, "access_groups_tag", tag);
    if let Some(key) = &tag
        && (key.len() > 128 || key.contains(['/', ' ']) || key.chars().any(char::is_control))
    {
        check.error(
            S,
            "access_groups_tag",
            format!(
                "{key:?} cannot be read from instance metadata: EC2 serves only tag keys of at most 128 characters without spaces or '/'"
            ),
        );
    }
    let endpoint = check.non_empty(S, "imds_endpoint", endpoint);
    if let Some(url) = &endpoint
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        check.error(
            S,
            "imds_endpoint",
            format!("{url:?} must start with http://"),
        );
    }
    if tag.is_none() && !user_data {
        if endpoint.is_some() {
            check.error(
                S,
                "imds_endpoint",
                "is used only with access_groups_tag or access_groups_user_data",
            );
        }
        return None;
    }
    Some(ImdsGroups {
        tag,
        user_data,
        endpoint: endpoint.unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned()),
    })
}
