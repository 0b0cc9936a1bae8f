//! `keyhole check` as an operator and CI run it: the built binary over broken and valid policies in
//! `tests/fixtures/policies/`, with the exact stdout and exit code snapshotted.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::keyhole::run_in;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies")
}

/// The exit code and stdout, the two things a CI job consumes, in one snapshot-able text.
fn transcript(output: &Output) -> String {
    format!(
        "exit: {}\n{}",
        output
            .status
            .code()
            .map_or("signal".into(), |code| code.to_string()),
        String::from_utf8_lossy(&output.stdout)
    )
}

/// Checks one fixture by its relative name (so paths in the snapshot are machine-independent).
fn check_fixture(name: &str) -> String {
    let output = run_in(&fixtures(), &["check", name]);
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "",
        "diagnostics belong on stdout"
    );
    transcript(&output)
}

macro_rules! fixture_tests {
    ($($test:ident => $file:literal,)*) => {$(
        #[test]
        fn $test() {
            insta::assert_snapshot!(stringify!($test), check_fixture($file));
        }
    )*};
}

fixture_tests! {
    syntax_error => "syntax-error.toml",
    unknown_keys => "unknown-keys.toml",
    bad_names => "bad-names.toml",
    duplicates => "duplicates.toml",
    empty_group => "empty-group.toml",
    bad_fingerprints => "bad-fingerprints.toml",
    wrong_types => "wrong-types.toml",
    array_of_access_groups => "array-of-access-groups.toml",
    no_access_groups => "no-access-groups.toml",
    empty_access_groups => "empty-access-groups.toml",
    empty_file => "empty-file.toml",
    several_problems => "several-problems.toml",
    warnings_only => "warnings-only.toml",
    valid => "valid.toml",
}

#[test]
fn every_fixture_has_a_test() {
    let source = std::fs::read_to_string(file!()).unwrap();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            source.contains(&format!("=> \"{name}\"")),
            "fixture {name} is not checked by any test"
        );
    }
}

#[test]
fn the_repository_policy_passes_and_is_the_default() {
    // No argument: `access-groups.toml` in the current directory, here the repository root.
    let output = run_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["check"]);
    assert_eq!(
        transcript(&output),
        "exit: 0\naccess-groups.toml: OK, 4 access groups\n"
    );
}

#[test]
fn an_unreadable_policy_is_a_runtime_failure_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_in(dir.path(), &["check", "missing.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("keyhole: error: reading policy missing.toml: "),
        "{stderr}"
    );

    // A directory where the file should be is unreadable too, not an empty policy.
    std::fs::create_dir(dir.path().join("access-groups.toml")).unwrap();
    let output = run_in(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn a_policy_that_is_not_utf8_is_invalid_not_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("latin1.toml"),
        b"[access_groups.web]\nusers = [\"j\xfcrgen\"]\n",
    )
    .unwrap();
    let output = run_in(dir.path(), &["check", "latin1.toml"]);
    assert_eq!(
        transcript(&output),
        "exit: 78\n\
         latin1.toml:2:12: error: the policy is not valid UTF-8 (TOML files must be UTF-8)\n\
         latin1.toml: 1 error\n"
    );
}

#[test]
fn help_lists_the_exit_codes() {
    let output = run_in(&fixtures(), &["check", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("78  configuration or policy invalid"),
        "{help}"
    );
    insta::assert_snapshot!("check_help", help);
}
