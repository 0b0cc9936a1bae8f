//! `keyhole verify` end to end: a signed publish from a real Samba AD DC to a real local S3
//! (s3s-fs), then the bucket changed behind keyhole's back (group objects tampered with, deleted,
//! planted; the owners object edited, or swapped for one that names other people under a
//! re-signed index; the index edited under its old signature, re-signed expired or without a
//! `not_after`, left unsigned, unreadable or gone) and every change reported with exit 1, while a
//! clean bucket exits 0. The signature key comes from `[signing]` (its `.pub`, or derived from
//! the private key) or from `[instance] verify_key`. A bucket still in the legacy layout (a
//! format-1 index, `{group}/authorized_keys`, the manifest beside them) verifies clean, and the
//! next publish migrates it to a bucket that verifies clean.

use std::path::PathBuf;
use std::process::Command;

use crate::support::homes::Homes;
use crate::support::keyhole::{Deployment, Run, ldap_section, run_keyhole, ssh_keygen};
use crate::support::s3::S3Server;
use crate::support::samba::{Fixture, SambaDc, UserSpec};
use keyhole::bucket::index::{FORMAT, Index, LEGACY_FORMAT, Layout};
use keyhole::digest::sha256_hex;
use serde_json::{Value, json};

const POLICY: &str = r#"
[access_groups.web-prod]
groups = ["Web Team"]

[access_groups.db-prod]
users = ["bob"]
"#;

const INDEX: &str = "ssh/index.json";

fn layout() -> Layout {
    Layout {
        prefix: "ssh/".into(),
    }
}

/// A publisher that signs, wired to a DC, an S3 server and homes with one key per person.
struct World {
    _dc: SambaDc,
    s3: S3Server,
    _homes: Homes,
    publisher: Deployment,
    signing_key: PathBuf,
}

impl World {
    fn new() -> World {
        let fixture = Fixture::new()
            .user(UserSpec::unix("bob", 22001, "/home/bob"))
            .user(UserSpec::unix("carol", 22002, "/home/carol"))
            .group("Web Team", &["bob", "carol"]);
        let dc = SambaDc::start(&fixture);
        let s3 = S3Server::start();
        let homes = Homes::new();
        for (name, uid) in [("bob", 22001), ("carol", 22002)] {
            let key = homes.key(name, "ed25519");
            homes.write(name, uid, &format!("{}\n", key.line));
        }
        let mut publisher = Deployment::new(&dc, POLICY);
        publisher.env.extend(s3.env());
        let (signing_key, _) = publisher.signing_key();
        publisher.write_settings(&format!(
            "{}{}{}\n[safety]\nlock_file = \"{}\"\n\n[signing]\nkey_file = \"{}\"\nvalidity = \"7d\"\n",
            ldap_section(&dc, &dc.ldaps_url(), &dc.ca_file()),
            s3.settings("ssh/"),
            homes.settings(),
            publisher.path("publish.lock").display(),
            signing_key.display(),
        ));
        World {
            _dc: dc,
            s3,
            _homes: homes,
            publisher,
            signing_key,
        }
    }

    fn verify(&self) -> Run {
        self.publisher.run(&["verify", "--format", "json"])
    }

    /// `verify` with settings holding only `[s3]` and `extra` (e.g. an `[instance]` section).
    fn verify_with(&self, extra: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("keyhole.toml");
        std::fs::write(&config, format!("{}{extra}", self.s3.settings("ssh/"))).unwrap();
        run_keyhole(&config, &["verify", "--format", "json"], &self.s3.env())
    }

    /// Signs `text` as `ssh-keygen -Y sign -n keyhole` with the publisher's key.
    fn openssh_sign(&self, text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let message = dir.path().join("index.json");
        std::fs::write(&message, text).unwrap();
        let mut command = Command::new("ssh-keygen");
        command.args(["-Y", "sign", "-n", "keyhole", "-f"]);
        command.arg(&self.signing_key).arg(&message);
        let signed = command.output().unwrap();
        assert!(signed.status.success(), "{signed:?}");
        std::fs::read_to_string(message.with_extension("json.sig")).unwrap()
    }

    /// The published index, opened without checking its signature.
    fn index(&self) -> Index {
        Index::open(self.object(INDEX).as_bytes(), None).unwrap()
    }

    /// The key of `group`'s object, as the published index names it.
    fn group_key(&self, group: &str) -> String {
        let index = self.index();
        layout().group(&index, group, &index.groups[group].sha256)
    }

    /// The key of the owners object the published index names.
    fn owners_key(&self) -> String {
        layout().owners(self.index().owners.as_deref().expect("an owners object"))
    }

    /// Writes an index envelope holding `text`, signed with the publisher's key by
    /// `ssh-keygen` (what a bucket writer holding the key could do).
    fn put_signed_index(&self, text: &str) {
        let envelope = json!({"index": text, "signature": self.openssh_sign(text)});
        self.s3.put_object(INDEX, &envelope.to_string());
    }

    fn object(&self, key: &str) -> String {
        self.s3
            .object(key)
            .unwrap_or_else(|| panic!("{key} is not in the bucket"))
    }
}

/// Exit 1 and exactly these findings (kind, key), in order.
fn assert_findings(run: &Run, expected: &[(&str, &str)]) -> Value {
    assert_eq!(run.code, 1, "{run:#?}");
    let report = run.json();
    assert_eq!(report["ok"], false, "{report:#}");
    let found: Vec<(&str, &str)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap(), f["key"].as_str().unwrap()))
        .collect();
    assert_eq!(found, expected, "{report:#}");
    report
}

fn assert_clean(run: &Run, generation: u64) {
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(
        run.json(),
        json!({
            "bucket": crate::support::s3::BUCKET,
            "prefix": "ssh/",
            "generation": generation,
            "signature_checked": true,
            "findings": [],
            "ok": true
        })
    );
}

#[test]
fn verify_reports_every_drift_and_every_signature_problem() {
    let world = World::new();
    let published = world.publisher.run(&["publish"]);
    assert_eq!(published.code, 0, "{published:#?}");
    let envelope: Value = serde_json::from_str(&world.object(INDEX)).unwrap();
    assert!(
        envelope["signature"].is_string(),
        "the publish did not sign: {envelope:#}"
    );
    let web_key = world.group_key("web-prod");
    let db_key = world.group_key("db-prod");
    let owners_key = world.owners_key();

    // Clean, in both forms.
    assert_clean(&world.verify(), 1);
    let text = world.publisher.run(&["verify"]);
    assert_eq!(text.code, 0, "{text:#?}");
    assert!(
        text.stdout.contains(&format!(
            "s3://{}/ssh/ matches index generation 1; signature checked",
            crate::support::s3::BUCKET
        )),
        "{}",
        text.stdout
    );

    // Tampered, deleted and planted at once: all three are reported.
    let web = world.object(&web_key);
    let db = world.object(&db_key);
    let tampered = format!(
        "{web}ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDmjOu4mOBUr0DJ8tH2fjkUdlzlxEA9sEap8ddvWULxf mallory\n"
    );
    world.s3.put_object(&web_key, &tampered);
    world.s3.delete_object(&db_key);
    world
        .s3
        .put_object("ssh/backdoor/authorized_keys", "ssh-ed25519 AAAA x\n");
    let report = assert_findings(
        &world.verify(),
        &[
            ("extra", "ssh/backdoor/authorized_keys"),
            ("missing", &db_key),
            ("modified", &web_key),
        ],
    );
    assert_eq!(report["generation"], 1);
    let modified = report["findings"][2]["detail"].as_str().unwrap();
    assert!(
        modified.contains(&sha256_hex(tampered.as_bytes()))
            && modified.contains(&sha256_hex(web.as_bytes())),
        "{modified}"
    );
    let text = world.publisher.run(&["verify"]);
    assert_eq!(text.code, 1, "{text:#?}");
    assert!(text.stdout.contains("3 problems"), "{}", text.stdout);
    for line in [
        "extra     ssh/backdoor/authorized_keys: not an object the index names".to_owned(),
        format!("missing   {db_key}: named by the index but not in the bucket"),
        format!("modified  {web_key}: SHA-256 is"),
    ] {
        assert!(text.stdout.contains(&line), "{line:?} in {}", text.stdout);
    }

    // Put back as published: clean again.
    world.s3.put_object(&web_key, &web);
    world.s3.put_object(&db_key, &db);
    world.s3.delete_object("ssh/backdoor/authorized_keys");
    assert_clean(&world.verify(), 1);

    // The owners object edited in place: bob's key said to be carol's.
    let owners = world.object(&owners_key);
    let bob_fingerprint = {
        let parsed: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&owners).unwrap();
        let (fingerprint, _) = parsed.iter().find(|(_, r)| r["user"] == "bob").unwrap();
        fingerprint.clone()
    };
    let reattributed = owners.replace(
        &format!("\"{bob_fingerprint}\":{{\"user\":\"bob\""),
        &format!("\"{bob_fingerprint}\":{{\"user\":\"carol\""),
    );
    assert_ne!(reattributed, owners);
    world.s3.put_object(&owners_key, &reattributed);
    assert_findings(&world.verify(), &[("modified", &owners_key)]);
    world.s3.put_object(&owners_key, &owners);
    assert_clean(&world.verify(), 1);

    // The same reattribution under a validly re-signed index that names it: every object is
    // what the index says, but the owners object and the group files disagree about whose
    // bob's key is, in both groups he is in. And on the publisher's host, whose head holds
    // generation 1 with other bytes, it is a fork every instance that saw the real one refuses
    // (issue 23).
    let index = world.object(INDEX);
    let text = envelope["index"].as_str().unwrap().to_owned();
    let forged_owners_key = layout().owners(&sha256_hex(reattributed.as_bytes()));
    world.s3.put_object(&forged_owners_key, &reattributed);
    let owners_sha = world.index().owners.unwrap();
    let forged = text.replace(&owners_sha, &sha256_hex(reattributed.as_bytes()));
    assert_ne!(forged, text);
    world.put_signed_index(&forged);
    let report = assert_findings(
        &world.verify(),
        &[
            ("owners_mismatch", &db_key),
            ("owners_mismatch", &web_key),
            ("index_untrusted", INDEX),
        ],
    );
    let detail = report["findings"][1]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&bob_fingerprint)
            && detail.contains("bob's block")
            && detail.contains("carol"),
        "{detail}"
    );
    world.s3.put_object(INDEX, &index);
    world.s3.delete_object(&forged_owners_key);
    assert_clean(&world.verify(), 1);

    // Gone: instances could not refresh, and nothing else can be checked.
    world.s3.delete_object(INDEX);
    let report = assert_findings(&world.verify(), &[("index_missing", INDEX)]);
    assert_eq!(report["generation"], Value::Null);
    world.s3.put_object(INDEX, &index);
    assert_clean(&world.verify(), 1);

    // The index edited, its old signature kept.
    let mut edited = envelope.clone();
    edited["index"] = text
        .replacen("\"generation\":1,", "\"generation\":9,", 1)
        .into();
    assert_ne!(edited, envelope);
    world.s3.put_object(INDEX, &edited.to_string());
    let report = assert_findings(&world.verify(), &[("index_signature_invalid", INDEX)]);
    assert_eq!(report["generation"], 9);
    assert!(
        report["findings"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("does not match the signed content"),
        "{report:#}"
    );

    // Validly signed (by ssh-keygen, with the publisher's key), but expired.
    let not_after = world.index().not_after;
    let not_after = not_after.expect("a signed index has a not_after");
    let expired = text.replacen(&not_after, "2020-01-01T00:00:00Z", 1);
    assert_ne!(expired, text);
    world.put_signed_index(&expired);
    let report = assert_findings(&world.verify(), &[("expired", INDEX)]);
    assert!(
        report["findings"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("expired at 2020-01-01T00:00:00Z"),
        "{report:#}"
    );

    // Validly signed, without a not_after: instances refuse it as they would an expired one.
    let endless = text.replacen(&format!("\"not_after\":\"{not_after}\","), "", 1);
    assert_ne!(endless, text);
    world.put_signed_index(&endless);
    assert_findings(&world.verify(), &[("not_after_invalid", INDEX)]);

    // Unsigned, while signing is configured.
    let mut unsigned = envelope.clone();
    unsigned["signature"] = Value::Null;
    world.s3.put_object(INDEX, &unsigned.to_string());
    assert_findings(&world.verify(), &[("index_signature_missing", INDEX)]);
    // Without any signature key configured the same bucket passes, and says it checked less.
    let unchecked = world.verify_with("");
    assert_eq!(unchecked.code, 0, "{unchecked:#?}");
    assert_eq!(unchecked.json()["signature_checked"], false);

    // An instance's verify_key: the right key passes, another key is a finding.
    world.s3.put_object(INDEX, &index);
    let public = std::fs::read_to_string(world.signing_key.with_extension("pub")).unwrap();
    let instance = |verify_key: &str| {
        format!(
            "\n[instance]\nlogin_user = \"ec2-user\"\naccess_groups = [\"web-prod\"]\nverify_key = \"{}\"\n",
            verify_key.trim()
        )
    };
    let good = world.verify_with(&instance(&public));
    assert_eq!(good.code, 0, "{good:#?}");
    assert_eq!(good.json()["signature_checked"], true);
    let other_key = world.publisher.path("other-key");
    ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-f"], &other_key);
    let other = std::fs::read_to_string(other_key.with_extension("pub")).unwrap();
    let report = assert_findings(
        &world.verify_with(&instance(&other)),
        &[("index_signature_invalid", INDEX)],
    );
    assert!(
        report["findings"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not the expected key"),
        "{report:#}"
    );

    // Without signing-key.pub beside it, the public half is derived from the private key.
    std::fs::rename(
        world.signing_key.with_extension("pub"),
        world.publisher.path("moved.pub"),
    )
    .unwrap();
    assert_clean(&world.verify(), 1);

    // An index that is not one: nothing under the prefix can be checked.
    world.s3.put_object(INDEX, "{\"generation\": 2}\n");
    let report = assert_findings(&world.verify(), &[("index_invalid", INDEX)]);
    assert_eq!(report["generation"], Value::Null);
}

#[test]
fn verify_without_a_bucket_to_read_is_an_error_not_a_report() {
    let mut s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyhole.toml");
    std::fs::write(&config, s3.settings("ssh/")).unwrap();

    // An empty bucket: nothing is published.
    let empty = run_keyhole(&config, &["verify", "--format", "json"], &s3.env());
    assert_findings(&empty, &[("index_missing", INDEX)]);

    // S3 down: exit 1 with the error on stderr and no report that could read as "checked".
    s3.stop();
    let down = run_keyhole(&config, &["verify", "--format", "json"], &s3.env());
    assert_eq!(down.code, 1, "{down:#?}");
    assert_eq!(down.stdout, "", "{down:#?}");
    assert!(
        down.stderr.contains("listing the bucket"),
        "{}",
        down.stderr
    );

    // A signature key that is not one is a configuration error (78), before any request.
    std::fs::write(
        &config,
        format!(
            "{}\n[instance]\nlogin_user = \"ec2-user\"\naccess_groups = [\"web-prod\"]\nverify_key = \"ssh-ed25519 notakey\"\n",
            s3.settings("ssh/")
        ),
    )
    .unwrap();
    let invalid = run_keyhole(&config, &["verify"], &s3.env());
    assert_eq!(invalid.code, 78, "{invalid:#?}");
    assert!(invalid.stderr.contains("verify_key"), "{}", invalid.stderr);

    let help = run_keyhole(&config, &["verify", "--help"], &[]);
    assert_eq!(help.code, 0, "{help:#?}");
    for needle in [
        "index_missing",
        "index_invalid",
        "index_signature_missing",
        "index_signature_invalid",
        "expired",
        "not_after_invalid",
        "missing",
        "modified",
        "owners_mismatch",
        "extra",
        "\"findings\": [{\"kind\", \"key\", \"detail\"}]",
        "Exit codes:",
        "78  configuration or policy invalid",
    ] {
        assert!(
            help.stdout.contains(needle),
            "{needle:?} in {}",
            help.stdout
        );
    }
}

#[test]
fn a_legacy_bucket_verifies_clean_and_the_first_publish_migrates_it() {
    let world = World::new();
    let published = world.publisher.run(&["publish"]);
    assert_eq!(published.code, 0, "{published:#?}");

    // The bucket as the keyhole before content addressing left it: each group at
    // {group}/authorized_keys, a format-1 index (no owners object) signed with the same key, and
    // the manifest with its signature beside it. A publisher that committed format 2 would
    // refuse it as a replay (issue 23): this one has never published here (no head).
    std::fs::remove_file(world.publisher.path("head.json")).unwrap();
    let mut index = world.index();
    for (group, entry) in &index.groups {
        let key = layout().group(&index, group, &entry.sha256);
        let body = world.object(&key);
        world.s3.delete_object(&key);
        world
            .s3
            .put_object(&format!("ssh/{group}/authorized_keys"), &body);
    }
    world.s3.delete_object(&world.owners_key());
    index.format = LEGACY_FORMAT;
    index.owners = None;
    let manifest = format!(
        "{{\"format\":1,\"generation\":{},\"groups\":{{}},\"fingerprints\":{{}}}}",
        index.generation
    );
    world.s3.put_object("ssh/manifest.json", &manifest);
    world
        .s3
        .put_object("ssh/manifest.json.sig", &world.openssh_sign(&manifest));
    world.put_signed_index(&serde_json::to_string(&index).unwrap());
    assert_eq!(world.group_key("web-prod"), "ssh/web-prod/authorized_keys");
    assert_clean(&world.verify(), 1);

    // The legacy objects are checked like any other.
    let web = world.object("ssh/web-prod/authorized_keys");
    world
        .s3
        .put_object("ssh/web-prod/authorized_keys", &format!("{web}# edited\n"));
    assert_findings(
        &world.verify(),
        &[("modified", "ssh/web-prod/authorized_keys")],
    );
    world.s3.put_object("ssh/web-prod/authorized_keys", &web);

    // The next publish migrates: a format-2 index of the next generation, the objects at their
    // content addresses with an owners object, the legacy objects gone, and a clean bucket.
    let refused = world.publisher.run(&["publish"]);
    assert_eq!(
        refused.code, 1,
        "a legacy index needs --migrate: {refused:#?}"
    );
    let migrated = world.publisher.run(&["publish", "--migrate"]);
    assert_eq!(migrated.code, 0, "{migrated:#?}");
    let index = world.index();
    assert_eq!((index.format, index.generation), (FORMAT, 2));
    assert!(index.owners.is_some());
    let keys = world.s3.keys();
    for legacy in [
        "ssh/manifest.json",
        "ssh/manifest.json.sig",
        "ssh/web-prod/authorized_keys",
        "ssh/db-prod/authorized_keys",
    ] {
        assert!(
            !keys.iter().any(|key| key == legacy),
            "{legacy} in {keys:?}"
        );
    }
    assert_eq!(world.object(&world.group_key("web-prod")), web);
    assert_clean(&world.verify(), 2);
}
