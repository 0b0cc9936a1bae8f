//! Reading only the homes that changed: the publisher's homes state, kept beside its lock file
//! (`{lock_file's dir}/homes-state`), remembers for each member the [`Identity`] of their `.ssh`
//! and `authorized_keys` when they were last read and the text read then. A run looks at every
//! member's home exactly as a full read does (the same `O_NOFOLLOW` opens, the same StrictModes
//! owner and mode checks of the home, `.ssh` and the file, the same per-user timeout and
//! `Unknown`, all in `homes`), and reads the file's text only when its identity is not the one
//! remembered. A full read (every text read again) runs every `homes.full_read_interval`, on
//! `--full`, and whenever the state is missing, damaged, of another version, written for another
//! deployment, or not this user's private file.
//!
//! Only a sound, plain `authorized_keys` whose text was read is remembered: a home that is
//! missing, has no keys, is rejected, is unknown, has a symlinked `authorized_keys` (its identity
//! would have to cover the whole walk), or was changed within [`homes::RACY_WINDOW`] of the run
//! is read again on every run.
//!
//! Each entry is a self-checking fact ("a file with this identity had this text"), so an older
//! state can cost a read but never give a wrong text; the state is still refused whole when its
//! checksum, version, deployment, owner or mode is wrong, since whoever can write it chooses the
//! texts. It must never be the only copy of anything: deleting it costs one full read.
//!
//! File format: one header line `keyhole-homes-state <version> <sha256 of the rest>`, then the
//! JSON body. Written with temp file + fsync + rename, mode 0600.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::publisher::homes::{self, HarvestOutcome, HarvestSettings, Harvestee, Identity, Look};

/// The state file's name, in the lock file's directory.
pub const STATE_FILE: &str = "homes-state";

/// The version of the state this keyhole reads and writes.
pub const VERSION: u32 = 1;

const MAGIC: &str = "keyhole-homes-state";

/// The largest state file read (a company of 50,000 people with a few keys each is ~40 MB).
const MAX_STATE_BYTES: u64 = 512 * 1024 * 1024;

/// Where the homes state lives: beside `lock_file`.
pub fn path_beside(lock_file: &Path) -> PathBuf {
    crate::private_file::beside(lock_file, STATE_FILE)
}

/// What the state records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// The deployment (`s3://bucket/prefix`) and `homes.root` it was written for.
    deployment: String,
    /// When the last full read started, in seconds since the epoch.
    full_read_at: u64,
    /// Per member whose text is remembered.
    homes: BTreeMap<String, Remembered>,
}

/// One member's remembered read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Remembered {
    home: PathBuf,
    /// The uid the files had to belong to.
    uid: u32,
    identity: Identity,
    text: String,
}

/// What a run is told about the state: where it is, what it is bound to, how often a full read
/// is due, whether one is forced, and the time the run started.
#[derive(Debug, Clone)]
pub struct Incremental {
    pub path: PathBuf,
    /// What the state is bound to: the deployment and `homes.root` (see [`binding`]).
    pub binding: String,
    pub full_read_interval: Duration,
    /// `--full`.
    pub force_full: bool,
    pub now: SystemTime,
}

/// The binding a state is written for: a state of another bucket, prefix or homes root is
/// refused.
pub fn binding(deployment: &str, root: &Path) -> String {
    format!("{deployment} homes.root={}", root.display())
}

/// Which kind of homes read a run made, and why: what the run prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Every member's text read.
    Full { why: String },
    /// Only the texts whose identity changed, or that were not remembered.
    Incremental { full_due_in: Duration },
}

/// What one run of the homes did, for its printed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub kind: Kind,
    /// Members whose home was looked at (not those settled without reading).
    pub members: usize,
    /// Of which, texts read because the remembered identity no longer matched.
    pub changed: usize,
    /// Of which, texts read (or outcomes found) with nothing remembered for them.
    pub not_remembered: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full { why } => write!(f, "homes: full read of {} ({why})", self.members),
            Kind::Incremental { full_due_in } => write!(
                f,
                "homes: {} of {} re-read ({} identity changed, {} not remembered), full read due \
                 in {}",
                self.changed + self.not_remembered,
                self.members,
                self.changed,
                self.not_remembered,
                humantime::format_duration(Duration::from_secs(full_due_in.as_secs()))
            ),
        }
    }
}

/// What a reader thread hands back: the outcome, the identity to remember it by, and whether the
/// text was read.
#[derive(Debug)]
struct Harvested {
    outcome: HarvestOutcome,
    remember: Option<Identity>,
    /// Nothing was remembered for this home (or a full read).
    unremembered: bool,
    /// The remembered identity matched: the text was not read.
    unchanged: bool,
}

impl From<HarvestOutcome> for Harvested {
    fn from(outcome: HarvestOutcome) -> Harvested {
        Harvested {
            outcome,
            remember: None,
            unremembered: true,
            unchanged: false,
        }
    }
}

/// Reads the members' `authorized_keys` as [`homes::harvest`] does, reading the text only of
/// those whose identity changed since the state remembered it (everything on a full read), and
/// writes the state of this run. A state that cannot be written costs the next run a full read
/// and is logged; it never fails the run.
pub async fn harvest(
    users: Vec<Harvestee>,
    settings: &HarvestSettings,
    incremental: &Incremental,
) -> (BTreeMap<String, HarvestOutcome>, Summary) {
    let loaded = load(&incremental.path, &incremental.binding);
    let (kind, previous) = decide(loaded, incremental);
    let full_read_at = match (&kind, &previous) {
        (Kind::Incremental { .. }, Some(state)) => state.full_read_at,
        _ => seconds(incremental.now),
    };
    // What each home is compared with: the identity remembered for that home and uid.
    let mut known: HashMap<(PathBuf, u32), (Identity, String)> = HashMap::new();
    if let (Kind::Incremental { .. }, Some(state)) = (&kind, previous.as_ref()) {
        for remembered in state.homes.values() {
            known.insert(
                (remembered.home.clone(), remembered.uid),
                (remembered.identity, remembered.text.clone()),
            );
        }
    }
    let homes_of: HashMap<String, (PathBuf, u32)> = users
        .iter()
        .filter_map(|user| {
            let home = user.home.as_ref().ok()?.clone();
            Some((user.user.clone(), (home, user.uid?)))
        })
        .collect();
    let members = homes_of.len();
    let known = Arc::new(known);
    let now = incremental.now;
    let reader = move |home: &Path, uid: u32| -> Harvested {
        let remembered = known.get(&(home.to_path_buf(), uid));
        match homes::look_at_authorized_keys(home, uid, remembered.map(|(id, _)| id), now) {
            Look::Unchanged(identity) => Harvested {
                outcome: HarvestOutcome::Keys(
                    remembered.map(|(_, text)| text.clone()).unwrap_or_default(),
                ),
                remember: Some(identity),
                unremembered: false,
                unchanged: true,
            },
            Look::Read { outcome, identity } => Harvested {
                remember: identity.filter(|_| matches!(outcome, HarvestOutcome::Keys(_))),
                outcome,
                unremembered: remembered.is_none(),
                unchanged: false,
            },
        }
    };
    let harvested = homes::harvest_with(users, settings, reader).await;

    let mut summary = Summary {
        kind,
        members,
        changed: 0,
        not_remembered: 0,
    };
    let mut next = State {
        deployment: incremental.binding.clone(),
        full_read_at,
        homes: BTreeMap::new(),
    };
    let mut outcomes = BTreeMap::new();
    for (user, harvested) in harvested {
        if homes_of.contains_key(&user) && !harvested.unchanged {
            if harvested.unremembered {
                summary.not_remembered += 1;
            } else {
                summary.changed += 1;
            }
        }
        if let (Some(identity), HarvestOutcome::Keys(text), Some((home, uid))) =
            (harvested.remember, &harvested.outcome, homes_of.get(&user))
        {
            next.homes.insert(
                user.clone(),
                Remembered {
                    home: home.clone(),
                    uid: *uid,
                    identity,
                    text: text.clone(),
                },
            );
        }
        outcomes.insert(user, harvested.outcome);
    }
    if previous.as_ref() != Some(&next)
        && let Err(error) = store(&incremental.path, &next)
    {
        tracing::warn!("{error:#}; the next run reads every home in full");
    }
    tracing::info!("{summary}");
    (outcomes, summary)
}

/// Whether this run is a full read, and the state to compare with when it is not.
fn decide(loaded: Loaded, incremental: &Incremental) -> (Kind, Option<State>) {
    let path = incremental.path.display();
    let interval = incremental.full_read_interval;
    let state = match loaded {
        Loaded::Missing => {
            let why = format!("no homes state yet at {path}");
            return (Kind::Full { why }, None);
        }
        Loaded::Unusable(why) => {
            tracing::warn!("the homes state {path} is not used: {why}");
            let why = format!("the homes state {path} is not used: {why}");
            return (Kind::Full { why }, None);
        }
        Loaded::Usable(state) => state,
    };
    if incremental.force_full {
        return (
            Kind::Full {
                why: "--full".to_owned(),
            },
            Some(state),
        );
    }
    let now = seconds(incremental.now);
    let Some(age) = now.checked_sub(state.full_read_at) else {
        let why = "the last full read is dated after this run's start (the clock went back)";
        return (
            Kind::Full {
                why: why.to_owned(),
            },
            Some(state),
        );
    };
    let age = Duration::from_secs(age);
    if age >= interval {
        let why = format!(
            "the last full read was {} ago; homes.full_read_interval is {}",
            humantime::format_duration(age),
            humantime::format_duration(interval)
        );
        return (Kind::Full { why }, Some(state));
    }
    (
        Kind::Incremental {
            full_due_in: interval - age,
        },
        Some(state),
    )
}

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What was found at the state's path.
#[derive(Debug)]
enum Loaded {
    Missing,
    /// There, but not to be trusted (why).
    Unusable(String),
    Usable(State),
}

/// Reads the state at `path`, refusing one that is not this user's private regular file, is of
/// another version, fails its checksum, does not parse, or was written for another `binding`.
fn load(path: &Path, binding: &str) -> Loaded {
    match crate::private_file::read_private(path, MAX_STATE_BYTES) {
        Ok(bytes) => match parse(&bytes, binding) {
            Ok(state) => Loaded::Usable(state),
            Err(why) => Loaded::Unusable(why),
        },
        Err(crate::private_file::Unread::Missing) => Loaded::Missing,
        Err(crate::private_file::Unread::Refused(why)) => Loaded::Unusable(why),
    }
}

/// The header, checksum, version, body and binding of a state file's bytes.
fn parse(bytes: &[u8], binding: &str) -> Result<State, String> {
    let body = crate::private_file::checked_body(bytes, MAGIC, VERSION, "homes state")?;
    let state: State =
        serde_json::from_slice(body).map_err(|error| format!("it does not parse: {error}"))?;
    if state.deployment != binding {
        return Err(format!(
            "it was written for {:?}, not {binding:?}",
            state.deployment
        ));
    }
    Ok(state)
}

/// Writes `state` to `path` atomically, readable by its owner only (`crate::private_file`).
fn store(path: &Path, state: &State) -> anyhow::Result<()> {
    let write = || -> std::io::Result<()> {
        let body = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        let header = crate::private_file::checksummed(MAGIC, VERSION, &body);
        crate::private_file::write_atomically(path, &[header.as_bytes(), &body])
    };
    write().map_err(|error| {
        anyhow::Error::new(error).context(format!("writing the homes state {}", path.display()))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::digest::sha256_hex;
    use std::fs;
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::fs::PermissionsExt as _;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bob@laptop\n";
    const BINDING: &str = "s3://bucket/ssh/ homes.root=/nfs/home";

    /// A home for the current user (the tests may not run as root) with a sound `.ssh`.
    struct Home {
        dir: tempfile::TempDir,
        uid: u32,
    }

    impl Home {
        fn new() -> Home {
            let dir = tempfile::tempdir().unwrap();
            let home = dir.path().join("bob");
            fs::create_dir_all(home.join(".ssh")).unwrap();
            fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
            fs::set_permissions(home.join(".ssh"), fs::Permissions::from_mode(0o700)).unwrap();
            let uid = fs::metadata(&home).unwrap().uid();
            let home = Home { dir, uid };
            home.write(KEY);
            home
        }

        fn home(&self) -> PathBuf {
            self.dir.path().join("bob")
        }

        fn write(&self, text: &str) {
            let file = self.home().join(".ssh/authorized_keys");
            fs::write(&file, text).unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        }

        fn harvestee(&self) -> Harvestee {
            Harvestee {
                user: "bob".into(),
                uid: Some(self.uid),
                home: Ok(self.home()),
            }
        }

        fn incremental(&self, now: SystemTime, force_full: bool) -> Incremental {
            Incremental {
                path: self.dir.path().join(STATE_FILE),
                binding: BINDING.to_owned(),
                full_read_interval: Duration::from_secs(3_600),
                force_full,
                now,
            }
        }

        async fn run(&self, now: SystemTime, force_full: bool) -> (HarvestOutcome, Summary) {
            let settings = HarvestSettings {
                concurrency: 2,
                read_timeout: Duration::from_secs(5),
            };
            let (mut outcomes, summary) = harvest(
                vec![self.harvestee()],
                &settings,
                &self.incremental(now, force_full),
            )
            .await;
            (outcomes.remove("bob").unwrap(), summary)
        }
    }

    /// Past the racy window of anything the test just wrote.
    fn later(seconds: u64) -> SystemTime {
        SystemTime::now() + homes::RACY_WINDOW + Duration::from_secs(seconds)
    }

    #[tokio::test]
    async fn an_unchanged_home_is_not_read_and_a_changed_one_is() {
        let home = Home::new();
        let (outcome, summary) = home.run(later(0), false).await;
        assert_eq!(outcome, HarvestOutcome::Keys(KEY.to_owned()));
        assert!(matches!(summary.kind, Kind::Full { .. }), "{summary}");
        let mode = fs::metadata(home.dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let (outcome, summary) = home.run(later(1), false).await;
        assert_eq!(outcome, HarvestOutcome::Keys(KEY.to_owned()));
        assert_eq!(
            (summary.changed, summary.not_remembered),
            (0, 0),
            "{summary}"
        );
        assert!(summary.to_string().starts_with("homes: 0 of 1 re-read"));

        home.write("ssh-ed25519 AAAA changed\n");
        let (outcome, summary) = home.run(later(2), false).await;
        assert_eq!(
            outcome,
            HarvestOutcome::Keys("ssh-ed25519 AAAA changed\n".to_owned())
        );
        assert_eq!(summary.changed, 1, "{summary}");
    }

    #[tokio::test]
    async fn a_group_writable_ssh_is_rejected_although_its_file_did_not_change() {
        let home = Home::new();
        home.run(later(0), false).await;
        fs::set_permissions(home.home().join(".ssh"), fs::Permissions::from_mode(0o770)).unwrap();
        let (outcome, summary) = home.run(later(1), false).await;
        assert!(
            matches!(
                outcome,
                HarvestOutcome::Rejected(homes::Rejection::Writable { .. })
            ),
            "{outcome:?}"
        );
        assert!(matches!(summary.kind, Kind::Incremental { .. }));
        // A home made group-writable, likewise.
        fs::set_permissions(home.home().join(".ssh"), fs::Permissions::from_mode(0o700)).unwrap();
        home.run(later(2), false).await;
        fs::set_permissions(home.home(), fs::Permissions::from_mode(0o775)).unwrap();
        let (outcome, _) = home.run(later(3), false).await;
        assert!(
            matches!(outcome, HarvestOutcome::Rejected(_)),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_damaged_foreign_or_old_state_means_a_full_read() {
        let home = Home::new();
        let path = home.dir.path().join(STATE_FILE);
        home.run(later(0), false).await;
        let good = fs::read(&path).unwrap();

        let full = |summary: &Summary, wanted: &str| match &summary.kind {
            Kind::Full { why } => assert!(why.contains(wanted), "{why}"),
            other => panic!("expected a full read, got {other:?}"),
        };
        // Damaged: one byte of the body flipped.
        let mut damaged = good.clone();
        let last = damaged.len() - 2;
        damaged[last] ^= 0x01;
        fs::write(&path, &damaged).unwrap();
        full(&home.run(later(1), false).await.1, "checksum");
        // Another version.
        let text = String::from_utf8(good.clone()).unwrap();
        fs::write(&path, text.replacen(" 1 ", " 0 ", 1)).unwrap();
        full(&home.run(later(2), false).await.1, "format \"0\"");
        // Another deployment, checksum recomputed.
        let (_, body) = text.split_once('\n').unwrap();
        let foreign = body.replace("s3://bucket/", "s3://other/");
        fs::write(
            &path,
            format!(
                "{MAGIC} {VERSION} {}\n{foreign}",
                sha256_hex(foreign.as_bytes())
            ),
        )
        .unwrap();
        full(&home.run(later(3), false).await.1, "written for");
        // Readable by others.
        fs::write(&path, &good).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        full(&home.run(later(4), false).await.1, "mode 0644");
        // --full, and the interval passed.
        full(&home.run(later(5), true).await.1, "--full");
        full(
            &home.run(later(3_700), false).await.1,
            "homes.full_read_interval",
        );
        // Each full read rewrote a good state: the next run is incremental.
        let (_, summary) = home.run(later(3_701), false).await;
        assert!(
            matches!(summary.kind, Kind::Incremental { .. }),
            "{summary}"
        );
    }

    /// `cargo test --lib homes_state::tests::measure -- --ignored --nocapture`: the homes phase
    /// for 10,000 homes on this machine's disk, full and incremental.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a measurement, not a test"]
    async fn measure_ten_thousand_homes() {
        let dir = tempfile::tempdir().unwrap();
        let uid = fs::metadata(dir.path()).unwrap().uid();
        let users: Vec<Harvestee> = (0..10_000)
            .map(|i| {
                let home = dir.path().join(format!("user{i:05}"));
                fs::create_dir_all(home.join(".ssh")).unwrap();
                fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
                fs::set_permissions(home.join(".ssh"), fs::Permissions::from_mode(0o700)).unwrap();
                let file = home.join(".ssh/authorized_keys");
                fs::write(&file, KEY.repeat(2)).unwrap();
                fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
                Harvestee {
                    user: format!("user{i:05}"),
                    uid: Some(uid),
                    home: Ok(home),
                }
            })
            .collect();
        let settings = HarvestSettings {
            concurrency: 32,
            read_timeout: Duration::from_secs(5),
        };
        let started = std::time::Instant::now();
        let read = homes::harvest(users.clone(), &settings).await;
        eprintln!("plain harvest: {:?} for {}", started.elapsed(), read.len());
        for (what, force_full) in [("full", true), ("incremental", false), ("again", false)] {
            let incremental = Incremental {
                path: dir.path().join(STATE_FILE),
                binding: BINDING.to_owned(),
                full_read_interval: Duration::from_secs(3_600),
                force_full,
                now: later(0),
            };
            let started = std::time::Instant::now();
            let (outcomes, summary) = harvest(users.clone(), &settings, &incremental).await;
            eprintln!(
                "{what}: {:?} for {} ({summary})",
                started.elapsed(),
                outcomes.len()
            );
        }
        let path = dir.path().join(STATE_FILE);
        let started = std::time::Instant::now();
        let Loaded::Usable(state) = load(&path, BINDING) else {
            panic!("no state")
        };
        let loaded = started.elapsed();
        let started = std::time::Instant::now();
        store(&path, &state).unwrap();
        eprintln!(
            "state of {} bytes: load {loaded:?}, store {:?}",
            fs::metadata(&path).unwrap().len(),
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_file_changed_just_before_the_run_is_read_again_next_time() {
        let home = Home::new();
        // The run starts right after the write: the identity is racy, nothing is remembered.
        home.run(SystemTime::now(), false).await;
        let (_, summary) = home.run(later(0), false).await;
        assert_eq!(summary.not_remembered, 1, "{summary}");
        let (_, summary) = home.run(later(1), false).await;
        assert_eq!(summary.not_remembered + summary.changed, 0, "{summary}");
    }
}
