//! The shipped systemd units pass `systemd-analyze verify` (with ExecStart pointed at the built
//! binary, since /usr/bin/keyhole is not installed here), and say what they promise:
//! oneshot services, hardened, timers on the right schedule (publisher, instance refresh, audit
//! canary).

use std::path::Path;
use std::process::Command;

const UNITS: &[&str] = &[
    "keyhole-publish.service",
    "keyhole-publish.timer",
    "keyhole-refresh.service",
    "keyhole-refresh.timer",
    "keyhole-canary.service",
    "keyhole-canary.timer",
];

fn unit(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("systemd")
            .join(name),
    )
    .unwrap()
}

/// Runs `systemd-analyze verify` on copies of the units; returns (success, messages).
fn verify(rewrite: impl Fn(&str) -> String) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    for name in UNITS {
        let text = unit(name).replace("/usr/bin/keyhole", crate::support::keyhole::BINARY);
        std::fs::write(dir.path().join(name), rewrite(&text)).unwrap();
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(UNITS.iter().map(|name| dir.path().join(name)))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze (scripts/test installs systemd)");
    let messages = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.success() && messages.trim().is_empty(),
        messages,
    )
}

#[test]
fn the_units_verify_cleanly() {
    let (clean, messages) = verify(|text| text.to_owned());
    assert!(clean, "systemd-analyze verify complained:\n{messages}");
    // The check is not vacuous: a unit whose command does not exist fails it.
    let (clean, messages) =
        verify(|text| text.replace(crate::support::keyhole::BINARY, "/nonexistent/keyhole"));
    assert!(!clean, "a broken unit passed: {messages}");
}

#[test]
fn the_units_are_hardened_and_scheduled_as_documented() {
    for service in [
        "keyhole-publish.service",
        "keyhole-refresh.service",
        "keyhole-canary.service",
    ] {
        let text = unit(service);
        for line in [
            "Type=oneshot",
            "User=keyhole",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=",
        ] {
            assert!(text.lines().any(|l| l == line), "{service} lacks {line}");
        }
    }
    let publish = unit("keyhole-publish.service");
    assert!(publish.contains("LoadCredential=ldap-password:"));
    assert!(publish.contains("RuntimeDirectory=keyhole"));
    assert!(publish.lines().any(|l| l == "ProtectHome=read-only"));
    let timer = unit("keyhole-publish.timer");
    for line in ["OnCalendar=*:0/5", "Persistent=true"] {
        assert!(
            timer.lines().any(|l| l == line),
            "publish timer lacks {line}"
        );
    }
    assert!(timer.contains("RandomizedDelaySec="));
    assert!(
        unit("keyhole-refresh.timer")
            .lines()
            .any(|l| l == "OnUnitActiveSec=60s")
    );
    let canary = unit("keyhole-canary.service");
    assert!(canary.contains(" canary run --inventory "), "{canary}");
    assert!(canary.lines().any(|l| l == "StateDirectoryMode=0700"));
    assert!(
        unit("keyhole-canary.timer")
            .lines()
            .any(|l| l == "OnCalendar=hourly")
    );
}
