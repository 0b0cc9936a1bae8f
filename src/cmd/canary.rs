//! `keyhole canary rotate | probe | run`: the audit canary (see `canary`).
//!
//! `run` is the scheduled job: rotate, publish (the same binary's `publish`, with the same
//! settings, as a child process, so it takes the publisher's lock and writes its metrics exactly
//! as the timer's publish does), then probe every host again and again until each has accepted
//! the new key and refused the old one, or `--deadline` passes. Per host it reports how long each
//! took after the publish: the fleet's grant and revocation latency.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use super::{Format, GlobalArgs};
use crate::canary::inventory::{self, Target};
use crate::canary::probe::{Keys, Prober, ROUND_INTERVAL, Verdict};
use crate::canary::report::{HostReport, Latency, Report, stats};
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::settings::Settings;

/// The audit canary: prove on every instance that new access arrives and revoked access is
/// refused, and measure how long each takes.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Make a fresh canary key pair in [canary] key_dir; the current one becomes the previous.
    Rotate,
    /// Log in to every host with the current key (must be accepted) and the previous one (must be
    /// refused). Exit 0 only when every host is ok.
    Probe(Probe),
    /// Rotate, publish, then probe until every host converged or --deadline passed; reports the
    /// grant and revocation latency of each host and of the fleet. Exit 0 only when every host
    /// is ok.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct Probe {
    /// The hosts: one `host[:port] [via [user@]bastion[:port] | via ALIAS]` a line, # comments.
    #[cfg_attr(
        feature = "ec2",
        arg(
            long,
            value_name = "FILE",
            required_unless_present = "ec2_tag",
            conflicts_with = "ec2_tag"
        )
    )]
    #[cfg_attr(not(feature = "ec2"), arg(long, value_name = "FILE", required = true))]
    inventory: Option<PathBuf>,

    /// The hosts: running EC2 instances with this tag (KEY, or KEY=VALUE), found with
    /// DescribeInstances; probed at their private IP unless [canary] ec2_address says otherwise.
    #[cfg(feature = "ec2")]
    #[arg(long, value_name = "KEY[=VALUE]")]
    ec2_tag: Option<crate::canary::ec2::TagSelector>,

    /// Print the hosts that would be probed, as inventory lines, and probe nothing.
    #[arg(long)]
    list: bool,

    /// text, json ({"hosts": [{"host", "result", "detail", "seconds"}], "ok"}) or markdown.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Write a Prometheus textfile (hosts per result) here, atomically.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    probe: Probe,

    /// Stop probing after this long (hosts that have not converged keep their last result).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "15m")]
    deadline: Duration,

    /// Between probe rounds.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
    interval: Duration,
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = global.settings()?;
    let canary = settings.canary()?;
    let report = match args.action {
        Action::Rotate => {
            crate::canary::rotate::rotate(&canary.key_dir)?;
            return Ok(Exit::Success);
        }
        Action::Probe(probe) => {
            let targets = targets(&settings, &probe)?;
            if probe.list {
                print!("{}", listing(&targets));
                return Ok(Exit::Success);
            }
            let prober = Prober::new(canary)?;
            let report = Report::of_probe(prober.probe_all(&targets, &Keys::of(&canary.key_dir)?));
            output(&report, &probe)?;
            report
        }
        Action::Run(run) => {
            let targets = targets(&settings, &run.probe)?;
            if run.probe.list {
                print!("{}", listing(&targets));
                return Ok(Exit::Success);
            }
            let prober = Prober::new(canary)?;
            crate::canary::rotate::rotate(&canary.key_dir)?;
            let keys = Keys::of(&canary.key_dir)?;
            publish(&settings, global)?;
            let report = converge(&prober, &targets, &keys, run.deadline, run.interval);
            output(&report, &run.probe)?;
            report
        }
    };
    Ok(if report.ok {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// The hosts to probe: the inventory file, or the EC2 instances with the tag.
fn targets(settings: &Settings, probe: &Probe) -> anyhow::Result<Vec<Target>> {
    let targets = match &probe.inventory {
        Some(path) => inventory::read(path)?,
        None => discovered(settings, probe)?,
    };
    if targets.is_empty() {
        bail!("no hosts to probe");
    }
    Ok(targets)
}

/// The hosts of `--ec2-tag`.
#[cfg(feature = "ec2")]
fn discovered(settings: &Settings, probe: &Probe) -> anyhow::Result<Vec<Target>> {
    let Some(selector) = &probe.ec2_tag else {
        bail!("give --inventory FILE or --ec2-tag KEY[=VALUE]");
    };
    let canary = settings.canary()?;
    let region = settings.s3().ok().and_then(|s3| s3.region.clone());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(crate::canary::ec2::discover(
            canary,
            region.as_deref(),
            selector,
        ))
}

/// Without the `ec2` feature there is no discovery: the inventory is required by clap.
#[cfg(not(feature = "ec2"))]
fn discovered(_: &Settings, _: &Probe) -> anyhow::Result<Vec<Target>> {
    bail!("give --inventory FILE (--ec2-tag needs a keyhole built with --features ec2)")
}

/// Targets as inventory lines (what `--list` prints).
fn listing(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|target| {
            let host = if target.host.contains(':') {
                format!("[{}]:{}", target.host, target.port)
            } else {
                format!("{}:{}", target.host, target.port)
            };
            match &target.via {
                Some(via) => format!("{host} via {via}  # {}\n", target.name),
                None => format!("{host}  # {}\n", target.name),
            }
        })
        .collect()
}

fn output(report: &Report, probe: &Probe) -> anyhow::Result<()> {
    print!(
        "{}",
        match probe.format {
            Format::Json => report.json(),
            Format::Text => report.text(),
            Format::Markdown => report.markdown(),
        }
    );
    if let Some(path) = &probe.metrics_file {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        report.write_metrics(path, now)?;
    }
    Ok(())
}

/// Runs this binary's `publish` with the same settings.
fn publish(settings: &Settings, global: &GlobalArgs) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("finding the keyhole binary")?;
    let config = global
        .config
        .clone()
        .unwrap_or_else(|| settings.path.clone());
    let status = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .arg("publish")
        .stdout(std::process::Stdio::null())
        .status()
        .context("running keyhole publish")?;
    match status.code() {
        Some(0) => Ok(()),
        // Some homes could not be read: the index (and the canary) was still committed.
        Some(1) => {
            tracing::warn!("publish exited 1 (see its log); probing the canary it committed");
            Ok(())
        }
        other => {
            bail!("keyhole publish failed (exit {other:?}): the new canary key was not published")
        }
    }
}

/// Probes in rounds until every host is ok or `deadline` passes; records when each host first
/// accepted the new key and first refused the old one, in seconds after the publish.
fn converge(
    prober: &Prober,
    targets: &[Target],
    keys: &Keys,
    deadline: Duration,
    interval: Duration,
) -> Report {
    let published = Instant::now();
    let mut hosts: Vec<Option<HostReport>> = vec![None; targets.len()];
    let mut granted: Vec<Option<f64>> = vec![None; targets.len()];
    let mut revoked: Vec<Option<f64>> = vec![None; targets.len()];
    loop {
        let pending: Vec<usize> = (0..targets.len())
            .filter(|&i| {
                hosts[i]
                    .as_ref()
                    .is_none_or(|h| h.probe.result != Verdict::Ok)
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        let round: Vec<Target> = pending.iter().map(|&i| targets[i].clone()).collect();
        let at = published.elapsed().as_secs_f64();
        for (i, result) in pending.into_iter().zip(prober.probe_all(&round, keys)) {
            // When this host's probe finished: an upper bound on when the change arrived there,
            // which includes the login that made the host refresh.
            let seen = at + result.seconds;
            if result.granted && granted[i].is_none() {
                granted[i] = Some(seen);
            }
            if result.revoked && revoked[i].is_none() {
                revoked[i] = Some(seen);
            }
            hosts[i] = Some(HostReport {
                probe: result,
                granted_after: granted[i],
                revoked_after: revoked[i],
            });
        }
        if published.elapsed() + interval > deadline {
            break;
        }
        std::thread::sleep(
            interval
                .max(Duration::from_millis(100))
                .min(ROUND_INTERVAL * 12),
        );
    }
    let hosts: Vec<HostReport> = hosts.into_iter().flatten().collect();
    let ok = hosts.iter().all(|h| h.probe.result == Verdict::Ok);
    let latency = Latency {
        grant: stats(&granted.iter().flatten().copied().collect::<Vec<_>>()),
        revocation: stats(&revoked.iter().flatten().copied().collect::<Vec<_>>()),
    };
    Report {
        hosts,
        ok,
        latency: Some(latency),
    }
}
