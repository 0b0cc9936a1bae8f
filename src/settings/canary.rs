//! `[canary]`: the audit canary (on the publisher: which key to ship; on the auditor: how to
//! probe, and how instances are found in EC2).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::Checker;

#[derive(Debug, Clone)]
pub struct CanarySettings {
    /// Holds `current` and `previous` (OpenSSH Ed25519 private keys) and their `.pub`.
    pub key_dir: PathBuf,
    /// Passed to ssh as `-F` after keyhole's own options (bastions' IdentityFile, aliases).
    pub ssh_config: Option<PathBuf>,
    /// The pinned host keys (`UserKnownHostsFile`); probes never accept an unknown host key.
    pub known_hosts: Option<PathBuf>,
    /// The instances' login user, logged in as by probes.
    pub login_user: String,
    /// Probes in flight at once (a bastion's sshd drops connections past `MaxStartups`).
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// `probe --ec2-tag`: where DescribeInstances goes (default: AWS's), in which region
    /// (default: `[s3] region`), which address of an instance is probed, and an optional
    /// bastion (ProxyJump) for every discovered instance.
    pub ec2_endpoint: Option<String>,
    pub ec2_region: Option<String>,
    pub ec2_address: Ec2Address,
    pub ec2_via: Option<String>,
}

/// Which address of a discovered instance a probe connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ec2Address {
    PrivateIp,
    PublicIp,
    PrivateDnsName,
    PublicDnsName,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCanary {
    key_dir: Option<String>,
    ssh_config: Option<String>,
    known_hosts: Option<String>,
    login_user: Option<String>,
    concurrency: Option<i64>,
    connect_timeout: Option<String>,
    ec2_endpoint: Option<String>,
    ec2_region: Option<String>,
    ec2_address: Option<String>,
    ec2_via: Option<String>,
}

/// `[canary]`: `None` when `key_dir` is missing (reported).
pub(super) fn validate(raw: RawCanary, check: &mut Checker) -> Option<CanarySettings> {
    const S: &str = "canary";
    let key_dir = check.required(S, "key_dir", raw.key_dir)?;
    let concurrency = raw.concurrency.unwrap_or(10);
    if concurrency < 1 {
        check.error(
            S,
            "concurrency",
            format!("must be at least 1, not {concurrency}"),
        );
    }
    let ec2_address = match raw.ec2_address.as_deref().unwrap_or("private_ip") {
        "private_ip" => Ec2Address::PrivateIp,
        "public_ip" => Ec2Address::PublicIp,
        "private_dns_name" => Ec2Address::PrivateDnsName,
        "public_dns_name" => Ec2Address::PublicDnsName,
        other => {
            check.error(
                S,
                "ec2_address",
                format!("must be private_ip, public_ip, private_dns_name or public_dns_name, not {other:?}"),
            );
            Ec2Address::PrivateIp
        }
    };
    Some(CanarySettings {
        key_dir: check.path(&key_dir),
        ssh_config: raw.ssh_config.as_deref().map(|p| check.path(p)),
        known_hosts: raw.known_hosts.as_deref().map(|p| check.path(p)),
        login_user: raw.login_user.unwrap_or_else(|| "ec2-user".to_owned()),
        concurrency: usize::try_from(concurrency).unwrap_or(1).max(1),
        connect_timeout: check.duration(S, "connect_timeout", raw.connect_timeout.as_deref(), "5s"),
        ec2_endpoint: raw.ec2_endpoint,
        ec2_region: raw.ec2_region,
        ec2_address,
        ec2_via: raw.ec2_via,
    })
}
