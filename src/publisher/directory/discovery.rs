//! Which domain controllers to try, in which order: the `[ldap] url` list as written, then, with
//! `[ldap] srv = "<AD DNS domain>"`, the DCs AD registers in DNS as `_ldap._tcp.<domain>` SRV
//! records, ordered as RFC 2782 says (lowest priority first; within a priority, a weighted random
//! order, so the load spreads the way the domain's admins set it).
//!
//! AD registers `_ldap._tcp` with port 389, plain LDAP; keyhole reaches those hosts over LDAPS
//! on 636, the port AD serves LDAPS on, so the password never depends on StartTLS being offered.
//! A DNS failure is an error only when it leaves no DC at all: explicit URLs still work while DNS
//! is down.
//!
//! DCs are trusted only as AD's own (a security review's finding): whoever can spoof the SRV
//! answer chooses the hosts keyhole binds to, so an SRV target outside the `srv` domain (another
//! domain, a bare address) is dropped with a warning, and settings refuse `srv` without a
//! `ca_file` unless `trust_system_roots = true` says the DCs really carry public certificates.
//! With `dns_server`, the DCs' host names are resolved by that server too (AD's DNS knows its
//! DCs; the host's resolver may not), so keyhole can connect by name, which TLS and Kerberos
//! (`ldap/<host>`) both need.

use std::net::SocketAddr;

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;

use crate::settings::LdapSettings;

/// The port AD serves LDAPS on.
pub const LDAPS_PORT: u16 = 636;

/// One SRV answer, as far as ordering goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    /// Host name without the trailing dot.
    pub host: String,
}

/// DNS named no domain controller keyhole may use.
#[derive(Debug, thiserror::Error)]
#[error("finding the domain controllers of {domain} in DNS: {reason}")]
pub struct DiscoveryError {
    pub domain: String,
    pub reason: String,
}

/// The URLs to try, in order: `url` first, then the SRV targets (duplicates dropped).
pub async fn candidates(settings: &LdapSettings) -> Result<Vec<String>, DiscoveryError> {
    let mut urls = settings.urls.clone();
    if let Some(domain) = &settings.srv {
        match lookup(domain, settings).await {
            Ok(targets) => {
                let (inside, outside): (Vec<_>, Vec<_>) = targets
                    .into_iter()
                    .partition(|target| inside_domain(&target.host, domain));
                for target in &outside {
                    tracing::warn!(
                        domain,
                        target = %target.host,
                        "ignoring an SRV target outside the AD domain: only DCs inside it are trusted"
                    );
                }
                if inside.is_empty() && urls.is_empty() {
                    return Err(DiscoveryError {
                        domain: domain.clone(),
                        reason: format!(
                            "no SRV target is inside {domain} (_ldap._tcp.{domain} named only {}); keyhole binds only to DCs inside the AD domain",
                            outside
                                .iter()
                                .map(|t| t.host.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
                let ordered = order(inside, &mut random_below);
                tracing::info!(
                    domain,
                    dcs = ?ordered.iter().map(|t| t.host.as_str()).collect::<Vec<_>>(),
                    "found domain controllers in DNS"
                );
                for target in ordered {
                    let url = format!("ldaps://{}:{LDAPS_PORT}", target.host);
                    if !urls.contains(&url) {
                        urls.push(url);
                    }
                }
            }
            Err(reason) if !urls.is_empty() => {
                tracing::warn!(domain, "no DCs from DNS ({reason}); trying the listed URLs");
            }
            Err(reason) => {
                return Err(DiscoveryError {
                    domain: domain.clone(),
                    reason,
                });
            }
        }
    }
    Ok(urls)
}

/// Whether an SRV target names a host inside `domain` (the domain itself or below it). An address
/// is never inside: AD registers its DCs by name.
pub fn inside_domain(host: &str, domain: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_ok() || domain.is_empty() {
        return false;
    }
    host == domain || host.ends_with(&format!(".{domain}"))
}

/// With `dns_server`: the address `dns_server` gives `host` (IPv4 first), so the connection goes
/// where AD's DNS says while TLS and Kerberos still see the name. `None`: let the system
/// resolve it (no `dns_server`, or `host` is an address already).
pub async fn address_of(
    host: &str,
    port: u16,
    settings: &LdapSettings,
) -> Result<Option<SocketAddr>, String> {
    let Some(server) = settings.dns_server else {
        return Ok(None);
    };
    if host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok()
    {
        return Ok(None);
    }
    let resolver = with_server(server, settings);
    let name = format!("{}.", host.trim_end_matches('.'));
    let answer = tokio::time::timeout(settings.timeout, resolver.lookup_ip(name.as_str()))
        .await
        .map_err(|_| {
            format!(
                "no answer from {server} for {host} within {:?}",
                settings.timeout
            )
        })?
        .map_err(|error| format!("looking up {host} at {server}: {error}"))?;
    let mut addresses: Vec<std::net::IpAddr> = answer.iter().collect();
    addresses.sort_by_key(|address| !address.is_ipv4());
    addresses
        .first()
        .map(|address| Some(SocketAddr::new(*address, port)))
        .ok_or_else(|| format!("{server} has no address for {host}"))
}

async fn lookup(domain: &str, settings: &LdapSettings) -> Result<Vec<SrvTarget>, String> {
    let resolver = match settings.dns_server {
        Some(server) => with_server(server, settings),
        None => Resolver::builder_tokio()
            .map_err(|error| format!("reading the system's DNS settings: {error}"))?
            .build(),
    };
    let name = format!("_ldap._tcp.{domain}.");
    let answer = tokio::time::timeout(settings.timeout, resolver.srv_lookup(name.as_str()))
        .await
        .map_err(|_| format!("no DNS answer for {name} within {:?}", settings.timeout))?
        .map_err(|error| format!("looking up {name}: {error}"))?;
    let targets: Vec<SrvTarget> = answer
        .iter()
        .map(|srv| SrvTarget {
            priority: srv.priority(),
            weight: srv.weight(),
            host: srv.target().to_utf8().trim_end_matches('.').to_owned(),
        })
        // RFC 2782: a target of "." means the service is decidedly not available there.
        .filter(|target| !target.host.is_empty())
        .collect();
    if targets.is_empty() {
        return Err(format!("{name} has no SRV records naming a host"));
    }
    Ok(targets)
}

fn with_server(server: SocketAddr, settings: &LdapSettings) -> Resolver<TokioConnectionProvider> {
    let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
    let mut options = ResolverOpts::default();
    options.timeout = settings.timeout;
    Resolver::builder_with_config(
        ResolverConfig::from_parts(None, Vec::new(), servers),
        TokioConnectionProvider::default(),
    )
    .with_options(options)
    .build()
}

/// RFC 2782 order: by priority; within one, repeatedly pick a record with probability
/// proportional to its weight (weight 0 records get a small chance, placed first as the RFC
/// says). `below(n)` returns a number in `0..n`; tests pass a fixed sequence.
pub fn order(mut targets: Vec<SrvTarget>, below: &mut dyn FnMut(u32) -> u32) -> Vec<SrvTarget> {
    targets.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.weight.cmp(&b.weight)));
    let mut ordered = Vec::with_capacity(targets.len());
    while !targets.is_empty() {
        let priority = targets[0].priority;
        let end = targets
            .iter()
            .position(|t| t.priority != priority)
            .unwrap_or(targets.len());
        let mut same: Vec<SrvTarget> = targets.drain(..end).collect();
        while !same.is_empty() {
            let total: u32 = same.iter().map(|t| u32::from(t.weight)).sum();
            let pick = below(total.saturating_add(1));
            let mut running = 0u32;
            let index = same
                .iter()
                .position(|t| {
                    running += u32::from(t.weight);
                    running >= pick
                })
                .unwrap_or(same.len() - 1);
            ordered.push(same.remove(index));
        }
    }
    ordered
}

/// A uniformly random number in `0..n` (`n > 0`), from the system's CSPRNG via ring (only the
/// load spread depends on it).
fn random_below(n: u32) -> u32 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0;
    }
    u32::from_le_bytes(bytes) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(priority: u16, weight: u16, host: &str) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            host: host.to_owned(),
        }
    }

    fn hosts(targets: &[SrvTarget]) -> Vec<&str> {
        targets.iter().map(|t| t.host.as_str()).collect()
    }

    #[test]
    fn only_hosts_inside_the_domain_are_inside_it() {
        let domain = "corp.example.com";
        assert!(inside_domain("dc1.corp.example.com", domain));
        assert!(inside_domain("DC1.Corp.Example.Com.", "corp.example.com."));
        assert!(inside_domain("dc9.site.corp.example.com", domain));
        assert!(inside_domain("corp.example.com", domain));
        assert!(!inside_domain("dc1.evil.example", domain));
        assert!(!inside_domain("dc1.corp.example.com.evil.example", domain));
        assert!(!inside_domain("evilcorp.example.com", domain));
        assert!(!inside_domain("127.0.0.2", domain));
        assert!(!inside_domain("dc1.corp.example.com", ""));
    }

    #[test]
    fn lower_priority_always_comes_first() {
        let targets = vec![
            target(10, 100, "backup"),
            target(0, 1, "primary-a"),
            target(0, 1, "primary-b"),
        ];
        for pick in [0, 1, 2] {
            let ordered = order(targets.clone(), &mut |_| pick);
            assert_eq!(ordered.last().unwrap().host, "backup");
            assert!(hosts(&ordered[..2]).contains(&"primary-a"));
        }
    }

    #[test]
    fn within_a_priority_the_weight_decides_how_often_a_dc_is_first() {
        let targets = vec![target(0, 90, "big"), target(0, 10, "small")];
        // The running sums are small=10, big=100: picks 0..=10 choose small, 11..=100 big.
        let ordered = order(targets.clone(), &mut |_| 50);
        assert_eq!(hosts(&ordered), ["big", "small"]);
        let ordered = order(targets.clone(), &mut |_| 5);
        assert_eq!(hosts(&ordered), ["small", "big"]);
        // Over every possible first pick, the 90-weight DC comes first 90 times in 101.
        let big_first = (0..=100)
            .filter(|&first| {
                let mut picks = [first, 0].into_iter();
                order(targets.clone(), &mut |_| picks.next().unwrap_or(0))[0].host == "big"
            })
            .count();
        assert_eq!(big_first, 90);
    }

    #[test]
    fn every_target_appears_once_even_with_zero_weights() {
        let targets = vec![target(0, 0, "a"), target(0, 0, "b"), target(1, 0, "c")];
        assert_eq!(hosts(&order(targets, &mut |n| n - 1)), ["a", "b", "c"]);
    }
}
