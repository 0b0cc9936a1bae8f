//! The one fault-injecting proxy of the tests, put between keyhole and a real server (the Samba
//! DC, s3s-fs) on 127.0.0.1. toxiproxy is not installable here (DEPENDENCIES.md), and a proxy of
//! our own is the most controllable: each fault happens at an exact point of the conversation.
//!
//! Two kinds, one listener each, chosen at [`FaultProxy::start`]:
//! - [`Mode::Tcp`]: relays bytes both ways; [`TcpFault::CutAfterServerBytes`] resets both sides
//!   (RST, not FIN) once the server has sent that many bytes, e.g. in the middle of an LDAP paged
//!   search (the proxy sees only TLS records, so it counts bytes, not messages).
//! - [`Mode::Http`]: one HTTP/1.1 request per connection (the request goes upstream with
//!   `Connection: close`, so the server closes after its answer and the client opens a new
//!   connection for the next request). An [`HttpRule`] picks requests by method and a predicate
//!   on the target, lets its first `skip` matches through ("the 2nd group PUT" is skip 1) and
//!   faults the next `times`: S3's 503 SlowDown or 403 AccessDenied answered by the proxy itself,
//!   a reset in the middle of the request body, the body passed on with its last byte flipped
//!   (damaged in transit), or the request held for a while before it is passed on. Every request
//!   is recorded ([`Seen`]) with its fault and whether its `x-amz-checksum-sha256` matches the
//!   body the client sent.
//!
//! Everything runs on plain threads; the proxy stops accepting when dropped (connections in
//! flight finish on their own). It only ever connects to the upstream address it was given.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What a TCP-mode proxy does to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpFault {
    /// Relay faithfully (and count the bytes, to pick a cut point).
    Pass,
    /// Reset both sides once the server has sent more than this many bytes on one connection.
    CutAfterServerBytes(u64),
}

/// What an HTTP-mode proxy does to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFault {
    /// Answer `503 SlowDown` (S3's throttling answer, which the SDK retries) without asking the
    /// server.
    SlowDown,
    /// Answer `403 AccessDenied` without asking the server (not retried by the SDK: exactly one
    /// request fails).
    Refuse,
    /// Send the request head and half of the body upstream, then reset both connections.
    ResetMidBody,
    /// Pass the request on with the last byte of its body changed.
    DamageBody,
    /// Wait this long, then pass the request on.
    Delay(Duration),
}

/// A fault for the requests whose method and target match: the first `skip` matches pass, the
/// next `times` get the fault, the rest pass.
pub struct HttpRule {
    /// e.g. "PUT"; `None` matches any method.
    pub method: Option<&'static str>,
    /// Whether the request target (path and query) matches.
    pub target: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Matching requests let through before the first fault.
    pub skip: usize,
    /// Matching requests faulted after that (then the rule lets everything through).
    pub times: usize,
    pub fault: HttpFault,
}

impl HttpRule {
    /// The first request of `method` (any, if `None`) whose target satisfies `target` gets
    /// `fault`; [`HttpRule::skip`] and [`HttpRule::times`] move and widen that window.
    pub fn new(
        method: Option<&'static str>,
        target: impl Fn(&str) -> bool + Send + Sync + 'static,
        fault: HttpFault,
    ) -> HttpRule {
        HttpRule {
            method,
            target: Box::new(target),
            skip: 0,
            times: 1,
            fault,
        }
    }

    /// Lets the first `skip` matching requests through.
    pub fn skip(self, skip: usize) -> HttpRule {
        HttpRule { skip, ..self }
    }

    /// Faults `times` matching requests instead of one.
    pub fn times(self, times: usize) -> HttpRule {
        HttpRule { times, ..self }
    }
}

impl fmt::Debug for HttpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRule")
            .field("method", &self.method)
            .field("skip", &self.skip)
            .field("times", &self.times)
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub enum Mode {
    Tcp(TcpFault),
    Http(Vec<HttpRule>),
}

/// One request an HTTP-mode proxy saw, and what it did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub fault: Option<HttpFault>,
    /// For a request with a body the proxy read whole: whether its `x-amz-checksum-sha256`
    /// header is the base64 SHA-256 of the body as the client sent it (`None`: no body, no such
    /// header, or a body the proxy did not read whole).
    pub checksum_matches: Option<bool>,
}

/// The rules with how many requests each has matched, and the requests seen, in arrival order.
struct State {
    rules: Vec<(HttpRule, usize)>,
    seen: Vec<Seen>,
}

pub struct FaultProxy {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Bytes sent by the server, summed over every connection.
    server_bytes: Arc<AtomicU64>,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    /// Listens on a port of 127.0.0.1 chosen by the kernel (bound here and kept: no free-port
    /// race) and relays to `upstream` (which must be loopback).
    pub fn start(upstream: SocketAddr, mode: Mode) -> FaultProxy {
        assert!(
            upstream.ip().is_loopback(),
            "the proxy only relays to loopback"
        );
        let listener = TcpListener::bind((upstream.ip(), 0)).expect("binding the fault proxy");
        let address = listener.local_addr().expect("the proxy's address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let server_bytes = Arc::new(AtomicU64::new(0));
        let (tcp_fault, rules) = match mode {
            Mode::Tcp(fault) => (Some(fault), Vec::new()),
            Mode::Http(rules) => (None, rules),
        };
        let state = Arc::new(Mutex::new(State {
            rules: rules.into_iter().map(|rule| (rule, 0)).collect(),
            seen: Vec::new(),
        }));
        let proxy = FaultProxy {
            address,
            stop: Arc::clone(&stop),
            server_bytes: Arc::clone(&server_bytes),
            state: Arc::clone(&state),
        };
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let server_bytes = Arc::clone(&server_bytes);
                        let state = Arc::clone(&state);
                        thread::spawn(move || match tcp_fault {
                            Some(fault) => relay_tcp(client, upstream, fault, &server_bytes),
                            None => relay_http(client, upstream, &state, &server_bytes),
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

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT`, for an S3 endpoint.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Bytes the server sent through this proxy so far.
    pub fn server_bytes(&self) -> u64 {
        self.server_bytes.load(Ordering::SeqCst)
    }

    /// The HTTP requests seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("the proxy's state").seen.clone()
    }

    /// The HTTP requests that got a fault.
    pub fn faulted(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|seen| seen.fault.is_some())
            .collect()
    }

    /// Replaces the HTTP rules, their counts started afresh (e.g. to let every request through
    /// for the next run).
    pub fn set_rules(&self, rules: Vec<HttpRule>) {
        self.state.lock().expect("the proxy's state").rules =
            rules.into_iter().map(|rule| (rule, 0)).collect();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Closes a socket with a TCP reset instead of a FIN: what a crashed middlebox or a cut link
/// looks like to the other side.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor, and a pointer to a properly sized `linger` for SO_LINGER.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn relay_tcp(client: TcpStream, upstream: SocketAddr, fault: TcpFault, counter: &AtomicU64) {
    let Ok(server) = TcpStream::connect(upstream) else {
        reset(&client);
        return;
    };
    let (Ok(client_read), Ok(server_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Client to server: plain copy until either side ends.
    let up = thread::spawn(move || {
        copy(client_read, server_write);
    });
    let limit = match fault {
        TcpFault::Pass => None,
        TcpFault::CutAfterServerBytes(n) => Some(n),
    };
    let (Ok(server_read), Ok(client_write)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    let sent = copy_counting(server_read, client_write, limit, counter);
    if limit.is_some_and(|limit| sent >= limit) {
        reset(&client);
        reset(&server);
    } else {
        let _ = client.shutdown(Shutdown::Write);
    }
    let _ = up.join();
}

/// Copies until EOF or until `limit` bytes went through; returns the bytes copied.
fn copy_counting(
    mut from: TcpStream,
    mut to: TcpStream,
    limit: Option<u64>,
    counter: &AtomicU64,
) -> u64 {
    let mut buffer = [0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let want = match limit {
            Some(limit) if total >= limit => return total,
            Some(limit) => buffer.len().min((limit - total) as usize),
            None => buffer.len(),
        };
        let n = match from.read(&mut buffer[..want]) {
            Ok(0) | Err(_) => return total,
            Ok(n) => n,
        };
        if to.write_all(&buffer[..n]).is_err() {
            return total;
        }
        total += n as u64;
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// Copies until either side ends, then passes the end on (half-close).
fn copy(from: TcpStream, to: TcpStream) {
    if let Ok(writer) = to.try_clone() {
        copy_counting(from, writer, None, &AtomicU64::new(0));
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// True when the client has closed its side (EOF waiting to be read) or reset the connection.
fn gone(client: &TcpStream) -> bool {
    if client.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let gone = match client.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != io::ErrorKind::WouldBlock,
    };
    let _ = client.set_nonblocking(false);
    gone
}

/// The request head (through the blank line) and whatever body bytes came with it.
fn read_head(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end + 4]).into_owned();
            return Some((head, data[end + 4..].to_vec()));
        }
        let n = client.read(&mut buffer).ok()?;
        if n == 0 || data.len() > 1 << 20 {
            return None;
        }
        data.extend_from_slice(&buffer[..n]);
    }
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// The head with `Connection: close` in place of any connection header.
fn closing(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| {
            !line
                .split_once(':')
                .is_some_and(|(key, _)| key.trim().eq_ignore_ascii_case("connection"))
        })
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

/// Decides the fault for one request and records it; returns the fault and where the request
/// stands in the seen list (for its checksum, known once the body is read).
fn decide(state: &Mutex<State>, method: &str, target: &str) -> (Option<HttpFault>, usize) {
    let mut state = state.lock().expect("the proxy's state");
    let mut fault = None;
    for (rule, matched) in &mut state.rules {
        if rule.method.is_none_or(|m| m == method) && (rule.target)(target) {
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
        checksum_matches: None,
    });
    (fault, state.seen.len() - 1)
}

/// Reads the rest of a body of `length` bytes; `None` when the client stopped short.
fn read_body(client: &mut TcpStream, mut body: Vec<u8>, length: u64) -> Option<Vec<u8>> {
    let mut buffer = [0u8; 8192];
    while (body.len() as u64) < length {
        let want = buffer.len().min((length - body.len() as u64) as usize);
        match client.read(&mut buffer[..want]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&buffer[..n]),
        }
    }
    Some(body)
}

/// Records whether the request's `x-amz-checksum-sha256` is the SHA-256 of `body`.
fn record_checksum(state: &Mutex<State>, at: usize, head: &str, body: &[u8]) {
    let matches = header(head, "x-amz-checksum-sha256")
        .filter(|_| !body.is_empty())
        .map(|sent| sent == keyhole::bucket::store::checksum_sha256(body));
    state.lock().expect("the proxy's state").seen[at].checksum_matches = matches;
}

/// Answers an S3 error document itself and closes.
fn answer_error(client: &mut TcpStream, status: &str, code: &str, message: &str) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
    );
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes());
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Both);
}

fn relay_http(
    mut client: TcpStream,
    upstream: SocketAddr,
    state: &Mutex<State>,
    counter: &AtomicU64,
) {
    let Some((head, early_body)) = read_head(&mut client) else {
        return;
    };
    let mut request_line = head.lines().next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let target = request_line.next().unwrap_or("").to_owned();
    let (fault, at) = decide(state, &method, &target);
    let length: Option<u64> = header(&head, "content-length").and_then(|v| v.parse().ok());
    match fault {
        Some(fault @ (HttpFault::SlowDown | HttpFault::Refuse)) => {
            // Read the body the client sends, so it sees an answer rather than a reset.
            if let Some(body) = read_body(&mut client, early_body, length.unwrap_or(0)) {
                record_checksum(state, at, &head, &body);
            }
            if fault == HttpFault::SlowDown {
                answer_error(
                    &mut client,
                    "503 Slow Down",
                    "SlowDown",
                    "Please reduce your request rate.",
                );
            } else {
                answer_error(
                    &mut client,
                    "403 Forbidden",
                    "AccessDenied",
                    "refused by the test's fault proxy",
                );
            }
        }
        Some(HttpFault::ResetMidBody) => {
            let Ok(mut server) = TcpStream::connect(upstream) else {
                reset(&client);
                return;
            };
            let half = (length.unwrap_or(0) / 2) as usize;
            let _ = server.write_all(closing(&head).as_bytes());
            let mut body = early_body;
            let mut buffer = [0u8; 8192];
            while body.len() < half {
                match client.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = server.write_all(&body[..half.min(body.len())]);
            let _ = server.flush();
            // Give the server a moment to take in the partial body before the reset.
            thread::sleep(Duration::from_millis(100));
            reset(&server);
            reset(&client);
        }
        other => {
            if let Some(HttpFault::Delay(delay)) = other {
                thread::sleep(delay);
                // A request held this long has not reached the server: if the client gave up
                // meanwhile, it never will (a late write landing after the client's deadline is
                // a different fault, not a slow server).
                if gone(&client) {
                    return;
                }
            }
            let damage = other == Some(HttpFault::DamageBody);
            pass_on(
                client, upstream, &head, early_body, length, damage, state, at, counter,
            );
        }
    }
}

/// Passes one request on and relays the server's answer. A body of known length is read whole
/// first (its checksum recorded, its last byte flipped when `damage`); any other is streamed.
#[allow(clippy::too_many_arguments)]
fn pass_on(
    mut client: TcpStream,
    upstream: SocketAddr,
    head: &str,
    early_body: Vec<u8>,
    length: Option<u64>,
    damage: bool,
    state: &Mutex<State>,
    at: usize,
    counter: &AtomicU64,
) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        reset(&client);
        return;
    };
    if server.write_all(closing(head).as_bytes()).is_err() {
        reset(&client);
        return;
    }
    let up = match length {
        Some(length) => {
            let Some(mut body) = read_body(&mut client, early_body, length) else {
                reset(&server);
                reset(&client);
                return;
            };
            record_checksum(state, at, head, &body);
            if damage && let Some(last) = body.last_mut() {
                *last ^= 0x01;
            }
            if server.write_all(&body).is_err() {
                reset(&client);
                return;
            }
            None
        }
        None => {
            if server.write_all(&early_body).is_err() {
                reset(&client);
                return;
            }
            let (Ok(client_read), Ok(server_write)) = (client.try_clone(), server.try_clone())
            else {
                return;
            };
            Some(thread::spawn(move || copy(client_read, server_write)))
        }
    };
    if let (Ok(server_read), Ok(client_write)) = (server.try_clone(), client.try_clone()) {
        copy_counting(server_read, client_write, None, counter);
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    if let Some(up) = up {
        let _ = up.join();
    }
}
