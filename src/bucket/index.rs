//! `index.json`: the signed record of what is published, and the one commit point of a publish.
//!
//! The index names, for every access group, the SHA-256 of its file and how many people and keys
//! it holds (about 100 bytes a group, nothing per person), plus a generation that only grows,
//! the `not_after` of its signature, the policy's commit, and the SHA-256 of the owners object.
//! Instances read it to know which group objects to fetch; the publisher reads it to decide what
//! changed. Who is in a group, and why, is in the group file itself (see `group_file`), read only
//! when that group changes: a run where nothing changed reads this one object.
//!
//! ## Layout in the bucket ([`Layout`])
//! - `{prefix}index.json`: this object; written last, with a conditional write (the commit).
//! - `{prefix}{group}/{sha256}`: each access group's authorized_keys, addressed by the SHA-256
//!   of its bytes. A publish adds new objects and never replaces one, so nothing written before
//!   the commit changes what an instance reads: a run that fails, or loses the race to another
//!   publisher, leaves instances on the last committed index and files.
//! - `{prefix}_keyhole/owners/{sha256}.json`: every published key's fingerprint and the person it
//!   was published for (so a copied public key stays with its owner, and `whois` works off an
//!   instance). `_` cannot start an access group's name, so it never collides with one.
//!
//! The object is a JSON envelope holding the index text and its signature together:
//! `{"index": "<index JSON text>", "signature": "<SSHSIG armor>" | null}`. One object, so a reader
//! can never pair a new index with an old signature. The signature is SSHSIG (namespace
//! `keyhole`) over the exact bytes of the `index` string, so `jq -j .index` recovers what
//! `ssh-keygen -Y verify` checks.
//!
//! This module owns the format, sealing (serialize + sign) and opening (parse + verify). It never
//! fetches, never reads the clock (the caller checks `not_after` against its `now`), and never
//! hands out an index whose signature it was asked to check and could not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bucket::signing::{Signer, SigningError, Verifier};

/// The schema version of the index written by this keyhole.
pub const FORMAT: u32 = 2;

/// The format keyhole wrote before group objects were addressed by content (each group at
/// `{prefix}{group}/authorized_keys`, beside a `manifest.json`). Read, never written: a publisher
/// migrates such a bucket on its first run, and an instance can follow either.
pub const LEGACY_FORMAT: u32 = 1;

/// What an instance needs to know about every access group, and nothing per person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    /// Grows by one with every publish that writes anything; instances refuse to go back.
    pub generation: u64,
    /// RFC 3339; set when signed (instances refuse the index after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_commit: Option<String>,
    pub groups: BTreeMap<String, IndexGroup>,
    /// Hex SHA-256 of the owners object (every published key's fingerprint and the person it was
    /// published for); absent in the legacy format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owners: Option<String>,
    /// Where this index was published (see [`deployment`]): readers refuse an index published for
    /// another bucket or prefix, so one signing key shared by two deployments (staging and
    /// production) cannot replay one's index into the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The audit canary's authorized_keys line (`restrict,command=…`), served by every instance
    /// to its login user (see `canary`). In the index rather than in every group's file, so a
    /// rotation rewrites one small object, signed like the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// Hex SHA-256 of the envelope bytes of the index this one replaced (`None` on a first
    /// publish), so a reader that remembers the index it trusted last (an instance's cache, the
    /// publisher's head) can tell a successor from a replay or a fork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Hex SHA-256 of the revocation list object (`{prefix}_keyhole/revoked/{sha256}`, see
    /// `revocation`): the keys instances write for sshd's `RevokedKeys`. Named here, so the list
    /// is signed with the index; absent from an index written before keyhole kept one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

/// The longest an index may be valid for: `[signing] validity` is at most this, and readers
/// refuse an index whose `not_after` lies further ahead of their clock than this (plus
/// [`CLOCK_SKEW`]). A bound on how long a captured index can be replayed.
pub const MAX_VALIDITY: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// How far a publisher's clock may run ahead of a reader's before its `not_after` counts as too
/// far ahead.
pub const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(3_600);

/// The name of a deployment, as an index records it: `s3://{bucket}/{prefix}`.
pub fn deployment(bucket: &str, prefix: &str) -> String {
    format!("s3://{bucket}/{prefix}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexGroup {
    /// Hex SHA-256 of the group's authorized_keys object.
    pub sha256: String,
    /// People with at least one key in the file.
    pub users: usize,
    /// Key lines in the file.
    pub keys: usize,
    /// The publisher's per-group seal (see `group_lookup`): the root of the file's fingerprint
    /// lookup and a signature over this group's statement, so a login checks its host's groups
    /// without verifying the whole index. Absent in an unsigned index and before keyhole made
    /// seals; an instance then checks the whole index at login instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// Where the objects are in the bucket.
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: String,
}

/// The index's object name under the prefix.
pub const INDEX_OBJECT: &str = "index.json";

impl Layout {
    pub fn index(&self) -> String {
        format!("{}{INDEX_OBJECT}", self.prefix)
    }

    /// Everything of one access group lives under this.
    pub fn group_prefix(&self, group: &str) -> String {
        format!("{}{group}/", self.prefix)
    }

    /// The object holding the file of `group` that `index` names.
    pub fn group(&self, index: &Index, group: &str, sha256: &str) -> String {
        if index.is_legacy() {
            format!("{}authorized_keys", self.group_prefix(group))
        } else {
            format!("{}{sha256}", self.group_prefix(group))
        }
    }

    pub fn owners(&self, sha256: &str) -> String {
        format!("{}{OWNERS_PREFIX}{sha256}.json", self.prefix)
    }

    /// The revocation list object the index names (see `revocation`).
    pub fn revoked(&self, sha256: &str) -> String {
        format!("{}{REVOKED_PREFIX}{sha256}", self.prefix)
    }

    /// What the legacy format kept beside the index; removed by the migrating publish.
    pub fn legacy_manifest(&self) -> [String; 2] {
        [
            format!("{}manifest.json", self.prefix),
            format!("{}manifest.json.sig", self.prefix),
        ]
    }
}

/// Where owners objects live, under the prefix.
pub const OWNERS_PREFIX: &str = "_keyhole/owners/";

/// Where revocation list objects live, under the prefix.
pub const REVOKED_PREFIX: &str = "_keyhole/revoked/";

/// Who each key is (or, within `keys.revocation_retention`, was) published for: the view of the
/// owners object that rendering and `whois` need.
pub type Owners = BTreeMap<String, String>;

/// The first owners format (fingerprint → person), still read; written only by tests of it.
pub fn owners_to_json(owners: &Owners) -> Vec<u8> {
    let mut json = serde_json::to_vec(owners).unwrap_or_default();
    json.push(b'\n');
    json
}

/// Who each key in the owners object belongs to (ended records included), in either format.
pub fn owners_from_json(bytes: &[u8]) -> Result<Owners, IndexError> {
    Ok(records_from_json(bytes)?
        .into_iter()
        .map(|(fingerprint, record)| (fingerprint, record.user))
        .collect())
}

/// One key in the owners object: whose it is, the key itself (what `RevokedKeys` needs: sshd
/// matches keys, not fingerprints), and when it stopped being published (`None`: it is
/// published now). A record with `ended` is kept for `keys.revocation_retention`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRecord {
    pub user: String,
    /// `TYPE BASE64`; absent in records carried over from the first format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// RFC 3339, when the key stopped being published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// The owners object: every key published now or within the retention, by fingerprint. Compact,
/// sorted JSON, so the same records give the same bytes (and the same object name).
pub type OwnerRecords = BTreeMap<String, OwnerRecord>;

/// A record as stored: the current form, or the first format's bare person name.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredRecord {
    Record(OwnerRecord),
    Person(String),
}

pub fn records_to_json(records: &OwnerRecords) -> Vec<u8> {
    let mut json = serde_json::to_vec(records).unwrap_or_default();
    json.push(b'\n');
    json
}

/// Reads an owners object in either format (a first-format entry becomes a record without key).
pub fn records_from_json(bytes: &[u8]) -> Result<OwnerRecords, IndexError> {
    let stored: BTreeMap<String, StoredRecord> = serde_json::from_slice(bytes)
        .map_err(|e| IndexError::Content(format!("owners object: {e}")))?;
    Ok(stored
        .into_iter()
        .map(|(fingerprint, record)| {
            let record = match record {
                StoredRecord::Record(record) => record,
                StoredRecord::Person(user) => OwnerRecord {
                    user,
                    key: None,
                    ended: None,
                },
            };
            (fingerprint, record)
        })
        .collect())
}

/// The object as stored: the index text and the signature over exactly its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    index: String,
    signature: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index.json is not a keyhole index envelope ({{\"index\", \"signature\"}}): {0}")]
    Envelope(String),
    #[error("the index is not signed, and a signature is required (instance.verify_key)")]
    Unsigned,
    #[error("the index's signature does not verify: {0}")]
    Signature(#[source] SigningError),
    #[error("the index is not a keyhole index: {0}")]
    Content(String),
    #[error("the index is format {0} (this keyhole reads format {FORMAT})")]
    Format(u32),
    #[error("signing the index: {0}")]
    Sign(#[source] SigningError),
    #[error("the index belongs to another deployment: {0}")]
    Deployment(String),
}

impl Index {
    /// An index with nothing published yet.
    pub fn empty() -> Index {
        Index {
            format: FORMAT,
            generation: 0,
            not_after: None,
            policy_commit: None,
            groups: BTreeMap::new(),
            owners: None,
            deployment: None,
            canary: None,
            previous: None,
            revoked: None,
        }
    }

    /// Refuses an index published for another deployment than `expected`. An index that names
    /// none (the legacy format) passes only when `required` is false.
    pub fn check_deployment(&self, expected: &str, required: bool) -> Result<(), IndexError> {
        match &self.deployment {
            Some(named) if named != expected => Err(IndexError::Deployment(format!(
                "it was published for {named}, not {expected} (one signing key shared by two \
                 deployments?)"
            ))),
            None if required && !self.is_legacy() => Err(IndexError::Deployment(format!(
                "it names no deployment, and this reader expects {expected}"
            ))),
            _ => Ok(()),
        }
    }

    /// Whether this index is in the legacy format, whose group objects are not addressed by
    /// content.
    pub fn is_legacy(&self) -> bool {
        self.format == LEGACY_FORMAT
    }

    /// The envelope's bytes: the index as compact JSON (maps are sorted, so the same index gives
    /// the same bytes), signed with `signer` when there is one.
    pub fn seal(&self, signer: Option<&Signer>) -> Result<Vec<u8>, IndexError> {
        let index = serde_json::to_string(self).map_err(|e| IndexError::Content(e.to_string()))?;
        let signature = signer
            .map(|signer| signer.sign(index.as_bytes()))
            .transpose()
            .map_err(IndexError::Sign)?;
        let envelope = Envelope { index, signature };
        let mut bytes = serde_json::to_vec_pretty(&envelope)
            .map_err(|e| IndexError::Envelope(e.to_string()))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parses an envelope. With `verifier`, the signature must be there and verify over the
    /// exact `index` text before that text is even parsed; without, a signature is ignored.
    pub fn open(bytes: &[u8], verifier: Option<&Verifier>) -> Result<Index, IndexError> {
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| IndexError::Envelope(e.to_string()))?;
        if let Some(verifier) = verifier {
            let signature = envelope.signature.as_deref().ok_or(IndexError::Unsigned)?;
            verifier
                .verify(envelope.index.as_bytes(), signature)
                .map_err(IndexError::Signature)?;
        }
        let index: Index = serde_json::from_str(&envelope.index)
            .map_err(|e| IndexError::Content(e.to_string()))?;
        if index.format != FORMAT && index.format != LEGACY_FORMAT {
            return Err(IndexError::Format(index.format));
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::private::{Ed25519Keypair, KeypairData};
    use ssh_key::{LineEnding, PrivateKey};
    use std::os::unix::fs::PermissionsExt;

    fn signer_from_seed(seed: u8) -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::new(
            KeypairData::from(Ed25519Keypair::from_seed(&[seed; 32])),
            "test",
        )
        .unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, key.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let signer = Signer::load(&path).unwrap();
        (dir, signer)
    }

    fn index() -> Index {
        Index {
            generation: 42,
            not_after: Some("2030-01-01T00:00:00Z".into()),
            policy_commit: Some("3f2c".into()),
            groups: BTreeMap::from([(
                "web-prod".into(),
                IndexGroup {
                    sha256: "9b1d".into(),
                    users: 2,
                    keys: 3,
                    seal: None,
                },
            )]),
            owners: Some("77aa".into()),
            ..Index::empty()
        }
    }

    /// The envelope with its `index` string edited by `edit`, the signature kept.
    fn edited(sealed: &[u8], edit: impl Fn(&str) -> String) -> Vec<u8> {
        let mut envelope: Envelope = serde_json::from_slice(sealed).unwrap();
        let before = envelope.index.clone();
        envelope.index = edit(&envelope.index);
        assert_ne!(envelope.index, before, "the edit changed nothing");
        serde_json::to_vec(&envelope).unwrap()
    }

    #[test]
    fn a_sealed_index_opens_to_the_same_index_with_or_without_a_verifier() {
        let (_dir, signer) = signer_from_seed(1);
        let verifier = Verifier::parse(&signer.public_key()).unwrap();
        let index = index();
        let sealed = index.seal(Some(&signer)).unwrap();
        assert_eq!(Index::open(&sealed, Some(&verifier)).unwrap(), index);
        assert_eq!(Index::open(&sealed, None).unwrap(), index);
        // Nothing per person is in it.
        assert!(!String::from_utf8_lossy(&sealed).contains("bob"));

        let unsigned = index.seal(None).unwrap();
        assert_eq!(Index::open(&unsigned, None).unwrap(), index);
        assert!(matches!(
            Index::open(&unsigned, Some(&verifier)),
            Err(IndexError::Unsigned)
        ));
    }

    #[test]
    fn one_changed_byte_of_the_index_text_is_refused() {
        let (_dir, signer) = signer_from_seed(1);
        let verifier = Verifier::parse(&signer.public_key()).unwrap();
        let sealed = index().seal(Some(&signer)).unwrap();
        let forged = edited(&sealed, |index| {
            index.replace("\"generation\":42", "\"generation\":43")
        });
        let error = Index::open(&forged, Some(&verifier)).unwrap_err();
        assert!(
            matches!(error, IndexError::Signature(SigningError::BadSignature)),
            "{error:?}"
        );
        // Whitespace is a byte too: the signature covers the text, not its meaning.
        let spaced = edited(&sealed, |index| format!("{index} "));
        assert!(matches!(
            Index::open(&spaced, Some(&verifier)),
            Err(IndexError::Signature(_))
        ));
        // Signed by another key.
        let (_other_dir, other) = signer_from_seed(2);
        let by_other = index().seal(Some(&other)).unwrap();
        assert!(matches!(
            Index::open(&by_other, Some(&verifier)),
            Err(IndexError::Signature(SigningError::WrongKey { .. }))
        ));
    }

    #[test]
    fn unknown_formats_fields_and_envelopes_are_refused() {
        let (_dir, signer) = signer_from_seed(1);
        let verifier = Verifier::parse(&signer.public_key()).unwrap();
        let mut future = index();
        future.format = 3;
        let sealed = future.seal(Some(&signer)).unwrap();
        // Validly signed, but not a format this keyhole reads.
        assert!(matches!(
            Index::open(&sealed, Some(&verifier)),
            Err(IndexError::Format(3))
        ));
        let sealed = index().seal(None).unwrap();
        let extra = edited(&sealed, |index| {
            index.replacen('{', "{\"fingerprints\":{},", 1)
        });
        assert!(matches!(
            Index::open(&extra, None),
            Err(IndexError::Content(_))
        ));
        // A bare index is not an envelope.
        assert!(matches!(
            Index::open(&serde_json::to_vec(&index()).unwrap(), None),
            Err(IndexError::Envelope(_))
        ));
    }
}
