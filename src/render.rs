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

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::keys::AuthorizedKey;
use crate::resolve::{Resolution, VIA_SEPARATOR};

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
    pub via: BTreeMap<String, Vec<String>>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub groups: BTreeMap<String, RenderedGroup>,
    pub problems: Vec<Problem>,
    /// Per person, the fingerprints dropped because `[deny]` lists them.
    pub denied_keys: BTreeMap<String, BTreeSet<String>>,
}

/// Renders every access group in `resolution`. `keys` holds an entry for every member (a missing
/// entry counts as unknown, never as "no keys"); `denied_fingerprints` come from `[deny]`.
pub fn render(
    resolution: &Resolution,
    keys: &BTreeMap<String, UserKeys>,
    denied_fingerprints: &BTreeSet<String>,
) -> Rendered {
    let mut problems = BTreeSet::new();
    let mut denied_keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();

    // Fingerprints that more than one person holds.
    let mut owners: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (user, user_keys) in keys {
        if let UserKeys::Known(list) = user_keys {
            for key in list {
                owners
                    .entry(key.fingerprint.as_str())
                    .or_default()
                    .insert(user);
            }
        }
    }
    let shared: BTreeMap<&str, BTreeSet<&str>> = owners
        .into_iter()
        .filter(|(_, users)| users.len() > 1)
        .collect();

    let mut groups = BTreeMap::new();
    for (name, membership) in &resolution.access_groups {
        let unknown: Vec<String> = membership
            .users
            .iter()
            .filter(|member| !matches!(keys.get(&member.name), Some(UserKeys::Known(_))))
            .map(|member| member.name.clone())
            .collect();
        if !unknown.is_empty() {
            groups.insert(name.clone(), RenderedGroup::Held { unknown });
            continue;
        }
        let mut file = GroupFile {
            body: format!("# keyhole access group {name}: generated, do not edit\n"),
            sha256: String::new(),
            users: Vec::new(),
            via: BTreeMap::new(),
            keys: Vec::new(),
        };
        for member in &membership.users {
            let Some(UserKeys::Known(list)) = keys.get(&member.name) else {
                continue;
            };
            let mut block = Vec::new();
            for key in list {
                let fingerprint = key.fingerprint.as_str();
                if denied_fingerprints.contains(fingerprint) {
                    denied_keys
                        .entry(member.name.clone())
                        .or_default()
                        .insert(fingerprint.to_owned());
                    problems.insert(Problem {
                        user: member.name.clone(),
                        reason: format!("key {fingerprint} is denied by the policy"),
                    });
                    continue;
                }
                if let Some(holders) = shared.get(fingerprint) {
                    let holders: Vec<&str> = holders.iter().copied().collect();
                    problems.insert(Problem {
                        user: member.name.clone(),
                        reason: format!(
                            "key {fingerprint} is also in the files of {}; dropped from all of them",
                            holders.join(", ")
                        ),
                    });
                    continue;
                }
                block.push(key);
            }
            if block.is_empty() {
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
        groups.insert(name.clone(), RenderedGroup::Ready(file));
    }
    Rendered {
        groups,
        problems: problems.into_iter().collect(),
        denied_keys,
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
    use crate::resolve::{Member, Membership};

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq a@host";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+IR8TskynvftW3EfRyCVskOiAVP6iaiVeXwIV7bhM8 b@host";

    fn keys_of(text: &str) -> UserKeys {
        UserKeys::Known(parse_authorized_keys(text, &KeyPolicy::default()).keys)
    }

    fn resolution(groups: &[(&str, &[&str])]) -> Resolution {
        Resolution {
            access_groups: groups
                .iter()
                .map(|(name, users)| {
                    let users = users
                        .iter()
                        .map(|u| Member {
                            name: u.to_string(),
                            via: vec!["Team".into()],
                        })
                        .collect();
                    (
                        name.to_string(),
                        Membership {
                            users,
                            excluded: vec![],
                        },
                    )
                })
                .collect(),
            warnings: vec![],
        }
    }

    fn ready(rendered: &Rendered, group: &str) -> GroupFile {
        match &rendered.groups[group] {
            RenderedGroup::Ready(file) => file.clone(),
            other => panic!("{group} is {other:?}"),
        }
    }

    #[test]
    fn a_group_file_is_users_in_order_each_with_a_header_and_their_keys() {
        let keys = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            ("bob".to_string(), keys_of(ED_B)),
            ("carol".to_string(), keys_of("")),
        ]);
        let rendered = render(
            &resolution(&[("web", &["alice", "bob", "carol"])]),
            &keys,
            &BTreeSet::new(),
        );
        let file = ready(&rendered, "web");
        assert_eq!(
            file.body,
            format!(
                "# keyhole access group web: generated, do not edit\n# alice via Team\n{ED_A}\n# bob via Team\n{ED_B}\n"
            )
        );
        assert_eq!(file.users, ["alice", "bob"]);
        assert_eq!(file.sha256, sha256_hex(file.body.as_bytes()));
        // Same input, same bytes.
        assert_eq!(
            render(
                &resolution(&[("web", &["alice", "bob", "carol"])]),
                &keys,
                &BTreeSet::new()
            ),
            rendered
        );
    }

    #[test]
    fn an_unknown_member_holds_the_group_and_only_that_group() {
        let keys = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            ("bob".to_string(), UserKeys::Unknown("timed out".into())),
        ]);
        let rendered = render(
            &resolution(&[("web", &["alice", "bob"]), ("db", &["alice"])]),
            &keys,
            &BTreeSet::new(),
        );
        assert_eq!(
            rendered.groups["web"],
            RenderedGroup::Held {
                unknown: vec!["bob".into()]
            }
        );
        assert_eq!(ready(&rendered, "db").users, ["alice"]);
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
        let rendered = render(
            &resolution(&[("web", &["alice", "bob", "eve"])]),
            &keys,
            &denied,
        );
        let file = ready(&rendered, "web");
        assert!(file.users.is_empty(), "{file:?}");
        assert_eq!(rendered.denied_keys["alice"].len(), 1);
        assert_eq!(rendered.problems.len(), 3, "{:?}", rendered.problems);
        assert!(
            rendered.problems[1]
                .reason
                .contains("also in the files of bob, eve")
        );
    }
}
