//! `keyhole refresh`: brings the instance's key cache up to date ahead of logins, from a timer.
//!
//! With `access_groups_tag` / `access_groups_user_data` it first asks the EC2 instance metadata
//! service which access groups this host serves and caches the answer (the login path only
//! reads that cache, see [`crate::instance::host_groups`]). Then it fetches the index and this
//! host's group files. It exits non-zero whenever something needs an operator, after doing all
//! it can: IMDS did not answer (the last resolved groups stay in force), the host never resolved
//! its groups, or a group it should serve is not published. Monitoring of the timer's unit then
//! notices long before the cache goes stale.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
pub struct Args {
    /// Write a Prometheus textfile here (for node_exporter's textfile collector): the host's
    /// access groups, whether its EC2 tag was found absent, and when a refresh last succeeded.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = global.settings()?;
    let instance = settings.instance()?;
    // The same check as the login path: a cache someone else can write to is never filled.
    let cache = Cache::open(&instance.cache_dir)?;
    let mut figures = Figures::default();
    let result = refresh(&settings, &cache, &mut figures);
    if let Some(path) = &args.metrics_file {
        let succeeded = matches!(result, Ok(Exit::Success));
        if let Err(error) = figures.write(path, succeeded) {
            tracing::warn!("could not write the metrics file: {error:#}");
        }
    }
    result
}

fn refresh(settings: &Settings, cache: &Cache, figures: &mut Figures) -> anyhow::Result<Exit> {
    let instance = settings.instance()?;
    let cache = cache.clone();
    let mut exit = Exit::Success;

    let mut never_resolved = None;
    if let Some(source) = &instance.imds {
        match host_groups::refresh(&cache, source, SystemTime::now())? {
            Ok(resolved) => {
                figures.tag_absent = resolved.source.ends_with("(absent)");
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
    figures.groups = Some(groups.len());
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

    let index = crate::instance::fetch::fetch(settings, &cache, REFRESH_TIMEOUT)?;
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
    crate::instance::revoked::update(settings, &index)?;
    tracing::info!(generation = index.generation, groups = ?groups, "key cache is current");
    if never_resolved.is_some() || !missing.is_empty() {
        exit = Exit::Failure;
    }
    Ok(exit)
}

fn round_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

/// What `--metrics-file` reports.
#[derive(Debug, Default)]
struct Figures {
    /// This host's access groups (static and from EC2), once known.
    groups: Option<usize>,
    /// IMDS answered that the access groups tag is not there (the grant was removed).
    tag_absent: bool,
}

impl Figures {
    fn write(&self, path: &Path, succeeded: bool) -> anyhow::Result<()> {
        const LAST_SUCCESS: &str = "keyhole_refresh_last_success_timestamp_seconds";
        let previous = std::fs::read_to_string(path).ok().and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix(LAST_SUCCESS)?.trim().parse::<f64>().ok())
        });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut text = String::new();
        text.push_str("# HELP keyhole_refresh_success Whether the last keyhole refresh succeeded.\n# TYPE keyhole_refresh_success gauge\n");
        text.push_str(&format!(
            "keyhole_refresh_success {}\n",
            u8::from(succeeded)
        ));
        if let Some(last) = if succeeded { Some(now) } else { previous } {
            text.push_str(&format!("# HELP {LAST_SUCCESS} When a keyhole refresh last succeeded.\n# TYPE {LAST_SUCCESS} gauge\n{LAST_SUCCESS} {last:.3}\n"));
        }
        if let Some(groups) = self.groups {
            text.push_str(&format!("# HELP keyhole_instance_access_groups This host's access groups.\n# TYPE keyhole_instance_access_groups gauge\nkeyhole_instance_access_groups {groups}\n"));
        }
        text.push_str(&format!("# HELP keyhole_instance_access_tag_absent 1 when IMDS answered that the access groups tag is not set (access revoked).\n# TYPE keyhole_instance_access_tag_absent gauge\nkeyhole_instance_access_tag_absent {}\n", u8::from(self.tag_absent)));
        crate::metrics::write_atomically(path, &text)
    }
}
