//! End to end with real OpenSSH: sshd on 127.0.0.1 whose AuthorizedKeysCommand is the built
//! keyhole (as `nobody`), after a publish to the local S3 from the real Samba AD. Members log in,
//! others do not; a disabled member is locked out after publish + refresh; during an S3 outage
//! the cache keeps members logging in; a tampered object or a rolled-back or forged index is
//! refused; and sshd's log names the person (and group chain) behind each login, attributed from
//! the group files alone: the instance never reads the owners object.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;

use crate::support::homes::{Homes, Key};
use crate::support::keyhole::{Deployment, Run, ldap_section, run_keyhole};
use crate::support::s3::S3Server;
use crate::support::samba::{Fixture, SambaDc, UserSpec};
use crate::support::sshd::Sshd;

const NOBODY: u32 = 65534;
/// The shared login user; root, so that the test needs no local account of its own.
const LOGIN_USER: &str = "root";

fn fixture() -> Fixture {
    Fixture::new()
        .user(UserSpec::unix("bob", 21001, "/home/bob"))
        .user(UserSpec::unix("carol", 21002, "/home/carol"))
        .user(UserSpec::unix("eve", 21003, "/home/eve"))
        .group("Web Team", &["bob", "carol"])
}

const POLICY: &str = "[access_groups.web-prod]\ngroups = [\"Web Team\"]\n";

/// The key of `group`'s object named by the index `index_json` (the envelope as stored).
fn group_key(index_json: &str, group: &str) -> String {
    use keyhole::bucket::index::{Index, Layout};
    let index = Index::open(index_json.as_bytes(), None).expect("an index");
    let entry = &index.groups[group];
    Layout {
        prefix: "ssh/".into(),
    }
    .group(&index, group, &entry.sha256)
}

struct Fleet {
    dc: SambaDc,
    s3: S3Server,
    _homes: Homes,
    keys: std::collections::BTreeMap<&'static str, Key>,
    publisher: Deployment,
    /// The instance's directory: settings and cache, readable and writable by `nobody`.
    instance: tempfile::TempDir,
    /// The publisher's signing public key, as `instance.verify_key`.
    verify_key: String,
}

impl Fleet {
    fn new() -> Fleet {
        let dc = SambaDc::start(&fixture());
        let s3 = S3Server::start();
        let homes = Homes::new();
        let mut keys = std::collections::BTreeMap::new();
        for (name, uid) in [("bob", 21001), ("carol", 21002), ("eve", 21003)] {
            let key = homes.key(name, "ed25519");
            homes.write(name, uid, &format!("{}\n", key.line));
            keys.insert(name, key);
        }
        let mut publisher = Deployment::new(&dc, POLICY);
        publisher.env.extend(s3.env());
        let lock = format!(
            "\n[safety]\nlock_file = \"{}\"\n",
            publisher.path("publish.lock").display()
        );
        // The publisher signs; instances verify with the public half.
        let (signing_key, verify_key) = publisher.signing_key();
        let signing = format!(
            "\n[signing]\nkey_file = \"{}\"\nvalidity = \"7d\"\n",
            signing_key.display()
        );
        publisher.write_settings(&format!(
            "{}{}{}{lock}{signing}",
            ldap_section(&dc, &dc.ldaps_url(), &dc.ca_file()),
            s3.settings("ssh/"),
            homes.settings()
        ));
        let instance = tempfile::tempdir().unwrap();
        std::fs::set_permissions(instance.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let fleet = Fleet {
            dc,
            s3,
            _homes: homes,
            keys,
            publisher,
            instance,
            verify_key,
        };
        fleet.write_instance_settings("5m", "cache");
        fleet
    }

    /// The instance's keyhole.toml with `cache_ttl` and a cache directory owned by nobody.
    fn write_instance_settings(&self, cache_ttl: &str, cache: &str) {
        let cache_dir = self.instance.path().join(cache);
        std::fs::create_dir_all(&cache_dir).unwrap();
        chown(&cache_dir, Some(NOBODY), Some(NOBODY)).unwrap();
        let settings = format!(
            "{}\n[instance]\nlogin_user = \"{LOGIN_USER}\"\naccess_groups = [\"web-prod\"]\ncache_dir = \"{}\"\ncache_ttl = \"{cache_ttl}\"\nmax_stale = \"1h\"\nfetch_timeout = \"2s\"\nverify_key = \"{}\"\n",
            self.s3.settings("ssh/"),
            cache_dir.display(),
            self.verify_key.trim()
        );
        std::fs::write(self.instance_config(), settings).unwrap();
    }

    fn instance_config(&self) -> std::path::PathBuf {
        self.instance.path().join("keyhole.toml")
    }

    /// The AWS credentials the instance finds, as a file (sshd passes no environment).
    fn instance_env(&self) -> Vec<(String, String)> {
        self.s3.instance_credentials(self.instance.path(), NOBODY)
    }

    fn publish(&self, args: &[&str]) -> Run {
        let mut all = vec!["publish"];
        all.extend_from_slice(args);
        self.publisher.run(&all)
    }

    /// `keyhole refresh` on the instance, as nobody (the cache's owner).
    fn refresh(&self) -> std::process::Output {
        let mut command = std::process::Command::new("setpriv");
        command.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
        command
            .arg(crate::support::keyhole::binary_for_nobody())
            .arg("--config")
            .arg(self.instance_config())
            .arg("refresh");
        command.env_clear().envs(self.instance_env());
        command.output().unwrap()
    }

    fn disable(&self, user: &str) {
        self.dc.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
            self.dc.user_dn(user)
        ));
    }

    fn key(&self, user: &str) -> &Path {
        &self.keys[user].private
    }
}

#[test]
fn real_sshd_lets_members_in_and_keeps_everyone_else_out() {
    let mut fleet = Fleet::new();
    let published = fleet.publish(&[]);
    assert_eq!(published.code, 0, "{published:#?}");
    // There is no manifest any more; the instance needs only the index and its group objects:
    // take the owners object (the publisher's and whois's) away meanwhile.
    assert_eq!(fleet.s3.object("ssh/manifest.json"), None);
    let owners: Vec<String> = fleet
        .s3
        .keys()
        .into_iter()
        .filter(|key| key.starts_with("ssh/_keyhole/owners/"))
        .collect();
    assert_eq!(owners.len(), 1, "{:?}", fleet.s3.keys());
    let owners_body = fleet.s3.object(&owners[0]).unwrap();
    fleet.s3.delete_object(&owners[0]);
    let sshd = Sshd::start(&fleet.instance_config(), &fleet.instance_env());

    assert!(
        sshd.login(LOGIN_USER, fleet.key("bob")),
        "bob is in Web Team: {}",
        sshd.log()
    );
    assert!(
        !sshd.login(LOGIN_USER, fleet.key("eve")),
        "eve is in no access group"
    );
    let log = sshd.log();
    let attribution = format!(
        "keyhole: key offered for {LOGIN_USER}: {} = bob (web-prod via Web Team)",
        fleet.keys["bob"].fingerprint
    );
    assert!(
        log.contains(&attribution),
        "sshd's log does not attribute the login:\n{log}"
    );
    assert!(
        log.contains(&format!("Accepted publickey for {LOGIN_USER}")),
        "{log}"
    );

    fleet.s3.put_object(&owners[0], &owners_body);

    // Revocation: bob is disabled in AD; publish, refresh, and he is out.
    fleet.disable("bob");
    assert_eq!(fleet.publish(&[]).code, 0);
    let refreshed = fleet.refresh();
    assert!(refreshed.status.success(), "{refreshed:?}");
    assert!(
        !sshd.login(LOGIN_USER, fleet.key("bob")),
        "a disabled member still logs in"
    );
    assert!(sshd.login(LOGIN_USER, fleet.key("carol")), "{}", sshd.log());

    // An S3 outage: the cache is stale (ttl 1s) but within max_stale, so members still log in.
    fleet.write_instance_settings("1s", "cache");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fleet.s3.stop();
    assert!(
        sshd.login(LOGIN_USER, fleet.key("carol")),
        "an S3 outage locked members out: {}",
        sshd.log()
    );
    fleet.s3.restart();
}

#[test]
fn tampered_objects_and_rolled_back_or_forged_indexes_are_refused() {
    let fleet = Fleet::new();
    assert_eq!(fleet.publish(&[]).code, 0);
    let sshd = Sshd::start(&fleet.instance_config(), &fleet.instance_env());

    // Rollback: keep generation 1 (bob and carol), publish generation 2 without bob, let the
    // instance see it, then put generation 1 back in the bucket.
    let gen1_index = fleet.s3.object("ssh/index.json").unwrap();
    let gen1_key = group_key(&gen1_index, "web-prod");
    let gen1_group = fleet.s3.object(&gen1_key).unwrap();
    fleet.disable("bob");
    assert_eq!(fleet.publish(&[]).code, 0);
    assert!(fleet.refresh().status.success());
    let gen2_index = fleet.s3.object("ssh/index.json").unwrap();
    let gen2_key = group_key(&gen2_index, "web-prod");
    assert_ne!(gen2_key, gen1_key, "a changed group gets a new object");
    let gen2_group = fleet.s3.object(&gen2_key).unwrap();
    // A validly signed, older index: the signature checks out, the generation does not. Its
    // group object is there too (put back, should the publisher have pruned it).
    fleet.s3.put_object("ssh/index.json", &gen1_index);
    fleet.s3.put_object(&gen1_key, &gen1_group);
    let refused = fleet.refresh();
    assert!(
        !refused.status.success(),
        "a rolled-back index was accepted"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("rollback"),
        "{refused:?}"
    );
    assert!(
        !sshd.login(LOGIN_USER, fleet.key("bob")),
        "the rollback let a revoked person back in"
    );

    // A forged index: generation 1's content edited to look newest, under its old signature.
    let mut envelope: serde_json::Value = serde_json::from_str(&gen1_index).unwrap();
    let text = envelope["index"].as_str().unwrap().to_owned();
    let forged = text.replace("\"generation\":1,", "\"generation\":99,");
    assert_ne!(forged, text);
    envelope["index"] = forged.into();
    fleet.s3.put_object("ssh/index.json", &envelope.to_string());
    let forged_refresh = fleet.refresh();
    assert!(!forged_refresh.status.success());
    let stderr = String::from_utf8_lossy(&forged_refresh.stderr);
    assert!(stderr.contains("signature does not verify"), "{stderr}");
    assert!(
        !sshd.login(LOGIN_USER, fleet.key("bob")),
        "a forged index let bob back in"
    );

    // Tampering: a fresh instance (empty cache), the current index, and a group file with an
    // extra key. The file no longer matches the index, so nothing is served: not even carol's
    // real key.
    fleet.s3.put_object("ssh/index.json", &gen2_index);
    let tampered = format!("{gen2_group}{}\n", fleet.keys["eve"].line);
    fleet.s3.put_object(&gen2_key, &tampered);
    fleet.write_instance_settings("5m", "fresh-cache");
    assert!(
        !sshd.login(LOGIN_USER, fleet.key("eve")),
        "a key added to the bucket by hand was served"
    );
    assert!(
        !sshd.login(LOGIN_USER, fleet.key("carol")),
        "tampered content was served"
    );
    // Run by hand as root, keyhole refuses the cache directory nobody owns: another user's
    // directory could hold keys that were never verified.
    let direct = || {
        run_keyhole(
            &fleet.instance_config(),
            &["authorized-keys", LOGIN_USER],
            &fleet.instance_env(),
        )
    };
    let not_ours = direct();
    assert_eq!(not_ours.code, 1, "{not_ours:#?}");
    assert!(not_ours.stdout.is_empty(), "{not_ours:#?}");
    assert!(
        not_ours.stderr.contains("refusing the cache directory")
            && not_ours.stderr.contains("not by the user keyhole runs as"),
        "{}",
        not_ours.stderr
    );
    let cache_dir = fleet.instance.path().join("fresh-cache");
    chown(&cache_dir, Some(0), Some(0)).unwrap();
    let direct = direct();
    assert_eq!(direct.code, 1, "{direct:#?}");
    assert!(direct.stdout.is_empty(), "{direct:#?}");
    assert!(direct.stderr.contains("is not the"), "{}", direct.stderr);

    // A cache directory others can write to is refused too, whoever owns it.
    std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let writable = run_keyhole(
        &fleet.instance_config(),
        &["authorized-keys", LOGIN_USER],
        &fleet.instance_env(),
    );
    assert_eq!(writable.code, 1, "{writable:#?}");
    assert!(
        writable.stderr.contains("writable by its group or others"),
        "{}",
        writable.stderr
    );
}
