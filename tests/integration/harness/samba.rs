//! Smoke tests of the Samba AD test harness itself (`tests/support/samba.rs`,
//! `scripts/samba-dc`): the directory the integration tests rely on really looks the way the
//! fixture says, over both LDAPS and StartTLS, as the non-admin service account; DCs run side by
//! side, each on a loopback address of its own; and a start that has to wait says why.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::samba::{Fixture, SambaDc, Transport, UserSpec};

/// 2012-12-17, long past: an expired account.
const PAST_FILETIME: i64 = 130_000_000_000_000_000;
const UF_ACCOUNTDISABLE: u32 = 0x2;
const DOMAIN_USERS_RID: u32 = 513;

fn small_fixture() -> Fixture {
    Fixture::new()
        .user(UserSpec::unix("Jane.Doe", 10001, "/home/jane.doe"))
        .user(UserSpec::unix("John.Smith", 10002, "/home/john.smith").disabled())
        .user(UserSpec::unix("Old.Timer", 10003, "/home/old.timer").expires(PAST_FILETIME))
        .user(
            UserSpec::unix("Pat.Primary", 10004, "/home/pat.primary").primary_group("ops-primary"),
        )
        .user(UserSpec::unix("Lou.Locked", 10005, "/home/lou.locked"))
        .contact("a-contact")
        .computer("pc01")
        .group("ssh-admins", &["Jane.Doe", "ops-nested"])
        .group(
            "ops-nested",
            &[
                "John.Smith",
                "Old.Timer",
                "Lou.Locked",
                "a-contact",
                "pc01",
                "cycle-a",
            ],
        )
        .group("ops-primary", &[])
        .group("cycle-a", &["cycle-b"])
        .group("cycle-b", &["cycle-a"])
}

fn uac(dc: &SambaDc, user: &str) -> u32 {
    dc.search_one(Transport::Ldaps, &dc.user_dn(user), &["userAccountControl"])
        .value("userAccountControl")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{user} has no userAccountControl"))
}

#[test]
fn fixture_entries_look_as_intended_over_ldaps_and_starttls() {
    let mut dc = SambaDc::start(&small_fixture());

    let jane = dc.search_one(
        Transport::Ldaps,
        &dc.user_dn("Jane.Doe"),
        &[
            "sAMAccountName",
            "uidNumber",
            "unixHomeDirectory",
            "userAccountControl",
            "accountExpires",
        ],
    );
    assert_eq!(jane.value("sAMAccountName"), Some("Jane.Doe"));
    assert_eq!(jane.value("uidNumber"), Some("10001"));
    assert_eq!(jane.value("unixHomeDirectory"), Some("/home/jane.doe"));
    assert_eq!(uac(&dc, "Jane.Doe") & UF_ACCOUNTDISABLE, 0);
    assert_eq!(jane.value("accountExpires"), Some("9223372036854775807"));

    assert_ne!(
        uac(&dc, "John.Smith") & UF_ACCOUNTDISABLE,
        0,
        "John.Smith is disabled"
    );

    let old = dc.search_one(
        Transport::Ldaps,
        &dc.user_dn("Old.Timer"),
        &["accountExpires"],
    );
    assert_eq!(
        old.value("accountExpires"),
        Some(PAST_FILETIME.to_string().as_str())
    );

    // Primary-group-only membership: primaryGroupID points at the group, and AD dropped the
    // explicit member link (moving one to Domain Users instead).
    let pat = dc.search_one(
        Transport::Ldaps,
        &dc.user_dn("Pat.Primary"),
        &["primaryGroupID", "memberOf"],
    );
    let ops_primary_rid = dc.rid("ops-primary");
    assert_ne!(ops_primary_rid, DOMAIN_USERS_RID);
    assert_eq!(
        pat.value("primaryGroupID"),
        Some(ops_primary_rid.to_string().as_str())
    );
    let ops_primary = dc.search_one(Transport::Ldaps, &dc.group_dn("ops-primary"), &["member"]);
    assert!(ops_primary.values("member").is_empty(), "{ops_primary:?}");
    assert!(!pat.values("memberOf").contains(&dc.group_dn("ops-primary")));

    // Nesting, a contact, a computer and a cycle, the same over LDAPS and StartTLS.
    for transport in [Transport::Ldaps, Transport::StartTls] {
        let admins = dc.search_one(transport, &dc.group_dn("ssh-admins"), &["member"]);
        let mut members = admins.values("member").to_vec();
        members.sort();
        assert_eq!(members, [dc.user_dn("Jane.Doe"), dc.group_dn("ops-nested")]);

        let nested = dc.search_one(transport, &dc.group_dn("ops-nested"), &["member"]);
        for member in [
            dc.user_dn("John.Smith"),
            dc.user_dn("Old.Timer"),
            dc.user_dn("a-contact"),
            dc.computer_dn("pc01"),
            dc.group_dn("cycle-a"),
        ] {
            assert!(
                nested.values("member").contains(&member),
                "{member} in {nested:?}"
            );
        }
        let cycle_b = dc.search_one(transport, &dc.group_dn("cycle-b"), &["member"]);
        assert_eq!(cycle_b.values("member"), [dc.group_dn("cycle-a")]);
    }
    let contact = dc.search_one(
        Transport::StartTls,
        &dc.user_dn("a-contact"),
        &["objectClass"],
    );
    assert!(contact.values("objectClass").iter().any(|c| c == "contact"));
    let computer = dc.search_one(
        Transport::StartTls,
        &dc.computer_dn("pc01"),
        &["objectClass"],
    );
    assert!(
        computer
            .values("objectClass")
            .iter()
            .any(|c| c == "computer")
    );

    // Plain LDAP without StartTLS refuses a simple bind (strongAuthRequired, 8).
    let plain = Command::new("ldapsearch")
        .args(["-x", "-H", &dc.ldap_url(), "-D", &dc.service_bind_dn()])
        .args(["-y", dc.service_password_file().to_str().unwrap()])
        .args(["-b", "", "-s", "base", "dn"])
        .output()
        .unwrap();
    assert_eq!(plain.status.code(), Some(8), "{plain:?}");

    // The service account is an ordinary user: only Domain Users, and it cannot write.
    let svc = dc.search_one(
        Transport::Ldaps,
        &dc.service_bind_dn(),
        &["memberOf", "primaryGroupID", "adminCount"],
    );
    assert!(svc.values("memberOf").is_empty(), "{svc:?}");
    assert_eq!(svc.value("primaryGroupID"), Some("513"));
    assert!(svc.values("adminCount").is_empty(), "{svc:?}");
    let disable_jane = format!(
        "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
        dc.user_dn("Jane.Doe")
    );
    let refused = dc.ldapmodify(
        &dc.service_bind_dn(),
        &dc.service_password_file(),
        &disable_jane,
    );
    // 50 is insufficientAccessRights.
    assert_eq!(refused.status.code(), Some(50), "{refused:?}");
    assert_eq!(uac(&dc, "Jane.Doe") & UF_ACCOUNTDISABLE, 0);

    // The Administrator can.
    dc.modify(&disable_jane);
    assert_ne!(uac(&dc, "Jane.Doe") & UF_ACCOUNTDISABLE, 0);

    // A real lockout through bad binds, and back.
    let lockout_time = |dc: &SambaDc| -> i64 {
        dc.search_one(
            Transport::Ldaps,
            &dc.user_dn("Lou.Locked"),
            &["lockoutTime"],
        )
        .value("lockoutTime")
        .map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(lockout_time(&dc), 0);
    dc.lock_out("Lou.Locked");
    assert!(lockout_time(&dc) > 0);
    dc.unlock("Lou.Locked");
    assert_eq!(lockout_time(&dc), 0);

    // Stopped: nothing answers any more.
    dc.stop();
    assert!(dc.pid().is_none());
    let ldaps = SocketAddr::from((dc.address(), 636));
    assert!(TcpStream::connect_timeout(&ldaps, Duration::from_secs(1)).is_err());
    dc.stop(); // idempotent
}

#[test]
fn each_dc_runs_from_its_own_copy_and_leaves_nothing_behind() {
    let fixture = Fixture::new().user(UserSpec::unix("Jane.Doe", 10001, "/home/jane.doe"));

    let first = SambaDc::start(&fixture);
    let first_dir = first.dir().to_path_buf();
    let pid = first.pid().unwrap();
    // Samba has this DC's own databases open, none of the template's, and its smb.conf points
    // only into this DC's directory.
    let open_files: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect();
    let own_sam_ldb = first_dir.join("private/sam.ldb");
    assert!(
        open_files
            .iter()
            .any(|f| f == own_sam_ldb.to_str().unwrap()),
        "{open_files:#?}"
    );
    assert!(
        !open_files.iter().any(|f| f.contains("samba-templates")),
        "{open_files:#?}"
    );
    let conf = std::fs::read_to_string(first_dir.join("etc/smb.conf")).unwrap();
    for line in conf.lines().filter(|l| l.contains(" = /")) {
        let path = line.split(" = ").nth(1).unwrap();
        assert!(
            path.starts_with(first_dir.to_str().unwrap())
                || path.starts_with("/usr/")
                || path.starts_with("/var/lib/samba/printers")
                || path.starts_with("/var/tmp"),
            "{line}"
        );
    }
    first.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
        first.user_dn("Jane.Doe")
    ));
    assert_ne!(uac(&first, "Jane.Doe") & UF_ACCOUNTDISABLE, 0);
    drop(first);
    assert!(
        !first_dir.exists(),
        "{} was not removed",
        first_dir.display()
    );
    // kill(pid, 0) fails once the process is gone (and reaped).
    // SAFETY: kill(2) with signal 0 only checks whether the process exists.
    assert_ne!(
        unsafe { libc::kill(pid as libc::pid_t, 0) },
        0,
        "samba {pid} survived"
    );

    let second = SambaDc::start(&fixture);
    assert_ne!(second.dir(), first_dir);
    assert_eq!(
        uac(&second, "Jane.Doe") & UF_ACCOUNTDISABLE,
        0,
        "a change leaked between DCs"
    );
}

#[test]
fn a_group_with_1600_members_is_served_whole_and_in_explicit_ranges() {
    let mut fixture = Fixture::new();
    let names: Vec<String> = (0..1600).map(|i| format!("bulk.user{i:04}")).collect();
    for (i, name) in names.iter().enumerate() {
        fixture = fixture.user(UserSpec::unix(
            name,
            20000 + i as u32,
            &format!("/home/{name}"),
        ));
    }
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fixture = fixture.group("everyone", &name_refs);

    let dc = SambaDc::start(&fixture);
    let group = dc.group_dn("everyone");

    // Samba hands out all values at once (Windows AD would stop at 1,500).
    let whole = dc.search_one(Transport::Ldaps, &group, &["member"]);
    assert_eq!(whole.values("member").len(), 1600);
    let all = dc.search_one(Transport::Ldaps, &group, &["member;range=0-*"]);
    assert_eq!(
        all.values("member;range=0-*").len(),
        1600,
        "{:?}",
        all.attrs[0].0
    );

    // Explicit ranges, as keyhole requests them from Windows AD.
    let first = dc.search_one(Transport::StartTls, &group, &["member;range=0-1499"]);
    assert_eq!(first.values("member;range=0-1499").len(), 1500);
    let rest = dc.search_one(Transport::StartTls, &group, &["member;range=1500-*"]);
    assert_eq!(rest.values("member;range=1500-*").len(), 100);

    let users = dc.search(
        Transport::Ldaps,
        dc.base_dn(),
        "(&(objectClass=user)(sAMAccountName=bulk.user*))",
        &["uidNumber"],
    );
    assert_eq!(users.len(), 1600);
}

/// keyhole's own TLS stack (ldap3 + rustls/webpki, stricter than OpenSSL) trusts the DC's
/// certificate through the harness CA, over LDAPS and StartTLS, and only through that CA.
#[test]
fn rustls_accepts_the_dc_certificate_only_with_the_harness_ca() {
    use std::sync::Arc;

    use ldap3::{LdapConnAsync, LdapConnSettings, Scope};
    use rustls::pki_types::{CertificateDer, pem::PemObject};

    fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    let dc = SambaDc::start(&small_fixture());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dc.ca_file()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let trusted = client_config(roots);
    let untrusted = client_config(rustls::RootCertStore::empty());
    let password = std::fs::read_to_string(dc.service_password_file()).unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (url, starttls) in [(dc.ldaps_url(), false), (dc.ldap_url(), true)] {
            let settings = LdapConnSettings::new()
                .set_config(trusted.clone())
                .set_starttls(starttls);
            let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &url).await.unwrap();
            ldap3::drive!(conn);
            ldap.simple_bind(&dc.service_bind_dn(), &password)
                .await
                .unwrap()
                .success()
                .unwrap();
            let (entries, _) = ldap
                .search(
                    dc.base_dn(),
                    Scope::Subtree,
                    "(sAMAccountName=Jane.Doe)",
                    vec!["uidNumber"],
                )
                .await
                .unwrap()
                .success()
                .unwrap();
            assert_eq!(entries.len(), 1, "{url}");
            ldap.unbind().await.unwrap();

            let settings = LdapConnSettings::new()
                .set_config(untrusted.clone())
                .set_starttls(starttls);
            let refused = LdapConnAsync::with_settings(settings, &url).await;
            let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains("UnknownIssuer"), "{url}: {error:?}");
        }
    });
}

/// The listening TCP sockets of process `pid`, as `ss` shows them ("127.0.0.2:636").
fn listening_sockets(pid: u32) -> Vec<String> {
    let output = Command::new("ss").args(["-ltnpH"]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&format!("pid={pid},")))
        .map(|line| line.split_whitespace().nth(3).unwrap().to_owned())
        .collect()
}

/// `openssl s_client` to `dc`, checking its certificate against its CA for the IP `expected`.
fn certificate_verifies_for(dc: &SambaDc, expected: Ipv4Addr) -> bool {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &format!("{}:636", dc.address())])
        .args(["-verify_ip", &expected.to_string(), "-verify_return_error"])
        .arg("-CAfile")
        .arg(dc.ca_file())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    output.status.success()
}

/// Two DCs at once, each on its own loopback address: what lets DC-backed tests run in parallel
/// and beside a running `scripts/demo`. Each listens only on its address, its certificate is for
/// that address only (the clones share their template's CA, so the address is what tells them
/// apart), and neither sees the other's changes.
#[test]
fn dcs_run_side_by_side_each_on_its_own_address_and_certificate() {
    let fixture = Fixture::new().user(UserSpec::unix("Jane.Doe", 10001, "/home/jane.doe"));
    let first = SambaDc::start(&fixture);
    let second = SambaDc::start(&fixture);
    assert_ne!(first.address(), second.address());

    for dc in [&first, &second] {
        let address = dc.address();
        assert!(address.is_loopback(), "{address}");
        // 127.0.0.1 is for older checkouts of the harness (and anything else on the machine),
        // .253 and .254 for scripts/bench and scripts/demo.
        assert_ne!(address, Ipv4Addr::LOCALHOST);
        assert!(address.octets()[3] < 253, "{address}");
        assert!(dc.ldaps_url().starts_with(&format!("ldaps://{address}:")));

        let mut sockets = listening_sockets(dc.pid().unwrap());
        sockets.sort();
        let expected: Vec<String> = [3268, 3269, 389, 636]
            .iter()
            .map(|port| format!("{address}:{port}"))
            .collect();
        assert_eq!(sockets, expected, "samba listens beyond {address}");
        assert_eq!(uac(dc, "Jane.Doe") & UF_ACCOUNTDISABLE, 0);
    }

    assert!(certificate_verifies_for(&first, first.address()));
    assert!(
        !certificate_verifies_for(&second, first.address()),
        "the second DC's certificate is also valid for the first DC's address"
    );

    first.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
        first.user_dn("Jane.Doe")
    ));
    assert_ne!(uac(&first, "Jane.Doe") & UF_ACCOUNTDISABLE, 0);
    assert_eq!(
        uac(&second, "Jane.Doe") & UF_ACCOUNTDISABLE,
        0,
        "a change on one DC showed on the other"
    );
}

/// The name libtest knows a test of this file by (`harness::samba::NAME`: the module path
/// without the crate's name), for `--exact` when this binary runs one of them as a child.
fn test_name(name: &str) -> String {
    let module = module_path!()
        .split_once("::")
        .map_or("", |(_crate, module)| module);
    format!("{module}::{name}")
}

/// Set by `a_start_that_has_to_wait_says_for_what_and_how_to_end_it` for the child it runs.
const WAITING_CHILD: &str = "KEYHOLE_TEST_WAITING_CHILD";

/// Run only as that test's child (it returns at once otherwise): starts a DC, which waits.
#[test]
#[ignore = "a helper: a_start_that_has_to_wait_says_for_what_and_how_to_end_it runs it"]
fn waiting_child_starts_a_dc() {
    if std::env::var_os(WAITING_CHILD).is_some() {
        let _dc = SambaDc::start(&Fixture::new().user(UserSpec::new("Jane.Doe")));
    }
}

/// When every address is taken, `SambaDc::start` waits, and says (past libtest's capture) who
/// holds the addresses and how to end the wait, instead of hanging silently. The child runs with
/// a private `TMPDIR`, so the lock held here blocks nobody else.
#[test]
fn a_start_that_has_to_wait_says_for_what_and_how_to_end_it() {
    let tmp = tempfile::tempdir().unwrap();
    let lock_path = tmp.path().join("keyhole-samba-dc-127.0.0.2.lock");
    std::fs::write(
        &lock_path,
        "pid 4242 (some-other-test-binary, test holds_the_dc) a Samba DC\nsince 0\n",
    )
    .unwrap();
    let lock = std::fs::File::open(&lock_path).unwrap();
    // SAFETY: flock(2) on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "--ignored",
            &test_name("waiting_child_starts_a_dc"),
        ])
        .env(WAITING_CHILD, "1")
        .env("TMPDIR", tmp.path())
        .env("KEYHOLE_SAMBA_MAX_DCS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The fixture template may have to be built first (~10 s on a busy machine).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut said = String::new();
    // The address report ends with how to end the wait; a template-build report may come first.
    let reported = |said: &str| {
        said.find("loopback address for a Samba DC")
            .is_some_and(|at| said[at..].contains("(Ctrl-C)"))
    };
    while !reported(&said) {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                said.push_str(&line);
                said.push('\n');
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(lock);

    assert!(
        said.contains("waiting") && said.contains("loopback address for a Samba DC"),
        "the waiting start did not say what it waits for:\n{said}"
    );
    assert!(
        said.contains("127.0.0.2: pid 4242 (some-other-test-binary, test holds_the_dc)"),
        "it did not name the holder:\n{said}"
    );
    assert!(
        said.contains("At most 1 DCs run at once (KEYHOLE_SAMBA_MAX_DCS"),
        "it did not name the cap:\n{said}"
    );
    assert!(
        said.contains("end those processes or this test run (Ctrl-C)"),
        "it did not say how to end the wait:\n{said}"
    );
}

/// Run only as the child of `a_test_wanting_more_dcs_than_the_cap_fails_instead_of_hanging`.
#[test]
#[ignore = "a helper: a_test_wanting_more_dcs_than_the_cap_fails_instead_of_hanging runs it"]
fn greedy_child_starts_two_dcs() {
    if std::env::var_os(WAITING_CHILD).is_some() {
        let fixture = Fixture::new().user(UserSpec::new("Jane.Doe"));
        let _first = SambaDc::start(&fixture);
        let _second = SambaDc::start(&fixture);
    }
}

/// A test holding as many DCs as the cap allows that asks for one more would wait for itself
/// forever: it fails at once, saying why.
#[test]
fn a_test_wanting_more_dcs_than_the_cap_fails_instead_of_hanging() {
    let started = Instant::now();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "--ignored",
            &test_name("greedy_child_starts_two_dcs"),
        ])
        .env(WAITING_CHILD, "1")
        .env("KEYHOLE_SAMBA_MAX_DCS", "1")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains(
            "this test already holds 1 Samba DCs and at most 1 run at once \
             (KEYHOLE_SAMBA_MAX_DCS); it would wait for itself"
        ),
        "{said}"
    );
    // One DC start (and maybe a wait for 127.0.0.2 and a template build), not a hang.
    assert!(started.elapsed() < Duration::from_secs(120));
}
