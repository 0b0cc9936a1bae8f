//! Reading back what is published, and trusting only what checks out.
//!
//! Everything the publisher (and `whois`) learns from the bucket comes through here: the index,
//! verified with the publisher's own key when `[signing]` is set (a bucket writer cannot make the
//! publisher carry a forged hash into the next signed index), and group files and the owners
//! object, each checked against the SHA-256 the verified index records before it is parsed.
//! A bad or missing signature, or an object that is not what the index says, stops the caller
//! with an error naming the object: nothing read from the bucket is ever laundered into a
//! signature.
//!
//! It also guards the generation. A bucket with keyhole objects but no index (deleted by an
//! operator, a lifecycle rule or an attacker) is refused: starting again at generation 1 would
//! make every instance refuse every new index as a rollback, so revocations would stop. The
//! operator says where to start (`publish --min-generation`), above what instances have seen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::exit::{Exit, coded};
use crate::group_file::{KnownLines, PublishedFile};
use crate::index::{Index, Layout, OwnerRecords, Owners, owners_from_json, records_from_json};
use crate::render::sha256_hex;
use crate::settings::Settings;
use crate::signing::{Signer, Verifier};
use crate::store::{Fetched, ObjectStore, S3Store};

/// Published files read at once: enough to hide S3's latency, few enough to keep memory flat.
const PARALLEL_READS: u32 = 8;

/// How many keys' worth of published files may be read and parsed but not yet handed on. A parsed
/// file costs about 600 bytes a person, so eight files of 10,000 people would hold ~50 MB: a
/// file weighs its key count (the index records it), at least `1/PARALLEL_READS` of the budget,
/// and a file bigger than the whole budget is read alone.
const READ_BUDGET_KEYS: u32 = 40_000;

/// The verified published state a run starts from.
#[derive(Debug)]
pub struct Published {
    pub index: Index,
    /// The index's ETag when read (`None`: there was none), the condition of the commit.
    pub etag: Option<String>,
}

impl Published {
    /// Reads and verifies `index.json`. With `verifier`, an unsigned or badly signed index is an
    /// error. Without an index, the bucket must hold no keyhole object unless `min_generation`
    /// says where to start.
    pub async fn read(
        store: &S3Store,
        layout: &Layout,
        bucket: &str,
        verifier: Option<&Verifier>,
        min_generation: Option<u64>,
    ) -> anyhow::Result<Published> {
        let key = layout.index();
        let published = match store
            .get(&key, None)
            .await
            .context("reading the published index")?
        {
            Fetched::Object(object) => {
                let index = Index::open(&object.body, verifier).with_context(|| {
                    format!(
                        "refusing s3://{bucket}/{key}: the publisher signs only what it verified, \
                         and this index does not verify (a bucket writer may have replaced it). \
                         Investigate with `keyhole verify`; then restore the last good index, or \
                         delete it and publish with --min-generation N, N above its generation"
                    )
                })?;
                index
                    .check_deployment(&crate::index::deployment(bucket, &layout.prefix), false)
                    .with_context(|| format!("refusing s3://{bucket}/{key}"))?;
                Published {
                    index,
                    etag: Some(object.etag),
                }
            }
            Fetched::Missing | Fetched::NotModified => {
                let objects = store
                    .list(&layout.prefix)
                    .await
                    .context("listing the bucket")?;
                if !objects.is_empty() && min_generation.is_none() {
                    bail!(
                        "s3://{bucket}/{key} is missing, but the bucket holds {} object(s) under \
                         {:?}: instances have cached an index and would refuse a new one that \
                         starts again at generation 1. Publish with --min-generation N, N above \
                         the generation instances last served (`keyhole refresh` logs it)",
                        objects.len(),
                        layout.prefix
                    );
                }
                Published {
                    index: Index::empty(),
                    etag: None,
                }
            }
        };
        Ok(published)
    }

    /// The generation the next index gets: one more than the published one, and at least
    /// `min_generation`.
    pub fn next_generation(&self, min_generation: Option<u64>) -> anyhow::Result<u64> {
        let next = self
            .index
            .generation
            .checked_add(1)
            .context("the index generation cannot grow any further")?;
        Ok(next.max(min_generation.unwrap_or(0)))
    }

    /// Reads a group's published file, checked against the SHA-256 the index records. `None`
    /// when the index does not list the group.
    pub async fn file(
        &self,
        store: &impl ObjectStore,
        layout: &Layout,
        group: &str,
    ) -> anyhow::Result<Option<PublishedFile>> {
        let Some(entry) = self.index.groups.get(group) else {
            return Ok(None);
        };
        let key = layout.group(&self.index, group, &entry.sha256);
        let body = checked(store, &key, &entry.sha256).await?;
        Ok(Some(PublishedFile::parse(&body)))
    }

    /// Reads the published files of `groups`, `PARALLEL_READS` at a time and within
    /// `READ_BUDGET_KEYS`, handing each to `each` as it arrives (a file's share of the budget is
    /// held until `each` has it, so at most the budget is in memory). Lines `known` has are not
    /// decoded again.
    pub async fn files(
        &self,
        store: &S3Store,
        layout: &Layout,
        groups: Vec<String>,
        known: &Arc<KnownLines>,
        mut each: impl FnMut(String, Option<PublishedFile>),
    ) -> anyhow::Result<()> {
        let semaphore = Arc::new(Semaphore::new(READ_BUDGET_KEYS as usize));
        let mut reads = JoinSet::new();
        let mut finish = |done: Result<_, tokio::task::JoinError>| -> anyhow::Result<()> {
            let (group, file, _permit) = done.context("a read task failed")?;
            each(group, file?);
            Ok(())
        };
        for group in groups {
            let entry = self.index.groups.get(&group);
            let weight = entry
                .map_or(0, |entry| u32::try_from(entry.keys).unwrap_or(u32::MAX))
                .clamp(READ_BUDGET_KEYS / PARALLEL_READS, READ_BUDGET_KEYS);
            // Hand on what has arrived first: its share of the budget is what the next read needs.
            while let Some(done) = reads.try_join_next() {
                finish(done)?;
            }
            let permit = loop {
                match Arc::clone(&semaphore).try_acquire_many_owned(weight) {
                    Ok(permit) => break permit,
                    Err(_) => match reads.join_next().await {
                        Some(done) => finish(done)?,
                        None => bail!("read budget exhausted with no read in flight"),
                    },
                }
            };
            let key = entry.map(|entry| {
                (
                    layout.group(&self.index, &group, &entry.sha256),
                    entry.sha256.clone(),
                )
            });
            let (store, known) = (store.clone(), Arc::clone(known));
            reads.spawn(async move {
                let file = match key {
                    Some((key, sha256)) => checked(&store, &key, &sha256)
                        .await
                        .map(|body| Some(PublishedFile::parse_knowing(&body, &known))),
                    None => Ok(None),
                };
                (group, file, permit)
            });
        }
        while let Some(done) = reads.join_next().await {
            finish(done)?;
        }
        Ok(())
    }

    /// The owners object the index names (empty when it names none).
    pub async fn owners(
        &self,
        store: &impl ObjectStore,
        layout: &Layout,
    ) -> anyhow::Result<Owners> {
        let Some(sha256) = &self.index.owners else {
            return Ok(Owners::new());
        };
        let body = checked(store, &layout.owners(sha256), sha256).await?;
        Ok(owners_from_json(&body)?)
    }

    /// The owners object's records (ended ones included; empty when the index names none).
    pub async fn owner_records(
        &self,
        store: &impl ObjectStore,
        layout: &Layout,
    ) -> anyhow::Result<OwnerRecords> {
        let Some(sha256) = &self.index.owners else {
            return Ok(OwnerRecords::new());
        };
        let body = checked(store, &layout.owners(sha256), sha256).await?;
        Ok(records_from_json(&body)?)
    }
}

/// The key signatures are checked with: `instance.verify_key` (what the instances trust), else
/// the public half of `[signing] key_file`; `None` when neither is configured.
pub fn verifier(settings: &Settings) -> anyhow::Result<Option<Verifier>> {
    let invalid = |error: anyhow::Error| coded(Exit::Invalid, error);
    if let Some(verify_key) = settings
        .instance()
        .ok()
        .and_then(|instance| instance.verify_key.as_deref())
    {
        return Verifier::parse(verify_key)
            .context("instance.verify_key")
            .map(Some)
            .map_err(invalid);
    }
    let Some(signing) = &settings.signing else {
        return Ok(None);
    };
    public_key_of(&signing.key_file)
        .and_then(|line| Verifier::parse(&line).map_err(anyhow::Error::from))
        .with_context(|| {
            format!(
                "the public half of the signing key {}",
                signing.key_file.display()
            )
        })
        .map(Some)
        .map_err(invalid)
}

/// `KEY.pub` beside the key (as `ssh-keygen` writes it), so a monitoring host needs no access
/// to the private key; derived from the private key when there is no `.pub`.
fn public_key_of(key_file: &Path) -> anyhow::Result<String> {
    let mut public = PathBuf::from(key_file.as_os_str().to_owned());
    public.as_mut_os_string().push(".pub");
    match std::fs::read_to_string(&public) {
        Ok(line) => Ok(line.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Ok(Signer::load(key_file)?.public_key())
        }
        Err(error) => {
            Err(anyhow::Error::new(error).context(format!("reading {}", public.display())))
        }
    }
}

/// Reads `key`, which must hash to `sha256` (the verified index's record of it).
pub async fn checked(store: &impl ObjectStore, key: &str, sha256: &str) -> anyhow::Result<Vec<u8>> {
    let Fetched::Object(object) = store
        .get(key, None)
        .await
        .with_context(|| format!("reading {key}"))?
    else {
        bail!(
            "{key} is listed in the index but missing from the bucket (`keyhole verify` shows what else is)"
        );
    };
    let actual = sha256_hex(&object.body);
    if actual != sha256 {
        bail!(
            "{key} has SHA-256 {actual}, not the {sha256} the signed index records: it was \
             changed in the bucket (`keyhole verify`; `publish --rewrite-all` writes it again \
             from a fresh render)"
        );
    }
    Ok(object.body)
}
