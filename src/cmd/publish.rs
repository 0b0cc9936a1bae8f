//! `keyhole publish`: parse, run the commit protocol ([`crate::publisher::publish`]), print.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::{Format, GlobalArgs, print_plan};
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::metrics::{self, RunMetrics};
use crate::publisher::gather::Reading;
use crate::publisher::prepare::Start;
use crate::publisher::publish::{Request, publish};

/// Publish the access group files and the signed index to S3: only what changed, never past the
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

    /// Rewrite every access group file from a fresh render and bump the index generation, even
    /// if nothing changed (after tampering or a manual edit in the bucket).
    #[arg(long)]
    rewrite_all: bool,

    /// The next index's generation is at least N. Needed only when index.json was lost while the
    /// bucket still holds keyhole objects: N must be above the generation instances last served.
    #[arg(long, value_name = "N")]
    min_generation: Option<u64>,

    /// Publish over the index in the bucket whose envelope has this SHA-256 although this
    /// publisher's head (beside the lock file) says it is not the current one (an index restored
    /// on purpose). Logged.
    #[arg(long, value_name = "SHA256")]
    accept_index: Option<String>,

    /// Publish over an index past its not_after (the publisher was stopped longer than the
    /// signing validity). Logged.
    #[arg(long)]
    accept_expired: bool,

    /// Migrate a bucket whose index is in the legacy format 1 (check it with `keyhole verify`
    /// first: a format-1 index names no deployment).
    #[arg(long)]
    migrate: bool,

    /// Read the whole directory and every member's home, not only what changed since the last
    /// run (see `ldap.full_read_interval` and `homes.full_read_interval`).
    #[arg(long)]
    full: bool,

    #[command(flatten)]
    clock: super::TestClock,

    /// Give up (exit 1, nothing published) if the run has not reached the index write (the
    /// commit) within this long, e.g. "4m".
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
    let result = publish_with(&args, global, started, &mut figures).await;
    if let Some(path) = &args.metrics_file {
        figures.exit_code = match &result {
            Ok(exit) => *exit as u8,
            Err(error) => Exit::for_error(error) as u8,
        };
        figures.ldap_bind_refused = result
            .as_ref()
            .is_err_and(crate::publisher::directory::is_bind_refusal);
        figures.duration = started.elapsed();
        figures.finished_at = Some(SystemTime::now());
        if let Err(error) = metrics::write(path, &figures) {
            tracing::error!("could not write the metrics file: {error:#}");
        }
    }
    result
}

async fn publish_with(
    args: &Args,
    global: &GlobalArgs,
    started: Instant,
    figures: &mut RunMetrics,
) -> anyhow::Result<Exit> {
    let settings = global.settings()?;
    let request = Request {
        selection: args.groups.iter().cloned().collect::<BTreeSet<String>>(),
        start: Start {
            min_generation: args.min_generation,
            now: args.clock.now(),
            accept_index: args.accept_index.clone(),
            accept_expired: args.accept_expired,
            migrate: args.migrate,
            rewrite_all: args.rewrite_all,
            directory: Reading {
                force_full: args.full,
                keep_state: true,
            },
        },
        force: args.force,
        deadline: args.deadline,
    };
    publish(&settings, &request, started, figures, |plan| {
        // The report is for people: a closed stdout (`publish | head`) must not stop the publish.
        if let Err(error) = print_plan(plan, args.format) {
            tracing::warn!("could not write the plan report: {error:#}");
        }
    })
    .await
}
