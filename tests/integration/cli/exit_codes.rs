//! The exit codes of README "Exit codes", each reached through the built binary the way a script
//! sees it: 64 for what clap refuses, 78 for every family of invalid settings (and an invalid
//! policy), `--help` naming the index conflict behind 75, and an instance answering a user other
//! than `login_user` with nothing and 0. None of these needs a server: each stops before any
//! connection (the settings point at a closed port of 127.0.0.1, so a run that wrongly went on
//! would fail with 1, not with the code asserted).

use std::path::Path;
use std::process::Output;

use crate::support::keyhole::{run_in, run_in_with};
use crate::support::ports::free_port;

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// A complete, valid publisher + instance settings file in `dir` (LDAP and S3 on closed ports),
/// with a valid policy.
fn valid_settings(dir: &Path) -> String {
    std::fs::write(dir.join("ldap-password"), "not-a-real-password\n").unwrap();
    std::fs::write(dir.join("ca.pem"), "").unwrap();
    std::fs::create_dir_all(dir.join("homes")).unwrap();
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    std::fs::write(
        dir.join("access-groups.toml"),
        "[access_groups.web-prod]\ngroups = [\"Web Team\"]\n",
    )
    .unwrap();
    format!(
        r#"policy = "access-groups.toml"

[ldap]
url = "ldaps://127.0.0.1:{ldap}"
bind_dn = "CN=svc,DC=example,DC=com"
password_file = "{dir}/ldap-password"
base_dn = "DC=example,DC=com"
ca_file = "{dir}/ca.pem"
timeout = "2s"

[homes]
root = "{dir}/homes"
home_prefix = "/home"

[s3]
bucket = "keyhole-test"
prefix = "ssh/"
region = "us-east-1"
endpoint = "http://127.0.0.1:{s3}"
force_path_style = true

[safety]
lock_file = "{dir}/publish.lock"

[instance]
login_user = "ec2-user"
access_groups = ["web-prod"]
cache_dir = "{dir}/cache"
cache_ttl = "5m"
max_stale = "24h"
fetch_timeout = "2s"
allow_unsigned = true
"#,
        ldap = free_port(),
        s3 = free_port(),
        dir = dir.display(),
    )
}

#[test]
fn clap_usage_errors_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["publish", "--no-such-flag"][..],
        &["publish", "--deadline", "soon"],
        &["publish", "--min-generation", "minus-one"],
        &["no-such-command"],
        &["authorized-keys"],
        &[],
    ] {
        let output = run_in(dir.path(), args);
        assert_eq!(code(&output), 64, "keyhole {args:?}: {output:?}");
        assert!(output.stdout.is_empty(), "keyhole {args:?}: {output:?}");
    }
    // Help and version are not errors.
    for args in [&["--help"][..], &["publish", "--help"], &["--version"]] {
        let output = run_in(dir.path(), args);
        assert_eq!(code(&output), 0, "keyhole {args:?}: {output:?}");
    }
}

#[test]
fn publish_help_names_the_index_conflict_as_75() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_in(dir.path(), &["publish", "--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    let line = help
        .lines()
        .find(|line| line.trim_start().starts_with("75 "))
        .unwrap_or_else(|| panic!("no exit code 75 in publish --help:\n{help}"));
    assert!(line.contains("lock"), "{line}");
    assert!(
        line.contains("committed an index"),
        "75 must name the index conflict too: {line}"
    );
}

/// One invalid-settings case: its family, the settings text (`None`: no file), extra
/// environment, and what stderr must name.
type Case<'a> = (&'a str, Option<String>, Vec<(&'a str, &'a str)>, &'a str);

/// Every way the settings can be wrong ends a run with 78 before it connects anywhere, with a
/// message naming the problem, for the publisher and for the instance.
#[test]
fn each_family_of_invalid_settings_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let valid = valid_settings(dir.path());
    let config = dir.path().join("keyhole.toml");
    // (family, settings text or None for no file, extra environment, what stderr must name)
    let cases: Vec<Case<'_>> = vec![
        ("missing file", None, vec![], "reading the settings file"),
        (
            "TOML syntax",
            Some(format!("{valid}\n[ldap\n")),
            vec![],
            "invalid settings",
        ),
        (
            "unknown key",
            Some(valid.replace("[homes]\n", "[homes]\nfrobnicate = 1\n")),
            vec![],
            "frobnicate",
        ),
        (
            "wrong type",
            Some(valid.replacen("timeout = \"2s\"", "timeout = 2", 1)),
            vec![],
            "ldap.timeout: must be a duration in double quotes",
        ),
        (
            "invalid value",
            Some(valid.replace("ldaps://127.0.0.1", "http://127.0.0.1")),
            vec![],
            "must start with ldaps:// or ldap://",
        ),
        (
            "out of range",
            Some(valid.replace("[safety]\n", "[safety]\nmax_removed_users = -1\n")),
            vec![],
            "max_removed_users",
        ),
        (
            "inconsistent values",
            Some(valid.replace("max_stale = \"24h\"", "max_stale = \"1m\"")),
            vec![],
            "must not be shorter than cache_ttl",
        ),
        (
            "a bad environment override",
            Some(valid.clone()),
            vec![("KEYHOLE_LDAP_PAGE_SIZE", "lots")],
            "KEYHOLE_LDAP_PAGE_SIZE",
        ),
    ];
    for (family, text, env, named) in &cases {
        match text {
            Some(text) => std::fs::write(&config, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&config);
            }
        }
        let config = config.to_str().unwrap();
        for args in [
            &["--config", config, "publish"][..],
            &["--config", config, "authorized-keys", "ec2-user"],
        ] {
            let output = run_in_with(dir.path(), args, env);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(code(&output), 78, "{family}: keyhole {args:?}: {output:?}");
            assert!(stderr.contains(named), "{family}: {named:?} in {stderr}");
            assert!(output.stdout.is_empty(), "{family}: {output:?}");
        }
    }

    // A section the command needs is missing: the instance without [instance].
    let without_instance = valid.split("[instance]").next().unwrap().to_owned();
    std::fs::write(&config, without_instance).unwrap();
    let output = run_in_with(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "authorized-keys",
            "ec2-user",
        ],
        &[],
    );
    assert_eq!(code(&output), 78, "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("[instance]"));

    // The policy is invalid: the publisher stops before reading AD or S3.
    std::fs::write(&config, &valid).unwrap();
    std::fs::write(
        dir.path().join("access-groups.toml"),
        "[access_groups.web-prod]\ngroups = [\"Web Team\"]\nfrobnicate = true\n",
    )
    .unwrap();
    let output = run_in_with(
        dir.path(),
        &["--config", config.to_str().unwrap(), "publish"],
        &[],
    );
    assert_eq!(code(&output), 78, "{output:?}");
}

/// README "The instance side": any user other than `instance.login_user` gets nothing, exit 0,
/// and without a look at the cache or S3 (the cache here is unusable and S3 is a closed port:
/// the login user gets exit 1 from the same settings).
#[test]
fn only_the_login_user_gets_keys_anyone_else_gets_nothing_and_0() {
    let dir = tempfile::tempdir().unwrap();
    let valid = valid_settings(dir.path());
    let config = dir.path().join("keyhole.toml");
    std::fs::write(&config, valid).unwrap();
    let config = config.to_str().unwrap();
    for args in [
        &["--config", config, "authorized-keys", "root"][..],
        &[
            "--config",
            config,
            "authorized-keys",
            "nobody",
            "SHA256:abc",
        ],
        &["--config", config, "authorized-keys", "ec2-user2"],
        &["--config", config, "authorized-keys", "EC2-USER"],
    ] {
        let output = run_in(dir.path(), args);
        assert_eq!(code(&output), 0, "{args:?}: {output:?}");
        assert!(output.stdout.is_empty(), "{args:?}: {output:?}");
    }
    // The same settings for the login user: nothing cached and S3 down, so exit 1 (fail
    // closed): the 0 above is the other-user branch, not an empty cache.
    let output = run_in_with(
        dir.path(),
        &["--config", config, "authorized-keys", "ec2-user"],
        &[],
    );
    assert_eq!(code(&output), 1, "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
}
