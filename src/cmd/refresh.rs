//! `keyhole refresh`: brings the instance's key cache up to date ahead of logins, from a timer.

use std::time::Duration;

use super::GlobalArgs;
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::instance::Cache;
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
    let cache = Cache::new(&settings.instance()?.cache_dir);
    let index = super::authorized_keys::fetch(&settings, &cache, REFRESH_TIMEOUT)?;
    tracing::info!(generation = index.generation, "key cache is current");
    Ok(Exit::Success)
}
