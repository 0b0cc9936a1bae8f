//! The settings' behaviour as operators meet it: defaults, environment overrides, and every
//! problem reported at its place in words.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ssh::engineer_path;
use super::*;

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Settings, Vec<String>> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Settings::from_text(Path::new("/etc/keyhole/keyhole.toml"), text, env)
        .map_err(|diagnostics| diagnostics.iter().map(ToString::to_string).collect())
}

const MINIMAL: &str = r#"
[ldap]
url = "ldaps://dc1.corp.example.com"
bind_dn = "CN=svc,DC=corp,DC=example,DC=com"
password_file = "ldap-password"
base_dn = "DC=corp,DC=example,DC=com"

[s3]
bucket = "keys"
prefix = "ssh"
"#;

#[test]
fn defaults_fill_what_the_file_leaves_out_and_paths_are_relative_to_it() {
    let settings = parse(MINIMAL, &[]).unwrap();
    let ldap = settings.ldap().unwrap();
    assert_eq!(ldap.timeout, Duration::from_secs(30));
    assert_eq!(ldap.page_size, 1000);
    assert!(
        matches!(&ldap.password, PasswordSource::File(p) if p == Path::new("/etc/keyhole/ldap-password"))
    );
    assert_eq!(
        settings.policy,
        Path::new("/etc/keyhole/access-groups.toml")
    );
    assert_eq!(settings.s3().unwrap().prefix, "ssh/");
    assert_eq!(settings.safety.max_removed_users, 20);
    assert_eq!(settings.keys.min_rsa_bits, 2048);
    assert!(settings.keys.forbidden_options.contains("environment"));
    assert!(settings.instance().is_err());
}

#[test]
fn integrity_settings_have_defaults_and_validity_is_bounded() {
    let settings = parse(MINIMAL, &[]).unwrap();
    assert_eq!(settings.homes.max_carry, Duration::from_secs(7 * 86_400));
    assert_eq!(
        settings.ldap().unwrap().lockout_retry,
        Duration::from_secs(600)
    );
    let overridden = parse(
        MINIMAL,
        &[
            ("KEYHOLE_HOMES_MAX_CARRY", "1d"),
            ("KEYHOLE_LDAP_LOCKOUT_RETRY", "1m"),
        ],
    )
    .unwrap();
    assert_eq!(overridden.homes.max_carry, Duration::from_secs(86_400));
    assert_eq!(
        overridden.ldap().unwrap().lockout_retry,
        Duration::from_secs(60)
    );
    let signing = |validity: &str| {
        parse(
            &format!(
                "{MINIMAL}
[signing]
key_file = \"k\"
validity = \"{validity}\"
"
            ),
            &[],
        )
    };
    assert!(signing("30d").is_ok());
    let errors = signing("31d").unwrap_err();
    assert!(
        errors[0].contains("signing.validity: must be at most 30days"),
        "{errors:?}"
    );
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    let errors = parse(
        &format!("{MINIMAL}\n[homes]\nroot = \"/nfs\"\nconcurency = 3\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("/etc/keyhole/keyhole.toml:14:1: error:"),
        "{errors:?}"
    );
    assert!(errors[0].contains("concurency"), "{errors:?}");
}

#[test]
fn every_validation_problem_is_reported_at_its_key() {
    let text = format!(
        "{MINIMAL}\n[homes]\nread_timeout = \"soon\"\nconcurrency = 0\n[safety]\nmax_removed_fraction = 2.0\n"
    );
    let errors = parse(&text, &[]).unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].contains(":13:1: error: homes.read_timeout: \"soon\" is not a duration"));
    assert!(errors[1].contains(":14:1: error: homes.concurrency: must be a positive number"));
    assert!(errors[2].contains(":16:1: error: safety.max_removed_fraction"));
}

#[test]
fn environment_overrides_win_and_are_typed() {
    let settings = parse(
        MINIMAL,
        &[
            ("KEYHOLE_S3_BUCKET", "12345"),
            ("KEYHOLE_LDAP_PAGE_SIZE", "200"),
            ("KEYHOLE_INSTANCE_LOGIN_USER", "ec2-user"),
            ("KEYHOLE_INSTANCE_ACCESS_GROUPS", "web-prod, db"),
            ("KEYHOLE_S3_FORCE_PATH_STYLE", "true"),
            ("HOME", "/root"),
        ],
    )
    .unwrap();
    assert_eq!(settings.s3().unwrap().bucket, "12345");
    assert!(settings.s3().unwrap().force_path_style);
    assert_eq!(settings.ldap().unwrap().page_size, 200);
    assert_eq!(
        settings.instance().unwrap().access_groups,
        ["web-prod", "db"]
    );
}

#[test]
fn instance_groups_may_come_from_ec2_and_tag_keys_are_checked() {
    let instance = "\n[instance]\nlogin_user = \"ec2-user\"\n";
    let settings = parse(
        &format!("{MINIMAL}{instance}access_groups_tag = \"keyhole-access-groups\"\n"),
        &[],
    )
    .unwrap();
    let instance_settings = settings.instance().unwrap();
    assert!(instance_settings.access_groups.is_empty());
    assert_eq!(
        instance_settings.imds,
        Some(ImdsGroups {
            tag: Some("keyhole-access-groups".into()),
            user_data: false,
            endpoint: DEFAULT_IMDS_ENDPOINT.into(),
        })
    );
    // No source at all; a tag key IMDS cannot serve; an endpoint with nothing to read.
    let errors = parse(&format!("{MINIMAL}{instance}"), &[]).unwrap_err();
    assert!(errors[0].contains("access_groups_tag"), "{errors:?}");
    let errors = parse(
        &format!("{MINIMAL}{instance}access_groups_tag = \"team/name\"\n"),
        &[],
    )
    .unwrap_err();
    assert!(errors[0].contains("without spaces or '/'"), "{errors:?}");
    let errors = parse(
        &format!(
            "{MINIMAL}{instance}access_groups = [\"a\"]\nimds_endpoint = \"http://127.0.0.1:1\"\n"
        ),
        &[],
    )
    .unwrap_err();
    assert!(
        errors[0].contains("imds_endpoint: is used only"),
        "{errors:?}"
    );
    let settings = parse(
        &format!("{MINIMAL}{instance}"),
        &[("KEYHOLE_INSTANCE_ACCESS_GROUPS_USER_DATA", "true")],
    )
    .unwrap();
    assert!(
        settings
            .instance()
            .unwrap()
            .imds
            .as_ref()
            .unwrap()
            .user_data
    );
}

#[test]
fn a_misspelt_override_is_an_error_with_a_hint() {
    let errors = parse(MINIMAL, &[("KEYHOLE_S3_BUKET", "x")]).unwrap_err();
    assert_eq!(
        errors,
        [
            "environment variable KEYHOLE_S3_BUKET:0:0: error: not a keyhole setting; did you mean KEYHOLE_S3_BUCKET?"
        ]
    );
    // A variable outside keyhole's sections belongs to someone else.
    parse(MINIMAL, &[("KEYHOLE_DEMO_DIR", "/tmp/demo")]).unwrap();
    let errors = parse(MINIMAL, &[("KEYHOLE_LDAP_PAGE_SIZE", "many")]).unwrap_err();
    assert!(
        errors[0].contains("\"many\" is not a whole number"),
        "{errors:?}"
    );
}

#[test]
fn the_password_comes_from_the_environment_and_never_shows_in_debug() {
    let text = MINIMAL.replace("password_file = \"ldap-password\"\n", "");
    let errors = parse(&text, &[]).unwrap_err();
    assert!(errors[0].contains("ldap.password_file: is required (or set KEYHOLE_LDAP_PASSWORD)"));
    let settings = parse(&text, &[(PASSWORD_ENV, "hunter2")]).unwrap();
    let ldap = settings.ldap().unwrap();
    assert_eq!(ldap.password.read().unwrap().expose(), "hunter2");
    assert!(!format!("{settings:?}").contains("hunter2"));
}

#[test]
fn plain_ldap_urls_are_accepted_only_as_starttls_and_other_schemes_rejected() {
    let errors = parse(&MINIMAL.replace("ldaps://", "http://"), &[]).unwrap_err();
    assert!(
        errors[0].contains("must start with ldaps:// or ldap://"),
        "{errors:?}"
    );
}

#[test]
fn several_dcs_srv_and_the_bind_state_file() {
    let one = parse(MINIMAL, &[]).unwrap();
    let ldap = one.ldap().unwrap();
    assert_eq!(ldap.urls, ["ldaps://dc1.corp.example.com"]);
    assert_eq!(
        ldap.bind_state_file,
        Path::new("/run/keyhole/ldap-bind-refused.json")
    );
    let text = MINIMAL.replace(
        "url = \"ldaps://dc1.corp.example.com\"",
        "url = [\"ldaps://dc1\", \"ldap://dc2:389\"]\nsrv = \"corp.example.com.\"\ndns_server = \"127.0.0.1:5353\"\nca_file = \"ad-ca.pem\"",
    );
    let text = format!("{text}\n[safety]\nlock_file = \"state/publish.lock\"\n");
    let many = parse(&text, &[]).unwrap();
    let ldap = many.ldap().unwrap();
    assert_eq!(ldap.urls, ["ldaps://dc1", "ldap://dc2:389"]);
    assert_eq!(ldap.srv.as_deref(), Some("corp.example.com"));
    assert_eq!(ldap.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
    assert_eq!(
        ldap.bind_state_file,
        Path::new("/etc/keyhole/state/ldap-bind-refused.json")
    );
    // A list from the environment, comma-separated.
    let env = parse(MINIMAL, &[("KEYHOLE_LDAP_URL", "ldaps://a, ldaps://b")]).unwrap();
    assert_eq!(env.ldap().unwrap().urls, ["ldaps://a", "ldaps://b"]);
    // Neither url nor srv; a bad URL in a list; a bad DNS server.
    let errors = parse(
        &MINIMAL.replace("url = \"ldaps://dc1.corp.example.com\"", "url = []"),
        &[],
    )
    .unwrap_err();
    assert!(errors[0].contains("ldap.url: is required"), "{errors:?}");
    let errors = parse(
        &MINIMAL.replace(
            "url = \"ldaps://dc1.corp.example.com\"",
            "url = [\"ldaps://a\", \"http://b\"]\ndns_server = \"dns.corp\"",
        ),
        &[],
    )
    .unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("\"http://b\" must start with ldaps://"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("ldap.dns_server: \"dns.corp\" is not an IP"),
        "{errors:?}"
    );
}

#[test]
fn gssapi_needs_no_password_and_refuses_one_and_srv_needs_the_dcs_own_ca() {
    let simple = parse(MINIMAL, &[]).unwrap();
    assert_eq!(simple.ldap().unwrap().auth, LdapAuth::Simple);
    let kerberos = MINIMAL
        .replace("bind_dn = \"CN=svc,DC=corp,DC=example,DC=com\"\n", "")
        .replace(
            "password_file = \"ldap-password\"\n",
            "auth = \"gssapi\"\nkeytab = \"keyhole.keytab\"\nprincipal = \"svc@CORP.EXAMPLE.COM\"\nkrb5_conf = \"/etc/keyhole/krb5.conf\"\n",
        );
    let settings = parse(&kerberos, &[]).unwrap();
    assert_eq!(
        settings.ldap().unwrap().auth,
        LdapAuth::Gssapi(KerberosSettings {
            keytab: Some(PathBuf::from("/etc/keyhole/keyhole.keytab")),
            principal: Some("svc@CORP.EXAMPLE.COM".into()),
            krb5_conf: Some(PathBuf::from("/etc/keyhole/krb5.conf")),
        })
    );
    // The password variable is not needed, and a leftover password_file is refused.
    let errors = parse(
        &kerberos.replace("auth = ", "password_file = \"p\"\nauth = "),
        &[],
    )
    .unwrap_err();
    assert!(
        errors[0].contains("ldap.password_file: is not used with auth = \"gssapi\""),
        "{errors:?}"
    );
    // Kerberos needs host names; an unknown method is named.
    let errors = parse(
        &kerberos.replace("ldaps://dc1.corp.example.com", "ldaps://10.0.0.5:636"),
        &[],
    )
    .unwrap_err();
    assert!(
        errors[0].contains("name the DC by its host name"),
        "{errors:?}"
    );
    let errors = parse(&kerberos, &[("KEYHOLE_LDAP_AUTH", "ntlm")]).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"ntlm\" is neither \"simple\" nor \"gssapi\"")),
        "{errors:?}"
    );
    // Kerberos keys with a simple bind: said, not fatal.
    parse(
        &MINIMAL.replace("base_dn =", "keytab = \"k.keytab\"\nbase_dn ="),
        &[],
    )
    .unwrap();

    // srv: only with the DCs' own CA, or system roots said explicitly.
    let srv = MINIMAL.replace(
        "url = \"ldaps://dc1.corp.example.com\"",
        "srv = \"corp.example.com\"",
    );
    let errors = parse(&srv, &[]).unwrap_err();
    assert!(errors[0].contains("ldap.srv: needs ca_file"), "{errors:?}");
    assert!(
        errors[0].contains("trust_system_roots = true"),
        "{errors:?}"
    );
    let roots = parse(
        &srv.replace("base_dn =", "trust_system_roots = true\nbase_dn ="),
        &[],
    )
    .unwrap();
    assert!(roots.ldap().unwrap().trust_system_roots);
    parse(
        &srv.replace("base_dn =", "ca_file = \"ad-ca.pem\"\nbase_dn ="),
        &[],
    )
    .unwrap();
    let errors = parse(
        &srv.replace(
            "base_dn =",
            "ca_file = \"ad-ca.pem\"\ntrust_system_roots = true\nbase_dn =",
        ),
        &[],
    )
    .unwrap_err();
    assert!(
        errors[0].contains("cannot be used with ca_file"),
        "{errors:?}"
    );
}

#[test]
fn homes_owner_is_uid_number_by_default_or_nss_with_a_suffix() {
    assert_eq!(
        parse(MINIMAL, &[]).unwrap().homes.owner,
        OwnerSource::UidNumber
    );
    let nss = parse(
        &format!("{MINIMAL}\n[homes]\nowner = \"nss\"\nnss_suffix = \"@corp.example.com\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        nss.homes.owner,
        OwnerSource::Nss {
            suffix: "@corp.example.com".into()
        }
    );
    let errors = parse(&format!("{MINIMAL}\n[homes]\nowner = \"sid\"\n"), &[]).unwrap_err();
    assert!(
        errors[0].contains("homes.owner: \"sid\" is neither \"uid_number\" nor \"nss\""),
        "{errors:?}"
    );
}

#[test]
fn the_env_table_matches_the_raw_structs_and_the_example_file() {
    let example = include_str!("../../keyhole.example.toml");
    let table: toml::Table = toml::from_str(example).unwrap();
    for (section, key, _) in schema::KEYS {
        let present = if section.is_empty() {
            table.contains_key(*key)
        } else {
            table
                .get(*section)
                .and_then(|s| s.as_table())
                .is_some_and(|s| s.contains_key(*key))
        };
        assert!(
            present,
            "keyhole.example.toml does not document {section}.{key}"
        );
    }
    parse(example, &[]).unwrap();
}

#[test]
fn ssh_settings_have_defaults_and_checked_bastions() {
    let settings = parse(
        &format!(
            "{MINIMAL}\n[ssh]\nregion = \"eu-west-1\"\n[ssh.bastions]\n\"eu-west-1a\" = \"ops@jump-a:2222\"\n\"vpc-0abc\" = \"jump-vpc\"\n"
        ),
        &[],
    )
    .unwrap();
    let ssh = settings.ssh().unwrap();
    assert_eq!(ssh.login_user, "ec2-user");
    assert_eq!(ssh.login_user_tag, "keyhole-login-user");
    assert_eq!(ssh.access_groups_tag, "keyhole-access-groups");
    assert_eq!(ssh.region.as_deref(), Some("eu-west-1"));
    assert_eq!(ssh.bastions["eu-west-1a"], "ops@jump-a:2222");
    // An option smuggled in as a bastion, a zone that is no zone, a user ssh would refuse.
    let errors = parse(
        &format!(
            "{MINIMAL}\n[ssh]\nlogin_user = \"root;id\"\n[ssh.bastions]\n\"eu-west-1a\" = \"-oProxyCommand=id\"\n\"EU West\" = \"jump\"\n"
        ),
        &[],
    )
    .unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"EU West\" is not an availability zone")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("-oProxyCommand=id")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("ssh.login_user")),
        "{errors:?}"
    );
}

#[test]
fn an_engineer_without_etc_keyhole_reads_their_own_file() {
    let home = Some(PathBuf::from("/home/bob"));
    assert_eq!(
        engineer_path(None, false, None, home.clone()),
        Path::new("/home/bob/.config/keyhole/keyhole.toml")
    );
    assert_eq!(
        engineer_path(None, false, Some("/xdg".into()), home.clone()),
        Path::new("/xdg/keyhole/keyhole.toml")
    );
    assert_eq!(
        engineer_path(None, false, Some("relative".into()), home.clone()),
        Path::new("/home/bob/.config/keyhole/keyhole.toml")
    );
    assert_eq!(
        engineer_path(None, true, None, home.clone()),
        Path::new(DEFAULT_PATH)
    );
    assert_eq!(
        engineer_path(Some("/etc/other.toml".into()), false, None, home),
        Path::new("/etc/other.toml")
    );
}

// ---- How problems read: every one at once, at its place, in words. ----

/// One file with a problem of every family the schema checks, each on its own line.
const EVERY_PROBLEM: &str = r#"[ldap]
url = 5
bind_dn = "CN=svc,DC=corp,DC=example,DC=com"
password_file = "ldap-password"
base_dn = "DC=corp,DC=example,DC=com"
page_size = "big"
timeout = 30
member_range = "1500"

[homes]
concurency = 3
lock_file = "/run/keyhole/publish.lock"
read_timeout = "5 fortnights"

[s3]
prefix = "ssh"
force_path_style = "true"

[keys]
allowed_types = "ssh-ed25519"
max_keys_per_user = 99999999999
forbidden_options = ["agent-forwarding", 7]

[safety]
max_removed_fraction = "0.5"

[instnce]
login_user = "ec2-user"

[signing]
validity = "1d"
"#;

#[test]
fn every_problem_is_reported_at_once_at_its_place_in_words() {
    let errors = parse(EVERY_PROBLEM, &[]).unwrap_err();
    insta::assert_snapshot!("every_problem", errors.join("\n"));
    // Each line of the file above that holds a mistake has its problem, and no other.
    assert_eq!(errors.len(), 15, "{errors:#?}");
    for parser_words in [
        "invalid type",
        "untagged",
        "OneOrMany",
        "i64",
        "expected a string",
        "unknown field",
    ] {
        assert!(
            errors.iter().all(|e| !e.contains(parser_words)),
            "{parser_words:?} in {errors:#?}"
        );
    }
    // A value reported as the wrong type is not reported again as missing.
    assert!(
        errors.iter().all(|e| !e.contains("ldap.url: is required")),
        "{errors:#?}"
    );
}

#[test]
fn a_wrong_type_points_at_the_value_and_says_what_belongs_there() {
    let errors = parse(
        &MINIMAL.replace("url = \"ldaps://dc1.corp.example.com\"", "url = 5"),
        &[],
    )
    .unwrap_err();
    assert_eq!(
        errors,
        [
            "/etc/keyhole/keyhole.toml:3:7: error: ldap.url: must be text in double quotes or a list of them, like \"ldaps://dc1.corp.example.com\" or [\"ldaps://dc1\", \"ldaps://dc2\"], not the number 5"
        ]
    );
    let errors = parse(&format!("{MINIMAL}\n[homes]\nconcurrency = \"big\"\n"), &[]).unwrap_err();
    assert_eq!(
        errors,
        [
            "/etc/keyhole/keyhole.toml:13:15: error: homes.concurrency: must be a whole number, not the text \"big\""
        ]
    );
}

#[test]
fn an_unknown_key_names_the_near_key_or_the_section_it_belongs_in() {
    let errors = parse(
        &format!("{MINIMAL}\n[homes]\nconcurency = 3\nbucket = \"b\"\nwhatever = 1\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].ends_with("homes.concurency: unknown key; did you mean concurrency?"),
        "{errors:#?}"
    );
    assert!(
        errors[1].ends_with("homes.bucket: is not a key of [homes]; it belongs in [s3]"),
        "{errors:#?}"
    );
    assert!(
        errors[2].contains("homes.whatever: unknown key; [homes] has root, home_prefix"),
        "{errors:#?}"
    );
    let errors = parse(&format!("{MINIMAL}\n[instnce]\nlogin_user = \"u\"\n"), &[]).unwrap_err();
    assert_eq!(
        errors,
        [
            "/etc/keyhole/keyhole.toml:12:2: error: instnce: unknown section; did you mean [instance]?"
        ]
    );
    let errors = parse(&format!("max_stale = \"1d\"\n{MINIMAL}"), &[]).unwrap_err();
    assert_eq!(
        errors,
        [
            "/etc/keyhole/keyhole.toml:1:1: error: max_stale: belongs in [instance]: move it below that section's header"
        ]
    );
}

#[test]
fn a_missing_key_points_at_its_section_and_says_what_to_add() {
    let errors = parse(&format!("{MINIMAL}\n[signing]\nvalidity = \"1d\"\n"), &[]).unwrap_err();
    assert_eq!(
        errors,
        [
            "/etc/keyhole/keyhole.toml:12:2: error: signing.key_file: is required: add key_file = … under [signing]"
        ]
    );
}

#[test]
fn out_of_range_values_say_the_range() {
    let errors = parse(
        &format!(
            "{MINIMAL}\n[homes]\nconcurrency = 99999999999\nmax_carry = \"0s\"\n[keys]\nmin_rsa_bits = 99999999999999999999\n"
        ),
        &[],
    )
    .unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].contains("homes.concurrency: 99999999999 is too large (at most 4294967295)"),
        "{errors:#?}"
    );
    assert!(
        errors[1].contains("homes.max_carry: must be longer than zero"),
        "{errors:#?}"
    );
    assert!(
        errors[2].contains("keys.min_rsa_bits: 99999999999999999999 is too large"),
        "{errors:#?}"
    );
}

#[test]
fn a_problem_with_an_overridden_key_names_the_variable_not_the_file() {
    let errors = parse(
        &MINIMAL.replace("[s3]", "timeout = \"30s\"\n[s3]"),
        &[("KEYHOLE_LDAP_TIMEOUT", "soon")],
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("environment variable KEYHOLE_LDAP_TIMEOUT:0:0: error: ldap.timeout: \"soon\" is not a duration"),
        "{errors:#?}"
    );
    // A value of the wrong shape in the file is the file's problem, whatever the environment
    // says (the file alone must be valid, as before the environment was laid over it).
    let errors = parse(
        &MINIMAL.replace("[s3]", "timeout = 30\n[s3]"),
        &[("KEYHOLE_LDAP_TIMEOUT", "30s")],
    )
    .unwrap_err();
    assert!(
        errors[0].contains(":8:11: error: ldap.timeout"),
        "{errors:#?}"
    );
}

#[test]
fn a_file_that_is_not_utf8_is_a_problem_at_the_bad_byte() {
    let errors = Settings::from_bytes(
        Path::new("k.toml"),
        b"[s3]\nbucket = \"b\xffb\"\n",
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "k.toml:2:12: error: the settings file is not valid UTF-8 (TOML files must be UTF-8): save it as UTF-8"
    );
}

#[test]
fn load_reports_every_problem_under_one_prefix_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyhole.toml");
    std::fs::write(
        &path,
        MINIMAL
            .replace("url = \"ldaps://dc1.corp.example.com\"", "url = 5")
            .replace("[s3]", "page_size = \"big\"\n[s3]"),
    )
    .unwrap();
    let error = Settings::load(Some(&path)).unwrap_err();
    assert_eq!(
        crate::exit::Exit::for_error(&error),
        crate::exit::Exit::Invalid
    );
    let message = format!("{error:#}");
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 3, "{message}");
    assert_eq!(
        lines[0],
        format!("invalid settings in {}: 2 errors", path.display())
    );
    assert!(
        lines[1].contains("keyhole.toml:3:7: error: ldap.url"),
        "{message}"
    );
    assert!(
        lines[2].contains("keyhole.toml:8:13: error: ldap.page_size"),
        "{message}"
    );
    assert!(
        !message.contains("configuration or policy invalid"),
        "{message}"
    );
}

#[test]
fn every_key_of_the_schema_reaches_the_raw_structs() {
    for &(section, key, kind) in schema::KEYS {
        let value = match kind {
            schema::Kind::Text | schema::Kind::Duration => toml::Value::String("1d".into()),
            schema::Kind::Integer => toml::Value::Integer(1),
            schema::Kind::Float => toml::Value::Float(0.5),
            schema::Kind::Bool => toml::Value::Boolean(true),
            schema::Kind::List | schema::Kind::TextOrList => {
                toml::Value::Array(vec![toml::Value::String("a".into())])
            }
            schema::Kind::Map => {
                let mut map = toml::Table::new();
                map.insert("a".into(), toml::Value::String("b".into()));
                toml::Value::Table(map)
            }
        };
        let mut table = toml::Table::new();
        if section.is_empty() {
            table.insert(key.into(), value);
        } else {
            let mut inner = toml::Table::new();
            inner.insert(key.into(), value);
            table.insert(section.into(), toml::Value::Table(inner));
        }
        if let Err(error) = RawSettings::deserialize(toml::Value::Table(table)) {
            panic!("{section}.{key} ({kind:?}): {error}");
        }
    }
}
