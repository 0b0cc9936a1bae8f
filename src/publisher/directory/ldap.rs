//! Reading Active Directory over LDAP: one TLS connection, one bind as the service account (a
//! simple bind with its password, or Kerberos from a keytab, see [`super::kerberos`]), and a
//! fixed number of bulk, paged searches whatever the policy says.
//!
//! Several domain controllers: the candidates (`[ldap] url` list, then `srv` discovery, see
//! [`super::discovery`]) are tried in order. A connection failure, TLS failure, timeout or a bind
//! answered with anything but success or invalid credentials (busy, unavailable, ...) is logged
//! and the next DC is tried; when none is left the error names every DC and its reason. A bind
//! refused with invalid credentials (LDAP 49) ends the run at once: trying it on another DC would
//! only add to the account's bad-password count (see [`super::bind_guard`]). Once a DC has
//! accepted the bind, any later failure (a cut connection in the middle of a paged search) fails
//! the run; the next run starts again from the first DC.
//!
//! The round trips are: one base read of the domain object, `users / page_size` pages of users,
//! `groups / page_size` pages of groups, and one ranged read per 1,500 members beyond the first
//! 1,500 of a large group. Nothing here depends on the number of access groups; expansion happens
//! in memory (`crate::publisher::resolve`).
//!
//! This module must never return a partial snapshot: any LDAP error, timeout, unfinished page or
//! unfinished `member;range=` read is an error, so an outage can never look like "nobody is a
//! member any more". It never sends the password over an unencrypted connection: `ldap://` URLs
//! always upgrade with StartTLS before the bind.

use std::sync::Arc;
use std::time::Duration;

use ldap3::controls::{ControlType, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::bind_guard::{self, BindGuard, GuardError};
use super::kerberos::{self, Keytab, KeytabError, Problem};
use super::model::{
    Dn, Domain, EntryError, Group, Snapshot, USER_ATTRIBUTES, User, group_from_entry, object_guid,
};
use crate::settings::{LdapAuth, LdapSettings, Secret};

/// People: excludes computers (which are objectClass=user too) and contacts.
pub(super) const USER_FILTER: &str = "(&(objectCategory=person)(objectClass=user))";
pub(super) const GROUP_FILTER: &str = "(objectClass=group)";
const GROUP_ATTRIBUTES: &[&str] = &["sAMAccountName", "objectSid"];

/// Counts of the LDAP operations one read made, for logs, benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Search requests sent (each page and each ranged read is one).
    pub searches: usize,
    /// Of those, reads of further `member;range=` slices.
    pub ranged_reads: usize,
    /// Base reads of the rootDSE and the DC's NTDS Settings, which say which DC answered and
    /// how far its changes go (see `super::usn`); not counted in `searches`, which are the
    /// searches of the directory's content.
    pub dc_reads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<LdapError>,
    },
    #[error("{url} did not answer within {timeout:?} while {doing}")]
    Timeout {
        url: String,
        timeout: Duration,
        doing: String,
    },
    #[error("reading the LDAP password")]
    Password(#[source] anyhow::Error),
    #[error("bind as {bind_dn} refused by {url}: {reason}")]
    Bind {
        url: String,
        bind_dn: String,
        reason: String,
    },
    /// LDAP 49: never retried, here or on another DC.
    #[error(
        "bind as {bind_dn} refused by {url}: invalid credentials (LDAP 49{}); no other DC was tried and {}{}",
        code.as_ref().map(|c| format!(", AD data {c}: {}", bind_guard::ad_sub_code_meaning(c))).unwrap_or_default(),
        if bind_guard::latches(code.as_deref()) { "keyhole will not bind with this password again until it changes (or --retry-bind)" } else { "keyhole binds with this password again once ldap.lockout_retry has passed (or with --retry-bind)" },
        state_problem.as_ref().map(|p| format!(" [warning: {p}]")).unwrap_or_default()
    )]
    InvalidCredentials {
        url: String,
        bind_dn: String,
        /// AD's `data <code>` sub-code, lower-case hex.
        code: Option<String>,
        /// Set when the refusal could not be written to the bind state file.
        state_problem: Option<String>,
    },
    /// Boxed: the guard's message carries five strings, and every `Result` here pays for the
    /// largest variant.
    #[error(transparent)]
    Guard(Box<GuardError>),
    #[error(transparent)]
    Keytab(#[from] KeytabError),
    /// A Kerberos problem of this machine or this DC (not a refused secret).
    #[error("Kerberos bind to {url} failed: {} (Kerberos said: {said}); {}", problem.summary(), problem.fix())]
    Kerberos {
        url: String,
        problem: Problem,
        said: String,
    },
    /// The KDC refused the keytab's secret: never retried, here or on another DC.
    #[error(
        "Kerberos refused {principal} (binding to {url}): {} (Kerberos said: {said}); no other DC was tried and keyhole will not use this keytab again until the file changes (or --retry-bind); {}{}",
        problem.summary(),
        problem.fix(),
        state_problem.as_ref().map(|p| format!(" [warning: {p}]")).unwrap_or_default()
    )]
    KerberosRefused {
        url: String,
        principal: String,
        problem: Problem,
        said: String,
        state_problem: Option<String>,
    },
    #[error(
        "ldap.auth = \"gssapi\" needs the publisher build of keyhole (cargo build --release --features gssapi); this binary was built without Kerberos (the instance package never has it)"
    )]
    GssapiNotBuilt,
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("no domain controller could be used ({} tried):\n{}", failures.len(), failures.iter().map(|(url, reason)| format!("  {url}: {reason}")).collect::<Vec<_>>().join("\n"))]
    AllFailed { failures: Vec<(String, String)> },
    #[error(transparent)]
    Discovery(#[from] super::discovery::DiscoveryError),
    #[error("LDAP error while {doing}: {source}")]
    Protocol {
        doing: String,
        #[source]
        source: Box<LdapError>,
    },
    #[error("search for {what} under {base} failed: {reason}")]
    Search {
        what: String,
        base: String,
        reason: String,
    },
    #[error(
        "the base DN {0} was not found or has no objectSid (is ldap.base_dn the domain's root?)"
    )]
    NoDomain(String),
    #[error(transparent)]
    Entry(#[from] EntryError),
    #[error("group {dn}: the server did not finish the member;range= reads ({detail})")]
    UnfinishedRange { dn: String, detail: String },
}

impl DirectoryError {
    /// True for a bind refused with invalid credentials, now or (by the bind guard) before: the
    /// `keyhole_publish_ldap_bind_refused` metric.
    pub fn is_bind_refusal(&self) -> bool {
        matches!(
            self,
            DirectoryError::InvalidCredentials { .. } | DirectoryError::KerberosRefused { .. }
        ) || matches!(self, DirectoryError::Guard(guard) if matches!(**guard, GuardError::SameSecret { .. } | GuardError::Waiting { .. }))
    }
}

impl From<GuardError> for DirectoryError {
    fn from(error: GuardError) -> DirectoryError {
        DirectoryError::Guard(Box::new(error))
    }
}

/// True when `error` (anywhere in its chain) is a refused bind; see
/// [`DirectoryError::is_bind_refusal`].
pub fn is_bind_refusal(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<DirectoryError>()
            .is_some_and(DirectoryError::is_bind_refusal)
    })
}

/// Connects to the first domain controller that answers, binds and reads every user and group
/// under `base_dn`.
pub async fn read_snapshot(
    settings: &LdapSettings,
) -> Result<(Snapshot, ReadStats), DirectoryError> {
    let mut session = connect(settings).await?;
    let result = session.read_all().await;
    let stats = session.stats;
    session.close().await;
    result.map(|snapshot| (snapshot, stats))
}

/// A DC's identity and how far its changes go, as read at the start of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcReading {
    /// The URL keyhole reached it at.
    pub url: String,
    /// rootDSE `dsServiceName` (its NTDS Settings object's DN), lower-cased.
    pub service: String,
    /// That object's `invocationId`, hex: changes when the DC's database is restored.
    pub invocation_id: String,
    /// rootDSE `highestCommittedUSN`.
    pub usn: u64,
}

/// An entry's `objectGUID`, which the directory state is keyed by; an entry without one cannot
/// be cached, so it fails the read.
fn guid_of(entry: &SearchEntry) -> Result<String, DirectoryError> {
    object_guid(entry).ok_or_else(|| {
        DirectoryError::Entry(EntryError::Missing {
            dn: entry.dn.clone(),
            attribute: "objectGUID",
        })
    })
}

/// What `keyhole check-bind` proves: which DC accepted the bind and who AD says keyhole is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BoundIdentity {
    pub dc: String,
    /// "simple" or "gssapi".
    pub auth: &'static str,
    /// The authorization identity of the "Who am I?" extended operation (RFC 4532), e.g.
    /// `u:CORP\svc-keyhole`.
    pub identity: String,
}

/// Binds exactly as a run would (same DCs, same guard) and asks AD who keyhole is.
pub async fn check_bind(settings: &LdapSettings) -> Result<BoundIdentity, DirectoryError> {
    let mut session = connect(settings).await?;
    let answer = session
        .ldap
        .with_timeout(settings.timeout)
        .extended(ldap3::exop::WhoAmI)
        .await
        .map_err(|source| operation_error(settings, &session.url, "asking who am I", source))?;
    let (exop, result) = (answer.0, answer.1);
    let identity = if result.rc == 0 {
        exop.val
            .map(|value| String::from_utf8_lossy(&value).into_owned())
            .unwrap_or_default()
    } else {
        // Windows AD answers "Who am I?"; Samba does not. Then the bound account's own entry,
        // read over the bound connection, is the best proof of who keyhole is.
        let name = match &settings.auth {
            LdapAuth::Simple => Some(settings.bind_dn.clone()),
            LdapAuth::Gssapi(kerberos) => kerberos.principal.clone(),
        };
        let found = match name {
            Some(name) => session.own_entry(&name).await?,
            None => None,
        };
        match found {
            Some(dn) => format!(
                "dn:{dn} (this DC does not answer \"Who am I?\": {}; the bound account's entry was read instead)",
                result_reason(result.rc, &result.text)
            ),
            None => format!(
                "an identity it does not name (this DC does not answer \"Who am I?\": {})",
                result_reason(result.rc, &result.text)
            ),
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), session.ldap.unbind()).await;
    Ok(BoundIdentity {
        dc: session.url.clone(),
        auth: match settings.auth {
            LdapAuth::Simple => "simple",
            LdapAuth::Gssapi(_) => "gssapi",
        },
        identity,
    })
}

/// What keyhole binds with: a password, or a keytab (whose fingerprint the guard keeps).
enum Credential {
    Password(Secret),
    Keytab(Keytab),
}

impl Credential {
    fn read(settings: &LdapSettings) -> Result<Credential, DirectoryError> {
        match &settings.auth {
            LdapAuth::Simple => Ok(Credential::Password(
                settings.password.read().map_err(DirectoryError::Password)?,
            )),
            LdapAuth::Gssapi(kerberos) => {
                if !cfg!(feature = "gssapi") {
                    return Err(DirectoryError::GssapiNotBuilt);
                }
                let environment = std::env::var("KRB5_CLIENT_KTNAME").ok();
                Ok(Credential::Keytab(kerberos::prepare(
                    kerberos,
                    environment.as_deref(),
                )?))
            }
        }
    }

    /// Who binds and the secret the guard hashes.
    fn guarded(&self, settings: &LdapSettings) -> (String, &Secret) {
        match self {
            Credential::Password(password) => (settings.bind_dn.clone(), password),
            Credential::Keytab(keytab) => (keytab.who.clone(), &keytab.fingerprint),
        }
    }

    fn guard(&self, settings: &LdapSettings) -> BindGuard {
        let guard = match self {
            Credential::Password(_) => BindGuard::new(&settings.bind_state_file),
            Credential::Keytab(_) => BindGuard::for_keytab(&settings.bind_state_file),
        };
        guard.retrying(settings.retry_bind)
    }
}

/// The first DC that accepts the bind, tried in order; a refused secret ends the search.
pub(super) async fn connect(settings: &LdapSettings) -> Result<Session<'_>, DirectoryError> {
    let credential = Credential::read(settings)?;
    let guard = credential.guard(settings);
    let (who, secret) = credential.guarded(settings);
    // Before any network traffic: a refused secret must not even reach a DC again.
    guard.check(
        &who,
        secret,
        settings.lockout_retry,
        std::time::SystemTime::now(),
    )?;
    let candidates = super::discovery::candidates(settings).await?;
    let mut failures = Vec::new();
    for (position, url) in candidates.iter().enumerate() {
        match Session::open(settings, url, &credential).await {
            Ok(session) => {
                guard.forget();
                if !failures.is_empty() {
                    tracing::warn!(
                        dc = %url,
                        failed = failures.len(),
                        "using this domain controller after the ones before it failed"
                    );
                }
                return Ok(session);
            }
            Err(Opening::Unusable(error)) => {
                if position + 1 < candidates.len() {
                    tracing::warn!(dc = %url, "domain controller unusable, trying the next: {error}");
                } else {
                    tracing::warn!(dc = %url, "domain controller unusable, and it was the last: {error}");
                }
                failures.push((url.clone(), error));
            }
            Err(Opening::Refused { text }) => {
                let code = bind_guard::ad_sub_code(&text);
                let meaning = code.as_deref().map_or_else(
                    || "no AD sub-code".to_owned(),
                    |code| format!("AD data {code}: {}", bind_guard::ad_sub_code_meaning(code)),
                );
                let state_problem = record(&guard, &who, secret, url, code.as_deref(), &meaning);
                return Err(DirectoryError::InvalidCredentials {
                    url: url.clone(),
                    bind_dn: who,
                    code,
                    state_problem,
                });
            }
            Err(Opening::KerberosRefused { problem, said }) => {
                let state_problem = record(&guard, &who, secret, url, None, problem.summary());
                return Err(DirectoryError::KerberosRefused {
                    url: url.clone(),
                    principal: who,
                    problem,
                    said,
                    state_problem,
                });
            }
            Err(Opening::Fatal(error)) => return Err(error),
        }
    }
    // One DC: its own error, as it always read. Several: each with its reason.
    if failures.len() == 1
        && let Some((_, error)) = failures.pop()
    {
        return Err(error);
    }
    Err(DirectoryError::AllFailed {
        failures: failures
            .into_iter()
            .map(|(url, error)| (url, error.to_string()))
            .collect(),
    })
}

/// Writes a refusal to the bind state file; the problem, if that fails, for the error message.
fn record(
    guard: &BindGuard,
    who: &str,
    secret: &Secret,
    url: &str,
    code: Option<&str>,
    meaning: &str,
) -> Option<String> {
    guard
        .record(
            who,
            secret,
            url,
            code,
            meaning,
            std::time::SystemTime::now(),
        )
        .err()
        .map(|error| {
            format!(
                "could not record the refusal in {}: {error}",
                guard.path().display()
            )
        })
}

/// Why a DC could not be used.
enum Opening {
    /// Not this DC's day (connection, TLS, timeout, busy): the next DC may work.
    Unusable(DirectoryError),
    /// LDAP 49: stop everything, with the server's diagnostic text (for AD's sub-code).
    Refused { text: String },
    /// The KDC refused the keytab's secret: stop everything, as for LDAP 49.
    #[cfg_attr(not(feature = "gssapi"), allow(dead_code))]
    KerberosRefused { problem: Problem, said: String },
    /// A problem of this machine (the CA file): no other DC would do better.
    Fatal(DirectoryError),
}

pub(super) struct Session<'s> {
    settings: &'s LdapSettings,
    url: String,
    ldap: Ldap,
    stats: ReadStats,
}

impl<'s> Session<'s> {
    async fn open(
        settings: &'s LdapSettings,
        url: &str,
        credential: &Credential,
    ) -> Result<Session<'s>, Opening> {
        let tls = tls_config(settings).map_err(Opening::Fatal)?;
        let timeout = |doing: &str| {
            Opening::Unusable(DirectoryError::Timeout {
                url: url.to_owned(),
                timeout: settings.timeout,
                doing: doing.to_owned(),
            })
        };
        let (host, port) = host_and_port(url);
        let mut connection = LdapConnSettings::new()
            .set_conn_timeout(settings.timeout)
            .set_config(tls)
            .set_starttls(url.starts_with("ldap://"));
        // Where `dns_server` says the DC is, while TLS and Kerberos still see its name.
        let address = super::discovery::address_of(&host, port, settings)
            .await
            .map_err(|reason| {
                Opening::Unusable(DirectoryError::Unreachable {
                    url: url.to_owned(),
                    reason,
                })
            })?;
        if let Some(address) = address {
            let stream =
                tokio::time::timeout(settings.timeout, tokio::net::TcpStream::connect(address))
                    .await
                    .map_err(|_| timeout("connecting"))?
                    .and_then(|stream| stream.into_std())
                    .map_err(|error| {
                        Opening::Unusable(DirectoryError::Unreachable {
                            url: url.to_owned(),
                            reason: format!("connecting to {address}: {error}"),
                        })
                    })?;
            connection = connection.set_std_stream(ldap3::StdStream::Tcp(stream));
        }
        // The whole connect, including the TLS handshake, is bounded: a DC that accepts the TCP
        // connection and then says nothing must not hold the run.
        let connected = tokio::time::timeout(
            settings.timeout,
            LdapConnAsync::with_settings(connection, url),
        )
        .await
        .map_err(|_| timeout("connecting"))?;
        let (driver, mut ldap) = connected.map_err(|source| match source {
            LdapError::Timeout { .. } => timeout("connecting"),
            source => Opening::Unusable(DirectoryError::Connect {
                url: url.to_owned(),
                source: Box::new(source),
            }),
        })?;
        ldap3::drive!(driver);

        let bind = match credential {
            Credential::Password(password) => {
                ldap.with_timeout(settings.timeout)
                    .simple_bind(&settings.bind_dn, password.expose())
                    .await
            }
            Credential::Keytab(keytab) => {
                kerberos_bind(&ldap, url, &host, keytab, settings.timeout).await?
            }
        };
        let bind = bind.map_err(|source| match source {
            LdapError::Timeout { .. } => timeout("binding"),
            source => Opening::Unusable(DirectoryError::Protocol {
                doing: format!("binding to {url}"),
                source: Box::new(source),
            }),
        })?;
        match bind.rc {
            0 => {}
            49 => return Err(Opening::Refused { text: bind.text }),
            rc => {
                return Err(Opening::Unusable(DirectoryError::Bind {
                    url: url.to_owned(),
                    bind_dn: credential.guarded(settings).0,
                    reason: result_reason(rc, &bind.text),
                }));
            }
        }
        Ok(Session {
            settings,
            url: url.to_owned(),
            ldap,
            stats: ReadStats::default(),
        })
    }

    /// The DN of the account `name` (a DN, or a Kerberos principal `user@REALM`), read over
    /// this bound connection; `None` when it is not there.
    async fn own_entry(&mut self, name: &str) -> Result<Option<String>, DirectoryError> {
        let base = self.settings.base_dn.clone();
        let (base, scope, filter) = match name.split_once('@') {
            Some((user, _)) if !name.contains('=') => (
                base,
                Scope::Subtree,
                format!("(sAMAccountName={})", ldap3::ldap_escape(user)),
            ),
            _ => (name.to_owned(), Scope::Base, "(objectClass=*)".to_owned()),
        };
        let entries = self
            .search(&base, scope, &filter, &["objectSid"], "the bound account")
            .await?;
        Ok(entries.first().map(|entry| entry.dn.clone()))
    }

    async fn read_all(&mut self) -> Result<Snapshot, DirectoryError> {
        let domain = self.read_domain().await?;
        let users = self
            .read_users(USER_FILTER, "users")
            .await?
            .into_iter()
            .map(|(_, user)| user)
            .collect::<Vec<_>>();
        let groups = self
            .read_groups(GROUP_FILTER, "groups")
            .await?
            .into_iter()
            .map(|(_, group)| group)
            .collect::<Vec<_>>();
        tracing::info!(
            users = users.len(),
            groups = groups.len(),
            searches = self.stats.searches,
            ranged_reads = self.stats.ranged_reads,
            "read the directory"
        );
        Ok(Snapshot {
            domain: Some(domain),
            users,
            groups,
        })
    }

    /// The domain object under `base_dn`: its SID and lockout duration (one base read).
    pub(super) async fn read_domain(&mut self) -> Result<Domain, DirectoryError> {
        let base = self.settings.base_dn.clone();
        let domain = self
            .search(
                &base,
                Scope::Base,
                "(objectClass=*)",
                &["objectSid", "lockoutDuration"],
                "the domain object",
            )
            .await?;
        domain
            .first()
            .map(Domain::try_from)
            .transpose()
            .map_err(|_| DirectoryError::NoDomain(base.clone()))?
            .ok_or(DirectoryError::NoDomain(base))
    }

    /// Which DC this is and how far its changes go: rootDSE's `dsServiceName` and
    /// `highestCommittedUSN`, and the `invocationId` of that NTDS Settings object (two base
    /// reads, no paging: rootDSE is one entry).
    pub(super) async fn read_dc(&mut self) -> Result<DcReading, DirectoryError> {
        let root = self
            .read_one("", &["dsServiceName", "highestCommittedUSN"], "the rootDSE")
            .await?;
        let text = |name: &str| {
            root.attrs
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .and_then(|(_, values)| values.first())
                .cloned()
        };
        let missing = |what: &str| DirectoryError::Search {
            what: "the rootDSE".into(),
            base: String::new(),
            reason: format!("it has no {what}"),
        };
        let service = text("dsServiceName").ok_or_else(|| missing("dsServiceName"))?;
        let usn = text("highestCommittedUSN")
            .and_then(|usn| usn.trim().parse::<u64>().ok())
            .ok_or_else(|| missing("highestCommittedUSN (a number)"))?;
        let settings = self
            .read_one(&service, &["invocationId"], "the DC's NTDS Settings")
            .await?;
        let invocation_id = settings
            .bin_attrs
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("invocationId"))
            .and_then(|(_, values)| values.first())
            .map(hex::encode)
            .or_else(|| {
                // Rare, but a 16-byte value can be valid UTF-8, and then ldap3 hands it out as text.
                settings
                    .attrs
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case("invocationId"))
                    .and_then(|(_, values)| values.first())
                    .map(|value| hex::encode(value.as_bytes()))
            })
            .ok_or_else(|| DirectoryError::Search {
                what: "the DC's NTDS Settings".into(),
                base: service.clone(),
                reason: "it has no invocationId keyhole may read".into(),
            })?;
        Ok(DcReading {
            url: self.url.clone(),
            service: service.to_lowercase(),
            invocation_id,
            usn,
        })
    }

    /// People matching `filter` (which must select people only), with their `objectGUID`.
    pub(super) async fn read_users(
        &mut self,
        filter: &str,
        what: &str,
    ) -> Result<Vec<(String, User)>, DirectoryError> {
        let mut attributes = USER_ATTRIBUTES.to_vec();
        attributes.push("objectGUID");
        let base = self.settings.base_dn.clone();
        self.search(&base, Scope::Subtree, filter, &attributes, what)
            .await?
            .iter()
            .map(|entry| Ok((guid_of(entry)?, User::try_from(entry)?)))
            .collect()
    }

    /// Groups matching `filter`, each with its complete member list (ranged reads as needed)
    /// and its `objectGUID`.
    pub(super) async fn read_groups(
        &mut self,
        filter: &str,
        what: &str,
    ) -> Result<Vec<(String, Group)>, DirectoryError> {
        let member_attribute = match self.settings.member_range {
            Some(size) => format!("member;range=0-{}", size - 1),
            None => "member".to_owned(),
        };
        let mut attributes = GROUP_ATTRIBUTES.to_vec();
        attributes.push(&member_attribute);
        attributes.push("objectGUID");
        let base = self.settings.base_dn.clone();
        let entries = self
            .search(&base, Scope::Subtree, filter, &attributes, what)
            .await?;
        let mut groups = Vec::with_capacity(entries.len());
        for entry in &entries {
            let members = self.read_members(entry).await?;
            groups.push((guid_of(entry)?, group_from_entry(entry, members)?));
        }
        Ok(groups)
    }

    /// How many entries under the base match `filter` (only their DNs are asked for).
    pub(super) async fn count(
        &mut self,
        filter: &str,
        what: &str,
    ) -> Result<usize, DirectoryError> {
        let base = self.settings.base_dn.clone();
        Ok(self
            .search(&base, Scope::Subtree, filter, &["1.1"], what)
            .await?
            .len())
    }

    pub(super) fn stats(&self) -> ReadStats {
        self.stats
    }

    /// Says goodbye; best effort, the read is what matters.
    pub(super) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ldap.unbind()).await;
    }

    /// A search's entries and result, or the error naming what was searched, under which base,
    /// and why: the connection failed, or the DC answered with a non-zero result code.
    fn answered(
        &self,
        answer: ldap3::result::Result<ldap3::SearchResult>,
        what: &str,
        base: &str,
    ) -> Result<(Vec<ldap3::ResultEntry>, ldap3::LdapResult), DirectoryError> {
        let ldap3::SearchResult(entries, outcome) = answer.map_err(|source| {
            operation_error(
                self.settings,
                &self.url,
                &format!("searching {what}"),
                source,
            )
        })?;
        if outcome.rc != 0 {
            return Err(DirectoryError::Search {
                what: what.to_owned(),
                base: base.to_owned(),
                reason: result_reason(outcome.rc, &outcome.text),
            });
        }
        Ok((entries, outcome))
    }

    /// One entry read with a base search and no paging control.
    async fn read_one(
        &mut self,
        dn: &str,
        attributes: &[&str],
        what: &str,
    ) -> Result<SearchEntry, DirectoryError> {
        self.stats.dc_reads += 1;
        let result = self
            .ldap
            .with_timeout(self.settings.timeout)
            .search(dn, Scope::Base, "(objectClass=*)", attributes.to_vec())
            .await;
        let (entries, _) = self.answered(result, what, dn)?;
        entries
            .into_iter()
            .find(|entry| !entry.is_ref() && !entry.is_intermediate())
            .map(SearchEntry::construct)
            .ok_or_else(|| DirectoryError::Search {
                what: what.to_owned(),
                base: dn.to_owned(),
                reason: "no entry returned".into(),
            })
    }

    /// A group's complete member list: the values in the bulk answer, then further
    /// `member;range=` slices until the server marks the last one with `*`.
    async fn read_members(&mut self, entry: &SearchEntry) -> Result<Vec<Dn>, DirectoryError> {
        let (mut members, mut more_after) = member_slice(entry);
        while let Some(end) = more_after {
            let next = format!("member;range={}-{}", end + 1, self.range_end(end + 1));
            self.stats.ranged_reads += 1;
            let answer = self
                .search(
                    &entry.dn,
                    Scope::Base,
                    "(objectClass=*)",
                    &[next.as_str()],
                    "group members",
                )
                .await?;
            let unfinished = |detail: String| DirectoryError::UnfinishedRange {
                dn: entry.dn.clone(),
                detail,
            };
            let Some(answer) = answer.first() else {
                return Err(unfinished(format!(
                    "the group vanished while reading {next}"
                )));
            };
            if !has_member_attribute(answer) {
                return Err(unfinished(format!("no values returned for {next}")));
            }
            let (values, new_end) = member_slice(answer);
            if let Some(new_end) = new_end
                && new_end <= end
            {
                return Err(unfinished(format!(
                    "asked for {next}, got a range ending at {new_end}"
                )));
            }
            members.extend(values);
            more_after = new_end;
        }
        Ok(members)
    }

    fn range_end(&self, start: u64) -> String {
        match self.settings.member_range {
            Some(size) => (start + u64::from(size) - 1).to_string(),
            None => "*".to_owned(),
        }
    }

    /// One paged search (RFC 2696), all pages; an error on any page fails the whole search.
    async fn search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: &[&str],
        what: &str,
    ) -> Result<Vec<SearchEntry>, DirectoryError> {
        let page_size = i32::try_from(self.settings.page_size).unwrap_or(i32::MAX);
        let mut entries = Vec::new();
        let mut cookie = Vec::new();
        loop {
            self.stats.searches += 1;
            let control = PagedResults {
                size: page_size,
                cookie: std::mem::take(&mut cookie),
            };
            let result = self
                .ldap
                .with_timeout(self.settings.timeout)
                .with_controls(control)
                .search(base, scope, filter, attributes.to_vec())
                .await;
            let (page, outcome) = self.answered(result, what, base)?;
            // Continuation references (other partitions, e.g. DomainDnsZones) are not entries.
            entries.extend(
                page.into_iter()
                    .filter(|entry| !entry.is_ref() && !entry.is_intermediate())
                    .map(SearchEntry::construct),
            );
            let next = outcome.ctrls.iter().find_map(|control| match control {
                ldap3::controls::Control(Some(ControlType::PagedResults), raw) => {
                    Some(raw.parse::<PagedResults>().cookie)
                }
                _ => None,
            });
            match next {
                Some(next) if !next.is_empty() => cookie = next,
                _ => return Ok(entries),
            }
        }
    }
}

/// The member DNs in one answer, and where the slice ended when more slices follow: a plain
/// `member` or a last slice `member;range=N-*` is complete, `member;range=N-M` is not.
fn member_slice(entry: &SearchEntry) -> (Vec<Dn>, Option<u64>) {
    for (name, values) in &entry.attrs {
        let lower = name.to_ascii_lowercase();
        let more_after = if lower == "member" {
            None
        } else if let Some((_, end)) = lower
            .strip_prefix("member;range=")
            .and_then(|range| range.split_once('-'))
        {
            // "*" marks the last slice.
            end.parse().ok()
        } else {
            continue;
        };
        return (values.iter().map(|dn| Dn::new(dn)).collect(), more_after);
    }
    // No member attribute at all: an empty group.
    (Vec::new(), None)
}

fn has_member_attribute(entry: &SearchEntry) -> bool {
    entry
        .attrs
        .keys()
        .any(|name| name.to_ascii_lowercase().starts_with("member"))
}

/// The host (without brackets) and port of an `ldaps://` or `ldap://` URL.
fn host_and_port(url: &str) -> (String, u16) {
    let default_port = if url.starts_with("ldaps://") {
        636
    } else {
        389
    };
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').unwrap_or((bracketed, ""));
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = port.and_then(|p| p.parse().ok()).unwrap_or(default_port);
    (host.to_owned(), port)
}

/// The GSSAPI bind, with what Kerberos said turned into a named problem: a refused secret stops
/// the run like LDAP 49, a problem of this machine stops it at once, a problem of this DC's name
/// lets the next DC be tried.
#[cfg(feature = "gssapi")]
async fn kerberos_bind(
    ldap: &Ldap,
    url: &str,
    host: &str,
    keytab: &Keytab,
    timeout: Duration,
) -> Result<ldap3::result::Result<ldap3::LdapResult>, Opening> {
    match kerberos::gssapi_bind(ldap, host, keytab, timeout).await {
        Err(LdapError::GssapiOperationError(said)) => {
            let said = kerberos::one_line(&said);
            let problem = Problem::of(&said);
            let error = DirectoryError::Kerberos {
                url: url.to_owned(),
                problem,
                said: said.clone(),
            };
            Err(if problem.refuses_secret() {
                Opening::KerberosRefused { problem, said }
            } else if problem.is_this_dc() {
                Opening::Unusable(error)
            } else {
                Opening::Fatal(error)
            })
        }
        other => Ok(other),
    }
}

#[cfg(not(feature = "gssapi"))]
async fn kerberos_bind(
    _ldap: &Ldap,
    _url: &str,
    _host: &str,
    _keytab: &Keytab,
    _timeout: Duration,
) -> Result<ldap3::result::Result<ldap3::LdapResult>, Opening> {
    Err(Opening::Fatal(DirectoryError::GssapiNotBuilt))
}

fn operation_error(
    settings: &LdapSettings,
    url: &str,
    doing: &str,
    source: LdapError,
) -> DirectoryError {
    match source {
        LdapError::Timeout { .. } => DirectoryError::Timeout {
            url: url.to_owned(),
            timeout: settings.timeout,
            doing: doing.to_owned(),
        },
        source => DirectoryError::Protocol {
            doing: format!("{doing} on {url}"),
            source: Box::new(source),
        },
    }
}

fn result_reason(rc: u32, text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        format!("result code {rc}")
    } else {
        format!("result code {rc}: {text}")
    }
}

/// rustls with the ring provider (the one TLS stack, see DEPENDENCIES.md), trusting `ca_file`
/// when given and the system roots otherwise.
fn tls_config(settings: &LdapSettings) -> Result<Arc<rustls::ClientConfig>, DirectoryError> {
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            let ca_error = |reason: String| DirectoryError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|error| ca_error(error.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| ca_error(error.to_string()))?;
            if certificates.is_empty() {
                return Err(ca_error("no PEM certificates in it".into()));
            }
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|error| ca_error(error.to_string()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for certificate in native.certs {
                // A single unusable system certificate should not stop the others from working.
                let _ = roots.add(certificate);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| DirectoryError::CaFile {
        path: "(TLS set-up)".into(),
        reason: error.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn entry(attrs: &[(&str, &[&str])]) -> SearchEntry {
        SearchEntry {
            dn: "CN=g".into(),
            attrs: attrs
                .iter()
                .map(|(name, values)| {
                    (
                        name.to_string(),
                        values.iter().map(|v| v.to_string()).collect(),
                    )
                })
                .collect::<HashMap<_, _>>(),
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn member_slices_are_recognised_in_every_form() {
        let (members, more) = member_slice(&entry(&[("member", &["CN=A", "cn=b"])]));
        assert_eq!(members, [Dn::new("cn=a"), Dn::new("cn=b")]);
        assert_eq!(more, None);
        assert_eq!(
            member_slice(&entry(&[("member;range=0-1499", &["a"])])).1,
            Some(1499)
        );
        let (members, more) = member_slice(&entry(&[("Member;Range=1500-*", &["a"])]));
        assert_eq!((members.len(), more), (1, None));
        assert_eq!(member_slice(&entry(&[])), (Vec::new(), None));
    }

    #[test]
    fn a_refused_bind_names_ad_s_reason_and_every_failed_dc_is_listed() {
        let refused = DirectoryError::InvalidCredentials {
            url: "ldaps://dc1".into(),
            bind_dn: "CN=svc".into(),
            code: bind_guard::ad_sub_code("80090308: LdapErr: DSID-0C09042A, data 533, v4563"),
            state_problem: None,
        }
        .to_string();
        assert!(
            refused.contains("AD data 533: account disabled"),
            "{refused}"
        );
        assert!(refused.contains("no other DC was tried"), "{refused}");
        let all = DirectoryError::AllFailed {
            failures: vec![
                ("ldaps://a".into(), "cannot connect".into()),
                ("ldaps://b".into(), "did not answer".into()),
            ],
        }
        .to_string();
        assert!(all.contains("2 tried"), "{all}");
        assert!(
            all.contains("ldaps://a: cannot connect\n  ldaps://b: did not answer"),
            "{all}"
        );
        assert_eq!(result_reason(4, ""), "result code 4");
    }

    #[test]
    fn urls_are_split_into_host_and_port() {
        assert_eq!(
            host_and_port("ldaps://dc1.corp.example.com"),
            ("dc1.corp.example.com".into(), 636)
        );
        assert_eq!(host_and_port("ldap://dc1:3268/"), ("dc1".into(), 3268));
        assert_eq!(host_and_port("ldaps://[::1]:6360"), ("::1".into(), 6360));
        assert_eq!(
            host_and_port("ldaps://127.0.0.2:636"),
            ("127.0.0.2".into(), 636)
        );
    }
}
