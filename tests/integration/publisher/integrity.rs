//! Revocation integrity, round two (issue 23): nothing in the bucket can roll the publisher back,
//! wedge it, or bring a deleted key back. Each test reproduces attacks from the second security
//! review against the built binary, a real Samba AD DC and s3s-fs, with `[signing]` on as in
//! production, and checks what the publisher does, what `verify` and `whois` say, and what an
//! instance then serves. The README's trust-model table names the test of each row.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::support::homes::Key;
use crate::support::keyhole::{Run, run_keyhole};
use crate::support::samba::{Fixture, LOCKOUT_THRESHOLD, SERVICE_ACCOUNT, SambaDc, UserSpec};
use crate::support::sshd::Sshd;
use crate::support::stack::{Extra, Stack};
use keyhole::bucket::index::{Index, IndexGroup, LEGACY_FORMAT, Layout};
use keyhole::bucket::signing::{self, Signer};
use keyhole::digest::sha256_hex;

const PEOPLE: &[(&str, u32)] = &[
    ("alice", 20001),
    ("bob", 20002),
    ("carol", 20003),
    ("dave", 20004),
    ("erin", 20005),
];

const POLICY: &str = r#"
[access_groups.web-prod]
groups = ["Web Team"]

[access_groups.db-prod]
users = ["bob"]
"#;

const DAY: Duration = Duration::from_secs(86_400);

fn company() -> Fixture {
    let mut fixture = Fixture::new();
    for (name, uid) in PEOPLE {
        fixture = fixture.user(UserSpec::unix(name, *uid, &format!("/home/{name}")));
    }
    fixture.group("Web Team", &["alice", "bob", "carol", "dave", "erin"])
}

/// A signed deployment with one key per person, published once, and an instance of web-prod.
struct World {
    stack: Stack,
    keys: BTreeMap<&'static str, Key>,
    signing_key: PathBuf,
    verify_key: String,
    instance: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World::with(|world| world.settings("", ""))
    }

    /// A world whose publisher's settings `write` writes before the first publish.
    fn with(write: impl Fn(&World)) -> World {
        let stack = Stack::start(&company(), POLICY);
        let (signing_key, verify_key) = stack.publisher.signing_key();
        let world = World {
            keys: stack.give_keys(PEOPLE),
            stack,
            signing_key,
            verify_key,
            instance: tempfile::tempdir().unwrap(),
        };
        write(&world);
        let first = world.run(&["publish"]);
        assert_eq!(first.code, 0, "{first:#?}");
        world
    }

    /// The publisher's settings: `[signing]` (validity 7 days), plus `safety` lines and `more`
    /// whole sections.
    fn settings(&self, safety: &str, more: &str) {
        self.settings_valid_for("7d", safety, more);
    }

    fn settings_valid_for(&self, validity: &str, safety: &str, more: &str) {
        let sections = format!(
            "\n[signing]\nkey_file = \"{}\"\nvalidity = \"{validity}\"\n{more}",
            self.signing_key.display()
        );
        self.stack.write_settings(Extra {
            safety,
            sections: &sections,
            ..Extra::default()
        });
    }

    fn run(&self, args: &[&str]) -> Run {
        self.stack.run(args)
    }

    /// A run with extra environment variables (settings overrides such as
    /// `KEYHOLE_HOMES_MAX_CARRY`).
    fn run_with(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut all = self.stack.publisher.env.clone();
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        run_keyhole(&self.stack.publisher.config(), args, &all)
    }

    fn index_bytes(&self) -> String {
        self.stack.s3.object("ssh/index.json").expect("an index")
    }

    fn index(&self) -> Index {
        Index::open(self.index_bytes().as_bytes(), None).unwrap()
    }

    fn signer(&self) -> Signer {
        Signer::load(&self.signing_key).unwrap()
    }

    /// Puts `index`, sealed with the publisher's own key, in the bucket (what a bucket writer
    /// can do with any index the publisher once signed).
    fn put_signed(&self, index: &Index) -> String {
        let sealed = String::from_utf8(index.seal(Some(&self.signer())).unwrap()).unwrap();
        self.stack.s3.put_object("ssh/index.json", &sealed);
        sealed
    }

    fn head(&self) -> PathBuf {
        self.stack.publisher.path("head.json")
    }

    fn uid(user: &str) -> u32 {
        PEOPLE.iter().find(|(name, _)| *name == user).unwrap().1
    }

    fn write_keys(&self, user: &str, lines: &[&str]) {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        self.stack.homes.write(user, Self::uid(user), &text);
    }

    fn disable(&self, user: &str) {
        self.stack.dc.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
            self.stack.dc.user_dn(user)
        ));
    }

    /// Makes `user`'s home fail to open with an I/O error (as `tests/revocation.rs` does).
    fn break_home(&self, user: &str) {
        let home = self.stack.homes.home(user);
        std::fs::rename(&home, self.stack.homes.root().join(format!("{user}.real"))).unwrap();
        std::os::unix::fs::symlink(self.stack.homes.root().join("n".repeat(300)), &home).unwrap();
    }

    fn instance_config(&self) -> PathBuf {
        let config = self.instance.path().join("keyhole.toml");
        std::fs::write(
            &config,
            format!(
                "{}\n[instance]\nlogin_user = \"ec2-user\"\naccess_groups = [\"web-prod\"]\ncache_dir = \"{}\"\ncache_ttl = \"1ms\"\nmax_stale = \"1h\"\nfetch_timeout = \"5s\"\nverify_key = \"{}\"\n",
                self.stack.s3.settings("ssh/"),
                self.instance.path().join("cache").display(),
                self.verify_key
            ),
        )
        .unwrap();
        config
    }

    fn on_instance(&self, args: &[&str]) -> Run {
        run_keyhole(&self.instance_config(), args, &self.stack.s3.env())
    }

    /// What the instance serves sshd after a refresh that must succeed.
    fn served(&self) -> String {
        let refresh = self.on_instance(&["refresh"]);
        assert_eq!(refresh.code, 0, "{refresh:#?}");
        self.serving()
    }

    /// What the instance serves from its cache, without refreshing.
    fn serving(&self) -> String {
        let served = self.on_instance(&["authorized-keys", "ec2-user"]);
        assert_eq!(served.code, 0, "{served:#?}");
        served.stdout
    }

    fn line(&self, user: &str) -> &str {
        &self.keys[user].line
    }

    fn object_of(&self, group: &str) -> String {
        let index = self.index();
        let layout = Layout {
            prefix: "ssh/".into(),
        };
        layout.group(&index, group, &index.groups[group].sha256)
    }

    fn owners_object(&self) -> String {
        Layout {
            prefix: "ssh/".into(),
        }
        .owners(self.index().owners.as_deref().unwrap())
    }
}

/// Item 1: a bucket writer puts back an older, validly signed index (its objects are still
/// there: the previous generation's are kept). With a member's home unreadable, the old code
/// published `old + 1` from it, carrying back a key its owner had deleted; warm instances refused
/// that as a fork and revocations stopped. Now the publisher's head refuses it, naming both;
/// `verify` and `whois` on the publisher host refuse it too; the operator's way out is explicit
/// and carries nothing out of the replayed index.
#[test]
fn a_replayed_index_never_becomes_the_base_of_a_publish() {
    let world = World::new();
    let second = world.stack.homes.key("carol-laptop", "ed25519");
    world.write_keys("carol", &[world.line("carol"), &second.line]);
    assert_eq!(world.run(&["publish"]).code, 0);
    let replayed = world.index_bytes();
    assert_eq!(world.index().generation, 2);
    // Carol deletes her second key; the next index names the one it replaces.
    world.write_keys("carol", &[world.line("carol")]);
    assert_eq!(world.run(&["publish"]).code, 0);
    let current = world.index();
    assert_eq!(current.generation, 3);
    assert_eq!(
        current.previous.as_deref(),
        Some(sha256_hex(replayed.as_bytes()).as_str())
    );
    assert!(!world.served().contains(&second.line));
    let head: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(world.head()).unwrap()).unwrap();
    assert_eq!(head["generation"], 3);
    assert_eq!(head["sha256"], sha256_hex(world.index_bytes().as_bytes()));

    // The attack: generation 2 put back, carol's home unreadable, dave disabled meanwhile.
    world.stack.s3.put_object("ssh/index.json", &replayed);
    world.break_home("carol");
    world.disable("dave");
    let refused = world.run(&["publish"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("generation 2 is older than generation 3 of this publisher's head")
            && refused.stderr.contains("--accept-index"),
        "{}",
        refused.stderr
    );
    assert_eq!(world.index_bytes(), replayed, "nothing was committed");
    // Every reader that knows better refuses it: the warm instance, verify and whois here.
    let refresh = world.on_instance(&["refresh"]);
    assert_ne!(refresh.code, 0, "{refresh:#?}");
    assert!(!world.serving().contains(&second.line));
    let verify = world.run(&["verify"]);
    assert_eq!(verify.code, 1, "{verify:#?}");
    assert!(
        verify.stdout.contains("index_untrusted"),
        "{}",
        verify.stdout
    );
    let whois = world.run(&["whois", &world.keys["bob"].fingerprint]);
    assert_eq!(whois.code, 1, "{whois:#?}");
    assert!(whois.stderr.contains("older than"), "{}", whois.stderr);

    // The same generation as the head with other bytes (a replayed generation) is refused too.
    let mut fork = Index::open(replayed.as_bytes(), None).unwrap();
    fork.generation = 3;
    let forked = world.put_signed(&fork);
    let refused = world.run(&["publish"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(
        refused.stderr.contains("holds generation 3 with SHA-256"),
        "{}",
        refused.stderr
    );

    // The way out is explicit, logged, and carries nothing out of the index it accepts.
    let wrong = world.run(&["publish", "--accept-index", &"0".repeat(64)]);
    assert_eq!(wrong.code, 1, "{wrong:#?}");
    let sha = sha256_hex(forked.as_bytes());
    // (--force: carol, whose lines are not carried, and dave make two removals of five.)
    let accepted = world.run(&[
        "publish",
        "--accept-index",
        &sha,
        "--force",
        "--format",
        "json",
    ]);
    assert_eq!(accepted.code, 1, "carol's keys are unknown: {accepted:#?}");
    assert!(
        accepted.stderr.contains("--accept-index"),
        "{}",
        accepted.stderr
    );
    assert!(
        accepted
            .stdout
            .contains("keys unknown, and none carried: the published index is not the one"),
        "{}",
        accepted.stdout
    );
    let index = world.index();
    assert_eq!(index.generation, 4);
    assert_eq!(index.previous.as_deref(), Some(sha.as_str()));
    let served = world.served();
    assert!(!served.contains(&second.line), "{served}");
    assert!(!served.contains(world.line("dave")), "{served}");
    assert!(served.contains(world.line("bob")), "{served}");
    assert_eq!(world.run(&["verify"]).code, 0);
}

/// Item 1, with real logins: after an older signed index is put back and a member's home is
/// unreadable, the old code published `old + 1` and then `old + 2`, which a warm instance takes:
/// the key its owner had deleted was carried back, signed and served, and logged in. Now every
/// publish over the replay is refused, the warm instance keeps its generation, and the
/// operator's way out carries nothing out of the replayed index. sshd's AuthorizedKeysCommand is
/// the built keyhole, run as `nobody`, refreshing at every login.
#[test]
fn a_deleted_key_never_logs_in_again_after_a_replay() {
    const NOBODY: u32 = 65534;
    let world = World::new();
    let second = world.stack.homes.key("carol-old-laptop", "ed25519");
    world.write_keys("carol", &[world.line("carol"), &second.line]);
    assert_eq!(world.run(&["publish"]).code, 0);
    let replayed = world.index_bytes();
    world.write_keys("carol", &[world.line("carol")]);
    assert_eq!(world.run(&["publish"]).code, 0);

    // A warm instance: cache owned by nobody, refreshed at each login (cache_ttl 1ms).
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cache = host.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::os::unix::fs::chown(&cache, Some(NOBODY), Some(NOBODY)).unwrap();
    let config = host.path().join("keyhole.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[instance]\nlogin_user = \"root\"\naccess_groups = [\"web-prod\"]\ncache_dir = \"{}\"\ncache_ttl = \"1ms\"\nmax_stale = \"1h\"\nfetch_timeout = \"3s\"\nverify_key = \"{}\"\n",
            world.stack.s3.settings("ssh/"),
            cache.display(),
            world.verify_key.trim()
        ),
    )
    .unwrap();
    let sshd = Sshd::start(
        &config,
        &world.stack.s3.instance_credentials(host.path(), NOBODY),
    );
    let key = |user: &str| world.keys[user].private.clone();
    assert!(sshd.login("root", &key("carol")), "{}", sshd.log());
    assert!(!sshd.login("root", &second.private), "{}", sshd.log());

    // The attack, and two more timer runs of the publisher.
    world.stack.s3.put_object("ssh/index.json", &replayed);
    world.break_home("carol");
    world.disable("dave");
    for _ in 0..2 {
        let run = world.run(&["publish"]);
        assert_eq!(run.code, 1, "{run:#?}");
    }
    assert!(!sshd.login("root", &second.private), "{}", sshd.log());

    // The operator publishes past the replay explicitly: dave's revocation reaches the host,
    // carol's deleted key does not come back.
    let sha = sha256_hex(replayed.as_bytes());
    let accepted = world.run(&["publish", "--accept-index", &sha, "--force"]);
    assert_eq!(accepted.code, 1, "carol's keys are unknown: {accepted:#?}");
    assert!(!sshd.login("root", &second.private), "{}", sshd.log());
    assert!(!sshd.login("root", &key("dave")), "{}", sshd.log());
    assert!(sshd.login("root", &key("bob")), "{}", sshd.log());
}

/// Item 1: an index past its `not_after` is never the base of a publish without
/// `--accept-expired` (it may be an old one put back).
#[test]
fn an_expired_index_is_a_base_only_with_accept_expired() {
    let world = World::with(|world| world.settings_valid_for("2s", "", ""));
    std::thread::sleep(Duration::from_secs(3));
    world.disable("erin");
    let refused = world.run(&["publish"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(
        refused.stderr.contains("expired at") && refused.stderr.contains("--accept-expired"),
        "{}",
        refused.stderr
    );
    assert_eq!(world.index().generation, 1);
    world.settings("", "");
    let resumed = world.run(&["publish", "--accept-expired"]);
    assert_eq!(resumed.code, 0, "{resumed:#?}");
    assert_eq!(world.index().generation, 2);
    assert!(!world.served().contains(world.line("erin")));
}

/// Item 2: deleted or altered objects never block a publish. The old code stopped every
/// publish (`[deny]`, `--force` and `--rewrite-all` included) on one missing object.
#[test]
fn a_missing_or_altered_object_never_blocks_a_publish() {
    let world = World::new();
    // A contested key (bob pastes carol's), then the owners object and web-prod's object deleted,
    // and dave denied.
    world.write_keys("bob", &[world.line("bob"), world.line("carol")]);
    world.stack.s3.delete_object(&world.owners_object());
    world.stack.s3.delete_object(&world.object_of("web-prod"));
    world
        .stack
        .publisher
        .write_policy(&format!("{POLICY}\n[deny]\nusers = [\"dave\"]\n"));
    let published = world.run(&["publish"]);
    assert_eq!(published.code, 0, "{published:#?}");
    assert!(
        published
            .stderr
            .contains("the owners object is rebuilt from the published revocation list"),
        "{}",
        published.stderr
    );
    assert!(
        published.stdout.contains("planned from nothing"),
        "{}",
        published.stdout
    );
    let served = world.served();
    assert!(!served.contains(world.line("dave")), "{served}");
    assert!(served.contains(world.line("bob")), "{served}");
    // The contested key went to nobody (the safe side).
    assert!(!served.contains(world.line("carol")), "{served}");
    assert_eq!(world.run(&["verify"]).code, 0);

    // The guard refuses (any removal), db-prod's object is altered, bob is disabled (held back in
    // web-prod) and erin denied: the deny is published, db-prod written fresh.
    world.settings("max_removed_users = 0\n", "");
    let db = world.object_of("db-prod");
    world.stack.s3.put_object(&db, "# altered\n");
    world.disable("bob");
    world
        .stack
        .publisher
        .write_policy(&format!("{POLICY}\n[deny]\nusers = [\"dave\", \"erin\"]\n"));
    let refused = world.run(&["publish"]);
    assert_eq!(refused.code, 3, "{refused:#?}");
    let served = world.served();
    assert!(!served.contains(world.line("erin")), "{served}");
    assert!(
        served.contains(world.line("bob")),
        "the guard holds bob: {served}"
    );
    let db_file = world.stack.group_file("db-prod");
    assert!(!db_file.contains("altered"), "{db_file}");

    // --rewrite-all reads nothing back: it repairs a bucket with objects deleted.
    world.stack.s3.delete_object(&world.object_of("web-prod"));
    world.stack.s3.delete_object(&world.owners_object());
    let rewritten = world.run(&["publish", "--rewrite-all", "--force"]);
    assert_eq!(rewritten.code, 0, "{rewritten:#?}");
    assert_eq!(world.run(&["verify"]).code, 0);
    assert!(!world.served().contains(world.line("bob")));
}

/// Items 3 and 9: another deployment's old format-1 index signed with a shared key, and an index
/// valid for longer than 30 days, are refused by a warm instance, by the publisher and by
/// `verify`; a legacy bucket is migrated only with `--migrate`, never with `--group`.
#[test]
fn legacy_and_far_future_indexes_are_refused() {
    let world = World::new();
    assert!(world.served().contains(world.line("bob")));
    let intruder = world.stack.homes.key("intruder", "ed25519");
    let body = format!(
        "# keyhole access group web-prod: generated, do not edit\n# bob\n{}\n",
        intruder.line
    );
    world
        .stack
        .s3
        .put_object("ssh/web-prod/authorized_keys", &body);
    let legacy = Index {
        format: LEGACY_FORMAT,
        generation: 100,
        not_after: Some(signing::format_time(SystemTime::now() + 7 * DAY)),
        groups: BTreeMap::from([(
            "web-prod".to_string(),
            IndexGroup {
                sha256: sha256_hex(body.as_bytes()),
                users: 1,
                keys: 1,
                seal: None,
            },
        )]),
        ..Index::empty()
    };
    world.put_signed(&legacy);
    let refresh = world.on_instance(&["refresh"]);
    assert_ne!(refresh.code, 0, "{refresh:#?}");
    assert!(
        refresh.stderr.contains("legacy format 1"),
        "{}",
        refresh.stderr
    );
    assert!(!world.serving().contains(&intruder.line));
    let refused = world.run(&["publish"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(refused.stderr.contains("--migrate"), "{}", refused.stderr);
    // This publisher committed format 2: a format-1 index now is a replay, --migrate or not.
    let refused = world.run(&["publish", "--migrate"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(
        refused.stderr.contains("legacy format 1"),
        "{}",
        refused.stderr
    );
    let verify = world.run(&["verify"]);
    assert_eq!(verify.code, 1, "{verify:#?}");
    assert!(
        verify.stdout.contains("index_untrusted"),
        "{}",
        verify.stdout
    );

    // An index of this deployment valid for 60 days: instances refuse it.
    let head: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(world.head()).unwrap()).unwrap();
    assert_eq!(head["generation"], 1);
    world.stack.s3.delete_object("ssh/index.json");
    world.disable("erin");
    assert_eq!(world.run(&["publish", "--min-generation", "2"]).code, 0);
    let mut far = world.index();
    far.generation += 1;
    far.not_after = Some(signing::format_time(SystemTime::now() + 60 * DAY));
    world.put_signed(&far);
    let refresh = world.on_instance(&["refresh"]);
    assert_ne!(refresh.code, 0, "{refresh:#?}");
    assert!(
        refresh.stderr.contains("further ahead"),
        "{}",
        refresh.stderr
    );
    let verify = world.run(&["verify"]);
    assert!(
        verify.stdout.contains("index_untrusted"),
        "{}",
        verify.stdout
    );
    // And the publisher never signs one: validity is at most 30 days.
    world.settings_valid_for("31d", "", "");
    let invalid = world.run(&["publish"]);
    assert_eq!(invalid.code, 78, "{invalid:#?}");
    assert!(invalid.stderr.contains("validity"), "{}", invalid.stderr);
    world.settings("", "");

    // A new publisher host (no head) over a legacy bucket: --migrate, and never with --group.
    std::fs::remove_file(world.head()).unwrap();
    world.put_signed(&legacy);
    let refused = world.run(&["publish"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(refused.stderr.contains("--migrate"), "{}", refused.stderr);
    let usage = world.run(&["publish", "--migrate", "--group", "web-prod"]);
    assert_eq!(usage.code, 64, "{usage:#?}");
    assert_eq!(world.index().format, LEGACY_FORMAT, "nothing was committed");
    let migrated = world.run(&["publish", "--migrate"]);
    assert_eq!(migrated.code, 0, "{migrated:#?}");
    let index = world.index();
    assert_eq!((index.format, index.generation), (2, 101));
    let served = world.served();
    assert!(!served.contains(&intruder.line), "{served}");
    assert!(served.contains(world.line("bob")), "{served}");
    assert_eq!(world.run(&["verify"]).code, 0);
}

/// Item 4: lines carried for an unreadable home obey today's key policy and per-person cap, and
/// stop after `homes.max_carry`. The old code carried a `cert-authority` line published under an
/// old default for as long as the member kept `~/.ssh` unreadable.
#[test]
fn carried_lines_obey_todays_rules_and_expire() {
    let old_default = "\n[keys]\nforbidden_options = [\"environment\"]\n";
    let world = World::with(|world| world.settings("", old_default));
    let ca = world.stack.homes.key("carol-ca", "ed25519");
    let extra = world.stack.homes.key("carol-extra", "ed25519");
    let ca_line = format!("cert-authority {}", ca.line);
    world.write_keys("carol", &[&ca_line, world.line("carol"), &extra.line]);
    assert_eq!(world.run(&["publish"]).code, 0);
    assert!(world.served().contains(&ca_line));

    // Today's rules: cert-authority forbidden (the default), one key a person.
    world.settings("", "\n[keys]\nmax_keys_per_user = 1\n");
    world.break_home("carol");
    let carried = world.run(&["publish", "--format", "json"]);
    assert_eq!(carried.code, 1, "{carried:#?}");
    let problems = carried.json()["problems"].to_string();
    assert!(
        problems.contains(&format!("carried key {} dropped", ca.fingerprint))
            && problems.contains("cert-authority"),
        "{problems}"
    );
    assert!(
        problems.contains(&format!("carried key {} dropped", extra.fingerprint))
            && problems.contains("max_keys_per_user"),
        "{problems}"
    );
    let served = world.served();
    assert!(!served.contains(&ca.line), "{served}");
    assert!(!served.contains(&extra.line), "{served}");
    assert!(served.contains(world.line("carol")), "{served}");

    // Past homes.max_carry of continuous unreadability: nothing is carried.
    std::thread::sleep(Duration::from_secs(2));
    let expired = world.run_with(
        &[("KEYHOLE_HOMES_MAX_CARRY", "1s")],
        &["publish", "--format", "json"],
    );
    assert_eq!(expired.code, 1, "{expired:#?}");
    assert!(
        expired.stdout.contains("longer than homes.max_carry"),
        "{}",
        expired.stdout
    );
    assert!(!world.served().contains(world.line("carol")));
}

/// Item 5: three wrong passwords from anyone lock the service account. The old code latched on
/// that and stopped every publish until someone ran --retry-bind; now a lockout is retried once
/// `ldap.lockout_retry` has passed, loudly, with the metric raised meanwhile.
#[test]
fn a_lockout_of_the_service_account_is_not_a_kill_switch() {
    let world = World::new();
    lock_out_service_account(&world.stack.dc);
    let metrics = world.stack.publisher.path("metrics.prom");
    let metrics_arg = metrics.to_str().unwrap();
    let locked = world.run(&["publish", "--metrics-file", metrics_arg]);
    assert_eq!(locked.code, 1, "{locked:#?}");
    assert!(
        locked.stderr.contains("775") && locked.stderr.contains("lockout_retry"),
        "{}",
        locked.stderr
    );
    let raised = "keyhole_publish_ldap_bind_refused 1";
    assert!(std::fs::read_to_string(&metrics).unwrap().contains(raised));
    // Within lockout_retry: no bind, the metric still raised.
    let waiting = world.run(&["publish", "--metrics-file", metrics_arg]);
    assert_eq!(waiting.code, 1, "{waiting:#?}");
    assert!(
        waiting.stderr.contains("not binding as") && waiting.stderr.contains("yet"),
        "{}",
        waiting.stderr
    );
    assert!(std::fs::read_to_string(&metrics).unwrap().contains(raised));
    // The account is unlocked (or the lockout ends); after lockout_retry the publisher binds
    // again by itself, without --retry-bind.
    world.stack.dc.unlock(SERVICE_ACCOUNT);
    world.disable("erin");
    std::thread::sleep(Duration::from_secs(2));
    let resumed = world.run_with(&[("KEYHOLE_LDAP_LOCKOUT_RETRY", "1s")], &["publish"]);
    assert_eq!(resumed.code, 0, "{resumed:#?}");
    assert!(!world.served().contains(world.line("erin")));
}

/// Locks the service account the way anyone on the network can: simple binds with a wrong
/// password until the domain's threshold (`SambaDc::lock_out` checks the lock with a search as
/// the service account, which a locked service account cannot do).
fn lock_out_service_account(dc: &SambaDc) {
    for _ in 0..LOCKOUT_THRESHOLD {
        let output = std::process::Command::new("ldapsearch")
            .env("LDAPTLS_CACERT", dc.ca_file())
            .env("LDAPTLS_REQCERT", "demand")
            .args(["-x", "-o", "nettimeout=10", "-H", &dc.ldaps_url()])
            .args([
                "-D",
                &dc.service_bind_dn(),
                "-w",
                "certainly-not-the-password",
            ])
            .args(["-b", "", "-s", "base", "dn"])
            .output()
            .expect("running ldapsearch");
        assert_eq!(output.status.code(), Some(49), "{output:?}");
    }
}
