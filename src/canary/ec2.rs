//! `--ec2-tag KEY[=VALUE]`: the hosts to probe are the running EC2 instances with that tag,
//! found with `DescribeInstances` (paginated; filters `tag:KEY` = VALUE, or `tag-key` = KEY, and
//! `instance-state-name` = running), on the same TLS stack as S3.
//!
//! An instance is probed at the address `[canary] ec2_address` names (its private IP unless
//! configured otherwise); one without that address (a public IP on a private subnet) is reported
//! and skipped, never silently dropped from the audit count.

use anyhow::Context;
use aws_sdk_ec2::types::{Filter, Instance};

use super::inventory::Target;
use crate::bucket::store::{Timeouts, aws_shared_config};
use crate::settings::{CanarySettings, Ec2Address};

/// `KEY` or `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSelector {
    pub key: String,
    pub value: Option<String>,
}

impl std::str::FromStr for TagSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (key, value) = match text.split_once('=') {
            Some((key, value)) => (key, Some(value.to_owned())),
            None => (text, None),
        };
        if key.is_empty() {
            return Err("the tag key is empty (KEY or KEY=VALUE)".to_owned());
        }
        Ok(TagSelector {
            key: key.to_owned(),
            value,
        })
    }
}

/// The running instances with `selector`'s tag, as probe targets, sorted by instance ID.
pub async fn discover(
    canary: &CanarySettings,
    s3_region: Option<&str>,
    selector: &TagSelector,
) -> anyhow::Result<Vec<Target>> {
    let client = client(
        canary.ec2_region.as_deref().or(s3_region),
        canary.ec2_endpoint.as_deref(),
        Timeouts::PUBLISHER,
    )
    .await;
    let tag = match &selector.value {
        Some(value) => Filter::builder()
            .name(format!("tag:{}", selector.key))
            .values(value)
            .build(),
        None => Filter::builder()
            .name("tag-key")
            .values(&selector.key)
            .build(),
    };
    let running = Filter::builder()
        .name("instance-state-name")
        .values("running")
        .build();
    let mut pages = client
        .describe_instances()
        .filters(tag)
        .filters(running)
        .into_paginator()
        .send();
    let mut targets = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.context("DescribeInstances (needs ec2:DescribeInstances)")?;
        for instance in page.reservations().iter().flat_map(|r| r.instances()) {
            let id = instance
                .instance_id()
                .unwrap_or("an instance without an ID");
            match address(instance, canary.ec2_address) {
                Some(host) => targets.push(Target {
                    name: format!("{id} {host}"),
                    host: host.to_owned(),
                    port: 22,
                    user: None,
                    via: canary.ec2_via.clone(),
                }),
                None => tracing::warn!(
                    instance = id,
                    "has no {:?} address: not probed",
                    canary.ec2_address
                ),
            }
        }
    }
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(targets)
}

/// An EC2 client on the one TLS stack of S3 (see `store::aws_shared_config`): in `region`, else
/// the AWS chain's (`AWS_REGION`, profile), else us-east-1 (the SDK refuses to sign without one);
/// at `endpoint` when given (moto in the tests). `keyhole ssh` builds its client here too.
pub async fn client(
    region: Option<&str>,
    endpoint: Option<&str>,
    timeouts: Timeouts,
) -> aws_sdk_ec2::Client {
    let shared = aws_shared_config(region, timeouts).await;
    let mut config = aws_sdk_ec2::config::Builder::from(&shared);
    if shared.region().is_none() {
        config = config.region(aws_config::Region::from_static("us-east-1"));
    }
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    aws_sdk_ec2::Client::from_conf(config.build())
}

fn address(instance: &Instance, which: Ec2Address) -> Option<&str> {
    let address = match which {
        Ec2Address::PrivateIp => instance.private_ip_address(),
        Ec2Address::PublicIp => instance.public_ip_address(),
        Ec2Address::PrivateDnsName => instance.private_dns_name(),
        Ec2Address::PublicDnsName => instance.public_dns_name(),
    };
    address.filter(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_is_a_key_or_a_key_and_value() {
        assert_eq!(
            "Team=web".parse::<TagSelector>().unwrap(),
            TagSelector {
                key: "Team".into(),
                value: Some("web".into())
            }
        );
        assert_eq!("Audited".parse::<TagSelector>().unwrap().value, None);
        assert!("=web".parse::<TagSelector>().is_err());
    }
}
