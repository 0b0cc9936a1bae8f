//! `keyhole publish`: writes the changed access group files and then the manifest.
//!
//! Order matters for never losing access: group files first (in parallel, bounded), then the
//! manifest with a conditional write (a concurrent publisher elsewhere makes it fail: exit 75),
//! and only then the deletion of access groups pruned from the policy, so the manifest never
//! names an object that is gone. Any failure before the manifest leaves the published manifest as
//! it was; instances check each file against it and keep serving what they had.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Format, GlobalArgs};
use crate::exit::{EXIT_CODES_HELP, Exit, coded};
use crate::lock::PublishLock;
use crate::plan::Action;
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

    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = Settings::load(global.config.as_deref())?;
    let _lock = PublishLock::acquire(&settings.safety.lock_file)?;
    let selection: BTreeSet<String> = args.groups.iter().cloned().collect();
    let prepared =
        super::plan::prepare(&settings, (!selection.is_empty()).then_some(&selection)).await?;
    for name in &selection {
        if !prepared.plan.groups.contains_key(name) {
            return Err(coded(
                Exit::Usage,
                anyhow::anyhow!("--group {name}: no such access group in the policy or the bucket"),
            ));
        }
    }
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

    let s3 = settings.s3()?;
    let store = &prepared.store;
    let semaphore = Arc::new(Semaphore::new(PARALLEL_WRITES));
    let mut writes = JoinSet::new();
    for (name, group) in &plan.groups {
        let Some(file) = &group.file else { continue };
        let key = format!("{}{name}/authorized_keys", s3.prefix);
        let body = file.body.clone().into_bytes();
        let store = store.clone();
        let semaphore = Arc::clone(&semaphore);
        writes.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            store.put(&key, body, Precondition::None).await
        });
    }
    while let Some(result) = writes.join_next().await {
        result
            .context("a write task failed")?
            .context("writing an access group file; the manifest was not updated")?;
    }

    let precondition = match &prepared.manifest_etag {
        Some(etag) => Precondition::Matches(etag.clone()),
        None => Precondition::Absent,
    };
    let manifest = plan.manifest.to_json();
    let signature = signer
        .as_ref()
        .map(|signer| signer.sign(&manifest))
        .transpose()
        .context("signing the manifest")?;
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

    for (name, group) in &plan.groups {
        if group.action == Action::Delete {
            let key = format!("{}{name}/authorized_keys", s3.prefix);
            store.delete(&key).await.with_context(|| {
                format!("pruning access group {name} (the manifest no longer lists it)")
            })?;
        }
    }
    tracing::info!(
        generation = plan.manifest.generation,
        writes = store.counts.writes(),
        "published"
    );
    Ok(unknown_exit(&prepared))
}

/// Exit 1 when some members' keys were unknown (their groups were held), else success.
fn unknown_exit(prepared: &super::plan::Prepared) -> Exit {
    if prepared.gathered.has_unknown() {
        tracing::error!(
            "some members' keys could not be read; their access groups were left as published"
        );
        Exit::Failure
    } else {
        Exit::Success
    }
}
