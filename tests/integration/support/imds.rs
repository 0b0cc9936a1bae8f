//! A stand-in for the EC2 instance metadata service (no real one can be installed), on
//! 127.0.0.1 at a free port, faithful to IMDSv2 as far as keyhole's reads go:
//!
//! - `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` (1..=21600, else 400)
//!   and answers the token with the same header (aws-config refuses a token without it); a PUT
//!   carrying `X-Forwarded-For` is refused with 403, as IMDS does.
//! - Every `GET` needs `X-aws-ec2-metadata-token` with a token it issued, else 401.
//! - `/latest/meta-data/tags/instance` lists tag keys one a line and
//!   `/latest/meta-data/tags/instance/<key>` gives a value, both 404 while tags are not in the
//!   metadata (`InstanceMetadataTags=disabled`) or for a missing key; `/latest/user-data` is
//!   404 without user data; anything else is 404.
//! - Failure knobs: every request answered 500, every answer delayed, and [`Imds::stop`] (the
//!   port closed: connections refused).
//!
//! Every request is counted by path, so a test can prove who asked (the login path must not).
//! HTTP/1.1 with keep-alive, one thread per connection; stopped on `Drop`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// What the stand-in serves and how it misbehaves; changed by tests while it runs.
#[derive(Debug, Default)]
pub struct Metadata {
    /// Tag key → value.
    pub tags: BTreeMap<String, String>,
    /// `InstanceMetadataTags=enabled`.
    pub tags_enabled: bool,
    pub user_data: Option<String>,
    /// Answer every request with 500.
    pub fail_500: bool,
    /// Wait this long before every answer.
    pub delay: Option<Duration>,
}

#[derive(Default)]
struct Shared {
    metadata: Mutex<Metadata>,
    tokens: Mutex<Vec<String>>,
    /// (method, path) → count.
    requests: Mutex<BTreeMap<(String, String), u64>>,
    next_token: AtomicU64,
    stopped: AtomicBool,
}

pub struct Imds {
    address: SocketAddr,
    shared: Arc<Shared>,
}

impl Imds {
    /// Starts the stand-in with tags in the metadata and no tags, no user data.
    pub fn start() -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the IMDS stand-in");
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        shared.metadata.lock().unwrap().tags_enabled = true;
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    // Dropping the listener closes the port: later connections are refused.
                    return;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Imds { address, shared }
    }

    /// `http://127.0.0.1:PORT`, for `imds_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Changes what is served.
    pub fn set(&self, change: impl FnOnce(&mut Metadata)) {
        change(&mut self.shared.metadata.lock().unwrap());
    }

    /// Sets tag `key` to `value`.
    pub fn tag(&self, key: &str, value: &str) {
        self.set(|m| {
            m.tags.insert(key.to_owned(), value.to_owned());
        });
    }

    /// Requests so far for `path` (any method).
    pub fn requests_for(&self, path: &str) -> u64 {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, p), _)| p == path)
            .map(|(_, n)| n)
            .sum()
    }

    /// All requests so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.lock().unwrap().values().sum()
    }

    /// Closes the port for good: connections are refused from now on.
    pub fn stop(&self) {
        if !self.shared.stopped.swap(true, Ordering::SeqCst) {
            // Wake the accept loop so that it sees `stopped` and drops the listener.
            let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        }
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
    })
}

fn serve(stream: TcpStream, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader) {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        *shared
            .requests
            .lock()
            .unwrap()
            .entry((request.method.clone(), request.path.clone()))
            .or_default() += 1;
        let delay = shared.metadata.lock().unwrap().delay;
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let (status, headers, body) = answer(&request, shared);
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Internal Server Error",
        };
        let mut response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: EC2ws\r\n",
            body.len()
        );
        for (name, value) in headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&body);
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
        let close = request
            .headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        if close {
            return;
        }
    }
}

fn answer(request: &Request, shared: &Shared) -> (u16, Vec<(&'static str, String)>, String) {
    let metadata = shared.metadata.lock().unwrap();
    if metadata.fail_500 {
        return (500, vec![], String::new());
    }
    if request.path == "/latest/api/token" {
        if request.method != "PUT" {
            return (405, vec![], String::new());
        }
        if request.headers.contains_key("x-forwarded-for") {
            return (403, vec![], String::new());
        }
        let ttl = request
            .headers
            .get(TOKEN_TTL_HEADER)
            .and_then(|t| t.parse::<u32>().ok());
        let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
            return (400, vec![], String::new());
        };
        let token = format!(
            "AQAEA-standin-token-{}",
            shared.next_token.fetch_add(1, Ordering::SeqCst)
        );
        shared.tokens.lock().unwrap().push(token.clone());
        return (200, vec![(TOKEN_TTL_HEADER, ttl.to_string())], token);
    }
    let token_valid = request
        .headers
        .get(TOKEN_HEADER)
        .is_some_and(|token| shared.tokens.lock().unwrap().contains(token));
    if !token_valid {
        return (401, vec![], String::new());
    }
    if request.method != "GET" {
        return (405, vec![], String::new());
    }
    const TAGS: &str = "/latest/meta-data/tags/instance";
    let found = if request.path == TAGS {
        metadata
            .tags_enabled
            .then(|| metadata.tags.keys().cloned().collect::<Vec<_>>().join("\n"))
    } else if let Some(key) = request.path.strip_prefix(&format!("{TAGS}/")) {
        metadata
            .tags_enabled
            .then(|| metadata.tags.get(key).cloned())
            .flatten()
    } else if request.path == "/latest/user-data" {
        metadata.user_data.clone()
    } else {
        None
    };
    match found {
        Some(body) => (200, vec![], body),
        None => (404, vec![], String::new()),
    }
}
