//! A TCP forwarder with a kill switch, placed between a client under test and a server to
//! simulate network failures: [`TcpProxy::cut`] drops every connection through it at once and
//! keeps new ones from getting through until [`TcpProxy::restore`]; [`TcpProxy::hold`] keeps
//! the connections open but delivers nothing either way until [`TcpProxy::release`], as a
//! network path stuck in retransmission (or a paused peer) would.
//!
//! The proxy runs on its own thread with its own single-threaded tokio runtime, so it works
//! the same under `#[tokio::test]` (any flavor) and plain `#[test]`, and keeps forwarding
//! while the test's runtime is blocked.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Requests from the [`TcpProxy`] handle to its thread. `Cut` and `Restore` carry a channel
/// that is signalled once the change is in effect, so that they are synchronous for tests.
enum Command {
    Cut(std_mpsc::Sender<()>),
    Restore(std_mpsc::Sender<()>),
    Shutdown,
}

/// A forwarding TCP proxy from a free loopback port to `target`. Stopped when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    commands: mpsc::UnboundedSender<Command>,
    forwarded: Arc<AtomicU64>,
    held: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts forwarding connections to `target`. The listening socket is bound before this
    /// returns, so clients may connect right away.
    pub fn start(target: SocketAddr) -> TcpProxy {
        // Bound here rather than on the proxy thread so that the address is known (and
        // connections queue up in the backlog) before `start` returns.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the proxy's listener");
        let addr = listener.local_addr().expect("reading the proxy listener's address");
        listener.set_nonblocking(true).expect("making the proxy listener non-blocking");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building the proxy's tokio runtime");
        let (commands, receiver) = mpsc::unbounded_channel();
        let forwarded = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&forwarded);
        let (held, held_rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(format!("tcp-proxy-{}", addr.port()))
            .spawn(move || runtime.block_on(serve(listener, target, receiver, counter, held_rx)))
            .expect("starting the proxy thread");
        TcpProxy { addr, target, commands, forwarded, held, thread: Some(thread) }
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The forwarding target.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `127.0.0.1:PORT` of the proxy, usable as a ZooKeeper connect string.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// Number of client connections accepted and forwarded so far (connections turned away
    /// while cut are not counted). Lets a test check that a client really reconnected.
    pub fn connections_forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Closes every connection through the proxy and, until [`TcpProxy::restore`], closes new
    /// connections right after accepting them. When this returns, all sockets of existing
    /// connections are closed.
    pub fn cut(&self) {
        self.request(Command::Cut, "cut");
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.request(Command::Restore, "restore");
    }

    /// Keeps every connection open but forwards nothing, either way, until [`TcpProxy::release`]:
    /// what is sent meanwhile waits in the proxy and arrives, in order, on release.
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Delivers what [`TcpProxy::hold`] kept back, and forwards as usual again.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    fn request(&self, command: fn(std_mpsc::Sender<()>) -> Command, what: &str) {
        let (done, wait) = std_mpsc::channel();
        self.commands
            .send(command(done))
            .unwrap_or_else(|_| panic!("proxy {} thread is gone; cannot {what}", self.addr));
        wait.recv().unwrap_or_else(|_| panic!("proxy {} thread exited during {what}", self.addr));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // If the thread already ended (it panicked), sending fails and joining reports it;
        // there is nothing left to stop either way.
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The proxy's event loop: accepts, forwards and obeys commands until shut down.
async fn serve(
    listener: std::net::TcpListener,
    target: SocketAddr,
    mut commands: mpsc::UnboundedReceiver<Command>,
    forwarded: Arc<AtomicU64>,
    held: tokio::sync::watch::Receiver<bool>,
) {
    let listener = TcpListener::from_std(listener).expect("registering the proxy listener with tokio");
    // Every forwarding task lives here, so a cut can abort them all and wait until their
    // sockets are dropped (closed).
    let mut connections = JoinSet::new();
    let mut cut = false;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Cut(done)) => {
                    cut = true;
                    connections.shutdown().await;
                    let _ = done.send(());
                },
                Some(Command::Restore(done)) => {
                    cut = false;
                    let _ = done.send(());
                },
                Some(Command::Shutdown) | None => break,
            },
            accepted = listener.accept() => match accepted {
                // While cut, the connection is closed at once: the client sees its connection
                // attempt fail, as with a broken network path that resets connections.
                Ok((client, _)) if cut => drop(client),
                Ok((client, _)) => {
                    forwarded.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(forward(client, target, held.clone()));
                },
                // Transient accept errors (e.g. too many open files): back off and go on.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {},
        }
    }
    connections.shutdown().await;
}

/// Forwards one connection in both directions. When either direction ends (EOF or error),
/// both sockets are dropped, closing both sides: a proxied connection is never left half open.
async fn forward(mut client: TcpStream, target: SocketAddr, held: tokio::sync::watch::Receiver<bool>) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        // Target down: closing the client connection is what a direct connection would show.
        return;
    };
    // The protocols proxied here (ZooKeeper) are request/response with small messages.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    tokio::select! {
        _ = copy_unless_held(&mut client_read, &mut upstream_write, held.clone()) => {},
        _ = copy_unless_held(&mut upstream_read, &mut client_write, held) => {},
    }
}

/// Copies until EOF or an error; a chunk read while the proxy is held is written on release.
async fn copy_unless_held(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut held: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if held.wait_for(|held| !*held).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
