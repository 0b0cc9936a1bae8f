//! `[keys]`: which keys the keys stage accepts, how many per person, and how long a key that
//! stopped being published stays on the revocation list.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::check::Checker;
use crate::keys::{self, KeyPolicy};

/// `[keys]`, checked.
pub(super) struct Checked {
    pub(super) keys: KeyPolicy,
    pub(super) max_keys_per_user: usize,
    pub(super) revocation_retention: Duration,
}

pub(super) fn validate(raw: RawKeys, check: &mut Checker) -> Checked {
    let max_keys_per_user = check.positive(
        "keys",
        "max_keys_per_user",
        raw.max_keys_per_user,
        i64::from(keys::DEFAULT_MAX_KEYS_PER_USER),
    ) as usize;
    let revocation_retention = check.duration(
        "keys",
        "revocation_retention",
        raw.revocation_retention.as_deref(),
        "90d",
    );
    Checked {
        keys: validate_key_policy(raw, check),
        max_keys_per_user,
        revocation_retention,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeys {
    allowed_types: Option<Vec<String>>,
    min_rsa_bits: Option<i64>,
    forbidden_options: Option<Vec<String>>,
    max_keys_per_user: Option<i64>,
    revocation_retention: Option<String>,
}

fn validate_key_policy(raw: RawKeys, check: &mut Checker) -> KeyPolicy {
    const S: &str = "keys";
    let defaults = KeyPolicy::default();
    let allowed_types: BTreeSet<String> = match raw.allowed_types {
        Some(types) => types.into_iter().collect(),
        None => defaults.allowed_types,
    };
    if allowed_types.contains("ssh-dss") {
        check.error(
            S,
            "allowed_types",
            "ssh-dss is never allowed (DSA keys are broken)",
        );
    }
    for unknown in allowed_types
        .iter()
        .filter(|t| *t != "ssh-dss" && !keys::SUPPORTED_KEY_TYPES.contains(&t.as_str()))
    {
        check.error(
            S,
            "allowed_types",
            format!(
                "{unknown:?} is not a key type keyhole can check (one of {})",
                keys::SUPPORTED_KEY_TYPES.join(", ")
            ),
        );
    }
    if allowed_types.is_empty() {
        check.error(S, "allowed_types", "must allow at least one key type");
    }
    let min_rsa_bits = check.positive(
        S,
        "min_rsa_bits",
        raw.min_rsa_bits,
        i64::from(keys::DEFAULT_MIN_RSA_BITS),
    );
    if min_rsa_bits < keys::DEFAULT_MIN_RSA_BITS {
        check.error(
            S,
            "min_rsa_bits",
            format!("{min_rsa_bits} is below the safe minimum of 2048"),
        );
    }
    let forbidden_options: BTreeSet<String> = match raw.forbidden_options {
        Some(options) => options
            .into_iter()
            .map(|option| option.to_lowercase())
            .collect(),
        None => defaults.forbidden_options,
    };
    // A misspelt option would silently forbid nothing.
    for unknown in forbidden_options
        .iter()
        .filter(|o| !keys::is_sshd_option_name(o))
    {
        check.error(
            S,
            "forbidden_options",
            format!("{unknown:?} is not an authorized_keys option sshd knows"),
        );
    }
    KeyPolicy {
        allowed_types,
        min_rsa_bits,
        forbidden_options,
    }
}
