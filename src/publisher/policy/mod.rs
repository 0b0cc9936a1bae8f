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
    let mut checker = Checker {
        source,
        diagnostics: Vec::new(),
    };
    let draft = checker.root(root.get_ref());
    checker.cross_check(&draft);

    let mut diagnostics = std::mem::take(&mut checker.diagnostics);
    // Stable: problems found at the same spot keep the order they were found in.
    diagnostics.sort_by_key(|d| (d.line, d.column));
    if diagnostic::has_errors(&diagnostics) {
        return Err(Invalid { diagnostics });
    }
    let grants = checker.grants(&draft);
    let key_files = checker.key_file_entries(&draft);
    Ok(Checked {
        policy: draft.into_policy(),
        warnings: diagnostics,
        grants,
        key_files,
    })
}

const ROOT_KEYS: &[&str] = &["everywhere", "access_groups", "deny", "automation"];
const EVERYWHERE_KEYS: &[&str] = &["users", "groups"];
const ACCESS_GROUP_KEYS: &[&str] = &["description", "users", "groups", "options"];
const AUTOMATION_KEYS: &[&str] = &[
    "key_files",
    "access_groups",
    "everywhere",
    "owner",
    "ad_account",
];
const GRANT_KEYS: &[&str] = &["name", "until"];
const DENY_KEYS: &[&str] = &["users", "fingerprints"];

/// Characters AD forbids in a sAMAccountName.
const FORBIDDEN_IN_SAM_ACCOUNT_NAME: &str = "\"/\\[]:;|=,+*?<>";

/// The prefix of a fingerprint as OpenSSH prints it.
const FINGERPRINT_PREFIX: &str = "SHA256:";

/// A name as written, with where it was written.
#[derive(Debug, Clone)]
struct Named {
    name: String,
    span: Range<usize>,
    /// For a `{ name = ..., until = ... }` entry: when it ends.
    until: Option<Until>,
}

impl Named {
    /// AD names are case-insensitive; this is the form two names are compared in.
    fn key(&self) -> String {
        self.name.to_lowercase()
    }
}

#[derive(Debug, Default)]
struct DraftPrincipals {
    users: Vec<Named>,
    groups: Vec<Named>,
}

impl DraftPrincipals {
    fn into_principals(self) -> Principals {
        let until = |names: &[Named]| -> BTreeMap<String, Until> {
            names
                .iter()
                .filter_map(|n| Some((n.key(), n.until.clone()?)))
                .collect()
        };
        Principals {
            users_until: until(&self.users),
            groups_until: until(&self.groups),
            users: self.users.into_iter().map(|n| n.name).collect(),
            groups: self.groups.into_iter().map(|n| n.name).collect(),
        }
    }
}

#[derive(Debug)]
struct DraftAccessGroup {
    name: String,
    description: Option<String>,
    principals: DraftPrincipals,
    options: Vec<Named>,
}

#[derive(Debug)]
struct DraftAutomation {
    name: Named,
    key_files: Vec<Named>,
    access_groups: Vec<Named>,
    everywhere: bool,
    owner: String,
    ad_account: Option<String>,
}

/// What was read from the file, with spans kept for the checks that span several tables.
#[derive(Debug, Default)]
struct Draft {
    everywhere: DraftPrincipals,
    access_groups: Vec<DraftAccessGroup>,
    deny_users: Vec<Named>,
    deny_fingerprints: Vec<Named>,
    automation: Vec<DraftAutomation>,
}

impl Draft {
    fn into_policy(self) -> Policy {
        Policy {
            everywhere: self.everywhere.into_principals(),
            access_groups: self
                .access_groups
                .into_iter()
                .map(|group| {
                    let access_group = AccessGroup {
                        name: group.name.clone(),
                        description: group.description,
                        principals: group.principals.into_principals(),
                        options: group.options.into_iter().map(|n| n.name).collect(),
                    };
                    (group.name, access_group)
                })
                .collect(),
            deny: Deny {
                users: self.deny_users.into_iter().map(|n| n.name).collect(),
                fingerprints: self.deny_fingerprints.into_iter().map(|n| n.name).collect(),
            },
            automation: self
                .automation
                .into_iter()
                .map(|a| {
                    let automation = Automation {
                        name: a.name.name.clone(),
                        key_files: a.key_files.into_iter().map(|n| n.name).collect(),
                        access_groups: a.access_groups.into_iter().map(|n| n.name).collect(),
                        everywhere: a.everywhere,
                        owner: a.owner,
                        ad_account: a.ad_account,
                    };
                    (a.name.name, automation)
                })
                .collect(),
        }
    }
}

/// Whether a list holds users or groups: changes the wording, never the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrincipalKind {
    User,
    Group,
}

impl PrincipalKind {
    fn noun(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Group => "group",
        }
    }
}

struct Checker<'a> {
    source: Source<'a>,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let diagnostic = self.source.error(span, message);
        self.diagnostics.push(diagnostic);
    }

    fn warning(&mut self, span: Range<usize>, message: impl Into<String>) {
        let diagnostic = self.source.warning(span, message);
        self.diagnostics.push(diagnostic);
    }

    fn root(&mut self, root: &DeTable<'_>) -> Draft {
        let mut draft = Draft::default();
        let mut saw_access_groups = false;
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "everywhere" => {
                    if let Some(table) = self.table(key, value, "everywhere", "[everywhere]") {
                        self.unknown_keys(table, EVERYWHERE_KEYS, "[everywhere]");
                        draft.everywhere = self.principals(table, "[everywhere]");
                    }
                }
                "access_groups" => {
                    saw_access_groups = true;
                    if let Some(table) =
                        self.table(key, value, "access_groups", "[access_groups.NAME]")
                    {
                        draft.access_groups = self.access_groups(key.span(), table);
                    }
                }
                "deny" => {
                    if let Some(table) = self.table(key, value, "deny", "[deny]") {
                        self.deny(table, &mut draft);
                    }
                }
                "automation" => {
                    if let Some(table) = self.table(key, value, "automation", "[automation.NAME]") {
                        draft.automation = self.automations(table);
                    }
                }
                unknown => self.unknown_root_key(key.span(), unknown, value),
            }
        }
        if !saw_access_groups {
            self.error(
                0..0,
                "no `[access_groups]`: publishing a policy without access groups would remove \
                 everyone's access; add at least one `[access_groups.NAME]` table",
            );
        }
        draft
    }

    /// `value` as a table, or an error naming the key by its dotted `path` and showing the
    /// `header` that would have made it a table.
    fn table<'t, 'i>(
        &mut self,
        key: &Spanned<std::borrow::Cow<'i, str>>,
        value: &'t Spanned<DeValue<'i>>,
        path: &str,
        header: &str,
    ) -> Option<&'t DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                // `[[access_groups]]` is the classic slip: TOML's array-of-tables syntax.
                let hint = match other {
                    DeValue::Array(items)
                        if !items.is_empty() && items.iter().all(|i| i.get_ref().is_table()) =>
                    {
                        " (`[[...]]` makes an array of tables; use single brackets)"
                    }
                    _ => "",
                };
                self.error(
                    key.span(),
                    format!(
                        "`{path}` must be a table, written `{header}`; found {}{hint}",
                        a(other.type_str())
                    ),
                );
                None
            }
        }
    }

    fn unknown_root_key(&mut self, span: Range<usize>, key: &str, value: &Spanned<DeValue<'_>>) {
        let hint = match did_you_mean(key, ROOT_KEYS) {
            Some(known) => format!("; did you mean `{known}`?"),
            // `[web-prod]` at the top level is the likeliest mistake of all: an access group
            // written without its `access_groups.` prefix.
            None if value.get_ref().is_table() && access_group_name_problem(key).is_none() => {
                format!("; did you mean `[access_groups.{key}]`?")
            }
            None => format!("; expected one of {}", list(ROOT_KEYS)),
        };
        self.error(span, format!("unknown key `{key}` at the top level{hint}"));
    }

    fn unknown_keys(&mut self, table: &DeTable<'_>, known: &[&str], context: &str) {
        for (key, _) in table.iter() {
            let key_name: &str = key.get_ref();
            if known.contains(&key_name) {
                continue;
            }
            let hint = match did_you_mean(key_name, known) {
                Some(known) => format!("did you mean `{known}`?"),
                None => format!("expected one of {}", list(known)),
            };
            self.error(
                key.span(),
                format!("unknown key `{key_name}` in {context}; {hint}"),
            );
        }
    }

    fn access_groups(&mut self, span: Range<usize>, table: &DeTable<'_>) -> Vec<DraftAccessGroup> {
        if table.is_empty() {
            self.error(
                span,
                "`[access_groups]` has no access group: publishing it would remove everyone's \
                 access; add at least one `[access_groups.NAME]` table",
            );
            return Vec::new();
        }
        let mut groups = Vec::new();
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            if let Some(problem) = access_group_name_problem(name) {
                self.error(key.span(), problem);
            }
            let path = format!("access_groups.{}", display_key(name));
            let context = format!("[{path}]");
            let Some(group) = self.table(key, value, &path, &context) else {
                continue;
            };
            self.unknown_keys(group, ACCESS_GROUP_KEYS, &context);
            let description =
                group
                    .get("description")
                    .and_then(|description| match description.get_ref() {
                        DeValue::String(text) => Some(text.to_string()),
                        other => {
                            self.error(
                                description.span(),
                                format!(
                                    "`description` in {context} must be a string; found {}",
                                    a(other.type_str())
                                ),
                            );
                            None
                        }
                    });
            let principals = self.principals(group, &context);
            // A misspelt `grups = [...]` is already reported as unknown; calling the group empty
            // on top of that would send the reader looking for the wrong problem.
            let misspelt = group
                .iter()
                .filter(|(key, _)| {
                    let key_name: &str = key.get_ref();
                    !ACCESS_GROUP_KEYS.contains(&key_name)
                        && did_you_mean(key_name, &["users", "groups"]).is_some()
                })
                .count();
            let declared = declared_entries(group, "users") + declared_entries(group, "groups");
            if declared + misspelt == 0 {
                self.error(
                    key.span(),
                    format!(
                        "access group `{name}` is empty: give it `users` or `groups` (an empty \
                         group would admit only [everywhere]), or delete it"
                    ),
                );
            }
            let options = match group.get("options") {
                Some(value) => self.group_options(value, &context),
                None => Vec::new(),
            };
            groups.push(DraftAccessGroup {
                name: name.to_owned(),
                description,
                principals,
                options,
            });
        }
        groups
    }

    fn deny(&mut self, table: &DeTable<'_>, draft: &mut Draft) {
        self.unknown_keys(table, DENY_KEYS, "[deny]");
        if let Some(users) = table.get("users") {
            draft.deny_users = self.principal_list(users, PrincipalKind::User, "[deny]");
            // A denial that ends would be a grant in disguise; and an ignored date would mislead.
            let dated: Vec<Range<usize>> = draft
                .deny_users
                .iter()
                .filter(|user| user.until.is_some())
                .map(|user| user.span.clone())
                .collect();
            for span in dated {
                self.error(
                    span,
                    "[deny] entries cannot end (`until`): remove the user from [deny] when the \
                     denial is over",
                );
            }
        }
        if let Some(fingerprints) = table.get("fingerprints") {
            draft.deny_fingerprints = self.fingerprints(fingerprints);
        }
    }

    fn principals(&mut self, table: &DeTable<'_>, context: &str) -> DraftPrincipals {
        let mut principals = DraftPrincipals::default();
        if let Some(users) = table.get("users") {
            principals.users = self.principal_list(users, PrincipalKind::User, context);
        }
        if let Some(groups) = table.get("groups") {
            principals.groups = self.principal_list(groups, PrincipalKind::Group, context);
        }
        principals
    }

    /// The valid names of a `users` or `groups` list; every invalid one is reported.
    fn principal_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        kind: PrincipalKind,
        context: &str,
    ) -> Vec<Named> {
        let key = match kind {
            PrincipalKind::User => "users",
            PrincipalKind::Group => "groups",
        };
        let items = match self.grant_list(value, key, context) {
            Some(items) => items,
            None => return Vec::new(),
        };
        let mut seen: HashMap<String, Named> = HashMap::new();
        let mut names = Vec::new();
        for item in items {
            if let Some(problem) = principal_name_problem(&item.name) {
                self.error(
                    item.span.clone(),
                    format!(
                        "{} name {:?} in {context}: {problem}",
                        kind.noun(),
                        item.name
                    ),
                );
                continue;
            }
            if kind == PrincipalKind::User && item.name.contains('@') {
                self.warning(
                    item.span.clone(),
                    format!(
                        "user `{}` in {context} looks like an e-mail address or \
                         userPrincipalName; keyhole matches the sAMAccountName (e.g. `{}`)",
                        item.name,
                        item.name.split('@').next().unwrap_or_default()
                    ),
                );
            }
            if let Some(first) = seen.get(&item.key()) {
                let (line, column) = diagnostic::line_column(self.source.text, first.span.start);
                let case_note = if first.name == item.name {
                    String::new()
                } else {
                    format!(" as `{}`; AD names are case-insensitive", first.name)
                };
                self.error(
                    item.span.clone(),
                    format!(
                        "duplicate {} `{}` in {context} `{key}` (already at {line}:{column}{case_note})",
                        kind.noun(),
                        item.name
                    ),
                );
                continue;
            }
            seen.insert(item.key(), item.clone());
            names.push(item);
        }
        names
    }

    /// The items of a `users`/`groups` list: strings, or `{ name = "...", until = DATE }` tables.
    /// Wrong types are reported and skipped.
    fn grant_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        context: &str,
    ) -> Option<Vec<Named>> {
        let DeValue::Array(array) = value.get_ref() else {
            return self.string_list(value, key, context);
        };
        let mut items = Vec::new();
        for item in array.iter() {
            match item.get_ref() {
                DeValue::String(text) => items.push(Named {
                    name: text.to_string(),
                    span: item.span(),
                    until: None,
                }),
                DeValue::Table(table) => {
                    let entry_context = format!("an entry of `{key}` in {context}");
                    self.unknown_keys(table, GRANT_KEYS, &entry_context);
                    let name = match table.get("name").map(|n| (n.get_ref(), n.span())) {
                        Some((DeValue::String(text), span)) => Some((text.to_string(), span)),
                        Some((other, span)) => {
                            self.error(
                                span,
                                format!(
                                    "`name` in {entry_context} must be a string; found {}",
                                    a(other.type_str())
                                ),
                            );
                            None
                        }
                        None => {
                            self.error(
                                item.span(),
                                format!(
                                    "{entry_context} needs a `name`, like `{{ name = \"carol\", until = 2027-03-31 }}`"
                                ),
                            );
                            None
                        }
                    };
                    let until = match table.get("until") {
                        Some(until) => match until.get_ref() {
                            DeValue::Datetime(datetime) => match until_of(datetime) {
                                Ok(ends_at) => Some(Until {
                                    ends_at,
                                    text: datetime.to_string(),
                                }),
                                Err(problem) => {
                                    self.error(until.span(), format!("{problem} ({entry_context})"));
                                    None
                                }
                            },
                            DeValue::String(text) => {
                                self.error(
                                    until.span(),
                                    format!(
                                        "`until` in {entry_context} must be a TOML date, written without quotes: `until = {text}`"
                                    ),
                                );
                                None
                            }
                            other => {
                                self.error(
                                    until.span(),
                                    format!(
                                        "`until` in {entry_context} must be a date, like `until = 2027-03-31`; found {}",
                                        a(other.type_str())
                                    ),
                                );
                                None
                            }
                        },
                        None => {
                            self.error(
                                item.span(),
                                format!(
                                    "{entry_context} has no `until`: write the plain name when the grant does not end"
                                ),
                            );
                            None
                        }
                    };
                    if let (Some((name, span)), Some(until)) = (name, until) {
                        items.push(Named {
                            name,
                            span,
                            until: Some(until),
                        });
                    }
                }
                other => self.error(
                    item.span(),
                    format!(
                        "`{key}` in {context} must hold only names or `{{ name = ..., until = ... }}` tables; found {}",
                        a(other.type_str())
                    ),
                ),
            }
        }
        Some(items)
    }

    /// An access group's `options`: each entry validated as sshd would read it, and only
    /// restrictions allowed.
    fn group_options(&mut self, value: &Spanned<DeValue<'_>>, context: &str) -> Vec<Named> {
        let Some(items) = self.string_list(value, "options", context) else {
            return Vec::new();
        };
        let mut valid = Vec::new();
        for item in items {
            match crate::keys::merge::group_option_problem(&item.name) {
                Some(problem) => self.error(
                    item.span.clone(),
                    format!("option {:?} in {context}: {problem}", item.name),
                ),
                None => valid.push(item),
            }
        }
        let all: Vec<String> = valid.iter().map(|n| n.name.clone()).collect();
        if let Err(problem) = crate::keys::merge::parse_group_options(&all)
            && let Some(first) = valid.first()
        {
            self.error(
                first.span.clone(),
                format!("`options` in {context}: {problem}"),
            );
            return Vec::new();
        }
        valid
    }

    /// `[automation.NAME]` tables.
    fn automations(&mut self, table: &DeTable<'_>) -> Vec<DraftAutomation> {
        let mut automations = Vec::new();
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            if let Some(problem) = access_group_name_problem(name) {
                self.error(
                    key.span(),
                    problem.replace("access group name", "automation account name"),
                );
            }
            let path = format!("automation.{}", display_key(name));
            let context = format!("[{path}]");
            let Some(entry) = self.table(key, value, &path, &context) else {
                continue;
            };
            self.unknown_keys(entry, AUTOMATION_KEYS, &context);
            let key_files = match entry.get("key_files") {
                Some(value) => self.key_files(value, &context),
                None => {
                    self.error(
                        key.span(),
                        format!(
                            "{context} has no `key_files`: list the public key files, relative to the policy, e.g. `key_files = [\"automation/{name}.pub\"]`"
                        ),
                    );
                    Vec::new()
                }
            };
            let access_groups = match entry.get("access_groups") {
                Some(value) => self
                    .string_list(value, "access_groups", &context)
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            let everywhere = match entry.get("everywhere") {
                Some(value) => match value.get_ref() {
                    DeValue::Boolean(flag) => *flag,
                    other => {
                        self.error(
                            value.span(),
                            format!(
                                "`everywhere` in {context} must be true or false; found {}",
                                a(other.type_str())
                            ),
                        );
                        false
                    }
                },
                None => false,
            };
            let declared_groups = entry.get("access_groups").is_some();
            if everywhere && declared_groups {
                self.error(
                    key.span(),
                    format!(
                        "{context} has both `everywhere = true` and `access_groups`: choose one"
                    ),
                );
            } else if !everywhere && access_groups.is_empty() && !declared_groups {
                self.error(
                    key.span(),
                    format!(
                        "{context} grants nothing: give it `access_groups = [...]` or `everywhere = true`"
                    ),
                );
            }
            let owner = match entry.get("owner").map(|o| (o.get_ref(), o.span())) {
                Some((DeValue::String(text), span)) => {
                    if let Some(problem) = owner_problem(text) {
                        self.error(span, format!("`owner` in {context}: {problem}"));
                    }
                    text.to_string()
                }
                Some((other, span)) => {
                    self.error(
                        span,
                        format!(
                            "`owner` in {context} must be a string; found {}",
                            a(other.type_str())
                        ),
                    );
                    String::new()
                }
                None => {
                    self.error(
                        key.span(),
                        format!(
                            "{context} has no `owner`: name the person or team answerable for it"
                        ),
                    );
                    String::new()
                }
            };
            let ad_account = match entry.get("ad_account").map(|o| (o.get_ref(), o.span())) {
                Some((DeValue::String(text), span)) => {
                    if let Some(problem) = principal_name_problem(text) {
                        self.error(
                            span,
                            format!("`ad_account` {:?} in {context}: {problem}", text.as_ref()),
                        );
                    }
                    Some(text.to_string())
                }
                Some((other, span)) => {
                    self.error(
                        span,
                        format!(
                            "`ad_account` in {context} must be a string; found {}",
                            a(other.type_str())
                        ),
                    );
                    None
                }
                None => None,
            };
            automations.push(DraftAutomation {
                name: Named {
                    name: name.to_owned(),
                    span: key.span(),
                    until: None,
                },
                key_files,
                access_groups,
                everywhere,
                owner,
                ad_account,
            });
        }
        automations
    }

    /// An automation account's `key_files`: relative paths that stay inside the policy's
    /// directory.
    fn key_files(&mut self, value: &Spanned<DeValue<'_>>, context: &str) -> Vec<Named> {
        let Some(items) = self.string_list(value, "key_files", context) else {
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                value.span(),
                format!("`key_files` in {context} is empty: the account would have no key"),
            );
        }
        let mut files = Vec::new();
        for item in items {
            match key_file_problem(&item.name) {
                Some(problem) => self.error(
                    item.span.clone(),
                    format!("key file {:?} in {context}: {problem}", item.name),
                ),
                None => files.push(item),
            }
        }
        files
    }

    /// Every time-limited entry, with its position.
    fn grants(&self, draft: &Draft) -> Vec<Grant> {
        let mut grants = Vec::new();
        let mut add = |principals: &DraftPrincipals, context: &str| {
            for (names, kind) in [
                (&principals.users, PrincipalKind::User),
                (&principals.groups, PrincipalKind::Group),
            ] {
                for named in names {
                    if let Some(until) = &named.until {
                        let (line, column) =
                            diagnostic::line_column(self.source.text, named.span.start);
                        grants.push(Grant {
                            what: format!("{} `{}` in {context}", kind.noun(), named.name),
                            until: until.clone(),
                            line,
                            column,
                        });
                    }
                }
            }
        };
        add(&draft.everywhere, "[everywhere]");
        for group in &draft.access_groups {
            add(
                &group.principals,
                &format!("[access_groups.{}]", display_key(&group.name)),
            );
        }
        grants
    }

    fn key_file_entries(&self, draft: &Draft) -> Vec<KeyFileEntry> {
        draft
            .automation
            .iter()
            .flat_map(|automation| {
                automation.key_files.iter().map(|file| {
                    let (line, column) = diagnostic::line_column(self.source.text, file.span.start);
                    KeyFileEntry {
                        automation: automation.name.name.clone(),
                        path: file.name.clone(),
                        line,
                        column,
                    }
                })
            })
            .collect()
    }

    /// The string items of an array value; wrong types are reported and skipped.
    fn string_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        context: &str,
    ) -> Option<Vec<Named>> {
        let array = match value.get_ref() {
            DeValue::Array(array) => array,
            DeValue::String(single) => {
                self.error(
                    value.span(),
                    format!(
                        "`{key}` in {context} must be a list of strings; found a string \
                         (write `{key} = [{single:?}]`)"
                    ),
                );
                return None;
            }
            other => {
                self.error(
                    value.span(),
                    format!(
                        "`{key}` in {context} must be a list of strings, like `{key} = [\"...\"]`; \
                         found {}",
                        a(other.type_str())
                    ),
                );
                return None;
            }
        };
        let mut items = Vec::new();
        for item in array.iter() {
            match item.get_ref() {
                DeValue::String(text) => items.push(Named {
                    name: text.to_string(),
                    span: item.span(),
                    until: None,
                }),
                other => self.error(
                    item.span(),
                    format!(
                        "`{key}` in {context} must hold only strings; found {}",
                        a(other.type_str())
                    ),
                ),
            }
        }
        Some(items)
    }

    fn fingerprints(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<Named> {
        let Some(items) = self.string_list(value, "fingerprints", "[deny]") else {
            return Vec::new();
        };
        let mut seen: HashMap<String, Range<usize>> = HashMap::new();
        let mut fingerprints = Vec::new();
        for item in items {
            if let Some(problem) = fingerprint_problem(&item.name) {
                self.error(
                    item.span.clone(),
                    format!("fingerprint {:?} in [deny]: {problem}", item.name),
                );
                continue;
            }
            // Base64 is case-sensitive: only identical strings are the same key.
            if let Some(first) = seen.get(&item.name) {
                let (line, column) = diagnostic::line_column(self.source.text, first.start);
                self.error(
                    item.span.clone(),
                    format!(
                        "duplicate fingerprint `{}` in [deny] (already at {line}:{column})",
                        item.name
                    ),
                );
                continue;
            }
            seen.insert(item.name.clone(), item.span.clone());
            fingerprints.push(item);
        }
        fingerprints
    }

    /// Problems that need more than one table: redundant entries and entries `[deny]` overrides.
    fn cross_check(&mut self, draft: &Draft) {
        for automation in &draft.automation {
            for group in &automation.access_groups {
                if !draft.access_groups.iter().any(|g| g.name == group.name) {
                    let known: Vec<&str> = draft
                        .access_groups
                        .iter()
                        .map(|g| g.name.as_str())
                        .collect();
                    let hint = did_you_mean(&group.name, &known)
                        .map(|k| format!("; did you mean `{k}`?"))
                        .unwrap_or_default();
                    self.error(
                        group.span.clone(),
                        format!(
                            "[automation.{}] names access group `{}`, which the policy does not define{hint}",
                            automation.name.name, group.name
                        ),
                    );
                }
            }
        }

        let everywhere_users = by_key(&draft.everywhere.users);
        let everywhere_groups = by_key(&draft.everywhere.groups);
        let denied = by_key(&draft.deny_users);

        for group in &draft.access_groups {
            let context = format!("access group `{}`", group.name);
            for (listed, everywhere, kind) in [
                (
                    &group.principals.users,
                    &everywhere_users,
                    PrincipalKind::User,
                ),
                (
                    &group.principals.groups,
                    &everywhere_groups,
                    PrincipalKind::Group,
                ),
            ] {
                for principal in listed {
                    if let Some(first) = everywhere.get(&principal.key()) {
                        let line = self.line_of(first);
                        self.warning(
                            principal.span.clone(),
                            format!(
                                "{} `{}` is already in [everywhere] (line {line}); listing it in \
                                 {context} is redundant",
                                kind.noun(),
                                principal.name
                            ),
                        );
                    }
                }
            }
        }

        let elsewhere = draft
            .everywhere
            .users
            .iter()
            .map(|user| (user, "[everywhere]".to_owned()));
        let in_groups = draft.access_groups.iter().flat_map(|group| {
            group
                .principals
                .users
                .iter()
                .map(|user| (user, format!("access group `{}`", group.name)))
        });
        let mut overridden = Vec::new();
        for (user, context) in elsewhere.chain(in_groups) {
            if let Some(deny) = denied.get(&user.key()) {
                overridden.push((user.clone(), context, self.line_of(deny)));
            }
        }
        for (user, context, deny_line) in overridden {
            self.warning(
                user.span.clone(),
                format!(
                    "user `{}` in {context} is also in [deny] (line {deny_line}); deny wins, they \
                     get no access anywhere",
                    user.name
                ),
            );
        }
    }

    fn line_of(&self, named: &Named) -> usize {
        diagnostic::line_column(self.source.text, named.span.start).0
    }
}

fn by_key(names: &[Named]) -> HashMap<String, &Named> {
    names.iter().map(|named| (named.key(), named)).collect()
}

/// How many entries a `users`/`groups` key declares, valid or not. A value of the wrong type
/// counts as one: it is already reported, and calling the group "empty" as well would mislead.
fn declared_entries(table: &DeTable<'_>, key: &str) -> usize {
    match table.get(key).map(|value| value.get_ref()) {
        None => 0,
        Some(DeValue::Array(items)) => items.len(),
        Some(_) => 1,
    }
}

/// Why `name` can never match an AD sAMAccountName, or `None` when it can.
fn principal_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the name is empty".to_owned());
    }
    if name.trim() != name {
        return Some(format!(
            "remove the leading or trailing whitespace (`{}`)",
            name.trim()
        ));
    }
    if let Some(domain_user) = name.split_once('\\').map(|(_, user)| user) {
        return Some(format!(
            "write the sAMAccountName without the domain: `{domain_user}`"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| FORBIDDEN_IN_SAM_ACCOUNT_NAME.contains(*c))
    {
        return Some(format!(
            "`{bad}` is not allowed in an AD sAMAccountName (none of {FORBIDDEN_IN_SAM_ACCOUNT_NAME} are)"
        ));
    }
    if name.chars().any(char::is_control) {
        return Some("control characters are not allowed in an AD sAMAccountName".to_owned());
    }
    None
}

/// Why an automation `owner` would garble the group file line it is shown in, or `None`.
fn owner_problem(owner: &str) -> Option<String> {
    let allowed = |c: char| c.is_alphanumeric() || " ._@-".contains(c);
    if owner.trim().is_empty() {
        return Some("the owner is empty".into());
    }
    if owner.trim() != owner {
        return Some("remove the leading or trailing whitespace".into());
    }
    if let Some(bad) = owner.chars().find(|c| !allowed(*c)) {
        return Some(format!(
            "{bad:?} is not allowed (letters, digits, spaces and `._@-`: a person, a team or an e-mail address)"
        ));
    }
    if owner.contains(" via ") {
        return Some("`via` cannot be a word of the owner".into());
    }
    None
}

/// Why an automation key file path is not a relative path inside the policy's directory.
fn key_file_problem(path: &str) -> Option<String> {
    use std::path::Component;
    if path.is_empty() {
        return Some("the path is empty".into());
    }
    let parsed = Path::new(path);
    for component in parsed.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Some(
                    "`..` is not allowed: key files live next to the policy, in its repository"
                        .into(),
                );
            }
            Component::RootDir | Component::Prefix(_) => {
                return Some(
                    "write the path relative to the policy file, in the policy repository".into(),
                );
            }
        }
    }
    None
}

/// Why `fingerprint` is not an OpenSSH SHA-256 key fingerprint, or `None` when it is one.
fn fingerprint_problem(fingerprint: &str) -> Option<String> {
    let expected = "expected `SHA256:` and 43 characters of unpadded base64, as `ssh-keygen -lf` \
                    prints it";
    let Some(digest) = fingerprint.strip_prefix(FINGERPRINT_PREFIX) else {
        let lowered = fingerprint.to_ascii_lowercase();
        return Some(if lowered.starts_with("sha256:") {
            "write the prefix as `SHA256:` (upper case)".to_owned()
        } else if lowered.starts_with("md5:") || is_colon_hex(fingerprint) {
            format!("MD5 fingerprints are not accepted; {expected}")
        } else {
            expected.to_owned()
        });
    };
    if digest.ends_with('=') {
        return Some(format!("remove the `=` padding; {expected}"));
    }
    if digest.chars().count() != 43 {
        return Some(format!(
            "{} characters after `SHA256:`; {expected}",
            digest.chars().count()
        ));
    }
    let base64_alphabet = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    if let Some(bad) = digest.chars().find(|c| !base64_alphabet(*c)) {
        return Some(format!("`{bad}` is not a base64 character; {expected}"));
    }
    match base64::engine::general_purpose::STANDARD_NO_PAD.decode(digest) {
        Ok(bytes) if bytes.len() == 32 => None,
        // 43 characters of the right alphabet always decode to 32 bytes; what remains is a last
        // character whose unused bits are set, which no SHA-256 digest encodes to.
        _ => Some(format!(
            "not a canonical base64 encoding of 32 bytes; {expected}"
        )),
    }
}

/// `aa:bb:cc:…`, the legacy MD5 fingerprint format.
fn is_colon_hex(text: &str) -> bool {
    text.split(':').count() == 16
        && text
            .split(':')
            .all(|pair| pair.len() == 2 && pair.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A key as it would be written in a TOML header: quoted when it is not a bare key.
fn display_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|key| format!("`{key}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "a string", "an array", "an integer".
fn a(type_name: &str) -> String {
    if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {type_name}")
    } else {
        format!("a {type_name}")
    }
}

#[cfg(test)]
// A failed unwrap is a failed test, which is what it should be here.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "SHA256:owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg";

    fn check(text: &str) -> Result<Checked, Invalid> {
        parse(Path::new("p.toml"), text)
    }

    /// Every diagnostic, rendered, whether the policy is valid or not.
    fn rendered(text: &str) -> Vec<String> {
        let diagnostics = match check(text) {
            Ok(checked) => checked.warnings,
            Err(invalid) => invalid.diagnostics,
        };
        diagnostics.iter().map(ToString::to_string).collect()
    }

    fn errors(text: &str) -> Vec<String> {
        match check(text) {
            Ok(checked) => panic!("expected errors, got a valid policy: {checked:#?}"),
            Err(invalid) => invalid
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .map(ToString::to_string)
                .collect(),
        }
    }

    fn with_group(body: &str) -> String {
        format!("[access_groups.web]\n{body}\n")
    }

    #[test]
    fn a_complete_policy_becomes_a_policy() {
        let text = format!(
            r#"
[everywhere]
users = ["alice.admin"]
groups = ["Linux Admins"]

[access_groups.web-prod]
description = "Production web servers"
users = ["bob", "carol"]
groups = ["Web Team", "SRE"]

[access_groups.db]
groups = ["DBA"]

[deny]
users = ["mallory"]
fingerprints = ["{FINGERPRINT}"]
"#
        );
        let checked = check(&text).unwrap();
        assert_eq!(checked.warnings, vec![]);
        let web = AccessGroup {
            name: "web-prod".into(),
            description: Some("Production web servers".into()),
            principals: Principals {
                users: vec!["bob".into(), "carol".into()],
                groups: vec!["Web Team".into(), "SRE".into()],
                ..Principals::default()
            },
            options: vec![],
        };
        let db = AccessGroup {
            name: "db".into(),
            description: None,
            principals: Principals {
                users: vec![],
                groups: vec!["DBA".into()],
                ..Principals::default()
            },
            options: vec![],
        };
        assert_eq!(
            checked.policy,
            Policy {
                everywhere: Principals {
                    users: vec!["alice.admin".into()],
                    groups: vec!["Linux Admins".into()],
                    ..Principals::default()
                },
                access_groups: BTreeMap::from([("web-prod".into(), web), ("db".into(), db)]),
                deny: Deny {
                    users: vec!["mallory".into()],
                    fingerprints: vec![FINGERPRINT.into()],
                },
                automation: BTreeMap::new(),
            }
        );
    }

    #[test]
    fn everywhere_and_deny_are_optional() {
        let checked = check("[access_groups.web]\nusers = [\"bob\"]\n").unwrap();
        assert_eq!(checked.policy.everywhere, Principals::default());
        assert_eq!(checked.policy.deny, Deny::default());
    }

    #[test]
    fn a_syntax_error_has_its_position() {
        assert_eq!(
            errors("[access_groups.web]\nusers = [\"bob\"\ngroups = []\n"),
            vec![
                "p.toml:3:1: error: invalid TOML: missing comma between array elements, expected `,`"
            ]
        );
        let duplicate_key = errors("[access_groups.web]\nusers = []\nusers = [\"bob\"]\n");
        assert_eq!(duplicate_key.len(), 1);
        assert!(duplicate_key[0].starts_with("p.toml:3:1: error: invalid TOML: "));
    }

    #[test]
    fn unknown_keys_at_every_level_get_a_hint() {
        let text = r#"
[everywhere]
usres = ["alice"]

[access_groups.web]
users = ["bob"]
grups = ["Web"]

[deny]
fingerprint = []

[acess_groups.db]
users = ["x"]
"#;
        assert_eq!(
            errors(text),
            vec![
                "p.toml:3:1: error: unknown key `usres` in [everywhere]; did you mean `users`?",
                "p.toml:7:1: error: unknown key `grups` in [access_groups.web]; did you mean `groups`?",
                "p.toml:10:1: error: unknown key `fingerprint` in [deny]; did you mean `fingerprints`?",
                "p.toml:12:2: error: unknown key `acess_groups` at the top level; did you mean `access_groups`?",
            ]
        );
    }

    #[test]
    fn an_unknown_key_without_a_near_miss_lists_the_known_ones() {
        assert_eq!(
            errors(&with_group("users = [\"bob\"]\nservers = [\"web1\"]")),
            vec![
                "p.toml:3:1: error: unknown key `servers` in [access_groups.web]; expected one of \
                 `description`, `users`, `groups`, `options`"
            ]
        );
    }

    #[test]
    fn an_access_group_at_the_top_level_is_pointed_to_its_place() {
        let text = "[web-prod]\nusers = [\"bob\"]\n[access_groups.db]\nusers = [\"x\"]\n";
        assert_eq!(
            errors(text),
            vec![
                "p.toml:1:2: error: unknown key `web-prod` at the top level; did you mean \
                 `[access_groups.web-prod]`?"
            ]
        );
    }

    #[test]
    fn wrong_value_types_are_errors() {
        let text = r#"
everywhere = "alice"
[access_groups.web]
users = "bob"
groups = ["Web", 7]
description = 3
[deny]
fingerprints = "x"
"#;
        assert_eq!(
            errors(text),
            vec![
                "p.toml:2:1: error: `everywhere` must be a table, written `[everywhere]`; found a \
                 string",
                "p.toml:4:9: error: `users` in [access_groups.web] must be a list of strings; found \
                 a string (write `users = [\"bob\"]`)",
                "p.toml:5:18: error: `groups` in [access_groups.web] must hold only names or `{ \
                 name = ..., until = ... }` tables; found an integer",
                "p.toml:6:15: error: `description` in [access_groups.web] must be a string; found \
                 an integer",
                "p.toml:8:16: error: `fingerprints` in [deny] must be a list of strings; found a \
                 string (write `fingerprints = [\"x\"]`)",
            ]
        );
    }

    #[test]
    fn an_access_group_that_is_not_a_table_is_an_error() {
        assert_eq!(
            errors("[access_groups]\nweb = [\"bob\"]\n"),
            vec![
                "p.toml:2:1: error: `access_groups.web` must be a table, written \
                 `[access_groups.web]`; found an array"
            ]
        );
    }

    #[test]
    fn an_array_of_tables_is_pointed_to_single_brackets() {
        assert_eq!(
            errors("[[access_groups]]\nusers = [\"bob\"]\n"),
            vec![
                "p.toml:1:3: error: `access_groups` must be a table, written \
                 `[access_groups.NAME]`; found an array (`[[...]]` makes an array of tables; use \
                 single brackets)"
            ]
        );
    }

    #[test]
    fn a_policy_without_access_groups_would_remove_everyone() {
        for text in ["", "[everywhere]\nusers = [\"alice\"]\n"] {
            let errors = errors(text);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with("p.toml:1:1: error: no `[access_groups]`: publishing"),
                "{errors:?}"
            );
        }
        let empty_table = errors("[access_groups]\n");
        assert_eq!(empty_table.len(), 1);
        assert!(
            empty_table[0].starts_with("p.toml:1:2: error: `[access_groups]` has no access group"),
            "{empty_table:?}"
        );
    }

    #[test]
    fn access_group_names_follow_the_s3_safe_pattern() {
        for good in ["web", "0", "web-prod.eu_1", &"a".repeat(63)] {
            assert_eq!(access_group_name_problem(good), None, "{good}");
        }
        for bad in [
            "Web",
            "-web",
            ".web",
            "_web",
            "web prod",
            "wéb",
            "web/prod",
            &"a".repeat(64),
        ] {
            assert!(access_group_name_problem(bad).is_some(), "{bad}");
        }
        assert_eq!(
            errors("[access_groups.\"Web Prod\"]\nusers = [\"bob\"]\n"),
            vec![
                "p.toml:1:16: error: invalid access group name `Web Prod`: access group names \
                 are 1 to 63 characters of a-z, 0-9, `.`, `_`, `-`, starting with a letter or \
                 digit; did you mean `web-prod`?"
            ]
        );
    }

    #[test]
    fn duplicates_in_one_list_are_errors_whatever_the_case() {
        assert_eq!(
            errors(&with_group(
                "users = [\"bob\", \"carol\", \"Bob\", \"carol\"]"
            )),
            vec![
                "p.toml:2:26: error: duplicate user `Bob` in [access_groups.web] `users` (already \
                 at 2:10 as `bob`; AD names are case-insensitive)",
                "p.toml:2:33: error: duplicate user `carol` in [access_groups.web] `users` \
                 (already at 2:17)",
            ]
        );
        // The same name in two different access groups is normal.
        assert!(
            check("[access_groups.a]\nusers = [\"bob\"]\n[access_groups.b]\nusers = [\"BOB\"]\n")
                .is_ok()
        );
    }

    #[test]
    fn a_principal_also_in_everywhere_is_redundant_but_valid() {
        let text = "[everywhere]\nusers = [\"alice\"]\ngroups = [\"Admins\"]\n\
                    [access_groups.web]\nusers = [\"Alice\"]\ngroups = [\"admins\", \"Web\"]\n";
        let checked = check(text).unwrap();
        let warnings: Vec<_> = checked.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            vec![
                "p.toml:5:10: warning: user `Alice` is already in [everywhere] (line 2); listing \
                 it in access group `web` is redundant",
                "p.toml:6:11: warning: group `admins` is already in [everywhere] (line 3); \
                 listing it in access group `web` is redundant",
            ]
        );
        assert_eq!(
            checked.policy.access_groups["web"].principals.users,
            ["Alice"]
        );
    }

    #[test]
    fn an_empty_access_group_is_an_error() {
        for body in [
            "",
            "users = []",
            "users = []\ngroups = []",
            "description = \"x\"",
        ] {
            let errors = errors(&with_group(body));
            assert_eq!(errors.len(), 1, "{body:?}: {errors:?}");
            assert!(
                errors[0].starts_with("p.toml:1:16: error: access group `web` is empty"),
                "{errors:?}"
            );
        }
        // Groups alone are enough.
        assert!(check(&with_group("groups = [\"Web\"]")).is_ok());
    }

    #[test]
    fn a_misspelt_or_mistyped_list_does_not_also_count_as_empty() {
        assert_eq!(errors(&with_group("grups = [\"Web\"]")).len(), 1);
        assert_eq!(errors(&with_group("users = \"bob\"")).len(), 1);
    }

    #[test]
    fn names_ad_could_never_hold_are_errors() {
        let text =
            with_group(r#"users = ["", " bob", "carol ", "CORP\\dave", "eve:x", "a*b", "tab	x"]"#);
        assert_eq!(
            errors(&text),
            vec![
                "p.toml:2:10: error: user name \"\" in [access_groups.web]: the name is empty",
                "p.toml:2:14: error: user name \" bob\" in [access_groups.web]: remove the \
                 leading or trailing whitespace (`bob`)",
                "p.toml:2:22: error: user name \"carol \" in [access_groups.web]: remove the \
                 leading or trailing whitespace (`carol`)",
                "p.toml:2:32: error: user name \"CORP\\\\dave\" in [access_groups.web]: write the \
                 sAMAccountName without the domain: `dave`",
                "p.toml:2:46: error: user name \"eve:x\" in [access_groups.web]: `:` is not \
                 allowed in an AD sAMAccountName (none of \"/\\[]:;|=,+*?<> are)",
                "p.toml:2:55: error: user name \"a*b\" in [access_groups.web]: `*` is not allowed \
                 in an AD sAMAccountName (none of \"/\\[]:;|=,+*?<> are)",
                "p.toml:2:62: error: user name \"tab\\tx\" in [access_groups.web]: control \
                 characters are not allowed in an AD sAMAccountName",
            ]
        );
        // Spaces, dots, dashes and non-ASCII letters are fine in AD names.
        assert!(check(&with_group(r#"groups = ["Web Team", "j.doe-2", "Jürgen"]"#)).is_ok());
    }

    #[test]
    fn a_user_written_as_an_email_is_a_warning() {
        let checked = check(&with_group(r#"users = ["bob@corp.example.com"]"#)).unwrap();
        assert_eq!(checked.warnings.len(), 1);
        assert!(
            checked.warnings[0]
                .message
                .contains("keyhole matches the sAMAccountName (e.g. `bob`)"),
            "{:?}",
            checked.warnings
        );
    }

    #[test]
    fn fingerprints_must_be_openssh_sha256() {
        assert_eq!(fingerprint_problem(FINGERPRINT), None);
        let problem = |fingerprint: &str| fingerprint_problem(fingerprint).unwrap_or_default();
        assert!(problem("owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg").starts_with("expected"));
        assert!(
            problem("sha256:owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg").contains("upper case")
        );
        assert!(problem("SHA256:owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg=").contains("padding"));
        assert!(problem("SHA256:owo1iO").starts_with("6 characters after"));
        assert!(problem("MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48").starts_with("MD5"));
        assert!(problem("16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48").starts_with("MD5"));
        // URL-safe alphabet and non-canonical trailing bits are not what ssh-keygen prints.
        assert!(
            problem("SHA256:owo1iO_3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg")
                .starts_with("`_` is not a base64 character")
        );
        assert!(
            problem("SHA256:owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAh")
                .starts_with("not a canonical base64 encoding")
        );
    }

    #[test]
    fn bad_and_duplicate_fingerprints_in_deny_are_errors() {
        let text = format!(
            "[access_groups.web]\nusers = [\"bob\"]\n[deny]\nfingerprints = [\n  \"{FINGERPRINT}\",\n  \"SHA256:nope\",\n  \"{FINGERPRINT}\",\n]\n"
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "p.toml:6:3: error: fingerprint \"SHA256:nope\" in [deny]: 4 characters"
            )
        );
        assert!(errors[1].starts_with(&format!(
            "p.toml:7:3: error: duplicate fingerprint `{FINGERPRINT}` in [deny] (already at 5:3)"
        )));
    }

    #[test]
    fn a_denied_user_listed_elsewhere_is_a_warning_because_deny_wins() {
        let text = "[everywhere]\nusers = [\"mallory\"]\n[access_groups.web]\nusers = [\"Mallory\"]\n\
                    [deny]\nusers = [\"mallory\"]\n";
        let checked = check(text).unwrap();
        let warnings: Vec<_> = checked.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            vec![
                "p.toml:2:10: warning: user `mallory` in [everywhere] is also in [deny] (line 6); \
                 deny wins, they get no access anywhere",
                "p.toml:4:10: warning: user `Mallory` is already in [everywhere] (line 2); listing \
                 it in access group `web` is redundant",
                "p.toml:4:10: warning: user `Mallory` in access group `web` is also in [deny] \
                 (line 6); deny wins, they get no access anywhere",
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_in_file_order() {
        let text = r#"
[access_groups.Web]
users = ["bob", "bob"]

[access_groups.empty]

[deny]
fingerprints = ["SHA256:x"]
bogus = 1
"#;
        let lines = rendered(text);
        let positions: Vec<&str> = lines
            .iter()
            .map(|line| line.split(": ").next().unwrap_or_default())
            .collect();
        assert_eq!(
            positions,
            [
                "p.toml:2:16",
                "p.toml:3:17",
                "p.toml:5:16",
                "p.toml:8:17",
                "p.toml:9:1"
            ]
        );
    }

    #[test]
    fn invalid_lists_every_diagnostic_in_its_message() {
        let invalid = check(&with_group(
            "users = [\"bob\", \"bob\"]\ngroups = [\"a@b\"]",
        ))
        .unwrap_err();
        let message = invalid.to_string();
        let mut lines = message.lines();
        assert_eq!(lines.next(), Some("the policy has 1 error"));
        assert!(
            lines
                .next()
                .unwrap_or_default()
                .starts_with("p.toml:2:17: error: duplicate")
        );
        assert_eq!(lines.next(), None);
        assert_eq!(counts(&invalid.diagnostics), "1 error");
    }

    #[test]
    fn counts_name_errors_and_warnings() {
        let source = Source::new(Path::new("p.toml"), "");
        let error = source.error(0..0, "e");
        let warning = source.warning(0..0, "w");
        assert_eq!(counts(&[]), "0 errors");
        assert_eq!(counts(std::slice::from_ref(&warning)), "1 warning");
        assert_eq!(
            counts(&[error.clone(), error, warning.clone(), warning]),
            "2 errors, 2 warnings"
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_a_diagnostic() {
        let invalid = parse_bytes(
            Path::new("p.toml"),
            b"[access_groups.web]\nusers = [\"b\xffb\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            invalid.diagnostics[0].to_string(),
            "p.toml:2:12: error: the policy is not valid UTF-8 (TOML files must be UTF-8)"
        );
    }

    #[test]
    fn load_marks_an_invalid_policy_and_names_an_unreadable_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access-groups.toml");

        let missing = load(&path).unwrap_err();
        assert_eq!(Exit::for_error(&missing), Exit::Failure);
        assert!(
            format!("{missing:#}").contains("access-groups.toml"),
            "{missing:#}"
        );

        std::fs::write(&path, "[access_groups.web]\n").unwrap();
        let invalid = load(&path).unwrap_err();
        // The mark `Exit::for_error` reads; asked of anyhow directly so this test does not depend
        // on how `exit` walks the chain.
        let code = invalid
            .downcast_ref::<crate::exit::Coded>()
            .map(|coded| coded.0);
        assert_eq!(code, Some(Exit::Invalid));
        assert!(
            format!("{invalid:#}")
                .contains("access-groups.toml:1:16: error: access group `web` is empty"),
            "{invalid:#}"
        );

        std::fs::write(&path, "[access_groups.web]\nusers = [\"bob\"]\n").unwrap();
        assert_eq!(load(&path).unwrap().policy.access_groups.len(), 1);
    }

    #[test]
    fn grants_with_an_end_date_are_read_with_when_they_end() {
        let text = "[everywhere]\ngroups = [{ name = \"Helpers\", until = 2027-03-31T18:00:00+02:00 }]\n\
                    [access_groups.web]\nusers = [\"bob\", { name = \"Carol\", until = 2027-03-31 }]\n";
        let checked = check(text).unwrap();
        let web = &checked.policy.access_groups["web"].principals;
        assert_eq!(web.users, ["bob", "Carol"]);
        let carol = web.user_until("carol").unwrap();
        assert_eq!(carol.text, "2027-03-31");
        // Through the end of that day, UTC: 2027-04-01T00:00:00Z.
        assert_eq!(carol.ends_at, 1_806_537_600);
        let helpers = checked.policy.everywhere.group_until("helpers").unwrap();
        assert_eq!(helpers.ends_at, 1_806_537_600 - 8 * 3600);
        let at = |secs: i64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        assert!(!carol.has_ended(at(1_806_537_599)));
        assert!(carol.has_ended(at(1_806_537_600)));
        assert!(carol.ends_within(
            at(1_806_537_600 - 86_400),
            std::time::Duration::from_secs(86_400)
        ));
        assert_eq!(checked.grants.len(), 2);
        assert_eq!(
            checked.grants[1].what,
            "user `Carol` in [access_groups.web]"
        );
        assert_eq!((checked.grants[1].line, checked.grants[1].column), (4, 26));
    }

    #[test]
    fn bad_grant_entries_are_errors_at_their_position() {
        let text = with_group(
            "users = [{ name = \"a\", until = \"2027-03-31\" }, { name = \"b\" }, { until = 2027-01-01 }, { name = \"c\", until = 2027-01-01T10:00:00 }, { name = \"d\", until = 2027-01-01, why = 1 }]",
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(
            errors[0].contains("must be a TOML date, written without quotes"),
            "{errors:?}"
        );
        assert!(errors[1].contains("has no `until`"), "{errors:?}");
        assert!(errors[2].contains("needs a `name`"), "{errors:?}");
        assert!(
            errors[3].contains("a local date-time is ambiguous"),
            "{errors:?}"
        );
        assert!(errors[4].contains("unknown key `why`"), "{errors:?}");
    }

    #[test]
    fn a_deny_entry_cannot_end() {
        let text = "[access_groups.web]\nusers = [\"bob\"]\n[deny]\nusers = [{ name = \"eve\", until = 2027-01-01 }]\n";
        assert_eq!(
            errors(text),
            [
                "p.toml:4:19: error: [deny] entries cannot end (`until`): remove the user from [deny] \
              when the denial is over"
            ]
        );
    }

    #[test]
    fn automation_accounts_are_validated() {
        let good = "[access_groups.web]\nusers = [\"bob\"]\n[automation.ci]\nkey_files = [\"keys/ci.pub\"]\naccess_groups = [\"web\"]\nowner = \"CI Team\"\nad_account = \"svc-ci\"\n";
        let checked = check(good).unwrap();
        let ci = &checked.policy.automation["ci"];
        assert_eq!(ci.member(), "automation:ci");
        assert_eq!(ci.via(), "owner CI Team");
        assert!(ci.grants("web") && !ci.grants("db"));
        assert_eq!(ci.ad_account.as_deref(), Some("svc-ci"));
        assert_eq!(checked.key_files[0].path, "keys/ci.pub");
        let bad = "[access_groups.web]\nusers = [\"bob\"]\n\
                   [automation.CI]\nkey_files = [\"/root/.ssh/id.pub\"]\neverywhere = true\naccess_groups = [\"web\"]\nowner = \"a > b\"\n\
                   [automation.x]\nkey_files = []\nad_account = \"a:b\"\n";
        let errors = errors(bad);
        let expected = [
            "p.toml:3:13: error: invalid automation account name `CI`",
            "p.toml:3:13: error: [automation.CI] has both `everywhere = true` and `access_groups`",
            "p.toml:4:14: error: key file \"/root/.ssh/id.pub\" in [automation.CI]: write the path relative",
            "p.toml:7:9: error: `owner` in [automation.CI]: '>' is not allowed",
            "p.toml:8:13: error: [automation.x] grants nothing",
            "p.toml:8:13: error: [automation.x] has no `owner`",
            "p.toml:9:13: error: `key_files` in [automation.x] is empty",
            "p.toml:10:14: error: `ad_account` \"a:b\" in [automation.x]: `:` is not allowed",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(
                error.starts_with(expected),
                "{error:?} does not start with {expected:?}"
            );
        }
    }

    #[test]
    fn access_group_options_are_validated_as_restrictions() {
        let checked = check(&with_group(
            "users = [\"bob\"]\noptions = ['from=\"10.20.0.0/16\"', \"no-pty\"]",
        ))
        .unwrap();
        assert_eq!(
            checked.policy.access_groups["web"].options,
            ["from=\"10.20.0.0/16\"", "no-pty"]
        );
        let errors = errors(&with_group(
            "users = [\"bob\"]\noptions = ['from=\"10.20.0.0/16\"', 'from=\"10.0.0.0/8\"']",
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("given more than once"), "{errors:?}");
    }
}
