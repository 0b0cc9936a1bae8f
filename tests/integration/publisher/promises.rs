//! README "Change detection, order of writes, and concurrency", failure by failure: a real Samba
//! DC and s3s-fs, with the fault proxy of `support/fault_proxy.rs` between the publisher and
//! the bucket, refusing exactly one request at each point of a publish: the 2nd group object,
//! the owners object, the index (the commit), a prune. For each: the exit code, what an
//! instance serves afterwards (with a warm cache and with a cold one, both reading S3 at every
//! login: `cache_ttl` is 1 ms), that the next run converges and that `verify` is clean. Also:
//! a body damaged in transit is refused by the server and fails the run; a run where nothing
//! changed makes one request, a read; `publish --group nope` is a usage error; the safety guard
//! refuses with exit 3 and leaves the bucket byte for byte as it was.
//!
//! (Throttling, a reset in the middle of a PUT and `--deadline` are tests/faults.rs's.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::fault_proxy::{FaultProxy, HttpFault, HttpRule, Mode};
use crate::support::homes::Key;
use crate::support::keyhole::{Run, run_keyhole};
use crate::support::ports::address_of;
use crate::support::samba::{Fixture, UserSpec};
use crate::support::stack::{Extra, Stack};

const POLICY: &str = r#"
[access_groups.web-prod]
groups = ["Web Team"]

[access_groups.db-prod]
users = ["p1"]

[access_groups.ops]
users = ["p1", "p2"]
"#;

const PEOPLE: &[(&str, u32)] = &[
    ("p1", 22001),
    ("p2", 22002),
    ("p3", 22003),
    ("p4", 22004),
    ("p5", 22005),
];

fn company() -> Fixture {
    let mut fixture = Fixture::new();
    for (name, uid) in PEOPLE {
        fixture = fixture.user(UserSpec::unix(name, *uid, &format!("/home/{name}")));
    }
    let names: Vec<&str> = PEOPLE.iter().map(|(name, _)| *name).collect();
    fixture.group("Web Team", &names)
}

fn is_group_object(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or(target);
    ["/ssh/web-prod/", "/ssh/db-prod/", "/ssh/ops/"]
        .iter()
        .any(|prefix| path.contains(prefix))
}

fn is_owners_object(target: &str) -> bool {
    target.contains("/ssh/_keyhole/owners/")
}

fn is_index(target: &str) -> bool {
    target
        .split('?')
        .next()
        .unwrap_or(target)
        .ends_with("/ssh/index.json")
}

/// A signed deployment with everyone's keys published once (generation 1).
struct World {
    stack: Stack,
    keys: BTreeMap<&'static str, Key>,
    verify_key: String,
    settings: String,
}

impl World {
    fn new() -> World {
        World::with_validity("7d")
    }

    /// A world whose publisher signs for `validity`.
    fn with_validity(validity: &str) -> World {
        let stack = Stack::start(&company(), POLICY);
        let keys = stack.give_keys(PEOPLE);
        let (key_file, verify_key) = stack.publisher.signing_key();
        stack.write_settings(Extra {
            sections: &format!(
                "\n[signing]\nkey_file = \"{}\"\nvalidity = \"{validity}\"\n",
                key_file.display()
            ),
            ..Extra::default()
        });
        let settings = std::fs::read_to_string(stack.publisher.config()).unwrap();
        let world = World {
            stack,
            keys,
            verify_key,
            settings,
        };
        let first = world.publish();
        assert_eq!(first.code, 0, "{first:#?}");
        world
    }

    fn publish(&self) -> Run {
        self.stack.run(&["publish"])
    }

    /// Points the publisher at `endpoint` (a proxy) instead of the S3 server.
    fn through(&self, endpoint: &str) {
        self.stack
            .publisher
            .write_settings(&self.settings.replace(&self.stack.s3.endpoint(), endpoint));
    }

    fn direct(&self) {
        self.stack.publisher.write_settings(&self.settings);
    }

    fn proxy(&self, rules: Vec<HttpRule>) -> FaultProxy {
        let proxy = FaultProxy::start(address_of(&self.stack.s3.endpoint()), Mode::Http(rules));
        self.through(&proxy.http_url());
        proxy
    }

    /// p1 (in all three access groups) gets a new key: the next publish writes every group
    /// object and the owners object.
    fn rotate_p1(&self, name: &str) -> Key {
        let key = self.stack.homes.key(name, "ed25519");
        self.stack
            .homes
            .write("p1", 22001, &format!("{}\n", key.line));
        key
    }

    fn generation(&self) -> u64 {
        self.stack.manifest()["generation"].as_u64().unwrap()
    }

    fn verify(&self) -> Run {
        self.stack.run(&["verify", "--format", "json"])
    }

    /// Instances serve `key` and not `gone`, from a warm cache and from a cold one.
    fn assert_instances_serve(&self, warm: &Instance, key: &Key, gone: &Key) {
        assert_serves(&warm.login(), key, gone);
        let cold_dir = tempfile::tempdir().unwrap();
        assert_serves(&self.instance(cold_dir.path()).login(), key, gone);
    }

    /// An instance of all three access groups, verifying the index with the publisher's key and
    /// reading S3 straight at every login (`cache_ttl` 1 ms).
    fn instance(&self, dir: &Path) -> Instance {
        let cache = dir.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let config = dir.join("keyhole.toml");
        std::fs::write(
            &config,
            format!(
                "{}\n[instance]\nlogin_user = \"ec2-user\"\naccess_groups = [\"web-prod\", \"db-prod\", \"ops\"]\ncache_dir = \"{}\"\ncache_ttl = \"1ms\"\nmax_stale = \"1h\"\nfetch_timeout = \"5s\"\nverify_key = \"{}\"\n",
                self.stack.s3.settings("ssh/"),
                cache.display(),
                self.verify_key
            ),
        )
        .unwrap();
        Instance {
            config,
            env: self.stack.s3.env(),
        }
    }
}

/// The key lines a login was offered hold `key` and not `gone`.
fn assert_serves(served: &str, key: &Key, gone: &Key) {
    assert!(
        served.contains(&key.line) && !served.contains(&gone.line),
        "{served}"
    );
}

struct Instance {
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Instance {
    /// `keyhole refresh`: exit 0 only when the bucket's index checks out (signature, not
    /// expired, no rollback) and the cache is brought up to date.
    fn refresh(&self) -> Run {
        run_keyhole(&self.config, &["refresh"], &self.env)
    }

    /// The key lines served to a login of `ec2-user` (exit 0 asserted).
    fn login(&self) -> String {
        let run = run_keyhole(&self.config, &["authorized-keys", "ec2-user"], &self.env);
        assert_eq!(run.code, 0, "{run:#?}");
        run.stdout
    }
}

/// One failure before the commit: exit 1 with the object named, `index.json` untouched,
/// instances (warm and cold) still serving the old key, then the next run converges and
/// `verify` is clean.
fn fails_before_the_commit(rules: Vec<HttpRule>, named: &str) {
    let world = World::new();
    let old = world.keys["p1"].clone();
    let warm_dir = tempfile::tempdir().unwrap();
    let warm = world.instance(warm_dir.path());
    assert!(warm.login().contains(&old.line));
    let new = world.rotate_p1("p1-new");
    let index_before = world.stack.s3.object("ssh/index.json").unwrap();
    let generation = world.generation();

    let proxy = world.proxy(rules);
    let failed = world.publish();
    assert_eq!(failed.code, 1, "{failed:#?}");
    assert_eq!(proxy.faulted().len(), 1, "{:#?}", proxy.seen());
    assert!(
        failed.stderr.contains(named),
        "{named} in {}",
        failed.stderr
    );
    // Nothing reached the commit point.
    assert!(
        !proxy
            .seen()
            .iter()
            .any(|seen| seen.method == "PUT" && is_index(&seen.target)),
        "the index was written after a failed write: {:#?}",
        proxy.seen()
    );
    assert_eq!(
        world.stack.s3.object("ssh/index.json").unwrap(),
        index_before
    );
    assert_eq!(world.generation(), generation);

    // Instances serve what was committed before: the old key, with a warm cache and a cold one.
    world.assert_instances_serve(&warm, &old, &new);

    // The next run converges: the new key everywhere, verify clean, and a run after writes
    // nothing.
    world.direct();
    let healed = world.publish();
    assert_eq!(healed.code, 0, "{healed:#?}");
    assert_eq!(world.generation(), generation + 1);
    assert_serves(&warm.login(), &new, &old);
    let verify = world.verify();
    assert_eq!(verify.code, 0, "{verify:#?}");
    assert_eq!(
        verify.json()["findings"],
        serde_json::json!([]),
        "{verify:#?}"
    );
    let converged = world.stack.s3.contents();
    let again = world.publish();
    assert_eq!(again.code, 0, "{again:#?}");
    assert_eq!(world.stack.s3.contents(), converged);
}

#[test]
fn the_second_group_object_refused_fails_the_run_and_publishes_nothing() {
    fails_before_the_commit(
        vec![HttpRule::new(Some("PUT"), is_group_object, HttpFault::Refuse).skip(1)],
        "AccessDenied",
    );
}

#[test]
fn the_owners_object_refused_fails_the_run_and_publishes_nothing() {
    fails_before_the_commit(
        vec![HttpRule::new(
            Some("PUT"),
            is_owners_object,
            HttpFault::Refuse,
        )],
        "AccessDenied",
    );
}

#[test]
fn the_index_write_refused_fails_the_run_and_publishes_nothing() {
    let world = World::new();
    let old = world.keys["p1"].clone();
    let warm_dir = tempfile::tempdir().unwrap();
    let warm = world.instance(warm_dir.path());
    assert!(warm.login().contains(&old.line));
    let new = world.rotate_p1("p1-new");
    let index_before = world.stack.s3.object("ssh/index.json").unwrap();

    let proxy = world.proxy(vec![HttpRule::new(
        Some("PUT"),
        is_index,
        HttpFault::Refuse,
    )]);
    let failed = world.publish();
    assert_eq!(failed.code, 1, "{failed:#?}");
    assert!(failed.stderr.contains("index.json"), "{}", failed.stderr);
    let seen = proxy.seen();
    // Everything else was written first (the order), and nothing was pruned after the failed
    // commit.
    let index_at = seen
        .iter()
        .position(|s| s.method == "PUT" && is_index(&s.target))
        .unwrap();
    assert!(
        seen[..index_at]
            .iter()
            .filter(|s| s.method == "PUT")
            .any(|s| is_owners_object(&s.target)),
        "{seen:#?}"
    );
    assert_eq!(
        seen[..index_at]
            .iter()
            .filter(|s| s.method == "PUT" && is_group_object(&s.target))
            .count(),
        3,
        "{seen:#?}"
    );
    assert!(!seen.iter().any(|s| s.method == "DELETE"), "{seen:#?}");
    // Every write carried x-amz-checksum-sha256, the SHA-256 of exactly the bytes sent, so the
    // server can refuse a body damaged on the way (README "Change detection").
    for put in seen.iter().filter(|s| s.method == "PUT") {
        assert_eq!(put.checksum_matches, Some(true), "{put:#?}");
    }
    assert_eq!(
        world.stack.s3.object("ssh/index.json").unwrap(),
        index_before
    );

    world.assert_instances_serve(&warm, &old, &new);

    // What the failed run wrote is named by no index: verify lists it as extra, and the next
    // publish (which writes those same content addresses again) leaves the bucket clean.
    world.direct();
    let healed = world.publish();
    assert_eq!(healed.code, 0, "{healed:#?}");
    assert_serves(&warm.login(), &new, &old);
    let verify = world.verify();
    assert_eq!(verify.code, 0, "{verify:#?}");
}

#[test]
fn a_refused_prune_keeps_the_commit_and_a_later_run_finishes_it() {
    let world = World::new();
    let first_objects: Vec<String> = world
        .stack
        .s3
        .keys()
        .into_iter()
        .filter(|key| !key.ends_with("index.json"))
        .collect();
    // Two more generations, so that the third publish has generation 1's objects to prune.
    world.rotate_p1("p1-second");
    let second = world.publish();
    assert_eq!(second.code, 0, "{second:#?}");
    let newest = world.rotate_p1("p1-third");
    let warm_dir = tempfile::tempdir().unwrap();
    let warm = world.instance(warm_dir.path());
    warm.login();

    let proxy = world.proxy(vec![
        HttpRule::new(Some("DELETE"), |_| true, HttpFault::Refuse).times(1000),
    ]);
    let run = world.publish();
    // README: "A prune that fails is logged and finished by a later run": the commit stands.
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(!proxy.faulted().is_empty(), "{:#?}", proxy.seen());
    assert!(run.stderr.contains("pruning"), "{}", run.stderr);
    assert_eq!(world.generation(), 3);
    let keys = world.stack.s3.keys();
    for object in &first_objects {
        assert!(
            keys.contains(object),
            "{object} was pruned through a refusal"
        );
    }
    let served = warm.login();
    assert!(served.contains(&newest.line), "{served}");
    let cold_dir = tempfile::tempdir().unwrap();
    assert!(
        world
            .instance(cold_dir.path())
            .login()
            .contains(&newest.line)
    );

    // The leftovers are named by no index (served to no one; verify, by design, does not count
    // a content-addressed object under a listed group as extra). The next publish that changes
    // those groups prunes them.
    world.direct();
    let verify = world.verify();
    assert_eq!(verify.code, 0, "{verify:#?}");
    let later = world.rotate_p1("p1-fourth");
    let run = world.publish();
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(warm.login().contains(&later.line));
    let keys = world.stack.s3.keys();
    for object in &first_objects {
        assert!(
            !keys.contains(object),
            "{object} was never pruned: {keys:#?}"
        );
    }
    let verify = world.verify();
    assert_eq!(verify.code, 0, "{verify:#?}");
    assert_eq!(
        verify.json()["findings"],
        serde_json::json!([]),
        "{verify:#?}"
    );
}

#[test]
fn a_body_damaged_in_transit_is_refused_by_the_server_and_fails_the_run() {
    let world = World::new();
    let old = world.keys["p1"].clone();
    let new = world.rotate_p1("p1-new");
    let index_before = world.stack.s3.object("ssh/index.json").unwrap();
    // Every attempt at the first group object arrives damaged (the SDK retries).
    let proxy = world.proxy(vec![
        HttpRule::new(Some("PUT"), is_group_object, HttpFault::DamageBody).times(1000),
    ]);
    let failed = world.publish();
    assert_eq!(failed.code, 1, "{failed:#?}");
    assert!(!proxy.faulted().is_empty(), "{:#?}", proxy.seen());
    // s3s-fs checks the body against the SigV4-signed x-amz-content-sha256 as it streams it
    // (an error it reports as InternalError) before it compares x-amz-checksum-sha256
    // (BadDigest): either way the server refused it, and the run names the object.
    assert!(
        failed.stderr.contains("InternalError") || failed.stderr.contains("BadDigest"),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("PUT s3://keyhole-test/ssh/"),
        "{}",
        failed.stderr
    );
    // No damaged object was stored, and nothing was committed.
    assert_eq!(
        world.stack.s3.object("ssh/index.json").unwrap(),
        index_before
    );
    for (key, body) in world.stack.s3.contents() {
        let group_object =
            key.starts_with("ssh/") && !key.contains("_keyhole") && !key.ends_with("index.json");
        if let Some(body) = body.filter(|_| group_object) {
            assert_eq!(
                key.rsplit('/').next().unwrap(),
                keyhole::digest::sha256_hex(body.as_bytes()),
                "{key} is not its content's address"
            );
        }
    }
    let cold_dir = tempfile::tempdir().unwrap();
    assert_serves(&world.instance(cold_dir.path()).login(), &old, &new);
}

#[test]
fn a_run_where_nothing_changed_reads_the_index_and_writes_nothing() {
    let world = World::new();
    let before = world.stack.s3.contents();
    let proxy = world.proxy(vec![]);
    let metrics = world.stack.publisher.path("publish.prom");
    let run = world
        .stack
        .run(&["publish", "--metrics-file", metrics.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:#?}");
    // Counted at the wire: one request, for the index; a HEAD, since the publisher's copy of
    // the index stands in for its body while its ETag is unchanged (docs/incremental-homes.md).
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].method, "HEAD");
    assert!(is_index(&seen[0].target), "{seen:#?}");
    assert_eq!(world.stack.s3.contents(), before);
    let metrics = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line == "keyhole_publish_s3_writes 0"),
        "{metrics}"
    );
}

#[test]
fn publish_of_an_unknown_group_is_a_usage_error_and_writes_nothing() {
    let world = World::new();
    world.rotate_p1("p1-new");
    let before = world.stack.s3.contents();
    let run = world.stack.run(&["publish", "--group", "nope"]);
    assert_eq!(run.code, 64, "{run:#?}");
    assert!(run.stderr.contains("--group nope"), "{}", run.stderr);
    assert_eq!(world.stack.s3.contents(), before);
}

#[test]
fn the_guard_refuses_with_3_and_leaves_the_bucket_byte_for_byte() {
    let world = World::new();
    let before = world.stack.s3.contents();
    // Two of web-prod's five people lose their keys (40% > 25%): refused.
    world.stack.homes.write("p4", 22004, "");
    world.stack.homes.write("p5", 22005, "");
    let refused = world.publish();
    assert_eq!(refused.code, 3, "{refused:#?}");
    assert!(
        refused.stderr.contains("would lose 2 of its 5 users"),
        "{}",
        refused.stderr
    );
    assert_eq!(world.stack.s3.contents(), before);
    // Deleting web-prod (five people) from the policy: refused the same way.
    world
        .stack
        .homes
        .write("p4", 22004, &format!("{}\n", world.keys["p4"].line));
    world
        .stack
        .homes
        .write("p5", 22005, &format!("{}\n", world.keys["p5"].line));
    world
        .stack
        .publisher
        .write_policy(&POLICY.replace("[access_groups.web-prod]\ngroups = [\"Web Team\"]\n", ""));
    let refused = world.publish();
    assert_eq!(refused.code, 3, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("web-prod would lose 5 of its 5 users"),
        "{}",
        refused.stderr
    );
    assert_eq!(world.stack.s3.contents(), before);
    let forced = world.stack.run(&["publish", "--force"]);
    assert_eq!(forced.code, 0, "{forced:#?}");
    assert!(
        !world.stack.manifest()["groups"]
            .as_object()
            .unwrap()
            .contains_key("web-prod")
    );
}

/// README "Signing": a no-change publish past half of `validity` writes the index again with a
/// new `not_after` (and a new generation), so an instance reading S3 at every login never sees
/// the index expire while the publisher runs on its timer.
#[test]
fn a_short_validity_is_re_signed_on_schedule_and_never_seen_expired() {
    let world = World::with_validity("20s");
    let started = std::time::Instant::now();
    let index = || world.stack.s3.object("ssh/index.json").unwrap();
    let first = index();
    let dir = tempfile::tempdir().unwrap();
    let instance = world.instance(dir.path());
    let p1 = world.keys["p1"].line.clone();
    assert!(instance.login().contains(&p1));
    let objects = |world: &World| -> Vec<String> {
        world
            .stack
            .s3
            .keys()
            .into_iter()
            .filter(|key| !key.ends_with("index.json"))
            .collect()
    };
    let group_objects = objects(&world);
    let mut resigned_at = None;
    // The publisher on a timer, past the index's whole validity; a login after every run.
    while started.elapsed() < std::time::Duration::from_secs(32) {
        let run = world.publish();
        assert_eq!(run.code, 0, "{run:#?}");
        // The instance takes the bucket's index at every refresh: it never finds it expired.
        let refreshed = instance.refresh();
        assert_eq!(
            refreshed.code,
            0,
            "at {:?}: {refreshed:#?}",
            started.elapsed()
        );
        let served = instance.login();
        assert!(served.contains(&p1), "at {:?}: {served}", started.elapsed());
        if resigned_at.is_none() && index() != first {
            resigned_at = Some(started.elapsed());
            // Re-signed, nothing else: a new generation and not_after, the same objects.
            assert_eq!(world.generation(), 2);
            assert_eq!(objects(&world), group_objects);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let resigned_at = resigned_at.expect("the index was never re-signed");
    // Not before half of the validity (10 s; not_after has whole seconds).
    assert!(
        resigned_at >= std::time::Duration::from_secs(8),
        "re-signed after {resigned_at:?}"
    );
    assert!(world.generation() >= 2);
}
