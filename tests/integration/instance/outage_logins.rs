//! Logins during an S3 outage stay fast: after one login pays `fetch_timeout` against an S3
//! endpoint that accepts connections and never answers (a black-holed network looks like this),
//! the next logins serve the cached keys (within `max_stale`) without trying S3 again for the
//! back-off period; a successful `keyhole refresh` ends the back-off. (What such a login costs
//! is measured by `scripts/bench instance`, its "outage" row, not here.)

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::mute::Mute;
use crate::support::samba::{Fixture, UserSpec};
use crate::support::stack::Stack;

const POLICY: &str = r#"
[access_groups.web-prod]
users = ["bob"]
"#;

struct Login {
    took: Duration,
    code: i32,
    stdout: String,
}

#[test]
fn after_one_slow_login_in_an_outage_the_next_ones_serve_the_cache_at_once() {
    let stack = Stack::start(
        &Fixture::new().user(UserSpec::unix("bob", 20002, "/home/bob")),
        POLICY,
    );
    let keys = stack.give_keys(&[("bob", 20002)]);
    let published = stack.run(&["publish"]);
    assert_eq!(published.code, 0, "{published:#?}");

    let instance = tempfile::tempdir().unwrap();
    let config = instance.path().join("keyhole.toml");
    let cache = instance.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let write_settings = |endpoint: &str| {
        let s3 = stack
            .s3
            .settings("ssh/")
            .replace(&stack.s3.endpoint(), endpoint);
        std::fs::write(
            &config,
            format!(
                "{s3}\n[instance]\nlogin_user = \"ec2-user\"\naccess_groups = [\"web-prod\"]\ncache_dir = \"{}\"\ncache_ttl = \"1ms\"\nmax_stale = \"1h\"\nfetch_timeout = \"2s\"\nallow_unsigned = true\n",
                cache.display()
            ),
        )
        .unwrap();
    };
    let env = stack.s3.env();
    let login = || {
        let started = Instant::now();
        let output = Command::new(crate::support::keyhole::BINARY)
            .arg("--config")
            .arg(&config)
            .args(["authorized-keys", "ec2-user"])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        Login {
            took: started.elapsed(),
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        }
    };

    // S3 answers: the cache is filled.
    write_settings(&stack.s3.endpoint());
    let first = login();
    assert_eq!(first.code, 0);
    assert!(first.stdout.contains(&keys["bob"].line), "{}", first.stdout);

    // The outage: the first login pays fetch_timeout, the next ones do not.
    let hole = Mute::start(None);
    write_settings(&format!("http://{}", hole.address()));
    let logins: Vec<Login> = (0..5).map(|_| login()).collect();
    for login in &logins {
        assert_eq!(login.code, 0);
        assert!(login.stdout.contains(&keys["bob"].line));
    }
    assert!(
        logins[0].took >= Duration::from_millis(1500),
        "the first login should have tried S3: {:?}",
        logins[0].took
    );
    for login in &logins[1..] {
        assert!(
            login.took < Duration::from_millis(1000),
            "a login during the back-off took {:?}",
            login.took
        );
    }

    // A successful refresh ends the back-off: the next login in an outage tries S3 again.
    write_settings(&stack.s3.endpoint());
    let refreshed = Command::new(crate::support::keyhole::BINARY)
        .arg("--config")
        .arg(&config)
        .arg("refresh")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(refreshed.status.success(), "{refreshed:?}");
    write_settings(&format!("http://{}", hole.address()));
    let after = login();
    assert_eq!(after.code, 0);
    assert!(
        after.took >= Duration::from_millis(1500),
        "{:?}",
        after.took
    );
}
