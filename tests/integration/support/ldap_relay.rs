//! An LDAPS relay in front of the real Samba DC that rewrites chosen answers, for the LDAP
//! failures Samba cannot be made to produce on demand: a non-zero result code on a later page of a
//! paged search, and a `member;range=` read that does not finish.
//!
//! It terminates keyhole's TLS with a certificate of its own (a throwaway CA made here with
//! rcgen, and a certificate for the DC's loopback IP; keyhole's `[ldap] ca_file` must name
//! [`LdapRelay::ca_file`], so a run that trusts it cannot have bypassed the relay), opens its own
//! LDAPS connection to the DC (trusting the DC's CA), and decodes the LDAP messages both ways
//! with `ldap3_proto`'s codec. Every message goes on as the exact bytes that arrived, except the
//! few answers the [`Fault`] in force at the time of the connection names: those are re-encoded
//! after the one change the fault makes. It listens only on the DC's own address (127.0.0.N,
//! where the certificate says the DC is) and only ever connects to the DC.
//!
//! One tokio runtime on a thread of its own, so the (synchronous) tests just start it and drop
//! it; dropping it stops accepting and ends the connections in flight.

use std::collections::HashSet;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use ldap3_proto::LdapCodec;
use ldap3_proto::proto::{LdapFilter, LdapMsg, LdapOp, LdapResultCode, LdapSearchScope};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::{Decoder, Encoder};

use super::samba::SambaDc;

/// What the relay changes in the DC's answers.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The `page`-th request (counting from 1) of the search with `filter` is answered with
    /// `code` and `message` in its SearchResultDone. Its entries and controls (the paging
    /// cookie) go on unchanged, so only the result code says that something went wrong.
    FailPage {
        filter: LdapFilter,
        page: usize,
        code: LdapResultCode,
        message: String,
    },
    /// The first follow-up read of a `member;range=` slice of `group` (a DN), a base-scope
    /// search, is answered as `how` says; later reads go on unchanged.
    BreakRangedRead { group: String, how: RangeBreak },
}

/// How [`Fault::BreakRangedRead`] leaves a `member;range=` read unfinished.
#[derive(Debug, Clone, Copy)]
pub enum RangeBreak {
    /// The group's entry comes back without any `member` attribute.
    NoMembers,
    /// The values come back named as the slice before the one asked for (`member;range=2-3`
    /// asked, `member;range=0-1` answered): the range does not advance.
    Rewind,
    /// No entry comes back, only a successful SearchResultDone: the group is gone.
    Vanished,
}

pub struct LdapRelay {
    address: SocketAddr,
    /// Holds `ca.pem`, the relay's CA.
    dir: tempfile::TempDir,
    fault: Arc<Mutex<Option<Fault>>>,
    injected: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl LdapRelay {
    /// Starts relaying to `dc`'s LDAPS port, faithfully until [`LdapRelay::inject`].
    pub fn start(dc: &SambaDc) -> LdapRelay {
        let upstream: SocketAddr = dc
            .ldaps_url()
            .trim_start_matches("ldaps://")
            .trim_end_matches('/')
            .parse()
            .expect("the DC's LDAPS address");
        let dir = tempfile::tempdir().expect("temp dir");
        let acceptor = TlsAcceptor::from(Arc::new(server_config(dc, &dir.path().join("ca.pem"))));
        let connector = TlsConnector::from(Arc::new(client_config(dc)));
        // Bound here and handed to the runtime: no free-port race.
        let listener = TcpListener::bind((upstream.ip(), 0)).expect("binding the relay");
        let address = listener.local_addr().expect("the relay's address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let fault = Arc::new(Mutex::new(None));
        let injected = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel();
        let (fault_now, counter) = (Arc::clone(&fault), Arc::clone(&injected));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("the relay's runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("the relay's listener");
                loop {
                    let client = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((client, _)) => client,
                            Err(_) => continue,
                        },
                    };
                    let rewriter = Rewriter {
                        fault: fault_now.lock().unwrap().clone(),
                        pages_seen: 0,
                        targets: HashSet::new(),
                        injected: Arc::clone(&counter),
                    };
                    let (acceptor, connector) = (acceptor.clone(), connector.clone());
                    tokio::spawn(async move {
                        // A connection that fails ends; keyhole sees it as the DC would cause.
                        let _ = relay(client, upstream, acceptor, connector, rewriter).await;
                    });
                }
            });
        });
        LdapRelay {
            address,
            dir,
            fault,
            injected,
            stop: Some(stop),
        }
    }

    /// `ldaps://127.0.0.N:PORT`, the DC's address with the relay's port.
    pub fn url(&self) -> String {
        format!("ldaps://{}", self.address)
    }

    /// The relay's CA certificate (PEM), for keyhole's `[ldap] ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The `KEYHOLE_LDAP_*` overrides that send a keyhole run through this relay.
    pub fn keyhole_env(&self) -> Vec<(String, String)> {
        vec![
            ("KEYHOLE_LDAP_URL".into(), self.url()),
            (
                "KEYHOLE_LDAP_CA_FILE".into(),
                self.ca_file().display().to_string(),
            ),
        ]
    }

    /// Applies `fault` to every connection accepted from now on.
    pub fn inject(&self, fault: Fault) {
        *self.fault.lock().unwrap() = Some(fault);
    }

    /// How many answers were rewritten so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }
}

impl Drop for LdapRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The relay's TLS server side: a fresh CA (written to `ca_file`) and a certificate it signs for
/// the DC's IP address, which is what keyhole checks when it connects by IP.
fn server_config(dc: &SambaDc, ca_file: &std::path::Path) -> rustls::ServerConfig {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keyhole test LDAP relay CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    std::fs::write(ca_file, ca.pem()).unwrap();

    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![dc.address().to_string()]).unwrap();
    let certificate = params.signed_by(&key, &ca).unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap()
}

/// The relay's TLS client side: trusts only the DC's own CA.
fn client_config(dc: &SambaDc) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(dc.ca_file()).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// One connection: keyhole's requests go to the DC untouched (but are read, to know which
/// answers the fault concerns); the DC's answers come back, rewritten where the fault says.
async fn relay(
    client: tokio::net::TcpStream,
    upstream: SocketAddr,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    rewriter: Rewriter,
) -> io::Result<()> {
    let client = acceptor.accept(client).await?;
    let server = tokio::net::TcpStream::connect(upstream).await?;
    let server = connector
        .connect(ServerName::IpAddress(upstream.ip().into()), server)
        .await?;
    let (from_client, to_client) = tokio::io::split(client);
    let (from_server, to_server) = tokio::io::split(server);
    let rewriter = Mutex::new(rewriter);
    let requests = pump(from_client, to_server, |request| {
        rewriter.lock().unwrap().request(request);
        Rewritten::Same
    });
    let answers = pump(from_server, to_client, |answer| {
        rewriter.lock().unwrap().answer(answer)
    });
    // The first error ends both directions; a clean end of one waits for the other.
    tokio::try_join!(requests, answers).map(|_| ())
}

/// Copies LDAP messages from `from` to `to` until `from` ends, then closes `to`. Each message
/// goes on as the bytes that arrived unless `rewrite` changes or drops it.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut rewrite: impl FnMut(&LdapMsg) -> Rewritten,
) -> io::Result<()> {
    // Samba's answers can be far larger than the codec's default limit of 32 KiB.
    let mut codec = LdapCodec::new(Some(64 << 20), None);
    let mut input = BytesMut::new();
    loop {
        if from.read_buf(&mut input).await? == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        let mut output = BytesMut::new();
        loop {
            let before = input.clone();
            let Some(message) = codec.decode(&mut input)? else {
                break;
            };
            match rewrite(&message) {
                Rewritten::Same => {
                    output.extend_from_slice(&before[..before.len() - input.len()]);
                }
                Rewritten::To(rewritten) => codec.encode(*rewritten, &mut output)?,
                Rewritten::Dropped => {}
            }
        }
        to.write_all(&output).await?;
        to.flush().await?;
    }
}

/// What becomes of one message.
enum Rewritten {
    Same,
    To(Box<LdapMsg>),
    Dropped,
}

/// The fault applied to one connection: which requests it concerns, and the change it makes to
/// their answers.
struct Rewriter {
    fault: Option<Fault>,
    /// Requests of [`Fault::FailPage`]'s search seen so far.
    pages_seen: usize,
    /// Message ids whose answers are rewritten.
    targets: HashSet<i32>,
    injected: Arc<AtomicUsize>,
}

impl Rewriter {
    fn request(&mut self, request: &LdapMsg) {
        let LdapOp::SearchRequest(search) = &request.op else {
            return;
        };
        let concerned = match &self.fault {
            Some(Fault::FailPage { filter, page, .. }) if search.filter == *filter => {
                self.pages_seen += 1;
                self.pages_seen == *page
            }
            // Only the first: a read that never finishes would make a keyhole without the check
            // loop for ever instead of failing the test.
            Some(Fault::BreakRangedRead { group, .. }) if self.targets.is_empty() => {
                search.scope == LdapSearchScope::Base
                    && search.base.eq_ignore_ascii_case(group)
                    && search.attrs.iter().any(|attribute| {
                        attribute.to_ascii_lowercase().starts_with("member;range=")
                    })
            }
            _ => false,
        };
        if concerned {
            self.targets.insert(request.msgid);
        }
    }

    fn answer(&mut self, answer: &LdapMsg) -> Rewritten {
        if !self.targets.contains(&answer.msgid) {
            return Rewritten::Same;
        }
        let mut answer = answer.clone();
        match (&self.fault, &mut answer.op) {
            (Some(Fault::FailPage { code, message, .. }), LdapOp::SearchResultDone(result)) => {
                result.code = code.clone();
                result.message = message.clone();
            }
            (Some(Fault::BreakRangedRead { how, .. }), LdapOp::SearchResultEntry(entry)) => {
                match how {
                    RangeBreak::NoMembers => entry.attributes.retain(|attribute| {
                        !attribute.atype.to_ascii_lowercase().starts_with("member")
                    }),
                    RangeBreak::Rewind => {
                        for attribute in &mut entry.attributes {
                            if let Some(earlier) = rewound(&attribute.atype) {
                                attribute.atype = earlier;
                            }
                        }
                    }
                    RangeBreak::Vanished => {
                        self.injected.fetch_add(1, Ordering::SeqCst);
                        return Rewritten::Dropped;
                    }
                }
            }
            _ => return Rewritten::Same,
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        Rewritten::To(Box::new(answer))
    }
}

/// `member;range=A-B` (or `A-*`) renamed as the slice before it, `member;range=0-(A-1)`.
fn rewound(attribute: &str) -> Option<String> {
    let range = attribute.to_ascii_lowercase();
    let (start, _) = range.strip_prefix("member;range=")?.split_once('-')?;
    let start: u64 = start.parse().ok()?;
    Some(format!("member;range=0-{}", start.checked_sub(1)?))
}
