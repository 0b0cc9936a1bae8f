//! `keyhole publish`: writes the changed access group files, the instance index and then the
//! manifest.
//!
//! Order matters for never losing access: group files first (in parallel, bounded, each rendered
//! again and checked against the planned hash), then `index.json` (what instances read), then the
//! manifest with a conditional write (a concurrent publisher elsewhere makes it fail: exit 75),
//! then its signature, and only then the deletion of access groups pruned from the policy, so
//! neither the index nor the manifest ever names an object that is gone. Any failure before the
//! manifest leaves the published manifest as it was, so the next run sees the same changes and
//! writes them all again; instances check each file against the index and keep serving what they
//! had. The manifest write is the commit point: `--deadline` can stop a run before it, never in
//! the middle of committing.
use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::plan::Prepared;
use super::{Format, GlobalArgs};
use crate::exit::{EXIT_CODES_HELP, Exit, coded};
use crate::lock::PublishLock;
use crate::metrics::{self, RunMetrics};
use crate::plan::Action;
use crate::render::RenderedGroup;
use crate::settings::Settings;
use crate::signing::Signer;
use crate::store::{ObjectStore, Precondition, StoreError};

/// Group files written at the same time.
const PARALLEL_WRITES: usize = 8;

/// Publish the access group files and the manifest to S3: only what changed, never past the
/// safety guard (unless --force), groups removed from the policy pruned.
///
/// A member whose home cannot be read leaves their access groups as published, and the run exits
/// 1 after publishing the rest.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Publish even if the safety guard refuses.
    #[arg(long)]
    force: bool,

    /// Only publish these access groups (repeatable); the others stay as published.
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,

    /// Rewrite every access group file from a fresh render and bump the manifest generation, even
    /// if nothing changed (after tampering or a manual edit in the bucket).
    #[arg(long)]
    rewrite_all: bool,

    /// Give up (exit 1, nothing published) if the run has not reached the manifest write within
    /// this long, e.g. "4m".
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,

    /// Write a Prometheus textfile with this run's figures here (atomically).
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,

    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let mut figures = RunMetrics::default();
    let result = publish(&args, global, started, &mut figures).await;
    if let Some(path) = &args.metrics_file {
        figures.exit_code = match &result {
            Ok(exit) => *exit as u8,
            Err(error) => Exit::for_error(error) as u8,
        };
        figures.ldap_bind_refused = result
            .as_ref()
            .is_err_and(crate::directory::is_bind_refusal);
        figures.duration = started.elapsed();
        figures.finished_at = Some(SystemTime::now());
        if let Err(error) = metrics::write(path, &figures) {
            tracing::error!("could not write the metrics file: {error:#}");
        }
    }
    result
}

async fn publish(
    args: &Args,
    global: &GlobalArgs,
    started: Instant,
    figures: &mut RunMetrics,
) -> anyhow::Result<Exit> {
    let deadline = args.deadline.map(|d| (started + d, d));
    let settings = Settings::load(global.config.as_deref())?;
    let _lock = PublishLock::acquire(&settings.safety.lock_file)?;
    let selection: BTreeSet<String> = args.groups.iter().cloned().collect();
    let selected = (!selection.is_empty()).then_some(&selection);
    let mut prepared = within(
        deadline,
        "reading AD, the homes and S3",
        super::plan::prepare(&settings, selected),
    )
    .await??;
    for name in &selection {
        if !prepared.plan.groups.contains_key(name) {
            return Err(coded(
                Exit::Usage,
                anyhow::anyhow!("--group {name}: no such access group in the policy or the bucket"),
            ));
        }
    }
    if args.rewrite_all {
        prepared.plan.rewrite_all();
    }
    count(figures, &prepared);
    let plan = &prepared.plan;
    print!("{}", super::plan::format_plan(plan, args.format));

    if plan.guard.refused && !args.force {
        tracing::error!(reasons = ?plan.guard.reasons, "the safety guard refused this publish; nothing was written");
        return Ok(Exit::GuardRefused);
    }
    if plan.guard.refused {
        tracing::warn!(reasons = ?plan.guard.reasons, "publishing past the safety guard (--force)");
    }
    if !plan.writes() {
        tracing::info!("nothing changed; nothing written");
        return Ok(unknown_exit(&prepared));
    }
    // Load the signing key before writing anything: a missing key must not leave a half publish.
    let signer = settings
        .signing
        .as_ref()
        .map(|signing| Signer::load(&signing.key_file))
        .transpose()
        .context("loading the signing key")?;
    let prefix = &settings.s3()?.prefix;
    within(
        deadline,
        "writing the access group files",
        write_groups(&prepared, prefix),
    )
    .await??;
    commit(&prepared, prefix, signer.as_ref()).await?;
    figures.s3_writes = prepared.store.counts.writes();
    tracing::info!(
        generation = plan.manifest.generation,
        writes = figures.s3_writes,
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

/// Writes the group files, `PARALLEL_WRITES` at a time. Each file is rendered again just before
/// its write (so at most `PARALLEL_WRITES` files are in memory) and must hash to what the plan
/// and the manifest record: rendering is deterministic, and a file that is not what was planned
/// is never written.
async fn write_groups(prepared: &Prepared, prefix: &str) -> anyhow::Result<()> {
    let renderer = super::plan::renderer(&prepared.gathered);
    let access_groups = &prepared.gathered.resolution.access_groups;
    let semaphore = Arc::new(Semaphore::new(PARALLEL_WRITES));
    let mut writes = JoinSet::new();
    for (name, planned) in prepared.plan.groups_to_write() {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        while let Some(done) = writes.try_join_next() {
            written(done)?;
        }
        let body = match access_groups.get(name).map(|m| renderer.group(name, m)) {
            Some(RenderedGroup::Ready(file)) if file.sha256 == planned => file.body.into_bytes(),
            _ => anyhow::bail!(
                "access group {name} no longer renders to the planned file; nothing more was written"
            ),
        };
        let key = format!("{prefix}{name}/authorized_keys");
        let store = prepared.store.clone();
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
        .context("writing an access group file; the manifest was not updated")?;
    Ok(())
}

/// The commit: the instance index, the manifest (conditionally), its signature, then the pruning
/// of removed groups.
///
/// The index goes before the manifest: the group files it describes are already written, and a
/// failed index write stops the run before the manifest, so the next run still sees changes and
/// writes everything again. Written after the manifest, a failed index write would stay stale,
/// because the next run would find nothing changed and write nothing.
async fn commit(prepared: &Prepared, prefix: &str, signer: Option<&Signer>) -> anyhow::Result<()> {
    let store = &prepared.store;
    write_index(prepared, prefix, signer).await?;
    let manifest = prepared.plan.manifest.to_json();
    let signature = signer
        .map(|signer| signer.sign(&manifest))
        .transpose()
        .context("signing the manifest")?;
    let precondition = match &prepared.manifest_etag {
        Some(etag) => Precondition::Matches(etag.clone()),
        None => Precondition::Absent,
    };
    match store
        .put(&prepared.manifest_key, manifest, precondition)
        .await
    {
        Ok(_) => {}
        Err(error @ StoreError::Conflict { .. }) => {
            return Err(coded(
                Exit::Busy,
                anyhow::Error::new(error)
                    .context("another publisher wrote the manifest during this run; run again"),
            ));
        }
        Err(error) => return Err(anyhow::Error::new(error).context("writing the manifest")),
    }
    if let Some(signature) = signature {
        let key = format!("{}.sig", prepared.manifest_key);
        store
            .put(&key, signature.into_bytes(), Precondition::None)
            .await
            .context("writing the manifest signature")?;
    }
    for (name, group) in &prepared.plan.groups {
        if group.action == Action::Delete {
            let key = format!("{prefix}{name}/authorized_keys");
            store.delete(&key).await.with_context(|| {
                format!("pruning access group {name} (the manifest no longer lists it)")
            })?;
        }
    }
    Ok(())
}

/// Writes `{prefix}index.json`: what instances read instead of the manifest, sealed (and signed,
/// with `signer`) in one object.
async fn write_index(
    prepared: &Prepared,
    prefix: &str,
    signer: Option<&Signer>,
) -> anyhow::Result<()> {
    let sealed = crate::index::Index::of(&prepared.plan.manifest)
        .seal(signer)
        .context("sealing the instance index")?;
    let key = format!("{prefix}{}", crate::instance::INDEX_OBJECT);
    prepared
        .store
        .put(&key, sealed, Precondition::None)
        .await
        .context("writing the instance index; the manifest was not updated")?;
    Ok(())
}

/// The run's figures for the metrics file, from the plan.
fn count(figures: &mut RunMetrics, prepared: &Prepared) {
    let plan = &prepared.plan;
    let users: BTreeSet<&str> = plan
        .manifest
        .groups
        .values()
        .flat_map(|entry| entry.users.iter().map(String::as_str))
        .collect();
    figures.users = users.len();
    figures.keys = plan.manifest.fingerprints.len();
    figures.groups_changed = plan
        .groups
        .values()
        .filter(|group| group.action != Action::Unchanged)
        .count();
    figures.problems = plan.problems.len();
    figures.guard_refused = plan.guard.refused;
    figures.ldap_searches = prepared.gathered.directory_stats.searches;
}

/// Exit 1 when some members' keys were unknown (their groups were held), else success.
fn unknown_exit(prepared: &Prepared) -> Exit {
    if prepared.gathered.has_unknown() {
        tracing::error!(
            "some members' keys could not be read; their access groups were left as published"
        );
        Exit::Failure
    } else {
        Exit::Success
    }
}
