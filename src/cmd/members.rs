//! `keyhole members [ACCESS_GROUP]`: who gets access to each access group and why, and who is
//! excluded and why. Reads AD; writes nothing.

use std::fmt::Write as _;
use std::time::SystemTime;

use anyhow::Context;

use super::{Format, GlobalArgs};
use crate::bucket::group_file::VIA_SEPARATOR;
use crate::exit::{EXIT_CODES_HELP, Exit, coded};
use crate::publisher::policy::plural;
use crate::publisher::resolve::{Resolution, resolve};
use crate::publisher::{directory, policy};

/// Show who gets access to each access group (directly, through which nested group chain, or
/// everywhere; automation accounts with their owner; the end date of time-limited grants) and
/// who is excluded and why (disabled, locked, expired, not found, denied, expired_grant).
///
/// Reads the policy and Active Directory; writes nothing.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Only this access group.
    access_group: Option<String>,

    /// Report format (json is stable; see the README).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// For tests only (hidden): judge `until` dates and AD account states as of this RFC 3339
    /// time instead of the clock.
    #[arg(long, hide = true, value_name = "RFC3339", value_parser = humantime::parse_rfc3339)]
    now: Option<SystemTime>,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = global.settings()?;
    let checked = policy::load(&settings.policy)?;
    if let Some(wanted) = &args.access_group
        && !checked.policy.access_groups.contains_key(wanted)
    {
        return Err(coded(
            Exit::Usage,
            anyhow::anyhow!(
                "{wanted:?} is not an access group in {}",
                settings.policy.display()
            ),
        ));
    }
    let (snapshot, _) = directory::read_snapshot(settings.ldap()?)
        .await
        .context("reading Active Directory")?;

    let mut resolution = resolve(
        &checked.policy,
        &snapshot,
        args.now.unwrap_or_else(SystemTime::now),
    );
    if let Some(wanted) = &args.access_group {
        resolution.access_groups.retain(|name, _| name == wanted);
    }
    resolution
        .warnings
        .extend(checked.warnings.iter().map(ToString::to_string));

    let report = match args.format {
        Format::Json => serde_json::to_string_pretty(&resolution)? + "\n",
        Format::Text | Format::Markdown => text(&resolution),
    };
    print!("{report}");
    Ok(Exit::Success)
}

/// The human-readable report: one block per access group, members then exclusions.
fn text(resolution: &Resolution) -> String {
    let mut out = String::new();
    for (name, membership) in &resolution.access_groups {
        let _ = writeln!(
            out,
            "{name}: {} with access, {} excluded",
            plural(membership.users.len(), "user"),
            membership.excluded.len()
        );
        let width = membership
            .users
            .iter()
            .map(|m| m.name.chars().count())
            .max()
            .unwrap_or(0);
        for member in &membership.users {
            let why = if member.via.is_empty() {
                "named directly".to_owned()
            } else {
                format!("via {}", member.via.join(VIA_SEPARATOR))
            };
            let until = match &member.until {
                Some(until) => format!(" (until {until})"),
                None => String::new(),
            };
            let _ = writeln!(out, "  + {:width$}  {why}{until}", member.name);
        }
        for excluded in &membership.excluded {
            let _ = writeln!(out, "  - {}  ({})", excluded.name, excluded.reason.as_str());
        }
    }
    if !resolution.warnings.is_empty() {
        let _ = writeln!(out, "warnings:");
        for warning in &resolution.warnings {
            let _ = writeln!(out, "  {warning}");
        }
    }
    out
}
