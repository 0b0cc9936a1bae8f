//! A real OpenSSH server for end-to-end tests: `sshd -D -e` on 127.0.0.1 at a free port, with a
//! test configuration whose `AuthorizedKeysCommand` is the built keyhole, run as `nobody` as in
//! production. Logins are made with the real `ssh` client. Killed on `Drop`.
//!
//! sshd only runs an AuthorizedKeysCommand whose path, and every directory above it, is owned by
//! root and writable by nobody else, so the command (a small wrapper that points keyhole at its
//! settings and the test S3 credentials) lives in a fresh 0755 directory under /run, never under
//! the world-writable /tmp.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::ports::{Started, free_port, wait_listening};

pub struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts sshd, letting `login_user` in with the keys `keyhole authorized-keys` prints when run
    /// with `config` and the environment `env` (e.g. AWS credentials for the test S3).
    pub fn start(config: &Path, env: &[(String, String)]) -> Sshd {
        Sshd::start_with(config, env, "")
    }

    /// [`Sshd::start`] with `prelude` (sshd_config lines) first: sshd keeps the first value of
    /// each keyword, so e.g. an `AuthorizedKeysFile` here replaces the default `none`.
    pub fn start_with(config: &Path, env: &[(String, String)], prelude: &str) -> Sshd {
        // /run, not the target dir: a checkout under /tmp (world-writable) would fail sshd's
        // check of the command's parent directories.
        let dir = tempfile::Builder::new()
            .prefix("keyhole-sshd-")
            .tempdir_in("/run")
            .expect("a directory for sshd under /run (the tests run as root)");
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all("/run/sshd").expect("sshd's privilege separation directory");

        let host_key = root.join("host_ed25519");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");

        // The wrapper: sshd gives the command an empty environment, and secrets never go in argv.
        let mut exports = String::new();
        for (name, value) in env {
            exports.push_str(&format!("export {name}='{value}'\n"));
        }
        let wrapper = root.join("keyhole-authorized-keys");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n{exports}exec {} --config {} authorized-keys \"$@\"\n",
                super::keyhole::binary_for_nobody().display(),
                config.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

        // A port freed for sshd may be taken before sshd binds it: sshd then exits ("Cannot bind
        // any address") and is started again on another port. Ready means sshd itself listens.
        let sshd_config = root.join("sshd_config");
        let mut started = None;
        for _attempt in 0..5 {
            let port = free_port();
            std::fs::write(
                &sshd_config,
                format!(
                    "{prelude}ListenAddress 127.0.0.1:{port}\n\
                     HostKey {host_key}\n\
                     PidFile none\n\
                     UsePAM no\n\
                     PermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\n\
                     StrictModes yes\n\
                     AuthorizedKeysFile none\n\
                     AuthorizedKeysCommand {wrapper} %u %f\n\
                     AuthorizedKeysCommandUser nobody\n\
                     LogLevel VERBOSE\n",
                    host_key = host_key.display(),
                    wrapper = wrapper.display(),
                ),
            )
            .unwrap();

            let log = std::fs::File::create(root.join("sshd.log")).unwrap();
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&sshd_config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting sshd (scripts/test installs openssh-server)");
            match wait_listening(&mut child, port, Duration::from_secs(10)) {
                Started::Listening => {
                    started = Some((child, port));
                    break;
                }
                Started::Exited(reason) => eprintln!(
                    "sshd {reason}: {}",
                    std::fs::read_to_string(root.join("sshd.log")).unwrap_or_default()
                ),
            }
        }
        let (child, port) = started.expect("sshd could not listen on 127.0.0.1 after 5 ports");
        Sshd { child, port, dir }
    }

    /// `ssh -i KEY -p PORT USER@127.0.0.1 true`: true when the login succeeded.
    pub fn login(&self, user: &str, private_key: &Path) -> bool {
        self.login_from(user, private_key, "127.0.0.1")
    }

    /// Like [`Sshd::login`], from the loopback address `source` (`ssh -b`), e.g. 127.0.0.2: what
    /// a `from=` restriction is judged against.
    pub fn login_from(&self, user: &str, private_key: &Path, source: &str) -> bool {
        self.ssh(user, private_key, source, "true").status.success()
    }

    /// `ssh -i KEY -p PORT USER@127.0.0.1 COMMAND`: what the session printed, `None` when the
    /// login failed.
    pub fn run(&self, user: &str, private_key: &Path, command: &str) -> Option<String> {
        let output = self.ssh(user, private_key, "127.0.0.1", command);
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The real ssh client, with no agent, no known hosts and no prompt: only `private_key`.
    fn ssh(&self, user: &str, private_key: &Path, source: &str, command: &str) -> Output {
        Command::new("ssh")
            .args(["-b", source])
            .arg("-i")
            .arg(private_key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
            ])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
            .arg(format!("{user}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("running ssh")
    }

    /// Everything sshd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
