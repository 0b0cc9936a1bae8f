//! A fleet host end to end: the publisher publishes three access groups (signed) from the real
//! Samba AD to the local S3; the host's settings name no group, only the EC2 tag to read; the
//! IMDSv2 stand-in says which groups; `keyhole refresh` (as the unprivileged cache owner)
//! resolves them and fills the cache; real sshd then lets in exactly those groups' members,
//! without a single request to IMDS from the login path. A changed tag changes who gets in
//! (and a group missing from the index is reported, the others still served); an IMDS outage
//! keeps the last groups; and `keyhole doctor` finds nothing wrong with this host.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

use crate::support::homes::Key;
use crate::support::imds::Imds;
use crate::support::keyhole::{Run, run_keyhole};
use crate::support::samba::{Fixture, UserSpec};
use crate::support::sshd::Sshd;
use crate::support::stack::{Extra, Stack};

const NOBODY: u32 = 65534;
/// The shared login user; root, so that the test needs no local account of its own.
const LOGIN_USER: &str = "root";
const TAG: &str = "keyhole-access-groups";
const PEOPLE: &[(&str, u32)] = &[("bob", 23001), ("carol", 23002), ("dave", 23003)];

const POLICY: &str = r#"
[access_groups.web-prod]
users = ["bob"]

[access_groups.db-prod]
users = ["carol"]

[access_groups.ops]
users = ["dave"]
"#;

fn fixture() -> Fixture {
    let mut fixture = Fixture::new();
    for (name, uid) in PEOPLE {
        fixture = fixture.user(UserSpec::unix(name, *uid, &format!("/home/{name}")));
    }
    fixture
}

struct Host {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Host {
    /// An instance whose only source of access groups is the EC2 tag, read from `imds`.
    fn new(stack: &Stack, imds: &Imds, verify_key: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        chown(&cache, Some(NOBODY), Some(NOBODY)).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::write(
            dir.path().join("keyhole.toml"),
            format!(
                "{}\n[instance]\nlogin_user = \"{LOGIN_USER}\"\naccess_groups_tag = \"{TAG}\"\nimds_endpoint = \"{}\"\ncache_dir = \"{}\"\nverify_key = \"{verify_key}\"\nrevoked_keys_file = \"{}\"\n",
                stack.s3.settings("ssh/"),
                imds.endpoint(),
                cache.display(),
                state.join("revoked_keys").display()
            ),
        )
        .unwrap();
        // sshd passes no environment: the S3 credentials are a file readable by nobody. (The
        // S3 client's credential chain must not wander off to 169.254.169.254 either.)
        let env = stack.s3.instance_credentials(dir.path(), NOBODY);
        Host { dir, env }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("keyhole.toml")
    }

    /// `keyhole refresh` as the timer runs it: as nobody, the cache's owner.
    fn refresh(&self) -> Run {
        self.as_nobody(&["refresh"])
    }

    /// keyhole run as nobody, the cache's owner (keyhole refuses a cache directory owned by
    /// someone else), as the timer and sshd run it.
    fn as_nobody(&self, args: &[&str]) -> Run {
        let output = std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(crate::support::keyhole::binary_for_nobody())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The keys `authorized-keys` serves, as their base64 blobs.
    fn served(&self) -> Vec<String> {
        let run = self.as_nobody(&["authorized-keys", LOGIN_USER]);
        assert_eq!(run.code, 0, "{run:#?}");
        let mut blobs: Vec<String> = run
            .stdout
            .lines()
            .map(|line| blob(line).to_owned())
            .collect();
        blobs.sort();
        blobs
    }
}

/// The base64 part of a key line (whatever options or comment surround it).
fn blob(line: &str) -> &str {
    line.split_whitespace()
        .find(|word| word.starts_with("AAAA"))
        .unwrap_or_default()
}

fn blobs_of(keys: &BTreeMap<&'static str, Key>, people: &[&str]) -> Vec<String> {
    let mut blobs: Vec<String> = people
        .iter()
        .map(|p| blob(&keys[p].line).to_owned())
        .collect();
    blobs.sort();
    blobs
}

/// An sshd config for `doctor --sshd-config`: the one the harness runs, but with
/// AuthorizedKeysFile kept as the emergency fallback (the harness turns it off so that only
/// keyhole can let anyone in).
fn doctor_sshd_config(sshd: &Sshd, revoked_keys: &Path) -> PathBuf {
    let dir = sshd.dir();
    let path = dir.join("sshd_config.doctor");
    std::fs::write(
        &path,
        format!(
            "HostKey {}\nPidFile none\nUsePAM no\nAuthorizedKeysFile .ssh/authorized_keys\nAuthorizedKeysCommand {} %u %f\nAuthorizedKeysCommandUser nobody\nRevokedKeys {}\n",
            dir.join("host_ed25519").display(),
            dir.join("keyhole-authorized-keys").display(),
            revoked_keys.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_host_serves_exactly_the_groups_its_ec2_tag_names_through_real_sshd() {
    let stack = Stack::start(&fixture(), POLICY);
    let keys = stack.give_keys(PEOPLE);
    let (signing_key, verify_key) = stack.publisher.signing_key();
    stack.write_settings(Extra {
        sections: &format!(
            "\n[signing]\nkey_file = \"{}\"\nvalidity = \"7d\"\n",
            signing_key.display()
        ),
        ..Extra::default()
    });
    let published = stack.run(&["publish"]);
    assert_eq!(published.code, 0, "{published:#?}");

    let imds = Imds::start();
    imds.tag(TAG, "web-prod, db-prod");
    imds.tag("Name", "web-17");
    let host = Host::new(&stack, &imds, &verify_key);

    let refreshed = host.refresh();
    assert_eq!(refreshed.code, 0, "{refreshed:#?}");
    assert_eq!(host.served(), blobs_of(&keys, &["bob", "carol"]));

    let sshd = Sshd::start(&host.config(), &host.env);
    let asked = imds.requests();
    assert!(
        sshd.login(LOGIN_USER, &keys["bob"].private),
        "{}",
        sshd.log()
    );
    assert!(
        sshd.login(LOGIN_USER, &keys["carol"].private),
        "{}",
        sshd.log()
    );
    assert!(
        !sshd.login(LOGIN_USER, &keys["dave"].private),
        "dave is only in ops, which the tag does not name"
    );
    assert_eq!(imds.requests(), asked, "the login path asked IMDS");

    // Doctor on this host: every check holds.
    let doctor = run_keyhole(
        &host.config(),
        &[
            "doctor",
            "--format",
            "json",
            "--sshd-config",
            doctor_sshd_config(&sshd, &host.dir.path().join("state/revoked_keys"))
                .to_str()
                .unwrap(),
            "--systemd-dir",
            host.dir.path().to_str().unwrap(),
        ],
        &host.env,
    );
    let report = doctor.json();
    assert_eq!(doctor.code, 0, "{doctor:#?}");
    assert_eq!(report["ok"], true, "{report:#}");
    let checks: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    for expected in [
        "settings",
        "sshd_config",
        "authorized_keys_command",
        "authorized_keys_command_arguments",
        "authorized_keys_command_user",
        "authorized_keys_file",
        "command_path",
        "systemd_override",
        "settings_readable",
        "cache_writable",
        "login_user",
        "access_groups",
        "index",
        "groups_published",
        "cache_fresh",
        "revoked_keys",
    ] {
        assert!(checks.contains(&expected), "no {expected} in {checks:?}");
    }

    // The tag changes: ops, plus a group nobody published. Refresh says which, fails so that
    // monitoring sees it, and serves the one that exists.
    imds.tag(TAG, "ops,no-such-group");
    let refreshed = host.refresh();
    assert_eq!(refreshed.code, 1, "{refreshed:#?}");
    assert!(
        refreshed.stderr.contains("no-such-group")
            && refreshed.stderr.contains("not in the published index"),
        "{}",
        refreshed.stderr
    );
    assert_eq!(host.served(), blobs_of(&keys, &["dave"]));
    assert!(
        sshd.login(LOGIN_USER, &keys["dave"].private),
        "{}",
        sshd.log()
    );
    assert!(
        !sshd.login(LOGIN_USER, &keys["bob"].private),
        "web-prod was taken off the tag"
    );

    // IMDS goes away: the last resolved groups stay, and refresh says so.
    imds.stop();
    let refreshed = host.refresh();
    assert_eq!(refreshed.code, 1, "{refreshed:#?}");
    assert!(
        refreshed.stderr.contains("keeping the last resolved ones"),
        "{}",
        refreshed.stderr
    );
    assert!(
        sshd.login(LOGIN_USER, &keys["dave"].private),
        "{}",
        sshd.log()
    );
}
