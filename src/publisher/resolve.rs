//! The pure middle of the flow: who is in each access group, given the policy and a directory
//! snapshot. No I/O, no clock: `now` is passed in.
//!
//! Expansion happens here, in memory, so the number of LDAP round trips never depends on the
//! number of access groups. Each AD group named in the policy is expanded once (breadth first, so
//! the chain reported in `via` is a shortest one, cycle-safe, any depth), primary-group membership
//! (`primaryGroupID`, which AD leaves out of `member`) included. Members that are not people
//! (computers, contacts, foreign security principals) never appear in the snapshot's users, so
//! they fall out naturally.
//!
//! Names in the policy match AD case-insensitively (as AD itself does); output always uses the
//! spelling AD has.
//!
//! A time-limited entry (`until`) counts only before its end: a person reached only through
//! ended entries is excluded as `expired_grant`; one who still has another way in keeps it, and
//! [`Member::until`] is the latest end among the entries that still count (`None` when one of
//! them never ends). Automation accounts (`[automation.NAME]`) become members named
//! `automation:NAME`, excluded like a person when their `ad_account` is disabled, locked,
//! expired, denied or missing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::interned::Shared;
use crate::publisher::directory::{AccountState, Dn, FileTime, LockoutDuration, Snapshot, User};
use crate::publisher::policy::{Policy, Principals, Until};

/// The `via` marker for people who get access through `[everywhere]`.
pub const EVERYWHERE: &str = "everywhere";

/// Who gets access to each access group, who does not and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    pub access_groups: BTreeMap<String, Membership>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Membership {
    /// Sorted by name.
    pub users: Vec<Member>,
    /// Sorted by name.
    pub excluded: Vec<Excluded>,
}

/// A person who gets access, and the first (shortest) chain of groups that gives it: empty when
/// named directly, starting with `"everywhere"` for the fixed admin list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Shared by every membership of the person (a dense directory has 33 a person).
    pub name: Shared,
    pub via: Via,
    /// When the access ends: the latest end of the time-limited entries that give it, `None`
    /// when one of them does not end. Boxed: rare, and a `Member` exists per membership.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Box<Until>>,
}

/// A chain of group names. Shared, not copied: every person reached through the same nested
/// group has the same chain, and a directory of 50,000 people has hundreds of thousands of
/// memberships but only as many chains as group paths.
pub type Via = Arc<[String]>;

#[cfg(test)]
impl Membership {
    /// For other modules' tests: these people, each reached through the group "Team".
    pub fn through_team(users: &[&str]) -> Membership {
        let team: Via = Arc::from(["Team".to_owned()]);
        Membership {
            users: users
                .iter()
                .map(|user| Member {
                    name: (*user).into(),
                    via: Arc::clone(&team),
                    until: None,
                })
                .collect(),
            excluded: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Excluded {
    pub name: String,
    pub reason: Exclusion,
}

/// Why someone the policy reaches does not get access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    Disabled,
    Locked,
    Expired,
    NotFound,
    Denied,
    /// Reached only through policy entries whose `until` has passed.
    ExpiredGrant,
}

impl Exclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::Disabled => "disabled",
            Exclusion::Locked => "locked",
            Exclusion::Expired => "expired",
            Exclusion::NotFound => "not_found",
            Exclusion::Denied => "denied",
            Exclusion::ExpiredGrant => "expired_grant",
        }
    }
}

/// Resolves every access group of `policy` against `snapshot` at time `now`.
pub fn resolve(policy: &Policy, snapshot: &Snapshot, now: SystemTime) -> Resolution {
    let mut resolver = Resolver::new(snapshot, now);
    let denied: HashSet<String> = policy.deny.users.iter().map(|u| u.to_lowercase()).collect();
    // Every user of a denied name, in whatever case AD spells it (two accounts may differ only
    // in case; the name index keeps one).
    for (user, record) in snapshot.users.iter().enumerate() {
        resolver.denied[user] = denied.contains(&record.name.to_lowercase());
    }
    let access_groups = policy
        .access_groups
        .iter()
        .map(|(name, group)| {
            let mut membership = resolver.membership(&group.principals, &policy.everywhere);
            resolver.automation(policy, name, &denied, &mut membership);
            (name.clone(), membership)
        })
        .collect();
    let mut warnings: Vec<String> = resolver.warnings.into_iter().collect();
    warnings.sort();
    Resolution {
        access_groups,
        warnings,
    }
}

/// A user reached through a group, and the chain of group names from that group down.
type Reached = Rc<Vec<(usize, Via)>>;

/// The ways in offered to each user while one access group is resolved, by user index.
#[derive(Default)]
struct Offers {
    /// The best way in so far: rank (own grants 0, `[everywhere]` 1) and chain.
    best: Vec<Option<(u8, Via)>>,
    /// When the entries that count end (`Some(None)`: one of them never does).
    ends: Vec<Option<Option<Until>>>,
    /// The users offered anything, each once.
    touched: Vec<usize>,
}

impl Offers {
    fn size_for(&mut self, users: usize) {
        self.best.resize(users, None);
        self.ends.resize(users, None);
    }

    fn offer(&mut self, user: usize, rank: u8, via: Via, until: Option<&Until>) {
        let end = match &mut self.ends[user] {
            Some(end) => end,
            slot => {
                self.touched.push(user);
                slot.insert(until.cloned())
            }
        };
        match (end.as_ref(), until) {
            (Some(current), Some(until)) if until > current => *end = Some(until.clone()),
            (Some(_), None) => *end = None,
            _ => {}
        }
        let candidate = (rank, via);
        match &self.best[user] {
            // The same chain again (a person in two groups nested the same way): no better.
            Some(current) if Arc::ptr_eq(&current.1, &candidate.1) && current.0 <= candidate.0 => {}
            Some(current) if by_preference(current) <= by_preference(&candidate) => {}
            _ => self.best[user] = Some(candidate),
        }
    }

    /// Every user offered a way in, with the best one and its end, leaving the arrays empty for
    /// the next access group.
    fn drain(&mut self) -> Vec<(usize, (u8, Via), Option<Until>)> {
        let mut offered = Vec::with_capacity(self.touched.len());
        for user in self.touched.drain(..) {
            let until = self.ends[user].take().flatten();
            if let Some(best) = self.best[user].take() {
                offered.push((user, best, until));
            }
        }
        offered
    }
}

struct Resolver<'s> {
    snapshot: &'s Snapshot,
    now: FileTime,
    clock: SystemTime,
    lockout: LockoutDuration,
    users_by_name: HashMap<String, usize>,
    /// Each user's name, made once and shared by all their memberships.
    user_names: Vec<Shared>,
    /// Each user's place in [`by_name`] order: members are sorted by it, without comparing (and
    /// lowercasing) names once per membership.
    rank: Vec<u32>,
    /// Users `[deny]` names, by index.
    denied: Vec<bool>,
    /// Scratch space of `membership`, reused for every access group.
    offers: Offers,
    groups_by_name: HashMap<String, usize>,
    users_by_dn: HashMap<&'s Dn, usize>,
    groups_by_dn: HashMap<&'s Dn, usize>,
    /// Users whose primary group is the group at this index.
    primary_members: HashMap<usize, Vec<usize>>,
    expanded: HashMap<usize, Reached>,
    /// `via` of people named directly, and of people named in `[everywhere]`'s users.
    direct: Via,
    everywhere: Via,
    /// Each chain with `"everywhere"` in front, made once.
    everywhere_chains: HashMap<Via, Via>,
    warnings: std::collections::BTreeSet<String>,
}

impl<'s> Resolver<'s> {
    fn new(snapshot: &'s Snapshot, now: SystemTime) -> Self {
        let users_by_name = index_by_name(snapshot.users.iter().map(|u| u.name.as_str()));
        let groups_by_name = index_by_name(snapshot.groups.iter().map(|g| g.name.as_str()));
        let users_by_dn = snapshot
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (&u.dn, i))
            .collect();
        let groups_by_dn = snapshot
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| (&g.dn, i))
            .collect();

        let mut primary_members: HashMap<usize, Vec<usize>> = HashMap::new();
        if let Some(domain) = &snapshot.domain {
            let groups_by_sid: HashMap<_, usize> = snapshot
                .groups
                .iter()
                .enumerate()
                .filter_map(|(i, g)| g.sid.as_ref().map(|sid| (sid, i)))
                .collect();
            for (user, record) in snapshot.users.iter().enumerate() {
                if let Some(rid) = record.primary_group_id
                    && let Some(&group) = groups_by_sid.get(&domain.sid.with_rid(rid))
                {
                    primary_members.entry(group).or_default().push(user);
                }
            }
        }
        let mut order: Vec<usize> = (0..snapshot.users.len()).collect();
        order.sort_by(|&a, &b| by_name(&snapshot.users[a].name, &snapshot.users[b].name));
        let mut rank = vec![0; order.len()];
        for (place, user) in order.into_iter().enumerate() {
            rank[user] = u32::try_from(place).unwrap_or(u32::MAX);
        }
        Resolver {
            snapshot,
            rank,
            denied: vec![false; snapshot.users.len()],
            offers: Offers::default(),
            now: FileTime::from_system_time(now),
            clock: now,
            lockout: snapshot
                .domain
                .as_ref()
                .map_or(LockoutDuration::UntilUnlocked, |d| d.lockout_duration),
            users_by_name,
            user_names: snapshot
                .users
                .iter()
                .map(|user| Shared::from(user.name.as_str()))
                .collect(),
            groups_by_name,
            users_by_dn,
            groups_by_dn,
            primary_members,
            expanded: HashMap::new(),
            direct: Arc::from([]),
            everywhere: Arc::from([EVERYWHERE.to_owned()]),
            everywhere_chains: HashMap::new(),
            warnings: Default::default(),
        }
    }

    fn membership(&mut self, own: &Principals, everywhere: &Principals) -> Membership {
        // For each user, the best way in: the access group's own grants before [everywhere],
        // then the shortest chain, then the alphabetically first one; and when the entries that
        // still count end (`None`: one of them never does). Arrays indexed by user, kept between
        // access groups (only the touched entries are reset): a dense company offers each
        // person some 33 times, and maps keyed by user cost more than the rest of resolving.
        let mut offers = std::mem::take(&mut self.offers);
        offers.size_for(self.snapshot.users.len());
        // Users some ended entry reaches.
        let mut ended: BTreeSet<usize> = BTreeSet::new();
        let mut ended_not_found: Vec<String> = Vec::new();
        let mut offer = |user: usize, rank: u8, via: Via, until: Option<&Until>| {
            offers.offer(user, rank, via, until);
        };
        let mut not_found = Vec::new();
        for (rank, principals) in [(0, own), (1, everywhere)] {
            let via_everywhere = rank == 1;
            for name in &principals.users {
                let until = principals.user_until(name);
                if until.is_some_and(|until| until.has_ended(self.clock)) {
                    match self.users_by_name.get(&name.to_lowercase()) {
                        Some(&user) => {
                            ended.insert(user);
                        }
                        None => ended_not_found.push(name.clone()),
                    }
                    continue;
                }
                match self.users_by_name.get(&name.to_lowercase()) {
                    Some(&user) => {
                        let via = if via_everywhere {
                            &self.everywhere
                        } else {
                            &self.direct
                        };
                        offer(user, rank, Arc::clone(via), until)
                    }
                    None => {
                        let is_group = self.groups_by_name.contains_key(&name.to_lowercase());
                        self.warn_missing("user", name, is_group);
                        not_found.push(name.clone());
                    }
                }
            }
            for name in &principals.groups {
                let Some(&group) = self.groups_by_name.get(&name.to_lowercase()) else {
                    let is_user = self.users_by_name.contains_key(&name.to_lowercase());
                    self.warn_missing("group", name, is_user);
                    continue;
                };
                let until = principals.group_until(name);
                if until.is_some_and(|until| until.has_ended(self.clock)) {
                    ended.extend(self.expand(group).iter().map(|(user, _)| *user));
                    continue;
                }
                for (user, chain) in self.expand(group).iter() {
                    let via = if via_everywhere {
                        self.through_everywhere(chain)
                    } else {
                        Arc::clone(chain)
                    };
                    offer(*user, rank, via, until);
                }
            }
        }

        let ended_only: Vec<usize> = ended
            .into_iter()
            .filter(|&user| offers.best[user].is_none())
            .collect();
        let mut best = offers.drain();
        self.offers = offers;
        let mut membership = Membership::default();
        for user in ended_only {
            let record: &User = &self.snapshot.users[user];
            let reason = if self.denied[user] {
                Exclusion::Denied
            } else {
                Exclusion::ExpiredGrant
            };
            membership.excluded.push(Excluded {
                name: record.name.clone(),
                reason,
            });
        }
        // Exact, not grown by doubling: a dense directory has 33 memberships a person.
        membership.users.reserve_exact(best.len());
        best.sort_unstable_by_key(|(user, ..)| self.rank[*user]);
        for (user, (_, via), until) in best {
            let record: &User = &self.snapshot.users[user];
            let exclusion = if self.denied[user] {
                Some(Exclusion::Denied)
            } else {
                match record.state(self.now, self.lockout) {
                    AccountState::Active => None,
                    AccountState::Disabled => Some(Exclusion::Disabled),
                    AccountState::Locked => Some(Exclusion::Locked),
                    AccountState::Expired => Some(Exclusion::Expired),
                }
            };
            match exclusion {
                None => membership.users.push(Member {
                    name: self.user_names[user].clone(),
                    via,
                    until: until.map(Box::new),
                }),
                Some(reason) => membership.excluded.push(Excluded {
                    name: record.name.clone(),
                    reason,
                }),
            }
        }
        not_found.sort_by_key(|name| name.to_lowercase());
        not_found.dedup_by_key(|name| name.to_lowercase());
        membership
            .excluded
            .extend(not_found.into_iter().map(|name| Excluded {
                name,
                reason: Exclusion::NotFound,
            }));
        ended_not_found.sort_by_key(|name| name.to_lowercase());
        ended_not_found.dedup_by_key(|name| name.to_lowercase());
        membership.excluded.extend(
            ended_not_found
                .into_iter()
                .filter(|name| {
                    !membership
                        .excluded
                        .iter()
                        .any(|e| e.name.eq_ignore_ascii_case(name))
                })
                .map(|name| Excluded {
                    name,
                    reason: Exclusion::ExpiredGrant,
                })
                .collect::<Vec<_>>(),
        );
        // `users` is in `rank` order already, which is `by_name` order.
        membership
            .excluded
            .sort_by(|a, b| by_name(&a.name, &b.name));
        membership
    }

    /// Adds the automation accounts granted `access_group` to its membership: a member when its
    /// `ad_account` (if any) is an active, undenied AD user, excluded with the reason otherwise.
    fn automation(
        &mut self,
        policy: &Policy,
        access_group: &str,
        denied: &HashSet<String>,
        membership: &mut Membership,
    ) {
        let mut added = false;
        for automation in policy.automation.values() {
            if !automation.grants(access_group) {
                continue;
            }
            added = true;
            let exclusion = match &automation.ad_account {
                None => None,
                Some(account) => match self.users_by_name.get(&account.to_lowercase()) {
                    None => {
                        let is_group = self.groups_by_name.contains_key(&account.to_lowercase());
                        self.warn_missing("user", account, is_group);
                        Some(Exclusion::NotFound)
                    }
                    Some(_) if denied.contains(&account.to_lowercase()) => Some(Exclusion::Denied),
                    Some(&user) => match self.snapshot.users[user].state(self.now, self.lockout) {
                        AccountState::Active => None,
                        AccountState::Disabled => Some(Exclusion::Disabled),
                        AccountState::Locked => Some(Exclusion::Locked),
                        AccountState::Expired => Some(Exclusion::Expired),
                    },
                },
            };
            let name = automation.member();
            match exclusion {
                None => membership.users.push(Member {
                    name: name.as_str().into(),
                    via: Arc::from([automation.via()]),
                    until: None,
                }),
                Some(reason) => membership.excluded.push(Excluded { name, reason }),
            }
        }
        if added {
            membership.users.sort_by(|a, b| by_name(&a.name, &b.name));
            membership
                .excluded
                .sort_by(|a, b| by_name(&a.name, &b.name));
        }
    }

    /// `chain` with `"everywhere"` in front: the chain of a person `[everywhere]` reaches.
    fn through_everywhere(&mut self, chain: &Via) -> Via {
        let everywhere = &self.everywhere;
        Arc::clone(
            self.everywhere_chains
                .entry(Arc::clone(chain))
                .or_insert_with(|| everywhere.iter().chain(chain.iter()).cloned().collect()),
        )
    }

    /// Every user in `group`, transitively, each with a shortest chain of group names from
    /// `group` down. Breadth first, each group visited once: cycles end there.
    fn expand(&mut self, group: usize) -> Reached {
        if let Some(done) = self.expanded.get(&group) {
            return Rc::clone(done);
        }
        let groups = &self.snapshot.groups;
        let mut reached: Vec<(usize, Via)> = Vec::new();
        let mut seen_users = HashSet::new();
        let mut seen_groups = HashSet::from([group]);
        let mut level: Vec<(usize, Via)> = vec![(group, Arc::from([groups[group].name.clone()]))];
        while !level.is_empty() {
            // Sorting each level by chain makes the reported chain the alphabetically first of
            // the shortest ones, whatever order the server listed members in.
            level.sort_by(|a, b| a.1.cmp(&b.1));
            let mut next = Vec::new();
            for (current, chain) in level {
                let direct = groups[current]
                    .members
                    .iter()
                    .filter_map(|dn| self.users_by_dn.get(dn).copied());
                let primary = self
                    .primary_members
                    .get(&current)
                    .into_iter()
                    .flatten()
                    .copied();
                let mut users: Vec<usize> = direct.chain(primary).collect();
                users.sort_unstable();
                for user in users {
                    if seen_users.insert(user) {
                        reached.push((user, Arc::clone(&chain)));
                    }
                }
                for dn in &groups[current].members {
                    if let Some(&nested) = self.groups_by_dn.get(dn)
                        && seen_groups.insert(nested)
                    {
                        let nested_chain = chain.iter().chain([&groups[nested].name]).cloned();
                        next.push((nested, nested_chain.collect()));
                    }
                }
            }
            level = next;
        }
        let reached = Rc::new(reached);
        self.expanded.insert(group, Rc::clone(&reached));
        reached
    }

    /// Records a policy name that AD does not have; `other_kind_exists` when AD has the name as
    /// the other kind of principal, which is almost always the mistake.
    fn warn_missing(&mut self, kind: &str, name: &str, other_kind_exists: bool) {
        let hint = match (other_kind_exists, kind) {
            (false, _) => "",
            (true, "user") => " (there is an AD group of that name: list it under groups)",
            (true, _) => " (there is an AD user of that name: list it under users)",
        };
        self.warnings.insert(format!(
            "AD {kind} {name:?} named in the policy does not exist{hint}"
        ));
    }
}

fn index_by_name<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut index = HashMap::new();
    for (i, name) in names.enumerate() {
        index.entry(name.to_lowercase()).or_insert(i);
    }
    index
}

fn by_preference(candidate: &(u8, Via)) -> (u8, usize, &[String]) {
    (candidate.0, candidate.1.len(), &candidate.1)
}

/// People sort case-insensitively, with the exact spelling as the tie-breaker for stable output.
fn by_name(a: &str, b: &str) -> std::cmp::Ordering {
    // AD names are almost always ASCII: compared byte by byte without lowercasing copies (the
    // same order `to_lowercase` gives them).
    let lowered = if a.is_ascii() && b.is_ascii() {
        a.bytes()
            .map(|byte| byte.to_ascii_lowercase())
            .cmp(b.bytes().map(|byte| byte.to_ascii_lowercase()))
    } else {
        a.to_lowercase().cmp(&b.to_lowercase())
    };
    lowered.then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::publisher::directory::{Domain, Group, Sid};
    use crate::publisher::policy::{AccessGroup, Deny};

    const DOMAIN: &str = "S-1-5-21-1-2-3";

    /// The SID with the given sub-authorities after S-1-5, in objectSid's binary layout.
    fn sid_of(subs: &[u32]) -> Sid {
        let mut bytes = vec![1, subs.len() as u8, 0, 0, 0, 0, 0, 5];
        for sub in subs {
            bytes.extend_from_slice(&sub.to_le_bytes());
        }
        Sid::from_bytes(&bytes).unwrap()
    }

    fn sid(rid: u32) -> Option<Sid> {
        Some(sid_of(&[21, 1, 2, 3, rid]))
    }

    fn user(name: &str) -> User {
        User {
            dn: Dn::new(&format!("cn={name},cn=users")),
            name: name.into(),
            sid: None,
            primary_group_id: Some(513),
            account_control: 512,
            lockout_time: FileTime(0),
            account_expires: FileTime(0),
            uid_number: Some(1000),
            unix_home_directory: None,
        }
    }

    fn group(name: &str, rid: u32, members: &[&str]) -> Group {
        Group {
            dn: Dn::new(&format!("cn={name},cn=users")),
            name: name.into(),
            sid: sid(rid),
            members: members
                .iter()
                .map(|m| Dn::new(&format!("cn={m},cn=users")))
                .collect(),
        }
    }

    fn principals(users: &[&str], groups: &[&str]) -> Principals {
        Principals {
            users: users.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            ..Principals::default()
        }
    }

    fn policy(groups: &[(&str, Principals)], everywhere: Principals, deny: &[&str]) -> Policy {
        Policy {
            everywhere,
            access_groups: groups
                .iter()
                .map(|(name, principals)| {
                    (
                        name.to_string(),
                        AccessGroup {
                            name: name.to_string(),
                            description: None,
                            principals: principals.clone(),
                            options: vec![],
                        },
                    )
                })
                .collect(),
            deny: Deny {
                users: deny.iter().map(|s| s.to_string()).collect(),
                fingerprints: vec![],
            },
            automation: BTreeMap::new(),
        }
    }

    fn snapshot(users: Vec<User>, groups: Vec<Group>) -> Snapshot {
        Snapshot {
            domain: Some(Domain {
                sid: sid_of(&[21, 1, 2, 3]),
                lockout_duration: LockoutDuration::from_attribute(-18_000_000_000),
            }),
            users,
            groups,
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn members(resolution: &Resolution, group: &str) -> Vec<(String, Vec<String>)> {
        resolution.access_groups[group]
            .users
            .iter()
            .map(|m| (m.name.to_string(), m.via.to_vec()))
            .collect()
    }

    #[test]
    fn the_domain_sid_fixture_is_what_the_tests_assume() {
        assert_eq!(
            snapshot(vec![], vec![]).domain.unwrap().sid.to_string(),
            DOMAIN
        );
    }

    #[test]
    fn nested_groups_expand_to_any_depth_with_the_shortest_chain() {
        let snap = snapshot(
            vec![user("bob"), user("carol"), user("dave")],
            vec![
                group("Web Team", 1100, &["bob", "Contractors"]),
                group("Contractors", 1101, &["Interns", "carol"]),
                group("Interns", 1102, &["dave", "bob"]),
            ],
        );
        let pol = policy(
            &[("web", principals(&[], &["web team"]))],
            principals(&[], &[]),
            &[],
        );
        let resolution = resolve(&pol, &snap, now());
        assert_eq!(
            members(&resolution, "web"),
            [
                ("bob".into(), vec!["Web Team".to_string()]),
                (
                    "carol".into(),
                    vec!["Web Team".into(), "Contractors".into()]
                ),
                (
                    "dave".into(),
                    vec!["Web Team".into(), "Contractors".into(), "Interns".into()]
                ),
            ]
        );
    }

    #[test]
    fn cycles_terminate_and_everyone_in_them_is_found() {
        let snap = snapshot(
            vec![user("a"), user("b")],
            vec![group("A", 1100, &["B", "a"]), group("B", 1101, &["A", "b"])],
        );
        let pol = policy(&[("x", principals(&[], &["A"]))], principals(&[], &[]), &[]);
        let names: Vec<_> = members(&resolve(&pol, &snap, now()), "x")
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn primary_group_membership_counts() {
        let mut ops = user("Ops.Person");
        ops.primary_group_id = Some(1200);
        let snap = snapshot(
            vec![ops, user("other")],
            vec![group("Ops Primary", 1200, &[])],
        );
        let pol = policy(
            &[("ops", principals(&[], &["Ops Primary"]))],
            principals(&[], &[]),
            &[],
        );
        assert_eq!(
            members(&resolve(&pol, &snap, now()), "ops"),
            [("Ops.Person".into(), vec!["Ops Primary".to_string()])]
        );
    }

    #[test]
    fn non_people_members_are_ignored() {
        let snap = snapshot(
            vec![user("bob")],
            vec![group("G", 1100, &["bob", "WS01$", "Some Contact"])],
        );
        let pol = policy(&[("g", principals(&[], &["G"]))], principals(&[], &[]), &[]);
        assert_eq!(members(&resolve(&pol, &snap, now()), "g").len(), 1);
    }

    #[test]
    fn inactive_denied_and_missing_people_are_excluded_with_a_reason() {
        let mut disabled = user("dis");
        disabled.account_control = 514;
        let mut locked = user("lock");
        locked.lockout_time = FileTime::from_system_time(now() - Duration::from_secs(60));
        let mut lapsed = user("lapsed");
        lapsed.lockout_time = FileTime::from_system_time(now() - Duration::from_secs(7200));
        let mut expired = user("exp");
        expired.account_expires = FileTime::from_system_time(now() - Duration::from_secs(1));
        let snap = snapshot(
            vec![
                disabled,
                locked,
                lapsed,
                expired,
                user("mallory"),
                user("ok"),
            ],
            vec![group(
                "G",
                1100,
                &["dis", "lock", "lapsed", "exp", "mallory", "ok"],
            )],
        );
        let pol = policy(
            &[(
                "g",
                principals(&["ghost", "Ghost"], &["G", "No Such Group"]),
            )],
            principals(&[], &[]),
            &["MALLORY"],
        );
        let resolution = resolve(&pol, &snap, now());
        let g = &resolution.access_groups["g"];
        assert_eq!(
            g.users.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["lapsed", "ok"]
        );
        let excluded: Vec<_> = g
            .excluded
            .iter()
            .map(|e| (e.name.as_str(), e.reason))
            .collect();
        assert_eq!(
            excluded,
            [
                ("dis", Exclusion::Disabled),
                ("exp", Exclusion::Expired),
                ("ghost", Exclusion::NotFound),
                ("lock", Exclusion::Locked),
                ("mallory", Exclusion::Denied),
            ]
        );
        assert!(
            resolution
                .warnings
                .iter()
                .any(|w| w.contains("\"No Such Group\""))
        );
    }

    #[test]
    fn own_grants_win_over_everywhere_and_direct_over_nested() {
        let snap = snapshot(
            vec![user("alice"), user("bob")],
            vec![
                group("Admins", 1100, &["alice", "bob"]),
                group("Web", 1101, &["bob"]),
            ],
        );
        let pol = policy(
            &[
                ("web", principals(&["Bob"], &["Web"])),
                ("db", principals(&[], &["Web"])),
            ],
            principals(&["alice"], &["Admins"]),
            &[],
        );
        let resolution = resolve(&pol, &snap, now());
        assert_eq!(
            members(&resolution, "web"),
            [
                ("alice".into(), vec![EVERYWHERE.to_string()]),
                ("bob".into(), vec![])
            ]
        );
        assert_eq!(
            members(&resolution, "db"),
            [
                ("alice".into(), vec![EVERYWHERE.to_string()]),
                ("bob".into(), vec!["Web".to_string()])
            ]
        );
    }

    #[test]
    fn a_group_listed_as_a_user_gets_a_hint() {
        let snap = snapshot(vec![], vec![group("Web Team", 1100, &[])]);
        let pol = policy(
            &[("web", principals(&["Web Team"], &[]))],
            principals(&[], &[]),
            &[],
        );
        let resolution = resolve(&pol, &snap, now());
        assert_eq!(
            resolution.warnings,
            [
                "AD user \"Web Team\" named in the policy does not exist (there is an AD group of that name: list it under groups)"
            ]
        );
    }

    fn until(days_after_now: i64) -> Until {
        Until {
            ends_at: crate::publisher::policy::unix_seconds(now()) + days_after_now * 86_400,
            text: format!("in {days_after_now} days"),
        }
    }

    #[test]
    fn an_ended_grant_excludes_unless_another_grant_still_counts() {
        let snap = snapshot(
            vec![user("carol"), user("dave"), user("erin"), user("fay")],
            vec![
                group("Helpers", 1100, &["erin", "fay"]),
                group("Team", 1101, &["fay"]),
            ],
        );
        let mut web = principals(&["carol", "dave", "ghost"], &["Helpers", "Team"]);
        web.users_until.insert("carol".into(), until(1));
        web.users_until.insert("dave".into(), until(-1));
        web.users_until.insert("ghost".into(), until(-1));
        web.groups_until.insert("helpers".into(), until(-1));
        let pol = policy(&[("web", web)], principals(&[], &[]), &[]);
        let resolution = resolve(&pol, &snap, now());
        let web = &resolution.access_groups["web"];
        let users: Vec<_> = web
            .users
            .iter()
            .map(|m| (m.name.as_str(), m.until.as_ref().map(|u| u.text.as_str())))
            .collect();
        // carol's grant ends tomorrow; fay lost Helpers but is still in Team.
        assert_eq!(users, [("carol", Some("in 1 days")), ("fay", None)]);
        let excluded: Vec<_> = web
            .excluded
            .iter()
            .map(|e| (e.name.as_str(), e.reason))
            .collect();
        assert_eq!(
            excluded,
            [
                ("dave", Exclusion::ExpiredGrant),
                ("erin", Exclusion::ExpiredGrant),
                ("ghost", Exclusion::ExpiredGrant),
            ]
        );
        // The latest end wins; one entry that never ends makes the access unending.
        let mut db = principals(&["carol"], &["Helpers"]);
        db.users_until.insert("carol".into(), until(3));
        db.groups_until.insert("helpers".into(), until(9));
        let pol = policy(&[("db", db)], principals(&["erin"], &[]), &[]);
        let resolution = resolve(&pol, &snap, now());
        let db: Vec<_> = resolution.access_groups["db"]
            .users
            .iter()
            .map(|m| (m.name.as_str(), m.until.as_ref().map(|u| u.text.clone())))
            .collect();
        assert_eq!(
            db,
            [
                ("carol", Some("in 3 days".to_owned())),
                ("erin", None),
                ("fay", Some("in 9 days".to_owned()))
            ]
        );
    }

    #[test]
    fn automation_accounts_follow_their_ad_account() {
        let mut disabled = user("svc-old");
        disabled.account_control = 514;
        let snap = snapshot(vec![user("svc-ci"), disabled], vec![]);
        let mut pol = policy(
            &[("web", principals(&[], &[])), ("db", principals(&[], &[]))],
            principals(&[], &[]),
            &[],
        );
        let account = |name: &str, groups: &[&str], everywhere: bool, ad: Option<&str>| {
            crate::publisher::policy::Automation {
                name: name.into(),
                key_files: vec![],
                access_groups: groups.iter().map(|g| g.to_string()).collect(),
                everywhere,
                owner: "ops".into(),
                ad_account: ad.map(str::to_owned),
            }
        };
        for automation in [
            account("ci", &["web"], false, Some("SVC-CI")),
            account("old", &[], true, Some("svc-old")),
            account("gone", &["db"], false, Some("svc-gone")),
            account("plain", &[], true, None),
        ] {
            pol.automation.insert(automation.name.clone(), automation);
        }
        let resolution = resolve(&pol, &snap, now());
        assert_eq!(
            members(&resolution, "web"),
            [
                ("automation:ci".into(), vec!["owner ops".to_string()]),
                ("automation:plain".into(), vec!["owner ops".to_string()])
            ]
        );
        let excluded = |group: &str| -> Vec<(String, Exclusion)> {
            resolution.access_groups[group]
                .excluded
                .iter()
                .map(|e| (e.name.clone(), e.reason))
                .collect()
        };
        assert_eq!(
            excluded("web"),
            [("automation:old".into(), Exclusion::Disabled)]
        );
        assert_eq!(
            excluded("db"),
            [
                ("automation:gone".into(), Exclusion::NotFound),
                ("automation:old".into(), Exclusion::Disabled)
            ]
        );
    }
}
