//! Real keys made with `ssh-keygen` (tests/fixtures/keys/README.md says how), fed through the
//! parser the way a user's authorized_keys would be.

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../tests/fixtures/keys/", $name)).trim_ascii_end()
    };
}

const ED25519: &str = fixture!("ed25519.pub");
const ED25519_BOB: &str = fixture!("ed25519-bob.pub");
const ECDSA256: &str = fixture!("ecdsa256.pub");
const ECDSA384: &str = fixture!("ecdsa384.pub");
const ECDSA521: &str = fixture!("ecdsa521.pub");
const RSA1024: &str = fixture!("rsa1024.pub");
const RSA2048: &str = fixture!("rsa2048.pub");
const RSA4096: &str = fixture!("rsa4096.pub");
const DSA: &str = fixture!("dsa.pub");
const SK_ED25519: &str = fixture!("sk-ed25519.pub");
const SK_ECDSA256: &str = fixture!("sk-ecdsa256.pub");
/// `ssh-keygen -lf` of every fixture above: `BITS FINGERPRINT COMMENT... (TYPE)`.
const SSH_KEYGEN_LF: &str = fixture!("ssh-keygen-lf.txt");

/// The base64 field of a fixture line.
fn blob_of(line: &str) -> &str {
    line.split(' ').nth(1).unwrap_or_default()
}

fn parse(text: &str) -> ParsedKeys {
    parse_authorized_keys(text, &KeyPolicy::default())
}

/// Parses one line that must be kept, and returns its key.
fn kept(line: &str) -> AuthorizedKey {
    let parsed = parse(line);
    assert_eq!(parsed.dropped, vec![], "{line}");
    assert_eq!(parsed.keys.len(), 1, "{line}");
    parsed.keys[0].clone()
}

/// Parses one line that must be dropped, and returns why.
fn dropped_with(policy: &KeyPolicy, line: &str) -> DropReason {
    let parsed = parse_authorized_keys(line, policy);
    assert_eq!(parsed.keys, vec![], "{line}");
    assert_eq!(parsed.dropped.len(), 1, "{line}");
    assert_eq!(parsed.dropped[0].line, 1);
    parsed.dropped[0].reason.clone()
}

fn dropped(line: &str) -> DropReason {
    dropped_with(&KeyPolicy::default(), line)
}

fn invalid_text(line: &str) -> String {
    match dropped(line) {
        DropReason::Invalid(why) => why,
        other => panic!("{line:?} should be invalid, was dropped as {other:?}"),
    }
}

fn policy_allowing_all_rsa() -> KeyPolicy {
    KeyPolicy {
        min_rsa_bits: 0,
        ..KeyPolicy::default()
    }
}

#[test]
fn fingerprints_are_what_ssh_keygen_prints() {
    let fixtures = [
        DSA,
        ECDSA256,
        ECDSA384,
        ECDSA521,
        ED25519_BOB,
        ED25519,
        RSA1024,
        RSA2048,
        RSA4096,
        SK_ECDSA256,
        SK_ED25519,
    ];
    let mut policy = policy_allowing_all_rsa();
    policy.allowed_types.insert("ssh-dss".into());
    let mut expected: Vec<&str> = SSH_KEYGEN_LF
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    expected.sort_unstable();
    let mut computed = Vec::new();
    for line in fixtures {
        let parsed = parse_authorized_keys(line, &policy);
        match parsed.keys.first() {
            Some(key) => computed.push(key.fingerprint.to_string()),
            // DSA is refused before a key is produced; its fingerprint is checked below.
            None => assert_eq!(parsed.dropped[0].reason, DropReason::Dss, "{line}"),
        }
    }
    computed.push(dsa_fingerprint());
    computed.sort_unstable();
    assert_eq!(computed, expected);
}

/// The DSA fixture's fingerprint, computed the way the parser does, to prove the ssh-keygen
/// table covers it too.
fn dsa_fingerprint() -> String {
    let bytes = STANDARD.decode(blob_of(DSA)).unwrap_or_default();
    match ssh_key::PublicKey::from_bytes(&bytes) {
        Ok(key) => Fingerprint::of(key.key_data()).to_string(),
        Err(err) => panic!("{err}"),
    }
}

#[test]
fn a_key_line_is_split_into_its_fields() {
    let key = kept(ED25519);
    assert_eq!(key.options, None);
    assert_eq!(key.key_type, "ssh-ed25519");
    assert_eq!(key.blob, blob_of(ED25519));
    assert_eq!(key.comment.as_deref(), Some("alice@laptop"));
    assert_eq!(
        key.fingerprint.as_str(),
        "SHA256:WPci3U9KL/xLguet1IJeR+x95dPZPjwXSAHS1S713LE"
    );
    assert_eq!(key.line(), ED25519);
}

#[test]
fn every_allowed_key_type_is_kept_by_default() {
    for (line, key_type) in [
        (ED25519, "ssh-ed25519"),
        (ECDSA256, "ecdsa-sha2-nistp256"),
        (ECDSA384, "ecdsa-sha2-nistp384"),
        (ECDSA521, "ecdsa-sha2-nistp521"),
        (RSA2048, "ssh-rsa"),
        (RSA4096, "ssh-rsa"),
        (SK_ED25519, "sk-ssh-ed25519@openssh.com"),
        (SK_ECDSA256, "sk-ecdsa-sha2-nistp256@openssh.com"),
    ] {
        let key = kept(line);
        assert_eq!(key.key_type, key_type);
        // What keyhole writes is what ssh-keygen wrote: options none, single spaces.
        assert_eq!(key.line(), line);
    }
}

#[test]
fn comments_with_spaces_are_kept_whole() {
    assert_eq!(kept(ECDSA256).comment.as_deref(), Some("ecdsa256 key"));
}

#[test]
fn a_key_without_comment_has_none() {
    let line = format!("ssh-ed25519 {}", blob_of(ED25519));
    let key = kept(&format!("{line}  \t "));
    assert_eq!(key.comment, None);
    assert_eq!(key.line(), line);
}

#[test]
fn separators_are_normalised_and_comment_tabs_become_spaces() {
    let key = kept(&format!(
        " \t ssh-ed25519\t\t{}   alice\ton laptop\t",
        blob_of(ED25519)
    ));
    assert_eq!(key.comment.as_deref(), Some("alice on laptop"));
    assert_eq!(
        key.line(),
        format!("ssh-ed25519 {} alice on laptop", blob_of(ED25519))
    );
}

#[test]
fn dss_is_always_refused_even_when_allowed() {
    assert_eq!(dropped(DSA), DropReason::Dss);
    let mut policy = KeyPolicy::default();
    policy.allowed_types.insert("ssh-dss".into());
    assert_eq!(dropped_with(&policy, DSA), DropReason::Dss);
}

#[test]
fn short_rsa_keys_are_refused_with_their_size() {
    assert_eq!(
        dropped(RSA1024),
        DropReason::RsaTooShort {
            bits: 1024,
            min: 2048
        }
    );
    let strict = KeyPolicy {
        min_rsa_bits: 3072,
        ..KeyPolicy::default()
    };
    assert_eq!(
        dropped_with(&strict, RSA2048),
        DropReason::RsaTooShort {
            bits: 2048,
            min: 3072
        }
    );
    // Exactly the minimum is enough.
    let exact = KeyPolicy {
        min_rsa_bits: 4096,
        ..KeyPolicy::default()
    };
    assert_eq!(parse_authorized_keys(RSA4096, &exact).keys.len(), 1);
    assert_eq!(
        dropped_with(
            &KeyPolicy {
                min_rsa_bits: 4097,
                ..KeyPolicy::default()
            },
            RSA4096
        ),
        DropReason::RsaTooShort {
            bits: 4096,
            min: 4097
        }
    );
}

#[test]
fn rsa_below_what_sshd_accepts_is_refused_even_if_the_policy_is_laxer() {
    let lax = policy_allowing_all_rsa();
    assert_eq!(parse_authorized_keys(RSA1024, &lax).keys.len(), 1);
    // A 512-bit modulus: sshd refuses anything under 1024 bits.
    let small = rsa_line_with_modulus(&[0xC3; 64]);
    assert_eq!(
        dropped_with(&lax, &small),
        DropReason::RsaTooShort {
            bits: 512,
            min: 1024
        }
    );
}

/// An ssh-rsa line with e = 65537 and the given modulus (big-endian, top bit set).
fn rsa_line_with_modulus(modulus: &[u8]) -> String {
    let mut blob = Vec::new();
    put_string(&mut blob, b"ssh-rsa");
    put_string(&mut blob, &[0x01, 0x00, 0x01]);
    let mut n = vec![0u8];
    n.extend_from_slice(modulus);
    put_string(&mut blob, &n);
    format!("ssh-rsa {} small", STANDARD.encode(blob))
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
}

#[test]
fn types_outside_the_allowed_list_are_refused() {
    let ed25519_only = KeyPolicy {
        allowed_types: ["ssh-ed25519".to_string()].into(),
        ..KeyPolicy::default()
    };
    assert_eq!(
        dropped_with(&ed25519_only, RSA4096),
        DropReason::TypeNotAllowed("ssh-rsa".into())
    );
    assert_eq!(
        dropped_with(&ed25519_only, SK_ED25519),
        DropReason::TypeNotAllowed("sk-ssh-ed25519@openssh.com".into())
    );
    assert_eq!(parse_authorized_keys(ED25519, &ed25519_only).keys.len(), 1);
}

#[test]
fn options_with_quoted_commas_spaces_and_escaped_quotes_are_kept_verbatim() {
    let options = r#"command="echo \"hello, world\"; exit",from="10.0.0.0/8,192.168.1.*",no-pty,No-Agent-Forwarding"#;
    let line = format!("{options} {ED25519}");
    let key = kept(&line);
    assert_eq!(key.options.as_deref(), Some(options));
    assert_eq!(key.key_type, "ssh-ed25519");
    assert_eq!(key.comment.as_deref(), Some("alice@laptop"));
    assert_eq!(key.line(), line);
}

#[test]
fn options_may_contain_a_key_type_inside_quotes() {
    let options = r#"command="ssh-ed25519 x""#;
    let key = kept(&format!("{options}\t{ED25519}"));
    assert_eq!(key.options.as_deref(), Some(options));
}

#[test]
fn forbidden_options_drop_the_line_case_insensitively() {
    assert_eq!(
        dropped(&format!(r#"environment="X=1" {ED25519}"#)),
        DropReason::ForbiddenOption("environment".into())
    );
    assert_eq!(
        dropped(&format!(r#"no-pty,ENVIRONMENT="PATH=/tmp" {ED25519}"#)),
        DropReason::ForbiddenOption("environment".into())
    );
    // A policy may spell the name in any case, too.
    let upper = KeyPolicy {
        forbidden_options: ["Environment".to_string()].into(),
        ..KeyPolicy::default()
    };
    assert_eq!(
        dropped_with(&upper, &format!(r#"environment="X=1" {ED25519}"#)),
        DropReason::ForbiddenOption("environment".into())
    );
}

#[test]
fn cert_authority_is_forbidden_by_default_and_the_report_says_why() {
    // A member's own CA: every certificate it signs would log in, and neither [deny]
    // fingerprints nor attribution would ever see the certificate's key.
    let reason = dropped(&format!("cert-authority,principals=\"ec2-user\" {ED25519}"));
    assert_eq!(reason, DropReason::ForbiddenOption("cert-authority".into()));
    assert_eq!(
        reason.to_string(),
        "option \"cert-authority\" is in [keys] forbidden_options (a member's own CA would let \
         in any key they sign, past [deny] and attribution)"
    );
    assert!(
        DropReason::ForbiddenOption("environment".into())
            .to_string()
            .contains("forbidden_options (environment variables can change")
    );
}

#[test]
fn flags_are_forbidden_by_their_written_name() {
    let policy = KeyPolicy {
        forbidden_options: ["no-pty".to_string(), "port-forwarding".to_string()].into(),
        ..KeyPolicy::default()
    };
    assert_eq!(
        dropped_with(&policy, &format!("restrict,No-Pty {ED25519}")),
        DropReason::ForbiddenOption("no-pty".into())
    );
    assert_eq!(
        dropped_with(&policy, &format!("restrict,port-forwarding {ED25519}")),
        DropReason::ForbiddenOption("port-forwarding".into())
    );
    // Forbidding port-forwarding does not forbid turning it off.
    let parsed = parse_authorized_keys(&format!("no-port-forwarding,pty {ED25519}"), &policy);
    assert_eq!(parsed.keys.len(), 1);
}

#[test]
fn options_sshd_would_refuse_make_the_line_invalid() {
    for (options, expected) in [
        (
            "no-such-option",
            "bad options: unsupported option \"no-such-option\"",
        ),
        (
            r#"command="unterminated"#,
            "bad options: unterminated quoted string in options",
        ),
        (
            "command=true",
            "bad options: option \"command\" needs a double-quoted value",
        ),
        (
            r#"environment="no equals""#,
            "bad options: invalid environment string",
        ),
    ] {
        let why = invalid_text(&format!("{options} {ED25519}"));
        assert!(why.starts_with(expected), "{options}: {why}");
    }
}

#[test]
fn crlf_and_a_bom_are_tolerated() {
    let text = format!("\u{feff}{ED25519}\r\n# note\r\n\r\n{RSA2048}\r\n");
    let parsed = parse(&text);
    assert_eq!(parsed.keys.len(), 2);
    assert_eq!(parsed.keys[0].comment.as_deref(), Some("alice@laptop"));
    assert_eq!(parsed.keys[1].comment.as_deref(), Some("rsa2048"));
    assert_eq!(
        parsed.dropped,
        vec![
            DroppedLine {
                line: 2,
                reason: DropReason::Comment
            },
            DroppedLine {
                line: 3,
                reason: DropReason::Blank
            },
        ]
    );
}

#[test]
fn a_last_line_without_newline_or_with_a_lone_cr_is_read() {
    assert_eq!(parse(&format!("{ED25519}\n{RSA2048}")).keys.len(), 2);
    assert_eq!(parse(&format!("{ED25519}\r")).keys.len(), 1);
}

#[test]
fn a_bom_is_only_skipped_at_the_start_of_the_file() {
    let why = invalid_text(&format!("\u{feff}\u{feff}{ED25519}"));
    assert!(why.starts_with("unknown key type"), "{why}");
}

#[test]
fn empty_files_have_nothing() {
    assert_eq!(parse(""), ParsedKeys::default());
    assert_eq!(parse("\u{feff}"), ParsedKeys::default());
    assert_eq!(
        parse("\n").dropped,
        vec![DroppedLine {
            line: 1,
            reason: DropReason::Blank
        }]
    );
}

#[test]
fn blank_lines_and_comments_are_dropped_but_not_problems() {
    let parsed = parse(&format!(
        "  \t \n   # indented comment\n#{ED25519}\n{ED25519}\n"
    ));
    let reasons: Vec<_> = parsed
        .dropped
        .iter()
        .map(|d| (d.line, d.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (1, DropReason::Blank),
            (2, DropReason::Comment),
            (3, DropReason::Comment)
        ]
    );
    assert!(parsed.dropped.iter().all(|d| !d.reason.is_problem()));
    assert_eq!(parsed.keys.len(), 1);
    assert!(DropReason::Dss.is_problem());
    assert!(DropReason::Duplicate { first_line: 1 }.is_problem());
}

#[test]
fn garbage_base64_is_invalid() {
    let why = invalid_text("ssh-ed25519 AAAA!!!notbase64 alice");
    assert!(why.starts_with("key data is not valid base64"), "{why}");
    // Valid base64 whose padding is wrong is refused too.
    let why = invalid_text(&format!("ssh-ed25519 {}= alice", blob_of(ED25519)));
    assert!(why.starts_with("key data is not valid base64"), "{why}");
}

#[test]
fn a_blob_of_another_type_is_a_mismatch() {
    let why = invalid_text(&format!("ssh-ed25519 {} liar", blob_of(RSA2048)));
    assert_eq!(
        why,
        "key type mismatch: the line says ssh-ed25519 but the key data is \"ssh-rsa\""
    );
    let why = invalid_text(&format!("ecdsa-sha2-nistp256 {}", blob_of(ECDSA384)));
    assert!(why.starts_with("key type mismatch"), "{why}");
    // sshd's RSA signature names and short names are recognised as types, not as options.
    let why = invalid_text(&format!("rsa-sha2-512 {}", blob_of(RSA2048)));
    assert!(why.starts_with("key type mismatch"), "{why}");
    let why = invalid_text(&format!("ED25519 {}", blob_of(ED25519)));
    assert!(why.starts_with("key type mismatch"), "{why}");
}

#[test]
fn a_truncated_or_padded_blob_is_invalid() {
    let bytes = STANDARD.decode(blob_of(ED25519)).unwrap_or_default();
    let truncated = STANDARD.encode(&bytes[..bytes.len() - 1]);
    let why = invalid_text(&format!("ssh-ed25519 {truncated}"));
    assert!(
        why.starts_with("key data is not a valid ssh-ed25519 key"),
        "{why}"
    );

    let mut padded = bytes.clone();
    padded.extend_from_slice(&[0, 0, 0, 0]);
    let why = invalid_text(&format!("ssh-ed25519 {}", STANDARD.encode(&padded)));
    assert!(
        why.starts_with("key data is not a valid ssh-ed25519 key"),
        "{why}"
    );

    let why = invalid_text("ssh-ed25519 AAAA");
    assert!(
        why.starts_with("key data is not an SSH public key"),
        "{why}"
    );
}

#[test]
fn a_line_without_key_data_is_invalid() {
    assert_eq!(invalid_text("ssh-ed25519"), "no key data after ssh-ed25519");
    assert_eq!(
        invalid_text("ssh-ed25519   "),
        "no key data after ssh-ed25519"
    );
}

#[test]
fn unknown_types_and_lone_options_say_what_is_wrong() {
    assert_eq!(
        invalid_text(&format!("ssh-ed448 {} x", blob_of(ED25519))),
        "unknown key type \"ssh-ed448\""
    );
    assert_eq!(
        invalid_text("no-pty,restrict"),
        "options are not followed by a key"
    );
    assert_eq!(
        invalid_text(&format!("no-pty ssh-foo {}", blob_of(ED25519))),
        "unknown key type \"ssh-foo\" after the options"
    );
}

#[test]
fn certificates_are_refused() {
    let why = invalid_text("ssh-ed25519-cert-v01@openssh.com AAAA cert");
    assert!(why.contains("is a certificate"), "{why}");
}

#[test]
fn control_characters_make_the_line_invalid() {
    assert_eq!(
        invalid_text(&format!("{ED25519}\u{0}evil")),
        format!("control character U+0000 at column {}", ED25519.len() + 1)
    );
    let why = invalid_text(&format!("{ED25519} \u{1b}[2Jcleared"));
    assert!(why.starts_with("control character U+001B"), "{why}");
    // A lone CR in the middle of a line is not a line ending.
    let why = invalid_text(&format!("ssh-ed25519\r{}", blob_of(ED25519)));
    assert!(why.starts_with("control character U+000D"), "{why}");
    // C1 controls are control characters too.
    let why = invalid_text(&format!("{ED25519} \u{9b}31m"));
    assert!(why.starts_with("control character U+009B"), "{why}");
}

#[test]
fn duplicates_keep_the_first_line_whatever_the_options() {
    let text = format!(
        "{ED25519}\n{RSA2048}\nno-pty {ED25519}\n{}\n",
        // Same blob, another comment.
        format_args!("ssh-ed25519 {} other-comment", blob_of(ED25519))
    );
    let parsed = parse(&text);
    assert_eq!(parsed.keys.len(), 2);
    assert_eq!(parsed.keys[0].options, None);
    assert_eq!(parsed.keys[0].comment.as_deref(), Some("alice@laptop"));
    assert_eq!(
        parsed.dropped,
        vec![
            DroppedLine {
                line: 3,
                reason: DropReason::Duplicate { first_line: 1 }
            },
            DroppedLine {
                line: 4,
                reason: DropReason::Duplicate { first_line: 1 }
            },
        ]
    );
}

#[test]
fn a_dropped_line_does_not_make_a_later_copy_a_duplicate() {
    let text = format!("environment=\"A=1\" {ED25519}\n{ED25519}\n");
    let parsed = parse(&text);
    assert_eq!(parsed.keys.len(), 1);
    assert_eq!(
        parsed.dropped,
        vec![DroppedLine {
            line: 1,
            reason: DropReason::ForbiddenOption("environment".into())
        }]
    );
}

#[test]
fn different_keys_are_not_duplicates() {
    assert_eq!(parse(&format!("{ED25519}\n{ED25519_BOB}\n")).keys.len(), 2);
}

#[test]
fn invalid_utf8_costs_only_its_line() {
    let mut bytes = format!("{ED25519}\n").into_bytes();
    bytes.extend_from_slice(format!("{ED25519_BOB} Jos").as_bytes());
    bytes.push(0xE9); // Latin-1 é
    bytes.extend_from_slice(format!("\n{RSA2048}\n").as_bytes());
    let parsed = parse_authorized_keys_bytes(&bytes, &KeyPolicy::default());
    let comments: Vec<_> = parsed.keys.iter().map(|k| k.comment.clone()).collect();
    assert_eq!(
        comments,
        vec![
            Some("alice@laptop".to_string()),
            Some("rsa2048".to_string())
        ]
    );
    assert_eq!(parsed.dropped.len(), 1);
    assert_eq!(parsed.dropped[0].line, 2);
    assert_eq!(
        parsed.dropped[0].reason,
        DropReason::Invalid(format!(
            "not valid UTF-8 (at byte {} of the line)",
            ED25519_BOB.len() + 5
        ))
    );
}

#[test]
fn line_numbers_count_every_line() {
    let text = format!("# keys\n\n{DSA}\n{RSA1024}\ngarbage\n{ED25519}\n{ED25519}\n{SK_ED25519}\n");
    let parsed = parse(&text);
    let lines: Vec<_> = parsed.dropped.iter().map(|d| d.line).collect();
    assert_eq!(lines, [1, 2, 3, 4, 5, 7]);
    assert_eq!(parsed.keys.len(), 2);
    let problems = parsed
        .dropped
        .iter()
        .filter(|d| d.reason.is_problem())
        .count();
    assert_eq!(problems, 4);
}

#[test]
fn reasons_read_well_and_serialize_with_a_kind() {
    assert_eq!(
        DropReason::RsaTooShort {
            bits: 1024,
            min: 2048
        }
        .to_string(),
        "RSA key of 1024 bits is shorter than the minimum of 2048 bits"
    );
    assert_eq!(
        DroppedLine {
            line: 7,
            reason: DropReason::Duplicate { first_line: 3 }
        }
        .to_string(),
        "line 7: duplicate of the key on line 3"
    );
    assert_eq!(
        DropReason::Invalid("key data is not valid base64".into()).to_string(),
        "invalid: key data is not valid base64"
    );
    assert_eq!(
        DropReason::ForbiddenOption("no-pty".into()).to_string(),
        "option \"no-pty\" is in [keys] forbidden_options"
    );
    let json = |reason: DropReason| serde_json::to_value(reason).unwrap_or_default();
    assert_eq!(
        json(DropReason::RsaTooShort {
            bits: 1024,
            min: 2048
        }),
        serde_json::json!({"kind": "rsa_too_short", "detail": {"bits": 1024, "min": 2048}})
    );
    assert_eq!(
        json(DropReason::Blank),
        serde_json::json!({"kind": "blank"})
    );
    assert_eq!(
        json(DropReason::TypeNotAllowed("ssh-rsa".into())),
        serde_json::json!({"kind": "type_not_allowed", "detail": "ssh-rsa"})
    );
}

#[test]
fn the_default_policy_is_the_spec_default() {
    let policy = KeyPolicy::default();
    assert_eq!(policy.min_rsa_bits, 2048);
    assert_eq!(
        policy.forbidden_options,
        BTreeSet::from(["cert-authority".to_string(), "environment".to_string()])
    );
    assert_eq!(policy.allowed_types.len(), 7);
    assert!(!policy.allowed_types.contains("ssh-dss"));
    assert!(
        policy
            .allowed_types
            .contains("sk-ecdsa-sha2-nistp256@openssh.com")
    );
}

#[test]
fn bidi_overrides_and_line_separators_are_refused_wherever_they_are() {
    for c in [
        '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
        '\u{2068}', '\u{2069}', '\u{2028}', '\u{2029}', '\u{200F}',
    ] {
        // In the comment: "alice@laptop" shown reversed or on two lines in a report.
        let why = invalid_text(&format!("{ED25519} alice{c}@laptop"));
        assert!(
            why.starts_with(&format!(
                "invisible text-direction or line-separator character U+{:04X} at column",
                u32::from(c)
            )),
            "{why}"
        );
        // In a forced command, where it would disguise what runs.
        let why = invalid_text(&format!("command=\"echo {c}safe\" {ED25519}"));
        assert!(why.starts_with("invisible text-direction"), "{why}");
    }
    // Other non-ASCII text in a comment is fine.
    assert_eq!(
        kept(&format!("{ED25519} José's clé 🔑")).comment.as_deref(),
        Some("alice@laptop José's clé 🔑")
    );
}

#[test]
fn keys_past_max_keys_per_user_are_dropped_with_their_lines() {
    let text = format!("{ED25519}\n# note\n{ECDSA256}\n{ECDSA384}\nbogus\n{ECDSA521}\n");
    let mut parsed = parse(&text);
    assert_eq!(parsed.keys.len(), 4);
    parsed.limit_keys(2);
    assert_eq!(
        parsed
            .keys
            .iter()
            .map(|key| key.key_type.as_str())
            .collect::<Vec<_>>(),
        ["ssh-ed25519", "ecdsa-sha2-nistp256"]
    );
    let lines: Vec<(usize, String)> = parsed
        .dropped
        .iter()
        .map(|dropped| (dropped.line, dropped.reason.to_string()))
        .collect();
    let too_many = "more than [keys] max_keys_per_user (2) keys; only the first 2 are published";
    assert_eq!(lines[0], (2, "comment".to_string()));
    assert_eq!(lines[1], (4, too_many.to_string()));
    assert!(lines[2].1.starts_with("invalid:"), "{lines:?}");
    assert_eq!(lines[3], (6, too_many.to_string()));
    assert!(DropReason::TooManyKeys { max: 2 }.is_problem());
    // At or under the cap nothing changes.
    let mut under = parse(&text);
    under.limit_keys(4);
    assert_eq!(under, parse(&text));
}

#[test]
fn principals_without_cert_authority_is_refused_as_sshd_refuses_it() {
    let why = invalid_text(&format!(r#"principals="alice" {ED25519}"#));
    assert!(why.contains("honoured only with cert-authority"), "{why}");
}
