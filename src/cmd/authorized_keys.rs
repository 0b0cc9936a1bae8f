//! `keyhole authorized-keys USER [FINGERPRINT]`: sshd's `AuthorizedKeysCommand`.
//!
//! Runs at every login, so the common case must be cheap: when every access group of this host
//! is cached and younger than `cache_ttl`, it reads the settings once, reads the cache and
//! prints, with no network, no AWS SDK start-up and no async runtime at all. Otherwise it
//! refreshes the cache within `fetch_timeout` (connect, credentials and reads together) on a
//! single-threaded runtime and, if that fails, serves copies confirmed within `max_stale`; past
//! that it fails closed (no keys, exit 1), and sshd falls back to the emergency keys in
//! `AuthorizedKeysFile`.
//!
//! The host's access groups are the static list plus what `refresh` last resolved from EC2
//! (cached); this command never asks the instance metadata service.
//!
//! stdout carries key lines and nothing else, ever; everything else goes to stderr and syslog.

use std::io::Write as _;
use std::time::SystemTime;

use anyhow::Context as _;

use super::GlobalArgs;
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::index::Index;
use crate::instance::{self, Cache, Layout};
use crate::settings::Settings;
use crate::signing::Verifier;
use crate::store::{S3Store, Timeouts};

/// Print the SSH keys USER may log in with on this host (for sshd's AuthorizedKeysCommand, as
/// `keyhole authorized-keys %u %f`). Only `instance.login_user` gets keys; any other user gets
/// none and exit 0. With FINGERPRINT, logs which person and access group that key belongs to.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// The user logging in (sshd's %u).
    user: String,
    /// The fingerprint of the key offered (sshd's %f).
    fingerprint: Option<String>,
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = Settings::load(global.config.as_deref())?;
    let instance = settings.instance()?;
    if args.user != instance.login_user {
        return Ok(Exit::Success);
    }
    let cache = Cache::new(&instance.cache_dir);
    let mut groups = instance::cached_groups(&cache, instance)?;
    if groups.is_empty() {
        // Only with an EC2 source: `refresh` has not resolved this host's groups (yet). IMDS is
        // never asked from here: a login must not wait on it.
        tracing::error!(
            "this host has no access groups yet: `keyhole refresh` resolves them from EC2 (see its log); serving no keys"
        );
        return Ok(Exit::Failure);
    }
    if !instance::all_fresh(&groups, instance, SystemTime::now()) {
        match fetch(&settings, &cache, instance.fetch_timeout) {
            Ok(_) => groups = instance::cached_groups(&cache, instance)?,
            Err(error) => {
                tracing::warn!("could not refresh the key cache, serving what is cached: {error:#}")
            }
        }
    }

    let (served, refused) = instance::servable(groups, instance, SystemTime::now());
    let mut stdout = std::io::stdout().lock();
    for cached in &served {
        for line in cached.body.split(|&b| b == b'\n') {
            if !line.is_empty() && !line.starts_with(b"#") {
                stdout.write_all(line)?;
                stdout.write_all(b"\n")?;
            }
        }
    }
    stdout.flush()?;

    if let Some(fingerprint) = &args.fingerprint {
        let who = cache.attribution(fingerprint)?.map_or_else(
            || "a key keyhole does not serve".to_owned(),
            |attribution| attribution.describe(),
        );
        announce(&format!(
            "keyhole: login as {} with {fingerprint} = {who}",
            args.user
        ));
    }
    if !refused.is_empty() {
        tracing::error!(groups = ?refused, max_stale = ?instance.max_stale, "no current copy of these access groups: serving no keys for them");
    }
    Ok(if served.is_empty() {
        Exit::Failure
    } else {
        Exit::Success
    })
}

/// Refreshes the cache from S3, all of it bounded by `timeout`; returns the index now cached.
///
/// The only place an instance command starts an async runtime, and a single-threaded one: a
/// login served from a fresh cache never gets here, and a refresh makes one request at a time.
pub(crate) fn fetch(
    settings: &Settings,
    cache: &Cache,
    timeout: std::time::Duration,
) -> anyhow::Result<Index> {
    let instance = settings.instance()?;
    let s3 = settings.s3()?;
    let verifier = instance
        .verify_key
        .as_deref()
        .map(Verifier::parse)
        .transpose()?;
    let work = async {
        let store = S3Store::connect(
            s3,
            Timeouts {
                connect: timeout,
                operation: timeout,
                attempts: 1,
            },
        )
        .await;
        let layout = Layout {
            prefix: s3.prefix.clone(),
        };
        instance::refresh(
            &store,
            &layout,
            cache,
            instance,
            verifier.as_ref(),
            SystemTime::now(),
        )
        .await
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => anyhow::bail!("S3 did not answer within {timeout:?}"),
        }
    })
}

/// One line to stderr (sshd's log with `-e`) and to syslog (auth facility), where the shared
/// login user's sessions are attributed to a person.
fn announce(line: &str) {
    eprintln!("{line}");
    if let Ok(message) = std::ffi::CString::new(line) {
        // SAFETY: both strings are NUL-terminated C strings that outlive the calls; "%s" makes
        // syslog treat the message as data, not as a format.
        unsafe {
            libc::openlog(c"keyhole".as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV);
            libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), message.as_ptr());
            libc::closelog();
        }
    }
}
