//! `keyhole check [POLICY]`: validates the policy offline and reports every problem with its
//! `FILE:LINE:COL`, the way a compiler would, so it can run in pull-request CI and in an editor.
//!
//! It reads the policy and the automation key files next to it, and never touches the network,
//! AD, NFS or S3: whether the names exist in AD is for `members` and `plan` to say. Key files are
//! validated with the `[keys]` policy of the settings when settings are named (`--config` or
//! `KEYHOLE_CONFIG`), else with the default key policy.
//!
//! Time-limited grants are judged against the clock (hidden `--now` for tests): one that has
//! ended is a warning (its entry is dead weight: remove it), and so is one ending within
//! `--warn-within`, so that nobody is surprised when it does. Warnings never fail the check: a
//! grant ending is the policy working as written.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::publisher::policy::{self, counts, plural};

/// Validate the policy offline: TOML syntax, unknown keys, value types, access group names,
/// duplicate and malformed principals, empty access groups, `[deny]` fingerprints, access group
/// options, automation accounts and their key files; warns about time-limited grants that have
/// ended or end soon.
///
/// Every problem is printed to stdout as `FILE:LINE:COL: error|warning: message`, sorted by
/// position, followed by a summary line. Warnings alone do not fail the check.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// The policy file [default: access-groups.toml in the current directory].
    #[arg(value_name = "POLICY")]
    pub policy: Option<PathBuf>,

    /// Warn about time-limited grants that end within this long, e.g. "14d", "4w".
    #[arg(long, value_name = "DURATION", default_value = "14d", value_parser = humantime::parse_duration)]
    pub warn_within: std::time::Duration,

    /// For tests only (hidden): judge `until` dates as of this RFC 3339 time instead of the clock.
    #[arg(long, hide = true, value_name = "RFC3339", value_parser = humantime::parse_rfc3339)]
    pub now: Option<std::time::SystemTime>,
}

pub fn run(args: Args, global: &super::GlobalArgs) -> anyhow::Result<Exit> {
    let named = global.config.is_some() || std::env::var_os(crate::settings::CONFIG_ENV).is_some();
    let key_policy = if named {
        global.settings()?.keys
    } else {
        crate::keys::KeyPolicy::default()
    };
    let path = policy_path(args.policy, global)?;
    let bytes =
        std::fs::read(&path).with_context(|| format!("reading policy {}", path.display()))?;
    let now = args.now.unwrap_or_else(std::time::SystemTime::now);
    let (diagnostics, valid) = match policy::parse_bytes(&path, &bytes) {
        Ok(checked) => {
            let groups = checked.policy.access_groups.len();
            let mut diagnostics = checked.warnings.clone();
            diagnostics.extend(grant_warnings(
                &path,
                &checked.grants,
                now,
                args.warn_within,
            ));
            diagnostics.extend(
                crate::publisher::automation::read_keys(&path, &checked, &key_policy).diagnostics,
            );
            diagnostics
                .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            let valid = !crate::diagnostic::has_errors(&diagnostics);
            (diagnostics, valid.then_some(groups))
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

/// A warning for each grant that has ended (clean-up) or ends within `window`.
fn grant_warnings(
    path: &Path,
    grants: &[policy::Grant],
    now: std::time::SystemTime,
    window: std::time::Duration,
) -> Vec<crate::diagnostic::Diagnostic> {
    grants
        .iter()
        .filter(|grant| grant.until.ends_within(now, window))
        .map(|grant| {
            let message = if grant.until.has_ended(now) {
                format!(
                    "the grant of {} ended (until {}): it no longer gives access; remove the entry",
                    grant.what, grant.until
                )
            } else {
                format!(
                    "the grant of {} ends soon (until {}, within {})",
                    grant.what,
                    grant.until,
                    humantime::format_duration(window)
                )
            };
            crate::diagnostic::Diagnostic {
                severity: crate::diagnostic::Severity::Warning,
                file: path.to_path_buf(),
                line: grant.line,
                column: grant.column,
                message,
            }
        })
        .collect()
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
        return Ok(global.settings()?.policy);
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
