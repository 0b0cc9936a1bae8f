//! The directory stage against a real Samba AD DC: `keyhole members` over LDAPS and StartTLS,
//! nested groups, a cycle, a group past AD's 1,500-value `member` limit (read in ranges),
//! primary-group-only membership, disabled / really locked / expired accounts, names with dots,
//! dashes and capitals, missing principals, and each way the connection can fail.

use crate::support::keyhole::{Deployment, ldap_section};
use crate::support::samba::{Fixture, SambaDc, UserSpec};
use serde_json::{Value, json};

/// 2020-01-01T00:00:00Z as an AD FILETIME: a date that has passed.
const PAST: i64 = (1_577_836_800 + 11_644_473_600) * 10_000_000;
const BIG_GROUP_SIZE: usize = 1_600;

fn company() -> Fixture {
    let mut fixture = Fixture::new()
        .user(UserSpec::new("bob"))
        .user(UserSpec::new("Jane.Doe"))
        .user(UserSpec::new("carl-ops"))
        .user(UserSpec::new("intern.ivy"))
        .user(UserSpec::new("cy.a"))
        .user(UserSpec::new("cy.b"))
        .user(UserSpec::new("pri.user").primary_group("Ops Primary"))
        .user(UserSpec::new("dis.user").disabled())
        .user(UserSpec::new("exp.user").expires(PAST))
        .user(UserSpec::new("lock.user"))
        .user(UserSpec::new("alice.admin"))
        .user(UserSpec::new("root.rita"))
        .contact("Some Contact")
        .computer("WS01")
        .group("Web Interns", &["intern.ivy"])
        .group("Web Contractors", &["Web Interns", "carl-ops"])
        .group(
            "Web Team",
            &[
                "Jane.Doe",
                "Web Contractors",
                "dis.user",
                "exp.user",
                "lock.user",
                "Some Contact",
                "WS01",
            ],
        )
        .group("Cycle A", &["cy.a", "Cycle B"])
        .group("Cycle B", &["cy.b", "Cycle A"])
        .group("Ops Primary", &["pri.user"])
        .group("Linux Admins", &["root.rita"]);
    let bulk: Vec<String> = (0..BIG_GROUP_SIZE).map(|i| format!("bulk{i:04}")).collect();
    for name in &bulk {
        fixture = fixture.user(UserSpec::new(name));
    }
    let bulk: Vec<&str> = bulk.iter().map(String::as_str).collect();
    fixture.group("Big Group", &bulk)
}

const POLICY: &str = r#"
[everywhere]
users = ["alice.admin"]
groups = ["Linux Admins"]

[access_groups.web-prod]
description = "Production web servers"
users = ["bob", "ghost.user"]
groups = ["web team", "No Such Group"]

[access_groups.cycle]
groups = ["Cycle A"]

[access_groups.ops]
groups = ["Ops Primary"]

[access_groups.big]
groups = ["Big Group"]
"#;

fn users(report: &Value, group: &str) -> Vec<(String, Vec<String>)> {
    report["access_groups"][group]["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users for {group} in {report}"))
        .iter()
        .map(|user| {
            let via = user["via"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            (user["name"].as_str().unwrap().to_owned(), via)
        })
        .collect()
}

fn everywhere(name: &str, chain: &[&str]) -> (String, Vec<String>) {
    let mut via = vec!["everywhere".to_owned()];
    via.extend(chain.iter().map(|s| s.to_string()));
    (name.to_owned(), via)
}

fn member(name: &str, chain: &[&str]) -> (String, Vec<String>) {
    (
        name.to_owned(),
        chain.iter().map(|s| s.to_string()).collect(),
    )
}

#[test]
fn members_expands_every_hard_case_over_ldaps() {
    let dc = SambaDc::start(&company());
    dc.lock_out("lock.user");
    let deployment = Deployment::new(&dc, POLICY);

    let run = deployment.run(&["members", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:#?}");
    let report = run.json();

    assert_eq!(
        users(&report, "web-prod"),
        [
            everywhere("alice.admin", &[]),
            member("bob", &[]),
            member("carl-ops", &["Web Team", "Web Contractors"]),
            member(
                "intern.ivy",
                &["Web Team", "Web Contractors", "Web Interns"]
            ),
            member("Jane.Doe", &["Web Team"]),
            everywhere("root.rita", &["Linux Admins"]),
        ]
    );
    assert_eq!(
        report["access_groups"]["web-prod"]["excluded"],
        json!([
            {"name": "dis.user", "reason": "disabled"},
            {"name": "exp.user", "reason": "expired"},
            {"name": "ghost.user", "reason": "not_found"},
            {"name": "lock.user", "reason": "locked"},
        ])
    );
    let cycle: Vec<String> = users(&report, "cycle").into_iter().map(|u| u.0).collect();
    assert_eq!(cycle, ["alice.admin", "cy.a", "cy.b", "root.rita"]);
    assert!(
        users(&report, "ops").contains(&member("pri.user", &["Ops Primary"])),
        "{report}"
    );
    let big = users(&report, "big");
    assert_eq!(
        big.len(),
        BIG_GROUP_SIZE + 2,
        "every member of the large group, plus the admins"
    );
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("No Such Group"), "{warnings}");
}

#[test]
fn ranged_member_reads_give_the_same_answer_and_the_text_report_reads_well() {
    let dc = SambaDc::start(&company());
    let mut deployment = Deployment::new(&dc, POLICY);
    let whole = deployment.run(&["members", "big", "--format", "json"]);
    assert_eq!(whole.code, 0, "{whole:#?}");

    // Ask for member;range= slices of 500 values: the same follow-up path AD's 1,500-value limit
    // takes, driven against Samba (which would otherwise hand out all values at once).
    deployment
        .env
        .push(("KEYHOLE_LDAP_MEMBER_RANGE".into(), "500".into()));
    deployment.env.push(("RUST_LOG".into(), "info".into()));
    let ranged = deployment.run(&["members", "big", "--format", "json"]);
    assert_eq!(ranged.code, 0, "{ranged:#?}");
    assert_eq!(ranged.json(), whole.json());
    assert_eq!(users(&ranged.json(), "big").len(), BIG_GROUP_SIZE + 2);
    assert!(
        ranged.stderr.contains("ranged_reads=3"),
        "1,600 values in slices of 500: {}",
        ranged.stderr
    );

    let text = deployment.run(&["members", "web-prod"]);
    assert_eq!(text.code, 0, "{text:#?}");
    assert!(
        text.stdout
            .starts_with("web-prod: 7 users with access, 3 excluded\n"),
        "{}",
        text.stdout
    );
    let lines: Vec<String> = text
        .stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for expected in [
        "+ intern.ivy via Web Team > Web Contractors > Web Interns",
        "+ bob named directly",
        "- dis.user (disabled)",
    ] {
        assert!(
            lines.contains(&expected.to_owned()),
            "{expected}: {}",
            text.stdout
        );
    }
}

#[test]
fn starttls_works_and_connection_failures_name_their_cause() {
    let mut dc = SambaDc::start(&company());
    let deployment = Deployment::new(&dc, POLICY);

    deployment.write_settings(&ldap_section(&dc, &dc.ldap_url(), &dc.ca_file()));
    let starttls = deployment.run(&["members", "ops", "--format", "json"]);
    assert_eq!(starttls.code, 0, "{starttls:#?}");
    assert!(users(&starttls.json(), "ops").contains(&member("pri.user", &["Ops Primary"])));

    // A CA that did not sign the DC's certificate.
    let other_ca = deployment.path("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-keyout",
            "/dev/null",
            "-subj",
            "/CN=Not The Corp CA",
            "-days",
            "1",
            "-out",
        ])
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    deployment.write_settings(&ldap_section(&dc, &dc.ldaps_url(), &other_ca));
    let wrong_ca = deployment.run(&["members"]);
    assert_eq!(wrong_ca.code, 1, "{wrong_ca:#?}");
    assert!(
        wrong_ca
            .stderr
            .contains(&format!("cannot connect to {}", dc.ldaps_url())),
        "{}",
        wrong_ca.stderr
    );
    assert!(
        wrong_ca.stderr.contains("UnknownIssuer"),
        "{}",
        wrong_ca.stderr
    );
    assert!(wrong_ca.stdout.is_empty());

    // A wrong password (one bad bind stays under the lockout threshold).
    deployment.write_settings(&ldap_section(&dc, &dc.ldaps_url(), &dc.ca_file()));
    let wrong_password = crate::support::keyhole::run_keyhole(
        &deployment.config(),
        &["members"],
        &[("KEYHOLE_LDAP_PASSWORD".into(), "not-the-password".into())],
    );
    assert_eq!(wrong_password.code, 1, "{wrong_password:#?}");
    assert!(
        wrong_password.stderr.contains("invalid credentials"),
        "{}",
        wrong_password.stderr
    );
    assert!(
        !wrong_password.stderr.contains("not-the-password"),
        "the password leaked: {}",
        wrong_password.stderr
    );

    // The server is not running.
    dc.stop();
    let down = deployment.run(&["members"]);
    assert_eq!(down.code, 1, "{down:#?}");
    assert!(
        down.stderr
            .contains(&format!("cannot connect to {}", dc.ldaps_url())),
        "{}",
        down.stderr
    );
    assert!(down.stderr.contains("onnection refused"), "{}", down.stderr);
}

#[test]
fn an_unknown_access_group_is_a_usage_error_and_a_bad_policy_is_invalid() {
    let dc = SambaDc::start(&Fixture::new().user(UserSpec::new("bob")));
    let deployment = Deployment::new(&dc, POLICY);
    let unknown = deployment.run(&["members", "nope"]);
    assert_eq!(unknown.code, 64, "{unknown:#?}");
    assert!(
        unknown.stderr.contains("\"nope\" is not an access group"),
        "{}",
        unknown.stderr
    );

    deployment.write_policy("[access_groups.Web]\nusers = [\"bob\"]\n");
    let invalid = deployment.run(&["members"]);
    assert_eq!(invalid.code, 78, "{invalid:#?}");
    assert!(
        invalid.stderr.contains("access-groups.toml:1:"),
        "{}",
        invalid.stderr
    );
}
