//! `manifest.json`: the record of what is published, written last by every publish.
//!
//! It is what `plan`, `verify`, `whois` and the safety guard compare against (instances read the
//! small `index.json` derived from it, see `index`): per access group the SHA-256 of its file,
//! its users (and the group chain that gives each access), per key fingerprint its owner and
//! groups, a generation that only ever grows, and the policy's git commit. The schema is
//! documented in the README; `format` changes when it changes incompatibly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resolve::Via;

/// The schema version written by this keyhole.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Grows by one with every publish that changes anything; instances refuse to go back.
    pub generation: u64,
    /// The policy repository's HEAD commit when published, if the policy is in a git repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_commit: Option<String>,
    /// RFC 3339; set when the manifest is signed (SPEC.md "Signing").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    pub groups: BTreeMap<String, GroupEntry>,
    pub fingerprints: BTreeMap<String, FingerprintEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// Hex SHA-256 of the group's authorized_keys object.
    pub sha256: String,
    /// Users with at least one key in the file, sorted.
    pub users: Vec<String>,
    /// Number of key lines in the file.
    pub keys: usize,
    /// For each user, the group chain that gives access (empty: named directly). Shared with
    /// the resolution when built by a run, so a big manifest does not copy every chain.
    #[serde(default)]
    pub via: BTreeMap<String, Via>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FingerprintEntry {
    pub user: String,
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("manifest.json is not a keyhole manifest: {0}")]
pub struct ManifestError(String);

impl Manifest {
    pub fn empty() -> Manifest {
        Manifest {
            format: FORMAT,
            generation: 0,
            policy_commit: None,
            not_after: None,
            groups: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|error| ManifestError(error.to_string()))?;
        if manifest.format != FORMAT {
            return Err(ManifestError(format!(
                "format {} (this keyhole reads format {FORMAT})",
                manifest.format
            )));
        }
        Ok(manifest)
    }

    /// Stable, compact JSON (one line): maps are sorted, so the same content gives the same
    /// bytes. Not pretty-printed: at 10,000 users indentation made the manifest 9.8 MB instead of
    /// 5.4 MB, and every publish run reads it (`jq .` shows it to a person).
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec(self).unwrap_or_default();
        json.push(b'\n');
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_and_unknown_formats_are_refused() {
        let mut manifest = Manifest::empty();
        manifest.generation = 7;
        manifest.groups.insert(
            "web".into(),
            GroupEntry {
                sha256: "ab".into(),
                users: vec!["bob".into()],
                keys: 1,
                via: BTreeMap::from([("bob".into(), vec!["Web Team".into()].into())]),
            },
        );
        manifest.fingerprints.insert(
            "SHA256:x".into(),
            FingerprintEntry {
                user: "bob".into(),
                groups: vec!["web".into()],
            },
        );
        let parsed = Manifest::parse(&manifest.to_json()).unwrap();
        assert_eq!(parsed, manifest);
        let future = String::from_utf8(manifest.to_json())
            .unwrap()
            .replace("\"format\":1", "\"format\":2");
        assert!(
            Manifest::parse(future.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("format 2")
        );
    }
}
