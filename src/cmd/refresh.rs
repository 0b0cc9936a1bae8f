//! `keyhole refresh`: brings the instance's key cache up to date ahead of logins, from a timer.
//!
//! With `access_groups_tag` / `access_groups_user_data` it first asks the EC2 instance metadata
//! service which access groups this host serves and caches the answer (the login path only
//! reads that cache, see [`crate::instance::host_groups`]). Then it fetches the index and this
//! host's group files. It exits non-zero whenever something needs an operator, after doing all
//! it can: IMDS did not answer (the last resolved groups stay in force), the host never resolved
//! its groups, or a group it should serve is not published. Monitoring of the timer's unit then
//! notices long before the cache goes stale.

use std::time::{Duration, SystemTime};

use super::GlobalArgs;
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::instance::{Cache, host_groups};
use crate::settings::Settings;

/// How long a timer-driven refresh may take: nobody is waiting at a login prompt.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(60);

/// Bring this host's key cache up to date (for a systemd timer). Exits non-zero when it cannot,
/// so monitoring notices before the cache goes stale.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {}

pub fn run(_args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = Settings::load(global.config.as_deref())?;
    let instance = settings.instance()?;
    let cache = Cache::new(&instance.cache_dir);
    let mut exit = Exit::Success;

    let mut never_resolved = None;
    if let Some(source) = &instance.imds {
        match host_groups::refresh(&cache, source, SystemTime::now())? {
            Ok(resolved) => {
                tracing::info!(groups = ?resolved.groups, source = %resolved.source, "resolved this host's access groups");
                if !resolved.invalid.is_empty() {
                    tracing::error!(names = ?resolved.invalid, source = %resolved.source, "not access group names (1 to 63 of a-z 0-9 . _ -): ignored");
                    exit = Exit::Failure;
                }
            }
            Err(failure) => match host_groups::read_resolved(&cache)? {
                Some(previous) => {
                    tracing::warn!(
                        groups = ?previous.groups,
                        source = %previous.source,
                        resolved = %humantime::format_duration(round_seconds(previous.age(SystemTime::now()))),
                        "could not resolve this host's access groups, keeping the last resolved ones: {failure}"
                    );
                    exit = Exit::Failure;
                }
                None => never_resolved = Some(failure),
            },
        }
    }

    let groups = host_groups::current(&cache, instance)?;
    let never_resolved = never_resolved.map(|failure| {
        let fix = instance
            .imds
            .as_ref()
            .map(host_groups::how_to_fix)
            .unwrap_or_default();
        format!("this host has never resolved its access groups from EC2: {failure}. To fix: {fix}")
    });
    if groups.is_empty() {
        anyhow::bail!(
            "this host has no access groups and serves no keys. {}",
            never_resolved
                .as_deref()
                .unwrap_or("Its EC2 source names none (an empty value)")
        );
    }
    if let Some(message) = &never_resolved {
        tracing::error!("{message}; serving only [instance] access_groups until then");
    }

    let index = super::authorized_keys::fetch(&settings, &cache, REFRESH_TIMEOUT)?;
    let missing: Vec<&String> = groups
        .iter()
        .filter(|group| !index.groups.contains_key(*group))
        .collect();
    for group in &missing {
        tracing::error!(
            group = %group,
            "this host's access group is not in the published index: it grants no keys here (a misspelt tag or settings entry, or a group not yet in the policy)"
        );
    }
    crate::instance::revoked::update(&settings, &index)?;
    tracing::info!(generation = index.generation, groups = ?groups, "key cache is current");
    if never_resolved.is_some() || !missing.is_empty() {
        exit = Exit::Failure;
    }
    Ok(exit)
}

fn round_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}
