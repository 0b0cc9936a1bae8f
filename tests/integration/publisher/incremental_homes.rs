//! Incremental runs, the homes side (issue 26 items 4-6): against a real Samba AD DC and s3s-fs,
//! driving the built binary. Between full reads a run reads the text only of the homes whose
//! `.ssh`/`authorized_keys` identity changed, yet every change reaches the bucket in the next run,
//! every StrictModes rejection still applies, a damaged homes state means a full read, the objects
//! are the ones a full read makes, and a run where nothing changed reads O(access groups) bytes
//! from S3 even when some key is in two people's files (docs/incremental-homes.md).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::fault_proxy::{FaultProxy, Mode};
use crate::support::homes::Key;
use crate::support::keyhole::{Run, ldap_section};
use crate::support::samba::{Fixture, UserSpec};
use crate::support::stack::Stack;

const PEOPLE: &[(&str, u32)] = &[
    ("alice", 21001),
    ("bob", 21002),
    ("carol", 21003),
    ("dave", 21004),
    ("erin", 21005),
    ("frank", 21006),
];

fn company() -> Fixture {
    let mut fixture = Fixture::new();
    for (name, uid) in PEOPLE {
        fixture = fixture.user(UserSpec::unix(name, *uid, &format!("/home/{name}")));
    }
    let everyone: Vec<&str> = PEOPLE.iter().map(|(name, _)| *name).collect();
    fixture
        .group("Web Team", &everyone)
        .group("DB Team", &["bob", "carol", "erin"])
}

/// `count` access groups, alternately of the Web Team and of the DB Team.
fn policy(count: usize) -> String {
    (0..count)
        .map(|g| {
            let team = if g % 2 == 0 { "Web Team" } else { "DB Team" };
            format!("[access_groups.ag-{g:02}]\ngroups = [\"{team}\"]\n\n")
        })
        .collect()
}

fn uid(user: &str) -> u32 {
    PEOPLE.iter().find(|(name, _)| *name == user).unwrap().1
}

/// Long enough after a write that its file's identity is no longer racy (see
/// `keyhole::publisher::homes::RACY_WINDOW`): a run started after it remembers what it read.
fn settle() {
    std::thread::sleep(keyhole::publisher::homes::RACY_WINDOW + Duration::from_millis(300));
}

/// The homes line a run printed.
fn homes_line(run: &Run) -> String {
    run.stderr
        .lines()
        .find(|line| line.contains("homes: "))
        .unwrap_or_else(|| panic!("no homes line in:\n{}", run.stderr))
        .to_owned()
}

struct World {
    stack: Stack,
    keys: BTreeMap<&'static str, Key>,
    groups: usize,
}

impl World {
    /// Everyone with one key, published once (a full read: there is no state yet), and published
    /// again after the files settled (a full read would be due only after the interval).
    fn new(groups: usize) -> World {
        let stack = Stack::start(&company(), &policy(groups));
        let world = World {
            keys: stack.give_keys(PEOPLE),
            stack,
            groups,
        };
        let first = world.publish(&[]);
        assert!(
            homes_line(&first).contains("full read of 6 (no homes state yet"),
            "{first:#?}"
        );
        settle();
        world.publish(&[]);
        world
    }

    fn publish(&self, args: &[&str]) -> Run {
        let mut all = vec!["publish"];
        all.extend_from_slice(args);
        let run = self.stack.run(&all);
        assert!(run.code == 0 || run.code == 1, "{run:#?}");
        run
    }

    fn write_keys(&self, user: &str, lines: &[&str]) {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        self.stack.homes.write(user, uid(user), &text);
    }

    fn state(&self) -> std::path::PathBuf {
        self.stack.publisher.path("homes-state")
    }

    /// Every group's file as published.
    fn files(&self) -> BTreeMap<String, String> {
        (0..self.groups)
            .map(|g| {
                let name = format!("ag-{g:02}");
                let file = self.stack.group_file(&name);
                (name, file)
            })
            .collect()
    }
}

/// Item 4: a key added, replaced in place (same size, same inode) or removed reaches the bucket
/// in the next run, and a run reads again only the home that changed.
#[test]
fn a_key_added_or_removed_in_a_home_reaches_the_bucket_in_the_next_run() {
    let world = World::new(2);
    // Nothing changed and everything settled: nothing re-read.
    let quiet = world.publish(&[]);
    let line = homes_line(&quiet);
    assert!(line.contains("homes: 0 of 6 re-read"), "{line}");
    assert!(line.contains("full read due in"), "{line}");

    // bob adds a key.
    let added = world.stack.homes.key("bob-added", "ed25519");
    world.write_keys("bob", &[&world.keys["bob"].line, &added.line]);
    let run = world.publish(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        homes_line(&run).contains("homes: 1 of 6 re-read (1 identity changed"),
        "{}",
        homes_line(&run)
    );
    assert!(world.stack.group_file("ag-00").contains(&added.line));
    assert!(world.stack.group_file("ag-01").contains(&added.line));

    // carol's file rewritten in place: same inode, same size, another key.
    settle();
    world.publish(&[]);
    let swapped = world.stack.homes.key("carol-swap", "ed25519");
    let file = world.stack.homes.authorized_keys("carol");
    let before = std::fs::metadata(&file).unwrap();
    let text = format!(
        "{}\n",
        swapped.line.replace("carol-swap@test", "carol@test")
    );
    assert_eq!(text.len() as u64, before.len(), "the same size");
    std::fs::write(&file, &text).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), before.ino());
    let run = world.publish(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    let web = world.stack.group_file("ag-00");
    assert!(
        web.contains(swapped.line.split(' ').nth(1).unwrap()),
        "{web}"
    );
    assert!(!web.contains(&world.keys["carol"].line), "{web}");

    // bob removes the key he added.
    world.write_keys("bob", &[&world.keys["bob"].line]);
    let run = world.publish(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(!world.stack.group_file("ag-00").contains(&added.line));
    assert!(
        world
            .stack
            .group_file("ag-00")
            .contains(&world.keys["bob"].line)
    );
    // dave removes his whole file: no keys, published in the next run too.
    std::fs::remove_file(world.stack.homes.authorized_keys("dave")).unwrap();
    let run = world.publish(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        !world
            .stack
            .group_file("ag-00")
            .contains(&world.keys["dave"].line)
    );
}

/// Item 4: StrictModes holds on an incremental run. `.ssh` made group-writable, a home (the
/// parent of `.ssh`) made group-writable, `authorized_keys` given to another owner: each is
/// rejected in the next run although the text was remembered, and accepted again once fixed.
#[test]
fn a_home_made_group_writable_is_still_rejected_on_an_incremental_run() {
    let world = World::new(2);
    let quiet = world.publish(&[]);
    assert!(homes_line(&quiet).contains("homes: 0 of 6 re-read"));
    let served = |user: &str| {
        world
            .stack
            .group_file("ag-00")
            .contains(&world.keys[user].line)
    };
    let mode = |path: std::path::PathBuf, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };

    // The home itself, whose times are not part of the identity.
    mode(world.stack.homes.home("bob"), 0o775);
    let run = world.publish(&["--force"]);
    assert!(!served("bob"), "{run:#?}");
    assert!(
        run.stdout
            .contains("the home directory is group-writable (mode 0775)"),
        "{}",
        run.stdout
    );
    mode(world.stack.homes.home("bob"), 0o755);
    world.publish(&[]);
    assert!(served("bob"));

    // .ssh
    settle();
    world.publish(&[]);
    mode(world.stack.homes.home("carol").join(".ssh"), 0o770);
    let run = world.publish(&["--force"]);
    assert!(!served("carol"), "{run:#?}");
    assert!(
        run.stdout.contains(".ssh is group-writable (mode 0770)"),
        "{}",
        run.stdout
    );
    // The file, given to root.
    settle();
    world.publish(&[]);
    std::os::unix::fs::chown(world.stack.homes.authorized_keys("dave"), Some(0), None).unwrap();
    let run = world.publish(&["--force"]);
    assert!(!served("dave"), "{run:#?}");
    assert!(
        run.stdout
            .contains("authorized_keys is owned by uid 0, not 21004"),
        "{}",
        run.stdout
    );
    // A rejected home is looked at again every run: fixed, it is served in the next one.
    mode(world.stack.homes.home("carol").join(".ssh"), 0o700);
    let run = world.publish(&[]);
    assert!(served("carol"), "{run:#?}");
}

/// Item 6: a damaged homes state means a full read, never a wrong publish. The state is
/// damaged so as to give bob an intruder's key (the checksum no longer matches): the run reads
/// every home in full, publishes bob's own key only, and writes a good state again. `--full`
/// forces a full read; a state readable by others is not used.
#[test]
fn a_damaged_homes_state_means_a_full_read() {
    let world = World::new(2);
    let state = std::fs::read_to_string(world.state()).unwrap();
    let mode = std::fs::metadata(world.state())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(state.starts_with("keyhole-homes-state 1 "), "{state}");
    let bob = world.keys["bob"].line.split(' ').nth(1).unwrap().to_owned();
    assert!(state.contains(&bob));

    let intruder = world.stack.homes.key("intruder", "ed25519");
    let intruder_blob = intruder.line.split(' ').nth(1).unwrap();
    std::fs::write(world.state(), state.replace(&bob, intruder_blob)).unwrap();
    let run = world.publish(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    let line = homes_line(&run);
    assert!(line.contains("homes: full read of 6"), "{line}");
    assert!(line.contains("checksum does not match"), "{line}");
    let file = world.stack.group_file("ag-00");
    assert!(!file.contains(intruder_blob), "{file}");
    assert!(file.contains(&world.keys["bob"].line), "{file}");
    // The full read wrote a good state: the next run is incremental again.
    settle();
    world.publish(&[]);
    assert!(homes_line(&world.publish(&[])).contains("homes: 0 of 6 re-read"));

    // --full
    let forced = world.publish(&["--full"]);
    assert!(
        homes_line(&forced).contains("homes: full read of 6 (--full)"),
        "{}",
        homes_line(&forced)
    );
    // Readable by others (a state anyone could have written is not trusted).
    std::fs::set_permissions(world.state(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = world.publish(&[]);
    assert!(
        homes_line(&run).contains("mode 0644"),
        "{}",
        homes_line(&run)
    );
    // The interval: with a full read due every second, the next run is a full read.
    std::thread::sleep(Duration::from_millis(1_100));
    let mut env = world.stack.publisher.env.clone();
    env.push(("KEYHOLE_HOMES_FULL_READ_INTERVAL".into(), "1s".into()));
    let due =
        crate::support::keyhole::run_keyhole(&world.stack.publisher.config(), &["publish"], &env);
    assert!(
        homes_line(&due).contains("homes.full_read_interval is 1s"),
        "{due:#?}"
    );
}

/// Item 4 "done when": after changes read incrementally, a full read publishes byte-identical
/// objects: `plan --full` finds nothing to change and `publish --full` writes nothing.
#[test]
fn incremental_run_objects_are_byte_identical_to_a_full_run() {
    let world = World::new(4);
    // A mix of changes, each read incrementally.
    let second = world.stack.homes.key("alice-second", "ed25519");
    world.write_keys("alice", &[&world.keys["alice"].line, &second.line]);
    std::fs::remove_file(world.stack.homes.authorized_keys("erin")).unwrap();
    let run = world.publish(&[]);
    assert!(homes_line(&run).contains("of 6 re-read"), "{run:#?}");
    settle();
    let run = world.publish(&[]);
    assert!(homes_line(&run).contains("of 6 re-read"), "{run:#?}");
    // Every text now comes from the state; erin, without keys, is looked at again every run.
    let run = world.publish(&[]);
    assert!(
        homes_line(&run).contains("1 of 6 re-read (0 identity changed, 1 not remembered)"),
        "{run:#?}"
    );
    assert!(world.stack.group_file("ag-00").contains(&second.line));
    let incremental = world.files();
    let objects = world.stack.s3.contents_and_times();

    let plan = world.stack.run(&["plan", "--full", "--detailed-exitcode"]);
    assert_eq!(
        plan.code, 0,
        "a full read would change something: {plan:#?}"
    );
    assert!(homes_line(&plan).contains("full read of 6 (--full)"));
    let full = world.publish(&["--full"]);
    assert_eq!(full.code, 0, "{full:#?}");
    assert!(homes_line(&full).contains("full read of 6 (--full)"));
    assert_eq!(world.files(), incremental);
    assert_eq!(
        world.stack.s3.contents_and_times(),
        objects,
        "the full run wrote something"
    );
}

/// Item 5: with keys in two people's files (contested, so the owners records are needed), a run
/// where nothing changed reads the index and not one byte of the owners object: at most 300
/// bytes per access group on the wire, counted by a proxy between keyhole and s3s-fs.
#[test]
fn a_no_change_run_with_contested_keys_reads_at_most_300_bytes_per_access_group() {
    const GROUPS: usize = 20;
    let stack = Stack::start(&company(), &policy(GROUPS));
    // Five keys each, so the owners object is far bigger than the index's share of a group,
    // and one key in both bob's and carol's files: contested.
    let shared = stack.homes.key("shared", "ed25519");
    for (name, uid) in PEOPLE {
        let mut text: String = (0..5)
            .map(|k| {
                format!(
                    "{}\n",
                    stack.homes.key(&format!("{name}-{k}"), "ed25519").line
                )
            })
            .collect();
        if matches!(*name, "bob" | "carol") {
            text.push_str(&format!("{}\n", shared.line));
        }
        stack.homes.write(name, *uid, &text);
    }

    let proxy = FaultProxy::start(
        stack
            .s3
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
        Mode::Http(Vec::new()),
    );
    let (signing_key, _) = stack.publisher.signing_key();
    let settings = |endpoint: &str| {
        let ldap = ldap_section(&stack.dc, &stack.dc.ldaps_url(), &stack.dc.ca_file());
        stack.publisher.write_settings(&format!(
            "{ldap}{}{}\n[safety]\nlock_file = \"{}\"\n\n[signing]\nkey_file = \"{}\"\n",
            stack
                .s3
                .settings("ssh/")
                .replace(&stack.s3.endpoint(), endpoint),
            stack.homes.settings(),
            stack.publisher.path("publish.lock").display(),
            signing_key.display(),
        ));
    };
    settings(&proxy.http_url());
    let metrics = stack.publisher.path("run.prom");
    let metrics_arg = metrics.display().to_string();
    let publish = || {
        let run = stack.run(&["publish", "--metrics-file", &metrics_arg]);
        assert_eq!(run.code, 0, "{run:#?}");
        let text = std::fs::read_to_string(&metrics).unwrap();
        let read = text
            .lines()
            .find_map(|line| line.strip_prefix("keyhole_publish_s3_read_bytes "))
            .unwrap()
            .trim()
            .parse::<f64>()
            .unwrap() as usize;
        (run, read)
    };
    let (first, _) = publish();
    let first_index = stack.s3.object("ssh/index.json").unwrap();
    assert!(
        first.stdout.contains("also in the files of bob, carol"),
        "the key must be contested: {}",
        first.stdout
    );
    settle();
    publish();

    // The run measured: nothing changed.
    let wire_before = proxy.server_bytes();
    let seen_before = proxy.seen().len();
    let (quiet, body_bytes) = publish();
    let wire = proxy.server_bytes() - wire_before;
    let seen: Vec<String> = proxy.seen()[seen_before..]
        .iter()
        .map(|seen| format!("{} {}", seen.method, seen.target))
        .collect();
    let index = stack.s3.object("ssh/index.json").unwrap();
    let owners_key = stack
        .s3
        .keys()
        .into_iter()
        .find(|key| key.starts_with("ssh/_keyhole/owners/"))
        .unwrap();
    let owners_size = stack.s3.object(&owners_key).unwrap().len();
    eprintln!(
        "no-change run: {wire} bytes on the wire ({} per access group), {body_bytes} body bytes; \
         index {} bytes ({} per access group), owners object {owners_size} bytes; requests {seen:?}",
        wire / GROUPS as u64,
        index.len(),
        index.len() / GROUPS,
    );
    assert!(homes_line(&quiet).contains("0 of 6 re-read"), "{quiet:#?}");
    // The records are needed (a contested key), yet neither object's body is read: their ETags
    // are asked for, and the publisher's copies stand in.
    assert_eq!(
        seen,
        [
            "HEAD /keyhole-test/ssh/index.json".to_owned(),
            format!("HEAD /keyhole-test/{owners_key}"),
        ],
    );
    assert_eq!(body_bytes, 0, "{seen:?}");
    assert!(
        wire <= 300 * GROUPS as u64,
        "{wire} bytes on the wire for {GROUPS} access groups"
    );

    // Without the copies (a new publisher host), both objects are read whole once, and kept:
    // the same count sees those bytes, past the bound.
    std::fs::remove_file(stack.publisher.path("owners-copy")).unwrap();
    std::fs::remove_file(stack.publisher.path("index-copy")).unwrap();
    let wire_before = proxy.server_bytes();
    let (_, body_bytes) = publish();
    let wire = proxy.server_bytes() - wire_before;
    assert_eq!(body_bytes, index.len() + owners_size);
    assert!(wire > 300 * GROUPS as u64, "{wire}");
    let (_, body_bytes) = publish();
    assert_eq!(body_bytes, 0);

    // An owners object altered in the bucket is judged as before: damaged, whatever the copy.
    stack.s3.put_object(&owners_key, "{}\n");
    let (altered, _) = publish();
    assert!(
        altered.stderr.contains("the owners object is rebuilt"),
        "{altered:#?}"
    );
    // An older signed index put back is refused as before, whatever the copy holds.
    let added = stack.homes.key("alice-added", "ed25519");
    let alice = stack.homes.authorized_keys("alice");
    let text = std::fs::read_to_string(&alice).unwrap();
    stack
        .homes
        .write("alice", uid("alice"), &format!("{text}{}\n", added.line));
    publish();
    assert_ne!(stack.s3.object("ssh/index.json").unwrap(), first_index);
    stack.s3.put_object("ssh/index.json", &first_index);
    let replayed = stack.run(&["publish"]);
    assert_eq!(replayed.code, 1, "{replayed:#?}");
    assert!(
        replayed.stderr.contains("put back an older signed index"),
        "{replayed:#?}"
    );
}
