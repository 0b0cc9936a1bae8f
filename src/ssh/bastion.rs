//! Which bastion leads to an instance: `[ssh.bastions]` maps availability zones, VPC IDs and
//! regions to jump hosts. The instance's zone is looked up first (a bastion in the same zone
//! costs no cross-zone traffic and survives another zone's outage), then its VPC, then its
//! region by name, then any zone of its region (the alphabetically first, so the choice is the
//! same every time). Nothing matches: an error that names what was looked for and what the
//! settings offer; `keyhole ssh` never guesses a host to connect to.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Instance;

/// The jump host chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bastion {
    /// `[user@]host[:port]` or an ssh_config alias, as ProxyJump takes it.
    pub host: String,
    /// The `[ssh.bastions]` key that matched.
    pub key: String,
    /// `zone`, `vpc`, `region` or `zone of the region`.
    pub matched: &'static str,
}

/// Chooses the bastion for `instance`, or says why there is none.
pub fn choose(bastions: &BTreeMap<String, String>, instance: &Instance) -> Result<Bastion, String> {
    let exact = [
        ("zone", instance.zone.as_deref()),
        ("vpc", instance.vpc.as_deref()),
        ("region", Some(instance.region.as_str())),
    ];
    for (matched, key) in exact {
        if let Some(key) = key
            && let Some(host) = bastions.get(key)
        {
            return Ok(Bastion {
                host: host.clone(),
                key: key.to_owned(),
                matched,
            });
        }
    }
    if let Some((key, host)) = bastions
        .iter()
        .find(|(key, _)| is_zone_of(key, &instance.region))
    {
        return Ok(Bastion {
            host: host.clone(),
            key: key.clone(),
            matched: "zone of the region",
        });
    }
    let offered = if bastions.is_empty() {
        "[ssh.bastions] is empty".to_owned()
    } else {
        format!(
            "[ssh.bastions] names only {}",
            bastions.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    Err(format!(
        "no bastion leads to {} (zone {}, VPC {}, region {}): {offered}; add its zone, VPC or region",
        instance.label(),
        instance.zone.as_deref().unwrap_or("unknown"),
        instance.vpc.as_deref().unwrap_or("unknown"),
        instance.region,
    ))
}

/// Whether `key` names an availability zone of `region`: the region followed by a letter
/// (`eu-west-1a`) or by a dash (Local Zones, `us-west-2-lax-1a`); `us-east-10a` is not a zone of
/// `us-east-1`.
fn is_zone_of(key: &str, region: &str) -> bool {
    key.strip_prefix(region)
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_lowercase() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::test_instance;

    fn bastions(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_zone_wins_then_the_vpc_then_the_region() {
        let all = bastions(&[
            ("eu-west-1a", "jump-a"),
            ("eu-west-1b", "jump-b"),
            ("vpc-0abc", "jump-vpc"),
            ("eu-west-1", "jump-region"),
        ]);
        let in_b = test_instance("i-0123456789abcdef0", "eu-west-1b");
        assert_eq!(choose(&all, &in_b).unwrap().host, "jump-b");
        let in_c = test_instance("i-0123456789abcdef0", "eu-west-1c");
        let chosen = choose(&all, &in_c).unwrap();
        assert_eq!((chosen.host.as_str(), chosen.matched), ("jump-vpc", "vpc"));
        let mut other_vpc = in_c.clone();
        other_vpc.vpc = Some("vpc-0def".into());
        assert_eq!(choose(&all, &other_vpc).unwrap().host, "jump-region");
    }

    #[test]
    fn any_zone_of_the_region_comes_last_and_other_regions_never() {
        let zones = bastions(&[
            ("eu-west-10a", "jump-other-region"),
            ("eu-west-1b", "jump-b"),
            ("eu-west-1c", "jump-c"),
            ("us-east-1a", "jump-us"),
        ]);
        let in_a = test_instance("i-0123456789abcdef0", "eu-west-1a");
        let chosen = choose(&zones, &in_a).unwrap();
        assert_eq!(chosen.host, "jump-b");
        assert_eq!(chosen.matched, "zone of the region");

        let only_elsewhere = bastions(&[("us-east-1a", "jump-us"), ("eu-west-10a", "x")]);
        let error = choose(&only_elsewhere, &in_a).unwrap_err();
        assert!(
            error.contains("no bastion leads to web-1 (i-0123456789abcdef0)"),
            "{error}"
        );
        assert!(
            error.contains("zone eu-west-1a, VPC vpc-0abc, region eu-west-1"),
            "{error}"
        );
        assert!(
            error.contains("names only eu-west-10a, us-east-1a"),
            "{error}"
        );
        assert!(
            choose(&BTreeMap::new(), &in_a)
                .unwrap_err()
                .contains("is empty")
        );
    }
}
