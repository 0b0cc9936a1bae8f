//! `keyhole whois SHA256:…`: the person (and access groups) behind a key fingerprint seen in
//! sshd's log. On an instance it reads the attribution file in the cache, which covers the keys
//! this host serves; elsewhere the published manifest in S3, which covers every key.

use anyhow::Context;
use serde_json::json;

use super::{Format, GlobalArgs};
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::instance::{Attribution, Cache};
use crate::manifest::Manifest;
use crate::settings::Settings;
use crate::store::{Fetched, ObjectStore, S3Store, Timeouts};

/// Show which person, through which access groups, a key fingerprint belongs to.
///
/// On an instance (an [instance] section and a refreshed cache) it answers for the keys this host
/// serves, from the cache; elsewhere it reads the published manifest in S3.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// The key's fingerprint, as sshd logs it (SHA256:…).
    fingerprint: String,

    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = Settings::load(global.config.as_deref())?;
    let attribution = match on_instance(&settings, &args.fingerprint)? {
        Some(answer) => answer,
        None => from_manifest(&settings, &args.fingerprint).await?,
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
    match cache.attribution(fingerprint)? {
        Some(attribution) => Ok(Some(attribution)),
        None => anyhow::bail!(
            "{fingerprint} is not a key this host serves (access groups {}, index generation {}); \
             whois off an instance reads the whole manifest",
            instance.access_groups.join(", "),
            index.generation
        ),
    }
}

async fn from_manifest(settings: &Settings, fingerprint: &str) -> anyhow::Result<Attribution> {
    let s3 = settings.s3()?;
    let store = S3Store::connect(s3, Timeouts::PUBLISHER).await;
    let key = format!("{}manifest.json", s3.prefix);
    let manifest = match store
        .get(&key, None)
        .await
        .context("reading the published manifest")?
    {
        Fetched::Object(object) => Manifest::parse(&object.body)?,
        _ => anyhow::bail!("no manifest is published at s3://{}/{key}", s3.bucket),
    };
    let Some(owner) = manifest.fingerprints.get(fingerprint) else {
        anyhow::bail!(
            "{fingerprint} is not a key keyhole publishes (manifest generation {})",
            manifest.generation
        );
    };
    let groups = owner
        .groups
        .iter()
        .map(|group| {
            let via = manifest
                .groups
                .get(group)
                .and_then(|entry| entry.via.get(&owner.user))
                .map(|via| via.to_vec())
                .unwrap_or_default();
            (group.clone(), via)
        })
        .collect();
    Ok(Attribution {
        user: owner.user.clone(),
        groups,
    })
}
