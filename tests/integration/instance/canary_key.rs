//! The canary key is never a member's key, end to end: a Samba DC, s3s-fs, the publisher, and an
//! instance behind real sshd. mallory pasted the canary's current public key into her
//! `authorized_keys`, bob the previous one into his: the publisher drops both from every file,
//! reports each naming the member, seals every group of the index it signs; and the canary key
//! logging in to the instance only ever gets the marker.

use std::os::unix::fs::{PermissionsExt, chown};

use crate::support::keyhole::ssh_keygen;
use crate::support::samba::{Fixture, UserSpec};
use crate::support::sshd::Sshd;
use crate::support::stack::{Extra, Stack};

const NOBODY: u32 = 65534;
const LOGIN_USER: &str = "root";
const POLICY: &str = "[access_groups.web-prod]\ngroups = [\"Web Team\"]\n";

/// The public key part (`type blob`) of an OpenSSH public key line.
fn key_part(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_pasted_canary_key_is_dropped_by_the_publisher_and_only_ever_runs_the_marker() {
    let fixture = Fixture::new()
        .user(UserSpec::unix("bob", 21001, "/home/bob"))
        .user(UserSpec::unix("mallory", 21002, "/home/mallory"))
        .group("Web Team", &["bob", "mallory"]);
    let stack = Stack::start(&fixture, POLICY);
    let (signing_key, verify_key) = stack.publisher.signing_key();

    // The canary's key directory: current and previous key pairs.
    let canary_dir = tempfile::tempdir().unwrap();
    let keys = canary_dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
    ssh_keygen(
        &["-q", "-t", "ed25519", "-N", "", "-f"],
        &keys.join("current"),
    );
    ssh_keygen(
        &["-q", "-t", "ed25519", "-N", "", "-f"],
        &keys.join("previous"),
    );
    let current = std::fs::read_to_string(keys.join("current.pub")).unwrap();
    let previous = std::fs::read_to_string(keys.join("previous.pub")).unwrap();

    let bob = stack.homes.key("bob", "ed25519");
    let mallory = stack.homes.key("mallory", "ed25519");
    stack
        .homes
        .write("bob", 21001, &format!("{}\n{previous}", bob.line));
    stack
        .homes
        .write("mallory", 21002, &format!("{current}{}\n", mallory.line));
    stack.write_settings(Extra {
        sections: &format!(
            "\n[signing]\nkey_file = \"{}\"\nvalidity = \"7d\"\n\n[canary]\nkey_dir = \"{}\"\n",
            signing_key.display(),
            keys.display()
        ),
        ..Extra::default()
    });
    let published = stack.run(&["publish"]);
    assert_eq!(published.code, 0, "{published:#?}");

    // Neither canary key is in the group file; each drop is reported naming the member.
    let file = stack.group_file("web-prod");
    assert!(!file.contains(&key_part(&current)), "{file}");
    assert!(!file.contains(&key_part(&previous)), "{file}");
    assert!(
        file.contains(&bob.line) && file.contains(&mallory.line),
        "{file}"
    );
    let report = format!("{}{}", published.stdout, published.stderr);
    for member in ["bob", "mallory"] {
        assert!(
            report
                .lines()
                .any(|line| line.contains(member) && line.contains("audit canary")),
            "{member} not named: {report}"
        );
    }
    // The index ships the canary's restricted line and seals every group.
    let index = stack.s3.object("ssh/index.json").unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&index).unwrap();
    let text: serde_json::Value =
        serde_json::from_str(envelope["index"].as_str().unwrap()).unwrap();
    assert!(
        text["canary"]
            .as_str()
            .unwrap()
            .contains(&key_part(&current))
    );
    assert!(text["groups"]["web-prod"]["seal"].is_string(), "{text}");

    // An instance behind sshd: the canary key runs the marker whatever it asks; bob logs in.
    let instance = tempfile::tempdir().unwrap();
    std::fs::set_permissions(instance.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache = instance.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    chown(&cache, Some(NOBODY), Some(NOBODY)).unwrap();
    let config = instance.path().join("keyhole.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[instance]\nlogin_user = \"{LOGIN_USER}\"\naccess_groups = [\"web-prod\"]\ncache_dir = \"{}\"\ncache_ttl = \"1h\"\nmax_stale = \"1h\"\nfetch_timeout = \"2s\"\nverify_key = \"{verify_key}\"\n",
            stack.s3.settings("ssh/"),
            cache.display()
        ),
    )
    .unwrap();
    let env = stack.s3.instance_credentials(instance.path(), NOBODY);
    let sshd = Sshd::start(&config, &env);
    let run = |key: &std::path::Path, command: &str| {
        sshd.run(LOGIN_USER, key, command)
            .map(|printed| printed.trim().to_owned())
    };
    assert_eq!(
        run(&keys.join("current"), "echo pwned").as_deref(),
        Some(keyhole::bucket::canary_line::MARKER),
        "{}",
        sshd.log()
    );
    // The previous canary key is in no file: refused.
    assert_eq!(
        run(&keys.join("previous"), "echo pwned"),
        None,
        "{}",
        sshd.log()
    );
    assert_eq!(
        run(&bob.private, "echo hello").as_deref(),
        Some("hello"),
        "{}",
        sshd.log()
    );
}
