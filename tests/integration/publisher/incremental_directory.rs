//! Incremental directory reads (`uSNChanged`, see `src/directory/usn.rs` and
//! docs/incremental-runs.md) against a real Samba AD DC: every kind of change reaches the bucket
//! within the latency the docs state, an incremental run publishes exactly what a full run of
//! the same directory would (`plan --full` finds nothing to change after each step), and a
//! state keyhole cannot trust (damaged, from another DC, from a restored DC, foreign, another
//! version) means a full read, never a wrong publish.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::homes::Key;
use crate::support::keyhole::{Run, ldap_section};
use crate::support::samba::{Fixture, SambaDc, Transport, UserSpec};
use crate::support::stack::{Extra, Stack};
use serde_json::Value;
use sha2::{Digest, Sha256};

const PEOPLE: &[(&str, u32)] = &[
    ("bob", 21001),
    ("carol", 21002),
    ("dave", 21003),
    ("erin", 21004),
    ("frank", 21005),
    ("gina", 21006),
    ("harry", 21007),
    ("ivan", 21008),
];

fn company() -> Fixture {
    let mut fixture = Fixture::new();
    for (name, uid) in PEOPLE {
        let mut user = UserSpec::unix(name, *uid, &format!("/home/{name}"));
        if *name == "gina" {
            // In Web Team only through primaryGroupID: no member link names her.
            user = user.primary_group("Web Team");
        }
        fixture = fixture.user(user);
    }
    fixture.group("Contractors", &["frank"]).group(
        "Web Team",
        &["bob", "carol", "dave", "erin", "harry", "Contractors"],
    )
}

const POLICY: &str = r#"
[access_groups.web-prod]
groups = ["Web Team"]

[access_groups.db-prod]
users = ["ivan", "bob"]
"#;

struct World {
    stack: Stack,
    _keys: BTreeMap<&'static str, Key>,
}

/// What kind of directory read a run said it made.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Full,
    Incremental,
}

impl World {
    fn new() -> World {
        let stack = Stack::start(&company(), POLICY);
        let keys = stack.give_keys(PEOPLE);
        World { stack, _keys: keys }
    }

    /// `publish` (plus `args`), which must succeed; returns the run and the kind of read it
    /// reported in its one line.
    fn publish(&self, args: &[&str]) -> (Run, Kind) {
        let mut all = vec!["publish"];
        all.extend_from_slice(args);
        let run = self.stack.run(&all);
        assert_eq!(run.code, 0, "{run:#?}");
        let kind = kind_of(&run);
        (run, kind)
    }

    /// After an incremental publish: a full read of the same directory at the same time finds
    /// nothing to change, so the objects the incremental run wrote are byte for byte the ones
    /// a full run writes.
    fn full_agrees(&self, now: Option<&str>) {
        let mut args = vec!["plan", "--full", "--detailed-exitcode", "--format", "json"];
        if let Some(now) = now {
            args.extend(["--now", now]);
        }
        let plan = self.stack.run(&args);
        assert_eq!(kind_of(&plan), Kind::Full, "{plan:#?}");
        assert_eq!(
            plan.code, 0,
            "a full read would publish something else than the incremental run did: {plan:#?}"
        );
    }

    fn users(&self, group: &str) -> Vec<String> {
        self.stack.manifest()["groups"][group]["users"]
            .as_array()
            .unwrap_or_else(|| panic!("no group {group} published"))
            .iter()
            .map(|user| user.as_str().expect("a user name").to_owned())
            .collect()
    }

    fn state_file(&self) -> PathBuf {
        self.stack.publisher.path("directory-state")
    }

    fn modify(&self, ldif: &str) {
        self.stack.dc.modify(ldif);
    }

    fn set(&self, user: &str, attribute: &str, value: &str) {
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: {attribute}\n{attribute}: {value}\n",
            self.stack.dc.user_dn(user)
        ));
    }
}

fn kind_of(run: &Run) -> Kind {
    let full = run.stderr.contains("directory: full read");
    let incremental = run.stderr.contains("directory: incremental read");
    match (full, incremental) {
        (true, false) => Kind::Full,
        (false, true) => Kind::Incremental,
        _ => panic!("the run did not say once which kind of read it made: {run:#?}"),
    }
}

/// The one line saying which kind of read and why.
fn summary(run: &Run) -> &str {
    run.stderr
        .lines()
        .find(|line| line.contains("directory: "))
        .unwrap_or_default()
}

/// Whether an incremental run found no user or group changed (Samba's own writes may still move
/// its highestCommittedUSN between runs).
fn quiet(run: &Run) -> bool {
    let line = summary(run);
    line.contains("nothing changed") || line.contains("0 user(s) and 0 group(s) changed")
}

/// A Windows FILETIME (100 ns since 1601), as accountExpires holds it.
fn filetime(time: SystemTime) -> i64 {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    (seconds + 11_644_473_600) * 10_000_000
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Disable, lock, unlock by time, expiry by time, group removal, nested group removal, a
/// rename, a deletion seen through a group, a deletion of a user the policy names, and a
/// deletion seen by nothing but the next full read: each reaches the bucket in the run the docs
/// say, and after each a full read agrees with what the incremental run published.
#[test]
fn every_kind_of_change_reaches_the_bucket_when_the_docs_say() {
    let world = World::new();
    let started = SystemTime::now();
    // dave's account expires in an hour: nothing will be written to AD when it does.
    world.set(
        "dave",
        "accountExpires",
        &filetime(started + Duration::from_secs(3600)).to_string(),
    );

    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Full, "{run:#?}");
    assert!(
        summary(&run).contains("no directory state yet"),
        "{}",
        summary(&run)
    );
    let everyone = ["bob", "carol", "dave", "erin", "frank", "gina", "harry"];
    assert_eq!(world.users("web-prod"), everyone);
    assert_eq!(world.users("db-prod"), ["bob", "ivan"]);

    // Nothing changed: an incremental run that says so and writes nothing.
    let generation = world.stack.manifest()["generation"].clone();
    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental, "{run:#?}");
    assert!(quiet(&run), "{}", summary(&run));
    assert_eq!(world.stack.manifest()["generation"], generation);

    // Disabled.
    world.set("bob", "userAccountControl", "514");
    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental, "{run:#?}");
    assert!(!world.users("web-prod").contains(&"bob".to_owned()));
    assert_eq!(world.users("db-prod"), ["ivan"]);
    world.full_agrees(None);

    // Locked out by bad passwords.
    world.stack.dc.lock_out("carol");
    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental, "{run:#?}");
    assert!(!world.users("web-prod").contains(&"carol".to_owned()));
    world.full_agrees(None);

    // Unlocked by time: the domain's 30-minute lockout ends with no write to AD.
    let later = rfc3339(SystemTime::now() + Duration::from_secs(31 * 60));
    let (run, kind) = world.publish(&["--now", &later]);
    assert_eq!(kind, Kind::Incremental, "{run:#?}");
    assert!(quiet(&run), "{}", summary(&run));
    assert!(world.users("web-prod").contains(&"carol".to_owned()));
    world.full_agrees(Some(&later));

    // Expired by time: accountExpires passes with no write to AD.
    let much_later = rfc3339(started + Duration::from_secs(2 * 3600));
    let (run, kind) = world.publish(&["--now", &much_later]);
    assert_eq!(kind, Kind::Incremental, "{run:#?}");
    assert!(!world.users("web-prod").contains(&"dave".to_owned()));
    world.full_agrees(Some(&much_later));
    // Back to the real clock: dave's account has not expired yet, carol is locked again.
    world.set("dave", "accountExpires", "0");
    world.stack.dc.unlock("carol");

    // Removed from the group.
    world.modify(&format!(
        "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n",
        world.stack.dc.group_dn("Web Team"),
        world.stack.dc.user_dn("erin")
    ));
    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental, "{run:#?}");
    assert_eq!(
        world.users("web-prod"),
        ["carol", "dave", "frank", "gina", "harry"]
    );
    world.full_agrees(None);

    // Removed from a nested group: only Contractors is written, not Web Team.
    world.modify(&format!(
        "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n",
        world.stack.dc.group_dn("Contractors"),
        world.stack.dc.user_dn("frank")
    ));
    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental, "{run:#?}");
    assert!(!world.users("web-prod").contains(&"frank".to_owned()));
    world.full_agrees(None);

    // Renamed: AD writes harry, not the group whose member he is; he keeps his access.
    world.modify(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: CN=Harry Renamed\ndeleteoldrdn: 1\n",
        world.stack.dc.user_dn("harry")
    ));
    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental, "{run:#?}");
    assert!(
        world.users("web-prod").contains(&"harry".to_owned()),
        "a rename revoked harry: {run:#?}"
    );
    world.full_agrees(None);

    // Deleted, and named directly in the policy: looked up every run.
    world.modify(&format!(
        "dn: {}\nchangetype: delete\n",
        world.stack.dc.user_dn("ivan")
    ));
    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental, "{run:#?}");
    assert!(
        world.stack.manifest()["groups"]["db-prod"]["users"]
            .as_array()
            .is_none_or(|users| users.is_empty()),
        "{run:#?}"
    );
    world.full_agrees(None);

    // Deleted while a member of Web Team (harry, through a member link) or through
    // primaryGroupID (gina): an ordinary account sees no tombstone, and Samba does not write the
    // group, so only a full read is sure to notice. ldap.full_read_interval brings it.
    world.modify(&format!(
        "dn: CN=Harry Renamed,CN=Users,{}\nchangetype: delete\n",
        world.stack.dc.base_dn()
    ));
    world.modify(&format!(
        "dn: {}\nchangetype: delete\n",
        world.stack.dc.user_dn("gina")
    ));
    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental, "{run:#?}");
    // (Two of Web Team's four go at once: past the guard's default 25 %.)
    world.stack.write_settings(Extra {
        ldap: "full_read_interval = \"1s\"\n",
        safety: "max_removed_fraction = 0.6\n",
        ..Extra::default()
    });
    std::thread::sleep(Duration::from_millis(1100));
    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Full, "{run:#?}");
    assert!(
        summary(&run).contains("ldap.full_read_interval"),
        "{}",
        summary(&run)
    );
    assert_eq!(world.users("web-prod"), ["carol", "dave"]);
}

/// Rewrites the state's JSON body with `edit` and a correct checksum (or, with `checksum`
/// false, leaves the old checksum: a damaged file).
fn tamper(path: &PathBuf, checksum: bool, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(path).expect("a directory state");
    let newline = bytes.iter().position(|&b| b == b'\n').expect("a header");
    let header = std::str::from_utf8(&bytes[..newline]).expect("a text header");
    let mut body: Value = serde_json::from_slice(&bytes[newline + 1..]).expect("a JSON body");
    edit(&mut body);
    let body = serde_json::to_vec(&body).expect("JSON");
    let mut words: Vec<String> = header.split(' ').map(str::to_owned).collect();
    if checksum {
        words[2] = hex::encode(Sha256::digest(&body));
    }
    let mut out = words.join(" ").into_bytes();
    out.push(b'\n');
    out.extend_from_slice(&body);
    std::fs::write(path, out).expect("writing the state");
}

/// The state's cached record of `name` made active again: what a stale or forged state would
/// say about someone AD has disabled.
fn reenable(body: &mut Value, name: &str) {
    for user in body["users"].as_object_mut().expect("users").values_mut() {
        if user["name"] == name {
            user["account_control"] = 512.into();
        }
    }
}

/// A way to spoil the state: the reason the full read must give, whether the checksum is
/// recomputed, and the edit.
type Case = (&'static str, bool, fn(&mut Value));

/// A damaged state, one from a restored DC (another invocationId), one of another deployment,
/// one of another format, and one from another DC: each means a full read that publishes what
/// AD says, even where the state says otherwise.
#[test]
fn a_state_keyhole_cannot_trust_means_a_full_read_never_a_wrong_publish() {
    let world = World::new();
    world.publish(&[]);
    // carol, whom the policy does not name: nothing but the state speaks for her between full
    // reads.
    world.set("carol", "userAccountControl", "514");
    let (_, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental);
    assert!(!world.users("web-prod").contains(&"carol".to_owned()));
    let state = world.state_file();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&state).expect("the state").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let cases: [Case; 4] = [
        ("checksum", false, |_| {}),
        ("invocationId changed", true, |body| {
            body["dc"]["invocation_id"] = "00".repeat(16).into();
        }),
        ("another deployment", true, |body| {
            body["binding"]["deployment"] = "s3://elsewhere/ssh/".into();
        }),
        ("no directory state", true, |_| {}),
    ];
    for (reason, checksum, edit) in cases {
        if reason == "no directory state" {
            std::fs::remove_file(&state).expect("removing the state");
        } else {
            tamper(&state, checksum, |body| {
                reenable(body, "carol");
                edit(body);
            });
        }
        let (run, kind) = world.publish(&[]);
        assert!(
            !world.users("web-prod").contains(&"carol".to_owned()),
            "{reason}: the state's stale record was published: {run:#?}"
        );
        assert_eq!(kind, Kind::Full, "{reason}: {run:#?}");
        assert!(
            summary(&run).contains(reason),
            "{reason}: {}",
            summary(&run)
        );
        // The full read wrote a good state again: the next run continues from it.
        let (run, kind) = world.publish(&[]);
        assert_eq!(kind, Kind::Incremental, "{reason}: {run:#?}");
    }

    // Another format version, with a checksum that matches.
    let bytes = std::fs::read(&state).expect("the state");
    let text = String::from_utf8(bytes).expect("text");
    std::fs::write(
        &state,
        text.replacen(
            "keyhole-directory-state 1 ",
            "keyhole-directory-state 0 ",
            1,
        ),
    )
    .expect("writing the state");
    let (run, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Full, "{run:#?}");
    assert!(summary(&run).contains("format"), "{}", summary(&run));

    // --full, asked for.
    let (run, kind) = world.publish(&["--full"]);
    assert_eq!(kind, Kind::Full, "{run:#?}");
    assert!(summary(&run).contains("--full"), "{}", summary(&run));
    // plan reads the state and never writes it.
    let before = std::fs::read(&state).expect("the state");
    world.set("dave", "userAccountControl", "514");
    let plan = world.stack.run(&["plan", "--format", "json"]);
    assert_eq!(kind_of(&plan), Kind::Incremental, "{plan:#?}");
    assert_eq!(std::fs::read(&state).expect("the state"), before);
}

/// rootDSE's highestCommittedUSN on `dc`.
fn highest_usn(dc: &SambaDc) -> u64 {
    dc.search_one(Transport::Ldaps, "", &["highestCommittedUSN"])
        .value("highestCommittedUSN")
        .and_then(|usn| usn.parse().ok())
        .expect("a highestCommittedUSN")
}

/// An entry's uSNChanged on `dc`.
fn usn_changed(dc: &SambaDc, dn: &str) -> u64 {
    dc.search_one(Transport::Ldaps, dn, &["uSNChanged"])
        .value("uSNChanged")
        .and_then(|usn| usn.parse().ok())
        .expect("a uSNChanged")
}

/// Writes dave's `title` on `dc` until its highestCommittedUSN is at least `usn`.
fn writes_until(dc: &SambaDc, usn: u64) {
    let dn = dc.user_dn("dave");
    while highest_usn(dc) < usn {
        let missing = usn - highest_usn(dc);
        let ldif: String = (0..missing.clamp(1, 200))
            .map(|i| format!("dn: {dn}\nchangetype: modify\nreplace: title\ntitle: t{i}\n\n"))
            .collect();
        dc.modify(&ldif);
    }
}

/// Another DC answers (the first is down): its USNs are its own, so a change it holds below the
/// first DC's bound would be missed by an incremental read. keyhole reads it in full.
#[test]
fn another_dc_means_a_full_read() {
    let world = World::new();
    // A second DC with the same directory (a copy of the same template, so the same
    // dsServiceName and invocationId: only the address tells them apart).
    let second = SambaDc::start(&company());
    // On the second DC, carol is disabled: one write, at a USN of that DC's.
    second.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
        second.user_dn("carol")
    ));
    let carol_there = usn_changed(&second, &second.user_dn("carol"));
    world.publish(&[]);
    // On the first, enough writes to carry its USN (the bound the state keeps) past carol's
    // write on the second...
    writes_until(&world.stack.dc, carol_there + 1);
    let (_, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental);
    assert!(world.users("web-prod").contains(&"carol".to_owned()));
    let bound = highest_usn(&world.stack.dc);
    // ...and on the second, enough to carry its USN past that bound: an incremental read there
    // would find dave's writes and miss carol's.
    writes_until(&second, bound + 1);
    assert!(usn_changed(&second, &second.user_dn("carol")) < bound);

    // The first DC is gone from the settings; the second answers.
    let settings = std::fs::read_to_string(world.stack.publisher.config()).expect("settings");
    let first = ldap_section(
        &world.stack.dc,
        &world.stack.dc.ldaps_url(),
        &world.stack.dc.ca_file(),
    );
    let other = ldap_section(&second, &second.ldaps_url(), &second.ca_file());
    assert!(settings.contains(&first));
    world
        .stack
        .publisher
        .write_settings(&settings.replacen(&first, &other, 1));
    let (run, kind) = world.publish(&[]);
    assert!(
        !world.users("web-prod").contains(&"carol".to_owned()),
        "a change on the second DC was missed: {run:#?}"
    );
    assert_eq!(kind, Kind::Full, "{run:#?}");
    assert!(
        summary(&run).contains("another domain controller"),
        "{}",
        summary(&run)
    );
    let (_, kind) = world.publish(&[]);
    assert_eq!(kind, Kind::Incremental);
}
