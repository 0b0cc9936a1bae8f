//! What makes a verified index the *current* one: the rules every reader of the bucket applies
//! after the signature checks out, so that a state one reader refuses is never "clean" to another.
//!
//! A valid signature says the publisher wrote an index once, not that it is the one to serve now:
//! whoever can write to the bucket can put back an older signed index. So a reader also checks
//! - the deployment (`s3://bucket/prefix`) the index names, required once it is signed;
//! - the format: an instance that has trusted a format-2 index never goes back to the legacy
//!   format 1 (which names no deployment and no owners);
//! - `not_after`: not passed, and not further ahead of the reader's clock than
//!   [`MAX_VALIDITY`](crate::bucket::index::MAX_VALIDITY) (+ [`CLOCK_SKEW`](crate::bucket::index::CLOCK_SKEW));
//! - what the reader trusted last ([`Seen`]: an instance's cached index, the publisher's head):
//!   never a lower generation, never the same generation with other bytes.
//!
//! Instances (`instance::refresh`), `verify` and `whois` call these; the publisher applies the
//! same rules to its base index in `published`, with its explicit operator overrides.
//! Pure: the caller passes the clock in.

use std::time::SystemTime;

use crate::bucket::index::{CLOCK_SKEW, FORMAT, Index, MAX_VALIDITY};
use crate::bucket::signing;

/// The index a reader trusted last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub generation: u64,
    /// Hex SHA-256 of its envelope bytes.
    pub sha256: String,
    pub format: u32,
    /// Where the reader learnt it, for messages ("the cached index", "the publisher's head …").
    pub source: String,
}

/// Why an index is not the current one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Untrusted {
    #[error("{0}")]
    Deployment(String),
    #[error(
        "it is in the legacy format 1, and {0} is format 2: a format-1 index names no deployment, \
         so it may be another deployment's (or an old one) replayed"
    )]
    Legacy(String),
    #[error("it is signed but has no not_after")]
    NoNotAfter,
    #[error("it expired at {0} (is the publisher running?)")]
    Expired(String),
    #[error(
        "its not_after {0} lies further ahead than the longest validity keyhole allows (30 days): \
         not an index a keyhole publisher signs, or a clock far off"
    )]
    TooFarAhead(String),
    #[error("generation {found} is older than generation {seen} of {by} (rollback or replay)")]
    Rollback { found: u64, seen: u64, by: String },
    #[error(
        "it is generation {generation} with SHA-256 {found}, but {by} holds generation \
         {generation} with SHA-256 {seen} (a replayed generation, or two publishers)"
    )]
    Fork {
        generation: u64,
        found: String,
        seen: String,
        by: String,
    },
    #[error("{0}")]
    Time(String),
}

/// The format rule: a reader that trusted format 2 refuses format 1.
pub fn check_format(index: &Index, seen_format: Option<(u32, &str)>) -> Result<(), Untrusted> {
    match seen_format {
        Some((format, source)) if index.is_legacy() && format >= FORMAT => {
            Err(Untrusted::Legacy(source.to_owned()))
        }
        _ => Ok(()),
    }
}

/// The validity rule for a signed index: it has a `not_after`, not passed and not too far ahead.
pub fn check_validity(index: &Index, now: SystemTime) -> Result<(), Untrusted> {
    let not_after = index.not_after.as_deref().ok_or(Untrusted::NoNotAfter)?;
    let at = signing::parse_time(not_after).map_err(|e| Untrusted::Time(e.to_string()))?;
    if at <= now {
        return Err(Untrusted::Expired(not_after.to_owned()));
    }
    if at > now + MAX_VALIDITY + CLOCK_SKEW {
        return Err(Untrusted::TooFarAhead(not_after.to_owned()));
    }
    Ok(())
}

/// The succession rule: never older than what was trusted last, never the same generation with
/// other bytes.
pub fn check_successor(index: &Index, sha256: &str, seen: &Seen) -> Result<(), Untrusted> {
    if index.generation < seen.generation {
        return Err(Untrusted::Rollback {
            found: index.generation,
            seen: seen.generation,
            by: seen.source.clone(),
        });
    }
    if index.generation == seen.generation && sha256 != seen.sha256 {
        return Err(Untrusted::Fork {
            generation: index.generation,
            found: sha256.to_owned(),
            seen: seen.sha256.clone(),
            by: seen.source.clone(),
        });
    }
    Ok(())
}

/// Every rule an instance applies to an index whose signature (when `signed`) checked out.
pub fn check(
    index: &Index,
    sha256: &str,
    deployment: &str,
    signed: bool,
    seen: Option<&Seen>,
    now: SystemTime,
) -> Result<(), Untrusted> {
    index
        .check_deployment(deployment, signed)
        .map_err(|e| Untrusted::Deployment(e.to_string()))?;
    check_format(index, seen.map(|seen| (seen.format, seen.source.as_str())))?;
    if signed {
        check_validity(index, now)?;
    }
    if let Some(seen) = seen {
        check_successor(index, sha256, seen)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::bucket::index::LEGACY_FORMAT;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);

    fn index(generation: u64, valid_for: Duration, now: SystemTime) -> Index {
        Index {
            generation,
            not_after: Some(signing::format_time(now + valid_for)),
            deployment: Some("s3://b/ssh/".into()),
            ..Index::empty()
        }
    }

    fn seen(generation: u64, sha256: &str, format: u32) -> Seen {
        Seen {
            generation,
            sha256: sha256.into(),
            format,
            source: "the cached index".into(),
        }
    }

    #[test]
    fn each_rule_refuses_its_state_and_a_successor_passes() {
        let now = SystemTime::now();
        let good = index(5, 7 * DAY, now);
        let last = seen(4, "aa", FORMAT);
        check(&good, "bb", "s3://b/ssh/", true, Some(&last), now).unwrap();
        // Another deployment.
        assert!(matches!(
            check(&good, "bb", "s3://other/ssh/", true, None, now),
            Err(Untrusted::Deployment(_))
        ));
        // Expired, and too far ahead (31 days; 30 days passes).
        let old = index(5, Duration::ZERO, now - DAY);
        assert!(matches!(
            check_validity(&old, now),
            Err(Untrusted::Expired(_))
        ));
        check_validity(&index(5, 30 * DAY, now), now).unwrap();
        assert!(matches!(
            check_validity(&index(5, 31 * DAY, now), now),
            Err(Untrusted::TooFarAhead(_))
        ));
        // Rollback and fork.
        assert!(matches!(
            check(
                &good,
                "bb",
                "s3://b/ssh/",
                true,
                Some(&seen(6, "cc", FORMAT)),
                now
            ),
            Err(Untrusted::Rollback { .. })
        ));
        assert!(matches!(
            check(
                &good,
                "bb",
                "s3://b/ssh/",
                true,
                Some(&seen(5, "cc", FORMAT)),
                now
            ),
            Err(Untrusted::Fork { .. })
        ));
        check(
            &good,
            "bb",
            "s3://b/ssh/",
            true,
            Some(&seen(5, "bb", FORMAT)),
            now,
        )
        .unwrap();
        // Format 1 after format 2, but not before.
        let legacy = Index {
            format: LEGACY_FORMAT,
            deployment: None,
            ..index(9, 7 * DAY, now)
        };
        assert!(matches!(
            check(&legacy, "dd", "s3://b/ssh/", true, Some(&last), now),
            Err(Untrusted::Legacy(_))
        ));
        check(
            &legacy,
            "dd",
            "s3://b/ssh/",
            true,
            Some(&seen(4, "aa", LEGACY_FORMAT)),
            now,
        )
        .unwrap();
    }
}
