//! The set-up most integration tests share: a throwaway Samba DC, an S3 server and a homes tree,
//! and a publisher deployment whose `keyhole.toml` reaches all three. Tests add what is theirs
//! (a policy, people's keys, a few settings) and keep the rest identical.

use std::collections::BTreeMap;

use super::homes::{Homes, Key};
use super::keyhole::{Deployment, Run, ldap_section};
use super::s3::S3Server;
use super::samba::{Fixture, SambaDc};

pub struct Stack {
    pub dc: SambaDc,
    pub s3: S3Server,
    pub homes: Homes,
    pub publisher: Deployment,
}

/// Lines a test adds to sections of the publisher's settings (each ends with a newline).
#[derive(Debug, Default, Clone, Copy)]
pub struct Extra<'a> {
    /// Appended to `[ldap]`, e.g. `"member_range = 20\n"`.
    pub ldap: &'a str,
    /// Appended to `[safety]` (which always has this deployment's `lock_file`).
    pub safety: &'a str,
    /// Whole sections appended at the end, e.g. `[signing]`.
    pub sections: &'a str,
}

impl Stack {
    /// Starts the DC (with `fixture`) and S3, makes empty homes and writes `policy` and the
    /// default settings (prefix `ssh/`).
    pub fn start(fixture: &Fixture, policy: &str) -> Stack {
        let dc = SambaDc::start(fixture);
        let s3 = S3Server::start();
        let homes = Homes::new();
        let mut publisher = Deployment::new(&dc, policy);
        publisher.env.extend(s3.env());
        let stack = Stack {
            dc,
            s3,
            homes,
            publisher,
        };
        stack.write_settings(Extra::default());
        stack
    }

    /// Rewrites the publisher's settings: the defaults plus `extra`.
    pub fn write_settings(&self, extra: Extra<'_>) {
        let ldap = ldap_section(&self.dc, &self.dc.ldaps_url(), &self.dc.ca_file());
        self.publisher.write_settings(&format!(
            "{ldap}{}{}{}\n[safety]\nlock_file = \"{}\"\n{}{}",
            extra.ldap,
            self.s3.settings("ssh/"),
            self.homes.settings(),
            self.publisher.path("publish.lock").display(),
            extra.safety,
            extra.sections,
        ));
    }

    /// Gives each `(name, uid)` a fresh ed25519 key as their whole `authorized_keys`.
    pub fn give_keys(&self, people: &[(&'static str, u32)]) -> BTreeMap<&'static str, Key> {
        people
            .iter()
            .map(|&(name, uid)| {
                let key = self.homes.key(name, "ed25519");
                self.homes.write(name, uid, &format!("{}\n", key.line));
                (name, key)
            })
            .collect()
    }

    /// What is published (see `S3Server::published`): generation, groups with their users,
    /// keys and chains, and every key's owner and groups.
    pub fn manifest(&self) -> serde_json::Value {
        self.s3.published("ssh/").expect("a published index")
    }

    /// The published file of access group `group`.
    pub fn group_file(&self, group: &str) -> String {
        self.s3
            .group_file("ssh/", group)
            .unwrap_or_else(|| panic!("no object for access group {group}"))
    }

    /// Runs the publisher's keyhole.
    pub fn run(&self, args: &[&str]) -> Run {
        self.publisher.run(args)
    }
}
