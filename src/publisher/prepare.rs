//! The shared first half of `plan` and `publish`: everything read and verified, the next index
//! planned, nothing written ([`prepare`] → [`Prepared`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::bucket::deployment::Deployment;
use crate::bucket::group_file::{KnownLines, PublishedFile};
use crate::bucket::index::{Index, OwnerRecords, Owners};
use crate::bucket::published::Published;
use crate::bucket::store::Timeouts;
use crate::digest::sha256_hex;
use crate::publisher::gather::{Gathered, gather};
use crate::publisher::plan::{Inputs, Plan, Selection, judge};
use crate::publisher::render::Renderer;
use crate::publisher::render_memo::RenderMemo;
use crate::settings::Settings;

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
        .map(crate::bucket::signing::parse_time)
    {
        Some(Ok(not_after)) => {
            crate::bucket::signing::needs_resign(not_after, signing.validity, now)
        }
        // Never signed (or unreadable): sign now.
        _ => true,
    };
    if !plan.writes() && !due {
        plan.index.not_after = published.not_after.clone();
        return;
    }
    plan.index.not_after = Some(crate::bucket::signing::format_time(now + signing.validity));
    if !plan.writes() {
        plan.resign = true;
    }
}

/// The first half of a publish: everything read and verified, the plan computed, nothing written.
pub struct Prepared {
    pub gathered: Gathered,
    pub plan: Plan,
    /// The bucket and prefix published to, with the store that reaches them.
    pub deployment: Deployment,
    pub published: Published,
    /// `[deny] fingerprints`.
    pub denied: BTreeSet<String>,
    /// The audit canary's current and previous keys (`canary::fingerprints`).
    pub canary: BTreeSet<String>,
    /// Who each contested key was published for (read only when some key is contested).
    pub owners: Option<Owners>,
    /// The published owners object's records, when this run read them (see [`revise_owners`]).
    pub records: Option<OwnerRecords>,
    /// The revocation list of a publish the guard refuses: the published list plus `[deny]`,
    /// when that differs from the published one (`[deny]` is never held).
    pub revoked_deny_only: Option<Vec<u8>>,
    /// The published files of the groups with a member whose home could not be read: those
    /// members' lines are carried over from them (re-validated with today's key rules).
    pub carried: HashMap<String, PublishedFile>,
    /// Groups whose published object is missing or altered (or not read back, with
    /// `--rewrite-all`): planned as if their previous file were unknown, written from a fresh
    /// render, and never held back by the guard (it has no removals to judge).
    pub unread: BTreeSet<String>,
    /// The publisher's head file, and since when each member's home has been unreadable (what
    /// the head records after this run).
    pub head_path: std::path::PathBuf,
    pub unknown_since: BTreeMap<String, String>,
    /// The publisher's copies of the index and of the owners object (`local_copy`).
    pub index_copy: crate::bucket::local_copy::ObjectCopy,
    pub owners_copy: crate::bucket::local_copy::ObjectCopy,
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
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// The lowest generation the next index may have (after the index was lost).
    pub min_generation: Option<u64>,
    /// The time the policy and AD are judged at (`--now`, test builds only); `None`: the clock.
    pub now: Option<SystemTime>,
    /// `--accept-index SHA256`: the operator's choice of base index, past the head.
    pub accept_index: Option<String>,
    /// `--accept-expired`: an index past its `not_after` may be the base.
    pub accept_expired: bool,
    /// `--migrate`: a legacy format-1 index may be the base.
    pub migrate: bool,
    /// `--rewrite-all`: nothing but the index is read back from the bucket.
    pub rewrite_all: bool,
    /// `--full`, and whether the directory state is written back (publish, under its lock).
    pub directory: crate::publisher::gather::Reading,
}

pub async fn prepare(
    settings: &Settings,
    selection: Selection<'_>,
    start: &Start,
) -> anyhow::Result<Prepared> {
    let s3 = settings.s3()?;
    let now = start.now.unwrap_or_else(SystemTime::now);
    let gathered = gather(settings, now, start.directory).await?;
    let head_path = crate::bucket::head::path_beside(&settings.safety.lock_file);
    let head = crate::bucket::head::Head::load(&head_path)?;
    let s3_started = Instant::now();
    let deployment = Deployment::connect(s3, Timeouts::PUBLISHER).await;
    let (store, layout) = (&deployment.store, &deployment.layout);
    let verifier = match &settings.signing {
        Some(_) => crate::bucket::published::verifier(settings)?,
        None => None,
    };
    let copy = |name| {
        crate::bucket::local_copy::ObjectCopy::beside(
            &settings.safety.lock_file,
            name,
            &deployment.name,
        )
    };
    let (index_copy, owners_copy) = (
        copy(crate::bucket::local_copy::INDEX_COPY),
        copy(crate::bucket::local_copy::OWNERS_COPY),
    );
    let published = Published::read(
        store,
        layout,
        &deployment.bucket,
        verifier.as_ref(),
        crate::bucket::published::BaseRules {
            min_generation: start.min_generation,
            head: head.as_ref(),
            head_path: Some(&head_path),
            accept_index: start.accept_index.as_deref(),
            accept_expired: start.accept_expired,
            migrate: start.migrate,
            now: Some(SystemTime::now()),
            index_copy: (!start.rewrite_all).then_some(&index_copy),
        },
    )
    .await?;
    let unknown_since = unknown_since(&gathered, head.as_ref(), now);
    let denied: BTreeSet<String> = gathered
        .checked
        .policy
        .deny
        .fingerprints
        .iter()
        .cloned()
        .collect();
    let records = if crate::publisher::render::contested(&gathered.keys).is_empty() {
        None
    } else if start.rewrite_all {
        tracing::warn!(
            "--rewrite-all reads nothing back: the owners object is not read, so every key \
             held by more than one person goes to nobody this run"
        );
        Some(OwnerRecords::new())
    } else {
        Some(
            published
                .owner_records_with(store, layout, now, Some(&owners_copy))
                .await?,
        )
    };
    let canary = crate::canary::fingerprints(
        settings
            .canary
            .as_ref()
            .map(|canary| canary.key_dir.as_path()),
        published.index.canary.as_deref(),
    );
    let owners = records
        .as_ref()
        .map(|records| retained_owners(records, &gathered, settings, now));
    let mut prepared = Prepared {
        gathered,
        plan: Plan {
            groups: BTreeMap::new(),
            problems: Vec::new(),
            guard: Default::default(),
            index: Index::empty(),
            owners: None,
            revoked: None,
            resign: false,
            rewrite: published.index.is_legacy(),
            canary_changed: false,
            people: 0,
            keys: 0,
        },
        deployment,
        published,
        denied,
        canary,
        owners,
        records,
        revoked_deny_only: None,
        carried: HashMap::new(),
        unread: BTreeSet::new(),
        head_path,
        unknown_since,
        index_copy,
        owners_copy,
    };
    let (carried, mut carry_problems) =
        carried_files(&prepared, selection, settings, start, now).await?;
    prepared.carried = carried;
    prepared.gathered.problems.append(&mut carry_problems);
    let s3_read = s3_started.elapsed();
    let plan_started = Instant::now();
    let (mut plan, mut unread, mut active) =
        plan_groups(&prepared, selection, &settings.safety, start.rewrite_all).await?;
    if revise_owners(&mut prepared, &plan, settings, now).await? {
        // Someone holds a key the owners object gives to someone else: render again with it.
        (plan, unread, active) =
            plan_groups(&prepared, selection, &settings.safety, start.rewrite_all).await?;
    }
    prepared.unread = unread;
    revocation_plan(&mut prepared, &mut plan, &active, settings, now);
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
    plan.index.deployment = Some(prepared.deployment.name.clone());
    plan.index.previous = prepared.published.sha256.clone();
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
    let counts = &prepared.deployment.store.counts;
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

/// Since when each member whose home is unreadable now has been so, continuously: the head's
/// record, or `now` for a home found unreadable this run. A readable home drops out.
fn unknown_since(
    gathered: &Gathered,
    head: Option<&crate::bucket::head::Head>,
    now: SystemTime,
) -> BTreeMap<String, String> {
    gathered
        .keys
        .iter()
        .filter(|(_, keys)| matches!(keys, crate::publisher::render::UserKeys::Unknown(_)))
        .map(|(user, _)| {
            let since = head
                .and_then(|head| head.unknown_since.get(user))
                .filter(|since| crate::bucket::signing::parse_time(since).is_ok())
                .cloned()
                .unwrap_or_else(|| crate::bucket::signing::format_time(now));
            (user.clone(), since)
        })
        .collect()
}

/// The published files of the (selected) groups that have a member whose home could not be read,
/// with each such member's lines re-validated by today's rules: lines are carried only out of an
/// index this publisher trusts as current (`Published::carry_trusted`), only lines today's key
/// policy accepts, at most `max_keys_per_user` a person, and only for `homes.max_carry` of
/// continuous unreadability. Every line or person not carried is a problem.
async fn carried_files(
    prepared: &Prepared,
    selection: Selection<'_>,
    settings: &Settings,
    start: &Start,
    now: SystemTime,
) -> anyhow::Result<(
    HashMap<String, PublishedFile>,
    Vec<crate::publisher::render::Problem>,
)> {
    let renderer = prepared.renderer();
    let mut problems = Vec::new();
    let mut unknown: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, membership) in &prepared.gathered.resolution.access_groups {
        if selection.is_some_and(|set| !set.contains(name)) {
            continue;
        }
        let members = renderer.unknown_members(membership);
        if !members.is_empty() {
            unknown.insert(
                name.clone(),
                members.into_iter().map(str::to_owned).collect(),
            );
        }
    }
    let not_carried = |why: &str, problems: &mut Vec<crate::publisher::render::Problem>| {
        let people: BTreeSet<&String> = unknown.values().flatten().collect();
        for user in people {
            problems.push(crate::publisher::render::Problem {
                user: user.clone(),
                reason: format!("keys unknown, and none carried: {why}"),
            });
        }
    };
    if unknown.is_empty() {
        return Ok((HashMap::new(), problems));
    }
    if start.rewrite_all {
        not_carried(
            "--rewrite-all reads nothing back from the bucket",
            &mut problems,
        );
        return Ok((HashMap::new(), problems));
    }
    if !prepared.published.carry_trusted {
        tracing::error!(
            "the published index is not the one this publisher's head names: no line is carried \
             for members whose homes cannot be read"
        );
        not_carried(
            "the published index is not the one this publisher's head names",
            &mut problems,
        );
        return Ok((HashMap::new(), problems));
    }
    // Past homes.max_carry of continuous unreadability, a person is carried no longer.
    let expired: BTreeSet<&str> = prepared
        .unknown_since
        .iter()
        .filter(|(_, since)| {
            crate::bucket::signing::parse_time(since)
                .is_ok_and(|since| since + settings.homes.max_carry <= now)
        })
        .map(|(user, _)| user.as_str())
        .collect();
    for user in &expired {
        problems.push(crate::publisher::render::Problem {
            user: (*user).to_owned(),
            reason: format!(
                "keys unknown since {}, longer than homes.max_carry ({}): no key is carried any \
                 more",
                prepared.unknown_since[*user],
                humantime::format_duration(settings.homes.max_carry)
            ),
        });
    }
    let mut carried = HashMap::new();
    prepared
        .published
        .files(
            &prepared.deployment.store,
            &prepared.deployment.layout,
            unknown.keys().cloned().collect(),
            &Arc::default(),
            |group, file| match file {
                Ok(Some(file)) => {
                    carried.insert(group, file);
                }
                Ok(None) => {}
                Err(damaged) => {
                    tracing::error!(group = %group, "{damaged}: nothing is carried out of it");
                    for user in unknown.get(&group).into_iter().flatten() {
                        problems.push(crate::publisher::render::Problem {
                            user: user.clone(),
                            reason: format!(
                                "keys unknown, and none carried in access group {group}: {damaged}"
                            ),
                        });
                    }
                }
            },
        )
        .await?;
    for (group, file) in &mut carried {
        let members = &unknown[group];
        file.blocks.retain_mut(|block| {
            if !members.contains(&block.user) {
                return true;
            }
            if expired.contains(block.user.as_str()) {
                return false;
            }
            revalidate(group, block, settings, &mut problems);
            !block.keys.is_empty()
        });
    }
    Ok((carried, problems))
}

/// Keeps of a carried block only the lines today's key policy accepts, at most
/// `max_keys_per_user`, reporting each line dropped.
fn revalidate(
    group: &str,
    block: &mut crate::bucket::group_file::Block,
    settings: &Settings,
    problems: &mut Vec<crate::publisher::render::Problem>,
) {
    let mut kept = 0;
    let user = block.user.clone();
    block.keys.retain(|(line, fingerprint)| {
        let parsed = crate::keys::parse_authorized_keys(line, &settings.keys);
        let why = match parsed.dropped.first() {
            _ if parsed.keys.len() == 1 && kept < settings.max_keys_per_user => {
                kept += 1;
                return true;
            }
            _ if parsed.keys.len() == 1 => format!(
                "more than max_keys_per_user ({})",
                settings.max_keys_per_user
            ),
            Some(dropped) => dropped.reason.to_string(),
            None => "not a key line".to_owned(),
        };
        problems.push(crate::publisher::render::Problem {
            user: user.clone(),
            reason: format!(
                "carried key {} dropped from access group {group}: {why}",
                fingerprint.as_deref().unwrap_or("(undecodable)")
            ),
        });
        false
    });
}

/// Plans every access group: each selected group is rendered into a digest and compared with the
/// index; only the groups that changed are rendered into text and compared, person by person,
/// with their published file.
async fn plan_groups(
    prepared: &Prepared,
    selection: Selection<'_>,
    safety: &crate::settings::SafetySettings,
    rewrite_all: bool,
) -> anyhow::Result<(Plan, BTreeSet<String>, Owners)> {
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
    let mut memo = RenderMemo::load(
        crate::publisher::render_memo::path_beside(&safety.lock_file),
        &prepared.deployment.name,
    );
    let mut inputs_of = HashMap::new();
    for (name, membership) in access_groups {
        if !selected(name) {
            if let Some(entry) = published.groups.get(name) {
                groups.insert(name.clone(), crate::publisher::plan::kept(entry));
            }
            continue;
        }
        // A group the index does not list is new: no digest to compare, it is listed below.
        let Some(entry) = published.groups.get(name) else {
            changed.push(name.clone());
            continue;
        };
        let carried = prepared.carried.get(name);
        let input = renderer.input_digest(name, membership, carried);
        let remembered = input.as_ref().and_then(|input| memo.get(name, input));
        let digest = match remembered {
            Some(digest) => digest,
            None => {
                let digest = renderer.digest(name, membership, carried);
                if let Some(input) = &input {
                    memo.put(name, input.clone(), &digest);
                }
                digest
            }
        };
        if entry.sha256 == digest.sha256 {
            groups.insert(name.clone(), crate::publisher::plan::unchanged(&digest));
        } else {
            // Listed below, then remembered with what it renders to now.
            if let Some(input) = input {
                inputs_of.insert(name.clone(), input);
            }
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
            groups.insert(
                name.clone(),
                crate::publisher::plan::kept(&published.groups[name]),
            );
        }
    }
    changed.extend(gone.into_iter().filter(|name| selected(name)));
    let mut failed = None;
    let mut unread = BTreeSet::new();
    let mut unread_problems = Vec::new();
    let mut interner = crate::interned::Interner::default();
    if rewrite_all {
        // Nothing is read back: every changed group is planned from nothing and written fresh.
        for name in changed
            .iter()
            .filter(|name| published.groups.contains_key(*name))
        {
            unread.insert(name.clone());
        }
        changed.retain(|name| !unread.contains(name));
    }
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
            &prepared.deployment.store,
            &prepared.deployment.layout,
            changed,
            &known,
            |name, previous| {
                let previous = match previous {
                    Ok(previous) => previous,
                    Err(damaged) => {
                        tracing::error!(
                            group = %name,
                            "{damaged}: planned as if its previous file were unknown (no \
                             removals computed) and written again from a fresh render"
                        );
                        unread_problems.push(crate::publisher::render::Problem {
                            user: format!("access group {name}"),
                            reason: format!(
                                "{damaged}; planned from nothing, rewritten from a fresh render"
                            ),
                        });
                        unread.insert(name.clone());
                        return;
                    }
                };
                let group_plan = match access_groups.get(&name) {
                    Some(membership) => {
                        let carried = prepared.carried.get(&name);
                        let listing = renderer.listing(&name, membership, carried);
                        let input = inputs_of
                            .remove(&name)
                            .or_else(|| renderer.input_digest(&name, membership, carried));
                        if let Some(input) = input {
                            memo.put(&name, input, &listing.digest());
                        }
                        let previous = previous.as_ref();
                        crate::publisher::plan::compare(
                            &name,
                            &listing,
                            previous,
                            &inputs,
                            &mut interner,
                        )
                    }
                    None => match &previous {
                        Some(previous) => crate::publisher::plan::deleted(previous, &mut interner),
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
    for name in &unread {
        let group_plan = match access_groups.get(name) {
            Some(membership) => {
                let listing = renderer.listing(name, membership, prepared.carried.get(name));
                crate::publisher::plan::compare(name, &listing, None, &inputs, &mut interner)
            }
            None => crate::publisher::plan::deleted(&PublishedFile::default(), &mut interner),
        };
        groups.insert(name.clone(), group_plan);
    }
    memo.retain(|group| access_groups.contains_key(group));
    memo.store();
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
    let mut problems = renderer.problems().to_vec();
    problems.append(&mut unread_problems);
    let mut plan = Plan {
        groups,
        problems,
        guard: Default::default(),
        index: Index::empty(),
        // Set by `revocation_plan`, which needs the published records.
        owners: None,
        revoked: None,
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
    plan.guard = judge(&plan, safety);
    Ok((plan, unread, owners))
}

/// Who the published records give each key to, past the retention dropped.
fn retained_owners(
    records: &OwnerRecords,
    gathered: &Gathered,
    settings: &Settings,
    now: SystemTime,
) -> Owners {
    let deny = &gathered.checked.policy.deny;
    crate::bucket::revocation_list::owners_view(&crate::publisher::revocation::retained(
        records,
        now,
        settings.revocation_retention,
        &deny.fingerprints.iter().cloned().collect(),
        &deny.users.iter().cloned().collect(),
    ))
}

/// Reads the published owners records when the next owners object or revocation list may differ
/// from the published ones: when a group changed, `[deny]` names anything, the index is due to
/// be signed again (so ended records past the retention are dropped at least that often), or
/// the published index has no list yet. A run where nothing changed reads only the index.
/// Returns true when the plan must be computed again because someone holds a key the records
/// give to someone else.
async fn revise_owners(
    prepared: &mut Prepared,
    plan: &Plan,
    settings: &Settings,
    now: SystemTime,
) -> anyhow::Result<bool> {
    let published = &prepared.published.index;
    let deny = &prepared.gathered.checked.policy.deny;
    let resign_due = settings.signing.as_ref().is_some_and(|signing| {
        match published
            .not_after
            .as_deref()
            .map(crate::bucket::signing::parse_time)
        {
            Some(Ok(not_after)) => {
                crate::bucket::signing::needs_resign(not_after, signing.validity, SystemTime::now())
            }
            _ => true,
        }
    });
    let canary = settings
        .canary
        .as_ref()
        .and_then(|canary| crate::canary::shipped_line(&canary.key_dir));
    let needed = plan.has_changes()
        || canary != published.canary
        || !deny.users.is_empty()
        || !deny.fingerprints.is_empty()
        || resign_due
        || published.revoked.is_none()
        || published.owners.is_none()
        || prepared.records.is_some();
    if !needed {
        return Ok(false);
    }
    let rendered_with_records = prepared.records.is_some();
    if prepared.records.is_none() {
        prepared.records = Some(
            prepared
                .published
                .owner_records_with(
                    &prepared.deployment.store,
                    &prepared.deployment.layout,
                    now,
                    Some(&prepared.owners_copy),
                )
                .await?,
        );
    }
    let Some(records) = &prepared.records else {
        return Ok(false);
    };
    let owners = retained_owners(records, &prepared.gathered, settings, now);
    let retained: OwnerRecords = records
        .iter()
        .filter(|(fingerprint, _)| owners.contains_key(*fingerprint))
        .map(|(fingerprint, record)| (fingerprint.clone(), record.clone()))
        .collect();
    if rendered_with_records
        || !crate::publisher::revocation::taken_over(&retained, &prepared.gathered.keys)
    {
        return Ok(false);
    }
    prepared.owners = Some(owners);
    Ok(true)
}

/// Sets the plan's owners object and revocation list (and the index's names for them), and lets
/// the guard judge the list's growth. Without the published records (a quiet run), both stay as
/// published.
fn revocation_plan(
    prepared: &mut Prepared,
    plan: &mut Plan,
    active: &Owners,
    settings: &Settings,
    now: SystemTime,
) {
    let published = &prepared.published.index;
    let Some(previous) = &prepared.records else {
        plan.index.owners = published.owners.clone();
        plan.index.revoked = published.revoked.clone();
        return;
    };
    let policy = &prepared.gathered.checked.policy;
    let deny_users: BTreeSet<String> = policy.deny.users.iter().cloned().collect();
    let seen = crate::publisher::revocation::seen_keys(&prepared.gathered.keys);
    let mut published_keys = crate::publisher::revocation::published_keys(active, &seen, previous);
    // The canary's key is recorded like a person's: when a rotation stops shipping it, it is
    // revoked on every path, so a probe proves RevokedKeys per host (a previous canary key
    // planted in a login user's own authorized_keys must be refused).
    if let Some((fingerprint, key)) = settings
        .canary
        .as_ref()
        .and_then(|canary| crate::canary::shipped_line(&canary.key_dir))
        .and_then(|line| crate::canary::shipped_key(&line))
    {
        published_keys.insert(
            fingerprint,
            crate::publisher::revocation::Published {
                user: crate::publisher::revocation::CANARY_OWNER.to_owned(),
                key: Some(key),
            },
        );
    }
    let inputs = crate::publisher::revocation::Inputs {
        previous,
        published: &published_keys,
        seen: &seen,
        deny_fingerprints: &prepared.denied,
        deny_users: &deny_users,
        now,
        retention: settings.revocation_retention,
    };
    let next = crate::publisher::revocation::next(inputs);
    // Removed people are the removal guard's to judge (and [deny]'s or `until`'s never held).
    let removed: BTreeSet<&str> = plan
        .groups
        .values()
        .flat_map(|group| group.removed_users.iter())
        .map(|change| change.name.as_str())
        .collect();
    let reasons = crate::publisher::revocation::judge(
        previous,
        &next,
        &removed,
        &prepared.denied,
        &settings.safety,
    );
    if !reasons.is_empty() {
        plan.guard.refused = true;
        plan.guard.reasons.extend(reasons);
    }
    if plan.guard.refused {
        // What a refused publish still commits: the published list plus `[deny]`.
        let unchanged: BTreeMap<String, crate::publisher::revocation::Published> = previous
            .iter()
            .filter(|(_, record)| record.ended.is_none())
            .map(|(fingerprint, record)| {
                let published = crate::publisher::revocation::Published {
                    user: record.user.clone(),
                    key: record.key.clone(),
                };
                (fingerprint.clone(), published)
            })
            .collect();
        let deny_only = crate::publisher::revocation::next(crate::publisher::revocation::Inputs {
            published: &unchanged,
            ..inputs
        });
        prepared.revoked_deny_only = (published.revoked.as_deref()
            != Some(sha256_hex(&deny_only.list).as_str()))
        .then_some(deny_only.list);
    }
    for fingerprint in &next.unenforceable {
        plan.problems.push(crate::publisher::render::Problem {
            user: "[deny]".to_owned(),
            reason: format!(
                "fingerprint {fingerprint}: keyhole never saw its key, so hosts' RevokedKeys \
                 cannot name it (only keyhole's AuthorizedKeysCommand refuses it)"
            ),
        });
    }
    let records = crate::bucket::index::records_to_json(&next.records);
    let records_sha = sha256_hex(&records);
    plan.owners = (published.owners.as_deref() != Some(records_sha.as_str())).then_some(records);
    plan.index.owners = Some(records_sha);
    let list_sha = sha256_hex(&next.list);
    plan.revoked = (published.revoked.as_deref() != Some(list_sha.as_str())).then_some(next.list);
    plan.index.revoked = Some(list_sha);
    tracing::info!(
        revoked = next.revoked.len(),
        unenforceable = next.unenforceable.len(),
        changed = plan.revoked.is_some(),
        "the revocation list"
    );
}
