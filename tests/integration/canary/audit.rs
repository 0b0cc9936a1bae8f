//! The audit canary end to end (issue 13): a publisher with a Samba DC and s3s-fs, four real
//! sshd on 127.0.0.1 whose AuthorizedKeysCommand is keyhole (as nobody), three of them audited
//! instances (one reached only through the fourth, a bastion), and `keyhole canary run` logging
//! in to each with the real ssh client. Then one instance whose refresh is broken (its S3
//! endpoint unreachable, its cache within max_stale) must be reported `not_revoked`, and a
//! stopped one `unreachable`.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::homes::Key;
use crate::support::keyhole::Run;
use crate::support::samba::{Fixture, UserSpec};
use crate::support::sshd::Sshd;
use crate::support::stack::{Extra, Stack};
use serde_json::Value;

const NOBODY: u32 = 65534;
/// The shared login user; root, so that the test needs no local account of its own.
const LOGIN_USER: &str = "root";
const POLICY: &str = "[access_groups.web-prod]\ngroups = [\"Web Team\"]\n";

fn fixture() -> Fixture {
    Fixture::new()
        .user(UserSpec::unix("bob", 21001, "/home/bob"))
        .group("Web Team", &["bob"])
}

/// One audited host: its keyhole instance settings and cache, and its sshd.
struct Instance {
    dir: tempfile::TempDir,
    sshd: Option<Sshd>,
}

impl Instance {
    fn port(&self) -> u16 {
        self.sshd.as_ref().expect("running").port()
    }
}

struct Audit {
    stack: Stack,
    bob: Key,
    verify_key: String,
    instances: Vec<Instance>,
    bastion: Instance,
    auditor: tempfile::TempDir,
}

impl Audit {
    fn new() -> Audit {
        let stack = Stack::start(&fixture(), POLICY);
        let bob = stack.give_keys(&[("bob", 21001)]).remove("bob").unwrap();
        let (signing_key, verify_key) = stack.publisher.signing_key();
        let auditor = tempfile::tempdir().unwrap();
        let mut audit = Audit {
            stack,
            bob,
            verify_key,
            instances: Vec::new(),
            bastion: Instance {
                dir: tempfile::tempdir().unwrap(),
                sshd: None,
            },
            auditor,
        };
        let sections = format!(
            "\n[signing]\nkey_file = \"{}\"\nvalidity = \"7d\"\n\n[canary]\nkey_dir = \"{}\"\nssh_config = \"{}\"\nknown_hosts = \"{}\"\nlogin_user = \"{LOGIN_USER}\"\nconnect_timeout = \"3s\"\n",
            signing_key.display(),
            audit.auditor.path().join("keys").display(),
            audit.auditor.path().join("ssh_config").display(),
            audit.auditor.path().join("known_hosts").display(),
        );
        audit.stack.write_settings(Extra {
            sections: &sections,
            ..Extra::default()
        });
        let first = audit.stack.run(&["publish"]);
        assert_eq!(first.code, 0, "{first:#?}");
        for _ in 0..3 {
            let instance = audit.instance();
            audit.instances.push(instance);
        }
        audit.bastion = audit.instance();
        audit.write_auditor_files();
        audit
    }

    /// A new instance of web-prod with its own settings, cache and sshd.
    fn instance(&self) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut instance = Instance { dir, sshd: None };
        self.write_instance_settings(&instance, &self.stack.s3.endpoint());
        let env = self.instance_env(instance.dir.path());
        instance.sshd = Some(Sshd::start(&instance.dir.path().join("keyhole.toml"), &env));
        instance
    }

    /// The instance's keyhole.toml: refreshes at every login (cache_ttl 1ms), S3 at `endpoint`.
    fn write_instance_settings(&self, instance: &Instance, endpoint: &str) {
        let cache = instance.dir.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        chown(&cache, Some(NOBODY), Some(NOBODY)).unwrap();
        let s3 = self
            .stack
            .s3
            .settings("ssh/")
            .replace(&self.stack.s3.endpoint(), endpoint);
        std::fs::write(
            instance.dir.path().join("keyhole.toml"),
            format!(
                "{s3}\n[instance]\nlogin_user = \"{LOGIN_USER}\"\naccess_groups = [\"web-prod\"]\ncache_dir = \"{}\"\ncache_ttl = \"1ms\"\nmax_stale = \"1h\"\nfetch_timeout = \"2s\"\nverify_key = \"{}\"\n",
                cache.display(),
                self.verify_key
            ),
        )
        .unwrap();
    }

    /// The AWS credentials an instance finds, as a file (sshd passes no environment).
    fn instance_env(&self, dir: &Path) -> Vec<(String, String)> {
        self.stack.s3.instance_credentials(dir, NOBODY)
    }

    /// The inventory (the third instance only through the bastion), the pinned host keys, and an
    /// ssh_config that gives the bastion hop its own identity (bob's key: the canary key is
    /// restricted and could not open the jump's forwarding).
    fn write_auditor_files(&self) {
        let dir = self.auditor.path();
        let port = |i: usize| self.instances[i].port();
        std::fs::write(
            dir.join("inventory"),
            format!(
                "# the audited fleet\n127.0.0.1:{}\n127.0.0.1:{}\n127.0.0.1:{} via jump\n",
                port(0),
                port(1),
                port(2)
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("ssh_config"),
            format!(
                "Host jump\n  HostName 127.0.0.1\n  Port {}\n  User {LOGIN_USER}\n  IdentityFile {}\n",
                self.bastion.port(),
                self.bob.private.display()
            ),
        )
        .unwrap();
        let mut known_hosts = String::new();
        for instance in self.instances.iter().chain([&self.bastion]) {
            let sshd = instance.sshd.as_ref().unwrap();
            let public = std::fs::read_to_string(sshd.dir().join("host_ed25519.pub")).unwrap();
            let mut words = public.split_whitespace();
            known_hosts.push_str(&format!(
                "[127.0.0.1]:{} {} {}\n",
                sshd.port(),
                words.next().unwrap(),
                words.next().unwrap()
            ));
        }
        std::fs::write(dir.join("known_hosts"), known_hosts).unwrap();
    }

    fn inventory(&self) -> PathBuf {
        self.auditor.path().join("inventory")
    }

    fn canary(&self, args: &[&str]) -> Run {
        let mut all = vec!["canary"];
        all.extend_from_slice(args);
        self.stack.run(&all)
    }

    fn run(&self, deadline: &str) -> (Run, Value) {
        let inventory = self.inventory().display().to_string();
        let metrics = self
            .auditor
            .path()
            .join("canary.prom")
            .display()
            .to_string();
        let run = self.canary(&[
            "run",
            "--inventory",
            &inventory,
            "--format",
            "json",
            "--deadline",
            deadline,
            "--interval",
            "1s",
            "--metrics-file",
            &metrics,
        ]);
        let report = run.json();
        (run, report)
    }
}

fn results(report: &Value) -> Vec<(String, String)> {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|host| {
            (
                host["host"].as_str().unwrap().to_owned(),
                host["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_canary_proves_grant_and_revocation_on_every_host_and_names_those_that_fail() {
    let mut audit = Audit::new();
    let hosts: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", audit.instances[i].port()))
        .collect();

    // The first run: a key is granted everywhere (there is no previous key to see refused yet).
    let (first, report) = audit.run("60s");
    assert_eq!(first.code, 0, "{first:#?}");
    assert_eq!(
        results(&report),
        hosts
            .iter()
            .map(|h| (h.clone(), "ok".to_owned()))
            .collect::<Vec<_>>()
    );

    // The second: the new key is accepted and the previous one refused, on every host, with
    // each host's latencies and the fleet's.
    let (second, report) = audit.run("60s");
    assert_eq!(second.code, 0, "{second:#?}");
    eprintln!("canary run report:\n{}", second.stdout);
    assert_eq!(report["ok"], true);
    for host in report["hosts"].as_array().unwrap() {
        assert_eq!(host["result"], "ok", "{host}");
        assert_eq!(host["detail"], "current key accepted, previous refused");
        assert!(host["granted_after"].as_f64().unwrap() >= 0.0, "{host}");
        assert!(host["revoked_after"].as_f64().unwrap() >= 0.0, "{host}");
    }
    assert_eq!(report["latency"]["grant"]["hosts"], 3);
    assert_eq!(report["latency"]["revocation"]["hosts"], 3);
    let metrics = std::fs::read_to_string(audit.auditor.path().join("canary.prom")).unwrap();
    assert!(
        metrics.contains("keyhole_canary_hosts{result=\"ok\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("keyhole_canary_ok 1"), "{metrics}");

    // The canary key can do nothing but print the marker: the command asked for is not run.
    let key = audit.auditor.path().join("keys/current");
    let output = Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(&key)
        .args(["-p", &audit.instances[0].port().to_string()])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .arg(format!("{LOGIN_USER}@127.0.0.1"))
        .arg("id; cat /etc/shadow")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "keyhole-canary-ok\n"
    );

    // whois names the canary, off an instance and in sshd's log.
    let fingerprint = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(audit.auditor.path().join("keys/current.pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let whois = audit.stack.run(&["whois", &fingerprint]);
    assert_eq!(whois.code, 0, "{whois:#?}");
    assert!(
        whois.stdout.contains("the keyhole audit canary"),
        "{}",
        whois.stdout
    );
    let log = audit.instances[0].sshd.as_ref().unwrap().log();
    assert!(
        log.contains(&format!("{fingerprint} = the keyhole audit canary")),
        "{log}"
    );

    // Instance 2 can no longer refresh (its S3 endpoint is unreachable; its cache is within
    // max_stale, so it keeps serving the old canary), and instance 3 is stopped.
    audit.write_instance_settings(&audit.instances[1], "http://127.0.0.1:9");
    audit.instances[2].sshd = None;
    let (third, report) = audit.run("6s");
    assert_eq!(third.code, 1, "{third:#?}");
    assert_eq!(report["ok"], false);
    assert_eq!(
        results(&report),
        [
            (hosts[0].clone(), "ok".to_owned()),
            (hosts[1].clone(), "not_revoked".to_owned()),
            (hosts[2].clone(), "unreachable".to_owned()),
        ]
    );
    let metrics = std::fs::read_to_string(audit.auditor.path().join("canary.prom")).unwrap();
    for line in [
        "keyhole_canary_hosts{result=\"ok\"} 1",
        "keyhole_canary_hosts{result=\"not_revoked\"} 1",
        "keyhole_canary_hosts{result=\"unreachable\"} 1",
        "keyhole_canary_ok 0",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
}

/// A host whose key has changed is reported as such, never probed with the canary key; and a
/// bastion that refuses its own hop is told apart from the instance behind it.
#[test]
fn host_key_mismatch_and_bastion_failures_are_told_apart() {
    let audit = Audit::new();
    let rotated = audit.canary(&["rotate"]);
    assert_eq!(rotated.code, 0, "{rotated:#?}");
    assert_eq!(audit.stack.run(&["publish"]).code, 0);
    let inventory = audit.inventory().display().to_string();

    // Another host key pinned for instance 1; the bastion hop given a key nobody accepts.
    let known_hosts = audit.auditor.path().join("known_hosts");
    let pinned = std::fs::read_to_string(&known_hosts).unwrap();
    let other = audit.stack.homes.key("impostor-host", "ed25519");
    let port = audit.instances[0].port();
    let forged: String = pinned
        .lines()
        .map(|line| {
            if line.starts_with(&format!("[127.0.0.1]:{port} ")) {
                let mut words = other.line.split_whitespace();
                format!(
                    "[127.0.0.1]:{port} {} {}\n",
                    words.next().unwrap(),
                    words.next().unwrap()
                )
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&known_hosts, forged).unwrap();
    let stranger = audit.stack.homes.key("stranger", "ed25519");
    let config = std::fs::read_to_string(audit.auditor.path().join("ssh_config"))
        .unwrap()
        .replace(
            &audit.bob.private.display().to_string(),
            &stranger.private.display().to_string(),
        );
    std::fs::write(audit.auditor.path().join("ssh_config"), config).unwrap();

    let probe = audit.canary(&["probe", "--inventory", &inventory, "--format", "json"]);
    assert_eq!(probe.code, 1, "{probe:#?}");
    let report = probe.json();
    let results: Vec<String> = results(&report).into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        results,
        ["host_key_mismatch", "ok", "bastion_failed"],
        "{report:#}"
    );
}

/// `--ec2-tag`: the running instances with the tag, found with DescribeInstances against moto's
/// EC2 on 127.0.0.1 (the only EC2 that can run here). moto's instances have 10.x addresses that
/// are not on this machine: the test only lists them (`--list`), it never connects to them.
#[cfg(feature = "ec2")]
#[test]
fn ec2_discovery_finds_the_running_tagged_instances() {
    let moto = crate::support::moto::Moto::start();
    moto.python(
        r#"
ids = lambda team, n: [i["InstanceId"] for i in ec2.run_instances(ImageId=ami, MinCount=n, MaxCount=n,
    TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Team", "Value": team}]}])["Instances"]]
web = ids("web", 3)
db = ids("db", 1)
ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)
ec2.stop_instances(InstanceIds=[web[2]])
print(" ".join(web + db))
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyhole.toml");
    std::fs::write(
        &config,
        format!(
            "[canary]\nkey_dir = \"{}\"\nec2_endpoint = \"{}\"\nec2_region = \"us-east-1\"\nec2_via = \"ops@jump\"\n",
            dir.path().join("keys").display(),
            moto.endpoint()
        ),
    )
    .unwrap();
    let list = |selector: &str| {
        let run = crate::support::keyhole::run_keyhole(
            &config,
            &["canary", "probe", "--ec2-tag", selector, "--list"],
            &crate::support::moto::env(),
        );
        assert_eq!(run.code, 0, "{run:#?}");
        run.stdout
    };
    let web = list("Team=web");
    let lines: Vec<&str> = web.lines().collect();
    assert_eq!(lines.len(), 2, "the two running web instances: {web}");
    for line in &lines {
        // host:22 via the bastion, then the instance ID as a comment.
        let (address, rest) = line.split_once(":22 via ops@jump  # i-").expect(line);
        assert!(address.starts_with("10."), "{line}");
        assert!(rest.ends_with(address), "{line}");
    }
    assert_eq!(list("Team").lines().count(), 3, "any Team tag, running");
    let none = crate::support::keyhole::run_keyhole(
        &config,
        &["canary", "probe", "--ec2-tag", "Team=nobody", "--list"],
        &crate::support::moto::env(),
    );
    assert_eq!(none.code, 1, "{none:#?}");
    assert!(none.stderr.contains("no hosts to probe"), "{}", none.stderr);
}
