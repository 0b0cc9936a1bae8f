//! What the engineer typed: `[USER@]TARGET`, and what TARGET is (an instance ID, an address, a
//! private DNS name or a `Name` tag), decided from its shape alone so that the lookup is one
//! DescribeInstances call. Also the checks on everything that ends up on ssh's command line:
//! a login user and a jump host must never be read by ssh as an option or hold characters a
//! `ProxyCommand` would hand to a shell.

use std::net::IpAddr;

/// `[USER@]TARGET`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `USER@`, checked with [`login_user_problem`].
    pub user: Option<String>,
    pub lookup: Lookup,
}

/// How the instance is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// `i-` and 8 or 17 hexadecimal digits.
    InstanceId(String),
    /// A private IP address.
    Address(IpAddr),
    /// A private DNS name (`ip-10-0-1-5.eu-west-1.compute.internal`, `….ec2.internal`).
    DnsName(String),
    /// Anything else: the `Name` tag (and, when it holds a dot and no instance has that name, a
    /// private DNS name in a custom domain).
    Name(String),
}

impl Lookup {
    /// How the lookup reads in a message: `instance ID i-…`, `Name tag "web-1"`.
    pub fn describe(&self) -> String {
        match self {
            Lookup::InstanceId(id) => format!("instance ID {id}"),
            Lookup::Address(address) => format!("private address {address}"),
            Lookup::DnsName(name) => format!("private DNS name {name}"),
            Lookup::Name(name) => format!("Name tag {name:?}"),
        }
    }
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, String> {
        let (user, target) = match text.split_once('@') {
            Some((user, target)) => {
                if let Some(problem) = login_user_problem(user) {
                    return Err(format!("{text:?}: the user before '@': {problem}"));
                }
                (Some(user.to_owned()), target)
            }
            None => (None, text),
        };
        if target.trim().is_empty() {
            return Err(format!(
                "{text:?} names no instance (give an instance ID, a Name tag, a private DNS name or an address)"
            ));
        }
        Ok(Target {
            user,
            lookup: classify(target),
        })
    }
}

fn classify(target: &str) -> Lookup {
    if is_instance_id(target) {
        return Lookup::InstanceId(target.to_owned());
    }
    if let Ok(address) = target.parse::<IpAddr>() {
        return Lookup::Address(address);
    }
    if target.ends_with(".internal") {
        return Lookup::DnsName(target.to_owned());
    }
    Lookup::Name(target.to_owned())
}

fn is_instance_id(text: &str) -> bool {
    text.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// Why `name` cannot be a login user on ssh's command line, or `None`. POSIX-ish user names:
/// a letter or `_` first, then letters, digits, `_`, `.`, `-`; at most 32 characters. Nothing
/// that ssh could read as an option, nor a shell metacharacter.
pub fn login_user_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || name.len() > 32 {
        return Some(format!(
            "{name:?} is not a user name (a letter or '_', then letters, digits, '_', '.', '-'; at most 32)"
        ));
    }
    None
}

/// Why `text` cannot be a ProxyJump destination, or `None`: one or more (comma-separated)
/// `[user@]host[:port]`, where host is a DNS name, an IPv4 address, `[IPv6]`, or a `Host`
/// alias of the engineer's ssh_config.
pub fn jump_host_problem(text: &str) -> Option<String> {
    if text.is_empty() {
        return Some("is empty".to_owned());
    }
    for hop in text.split(',') {
        let (user, rest) = match hop.split_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, hop),
        };
        if let Some(problem) = user.and_then(login_user_problem) {
            return Some(problem);
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            match bracketed.split_once(']') {
                Some((v6, port)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => {
                    (v6, port.strip_prefix(':'))
                }
                _ => return Some(format!("{hop:?}: [{bracketed} is not an [IPv6] address")),
            }
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let host_ok = !host.is_empty()
            && !host.starts_with(['-', '.'])
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !host_ok {
            return Some(format!(
                "{hop:?} is not [user@]host[:port] (host: letters, digits, '.', '-', '_')"
            ));
        }
        if let Some(port) = port
            && !port.parse::<u16>().is_ok_and(|port| port > 0)
        {
            return Some(format!("{hop:?}: {port:?} is not a port"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_classified_by_its_shape() {
        let lookup = |text: &str| Target::parse(text).unwrap().lookup;
        assert_eq!(
            lookup("i-0123456789abcdef0"),
            Lookup::InstanceId("i-0123456789abcdef0".into())
        );
        assert_eq!(
            lookup("i-0123abcd"),
            Lookup::InstanceId("i-0123abcd".into())
        );
        // Not hexadecimal, or the wrong length: a name.
        assert_eq!(lookup("i-webserver"), Lookup::Name("i-webserver".into()));
        assert_eq!(
            lookup("10.0.1.5"),
            Lookup::Address("10.0.1.5".parse().unwrap())
        );
        assert_eq!(
            lookup("ip-10-0-1-5.eu-west-1.compute.internal"),
            Lookup::DnsName("ip-10-0-1-5.eu-west-1.compute.internal".into())
        );
        assert_eq!(lookup("web-1"), Lookup::Name("web-1".into()));
        let with_user = Target::parse("ubuntu@web-1").unwrap();
        assert_eq!(with_user.user.as_deref(), Some("ubuntu"));
        assert_eq!(with_user.lookup, Lookup::Name("web-1".into()));
        assert!(Target::parse("-oProxyCommand=x@web-1").is_err());
        assert!(Target::parse("bob@").is_err());
    }

    #[test]
    fn jump_hosts_are_host_port_forms_and_never_options() {
        for good in [
            "jump",
            "ops@jump-a.corp.example.com:2222",
            "127.0.0.1:2201",
            "[::1]:22",
            "a,ops@b:22",
        ] {
            assert_eq!(jump_host_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "-oProxyCommand=id",
            "jump;id",
            "jump host",
            "jump:ssh",
            "$(id)@jump",
            "[not-v6]:22",
        ] {
            assert!(jump_host_problem(bad).is_some(), "{bad}");
        }
    }
}
