//! `keyhole ssh --explain TARGET`, and what `keyhole ssh` prints when the instance refused every
//! key: why, in plain words, from what can be known off the instance.
//!
//! Read: the signed index (verified with `[ssh] verify_key`, else what `whois` trusts:
//! `[instance] verify_key` or the public half of `[signing] key_file`; refused when it does not
//! verify or belongs to another deployment), the files of the instance's access groups (each
//! checked against the index's SHA-256, through [`Published`]), the owners object when the
//! engineer may read it (who a key is published for, `whois`'s answer), the instance's
//! access-groups tag, the agent's public keys, and the policy file when `--policy` gives one.
//! Nothing is written, no key is sent anywhere.
//!
//! Answered: which of the agent's keys are published and for whom (and, for one that is not,
//! the reasons that can be checked from here: `[deny]` in the policy, `[keys]` rules); which
//! access groups the instance has; whether any agent key is in them; if not, which AD groups or
//! policy entries grant those groups (the policy when given, else the `# user via …` lines of
//! the group files: what grants access to someone today). What cannot be known from here is
//! said so: whether the instance has fetched the current index (only the host knows when it last
//! refreshed), and its groups when it has no access-groups tag.
//!
//! [`explain`] is pure (every input passed in, the clock too) so that every answer is
//! unit-tested; [`gather`] does the reading.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use serde::Serialize;

use super::agent::AgentKey;
use super::bastion::Bastion;
use super::{Instance, LoginUser};
use crate::bucket::deployment::Deployment;
use crate::bucket::group_file::PublishedFile;
use crate::bucket::group_file::VIA_SEPARATOR;
use crate::bucket::index::{Index, Owners};
use crate::bucket::published::Published;
use crate::bucket::signing::Verifier;
use crate::bucket::store::Timeouts;
use crate::instance::host_groups;
use crate::keys::{self, KeyPolicy};
use crate::publisher::policy::{AUTOMATION_PREFIX, Policy};
use crate::publisher::resolve::EVERYWHERE;
use crate::settings::Settings;

/// Reads for a person at a prompt: a few seconds, a few attempts.
const TIMEOUTS: Timeouts = Timeouts {
    connect: std::time::Duration::from_secs(5),
    operation: std::time::Duration::from_secs(20),
    attempts: 3,
};

/// The whole answer; `--format json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub instance: Instance,
    pub login_user: LoginUser,
    /// `None`: `bastion_problem` says why.
    pub bastion: Option<Bastion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bastion_problem: Option<String>,
    pub index: IndexFacts,
    pub agent: AgentFacts,
    pub access_groups: HostGroups,
    pub verdict: Verdict,
    /// What to do, and what cannot be known from here, one sentence each.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IndexFacts {
    pub generation: u64,
    pub not_after: Option<String>,
    /// Past `not_after`: instances refuse it and serve their cache while it lasts.
    pub expired: bool,
    /// Where the key that verified the signature came from; `None`: not verified.
    pub verified_with: Option<String>,
    pub policy_commit: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentFacts {
    /// Why the agent's keys are not known (no agent, empty agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub keys: Vec<KeyFacts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyFacts {
    pub fingerprint: String,
    pub comment: Option<String>,
    /// The person the key is published for (the owners object, else this instance's files).
    pub published_for: Option<String>,
    /// Whether `published_for: null` means "not published" (the owners object was read) or
    /// only "not in this instance's groups".
    pub owners_known: bool,
    /// This instance's access groups whose file holds the key.
    pub in_access_groups: Vec<String>,
    /// Why it cannot be published, when that can be told from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostGroups {
    /// `EC2 tag keyhole-access-groups`.
    pub source: String,
    /// `false`: the instance has no such tag; its groups are set on the host.
    pub known: bool,
    pub groups: Vec<GroupFacts>,
    /// Names in the tag that are no valid access group name (the instance serves none of them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupFacts {
    pub name: String,
    /// In the index: without it nobody logs in through this group.
    pub published: bool,
    /// People with keys in its file.
    pub people: usize,
    /// The agent's keys in its file, each with its person and chain.
    pub your_keys: Vec<Access>,
    /// What grants this group: from the policy when given, else the file's `via` lines.
    pub granted_by: Vec<Grant>,
    /// `policy FILE` or `group file`.
    pub granted_by_source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    pub fingerprint: String,
    pub user: String,
    pub via: Vec<String>,
}

/// One way into an access group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Grant {
    /// `ad_group`, `user`, `everywhere_group` or `everywhere_user`.
    pub kind: &'static str,
    pub name: String,
    /// A time-limited entry's end (policy only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

impl Grant {
    fn describe(&self, group: &str) -> String {
        let until = self
            .until
            .as_ref()
            .map(|until| format!(" until {until}"))
            .unwrap_or_default();
        match self.kind {
            "ad_group" => format!("AD group \"{}\"{until}", self.name),
            "user" => format!("user {} named in [access_groups.{group}]{until}", self.name),
            "everywhere_group" => format!("AD group \"{}\" of [everywhere]{until}", self.name),
            _ => format!("user {} named in [everywhere]{until}", self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    /// The index lets one of the agent's keys in.
    Granted {
        access_group: String,
        user: String,
        fingerprint: String,
        via: Vec<String>,
    },
    /// None of the agent's keys is in the instance's access groups.
    NotGranted,
    /// Cannot be told from here (no agent keys, no access-groups tag).
    Unknown { reason: String },
}

/// Everything [`explain`] reasons from.
pub struct Inputs<'a> {
    pub instance: &'a Instance,
    pub login_user: &'a LoginUser,
    pub bastion: Result<&'a Bastion, &'a str>,
    pub access_groups_tag: &'a str,
    pub index: &'a Index,
    pub verified_with: Option<String>,
    /// The files of the instance's groups that the index lists.
    pub files: &'a BTreeMap<String, PublishedFile>,
    /// `Err`: why it could not be read.
    pub owners: Result<&'a Owners, String>,
    pub agent: Result<&'a [AgentKey], String>,
    /// With the file's name.
    pub policy: Option<(&'a Policy, &'a Path)>,
    pub key_policy: &'a KeyPolicy,
    pub now: SystemTime,
}

/// The answer, from what was read.
pub fn explain(inputs: &Inputs<'_>) -> Explanation {
    let index = inputs.index;
    let expired = index
        .not_after
        .as_deref()
        .and_then(|text| crate::bucket::signing::parse_time(text).ok())
        .is_some_and(|not_after| not_after < inputs.now);
    let index_facts = IndexFacts {
        generation: index.generation,
        not_after: index.not_after.clone(),
        expired,
        verified_with: inputs.verified_with.clone(),
        policy_commit: index.policy_commit.clone(),
    };

    let tag = inputs.instance.tags.get(inputs.access_groups_tag);
    let (names, invalid) =
        tag.map_or_else(Default::default, |value| host_groups::parse_list(value));
    let groups: Vec<GroupFacts> = names.iter().map(|name| group_facts(inputs, name)).collect();
    let host_groups = HostGroups {
        source: format!("EC2 tag {}", inputs.access_groups_tag),
        known: tag.is_some(),
        groups,
        invalid,
    };

    let agent_keys = inputs.agent.as_ref().map_or(&[][..], |keys| *keys);
    let keys: Vec<KeyFacts> = agent_keys
        .iter()
        .map(|key| key_facts(inputs, &host_groups, key))
        .collect();
    let agent = AgentFacts {
        problem: inputs.agent.as_ref().err().cloned(),
        keys,
    };

    let granted = host_groups.groups.iter().find_map(|group| {
        group.your_keys.first().map(|access| Verdict::Granted {
            access_group: group.name.clone(),
            user: access.user.clone(),
            fingerprint: access.fingerprint.clone(),
            via: access.via.clone(),
        })
    });
    let verdict = match granted {
        Some(granted) => granted,
        None if agent_keys.is_empty() => Verdict::Unknown {
            reason: "no keys from an SSH agent to compare".to_owned(),
        },
        None if !host_groups.known => Verdict::Unknown {
            reason: format!(
                "the instance has no {} tag: its access groups are set on the host",
                inputs.access_groups_tag
            ),
        },
        None => Verdict::NotGranted,
    };

    let notes = notes(inputs, &index_facts, &host_groups, &verdict);
    Explanation {
        instance: inputs.instance.clone(),
        login_user: inputs.login_user.clone(),
        bastion: inputs.bastion.ok().cloned(),
        bastion_problem: inputs.bastion.err().map(str::to_owned),
        index: index_facts,
        agent,
        access_groups: host_groups,
        verdict,
        notes,
    }
}

fn group_facts(inputs: &Inputs<'_>, name: &str) -> GroupFacts {
    let entry = inputs.index.groups.get(name);
    let file = inputs.files.get(name);
    let agent_keys = inputs.agent.as_ref().map_or(&[][..], |keys| *keys);
    let mut your_keys = Vec::new();
    if let Some(file) = file {
        for key in agent_keys {
            let holder = file
                .blocks
                .iter()
                .find(|block| block.fingerprints().any(|fp| fp == key.fingerprint));
            if let Some(block) = holder {
                your_keys.push(Access {
                    fingerprint: key.fingerprint.clone(),
                    user: block.user.clone(),
                    via: block.via.clone(),
                });
            }
        }
    }
    let (granted_by, granted_by_source) = match inputs.policy {
        Some((policy, path)) => (
            grants_in_policy(policy, name),
            format!("policy {}", path.display()),
        ),
        None => (
            file.map(grants_in_file).unwrap_or_default(),
            "group file".to_owned(),
        ),
    };
    GroupFacts {
        name: name.to_owned(),
        published: entry.is_some(),
        people: entry.map_or(0, |entry| entry.users),
        your_keys,
        granted_by,
        granted_by_source,
    }
}

/// What the policy says grants `group`: its own users and groups, then `[everywhere]`'s.
fn grants_in_policy(policy: &Policy, group: &str) -> Vec<Grant> {
    let mut grants = Vec::new();
    let mut add = |principals: &crate::publisher::policy::Principals, group_kind, user_kind| {
        for name in &principals.groups {
            grants.push(Grant {
                kind: group_kind,
                name: name.clone(),
                until: principals.group_until(name).map(|u| u.text.clone()),
            });
        }
        for name in &principals.users {
            grants.push(Grant {
                kind: user_kind,
                name: name.clone(),
                until: principals.user_until(name).map(|u| u.text.clone()),
            });
        }
    };
    if let Some(access_group) = policy.access_groups.get(group) {
        add(&access_group.principals, "ad_group", "user");
    }
    add(&policy.everywhere, "everywhere_group", "everywhere_user");
    grants
}

/// What grants `file`'s people access, from their `# user via A > B` lines: the first group of
/// each chain is the one the policy names. Automation accounts are nobody's way in.
fn grants_in_file(file: &PublishedFile) -> Vec<Grant> {
    let mut grants = BTreeSet::new();
    for block in &file.blocks {
        if block.user.starts_with(AUTOMATION_PREFIX) {
            continue;
        }
        let grant = match block.via.as_slice() {
            [] => ("user", block.user.clone()),
            [everywhere] if everywhere == EVERYWHERE => ("everywhere_user", block.user.clone()),
            [everywhere, group, ..] if everywhere == EVERYWHERE => {
                ("everywhere_group", group.clone())
            }
            [group, ..] => ("ad_group", group.clone()),
        };
        grants.insert(Grant {
            kind: grant.0,
            name: grant.1,
            until: None,
        });
    }
    // AD groups first: they are what a person asks to join.
    let mut grants: Vec<Grant> = grants.into_iter().collect();
    grants.sort_by_key(|grant| (grant.kind != "ad_group", grant.kind, grant.name.clone()));
    grants
}

fn key_facts(inputs: &Inputs<'_>, host: &HostGroups, key: &AgentKey) -> KeyFacts {
    let in_access_groups: Vec<String> = host
        .groups
        .iter()
        .filter(|group| {
            group
                .your_keys
                .iter()
                .any(|a| a.fingerprint == key.fingerprint)
        })
        .map(|group| group.name.clone())
        .collect();
    let from_files = || {
        host.groups
            .iter()
            .flat_map(|group| &group.your_keys)
            .find(|access| access.fingerprint == key.fingerprint)
            .map(|access| access.user.clone())
    };
    let (published_for, owners_known) = match &inputs.owners {
        Ok(owners) => (owners.get(&key.fingerprint).cloned(), true),
        Err(_) => (from_files(), false),
    };
    let dropped = if published_for.is_none() && owners_known {
        why_not_published(inputs, key)
    } else {
        None
    };
    KeyFacts {
        fingerprint: key.fingerprint.clone(),
        comment: key.comment.clone(),
        published_for,
        owners_known,
        in_access_groups,
        dropped,
    }
}

/// The reasons a key is not published that can be checked from here: the policy's `[deny]` and
/// the `[keys]` rules. `None` when neither explains it.
fn why_not_published(inputs: &Inputs<'_>, key: &AgentKey) -> Option<String> {
    if let Some((policy, path)) = inputs.policy
        && policy
            .deny
            .fingerprints
            .iter()
            .any(|fp| fp == &key.fingerprint)
    {
        return Some(format!(
            "denied: {} lists it in [deny] fingerprints",
            path.display()
        ));
    }
    let parsed = keys::parse_authorized_keys(&key.line, inputs.key_policy);
    parsed
        .dropped
        .iter()
        .find(|dropped| dropped.reason.is_problem())
        .map(|dropped| format!("never published: {}", dropped.reason))
}

fn notes(
    inputs: &Inputs<'_>,
    index: &IndexFacts,
    host: &HostGroups,
    verdict: &Verdict,
) -> Vec<String> {
    let mut notes = Vec::new();
    if index.verified_with.is_none() {
        notes.push(
            "The index was NOT verified (no [ssh] verify_key): this answer is only as trustworthy as the bucket."
                .to_owned(),
        );
    }
    if index.expired {
        notes.push(format!(
            "The index expired at {}: instances refuse it and serve their cached copy until it is older than max_stale; the publisher must run (it re-signs even when nothing changed).",
            index.not_after.as_deref().unwrap_or("?")
        ));
    }
    for group in host.groups.iter().filter(|group| !group.published) {
        notes.push(format!(
            "Access group {} is not in the published index: nobody logs in through it (a typo in the tag, or a group the policy does not have).",
            group.name
        ));
    }
    let login = &inputs.login_user.name;
    match verdict {
        Verdict::Granted {
            access_group, user, ..
        } => notes.push(format!(
            "The index (generation {}) lets {user}'s key in through {access_group}. If the instance refused it anyway: it may not have fetched this index yet (an instance refreshes every cache_ttl, 5 minutes by default), its sshd may not ask keyhole, or it serves another login user than {login}. Whether it is up to date cannot be known from here: on the host, `sudo keyhole doctor` checks all three and `sudo keyhole refresh` fetches the index now.",
            index.generation
        )),
        Verdict::NotGranted => {
            let mut ways: Vec<String> = Vec::new();
            for group in host.groups.iter().filter(|group| group.published) {
                for grant in group.granted_by.iter().filter(|grant| grant.kind.ends_with("group")) {
                    ways.push(format!("{} (grants {})", grant.describe(&group.name), group.name));
                }
            }
            let source = host
                .groups
                .first()
                .map_or("", |group| group.granted_by_source.as_str());
            if ways.is_empty() {
                notes.push(format!(
                    "No AD group grants {} today ({source}): the access group's owners decide who gets in, in the policy's pull requests.",
                    names(host)
                ));
            } else {
                notes.push(format!(
                    "To log in, be a member of {}; or ask for your own entry in the policy. Access arrives with the next publish (its timer runs every few minutes) and the instance's next refresh.",
                    ways.join(" or ")
                ));
            }
            notes.push(format!(
                "The index is generation {}; whether the instance has fetched it cannot be known from here (on the host: `sudo keyhole doctor`).",
                index.generation
            ));
        }
        Verdict::Unknown { .. } => {}
    }
    notes
}

fn names(host: &HostGroups) -> String {
    host.groups
        .iter()
        .map(|group| group.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Explanation {
    /// The plain-words rendering.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let instance = &self.instance;
        let _ = writeln!(
            out,
            "{} at {} in {}, as {} ({})",
            instance.label(),
            instance
                .private_ip
                .as_deref()
                .unwrap_or("no private address"),
            instance.zone.as_deref().unwrap_or("an unknown zone"),
            self.login_user.name,
            self.login_user.source
        );
        match (&self.bastion, &self.bastion_problem) {
            (Some(bastion), _) => {
                let _ = writeln!(
                    out,
                    "through the bastion {} ([ssh.bastions] \"{}\", its {})",
                    bastion.host, bastion.key, bastion.matched
                );
            }
            (None, Some(problem)) => {
                let _ = writeln!(out, "no bastion: {problem}");
            }
            (None, None) => {}
        }
        let verified = match &self.index.verified_with {
            Some(source) => format!("signature verified with {source}"),
            None => "NOT VERIFIED".to_owned(),
        };
        let _ = writeln!(
            out,
            "published index: generation {}, {verified}{}",
            self.index.generation,
            self.index
                .not_after
                .as_deref()
                .map(|t| format!(
                    ", valid until {t}{}",
                    if self.index.expired { " (EXPIRED)" } else { "" }
                ))
                .unwrap_or_default()
        );

        let _ = writeln!(out);
        match &self.agent.problem {
            Some(problem) => {
                let _ = writeln!(out, "Your keys: unknown ({problem})");
            }
            None => {
                let _ = writeln!(out, "Your agent's keys:");
            }
        }
        for key in &self.agent.keys {
            let comment = key
                .comment
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            let published = match (&key.published_for, key.owners_known, &key.dropped) {
                (Some(user), _, _) => format!("published for {user}"),
                (None, true, Some(dropped)) => format!("not published: {dropped}"),
                (None, true, None) => "not published by keyhole (is it in your home's ~/.ssh/authorized_keys? are you in an access group, with an enabled AD account? `keyhole plan` on the publisher names the reason)".to_owned(),
                (None, false, _) => "not in this instance's access groups (who it is published for is not known: the owners object could not be read)".to_owned(),
            };
            let here = if key.in_access_groups.is_empty() {
                "; in none of this instance's access groups".to_owned()
            } else {
                format!("; in {}", key.in_access_groups.join(", "))
            };
            let _ = writeln!(out, "  {}{comment}: {published}{here}", key.fingerprint);
        }

        let _ = writeln!(out);
        let host = &self.access_groups;
        if host.known {
            let _ = writeln!(
                out,
                "The instance's access groups ({}): {}",
                host.source,
                if host.groups.is_empty() {
                    "none".to_owned()
                } else {
                    names(host)
                }
            );
        } else {
            let _ = writeln!(
                out,
                "The instance's access groups: unknown (it has no {}; they are set on the host: [instance] access_groups or its user data)",
                host.source
            );
        }
        if !host.invalid.is_empty() {
            let _ = writeln!(
                out,
                "  not valid access group names (ignored by the instance): {}",
                host.invalid.join(", ")
            );
        }
        for group in &host.groups {
            if !group.published {
                let _ = writeln!(out, "  {}: NOT PUBLISHED", group.name);
                continue;
            }
            let yours = if group.your_keys.is_empty() {
                "none of your keys is in it".to_owned()
            } else {
                group
                    .your_keys
                    .iter()
                    .map(|access| {
                        let via = if access.via.is_empty() {
                            "named directly".to_owned()
                        } else {
                            format!("via {}", access.via.join(VIA_SEPARATOR))
                        };
                        format!(
                            "{} is in it for {} ({via})",
                            access.fingerprint, access.user
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let _ = writeln!(
                out,
                "  {}: {} {}; {yours}",
                group.name,
                group.people,
                if group.people == 1 {
                    "person"
                } else {
                    "people"
                }
            );
            if !group.granted_by.is_empty() {
                let grants: Vec<String> = group
                    .granted_by
                    .iter()
                    .map(|g| g.describe(&group.name))
                    .collect();
                let _ = writeln!(
                    out,
                    "    granted by ({}): {}",
                    group.granted_by_source,
                    grants.join(", ")
                );
            }
        }

        let _ = writeln!(out);
        let verdict = match &self.verdict {
            Verdict::Granted {
                access_group,
                user,
                fingerprint,
                ..
            } => format!(
                "Verdict: the published index lets you in: {fingerprint} ({user}) through {access_group}."
            ),
            Verdict::NotGranted => format!(
                "Verdict: none of your keys may log in to {}: they are not in {}.",
                instance.label(),
                names(host)
            ),
            Verdict::Unknown { reason } => format!("Verdict: cannot tell ({reason})."),
        };
        let _ = writeln!(out, "{verdict}");
        for note in &self.notes {
            let _ = writeln!(out, "{note}");
        }
        out
    }
}

/// What `--explain` reads besides the instance, the login user and the bastion.
pub struct Sources<'a> {
    pub settings: &'a Settings,
    pub access_groups_tag: &'a str,
    pub verify_key: Option<&'a str>,
    pub agent: Result<&'a [AgentKey], String>,
    pub policy: Option<&'a Path>,
}

/// Reads the bucket (and the policy) and explains.
pub async fn gather(
    sources: Sources<'_>,
    instance: &Instance,
    login_user: &LoginUser,
    bastion: Result<&Bastion, &str>,
) -> anyhow::Result<Explanation> {
    let settings = sources.settings;
    let s3 = settings
        .s3()
        .context("--explain reads the published index: it needs [s3] (bucket, prefix, region)")?;
    let (verifier, verified_with) = match sources.verify_key {
        Some(key) => (
            Some(Verifier::parse(key).context("[ssh] verify_key")?),
            Some("[ssh] verify_key".to_owned()),
        ),
        None => {
            let verifier = crate::bucket::published::verifier(settings)?;
            let source = verifier
                .as_ref()
                .map(|_| "the deployment's key ([instance] verify_key or [signing])".to_owned());
            (verifier, source)
        }
    };
    let policy = match sources.policy {
        Some(path) => Some(crate::publisher::policy::load(path)?.policy),
        None => None,
    };

    let deployment = Deployment::connect(s3, TIMEOUTS).await;
    let (store, layout) = (&deployment.store, &deployment.layout);
    // An expired index is still explained (instances serve their cache meanwhile, and the
    // answer says so); one every instance refuses for any other reason is not.
    let published = Published::for_reading(
        store,
        layout,
        &deployment.name,
        verifier.as_ref(),
        None,
        true,
    )
    .await?;

    let tag = instance.tags.get(sources.access_groups_tag);
    let (groups, _) = tag.map_or_else(Default::default, |value| host_groups::parse_list(value));
    let mut files = BTreeMap::new();
    for group in groups {
        if let Some(file) = published.file(store, layout, &group).await? {
            files.insert(group, file);
        }
    }
    let owners = published
        .owners(store, layout)
        .await
        .map_err(|error| format!("{error:#}"));
    if let Err(error) = &owners {
        tracing::info!(
            "the owners object cannot be read ({error}): who a key is published for is known only from this instance's group files"
        );
    }
    Ok(explain(&Inputs {
        instance,
        login_user,
        bastion,
        access_groups_tag: sources.access_groups_tag,
        index: &published.index,
        verified_with,
        files: &files,
        owners: owners.as_ref().map_err(Clone::clone),
        agent: sources.agent,
        policy: policy.as_ref().zip(sources.policy),
        key_policy: &settings.keys,
        now: SystemTime::now(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::index::IndexGroup;
    use crate::ssh::test_instance;
    use ssh_key::PrivateKey;
    use ssh_key::private::{Ed25519Keypair, KeypairData};

    /// A distinct Ed25519 key per seed, as the agent lists it.
    fn agent_key(seed: u8, comment: &str) -> AgentKey {
        let key = PrivateKey::new(
            KeypairData::from(Ed25519Keypair::from_seed(&[seed; 32])),
            comment,
        )
        .unwrap();
        let line = key.public_key().to_openssh().unwrap();
        crate::ssh::agent::parse(&line).remove(0)
    }

    struct World {
        instance: Instance,
        login_user: LoginUser,
        bastion: Bastion,
        index: Index,
        files: BTreeMap<String, PublishedFile>,
        owners: Owners,
        alice: AgentKey,
        bob: AgentKey,
    }

    fn world() -> World {
        let alice = agent_key(1, "alice@laptop");
        let bob = agent_key(2, "bob@laptop");
        let carol = agent_key(3, "carol");
        let dan = agent_key(4, "dan");
        let web = format!(
            "# keyhole access group web-prod: generated, do not edit\n# alice via Web Team > Web Contractors\n{}\n# carol\n{}\n# dan via everywhere > Linux Admins\n{}\n# automation:deploy via owner web-team\n{}\n",
            alice.line, carol.line, dan.line, carol.line
        );
        let mut instance = test_instance("i-0123456789abcdef0", "eu-west-1a");
        instance
            .tags
            .insert("keyhole-access-groups".into(), "web-prod".into());
        let group = |users| IndexGroup {
            sha256: "00".into(),
            users,
            keys: users,
            seal: None,
        };
        World {
            login_user: LoginUser {
                name: "ec2-user".into(),
                source: "[ssh] login_user".into(),
            },
            bastion: Bastion {
                host: "jump-a".into(),
                key: "eu-west-1a".into(),
                matched: "zone",
            },
            index: Index {
                generation: 7,
                not_after: Some("2030-01-01T00:00:00Z".into()),
                groups: BTreeMap::from([
                    ("web-prod".into(), group(3)),
                    ("db-prod".into(), group(1)),
                ]),
                ..Index::empty()
            },
            files: BTreeMap::from([("web-prod".into(), PublishedFile::parse(web.as_bytes()))]),
            owners: Owners::from([
                (alice.fingerprint.clone(), "alice".into()),
                (bob.fingerprint.clone(), "bob".into()),
                (carol.fingerprint.clone(), "carol".into()),
                (dan.fingerprint.clone(), "dan".into()),
            ]),
            instance,
            alice,
            bob,
        }
    }

    fn inputs<'a>(
        world: &'a World,
        agent: &'a [AgentKey],
        key_policy: &'a KeyPolicy,
    ) -> Inputs<'a> {
        Inputs {
            instance: &world.instance,
            login_user: &world.login_user,
            bastion: Ok(&world.bastion),
            access_groups_tag: "keyhole-access-groups",
            index: &world.index,
            verified_with: Some("[ssh] verify_key".into()),
            files: &world.files,
            owners: Ok(&world.owners),
            agent: Ok(agent),
            policy: None,
            key_policy,
            now: crate::bucket::signing::parse_time("2026-12-01T00:00:00Z").unwrap(),
        }
    }

    #[test]
    fn a_key_outside_the_instance_groups_is_told_what_would_grant_them() {
        let world = world();
        let policy = KeyPolicy::default();
        let agent = [world.bob.clone()];
        let explanation = explain(&inputs(&world, &agent, &policy));
        assert_eq!(explanation.verdict, Verdict::NotGranted);
        let key = &explanation.agent.keys[0];
        assert_eq!(key.published_for.as_deref(), Some("bob"));
        assert!(key.in_access_groups.is_empty());
        let group = &explanation.access_groups.groups[0];
        assert_eq!(group.name, "web-prod");
        assert_eq!(group.people, 3);
        // From the via lines: the first group of each chain; automation accounts are no way in.
        let grants: Vec<(&str, &str)> = group
            .granted_by
            .iter()
            .map(|g| (g.kind, g.name.as_str()))
            .collect();
        assert_eq!(
            grants,
            [
                ("ad_group", "Web Team"),
                ("everywhere_group", "Linux Admins"),
                ("user", "carol"),
            ]
        );
        let text = explanation.text();
        assert!(
            text.contains("To log in, be a member of AD group \"Web Team\" (grants web-prod) or AD group \"Linux Admins\" of [everywhere] (grants web-prod)"),
            "{text}"
        );
        assert!(
            text.contains("whether the instance has fetched it cannot be known from here"),
            "{text}"
        );
        assert!(text.contains("granted by (group file): AD group \"Web Team\", AD group \"Linux Admins\" of [everywhere], user carol named in [access_groups.web-prod]"), "{text}");
    }

    #[test]
    fn a_key_in_the_instance_groups_is_granted_with_its_chain() {
        let world = world();
        let policy = KeyPolicy::default();
        let agent = [world.bob.clone(), world.alice.clone()];
        let explanation = explain(&inputs(&world, &agent, &policy));
        assert_eq!(
            explanation.verdict,
            Verdict::Granted {
                access_group: "web-prod".into(),
                user: "alice".into(),
                fingerprint: world.alice.fingerprint.clone(),
                via: vec!["Web Team".into(), "Web Contractors".into()],
            }
        );
        let text = explanation.text();
        assert!(
            text.contains("is in it for alice (via Web Team > Web Contractors)"),
            "{text}"
        );
        assert!(
            text.contains("may not have fetched this index yet"),
            "{text}"
        );
    }

    #[test]
    fn without_the_owners_object_keys_are_named_from_the_instance_files_only() {
        let world = world();
        let policy = KeyPolicy::default();
        let agent = [world.bob.clone(), world.alice.clone()];
        let mut inputs = inputs(&world, &agent, &policy);
        inputs.owners = Err("AccessDenied".into());
        let explanation = explain(&inputs);
        let [bob, alice] = &explanation.agent.keys[..] else {
            panic!("{explanation:?}")
        };
        assert_eq!(
            (bob.published_for.as_deref(), bob.owners_known),
            (None, false)
        );
        assert_eq!(alice.published_for.as_deref(), Some("alice"));
        assert!(
            explanation
                .text()
                .contains("the owners object could not be read")
        );
    }

    #[test]
    fn an_unpublished_key_says_why_when_that_can_be_told_from_here() {
        let world = world();
        let stranger = agent_key(9, "stranger");
        let agent = [stranger.clone()];
        // The [keys] rules: a type the deployment does not allow.
        let only_rsa = KeyPolicy {
            allowed_types: ["ssh-rsa".to_owned()].into(),
            ..KeyPolicy::default()
        };
        let explanation = explain(&inputs(&world, &agent, &only_rsa));
        let dropped = explanation.agent.keys[0].dropped.as_deref().unwrap();
        assert!(
            dropped.starts_with(
                "never published: key type ssh-ed25519 is not in [keys] allowed_types"
            ),
            "{dropped}"
        );
        // The policy's [deny].
        let denying = crate::publisher::policy::parse(
            Path::new("access-groups.toml"),
            &format!("[access_groups.web-prod]\ngroups = [\"Web Team\"]\n[deny]\nfingerprints = [\"{}\"]\n", stranger.fingerprint),
        )
        .unwrap()
        .policy;
        let default = KeyPolicy::default();
        let mut inputs = inputs(&world, &agent, &default);
        inputs.policy = Some((&denying, Path::new("access-groups.toml")));
        let explanation = explain(&inputs);
        assert_eq!(
            explanation.agent.keys[0].dropped.as_deref(),
            Some("denied: access-groups.toml lists it in [deny] fingerprints")
        );
        // With the policy, its entries are the grants.
        assert_eq!(
            explanation.access_groups.groups[0].granted_by,
            [Grant {
                kind: "ad_group",
                name: "Web Team".into(),
                until: None
            }]
        );
        // Nothing checkable explains it: the generic answer.
        let explanation = explain(&self::inputs(&world, &agent, &default));
        assert_eq!(explanation.agent.keys[0].dropped, None);
        assert!(explanation.text().contains("not published by keyhole"));
    }

    #[test]
    fn what_cannot_be_known_is_said_so() {
        let mut world = world();
        let policy = KeyPolicy::default();
        let agent = [world.bob.clone()];
        // An expired index, a group the index does not have, an invalid name.
        world.instance.tags.insert(
            "keyhole-access-groups".into(),
            "web-prod, ops-prod, Bad Name".into(),
        );
        world.index.not_after = Some("2026-11-01T00:00:00Z".into());
        let explanation = explain(&inputs(&world, &agent, &policy));
        assert!(explanation.index.expired);
        let text = explanation.text();
        assert!(
            text.contains("The index expired at 2026-11-01T00:00:00Z"),
            "{text}"
        );
        assert!(text.contains("ops-prod: NOT PUBLISHED"), "{text}");
        assert!(
            text.contains("not valid access group names (ignored by the instance): Bad Name"),
            "{text}"
        );
        // No tag: the groups are on the host.
        world.instance.tags.clear();
        let explanation = explain(&inputs(&world, &agent, &policy));
        assert!(matches!(explanation.verdict, Verdict::Unknown { .. }));
        assert!(
            explanation
                .text()
                .contains("The instance's access groups: unknown")
        );
        // No agent keys: nothing to compare.
        let mut no_agent = inputs(&world, &[], &policy);
        no_agent.agent = Err("no SSH agent".into());
        no_agent.verified_with = None;
        let text = explain(&no_agent).text();
        assert!(text.contains("Your keys: unknown (no SSH agent)"), "{text}");
        assert!(text.contains("NOT VERIFIED"), "{text}");
    }
}
