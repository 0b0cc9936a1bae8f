//! The precondition of every login: an SSH agent runs and holds at least one key. `keyhole ssh`
//! logs in with the agent's keys only through a ProxyJump, so the private key never leaves the
//! laptop and is never needed on the bastion. Checked before any connection (EC2 included), so a
//! missing agent is one clear sentence instead of `Permission denied (publickey)` from a host
//! the engineer never meant to ask.
//!
//! The keys are read with `ssh-add -L` (OpenSSH's own client, which also knows the agent
//! protocols of its version), and parsed as authorized_keys lines to get their fingerprints for
//! `--explain`.

use std::process::{Command, Stdio};

use serde::Serialize;

use crate::bucket::group_file::any_key_policy;
use crate::keys;

/// The agent's socket.
pub const SOCKET_ENV: &str = "SSH_AUTH_SOCK";

/// A public key the agent holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentKey {
    pub fingerprint: String,
    pub key_type: String,
    pub comment: Option<String>,
    /// `type base64 comment`, as `ssh-add -L` prints it.
    #[serde(skip)]
    pub line: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no SSH agent: {SOCKET_ENV} is not set. Start one and add your key (`eval \"$(ssh-agent)\"; ssh-add ~/.ssh/id_ed25519`): keyhole ssh logs in with the agent's keys, so that your private key never leaves this machine"
    )]
    NoAgent,
    #[error(
        "the SSH agent at {SOCKET_ENV}={socket} does not answer ({detail}): start it again (`eval \"$(ssh-agent)\"`) and add your key with ssh-add"
    )]
    Unreachable { socket: String, detail: String },
    #[error(
        "the SSH agent holds no keys: add the key you published in your home's ~/.ssh/authorized_keys (`ssh-add ~/.ssh/id_ed25519`)"
    )]
    Empty,
    #[error("asking the SSH agent for its keys with ssh-add: {0}")]
    Failed(String),
}

/// The agent's keys, or why there are none. Certificates and keys of types keyhole cannot
/// fingerprint count as keys for the precondition but are not listed.
pub fn keys() -> Result<Vec<AgentKey>, AgentError> {
    let socket = std::env::var(SOCKET_ENV).unwrap_or_default();
    if socket.is_empty() {
        return Err(AgentError::NoAgent);
    }
    let output = Command::new("ssh-add")
        .arg("-L")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| AgentError::Failed(format!("running ssh-add: {error}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = format!("{} {}", stdout.trim(), stderr.trim());
    match output.status.code() {
        Some(0) => {}
        // ssh-add: 1 when the agent has no identities (or refused), 2 when it cannot connect.
        Some(1) if said.contains("no identities") => return Err(AgentError::Empty),
        Some(2) => {
            return Err(AgentError::Unreachable {
                socket,
                detail: said.trim().to_owned(),
            });
        }
        _ => return Err(AgentError::Failed(said.trim().to_owned())),
    }
    let lines = stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count();
    if lines == 0 {
        return Err(AgentError::Empty);
    }
    Ok(parse(&stdout))
}

/// The keys of `ssh-add -L`'s output.
pub fn parse(text: &str) -> Vec<AgentKey> {
    keys::parse_authorized_keys(text, &any_key_policy())
        .keys
        .into_iter()
        .map(|key| AgentKey {
            fingerprint: key.fingerprint.as_str().to_owned(),
            line: key.line(),
            key_type: key.key_type,
            comment: key.comment,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_listing_gives_fingerprints_and_comments() {
        let keys = parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq bob@laptop\n",
        );
        assert_eq!(keys.len(), 1);
        assert!(keys[0].fingerprint.starts_with("SHA256:"), "{keys:?}");
        assert_eq!(keys[0].comment.as_deref(), Some("bob@laptop"));
    }
}
