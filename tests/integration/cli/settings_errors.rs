//! How an invalid settings file reads to the operator who runs the built binary: every problem
//! at once, each at its `FILE:LINE:COL` and in words (never a parser's type names), under one
//! prefix, with exit code 78 and nothing on stdout. No server is needed: every command here stops
//! at the settings, before it reads a policy or connects anywhere.

use crate::support::keyhole::run_in_with as keyhole;

/// A settings file with five mistakes of different families, one per marked line.
const BROKEN: &str = r#"policy = "access-groups.toml"

[ldap]
url = 5
bind_dn = "CN=svc,DC=example,DC=com"
password_file = "ldap-password"
base_dn = "DC=example,DC=com"
page_size = "big"

[homes]
concurency = 3

[s3]
prefix = "ssh/"

[safety]
max_removed_fraction = 2.0
"#;

/// Parser words the operator must never see.
const PARSER_WORDS: &[&str] = &[
    "invalid type",
    "untagged enum",
    "OneOrMany",
    "expected i64",
    "unknown field",
    "configuration or policy invalid",
];

#[test]
fn every_problem_is_reported_at_once_with_its_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyhole.toml");
    std::fs::write(&config, BROKEN).unwrap();
    let path = config.display().to_string();
    for command in [&["check"][..], &["plan"], &["authorized-keys", "ec2-user"]] {
        let mut args = vec!["--config", path.as_str()];
        args.extend_from_slice(command);
        let output = keyhole(dir.path(), &args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{command:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{command:?}: {output:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines,
            [
                format!("keyhole: error: invalid settings in {path}: 5 errors").as_str(),
                &format!(
                    "{path}:4:7: error: ldap.url: must be text in double quotes or a list of them, like \"ldaps://dc1.corp.example.com\" or [\"ldaps://dc1\", \"ldaps://dc2\"], not the number 5"
                ),
                &format!(
                    "{path}:8:13: error: ldap.page_size: must be a whole number, not the text \"big\""
                ),
                &format!(
                    "{path}:11:1: error: homes.concurency: unknown key; did you mean concurrency?"
                ),
                &format!("{path}:13:2: error: s3.bucket: is required: add bucket = … under [s3]"),
                &format!(
                    "{path}:17:1: error: safety.max_removed_fraction: 2 is not between 0 and 1 (a fraction: 0.25 is a quarter of everyone)"
                ),
            ],
            "{command:?}"
        );
        for words in PARSER_WORDS {
            assert!(
                !stderr.contains(words),
                "{command:?}: {words:?} in {stderr}"
            );
        }
    }
}

#[test]
fn problems_in_the_file_and_in_the_environment_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyhole.toml");
    std::fs::write(&config, BROKEN).unwrap();
    let path = config.display().to_string();
    let output = keyhole(
        dir.path(),
        &["--config", &path, "check"],
        &[
            ("KEYHOLE_LDAP_TIMEOUT", "soon"),
            ("KEYHOLE_HOMES_CONCURENCY", "3"),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "keyhole: error: invalid settings in {path}: 7 errors\n"
        )),
        "{stderr}"
    );
    // The file's problems first, by line, then the variables' (which have no line).
    let last: Vec<&str> = stderr.lines().rev().take(2).collect();
    assert!(
        last.iter().any(|line| line.starts_with(
            "environment variable KEYHOLE_HOMES_CONCURENCY:0:0: error: not a keyhole setting; did you mean KEYHOLE_HOMES_CONCURRENCY?"
        )),
        "{stderr}"
    );
    assert!(
        last.iter().any(|line| line.starts_with(
            "environment variable KEYHOLE_LDAP_TIMEOUT:0:0: error: ldap.timeout: \"soon\" is not a duration"
        )),
        "{stderr}"
    );
}

#[test]
fn a_syntax_error_is_one_problem_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyhole.toml");
    std::fs::write(&config, "[ldap]\nurl = \"ldaps://dc1\n").unwrap();
    let path = config.display().to_string();
    let output = keyhole(dir.path(), &["--config", &path, "check"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines[0],
        format!("keyhole: error: invalid settings in {path}: 1 error")
    );
    assert!(
        lines[1].starts_with(&format!("{path}:2:")) && lines[1].contains("error: invalid TOML"),
        "{stderr}"
    );
}
