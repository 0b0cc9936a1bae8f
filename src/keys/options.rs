//! The options field of an authorized_keys line, read the way sshd reads it
//! (OpenSSH `sshkey_advance_past_options` and `sshauthopt_parse` in `auth-options.c`).
//!
//! This module owns the syntax only: where the options end, which option names exist, and which
//! values sshd would refuse to parse. It never rewrites the options text (keyhole publishes it
//! verbatim) and never decides policy (which options are forbidden is the caller's business).
//!
//! [`parse_options`] is a port of `sshauthopt_parse`, step for step: option names are matched
//! case-insensitively as prefixes in sshd's order (so `no-ptyx` is `no-pty` followed by junk, and
//! refused), an empty option between commas is skipped as sshd skips it, and a comma that ends the
//! field is refused (`unexpected end-of-options`; OpenSSH's own `trailing comma` test). A unit
//! test replays every case of OpenSSH's `regress/unittests/authopt/tests.c` that applies to
//! authorized_keys (the certificate cases do not: keyhole publishes no certificates), and
//! `tests/integration/instance/sshd_options.rs` asks the installed sshd about each case keyhole decides.
//!
//! Where keyhole is stricter than sshd, on purpose, and says why in the dropped line's reason:
//! - a trailing comma (`restrict, ssh-ed25519 …`): sshd hands its parser the rest of the line, so
//!   after the comma it sees the space before the key and accepts the line (measured with
//!   OpenSSH 9.2); the parser itself refuses a field that ends in a comma, as OpenSSH's tests
//!   assert, so whether such a line works depends on what follows it. keyhole refuses it and says
//!   to remove the comma;
//! - numbers (ports, tunnel devices) must be plain decimal digits: sshd's `strtonum` would also
//!   take `+22` or ` 22`, which no one writes on purpose;
//! - a `permitopen`/`permitlisten` port must be a number or `*`: sshd also looks a name up in
//!   the instance's `/etc/services`, which the publisher cannot see, so `permitopen="db:ssh"`
//!   would mean different things on different machines;
//! - `expiry-time` must be digits (with `Z` or `UTC` for UTC), as its manual page documents.

use thiserror::Error;

/// Flag options in the order sshd tries them, and whether a `no-` form exists.
const FLAGS: &[(&str, bool)] = &[
    ("restrict", false),
    ("cert-authority", false),
    ("port-forwarding", true),
    ("agent-forwarding", true),
    ("x11-forwarding", true),
    ("touch-required", true),
    ("verify-required", true),
    ("pty", true),
    ("user-rc", true),
];

/// Options that take a double-quoted value (`name="value"`), in the order sshd tries them.
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

/// sshd's SSH_AUTHOPT_ENV_MAX and SSH_AUTHOPT_PERMIT_MAX: checked before each further option,
/// against how many it already holds.
const ENV_MAX: usize = 1024;
const PERMIT_MAX: usize = 4096;
/// sshd's SSH_TUNID_MAX: the two values above it are reserved.
const TUNNEL_MAX: u32 = 0x7fff_fffd;
/// NI_MAXHOST: a permitopen/permitlisten host must be shorter.
const HOST_MAX: usize = 1025;

/// Why sshd would refuse a line's options. The texts name the offending option so that a user
/// reading the report can fix their file without knowing sshd's sources.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionsError {
    #[error("unterminated quoted string in options")]
    UnterminatedQuote,
    #[error(
        "the options end with a comma, which OpenSSH's option parser refuses (\"unexpected end-of-options\"); remove the comma"
    )]
    TrailingComma,
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
    #[error("more \"{name}\" options than sshd accepts on one line ({max})")]
    TooMany { name: String, max: usize },
    #[error(
        "invalid environment string \"{0}\" (expected NAME=value, NAME made of letters, digits and _)"
    )]
    Environment(String),
    #[error(
        "invalid expiry-time \"{0}\" (expected YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, optionally ending in Z or UTC)"
    )]
    ExpiryTime(String),
    #[error("invalid tunnel \"{0}\" (expected a device number or \"any\")")]
    Tunnel(String),
    #[error(
        "invalid {name} \"{value}\" (expected host:port, port being a number from 1 to 65535 or *)"
    )]
    Permit { name: String, value: String },
}

/// Is `name` an option sshd understands in authorized_keys (case-insensitive, `no-` forms
/// included)? Lets the settings reject a misspelt `forbidden_options` entry, which would
/// otherwise silently forbid nothing.
pub fn is_sshd_option_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let unnegated = name.strip_prefix("no-");
    VALUED.contains(&name.as_str())
        || FLAGS
            .iter()
            .any(|&(flag, negatable)| flag == name || (negatable && unnegated == Some(flag)))
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
    let mut environment_names: Vec<String> = Vec::new();
    let (mut permitopen, mut permitlisten) = (0_usize, 0_usize);
    let mut rest = text;
    while !rest.is_empty() {
        if let Some((option, after)) = next_option(rest)? {
            let count = |name: &str| match name {
                "environment" => Some((environment_names.len(), ENV_MAX)),
                "permitopen" => Some((permitopen, PERMIT_MAX)),
                "permitlisten" => Some((permitlisten, PERMIT_MAX)),
                _ => None,
            };
            if let Some((held, max)) = count(&option.name)
                && held > max
            {
                return Err(OptionsError::TooMany {
                    name: option.name,
                    max,
                });
            }
            if SINGLE_USE.contains(&option.name.as_str())
                && options.iter().any(|seen| seen.name == option.name)
            {
                return Err(OptionsError::Repeated(option.name));
            }
            match (option.name.as_str(), option.value.as_deref()) {
                ("environment", Some(value)) => {
                    // The first value of a name wins; later ones are ignored, not refused.
                    let name = value.split_once('=').map_or(value, |(name, _)| name);
                    if !environment_names.iter().any(|seen| seen == name) {
                        environment_names.push(name.to_owned());
                    }
                }
                ("permitopen", _) => permitopen += 1,
                ("permitlisten", _) => permitlisten += 1,
                _ => {}
            }
            options.push(option);
            rest = after;
        }
        // What follows an option (or, when nothing matched, the text itself) must be the end or
        // a comma; sshd skips the comma, so an empty option between two commas is no error, but
        // a comma with nothing after it is.
        if rest.is_empty() {
            break;
        }
        match rest.strip_prefix(',') {
            Some("") => return Err(OptionsError::TrailingComma),
            Some(next) => rest = next,
            None => return Err(OptionsError::Unsupported(token(rest))),
        }
    }
    Ok(options)
}

/// The option name at the start of `text`, for messages.
fn token(text: &str) -> String {
    let end = text.find([',', '=', '"']).unwrap_or(text.len());
    let name = if end == 0 { text } else { &text[..end] };
    name.chars().take(40).collect()
}

/// sshd's `opt_flag`: `flag` (or `no-flag` when `negatable`) as a case-insensitive prefix of
/// `text`; gives the name as written (lowercased) and the text after it.
fn match_flag<'t>(text: &'t str, flag: &str, negatable: bool) -> Option<(String, &'t str)> {
    let (negated, unprefixed) = match strip_prefix_ignore_case(text, "no-") {
        Some(after) if negatable => (true, after),
        _ => (false, text),
    };
    let after = strip_prefix_ignore_case(unprefixed, flag)?;
    let name = if negated {
        format!("no-{flag}")
    } else {
        flag.to_owned()
    };
    Some((name, after))
}

fn strip_prefix_ignore_case<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Reads the option at the start of `text` the way one turn of sshd's loop does. `None` when no
/// option matches (the caller then decides between a skipped empty option and an unknown one);
/// otherwise the option and the text after it, which the caller checks is the end or a comma.
fn next_option(text: &str) -> Result<Option<(KeyOption, &str)>, OptionsError> {
    for &(flag, negatable) in FLAGS {
        if let Some((name, after)) = match_flag(text, flag, negatable) {
            return match after.chars().next() {
                None | Some(',') => Ok(Some((KeyOption { name, value: None }, after))),
                Some('=') => Err(OptionsError::UnexpectedValue(name)),
                // sshd: "unknown key option" (`no-ptyx` is `no-pty` and then junk).
                Some(_) => Err(OptionsError::Unsupported(token(text))),
            };
        }
    }
    for &name in VALUED {
        // sshd's `opt_match`: the name, case-insensitively, then '='.
        let Some(after_equals) =
            strip_prefix_ignore_case(text, name).and_then(|after| after.strip_prefix('='))
        else {
            continue;
        };
        let Some(quoted) = after_equals.strip_prefix('"') else {
            return Err(OptionsError::UnquotedValue(name.to_owned()));
        };
        let (value, after_value) = dequote(quoted).ok_or(OptionsError::UnterminatedQuote)?;
        if !(after_value.is_empty() || after_value.starts_with(',')) {
            return Err(OptionsError::TrailingText(name.to_owned()));
        }
        check_value(name, &value)?;
        let option = KeyOption {
            name: name.to_owned(),
            value: Some(value),
        };
        return Ok(Some((option, after_value)));
    }
    // A valued option's name without '=' ("command,", "from") is not matched by sshd either;
    // say what is missing rather than "unsupported".
    let written = token(text).to_ascii_lowercase();
    if VALUED.contains(&written.as_str()) {
        return Err(OptionsError::UnquotedValue(written));
    }
    Ok(None)
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
            // sshd's `valid_env_name`: at least one character, all alphanumeric or '_'.
            let valid = value.split_once('=').is_some_and(|(var, _)| {
                !var.is_empty() && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
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
            let valid = value.eq_ignore_ascii_case("any") || decimal_at_most(value, TUNNEL_MAX);
            if valid {
                Ok(())
            } else {
                Err(OptionsError::Tunnel(value.to_string()))
            }
        }
        "permitopen" | "permitlisten" => {
            // permitlisten alone takes a bare port, meaning "*:port" (sshd's `handle_permit`).
            let bare_port = name == "permitlisten" && !value.contains(':');
            let full = if bare_port {
                format!("*:{value}")
            } else {
                value.to_owned()
            };
            let valid = host_port(&full).is_some_and(|(host, port)| {
                host.len() < HOST_MAX
                    && (port == "*"
                        || (decimal_at_most(port, 65535) && port.bytes().any(|b| b != b'0')))
            });
            if valid {
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

/// A plain decimal number no greater than `max`.
fn decimal_at_most(text: &str, max: u32) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u64>().is_ok_and(|n| n <= u64::from(max))
}

/// sshd's `parse_absolute_time`: YYYYMMDD[HHMM[SS]], then `Z` or `UTC` for UTC; sshd also
/// refuses the one value that comes out as 0 (the epoch).
fn is_absolute_time(value: &str) -> bool {
    let digits = if value.len() > 1 && value.ends_with(['Z', 'z']) {
        &value[..value.len() - 1]
    } else if value.len() > 3
        && value
            .get(value.len() - 3..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case("utc"))
    {
        &value[..value.len() - 3]
    } else {
        value
    }
    .as_bytes();
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
    let epoch = digits.starts_with(b"19700101") && digits[8..].iter().all(|&b| b == b'0');
    (1..=12).contains(&month) && (1..=31).contains(&day) && time_ok && !epoch
}

/// Splits `host:port` or `[v6-address]:port` the way sshd's `hpdelim2` does (`/` also
/// separates); `None` where sshd finds no host (an unclosed `[`, junk after `]`) or no port.
fn host_port(value: &str) -> Option<(&str, &str)> {
    let split_at = if value.starts_with('[') {
        let close = value.find(']')?;
        match value.as_bytes().get(close + 1) {
            Some(b':' | b'/') => close + 1,
            _ => return None,
        }
    } else {
        value.find([':', '/'])?
    };
    Some((&value[..split_at], &value[split_at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sshd makes of an options field (the fields of `struct sshauthopt` that OpenSSH's
    /// tests compare), computed from what [`parse_options`] returns.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Effective {
        port_forwarding: bool,
        agent_forwarding: bool,
        x11_forwarding: bool,
        pty: bool,
        user_rc: bool,
        restricted: bool,
        cert_authority: bool,
        command: Option<String>,
        principals: Option<String>,
        from: Option<String>,
        environment: Vec<String>,
        permitopen: Vec<String>,
        tunnel: Option<String>,
    }

    /// `default_authkey_opts()` in OpenSSH's tests.
    fn defaults() -> Effective {
        Effective {
            port_forwarding: true,
            agent_forwarding: true,
            x11_forwarding: true,
            pty: true,
            user_rc: true,
            restricted: false,
            cert_authority: false,
            command: None,
            principals: None,
            from: None,
            environment: Vec::new(),
            permitopen: Vec::new(),
            tunnel: None,
        }
    }

    /// `default_authkey_restrict_opts()`.
    fn restricted() -> Effective {
        Effective {
            port_forwarding: false,
            agent_forwarding: false,
            x11_forwarding: false,
            pty: false,
            user_rc: false,
            restricted: true,
            ..defaults()
        }
    }

    /// Applies options in order, as `sshauthopt_parse` does to its result.
    fn effective(options: &[KeyOption]) -> Effective {
        let mut e = defaults();
        for option in options {
            let value = option.value.clone();
            match option.name.as_str() {
                "restrict" => {
                    // Only the permissions: what other options set stays.
                    let r = restricted();
                    (e.port_forwarding, e.agent_forwarding, e.x11_forwarding) =
                        (r.port_forwarding, r.agent_forwarding, r.x11_forwarding);
                    (e.pty, e.user_rc, e.restricted) = (r.pty, r.user_rc, r.restricted);
                }
                "cert-authority" => e.cert_authority = true,
                "port-forwarding" => e.port_forwarding = true,
                "no-port-forwarding" => e.port_forwarding = false,
                "agent-forwarding" => e.agent_forwarding = true,
                "no-agent-forwarding" => e.agent_forwarding = false,
                "x11-forwarding" => e.x11_forwarding = true,
                "no-x11-forwarding" => e.x11_forwarding = false,
                "pty" => e.pty = true,
                "no-pty" => e.pty = false,
                "user-rc" => e.user_rc = true,
                "no-user-rc" => e.user_rc = false,
                "command" => e.command = value,
                "principals" => e.principals = value,
                "from" => e.from = value,
                "tunnel" => e.tunnel = value,
                "permitopen" => e.permitopen.extend(value),
                "environment" => {
                    let value = value.unwrap_or_default();
                    let name = value.split_once('=').map_or("", |(name, _)| name);
                    // First match wins.
                    if !e
                        .environment
                        .iter()
                        .any(|seen| seen.starts_with(&format!("{name}=")))
                    {
                        e.environment.push(value);
                    }
                }
                _ => {}
            }
        }
        e
    }

    /// What sshd does with a line's options: the field ends at the first blank outside quotes.
    fn sshd_parse(input: &str) -> Result<Effective, OptionsError> {
        let (text, _) = split_options(input)?;
        parse_options(text).map(|options| effective(&options))
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    /// Every case of `test_authkeys_parse` in OpenSSH's regress/unittests/authopt/tests.c
    /// (openssh-portable 0ef0f5a, tests.c 1.5), in its order. `Some(expected)`: sshd accepts it
    /// and makes `expected` of it; `None`: sshd refuses the line.
    #[test]
    fn agrees_with_every_case_of_openssh_authopt_tests() {
        let mut cases: Vec<(String, Option<Effective>)> = vec![
            ("".into(), Some(defaults())),
            (" ".into(), Some(defaults())),
            ("restrict".into(), Some(restricted())),
            ("restrict,".into(), None),
            (",".into(), None),
            ("BLAH".into(), None),
            ("BLAH,".into(), None),
            ("BLAH ".into(), None),
            (
                r#"tunnel="1""#.into(),
                Some(Effective {
                    tunnel: Some("1".into()),
                    ..defaults()
                }),
            ),
            (
                r#"tunnel="any""#.into(),
                Some(Effective {
                    tunnel: Some("any".into()),
                    ..defaults()
                }),
            ),
            (r#"tunnel="blah""#.into(), None),
        ];
        // FLAG_TEST: alone and after "restrict,".
        type Set = fn(&mut Effective);
        let flags: &[(&str, Set)] = &[
            ("cert-authority", |e| e.cert_authority = true),
            ("port-forwarding", |e| e.port_forwarding = true),
            ("agent-forwarding", |e| e.agent_forwarding = true),
            ("x11-forwarding", |e| e.x11_forwarding = true),
            ("pty", |e| e.pty = true),
            ("user-rc", |e| e.user_rc = true),
            ("no-port-forwarding", |e| e.port_forwarding = false),
            ("no-agent-forwarding", |e| e.agent_forwarding = false),
            ("no-x11-forwarding", |e| e.x11_forwarding = false),
            ("no-pty", |e| e.pty = false),
            ("no-user-rc", |e| e.user_rc = false),
        ];
        for (keyword, set) in flags {
            let (mut alone, mut after_restrict) = (defaults(), restricted());
            set(&mut alone);
            set(&mut after_restrict);
            cases.push(((*keyword).into(), Some(alone)));
            cases.push((format!("restrict,{keyword}"), Some(after_restrict)));
        }
        cases.push(("no-cert-authority".into(), None));
        // STRING_TEST: keyword="value", and restrict,keyword="value",restrict.
        type SetString = fn(&mut Effective, String);
        let strings_tests: &[(&str, &str, SetString)] = &[
            ("command", "/bin/true", |e, v| e.command = Some(v)),
            ("principals", "gregor,josef,K", |e, v| {
                e.principals = Some(v)
            }),
            ("from", "127.0.0.0/8", |e, v| e.from = Some(v)),
        ];
        for (keyword, value, set) in strings_tests {
            let (mut alone, mut restricted_twice) = (defaults(), restricted());
            set(&mut alone, (*value).into());
            set(&mut restricted_twice, (*value).into());
            cases.push((format!(r#"{keyword}="{value}""#), Some(alone)));
            cases.push((
                format!(r#"restrict,{keyword}="{value}",restrict"#),
                Some(restricted_twice),
            ));
        }
        cases.push(("command=oops".into(), None));
        cases.push(("principals=estragon".into(), None));
        cases.push(("from=127.0.0.1".into(), None));
        // ARRAY_TEST.
        let arrays: &[(&str, Effective)] = &[
            (
                r#"environment="foo=1",environment="bar=2""#,
                Effective {
                    environment: strings(&["foo=1", "bar=2"]),
                    ..defaults()
                },
            ),
            (
                r#"environment="foo=1",environment="foo=2""#,
                Effective {
                    environment: strings(&["foo=1"]),
                    ..defaults()
                },
            ),
            (
                r#"permitopen="foo:123",permitopen="bar:*""#,
                Effective {
                    permitopen: strings(&["foo:123", "bar:*"]),
                    ..defaults()
                },
            ),
        ];
        for (keywords, expected) in arrays {
            cases.push(((*keywords).into(), Some(expected.clone())));
            let restricted_twice = Effective {
                environment: expected.environment.clone(),
                permitopen: expected.permitopen.clone(),
                ..restricted()
            };
            cases.push((
                format!("restrict,{keywords},restrict"),
                Some(restricted_twice),
            ));
        }
        for refused in [r#"environment=",=bah""#, "foo:bar", "foo:", "foo", "[:"] {
            cases.push((refused.into(), None));
        }

        assert_eq!(cases.len(), 54, "every case of tests.c is in the table");
        for (input, expected) in &cases {
            match (sshd_parse(input), expected) {
                (Ok(got), Some(expected)) => assert_eq!(&got, expected, "{input:?}"),
                (Err(_), None) => {}
                (got, expected) => panic!("{input:?}: sshd gives {expected:?}, keyhole {got:?}"),
            }
        }
    }

    /// Cases beyond OpenSSH's tests, each read off auth-options.c and misc.c.
    #[test]
    fn agrees_with_auth_options_c_beyond_its_tests() {
        let accepted = [
            // An empty option between commas is skipped; so is a leading one.
            ",no-pty",
            "no-pty,,restrict",
            // Names are case-insensitive, the `no-` prefix too.
            "NO-PTY,Restrict,No-X11-Forwarding",
            r#"TUNNEL="ANY""#,
            r#"expiry-time="20301231235959UTC""#,
            r#"expiry-time="20301231z""#,
            r#"permitopen="[::1]:22""#,
            r#"permitopen="host/22""#,
            r#"permitopen=":22""#,
            r#"permitlisten="8080""#,
            r#"permitlisten="localhost:*""#,
            r#"environment="A_1=""#,
            r#"environment="A=1",environment="A=2",expiry-time="20300101",expiry-time="20290101""#,
            r#"command="echo \"a,b\" c""#,
        ];
        for input in accepted {
            assert!(
                sshd_parse(input).is_ok(),
                "{input:?}: {:?}",
                sshd_parse(input)
            );
        }
        let refused: &[(&str, OptionsError)] = &[
            ("no-ptyx", OptionsError::Unsupported("no-ptyx".into())),
            (
                "restrictx,pty",
                OptionsError::Unsupported("restrictx".into()),
            ),
            (
                "no-restrict",
                OptionsError::Unsupported("no-restrict".into()),
            ),
            ("restrict,", OptionsError::TrailingComma),
            ("no-pty,,", OptionsError::TrailingComma),
            (
                r#"no-pty="x""#,
                OptionsError::UnexpectedValue("no-pty".into()),
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
                r#"environment="=1""#,
                OptionsError::Environment("=1".into()),
            ),
            (
                r#"environment="A-B=1""#,
                OptionsError::Environment("A-B=1".into()),
            ),
            (
                r#"environment="NOEQUALS""#,
                OptionsError::Environment("NOEQUALS".into()),
            ),
            (
                r#"expiry-time="2030""#,
                OptionsError::ExpiryTime("2030".into()),
            ),
            (
                r#"expiry-time="20301331""#,
                OptionsError::ExpiryTime("20301331".into()),
            ),
            (
                r#"expiry-time="19700101Z""#,
                OptionsError::ExpiryTime("19700101Z".into()),
            ),
            (
                r#"tunnel="2147483646""#,
                OptionsError::Tunnel("2147483646".into()),
            ),
            (r#"tunnel="tun0""#, OptionsError::Tunnel("tun0".into())),
        ];
        for (input, expected) in refused {
            assert_eq!(sshd_parse(input).as_ref(), Err(expected), "{input}");
        }
        for permit in [
            r#"permitopen="db""#,
            r#"permitopen="db:0""#,
            r#"permitopen="db:65536""#,
            r#"permitopen="[::1]""#,
            r#"permitopen="[::1""#,
            r#"permitopen="[::1]x:22""#,
            r#"permitlisten="host/80""#,
        ] {
            assert!(
                matches!(sshd_parse(permit), Err(OptionsError::Permit { .. })),
                "{permit}"
            );
        }
        // sshd's limits per line: more than 1024 environment names, 4096 permitopens.
        let env: Vec<String> = (0..=1025)
            .map(|i| format!(r#"environment="V{i}=1""#))
            .collect();
        assert_eq!(sshd_parse(&env[..1025].join(",")).map(|_| ()), Ok(()));
        assert_eq!(
            sshd_parse(&env.join(",")),
            Err(OptionsError::TooMany {
                name: "environment".into(),
                max: 1024
            })
        );
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
        let line = r#"command="echo \"a b\" c" ssh-ed25519 AAAA"#;
        assert_eq!(
            split_options(line),
            Ok((r#"command="echo \"a b\" c""#, " ssh-ed25519 AAAA"))
        );
        assert_eq!(
            split_options(r#"command="echo ssh-ed25519 AAAA"#),
            Err(OptionsError::UnterminatedQuote)
        );
    }

    #[test]
    fn options_keep_their_written_names_and_unquoted_values() {
        let options =
            parse_options(r#"No-PTY,command="echo \"a,b\"",RESTRICT"#).unwrap_or_default();
        assert_eq!(
            options,
            vec![
                KeyOption {
                    name: "no-pty".into(),
                    value: None
                },
                KeyOption {
                    name: "command".into(),
                    value: Some(r#"echo "a,b""#.into())
                },
                KeyOption {
                    name: "restrict".into(),
                    value: None
                },
            ]
        );
    }

    #[test]
    fn knows_option_names_for_settings_validation() {
        assert!(is_sshd_option_name("environment"));
        assert!(is_sshd_option_name("No-Agent-Forwarding"));
        assert!(is_sshd_option_name("cert-authority"));
        assert!(!is_sshd_option_name("enviroment"));
        assert!(!is_sshd_option_name("no-cert-authority"));
        assert!(!is_sshd_option_name("no-command"));
    }
}
