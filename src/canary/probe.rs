//! `keyhole canary probe`: log in to each host with the current canary key (must be accepted) and
//! the previous one (must be refused), with the real OpenSSH client, and classify every host.
//!
//! ssh is run with a config file of keyhole's own (`-F`), because options given with `-o` do not
//! reach a ProxyJump hop and a file does: batch mode, public keys only, only the given identity
//! (never an agent, never agent forwarding), strict host key checking against the pinned
//! `known_hosts`, a connect timeout. The operator's `[canary] ssh_config` is included after these
//! (ssh takes the first value it finds, so keyhole's own cannot be overridden), for what only the
//! operator knows: a bastion's own IdentityFile, host aliases. The canary key is given with `-i`
//! on the command line, which applies to the instance and not to the bastion hop: the canary
//! key's `restrict` would refuse the forwarding a jump needs.
//!
//! Probes run `concurrency` at a time: a bastion's sshd drops connections beyond `MaxStartups`
//! (default 10), which would be misread as unreachable hosts.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::MARKER;
use super::inventory::Target;
use crate::settings::CanarySettings;

/// What one login attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Logged in (the marker was printed, or the host ran our command: accepted either way).
    Accepted,
    /// The instance refused the key.
    Refused,
    HostKeyMismatch(String),
    BastionFailed(String),
    Unreachable(String),
}

/// A host's verdict. The names are a contract (JSON `result`, metrics labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    NotGranted,
    NotRevoked,
    Unreachable,
    HostKeyMismatch,
    BastionFailed,
}

impl Verdict {
    pub const ALL: [Verdict; 6] = [
        Verdict::Ok,
        Verdict::NotGranted,
        Verdict::NotRevoked,
        Verdict::Unreachable,
        Verdict::HostKeyMismatch,
        Verdict::BastionFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::NotGranted => "not_granted",
            Verdict::NotRevoked => "not_revoked",
            Verdict::Unreachable => "unreachable",
            Verdict::HostKeyMismatch => "host_key_mismatch",
            Verdict::BastionFailed => "bastion_failed",
        }
    }
}

/// One host's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostResult {
    pub host: String,
    pub result: Verdict,
    pub detail: String,
    /// How long probing this host took.
    pub seconds: f64,
    /// The current key was accepted (new access arrived).
    #[serde(skip)]
    pub granted: bool,
    /// The previous key was refused, or there is none (revocation arrived).
    #[serde(skip)]
    pub revoked: bool,
}

/// The two keys a probe logs in with.
#[derive(Debug, Clone)]
pub struct Keys {
    pub current: PathBuf,
    /// `None` before the first rotation: there is nothing to see refused yet.
    pub previous: Option<PathBuf>,
}

impl Keys {
    pub fn of(key_dir: &Path) -> anyhow::Result<Keys> {
        let current = super::key_path(key_dir, "current");
        if !current.exists() {
            anyhow::bail!(
                "no canary key in {} (run `keyhole canary rotate`)",
                key_dir.display()
            );
        }
        let previous = Some(super::key_path(key_dir, "previous")).filter(|p| p.exists());
        Ok(Keys { current, previous })
    }
}

/// Runs probes with keyhole's ssh configuration.
pub struct Prober {
    config: tempfile::NamedTempFile,
    login_user: String,
    concurrency: usize,
}

impl Prober {
    pub fn new(settings: &CanarySettings) -> anyhow::Result<Prober> {
        let mut config =
            tempfile::NamedTempFile::new().context("writing the probe's ssh config")?;
        config.write_all(ssh_config(settings).as_bytes())?;
        config.flush()?;
        Ok(Prober {
            config,
            login_user: settings.login_user.clone(),
            concurrency: settings.concurrency,
        })
    }

    /// Probes every target, `concurrency` at a time; results in the targets' order.
    pub fn probe_all(&self, targets: &[Target], keys: &Keys) -> Vec<HostResult> {
        let next = Mutex::new(0usize);
        let results: Mutex<Vec<Option<HostResult>>> = Mutex::new(vec![None; targets.len()]);
        std::thread::scope(|scope| {
            for _ in 0..self.concurrency.min(targets.len()) {
                scope.spawn(|| {
                    loop {
                        let i = {
                            let Ok(mut next) = next.lock() else { return };
                            let i = *next;
                            *next += 1;
                            i
                        };
                        let Some(target) = targets.get(i) else { return };
                        let result = self.probe(target, keys);
                        if let Ok(mut results) = results.lock() {
                            results[i] = Some(result);
                        }
                    }
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect()
    }

    /// Probes one host: the current key, then the previous one.
    pub fn probe(&self, target: &Target, keys: &Keys) -> HostResult {
        let started = Instant::now();
        let current = self.attempt(target, &keys.current);
        let previous = match (&current, &keys.previous) {
            (Attempt::Accepted | Attempt::Refused, Some(previous)) => {
                Some(self.attempt(target, previous))
            }
            _ => None,
        };
        let (result, detail) = judge(&current, previous.as_ref());
        HostResult {
            host: target.name.clone(),
            result,
            detail,
            seconds: started.elapsed().as_secs_f64(),
            granted: current == Attempt::Accepted,
            revoked: match &previous {
                Some(previous) => *previous == Attempt::Refused,
                None => keys.previous.is_none() && current == Attempt::Accepted,
            },
        }
    }

    /// One login with `key`.
    pub fn attempt(&self, target: &Target, key: &Path) -> Attempt {
        let mut command = Command::new("ssh");
        command
            .arg("-F")
            .arg(self.config.path())
            .arg("-i")
            .arg(key)
            .args(["-p", &target.port.to_string()]);
        if let Some(via) = &target.via {
            command.args(["-J", via]);
        }
        let user = target.user.as_deref().unwrap_or(&self.login_user);
        let destination = format!("{user}@{}", target.host);
        command
            .arg("--")
            .arg(&destination)
            .arg("echo keyhole-canary-unrestricted")
            .stdin(Stdio::null());
        let output = match command.output() {
            Ok(output) => output,
            Err(error) => return Attempt::Unreachable(format!("could not run ssh: {error}")),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        classify(
            output.status.success(),
            &stdout,
            &stderr,
            &destination,
            target.via.is_some(),
        )
    }
}

/// keyhole's own options, then the operator's ssh_config.
fn ssh_config(settings: &CanarySettings) -> String {
    let mut config = format!(
        "Host *\n  BatchMode yes\n  IdentitiesOnly yes\n  IdentityAgent none\n  \
         PreferredAuthentications publickey\n  PasswordAuthentication no\n  \
         KbdInteractiveAuthentication no\n  ForwardAgent no\n  ForwardX11 no\n  \
         StrictHostKeyChecking yes\n  UpdateHostKeys no\n  ConnectTimeout {}\n  \
         ServerAliveInterval 5\n  ServerAliveCountMax 2\n  LogLevel ERROR\n",
        settings.connect_timeout.as_secs().max(1)
    );
    if let Some(known_hosts) = &settings.known_hosts {
        config.push_str(&format!(
            "  UserKnownHostsFile \"{}\"\n  GlobalKnownHostsFile /dev/null\n",
            known_hosts.display()
        ));
    }
    if let Some(ssh_config) = &settings.ssh_config {
        config.push_str(&format!(
            "Match all\nInclude \"{}\"\n",
            ssh_config.display()
        ));
    }
    config
}

/// What ssh's exit status and messages say about one attempt.
///
/// Through a bastion, ssh runs a second ssh for the hop (`-W`): when the hop fails (the bastion
/// unreachable, refusing its own key, or with a changed host key), the outer connection closes
/// before the instance's banner ("Connection closed by UNKNOWN port 65535",
/// "kex_exchange_identification"); when the bastion cannot reach the instance, the forwarding
/// fails ("open failed", "stdio forwarding failed"). Messages name `user@host`, which on one
/// machine (tests) can be the same for both hops, so the shape decides, not the name.
pub fn classify(
    success: bool,
    stdout: &str,
    stderr: &str,
    _destination: &str,
    through_bastion: bool,
) -> Attempt {
    if success || stdout.contains(MARKER) {
        return Attempt::Accepted;
    }
    let forwarding_failed = stderr.contains("stdio forwarding failed")
        || stderr.contains("open failed")
        || stderr.contains("administratively prohibited");
    let hop_failed = stderr.contains("Connection closed by UNKNOWN port 65535")
        || stderr.contains("kex_exchange_identification");
    let detail = detail(stderr);
    if through_bastion && forwarding_failed {
        return Attempt::Unreachable(detail);
    }
    if through_bastion && hop_failed {
        return Attempt::BastionFailed(detail);
    }
    if stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("host key is known")
    {
        return Attempt::HostKeyMismatch(detail);
    }
    if stderr.contains("Permission denied") {
        return Attempt::Refused;
    }
    Attempt::Unreachable(detail)
}

/// The most telling line of ssh's messages (not its banner of `@`s).
fn detail(stderr: &str) -> String {
    const TELLING: [&str; 6] = [
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "Host key verification failed",
        "host key is known",
        "Permission denied",
        "connect to host",
        "open failed",
    ];
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("@@@"))
        .collect();
    TELLING
        .iter()
        .find_map(|marker| lines.iter().find(|line| line.contains(marker)))
        .or(lines.first())
        .map_or_else(
            || "ssh failed without a message".to_owned(),
            |line| (*line).to_owned(),
        )
}

/// The verdict from the two attempts.
pub fn judge(current: &Attempt, previous: Option<&Attempt>) -> (Verdict, String) {
    let infrastructure = |attempt: &Attempt| match attempt {
        Attempt::HostKeyMismatch(detail) => Some((Verdict::HostKeyMismatch, detail.clone())),
        Attempt::BastionFailed(detail) => Some((Verdict::BastionFailed, detail.clone())),
        Attempt::Unreachable(detail) => Some((Verdict::Unreachable, detail.clone())),
        Attempt::Accepted | Attempt::Refused => None,
    };
    if let Some(verdict) = infrastructure(current) {
        return verdict;
    }
    if let Some(verdict) = previous.and_then(infrastructure) {
        return verdict;
    }
    match (current, previous) {
        (_, Some(Attempt::Accepted)) => (
            Verdict::NotRevoked,
            "the previous canary key is still accepted: this host does not see revocations \
             (is its refresh failing? `keyhole doctor` on it)"
                .to_owned(),
        ),
        (Attempt::Refused, _) => (
            Verdict::NotGranted,
            "the current canary key is refused: this host does not see new access".to_owned(),
        ),
        _ => (
            Verdict::Ok,
            match previous {
                Some(_) => "current key accepted, previous refused".to_owned(),
                None => "current key accepted (no previous key yet)".to_owned(),
            },
        ),
    }
}

/// How long to wait between probe rounds in `canary run`.
pub const ROUND_INTERVAL: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const DEST: &str = "ec2-user@10.0.0.5";

    #[test]
    fn ssh_messages_are_classified_by_which_hop_failed() {
        let c = |ok, stdout, stderr, via| classify(ok, stdout, stderr, DEST, via);
        assert_eq!(c(true, "keyhole-canary-ok\n", "", false), Attempt::Accepted);
        assert_eq!(
            c(
                false,
                "",
                "ec2-user@10.0.0.5: Permission denied (publickey).\n",
                false
            ),
            Attempt::Refused
        );
        assert_eq!(
            c(
                false,
                "",
                "ec2-user@10.0.0.5: Permission denied (publickey).\n",
                true
            ),
            Attempt::Refused
        );
        assert!(matches!(
            c(
                false,
                "",
                "ops@jump: Permission denied (publickey).\nConnection closed by UNKNOWN port 65535\n",
                true
            ),
            Attempt::BastionFailed(_)
        ));
        assert!(matches!(
            c(
                false,
                "",
                "ssh: connect to host 127.0.0.1 port 2200: Connection refused\nConnection closed by UNKNOWN port 65535\n",
                true
            ),
            Attempt::BastionFailed(_)
        ));
        assert!(matches!(
            c(
                false,
                "",
                "channel 0: open failed: connect failed: Connection refused\nstdio forwarding failed\n",
                true
            ),
            Attempt::Unreachable(_)
        ));
        assert!(matches!(
            c(
                false,
                "",
                "ssh: connect to host 10.0.0.5 port 22: Connection timed out\n",
                false
            ),
            Attempt::Unreachable(_)
        ));
        assert!(matches!(
            c(
                false,
                "",
                "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.\n",
                false
            ),
            Attempt::HostKeyMismatch(_)
        ));
    }

    #[test]
    fn verdicts_put_revocation_first() {
        use Attempt::*;
        assert_eq!(judge(&Accepted, Some(&Refused)).0, Verdict::Ok);
        assert_eq!(judge(&Accepted, None).0, Verdict::Ok);
        assert_eq!(judge(&Refused, Some(&Refused)).0, Verdict::NotGranted);
        assert_eq!(judge(&Accepted, Some(&Accepted)).0, Verdict::NotRevoked);
        assert_eq!(judge(&Refused, Some(&Accepted)).0, Verdict::NotRevoked);
        assert_eq!(
            judge(&Unreachable("x".into()), None).0,
            Verdict::Unreachable
        );
        assert_eq!(
            judge(&Accepted, Some(&BastionFailed("x".into()))).0,
            Verdict::BastionFailed
        );
    }
}
