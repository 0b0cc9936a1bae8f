//! `keyhole members`: who gets access.

use crate::exit::Exit;

/// Who gets access (placeholder).
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _global: &super::GlobalArgs) -> anyhow::Result<Exit> {
    anyhow::bail!("not implemented yet")
}
