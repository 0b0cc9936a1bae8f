//! `[safety]` and `[signing]`: the publisher's guard against removing too many people at once,
//! its lock, and how long a signed index stays valid.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::Checker;

#[derive(Debug, Clone)]
pub struct SafetySettings {
    pub max_removed_fraction: f64,
    pub max_removed_users: usize,
    pub lock_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SigningSettings {
    pub key_file: PathBuf,
    pub validity: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSafety {
    max_removed_fraction: Option<f64>,
    max_removed_users: Option<i64>,
    pub(super) lock_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSigning {
    key_file: Option<String>,
    validity: Option<String>,
}

/// The longest `[signing] validity` (see `crate::bucket::index::MAX_VALIDITY`).
pub const MAX_SIGNING_VALIDITY: Duration = crate::bucket::index::MAX_VALIDITY;

/// `safety.lock_file` when the file does not say (the bind state file's default lives beside it).
pub(super) const DEFAULT_LOCK_FILE: &str = "/run/keyhole/publish.lock";

pub(super) fn validate(raw: RawSafety, check: &mut Checker) -> SafetySettings {
    const S: &str = "safety";
    let max_removed_fraction = raw.max_removed_fraction.unwrap_or(0.25);
    if !(0.0..=1.0).contains(&max_removed_fraction) {
        check.error(
            S,
            "max_removed_fraction",
            format!("{max_removed_fraction} is not between 0 and 1 (a fraction: 0.25 is a quarter of everyone)"),
        );
    }
    let max_removed_users = raw.max_removed_users.unwrap_or(20);
    if max_removed_users < 0 {
        check.error(
            S,
            "max_removed_users",
            "must not be negative (0 refuses any removal without --force)",
        );
    }
    SafetySettings {
        max_removed_fraction,
        max_removed_users: usize::try_from(max_removed_users).unwrap_or(0),
        lock_file: check.path(raw.lock_file.as_deref().unwrap_or(DEFAULT_LOCK_FILE)),
    }
}

/// `[signing]`: `None` when the key file is missing (reported).
pub(super) fn validate_signing(raw: RawSigning, check: &mut Checker) -> Option<SigningSettings> {
    const S: &str = "signing";
    let key_file = check.required(S, "key_file", raw.key_file)?;
    let validity = check.duration(S, "validity", raw.validity.as_deref(), "7d");
    if validity > MAX_SIGNING_VALIDITY {
        // Instances refuse an index whose not_after lies further ahead than this: a longer
        // validity would be a replay window, and would be refused anyway.
        check.error(
            S,
            "validity",
            format!(
                "must be at most {} (instances refuse an index valid for longer)",
                humantime::format_duration(MAX_SIGNING_VALIDITY)
            ),
        );
    }
    Some(SigningSettings {
        key_file: check.path(&key_file),
        validity,
    })
}
