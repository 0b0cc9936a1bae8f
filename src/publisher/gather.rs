//! Gathering the inputs of a plan: the policy, one directory read, the resolution, and every
//! member's validated keys (homes + keys stages). This is the I/O half of `plan` and `publish`;
//! what follows it (render, plan, guard) is pure.
//!
//! Only people who are members of at least one access group have their homes read: the cost of a
//! run grows with the people who have access, not with the size of the directory.
//!
//! Automation accounts that are members have their keys read from the policy repository
//! (`automation`) and join the same map as people's keys, so every later rule (deny, contested
//! keys, group options) treats them alike. A key file that cannot be read stops the run
//! (exit 78) before anything is written: the reviewed policy is incomplete, and publishing it
//! would revoke the account by accident.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::keys;
use crate::publisher::directory::{ReadStats, User, usn};
use crate::publisher::homes::Rejection;
use crate::publisher::homes::{self, HarvestOutcome, HarvestSettings, Harvestee, HomeLayout};
use crate::publisher::homes_state;
use crate::publisher::policy::{self, Checked};
use crate::publisher::render::{Problem, UserKeys};
use crate::publisher::resolve::{Resolution, resolve};
use crate::settings::{HomesSettings, OwnerSource, Settings};

/// More members than this without a uid are reported as one problem with the fix, not one each.
const NO_UID_SUMMARY_AFTER: usize = 3;

/// How a run reads the directory (see `crate::publisher::directory::usn`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// `--full`: read everything, whatever the directory state says.
    pub force_full: bool,
    /// Write the directory state back: only a run holding the publish lock may (the homes
    /// state is a cache of what was read, written by any run).
    pub keep_state: bool,
}

/// Everything a plan is computed from.
#[derive(Debug)]
pub struct Gathered {
    pub checked: Checked,
    pub directory_stats: ReadStats,
    /// Whether the directory was read in full, and the line that says which kind of read it
    /// was and why.
    pub directory_full: bool,
    pub directory_summary: String,
    pub resolution: Resolution,
    pub keys: BTreeMap<String, UserKeys>,
    /// Harvest and key problems, one per rejected file or dropped line.
    pub problems: Vec<Problem>,
    /// The policy repository's commit, when the policy is in one.
    pub policy_commit: Option<String>,
    /// How long each part took, for the run's phase log line (`crate::publisher::prepare`).
    pub timings: GatherTimings,
    /// Which kind of homes read this was, and how many homes were read.
    pub homes: homes_state::Summary,
}

/// Wall time of the parts of [`gather`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GatherTimings {
    /// The policy and the LDAP read (every page and ranged read).
    pub directory: Duration,
    /// Resolving the access groups from the snapshot.
    pub resolve: Duration,
    /// Reading the members' homes and parsing their keys.
    pub homes: Duration,
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
/// Homes whose identity did not change since the homes state remembered them are not read again
/// (`homes_state`) unless `run.force_full` (`--full`) or a full read is due.
pub async fn gather(
    settings: &Settings,
    now: SystemTime,
    run: Reading,
) -> anyhow::Result<Gathered> {
    let mut timings = GatherTimings::default();
    let started = Instant::now();
    let checked = policy::load(&settings.policy)?;
    let policy_commit = policy_commit(&settings.policy, &checked);
    let ldap = settings.ldap()?;
    let named_users = named_users(&checked.policy);
    let options = usn::Options {
        state_file: usn::path_beside(&settings.safety.lock_file),
        binding: usn::Binding {
            deployment: settings
                .s3()
                .map(|s3| crate::bucket::index::deployment(&s3.bucket, &s3.prefix))
                .unwrap_or_default(),
            base_dn: ldap.base_dn.to_lowercase(),
            bound_as: match &ldap.auth {
                crate::settings::LdapAuth::Simple => ldap.bind_dn.to_lowercase(),
                crate::settings::LdapAuth::Gssapi(kerberos) => {
                    kerberos.principal.clone().unwrap_or_default()
                }
            },
        },
        force_full: run.force_full,
        full_read_interval: ldap.full_read_interval,
        wall_clock: SystemTime::now(),
        named_users: &named_users,
        keep_state: run.keep_state,
    };
    let read = usn::read(ldap, &options)
        .await
        .context("reading Active Directory")?;
    let (snapshot, directory_stats) = (read.snapshot, read.stats);
    timings.directory = started.elapsed();
    let started = Instant::now();
    let resolution = resolve(&checked.policy, &snapshot, now);
    timings.resolve = started.elapsed();
    let started = Instant::now();

    // A hash set: a dense company has 33 memberships a person, and sorting them all by name
    // cost more than reading the homes.
    let members: rustc_hash::FxHashSet<&str> = resolution
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
    let harvestees: Vec<Harvestee> = people
        .iter()
        .filter(|user| !settled.contains_key(&user.name))
        .map(|user| Harvestee {
            user: user.name.clone(),
            uid: owners.get(&user.name).copied().flatten(),
            home: layout.home_of(&user.name, user.unix_home_directory.as_deref()),
        })
        .collect();
    // With nobody to read, an empty root harms no one.
    if !harvestees.is_empty() {
        check_homes_mounted(&settings.homes).await?;
    }
    let homes_looked_up: Vec<PathBuf> = harvestees
        .iter()
        .filter_map(|harvestee| harvestee.home.as_ref().ok().cloned())
        .collect();
    let deployment = settings
        .s3()
        .map(|s3| crate::bucket::index::deployment(&s3.bucket, &s3.prefix))
        .unwrap_or_default();
    let incremental = homes_state::Incremental {
        path: homes_state::path_beside(&settings.safety.lock_file),
        binding: homes_state::binding(&deployment, &settings.homes.root),
        full_read_interval: settings.homes.full_read_interval,
        force_full: run.force_full,
        // The file system's clock, not the time the policy is judged at (`--now` in tests).
        now: SystemTime::now(),
    };
    let (mut outcomes, homes_summary) = homes_state::harvest(
        harvestees,
        &HarvestSettings {
            concurrency: settings.homes.concurrency,
            read_timeout: settings.homes.read_timeout,
        },
        &incremental,
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

    if outcomes
        .values()
        .all(|outcome| matches!(outcome, HarvestOutcome::NoKeys))
    {
        check_some_home_exists(homes_looked_up, &settings.homes).await?;
    }

    let mut keys = BTreeMap::new();
    let automation =
        crate::publisher::automation::read_keys(&settings.policy, &checked, &settings.keys);
    if automation.unreadable {
        let listed: Vec<String> = automation
            .diagnostics
            .iter()
            .filter(|d| d.severity == crate::diagnostic::Severity::Error)
            .map(ToString::to_string)
            .collect();
        return Err(crate::exit::coded(
            crate::exit::Exit::Invalid,
            anyhow::anyhow!(
                "an automation key file cannot be read; nothing was published:\n{}",
                listed.join("\n")
            ),
        ));
    }
    for (member, automation_keys) in automation.keys {
        if members.contains(member.as_str()) {
            keys.insert(member, UserKeys::Known(automation_keys));
        }
    }
    problems.extend(
        automation
            .problems
            .into_iter()
            .filter(|(member, _)| members.contains(member.as_str()))
            .map(|(user, reason)| Problem { user, reason }),
    );
    for (user, outcome) in outcomes {
        let problem = |reason: String| Problem {
            user: user.clone(),
            reason,
        };
        let user_keys =
            match outcome {
                HarvestOutcome::Keys(text) => {
                    let mut parsed = keys::parse_authorized_keys(&text, &settings.keys);
                    parsed.limit_keys(settings.max_keys_per_user);
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
    timings.homes = started.elapsed();
    tracing::info!(
        members = members.len(),
        problems = problems.len(),
        "read the members' authorized_keys"
    );
    Ok(Gathered {
        checked,
        directory_stats,
        directory_full: read.full,
        directory_summary: read.summary,
        resolution,
        keys,
        problems,
        policy_commit,
        timings,
        homes: homes_summary,
    })
}

/// The users the policy names directly (access groups, `[everywhere]`, automation accounts'
/// `ad_account`), once each: looked up by name every run, so a deleted one is gone at once.
fn named_users(policy: &crate::publisher::policy::Policy) -> Vec<String> {
    let mut seen = BTreeSet::new();
    policy
        .access_groups
        .values()
        .flat_map(|group| &group.principals.users)
        .chain(&policy.everywhere.users)
        .chain(
            policy
                .automation
                .values()
                .filter_map(|automation| automation.ad_account.as_ref()),
        )
        .filter(|name| seen.insert(name.to_lowercase()))
        .cloned()
        .collect()
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

/// Fewer members than this, none with a home, is believable (new accounts); more is an outage.
const MEMBERS_FOR_AN_OUTAGE: usize = 3;

/// Refuses to read homes that are evidently not mounted: an unmounted NFS root reads as a tree in
/// which nobody has a home, and publishing that would revoke everyone's keys at once. The root
/// must be a non-empty directory (a mount point without its mount is an empty one), and the
/// `[homes] sentinel`, when set, must exist. Bounded by `read_timeout`, like every home read.
async fn check_homes_mounted(homes: &HomesSettings) -> anyhow::Result<()> {
    let root = homes.root.clone();
    let sentinel = homes
        .sentinel
        .as_ref()
        .map(|sentinel| homes.root.join(sentinel));
    let check = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut entries = std::fs::read_dir(&root).with_context(|| {
            format!(
                "homes.root {} cannot be read; are the homes mounted?",
                root.display()
            )
        })?;
        if entries.next().is_none() {
            anyhow::bail!(
                "homes.root {} is empty: the homes look unmounted, and reading them would \
                 publish that nobody has keys; nothing was written",
                root.display()
            );
        }
        if let Some(sentinel) = sentinel
            && let Err(error) = std::fs::symlink_metadata(&sentinel)
        {
            anyhow::bail!(
                "homes.sentinel {} is not there ({error}): the homes look unmounted; nothing \
                 was written",
                sentinel.display()
            );
        }
        Ok(())
    });
    match tokio::time::timeout(homes.read_timeout, check).await {
        Ok(Ok(checked)) => checked,
        Ok(Err(error)) => Err(anyhow::anyhow!("checking homes.root: {error}")),
        Err(_) => anyhow::bail!(
            "homes.root {} did not answer within homes.read_timeout; nothing was written",
            homes.root.display()
        ),
    }
}

/// Called when every member came back "no keys": if that is because none of their homes exists,
/// the homes are not mounted (or `home_prefix` maps them nowhere), not a tree of people without
/// keys.
async fn check_some_home_exists(
    homes: Vec<PathBuf>,
    settings: &HomesSettings,
) -> anyhow::Result<()> {
    if homes.len() < MEMBERS_FOR_AN_OUTAGE {
        return Ok(());
    }
    let count = homes.len();
    let any = tokio::task::spawn_blocking(move || {
        homes
            .iter()
            .any(|home| std::fs::symlink_metadata(home).is_ok())
    });
    match tokio::time::timeout(settings.read_timeout, any).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => anyhow::bail!(
            "none of the {count} members' homes exists under homes.root {}: the homes look \
             unmounted (or homes.home_prefix maps them elsewhere); nothing was written",
            settings.root.display()
        ),
        Ok(Err(error)) => Err(anyhow::anyhow!("checking the members' homes: {error}")),
        Err(_) => anyhow::bail!(
            "homes.root {} did not answer within homes.read_timeout; nothing was written",
            settings.root.display()
        ),
    }
}

/// The commit the policy file is at, when it is in a git repository; `-dirty` is appended when
/// any file the policy reads (the policy itself and every automation `key_files` entry) differs
/// from that commit or is not in it, so an index never claims a commit it was not built from.
fn policy_commit(policy: &Path, checked: &Checked) -> Option<String> {
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
    let read: Vec<PathBuf> = std::iter::once(policy.to_path_buf())
        .chain(
            checked
                .key_files
                .iter()
                .map(|entry| directory.join(&entry.path)),
        )
        .collect();
    let clean = read.iter().all(|path| {
        let Some(relative) = path
            .canonicalize()
            .ok()
            .and_then(|path| path.strip_prefix(&workdir).ok().map(Path::to_path_buf))
        else {
            // Outside the repository (or gone): not what the commit names.
            return false;
        };
        repository
            .status_file(&relative)
            .map(|status| status.is_empty())
            .unwrap_or(false)
    });
    Some(if clean {
        commit
    } else {
        format!("{commit}-dirty")
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    use std::time::Duration;

    fn settings(root: &Path, sentinel: Option<&str>) -> HomesSettings {
        HomesSettings {
            root: root.to_path_buf(),
            home_prefix: PathBuf::from("/home"),
            read_timeout: Duration::from_secs(5),
            concurrency: 4,
            owner: OwnerSource::UidNumber,
            sentinel: sentinel.map(PathBuf::from),
            max_carry: Duration::from_secs(7 * 86_400),
            full_read_interval: Duration::from_secs(3_600),
        }
    }

    #[test]
    fn policy_commit_is_dirty_when_any_file_the_policy_reads_differs() {
        let dir = tempfile::tempdir().unwrap();
        let repository = git2::Repository::init(dir.path()).unwrap();
        let policy_path = dir.path().join("access-groups.toml");
        std::fs::write(
            &policy_path,
            "[access_groups.web]\nusers = [\"bob\"]\n\n[automation.ci]\nkey_files = [\"ci.pub\"]\naccess_groups = [\"web\"]\nowner = \"bob\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("ci.pub"), "ssh-ed25519 AAAA ci\n").unwrap();
        let commit = |paths: &[&str]| {
            let mut index = repository.index().unwrap();
            for path in paths {
                index.add_path(Path::new(path)).unwrap();
            }
            index.write().unwrap();
            let tree = repository.find_tree(index.write_tree().unwrap()).unwrap();
            let signature = git2::Signature::now("t", "t@example.com").unwrap();
            let parent = repository.head().ok().and_then(|h| h.peel_to_commit().ok());
            let parents: Vec<&git2::Commit> = parent.iter().collect();
            repository
                .commit(Some("HEAD"), &signature, &signature, "c", &tree, &parents)
                .unwrap()
                .to_string()
        };
        let checked = policy::load(&policy_path).unwrap();
        // The key file is untracked: the commit does not hold what the policy reads.
        let first = commit(&["access-groups.toml"]);
        assert_eq!(
            policy_commit(&policy_path, &checked),
            Some(format!("{first}-dirty"))
        );
        let second = commit(&["ci.pub"]);
        assert_eq!(policy_commit(&policy_path, &checked), Some(second.clone()));
        // An edited key file.
        std::fs::write(dir.path().join("ci.pub"), "ssh-ed25519 BBBB ci\n").unwrap();
        assert_eq!(
            policy_commit(&policy_path, &checked),
            Some(format!("{second}-dirty"))
        );
    }

    #[tokio::test]
    async fn an_unmounted_homes_root_is_an_outage_not_everyone_without_keys() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        // Missing root.
        let error = check_homes_mounted(&settings(&root, None))
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("are the homes mounted?"),
            "{error:#}"
        );
        // An empty mount point.
        std::fs::create_dir(&root).unwrap();
        let error = check_homes_mounted(&settings(&root, None))
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("is empty: the homes look unmounted"),
            "{error:#}"
        );
        // Something is there, but not the sentinel.
        std::fs::create_dir(root.join("alice")).unwrap();
        check_homes_mounted(&settings(&root, None)).await.unwrap();
        let error = check_homes_mounted(&settings(&root, Some(".keyhole-mounted")))
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("homes.sentinel"), "{error:#}");
        std::fs::write(root.join(".keyhole-mounted"), "").unwrap();
        check_homes_mounted(&settings(&root, Some(".keyhole-mounted")))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn members_of_whom_none_has_a_home_are_an_outage() {
        let dir = tempfile::tempdir().unwrap();
        let homes: Vec<PathBuf> = ["a", "b", "c"].iter().map(|u| dir.path().join(u)).collect();
        let homes_settings = settings(dir.path(), None);
        let error = check_some_home_exists(homes.clone(), &homes_settings)
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("none of the 3 members' homes exists"),
            "{error:#}"
        );
        // Two people without homes yet are believable.
        check_some_home_exists(homes[..2].to_vec(), &homes_settings)
            .await
            .unwrap();
        // One home is enough to show the tree is there.
        std::fs::create_dir(&homes[1]).unwrap();
        check_some_home_exists(homes, &homes_settings)
            .await
            .unwrap();
    }
}
