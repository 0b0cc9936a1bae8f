//! A loopback server that fails like a broken peer: it accepts every connection, sends a fixed
//! greeting if it has one (plain text where TLS is expected: a wrong port, a load balancer's
//! page), and then never says another word while holding the connection open (a hung DC, a
//! black-holed S3). Bound here on a port the kernel picks and kept, so there is no free-port
//! race; it stops accepting when dropped. (A port nothing listens on is
//! [`super::ports::free_port`].)

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Mute {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Mute {
    /// Listens on 127.0.0.1; every connection gets `greeting` (if any), then silence.
    pub fn start(greeting: Option<&'static [u8]>) -> Mute {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a mute server");
        let address = listener.local_addr().expect("the mute server's address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Held, never read nor closed: the client waits for an answer that never comes.
            let mut held: Vec<TcpStream> = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        if let Some(greeting) = greeting {
                            let _ = stream.write_all(greeting);
                        }
                        held.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Mute { address, stop }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Mute {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
