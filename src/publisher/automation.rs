//! The keys of automation accounts (`[automation.NAME] key_files`), read from files next to the
//! policy, in the policy repository, so that a key change is a reviewed diff like any other
//! policy change.
//!
//! The files get the same validation and key policy as a home's `authorized_keys`: a line the
//! key policy drops is a problem (and, for `check`, an error at `KEYFILE:LINE:1`), the rest of
//! the file still counts. A key file that is missing or unreadable, or that resolves (through a
//! symlink) outside the policy's directory, is different: the policy repository itself is
//! broken, so `plan`/`publish` stop before writing anything (exit 78) rather than silently
//! revoking the account, and `check` reports it at the `key_files` entry's `FILE:LINE:COL`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::diagnostic::{Diagnostic, Severity};
use crate::keys::{self, AuthorizedKey, KeyPolicy};
use crate::publisher::policy::{AUTOMATION_PREFIX, Checked};

/// Every automation account's keys, by member name (`automation:NAME`), and what was wrong.
#[derive(Debug, Default)]
pub struct AutomationKeys {
    pub keys: BTreeMap<String, Vec<AuthorizedKey>>,
    /// Broken key files (errors) and dropped key lines (errors too: the CI check must fail).
    pub diagnostics: Vec<Diagnostic>,
    /// Per member, a dropped line or a broken file, worded for a plan's problems.
    pub problems: Vec<(String, String)>,
    /// Whether a key file could not be read at all.
    pub unreadable: bool,
}

/// Reads the key files of every automation account in `checked`, relative to the directory of
/// `policy_path`.
pub fn read_keys(policy_path: &Path, checked: &Checked, key_policy: &KeyPolicy) -> AutomationKeys {
    let directory = policy_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let root = directory.canonicalize().ok();
    let mut out = AutomationKeys::default();
    for name in checked.policy.automation.keys() {
        out.keys
            .insert(format!("{AUTOMATION_PREFIX}{name}"), Vec::new());
    }
    for entry in &checked.key_files {
        let member = format!("{AUTOMATION_PREFIX}{}", entry.automation);
        let path = directory.join(&entry.path);
        let at_entry = |message: String| Diagnostic {
            severity: Severity::Error,
            file: policy_path.to_path_buf(),
            line: entry.line,
            column: entry.column,
            message,
        };
        let bytes = match read_inside(&path, root.as_deref()) {
            Ok(bytes) => bytes,
            Err(why) => {
                let message = format!(
                    "key file {} of [automation.{}]: {why}",
                    entry.path, entry.automation
                );
                out.problems.push((member.clone(), message.clone()));
                out.diagnostics.push(at_entry(message));
                out.unreadable = true;
                continue;
            }
        };
        let parsed = keys::parse_authorized_keys_bytes(&bytes, key_policy);
        for dropped in parsed.dropped.iter().filter(|d| d.reason.is_problem()) {
            out.problems.push((
                member.clone(),
                format!(
                    "key file {} line {}: {}",
                    entry.path, dropped.line, dropped.reason
                ),
            ));
            out.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: path.clone(),
                line: dropped.line,
                column: 1,
                message: format!(
                    "{} (key file of [automation.{}])",
                    dropped.reason, entry.automation
                ),
            });
        }
        if parsed.keys.is_empty() && !parsed.dropped.iter().any(|d| d.reason.is_problem()) {
            out.diagnostics.push(Diagnostic {
                severity: Severity::Warning,
                file: policy_path.to_path_buf(),
                line: entry.line,
                column: entry.column,
                message: format!(
                    "key file {} of [automation.{}] holds no key",
                    entry.path, entry.automation
                ),
            });
        }
        let list = out.keys.entry(member).or_default();
        for key in parsed.keys {
            // Two files of one account naming the same key publish it once.
            if !list.iter().any(|k| k.fingerprint == key.fingerprint) {
                list.push(key);
            }
        }
    }
    out
}

/// The file's bytes, refusing one that resolves outside `root` (a symlink out of the repository).
fn read_inside(path: &Path, root: Option<&Path>) -> Result<Vec<u8>, String> {
    let real = path.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        _ => e.to_string(),
    })?;
    if let Some(root) = root
        && !real.starts_with(root)
    {
        return Err(format!(
            "resolves to {}, outside the policy's directory",
            real.display()
        ));
    }
    std::fs::read(&real).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq ci@jenkins";

    #[test]
    fn key_files_are_read_next_to_the_policy_and_problems_are_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let policy_path = dir.path().join("access-groups.toml");
        let text = "[access_groups.web]\nusers = [\"bob\"]\n\
                    [automation.jenkins]\nkey_files = [\"keys/jenkins.pub\", \"keys/gone.pub\"]\n\
                    everywhere = true\nowner = \"ci-team\"\n";
        std::fs::write(&policy_path, text).unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(
            dir.path().join("keys/jenkins.pub"),
            format!("# the CI key\n{KEY}\nssh-dss AAAAB3NzaC1kc3MAAACBAP8= old\n"),
        )
        .unwrap();
        let checked = crate::publisher::policy::parse(&policy_path, text).unwrap();
        let read = read_keys(&policy_path, &checked, &KeyPolicy::default());
        assert_eq!(read.keys["automation:jenkins"].len(), 1);
        assert!(read.unreadable);
        let lines: Vec<String> = read.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].ends_with("keys/jenkins.pub:3:1: error: invalid: unknown key type \"ssh-dss\" (key file of [automation.jenkins])")
            || lines[0].contains("keys/jenkins.pub:3:1: error:"), "{lines:?}");
        assert!(
            lines[1].contains("access-groups.toml:4:34: error: key file keys/gone.pub of [automation.jenkins]: no such file"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_symlink_out_of_the_policy_directory_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("id.pub"), KEY).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let policy_path = dir.path().join("access-groups.toml");
        std::os::unix::fs::symlink(outside.path().join("id.pub"), dir.path().join("ci.pub"))
            .unwrap();
        let text = "[access_groups.web]\nusers = [\"bob\"]\n\
                    [automation.ci]\nkey_files = [\"ci.pub\"]\naccess_groups = [\"web\"]\nowner = \"ci\"\n";
        let checked = crate::publisher::policy::parse(&policy_path, text).unwrap();
        let read = read_keys(&policy_path, &checked, &KeyPolicy::default());
        assert!(read.keys["automation:ci"].is_empty());
        assert!(read.unreadable);
        assert!(
            read.diagnostics[0]
                .message
                .contains("outside the policy's directory")
        );
    }
}
