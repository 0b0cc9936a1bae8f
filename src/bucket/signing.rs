//! Signatures over the index (`index.json`): the publisher signs it, instances and the publisher
//! itself verify it (SPEC.md "Signing").
//!
//! The format is OpenSSH's SSHSIG (`ssh-keygen -Y sign -n keyhole`), so an operator can check a
//! published index with stock `ssh-keygen -Y verify` and keyhole accepts signatures made that
//! way. All cryptography is the `ssh-key` crate's; this module only chooses the key type (Ed25519
//! only), the namespace ([`NAMESPACE`]) and the hash (SHA-512, what `ssh-keygen` uses), refuses
//! key files that are encrypted or unprotected, and turns failures into errors an operator can act
//! on. It also owns the `not_after` clock arithmetic (when to re-sign) and its RFC 3339 text form.
//!
//! It must never read the clock itself (callers pass `now`), never accept a signature whose
//! namespace or key differs from the expected one, and never print or log private key material.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The SSHSIG namespace of keyhole's signatures: `ssh-keygen -Y … -n keyhole`. A signature made
/// for another purpose (git commits, files) with the same key does not verify as an index.
pub const NAMESPACE: &str = "keyhole";

/// Why signing or verifying failed. Each way a signature can be wrong has its own variant, so the
/// instance's log says whether it saw a forgery, a mix-up of keys, or a broken file.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("reading signing key {}: {source}", path.display())]
    KeyFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "signing key {} is accessible by {who} (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFileUnprotected {
        path: PathBuf,
        mode: u32,
        who: &'static str,
    },
    #[error("signing key {} is not an OpenSSH private key: {reason}", path.display())]
    KeyFileFormat { path: PathBuf, reason: String },
    #[error(
        "signing key {} is encrypted; keyhole runs unattended and needs an unencrypted key \
         (`ssh-keygen -p -N '' -f {}`)",
        path.display(),
        path.display()
    )]
    KeyFileEncrypted { path: PathBuf },
    #[error(
        "signing key {} is {algorithm}; keyhole signs only with Ed25519 keys \
         (`ssh-keygen -t ed25519 -N '' -f {}`)",
        path.display(),
        path.display()
    )]
    KeyFileNotEd25519 { path: PathBuf, algorithm: String },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error(
        "the verify key is not an OpenSSH public key line (\"ssh-ed25519 AAAA… comment\"): {0}"
    )]
    VerifyKeyFormat(String),
    #[error("the verify key is {algorithm}; keyhole signatures are made with Ed25519 keys")]
    VerifyKeyNotEd25519 { algorithm: String },
    #[error("the signature is not an SSH signature (\"-----BEGIN SSH SIGNATURE-----\"): {0}")]
    SignatureFormat(String),
    #[error("the signature was made by key {signed_by}, not the expected key {expected}")]
    WrongKey { signed_by: String, expected: String },
    #[error("the signature is for namespace {found:?}, not {NAMESPACE:?}")]
    WrongNamespace { found: String },
    #[error("the signature does not match the signed content (modified after signing, or forged)")]
    BadSignature,
    #[error("not an RFC 3339 UTC time (like 2025-01-31T12:00:00Z): {value:?}: {reason}")]
    Time { value: String, reason: String },
}

/// The publisher's signing key: an unencrypted OpenSSH Ed25519 private key.
pub struct Signer {
    key: PrivateKey,
}

// By hand so that a `{:?}` in a log line can never print key material.
impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads `path`. Refuses, with an error naming the file: a key anyone but its owner (and, when
    /// the owner is someone else, its group) can access; an encrypted key; any key type but
    /// Ed25519.
    ///
    /// The permission rule is `ssh`'s and then some: like `ssh`, a key owned by the running user
    /// must not be accessible by group or others (we error rather than warn, because a leaked
    /// signing key lets anyone publish access to every server). A key owned by another user
    /// (`root:keyhole 0640`, read through the group) is accepted, as `ssh` does, but never one that
    /// others can access.
    pub fn load(path: &Path) -> Result<Signer, SigningError> {
        let read_error = |source| SigningError::KeyFileRead {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(read_error)?;
        // Permissions of the file we opened, not of whatever the path points to a moment later.
        let metadata = file.metadata().map_err(read_error)?;
        check_permissions(path, metadata.mode(), metadata.uid() == effective_uid())?;
        // Sized up front so reading does not reallocate and leave copies of the key behind.
        let capacity = usize::try_from(metadata.len())
            .unwrap_or(0)
            .saturating_add(1);
        let mut pem = String::with_capacity(capacity);
        file.read_to_string(&mut pem).map_err(read_error)?;
        let key = PrivateKey::from_openssh(&pem);
        // The PEM text holds the secret key unencrypted; do not leave it lying in freed memory.
        zeroize_string(pem);
        let key = key.map_err(|error| SigningError::KeyFileFormat {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        Signer::from_key(key, path)
    }

    fn from_key(key: PrivateKey, path: &Path) -> Result<Signer, SigningError> {
        if key.is_encrypted() {
            return Err(SigningError::KeyFileEncrypted {
                path: path.to_owned(),
            });
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(SigningError::KeyFileNotEd25519 {
                path: path.to_owned(),
                algorithm: key.algorithm().to_string(),
            });
        }
        Ok(Signer { key })
    }

    /// The armored SSHSIG signature of `message`, byte for byte what
    /// `ssh-keygen -Y sign -n keyhole` writes (Ed25519 signatures are deterministic), ending in a
    /// newline.
    pub fn sign(&self, message: &[u8]) -> Result<String, SigningError> {
        let signature = self
            .key
            .sign(NAMESPACE, HashAlg::Sha512, message)
            .map_err(|error| SigningError::Sign(error.to_string()))?;
        let mut armored = signature
            .to_pem(LineEnding::LF)
            .map_err(|error| SigningError::Sign(error.to_string()))?;
        if !armored.ends_with('\n') {
            armored.push('\n');
        }
        Ok(armored)
    }

    /// The OpenSSH one-line public key ("ssh-ed25519 AAAA… comment"), for `instance.verify_key`.
    pub fn public_key(&self) -> String {
        // Encoding an in-memory Ed25519 public key cannot fail; the fallback keeps this infallible
        // without an unwrap.
        self.key.public_key().to_openssh().unwrap_or_default()
    }
}

/// The instance's trust anchor: the publisher's Ed25519 public key from `instance.verify_key`.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: PublicKey,
}

impl Verifier {
    /// Parses an OpenSSH public key line ("ssh-ed25519 AAAA… comment"); refuses other key types.
    pub fn parse(public_key: &str) -> Result<Verifier, SigningError> {
        let key = PublicKey::from_openssh(public_key.trim())
            .map_err(|error| SigningError::VerifyKeyFormat(error.to_string()))?;
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(SigningError::VerifyKeyNotEd25519 {
                algorithm: key.algorithm().to_string(),
            });
        }
        Ok(Verifier { key })
    }

    /// Checks that `armored` is a [`NAMESPACE`] signature of exactly `message` by this key.
    pub fn verify(&self, message: &[u8], armored: &str) -> Result<(), SigningError> {
        // A stored `.sig` may have gained or lost surrounding blank lines; they carry nothing.
        let signature = SshSig::from_pem(armored.trim())
            .map_err(|error| SigningError::SignatureFormat(error.to_string()))?;
        // Checked here, before `PublicKey::verify` (which checks them too), to say which one is
        // wrong: a key mix-up and a namespace mix-up are configuration errors, not forgeries.
        if signature.public_key() != self.key.key_data() {
            let signed_by = PublicKey::from(signature.public_key().clone());
            return Err(SigningError::WrongKey {
                signed_by: signed_by.fingerprint(HashAlg::Sha256).to_string(),
                expected: self.key.fingerprint(HashAlg::Sha256).to_string(),
            });
        }
        if signature.namespace() != NAMESPACE {
            return Err(SigningError::WrongNamespace {
                found: signature.namespace().to_owned(),
            });
        }
        self.key
            .verify(NAMESPACE, message, &signature)
            .map_err(|_| SigningError::BadSignature)
    }
}

/// When a signed index must be re-signed: at or after half of its validity has passed.
///
/// `not_after - validity` is when it was signed, so that is `now >= not_after - validity / 2`.
/// Also true when `not_after` lies further ahead than a fresh signature would reach
/// (`not_after > now + validity`): `validity` was shortened since, or the clock went back, and
/// the index should not stay valid longer than the configuration says.
pub fn needs_resign(not_after: SystemTime, validity: Duration, now: SystemTime) -> bool {
    let Some(resign_at) = not_after.checked_sub(validity / 2) else {
        return true;
    };
    if now >= resign_at {
        return true;
    }
    match now.checked_add(validity) {
        Some(fresh_not_after) => not_after > fresh_not_after,
        None => false,
    }
}

/// The last second `humantime` can write (9999-12-31T23:59:59Z).
const LAST_FORMATTABLE_SECOND: u64 = 253_402_300_799;

/// RFC 3339 UTC to the second ("2025-01-31T12:00:00Z"); sub-second parts are dropped.
///
/// Times outside 1970..=9999 (which RFC 3339 and `humantime` cannot write) are clamped to the
/// nearest end: a `not_after` before 1970 stays expired, one after 9999 stays unexpired.
pub fn format_time(t: SystemTime) -> String {
    let seconds = match t.duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => since_epoch.as_secs().min(LAST_FORMATTABLE_SECOND),
        Err(_) => 0,
    };
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string()
}

/// Parses what [`format_time`] writes (fractional seconds are accepted; only UTC, `Z`).
pub fn parse_time(s: &str) -> Result<SystemTime, SigningError> {
    humantime::parse_rfc3339(s).map_err(|error| SigningError::Time {
        value: s.to_owned(),
        reason: error.to_string(),
    })
}

fn check_permissions(path: &Path, mode: u32, owned_by_us: bool) -> Result<(), SigningError> {
    let unprotected = |who| SigningError::KeyFileUnprotected {
        path: path.to_owned(),
        mode: mode & 0o7777,
        who,
    };
    if mode & 0o007 != 0 {
        return Err(unprotected("others"));
    }
    if owned_by_us && mode & 0o070 != 0 {
        return Err(unprotected("its group"));
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Overwrites the string's bytes before freeing it.
fn zeroize_string(text: String) {
    let mut bytes = text.into_bytes();
    bytes.iter_mut().for_each(|byte| {
        // A volatile write, so the compiler cannot drop stores to memory about to be freed.
        // SAFETY: `byte` is a valid, exclusive reference into `bytes`.
        unsafe { std::ptr::write_volatile(byte, 0) }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::private::{Ed25519Keypair, KeypairData};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    // Test-only keys made with `ssh-keygen`; they protect nothing.
    const ECDSA_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAaAAAABNlY2RzYS
1zaGEyLW5pc3RwMjU2AAAACG5pc3RwMjU2AAAAQQT6L7RfqMADMwz/k5N5H3GvtHvYtey5
8Xy1UyVlavDRMTAxtu2NNsqq4hh5XOB+Vby5UQmYwti2Sbv50/TGPUc9AAAAqBz412oc+N
dqAAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPovtF+owAMzDP+T
k3kfca+0e9i17LnxfLVTJWVq8NExMDG27Y02yqriGHlc4H5VvLlRCZjC2LZJu/nT9MY9Rz
0AAAAgCbB9trWjT57G0GOuieL7+ykv6pd2U9q9WUytz5f1FH4AAAANZWNkc2EtZml4dHVy
ZQECAw==
-----END OPENSSH PRIVATE KEY-----
";
    /// Ed25519, passphrase "secret".
    const ENCRYPTED_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABC1ZA26nT
DOXphuXLNvr0Z/AAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIDmjOu4mOBUr0DJ8
tH2fjkUdlzlxEA9sEap8ddvWULxfAAAAoH/UdxwHI0io1NftVvy1rUUBwG7eIBg+dFwuwH
MguC83R3WSyfeIIfekBfzCYK2SvDtZ2xes10PRRhMqL5Yi0u6jX9PrBAFuO+jyqTSvaoOY
E0HL4urUipcKLfKD6rPEky021sQSe4XZxdGxqvvMSU+K/nynqNPtXeEncB4MKCu1N7hPhC
5mTD7dQJ62vcUNbytLXxJdKwsmOX7WnVeJ1L8=
-----END OPENSSH PRIVATE KEY-----
";
    const MANIFEST: &[u8] = b"{\n  \"format\": 1,\n  \"generation\": 7\n}\n";

    fn ed25519_pem(seed: u8) -> String {
        let keypair = KeypairData::from(Ed25519Keypair::from_seed(&[seed; 32]));
        let key = PrivateKey::new(keypair, format!("test-{seed}")).unwrap();
        key.to_openssh(LineEnding::LF).unwrap().to_string()
    }

    fn key_file(dir: &tempfile::TempDir, name: &str, pem: &str, mode: u32) -> PathBuf {
        let path = dir.path().join(name);
        let mut file = File::create(&path).unwrap();
        file.write_all(pem.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn signer_from_seed(seed: u8) -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(&dir, "key", &ed25519_pem(seed), 0o600);
        let signer = Signer::load(&path).unwrap();
        (dir, signer)
    }

    #[test]
    fn a_signature_verifies_with_the_signers_public_key() {
        let (_dir, signer) = signer_from_seed(1);
        let armored = signer.sign(MANIFEST).unwrap();
        assert!(armored.starts_with("-----BEGIN SSH SIGNATURE-----\n"));
        assert!(armored.ends_with("-----END SSH SIGNATURE-----\n"));
        // ssh-keygen wraps the base64 at 70 columns.
        assert!(armored.lines().all(|line| line.len() <= 70));

        let public_key = signer.public_key();
        assert!(public_key.starts_with("ssh-ed25519 AAAA"));
        assert!(public_key.ends_with(" test-1"));
        let verifier = Verifier::parse(&public_key).unwrap();
        verifier.verify(MANIFEST, &armored).unwrap();
        // Surrounding whitespace, as a file or a TOML string may add, is not part of it.
        verifier
            .verify(MANIFEST, &format!("\n{armored}\n\n"))
            .unwrap();
    }

    #[test]
    fn a_tampered_message_is_a_bad_signature() {
        let (_dir, signer) = signer_from_seed(1);
        let armored = signer.sign(MANIFEST).unwrap();
        let verifier = Verifier::parse(&signer.public_key()).unwrap();
        let tampered = MANIFEST.replace_first(b"7", b"8");
        assert!(matches!(
            verifier.verify(&tampered, &armored),
            Err(SigningError::BadSignature)
        ));
    }

    #[test]
    fn a_signature_by_another_key_names_both_keys() {
        let (_dir, signer) = signer_from_seed(1);
        let (_other_dir, other) = signer_from_seed(2);
        let armored = other.sign(MANIFEST).unwrap();
        let error = Verifier::parse(&signer.public_key())
            .unwrap()
            .verify(MANIFEST, &armored)
            .unwrap_err();
        let SigningError::WrongKey {
            signed_by,
            expected,
        } = &error
        else {
            panic!("expected WrongKey, got {error:?}");
        };
        assert!(signed_by.starts_with("SHA256:"));
        assert_ne!(signed_by, expected);
    }

    #[test]
    fn a_signature_for_another_namespace_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pem = ed25519_pem(1);
        let key = PrivateKey::from_openssh(&pem).unwrap();
        // What `ssh-keygen -Y sign -n git` would make with the same key.
        let git_signature = key
            .sign("git", HashAlg::Sha512, MANIFEST)
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap();
        let signer = Signer::load(&key_file(&dir, "key", &pem, 0o600)).unwrap();
        let verifier = Verifier::parse(&signer.public_key()).unwrap();
        let error = verifier.verify(MANIFEST, &git_signature).unwrap_err();
        assert!(
            matches!(&error, SigningError::WrongNamespace { found } if found == "git"),
            "{error:?}"
        );
    }

    #[test]
    fn garbage_is_not_a_signature() {
        let (_dir, signer) = signer_from_seed(1);
        let verifier = Verifier::parse(&signer.public_key()).unwrap();
        for garbage in [
            "",
            "not a signature",
            "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n",
        ] {
            assert!(
                matches!(
                    verifier.verify(MANIFEST, garbage),
                    Err(SigningError::SignatureFormat(_))
                ),
                "{garbage:?}"
            );
        }
        // A valid signature with its body truncated.
        let armored = signer.sign(MANIFEST).unwrap();
        let truncated: String = armored
            .lines()
            .enumerate()
            .filter(|(index, _)| *index != 2)
            .map(|(_, line)| format!("{line}\n"))
            .collect();
        assert!(matches!(
            verifier.verify(MANIFEST, &truncated),
            Err(SigningError::SignatureFormat(_))
        ));
    }

    #[test]
    fn verify_keys_must_be_ed25519_public_key_lines() {
        assert!(matches!(
            Verifier::parse("ssh-ed25519 notbase64"),
            Err(SigningError::VerifyKeyFormat(_))
        ));
        assert!(matches!(
            Verifier::parse(""),
            Err(SigningError::VerifyKeyFormat(_))
        ));
        let ecdsa = PrivateKey::from_openssh(ECDSA_KEY).unwrap();
        let ecdsa_line = ecdsa.public_key().to_openssh().unwrap();
        let error = Verifier::parse(&ecdsa_line).unwrap_err();
        assert!(
            matches!(&error, SigningError::VerifyKeyNotEd25519 { algorithm } if algorithm == "ecdsa-sha2-nistp256"),
            "{error:?}"
        );
    }

    #[test]
    fn a_non_ed25519_key_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(&dir, "ecdsa-key", ECDSA_KEY, 0o600);
        let error = Signer::load(&path).unwrap_err();
        assert!(
            matches!(&error, SigningError::KeyFileNotEd25519 { algorithm, .. } if algorithm == "ecdsa-sha2-nistp256"),
            "{error:?}"
        );
        assert!(error.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn an_encrypted_key_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(&dir, "encrypted-key", ENCRYPTED_KEY, 0o600);
        let error = Signer::load(&path).unwrap_err();
        assert!(
            matches!(&error, SigningError::KeyFileEncrypted { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn a_file_that_is_no_key_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let public_key_line =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDmjOu4mOBUr0DJ8tH2fjkUdlzlxEA9sEap8ddvWULxf x\n";
        let path = key_file(&dir, "key.pub", public_key_line, 0o600);
        let error = Signer::load(&path).unwrap_err();
        assert!(
            matches!(&error, SigningError::KeyFileFormat { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("key.pub"));
        let missing = dir.path().join("missing");
        assert!(matches!(
            Signer::load(&missing),
            Err(SigningError::KeyFileRead { .. })
        ));
    }

    #[test]
    fn a_key_others_or_our_group_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pem = ed25519_pem(1);
        for (mode, who) in [(0o644, "others"), (0o604, "others"), (0o640, "its group")] {
            let path = key_file(&dir, &format!("key-{mode:o}"), &pem, mode);
            let error = Signer::load(&path).unwrap_err();
            assert!(
                matches!(&error, SigningError::KeyFileUnprotected { who: w, mode: m, .. } if *w == who && *m == mode),
                "{mode:o}: {error:?}"
            );
            assert!(error.to_string().contains("chmod 600"));
        }
        Signer::load(&key_file(&dir, "key-400", &pem, 0o400)).unwrap();
    }

    #[test]
    fn a_group_readable_key_owned_by_someone_else_is_accepted() {
        // root:keyhole 0640 read by the keyhole user through its group.
        let path = Path::new("/etc/keyhole/signing-key");
        check_permissions(path, 0o100640, false).unwrap();
        assert!(check_permissions(path, 0o100640, true).is_err());
        assert!(check_permissions(path, 0o100644, false).is_err());
        check_permissions(path, 0o100600, true).unwrap();
    }

    #[test]
    fn debug_output_shows_no_private_key() {
        let (_dir, signer) = signer_from_seed(1);
        let debug = format!("{signer:?}");
        assert!(debug.contains("ssh-ed25519 AAAA"));
        assert!(!debug.contains("PRIVATE"));
        let secret = PrivateKey::from_openssh(ed25519_pem(1)).unwrap();
        let secret_bytes = secret.key_data().ed25519().unwrap().private.to_bytes();
        assert!(!debug.contains(&format!("{secret_bytes:?}")));
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn re_signing_is_due_from_half_the_validity_on() {
        let validity = 7 * DAY;
        let signed_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let not_after = signed_at + validity;
        let half = validity / 2;
        assert!(!needs_resign(not_after, validity, signed_at));
        assert!(!needs_resign(
            not_after,
            validity,
            signed_at + half - Duration::from_secs(1)
        ));
        assert!(needs_resign(not_after, validity, signed_at + half));
        assert!(needs_resign(not_after, validity, not_after));
        assert!(needs_resign(not_after, validity, not_after + DAY));
    }

    #[test]
    fn re_signing_is_due_when_not_after_reaches_past_a_shortened_validity() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // Signed just now with 30 days, but the configuration now says 7.
        assert!(needs_resign(now + 30 * DAY, 7 * DAY, now));
        assert!(!needs_resign(now + 7 * DAY, 7 * DAY, now));
        assert!(needs_resign(
            now + 7 * DAY + Duration::from_secs(1),
            7 * DAY,
            now
        ));
    }

    #[test]
    fn re_signing_arithmetic_does_not_overflow_at_the_ends_of_time() {
        // Signed before time began: re-sign.
        assert!(needs_resign(UNIX_EPOCH, Duration::MAX, UNIX_EPOCH));
        // `now + validity` does not fit in a SystemTime: not "past a shortened validity".
        let validity = Duration::from_secs(20_000_000_000);
        let now = UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 - 15_000_000_000);
        let not_after = now + validity / 2 + Duration::from_secs(1);
        assert!(now.checked_add(validity).is_none());
        assert!(!needs_resign(not_after, validity, now));
        assert!(needs_resign(
            not_after,
            validity,
            now + Duration::from_secs(1)
        ));
    }

    #[test]
    fn times_round_trip_through_rfc3339_to_the_second() {
        let t = UNIX_EPOCH + Duration::from_secs(1_738_324_800);
        assert_eq!(format_time(t), "2025-01-31T12:00:00Z");
        assert_eq!(parse_time("2025-01-31T12:00:00Z").unwrap(), t);
        assert_eq!(parse_time(&format_time(t)).unwrap(), t);
        let with_nanos = t + Duration::from_nanos(999_999_999);
        assert_eq!(format_time(with_nanos), "2025-01-31T12:00:00Z");
        assert_eq!(
            parse_time("2025-01-31T12:00:00.5Z").unwrap(),
            t + Duration::from_millis(500)
        );
    }

    #[test]
    fn times_outside_what_rfc3339_can_write_are_clamped() {
        assert_eq!(
            format_time(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(1 << 40)),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn malformed_times_are_refused_with_the_value() {
        for bad in [
            "",
            "2025-01-31",
            "2025-01-31 12:00:00",
            "yesterday",
            "2025-01-31T12:00:00+02:00",
        ] {
            let error = parse_time(bad).unwrap_err();
            assert!(
                matches!(&error, SigningError::Time { value, .. } if value == bad),
                "{bad}"
            );
        }
    }

    trait ReplaceFirst {
        fn replace_first(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
    }

    impl ReplaceFirst for [u8] {
        fn replace_first(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
            let at = self
                .windows(from.len())
                .position(|window| window == from)
                .unwrap();
            [&self[..at], to, &self[at + from.len()..]].concat()
        }
    }
}
