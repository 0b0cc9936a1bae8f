//! The fault-injection suite: the real Samba DC and the real S3 server (s3s-fs), with the fault
//! proxy of `support::fault_proxy` in between, failing at exact points. Each case checks what an
//! operator would notice (exit code, message, log line) and that nothing already published is
//! lost: the bucket is compared object by object, bytes and modification times, before and
//! after a failed run. (How the publisher lays out its objects is not this suite's business.)
//!
//! Cases: S3 answers 503 SlowDown a few times; a connection reset in the middle of a PUT; LDAP
//! cut in the middle of a paged search; the first DC refuses connections and the second answers;
//! S3 slower than `--deadline`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::support::fault_proxy::{FaultProxy, HttpFault, HttpRule, Mode, TcpFault};
use crate::support::homes::Key;
use crate::support::keyhole::ldap_section;
use crate::support::ports::address_of;
use crate::support::samba::{Fixture, UserSpec};
use crate::support::stack::Stack;

const POLICY: &str = r#"
[access_groups.web-prod]
groups = ["Web Team"]

[access_groups.db-prod]
users = ["p1"]
"#;

/// Eight people, so that a paged search with page_size 2 has several pages.
const PEOPLE: &[(&str, u32)] = &[
    ("p1", 21001),
    ("p2", 21002),
    ("p3", 21003),
    ("p4", 21004),
    ("p5", 21005),
    ("p6", 21006),
    ("p7", 21007),
    ("p8", 21008),
];

fn company() -> Fixture {
    let mut fixture = Fixture::new();
    for (name, uid) in PEOPLE {
        fixture = fixture.user(UserSpec::unix(name, *uid, &format!("/home/{name}")));
    }
    let names: Vec<&str> = PEOPLE.iter().map(|(name, _)| *name).collect();
    fixture.group("Web Team", &names)
}

/// An instance of web-prod reading the bucket straight (no proxy): `refresh`, then the keys it
/// serves at a login.
fn instance_keys(stack: &Stack, dir: &std::path::Path) -> String {
    let config = dir.join("keyhole.toml");
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    std::fs::write(
        &config,
        format!(
            "{}\n[instance]\nlogin_user = \"ec2-user\"\naccess_groups = [\"web-prod\"]\ncache_dir = \"{}\"\ncache_ttl = \"1ms\"\nmax_stale = \"1h\"\nfetch_timeout = \"5s\"\n# These tests publish without [signing].\nallow_unsigned = true\n",
            stack.s3.settings("ssh/"),
            dir.join("cache").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(crate::support::keyhole::BINARY)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_clear()
            .envs(stack.s3.env())
            .output()
            .unwrap()
    };
    let refreshed = run(&["refresh"]);
    assert!(refreshed.status.success(), "{refreshed:?}");
    let login = run(&["authorized-keys", "ec2-user"]);
    assert!(login.status.success(), "{login:?}");
    String::from_utf8(login.stdout).unwrap()
}

/// Settings with `ldap_url` as `[ldap] url` (page_size 2) and `s3_endpoint` as the endpoint.
fn write_settings(stack: &Stack, ldap_urls: &[String], s3_endpoint: &str) {
    let list = ldap_urls
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let ldap = ldap_section(&stack.dc, &stack.dc.ldaps_url(), &stack.dc.ca_file())
        .replace(
            &format!("url = \"{}\"", stack.dc.ldaps_url()),
            &format!("url = [{list}]"),
        )
        .replace("page_size = 200", "page_size = 2")
        .replace("timeout = \"10s\"", "timeout = \"3s\"");
    let s3 = stack
        .s3
        .settings("ssh/")
        .replace(&stack.s3.endpoint(), s3_endpoint);
    stack.publisher.write_settings(&format!(
        "{ldap}{s3}{}\n[safety]\nlock_file = \"{}\"\n",
        stack.homes.settings(),
        stack.publisher.path("publish.lock").display()
    ));
}

/// A stack with everyone's keys published once, straight (no proxy).
fn published_world() -> (Stack, BTreeMap<&'static str, Key>) {
    let stack = Stack::start(&company(), POLICY);
    let keys = stack.give_keys(PEOPLE);
    let first = stack.run(&["publish"]);
    assert_eq!(first.code, 0, "{first:#?}");
    assert!(stack.s3.holds(&keys["p8"].line));
    (stack, keys)
}

/// p3 gets a new key: the next publish has something to write.
fn rotate_key(stack: &Stack) -> Key {
    let key = stack.homes.key("p3-new", "ed25519");
    stack.homes.write("p3", 21003, &format!("{}\n", key.line));
    key
}

#[test]
fn s3_answering_503_slowdown_a_few_times_is_retried_and_the_run_succeeds() {
    let (stack, _) = published_world();
    let new_key = rotate_key(&stack);
    let proxy = FaultProxy::start(
        address_of(&stack.s3.endpoint()),
        Mode::Http(vec![
            HttpRule::new(None, |_| true, HttpFault::SlowDown).times(2),
        ]),
    );
    write_settings(&stack, &[stack.dc.ldaps_url()], &proxy.http_url());
    let run = stack.run(&["publish"]);
    assert_eq!(run.code, 0, "{run:#?}");
    let slowed = proxy
        .seen()
        .iter()
        .filter(|seen| seen.fault == Some(HttpFault::SlowDown))
        .count();
    assert_eq!(slowed, 2, "{:?}", proxy.seen());
    assert!(proxy.seen().len() > 2, "requests went on after the 503s");
    assert!(stack.s3.holds(&new_key.line));
}

#[test]
fn a_connection_reset_in_the_middle_of_a_put_stores_nothing_partial_and_the_next_run_converges() {
    let (stack, keys) = published_world();
    let new_key = rotate_key(&stack);
    let before = stack.s3.contents_and_times();
    // Every PUT of a group object is cut after half its body, retries included: the run must
    // fail. The commit point (index, manifest) is let through, so a publisher that carried on
    // after a failed group write would be caught committing.
    let proxy = FaultProxy::start(
        address_of(&stack.s3.endpoint()),
        Mode::Http(vec![
            HttpRule::new(
                Some("PUT"),
                |target| !target.contains("index.json") && !target.contains("manifest.json"),
                HttpFault::ResetMidBody,
            )
            .times(1000),
        ]),
    );
    write_settings(&stack, &[stack.dc.ldaps_url()], &proxy.http_url());
    let failed = stack.run(&["publish"]);
    assert_eq!(failed.code, 1, "{failed:#?}");
    assert!(
        proxy
            .seen()
            .iter()
            .any(|seen| seen.fault == Some(HttpFault::ResetMidBody)),
        "{:?}",
        proxy.seen()
    );
    // Not one object changed, none appeared: half a body never becomes an object.
    assert_eq!(stack.s3.contents_and_times(), before);
    assert!(stack.s3.holds(&keys["p3"].line));
    assert!(!stack.s3.holds(&new_key.line));
    // An instance takes what is there and serves whole key lines: p3's old key, all eight.
    let instance = tempfile::tempdir().unwrap();
    let served = instance_keys(&stack, instance.path());
    assert!(served.contains(&keys["p3"].line), "{served}");
    assert_eq!(served.lines().count(), PEOPLE.len(), "{served}");

    // One reset, then the network heals: the SDK's retry carries the run.
    proxy.set_rules(vec![HttpRule::new(
        Some("PUT"),
        |_| true,
        HttpFault::ResetMidBody,
    )]);
    let healed = stack.run(&["publish"]);
    assert_eq!(healed.code, 0, "{healed:#?}");
    assert!(stack.s3.holds(&new_key.line));
    // (The old key may stay in the bucket as a superseded object; what counts is that an
    // instance no longer serves it.)
    let served = instance_keys(&stack, instance.path());
    assert!(served.contains(&new_key.line), "{served}");
    assert!(!served.contains(&keys["p3"].line), "{served}");
    assert_eq!(served.lines().count(), PEOPLE.len(), "{served}");
    // Converged: one more run writes nothing.
    let converged = stack.s3.contents_and_times();
    let again = stack.run(&["publish"]);
    assert_eq!(again.code, 0, "{again:#?}");
    assert_eq!(stack.s3.contents_and_times(), converged);
}

#[test]
fn ldap_cut_in_the_middle_of_a_paged_search_fails_the_run_and_writes_nothing() {
    let (stack, _) = published_world();
    let new_key = rotate_key(&stack);
    let dc = address_of(&stack.dc.ldaps_url());

    // How many bytes a whole read takes, through a faithful proxy.
    let measure = FaultProxy::start(dc, Mode::Tcp(TcpFault::Pass));
    write_settings(
        &stack,
        &[format!("ldaps://{}", measure.address())],
        &stack.s3.endpoint(),
    );
    let members = stack.run(&["members"]);
    assert_eq!(members.code, 0, "{members:#?}");
    let total = measure.server_bytes();
    assert!(total > 4000, "a read of {total} bytes");

    // Cut at two thirds: well past the TLS handshake and the bind, inside the paged searches.
    let before = stack.s3.contents_and_times();
    let cut = FaultProxy::start(dc, Mode::Tcp(TcpFault::CutAfterServerBytes(total * 2 / 3)));
    write_settings(
        &stack,
        &[format!("ldaps://{}", cut.address())],
        &stack.s3.endpoint(),
    );
    let failed = stack.run(&["publish"]);
    assert_eq!(failed.code, 1, "{failed:#?}");
    assert!(
        failed.stderr.contains("while searching") || failed.stderr.contains("searching "),
        "the cut must land in a search: {}",
        failed.stderr
    );
    assert!(
        !failed.stderr.contains("no domain controller could be used"),
        "{}",
        failed.stderr
    );
    assert_eq!(
        stack.s3.contents_and_times(),
        before,
        "nothing may be written"
    );
    assert!(!stack.s3.holds(&new_key.line));
}

#[test]
fn the_first_dc_refusing_connections_and_the_second_answering_is_a_success_with_a_log_line() {
    let (stack, _) = published_world();
    let new_key = rotate_key(&stack);
    let refusing = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = FaultProxy::start(address_of(&stack.dc.ldaps_url()), Mode::Tcp(TcpFault::Pass));
    let first = format!("ldaps://{refusing}");
    write_settings(
        &stack,
        &[first.clone(), format!("ldaps://{}", proxy.address())],
        &stack.s3.endpoint(),
    );
    let run = stack.run(&["publish"]);
    assert_eq!(run.code, 0, "{run:#?}");
    let line = run
        .stderr
        .lines()
        .find(|line| line.contains(&first))
        .unwrap_or_else(|| panic!("no log line for {first}: {}", run.stderr));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("onnection refused"), "{line}");
    assert!(stack.s3.holds(&new_key.line));
}

#[test]
fn s3_slower_than_the_deadline_ends_the_run_with_exit_1_and_nothing_published() {
    let (stack, _) = published_world();
    let new_key = rotate_key(&stack);
    let before = stack.s3.contents_and_times();
    let proxy = FaultProxy::start(
        address_of(&stack.s3.endpoint()),
        Mode::Http(vec![
            HttpRule::new(
                Some("PUT"),
                |_| true,
                HttpFault::Delay(Duration::from_secs(20)),
            )
            .times(1000),
        ]),
    );
    write_settings(&stack, &[stack.dc.ldaps_url()], &proxy.http_url());
    let started = Instant::now();
    let run = stack.run(&["publish", "--deadline", "4s"]);
    let took = started.elapsed();
    assert_eq!(run.code, 1, "{run:#?}");
    // README: "if it has not reached the manifest write in time it exits 1".
    assert!(
        run.stderr.contains("passed its --deadline of 4s"),
        "{}",
        run.stderr
    );
    assert!(took < Duration::from_secs(15), "the run took {took:?}");
    assert_eq!(
        stack.s3.contents_and_times(),
        before,
        "nothing may be written"
    );
    assert!(!stack.s3.holds(&new_key.line));
}
