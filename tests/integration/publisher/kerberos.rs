//! `[ldap] auth = "gssapi"` against a real KDC: the test Samba DC with its KDC running, a keytab
//! exported from it (`samba-tool domain exportkeytab`), a krb5.conf naming only its address, and
//! the DC reached by its host name (`dc1.corp.example.com`, the name its certificate and its
//! `ldap/` service principal carry) through a test DNS server (`[ldap] dns_server`), so
//! /etc/hosts is never edited.
//!
//! What each failure must do: a stale keytab (the password changed after the export), an expired
//! password, a skewed clock (libfaketime on the keyhole process alone), no KDC and a keytab that
//! others can read each give their named error with the fix, and nothing is written to S3. A
//! refused keytab is never presented again until the file changes, like a refused password.
//!
//! Needs the `gssapi` feature (scripts/test builds with it).

use std::path::{Path, PathBuf};

use crate::support::dns::Dns;
use crate::support::homes::Homes;
use crate::support::keyhole::{Deployment, Run, run_keyhole};
use crate::support::s3::S3Server;
use crate::support::samba::{Fixture, SambaDc, UserSpec};

const POLICY: &str = r#"
[access_groups.web-prod]
groups = ["Web Team"]
"#;

/// The account the keytab is for (not `svc-keyhole`, whose password the harness itself uses).
const ACCOUNT: &str = "svc-krb";
const PASSWORD: &str = "Kh1-first-password-for-krb";

fn company() -> Fixture {
    Fixture::new()
        .user(UserSpec::unix("bob", 20002, "/home/bob"))
        .user(UserSpec::unix("carol", 20003, "/home/carol"))
        .group("Web Team", &["bob", "carol"])
}

/// A DC with its KDC, DNS that names it, S3, homes with keys, and a publisher deployment whose
/// `[ldap]` binds with a keytab for [`ACCOUNT`].
struct KerberosStack {
    dc: SambaDc,
    _dns: Dns,
    dns_address: String,
    s3: S3Server,
    homes: Homes,
    publisher: Deployment,
    keytab: PathBuf,
    krb5_conf: PathBuf,
}

impl KerberosStack {
    fn start() -> KerberosStack {
        let dc = SambaDc::start_with_kdc(&company());
        let dns = Dns::start("corp.example.com", &[], &[(&dc.host_name(), dc.address())]);
        let s3 = S3Server::start();
        let homes = Homes::new();
        let mut publisher = Deployment::new(&dc, POLICY);
        publisher.env.extend(s3.env());
        dc.add_account(ACCOUNT, PASSWORD);
        let keytab = publisher.path("keyhole.keytab");
        let krb5_conf = dc.write_krb5_conf(&publisher.path("krb5.conf"));
        let stack = KerberosStack {
            dns_address: dns.address.to_string(),
            _dns: dns,
            dc,
            s3,
            homes,
            publisher,
            keytab,
            krb5_conf,
        };
        stack.export_keytab();
        stack.write_settings(&stack.krb5_conf);
        for (name, uid) in [("bob", 20002), ("carol", 20003)] {
            let key = stack.homes.key(name, "ed25519");
            stack.homes.write(name, uid, &format!("{}\n", key.line));
        }
        stack
    }

    fn principal(&self) -> String {
        format!("{ACCOUNT}@{}", self.dc.kerberos_realm())
    }

    fn export_keytab(&self) {
        self.dc.export_keytab(&self.principal(), &self.keytab);
    }

    /// Settings binding with the keytab (no bind_dn, no password anywhere).
    fn write_settings(&self, krb5_conf: &Path) {
        self.publisher.write_settings(&format!(
            r#"policy = "access-groups.toml"

[ldap]
url = "ldaps://{host}"
dns_server = "{dns}"
auth = "gssapi"
keytab = "{keytab}"
principal = "{principal}"
krb5_conf = "{krb5_conf}"
base_dn = "{base_dn}"
ca_file = "{ca_file}"
timeout = "10s"
{s3}{homes}
[safety]
lock_file = "{lock}"
"#,
            host = self.dc.host_name(),
            dns = self.dns_address,
            keytab = self.keytab.display(),
            principal = self.principal(),
            krb5_conf = krb5_conf.display(),
            base_dn = self.dc.base_dn(),
            ca_file = self.dc.ca_file().display(),
            s3 = self.s3.settings("ssh/"),
            homes = self.homes.settings(),
            lock = self.publisher.path("publish.lock").display(),
        ));
    }

    fn run(&self, args: &[&str]) -> Run {
        self.publisher.run(args)
    }

    /// Runs keyhole with its clock `offset` off (libfaketime preloaded into that process only).
    fn run_skewed(&self, offset: &str, args: &[&str]) -> Run {
        let mut env = self.publisher.env.clone();
        env.push(("LD_PRELOAD".into(), libfaketime().display().to_string()));
        env.push(("FAKETIME".into(), offset.into()));
        // Timers (tokio) keep the real monotonic clock; only the wall clock is off.
        env.push(("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()));
        run_keyhole(&self.publisher.config(), args, &env)
    }

    fn bind_state_file(&self) -> PathBuf {
        self.publisher.path("ldap-bind-refused.json")
    }
}

/// Debian's faketime package (scripts/lib/prereqs.sh installs it).
fn libfaketime() -> PathBuf {
    for candidate in [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("libfaketime.so.1 not found: install the faketime package (scripts/test does)");
}

fn assert_failed_with(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, 1, "{run:#?}");
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "no {needle:?} in:\n{}",
            run.stderr
        );
    }
    // One line: the error and its fix, never a multi-line dump.
    let error = run
        .stderr
        .lines()
        .filter(|line| line.starts_with("keyhole: error:"))
        .collect::<Vec<_>>();
    assert_eq!(error.len(), 1, "{}", run.stderr);
}

#[test]
fn check_bind_members_plan_and_publish_bind_with_a_keytab_and_no_password() {
    let stack = KerberosStack::start();
    let settings = std::fs::read_to_string(stack.publisher.config()).unwrap();
    assert!(!settings.contains("password"), "{settings}");

    let bound = stack.run(&["check-bind"]);
    assert_eq!(bound.code, 0, "{bound:#?}");
    assert!(
        bound.stdout.contains(&format!(
            "bound to ldaps://{} (gssapi bind)",
            stack.dc.host_name()
        )),
        "{bound:#?}"
    );
    // The identity AD sees is the keytab's account, not the harness's svc-keyhole.
    assert!(
        bound.stdout.to_ascii_lowercase().contains(ACCOUNT),
        "{bound:#?}"
    );
    let json = stack.run(&["check-bind", "--format", "json"]).json();
    assert_eq!(json["auth"], "gssapi");

    let members = stack.run(&["members", "--format", "json"]);
    assert_eq!(members.code, 0, "{members:#?}");
    let users = members.json()["access_groups"]["web-prod"]["users"].to_string();
    assert!(users.contains("bob") && users.contains("carol"), "{users}");

    let plan = stack.run(&["plan"]);
    assert_eq!(plan.code, 0, "{plan:#?}");
    let publish = stack.run(&["publish"]);
    assert_eq!(publish.code, 0, "{publish:#?}");
    let published = stack.s3.published("ssh/").expect("an index");
    assert!(published.to_string().contains("bob"), "{published}");
}

#[test]
fn a_stale_keytab_is_named_refused_once_and_never_presented_again_until_it_changes() {
    let stack = KerberosStack::start();
    assert_eq!(stack.run(&["publish"]).code, 0);
    // The password changes after the export: the keytab's keys are no longer the account's.
    stack
        .dc
        .set_password(ACCOUNT, "Kh1-second-password-for-krb");
    let before = stack.s3.contents_and_times();

    let refused = stack.run(&["publish"]);
    assert_failed_with(
        &refused,
        &[
            "Kerberos refused svc-krb@CORP.EXAMPLE.COM",
            "the keytab's keys are not the principal's",
            "export a new keytab",
            "no other DC was tried",
        ],
    );
    assert!(stack.bind_state_file().exists());
    let state = std::fs::read_to_string(stack.bind_state_file()).unwrap();
    assert!(!state.contains("Kh1-"), "{state}");
    let count = stack.dc.bad_password_count(ACCOUNT);

    // The same keytab again: refused without asking the KDC, so the account's count stays.
    for _ in 0..3 {
        let again = stack.run(&["publish"]);
        assert_failed_with(&again, &["refused this same keytab", "--retry-bind"]);
    }
    assert_eq!(stack.dc.bad_password_count(ACCOUNT), count);
    assert_eq!(stack.s3.contents_and_times(), before);

    // A new keytab is a new secret: the next run binds and the refusal is forgotten.
    stack.export_keytab();
    let fixed = stack.run(&["publish"]);
    assert_eq!(fixed.code, 0, "{fixed:#?}");
    assert!(!stack.bind_state_file().exists());
}

#[test]
fn an_expired_password_is_named_and_writes_nothing() {
    let stack = KerberosStack::start();
    assert_eq!(stack.run(&["publish"]).code, 0);
    stack.dc.expire_password(ACCOUNT);
    let before = stack.s3.contents_and_times();
    let expired = stack.run(&["publish"]);
    assert_failed_with(
        &expired,
        &[
            "the principal's password has expired",
            "set a new password on the account",
        ],
    );
    assert_eq!(stack.s3.contents_and_times(), before);
    // Like AD's 532 on a simple bind: not presented again until the keytab changes.
    let again = stack.run(&["members"]);
    assert_failed_with(&again, &["refused this same keytab"]);
}

#[test]
fn a_skewed_clock_is_named_writes_nothing_and_is_not_held_against_the_keytab() {
    let stack = KerberosStack::start();
    assert_eq!(stack.run(&["publish"]).code, 0);
    let before = stack.s3.contents_and_times();
    let skewed = stack.run_skewed("+1h", &["members"]);
    assert_failed_with(
        &skewed,
        &["clock skew too great", "synchronise this machine's clock"],
    );
    let published = stack.run_skewed("+1h", &["publish"]);
    assert_eq!(published.code, 1, "{published:#?}");
    assert_eq!(stack.s3.contents_and_times(), before);
    // A problem of this machine, not of the keytab: nothing recorded, the next run binds.
    assert!(!stack.bind_state_file().exists());
    let fine = stack.run(&["members"]);
    assert_eq!(fine.code, 0, "{fine:#?}");
}

#[test]
fn no_kdc_and_an_open_keytab_are_named_before_anything_is_written() {
    let stack = KerberosStack::start();
    let before = stack.s3.contents_and_times();

    // A krb5.conf whose KDC is a loopback address where nothing listens.
    let nowhere = stack.publisher.path("krb5-nowhere.conf");
    let text = std::fs::read_to_string(&stack.krb5_conf).unwrap().replace(
        &format!("kdc = {}", stack.dc.address()),
        "kdc = 127.0.0.1:9",
    );
    std::fs::write(&nowhere, text).unwrap();
    stack.write_settings(&nowhere);
    let no_kdc = stack.run(&["publish"]);
    assert_failed_with(&no_kdc, &["no KDC answered", "port 88"]);
    assert!(!stack.bind_state_file().exists());
    stack.write_settings(&stack.krb5_conf);

    // A keytab others can read: refused before any network traffic.
    std::fs::set_permissions(
        &stack.keytab,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let open = stack.run(&["publish"]);
    assert_failed_with(&open, &["mode 644", "chmod 600"]);
    assert_eq!(stack.s3.contents_and_times(), before);
}
