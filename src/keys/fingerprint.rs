//! The `SHA256:` fingerprint that names a key everywhere in keyhole: in the owners object, in the
//! `[deny]` list, in `whois`, and in what sshd passes as `%f`.
//!
//! This module owns the textual form and its validation. It never hashes anything itself: the
//! fingerprint of a key is computed by `ssh-key`, so it is byte-for-byte what `ssh-keygen -lf`
//! prints.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use thiserror::Error;

const PREFIX: &str = "SHA256:";
/// Unpadded base64 of a 32-byte SHA-256 digest.
const DIGEST_CHARS: usize = 43;

/// A key's SHA-256 fingerprint, always in the form `SHA256:<43 characters of unpadded base64>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

/// Why a string is not a fingerprint keyhole can use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FingerprintError {
    #[error(
        "MD5 fingerprints are not accepted; use the SHA256: form (ssh-keygen -lf FILE prints it)"
    )]
    Md5,
    #[error("a fingerprint starts with \"SHA256:\"")]
    MissingPrefix,
    #[error(
        "a SHA256 fingerprint has {DIGEST_CHARS} characters after \"SHA256:\", this one has {0}"
    )]
    Length(usize),
    #[error("the part after \"SHA256:\" is not unpadded base64 of a SHA-256 digest")]
    Base64,
}

impl Fingerprint {
    /// The fingerprint of a decoded key, as `ssh-keygen -lf` computes it.
    pub(crate) fn of(key: &ssh_key::public::KeyData) -> Self {
        Self(key.fingerprint(ssh_key::HashAlg::Sha256).to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some(digest) = text.strip_prefix(PREFIX) else {
            return Err(if text.starts_with("MD5:") {
                FingerprintError::Md5
            } else {
                FingerprintError::MissingPrefix
            });
        };
        if digest.len() != DIGEST_CHARS {
            return Err(FingerprintError::Length(digest.chars().count()));
        }
        // Decoding strictly (canonical trailing bits) means one digest has one spelling, so
        // comparing fingerprints as strings is comparing digests.
        match STANDARD_NO_PAD.decode(digest) {
            Ok(bytes) if bytes.len() == 32 => Ok(Self(text.to_string())),
            _ => Err(FingerprintError::Base64),
        }
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = FingerprintError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "SHA256:WPci3U9KL/xLguet1IJeR+x95dPZPjwXSAHS1S713LE";

    #[test]
    fn parses_and_displays_the_ssh_keygen_form() {
        let fingerprint: Fingerprint = match ALICE.parse() {
            Ok(f) => f,
            Err(err) => panic!("{err}"),
        };
        assert_eq!(fingerprint.to_string(), ALICE);
        assert_eq!(fingerprint.as_str(), ALICE);
    }

    #[test]
    fn refuses_malformed_fingerprints_with_a_reason() {
        let md5 = "MD5:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89";
        assert_eq!(md5.parse::<Fingerprint>(), Err(FingerprintError::Md5));
        assert_eq!(
            "sha256:WPci3U9KL/xLguet1IJeR+x95dPZPjwXSAHS1S713LE".parse::<Fingerprint>(),
            Err(FingerprintError::MissingPrefix)
        );
        assert_eq!(
            "SHA256:WPci3U9KL".parse::<Fingerprint>(),
            Err(FingerprintError::Length(9))
        );
        assert_eq!(
            "SHA256:WPci3U9KL/xLguet1IJeR+x95dPZPjwXSAHS1S713LE=".parse::<Fingerprint>(),
            Err(FingerprintError::Length(44))
        );
        assert_eq!(
            "SHA256:WPci3U9KL/xLguet1IJeR+x95dPZPjwXSAHS1S713L!".parse::<Fingerprint>(),
            Err(FingerprintError::Base64)
        );
        // Same length, but trailing bits set: not what any SHA-256 digest encodes to.
        assert_eq!(
            "SHA256:WPci3U9KL/xLguet1IJeR+x95dPZPjwXSAHS1S713LF".parse::<Fingerprint>(),
            Err(FingerprintError::Base64)
        );
    }

    #[test]
    fn serializes_as_a_plain_string_and_validates_when_deserializing() {
        let fingerprint: Fingerprint = match ALICE.parse() {
            Ok(f) => f,
            Err(err) => panic!("{err}"),
        };
        let json = serde_json::to_string(&fingerprint).ok();
        assert_eq!(json.as_deref(), Some(format!("\"{ALICE}\"").as_str()));
        let back: Result<Fingerprint, _> = serde_json::from_str(&format!("\"{ALICE}\""));
        assert_eq!(back.ok(), Some(fingerprint));
        let bad: Result<Fingerprint, _> = serde_json::from_str("\"SHA256:nope\"");
        assert!(bad.is_err());
    }
}
