//! The audit canary: proof, per host, that a new key arrives and a revoked one is refused.
//!
//! A scheduled job (`keyhole canary run`) makes a fresh key pair (`rotate`: current becomes
//! previous), publishes the new public key, and then logs in to every instance with both keys
//! through the real OpenSSH client (`probe`): the current key must be accepted, the previous one
//! refused. That turns "we believe revocation works" into a measured fact per host, with the time
//! each took.
//!
//! How the key reaches the instances: the publisher puts the current public key, as one
//! authorized_keys line, into the signed index ([`shipped_line`]), and every instance serves it
//! to its login user after the group files. A rotation therefore rewrites one small object (the
//! index, which every refresh reads anyway) and no access group's file: with a thousand access
//! groups, a canary in each file would rewrite them all at every rotation. The line is restricted
//! so that the key can do nothing but prove it got in: `restrict` (no forwarding, no pty, no
//! agent, no X11) and a forced command that prints [`MARKER`].
//!
//! The key directory (`[canary] key_dir`, on the auditor host, mode 0700) holds `current`,
//! `previous` and their `.pub`. The private keys are only ever used by the probe's `ssh -i`; a
//! stolen one gives its holder a shell that prints the marker and exits.

#[cfg(feature = "ec2")]
pub mod ec2;
pub mod inventory;
pub mod probe;
pub mod report;
pub mod rotate;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::bucket::canary_line::{MARKER, OPTIONS, fingerprint};
use crate::bucket::group_file::any_key_policy;
use crate::keys;

/// The canary key pair files in `key_dir`: `current` or `previous`.
pub fn key_path(key_dir: &Path, which: &str) -> PathBuf {
    key_dir.join(which)
}

/// The authorized_keys line the publisher ships for `key_dir`'s current key, or `None` (with a
/// warning) when there is none yet: a publish never fails for want of a canary.
pub fn shipped_line(key_dir: &Path) -> Option<String> {
    let path = key_dir.join("current.pub");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            tracing::warn!(
                "[canary] key_dir is set but {} cannot be read ({error}): no canary is \
                 shipped (run `keyhole canary rotate`)",
                path.display()
            );
            return None;
        }
    };
    let parsed = keys::parse_authorized_keys(&text, &any_key_policy());
    let Some(key) = parsed.keys.first() else {
        tracing::warn!(
            "{} holds no public key: no canary is shipped",
            path.display()
        );
        return None;
    };
    Some(format!(
        "{OPTIONS} {} {} keyhole-canary",
        key.key_type, key.blob
    ))
}

/// The fingerprint and `TYPE BASE64` of a canary line (as shipped in the index).
pub fn shipped_key(line: &str) -> Option<(String, String)> {
    keys::parse_authorized_keys(line, &any_key_policy())
        .keys
        .pop()
        .map(|key| {
            let text = format!("{} {}", key.key_type, key.blob);
            (key.fingerprint.as_str().to_owned(), text)
        })
}

/// The canary keys a publisher keeps out of every member's file: `key_dir`'s current and
/// previous public keys and the canary line the published index ships (the one before a rotation
/// this publisher has not seen, or from a key directory that moved).
pub fn fingerprints(key_dir: Option<&Path>, shipped: Option<&str>) -> BTreeSet<String> {
    let mut found: BTreeSet<String> = shipped.and_then(fingerprint).into_iter().collect();
    for which in ["current.pub", "previous.pub"] {
        let Some(path) = key_dir.map(|dir| dir.join(which)) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(&path) {
            found.extend(
                keys::parse_authorized_keys(&text, &any_key_policy())
                    .keys
                    .into_iter()
                    .map(|key| key.fingerprint.as_str().to_owned()),
            );
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_line_is_restricted_to_printing_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(shipped_line(dir.path()), None);
        std::fs::write(
            dir.path().join("current.pub"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq auditor@host\n",
        )
        .unwrap();
        let line = shipped_line(dir.path()).unwrap();
        assert_eq!(
            line,
            "restrict,command=\"echo keyhole-canary-ok\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq keyhole-canary"
        );
        // sshd would accept the options: the key policy keyhole applies to homes keeps the line.
        let parsed = keys::parse_authorized_keys(&line, &keys::KeyPolicy::default());
        assert_eq!(parsed.keys.len(), 1, "{parsed:?}");
        assert!(fingerprint(&line).unwrap().starts_with("SHA256:"));
    }
}
