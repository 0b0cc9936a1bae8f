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
use std::time::SystemTime;

use anyhow::{Context, bail};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::bucket::group_file::{KnownLines, PublishedFile};
use crate::bucket::index::{Index, Layout, OwnerRecords, Owners, records_from_json};
use crate::bucket::signing::{Signer, Verifier};
use crate::bucket::store::{Fetched, ObjectStore, S3Store};
use crate::digest::sha256_hex;
use crate::exit::{Exit, coded};
use crate::settings::Settings;

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
    /// Hex SHA-256 of the index envelope's bytes as read (`None`: there was none): what the next
    /// index names as `previous`, and what the head records.
    pub sha256: Option<String>,
    /// Whether lines may be carried out of this index for unreadable homes: it is the index this
    /// publisher's head names (or its direct successor, which names the head as `previous`),
    /// or, without a head yet, the signed index found on a first run. Never one accepted past
    /// the head (`--accept-index`, `--min-generation`).
    pub carry_trusted: bool,
    /// The generation of this publisher's head: the next index goes above it whatever the bucket
    /// holds.
    pub head_generation: Option<u64>,
}

/// What a run may start from, beyond what verifies: the operator's explicit overrides and the
/// publisher's own head.
#[derive(Debug, Clone, Copy, Default)]
pub struct BaseRules<'a> {
    /// `--min-generation N`: the next generation is at least N; also accepts a base index older
    /// than the head (the operator says where the generation goes on).
    pub min_generation: Option<u64>,
    /// The publisher's head, when it has one.
    pub head: Option<&'a crate::bucket::head::Head>,
    /// Where the head lives, for messages.
    pub head_path: Option<&'a Path>,
    /// `--accept-index SHA256`: this exact index is the base, whatever the head says.
    pub accept_index: Option<&'a str>,
    /// `--accept-expired`: an index past its `not_after` may be the base.
    pub accept_expired: bool,
    /// `--migrate`: a legacy (format 1) index may be the base.
    pub migrate: bool,
    /// The clock the base's `not_after` is judged by.
    pub now: Option<SystemTime>,
    /// The publisher's copy of the index (`local_copy`): used instead of a GET when the bucket's
    /// index still has the ETag the copy was made with, and judged exactly the same.
    pub index_copy: Option<&'a crate::bucket::local_copy::ObjectCopy>,
}

impl Published {
    /// Reads and verifies `index.json`. With `verifier`, an unsigned or badly signed index is an
    /// error. Without an index, the bucket must hold no keyhole object unless `min_generation`
    /// says where to start. The index must also be current by `rules` (see [`BaseRules`]).
    pub async fn read(
        store: &S3Store,
        layout: &Layout,
        bucket: &str,
        verifier: Option<&Verifier>,
        rules: BaseRules<'_>,
    ) -> anyhow::Result<Published> {
        let key = layout.index();
        let head_generation = rules.head.map(|head| head.generation);
        let (fetched, copied) = fetch_index(store, &key, rules.index_copy).await?;
        let published = match fetched {
            Fetched::Object(object) => {
                let index = Index::open(&object.body, verifier).with_context(|| {
                    format!(
                        "refusing s3://{bucket}/{key}: the publisher signs only what it verified, \
                         and this index does not verify (a bucket writer may have replaced it). \
                         Investigate with `keyhole verify`; then restore the last good index, or \
                         delete it and publish with --min-generation N, N above its generation"
                    )
                })?;
                let sha256 = sha256_hex(&object.body);
                let where_ = format!("s3://{bucket}/{key}");
                index
                    .check_deployment(
                        &crate::bucket::index::deployment(bucket, &layout.prefix),
                        true,
                    )
                    .with_context(|| format!("refusing {where_}"))?;
                let carry_trusted =
                    judge_base(&index, &sha256, &where_, verifier.is_some(), &rules)?;
                if let (Some(copy), false) = (rules.index_copy, copied) {
                    copy.put(&object.etag, &object.body);
                }
                Published {
                    index,
                    etag: Some(object.etag),
                    sha256: Some(sha256),
                    carry_trusted,
                    head_generation,
                }
            }
            Fetched::Missing | Fetched::NotModified => {
                let objects = store
                    .list(&layout.prefix)
                    .await
                    .context("listing the bucket")?;
                if !objects.is_empty() && rules.min_generation.is_none() {
                    bail!(
                        "s3://{bucket}/{key} is missing, but the bucket holds {} object(s) under \
                         {:?}: instances have cached an index and would refuse a new one that \
                         starts again at generation 1. Publish with --min-generation N, N above \
                         the generation instances last served (`keyhole refresh` logs it{})",
                        objects.len(),
                        layout.prefix,
                        match rules.head {
                            Some(head) => format!(
                                "; this publisher last committed generation {}",
                                head.generation
                            ),
                            None => String::new(),
                        }
                    );
                }
                Published {
                    index: Index::empty(),
                    etag: None,
                    sha256: None,
                    carry_trusted: false,
                    head_generation,
                }
            }
        };
        Ok(published)
    }

    /// The generation the next index gets: one more than the published one and than the head's,
    /// and at least `min_generation`.
    pub fn next_generation(&self, min_generation: Option<u64>) -> anyhow::Result<u64> {
        let next = self
            .index
            .generation
            .max(self.head_generation.unwrap_or(0))
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
        mut each: impl FnMut(String, Result<Option<PublishedFile>, Damaged>),
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
                    Some((key, sha256)) => {
                        checked_object(&store, &key, &sha256).await.map(|read| {
                            read.map(|body| Some(PublishedFile::parse_knowing(&body, &known)))
                        })
                    }
                    None => Ok(Ok(None)),
                };
                (group, file, permit)
            });
        }
        while let Some(done) = reads.join_next().await {
            finish(done)?;
        }
        Ok(())
    }

    /// The owners object the index names (empty when it names none). One that is missing,
    /// altered or unparsable reads as empty, with a warning: contested keys then go to nobody,
    /// the safe side, and no damaged object can stop a publish.
    pub async fn owners(
        &self,
        store: &impl ObjectStore,
        layout: &Layout,
    ) -> anyhow::Result<Owners> {
        let records = self
            .owner_records(store, layout, std::time::SystemTime::now())
            .await?;
        Ok(crate::bucket::revocation_list::owners_view(&records))
    }

    /// The owners object's records (ended ones included; empty when the index names none).
    ///
    /// One that is missing, altered or unparsable never stops a run, and never un-revokes a key:
    /// the records are rebuilt from the revocation list the same index names (each listed key
    /// ended `now`, its owner unknown, so the retention starts again and anyone may publish it
    /// again). Without a readable list either, they read as empty, said loudly.
    pub async fn owner_records(
        &self,
        store: &impl ObjectStore,
        layout: &Layout,
        now: std::time::SystemTime,
    ) -> anyhow::Result<OwnerRecords> {
        self.owner_records_with(store, layout, now, None).await
    }

    /// [`Published::owner_records`], with the publisher's copy of the owners object: when the
    /// copy holds the object the index names and the bucket still has it (its ETag), no byte of
    /// it is read from the bucket (`local_copy`).
    /// A missing or altered object is judged as without the copy.
    pub async fn owner_records_with(
        &self,
        store: &impl ObjectStore,
        layout: &Layout,
        now: std::time::SystemTime,
        cache: Option<&crate::bucket::local_copy::ObjectCopy>,
    ) -> anyhow::Result<OwnerRecords> {
        let Some(sha256) = &self.index.owners else {
            return Ok(OwnerRecords::new());
        };
        let read = match cache {
            Some(cache) => owners_object(store, &layout.owners(sha256), sha256, cache).await?,
            None => checked_object(store, &layout.owners(sha256), sha256).await?,
        };
        let damaged = match read {
            Ok(body) => match records_from_json(&body) {
                Ok(records) => return Ok(records),
                Err(error) => Damaged(error.to_string()),
            },
            Err(damaged) => damaged,
        };
        let listed = match &self.index.revoked {
            Some(list) => match checked_object(store, &layout.revoked(list), list).await? {
                Ok(body) => {
                    crate::bucket::revocation_list::parse_list(&body).map_err(|e| e.to_string())
                }
                Err(Damaged(why)) => Err(why),
            },
            None => Err("the index names no revocation list".to_owned()),
        };
        match listed {
            Ok(listed) => {
                tracing::error!(
                    revoked = listed.len(),
                    "{damaged}; the owners object is rebuilt from the published revocation list: \
                     every key held by more than one person goes to nobody this run, and every \
                     revoked key stays revoked"
                );
                Ok(crate::bucket::revocation_list::records_from_list(
                    &listed, now,
                ))
            }
            Err(why) => {
                tracing::error!(
                    "{damaged}, and the revocation list cannot stand in for it ({why}); the owners \
                     object reads as empty: every key held by more than one person goes to nobody \
                     this run, and keys it recorded as ended leave the revocation list unless \
                     [deny] names them"
                );
                Ok(OwnerRecords::new())
            }
        }
    }
}

impl Published {
    /// The published index for a reader that publishes nothing (`whois`, `keyhole ssh
    /// --explain`): verified with `verifier`, then held to the rules an instance applies
    /// ([`crate::bucket::trust::check`], against `seen` when this machine remembers an index): an index
    /// every instance refuses explains nothing. With `expired_ok`, an index past its `not_after`
    /// is still returned (the caller says so in its answer). Never a base to publish from:
    /// nothing may be carried out of it.
    pub async fn for_reading(
        store: &S3Store,
        layout: &Layout,
        deployment: &str,
        verifier: Option<&Verifier>,
        seen: Option<&crate::bucket::trust::Seen>,
        expired_ok: bool,
    ) -> anyhow::Result<Published> {
        let location = format!("{deployment}{}", crate::bucket::index::INDEX_OBJECT);
        let Fetched::Object(object) = store
            .get(&layout.index(), None)
            .await
            .with_context(|| format!("reading {location} (needs s3:GetObject on it)"))?
        else {
            bail!("no index is published at {location}");
        };
        let index =
            Index::open(&object.body, verifier).with_context(|| format!("refusing {location}"))?;
        let trusted = crate::bucket::trust::check(
            &index,
            &sha256_hex(&object.body),
            deployment,
            verifier.is_some(),
            seen,
            SystemTime::now(),
        );
        match trusted {
            Err(crate::bucket::trust::Untrusted::Expired(_)) if expired_ok => {}
            other => other.with_context(|| format!("refusing {location}"))?,
        }
        Ok(Published {
            index,
            etag: Some(object.etag),
            sha256: None,
            carry_trusted: false,
            head_generation: None,
        })
    }
}

/// The published index: the publisher's copy when the bucket's index still has the ETag the copy
/// was made with (a HEAD, no body), else a GET. `true` when it came from the copy.
async fn fetch_index(
    store: &S3Store,
    key: &str,
    copy: Option<&crate::bucket::local_copy::ObjectCopy>,
) -> anyhow::Result<(Fetched, bool)> {
    if let Some(copied) = copy.and_then(crate::bucket::local_copy::ObjectCopy::get) {
        let etag = store
            .etag(key)
            .await
            .context("reading the published index")?;
        if etag.as_deref() == Some(copied.etag.as_str()) {
            let object = crate::bucket::store::StoredObject {
                body: copied.body,
                etag: copied.etag,
            };
            return Ok((Fetched::Object(object), true));
        }
    }
    let fetched = store
        .get(key, None)
        .await
        .context("reading the published index")?;
    Ok((fetched, false))
}

/// Whether the verified `index` (whose envelope hashes to `sha256`) may be the base of this run,
/// and whether lines may be carried out of it (`Ok(true)`). A replayed or rolled-back index (by
/// the head), a legacy one and an expired one are refused unless the operator said otherwise,
/// and every override is logged.
fn judge_base(
    index: &Index,
    sha256: &str,
    where_: &str,
    signed: bool,
    rules: &BaseRules<'_>,
) -> anyhow::Result<bool> {
    let generation = index.generation;
    let accepted = match rules.accept_index {
        Some(wanted) if wanted.eq_ignore_ascii_case(sha256) => {
            tracing::warn!(
                generation,
                sha256,
                "--accept-index: the operator accepted {where_} as the base of this publish"
            );
            true
        }
        Some(wanted) => bail!(
            "--accept-index {wanted}: {where_} is generation {generation} with SHA-256 {sha256}, \
             not the index named; nothing was published"
        ),
        None => false,
    };
    if index.is_legacy() {
        if !rules.migrate {
            bail!(
                "{where_} is a legacy format-1 index (generation {generation}): it names no \
                 deployment, so it may be another deployment's index signed with a shared key. \
                 Check it with `keyhole verify`, then migrate the bucket with `publish --migrate`; \
                 nothing was published"
            );
        }
        tracing::warn!(
            generation,
            "--migrate: migrating the legacy index {where_} to format 2"
        );
    }
    if signed {
        match crate::bucket::trust::check_validity(index, rules.now.unwrap_or_else(SystemTime::now))
        {
            Err(why @ crate::bucket::trust::Untrusted::Expired(_)) if rules.accept_expired => {
                tracing::warn!("--accept-expired: {where_} is the base although {why}");
            }
            Err(crate::bucket::trust::Untrusted::Expired(not_after)) => bail!(
                "refusing {where_} as the base of a publish: it expired at {not_after}, and an \
                 expired index may be an old one put back. If it is the last index this \
                 deployment published (the publisher was stopped), publish with \
                 --accept-expired; nothing was published"
            ),
            Err(why) => bail!("refusing {where_}: {why}; nothing was published"),
            Ok(()) => {}
        }
    }
    let Some(head) = rules.head else {
        tracing::warn!(
            generation,
            sha256,
            head = ?rules.head_path,
            "this publisher has no head yet: trusting the signed index in the bucket once (it \
             becomes the head)"
        );
        return Ok(true);
    };
    if accepted {
        // The operator vouched for the base, not for its lines: carry only out of the index the
        // head itself names.
        return Ok(sha256 == head.sha256);
    }
    let source = format!(
        "this publisher's head {}",
        rules
            .head_path
            .map_or_else(|| "head.json".to_owned(), |p| p.display().to_string())
    );
    let seen = crate::bucket::trust::Seen {
        generation: head.generation,
        sha256: head.sha256.clone(),
        format: crate::bucket::index::FORMAT,
        source,
    };
    let verdict = crate::bucket::trust::check_successor(index, sha256, &seen).and_then(|()| {
        crate::bucket::trust::check_format(index, Some((seen.format, &seen.source)))
    });
    if let Err(why) = verdict {
        if let Some(min) = rules.min_generation {
            tracing::warn!(
                generation,
                sha256,
                "--min-generation {min}: publishing over {where_} although {why}; no line is \
                 carried out of it"
            );
            return Ok(false);
        }
        bail!(
            "refusing {where_}: {why}. Someone who can write the bucket may have put back an \
             older signed index. If it was restored on purpose, publish with --accept-index \
             {sha256} (or --min-generation N, N above {}); nothing was published",
            head.generation
        );
    }
    if sha256 == head.sha256 || index.previous.as_deref() == Some(head.sha256.as_str()) {
        return Ok(true);
    }
    tracing::warn!(
        generation,
        head_generation = head.generation,
        "{where_} is newer than this publisher's head and does not name it as its previous \
         index (another publisher?): no line is carried out of it for unreadable homes"
    );
    Ok(false)
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

/// Why an object the verified index names cannot be used: missing, or not the bytes recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads `key`, which must hash to `sha256` (the verified index's record of it).
pub async fn checked(store: &impl ObjectStore, key: &str, sha256: &str) -> anyhow::Result<Vec<u8>> {
    checked_object(store, key, sha256)
        .await?
        .map_err(|damaged| anyhow::anyhow!("{damaged}"))
}

/// The owners object `key` (which must hash to `sha256`), read only if the bucket no longer
/// holds the one `cache` keeps (its ETag, asked with a HEAD, is not the one the copy was made
/// with); a fresh read is kept in `cache`. Errors as [`checked_object`]: a missing object is
/// damaged whatever the copy holds.
async fn owners_object(
    store: &impl ObjectStore,
    key: &str,
    sha256: &str,
    cache: &crate::bucket::local_copy::ObjectCopy,
) -> anyhow::Result<Result<Vec<u8>, Damaged>> {
    if let Some(copied) = cache.get_named(sha256) {
        match store
            .etag(key)
            .await
            .with_context(|| format!("reading {key}"))?
        {
            Some(current) if current == copied.etag => return Ok(Ok(copied.body)),
            None => return Ok(Err(missing(key))),
            // Written again since (by another publisher, or by hand): read and judge it.
            Some(_) => {}
        }
    }
    let Fetched::Object(object) = store
        .get(key, None)
        .await
        .with_context(|| format!("reading {key}"))?
    else {
        return Ok(Err(missing(key)));
    };
    let actual = sha256_hex(&object.body);
    if actual != sha256 {
        return Ok(Err(altered(key, &actual, sha256)));
    }
    cache.put(&object.etag, &object.body);
    Ok(Ok(object.body))
}

fn missing(key: &str) -> Damaged {
    Damaged(format!(
        "{key} is listed in the index but missing from the bucket (`keyhole verify` shows what \
         else is)"
    ))
}

fn altered(key: &str, actual: &str, sha256: &str) -> Damaged {
    Damaged(format!(
        "{key} has SHA-256 {actual}, not the {sha256} the signed index records: it was changed \
         in the bucket (`keyhole verify`; `publish --rewrite-all` writes it again from a fresh \
         render)"
    ))
}

/// Reads `key`, which must hash to `sha256`. The outer error is the store failing (the run
/// stops); the inner one is the object missing or altered (the caller plans around it).
pub async fn checked_object(
    store: &impl ObjectStore,
    key: &str,
    sha256: &str,
) -> anyhow::Result<Result<Vec<u8>, Damaged>> {
    let Fetched::Object(object) = store
        .get(key, None)
        .await
        .with_context(|| format!("reading {key}"))?
    else {
        return Ok(Err(missing(key)));
    };
    let actual = sha256_hex(&object.body);
    if actual != sha256 {
        return Ok(Err(altered(key, &actual, sha256)));
    }
    Ok(Ok(object.body))
}
