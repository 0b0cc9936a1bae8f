//! README "no secrets in logs": with `RUST_LOG=trace` (every crate's most talkative level, the
//! LDAP and AWS SDK internals included) and `--log-format json`, on successful and on failing
//! runs, neither the LDAP password, nor the AWS secret access key, nor the signing private key
//! appears in stdout, stderr or the metrics file. Real Samba DC and s3s-fs, so the bind and the
//! SigV4 signing really happen.

use std::path::Path;

use crate::support::keyhole::Run;
use crate::support::s3::SECRET_KEY;
use crate::support::samba::{Fixture, UserSpec};
use crate::support::stack::{Extra, Stack};

const POLICY: &str = "[access_groups.web-prod]\ngroups = [\"Web Team\"]\n";

fn fixture() -> Fixture {
    Fixture::new()
        .user(UserSpec::unix("bob", 21001, "/home/bob"))
        .group("Web Team", &["bob"])
}

/// The pieces of the signing private key that must never be shown: each base64 line of the
/// OpenSSH private key file (the seed sits inside them).
fn private_key_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(str::to_owned)
        .collect()
}

/// Runs `publish` with trace logging, JSON logs and a metrics file, plus `env`; returns the run
/// and everything it left where an operator or a log shipper reads (stdout, stderr, metrics).
fn traced_publish(stack: &Stack, env: &[(&str, &str)]) -> (Run, String) {
    let metrics = stack.publisher.path("publish.prom");
    let _ = std::fs::remove_file(&metrics);
    let mut deployment_env = stack.publisher.env.clone();
    deployment_env.push(("RUST_LOG".into(), "trace".into()));
    deployment_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let run = crate::support::keyhole::run_keyhole(
        &stack.publisher.config(),
        &[
            "--log-format",
            "json",
            "publish",
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
        &deployment_env,
    );
    let metrics = std::fs::read_to_string(&metrics).unwrap_or_default();
    let everything = format!("{}\n{}\n{}", run.stdout, run.stderr, metrics);
    (run, everything)
}

fn assert_none_of(secrets: &[(&str, String)], shown: &str, which: &str) {
    for (name, secret) in secrets {
        assert!(
            !shown.contains(secret.as_str()),
            "the {name} appears in the output of the {which} run"
        );
    }
}

#[test]
fn no_secret_appears_in_output_logs_or_metrics_at_trace_level() {
    let mut stack = Stack::start(&fixture(), POLICY);
    stack.give_keys(&[("bob", 21001)]);
    let (key_file, _) = stack.publisher.signing_key();
    stack.write_settings(Extra {
        sections: &format!(
            "\n[signing]\nkey_file = \"{}\"\nvalidity = \"7d\"\n",
            key_file.display()
        ),
        ..Extra::default()
    });
    let password = std::fs::read_to_string(stack.dc.service_password_file()).unwrap();
    let mut secrets = vec![
        ("LDAP password", password.trim_end().to_owned()),
        ("AWS secret access key", SECRET_KEY.to_owned()),
    ];
    for line in private_key_lines(&key_file) {
        secrets.push(("signing private key", line));
    }

    // Success: bind, search, homes, SigV4-signed reads and writes, a signature.
    let (run, shown) = traced_publish(&stack, &[]);
    assert_eq!(run.code, 0, "{run:#?}");
    // Trace logging really was on (else this proves nothing): the JSON lines carry TRACE events.
    assert!(
        shown.contains("\"level\":\"TRACE\""),
        "no trace lines: {}",
        run.stderr
    );
    assert!(shown.contains("keyhole_publish"), "no metrics: {shown}");
    assert_none_of(&secrets, &shown, "successful");

    // Failure after the bind: S3 is down.
    stack.homes.write(
        "bob",
        21001,
        &format!("{}\n", stack.homes.key("bob2", "ed25519").line),
    );
    stack.s3.stop();
    let (run, shown) = traced_publish(&stack, &[]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(shown.contains("keyhole_publish"), "no metrics: {shown}");
    assert_none_of(&secrets, &shown, "S3-down");
    stack.s3.restart();

    // Failure at the bind: a wrong password (from the environment), which must not be shown
    // either (one bad bind, well under the DC's lockout threshold).
    let wrong = "Wr0ng-but-still-secret-9f27c1";
    let (run, shown) = traced_publish(&stack, &[("KEYHOLE_LDAP_PASSWORD", wrong)]);
    assert_eq!(run.code, 1, "{run:#?}");
    let mut with_wrong = secrets.clone();
    with_wrong.push(("wrong LDAP password", wrong.to_owned()));
    assert_none_of(&with_wrong, &shown, "bad-bind");
}
