//! The tree's rules, checked on every `cargo test` (and so in CI): which side may import which.
//!
//! - `instance/` and `canary/` run on hosts and auditors that never publish: they read the
//!   bucket through `bucket/` and import nothing of `publisher/`.
//! - `bucket/` is the contract between the sides: it imports no side (`publisher/`, `instance/`,
//!   `canary/`, `ssh/`, `cmd/`).
//! - `keys/` is shared by all: it imports no side either.
//! - Only `main.rs` imports `cmd/`, and no command imports another (what two commands share
//!   lives in a library module or in `cmd/mod.rs`).
//! - `publisher/directory/`: discovery is below the LDAP client, never the other way round too.
//!
//! The check reads the source, comments stripped, for `crate::SIDE` and `super::` paths: a
//! re-export or a glob cannot hide an edge, because every file names what it uses.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its path relative to `src/`.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut stack = vec![src.join(dir)];
    while let Some(next) = stack.pop() {
        if next.is_file() {
            found.push(next);
            continue;
        }
        for entry in std::fs::read_dir(&next).unwrap() {
            stack.push(entry.unwrap().path());
        }
    }
    found
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path: PathBuf| {
            let relative = path.strip_prefix(&src).unwrap().display().to_string();
            (relative, code_of(&std::fs::read_to_string(&path).unwrap()))
        })
        .collect()
}

/// The source without `//` comments (doc links may name any module).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `file:line: text` of every line of `files` that contains one of `needles`.
fn offending(files: &[(String, String)], needles: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (file, code) in files {
        for (number, line) in code.lines().enumerate() {
            if needles.iter().any(|needle| line.contains(needle.as_str())) {
                found.push(format!("{file}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    found
}

fn paths(sides: &[&str]) -> Vec<String> {
    sides
        .iter()
        .flat_map(|side| [format!("crate::{side}::"), format!("crate::{side}::{{")])
        .chain(sides.iter().map(|side| format!("crate::{{{side}")))
        .collect()
}

#[test]
fn instance_and_canary_never_import_the_publisher() {
    for side in ["instance", "canary"] {
        let found = offending(&sources(Path::new(side)), &paths(&["publisher", "cmd"]));
        assert!(
            found.is_empty(),
            "{side}/ imports the publisher or a command:\n{found:#?}"
        );
    }
}

#[test]
fn the_bucket_and_keys_import_no_side() {
    let sides = paths(&["publisher", "instance", "canary", "ssh", "cmd"]);
    for dir in ["bucket", "keys"] {
        let found = offending(&sources(Path::new(dir)), &sides);
        assert!(found.is_empty(), "{dir}/ imports a side:\n{found:#?}");
    }
}

#[test]
fn only_main_imports_the_commands_and_no_command_imports_another() {
    let everything = sources(Path::new(""));
    let outside: Vec<_> = everything
        .iter()
        // This file names every path it looks for.
        .filter(|(file, _)| {
            !file.starts_with("cmd/") && file != "main.rs" && file != "architecture.rs"
        })
        .cloned()
        .collect();
    let found = offending(&outside, &paths(&["cmd"]));
    assert!(
        found.is_empty(),
        "only main.rs may import cmd/:\n{found:#?}"
    );

    let commands: Vec<_> = everything
        .iter()
        .filter(|(file, _)| file.starts_with("cmd/") && file != "cmd/mod.rs")
        .cloned()
        .collect();
    let names: Vec<String> = commands
        .iter()
        .map(|(file, _)| file["cmd/".len()..file.len() - ".rs".len()].to_owned())
        .collect();
    let mut needles: Vec<String> = names.iter().map(|name| format!("super::{name}")).collect();
    needles.push("crate::cmd::".to_owned());
    let found = offending(&commands, &needles);
    assert!(found.is_empty(), "a command imports another:\n{found:#?}");
}

#[test]
fn directory_discovery_sits_below_the_ldap_client() {
    let discovery = sources(Path::new("publisher/directory/discovery.rs"));
    let found = offending(
        &discovery,
        &["super::ldap".to_owned(), "directory::ldap".to_owned()],
    );
    assert!(
        found.is_empty(),
        "discovery.rs imports ldap.rs (a circle):\n{found:#?}"
    );
}

/// The check itself: a line that imports the publisher is found, a comment naming it is not.
#[test]
fn the_check_finds_an_import_and_ignores_a_comment() {
    let files = vec![(
        "instance/x.rs".to_owned(),
        code_of("//! see [`crate::publisher::plan`]\nuse crate::publisher::render::Renderer;\n"),
    )];
    assert_eq!(
        offending(&files, &paths(&["publisher"])),
        ["instance/x.rs:2: use crate::publisher::render::Renderer;"]
    );
}
