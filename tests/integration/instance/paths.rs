//! The instance's login path through real sshd, with a cache that is always stale (`cache_ttl`
//! 1 ms), so that every login really reads S3 and the judgement is made where sshd waits:
//! only `login_user` gets keys (a second local account, `nobody`, offered the same key, gets
//! nothing); a rolled-back index and a forged one are refused at login; a rollback is still
//! refused when the cached index file is gone (the cache records the generation it served);
//! an S3 outage serves the cache (and says so); past `max_stale` keyhole fails closed and sshd
//! falls back to `AuthorizedKeysFile`, where a static emergency key still works; `whois`
//! answers from the instance's cache with S3 down.
//!
//! The bucket is written here with keyhole's own index and signer (as tests/instance.rs does),
//! so no Samba DC is needed.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::PathBuf;
use std::time::Duration;

use crate::support::homes::{Homes, Key};
use crate::support::keyhole::ssh_keygen;
use crate::support::s3::{BUCKET, S3Server};
use crate::support::sshd::Sshd;
use keyhole::bucket::index::{FORMAT, Index, IndexGroup, Layout, Owners, owners_to_json};
use keyhole::bucket::signing::{self, Signer};
use keyhole::digest::sha256_hex;

const NOBODY: u32 = 65534;
const LOGIN_USER: &str = "root";

fn layout() -> Layout {
    Layout {
        prefix: "ssh/".into(),
    }
}

struct World {
    s3: S3Server,
    signer: Signer,
    forger: Signer,
    verify_key: String,
    _keys: tempfile::TempDir,
    instance: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let keys = tempfile::tempdir().unwrap();
        let publisher = keys.path().join("publisher");
        ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-f"], &publisher);
        let forger = keys.path().join("forger");
        ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-f"], &forger);
        let verify_key = std::fs::read_to_string(publisher.with_extension("pub")).unwrap();
        let instance = tempfile::tempdir().unwrap();
        std::fs::set_permissions(instance.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = instance.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        chown(&cache, Some(NOBODY), Some(NOBODY)).unwrap();
        let world = World {
            s3: S3Server::start(),
            signer: Signer::load(&publisher).unwrap(),
            forger: Signer::load(&forger).unwrap(),
            verify_key: verify_key.trim().to_owned(),
            _keys: keys,
            instance,
        };
        world.write_settings("1h");
        world
    }

    fn config(&self) -> PathBuf {
        self.instance.path().join("keyhole.toml")
    }

    fn cache(&self) -> PathBuf {
        self.instance.path().join("cache")
    }

    /// Instance settings: every login reads S3 (`cache_ttl` 1 ms).
    fn write_settings(&self, max_stale: &str) {
        std::fs::write(
            self.config(),
            format!(
                "{}\n[instance]\nlogin_user = \"{LOGIN_USER}\"\naccess_groups = [\"web-prod\"]\ncache_dir = \"{}\"\ncache_ttl = \"1ms\"\nmax_stale = \"{max_stale}\"\nfetch_timeout = \"2s\"\nverify_key = \"{}\"\n",
                self.s3.settings("ssh/"),
                self.cache().display(),
                self.verify_key
            ),
        )
        .unwrap();
    }

    /// The AWS credentials as a file nobody can read (sshd passes no environment).
    fn env(&self) -> Vec<(String, String)> {
        self.s3.instance_credentials(self.instance.path(), NOBODY)
    }

    /// Writes web-prod with `members` and commits index `generation`, signed by `signer`.
    /// Returns the sealed index as stored.
    fn publish(&self, generation: u64, members: &[(&str, &Key)], signer: &Signer) -> String {
        let mut body = "# keyhole access group web-prod: generated, do not edit\n".to_owned();
        let mut owners = Owners::new();
        for (name, key) in members {
            body.push_str(&format!("# {name} via Web Team\n{}\n", key.line));
            owners.insert(key.fingerprint.clone(), (*name).to_owned());
        }
        let owners = owners_to_json(&owners);
        let owners_sha = sha256_hex(&owners);
        self.s3.put_object(
            &layout().owners(&owners_sha),
            std::str::from_utf8(&owners).unwrap(),
        );
        let mut index = Index {
            format: FORMAT,
            generation,
            not_after: Some(signing::format_time(
                std::time::SystemTime::now() + Duration::from_secs(86400),
            )),
            deployment: Some(keyhole::bucket::index::deployment(BUCKET, "ssh/")),
            owners: Some(owners_sha),
            ..Index::empty()
        };
        let sha256 = sha256_hex(body.as_bytes());
        self.s3
            .put_object(&layout().group(&index, "web-prod", &sha256), &body);
        index.groups.insert(
            "web-prod".into(),
            IndexGroup {
                sha256,
                users: members.len(),
                keys: members.len(),
                seal: None,
            },
        );
        let sealed = String::from_utf8(index.seal(Some(signer)).unwrap()).unwrap();
        self.s3.put_object(&layout().index(), &sealed);
        sealed
    }

    /// `keyhole ARGS` on the instance as nobody (the cache's owner), as sshd runs it.
    fn as_nobody(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(crate::support::keyhole::binary_for_nobody())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_clear()
            .envs(self.env())
            .output()
            .unwrap()
    }
}

/// Lets the 1 ms `cache_ttl` pass, so the next login reads S3.
fn stale() {
    std::thread::sleep(Duration::from_millis(20));
}

#[test]
fn the_login_path_through_sshd_judges_what_s3_says_at_every_login() {
    let world = World::new();
    let homes = Homes::new();
    let bob = homes.key("bob", "ed25519");
    let mallory = homes.key("mallory", "ed25519");
    let emergency = homes.key("emergency", "ed25519");
    // Generation 1 had mallory; generation 2 revoked her.
    let generation_1 = world.publish(1, &[("bob", &bob), ("mallory", &mallory)], &world.signer);
    let group_1: Vec<String> = world
        .s3
        .keys()
        .into_iter()
        .filter(|key| key.starts_with("ssh/web-prod/"))
        .collect();
    let generation_2 = world.publish(2, &[("bob", &bob)], &world.signer);

    // sshd with a static emergency key for root in AuthorizedKeysFile, the fallback when
    // keyhole serves nothing (a root-owned directory and file, as StrictModes wants).
    let emergency_dir = tempfile::Builder::new()
        .prefix("keyhole-emergency-")
        .tempdir_in("/run")
        .unwrap();
    std::fs::set_permissions(emergency_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let emergency_file = emergency_dir.path().join("authorized_keys");
    std::fs::write(&emergency_file, format!("{}\n", emergency.line)).unwrap();
    std::fs::set_permissions(&emergency_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sshd = Sshd::start_with(
        &world.config(),
        &world.env(),
        &format!("AuthorizedKeysFile {}\n", emergency_file.display()),
    );
    let login = |user: &str, key: &Key| sshd.login(user, &key.private);

    // A cold cache, read at the login: generation 2.
    assert!(login(LOGIN_USER, &bob), "{}", sshd.log());
    stale();
    assert!(!login(LOGIN_USER, &mallory), "{}", sshd.log());

    // Only login_user gets keys: nobody (a real local account with no keyhole access) offered
    // bob's key gets nothing from keyhole, and sshd does not let it in.
    stale();
    assert!(!login("nobody", &bob), "{}", sshd.log());
    assert!(
        !sshd.log().contains("Accepted publickey for nobody"),
        "{}",
        sshd.log()
    );

    // Rollback at login: generation 1 back in the bucket (validly signed, its object there).
    world.s3.put_object(&layout().index(), &generation_1);
    for key in &group_1 {
        assert!(world.s3.object(key).is_some(), "{key}");
    }
    stale();
    assert!(!login(LOGIN_USER, &mallory), "{}", sshd.log());
    assert!(sshd.log().contains("(rollback)"), "{}", sshd.log());
    stale();
    assert!(login(LOGIN_USER, &bob), "{}", sshd.log());

    // A forged index: generation 3 with mallory, signed by another key.
    world.publish(3, &[("bob", &bob), ("mallory", &mallory)], &world.forger);
    stale();
    assert!(!login(LOGIN_USER, &mallory), "{}", sshd.log());
    stale();
    assert!(login(LOGIN_USER, &bob), "{}", sshd.log());

    // The cached index file gone, generation 1 in the bucket: the cached group file's
    // generation (2) still refuses the rollback.
    world.s3.put_object(&layout().index(), &generation_1);
    std::fs::remove_file(world.cache().join("current/index")).unwrap();
    stale();
    assert!(!login(LOGIN_USER, &mallory), "{}", sshd.log());

    // Back to generation 2; then S3 goes away: within max_stale the cache is served, and the
    // log says the stale branch ran.
    world.s3.put_object(&layout().index(), &generation_2);
    stale();
    assert!(login(LOGIN_USER, &bob), "{}", sshd.log());
    let mut world = world;
    world.s3.stop();
    stale();
    let before = sshd.log().len();
    assert!(login(LOGIN_USER, &bob), "{}", sshd.log());
    assert!(
        sshd.log()[before..].contains("could not refresh the key cache, serving what is cached"),
        "{}",
        sshd.log()
    );
    // whois off the instance, from its cache (S3 is down).
    let whois = world.as_nobody(&["whois", &bob.fingerprint]);
    assert!(whois.status.success(), "{whois:?}");
    assert_eq!(
        String::from_utf8_lossy(&whois.stdout).trim(),
        format!("{} = bob (web-prod via Web Team)", bob.fingerprint)
    );

    // Past max_stale (2 s since the cache was last confirmed): keyhole serves nothing, and
    // sshd falls back to AuthorizedKeysFile: bob is out, the emergency key is in.
    world.write_settings("2s");
    std::thread::sleep(Duration::from_secs(3));
    let before = sshd.log().len();
    assert!(!login(LOGIN_USER, &bob), "{}", sshd.log());
    assert!(
        sshd.log()[before..].contains("serving no keys"),
        "{}",
        sshd.log()
    );
    assert!(login(LOGIN_USER, &emergency), "{}", sshd.log());
}
