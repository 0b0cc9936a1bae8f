//! Phase one: the file's spanned document checked against [`KEYS`], the table of every key
//! keyhole reads, with its shape.
//!
//! Every problem of shape is reported, each at its `FILE:LINE:COL` and in words that say how to
//! fix it: an unknown section or key (with the nearest known one, or the section it belongs
//! in), a section that is not a table, a value of the wrong kind (a number where a duration in
//! quotes belongs), an integer too large to read. The walk never stops at the first problem; a
//! value with a problem is left out, so the checks of phase two see only well-shaped values and
//! do not repeat the problem as "is required". Only a TOML syntax error ends the walk: after one,
//! the parser cannot tell where the next key starts.
//!
//! This module never judges a value's meaning (whether a URL is an LDAP URL): the sections do.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, Source, did_you_mean};

/// The shape of a setting: what the file must hold there, and how an environment string is
/// turned into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    /// Text humantime reads ("30s", "7d"); checked for meaning in phase two.
    Duration,
    Integer,
    /// A number; an integer is accepted (`max_removed_fraction = 1`).
    Float,
    Bool,
    /// A list of texts.
    List,
    /// One text or a list of texts (`[ldap] url`).
    TextOrList,
    /// A table of names to texts (`[ssh.bastions]`); never from the environment.
    Map,
}

impl Kind {
    /// What a value of this kind is, in the words of the message about a wrong one.
    pub(super) fn expected(self) -> &'static str {
        match self {
            Kind::Text => "text in double quotes",
            Kind::Duration => "a duration in double quotes, like \"30s\", \"5m\" or \"7d\"",
            Kind::Integer => "a whole number",
            Kind::Float => "a number like 0.25",
            Kind::Bool => "true or false",
            Kind::List => "a list of texts in double quotes, like [\"a\", \"b\"]",
            Kind::TextOrList => {
                "text in double quotes or a list of them, like \"ldaps://dc1.corp.example.com\" or [\"ldaps://dc1\", \"ldaps://dc2\"]"
            }
            Kind::Map => "a table of names to texts in double quotes",
        }
    }
}

/// Every key of every section, with its shape: what [`read`] accepts and the table behind
/// `KEYHOLE_<SECTION>_<KEY>`. The root's keys have the section "". A test checks that it matches
/// what `RawSettings` accepts and what the example file documents.
pub(super) const KEYS: &[(&str, &str, Kind)] = &[
    ("", "policy", Kind::Text),
    ("ldap", "url", Kind::TextOrList),
    ("ldap", "srv", Kind::Text),
    ("ldap", "dns_server", Kind::Text),
    ("ldap", "bind_state_file", Kind::Text),
    ("ldap", "bind_dn", Kind::Text),
    ("ldap", "password_file", Kind::Text),
    ("ldap", "base_dn", Kind::Text),
    ("ldap", "ca_file", Kind::Text),
    ("ldap", "timeout", Kind::Duration),
    ("ldap", "page_size", Kind::Integer),
    ("ldap", "member_range", Kind::Integer),
    ("ldap", "lockout_retry", Kind::Duration),
    ("ldap", "auth", Kind::Text),
    ("ldap", "keytab", Kind::Text),
    ("ldap", "principal", Kind::Text),
    ("ldap", "krb5_conf", Kind::Text),
    ("ldap", "trust_system_roots", Kind::Bool),
    ("ldap", "full_read_interval", Kind::Duration),
    ("homes", "root", Kind::Text),
    ("homes", "home_prefix", Kind::Text),
    ("homes", "read_timeout", Kind::Duration),
    ("homes", "concurrency", Kind::Integer),
    ("homes", "owner", Kind::Text),
    ("homes", "nss_suffix", Kind::Text),
    ("homes", "sentinel", Kind::Text),
    ("homes", "max_carry", Kind::Duration),
    ("homes", "full_read_interval", Kind::Duration),
    ("s3", "bucket", Kind::Text),
    ("s3", "prefix", Kind::Text),
    ("s3", "region", Kind::Text),
    ("s3", "endpoint", Kind::Text),
    ("s3", "force_path_style", Kind::Bool),
    ("s3", "sse", Kind::Text),
    ("s3", "kms_key_id", Kind::Text),
    ("keys", "allowed_types", Kind::List),
    ("keys", "min_rsa_bits", Kind::Integer),
    ("keys", "forbidden_options", Kind::List),
    ("keys", "max_keys_per_user", Kind::Integer),
    ("keys", "revocation_retention", Kind::Duration),
    ("safety", "max_removed_fraction", Kind::Float),
    ("safety", "max_removed_users", Kind::Integer),
    ("safety", "lock_file", Kind::Text),
    ("signing", "key_file", Kind::Text),
    ("signing", "validity", Kind::Duration),
    ("instance", "login_user", Kind::Text),
    ("instance", "access_groups", Kind::List),
    ("instance", "cache_dir", Kind::Text),
    ("instance", "cache_ttl", Kind::Duration),
    ("instance", "max_stale", Kind::Duration),
    ("instance", "fetch_timeout", Kind::Duration),
    ("instance", "verify_key", Kind::Text),
    ("instance", "allow_unsigned", Kind::Bool),
    ("canary", "key_dir", Kind::Text),
    ("canary", "ssh_config", Kind::Text),
    ("canary", "known_hosts", Kind::Text),
    ("canary", "login_user", Kind::Text),
    ("canary", "concurrency", Kind::Integer),
    ("canary", "connect_timeout", Kind::Duration),
    ("canary", "ec2_endpoint", Kind::Text),
    ("canary", "ec2_region", Kind::Text),
    ("canary", "ec2_address", Kind::Text),
    ("canary", "ec2_via", Kind::Text),
    ("instance", "access_groups_tag", Kind::Text),
    ("instance", "access_groups_user_data", Kind::Bool),
    ("instance", "imds_endpoint", Kind::Text),
    ("ssh", "region", Kind::Text),
    ("ssh", "ec2_endpoint", Kind::Text),
    ("ssh", "login_user", Kind::Text),
    ("ssh", "login_user_tag", Kind::Text),
    ("ssh", "access_groups_tag", Kind::Text),
    ("ssh", "verify_key", Kind::Text),
    ("instance", "revoked_keys_file", Kind::Text),
    ("ssh", "bastions", Kind::Map),
];

/// The file's well-shaped entries, where each key was found, and what the environment set.
#[derive(Debug, Default)]
pub(super) struct Document {
    /// The entries with the right shape, as the TOML values `RawSettings` reads.
    pub(super) table: toml::Table,
    /// (section, key) → the span of the key in the file.
    keys: BTreeMap<(String, String), Range<usize>>,
    /// section → the span of its name in its header (or in its first dotted key).
    sections: BTreeMap<String, Range<usize>>,
    /// Keys whose value had the wrong shape: reported and left out.
    broken: BTreeSet<(String, String)>,
    /// (section, key) → the environment variable that set it.
    from_environment: BTreeMap<(String, String), String>,
}

fn pair(section: &str, key: &str) -> (String, String) {
    (section.to_owned(), key.to_owned())
}

impl Document {
    pub(super) fn key_span(&self, section: &str, key: &str) -> Option<Range<usize>> {
        self.keys.get(&pair(section, key)).cloned()
    }

    pub(super) fn section_span(&self, section: &str) -> Option<Range<usize>> {
        self.sections.get(section).cloned()
    }

    pub(super) fn is_broken(&self, section: &str, key: &str) -> bool {
        self.broken.contains(&pair(section, key))
    }

    pub(super) fn variable(&self, section: &str, key: &str) -> Option<&str> {
        self.from_environment
            .get(&pair(section, key))
            .map(String::as_str)
    }

    /// `section.key = value`, from the environment variable `variable` (which wins over the file).
    pub(super) fn set_from_environment(
        &mut self,
        section: &str,
        key: &str,
        variable: &str,
        value: toml::Value,
    ) {
        let target = if section.is_empty() {
            &mut self.table
        } else {
            let entry = self
                .table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            // Sections that are not tables never reach `table`; stay total anyway.
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            match entry {
                toml::Value::Table(inner) => inner,
                _ => return,
            }
        };
        target.insert(key.to_owned(), value);
        self.broken.remove(&pair(section, key));
        self.from_environment
            .insert(pair(section, key), variable.to_owned());
    }
}

/// The sections of the file, in the order of [`KEYS`].
fn sections() -> Vec<&'static str> {
    let mut sections: Vec<&str> = Vec::new();
    for (section, _, _) in KEYS {
        if !section.is_empty() && !sections.contains(section) {
            sections.push(section);
        }
    }
    sections
}

fn kind_of(section: &str, key: &str) -> Option<Kind> {
    KEYS.iter()
        .find(|(s, k, _)| *s == section && *k == key)
        .map(|(_, _, kind)| *kind)
}

/// Reads the file's document and checks its shape, pushing a diagnostic for every problem.
/// `None` after a syntax error (the one diagnostic then pushed).
pub(super) fn read(source: &Source<'_>, diagnostics: &mut Vec<Diagnostic>) -> Option<Document> {
    let root = match DeTable::parse(source.text) {
        Ok(root) => root,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let message = format!("invalid TOML: {}", error.message().trim_end());
            diagnostics.push(source.error(span, message));
            return None;
        }
    };
    let mut walk = Walk {
        source,
        diagnostics,
        document: Document::default(),
    };
    let known_sections = sections();
    for (name, value) in root.get_ref().iter() {
        let name_text: &str = name.get_ref();
        if kind_of("", name_text).is_some() {
            walk.entry("", name_text, name.span(), value);
        } else if known_sections.contains(&name_text) {
            match value.get_ref() {
                DeValue::Table(table) => walk.section(name_text, name.span(), table),
                other => walk.error(
                    value.span(),
                    format!(
                        "{name_text}: must be a section, not {}: write [{name_text}] on a line of its own and its keys below it",
                        found(other)
                    ),
                ),
            }
        } else {
            let hint = root_hint(name_text, &known_sections);
            walk.error(name.span(), format!("{name_text}: {hint}"));
        }
    }
    Some(walk.document)
}

/// What to say about an unknown name at the top of the file.
fn root_hint(name: &str, known_sections: &[&str]) -> String {
    if let Some(homes) = sections_with(name) {
        return format!("belongs in {homes}: move it below that section's header");
    }
    let mut known: Vec<String> = known_sections.iter().map(|s| format!("[{s}]")).collect();
    let root_keys: Vec<&str> = KEYS
        .iter()
        .filter(|(s, _, _)| s.is_empty())
        .map(|(_, k, _)| *k)
        .collect();
    let candidates: Vec<&str> = known_sections
        .iter()
        .copied()
        .chain(root_keys.iter().copied())
        .collect();
    match did_you_mean(name, &candidates) {
        Some(near) if known_sections.contains(&near) => {
            format!("unknown section; did you mean [{near}]?")
        }
        Some(near) => format!("unknown key; did you mean {near}?"),
        None => {
            known.extend(root_keys.iter().map(|k| k.to_string()));
            format!(
                "unknown section or key; the settings have {}",
                known.join(", ")
            )
        }
    }
}

/// "[safety]" or "[instance], [canary] or [ssh]": the sections that have `key`, if any.
fn sections_with(key: &str) -> Option<String> {
    let homes: Vec<String> = KEYS
        .iter()
        .filter(|(s, k, _)| !s.is_empty() && *k == key)
        .map(|(s, _, _)| format!("[{s}]"))
        .collect();
    match homes.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        [init @ .., last] => Some(format!("{} or {last}", init.join(", "))),
    }
}

/// `the text "big"`, `the number 5`, `a list`: a value as the messages name it.
fn found(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(text) => format!("the text {:?}", text.as_ref()),
        DeValue::Integer(number) => format!("the number {number}"),
        DeValue::Float(number) => format!("the number {number}"),
        DeValue::Boolean(flag) => flag.to_string(),
        DeValue::Datetime(when) => format!("the date {when}"),
        DeValue::Array(_) => "a list".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

struct Walk<'a, 'd> {
    source: &'a Source<'a>,
    diagnostics: &'d mut Vec<Diagnostic>,
    document: Document,
}

impl Walk<'_, '_> {
    fn error(&mut self, span: Range<usize>, message: String) {
        self.diagnostics.push(self.source.error(span, message));
    }

    fn section(&mut self, section: &str, header: Range<usize>, table: &DeTable<'_>) {
        self.document
            .sections
            .insert(section.to_owned(), header.clone());
        // An empty section still exists ("[ldap]" alone): its checks say what it lacks.
        self.document
            .table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        for (key, value) in table.iter() {
            let key_text: &str = key.get_ref();
            if kind_of(section, key_text).is_some() {
                self.entry(section, key_text, key.span(), value);
            } else {
                let hint = section_hint(section, key_text);
                self.error(key.span(), format!("{section}.{key_text}: {hint}"));
            }
        }
    }

    /// One known key: its value converted when it has the right shape, else a problem.
    fn entry(
        &mut self,
        section: &str,
        key: &str,
        key_span: Range<usize>,
        value: &toml::Spanned<DeValue<'_>>,
    ) {
        self.document.keys.insert(pair(section, key), key_span);
        let Some(kind) = kind_of(section, key) else {
            return;
        };
        let name = if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        };
        match convert(kind, key, value) {
            Ok(converted) => {
                let target = if section.is_empty() {
                    &mut self.document.table
                } else {
                    match self.document.table.get_mut(section) {
                        Some(toml::Value::Table(inner)) => inner,
                        _ => return,
                    }
                };
                target.insert(key.to_owned(), converted);
            }
            Err((span, message)) => {
                self.document.broken.insert(pair(section, key));
                self.error(span, format!("{name}: {message}"));
            }
        }
    }
}

/// What to say about an unknown key inside `[section]`.
fn section_hint(section: &str, key: &str) -> String {
    if let Some(homes) = sections_with(key) {
        return format!("is not a key of [{section}]; it belongs in {homes}");
    }
    let keys: Vec<&str> = KEYS
        .iter()
        .filter(|(s, _, _)| *s == section)
        .map(|(_, k, _)| *k)
        .collect();
    match did_you_mean(key, &keys) {
        Some(near) => format!("unknown key; did you mean {near}?"),
        None => format!("unknown key; [{section}] has {}", keys.join(", ")),
    }
}

type Problem = (Range<usize>, String);

/// The TOML value `RawSettings` reads for a value of `kind`, or the problem with it.
fn convert(
    kind: Kind,
    key: &str,
    value: &toml::Spanned<DeValue<'_>>,
) -> Result<toml::Value, Problem> {
    let span = value.span();
    let wrong = || {
        (
            span.clone(),
            format!(
                "must be {}, not {}{}",
                kind.expected(),
                found(value.get_ref()),
                fix(kind, key, value.get_ref())
            ),
        )
    };
    match (kind, value.get_ref()) {
        (Kind::Text | Kind::Duration | Kind::TextOrList, DeValue::String(text)) => {
            Ok(toml::Value::String(text.to_string()))
        }
        (Kind::Integer, DeValue::Integer(number)) => integer(number, span.clone()),
        (Kind::Float, DeValue::Integer(number)) => {
            integer(number, span.clone()).map(|value| match value {
                toml::Value::Integer(n) => toml::Value::Float(n as f64),
                other => other,
            })
        }
        (Kind::Float, DeValue::Float(number)) => number
            .as_str()
            .parse()
            .map(toml::Value::Float)
            .map_err(|_| wrong()),
        (Kind::Bool, DeValue::Boolean(flag)) => Ok(toml::Value::Boolean(*flag)),
        (Kind::List | Kind::TextOrList, DeValue::Array(items)) => {
            let mut texts = Vec::new();
            for item in items {
                match item.get_ref() {
                    DeValue::String(text) => texts.push(toml::Value::String(text.to_string())),
                    other => {
                        return Err((
                            item.span(),
                            format!(
                                "every entry must be text in double quotes, not {}",
                                found(other)
                            ),
                        ));
                    }
                }
            }
            Ok(toml::Value::Array(texts))
        }
        (Kind::Map, DeValue::Table(entries)) => {
            let mut map = toml::Table::new();
            for (name, entry) in entries.iter() {
                let name_text: &str = name.get_ref();
                match entry.get_ref() {
                    DeValue::String(text) => {
                        map.insert(name_text.to_owned(), toml::Value::String(text.to_string()));
                    }
                    other => {
                        return Err((
                            entry.span(),
                            format!(
                                "{name_text:?} must be text in double quotes, not {}",
                                found(other)
                            ),
                        ));
                    }
                }
            }
            Ok(toml::Value::Table(map))
        }
        _ => Err(wrong()),
    }
}

fn integer(number: &toml::de::DeInteger<'_>, span: Range<usize>) -> Result<toml::Value, Problem> {
    i64::from_str_radix(number.as_str(), number.radix())
        .map(toml::Value::Integer)
        .map_err(|_| (span, format!("{number} is too large")))
}

/// The corrected line, when the mistake is only the quoting: ": write page_size = 200".
fn fix(kind: Kind, key: &str, value: &DeValue<'_>) -> String {
    let scalar = match value {
        DeValue::Integer(number) => Some(number.to_string()),
        DeValue::Float(number) => Some(number.to_string()),
        DeValue::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    };
    match (kind, value) {
        (Kind::Integer, DeValue::String(text)) if text.trim().parse::<i64>().is_ok() => {
            format!(": write {key} = {} without quotes", text.trim())
        }
        (Kind::Float, DeValue::String(text)) if text.trim().parse::<f64>().is_ok() => {
            format!(": write {key} = {} without quotes", text.trim())
        }
        (Kind::Bool, DeValue::String(text))
            if matches!(text.trim().to_lowercase().as_str(), "true" | "false") =>
        {
            format!(
                ": write {key} = {} without quotes",
                text.trim().to_lowercase()
            )
        }
        (Kind::Duration, DeValue::Integer(number)) => {
            format!(": write {key} = \"{number}s\" for seconds (or m, h, d)")
        }
        (Kind::List, DeValue::String(text)) => format!(": write {key} = [{:?}]", text.as_ref()),
        (Kind::Text, _) => scalar
            .map(|text| format!(": write {key} = \"{text}\""))
            .unwrap_or_default(),
        _ => String::new(),
    }
}
