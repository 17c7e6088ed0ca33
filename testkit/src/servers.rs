//! Real ZooKeeper and Redis server processes for integration tests, plus the process plumbing
//! that guarantees none of them outlives the test binary.
//!
//! Lifetime rules, and why:
//! * A server owned by a test ([`ZkServer::start`], [`RedisServer::start`]) is killed by pid in
//!   its `Drop`, also when the test panics.
//! * [`ZkServer::shared`] lives in a `static`, which Rust never drops. Its pid (like every live
//!   server pid) is recorded in `LIVE_PIDS` and an `atexit` handler kills what is left when
//!   the binary exits (libtest ends through `process::exit` or a return from `main`; both run
//!   `atexit` handlers).
//! * If the binary dies without running `atexit` (SIGKILL, abort, Ctrl-C), the kernel kills the
//!   servers: they are spawned with `PR_SET_PDEATHSIG(SIGKILL)`. PDEATHSIG fires when the
//!   *thread* that forked the child exits, not the process, so every server is forked by one
//!   dedicated spawner thread that lives until the process ends. Forking from test threads
//!   would kill the shared server as soon as the test that happened to start it finished (and
//!   a test-owned server moved to a task on a runtime worker when that worker shut down).

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a ZooKeeper JVM may take to answer `ruok`. A cold JVM on a busy machine running
/// many test binaries in parallel can be slow; normally it takes well under a second.
const ZK_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long redis-server may take to answer `PING`; it normally takes a few milliseconds.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between readiness probes.
const READY_POLL: Duration = Duration::from_millis(50);
/// Launch attempts on fresh ports before giving up. A port picked by [`free_port`] can still be
/// taken by someone else before the server binds it (another binary, an outgoing connection's
/// ephemeral port), so a bind failure is retried on another port.
const LAUNCH_ATTEMPTS: usize = 3;
/// Number of log lines shown when a server fails or a test panics.
const LOG_TAIL_LINES: usize = 40;

/// The ZooKeeper classpath. `zookeeper.jar`'s manifest `Class-Path` already names the Debian
/// jars it needs at runtime (zookeeper-jute, netty-*, metrics-core, snappy-java, commons-*,
/// jackson-*, jetty9-*); what it lacks is an slf4j binding, so slf4j-simple is added and logs
/// go to stderr, which is redirected to a log file in the server's temp dir. The manifest names
/// netty's buffer, common, handler and transport jars but not those they need in turn for the
/// TLS port (`NettyServerCnxnFactory`'s `SslHandler` is a codec; the transport resolves
/// addresses): netty-codec, netty-resolver and netty-transport-native-unix-common are added.
const ZK_CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:\
                            /usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-simple.jar:\
                            /usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar:\
                            /usr/share/java/netty-transport-native-unix-common.jar";
const ZK_MAIN_CLASS: &str = "org.apache.zookeeper.server.ZooKeeperServerMain";
const REDIS_SERVER: &str = "/usr/bin/redis-server";

// ---------------------------------------------------------------------------------------------
// Process plumbing
// ---------------------------------------------------------------------------------------------

/// Capacity of [`LIVE_PIDS`]; far more servers than any test binary runs at once.
const MAX_LIVE_SERVERS: usize = 256;

/// Pids of servers that are (or may be) still running; 0 marks a free slot. Lock-free on
/// purpose: the `atexit` handler must not block on a mutex some other thread held while the
/// process was exiting.
static LIVE_PIDS: [AtomicI32; MAX_LIVE_SERVERS] = [const { AtomicI32::new(0) }; MAX_LIVE_SERVERS];

/// Data directory of the shared ZooKeeper server, removed by the `atexit` handler because the
/// `TempDir` owning it lives in a `static` and is never dropped.
static SHARED_ZK_DIR: OnceLock<PathBuf> = OnceLock::new();

fn register_pid(pid: i32) {
    let registered =
        LIVE_PIDS.iter().any(|slot| slot.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst).is_ok());
    assert!(registered, "more than {MAX_LIVE_SERVERS} live test servers; raise MAX_LIVE_SERVERS");
}

pub(crate) fn unregister_pid(pid: i32) {
    for slot in &LIVE_PIDS {
        if slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return;
        }
    }
}

/// `atexit` handler: kills and reaps every server still registered, then removes the shared
/// ZooKeeper's directory. Must not panic (it runs inside libc's `exit`).
extern "C" fn kill_live_servers_at_exit() {
    for slot in &LIVE_PIDS {
        let pid = slot.swap(0, Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: plain syscalls on a pid this process spawned and has not reaped yet (a
            // pid is unregistered before it is reaped), so it cannot belong to anyone else.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
    if let Some(dir) = SHARED_ZK_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Returns the channel to the spawner thread, starting it (and registering the `atexit`
/// handler) on first use. The thread never exits: the sender lives in a `static`.
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        // SAFETY: registers a plain `extern "C" fn` that takes no arguments.
        let rc = unsafe { libc::atexit(kill_live_servers_at_exit) };
        assert_eq!(rc, 0, "registering the atexit handler that kills test servers");
        let (sender, receiver) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-server-spawner".into())
            .spawn(move || {
                for SpawnRequest { mut command, reply } in receiver {
                    let result = command.spawn();
                    if let Ok(child) = &result {
                        register_pid(child.id() as i32);
                    }
                    // The requester blocks on the reply; if it vanished anyway, the child stays
                    // registered and the atexit handler kills it.
                    let _ = reply.send(result);
                }
            })
            .expect("starting the test-server spawner thread");
        sender
    })
}

/// Makes the kernel SIGKILL the process `command` starts when the thread that spawns it dies
/// (`PR_SET_PDEATHSIG`), the backstop for a test binary that dies abruptly.
pub fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then nobody would kill us.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Spawns `command` from the spawner thread with `PR_SET_PDEATHSIG(SIGKILL)` and registers its
/// pid for the `atexit` handler. See the module docs for why.
pub(crate) fn spawn_guarded(mut command: Command) -> io::Result<Child> {
    die_with_parent(&mut command);
    let (reply, result) = mpsc::channel();
    spawner().send(SpawnRequest { command, reply }).expect("test-server spawner thread is gone");
    result.recv().expect("test-server spawner thread dropped the request")
}

/// A running server process; killed (SIGKILL) and reaped when dropped.
pub(crate) struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the exit status if the process has already exited (and reaps it).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                unregister_pid(self.pid() as i32);
                Some(status)
            }
            _ => None,
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let pid = self.pid() as i32;
        // `Child::kill` does not signal a child already reaped, so there is no pid-reuse risk.
        let _ = self.child.kill();
        // Unregister before reaping: until `wait` the pid is a zombie and cannot be reused, so
        // the atexit handler never signals a stranger.
        unregister_pid(pid);
        let _ = self.child.wait();
    }
}

/// Why a launch failed.
enum LaunchError {
    /// The server exited complaining that its port is in use; worth retrying on another port.
    PortInUse(String),
    /// Anything else; the message includes the log tail.
    Failed(String),
}

impl LaunchError {
    fn message(&self) -> &str {
        match self {
            LaunchError::PortInUse(message) | LaunchError::Failed(message) => message,
        }
    }
}

/// Calls `attempt` until a launch succeeds, at most [`LAUNCH_ATTEMPTS`] times. Only a port
/// taken by someone else is retried (after `pause`); any other failure panics at once. Each
/// attempt chooses its own port: a fresh one for a first start, the same for a restart.
fn launch_with_retries(
    what: &str,
    pause: Duration,
    mut attempt: impl FnMut() -> Result<ServerProcess, LaunchError>,
) -> ServerProcess {
    let mut last_error = String::new();
    for _ in 0..LAUNCH_ATTEMPTS {
        match attempt() {
            Ok(process) => return process,
            Err(LaunchError::PortInUse(message)) => {
                last_error = message;
                std::thread::sleep(pause);
            }
            Err(LaunchError::Failed(message)) => panic!("{what}: {message}"),
        }
    }
    panic!("{what}: port still in use after {LAUNCH_ATTEMPTS} attempts; last: {last_error}")
}

/// Spawns `command` with stdout/stderr appended to `log`, then polls `probe` until it reports
/// ready. If the process exits or `timeout` passes first, the process is killed and the error
/// carries what the probe last saw and the log tail.
fn launch(
    name: &str,
    mut command: Command,
    log: &Path,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<(), String>,
) -> Result<ServerProcess, LaunchError> {
    let log_offset = fs::metadata(log).map(|meta| meta.len()).unwrap_or(0);
    let stdout = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|err| LaunchError::Failed(format!("opening {}: {err}", log.display())))?;
    let stderr = stdout
        .try_clone()
        .map_err(|err| LaunchError::Failed(format!("duplicating the handle of {}: {err}", log.display())))?;
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let child = spawn_guarded(command).map_err(|err| LaunchError::Failed(format!("spawning {name}: {err}")))?;
    let mut process = ServerProcess { child };

    let started = Instant::now();
    loop {
        if let Some(status) = process.exited() {
            let output = read_from(log, log_offset);
            let message = format!(
                "{name} exited with {status} before becoming ready; log tail:\n{}",
                tail(&output, LOG_TAIL_LINES)
            );
            return Err(if output.contains("Address already in use") {
                LaunchError::PortInUse(message)
            } else {
                LaunchError::Failed(message)
            });
        }
        let last_probe = match probe() {
            Ok(()) => {
                eprintln!("[harness] {name} (pid {}) ready after {:?}", process.pid(), started.elapsed());
                return Ok(process);
            }
            Err(observed) => observed,
        };
        if started.elapsed() > timeout {
            drop(process);
            return Err(LaunchError::Failed(format!(
                "{name} not ready after {timeout:?}; last probe: {last_probe}; log tail:\n{}",
                tail(&read_from(log, log_offset), LOG_TAIL_LINES)
            )));
        }
        std::thread::sleep(READY_POLL);
    }
}

/// Reads `path` from byte `offset` on; errors become a note in the text (diagnostics only).
fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    let result = fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut bytes)
    });
    match result {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => format!("(could not read {}: {err})", path.display()),
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Returns a loopback port that was free a moment ago and that this binary has not handed out
/// before. Remembering handed-out ports matters: a stopped server keeps its port for
/// `restart`, and meanwhile nothing else in this binary may be given that port.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("binding 127.0.0.1:0 to find a free port")
            .port();
        if HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner).insert(port) {
            return port;
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Opens a short-lived TCP connection, writes `request`, and returns what the server sends
/// until it closes the connection or goes quiet for a second.
fn exchange(addr: SocketAddr, request: &[u8], read_until: impl Fn(&[u8]) -> bool) -> io::Result<String> {
    converse(&mut short_lived(addr)?, request, read_until)
}

/// A TCP connection to `addr` whose connect, reads and writes each give up after a second.
pub(crate) fn short_lived(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(stream)
}

/// Writes `request` on `stream` (plain or TLS) and returns what comes back until the server
/// closes, goes quiet (the stream's read timeout), or `read_until` says the answer is whole.
pub(crate) fn converse(
    stream: &mut impl ReadWrite,
    request: &[u8],
    read_until: impl Fn(&[u8]) -> bool,
) -> io::Result<String> {
    stream.write_all(request)?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if read_until(&response) {
                    break;
                }
            }
            Err(err) if response.is_empty() => return Err(err),
            Err(_) => break,
        }
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// What [`converse`] talks over.
pub(crate) trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|err| panic!("creating a temp dir for a test server: {err}"))
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper
// ---------------------------------------------------------------------------------------------

/// A standalone ZooKeeper server (the Debian 3.8 package) in its own temp dir, on its own
/// loopback port.
///
/// `tickTime=200` makes the server accept session timeouts from 400 ms to 4 s, so tests about
/// session expiry run quickly.
pub struct ZkServer {
    port: u16,
    config: PathBuf,
    log: PathBuf,
    /// `None` while stopped. Declared before `dir`: the process must die before its directory
    /// is removed.
    process: Option<ServerProcess>,
    dir: TempDir,
    jvm_options: &'static [&'static str],
    /// `Some`: a TLS client port beside the plain one.
    tls: Option<ZkTls>,
}

/// A ZooKeeper server's TLS client port (`secureClientPort`, served by Netty).
#[derive(Clone, Debug)]
struct ZkTls {
    port: u16,
    /// Holds the server's key and certificate (PEM), as ZooKeeper's PEM key store reads them.
    keystore: PathBuf,
    /// The CA (PEM) client certificates must be signed by.
    truststore: PathBuf,
    client_auth: ClientAuth,
}

/// Whether a TLS ZooKeeper asks clients for a certificate (`ssl.clientAuth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client without a certificate is refused.
    Need,
    /// A client certificate is asked for and checked when given; x509 ids come from it.
    Want,
    /// No client certificate is asked for.
    None,
}

impl ClientAuth {
    fn setting(self) -> &'static str {
        match self {
            ClientAuth::Need => "need",
            ClientAuth::Want => "want",
            ClientAuth::None => "none",
        }
    }
}

/// Small and quick to start: tests run several JVMs in parallel.
const TEST_JVM: &[&str] = &["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData"];
/// Full JIT and a larger heap: what a benchmark's reference must be measured against.
const BENCH_JVM: &[&str] = &["-Xmx2g", "-Xms1g", "-XX:-UsePerfData"];

impl ZkServer {
    /// A server tuned for throughput rather than start-up time, for benchmarks.
    pub fn start_for_benchmark() -> ZkServer {
        ZkServer::start_with(BENCH_JVM)
    }

    /// Starts a new server and waits until it serves requests. Panics (with the server log's
    /// tail) if it cannot be started.
    pub fn start() -> ZkServer {
        ZkServer::start_with(TEST_JVM)
    }

    /// A server that also serves TLS on [`ZkServer::tls_port`] (ZooKeeper 3.8's
    /// `secureClientPort` through `NettyServerCnxnFactory`, PEM key and trust stores), with
    /// the `x509` auth scheme on: a client's certificate subject is its id. `server` is its
    /// certificate and key, `ca` the CA client certificates must chain to. The plain port
    /// stays open (readiness probes, plain clients in the same test).
    pub fn start_tls(server: &crate::tls::CertFiles, ca: &Path, client_auth: ClientAuth) -> ZkServer {
        ZkServer::start_inner(TEST_JVM, Some((server, ca, client_auth)))
    }

    /// [`ZkServer::start_tls`] tuned like [`ZkServer::start_for_benchmark`]: plain and TLS
    /// clients measured against one server.
    pub fn start_tls_for_benchmark(server: &crate::tls::CertFiles, ca: &Path, client_auth: ClientAuth) -> ZkServer {
        ZkServer::start_inner(BENCH_JVM, Some((server, ca, client_auth)))
    }

    fn start_with(jvm_options: &'static [&'static str]) -> ZkServer {
        ZkServer::start_inner(jvm_options, None)
    }

    fn start_inner(
        jvm_options: &'static [&'static str],
        tls: Option<(&crate::tls::CertFiles, &Path, ClientAuth)>,
    ) -> ZkServer {
        let dir = temp_dir("zkmirror-test-zk-");
        let data_dir = dir.path().join("data");
        fs::create_dir(&data_dir).unwrap_or_else(|err| panic!("creating {}: {err}", data_dir.display()));
        let mut server = ZkServer {
            port: 0,
            config: dir.path().join("zoo.cfg"),
            log: dir.path().join("zookeeper.log"),
            process: None,
            tls: None,
            jvm_options,
            dir,
        };
        if let Some((cert, ca, client_auth)) = tls {
            let keystore = server.dir.path().join("keystore.pem");
            write_keystore(&keystore, cert);
            let truststore = server.dir.path().join("truststore.pem");
            fs::copy(ca, &truststore).unwrap_or_else(|err| panic!("copying {}: {err}", ca.display()));
            server.tls = Some(ZkTls { port: 0, keystore, truststore, client_auth });
        }
        let process = launch_with_retries("starting ZooKeeper", Duration::ZERO, || {
            server.port = free_port();
            if let Some(tls) = server.tls.as_mut() {
                tls.port = free_port();
            }
            server.write_config(&data_dir);
            server.launch()
        });
        server.process = Some(process);
        server
    }

    /// The server shared by all tests of this test binary, started on first use.
    ///
    /// Tests sharing it must stay below their own [`unique_root`](super::unique_root) and must
    /// not stop it (they cannot: it is only reachable through `&`). It is killed when the test
    /// binary exits.
    pub fn shared() -> &'static ZkServer {
        static SHARED: OnceLock<ZkServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            let server = ZkServer::start();
            // Only this initializer sets it, and it runs once.
            let _ = SHARED_ZK_DIR.set(server.dir.path().to_owned());
            server
        })
    }

    /// `127.0.0.1:PORT`, usable as a ZooKeeper connect string.
    pub fn connect_string(&self) -> String {
        self.addr().to_string()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS client port (see [`ZkServer::start_tls`]). Panics for a plain server.
    pub fn tls_port(&self) -> u16 {
        self.tls.as_ref().map(|t| t.port).expect("a ZooKeeper started with ZkServer::start_tls")
    }

    /// `127.0.0.1:TLS_PORT`: the connect string for TLS clients.
    pub fn tls_connect_string(&self) -> String {
        loopback(self.tls_port()).to_string()
    }

    /// Serves `cert` on the TLS port from the next start on ([`ZkServer::restart`]):
    /// ZooKeeper reads its key store once.
    pub fn set_certificate(&self, cert: &crate::tls::CertFiles) {
        let tls = self.tls.as_ref().expect("a ZooKeeper started with ZkServer::start_tls");
        write_keystore(&tls.keystore, cert);
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// Pid of the server process, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// The server's `dataDir` (snapshots and transaction logs): a test that restores
    /// ZooKeeper from a backup copies it while the server is stopped.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the server (SIGKILL, i.e. a crash; acknowledged writes are already in the
    /// transaction log) and waits for it to exit. No-op if already stopped.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Stops the server if running, then starts it again on the same port with the same data
    /// directory, so all persistent data survives. Sessions survive too if the restart is
    /// shorter than their timeout.
    pub fn restart(&mut self) {
        self.stop();
        // Someone may have taken our port in the meantime, for a short-lived connection.
        let process = launch_with_retries("restarting ZooKeeper", Duration::from_millis(500), || self.launch());
        self.process = Some(process);
    }

    /// Sends a four-letter word (`ruok`, `srvr`, `cons`, `mntr`, ...) and returns the answer.
    pub fn four_letter_word(&self, word: &str) -> io::Result<String> {
        exchange(self.addr(), word.as_bytes(), |_| false)
    }

    /// The last `lines` lines of the server log (all runs of this server).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&read_from(&self.log, 0), lines)
    }

    fn write_config(&self, data_dir: &Path) {
        // forceSync=no: transactions are still written to the log (the OS page cache) before
        // they are acknowledged, so they survive a SIGKILL of the server, but tests do not pay
        // for an fsync per write. maxClientCnxns=0: the default (60 per client IP) is too low
        // when all parallel tests connect from 127.0.0.1 to the shared server.
        let config = format!(
            "# Written by the zkmirror integration-test harness.\n\
             tickTime=200\n\
             initLimit=10\n\
             syncLimit=5\n\
             dataDir={data_dir}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=*\n\
             maxClientCnxns=0\n\
             forceSync=no\n",
            data_dir = data_dir.display(),
            port = self.port,
        );
        // Keys ZooKeeper does not know as settings become `zookeeper.`-prefixed system
        // properties: ssl.* configure the TLS port, authProvider.x509 the x509 scheme.
        let config = match &self.tls {
            None => config,
            Some(tls) => format!(
                "{config}\
                 secureClientPort={port}\n\
                 secureClientPortAddress=127.0.0.1\n\
                 serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
                 ssl.keyStore.location={keystore}\n\
                 ssl.keyStore.type=PEM\n\
                 ssl.trustStore.location={truststore}\n\
                 ssl.trustStore.type=PEM\n\
                 ssl.clientAuth={client_auth}\n\
                 authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider\n",
                port = tls.port,
                keystore = tls.keystore.display(),
                truststore = tls.truststore.display(),
                client_auth = tls.client_auth.setting(),
            ),
        };
        fs::write(&self.config, config).unwrap_or_else(|err| panic!("writing {}: {err}", self.config.display()));
    }

    fn launch(&self) -> Result<ServerProcess, LaunchError> {
        let mut command = Command::new("java");
        command
            .current_dir(self.dir.path())
            // Small and quick to start: tests run several JVMs in parallel.
            .args(self.jvm_options)
            .arg("-Djava.net.preferIPv4Stack=true")
            .arg("-Dorg.slf4j.simpleLogger.showDateTime=true")
            .arg("-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS")
            .args(["-cp", ZK_CLASSPATH, ZK_MAIN_CLASS])
            .arg(&self.config);
        let addr = self.addr();
        let name = format!("ZooKeeper on port {}", self.port);
        launch(&name, command, &self.log, ZK_READY_TIMEOUT, || {
            // `ruok` answers as soon as the port is open; `srvr` only reports a mode once the
            // database is loaded and requests are served.
            let ruok = exchange(addr, b"ruok", |_| false).map_err(|err| format!("ruok: {err}"))?;
            if ruok != "imok" {
                return Err(format!("ruok answered {ruok:?}"));
            }
            let srvr = exchange(addr, b"srvr", |_| false).map_err(|err| format!("srvr: {err}"))?;
            if !srvr.contains("Mode: standalone") {
                return Err(format!("srvr answered {srvr:?}"));
            }
            Ok(())
        })
        .map_err(|err| {
            if !Path::new("/usr/share/java/zookeeper.jar").exists() {
                LaunchError::Failed(format!("/usr/share/java/zookeeper.jar is missing; {}", err.message()))
            } else {
                err
            }
        })
    }
}

/// ZooKeeper's PEM key store: the private key and the certificate in one file.
fn write_keystore(path: &Path, cert: &crate::tls::CertFiles) {
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_else(|err| panic!("reading {}: {err}", p.display()));
    let pem = format!("{}{}", read(&cert.key), read(&cert.cert));
    fs::write(path, pem).unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[harness] test panicked; ZooKeeper on port {} log tail:\n{}",
                self.port,
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// How a redis-server speaks TLS ([`RedisServer::start_tls`]): its port is then TLS only
/// (`port 0`, `tls-port P`), as a managed Redis that requires in-transit encryption.
#[derive(Clone, Debug)]
pub struct RedisTls {
    /// `tls-cert-file` and `tls-key-file`: what the server presents.
    pub server: crate::tls::CertFiles,
    /// `tls-ca-cert-file`: the CA client certificates must be signed by.
    pub client_ca: PathBuf,
    /// `Some(client)`: `tls-auth-clients yes`, a client must present a certificate (the
    /// readiness probe presents this one). `None`: `tls-auth-clients no`.
    pub auth_clients: Option<crate::tls::CertFiles>,
}

impl RedisTls {
    /// The server certificate of `pki`, clients not asked for one.
    pub fn server_only(pki: &crate::tls::Pki) -> RedisTls {
        RedisTls { server: pki.server.clone(), client_ca: pki.ca.clone(), auth_clients: None }
    }

    /// Mutual TLS: the server certificate of `pki`, and clients must present one it signed.
    pub fn mutual(pki: &crate::tls::Pki) -> RedisTls {
        RedisTls { server: pki.server.clone(), client_ca: pki.ca.clone(), auth_clients: Some(pki.client.clone()) }
    }
}

/// A redis-server without persistence in its own temp dir, on its own loopback port. Cheap to
/// start (milliseconds), so every test starts its own.
pub struct RedisServer {
    port: u16,
    /// `(user, password)` for servers started with [`RedisServer::start_with_password`].
    credentials: Option<(String, String)>,
    /// The lines of an ACL file (`aclfile`) for servers started with
    /// [`RedisServer::start_with_aclfile`]: users besides `credentials`' admin.
    acl: Option<String>,
    /// Set for servers started with [`RedisServer::start_tls`]: the port speaks TLS only.
    tls: Option<RedisTls>,
    /// A plain TCP port besides the TLS one ([`RedisServer::start_tls_and_plain`]); 0: none.
    also_plain: u16,
    config: PathBuf,
    log: PathBuf,
    /// `None` while stopped. Declared before `dir` (see [`ZkServer`]).
    process: Option<ServerProcess>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server that accepts unauthenticated connections.
    pub fn start() -> RedisServer {
        RedisServer::start_inner(None, None, None)
    }

    /// Starts a server whose port speaks TLS only (`port 0`, `tls-port P`): redis-server as
    /// Debian builds it (linked with OpenSSL), with the given certificates.
    pub fn start_tls(tls: RedisTls) -> RedisServer {
        RedisServer::start_inner(None, None, Some(tls))
    }

    /// [`RedisServer::start_tls`] with a plain TCP port as well ([`RedisServer::plain_port_url`]):
    /// one server, one data set, reached both ways (the benchmark's TLS row).
    pub fn start_tls_and_plain(tls: RedisTls) -> RedisServer {
        let mut server = RedisServer::start_inner(None, None, Some(tls));
        server.also_plain = free_port();
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT/` of the plain port of a [`RedisServer::start_tls_and_plain`].
    pub fn plain_port_url(&self) -> String {
        assert!(self.also_plain != 0, "plain_port_url is for servers started with start_tls_and_plain");
        format!("redis://{}/", loopback(self.also_plain))
    }

    /// [`RedisServer::start_tls`] and [`RedisServer::start_with_password`] together.
    pub fn start_tls_with_password(user: &str, password: &str, tls: RedisTls) -> RedisServer {
        RedisServer::start_inner(Some((user.to_owned(), password.to_owned())), None, Some(tls))
    }

    /// Changes the certificates the server uses from its next [`RedisServer::restart`] on (a
    /// certificate from another CA, an expired one: what a client sees when the server's
    /// certificate stops validating).
    pub fn set_tls(&mut self, tls: RedisTls) {
        assert!(self.tls.is_some(), "set_tls is for servers started with start_tls");
        self.tls = Some(tls);
    }

    /// Starts a server that requires `AUTH user password`: the ACL user `user` has that
    /// password and all permissions, and the `default` user is disabled (unless `user` is
    /// `default` itself, which then gets the password).
    pub fn start_with_password(user: &str, password: &str) -> RedisServer {
        RedisServer::start_inner(Some((user.to_owned(), password.to_owned())), None, None)
    }

    /// Starts a server whose users come from an ACL file (`aclfile`, the format `ACL LOAD`
    /// reads): `acl_lines` (one `user` line each, e.g. `schema/redis-acl.conf` with test
    /// passwords), plus `admin` with `admin_password` and all permissions (what the harness
    /// and the test's own checks use), and the `default` user disabled. A bad line fails the
    /// start with Redis's own complaint (file and line) in the panic.
    pub fn start_with_aclfile(admin: &str, admin_password: &str, acl_lines: &str) -> RedisServer {
        RedisServer::start_inner(Some((admin.to_owned(), admin_password.to_owned())), Some(acl_lines.to_owned()), None)
    }

    fn start_inner(credentials: Option<(String, String)>, acl: Option<String>, tls: Option<RedisTls>) -> RedisServer {
        let dir = temp_dir("zkmirror-test-redis-");
        let mut server = RedisServer {
            port: 0,
            credentials,
            acl,
            tls,
            also_plain: 0,
            config: dir.path().join("redis.conf"),
            log: dir.path().join("redis.log"),
            process: None,
            dir,
        };
        let process = launch_with_retries("starting redis-server", Duration::ZERO, || {
            server.port = free_port();
            server.write_config();
            server.launch()
        });
        server.process = Some(process);
        server
    }

    /// `redis://127.0.0.1:PORT/` (`rediss://` for a TLS server), without credentials.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("rediss://{}/", self.addr()),
            None => self.plain_url(),
        }
    }

    /// `redis://127.0.0.1:PORT/` whatever the server speaks: for a TLS server, the URL a client
    /// that forgot TLS would use.
    pub fn plain_url(&self) -> String {
        format!("redis://{}/", self.addr())
    }

    /// The TLS setup, for servers started with [`RedisServer::start_tls`].
    pub fn tls(&self) -> Option<&RedisTls> {
        self.tls.as_ref()
    }

    /// `redis://USER:PASSWORD@127.0.0.1:PORT/` (percent-encoded) for servers started with
    /// [`RedisServer::start_with_password`], otherwise the same as [`RedisServer::url`].
    pub fn url_with_credentials(&self) -> String {
        match &self.credentials {
            Some((user, password)) => {
                let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
                format!("{scheme}://{}:{}@{}/", percent_encode(user), percent_encode(password), self.addr())
            }
            None => self.url(),
        }
    }

    /// `(user, password)` if the server requires authentication.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(user, password)| (user.as_str(), password.as_str()))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// Pid of the server process, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// Kills the server (SIGKILL) and waits for it to exit. No-op if already stopped.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Stops the server if running and starts it again on the same port. Nothing is persisted,
    /// so it comes back EMPTY: this is how tests simulate "Redis restarted and lost its data".
    pub fn restart(&mut self) {
        self.stop();
        // With the certificates of the last `set_tls`.
        self.write_config();
        let process = launch_with_retries("restarting redis-server", Duration::from_millis(500), || self.launch());
        self.process = Some(process);
    }

    /// The last `lines` lines of the server log (all runs of this server).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&read_from(&self.log, 0), lines)
    }

    /// Writes the whole configuration to a file rather than passing `--option`s: ACL user
    /// lines with arbitrary passwords need redis' config-file quoting.
    fn write_config(&self) {
        // A TLS server listens on its port with TLS only (and on `also_plain`, if set, without).
        let (port, tls_port) = match self.tls {
            Some(_) => (self.also_plain, self.port),
            None => (self.port, 0),
        };
        let mut config = format!(
            "# Written by the zkmirror integration-test harness.\n\
             port {port}\n\
             tls-port {tls_port}\n\
             bind 127.0.0.1\n\
             save \"\"\n\
             appendonly no\n\
             dir {dir}\n\
             daemonize no\n\
             logfile \"\"\n",
            dir = redis_quote(&self.dir.path().display().to_string()),
        );
        if let (Some((admin, password)), Some(lines)) = (&self.credentials, &self.acl) {
            // An ACL file takes no comments and no quoting beyond redis' own; the admin goes
            // first, the given lines follow verbatim.
            let file = self.dir.path().join("users.acl");
            let text = format!("user default off\nuser {admin} reset on >{password} ~* &* +@all\n{lines}\n");
            fs::write(&file, text).unwrap_or_else(|err| panic!("writing {}: {err}", file.display()));
            config.push_str(&format!("aclfile {}\n", redis_quote(&file.display().to_string())));
        } else if let Some((user, password)) = &self.credentials {
            if user != "default" {
                config.push_str("user default off\n");
            }
            config.push_str(&format!(
                "user {} reset on {} ~* &* +@all\n",
                redis_quote(user),
                redis_quote(&format!(">{password}"))
            ));
        }
        if let Some(tls) = &self.tls {
            let path = |p: &Path| redis_quote(&p.display().to_string());
            config.push_str(&format!(
                "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients {}\n",
                path(&tls.server.cert),
                path(&tls.server.key),
                path(&tls.client_ca),
                if tls.auth_clients.is_some() { "yes" } else { "no" },
            ));
        }
        fs::write(&self.config, config).unwrap_or_else(|err| panic!("writing {}: {err}", self.config.display()));
    }

    fn launch(&self) -> Result<ServerProcess, LaunchError> {
        let mut command = Command::new(REDIS_SERVER);
        command.current_dir(self.dir.path()).arg(&self.config);
        let addr = self.addr();
        let mut request = Vec::new();
        if let Some((user, password)) = &self.credentials {
            request.extend(resp_command(&["AUTH", user, password]));
        }
        request.extend(resp_command(&["PING"]));
        let name = format!("redis-server on port {}", self.port);
        let tls = self.tls.clone();
        launch(&name, command, &self.log, REDIS_READY_TIMEOUT, || {
            let until = |reply: &[u8]| reply.ends_with(b"+PONG\r\n") || reply.starts_with(b"-");
            let reply = match &tls {
                Some(tls) => crate::tls::exchange_tls(addr, tls.auth_clients.as_ref(), &request, until),
                None => exchange(addr, &request, until),
            }
            .map_err(|err| format!("PING: {err}"))?;
            if reply.ends_with("+PONG\r\n") && !reply.starts_with('-') {
                Ok(())
            } else {
                Err(format!("PING answered {reply:?}"))
            }
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[harness] test panicked; redis-server on port {} log tail:\n{}",
                self.port,
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        self.stop();
    }
}

/// Encodes one command in RESP (array of bulk strings).
fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n", arg.len()).into_bytes());
        out.extend(arg.as_bytes());
        out.extend(b"\r\n");
    }
    out
}

/// Quotes `value` as one argument of a redis config-file line.
fn redis_quote(value: &str) -> String {
    let mut quoted = String::from("\"");
    for byte in value.bytes() {
        match byte {
            b'"' | b'\\' => {
                quoted.push('\\');
                quoted.push(byte as char);
            }
            0x20..=0x7e => quoted.push(byte as char),
            _ => quoted.push_str(&format!("\\x{byte:02x}")),
        }
    }
    quoted.push('"');
    quoted
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for URL userinfo.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Redis Sentinel
// ---------------------------------------------------------------------------------------------

/// How long the sentinels may take to find each other and the replica (hello messages every 2 s).
const SENTINEL_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `down-after-milliseconds`: how long a silent primary is taken for alive.
const SENTINEL_DOWN_AFTER_MS: u64 = 1000;
/// `failover-timeout`: also the pause before a failed failover is tried again.
const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 3000;

/// One process of a [`SentinelSetup`]: a data node (`redis-server CONF`) or a sentinel
/// (`redis-server CONF --sentinel`; Debian's redis-server binary is a sentinel when asked,
/// `redis-sentinel` is not needed), each in its own temp dir, on its own loopback port.
pub(crate) struct SentinelNode {
    pub(crate) port: u16,
    sentinel: bool,
    config: PathBuf,
    log: PathBuf,
    /// `None` once killed. Declared before `dir` (see [`ZkServer`]).
    pub(crate) process: Option<ServerProcess>,
    dir: TempDir,
}

impl SentinelNode {
    /// Starts a node whose config is `lines(port, dir)` after the common lines.
    pub(crate) fn start(what: &str, sentinel: bool, lines: impl Fn(u16) -> String) -> SentinelNode {
        let dir = temp_dir(&format!("zkmirror-test-{what}-"));
        let mut node = SentinelNode {
            port: 0,
            sentinel,
            config: dir.path().join(if sentinel { "sentinel.conf" } else { "redis.conf" }),
            log: dir.path().join("redis.log"),
            process: None,
            dir,
        };
        let process = launch_with_retries(&format!("starting {what}"), Duration::ZERO, || {
            node.port = free_port();
            let config = format!(
                "# Written by the zkmirror integration-test harness.\n\
                 port {port}\n\
                 bind 127.0.0.1\n\
                 dir {dir}\n\
                 daemonize no\n\
                 logfile \"\"\n{rest}",
                port = node.port,
                dir = redis_quote(&node.dir.path().display().to_string()),
                rest = lines(node.port),
            );
            fs::write(&node.config, config).map_err(|e| LaunchError::Failed(format!("writing the config: {e}")))?;
            let mut command = Command::new(REDIS_SERVER);
            command.current_dir(node.dir.path()).arg(&node.config);
            if node.sentinel {
                command.arg("--sentinel");
            }
            let addr = loopback(node.port);
            launch(&format!("{what} on port {}", node.port), command, &node.log, REDIS_READY_TIMEOUT, || {
                let reply = exchange(addr, &resp_command(&["PING"]), |r| r.ends_with(b"\r\n"))
                    .map_err(|err| format!("PING: {err}"))?;
                if reply == "+PONG\r\n" {
                    Ok(())
                } else {
                    Err(format!("PING answered {reply:?}"))
                }
            })
        });
        node.process = Some(process);
        node
    }

    fn ask(&self, args: &[&str]) -> io::Result<String> {
        exchange(loopback(self.port), &resp_command(args), |_| false)
    }
}

impl Drop for SentinelNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[harness] test panicked; {} on port {} log tail:\n{}",
                if self.sentinel { "sentinel" } else { "redis-server" },
                self.port,
                tail(&read_from(&self.log, 0), LOG_TAIL_LINES)
            );
        }
        self.process = None;
    }
}

/// A Sentinel-managed Redis: a primary, one replica (`replicaof`) and three sentinels
/// monitoring the primary as `service` with quorum 2, `down-after-milliseconds` 1000 and
/// `failover-timeout` 3000. Every process is killed by pid when this is dropped.
///
/// Returned once each sentinel knows the replica and the two other sentinels, so that a
/// failover can be voted at once when the primary fails.
pub struct SentinelSetup {
    service: String,
    /// The primary first, then the replica; a killed node stays (its process `None`).
    nodes: Vec<SentinelNode>,
    sentinels: Vec<SentinelNode>,
}

impl SentinelSetup {
    pub fn start(service: &str) -> SentinelSetup {
        let data = "save \"\"\nappendonly no\n";
        let primary = SentinelNode::start("redis-primary", false, |_| data.to_owned());
        let primary_port = primary.port;
        let replica = SentinelNode::start("redis-replica", false, |_| {
            format!("{data}replicaof 127.0.0.1 {primary_port}\nreplica-serve-stale-data yes\n")
        });
        let sentinel_lines = |_| {
            format!(
                "sentinel monitor {service} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {service} {SENTINEL_DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {service} {SENTINEL_FAILOVER_TIMEOUT_MS}\n\
                 sentinel parallel-syncs {service} 1\n"
            )
        };
        let sentinels = (0..3).map(|_| SentinelNode::start("redis-sentinel", true, sentinel_lines)).collect();
        let setup = SentinelSetup { service: service.to_owned(), nodes: vec![primary, replica], sentinels };
        setup.wait_ready();
        setup
    }

    /// Until the replica is in sync and every sentinel sees it and the two other sentinels.
    fn wait_ready(&self) {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < SENTINEL_READY_TIMEOUT {
            let synced = self.nodes[1]
                .ask(&["INFO", "replication"])
                .map(|info| info.contains("master_link_status:up"))
                .unwrap_or(false);
            let views: Vec<String> = self
                .sentinels
                .iter()
                .map(|s| s.ask(&["SENTINEL", "MASTER", &self.service]).unwrap_or_else(|e| e.to_string()))
                .collect();
            // `SENTINEL MASTER` answers a flat array of field names and values.
            let field = |view: &str, name: &str| -> Option<String> {
                let lines: Vec<&str> = view.split("\r\n").filter(|l| !l.starts_with(['*', '$'])).collect();
                lines.iter().position(|l| *l == name).and_then(|i| lines.get(i + 1)).map(|v| v.to_string())
            };
            let ready = views.iter().all(|v| {
                field(v, "num-slaves").as_deref() == Some("1")
                    && field(v, "num-other-sentinels").as_deref() == Some("2")
            });
            if synced && ready {
                eprintln!("[harness] Sentinel service {} ready after {:?}", self.service, started.elapsed());
                return;
            }
            last = format!("replica in sync: {synced}; sentinels: {views:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("Sentinel service {} not ready after {SENTINEL_READY_TIMEOUT:?}: {last}", self.service);
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/SERVICE`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| loopback(s.port).to_string()).collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), self.service)
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The ports of the sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The port of the primary the setup started with.
    pub fn first_primary_port(&self) -> u16 {
        self.nodes[0].port
    }

    /// The port of the data node that is not `port` (the replica of the first primary, or the
    /// first primary itself).
    pub fn other_node_port(&self, port: u16) -> u16 {
        self.nodes.iter().map(|n| n.port).find(|p| *p != port).unwrap_or(port)
    }

    /// The primary's port as each sentinel reports it (`SENTINEL get-master-addr-by-name`);
    /// `None` for a sentinel that did not answer.
    pub async fn reported_primaries(&self) -> Vec<Option<u16>> {
        let mut ports = Vec::new();
        for sentinel in &self.sentinels {
            let url = format!("redis://{}/", loopback(sentinel.port));
            let asked = async {
                let client = redis::Client::open(url).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                let (_, port): (String, u16) = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.service)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                Some(port)
            };
            ports.push(asked.await);
        }
        ports
    }

    /// Waits until every sentinel reports a primary other than `old` and that server answers
    /// `ROLE` as a primary; returns its port. Panics after `deadline`.
    pub async fn wait_for_new_primary(&self, old: u16, deadline: Duration) -> u16 {
        crate::wait_until(deadline, &format!("the sentinels of {} name a primary other than port {old}", self.service), || async {
            let reported = self.reported_primaries().await;
            let port = match reported.first() {
                Some(Some(port)) if *port != old && reported.iter().all(|p| *p == Some(*port)) => *port,
                _ => return Err(format!("sentinels report {reported:?}")),
            };
            let mut conn = crate::world::redis_conn(&format!("redis://{}/", loopback(port))).await;
            let role: redis::Value = redis::cmd("ROLE").query_async(&mut conn).await.map_err(|e| e.to_string())?;
            match role {
                redis::Value::Array(items) if matches!(items.first(), Some(redis::Value::BulkString(b)) if b == b"master") => Ok(port),
                other => Err(format!("port {port} answers ROLE {other:?}")),
            }
        })
        .await
    }

    /// `redis://127.0.0.1:PORT/` of the primary the first sentinel reports now.
    pub async fn primary_url(&self) -> String {
        let reported = self.reported_primaries().await;
        let port = reported.iter().flatten().next().copied().unwrap_or_else(|| panic!("no sentinel answered"));
        format!("redis://{}/", loopback(port))
    }

    fn node(&mut self, port: u16) -> &mut SentinelNode {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// Kills the data node on `port` (SIGKILL, reaped): `kill -9` of a primary.
    pub fn kill_node(&mut self, port: u16) {
        self.node(port).process = None;
    }

    /// Closes the primary's replication links on `port` (`CLIENT KILL TYPE replica`): with the
    /// replica paused ([`SentinelSetup::pause_node`]) it cannot reconnect, and what the primary
    /// acknowledges from then on never reaches it. (Pausing alone is not enough: the kernel
    /// still receives the replication stream into the paused replica's socket.)
    pub fn cut_replication(&self, port: u16) {
        let node = self.nodes.iter().find(|n| n.port == port).unwrap_or_else(|| panic!("no data node on port {port}"));
        let reply = node.ask(&["CLIENT", "KILL", "TYPE", "replica"]).unwrap_or_else(|e| panic!("CLIENT KILL: {e}"));
        assert!(reply.starts_with(':'), "CLIENT KILL TYPE replica on port {port} answered {reply:?}");
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the data node on `port`: a paused server keeps its
    /// connections open and answers nothing, like a hung or partitioned one.
    pub fn pause_node(&mut self, port: u16, paused: bool) {
        let node = self.node(port);
        let pid = node.process.as_ref().map(ServerProcess::pid).unwrap_or_else(|| panic!("port {port} is killed"));
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: a plain syscall on a child this process spawned and has not reaped.
        let rc = unsafe { libc::kill(pid as i32, signal) };
        assert_eq!(rc, 0, "signalling redis-server pid {pid}: {}", io::Error::last_os_error());
    }
}
