//! The instance's refresh against a real local S3 (s3s-fs) holding a signed publish of many
//! access groups: an instance reads the index and only its own groups' objects (never the owners
//! object, never another group's), and refuses a rollback, a forged, unsigned or expired index, a
//! different index of the generation it already holds (a publisher that lost the race, or a
//! replayed generation), and a tampered group object. It follows a bucket still in the legacy
//! layout (format 1, `{group}/authorized_keys`) and the publish that migrates it.
//!
//! The bucket is written here with keyhole's own index and signer rather than by a publish from
//! AD, so these tests need no Samba DC; tests/sshd.rs covers the publisher-to-sshd path.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::support::keyhole::ssh_keygen;
use crate::support::s3::{BUCKET, S3Server};
use keyhole::bucket::index::{
    FORMAT, Index, IndexGroup, LEGACY_FORMAT, Layout, Owners, owners_to_json,
};
use keyhole::bucket::signing::{self, Signer, Verifier};
use keyhole::bucket::store::{S3Store, Timeouts};
use keyhole::digest::sha256_hex;
use keyhole::instance::{self, Cache};
use keyhole::keys::{KeyPolicy, parse_authorized_keys};
use keyhole::settings::{InstanceSettings, S3Settings};

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

fn layout() -> Layout {
    Layout {
        prefix: "ssh/".into(),
    }
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

    /// The group files: web-prod (bob through Web Team, and carol directly when `with_carol`),
    /// db-prod (bob) and OTHER_GROUPS more.
    fn files(with_carol: bool) -> BTreeMap<String, String> {
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
        files
    }

    /// What a signed publish writes: each group's object at its content address, the owners
    /// object, then the index (format 2). Returns the sealed index.
    fn publish(&self, generation: u64, not_after: SystemTime, with_carol: bool) -> String {
        let mut index = Index {
            format: FORMAT,
            generation,
            not_after: Some(signing::format_time(not_after)),
            deployment: Some(DEPLOYMENT.into()),
            ..Index::empty()
        };
        let mut owners = Owners::from([(fingerprint(BOB), "bob".to_string())]);
        if with_carol {
            owners.insert(fingerprint(CAROL), "carol".to_string());
        }
        let owners = owners_to_json(&owners);
        let owners_sha = sha256_hex(&owners);
        self.s3.put_object(
            &layout().owners(&owners_sha),
            std::str::from_utf8(&owners).unwrap(),
        );
        index.owners = Some(owners_sha);
        self.write_groups(&mut index, with_carol);
        self.commit(&index)
    }

    /// What a signed publish of the keyhole before content addressing wrote: each group at
    /// `{group}/authorized_keys`, a format-1 index (no owners), and the manifest beside it, which
    /// instances never read. Returns the sealed index.
    fn publish_legacy(&self, generation: u64, not_after: SystemTime, with_carol: bool) -> String {
        let mut index = Index {
            format: LEGACY_FORMAT,
            generation,
            not_after: Some(signing::format_time(not_after)),
            ..Index::empty()
        };
        self.write_groups(&mut index, with_carol);
        let manifest = format!("{{\"format\":1,\"generation\":{generation}}}\n");
        self.s3.put_object("ssh/manifest.json", &manifest);
        self.s3.put_object(
            "ssh/manifest.json.sig",
            &self.signer.sign(manifest.as_bytes()).unwrap(),
        );
        self.commit(&index)
    }

    /// Writes every group's object where `index`'s format puts it and records it in `index`.
    fn write_groups(&self, index: &mut Index, with_carol: bool) {
        for (group, body) in Bucket::files(with_carol) {
            let sha256 = sha256_hex(body.as_bytes());
            self.s3
                .put_object(&layout().group(index, &group, &sha256), &body);
            let users = body
                .lines()
                .filter(|l| l.starts_with("# ") && !l.starts_with("# keyhole"))
                .count();
            let keys = body.lines().filter(|l| !l.starts_with('#')).count();
            index.groups.insert(
                group,
                IndexGroup {
                    sha256,
                    users,
                    keys,
                    seal: None,
                },
            );
        }
    }

    /// Seals `index` with the publisher's key and writes it: the commit.
    fn commit(&self, index: &Index) -> String {
        let sealed = String::from_utf8(index.seal(Some(&self.signer)).unwrap()).unwrap();
        self.s3.put_object(&layout().index(), &sealed);
        sealed
    }

    /// The key of `group`'s object in the published index.
    fn group_key(&self, group: &str) -> String {
        let index =
            Index::open(self.s3.object(&layout().index()).unwrap().as_bytes(), None).unwrap();
        let entry = &index.groups[group];
        layout().group(&index, group, &entry.sha256)
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
        crate::support::s3::export_credentials();
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
            allow_unsigned: false,
            imds: None,
            revoked_keys_file: Some(cache_dir.path().join("revoked_keys")),
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
            &layout(),
            DEPLOYMENT,
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

/// The bucket and prefix these tests publish to, as an index names them.
const DEPLOYMENT: &str = "s3://keyhole-test/ssh/";

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

    // Cold: the index, then this host's two group objects. Not the owners object, not any of
    // the other 200 groups.
    let (index, gets) = host.refresh().await;
    assert_eq!(index.unwrap().generation, 1);
    assert_eq!(
        gets,
        1 + 2,
        "a cold refresh must read the index and 2 group objects"
    );
    // One state directory behind the `current` link, nothing else but the lock and the
    // generation record.
    let names = files(host.cache_dir.path());
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(&names[..3], [".lock", "current", "generation"], "{names:?}");
    assert!(names[3].starts_with("state-"), "{names:?}");
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

    // Generation 2 drops carol from web-prod: the index and web-prod's new object only.
    let gen2 = bucket.publish(2, week, false);
    let (index, gets) = host.refresh().await;
    assert_eq!(index.unwrap().generation, 2);
    assert_eq!(gets, 2, "the index and the one changed group object");
    assert!(!host.served().contains(CAROL));
    assert_eq!(host.cache().attribution(&fingerprint(CAROL)).unwrap(), None);

    // Rollback: generation 1, validly signed, put back with its objects.
    bucket.publish(1, week, true);
    bucket.s3.put_object("ssh/index.json", &gen1);
    refused(host.refresh().await.0, "rollback");
    assert!(!host.served().contains(CAROL), "the rollback was served");

    // Another index of generation 2, validly signed, that gives carol back: what a publisher
    // that lost the race to commit generation 2 would have written. A generation is committed
    // once; the one this host holds stays.
    let other_gen2 = bucket.publish(2, week, true);
    assert_ne!(other_gen2, gen2);
    refused(host.refresh().await.0, "same generation");
    assert!(
        !host.served().contains(CAROL),
        "a second generation 2 was served"
    );
    // The same generation 2, written again (a new ETag, the same bytes), is still accepted.
    bucket.publish(2, week, false);
    bucket.s3.put_object("ssh/index.json", &gen2);
    let (index, _) = host.refresh().await;
    assert_eq!(index.unwrap().generation, 2);

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

    // Tampered: a current, valid index, but web-prod's object edited in the bucket. A fresh
    // host (empty cache) caches nothing from it.
    bucket.publish(4, week, true);
    let web = bucket.group_key("web-prod");
    assert_eq!(
        web,
        format!("ssh/web-prod/{}", web.rsplit('/').next().unwrap())
    );
    let tampered = format!("{}{CAROL}\n", bucket.s3.object(&web).unwrap());
    bucket.s3.put_object(&web, &tampered);
    let fresh = Host::new(&bucket).await;
    refused(fresh.refresh().await.0, "is not the");
    assert!(fresh.cache().group("web-prod").unwrap().is_none());
    assert!(fresh.cache().index().unwrap().is_none());
}

#[tokio::test]
async fn an_instance_follows_a_legacy_bucket_and_the_publish_that_migrates_it() {
    let bucket = Bucket::new();
    let week = SystemTime::now() + Duration::from_secs(7 * 86_400);
    bucket.publish_legacy(1, week, true);
    let host = Host::new(&bucket).await;

    // A format-1 index names each group at {group}/authorized_keys.
    let (index, gets) = host.refresh().await;
    let index = index.unwrap();
    assert_eq!((index.format, index.generation), (LEGACY_FORMAT, 1));
    assert_eq!(gets, 1 + 2);
    assert_eq!(bucket.group_key("web-prod"), "ssh/web-prod/authorized_keys");
    assert!(host.served().contains(CAROL));

    // A tampered legacy object is refused like any other.
    bucket.publish_legacy(2, week, false);
    let tampered = format!(
        "{}{CAROL}\n",
        bucket.s3.object("ssh/web-prod/authorized_keys").unwrap()
    );
    bucket
        .s3
        .put_object("ssh/web-prod/authorized_keys", &tampered);
    refused(host.refresh().await.0, "is not the");
    assert!(
        host.served().contains(CAROL),
        "the cached generation 1 stays"
    );
    bucket.publish_legacy(2, week, false);
    let (index, _) = host.refresh().await;
    assert_eq!(index.unwrap().generation, 2);
    assert!(!host.served().contains(CAROL));

    // The migrating publish: format 2, the same files at their content addresses, and the
    // legacy objects gone. Files the host holds already are not fetched again.
    for key in [
        "ssh/web-prod/authorized_keys",
        "ssh/db-prod/authorized_keys",
        "ssh/manifest.json",
        "ssh/manifest.json.sig",
    ] {
        bucket.s3.delete_object(key);
    }
    bucket.publish(3, week, false);
    let (index, gets) = host.refresh().await;
    let index = index.unwrap();
    assert_eq!((index.format, index.generation), (FORMAT, 3));
    assert_eq!(
        gets, 1,
        "the same files under new names are not fetched again"
    );
    assert!(host.served().contains(BOB) && !host.served().contains(CAROL));

    // And a change after the migration is read from its content address.
    bucket.publish(4, week, true);
    let (index, gets) = host.refresh().await;
    assert_eq!(index.unwrap().generation, 4);
    assert_eq!(gets, 2);
    assert!(host.served().contains(CAROL));
}

/// An index validly signed by the right key but published for another deployment (a signing key
/// shared by staging and production), or naming none, is refused; an instance without
/// `verify_key` serves nothing unless `allow_unsigned` says so.
#[tokio::test]
async fn an_instance_refuses_another_deployments_index_and_unsigned_set_ups_by_default() {
    let bucket = Bucket::new();
    let week = SystemTime::now() + Duration::from_secs(7 * 86_400);
    bucket.publish(1, week, true);
    let mut host = Host::new(&bucket).await;
    let (index, _) = host.refresh().await;
    let mut index = index.unwrap();

    index.generation = 2;
    index.deployment = Some("s3://keyhole-staging/ssh/".into());
    bucket.commit(&index);
    refused(
        host.refresh().await.0,
        "published for s3://keyhole-staging/ssh/",
    );
    index.deployment = None;
    bucket.commit(&index);
    refused(host.refresh().await.0, "names no deployment");

    // No verify_key: refused unless allowed, and then the unsigned index is taken.
    host.settings.verify_key = None;
    let unsigned = |host: &Host| {
        let host_settings = host.settings.clone();
        let store = host.store.clone();
        let cache = host.cache();
        async move {
            instance::refresh(
                &store,
                &layout(),
                DEPLOYMENT,
                &cache,
                &host_settings,
                None,
                SystemTime::now(),
            )
            .await
        }
    };
    refused(unsigned(&host).await, "refusing to serve an unsigned index");
    host.settings.allow_unsigned = true;
    assert_eq!(unsigned(&host).await.unwrap().generation, 2);
}

/// Refreshes are serialized by a lock in the cache directory: while another holds it, a refresh
/// waits (here until its caller's timeout) instead of racing it.
#[tokio::test]
async fn a_refresh_waits_for_the_one_holding_the_cache_lock() {
    let bucket = Bucket::new();
    let week = SystemTime::now() + Duration::from_secs(7 * 86_400);
    bucket.publish(1, week, true);
    let host = Host::new(&bucket).await;
    assert!(host.refresh().await.0.is_ok());
    let lock = std::fs::File::open(host.cache_dir.path().join(".lock")).unwrap();
    lock.lock().unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), host.refresh()).await;
    assert!(waited.is_err(), "a refresh ran while another held the lock");
    drop(lock);
    assert!(host.refresh().await.0.is_ok());
}

/// At serving time the cached files are checked against the cached, signed index (these groups
/// carry no seal): a cache file rewritten on disk, with the state's record of it, is not served.
#[tokio::test]
async fn a_cache_file_edited_on_disk_is_not_served() {
    let bucket = Bucket::new();
    let week = SystemTime::now() + Duration::from_secs(7 * 86_400);
    bucket.publish(1, week, true);
    let host = Host::new(&bucket).await;
    assert!(host.refresh().await.0.is_ok());
    let check = |host: &Host| {
        let state = host.cache().state().unwrap().unwrap();
        let expect = instance::serve::Expect {
            instance: &host.settings,
            deployment: DEPLOYMENT,
            verifier: Some(&host.verifier),
            now: SystemTime::now(),
        };
        instance::serve::serve(&state, &host.settings.access_groups, None, &expect)
            .unwrap()
            .groups
    };
    assert_eq!(check(&host), ["web-prod", "db-prod"]);

    let state = host.cache().state().unwrap().unwrap();
    let path = state.body_path("web-prod");
    let mut body = std::fs::read(&path).unwrap();
    body.extend_from_slice(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfszvdxQkh3m2q6wIUyF7P eve@evil\n");
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &body).unwrap();
    let manifest = state.dir.join("state.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        &state.manifest.groups["web-prod"].sha256,
        &keyhole::digest::sha256_hex(&body),
    );
    std::fs::write(&manifest, text).unwrap();
    // The cache itself reads it as consistent; serving refuses it.
    assert!(host.cache().group("web-prod").unwrap().is_some());
    assert_eq!(check(&host), ["db-prod"]);
}
