//! Gathering the inputs of a plan: the policy, one directory read, the resolution, and every
//! member's validated keys (homes + keys stages). This is the I/O half of `plan` and `publish`;
//! what follows it (render, plan, guard) is pure.
//!
//! Only people who are members of at least one access group have their homes read: the cost of a
//! run grows with the people who have access, not with the size of the directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::directory::{self, ReadStats, User};
use crate::homes::{self, HarvestOutcome, HarvestSettings, Harvestee, HomeLayout};
use crate::keys;
use crate::policy::{self, Checked};
use crate::render::{Problem, UserKeys};
use crate::resolve::{Resolution, resolve};
use crate::settings::Settings;

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
    /// How long each part took, for the run's phase log line (`cmd::plan::prepare`).
    pub timings: GatherTimings,
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
pub async fn gather(settings: &Settings, now: SystemTime) -> anyhow::Result<Gathered> {
    let mut timings = GatherTimings::default();
    let started = Instant::now();
    let checked = policy::load(&settings.policy)?;
    let policy_commit = policy_commit(&settings.policy);
    let (snapshot, directory_stats) = directory::read_snapshot(settings.ldap()?)
        .await
        .context("reading Active Directory")?;
    timings.directory = started.elapsed();
    let started = Instant::now();
    let resolution = resolve(&checked.policy, &snapshot, now);
    timings.resolve = started.elapsed();
    let started = Instant::now();

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
    let harvestees = members
        .iter()
        .filter_map(|name| users.get(name))
        .map(|user| Harvestee {
            user: user.name.clone(),
            uid: user.uid_number,
            home: layout.home_of(&user.name, user.unix_home_directory.as_deref()),
        })
        .collect();
    let outcomes = homes::harvest(
        harvestees,
        &HarvestSettings {
            concurrency: settings.homes.concurrency,
            read_timeout: settings.homes.read_timeout,
        },
    )
    .await;

    let mut keys = BTreeMap::new();
    let mut problems = Vec::new();
    for (user, outcome) in outcomes {
        let problem = |reason: String| Problem {
            user: user.clone(),
            reason,
        };
        let user_keys = match outcome {
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
        resolution,
        keys,
        problems,
        policy_commit,
        timings,
    })
}

/// The commit the policy file is at, when it is in a git repository; `-dirty` is appended when
/// the file differs from that commit, so a manifest never claims a commit it was not built from.
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
