//! A small fault-injecting TCP proxy for tests, put between keyhole and a real server (the Samba
//! DC, s3s-fs) on 127.0.0.1. toxiproxy is not installable here (DEPENDENCIES.md), and a proxy of
//! our own is the most controllable: each fault happens at an exact point of the conversation.
//!
//! Two kinds, one listener each, chosen at [`FaultProxy::start`]:
//! - [`Mode::Tcp`]: relays bytes both ways; [`TcpFault::CutAfterServerBytes`] resets both sides
//!   (RST, not FIN) once the server has sent that many bytes, e.g. in the middle of an LDAP paged
//!   search (the proxy sees only TLS records, so it counts bytes, not messages).
//! - [`Mode::Http`]: one HTTP/1.1 request per connection (the request goes upstream with
//!   `Connection: close`, so the server closes after its answer and the client opens a new
//!   connection for the next request). [`HttpRule`]s match a request by method and path and,
//!   for their first `times` matches, answer a 503 SlowDown themselves, reset the connection in
//!   the middle of the request body, or hold the request for a while before passing it on.
//!
//! Everything runs on plain threads; the proxy stops accepting when dropped (connections in
//! flight finish on their own). It only ever connects to the upstream address it was given.

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
    /// Answer `503 SlowDown` (S3's throttling answer) without asking the server.
    SlowDown,
    /// Send the request head and half of the body upstream, then reset both connections.
    ResetMidBody,
    /// Wait this long, then pass the request on.
    Delay(Duration),
}

/// A fault for the first `times` requests whose method and path match.
#[derive(Debug, Clone)]
pub struct HttpRule {
    /// e.g. "PUT"; `None` matches any method.
    pub method: Option<&'static str>,
    /// A part of the request target (path and query); `None` matches any.
    pub path_contains: Option<String>,
    /// Targets containing any of these do not match (e.g. the commit point, `index.json`).
    pub path_excludes: Vec<&'static str>,
    pub times: usize,
    pub fault: HttpFault,
}

#[derive(Debug, Clone)]
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
}

pub struct FaultProxy {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Bytes sent by the server, summed over every connection.
    server_bytes: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Seen>>>,
    rules: Arc<Mutex<Vec<HttpRule>>>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and relays to `upstream` (which must be loopback).
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
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tcp_fault, rules) = match mode {
            Mode::Tcp(fault) => (Some(fault), Vec::new()),
            Mode::Http(rules) => (None, rules),
        };
        let rules = Arc::new(Mutex::new(rules));
        let proxy = FaultProxy {
            address,
            stop: Arc::clone(&stop),
            server_bytes: Arc::clone(&server_bytes),
            seen: Arc::clone(&seen),
            rules: Arc::clone(&rules),
        };
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let server_bytes = Arc::clone(&server_bytes);
                        let seen = Arc::clone(&seen);
                        let rules = Arc::clone(&rules);
                        thread::spawn(move || match tcp_fault {
                            Some(fault) => relay_tcp(client, upstream, fault, &server_bytes),
                            None => relay_http(client, upstream, &rules, &seen, &server_bytes),
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

    /// The HTTP requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("the seen list").clone()
    }

    /// Replaces the HTTP rules (e.g. to let every request through for the next run).
    pub fn set_rules(&self, rules: Vec<HttpRule>) {
        *self.rules.lock().expect("the rules") = rules;
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

fn relay_http(
    mut client: TcpStream,
    upstream: SocketAddr,
    rules: &Mutex<Vec<HttpRule>>,
    seen: &Mutex<Vec<Seen>>,
    counter: &AtomicU64,
) {
    let Some((head, early_body)) = read_head(&mut client) else {
        return;
    };
    let mut request_line = head.lines().next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let target = request_line.next().unwrap_or("").to_owned();
    let fault = {
        let mut rules = rules.lock().expect("the rules");
        rules
            .iter_mut()
            .find(|rule| {
                rule.times > 0
                    && rule.method.is_none_or(|m| m == method)
                    && rule
                        .path_contains
                        .as_deref()
                        .is_none_or(|part| target.contains(part))
                    && !rule.path_excludes.iter().any(|part| target.contains(part))
            })
            .map(|rule| {
                rule.times -= 1;
                rule.fault
            })
    };
    seen.lock().expect("the seen list").push(Seen {
        method: method.clone(),
        target: target.clone(),
        fault,
    });
    let length: u64 = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    match fault {
        Some(HttpFault::SlowDown) => {
            // Read the body the client sends, so it sees an answer rather than a reset.
            let mut rest = length.saturating_sub(early_body.len() as u64);
            let mut buffer = [0u8; 8192];
            while rest > 0 {
                let want = buffer.len().min(rest as usize);
                match client.read(&mut buffer[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => rest -= n as u64,
                }
            }
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>";
            let answer = format!(
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(answer.as_bytes());
            let _ = client.shutdown(Shutdown::Both);
        }
        Some(HttpFault::ResetMidBody) => {
            let Ok(mut server) = TcpStream::connect(upstream) else {
                reset(&client);
                return;
            };
            let half = (length / 2) as usize;
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
            let Ok(mut server) = TcpStream::connect(upstream) else {
                reset(&client);
                return;
            };
            if server.write_all(closing(&head).as_bytes()).is_err()
                || server.write_all(&early_body).is_err()
            {
                reset(&client);
                return;
            }
            let (Ok(client_read), Ok(server_write)) = (client.try_clone(), server.try_clone())
            else {
                return;
            };
            let up = thread::spawn(move || copy(client_read, server_write));
            if let (Ok(server_read), Ok(client_write)) = (server.try_clone(), client.try_clone()) {
                copy_counting(server_read, client_write, None, counter);
            }
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            let _ = up.join();
        }
    }
}
