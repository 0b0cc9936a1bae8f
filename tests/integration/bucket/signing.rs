//! keyhole's index signatures against OpenSSH's own `ssh-keygen -Y`: what keyhole signs,
//! `ssh-keygen -Y verify` accepts (so operators can check a published index with stock tools,
//! following the README's recipe), and what `ssh-keygen -Y sign -n keyhole` signs, keyhole's
//! instances accept.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use keyhole::bucket::index::{FORMAT, Index, IndexError, IndexGroup};
use keyhole::bucket::signing::{NAMESPACE, Signer, SigningError, Verifier};

/// A message to sign: the text of an index, as the envelope carries it.
const MESSAGE: &[u8] = b"{\"format\":2,\"generation\":42,\"groups\":{}}";

/// An index with one access group, as a publish would write it.
fn index() -> Index {
    let mut index = Index {
        format: FORMAT,
        generation: 42,
        owners: Some("77aa".into()),
        ..Index::empty()
    };
    index.groups.insert(
        "web-prod".into(),
        IndexGroup {
            sha256: "9b1d".into(),
            users: 1,
            keys: 1,
            seal: None,
        },
    );
    index
}

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
        let signature = self.write("index.sig", signature.as_bytes());
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
        let message_path = self.write("index", message);
        let signature_path = message_path.with_extension("sig");
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
    let signature = signer.sign(MESSAGE).unwrap();

    let accepted = pair.openssh_verify(MESSAGE, &signature).success();
    let said = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        said.contains("Good \"keyhole\" signature for keyhole"),
        "{said}"
    );

    let tampered = String::from_utf8(MESSAGE.to_vec())
        .unwrap()
        .replace("42", "43");
    assert_ne!(tampered.as_bytes(), MESSAGE);
    pair.openssh_verify(tampered.as_bytes(), &signature)
        .failure();
}

#[test]
fn openssh_accepts_the_index_signature_as_the_readme_says_to_check_it() {
    let pair = KeyPair::ed25519();
    let signer = Signer::load(&pair.key).unwrap();
    let sealed = index().seal(Some(&signer)).unwrap();
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

    // The signed text names the owners object by its SHA-256, so swapping that object is seen.
    assert!(
        String::from_utf8_lossy(&index).contains("\"owners\":\"77aa\""),
        "{}",
        String::from_utf8_lossy(&index)
    );

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
    let keyhole = Signer::load(&pair.key).unwrap().sign(MESSAGE).unwrap();
    assert_eq!(keyhole, pair.openssh_sign(NAMESPACE, MESSAGE));
}

#[test]
fn keyhole_accepts_what_openssh_signs_and_rejects_it_for_other_content() {
    let pair = KeyPair::ed25519();
    let verifier = Verifier::parse(&pair.public_key()).unwrap();
    let signature = pair.openssh_sign(NAMESPACE, MESSAGE);
    verifier.verify(MESSAGE, &signature).unwrap();

    let mut tampered = MESSAGE.to_vec();
    tampered.push(b' ');
    let error = verifier.verify(&tampered, &signature).unwrap_err();
    assert!(matches!(error, SigningError::BadSignature), "{error:?}");
}

#[test]
fn an_index_signed_by_openssh_opens_and_one_signed_for_another_namespace_does_not() {
    // What an operator who signs by hand (`ssh-keygen -Y sign -n keyhole`) puts in the envelope
    // is what an instance accepts; signed for another namespace, it is refused.
    let pair = KeyPair::ed25519();
    let verifier = Verifier::parse(&pair.public_key()).unwrap();
    let text = serde_json::to_string(&index()).unwrap();
    let envelope = |signature: String| {
        serde_json::to_vec(&serde_json::json!({"index": text, "signature": signature})).unwrap()
    };
    let signed = envelope(pair.openssh_sign(NAMESPACE, text.as_bytes()));
    assert_eq!(Index::open(&signed, Some(&verifier)).unwrap(), index());

    let git = envelope(pair.openssh_sign("git", text.as_bytes()));
    let error = Index::open(&git, Some(&verifier)).unwrap_err();
    assert!(
        matches!(
            &error,
            IndexError::Signature(SigningError::WrongNamespace { found }) if found == "git"
        ),
        "{error:?}"
    );
}

#[test]
fn keyhole_refuses_openssh_signatures_for_another_namespace_or_by_another_key() {
    let pair = KeyPair::ed25519();
    let verifier = Verifier::parse(&pair.public_key()).unwrap();

    // The same key signing a git commit does not sign an index.
    let git = pair.openssh_sign("git", MESSAGE);
    let error = verifier.verify(MESSAGE, &git).unwrap_err();
    assert!(
        matches!(&error, SigningError::WrongNamespace { found } if found == "git"),
        "{error:?}"
    );

    let other = KeyPair::ed25519();
    let by_other = other.openssh_sign(NAMESPACE, MESSAGE);
    let error = verifier.verify(MESSAGE, &by_other).unwrap_err();
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
