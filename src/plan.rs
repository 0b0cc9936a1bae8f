//! The plan: what a publish would change, and why, computed purely from the published manifest
//! and a fresh render. Also the safety guard, which judges a plan before anything is written.
//!
//! Change detection is by SHA-256: a group whose rendered file hashes to what the manifest records
//! is `unchanged` and costs no request at all. Each user who would lose access gets a reason a
//! person can act on (disabled, left group X, no longer in policy, denied, …), and removals caused
//! by `[deny]` are the only ones the guard never holds back.
//!
//! Memory stays flat in the number of access groups: groups are rendered and compared one at a
//! time, the plan keeps each file's hash (never its body), and the published manifest is consumed
//! into the next one rather than copied. At 10,000 users and 1,000 access groups this took a
//! publish's peak RSS from 217 MB to 82 MB (BENCHMARKS.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::manifest::{FingerprintEntry, GroupEntry, Manifest};
use crate::policy::Policy;
use crate::render::{GroupFile, Problem, RenderedGroup, Renderer};
use crate::resolve::{EVERYWHERE, Exclusion, Membership, Resolution};
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
    /// The SHA-256 of the freshly rendered file; `None` for held, unselected and deleted groups,
    /// which a publish never writes. The file itself is not kept: a publish renders again the
    /// groups it writes and checks that they hash to this.
    #[serde(skip)]
    pub rendered_sha256: Option<String>,
    /// How many users the published file had (what the guard judges a loss against).
    #[serde(skip)]
    pub users_before: usize,
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

    /// The access groups a publish of this plan writes, each with the SHA-256 its file must have.
    pub fn groups_to_write(&self) -> impl Iterator<Item = (&String, &str)> {
        self.groups.iter().filter_map(|(name, group)| {
            let write = self.rewrite || matches!(group.action, Action::Create | Action::Update);
            group
                .rendered_sha256
                .as_deref()
                .filter(|_| write)
                .map(|sha256| (name, sha256))
        })
    }
}

/// Which access groups a publish may touch (`publish --group`); `None` means all.
pub type Selection<'a> = Option<&'a BTreeSet<String>>;

/// What a plan is computed from, besides the published manifest and the group files.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub resolution: &'a Resolution,
    pub policy: &'a Policy,
    pub safety: &'a SafetySettings,
    pub selection: Selection<'a>,
}

/// The group files a plan compares: [`render::Renderer`](crate::render::Renderer) in a run, a
/// stand-in in tests.
pub trait GroupFiles {
    fn group(&self, name: &str, membership: &Membership) -> RenderedGroup;
    /// Keys dropped from every file, and why.
    fn problems(&self) -> &[Problem];
    /// Per person, the fingerprints `[deny]` dropped.
    fn denied_keys(&self) -> &BTreeMap<String, BTreeSet<String>>;
}

impl GroupFiles for Renderer<'_> {
    fn group(&self, name: &str, membership: &Membership) -> RenderedGroup {
        Renderer::group(self, name, membership)
    }
    fn problems(&self) -> &[Problem] {
        Renderer::problems(self)
    }
    fn denied_keys(&self) -> &BTreeMap<String, BTreeSet<String>> {
        Renderer::denied_keys(self)
    }
}

/// Compares each access group's freshly rendered file with what `published` records, and judges
/// the result with the guard.
///
/// Groups are rendered and compared one at a time, and `published` is consumed as it is
/// compared, so memory holds one group file, not all of them, whatever the number of access
/// groups.
pub fn plan(published: Manifest, files: &impl GroupFiles, inputs: &Inputs<'_>) -> Plan {
    let selected = |group: &str| inputs.selection.is_none_or(|set| set.contains(group));
    let Manifest {
        generation,
        groups: mut published_groups,
        fingerprints: published_fingerprints,
        ..
    } = published;
    let published = Published {
        keys: fingerprints_by_group(&published_fingerprints),
        fingerprints: &published_fingerprints,
    };
    let mut groups = BTreeMap::new();
    let mut problems = files.problems().to_vec();
    let mut next = Manifest {
        generation,
        ..Manifest::empty()
    };

    for (name, membership) in &inputs.resolution.access_groups {
        let previous = published_groups.remove(name);
        let file = match selected(name).then(|| files.group(name, membership)) {
            Some(RenderedGroup::Ready(file)) => file,
            Some(RenderedGroup::Held { unknown }) => {
                problems.extend(unknown.into_iter().map(|user| Problem {
                    user,
                    reason: format!(
                        "keys unknown (home unreadable); access group {name} left as published"
                    ),
                }));
                published.keep(&mut next, name, previous);
                groups.insert(name.clone(), unchanged(None));
                continue;
            }
            None => {
                published.keep(&mut next, name, previous);
                groups.insert(name.clone(), unchanged(None));
                continue;
            }
        };
        let group_plan = match &previous {
            Some(entry) if entry.sha256 == file.sha256 => unchanged(Some(&file.sha256)),
            _ => compare(name, &file, previous.as_ref(), &published, files, inputs),
        };
        groups.insert(name.clone(), group_plan);
        record(&mut next, name, file);
    }

    // What remains was published but is no longer in the policy.
    for (name, entry) in published_groups {
        if !selected(&name) {
            published.keep(&mut next, &name, Some(entry));
            continue;
        }
        let removed_fingerprints = published.keys_of(&name).map(str::to_owned).collect();
        groups.insert(
            name,
            GroupPlan {
                action: Action::Delete,
                added_users: vec![],
                users_before: entry.users.len(),
                removed_users: entry
                    .users
                    .into_iter()
                    .map(|user| UserChange {
                        name: user,
                        reason: "access group no longer in policy".into(),
                    })
                    .collect(),
                added_fingerprints: vec![],
                removed_fingerprints,
                rendered_sha256: None,
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
        plan.manifest.generation = generation + 1;
    }
    plan.guard = judge(&plan, inputs.safety);
    plan
}

/// A group whose file changes (or appears): who and which keys come and go, and why.
fn compare(
    name: &str,
    file: &GroupFile,
    previous: Option<&GroupEntry>,
    published: &Published<'_>,
    files: &impl GroupFiles,
    inputs: &Inputs<'_>,
) -> GroupPlan {
    let before_users: BTreeSet<&str> = previous
        .map(|entry| entry.users.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let after_users: BTreeSet<&str> = file.users.iter().map(String::as_str).collect();
    let before_keys: BTreeSet<&str> = published.keys_of(name).collect();
    let after_keys: BTreeSet<&str> = file.keys.iter().map(|(_, fp)| fp.as_str()).collect();
    GroupPlan {
        action: if previous.is_some() {
            Action::Update
        } else {
            Action::Create
        },
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
                reason: removal_reason(user, name, previous, files.denied_keys(), inputs),
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
        rendered_sha256: Some(file.sha256.clone()),
        users_before: before_users.len(),
    }
}

fn unchanged(rendered_sha256: Option<&str>) -> GroupPlan {
    GroupPlan {
        action: Action::Unchanged,
        added_users: vec![],
        removed_users: vec![],
        added_fingerprints: vec![],
        removed_fingerprints: vec![],
        rendered_sha256: rendered_sha256.map(str::to_owned),
        users_before: 0,
    }
}

/// The published fingerprints, indexed by access group once per run.
struct Published<'m> {
    keys: HashMap<&'m str, Vec<&'m str>>,
    fingerprints: &'m BTreeMap<String, FingerprintEntry>,
}

impl<'m> Published<'m> {
    fn keys_of(&self, group: &str) -> impl Iterator<Item = &'m str> + use<'m, '_> {
        self.keys.get(group).into_iter().flatten().copied()
    }

    /// Carries a group over into `next` exactly as published.
    fn keep(&self, next: &mut Manifest, group: &str, entry: Option<GroupEntry>) {
        let Some(entry) = entry else {
            return;
        };
        next.groups.insert(group.to_owned(), entry);
        for fingerprint in self.keys_of(group) {
            if let Some(owner) = self.fingerprints.get(fingerprint) {
                add_fingerprint(next, fingerprint, &owner.user, group);
            }
        }
    }
}

fn fingerprints_by_group(
    fingerprints: &BTreeMap<String, FingerprintEntry>,
) -> HashMap<&str, Vec<&str>> {
    let mut index: HashMap<&str, Vec<&str>> = HashMap::new();
    for (fingerprint, entry) in fingerprints {
        for group in &entry.groups {
            index
                .entry(group.as_str())
                .or_default()
                .push(fingerprint.as_str());
        }
    }
    index
}

/// Records a rendered group in `next`, taking its lists rather than copying them.
fn record(next: &mut Manifest, group: &str, file: GroupFile) {
    for (user, fingerprint) in &file.keys {
        add_fingerprint(next, fingerprint, user, group);
    }
    next.groups.insert(
        group.to_owned(),
        GroupEntry {
            sha256: file.sha256,
            keys: file.keys.len(),
            users: file.users,
            via: file.via,
        },
    );
}

fn add_fingerprint(next: &mut Manifest, fingerprint: &str, user: &str, group: &str) {
    let entry = next
        .fingerprints
        .entry(fingerprint.to_owned())
        .or_insert_with(|| FingerprintEntry {
            user: user.to_owned(),
            groups: Vec::new(),
        });
    if let Err(at) = entry.groups.binary_search_by(|g| g.as_str().cmp(group)) {
        entry.groups.insert(at, group.to_owned());
    }
}

fn removal_reason(
    user: &str,
    group: &str,
    previous: Option<&GroupEntry>,
    denied_keys: &BTreeMap<String, BTreeSet<String>>,
    inputs: &Inputs<'_>,
) -> String {
    let (resolution, policy) = (inputs.resolution, inputs.policy);
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
        if denied_keys.contains_key(user) {
            return Exclusion::Denied.as_str().into();
        }
        return "no valid keys".into();
    }
    let via: &[String] = previous
        .and_then(|entry| entry.via.get(user))
        .map_or(&[], |via| via);
    let (principals, chain) = match via.split_first() {
        Some((first, rest)) if first == EVERYWHERE => (&policy.everywhere, rest),
        _ => match policy.access_groups.get(group) {
            Some(access_group) => (&access_group.principals, via),
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
fn judge(plan: &Plan, safety: &SafetySettings) -> Guard {
    let mut reasons = Vec::new();
    let mut everyone_removed = BTreeSet::new();
    for (name, group) in &plan.groups {
        let removed: Vec<&UserChange> = group
            .removed_users
            .iter()
            .filter(|change| change.reason != Exclusion::Denied.as_str())
            .collect();
        everyone_removed.extend(removed.iter().map(|change| change.name.as_str()));
        let before = group.users_before;
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
    use crate::resolve::{Excluded, Membership};

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
                .map(|u| (u.to_string(), vec!["Team".to_string()].into()))
                .collect(),
            keys: users
                .iter()
                .map(|u| (u.to_string(), format!("SHA256:{u}")))
                .collect(),
        }
    }

    /// Group files given up front, as a renderer would render them.
    struct Files {
        groups: BTreeMap<String, RenderedGroup>,
        denied_keys: BTreeMap<String, BTreeSet<String>>,
    }

    impl GroupFiles for Files {
        fn group(&self, name: &str, _: &Membership) -> RenderedGroup {
            self.groups[name].clone()
        }
        fn problems(&self) -> &[Problem] {
            &[]
        }
        fn denied_keys(&self) -> &BTreeMap<String, BTreeSet<String>> {
            &self.denied_keys
        }
    }

    fn rendered(groups: &[(&str, &[&str])]) -> Files {
        Files {
            groups: groups
                .iter()
                .map(|(name, users)| (name.to_string(), RenderedGroup::Ready(file(users))))
                .collect(),
            denied_keys: BTreeMap::new(),
        }
    }

    fn plan_of(
        published: &Manifest,
        files: &Files,
        resolution: &Resolution,
        policy: &Policy,
        selection: Selection<'_>,
    ) -> Plan {
        let inputs = Inputs {
            resolution,
            policy,
            safety: &safety(),
            selection,
        };
        plan(published.clone(), files, &inputs)
    }

    fn published(groups: &[(&str, &[&str])]) -> Manifest {
        let mut manifest = Manifest::empty();
        manifest.generation = 3;
        for (name, users) in groups {
            record(&mut manifest, name, file(users));
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
                    let mut membership = Membership::through_team(users);
                    membership.excluded = excluded
                        .iter()
                        .map(|(u, reason)| Excluded {
                            name: u.to_string(),
                            reason: *reason,
                        })
                        .collect();
                    (name.to_string(), membership)
                })
                .collect(),
            warnings: vec![],
        }
    }

    #[test]
    fn nothing_changed_means_every_group_unchanged_and_the_same_generation() {
        let before = published(&[("web", &["a", "b"])]);
        let plan = plan_of(
            &before,
            &rendered(&[("web", &["a", "b"])]),
            &resolution(&[("web", &["a", "b"], &[])]),
            &policy(&["web"]),
            None,
        );
        assert!(!plan.has_changes());
        assert_eq!(plan.groups["web"].action, Action::Unchanged);
        assert_eq!(plan.manifest, before);
    }

    #[test]
    fn changes_name_each_user_and_key_with_a_reason() {
        let before = published(&[("web", &["a", "b", "c"]), ("old", &["a"])]);
        let plan = plan_of(
            &before,
            &rendered(&[("web", &["a", "d"]), ("new", &["a"])]),
            &resolution(&[
                ("web", &["a", "d"], &[("b", Exclusion::Disabled)]),
                ("new", &["a"], &[]),
            ]),
            &policy(&["web", "new"]),
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
        let lost_two = plan_of(
            &before,
            &after,
            &resolution(&[("web", &["a", "b", "c"], &[])]),
            &policy(&["web"]),
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
        let lost_to_deny = plan_of(&before, &after, &denied, &policy(&["web"]), None);
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
        let plan = plan_of(
            &before,
            &after,
            &resolution(&[("web", &["a"], &[]), ("db", &["c"], &[])]),
            &policy(&["web", "db"]),
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
