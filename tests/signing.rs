//! keyhole's manifest and index signatures against OpenSSH's own `ssh-keygen -Y`: what keyhole
//! signs, `ssh-keygen -Y verify` accepts (so operators can check a published manifest or index
//! with stock tools, following the README's recipe), and what `ssh-keygen -Y sign -n keyhole`
//! signs, keyhole's instances accept.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use keyhole::index::Index;
use keyhole::manifest::{GroupEntry, Manifest};
use keyhole::signing::{NAMESPACE, Signer, SigningError, Verifier};

const MANIFEST: &[u8] = b"{\n  \"format\": 1,\n  \"generation\": 42,\n  \"groups\": {}\n}\n";

/// A throwaway directory with an Ed25519 key pair made by `ssh-keygen`.
struct KeyPair {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl KeyPair {
    fn generate(args: &[&str]) -> KeyPair {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signing-key");
        let mut full = vec!["-q", "-C", "keyhole-signing", "-f", path_str(&key)];
        full.extend_from_slice(args);
        ssh_keygen(&full, None).success();
        KeyPair { dir, key }
    }

    fn ed25519() -> KeyPair {
        KeyPair::generate(&["-t", "ed25519", "-N", ""])
    }

    fn public_key(&self) -> String {
        let public = std::fs::read_to_string(self.key.with_extension("pub")).unwrap();
        public.trim_end().to_owned()
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// `ssh-keygen -Y verify` of `message` against `signature`, trusting this key for the
    /// `keyhole` namespace only, as an operator's allowed_signers file would.
    fn openssh_verify(&self, message: &[u8], signature: &str) -> Ran {
        let allowed = format!("keyhole namespaces=\"keyhole\" {}\n", self.public_key());
        let allowed = self.write("allowed_signers", allowed.as_bytes());
        let signature = self.write("manifest.json.sig", signature.as_bytes());
        ssh_keygen(
            &[
                "-Y",
                "verify",
                "-f",
                path_str(&allowed),
                "-I",
                "keyhole",
                "-n",
                NAMESPACE,
                "-s",
                path_str(&signature),
            ],
            Some(message),
        )
    }

    /// `ssh-keygen -Y sign -n namespace` of `message`, the armored signature it writes.
    fn openssh_sign(&self, namespace: &str, message: &[u8]) -> String {
        let message_path = self.write("manifest.json", message);
        let signature_path = message_path.with_extension("json.sig");
        let _ = std::fs::remove_file(&signature_path);
        ssh_keygen(
            &[
                "-Y",
                "sign",
                "-n",
                namespace,
                "-f",
                path_str(&self.key),
                path_str(&message_path),
            ],
            None,
        )
        .success();
        std::fs::read_to_string(signature_path).unwrap()
    }
}

struct Ran(Output);

impl Ran {
    fn success(self) -> Output {
        assert!(self.0.status.success(), "{}", self.describe());
        self.0
    }

    fn failure(self) -> Output {
        assert!(!self.0.status.success(), "{}", self.describe());
        self.0
    }

    fn describe(&self) -> String {
        format!(
            "ssh-keygen {}\nstdout: {}\nstderr: {}",
            self.0.status,
            String::from_utf8_lossy(&self.0.stdout),
            String::from_utf8_lossy(&self.0.stderr)
        )
    }
}

fn ssh_keygen(args: &[&str], stdin: Option<&[u8]>) -> Ran {
    let mut child = Command::new("ssh-keygen")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh-keygen (OpenSSH ≥ 8.1) must be installed to run these tests");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    Ran(child.wait_with_output().unwrap())
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn openssh_accepts_what_keyhole_signs_and_rejects_it_for_other_content() {
    let pair = KeyPair::ed25519();
    let signer = Signer::load(&pair.key).unwrap();
    assert_eq!(signer.public_key(), pair.public_key());
    let signature = signer.sign(MANIFEST).unwrap();

    let accepted = pair.openssh_verify(MANIFEST, &signature).success();
    let said = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        said.contains("Good \"keyhole\" signature for keyhole"),
        "{said}"
    );

    let tampered = String::from_utf8(MANIFEST.to_vec())
        .unwrap()
        .replace("42", "43");
    pair.openssh_verify(tampered.as_bytes(), &signature)
        .failure();
}

#[test]
fn openssh_accepts_the_index_signature_as_the_readme_says_to_check_it() {
    let pair = KeyPair::ed25519();
    let signer = Signer::load(&pair.key).unwrap();
    let mut manifest = Manifest::empty();
    manifest.generation = 42;
    manifest.groups.insert(
        "web-prod".into(),
        GroupEntry {
            sha256: "9b1d".into(),
            users: vec!["bob".into()],
            keys: 1,
            via: Default::default(),
        },
    );
    let sealed = Index::of(&manifest).seal(Some(&signer)).unwrap();
    let index_json = pair.write("index.json", &sealed);

    // `jq -j .index index.json > i; jq -r .signature index.json > i.sig`: the exact bytes of the
    // inner string (no newline added) and the armored signature. serde_json does what jq does,
    // so the test runs where jq is not installed; where it is, jq must agree byte for byte.
    let envelope: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
    let index = envelope["index"].as_str().unwrap().as_bytes().to_vec();
    let signature = envelope["signature"].as_str().unwrap().to_owned();
    if let Ok(jq) = Command::new("jq")
        .args(["-j", ".index"])
        .arg(&index_json)
        .output()
    {
        assert!(jq.status.success(), "{jq:?}");
        assert_eq!(jq.stdout, index, "jq -j .index gives other bytes");
    }

    let accepted = pair.openssh_verify(&index, &signature).success();
    let said = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        said.contains("Good \"keyhole\" signature for keyhole"),
        "{said}"
    );
    let mut tampered = index.clone();
    tampered.push(b'\n');
    pair.openssh_verify(&tampered, &signature).failure();
}

#[test]
fn keyhole_signs_byte_for_byte_what_openssh_signs() {
    // Ed25519 signatures are deterministic, so the same key and message give the same file.
    let pair = KeyPair::ed25519();
    let keyhole = Signer::load(&pair.key).unwrap().sign(MANIFEST).unwrap();
    assert_eq!(keyhole, pair.openssh_sign(NAMESPACE, MANIFEST));
}

#[test]
fn keyhole_accepts_what_openssh_signs_and_rejects_it_for_other_content() {
    let pair = KeyPair::ed25519();
    let verifier = Verifier::parse(&pair.public_key()).unwrap();
    let signature = pair.openssh_sign(NAMESPACE, MANIFEST);
    verifier.verify(MANIFEST, &signature).unwrap();

    let mut tampered = MANIFEST.to_vec();
    tampered.push(b' ');
    let error = verifier.verify(&tampered, &signature).unwrap_err();
    assert!(matches!(error, SigningError::BadSignature), "{error:?}");
}

#[test]
fn keyhole_refuses_openssh_signatures_for_another_namespace_or_by_another_key() {
    let pair = KeyPair::ed25519();
    let verifier = Verifier::parse(&pair.public_key()).unwrap();

    // The same key signing a git commit does not sign a manifest.
    let git = pair.openssh_sign("git", MANIFEST);
    let error = verifier.verify(MANIFEST, &git).unwrap_err();
    assert!(
        matches!(&error, SigningError::WrongNamespace { found } if found == "git"),
        "{error:?}"
    );

    let other = KeyPair::ed25519();
    let by_other = other.openssh_sign(NAMESPACE, MANIFEST);
    let error = verifier.verify(MANIFEST, &by_other).unwrap_err();
    assert!(matches!(error, SigningError::WrongKey { .. }), "{error:?}");
}

#[test]
fn keys_openssh_makes_that_keyhole_cannot_sign_with_are_refused() {
    let encrypted = KeyPair::generate(&["-t", "ed25519", "-N", "a passphrase"]);
    let error = Signer::load(&encrypted.key).unwrap_err();
    assert!(
        matches!(error, SigningError::KeyFileEncrypted { .. }),
        "{error:?}"
    );

    let ecdsa = KeyPair::generate(&["-t", "ecdsa", "-N", ""]);
    let error = Signer::load(&ecdsa.key).unwrap_err();
    assert!(
        matches!(error, SigningError::KeyFileNotEd25519 { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(path_str(&ecdsa.key)));
    let error = Verifier::parse(&ecdsa.public_key()).unwrap_err();
    assert!(
        matches!(error, SigningError::VerifyKeyNotEd25519 { .. }),
        "{error:?}"
    );
}
