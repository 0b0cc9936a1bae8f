//! Running the system `ssh` through the bastion: `ssh -J BASTION -a -l USER ADDRESS [SSH_ARGS…]`.
//!
//! The engineer's own ssh configuration applies as it would to any ssh they type (keyhole passes
//! no `-F`): host keys, `IdentityAgent`, a bastion's `User` or `Port`. `-a` (no agent
//! forwarding) comes first on the command line, where it beats any `ForwardAgent yes` of their
//! config: a forwarded agent lets root on the instance sign with the engineer's keys for as long
//! as the session lasts; ProxyJump needs no forwarding, since the bastion only relays bytes.
//! `--forward-agent` puts `-A` there instead. SSH_ARGS follow the address: ssh reads options
//! there too, and the first word that is no option starts the remote command.
//!
//! ssh runs as a child rather than replacing keyhole, so that a refusal can be explained: its
//! stdin and stdout are the terminal's, its stderr passes through keyhole unchanged and the last
//! part is kept to recognise `Permission denied (publickey)`. While it runs keyhole ignores
//! SIGINT and SIGQUIT (as `system()` does): they are the session's, and ssh handles them.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};

use anyhow::Context;

/// How much of ssh's stderr is kept to classify the outcome.
const KEPT_STDERR: usize = 16 * 1024;

/// ssh's exit status when it failed itself (connection, authentication) rather than the remote
/// command.
pub const SSH_FAILED: i32 = 255;

/// ssh's arguments (without the program name).
pub fn arguments(
    bastion: &str,
    user: &str,
    address: &str,
    forward_agent: bool,
    ssh_args: &[String],
) -> Vec<String> {
    let mut args = vec![
        if forward_agent { "-A" } else { "-a" }.to_owned(),
        "-J".to_owned(),
        bastion.to_owned(),
        "-l".to_owned(),
        user.to_owned(),
        address.to_owned(),
    ];
    args.extend(ssh_args.iter().cloned());
    args
}

/// The command line as a shell would take it back (for `--dry-run` and logs).
pub fn shell_words(args: &[String]) -> String {
    std::iter::once("ssh".to_owned())
        .chain(args.iter().map(|arg| quote(arg)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '@' | '=' | ',' | '[' | ']')
        });
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What ssh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// ssh's exit code; a signal's death reads as 128 + the signal.
    pub code: i32,
    /// The last [`KEPT_STDERR`] bytes of its stderr (which also went to ours).
    pub stderr: String,
}

/// Runs ssh with `args` and waits for it.
pub fn run(args: &[String]) -> anyhow::Result<Finished> {
    let mut child = Command::new("ssh")
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .context("running ssh (install the OpenSSH client)")?;
    let _quiet = IgnoreInterrupts::now();
    let mut stderr = child.stderr.take().context("ssh's stderr")?;
    let copier = std::thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        let mut buffer = [0u8; 4096];
        let mut ours = std::io::stderr();
        loop {
            match stderr.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = ours.write_all(&buffer[..n]);
                    kept.extend_from_slice(&buffer[..n]);
                    if kept.len() > 2 * KEPT_STDERR {
                        kept.drain(..kept.len() - KEPT_STDERR);
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        kept
    });
    let status = child.wait().context("waiting for ssh")?;
    let kept = copier.join().unwrap_or_default();
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(SSH_FAILED);
    Ok(Finished {
        code,
        stderr: String::from_utf8_lossy(&kept).into_owned(),
    })
}

/// SIGINT and SIGQUIT ignored while it lives (the previous handlers restored on drop).
struct IgnoreInterrupts {
    previous: [(libc::c_int, libc::sighandler_t); 2],
}

impl IgnoreInterrupts {
    fn now() -> IgnoreInterrupts {
        let previous = [libc::SIGINT, libc::SIGQUIT].map(|signal| {
            // SAFETY: installing SIG_IGN for a signal has no memory-safety preconditions; the
            // child was spawned before, so it keeps the default handlers.
            (signal, unsafe { libc::signal(signal, libc::SIG_IGN) })
        });
        IgnoreInterrupts { previous }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        for (signal, handler) in self.previous {
            // SAFETY: restores the handler `signal` returned, which was valid before.
            unsafe { libc::signal(signal, handler) };
        }
    }
}

/// Who ended a failed login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The instance refused every key offered: what `--explain` explains.
    Instance,
    /// The bastion hop failed (refused, unreachable, or could not reach the instance).
    Bastion,
}

/// Reads a failed ssh's stderr: `None` when ssh succeeded or failed for another reason (the
/// remote command's own exit status, a host key mismatch, a network error to the bastion
/// that ssh reports its own way).
///
/// The jump is a second ssh (`ssh -W`) whose stderr is the outer one's: when the bastion
/// refuses, its `Permission denied` is followed by the outer ssh losing its connection
/// (`Connection closed by UNKNOWN port 65535`, `kex_exchange_identification`). A `Permission
/// denied (…publickey…)` without those is the instance's.
pub fn refusal(finished: &Finished) -> Option<Refusal> {
    if finished.code != SSH_FAILED {
        return None;
    }
    let stderr = &finished.stderr;
    let jump_lost = stderr.contains("UNKNOWN port 65535")
        || stderr.contains("kex_exchange_identification")
        || stderr.contains("stdio forwarding failed")
        || stderr.contains("channel 0: open failed");
    let denied = stderr
        .lines()
        .any(|line| line.contains("Permission denied (") && line.contains("publickey"));
    match (denied, jump_lost) {
        (_, true) => Some(Refusal::Bastion),
        (true, false) => Some(Refusal::Instance),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_not_forwarded_unless_asked_and_extra_arguments_follow_the_address() {
        let args = arguments(
            "ops@jump:2222",
            "ec2-user",
            "10.0.1.5",
            false,
            &["-p".into(), "2200".into(), "uptime".into()],
        );
        assert_eq!(
            args,
            [
                "-a",
                "-J",
                "ops@jump:2222",
                "-l",
                "ec2-user",
                "10.0.1.5",
                "-p",
                "2200",
                "uptime"
            ]
        );
        assert_eq!(arguments("j", "u", "h", true, &[])[0], "-A");
        assert_eq!(
            shell_words(&["-l".into(), "u".into(), "echo it's".into()]),
            r"ssh -l u 'echo it'\''s'"
        );
    }

    #[test]
    fn a_refusal_is_told_from_a_bastion_failure_and_from_a_failing_command() {
        let finished = |code, stderr: &str| Finished {
            code,
            stderr: stderr.to_owned(),
        };
        assert_eq!(
            refusal(&finished(
                255,
                "root@10.0.1.5: Permission denied (publickey).\r\n"
            )),
            Some(Refusal::Instance)
        );
        assert_eq!(
            refusal(&finished(
                255,
                "root@jump: Permission denied (publickey).\r\nConnection closed by UNKNOWN port 65535\r\n"
            )),
            Some(Refusal::Bastion)
        );
        assert_eq!(
            refusal(&finished(1, "Permission denied (publickey)")),
            None,
            "the remote command's own status"
        );
        assert_eq!(
            refusal(&finished(255, "Host key verification failed.\r\n")),
            None
        );
    }
}
