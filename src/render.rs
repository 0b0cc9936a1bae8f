//! Rendering: from resolved access groups and each member's validated keys to the exact bytes of
//! each group's `authorized_keys`. Pure: no I/O, no clock, no randomness, so the same input gives
//! byte-identical output and an unchanged group is never rewritten.
//!
//! A group file is a short header, then for each user with keys (sorted as the resolution sorts
//! them) a `# <user>` line (`# <user> via <group> > <group>` when a group chain gives the access)
//! followed by that user's keys in the order of their own file.
//!
//! Two rules protect access here. A group with a member whose home could not be read (an
//! `Unknown` harvest) is *held*: it is not rendered at all, so the caller keeps what is published.
//! And a key found in more than one person's file is dropped from all of them: it could not be
//! attributed to a person, and a shared private key is an incident of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::keys::AuthorizedKey;
use crate::resolve::{Membership, VIA_SEPARATOR, Via};

/// What the homes and keys stages learnt about one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserKeys {
    /// The keys that passed validation (possibly none).
    Known(Vec<AuthorizedKey>),
    /// The home could not be read (I/O error, timeout): nothing may change for this person.
    Unknown(String),
}

/// Something a person should hear about: a rejected file, a dropped line, a denied key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Problem {
    pub user: String,
    pub reason: String,
}

/// One access group's file, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFile {
    pub body: String,
    /// Hex SHA-256 of `body`.
    pub sha256: String,
    /// Users with at least one key in the file.
    pub users: Vec<String>,
    pub via: BTreeMap<String, Via>,
    /// Every key in the file with its owner, in file order.
    pub keys: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderedGroup {
    Ready(GroupFile),
    /// Not rendered because these members' keys are unknown; what is published stays.
    Held {
        unknown: Vec<String>,
    },
}

/// Renders access group files one at a time, so that a run never needs every file in memory
/// at once: the plan keeps only each file's SHA-256, and a publish renders again the few it
/// writes (the output is deterministic, and the publisher checks the hash it planned).
///
/// Which keys are dropped (denied by the policy, or held by more than one person) is a fact about
/// people, not about groups: it is decided once, here, with its problems.
#[derive(Debug)]
pub struct Renderer<'k> {
    keys: &'k BTreeMap<String, UserKeys>,
    dropped: HashSet<&'k str>,
    problems: Vec<Problem>,
    denied_keys: BTreeMap<String, BTreeSet<String>>,
}

impl<'k> Renderer<'k> {
    /// `keys` holds an entry for every member (a missing entry counts as unknown, never as "no
    /// keys"); `denied_fingerprints` come from `[deny]`.
    pub fn new(
        keys: &'k BTreeMap<String, UserKeys>,
        denied_fingerprints: &BTreeSet<String>,
    ) -> Self {
        // Who holds each fingerprint.
        let mut owners: HashMap<&str, Vec<&str>> = HashMap::new();
        for (user, user_keys) in keys {
            if let UserKeys::Known(list) = user_keys {
                for key in list {
                    let holders = owners.entry(key.fingerprint.as_str()).or_default();
                    if holders.last() != Some(&user.as_str()) {
                        holders.push(user);
                    }
                }
            }
        }
        let mut problems = BTreeSet::new();
        let mut denied_keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut dropped = HashSet::new();
        for (user, user_keys) in keys {
            let UserKeys::Known(list) = user_keys else {
                continue;
            };
            for key in list {
                let fingerprint = key.fingerprint.as_str();
                let holders = &owners[fingerprint];
                let reason = if denied_fingerprints.contains(fingerprint) {
                    denied_keys
                        .entry(user.clone())
                        .or_default()
                        .insert(fingerprint.to_owned());
                    format!("key {fingerprint} is denied by the policy")
                } else if holders.len() > 1 {
                    format!(
                        "key {fingerprint} is also in the files of {}; dropped from all of them",
                        holders.join(", ")
                    )
                } else {
                    continue;
                };
                dropped.insert(fingerprint);
                problems.insert(Problem {
                    user: user.clone(),
                    reason,
                });
            }
        }
        Renderer {
            keys,
            dropped,
            problems: problems.into_iter().collect(),
            denied_keys,
        }
    }

    /// Keys dropped from every file and why, sorted.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Per person, the fingerprints dropped because `[deny]` lists them.
    pub fn denied_keys(&self) -> &BTreeMap<String, BTreeSet<String>> {
        &self.denied_keys
    }

    /// Renders the access group `name`, whose members are `membership`.
    pub fn group(&self, name: &str, membership: &Membership) -> RenderedGroup {
        let unknown: Vec<String> = membership
            .users
            .iter()
            .filter(|member| !matches!(self.keys.get(&member.name), Some(UserKeys::Known(_))))
            .map(|member| member.name.clone())
            .collect();
        if !unknown.is_empty() {
            return RenderedGroup::Held { unknown };
        }
        let mut file = GroupFile {
            body: format!("# keyhole access group {name}: generated, do not edit\n"),
            sha256: String::new(),
            users: Vec::new(),
            via: BTreeMap::new(),
            keys: Vec::new(),
        };
        for member in &membership.users {
            let Some(UserKeys::Known(list)) = self.keys.get(&member.name) else {
                continue;
            };
            let mut block = list
                .iter()
                .filter(|key| !self.dropped.contains(key.fingerprint.as_str()))
                .peekable();
            if block.peek().is_none() {
                continue;
            }
            file.body.push_str(&user_line(&member.name, &member.via));
            for key in block {
                file.body.push_str(&key.line());
                file.body.push('\n');
                file.keys
                    .push((member.name.clone(), key.fingerprint.as_str().to_owned()));
            }
            file.users.push(member.name.clone());
            file.via.insert(member.name.clone(), member.via.clone());
        }
        file.sha256 = sha256_hex(file.body.as_bytes());
        RenderedGroup::Ready(file)
    }
}

/// The comment line that opens a person's block: `# bob`, or `# bob via Web Team > Contractors`
/// when a group chain gives the access. Carrying the chain in the file makes each file say on its
/// own why every key in it grants access, which is all an instance needs to attribute a login.
fn user_line(user: &str, via: &[String]) -> String {
    if via.is_empty() {
        format!("# {user}\n")
    } else {
        format!("# {user} via {}\n", via.join(VIA_SEPARATOR))
    }
}

/// Lower-case hex SHA-256, as the manifest records it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyPolicy, parse_authorized_keys};

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq a@host";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+IR8TskynvftW3EfRyCVskOiAVP6iaiVeXwIV7bhM8 b@host";

    fn keys_of(text: &str) -> UserKeys {
        UserKeys::Known(parse_authorized_keys(text, &KeyPolicy::default()).keys)
    }

    fn ready(rendered: RenderedGroup) -> GroupFile {
        match rendered {
            RenderedGroup::Ready(file) => file,
            other => panic!("not rendered: {other:?}"),
        }
    }

    #[test]
    fn a_group_file_is_users_in_order_each_with_a_header_and_their_keys() {
        let keys = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            ("bob".to_string(), keys_of(ED_B)),
            ("carol".to_string(), keys_of("")),
        ]);
        let renderer = Renderer::new(&keys, &BTreeSet::new());
        let web = Membership::through_team(&["alice", "bob", "carol"]);
        let file = ready(renderer.group("web", &web));
        assert_eq!(
            file.body,
            format!(
                "# keyhole access group web: generated, do not edit\n# alice via Team\n{ED_A}\n# bob via Team\n{ED_B}\n"
            )
        );
        assert_eq!(file.users, ["alice", "bob"]);
        assert_eq!(file.sha256, sha256_hex(file.body.as_bytes()));
        // Same input, same bytes, from a renderer of its own too.
        assert_eq!(
            ready(Renderer::new(&keys, &BTreeSet::new()).group("web", &web)),
            file
        );
        // A person named directly has no chain.
        let mut direct = Membership::through_team(&["bob"]);
        direct.users[0].via = Vec::new().into();
        assert!(
            ready(renderer.group("db", &direct))
                .body
                .contains("\n# bob\n")
        );
    }

    #[test]
    fn an_unknown_member_holds_the_group_and_only_that_group() {
        let keys = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            ("bob".to_string(), UserKeys::Unknown("timed out".into())),
        ]);
        let renderer = Renderer::new(&keys, &BTreeSet::new());
        assert_eq!(
            renderer.group("web", &Membership::through_team(&["alice", "bob"])),
            RenderedGroup::Held {
                unknown: vec!["bob".into()]
            }
        );
        // No entry at all counts as unknown too, never as "no keys".
        assert_eq!(
            renderer.group("ops", &Membership::through_team(&["zoe"])),
            RenderedGroup::Held {
                unknown: vec!["zoe".into()]
            }
        );
        assert_eq!(
            ready(renderer.group("db", &Membership::through_team(&["alice"]))).users,
            ["alice"]
        );
    }

    #[test]
    fn denied_and_shared_keys_are_dropped_and_reported() {
        let alice = keys_of(ED_A);
        let UserKeys::Known(list) = &alice else {
            unreachable!()
        };
        let denied = BTreeSet::from([list[0].fingerprint.as_str().to_owned()]);
        let keys = BTreeMap::from([
            ("alice".to_string(), alice.clone()),
            ("bob".to_string(), keys_of(ED_B)),
            ("eve".to_string(), keys_of(ED_B)),
        ]);
        let renderer = Renderer::new(&keys, &denied);
        let file =
            ready(renderer.group("web", &Membership::through_team(&["alice", "bob", "eve"])));
        assert!(file.users.is_empty(), "{file:?}");
        assert_eq!(renderer.denied_keys()["alice"].len(), 1);
        let problems = renderer.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[1].reason.contains("also in the files of bob, eve"));
    }
}
