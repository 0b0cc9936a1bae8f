//! The deployment settings, `keyhole.toml` (SPEC.md "The settings").
//!
//! Loading happens in two phases, as in cargo-deny. Phase one ([`schema`]) walks the file's
//! spanned document and checks every key against the table of known keys: an unknown key, a
//! section that is not a table and a value of the wrong shape each become a problem at its
//! `FILE:LINE:COL`, in words an operator can act on (never a parser's type names), and the walk
//! goes on. `KEYHOLE_<SECTION>_<KEY>` environment variables ([`environment`]) are then laid over
//! what the file says. Phase two turns the result into the checked [`Settings`] every command
//! uses, one file per section (`ldap`, `homes`, `s3`, `key_policy`, `safety`, `instance`,
//! `canary`, `ssh`), through a [`check::Checker`] that collects every problem rather than
//! stopping at the first. All of them are reported at once, under one prefix
//! ([`check::Invalid`]).
//!
//! Secrets: the LDAP password never lives in this file or on the command line. It comes from
//! `ldap.password_file` or `KEYHOLE_LDAP_PASSWORD` and is read only when a bind needs it, wrapped in
//! [`Secret`] so that no `Debug` or log line can print it.

mod canary;
mod check;
mod environment;
mod homes;
mod instance;
mod key_policy;
mod ldap;
mod s3;
mod safety;
mod schema;
mod ssh;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::diagnostic::{Diagnostic, Source};
use crate::exit::{Exit, coded, marked};
use crate::keys::KeyPolicy;

pub use canary::{CanarySettings, Ec2Address};
pub use check::Invalid;
pub use homes::{HomesSettings, OwnerSource};
pub use instance::{DEFAULT_IMDS_ENDPOINT, ImdsGroups, InstanceSettings};
pub use ldap::{KerberosSettings, LdapAuth, LdapSettings, PasswordSource, Secret};
pub use s3::{S3Settings, ServerSideEncryption};
pub use safety::{MAX_SIGNING_VALIDITY, SafetySettings, SigningSettings};
pub use ssh::{SshSettings, locate_for_engineer};

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

impl Settings {
    /// Finds the settings file (`--config`, else `KEYHOLE_CONFIG`, else [`DEFAULT_PATH`]), reads it,
    /// applies the environment and validates. Any problem is an error marked [`Exit::Invalid`]
    /// whose message lists every problem, each at its `FILE:LINE:COL`.
    pub fn load(config: Option<&Path>) -> anyhow::Result<Settings> {
        let path = locate(config);
        let bytes = std::fs::read(&path).map_err(|error| {
            coded(
                Exit::Invalid,
                anyhow::Error::new(error).context(format!(
                    "reading the settings file {} (choose another with --config or {CONFIG_ENV})",
                    path.display()
                )),
            )
        })?;
        Settings::from_bytes(&path, &bytes, std::env::vars()).map_err(|diagnostics| {
            marked(
                Exit::Invalid,
                Invalid {
                    path: path.clone(),
                    diagnostics,
                },
            )
        })
    }

    /// Like [`Settings::from_text`], for the raw bytes of the file: text that is not UTF-8 is a
    /// problem at the first bad byte, not an I/O failure, because it is the content that is wrong.
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, Vec<Diagnostic>> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Settings::from_text(path, text, environment),
            Err(error) => {
                // The valid prefix is UTF-8 by construction; the bad byte is just after it.
                let prefix = std::str::from_utf8(&bytes[..error.valid_up_to()]).unwrap_or_default();
                let source = Source::new(path, prefix);
                Err(vec![source.error(
                    prefix.len()..prefix.len(),
                    "the settings file is not valid UTF-8 (TOML files must be UTF-8): save it as UTF-8",
                )])
            }
        }
    }

    /// Parses, overlays `environment` (pairs like `std::env::vars()`) and validates. Pure: it
    /// reads no files, so tests can drive it. `Err` holds every problem (errors and warnings),
    /// those in the file first and in the order of their lines.
    pub fn from_text(
        path: &Path,
        text: &str,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, Vec<Diagnostic>> {
        let source = Source::new(path, text);
        let mut diagnostics = Vec::new();
        // A syntax error is the only problem reported alone: after one, the parser cannot say
        // where the next key starts.
        let Some(mut document) = schema::read(&source, &mut diagnostics) else {
            return Err(diagnostics);
        };

        let mut password_env = None;
        for (name, value) in environment {
            if name == PASSWORD_ENV {
                password_env = Some(Secret::new(value));
            } else if let Err(message) = environment::overlay(&mut document, &name, &value) {
                diagnostics.push(environment::diagnostic(&name, message));
            }
        }
        // Every entry left was checked against its shape, so this cannot fail but on a mismatch
        // between `schema::KEYS` and the raw structs, which a test rules out.
        let table = std::mem::take(&mut document.table);
        let raw = match RawSettings::deserialize(toml::Value::Table(table)) {
            Ok(raw) => raw,
            Err(error) => {
                diagnostics.push(source.error(
                    0..0,
                    format!(
                        "keyhole could not read its settings: {}",
                        error.message().trim()
                    ),
                ));
                return Err(check::sorted(diagnostics));
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut check = check::Checker::new(&source, &document, base, &mut diagnostics);
        let settings = raw.validate(path, password_env, &mut check);
        let diagnostics = check::sorted(diagnostics);
        if crate::diagnostic::has_errors(&diagnostics) {
            return Err(diagnostics);
        }
        for warning in &diagnostics {
            tracing::warn!("{warning}");
        }
        Ok(settings)
    }

    /// `[ldap]`, or an error naming the command that needs it.
    /// These settings with `--retry-bind` decided for this process: the operator's choice
    /// travels with the settings the directory is read with, never as global state.
    pub fn with_bind_retry(mut self, retry: bool) -> Settings {
        if let Some(ldap) = &mut self.ldap {
            ldap.retry_bind = retry;
        }
        self
    }

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
            marked(
                Exit::Invalid,
                anyhow::anyhow!(
                    "{}: this command needs the [{name}] section, which is missing: add it (keyhole.example.toml shows every key)",
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

// ---- The raw shape of the file: every field optional. Only entries `schema` accepted reach it;
// `deny_unknown_fields` stays as a second guard. ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    policy: Option<String>,
    ldap: Option<ldap::RawLdap>,
    homes: Option<homes::RawHomes>,
    s3: Option<s3::RawS3>,
    keys: Option<key_policy::RawKeys>,
    safety: Option<safety::RawSafety>,
    signing: Option<safety::RawSigning>,
    instance: Option<instance::RawInstance>,
    canary: Option<canary::RawCanary>,
    ssh: Option<ssh::RawSsh>,
}

impl RawSettings {
    fn validate(
        self,
        path: &Path,
        password_env: Option<Secret>,
        check: &mut check::Checker,
    ) -> Settings {
        let policy = check.path(self.policy.as_deref().unwrap_or("access-groups.toml"));
        let lock_file = self.safety.as_ref().and_then(|raw| raw.lock_file.clone());
        let ldap = self
            .ldap
            .map(|raw| ldap::validate(raw, password_env, lock_file.as_deref(), check));
        let homes = homes::validate(self.homes.unwrap_or_default(), check);
        let s3 = self.s3.and_then(|raw| s3::validate(raw, check));
        let key_policy::Checked {
            keys,
            max_keys_per_user,
            revocation_retention,
        } = key_policy::validate(self.keys.unwrap_or_default(), check);
        let safety = safety::validate(self.safety.unwrap_or_default(), check);
        let signing = self
            .signing
            .and_then(|raw| safety::validate_signing(raw, check));
        let instance = self.instance.and_then(|raw| instance::validate(raw, check));
        let canary = self.canary.and_then(|raw| canary::validate(raw, check));
        let ssh = self.ssh.map(|raw| ssh::validate(raw, check));
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
