//! Builds the instance caches `scripts/bench instance` measures logins against (not part of
//! keyhole; run by the bench only): a signed, sealed bucket held in memory, and three instances
//! refreshed from it by keyhole's own refresh, each with a fresh cache (`cache_ttl` of 1000 h,
//! so a login never reaches for S3):
//!
//! - `big`: serves a 13,000-key group (index of 1,000 groups);
//! - `small`: serves a 10-key group (same index);
//! - `big-5000`: serves the 13,000-key group from an index of 5,000 groups.
//!
//! Usage: `bench_instance_fixture DIR` writes `DIR/{big,small,big-5000}/keyhole.toml` and
//! `DIR/fingerprints` (`big FP` and `small FP`: a key of each group to offer as `%f`).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use keyhole::bucket::group_file::block_header;
use keyhole::bucket::group_lookup::Lookup;
use keyhole::bucket::index::{Index, IndexGroup, Layout};
use keyhole::bucket::memory_store::MemoryStore;
use keyhole::bucket::signing::{self, Signer, Verifier};
use keyhole::digest::sha256_hex;
use keyhole::instance::{self, Cache};
use keyhole::settings::InstanceSettings;

const BUCKET: &str = "bench";
const PREFIX: &str = "ssh/";

/// An ed25519 public key line nobody holds, from a number.
fn key_line(n: u64) -> String {
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&hex::decode(sha256_hex(&n.to_be_bytes())).unwrap_or_default());
    format!(
        "ssh-ed25519 {} person{n}@bench",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// A group file of `keys` people with one key each, numbered from `first`.
fn group(name: &str, first: u64, keys: u64) -> String {
    let mut body = format!("# keyhole access group {name}: generated, do not edit\n");
    for n in first..first + keys {
        body.push_str(&block_header(
            &format!("person{n}"),
            &["Engineering", "Team"],
        ));
        body.push_str(&key_line(n));
        body.push('\n');
    }
    body
}

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bench_instance_fixture DIR"))?;
    let out = Path::new(&out);
    std::fs::create_dir_all(out)?;
    let key_path = out.join("signing-key");
    let key = ssh_key::PrivateKey::new(
        ssh_key::private::KeypairData::from(ssh_key::private::Ed25519Keypair::from_seed(&[7; 32])),
        "bench",
    )?;
    std::fs::write(
        &key_path,
        key.to_openssh(ssh_key::LineEnding::LF)?.as_bytes(),
    )?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    let signer = Signer::load(&key_path)?;
    let verify_key = signer.public_key();

    let big = group("big", 1_000_000, 13_000);
    let small = group("small", 2_000_000, 10);
    std::fs::write(
        out.join("fingerprints"),
        format!(
            "big {}\nsmall {}\n",
            fingerprint(&key_line(1_006_500)),
            fingerprint(&key_line(2_000_005))
        ),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (name, groups, serves) in [
        ("big", 1_000, "big"),
        ("small", 1_000, "small"),
        ("big-5000", 5_000, "big"),
    ] {
        let store = MemoryStore::default();
        let layout = Layout {
            prefix: PREFIX.into(),
        };
        let mut index = Index {
            generation: 1,
            not_after: Some(signing::format_time(
                SystemTime::now() + Duration::from_secs(30 * 86_400),
            )),
            deployment: Some(keyhole::bucket::index::deployment(BUCKET, PREFIX)),
            ..Index::empty()
        };
        let mut files = BTreeMap::from([
            ("big".to_string(), big.clone()),
            ("small".into(), small.clone()),
        ]);
        for n in 0..groups - 2 {
            files.insert(
                format!("team-{n:04}"),
                group(&format!("team-{n:04}"), 3_000_000 + n * 10, 10),
            );
        }
        let mut roots = HashMap::new();
        for (group, body) in &files {
            let sha256 = sha256_hex(body.as_bytes());
            roots.insert(sha256.clone(), Lookup::build(body.as_bytes()).root());
            store.insert(&layout.group(&index, group, &sha256), body.clone());
            index.groups.insert(
                group.clone(),
                IndexGroup {
                    sha256,
                    users: 0,
                    keys: 0,
                    seal: None,
                },
            );
        }
        keyhole::bucket::group_lookup::seal_with_roots(&mut index, &roots, &signer)?;
        let sealed = index.seal(Some(&signer))?;
        std::fs::write(
            out.join(format!("{name}-index-bytes")),
            sealed.len().to_string(),
        )?;
        store.insert(&layout.index(), sealed);

        let dir = out.join(name);
        let cache_dir = dir.join("cache");
        std::fs::create_dir_all(&cache_dir)?;
        std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o700))?;
        let settings = InstanceSettings {
            login_user: "ec2-user".into(),
            access_groups: vec![serves.into()],
            cache_dir: cache_dir.clone(),
            cache_ttl: Duration::from_secs(1000 * 3600),
            max_stale: Duration::from_secs(2000 * 3600),
            fetch_timeout: Duration::from_secs(3),
            verify_key: Some(verify_key.clone()),
            allow_unsigned: false,
            imds: None,
            revoked_keys_file: None,
        };
        let verifier = Verifier::parse(&verify_key)?;
        runtime.block_on(instance::refresh(
            &store,
            &layout,
            &keyhole::bucket::index::deployment(BUCKET, PREFIX),
            &Cache::new(&cache_dir),
            &settings,
            Some(&verifier),
            SystemTime::now(),
        ))?;
        std::fs::write(
            dir.join("keyhole.toml"),
            format!(
                "[s3]\nbucket = \"{BUCKET}\"\nprefix = \"{PREFIX}\"\nendpoint = \"http://127.0.0.1:9\"\nforce_path_style = true\nregion = \"us-east-1\"\n\n[instance]\nlogin_user = \"ec2-user\"\naccess_groups = [\"{serves}\"]\ncache_dir = \"{}\"\ncache_ttl = \"1000h\"\nmax_stale = \"2000h\"\nverify_key = \"{verify_key}\"\n",
                cache_dir.display()
            ),
        )?;
    }
    Ok(())
}

fn fingerprint(line: &str) -> String {
    keyhole::bucket::canary_line::fingerprint(line).unwrap_or_default()
}
