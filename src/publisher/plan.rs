//! The plan: what a publish would change, and why, computed purely from the published index,
//! the published files of the groups that changed, and a fresh render. Also the safety guard,
//! which judges a plan before anything is written.
//!
//! Change detection is by SHA-256 against the verified index: a group whose freshly rendered
//! file hashes to what the index records is `unchanged`, costs no request at all, and is never
//! rendered into text (see `render::Digest`). Only for a group that changed is the published
//! file read, to say who and which keys come and go, each with a reason a person can act on
//! (disabled, left group X, no longer in policy, denied, …). Removals caused by `[deny]` or by a
//! grant past its `until` (`expired_grant`) are the only ones the guard never holds back: when it
//! refuses the rest, they are still published ([`deny_only`]).
//!
//! This module is pure: the caller fetches (and checks against the index) the published files it
//! asks for, and passes `now`-free inputs in.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::bucket::group_file::{Block, HEADER_PREFIX, PublishedFile};
use crate::bucket::index::{Index, IndexGroup, Owners};
use crate::digest::sha256_hex;
use crate::interned::{Interner, Shared};
use crate::publisher::policy::Policy;
use crate::publisher::render::{Digest, Listing, Problem};
use crate::publisher::resolve::{EVERYWHERE, Exclusion, Member, Membership, Resolution};
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

/// A person joining or leaving a group, and why. Names are shared across the plan (a dense
/// first publish lists each person once per access group), and the common reasons are static.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserChange {
    pub name: Shared,
    pub reason: Cow<'static, str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPlan {
    pub action: Action,
    pub added_users: Vec<UserChange>,
    pub removed_users: Vec<UserChange>,
    pub added_fingerprints: Vec<Shared>,
    pub removed_fingerprints: Vec<Shared>,
    /// What the next index records for this group; `None` for a deleted group.
    #[serde(skip)]
    pub next: Option<IndexGroup>,
    /// Whether this run renders this group (false: not selected with `--group`, carried as
    /// published). Only rendered groups are ever written.
    #[serde(skip)]
    pub rendered: bool,
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
    /// The index to commit when anything is written.
    #[serde(skip)]
    pub index: Index,
    /// The owners object of the next index, when it differs from the published one.
    #[serde(skip)]
    pub owners: Option<Vec<u8>>,
    /// The revocation list object of the next index, when it differs from the published one
    /// (see `revocation`).
    #[serde(skip)]
    pub revoked: Option<Vec<u8>>,
    /// Nothing changed, but the signed index is past half its validity: write it again with a
    /// new `not_after` (SPEC.md "Signing").
    #[serde(skip)]
    pub resign: bool,
    /// Write every rendered group object, changed or not: `publish --rewrite-all`, or the first
    /// publish over a bucket in the legacy layout.
    #[serde(skip)]
    pub rewrite: bool,
    /// The canary line differs from the published one (a rotation): the index is written.
    #[serde(skip)]
    pub canary_changed: bool,
    /// People and keys published after this plan (for the metrics).
    #[serde(skip)]
    pub people: usize,
    #[serde(skip)]
    pub keys: usize,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.groups.values().any(|g| g.action != Action::Unchanged)
    }

    /// Whether a publish of this plan writes anything at all.
    pub fn writes(&self) -> bool {
        self.has_changes()
            || self.owners.is_some()
            || self.revoked.is_some()
            || self.canary_changed
            || self.resign
            || self.rewrite
    }

    /// The access groups a publish of this plan writes, each with the SHA-256 its file must have.
    pub fn groups_to_write(&self) -> impl Iterator<Item = (&String, &str)> {
        self.groups.iter().filter_map(|(name, group)| {
            let write = group.rendered
                && (self.rewrite || matches!(group.action, Action::Create | Action::Update));
            let next = group.next.as_ref().filter(|_| write)?;
            Some((name, next.sha256.as_str()))
        })
    }
}

/// Which access groups a publish may touch (`publish --group`); `None` means all.
pub type Selection<'a> = Option<&'a BTreeSet<String>>;

/// What a plan is computed from, besides the published index and the group files.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub resolution: &'a Resolution,
    pub policy: &'a Policy,
    pub safety: &'a SafetySettings,
    /// Per person, the fingerprints `[deny]` dropped.
    pub denied_keys: &'a BTreeMap<String, BTreeSet<String>>,
}

/// A group whose fresh render hashes to what the index records.
pub fn unchanged(digest: &Digest) -> GroupPlan {
    GroupPlan {
        action: Action::Unchanged,
        added_users: vec![],
        removed_users: vec![],
        added_fingerprints: vec![],
        removed_fingerprints: vec![],
        next: Some(IndexGroup {
            sha256: digest.sha256.clone(),
            users: digest.users,
            keys: digest.keys,
            seal: None,
        }),
        rendered: true,
        users_before: digest.users,
    }
}

/// A group this run does not render (not selected): it stays exactly as the verified index has it.
pub fn kept(entry: &IndexGroup) -> GroupPlan {
    GroupPlan {
        rendered: false,
        users_before: entry.users,
        next: Some(entry.clone()),
        ..unchanged(&Digest {
            sha256: entry.sha256.clone(),
            users: entry.users,
            keys: entry.keys,
        })
    }
}

/// A group whose file changes (or appears): who and which keys come and go, and why. `previous`
/// is the published file (checked against the index), `None` for a new group.
pub fn compare(
    name: &str,
    file: &Listing<'_>,
    previous: Option<&PublishedFile>,
    inputs: &Inputs<'_>,
    interner: &mut Interner,
) -> GroupPlan {
    let before_users: BTreeSet<&str> = previous.map(|p| p.users().collect()).unwrap_or_default();
    let after_users: BTreeSet<&str> = file.users.iter().copied().collect();
    let before_keys: BTreeSet<&str> = previous.map(|p| p.fingerprints()).unwrap_or_default();
    let after_keys: BTreeSet<&str> = file.fingerprints.iter().copied().collect();
    let people = People::of(inputs.resolution.access_groups.get(name));
    let removed: Vec<&str> = before_users.difference(&after_users).copied().collect();
    let blocks: HashMap<&str, &Block> = match previous {
        Some(previous) if !removed.is_empty() => previous
            .blocks
            .iter()
            .map(|block| (block.user.as_str(), block))
            .collect(),
        _ => HashMap::new(),
    };
    GroupPlan {
        action: if previous.is_some() {
            Action::Update
        } else {
            Action::Create
        },
        added_users: exact(
            after_users
                .difference(&before_users)
                .map(|user| UserChange {
                    name: interner.get(user),
                    reason: match people.members.get(user).and_then(|m| m.until.as_ref()) {
                        Some(until) => format!("new member (until {until})").into(),
                        None => "new member".into(),
                    },
                }),
        ),
        removed_users: exact(removed.iter().map(|user| UserChange {
            name: interner.get(user),
            reason: removal_reason(user, name, blocks.get(user).copied(), &people, inputs),
        })),
        added_fingerprints: exact(
            after_keys
                .difference(&before_keys)
                .map(|fp| interner.get(fp)),
        ),
        removed_fingerprints: exact(
            before_keys
                .difference(&after_keys)
                .map(|fp| interner.get(fp)),
        ),
        next: Some(IndexGroup {
            sha256: file.sha256.clone(),
            users: file.users.len(),
            keys: file.fingerprints.len(),
            seal: None,
        }),
        rendered: true,
        users_before: before_users.len(),
    }
}

/// The items in a Vec of exactly their number: a plan keeps hundreds of thousands of entries, and
/// growth by doubling would leave up to half of that unused.
fn exact<T>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut vec: Vec<T> = items.collect();
    vec.shrink_to_fit();
    vec
}

/// An access group's resolved people by name, looked up once per change instead of searched for
/// each: a created group of 10,000 people would otherwise cost 10,000² name comparisons.
struct People<'a> {
    /// `None`: the access group is no longer in the policy.
    resolved: Option<&'a Membership>,
    members: HashMap<&'a str, &'a Member>,
    excluded: HashMap<&'a str, Exclusion>,
}

impl<'a> People<'a> {
    fn of(resolved: Option<&'a Membership>) -> People<'a> {
        let (mut members, mut excluded) = (HashMap::new(), HashMap::new());
        // The first entry of a name wins, as a search of the lists would find it.
        for member in resolved.iter().flat_map(|m| &m.users) {
            members.entry(member.name.as_str()).or_insert(member);
        }
        for entry in resolved.iter().flat_map(|m| &m.excluded) {
            excluded.entry(entry.name.as_str()).or_insert(entry.reason);
        }
        People {
            resolved,
            members,
            excluded,
        }
    }
}

/// An access group that is published but no longer in the policy.
pub fn deleted(previous: &PublishedFile, interner: &mut Interner) -> GroupPlan {
    let users: BTreeSet<&str> = previous.users().collect();
    GroupPlan {
        action: Action::Delete,
        added_users: vec![],
        users_before: users.len(),
        removed_users: users
            .into_iter()
            .map(|user| UserChange {
                name: interner.get(user),
                reason: "access group no longer in policy".into(),
            })
            .collect(),
        added_fingerprints: vec![],
        removed_fingerprints: previous
            .fingerprints()
            .into_iter()
            .map(|fp| interner.get(fp))
            .collect(),
        next: None,
        rendered: true,
    }
}

/// The owners object's bytes when they differ from what `published` names.
pub fn owners_change(owners: &Owners, published: &Index) -> Option<Vec<u8>> {
    let json = crate::bucket::index::owners_to_json(owners);
    (published.owners.as_deref() != Some(sha256_hex(&json).as_str())).then_some(json)
}

/// Whether this removal is one the guard never holds back: `[deny]`, and a grant whose `until`
/// has passed (the policy said when access ends; holding it back would extend it).
pub fn unguarded(change: &UserChange) -> bool {
    change.reason == Exclusion::Denied.as_str() || change.reason == Exclusion::ExpiredGrant.as_str()
}

/// The published file with only the unguarded removals applied: the blocks of people removed for
/// `[deny]` and every denied key line gone, everything else exactly as published. What a publish
/// the guard refuses still writes, so an emergency cut-off never waits for `--force`.
pub fn deny_only(
    name: &str,
    group: &GroupPlan,
    previous: &PublishedFile,
    denied_fingerprints: &BTreeSet<String>,
) -> Option<(String, IndexGroup)> {
    let removed: BTreeSet<&str> = group
        .removed_users
        .iter()
        .filter(|change| unguarded(change))
        .map(|change| change.name.as_str())
        .collect();
    let mut body = format!("{HEADER_PREFIX}{name}: generated, do not edit\n");
    let (mut users, mut keys, mut changed) = (0, 0, false);
    for Block {
        user,
        via,
        keys: lines,
    } in &previous.blocks
    {
        if removed.contains(user.as_str()) {
            changed = true;
            continue;
        }
        let kept: Vec<&String> = lines
            .iter()
            .filter(|(_, fp)| {
                !fp.as_ref()
                    .is_some_and(|fp| denied_fingerprints.contains(fp))
            })
            .map(|(line, _)| line)
            .collect();
        changed |= kept.len() != lines.len();
        if kept.is_empty() {
            continue;
        }
        body.push_str(&crate::bucket::group_file::block_header(user, via));
        for line in &kept {
            body.push_str(line);
            body.push('\n');
        }
        users += 1;
        keys += kept.len();
    }
    changed.then(|| {
        let sha256 = sha256_hex(body.as_bytes());
        (
            body,
            IndexGroup {
                sha256,
                users,
                keys,
                seal: None,
            },
        )
    })
}

fn removal_reason(
    user: &str,
    group: &str,
    previous: Option<&Block>,
    people: &People<'_>,
    inputs: &Inputs<'_>,
) -> Cow<'static, str> {
    let policy = inputs.policy;
    if people.resolved.is_none() {
        return "access group no longer in policy".into();
    }
    if let Some(reason) = people.excluded.get(user) {
        return match reason {
            Exclusion::NotFound => "not found in AD".into(),
            other => other.as_str().into(),
        };
    }
    if people.members.contains_key(user) {
        // Still a member, but none of their keys made it into the file.
        if inputs.denied_keys.contains_key(user) {
            return Exclusion::Denied.as_str().into();
        }
        return "no valid keys".into();
    }
    let via: &[String] = previous.map_or(&[], |block| &block.via);
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
            format!("left group {ad_group}").into()
        }
        _ => "no longer in policy".into(),
    }
}

/// The safety guard (SPEC.md): refuse when any group of `GUARD_MIN_GROUP_SIZE`+ users would lose
/// more than `max_removed_fraction` of them, or when more than `max_removed_users` people would
/// lose access in total. Removals caused by `[deny]` never count.
pub fn judge(plan: &Plan, safety: &SafetySettings) -> Guard {
    let mut reasons = Vec::new();
    let mut everyone_removed = BTreeSet::new();
    for (name, group) in &plan.groups {
        let removed: Vec<&UserChange> = group
            .removed_users
            .iter()
            .filter(|change| !unguarded(change))
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
    use crate::publisher::policy::{AccessGroup, Deny, Principals};
    use crate::publisher::resolve::{Excluded, Membership};

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq";

    fn safety() -> SafetySettings {
        SafetySettings {
            max_removed_fraction: 0.25,
            max_removed_users: 20,
            lock_file: PathBuf::from("/nonexistent"),
        }
    }

    static SAFETY: std::sync::LazyLock<SafetySettings> = std::sync::LazyLock::new(safety);
    static NO_DENIALS: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();

    /// The plan's inputs for this resolution and policy: the usual guard, no `[deny]` keys.
    fn inputs_of<'a>(resolution: &'a Resolution, policy: &'a Policy) -> Inputs<'a> {
        Inputs {
            resolution,
            policy,
            safety: &SAFETY,
            denied_keys: &NO_DENIALS,
        }
    }

    /// A rendered file of these people, each with one (fake) key named after them.
    struct Rendered<'u> {
        users: Vec<&'u str>,
        fingerprints: Vec<String>,
    }

    impl Rendered<'_> {
        fn listing(&self) -> Listing<'_> {
            Listing {
                sha256: sha256_hex(self.users.join("\n").as_bytes()),
                users: self.users.clone(),
                fingerprints: self.fingerprints.iter().map(String::as_str).collect(),
            }
        }
    }

    fn file<'u>(users: &[&'u str]) -> Rendered<'u> {
        Rendered {
            users: users.to_vec(),
            fingerprints: users.iter().map(|u| format!("SHA256:{u}")).collect(),
        }
    }

    /// `compare` of these people rendered as access group `name`, against `before`.
    fn compare_to(
        name: &str,
        after: &[&str],
        before: Option<&PublishedFile>,
        inputs: &Inputs<'_>,
    ) -> GroupPlan {
        compare(
            name,
            &file(after).listing(),
            before,
            inputs,
            &mut Interner::default(),
        )
    }

    /// The published file of these people, as read back.
    fn published(users: &[&str]) -> PublishedFile {
        PublishedFile {
            blocks: users
                .iter()
                .map(|u| Block {
                    user: u.to_string(),
                    via: vec!["Team".into()],
                    keys: vec![(format!("{KEY} {u}"), Some(format!("SHA256:{u}")))],
                })
                .collect(),
        }
    }

    fn policy(groups: &[&str]) -> Policy {
        Policy {
            everywhere: Principals::default(),
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
                                ..Principals::default()
                            },
                            options: vec![],
                        },
                    )
                })
                .collect(),
            deny: Deny {
                users: vec![],
                fingerprints: vec![],
            },
            automation: BTreeMap::new(),
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

    fn plan_of(groups: BTreeMap<String, GroupPlan>) -> Plan {
        let mut plan = Plan {
            groups,
            problems: vec![],
            guard: Guard::default(),
            index: Index::empty(),
            owners: None,
            revoked: None,
            resign: false,
            rewrite: false,
            canary_changed: false,
            people: 0,
            keys: 0,
        };
        plan.guard = judge(&plan, &safety());
        plan
    }

    #[test]
    fn changes_name_each_user_and_key_with_a_reason() {
        let mut resolution =
            resolution(&[("web", &["a", "d", "e"], &[("b", Exclusion::Disabled)])]);
        // e's access ends: the change says when.
        resolution.access_groups.get_mut("web").unwrap().users[2].until =
            Some(Box::new(crate::publisher::policy::Until {
                ends_at: 1_806_451_200,
                text: "2027-03-31".into(),
            }));
        let policy = policy(&["web"]);
        let inputs = inputs_of(&resolution, &policy);
        let before = published(&["a", "b", "c"]);
        let web = compare_to("web", &["a", "d", "e"], Some(&before), &inputs);
        assert_eq!(web.action, Action::Update);
        assert_eq!(
            web.added_users,
            [
                UserChange {
                    name: "d".into(),
                    reason: "new member".into()
                },
                UserChange {
                    name: "e".into(),
                    reason: "new member (until 2027-03-31)".into()
                }
            ]
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
        assert_eq!(web.added_fingerprints, ["SHA256:d", "SHA256:e"]);
        assert_eq!(web.removed_fingerprints, ["SHA256:b", "SHA256:c"]);
        assert_eq!(web.users_before, 3);
        assert_eq!(web.next.as_ref().unwrap().users, 3);

        let new = compare_to("new", &["a"], None, &inputs);
        assert_eq!(new.action, Action::Create);
        let old = deleted(&published(&["a"]), &mut Interner::default());
        assert_eq!(old.action, Action::Delete);
        assert_eq!(
            old.removed_users[0].reason,
            "access group no longer in policy"
        );
        assert_eq!(old.next, None);
    }

    #[test]
    fn the_guard_refuses_large_removals_but_never_denials() {
        let resolution = resolution(&[("web", &["a", "b", "c"], &[])]);
        let policy = policy(&["web"]);
        let inputs = inputs_of(&resolution, &policy);
        let before = published(&["a", "b", "c", "d", "e"]);
        let lost_two = compare_to("web", &["a", "b", "c"], Some(&before), &inputs);
        let plan = plan_of(BTreeMap::from([("web".to_string(), lost_two)]));
        assert!(plan.guard.refused);
        assert_eq!(
            plan.guard.reasons,
            ["access group web would lose 2 of its 5 users (40% > max_removed_fraction 25%)"]
        );
        let denied = self::resolution(&[(
            "web",
            &["a", "b", "c"],
            &[("d", Exclusion::Denied), ("e", Exclusion::Denied)],
        )]);
        let inputs = Inputs {
            resolution: &denied,
            ..inputs
        };
        let lost_to_deny = compare_to("web", &["a", "b", "c"], Some(&before), &inputs);
        let plan = plan_of(BTreeMap::from([("web".to_string(), lost_to_deny)]));
        assert!(!plan.guard.refused, "{:?}", plan.guard);
    }

    #[test]
    fn a_refused_plan_still_yields_its_denials_and_nothing_else() {
        // d is denied, e left the group: the guard holds e, never d.
        let resolution = resolution(&[("web", &["a", "b", "c"], &[("d", Exclusion::Denied)])]);
        let policy = policy(&["web"]);
        let inputs = inputs_of(&resolution, &policy);
        let before = published(&["a", "b", "c", "d", "e"]);
        let group = compare_to("web", &["a", "b", "c"], Some(&before), &inputs);
        let (body, entry) = deny_only("web", &group, &before, &BTreeSet::new()).unwrap();
        let after = PublishedFile::parse(body.as_bytes());
        assert_eq!(after.users().collect::<Vec<_>>(), ["a", "b", "c", "e"]);
        assert_eq!((entry.users, entry.keys), (4, 4));
        assert_eq!(entry.sha256, sha256_hex(body.as_bytes()));
        // A denied key goes too, wherever it is; nothing to deny means nothing to write.
        let denied_key = BTreeSet::from(["SHA256:a".to_string()]);
        let unchanged = compare_to("web", &["a", "b", "c", "d", "e"], Some(&before), &inputs);
        let (body, _) = deny_only("web", &unchanged, &before, &denied_key).unwrap();
        assert!(!body.contains("# a "), "{body}");
        assert_eq!(
            deny_only("web", &unchanged, &before, &BTreeSet::new()),
            None
        );
    }

    /// The guard's verdict on `groups`, each `(name, published users, users still there)`, under
    /// `fraction` and `max_users`; deleted groups as `(name, published users)`.
    fn verdict(
        groups: &[(&str, &[&str], &[&str])],
        deleted_groups: &[(&str, &[&str])],
        fraction: f64,
        max_users: usize,
    ) -> Guard {
        let specs: Vec<GroupSpec<'_>> = groups
            .iter()
            .map(|(name, _, after)| (*name, *after, &[][..]))
            .collect();
        let resolution = resolution(&specs);
        let names: Vec<&str> = groups.iter().map(|(name, _, _)| *name).collect();
        let policy = policy(&names);
        let safety = SafetySettings {
            max_removed_fraction: fraction,
            max_removed_users: max_users,
            lock_file: PathBuf::from("/nonexistent"),
        };
        let inputs = Inputs {
            safety: &safety,
            ..inputs_of(&resolution, &policy)
        };
        let mut plan = plan_of(BTreeMap::new());
        for (name, before, after) in groups {
            let group = compare_to(name, after, Some(&published(before)), &inputs);
            plan.groups.insert(name.to_string(), group);
        }
        for (name, before) in deleted_groups {
            plan.groups.insert(
                name.to_string(),
                deleted(&published(before), &mut Interner::default()),
            );
        }
        judge(&plan, &safety)
    }

    #[test]
    fn the_fraction_is_strict_exactly_the_fraction_passes_one_more_is_refused() {
        // 1 of 4 is exactly 25%: allowed (`>`, not `>=`).
        let one_of_four = verdict(
            &[("web", &["a", "b", "c", "d"], &["a", "b", "c"])],
            &[],
            0.25,
            20,
        );
        assert!(!one_of_four.refused, "{one_of_four:?}");
        // 2 of 4 is 50%: refused, and the reason names the group and the numbers.
        let two_of_four = verdict(
            &[("web", &["a", "b", "c", "d"], &["a", "b"])],
            &[],
            0.25,
            20,
        );
        assert_eq!(
            two_of_four.reasons,
            ["access group web would lose 2 of its 4 users (50% > max_removed_fraction 25%)"]
        );
        // A fraction that is not a power of two: 3 of 10 is exactly 30%, 4 of 10 is not.
        let ten = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let three_of_ten = verdict(&[("web", &ten, &ten[3..])], &[], 0.3, 20);
        assert!(!three_of_ten.refused, "{three_of_ten:?}");
        let four_of_ten = verdict(&[("web", &ten, &ten[4..])], &[], 0.3, 20);
        assert!(four_of_ten.refused, "{four_of_ten:?}");
    }

    #[test]
    fn groups_of_three_are_not_judged_by_the_fraction_groups_of_four_are() {
        // Two of three (67%) is not judged: one of three is already a third.
        let three = verdict(&[("web", &["a", "b", "c"], &["a"])], &[], 0.25, 20);
        assert!(!three.refused, "{three:?}");
        // Even all three leaving.
        let all_three = verdict(&[("web", &["a", "b", "c"], &[])], &[], 0.25, 20);
        assert!(!all_three.refused, "{all_three:?}");
        let four = verdict(&[("web", &["a", "b", "c", "d"], &["a"])], &[], 0.25, 20);
        assert!(four.refused, "{four:?}");
    }

    #[test]
    fn max_removed_users_counts_people_across_small_groups_once_each() {
        // 21 groups of two, each losing one person: no group is judged by the fraction (too
        // small), but 21 people lose access in total: refused.
        let names: Vec<String> = (0..21).map(|i| format!("g{i:02}")).collect();
        let people: Vec<[String; 2]> = (0..21)
            .map(|i| [format!("stay{i}"), format!("leave{i}")])
            .collect();
        let people: Vec<[&str; 2]> = people
            .iter()
            .map(|[a, b]| [a.as_str(), b.as_str()])
            .collect();
        let groups: Vec<(&str, &[&str], &[&str])> = names
            .iter()
            .zip(&people)
            .map(|(name, pair)| (name.as_str(), &pair[..], &pair[..1]))
            .collect();
        let refused = verdict(&groups, &[], 0.25, 20);
        assert_eq!(
            refused.reasons,
            ["21 users would lose access (> max_removed_users 20)"]
        );
        // Exactly max_removed_users (20) is allowed.
        let twenty = verdict(&groups[..20], &[], 0.25, 20);
        assert!(!twenty.refused, "{twenty:?}");
        // One person leaving 21 groups is one person, not 21.
        let one: Vec<(&str, &[&str], &[&str])> = names
            .iter()
            .map(|name| (name.as_str(), &["stay", "leave"][..], &["stay"][..]))
            .collect();
        let one = verdict(&one, &[], 0.25, 20);
        assert!(!one.refused, "{one:?}");
    }

    #[test]
    fn deleting_an_access_group_of_four_is_refused_of_three_is_not() {
        let four = verdict(&[], &[("old", &["a", "b", "c", "d"])], 0.25, 20);
        assert_eq!(
            four.reasons,
            ["access group old would lose 4 of its 4 users (100% > max_removed_fraction 25%)"]
        );
        let three = verdict(&[], &[("old", &["a", "b", "c"])], 0.25, 20);
        assert!(!three.refused, "{three:?}");
        // Deleted groups count towards max_removed_users too.
        let many: Vec<String> = (0..21).map(|i| format!("p{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let deleted_small: Vec<(String, Vec<&str>)> = many
            .chunks(3)
            .enumerate()
            .map(|(i, chunk)| (format!("old{i}"), chunk.to_vec()))
            .collect();
        let deleted_small: Vec<(&str, &[&str])> = deleted_small
            .iter()
            .map(|(name, users)| (name.as_str(), &users[..]))
            .collect();
        let seven_groups_of_three = verdict(&[], &deleted_small, 0.25, 20);
        assert_eq!(
            seven_groups_of_three.reasons,
            ["21 users would lose access (> max_removed_users 20)"]
        );
    }

    #[test]
    fn the_owners_object_is_written_only_when_it_changes() {
        let owners = Owners::from([("SHA256:a".to_string(), "a".to_string())]);
        let mut index = Index::empty();
        let json = owners_change(&owners, &index).unwrap();
        index.owners = Some(sha256_hex(&json));
        assert_eq!(owners_change(&owners, &index), None);
    }

    #[test]
    fn an_expired_grant_is_never_held_back_by_the_guard() {
        // d's grant ended, e left the group: the guard holds e, never d.
        let resolution =
            resolution(&[("web", &["a", "b", "c"], &[("d", Exclusion::ExpiredGrant)])]);
        let policy = policy(&["web"]);
        let inputs = Inputs {
            safety: &SafetySettings {
                max_removed_users: 0,
                ..safety()
            },
            ..inputs_of(&resolution, &policy)
        };
        let before = published(&["a", "b", "c", "d", "e"]);
        let group = compare_to("web", &["a", "b", "c"], Some(&before), &inputs);
        assert_eq!(group.removed_users[0].reason, "expired_grant");
        let mut plan = plan_of(BTreeMap::from([("web".to_string(), group.clone())]));
        plan.guard = judge(&plan, inputs.safety);
        assert!(plan.guard.refused);
        assert_eq!(
            plan.guard.reasons,
            ["1 users would lose access (> max_removed_users 0)"]
        );
        let (body, _) = deny_only("web", &group, &before, &BTreeSet::new()).unwrap();
        let after = PublishedFile::parse(body.as_bytes());
        assert_eq!(after.users().collect::<Vec<_>>(), ["a", "b", "c", "e"]);
    }
}
