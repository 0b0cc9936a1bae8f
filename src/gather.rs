//! Gathering the inputs of a plan: the policy, one directory read, the resolution, and every
//! member's validated keys (homes + keys stages). This is the I/O half of `plan` and `publish`;
//! what follows it (render, plan, guard) is pure.
//!
//! Only people who are members of at least one access group have their homes read: the cost of a
//! run grows with the people who have access, not with the size of the directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;

use crate::directory::{self, ReadStats, User};
use crate::homes::Rejection;
use crate::homes::{self, HarvestOutcome, HarvestSettings, Harvestee, HomeLayout};
use crate::keys;
use crate::policy::{self, Checked};
use crate::render::{Problem, UserKeys};
use crate::resolve::{Resolution, resolve};
use crate::settings::{OwnerSource, Settings};

/// More members than this without a uid are reported as one problem with the fix, not one each.
const NO_UID_SUMMARY_AFTER: usize = 3;

/// Everything a plan is computed from.
#[derive(Debug)]
pub struct Gathered {
    pub checked: Checked,
    pub directory_stats: ReadStats,
    pub resolution: Resolution,
    pub keys: BTreeMap<String, UserKeys>,
    /// Harvest and key problems, one per rejected file or dropped line.
    pub problems: Vec<Problem>,
    /// The policy repository's commit, when the policy is in one.
    pub policy_commit: Option<String>,
}

impl Gathered {
    /// True when some member's keys could not be read: the run must end with exit 1.
    pub fn has_unknown(&self) -> bool {
        self.keys
            .values()
            .any(|keys| matches!(keys, UserKeys::Unknown(_)))
    }
}

/// Reads the policy, the directory and the members' homes. Any directory failure is an error;
/// a home that cannot be read is not (it becomes `UserKeys::Unknown`, and its groups are held).
pub async fn gather(settings: &Settings, now: SystemTime) -> anyhow::Result<Gathered> {
    let checked = policy::load(&settings.policy)?;
    let policy_commit = policy_commit(&settings.policy);
    let (snapshot, directory_stats) = directory::read_snapshot(settings.ldap()?)
        .await
        .context("reading Active Directory")?;
    let resolution = resolve(&checked.policy, &snapshot, now);

    let members: BTreeSet<&str> = resolution
        .access_groups
        .values()
        .flat_map(|membership| membership.users.iter().map(|m| m.name.as_str()))
        .collect();
    let users: HashMap<&str, &User> = snapshot
        .users
        .iter()
        .map(|u| (u.name.as_str(), u))
        .collect();
    let layout = HomeLayout {
        root: settings.homes.root.clone(),
        home_prefix: settings.homes.home_prefix.clone(),
    };
    let people: Vec<&User> = members
        .iter()
        .filter_map(|name| users.get(name))
        .copied()
        .collect();
    let (owners, mut settled) = owners(&people, &settings.homes.owner).await;
    let harvestees = people
        .iter()
        .filter(|user| !settled.contains_key(&user.name))
        .map(|user| Harvestee {
            user: user.name.clone(),
            uid: owners.get(&user.name).copied().flatten(),
            home: layout.home_of(&user.name, user.unix_home_directory.as_deref()),
        })
        .collect();
    let mut outcomes = homes::harvest(
        harvestees,
        &HarvestSettings {
            concurrency: settings.homes.concurrency,
            read_timeout: settings.homes.read_timeout,
        },
    )
    .await;
    outcomes.append(&mut settled);
    let without_uid: Vec<&String> = outcomes
        .iter()
        .filter(|(_, outcome)| {
            matches!(
                outcome,
                HarvestOutcome::Rejected(Rejection::NoUidNumber | Rejection::NoNssAccount { .. })
            )
        })
        .map(|(user, _)| user)
        .collect();
    let summarize = without_uid.len() > NO_UID_SUMMARY_AFTER;
    let mut problems = Vec::new();
    if summarize {
        problems.push(no_uid_summary(&without_uid, &settings.homes.owner));
    }

    let mut keys = BTreeMap::new();
    for (user, outcome) in outcomes {
        let problem = |reason: String| Problem {
            user: user.clone(),
            reason,
        };
        let user_keys =
            match outcome {
                HarvestOutcome::Keys(text) => {
                    let parsed = keys::parse_authorized_keys(&text, &settings.keys);
                    problems.extend(
                        parsed
                            .dropped
                            .iter()
                            .filter(|dropped| dropped.reason.is_problem())
                            .map(|dropped| {
                                problem(format!(
                                    "authorized_keys line {}: {}",
                                    dropped.line, dropped.reason
                                ))
                            }),
                    );
                    UserKeys::Known(parsed.keys)
                }
                HarvestOutcome::NoKeys => UserKeys::Known(Vec::new()),
                HarvestOutcome::Rejected(
                    Rejection::NoUidNumber | Rejection::NoNssAccount { .. },
                ) if summarize => UserKeys::Known(Vec::new()),
                HarvestOutcome::Rejected(rejection) => {
                    problems.push(problem(format!("authorized_keys rejected: {rejection}")));
                    UserKeys::Known(Vec::new())
                }
                HarvestOutcome::Unknown(error) => {
                    problems.push(problem(format!("keys unknown: {error}")));
                    UserKeys::Unknown(error)
                }
            };
        keys.insert(user, user_keys);
    }
    tracing::info!(
        members = members.len(),
        problems = problems.len(),
        "read the members' authorized_keys"
    );
    Ok(Gathered {
        checked,
        directory_stats,
        resolution,
        keys,
        problems,
        policy_commit,
    })
}

/// The uid each person's files must be owned by, and the outcomes already settled without
/// reading (with `owner = "nss"`: unknown to the name service, or the name service failed).
async fn owners(
    people: &[&User],
    owner: &OwnerSource,
) -> (
    HashMap<String, Option<u32>>,
    BTreeMap<String, HarvestOutcome>,
) {
    let suffix = match owner {
        OwnerSource::UidNumber => {
            let uids = people
                .iter()
                .map(|user| (user.name.clone(), user.uid_number))
                .collect();
            return (uids, BTreeMap::new());
        }
        OwnerSource::Nss { suffix } => suffix.clone(),
    };
    let names: Vec<String> = people.iter().map(|user| user.name.clone()).collect();
    // getpwnam may wait on SSSD or winbind: one blocking thread for the lot, off the runtime.
    let looked_up = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .map(|name| {
                let account = format!("{name}{suffix}");
                let uid = homes::nss_uid(&account);
                (name, account, uid)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut uids = HashMap::new();
    let mut settled = BTreeMap::new();
    match looked_up {
        Ok(results) => {
            for (name, account, uid) in results {
                match uid {
                    Ok(Some(uid)) => {
                        uids.insert(name, Some(uid));
                    }
                    Ok(None) => {
                        settled.insert(
                            name,
                            HarvestOutcome::Rejected(Rejection::NoNssAccount { name: account }),
                        );
                    }
                    Err(error) => {
                        settled.insert(
                            name,
                            HarvestOutcome::Unknown(format!(
                                "the name service failed to look up {account}: {error}"
                            )),
                        );
                    }
                }
            }
        }
        Err(error) => {
            for user in people {
                settled.insert(
                    user.name.clone(),
                    HarvestOutcome::Unknown(format!("the name service lookup died: {error}")),
                );
            }
        }
    }
    (uids, settled)
}

/// One problem for many members without a uid, with what to do about it.
fn no_uid_summary(users: &[&String], owner: &OwnerSource) -> Problem {
    let shown: Vec<&str> = users.iter().take(5).map(|user| user.as_str()).collect();
    let more = if users.len() > shown.len() {
        ", ..."
    } else {
        ""
    };
    let reason = match owner {
        OwnerSource::UidNumber => format!(
            "have no uidNumber in AD ({}{more}), so their homes cannot be checked and they get no keys. \
             If your Linux hosts map AD accounts to uids with SSSD or winbind, set [homes] owner = \"nss\" \
             on a publisher joined the same way; otherwise give these accounts RFC 2307 attributes",
            shown.join(", ")
        ),
        OwnerSource::Nss { suffix } => format!(
            "are unknown to this host's name service ({}{more}, looked up with suffix {suffix:?}), so their \
             homes cannot be checked and they get no keys. Check that the publisher is joined like the NFS \
             clients (`getent passwd NAME{suffix}` must answer) and that [homes] nss_suffix matches their \
             user names",
            shown.join(", ")
        ),
    };
    Problem {
        user: format!("{} members", users.len()),
        reason,
    }
}

/// The commit the policy file is at, when it is in a git repository; `-dirty` is appended when
/// the file differs from that commit, so an index never claims a commit it was not built from.
fn policy_commit(policy: &Path) -> Option<String> {
    let directory = policy
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let repository = git2::Repository::discover(directory).ok()?;
    let commit = repository
        .head()
        .ok()?
        .peel_to_commit()
        .ok()?
        .id()
        .to_string();
    let workdir = repository.workdir()?.canonicalize().ok()?;
    let relative = policy
        .canonicalize()
        .ok()?
        .strip_prefix(&workdir)
        .ok()?
        .to_path_buf();
    let clean = repository
        .status_file(&relative)
        .map(|status| status.is_empty())
        .unwrap_or(false);
    Some(if clean {
        commit
    } else {
        format!("{commit}-dirty")
    })
}
