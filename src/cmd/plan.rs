//! `keyhole plan`: what a publish would change and why, without writing anything.
//! Also home of [`prepare`], the shared first half of `plan` and `publish`.

use std::collections::BTreeSet;
use std::time::SystemTime;

use anyhow::Context;

use super::{Format, GlobalArgs};
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::gather::{Gathered, gather};
use crate::manifest::Manifest;
use crate::plan::{Inputs, Plan, Selection, plan};
use crate::render::Renderer;
use crate::settings::Settings;
use crate::store::{Fetched, ObjectStore, S3Store, Timeouts};

/// Show what `publish` would change: per access group the action (create, update, delete,
/// unchanged), the users and keys added and removed with the reason, every problem found in the
/// homes, and whether the safety guard would refuse.
///
/// Reads the policy, Active Directory, the homes and the published manifest; writes nothing.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Report format (json is stable; see the README).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Exit 2 when there are changes, 0 when there are none.
    #[arg(long)]
    detailed_exitcode: bool,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = Settings::load(global.config.as_deref())?;
    let prepared = prepare(&settings, None).await?;
    print!("{}", format_plan(&prepared.plan, args.format));
    if prepared.gathered.has_unknown() {
        tracing::error!(
            "some members' keys could not be read; their access groups would be left as published"
        );
        return Ok(Exit::Failure);
    }
    Ok(if args.detailed_exitcode && prepared.plan.has_changes() {
        Exit::Changes
    } else {
        Exit::Success
    })
}

pub(crate) fn format_plan(plan: &Plan, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(plan).unwrap_or_default() + "\n",
        Format::Markdown => crate::report::markdown(plan),
        Format::Text => crate::report::text(plan),
    }
}

/// With signing, every manifest written carries `not_after = now + validity`; when nothing else
/// changed, the manifest is still re-signed once half of the published validity has passed, so
/// instances never see a signed manifest expire while the publisher runs.
fn sign_by_schedule(
    plan: &mut Plan,
    published: &Signed,
    signing: &crate::settings::SigningSettings,
    now: SystemTime,
) {
    let due = match published
        .not_after
        .as_deref()
        .map(crate::signing::parse_time)
    {
        Some(Ok(not_after)) => crate::signing::needs_resign(not_after, signing.validity, now),
        // Never signed (or unreadable): sign now.
        _ => true,
    };
    if !plan.has_changes() && !due {
        plan.manifest.not_after = published.not_after.clone();
        return;
    }
    plan.manifest.not_after = Some(crate::signing::format_time(now + signing.validity));
    if !plan.has_changes() {
        plan.resign = true;
        plan.manifest.generation = published.generation + 1;
    }
}

/// What re-signing needs to know of the published manifest.
struct Signed {
    generation: u64,
    not_after: Option<String>,
}

/// The renderer of `gathered`'s group files (a publish renders again the files it writes).
pub(crate) fn renderer(gathered: &Gathered) -> Renderer<'_> {
    let denied: BTreeSet<String> = gathered
        .checked
        .policy
        .deny
        .fingerprints
        .iter()
        .cloned()
        .collect();
    Renderer::new(&gathered.keys, &denied)
}

/// The first half of a publish: everything read, the plan computed, nothing written.
pub(crate) struct Prepared {
    pub gathered: Gathered,
    pub plan: Plan,
    pub store: S3Store,
    /// The key of manifest.json and the ETag it had when read (`None`: there was none).
    pub manifest_key: String,
    pub manifest_etag: Option<String>,
}

pub(crate) async fn prepare(
    settings: &Settings,
    selection: Selection<'_>,
) -> anyhow::Result<Prepared> {
    let s3 = settings.s3()?;
    let gathered = gather(settings, SystemTime::now()).await?;
    let store = S3Store::connect(s3, Timeouts::PUBLISHER).await;
    let manifest_key = format!("{}manifest.json", s3.prefix);
    let (published, manifest_etag) = match store
        .get(&manifest_key, None)
        .await
        .context("reading the published manifest")?
    {
        Fetched::Object(object) => (
            Manifest::parse(&object.body)
                .with_context(|| format!("reading s3://{}/{manifest_key}", s3.bucket))?,
            Some(object.etag),
        ),
        Fetched::Missing | Fetched::NotModified => (Manifest::empty(), None),
    };
    // The plan consumes the published manifest; these few fields are needed after it.
    let published_commit = published.policy_commit.clone();
    let signed = Signed {
        generation: published.generation,
        not_after: published.not_after.clone(),
    };
    let mut plan = plan(
        published,
        &renderer(&gathered),
        &Inputs {
            resolution: &gathered.resolution,
            policy: &gathered.checked.policy,
            safety: &settings.safety,
            selection,
        },
    );
    plan.manifest.policy_commit = if plan.has_changes() {
        gathered.policy_commit.clone()
    } else {
        published_commit
    };
    if let Some(signing) = &settings.signing {
        sign_by_schedule(&mut plan, &signed, signing, SystemTime::now());
    }
    let mut problems = gathered.problems.clone();
    problems.append(&mut plan.problems);
    problems.sort();
    problems.dedup();
    plan.problems = problems;
    Ok(Prepared {
        gathered,
        plan,
        store,
        manifest_key,
        manifest_etag,
    })
}
