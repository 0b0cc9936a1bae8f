//! A real DNS server (dnsmasq) on a free loopback port, answering only what a test gives it: SRV
//! records for `_ldap._tcp.<domain>` and A records for host names. With `[ldap] dns_server`
//! pointing at it, keyhole finds and reaches DCs by name without /etc/hosts being edited.
//! Killed on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dns {
    child: Child,
    pub address: SocketAddr,
}

impl Dns {
    /// `srv`: (priority, weight, target host) under `_ldap._tcp.<domain>`; `hosts`: (name,
    /// address) A records.
    pub fn start(domain: &str, srv: &[(u16, u16, &str)], hosts: &[(&str, Ipv4Addr)]) -> Dns {
        // A port freed for dnsmasq may be taken (over UDP or TCP, which dnsmasq binds too) before
        // dnsmasq binds it: dnsmasq then exits, and is started again on another port.
        let mut failures = Vec::new();
        for _attempt in 0..5 {
            match Dns::start_on(free_udp_port(), domain, srv, hosts) {
                Ok(dns) => return dns,
                Err(why) => failures.push(why),
            }
        }
        panic!("dnsmasq did not answer on 5 ports: {failures:#?}");
    }

    fn start_on(
        port: u16,
        domain: &str,
        srv: &[(u16, u16, &str)],
        hosts: &[(&str, Ipv4Addr)],
    ) -> Result<Dns, String> {
        let mut command = Command::new("dnsmasq");
        command.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--user=root",
            &format!("--port={port}"),
        ]);
        for (priority, weight, target) in srv {
            command.arg(format!(
                "--srv-host=_ldap._tcp.{domain},{target},389,{priority},{weight}"
            ));
        }
        for (name, address) in hosts {
            command.arg(format!("--host-record={name},{address}"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dnsmasq (scripts/test installs dnsmasq-base)");
        let mut dns = Dns {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        // Ready when it answers a query (any answer will do): "a." type A.
        let deadline = Instant::now() + Duration::from_secs(10);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let query = [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
        ];
        loop {
            let _ = socket.send_to(&query, dns.address);
            let mut answer = [0u8; 512];
            if socket.recv_from(&mut answer).is_ok() {
                return Ok(dns);
            }
            if let Ok(Some(status)) = dns.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = dns.child.stderr.take() {
                    use std::io::Read as _;
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Err(format!("port {port}: dnsmasq {status}: {}", stderr.trim()));
            }
            if Instant::now() >= deadline {
                return Err(format!("port {port}: no answer within 10 s"));
            }
        }
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
