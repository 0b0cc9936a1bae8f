//! `keyhole authorized-keys USER [FINGERPRINT]`: sshd's `AuthorizedKeysCommand`.
//!
//! Runs at every login (sshd runs it once per key a client offers), so the common case must be
//! cheap: when every access group of this host is cached and younger than `cache_ttl`, it reads
//! the settings once, checks and reads the cache state (`instance::serve`: with `%f`, only the
//! lines that can match that key, found through each group's sealed fingerprint lookup) and
//! prints them in one write, with no network, no AWS SDK start-up and no async runtime at all.
//! Otherwise it
//! refreshes the cache within `fetch_timeout` (connect, credentials and reads together) on a
//! single-threaded runtime and, if that fails, serves copies confirmed within `max_stale`; past
//! that it fails closed (no keys, exit 1), and sshd falls back to the emergency keys in
//! `AuthorizedKeysFile`.
//!
//! During an S3 outage, logins stay fast: after a failed refresh (here or by `keyhole refresh`)
//! a login whose every access group still has a copy within `max_stale` serves it without trying
//! S3 again for [`OUTAGE_BACKOFF`], so only one login per back-off period pays `fetch_timeout`.
//! `keyhole refresh` still tries every time, and its success ends the back-off at once. The
//! back-off is a one-line file in `cache_dir`; if it cannot be written, logins just keep trying.
//!
//! The host's access groups are the static list plus what `refresh` last resolved from EC2
//! (cached); this command never asks the instance metadata service.
//!
//! stdout carries key lines and nothing else, ever; everything else goes to stderr and syslog.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use super::GlobalArgs;
use crate::bucket::index::Index;
use crate::bucket::index::Layout;
use crate::bucket::signing::Verifier;
use crate::bucket::store::{S3Store, Timeouts};
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::instance::serve::{self, Expect, Served};
use crate::instance::state::State;
use crate::instance::{self, Attribution, Cache, host_groups};
use crate::settings::Settings;

/// After a failed refresh, how long logins serve a servable cache without trying S3 again.
pub const OUTAGE_BACKOFF: Duration = Duration::from_secs(60);

/// The file in `cache_dir` that holds when the last refresh failed (Unix milliseconds).
const BACKOFF_FILE: &str = "refresh-failed-at";

fn backoff_file(cache_dir: &Path) -> PathBuf {
    cache_dir.join(BACKOFF_FILE)
}

/// True while a refresh failed less than [`OUTAGE_BACKOFF`] ago (a clock that went back counts
/// as expired, so a wrong time never stops refreshes for long).
fn backing_off(cache_dir: &Path, now: SystemTime) -> bool {
    let Ok(text) = std::fs::read_to_string(backoff_file(cache_dir)) else {
        return false;
    };
    let Ok(failed_at) = text.trim().parse::<u64>() else {
        return false;
    };
    let now = instance::unix_millis(now);
    now >= failed_at && Duration::from_millis(now - failed_at) < OUTAGE_BACKOFF
}

fn record_failure(cache_dir: &Path, now: SystemTime) {
    let written = std::fs::write(
        backoff_file(cache_dir),
        format!("{}\n", instance::unix_millis(now)),
    );
    if let Err(error) = written {
        tracing::debug!("could not record the failed refresh (logins keep trying): {error}");
    }
}

fn clear_failure(cache_dir: &Path) {
    let _ = std::fs::remove_file(backoff_file(cache_dir));
}

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
    let cache = Cache::open(&instance.cache_dir)?;
    let groups = host_groups::current(&cache, instance)?;
    if groups.is_empty() {
        // With an EC2 source: `refresh` has not resolved this host's groups (yet), or the tag is
        // gone. IMDS is never asked from here: a login must not wait on it.
        tracing::error!(
            "this host has no access groups: `keyhole refresh` resolves them from EC2 (see its log); serving no keys"
        );
        return Ok(Exit::Failure);
    }
    let now = SystemTime::now();
    let verifier = verifier(instance)?;
    let deployment = deployment(&settings)?;
    let current = || {
        cache.state().unwrap_or_else(|error| {
            tracing::error!("{error:#}");
            None
        })
    };
    // Whether a state serves every host group and was confirmed within `limit`.
    let covers = |state: &Option<State>, limit: Duration| {
        state.as_ref().is_some_and(|state| {
            state.manifest.age(now) <= limit
                && groups
                    .iter()
                    .all(|group| state.manifest.groups.contains_key(group))
        })
    };
    let mut state = current();
    let fresh = covers(&state, instance.cache_ttl)
        && state
            .as_ref()
            .is_some_and(|state| state.manifest.age(now) < instance.cache_ttl);
    if !fresh {
        if backing_off(&instance.cache_dir, now) && covers(&state, instance.max_stale) {
            tracing::info!(
                backoff = ?OUTAGE_BACKOFF,
                "a refresh failed moments ago: serving the cache without trying S3 again yet"
            );
        } else {
            match fetch(&settings, &cache, instance.fetch_timeout) {
                Ok(_) => state = current(),
                Err(error) => {
                    tracing::warn!(
                        "could not refresh the key cache, serving what is cached: {error:#}"
                    );
                    if state.is_none() {
                        // Upgraded, and S3 is out of reach: the previous version's cache.
                        match instance::upgrade_offline(
                            &cache,
                            instance,
                            &deployment,
                            verifier.as_ref(),
                        ) {
                            Ok(true) => state = current(),
                            Ok(false) => {}
                            Err(error) => tracing::error!("{error:#}"),
                        }
                    }
                }
            }
        }
    }

    let served = match &state {
        None => {
            tracing::error!("serving no keys: the cache holds nothing yet (`keyhole refresh`)");
            Served::default()
        }
        Some(state) => {
            let expect = Expect {
                instance,
                deployment: &deployment,
                verifier: verifier.as_ref(),
                now: SystemTime::now(),
            };
            serve::serve(state, &groups, args.fingerprint.as_deref(), &expect).unwrap_or_else(
                |error| {
                    tracing::error!("serving no keys: {error:#}");
                    Served::default()
                },
            )
        }
    };
    // One write: sshd reads it all anyway, and a key line is never split across writes.
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&served.output)?;
    stdout.flush()?;

    if let Some(fingerprint) = &args.fingerprint {
        let who = served.attribution.as_ref().map_or_else(
            || "a key keyhole does not serve".to_owned(),
            Attribution::describe,
        );
        // sshd asks for the keys when a client merely offers one, before any signature proves
        // the client holds it: this line says which key was offered, not who logged in. sshd's
        // own "Accepted publickey for USER from ADDR port P ssh2: TYPE SHA256:…" line, with the
        // same fingerprint, is what proves the login (README: attributing a login).
        announce(&format!(
            "keyhole: key offered for {}: {} = {who}",
            args.user,
            instance::printable(fingerprint)
        ));
    }
    for (group, why) in &served.refused {
        tracing::error!(group = %group, max_stale = ?instance.max_stale, "not serving this access group's keys: {why}");
    }
    Ok(if served.groups.is_empty() {
        Exit::Failure
    } else {
        Exit::Success
    })
}

fn verifier(instance: &crate::settings::InstanceSettings) -> anyhow::Result<Option<Verifier>> {
    instance
        .verify_key
        .as_deref()
        .map(Verifier::parse)
        .transpose()
        .context("instance.verify_key")
}

/// The deployment this host reads, as a signed index must name it.
fn deployment(settings: &Settings) -> anyhow::Result<String> {
    let s3 = settings.s3()?;
    Ok(crate::bucket::index::deployment(&s3.bucket, &s3.prefix))
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
    let verifier = verifier(instance)?;
    let deployment = deployment(settings)?;
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
            &deployment,
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
    let (result, outage) = runtime.block_on(async {
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => {
                let outage = result.as_ref().err().is_some_and(unreachable);
                (result, outage)
            }
            Err(_) => (
                Err(anyhow::anyhow!("S3 did not answer within {timeout:?}")),
                true,
            ),
        }
    });
    // Only an outage starts the back-off: an index refused for what it says (a rollback, a bad
    // signature) comes from a reachable S3, and the next login may well find it fixed.
    match &result {
        Ok(_) => clear_failure(&instance.cache_dir),
        Err(_) if outage => record_failure(&instance.cache_dir, SystemTime::now()),
        Err(_) => {}
    }
    result
}

/// Whether a failed refresh failed to reach S3 (as opposed to refusing what S3 said).
fn unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<crate::bucket::store::StoreError>()
            .is_some()
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
