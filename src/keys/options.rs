//! The options field of an authorized_keys line, read the way sshd reads it
//! (OpenSSH `sshkey_advance_past_options` and `sshauthopt_parse`).
//!
//! This module owns the syntax only: where the options end, which option names exist, and which
//! values sshd would refuse to parse. It never rewrites the options text (keyhole publishes it
//! verbatim) and never decides policy (which options are forbidden is the caller's business).

use thiserror::Error;

/// Flag options that sshd also accepts with a `no-` prefix (`no-pty`, `no-port-forwarding`, ...).
const NEGATABLE_FLAGS: &[&str] = &[
    "port-forwarding",
    "agent-forwarding",
    "x11-forwarding",
    "touch-required",
    "verify-required",
    "pty",
    "user-rc",
];

/// Flag options that sshd accepts only as written.
const PLAIN_FLAGS: &[&str] = &["restrict", "cert-authority"];

/// Options that take a double-quoted value (`name="value"`).
const VALUED: &[&str] = &[
    "command",
    "principals",
    "from",
    "expiry-time",
    "environment",
    "permitopen",
    "permitlisten",
    "tunnel",
];

/// Options sshd refuses to see twice on one line ("multiple \"command\" clauses").
const SINGLE_USE: &[&str] = &["command", "principals", "from"];

/// Why sshd would refuse a line's options. The texts name the offending option so that a user
/// reading the report can fix their file without knowing sshd's sources.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionsError {
    #[error("unterminated quoted string in options")]
    UnterminatedQuote,
    #[error("empty option in options list")]
    Empty,
    #[error("unsupported option \"{0}\"")]
    Unsupported(String),
    #[error("option \"{0}\" takes no value")]
    UnexpectedValue(String),
    #[error("option \"{0}\" needs a double-quoted value, as in {0}=\"...\"")]
    UnquotedValue(String),
    #[error("unexpected text after the quoted value of option \"{0}\"")]
    TrailingText(String),
    #[error("option \"{0}\" given more than once")]
    Repeated(String),
    #[error(
        "invalid environment string \"{0}\" (expected NAME=value, NAME made of letters, digits and _)"
    )]
    Environment(String),
    #[error(
        "invalid expiry-time \"{0}\" (expected YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, optionally ending in Z)"
    )]
    ExpiryTime(String),
    #[error("invalid tunnel \"{0}\" (expected a device number or \"any\")")]
    Tunnel(String),
    #[error("invalid {name} \"{value}\" (expected host:port, port being a number or *)")]
    Permit { name: String, value: String },
}

/// Is `name` an option sshd understands in authorized_keys (case-insensitive, `no-` forms
/// included)? Lets the settings reject a misspelt `forbidden_options` entry, which would
/// otherwise silently forbid nothing.
pub fn is_sshd_option_name(name: &str) -> bool {
    classify(&name.to_ascii_lowercase()).is_some()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Flag,
    Valued,
}

/// `name` must already be lowercase.
fn classify(name: &str) -> Option<Kind> {
    let unnegated = name.strip_prefix("no-").unwrap_or(name);
    if PLAIN_FLAGS.contains(&name) || NEGATABLE_FLAGS.contains(&unnegated) {
        Some(Kind::Flag)
    } else if VALUED.contains(&name) {
        Some(Kind::Valued)
    } else {
        None
    }
}

/// Splits `line` (leading whitespace already skipped) into the options text and the rest,
/// exactly where sshd does: at the first space or tab outside double quotes, `\"` being an
/// escaped quote.
pub fn split_options(line: &str) -> Result<(&str, &str), OptionsError> {
    let bytes = line.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if bytes.get(i + 1) == Some(&b'"') => i += 1,
            b'"' => quoted = !quoted,
            b' ' | b'\t' if !quoted => break,
            _ => {}
        }
        i += 1;
    }
    if quoted {
        return Err(OptionsError::UnterminatedQuote);
    }
    // `i` is at an ASCII byte or the end, so both halves are on char boundaries.
    Ok(line.split_at(i))
}

/// One option as written on the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOption {
    /// Lowercased, `no-` prefix kept: `No-PTY` is `no-pty`.
    pub name: String,
    /// The unquoted value (`\"` turned into `"`), for valued options.
    pub value: Option<String>,
}

/// Parses an options text (as returned by [`split_options`]) into its options, refusing what
/// sshd refuses, so that a line keyhole publishes is a line sshd will honour.
pub fn parse_options(text: &str) -> Result<Vec<KeyOption>, OptionsError> {
    let mut options: Vec<KeyOption> = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (option, after) = next_option(rest)?;
        if SINGLE_USE.contains(&option.name.as_str())
            && options.iter().any(|seen| seen.name == option.name)
        {
            return Err(OptionsError::Repeated(option.name));
        }
        options.push(option);
        // sshd accepts a trailing comma right before the key ("no-pty, ssh-ed25519 ..."), so an
        // empty remainder after a comma is fine; an empty option between commas is not.
        rest = match after.strip_prefix(',') {
            Some(next) => next,
            None => after,
        };
    }
    Ok(options)
}

/// Reads one option from the start of `text`; returns it and the text after it (which is
/// empty or starts with a comma).
fn next_option(text: &str) -> Result<(KeyOption, &str), OptionsError> {
    let name_end = text.find(['=', ',', '"']).unwrap_or(text.len());
    let raw_name = &text[..name_end];
    if raw_name.is_empty() {
        return Err(if text.starts_with(',') {
            OptionsError::Empty
        } else {
            OptionsError::Unsupported(text.chars().take(20).collect())
        });
    }
    let name = raw_name.to_ascii_lowercase();
    let after_name = &text[name_end..];
    match classify(&name) {
        None => Err(OptionsError::Unsupported(raw_name.to_string())),
        Some(Kind::Flag) => {
            if after_name.is_empty() || after_name.starts_with(',') {
                Ok((KeyOption { name, value: None }, after_name))
            } else {
                Err(OptionsError::UnexpectedValue(name))
            }
        }
        Some(Kind::Valued) => {
            let Some(quoted) = after_name.strip_prefix("=\"") else {
                return Err(OptionsError::UnquotedValue(name));
            };
            let (value, after_value) = dequote(quoted).ok_or(OptionsError::UnterminatedQuote)?;
            if !(after_value.is_empty() || after_value.starts_with(',')) {
                return Err(OptionsError::TrailingText(name));
            }
            check_value(&name, &value)?;
            Ok((
                KeyOption {
                    name,
                    value: Some(value),
                },
                after_value,
            ))
        }
    }
}

/// Reads a quoted value up to its closing quote (the opening one already consumed), turning
/// `\"` into `"` and leaving every other backslash alone, as sshd's `opt_dequote` does.
fn dequote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if chars.peek().map(|&(_, next)| next) == Some('"') => {
                value.push('"');
                chars.next();
            }
            '"' => return Some((value, &text[i + 1..])),
            _ => value.push(c),
        }
    }
    None
}

/// The value checks sshd makes while parsing (not the ones it makes at login time, such as
/// matching `from=` against the client address).
fn check_value(name: &str, value: &str) -> Result<(), OptionsError> {
    match name {
        "environment" => {
            let valid = value.split_once('=').is_some_and(|(var, _)| {
                var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
            if valid {
                Ok(())
            } else {
                Err(OptionsError::Environment(value.to_string()))
            }
        }
        "expiry-time" => {
            if is_absolute_time(value) {
                Ok(())
            } else {
                Err(OptionsError::ExpiryTime(value.to_string()))
            }
        }
        "tunnel" => {
            // SSH_TUNID_MAX: sshd reserves the two values above it.
            let valid = value == "any"
                || (!value.is_empty()
                    && value.bytes().all(|b| b.is_ascii_digit())
                    && value.parse::<u32>().is_ok_and(|n| n <= 0x7fff_fffd));
            if valid {
                Ok(())
            } else {
                Err(OptionsError::Tunnel(value.to_string()))
            }
        }
        "permitopen" | "permitlisten" => {
            // permitlisten alone allows a bare port, meaning "any listen address".
            let bare_port_allowed = name == "permitlisten" && !value.contains(':');
            let port = if bare_port_allowed {
                Some(value)
            } else {
                host_port(value).map(|(_, port)| port)
            };
            if port.is_some_and(is_permit_port) {
                Ok(())
            } else {
                Err(OptionsError::Permit {
                    name: name.to_string(),
                    value: value.to_string(),
                })
            }
        }
        _ => Ok(()),
    }
}

/// sshd's `parse_absolute_time`: YYYYMMDD[HHMM[SS]] with an optional trailing Z for UTC.
fn is_absolute_time(value: &str) -> bool {
    let digits = value.strip_suffix(['Z', 'z']).unwrap_or(value).as_bytes();
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let field = |at: usize| u32::from(digits[at] - b'0') * 10 + u32::from(digits[at + 1] - b'0');
    let (month, day) = (field(4), field(6));
    let time_ok = match digits.len() {
        8 => true,
        12 => field(8) <= 23 && field(10) <= 59,
        _ => field(8) <= 23 && field(10) <= 59 && field(12) <= 61,
    };
    (1..=12).contains(&month) && (1..=31).contains(&day) && time_ok
}

/// Splits `host:port` or `[v6-address]:port` the way sshd's `hpdelim2` does (`/` also
/// separates); `None` when there is no port part or the host is empty.
fn host_port(value: &str) -> Option<(&str, &str)> {
    let (host, port) = if let Some(bracketed) = value.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        (host, after.strip_prefix([':', '/'])?)
    } else {
        value.split_once([':', '/'])?
    };
    (!host.is_empty()).then_some((host, port))
}

fn is_permit_port(port: &str) -> bool {
    port == "*"
        || (!port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|n| n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        match parse_options(text) {
            Ok(options) => options.into_iter().map(|o| o.name).collect(),
            Err(err) => panic!("{text:?} should parse, got: {err}"),
        }
    }

    #[test]
    fn split_stops_at_first_unquoted_space_or_tab() {
        assert_eq!(
            split_options(r#"command="echo a b",no-pty ssh-ed25519 AAAA"#),
            Ok((r#"command="echo a b",no-pty"#, " ssh-ed25519 AAAA"))
        );
        assert_eq!(
            split_options("no-pty\tssh-ed25519 AAAA"),
            Ok(("no-pty", "\tssh-ed25519 AAAA"))
        );
    }

    #[test]
    fn split_treats_backslash_quote_as_part_of_the_string() {
        let line = r#"command="echo \"a b\" c" ssh-ed25519 AAAA"#;
        assert_eq!(
            split_options(line),
            Ok((r#"command="echo \"a b\" c""#, " ssh-ed25519 AAAA"))
        );
    }

    #[test]
    fn split_refuses_an_unterminated_quote() {
        assert_eq!(
            split_options(r#"command="echo ssh-ed25519 AAAA"#),
            Err(OptionsError::UnterminatedQuote)
        );
    }

    #[test]
    fn parses_flags_and_quoted_values_with_commas_and_escaped_quotes() {
        let options = match parse_options(
            r#"command="echo \"a,b\"",from="10.0.0.0/8,!10.1.0.0/16",no-pty"#,
        ) {
            Ok(options) => options,
            Err(err) => panic!("{err}"),
        };
        assert_eq!(
            options,
            vec![
                KeyOption {
                    name: "command".into(),
                    value: Some(r#"echo "a,b""#.into())
                },
                KeyOption {
                    name: "from".into(),
                    value: Some("10.0.0.0/8,!10.1.0.0/16".into())
                },
                KeyOption {
                    name: "no-pty".into(),
                    value: None
                },
            ]
        );
    }

    #[test]
    fn names_are_case_insensitive_and_keep_the_no_prefix() {
        assert_eq!(
            names(r#"No-PTY,RESTRICT,Environment="A=1",no-X11-forwarding,pty"#),
            [
                "no-pty",
                "restrict",
                "environment",
                "no-x11-forwarding",
                "pty"
            ]
        );
    }

    #[test]
    fn accepts_every_option_sshd_knows() {
        let all = concat!(
            "restrict,cert-authority,port-forwarding,no-port-forwarding,agent-forwarding,",
            "no-agent-forwarding,x11-forwarding,no-x11-forwarding,touch-required,no-touch-required,",
            "verify-required,pty,no-pty,user-rc,no-user-rc,",
            r#"command="true",principals="a,b",from="*.example.com",expiry-time="20301231Z","#,
            r#"environment="LANG=C",permitopen="db:5432",permitopen="[::1]:22",permitlisten="8080","#,
            r#"permitlisten="localhost:*",tunnel="0""#
        );
        assert_eq!(names(all).len(), 25);
    }

    #[test]
    fn accepts_a_trailing_comma_like_sshd() {
        assert_eq!(names("no-pty,"), ["no-pty"]);
    }

    #[test]
    fn refuses_what_sshd_refuses() {
        let cases: &[(&str, OptionsError)] = &[
            ("no-ptyx", OptionsError::Unsupported("no-ptyx".into())),
            (
                "no-restrict",
                OptionsError::Unsupported("no-restrict".into()),
            ),
            ("no-pty,,restrict", OptionsError::Empty),
            (",no-pty", OptionsError::Empty),
            (
                r#"no-pty="x""#,
                OptionsError::UnexpectedValue("no-pty".into()),
            ),
            (
                "command=true",
                OptionsError::UnquotedValue("command".into()),
            ),
            ("command", OptionsError::UnquotedValue("command".into())),
            (
                r#"command="a"b"#,
                OptionsError::TrailingText("command".into()),
            ),
            (
                r#"command="a",command="b""#,
                OptionsError::Repeated("command".into()),
            ),
            (
                r#"from="a",FROM="b""#,
                OptionsError::Repeated("from".into()),
            ),
            (
                r#"environment="NOEQUALS""#,
                OptionsError::Environment("NOEQUALS".into()),
            ),
            (
                r#"environment="A-B=1""#,
                OptionsError::Environment("A-B=1".into()),
            ),
            (
                r#"expiry-time="2030""#,
                OptionsError::ExpiryTime("2030".into()),
            ),
            (
                r#"expiry-time="20301331""#,
                OptionsError::ExpiryTime("20301331".into()),
            ),
            (r#"tunnel="tun0""#, OptionsError::Tunnel("tun0".into())),
            (
                r#"permitopen="db""#,
                OptionsError::Permit {
                    name: "permitopen".into(),
                    value: "db".into(),
                },
            ),
            (
                r#"permitopen="db:0""#,
                OptionsError::Permit {
                    name: "permitopen".into(),
                    value: "db:0".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_options(text).as_ref(), Err(expected), "{text}");
        }
    }

    #[test]
    fn repeated_environment_and_expiry_are_allowed_like_sshd() {
        assert_eq!(
            names(r#"environment="A=1",environment="B=2",expiry-time="20300101",expiry-time="20290101""#).len(),
            4
        );
    }

    #[test]
    fn knows_option_names_for_settings_validation() {
        assert!(is_sshd_option_name("environment"));
        assert!(is_sshd_option_name("No-Agent-Forwarding"));
        assert!(is_sshd_option_name("cert-authority"));
        assert!(!is_sshd_option_name("enviroment"));
        assert!(!is_sshd_option_name("no-cert-authority"));
    }
}
