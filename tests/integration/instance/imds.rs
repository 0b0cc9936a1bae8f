//! A host's access groups from its EC2 identity, against the IMDSv2 stand-in on 127.0.0.1
//! (tests/support/imds.rs): the tag, the user data, and every way IMDS fails (tags not in the
//! metadata, 500s, a slow answer, a closed port), after which the last resolved groups stay in
//! force. `keyhole refresh` on a host that never resolved exits non-zero naming the fix, and
//! `authorized-keys` then serves nothing, without asking IMDS.
//!
//! No S3 or DC is needed here; tests/fleet.rs goes from IMDS through a publish to real sshd.

use std::time::{Duration, Instant, SystemTime};

use crate::support::imds::Imds;
use crate::support::keyhole::run_keyhole;
use keyhole::instance::Cache;
use keyhole::instance::host_groups::{self, NotResolved, Resolved};
use keyhole::settings::ImdsGroups;

const TAG: &str = "keyhole-access-groups";

fn by_tag(imds: &Imds) -> ImdsGroups {
    ImdsGroups {
        tag: Some(TAG.into()),
        user_data: false,
        endpoint: imds.endpoint(),
    }
}

fn resolve(cache: &Cache, source: &ImdsGroups) -> Result<Resolved, NotResolved> {
    host_groups::refresh(cache, source, SystemTime::now()).unwrap()
}

#[test]
fn the_stand_in_speaks_imdsv2() {
    use std::io::{Read, Write};
    let imds = Imds::start();
    let ask = |request: &str| {
        let address = imds.endpoint().trim_start_matches("http://").to_owned();
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    // IMDSv1 (no token) is refused; so is a token request without a TTL.
    let v1 =
        ask("GET /latest/meta-data/tags/instance HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(v1.starts_with("HTTP/1.1 401"), "{v1}");
    let no_ttl = ask("PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(no_ttl.starts_with("HTTP/1.1 400"), "{no_ttl}");
    let token = ask(
        "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n",
    );
    assert!(token.starts_with("HTTP/1.1 200"), "{token}");
    assert!(
        token
            .to_ascii_lowercase()
            .contains("x-aws-ec2-metadata-token-ttl-seconds: 60"),
        "{token}"
    );
    let forged = "GET /latest/meta-data/tags/instance HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: made-up\r\nConnection: close\r\n\r\n";
    assert!(ask(forged).starts_with("HTTP/1.1 401"));
}

#[test]
fn groups_come_from_the_tag_and_are_cached_for_the_login_path() {
    let imds = Imds::start();
    imds.tag(TAG, "web-prod, db-prod,Not A Group");
    imds.tag("Name", "web-17");
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());

    let resolved = resolve(&cache, &by_tag(&imds)).unwrap();
    assert_eq!(resolved.groups, ["web-prod", "db-prod"]);
    assert_eq!(resolved.invalid, ["Not A Group"]);
    assert_eq!(resolved.source, format!("EC2 tag {TAG}"));
    assert_eq!(host_groups::read_resolved(&cache).unwrap(), Some(resolved));
    // The listing, then the one tag: the client never guessed at paths.
    assert_eq!(imds.requests_for("/latest/meta-data/tags/instance"), 1);
    assert_eq!(
        imds.requests_for(&format!("/latest/meta-data/tags/instance/{TAG}")),
        1
    );
    assert_eq!(imds.requests_for("/latest/meta-data/tags/instance/Name"), 0);
    assert!(imds.requests_for("/latest/api/token") >= 1);

    // A changed tag changes the groups; an empty one means none, on purpose.
    imds.tag(TAG, "web-prod");
    assert_eq!(
        resolve(&cache, &by_tag(&imds)).unwrap().groups,
        ["web-prod"]
    );
    imds.tag(TAG, "");
    assert!(resolve(&cache, &by_tag(&imds)).unwrap().groups.is_empty());
}

#[test]
fn when_imds_fails_the_last_resolved_groups_stay() {
    let imds = Imds::start();
    imds.tag(TAG, "web-prod");
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    let source = by_tag(&imds);
    let first = resolve(&cache, &source).unwrap();
    let kept = || host_groups::read_resolved(&cache).unwrap().unwrap();

    // Tags taken out of the metadata: 404 for the listing; the message names the fix.
    imds.set(|m| m.tags_enabled = false);
    let error = resolve(&cache, &source).unwrap_err();
    assert!(matches!(error, NotResolved::TagsDisabled { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("--instance-metadata-tags enabled"),
        "{message}"
    );
    assert!(
        message.contains("InstanceMetadataTags=enabled"),
        "{message}"
    );
    assert!(message.contains(TAG), "{message}");
    assert_eq!(kept(), first);

    // The tag removed from the instance: IMDS says so (404), and the grant is gone (issue 24:
    // the tag is an access grant, its removal a revocation).
    imds.set(|m| {
        m.tags_enabled = true;
        m.tags.clear();
    });
    let revoked = resolve(&cache, &source).unwrap();
    assert!(revoked.groups.is_empty(), "{revoked:?}");
    assert_eq!(kept(), revoked);
    imds.tag(TAG, "web-prod");
    let first = resolve(&cache, &source).unwrap();

    // 500 on everything: retried once, then given up.
    imds.set(|m| m.fail_500 = true);
    let error = resolve(&cache, &source).unwrap_err();
    assert!(matches!(error, NotResolved::Imds(_)), "{error}");
    assert!(error.to_string().contains(&imds.endpoint()), "{error}");
    assert_eq!(kept(), first);
    imds.set(|m| m.fail_500 = false);

    // A slow IMDS: every answer takes 5 s, past the per-attempt timeout; bounded overall.
    imds.set(|m| m.delay = Some(Duration::from_secs(5)));
    let started = Instant::now();
    let error = resolve(&cache, &source).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, NotResolved::Imds(_)), "{error}");
    assert!(
        took <= host_groups::IMDS_DEADLINE + Duration::from_secs(1),
        "took {took:?}"
    );
    assert_eq!(kept(), first);
    imds.set(|m| m.delay = None);

    // Nothing listening at all.
    imds.stop();
    let started = Instant::now();
    let error = resolve(&cache, &source).unwrap_err();
    assert!(matches!(error, NotResolved::Imds(_)), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(kept(), first);
}

#[test]
fn user_data_names_the_groups_when_the_tag_does_not() {
    let imds = Imds::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    let both = ImdsGroups {
        user_data: true,
        ..by_tag(&imds)
    };
    imds.set(|m| {
        m.tags_enabled = false;
        m.user_data = Some(
            "#!/bin/bash\n# keyhole-access-groups: db-prod\nexport DB_PASSWORD=hunter2\n".into(),
        );
    });
    let resolved = resolve(&cache, &both).unwrap();
    assert_eq!(resolved.groups, ["db-prod"]);
    assert_eq!(resolved.source, "EC2 user data");

    // The tag, when the instance has it, wins.
    imds.set(|m| m.tags_enabled = true);
    imds.tag(TAG, "web-prod");
    assert_eq!(resolve(&cache, &both).unwrap().groups, ["web-prod"]);

    // Two lines are ambiguous; both reasons are given, and no user data content.
    imds.set(|m| {
        m.tags.clear();
        m.user_data = Some(
            "# keyhole-access-groups: a\nexport DB_PASSWORD=hunter2\n# keyhole-access-groups: b\n"
                .into(),
        );
    });
    let error = resolve(&cache, &both).unwrap_err().to_string();
    assert!(error.contains("no tag keyhole-access-groups"), "{error}");
    assert!(error.contains("lines 1, 3"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    assert_eq!(
        host_groups::read_resolved(&cache).unwrap().unwrap().groups,
        ["web-prod"]
    );
}

#[test]
fn a_host_that_never_resolved_serves_nothing_and_refresh_names_the_fix() {
    let imds = Imds::start();
    imds.set(|m| m.tags_enabled = false);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyhole.toml");
    std::fs::write(
        &config,
        format!(
            "[s3]\nbucket = \"keys\"\nendpoint = \"http://127.0.0.1:9\"\n\n[instance]\nlogin_user = \"ec2-user\"\naccess_groups_tag = \"{TAG}\"\nimds_endpoint = \"{}\"\ncache_dir = \"{}\"\n",
            imds.endpoint(),
            dir.path().join("cache").display()
        ),
    )
    .unwrap();

    let refresh = run_keyhole(&config, &["refresh"], &[]);
    assert_eq!(refresh.code, 1, "{refresh:#?}");
    assert!(
        refresh.stderr.contains("never resolved its access groups"),
        "{}",
        refresh.stderr
    );
    assert!(
        refresh.stderr.contains("InstanceMetadataTags=enabled"),
        "{}",
        refresh.stderr
    );
    assert!(
        refresh.stderr.contains(&format!("tag it {TAG}=")),
        "{}",
        refresh.stderr
    );

    // The login path: nothing served, a non-zero exit (sshd falls back to AuthorizedKeysFile),
    // and not one request to IMDS.
    let asked = imds.requests();
    let login = run_keyhole(&config, &["authorized-keys", "ec2-user"], &[]);
    assert_eq!(login.code, 1, "{login:#?}");
    assert!(login.stdout.is_empty(), "{login:#?}");
    assert!(login.stderr.contains("keyhole refresh"), "{}", login.stderr);
    assert_eq!(imds.requests(), asked, "the login path asked IMDS");
}
