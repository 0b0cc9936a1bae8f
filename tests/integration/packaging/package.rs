//! `scripts/package` builds the .deb and the .rpm from one release binary, and they hold what an
//! instance needs, owned and moded as sshd and dpkg/rpm require: the binary in /usr/bin
//! (root-owned; sshd refuses a command anyone else can replace), the systemd units, the
//! commented settings, the sshd drop-in (which keeps AuthorizedKeysFile: never a lock-out) and
//! maintainer scripts that create the `keyhole` user and cache directory. The binary needs glibc
//! 2.17 at most (CentOS 7, Amazon Linux 2).
//!
//! ONE test, because the release build takes minutes (about 6-7 on 2 cores); scripts/package
//! installs its own tools (scripts/lib/prereqs.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn find(dir: &Path, extension: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one .{extension} in {}: {found:?}",
        dir.display()
    );
    found[0].clone()
}

/// What every package must install: path → (mode, owner).
const FILES: &[(&str, &str)] = &[
    ("/usr/bin/keyhole", "-rwxr-xr-x"),
    ("/etc/keyhole/keyhole.toml", "-rw-r--r--"),
    ("/etc/ssh/sshd_config.d/10-keyhole.conf", "-rw-r--r--"),
    ("keyhole-refresh.service", "-rw-r--r--"),
    ("keyhole-refresh.timer", "-rw-r--r--"),
    ("keyhole-publish.service", "-rw-r--r--"),
    ("keyhole-publish.timer", "-rw-r--r--"),
    ("/usr/share/doc/keyhole/keyhole.example.toml", "-rw-r--r--"),
];

/// `(mode, owner, group, path)` per file, from `dpkg-deb -c` or `rpm -qlvp` lines.
fn listing(text: &str, deb: bool) -> BTreeMap<String, (String, String)> {
    text.lines()
        .filter(|l| l.starts_with('-'))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let owner = if deb {
                words[1].to_owned()
            } else {
                format!("{}/{}", words[2], words[3])
            };
            let path = words.last().unwrap().trim_start_matches('.').to_owned();
            (path, (words[0].to_owned(), owner))
        })
        .collect()
}

fn check_files(files: &BTreeMap<String, (String, String)>, kind: &str) {
    for (wanted, mode) in FILES {
        let (path, (found_mode, owner)) = files
            .iter()
            .find(|(path, _)| path.as_str() == *wanted || path.ends_with(&format!("/{wanted}")))
            .unwrap_or_else(|| panic!("the {kind} lacks {wanted}: {files:#?}"));
        assert_eq!(found_mode, mode, "{kind} {path}");
        // dpkg-deb lists owners by number, rpm by name: both must be root.
        assert!(
            owner == "root/root" || owner == "0/0",
            "{kind} {path}: {owner}"
        );
    }
    let units: Vec<&String> = files.keys().filter(|p| p.ends_with(".timer")).collect();
    let unit_dir = if kind == "deb" {
        "/lib/systemd/system/"
    } else {
        "/usr/lib/systemd/system/"
    };
    assert!(units.iter().all(|u| u.starts_with(unit_dir)), "{units:?}");
}

/// The maintainer scripts: valid sh, creating the user and cache, and reloading sshd only
/// after `sshd -t` accepts the config.
fn check_scripts(postinst: &str, prerm: &str, kind: &str) {
    for (name, script) in [("postinst", postinst), ("prerm", prerm)] {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), script).unwrap();
        run("sh", &["-n", file.path().to_str().unwrap()]);
        // Never touches the emergency keys' fallback (comments may name it).
        assert!(
            !script
                .lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("AuthorizedKeysFile")),
            "{kind} {name}"
        );
    }
    assert!(postinst.contains("useradd --system"), "{kind}: {postinst}");
    assert!(
        postinst.contains("install -d -o keyhole -g keyhole -m 0750 /var/cache/keyhole"),
        "{kind}: {postinst}"
    );
    assert!(postinst.contains("enable keyhole-refresh.timer"), "{kind}");
    let check = postinst.find("-t >/dev/null").expect("sshd -t");
    let reload = postinst.find("try-reload-or-restart").expect("a reload");
    assert!(
        check < reload,
        "{kind}: sshd is reloaded before it is checked"
    );
    assert!(
        prerm.contains("disable --now keyhole-refresh.timer"),
        "{kind}"
    );
}

#[test]
fn packages_hold_a_glibc_2_17_binary_and_everything_an_instance_needs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = Command::new(root.join("scripts/package"))
        .current_dir(root)
        .output()
        .expect("running scripts/package");
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "scripts/package failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = root.join("target/package");
    let deb = find(&out, "deb");
    let rpm = find(&out, "rpm");
    println!("{stdout}");

    // The .deb.
    let files = listing(&run("dpkg-deb", &["-c", deb.to_str().unwrap()]), true);
    check_files(&files, "deb");
    let control = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &[
            "-e",
            deb.to_str().unwrap(),
            control.path().to_str().unwrap(),
        ],
    );
    let read = |name: &str| std::fs::read_to_string(control.path().join(name)).unwrap();
    let fields = read("control");
    assert!(fields.contains("Depends: libc6 (>= 2.17)"), "{fields}");
    let conffiles = read("conffiles");
    assert!(
        conffiles.contains("/etc/keyhole/keyhole.toml"),
        "{conffiles}"
    );
    assert!(
        conffiles.contains("/etc/ssh/sshd_config.d/10-keyhole.conf"),
        "{conffiles}"
    );
    check_scripts(&read("postinst"), &read("prerm"), "deb");
    for script in ["postinst", "prerm", "postrm"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(control.path().join(script))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o755, "{script}");
    }

    // The .rpm: same files, same scripts, a payload CentOS 7's rpm can read.
    let rpm_path = rpm.to_str().unwrap();
    let files = listing(&run("rpm", &["-qlvp", rpm_path]), false);
    check_files(&files, "rpm");
    let config = run("rpm", &["-qcp", rpm_path]);
    assert!(config.contains("/etc/keyhole/keyhole.toml"), "{config}");
    assert!(
        config.contains("/etc/ssh/sshd_config.d/10-keyhole.conf"),
        "{config}"
    );
    let scripts = run("rpm", &["-qp", "--scripts", rpm_path]);
    let section = |name: &str| {
        let start = scripts
            .find(&format!("{name} scriptlet"))
            .unwrap_or_else(|| panic!("no {name} scriptlet: {scripts}"));
        let rest = &scripts[start..];
        let body = &rest[rest.find('\n').unwrap() + 1..];
        let end = body
            .find(" scriptlet (using")
            .map_or(body.len(), |at| body[..at].rfind('\n').unwrap_or(at));
        body[..end].to_owned()
    };
    check_scripts(&section("postinstall"), &section("preuninstall"), "rpm");
    let compressor = run("rpm", &["-qp", "--qf", "%{PAYLOADCOMPRESSOR}", rpm_path]);
    assert_eq!(compressor, "gzip");
    let requires = run("rpm", &["-qpR", rpm_path]);
    assert!(requires.contains("glibc >= 2.17"), "{requires}");

    // The binary inside the .deb: glibc 2.17 at most, and it runs here.
    let unpacked = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &[
            "-x",
            deb.to_str().unwrap(),
            unpacked.path().to_str().unwrap(),
        ],
    );
    let binary = unpacked.path().join("usr/bin/keyhole");
    let symbols = run("objdump", &["-T", binary.to_str().unwrap()]);
    let highest = symbols
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|version| {
            let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("GLIBC_ symbols");
    assert!(
        highest <= (2, 17),
        "needs glibc {}.{}",
        highest.0,
        highest.1
    );
    let version = run(binary.to_str().unwrap(), &["--version"]);
    assert!(version.starts_with("keyhole "), "{version}");
    // No hidden clock in what ships (issue 23): `--now` is a usage error, exit 64.
    for command in ["publish", "plan"] {
        let refused = Command::new(&binary)
            .args([command, "--now", "2030-01-01T00:00:00Z"])
            .output()
            .unwrap();
        assert_eq!(refused.status.code(), Some(64), "{command}: {refused:?}");
    }

    // The sshd drop-in, through real sshd: keyhole is the command, and the emergency keys'
    // AuthorizedKeysFile is what it was.
    let dropin = unpacked
        .path()
        .join("etc/ssh/sshd_config.d/10-keyhole.conf");
    let text = std::fs::read_to_string(&dropin).unwrap();
    assert!(
        !text.lines().any(|l| l.starts_with("AuthorizedKeysFile")),
        "{text}"
    );
    let host_key = unpacked.path().join("host_ed25519");
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            host_key.to_str().unwrap(),
        ],
    );
    let sshd_config = unpacked.path().join("sshd_config");
    std::fs::write(
        &sshd_config,
        format!(
            "Include {}\nHostKey {}\nPidFile none\nUsePAM no\n",
            dropin.display(),
            host_key.display()
        ),
    )
    .unwrap();
    let effective = run(
        "/usr/sbin/sshd",
        &["-T", "-f", sshd_config.to_str().unwrap()],
    );
    assert!(
        effective.contains("\nauthorizedkeyscommand /usr/bin/keyhole authorized-keys %u %f\n"),
        "{effective}"
    );
    assert!(effective.contains("\nauthorizedkeyscommanduser keyhole\n"));
    assert!(
        effective.contains("\nauthorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2\n"),
        "{effective}"
    );
    println!(
        "glibc floor GLIBC_{}.{}; {} {} bytes; {} {} bytes",
        highest.0,
        highest.1,
        deb.display(),
        std::fs::metadata(&deb).unwrap().len(),
        rpm.display(),
        std::fs::metadata(&rpm).unwrap().len()
    );
}
