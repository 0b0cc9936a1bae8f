//! A throwaway S3 server for tests: `s3s-fs` on 127.0.0.1 at a free port (see `ports`), storing objects as
//! files under a temp dir, killed on `Drop`. It checks SigV4 signatures and SHA-256 checksums and
//! honours conditional writes, like S3 itself.
//!
//! Assertions read the bucket straight from disk (s3s-fs keeps each object as a plain file at
//! `<root>/<bucket>/<key>`), so a test sees what was stored, not what keyhole says it stored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use super::ports::{Started, free_port, wait_listening};

pub const BUCKET: &str = "keyhole-test";
pub const ACCESS_KEY: &str = "keyhole-test-access";
pub const SECRET_KEY: &str = "keyhole-test-secret-key";

pub struct S3Server {
    child: Option<Child>,
    root: tempfile::TempDir,
    port: u16,
}

impl S3Server {
    /// Starts s3s-fs with an empty bucket [`BUCKET`]; panics if it does not listen within 10 s.
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("temp dir for S3");
        std::fs::create_dir(root.path().join(BUCKET)).expect("creating the bucket");
        let port = free_port();
        let mut server = S3Server {
            child: None,
            root,
            port,
        };
        server.spawn_on(true);
        server
    }

    /// Starts s3s-fs on `self.port`; on a fresh start (`any_port`), again on another port when
    /// that one was taken before s3s-fs could bind it. Returns once s3s-fs itself (not another
    /// process) listens on the port.
    fn spawn_on(&mut self, any_port: bool) {
        for _attempt in 0..5 {
            let mut child = Command::new("s3s-fs")
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(self.root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting s3s-fs (scripts/test installs it)");
            match wait_listening(&mut child, self.port, Duration::from_secs(10)) {
                Started::Listening => {
                    self.child = Some(child);
                    return;
                }
                Started::Exited(reason) if any_port => {
                    eprintln!("s3s-fs {reason}; trying another port");
                    self.port = free_port();
                }
                Started::Exited(reason) => panic!("s3s-fs {reason} (restarting on the same port)"),
            }
        }
        panic!("s3s-fs could not listen on 127.0.0.1 after 5 ports");
    }

    fn spawn(&mut self) {
        self.spawn_on(false);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (to test "S3 down"); `restart` brings it back with the same data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The `[s3]` settings section for this server with `prefix`.
    pub fn settings(&self, prefix: &str) -> String {
        format!(
            "\n[s3]\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\nforce_path_style = true\nregion = \"us-east-1\"\n",
            self.endpoint()
        )
    }

    /// The credentials keyhole finds through the standard AWS chain.
    pub fn env(&self) -> Vec<(String, String)> {
        credentials_env()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// What an instance's keyhole needs to reach this server when sshd runs it (sshd gives the
    /// command no environment): a credentials file in `dir`, owned by `owner` and private to it,
    /// and the variables that point the AWS chain at it and nowhere else.
    pub fn instance_credentials(&self, dir: &std::path::Path, owner: u32) -> Vec<(String, String)> {
        use std::os::unix::fs::{PermissionsExt, chown};
        let credentials = dir.join("aws-credentials");
        std::fs::write(
            &credentials,
            format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )
        .unwrap();
        chown(&credentials, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
        vec![
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                credentials.display().to_string(),
            ),
            ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    /// An object's bytes as stored, or `None`.
    /// What is published, seen as the manifest keyhole once wrote: the signed index's
    /// generation, each group's SHA-256, users, keys and chains (read back from its file), and
    /// every key's owner and groups. Built from `index.json` and the objects it names, so tests
    /// assert facts about access, whatever the bucket layout. `None` without an index.
    pub fn published(&self, prefix: &str) -> Option<serde_json::Value> {
        use keyhole::bucket::group_file::PublishedFile;
        use keyhole::bucket::index::{Index, Layout};
        let layout = Layout {
            prefix: prefix.to_owned(),
        };
        let envelope = self.object(&layout.index())?;
        let index = Index::open(envelope.as_bytes(), None).expect("index.json is an index");
        let mut groups = serde_json::Map::new();
        let mut fingerprints: std::collections::BTreeMap<String, (String, Vec<String>)> =
            Default::default();
        for (name, entry) in &index.groups {
            let key = layout.group(&index, name, &entry.sha256);
            let body = self
                .object(&key)
                .unwrap_or_else(|| panic!("{key} is named by the index but missing"));
            let file = PublishedFile::parse(body.as_bytes());
            let mut via = serde_json::Map::new();
            for block in &file.blocks {
                via.insert(block.user.clone(), serde_json::json!(block.via));
                for fingerprint in block.fingerprints() {
                    let (_, in_groups) = fingerprints
                        .entry(fingerprint.to_owned())
                        .or_insert_with(|| (block.user.clone(), Vec::new()));
                    in_groups.push(name.clone());
                }
            }
            groups.insert(
                name.clone(),
                serde_json::json!({
                    "sha256": entry.sha256,
                    "users": file.users().collect::<Vec<_>>(),
                    "keys": entry.keys,
                    "via": via,
                }),
            );
        }
        let fingerprints: serde_json::Map<String, serde_json::Value> = fingerprints
            .into_iter()
            .map(|(fp, (user, groups))| (fp, serde_json::json!({"user": user, "groups": groups})))
            .collect();
        Some(serde_json::json!({
            "format": index.format,
            "generation": index.generation,
            "not_after": index.not_after,
            "policy_commit": index.policy_commit,
            "groups": groups,
            "fingerprints": fingerprints,
        }))
    }

    /// The published file of access group `group` under `prefix`, as the index names it.
    pub fn group_file(&self, prefix: &str, group: &str) -> Option<String> {
        use keyhole::bucket::index::{Index, Layout};
        let layout = Layout {
            prefix: prefix.to_owned(),
        };
        let index = Index::open(self.object(&layout.index())?.as_bytes(), None).ok()?;
        let entry = index.groups.get(group)?;
        self.object(&layout.group(&index, group, &entry.sha256))
    }

    pub fn object(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.path(key)).ok()
    }

    /// Overwrites an object behind keyhole's back, as another client (or an attacker) would.
    pub fn put_object(&self, key: &str, body: &str) {
        let path = self.path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
        self.forget_recorded_etag(key);
    }

    pub fn delete_object(&self, key: &str) {
        std::fs::remove_file(self.path(key)).unwrap();
        self.forget_recorded_etag(key);
    }

    /// s3s-fs records each object's ETag and checksums in a side file when it stores it; without
    /// it, it derives them from the bytes (the MD5, as S3 does), so the object reads as new.
    fn forget_recorded_etag(&self, key: &str) {
        use base64::Engine as _;
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let side = self.root.path().join(format!(
            ".bucket-{}.object-{}.internal.json",
            encode(BUCKET),
            encode(key)
        ));
        let _ = std::fs::remove_file(side);
    }

    /// Every object key in the bucket with its modification time, sorted: compared before and
    /// after a run, it shows whether anything was written.
    pub fn objects(&self) -> Vec<(String, SystemTime)> {
        let bucket = self.root.path().join(BUCKET);
        let mut found = Vec::new();
        let mut pending = vec![bucket.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let key = path
                    .strip_prefix(&bucket)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                // s3s-fs keeps metadata beside objects; only objects count.
                if key.contains(".s3s") || key.ends_with(".metadata.json") {
                    continue;
                }
                found.push((key, entry.metadata().unwrap().modified().unwrap()));
            }
        }
        found.sort();
        found
    }

    pub fn keys(&self) -> Vec<String> {
        self.objects().into_iter().map(|(key, _)| key).collect()
    }

    /// Every object with its bytes: what "the bucket is unchanged" compares.
    pub fn contents(&self) -> BTreeMap<String, Option<String>> {
        self.keys()
            .into_iter()
            .map(|key| {
                let body = self.object(&key);
                (key, body)
            })
            .collect()
    }

    /// Every object with its bytes and modification time: unchanged means not even rewritten.
    pub fn contents_and_times(&self) -> BTreeMap<String, (Option<String>, SystemTime)> {
        self.objects()
            .into_iter()
            .map(|(key, modified)| {
                let body = self.object(&key);
                (key, (body, modified))
            })
            .collect()
    }

    /// True when some object holds `text` (wherever the publisher puts group files).
    pub fn holds(&self, text: &str) -> bool {
        self.keys()
            .iter()
            .any(|key| self.object(key).is_some_and(|body| body.contains(text)))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The credentials of every [`S3Server`] (they are constants), as keyhole finds them through the
/// standard AWS chain, and nothing else: no developer's profile, no instance role.
fn credentials_env() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        // Never let a developer's own AWS profile or an instance role leak into a test.
        ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
        ("AWS_SHARED_CREDENTIALS_FILE".into(), "/nonexistent".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

/// Puts those credentials into this process's environment, for the tests that call keyhole's
/// library in-process (`S3Store::connect` reads the AWS chain from there). Once per process,
/// before the first such test goes on (the others wait on the `Once`), and never changed after:
/// every S3Server has the same credentials. A child process a test starts inherits them, which
/// points it at these test credentials and nothing else; the tests that run keyhole pass their
/// own environment anyway.
pub fn export_credentials() {
    static EXPORTED: std::sync::Once = std::sync::Once::new();
    EXPORTED.call_once(|| {
        for (name, value) in credentials_env() {
            // SAFETY: std's environment lock serialises this with every `std::env` read and with
            // `Command`'s spawns; nothing in this test binary reads the environment from C while
            // tests run (keyhole links libgit2 and GSSAPI, used only by the binary, which runs as
            // a child process here).
            unsafe { std::env::set_var(name, value) };
        }
    });
}
