//! Incremental directory reads: between two full reads, a run asks the DC only for the users and
//! groups that changed since the last run, and keeps everything else from the publisher's
//! directory state (a file beside the lock file).
//!
//! The method is Microsoft's "polling for changes using uSNChanged", which needs no right an
//! ordinary account lacks: each DC numbers its own writes (originating or replicated) with an
//! update sequence number; rootDSE's `highestCommittedUSN` is the latest, and every object's
//! `uSNChanged` the USN of its last write on that DC. A run reads `highestCommittedUSN` first,
//! then searches `(uSNChanged>=BOUND+1)` for users and groups (paged, with ranged members, as a
//! full read does), merges the answers into the state by `objectGUID`, and stores the value read
//! *before* the search as the next bound: a write that lands during the search is read again next
//! time, never lost. A group's `uSNChanged` moves when its members change, so a removal from a
//! group (nested or not) arrives with the group's new member list.
//!
//! USNs mean something only on the DC that issued them, so the state names the DC (the URL it
//! was reached at, its `dsServiceName` and `invocationId`); anything else means a full read:
//! another DC, a changed `invocationId` (the DC's database was restored), a USN lower than the
//! bound, a missing, unreadable, damaged (checksum), foreign (another deployment, base DN or bind
//! account) or other-version state, an OU or container changed since the bound (renaming or
//! moving one changes the DNs of everything inside without writing those objects), `--full`, and
//! `ldap.full_read_interval` (default 1 h) since the last full read: an ordinary account cannot
//! see deleted objects, so only a full read notices a deletion that changed no group.
//!
//! What is not a write in AD is not cached as a decision: `accountExpires` passing and a lockout
//! ending (`lockoutTime` + the domain's `lockoutDuration`, read every run) are judged by
//! `crate::publisher::resolve` at each run's `now` from the cached attributes. The users named directly in
//! the policy are looked up by name in every run where the DC's `highestCommittedUSN` moved, so
//! deleting one (or moving one out of the base) revokes them in the next run: a deletion is a
//! write, and every write on the DC moves its USN, so a run that finds the USN where the state
//! left it knows nothing changed and need not ask (at 50,000 people the 3,600 names cost the DC
//! a second a run).
//!
//! This module must never turn a doubt into a smaller directory: a state it cannot trust is
//! replaced by a full read, never used, and any LDAP failure fails the run as a full read would.
//! The state is written (temp file, fsync, rename, mode 0600) only by a run that holds the
//! publish lock; `plan` reads it and leaves it alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::ldap::{self, DcReading, DirectoryError, GROUP_FILTER, ReadStats, Session, USER_FILTER};
use super::model::{Dn, Group, Snapshot, User};
use crate::settings::LdapSettings;

/// The state file's name, in the lock file's directory.
pub const STATE_FILE: &str = "directory-state";

/// The first word of the state file.
const MAGIC: &str = "keyhole-directory-state";

/// The state format this keyhole reads and writes; any other means a full read.
pub const STATE_VERSION: u32 = 1;

/// Names looked up per search (a filter of a hundred `sAMAccountName=` terms is a few KB).
const NAMES_PER_LOOKUP: usize = 100;

/// Objects whose rename or move changes the DNs of what is inside them without writing those.
/// Group Policy containers are containers too, written at every GPO edit, and hold no users or
/// groups: left out, or each GPO edit would cost a full read.
const CONTAINERS: &str = "(|(objectClass=organizationalUnit)(&(objectClass=container)(!(objectClass=groupPolicyContainer))))";

/// Where the directory state lives: beside `lock_file`.
pub fn path_beside(lock_file: &Path) -> PathBuf {
    crate::private_file::beside(lock_file, STATE_FILE)
}

/// What a state was read for: a state written for anything else is foreign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// `s3://bucket/prefix`.
    pub deployment: String,
    /// `ldap.base_dn`, lower-cased.
    pub base_dn: String,
    /// Who binds (another account may be allowed to see other objects).
    pub bound_as: String,
}

/// The DC a state's USNs belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcSeen {
    pub url: String,
    pub service: String,
    pub invocation_id: String,
}

impl From<&DcReading> for DcSeen {
    fn from(dc: &DcReading) -> DcSeen {
        DcSeen {
            url: dc.url.clone(),
            service: dc.service.clone(),
            invocation_id: dc.invocation_id.clone(),
        }
    }
}

/// The cached directory: every user and group as of `usn` on `dc`, keyed by `objectGUID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryState {
    pub binding: Binding,
    pub dc: DcSeen,
    /// The DC's `highestCommittedUSN` read before the search that brought the state up to date.
    pub usn: u64,
    /// When the last full read started, in seconds since 1970 (the wall clock).
    pub full_read_at: u64,
    pub users: BTreeMap<String, User>,
    pub groups: BTreeMap<String, Group>,
}

/// What was found at the state's path.
#[derive(Debug)]
pub enum Loaded {
    State(Box<DirectoryState>),
    /// Why it cannot be used (the reason a full read gives).
    Unusable(String),
}

impl DirectoryState {
    /// The file's bytes: a header line `keyhole-directory-state VERSION SHA256` over the JSON
    /// body that follows it.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let body = serde_json::to_vec(self)?;
        let mut bytes = crate::private_file::checksummed(MAGIC, STATE_VERSION, &body).into_bytes();
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }

    /// The state in `bytes`, or why it cannot be trusted.
    pub fn decode(bytes: &[u8]) -> Result<DirectoryState, String> {
        let body =
            crate::private_file::checked_body(bytes, MAGIC, STATE_VERSION, "directory state")?;
        serde_json::from_slice(body).map_err(|error| format!("it is damaged ({error})"))
    }

    /// The state at `path`; never an error: what cannot be used only means a full read.
    pub fn load(path: &Path) -> Loaded {
        match fs::read(path) {
            Ok(bytes) => match DirectoryState::decode(&bytes) {
                Ok(state) => Loaded::State(Box::new(state)),
                Err(why) => {
                    Loaded::Unusable(format!("the directory state {}: {why}", path.display()))
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Loaded::Unusable(
                format!("there is no directory state yet ({})", path.display()),
            ),
            Err(error) => Loaded::Unusable(format!(
                "the directory state {} cannot be read: {error}",
                path.display()
            )),
        }
    }

    /// Writes `bytes` (see [`DirectoryState::encode`]) to `path` atomically, readable by its
    /// owner only: a crash leaves the old state or the new one, never half of either.
    pub fn store(bytes: &[u8], path: &Path) -> std::io::Result<()> {
        crate::private_file::write_atomically(path, &[bytes])
    }

    /// Merges changed entries into the cache. Entries are matched by `objectGUID`; an entry
    /// whose DN changed (renamed or moved) has the old DN replaced in every cached member list
    /// (AD does not write a group when a member is renamed), and a cached entry with the same
    /// name but another GUID is dropped (`sAMAccountName` is unique in a domain, so that one was
    /// deleted or renamed away).
    pub fn merge(&mut self, users: Vec<(String, User)>, groups: Vec<(String, Group)>) {
        let mut renamed: HashMap<Dn, Dn> = HashMap::new();
        for (guid, user) in &users {
            if let Some(old) = self.users.get(guid)
                && old.dn != user.dn
            {
                renamed.insert(old.dn.clone(), user.dn.clone());
            }
        }
        for (guid, group) in &groups {
            if let Some(old) = self.groups.get(guid)
                && old.dn != group.dn
            {
                renamed.insert(old.dn.clone(), group.dn.clone());
            }
        }
        if !renamed.is_empty() {
            for group in self.groups.values_mut() {
                for member in &mut group.members {
                    if let Some(new) = renamed.get(member) {
                        *member = new.clone();
                    }
                }
            }
        }
        let incoming: HashMap<String, &String> = users
            .iter()
            .map(|(guid, user)| (user.name.to_lowercase(), guid))
            .collect();
        self.users.retain(|guid, user| {
            incoming
                .get(&user.name.to_lowercase())
                .is_none_or(|new| *new == guid)
        });
        let incoming: HashMap<String, &String> = groups
            .iter()
            .map(|(guid, group)| (group.name.to_lowercase(), guid))
            .collect();
        self.groups.retain(|guid, group| {
            incoming
                .get(&group.name.to_lowercase())
                .is_none_or(|new| *new == guid)
        });
        self.users.extend(users);
        self.groups.extend(groups);
    }

    /// The answer to looking up `names` (the users the policy names directly): what was found
    /// replaces the cache's entry, and a name not found is no user any more (deleted, or moved
    /// out of the base), whatever the cache says.
    /// Returns whether the cache changed.
    pub fn settle_named(&mut self, names: &[String], found: Vec<(String, User)>) -> bool {
        let mut changed = found
            .iter()
            .any(|(guid, user)| self.users.get(guid) != Some(user));
        let found_names: HashSet<String> = found
            .iter()
            .map(|(_, user)| user.name.to_lowercase())
            .collect();
        let gone: HashSet<String> = names
            .iter()
            .map(|name| name.to_lowercase())
            .filter(|name| !found_names.contains(name))
            .collect();
        if !gone.is_empty() {
            let before = self.users.len();
            self.users
                .retain(|_, user| !gone.contains(&user.name.to_lowercase()));
            changed |= self.users.len() != before;
        }
        self.merge(found, Vec::new());
        changed
    }

    /// The snapshot the rest of the run resolves, in `objectGUID` order whichever kind of read
    /// made it (so an incremental and a full read of the same directory give the same input).
    pub fn into_snapshot(self, domain: super::model::Domain) -> Snapshot {
        Snapshot {
            domain: Some(domain),
            users: self.users.into_values().collect(),
            groups: self.groups.into_values().collect(),
        }
    }
}

/// Why a run may continue from `state`, or why it must read everything (the reason printed).
pub fn decide(
    loaded: Loaded,
    binding: &Binding,
    dc: &DcReading,
    interval: Duration,
    wall_clock: SystemTime,
) -> Result<Box<DirectoryState>, String> {
    let state = match loaded {
        Loaded::State(state) => state,
        Loaded::Unusable(why) => return Err(why),
    };
    if state.binding != *binding {
        return Err(
            "the directory state was written for another deployment, base DN or bind account"
                .into(),
        );
    }
    if state.dc.url != dc.url || state.dc.service != dc.service {
        return Err(format!(
            "another domain controller answered ({}; the state is from {}), and USNs are per DC",
            dc.url, state.dc.url
        ));
    }
    if state.dc.invocation_id != dc.invocation_id {
        return Err(format!(
            "the DC's invocationId changed ({} → {}): its database was restored, so its USNs \
             were reused",
            state.dc.invocation_id, dc.invocation_id
        ));
    }
    if dc.usn < state.usn {
        return Err(format!(
            "the DC's highestCommittedUSN went back ({} → {})",
            state.usn, dc.usn
        ));
    }
    let now = seconds(wall_clock);
    let since = now.checked_sub(state.full_read_at);
    match since {
        None => Err("the clock is earlier than the last full read".into()),
        Some(since) if since >= interval.as_secs() => Err(format!(
            "the last full read was {} ago (ldap.full_read_interval = {})",
            humantime::format_duration(Duration::from_secs(since)),
            humantime::format_duration(interval)
        )),
        Some(_) => Ok(state),
    }
}

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// How a run reads the directory.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    pub state_file: PathBuf,
    pub binding: Binding,
    /// `--full`.
    pub force_full: bool,
    pub full_read_interval: Duration,
    /// The wall clock (never `--now`: the schedule of full reads is not a judgement of access).
    pub wall_clock: SystemTime,
    /// The users the policy names directly, looked up every run.
    pub named_users: &'a [String],
    /// Write the state back: only a run that holds the publish lock does.
    pub keep_state: bool,
}

/// A directory read and what kind it was.
#[derive(Debug)]
pub struct DirectoryRead {
    pub snapshot: Snapshot,
    pub stats: ReadStats,
    pub full: bool,
    /// One line: which kind of read, from which DC, and why.
    pub summary: String,
}

/// Reads the directory from the first DC that accepts the bind: incrementally when the state
/// allows it, in full otherwise. Prints the one-line summary.
pub async fn read(
    settings: &LdapSettings,
    options: &Options<'_>,
) -> Result<DirectoryRead, DirectoryError> {
    let loaded = if options.force_full {
        Loaded::Unusable("--full was given".into())
    } else {
        DirectoryState::load(&options.state_file)
    };
    let mut session = ldap::connect(settings).await?;
    let result = read_with(&mut session, loaded, options).await;
    let stats = session.stats();
    session.close().await;
    let (state, domain, full, summary, dirty) = result?;
    if options.keep_state && dirty {
        match state.encode() {
            Ok(bytes) => {
                if let Err(error) = DirectoryState::store(&bytes, &options.state_file) {
                    // The old state (if any) is still consistent with its own bound: the next
                    // run reads from there, or in full.
                    tracing::warn!(
                        "could not write the directory state {}: {error}; the next run reads \
                         more than it needs to",
                        options.state_file.display()
                    );
                }
            }
            Err(error) => tracing::warn!("could not encode the directory state: {error}"),
        }
    }
    tracing::info!(
        kind = if full { "full" } else { "incremental" },
        users = state.users.len(),
        groups = state.groups.len(),
        searches = stats.searches,
        ranged_reads = stats.ranged_reads,
        dc_reads = stats.dc_reads,
        "{summary}"
    );
    Ok(DirectoryRead {
        snapshot: state.into_snapshot(domain),
        stats,
        full,
        summary,
    })
}

/// The state after this run, the domain, whether the read was full, the summary line, and
/// whether the state differs from the one on disk.
type Outcome = (
    Box<DirectoryState>,
    super::model::Domain,
    bool,
    String,
    bool,
);

async fn read_with(
    session: &mut Session<'_>,
    loaded: Loaded,
    options: &Options<'_>,
) -> Result<Outcome, DirectoryError> {
    let dc = session.read_dc().await?;
    let domain = session.read_domain().await?;
    let mut state = match decide(
        loaded,
        &options.binding,
        &dc,
        options.full_read_interval,
        options.wall_clock,
    ) {
        Ok(state) => state,
        Err(reason) => {
            let state = full_read(session, &dc, options).await?;
            return Ok(finish_full(state, domain, &dc, &reason));
        }
    };
    let since = state.usn;
    let mut dirty = false;
    let (mut changed_users, mut changed_groups) = (0, 0);
    if dc.usn > since {
        let after = since + 1;
        let containers = session
            .count(
                &format!("(&{CONTAINERS}(uSNChanged>={after}))"),
                "changed OUs and containers",
            )
            .await?;
        if containers > 0 {
            let reason = format!(
                "{containers} OU(s) or container(s) changed since USN {since} (a rename or move \
                 changes the DNs of what is inside without writing it)"
            );
            let state = full_read(session, &dc, options).await?;
            return Ok(finish_full(state, domain, &dc, &reason));
        }
        let users = session
            .read_users(
                &format!("(&{USER_FILTER}(uSNChanged>={after}))"),
                "changed users",
            )
            .await?;
        let groups = session
            .read_groups(
                &format!("(&{GROUP_FILTER}(uSNChanged>={after}))"),
                "changed groups",
            )
            .await?;
        (changed_users, changed_groups) = (users.len(), groups.len());
        state.merge(users, groups);
        state.usn = dc.usn;
        dirty = true;
    }
    // The users the policy names are looked up whenever anything at all changed on the DC: a
    // deletion is invisible to an ordinary account, but it is a write, so it moves
    // highestCommittedUSN. An unchanged USN means an unchanged directory, and the cache is exact.
    let named = if dc.usn > since {
        options.named_users
    } else {
        &[]
    };
    let mut found = Vec::new();
    for names in named.chunks(NAMES_PER_LOOKUP) {
        let terms: String = names
            .iter()
            .map(|name| format!("(sAMAccountName={})", ldap3::ldap_escape(name.as_str())))
            .collect();
        found.extend(
            session
                .read_users(
                    &format!("(&{USER_FILTER}(|{terms}))"),
                    "the users the policy names",
                )
                .await?,
        );
    }
    if !named.is_empty() {
        dirty |= state.settle_named(named, found);
    }
    let full_ago =
        Duration::from_secs(seconds(options.wall_clock).saturating_sub(state.full_read_at));
    let summary = format!(
        "directory: incremental read from {} (same DC and invocationId as the state, last full \
         read {} ago, ldap.full_read_interval = {}): {}, {} user(s) the policy names looked up",
        dc.url,
        humantime::format_duration(full_ago),
        humantime::format_duration(options.full_read_interval),
        if dc.usn > since {
            format!(
                "USN {since} → {}, {changed_users} user(s) and {changed_groups} group(s) changed",
                dc.usn
            )
        } else {
            format!("nothing changed since USN {since}")
        },
        named.len(),
    );
    Ok((state, domain, false, summary, dirty))
}

/// Every user and group, as a new state bound to this DC at the USN read before the search.
async fn full_read(
    session: &mut Session<'_>,
    dc: &DcReading,
    options: &Options<'_>,
) -> Result<Box<DirectoryState>, DirectoryError> {
    let users = session.read_users(USER_FILTER, "users").await?;
    let groups = session.read_groups(GROUP_FILTER, "groups").await?;
    Ok(Box::new(DirectoryState {
        binding: options.binding.clone(),
        dc: DcSeen::from(dc),
        usn: dc.usn,
        full_read_at: seconds(options.wall_clock),
        users: users.into_iter().collect(),
        groups: groups.into_iter().collect(),
    }))
}

fn finish_full(
    state: Box<DirectoryState>,
    domain: super::model::Domain,
    dc: &DcReading,
    reason: &str,
) -> Outcome {
    let summary = format!(
        "directory: full read from {} at USN {} because {reason}",
        dc.url, dc.usn
    );
    (state, domain, true, summary, true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::publisher::directory::model::FileTime;
    use sha2::{Digest as _, Sha256};

    fn user(name: &str, dn: &str) -> User {
        User {
            dn: Dn::new(dn),
            name: name.into(),
            sid: None,
            primary_group_id: None,
            account_control: 512,
            lockout_time: FileTime(0),
            account_expires: FileTime(0),
            uid_number: None,
            unix_home_directory: None,
        }
    }

    fn group(name: &str, members: &[&str]) -> Group {
        Group {
            dn: Dn::new(&format!("cn={name},cn=users,dc=x")),
            name: name.into(),
            sid: None,
            members: members.iter().map(|dn| Dn::new(dn)).collect(),
        }
    }

    fn binding() -> Binding {
        Binding {
            deployment: "s3://b/ssh/".into(),
            base_dn: "dc=x".into(),
            bound_as: "cn=svc".into(),
        }
    }

    fn dc(usn: u64) -> DcReading {
        DcReading {
            url: "ldaps://dc1".into(),
            service: "cn=ntds settings,cn=dc1".into(),
            invocation_id: "aa".repeat(16),
            usn,
        }
    }

    fn state() -> DirectoryState {
        DirectoryState {
            binding: binding(),
            dc: DcSeen::from(&dc(100)),
            usn: 100,
            full_read_at: 1_000_000,
            users: BTreeMap::from([
                ("g1".into(), user("bob", "cn=bob,cn=users,dc=x")),
                ("g2".into(), user("carol", "cn=carol,cn=users,dc=x")),
            ]),
            groups: BTreeMap::from([(
                "g9".into(),
                group("ops", &["cn=bob,cn=users,dc=x", "cn=carol,cn=users,dc=x"]),
            )]),
        }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn a_state_round_trips_and_anything_else_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("publish.lock"));
        assert_eq!(path, dir.path().join("directory-state"));
        let Loaded::Unusable(why) = DirectoryState::load(&path) else {
            panic!("a missing state loads")
        };
        assert!(why.contains("no directory state yet"), "{why}");
        let bytes = state().encode().unwrap();
        DirectoryState::store(&bytes, &path).unwrap();
        let Loaded::State(loaded) = DirectoryState::load(&path) else {
            panic!("the state does not load")
        };
        assert_eq!(*loaded, state());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("tmp").exists());

        let refused = |bytes: &[u8]| DirectoryState::decode(bytes).unwrap_err();
        // One byte changed in the body.
        let mut damaged = bytes.clone();
        let last = damaged.len() - 2;
        damaged[last] ^= 1;
        assert!(
            refused(&damaged).contains("checksum"),
            "{}",
            refused(&damaged)
        );
        // Another version (the checksum is right, the format is not this one's).
        let text = String::from_utf8(bytes.clone()).unwrap();
        let other = text.replacen(
            &format!("{MAGIC} {STATE_VERSION} "),
            &format!("{MAGIC} 0 "),
            1,
        );
        assert!(refused(other.as_bytes()).contains("format \"0\""));
        assert!(refused(b"{}\n").contains("not a keyhole directory state"));
        assert!(refused(b"").contains("no header line"));
        // A valid checksum over something that is not a state.
        let body = b"{\"users\": 1}";
        let forged = format!(
            "{MAGIC} {STATE_VERSION} {}\n",
            hex::encode(Sha256::digest(body))
        );
        assert!(refused(&[forged.as_bytes(), body].concat()).contains("damaged"));
    }

    #[test]
    fn only_the_same_dc_of_the_same_deployment_within_the_interval_continues() {
        let hour = Duration::from_secs(3600);
        let decide_with = |state: DirectoryState, dc: &DcReading, now: u64| {
            decide(
                Loaded::State(Box::new(state)),
                &binding(),
                dc,
                hour,
                at(now),
            )
        };
        assert!(decide_with(state(), &dc(150), 1_000_100).is_ok());
        assert!(decide_with(state(), &dc(100), 1_000_100).is_ok());
        let reason = |result: Result<Box<DirectoryState>, String>| result.unwrap_err();
        let mut other = dc(150);
        other.url = "ldaps://dc2".into();
        assert!(
            reason(decide_with(state(), &other, 1_000_100)).contains("another domain controller")
        );
        let mut other = dc(150);
        other.service = "cn=ntds settings,cn=dc2".into();
        assert!(
            reason(decide_with(state(), &other, 1_000_100)).contains("another domain controller")
        );
        let mut restored = dc(150);
        restored.invocation_id = "bb".repeat(16);
        assert!(
            reason(decide_with(state(), &restored, 1_000_100)).contains("invocationId changed")
        );
        assert!(reason(decide_with(state(), &dc(99), 1_000_100)).contains("went back"));
        assert!(reason(decide_with(state(), &dc(150), 1_003_600)).contains("full_read_interval"));
        assert!(reason(decide_with(state(), &dc(150), 999_999)).contains("clock"));
        let mut foreign = state();
        foreign.binding.deployment = "s3://other/ssh/".into();
        assert!(reason(decide_with(foreign, &dc(150), 1_000_100)).contains("another deployment"));
    }

    #[test]
    fn a_merge_follows_renames_and_drops_a_name_taken_by_another_object() {
        let mut cached = state();
        // carol moved to another OU: the group was not written, its member list follows her.
        cached.merge(
            vec![("g2".into(), user("carol", "cn=carol,ou=eng,dc=x"))],
            Vec::new(),
        );
        assert_eq!(
            cached.groups["g9"].members,
            [
                Dn::new("cn=bob,cn=users,dc=x"),
                Dn::new("cn=carol,ou=eng,dc=x")
            ]
        );
        // bob was deleted and a new bob created: only the new one is bob.
        cached.merge(
            vec![("g3".into(), user("Bob", "cn=bob2,cn=users,dc=x"))],
            Vec::new(),
        );
        assert!(!cached.users.contains_key("g1"));
        assert_eq!(cached.users["g3"].name, "Bob");
        // A group re-read with its new member list replaces the cached one.
        cached.merge(
            Vec::new(),
            vec![("g9".into(), group("ops", &["cn=bob2,cn=users,dc=x"]))],
        );
        assert_eq!(
            cached.groups["g9"].members,
            [Dn::new("cn=bob2,cn=users,dc=x")]
        );
    }

    #[test]
    fn a_named_user_not_found_is_gone_whatever_the_cache_says() {
        let mut cached = state();
        cached.settle_named(
            &["Carol".into(), "bob".into()],
            vec![("g1".into(), user("bob", "cn=bob,cn=users,dc=x"))],
        );
        assert_eq!(cached.users.keys().collect::<Vec<_>>(), ["g1"]);
        let snapshot = cached.into_snapshot(crate::publisher::directory::Domain {
            sid: crate::publisher::directory::Sid::from_bytes(&[1, 0, 0, 0, 0, 0, 0, 5]).unwrap(),
            lockout_duration: crate::publisher::directory::LockoutDuration::UntilUnlocked,
        });
        assert_eq!(snapshot.users.len(), 1);
        assert_eq!(snapshot.groups.len(), 1);
    }
}
