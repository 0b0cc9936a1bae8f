//! An access group's `options` (its restrictions, e.g. `from="10.20.0.0/16"`, `no-pty`) merged
//! into each key line it publishes, so that sshd enforces both the key's own options and the
//! group's.
//!
//! sshd reads a line's options left to right, refuses a line that names `from=` or `command=`
//! twice ("multiple \"from\" clauses"), and lets a later flag override an earlier one (`restrict`
//! then `pty` permits a pty). The merge therefore:
//! - keeps the key's own options first and appends the group's after them, so a group flag
//!   (`no-pty`, `restrict`) always has the last word over a key's `pty`/`permit-*`;
//! - allows in a group only options that take something away ([`GROUP_OPTIONS`]): a group's
//!   `pty` or `permitopen` could widen what a key's own options allow, and is refused by `check`;
//! - writes one `from=`: the group's when the key has none; when both have one, their
//!   intersection, computed exactly when every positive entry of both lists is an address or
//!   CIDR block (blocks either nest or are disjoint, so the intersection is the smaller block of
//!   each nesting pair), every negated (`!`) entry of both kept. When hostnames or wildcards
//!   make the intersection uncomputable, the two lists must be identical, or the key is refused
//!   in that group ([`MergeError`]), never published with the wider list;
//! - writes one `command=`: a key's `command=` that differs from the group's is an error for that
//!   key, which is then left out of that group's file (reported per key).

use std::net::IpAddr;

use thiserror::Error;

use super::options::{KeyOption, parse_options};

/// The options an access group may set: each only takes something away from a key.
pub const GROUP_OPTIONS: &[&str] = &[
    "from",
    "command",
    "restrict",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-user-rc",
    "no-x11-forwarding",
    "verify-required",
    "no-touch-required",
];

/// Why a key cannot be published in a group with these options.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MergeError {
    #[error(
        "the key's command=\"{key}\" conflicts with the access group's command=\"{group}\" (sshd \
         refuses a line with two commands)"
    )]
    Command { key: String, group: String },
    #[error(
        "the key's from=\"{key}\" and the access group's from=\"{group}\" have no address in \
         common: the key could never be used there"
    )]
    Disjoint { key: String, group: String },
    #[error(
        "the key's from=\"{key}\" cannot be combined with the access group's from=\"{group}\": \
         with hostnames or wildcards the lists must be identical"
    )]
    Uncombinable { key: String, group: String },
    #[error("the key's options do not parse: {0}")]
    Options(String),
}

/// Why the text of one entry of a group's `options` list is not acceptable, or `None`.
pub fn group_option_problem(text: &str) -> Option<String> {
    let options = match parse_options(text) {
        Ok(options) => options,
        Err(error) => return Some(error.to_string()),
    };
    for option in &options {
        if !GROUP_OPTIONS.contains(&option.name.as_str()) {
            return Some(format!(
                "`{}` is not an option an access group may set (it could widen what a key's own \
                 options allow); allowed: {}",
                option.name,
                GROUP_OPTIONS.join(", ")
            ));
        }
        if option.name == "from"
            && let Some(value) = &option.value
            && let Some(problem) = from_list_problem(value)
        {
            return Some(problem);
        }
    }
    None
}

/// Why a `from=` pattern list would make sshd refuse the line, or `None`.
pub fn from_list_problem(list: &str) -> Option<String> {
    for entry in list.split(',') {
        let pattern = entry.strip_prefix('!').unwrap_or(entry);
        if pattern.is_empty() {
            return Some(format!("empty entry in from=\"{list}\""));
        }
        if pattern.contains('/') {
            match parse_cidr(pattern) {
                Some(_) => {}
                None => {
                    return Some(format!(
                        "`{pattern}` in from=\"{list}\" is not a network address/prefix (host \
                         bits must be zero, e.g. 10.20.0.0/16)"
                    ));
                }
            }
        }
    }
    None
}

/// Parses a group's `options` list (each entry one or more comma-separated options).
pub fn parse_group_options(entries: &[String]) -> Result<Vec<KeyOption>, String> {
    parse_options(&entries.join(",")).map_err(|error| error.to_string())
}

/// The options text of a key line published in a group with `group` options: `None` when the
/// line has no options at all.
pub fn merge(key: Option<&str>, group: &[KeyOption]) -> Result<Option<String>, MergeError> {
    if group.is_empty() {
        return Ok(key.map(str::to_owned));
    }
    let mut merged: Vec<KeyOption> = match key {
        Some(text) => parse_options(text).map_err(|e| MergeError::Options(e.to_string()))?,
        None => Vec::new(),
    };
    for option in group {
        match option.name.as_str() {
            "from" => {
                let group_list = option.value.clone().unwrap_or_default();
                match merged.iter_mut().find(|o| o.name == "from") {
                    Some(own) => {
                        let key_list = own.value.clone().unwrap_or_default();
                        own.value = Some(intersect(&key_list, &group_list)?);
                    }
                    None => merged.push(option.clone()),
                }
            }
            "command" => match merged.iter().find(|o| o.name == "command") {
                Some(own) if own.value == option.value => {}
                Some(own) => {
                    return Err(MergeError::Command {
                        key: own.value.clone().unwrap_or_default(),
                        group: option.value.clone().unwrap_or_default(),
                    });
                }
                None => merged.push(option.clone()),
            },
            // A flag the key already has (in the same spelling) adds nothing.
            _ if merged.iter().any(|o| o == option) => {}
            _ => merged.push(option.clone()),
        }
    }
    Ok(Some(
        merged
            .iter()
            .map(write_option)
            .collect::<Vec<_>>()
            .join(","),
    ))
}

/// One option as sshd reads it back: `name` or `name="value"`, `"` escaped as `\"`.
fn write_option(option: &KeyOption) -> String {
    match &option.value {
        Some(value) => format!("{}=\"{}\"", option.name, value.replace('"', "\\\"")),
        None => option.name.clone(),
    }
}

/// The `from=` list allowing exactly the sources both lists allow.
fn intersect(key: &str, group: &str) -> Result<String, MergeError> {
    if key == group {
        return Ok(key.to_owned());
    }
    let split = |list: &str| -> (Vec<String>, Vec<String>) {
        let (negated, positive): (Vec<&str>, Vec<&str>) =
            list.split(',').partition(|entry| entry.starts_with('!'));
        (
            positive.into_iter().map(str::to_owned).collect(),
            negated.into_iter().map(str::to_owned).collect(),
        )
    };
    let (key_positive, key_negated) = split(key);
    let (group_positive, group_negated) = split(group);
    let blocks = |entries: &[String]| -> Option<Vec<(IpAddr, u8, String)>> {
        entries
            .iter()
            .map(|entry| parse_cidr(entry).map(|(addr, bits)| (addr, bits, entry.clone())))
            .collect()
    };
    let (Some(key_blocks), Some(group_blocks)) = (blocks(&key_positive), blocks(&group_positive))
    else {
        return Err(MergeError::Uncombinable {
            key: key.to_owned(),
            group: group.to_owned(),
        });
    };
    let mut positive: Vec<String> = Vec::new();
    for (key_addr, key_bits, key_text) in &key_blocks {
        for (group_addr, group_bits, group_text) in &group_blocks {
            let inner = if contains(*key_addr, *key_bits, *group_addr) && key_bits <= group_bits {
                Some(group_text)
            } else if contains(*group_addr, *group_bits, *key_addr) && group_bits <= key_bits {
                Some(key_text)
            } else {
                None
            };
            if let Some(inner) = inner
                && !positive.contains(inner)
            {
                positive.push(inner.clone());
            }
        }
    }
    if positive.is_empty() {
        return Err(MergeError::Disjoint {
            key: key.to_owned(),
            group: group.to_owned(),
        });
    }
    for negated in key_negated.into_iter().chain(group_negated) {
        if !positive.contains(&negated) {
            positive.push(negated);
        }
    }
    Ok(positive.join(","))
}

/// `10.0.0.0/8`, `10.1.2.3` (a /32), `::1`, `fd00::/8`; `None` for hostnames, wildcards and
/// blocks with host bits set (sshd refuses those).
fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (address, bits) = match text.split_once('/') {
        Some((address, bits)) => (address, Some(bits)),
        None => (text, None),
    };
    let address: IpAddr = address.parse().ok()?;
    let width = if address.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(bits) if !bits.is_empty() && bits.chars().all(|c| c.is_ascii_digit()) => {
            bits.parse::<u8>().ok()?
        }
        Some(_) => return None,
        None => width,
    };
    if bits > width || !contains(address, bits, address) || masked(address, bits) != address {
        return None;
    }
    Some((address, bits))
}

/// `address` with everything after the first `bits` bits cleared.
fn masked(address: IpAddr, bits: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// Whether `address` is inside the block `network/bits` (same family only).
fn contains(network: IpAddr, bits: u8, address: IpAddr) -> bool {
    network.is_ipv4() == address.is_ipv4() && masked(address, bits) == masked(network, bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(entries: &[&str]) -> Vec<KeyOption> {
        parse_group_options(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_group_from_is_added_to_a_key_without_one_after_its_own_options() {
        let bastions = group(&["from=\"10.20.0.0/16\"", "no-agent-forwarding"]);
        assert_eq!(
            merge(None, &bastions).unwrap().as_deref(),
            Some("from=\"10.20.0.0/16\",no-agent-forwarding")
        );
        assert_eq!(
            merge(Some("pty,no-agent-forwarding"), &bastions)
                .unwrap()
                .as_deref(),
            Some("pty,no-agent-forwarding,from=\"10.20.0.0/16\"")
        );
        // No group options: the key's text is kept verbatim.
        assert_eq!(
            merge(Some("No-Pty"), &[]).unwrap().as_deref(),
            Some("No-Pty")
        );
        assert_eq!(merge(None, &[]).unwrap(), None);
    }

    #[test]
    fn two_from_lists_intersect_and_never_widen() {
        let bastions = group(&["from=\"10.20.0.0/16,!10.20.9.9\""]);
        // The key's narrower block stays; the group's negation is kept.
        assert_eq!(
            merge(Some("from=\"10.20.5.0/24\""), &bastions)
                .unwrap()
                .as_deref(),
            Some("from=\"10.20.5.0/24,!10.20.9.9\"")
        );
        // The key's wider block is narrowed to the group's.
        assert_eq!(
            merge(Some("from=\"10.0.0.0/8,!10.1.1.1\""), &bastions)
                .unwrap()
                .as_deref(),
            Some("from=\"10.20.0.0/16,!10.1.1.1,!10.20.9.9\"")
        );
        assert!(matches!(
            merge(Some("from=\"192.168.0.0/16\""), &bastions),
            Err(MergeError::Disjoint { .. })
        ));
        assert!(matches!(
            merge(Some("from=\"*.corp.example.com\""), &bastions),
            Err(MergeError::Uncombinable { .. })
        ));
        // Identical lists, hostnames or not, are one list.
        let named = group(&["from=\"*.corp.example.com\""]);
        assert_eq!(
            merge(Some("from=\"*.corp.example.com\""), &named)
                .unwrap()
                .as_deref(),
            Some("from=\"*.corp.example.com\"")
        );
        // IPv6 and a mixed family list.
        let v6 = group(&["from=\"fd00::/8,10.0.0.0/8\""]);
        assert_eq!(
            merge(Some("from=\"fd00:1::/32\""), &v6).unwrap().as_deref(),
            Some("from=\"fd00:1::/32\"")
        );
    }

    #[test]
    fn a_conflicting_command_is_an_error_and_an_identical_one_is_kept_once() {
        let forced = group(&["command=\"/usr/bin/rsync --server\""]);
        assert_eq!(
            merge(Some("command=\"/usr/bin/rsync --server\""), &forced)
                .unwrap()
                .as_deref(),
            Some("command=\"/usr/bin/rsync --server\"")
        );
        assert!(matches!(
            merge(Some("command=\"/bin/sh\""), &forced),
            Err(MergeError::Command { .. })
        ));
        // The merged line parses as sshd would read it: one command, quotes escaped.
        let quoted = group(&["command=\"echo \\\"hi\\\"\""]);
        let merged = merge(Some("no-pty"), &quoted).unwrap().unwrap();
        assert_eq!(merged, "no-pty,command=\"echo \\\"hi\\\"\"");
        assert_eq!(parse_options(&merged).unwrap().len(), 2);
    }

    #[test]
    fn group_options_may_only_take_away() {
        assert_eq!(group_option_problem("no-pty"), None);
        assert_eq!(group_option_problem("from=\"10.20.0.0/16\""), None);
        assert!(group_option_problem("pty").unwrap().contains("widen"));
        assert!(
            group_option_problem("permitopen=\"h:22\"")
                .unwrap()
                .contains("widen")
        );
        assert!(group_option_problem("no-such").is_some());
        assert!(
            group_option_problem("from=\"10.20.0.1/16\"")
                .unwrap()
                .contains("host bits")
        );
        assert!(group_option_problem("from=10.0.0.0/8").is_some());
    }
}
