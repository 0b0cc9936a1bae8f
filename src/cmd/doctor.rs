//! `keyhole doctor`: on an instance, checks everything sshd and the refresh timer depend on and
//! says how to fix each thing that does not hold ([`crate::instance::doctor::examine`]).
//! Run it as root (sshd -T needs the host keys).

use std::path::PathBuf;

use super::GlobalArgs;
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::instance::doctor::examine::{Request, examine};

/// Check this host's keyhole wiring: sshd's effective config, the command's path and user,
/// settings, cache, S3 and the signed index, the host's access groups and the login user.
/// Every finding comes with its fix; exits 0 only when all hold.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Check this sshd config file instead of the one sshd uses (/etc/ssh/sshd_config).
    #[arg(long, value_name = "PATH")]
    sshd_config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// The sshd binary to ask for its effective config.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/usr/sbin/sshd",
        hide = true
    )]
    sshd: PathBuf,
    /// Where to look for systemd units and drop-ins of sshd (default: the system's unit
    /// directories).
    #[arg(long = "systemd-dir", value_name = "DIR", hide = true)]
    systemd_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let report = examine(&Request {
        config: global.config.clone(),
        sshd_config: args.sshd_config,
        sshd: args.sshd,
        systemd_dirs: args.systemd_dirs,
    });
    match args.format {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.ok {
        Exit::Success
    } else {
        Exit::Failure
    })
}
