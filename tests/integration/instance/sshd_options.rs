//! The options field judged by keyhole and by the real sshd, line for line: each case is written
//! to an `AuthorizedKeysFile` of a throwaway sshd on 127.0.0.1 and a login is tried with the
//! matching key. A line keyhole publishes must be one sshd honours (else its owner cannot log in
//! and is never told why), and a line sshd honours is dropped only where keyhole is stricter on
//! purpose (listed below, each with its reason in `src/keys/options.rs`).
//!
//! The unit test beside the parser replays OpenSSH's own `authopt` tests; this one checks the
//! installed sshd, which is what instances run.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyhole::keys::{KeyPolicy, parse_authorized_keys};

/// Options sshd and keyhole must judge alike: (options, whether sshd accepts them).
const AGREED: &[(&str, bool)] = &[
    ("restrict", true),
    ("RESTRICT,No-Pty,no-X11-forwarding", true),
    // An empty option between commas, or before the first, is skipped by sshd.
    (",restrict", true),
    ("no-pty,,restrict", true),
    (r#"command="true",no-pty"#, true),
    (r#"from="127.0.0.1""#, true),
    // Refused when used rather than when parsed, but never honoured on a plain key.
    (r#"principals="alice""#, false),
    (r#"environment="A=1",environment="A=2""#, true),
    (r#"tunnel="ANY""#, true),
    (r#"expiry-time="20991231UTC""#, true),
    (r#"permitopen="db:5432",permitopen="[::1]:22""#, true),
    (r#"permitlisten="8080""#, true),
    (r#"environment="=1""#, false),
    (r#"environment="A-B=1""#, false),
    (r#"command="true",command="false""#, false),
    (r#"tunnel="tun0""#, false),
    (r#"expiry-time="2099""#, false),
    (r#"permitopen="db:0""#, false),
    (r#"permitopen="db""#, false),
    ("no-ptyx", false),
    ("no-cert-authority", false),
    (r#"pty="yes""#, false),
    ("command=true", false),
    (r#"command="true"x"#, false),
];

/// Where keyhole refuses what this sshd accepts, deliberately.
const STRICTER: &[&str] = &[
    // OpenSSH's parser refuses a field ending in a comma ("unexpected end-of-options", its own
    // `trailing comma` test); sshd accepts it in a file only because a space and the key follow.
    "restrict,",
    // A service name means whatever /etc/services says on each instance.
    r#"permitopen="db:ssh""#,
    // strtonum takes a sign; no one writes one on purpose.
    r#"tunnel="+1""#,
];

#[test]
fn keyhole_publishes_exactly_the_options_sshd_honours() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // sshd (as root, StrictModes off) and ssh read these; nothing secret lives here for long.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the test directory");
    let key = dir.path().join("user");
    for (file, kind) in [(&key, "ed25519"), (&dir.path().join("host"), "ed25519")] {
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-f"])
            .arg(file)
            .status()
            .expect("running ssh-keygen");
        assert!(made.success());
    }
    let public = std::fs::read_to_string(dir.path().join("user.pub")).expect("the public key");
    let public = public.trim_end();
    let policy = KeyPolicy {
        forbidden_options: Default::default(),
        ..KeyPolicy::default()
    };

    let mut disagreements = Vec::new();
    for (options, sshd_expected) in AGREED {
        let line = format!("{options} {public}");
        let keyhole = parse_authorized_keys(&line, &policy).keys.len() == 1;
        let sshd = sshd_accepts(dir.path(), &key, &line);
        assert_eq!(
            sshd, *sshd_expected,
            "sshd's verdict on {options:?} is not the one recorded here; update the table"
        );
        if keyhole != sshd {
            disagreements.push(format!("{options}: sshd {sshd}, keyhole {keyhole}"));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");

    for options in STRICTER {
        let line = format!("{options} {public}");
        let parsed = parse_authorized_keys(&line, &policy);
        assert!(
            parsed.keys.is_empty(),
            "{options}: keyhole should refuse it"
        );
        assert!(
            parsed.dropped[0].reason.to_string().contains("bad options"),
            "{options}: {}",
            parsed.dropped[0].reason
        );
        assert!(
            sshd_accepts(dir.path(), &key, &line),
            "{options}: sshd refuses it now"
        );
    }
}

/// Starts sshd with `line` as the only authorized key and tries to log in as root with `key`.
fn sshd_accepts(dir: &Path, key: &Path, line: &str) -> bool {
    let authorized = dir.join("authorized_keys");
    std::fs::write(&authorized, format!("{line}\n")).expect("writing authorized_keys");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port");
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\n\
             StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nPidFile none\nPermitRootLogin prohibit-password\n",
            host = dir.join("host").display(),
            keys = authorized.display(),
        ),
    )
    .expect("writing sshd_config");
    // -D: in the foreground, serving connections until killed (so the probe below does not
    // use up a debug-mode sshd's only connection).
    let mut sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting sshd");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "sshd did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let login = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-o", "IdentityAgent=none", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
        ])
        .args(["-o", "LogLevel=ERROR", "root@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("running ssh");
    let _ = sshd.kill();
    let _ = sshd.wait();
    login.status.success()
}
