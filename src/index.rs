//! `index.json`: the small signed summary an instance reads instead of the whole manifest.
//!
//! The manifest names every person and every key of the company, so it grows with the company
//! (9.8 MB at 10k users); an instance only needs, for the one to three access groups it serves,
//! the SHA-256 their files must have. The index carries exactly that for every access group
//! (about 100 bytes each, nothing per person) plus the manifest's `generation`, `not_after` and
//! `policy_commit`, so an instance's fetch is proportional to what it serves.
//!
//! The object is a JSON envelope holding the index text and its signature together:
//! `{"index": "<index JSON text>", "signature": "<SSHSIG armor>" | null}`. One object, so a reader
//! can never pair a new index with an old signature (as a separate `.sig` object could between
//! two writes). The signature is the same SSHSIG as the manifest's (namespace `keyhole`) over the
//! exact bytes of the `index` string, so `jq -j .index` recovers what `ssh-keygen -Y verify`
//! checks.
//!
//! This module owns the format, sealing (serialize + sign) and opening (parse + verify). It never
//! fetches, never reads the clock (the caller checks `not_after` against its `now`), and never
//! hands out an index whose signature it was asked to check and could not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::signing::{Signer, SigningError, Verifier};

/// The schema version of the index written by this keyhole.
pub const FORMAT: u32 = 1;

/// What an instance needs to know about every access group, and nothing per person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    /// The generation of the manifest written with this index; instances refuse to go back.
    pub generation: u64,
    /// RFC 3339, the manifest's; set when signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_commit: Option<String>,
    pub groups: BTreeMap<String, IndexGroup>,
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
}

impl Index {
    /// The index of `manifest`: same generation, expiry and commit, each group's SHA-256 and
    /// counts.
    pub fn of(manifest: &Manifest) -> Index {
        Index {
            format: FORMAT,
            generation: manifest.generation,
            not_after: manifest.not_after.clone(),
            policy_commit: manifest.policy_commit.clone(),
            groups: manifest
                .groups
                .iter()
                .map(|(name, entry)| {
                    let group = IndexGroup {
                        sha256: entry.sha256.clone(),
                        users: entry.users.len(),
                        keys: entry.keys,
                    };
                    (name.clone(), group)
                })
                .collect(),
        }
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
        if index.format != FORMAT {
            return Err(IndexError::Format(index.format));
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::GroupEntry;
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

    fn manifest() -> Manifest {
        let mut manifest = Manifest::empty();
        manifest.generation = 42;
        manifest.not_after = Some("2030-01-01T00:00:00Z".into());
        manifest.policy_commit = Some("3f2c".into());
        manifest.groups.insert(
            "web-prod".into(),
            GroupEntry {
                sha256: "9b1d".into(),
                users: vec!["alice".into(), "bob".into()],
                keys: 3,
                via: BTreeMap::from([("bob".into(), vec!["Web Team".into()].into())]),
            },
        );
        manifest
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
        let index = Index::of(&manifest());
        assert_eq!(index.generation, 42);
        assert_eq!(
            index.groups["web-prod"],
            IndexGroup {
                sha256: "9b1d".into(),
                users: 2,
                keys: 3
            }
        );
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
        let sealed = Index::of(&manifest()).seal(Some(&signer)).unwrap();
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
        let by_other = Index::of(&manifest()).seal(Some(&other)).unwrap();
        assert!(matches!(
            Index::open(&by_other, Some(&verifier)),
            Err(IndexError::Signature(SigningError::WrongKey { .. }))
        ));
    }

    #[test]
    fn unknown_formats_fields_and_envelopes_are_refused() {
        let (_dir, signer) = signer_from_seed(1);
        let verifier = Verifier::parse(&signer.public_key()).unwrap();
        let mut future = Index::of(&manifest());
        future.format = 2;
        let sealed = future.seal(Some(&signer)).unwrap();
        // Validly signed, but not a format this keyhole reads.
        assert!(matches!(
            Index::open(&sealed, Some(&verifier)),
            Err(IndexError::Format(2))
        ));
        let sealed = Index::of(&manifest()).seal(None).unwrap();
        let extra = edited(&sealed, |index| {
            index.replacen('{', "{\"fingerprints\":{},", 1)
        });
        assert!(matches!(
            Index::open(&extra, None),
            Err(IndexError::Content(_))
        ));
        // A bare manifest is not an envelope.
        assert!(matches!(
            Index::open(&manifest().to_json(), None),
            Err(IndexError::Envelope(_))
        ));
    }
}
