//! A throwaway Samba AD domain controller on a loopback address of its own (127.0.0.2 and up) for
//! integration tests, filled from a [`Fixture`] and killed on `Drop`. It owns only its temp
//! directories, the samba process it started and the address it leased; it never touches the
//! machine's own Samba setup, never talks to anything outside 127.0.0.0/8, and is for tests only
//! (it panics instead of returning errors).
//!
//! # Design
//!
//! `scripts/samba-dc` does the Samba work (provision, populate, clone, start); this module
//! decides when to do it and keeps it fast and safe:
//!
//! - **Template cache.** Provisioning a domain takes ~8 s and loading 1,600 users another ~6-13 s,
//!   so neither happens per test. Under `$CARGO_TARGET_TMPDIR/samba-templates/` live a provisioned
//!   *base* directory (`base-<script hash>`) and one directory per fixture
//!   (`fixture-<script hash>-<fixture JSON hash>`), each a clone of the base plus
//!   `samba-dc populate`. A template is built under a per-template lock file into a `.partial`
//!   directory and renamed into place, so concurrent tests and test binaries build it once and
//!   never see half a template. Editing the script or the fixture changes the key; building a
//!   new base removes the templates of older script versions.
//! - **A fresh copy per DC.** Each [`SambaDc`] runs from its own `samba-dc clone` of the fixture
//!   template in a temp dir (`cp` + rewriting the absolute paths in smb.conf, the only file that
//!   holds them), so what one test changes (a lockout, a disabled user) never leaks into another.
//! - **An address per DC.** Samba's LDAP ports (389, 636, 3268, 3269) are fixed, but Linux routes
//!   all of 127.0.0.0/8 to the loopback interface, so each DC listens on an address of its own
//!   (`interfaces = 127.0.0.N/8`, `bind interfaces only`) with a certificate for `IP:127.0.0.N`.
//!   [`SambaDc::start`] leases the address with an exclusive `flock` on
//!   `$TMPDIR/keyhole-samba-dc-127.0.0.N.lock` and holds it until `Drop`, so tests in parallel
//!   threads and in other test binaries or runs never collide. 127.0.0.1 is never used (it belongs
//!   to older checkouts of this harness, which lock `keyhole-samba-dc.lock` for it, and to
//!   anything else on the machine), nor are 127.0.0.253 (`scripts/bench`) and 127.0.0.254
//!   (`scripts/demo`): a running demo never makes a test wait.
//! - **At most one DC per CPU.** Starting samba costs 1-3 s of CPU and a running DC ~100 MB, so the
//!   addresses handed out are 127.0.0.2 up to 127.0.0.(1 + cap), the cap being the number of CPUs
//!   (`std::thread::available_parallelism`) or `KEYHOLE_SAMBA_MAX_DCS`. That matches libtest's
//!   default of one test thread per CPU: within a test binary the DC-backed tests run in
//!   parallel without waiting. A start that finds every address taken (by another test run on
//!   the machine, or more test threads than the cap) waits for one, and after 3 s says on stderr,
//!   past libtest's output capture, which processes hold them and how to end the wait (after 30 s
//!   when only other tests of the same binary hold them: that is the run's own work).
//!   Waiting tests line up behind `$TMPDIR/keyhole-samba-dc-queue.lock`, so the one that has
//!   waited longest gets the next free address. An address something outside the harness
//!   listens on is skipped (and named in that message).
//!   A test may hold more than one `SambaDc` at a time, up to the cap; beyond it, it panics
//!   rather than wait for itself.
//! - **Ready means a real bind.** `start` returns only once an `ldapsearch` over LDAPS, checking
//!   the DC's certificate against its CA, binds as the service account.
//! - **No leftovers.** Samba runs as one process (`-M single`) in its own process group with
//!   `-i`, which makes it exit when its stdin reaches EOF; the pipe's write end lives in the
//!   `SambaDc`, so even a test process killed with SIGKILL takes the DC down with it. `Drop`
//!   also kills the process group and removes the temp dir (set `KEYHOLE_KEEP_SAMBA=1` to keep
//!   it for debugging). PR_SET_PDEATHSIG is deliberately not used: it fires when the *thread*
//!   that spawned the child exits, which would kill a DC shared between tests.
//!
//! # Timings (2-core Debian 12, Samba 4.17)
//!
//! | step | time |
//! |---|---|
//! | provision the base template (once per script version) | 7-12 s |
//! | populate a small fixture (a dozen entries) | 0.3-0.8 s |
//! | populate 1,600 users + a 1,600-member group | 6-13 s |
//! | clone a template for one DC | 0.03-0.13 s |
//! | start until LDAPS answers a bind | 0.4-1.4 s (up to 3 s while other tests load the CPU) |
//!
//! So a test with a cached template pays 0.5-1.5 s for its own DC. The measured timings of each
//! start are in [`SambaDc::timings`] and printed to stderr.
//!
//! # The directory
//!
//! Realm `CORP.EXAMPLE.COM`, base DN `DC=corp,DC=example,DC=com`, RFC 2307 attributes, account
//! lockout after 3 bad passwords for 30 minutes. Fixture users, groups and contacts live in
//! `CN=Users`, computers in `CN=Computers`. Fixture users have no password (`PASSWD_NOTREQD`), as
//! hashing one costs Samba ~45 ms; bad binds still lock them. `svc-keyhole` is an ordinary domain
//! user (only in Domain Users) with a password, the account keyhole binds as. Samba needs root to
//! bind ports 389 and 636, so these tests run as root.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The base DN of the test domain.
pub const BASE_DN: &str = "DC=corp,DC=example,DC=com";
/// The DNS realm, used in user principal names (`name@corp.example.com`).
pub const REALM: &str = "corp.example.com";
/// The service account keyhole binds as.
pub const SERVICE_ACCOUNT: &str = "svc-keyhole";
/// Bad passwords after which the domain locks an account.
pub const LOCKOUT_THRESHOLD: u32 = 3;

const LDAP_PORT: u16 = 389;
const LDAPS_PORT: u16 = 636;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The last octet of the first test address: 127.0.0.1 is left to everything else.
const FIRST_TEST_OCTET: u8 = 2;
/// 127.0.0.253 and .254 are `scripts/bench`'s and `scripts/demo`'s; tests never take them.
const LAST_TEST_OCTET: u8 = 252;
/// Overrides the cap on concurrently running DCs (default: the number of CPUs).
const MAX_DCS_VAR: &str = "KEYHOLE_SAMBA_MAX_DCS";
/// How long a wait for another process (an address, a template it builds) stays silent.
const QUIET_WAIT: Duration = Duration::from_secs(3);
/// The same when only other tests of this run are in the way: in a cold run that is normal
/// and there is nothing to act on, so it is said only when it lasts.
const QUIET_SIBLING_WAIT: Duration = Duration::from_secs(30);
/// How often a long wait repeats what it waits for.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(30);
const WAIT_POLL: Duration = Duration::from_millis(100);

thread_local! {
    /// Addresses this thread (one test, under libtest) holds: a test that wants more DCs than the
    /// cap would otherwise wait for itself forever.
    static HELD_BY_THIS_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What the directory holds besides the built-in accounts and `svc-keyhole`.
///
/// Names must be unique across users, groups, contacts and computers (they share `CN=Users`,
/// and group members refer to them by name).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fixture {
    pub users: Vec<UserSpec>,
    pub groups: Vec<GroupSpec>,
    /// `objectClass=contact` entries: group members that are not accounts.
    pub contacts: Vec<String>,
    /// `objectClass=computer` entries (`sAMAccountName` gets the usual trailing `$`).
    pub computers: Vec<String>,
}

/// A user account.
#[derive(Debug, Clone, Serialize)]
pub struct UserSpec {
    /// `sAMAccountName` and `cn`, e.g. "Jane.Doe".
    pub name: String,
    /// `uidNumber` (with `gidNumber: 100` and `loginShell: /bin/bash`).
    pub uid_number: Option<u32>,
    /// `unixHomeDirectory`.
    pub unix_home: Option<String>,
    /// Sets `ACCOUNTDISABLE` (0x2) in `userAccountControl`.
    pub disabled: bool,
    /// `accountExpires` as a Windows FILETIME (100 ns since 1601); `None` means never.
    pub expires: Option<i64>,
    /// The group whose RID becomes `primaryGroupID`. The user is made a member first, as AD
    /// requires, after which AD drops the explicit `member` link: the user is then in that group
    /// only through `primaryGroupID` (and gets an explicit `member` link in Domain Users).
    pub primary_group: Option<String>,
}

/// A group and its direct members (names of users, groups, contacts or computers).
#[derive(Debug, Clone, Serialize)]
pub struct GroupSpec {
    pub name: String,
    pub members: Vec<String>,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::default()
    }

    pub fn user(mut self, user: UserSpec) -> Fixture {
        self.users.push(user);
        self
    }

    pub fn group(mut self, name: &str, members: &[&str]) -> Fixture {
        self.groups.push(GroupSpec {
            name: name.to_owned(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        });
        self
    }

    pub fn contact(mut self, name: &str) -> Fixture {
        self.contacts.push(name.to_owned());
        self
    }

    pub fn computer(mut self, name: &str) -> Fixture {
        self.computers.push(name.to_owned());
        self
    }

    /// The JSON `scripts/samba-dc populate` reads; also the template cache key.
    fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a fixture serializes to JSON")
    }
}

impl UserSpec {
    /// An enabled user that never expires, with no Unix attributes and Domain Users as primary
    /// group.
    pub fn new(name: &str) -> UserSpec {
        UserSpec {
            name: name.to_owned(),
            uid_number: None,
            unix_home: None,
            disabled: false,
            expires: None,
            primary_group: None,
        }
    }

    /// A user with `uidNumber` and `unixHomeDirectory` set, as keyhole's users normally have.
    pub fn unix(name: &str, uid_number: u32, unix_home: &str) -> UserSpec {
        UserSpec::new(name)
            .uid_number(uid_number)
            .unix_home(unix_home)
    }

    pub fn uid_number(mut self, uid_number: u32) -> UserSpec {
        self.uid_number = Some(uid_number);
        self
    }

    pub fn unix_home(mut self, unix_home: &str) -> UserSpec {
        self.unix_home = Some(unix_home.to_owned());
        self
    }

    pub fn disabled(mut self) -> UserSpec {
        self.disabled = true;
        self
    }

    pub fn expires(mut self, filetime: i64) -> UserSpec {
        self.expires = Some(filetime);
        self
    }

    pub fn primary_group(mut self, group: &str) -> UserSpec {
        self.primary_group = Some(group.to_owned());
        self
    }
}

/// How a client reaches the DC. Both verify the server certificate against [`SambaDc::ca_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// [`SambaDc::ldaps_url`], e.g. `ldaps://127.0.0.2:636`.
    Ldaps,
    /// [`SambaDc::ldap_url`] with a mandatory StartTLS (`-ZZ`).
    StartTls,
}

/// One entry of an `ldapsearch` answer. Binary values (`attr:: base64`) stay base64-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapEntry {
    pub dn: String,
    /// Attribute names as the server sent them (e.g. `member;range=0-99`), in order.
    pub attrs: Vec<(String, Vec<String>)>,
}

impl LdapEntry {
    /// The values of an attribute (name compared case-insensitively); empty if absent.
    pub fn values(&self, attr: &str) -> &[String] {
        self.attrs
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(attr))
            .map(|(_, values)| values.as_slice())
            .unwrap_or(&[])
    }

    /// The single value of an attribute, if it has exactly one.
    pub fn value(&self, attr: &str) -> Option<&str> {
        match self.values(attr) {
            [one] => Some(one.as_str()),
            _ => None,
        }
    }
}

/// How long each step of [`SambaDc::start`] took.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// `samba-dc provision`, if this start had to build the base template.
    pub provision: Option<Duration>,
    /// `samba-dc clone` + `populate`, if this start had to build the fixture template.
    pub populate: Option<Duration>,
    /// Waiting for a free address (the cap on concurrently running DCs).
    pub lock_wait: Duration,
    /// Copying the fixture template into this DC's own directory.
    pub clone: Duration,
    /// From spawning samba until an LDAPS bind succeeds.
    pub start: Duration,
}

/// A running Samba AD DC on its own loopback address, serving its own copy of a fixture.
pub struct SambaDc {
    /// `Some` while samba runs; `stop` takes it.
    process: Option<SambaProcess>,
    dir: PathBuf,
    /// Removes `dir` on drop (unless `KEYHOLE_KEEP_SAMBA` is set).
    _temp: Option<tempfile::TempDir>,
    /// Held until drop (after samba is gone), so no other DC takes the address meanwhile.
    lease: AddressLease,
    timings: Timings,
}

/// An address leased to one DC: the `flock` on its lock file is the lease.
struct AddressLease {
    address: Ipv4Addr,
    _lock: File,
}

struct SambaProcess {
    child: Child,
    /// Samba exits when this closes: the guarantee that a dead test leaves no DC behind.
    _stdin: ChildStdin,
}

impl SambaDc {
    /// Starts a DC serving `fixture` on a free test address and waits until LDAPS answers a bind
    /// as the service account. Blocks while the cap on running DCs is reached (see the module
    /// doc). Panics on failure.
    pub fn start(fixture: &Fixture) -> SambaDc {
        let mut timings = Timings::default();
        let template = fixture_template(fixture, &mut timings);

        let waited = Instant::now();
        let lease = AddressLease::take();
        timings.lock_wait = waited.elapsed();

        let cloned = Instant::now();
        let temp = tempfile::Builder::new()
            .prefix("keyhole-samba-")
            .tempdir()
            .expect("creating a temp dir for the DC");
        let dir = temp.path().join("dc");
        let address = lease.address.to_string();
        run_script(&["clone", path_str(&template), path_str(&dir), &address]);
        timings.clone = cloned.elapsed();

        let temp = if std::env::var_os("KEYHOLE_KEEP_SAMBA").is_some() {
            eprintln!("samba-dc: keeping {}", dir.display());
            let _kept = temp.keep();
            None
        } else {
            Some(temp)
        };

        let mut dc = SambaDc {
            process: None,
            dir,
            _temp: temp,
            lease,
            timings,
        };
        let started = Instant::now();
        dc.spawn();
        dc.timings.start = started.elapsed();
        eprintln!("samba-dc: {:?}", dc.timings);
        dc
    }

    /// The loopback address this DC (and only this DC) listens on, e.g. 127.0.0.2.
    pub fn address(&self) -> Ipv4Addr {
        self.lease.address
    }

    /// `ldaps://ADDRESS:636`, e.g. `ldaps://127.0.0.2:636`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://{}:{LDAPS_PORT}", self.address())
    }

    /// `ldap://ADDRESS:389`; Samba refuses simple binds here unless StartTLS came first.
    pub fn ldap_url(&self) -> String {
        format!("ldap://{}:{LDAP_PORT}", self.address())
    }

    /// The PEM CA certificate that signed the DC's certificate (whose only subjectAltName is
    /// `IP:` [`SambaDc::address`]).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    pub fn base_dn(&self) -> &str {
        BASE_DN
    }

    pub fn service_bind_dn(&self) -> String {
        self.user_dn(SERVICE_ACCOUNT)
    }

    /// The service account's password, without a trailing newline.
    pub fn service_password_file(&self) -> PathBuf {
        self.dir.join("svc-password")
    }

    /// The Administrator's password, without a trailing newline.
    pub fn admin_password_file(&self) -> PathBuf {
        self.dir.join("admin-password")
    }

    /// The DN of a fixture user, contact or group (all live in `CN=Users`).
    pub fn user_dn(&self, name: &str) -> String {
        format!("CN={name},CN=Users,{BASE_DN}")
    }

    /// The DN of a fixture group.
    pub fn group_dn(&self, name: &str) -> String {
        self.user_dn(name)
    }

    /// The DN of a fixture computer.
    pub fn computer_dn(&self, name: &str) -> String {
        format!("CN={name},CN=Computers,{BASE_DN}")
    }

    /// This DC's own directory (a copy of the fixture template).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The samba process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|process| process.child.id())
    }

    // No test asserts on it (the same figures go to stderr at every start); it is here for a
    // test written to find out why a start is slow.
    #[allow(dead_code)]
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Locks `user` (a `sAMAccountName` in `CN=Users`) the way an attacker would: simple binds
    /// with a wrong password until the domain's threshold is reached. Panics unless the account
    /// then has `lockoutTime > 0`.
    pub fn lock_out(&self, user: &str) {
        let dn = self.user_dn(user);
        for _ in 0..LOCKOUT_THRESHOLD {
            let output = self
                .ldap_tool("ldapsearch", Transport::Ldaps)
                .args(["-D", &dn, "-w", "certainly-not-the-password"])
                .args(["-b", "", "-s", "base", "dn"])
                .output()
                .expect("running ldapsearch");
            // 49 is invalidCredentials: the bad bind we want.
            assert_eq!(
                output.status.code(),
                Some(49),
                "a bad bind as {dn} should fail with invalid credentials: {}",
                describe(&output)
            );
        }
        let lockout_time = self
            .search_one(Transport::Ldaps, &dn, &["lockoutTime"])
            .value("lockoutTime")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        assert!(
            lockout_time > 0,
            "{LOCKOUT_THRESHOLD} bad binds did not lock {dn} (lockoutTime {lockout_time})"
        );
    }

    /// Clears a lockout as an administrator would (`lockoutTime: 0`).
    pub fn unlock(&self, user: &str) {
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: lockoutTime\nlockoutTime: 0\n",
            self.user_dn(user)
        ));
    }

    /// Applies an LDIF change (`ldapmodify` syntax, `changetype` required) as Administrator over
    /// LDAPS. Panics if the server refuses it.
    pub fn modify(&self, ldif: &str) {
        let output = self.ldapmodify(
            &self.user_dn("Administrator"),
            &self.admin_password_file(),
            ldif,
        );
        assert!(
            output.status.success(),
            "ldapmodify as Administrator failed: {}\n--- LDIF ---\n{ldif}",
            describe(&output)
        );
    }

    /// Runs `ldapmodify` over LDAPS as any account and returns what happened, for tests that
    /// expect a refusal (e.g. the service account must not be able to write).
    pub fn ldapmodify(&self, bind_dn: &str, password_file: &Path, ldif: &str) -> Output {
        let mut child = self
            .ldap_tool("ldapmodify", Transport::Ldaps)
            .args(["-D", bind_dn, "-y", path_str(password_file)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running ldapmodify");
        child
            .stdin
            .take()
            .expect("ldapmodify has a stdin pipe")
            .write_all(ldif.as_bytes())
            .expect("writing LDIF to ldapmodify");
        child.wait_with_output().expect("waiting for ldapmodify")
    }

    /// Searches the subtree under `base` as the service account and returns the entries
    /// (referrals left out). Panics if the search fails.
    pub fn search(
        &self,
        transport: Transport,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Vec<LdapEntry> {
        self.search_scoped(transport, base, "sub", filter, attrs)
    }

    /// Reads one entry (base-scope search) as the service account. Panics if it is not there.
    pub fn search_one(&self, transport: Transport, dn: &str, attrs: &[&str]) -> LdapEntry {
        let mut entries = self.search_scoped(transport, dn, "base", "(objectClass=*)", attrs);
        assert_eq!(entries.len(), 1, "expected exactly one entry at {dn}");
        entries.remove(0)
    }

    /// The relative ID (last part of `objectSid`) of a fixture user or group, e.g. to compare
    /// with `primaryGroupID`.
    pub fn rid(&self, name: &str) -> u32 {
        let entry = self.search_one(Transport::Ldaps, &self.user_dn(name), &["objectSid"]);
        let sid = entry
            .value("objectSid")
            .unwrap_or_else(|| panic!("{name} has no objectSid"));
        let sid = base64_decode(sid);
        let tail: [u8; 4] = sid[sid.len() - 4..]
            .try_into()
            .expect("a SID ends in a 4-byte RID");
        u32::from_le_bytes(tail)
    }

    /// Stops samba but keeps the directory and the address, so a test can check how keyhole
    /// behaves when the DC does not answer (and no other DC takes its place meanwhile).
    /// Idempotent.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.terminate();
        }
    }

    /// An ldap-utils command pointed at this DC: TLS verified against its CA, no line wrapping,
    /// short network timeout.
    fn ldap_tool(&self, tool: &str, transport: Transport) -> Command {
        let mut command = Command::new(tool);
        command
            .env("LDAPTLS_CACERT", self.ca_file())
            .env("LDAPTLS_REQCERT", "demand")
            .args(["-x", "-o", "nettimeout=10", "-o", "ldif_wrap=no"]);
        match transport {
            Transport::Ldaps => command.args(["-H", &self.ldaps_url()]),
            Transport::StartTls => command.args(["-H", &self.ldap_url(), "-ZZ"]),
        };
        command
    }

    fn search_scoped(
        &self,
        transport: Transport,
        base: &str,
        scope: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Vec<LdapEntry> {
        let output = self
            .ldap_tool("ldapsearch", transport)
            .args(["-LLL", "-D", &self.service_bind_dn()])
            .args(["-y", path_str(&self.service_password_file())])
            .args(["-b", base, "-s", scope, filter])
            .args(attrs)
            .output()
            .expect("running ldapsearch");
        assert!(
            output.status.success(),
            "ldapsearch -b {base:?} {filter:?} as {SERVICE_ACCOUNT} failed: {}",
            describe(&output)
        );
        parse_ldif(&String::from_utf8_lossy(&output.stdout))
    }

    /// Spawns samba and waits until an LDAPS bind as the service account succeeds.
    fn spawn(&mut self) {
        let log_path = self.dir.join("log/samba.out");
        let log = File::create(&log_path).expect("creating the samba log file");
        let mut child = Command::new(script())
            .args(["start", path_str(&self.dir)])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("duplicating the log file handle"))
            .stderr(log)
            // Its own process group, so Drop can kill samba and anything it forks in one go.
            .process_group(0)
            .spawn()
            .expect("spawning scripts/samba-dc start");
        let stdin = child.stdin.take().expect("samba has a stdin pipe");
        self.process = Some(SambaProcess {
            child,
            _stdin: stdin,
        });

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(process) = self.process.as_mut()
                && let Ok(Some(status)) = process.child.try_wait()
            {
                panic!(
                    "samba exited ({status}) before answering on LDAPS; its log:\n{}",
                    tail(&log_path)
                );
            }
            if self.answers_bind() {
                return;
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "samba did not answer an LDAPS bind within {READY_TIMEOUT:?}; its log:\n{}",
                    tail(&log_path)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether an LDAPS bind as the service account works (a bind with the right password, so
    /// polling cannot lock the account).
    fn answers_bind(&self) -> bool {
        self.ldap_tool("ldapsearch", Transport::Ldaps)
            .args(["-D", &self.service_bind_dn()])
            .args(["-y", path_str(&self.service_password_file())])
            .args(["-b", "", "-s", "base", "dn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

/// Kerberos: the DC as a KDC, keytabs and the krb5.conf a client needs (tests/kerberos.rs).
impl SambaDc {
    /// Like [`SambaDc::start`], with Samba's KDC running too (on port 88 of this DC's address)
    /// and a server certificate that also names the DC's host, [`SambaDc::host_name`], so a
    /// client can connect by name as Kerberos needs (the SPN is `ldap/<host>`).
    pub fn start_with_kdc(fixture: &Fixture) -> SambaDc {
        let mut timings = Timings::default();
        let template = fixture_template(fixture, &mut timings);
        let waited = Instant::now();
        let lease = AddressLease::take();
        timings.lock_wait = waited.elapsed();
        let cloned = Instant::now();
        let temp = tempfile::Builder::new()
            .prefix("keyhole-samba-kdc-")
            .tempdir()
            .expect("creating a temp dir for the DC");
        let dir = temp.path().join("dc");
        let address = lease.address.to_string();
        run_script(&["clone", path_str(&template), path_str(&dir), &address]);
        timings.clone = cloned.elapsed();
        enable_kdc(&dir);
        issue_named_certificate(&dir, &address, &format!("dc1.{REALM}"));
        // A DC provisioned without DNS registers only host/ names; AD registers ldap/<host> for
        // every DC, and that is the name an LDAP client asks the KDC for.
        let spn = Command::new("samba-tool")
            .args(["spn", "add", &format!("ldap/dc1.{REALM}"), "DC1$"])
            .arg("-s")
            .arg(dir.join("etc/smb.conf"))
            .arg("-H")
            .arg(dir.join("private/sam.ldb"))
            .output()
            .expect("running samba-tool spn add");
        assert!(
            spn.status.success(),
            "samba-tool spn add: {}",
            describe(&spn)
        );
        let mut dc = SambaDc {
            process: None,
            dir,
            _temp: Some(temp),
            lease,
            timings,
        };
        let started = Instant::now();
        dc.spawn();
        dc.wait_for_kdc();
        dc.timings.start = started.elapsed();
        eprintln!("samba-dc (with KDC): {:?}", dc.timings);
        dc
    }

    /// The DC's DNS host name, `dc1.corp.example.com` (AD registered `ldap/` for it).
    pub fn host_name(&self) -> String {
        format!("dc1.{REALM}")
    }

    /// The Kerberos realm, `CORP.EXAMPLE.COM`.
    pub fn kerberos_realm(&self) -> String {
        REALM.to_ascii_uppercase()
    }

    /// Writes a krb5.conf whose only KDC is this DC's address, with no DNS lookups, no reverse
    /// lookups and no client-side compensation for clock skew (so a skewed clock is an error, as
    /// with a KDC that enforces it). Returns its path.
    pub fn write_krb5_conf(&self, path: &Path) -> PathBuf {
        let realm = self.kerberos_realm();
        let text = format!(
            "[libdefaults]\n  default_realm = {realm}\n  dns_lookup_kdc = false\n  \
             dns_lookup_realm = false\n  rdns = false\n  dns_canonicalize_hostname = false\n  \
             kdc_timesync = 0\n  udp_preference_limit = 1\n\n[realms]\n  {realm} = {{\n    \
             kdc = {address}\n  }}\n\n[domain_realm]\n  .{REALM} = {realm}\n  {REALM} = {realm}\n",
            address = self.address(),
        );
        fs::write(path, text).expect("writing krb5.conf");
        path.to_path_buf()
    }

    /// Exports the keys of `principal` (e.g. `svc-keyhole@CORP.EXAMPLE.COM`) into a new keytab
    /// at `path`, mode 0600.
    pub fn export_keytab(&self, principal: &str, path: &Path) {
        let _ = fs::remove_file(path);
        self.samba_tool(&[
            "domain",
            "exportkeytab",
            path_str(path),
            &format!("--principal={principal}"),
        ]);
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod 600 on the keytab");
    }

    /// Adds an ordinary domain user with a password (fixture users have none, and Kerberos
    /// needs keys).
    pub fn add_account(&self, name: &str, password: &str) {
        self.samba_tool(&["user", "create", name, password]);
    }

    /// Sets a new password on `name`: keytabs exported before no longer hold its keys.
    pub fn set_password(&self, name: &str, password: &str) {
        self.samba_tool(&[
            "user",
            "setpassword",
            name,
            &format!("--newpassword={password}"),
        ]);
    }

    /// Marks `name`'s password expired (`pwdLastSet: 0`, "must change at next logon"): the KDC
    /// then answers its AS requests with "password has expired".
    pub fn expire_password(&self, name: &str) {
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: pwdLastSet\npwdLastSet: 0\n",
            self.user_dn(name)
        ));
    }

    /// `badPwdCount` of `name`, read from the database (no bind, which would reset it).
    pub fn bad_password_count(&self, name: &str) -> i64 {
        let output = self.samba_tool_output(&["user", "show", name, "--attributes=badPwdCount"]);
        output
            .lines()
            .find_map(|line| line.strip_prefix("badPwdCount: "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    fn samba_tool(&self, args: &[&str]) {
        self.samba_tool_output(args);
    }

    /// samba-tool on this DC's configuration, and on its database for the commands that take
    /// one (`exportkeytab` finds it through the configuration and refuses `-H`).
    fn samba_tool_output(&self, args: &[&str]) -> String {
        let mut command = Command::new("samba-tool");
        command
            .args(args)
            .arg("-s")
            .arg(self.dir.join("etc/smb.conf"));
        if args.first() != Some(&"domain") {
            command.arg("-H").arg(self.dir.join("private/sam.ldb"));
        }
        let output = command.output().expect("running samba-tool");
        assert!(
            output.status.success(),
            "samba-tool {} failed: {}",
            args.join(" "),
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until the KDC accepts TCP connections on port 88.
    fn wait_for_kdc(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let kdc = SocketAddr::from((self.address(), 88));
        while TcpStream::connect_timeout(&kdc, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the KDC of the test DC did not listen on {kdc} within {READY_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Adds Samba's KDC to the services of a stopped DC directory, and lets it accept GSSAPI binds
/// over TLS as Windows AD does.
fn enable_kdc(dir: &Path) {
    let path = dir.join("etc/smb.conf");
    let text = fs::read_to_string(&path).expect("reading smb.conf");
    let mut found = false;
    let text: String = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("server services") {
                found = true;
                // Windows AD takes a GSSAPI bind without a SASL security layer over LDAPS (TLS
                // already protects it, and the channel binding ties the two); Samba does only
                // when told so.
                "\tserver services = ldap, kdc\n\tldap server require strong auth = allow_sasl_over_tls"
                    .to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(found, "no 'server services' line in {}", path.display());
    fs::write(&path, text + "\n").expect("writing smb.conf");
}

/// A new server certificate for `address` and `host` (both as subjectAltNames), from the DC's
/// own CA, replacing the IP-only one.
fn issue_named_certificate(dir: &Path, address: &str, host: &str) {
    let tls = dir.join("tls");
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&tls)
            .output()
            .expect("running openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            describe(&output)
        );
    };
    run(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
        "-subj",
        &format!("/O=keyhole tests/CN={host}"),
    ]);
    fs::write(
        tls.join("server.ext"),
        format!(
            "subjectAltName=IP:{address},DNS:{host}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .expect("writing server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "3650",
        "-extfile",
        "server.ext",
    ]);
    fs::set_permissions(
        tls.join("server-key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod 600 on the server key");
}

impl Drop for SambaDc {
    fn drop(&mut self) {
        self.stop();
        // The temp dir goes next (field drop), then the address lease.
    }
}

impl AddressLease {
    /// Leases the first free test address, waiting (and saying why) while none is free.
    fn take() -> AddressLease {
        let cap = max_dcs();
        let held = HELD_BY_THIS_THREAD.with(std::cell::Cell::get);
        assert!(
            held < cap,
            "this test already holds {held} Samba DCs and at most {cap} run at once ({MAX_DCS_VAR}); \
             it would wait for itself"
        );
        let addresses: Vec<Ipv4Addr> = (FIRST_TEST_OCTET..)
            .take(cap)
            .map(|octet| Ipv4Addr::new(127, 0, 0, octet))
            .collect();
        // Waiters line up here: the one in front polls for an address, the others wait their
        // turn. Without it a test starting right after another ended would take that address
        // every time, and a test that waits could wait for ever.
        let _in_line = lock_waiting(
            &queue_path(),
            "first in line for a Samba DC address",
            |first| {
                format!(
                    "waiting for a loopback address for a Samba DC, behind {first}; the addresses \
                 ({MAX_DCS_VAR}={cap}):\n  {}\n",
                    addresses
                        .iter()
                        .map(|&address| format!("{address}: {}", holder(&lease_path(address))))
                        .collect::<Vec<_>>()
                        .join("\n  ")
                )
            },
        );
        let mut report = WaitReport::new();
        loop {
            let mut taken = Vec::new();
            let mut only_siblings = true;
            for &address in &addresses {
                let path = lease_path(address);
                let Some(lock) = try_lock(&path) else {
                    let holder = holder(&path);
                    only_siblings &= held_by_this_process(&holder);
                    taken.push(format!("{address}: {holder}"));
                    continue;
                };
                // Ours now, but a samba started by hand on this address would make ours fail to
                // bind: leave that address alone (the lock closes with `lock`).
                if listens(address) {
                    only_siblings = false;
                    taken.push(format!(
                        "{address}: something outside the test harness listens on \
                         {address}:{LDAPS_PORT} (see `ss -ltnp 'src {address}'`; stop it to \
                         free the address)"
                    ));
                    continue;
                }
                write_holder(&lock, "a Samba DC");
                HELD_BY_THIS_THREAD.with(|count| count.set(count.get() + 1));
                return AddressLease {
                    address,
                    _lock: lock,
                };
            }
            if report.due(only_siblings) {
                report_wait(&format!(
                    "waiting {}s for a loopback address for a Samba DC. At most {cap} DCs run at \
                     once ({MAX_DCS_VAR}, default: the number of CPUs) and every address is \
                     taken:\n  {}\nThis test goes on as soon as one of them ends; to stop \
                     waiting, end those processes or this test run (Ctrl-C).",
                    report.waited_secs(),
                    taken.join("\n  ")
                ));
            }
            thread::sleep(WAIT_POLL);
        }
    }
}

impl Drop for AddressLease {
    fn drop(&mut self) {
        HELD_BY_THIS_THREAD.with(|count| count.set(count.get().saturating_sub(1)));
    }
}

/// The cap on concurrently running test DCs: `KEYHOLE_SAMBA_MAX_DCS`, else the number of CPUs.
fn max_dcs() -> usize {
    let available = usize::from(LAST_TEST_OCTET - FIRST_TEST_OCTET) + 1;
    let cap = match std::env::var(MAX_DCS_VAR) {
        Ok(value) => value.trim().parse::<usize>().unwrap_or_else(|_| {
            panic!("{MAX_DCS_VAR}={value:?} is not a number of DCs (1 to {available})")
        }),
        Err(_) => thread::available_parallelism().map_or(1, usize::from),
    };
    cap.clamp(1, available)
}

/// `$TMPDIR/keyhole-samba-dc-queue.lock`: held by the test first in line for an address.
fn queue_path() -> PathBuf {
    std::env::temp_dir().join("keyhole-samba-dc-queue.lock")
}

/// `$TMPDIR/keyhole-samba-dc-127.0.0.N.lock`; `scripts/demo` locks its 127.0.0.254 the same way.
fn lease_path(address: Ipv4Addr) -> PathBuf {
    std::env::temp_dir().join(format!("keyhole-samba-dc-{address}.lock"))
}

/// Whether something accepts connections on `address`'s LDAPS port.
fn listens(address: Ipv4Addr) -> bool {
    let socket = SocketAddr::from((address, LDAPS_PORT));
    TcpStream::connect_timeout(&socket, Duration::from_millis(200)).is_ok()
}

impl SambaProcess {
    /// SIGTERM to the process group, then SIGKILL if samba is not gone in time.
    fn terminate(mut self) {
        let group = -(self.child.id() as libc::pid_t);
        // SAFETY: kill(2) has no memory-safety preconditions; the group is the one we created.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The fixture's template directory, built (with the base template) if it is not cached yet.
fn fixture_template(fixture: &Fixture, timings: &mut Timings) -> PathBuf {
    let script_bytes = fs::read(script()).expect("reading scripts/samba-dc");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("samba-templates");
    fs::create_dir_all(&cache).expect("creating the samba template cache");

    let script_hash = short_hash(&[&script_bytes]);
    let base = cache.join(format!("base-{script_hash}"));
    ensure_template(&base, |partial| {
        // A new script version makes every older template unreachable; drop them so the cache
        // does not grow by ~50 MB per edit of the script.
        prune_templates_except(&cache, &script_hash);
        let provisioned = Instant::now();
        // Templates never run: each DC's clone moves to the address it leased.
        let placeholder = Ipv4Addr::new(127, 0, 0, FIRST_TEST_OCTET).to_string();
        run_script(&["provision", path_str(partial), &placeholder]);
        timings.provision = Some(provisioned.elapsed());
    });

    let json = fixture.to_json();
    let template = cache.join(format!(
        "fixture-{script_hash}-{}",
        short_hash(&[json.as_bytes()])
    ));
    ensure_template(&template, |partial| {
        let populated = Instant::now();
        run_script(&["clone", path_str(&base), path_str(partial)]);
        let fixture_file = partial.join("fixture.json");
        fs::write(&fixture_file, &json).expect("writing the fixture JSON");
        run_script(&["populate", path_str(partial), path_str(&fixture_file)]);
        timings.populate = Some(populated.elapsed());
    });
    template
}

/// Removes the templates (and their lock files) built by other versions of the script.
fn prune_templates_except(cache: &Path, script_hash: &str) {
    let entries = fs::read_dir(cache).expect("listing the samba template cache");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let current = name.starts_with(&format!("base-{script_hash}"))
            || name.starts_with(&format!("fixture-{script_hash}-"));
        if current {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
    }
}

/// Makes sure `dir` exists, building it with `build` exactly once across threads and processes:
/// the builder holds `dir.lock` and renames a finished `dir.partial` into place, so `dir` is
/// either absent or complete.
fn ensure_template(dir: &Path, build: impl FnOnce(&Path)) {
    if dir.exists() {
        return;
    }
    let _building = lock_waiting(
        &dir.with_extension("lock"),
        "building a Samba template",
        |holder| {
            format!(
                "waiting for another test to finish building the Samba template {} (provisioning \
                 takes ~10 s, a large fixture up to a minute), held by {holder}",
                dir.display()
            )
        },
    );
    if dir.exists() {
        return; // someone else built it while we waited
    }
    let partial = dir.with_extension("partial");
    if partial.exists() {
        // Left by a builder that died; nobody else can be using it while we hold the lock.
        fs::remove_dir_all(&partial).expect("removing a stale partial template");
    }
    build(&partial);
    fs::rename(&partial, dir).expect("moving the finished template into place");
}

/// Blocks until this thread holds an exclusive `flock` on `path` (released when the file
/// closes), and records in the file who holds it and for what. Waits longer than a few seconds
/// are reported with `describe(holder)`.
fn lock_waiting(path: &Path, purpose: &str, describe: impl Fn(&str) -> String) -> File {
    let mut report = WaitReport::new();
    loop {
        if let Some(file) = try_lock(path) {
            write_holder(&file, purpose);
            return file;
        }
        let holder = holder(path);
        let sibling = held_by_this_process(&holder);
        if report.due(sibling) {
            // A sibling test needs no ending: it is this run's own work.
            let how_to_end = if sibling {
                "it is another test of this run; Ctrl-C ends the run"
            } else {
                "to stop waiting, end that process or this test run (Ctrl-C)"
            };
            report_wait(&format!(
                "{} ({}s so far); {how_to_end}",
                describe(&holder),
                report.waited_secs()
            ));
        }
        thread::sleep(WAIT_POLL);
    }
}

/// When a wait should say what it waits for: once it has lasted [`QUIET_WAIT`] (or
/// [`QUIET_SIBLING_WAIT`] while only this run's own tests are in the way), then every
/// [`WAIT_REPORT_EVERY`].
struct WaitReport {
    started: Instant,
    last: Option<Instant>,
}

impl WaitReport {
    fn new() -> WaitReport {
        WaitReport {
            started: Instant::now(),
            last: None,
        }
    }

    fn due(&mut self, only_siblings: bool) -> bool {
        let due = match self.last {
            Some(last) => last.elapsed() >= WAIT_REPORT_EVERY,
            None if only_siblings => self.started.elapsed() >= QUIET_SIBLING_WAIT,
            None => self.started.elapsed() >= QUIET_WAIT,
        };
        if due {
            self.last = Some(Instant::now());
        }
        due
    }

    fn waited_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

/// Whether a lock holder's record (see [`write_holder`]) names this process.
fn held_by_this_process(holder: &str) -> bool {
    holder.starts_with(&format!("pid {} (", std::process::id()))
}

/// An exclusive `flock` on `path` if nobody holds one, else `None`. flock rather than
/// `File::try_lock`: the crate's MSRV (1.88) predates it. Locks taken through separate opens
/// exclude each other even within one process, so threads of one test binary queue up too.
fn try_lock(path: &Path) -> Option<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening lock file {}: {e}", path.display()));
    loop {
        // SAFETY: flock(2) on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Some(file);
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return None,
            _ => panic!("locking {}: {err}", path.display()),
        }
    }
}

/// Records in a lock file we hold who holds it, for the wait messages of others.
fn write_holder(lock: &File, purpose: &str) {
    let program = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "?".to_owned());
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    // libtest names each test's thread after the test.
    let test = thread::current().name().unwrap_or("?").to_owned();
    let record = format!(
        "pid {} ({program}, test {test}) {purpose}\nsince {since}\n",
        std::process::id()
    );
    // Informational only: a failure to record leaves "did not say who it is" for waiters.
    let _ = lock.set_len(0);
    let _ = lock.write_all_at(record.as_bytes(), 0);
}

/// Who holds a lock file, as its holder recorded it: "pid 123 (directory-4f…, test x) a Samba
/// DC, for 12 s". Best effort: the record may be half written or from an older harness.
fn holder(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let who = lines.next().filter(|line| !line.is_empty());
    let since = lines
        .next()
        .and_then(|line| line.strip_prefix("since "))
        .and_then(|secs| secs.trim().parse::<u64>().ok());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    match (who, since) {
        (Some(who), Some(since)) => format!("{who}, for {} s", now.saturating_sub(since)),
        (Some(who), None) => who.to_owned(),
        _ => format!(
            "held by a process that did not say who it is (lock {})",
            path.display()
        ),
    }
}

/// Writes past libtest's output capture (which takes only `print!`/`eprint!`), so a waiting
/// test run says why it waits instead of hanging silently.
fn report_wait(message: &str) {
    let test = thread::current().name().unwrap_or("?").to_owned();
    let _ = writeln!(std::io::stderr(), "samba-dc [{test}]: {message}");
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/samba-dc")
}

fn run_script(args: &[&str]) {
    let output = Command::new(script())
        .args(args)
        .output()
        .expect("running scripts/samba-dc");
    assert!(
        output.status.success(),
        "scripts/samba-dc {} failed: {}",
        args.join(" "),
        describe(&output)
    );
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in &lines[lines.len().saturating_sub(40)..] {
        let _ = writeln!(out, "{line}");
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("{text:?} is not base64: {e}"))
}

/// Parses `ldapsearch -LLL -o ldif_wrap=no` output. Referrals (`# refldaps://...` comments) and
/// other comments are skipped.
fn parse_ldif(text: &str) -> Vec<LdapEntry> {
    let mut entries = Vec::new();
    for block in text.split("\n\n") {
        let mut entry: Option<LdapEntry> = None;
        for line in block.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = match line.split_once(": ") {
                Some((name, value)) => (name, value),
                // "attr:" with an empty value
                None => (line.trim_end_matches(':'), ""),
            };
            // "attr:: base64" keeps the base64 text; callers decode binary values themselves.
            let name = name.trim_end_matches(':');
            match entry.as_mut() {
                None if name == "dn" => {
                    entry = Some(LdapEntry {
                        dn: value.to_owned(),
                        attrs: Vec::new(),
                    })
                }
                None => panic!("LDIF block does not start with dn: {block}"),
                Some(entry) => match entry.attrs.iter_mut().find(|(n, _)| n == name) {
                    Some((_, values)) => values.push(value.to_owned()),
                    None => entry.attrs.push((name.to_owned(), vec![value.to_owned()])),
                },
            }
        }
        entries.extend(entry);
    }
    entries
}
