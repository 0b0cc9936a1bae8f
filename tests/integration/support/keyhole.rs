//! Driving the built `keyhole` binary the way an operator would: a deployment directory with a
//! `keyhole.toml` and an `access-groups.toml`, and commands run against it with their exit code,
//! stdout and stderr captured.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::samba::SambaDc;

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout parsed as JSON; panics with the whole run when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {self:#?}"))
    }
}

/// A directory holding one deployment's settings and policy.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    /// Environment variables given to every run.
    pub env: Vec<(String, String)>,
}

impl Deployment {
    /// Settings that reach `dc` over LDAPS with its CA, and `policy` as the policy.
    pub fn new(dc: &SambaDc, policy: &str) -> Deployment {
        let deployment = Deployment {
            dir: tempfile::tempdir().expect("temp dir"),
            env: Vec::new(),
        };
        deployment.write_settings(&ldap_section(dc, &dc.ldaps_url(), &dc.ca_file()));
        deployment.write_policy(policy);
        deployment
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("keyhole.toml")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_settings(&self, settings: &str) {
        std::fs::write(self.config(), settings).expect("writing keyhole.toml");
    }

    pub fn write_policy(&self, policy: &str) {
        std::fs::write(self.path("access-groups.toml"), policy).expect("writing the policy");
    }

    /// A fresh unencrypted Ed25519 key for `[signing]`, made by ssh-keygen in this deployment's
    /// directory: the private key's path and the public key line (for `instance.verify_key`).
    pub fn signing_key(&self) -> (PathBuf, String) {
        let private = self.path("signing-key");
        ssh_keygen(
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "keyhole-signing",
                "-f",
            ],
            &private,
        );
        let public =
            std::fs::read_to_string(self.path("signing-key.pub")).expect("signing-key.pub");
        (private, public.trim().to_owned())
    }

    /// Runs `keyhole --config <this deployment> ARGS…`.
    pub fn run(&self, args: &[&str]) -> Run {
        run_keyhole(&self.config(), args, &self.env)
    }

    /// [`Deployment::run`] with a stdout nobody reads (see [`run_keyhole_unread`]).
    pub fn run_unread(&self, args: &[&str]) -> Run {
        run_keyhole_unread(&self.config(), args, &self.env)
    }
}

/// Runs `ssh-keygen ARGS… FILE`, failing the test if it fails.
pub fn ssh_keygen(args: &[&str], file: &Path) {
    let made = Command::new("ssh-keygen")
        .args(args)
        .arg(file)
        .output()
        .expect("running ssh-keygen");
    assert!(made.status.success(), "ssh-keygen {args:?}: {made:?}");
}

/// The `[ldap]` section for `dc` at `url`, trusting `ca_file`.
pub fn ldap_section(dc: &SambaDc, url: &str, ca_file: &Path) -> String {
    format!(
        r#"policy = "access-groups.toml"

[ldap]
url = "{url}"
bind_dn = "{bind_dn}"
password_file = "{password_file}"
base_dn = "{base_dn}"
ca_file = "{ca_file}"
timeout = "10s"
page_size = 200
"#,
        bind_dn = dc.service_bind_dn(),
        password_file = dc.service_password_file().display(),
        base_dn = dc.base_dn(),
        ca_file = ca_file.display(),
    )
}

/// The built keyhole binary.
pub const BINARY: &str = env!("CARGO_BIN_EXE_keyhole");

/// Runs `keyhole ARGS` in `dir` without a settings file, as an operator or a CI job does for
/// `check`, `diff` or `--help`: see [`run_in_with`].
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    run_in_with(dir, args, &[])
}

/// Runs `keyhole ARGS` in `dir` with `env` and nothing leaking in from the machine: no
/// `KEYHOLE_*` (a settings path), `AWS_*` (credentials), `RUST_LOG` or `RUST_BACKTRACE`; git
/// reads neither the system's nor the user's configuration; and help text wraps at 100 columns,
/// so a snapshot does not depend on the terminal.
pub fn run_in_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .current_dir(dir)
        .env("COLUMNS", "100")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYHOLE_")
            || name.starts_with("AWS_")
            || name == "RUST_LOG"
            || name == "RUST_BACKTRACE"
        {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("running keyhole")
}

/// Runs the built binary with a clean keyhole environment (no inherited KEYHOLE_* variables, no
/// backtraces) plus `env`.
pub fn run_keyhole(config: &Path, args: &[&str], env: &[(String, String)]) -> Run {
    let output = keyhole_command(config, args, env)
        .output()
        .expect("running keyhole");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Like [`run_keyhole`], with stdout a pipe nobody reads (closed before keyhole writes to it, as
/// in `keyhole publish | head -0`): every write to it fails with EPIPE. `stdout` is empty.
pub fn run_keyhole_unread(config: &Path, args: &[&str], env: &[(String, String)]) -> Run {
    let mut child = keyhole_command(config, args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running keyhole");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("waiting for keyhole");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn keyhole_command(config: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    let mut command = Command::new(BINARY);
    command.arg("--config").arg(config).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYHOLE_") || name.starts_with("AWS_") || name == "RUST_BACKTRACE" {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// The built keyhole, at a path `nobody` can execute: what sshd (AuthorizedKeysCommandUser
/// nobody) and the refresh timer run. A checkout may sit in a 0700 directory such as `/root`,
/// where `nobody` cannot reach `target/`, so the binary is linked (or, across filesystems,
/// copied) into a root-owned 0755 directory, as the package installs it in `/usr/bin`. The
/// directory is named after the binary's inode and mtime, so a rebuilt binary gets a new one and
/// concurrent test runs of different builds never replace each other's.
pub fn binary_for_nobody() -> &'static Path {
    static REACHABLE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    REACHABLE.get_or_init(|| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let built = Path::new(BINARY);
        let meta = std::fs::metadata(built).expect("the built keyhole");
        let root = Path::new("/var/lib/keyhole-tests");
        let dir = root.join(format!("{}-{}-{}", meta.dev(), meta.ino(), meta.mtime()));
        let binary = dir.join("keyhole");
        if binary.exists() {
            return binary;
        }
        std::fs::create_dir_all(&dir).expect("a root-owned directory for the test binary");
        for made in [root, dir.as_path()] {
            std::fs::set_permissions(made, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // Another test binary of the same run may be doing the same: write aside, then rename.
        let partial = dir.join(format!("keyhole.{}", std::process::id()));
        if std::fs::hard_link(built, &partial).is_err() {
            std::fs::copy(built, &partial).expect("copying the built keyhole");
        }
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&partial, &binary).expect("placing the test binary");
        binary
    })
}
