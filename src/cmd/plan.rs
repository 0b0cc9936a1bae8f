//! `keyhole plan`: what a publish would change and why, without writing anything.

use super::{Format, GlobalArgs, print_plan};
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::publisher::gather::Reading;
use crate::publisher::prepare::{Start, prepare};

/// Show what `publish` would change: per access group the action (create, update, delete,
/// unchanged), the users and keys added and removed with the reason, every problem found in the
/// homes, and whether the safety guard would refuse.
///
/// Reads the policy, Active Directory, the homes, the published index and the published files of
/// the groups that changed; writes nothing.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Report format (json is stable; see the README).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Exit 2 when there are changes, 0 when there are none.
    #[arg(long)]
    detailed_exitcode: bool,

    /// Read the whole directory and every member's home, not only what changed since the last
    /// run (see `ldap.full_read_interval` and `homes.full_read_interval`).
    #[arg(long)]
    full: bool,

    #[command(flatten)]
    clock: super::TestClock,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = global.settings()?;
    let start = Start {
        now: args.clock.now(),
        // plan holds no lock: it reads the directory state, and only publish writes it.
        directory: Reading {
            force_full: args.full,
            keep_state: false,
        },
        ..Start::default()
    };
    let prepared = prepare(&settings, None, &start).await?;
    print_plan(&prepared.plan, args.format)?;
    if prepared.gathered.has_unknown() {
        tracing::error!(
            "some members' keys could not be read; they would keep only the keys published for them"
        );
        return Ok(Exit::Failure);
    }
    Ok(if args.detailed_exitcode && prepared.plan.has_changes() {
        Exit::Changes
    } else {
        Exit::Success
    })
}
