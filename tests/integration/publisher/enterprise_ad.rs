//! Enterprise Active Directory against a real Samba AD DC: several domain controllers (some
//! unreachable, silent or not speaking TLS), a wrong service password that must never lock the account, and homes
//! owned by uids from the publisher's name service (libnss-wrapper as the test NSS source, so the
//! machine's own passwd is never touched).
//!
//! Only one Samba DC can run at a time on 127.0.0.1, so "several DCs" are the real DC plus
//! loopback endpoints that fail the way real DCs fail: a closed port (refused), a listener that
//! accepts and never answers (timeout), and a plain-TCP listener that is not TLS.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::keyhole::{Run, ldap_section};
use crate::support::mute::Mute;
use crate::support::ports::free_port;
use crate::support::samba::{Fixture, SERVICE_ACCOUNT, SambaDc, UserSpec};
use crate::support::stack::Stack;

const POLICY: &str = r#"
[access_groups.web-prod]
groups = ["Web Team"]
"#;

fn company() -> Fixture {
    Fixture::new()
        .user(UserSpec::unix("bob", 20002, "/home/bob"))
        .user(UserSpec::unix("carol", 20003, "/home/carol"))
        .group("Web Team", &["bob", "carol"])
}

/// Loopback endpoints that fail like broken DCs, for as long as this lives.
struct BrokenDcs {
    /// Nothing listens here: connection refused.
    closed: u16,
    /// Accepts and never says a word: a hung DC.
    silent: Mute,
    /// Answers in plain text: not TLS (a wrong port, a load balancer page).
    plain: Mute,
}

impl BrokenDcs {
    fn start() -> BrokenDcs {
        BrokenDcs {
            closed: free_port(),
            silent: Mute::start(None),
            plain: Mute::start(Some(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            )),
        }
    }

    fn urls(&self) -> [String; 3] {
        [
            format!("ldaps://127.0.0.1:{}", self.closed),
            format!("ldaps://{}", self.silent.address()),
            format!("ldaps://{}", self.plain.address()),
        ]
    }
}

/// The publisher's settings with `[ldap] url = <list>` (and a short timeout), the rest as usual.
fn settings_with_urls(stack: &Stack, urls: &[String], extra_ldap: &str) -> String {
    let list = urls
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let ldap = ldap_section(&stack.dc, &stack.dc.ldaps_url(), &stack.dc.ca_file())
        .replace(
            &format!("url = \"{}\"", stack.dc.ldaps_url()),
            &format!("url = [{list}]"),
        )
        .replace("timeout = \"10s\"", "timeout = \"2s\"");
    format!(
        "{ldap}{extra_ldap}{}{}\n[safety]\nlock_file = \"{}\"\n",
        stack.s3.settings("ssh/"),
        stack.homes.settings(),
        stack.publisher.path("publish.lock").display()
    )
}

#[test]
fn a_dc_that_refuses_hangs_or_is_not_tls_is_skipped_and_logged_and_all_failing_names_each() {
    let stack = Stack::start(&company(), POLICY);
    let keys = stack.give_keys(&[("bob", 20002), ("carol", 20003)]);
    let broken = BrokenDcs::start();
    let [closed, silent, plain] = broken.urls();

    // Every DC fails: exit 1, nothing written, and each DC with its own reason.
    stack.publisher.write_settings(&settings_with_urls(
        &stack,
        &[closed.clone(), silent.clone(), plain.clone()],
        "",
    ));
    let before = stack.s3.contents_and_times();
    let started = Instant::now();
    let failed = stack.run(&["publish"]);
    assert_eq!(failed.code, 1, "{failed:#?}");
    assert!(
        failed
            .stderr
            .contains("no domain controller could be used (3 tried)"),
        "{}",
        failed.stderr
    );
    for (url, reason) in [
        (&closed, "onnection refused"),
        (&silent, "did not answer within 2s while connecting"),
        (&plain, "cannot connect to"),
    ] {
        let line = failed
            .stderr
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{url}:")))
            .unwrap_or_else(|| panic!("no reason for {url} in {}", failed.stderr));
        assert!(line.contains(reason), "{url}: {line}");
    }
    // The TLS failure is named as such.
    assert!(
        failed.stderr.contains("InvalidContentType") || failed.stderr.contains("corrupt"),
        "{}",
        failed.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        stack.s3.contents_and_times(),
        before,
        "nothing may be written"
    );

    // The real DC last: the run goes through, and every skipped DC is in the log.
    stack.publisher.write_settings(&settings_with_urls(
        &stack,
        &[
            closed.clone(),
            silent.clone(),
            plain.clone(),
            stack.dc.ldaps_url(),
        ],
        "",
    ));
    let through = stack.run(&["publish"]);
    assert_eq!(through.code, 0, "{through:#?}");
    for url in [&closed, &silent, &plain] {
        assert!(
            through
                .stderr
                .lines()
                .any(|line| line.contains(url.as_str())
                    && line.contains("domain controller unusable, trying the next")),
            "no log line for {url}: {}",
            through.stderr
        );
    }
    assert!(
        through
            .stderr
            .contains("using this domain controller after the ones before it failed"),
        "{}",
        through.stderr
    );
    assert!(stack.s3.holds(&keys["bob"].line));
    assert!(stack.s3.holds(&keys["carol"].line));
}

// DC discovery through DNS SRV records is tested in tests/srv_trust.rs, with the rule that only
// targets inside the AD domain are asked (targets there are names, and the DC's certificate
// names its host).

/// `badPwdCount` and `lockoutTime` of the service account, read from the DC's database with
/// samba-tool (no bind: a successful bind as the account would reset its count).
fn bad_password_state(dc: &SambaDc) -> (i64, i64) {
    let output = Command::new("samba-tool")
        .args(["user", "show", SERVICE_ACCOUNT])
        .arg("--attributes=badPwdCount,lockoutTime")
        .arg("-H")
        .arg(dc.dir().join("private/sam.ldb"))
        .output()
        .expect("running samba-tool");
    assert!(
        output.status.success(),
        "samba-tool user show: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let number = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    (number("badPwdCount"), number("lockoutTime"))
}

fn metric(path: &Path, name: &str) -> Option<f64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
}

fn set_lockout_threshold(dc: &SambaDc, threshold: u32) {
    let output = Command::new("samba-tool")
        .args(["domain", "passwordsettings", "set"])
        .arg(format!("--account-lockout-threshold={threshold}"))
        .arg("-H")
        .arg(dc.dir().join("private/sam.ldb"))
        .output()
        .expect("running samba-tool");
    assert!(
        output.status.success(),
        "samba-tool passwordsettings: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn ten_runs_with_a_wrong_password_never_lock_the_account_and_a_fixed_password_goes_through() {
    let stack = Stack::start(&company(), POLICY);
    let keys = stack.give_keys(&[("bob", 20002), ("carol", 20003)]);
    set_lockout_threshold(&stack.dc, 3);
    let broken = BrokenDcs::start();
    let [closed, ..] = broken.urls();
    // Two DCs, so that "not retried on another DC" is visible: the refusing DC is first.
    let password_file = stack.publisher.path("ldap-password");
    std::fs::write(&password_file, "not-the-password\n").unwrap();
    let settings = settings_with_urls(&stack, &[stack.dc.ldaps_url(), closed.clone()], "").replace(
        &format!(
            "password_file = \"{}\"",
            stack.dc.service_password_file().display()
        ),
        &format!("password_file = \"{}\"", password_file.display()),
    );
    stack.publisher.write_settings(&settings);
    let metrics = stack.publisher.path("keyhole.prom");
    let metrics_arg = metrics.display().to_string();
    let before = stack.s3.contents_and_times();

    let runs: Vec<Run> = (0..10)
        .map(|_| stack.run(&["publish", "--metrics-file", &metrics_arg]))
        .collect();
    // First what matters most. One bad bind reached the DC in ten runs: far from the threshold of 3.
    let (bad, locked) = bad_password_state(&stack.dc);
    assert_eq!((bad, locked), (1, 0), "badPwdCount, lockoutTime");
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.code, 1, "run {i}: {run:#?}");
        assert!(!run.stderr.contains("not-the-password"), "leak: {run:#?}");
        assert!(
            !run.stderr.contains(&closed),
            "another DC was tried: {run:#?}"
        );
    }
    assert!(
        runs[0]
            .stderr
            .contains("invalid credentials (LDAP 49, AD data 52e: wrong password"),
        "{}",
        runs[0].stderr
    );
    assert!(
        runs[0].stderr.contains("no other DC was tried"),
        "{}",
        runs[0].stderr
    );
    for run in &runs[1..] {
        assert!(
            run.stderr.contains("refused this same password"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("--retry-bind"), "{}", run.stderr);
    }
    assert_eq!(
        metric(&metrics, "keyhole_publish_ldap_bind_refused"),
        Some(1.0)
    );
    assert_eq!(metric(&metrics, "keyhole_publish_exit_code"), Some(1.0));
    let state = std::fs::read_to_string(stack.publisher.path("ldap-bind-refused.json")).unwrap();
    assert!(!state.contains("not-the-password"), "{state}");
    assert_eq!(
        stack.s3.contents_and_times(),
        before,
        "nothing may be written"
    );

    // An operator may insist once (--retry-bind): one more bad bind, still not locked.
    let retried = stack.run(&["publish", "--retry-bind"]);
    assert_eq!(retried.code, 1, "{retried:#?}");
    assert!(retried.stderr.contains("AD data 52e"), "{}", retried.stderr);
    assert_eq!(bad_password_state(&stack.dc), (2, 0));

    // The right password in the file: the next run goes through and forgets the refusal.
    std::fs::copy(stack.dc.service_password_file(), &password_file).unwrap();
    let fixed = stack.run(&["publish", "--metrics-file", &metrics_arg]);
    assert_eq!(fixed.code, 0, "{fixed:#?}");
    assert!(stack.s3.holds(&keys["bob"].line));
    assert_eq!(
        metric(&metrics, "keyhole_publish_ldap_bind_refused"),
        Some(0.0)
    );
    assert!(!stack.publisher.path("ldap-bind-refused.json").exists());
    let (_, locked) = bad_password_state(&stack.dc);
    assert_eq!(locked, 0);

    // A disabled account is named as such (AD data 533), and since the password did not
    // change, enabling the account needs --retry-bind.
    let disable = |flags: u32| {
        stack.dc.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {flags}\n",
            stack.dc.service_bind_dn()
        ))
    };
    disable(514);
    let disabled = stack.run(&["publish"]);
    assert_eq!(disabled.code, 1, "{disabled:#?}");
    assert!(
        disabled.stderr.contains("AD data 533: account disabled"),
        "{}",
        disabled.stderr
    );
    disable(512);
    let still = stack.run(&["publish"]);
    assert!(
        still.stderr.contains("refused this same password"),
        "{}",
        still.stderr
    );
    let again = stack.run(&["publish", "--retry-bind"]);
    assert_eq!(again.code, 0, "{again:#?}");
}

#[test]
fn owners_come_from_the_name_service_when_ad_has_no_uid_numbers() {
    // No RFC 2307 attributes: as in many ADs whose Linux hosts use SSSD or winbind.
    let names = ["bob", "carol", "dave", "erin", "frank"];
    let mut fixture = Fixture::new();
    for name in names {
        fixture = fixture.user(UserSpec::new(name).unix_home(&format!("/home/{name}")));
    }
    let fixture = fixture.group("Web Team", &names);
    let mut stack = Stack::start(&fixture, POLICY);
    // Homes owned by the uids SSSD would give these people on the NFS clients.
    let people: Vec<(&'static str, u32)> = names
        .iter()
        .zip(700_001u32..)
        .map(|(name, uid)| (*name, uid))
        .collect();
    let keys = stack.give_keys(&people);

    // uid_number (the default): nobody has one, and the report says so once, with the fix.
    let without = stack.run(&["plan"]);
    let report = format!("{}{}", without.stdout, without.stderr);
    assert!(report.contains("5 members"), "{report}");
    assert!(
        report.contains("have no uidNumber in AD") && report.contains("owner = \"nss\""),
        "{report}"
    );
    assert_eq!(
        report.matches("no uidNumber").count(),
        1,
        "one summary, not one problem per person: {report}"
    );

    // nss: a test NSS source that knows four of them (fully qualified, as SSSD names them).
    let passwd = stack.publisher.path("nss-passwd");
    let group = stack.publisher.path("nss-group");
    let mut lines = String::new();
    for (name, uid) in &people[..4] {
        lines.push_str(&format!(
            "{name}@corp.example.com:x:{uid}:{uid}:{name}:/home/{name}:/bin/bash\n"
        ));
    }
    std::fs::write(&passwd, lines).unwrap();
    std::fs::write(&group, "").unwrap();
    stack.publisher.env.extend([
        (
            "LD_PRELOAD".to_owned(),
            nss_wrapper_library().display().to_string(),
        ),
        (
            "NSS_WRAPPER_PASSWD".to_owned(),
            passwd.display().to_string(),
        ),
        ("NSS_WRAPPER_GROUP".to_owned(), group.display().to_string()),
    ]);
    let base = settings_with_urls(&stack, &[stack.dc.ldaps_url()], "");
    stack.publisher.write_settings(&base.replace(
        "concurrency = 4\n",
        "concurrency = 4\nowner = \"nss\"\nnss_suffix = \"@corp.example.com\"\n",
    ));
    let run = stack.run(&["publish"]);
    assert_eq!(run.code, 0, "{run:#?}");
    for (name, _) in &people[..4] {
        assert!(stack.s3.holds(&keys[name].line), "{name}: {run:#?}");
    }
    // frank is unknown to the name service: no keys, and the reason names the lookup.
    assert!(!stack.s3.holds(&keys["frank"].line));
    let report = format!("{}{}", run.stdout, run.stderr);
    assert!(
        report.contains("knows no account \\\"frank@corp.example.com\\\"")
            || report.contains("knows no account \"frank@corp.example.com\""),
        "{report}"
    );

    // A home owned by someone else than the name service says is still refused.
    stack
        .homes
        .write("dave", 700_099, &format!("{}\n", keys["dave"].line));
    let plan = stack.run(&["plan"]);
    let report = format!("{}{}", plan.stdout, plan.stderr);
    assert!(
        report.contains("owned by uid 700099, not 700003"),
        "{report}"
    );
}

fn nss_wrapper_library() -> std::path::PathBuf {
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        let path = Path::new(dir).join("libnss_wrapper.so");
        if path.exists() {
            return path;
        }
    }
    panic!("libnss_wrapper.so not found (scripts/test installs libnss-wrapper)");
}
