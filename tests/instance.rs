//! The instance's refresh against a real local S3 (s3s-fs) holding a signed publish of many
//! access groups: an instance reads the index and only its own groups' files, never the
//! manifest, and still refuses everything it refused when it read the manifest (a rollback, a
//! forged or unsigned or expired index, a tampered group file).
//!
//! The bucket is written here with keyhole's own index and signer rather than by a publish from
//! AD, so these tests need no Samba DC; tests/sshd.rs covers the publisher-to-sshd path.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use keyhole::index::Index;
use keyhole::instance::{self, Cache, Layout};
use keyhole::keys::{KeyPolicy, parse_authorized_keys};
use keyhole::manifest::{FingerprintEntry, GroupEntry, Manifest};
use keyhole::render::sha256_hex;
use keyhole::settings::{InstanceSettings, S3Settings};
use keyhole::signing::{self, Signer, Verifier};
use keyhole::store::{S3Store, Timeouts};
use support::keyhole::ssh_keygen;
use support::s3::{BUCKET, S3Server};

/// Access groups in the bucket besides the two this host serves.
const OTHER_GROUPS: usize = 200;
const BOB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq bob@desk";
const CAROL: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+IR8TskynvftW3EfRyCVskOiAVP6iaiVeXwIV7bhM8 carol@host";

fn fingerprint(line: &str) -> String {
    parse_authorized_keys(line, &KeyPolicy::default()).keys[0]
        .fingerprint
        .as_str()
        .to_owned()
}

/// A bucket and the publisher's signing key; `publish` writes what a signed publish writes.
struct Bucket {
    s3: S3Server,
    signer: Signer,
    verify_key: String,
    _keys: tempfile::TempDir,
}

impl Bucket {
    fn new() -> Bucket {
        let keys = tempfile::tempdir().unwrap();
        let path = keys.path().join("signing-key");
        ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-f"], &path);
        let verify_key = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        Bucket {
            s3: S3Server::start(),
            signer: Signer::load(&path).unwrap(),
            verify_key: verify_key.trim().to_owned(),
            _keys: keys,
        }
    }

    /// Group files for web-prod (bob through Web Team, carol directly), db-prod (bob) and
    /// OTHER_GROUPS more, then the index, the manifest and its signature. Returns the sealed
    /// index.
    fn publish(&self, generation: u64, not_after: SystemTime, with_carol: bool) -> String {
        let mut web = format!(
            "# keyhole access group web-prod: generated, do not edit\n# bob via Web Team\n{BOB}\n"
        );
        if with_carol {
            web.push_str(&format!("# carol\n{CAROL}\n"));
        }
        let mut files = BTreeMap::from([
            ("web-prod".to_string(), web),
            (
                "db-prod".to_string(),
                format!("# keyhole access group db-prod: generated, do not edit\n# bob\n{BOB}\n"),
            ),
        ]);
        for n in 0..OTHER_GROUPS {
            files.insert(
                format!("team-{n:03}"),
                format!("# keyhole access group team-{n:03}: generated, do not edit\n"),
            );
        }
        let mut manifest = Manifest::empty();
        manifest.generation = generation;
        manifest.not_after = Some(signing::format_time(not_after));
        for (group, body) in &files {
            self.s3
                .put_object(&format!("ssh/{group}/authorized_keys"), body);
            manifest.groups.insert(
                group.clone(),
                GroupEntry {
                    sha256: sha256_hex(body.as_bytes()),
                    users: vec![],
                    keys: body.lines().filter(|l| !l.starts_with('#')).count(),
                    via: BTreeMap::new(),
                },
            );
        }
        manifest.fingerprints.insert(
            fingerprint(BOB),
            FingerprintEntry {
                user: "bob".into(),
                groups: vec!["db-prod".into(), "web-prod".into()],
            },
        );
        let index = Index::of(&manifest).seal(Some(&self.signer)).unwrap();
        let index = String::from_utf8(index).unwrap();
        self.s3.put_object("ssh/index.json", &index);
        let manifest = manifest.to_json();
        self.s3
            .put_object("ssh/manifest.json", std::str::from_utf8(&manifest).unwrap());
        self.s3.put_object(
            "ssh/manifest.json.sig",
            &self.signer.sign(&manifest).unwrap(),
        );
        index
    }
}

struct Host {
    store: S3Store,
    cache_dir: tempfile::TempDir,
    settings: InstanceSettings,
    verifier: Verifier,
}

impl Host {
    async fn new(bucket: &Bucket) -> Host {
        for (name, value) in bucket.s3.env() {
            // SAFETY: this binary's only test sets the same values before any thread reads them.
            unsafe { std::env::set_var(name, value) };
        }
        let s3 = S3Settings {
            bucket: BUCKET.into(),
            prefix: "ssh/".into(),
            region: Some("us-east-1".into()),
            endpoint: Some(bucket.s3.endpoint()),
            force_path_style: true,
            sse: None,
        };
        let cache_dir = tempfile::tempdir().unwrap();
        let settings = InstanceSettings {
            login_user: "ec2-user".into(),
            access_groups: vec!["web-prod".into(), "db-prod".into()],
            cache_dir: cache_dir.path().to_path_buf(),
            cache_ttl: Duration::from_secs(300),
            max_stale: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(3),
            verify_key: Some(bucket.verify_key.clone()),
            imds: None,
        };
        Host {
            store: S3Store::connect(&s3, Timeouts::PUBLISHER).await,
            cache_dir,
            settings,
            verifier: Verifier::parse(&bucket.verify_key).unwrap(),
        }
    }

    fn cache(&self) -> Cache {
        Cache::new(self.cache_dir.path())
    }

    /// One refresh; the GETs it made.
    async fn refresh(&self) -> (anyhow::Result<Index>, usize) {
        let before = self.store.counts.gets.load(Ordering::Relaxed);
        let result = instance::refresh(
            &self.store,
            &Layout {
                prefix: "ssh/".into(),
            },
            &self.cache(),
            &self.settings,
            Some(&self.verifier),
            SystemTime::now(),
        )
        .await;
        let gets = self.store.counts.gets.load(Ordering::Relaxed) - before;
        (result, gets)
    }

    fn served(&self) -> String {
        let groups = instance::cached_groups(&self.cache(), &self.settings).unwrap();
        groups
            .into_iter()
            .flat_map(|(_, cached)| cached.map(|c| String::from_utf8(c.body).unwrap()))
            .collect()
    }
}

fn refused(result: anyhow::Result<Index>, because: &str) {
    let error = format!(
        "{:#}",
        result.expect_err("the refresh should have been refused")
    );
    assert!(error.contains(because), "{because:?} not in {error:?}");
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_instance_reads_the_index_and_its_own_groups_only_and_refuses_what_does_not_check_out() {
    let bucket = Bucket::new();
    let week = SystemTime::now() + Duration::from_secs(7 * 86_400);
    let gen1 = bucket.publish(1, week, true);
    let host = Host::new(&bucket).await;

    // Cold: the index, then this host's two group files. Not the manifest, not its signature,
    // not any of the other 200 groups.
    let (index, gets) = host.refresh().await;
    assert_eq!(index.unwrap().generation, 1);
    assert_eq!(
        gets,
        1 + 2,
        "a cold refresh must read the index and 2 group files"
    );
    assert_eq!(
        files(host.cache_dir.path()),
        ["attribution", "group-db-prod", "group-web-prod", "index"]
    );
    assert!(host.served().contains(CAROL));
    let bob = host
        .cache()
        .attribution(&fingerprint(BOB))
        .unwrap()
        .unwrap();
    assert_eq!(bob.describe(), "bob (db-prod; web-prod via Web Team)");

    // Stale, nothing changed: one conditional read of the index.
    let (index, gets) = host.refresh().await;
    assert_eq!(index.unwrap().generation, 1);
    assert_eq!(gets, 1, "an unchanged index costs one request");

    // Generation 2 drops carol from web-prod: the index and web-prod only.
    bucket.publish(2, week, false);
    let (index, gets) = host.refresh().await;
    assert_eq!(index.unwrap().generation, 2);
    assert_eq!(gets, 2, "the index and the one changed group file");
    assert!(!host.served().contains(CAROL));
    assert_eq!(host.cache().attribution(&fingerprint(CAROL)).unwrap(), None);

    // Rollback: generation 1, validly signed, put back with its files.
    bucket.publish(1, week, true);
    bucket.s3.put_object("ssh/index.json", &gen1);
    refused(host.refresh().await.0, "rollback");
    assert!(!host.served().contains(CAROL), "the rollback was served");

    // Forged: generation 1's index edited to look newest, under its old signature.
    let mut envelope: serde_json::Value = serde_json::from_str(&gen1).unwrap();
    let text = envelope["index"].as_str().unwrap().to_owned();
    let forged = text.replace("\"generation\":1,", "\"generation\":99,");
    assert_ne!(forged, text);
    envelope["index"] = forged.into();
    bucket
        .s3
        .put_object("ssh/index.json", &envelope.to_string());
    refused(host.refresh().await.0, "signature does not verify");

    // Unsigned: the same content with the signature taken off.
    envelope["index"] = text.into();
    envelope["signature"] = serde_json::Value::Null;
    bucket
        .s3
        .put_object("ssh/index.json", &envelope.to_string());
    refused(host.refresh().await.0, "not signed");
    assert!(!host.served().contains(CAROL));

    // Expired: a validly signed generation 3 whose not_after has passed.
    bucket.publish(3, SystemTime::now() - Duration::from_secs(1), true);
    refused(host.refresh().await.0, "expired");
    assert!(!host.served().contains(CAROL));

    // Tampered: a current, valid index, but web-prod edited in the bucket. A fresh host (empty
    // cache) caches nothing from it.
    bucket.publish(4, week, true);
    let tampered = format!(
        "{}{CAROL}\n",
        bucket.s3.object("ssh/web-prod/authorized_keys").unwrap()
    );
    bucket
        .s3
        .put_object("ssh/web-prod/authorized_keys", &tampered);
    let fresh = Host::new(&bucket).await;
    refused(fresh.refresh().await.0, "is not the");
    assert!(fresh.cache().group("web-prod").unwrap().is_none());
    assert!(fresh.cache().index().unwrap().is_none());
}
