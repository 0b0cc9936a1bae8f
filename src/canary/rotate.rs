//! `keyhole canary rotate`: a fresh Ed25519 canary key pair; the current one becomes the
//! previous one (which probes then expect every instance to refuse).
//!
//! The pair is made by `ssh-keygen` (the probe needs the OpenSSH client anyway), into temporary
//! names in the key directory, and only then moved into place: an interrupted rotation leaves the
//! old `current` and `previous` as they were.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Rotates the keys in `key_dir` (created, mode 0700, when missing).
pub fn rotate(key_dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(key_dir)
        .with_context(|| format!("creating the canary key directory {}", key_dir.display()))?;
    let mode = std::fs::metadata(key_dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "the canary key directory {} is accessible by others (mode {:o}): chmod 700 it",
            key_dir.display(),
            mode & 0o7777
        );
    }
    let fresh = key_dir.join("current.new");
    for stale in [fresh.clone(), key_dir.join("current.new.pub")] {
        if stale.exists() {
            std::fs::remove_file(&stale)?;
        }
    }
    let made = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "keyhole-canary",
            "-f",
        ])
        .arg(&fresh)
        .output()
        .context("running ssh-keygen (the OpenSSH client tools are needed)")?;
    if !made.status.success() {
        bail!(
            "ssh-keygen could not make a canary key: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        );
    }
    for suffix in ["", ".pub"] {
        let current = key_dir.join(format!("current{suffix}"));
        if current.exists() {
            std::fs::rename(&current, key_dir.join(format!("previous{suffix}")))?;
        }
    }
    for suffix in ["", ".pub"] {
        std::fs::rename(
            key_dir.join(format!("current.new{suffix}")),
            key_dir.join(format!("current{suffix}")),
        )?;
    }
    tracing::info!(key_dir = %key_dir.display(), "rotated the canary key (current -> previous)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_becomes_previous_and_a_new_current_appears() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("canary");
        rotate(&keys).unwrap();
        let first = std::fs::read_to_string(keys.join("current.pub")).unwrap();
        assert!(!keys.join("previous").exists());
        rotate(&keys).unwrap();
        assert_eq!(
            std::fs::read_to_string(keys.join("previous.pub")).unwrap(),
            first
        );
        assert_ne!(
            std::fs::read_to_string(keys.join("current.pub")).unwrap(),
            first
        );
        assert_eq!(
            std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
