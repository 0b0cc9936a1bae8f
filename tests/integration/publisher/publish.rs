//! `plan` and `publish` end to end against a real Samba AD DC, a real local S3 (s3s-fs) and homes
//! on disk: exact group files, a second run that writes nothing, the safety guard and `--force`,
//! the deny list, pruning, the lock, and upstream failures (S3 down, AD down) that must leave the
//! bucket exactly as it was.

use std::collections::BTreeMap;

use crate::support::homes::Key;
use crate::support::keyhole::Run;
use crate::support::samba::{Fixture, UserSpec};
use crate::support::stack::Stack;
use serde_json::{Value, json};

const PEOPLE: &[(&str, u32)] = &[
    ("alice.admin", 20001),
    ("bob", 20002),
    ("carol", 20003),
    ("dave", 20004),
    ("erin", 20005),
    ("frank", 20006),
];

fn company() -> Fixture {
    let mut fixture = Fixture::new();
    for (name, uid) in PEOPLE {
        fixture = fixture.user(UserSpec::unix(name, *uid, &format!("/home/{name}")));
    }
    fixture
        .group("Linux Admins", &["alice.admin"])
        .group("Web Team", &["bob", "carol", "dave", "erin", "frank"])
}

const POLICY: &str = r#"
[everywhere]
groups = ["Linux Admins"]

[access_groups.web-prod]
groups = ["Web Team"]

[access_groups.db-prod]
users = ["bob"]
"#;

/// The shared stack, with one fresh key per person.
struct World {
    stack: Stack,
    keys: BTreeMap<&'static str, Key>,
}

impl World {
    fn new(policy: &str) -> World {
        let stack = Stack::start(&company(), policy);
        let keys = stack.give_keys(PEOPLE);
        World { stack, keys }
    }

    fn run(&self, args: &[&str]) -> Run {
        self.stack.run(args)
    }

    fn manifest(&self) -> Value {
        self.stack.manifest()
    }

    /// The group file as a person would write it: header, then `# user via <chain>` (the chain
    /// POLICY gives) and their key.
    fn expected_file(&self, group: &str, users: &[&str]) -> String {
        let mut file = format!("# keyhole access group {group}: generated, do not edit\n");
        for user in users {
            let via = match (*user, group) {
                ("alice.admin", _) => " via everywhere > Linux Admins",
                (_, "web-prod") => " via Web Team",
                _ => "",
            };
            file.push_str(&format!("# {user}{via}\n{}\n", self.keys[user].line));
        }
        file
    }

    fn disable(&self, user: &str) {
        self.stack.dc.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
            self.stack.dc.user_dn(user)
        ));
    }
}

fn group_plan<'a>(plan: &'a Value, group: &str) -> &'a Value {
    &plan["groups"][group]
}

/// The plan report is for people: a publish whose stdout nobody reads (`| head -0`, a closed
/// pipe) still publishes, and says the report was lost.
#[test]
fn a_report_nobody_reads_never_stops_a_publish() {
    let world = World::new(POLICY);
    let publish = world.stack.publisher.run_unread(&["publish"]);
    assert_eq!(publish.code, 0, "{publish:#?}");
    assert!(
        publish.stderr.contains("could not write the plan report")
            && publish.stderr.contains("Broken pipe"),
        "{publish:#?}"
    );
    assert_eq!(
        world.stack.group_file("web-prod"),
        world.expected_file(
            "web-prod",
            &["alice.admin", "bob", "carol", "dave", "erin", "frank"]
        )
    );
}

#[test]
fn publish_writes_exact_group_files_and_a_second_run_writes_nothing() {
    let world = World::new(POLICY);

    let plan = world.run(&["plan", "--format", "json", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "changes pending: {plan:#?}");
    let plan = plan.json();
    assert_eq!(group_plan(&plan, "web-prod")["action"], "create");
    assert_eq!(
        group_plan(&plan, "db-prod")["added_users"],
        json!([{"name": "alice.admin", "reason": "new member"}, {"name": "bob", "reason": "new member"}])
    );
    assert_eq!(plan["guard"], json!({"refused": false, "reasons": []}));
    assert!(
        world.stack.s3.keys().is_empty(),
        "plan wrote something: {:?}",
        world.stack.s3.keys()
    );

    let publish = world.run(&["publish"]);
    assert_eq!(publish.code, 0, "{publish:#?}");
    assert_eq!(
        shapes(&world.stack.s3.keys()),
        [
            "ssh/_keyhole/owners/{sha256}.json",
            "ssh/_keyhole/revoked/{sha256}",
            "ssh/db-prod/{sha256}",
            "ssh/index.json",
            "ssh/web-prod/{sha256}"
        ]
    );
    assert_eq!(
        world.stack.group_file("web-prod"),
        world.expected_file(
            "web-prod",
            &["alice.admin", "bob", "carol", "dave", "erin", "frank"]
        )
    );
    assert_eq!(
        world.stack.group_file("db-prod"),
        world.expected_file("db-prod", &["alice.admin", "bob"])
    );
    let manifest = world.manifest();
    assert_eq!(manifest["format"], 2);
    assert_eq!(manifest["generation"], 1);
    assert_eq!(
        manifest["groups"]["db-prod"]["users"],
        json!(["alice.admin", "bob"])
    );
    assert_eq!(manifest["groups"]["db-prod"]["keys"], 2);
    assert_eq!(
        manifest["groups"]["web-prod"]["via"]["alice.admin"],
        json!(["everywhere", "Linux Admins"])
    );
    assert_eq!(
        manifest["fingerprints"][&world.keys["bob"].fingerprint],
        json!({"user": "bob", "groups": ["db-prod", "web-prod"]})
    );

    let before = world.stack.s3.objects();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = world.run(&["publish"]);
    assert_eq!(again.code, 0, "{again:#?}");
    assert!(
        again.stderr.contains("nothing changed; nothing written"),
        "{}",
        again.stderr
    );
    assert_eq!(
        world.stack.s3.objects(),
        before,
        "a no-change publish rewrote objects"
    );
    let plan = world.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{plan:#?}");
    assert!(
        plan.stdout
            .contains("0 to create, 0 to update, 0 to delete, 2 unchanged"),
        "{}",
        plan.stdout
    );
}

#[test]
fn the_guard_refuses_mass_removal_until_forced_and_deny_always_goes_through() {
    let world = World::new(POLICY);
    assert_eq!(world.run(&["publish"]).code, 0);
    let published = world.stack.s3.objects();

    // Two of web-prod's six people disabled: a third of the group, past the 25% limit.
    world.disable("carol");
    world.disable("dave");
    let refused = world.run(&["publish", "--format", "json"]);
    assert_eq!(refused.code, 3, "{refused:#?}");
    let report = refused.json();
    assert_eq!(report["guard"]["refused"], true);
    assert_eq!(
        report["guard"]["reasons"],
        json!([
            "access group web-prod would lose 2 of its 6 users (33% > max_removed_fraction 25%)"
        ])
    );
    assert_eq!(
        group_plan(&report, "web-prod")["removed_users"],
        json!([{"name": "carol", "reason": "disabled"}, {"name": "dave", "reason": "disabled"}])
    );
    assert_eq!(
        world.stack.s3.objects(),
        published,
        "a refused publish wrote something"
    );

    let forced = world.run(&["publish", "--force"]);
    assert_eq!(forced.code, 0, "{forced:#?}");
    assert_eq!(
        world.stack.group_file("web-prod"),
        world.expected_file("web-prod", &["alice.admin", "bob", "erin", "frank"])
    );
    assert_eq!(world.manifest()["generation"], 2);

    // Incident response: deny a person and a key. Two more of four people go at once (50%), yet
    // the guard must not hold it back.
    world.stack.publisher.write_policy(&format!(
        "{POLICY}\n[deny]\nusers = [\"erin\"]\nfingerprints = [\"{}\"]\n",
        world.keys["frank"].fingerprint
    ));
    let denied = world.run(&["publish", "--format", "json"]);
    assert_eq!(denied.code, 0, "{denied:#?}");
    assert_eq!(
        group_plan(&denied.json(), "web-prod")["removed_users"],
        json!([{"name": "erin", "reason": "denied"}, {"name": "frank", "reason": "denied"}])
    );
    assert_eq!(
        world.stack.group_file("web-prod"),
        world.expected_file("web-prod", &["alice.admin", "bob"])
    );
    let manifest = world.manifest();
    assert!(
        manifest["fingerprints"]
            .get(&world.keys["frank"].fingerprint)
            .is_none()
    );
}

#[test]
fn groups_removed_from_the_policy_are_pruned() {
    let world = World::new(POLICY);
    assert_eq!(world.run(&["publish"]).code, 0);
    world.stack.publisher.write_policy("[everywhere]\ngroups = [\"Linux Admins\"]\n\n[access_groups.web-prod]\ngroups = [\"Web Team\"]\n");
    let plan = world.run(&["plan", "--format", "json"]).json();
    assert_eq!(group_plan(&plan, "db-prod")["action"], "delete");
    assert_eq!(
        group_plan(&plan, "db-prod")["removed_users"],
        json!([
            {"name": "alice.admin", "reason": "access group no longer in policy"},
            {"name": "bob", "reason": "access group no longer in policy"}
        ])
    );
    let pruned = world.run(&["publish"]);
    assert_eq!(pruned.code, 0, "{pruned:#?}");
    assert_eq!(
        shapes(&world.stack.s3.keys()),
        [
            "ssh/_keyhole/owners/{sha256}.json",
            "ssh/_keyhole/revoked/{sha256}",
            "ssh/index.json",
            "ssh/web-prod/{sha256}"
        ]
    );
    assert!(world.manifest()["groups"].get("db-prod").is_none());
}

/// Pruning after a commit keeps each touched group's current and previous object and removes
/// anything older or never committed, whether it lists the whole prefix once (two or more groups
/// touched) or each group's prefix (one group touched).
#[test]
fn pruning_keeps_the_current_and_previous_objects_of_each_touched_group() {
    let world = World::new(POLICY);
    let s3 = &world.stack.s3;
    let objects = |group: &str| -> Vec<String> {
        let prefix = format!("ssh/{group}/");
        s3.keys()
            .into_iter()
            .filter(|key| key.starts_with(&prefix))
            .collect()
    };
    let current = |group: &str| {
        format!(
            "ssh/{group}/{}",
            world.manifest()["groups"][group]["sha256"]
                .as_str()
                .unwrap()
        )
    };
    let new_key = |name: &str, uid: u32, round: usize| {
        // A key file of its own per round: ssh-keygen will not overwrite one.
        let key = world.stack.homes.key(&format!("{name}-{round}"), "ed25519");
        world
            .stack
            .homes
            .write(name, uid, &format!("{}\n", key.line));
    };
    assert_eq!(world.run(&["publish"]).code, 0);
    // Objects a run wrote and never committed (it lost the race, or hit its deadline).
    let leftovers = [
        format!("ssh/web-prod/{}", "0".repeat(64)),
        format!("ssh/db-prod/{}", "1".repeat(64)),
    ];
    for key in &leftovers {
        s3.put_object(key, "# never committed\n");
    }
    let mut previous = [current("web-prod"), current("db-prod")];
    for round in 0..2 {
        // bob is in both groups: two prefixes, one listing of the whole prefix.
        new_key("bob", 20002, round);
        let run = world.run(&["publish"]);
        assert_eq!(run.code, 0, "{run:#?}");
        for (i, group) in ["web-prod", "db-prod"].into_iter().enumerate() {
            let mut expected = vec![previous[i].clone(), current(group)];
            expected.sort();
            assert_eq!(objects(group), expected, "round {round}, {group}");
            previous[i] = current(group);
        }
    }
    // carol joins db-prod, her key unchanged: one prefix (the owners object is the same), listed
    // alone; web-prod is not touched.
    s3.put_object(&leftovers[1], "# never committed\n");
    let web_prod = objects("web-prod");
    world
        .stack
        .publisher
        .write_policy(&POLICY.replace(r#"users = ["bob"]"#, r#"users = ["bob", "carol"]"#));
    let run = world.run(&["publish"]);
    assert_eq!(run.code, 0, "{run:#?}");
    let mut expected = vec![previous[1].clone(), current("db-prod")];
    expected.sort();
    assert_eq!(objects("db-prod"), expected);
    assert_eq!(objects("web-prod"), web_prod);
    assert_eq!(world.run(&["verify"]).code, 0);
}

#[test]
fn upstream_failures_leave_the_bucket_as_it_was() {
    let mut world = World::new(POLICY);
    assert_eq!(world.run(&["publish"]).code, 0);
    let published = world.stack.s3.objects();
    world.disable("bob");

    world.stack.s3.stop();
    let s3_down = world.run(&["publish"]);
    assert_eq!(s3_down.code, 1, "{s3_down:#?}");
    assert!(
        s3_down.stderr.contains("reading the published index"),
        "{}",
        s3_down.stderr
    );
    world.stack.s3.restart();
    assert_eq!(world.stack.s3.objects(), published);

    // The NFS homes unmounted: the mount point is an empty directory. That is an outage, not
    // six people without keys: nothing is written and the run fails.
    let root = world.stack.homes.root().to_path_buf();
    let mounted = root.with_extension("mounted");
    std::fs::rename(&root, &mounted).unwrap();
    std::fs::create_dir(&root).unwrap();
    let unmounted = world.run(&["publish"]);
    assert_eq!(unmounted.code, 1, "{unmounted:#?}");
    assert!(
        unmounted
            .stderr
            .contains("is empty: the homes look unmounted"),
        "{}",
        unmounted.stderr
    );
    assert_eq!(
        world.stack.s3.objects(),
        published,
        "an unmounted NFS changed the bucket"
    );
    std::fs::remove_dir(&root).unwrap();
    std::fs::rename(&mounted, &root).unwrap();

    world.stack.dc.stop();
    let ad_down = world.run(&["publish"]);
    assert_eq!(ad_down.code, 1, "{ad_down:#?}");
    assert!(
        ad_down.stderr.contains(&format!(
            "reading Active Directory: cannot connect to {}",
            world.stack.dc.ldaps_url()
        )),
        "{}",
        ad_down.stderr
    );
    assert_eq!(
        world.stack.s3.objects(),
        published,
        "an AD outage changed the bucket"
    );
}

#[test]
fn a_second_publisher_on_the_same_host_is_turned_away() {
    let world = World::new(POLICY);
    let lock = std::fs::File::create(world.stack.publisher.path("publish.lock")).unwrap();
    lock.lock().unwrap();
    let busy = world.run(&["publish"]);
    assert_eq!(busy.code, 75, "{busy:#?}");
    assert!(
        busy.stderr
            .contains("another keyhole publish holds the lock"),
        "{}",
        busy.stderr
    );
    assert!(world.stack.s3.keys().is_empty());
    drop(lock);
    assert_eq!(world.run(&["publish"]).code, 0);
}

#[test]
fn incident_response_and_unattended_operation() {
    let world = World::new(POLICY);
    let metrics = world.stack.publisher.path("keyhole.prom");
    let metrics_arg = metrics.display().to_string();

    let first = world.run(&["publish", "--metrics-file", &metrics_arg]);
    assert_eq!(first.code, 0, "{first:#?}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    for line in [
        "keyhole_publish_exit_code 0",
        "keyhole_publish_users 6",
        "keyhole_publish_keys 6",
        "keyhole_publish_groups_changed 2",
        "keyhole_publish_problems 0",
        "keyhole_publish_guard_refused 0",
        "keyhole_publish_ldap_searches 3",
        // Two group files, the owners object, the revocation list, the index.
        "keyhole_publish_s3_writes 5",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }
    let last_success = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("keyhole_publish_last_success_timestamp_seconds "))
            .map(str::to_owned)
    };
    let succeeded_at = last_success(&text).expect("a last-success line");

    // whois: the person and the access groups behind a fingerprint seen in sshd's log.
    let whois = world.run(&["whois", &world.keys["bob"].fingerprint, "--format", "json"]);
    assert_eq!(whois.code, 0, "{whois:#?}");
    assert_eq!(
        whois.json(),
        json!({
            "fingerprint": world.keys["bob"].fingerprint,
            "user": "bob",
            "access_groups": [{"name": "db-prod", "via": []}, {"name": "web-prod", "via": ["Web Team"]}]
        })
    );
    let unknown = world.run(&[
        "whois",
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("is not a key keyhole publishes"),
        "{}",
        unknown.stderr
    );

    // A bad manual edit in the bucket: a normal publish does not look at the objects, a
    // --rewrite-all puts every file back and bumps the generation.
    let web_prod = world.stack.manifest()["groups"]["web-prod"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    world.stack.s3.put_object(
        &format!("ssh/web-prod/{web_prod}"),
        "ssh-ed25519 AAAA intruder\n",
    );
    assert_eq!(world.run(&["publish"]).code, 0);
    assert_eq!(
        world.stack.group_file("web-prod"),
        "ssh-ed25519 AAAA intruder\n"
    );
    let rewrite = world.run(&["publish", "--rewrite-all"]);
    assert_eq!(rewrite.code, 0, "{rewrite:#?}");
    assert_eq!(
        world.stack.group_file("web-prod"),
        world.expected_file(
            "web-prod",
            &["alice.admin", "bob", "carol", "dave", "erin", "frank"]
        )
    );
    assert_eq!(world.manifest()["generation"], 2);

    // A run that cannot finish in time publishes nothing and says so; the metrics keep the time
    // of the last success.
    world.disable("bob");
    let before = world.stack.s3.objects();
    let late = world.run(&[
        "publish",
        "--deadline",
        "1ms",
        "--metrics-file",
        &metrics_arg,
    ]);
    assert_eq!(late.code, 1, "{late:#?}");
    assert!(
        late.stderr.contains("passed its --deadline of 1ms"),
        "{}",
        late.stderr
    );
    assert_eq!(world.stack.s3.objects(), before);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.lines().any(|l| l == "keyhole_publish_exit_code 1"),
        "{text}"
    );
    assert_eq!(last_success(&text), Some(succeeded_at));
}

/// Object keys with each content address (64 hex digits) written as `{sha256}`.
fn shapes(keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|key| {
            let mut parts: Vec<String> = key.split('/').map(str::to_owned).collect();
            for part in &mut parts {
                let (name, suffix) = part.split_once('.').unwrap_or((part.as_str(), ""));
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    *part = if suffix.is_empty() {
                        "{sha256}".to_owned()
                    } else {
                        format!("{{sha256}}.{suffix}")
                    };
                }
            }
            parts.join("/")
        })
        .collect()
}

/// A bucket in the layout keyhole wrote before group objects were addressed by content (a
/// format-1 index, `{group}/authorized_keys`, `manifest.json` and its signature) is migrated by
/// the first publish with `--migrate` (issue 23: a format-1 index names no deployment, so a plain
/// publish refuses it): every group is written to its content address under a new
/// generation, the legacy objects are removed, and an instance that followed the legacy bucket
/// follows the new one.
#[test]
fn a_legacy_bucket_is_migrated_by_the_first_publish() {
    use keyhole::bucket::index::{Index, IndexGroup, LEGACY_FORMAT};
    let world = World::new(POLICY);
    let s3 = &world.stack.s3;
    let mut legacy = Index {
        format: LEGACY_FORMAT,
        generation: 7,
        ..Index::empty()
    };
    for (group, users) in [
        (
            "web-prod",
            &["alice.admin", "bob", "carol", "dave", "erin", "frank"][..],
        ),
        ("db-prod", &["alice.admin", "bob"][..]),
    ] {
        let body = world.expected_file(group, users);
        s3.put_object(&format!("ssh/{group}/authorized_keys"), &body);
        legacy.groups.insert(
            group.into(),
            IndexGroup {
                sha256: keyhole::digest::sha256_hex(body.as_bytes()),
                users: users.len(),
                keys: users.len(),
                seal: None,
            },
        );
    }
    s3.put_object(
        "ssh/index.json",
        std::str::from_utf8(&legacy.seal(None).unwrap()).unwrap(),
    );
    s3.put_object("ssh/manifest.json", "{\"format\":1}\n");
    s3.put_object("ssh/manifest.json.sig", "legacy signature\n");

    let refused = world.run(&["publish"]);
    assert_eq!(
        refused.code, 1,
        "a legacy bucket needs --migrate: {refused:#?}"
    );
    let migrated = world.run(&["publish", "--migrate", "--format", "json"]);
    assert_eq!(migrated.code, 0, "{migrated:#?}");
    // No access changed: every group is unchanged, but written to its new address.
    let report = migrated.json();
    assert_eq!(group_plan(&report, "web-prod")["action"], "unchanged");
    assert_eq!(
        shapes(&world.stack.s3.keys()),
        [
            "ssh/_keyhole/owners/{sha256}.json",
            "ssh/_keyhole/revoked/{sha256}",
            "ssh/db-prod/{sha256}",
            "ssh/index.json",
            "ssh/web-prod/{sha256}"
        ]
    );
    let manifest = world.manifest();
    assert_eq!(manifest["format"], 2);
    assert_eq!(manifest["generation"], 8);
    assert_eq!(
        world.stack.group_file("db-prod"),
        world.expected_file("db-prod", &["alice.admin", "bob"])
    );
    let again = world.run(&["publish"]);
    assert!(again.stderr.contains("nothing changed"), "{again:#?}");
    assert_eq!(world.run(&["verify"]).code, 0);
}
