//! The keys stage: turns the text of one user's `authorized_keys` into the keys keyhole may
//! publish, reading every line the way sshd does (`man 8 sshd`, AUTHORIZED_KEYS FILE FORMAT),
//! then applying the deployment's key policy (`[keys]` in keyhole.toml).
//!
//! Each line is `[options] keytype base64-blob [comment]`. A line is kept only if sshd would
//! honour it *and* the policy allows it; every other line is dropped with its 1-based line
//! number and a reason the user can act on. The options are published verbatim; only the
//! separators between fields are normalised.
//!
//! This module is pure: it never reads files (that is `homes`), never decides who gets the keys
//! (that is `resolve`), and never computes cryptography by hand (decoding and fingerprints come
//! from the `ssh-key` crate).

mod fingerprint;
pub mod merge;
mod options;

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

pub use fingerprint::{Fingerprint, FingerprintError};
pub use options::KeyOption;
pub use options::{OptionsError, is_sshd_option_name, parse_options, split_options};

/// The `[keys] allowed_types` default (SPEC.md): what keyhole publishes unless told otherwise.
pub const DEFAULT_ALLOWED_TYPES: &[&str] = &[
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
];

/// Every key type keyhole can decode and check, hence every value `allowed_types` may hold.
/// (`ssh-dss` is decodable but always refused, so it is not listed.)
pub const SUPPORTED_KEY_TYPES: &[&str] = DEFAULT_ALLOWED_TYPES;

/// The `[keys] forbidden_options` default. `environment` can change what a forced command or the
/// login shell does (`LD_PRELOAD`, `PATH`) where sshd's `PermitUserEnvironment` is on;
/// `cert-authority` turns the key into a CA: anyone holding a certificate it signs logs in, past
/// `[deny] fingerprints` and past attribution (sshd's `%f` is then the certificate's key).
pub const DEFAULT_FORBIDDEN_OPTIONS: &[&str] = &["cert-authority", "environment"];

/// The `[keys] max_keys_per_user` default: more than anyone needs for their devices and security
/// keys, few enough that one member cannot fill a group file (and every instance's cache) with
/// thousands of lines.
pub const DEFAULT_MAX_KEYS_PER_USER: u32 = 32;

/// The `[keys] min_rsa_bits` default.
pub const DEFAULT_MIN_RSA_BITS: u32 = 2048;

/// sshd itself refuses RSA moduli below this (SSH_RSA_MINIMUM_MODULUS_SIZE), whatever
/// keyhole's policy says, so publishing such a key would only pretend to grant access.
const SSHD_MIN_RSA_BITS: u32 = 1024;
/// ... and above this (OPENSSH_RSA_MAX_MODULUS_SIZE).
const SSHD_MAX_RSA_BITS: u32 = 16384;

/// Names sshd recognises as a key type at the start of a key (sshkey.c `sshkey_type_from_name`).
/// A first token in this list means the line has no options. Some of them are signature
/// algorithms or certificates that keyhole then refuses, but recognising them keeps the
/// reason precise ("type mismatch", "certificate") instead of "unsupported option".
const SSHD_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "webauthn-sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
    "rsa-sha2-256",
    "rsa-sha2-512",
    "ssh-dss",
    "ssh-xmss@openssh.com",
];

/// sshd's case-insensitive short names for plain key types ("ED25519", "RSA", ...).
const SSHD_SHORT_NAMES: &[&str] = &[
    "ed25519",
    "ed25519-sk",
    "ecdsa",
    "ecdsa-sk",
    "rsa",
    "dsa",
    "xmss",
];

/// Certificate types sshd recognises; keyhole publishes plain keys only.
const SSHD_CERTIFICATE_TYPES: &[&str] = &[
    "ssh-ed25519-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "ssh-dss-cert-v01@openssh.com",
    "ssh-xmss-cert-v01@openssh.com",
];

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn is_sshd_key_type(token: &str) -> bool {
    SSHD_KEY_TYPES.contains(&token)
        || SSHD_CERTIFICATE_TYPES.contains(&token)
        || SSHD_SHORT_NAMES
            .iter()
            .any(|short| short.eq_ignore_ascii_case(token))
}

/// What keys a deployment accepts (`[keys]` in keyhole.toml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Key types that may be published. `ssh-dss` is refused even if listed.
    pub allowed_types: BTreeSet<String>,
    /// RSA keys with a shorter modulus are dropped.
    pub min_rsa_bits: u32,
    /// Option names (case-insensitive, as written: `no-pty` is its own name) that make a line
    /// be dropped.
    pub forbidden_options: BTreeSet<String>,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            allowed_types: DEFAULT_ALLOWED_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect(),
            min_rsa_bits: DEFAULT_MIN_RSA_BITS,
            forbidden_options: DEFAULT_FORBIDDEN_OPTIONS
                .iter()
                .map(|o| o.to_string())
                .collect(),
        }
    }
}

/// A key line that sshd would honour and the policy allows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuthorizedKey {
    /// The options text exactly as the user wrote it.
    pub options: Option<String>,
    pub key_type: String,
    /// The base64 blob as given (keyhole only accepts canonical base64, so this is also the
    /// canonical spelling).
    pub blob: String,
    /// The comment, without control characters (tabs become spaces).
    pub comment: Option<String>,
    pub fingerprint: Fingerprint,
}

impl AuthorizedKey {
    /// The line written to a group file: options (verbatim), type, blob, comment, separated by
    /// single spaces, no line terminator.
    pub fn line(&self) -> String {
        let mut line = String::new();
        if let Some(options) = &self.options {
            line.push_str(options);
            line.push(' ');
        }
        line.push_str(&self.key_type);
        line.push(' ');
        line.push_str(&self.blob);
        if let Some(comment) = &self.comment {
            line.push(' ');
            line.push_str(comment);
        }
        line
    }
}

/// Why a line did not become a published key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum DropReason {
    Blank,
    Comment,
    /// The same key (same blob, whatever the options) was already kept from an earlier line.
    Duplicate {
        first_line: usize,
    },
    /// sshd would not honour the line; the text says precisely why.
    Invalid(String),
    TypeNotAllowed(String),
    /// DSA keys are never published, whatever `allowed_types` says.
    Dss,
    RsaTooShort {
        bits: u32,
        min: u32,
    },
    /// The lowercase name of the forbidden option.
    ForbiddenOption(String),
    /// The person already has `[keys] max_keys_per_user` keys from earlier lines.
    TooManyKeys {
        max: usize,
    },
}

impl DropReason {
    /// Blank lines and comments are expected in a hand-written file; everything else means a
    /// key the user probably meant to use and will not get.
    pub fn is_problem(&self) -> bool {
        !matches!(self, Self::Blank | Self::Comment)
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blank => f.write_str("blank line"),
            Self::Comment => f.write_str("comment"),
            Self::Duplicate { first_line } => {
                write!(f, "duplicate of the key on line {first_line}")
            }
            Self::Invalid(why) => write!(f, "invalid: {why}"),
            Self::TypeNotAllowed(key_type) => {
                write!(f, "key type {key_type} is not in [keys] allowed_types")
            }
            Self::Dss => f.write_str("ssh-dss (DSA) keys are never accepted"),
            Self::RsaTooShort { bits, min } => {
                write!(
                    f,
                    "RSA key of {bits} bits is shorter than the minimum of {min} bits"
                )
            }
            Self::ForbiddenOption(name) => {
                write!(f, "option \"{name}\" is in [keys] forbidden_options")?;
                match forbidden_because(name) {
                    Some(why) => write!(f, " ({why})"),
                    None => Ok(()),
                }
            }
            Self::TooManyKeys { max } => write!(
                f,
                "more than [keys] max_keys_per_user ({max}) keys; only the first {max} are published"
            ),
        }
    }
}

/// Why a default-forbidden option is dangerous, in words for the owner of the dropped line.
fn forbidden_because(name: &str) -> Option<&'static str> {
    match name {
        "cert-authority" => {
            Some("a member's own CA would let in any key they sign, past [deny] and attribution")
        }
        "environment" => {
            Some("environment variables can change what the login shell or a forced command runs")
        }
        _ => None,
    }
}

/// A line that was not published, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DroppedLine {
    /// 1-based.
    pub line: usize,
    pub reason: DropReason,
}

impl fmt::Display for DroppedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// The outcome of reading one authorized_keys file.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ParsedKeys {
    /// In file order.
    pub keys: Vec<AuthorizedKey>,
    /// In file order.
    pub dropped: Vec<DroppedLine>,
    /// The line of each kept key (parallel to `keys`), for [`ParsedKeys::limit_keys`].
    #[serde(skip)]
    key_lines: Vec<usize>,
}

impl ParsedKeys {
    /// Keeps the first `max` keys in file order; every later one is dropped as
    /// [`DropReason::TooManyKeys`], so the owner is told which lines did not make it.
    pub fn limit_keys(&mut self, max: usize) {
        if self.keys.len() <= max {
            return;
        }
        self.keys.truncate(max);
        for line in self.key_lines.drain(max..) {
            self.dropped.push(DroppedLine {
                line,
                reason: DropReason::TooManyKeys { max },
            });
        }
        self.dropped.sort_by_key(|dropped| dropped.line);
    }
}

/// Parses an authorized_keys file given as text.
pub fn parse_authorized_keys(text: &str, policy: &KeyPolicy) -> ParsedKeys {
    parse_authorized_keys_bytes(text.as_bytes(), policy)
}

/// Parses an authorized_keys file as read from disk. Bytes rather than text because one line
/// with a stray Latin-1 comment must cost the user that line, not the whole file.
pub fn parse_authorized_keys_bytes(bytes: &[u8], policy: &KeyPolicy) -> ParsedKeys {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let mut parsed = ParsedKeys::default();
    let mut kept_at: HashMap<Fingerprint, usize> = HashMap::new();
    if bytes.is_empty() {
        return parsed;
    }
    // A final "\n" ends the last line rather than starting an empty one.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let outcome = match std::str::from_utf8(raw) {
            Ok(line) => parse_line(line, policy),
            Err(err) => Err(DropReason::Invalid(format!(
                "not valid UTF-8 (at byte {} of the line)",
                err.valid_up_to() + 1
            ))),
        };
        let reason = match outcome {
            Ok(key) => match kept_at.get(&key.fingerprint) {
                Some(&first_line) => DropReason::Duplicate { first_line },
                None => {
                    kept_at.insert(key.fingerprint.clone(), number);
                    parsed.keys.push(key);
                    parsed.key_lines.push(number);
                    continue;
                }
            },
            Err(reason) => reason,
        };
        parsed.dropped.push(DroppedLine {
            line: number,
            reason,
        });
    }
    parsed
}

/// Reads one line (terminator already removed) into a key, or the reason it is dropped.
/// Duplicates are the caller's business: they depend on the lines before.
fn parse_line(raw: &str, policy: &KeyPolicy) -> Result<AuthorizedKey, DropReason> {
    let line = skip_blanks(raw);
    if line.is_empty() {
        return Err(DropReason::Blank);
    }
    if line.starts_with('#') {
        return Err(DropReason::Comment);
    }
    // sshd reads a C string, so a NUL silently cuts the line short, and a stray control
    // character in a comment could rewrite an operator's terminal when the group file is shown.
    // Neither is worth the doubt: the line goes.
    if let Some((column, c)) = raw
        .chars()
        .enumerate()
        .find(|&(_, c)| c.is_control() && c != '\t')
    {
        return Err(invalid(format!(
            "control character U+{:04X} at column {}",
            u32::from(c),
            column + 1
        )));
    }

    // Direction overrides make a comment or a forced command read, in a report, a review or a
    // terminal, differently from what it is; line and paragraph separators break a line where
    // sshd does not. Refused rather than stripped: the published line is always what the user
    // wrote, so what a reviewer sees is what sshd gets.
    if let Some((column, c)) = raw.chars().enumerate().find(|&(_, c)| is_deceptive(c)) {
        return Err(invalid(format!(
            "invisible text-direction or line-separator character U+{:04X} at column {}",
            u32::from(c),
            column + 1
        )));
    }

    let first = first_token(line);
    let (options, rest) = if is_sshd_key_type(first) {
        (None, line)
    } else {
        let (options, rest) = options::split_options(line).map_err(invalid_options)?;
        let rest = skip_blanks(rest);
        let next = first_token(rest);
        if !is_sshd_key_type(next) {
            let looks_like_options = first.contains(['=', '"', ',']) || is_sshd_option_name(first);
            return Err(invalid(if !looks_like_options {
                format!("unknown key type {}", printable(first))
            } else if next.is_empty() {
                "options are not followed by a key".to_string()
            } else {
                format!("unknown key type {} after the options", printable(next))
            }));
        }
        (Some(options), rest)
    };
    let parsed_options = match options {
        Some(text) => options::parse_options(text).map_err(invalid_options)?,
        None => Vec::new(),
    };

    // sshd checks this when the key is used, not while parsing, but the outcome is the same: the
    // line never lets its owner in (auth2-pubkeyfile.c: "principals on non-CA key").
    let has = |name: &str| parsed_options.iter().any(|option| option.name == name);
    if has("principals") && !has("cert-authority") {
        return Err(invalid(
            "principals=\"...\" is honoured only with cert-authority; sshd refuses this key"
                .to_string(),
        ));
    }

    let key_type = first_token(rest);
    let rest = skip_blanks(&rest[key_type.len()..]);
    let blob = first_token(rest);
    if blob.is_empty() {
        return Err(invalid(format!("no key data after {key_type}")));
    }
    let comment = skip_blanks(&rest[blob.len()..]).trim_end_matches([' ', '\t']);

    let key = decode_key(key_type, blob)?;

    if key_type == "ssh-dss" {
        return Err(DropReason::Dss);
    }
    if !policy.allowed_types.contains(key_type) {
        return Err(DropReason::TypeNotAllowed(key_type.to_string()));
    }
    if let Some(rsa) = key.rsa() {
        let bits = modulus_bits(&rsa.n)
            .ok_or_else(|| invalid("RSA modulus is not a positive number".to_string()))?;
        if bits > SSHD_MAX_RSA_BITS {
            return Err(invalid(format!(
                "RSA key of {bits} bits is longer than sshd accepts ({SSHD_MAX_RSA_BITS})"
            )));
        }
        let min = policy.min_rsa_bits.max(SSHD_MIN_RSA_BITS);
        if bits < min {
            return Err(DropReason::RsaTooShort { bits, min });
        }
    }
    if let Some(forbidden) = parsed_options.iter().find(|option| {
        policy
            .forbidden_options
            .iter()
            .any(|name| name.eq_ignore_ascii_case(&option.name))
    }) {
        return Err(DropReason::ForbiddenOption(forbidden.name.clone()));
    }

    Ok(AuthorizedKey {
        options: options.map(str::to_string),
        key_type: key_type.to_string(),
        blob: blob.to_string(),
        comment: (!comment.is_empty()).then(|| comment.replace('\t', " ")),
        fingerprint: Fingerprint::of(&key),
    })
}

/// Bidirectional controls (U+202A–U+202E embeddings and overrides, U+2066–U+2069 isolates, the
/// LRM/RLM/ALM marks) and U+2028/U+2029 line and paragraph separators.
fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Decodes the blob and checks it is a well-formed key of the stated type, as sshd's
/// `sshkey_read` does (its own type must match, no trailing bytes).
fn decode_key(key_type: &str, blob: &str) -> Result<ssh_key::public::KeyData, DropReason> {
    if SSHD_CERTIFICATE_TYPES.contains(&key_type) {
        return Err(invalid(format!(
            "{key_type} is a certificate; keyhole publishes plain public keys only"
        )));
    }
    let bytes = STANDARD
        .decode(blob)
        .map_err(|err| invalid(format!("key data is not valid base64 ({err})")))?;
    let blob_type = blob_type(&bytes).ok_or_else(|| {
        invalid(format!(
            "key data is not an SSH public key (stated type {key_type})"
        ))
    })?;
    if blob_type != key_type {
        return Err(invalid(format!(
            "key type mismatch: the line says {key_type} but the key data is {}",
            printable(blob_type)
        )));
    }
    if key_type != "ssh-dss" && !SUPPORTED_KEY_TYPES.contains(&key_type) {
        return Err(invalid(format!(
            "key type {key_type} is not one keyhole can check"
        )));
    }
    let key = ssh_key::PublicKey::from_bytes(&bytes)
        .map_err(|err| invalid(format!("key data is not a valid {key_type} key ({err})")))?;
    // ssh-key re-derives the algorithm name from the parsed key ("ssh-rsa" may come back as an
    // RSA signature algorithm); what it would write back must be exactly what was read, or the
    // fingerprint would not be the one sshd and ssh-keygen compute from these bytes.
    match key.to_bytes() {
        Ok(reencoded) if reencoded == bytes => Ok(key.key_data().clone()),
        _ => Err(invalid(format!(
            "key data is not a canonical {key_type} key"
        ))),
    }
}

/// The key type a wire-format blob names in its first field (RFC 4253 `string`).
fn blob_type(bytes: &[u8]) -> Option<&str> {
    let length = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    let name = bytes.get(4..4 + usize::try_from(length).ok()?)?;
    std::str::from_utf8(name).ok()
}

/// Keeps a name taken from untrusted bytes short and free of control characters in reports.
fn printable(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(64)
        .collect();
    format!("\"{cleaned}\"")
}

/// Bits in a positive modulus, as OpenSSL's BN_num_bits (and so `ssh-keygen -l`) counts them.
fn modulus_bits(n: &ssh_key::Mpint) -> Option<u32> {
    let bytes = n.as_positive_bytes()?;
    let first = *bytes.first()?;
    let bytes_len = u32::try_from(bytes.len()).ok()?;
    Some((bytes_len - 1) * 8 + (8 - first.leading_zeros()))
}

/// sshd separates fields with spaces and tabs only.
fn skip_blanks(text: &str) -> &str {
    text.trim_start_matches([' ', '\t'])
}

fn first_token(text: &str) -> &str {
    text.split([' ', '\t']).next().unwrap_or("")
}

fn invalid(why: String) -> DropReason {
    DropReason::Invalid(why)
}

fn invalid_options(err: OptionsError) -> DropReason {
    DropReason::Invalid(format!("bad options: {err}"))
}

#[cfg(test)]
mod tests;
