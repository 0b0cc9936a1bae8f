//! Revocation integrity (issue 18): nothing in the bucket, in a home, or in a second publisher can
//! keep a revoked key live or add one. Each test reproduces one attack from the security review
//! against the real binary, a real Samba AD DC and s3s-fs, with `[signing]` on as in production,
//! and checks both what the publisher does and what an instance then serves.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::homes::Key;
use crate::support::keyhole::{Deployment, Run, run_keyhole, ssh_keygen};
use crate::support::samba::{Fixture, UserSpec};
use crate::support::stack::{Extra, Stack};
use keyhole::bucket::index::{Index, IndexGroup, Layout};
use keyhole::bucket::signing::Signer;
use serde_json::Value;

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
    fn new(policy: &str) -> World {
        let stack = Stack::start(&company(), policy);
        let (signing_key, verify_key) = stack.publisher.signing_key();
        let world = World {
            keys: stack.give_keys(PEOPLE),
            stack,
            signing_key,
            verify_key,
            instance: tempfile::tempdir().unwrap(),
        };
        world.settings("");
        let first = world.run(&["publish"]);
        assert_eq!(first.code, 0, "{first:#?}");
        world
    }

    /// The publisher's settings with `[signing]` and `safety` lines.
    fn settings(&self, safety: &str) {
        let signing = format!(
            "\n[signing]\nkey_file = \"{}\"\nvalidity = \"7d\"\n",
            self.signing_key.display()
        );
        self.stack.write_settings(Extra {
            safety,
            sections: &signing,
            ..Extra::default()
        });
    }

    fn run(&self, args: &[&str]) -> Run {
        self.stack.run(args)
    }

    fn published(&self) -> Value {
        self.stack.manifest()
    }

    fn index_bytes(&self) -> String {
        self.stack.s3.object("ssh/index.json").expect("an index")
    }

    fn index(&self) -> Index {
        Index::open(self.index_bytes().as_bytes(), None).unwrap()
    }

    fn uid(user: &str) -> u32 {
        PEOPLE.iter().find(|(name, _)| *name == user).unwrap().1
    }

    /// Replaces `user`'s authorized_keys with `lines`.
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

    fn leave_web_team(&self, user: &str) {
        self.stack.dc.modify(&format!(
            "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n",
            self.stack.dc.group_dn("Web Team"),
            self.stack.dc.user_dn(user)
        ));
    }

    /// Makes `user`'s home fail to open with an I/O error (ENAMETOOLONG through a symlink: as
    /// root, the tests cannot get the EACCES of root_squash NFS, which keyhole treats the same).
    fn break_home(&self, user: &str) {
        let home = self.stack.homes.home(user);
        std::fs::rename(&home, self.stack.homes.root().join(format!("{user}.real"))).unwrap();
        std::os::unix::fs::symlink(self.stack.homes.root().join("n".repeat(300)), &home).unwrap();
    }

    /// The instance's settings: web-prod, trusting the publisher's key, refreshing every time.
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

    /// What the instance serves sshd for web-prod after a refresh.
    fn served(&self) -> String {
        let refresh = self.on_instance(&["refresh"]);
        assert_eq!(refresh.code, 0, "{refresh:#?}");
        let served = self.on_instance(&["authorized-keys", "ec2-user"]);
        assert_eq!(served.code, 0, "{served:#?}");
        served.stdout
    }

    fn line(&self, user: &str) -> &str {
        &self.keys[user].line
    }
}

/// People with keys in a published group.
fn users(published: &Value, group: &str) -> Value {
    published["groups"][group]["users"].clone()
}

/// A key pair of the attacker's own, not the publisher's.
fn rogue_signer() -> (tempfile::TempDir, Signer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rogue");
    ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-f"], &path);
    let signer = Signer::load(&path).unwrap();
    (dir, signer)
}

/// Attack 1: a bucket writer plants a group file with their key and points the index at it.
/// Today's publisher refused to carry anything it did not verify: the next run stops with an
/// error naming the index, signs nothing, and the forged key is never served.
#[test]
fn a_forged_group_file_is_never_signed_by_the_publisher() {
    let world = World::new(POLICY);
    let intruder = world.stack.homes.key("intruder", "ed25519");
    let forged = format!(
        "# keyhole access group web-prod: generated, do not edit\n# bob via Web Team\n{}\n",
        intruder.line
    );
    let sha256 = keyhole::digest::sha256_hex(forged.as_bytes());
    world
        .stack
        .s3
        .put_object(&format!("ssh/web-prod/{sha256}"), &forged);
    let mut index = world.index();
    index.groups.insert(
        "web-prod".into(),
        IndexGroup {
            sha256,
            users: 1,
            keys: 1,
            seal: None,
        },
    );
    let (_rogue_dir, rogue) = rogue_signer();
    for (how, sealed) in [
        ("unsigned", index.seal(None).unwrap()),
        ("signed by another key", index.seal(Some(&rogue)).unwrap()),
    ] {
        let sealed = String::from_utf8(sealed).unwrap();
        world.stack.s3.put_object("ssh/index.json", &sealed);
        // A run that does not render web-prod (only db-prod selected, with a change there).
        world.write_keys("bob", &[world.line("bob"), world.line("carol")]);
        for args in [&["publish", "--group", "db-prod"][..], &["publish"][..]] {
            let refused = world.run(args);
            assert_eq!(refused.code, 1, "{how}, {args:?}: {refused:#?}");
            assert!(
                refused.stderr.contains("refusing s3://") && refused.stderr.contains("index.json"),
                "{how}: {}",
                refused.stderr
            );
            // Nothing was signed: the index is still the attacker's bytes.
            assert_eq!(world.index_bytes(), sealed, "{how}");
        }
        world.write_keys("bob", &[world.line("bob")]);
        // The instance refuses it too, and keeps serving what it had.
        let refresh = world.on_instance(&["refresh"]);
        assert_ne!(refresh.code, 0, "{how}: {refresh:#?}");
    }

    // Recovery: the operator deletes the forged index and says where the generation goes on.
    world.stack.s3.delete_object("ssh/index.json");
    let refused = world.run(&["publish"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(
        refused.stderr.contains("--min-generation"),
        "{}",
        refused.stderr
    );
    let recovered = world.run(&["publish", "--min-generation", "5"]);
    assert_eq!(recovered.code, 0, "{recovered:#?}");
    assert_eq!(world.index().generation, 5);
    let served = world.served();
    assert!(!served.contains(&intruder.line), "{served}");
    assert!(served.contains(world.line("bob")), "{served}");
    let verify = world.run(&["verify"]);
    assert_eq!(verify.code, 0, "{verify:#?}");
}

/// Attack 2: a member makes their own home unreadable (chmod 700 ~/.ssh against a root_squash
/// NFS, or a hung mount). That holds back no one's revocation, their own included.
#[test]
fn an_unreadable_home_never_holds_back_a_revocation() {
    let world = World::new(POLICY);
    world.break_home("carol");
    world.disable("bob");
    // dave is denied by name, erin's key by fingerprint.
    world.stack.publisher.write_policy(&format!(
        "{POLICY}\n[deny]\nusers = [\"dave\"]\nfingerprints = [\"{}\"]\n",
        world.keys["erin"].fingerprint
    ));
    let publish = world.run(&["publish", "--format", "json"]);
    assert_eq!(publish.code, 1, "{publish:#?}");
    let published = world.published();
    assert_eq!(
        users(&published, "web-prod"),
        serde_json::json!(["alice", "carol"])
    );
    assert!(published["groups"].get("db-prod").is_some());
    assert_eq!(users(&published, "db-prod"), serde_json::json!([]));
    let served = world.served();
    assert!(served.contains(world.line("carol")), "{served}");
    for revoked in ["bob", "dave", "erin"] {
        assert!(!served.contains(world.line(revoked)), "{revoked}: {served}");
    }

    // The unreadable person is revoked too when disabled (and, no longer a member, their home
    // is not even read: the run is clean).
    world.disable("carol");
    let publish = world.run(&["publish"]);
    assert_eq!(publish.code, 0, "{publish:#?}");
    assert_eq!(
        users(&world.published(), "web-prod"),
        serde_json::json!(["alice"])
    );
    assert!(!world.served().contains(world.line("carol")));
}

/// Attack 3: public keys are public. A member pastes a colleague's key into their own file: the
/// colleague keeps it, the copy is dropped and reported. Two newcomers with the same key are both
/// refused: it cannot be attributed.
#[test]
fn a_copied_public_key_never_revokes_its_owner() {
    let world = World::new(POLICY);
    world.write_keys("bob", &[world.line("bob"), world.line("alice")]);
    let publish = world.run(&["publish", "--format", "json"]);
    assert_eq!(publish.code, 0, "{publish:#?}");
    let report = publish.json();
    assert_eq!(report["guard"]["refused"], false);
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["user"] == "bob"
                && p["reason"].as_str().unwrap().contains(&format!(
                    "{} is published for alice",
                    world.keys["alice"].fingerprint
                ))),
        "{report:#}"
    );
    let published = world.published();
    assert_eq!(
        published["fingerprints"][&world.keys["alice"].fingerprint]["user"],
        "alice"
    );
    assert_eq!(published["groups"]["web-prod"]["keys"], 5);
    let served = world.served();
    assert!(served.contains(world.line("alice")), "{served}");
    assert_eq!(served.matches(world.line("alice")).count(), 1, "{served}");

    // A key nobody had published, appearing in two files at once: refused for both.
    let shared = world.stack.homes.key("shared", "ed25519");
    world.write_keys("dave", &[world.line("dave"), &shared.line]);
    world.write_keys("erin", &[world.line("erin"), &shared.line]);
    let publish = world.run(&["publish", "--format", "json"]);
    assert_eq!(publish.code, 0, "{publish:#?}");
    assert!(
        publish.stdout.contains("also in the files of dave, erin"),
        "{}",
        publish.stdout
    );
    assert!(!world.served().contains(&shared.line));
}

/// Attack 4: index.json deleted (operator, lifecycle rule, restore from backup). Starting again at
/// generation 1 would make every instance refuse every new index: revocations would stop.
#[test]
fn the_generation_never_goes_backwards() {
    let world = World::new(POLICY);
    world.disable("erin");
    assert_eq!(world.run(&["publish"]).code, 0);
    assert_eq!(world.index().generation, 2);
    assert!(!world.served().contains(world.line("erin")));

    world.stack.s3.delete_object("ssh/index.json");
    world.disable("dave");
    let refused = world.run(&["publish"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(
        refused.stderr.contains("is missing, but the bucket holds")
            && refused.stderr.contains("--min-generation"),
        "{}",
        refused.stderr
    );
    assert_eq!(world.stack.s3.object("ssh/index.json"), None);
    let resumed = world.run(&["publish", "--min-generation", "3"]);
    assert_eq!(resumed.code, 0, "{resumed:#?}");
    assert_eq!(world.index().generation, 3);
    // The instance that had generation 2 takes generation 3, and dave is gone.
    assert!(!world.served().contains(world.line("dave")));
}

/// Attack 5: two publishers whose directories differ (a DC that has not replicated a disable
/// yet). The stale one is paused between reading the index and committing (its signing key is a
/// FIFO: loading it blocks until the test writes the key); the up-to-date one publishes the
/// disable meanwhile. The stale one then loses the conditional commit (exit 75) and nothing it
/// wrote changes what instances serve.
#[test]
fn a_losing_publisher_never_changes_what_instances_serve() {
    let world = World::new(POLICY);
    assert!(world.served().contains(world.line("bob")));

    // The stale publisher: same bucket and DC, its own lock and a FIFO for its signing key.
    let stale = Deployment::new(&world.stack.dc, POLICY);
    let fifo = stale.path("signing-key");
    let made = Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(&fifo)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    std::fs::copy(
        format!("{}.pub", world.signing_key.display()),
        stale.path("signing-key.pub"),
    )
    .unwrap();
    let settings = std::fs::read_to_string(world.stack.publisher.config())
        .unwrap()
        .replace(
            &world.signing_key.display().to_string(),
            &fifo.display().to_string(),
        )
        .replace(
            &world
                .stack
                .publisher
                .path("publish.lock")
                .display()
                .to_string(),
            &stale.path("publish.lock").display().to_string(),
        );
    stale.write_settings(&settings);

    // A change both publishers see (carol's new key), so both have something to commit.
    let carol = world.stack.homes.key("carol-new", "ed25519");
    world.write_keys("carol", &[&carol.line]);
    let child = Command::new(crate::support::keyhole::BINARY)
        .arg("--config")
        .arg(stale.config())
        .arg("publish")
        .envs(world.stack.s3.env())
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Opening the FIFO for writing returns once the stale publisher opened it to load its key:
    // it has read AD (bob enabled) and the index by then, and waits.
    let mut key_pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();

    world.disable("bob");
    let winner = world.run(&["publish"]);
    assert_eq!(winner.code, 0, "{winner:#?}");
    let committed = world.index_bytes();
    assert!(!world.served().contains(world.line("bob")));

    key_pipe
        .write_all(&std::fs::read(&world.signing_key).unwrap())
        .unwrap();
    drop(key_pipe);
    let loser = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&loser.stderr);
    assert_eq!(loser.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("another publisher committed an index"),
        "{stderr}"
    );

    // Instances still serve the winner's generation, without bob.
    assert_eq!(world.index_bytes(), committed);
    let served = world.served();
    assert!(!served.contains(world.line("bob")), "{served}");
    assert!(served.contains(&carol.line), "{served}");
    // The winner's next run finds nothing to do, and the bucket verifies.
    let again = world.run(&["publish"]);
    assert_eq!(again.code, 0, "{again:#?}");
    assert!(again.stderr.contains("nothing changed"), "{}", again.stderr);
    assert_eq!(world.run(&["verify"]).code, 0);

    // An index of the same generation with other content (what the loser would have written,
    // validly signed) is refused by an instance that has that generation.
    let mut other = world.index();
    other.groups.remove("db-prod");
    let signer = Signer::load(&world.signing_key).unwrap();
    let sealed = String::from_utf8(other.seal(Some(&signer)).unwrap()).unwrap();
    world.stack.s3.put_object("ssh/index.json", &sealed);
    let refresh = world.on_instance(&["refresh"]);
    assert_ne!(refresh.code, 0, "{refresh:#?}");
    assert!(
        refresh
            .stderr
            .contains("differs from the cached index of the same generation"),
        "{}",
        refresh.stderr
    );
}

/// Attack 6: the guard must never make an emergency cut-off wait. When it refuses a mass removal,
/// the `[deny]` removals in the same run are still published; the rest waits for --force.
#[test]
fn the_guard_never_blocks_a_deny() {
    let world = World::new(POLICY);
    world.leave_web_team("carol");
    world.leave_web_team("dave");
    world
        .stack
        .publisher
        .write_policy(&format!("{POLICY}\n[deny]\nusers = [\"erin\"]\n"));
    let refused = world.run(&["publish"]);
    assert_eq!(refused.code, 3, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("published the [deny] removals only"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        users(&world.published(), "web-prod"),
        serde_json::json!(["alice", "bob", "carol", "dave"])
    );
    let served = world.served();
    assert!(!served.contains(world.line("erin")), "{served}");
    assert!(served.contains(world.line("carol")), "{served}");

    let forced = world.run(&["publish", "--force"]);
    assert_eq!(forced.code, 0, "{forced:#?}");
    assert_eq!(
        users(&world.published(), "web-prod"),
        serde_json::json!(["alice", "bob"])
    );
}

/// Attack 7: `whois` off an instance names a person only from an index it verified.
#[test]
fn whois_off_an_instance_verifies_the_index_first() {
    let world = World::new(POLICY);
    let fingerprint = world.keys["bob"].fingerprint.clone();
    let whois = world.run(&["whois", &fingerprint]);
    assert_eq!(whois.code, 0, "{whois:#?}");
    assert!(
        whois
            .stdout
            .contains("= bob (db-prod; web-prod via Web Team)"),
        "{}",
        whois.stdout
    );

    // The owners object rewritten to blame someone else, under a re-signed (rogue) index.
    let mut index = world.index();
    let owners = format!("{{\"{fingerprint}\":\"alice\"}}\n");
    let sha256 = keyhole::digest::sha256_hex(owners.as_bytes());
    let layout = Layout {
        prefix: "ssh/".into(),
    };
    world.stack.s3.put_object(&layout.owners(&sha256), &owners);
    index.owners = Some(sha256);
    let (_rogue_dir, rogue) = rogue_signer();
    let sealed = String::from_utf8(index.seal(Some(&rogue)).unwrap()).unwrap();
    world.stack.s3.put_object("ssh/index.json", &sealed);
    let whois = world.run(&["whois", &fingerprint]);
    assert_eq!(whois.code, 1, "{whois:#?}");
    assert!(whois.stderr.contains("refusing"), "{}", whois.stderr);
    assert!(!whois.stdout.contains("alice"), "{}", whois.stdout);
}
