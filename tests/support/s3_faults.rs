//! An S3 fault proxy for the promise tests: between keyhole and s3s-fs on 127.0.0.1, it reads
//! each HTTP request's head (request line and headers), and either refuses the request itself
//! with an S3 error, passes it on with one byte of its body flipped (a body damaged in transit),
//! or passes it on untouched. Rules pick requests by method, a predicate on the target, how many
//! matching requests to let through first (`skip`: "the 2nd group PUT" is skip 1) and how many
//! to fault. (tests/support/fault_proxy.rs on another branch does throttling, resets and delays;
//! this one does the exact-Nth refusals and the damaged body the ordering tests need.)
//!
//! One request per connection: the head sent upstream says `Connection: close`, so the server
//! closes after its answer and the client opens a new connection for the next request. Plain
//! threads; the proxy stops accepting when dropped. It only connects to the loopback upstream
//! it was given.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer 403 AccessDenied without asking the server (not retried by the SDK: exactly one
    /// request fails).
    Refuse,
    /// Pass the request on with the last byte of its body changed.
    DamageBody,
}

pub struct Rule {
    pub method: &'static str,
    pub target: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Matching requests let through before the first fault.
    pub skip: usize,
    /// Matching requests faulted after that (then the rule lets everything through).
    pub times: usize,
    pub fault: Fault,
}

impl Rule {
    pub fn new(
        method: &'static str,
        target: impl Fn(&str) -> bool + Send + Sync + 'static,
        skip: usize,
        fault: Fault,
    ) -> Rule {
        Rule {
            method,
            target: Box::new(target),
            skip,
            times: 1,
            fault,
        }
    }
}

/// One request the proxy saw: method, target, and the fault it got, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub fault: Option<Fault>,
    /// For a request with a body: whether its `x-amz-checksum-sha256` header is the base64
    /// SHA-256 of the body as the client sent it (`None`: no body, or no such header).
    pub checksum_matches: Option<bool>,
}

struct State {
    rules: Vec<(Rule, usize)>,
    seen: Vec<Seen>,
}

pub struct S3FaultProxy {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
}

impl S3FaultProxy {
    /// Listens on a port of 127.0.0.1 chosen by the kernel (bound here and kept: no free-port
    /// race) and relays to `upstream`.
    pub fn start(upstream: SocketAddr, rules: Vec<Rule>) -> S3FaultProxy {
        assert!(
            upstream.ip().is_loopback(),
            "the proxy only relays to loopback"
        );
        let listener = TcpListener::bind((upstream.ip(), 0)).expect("binding the S3 fault proxy");
        let address = listener.local_addr().expect("the proxy's address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State {
            rules: rules.into_iter().map(|rule| (rule, 0)).collect(),
            seen: Vec::new(),
        }));
        let proxy = S3FaultProxy {
            address,
            stop: Arc::clone(&stop),
            state: Arc::clone(&state),
        };
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let state = Arc::clone(&state);
                        thread::spawn(move || {
                            let _ = relay(client, upstream, &state);
                        });
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests that got a fault.
    pub fn faulted(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|seen| seen.fault.is_some())
            .collect()
    }
}

impl Drop for S3FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Decides the fault for one request and records it.
fn decide(
    state: &Mutex<State>,
    method: &str,
    target: &str,
    checksum_matches: Option<bool>,
) -> Option<Fault> {
    let mut state = state.lock().unwrap();
    let mut fault = None;
    for (rule, matched) in &mut state.rules {
        if rule.method == method && (rule.target)(target) {
            *matched += 1;
            if *matched > rule.skip && *matched <= rule.skip + rule.times {
                fault = Some(rule.fault);
                break;
            }
        }
    }
    state.seen.push(Seen {
        method: method.to_owned(),
        target: target.to_owned(),
        fault,
        checksum_matches,
    });
    fault
}

fn relay(client: TcpStream, upstream: SocketAddr, state: &Mutex<State>) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut content_length = 0usize;
    let mut checksum = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            content_length = value.trim().parse().unwrap_or(0);
        }
        if let Some(value) = lower.strip_prefix("x-amz-checksum-sha256:") {
            // base64 is case-sensitive: take the value from the line as sent.
            let at = line.len() - value.len();
            checksum = Some(line[at..].trim().to_owned());
        }
        // Our own Connection header goes upstream instead.
        if !lower.starts_with("connection:") {
            head.push(line);
        }
    }
    let request_line = head.first().cloned().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let checksum_matches = checksum
        .filter(|_| !body.is_empty())
        .map(|sent| sent == keyhole::bucket::store::checksum_sha256(&body));
    let fault = decide(state, &method, &target, checksum_matches);
    let mut client = client;
    if fault == Some(Fault::Refuse) {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>refused by the test's fault proxy</Message></Error>";
        write!(
            client,
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        client.flush()?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    if fault == Some(Fault::DamageBody)
        && let Some(last) = body.last_mut()
    {
        *last ^= 0x01;
    }
    let mut server = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    let mut upstream_head = head.concat();
    upstream_head.push_str("Connection: close\r\n\r\n");
    server.write_all(upstream_head.as_bytes())?;
    server.write_all(&body)?;
    server.flush()?;
    // The answer, until the server closes (it was asked to).
    io::copy(&mut server, &mut client)?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
