//! The hosts a probe visits: an inventory file, or EC2 instances found by tag.
//!
//! Inventory file, one host a line, `#` starts a comment:
//!
//! ```text
//! web-1.internal                      # host, port 22, as [canary] login_user
//! 10.0.1.5:2222                       # host:port
//! ubuntu@web-2.internal               # user@host: this host's login user (AMIs differ)
//! [fd00::5]:22                        # IPv6 with a port
//! db-1.internal via ops@bastion:2222  # through a bastion ([user@]host[:port], ssh's ProxyJump)
//! app-3.internal via eu-jump          # through a bastion named by a Host of [canary] ssh_config
//! ```
//!
//! A line that is not one of these is an error naming the file and line: a typo must never
//! silently shrink the audited fleet.

use std::path::Path;

use anyhow::Context;

/// One host to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As written in the inventory (what reports show).
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The login user on this host (`user@` in the inventory); `None`: `[canary] login_user`.
    pub user: Option<String>,
    /// ssh's ProxyJump value: `[user@]host[:port]` or an alias of the ssh config.
    pub via: Option<String>,
}

/// Parses an inventory file.
pub fn read(path: &Path) -> anyhow::Result<Vec<Target>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the inventory {}", path.display()))?;
    parse(&text).map_err(|(line, problem)| anyhow::anyhow!("{}:{line}: {problem}", path.display()))
}

/// Parses inventory text; an error is (line number, problem).
pub fn parse(text: &str) -> Result<Vec<Target>, (usize, String)> {
    let mut targets = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (address, via) = match words.as_slice() {
            [address] => (*address, None),
            [address, "via", jump] => (*address, Some((*jump).to_owned())),
            _ => {
                return Err((
                    number + 1,
                    format!(
                        "expected `[user@]host[:port]` or `[user@]host[:port] via [user@]bastion[:port]`, found `{line}`"
                    ),
                ));
            }
        };
        let (user, host_port) = match address.split_once('@') {
            Some((user, rest)) if valid_user(user) => (Some(user.to_owned()), rest),
            Some(_) => {
                return Err((
                    number + 1,
                    format!("`{address}` does not start with a user name"),
                ));
            }
            None => (None, address),
        };
        let (host, port) = split_port(host_port).map_err(|problem| (number + 1, problem))?;
        if let Some(jump) = &via
            && jump.starts_with('-')
        {
            return Err((number + 1, format!("`{jump}` is not a bastion")));
        }
        targets.push(Target {
            name: address.to_owned(),
            host,
            port,
            user,
            via,
        });
    }
    Ok(targets)
}

/// A login name ssh can be given safely: letters, digits, `.`, `_`, `-`, not starting with `-`.
fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && !user.starts_with('-')
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_port(address: &str) -> Result<(String, u16), String> {
    let invalid = || format!("`{address}` is not a host[:port]");
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(invalid)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(invalid()),
        }
    } else {
        match address.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() || host.starts_with('-') || host.contains(['@', '/', ' ']) {
        return Err(invalid());
    }
    let port = match port {
        Some(port) => port.parse().map_err(|_| invalid())?,
        None => 22,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_ports_bastions_and_comments() {
        let targets = parse(
            "# the fleet\nweb-1\n10.0.1.5:2222  # db\n[fd00::5]:2200\napp via ops@jump:2222\n\napp2 via eu-jump\n",
        )
        .unwrap();
        let short: Vec<(&str, u16, Option<&str>)> = targets
            .iter()
            .map(|t| (t.host.as_str(), t.port, t.via.as_deref()))
            .collect();
        assert_eq!(
            short,
            [
                ("web-1", 22, None),
                ("10.0.1.5", 2222, None),
                ("fd00::5", 2200, None),
                ("app", 22, Some("ops@jump:2222")),
                ("app2", 22, Some("eu-jump")),
            ]
        );
        assert_eq!(targets[1].name, "10.0.1.5:2222");
    }

    #[test]
    fn a_line_may_name_its_login_user() {
        let targets = parse(
            "ubuntu@web-1:2222
web-2
ec2-user@[fd00::5] via ops@jump
",
        )
        .unwrap();
        let short: Vec<(Option<&str>, &str, u16)> = targets
            .iter()
            .map(|t| (t.user.as_deref(), t.host.as_str(), t.port))
            .collect();
        assert_eq!(
            short,
            [
                (Some("ubuntu"), "web-1", 2222),
                (None, "web-2", 22),
                (Some("ec2-user"), "fd00::5", 22),
            ]
        );
        assert_eq!(targets[0].name, "ubuntu@web-1:2222");
        assert_eq!(parse("@web-1\n").unwrap_err().0, 1);
        assert_eq!(parse("-oProxyCommand=x@web-1\n").unwrap_err().0, 1);
        assert_eq!(parse("a b@web-1\n").unwrap_err().0, 1);
        assert_eq!(parse("ops@ubuntu@web-1\n").unwrap_err().0, 1);
    }

    #[test]
    fn a_bad_line_names_its_number() {
        assert_eq!(parse("web-1\nweb-2 through jump\n").unwrap_err().0, 2);
        assert_eq!(parse("web-1:notaport\n").unwrap_err().0, 1);
        assert_eq!(parse("-oProxyCommand=x\n").unwrap_err().0, 1);
        assert_eq!(parse("web via -oProxyCommand=x\n").unwrap_err().0, 1);
    }
}
