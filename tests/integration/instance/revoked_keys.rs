//! Revocation on every path into a host (issue 25), with real OpenSSH: sshd on 127.0.0.1 whose
//! AuthorizedKeysCommand is the built keyhole, whose `AuthorizedKeysFile` is a local file where a
//! person's key was planted (as a departing engineer might, months ago), and whose `RevokedKeys`
//! is the file `keyhole refresh` writes. Against a real Samba AD DC and s3s-fs, signed.
//!
//! A planted key logs in; its person is disabled in AD; after publish + refresh the same login is
//! refused while the planted line is still there; re-enabled, it is accepted again. A key its
//! owner deleted stops working on every path. The guard holds a publish that would add most keys
//! to the list. `doctor` tells a current RevokedKeys file from a missing one. The time from the
//! disable to the refused login is printed (`--nocapture`).

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::support::homes::{Homes, Key};
use crate::support::keyhole::{Deployment, Run, ldap_section, run_keyhole};
use crate::support::s3::S3Server;
use crate::support::samba::{Fixture, SambaDc, UserSpec};
use crate::support::sshd::Sshd;

const NOBODY: u32 = 65534;
/// The login user: root, so the test needs no local account (its authorized_keys is a file of
/// the test's own, named by `AuthorizedKeysFile`, never /root/.ssh).
const LOGIN_USER: &str = "root";

const PEOPLE: &[(&str, u32)] = &[
    ("alice", 25001),
    ("bob", 25002),
    ("carol", 25003),
    ("dave", 25004),
    ("erin", 25005),
];

const POLICY: &str = "[access_groups.web-prod]\ngroups = [\"Web Team\"]\n";

fn fixture() -> Fixture {
    let mut fixture = Fixture::new();
    for (name, uid) in PEOPLE {
        fixture = fixture.user(UserSpec::unix(name, *uid, &format!("/home/{name}")));
    }
    let names: Vec<&str> = PEOPLE.iter().map(|(name, _)| *name).collect();
    fixture.group("Web Team", &names)
}

struct Host {
    dc: SambaDc,
    s3: S3Server,
    homes: Homes,
    keys: std::collections::BTreeMap<&'static str, Key>,
    publisher: Deployment,
    /// The instance's settings and cache (owned by nobody, as the refresh user).
    instance: tempfile::TempDir,
    /// Root-owned, 0755, under /run (sshd's StrictModes): the planted authorized_keys and the
    /// path sshd's RevokedKeys names (a symlink into the instance's state, as the package makes).
    local: tempfile::TempDir,
    verify_key: String,
}

impl Host {
    fn new() -> Host {
        let dc = SambaDc::start(&fixture());
        let s3 = S3Server::start();
        let homes = Homes::new();
        let mut keys = std::collections::BTreeMap::new();
        for (name, uid) in PEOPLE {
            let key = homes.key(name, "ed25519");
            homes.write(name, *uid, &format!("{}\n", key.line));
            keys.insert(*name, key);
        }
        let mut publisher = Deployment::new(&dc, POLICY);
        publisher.env.extend(s3.env());
        let (signing_key, verify_key) = publisher.signing_key();
        publisher.write_settings(&format!(
            "{}{}{}\n[safety]\nlock_file = \"{}\"\n\n[signing]\nkey_file = \"{}\"\n",
            ldap_section(&dc, &dc.ldaps_url(), &dc.ca_file()),
            s3.settings("ssh/"),
            homes.settings(),
            publisher.path("publish.lock").display(),
            signing_key.display(),
        ));
        let instance = tempfile::tempdir().unwrap();
        std::fs::set_permissions(instance.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for dir in ["cache", "state"] {
            let path = instance.path().join(dir);
            std::fs::create_dir(&path).unwrap();
            chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let local = tempfile::Builder::new()
            .prefix("keyhole-revoked-")
            .tempdir_in("/run")
            .unwrap();
        std::fs::set_permissions(local.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(
            instance.path().join("state/revoked_keys"),
            local.path().join("keyhole_revoked_keys"),
        )
        .unwrap();
        let host = Host {
            dc,
            s3,
            homes,
            keys,
            publisher,
            instance,
            local,
            verify_key,
        };
        std::fs::write(
            host.instance_config(),
            format!(
                "{}\n[instance]\nlogin_user = \"{LOGIN_USER}\"\naccess_groups = [\"web-prod\"]\n\
                 cache_dir = \"{}\"\nverify_key = \"{}\"\nrevoked_keys_file = \"{}\"\n",
                host.s3.settings("ssh/"),
                host.instance.path().join("cache").display(),
                host.verify_key.trim(),
                host.revoked_keys_file().display(),
            ),
        )
        .unwrap();
        host
    }

    fn instance_config(&self) -> PathBuf {
        self.instance.path().join("keyhole.toml")
    }

    /// What sshd's RevokedKeys and `[instance] revoked_keys_file` name (a symlink).
    fn revoked_keys_file(&self) -> PathBuf {
        self.local.path().join("keyhole_revoked_keys")
    }

    /// The login user's own authorized_keys, which keyhole does not manage.
    fn planted_file(&self) -> PathBuf {
        self.local.path().join("authorized_keys")
    }

    /// Plants the keys of `people` in the login user's own authorized_keys.
    fn plant(&self, people: &[&str]) {
        let lines: String = people
            .iter()
            .map(|name| format!("{}\n", self.keys[name].line))
            .collect();
        std::fs::write(self.planted_file(), lines).unwrap();
        std::fs::set_permissions(self.planted_file(), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }

    /// sshd with keyhole's command, the planted file as AuthorizedKeysFile, and (with `revoked`)
    /// RevokedKeys.
    fn sshd(&self, revoked: bool) -> Sshd {
        let mut prelude = format!("AuthorizedKeysFile {}\n", self.planted_file().display());
        if revoked {
            prelude.push_str(&format!(
                "RevokedKeys {}\n",
                self.revoked_keys_file().display()
            ));
        }
        Sshd::start_with(
            &self.instance_config(),
            &self.s3.instance_credentials(self.instance.path(), NOBODY),
            &prelude,
        )
    }

    fn publish(&self, args: &[&str]) -> Run {
        let mut all = vec!["publish"];
        all.extend_from_slice(args);
        self.publisher.run(&all)
    }

    /// `keyhole refresh` as nobody, the cache's and the list's owner.
    fn refresh(&self) {
        let mut command = std::process::Command::new("setpriv");
        command.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
        command
            .arg(crate::support::keyhole::binary_for_nobody())
            .arg("--config")
            .arg(self.instance_config())
            .arg("refresh");
        command
            .env_clear()
            .envs(self.s3.instance_credentials(self.instance.path(), NOBODY));
        let output = command.output().unwrap();
        assert!(output.status.success(), "refresh: {output:?}");
    }

    fn publish_and_refresh(&self) {
        let run = self.publish(&[]);
        assert_eq!(run.code, 0, "{run:#?}");
        self.refresh();
    }

    fn set_enabled(&self, user: &str, enabled: bool) {
        let control = if enabled { 512 } else { 514 };
        self.dc.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {control}\n",
            self.dc.user_dn(user)
        ));
    }

    fn key(&self, user: &str) -> &Path {
        &self.keys[user].private
    }

    /// The revocation list object the published index names.
    fn published_list(&self) -> String {
        let index = self.s3.object("ssh/index.json").expect("an index");
        let index = keyhole::bucket::index::Index::open(index.as_bytes(), None).unwrap();
        let sha256 = index.revoked.expect("the index names a revocation list");
        self.s3
            .object(&format!("ssh/_keyhole/revoked/{sha256}"))
            .expect("the list object")
    }

    fn uid(user: &str) -> u32 {
        PEOPLE.iter().find(|(name, _)| *name == user).unwrap().1
    }

    /// `keyhole doctor` against this sshd's config; the `revoked_keys` finding.
    fn doctor_revoked_keys(&self, sshd: &Sshd) -> serde_json::Value {
        let systemd = tempfile::tempdir().unwrap();
        let run = run_keyhole(
            &self.instance_config(),
            &[
                "doctor",
                "--format",
                "json",
                "--sshd-config",
                sshd.dir().join("sshd_config").to_str().unwrap(),
                "--systemd-dir",
                systemd.path().to_str().unwrap(),
            ],
            &self.s3.env(),
        );
        run.json()["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == "revoked_keys")
            .unwrap_or_else(|| panic!("no revoked_keys finding: {run:#?}"))
            .clone()
    }
}

/// The whole story on one host: sshd refuses everyone while its RevokedKeys file is missing;
/// a planted key logs in; disabled → refused on the planted path (the line still there; without
/// RevokedKeys it would still log in); re-enabled → accepted; a deleted key refused on every
/// path; doctor follows the file.
#[test]
fn a_revoked_key_is_refused_on_every_path_into_the_host() {
    let host = Host::new();
    host.plant(&["alice", "bob"]);
    let sshd = host.sshd(true);
    let without_revoked_keys = host.sshd(false);

    // Before anything wrote the file sshd's RevokedKeys names, sshd refuses every key, the
    // planted ones included: why the package installs an empty list first.
    assert!(!sshd.login(LOGIN_USER, host.key("alice")));
    assert!(
        sshd.log().contains("keyhole_revoked_keys"),
        "{}",
        sshd.log()
    );

    host.publish_and_refresh();
    let list = std::fs::read_to_string(host.revoked_keys_file()).unwrap();
    assert!(list.starts_with("# keyhole revoked keys, list "), "{list}");
    assert_eq!(list.lines().count(), 1, "nothing revoked yet: {list}");
    assert!(sshd.login(LOGIN_USER, host.key("alice")));
    assert!(sshd.login(LOGIN_USER, host.key("carol")));
    let current = host.doctor_revoked_keys(&sshd);
    assert_eq!(current["ok"], true, "{current:#}");

    // alice is disabled. Measured from the AD change to the refused login: one publish, one
    // refresh (what the timers do), one login.
    let disabled_at = Instant::now();
    host.set_enabled("alice", false);
    host.publish_and_refresh();
    assert!(!sshd.login(LOGIN_USER, host.key("alice")));
    let took = disabled_at.elapsed();
    println!(
        "disable to refused on a planted key: {:.2} s (publish + refresh + login)",
        took.as_secs_f64()
    );
    let planted = std::fs::read_to_string(host.planted_file()).unwrap();
    assert!(planted.contains(&host.keys["alice"].line), "{planted}");
    assert!(
        sshd.log().contains(&host.keys["alice"].fingerprint) && sshd.log().contains("revoked"),
        "sshd refused it as revoked: {}",
        sshd.log()
    );
    // The same planted line still logs in where sshd has no RevokedKeys: keyhole's command
    // alone cannot reach this path.
    assert!(without_revoked_keys.login(LOGIN_USER, host.key("alice")));
    // Everyone else is untouched, on both paths.
    assert!(sshd.login(LOGIN_USER, host.key("bob")));
    assert!(sshd.login(LOGIN_USER, host.key("carol")));
    let list = host.published_list();
    assert!(list.contains(&host.keys["alice"].fingerprint), "{list}");
    assert_eq!(host.doctor_revoked_keys(&sshd)["ok"], true);

    // Re-enabled: published again, off the list, accepted again.
    host.set_enabled("alice", true);
    host.publish_and_refresh();
    assert!(sshd.login(LOGIN_USER, host.key("alice")));
    assert!(
        !host
            .published_list()
            .contains(&host.keys["alice"].fingerprint)
    );

    // bob deletes his key from his home: refused on keyhole's path and on the planted one.
    host.homes.write("bob", Host::uid("bob"), "");
    host.publish_and_refresh();
    assert!(!sshd.login(LOGIN_USER, host.key("bob")));
    let list = std::fs::read_to_string(host.revoked_keys_file()).unwrap();
    assert!(list.contains(&host.keys["bob"].fingerprint), "{list}");
    assert!(sshd.login(LOGIN_USER, host.key("alice")));

    // doctor: a missing file is named, with sshd's consequence.
    let target = std::fs::canonicalize(host.revoked_keys_file()).unwrap();
    std::fs::remove_file(&target).unwrap();
    let missing = host.doctor_revoked_keys(&sshd);
    assert_eq!(missing["ok"], false, "{missing:#}");
    assert!(
        missing["detail"].as_str().unwrap().contains("EVERY"),
        "{missing:#}"
    );
}

/// A bucket writer who deletes the owners object (where ended keys are remembered) does not bring
/// a revoked key back: the next publish rebuilds the records from the signed list the index
/// names, so the disabled person's planted key stays refused, and the publish is not blocked.
#[test]
fn a_deleted_owners_object_never_brings_a_revoked_key_back() {
    let host = Host::new();
    host.plant(&["alice"]);
    let sshd = host.sshd(true);
    host.publish_and_refresh();
    host.set_enabled("alice", false);
    host.publish_and_refresh();
    assert!(!sshd.login(LOGIN_USER, host.key("alice")));
    let alice = host.keys["alice"].fingerprint.clone();

    let index = host.s3.object("ssh/index.json").expect("an index");
    let index = keyhole::bucket::index::Index::open(index.as_bytes(), None).unwrap();
    let owners = index.owners.expect("the index names an owners object");
    host.s3
        .delete_object(&format!("ssh/_keyhole/owners/{owners}.json"));
    // A change that makes the next run read the owners records: bob adds a key.
    let extra = host.homes.key("bob-second", "ed25519");
    host.homes.write(
        "bob",
        Host::uid("bob"),
        &format!("{}\n{}\n", host.keys["bob"].line, extra.line),
    );
    let run = host.publish(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    host.refresh();
    let list = host.published_list();
    assert!(list.contains(&alice), "{list}");
    assert!(!sshd.login(LOGIN_USER, host.key("alice")));
    assert!(sshd.login(LOGIN_USER, host.key("bob")));
    assert!(
        run.stderr
            .contains("rebuilt from the published revocation list"),
        "{run:#?}"
    );
}

/// A publish that would put most published keys on the list (a harvest bug that reads other
/// keys for everyone, say) is held like a mass removal; `--force` publishes it.
#[test]
fn the_guard_holds_a_publish_that_would_revoke_most_keys() {
    let host = Host::new();
    host.publish_and_refresh();
    let before = host.published_list();
    let index_before = host.s3.object("ssh/index.json").unwrap();

    // Every person keeps a key (so nobody leaves a group), but a different one: four of five
    // published keys would go on the list.
    let mut fresh = Vec::new();
    for (name, uid) in &PEOPLE[1..] {
        let key = host.homes.key(&format!("{name}-new"), "ed25519");
        host.homes.write(name, *uid, &format!("{}\n", key.line));
        fresh.push(key);
    }
    let held = host.publish(&[]);
    assert_eq!(held.code, 3, "{held:#?}");
    assert!(
        held.stderr
            .contains("the revocation list would grow by 4 keys of 4 people"),
        "{held:#?}"
    );
    assert_eq!(host.s3.object("ssh/index.json").unwrap(), index_before);
    assert_eq!(host.published_list(), before);

    let forced = host.publish(&["--force"]);
    assert_eq!(forced.code, 0, "{forced:#?}");
    let list = host.published_list();
    for (name, _) in &PEOPLE[1..] {
        assert!(
            list.contains(&host.keys[name].fingerprint),
            "{name}: {list}"
        );
    }
}

/// `[deny]` additions to the list are never held: with the guard refusing the rest, a denied
/// fingerprint still reaches the list (and the hosts).
#[test]
fn deny_reaches_the_list_even_when_the_guard_holds_the_rest() {
    let host = Host::new();
    host.publish_and_refresh();
    for (name, uid) in &PEOPLE[1..] {
        let key = host.homes.key(&format!("{name}-new"), "ed25519");
        host.homes.write(name, *uid, &format!("{}\n", key.line));
    }
    let alice = host.keys["alice"].fingerprint.clone();
    host.publisher
        .write_policy(&format!("{POLICY}\n[deny]\nfingerprints = [\"{alice}\"]\n"));
    let held = host.publish(&[]);
    assert_eq!(held.code, 3, "{held:#?}");
    let list = host.published_list();
    assert!(list.contains(&alice), "{list}");
    assert!(!list.contains(&host.keys["bob"].fingerprint), "{list}");
    host.refresh();
    let written = std::fs::read_to_string(host.revoked_keys_file()).unwrap();
    assert!(written.contains(&alice), "{written}");
}

/// The canary proves RevokedKeys per host: after a rotation the previous canary key, planted in
/// the probed login user's own authorized_keys, must be refused. A host that applies the list is
/// `ok`; the same host without RevokedKeys is `not_revoked`. Each inventory line names its login
/// user (`root@`), not `[canary] login_user` (an account that does not exist here).
#[test]
fn the_canary_proves_the_revocation_list_on_each_host() {
    let host = Host::new();
    let auditor = tempfile::tempdir().unwrap();
    let key_dir = auditor.path().join("keys");
    let known_hosts = auditor.path().join("known_hosts");
    let settings = std::fs::read_to_string(host.publisher.config()).unwrap();
    host.publisher.write_settings(&format!(
        "{settings}\n[canary]\nkey_dir = \"{}\"\nknown_hosts = \"{}\"\nlogin_user = \"no-such-user\"\nconnect_timeout = \"3s\"\n",
        key_dir.display(),
        known_hosts.display(),
    ));
    let canary = |args: &[&str]| {
        let mut all = vec!["canary"];
        all.extend_from_slice(args);
        host.publisher.run(&all)
    };
    let rotated = canary(&["rotate"]);
    assert_eq!(rotated.code, 0, "{rotated:#?}");
    host.publish_and_refresh();
    let rotated = canary(&["rotate"]);
    assert_eq!(rotated.code, 0, "{rotated:#?}");
    host.publish_and_refresh();

    let previous = std::fs::read_to_string(key_dir.join("previous.pub")).unwrap();
    std::fs::write(host.planted_file(), &previous).unwrap();
    std::fs::set_permissions(host.planted_file(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let applies = host.sshd(true);
    let ignores = host.sshd(false);
    let mut pinned = String::new();
    let mut inventory = String::new();
    for sshd in [&applies, &ignores] {
        let public = std::fs::read_to_string(sshd.dir().join("host_ed25519.pub")).unwrap();
        let words: Vec<&str> = public.split_whitespace().collect();
        pinned.push_str(&format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port(),
            words[0],
            words[1]
        ));
        inventory.push_str(&format!("root@127.0.0.1:{}\n", sshd.port()));
    }
    std::fs::write(&known_hosts, pinned).unwrap();
    std::fs::write(auditor.path().join("inventory"), inventory).unwrap();

    let probe = canary(&[
        "probe",
        "--inventory",
        auditor.path().join("inventory").to_str().unwrap(),
        "--format",
        "json",
    ]);
    let report = probe.json();
    let results: Vec<&str> = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|host| host["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["ok", "not_revoked"], "{probe:#?}");
    assert_ne!(probe.code, 0, "{probe:#?}");
}

/// During the retention only a key's owner may publish it again: alice is disabled, bob pastes
/// her key into his own file; the publish keeps it off bob's access, says why, and keeps it on
/// the revocation list. Re-enabled, alice has it again.
#[test]
fn a_colleague_cannot_take_over_a_key_during_the_retention() {
    let host = Host::new();
    host.publish_and_refresh();
    host.set_enabled("alice", false);
    host.publish_and_refresh();
    let alice = host.keys["alice"].clone();
    host.homes.write(
        "bob",
        Host::uid("bob"),
        &format!("{}\n{}\n", host.keys["bob"].line, alice.line),
    );
    let run = host.publish(&["--format", "json"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stdout.contains("only alice may publish it again"),
        "{run:#?}"
    );
    let published = host.s3.published("ssh/").unwrap();
    assert!(
        published["fingerprints"].get(&alice.fingerprint).is_none(),
        "{published:#}"
    );
    assert!(host.published_list().contains(&alice.fingerprint));
    host.refresh();
    let sshd = host.sshd(true);
    assert!(!sshd.login(LOGIN_USER, &alice.private));

    host.set_enabled("alice", true);
    host.publish_and_refresh();
    assert!(sshd.login(LOGIN_USER, &alice.private));
    let published = host.s3.published("ssh/").unwrap();
    assert_eq!(
        published["fingerprints"][&alice.fingerprint]["user"],
        "alice"
    );
}
