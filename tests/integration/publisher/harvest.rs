//! Harvesting homes and validating keys, end to end: `keyhole plan` / `keyhole publish` against a
//! real Samba AD DC, a real local S3 (s3s-fs) and homes on disk, asserting the exact bytes of
//! each access group's file in the bucket and the exact problems `plan --format json` reports.
//!
//! Three test functions, one DC start each (they queue on the machine-wide DC lock): the
//! file-safety cases (sshd `StrictModes`-grade checks; every rejected person loses access they
//! had, everyone else stays), the line-parsing cases (one bad line costs that line only), and a
//! home that cannot be read at all (its groups are held exactly as published, exit 1).
//!
//! The safety guard is relaxed in these deployments: here a run that removes most of a group is
//! the point, and the guard has its own tests in `publish.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::homes::{Key, set};
use crate::support::keyhole::Run;
use crate::support::samba::{Fixture, UserSpec};
use crate::support::stack::{Extra, Stack};
use serde_json::{Value, json};

/// A uid no fixture user has: the owner of files planted by "someone else".
const STRANGER: u32 = 29999;

/// The file-safety people; each name says what their home will hold.
const SAFETY: &[(&str, u32)] = &[
    ("ok.one", 21001),
    ("ok.two", 21002),
    ("link.out", 21003),
    ("link.peer", 21015),
    ("link.in", 21004),
    ("fifo", 21005),
    ("other.uid", 21006),
    ("group.w", 21007),
    ("world.w", 21008),
    ("ssh.gw", 21009),
    ("ssh.other", 21010),
    ("huge", 21011),
    ("dir.file", 21012),
    ("no.home", 21013),
];
/// In "Safety Crew" with a unixHomeDirectory and a sound file, but no uidNumber in AD.
const NO_UID: &str = "no.uid";
/// Who owns no.uid's files on disk: a uid AD does not know for them, so it proves nothing.
const NO_UID_DISK_OWNER: u32 = 21014;

/// The line-parsing people.
const LINES: &[(&str, u32)] = &[
    ("plain", 22001),
    ("crlf", 22002),
    ("bom", 22003),
    ("garbage", 22004),
    ("dss", 22005),
    ("rsa.short", 22006),
    ("dup", 22007),
    ("opts", 22008),
    ("env", 22009),
    ("share.a", 22010),
    ("share.b", 22011),
];

/// The unreadable-home people.
const HOLD: &[(&str, u32)] = &[("steady", 23001), ("stuck", 23002), ("mover", 23003)];

/// One fixture for every test here, so the DC template is populated once and cached.
fn fixture() -> Fixture {
    let mut fixture = Fixture::new();
    for (name, uid) in SAFETY.iter().chain(LINES).chain(HOLD) {
        fixture = fixture.user(UserSpec::unix(name, *uid, &format!("/home/{name}")));
    }
    fixture = fixture.user(UserSpec::new(NO_UID).unix_home(&format!("/home/{NO_UID}")));
    let mut safety: Vec<&str> = SAFETY.iter().map(|(name, _)| *name).collect();
    safety.push(NO_UID);
    let lines: Vec<&str> = LINES.iter().map(|(name, _)| *name).collect();
    fixture
        .group("Safety Crew", &safety)
        .group("Line Crew", &lines)
}

/// The shared stack with a guard that never refuses: these tests are about homes, not the guard.
struct World {
    stack: Stack,
}

impl World {
    fn new(policy: &str) -> World {
        let stack = Stack::start(&fixture(), policy);
        stack.write_settings(Extra {
            safety: "max_removed_fraction = 1.0\nmax_removed_users = 1000\n",
            ..Extra::default()
        });
        World { stack }
    }

    fn run(&self, args: &[&str]) -> Run {
        self.stack.run(args)
    }

    /// `publish --format json`, which must exit `code`; its plan.
    fn publish(&self, code: i32) -> Value {
        let run = self.run(&["publish", "--format", "json"]);
        assert_eq!(run.code, code, "{run:#?}");
        run.json()
    }

    /// `plan --format json`, which must exit `code`; its plan.
    fn plan(&self, code: i32) -> Value {
        let run = self.run(&["plan", "--format", "json"]);
        assert_eq!(run.code, code, "{run:#?}");
        run.json()
    }

    fn group_file(&self, group: &str) -> String {
        self.stack.group_file(group)
    }

    fn manifest(&self) -> Value {
        self.stack.manifest()
    }

    /// A fresh key for `user` (`tag` keeps several keys of one person apart).
    fn key(&self, user: &str, tag: &str, kind: &str) -> Key {
        self.stack.homes.key(&format!("{user}-{tag}"), kind)
    }
}

/// A group file as a person would write it: the header, then each `(user, key lines)` block,
/// opened by the user's name and the AD group that gives the access (none for named users).
fn group_file(group: &str, blocks: &[(&str, Vec<String>)]) -> String {
    let via = match group {
        "crew" => " via Safety Crew",
        "lines" => " via Line Crew",
        _ => "",
    };
    let mut file = format!("# keyhole access group {group}: generated, do not edit\n");
    for (user, lines) in blocks {
        file.push_str(&format!("# {user}{via}\n"));
        for line in lines {
            file.push_str(line);
            file.push('\n');
        }
    }
    file
}

/// The JSON problems keyhole must report, sorted as it sorts them (by user, then reason).
fn problems(expected: &[(&str, String)]) -> Value {
    let mut expected: Vec<(&str, &str)> = expected
        .iter()
        .map(|(user, reason)| (*user, reason.as_str()))
        .collect();
    expected.sort();
    Value::Array(
        expected
            .into_iter()
            .map(|(user, reason)| json!({"user": user, "reason": reason}))
            .collect(),
    )
}

fn removed(users: &[&str], reason: &str) -> Value {
    Value::Array(
        users
            .iter()
            .map(|user| json!({"name": user, "reason": reason}))
            .collect(),
    )
}

fn rejected(reason: &str) -> String {
    format!("authorized_keys rejected: {reason}")
}

fn uid_of(people: &[(&str, u32)], user: &str) -> u32 {
    people
        .iter()
        .find(|(name, _)| *name == user)
        .map(|(_, uid)| *uid)
        .unwrap_or_else(|| panic!("{user} is not in the fixture"))
}

#[test]
fn unsafe_files_cost_their_owner_access_and_nobody_else() {
    let world = World::new("[access_groups.crew]\ngroups = [\"Safety Crew\"]\n");
    let uid = |user| uid_of(SAFETY, user);

    // First everyone with a home has one sound key; no.home has no home at all, and no.uid's
    // sound-looking file cannot be trusted without a uidNumber to check its owner against.
    let mut keys: BTreeMap<&str, Key> = BTreeMap::new();
    for (name, uid) in SAFETY {
        if *name == "no.home" {
            continue;
        }
        let key = world.key(name, "first", "ed25519");
        world
            .stack
            .homes
            .write(name, *uid, &format!("{}\n", key.line));
        keys.insert(name, key);
    }
    let no_uid_key = world.key(NO_UID, "first", "ed25519");
    world
        .stack
        .homes
        .write(NO_UID, NO_UID_DISK_OWNER, &format!("{}\n", no_uid_key.line));
    let no_uid_problem = (
        NO_UID,
        rejected("the account has no uidNumber, so the owner of its files cannot be checked"),
    );

    let first = world.publish(0);
    assert_eq!(
        first["problems"],
        problems(std::slice::from_ref(&no_uid_problem))
    );
    let everyone: Vec<(&str, Vec<String>)> = keys
        .iter()
        .map(|(name, key)| (*name, vec![key.line.clone()]))
        .collect();
    assert_eq!(world.group_file("crew"), group_file("crew", &everyone));
    assert_eq!(
        world.manifest()["groups"]["crew"]["users"],
        json!(keys.keys().collect::<Vec<_>>())
    );

    // Now each of them but ok.one and ok.two changes their home in one unsafe way (link.in in a
    // safe way: a symlink to a file of their own, inside their home, with a new key).
    world
        .stack
        .homes
        .link_authorized_keys("link.out", uid("link.out"), Path::new("/etc/passwd"));
    // A link to a colleague's file would let their keys in as this person: outside the home.
    world.stack.homes.link_authorized_keys(
        "link.peer",
        uid("link.peer"),
        Path::new("../../ok.one/.ssh/authorized_keys"),
    );

    let dotfiles = world.stack.homes.home("link.in").join("dotfiles");
    std::fs::create_dir(&dotfiles).unwrap();
    set(&dotfiles, uid("link.in"), 0o755);
    let linked_key = world.key("link.in", "linked", "ed25519");
    std::fs::write(
        dotfiles.join("authorized_keys"),
        format!("{}\n", linked_key.line),
    )
    .unwrap();
    set(&dotfiles.join("authorized_keys"), uid("link.in"), 0o600);
    world.stack.homes.link_authorized_keys(
        "link.in",
        uid("link.in"),
        Path::new("../dotfiles/authorized_keys"),
    );

    world.stack.homes.fifo_authorized_keys("fifo", uid("fifo"));
    set(
        &world.stack.homes.authorized_keys("other.uid"),
        STRANGER,
        0o600,
    );
    set(
        &world.stack.homes.authorized_keys("group.w"),
        uid("group.w"),
        0o620,
    );
    set(
        &world.stack.homes.authorized_keys("world.w"),
        uid("world.w"),
        0o602,
    );
    set(
        &world.stack.homes.home("ssh.gw").join(".ssh"),
        uid("ssh.gw"),
        0o770,
    );
    set(
        &world.stack.homes.home("ssh.other").join(".ssh"),
        STRANGER,
        0o700,
    );
    // 5 MiB: the person's key first, then comments; too big to read at all.
    let mut huge = format!("{}\n", keys["huge"].line);
    let filler = format!("# {}\n", "x".repeat(1021));
    while huge.len() + filler.len() <= 5 * 1024 * 1024 {
        huge.push_str(&filler);
    }
    huge.push_str(&"#".repeat(5 * 1024 * 1024 - huge.len() - 1));
    huge.push('\n');
    assert_eq!(huge.len(), 5 * 1024 * 1024);
    world.stack.homes.write("huge", uid("huge"), &huge);
    world
        .stack
        .homes
        .dir_authorized_keys("dir.file", uid("dir.file"));

    // A FIFO opened blocking would hang until the 5 s read_timeout and come back as unknown
    // (exit 1, "keys unknown"); exit 0 and the FIFO's own reason show it was refused at once.
    let second = world.publish(0);
    let lost = [
        "dir.file",
        "fifo",
        "group.w",
        "huge",
        "link.out",
        "link.peer",
        "other.uid",
        "ssh.gw",
        "ssh.other",
        "world.w",
    ];
    let expected_problems = [
        no_uid_problem,
        (
            "link.out",
            rejected(
                "authorized_keys is a symbolic link to /etc/passwd, outside the home directory",
            ),
        ),
        (
            "link.peer",
            rejected(&format!(
                "authorized_keys is a symbolic link to {}, outside the home directory",
                world
                    .stack
                    .homes
                    .root()
                    .canonicalize()
                    .unwrap()
                    .join("ok.one/.ssh/authorized_keys")
                    .display()
            )),
        ),
        (
            "fifo",
            rejected("authorized_keys is a FIFO, not a regular file"),
        ),
        (
            "other.uid",
            rejected(&format!(
                "authorized_keys is owned by uid {STRANGER}, not {}",
                uid("other.uid")
            )),
        ),
        (
            "group.w",
            rejected("authorized_keys is group-writable (mode 0620)"),
        ),
        (
            "world.w",
            rejected("authorized_keys is world-writable (mode 0602)"),
        ),
        ("ssh.gw", rejected(".ssh is group-writable (mode 0770)")),
        (
            "ssh.other",
            rejected(&format!(
                ".ssh is owned by uid {STRANGER}, not {}",
                uid("ssh.other")
            )),
        ),
        (
            "huge",
            rejected("authorized_keys is 5242880 bytes, more than the limit of 1048576"),
        ),
        (
            "dir.file",
            rejected("authorized_keys is a directory, not a regular file"),
        ),
    ];
    assert_eq!(second["problems"], problems(&expected_problems));
    let crew = &second["groups"]["crew"];
    assert_eq!(crew["action"], "update");
    assert_eq!(crew["added_users"], json!([]));
    assert_eq!(crew["removed_users"], removed(&lost, "no valid keys"));
    assert_eq!(crew["added_fingerprints"], json!([linked_key.fingerprint]));
    let mut gone: Vec<&str> = lost
        .iter()
        .map(|user| keys[user].fingerprint.as_str())
        .chain([keys["link.in"].fingerprint.as_str()])
        .collect();
    gone.sort();
    assert_eq!(crew["removed_fingerprints"], json!(gone));

    assert_eq!(
        world.group_file("crew"),
        group_file(
            "crew",
            &[
                ("link.in", vec![linked_key.line.clone()]),
                ("ok.one", vec![keys["ok.one"].line.clone()]),
                ("ok.two", vec![keys["ok.two"].line.clone()]),
            ]
        )
    );
    let manifest = world.manifest();
    assert_eq!(manifest["generation"], 2);
    assert_eq!(
        manifest["groups"]["crew"]["users"],
        json!(["link.in", "ok.one", "ok.two"])
    );

    // What is on disk now is what is published: nothing more to do, and still the same problems.
    let again = world.run(&["plan", "--format", "json", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{again:#?}");
    assert_eq!(again.json()["problems"], problems(&expected_problems));
}

#[test]
fn each_bad_line_costs_only_itself() {
    let world = World::new("[access_groups.lines]\ngroups = [\"Line Crew\"]\n");
    let uid = |user| uid_of(LINES, user);
    let ed = |user, tag| world.key(user, tag, "ed25519");

    let plain = ed("plain", "1");
    world
        .stack
        .homes
        .write("plain", uid("plain"), &format!("{}\n", plain.line));

    let crlf = [ed("crlf", "1"), ed("crlf", "2")];
    world.stack.homes.write(
        "crlf",
        uid("crlf"),
        &format!("{}\r\n{}\r\n", crlf[0].line, crlf[1].line),
    );

    let bom = ed("bom", "1");
    world
        .stack
        .homes
        .write("bom", uid("bom"), &format!("\u{feff}{}\n", bom.line));

    let garbage = ed("garbage", "1");
    let other = ed("garbage", "2");
    let latin1 = ed("garbage", "3");
    let blob = |key: &Key| key.line.split(' ').nth(1).unwrap().to_owned();
    world.stack.homes.write(
        "garbage",
        uid("garbage"),
        &format!(
            "this is not a key\n\
             {}\n\
             # a comment is fine\n\
             \n\
             ssh-ed25519 {}\n\
             ssh-rsa {} mislabelled\n\
             ssh-ed25519 not!base64\n\
             {} \x1b[2Jcleared\n",
            garbage.line,
            &blob(&other)[..20],
            blob(&other),
            other.line,
        ),
    );
    // One Latin-1 byte in a comment (as an old editor saves "café"): the key still counts, the
    // byte becomes U+FFFD.
    let mut bytes = std::fs::read(world.stack.homes.authorized_keys("garbage")).unwrap();
    bytes.extend_from_slice(latin1.line.as_bytes());
    bytes.extend_from_slice(b" caf\xe9\n");
    std::fs::write(world.stack.homes.authorized_keys("garbage"), bytes).unwrap();

    let dsa = world.key("dss", "dsa", "dsa");
    let dss_ok = ed("dss", "1");
    world.stack.homes.write(
        "dss",
        uid("dss"),
        &format!("{}\n{}\n", dsa.line, dss_ok.line),
    );

    let rsa_1024 = world.key("rsa.short", "1024", "rsa -b 1024");
    let rsa_2048 = world.key("rsa.short", "2048", "rsa -b 2048");
    world.stack.homes.write(
        "rsa.short",
        uid("rsa.short"),
        &format!("{}\n{}\n", rsa_1024.line, rsa_2048.line),
    );

    let dup = ed("dup", "1");
    world.stack.homes.write(
        "dup",
        uid("dup"),
        &format!("{0}\n{0}\nno-pty {0}\n", dup.line),
    );

    let opts = ed("opts", "1");
    let opts_line = format!(
        "from=\"10.0.0.1,10.0.0.2\",command=\"echo a,b\" {}",
        opts.line
    );
    world
        .stack
        .homes
        .write("opts", uid("opts"), &format!("{opts_line}\n"));

    let env = [ed("env", "1"), ed("env", "2")];
    world.stack.homes.write(
        "env",
        uid("env"),
        &format!("environment=\"X=1\" {}\n{}\n", env[0].line, env[1].line),
    );

    // One key pair in two people's files: nobody can say whose it is.
    let shared = ed("share", "both");
    let share_a = ed("share.a", "own");
    world.stack.homes.write(
        "share.a",
        uid("share.a"),
        &format!("{}\n{}\n", shared.line, share_a.line),
    );
    world
        .stack
        .homes
        .write("share.b", uid("share.b"), &format!("{}\n", shared.line));

    let plan = world.plan(0);
    let line = |user, number: usize, reason: &str| {
        (user, format!("authorized_keys line {number}: {reason}"))
    };
    let shared_reason = format!(
        "key {} is also in the files of share.a, share.b; dropped from all of them",
        shared.fingerprint
    );
    let expected_problems = [
        line("garbage", 1, "invalid: unknown key type \"this\""),
        line(
            "garbage",
            5,
            "invalid: key data is not a valid ssh-ed25519 key (length invalid)",
        ),
        line(
            "garbage",
            6,
            "invalid: key type mismatch: the line says ssh-rsa but the key data is \"ssh-ed25519\"",
        ),
        line(
            "garbage",
            7,
            "invalid: key data is not valid base64 (Invalid symbol 33, offset 3.)",
        ),
        line(
            "garbage",
            8,
            &format!(
                "invalid: control character U+001B at column {}",
                other.line.chars().count() + 2
            ),
        ),
        line("dss", 1, "ssh-dss (DSA) keys are never accepted"),
        line(
            "rsa.short",
            1,
            "RSA key of 1024 bits is shorter than the minimum of 2048 bits",
        ),
        line("dup", 2, "duplicate of the key on line 1"),
        line("dup", 3, "duplicate of the key on line 1"),
        line(
            "env",
            1,
            "option \"environment\" is in [keys] forbidden_options (environment variables can change what the login shell or a forced command runs)",
        ),
        ("share.a", shared_reason.clone()),
        ("share.b", shared_reason),
    ];
    assert_eq!(plan["problems"], problems(&expected_problems));

    let published = world.publish(0);
    assert_eq!(published["problems"], problems(&expected_problems));
    assert_eq!(
        world.group_file("lines"),
        group_file(
            "lines",
            &[
                ("bom", vec![bom.line.clone()]),
                ("crlf", vec![crlf[0].line.clone(), crlf[1].line.clone()]),
                ("dss", vec![dss_ok.line.clone()]),
                ("dup", vec![dup.line.clone()]),
                ("env", vec![env[1].line.clone()]),
                (
                    "garbage",
                    vec![garbage.line.clone(), format!("{} caf\u{fffd}", latin1.line)],
                ),
                ("opts", vec![opts_line.clone()]),
                ("plain", vec![plain.line.clone()]),
                ("rsa.short", vec![rsa_2048.line.clone()]),
                ("share.a", vec![share_a.line.clone()]),
            ]
        )
    );
    let manifest = world.manifest();
    assert!(
        manifest["fingerprints"].get(&shared.fingerprint).is_none(),
        "{manifest:#}"
    );
    assert_eq!(manifest["groups"]["lines"]["keys"], 12);

    // Dropped lines and odd line endings render the same way every time: nothing to write.
    let again = world.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{again:#?}");

    // A cap on keys per person: crlf's second key goes, and crlf is told which line and why.
    let mut env = world.stack.publisher.env.clone();
    env.push(("KEYHOLE_KEYS_MAX_KEYS_PER_USER".to_owned(), "1".to_owned()));
    let capped = crate::support::keyhole::run_keyhole(
        &world.stack.publisher.config(),
        &["plan", "--format", "json"],
        &env,
    );
    assert_eq!(capped.code, 0, "{capped:#?}");
    let capped_problems = capped.json()["problems"].clone();
    assert!(
        capped_problems.as_array().unwrap().contains(&json!({
            "user": "crlf",
            "reason": "authorized_keys line 2: more than [keys] max_keys_per_user (1) keys; only the first 1 are published"
        })),
        "{capped_problems:#}"
    );
}

#[test]
fn an_unreadable_home_keeps_only_its_owners_published_keys() {
    let world = World::new(
        "[access_groups.ops]\nusers = [\"steady\", \"stuck\", \"mover\"]\n\n\
         [access_groups.solo]\nusers = [\"mover\"]\n\n\
         [access_groups.calm]\nusers = [\"steady\"]\n",
    );
    let uid = |user| uid_of(HOLD, user);
    let mut keys: BTreeMap<&str, Key> = BTreeMap::new();
    for (name, uid) in HOLD {
        let key = world.key(name, "first", "ed25519");
        world
            .stack
            .homes
            .write(name, *uid, &format!("{}\n", key.line));
        keys.insert(name, key);
    }
    world.publish(0);
    let calm = world.group_file("calm");

    // stuck's home now fails to open with an I/O error that is neither "missing" nor a reason to
    // distrust the file: ENAMETOOLONG, through a symlink to a name longer than NAME_MAX. (An
    // unprivileged EACCES would be more typical, but these tests run as root.) Meanwhile mover
    // replaces their key, which changes both ops and solo: that change must not wait for stuck.
    let stuck_home = world.stack.homes.home("stuck");
    let hidden = world.stack.homes.root().join("stuck.real");
    std::fs::rename(&stuck_home, &hidden).unwrap();
    std::os::unix::fs::symlink(world.stack.homes.root().join("n".repeat(300)), &stuck_home)
        .unwrap();
    let moved = world.key("mover", "second", "ed25519");
    world
        .stack
        .homes
        .write("mover", uid("mover"), &format!("{}\n", moved.line));

    let expected_problems = [(
        "stuck",
        format!(
            "keys unknown: reading {}: File name too long (os error 36)",
            stuck_home.display()
        ),
    )];
    let plan = world.plan(1);
    assert_eq!(plan["problems"], problems(&expected_problems));

    let held = world.publish(1);
    assert_eq!(held["problems"], problems(&expected_problems));
    assert_eq!(held["groups"]["ops"]["action"], "update");
    assert_eq!(held["groups"]["calm"]["action"], "unchanged");
    assert_eq!(held["groups"]["solo"]["action"], "update");
    // ops has mover's new key; stuck keeps exactly the line published for them, nothing else.
    let ops_now = group_file(
        "ops",
        &[
            ("mover", vec![moved.line.clone()]),
            ("steady", vec![keys["steady"].line.clone()]),
            ("stuck", vec![keys["stuck"].line.clone()]),
        ],
    );
    assert_eq!(world.group_file("ops"), ops_now);
    assert_eq!(world.group_file("calm"), calm);
    assert_eq!(
        world.group_file("solo"),
        group_file("solo", &[("mover", vec![moved.line.clone()])])
    );
    let manifest = world.manifest();
    assert_eq!(manifest["generation"], 2);
    assert_eq!(
        manifest["fingerprints"][&keys["stuck"].fingerprint],
        json!({"user": "stuck", "groups": ["ops"]})
    );
    assert!(
        manifest["fingerprints"]
            .get(&keys["mover"].fingerprint)
            .is_none(),
        "{manifest:#}"
    );
    assert_eq!(
        manifest["fingerprints"][&moved.fingerprint],
        json!({"user": "mover", "groups": ["ops", "solo"]})
    );

    // The home is back with the same key: nothing left to catch up.
    std::fs::remove_file(&stuck_home).unwrap();
    std::fs::rename(&hidden, &stuck_home).unwrap();
    let caught_up = world.publish(0);
    assert_eq!(caught_up["problems"], json!([]));
    assert_eq!(caught_up["groups"]["ops"]["action"], "unchanged");
    assert_eq!(world.group_file("ops"), ops_now);
}
