//! `[ldap]`: how the publisher reaches Active Directory and proves who it is (simple bind with a
//! password read only at the bind, or Kerberos with a keytab), and the checks of those keys.
//!
//! The password never lives in the settings file: [`Secret`] keeps it out of every `Debug`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use super::PASSWORD_ENV;
use super::check::{Checker, check_non_empty};
use super::safety::DEFAULT_LOCK_FILE;

#[derive(Debug, Clone)]
pub struct LdapSettings {
    /// The domain controllers named in `url`, tried in this order (before any found via `srv`).
    pub urls: Vec<String>,
    /// `srv`: the DNS domain whose `_ldap._tcp` SRV records name more DCs (reached over LDAPS).
    pub srv: Option<String>,
    /// `dns_server`: who is asked for the SRV records; `None`: the system's resolvers.
    pub dns_server: Option<std::net::SocketAddr>,
    /// Remembers a bind refused with invalid credentials, so the same secret is never tried
    /// again (see `crate::publisher::directory::bind_guard`).
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
    /// same secret (see `crate::publisher::directory::bind_guard`).
    pub lockout_retry: Duration,
    /// How keyhole proves who it is: a simple bind with `bind_dn` and `password`, or Kerberos
    /// (GSSAPI) with a keytab, where `bind_dn` and `password` are not used.
    pub auth: LdapAuth,
    /// `trust_system_roots = true`: with `srv` and no `ca_file`, accept a DC whose certificate
    /// any public root signed. Off by default: see `crate::publisher::directory::discovery`.
    pub trust_system_roots: bool,
    /// `full_read_interval`: between two full reads, runs read only what changed (see
    /// `crate::publisher::directory::usn`); a full read also sees deletions, which polling cannot.
    pub full_read_interval: Duration,
    /// `--retry-bind` for this process (not a settings key): bind even though the bind state
    /// file says this secret was refused. Set by [`super::Settings::with_bind_retry`].
    pub retry_bind: bool,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLdap {
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
    full_read_interval: Option<String>,
}

/// `url = "ldaps://dc1"` as well as `url = ["ldaps://dc1", "ldaps://dc2"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

pub(super) fn validate(
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
        full_read_interval: check.duration(
            S,
            "full_read_interval",
            raw.full_read_interval.as_deref(),
            "1h",
        ),
        retry_bind: false,
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
