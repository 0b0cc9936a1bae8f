//! `[homes]`: where the publisher reads people's `authorized_keys` (the NFS homes), how fast,
//! and whose uid must own them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::Checker;

#[derive(Debug, Clone)]
pub struct HomesSettings {
    pub root: PathBuf,
    pub home_prefix: PathBuf,
    pub read_timeout: Duration,
    pub concurrency: usize,
    /// Whose uid the files in a home must belong to.
    pub owner: OwnerSource,
    /// `[homes] sentinel`: a file, relative to `root`, that exists only while the homes are
    /// mounted; when it is missing the run fails before anything is written.
    pub sentinel: Option<PathBuf>,
    /// `[homes] max_carry`: how long a member's published lines are carried while their home is
    /// continuously unreadable; after it they have no keys (reported).
    pub max_carry: Duration,
    /// `[homes] full_read_interval`: how often every member's `authorized_keys` is read whole
    /// even when its identity did not change (see `crate::publisher::homes_state`); between
    /// full reads only the homes whose identity changed are read.
    pub full_read_interval: Duration,
}

/// `[homes] owner`: where the uid that must own a user's home, `.ssh` and `authorized_keys`
/// comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerSource {
    /// `"uid_number"` (default): the account's RFC 2307 `uidNumber` in AD.
    UidNumber,
    /// `"nss"`: the publisher's own name service (`getpwnam`) for the sAMAccountName followed by
    /// `suffix` (`[homes] nss_suffix`, e.g. `@corp.example.com`), as SSSD or winbind map it.
    Nss { suffix: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHomes {
    root: Option<String>,
    home_prefix: Option<String>,
    read_timeout: Option<String>,
    concurrency: Option<i64>,
    owner: Option<String>,
    nss_suffix: Option<String>,
    sentinel: Option<String>,
    max_carry: Option<String>,
    full_read_interval: Option<String>,
}

pub(super) fn validate(raw: RawHomes, check: &mut Checker) -> HomesSettings {
    const S: &str = "homes";
    HomesSettings {
        root: check.path(raw.root.as_deref().unwrap_or("/home")),
        home_prefix: PathBuf::from(raw.home_prefix.as_deref().unwrap_or("/home")),
        read_timeout: check.duration(S, "read_timeout", raw.read_timeout.as_deref(), "5s"),
        concurrency: check.positive(S, "concurrency", raw.concurrency, 32) as usize,
        owner: match raw.owner.as_deref().map(str::trim) {
            None | Some("uid_number") => OwnerSource::UidNumber,
            Some("nss") => OwnerSource::Nss {
                suffix: raw.nss_suffix.unwrap_or_default(),
            },
            Some(other) => {
                check.error(
                    S,
                    "owner",
                    format!("{other:?} is neither \"uid_number\" nor \"nss\""),
                );
                OwnerSource::UidNumber
            }
        },
        sentinel: raw.sentinel.as_deref().map(|sentinel| {
            let sentinel = PathBuf::from(sentinel);
            // Relative, so it names a file on the mounted filesystem and never one beside it.
            if sentinel.is_absolute()
                || sentinel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                check.error(
                    S,
                    "sentinel",
                    "must be a path relative to homes.root, without `..`",
                );
            }
            sentinel
        }),
        max_carry: check.duration(S, "max_carry", raw.max_carry.as_deref(), "7d"),
        full_read_interval: check.duration(
            S,
            "full_read_interval",
            raw.full_read_interval.as_deref(),
            "1h",
        ),
    }
}
