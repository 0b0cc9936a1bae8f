//! The revocation list's format: the object every instance writes for sshd's `RevokedKeys`
//! (see [`crate::publisher::revocation`] for how the publisher decides what is on it).
//!
//! A header comment, then `TYPE BASE64 SHA256:…` per key sorted by fingerprint, then
//! `# SHA256:… …` for denied fingerprints without a key. Both sides use this module: the
//! publisher renders the list and rebuilds owner records from it when the owners object is
//! damaged; an instance parses and checks every line before sshd sees it.

use std::time::SystemTime;

use crate::bucket::index::{OwnerRecord, OwnerRecords, Owners};

/// The owner of a record rebuilt from a revocation list when the owners object was damaged: it
/// keeps the key revoked, but binds it to nobody (whoever holds it may publish it again).
pub const UNKNOWN_OWNER: &str = "keyhole:owner-unknown";

/// The first line of every list.
pub const HEADER: &str = "# keyhole revocation list: generated, do not edit";

/// Who each record says a key is published for: what the renderer needs to keep a key with its
/// owner during the retention.
pub fn owners_view(records: &OwnerRecords) -> Owners {
    records
        .iter()
        .filter(|(_, record)| record.user != UNKNOWN_OWNER)
        .map(|(fingerprint, record)| (fingerprint.clone(), record.user.clone()))
        .collect()
}

/// Records standing in for a damaged owners object: every key of the published list, ended `now`
/// (the retention starts again: the safe side), its owner unknown.
pub fn records_from_list(listed: &[Revoked], now: SystemTime) -> OwnerRecords {
    let ended = crate::bucket::signing::format_time(now);
    listed
        .iter()
        .map(|revoked| {
            let record = OwnerRecord {
                user: UNKNOWN_OWNER.to_owned(),
                key: Some(revoked.key.clone()),
                ended: Some(ended.clone()),
            };
            (revoked.fingerprint.clone(), record)
        })
        .collect()
}

/// The list's bytes: header, `TYPE BASE64 FINGERPRINT` lines, then the fingerprints without a key.
pub fn render_list<'a>(
    keys: impl Iterator<Item = (&'a str, &'a str)>,
    unenforceable: &[String],
) -> Vec<u8> {
    let mut text = format!("{HEADER}\n");
    for (fingerprint, key) in keys {
        text.push_str(&format!("{key} {fingerprint}\n"));
    }
    for fingerprint in unenforceable {
        text.push_str(&format!(
            "# {fingerprint} denied; its key was never seen, so RevokedKeys cannot name it\n"
        ));
    }
    text.into_bytes()
}

/// A line of a list, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub key_type: String,
    /// `TYPE BASE64`
    pub key: String,
    pub fingerprint: String,
}

/// Why a list cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("the revocation list does not start with {HEADER:?}")]
    Header,
    #[error("revocation list line {line}: {problem}")]
    Line { line: usize, problem: String },
}

/// Parses a list, checking every key line: the key must decode to its type, and its fingerprint
/// must be the one the line names. Comment lines are skipped. Any bad line refuses the whole list
/// (it was signed: a line that does not parse means the publisher is broken or the object is
/// not what was signed).
pub fn parse_list(bytes: &[u8]) -> Result<Vec<Revoked>, ListError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ListError::Header)?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(ListError::Header);
    }
    let mut keys = Vec::new();
    for (number, line) in lines.enumerate() {
        let number = number + 2;
        if line.starts_with('#') {
            continue;
        }
        let bad = |problem: &str| ListError::Line {
            line: number,
            problem: problem.to_owned(),
        };
        let fields: Vec<&str> = line.split(' ').collect();
        let [key_type, blob, fingerprint] = fields[..] else {
            return Err(bad("expected TYPE BASE64 FINGERPRINT"));
        };
        let key = format!("{key_type} {blob}");
        let parsed = ssh_key::PublicKey::from_openssh(&key)
            .map_err(|e| bad(&format!("not a public key: {e}")))?;
        if parsed.algorithm().as_str() != key_type {
            return Err(bad("the key does not decode to its type"));
        }
        let actual = parsed.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        if actual != fingerprint {
            return Err(bad(&format!("the key's fingerprint is {actual}")));
        }
        keys.push(Revoked {
            key_type: key_type.to_owned(),
            key,
            fingerprint: fingerprint.to_owned(),
        });
    }
    Ok(keys)
}
