//! `keyhole plan`: what a publish would change and why, without writing anything.
//! Also home of [`prepare`], the shared first half of `plan` and `publish`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;

use super::{Format, GlobalArgs};
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::gather::{Gathered, gather};
use crate::group_file::{KnownLines, PublishedFile};
use crate::index::{Index, Layout, Owners, owners_to_json};
use crate::plan::{Inputs, Plan, Selection, judge};
use crate::published::Published;
use crate::render::{Renderer, sha256_hex};
use crate::settings::Settings;
use crate::store::{S3Store, Timeouts};

/// Show what `publish` would change: per access group the action (create, update, delete,
/// unchanged), the users and keys added and removed with the reason, every problem found in the
/// homes, and whether the safety guard would refuse.
///
/// Reads the policy, Active Directory, the homes, the published index and the published files of
/// the groups that changed; writes nothing.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Report format (json is stable; see the README).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Exit 2 when there are changes, 0 when there are none.
    #[arg(long)]
    detailed_exitcode: bool,

    /// For tests only (hidden): evaluate the policy's `until` dates and AD account expiry and
    /// lockout as of this RFC 3339 time instead of the clock. Signing always uses the clock.
    #[arg(long, hide = true, value_name = "RFC3339", value_parser = humantime::parse_rfc3339)]
    now: Option<std::time::SystemTime>,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = Settings::load(global.config.as_deref())?;
    let start = Start {
        now: args.now,
        ..Start::default()
    };
    let prepared = prepare(&settings, None, start).await?;
    print_plan(&prepared.plan, args.format)?;
    if prepared.gathered.has_unknown() {
        tracing::error!(
            "some members' keys could not be read; they would keep only the keys published for them"
        );
        return Ok(Exit::Failure);
    }
    Ok(if args.detailed_exitcode && prepared.plan.has_changes() {
        Exit::Changes
    } else {
        Exit::Success
    })
}

/// Writes the plan's report to stdout as it is formatted (never the whole report in memory).
pub(crate) fn print_plan(plan: &Plan, format: Format) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, plan)?;
            writeln!(out)?;
        }
        Format::Markdown => crate::report::markdown(plan, &mut out)?,
        Format::Text => crate::report::text(plan, &mut out)?,
    }
    out.flush().context("writing the plan to stdout")
}

/// With signing, every index written carries `not_after = now + validity`; when nothing else
/// changed, the index is still re-signed once half of the published validity has passed, so
/// instances never see a signed index expire while the publisher runs.
fn sign_by_schedule(
    plan: &mut Plan,
    published: &Index,
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
    if !plan.writes() && !due {
        plan.index.not_after = published.not_after.clone();
        return;
    }
    plan.index.not_after = Some(crate::signing::format_time(now + signing.validity));
    if !plan.writes() {
        plan.resign = true;
    }
}

/// The first half of a publish: everything read and verified, the plan computed, nothing written.
pub(crate) struct Prepared {
    pub gathered: Gathered,
    pub plan: Plan,
    pub store: S3Store,
    pub layout: Layout,
    pub published: Published,
    /// `[deny] fingerprints`.
    pub denied: BTreeSet<String>,
    /// The audit canary's current and previous keys (`canary::fingerprints`).
    pub canary: BTreeSet<String>,
    /// Who each contested key was published for (read only when some key is contested).
    pub owners: Option<Owners>,
    /// The published files of the groups with a member whose home could not be read: those
    /// members' lines are carried over from them.
    pub carried: HashMap<String, PublishedFile>,
}

impl Prepared {
    /// The renderer of this run's group files (a publish renders again the files it writes).
    pub fn renderer(&self) -> Renderer<'_> {
        Renderer::new(&self.gathered.keys, &self.denied, self.owners.as_ref())
            .restrict(&self.gathered.checked.policy, &self.gathered.resolution)
            .without_canary(self.canary.clone())
    }
}

/// How a run starts from what is published.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Start {
    /// The lowest generation the next index may have (after the index was lost).
    pub min_generation: Option<u64>,
    /// The time the policy and AD are judged at (`--now`, tests only); `None`: the clock.
    pub now: Option<SystemTime>,
}

pub(crate) async fn prepare(
    settings: &Settings,
    selection: Selection<'_>,
    start: Start,
) -> anyhow::Result<Prepared> {
    let s3 = settings.s3()?;
    let gathered = gather(settings, start.now.unwrap_or_else(SystemTime::now)).await?;
    let s3_started = Instant::now();
    let store = S3Store::connect(s3, Timeouts::PUBLISHER).await;
    let layout = Layout {
        prefix: s3.prefix.clone(),
    };
    let verifier = match &settings.signing {
        Some(_) => crate::published::verifier(settings)?,
        None => None,
    };
    let published = Published::read(
        &store,
        &layout,
        &s3.bucket,
        verifier.as_ref(),
        start.min_generation,
    )
    .await?;
    let denied: BTreeSet<String> = gathered
        .checked
        .policy
        .deny
        .fingerprints
        .iter()
        .cloned()
        .collect();
    let owners = if crate::render::contested(&gathered.keys).is_empty() {
        None
    } else {
        Some(published.owners(&store, &layout).await?)
    };
    let canary = crate::canary::fingerprints(
        settings
            .canary
            .as_ref()
            .map(|canary| canary.key_dir.as_path()),
        published.index.canary.as_deref(),
    );
    let mut prepared = Prepared {
        gathered,
        plan: Plan {
            groups: BTreeMap::new(),
            problems: Vec::new(),
            guard: Default::default(),
            index: Index::empty(),
            owners: None,
            resign: false,
            rewrite: published.index.is_legacy(),
            canary_changed: false,
            people: 0,
            keys: 0,
        },
        store,
        layout,
        published,
        denied,
        canary,
        owners,
        carried: HashMap::new(),
    };
    prepared.carried = carried_files(&prepared, selection).await?;
    let s3_read = s3_started.elapsed();
    let plan_started = Instant::now();
    let mut plan = plan_groups(&prepared, selection, &settings.safety).await?;
    plan.rewrite = prepared.plan.rewrite;
    plan.index.canary = settings
        .canary
        .as_ref()
        .and_then(|canary| crate::canary::shipped_line(&canary.key_dir));
    plan.canary_changed = plan.index.canary != prepared.published.index.canary;
    let published_index = &prepared.published.index;
    plan.index.generation = if plan.writes() {
        prepared.published.next_generation(start.min_generation)?
    } else {
        published_index.generation
    };
    plan.index.deployment = Some(crate::index::deployment(&s3.bucket, &s3.prefix));
    plan.index.policy_commit = if plan.has_changes() {
        prepared.gathered.policy_commit.clone()
    } else {
        published_index.policy_commit.clone()
    };
    if let Some(signing) = &settings.signing {
        sign_by_schedule(&mut plan, published_index, signing, SystemTime::now());
        if plan.resign {
            plan.index.generation = prepared.published.next_generation(start.min_generation)?;
        }
    }
    let mut problems = prepared.gathered.problems.clone();
    problems.append(&mut plan.problems);
    problems.sort();
    problems.dedup();
    plan.problems = problems;
    prepared.plan = plan;
    // One line with the time of each phase, for operators and `scripts/bench scale`. `plan`
    // includes fetching the published files of the groups that changed (none on a quiet run).
    let timings = &prepared.gathered.timings;
    let counts = &prepared.store.counts;
    tracing::info!(
        directory_s = timings.directory.as_secs_f64(),
        resolve_s = timings.resolve.as_secs_f64(),
        homes_s = timings.homes.as_secs_f64(),
        s3_read_s = s3_read.as_secs_f64(),
        plan_s = plan_started.elapsed().as_secs_f64(),
        s3_gets = counts.gets.load(std::sync::atomic::Ordering::Relaxed),
        s3_bytes_read = counts.bytes_read.load(std::sync::atomic::Ordering::Relaxed),
        "prepared the plan"
    );
    Ok(prepared)
}

/// The published files of the (selected) groups that have a member whose home could not be read.
async fn carried_files(
    prepared: &Prepared,
    selection: Selection<'_>,
) -> anyhow::Result<HashMap<String, PublishedFile>> {
    let renderer = prepared.renderer();
    let wanted: Vec<String> = prepared
        .gathered
        .resolution
        .access_groups
        .iter()
        .filter(|(name, _)| selection.is_none_or(|set| set.contains(*name)))
        .filter(|(_, membership)| !renderer.unknown_members(membership).is_empty())
        .map(|(name, _)| name.clone())
        .collect();
    let mut carried = HashMap::new();
    prepared
        .published
        .files(
            &prepared.store,
            &prepared.layout,
            wanted,
            &Arc::default(),
            |group, file| {
                if let Some(file) = file {
                    carried.insert(group, file);
                }
            },
        )
        .await?;
    Ok(carried)
}

/// Plans every access group: each selected group is rendered into a digest and compared with the
/// index; only the groups that changed are rendered into text and compared, person by person,
/// with their published file.
async fn plan_groups(
    prepared: &Prepared,
    selection: Selection<'_>,
    safety: &crate::settings::SafetySettings,
) -> anyhow::Result<Plan> {
    let selected = |group: &str| selection.is_none_or(|set| set.contains(group));
    let renderer = prepared.renderer();
    let published = &prepared.published.index;
    let access_groups = &prepared.gathered.resolution.access_groups;
    let inputs = Inputs {
        resolution: &prepared.gathered.resolution,
        policy: &prepared.gathered.checked.policy,
        safety,
        denied_keys: renderer.denied_keys(),
    };
    let mut groups = BTreeMap::new();
    let mut changed = Vec::new();
    for (name, membership) in access_groups {
        if !selected(name) {
            if let Some(entry) = published.groups.get(name) {
                groups.insert(name.clone(), crate::plan::kept(entry));
            }
            continue;
        }
        // A group the index does not list is new: no digest to compare, it is listed below.
        let Some(entry) = published.groups.get(name) else {
            changed.push(name.clone());
            continue;
        };
        let digest = renderer.digest(name, membership, prepared.carried.get(name));
        if entry.sha256 == digest.sha256 {
            groups.insert(name.clone(), crate::plan::unchanged(&digest));
        } else {
            changed.push(name.clone());
        }
    }
    let gone: Vec<String> = published
        .groups
        .iter()
        .filter(|(name, _)| !access_groups.contains_key(*name))
        .map(|(name, _)| name.clone())
        .collect();
    for name in &gone {
        if !selected(name) {
            groups.insert(name.clone(), crate::plan::kept(&published.groups[name]));
        }
    }
    changed.extend(gone.into_iter().filter(|name| selected(name)));
    let mut failed = None;
    let mut interner = crate::interned::Interner::default();
    // Only groups the index lists are read back; their lines are mostly keys rendered here.
    let known = Arc::new(
        if changed
            .iter()
            .any(|name| published.groups.contains_key(name))
        {
            renderer.known_lines()
        } else {
            KnownLines::default()
        },
    );
    prepared
        .published
        .files(
            &prepared.store,
            &prepared.layout,
            changed,
            &known,
            |name, previous| {
                let group_plan = match access_groups.get(&name) {
                    Some(membership) => {
                        let listing =
                            renderer.listing(&name, membership, prepared.carried.get(&name));
                        let previous = previous.as_ref();
                        crate::plan::compare(&name, &listing, previous, &inputs, &mut interner)
                    }
                    None => match &previous {
                        Some(previous) => crate::plan::deleted(previous, &mut interner),
                        None => {
                            failed = Some(name.clone());
                            return;
                        }
                    },
                };
                groups.insert(name, group_plan);
            },
        )
        .await?;
    if let Some(name) = failed {
        anyhow::bail!("access group {name} vanished from the index while planning");
    }
    let mut owners = renderer.owners();
    for (group, file) in &prepared.carried {
        let Some(membership) = access_groups.get(group) else {
            continue;
        };
        for user in renderer.unknown_members(membership) {
            if let Some(block) = file.block(user) {
                for fingerprint in block.fingerprints() {
                    if !prepared.denied.contains(fingerprint) {
                        owners.insert(fingerprint.to_owned(), user.to_owned());
                    }
                }
            }
        }
    }
    let mut plan = Plan {
        groups,
        problems: renderer.problems().to_vec(),
        guard: Default::default(),
        index: Index::empty(),
        owners: crate::plan::owners_change(&owners, published),
        resign: false,
        rewrite: false,
        canary_changed: false,
        people: owners.values().collect::<BTreeSet<_>>().len(),
        keys: owners.len(),
    };
    plan.index.groups = plan
        .groups
        .iter()
        .filter_map(|(name, group)| Some((name.clone(), group.next.clone()?)))
        .collect();
    plan.index.owners = Some(sha256_hex(&owners_to_json(&owners)));
    plan.guard = judge(&plan, safety);
    Ok(plan)
}
