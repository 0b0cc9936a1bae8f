//! The policy's rules, one test per rule, each through [`super::parse`] as a user would meet it.

use super::check::fingerprint_problem;
use super::*;

const FINGERPRINT: &str = "SHA256:owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg";

fn check(text: &str) -> Result<Checked, Invalid> {
    parse(Path::new("p.toml"), text)
}

/// Every diagnostic, rendered, whether the policy is valid or not.
fn rendered(text: &str) -> Vec<String> {
    let diagnostics = match check(text) {
        Ok(checked) => checked.warnings,
        Err(invalid) => invalid.diagnostics,
    };
    diagnostics.iter().map(ToString::to_string).collect()
}

fn errors(text: &str) -> Vec<String> {
    match check(text) {
        Ok(checked) => panic!("expected errors, got a valid policy: {checked:#?}"),
        Err(invalid) => invalid
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect(),
    }
}

fn with_group(body: &str) -> String {
    format!("[access_groups.web]\n{body}\n")
}

#[test]
fn a_complete_policy_becomes_a_policy() {
    let text = format!(
        r#"
[everywhere]
users = ["alice.admin"]
groups = ["Linux Admins"]

[access_groups.web-prod]
description = "Production web servers"
users = ["bob", "carol"]
groups = ["Web Team", "SRE"]

[access_groups.db]
groups = ["DBA"]

[deny]
users = ["mallory"]
fingerprints = ["{FINGERPRINT}"]
"#
    );
    let checked = check(&text).unwrap();
    assert_eq!(checked.warnings, vec![]);
    let web = AccessGroup {
        name: "web-prod".into(),
        description: Some("Production web servers".into()),
        principals: Principals {
            users: vec!["bob".into(), "carol".into()],
            groups: vec!["Web Team".into(), "SRE".into()],
            ..Principals::default()
        },
        options: vec![],
    };
    let db = AccessGroup {
        name: "db".into(),
        description: None,
        principals: Principals {
            users: vec![],
            groups: vec!["DBA".into()],
            ..Principals::default()
        },
        options: vec![],
    };
    assert_eq!(
        checked.policy,
        Policy {
            everywhere: Principals {
                users: vec!["alice.admin".into()],
                groups: vec!["Linux Admins".into()],
                ..Principals::default()
            },
            access_groups: BTreeMap::from([("web-prod".into(), web), ("db".into(), db)]),
            deny: Deny {
                users: vec!["mallory".into()],
                fingerprints: vec![FINGERPRINT.into()],
            },
            automation: BTreeMap::new(),
        }
    );
}

#[test]
fn everywhere_and_deny_are_optional() {
    let checked = check("[access_groups.web]\nusers = [\"bob\"]\n").unwrap();
    assert_eq!(checked.policy.everywhere, Principals::default());
    assert_eq!(checked.policy.deny, Deny::default());
}

#[test]
fn a_syntax_error_has_its_position() {
    assert_eq!(
        errors("[access_groups.web]\nusers = [\"bob\"\ngroups = []\n"),
        vec!["p.toml:3:1: error: invalid TOML: missing comma between array elements, expected `,`"]
    );
    let duplicate_key = errors("[access_groups.web]\nusers = []\nusers = [\"bob\"]\n");
    assert_eq!(duplicate_key.len(), 1);
    assert!(duplicate_key[0].starts_with("p.toml:3:1: error: invalid TOML: "));
}

#[test]
fn unknown_keys_at_every_level_get_a_hint() {
    let text = r#"
[everywhere]
usres = ["alice"]

[access_groups.web]
users = ["bob"]
grups = ["Web"]

[deny]
fingerprint = []

[acess_groups.db]
users = ["x"]
"#;
    assert_eq!(
        errors(text),
        vec![
            "p.toml:3:1: error: unknown key `usres` in [everywhere]; did you mean `users`?",
            "p.toml:7:1: error: unknown key `grups` in [access_groups.web]; did you mean `groups`?",
            "p.toml:10:1: error: unknown key `fingerprint` in [deny]; did you mean `fingerprints`?",
            "p.toml:12:2: error: unknown key `acess_groups` at the top level; did you mean `access_groups`?",
        ]
    );
}

#[test]
fn an_unknown_key_without_a_near_miss_lists_the_known_ones() {
    assert_eq!(
        errors(&with_group("users = [\"bob\"]\nservers = [\"web1\"]")),
        vec![
            "p.toml:3:1: error: unknown key `servers` in [access_groups.web]; expected one of \
                 `description`, `users`, `groups`, `options`"
        ]
    );
}

#[test]
fn an_access_group_at_the_top_level_is_pointed_to_its_place() {
    let text = "[web-prod]\nusers = [\"bob\"]\n[access_groups.db]\nusers = [\"x\"]\n";
    assert_eq!(
        errors(text),
        vec![
            "p.toml:1:2: error: unknown key `web-prod` at the top level; did you mean \
                 `[access_groups.web-prod]`?"
        ]
    );
}

#[test]
fn wrong_value_types_are_errors() {
    let text = r#"
everywhere = "alice"
[access_groups.web]
users = "bob"
groups = ["Web", 7]
description = 3
[deny]
fingerprints = "x"
"#;
    assert_eq!(
        errors(text),
        vec![
            "p.toml:2:1: error: `everywhere` must be a table, written `[everywhere]`; found a \
                 string",
            "p.toml:4:9: error: `users` in [access_groups.web] must be a list of strings; found \
                 a string (write `users = [\"bob\"]`)",
            "p.toml:5:18: error: `groups` in [access_groups.web] must hold only names or `{ \
                 name = ..., until = ... }` tables; found an integer",
            "p.toml:6:15: error: `description` in [access_groups.web] must be a string; found \
                 an integer",
            "p.toml:8:16: error: `fingerprints` in [deny] must be a list of strings; found a \
                 string (write `fingerprints = [\"x\"]`)",
        ]
    );
}

#[test]
fn an_access_group_that_is_not_a_table_is_an_error() {
    assert_eq!(
        errors("[access_groups]\nweb = [\"bob\"]\n"),
        vec![
            "p.toml:2:1: error: `access_groups.web` must be a table, written \
                 `[access_groups.web]`; found an array"
        ]
    );
}

#[test]
fn an_array_of_tables_is_pointed_to_single_brackets() {
    assert_eq!(
        errors("[[access_groups]]\nusers = [\"bob\"]\n"),
        vec![
            "p.toml:1:3: error: `access_groups` must be a table, written \
                 `[access_groups.NAME]`; found an array (`[[...]]` makes an array of tables; use \
                 single brackets)"
        ]
    );
}

#[test]
fn a_policy_without_access_groups_would_remove_everyone() {
    for text in ["", "[everywhere]\nusers = [\"alice\"]\n"] {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("p.toml:1:1: error: no `[access_groups]`: publishing"),
            "{errors:?}"
        );
    }
    let empty_table = errors("[access_groups]\n");
    assert_eq!(empty_table.len(), 1);
    assert!(
        empty_table[0].starts_with("p.toml:1:2: error: `[access_groups]` has no access group"),
        "{empty_table:?}"
    );
}

#[test]
fn access_group_names_follow_the_s3_safe_pattern() {
    for good in ["web", "0", "web-prod.eu_1", &"a".repeat(63)] {
        assert_eq!(access_group_name_problem(good), None, "{good}");
    }
    for bad in [
        "Web",
        "-web",
        ".web",
        "_web",
        "web prod",
        "wéb",
        "web/prod",
        &"a".repeat(64),
    ] {
        assert!(access_group_name_problem(bad).is_some(), "{bad}");
    }
    assert_eq!(
        errors("[access_groups.\"Web Prod\"]\nusers = [\"bob\"]\n"),
        vec![
            "p.toml:1:16: error: invalid access group name `Web Prod`: access group names \
                 are 1 to 63 characters of a-z, 0-9, `.`, `_`, `-`, starting with a letter or \
                 digit; did you mean `web-prod`?"
        ]
    );
}

#[test]
fn duplicates_in_one_list_are_errors_whatever_the_case() {
    assert_eq!(
        errors(&with_group(
            "users = [\"bob\", \"carol\", \"Bob\", \"carol\"]"
        )),
        vec![
            "p.toml:2:26: error: duplicate user `Bob` in [access_groups.web] `users` (already \
                 at 2:10 as `bob`; AD names are case-insensitive)",
            "p.toml:2:33: error: duplicate user `carol` in [access_groups.web] `users` \
                 (already at 2:17)",
        ]
    );
    // The same name in two different access groups is normal.
    assert!(
        check("[access_groups.a]\nusers = [\"bob\"]\n[access_groups.b]\nusers = [\"BOB\"]\n")
            .is_ok()
    );
}

#[test]
fn a_principal_also_in_everywhere_is_redundant_but_valid() {
    let text = "[everywhere]\nusers = [\"alice\"]\ngroups = [\"Admins\"]\n\
                    [access_groups.web]\nusers = [\"Alice\"]\ngroups = [\"admins\", \"Web\"]\n";
    let checked = check(text).unwrap();
    let warnings: Vec<_> = checked.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "p.toml:5:10: warning: user `Alice` is already in [everywhere] (line 2); listing \
                 it in access group `web` is redundant",
            "p.toml:6:11: warning: group `admins` is already in [everywhere] (line 3); \
                 listing it in access group `web` is redundant",
        ]
    );
    assert_eq!(
        checked.policy.access_groups["web"].principals.users,
        ["Alice"]
    );
}

#[test]
fn an_empty_access_group_is_an_error() {
    for body in [
        "",
        "users = []",
        "users = []\ngroups = []",
        "description = \"x\"",
    ] {
        let errors = errors(&with_group(body));
        assert_eq!(errors.len(), 1, "{body:?}: {errors:?}");
        assert!(
            errors[0].starts_with("p.toml:1:16: error: access group `web` is empty"),
            "{errors:?}"
        );
    }
    // Groups alone are enough.
    assert!(check(&with_group("groups = [\"Web\"]")).is_ok());
}

#[test]
fn a_misspelt_or_mistyped_list_does_not_also_count_as_empty() {
    assert_eq!(errors(&with_group("grups = [\"Web\"]")).len(), 1);
    assert_eq!(errors(&with_group("users = \"bob\"")).len(), 1);
}

#[test]
fn names_ad_could_never_hold_are_errors() {
    let text =
        with_group(r#"users = ["", " bob", "carol ", "CORP\\dave", "eve:x", "a*b", "tab	x"]"#);
    assert_eq!(
        errors(&text),
        vec![
            "p.toml:2:10: error: user name \"\" in [access_groups.web]: the name is empty",
            "p.toml:2:14: error: user name \" bob\" in [access_groups.web]: remove the \
                 leading or trailing whitespace (`bob`)",
            "p.toml:2:22: error: user name \"carol \" in [access_groups.web]: remove the \
                 leading or trailing whitespace (`carol`)",
            "p.toml:2:32: error: user name \"CORP\\\\dave\" in [access_groups.web]: write the \
                 sAMAccountName without the domain: `dave`",
            "p.toml:2:46: error: user name \"eve:x\" in [access_groups.web]: `:` is not \
                 allowed in an AD sAMAccountName (none of \"/\\[]:;|=,+*?<> are)",
            "p.toml:2:55: error: user name \"a*b\" in [access_groups.web]: `*` is not allowed \
                 in an AD sAMAccountName (none of \"/\\[]:;|=,+*?<> are)",
            "p.toml:2:62: error: user name \"tab\\tx\" in [access_groups.web]: control \
                 characters are not allowed in an AD sAMAccountName",
        ]
    );
    // Spaces, dots, dashes and non-ASCII letters are fine in AD names.
    assert!(check(&with_group(r#"groups = ["Web Team", "j.doe-2", "Jürgen"]"#)).is_ok());
}

#[test]
fn a_user_written_as_an_email_is_a_warning() {
    let checked = check(&with_group(r#"users = ["bob@corp.example.com"]"#)).unwrap();
    assert_eq!(checked.warnings.len(), 1);
    assert!(
        checked.warnings[0]
            .message
            .contains("keyhole matches the sAMAccountName (e.g. `bob`)"),
        "{:?}",
        checked.warnings
    );
}

#[test]
fn fingerprints_must_be_openssh_sha256() {
    assert_eq!(fingerprint_problem(FINGERPRINT), None);
    let problem = |fingerprint: &str| fingerprint_problem(fingerprint).unwrap_or_default();
    assert!(problem("owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg").starts_with("expected"));
    assert!(problem("sha256:owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg").contains("upper case"));
    assert!(problem("SHA256:owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg=").contains("padding"));
    assert!(problem("SHA256:owo1iO").starts_with("6 characters after"));
    assert!(problem("MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48").starts_with("MD5"));
    assert!(problem("16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48").starts_with("MD5"));
    // URL-safe alphabet and non-canonical trailing bits are not what ssh-keygen prints.
    assert!(
        problem("SHA256:owo1iO_3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAg")
            .starts_with("`_` is not a base64 character")
    );
    assert!(
        problem("SHA256:owo1iO/3x3cqM7F0AXCECZrJz3mossIYp54x2T6UAAh")
            .starts_with("not a canonical base64 encoding")
    );
}

#[test]
fn bad_and_duplicate_fingerprints_in_deny_are_errors() {
    let text = format!(
        "[access_groups.web]\nusers = [\"bob\"]\n[deny]\nfingerprints = [\n  \"{FINGERPRINT}\",\n  \"SHA256:nope\",\n  \"{FINGERPRINT}\",\n]\n"
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0]
            .starts_with("p.toml:6:3: error: fingerprint \"SHA256:nope\" in [deny]: 4 characters")
    );
    assert!(errors[1].starts_with(&format!(
        "p.toml:7:3: error: duplicate fingerprint `{FINGERPRINT}` in [deny] (already at 5:3)"
    )));
}

#[test]
fn a_denied_user_listed_elsewhere_is_a_warning_because_deny_wins() {
    let text = "[everywhere]\nusers = [\"mallory\"]\n[access_groups.web]\nusers = [\"Mallory\"]\n\
                    [deny]\nusers = [\"mallory\"]\n";
    let checked = check(text).unwrap();
    let warnings: Vec<_> = checked.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "p.toml:2:10: warning: user `mallory` in [everywhere] is also in [deny] (line 6); \
                 deny wins, they get no access anywhere",
            "p.toml:4:10: warning: user `Mallory` is already in [everywhere] (line 2); listing \
                 it in access group `web` is redundant",
            "p.toml:4:10: warning: user `Mallory` in access group `web` is also in [deny] \
                 (line 6); deny wins, they get no access anywhere",
        ]
    );
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let text = r#"
[access_groups.Web]
users = ["bob", "bob"]

[access_groups.empty]

[deny]
fingerprints = ["SHA256:x"]
bogus = 1
"#;
    let lines = rendered(text);
    let positions: Vec<&str> = lines
        .iter()
        .map(|line| line.split(": ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        positions,
        [
            "p.toml:2:16",
            "p.toml:3:17",
            "p.toml:5:16",
            "p.toml:8:17",
            "p.toml:9:1"
        ]
    );
}

#[test]
fn invalid_lists_every_diagnostic_in_its_message() {
    let invalid = check(&with_group(
        "users = [\"bob\", \"bob\"]\ngroups = [\"a@b\"]",
    ))
    .unwrap_err();
    let message = invalid.to_string();
    let mut lines = message.lines();
    assert_eq!(lines.next(), Some("the policy has 1 error"));
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .starts_with("p.toml:2:17: error: duplicate")
    );
    assert_eq!(lines.next(), None);
    assert_eq!(counts(&invalid.diagnostics), "1 error");
}

#[test]
fn counts_name_errors_and_warnings() {
    let source = Source::new(Path::new("p.toml"), "");
    let error = source.error(0..0, "e");
    let warning = source.warning(0..0, "w");
    assert_eq!(counts(&[]), "0 errors");
    assert_eq!(counts(std::slice::from_ref(&warning)), "1 warning");
    assert_eq!(
        counts(&[error.clone(), error, warning.clone(), warning]),
        "2 errors, 2 warnings"
    );
}

#[test]
fn text_that_is_not_utf8_is_a_diagnostic() {
    let invalid = parse_bytes(
        Path::new("p.toml"),
        b"[access_groups.web]\nusers = [\"b\xffb\"]\n",
    )
    .unwrap_err();
    assert_eq!(
        invalid.diagnostics[0].to_string(),
        "p.toml:2:12: error: the policy is not valid UTF-8 (TOML files must be UTF-8)"
    );
}

#[test]
fn load_marks_an_invalid_policy_and_names_an_unreadable_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access-groups.toml");

    let missing = load(&path).unwrap_err();
    assert_eq!(Exit::for_error(&missing), Exit::Failure);
    assert!(
        format!("{missing:#}").contains("access-groups.toml"),
        "{missing:#}"
    );

    std::fs::write(&path, "[access_groups.web]\n").unwrap();
    let invalid = load(&path).unwrap_err();
    // The mark `Exit::for_error` reads; asked of anyhow directly so this test does not depend
    // on how `exit` walks the chain.
    let code = invalid
        .downcast_ref::<crate::exit::Coded>()
        .map(|coded| coded.0);
    assert_eq!(code, Some(Exit::Invalid));
    assert!(
        format!("{invalid:#}")
            .contains("access-groups.toml:1:16: error: access group `web` is empty"),
        "{invalid:#}"
    );

    std::fs::write(&path, "[access_groups.web]\nusers = [\"bob\"]\n").unwrap();
    assert_eq!(load(&path).unwrap().policy.access_groups.len(), 1);
}

#[test]
fn grants_with_an_end_date_are_read_with_when_they_end() {
    let text = "[everywhere]\ngroups = [{ name = \"Helpers\", until = 2027-03-31T18:00:00+02:00 }]\n\
                    [access_groups.web]\nusers = [\"bob\", { name = \"Carol\", until = 2027-03-31 }]\n";
    let checked = check(text).unwrap();
    let web = &checked.policy.access_groups["web"].principals;
    assert_eq!(web.users, ["bob", "Carol"]);
    let carol = web.user_until("carol").unwrap();
    assert_eq!(carol.text, "2027-03-31");
    // Through the end of that day, UTC: 2027-04-01T00:00:00Z.
    assert_eq!(carol.ends_at, 1_806_537_600);
    let helpers = checked.policy.everywhere.group_until("helpers").unwrap();
    assert_eq!(helpers.ends_at, 1_806_537_600 - 8 * 3600);
    let at = |secs: i64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    assert!(!carol.has_ended(at(1_806_537_599)));
    assert!(carol.has_ended(at(1_806_537_600)));
    assert!(carol.ends_within(
        at(1_806_537_600 - 86_400),
        std::time::Duration::from_secs(86_400)
    ));
    assert_eq!(checked.grants.len(), 2);
    assert_eq!(
        checked.grants[1].what,
        "user `Carol` in [access_groups.web]"
    );
    assert_eq!((checked.grants[1].line, checked.grants[1].column), (4, 26));
}

#[test]
fn bad_grant_entries_are_errors_at_their_position() {
    let text = with_group(
        "users = [{ name = \"a\", until = \"2027-03-31\" }, { name = \"b\" }, { until = 2027-01-01 }, { name = \"c\", until = 2027-01-01T10:00:00 }, { name = \"d\", until = 2027-01-01, why = 1 }]",
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert!(
        errors[0].contains("must be a TOML date, written without quotes"),
        "{errors:?}"
    );
    assert!(errors[1].contains("has no `until`"), "{errors:?}");
    assert!(errors[2].contains("needs a `name`"), "{errors:?}");
    assert!(
        errors[3].contains("a local date-time is ambiguous"),
        "{errors:?}"
    );
    assert!(errors[4].contains("unknown key `why`"), "{errors:?}");
}

#[test]
fn a_deny_entry_cannot_end() {
    let text = "[access_groups.web]\nusers = [\"bob\"]\n[deny]\nusers = [{ name = \"eve\", until = 2027-01-01 }]\n";
    assert_eq!(
        errors(text),
        [
            "p.toml:4:19: error: [deny] entries cannot end (`until`): remove the user from [deny] \
              when the denial is over"
        ]
    );
}

#[test]
fn automation_accounts_are_validated() {
    let good = "[access_groups.web]\nusers = [\"bob\"]\n[automation.ci]\nkey_files = [\"keys/ci.pub\"]\naccess_groups = [\"web\"]\nowner = \"CI Team\"\nad_account = \"svc-ci\"\n";
    let checked = check(good).unwrap();
    let ci = &checked.policy.automation["ci"];
    assert_eq!(ci.member(), "automation:ci");
    assert_eq!(ci.via(), "owner CI Team");
    assert!(ci.grants("web") && !ci.grants("db"));
    assert_eq!(ci.ad_account.as_deref(), Some("svc-ci"));
    assert_eq!(checked.key_files[0].path, "keys/ci.pub");
    let bad = "[access_groups.web]\nusers = [\"bob\"]\n\
                   [automation.CI]\nkey_files = [\"/root/.ssh/id.pub\"]\neverywhere = true\naccess_groups = [\"web\"]\nowner = \"a > b\"\n\
                   [automation.x]\nkey_files = []\nad_account = \"a:b\"\n";
    let errors = errors(bad);
    let expected = [
        "p.toml:3:13: error: invalid automation account name `CI`",
        "p.toml:3:13: error: [automation.CI] has both `everywhere = true` and `access_groups`",
        "p.toml:4:14: error: key file \"/root/.ssh/id.pub\" in [automation.CI]: write the path relative",
        "p.toml:7:9: error: `owner` in [automation.CI]: '>' is not allowed",
        "p.toml:8:13: error: [automation.x] grants nothing",
        "p.toml:8:13: error: [automation.x] has no `owner`",
        "p.toml:9:13: error: `key_files` in [automation.x] is empty",
        "p.toml:10:14: error: `ad_account` \"a:b\" in [automation.x]: `:` is not allowed",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, expected) in errors.iter().zip(expected) {
        assert!(
            error.starts_with(expected),
            "{error:?} does not start with {expected:?}"
        );
    }
}

#[test]
fn access_group_options_are_validated_as_restrictions() {
    let checked = check(&with_group(
        "users = [\"bob\"]\noptions = ['from=\"10.20.0.0/16\"', \"no-pty\"]",
    ))
    .unwrap();
    assert_eq!(
        checked.policy.access_groups["web"].options,
        ["from=\"10.20.0.0/16\"", "no-pty"]
    );
    let errors = errors(&with_group(
        "users = [\"bob\"]\noptions = ['from=\"10.20.0.0/16\"', 'from=\"10.0.0.0/8\"']",
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("given more than once"), "{errors:?}");
}
