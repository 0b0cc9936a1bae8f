//! The deployment settings, `keyhole.toml` (SPEC.md "The settings").
//!
//! Loading happens in two phases, as in cargo-deny: the file is deserialized into raw structs that
//! reject unknown keys (with the file's line and column), `KEYHOLE_<SECTION>_<KEY>` environment
//! variables are laid over it, and [`RawSettings::validate`] turns the result into the checked
//! [`Settings`] every command uses, collecting every problem rather than stopping at the first.
//!
//! Secrets: the LDAP password never lives in this file or on the command line. It comes from
//! `ldap.password_file` or `KEYHOLE_LDAP_PASSWORD` and is read only when a bind needs it, wrapped in
//! [`Secret`] so that no `Debug` or log line can print it.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::diagnostic::{Diagnostic, Severity};
use crate::exit::{Exit, coded};
use crate::keys::{self, KeyPolicy};

/// Where the settings are looked for when neither `--config` nor `KEYHOLE_CONFIG` says.
pub const DEFAULT_PATH: &str = "/etc/keyhole/keyhole.toml";
/// Environment variable naming the settings file.
pub const CONFIG_ENV: &str = "KEYHOLE_CONFIG";
/// Environment variable holding the LDAP bind password (the alternative to `password_file`).
pub const PASSWORD_ENV: &str = "KEYHOLE_LDAP_PASSWORD";

/// The checked settings. Sections a command does not need may be absent; the accessors say which
/// section is missing and who needs it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The settings file these came from (for messages).
    pub path: PathBuf,
    pub policy: PathBuf,
    ldap: Option<LdapSettings>,
    pub homes: HomesSettings,
    s3: Option<S3Settings>,
    /// `[keys]`: what the keys stage accepts.
    pub keys: KeyPolicy,
    /// `[keys] max_keys_per_user`: keys published per person; later lines are dropped, each with a
    /// problem.
    pub max_keys_per_user: usize,
    /// `[keys] revocation_retention`: how long a key that stopped being published stays on the
    /// revocation list (and only its owner may publish it again).
    pub revocation_retention: Duration,
    pub safety: SafetySettings,
    pub signing: Option<SigningSettings>,
    instance: Option<InstanceSettings>,
    /// `[canary]`: the audit canary (on the publisher: which key to ship; on the auditor: how to
    /// probe).
    pub canary: Option<CanarySettings>,
    /// `[ssh]`: `keyhole ssh` on an engineer's machine.
    ssh: Option<SshSettings>,
}

#[derive(Debug, Clone)]
pub struct CanarySettings {
    /// Holds `current` and `previous` (OpenSSH Ed25519 private keys) and their `.pub`.
    pub key_dir: PathBuf,
    /// Passed to ssh as `-F` after keyhole's own options (bastions' IdentityFile, aliases).
    pub ssh_config: Option<PathBuf>,
    /// The pinned host keys (`UserKnownHostsFile`); probes never accept an unknown host key.
    pub known_hosts: Option<PathBuf>,
    /// The instances' login user, logged in as by probes.
    pub login_user: String,
    /// Probes in flight at once (a bastion's sshd drops connections past `MaxStartups`).
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// `probe --ec2-tag`: where DescribeInstances goes (default: AWS's), in which region
    /// (default: `[s3] region`), which address of an instance is probed, and an optional
    /// bastion (ProxyJump) for every discovered instance.
    pub ec2_endpoint: Option<String>,
    pub ec2_region: Option<String>,
    pub ec2_address: Ec2Address,
    pub ec2_via: Option<String>,
}

/// Which address of a discovered instance a probe connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ec2Address {
    PrivateIp,
    PublicIp,
    PrivateDnsName,
    PublicDnsName,
}

#[derive(Debug, Clone)]
pub struct LdapSettings {
    /// The domain controllers named in `url`, tried in this order (before any found via `srv`).
    pub urls: Vec<String>,
    /// `srv`: the DNS domain whose `_ldap._tcp` SRV records name more DCs (reached over LDAPS).
    pub srv: Option<String>,
    /// `dns_server`: who is asked for the SRV records; `None`: the system's resolvers.
    pub dns_server: Option<std::net::SocketAddr>,
    /// Remembers a bind refused with invalid credentials, so the same secret is never tried
    /// again (see `crate::directory::bind_guard`).
    pub bind_state_file: PathBuf,
    pub bind_dn: String,
    pub password: PasswordSource,
    pub base_dn: String,
    /// `None`: trust the system roots.
    pub ca_file: Option<PathBuf>,
    /// Bounds connecting and every single LDAP operation.
    pub timeout: Duration,
    pub page_size: u32,
    /// `None`: read `member` as the server hands it out (AD ranges it past 1,500 values).
    /// `Some(n)`: ask for `member;range=` slices of `n` values.
    pub member_range: Option<u32>,
    /// `lockout_retry`: after a DC refused the bind because the account is locked out (775) or
    /// outside its logon hours or workstations (530/531), how long before binding again with the
    /// same secret (see `crate::directory::bind_guard`).
    pub lockout_retry: Duration,
    /// How keyhole proves who it is: a simple bind with `bind_dn` and `password`, or Kerberos
    /// (GSSAPI) with a keytab, where `bind_dn` and `password` are not used.
    pub auth: LdapAuth,
    /// `trust_system_roots = true`: with `srv` and no `ca_file`, accept a DC whose certificate
    /// any public root signed. Off by default: see `crate::directory::discovery`.
    pub trust_system_roots: bool,
}

/// `[ldap] auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LdapAuth {
    Simple,
    Gssapi(KerberosSettings),
}

/// `[ldap] auth = "gssapi"`: where the Kerberos credentials come from. No password is read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KerberosSettings {
    /// The client keytab; `None`: `KRB5_CLIENT_KTNAME`, else the Kerberos library's default.
    pub keytab: Option<PathBuf>,
    /// The principal to authenticate as; `None`: the first one in the keytab.
    pub principal: Option<String>,
    /// A krb5.conf for keyhole alone; `None`: `KRB5_CONFIG`, else /etc/krb5.conf.
    pub krb5_conf: Option<PathBuf>,
}

/// Where the LDAP password comes from. Reading it is deferred to the bind.
#[derive(Clone)]
pub enum PasswordSource {
    File(PathBuf),
    Environment(Secret),
}

impl fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::File(path) => write!(f, "File({})", path.display()),
            PasswordSource::Environment(_) => write!(f, "Environment({PASSWORD_ENV})"),
        }
    }
}

impl PasswordSource {
    /// The password, read now. A trailing newline in the file is not part of it.
    pub fn read(&self) -> anyhow::Result<Secret> {
        match self {
            PasswordSource::Environment(secret) => Ok(secret.clone()),
            PasswordSource::File(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("reading the LDAP password file {}", path.display())
                })?;
                let password = text.trim_end_matches(['\n', '\r']);
                if password.is_empty() {
                    anyhow::bail!("the LDAP password file {} is empty", path.display());
                }
                Ok(Secret(password.to_owned()))
            }
        }
    }
}

/// A value that must never be printed: `Debug` and `Display` show a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Secret {
        Secret(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct HomesSettings {
    pub root: PathBuf,
    pub home_prefix: PathBuf,
    pub read_timeout: Duration,
    pub concurrency: usize,
    /// Whose uid the files in a home must belong to.
    pub owner: OwnerSource,
    /// `[homes] sentinel`: a file, relative to `root`, that exists only while the homes are
    /// mounted; when it is missing the run fails before anything is written.
    pub sentinel: Option<PathBuf>,
    /// `[homes] max_carry`: how long a member's published lines are carried while their home is
    /// continuously unreadable; after it they have no keys (reported).
    pub max_carry: Duration,
    /// `[homes] full_read_interval`: how often every member's `authorized_keys` is read whole
    /// even when its identity did not change (see `homes_state`); between full reads only the
    /// homes whose identity changed are read.
    pub full_read_interval: Duration,
}

/// `[homes] owner`: where the uid that must own a user's home, `.ssh` and `authorized_keys`
/// comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerSource {
    /// `"uid_number"` (default): the account's RFC 2307 `uidNumber` in AD.
    UidNumber,
    /// `"nss"`: the publisher's own name service (`getpwnam`) for the sAMAccountName followed by
    /// `suffix` (`[homes] nss_suffix`, e.g. `@corp.example.com`), as SSSD or winbind map it.
    Nss { suffix: String },
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub sse: Option<ServerSideEncryption>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSideEncryption {
    Aes256,
    Kms { key_id: Option<String> },
}

#[derive(Debug, Clone)]
pub struct SafetySettings {
    pub max_removed_fraction: f64,
    pub max_removed_users: usize,
    pub lock_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SigningSettings {
    pub key_file: PathBuf,
    pub validity: Duration,
}

#[derive(Debug, Clone)]
pub struct InstanceSettings {
    pub login_user: String,
    pub access_groups: Vec<String>,
    pub cache_dir: PathBuf,
    pub cache_ttl: Duration,
    pub max_stale: Duration,
    pub fetch_timeout: Duration,
    pub verify_key: Option<String>,
    /// Serve an index without checking a signature (no `verify_key`): an explicit choice, logged
    /// at every refresh, because then whoever can write to the bucket decides who logs in.
    pub allow_unsigned: bool,
    /// Where the host's access groups come from besides `access_groups`: the EC2 instance's
    /// identity, read from IMDS by `refresh` (never at login). `None`: the static list only.
    pub imds: Option<ImdsGroups>,
    /// `[instance] revoked_keys_file`: where `refresh` writes the revocation list for sshd's
    /// `RevokedKeys`. `None`: the default path, written only when a file (the package's) is
    /// there (see [`InstanceSettings::revoked_keys_path`]).
    pub revoked_keys_file: Option<PathBuf>,
}

impl InstanceSettings {
    /// The file sshd's `RevokedKeys` should name: `revoked_keys_file`, else the default.
    pub fn revoked_keys_path(&self) -> &Path {
        self.revoked_keys_file
            .as_deref()
            .unwrap_or(Path::new(crate::instance::revoked::DEFAULT_FILE))
    }
}

/// `[instance] access_groups_tag`, `access_groups_user_data` and `imds_endpoint`: the host's
/// access groups named at launch, in an EC2 tag or in the user data (see
/// [`crate::instance::host_groups`] for the formats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsGroups {
    /// The tag key whose value lists the groups (comma-separated); asked first.
    pub tag: Option<String>,
    /// Whether the user data is read when the tag does not answer.
    pub user_data: bool,
    /// The metadata service, default `http://169.254.169.254`.
    pub endpoint: String,
}

/// IMDS's link-local address: the only endpoint a real instance uses.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

impl Settings {
    /// Finds the settings file (`--config`, else `KEYHOLE_CONFIG`, else [`DEFAULT_PATH`]), reads it,
    /// applies the environment and validates. Any problem is an error marked [`Exit::Invalid`].
    pub fn load(config: Option<&Path>) -> anyhow::Result<Settings> {
        let path = locate(config);
        let text = std::fs::read_to_string(&path).map_err(|error| {
            coded(
                Exit::Invalid,
                anyhow::Error::new(error).context(format!(
                    "reading the settings file {} (choose another with --config or {CONFIG_ENV})",
                    path.display()
                )),
            )
        })?;
        Settings::from_text(&path, &text, std::env::vars()).map_err(|diagnostics| {
            coded(Exit::Invalid, anyhow::anyhow!(list(&diagnostics)))
                .context(format!("invalid settings in {}", path.display()))
        })
    }

    /// Parses, overlays `environment` (pairs like `std::env::vars()`) and validates. Pure but for
    /// nothing: it reads no files, so tests can drive it.
    pub fn from_text(
        path: &Path,
        text: &str,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, Vec<Diagnostic>> {
        let source = crate::diagnostic::Source::new(path, text);
        let at_span = |error: toml::de::Error| {
            vec![source.error(error.span().unwrap_or(0..0), error.message().trim())]
        };
        // First deserialize the file alone, so syntax errors, unknown keys and wrong types point
        // at its lines; then lay the environment over it.
        let from_file = toml::from_str::<RawSettings>(text).map_err(at_span)?;

        let mut diagnostics = Vec::new();
        let mut password_env = None;
        let mut overrides = Vec::new();
        for (name, value) in environment {
            if name == PASSWORD_ENV {
                password_env = Some(Secret(value));
            } else if name.starts_with("KEYHOLE_") && !NOT_OVERRIDES.contains(&name.as_str()) {
                overrides.push((name, value));
            }
        }
        // Without KEYHOLE_* variables (every login on an instance) the file is parsed once.
        let raw = if overrides.is_empty() {
            from_file
        } else {
            let mut table: toml::Table = toml::from_str(text).map_err(at_span)?;
            for (name, value) in &overrides {
                match overlay_env(&mut table, name, value) {
                    Ok(()) => {}
                    Err(message) => diagnostics.push(env_diagnostic(name, message)),
                }
            }
            RawSettings::deserialize(toml::Value::Table(table)).map_err(|error| {
                let mut diagnostics = diagnostics.clone();
                diagnostics.push(env_diagnostic(
                    "KEYHOLE_*",
                    error.message().trim().to_owned(),
                ));
                diagnostics
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let settings = raw.validate(path, base, password_env, &source, &mut diagnostics);
        if crate::diagnostic::has_errors(&diagnostics) {
            return Err(diagnostics);
        }
        for warning in &diagnostics {
            tracing::warn!("{warning}");
        }
        Ok(settings)
    }

    /// `[ldap]`, or an error naming the command that needs it.
    pub fn ldap(&self) -> anyhow::Result<&LdapSettings> {
        self.section(self.ldap.as_ref(), "ldap")
    }

    /// `[s3]`, or an error naming the section.
    pub fn s3(&self) -> anyhow::Result<&S3Settings> {
        self.section(self.s3.as_ref(), "s3")
    }

    /// `[instance]`, or an error naming the section.
    pub fn canary(&self) -> anyhow::Result<&CanarySettings> {
        self.section(self.canary.as_ref(), "canary")
    }

    pub fn instance(&self) -> anyhow::Result<&InstanceSettings> {
        self.section(self.instance.as_ref(), "instance")
    }

    /// `[ssh]`, or an error naming the section.
    pub fn ssh(&self) -> anyhow::Result<&SshSettings> {
        self.section(self.ssh.as_ref(), "ssh")
    }

    fn section<'a, T>(&self, section: Option<&'a T>, name: &str) -> anyhow::Result<&'a T> {
        section.ok_or_else(|| {
            coded(
                Exit::Invalid,
                anyhow::anyhow!(
                    "{}: this command needs the [{name}] section, which is missing",
                    self.path.display()
                ),
            )
        })
    }
}

/// The settings file a command reads: `--config`, else `KEYHOLE_CONFIG`, else [`DEFAULT_PATH`].
pub fn locate(config: Option<&Path>) -> PathBuf {
    if let Some(path) = config {
        return path.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

fn list(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn env_diagnostic(name: &str, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: PathBuf::from(format!("environment variable {name}")),
        line: 0,
        column: 0,
        message,
    }
}

/// The shape of a setting, so an environment string can be turned into the right TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    Float,
    Bool,
    List,
}

/// Every key of every section, with its shape: the table behind `KEYHOLE_<SECTION>_<KEY>`.
/// A test checks that it matches what `RawSettings` accepts and what the example file documents.
const KEYS: &[(&str, &str, Kind)] = &[
    ("", "policy", Kind::Text),
    ("ldap", "url", Kind::List),
    ("ldap", "srv", Kind::Text),
    ("ldap", "dns_server", Kind::Text),
    ("ldap", "bind_state_file", Kind::Text),
    ("ldap", "bind_dn", Kind::Text),
    ("ldap", "password_file", Kind::Text),
    ("ldap", "base_dn", Kind::Text),
    ("ldap", "ca_file", Kind::Text),
    ("ldap", "timeout", Kind::Text),
    ("ldap", "page_size", Kind::Integer),
    ("ldap", "member_range", Kind::Integer),
    ("ldap", "lockout_retry", Kind::Text),
    ("ldap", "auth", Kind::Text),
    ("ldap", "keytab", Kind::Text),
    ("ldap", "principal", Kind::Text),
    ("ldap", "krb5_conf", Kind::Text),
    ("ldap", "trust_system_roots", Kind::Bool),
    ("homes", "root", Kind::Text),
    ("homes", "home_prefix", Kind::Text),
    ("homes", "read_timeout", Kind::Text),
    ("homes", "concurrency", Kind::Integer),
    ("homes", "owner", Kind::Text),
    ("homes", "nss_suffix", Kind::Text),
    ("homes", "sentinel", Kind::Text),
    ("homes", "max_carry", Kind::Text),
    ("homes", "full_read_interval", Kind::Text),
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
    ("keys", "revocation_retention", Kind::Text),
    ("safety", "max_removed_fraction", Kind::Float),
    ("safety", "max_removed_users", Kind::Integer),
    ("safety", "lock_file", Kind::Text),
    ("signing", "key_file", Kind::Text),
    ("signing", "validity", Kind::Text),
    ("instance", "login_user", Kind::Text),
    ("instance", "access_groups", Kind::List),
    ("instance", "cache_dir", Kind::Text),
    ("instance", "cache_ttl", Kind::Text),
    ("instance", "max_stale", Kind::Text),
    ("instance", "fetch_timeout", Kind::Text),
    ("instance", "verify_key", Kind::Text),
    ("instance", "allow_unsigned", Kind::Bool),
    ("canary", "key_dir", Kind::Text),
    ("canary", "ssh_config", Kind::Text),
    ("canary", "known_hosts", Kind::Text),
    ("canary", "login_user", Kind::Text),
    ("canary", "concurrency", Kind::Integer),
    ("canary", "connect_timeout", Kind::Text),
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
];

/// Environment variables that start with `KEYHOLE_` but are not settings overrides.
const NOT_OVERRIDES: &[&str] = &[CONFIG_ENV, PASSWORD_ENV, "KEYHOLE_LOG"];

/// The variable name that overrides `section.key`.
fn env_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("KEYHOLE_{}", key.to_uppercase())
    } else {
        format!("KEYHOLE_{}_{}", section.to_uppercase(), key.to_uppercase())
    }
}

/// Lays one `KEYHOLE_*` variable over the parsed file. Variables that are not keyhole's are left
/// alone; a `KEYHOLE_<SECTION>_…` variable that names no setting of that section is an error (a
/// typo would otherwise be silently ignored in production).
fn overlay_env(table: &mut toml::Table, name: &str, value: &str) -> Result<(), String> {
    if !name.starts_with("KEYHOLE_") || NOT_OVERRIDES.contains(&name) {
        return Ok(());
    }
    let Some(&(section, key, kind)) = KEYS.iter().find(|(s, k, _)| env_name(s, k) == name) else {
        // Only a name inside one of keyhole's sections is surely a typo of a setting; other
        // KEYHOLE_* variables (a deployment's own, a script's) are none of our business.
        let in_a_section = KEYS
            .iter()
            .any(|(s, _, _)| !s.is_empty() && name.starts_with(&env_name(s, "")));
        if !in_a_section {
            tracing::debug!(
                variable = name,
                "ignoring a KEYHOLE_ variable that names no setting"
            );
            return Ok(());
        }
        let known: Vec<String> = KEYS.iter().map(|(s, k, _)| env_name(s, k)).collect();
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let hint = crate::diagnostic::did_you_mean(name, &known)
            .map(|near| format!("; did you mean {near}?"))
            .unwrap_or_default();
        return Err(format!("not a keyhole setting{hint}"));
    };
    let value = env_value(kind, value)?;
    let target = if section.is_empty() {
        table
    } else {
        match table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("[{section}] in the file is not a table")),
        }
    };
    target.insert(key.to_owned(), value);
    Ok(())
}

fn env_value(kind: Kind, value: &str) -> Result<toml::Value, String> {
    let parsed = match kind {
        Kind::Text => return Ok(toml::Value::String(value.to_owned())),
        Kind::Integer => value.trim().parse().map(toml::Value::Integer).ok(),
        Kind::Float => value.trim().parse().map(toml::Value::Float).ok(),
        Kind::Bool => value.trim().parse().map(toml::Value::Boolean).ok(),
        // A comma-separated list; empty items are dropped so `a,b,` works.
        Kind::List => Some(toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        )),
    };
    parsed.ok_or_else(|| format!("{value:?} is not a valid {kind:?}").to_lowercase())
}

// ---- Phase one: the raw shape of the file. Every field optional, unknown keys rejected. ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    policy: Option<String>,
    ldap: Option<RawLdap>,
    homes: Option<RawHomes>,
    s3: Option<RawS3>,
    keys: Option<RawKeys>,
    safety: Option<RawSafety>,
    signing: Option<RawSigning>,
    instance: Option<RawInstance>,
    canary: Option<RawCanary>,
    ssh: Option<RawSsh>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    key_dir: Option<String>,
    ssh_config: Option<String>,
    known_hosts: Option<String>,
    login_user: Option<String>,
    concurrency: Option<i64>,
    connect_timeout: Option<String>,
    ec2_endpoint: Option<String>,
    ec2_region: Option<String>,
    ec2_address: Option<String>,
    ec2_via: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLdap {
    url: Option<OneOrMany>,
    srv: Option<String>,
    dns_server: Option<String>,
    bind_state_file: Option<String>,
    bind_dn: Option<String>,
    password_file: Option<String>,
    base_dn: Option<String>,
    ca_file: Option<String>,
    timeout: Option<String>,
    page_size: Option<i64>,
    member_range: Option<i64>,
    lockout_retry: Option<String>,
    auth: Option<String>,
    keytab: Option<String>,
    principal: Option<String>,
    krb5_conf: Option<String>,
    trust_system_roots: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHomes {
    root: Option<String>,
    home_prefix: Option<String>,
    read_timeout: Option<String>,
    concurrency: Option<i64>,
    owner: Option<String>,
    nss_suffix: Option<String>,
    sentinel: Option<String>,
    max_carry: Option<String>,
    full_read_interval: Option<String>,
}

/// `url = "ldaps://dc1"` as well as `url = ["ldaps://dc1", "ldaps://dc2"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    force_path_style: Option<bool>,
    sse: Option<String>,
    kms_key_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    allowed_types: Option<Vec<String>>,
    min_rsa_bits: Option<i64>,
    forbidden_options: Option<Vec<String>>,
    max_keys_per_user: Option<i64>,
    revocation_retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSafety {
    max_removed_fraction: Option<f64>,
    max_removed_users: Option<i64>,
    lock_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    key_file: Option<String>,
    validity: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    login_user: Option<String>,
    access_groups: Option<Vec<String>>,
    cache_dir: Option<String>,
    cache_ttl: Option<String>,
    max_stale: Option<String>,
    fetch_timeout: Option<String>,
    verify_key: Option<String>,
    allow_unsigned: Option<bool>,
    access_groups_tag: Option<String>,
    access_groups_user_data: Option<bool>,
    imds_endpoint: Option<String>,
    revoked_keys_file: Option<String>,
}

// ---- Phase two: validation into the checked types. ----

/// Collects problems for one file, pointing each at the key it is about when the key is in the
/// file (values from the environment have no position; the message names the variable).
struct Checker<'a, 'd> {
    source: &'a crate::diagnostic::Source<'a>,
    diagnostics: &'d mut Vec<Diagnostic>,
    base: &'a Path,
}

impl Checker<'_, '_> {
    fn error(&mut self, section: &str, key: &str, message: impl fmt::Display) {
        let name = if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        };
        let message = format!("{name}: {message}");
        let diagnostic = match locate_key(self.source.text, section, key) {
            Some(span) => self.source.error(span, message),
            None => self.source.error(0..0, message),
        };
        self.diagnostics.push(diagnostic);
    }

    /// A key that does nothing where it is (e.g. a Kerberos key with a simple bind): said, not
    /// fatal, so one example file can document both methods.
    fn warning(&mut self, section: &str, key: &str, message: impl fmt::Display) {
        let message = format!("{section}.{key}: {message}");
        let span = locate_key(self.source.text, section, key).unwrap_or(0..0);
        let diagnostic = self.source.warning(span, message);
        self.diagnostics.push(diagnostic);
    }

    fn required<T>(&mut self, section: &str, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.error(section, key, "is required");
        }
        value
    }

    fn path(&self, value: &str) -> PathBuf {
        self.base.join(value)
    }

    fn duration(
        &mut self,
        section: &str,
        key: &str,
        value: Option<&str>,
        default: &str,
    ) -> Duration {
        let text = value.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(duration) if !duration.is_zero() => duration,
            Ok(_) => {
                self.error(section, key, "must be longer than zero");
                Duration::from_secs(1)
            }
            Err(error) => {
                self.error(
                    section,
                    key,
                    format!("{text:?} is not a duration like \"30s\", \"5m\" or \"7d\" ({error})"),
                );
                Duration::from_secs(1)
            }
        }
    }

    fn positive(&mut self, section: &str, key: &str, value: Option<i64>, default: i64) -> u32 {
        let value = value.unwrap_or(default);
        match u32::try_from(value) {
            Ok(value) if value > 0 => value,
            _ => {
                self.error(
                    section,
                    key,
                    format!("must be a positive number, not {value}"),
                );
                1
            }
        }
    }

    fn non_empty(&mut self, section: &str, key: &str, value: Option<String>) -> Option<String> {
        match value {
            Some(text) if text.trim().is_empty() => {
                self.error(section, key, "must not be empty");
                None
            }
            other => other,
        }
    }
}

/// The span of `key` inside `[section]` in the file, found with the spanned document parser.
fn locate_key(text: &str, section: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let table = document.get_ref();
    let table = if section.is_empty() {
        table
    } else {
        match table.get(section)?.get_ref() {
            toml::de::DeValue::Table(inner) => inner,
            _ => return None,
        }
    };
    table
        .iter()
        .find(|(name, _)| name.get_ref() == key)
        .map(|(name, _)| name.span())
}

impl RawSettings {
    fn validate(
        self,
        path: &Path,
        base: &Path,
        password_env: Option<Secret>,
        source: &crate::diagnostic::Source<'_>,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Settings {
        let mut check = Checker {
            source,
            diagnostics,
            base,
        };
        let policy = check.path(self.policy.as_deref().unwrap_or("access-groups.toml"));
        let lock_file = self.safety.as_ref().and_then(|raw| raw.lock_file.clone());
        let ldap = self
            .ldap
            .map(|raw| validate_ldap(raw, password_env, lock_file.as_deref(), &mut check));
        let homes = validate_homes(self.homes.unwrap_or_default(), &mut check);
        let s3 = self.s3.and_then(|raw| validate_s3(raw, &mut check));
        let raw_keys = self.keys.unwrap_or_default();
        let max_keys_per_user = check.positive(
            "keys",
            "max_keys_per_user",
            raw_keys.max_keys_per_user,
            i64::from(keys::DEFAULT_MAX_KEYS_PER_USER),
        ) as usize;
        let revocation_retention = check.duration(
            "keys",
            "revocation_retention",
            raw_keys.revocation_retention.as_deref(),
            "90d",
        );
        let keys = validate_keys(raw_keys, &mut check);
        let safety = validate_safety(self.safety.unwrap_or_default(), &mut check);
        let signing = self.signing.and_then(|raw| {
            let key_file = check.required("signing", "key_file", raw.key_file)?;
            let validity = check.duration("signing", "validity", raw.validity.as_deref(), "7d");
            if validity > MAX_SIGNING_VALIDITY {
                // Instances refuse an index whose not_after lies further ahead than this: a
                // longer validity would be a replay window, and would be refused anyway.
                check.error(
                    "signing",
                    "validity",
                    format!(
                        "must be at most {} (instances refuse an index valid for longer)",
                        humantime::format_duration(MAX_SIGNING_VALIDITY)
                    ),
                );
            }
            Some(SigningSettings {
                key_file: check.path(&key_file),
                validity,
            })
        });
        let instance = self
            .instance
            .and_then(|raw| validate_instance(raw, &mut check));
        let canary = self.canary.and_then(|raw| {
            const S: &str = "canary";
            let key_dir = check.required(S, "key_dir", raw.key_dir)?;
            let concurrency = raw.concurrency.unwrap_or(10);
            if concurrency < 1 {
                check.error(S, "concurrency", "must be at least 1");
            }
            let ec2_address = match raw.ec2_address.as_deref().unwrap_or("private_ip") {
                "private_ip" => Ec2Address::PrivateIp,
                "public_ip" => Ec2Address::PublicIp,
                "private_dns_name" => Ec2Address::PrivateDnsName,
                "public_dns_name" => Ec2Address::PublicDnsName,
                other => {
                    check.error(
                        S,
                        "ec2_address",
                        format!("must be private_ip, public_ip, private_dns_name or public_dns_name, not {other:?}"),
                    );
                    Ec2Address::PrivateIp
                }
            };
            Some(CanarySettings {
                key_dir: check.path(&key_dir),
                ssh_config: raw.ssh_config.as_deref().map(|p| check.path(p)),
                known_hosts: raw.known_hosts.as_deref().map(|p| check.path(p)),
                login_user: raw.login_user.unwrap_or_else(|| "ec2-user".to_owned()),
                concurrency: usize::try_from(concurrency).unwrap_or(1).max(1),
                connect_timeout: check.duration(
                    S,
                    "connect_timeout",
                    raw.connect_timeout.as_deref(),
                    "5s",
                ),
                ec2_endpoint: raw.ec2_endpoint,
                ec2_region: raw.ec2_region,
                ec2_address,
                ec2_via: raw.ec2_via,
            })
        });
        let ssh = self.ssh.map(|raw| validate_ssh(raw, &mut check));
        Settings {
            path: path.to_path_buf(),
            policy,
            ldap,
            homes,
            s3,
            keys,
            max_keys_per_user,
            revocation_retention,
            safety,
            signing,
            instance,
            canary,
            ssh,
        }
    }
}

/// The longest `[signing] validity` (see `crate::index::MAX_VALIDITY`).
pub const MAX_SIGNING_VALIDITY: Duration = crate::index::MAX_VALIDITY;

/// `safety.lock_file` when the file does not say (the bind state file's default lives beside it).
const DEFAULT_LOCK_FILE: &str = "/run/keyhole/publish.lock";

fn validate_ldap(
    raw: RawLdap,
    password_env: Option<Secret>,
    lock_file: Option<&str>,
    check: &mut Checker,
) -> LdapSettings {
    const S: &str = "ldap";
    let urls = match raw.url {
        None => Vec::new(),
        Some(OneOrMany::One(url)) => vec![url],
        Some(OneOrMany::Many(urls)) => urls,
    };
    let urls: Vec<String> = urls
        .into_iter()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect();
    for url in &urls {
        if !url.starts_with("ldaps://") && !url.starts_with("ldap://") {
            check.error(
                S,
                "url",
                format!(
                    "{url:?} must start with ldaps:// or ldap:// (ldap:// always uses StartTLS)"
                ),
            );
        }
    }
    let srv = check_non_empty(raw.srv).map(|domain| domain.trim().trim_end_matches('.').to_owned());
    if urls.is_empty() && srv.is_none() {
        check.error(
            S,
            "url",
            "is required: one URL or a list of them (or srv = \"<AD DNS domain>\" to find the DCs in DNS)",
        );
    }
    let dns_server = check_non_empty(raw.dns_server).and_then(|text| {
        let parsed = text
            .parse::<std::net::SocketAddr>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()));
        match parsed {
            Ok(address) => Some(address),
            Err(_) => {
                check.error(
                    S,
                    "dns_server",
                    format!("{text:?} is not an IP address or IP:port"),
                );
                None
            }
        }
    });
    // Beside the publish lock by default: a directory the publisher can surely write, and
    // /run/keyhole under systemd. Losing it at a reboot costs at most one more refused bind.
    let bind_state_file = match check.non_empty(S, "bind_state_file", raw.bind_state_file) {
        Some(file) => check.path(&file),
        None => check
            .path(lock_file.unwrap_or(DEFAULT_LOCK_FILE))
            .with_file_name("ldap-bind-refused.json"),
    };
    let base_dn = check
        .required(S, "base_dn", check_non_empty(raw.base_dn))
        .unwrap_or_default();
    let ca_file = check
        .non_empty(S, "ca_file", raw.ca_file)
        .map(|file| check.path(&file));
    let (auth, bind_dn, password) = validate_ldap_auth(
        LdapAuthKeys {
            auth: raw.auth,
            keytab: raw.keytab,
            principal: raw.principal,
            krb5_conf: raw.krb5_conf,
            bind_dn: raw.bind_dn,
            password_file: raw.password_file,
        },
        password_env,
        check,
    );
    // Kerberos names the DC's service ldap/<host>: an address has no such name.
    if matches!(auth, LdapAuth::Gssapi(_)) {
        for url in &urls {
            let authority = url.split_once("://").map_or("", |(_, rest)| rest);
            let host = authority.split(['/', '?']).next().unwrap_or_default();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.split_once(']'))
                .map_or_else(
                    || host.rsplit_once(':').map_or(host, |(h, _)| h),
                    |(h, _)| h,
                );
            if host.parse::<std::net::IpAddr>().is_ok() {
                check.error(
                    S,
                    "url",
                    format!("{url:?}: with auth = \"gssapi\", name the DC by its host name (Kerberos asks for ldap/<host>), e.g. ldaps://dc1.corp.example.com"),
                );
            }
        }
    }
    let trust_system_roots = raw.trust_system_roots.unwrap_or(false);
    // With srv, a DNS answer decides which hosts are asked: only AD's own CA may vouch for them
    // (a public CA signs a certificate for any name its holder owns).
    if srv.is_some() && ca_file.is_none() && !trust_system_roots {
        check.error(
            S,
            "srv",
            "needs ca_file (the CA that signed the DCs' certificates): whoever can spoof the SRV answer would otherwise only need a publicly trusted certificate to receive the bind and decide group membership; set trust_system_roots = true only if the DCs really use public certificates",
        );
    }
    if trust_system_roots && ca_file.is_some() {
        check.error(
            S,
            "trust_system_roots",
            "cannot be used with ca_file: trust either the DCs' own CA or the system roots",
        );
    }
    let timeout = check.duration(S, "timeout", raw.timeout.as_deref(), "30s");
    let page_size = check.positive(S, "page_size", raw.page_size, 1000);
    let member_range = match raw.member_range {
        None | Some(0) => None,
        Some(n) => Some(check.positive(S, "member_range", Some(n), 1500)),
    };
    LdapSettings {
        urls,
        srv,
        dns_server,
        bind_state_file,
        bind_dn,
        password,
        base_dn,
        ca_file,
        timeout,
        page_size,
        member_range,
        lockout_retry: check.duration(S, "lockout_retry", raw.lockout_retry.as_deref(), "10m"),
        auth,
        trust_system_roots,
    }
}

/// The `[ldap]` keys that say how keyhole authenticates.
struct LdapAuthKeys {
    auth: Option<String>,
    keytab: Option<String>,
    principal: Option<String>,
    krb5_conf: Option<String>,
    bind_dn: Option<String>,
    password_file: Option<String>,
}

/// `auth` and the keys of the chosen method; a key of the other method is an error, so a
/// leftover `password_file` cannot make an operator believe a password is still in play.
fn validate_ldap_auth(
    raw: LdapAuthKeys,
    password_env: Option<Secret>,
    check: &mut Checker,
) -> (LdapAuth, String, PasswordSource) {
    const S: &str = "ldap";
    let unused = PasswordSource::File(PathBuf::new());
    match raw.auth.as_deref().map(str::trim) {
        None | Some("simple") => {
            for (key, value) in [
                ("keytab", &raw.keytab),
                ("principal", &raw.principal),
                ("krb5_conf", &raw.krb5_conf),
            ] {
                if value.is_some() {
                    check.warning(S, key, "is used only with auth = \"gssapi\"; ignored");
                }
            }
            let bind_dn = check
                .required(S, "bind_dn", check_non_empty(raw.bind_dn))
                .unwrap_or_default();
            let password_file = check.non_empty(S, "password_file", raw.password_file);
            let password = match (password_env, password_file) {
                // The environment wins: that is how systemd's LoadCredential or a CI secret hands it over.
                (Some(secret), _) => PasswordSource::Environment(secret),
                (None, Some(file)) => PasswordSource::File(check.path(&file)),
                (None, None) => {
                    check.error(
                        S,
                        "password_file",
                        format!("is required (or set {PASSWORD_ENV}); the password is never read from the settings file or the command line"),
                    );
                    unused
                }
            };
            (LdapAuth::Simple, bind_dn, password)
        }
        Some("gssapi") => {
            for (key, value) in [
                ("bind_dn", &raw.bind_dn),
                ("password_file", &raw.password_file),
            ] {
                if value.is_some() {
                    check.error(
                        S,
                        key,
                        "is not used with auth = \"gssapi\" (keyhole is who the keytab's principal is, and reads no password): remove it",
                    );
                }
            }
            let principal = check_non_empty(raw.principal).map(|p| p.trim().to_owned());
            if let Some(principal) = &principal
                && (principal.contains(char::is_whitespace) || principal.starts_with('@'))
            {
                check.error(
                    S,
                    "principal",
                    format!("{principal:?} is not a Kerberos principal like \"svc-keyhole@CORP.EXAMPLE.COM\""),
                );
            }
            let kerberos = KerberosSettings {
                keytab: check
                    .non_empty(S, "keytab", raw.keytab)
                    .map(|file| check.path(&file)),
                principal,
                krb5_conf: check
                    .non_empty(S, "krb5_conf", raw.krb5_conf)
                    .map(|file| check.path(&file)),
            };
            (LdapAuth::Gssapi(kerberos), String::new(), unused)
        }
        Some(other) => {
            check.error(
                S,
                "auth",
                format!("{other:?} is neither \"simple\" nor \"gssapi\""),
            );
            (LdapAuth::Simple, String::new(), unused)
        }
    }
}

fn check_non_empty(value: Option<String>) -> Option<String> {
    value.filter(|text| !text.trim().is_empty())
}

fn validate_homes(raw: RawHomes, check: &mut Checker) -> HomesSettings {
    const S: &str = "homes";
    HomesSettings {
        root: check.path(raw.root.as_deref().unwrap_or("/home")),
        home_prefix: PathBuf::from(raw.home_prefix.as_deref().unwrap_or("/home")),
        read_timeout: check.duration(S, "read_timeout", raw.read_timeout.as_deref(), "5s"),
        concurrency: check.positive(S, "concurrency", raw.concurrency, 32) as usize,
        owner: match raw.owner.as_deref().map(str::trim) {
            None | Some("uid_number") => OwnerSource::UidNumber,
            Some("nss") => OwnerSource::Nss {
                suffix: raw.nss_suffix.unwrap_or_default(),
            },
            Some(other) => {
                check.error(
                    S,
                    "owner",
                    format!("{other:?} is neither \"uid_number\" nor \"nss\""),
                );
                OwnerSource::UidNumber
            }
        },
        sentinel: raw.sentinel.as_deref().map(|sentinel| {
            let sentinel = PathBuf::from(sentinel);
            // Relative, so it names a file on the mounted filesystem and never one beside it.
            if sentinel.is_absolute()
                || sentinel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                check.error(
                    S,
                    "sentinel",
                    "must be a path relative to homes.root, without `..`",
                );
            }
            sentinel
        }),
        max_carry: check.duration(S, "max_carry", raw.max_carry.as_deref(), "7d"),
        full_read_interval: check.duration(
            S,
            "full_read_interval",
            raw.full_read_interval.as_deref(),
            "1h",
        ),
    }
}

fn validate_s3(raw: RawS3, check: &mut Checker) -> Option<S3Settings> {
    const S: &str = "s3";
    let bucket = check.required(S, "bucket", check_non_empty(raw.bucket));
    let mut prefix = raw.prefix.unwrap_or_default();
    if prefix.starts_with('/') {
        check.error(
            S,
            "prefix",
            "must not start with '/' (S3 keys have no leading slash)",
        );
    }
    // "ssh" and "ssh/" both mean the folder ssh/: objects are {prefix}{group}/authorized_keys.
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let sse = match raw.sse.as_deref() {
        None => {
            if raw.kms_key_id.is_some() {
                check.error(S, "kms_key_id", "only applies with sse = \"aws:kms\"");
            }
            None
        }
        Some("AES256") => Some(ServerSideEncryption::Aes256),
        Some("aws:kms") => Some(ServerSideEncryption::Kms {
            key_id: raw.kms_key_id,
        }),
        Some(other) => {
            check.error(
                S,
                "sse",
                format!("{other:?} is not \"AES256\" or \"aws:kms\""),
            );
            None
        }
    };
    if let Some(endpoint) = &raw.endpoint
        && !endpoint.starts_with("https://")
        && !endpoint.starts_with("http://")
    {
        check.error(
            S,
            "endpoint",
            format!("{endpoint:?} must be an http(s):// URL"),
        );
    }
    Some(S3Settings {
        bucket: bucket?,
        prefix,
        region: raw.region,
        endpoint: raw.endpoint,
        force_path_style: raw.force_path_style.unwrap_or(false),
        sse,
    })
}

fn validate_keys(raw: RawKeys, check: &mut Checker) -> KeyPolicy {
    const S: &str = "keys";
    let defaults = KeyPolicy::default();
    let allowed_types: BTreeSet<String> = match raw.allowed_types {
        Some(types) => types.into_iter().collect(),
        None => defaults.allowed_types,
    };
    if allowed_types.contains("ssh-dss") {
        check.error(
            S,
            "allowed_types",
            "ssh-dss is never allowed (DSA keys are broken)",
        );
    }
    for unknown in allowed_types
        .iter()
        .filter(|t| *t != "ssh-dss" && !keys::SUPPORTED_KEY_TYPES.contains(&t.as_str()))
    {
        check.error(
            S,
            "allowed_types",
            format!(
                "{unknown:?} is not a key type keyhole can check (one of {})",
                keys::SUPPORTED_KEY_TYPES.join(", ")
            ),
        );
    }
    if allowed_types.is_empty() {
        check.error(S, "allowed_types", "must allow at least one key type");
    }
    let min_rsa_bits = check.positive(
        S,
        "min_rsa_bits",
        raw.min_rsa_bits,
        i64::from(keys::DEFAULT_MIN_RSA_BITS),
    );
    if min_rsa_bits < keys::DEFAULT_MIN_RSA_BITS {
        check.error(
            S,
            "min_rsa_bits",
            format!("{min_rsa_bits} is below the safe minimum of 2048"),
        );
    }
    let forbidden_options: BTreeSet<String> = match raw.forbidden_options {
        Some(options) => options
            .into_iter()
            .map(|option| option.to_lowercase())
            .collect(),
        None => defaults.forbidden_options,
    };
    // A misspelt option would silently forbid nothing.
    for unknown in forbidden_options
        .iter()
        .filter(|o| !keys::is_sshd_option_name(o))
    {
        check.error(
            S,
            "forbidden_options",
            format!("{unknown:?} is not an authorized_keys option sshd knows"),
        );
    }
    KeyPolicy {
        allowed_types,
        min_rsa_bits,
        forbidden_options,
    }
}

fn validate_safety(raw: RawSafety, check: &mut Checker) -> SafetySettings {
    const S: &str = "safety";
    let max_removed_fraction = raw.max_removed_fraction.unwrap_or(0.25);
    if !(0.0..=1.0).contains(&max_removed_fraction) {
        check.error(
            S,
            "max_removed_fraction",
            format!("{max_removed_fraction} is not between 0 and 1"),
        );
    }
    let max_removed_users = raw.max_removed_users.unwrap_or(20);
    if max_removed_users < 0 {
        check.error(S, "max_removed_users", "must not be negative");
    }
    SafetySettings {
        max_removed_fraction,
        max_removed_users: usize::try_from(max_removed_users).unwrap_or(0),
        lock_file: check.path(
            raw.lock_file
                .as_deref()
                .unwrap_or("/run/keyhole/publish.lock"),
        ),
    }
}

fn validate_instance(raw: RawInstance, check: &mut Checker) -> Option<InstanceSettings> {
    const S: &str = "instance";
    let login_user = check.required(S, "login_user", check_non_empty(raw.login_user));
    let access_groups = raw.access_groups.unwrap_or_default();
    let imds = validate_imds_groups(
        raw.access_groups_tag,
        raw.access_groups_user_data.unwrap_or(false),
        raw.imds_endpoint,
        check,
    );
    if access_groups.is_empty() && imds.is_none() {
        check.error(
            S,
            "access_groups",
            "must name at least one access group (or set access_groups_tag or access_groups_user_data)",
        );
    }
    let cache_ttl = check.duration(S, "cache_ttl", raw.cache_ttl.as_deref(), "5m");
    let max_stale = check.duration(S, "max_stale", raw.max_stale.as_deref(), "24h");
    if max_stale < cache_ttl {
        check.error(S, "max_stale", "must not be shorter than cache_ttl");
    }
    Some(InstanceSettings {
        login_user: login_user?,
        access_groups,
        cache_dir: check.path(raw.cache_dir.as_deref().unwrap_or("/var/cache/keyhole")),
        cache_ttl,
        max_stale,
        fetch_timeout: check.duration(S, "fetch_timeout", raw.fetch_timeout.as_deref(), "3s"),
        verify_key: check.non_empty(S, "verify_key", raw.verify_key),
        allow_unsigned: raw.allow_unsigned.unwrap_or(false),
        imds,
        revoked_keys_file: raw
            .revoked_keys_file
            .as_deref()
            .map(|path| check.path(path)),
    })
}

/// The EC2 sources of the host's access groups. A tag key is what EC2 allows in instance
/// metadata: no spaces, no `/` (it becomes a path segment), at most 128 characters.
fn validate_imds_groups(
    tag: Option<String>,
    user_data: bool,
    endpoint: Option<String>,
    check: &mut Checker,
) -> Option<ImdsGroups> {
    const S: &str = "instance";
    let tag = check.non_empty(S, "access_groups_tag", tag);
    if let Some(key) = &tag
        && (key.len() > 128 || key.contains(['/', ' ']) || key.chars().any(char::is_control))
    {
        check.error(
            S,
            "access_groups_tag",
            format!(
                "{key:?} cannot be read from instance metadata: EC2 serves only tag keys of at most 128 characters without spaces or '/'"
            ),
        );
    }
    let endpoint = check.non_empty(S, "imds_endpoint", endpoint);
    if let Some(url) = &endpoint
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        check.error(
            S,
            "imds_endpoint",
            format!("{url:?} must start with http://"),
        );
    }
    if tag.is_none() && !user_data {
        if endpoint.is_some() {
            check.error(
                S,
                "imds_endpoint",
                "is used only with access_groups_tag or access_groups_user_data",
            );
        }
        return None;
    }
    Some(ImdsGroups {
        tag,
        user_data,
        endpoint: endpoint.unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned()),
    })
}

// ---- `[ssh]`: `keyhole ssh` on an engineer's machine (see `crate::ssh`). ----

/// `[ssh]` and `[ssh.bastions]`.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Availability zone, VPC ID or region → the bastion (`[user@]host[:port]`, or a `Host` of
    /// the engineer's ssh_config). Chosen by the instance's zone, then its VPC, then its region
    /// (see `crate::ssh::bastion`).
    pub bastions: std::collections::BTreeMap<String, String>,
    /// Logged in as when neither `USER@` nor the instance's `login_user_tag` says.
    pub login_user: String,
    /// The instance tag naming its login user (an AMI whose user is `ubuntu` or `admin`).
    pub login_user_tag: String,
    /// The instance tag listing its access groups, as `[instance] access_groups_tag` reads it.
    pub access_groups_tag: String,
    /// Where DescribeInstances goes: region (default: the AWS chain's) and endpoint (default AWS's).
    pub region: Option<String>,
    pub ec2_endpoint: Option<String>,
    /// The deployment's signing public key, to verify the index `--explain` reads. Default:
    /// `[instance] verify_key`, else the public half of `[signing] key_file`.
    pub verify_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    bastions: Option<std::collections::BTreeMap<String, String>>,
    login_user: Option<String>,
    login_user_tag: Option<String>,
    access_groups_tag: Option<String>,
    region: Option<String>,
    ec2_endpoint: Option<String>,
    verify_key: Option<String>,
}

fn validate_ssh(raw: RawSsh, check: &mut Checker) -> SshSettings {
    const S: &str = "ssh";
    let bastions = raw.bastions.unwrap_or_default();
    for (place, bastion) in &bastions {
        let place_ok = !place.is_empty()
            && place
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !place_ok {
            check.error(
                S,
                "bastions",
                format!("{place:?} is not an availability zone, VPC ID or region (e.g. \"eu-west-1a\", \"vpc-0abc123\", \"eu-west-1\")"),
            );
        }
        if let Some(problem) = crate::ssh::jump_host_problem(bastion) {
            check.error(S, "bastions", format!("{place:?} = {bastion:?}: {problem}"));
        }
    }
    let login_user = check
        .non_empty(S, "login_user", raw.login_user)
        .unwrap_or_else(|| crate::ssh::DEFAULT_LOGIN_USER.to_owned());
    if let Some(problem) = crate::ssh::login_user_problem(&login_user) {
        check.error(S, "login_user", problem);
    }
    if let Some(endpoint) = &raw.ec2_endpoint
        && !endpoint.starts_with("https://")
        && !endpoint.starts_with("http://")
    {
        check.error(
            S,
            "ec2_endpoint",
            format!("{endpoint:?} must be an http(s):// URL"),
        );
    }
    SshSettings {
        bastions,
        login_user,
        login_user_tag: check
            .non_empty(S, "login_user_tag", raw.login_user_tag)
            .unwrap_or_else(|| crate::ssh::DEFAULT_LOGIN_USER_TAG.to_owned()),
        access_groups_tag: check
            .non_empty(S, "access_groups_tag", raw.access_groups_tag)
            .unwrap_or_else(|| crate::instance::host_groups::USER_DATA_KEY.to_owned()),
        region: check.non_empty(S, "region", raw.region),
        ec2_endpoint: raw.ec2_endpoint,
        verify_key: check.non_empty(S, "verify_key", raw.verify_key),
    }
}

/// The settings file `keyhole ssh` reads: `--config`, else `KEYHOLE_CONFIG`, else
/// [`DEFAULT_PATH`] when it exists, else the engineer's own `$XDG_CONFIG_HOME/keyhole/keyhole.toml`
/// (default `~/.config/keyhole/keyhole.toml`): a laptop has no `/etc/keyhole`, and an engineer
/// should not need root to say where the bastions are.
pub fn locate_for_engineer(config: Option<&Path>) -> PathBuf {
    let explicit = config.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(CONFIG_ENV)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
    });
    let etc = Path::new(DEFAULT_PATH);
    engineer_path(
        explicit,
        etc.exists(),
        std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn engineer_path(
    explicit: Option<PathBuf>,
    etc_exists: bool,
    xdg_config_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    if etc_exists {
        return PathBuf::from(DEFAULT_PATH);
    }
    // XDG: a relative XDG_CONFIG_HOME is invalid and ignored.
    let config_home = xdg_config_home
        .filter(|dir| dir.is_absolute())
        .or_else(|| home.map(|home| home.join(".config")));
    match config_home {
        Some(dir) => dir.join("keyhole").join("keyhole.toml"),
        None => PathBuf::from(DEFAULT_PATH),
    }
}

#[cfg(test)]
mod tests {
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
            errors[0].contains("\"many\" is not a valid integer"),
            "{errors:?}"
        );
    }

    #[test]
    fn the_password_comes_from_the_environment_and_never_shows_in_debug() {
        let text = MINIMAL.replace("password_file = \"ldap-password\"\n", "");
        let errors = parse(&text, &[]).unwrap_err();
        assert!(
            errors[0].contains("ldap.password_file: is required (or set KEYHOLE_LDAP_PASSWORD)")
        );
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
        let example = include_str!("../keyhole.example.toml");
        let table: toml::Table = toml::from_str(example).unwrap();
        for (section, key, _) in KEYS {
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
}
