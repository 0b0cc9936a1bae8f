//! An LDAP operation that times out after the bind (README: the run fails, nothing is
//! published): the real Samba DC behind a small TCP proxy on 127.0.0.1 that relays LDAPS
//! faithfully until the client has sent its search, then stops relaying the server's answer
//! (the DC is alive, the answer never arrives: a hung DC, a stalled link). keyhole must give up
//! after `[ldap] timeout`, exit 1 with a message naming the timeout and what it was doing, and
//! write nothing. (A cut in the middle of a paged search is tests/faults.rs's, on another
//! branch.)
//!
//! The proxy counts the client's TLS records (5-byte headers, never decrypted): in TLS 1.3 the
//! client's encrypted records are all of type application_data (23): its Finished, then the
//! bind, then the first search. From the third such record on, nothing more goes back to the
//! client. Under TLS 1.2 the third is a later search; either way the bind has been answered.
//!
//! The failures past the bind that Samba cannot be made to produce on demand come from
//! `support::ldap_relay`, an LDAPS relay that decodes the LDAP messages and rewrites one answer
//! of the real DC: page 2 of the paged users search ending with result code 51 (busy), and the
//! first follow-up `member;range=` read of a large group coming back without members, with a
//! range that does not advance, or without the group. Each test first publishes through the
//! faithful relay (so there is something to keep), then changes a key (so a run that got through
//! would write), then runs with the fault: exit 1, a message naming the failure (the result code;
//! the group and the unfinished read), and the bucket byte for byte as it was.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::support::keyhole::ldap_section;
use crate::support::ldap_relay::{Fault, LdapRelay, RangeBreak};
use crate::support::samba::{Fixture, UserSpec};
use crate::support::stack::Stack;
use ldap3_proto::parse_ldap_filter_str;
use ldap3_proto::proto::LdapResultCode;

const POLICY: &str = "[access_groups.web-prod]\ngroups = [\"Web Team\"]\n";

/// Relays `upstream` on a port of 127.0.0.1 (bound here and kept), stalling the server's
/// answers once the client has sent `stall_after` application-data records on a connection.
struct StallProxy {
    address: SocketAddr,
    stalled: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl StallProxy {
    fn start(upstream: SocketAddr, stall_after: usize) -> StallProxy {
        // On the DC's own address: its certificate names only that IP.
        let listener = TcpListener::bind((upstream.ip(), 0)).unwrap();
        let address = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stalled = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, stopping) = (Arc::clone(&stalled), Arc::clone(&stop));
        thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let counter = Arc::clone(&counter);
                thread::spawn(move || relay(client, upstream, stall_after, &counter));
            }
        });
        StallProxy {
            address,
            stalled,
            stop,
        }
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, stall_after: usize, stalled: &AtomicUsize) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let hold = Arc::new(AtomicBool::new(false));
    // Server to client, until the hold.
    let (mut from_server, mut to_client) =
        (server.try_clone().unwrap(), client.try_clone().unwrap());
    let holding = Arc::clone(&hold);
    thread::spawn(move || {
        let mut buffer = [0u8; 16384];
        while let Ok(n) = from_server.read(&mut buffer) {
            if n == 0 || holding.load(Ordering::SeqCst) {
                break;
            }
            if to_client.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
    });
    // Client to server, reading TLS record headers to count application-data records.
    let (mut from_client, mut to_server) = (client, server);
    let mut application_records = 0;
    let mut header = [0u8; 5];
    loop {
        if from_client.read_exact(&mut header).is_err() {
            break;
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let mut body = vec![0; length];
        if from_client.read_exact(&mut body).is_err() {
            break;
        }
        if header[0] == 23 {
            application_records += 1;
            if application_records >= stall_after && !hold.swap(true, Ordering::SeqCst) {
                stalled.fetch_add(1, Ordering::SeqCst);
            }
        }
        if to_server.write_all(&header).is_err() || to_server.write_all(&body).is_err() {
            break;
        }
    }
    let _ = to_server.shutdown(Shutdown::Both);
}

#[test]
fn an_ldap_search_that_never_answers_times_out_fails_the_run_and_writes_nothing() {
    let fixture = Fixture::new()
        .user(UserSpec::unix("bob", 21001, "/home/bob"))
        .group("Web Team", &["bob"]);
    let stack = Stack::start(&fixture, POLICY);
    stack.give_keys(&[("bob", 21001)]);
    let first = stack.run(&["publish"]);
    assert_eq!(first.code, 0, "{first:#?}");
    let before = stack.s3.contents();
    stack.homes.write(
        "bob",
        21001,
        &format!("{}\n", stack.homes.key("bob-new", "ed25519").line),
    );

    let upstream: SocketAddr = stack
        .dc
        .ldaps_url()
        .trim_start_matches("ldaps://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = StallProxy::start(upstream, 3);
    let ldap = ldap_section(
        &stack.dc,
        &format!("ldaps://{}", proxy.address),
        &stack.dc.ca_file(),
    )
    .replace("timeout = \"10s\"", "timeout = \"3s\"");
    let settings = std::fs::read_to_string(stack.publisher.config()).unwrap();
    let rest = &settings[settings.find("\n[s3]").unwrap()..];
    stack.publisher.write_settings(&format!("{ldap}{rest}"));

    // The run must end by itself; a hung keyhole is killed after 60 s and fails the test.
    let mut command = std::process::Command::new(crate::support::keyhole::BINARY);
    command
        .arg("--config")
        .arg(stack.publisher.config())
        .arg("publish")
        .envs(stack.publisher.env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("keyhole publish did not give up on a silent DC within 60 s");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        proxy.stalled.load(Ordering::SeqCst) > 0,
        "the proxy never stalled: {stderr}"
    );
    assert!(stderr.contains("3s"), "the timeout is named: {stderr}");
    assert!(
        stderr.contains("search"),
        "what timed out is named: {stderr}"
    );
    assert_eq!(stack.s3.contents(), before, "nothing may be written");
}

/// keyhole's filter for people (src/directory/ldap.rs), whose search the relay breaks.
const USER_FILTER: &str = "(&(objectCategory=person)(objectClass=user))";

/// `people` (Unix accounts) and the group "Web Team" of them all.
fn web_team(people: &[(&str, u32)]) -> Fixture {
    let mut fixture = Fixture::new();
    for &(name, uid) in people {
        fixture = fixture.user(UserSpec::unix(name, uid, &format!("/home/{name}")));
    }
    let names: Vec<&str> = people.iter().map(|&(name, _)| name).collect();
    fixture.group("Web Team", &names)
}

/// Starts a relay in front of `stack`'s DC and sends the publisher's runs through it, with one
/// more `KEYHOLE_LDAP_*` setting.
fn through_relay(stack: &mut Stack, setting: (&str, &str)) -> LdapRelay {
    let relay = LdapRelay::start(&stack.dc);
    let env = &mut stack.publisher.env;
    env.extend(relay.keyhole_env());
    env.push((setting.0.to_owned(), setting.1.to_owned()));
    relay
}

/// Gives `people` keys and publishes them (through the relay, still faithful: every key must be
/// published), then gives the first of them a new key so that the next run has something to
/// write; returns the bucket as published.
fn publish_through(
    stack: &Stack,
    people: &[(&'static str, u32)],
) -> BTreeMap<String, Option<String>> {
    let keys = stack.give_keys(people);
    let first = stack.run(&["publish"]);
    assert_eq!(first.code, 0, "through the faithful relay: {first:#?}");
    let group_file = stack.group_file("web-prod");
    for (name, key) in &keys {
        assert!(
            group_file.contains(&key.line),
            "{name} is published: {group_file}"
        );
    }
    let published = stack.s3.contents();
    let (name, uid) = people[0];
    let key = stack.homes.key(&format!("{name}-new"), "ed25519");
    stack.homes.write(name, uid, &format!("{}\n", key.line));
    published
}

#[test]
fn a_non_zero_result_on_a_later_page_of_the_users_search_fails_the_run_and_writes_nothing() {
    let people = [("bob", 21001), ("carol", 21002), ("dave", 21003)];
    let mut stack = Stack::start(&web_team(&people), POLICY);
    // Two entries a page: the DC's own accounts and the three people make three pages or more.
    let relay = through_relay(&mut stack, ("KEYHOLE_LDAP_PAGE_SIZE", "2"));
    let before = publish_through(&stack, &people);

    relay.inject(Fault::FailPage {
        filter: parse_ldap_filter_str(USER_FILTER).unwrap(),
        page: 2,
        code: LdapResultCode::Busy,
        message: "relay: the DC is too busy for page 2".into(),
    });
    // --full: the search of every user (an incremental run searches only the changed ones).
    let run = stack.run(&["publish", "--full"]);
    assert_eq!(relay.injected(), 1, "the relay failed page 2: {run:#?}");
    assert_eq!(run.code, 1, "{run:#?}");
    let expected = format!(
        "search for users under {} failed: result code 51: relay: the DC is too busy for page 2",
        stack.dc.base_dn()
    );
    assert!(
        run.stderr.contains(&expected),
        "the search and the result code are named: {}",
        run.stderr
    );
    assert_eq!(stack.s3.contents(), before, "nothing may be written");
}

#[test]
fn a_member_range_read_without_members_fails_the_run_and_writes_nothing() {
    unfinished_member_range_read(
        RangeBreak::NoMembers,
        "no values returned for member;range=2-3",
    );
}

#[test]
fn a_member_range_read_that_does_not_advance_fails_the_run_and_writes_nothing() {
    unfinished_member_range_read(
        RangeBreak::Rewind,
        "asked for member;range=2-3, got a range ending at 1",
    );
}

#[test]
fn a_group_that_vanishes_during_its_member_range_reads_fails_the_run_and_writes_nothing() {
    unfinished_member_range_read(
        RangeBreak::Vanished,
        "the group vanished while reading member;range=2-3",
    );
}

/// A group of five read in slices of two (the bulk search returns 0-1, then 2-3 and 4-* are
/// read one by one), whose read of 2-3 the relay breaks as `how` says; keyhole's error must
/// name the group and `detail`.
fn unfinished_member_range_read(how: RangeBreak, detail: &str) {
    let people = [
        ("bob", 21001),
        ("carol", 21002),
        ("dave", 21003),
        ("erin", 21004),
        ("frank", 21005),
    ];
    let mut stack = Stack::start(&web_team(&people), POLICY);
    let relay = through_relay(&mut stack, ("KEYHOLE_LDAP_MEMBER_RANGE", "2"));
    let before = publish_through(&stack, &people);

    let group = stack.dc.group_dn("Web Team");
    relay.inject(Fault::BreakRangedRead {
        group: group.clone(),
        how,
    });
    // --full: every group is read (an incremental run reads only the changed ones).
    let run = stack.run(&["publish", "--full"]);
    assert_eq!(relay.injected(), 1, "the relay broke the read: {run:#?}");
    assert_eq!(run.code, 1, "{run:#?}");
    let expected =
        format!("group {group}: the server did not finish the member;range= reads ({detail})");
    assert!(
        run.stderr.contains(&expected),
        "the group and the unfinished read are named: {}",
        run.stderr
    );
    assert_eq!(stack.s3.contents(), before, "nothing may be written");
}
