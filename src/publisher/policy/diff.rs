//! The access change between two versions of the policy: what a pull request does to who may log
//! in where. Pure: it compares [`Policy`] values and [`Resolution`]s it is handed and renders the
//! [`Report`]; reading git, reading AD and choosing the exit code belong to `cmd::diff`.
//!
//! Two levels. The policy level ([`diff_policies`]) works offline: per access group, the AD users
//! and groups added and removed, access groups created and deleted (a renamed one is both),
//! `[everywhere]` and `[deny]` changes. The people level ([`diff_resolutions`]) compares two
//! resolutions made against the same directory snapshot: per access group, who gains and who loses
//! access, with the `via` chain that gives (or gave) it, exactly as `keyhole members` shows it.
//!
//! Beyond names, both levels show the policy's other features: end dates (`until`) added,
//! changed or removed on any entry, an access group's `options` (its restrictions), and
//! automation accounts created, deleted or changed (key files, access groups, owner, AD
//! account). Each of these changes access, so each counts for `--detailed-exitcode`. A person
//! gaining access through a time-limited entry is shown with its end date.
//!
//! AD names are case-insensitive, so `bob` → `Bob` is no change. A policy that does not validate
//! is still diffed from a best-effort reading ([`read`]) so a reviewer sees what it would do, but
//! the reading is labelled as such and never reaches `publish`, which validates for itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::bucket::group_file::VIA_SEPARATOR;
use crate::diagnostic::{Diagnostic, Severity};
use crate::markdown::{self, code, prose};
use crate::publisher::policy::{
    self, AccessGroup, Automation, Deny, Policy, Principals, Until, counts, plural,
};
use crate::publisher::resolve::{Exclusion, Member, Resolution, Via};

/// Names that appear in one version and not in the other. Sorted case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Changes to a list of AD principals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PrincipalsDiff {
    pub users: Changes,
    pub groups: Changes,
}

impl PrincipalsDiff {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }
}

/// Changes to the `[deny]` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DenyDiff {
    pub users: Changes,
    pub fingerprints: Changes,
}

impl DenyDiff {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.fingerprints.is_empty()
    }
}

/// What happened to an access group as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupChange {
    /// Only in the base: its file is pruned on the next publish.
    Deleted,
    /// In both, and its own entry changed.
    Modified,
    /// In both with the same entry; listed only because the people in it change (through
    /// `[everywhere]` or `[deny]`).
    Unchanged,
    /// Only in the head.
    Created,
}

impl GroupChange {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupChange::Deleted => "deleted",
            GroupChange::Modified => "modified",
            GroupChange::Unchanged => "unchanged",
            GroupChange::Created => "created",
        }
    }
}

/// An entry whose end date appears, changes or goes away (an entry added with an end date, or
/// removed with one, is listed too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UntilChange {
    /// `user` or `group`.
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
}

/// A field of an automation account that changed, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub base: String,
    pub head: String,
}

/// One automation account that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutomationDiff {
    pub change: GroupChange,
    pub key_files: Changes,
    /// `*` stands for `everywhere = true`.
    pub access_groups: Changes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<FieldChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_account: Option<FieldChange>,
}

/// A description edit: not an access change, but shown so the diff is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DescriptionChange {
    pub base: Option<String>,
    pub head: Option<String>,
}

/// One access group that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessGroupDiff {
    pub change: GroupChange,
    /// For a created group everything is added, for a deleted one everything removed.
    pub users: Changes,
    pub groups: Changes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<DescriptionChange>,
    /// End dates added, changed or removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub until: Vec<UntilChange>,
    /// The group's `options` (restrictions) added and removed.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub options: Changes,
    /// Only with `--resolve`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub people: Option<PeopleDiff>,
}

/// Who gains and who loses access to one access group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeopleDiff {
    /// Sorted by name; `via` is the chain that gave access in the base.
    pub lost: Vec<PersonChange>,
    /// Sorted by name; `via` is the chain that gives access in the head.
    pub gained: Vec<PersonChange>,
}

impl PeopleDiff {
    pub fn is_empty(&self) -> bool {
        self.lost.is_empty() && self.gained.is_empty()
    }
}

/// A person whose access changes, and through what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersonChange {
    /// sAMAccountName as AD spells it.
    pub name: String,
    /// As in `keyhole members`: empty when named directly, `["everywhere", …]` through the fixed
    /// admin list, else the AD group chain from the group the policy names down.
    pub via: Vec<String>,
    /// On a loss, why the head still reaches but excludes them (`denied`); absent when the head
    /// policy no longer reaches them at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<Exclusion>,
    /// On a gain, when the access ends (a time-limited entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Until>,
}

/// The policy-level difference between two policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    pub everywhere: PrincipalsDiff,
    /// End dates of `[everywhere]` entries added, changed or removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub everywhere_until: Vec<UntilChange>,
    pub deny: DenyDiff,
    /// Only automation accounts with a change.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub automation: BTreeMap<String, AutomationDiff>,
    /// Only access groups with a change.
    pub access_groups: BTreeMap<String, AccessGroupDiff>,
}

impl PolicyDiff {
    /// Whether the head grants or withdraws anything the base did not: descriptions alone do not
    /// count, and neither does a change of letter case.
    pub fn changes_access(&self) -> bool {
        !self.everywhere.is_empty()
            || !self.everywhere_until.is_empty()
            || !self.deny.is_empty()
            || !self.automation.is_empty()
            || self.access_groups.values().any(|group| {
                matches!(group.change, GroupChange::Created | GroupChange::Deleted)
                    || !group.users.is_empty()
                    || !group.groups.is_empty()
                    || !group.until.is_empty()
                    || !group.options.is_empty()
            })
    }

    /// Attaches the people-level changes, adding the access groups whose own entry is the same
    /// but whose people change.
    pub fn add_people(&mut self, people: BTreeMap<String, PeopleDiff>) {
        for group in self.access_groups.values_mut() {
            group.people = Some(PeopleDiff::default());
        }
        for (name, change) in people {
            self.access_groups
                .entry(name)
                .or_insert_with(|| AccessGroupDiff {
                    change: GroupChange::Unchanged,
                    users: Changes::default(),
                    groups: Changes::default(),
                    description: None,
                    until: Vec::new(),
                    options: Changes::default(),
                    people: None,
                })
                .people = Some(change);
        }
    }
}

/// The policy-level difference from `base` to `head`.
pub fn diff_policies(base: &Policy, head: &Policy) -> PolicyDiff {
    let mut access_groups = BTreeMap::new();
    let names: BTreeSet<&String> = base
        .access_groups
        .keys()
        .chain(head.access_groups.keys())
        .collect();
    for name in names {
        let diff = match (base.access_groups.get(name), head.access_groups.get(name)) {
            (Some(before), Some(after)) => {
                let principals = principals(&before.principals, &after.principals);
                let description =
                    (before.description != after.description).then(|| DescriptionChange {
                        base: before.description.clone(),
                        head: after.description.clone(),
                    });
                let until = until_changes(&before.principals, &after.principals);
                let options = changes(&before.options, &after.options, str::to_owned);
                if principals.is_empty()
                    && description.is_none()
                    && until.is_empty()
                    && options.is_empty()
                {
                    continue;
                }
                AccessGroupDiff {
                    change: GroupChange::Modified,
                    users: principals.users,
                    groups: principals.groups,
                    description,
                    until,
                    options,
                    people: None,
                }
            }
            (Some(before), None) => whole(GroupChange::Deleted, before, |p| principals(p, &none())),
            (None, Some(after)) => whole(GroupChange::Created, after, |p| principals(&none(), p)),
            (None, None) => continue,
        };
        access_groups.insert(name.clone(), diff);
    }
    let mut automation = BTreeMap::new();
    let names: BTreeSet<&String> = base
        .automation
        .keys()
        .chain(head.automation.keys())
        .collect();
    for name in names {
        let (before, after) = (base.automation.get(name), head.automation.get(name));
        let change = match (before, after) {
            (Some(_), Some(_)) => GroupChange::Modified,
            (Some(_), None) => GroupChange::Deleted,
            (None, Some(_)) => GroupChange::Created,
            (None, None) => continue,
        };
        let diff = automation_diff(change, before, after);
        let unchanged = diff.key_files.is_empty()
            && diff.access_groups.is_empty()
            && diff.owner.is_none()
            && diff.ad_account.is_none();
        if change == GroupChange::Modified && unchanged {
            continue;
        }
        automation.insert(name.clone(), diff);
    }
    PolicyDiff {
        everywhere_until: until_changes(&base.everywhere, &head.everywhere),
        automation,
        everywhere: principals(&base.everywhere, &head.everywhere),
        deny: DenyDiff {
            users: changes(&base.deny.users, &head.deny.users, str::to_lowercase),
            // Fingerprints are base64: case matters.
            fingerprints: changes(
                &base.deny.fingerprints,
                &head.deny.fingerprints,
                str::to_owned,
            ),
        },
        access_groups,
    }
}

fn none() -> Principals {
    Principals::default()
}

/// Every entry whose end date differs between `base` and `head` (missing entries have none).
fn until_changes(base: &Principals, head: &Principals) -> Vec<UntilChange> {
    let mut out = Vec::new();
    for (kind, before, after, names) in [
        (
            "user",
            &base.users_until,
            &head.users_until,
            base.users.iter().chain(&head.users),
        ),
        (
            "group",
            &base.groups_until,
            &head.groups_until,
            base.groups.iter().chain(&head.groups),
        ),
    ] {
        let mut seen = BTreeSet::new();
        for name in names {
            let key = name.to_lowercase();
            if !seen.insert(key.clone()) {
                continue;
            }
            let (was, is) = (before.get(&key), after.get(&key));
            if was.map(|u| &u.text) != is.map(|u| &u.text) {
                out.push(UntilChange {
                    kind,
                    name: name.clone(),
                    base: was.map(|u| u.text.clone()),
                    head: is.map(|u| u.text.clone()),
                });
            }
        }
    }
    out.sort_by(|a, b| by_name(&a.name, &b.name));
    out
}

/// What changed in one automation account; a missing side counts as empty.
fn automation_diff(
    change: GroupChange,
    before: Option<&Automation>,
    after: Option<&Automation>,
) -> AutomationDiff {
    let groups = |a: Option<&Automation>| -> Vec<String> {
        match a {
            Some(a) if a.everywhere => vec!["*".to_owned()],
            Some(a) => a.access_groups.clone(),
            None => Vec::new(),
        }
    };
    let files = |a: Option<&Automation>| a.map(|a| a.key_files.clone()).unwrap_or_default();
    let field = |get: fn(&Automation) -> String| -> Option<FieldChange> {
        let (was, is) = (
            before.map(get).unwrap_or_default(),
            after.map(get).unwrap_or_default(),
        );
        (was != is).then_some(FieldChange {
            base: was,
            head: is,
        })
    };
    AutomationDiff {
        change,
        key_files: changes(&files(before), &files(after), str::to_owned),
        access_groups: changes(&groups(before), &groups(after), str::to_owned),
        owner: field(|a| a.owner.clone()),
        ad_account: field(|a| a.ad_account.clone().unwrap_or_default()),
    }
}

fn whole(
    change: GroupChange,
    group: &AccessGroup,
    diff: impl Fn(&Principals) -> PrincipalsDiff,
) -> AccessGroupDiff {
    let principals = diff(&group.principals);
    let (until, options) = match change {
        GroupChange::Deleted => (
            until_changes(&group.principals, &none()),
            changes(&group.options, &[], str::to_owned),
        ),
        _ => (
            until_changes(&none(), &group.principals),
            changes(&[], &group.options, str::to_owned),
        ),
    };
    AccessGroupDiff {
        change,
        users: principals.users,
        groups: principals.groups,
        description: None,
        until,
        options,
        people: None,
    }
}

fn principals(base: &Principals, head: &Principals) -> PrincipalsDiff {
    PrincipalsDiff {
        users: changes(&base.users, &head.users, str::to_lowercase),
        groups: changes(&base.groups, &head.groups, str::to_lowercase),
    }
}

/// Names in `head` but not `base` (added) and the other way round, compared by `key`.
fn changes(base: &[String], head: &[String], key: fn(&str) -> String) -> Changes {
    let base_keys: BTreeSet<String> = base.iter().map(|n| key(n)).collect();
    let head_keys: BTreeSet<String> = head.iter().map(|n| key(n)).collect();
    let mut added: Vec<String> = head
        .iter()
        .filter(|n| !base_keys.contains(&key(n)))
        .cloned()
        .collect();
    let mut removed: Vec<String> = base
        .iter()
        .filter(|n| !head_keys.contains(&key(n)))
        .cloned()
        .collect();
    added.sort_by(|a, b| by_name(a, b));
    removed.sort_by(|a, b| by_name(a, b));
    Changes { added, removed }
}

/// Per access group (in either resolution), who gains and who loses access. Both resolutions
/// must come from the same directory snapshot, so the only differences are the policy's.
pub fn diff_resolutions(base: &Resolution, head: &Resolution) -> BTreeMap<String, PeopleDiff> {
    let empty = crate::publisher::resolve::Membership::default();
    let names: BTreeSet<&String> = base
        .access_groups
        .keys()
        .chain(head.access_groups.keys())
        .collect();
    let mut out = BTreeMap::new();
    for name in names {
        let before = base.access_groups.get(name).unwrap_or(&empty);
        let after = head.access_groups.get(name).unwrap_or(&empty);
        let keys = |members: &[Member]| -> HashMap<String, Via> {
            members
                .iter()
                .map(|m| (m.name.to_lowercase(), m.via.clone()))
                .collect()
        };
        let had = keys(&before.users);
        let has = keys(&after.users);
        let excluded_now: HashMap<String, Exclusion> = after
            .excluded
            .iter()
            .map(|e| (e.name.to_lowercase(), e.reason))
            .collect();
        let lost: Vec<PersonChange> = before
            .users
            .iter()
            .filter(|m| !has.contains_key(&m.name.to_lowercase()))
            .map(|m| PersonChange {
                name: m.name.to_string(),
                via: m.via.to_vec(),
                excluded: excluded_now.get(&m.name.to_lowercase()).copied(),
                until: None,
            })
            .collect();
        let gained: Vec<PersonChange> = after
            .users
            .iter()
            .filter(|m| !had.contains_key(&m.name.to_lowercase()))
            .map(|m| PersonChange {
                name: m.name.to_string(),
                via: m.via.to_vec(),
                excluded: None,
                until: m.until.as_deref().cloned(),
            })
            .collect();
        let people = PeopleDiff { lost, gained };
        if !people.is_empty() {
            out.insert(name.clone(), people);
        }
    }
    out
}

/// People sort case-insensitively, with the exact spelling as the tie-breaker.
fn by_name(a: &str, b: &str) -> std::cmp::Ordering {
    a.to_lowercase()
        .cmp(&b.to_lowercase())
        .then_with(|| a.cmp(b))
}

/// How far a version of the policy could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Passes `keyhole check`.
    Valid,
    /// Fails `keyhole check` but is TOML: diffed from a best-effort reading.
    Invalid,
    /// Not TOML (or not UTF-8): nothing to read; diffed as an empty policy.
    Unreadable,
    /// The file does not exist at that revision: diffed as an empty policy.
    Absent,
}

/// One version of the policy as far as it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub status: Status,
    /// The policy to diff: the validated one, a best-effort one, or `None` when there is none.
    pub policy: Option<Policy>,
    /// Errors and warnings, as `keyhole check` prints them.
    pub diagnostics: Vec<Diagnostic>,
}

/// Reads one version of the policy: validated when it can be, else as much of it as is there.
/// `path` names the file in diagnostics; `bytes` is `None` when the file does not exist.
pub fn read(path: &Path, bytes: Option<&[u8]>) -> Reading {
    let Some(bytes) = bytes else {
        return Reading {
            status: Status::Absent,
            policy: None,
            diagnostics: Vec::new(),
        };
    };
    match policy::parse_bytes(path, bytes) {
        Ok(checked) => Reading {
            status: Status::Valid,
            policy: Some(checked.policy),
            diagnostics: checked.warnings,
        },
        Err(invalid) => {
            let salvaged = std::str::from_utf8(bytes).ok().and_then(best_effort);
            Reading {
                status: if salvaged.is_some() {
                    Status::Invalid
                } else {
                    Status::Unreadable
                },
                policy: salvaged,
                diagnostics: invalid.diagnostics,
            }
        }
    }
}

/// Whatever a policy that fails validation still says, read leniently: every string found where
/// the policy expects names, nothing else. `None` when the text is not TOML at all.
fn best_effort(text: &str) -> Option<Policy> {
    let root: toml::Table = toml::from_str(text).ok()?;
    let strings = |table: Option<&toml::Value>, key: &str| -> Vec<String> {
        let items = table
            .and_then(|t| t.get(key))
            .and_then(toml::Value::as_array);
        let mut seen = BTreeSet::new();
        items
            .into_iter()
            .flatten()
            // `{ name = "carol", until = ... }` entries count by their name.
            .filter_map(|item| {
                item.as_str()
                    .or_else(|| item.get("name").and_then(toml::Value::as_str))
            })
            .filter(|name| seen.insert(name.to_lowercase()))
            .map(str::to_owned)
            .collect()
    };
    let principals = |table: Option<&toml::Value>| Principals {
        users: strings(table, "users"),
        groups: strings(table, "groups"),
        ..Principals::default()
    };
    let everywhere = root.get("everywhere");
    let deny = root.get("deny");
    let access_groups = root
        .get("access_groups")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flatten()
        .map(|(name, group)| {
            let group = group.is_table().then_some(group);
            let access_group = AccessGroup {
                name: name.clone(),
                description: group
                    .and_then(|g| g.get("description"))
                    .and_then(toml::Value::as_str)
                    .map(str::to_owned),
                principals: principals(group),
                options: strings(group, "options"),
            };
            (name.clone(), access_group)
        })
        .collect();
    Some(Policy {
        everywhere: principals(everywhere.filter(|v| v.is_table())),
        access_groups,
        deny: Deny {
            users: strings(deny.filter(|v| v.is_table()), "users"),
            fingerprints: strings(deny.filter(|v| v.is_table()), "fingerprints"),
        },
        automation: BTreeMap::new(),
    })
}

/// An empty policy: what "the file did not exist" is diffed as.
pub fn empty_policy() -> Policy {
    Policy {
        everywhere: Principals::default(),
        access_groups: BTreeMap::new(),
        deny: Deny::default(),
        automation: BTreeMap::new(),
    }
}

/// A [`Diagnostic`] in the JSON report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiagnosticEntry {
    pub severity: Severity,
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl From<&Diagnostic> for DiagnosticEntry {
    fn from(diagnostic: &Diagnostic) -> Self {
        DiagnosticEntry {
            severity: diagnostic.severity,
            file: diagnostic.file.display().to_string(),
            line: diagnostic.line,
            column: diagnostic.column,
            message: diagnostic.message.clone(),
        }
    }
}

/// One side of the comparison, as the report describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    /// The revision as given; `null` for the working tree.
    pub revision: Option<String>,
    /// The commit it resolved to; `null` for the working tree.
    pub commit: Option<String>,
    /// The policy's path from the repository root.
    pub path: String,
    pub status: Status,
    pub diagnostics: Vec<DiagnosticEntry>,
}

impl Side {
    /// "origin/main (1a2b3c4)" or "working tree".
    pub fn label(&self) -> String {
        match (&self.revision, &self.commit) {
            (Some(revision), Some(commit)) => {
                format!("{revision} ({})", commit.get(..7).unwrap_or(commit))
            }
            (Some(revision), None) => revision.clone(),
            (None, _) => "working tree".to_owned(),
        }
    }

    fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}

/// The whole `keyhole diff` report; its JSON form is documented in the README.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub base: Side,
    pub head: Side,
    /// Whether the head grants or withdraws anything the base did not (policy level).
    pub access_changed: bool,
    /// Whether both policies were resolved against AD (`--resolve`): then every access group
    /// carries `people`.
    pub resolved: bool,
    #[serde(flatten)]
    pub diff: PolicyDiff,
    /// With `--resolve`: directory warnings the head has and the base had not (e.g. a newly
    /// named user that AD does not have).
    pub warnings: Vec<String>,
    /// Caveats about how the diff was made (a base that did not exist or did not validate).
    pub notes: Vec<String>,
}

impl Report {
    /// One line: what changes, in counts.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.head.status == Status::Unreadable {
            return format!(
                "the head policy cannot be read ({}); nothing to diff",
                plural(self.head.errors(), "error")
            );
        }
        let mut by_change: BTreeMap<GroupChange, usize> = BTreeMap::new();
        for group in self.diff.access_groups.values() {
            if group.change != GroupChange::Unchanged {
                *by_change.entry(group.change).or_default() += 1;
            }
        }
        if !by_change.is_empty() {
            let counts: Vec<String> = by_change
                .iter()
                .map(|(change, count)| format!("{count} {}", change.as_str()))
                .collect();
            parts.push(format!("access groups: {}", counts.join(", ")));
        }
        let mut automation: BTreeMap<GroupChange, usize> = BTreeMap::new();
        for account in self.diff.automation.values() {
            *automation.entry(account.change).or_default() += 1;
        }
        if !automation.is_empty() {
            let counts: Vec<String> = automation
                .iter()
                .map(|(change, count)| format!("{count} {}", change.as_str()))
                .collect();
            parts.push(format!("automation accounts: {}", counts.join(", ")));
        }
        if !self.diff.everywhere.is_empty() || !self.diff.everywhere_until.is_empty() {
            parts.push("[everywhere] changed".to_owned());
        }
        if !self.diff.deny.is_empty() {
            parts.push("[deny] changed".to_owned());
        }
        if self.resolved {
            let (lose, gain) = self.people_counts();
            parts.push(format!(
                "{}, {}",
                people(lose, "lose", "loses"),
                people(gain, "gain", "gains")
            ));
        }
        if parts.is_empty() || (!self.access_changed && !self.resolved) {
            parts.insert(0, "no access change".to_owned());
        }
        let mut line = parts.join("; ");
        if self.head.status == Status::Invalid {
            let _ = write!(
                line,
                "; the head policy is INVALID ({})",
                self.head_counts()
            );
        }
        line
    }

    fn head_counts(&self) -> String {
        counts(&to_diagnostics(&self.head.diagnostics))
    }

    /// Distinct people who lose access to at least one access group, and who gain it.
    fn people_counts(&self) -> (usize, usize) {
        let mut lose = BTreeSet::new();
        let mut gain = BTreeSet::new();
        for people in self
            .diff
            .access_groups
            .values()
            .filter_map(|g| g.people.as_ref())
        {
            lose.extend(people.lost.iter().map(|p| p.name.to_lowercase()));
            gain.extend(people.gained.iter().map(|p| p.name.to_lowercase()));
        }
        (lose.len(), gain.len())
    }

    /// Access groups in reading order: losses first (deleted, then modified), then groups whose
    /// people change through `[everywhere]` / `[deny]`, then created; by name within each.
    fn groups_in_order(&self) -> Vec<(&String, &AccessGroupDiff)> {
        let mut groups: Vec<_> = self.diff.access_groups.iter().collect();
        groups.sort_by_key(|(name, group)| (group.change, name.as_str()));
        groups
    }
}

/// "1 person loses access", "3 people lose access".
fn people(count: usize, plural_verb: &str, singular_verb: &str) -> String {
    if count == 1 {
        format!("1 person {singular_verb} access")
    } else {
        format!("{count} people {plural_verb} access")
    }
}

/// "named directly", "via Web Team > Contractors", "via everywhere > Linux Admins".
fn why(via: &[String]) -> String {
    if via.is_empty() {
        "named directly".to_owned()
    } else {
        format!("via {}", via.join(VIA_SEPARATOR))
    }
}

/// The plain-text report, for terminals and CI logs.
pub fn text(report: &Report) -> String {
    let mut out = format!(
        "keyhole diff {} -> {}, {}\n{}\n",
        report.base.label(),
        report.head.label(),
        report.head.path,
        report.summary()
    );
    if !report.head.diagnostics.is_empty() {
        let what = match report.head.status {
            Status::Valid => "head policy warnings:".to_owned(),
            Status::Unreadable => "head policy errors:".to_owned(),
            _ => format!(
                "head policy errors ({}; `keyhole publish` would refuse it; the diff below is \
                 from a best-effort reading):",
                counts(&to_diagnostics(&report.head.diagnostics))
            ),
        };
        let _ = writeln!(out, "\n{what}");
        for d in &report.head.diagnostics {
            let _ = writeln!(out, "  {}", diagnostic_line(d));
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if report.head.status == Status::Unreadable {
        return out;
    }
    for (title, diff) in [("[everywhere]", &report.diff.everywhere)] {
        if !diff.is_empty() || !report.diff.everywhere_until.is_empty() {
            let _ = writeln!(out, "\n{title} (every access group)");
            principal_lines(&mut out, &diff.users, &diff.groups);
            until_lines(&mut out, &report.diff.everywhere_until);
        }
    }
    for (name, automation) in &report.diff.automation {
        let _ = writeln!(out, "\n[automation.{name}]: {}", automation.change.as_str());
        for (what, changes) in [
            ("key file", &automation.key_files),
            ("access group", &automation.access_groups),
        ] {
            for item in &changes.removed {
                let _ = writeln!(out, "  - {what} {}", everywhere_star(item));
            }
            for item in &changes.added {
                let _ = writeln!(out, "  + {what} {}", everywhere_star(item));
            }
        }
        for (what, field) in [
            ("owner", &automation.owner),
            ("ad_account", &automation.ad_account),
        ] {
            if let Some(field) = field {
                let _ = writeln!(
                    out,
                    "  ~ {what}: {} -> {}",
                    or_none(&field.base),
                    or_none(&field.head)
                );
            }
        }
    }
    if !report.diff.deny.is_empty() {
        let deny = &report.diff.deny;
        let _ = writeln!(out, "\n[deny] (every access group)");
        for name in &deny.users.removed {
            let _ = writeln!(out, "  - user {name}");
        }
        for fingerprint in &deny.fingerprints.removed {
            let _ = writeln!(out, "  - fingerprint {fingerprint}");
        }
        for name in &deny.users.added {
            let _ = writeln!(out, "  + user {name}");
        }
        for fingerprint in &deny.fingerprints.added {
            let _ = writeln!(out, "  + fingerprint {fingerprint}");
        }
    }
    for (name, group) in report.groups_in_order() {
        let _ = writeln!(out, "\n{name}: {}", group.change.as_str());
        if let Some(description) = &group.description {
            let _ = writeln!(
                out,
                "  ~ description: {} -> {}",
                quoted(&description.base),
                quoted(&description.head)
            );
        }
        principal_lines(&mut out, &group.users, &group.groups);
        until_lines(&mut out, &group.until);
        for option in &group.options.removed {
            let _ = writeln!(out, "  - option {option}");
        }
        for option in &group.options.added {
            let _ = writeln!(out, "  + option {option}");
        }
        if let Some(people) = &group.people {
            person_lines(&mut out, "loses access", "-", &people.lost);
            person_lines(&mut out, "gains access", "+", &people.gained);
        }
    }
    if !report.warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for warning in &report.warnings {
            let _ = writeln!(out, "  {warning}");
        }
    }
    out
}

fn until_lines(out: &mut String, changes: &[UntilChange]) {
    for change in changes {
        let _ = writeln!(
            out,
            "  ~ {} {} until: {} -> {}",
            change.kind,
            change.name,
            or_none(change.base.as_deref().unwrap_or_default()),
            or_none(change.head.as_deref().unwrap_or_default())
        );
    }
}

/// `(none)` for an empty field.
fn or_none(text: &str) -> String {
    if text.is_empty() {
        "(none)".to_owned()
    } else {
        text.to_owned()
    }
}

/// `*` (an automation account's `everywhere = true`) spelt out.
fn everywhere_star(item: &str) -> &str {
    if item == "*" {
        "* (everywhere = true)"
    } else {
        item
    }
}

fn principal_lines(out: &mut String, users: &Changes, groups: &Changes) {
    for name in &users.removed {
        let _ = writeln!(out, "  - user {name}");
    }
    for name in &groups.removed {
        let _ = writeln!(out, "  - group {name}");
    }
    for name in &users.added {
        let _ = writeln!(out, "  + user {name}");
    }
    for name in &groups.added {
        let _ = writeln!(out, "  + group {name}");
    }
}

fn person_lines(out: &mut String, title: &str, sign: &str, people: &[PersonChange]) {
    if people.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {title}:");
    let width = people
        .iter()
        .map(|p| p.name.chars().count())
        .max()
        .unwrap_or(0);
    for person in people {
        let _ = writeln!(
            out,
            "    {sign} {:width$}  {}{}{}",
            person.name,
            why(&person.via),
            excluded_suffix(person),
            until_suffix(person)
        );
    }
}

fn until_suffix(person: &PersonChange) -> String {
    match &person.until {
        Some(until) => format!(" (until {until})"),
        None => String::new(),
    }
}

fn excluded_suffix(person: &PersonChange) -> String {
    match person.excluded {
        Some(reason) => format!(" (now {})", reason.as_str()),
        None => String::new(),
    }
}

fn quoted(description: &Option<String>) -> String {
    match description {
        Some(text) => format!("{text:?}"),
        None => "(none)".to_owned(),
    }
}

fn diagnostic_line(d: &DiagnosticEntry) -> String {
    let severity = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    format!(
        "{}:{}:{}: {severity}: {}",
        d.file, d.line, d.column, d.message
    )
}

fn to_diagnostics(entries: &[DiagnosticEntry]) -> Vec<Diagnostic> {
    entries
        .iter()
        .map(|d| Diagnostic {
            severity: d.severity,
            file: d.file.clone().into(),
            line: d.line,
            column: d.column,
            message: d.message.clone(),
        })
        .collect()
}

/// Past this many rows a table is folded into `<details>`, so a new access group of a thousand
/// people does not bury the rest of the pull-request comment.
const FOLD_ROWS: usize = 25;

/// The first line of every Markdown report, invisible once rendered.
pub const MARKDOWN_MARKER: &str = "<!-- keyhole-diff -->";

/// The Markdown report, to be posted as a pull-request comment.
pub fn markdown(report: &Report) -> String {
    // The marker lets a CI job find and update its earlier comment instead of adding another.
    // Branch names and paths are the pull request author's to choose.
    let mut out = format!(
        "{MARKDOWN_MARKER}\n### keyhole: access change\n\n{} → {} · {}: **{}**\n",
        code(&report.base.label()),
        code(&report.head.label()),
        code(&report.head.path),
        report.summary()
    );
    if !report.head.diagnostics.is_empty() {
        let (kind, headline) = match report.head.status {
            Status::Valid => ("NOTE", "The head policy has warnings:".to_owned()),
            Status::Unreadable => (
                "CAUTION",
                "**The head policy cannot be read**; `keyhole check` fails:".to_owned(),
            ),
            _ => (
                "CAUTION",
                format!(
                    "**The head policy is invalid** ({}): `keyhole check` fails and `keyhole \
                     publish` would refuse it. The diff below is from a best-effort reading.",
                    counts(&to_diagnostics(&report.head.diagnostics))
                ),
            ),
        };
        // Diagnostics quote the policy file: a line of backticks in it must not end the block.
        let lines: Vec<String> = report
            .head
            .diagnostics
            .iter()
            .map(|d| diagnostic_line(d).replace(['\n', '\r'], " "))
            .collect();
        let fence = markdown::fence_for(lines.iter().map(String::as_str));
        let _ = writeln!(out, "\n> [!{kind}]\n> {headline}\n>\n> {fence}text");
        for line in &lines {
            let _ = writeln!(out, "> {line}");
        }
        let _ = writeln!(out, "> {fence}");
    }
    if !report.notes.is_empty() {
        out.push_str("\n> [!NOTE]\n");
        for note in &report.notes {
            let _ = writeln!(out, "> {}", prose(note));
        }
    }
    if report.head.status == Status::Unreadable {
        return out;
    }
    if !report.diff.everywhere.is_empty() || !report.diff.everywhere_until.is_empty() {
        let mut rows = Vec::new();
        principal_rows(
            &mut rows,
            &report.diff.everywhere.users,
            &report.diff.everywhere.groups,
        );
        until_rows(&mut rows, &report.diff.everywhere_until);
        table(&mut out, "`[everywhere]` (every access group)", &rows);
    }
    for (name, automation) in &report.diff.automation {
        let mut rows = Vec::new();
        for (what, changes) in [
            ("key file", &automation.key_files),
            ("access group", &automation.access_groups),
        ] {
            for item in &changes.removed {
                rows.push([
                    format!("➖ {what} removed"),
                    code(everywhere_star(item)),
                    String::new(),
                ]);
            }
            for item in &changes.added {
                rows.push([
                    format!("➕ {what} added"),
                    code(everywhere_star(item)),
                    String::new(),
                ]);
            }
        }
        for (what, field) in [
            ("owner", &automation.owner),
            ("ad_account", &automation.ad_account),
        ] {
            if let Some(field) = field {
                rows.push([
                    format!("✏️ {what}"),
                    code(&or_none(&field.head)),
                    format!("was {}", code(&or_none(&field.base))),
                ]);
            }
        }
        table(
            &mut out,
            &format!("automation {}: {}", code(name), automation.change.as_str()),
            &rows,
        );
    }
    if !report.diff.deny.is_empty() {
        let deny = &report.diff.deny;
        let mut rows = Vec::new();
        for name in &deny.users.removed {
            rows.push([
                "➖ user no longer denied".to_owned(),
                code(name),
                String::new(),
            ]);
        }
        for fingerprint in &deny.fingerprints.removed {
            rows.push([
                "➖ key no longer denied".to_owned(),
                code(fingerprint),
                String::new(),
            ]);
        }
        for name in &deny.users.added {
            rows.push(["➕ user denied".to_owned(), code(name), String::new()]);
        }
        for fingerprint in &deny.fingerprints.added {
            rows.push(["➕ key denied".to_owned(), code(fingerprint), String::new()]);
        }
        table(&mut out, "`[deny]` (every access group)", &rows);
    }
    for (name, group) in report.groups_in_order() {
        let mut rows = Vec::new();
        let only = |names: &[String]| Changes {
            added: names.to_vec(),
            removed: Vec::new(),
        };
        let removed = |names: &[String]| Changes {
            added: Vec::new(),
            removed: names.to_vec(),
        };
        let mut principal_losses = Vec::new();
        principal_rows(
            &mut principal_losses,
            &removed(&group.users.removed),
            &removed(&group.groups.removed),
        );
        let mut principal_gains = Vec::new();
        principal_rows(
            &mut principal_gains,
            &only(&group.users.added),
            &only(&group.groups.added),
        );
        // Losses first: principals removed, people losing access, then the gains.
        rows.extend(principal_losses);
        if let Some(people) = &group.people {
            for person in &people.lost {
                rows.push([
                    "🔻 loses access".to_owned(),
                    code(&person.name),
                    prose(&format!("{}{}", why(&person.via), excluded_suffix(person))),
                ]);
            }
        }
        rows.extend(principal_gains);
        if let Some(people) = &group.people {
            for person in &people.gained {
                rows.push([
                    "🔺 gains access".to_owned(),
                    code(&person.name),
                    format!("{}{}", prose(&why(&person.via)), until_suffix(person)),
                ]);
            }
        }
        until_rows(&mut rows, &group.until);
        for option in &group.options.removed {
            rows.push([
                "➖ restriction removed".to_owned(),
                code(option),
                String::new(),
            ]);
        }
        for option in &group.options.added {
            rows.push([
                "➕ restriction added".to_owned(),
                code(option),
                "on every key line of the group".to_owned(),
            ]);
        }
        if let Some(description) = &group.description {
            rows.push([
                "✏️ description".to_owned(),
                prose(&quoted(&description.head)),
                format!("was {}", prose(&quoted(&description.base))),
            ]);
        }
        table(
            &mut out,
            &format!("{}: {}", code(name), group.change.as_str()),
            &rows,
        );
    }
    if !report.warnings.is_empty() {
        out.push_str("\n<details><summary>Directory warnings</summary>\n\n");
        for warning in &report.warnings {
            let _ = writeln!(out, "- {}", prose(warning));
        }
        out.push_str("\n</details>\n");
    }
    out
}

fn until_rows(rows: &mut Vec<[String; 3]>, changes: &[UntilChange]) {
    for change in changes {
        rows.push([
            format!("⏳ {} end date", change.kind),
            code(&change.name),
            format!(
                "until {} (was {})",
                or_none(change.head.as_deref().unwrap_or_default()),
                or_none(change.base.as_deref().unwrap_or_default())
            ),
        ]);
    }
}

fn principal_rows(rows: &mut Vec<[String; 3]>, users: &Changes, groups: &Changes) {
    for name in &users.removed {
        rows.push(["➖ user removed".to_owned(), code(name), String::new()]);
    }
    for name in &groups.removed {
        rows.push(["➖ AD group removed".to_owned(), code(name), String::new()]);
    }
    for name in &users.added {
        rows.push(["➕ user added".to_owned(), code(name), String::new()]);
    }
    for name in &groups.added {
        rows.push(["➕ AD group added".to_owned(), code(name), String::new()]);
    }
}

fn table(out: &mut String, title: &str, rows: &[[String; 3]]) {
    let _ = writeln!(out, "\n#### {title}\n");
    if rows.is_empty() {
        out.push_str("No change to its people.\n");
        return;
    }
    let folded = rows.len() > FOLD_ROWS;
    if folded {
        let _ = writeln!(out, "<details><summary>{} changes</summary>\n", rows.len());
    }
    // The "how" column only when some row has one: offline, it would always be empty.
    if rows.iter().any(|[_, _, how]| !how.is_empty()) {
        out.push_str("| change | name | how |\n|---|---|---|\n");
        for [change, name, how] in rows {
            let _ = writeln!(out, "| {change} | {name} | {how} |");
        }
    } else {
        out.push_str("| change | name |\n|---|---|\n");
        for [change, name, _] in rows {
            let _ = writeln!(out, "| {change} | {name} |");
        }
    }
    if folded {
        out.push_str("\n</details>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::resolve::{Excluded, Membership};

    fn parse(text: &str) -> Policy {
        policy::parse(Path::new("p.toml"), text)
            .unwrap_or_else(|invalid| panic!("{invalid}"))
            .policy
    }

    fn names(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const BASE: &str = r#"
[everywhere]
users = ["alice.admin"]
[access_groups.web]
description = "Web"
users = ["bob", "carol"]
groups = ["Web Team", "SRE"]
[access_groups.old]
users = ["dave"]
[access_groups.same]
users = ["erin"]
[deny]
users = ["mallory"]
"#;

    #[test]
    fn principals_added_and_removed_per_access_group_case_insensitively() {
        let head = parse(
            r#"
[everywhere]
users = ["Alice.Admin"]
groups = ["Linux Admins"]
[access_groups.web]
description = "Web"
users = ["Bob", "frank", "Carol"]
groups = ["web team"]
[access_groups.new]
users = ["dave"]
groups = ["Ops"]
[access_groups.same]
users = ["erin"]
[deny]
users = ["mallory", "trent"]
"#,
        );
        let diff = diff_policies(&parse(BASE), &head);
        assert!(diff.changes_access());
        assert_eq!(
            diff.everywhere,
            PrincipalsDiff {
                users: Changes::default(),
                groups: Changes {
                    added: names(&["Linux Admins"]),
                    removed: vec![]
                },
            }
        );
        assert_eq!(diff.deny.users.added, ["trent"]);
        assert!(diff.deny.fingerprints.is_empty());
        let groups: Vec<(&str, GroupChange)> = diff
            .access_groups
            .iter()
            .map(|(name, group)| (name.as_str(), group.change))
            .collect();
        // `same` is unchanged and left out; a rename shows as deleted + created.
        assert_eq!(
            groups,
            [
                ("new", GroupChange::Created),
                ("old", GroupChange::Deleted),
                ("web", GroupChange::Modified),
            ]
        );
        let web = &diff.access_groups["web"];
        assert_eq!(web.users.added, ["frank"]);
        assert!(web.users.removed.is_empty(), "Bob is bob");
        assert_eq!(web.groups.removed, ["SRE"]);
        assert!(web.groups.added.is_empty());
        assert_eq!(diff.access_groups["new"].users.added, ["dave"]);
        assert_eq!(diff.access_groups["new"].groups.added, ["Ops"]);
        assert_eq!(diff.access_groups["old"].users.removed, ["dave"]);
    }

    #[test]
    fn identical_policies_and_description_edits_change_no_access() {
        let base = parse(BASE);
        assert_eq!(diff_policies(&base, &base), PolicyDiff::default());
        assert!(!diff_policies(&base, &base).changes_access());

        let edited = parse(&BASE.replace("description = \"Web\"", ""));
        let diff = diff_policies(&base, &edited);
        assert!(!diff.changes_access());
        assert_eq!(
            diff.access_groups["web"].description,
            Some(DescriptionChange {
                base: Some("Web".into()),
                head: None
            })
        );
    }

    #[test]
    fn deny_fingerprints_compare_exactly() {
        let key = "SHA256:owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg";
        let head = parse(&format!("{BASE}fingerprints = [\"{key}\"]\n"));
        let diff = diff_policies(&parse(BASE), &head);
        assert_eq!(diff.deny.fingerprints.added, [key]);
        assert!(diff.changes_access());
        let back = diff_policies(&head, &parse(BASE));
        assert_eq!(back.deny.fingerprints.removed, [key]);
    }

    fn member(name: &str, via: &[&str]) -> Member {
        Member {
            name: name.into(),
            via: names(via).into(),
            until: None,
        }
    }

    fn resolution(groups: Vec<(&str, Vec<Member>, Vec<Excluded>)>) -> Resolution {
        Resolution {
            access_groups: groups
                .into_iter()
                .map(|(name, users, excluded)| (name.to_owned(), Membership { users, excluded }))
                .collect(),
            warnings: vec![],
        }
    }

    #[test]
    fn people_gained_and_lost_keep_the_chain_that_gives_or_gave_access() {
        let base = resolution(vec![
            (
                "web",
                vec![
                    member("bob", &[]),
                    member("carol", &["Web Team", "Contractors"]),
                    member("mallory", &["Web Team"]),
                ],
                vec![],
            ),
            ("old", vec![member("dave", &[])], vec![]),
        ]);
        let head = resolution(vec![
            (
                "web",
                // bob now comes through a group: same access, not a change.
                vec![
                    member("bob", &["Web Team"]),
                    member("Erin", &["everywhere"]),
                ],
                vec![Excluded {
                    name: "mallory".into(),
                    reason: Exclusion::Denied,
                }],
            ),
            ("new", vec![member("dave", &["Ops"])], vec![]),
        ]);
        let people = diff_resolutions(&base, &head);
        assert_eq!(people.keys().collect::<Vec<_>>(), ["new", "old", "web"]);
        let web = &people["web"];
        assert_eq!(
            web.lost,
            [
                PersonChange {
                    name: "carol".into(),
                    via: names(&["Web Team", "Contractors"]),
                    excluded: None,
                    until: None
                },
                PersonChange {
                    name: "mallory".into(),
                    via: names(&["Web Team"]),
                    excluded: Some(Exclusion::Denied),
                    until: None
                },
            ]
        );
        assert_eq!(
            web.gained,
            [PersonChange {
                name: "Erin".into(),
                via: names(&["everywhere"]),
                excluded: None,
                until: None
            }]
        );
        assert_eq!(people["old"].lost[0].name, "dave");
        assert_eq!(people["new"].gained[0].via, ["Ops"]);
        assert!(diff_resolutions(&base, &base).is_empty());
    }

    #[test]
    fn add_people_lists_groups_changed_only_through_everywhere() {
        let mut diff = diff_policies(&parse(BASE), &parse(BASE));
        let mut people = BTreeMap::new();
        people.insert(
            "same".to_owned(),
            PeopleDiff {
                lost: vec![],
                gained: vec![PersonChange {
                    name: "x".into(),
                    via: names(&["everywhere"]),
                    excluded: None,
                    until: None,
                }],
            },
        );
        diff.add_people(people);
        assert_eq!(diff.access_groups["same"].change, GroupChange::Unchanged);
        assert!(!diff.changes_access(), "the policy level did not change");
    }

    #[test]
    fn an_invalid_policy_is_read_as_far_as_it_goes() {
        let reading = read(
            Path::new("p.toml"),
            Some(
                br#"
[access_groups.Web]
users = ["bob", "bob", 7]
grups = ["SRE"]
[access_groups.db]
groups = "DBA"
[deny]
users = ["mallory"]
"#,
            ),
        );
        assert_eq!(reading.status, Status::Invalid);
        assert!(crate::diagnostic::has_errors(&reading.diagnostics));
        let policy = reading.policy.unwrap();
        assert_eq!(policy.access_groups["Web"].principals.users, ["bob"]);
        assert!(policy.access_groups["Web"].principals.groups.is_empty());
        assert!(policy.access_groups["db"].principals.groups.is_empty());
        assert_eq!(policy.deny.users, ["mallory"]);

        let broken = read(Path::new("p.toml"), Some(b"[access_groups.web\n"));
        assert_eq!(broken.status, Status::Unreadable);
        assert_eq!(broken.policy, None);
        assert_eq!(broken.diagnostics.len(), 1);

        assert_eq!(read(Path::new("p.toml"), None).status, Status::Absent);
        let valid = read(Path::new("p.toml"), Some(BASE.as_bytes()));
        assert_eq!(valid.status, Status::Valid);
        assert_eq!(valid.policy, Some(parse(BASE)));
    }

    fn report(diff: PolicyDiff, resolved: bool) -> Report {
        let side = |revision: &str| Side {
            revision: Some(revision.into()),
            commit: Some("0123456789abcdef".into()),
            path: "access-groups.toml".into(),
            status: Status::Valid,
            diagnostics: vec![],
        };
        Report {
            base: side("main"),
            head: side("pr"),
            access_changed: diff.changes_access(),
            resolved,
            diff,
            warnings: vec![],
            notes: vec![],
        }
    }

    #[test]
    fn markdown_renders_nothing_a_policy_author_or_ad_wrote_as_markdown() {
        let hostile =
            "[x](https://evil.example) ![i](https://evil.example/p.png) @corp/admins <img src=x>";
        let base = parse(BASE);
        let mut head = base.clone();
        let web = head.access_groups.get_mut("web").unwrap();
        web.description = Some(format!("Web {hostile}"));
        web.principals.users = names(&["bob", "carol", "mal`lory"]);
        let mut diff = diff_policies(&base, &head);
        diff.add_people(BTreeMap::from([(
            "web".to_owned(),
            PeopleDiff {
                lost: vec![],
                gained: vec![PersonChange {
                    name: "eve".into(),
                    via: names(&[&format!("AD {hostile}")]),
                    excluded: None,
                    until: None,
                }],
            },
        )]));
        let mut report = report(diff, true);
        report.head.revision = Some(format!("pr`{hostile}"));
        report.warnings = vec![format!("AD group {hostile} has no members")];
        report.head.status = Status::Invalid;
        report.head.diagnostics = vec![DiagnosticEntry {
            file: "p.toml".into(),
            line: 1,
            column: 1,
            severity: Severity::Error,
            message: "unknown key ```\n> [!NOTE]\n> @everyone".into(),
        }];
        let markdown = markdown(&report);
        let live = crate::markdown::live_text(&markdown);
        for construct in ["](https://", "![i]", "<img", "@corp", "@everyone", "`"] {
            assert!(
                !live.contains(construct),
                "{construct:?} is live in:\n{markdown}"
            );
        }
        assert!(markdown.contains("``mal`lory``"), "{markdown}");
        // The quoted diagnostic cannot close its block: the fence is longer than its backticks.
        assert!(markdown.contains("> ````text\n"), "{markdown}");
    }

    #[test]
    fn markdown_puts_losses_first_escapes_names_and_folds_long_tables() {
        let base = parse(BASE);
        let mut head = base.clone();
        let web = head.access_groups.get_mut("web").unwrap();
        web.principals.users = names(&["bob", "x|y"]);
        let mut diff = diff_policies(&base, &head);
        let gained: Vec<PersonChange> = (0..30)
            .map(|i| PersonChange {
                name: format!("user{i:02}"),
                via: names(&["Big"]),
                excluded: None,
                until: None,
            })
            .collect();
        let lost = vec![PersonChange {
            name: "carol".into(),
            via: vec![],
            excluded: None,
            until: None,
        }];
        diff.add_people(BTreeMap::from([(
            "web".to_owned(),
            PeopleDiff { lost, gained },
        )]));
        let markdown = markdown(&report(diff, true));
        assert!(markdown.starts_with(MARKDOWN_MARKER), "{markdown}");
        assert!(
            markdown.contains("`main (0123456)` → `pr (0123456)`"),
            "{markdown}"
        );
        assert!(
            markdown.contains("1 person loses access, 30 people gain access"),
            "{markdown}"
        );
        let removed = markdown.find("| ➖ user removed | `carol` |").unwrap();
        let loses = markdown
            .find("| 🔻 loses access | `carol` | named directly |")
            .unwrap();
        let added = markdown.find("| ➕ user added | `x\\|y` |").unwrap();
        let gains = markdown
            .find("| 🔺 gains access | `user00` | via Big |")
            .unwrap();
        assert!(
            removed < loses && loses < added && added < gains,
            "{markdown}"
        );
        assert!(
            markdown.contains("<details><summary>33 changes</summary>"),
            "{markdown}"
        );
    }

    #[test]
    fn text_says_when_nothing_changes() {
        let base = parse(BASE);
        let text = text(&report(diff_policies(&base, &base), false));
        assert_eq!(
            text,
            "keyhole diff main (0123456) -> pr (0123456), access-groups.toml\nno access change\n"
        );
    }
}
