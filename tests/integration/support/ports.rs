//! Starting a server on a port of 127.0.0.1 without the free-port race, for servers that cannot
//! inherit a bound socket (s3s-fs, sshd): the kernel picks a free port, it is released, and the
//! server binds it. Another process may take it in between; the server then exits ("Address
//! already in use") and the caller starts it again on another port. And before a test talks to
//! it, [`listening_pid_owns`] checks that the process answering on the port is the one the test
//! started (not another test's server that took the port first), by the socket's inode: the
//! LISTEN entry for the port in /proc/net/tcp, and the same inode among the process's open files.

use std::net::{SocketAddr, TcpListener};
use std::process::Child;
use std::time::{Duration, Instant};

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("finding a free port on 127.0.0.1")
}

/// The `IP:port` of a loopback URL such as `http://127.0.0.1:9000` or `ldaps://127.0.0.2:636/`,
/// e.g. to put a fault proxy in front of that server.
pub fn address_of(url: &str) -> SocketAddr {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    rest.parse().expect("a loopback IP:port")
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (or 0.0.0.0:`port`).
pub fn listening_pid_owns(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st is field 3 (0A = LISTEN), inode is field 9.
            let listening = fields.get(3) == Some(&"0A");
            let ours = fields
                .get(1)
                .is_some_and(|local| wanted.iter().any(|w| w == local));
            (listening && ours).then(|| fields.get(9).map(|inode| inode.to_string()))?
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            inodes
                .iter()
                .any(|inode| target == format!("socket:[{inode}]"))
        })
    })
}

/// How a start attempt ended.
pub enum Started {
    /// `child` listens on the port.
    Listening,
    /// `child` exited before listening (the port was taken, most likely): try another port.
    Exited(String),
}

/// Waits up to `timeout` until `child` listens on 127.0.0.1:`port`, or exits.
pub fn wait_listening(child: &mut Child, port: u16, timeout: Duration) -> Started {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Started::Exited(format!("exited with {status} before listening on {port}"));
        }
        if listening_pid_owns(child.id(), port) {
            return Started::Listening;
        }
        assert!(
            Instant::now() < deadline,
            "pid {} did not listen on 127.0.0.1:{port} within {timeout:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
