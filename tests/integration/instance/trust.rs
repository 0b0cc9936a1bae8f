//! The instance's login path, judged where it runs: the built binary against a real local S3
//! (s3s-fs), and real sshd where a login is the point.
//!
//! - A key from a 13,000-key group logs in through sshd and is attributed; `authorized-keys
//!   USER %f` prints that key's line and nothing else.
//! - A cache edited on disk (a forged lookup, a forged state record) is refused at login; a
//!   cache rolled back to an older, validly signed state is refused at login.
//! - A refresh that fails half-way (a missing object) or is killed half-way (SIGKILL while a
//!   group object is being read) leaves the previous state served, every group of it.
//! - `refresh` refuses a world-writable cache directory and writes nothing into it.
//! - The EC2 tag removed: nothing served; IMDS timing out: the last groups served.
//! - The canary key pasted into a member's file, as a published group line: sshd gets the
//!   canary's restricted line first and never the member's line, so the key only ever runs the
//!   marker command.
//!
//! The bucket is written here with keyhole's own index, seals and signer (as tests/instance.rs
//! does), so no Samba DC is needed.

use std::collections::HashMap;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use crate::support::fault_proxy::{FaultProxy, HttpFault, HttpRule, Mode};
use crate::support::homes::{Homes, Key};
use crate::support::imds::Imds;
use crate::support::keyhole::ssh_keygen;
use crate::support::ports::address_of;
use crate::support::s3::{BUCKET, S3Server};
use crate::support::sshd::Sshd;
use base64::Engine as _;
use keyhole::bucket::group_lookup::Lookup;
use keyhole::bucket::index::{FORMAT, Index, IndexGroup, Layout};
use keyhole::bucket::signing::{self, Signer};
use keyhole::digest::sha256_hex;

const NOBODY: u32 = 65534;
const LOGIN_USER: &str = "root";

fn layout() -> Layout {
    Layout {
        prefix: "ssh/".into(),
    }
}

/// An ed25519 public key line made of arbitrary bytes: a key nobody holds, cheap to make by the
/// thousand (sshd and keyhole parse it like any other).
fn synthetic_key(n: u32) -> String {
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    let seed = sha256_hex(&n.to_be_bytes());
    blob.extend_from_slice(&hex_bytes(&seed));
    format!(
        "ssh-ed25519 {} user{n}@synthetic",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A group file: each member's block with its lines.
fn group_file(name: &str, members: &[(String, String)]) -> String {
    let mut body = format!("# keyhole access group {name}: generated, do not edit\n");
    for (member, line) in members {
        body.push_str(&format!("# {member} via Web Team\n{line}\n"));
    }
    body
}

struct World {
    s3: S3Server,
    signer: Signer,
    verify_key: String,
    _keys: tempfile::TempDir,
    instance: tempfile::TempDir,
    /// The `[s3]` endpoint instances use (the server, or a proxy in front of it).
    endpoint: String,
}

impl World {
    /// A bucket, a publisher key, and an instance directory whose cache is owned by `owner`.
    fn new(owner: u32) -> World {
        let keys = tempfile::tempdir().unwrap();
        let publisher = keys.path().join("publisher");
        ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-f"], &publisher);
        let verify_key = std::fs::read_to_string(publisher.with_extension("pub")).unwrap();
        let instance = tempfile::tempdir().unwrap();
        std::fs::set_permissions(instance.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = instance.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&cache, Some(owner), Some(owner)).unwrap();
        let s3 = S3Server::start();
        let endpoint = s3.endpoint();
        World {
            s3,
            signer: Signer::load(&publisher).unwrap(),
            verify_key: verify_key.trim().to_owned(),
            _keys: keys,
            instance,
            endpoint,
        }
    }

    fn config(&self) -> PathBuf {
        self.instance.path().join("keyhole.toml")
    }

    fn cache(&self) -> PathBuf {
        self.instance.path().join("cache")
    }

    /// Instance settings serving `groups`; `extra` lines go into `[instance]`.
    fn write_settings(&self, groups: &[&str], cache_ttl: &str, extra: &str) {
        let groups: Vec<String> = groups.iter().map(|g| format!("\"{g}\"")).collect();
        std::fs::write(
            self.config(),
            format!(
                "\n[s3]\nbucket = \"{BUCKET}\"\nprefix = \"ssh/\"\nendpoint = \"{}\"\nforce_path_style = true\nregion = \"us-east-1\"\n\n[instance]\nlogin_user = \"{LOGIN_USER}\"\naccess_groups = [{}]\ncache_dir = \"{}\"\ncache_ttl = \"{cache_ttl}\"\nmax_stale = \"1h\"\nfetch_timeout = \"2s\"\nverify_key = \"{}\"\n{extra}",
                self.endpoint,
                groups.join(", "),
                self.cache().display(),
                self.verify_key
            ),
        )
        .unwrap();
    }

    /// Publishes `groups` as index `generation`, sealed and signed like the publisher does.
    /// Returns the index as stored.
    fn publish(&self, generation: u64, groups: &[(&str, String)], canary: Option<&str>) -> String {
        let mut index = Index {
            format: FORMAT,
            generation,
            not_after: Some(signing::format_time(
                SystemTime::now() + Duration::from_secs(86400),
            )),
            deployment: Some(keyhole::bucket::index::deployment(BUCKET, "ssh/")),
            canary: canary.map(str::to_owned),
            ..Index::empty()
        };
        let mut roots = HashMap::new();
        for (name, body) in groups {
            let sha256 = sha256_hex(body.as_bytes());
            roots.insert(sha256.clone(), Lookup::build(body.as_bytes()).root());
            self.s3
                .put_object(&layout().group(&index, name, &sha256), body);
            index.groups.insert(
                (*name).into(),
                IndexGroup {
                    sha256,
                    users: 1,
                    keys: 1,
                    seal: None,
                },
            );
        }
        keyhole::bucket::group_lookup::seal_with_roots(&mut index, &roots, &self.signer).unwrap();
        let sealed = String::from_utf8(index.seal(Some(&self.signer)).unwrap()).unwrap();
        self.s3.put_object(&layout().index(), &sealed);
        sealed
    }

    fn env(&self) -> Vec<(String, String)> {
        self.s3.env()
    }

    /// `keyhole ARGS` on the instance as the current user (root, the cache's owner here).
    fn keyhole(&self, args: &[&str]) -> Output {
        Command::new(crate::support::keyhole::BINARY)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_clear()
            .envs(self.env())
            .output()
            .unwrap()
    }

    fn login(&self, fingerprint: Option<&str>) -> Output {
        let mut args = vec!["authorized-keys", LOGIN_USER];
        args.extend(fingerprint);
        self.keyhole(&args)
    }

    /// The current state directory.
    fn state(&self) -> PathBuf {
        let name = std::fs::read_link(self.cache().join("current")).unwrap();
        self.cache().join(name)
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The 13,000-key group: 12,999 keys nobody holds and bob's, in the middle.
fn big_group(bob: &Key) -> String {
    let mut members: Vec<(String, String)> = (0..12_999)
        .map(|n| (format!("user{n:05}"), synthetic_key(n)))
        .collect();
    members.insert(6_500, ("bob".into(), bob.line.clone()));
    group_file("big", &members)
}

#[test]
fn a_key_from_a_13000_key_group_logs_in_through_sshd_and_is_attributed() {
    let world = World::new(NOBODY);
    let homes = Homes::new();
    let bob = homes.key("bob", "ed25519");
    let carol = homes.key("carol", "ed25519");
    let small: Vec<(String, String)> = (0..9)
        .map(|n| (format!("small{n}"), synthetic_key(100_000 + n)))
        .chain([("carol".to_string(), carol.line.clone())])
        .collect();
    world.publish(
        1,
        &[
            ("big", big_group(&bob)),
            ("small", group_file("small", &small)),
        ],
        None,
    );
    world.write_settings(&["big", "small"], "1h", "");
    let env = world.s3.instance_credentials(world.instance.path(), NOBODY);
    let sshd = Sshd::start(&world.config(), &env);

    // A cold cache: the first login refreshes, then serves bob's one line.
    assert!(sshd.login(LOGIN_USER, &bob.private), "{}", sshd.log());
    let attribution = format!(
        "keyhole: key offered for {LOGIN_USER}: {} = bob (big via Web Team)",
        bob.fingerprint
    );
    assert!(sshd.log().contains(&attribution), "{}", sshd.log());
    assert!(sshd.login(LOGIN_USER, &carol.private), "{}", sshd.log());

    // What sshd was given for bob's key: his line, nothing of the 12,999 others.
    let output = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(crate::support::keyhole::binary_for_nobody())
        .arg("--config")
        .arg(world.config())
        .args(["authorized-keys", LOGIN_USER, &bob.fingerprint])
        .env_clear()
        .envs(env.clone())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), format!("{}\n", bob.line));
}

#[test]
fn a_cache_edited_on_disk_or_rolled_back_is_refused_at_login() {
    let world = World::new(0);
    let homes = Homes::new();
    let bob = homes.key("bob", "ed25519");
    let mallory = homes.key("mallory", "ed25519");
    let generation_1 = group_file("web-prod", &[("bob".into(), bob.line.clone())]);
    world.publish(1, &[("web-prod", generation_1.clone())], None);
    world.write_settings(&["web-prod"], "1h", "");
    let refreshed = world.keyhole(&["refresh"]);
    assert!(refreshed.status.success(), "{}", stderr(&refreshed));
    assert_eq!(
        stdout(&world.login(Some(&bob.fingerprint))),
        format!("{}\n", bob.line)
    );

    // Mallory's line written into the cached lookup, its table consistent: refused at login.
    let state = world.state();
    let forged = group_file(
        "web-prod",
        &[
            ("bob".into(), bob.line.clone()),
            ("mallory".into(), mallory.line.clone()),
        ],
    );
    let lookup = state.join("lookup-web-prod");
    let original = std::fs::read(&lookup).unwrap();
    std::fs::remove_file(&lookup).unwrap();
    std::fs::write(&lookup, Lookup::build(forged.as_bytes()).to_bytes()).unwrap();
    let login = world.login(Some(&mallory.fingerprint));
    assert_eq!(stdout(&login), "", "{}", stderr(&login));
    assert!(!login.status.success());
    assert!(
        stderr(&login).contains("edited on disk"),
        "{}",
        stderr(&login)
    );
    // And the state's record edited to name the forged lookup: the seal does not cover it.
    let manifest = state.join("state.json");
    let record = std::fs::read_to_string(&manifest).unwrap();
    let root = Lookup::build(generation_1.as_bytes()).root();
    std::fs::write(
        &manifest,
        record.replace(&root, &Lookup::build(forged.as_bytes()).root()),
    )
    .unwrap();
    let login = world.login(Some(&mallory.fingerprint));
    assert_eq!(stdout(&login), "", "{}", stderr(&login));
    assert!(stderr(&login).contains("seal"), "{}", stderr(&login));
    // The whole file forged, the record too, without %f: refused the same way.
    std::fs::write(state.join("group-web-prod"), &forged).unwrap();
    std::fs::write(
        &manifest,
        std::fs::read_to_string(&manifest).unwrap().replace(
            &sha256_hex(generation_1.as_bytes()),
            &sha256_hex(forged.as_bytes()),
        ),
    )
    .unwrap();
    let login = world.login(None);
    assert!(
        !stdout(&login).contains(&mallory.line),
        "{}",
        stdout(&login)
    );
    assert!(!login.status.success());
    // Put back as refreshed: served again.
    std::fs::write(&manifest, &record).unwrap();
    std::fs::write(state.join("group-web-prod"), &generation_1).unwrap();
    std::fs::remove_file(&lookup).unwrap();
    std::fs::write(&lookup, &original).unwrap();
    assert_eq!(stdout(&world.login(None)), format!("{}\n", bob.line));

    // Rolled back: generation 1 had mallory; generation 2 revoked her. The generation 1 state,
    // validly sealed and signed, copied back over the current one is refused at login.
    world.publish(
        1,
        &[(
            "web-prod",
            group_file(
                "web-prod",
                &[
                    ("bob".into(), bob.line.clone()),
                    ("mallory".into(), mallory.line.clone()),
                ],
            ),
        )],
        None,
    );
    // A fresh cache takes this generation 1.
    std::fs::remove_dir_all(world.cache()).unwrap();
    std::fs::create_dir(world.cache()).unwrap();
    std::fs::set_permissions(world.cache(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(world.keyhole(&["refresh"]).status.success());
    assert!(stdout(&world.login(Some(&mallory.fingerprint))).contains(&mallory.line));
    let saved = world.instance.path().join("saved-state");
    copy_dir(&world.state(), &saved);
    world.publish(2, &[("web-prod", generation_1.clone())], None);
    let refreshed = world.keyhole(&["refresh"]);
    assert!(refreshed.status.success(), "{}", stderr(&refreshed));
    assert_eq!(stdout(&world.login(Some(&mallory.fingerprint))), "");
    let back = world.cache().join("state-rolled-back");
    std::fs::rename(&saved, &back).unwrap();
    let link = world.cache().join(".swap");
    std::os::unix::fs::symlink("state-rolled-back", &link).unwrap();
    std::fs::rename(&link, world.cache().join("current")).unwrap();
    let login = world.login(Some(&mallory.fingerprint));
    assert_eq!(stdout(&login), "", "{}", stderr(&login));
    assert!(!login.status.success());
    assert!(stderr(&login).contains("rolled back"), "{}", stderr(&login));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_refresh_that_fails_or_is_killed_half_way_leaves_the_previous_state_served() {
    let mut world = World::new(0);
    let homes = Homes::new();
    let bob = homes.key("bob", "ed25519");
    let carol = homes.key("carol", "ed25519");
    let web = |members: &[(&str, &Key)]| {
        let members: Vec<(String, String)> = members
            .iter()
            .map(|(name, key)| ((*name).to_owned(), key.line.clone()))
            .collect();
        group_file("web-prod", &members)
    };
    let db = |members: &[(&str, &Key)]| {
        let members: Vec<(String, String)> = members
            .iter()
            .map(|(name, key)| ((*name).to_owned(), key.line.clone()))
            .collect();
        group_file("db-prod", &members)
    };
    world.publish(
        1,
        &[
            ("db-prod", db(&[("carol", &carol)])),
            ("web-prod", web(&[("bob", &bob)])),
        ],
        None,
    );
    // cache_ttl 1 ms: every login tries S3 first, and serves the previous state when it fails.
    world.write_settings(&["db-prod", "web-prod"], "1ms", "");
    assert!(world.keyhole(&["refresh"]).status.success());
    let before = stdout(&world.login(None));
    assert!(before.contains(&bob.line) && before.contains(&carol.line));

    // Generation 2 changes both groups, and web-prod's new object is missing: db-prod (read
    // first) is fine, web-prod is not. Nothing of generation 2 is served; both groups of
    // generation 1 are.
    let db_2 = db(&[("carol", &carol), ("bob", &bob)]);
    let web_2 = web(&[("bob", &bob), ("carol", &carol)]);
    world.publish(
        2,
        &[("db-prod", db_2.clone()), ("web-prod", web_2.clone())],
        None,
    );
    let index = Index::open(world.s3.object(&layout().index()).unwrap().as_bytes(), None).unwrap();
    let web_key = layout().group(&index, "web-prod", &index.groups["web-prod"].sha256);
    world.s3.delete_object(&web_key);
    let refreshed = world.keyhole(&["refresh"]);
    assert!(!refreshed.status.success());
    assert!(
        stderr(&refreshed).contains("missing"),
        "{}",
        stderr(&refreshed)
    );
    let login = world.login(None);
    assert!(login.status.success(), "{}", stderr(&login));
    assert_eq!(stdout(&login), before, "{}", stderr(&login));

    // Killed: the object is back, but S3 holds the read of web-prod's object for 30 s and the
    // refresh is killed (SIGKILL) while it waits, db-prod already read.
    world.s3.put_object(&web_key, &web_2);
    let proxy = FaultProxy::start(
        address_of(&world.s3.endpoint()),
        Mode::Http(vec![HttpRule::new(
            Some("GET"),
            |target| target.contains("web-prod/"),
            HttpFault::Delay(Duration::from_secs(30)),
        )]),
    );
    world.endpoint = proxy.http_url();
    world.write_settings(&["db-prod", "web-prod"], "1ms", "");
    let mut refresh = Command::new(crate::support::keyhole::BINARY)
        .arg("--config")
        .arg(world.config())
        .arg("refresh")
        .env_clear()
        .envs(world.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let waited = std::time::Instant::now();
    while !proxy
        .seen()
        .iter()
        .any(|seen| seen.target.contains("web-prod/"))
    {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "{:?}",
            proxy.seen()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    refresh.kill().unwrap();
    refresh.wait().unwrap();
    // The login's own refresh would wait on the same proxy: point it at nothing.
    world.endpoint = "http://127.0.0.1:9".into();
    world.write_settings(&["db-prod", "web-prod"], "1ms", "");
    let login = world.login(None);
    assert!(login.status.success(), "{}", stderr(&login));
    assert_eq!(stdout(&login), before, "{}", stderr(&login));

    // A refresh that completes switches to generation 2, whole.
    world.endpoint = world.s3.endpoint();
    world.write_settings(&["db-prod", "web-prod"], "1h", "");
    let refreshed = world.keyhole(&["refresh"]);
    assert!(refreshed.status.success(), "{}", stderr(&refreshed));
    let after = stdout(&world.login(None));
    assert_eq!(after.matches(&carol.line).count(), 2, "{after}");
    let states = std::fs::read_dir(world.cache())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("state-")
        })
        .count();
    assert!(states <= 2, "old states are removed ({states})");
}

#[test]
fn refresh_refuses_a_world_writable_cache_directory() {
    let world = World::new(0);
    let homes = Homes::new();
    let bob = homes.key("bob", "ed25519");
    world.publish(
        1,
        &[(
            "web-prod",
            group_file("web-prod", &[("bob".into(), bob.line.clone())]),
        )],
        None,
    );
    world.write_settings(&["web-prod"], "1h", "");
    std::fs::set_permissions(world.cache(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let refreshed = world.keyhole(&["refresh"]);
    assert!(!refreshed.status.success());
    assert!(
        stderr(&refreshed).contains("writable by its group or others"),
        "{}",
        stderr(&refreshed)
    );
    assert_eq!(std::fs::read_dir(world.cache()).unwrap().count(), 0);
    // Made private again: the same refresh fills it.
    std::fs::set_permissions(world.cache(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(world.keyhole(&["refresh"]).status.success());
    assert_eq!(stdout(&world.login(None)), format!("{}\n", bob.line));
}

#[test]
fn a_removed_tag_revokes_and_an_imds_timeout_keeps_the_last_groups() {
    const TAG: &str = "keyhole-access-groups";
    let world = World::new(0);
    let homes = Homes::new();
    let bob = homes.key("bob", "ed25519");
    world.publish(
        1,
        &[(
            "web-prod",
            group_file("web-prod", &[("bob".into(), bob.line.clone())]),
        )],
        None,
    );
    let imds = Imds::start();
    imds.tag(TAG, "web-prod");
    world.write_settings(
        &[],
        "1h",
        &format!(
            "access_groups_tag = \"{TAG}\"\nimds_endpoint = \"{}\"\n",
            imds.endpoint()
        ),
    );
    let metrics = world.instance.path().join("keyhole.prom");
    let metrics_arg = metrics.display().to_string();
    let refresh = || world.keyhole(&["refresh", "--metrics-file", &metrics_arg]);
    let refreshed = refresh();
    assert!(refreshed.status.success(), "{}", stderr(&refreshed));
    assert_eq!(stdout(&world.login(None)), format!("{}\n", bob.line));

    // IMDS times out: the last groups stay, refresh says so and exits non-zero.
    imds.set(|metadata| metadata.delay = Some(Duration::from_secs(3)));
    let refreshed = refresh();
    assert!(!refreshed.status.success());
    assert!(
        stderr(&refreshed).contains("keeping the last resolved ones"),
        "{}",
        stderr(&refreshed)
    );
    assert_eq!(stdout(&world.login(None)), format!("{}\n", bob.line));
    let login = world.login(Some(&bob.fingerprint));
    assert_eq!(stdout(&login), format!("{}\n", bob.line));

    // The tag removed (IMDS answers 404): the grant is gone.
    imds.set(|metadata| {
        metadata.delay = None;
        metadata.tags.clear();
    });
    let refreshed = refresh();
    assert!(!refreshed.status.success());
    assert!(
        stderr(&refreshed).contains("access_groups_tag_absent"),
        "{}",
        stderr(&refreshed)
    );
    let login = world.login(Some(&bob.fingerprint));
    assert_eq!(stdout(&login), "");
    assert!(!login.status.success());
    let figures = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        figures.contains("keyhole_instance_access_tag_absent 1"),
        "{figures}"
    );

    // Tagged again: served again.
    imds.tag(TAG, "web-prod");
    assert!(refresh().status.success());
    assert_eq!(stdout(&world.login(None)), format!("{}\n", bob.line));
}

#[test]
fn the_canary_key_pasted_into_a_members_file_only_ever_prints_the_marker() {
    let world = World::new(NOBODY);
    let homes = Homes::new();
    let bob = homes.key("bob", "ed25519");
    let canary = homes.key("canary", "ed25519");
    let canary_line = format!(
        "{} {} keyhole-canary",
        keyhole::bucket::canary_line::OPTIONS,
        canary
            .line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // mallory pasted the canary's public key into her file, and a publisher let it through.
    world.publish(
        1,
        &[(
            "web-prod",
            group_file(
                "web-prod",
                &[
                    ("mallory".into(), canary.line.clone()),
                    ("bob".into(), bob.line.clone()),
                ],
            ),
        )],
        Some(&canary_line),
    );
    world.write_settings(&["web-prod"], "1h", "");
    let env = world.s3.instance_credentials(world.instance.path(), NOBODY);
    let sshd = Sshd::start(&world.config(), &env);

    // The canary key gets the marker command, whatever is asked.
    let session = sshd.run(LOGIN_USER, &canary.private, "echo pwned");
    assert_eq!(
        session.as_deref().map(str::trim),
        Some(keyhole::bucket::canary_line::MARKER),
        "{}",
        sshd.log()
    );
    assert!(
        sshd.log().contains(&format!(
            "{} = {}",
            canary.fingerprint,
            keyhole::bucket::canary_line::NAME
        )),
        "{}",
        sshd.log()
    );
    // bob is unaffected.
    assert_eq!(
        sshd.run(LOGIN_USER, &bob.private, "echo hello")
            .as_deref()
            .map(str::trim),
        Some("hello")
    );
    // Without %f (as an AuthorizedKeysCommand without it would be asked): the canary's line
    // first, mallory's copy of it never.
    let output = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(crate::support::keyhole::binary_for_nobody())
        .arg("--config")
        .arg(world.config())
        .args(["authorized-keys", LOGIN_USER])
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&output),
        format!("{canary_line}\n{}\n", bob.line),
        "{}",
        stderr(&output)
    );
}
