//! `keyhole doctor` against real `sshd -T` output: a host wired right, then each
//! misconfiguration planted once (an earlier AuthorizedKeysCommand shadowing keyhole's, a
//! missing `%f`, a command user that does not exist, AuthorizedKeysFile turned off, EC2
//! Instance Connect's systemd `-o` override, a group-writable directory above the command,
//! settings the command user cannot read, a cache it cannot write, a login user that does not
//! exist, access groups never resolved from EC2). Each must be named, with its fix, by the
//! check that owns it, and leave the other sshd checks holding.
//!
//! S3 is not reachable here (tests/fleet.rs runs doctor against a real publish, all green), so
//! the `index` check fails in every case and is not what these tests look at.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::PathBuf;

use crate::support::imds::Imds;
use crate::support::keyhole::{run_keyhole, ssh_keygen};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// A host: a root-owned directory under /run (never /tmp: sshd's path rules) holding the
/// command (a wrapper named like keyhole), a host key, the sshd config, keyhole's settings and
/// its cache.
struct Host {
    dir: tempfile::TempDir,
    /// Lines of the sshd config, in order.
    sshd: Vec<String>,
    /// Extra lines for `[instance]`.
    instance: String,
    login_user: String,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("keyhole-doctor-")
            .tempdir_in("/run")
            .unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        ssh_keygen(
            &["-q", "-t", "ed25519", "-N", "", "-f"],
            &root.join("host_ed25519"),
        );
        let bin = root.join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let command = bin.join("keyhole");
        std::fs::write(
            &command,
            format!(
                "#!/bin/sh\nexec {} \"$@\"\n",
                crate::support::keyhole::binary_for_nobody().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&command, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = root.join("cache");
        std::fs::create_dir(&cache).unwrap();
        chown(&cache, Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::create_dir(root.join("systemd")).unwrap();
        let sshd = vec![
            format!("HostKey {}", root.join("host_ed25519").display()),
            "PidFile none".to_owned(),
            "UsePAM no".to_owned(),
            "AuthorizedKeysFile .ssh/authorized_keys".to_owned(),
            format!(
                "AuthorizedKeysCommand {} --config {} authorized-keys %u %f",
                command.display(),
                root.join("keyhole.toml").display()
            ),
            "AuthorizedKeysCommandUser nobody".to_owned(),
            format!("RevokedKeys {}", root.join("revoked_keys").display()),
        ];
        std::fs::write(root.join("revoked_keys"), "").unwrap();
        Host {
            dir,
            sshd,
            instance: "access_groups = [\"web-prod\"]\n".to_owned(),
            login_user: "root".to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the sshd line starting with `keyword`.
    fn sshd_line(&mut self, keyword: &str, line: &str) {
        let at = self
            .sshd
            .iter()
            .position(|l| l.starts_with(keyword))
            .unwrap();
        self.sshd[at] = line.to_owned();
    }

    /// Runs doctor (as root, like an operator) and returns its findings by check.
    fn doctor(&self) -> (i32, BTreeMap<String, Value>) {
        let config = self.path("keyhole.toml");
        if !config.exists() {
            std::fs::write(
                &config,
                format!(
                    "[s3]\nbucket = \"keys\"\nendpoint = \"http://127.0.0.1:1\"\nforce_path_style = true\nregion = \"us-east-1\"\n\n[instance]\nlogin_user = \"{}\"\ncache_dir = \"{}\"\nrevoked_keys_file = \"{}\"\n{}",
                    self.login_user,
                    self.path("cache").display(),
                    self.path("revoked_keys").display(),
                    self.instance
                ),
            )
            .unwrap();
        }
        let sshd_config = self.path("sshd_config");
        std::fs::write(&sshd_config, self.sshd.join("\n") + "\n").unwrap();
        let run = run_keyhole(
            &config,
            &[
                "doctor",
                "--format",
                "json",
                "--sshd-config",
                sshd_config.to_str().unwrap(),
                "--systemd-dir",
                self.path("systemd").to_str().unwrap(),
            ],
            &[
                ("AWS_ACCESS_KEY_ID".into(), "test".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
                ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ],
        );
        let report = run.json();
        assert_eq!(
            report["ok"],
            Value::Bool(run.code == 0),
            "ok and the exit code disagree: {run:#?}"
        );
        let findings = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["check"].as_str().unwrap().to_owned(), f.clone()))
            .collect();
        (run.code, findings)
    }
}

/// The finding `check`, which must have failed with a fix; every other sshd-side check holds.
fn failed(findings: &BTreeMap<String, Value>, check: &str) -> Value {
    let finding = findings
        .get(check)
        .unwrap_or_else(|| panic!("no {check} finding: {findings:#?}"))
        .clone();
    assert_eq!(finding["ok"], false, "{check} should fail: {finding:#}");
    assert!(
        finding["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{finding:#}"
    );
    for other in [
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
    ] {
        if other != check
            && let Some(f) = findings.get(other)
        {
            assert_eq!(f["ok"], true, "{other} failed too: {findings:#?}");
        }
    }
    finding
}

fn detail(finding: &Value) -> &str {
    finding["detail"].as_str().unwrap()
}

#[test]
fn a_host_wired_right_passes_every_sshd_and_file_check() {
    let (code, findings) = Host::new().doctor();
    assert_eq!(code, 1, "S3 is unreachable here: {findings:#?}");
    for (check, finding) in &findings {
        if check != "index" && check != "cache_fresh" {
            assert_eq!(finding["ok"], true, "{check}: {finding:#}");
            assert!(finding["fix"].is_null(), "{finding:#}");
        }
    }
    assert_eq!(findings["index"]["ok"], false);
    assert!(
        detail(&findings["authorized_keys_command"]).contains("authorized-keys %u %f"),
        "{findings:#?}"
    );
}

#[test]
fn an_earlier_authorized_keys_command_shadowing_keyhole_is_named_with_its_line() {
    let mut host = Host::new();
    let other = host.path("05-other.conf");
    std::fs::write(
        &other,
        "AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %u %f\n",
    )
    .unwrap();
    host.sshd.insert(0, format!("Include {}", other.display()));
    let (code, findings) = host.doctor();
    assert_eq!(code, 1);
    let finding = failed(&findings, "authorized_keys_command");
    assert!(
        detail(&finding).contains(&format!("{}:1", other.display())),
        "{finding:#}"
    );
    assert!(detail(&finding).contains("first value wins"), "{finding:#}");
}

#[test]
fn a_command_without_the_fingerprint_is_named() {
    let mut host = Host::new();
    let command = host.path("bin/keyhole");
    host.sshd_line(
        "AuthorizedKeysCommand ",
        &format!(
            "AuthorizedKeysCommand {} authorized-keys %u",
            command.display()
        ),
    );
    let (_, findings) = host.doctor();
    let finding = failed(&findings, "authorized_keys_command_arguments");
    assert!(detail(&finding).contains("%f"), "{finding:#}");
}

#[test]
fn a_command_user_that_does_not_exist_is_named() {
    let mut host = Host::new();
    host.sshd_line(
        "AuthorizedKeysCommandUser",
        "AuthorizedKeysCommandUser keyhole-no-such-user",
    );
    let (_, findings) = host.doctor();
    let finding = failed(&findings, "authorized_keys_command_user");
    assert!(
        detail(&finding).contains("keyhole-no-such-user does not exist"),
        "{finding:#}"
    );
}

#[test]
fn authorized_keys_file_none_is_named_the_emergency_keys_need_it() {
    let mut host = Host::new();
    host.sshd_line("AuthorizedKeysFile", "AuthorizedKeysFile none");
    let (_, findings) = host.doctor();
    let finding = failed(&findings, "authorized_keys_file");
    assert!(detail(&finding).contains("emergency"), "{finding:#}");
}

#[test]
fn ec2_instance_connect_overriding_the_command_from_systemd_is_detected() {
    let host = Host::new();
    let dropins = host.path("systemd/sshd.service.d");
    std::fs::create_dir_all(&dropins).unwrap();
    // What Amazon Linux's ec2-instance-connect package installs.
    std::fs::write(
        dropins.join("ec2-instance-connect.conf"),
        "[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -D $OPTIONS $CRYPTO_POLICY -o \"AuthorizedKeysCommand /opt/aws/bin/eic_run_authorized_keys %%u %%f\" -o \"AuthorizedKeysCommandUser ec2-instance-connect\"\n",
    )
    .unwrap();
    let (_, findings) = host.doctor();
    let finding = failed(&findings, "systemd_override");
    assert!(
        detail(&finding).contains("ec2-instance-connect.conf"),
        "{finding:#}"
    );
}

#[test]
fn a_group_writable_directory_above_the_command_is_named() {
    let host = Host::new();
    std::fs::set_permissions(host.path("bin"), std::fs::Permissions::from_mode(0o775)).unwrap();
    let (_, findings) = host.doctor();
    let finding = failed(&findings, "command_path");
    assert!(
        detail(&finding).contains(&format!(
            "{} is writable by its group or by others",
            host.path("bin").display()
        )),
        "{finding:#}"
    );
}

#[test]
fn settings_the_command_user_cannot_read_are_named() {
    let host = Host::new();
    host.doctor();
    std::fs::set_permissions(
        host.path("keyhole.toml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let (_, findings) = host.doctor();
    let finding = failed(&findings, "settings_readable");
    assert!(
        detail(&finding).contains("nobody may not read"),
        "{finding:#}"
    );
}

#[test]
fn a_cache_the_command_user_cannot_write_is_named() {
    let host = Host::new();
    chown(host.path("cache"), Some(0), Some(0)).unwrap();
    let (_, findings) = host.doctor();
    let finding = failed(&findings, "cache_writable");
    assert!(detail(&finding).contains("may not write in"), "{finding:#}");
}

#[test]
fn a_login_user_that_does_not_exist_is_named() {
    let mut host = Host::new();
    host.login_user = "ec2-user-not-here".to_owned();
    let (_, findings) = host.doctor();
    let finding = failed(&findings, "login_user");
    assert!(
        detail(&finding).contains("ec2-user-not-here"),
        "{finding:#}"
    );
}

#[test]
fn access_groups_never_resolved_from_ec2_are_named_with_the_fix() {
    let imds = Imds::start();
    imds.set(|m| m.tags_enabled = false);
    let mut host = Host::new();
    host.instance = format!(
        "access_groups_tag = \"keyhole-access-groups\"\nimds_endpoint = \"{}\"\n",
        imds.endpoint()
    );
    let (_, findings) = host.doctor();
    let finding = failed(&findings, "access_groups");
    let fix = finding["fix"].as_str().unwrap();
    assert!(fix.contains("InstanceMetadataTags=enabled"), "{fix}");
    assert!(fix.contains("keyhole-access-groups="), "{fix}");
    assert!(
        detail(&finding).contains("never resolved") && detail(&finding).contains("404"),
        "{finding:#}"
    );
}
