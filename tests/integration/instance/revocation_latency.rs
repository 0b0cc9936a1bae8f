//! Revocation latency (issue 26): with `keyhole publish` every 60 s and `keyhole refresh` every
//! 15 s, a person disabled in Active Directory is refused by a real sshd within 90 s.
//!
//! Everything is real and runs on loopback: a Samba AD DC, s3s-fs, OpenSSH's sshd whose
//! AuthorizedKeysCommand is the built keyhole (as `nobody`, instance settings at their defaults:
//! `cache_ttl` 5 minutes, so a login never fetches and only the refresh brings news), and the
//! `ssh` client. The two timers are loops in the test, each on a fixed schedule from its first
//! run, as systemd timers run them. The person is disabled the moment a publish has finished, so
//! the change waits for the whole publish interval, then for the next refresh after that publish:
//! the worst case of the schedule, give or take the publish's own duration. The test prints the
//! latency it measured.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::samba::{Fixture, UserSpec};
use crate::support::sshd::Sshd;
use crate::support::stack::{Extra, Stack};

const PUBLISH_EVERY: Duration = Duration::from_secs(60);
const REFRESH_EVERY: Duration = Duration::from_secs(15);
/// The promise: disabled in AD → refused by sshd within this.
const BOUND: Duration = Duration::from_secs(90);
/// How long the test waits for the refusal before giving up (past the bound, so a slow run
/// reports its figure rather than a timeout).
const GIVE_UP: Duration = Duration::from_secs(150);

const NOBODY: u32 = 65534;
/// The shared login user; root, so that the test needs no local account of its own.
const LOGIN_USER: &str = "root";
const VICTIM: &str = "dave";

const PEOPLE: &[(&str, u32)] = &[
    ("alice", 22001),
    ("bob", 22002),
    ("carol", 22003),
    ("dave", 22004),
    ("erin", 22005),
    ("frank", 22006),
];

const POLICY: &str = r#"
[access_groups.web-prod]
groups = ["Web Team"]

[access_groups.db-prod]
groups = ["DBAs"]
"#;

fn company() -> Fixture {
    let mut fixture = Fixture::new();
    for (name, uid) in PEOPLE {
        fixture = fixture.user(UserSpec::unix(name, *uid, &format!("/home/{name}")));
    }
    fixture
        // Five, so losing one stays under the safety guard's default 25%.
        .group("Web Team", &["alice", "bob", "carol", "dave", "erin"])
        .group("DBAs", &["dave", "frank"])
}

/// Sleeps until `deadline` or until `stop` is set, whichever comes first; false when stopped.
fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    while Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !stop.load(Ordering::Relaxed)
}

/// `keyhole refresh` on the instance, as `nobody` (the cache's owner), with the environment an
/// instance's timer has (the credentials file, nothing inherited).
fn refresh(config: &std::path::Path, env: &[(String, String)]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(crate::support::keyhole::binary_for_nobody())
        .arg("--config")
        .arg(config)
        .arg("refresh")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running keyhole refresh")
}

#[test]
fn a_person_disabled_in_ad_is_refused_by_sshd_within_90_seconds() {
    let stack = Stack::start(&company(), POLICY);
    let keys = stack.give_keys(PEOPLE);
    let (signing_key, verify_key) = stack.publisher.signing_key();
    stack.write_settings(Extra {
        sections: &format!(
            "\n[signing]\nkey_file = \"{}\"\nvalidity = \"7d\"\n",
            signing_key.display()
        ),
        ..Extra::default()
    });

    // The instance: web-prod, its cache owned by nobody, every timing setting at its default.
    let instance = tempfile::tempdir().unwrap();
    std::fs::set_permissions(instance.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache_dir = instance.path().join("cache");
    std::fs::create_dir_all(&cache_dir).unwrap();
    chown(&cache_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let instance_config: PathBuf = instance.path().join("keyhole.toml");
    std::fs::write(
        &instance_config,
        format!(
            "{}\n[instance]\nlogin_user = \"{LOGIN_USER}\"\naccess_groups = [\"web-prod\"]\ncache_dir = \"{}\"\nverify_key = \"{}\"\n",
            stack.s3.settings("ssh/"),
            cache_dir.display(),
            verify_key.trim()
        ),
    )
    .unwrap();
    let instance_env = stack.s3.instance_credentials(instance.path(), NOBODY);
    let sshd = Sshd::start(&instance_config, &instance_env);

    let stop = AtomicBool::new(false);
    let (published_tx, published_rx) = mpsc::channel::<Instant>();
    let (refreshing_tx, refreshing_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        // The publisher's timer: a run every 60 s from the first, each reported when it ends.
        let publisher = scope.spawn(|| {
            let first = Instant::now();
            let mut runs = 0u32;
            loop {
                let run = stack.run(&["publish"]);
                assert_eq!(run.code, 0, "publish failed: {run:#?}");
                eprintln!(
                    "publish {runs} ended {:.1} s after the first began",
                    first.elapsed().as_secs_f64()
                );
                let _ = published_tx.send(Instant::now());
                runs += 1;
                if !sleep_until(first + PUBLISH_EVERY * runs, &stop) {
                    return;
                }
            }
        });
        // The instance's timer: a refresh every 15 s, from the end of the first publish (before
        // it there is nothing to fetch).
        let (config, env, stopped) = (&instance_config, &instance_env, &stop);
        let refresher = scope.spawn(move || {
            if refreshing_rx.recv().is_err() {
                return;
            }
            let first = Instant::now();
            let mut runs = 0u32;
            loop {
                let refreshed = refresh(config, env);
                assert!(refreshed.status.success(), "refresh failed: {refreshed:?}");
                runs += 1;
                if !sleep_until(first + REFRESH_EVERY * runs, stopped) {
                    return;
                }
            }
        });

        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            published_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the first publish ended");
            refreshing_tx.send(()).unwrap();
            // The victim is in: their key logs in, from the instance's first refresh on.
            let admitted = Instant::now();
            while !sshd.login(LOGIN_USER, &keys[VICTIM].private) {
                assert!(
                    admitted.elapsed() < REFRESH_EVERY,
                    "{VICTIM} never logged in before being disabled: {}",
                    sshd.log()
                );
                std::thread::sleep(Duration::from_millis(500));
            }

            // Disabled in AD the moment a publish has ended: the change waits for the next one.
            stack.dc.modify(&format!(
                "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
                stack.dc.user_dn(VICTIM)
            ));
            let disabled = Instant::now();
            let latency = loop {
                if !sshd.login(LOGIN_USER, &keys[VICTIM].private) {
                    break disabled.elapsed();
                }
                assert!(
                    disabled.elapsed() < GIVE_UP,
                    "{VICTIM}, disabled in AD, still logs in {} s later",
                    disabled.elapsed().as_secs()
                );
                std::thread::sleep(Duration::from_millis(500));
            };
            eprintln!(
                "revocation latency: {VICTIM} disabled in AD → refused by sshd after {:.1} s \
                 (publish every {} s, refresh every {} s, bound {} s)",
                latency.as_secs_f64(),
                PUBLISH_EVERY.as_secs(),
                REFRESH_EVERY.as_secs(),
                BOUND.as_secs()
            );
            // The refusal is the revocation, not an outage: the others still log in.
            assert!(
                sshd.login(LOGIN_USER, &keys["carol"].private),
                "carol, still a member, is refused too: {}",
                sshd.log()
            );
            latency
        }));
        stop.store(true, Ordering::Relaxed);
        drop(refreshing_tx);
        let published = publisher.join();
        let refreshed = refresher.join();
        let latency = match outcome {
            Ok(latency) => latency,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        assert!(published.is_ok(), "the publisher's loop failed");
        assert!(refreshed.is_ok(), "the refresh loop failed");
        assert!(
            latency <= BOUND,
            "{VICTIM} was refused {:.1} s after being disabled in AD, past the {} s bound",
            latency.as_secs_f64(),
            BOUND.as_secs()
        );
    });
}
