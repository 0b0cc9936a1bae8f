//! DCs found through DNS are trusted only as AD's own (a security review's finding): with
//! `[ldap] srv`, an SRV target outside the AD domain is never asked, whatever its priority, and
//! `srv` needs the DCs' own CA (`ca_file`) unless `trust_system_roots = true` says otherwise.
//! Whoever can spoof the SRV answer would otherwise receive the bind password and decide group
//! membership with any publicly trusted certificate.
//!
//! A real DNS server (dnsmasq) serves the SRV and A records, a real Samba DC (with a certificate
//! naming `dc1.corp.example.com`) answers; /etc/hosts is never touched.

use std::net::Ipv4Addr;

use crate::support::dns::Dns;
use crate::support::homes::Homes;
use crate::support::keyhole::Deployment;
use crate::support::s3::S3Server;
use crate::support::samba::{Fixture, SambaDc, UserSpec};

const POLICY: &str = r#"
[access_groups.web-prod]
groups = ["Web Team"]
"#;

fn company() -> Fixture {
    Fixture::new()
        .user(UserSpec::unix("bob", 20002, "/home/bob"))
        .group("Web Team", &["bob"])
}

/// `[ldap]` with a simple bind as the service account, DCs from `srv` via `dns`, and `tls` (the
/// trust lines: `ca_file = ...` or `trust_system_roots = true` or nothing).
fn ldap_settings(dc: &SambaDc, dns: &Dns, tls: &str) -> String {
    format!(
        r#"policy = "access-groups.toml"

[ldap]
srv = "corp.example.com"
dns_server = "{dns}"
bind_dn = "{bind_dn}"
password_file = "{password_file}"
base_dn = "{base_dn}"
timeout = "5s"
{tls}
"#,
        dns = dns.address,
        bind_dn = dc.service_bind_dn(),
        password_file = dc.service_password_file().display(),
        base_dn = dc.base_dn(),
    )
}

#[test]
fn srv_asks_dcs_inside_the_domain_in_priority_order_and_never_one_outside_it() {
    let dc = SambaDc::start_with_kdc(&company());
    let s3 = S3Server::start();
    let homes = Homes::new();
    let key = homes.key("bob", "ed25519");
    homes.write("bob", 20002, &format!("{}\n", key.line));
    let mut publisher = Deployment::new(&dc, POLICY);
    publisher.env.extend(s3.env());
    // Priority 0: outside the domain (a name that resolves to the real DC, and a bare address);
    // priority 5: inside, but nothing listens there; priority 10: the real DC.
    let dns = Dns::start(
        "corp.example.com",
        &[
            (0, 100, "dc1.evil.example"),
            (0, 100, "127.0.0.9"),
            (5, 100, "dc0.corp.example.com"),
            (10, 100, "dc1.corp.example.com"),
        ],
        &[
            ("dc1.evil.example", dc.address()),
            ("dc0.corp.example.com", Ipv4Addr::new(127, 0, 0, 254)),
            ("dc1.corp.example.com", dc.address()),
        ],
    );
    let ca = format!("ca_file = \"{}\"", dc.ca_file().display());
    publisher.write_settings(&format!(
        "{}{}{}\n[safety]\nlock_file = \"{}\"\n",
        ldap_settings(&dc, &dns, &ca),
        s3.settings("ssh/"),
        homes.settings(),
        publisher.path("publish.lock").display()
    ));
    let run = publisher.run(&["publish"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(s3.holds(&key.line));
    for outside in ["dc1.evil.example", "127.0.0.9"] {
        assert!(
            run.stderr
                .lines()
                .any(|line| line.contains("ignoring an SRV target outside")
                    && line.contains(outside)),
            "{outside} not ignored:\n{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains(&format!("ldaps://{outside}")),
            "{outside} was asked:\n{}",
            run.stderr
        );
    }
    let found = run
        .stderr
        .lines()
        .find(|line| line.contains("found domain controllers in DNS"))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let first = found
        .find("dc0.corp.example.com")
        .expect("the priority 5 DC");
    let second = found
        .find("dc1.corp.example.com")
        .expect("the priority 10 DC");
    assert!(first < second, "priority order: {found}");
    assert!(
        run.stderr
            .lines()
            .any(|line| line.contains("ldaps://dc0.corp.example.com:636")
                && line.contains("trying the next")),
        "{}",
        run.stderr
    );

    // Only targets outside the domain: nothing to ask, and the error says why.
    let outside_only = Dns::start(
        "corp.example.com",
        &[(0, 100, "dc1.evil.example")],
        &[("dc1.evil.example", dc.address())],
    );
    publisher.write_settings(&ldap_settings(&dc, &outside_only, &ca));
    let refused = publisher.run(&["check-bind"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("no SRV target is inside corp.example.com"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("ldaps://dc1.evil.example"),
        "{}",
        refused.stderr
    );
}

#[test]
fn srv_needs_the_dcs_own_ca_unless_system_roots_are_trusted_explicitly() {
    let dc = SambaDc::start_with_kdc(&company());
    let dns = Dns::start(
        "corp.example.com",
        &[(0, 100, "dc1.corp.example.com")],
        &[("dc1.corp.example.com", dc.address())],
    );
    let publisher = Deployment::new(&dc, POLICY);

    // No ca_file: a configuration error (78) naming the key and the way out, before any DNS.
    publisher.write_settings(&ldap_settings(&dc, &dns, ""));
    let invalid = publisher.run(&["check-bind"]);
    assert_eq!(invalid.code, 78, "{invalid:#?}");
    assert!(
        invalid.stderr.contains("ldap.srv: needs ca_file"),
        "{invalid:#?}"
    );
    assert!(
        invalid.stderr.contains("trust_system_roots = true"),
        "{invalid:#?}"
    );

    // Said explicitly: allowed, and the DC's private CA is then (rightly) not trusted.
    publisher.write_settings(&ldap_settings(&dc, &dns, "trust_system_roots = true"));
    let untrusted = publisher.run(&["check-bind"]);
    assert_eq!(untrusted.code, 1, "{untrusted:#?}");
    assert!(
        untrusted.stderr.contains("UnknownIssuer"),
        "{}",
        untrusted.stderr
    );

    // With the DCs' own CA: bound, and AD says who keyhole is.
    let ca = format!("ca_file = \"{}\"", dc.ca_file().display());
    publisher.write_settings(&ldap_settings(&dc, &dns, &ca));
    let bound = publisher.run(&["check-bind"]);
    assert_eq!(bound.code, 0, "{bound:#?}");
    assert!(
        bound
            .stdout
            .contains("bound to ldaps://dc1.corp.example.com:636 (simple bind); AD sees"),
        "{bound:#?}"
    );
    assert!(bound.stdout.contains("svc-keyhole"), "{bound:#?}");
}
