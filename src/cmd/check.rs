//! `keyhole check [POLICY]`: validates the policy offline.

use crate::exit::Exit;

/// Validate the policy offline (placeholder until the policy module lands).
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _global: &super::GlobalArgs) -> anyhow::Result<Exit> {
    anyhow::bail!("not implemented yet")
}
