//! The policy features of issue 15 end to end, against the real Samba AD, the S3 server and real
//! OpenSSH: an automation account published in exactly its access groups, its key contested by a
//! person who pasted it, and dropped when its AD account is disabled; a grant that ended yesterday
//! gone (even in a run the safety guard refuses) and one ending tomorrow present, judged at a
//! fixed time (`--now`, hidden, for tests); an access group's `from=` restriction enforced by
//! sshd from an allowed and a refused loopback address; and the `diff` report (offline and
//! `--resolve`, text and markdown) of a policy change touching all three. `check` is exercised
//! offline at the end.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::homes::Key;
use crate::support::keyhole::Run;
use crate::support::samba::{Fixture, UserSpec};
use crate::support::sshd::Sshd;
use crate::support::stack::{Extra, Stack};

const NOBODY: u32 = 65534;
const LOGIN_USER: &str = "root";

/// Before dave's grant ends (2030-01-08, through the end of that day UTC).
const EARLY: &str = "2030-01-07T12:00:00Z";
/// The day after dave's grant ended and the day before carol's ends.
const LATE: &str = "2030-01-09T12:00:00Z";

const POLICY: &str = r#"
[access_groups.web]
groups = ["Web Team"]
users = [{ name = "carol", until = 2030-01-10 }, { name = "dave", until = 2030-01-08 }]

[access_groups.db]
groups = ["DBA"]

[access_groups.ops]
users = ["bob"]
options = ['from="127.0.0.1"', "no-agent-forwarding"]

[automation.jenkins]
key_files = ["automation/jenkins.pub"]
access_groups = ["web", "ops"]
owner = "ci-team"
ad_account = "svc-jenkins"
"#;

fn fixture() -> Fixture {
    Fixture::new()
        .user(UserSpec::unix("bob", 23001, "/home/bob"))
        .user(UserSpec::unix("carol", 23002, "/home/carol"))
        .user(UserSpec::unix("dave", 23003, "/home/dave"))
        .user(UserSpec::new("svc-jenkins"))
        .group("Web Team", &["bob"])
        .group("DBA", &["dave"])
}

fn disable(stack: &Stack, user: &str) {
    stack.dc.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
        stack.dc.user_dn(user)
    ));
}

/// The groups whose published files hold `fingerprint`, and the member it is published for.
fn published_in(stack: &Stack, fingerprint: &str) -> Option<(String, Vec<String>)> {
    let manifest = stack.manifest();
    let entry = manifest["fingerprints"].get(fingerprint)?;
    let groups = entry["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_owned())
        .collect();
    Some((entry["user"].as_str().unwrap().to_owned(), groups))
}

fn users(stack: &Stack, group: &str) -> Vec<String> {
    stack.manifest()["groups"][group]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

/// (name, value) pairs read from a report.
type Pairs = Vec<(String, String)>;

/// `members --now WHEN --format json` for one access group: (users with their `until`,
/// excluded with their reason).
fn members(stack: &Stack, group: &str, when: &str) -> (Pairs, Pairs) {
    let run = stack.run(&["members", group, "--now", when, "--format", "json"]);
    assert_eq!(run.code, 0, "{run:#?}");
    let json = run.json();
    let membership = &json["access_groups"][group];
    let field = |list: &serde_json::Value, key: &str| -> Vec<(String, String)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_owned(),
                    m[key].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    (
        field(&membership["users"], "until"),
        field(&membership["excluded"], "reason"),
    )
}

struct Instance {
    dir: tempfile::TempDir,
    /// What sshd's keyhole needs to reach S3 (sshd passes no environment).
    env: Vec<(String, String)>,
}

impl Instance {
    /// An instance serving `access_groups`, verifying with `verify_key`, its cache owned by nobody.
    fn new(stack: &Stack, access_groups: &str, verify_key: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        chown(&cache, Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::write(
            dir.path().join("keyhole.toml"),
            format!(
                "{}\n[instance]\nlogin_user = \"{LOGIN_USER}\"\naccess_groups = [{access_groups}]\ncache_dir = \"{}\"\ncache_ttl = \"1s\"\nmax_stale = \"1h\"\nfetch_timeout = \"2s\"\nverify_key = \"{verify_key}\"\n",
                stack.s3.settings("ssh/"),
                cache.display(),
            ),
        )
        .unwrap();
        let env = stack.s3.instance_credentials(dir.path(), NOBODY);
        Instance { dir, env }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("keyhole.toml")
    }

    fn env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }
}

fn publish(stack: &Stack, args: &[&str]) -> Run {
    let mut all = vec!["publish"];
    all.extend_from_slice(args);
    stack.run(&all)
}

#[test]
fn automation_expiring_grants_and_restrictions_against_real_ad_s3_and_sshd() {
    let stack = Stack::start(&fixture(), POLICY);
    let (signing_key, verify_key) = stack.publisher.signing_key();
    let signing = format!(
        "\n[signing]\nkey_file = \"{}\"\nvalidity = \"7d\"\n",
        signing_key.display()
    );
    stack.write_settings(Extra {
        sections: &signing,
        ..Extra::default()
    });
    let keys = stack.give_keys(&[("bob", 23001), ("carol", 23002), ("dave", 23003)]);
    let jenkins: Key = stack.homes.key("jenkins", "ed25519");
    std::fs::create_dir(stack.publisher.path("automation")).unwrap();
    std::fs::write(
        stack.publisher.path("automation/jenkins.pub"),
        format!("# Jenkins deploy key, rotated yearly\n{}\n", jenkins.line),
    )
    .unwrap();

    // 1. Before dave's grant ends: the automation key is in exactly web and ops, published for
    //    automation:jenkins; carol and dave are in web with their end dates.
    let first = publish(&stack, &["--now", EARLY]);
    assert_eq!(first.code, 0, "{first:#?}");
    assert_eq!(
        published_in(&stack, &jenkins.fingerprint),
        Some((
            "automation:jenkins".to_owned(),
            vec!["ops".to_owned(), "web".to_owned()]
        ))
    );
    assert_eq!(
        users(&stack, "web"),
        ["automation:jenkins", "bob", "carol", "dave"]
    );
    assert_eq!(users(&stack, "db"), ["dave"]);
    let web = stack.group_file("web");
    assert!(
        web.contains("# automation:jenkins via owner ci-team\n"),
        "{web}"
    );
    let (web_members, _) = members(&stack, "web", EARLY);
    assert!(web_members.contains(&("carol".into(), "2030-01-10".into())));
    assert!(web_members.contains(&("dave".into(), "2030-01-08".into())));
    // The ops restriction is on every key line of ops, and on none of web's.
    let ops = stack.group_file("ops");
    let key_lines: Vec<&str> = ops.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(key_lines.len(), 2, "{ops}");
    for line in &key_lines {
        assert!(
            line.starts_with("from=\"127.0.0.1\",no-agent-forwarding ssh-ed25519 "),
            "{ops}"
        );
    }
    assert!(!web.contains("from="), "{web}");

    // 2. Real sshd on an instance serving ops: the group's from= lets bob in from 127.0.0.1 and
    //    not from 127.0.0.2; the automation key logs in and sshd's log names its owner.
    let instance = Instance::new(&stack, "\"ops\"", &verify_key);
    let sshd = Sshd::start(&instance.config(), &instance.env());
    assert!(
        sshd.login_from(LOGIN_USER, &keys["bob"].private, "127.0.0.1"),
        "bob from the allowed address: {}",
        sshd.log()
    );
    assert!(
        !sshd.login_from(LOGIN_USER, &keys["bob"].private, "127.0.0.2"),
        "bob from a refused address got in: {}",
        sshd.log()
    );
    assert!(
        sshd.login_from(LOGIN_USER, &jenkins.private, "127.0.0.1"),
        "{}",
        sshd.log()
    );
    assert!(!sshd.login_from(LOGIN_USER, &jenkins.private, "127.0.0.2"));
    let log = sshd.log();
    assert!(
        log.contains(&format!(
            ": {} = automation:jenkins (ops via owner ci-team)",
            jenkins.fingerprint
        )),
        "{log}"
    );
    drop(sshd);

    // 3. Past dave's end date, with a guard that refuses any other removal (bob is disabled):
    //    the run is refused, yet dave's expired grant is published; bob waits for --force.
    //    carol's grant ends tomorrow: she stays. dave pasted the jenkins key into his own file:
    //    it stays with automation:jenkins, dropped from dave's, with a problem.
    stack.write_settings(Extra {
        sections: &signing,
        safety: "max_removed_users = 0\n",
        ..Extra::default()
    });
    stack.homes.write(
        "dave",
        23003,
        &format!("{}\n{}\n", keys["dave"].line, jenkins.line),
    );
    disable(&stack, "bob");
    let plan = stack.run(&["plan", "--now", LATE, "--format", "json"]);
    assert_eq!(plan.code, 0, "{plan:#?}");
    let plan = plan.json();
    let removed = |group: &str| -> Vec<(String, String)> {
        plan["groups"][group]["removed_users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        removed("web"),
        [
            ("bob".to_owned(), "disabled".to_owned()),
            ("dave".to_owned(), "expired_grant".to_owned())
        ]
    );
    assert!(plan["guard"]["refused"].as_bool().unwrap(), "{plan:#}");
    let problems = plan["problems"].to_string();
    assert!(
        problems.contains(&format!(
            "key {} is published for automation:jenkins",
            jenkins.fingerprint
        )),
        "{problems}"
    );
    let refused = publish(&stack, &["--now", LATE]);
    assert_eq!(refused.code, 3, "{refused:#?}");
    assert_eq!(users(&stack, "web"), ["automation:jenkins", "bob", "carol"]);
    assert_eq!(
        published_in(&stack, &jenkins.fingerprint).map(|(owner, _)| owner),
        Some("automation:jenkins".to_owned())
    );
    let (_, web_excluded) = members(&stack, "web", LATE);
    assert!(
        web_excluded.contains(&("dave".into(), "expired_grant".into())),
        "{web_excluded:?}"
    );

    // 4. svc-jenkins is disabled in AD: the automation key is dropped everywhere. (dave removed
    //    his pasted copy first: a copy whose rightful owner is gone is no longer contested, and
    //    would be published as his, as between two people.)
    stack
        .homes
        .write("dave", 23003, &format!("{}\n", keys["dave"].line));
    disable(&stack, "svc-jenkins");
    let forced = publish(&stack, &["--now", LATE, "--force"]);
    assert_eq!(forced.code, 0, "{forced:#?}");
    assert_eq!(published_in(&stack, &jenkins.fingerprint), None);
    assert_eq!(users(&stack, "web"), ["carol"]);
    let (ops_members, ops_excluded) = members(&stack, "ops", LATE);
    assert!(ops_members.is_empty(), "{ops_members:?}");
    assert!(
        ops_excluded.contains(&("automation:jenkins".into(), "disabled".into())),
        "{ops_excluded:?}"
    );

    // 5. The pull-request report of a change touching all three features.
    diff_report(&stack);
}

const BASE_POLICY: &str = r#"
[access_groups.web]
groups = ["Web Team"]
users = ["carol"]

[access_groups.ops]
users = ["bob"]
"#;

const HEAD_POLICY: &str = r#"
[access_groups.web]
groups = ["Web Team"]
users = [{ name = "carol", until = 2099-03-31 }]

[access_groups.ops]
users = ["bob", { name = "dave", until = 2099-06-30 }]
options = ['from="10.20.0.0/16"']

[automation.deploy]
key_files = ["automation/deploy.pub"]
access_groups = ["ops"]
owner = "platform-team"
"#;

fn git(repo: &Path, args: &[&str]) {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
}

/// `diff` between a base and a head commit of a policy repository, offline and resolved.
fn diff_report(stack: &Stack) {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(repo.path().join("access-groups.toml"), BASE_POLICY).unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-qm", "base"]);
    std::fs::write(repo.path().join("access-groups.toml"), HEAD_POLICY).unwrap();
    git(repo.path(), &["commit", "-qam", "head"]);
    let repo_arg = repo.path().display().to_string();
    let diff = |extra: &[&str]| -> Run {
        let mut args = vec![
            "diff",
            "--base",
            "HEAD~1",
            "--head",
            "HEAD",
            "--repo",
            &repo_arg,
            "--detailed-exitcode",
        ];
        args.extend_from_slice(extra);
        stack.run(&args)
    };

    let text = diff(&[]);
    assert_eq!(text.code, 2, "{text:#?}");
    for expected in [
        "[automation.deploy]: created",
        "  + key file automation/deploy.pub",
        "  + access group ops",
        "  ~ owner: (none) -> platform-team",
        "  ~ user carol until: (none) -> 2099-03-31",
        "  + user dave",
        "  ~ user dave until: (none) -> 2099-06-30",
        "  + option from=\"10.20.0.0/16\"",
    ] {
        assert!(
            text.stdout.contains(expected),
            "{expected:?} in\n{}",
            text.stdout
        );
    }

    let markdown = diff(&["--resolve", "--format", "markdown"]);
    assert_eq!(markdown.code, 2, "{markdown:#?}");
    let report = &markdown.stdout;
    for expected in [
        "#### automation `deploy`: created",
        "| ➕ access group added | `ops` |",
        "| ✏️ owner | `platform-team` | was `(none)` |",
        "| ⏳ user end date | `carol` | until 2099-03-31 (was (none)) |",
        "| ➕ restriction added | `from=\"10.20.0.0/16\"` | on every key line of the group |",
        // dave (disabled earlier in this test) gains nothing; the automation account gains ops.
        // Prose is escaped for Markdown (src/markdown.rs): the `-` renders as itself.
        "| 🔺 gains access | `automation:deploy` | via owner platform\\-team |",
    ] {
        assert!(report.contains(expected), "{expected:?} in\n{report}");
    }

    let json = diff(&["--format", "json"]);
    let json = json.json();
    assert_eq!(
        json["access_groups"]["web"]["until"][0]["head"], "2099-03-31",
        "{json:#}"
    );
}

/// `check` offline: key files, group options, automation mistakes, and grants ending.
#[test]
fn check_validates_the_new_policy_features_offline_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq ci";
    std::fs::write(
        dir.path().join("ci.pub"),
        format!("{key}\nssh-rsa AAAA bad\n"),
    )
    .unwrap();
    let policy = dir.path().join("access-groups.toml");
    std::fs::write(
        &policy,
        r#"[access_groups.web]
users = [{ name = "carol", until = 2030-01-08 }, { name = "erin", until = 2030-01-20 }, { name = "zed", until = 2031-01-01 }]
options = ["pty", 'from="10.0.0.1/8"']

[automation.ci]
key_files = ["ci.pub", "missing.pub", "../outside.pub"]
access_groups = ["webb"]
owner = "ci-team"
"#,
    )
    .unwrap();
    // No settings: check needs none when given the policy file.
    let output = Command::new(crate::support::keyhole::BINARY)
        .args(["check", policy.to_str().unwrap(), "--now", LATE])
        .env_remove("KEYHOLE_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(78), "{stdout}");
    let p = policy.display().to_string();
    let ci = dir.path().join("ci.pub").display().to_string();
    for expected in [
        format!(
            "{p}:3:12: error: option \"pty\" in [access_groups.web]: `pty` is not an option an access group may set"
        ),
        format!(
            "{p}:3:19: error: option \"from=\\\"10.0.0.1/8\\\"\" in [access_groups.web]: `10.0.0.1/8`"
        ),
        format!(
            "{p}:6:39: error: key file \"../outside.pub\" in [automation.ci]: `..` is not allowed"
        ),
        format!(
            "{p}:7:18: error: [automation.ci] names access group `webb`, which the policy does not define; did you mean `web`?"
        ),
    ] {
        assert!(stdout.contains(&expected), "{expected:?} in\n{stdout}");
    }
    // With the policy otherwise valid, the key files are read: a missing one and a bad line.
    std::fs::write(
        &policy,
        "[automation.ci]\nkey_files = [\"ci.pub\", \"missing.pub\"]\neverywhere = true\nowner = \"ci-team\"\n\
         [access_groups.web]\n\
         users = [{ name = \"carol\", until = 2030-01-08 }, { name = \"erin\", until = 2030-01-20 }, { name = \"zed\", until = 2031-01-01 }]\n",
    )
    .unwrap();
    let output = Command::new(crate::support::keyhole::BINARY)
        .args(["check", policy.to_str().unwrap(), "--now", LATE])
        .env_remove("KEYHOLE_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(78), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{p}:2:24: error: key file missing.pub of [automation.ci]: no such file"
        )),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{ci}:2:1: error: ")), "{stdout}");
    for expected in [
        format!(
            "{p}:6:19: warning: the grant of user `carol` in [access_groups.web] ended (until \
             2030-01-08): it no longer gives access; remove the entry"
        ),
        format!(
            "{p}:6:59: warning: the grant of user `erin` in [access_groups.web] ends soon (until \
             2030-01-20, within 14days)"
        ),
    ] {
        assert!(stdout.contains(&expected), "{expected:?} in\n{stdout}");
    }
    assert!(!stdout.contains("`zed`"), "{stdout}");
}
