//! `keyhole whois SHA256:…`: the person (and access groups) behind a key fingerprint seen in
//! sshd's log. On an instance it reads the attribution file in the cache, which covers the keys
//! this host serves; elsewhere the bucket, which covers every key: the index (its signature
//! verified with `instance.verify_key` or the public half of `[signing] key_file` before anyone is
//! named), the owners object and the group files, each checked against the index.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Format, GlobalArgs};
use crate::bucket::deployment::Deployment;
use crate::bucket::published::Published;
use crate::bucket::store::Timeouts;
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::instance::{Attribution, Cache};
use crate::settings::Settings;

/// Show which person, through which access groups, a key fingerprint belongs to.
///
/// On an instance (an [instance] section and a refreshed cache) it answers for the keys this host
/// serves, from the cache; elsewhere it reads the signed index, the owners object and the group
/// files in S3.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// The key's fingerprint, as sshd logs it (SHA256:…).
    fingerprint: String,

    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = global.settings()?;
    let attribution = match on_instance(&settings, &args.fingerprint)? {
        Some(answer) => answer,
        None => from_bucket(&settings, &args.fingerprint).await?,
    };
    match args.format {
        Format::Json => {
            let groups: Vec<_> = attribution
                .groups
                .iter()
                .map(|(name, via)| json!({"name": name, "via": via}))
                .collect();
            let report = json!({"fingerprint": args.fingerprint, "user": attribution.user, "access_groups": groups});
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Format::Text | Format::Markdown => {
            println!("{} = {}", args.fingerprint, attribution.describe());
        }
    }
    Ok(Exit::Success)
}

/// The answer from this host's cache: `None` when this is no instance or its cache was never
/// refreshed; an error when the key is not one this host serves.
fn on_instance(settings: &Settings, fingerprint: &str) -> anyhow::Result<Option<Attribution>> {
    let Ok(instance) = settings.instance() else {
        return Ok(None);
    };
    let cache = Cache::new(&instance.cache_dir);
    let Some((_, index)) = cache.index()? else {
        return Ok(None);
    };
    if let Some(canary) = Attribution::canary(index.canary.as_deref(), fingerprint) {
        return Ok(Some(canary));
    }
    match cache.attribution(fingerprint)? {
        Some(attribution) => Ok(Some(attribution)),
        None => anyhow::bail!(
            "{fingerprint} is not a key this host serves (access groups {}, index generation {}); \
             whois off an instance reads the bucket",
            instance.access_groups.join(", "),
            index.generation
        ),
    }
}

/// The answer from the bucket: the owners object names the person, and the group files (each
/// checked against the verified index) the access groups and chains. Reads every group file, which
/// is fine for a command run by hand during an investigation.
async fn from_bucket(settings: &Settings, fingerprint: &str) -> anyhow::Result<Attribution> {
    let s3 = settings.s3()?;
    let deployment = Deployment::connect(s3, Timeouts::PUBLISHER).await;
    let (store, layout) = (&deployment.store, &deployment.layout);
    let verifier = crate::bucket::published::verifier(settings)?;
    if verifier.is_none() {
        tracing::warn!(
            "no key to verify the index with (instance.verify_key or [signing]): the answer is \
             only as trustworthy as the bucket"
        );
    }
    // The trust an instance applies: an index every instance refuses names nobody.
    let seen = crate::instance::fetch::local_seen(settings)?;
    let published = Published::for_reading(
        store,
        layout,
        &deployment.name,
        verifier.as_ref(),
        seen.as_ref(),
        false,
    )
    .await?;
    if let Some(canary) = Attribution::canary(published.index.canary.as_deref(), fingerprint) {
        return Ok(canary);
    }
    let owners = match &published.index.owners {
        Some(sha256) => crate::bucket::index::owners_from_json(
            &crate::bucket::published::checked(store, &layout.owners(sha256), sha256).await?,
        )?,
        None => Default::default(),
    };
    let Some(user) = owners.get(fingerprint) else {
        anyhow::bail!(
            "{fingerprint} is not a key keyhole publishes (index generation {})",
            published.index.generation
        );
    };
    let mut groups = BTreeMap::new();
    let names: Vec<String> = published.index.groups.keys().cloned().collect();
    published
        .files(store, layout, names, &Default::default(), |group, file| {
            let found = file
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .and_then(|file| {
                    file.blocks.iter().find(|block| {
                        &block.user == user && block.fingerprints().any(|fp| fp == fingerprint)
                    })
                });
            if let Some(block) = found {
                groups.insert(group, block.via.clone());
            }
        })
        .await?;
    Ok(Attribution {
        user: user.clone(),
        groups,
    })
}
