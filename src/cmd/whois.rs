//! `keyhole whois SHA256:…`: the person (and access groups) behind a key fingerprint seen in
//! sshd's log. On an instance it reads the verified manifest in the cache; elsewhere the
//! published manifest in S3.

use anyhow::Context;
use serde_json::json;

use super::{Format, GlobalArgs};
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::instance::{self, Cache};
use crate::manifest::Manifest;
use crate::settings::Settings;
use crate::store::{Fetched, ObjectStore, S3Store, Timeouts};

/// Show which person, through which access groups, a key fingerprint belongs to.
///
/// Reads the instance cache when this host has one, else the published manifest in S3.
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
    let manifest = manifest(&settings).await?;
    let Some((user, groups)) = instance::owner_of(&manifest, &args.fingerprint) else {
        anyhow::bail!(
            "{} is not a key keyhole publishes (manifest generation {})",
            args.fingerprint,
            manifest.generation
        );
    };
    match args.format {
        Format::Json => {
            let groups: Vec<_> = groups
                .iter()
                .map(|(name, via)| json!({"name": name, "via": via}))
                .collect();
            let report =
                json!({"fingerprint": args.fingerprint, "user": user, "access_groups": groups});
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Format::Text | Format::Markdown => {
            let grants: Vec<String> = groups
                .keys()
                .map(|group| instance::describe_grant(&manifest, group, user))
                .collect();
            println!("{} = {user} ({})", args.fingerprint, grants.join("; "));
        }
    }
    Ok(Exit::Success)
}

async fn manifest(settings: &Settings) -> anyhow::Result<Manifest> {
    if let Ok(instance) = settings.instance()
        && let Some((_, manifest)) = Cache::new(&instance.cache_dir).manifest()?
    {
        return Ok(manifest);
    }
    let s3 = settings.s3()?;
    let store = S3Store::connect(s3, Timeouts::PUBLISHER).await;
    let key = format!("{}manifest.json", s3.prefix);
    match store
        .get(&key, None)
        .await
        .context("reading the published manifest")?
    {
        Fetched::Object(object) => Ok(Manifest::parse(&object.body)?),
        _ => anyhow::bail!("no manifest is published at s3://{}/{key}", s3.bucket),
    }
}
