//! The `keyhole` binary: parses the command line, sets up logging, builds the runtime and hands
//! over to one of `keyhole::cmd`. Nothing else lives here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyhole::cmd;
use keyhole::exit::{EXIT_CODES_HELP, Exit};
use keyhole::logging::{self, LogFormat};

/// Publishes SSH public keys from Active Directory to S3 per Access Group, and serves them to sshd.
#[derive(Debug, Parser)]
#[command(name = "keyhole", version, after_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(flatten)]
    global: cmd::GlobalArgs,

    /// How log lines on stderr are written.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Check(cmd::check::Args),
    CheckBind(cmd::check_bind::Args),
    Diff(cmd::diff::Args),
    Members(cmd::members::Args),
    Plan(cmd::plan::Args),
    Publish(cmd::publish::Args),
    Verify(cmd::verify::Args),
    Whois(cmd::whois::Args),
    AuthorizedKeys(cmd::authorized_keys::Args),
    Refresh(cmd::refresh::Args),
    Canary(cmd::canary::Args),
    Doctor(cmd::doctor::Args),
    Ssh(cmd::ssh::Args),
}

fn main() -> ExitCode {
    keyhole::memory::use_one_malloc_arena();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are not errors; everything else clap rejects is a usage error.
            let exit = if error.use_stderr() {
                Exit::Usage
            } else {
                Exit::Success
            };
            let _ = error.print();
            return exit.into();
        }
    };
    logging::init(cli.log_format);

    let result = dispatch(cli.command, &cli.global);
    match result {
        Ok(exit) => exit,
        Err(error) => {
            eprintln!("keyhole: error: {error:#}");
            Exit::for_error(&error).into()
        }
    }
}

fn dispatch(command: Command, global: &cmd::GlobalArgs) -> anyhow::Result<ExitCode> {
    let exit = match command {
        // Exits with ssh's own status, which no `Exit` names.
        Command::Ssh(args) => return cmd::ssh::run(args, global),
        // At every SSH login: no runtime unless the cache must be refreshed, and then a
        // single-threaded one (built by the command itself).
        Command::AuthorizedKeys(args) => cmd::authorized_keys::run(args, global),
        Command::Refresh(args) => cmd::refresh::run(args, global),
        Command::Doctor(args) => cmd::doctor::run(args, global),
        Command::Check(args) => cmd::check::run(args, global),
        // Probes are ssh processes, run on threads: no runtime.
        Command::Canary(args) => cmd::canary::run(args, global),
        Command::CheckBind(args) => block_on(cmd::check_bind::run(args, global)),
        Command::Diff(args) => block_on(cmd::diff::run(args, global)),
        Command::Members(args) => block_on(cmd::members::run(args, global)),
        Command::Plan(args) => block_on(cmd::plan::run(args, global)),
        Command::Publish(args) => block_on(cmd::publish::run(args, global)),
        Command::Verify(args) => block_on(cmd::verify::run(args, global)),
        Command::Whois(args) => block_on(cmd::whois::run(args, global)),
    };
    exit.map(ExitCode::from)
}

/// Runs a publisher-side command on a multi-threaded runtime (LDAP, NFS reads and S3 requests
/// overlap there).
fn block_on(work: impl Future<Output = anyhow::Result<Exit>>) -> anyhow::Result<Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(work)
}
