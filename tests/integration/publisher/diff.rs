//! `keyhole diff` as a pull-request CI job runs it: a throwaway git repository whose history makes
//! each kind of policy change (a user added, an AD group removed, an access group created, one
//! renamed, a user denied, a policy broken), diffed offline in text, JSON and Markdown (the last
//! snapshotted), from a shallow clone, and with `--resolve` against a real Samba AD DC.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::keyhole::{Deployment, run_in, run_keyhole};
use crate::support::samba::{Fixture, SambaDc, UserSpec};
use serde_json::{Value, json};

const BASE: &str = r#"[everywhere]
users = ["alice.admin"]

[access_groups.web-prod]
description = "Production web servers"
users = ["bob"]
groups = ["Web Team", "SRE"]

[access_groups.db]
users = ["dave"]
"#;

/// Each step of the history: a tag and the whole policy at that commit. Cumulative, so
/// `--base base --head deny` is every change at once.
fn history() -> Vec<(&'static str, String)> {
    let add_user = BASE.replace("users = [\"bob\"]", "users = [\"bob\", \"carol\"]");
    let remove_group = add_user.replace(
        "groups = [\"Web Team\", \"SRE\"]",
        "groups = [\"Web Team\"]",
    );
    let new_group = format!(
        "{remove_group}\n[access_groups.ops]\nusers = [\"ghost.user\"]\ngroups = [\"Ops\"]\n"
    );
    let rename = new_group.replace("[access_groups.db]", "[access_groups.database]");
    let deny = format!("{rename}\n[deny]\nusers = [\"mallory\"]\n");
    let broken = deny
        .replace(
            "users = [\"bob\", \"carol\"]",
            "users = [\"bob\", \"carol\", \"Bob\"]",
        )
        .replace("groups = [\"Web Team\"]", "grups = [\"Web Team\"]");
    vec![
        ("base", BASE.to_owned()),
        ("add-user", add_user),
        ("remove-group", remove_group),
        ("new-group", new_group),
        ("rename", rename),
        ("deny", deny),
        ("broken", broken),
    ]
}

/// Runs `git ARGS` in `dir` with a fixed identity and clock, so commit ids (and with them the
/// snapshots) are the same on every run, and no user or system git config leaks in.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Policy Author",
            "-c",
            "user.email=author@example.com",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .output()
        .expect("running git");
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A policy repository with the whole [`history`] committed on `main`, each step tagged.
struct PolicyRepo {
    dir: tempfile::TempDir,
}

impl PolicyRepo {
    fn new() -> PolicyRepo {
        let repo = PolicyRepo {
            dir: tempfile::tempdir().unwrap(),
        };
        git(repo.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(repo.path().join("README.md"), "policy repo\n").unwrap();
        git(repo.path(), &["add", "README.md"]);
        git(repo.path(), &["commit", "-q", "-m", "before the policy"]);
        git(repo.path(), &["tag", "empty"]);
        for (tag, policy) in history() {
            repo.write(&policy);
            git(repo.path(), &["add", "access-groups.toml"]);
            git(repo.path(), &["commit", "-q", "-m", tag]);
            git(repo.path(), &["tag", tag]);
        }
        repo
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, policy: &str) {
        std::fs::write(self.path().join("access-groups.toml"), policy).unwrap();
    }

    /// Runs `keyhole ARGS` in the repository root.
    fn keyhole(&self, args: &[&str]) -> Output {
        run_in(self.path(), args)
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {output:?}"))
}

/// The exit code and stdout, as a CI job consumes them.
fn transcript(output: &Output) -> String {
    format!(
        "exit: {}\n{}",
        output
            .status
            .code()
            .map_or("signal".into(), |c| c.to_string()),
        stdout(output)
    )
}

#[test]
fn an_added_user_in_text() {
    let repo = PolicyRepo::new();
    let run = repo.keyhole(&["diff", "--base", "base", "--head", "add-user"]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let commit = git(repo.path(), &["rev-parse", "--short=7", "base"]);
    assert_eq!(
        stdout(&run),
        format!("keyhole diff base ({commit}) -> add-user (",)
            + &git(repo.path(), &["rev-parse", "--short=7", "add-user"])
            + "), access-groups.toml\n\
               access groups: 1 modified\n\
               \n\
               web-prod: modified\n  \
               + user carol\n"
    );
}

#[test]
fn a_removed_ad_group_a_new_and_a_renamed_access_group_in_json() {
    let repo = PolicyRepo::new();
    let run = repo.keyhole(&[
        "diff", "--base", "add-user", "--head", "rename", "--format", "json",
    ]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let report = json(&run);
    assert_eq!(
        report["base"],
        json!({
            "revision": "add-user",
            "commit": git(repo.path(), &["rev-parse", "add-user"]),
            "path": "access-groups.toml",
            "status": "valid",
            "diagnostics": [],
        })
    );
    assert_eq!(report["head"]["revision"], "rename");
    assert_eq!(report["access_changed"], true);
    assert_eq!(report["resolved"], false);
    let nothing = json!({"added": [], "removed": []});
    assert_eq!(
        report["everywhere"],
        json!({"users": nothing, "groups": nothing})
    );
    assert_eq!(
        report["deny"],
        json!({"users": nothing, "fingerprints": nothing})
    );
    assert_eq!(
        report["access_groups"],
        json!({
            "web-prod": {
                "change": "modified",
                "users": nothing,
                "groups": {"added": [], "removed": ["SRE"]},
            },
            "ops": {
                "change": "created",
                "users": {"added": ["ghost.user"], "removed": []},
                "groups": {"added": ["Ops"], "removed": []},
            },
            // The rename: the old name deleted, the new one created.
            "db": {
                "change": "deleted",
                "users": {"added": [], "removed": ["dave"]},
                "groups": nothing,
            },
            "database": {
                "change": "created",
                "users": {"added": ["dave"], "removed": []},
                "groups": nothing,
            },
        })
    );
    assert_eq!(report["warnings"], json!([]));
    assert_eq!(report["notes"], json!([]));
}

#[test]
fn markdown_for_a_pull_request_comment() {
    let repo = PolicyRepo::new();
    let every_change = repo.keyhole(&[
        "diff", "--base", "base", "--head", "deny", "--format", "markdown",
    ]);
    assert_eq!(every_change.status.code(), Some(0), "{every_change:?}");
    insta::assert_snapshot!("markdown_every_change", transcript(&every_change));

    let broken = repo.keyhole(&[
        "diff", "--base", "deny", "--head", "broken", "--format", "markdown",
    ]);
    insta::assert_snapshot!("markdown_broken_head", transcript(&broken));

    let none = repo.keyhole(&[
        "diff", "--base", "deny", "--head", "deny", "--format", "markdown",
    ]);
    insta::assert_snapshot!("markdown_no_change", transcript(&none));
}

#[test]
fn a_broken_head_is_reported_and_exits_78_whatever_the_format() {
    let repo = PolicyRepo::new();
    for format in ["text", "json", "markdown"] {
        let run = repo.keyhole(&[
            "diff",
            "--base",
            "deny",
            "--head",
            "broken",
            "--format",
            format,
            "--detailed-exitcode",
        ]);
        assert_eq!(run.status.code(), Some(78), "{format}: {run:?}");
        assert!(
            stdout(&run).contains("duplicate user `Bob`"),
            "{format}: {}",
            stdout(&run)
        );
    }
    let report = json(&repo.keyhole(&[
        "diff", "--base", "deny", "--head", "broken", "--format", "json",
    ]));
    assert_eq!(report["head"]["status"], "invalid");
    let diagnostics: Vec<(String, u64)> = report["head"]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["severity"].as_str().unwrap().to_owned(),
                d["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(diagnostics, [("error".into(), 6), ("error".into(), 7)]);
    // Still diffed from what the file says: the misspelt `grups` would drop `Web Team`.
    assert_eq!(
        report["access_groups"]["web-prod"]["groups"],
        json!({"added": [], "removed": ["Web Team"]})
    );

    // Not even TOML: nothing to diff, still 78, the syntax error in the report.
    repo.write("[access_groups.web-prod\n");
    let unreadable = repo.keyhole(&["diff", "--base", "deny"]);
    assert_eq!(unreadable.status.code(), Some(78), "{unreadable:?}");
    assert!(
        stdout(&unreadable).contains("the head policy cannot be read (1 error); nothing to diff"),
        "{}",
        stdout(&unreadable)
    );
    assert!(stdout(&unreadable).contains("access-groups.toml:1:"));
}

#[test]
fn a_broken_or_missing_base_is_a_note_and_the_head_is_still_diffed() {
    let repo = PolicyRepo::new();
    let run = repo.keyhole(&[
        "diff", "--base", "broken", "--head", "deny", "--format", "json",
    ]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "a broken base is what this PR may fix: {run:?}"
    );
    let report = json(&run);
    assert_eq!(report["base"]["status"], "invalid");
    assert_eq!(
        report["base"]["diagnostics"][0]["file"],
        "broken:access-groups.toml"
    );
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("does not pass `keyhole check` (2 errors)"),
        "{notes}"
    );
    assert_eq!(
        report["access_groups"]["web-prod"]["groups"],
        json!({"added": ["Web Team"], "removed": []})
    );

    let introduced = repo.keyhole(&[
        "diff", "--base", "empty", "--head", "base", "--format", "json",
    ]);
    assert_eq!(introduced.status.code(), Some(0), "{introduced:?}");
    let report = json(&introduced);
    assert_eq!(report["base"]["status"], "absent");
    assert_eq!(report["access_groups"]["db"]["change"], "created");
    assert_eq!(
        report["everywhere"]["users"]["added"],
        json!(["alice.admin"])
    );
    assert!(
        report["notes"][0]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
}

#[test]
fn detailed_exitcode_tells_access_changes_from_none() {
    let repo = PolicyRepo::new();
    let same = repo.keyhole(&[
        "diff",
        "--base",
        "deny",
        "--head",
        "deny",
        "--detailed-exitcode",
    ]);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    assert!(
        stdout(&same).contains("\nno access change\n"),
        "{}",
        stdout(&same)
    );

    let changed = repo.keyhole(&[
        "diff",
        "--base",
        "base",
        "--head",
        "deny",
        "--detailed-exitcode",
    ]);
    assert_eq!(changed.status.code(), Some(2), "{changed:?}");
    let without = repo.keyhole(&["diff", "--base", "base", "--head", "deny"]);
    assert_eq!(without.status.code(), Some(0), "{without:?}");

    // A description and the letter case of a name are no access change, though shown.
    repo.write(
        &history()[5]
            .1
            .replace("Production web servers", "Prod web")
            .replace("\"bob\"", "\"Bob\""),
    );
    let cosmetic = repo.keyhole(&["diff", "--base", "deny", "--detailed-exitcode"]);
    assert_eq!(cosmetic.status.code(), Some(0), "{cosmetic:?}");
    assert!(
        stdout(&cosmetic).contains("~ description: \"Production web servers\" -> \"Prod web\""),
        "{}",
        stdout(&cosmetic)
    );
}

#[test]
fn the_working_tree_is_the_default_head_and_the_policy_path_is_from_the_root() {
    let repo = PolicyRepo::new();
    repo.write(&format!(
        "{}\n[access_groups.extra]\nusers = [\"zed\"]\n",
        history()[5].1
    ));
    let sub = repo.path().join("docs");
    std::fs::create_dir(&sub).unwrap();

    // From a subdirectory, the default `access-groups.toml` is still the one at the root.
    let from_sub = json(&run_in(
        &sub,
        &["diff", "--base", "deny", "--format", "json"],
    ));
    assert_eq!(from_sub["head"]["revision"], Value::Null);
    assert_eq!(from_sub["head"]["path"], "access-groups.toml");
    assert_eq!(
        from_sub["access_groups"]["extra"]["users"]["added"],
        json!(["zed"])
    );
    // `../` is relative to the current directory, as in `git show REV:../PATH`.
    let relative = json(&run_in(
        &sub,
        &[
            "diff",
            "--base",
            "deny",
            "--policy",
            "../access-groups.toml",
            "--format",
            "json",
        ],
    ));
    assert_eq!(relative["access_groups"], from_sub["access_groups"]);
    // And --repo works from anywhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let with_repo = run_in(
        elsewhere.path(),
        &[
            "diff",
            "--repo",
            repo.path().to_str().unwrap(),
            "--base",
            "deny",
            "--format",
            "json",
        ],
    );
    assert_eq!(json(&with_repo)["access_groups"], from_sub["access_groups"]);

    let missing = repo.keyhole(&["diff", "--base", "deny", "--policy", "nope.toml"]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(
        stderr(&missing).contains(
            "the policy nope.toml does not exist in the working tree or at the base either"
        ),
        "{}",
        stderr(&missing)
    );
    let outside = run_in(elsewhere.path(), &["diff", "--base", "deny"]);
    assert_eq!(outside.status.code(), Some(1), "{outside:?}");
    assert!(
        stderr(&outside).contains("no git repository"),
        "{}",
        stderr(&outside)
    );
}

#[test]
fn a_shallow_clone_works_once_the_base_is_fetched() {
    let origin = PolicyRepo::new();
    git(origin.path(), &["branch", "feature", "deny"]);
    git(origin.path(), &["reset", "-q", "--hard", "base"]);
    let clones = tempfile::tempdir().unwrap();
    let url = format!("file://{}", origin.path().display());
    // What actions/checkout does: one commit of the pull request's branch, nothing else.
    git(
        clones.path(),
        &[
            "clone",
            "-q",
            "--depth=1",
            "--single-branch",
            "--branch",
            "feature",
            &url,
            "ci",
        ],
    );
    let ci = clones.path().join("ci");

    let before = run_in(&ci, &["diff", "--base", "origin/main"]);
    assert_eq!(before.status.code(), Some(1), "{before:?}");
    assert_eq!(
        stderr(&before),
        "keyhole: error: base revision origin/main is not in this clone (a shallow clone); fetch \
         it with `git fetch --depth=1 origin main:refs/remotes/origin/main`\n"
    );
    assert_eq!(stdout(&before), "");

    // Exactly the command the error gave.
    git(
        &ci,
        &[
            "fetch",
            "-q",
            "--depth=1",
            "origin",
            "main:refs/remotes/origin/main",
        ],
    );
    let after = run_in(&ci, &["diff", "--base", "origin/main", "--format", "json"]);
    assert_eq!(after.status.code(), Some(0), "{after:?}");
    let report = json(&after);
    assert_eq!(
        report["base"]["commit"],
        git(origin.path(), &["rev-parse", "base"])
    );
    assert_eq!(report["deny"]["users"]["added"], json!(["mallory"]));
}

#[test]
fn help_lists_the_options_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let help = run_in(dir.path(), &["diff", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    insta::assert_snapshot!("diff_help", stdout(&help));
}

fn company() -> Fixture {
    Fixture::new()
        .user(UserSpec::new("alice.admin"))
        .user(UserSpec::new("bob"))
        .user(UserSpec::new("carol"))
        .user(UserSpec::new("dave"))
        .user(UserSpec::new("Jane.Doe"))
        .user(UserSpec::new("mallory"))
        .user(UserSpec::new("sam.sre"))
        .user(UserSpec::new("olga.ops"))
        .group("Web Team", &["Jane.Doe", "mallory"])
        .group("SRE", &["sam.sre", "bob"])
        .group("Ops Oncall", &["olga.ops"])
        .group("Ops", &["Ops Oncall"])
}

fn person(name: &str, via: &[&str]) -> Value {
    json!({"name": name, "via": via})
}

#[test]
fn resolve_shows_who_gains_and_loses_access_and_through_what() {
    let repo = PolicyRepo::new();
    let dc = SambaDc::start(&company());
    // The deployment's own policy file is not what diff reads: it reads git.
    let deployment = Deployment::new(&dc, "[access_groups.unrelated]\nusers = [\"x\"]\n");
    let repo_dir: PathBuf = repo.path().to_path_buf();
    let run = run_keyhole(
        &deployment.config(),
        &[
            "diff",
            "--repo",
            repo_dir.to_str().unwrap(),
            "--base",
            "base",
            "--head",
            "deny",
            "--resolve",
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:#?}");
    let report = run.json();
    assert_eq!(report["resolved"], true);
    let people = |group: &str| report["access_groups"][group]["people"].clone();
    assert_eq!(
        people("web-prod"),
        json!({
            "lost": [
                {"name": "mallory", "via": ["Web Team"], "excluded": "denied"},
                person("sam.sre", &["SRE"]),
            ],
            // bob was also in SRE, but is named directly: no change for him.
            "gained": [person("carol", &[])],
        })
    );
    assert_eq!(
        people("db"),
        json!({
            "lost": [person("alice.admin", &["everywhere"]), person("dave", &[])],
            "gained": [],
        })
    );
    assert_eq!(
        people("database"),
        json!({
            "lost": [],
            "gained": [person("alice.admin", &["everywhere"]), person("dave", &[])],
        })
    );
    assert_eq!(
        people("ops"),
        json!({
            "lost": [],
            "gained": [
                person("alice.admin", &["everywhere"]),
                person("olga.ops", &["Ops", "Ops Oncall"]),
            ],
        })
    );
    assert_eq!(
        report["warnings"],
        json!(["AD user \"ghost.user\" named in the policy does not exist"])
    );

    let text = run_keyhole(
        &deployment.config(),
        &[
            "diff",
            "--repo",
            repo_dir.to_str().unwrap(),
            "--base",
            "base",
            "--head",
            "deny",
            "--resolve",
        ],
        &[],
    );
    assert_eq!(text.code, 0, "{text:#?}");
    let lines: Vec<String> = text
        .stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for expected in [
        "access groups: 1 deleted, 1 modified, 2 created; [deny] changed; 4 people lose access, 4 people gain access",
        "- mallory via Web Team (now denied)",
        "+ olga.ops via Ops > Ops Oncall",
        "- dave named directly",
    ] {
        assert!(
            lines.contains(&expected.to_owned()),
            "{expected}:\n{}",
            text.stdout
        );
    }

    // A policy whose change only moves people through [everywhere]: the access groups are
    // listed as unchanged, with their people.
    let everywhere_only = tempfile::tempdir().unwrap();
    let root = everywhere_only.path();
    git(root, &["init", "-q", "-b", "main"]);
    std::fs::write(root.join("access-groups.toml"), BASE).unwrap();
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "one"]);
    std::fs::write(
        root.join("access-groups.toml"),
        BASE.replace(
            "users = [\"alice.admin\"]",
            "users = [\"alice.admin\"]\ngroups = [\"Ops\"]",
        ),
    )
    .unwrap();
    let run = run_keyhole(
        &deployment.config(),
        &[
            "diff",
            "--repo",
            root.to_str().unwrap(),
            "--base",
            "main",
            "--resolve",
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:#?}");
    let report = run.json();
    for group in ["web-prod", "db"] {
        assert_eq!(
            report["access_groups"][group]["change"], "unchanged",
            "{report}"
        );
        assert_eq!(
            report["access_groups"][group]["people"]["gained"],
            json!([person("olga.ops", &["everywhere", "Ops", "Ops Oncall"])])
        );
    }
}
