//! How keyhole's cost grows, asserted as behaviour rather than time (timings live in
//! `scripts/bench scale` and BENCHMARKS.md): against a real Samba AD DC and a real local S3, the
//! number of LDAP searches depends on the directory's size and the page size, never on how many
//! access groups the policy has, and a run where nothing changed reads only the index from S3 and
//! writes nothing.

use crate::support::samba::{Fixture, UserSpec};
use crate::support::stack::{Extra, Stack};

const USERS: usize = 24;
const TEAMS: usize = 6;
/// Small pages, so several pages of users and of groups are read and counted.
const PAGE_SIZE: usize = 5;
/// Forces ranged `member;range=` reads of the "All Staff" group.
const MEMBER_RANGE: usize = 10;

fn user(i: usize) -> String {
    format!("person{i:02}")
}

/// 24 people in 6 nested teams, two departments, and "All Staff" (every person, read in ranges).
fn company() -> Fixture {
    let mut fixture = Fixture::new();
    for i in 0..USERS {
        let name = user(i);
        fixture = fixture.user(UserSpec::unix(
            &name,
            30000 + i as u32,
            &format!("/home/{name}"),
        ));
    }
    for t in 0..TEAMS {
        let members: Vec<String> = (0..USERS).filter(|i| i % TEAMS == t).map(user).collect();
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        fixture = fixture.group(&format!("team-{t}"), &members);
    }
    let everyone: Vec<String> = (0..USERS).map(user).collect();
    let everyone: Vec<&str> = everyone.iter().map(String::as_str).collect();
    fixture
        .group("dept-a", &["team-0", "team-1", "team-2"])
        .group("dept-b", &["team-3", "team-4", "team-5", "dept-a"])
        .group("All Staff", &everyone)
        .group("Linux Admins", &["person00"])
}

/// A policy of `count` access groups, each naming a mix of nested groups and people, so a
/// publisher that asked AD per access group (or per named group) would search more.
fn policy(count: usize) -> String {
    let mut policy = String::from("[everywhere]\ngroups = [\"Linux Admins\"]\n\n");
    for g in 0..count {
        let groups = match g % 4 {
            0 => format!("\"team-{}\"", g % TEAMS),
            1 => format!("\"dept-a\", \"team-{}\"", g % TEAMS),
            2 => "\"dept-b\"".to_owned(),
            _ => "\"All Staff\"".to_owned(),
        };
        policy.push_str(&format!(
            "[access_groups.ag-{g:03}]\ngroups = [{groups}]\nusers = [\"{}\"]\n\n",
            user((g * 7) % USERS)
        ));
    }
    policy
}

/// The value of one gauge in a Prometheus textfile.
fn gauge(text: &str, name: &str) -> usize {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}")) as usize
}

/// `searches=N ranged_reads=N` from the "read the directory" log line.
fn logged_searches(stderr: &str) -> (usize, usize) {
    let field = |name: &str| {
        stderr
            .split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no {name} in the log:\n{stderr}"))
    };
    (field("searches="), field("ranged_reads="))
}

struct World {
    stack: Stack,
}

impl World {
    fn new() -> World {
        let mut stack = Stack::start(&company(), &policy(1));
        // A few people with keys are enough: the homes are not what is counted here.
        for i in 0..4 {
            let name = user(i);
            let key = stack.homes.key(&name, "ed25519");
            stack
                .homes
                .write(&name, 30000 + i as u32, &format!("{}\n", key.line));
        }
        let member_range = format!("member_range = {MEMBER_RANGE}\n");
        stack.write_settings(Extra {
            ldap: &member_range,
            ..Extra::default()
        });
        stack
            .publisher
            .env
            .push(("KEYHOLE_LDAP_PAGE_SIZE".into(), PAGE_SIZE.to_string()));
        World { stack }
    }

    /// Publishes `policy`; returns (LDAP searches, S3 writes) from the metrics file.
    fn publish(&self, access_groups: usize) -> (usize, usize) {
        self.stack.publisher.write_policy(&policy(access_groups));
        let metrics = self
            .stack
            .publisher
            .path(&format!("publish-{access_groups}.prom"));
        let metrics_arg = metrics.display().to_string();
        let run = self
            .stack
            // --full: what is counted is a read of the whole directory (between full reads, a
            // run searches only what changed: tests/incremental_directory.rs).
            .run(&[
                "publish",
                "--full",
                "--force",
                "--metrics-file",
                &metrics_arg,
            ]);
        assert_eq!(run.code, 0, "{run:#?}");
        let text = std::fs::read_to_string(&metrics).expect("the metrics file");
        let searches = gauge(&text, "keyhole_publish_ldap_searches");
        assert_eq!(
            (searches, logged_searches(&run.stderr).0),
            (searches, searches),
            "the metric and the log disagree"
        );
        (searches, gauge(&text, "keyhole_publish_s3_writes"))
    }
}

#[test]
fn ldap_searches_grow_with_the_directory_not_with_the_access_groups() {
    let world = World::new();

    let (searches_10, writes_10) = world.publish(10);
    let (searches_100, writes_100) = world.publish(100);
    assert_eq!(
        searches_10, searches_100,
        "10 and 100 access groups must cost the same LDAP searches"
    );
    // The same four people hold keys at 10 and at 100 access groups, so the owners object is
    // written once.
    assert_eq!(
        (writes_10, writes_100),
        // The first publish also writes the revocation list.
        (10 + 3, 90 + 1),
        "group objects written (the new ones only), the owners object when it changed, and the index"
    );

    // The bound: ≤ 10 + entries / page_size + ranged reads. Entries: the people plus
    // the service account and Samba's built-in users, groups likewise, so read them from the
    // log of a `members` run rather than guessing the provisioned defaults.
    let members = world.stack.run(&["members", "--format", "json"]);
    assert_eq!(members.code, 0, "{members:#?}");
    let (searches, ranged) = logged_searches(&members.stderr);
    assert_eq!(searches, searches_100, "members reads AD the same way");
    assert!(
        ranged >= USERS / MEMBER_RANGE,
        "All Staff ({USERS} members) must be read in slices of {MEMBER_RANGE}: {ranged} ranged reads"
    );
    let entries = entries_read(&members.stderr);
    assert!(
        searches <= 10 + entries / PAGE_SIZE + ranged,
        "{searches} searches for {entries} entries at page size {PAGE_SIZE} and {ranged} ranged reads"
    );

    // Nothing changed: one more run writes nothing, with 100 access groups as with 1. And it
    // reads nothing but the index: with every group object and the owners object taken out of
    // the bucket meanwhile, it still finds nothing to do.
    let s3 = &world.stack.s3;
    let taken: Vec<(String, String)> = s3
        .keys()
        .into_iter()
        .filter(|key| key != "ssh/index.json")
        .map(|key| {
            let body = s3.object(&key).unwrap();
            s3.delete_object(&key);
            (key, body)
        })
        .collect();
    assert!(taken.len() > 100, "{taken:?}");
    let (again, writes) = world.publish(100);
    assert_eq!((again, writes), (searches_100, 0));
    // It read no object's bytes (the publisher's copy of the index stands in while the index's
    // ETag is unchanged: docs/incremental-homes.md), and wrote none. Without the copy it reads
    // the index, O(access groups).
    let metrics = std::fs::read_to_string(world.stack.publisher.path("publish-100.prom"))
        .expect("the metrics file");
    let index_bytes = s3.object("ssh/index.json").unwrap().len();
    assert_eq!(
        (
            gauge(&metrics, "keyhole_publish_s3_read_bytes"),
            gauge(&metrics, "keyhole_publish_s3_written_bytes")
        ),
        (0, 0),
        "{metrics}"
    );
    assert!(
        index_bytes < 300 * 100,
        "{index_bytes} bytes for 100 access groups"
    );
    for (key, body) in &taken {
        s3.put_object(key, body);
    }
    let verified = world.stack.run(&["verify"]);
    assert_eq!(verified.code, 0, "{verified:#?}");
}

/// Users + groups read, from the "read the directory" log line (`users=N groups=N`).
fn entries_read(stderr: &str) -> usize {
    ["users=", "groups="]
        .iter()
        .map(|name| {
            stderr
                .split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no {name} in the log:\n{stderr}"))
        })
        .sum()
}
