//! `keyhole ssh [USER@]TARGET [-- SSH_ARGS…]` and `keyhole ssh --explain TARGET`: the engineer's
//! way in (see `crate::ssh`). Parses, calls, prints; the process exits with ssh's own status.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{Format, GlobalArgs};
use crate::exit::{Exit, coded};
use crate::settings::{self, Settings};
use crate::ssh::connect::{self, Refusal};
use crate::ssh::explain::{self, Explanation};
use crate::ssh::{LoginUser, Target, agent, bastion};

const AFTER_HELP: &str = "\
Exit status: ssh's own (255 when ssh itself failed, else the remote command's); without a
connection: 1 runtime failure (no agent, no instance, no bastion, EC2 or S3 errors), 64 usage
error, 78 invalid settings.

Settings: --config, else $KEYHOLE_CONFIG, else /etc/keyhole/keyhole.toml, else (no /etc/keyhole)
~/.config/keyhole/keyhole.toml; [ssh] and [ssh.bastions], and for --explain [s3] and
[ssh] verify_key.";

/// Log in to an EC2 instance through the bastion of its zone, or say exactly why you cannot.
///
/// Finds TARGET with DescribeInstances, chooses the bastion from [ssh.bastions] (its zone, then
/// its VPC, then its region), checks that an SSH agent holds keys, and runs the system ssh with
/// -J BASTION (the agent is not forwarded). When the instance refuses every key, the reason is
/// printed on stderr, as --explain would.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// An instance ID, a Name tag, a private DNS name or a private address; USER@ chooses the
    /// login user (else the instance's login-user tag, else [ssh] login_user).
    #[arg(value_name = "[USER@]TARGET")]
    target: String,

    /// Given to ssh after the address: options first (-p 2222, -L 8080:localhost:80), then the
    /// remote command.
    #[arg(last = true, value_name = "SSH_ARGS")]
    ssh_args: Vec<String>,

    /// Connect nowhere: explain whether and how your agent's keys may log in to TARGET, from the
    /// signed index, the instance's access-groups tag and the policy (--policy).
    #[arg(long)]
    explain: bool,

    /// With --explain: text, or json for tooling.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// With --explain: the policy file (access-groups.toml), to name every entry that grants the
    /// instance's groups (default: the AD groups the published group files name).
    #[arg(long, value_name = "PATH")]
    policy: Option<PathBuf>,

    /// Forward the agent to the instance (ssh -A). Off by default: root on the instance could
    /// use it to log in anywhere as you while you are connected.
    #[arg(long)]
    forward_agent: bool,

    /// Print the ssh command line and connect nowhere (no agent needed).
    #[arg(long)]
    dry_run: bool,

    /// Look the instance up in this region (default: [ssh] region, else the AWS chain's).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    crate::ssh::require_ec2()?;
    let path = settings::locate_for_engineer(global.config.as_deref());
    let chosen = global.config.is_some()
        || std::env::var_os(settings::CONFIG_ENV).is_some_and(|value| !value.is_empty());
    if !chosen && !path.exists() {
        return Err(coded(
            Exit::Invalid,
            anyhow::anyhow!(
                "no settings: neither {} nor {} exists (or give --config): write [ssh] and \
                 [ssh.bastions] there (see docs/engineers.md)",
                settings::DEFAULT_PATH,
                path.display()
            ),
        ));
    }
    let settings = Settings::load(Some(&path))?;
    let ssh = settings.ssh()?;
    let target = Target::parse(&args.target).map_err(|e| coded(Exit::Usage, anyhow::anyhow!(e)))?;
    if args.format == Format::Markdown {
        return Err(coded(
            Exit::Usage,
            anyhow::anyhow!("--format is text or json"),
        ));
    }
    // The precondition of a login, checked before any connection (EC2's included).
    let agent = agent::keys();
    let connecting = !args.explain && !args.dry_run;
    if connecting && let Err(error) = agent {
        return Err(anyhow::Error::new(error));
    }
    let agent = agent.map_err(|error| error.to_string());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let instance = runtime.block_on(crate::ssh::find(
        ssh,
        args.region.as_deref(),
        &target.lookup,
    ))?;
    let login_user = LoginUser::choose(
        target.user.as_deref(),
        &instance,
        &ssh.login_user_tag,
        &ssh.login_user,
    );
    let bastion = bastion::choose(&ssh.bastions, &instance);
    let explain = |agent: Result<&[agent::AgentKey], String>| -> anyhow::Result<Explanation> {
        let sources = explain::Sources {
            settings: &settings,
            access_groups_tag: &ssh.access_groups_tag,
            verify_key: ssh.verify_key.as_deref(),
            agent,
            policy: args.policy.as_deref(),
        };
        runtime.block_on(explain::gather(
            sources,
            &instance,
            &login_user,
            bastion.as_ref().map_err(String::as_str),
        ))
    };

    if args.explain {
        let explanation = explain(agent.as_deref().map_err(Clone::clone))?;
        print(&explanation, args.format, &mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    }
    let bastion = bastion
        .as_ref()
        .map_err(|problem| anyhow::anyhow!("{problem}"))?;
    let address = instance
        .private_ip
        .as_deref()
        .with_context(|| format!("{} has no private address", instance.label()))?;
    let ssh_args = connect::arguments(
        &bastion.host,
        &login_user.name,
        address,
        args.forward_agent,
        &args.ssh_args,
    );
    if args.dry_run {
        println!("{}", connect::shell_words(&ssh_args));
        return Ok(ExitCode::SUCCESS);
    }
    tracing::debug!(
        instance = %instance.label(),
        bastion = %bastion.host,
        user = %login_user.name,
        "connecting: {}",
        connect::shell_words(&ssh_args)
    );
    let finished = connect::run(&ssh_args)?;
    match connect::refusal(&finished) {
        Some(Refusal::Instance) => {
            eprintln!("\nkeyhole: {} refused your keys. Why:\n", instance.label());
            match explain(agent.as_deref().map_err(Clone::clone)) {
                Ok(explanation) => print(&explanation, args.format, &mut std::io::stderr())?,
                Err(error) => eprintln!("keyhole: cannot explain it: {error:#}"),
            }
        }
        Some(Refusal::Bastion) => eprintln!(
            "\nkeyhole: the bastion {} ([ssh.bastions] \"{}\") failed, before the instance was asked: \
             it refused your keys, or could not reach {address}. keyhole cannot explain a bastion's refusal; \
             ask its owners",
            bastion.host, bastion.key
        ),
        None => {}
    }
    Ok(ExitCode::from(
        u8::try_from(finished.code).unwrap_or(u8::MAX),
    ))
}

fn print(
    explanation: &Explanation,
    format: Format,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(explanation)?)?,
        Format::Text | Format::Markdown => write!(out, "{}", explanation.text())?,
    }
    Ok(())
}
