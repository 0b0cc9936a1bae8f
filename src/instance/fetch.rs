//! An instance's refresh from S3 outside `keyhole refresh`'s own loop: one bounded attempt on a
//! single-threaded runtime (a login whose cache is too old, `doctor`'s throwaway refresh), and
//! the outage back-off that keeps logins fast while S3 is unreachable.
//!
//! After a failed refresh, a login whose every access group still has a copy within `max_stale`
//! serves it without trying S3 again for [`OUTAGE_BACKOFF`], so only one login per back-off period
//! pays `fetch_timeout`. `keyhole refresh` still tries every time, and its success ends the
//! back-off at once. The back-off is a one-line file in `cache_dir`; if it cannot be written,
//! logins just keep trying.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::bucket::deployment::Deployment;
use crate::bucket::index::Index;
use crate::bucket::signing::Verifier;
use crate::bucket::store::Timeouts;
use crate::instance::{self, Cache};
use crate::settings::Settings;

/// After a failed refresh, how long logins serve a servable cache without trying S3 again.
pub const OUTAGE_BACKOFF: Duration = Duration::from_secs(60);

/// The file in `cache_dir` that holds when the last refresh failed (Unix milliseconds).
const BACKOFF_FILE: &str = "refresh-failed-at";

fn backoff_file(cache_dir: &Path) -> PathBuf {
    cache_dir.join(BACKOFF_FILE)
}

/// True while a refresh failed less than [`OUTAGE_BACKOFF`] ago (a clock that went back counts
/// as expired, so a wrong time never stops refreshes for long).
pub fn backing_off(cache_dir: &Path, now: SystemTime) -> bool {
    let Ok(text) = std::fs::read_to_string(backoff_file(cache_dir)) else {
        return false;
    };
    let Ok(failed_at) = text.trim().parse::<u64>() else {
        return false;
    };
    let now = instance::unix_millis(now);
    now >= failed_at && Duration::from_millis(now - failed_at) < OUTAGE_BACKOFF
}

fn record_failure(cache_dir: &Path, now: SystemTime) {
    let written = std::fs::write(
        backoff_file(cache_dir),
        format!("{}\n", instance::unix_millis(now)),
    );
    if let Err(error) = written {
        tracing::debug!("could not record the failed refresh (logins keep trying): {error}");
    }
}

fn clear_failure(cache_dir: &Path) {
    let _ = std::fs::remove_file(backoff_file(cache_dir));
}

/// The key a signed index must verify with (`instance.verify_key`), if any.
pub fn verifier(instance: &crate::settings::InstanceSettings) -> anyhow::Result<Option<Verifier>> {
    instance
        .verify_key
        .as_deref()
        .map(Verifier::parse)
        .transpose()
        .context("instance.verify_key")
}

/// The deployment this host reads, as a signed index must name it.
pub fn deployment(settings: &Settings) -> anyhow::Result<String> {
    let s3 = settings.s3()?;
    Ok(crate::bucket::index::deployment(&s3.bucket, &s3.prefix))
}

/// Refreshes the cache from S3, all of it bounded by `timeout`; returns the index now cached.
///
/// The only place an instance command starts an async runtime, and a single-threaded one: a
/// login served from a fresh cache never gets here, and a refresh makes one request at a time.
pub fn fetch(
    settings: &Settings,
    cache: &Cache,
    timeout: std::time::Duration,
) -> anyhow::Result<Index> {
    let instance = settings.instance()?;
    let s3 = settings.s3()?;
    let verifier = verifier(instance)?;
    let work = async {
        let timeouts = Timeouts {
            connect: timeout,
            operation: timeout,
            attempts: 1,
        };
        let deployment = Deployment::connect(s3, timeouts).await;
        instance::refresh(
            &deployment.store,
            &deployment.layout,
            &deployment.name,
            cache,
            instance,
            verifier.as_ref(),
            SystemTime::now(),
        )
        .await
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (result, outage) = runtime.block_on(async {
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => {
                let outage = result.as_ref().err().is_some_and(unreachable);
                (result, outage)
            }
            Err(_) => (
                Err(anyhow::anyhow!("S3 did not answer within {timeout:?}")),
                true,
            ),
        }
    });
    // Only an outage starts the back-off: an index refused for what it says (a rollback, a bad
    // signature) comes from a reachable S3, and the next login may well find it fixed.
    match &result {
        Ok(_) => clear_failure(&instance.cache_dir),
        Err(_) if outage => record_failure(&instance.cache_dir, SystemTime::now()),
        Err(_) => {}
    }
    result
}

/// Whether a failed refresh failed to reach S3 (as opposed to refusing what S3 said).
fn unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<crate::bucket::store::StoreError>()
            .is_some()
    })
}

/// What this host trusted last, for `verify` and `whois` to apply as an instance would: the
/// publisher's head (beside `safety.lock_file`) when there is one, else an instance's cached
/// index; `None` when this host has neither.
pub fn local_seen(settings: &Settings) -> anyhow::Result<Option<crate::bucket::trust::Seen>> {
    let head_path = crate::bucket::head::path_beside(&settings.safety.lock_file);
    if let Some(head) = crate::bucket::head::Head::load(&head_path)? {
        return Ok(Some(crate::bucket::trust::Seen {
            generation: head.generation,
            sha256: head.sha256,
            format: crate::bucket::index::FORMAT,
            source: format!("this publisher's head {}", head_path.display()),
        }));
    }
    let Ok(instance) = settings.instance() else {
        return Ok(None);
    };
    let cache = Cache::new(&instance.cache_dir);
    Ok(cache
        .index()
        .ok()
        .flatten()
        .map(|(meta, index)| crate::bucket::trust::Seen {
            generation: meta.generation,
            sha256: meta.sha256,
            format: index.format,
            source: format!(
                "the instance's cached index in {}",
                instance.cache_dir.display()
            ),
        }))
}
