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
//! S3 again for [`OUTAGE_BACKOFF`](crate::instance::fetch::OUTAGE_BACKOFF), so only one login per back-off period pays `fetch_timeout`.
//! `keyhole refresh` still tries every time, and its success ends the back-off at once. The
//! back-off is a one-line file in `cache_dir`; if it cannot be written, logins just keep trying.
//!
//! The host's access groups are the static list plus what `refresh` last resolved from EC2
//! (cached); this command never asks the instance metadata service.
//!
//! stdout carries key lines and nothing else, ever; everything else goes to stderr and syslog.

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use super::GlobalArgs;
use crate::exit::{EXIT_CODES_HELP, Exit};
use crate::instance::fetch::{OUTAGE_BACKOFF, backing_off, deployment, fetch, verifier};
use crate::instance::serve::{self, Expect, Served};
use crate::instance::state::State;
use crate::instance::{self, Attribution, Cache, host_groups};

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
    let settings = global.settings()?;
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
