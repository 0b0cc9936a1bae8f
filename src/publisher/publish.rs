//! The commit protocol of `keyhole publish`: writes the changed access group objects, the owners object, and then the
//! index, the one commit point.
//!
//! Order matters for never losing access, and for never letting a failed or losing run change
//! what instances serve. Group objects are addressed by content (`{prefix}{group}/{sha256}`), so
//! writing them replaces nothing an instance reads; the owners object likewise. The index is then
//! written with a conditional write (`If-Match` the ETag it had when this run read it, or
//! `If-None-Match: *` when there was none): a publisher elsewhere that committed in between makes
//! it fail (exit 75), and instances go on serving the winner's generation. Only after the commit
//! are objects that no index names any more pruned, keeping each changed group's previous object
//! so an instance that read the previous index a moment ago can still fetch it. `--deadline` stops
//! a run before the commit, never during it: a run that stops there published nothing (the
//! objects it wrote are named by no index, and the next publish that changes those groups prunes
//! them).
//!
//! When the safety guard refuses a publish, the removals it never holds back (`[deny]`, and grants
//! past their `until`) are still published: each affected group's published file with just those
//! people and keys removed.
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::bucket::deployment::Deployment;
use crate::bucket::index::Index;
use crate::bucket::local_copy::ObjectCopy;
use crate::bucket::signing::Signer;
use crate::bucket::store::{ObjectStore, Precondition, StoreError};
use crate::digest::sha256_hex;
use crate::exit::{Exit, coded};
use crate::metrics::RunMetrics;
use crate::publisher::lock::PublishLock;
use crate::publisher::plan::{Action, Plan};
use crate::publisher::prepare::Prepared;
use crate::publisher::prepare::{Start, prepare};
use crate::settings::Settings;

/// Group files written at the same time.
const PARALLEL_WRITES: usize = 8;

/// What `keyhole publish` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `--group`: only these access groups; empty: all.
    pub selection: BTreeSet<String>,
    pub start: Start,
    /// `--force`: past the safety guard.
    pub force: bool,
    /// `--deadline`: give up before the commit once this long has passed since `started`.
    pub deadline: Option<Duration>,
}

/// One publish under the publisher lock: prepare, show the plan (`show_plan`), write, commit,
/// prune. `figures` collects what the metrics file reports.
pub async fn publish(
    settings: &Settings,
    request: &Request,
    started: Instant,
    figures: &mut RunMetrics,
    show_plan: impl FnOnce(&Plan),
) -> anyhow::Result<Exit> {
    let deadline = request.deadline.map(|d| (started + d, d));
    let _lock = PublishLock::acquire(&settings.safety.lock_file)?;
    let selection = &request.selection;
    let selected = (!selection.is_empty()).then_some(selection);
    let start = &request.start;
    let mut prepared = within(
        deadline,
        "reading AD, the homes and S3",
        prepare(settings, selected, start),
    )
    .await??;
    if selected.is_some() && prepared.published.index.is_legacy() {
        // A format-2 index naming the unselected groups' legacy objects would name objects that
        // do not exist at their content address.
        return Err(coded(
            Exit::Usage,
            anyhow::anyhow!(
                "--group: the bucket is in the legacy format 1; migrate every group at once with \
                 `publish --migrate` (without --group) first; nothing was published"
            ),
        ));
    }
    for name in selection {
        if !prepared.plan.groups.contains_key(name) {
            return Err(coded(
                Exit::Usage,
                anyhow::anyhow!("--group {name}: no such access group in the policy or the bucket"),
            ));
        }
    }
    if start.rewrite_all && !prepared.plan.rewrite {
        prepared.plan.rewrite = true;
        if !prepared.plan.resign && !prepared.plan.has_changes() && prepared.plan.owners.is_none() {
            prepared.plan.index.generation =
                prepared.published.next_generation(start.min_generation)?;
        }
    }
    count(figures, &prepared);
    let plan = &prepared.plan;
    show_plan(plan);

    if plan.guard.refused && !request.force {
        tracing::error!(reasons = ?plan.guard.reasons, "the safety guard refused this publish");
        let signer = load_signer(settings)?;
        let denied = publish_denials(&prepared, signer.as_ref(), start).await?;
        if denied.is_empty() {
            tracing::error!("nothing was written");
        } else {
            tracing::warn!(groups = ?denied, "published the [deny] removals only (and grants past their until); the rest waits for --force");
        }
        return Ok(Exit::GuardRefused);
    }
    if plan.guard.refused {
        tracing::warn!(reasons = ?plan.guard.reasons, "publishing past the safety guard (--force)");
    }
    if !plan.writes() {
        tracing::info!("nothing changed; nothing written");
        remember(&prepared, None)?;
        return Ok(unknown_exit(&prepared));
    }
    // Load the signing key before writing anything: a missing key must not leave a half publish.
    let signer = load_signer(settings)?;
    let writing = Instant::now();
    let roots = within(
        deadline,
        "writing the access group files",
        write_groups(&prepared),
    )
    .await??;
    let owners_etag = match &plan.owners {
        Some(owners) => Some(
            within(
                deadline,
                "writing the owners object",
                write_owners(&prepared, owners),
            )
            .await??,
        ),
        None => None,
    };
    if let Some(list) = &plan.revoked {
        let write = crate::publisher::revocation::write(
            &prepared.deployment.store,
            &prepared.deployment.layout,
            list,
        );
        within(deadline, "writing the revocation list", write).await??;
    }
    within(deadline, "committing the index", async {}).await?;
    let committed = commit(&prepared, &plan.index, signer.as_ref(), roots).await?;
    remember(&prepared, Some((plan.index.generation, committed)))?;
    if let (Some(owners), Some(etag)) = (&plan.owners, owners_etag) {
        // The next run that needs the records reads them from here (see `local_copy`).
        prepared.owners_copy.put(&etag, owners);
    }
    let written = writing.elapsed();
    let pruning = Instant::now();
    prune(&prepared.deployment, &prepared.published.index, plan).await;
    count_s3(figures, &prepared);
    // With "prepared the plan", the time of each phase: the writes up to the commit, the prune.
    tracing::info!(
        generation = plan.index.generation,
        writes = figures.s3_writes,
        s3_write_s = written.as_secs_f64(),
        prune_s = pruning.elapsed().as_secs_f64(),
        s3_bytes_written = figures.s3_bytes_written,
        "published"
    );
    Ok(unknown_exit(&prepared))
}

/// Runs `work` unless the run's deadline passes first.
async fn within<F: Future>(
    deadline: Option<(Instant, Duration)>,
    doing: &str,
    work: F,
) -> anyhow::Result<F::Output> {
    let Some((at, length)) = deadline else {
        return Ok(work.await);
    };
    tokio::time::timeout_at(at.into(), work).await.map_err(|_| {
        anyhow::anyhow!(
            "the run passed its --deadline of {} while {doing}; nothing was published",
            humantime::format_duration(length)
        )
    })
}

fn load_signer(settings: &Settings) -> anyhow::Result<Option<Signer>> {
    settings
        .signing
        .as_ref()
        .map(|signing| Signer::load(&signing.key_file))
        .transpose()
        .context("loading the signing key")
}

/// Writes the group objects, `PARALLEL_WRITES` at a time. Each file is rendered again just before
/// its write (so at most `PARALLEL_WRITES` files are in memory) and must hash to what the plan
/// records: rendering is deterministic, and a file that is not what was planned is never written.
/// Returns the root of each written file's lookup, by SHA-256, for its seal (so the commit need
/// not render it a third time).
async fn write_groups(prepared: &Prepared) -> anyhow::Result<HashMap<String, String>> {
    let renderer = prepared.renderer();
    let access_groups = &prepared.gathered.resolution.access_groups;
    let mut roots = HashMap::new();
    let bodies = prepared.plan.groups_to_write().map(|(name, planned)| {
        let file = access_groups
            .get(name)
            .map(|m| renderer.file(name, m, prepared.carried.get(name)));
        match file {
            Some(file) if file.sha256 == planned => {
                let root = crate::bucket::group_lookup::Lookup::build(file.body.as_bytes()).root();
                roots.insert(file.sha256, root);
                Ok((name.clone(), file.body.into_bytes()))
            }
            _ => Err(anyhow::anyhow!(
                "access group {name} no longer renders to the planned file; nothing was committed"
            )),
        }
    });
    write_objects(prepared, bodies).await?;
    Ok(roots)
}

/// Writes group objects (name, body) to their content address, `PARALLEL_WRITES` at a time.
async fn write_objects(
    prepared: &Prepared,
    bodies: impl Iterator<Item = anyhow::Result<(String, Vec<u8>)>>,
) -> anyhow::Result<()> {
    let semaphore = Arc::new(Semaphore::new(PARALLEL_WRITES));
    let mut writes = JoinSet::new();
    let next = Index::empty();
    for body in bodies {
        let (name, body) = body?;
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        while let Some(done) = writes.try_join_next() {
            written(done)?;
        }
        let key = prepared
            .deployment
            .layout
            .group(&next, &name, &sha256_hex(&body));
        let store = prepared.deployment.store.clone();
        writes.spawn(async move {
            let _permit = permit;
            store.put(&key, body, Precondition::None).await
        });
    }
    while let Some(done) = writes.join_next().await {
        written(done)?;
    }
    Ok(())
}

fn written(done: Result<Result<String, StoreError>, tokio::task::JoinError>) -> anyhow::Result<()> {
    done.context("a write task failed")?
        .context("writing an access group object; the index was not committed")?;
    Ok(())
}

/// Writes the owners object; returns its ETag.
async fn write_owners(prepared: &Prepared, owners: &[u8]) -> anyhow::Result<String> {
    let key = prepared.deployment.layout.owners(&sha256_hex(owners));
    prepared
        .deployment
        .store
        .put(&key, owners.to_vec(), Precondition::None)
        .await
        .context("writing the owners object; the index was not committed")
}

/// Records in the publisher's head the index this run committed (`Some((generation, sha256))`),
/// or else the verified index it started from, with since when each unreadable home has been so.
fn remember(prepared: &Prepared, committed: Option<(u64, String)>) -> anyhow::Result<()> {
    let (generation, sha256) = match committed {
        Some(committed) => committed,
        None => match &prepared.published.sha256 {
            Some(sha256) => (prepared.published.index.generation, sha256.clone()),
            None => return Ok(()),
        },
    };
    crate::bucket::head::Head {
        generation,
        sha256,
        unknown_since: prepared.unknown_since.clone(),
    }
    .store(&prepared.head_path)
    .context("the index is committed, but this publisher could not record it")
}

/// The commit: `index.json`, sealed (and signed, with `signer`), written only if it is still the
/// one this run read. Returns the SHA-256 of the bytes committed.
async fn commit(
    prepared: &Prepared,
    index: &Index,
    signer: Option<&Signer>,
    roots: HashMap<String, String>,
) -> anyhow::Result<String> {
    // Per-group seals for the instances' logins (issue 24, `group_seal`).
    let index = crate::publisher::seal::sealed(prepared, index, signer, roots).await?;
    write_index(
        &prepared.deployment,
        prepared.published.etag.as_deref(),
        &index,
        signer,
        Some(&prepared.index_copy),
    )
    .await
}

/// The commit point: `index` signed (with `signer`) and written only if the bucket's index still
/// has `base_etag`, the ETag it had when this run read it (`None`: there was none). A publisher
/// that committed in between makes this fail with exit 75 and nothing of this run served.
async fn write_index<S: ObjectStore>(
    deployment: &Deployment<S>,
    base_etag: Option<&str>,
    index: &Index,
    signer: Option<&Signer>,
    copy: Option<&ObjectCopy>,
) -> anyhow::Result<String> {
    let sealed = index.seal(signer).context("sealing the index")?;
    let sha256 = sha256_hex(&sealed);
    let precondition = match base_etag {
        Some(etag) => Precondition::Matches(etag.to_owned()),
        None => Precondition::Absent,
    };
    match deployment
        .store
        .put(&deployment.layout.index(), sealed.clone(), precondition)
        .await
    {
        Ok(etag) => {
            // The next run reads the index from here while the bucket's keeps this ETag.
            if let Some(copy) = copy {
                copy.put(&etag, &sealed);
            }
            Ok(sha256)
        }
        Err(error @ StoreError::Conflict { .. }) => Err(coded(
            Exit::Busy,
            anyhow::Error::new(error).context(
                "another publisher committed an index during this run; nothing of this run is \
                 served. Run again",
            ),
        )),
        Err(error) => Err(anyhow::Error::new(error)
            .context("writing the index (the commit); instances serve the previous one")),
    }
}

/// After a commit: removes the objects no index names any more. For each group written or
/// deleted, everything under its prefix but the new and the previous object (an instance that
/// read the previous index a moment ago may still fetch it); the owners objects but the new and
/// the previous one; and, after a migration, the legacy manifest. Failures are logged, never
/// fatal: the commit stands, and a leftover object is served to no one. `previous` is the index
/// this run started from, `plan` what it committed.
async fn prune<S: ObjectStore>(deployment: &Deployment<S>, previous: &Index, plan: &Plan) {
    let (layout, store) = (&deployment.layout, &deployment.store);
    let next = &plan.index;
    let mut prefixes: Vec<(String, BTreeSet<String>)> = Vec::new();
    for (name, group) in &plan.groups {
        let touched = group.action != Action::Unchanged || plan.rewrite;
        if !touched || !group.rendered {
            continue;
        }
        // A deleted group keeps nothing: no index names it, so no instance fetches it.
        let generations = match group.action {
            Action::Delete => vec![],
            _ => vec![previous, next],
        };
        let keep: BTreeSet<String> = generations
            .into_iter()
            .filter(|index| !index.is_legacy())
            .filter_map(|index| {
                let entry = index.groups.get(name)?;
                Some(layout.group(index, name, &entry.sha256))
            })
            .collect();
        prefixes.push((layout.group_prefix(name), keep));
    }
    if plan.owners.is_some() {
        let keep = [previous, next]
            .into_iter()
            .filter_map(|index| index.owners.as_deref().map(|sha| layout.owners(sha)))
            .collect();
        prefixes.push((
            format!("{}{}", layout.prefix, crate::bucket::index::OWNERS_PREFIX),
            keep,
        ));
    }
    if plan.revoked.is_some() {
        prefixes.push(crate::publisher::revocation::keep(layout, [previous, next]));
    }
    let mut doomed: Vec<String> = Vec::new();
    if previous.is_legacy() {
        doomed.extend(layout.legacy_manifest());
    }
    // One LIST per prefix costs a request per group touched: 1,000 sequential LISTs after a cold
    // publish of 1,000 groups (34 s of a 45 s run against s3s-fs). Listing the whole prefix once
    // costs one request per 1,000 objects (about two objects a group), so it is used whenever it
    // is the fewer requests.
    let pages = (2 * previous.groups.len().max(next.groups.len()) + 2) / 1000 + 1;
    let mut everything = None;
    if prefixes.len() > pages {
        match store.list(&layout.prefix).await {
            Ok(mut keys) => {
                keys.sort();
                everything = Some(keys);
            }
            Err(error) => tracing::warn!("pruning {}: {error}", layout.prefix),
        }
    }
    for (prefix, keep) in prefixes {
        let keys = match &everything {
            Some(keys) => {
                let start = keys.partition_point(|key| key.as_str() < prefix.as_str());
                keys[start..]
                    .iter()
                    .take_while(|key| key.starts_with(&prefix))
                    .cloned()
                    .collect()
            }
            None => match store.list(&prefix).await {
                Ok(keys) => keys,
                Err(error) => {
                    tracing::warn!("pruning {prefix}: {error}");
                    continue;
                }
            },
        };
        doomed.extend(keys.into_iter().filter(|key| !keep.contains(key)));
    }
    for key in doomed {
        if let Err(error) = store.delete(&key).await {
            tracing::warn!("pruning {key}: {error}");
        }
    }
}

/// When the guard refuses: commits only the `[deny]` and expired-grant removals, as each affected group's published
/// file minus the denied people and keys. Returns the groups written.
async fn publish_denials(
    prepared: &Prepared,
    signer: Option<&Signer>,
    start: &crate::publisher::prepare::Start,
) -> anyhow::Result<Vec<String>> {
    let affected: Vec<String> = prepared
        .plan
        .groups
        .iter()
        .filter(|(name, group)| group.action == Action::Update && !prepared.unread.contains(*name))
        .filter(|(_, group)| {
            group
                .removed_users
                .iter()
                .any(crate::publisher::plan::unguarded)
                || group
                    .removed_fingerprints
                    .iter()
                    .any(|fp| prepared.denied.contains(&**fp))
        })
        .map(|(name, _)| name.clone())
        .collect();
    // A group whose published object is missing or altered has no removals the guard could
    // judge: it is written from a fresh render, so a [deny] reaches it whatever was deleted.
    let renderer = prepared.renderer();
    let access_groups = &prepared.gathered.resolution.access_groups;
    let mut index = prepared.published.index.clone();
    let mut bodies = Vec::new();
    let fresh =
        |name: &str, index: &mut Index, bodies: &mut Vec<(String, Vec<u8>)>| match access_groups
            .get(name)
        {
            Some(membership) => {
                let file = renderer.file(name, membership, prepared.carried.get(name));
                index.groups.insert(
                    name.to_owned(),
                    crate::bucket::index::IndexGroup {
                        sha256: file.sha256.clone(),
                        users: file.users.len(),
                        keys: file.keys.len(),
                        seal: None,
                    },
                );
                bodies.push((name.to_owned(), file.body.into_bytes()));
            }
            None => {
                index.groups.remove(name);
            }
        };
    for name in &prepared.unread {
        if prepared.plan.groups.get(name).is_some_and(|g| g.rendered) {
            fresh(name, &mut index, &mut bodies);
        }
    }
    if affected.is_empty()
        && bodies.is_empty()
        && prepared.unread.is_empty()
        && prepared.revoked_deny_only.is_none()
    {
        return Ok(affected);
    }
    let mut failed = None;
    let mut damaged = Vec::new();
    prepared
        .published
        .files(
            &prepared.deployment.store,
            &prepared.deployment.layout,
            affected,
            &Arc::new(prepared.renderer().known_lines()),
            |name, previous| {
                let previous = match previous {
                    Ok(previous) => previous,
                    Err(_) => {
                        damaged.push(name);
                        return;
                    }
                };
                let (Some(previous), Some(group)) = (previous, prepared.plan.groups.get(&name))
                else {
                    failed = Some(name);
                    return;
                };
                if let Some((body, entry)) =
                    crate::publisher::plan::deny_only(&name, group, &previous, &prepared.denied)
                {
                    index.groups.insert(name.clone(), entry);
                    bodies.push((name, body.into_bytes()));
                }
            },
        )
        .await?;
    if let Some(name) = failed {
        anyhow::bail!("access group {name} vanished from the index while applying [deny]");
    }
    for name in damaged {
        tracing::error!(group = %name, "its published object went missing during this run: written from a fresh render");
        fresh(&name, &mut index, &mut bodies);
    }
    let mut written: Vec<String> = bodies.iter().map(|(name, _)| name.clone()).collect();
    if written.is_empty()
        && index.groups == prepared.published.index.groups
        && prepared.revoked_deny_only.is_none()
    {
        remember(prepared, None)?;
        return Ok(written);
    }
    if index.is_legacy() {
        anyhow::bail!(
            "the bucket is in the legacy layout: publish once with --force to migrate it"
        );
    }
    write_objects(prepared, bodies.into_iter().map(Ok)).await?;
    if let Some(list) = &prepared.revoked_deny_only {
        crate::publisher::revocation::write(
            &prepared.deployment.store,
            &prepared.deployment.layout,
            list,
        )
        .await?;
        index.revoked = Some(sha256_hex(list));
        written.push("the revocation list".to_owned());
    }
    index.generation = prepared.published.next_generation(start.min_generation)?;
    index.not_after = prepared.plan.index.not_after.clone();
    index.deployment = prepared.plan.index.deployment.clone();
    index.canary = prepared.plan.index.canary.clone();
    index.previous = prepared.published.sha256.clone();
    let committed = commit(prepared, &index, signer, HashMap::new()).await?;
    remember(prepared, Some((index.generation, committed)))?;
    Ok(written)
}

/// The run's figures for the metrics file, from the plan.
fn count(figures: &mut RunMetrics, prepared: &Prepared) {
    let plan = &prepared.plan;
    figures.users = plan.people;
    figures.keys = plan.keys;
    figures.groups_changed = plan
        .groups
        .values()
        .filter(|group| group.action != Action::Unchanged)
        .count();
    figures.problems = plan.problems.len();
    figures.guard_refused = plan.guard.refused;
    figures.ldap_searches = prepared.gathered.directory_stats.searches;
    count_s3(figures, prepared);
}

/// The S3 figures so far (called again after the writes).
fn count_s3(figures: &mut RunMetrics, prepared: &Prepared) {
    use std::sync::atomic::Ordering::Relaxed;
    let counts = &prepared.deployment.store.counts;
    figures.s3_writes = counts.writes();
    figures.s3_bytes_read = counts.bytes_read.load(Relaxed);
    figures.s3_bytes_written = counts.bytes_written.load(Relaxed);
}

/// Exit 1 when some members' keys were unknown (only their published keys were kept), else
/// success.
fn unknown_exit(prepared: &Prepared) -> Exit {
    if prepared.gathered.has_unknown() {
        tracing::error!(
            "some members' keys could not be read; they keep only the keys published for them"
        );
        Exit::Failure
    } else {
        Exit::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::index::IndexGroup;
    use crate::bucket::memory_store::MemoryStore;
    use crate::publisher::plan::{GroupPlan, Guard};

    fn run<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn deployment() -> Deployment<MemoryStore> {
        Deployment::new(MemoryStore::new(), "keys", "ssh/")
    }

    fn index(generation: u64, groups: &[(&str, &str)]) -> Index {
        let mut index = Index {
            generation,
            ..Index::empty()
        };
        for (name, sha256) in groups {
            index.groups.insert(
                (*name).to_owned(),
                IndexGroup {
                    sha256: (*sha256).to_owned(),
                    users: 1,
                    keys: 1,
                    seal: None,
                },
            );
        }
        index
    }

    fn generation(store: &MemoryStore, key: &str) -> u64 {
        Index::open(&store.body(key).unwrap(), None)
            .unwrap()
            .generation
    }

    #[test]
    fn the_commit_writes_only_over_the_index_this_run_read() {
        let deployment = deployment();
        let (store, key) = (&deployment.store, deployment.layout.index());
        let read = store.insert(&key, index(1, &[]).seal(None).unwrap());
        // Another publisher commits generation 2 while this run prepares its own.
        let theirs = index(2, &[("web", "aa")]).seal(None).unwrap();
        let winner = store.insert(&key, theirs.clone());
        let ours = index(2, &[("web", "bb")]);
        let error = run(write_index(&deployment, Some(&read), &ours, None, None)).unwrap_err();
        assert_eq!(Exit::for_error(&error), Exit::Busy, "{error:#}");
        assert!(format!("{error:#}").contains("another publisher committed"));
        // Instances go on reading the winner's index, byte for byte.
        assert_eq!(store.body(&key).unwrap(), theirs);
        // Over the index it did read, the commit stands, and returns the SHA-256 of what it wrote.
        let sha256 = run(write_index(
            &deployment,
            Some(&winner),
            &index(3, &[]),
            None,
            None,
        ))
        .unwrap();
        assert_eq!(sha256, sha256_hex(&store.body(&key).unwrap()));
        assert_eq!(generation(store, &key), 3);
    }

    #[test]
    fn a_first_commit_loses_to_one_made_meanwhile() {
        let deployment = deployment();
        let (store, key) = (&deployment.store, deployment.layout.index());
        run(write_index(&deployment, None, &index(1, &[]), None, None)).unwrap();
        assert_eq!(generation(store, &key), 1);
        // A second publisher that also found no index must not overwrite the first one's.
        let error = run(write_index(
            &deployment,
            None,
            &index(1, &[("web", "aa")]),
            None,
            None,
        ))
        .unwrap_err();
        assert_eq!(Exit::for_error(&error), Exit::Busy, "{error:#}");
        assert_eq!(store.body(&key).unwrap(), index(1, &[]).seal(None).unwrap());
        // Any other failure of the write is a plain failure, not "run again".
        store.fail(&key);
        let etag = store.etag(&key);
        let error = run(write_index(
            &deployment,
            etag.as_deref(),
            &index(2, &[]),
            None,
            None,
        ))
        .unwrap_err();
        assert_eq!(Exit::for_error(&error), Exit::Failure, "{error:#}");
    }

    fn group(action: Action, next: Option<&str>) -> GroupPlan {
        GroupPlan {
            action,
            added_users: Vec::new(),
            removed_users: Vec::new(),
            added_fingerprints: Vec::new(),
            removed_fingerprints: Vec::new(),
            next: next.map(|sha256| IndexGroup {
                sha256: sha256.to_owned(),
                users: 1,
                keys: 1,
                seal: None,
            }),
            rendered: true,
            users_before: 1,
        }
    }

    fn plan(index: Index, groups: Vec<(&str, GroupPlan)>) -> Plan {
        Plan {
            groups: groups
                .into_iter()
                .map(|(name, group)| (name.to_owned(), group))
                .collect(),
            problems: Vec::new(),
            guard: Guard::default(),
            index,
            owners: None,
            revoked: None,
            resign: false,
            rewrite: false,
            canary_changed: false,
            people: 0,
            keys: 0,
        }
    }

    #[test]
    fn prune_keeps_what_the_previous_and_the_next_index_name() {
        let deployment = deployment();
        let store = &deployment.store;
        let mut previous = index(1, &[("web", "w1"), ("db", "d1"), ("ops", "o1")]);
        previous.owners = Some("n1".into());
        previous.revoked = Some("r1".into());
        let mut next = index(2, &[("web", "w2"), ("ops", "o1")]);
        next.owners = Some("n2".into());
        next.revoked = Some("r2".into());
        let mut plan = plan(
            next,
            vec![
                ("web", group(Action::Update, Some("w2"))),
                ("db", group(Action::Delete, None)),
                ("ops", group(Action::Unchanged, Some("o1"))),
            ],
        );
        plan.owners = Some(b"{}".to_vec());
        plan.revoked = Some(Vec::new());
        let kept = [
            "ssh/index.json",
            "ssh/web/w1",
            "ssh/web/w2",
            // An untouched group is not pruned, not even of an old leftover.
            "ssh/ops/o0",
            "ssh/ops/o1",
            "ssh/_keyhole/owners/n1.json",
            "ssh/_keyhole/owners/n2.json",
            "ssh/_keyhole/revoked/r1",
            "ssh/_keyhole/revoked/r2",
            "ssh/notes.txt",
            "ssh/web-old/w0",
            "elsewhere/web/w0",
        ];
        let pruned = [
            "ssh/web/w0",
            // A deleted group keeps nothing.
            "ssh/db/d0",
            "ssh/db/d1",
            "ssh/_keyhole/owners/n0.json",
            "ssh/_keyhole/revoked/r0",
        ];
        for key in kept.iter().chain(&pruned) {
            store.insert(key, "x");
        }
        // Four prefixes: listed once, the whole prefix.
        run(prune(&deployment, &previous, &plan));
        let mut expected: Vec<&str> = kept.to_vec();
        expected.sort();
        assert_eq!(store.keys(), expected);
        assert_eq!(
            store
                .counts
                .lists
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn prune_of_one_group_lists_only_its_prefix_and_survives_a_failed_delete() {
        let deployment = deployment();
        let store = &deployment.store;
        let previous = index(1, &[("web", "w1")]);
        let plan = plan(
            index(2, &[("web", "w2")]),
            vec![("web", group(Action::Update, Some("w2")))],
        );
        for key in [
            "ssh/web/w0",
            "ssh/web/w00",
            "ssh/web/w1",
            "ssh/web/w2",
            "ssh/web-old/w0",
        ] {
            store.insert(key, "x");
        }
        store.fail("ssh/web/w0");
        run(prune(&deployment, &previous, &plan));
        assert_eq!(
            store.keys(),
            ["ssh/web-old/w0", "ssh/web/w0", "ssh/web/w1", "ssh/web/w2"]
        );
        assert_eq!(
            store
                .counts
                .lists
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            store
                .counts
                .deletes
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }
}
