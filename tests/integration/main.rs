//! keyhole's integration tests, one binary for all of them (each test binary used to compile
//! and link `support/` and keyhole anew). Organised by the side of the product a test drives:
//!
//! - `publisher`: policy, directory (Samba AD), homes, plan and publish, and their faults;
//! - `bucket`: what is in S3 and how it is trusted: the store, signatures, `verify`;
//! - `instance`: refresh, the login path through real sshd, IMDS, `doctor`;
//! - `canary`, `ssh`: the audit canary and `keyhole ssh`;
//! - `cli`: what every command shares (exit codes); `packaging`: the .deb/.rpm and the systemd
//!   units; `harness`: the test harness's own smoke tests.
//!
//! `support/` holds the throwaway servers (Samba DC, s3s-fs, sshd, moto, IMDS, DNS) and the fault
//! proxies every side uses. Run one side with `cargo test --test integration publisher::`, one
//! file with `cargo test --test integration publisher::faults::`.
//!
//! A new test file goes into the folder of the side it drives, with one `mod` line below (behind
//! `#[cfg(feature = "…")]` if it needs a feature), and reaches the helpers as `crate::support::…`
//! (no `mod support;` of its own). insta snapshots sit in `snapshots/` beside the file, named
//! `integration__<side>__<file>__<name>.snap`.

mod support;

mod publisher {
    mod check;
    mod diff;
    mod directory;
    mod enterprise_ad;
    mod faults;
    mod harvest;
    mod incremental_directory;
    mod incremental_homes;
    mod integrity;
    #[cfg(feature = "gssapi")]
    mod kerberos;
    mod ldap_faults;
    mod policy_features;
    mod promises;
    mod publish;
    mod revocation;
    mod scale;
    mod secrets;
    mod srv_trust;
}

mod bucket {
    mod signing;
    mod store;
    mod verify;
}

mod instance {
    mod canary_key;
    mod doctor;
    mod fleet;
    mod imds;
    mod outage_logins;
    mod paths;
    mod refresh;
    mod revocation_latency;
    mod revoked_keys;
    mod sshd;
    mod sshd_options;
    mod trust;
}

mod canary {
    mod audit;
}

mod ssh {
    #[cfg(feature = "ec2")]
    mod command;
}

mod cli {
    mod exit_codes;
    mod settings_errors;
}

mod packaging {
    mod package;
    mod systemd;
}

mod harness {
    mod samba;
}
