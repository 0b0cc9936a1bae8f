//! `keyhole check [POLICY]`: validates the policy offline and reports every problem with its
//! `FILE:LINE:COL`, the way a compiler would, so it can run in pull-request CI and in an editor.
//!
//! It reads one local file and never touches the network, AD, NFS or S3: whether the names exist
//! in AD is for `members` and `plan` to say.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::policy::{self, counts, plural};

/// Validate the policy offline: TOML syntax, unknown keys, value types, access group names,
/// duplicate and malformed principals, empty access groups and `[deny]` fingerprints.
///
/// Every problem is printed to stdout as `FILE:LINE:COL: error|warning: message`, sorted by
/// position, followed by a summary line. Warnings alone do not fail the check.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// The policy file [default: access-groups.toml in the current directory].
    #[arg(value_name = "POLICY")]
    pub policy: Option<PathBuf>,
}

pub fn run(args: Args, global: &super::GlobalArgs) -> anyhow::Result<Exit> {
    let path = policy_path(args.policy, global)?;
    let bytes =
        std::fs::read(&path).with_context(|| format!("reading policy {}", path.display()))?;
    let (diagnostics, valid) = match policy::parse_bytes(&path, &bytes) {
        Ok(checked) => {
            let groups = checked.policy.access_groups.len();
            (checked.warnings, Some(groups))
        }
        Err(invalid) => (invalid.diagnostics, None),
    };
    for diagnostic in &diagnostics {
        println!("{diagnostic}");
    }
    println!("{}", summary(&path, &diagnostics, valid));
    Ok(if valid.is_some() {
        Exit::Success
    } else {
        Exit::Invalid
    })
}

/// Which policy file to check: the argument if given; else the settings' `policy` when settings
/// were named (`--config` or `KEYHOLE_CONFIG`); else `access-groups.toml` here, which is what a
/// policy repository's CI job wants.
fn policy_path(argument: Option<PathBuf>, global: &super::GlobalArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = argument {
        return Ok(path);
    }
    let named = global.config.is_some() || std::env::var_os(crate::settings::CONFIG_ENV).is_some();
    if named {
        return Ok(crate::settings::Settings::load(global.config.as_deref())?.policy);
    }
    Ok(PathBuf::from("access-groups.toml"))
}

/// `access-groups.toml: OK, 4 access groups, 1 warning` or `access-groups.toml: 2 errors`.
fn summary(
    path: &Path,
    diagnostics: &[crate::diagnostic::Diagnostic],
    valid: Option<usize>,
) -> String {
    match valid {
        Some(groups) if diagnostics.is_empty() => {
            format!("{}: OK, {}", path.display(), plural(groups, "access group"))
        }
        Some(groups) => format!(
            "{}: OK, {}, {}",
            path.display(),
            plural(groups, "access group"),
            counts(diagnostics)
        ),
        None => format!("{}: {}", path.display(), counts(diagnostics)),
    }
}
