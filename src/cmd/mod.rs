//! One module per subcommand, each with its own clap `Args` and a `run()` that returns the
//! process [`Exit`](crate::exit::Exit). Commands wire the stages together; they hold no logic of
//! their own that a test would want to reach without the command line.

use std::path::PathBuf;

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

/// Report formats shared by the report-printing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
    Markdown,
}
