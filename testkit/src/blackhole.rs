//! A server that is "dead but accepting": it accepts TCP connections and reads whatever is
//! sent, but never answers and never closes. A client sees its connect succeed and then every
//! request hang until its own timeout, which is what a wedged Redis (a stopped process whose
//! socket is still open, a VM paused mid-request, a half-dead load balancer) looks like.
//!
//! Unlike stopping a server (connections refused at once), this makes every request cost the
//! client its full timeout: the case that finds code awaiting a server inline.
//!
//! Plain threads, no runtime: it keeps accepting while the test's runtime is busy or blocked.

use std::io::Read;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Counters a test reads to prove that a client is talking to the blackhole (and so is stuck
/// in a request), not merely configured to.
#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    bytes: AtomicU64,
}

/// A listener on a free loopback port that never answers. Stopped (every connection closed)
/// when dropped.
pub struct Blackhole {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stopping: Arc<AtomicBool>,
    /// The accepted connections, kept so that dropping the blackhole can close them (the
    /// reading threads block in `read`; a shutdown of the socket wakes them).
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Blackhole {
    /// Starts listening; the socket is bound before this returns.
    pub fn start() -> Blackhole {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the blackhole's listener");
        let addr = listener.local_addr().expect("reading the blackhole's address");
        // Non-blocking accept, polled: the thread must notice `stopping` without a connection.
        listener.set_nonblocking(true).expect("making the blackhole's listener non-blocking");
        let seen = Arc::new(Seen::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (seen, stopping, open) = (seen.clone(), stopping.clone(), open.clone());
            std::thread::Builder::new()
                .name(format!("blackhole-{}", addr.port()))
                .spawn(move || accept(listener, &seen, &stopping, &open))
                .expect("starting the blackhole's thread")
        };
        Blackhole { addr, seen, stopping, open, acceptor: Some(acceptor) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT/`: a Redis URL whose every request hangs.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// Bytes received so far (requests that will never be answered).
    pub fn bytes_received(&self) -> u64 {
        self.seen.bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // After the acceptor ended, no connection is added any more: closing these wakes
        // every reading thread (its `read` returns 0 or an error), and they end.
        for stream in self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept(listener: TcpListener, seen: &Arc<Seen>, stopping: &AtomicBool, open: &Mutex<Vec<TcpStream>>) {
    while !stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                seen.connections.fetch_add(1, Ordering::SeqCst);
                // Accepted sockets may inherit non-blocking mode; the reader wants to block.
                let _ = stream.set_nonblocking(false);
                let Ok(kept) = stream.try_clone() else { continue };
                open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(kept);
                let seen = seen.clone();
                let _ =
                    std::thread::Builder::new().name("blackhole-conn".to_owned()).spawn(move || swallow(stream, &seen));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Reads and discards until the peer closes (or the blackhole is dropped); never writes.
fn swallow(mut stream: TcpStream, seen: &Seen) {
    let mut buffer = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            return;
        }
        seen.bytes.fetch_add(n as u64, Ordering::SeqCst);
    }
}
