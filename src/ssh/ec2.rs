//! Finding the instance behind a TARGET with EC2 `DescribeInstances` (feature `ec2`), with the
//! client the canary builds (`canary::ec2::client`: the one TLS stack, `[ssh] region` and
//! `ec2_endpoint`). One call for an ID, an address or a private DNS name (a filter on
//! `private-ip-address` / `private-dns-name`), one for a `Name` tag (`tag:Name`), paginated.
//!
//! Terminated instances are never candidates. Several live instances behind one name is an
//! error that lists them (their IDs are what to type instead): connecting to one of them at
//! random would be a login to a host the engineer did not choose. A stopped or pending one is
//! named with its state, never connected to.

use anyhow::{Context, bail};
use aws_sdk_ec2::types::{Filter, Instance as Ec2Instance};

use super::{Instance, Lookup};
use crate::bucket::store::Timeouts;

/// DescribeInstances is asked by a person waiting at a prompt: a few seconds, a few attempts.
const TIMEOUTS: Timeouts = Timeouts {
    connect: std::time::Duration::from_secs(5),
    operation: std::time::Duration::from_secs(20),
    attempts: 3,
};

/// States an instance can be logged in to, or be started to log in to.
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// The client `keyhole ssh` asks.
pub async fn client(region: Option<&str>, endpoint: Option<&str>) -> aws_sdk_ec2::Client {
    crate::canary::ec2::client(region, endpoint, TIMEOUTS).await
}

/// The one running instance `lookup` names.
pub async fn resolve(client: &aws_sdk_ec2::Client, lookup: &Lookup) -> anyhow::Result<Instance> {
    let region = client
        .config()
        .region()
        .map_or_else(|| "us-east-1".to_owned(), ToString::to_string);
    let mut found = describe(client, lookup, &region).await?;
    if found.is_empty()
        && let Lookup::Name(name) = lookup
        && name.contains('.')
    {
        found = describe(client, &Lookup::DnsName(name.clone()), &region).await?;
    }
    choose(found, lookup, &region)
}

async fn describe(
    client: &aws_sdk_ec2::Client,
    lookup: &Lookup,
    region: &str,
) -> anyhow::Result<Vec<Instance>> {
    let live = Filter::builder()
        .name("instance-state-name")
        .set_values(Some(LIVE_STATES.map(str::to_owned).to_vec()))
        .build();
    let one = |name: &str, value: String| Filter::builder().name(name).values(value).build();
    let request = client.describe_instances().filters(live);
    let request = match lookup {
        Lookup::InstanceId(id) => request.instance_ids(id),
        Lookup::Address(address) => request.filters(one("private-ip-address", address.to_string())),
        Lookup::DnsName(name) => request.filters(one("private-dns-name", name.clone())),
        Lookup::Name(name) => request.filters(one("tag:Name", name.clone())),
    };
    let mut pages = request.into_paginator().send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            // An ID EC2 does not know is an answer, not a failure.
            Err(error)
                if matches!(lookup, Lookup::InstanceId(_))
                    && aws_sdk_ec2::error::ProvideErrorMetadata::code(&error)
                        .is_some_and(|code| code.starts_with("InvalidInstanceID")) =>
            {
                return Ok(Vec::new());
            }
            Err(error) => {
                return Err(anyhow::Error::new(error)).with_context(|| {
                    format!(
                        "DescribeInstances in {region} for the {} (needs ec2:DescribeInstances)",
                        lookup.describe()
                    )
                });
            }
        };
        for ec2 in page.reservations().iter().flat_map(|r| r.instances()) {
            found.extend(convert(ec2, region));
        }
    }
    Ok(found)
}

/// keyhole's view of an EC2 instance; `None` without an ID.
fn convert(ec2: &Ec2Instance, region: &str) -> Option<Instance> {
    let text = |value: Option<&str>| value.filter(|v| !v.is_empty()).map(str::to_owned);
    let tags: std::collections::BTreeMap<String, String> = ec2
        .tags()
        .iter()
        .filter_map(|tag| Some((tag.key()?.to_owned(), tag.value().unwrap_or("").to_owned())))
        .collect();
    Some(Instance {
        id: text(ec2.instance_id())?,
        name: tags.get("Name").cloned().filter(|name| !name.is_empty()),
        state: ec2
            .state()
            .and_then(|state| state.name())
            .map_or_else(|| "unknown".to_owned(), |name| name.as_str().to_owned()),
        private_ip: text(ec2.private_ip_address()),
        private_dns_name: text(ec2.private_dns_name()),
        zone: text(ec2.placement().and_then(|p| p.availability_zone())),
        vpc: text(ec2.vpc_id()),
        region: region.to_owned(),
        tags,
    })
}

/// The one running instance among `found`, or an error that says what was found instead.
fn choose(mut found: Vec<Instance>, lookup: &Lookup, region: &str) -> anyhow::Result<Instance> {
    found.sort_by(|a, b| a.id.cmp(&b.id));
    let running: Vec<&Instance> = found.iter().filter(|i| i.state == "running").collect();
    match (running.as_slice(), found.as_slice()) {
        ([one], _) => Ok((*one).clone()),
        ([], []) => bail!(
            "no instance has the {} in {region} (terminated instances are not looked at; another region? set [ssh] region or --region)",
            lookup.describe()
        ),
        ([], [one]) => bail!(
            "{} is {}: start it before logging in",
            one.label(),
            one.state
        ),
        (several, _) => {
            let listed: Vec<String> = if several.is_empty() {
                found
                    .iter()
                    .map(|i| format!("{} ({})", i.id, i.state))
                    .collect()
            } else {
                several
                    .iter()
                    .map(|i| {
                        format!(
                            "{} ({}, {})",
                            i.id,
                            i.zone.as_deref().unwrap_or("no zone"),
                            i.private_ip.as_deref().unwrap_or("no address")
                        )
                    })
                    .collect()
            };
            bail!(
                "{} instances have the {} in {region}: {}. Give the instance ID",
                listed.len(),
                lookup.describe(),
                listed.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{InstanceState, InstanceStateName, Placement, Tag};

    fn ec2(id: &str, state: InstanceStateName, name: &str) -> Ec2Instance {
        Ec2Instance::builder()
            .instance_id(id)
            .state(InstanceState::builder().name(state).build())
            .private_ip_address("10.0.1.5")
            .placement(Placement::builder().availability_zone("eu-west-1a").build())
            .vpc_id("vpc-0abc")
            .tags(Tag::builder().key("Name").value(name).build())
            .tags(
                Tag::builder()
                    .key("keyhole-login-user")
                    .value("ubuntu")
                    .build(),
            )
            .build()
    }

    #[test]
    fn an_instance_is_converted_with_its_tags_and_place() {
        let instance = convert(
            &ec2("i-1", InstanceStateName::Running, "web-1"),
            "eu-west-1",
        )
        .unwrap();
        assert_eq!(instance.name.as_deref(), Some("web-1"));
        assert_eq!(instance.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(instance.state, "running");
        assert_eq!(instance.tags["keyhole-login-user"], "ubuntu");
        assert_eq!(convert(&Ec2Instance::builder().build(), "eu-west-1"), None);
    }

    #[test]
    fn one_running_instance_is_chosen_and_anything_else_is_explained() {
        let lookup = Lookup::Name("web-1".into());
        let convert = |id, state| convert(&ec2(id, state, "web-1"), "eu-west-1").unwrap();
        let running = convert("i-1", InstanceStateName::Running);
        let stopped = convert("i-2", InstanceStateName::Stopped);
        let chosen = choose(vec![stopped.clone(), running.clone()], &lookup, "eu-west-1").unwrap();
        assert_eq!(chosen.id, "i-1");
        let error = choose(vec![stopped.clone()], &lookup, "eu-west-1").unwrap_err();
        assert_eq!(
            error.to_string(),
            "web-1 (i-2) is stopped: start it before logging in"
        );
        let error = choose(Vec::new(), &lookup, "eu-west-1").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("no instance has the Name tag \"web-1\" in eu-west-1")
        );
        let other = convert("i-3", InstanceStateName::Running);
        let error = choose(vec![other, running], &lookup, "eu-west-1").unwrap_err();
        assert_eq!(
            error.to_string(),
            "2 instances have the Name tag \"web-1\" in eu-west-1: i-1 (eu-west-1a, 10.0.1.5), i-3 (eu-west-1a, 10.0.1.5). Give the instance ID"
        );
    }
}
