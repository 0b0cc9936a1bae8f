//! The policy file, `access-groups.toml`: which AD users and groups may log in to which access
//! group, the fixed admin list (`[everywhere]`) and the incident-response `[deny]` list.
//!
//! This module owns reading that file and validating it completely: every problem (syntax, unknown
//! keys, wrong types, bad names, duplicates, empty groups, malformed fingerprints) becomes a
//! [`Diagnostic`] pinned to its `FILE:LINE:COL`, and all of them are reported at once, not only the
//! first. It never talks to AD: whether a named user or group exists is the directory's business,
//! because AD changes faster than this file (SPEC.md "The policy").
//!
//! Names are kept as written. AD compares sAMAccountNames case-insensitively, so every consumer
//! must too; the validation here already treats `Bob` and `bob` as the same principal.
//!
//! Three features beyond names (README "Automation accounts, expiring grants, restrictions"):
//! - A user or group entry may be `{ name = "carol", until = 2027-03-31 }`: the grant counts
//!   through the end of that day, UTC (an RFC 3339 time with an offset, `until =
//!   2027-03-31T18:00:00Z`, ends it at that instant instead; a local time without an offset is
//!   refused as ambiguous). Parsing is pure: whether a grant has ended is decided by whoever
//!   holds the clock (`resolve`, `check`).
//! - `[automation.NAME]`: keys from files next to the policy, published as the member
//!   `automation:NAME` (`:` can never be in an AD sAMAccountName, so it never collides with a
//!   person). Key file paths must be relative and stay inside the policy's directory: the
//!   policy must not be able to publish, say, `/root/.ssh/id_ed25519.pub` of the publisher host.
//! - `[access_groups.X] options = [...]`: restrictions added to every key line of the group (see
//!   `keys::merge` for which options and how they merge).

mod check;
pub mod diff;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use serde::Serialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::bucket::names::access_group_name_problem;
use crate::diagnostic::{self, Diagnostic, Severity, Source, did_you_mean};
use crate::exit::{Exit, coded};

/// A validated policy. Built only when the file has no errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Added to every access group.
    pub everywhere: Principals,
    /// Keyed by access group name; the name is also in [`AccessGroup::name`].
    pub access_groups: BTreeMap<String, AccessGroup>,
    /// Removed everywhere, whatever AD or the rest of the policy says.
    pub deny: Deny,
    /// Automation accounts by name (without the `automation:` prefix).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub automation: BTreeMap<String, Automation>,
}

/// How an automation account's member name starts in group files, reports and `whois`.
pub const AUTOMATION_PREFIX: &str = "automation:";

/// `[automation.NAME]`: an account with keys from the policy repository instead of a home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Automation {
    pub name: String,
    /// As written: relative to the policy file's directory.
    pub key_files: Vec<String>,
    /// Empty when `everywhere`.
    pub access_groups: Vec<String>,
    pub everywhere: bool,
    /// The person or team answerable for it.
    pub owner: String,
    /// The AD account that must be enabled for the keys to be published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_account: Option<String>,
}

impl Automation {
    /// The member name the account has in group files: `automation:NAME`.
    pub fn member(&self) -> String {
        format!("{AUTOMATION_PREFIX}{}", self.name)
    }

    /// The `via` chain shown for the account: who answers for it.
    pub fn via(&self) -> String {
        format!("owner {}", self.owner)
    }

    /// Whether the account's keys go to `access_group`.
    pub fn grants(&self, access_group: &str) -> bool {
        self.everywhere || self.access_groups.iter().any(|g| g == access_group)
    }
}

/// When a grant ends. Ordered by the instant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Until {
    /// Seconds since the Unix epoch from which the grant no longer counts.
    pub ends_at: i64,
    /// As written in the policy: `2027-03-31`.
    pub text: String,
}

impl Until {
    pub fn has_ended(&self, now: std::time::SystemTime) -> bool {
        unix_seconds(now) >= self.ends_at
    }

    /// Whether the grant ends within `window` of `now` (or already has).
    pub fn ends_within(&self, now: std::time::SystemTime, window: std::time::Duration) -> bool {
        unix_seconds(now).saturating_add(i64::try_from(window.as_secs()).unwrap_or(i64::MAX))
            >= self.ends_at
    }
}

impl fmt::Display for Until {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Until {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_seconds(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The instant a TOML date or offset date-time `until` ends a grant, or why it cannot.
fn until_of(datetime: &toml::value::Datetime) -> Result<i64, String> {
    let Some(date) = datetime.date else {
        return Err("`until` needs a date, like `until = 2027-03-31`".into());
    };
    let (year, month, day) = (
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let days = days_from_civil(year, month, day);
    match (datetime.time, datetime.offset) {
        // Through the end of that day, UTC.
        (None, _) => Ok((days + 1) * 86_400),
        (Some(time), Some(offset)) => {
            let offset_minutes = match offset {
                toml::value::Offset::Z => 0,
                toml::value::Offset::Custom { minutes } => i64::from(minutes),
            };
            Ok(days * 86_400
                + i64::from(time.hour) * 3600
                + i64::from(time.minute) * 60
                + i64::from(time.second)
                - offset_minutes * 60)
        }
        (Some(_), None) => Err(
            "a local date-time is ambiguous: write a date (`until = 2027-03-31`, through the end of that day UTC) or a time with an offset (`2027-03-31T18:00:00Z`)"
                .into(),
        ),
    }
}

/// A time-limited entry of the policy, with where it is, for `check`'s warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `user `carol` in [access_groups.web]`.
    pub what: String,
    pub until: Until,
    pub line: usize,
    pub column: usize,
}

/// An automation key file entry, with where it is written, for `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileEntry {
    pub automation: String,
    pub path: String,
    pub line: usize,
    pub column: usize,
}

/// AD principals by sAMAccountName, in file order. Compare them case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Principals {
    pub users: Vec<String>,
    /// Groups whose members (nested, transitively) are granted access.
    pub groups: Vec<String>,
    /// End dates of time-limited user entries, by lower-cased name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub users_until: BTreeMap<String, Until>,
    /// End dates of time-limited group entries, by lower-cased name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups_until: BTreeMap<String, Until>,
}

impl Principals {
    /// When the entry for user `name` ends, if it does.
    pub fn user_until(&self, name: &str) -> Option<&Until> {
        self.users_until.get(&name.to_lowercase())
    }

    /// When the entry for group `name` ends, if it does.
    pub fn group_until(&self, name: &str) -> Option<&Until> {
        self.groups_until.get(&name.to_lowercase())
    }
}

/// One access group: the unit a server is configured with, and one published authorized_keys file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessGroup {
    pub name: String,
    pub description: Option<String>,
    pub principals: Principals,
    /// Restrictions added to every key line of the group, each as written (see `keys::merge`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The incident-response list: these users and keys get no access anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Deny {
    pub users: Vec<String>,
    /// `SHA256:` + 43 characters of unpadded base64, as `ssh-keygen -lf` prints them.
    pub fingerprints: Vec<String>,
}

/// Parsed policy plus its warnings; Err holds every diagnostic (errors and warnings) when invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
    /// Every time-limited entry, for `check`'s clean-up warnings (which need the clock).
    pub grants: Vec<Grant>,
    /// Every automation key file entry, for `check` to read offline.
    pub key_files: Vec<KeyFileEntry>,
}

/// The policy has at least one error. Holds every diagnostic, errors and warnings, sorted by
/// position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the policy has {}", counts(&self.diagnostics))?;
        for diagnostic in &self.diagnostics {
            write!(f, "\n{diagnostic}")?;
        }
        Ok(())
    }
}

/// "2 errors, 1 warning", "1 error": the tally a summary line shows.
pub fn counts(diagnostics: &[Diagnostic]) -> String {
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics.len() - errors;
    let mut parts = Vec::new();
    if errors > 0 || warnings == 0 {
        parts.push(plural(errors, "error"));
    }
    if warnings > 0 {
        parts.push(plural(warnings, "warning"));
    }
    parts.join(", ")
}

/// "1 warning", "3 access groups".
pub fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Reads and validates the policy at `path`. An unreadable file is a runtime failure; an invalid
/// one is marked [`Exit::Invalid`] and its message lists every diagnostic.
pub fn load(path: &Path) -> anyhow::Result<Checked> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading policy {}", path.display()))?;
    parse_bytes(path, &bytes).map_err(|invalid| {
        coded(Exit::Invalid, invalid).context(format!("policy {}", path.display()))
    })
}

/// Like [`parse`], for the raw bytes of a file: text that is not UTF-8 is a diagnostic, not an
/// I/O failure, because it is the file's content that is wrong.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Checked, Invalid> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(path, text),
        Err(error) => {
            let valid = &bytes[..error.valid_up_to()];
            // The valid prefix is UTF-8 by construction; locate the bad byte within it.
            let prefix = std::str::from_utf8(valid).unwrap_or_default();
            let source = Source::new(path, prefix);
            Err(Invalid {
                diagnostics: vec![source.error(
                    prefix.len()..prefix.len(),
                    "the policy is not valid UTF-8 (TOML files must be UTF-8)",
                )],
            })
        }
    }
}

/// Parses and validates a policy. Pure: `path` only names the file in diagnostics.
pub fn parse(path: &Path, text: &str) -> Result<Checked, Invalid> {
    let source = Source::new(path, text);
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(error) => {
            // Only the first syntax error: after one, the parser's recovery produces cascades of
            // follow-on errors that point away from the real mistake.
            let span = error.span().unwrap_or(0..0);
            let message = format!("invalid TOML: {}", error.message().trim_end());
            return Err(Invalid {
                diagnostics: vec![source.error(span, message)],
            });
        }
    };
    check::check(source, root.get_ref())
}

#[cfg(test)]
// A failed unwrap is a failed test, which is what it should be here.
#[allow(clippy::unwrap_used)]
mod tests;
