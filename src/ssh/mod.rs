//! `keyhole ssh`: the engineer's side. Given `[USER@]TARGET` (an instance ID, a `Name` tag, a
//! private DNS name or an address), find the instance with EC2 `DescribeInstances`
//! ([`ec2`], `ec2` feature), choose the bastion of its zone ([`bastion`]), its login user
//! ([`LoginUser`]), check that an SSH agent holds keys ([`agent`]), and run the system `ssh`
//! with `-J bastion` ([`connect`]). When the instance refuses the keys, or on `--explain`,
//! [`explain`] reads the signed index and says in plain words why: which access groups the
//! instance has, which of the agent's keys are published and for whom, and which AD groups or
//! policy entries would grant access.
//!
//! It needs none of the publisher's credentials: `ec2:DescribeInstances`, read access to
//! `index.json` and the group objects, and the deployment's verify key (README, "For
//! engineers"). It never connects anywhere but the bastion (and, through it, the instance), and
//! it never handles a private key: ssh uses the agent, and the agent is not forwarded unless
//! `--forward-agent` asks.
//!
//! Without the `ec2` feature the command exists but cannot resolve instances, and says so (a
//! package built for instances leaves the EC2 SDK out; an engineer's build includes it).

use std::collections::BTreeMap;

use serde::Serialize;

pub mod agent;
pub mod bastion;
pub mod connect;
#[cfg(feature = "ec2")]
pub mod ec2;
pub mod explain;
pub mod target;

pub use target::{Lookup, Target, jump_host_problem, login_user_problem};

/// `[ssh] login_user` when the settings do not say: the user of Amazon Linux and RHEL AMIs.
pub const DEFAULT_LOGIN_USER: &str = "ec2-user";
/// `[ssh] login_user_tag` when the settings do not say.
pub const DEFAULT_LOGIN_USER_TAG: &str = "keyhole-login-user";

/// An EC2 instance, as `keyhole ssh` needs it: where it is and what its tags say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub id: String,
    /// The `Name` tag.
    pub name: Option<String>,
    /// `running`, `stopped`, …
    pub state: String,
    pub private_ip: Option<String>,
    pub private_dns_name: Option<String>,
    /// The availability zone (`eu-west-1a`).
    pub zone: Option<String>,
    pub vpc: Option<String>,
    /// The region it was found in (DescribeInstances is regional).
    pub region: String,
    #[serde(skip)]
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    /// `web-1 (i-0abc…)`, or the ID alone.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} ({})", self.id),
            None => self.id.clone(),
        }
    }
}

/// Who `keyhole ssh` logs in as, and what said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoginUser {
    pub name: String,
    /// `USER@ on the command line`, `tag keyhole-login-user`, `[ssh] login_user`.
    pub source: String,
}

impl LoginUser {
    /// `USER@` first, then the instance's login-user tag (when it holds a valid name), then the
    /// settings. A tag with an invalid name is ignored with a warning: whoever can tag an
    /// instance must not be able to smuggle an option into ssh's command line.
    pub fn choose(
        given: Option<&str>,
        instance: &Instance,
        tag: &str,
        configured: &str,
    ) -> LoginUser {
        if let Some(name) = given {
            return LoginUser {
                name: name.to_owned(),
                source: "USER@ on the command line".to_owned(),
            };
        }
        if let Some(value) = instance.tags.get(tag) {
            match login_user_problem(value) {
                None => {
                    return LoginUser {
                        name: value.clone(),
                        source: format!("the instance's tag {tag}"),
                    };
                }
                Some(problem) => tracing::warn!(
                    instance = %instance.id,
                    "ignoring the tag {tag}: {problem}"
                ),
            }
        }
        LoginUser {
            name: configured.to_owned(),
            source: "[ssh] login_user".to_owned(),
        }
    }
}

/// What a build without the `ec2` feature says to `keyhole ssh`.
const NO_EC2: &str = "this keyhole was built without the `ec2` feature, so it cannot look \
     instances up (DescribeInstances): install an engineer's build (`cargo install --locked \
     --path . --features ec2`, see docs/engineers.md)";

/// Whether this build can look instances up: an error saying how to get one that can.
pub fn require_ec2() -> anyhow::Result<()> {
    if cfg!(feature = "ec2") {
        Ok(())
    } else {
        Err(anyhow::anyhow!(NO_EC2))
    }
}

/// The running instance `lookup` names, found in `region` (else `[ssh] region`, else the AWS
/// chain's).
#[cfg(feature = "ec2")]
pub async fn find(
    settings: &crate::settings::SshSettings,
    region: Option<&str>,
    lookup: &Lookup,
) -> anyhow::Result<Instance> {
    let client = ec2::client(
        region.or(settings.region.as_deref()),
        settings.ec2_endpoint.as_deref(),
    )
    .await;
    ec2::resolve(&client, lookup).await
}

/// Without the `ec2` feature there is nothing to ask: see [`require_ec2`].
#[cfg(not(feature = "ec2"))]
pub async fn find(
    _settings: &crate::settings::SshSettings,
    _region: Option<&str>,
    _lookup: &Lookup,
) -> anyhow::Result<Instance> {
    Err(anyhow::anyhow!(NO_EC2))
}

#[cfg(test)]
pub(crate) fn test_instance(id: &str, zone: &str) -> Instance {
    Instance {
        id: id.to_owned(),
        name: Some("web-1".to_owned()),
        state: "running".to_owned(),
        private_ip: Some("10.0.1.5".to_owned()),
        private_dns_name: Some("ip-10-0-1-5.eu-west-1.compute.internal".to_owned()),
        zone: Some(zone.to_owned()),
        vpc: Some("vpc-0abc".to_owned()),
        region: "eu-west-1".to_owned(),
        tags: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_user_comes_from_the_command_line_then_the_tag_then_the_settings() {
        let mut instance = test_instance("i-0123456789abcdef0", "eu-west-1a");
        let choose = |given, instance: &Instance| {
            LoginUser::choose(given, instance, DEFAULT_LOGIN_USER_TAG, "ec2-user").name
        };
        assert_eq!(choose(None, &instance), "ec2-user");
        instance
            .tags
            .insert(DEFAULT_LOGIN_USER_TAG.into(), "ubuntu".into());
        assert_eq!(choose(None, &instance), "ubuntu");
        assert_eq!(choose(Some("admin"), &instance), "admin");
        // Whoever can tag the instance cannot hand ssh an option.
        instance
            .tags
            .insert(DEFAULT_LOGIN_USER_TAG.into(), "-oProxyCommand=id".into());
        assert_eq!(choose(None, &instance), "ec2-user");
    }
}
