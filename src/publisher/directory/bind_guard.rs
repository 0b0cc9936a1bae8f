//! Never lock the service account: after a domain controller refuses the bind with invalid
//! credentials (LDAP 49), keyhole does not bind again with the same secret.
//!
//! Every refused simple bind counts toward AD's `badPwdCount`; a publisher on a 5-minute timer
//! with a stale password would reach any lockout threshold within the hour and lock the account
//! for everyone who shares it. So the refusal is written to a small state file
//! (`[ldap] bind_state_file`, default beside `safety.lock_file`), holding a salted PBKDF2 hash of
//! the bind DN and the secret, never the secret itself. While the file says the current secret
//! was refused, keyhole refuses to bind without sending anything to any DC. It binds again when
//! the secret (or bind DN) changes, or once when an operator runs with `--retry-bind` (after
//! re-enabling or unlocking the account, where the secret stays the same). A successful bind
//! removes the file.
//!
//! Only a refusal that says the secret is wrong or the account is unusable until an administrator
//! acts latches: AD sub-codes 52e (wrong password), 525 (no such user), 532 (password expired),
//! 533 (disabled), 701 (expired), 773 (must change password), and an LDAP 49 without a sub-code
//! (not AD: the safe side). A lockout (775) and a logon-hours or workstation restriction (530,
//! 531) say nothing about the secret, and anyone can cause a lockout with three wrong passwords:
//! latching on it would turn that into a kill switch for revocations. So the same secret is tried
//! again once `[ldap] lockout_retry` (default 10 minutes) has passed since the refusal, at most
//! once per period, with an error logged and `keyhole_publish_ldap_bind_refused` raised on every
//! run in between. A secret refused as wrong is never retried this way.
//!
//! Decisions: a state file that exists but cannot be read or parsed stops the bind (the safe side
//! for the account) and names the file; a state file that cannot be written is reported with the
//! refusal, which is an error anyway. Losing the file (e.g. `/run` after a reboot) costs at most
//! one more refused bind.

use std::fs;
use std::io::{self, Write as _};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::settings::Secret;

/// PBKDF2-HMAC-SHA256 rounds: the refused secret is often a typo of the right one, so the hash
/// should not be cheap to search offline; it is computed at most twice a run.
const ITERATIONS: u32 = 100_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
const FORMAT_VERSION: u32 = 1;

/// What the state file holds about the last refused bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub version: u32,
    /// Hex salt and hex PBKDF2 of `bind_dn \0 secret`.
    pub salt: String,
    pub hash: String,
    /// The DC that refused, AD's sub-code (e.g. "52e") and its meaning, for the messages.
    pub dc: String,
    pub code: Option<String>,
    pub reason: String,
    /// Unix seconds.
    pub refused_at: u64,
}

impl Refusal {
    fn matches(&self, bind_dn: &str, secret: &Secret) -> bool {
        let (Ok(salt), Ok(hash)) = (hex::decode(&self.salt), hex::decode(&self.hash)) else {
            return false;
        };
        let Some(iterations) = NonZeroU32::new(ITERATIONS) else {
            return false;
        };
        ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            &material(bind_dn, secret),
            &hash,
        )
        .is_ok()
    }

    /// When it happened, for humans (RFC 3339, UTC).
    pub fn when(&self) -> String {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(self.refused_at);
        humantime::format_rfc3339_seconds(at).to_string()
    }
}

fn material(bind_dn: &str, secret: &Secret) -> Vec<u8> {
    let mut material = Vec::with_capacity(bind_dn.len() + 1 + secret.expose().len());
    material.extend_from_slice(bind_dn.as_bytes());
    material.push(0);
    material.extend_from_slice(secret.expose().as_bytes());
    material
}

/// Why the guard stops a bind.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(
        "not binding as {bind_dn}: {dc} refused this same {} at {when} (invalid credentials, {reason}); binding again with it would only count toward the account's lockout. Put the right {} in place (the refusal is forgotten as soon as it changes), or, if the account itself was fixed (unlocked, enabled), run once with --retry-bind. State: {}",
        secret.name(),
        secret.name(),
        state_file.display()
    )]
    SameSecret {
        secret: SecretKind,
        bind_dn: String,
        dc: String,
        when: String,
        reason: String,
        state_file: PathBuf,
    },
    #[error(
        "not binding as {bind_dn} yet: {refused}, because the account cannot log on now, not because the password is wrong; keyhole binds again with it once ldap.lockout_retry has passed, at {retry_at}. Unlock the account (and run with --retry-bind to bind at once). State: {}",
        state_file.display()
    )]
    Waiting {
        bind_dn: String,
        /// Who refused when, and why ("ldaps://dc1 refused this password at … (…)").
        refused: String,
        retry_at: String,
        state_file: PathBuf,
    },
    #[error(
        "cannot read the bind state file {} ({reason}); not binding, to be safe for the account: remove the file or run with --retry-bind",
        path.display()
    )]
    Unreadable { path: PathBuf, reason: String },
}

/// What the guarded secret is, for messages (one byte, so the error stays small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    Password,
    /// A Kerberos keytab (its SHA-256 is what is hashed).
    Keytab,
}

impl SecretKind {
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::Password => "password",
            SecretKind::Keytab => "keytab",
        }
    }
}

/// The state file of one deployment.
#[derive(Debug, Clone)]
pub struct BindGuard {
    path: PathBuf,
    secret: SecretKind,
    /// `--retry-bind`: the operator's decision for this one run.
    retry: bool,
}

impl BindGuard {
    pub fn new(path: &Path) -> BindGuard {
        BindGuard {
            path: path.to_path_buf(),
            secret: SecretKind::Password,
            retry: false,
        }
    }

    /// For a Kerberos bind: the secret is the keytab (its SHA-256 is what is hashed).
    pub fn for_keytab(path: &Path) -> BindGuard {
        BindGuard {
            secret: SecretKind::Keytab,
            ..BindGuard::new(path)
        }
    }

    /// With `--retry-bind` (`retry`): [`BindGuard::check`] lets a bind through whatever the state
    /// file says (logged).
    pub fn retrying(self, retry: bool) -> BindGuard {
        BindGuard { retry, ..self }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ok when a bind as `bind_dn` with `secret` may be attempted at `now`: never again after a
    /// refusal that latches, and once `lockout_retry` has passed after one that does not.
    pub fn check(
        &self,
        bind_dn: &str,
        secret: &Secret,
        lockout_retry: Duration,
        now: SystemTime,
    ) -> Result<(), GuardError> {
        let Some(refusal) = self.read()? else {
            return Ok(());
        };
        if self.retry {
            tracing::warn!(
                state_file = %self.path.display(),
                refused_at = %refusal.when(),
                "--retry-bind: binding although this deployment's last bind was refused"
            );
            return Ok(());
        }
        if refusal.matches(bind_dn, secret) && !latches(refusal.code.as_deref()) {
            let retry_at = UNIX_EPOCH + Duration::from_secs(refusal.refused_at) + lockout_retry;
            if now < retry_at {
                return Err(GuardError::Waiting {
                    bind_dn: bind_dn.to_owned(),
                    refused: format!(
                        "{} refused this password at {} ({})",
                        refusal.dc,
                        refusal.when(),
                        refusal.reason
                    ),
                    retry_at: humantime::format_rfc3339_seconds(retry_at).to_string(),
                    state_file: self.path.clone(),
                });
            }
            tracing::error!(
                refused_at = %refusal.when(),
                reason = %refusal.reason,
                "binding again with the password refused for a lockout or logon restriction \
                 (ldap.lockout_retry has passed); a refusal now waits another lockout_retry"
            );
            return Ok(());
        }
        if refusal.matches(bind_dn, secret) {
            return Err(GuardError::SameSecret {
                secret: self.secret,
                bind_dn: bind_dn.to_owned(),
                dc: refusal.dc.clone(),
                when: refusal.when(),
                reason: refusal.reason.clone(),
                state_file: self.path.clone(),
            });
        }
        tracing::info!(
            refused_at = %refusal.when(),
            secret = self.secret.name(),
            "the LDAP secret (or who binds) changed since the last refused bind; trying it"
        );
        Ok(())
    }

    fn read(&self) -> Result<Option<Refusal>, GuardError> {
        let unreadable = |reason: String| GuardError::Unreadable {
            path: self.path.clone(),
            reason,
        };
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(unreadable(error.to_string())),
        };
        let refusal: Refusal =
            serde_json::from_str(&text).map_err(|error| unreadable(error.to_string()))?;
        if refusal.version != FORMAT_VERSION {
            return Err(unreadable(format!(
                "format version {} is not {FORMAT_VERSION}",
                refusal.version
            )));
        }
        Ok(Some(refusal))
    }

    /// Records that `dc` refused `secret` for `bind_dn` (atomically, mode 0600).
    pub fn record(
        &self,
        bind_dn: &str,
        secret: &Secret,
        dc: &str,
        code: Option<&str>,
        reason: &str,
        now: SystemTime,
    ) -> io::Result<()> {
        let mut salt = [0u8; SALT_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| io::Error::other("no random numbers for the salt"))?;
        let mut hash = [0u8; HASH_LEN];
        let iterations = NonZeroU32::new(ITERATIONS).ok_or_else(|| io::Error::other("0 rounds"))?;
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            &material(bind_dn, secret),
            &mut hash,
        );
        let refusal = Refusal {
            version: FORMAT_VERSION,
            salt: hex::encode(salt),
            hash: hex::encode(hash),
            dc: dc.to_owned(),
            code: code.map(str::to_owned),
            reason: reason.to_owned(),
            refused_at: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let text = serde_json::to_string_pretty(&refusal).map_err(io::Error::other)?;
        let directory = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut temporary = tempfile::Builder::new()
            .prefix(".ldap-bind-state")
            .permissions(<fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600))
            .tempfile_in(directory)?;
        temporary.write_all(text.as_bytes())?;
        temporary.as_file().sync_all()?;
        temporary.persist(&self.path).map_err(|error| error.error)?;
        Ok(())
    }

    /// A bind succeeded: forget any refusal.
    pub fn forget(&self) {
        match fs::remove_file(&self.path) {
            Ok(()) => tracing::info!(
                state_file = %self.path.display(),
                "the bind succeeded; the recorded refusal is cleared"
            ),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            // Harmless for this run: the next check finds a refusal of another secret, or this
            // one, and `--retry-bind` clears it.
            Err(error) => tracing::warn!(
                state_file = %self.path.display(),
                "could not remove the bind state file: {error}"
            ),
        }
    }
}

/// Whether a refusal with this AD sub-code stops every later bind with the same secret: it says
/// the secret is wrong or the account unusable until an administrator acts. 775 (locked out),
/// 530 and 531 (logon hours, workstation) do not; an unknown code or none does (the safe side).
pub fn latches(code: Option<&str>) -> bool {
    !matches!(code, Some("775" | "530" | "531"))
}

/// AD's sub-code in an LDAP 49 diagnostic (`..., data 52e, v4563`), lower-case.
pub fn ad_sub_code(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let start = lower.find("data ")? + "data ".len();
    let code: String = lower[start..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (!code.is_empty()).then_some(code)
}

/// What an AD sub-code of LDAP 49 means, in the words an operator searches for.
pub fn ad_sub_code_meaning(code: &str) -> &'static str {
    match code {
        "525" => "user not found",
        "52e" => "wrong password (Samba also says this for an unknown user)",
        "530" => "not permitted to log on at this time",
        "531" => "not permitted to log on at this workstation",
        "532" => "password expired",
        "533" => "account disabled",
        "701" => "account expired",
        "773" => "the user must change the password",
        "775" => "account locked out",
        _ => "unknown AD sub-code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_MINUTES: Duration = Duration::from_secs(600);

    fn secret(text: &str) -> Secret {
        Secret::new(text.to_owned())
    }

    #[test]
    fn sub_codes_are_parsed_and_named() {
        let text = "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 52e, v4563\0";
        assert_eq!(ad_sub_code(text).as_deref(), Some("52e"));
        assert_eq!(ad_sub_code("... data 775, v2580").as_deref(), Some("775"));
        assert_eq!(ad_sub_code("Invalid credentials"), None);
        assert!(ad_sub_code_meaning("533").contains("disabled"));
        assert!(ad_sub_code_meaning("701").contains("expired"));
        assert!(ad_sub_code_meaning("773").contains("change"));
        assert!(ad_sub_code_meaning("775").contains("locked"));
        assert!(ad_sub_code_meaning("532").contains("password expired"));
    }

    #[test]
    fn a_refused_secret_is_refused_again_until_it_changes_and_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let guard = BindGuard::new(&dir.path().join("state.json"));
        let dn = "CN=svc,DC=corp";
        guard
            .check(dn, &secret("hunter2"), TEN_MINUTES, SystemTime::now())
            .unwrap();
        guard
            .record(
                dn,
                &secret("hunter2"),
                "ldaps://dc1",
                Some("52e"),
                "wrong password",
                SystemTime::now(),
            )
            .unwrap();
        let text = fs::read_to_string(guard.path()).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(guard.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let error = guard
            .check(dn, &secret("hunter2"), TEN_MINUTES, SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("ldaps://dc1 refused this same password"),
            "{error}"
        );
        assert!(error.contains("--retry-bind"), "{error}");
        // Another secret, or another account: allowed.
        guard
            .check(dn, &secret("right"), TEN_MINUTES, SystemTime::now())
            .unwrap();
        guard
            .check(
                "CN=other,DC=corp",
                &secret("hunter2"),
                TEN_MINUTES,
                SystemTime::now(),
            )
            .unwrap();
        guard.forget();
        guard
            .check(dn, &secret("hunter2"), TEN_MINUTES, SystemTime::now())
            .unwrap();
    }

    #[test]
    fn a_lockout_is_retried_once_a_period_and_a_wrong_password_never() {
        let dir = tempfile::tempdir().unwrap();
        let guard = BindGuard::new(&dir.path().join("state.json"));
        let dn = "CN=svc,DC=corp";
        let at = SystemTime::now();
        for code in ["775", "530", "531"] {
            guard
                .record(
                    dn,
                    &secret("right"),
                    "ldaps://dc1",
                    Some(code),
                    "locked",
                    at,
                )
                .unwrap();
            let error = guard
                .check(
                    dn,
                    &secret("right"),
                    TEN_MINUTES,
                    at + Duration::from_secs(60),
                )
                .unwrap_err();
            assert!(
                matches!(error, GuardError::Waiting { .. }),
                "{code}: {error}"
            );
            assert!(error.to_string().contains("lockout_retry"), "{error}");
            guard
                .check(dn, &secret("right"), TEN_MINUTES, at + TEN_MINUTES)
                .unwrap();
        }
        for code in ["52e", "525", "532", "533", "701", "773"] {
            guard
                .record(dn, &secret("wrong"), "ldaps://dc1", Some(code), "no", at)
                .unwrap();
            let later = at + 1000 * TEN_MINUTES;
            let error = guard
                .check(dn, &secret("wrong"), TEN_MINUTES, later)
                .unwrap_err();
            assert!(
                matches!(error, GuardError::SameSecret { .. }),
                "{code}: {error}"
            );
        }
        // No sub-code (not AD): latched, the safe side.
        assert!(latches(None));
    }

    #[test]
    fn a_corrupt_state_file_stops_the_bind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "not json").unwrap();
        let error = BindGuard::new(&path)
            .check("CN=svc", &secret("x"), TEN_MINUTES, SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot read the bind state file"), "{error}");
    }
}
