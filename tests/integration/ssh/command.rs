//! `keyhole ssh` end to end (issue 29), with `--features ec2`: moto's EC2 on 127.0.0.1 whose
//! instances have loopback addresses (a VPC 127.0.0.0/16), a real bastion sshd and a real
//! instance sshd whose AuthorizedKeysCommand is keyhole, a Samba DC and s3s-fs behind the
//! publisher, and a real ssh-agent per engineer. Only loopback addresses are ever connected to.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::homes::Key;
use crate::support::keyhole::Run;
use crate::support::moto::Moto;
use crate::support::ports::free_port;
use crate::support::samba::{Fixture, UserSpec};
use crate::support::sshd::Sshd;
use crate::support::stack::{Extra, Stack};
use serde_json::Value;

const NOBODY: u32 = 65534;
/// The instances' login user; root, so that the test needs no local account of its own.
const LOGIN_USER: &str = "root";
const POLICY: &str = "[access_groups.web-prod]\ngroups = [\"Web Team\"]\n\n[access_groups.db-prod]\ngroups = [\"DB Team\"]\n";

/// The zone of 127.0.0.0/24, where the instance that runs a real sshd lives (127.0.0.1).
const ZONE_B: &str = "us-east-1b";
const ZONE_A: &str = "us-east-1a";
const ZONE_C: &str = "us-east-1c";

/// An ssh-agent of its own (`ssh-agent -D -a SOCKET`), killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(keys: &[&Key]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "ssh-agent did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for key in keys {
            let added = Command::new("ssh-add")
                .arg(&key.private)
                .env("SSH_AUTH_SOCK", &socket)
                .output()
                .unwrap();
            assert!(added.status.success(), "{added:?}");
        }
        Agent {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `keyhole --config CONFIG ARGS…` with `env`, and SSH_AUTH_SOCK set to `agent`'s or not
/// at all (nothing of the caller's environment: no agent, AWS or keyhole variable).
fn keyhole(config: &Path, args: &[&str], env: &[(String, String)], agent: Option<&Agent>) -> Run {
    let mut command = Command::new(crate::support::keyhole::BINARY);
    command.arg("--config").arg(config).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYHOLE_")
            || name.starts_with("AWS_")
            || name.starts_with("SSH_")
            || name == "RUST_BACKTRACE"
        {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(agent) = agent {
        command.env("SSH_AUTH_SOCK", &agent.socket);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("running keyhole");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A fleet in moto: web-1 (127.0.0.1, zone b, tagged with its access group and login user),
/// api-1 (zone a), two instances both named twin, a stopped old-1, and far-1 in zone c, which
/// has no bastion of its own.
struct Fleet {
    moto: Moto,
    ids: Vec<String>,
}

const WEB_1: usize = 0;
const API_1: usize = 1;

impl Fleet {
    fn start() -> Fleet {
        let moto = Moto::start();
        let ids = moto.loopback_vpc(
            &[
                (ZONE_B, "127.0.0.0/24"),
                (ZONE_A, "127.0.1.0/24"),
                (ZONE_C, "127.0.2.0/24"),
            ],
            &[
                (
                    0,
                    "127.0.0.1",
                    &[
                        ("Name", "web-1"),
                        ("keyhole-access-groups", "web-prod"),
                        ("keyhole-login-user", LOGIN_USER),
                    ],
                ),
                (1, "127.0.1.5", &[("Name", "api-1")]),
                (1, "127.0.1.6", &[("Name", "twin")]),
                (1, "127.0.1.7", &[("Name", "twin")]),
                (1, "127.0.1.8", &[("Name", "old-1")]),
                (2, "127.0.2.5", &[("Name", "far-1")]),
            ],
        );
        assert_eq!(ids.len(), 6, "{ids:?}");
        moto.python(&format!("ec2.stop_instances(InstanceIds=['{}'])", ids[4]));
        Fleet { moto, ids }
    }

    /// The `[ssh]` section: zone b's bastion at `bastion_port`, zone a's at `dead_port` (nothing
    /// listens there: a login through it fails).
    fn ssh_section(&self, bastion_port: u16, dead_port: u16, verify_key: &str) -> String {
        format!(
            "\n[ssh]\nregion = \"us-east-1\"\nec2_endpoint = \"{}\"\nverify_key = \"{verify_key}\"\n\n[ssh.bastions]\n\"{ZONE_A}\" = \"{LOGIN_USER}@127.0.0.1:{dead_port}\"\n\"{ZONE_B}\" = \"{LOGIN_USER}@127.0.0.1:{bastion_port}\"\n",
            self.moto.endpoint()
        )
    }
}

/// AWS credentials for moto alone (it accepts any), and nothing of the developer's own.
fn fleet_env() -> Vec<(String, String)> {
    crate::support::moto::env()
}

/// The ssh_config the engineer passes with `-- -F FILE`: it reaches the bastion hop too. No
/// pinned host keys: every host is a throwaway sshd on loopback.
fn ssh_config(dir: &Path) -> PathBuf {
    let path = dir.join("ssh_config");
    std::fs::write(
        &path,
        "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n",
    )
    .unwrap();
    path
}

/// Resolution by ID, Name tag, address and private DNS name, the bastion of the zone (and of the
/// region when the zone has none), and what is refused: an ambiguous name, a stopped instance,
/// an unknown one. `--dry-run` prints the ssh command and connects nowhere.
#[test]
fn targets_resolve_by_id_name_and_address_to_the_bastion_of_their_zone() {
    let fleet = Fleet::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyhole.toml");
    let verify_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq x";
    std::fs::write(&config, fleet.ssh_section(2201, 2202, verify_key)).unwrap();
    let env = fleet_env();
    let dry_run = |target: &str| {
        let run = keyhole(&config, &["ssh", "--dry-run", target], &env, None);
        assert_eq!(run.code, 0, "{target}: {run:#?}");
        run.stdout.trim().to_owned()
    };
    let web_1 = format!("ssh -a -J {LOGIN_USER}@127.0.0.1:2201 -l {LOGIN_USER} 127.0.0.1");
    assert_eq!(dry_run(&fleet.ids[WEB_1]), web_1, "by instance ID");
    assert_eq!(dry_run("web-1"), web_1, "by Name tag");
    assert_eq!(dry_run("127.0.0.1"), web_1, "by address");
    let dns_name = fleet.moto.python(&format!(
        "print(ec2.describe_instances(InstanceIds=['{}'])['Reservations'][0]['Instances'][0]['PrivateDnsName'])",
        fleet.ids[WEB_1]
    ));
    assert_eq!(
        dry_run(dns_name.trim()),
        web_1,
        "by private DNS name {dns_name}"
    );
    // USER@ beats the instance's login-user tag; SSH_ARGS follow the address.
    let run = keyhole(
        &config,
        &[
            "ssh",
            "--dry-run",
            "admin@web-1",
            "--",
            "-p",
            "2222",
            "uptime",
        ],
        &env,
        None,
    );
    assert_eq!(
        run.stdout.trim(),
        format!("ssh -a -J {LOGIN_USER}@127.0.0.1:2201 -l admin 127.0.0.1 -p 2222 uptime")
    );
    // api-1 is in zone a: zone a's bastion, and [ssh] login_user's default.
    assert_eq!(
        dry_run(&fleet.ids[API_1]),
        format!("ssh -a -J {LOGIN_USER}@127.0.0.1:2202 -l ec2-user 127.0.1.5")
    );
    // far-1's zone has no bastion: the first zone of its region that has one.
    assert_eq!(
        dry_run("127.0.2.5"),
        format!("ssh -a -J {LOGIN_USER}@127.0.0.1:2202 -l ec2-user 127.0.2.5")
    );

    let refused = |target: &str, expected: &str| {
        let run = keyhole(&config, &["ssh", "--dry-run", target], &env, None);
        assert_eq!(run.code, 1, "{target}: {run:#?}");
        assert!(run.stderr.contains(expected), "{target}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{run:#?}");
    };
    refused(
        "twin",
        "2 instances have the Name tag \"twin\" in us-east-1: i-",
    );
    refused("old-1", ") is stopped: start it before logging in");
    refused(
        "nobody-here",
        "no instance has the Name tag \"nobody-here\" in us-east-1",
    );
    refused(
        "i-0123456789abcdef0",
        "no instance has the instance ID i-0123456789abcdef0",
    );
    // No bastion for the region at all.
    std::fs::write(
        &config,
        fleet
            .ssh_section(2201, 2202, verify_key)
            .replace(&format!("\"{ZONE_A}\""), "\"eu-west-1a\"")
            .replace(&format!("\"{ZONE_B}\""), "\"eu-west-1b\""),
    )
    .unwrap();
    refused("web-1", "no bastion leads to web-1 (i-");
}

/// The precondition: without an agent, or with an agent that holds no key, keyhole ssh stops
/// with a sentence that says what to do, before any connection (the bastion's sshd sees none,
/// and EC2 is not even asked: its endpoint here is a closed port).
#[test]
fn no_agent_or_an_empty_agent_stops_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bastion_config = dir.path().join("bastion.toml");
    std::fs::write(&bastion_config, "").unwrap();
    let bastion = Sshd::start(&bastion_config, &[]);
    let config = dir.path().join("keyhole.toml");
    std::fs::write(
        &config,
        format!(
            "[ssh]\nregion = \"us-east-1\"\nec2_endpoint = \"http://127.0.0.1:{}\"\n[ssh.bastions]\n\"us-east-1\" = \"{LOGIN_USER}@127.0.0.1:{}\"\n",
            free_port(),
            bastion.port()
        ),
    )
    .unwrap();
    let env = fleet_env();

    let none = keyhole(&config, &["ssh", "web-1"], &env, None);
    assert_eq!(none.code, 1, "{none:#?}");
    assert!(
        none.stderr
            .contains("no SSH agent: SSH_AUTH_SOCK is not set"),
        "{}",
        none.stderr
    );
    let empty_agent = Agent::start(&[]);
    let empty = keyhole(&config, &["ssh", "web-1"], &env, Some(&empty_agent));
    assert_eq!(empty.code, 1, "{empty:#?}");
    assert!(
        empty
            .stderr
            .contains("the SSH agent holds no keys: add the key"),
        "{}",
        empty.stderr
    );
    let gone = keyhole(
        &config,
        &["ssh", "web-1"],
        &[(
            "SSH_AUTH_SOCK".into(),
            dir.path().join("no-agent.sock").display().to_string(),
        )],
        None,
    );
    assert_eq!(gone.code, 1, "{gone:#?}");
    assert!(gone.stderr.contains("does not answer"), "{}", gone.stderr);
    for run in [&none, &empty, &gone] {
        assert!(!run.stderr.contains("DescribeInstances"), "{}", run.stderr);
    }
    assert!(
        !bastion.log().contains("Connection from"),
        "the bastion was contacted: {}",
        bastion.log()
    );

    // Without --config or $KEYHOLE_CONFIG, and without /etc/keyhole: the engineer's own
    // ~/.config/keyhole/keyhole.toml (here the settings got as far as the agent check).
    if Path::new("/etc/keyhole/keyhole.toml").exists() {
        eprintln!("/etc/keyhole/keyhole.toml exists on this machine: the fallback is not tested");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let without_config = |home: &Path| {
        let mut command = Command::new(crate::support::keyhole::BINARY);
        for (name, _) in std::env::vars() {
            if name.starts_with("KEYHOLE_") || name.starts_with("SSH_") || name.starts_with("XDG_")
            {
                command.env_remove(name);
            }
        }
        let output = command
            .args(["ssh", "web-1"])
            .env("HOME", home)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = without_config(home.path());
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no settings: neither /etc/keyhole/keyhole.toml nor {}/.config/keyhole/keyhole.toml exists",
            home.path().display()
        )),
        "{stderr}"
    );
    std::fs::create_dir_all(home.path().join(".config/keyhole")).unwrap();
    std::fs::copy(&config, home.path().join(".config/keyhole/keyhole.toml")).unwrap();
    let (code, stderr) = without_config(home.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no SSH agent"), "{stderr}");
}

/// The whole path: alice (Web Team → web-prod) logs in to web-1 through the bastion of its zone
/// (zone a's bastion is a closed port, so only the right choice gets in); bob (DB Team → db-prod)
/// gets through the bastion, is refused by the instance, and keyhole says why: web-1 serves
/// web-prod, his key is published for bob but not in it, and the AD group Web Team would grant
/// it. `--explain --format json --policy` says the same for tooling.
#[test]
fn a_login_goes_through_the_zone_bastion_and_a_refusal_explains_itself() {
    let fixture = Fixture::new()
        .user(UserSpec::unix("alice", 21001, "/home/alice"))
        .user(UserSpec::unix("bob", 21002, "/home/bob"))
        .group("Web Team", &["alice"])
        .group("DB Team", &["bob"]);
    let stack = Stack::start(&fixture, POLICY);
    let keys = stack.give_keys(&[("alice", 21001), ("bob", 21002)]);
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

    // The instance: web-prod, keyhole as sshd's AuthorizedKeysCommand.
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache = host.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    chown(&cache, Some(NOBODY), Some(NOBODY)).unwrap();
    let instance_config = host.path().join("keyhole.toml");
    std::fs::write(
        &instance_config,
        format!(
            "{}\n[instance]\nlogin_user = \"{LOGIN_USER}\"\naccess_groups = [\"web-prod\"]\ncache_dir = \"{}\"\ncache_ttl = \"1ms\"\nverify_key = \"{verify_key}\"\n",
            stack.s3.settings("ssh/"),
            cache.display()
        ),
    )
    .unwrap();
    let instance_env = stack.s3.instance_credentials(host.path(), NOBODY);
    let instance = Sshd::start(&instance_config, &instance_env);

    // The bastion: every engineer's key may jump through it (its own static list).
    let bastion_dir = tempfile::Builder::new()
        .prefix("keyhole-bastion-")
        .tempdir_in("/run")
        .unwrap();
    std::fs::set_permissions(bastion_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bastion_keys = bastion_dir.path().join("authorized_keys");
    std::fs::write(
        &bastion_keys,
        format!("{}\n{}\n", keys["alice"].line, keys["bob"].line),
    )
    .unwrap();
    let bastion = Sshd::start_with(
        &instance_config,
        &instance_env,
        &format!("AuthorizedKeysFile {}\n", bastion_keys.display()),
    );

    let fleet = Fleet::start();
    let engineer = tempfile::tempdir().unwrap();
    let config = engineer.path().join("keyhole.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            stack.s3.settings("ssh/"),
            fleet.ssh_section(bastion.port(), free_port(), &verify_key)
        ),
    )
    .unwrap();
    let ssh_config = ssh_config(engineer.path()).display().to_string();
    let port = instance.port().to_string();
    let env = stack.s3.env();
    // `keyhole ssh web-1 -- -F CONFIG -p PORT echo keyhole-ssh-ok`, with `agent`'s keys.
    let log_in = |agent: &Agent| {
        keyhole(
            &config,
            &[
                "ssh",
                "web-1",
                "--",
                "-F",
                &ssh_config,
                "-p",
                &port,
                "echo",
                "keyhole-ssh-ok",
            ],
            &env,
            Some(agent),
        )
    };

    // alice gets in, through zone b's bastion, as the tagged login user.
    let alice = Agent::start(&[&keys["alice"]]);
    let started = std::time::Instant::now();
    let login = log_in(&alice);
    eprintln!(
        "a login through the bastion, keyhole ssh included: {:?}",
        started.elapsed()
    );
    assert_eq!(login.code, 0, "{login:#?}");
    // The same login with ssh alone, for the cost keyhole adds (the agent check, one
    // DescribeInstances).
    let started = std::time::Instant::now();
    let plain = Command::new("ssh")
        .args([
            "-a",
            "-J",
            &format!("{LOGIN_USER}@127.0.0.1:{}", bastion.port()),
        ])
        .args([
            "-l",
            LOGIN_USER,
            "127.0.0.1",
            "-F",
            &ssh_config,
            "-p",
            &port,
        ])
        .args(["echo", "keyhole-ssh-ok"])
        .env("SSH_AUTH_SOCK", &alice.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(plain.status.success(), "{plain:?}");
    eprintln!("the same login with ssh -J alone: {:?}", started.elapsed());
    assert_eq!(login.stdout, "keyhole-ssh-ok\n", "{login:#?}");
    assert!(
        bastion.log().contains("Accepted publickey for root"),
        "{}",
        bastion.log()
    );
    assert!(
        instance.log().contains("alice"),
        "sshd names alice: {}",
        instance.log()
    );

    // bob is refused by the instance, and told why.
    let bob = Agent::start(&[&keys["bob"]]);
    let refused = log_in(&bob);
    eprintln!("bob's refused login:\n{}", refused.stderr);
    assert_eq!(refused.code, 255, "{refused:#?}");
    assert!(refused.stdout.is_empty(), "{refused:#?}");
    for expected in [
        "Permission denied (publickey)",
        "web-1 (i-",
        "refused your keys. Why:",
        "published for bob; in none of this instance's access groups",
        "The instance's access groups (EC2 tag keyhole-access-groups): web-prod",
        "web-prod: 1 person; none of your keys is in it",
        "Verdict: none of your keys may log in to web-1",
        "To log in, be a member of AD group \"Web Team\" (grants web-prod)",
    ] {
        assert!(
            refused.stderr.contains(expected),
            "{expected:?} in:\n{}",
            refused.stderr
        );
    }

    // --explain connects nowhere and says the same in JSON, naming the policy's entries.
    let connections = instance.log().matches("Connection from").count();
    let policy = stack
        .publisher
        .path("access-groups.toml")
        .display()
        .to_string();
    let started = std::time::Instant::now();
    let explain = keyhole(
        &config,
        &[
            "ssh",
            "--explain",
            "web-1",
            "--format",
            "json",
            "--policy",
            &policy,
        ],
        &env,
        Some(&bob),
    );
    eprintln!("keyhole ssh --explain --policy: {:?}", started.elapsed());
    assert_eq!(explain.code, 0, "{explain:#?}");
    let report = explain.json();
    assert_eq!(report["verdict"]["result"], "not_granted", "{report:#}");
    assert_eq!(report["instance"]["id"], fleet.ids[WEB_1].as_str());
    assert_eq!(report["bastion"]["key"], ZONE_B);
    assert_eq!(report["bastion"]["matched"], "zone");
    assert_eq!(report["login_user"]["name"], LOGIN_USER);
    assert_eq!(report["index"]["verified_with"], "[ssh] verify_key");
    let key = &report["agent"]["keys"][0];
    assert_eq!(key["fingerprint"], keys["bob"].fingerprint.as_str());
    assert_eq!(key["published_for"], "bob");
    assert_eq!(key["in_access_groups"], Value::Array(Vec::new()));
    let group = &report["access_groups"]["groups"][0];
    assert_eq!(group["name"], "web-prod");
    assert_eq!(group["published"], true);
    assert_eq!(
        group["granted_by"],
        serde_json::json!([{"kind": "ad_group", "name": "Web Team"}])
    );
    assert!(
        group["granted_by_source"]
            .as_str()
            .unwrap()
            .starts_with("policy ")
    );
    assert_eq!(
        instance.log().matches("Connection from").count(),
        connections,
        "--explain connected to the instance"
    );

    let explain = keyhole(
        &config,
        &["ssh", "--explain", "web-1", "--format", "json"],
        &env,
        Some(&alice),
    );
    let report = explain.json();
    assert_eq!(
        report["verdict"],
        serde_json::json!({
            "result": "granted",
            "access_group": "web-prod",
            "user": "alice",
            "fingerprint": keys["alice"].fingerprint,
            "via": ["Web Team"],
        })
    );
    let text = keyhole(&config, &["ssh", "--explain", "web-1"], &env, Some(&bob));
    eprintln!("keyhole ssh --explain web-1:\n{}", text.stdout);
    assert_eq!(text.code, 0, "{text:#?}");

    // The bastion stops letting bob through: that refusal is the bastion's, not web-1's, and
    // keyhole says so instead of explaining web-1's access groups.
    std::fs::write(&bastion_keys, format!("{}\n", keys["alice"].line)).unwrap();
    let at_the_bastion = log_in(&bob);
    assert_eq!(at_the_bastion.code, 255, "{at_the_bastion:#?}");
    assert!(
        at_the_bastion.stderr.contains(&format!(
            "keyhole: the bastion {LOGIN_USER}@127.0.0.1:{} ([ssh.bastions] \"{ZONE_B}\") failed, before the instance was asked",
            bastion.port()
        )),
        "{}",
        at_the_bastion.stderr
    );
    assert!(
        !at_the_bastion.stderr.contains("Why:"),
        "{}",
        at_the_bastion.stderr
    );
}
