//! One module per subcommand, each with its own clap `Args` and a `run()` that returns the
//! process [`Exit`](crate::exit::Exit). Commands wire the stages together; they hold no logic of
//! their own that a test would want to reach without the command line.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::publisher::plan::Plan;

pub mod authorized_keys;
pub mod canary;
pub mod check;
pub mod check_bind;
pub mod diff;
pub mod doctor;
pub mod members;
pub mod plan;
pub mod publish;
pub mod refresh;
pub mod ssh;
pub mod verify;
pub mod whois;

/// Options every command accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The settings file (default: $KEYHOLE_CONFIG, else /etc/keyhole/keyhole.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Bind to AD even though this deployment's last bind was refused with the same password
    /// (once the service account was unlocked or enabled again; a new password needs no flag).
    #[arg(long, global = true)]
    pub retry_bind: bool,
}

impl GlobalArgs {
    /// The settings file, with `--retry-bind` applied to the directory it names.
    pub fn settings(&self) -> anyhow::Result<crate::settings::Settings> {
        Ok(crate::settings::Settings::load(self.config.as_deref())?
            .with_bind_retry(self.retry_bind))
    }
}

/// Report formats shared by the report-printing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
    Markdown,
}

/// Writes the plan's report to stdout as it is formatted (never the whole report in memory).
pub(crate) fn print_plan(plan: &Plan, format: Format) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, plan)?;
            writeln!(out)?;
        }
        Format::Markdown => crate::publisher::report::markdown(plan, &mut out)?,
        Format::Text => crate::publisher::report::text(plan, &mut out)?,
    }
    out.flush().context("writing the plan to stdout")
}

/// `--now RFC3339` (hidden): judge the policy's `until` dates and AD account expiry and lockout as
/// of this time instead of the clock. It re-grants ended grants and expired or locked accounts, so
/// it exists only in builds with debug assertions (what `cargo test` builds); a release build
/// (what `scripts/package` ships) has no such option and refuses it as a usage error (exit 64).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TestClock {
    #[cfg(debug_assertions)]
    #[arg(long = "now", hide = true, value_name = "RFC3339", value_parser = humantime::parse_rfc3339)]
    now: Option<std::time::SystemTime>,
}

impl TestClock {
    /// The time given with `--now` (test builds only); `None`: the clock.
    pub fn now(&self) -> Option<std::time::SystemTime> {
        #[cfg(debug_assertions)]
        return self.now;
        #[cfg(not(debug_assertions))]
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::TestClock;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct WithClock {
        #[command(flatten)]
        clock: TestClock,
    }

    /// `--now` exists exactly in builds with debug assertions: `cargo test` has it, the
    /// packaged release binary refuses it as an unknown option.
    #[test]
    fn now_exists_only_in_test_builds() {
        let parsed = WithClock::try_parse_from(["keyhole", "--now", "2030-01-01T00:00:00Z"]);
        assert_eq!(parsed.is_ok(), cfg!(debug_assertions), "{parsed:?}");
        if let Ok(parsed) = parsed {
            assert!(parsed.clock.now().is_some());
        }
        let none = WithClock::try_parse_from(["keyhole"]).unwrap();
        assert_eq!(none.clock.now(), None);
    }
}
