//! What `keyhole verify` checks: that what is in the bucket is what the signed index says, for
//! monitoring.
//!
//! It reads everything under `{prefix}` and reports every difference from `{prefix}index.json`
//! (an object missing, modified or unexpected; an owners object that attributes a key to someone
//! else than its group file; with a signature key, a missing or bad signature and an expired
//! index), not just the first, so one alert shows the whole extent of a drift or a tampering. Reading the bucket ([`observe`]) is kept apart from judging it
//! ([`judge`], pure, time passed in), which is where the unit tests live.
//!
//! It must never write to the bucket: it only lists and reads, so it runs with the instance's
//! read-only credentials (plus `s3:ListBucket`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::bucket::group_file::PublishedFile;
use crate::bucket::index::{Index, IndexError, Layout, OWNERS_PREFIX, owners_from_json};
use crate::bucket::signing::{self, Verifier};
use crate::bucket::store::{Fetched, ObjectStore};
use crate::digest::sha256_hex;

/// Group objects read at once: enough to hide S3's latency, few enough to stay polite.
const PARALLEL_READS: usize = 8;

/// What is wrong with one object. The names are a contract (JSON `kind`): monitoring matches on
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The signed index is past its `not_after`: instances refuse it.
    Expired,
    /// A signed index without a `not_after`, or one that is not an RFC 3339 time.
    NotAfterInvalid,
    /// An object the index names is not in the bucket.
    Missing,
    /// An object whose SHA-256 is not the one the index records.
    Modified,
    /// The owners object and a group file disagree about whose a key is.
    OwnersMismatch,
    /// An object under the prefix that the index does not account for.
    Extra,
    /// No `index.json`: nothing is published, or it was deleted.
    IndexMissing,
    /// `index.json` is not an index this keyhole reads.
    IndexInvalid,
    /// A signature key is configured but `index.json` carries no signature.
    IndexSignatureMissing,
    /// `index.json`'s signature does not verify with the configured key.
    IndexSignatureInvalid,
    /// The index is valid but not one an instance would take as current: another deployment's,
    /// the legacy format after format 2, a `not_after` too far ahead, or older than (or a fork
    /// of) what this host trusted last (the publisher's head, an instance's cache).
    IndexUntrusted,
}

impl FindingKind {
    fn name(self) -> &'static str {
        match self {
            FindingKind::Expired => "expired",
            FindingKind::NotAfterInvalid => "not_after_invalid",
            FindingKind::Missing => "missing",
            FindingKind::Modified => "modified",
            FindingKind::OwnersMismatch => "owners_mismatch",
            FindingKind::Extra => "extra",
            FindingKind::IndexMissing => "index_missing",
            FindingKind::IndexInvalid => "index_invalid",
            FindingKind::IndexSignatureMissing => "index_signature_missing",
            FindingKind::IndexSignatureInvalid => "index_signature_invalid",
            FindingKind::IndexUntrusted => "index_untrusted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// The full object key the finding is about.
    pub key: String,
    pub detail: String,
}

/// The outcome of one verification; its JSON form is the `--format json` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub bucket: String,
    pub prefix: String,
    /// The index's generation; `null` when there is no readable index.
    pub generation: Option<u64>,
    /// True when a signature key was configured, so the signature and expiry were checked.
    pub signature_checked: bool,
    /// Sorted by key, then kind.
    pub findings: Vec<Finding>,
    pub ok: bool,
}

/// What was read from the bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every key under the prefix.
    pub listed: BTreeSet<String>,
    /// The bytes of `index.json`, if it exists.
    pub index: Option<Vec<u8>>,
    /// The bytes of every object the index names that could be read, by key.
    pub objects: BTreeMap<String, Vec<u8>>,
}

/// The objects `index` names: each group's file and the owners object.
fn named(layout: &Layout, index: &Index) -> BTreeMap<String, String> {
    let mut named: BTreeMap<String, String> = index
        .groups
        .iter()
        .map(|(group, entry)| {
            (
                layout.group(index, group, &entry.sha256),
                entry.sha256.clone(),
            )
        })
        .collect();
    if let Some(sha256) = &index.owners {
        named.insert(layout.owners(sha256), sha256.clone());
    }
    if let Some(sha256) = &index.revoked {
        named.insert(layout.revoked(sha256), sha256.clone());
    }
    named
}

/// Lists the prefix and reads the index and every object it names. Any S3 error aborts: a
/// verification that could not read something must not pass, nor report findings it did not see.
pub async fn observe<S>(store: &S, layout: &Layout) -> anyhow::Result<Observed>
where
    S: ObjectStore + Clone + Send + Sync + 'static,
{
    let listed = store
        .list(&layout.prefix)
        .await
        .context("listing the bucket")?
        .into_iter()
        .collect();
    let index = read(store, &layout.index()).await?;
    let keys: Vec<String> = index
        .as_deref()
        .and_then(|bytes| Index::open(bytes, None).ok())
        .map(|index| named(layout, &index).into_keys().collect())
        .unwrap_or_default();

    let semaphore = Arc::new(Semaphore::new(PARALLEL_READS));
    let mut reads = JoinSet::new();
    for key in keys {
        let store = store.clone();
        let semaphore = Arc::clone(&semaphore);
        reads.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let body = read(&store, &key).await;
            (key, body)
        });
    }
    let mut objects = BTreeMap::new();
    while let Some(joined) = reads.join_next().await {
        let (key, body) = joined.context("a read task failed")?;
        if let Some(body) = body? {
            objects.insert(key, body);
        }
    }
    Ok(Observed {
        listed,
        index,
        objects,
    })
}

async fn read(store: &impl ObjectStore, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
    match store
        .get(key, None)
        .await
        .with_context(|| format!("reading {key}"))?
    {
        Fetched::Object(object) => Ok(Some(object.body)),
        Fetched::Missing => Ok(None),
        // Cannot happen without an ETag in the request; treated as unreadable, not as absent.
        Fetched::NotModified => anyhow::bail!("reading {key}: the store answered 'not modified'"),
    }
}

/// The instance's trust rules applied to the observed index once its signature (with
/// `verifier`) checks out (see `crate::bucket::trust`): what every instance would refuse is never clean.
/// A bad signature and expiry are `judge`'s findings, not repeated here.
pub fn judge_trust(
    layout: &Layout,
    observed: &Observed,
    deployment: &str,
    verifier: Option<&Verifier>,
    seen: Option<&crate::bucket::trust::Seen>,
    now: SystemTime,
) -> Vec<Finding> {
    let Some(index) = observed
        .index
        .as_deref()
        .and_then(|bytes| Some((Index::open(bytes, verifier).ok()?, sha256_hex(bytes))))
    else {
        return Vec::new();
    };
    let (index, sha256) = index;
    let signed = verifier.is_some();
    match crate::bucket::trust::check(&index, &sha256, deployment, signed, seen, now) {
        Ok(())
        | Err(
            crate::bucket::trust::Untrusted::Expired(_)
            | crate::bucket::trust::Untrusted::NoNotAfter,
        ) => Vec::new(),
        Err(crate::bucket::trust::Untrusted::Time(_)) => Vec::new(),
        Err(why) => vec![Finding {
            kind: FindingKind::IndexUntrusted,
            key: layout.index(),
            detail: format!("instances refuse it: {why}"),
        }],
    }
}

/// Every finding about `observed`, sorted by key then kind. With `verifier`, the signature and
/// the expiry (against `now`) are checked too.
pub fn judge(
    layout: &Layout,
    observed: &Observed,
    verifier: Option<&Verifier>,
    now: SystemTime,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut found = |kind, key: &str, detail: String| {
        findings.push(Finding {
            kind,
            key: key.to_owned(),
            detail,
        });
    };
    let index_key = layout.index();
    let Some(bytes) = &observed.index else {
        found(
            FindingKind::IndexMissing,
            &index_key,
            "no index is published: nothing under the prefix can be checked".to_owned(),
        );
        return findings;
    };
    if let Some(verifier) = verifier {
        match Index::open(bytes, Some(verifier)) {
            Err(IndexError::Unsigned) => found(
                FindingKind::IndexSignatureMissing,
                &index_key,
                "the index is not signed, and instances with verify_key refuse it".to_owned(),
            ),
            Err(IndexError::Signature(error)) => found(
                FindingKind::IndexSignatureInvalid,
                &index_key,
                error.to_string(),
            ),
            // Anything else is about the content, reported below once.
            Err(_) | Ok(_) => {}
        }
    }
    let index = match Index::open(bytes, None) {
        Ok(index) => index,
        Err(error) => {
            found(
                FindingKind::IndexInvalid,
                &index_key,
                format!("{error}: the objects under the prefix cannot be checked"),
            );
            return findings;
        }
    };
    if verifier.is_some() {
        match index.not_after.as_deref().map(signing::parse_time) {
            None => found(
                FindingKind::NotAfterInvalid,
                &index_key,
                "the index has no not_after; instances with verify_key refuse it".to_owned(),
            ),
            Some(Err(error)) => found(
                FindingKind::NotAfterInvalid,
                &index_key,
                format!("not_after: {error}"),
            ),
            Some(Ok(not_after)) if not_after <= now => found(
                FindingKind::Expired,
                &index_key,
                format!(
                    "the index expired at {} and instances refuse it (is the publisher running?)",
                    signing::format_time(not_after)
                ),
            ),
            Some(Ok(_)) => {}
        }
    }

    let named = named(layout, &index);
    let mut intact = BTreeSet::new();
    for (key, sha256) in &named {
        match observed.objects.get(key) {
            None => found(
                FindingKind::Missing,
                key,
                "named by the index but not in the bucket".to_owned(),
            ),
            Some(body) if sha256_hex(body) != *sha256 => found(
                FindingKind::Modified,
                key,
                format!(
                    "SHA-256 is {}, the index records {sha256}",
                    sha256_hex(body)
                ),
            ),
            Some(_) => {
                intact.insert(key.as_str());
            }
        }
    }
    judge_owners(layout, &index, observed, &intact, &mut found);

    let mut expected: BTreeSet<String> = named.into_keys().collect();
    expected.insert(index_key);
    if index.is_legacy() {
        expected.extend(layout.legacy_manifest());
    }
    for key in observed.listed.difference(&expected) {
        if !superseded(layout, &index, key) {
            found(
                FindingKind::Extra,
                key,
                "not an object the index names (planted, or left over by hand)".to_owned(),
            );
        }
    }

    findings.sort_by(|a, b| (&a.key, a.kind).cmp(&(&b.key, b.kind)));
    findings
}

/// Every key of every intact group file must be published for the person whose block it is in,
/// as the (intact) owners object says: `whois` and the publisher's copied-key rule rely on it.
fn judge_owners(
    layout: &Layout,
    index: &Index,
    observed: &Observed,
    intact: &BTreeSet<&str>,
    found: &mut impl FnMut(FindingKind, &str, String),
) {
    let Some(owners_key) = index.owners.as_deref().map(|sha| layout.owners(sha)) else {
        return;
    };
    let owners = match intact
        .contains(owners_key.as_str())
        .then(|| observed.objects.get(&owners_key))
        .flatten()
        .map(|bytes| owners_from_json(bytes))
    {
        Some(Ok(owners)) => owners,
        Some(Err(error)) => {
            found(FindingKind::Modified, &owners_key, error.to_string());
            return;
        }
        None => return,
    };
    for (group, entry) in &index.groups {
        let key = layout.group(index, group, &entry.sha256);
        let Some(body) = observed
            .objects
            .get(&key)
            .filter(|_| intact.contains(key.as_str()))
        else {
            continue;
        };
        for block in PublishedFile::parse(body).blocks {
            for fingerprint in block.fingerprints() {
                match owners.get(fingerprint) {
                    Some(owner) if *owner == block.user => {}
                    other => found(
                        FindingKind::OwnersMismatch,
                        &key,
                        format!(
                            "key {fingerprint} is in {}'s block, the owners object says {}",
                            block.user,
                            other.map_or("nobody", String::as_str)
                        ),
                    ),
                }
            }
        }
    }
}

/// A group or owners object of an earlier generation: named by its SHA-256 like the current
/// ones, under an access group the index lists. Publishes keep the previous one for instances
/// mid-refresh (and a publisher that lost a race may leave one until that group next changes);
/// no index names it, so no instance is served it. Anything else, a hex-named object under a
/// group the index does not list included, is extra.
fn superseded(layout: &Layout, index: &Index, key: &str) -> bool {
    let Some(rest) = key.strip_prefix(&layout.prefix) else {
        return false;
    };
    let name = match rest.strip_prefix(OWNERS_PREFIX) {
        Some(owners) => owners.strip_suffix(".json"),
        None if rest.starts_with(crate::bucket::index::REVOKED_PREFIX) => {
            rest.strip_prefix(crate::bucket::index::REVOKED_PREFIX)
        }
        None => rest
            .split_once('/')
            .filter(|(group, _)| index.groups.contains_key(*group))
            .map(|(_, name)| name),
    };
    name.is_some_and(|name| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The report as JSON (the `--format json` contract).
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default() + "\n"
}

fn summary(report: &Report) -> String {
    let location = format!("s3://{}/{}", report.bucket, report.prefix);
    let generation = report.generation.map_or_else(
        || "no readable index".to_owned(),
        |g| format!("index generation {g}"),
    );
    let signature = if report.signature_checked {
        "signature checked"
    } else {
        "signature not checked (no verify key configured)"
    };
    match report.findings.len() {
        0 => format!("{location} matches {generation}; {signature}"),
        1 => format!("{location}, {generation}: 1 problem; {signature}"),
        n => format!("{location}, {generation}: {n} problems; {signature}"),
    }
}

/// The report as text: a summary line, then one line per finding.
pub fn text(report: &Report) -> String {
    let mut out = summary(report) + "\n";
    let width = report
        .findings
        .iter()
        .map(|finding| finding.kind.name().len())
        .max()
        .unwrap_or(0);
    for finding in &report.findings {
        out.push_str(&format!(
            "  {:width$}  {}: {}\n",
            finding.kind.name(),
            finding.key,
            finding.detail
        ));
    }
    out
}

/// The report as Markdown, everything from the bucket quoted inert.
pub fn markdown(report: &Report) -> String {
    let mut out = format!("**{}**\n", summary(report));
    if !report.findings.is_empty() {
        out.push_str("\n| finding | object | detail |\n|---|---|---|\n");
        for finding in &report.findings {
            // Object names and details come from the bucket: anyone who can write to it.
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                finding.kind.name(),
                crate::markdown::code(&finding.key),
                crate::markdown::prose(&finding.detail)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::index::{IndexGroup, Owners, owners_to_json};
    use ssh_key::private::{Ed25519Keypair, KeypairData};
    use ssh_key::{HashAlg, LineEnding, PrivateKey};
    use std::time::{Duration, UNIX_EPOCH};

    const NOW: Duration = Duration::from_secs(1_750_000_000);
    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq bob@desk";

    fn layout() -> Layout {
        Layout {
            prefix: "ssh/".into(),
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + NOW
    }

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::new(
            KeypairData::from(Ed25519Keypair::from_seed(&[seed; 32])),
            "test",
        )
        .unwrap()
    }

    fn verifier(key: &PrivateKey) -> Verifier {
        Verifier::parse(&key.public_key().to_openssh().unwrap()).unwrap()
    }

    fn sign(key: &PrivateKey, message: &[u8]) -> String {
        key.sign(signing::NAMESPACE, HashAlg::Sha512, message)
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap()
    }

    /// `index` in its envelope, signed by `signer` (unsigned without), as the publisher writes it.
    fn sealed(signer: Option<&PrivateKey>, index: &Index) -> Vec<u8> {
        let text = serde_json::to_string(index).unwrap();
        let signature = signer.map(|signer| sign(signer, text.as_bytes()));
        serde_json::to_vec(&serde_json::json!({"index": text, "signature": signature})).unwrap()
    }

    fn bob_fingerprint() -> String {
        PublishedFile::parse(format!("# bob\n{BOB}\n").as_bytes()).blocks[0].keys[0]
            .1
            .clone()
            .unwrap()
    }

    /// A bucket holding exactly what a signed publish of web-prod and db-prod writes, plus the
    /// previous generation's web-prod object.
    fn clean(signer: &PrivateKey, not_after: SystemTime) -> (Index, Observed) {
        let mut index = Index {
            generation: 3,
            not_after: Some(signing::format_time(not_after)),
            ..Index::empty()
        };
        let mut observed = Observed::default();
        for (group, body) in [
            ("web-prod", format!("# bob via Web\n{BOB}\n")),
            ("db-prod", "# db\n".to_owned()),
        ] {
            let sha256 = sha256_hex(body.as_bytes());
            let key = layout().group(&index, group, &sha256);
            index.groups.insert(
                group.into(),
                IndexGroup {
                    sha256,
                    users: 1,
                    keys: 1,
                    seal: None,
                },
            );
            observed.objects.insert(key.clone(), body.into_bytes());
            observed.listed.insert(key);
        }
        let owners = owners_to_json(&Owners::from([(bob_fingerprint(), "bob".to_string())]));
        index.owners = Some(sha256_hex(&owners));
        let owners_key = layout().owners(&sha256_hex(&owners));
        observed.objects.insert(owners_key.clone(), owners);
        observed.listed.insert(owners_key);
        observed
            .listed
            .insert(format!("ssh/web-prod/{}", sha256_hex(b"previous")));
        observed.index = Some(sealed(Some(signer), &index));
        observed.listed.insert(layout().index());
        (index, observed)
    }

    fn kinds(findings: &[Finding]) -> Vec<(FindingKind, &str)> {
        findings
            .iter()
            .map(|finding| (finding.kind, finding.key.as_str()))
            .collect()
    }

    #[test]
    fn a_clean_signed_bucket_has_no_findings() {
        let signer = key(1);
        let (_, observed) = clean(&signer, now() + Duration::from_secs(60));
        assert_eq!(
            judge(&layout(), &observed, Some(&verifier(&signer)), now()),
            []
        );
        assert_eq!(judge(&layout(), &observed, None, now()), []);
    }

    #[test]
    fn every_drift_is_reported_not_just_the_first() {
        let signer = key(1);
        let (index, mut observed) = clean(&signer, now() + Duration::from_secs(60));
        let web = layout().group(&index, "web-prod", &index.groups["web-prod"].sha256);
        let db = layout().group(&index, "db-prod", &index.groups["db-prod"].sha256);
        observed.objects.insert(web.clone(), b"evil".to_vec());
        observed.objects.remove(&db);
        observed.listed.remove(&db);
        observed.listed.insert("ssh/notes.txt".into());
        observed
            .listed
            .insert("ssh/old-group/authorized_keys".into());
        let planted = format!("ssh/backdoor/{}", sha256_hex(b"planted"));
        observed.listed.insert(planted.clone());
        let findings = judge(&layout(), &observed, Some(&verifier(&signer)), now());
        let mut expected = vec![
            (FindingKind::Missing, db.as_str()),
            (FindingKind::Extra, "ssh/notes.txt"),
            (FindingKind::Extra, "ssh/old-group/authorized_keys"),
            (FindingKind::Extra, planted.as_str()),
            (FindingKind::Modified, web.as_str()),
        ];
        expected.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
        assert_eq!(kinds(&findings), expected);
        let modified = findings
            .iter()
            .find(|f| f.kind == FindingKind::Modified)
            .unwrap();
        assert!(modified.detail.contains(&sha256_hex(b"evil")));
    }

    fn run<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// `observed` written to an in-memory bucket, as a publish would have left it.
    fn bucket(observed: &Observed) -> crate::bucket::memory_store::MemoryStore {
        let store = crate::bucket::memory_store::MemoryStore::new();
        for key in &observed.listed {
            let body = match observed.objects.get(key) {
                Some(body) => body.clone(),
                None if *key == layout().index() => observed.index.clone().unwrap(),
                None => b"whatever".to_vec(),
            };
            store.insert(key, body);
        }
        store
    }

    #[test]
    fn observe_reads_what_the_index_names_and_lists_everything_else() {
        let signer = key(1);
        let (index, clean) = clean(&signer, now() + Duration::from_secs(60));
        let store = bucket(&clean);
        // A bucket written by a publish reads back as exactly that, and judges clean.
        assert_eq!(run(observe(&store, &layout())).unwrap(), clean);
        // Drift made in the bucket itself is found through observe.
        let web = layout().group(&index, "web-prod", &index.groups["web-prod"].sha256);
        let db = layout().group(&index, "db-prod", &index.groups["db-prod"].sha256);
        store.insert(&web, "evil");
        store.remove(&db);
        store.insert("ssh/notes.txt", "planted");
        store.insert("other/ignored", "not under the prefix");
        let observed = run(observe(&store, &layout())).unwrap();
        let findings = judge(&layout(), &observed, Some(&verifier(&signer)), now());
        assert_eq!(
            kinds(&findings),
            [
                (FindingKind::Missing, db.as_str()),
                (FindingKind::Extra, "ssh/notes.txt"),
                (FindingKind::Modified, web.as_str()),
            ]
        );
        // An object that cannot be read fails the verification; it is never reported as missing.
        store.fail(&web);
        let error = run(observe(&store, &layout())).unwrap_err();
        assert!(format!("{error:#}").contains(&web), "{error:#}");
    }

    #[test]
    fn signature_problems_and_expiry_are_findings_only_with_a_verifier() {
        let signer = key(1);
        let (index, mut observed) = clean(&signer, now() - Duration::from_secs(1));
        let with = |observed: &Observed| {
            kinds(&judge(&layout(), observed, Some(&verifier(&signer)), now()))
                .into_iter()
                .map(|(kind, _)| kind)
                .collect::<Vec<_>>()
        };
        assert_eq!(with(&observed), [FindingKind::Expired]);
        assert_eq!(judge(&layout(), &observed, None, now()), []);
        observed.index = Some(sealed(None, &index));
        assert_eq!(
            with(&observed),
            [FindingKind::Expired, FindingKind::IndexSignatureMissing]
        );
        observed.index = Some(sealed(Some(&key(2)), &index));
        assert_eq!(
            with(&observed),
            [FindingKind::Expired, FindingKind::IndexSignatureInvalid]
        );
        let mut unbounded = index.clone();
        unbounded.not_after = None;
        observed.index = Some(sealed(Some(&signer), &unbounded));
        assert_eq!(with(&observed), [FindingKind::NotAfterInvalid]);
    }

    #[test]
    fn an_owners_object_that_names_someone_else_is_reported() {
        let signer = key(1);
        let (mut index, mut observed) = clean(&signer, now() + Duration::from_secs(60));
        let owners = owners_to_json(&Owners::from([(bob_fingerprint(), "mallory".to_string())]));
        index.owners = Some(sha256_hex(&owners));
        observed
            .objects
            .insert(layout().owners(&sha256_hex(&owners)), owners);
        observed.index = Some(sealed(Some(&signer), &index));
        let findings = judge(&layout(), &observed, Some(&verifier(&signer)), now());
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].kind, FindingKind::OwnersMismatch);
        assert!(
            findings[0]
                .detail
                .contains("the owners object says mallory")
        );
    }

    #[test]
    fn without_a_readable_index_nothing_else_is_judged() {
        let signer = key(1);
        let (_, mut observed) = clean(&signer, now() + Duration::from_secs(60));
        observed.index = None;
        assert_eq!(
            kinds(&judge(&layout(), &observed, None, now())),
            [(FindingKind::IndexMissing, "ssh/index.json")]
        );
        observed.index = Some(b"{}".to_vec());
        assert_eq!(
            kinds(&judge(&layout(), &observed, None, now())),
            [(FindingKind::IndexInvalid, "ssh/index.json")]
        );
    }

    #[test]
    fn reports_have_a_stable_json_shape_and_a_readable_text_form() {
        let report = Report {
            bucket: "corp-ssh-keys".into(),
            prefix: "ssh/".into(),
            generation: Some(3),
            signature_checked: true,
            findings: vec![Finding {
                kind: FindingKind::Extra,
                key: "ssh/notes.txt".into(),
                detail: "not an object the index names".into(),
            }],
            ok: false,
        };
        let json: serde_json::Value = serde_json::from_str(&json(&report)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "bucket": "corp-ssh-keys",
                "prefix": "ssh/",
                "generation": 3,
                "signature_checked": true,
                "findings": [{"kind": "extra", "key": "ssh/notes.txt", "detail": "not an object the index names"}],
                "ok": false
            })
        );
        assert_eq!(
            text(&report),
            "s3://corp-ssh-keys/ssh/, index generation 3: 1 problem; signature checked\n  \
             extra  ssh/notes.txt: not an object the index names\n"
        );
        // Every kind's text name is its JSON name.
        for kind in [
            FindingKind::Expired,
            FindingKind::NotAfterInvalid,
            FindingKind::Missing,
            FindingKind::Modified,
            FindingKind::OwnersMismatch,
            FindingKind::Extra,
            FindingKind::IndexMissing,
            FindingKind::IndexInvalid,
            FindingKind::IndexSignatureMissing,
            FindingKind::IndexSignatureInvalid,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.name())
            );
        }
    }

    #[test]
    fn markdown_quotes_object_names_and_details_from_the_bucket_as_inert_text() {
        // A bucket writer names an object so that the report, pasted in a PR, links, pings, or
        // breaks out of its table.
        let report = Report {
            bucket: "keys".into(),
            prefix: "ssh/".into(),
            generation: Some(1),
            signature_checked: true,
            findings: vec![Finding {
                kind: FindingKind::Extra,
                key: "ssh/x`| [y](https://evil.example) @corp/admins".into(),
                detail: "![p](https://evil.example/p.png) <img src=x> @alice | www.evil.example"
                    .into(),
            }],
            ok: false,
        };
        let text = markdown(&report);
        let row = text.lines().find(|l| l.starts_with("| extra")).unwrap();
        assert_eq!(
            row,
            "| extra | ``ssh/x`\\| [y](https://evil.example) @corp/admins`` | \\!\\[p\\]\\(https\\:\u{200B}\\/\\/evil\\.example\\/p\\.png\\) \\<img src\\=x\\> @\u{200B}alice \\| www\u{200B}\\.evil\\.example |"
        );
    }
}
