//! `[ldap] auth = "gssapi"`: binding to AD with Kerberos from a keytab, so no password is on
//! disk, read, or able to reach a log.
//!
//! What it owns: checking the keytab before anything is sent (it must exist, be readable and not
//! be readable by group or others: a keytab is a password), pointing the Kerberos library at the
//! keytab, the principal and keyhole's own krb5.conf, the GSSAPI bind itself (feature `gssapi`,
//! the publisher build; the instance package has no libkrb5), and turning what Kerberos says
//! into one line that names the problem and its fix.
//!
//! Decisions:
//! - The library reads its configuration from the environment (`KRB5_CLIENT_KTNAME`,
//!   `KRB5_CONFIG`, `KRB5CCNAME`), so keyhole sets those once, before its first Kerberos call.
//!   The ticket cache is `MEMORY:`: a TGT is as good as the keytab for its lifetime and must not
//!   land in /tmp; the cost is one AS exchange per run.
//! - GSSAPI calls block (files, the KDC over the network): the bind runs on a blocking thread of
//!   the runtime, never on an async worker.
//! - Refusals that mean "this secret is wrong" (pre-authentication failed, the keys of a changed
//!   password, password expired, principal unknown, account disabled/locked/expired) are handled
//!   like LDAP 49 on a simple bind: no other DC is tried and the same keytab is not used again
//!   until the file changes or `--retry-bind` (AD counts failed pre-authentication toward the
//!   lockout just like a bad simple bind). Problems of this machine (no KDC, clock skew, keytab
//!   unreadable or too open, bad krb5.conf) stop the run without being recorded: fixing them
//!   needs no change of keytab.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::settings::{KerberosSettings, Secret};

/// What went wrong, in the words an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// No KDC of the realm answered (or none is known).
    NoKdc,
    /// This machine's clock and the KDC's (or the DC's) differ by more than allowed.
    ClockSkew,
    /// The KDC does not know the client principal.
    PrincipalUnknown,
    /// The keytab's keys are not the principal's (a password changed after the export).
    WrongKey,
    /// The principal's password has expired (or must be changed).
    PasswordExpired,
    /// The account is disabled or locked out.
    Revoked,
    /// The account has expired.
    AccountExpired,
    /// The keytab has no usable key for the principal, or cannot be read by the library.
    Keytab,
    /// The KDC does not know `ldap/<host>`: this DC's name is not the one AD registered.
    ServiceUnknown,
    /// The krb5.conf cannot be read or parsed.
    Config,
    /// Anything else.
    Other,
}

impl Problem {
    /// From the message text of the Kerberos library (MIT krb5's error table).
    pub fn of(said: &str) -> Problem {
        let said = said.to_ascii_lowercase();
        let has = |needle: &str| said.contains(needle);
        if has("clock skew") {
            Problem::ClockSkew
        } else if has("cannot contact any kdc")
            || has("cannot find kdc")
            || has("cannot resolve network address for kdc")
        {
            Problem::NoKdc
        } else if has("server") && has("not found in kerberos database") {
            Problem::ServiceUnknown
        } else if has("not found in kerberos database") {
            Problem::PrincipalUnknown
        } else if has("preauthentication failed")
            || has("password incorrect")
            || has("integrity check failed")
        {
            Problem::WrongKey
        } else if has("password has expired") || has("key has expired") {
            Problem::PasswordExpired
        } else if has("credentials have been revoked") {
            Problem::Revoked
        } else if has("entry in database has expired") {
            Problem::AccountExpired
        } else if has("key table")
            || has("keytab")
            || has("no kerberos credentials available")
            || has("no key table entry")
        {
            Problem::Keytab
        } else if has("configuration file") || has("profile") {
            Problem::Config
        } else {
            Problem::Other
        }
    }

    /// True when the secret itself was refused: handled like LDAP 49 (never retried with the
    /// same keytab).
    pub fn refuses_secret(self) -> bool {
        matches!(
            self,
            Problem::PrincipalUnknown
                | Problem::WrongKey
                | Problem::PasswordExpired
                | Problem::Revoked
                | Problem::AccountExpired
        )
    }

    /// True when another DC could do better: its name is the problem, or nobody knows (an
    /// unrecognised failure is not assumed to be this machine's).
    pub fn is_this_dc(self) -> bool {
        matches!(self, Problem::ServiceUnknown | Problem::Other)
    }

    pub fn summary(self) -> &'static str {
        match self {
            Problem::NoKdc => "no KDC answered",
            Problem::ClockSkew => "clock skew too great",
            Problem::PrincipalUnknown => "principal unknown to the KDC",
            Problem::WrongKey => "the keytab's keys are not the principal's",
            Problem::PasswordExpired => "the principal's password has expired",
            Problem::Revoked => "the account is disabled or locked out",
            Problem::AccountExpired => "the account has expired",
            Problem::Keytab => "no usable key in the keytab",
            Problem::ServiceUnknown => "the KDC does not know this DC's ldap/ service name",
            Problem::Config => "the Kerberos configuration cannot be used",
            Problem::Other => "Kerberos failed",
        }
    }

    pub fn fix(self) -> &'static str {
        match self {
            Problem::NoKdc => {
                "check the realm's kdc lines in ldap.krb5_conf (or DNS _kerberos._udp records) and that port 88 of the DC is reachable"
            }
            Problem::ClockSkew => {
                "synchronise this machine's clock with the domain (chrony/ntpd against the DCs); Kerberos allows 5 minutes"
            }
            Problem::PrincipalUnknown => {
                "check ldap.principal (user@REALM, the realm in capitals) and that the account exists"
            }
            Problem::WrongKey => {
                "the password changed after the keytab was exported: export a new keytab (samba-tool domain exportkeytab / ktpass / gMSA retrieval)"
            }
            Problem::PasswordExpired => {
                "set a new password on the account (or make it never expire) and export a new keytab"
            }
            Problem::Revoked => {
                "enable or unlock the account in AD, then run once with --retry-bind"
            }
            Problem::AccountExpired => {
                "extend the account's expiry in AD, then run once with --retry-bind"
            }
            Problem::Keytab => {
                "check that ldap.keytab holds keys for ldap.principal (klist -k -e KEYTAB)"
            }
            Problem::ServiceUnknown => {
                "name the DC by the host name AD registered (its dNSHostName), not an alias"
            }
            Problem::Config => "check ldap.krb5_conf (or KRB5_CONFIG)",
            Problem::Other => {
                "run `KRB5_TRACE=/dev/stderr keyhole check-bind` to see the Kerberos exchange"
            }
        }
    }
}

/// A keytab problem found before any network traffic.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the keytab {}: {reason}; {fix}", path.display())]
pub struct KeytabError {
    pub path: PathBuf,
    pub reason: String,
    pub fix: String,
}

/// The client credentials of one run: which keytab (when keyhole can name it) and a fingerprint
/// of its bytes, which the bind guard keeps in place of a password.
#[derive(Debug)]
pub struct Keytab {
    pub path: Option<PathBuf>,
    /// Who the guard says was refused: the principal, or the keytab's default one.
    pub who: String,
    /// SHA-256 of the keytab's bytes, never the bytes: a new keytab is a new secret.
    pub fingerprint: Secret,
    /// The krb5.conf keyhole points the library at, when settings name one.
    pub krb5_conf: Option<PathBuf>,
    pub principal: Option<String>,
}

/// The keytab settings name (or `KRB5_CLIENT_KTNAME`), checked: present, readable, and not
/// readable by anyone but its owner. `environment` is `KRB5_CLIENT_KTNAME`'s value.
pub fn prepare(
    settings: &KerberosSettings,
    environment: Option<&str>,
) -> Result<Keytab, KeytabError> {
    let path = settings.keytab.clone().or_else(|| {
        environment
            .map(|name| name.strip_prefix("FILE:").unwrap_or(name))
            .filter(|name| name.starts_with('/'))
            .map(PathBuf::from)
    });
    if let Some(conf) = &settings.krb5_conf
        && let Err(error) = fs::metadata(conf)
    {
        return Err(KeytabError {
            path: path.clone().unwrap_or_default(),
            reason: format!("the krb5.conf {} cannot be read ({error})", conf.display()),
            fix: "fix ldap.krb5_conf".into(),
        });
    }
    let who = settings
        .principal
        .clone()
        .unwrap_or_else(|| "the keytab's first principal".to_owned());
    let fingerprint = match &path {
        Some(path) => Secret::new(format!("keytab-sha256:{}", hex::encode(check(path)?))),
        // The library's default keytab: keyhole cannot see when it changes, so a refusal holds
        // until --retry-bind.
        None => Secret::new("keytab:default".to_owned()),
    };
    Ok(Keytab {
        path,
        who,
        fingerprint,
        krb5_conf: settings.krb5_conf.clone(),
        principal: settings.principal.clone(),
    })
}

/// Reads `path` and returns the SHA-256 of its bytes, or why it must not be used.
fn check(path: &Path) -> Result<[u8; 32], KeytabError> {
    let error = |reason: String, fix: &str| KeytabError {
        path: path.to_path_buf(),
        reason,
        fix: fix.to_owned(),
    };
    let metadata = fs::metadata(path).map_err(|e| {
        error(
            format!("it cannot be read ({e})"),
            "export the keytab there, readable by the account keyhole runs as (chmod 600)",
        )
    })?;
    if !metadata.is_file() {
        return Err(error(
            "it is not a regular file".into(),
            "point ldap.keytab at the keytab file",
        ));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(error(
            format!(
                "it is readable or writable by group or others (mode {mode:03o}), and a keytab is as good as a password"
            ),
            &format!(
                "chmod 600 {} (owned by uid {}, the account keyhole runs as)",
                path.display(),
                metadata.uid()
            ),
        ));
    }
    let bytes = fs::read(path).map_err(|e| {
        error(
            format!("it cannot be read ({e})"),
            "make it readable by the account keyhole runs as (chown, chmod 600)",
        )
    })?;
    // MIT keytab files start with 0x05 0x01 or 0x05 0x02.
    if bytes.len() < 2 || bytes[0] != 5 {
        return Err(error(
            "it is not a keytab (wrong format)".into(),
            "export it again (samba-tool domain exportkeytab, ktpass, or ktutil)",
        ));
    }
    Ok(Sha256::digest(&bytes).into())
}

/// Points the Kerberos library at `keytab`'s file, krb5.conf and a memory ticket cache. Called
/// once per process, before the first Kerberos call; later calls with other values are ignored
/// (one process binds for one deployment).
pub fn configure_library(keytab: &Keytab) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut variables: Vec<(&str, String)> = vec![("KRB5CCNAME", "MEMORY:keyhole".into())];
        if let Some(path) = &keytab.path {
            variables.push(("KRB5_CLIENT_KTNAME", format!("FILE:{}", path.display())));
        }
        if let Some(conf) = &keytab.krb5_conf {
            variables.push(("KRB5_CONFIG", conf.display().to_string()));
        }
        for (name, value) in variables {
            // SAFETY: std's set_var and var share a lock, so only C code calling getenv at this
            // instant could race; the only C library keyhole calls through here is libkrb5,
            // and it is not running yet (this runs before the first Kerberos call, once).
            unsafe { std::env::set_var(name, value) };
        }
    });
}

/// One line for a failed Kerberos exchange: what, what Kerberos said, and the fix.
pub fn one_line(said: &str) -> String {
    said.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(feature = "gssapi")]
pub use bind::gssapi_bind;

#[cfg(feature = "gssapi")]
mod bind {
    use std::time::Duration;

    use ldap3::{Ldap, LdapError, LdapResult};

    use super::Keytab;

    /// The SASL GSSAPI bind as `keytab`'s principal to `ldap/<host>`, on a blocking thread (the
    /// GSSAPI library reads files and talks to the KDC synchronously). Over TLS, ldap3 sends
    /// the tls-server-end-point channel binding, which AD's strictest policy requires.
    pub async fn gssapi_bind(
        ldap: &Ldap,
        host: &str,
        keytab: &Keytab,
        timeout: Duration,
    ) -> Result<LdapResult, LdapError> {
        super::configure_library(keytab);
        let mut ldap = ldap.clone();
        let host = host.to_owned();
        let principal = keytab.principal.clone();
        let runtime = tokio::runtime::Handle::current();
        let bind = tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                let ldap = ldap.with_timeout(timeout);
                match principal {
                    Some(principal) => {
                        let credential = <cross_krb5::Cred as cross_krb5::K5Cred>::client_acquire(
                            cross_krb5::InitiateFlags::empty(),
                            Some(&principal),
                        )
                        .map_err(|error| LdapError::GssapiOperationError(format!("{error:#}")))?;
                        ldap.sasl_gssapi_cred_bind(credential, &host).await
                    }
                    None => ldap.sasl_gssapi_bind(&host).await,
                }
            })
        });
        match bind.await {
            Ok(result) => result,
            Err(error) => Err(LdapError::GssapiOperationError(format!(
                "the Kerberos bind thread failed: {error}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_kerberos_says_is_named() {
        for (said, problem) in [
            (
                "gssapi error: Cannot contact any KDC for realm 'CORP.EXAMPLE.COM'",
                Problem::NoKdc,
            ),
            ("Clock skew too great", Problem::ClockSkew),
            (
                "Client 'nobody@CORP.EXAMPLE.COM' not found in Kerberos database",
                Problem::PrincipalUnknown,
            ),
            (
                "Server 'ldap/dc9.corp.example.com@CORP.EXAMPLE.COM' not found in Kerberos database",
                Problem::ServiceUnknown,
            ),
            ("Preauthentication failed", Problem::WrongKey),
            ("Password has expired", Problem::PasswordExpired),
            ("Client's credentials have been revoked", Problem::Revoked),
            ("Key table file '/etc/k.keytab' not found", Problem::Keytab),
            ("something new", Problem::Other),
        ] {
            assert_eq!(Problem::of(said), problem, "{said}");
        }
        assert!(Problem::WrongKey.refuses_secret());
        assert!(Problem::PasswordExpired.refuses_secret());
        assert!(!Problem::ClockSkew.refuses_secret());
        assert!(!Problem::NoKdc.refuses_secret());
        assert!(Problem::ServiceUnknown.is_this_dc());
    }

    #[test]
    fn a_keytab_readable_by_others_or_missing_is_refused_before_any_bind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.keytab");
        let settings = KerberosSettings {
            keytab: Some(path.clone()),
            ..Default::default()
        };
        let missing = prepare(&settings, None).unwrap_err().to_string();
        assert!(missing.contains("cannot be read"), "{missing}");
        fs::write(&path, [5u8, 2, 0, 0]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let open = prepare(&settings, None).unwrap_err().to_string();
        assert!(open.contains("mode 644"), "{open}");
        assert!(open.contains("chmod 600"), "{open}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let keytab = prepare(&settings, None).unwrap();
        assert!(!format!("{keytab:?}").contains("keytab-sha256"));
        // The environment's keytab when settings name none.
        let from_env = prepare(
            &KerberosSettings::default(),
            Some(&format!("FILE:{}", path.display())),
        )
        .unwrap();
        assert_eq!(from_env.path.as_deref(), Some(path.as_path()));
        fs::write(&path, b"not a keytab").unwrap();
        let garbage = prepare(&settings, None).unwrap_err().to_string();
        assert!(garbage.contains("not a keytab"), "{garbage}");
    }
}
