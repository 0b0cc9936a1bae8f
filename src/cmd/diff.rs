//! `keyhole diff --base REV [--head REV]`: the access change a policy pull request makes.
//!
//! Reads the policy at two revisions straight from git's object database (no checkout), diffs
//! them offline, and with `--resolve` expands both through one read of AD to show who gains and
//! loses access. It never writes: not to git, not to S3, not to the working tree.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;

use super::{Format, GlobalArgs};
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::publisher::directory;
use crate::publisher::git::Repo;
use crate::publisher::policy::counts;
use crate::publisher::policy::diff::{
    self, DiagnosticEntry, PolicyDiff, Reading, Report, Side, Status, diff_policies,
    diff_resolutions,
};
use crate::publisher::resolve::resolve;

/// Show the access change between two versions of the policy in git: per access group the AD
/// users and groups added and removed, access groups created and deleted (a rename is both), and
/// `[everywhere]` / `[deny]` changes. With --resolve, also who gains and loses access.
///
/// The policy is read from git's object database at each revision, so a shallow CI clone works as
/// long as the base commit was fetched. Errors in the head policy are part of the report and make
/// it exit 78.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// The revision to compare from: the pull request's target, e.g. `origin/main`.
    #[arg(long, value_name = "REV")]
    base: String,

    /// The revision to compare to [default: the file in the working tree, as it is now].
    #[arg(long, value_name = "REV")]
    head: Option<String>,

    /// The policy's path from the repository root, as in `git show REV:PATH`; start it with `./`
    /// or `../` to make it relative to the current directory.
    #[arg(long, value_name = "PATH", default_value = "access-groups.toml")]
    policy: PathBuf,

    /// The git repository [default: the one containing the current directory].
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,

    /// Report format (json is stable; see the README; markdown is for a pull-request comment).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Also resolve both versions against Active Directory (settings from --config) and show,
    /// per access group, who gains and who loses access and through which group chain.
    #[arg(long)]
    resolve: bool,

    /// Exit 2 when the policy changes access, 0 when it does not (descriptions alone do not
    /// count).
    #[arg(long)]
    detailed_exitcode: bool,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let repo = Repo::discover(args.repo.as_deref().unwrap_or(&cwd))?;
    let path = repo.path_in_repo(&args.policy, &cwd)?;
    let shown = path.display().to_string();

    let base_file = repo.file_at("base", &args.base, &path)?;
    let (head_commit, head_bytes) = match &args.head {
        Some(rev) => {
            let file = repo.file_at("head", rev, &path)?;
            (Some(file.commit), file.bytes)
        }
        None => (None, repo.working_tree_file(&path)?),
    };
    let Some(head_bytes) = head_bytes else {
        let head = args.head.as_deref().unwrap_or("the working tree");
        let hint = if base_file.bytes.is_none() {
            " or at the base either; is --policy right?"
        } else {
            "; a pull request that deletes the policy cannot be published"
        };
        anyhow::bail!("the policy {shown} does not exist in {head}{hint}");
    };

    // Base diagnostics name the revision too, as `git show` would: they are not about the file
    // the reader has open.
    let base_reading = diff::read(
        Path::new(&format!("{}:{shown}", args.base)),
        base_file.bytes.as_deref(),
    );
    let head_reading = diff::read(&path, Some(&head_bytes));
    let base = side(
        Some(&args.base),
        Some(base_file.commit),
        &shown,
        &base_reading,
    );
    let head = side(args.head.as_deref(), head_commit, &shown, &head_reading);
    let mut notes = base_notes(&base, &base_reading);

    let base_policy = base_reading.policy.unwrap_or_else(diff::empty_policy);
    let mut diff = match &head_reading.policy {
        Some(head_policy) => diff_policies(&base_policy, head_policy),
        None => PolicyDiff::default(),
    };
    let access_changed = diff.changes_access();

    let mut warnings = Vec::new();
    let mut resolved = false;
    if args.resolve {
        match &head_reading.policy {
            Some(head_policy) => {
                let settings = global.settings()?;
                let (snapshot, _) = directory::read_snapshot(settings.ldap()?)
                    .await
                    .context("reading Active Directory")?;
                // One snapshot and one `now` for both sides: every difference is the policy's.
                let now = SystemTime::now();
                let before = resolve(&base_policy, &snapshot, now);
                let after = resolve(head_policy, &snapshot, now);
                diff.add_people(diff_resolutions(&before, &after));
                warnings = after
                    .warnings
                    .into_iter()
                    .filter(|warning| !before.warnings.contains(warning))
                    .collect();
                resolved = true;
            }
            None => notes.push(
                "--resolve skipped: the head policy cannot be read, so there is nothing to \
                 resolve"
                    .to_owned(),
            ),
        }
    }

    let report = Report {
        base,
        head,
        access_changed,
        resolved,
        diff,
        warnings,
        notes,
    };
    let rendered = match args.format {
        Format::Text => diff::text(&report),
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Markdown => diff::markdown(&report),
    };
    print!("{rendered}");

    if matches!(report.head.status, Status::Invalid | Status::Unreadable) {
        tracing::error!(
            "the head policy {shown} is invalid ({}); see the report",
            counts(&head_reading.diagnostics)
        );
        return Ok(Exit::Invalid);
    }
    Ok(if args.detailed_exitcode && report.access_changed {
        Exit::Changes
    } else {
        Exit::Success
    })
}

fn side(revision: Option<&str>, commit: Option<String>, path: &str, reading: &Reading) -> Side {
    Side {
        revision: revision.map(str::to_owned),
        commit,
        path: path.to_owned(),
        status: reading.status,
        diagnostics: reading
            .diagnostics
            .iter()
            .map(DiagnosticEntry::from)
            .collect(),
    }
}

/// What a reader must know about a base that was not a valid policy. A broken base is not an
/// error: the pull request may be the fix, and its reviewer still needs to see what it grants.
fn base_notes(base: &Side, reading: &Reading) -> Vec<String> {
    let at = format!("{} at {}", base.path, base.label());
    match reading.status {
        Status::Valid => Vec::new(),
        Status::Absent => vec![format!(
            "{at} does not exist: every access group in the head is new"
        )],
        Status::Unreadable => vec![format!(
            "the base policy {at} cannot be read ({}); it is diffed as empty, so every access \
             group in the head shows as created",
            reading
                .diagnostics
                .first()
                .map_or_else(String::new, ToString::to_string)
        )],
        Status::Invalid => vec![format!(
            "the base policy {at} does not pass `keyhole check` ({}); it is diffed from a \
             best-effort reading of it (see base.diagnostics in --format json)",
            counts(&reading.diagnostics)
        )],
    }
}
