//! `keyhole check-bind`: proves that the publisher can bind to AD the way a run would (the same
//! DCs in the same order, the same credentials, the same refusal guard) and prints the identity
//! AD sees, from the "Who am I?" extended operation (RFC 4532). Reads nothing else; writes only
//! what a run's bind writes (the bind state file after a refusal).

use super::{Format, GlobalArgs};
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::publisher::directory;

/// Bind to Active Directory as `[ldap]` says (password or Kerberos keytab) and print which DC
/// accepted it and who AD says keyhole is (e.g. `u:CORP\svc-keyhole`).
///
/// Exit 0 when the bind works; 1 with the reason (named Kerberos problems and their fix
/// included) when it does not.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = global.settings()?;
    let bound = directory::check_bind(settings.ldap()?).await?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&bound)?),
        Format::Text | Format::Markdown => println!(
            "bound to {} ({} bind); AD sees {}",
            bound.dc,
            bound.auth,
            if bound.identity.is_empty() {
                "an anonymous identity"
            } else {
                &bound.identity
            }
        ),
    }
    Ok(Exit::Success)
}
