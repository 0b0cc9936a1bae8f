//! The plan: what a publish would change, and why, computed purely from the published manifest
//! and a fresh render. Also the safety guard, which judges a plan before anything is written.
//!
//! Change detection is by SHA-256: a group whose rendered file hashes to what the manifest records
//! is `unchanged` and costs no request at all. Each user who would lose access gets a reason a
//! person can act on (disabled, left group X, no longer in policy, denied, …), and removals caused
//! by `[deny]` are the only ones the guard never holds back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::manifest::{FingerprintEntry, GroupEntry, Manifest};
use crate::policy::Policy;
use crate::render::{GroupFile, Problem, Rendered, RenderedGroup};
use crate::resolve::{EVERYWHERE, Exclusion, Resolution};
use crate::settings::SafetySettings;

/// Groups of fewer users than this are not judged by `max_removed_fraction` (one of three is
/// already a third).
const GUARD_MIN_GROUP_SIZE: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Delete,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserChange {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPlan {
    pub action: Action,
    pub added_users: Vec<UserChange>,
    pub removed_users: Vec<UserChange>,
    pub added_fingerprints: Vec<String>,
    pub removed_fingerprints: Vec<String>,
    /// The rendered file (what `create` and `update` write); `None` for held, unselected and
    /// deleted groups.
    #[serde(skip)]
    pub file: Option<GroupFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Guard {
    pub refused: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub groups: BTreeMap<String, GroupPlan>,
    pub problems: Vec<Problem>,
    pub guard: Guard,
    /// The manifest to write when anything changes.
    #[serde(skip)]
    pub manifest: Manifest,
    /// Nothing changed, but the signed manifest is past half its validity: write it again with a
    /// new `not_after` (SPEC.md "Signing").
    #[serde(skip)]
    pub resign: bool,
    /// `publish --rewrite-all`: write every rendered group file and a new manifest generation,
    /// changed or not (after tampering or a manual edit in the bucket).
    #[serde(skip)]
    pub rewrite: bool,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.groups.values().any(|g| g.action != Action::Unchanged)
    }

    /// Whether a publish of this plan writes anything at all.
    pub fn writes(&self) -> bool {
        self.has_changes() || self.resign || self.rewrite
    }

    /// Turns this plan into a rewrite of every rendered group under a new manifest generation.
    pub fn rewrite_all(&mut self) {
        if !self.writes() {
            self.manifest.generation += 1;
        }
        self.rewrite = true;
    }

    /// The group files a publish of this plan writes.
    pub fn files_to_write(&self) -> impl Iterator<Item = (&String, &GroupFile)> {
        self.groups.iter().filter_map(|(name, group)| {
            let write = self.rewrite || matches!(group.action, Action::Create | Action::Update);
            group
                .file
                .as_ref()
                .filter(|_| write)
                .map(|file| (name, file))
        })
    }
}

/// Which access groups a publish may touch (`publish --group`); `None` means all.
pub type Selection<'a> = Option<&'a BTreeSet<String>>;

/// Compares `rendered` with what `published` records and judges the result with the guard.
pub fn plan(
    published: &Manifest,
    rendered: &Rendered,
    resolution: &Resolution,
    policy: &Policy,
    safety: &SafetySettings,
    selection: Selection<'_>,
) -> Plan {
    let selected = |group: &str| selection.is_none_or(|set| set.contains(group));
    let published_keys = fingerprints_by_group(published);
    let mut groups = BTreeMap::new();
    let mut problems = rendered.problems.clone();
    let mut next = Manifest {
        generation: published.generation,
        groups: BTreeMap::new(),
        fingerprints: BTreeMap::new(),
        ..Manifest::empty()
    };

    for (name, outcome) in &rendered.groups {
        let previous = published.groups.get(name);
        let file = match outcome {
            RenderedGroup::Ready(file) if selected(name) => file,
            RenderedGroup::Ready(_) => {
                keep(&mut next, published, &published_keys, name);
                groups.insert(name.clone(), unchanged());
                continue;
            }
            RenderedGroup::Held { unknown } => {
                problems.extend(unknown.iter().map(|user| Problem {
                    user: user.clone(),
                    reason: format!(
                        "keys unknown (home unreadable); access group {name} left as published"
                    ),
                }));
                keep(&mut next, published, &published_keys, name);
                groups.insert(name.clone(), unchanged());
                continue;
            }
        };
        let action = match previous {
            None => Action::Create,
            Some(entry) if entry.sha256 == file.sha256 => Action::Unchanged,
            Some(_) => Action::Update,
        };
        let before_users: BTreeSet<&str> = previous
            .map(|entry| entry.users.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let after_users: BTreeSet<&str> = file.users.iter().map(String::as_str).collect();
        let before_keys: BTreeSet<&str> = keys_of(&published_keys, name).collect();
        let after_keys: BTreeSet<&str> = file.keys.iter().map(|(_, fp)| fp.as_str()).collect();

        let group_plan = GroupPlan {
            action,
            added_users: after_users
                .difference(&before_users)
                .map(|user| UserChange {
                    name: (*user).to_owned(),
                    reason: "new member".into(),
                })
                .collect(),
            removed_users: before_users
                .difference(&after_users)
                .map(|user| UserChange {
                    name: (*user).to_owned(),
                    reason: removal_reason(user, name, previous, resolution, policy, rendered),
                })
                .collect(),
            added_fingerprints: after_keys
                .difference(&before_keys)
                .map(|fp| fp.to_string())
                .collect(),
            removed_fingerprints: before_keys
                .difference(&after_keys)
                .map(|fp| fp.to_string())
                .collect(),
            file: Some(file.clone()),
        };
        record(&mut next, name, file);
        groups.insert(name.clone(), group_plan);
    }

    // Access groups that are published but no longer in the policy are pruned.
    for (name, entry) in &published.groups {
        if rendered.groups.contains_key(name) {
            continue;
        }
        if !selected(name) {
            keep(&mut next, published, &published_keys, name);
            continue;
        }
        groups.insert(
            name.clone(),
            GroupPlan {
                action: Action::Delete,
                added_users: vec![],
                removed_users: entry
                    .users
                    .iter()
                    .map(|user| UserChange {
                        name: user.clone(),
                        reason: "access group no longer in policy".into(),
                    })
                    .collect(),
                added_fingerprints: vec![],
                removed_fingerprints: keys_of(&published_keys, name).map(str::to_owned).collect(),
                file: None,
            },
        );
    }

    let mut plan = Plan {
        guard: Guard::default(),
        groups,
        problems,
        manifest: next,
        resign: false,
        rewrite: false,
    };
    if plan.has_changes() {
        plan.manifest.generation = published.generation + 1;
    }
    plan.guard = judge(&plan, published, safety);
    plan
}

fn unchanged() -> GroupPlan {
    GroupPlan {
        action: Action::Unchanged,
        added_users: vec![],
        removed_users: vec![],
        added_fingerprints: vec![],
        removed_fingerprints: vec![],
        file: None,
    }
}

/// The published fingerprints of each access group, indexed in one pass over the manifest.
/// Asking the manifest per group (`Manifest::fingerprints_of`) scans every fingerprint each
/// time: 1,000 groups × 15,000 keys made that scan most of a 10k-user run (BENCHMARKS.md).
fn fingerprints_by_group(published: &Manifest) -> HashMap<&str, Vec<&str>> {
    let mut index: HashMap<&str, Vec<&str>> = HashMap::new();
    for (fingerprint, entry) in &published.fingerprints {
        for group in &entry.groups {
            index
                .entry(group.as_str())
                .or_default()
                .push(fingerprint.as_str());
        }
    }
    index
}

fn keys_of<'m>(
    index: &HashMap<&'m str, Vec<&'m str>>,
    group: &str,
) -> impl Iterator<Item = &'m str> {
    index.get(group).into_iter().flatten().copied()
}

/// Carries a group's published entry (and its fingerprints) over to the next manifest unchanged.
fn keep(
    next: &mut Manifest,
    published: &Manifest,
    published_keys: &HashMap<&str, Vec<&str>>,
    group: &str,
) {
    let Some(entry) = published.groups.get(group) else {
        return;
    };
    next.groups.insert(group.to_owned(), entry.clone());
    for fingerprint in keys_of(published_keys, group) {
        if let Some(owner) = published.fingerprints.get(fingerprint) {
            add_fingerprint(next, fingerprint, &owner.user, group);
        }
    }
}

fn record(next: &mut Manifest, group: &str, file: &GroupFile) {
    next.groups.insert(
        group.to_owned(),
        GroupEntry {
            sha256: file.sha256.clone(),
            users: file.users.clone(),
            keys: file.keys.len(),
            via: file.via.clone(),
        },
    );
    for (user, fingerprint) in &file.keys {
        add_fingerprint(next, fingerprint, user, group);
    }
}

fn add_fingerprint(next: &mut Manifest, fingerprint: &str, user: &str, group: &str) {
    let entry = next
        .fingerprints
        .entry(fingerprint.to_owned())
        .or_insert_with(|| FingerprintEntry {
            user: user.to_owned(),
            groups: Vec::new(),
        });
    // Kept sorted by inserting in place: a key of someone in every access group (the
    // [everywhere] admins) is added once per group, and re-sorting each time was quadratic.
    if let Err(at) = entry.groups.binary_search_by(|g| g.as_str().cmp(group)) {
        entry.groups.insert(at, group.to_owned());
    }
}

/// Why `user` is no longer in `group`'s file, in words an operator can act on.
fn removal_reason(
    user: &str,
    group: &str,
    previous: Option<&GroupEntry>,
    resolution: &Resolution,
    policy: &Policy,
    rendered: &Rendered,
) -> String {
    let Some(membership) = resolution.access_groups.get(group) else {
        return "access group no longer in policy".into();
    };
    if let Some(excluded) = membership.excluded.iter().find(|e| e.name == user) {
        return match excluded.reason {
            Exclusion::NotFound => "not found in AD".into(),
            other => other.as_str().into(),
        };
    }
    if membership.users.iter().any(|m| m.name == user) {
        // Still a member, but none of their keys made it into the file.
        if rendered.denied_keys.contains_key(user) {
            return Exclusion::Denied.as_str().into();
        }
        return "no valid keys".into();
    }
    let via = previous
        .and_then(|entry| entry.via.get(user))
        .cloned()
        .unwrap_or_default();
    let (principals, chain) = match via.split_first() {
        Some((first, rest)) if first == EVERYWHERE => (&policy.everywhere, rest),
        _ => match policy.access_groups.get(group) {
            Some(access_group) => (&access_group.principals, via.as_slice()),
            None => return "access group no longer in policy".into(),
        },
    };
    match chain.first() {
        Some(ad_group)
            if principals
                .groups
                .iter()
                .any(|g| g.eq_ignore_ascii_case(ad_group)) =>
        {
            format!("left group {ad_group}")
        }
        _ => "no longer in policy".into(),
    }
}

/// The safety guard (SPEC.md): refuse when any group of `GUARD_MIN_GROUP_SIZE`+ users would lose
/// more than `max_removed_fraction` of them, or when more than `max_removed_users` people would
/// lose access in total. Removals caused by `[deny]` never count.
fn judge(plan: &Plan, published: &Manifest, safety: &SafetySettings) -> Guard {
    let mut reasons = Vec::new();
    let mut everyone_removed = BTreeSet::new();
    for (name, group) in &plan.groups {
        let removed: Vec<&UserChange> = group
            .removed_users
            .iter()
            .filter(|change| change.reason != Exclusion::Denied.as_str())
            .collect();
        everyone_removed.extend(removed.iter().map(|change| change.name.as_str()));
        let before = published
            .groups
            .get(name)
            .map_or(0, |entry| entry.users.len());
        if before >= GUARD_MIN_GROUP_SIZE && !removed.is_empty() {
            let fraction = removed.len() as f64 / before as f64;
            if fraction > safety.max_removed_fraction {
                reasons.push(format!(
                    "access group {name} would lose {} of its {before} users ({:.0}% > max_removed_fraction {:.0}%)",
                    removed.len(),
                    fraction * 100.0,
                    safety.max_removed_fraction * 100.0
                ));
            }
        }
    }
    if everyone_removed.len() > safety.max_removed_users {
        reasons.push(format!(
            "{} users would lose access (> max_removed_users {})",
            everyone_removed.len(),
            safety.max_removed_users
        ));
    }
    Guard {
        refused: !reasons.is_empty(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::{AccessGroup, Deny, Principals};
    use crate::render::sha256_hex;
    use crate::resolve::{Excluded, Member, Membership};

    fn safety() -> SafetySettings {
        SafetySettings {
            max_removed_fraction: 0.25,
            max_removed_users: 20,
            lock_file: PathBuf::from("/nonexistent"),
        }
    }

    fn file(users: &[&str]) -> GroupFile {
        let body = users
            .iter()
            .map(|u| format!("# {u}\nkey-of-{u}\n"))
            .collect::<String>();
        GroupFile {
            sha256: sha256_hex(body.as_bytes()),
            body,
            users: users.iter().map(|u| u.to_string()).collect(),
            via: users
                .iter()
                .map(|u| (u.to_string(), vec!["Team".to_string()]))
                .collect(),
            keys: users
                .iter()
                .map(|u| (u.to_string(), format!("SHA256:{u}")))
                .collect(),
        }
    }

    fn rendered(groups: &[(&str, &[&str])]) -> Rendered {
        Rendered {
            groups: groups
                .iter()
                .map(|(name, users)| (name.to_string(), RenderedGroup::Ready(file(users))))
                .collect(),
            problems: vec![],
            denied_keys: BTreeMap::new(),
        }
    }

    fn published(groups: &[(&str, &[&str])]) -> Manifest {
        let mut manifest = Manifest::empty();
        manifest.generation = 3;
        for (name, users) in groups {
            record(&mut manifest, name, &file(users));
        }
        manifest
    }

    fn policy(groups: &[&str]) -> Policy {
        Policy {
            everywhere: Principals {
                users: vec![],
                groups: vec![],
            },
            access_groups: groups
                .iter()
                .map(|name| {
                    (
                        name.to_string(),
                        AccessGroup {
                            name: name.to_string(),
                            description: None,
                            principals: Principals {
                                users: vec![],
                                groups: vec!["Team".into()],
                            },
                        },
                    )
                })
                .collect(),
            deny: Deny {
                users: vec![],
                fingerprints: vec![],
            },
        }
    }

    /// (access group, members, excluded with their reason)
    type GroupSpec<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, Exclusion)]);

    fn resolution(groups: &[GroupSpec<'_>]) -> Resolution {
        Resolution {
            access_groups: groups
                .iter()
                .map(|(name, users, excluded)| {
                    (
                        name.to_string(),
                        Membership {
                            users: users
                                .iter()
                                .map(|u| Member {
                                    name: u.to_string(),
                                    via: vec!["Team".into()],
                                })
                                .collect(),
                            excluded: excluded
                                .iter()
                                .map(|(u, reason)| Excluded {
                                    name: u.to_string(),
                                    reason: *reason,
                                })
                                .collect(),
                        },
                    )
                })
                .collect(),
            warnings: vec![],
        }
    }

    #[test]
    fn nothing_changed_means_every_group_unchanged_and_the_same_generation() {
        let before = published(&[("web", &["a", "b"])]);
        let plan = plan(
            &before,
            &rendered(&[("web", &["a", "b"])]),
            &resolution(&[("web", &["a", "b"], &[])]),
            &policy(&["web"]),
            &safety(),
            None,
        );
        assert!(!plan.has_changes());
        assert_eq!(plan.groups["web"].action, Action::Unchanged);
        assert_eq!(plan.manifest, before);
    }

    #[test]
    fn changes_name_each_user_and_key_with_a_reason() {
        let before = published(&[("web", &["a", "b", "c"]), ("old", &["a"])]);
        let plan = plan(
            &before,
            &rendered(&[("web", &["a", "d"]), ("new", &["a"])]),
            &resolution(&[
                ("web", &["a", "d"], &[("b", Exclusion::Disabled)]),
                ("new", &["a"], &[]),
            ]),
            &policy(&["web", "new"]),
            &safety(),
            None,
        );
        let web = &plan.groups["web"];
        assert_eq!(web.action, Action::Update);
        assert_eq!(
            web.added_users,
            [UserChange {
                name: "d".into(),
                reason: "new member".into()
            }]
        );
        assert_eq!(
            web.removed_users,
            [
                UserChange {
                    name: "b".into(),
                    reason: "disabled".into()
                },
                UserChange {
                    name: "c".into(),
                    reason: "left group Team".into()
                },
            ]
        );
        assert_eq!(web.added_fingerprints, ["SHA256:d"]);
        assert_eq!(web.removed_fingerprints, ["SHA256:b", "SHA256:c"]);
        assert_eq!(plan.groups["new"].action, Action::Create);
        assert_eq!(plan.groups["old"].action, Action::Delete);
        assert_eq!(plan.manifest.generation, 4);
        assert!(!plan.manifest.groups.contains_key("old"));
        assert_eq!(
            plan.manifest.fingerprints["SHA256:a"].groups,
            ["new", "web"]
        );
    }

    #[test]
    fn the_guard_refuses_large_removals_but_never_denials() {
        let before = published(&[("web", &["a", "b", "c", "d", "e"])]);
        let after = rendered(&[("web", &["a", "b", "c"])]);
        let lost_two = plan(
            &before,
            &after,
            &resolution(&[("web", &["a", "b", "c"], &[])]),
            &policy(&["web"]),
            &safety(),
            None,
        );
        assert!(lost_two.guard.refused);
        assert_eq!(
            lost_two.guard.reasons,
            ["access group web would lose 2 of its 5 users (40% > max_removed_fraction 25%)"]
        );
        let denied = resolution(&[(
            "web",
            &["a", "b", "c"],
            &[("d", Exclusion::Denied), ("e", Exclusion::Denied)],
        )]);
        let lost_to_deny = plan(&before, &after, &denied, &policy(&["web"]), &safety(), None);
        assert!(!lost_to_deny.guard.refused, "{:?}", lost_to_deny.guard);
    }

    #[test]
    fn held_and_unselected_groups_keep_what_is_published() {
        let before = published(&[("web", &["a"]), ("db", &["b"])]);
        let mut after = rendered(&[("db", &["c"])]);
        after.groups.insert(
            "web".into(),
            RenderedGroup::Held {
                unknown: vec!["a".into()],
            },
        );
        let only_web = BTreeSet::from(["web".to_string()]);
        let plan = plan(
            &before,
            &after,
            &resolution(&[("web", &["a"], &[]), ("db", &["c"], &[])]),
            &policy(&["web", "db"]),
            &safety(),
            Some(&only_web),
        );
        assert!(!plan.has_changes());
        assert_eq!(plan.manifest, before);
        assert!(
            plan.problems[0]
                .reason
                .contains("access group web left as published")
        );
    }
}
