//! What every section shares: the clock, the tree, the mirror process, /proc readings,
//! percentiles, the machine and server versions, and how a figure is judged against its target.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::FutureExt;
use serde::Serialize;
use zkmirror::testing::{Walk, WalkLimits};
use zookeeper_client::{Acls, Client, CreateMode, MultiReadResult};

use zkmirror_testkit::{world, RedisServer, ZkServer};
pub use zkmirror_testkit::{zk_client, Guarded};

/// Bytes of data in every znode of the benchmark tree.
pub const DATA_LEN: usize = 100;
/// Children per inner znode.
pub const FANOUT: usize = 10;
/// The mirrored root.
pub const ROOT: &str = "/bench";
/// The mirror's key prefix (its default).
pub const PREFIX: &str = "zk";

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

/// CLOCK_MONOTONIC in nanoseconds. Unlike `Instant`, whose origin is private to a process, this
/// clock is one system-wide clock: a timestamp taken in the writer process and one taken in the
/// reader process can be subtracted.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME in nanoseconds: the clock of the mirror's `mirrored_at` (unix ms).
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: as in `mono_ns`.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A small deterministic PRNG (xorshift64*): runs pick the same znodes for the same seed, and
/// the benchmark needs no `rand`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for picking znodes.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------------------------

/// A complete `FANOUT`-ary tree of `nodes` znodes in breadth-first order: node `i`'s parent is
/// node `(i - 1) / FANOUT`. Node 0 is [`ROOT`].
pub fn tree_paths(nodes: usize) -> Vec<String> {
    let mut paths: Vec<String> = Vec::with_capacity(nodes);
    paths.push(ROOT.to_owned());
    for i in 1..nodes {
        let parent = &paths[(i - 1) / FANOUT];
        paths.push(format!("{parent}/n{}", (i - 1) % FANOUT));
    }
    paths
}

/// The leaves of [`tree_paths`]: node `i` is a leaf when its first child `i * FANOUT + 1` would
/// be past the end.
pub fn leaf_paths(nodes: usize) -> Vec<String> {
    let first_leaf = (nodes - 1).div_ceil(FANOUT);
    tree_paths(nodes).split_off(first_leaf.min(nodes - 1))
}

/// Creates the tree of [`tree_paths`], every znode holding `DATA_LEN` bytes; returns how long
/// it took (a rough ZooKeeper write rate for the record).
pub async fn populate(client: &Client, nodes: usize) -> Duration {
    let started = Instant::now();
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let data = vec![b'v'; DATA_LEN];
    let paths = tree_paths(nodes);
    // Parents come before children in this order; creating in chunks keeps that true.
    let mut start = 0;
    while start < nodes {
        // A chunk must not contain a node and its parent: cut at the first index whose parent
        // is inside the chunk.
        let end = if start == 0 { 1 } else { (start + 5000).min(nodes).min(start * FANOUT + 1).max(start + 1) };
        let creates: Vec<_> = paths[start..end].iter().map(|p| client.create(p, &data, &options)).collect();
        for (path, result) in paths[start..end].iter().zip(futures::future::join_all(creates).await) {
            result.unwrap_or_else(|e| panic!("creating {path}: {e}"));
        }
        start = end;
    }
    started.elapsed()
}

/// The reference: reads every znode's data and, for inner nodes, its children, with up to 1024
/// reads in flight on one session — the least any copy must read. Returns the znodes read. The
/// walk is zkmirror's own depth-first walker ([`Walk`]); the reads are the reference's.
pub async fn raw_walk(client: &Client, root: &str) -> usize {
    let client = client.clone();
    let limits = WalkLimits { batch: 1, requests: 1024, bytes: usize::MAX };
    let walk = Walk::new(root, limits, move |paths| {
        let reads: Vec<_> = paths
            .into_iter()
            .map(|path| {
                let data = client.get_data(&path);
                let client = client.clone();
                async move {
                    let (_, stat) = data.await.expect("get_data");
                    let children = if stat.num_children > 0 {
                        client.get_children(&path).await.expect("get_children").0
                    } else {
                        Vec::new()
                    };
                    (path, children)
                }
            })
            .collect();
        futures::future::join_all(reads).boxed()
    });
    count_walk(walk).await
}

/// Paths per multi-read in [`raw_walk_batched`] (the mirror's own batch size today).
pub const READ_BATCH: usize = 64;

/// The batched reference: the same reads as [`raw_walk`], but `READ_BATCH` `getData` per
/// multi-read request (and the `getChildren` of a batch's inner znodes in one more), with as
/// many reads in flight as [`raw_walk`] (1024). ZooKeeper then handles one request per batch
/// instead of one per znode, which is the fastest way this client can read a tree.
pub async fn raw_walk_batched(client: &Client, root: &str) -> usize {
    let client = client.clone();
    let limits = WalkLimits { batch: READ_BATCH, requests: 1024 / READ_BATCH, bytes: usize::MAX };
    let walk = Walk::new(root, limits, move |paths| {
        let client = client.clone();
        async move {
            let mut reader = client.new_multi_reader();
            for path in &paths {
                reader.add_get_data(path).expect("a valid path");
            }
            let results = reader.commit().await.expect("multi-read getData");
            // Every path with no children yet; the inner ones get theirs from one more multi-read.
            let mut read: Vec<(String, Vec<String>)> = Vec::with_capacity(paths.len());
            let mut inner: Vec<usize> = Vec::new();
            for (path, result) in paths.into_iter().zip(results) {
                match result {
                    MultiReadResult::Data { stat, .. } if stat.num_children > 0 => inner.push(read.len()),
                    MultiReadResult::Data { .. } => {}
                    other => panic!("multi-read getData {path}: {other:?}"),
                }
                read.push((path, Vec::new()));
            }
            if !inner.is_empty() {
                let mut reader = client.new_multi_reader();
                for &i in &inner {
                    reader.add_get_children(&read[i].0).expect("a valid path");
                }
                let results = reader.commit().await.expect("multi-read getChildren");
                for (i, result) in inner.into_iter().zip(results) {
                    match result {
                        MultiReadResult::Children { children } => read[i].1 = children,
                        other => panic!("multi-read getChildren {}: {other:?}", read[i].0),
                    }
                }
            }
            read
        }
        .boxed()
    });
    count_walk(walk).await
}

/// Runs a reference walk to the end, descending everywhere; the znodes read.
async fn count_walk(mut walk: Walk<Vec<String>>) -> usize {
    let mut count = 0;
    while let Some((path, children)) = walk.next().await {
        count += 1;
        walk.descend(&path, &children);
    }
    count
}

/// Times [`raw_walk`] (or, `batched`, [`raw_walk_batched`]) once and checks it read the whole tree.
pub async fn timed_raw_walk(client: &Client, nodes: usize, batched: bool) -> Duration {
    let started = Instant::now();
    let read = if batched { raw_walk_batched(client, ROOT).await } else { raw_walk(client, ROOT).await };
    let elapsed = started.elapsed();
    assert_eq!(read, nodes, "the raw walk read a different tree");
    elapsed
}

/// Znode `i` of the benchmark tree (`paths` = [`tree_paths`]) as a copy holds it, for the
/// writes that bypass ZooKeeper ([`raw_write`], [`scripted_write`]): [`DATA_LEN`] bytes, every
/// zxid `2^32 + i`, its children's names.
fn synthetic_znode(paths: &[String], i: usize) -> zkmirror::testing::Znode {
    const FIRST_ZXID: i64 = 1 << 32;
    const TIME_MS: i64 = 1_764_000_000_000;
    let zxid = FIRST_ZXID + i as i64;
    let first_child = i * FANOUT + 1;
    let children: Vec<String> =
        (0..FANOUT).filter(|c| first_child + c < paths.len()).map(|c| format!("n{c}")).collect();
    zkmirror::testing::Znode {
        path: paths[i].clone(),
        data: vec![b'v'; DATA_LEN],
        stat: zkmirror::testing::ZnodeStat {
            czxid: zxid,
            mzxid: zxid,
            pzxid: zxid,
            ctime: TIME_MS,
            mtime: TIME_MS,
            data_length: DATA_LEN as i32,
            num_children: children.len() as i32,
            ..Default::default()
        },
        children,
    }
}

/// The unix ms the synthetic writes stamp as `mirrored_at`.
const SYNTHETIC_NOW_MS: u64 = 1_764_000_000_000;

/// Context for the cold sync (not its reference): the least a copy must *write*. Every znode's
/// data (`SET`), a meta hash of the mirror's twelve fields (`HSET`) and, for inner znodes, the
/// children set (`SADD`), pipelined 1000 znodes at a time, plain commands, no scripts. With
/// `with_stream`, also the one `P:changes` entry per znode the contract asks of every applied
/// write (`XADD` with `put.lua`'s fields and trim): every key the cold sync writes. Leaves the
/// keys in place; the caller flushes.
pub async fn raw_write(conn: &mut redis::aio::MultiplexedConnection, nodes: usize, with_stream: bool) -> Duration {
    let keys = zkmirror::testing::Keys::new(PREFIX);
    // The stream length the mirror keeps by default, as its scripts trim it.
    let changes_maxlen = zkmirror::MirrorConfig::new("127.0.0.1:1", "redis://127.0.0.1:1", ROOT).changes_maxlen;
    let paths = tree_paths(nodes);
    let started = Instant::now();
    for (chunk_index, chunk) in paths.chunks(1000).enumerate() {
        let mut pipe = redis::pipe();
        for i in chunk_index * 1000..chunk_index * 1000 + chunk.len() {
            let znode = synthetic_znode(&paths, i);
            pipe.set(keys.data(&znode.path), &znode.data).ignore();
            pipe.cmd("HSET").arg(keys.meta(&znode.path));
            for (field, value) in zkmirror::testing::STAT_FIELDS.iter().zip(znode.stat.fields()) {
                pipe.arg(*field).arg(value);
            }
            pipe.arg("mirrored_at").arg(SYNTHETIC_NOW_MS).ignore();
            if !znode.children.is_empty() {
                pipe.sadd(keys.children(&znode.path), &znode.children).ignore();
            }
            if with_stream {
                pipe.cmd("XADD")
                    .arg(keys.changes())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(changes_maxlen)
                    .arg("*")
                    .arg("op")
                    .arg("put")
                    .arg("path")
                    .arg(&znode.path)
                    .arg("mzxid")
                    .arg(znode.stat.mzxid)
                    .arg("version")
                    .arg(znode.stat.version)
                    .arg("czxid")
                    .arg(znode.stat.czxid)
                    .ignore();
            }
        }
        let _: () = pipe.query_async(conn).await.expect("raw write");
    }
    started.elapsed()
}

/// Context for the cold sync: the mirror's own Redis stage alone. The same znodes go through
/// zkmirror's [`Store::apply`](zkmirror::testing::Store::apply) (one pipeline of 1000 in
/// flight, as the mirror sends them) into an empty Redis, with no ZooKeeper at all: with
/// `batches`, as the mirror writes to one Redis (`put_batch.lua`, up to 128 znodes per call),
/// else one `put.lua` call per znode (as to a Redis Cluster). A cold sync cannot finish sooner
/// than the first; the gap between the two is what reading ZooKeeper adds. Leaves the keys in
/// place; the caller flushes.
pub async fn scripted_write(redis_url: &str, nodes: usize, batches: bool) -> Duration {
    let config = zkmirror::MirrorConfig::new("127.0.0.1:1", redis_url, ROOT);
    let store =
        zkmirror::testing::Store::new(&config).expect("a store for the scripted write").with_put_batches(batches);
    store.load_scripts().await.expect("loading the schema's scripts");
    let paths = tree_paths(nodes);
    let started = Instant::now();
    for (chunk_index, chunk) in paths.chunks(1000).enumerate() {
        let writes: Vec<zkmirror::testing::Write> = (chunk_index * 1000..chunk_index * 1000 + chunk.len())
            .map(|i| zkmirror::testing::Write::Put(synthetic_znode(&paths, i)))
            .collect();
        let applied = match writes.last() {
            Some(zkmirror::testing::Write::Put(znode)) => znode.stat.last_zxid(),
            _ => 0,
        };
        let outcome =
            store.apply(&writes, Some(applied), SYNTHETIC_NOW_MS, None, 0).await.expect("the scripted write").counts();
        assert_eq!(outcome.written as usize, writes.len(), "the scripted write skipped znodes");
    }
    started.elapsed()
}

/// Starts Redis's latency monitor afresh: every event (a command, a fork, an expiry cycle)
/// that takes at least 1 ms is recorded from now on.
pub async fn redis_stalls_reset(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("latency-monitor-threshold")
        .arg(1)
        .query_async(conn)
        .await
        .expect("CONFIG SET latency-monitor-threshold");
    let _: i64 = redis::cmd("LATENCY").arg("RESET").query_async(conn).await.expect("LATENCY RESET");
}

/// The longest single event Redis's latency monitor saw since [`redis_stalls_reset`], in ms. A
/// plain `HGET` or `SET` ("fast-command") taking milliseconds means Redis's thread was not
/// running: the CPU went to other processes.
pub async fn redis_stall_max_ms(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    // Each entry: [event name, unix time of the latest, latest ms, all-time max ms].
    let latest: Vec<(String, u64, u64, u64)> =
        redis::cmd("LATENCY").arg("LATEST").query_async(conn).await.expect("LATENCY LATEST");
    latest.into_iter().map(|(_, _, _, max_ms)| max_ms).max().unwrap_or(0)
}

/// The benchmark's own Redis connection. redis-rs answers "timed out" after 500 ms by default;
/// `FLUSHALL` of a 200,000-znode copy or a verify's large pipelines take longer.
pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    world::redis_conn_with_response_timeout(url, Duration::from_secs(120)).await
}

/// A blocking Redis connection with TCP_NODELAY, for the tight polling loops (one request at a
/// time: Nagle's algorithm would only add delay).
pub fn redis_sync_conn(url: &str) -> redis::Connection {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .expect("redis url")
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
        .expect("redis url")
        .get_connection()
        .unwrap_or_else(|e| panic!("connecting to Redis at {url}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Processes: the mirror and the benchmark's own helper roles
// ---------------------------------------------------------------------------------------------

/// Where the mirror's log of each section goes.
pub fn log_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-logs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Copies of the mirror binary and of this benchmark binary, taken once at start: other work on
/// the same checkout may rebuild `target/release/zkmirror` (or this binary) while the benchmark
/// runs, and every section must run the same code. They live in `target/bench-bin/PID/`,
/// removed by [`unpin_binaries`] at the end (and, if a run crashed, by the next run).
struct Binaries {
    zkmirror: PathBuf,
    bench: PathBuf,
    dir: PathBuf,
}

fn binaries() -> &'static Binaries {
    static BINARIES: std::sync::OnceLock<Binaries> = std::sync::OnceLock::new();
    BINARIES.get_or_init(|| {
        let parent = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-bin");
        // Copies left by runs that crashed: their process is gone.
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = parent.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let copy = |from: &Path, name: &str| {
            let to = dir.join(name);
            std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
            to
        };
        let zkmirror = copy(Path::new(env!("CARGO_BIN_EXE_zkmirror")), "zkmirror");
        let bench = copy(&std::env::current_exe().expect("path of the benchmark binary"), "bench");
        Binaries { zkmirror, bench, dir }
    })
}

/// Removes the copies made by [`pin_binaries`].
pub fn unpin_binaries() {
    let _ = std::fs::remove_dir_all(&binaries().dir);
}

/// The git revision when the benchmark started (the work tree may change while it runs).
static GIT_AT_START: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Pins the binaries (see [`Binaries`]) and notes the git revision; call before anything is
/// measured.
pub fn pin_binaries() {
    binaries();
    let _ = GIT_AT_START.set(git_revision());
}

/// `zkmirror --version` of the pinned binary.
pub fn zkmirror_binary_version() -> String {
    command_output(binaries().zkmirror.to_str().unwrap_or("zkmirror"), &["--version"])
        .unwrap_or_else(|| "unknown".into())
}

/// Starts `zkmirror run` (the real binary, a separate process) with its default settings; its
/// log (level info) goes to `target/bench-logs/{log_name}.log`.
pub fn spawn_mirror(zk: &str, redis: &str, log_name: &str) -> Guarded {
    spawn_mirror_with(zk, redis, log_name, &[])
}

/// [`spawn_mirror`] with more arguments for `zkmirror run`.
pub fn spawn_mirror_with(zk: &str, redis: &str, log_name: &str, extra: &[&str]) -> Guarded {
    let log_path = log_dir().join(format!("{log_name}.log"));
    let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
    let mut command = Command::new(&binaries().zkmirror);
    command
        .args(["run", "--zk", zk, "--redis", redis, "--root", ROOT, "--prefix", PREFIX])
        .args(extra)
        .env("RUST_LOG", "info,zkmirror::mirror=debug")
        .env("NO_COLOR", "1")
        .env_remove("ZKMIRROR_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Guarded::spawn("the mirror (zkmirror run)", command)
}

/// The mirror's log of a section (colour codes removed), for the lines it prints about its walks.
pub fn mirror_log(log_name: &str) -> String {
    let log = std::fs::read_to_string(log_dir().join(format!("{log_name}.log"))).unwrap_or_default();
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Runs this benchmark binary again in a helper role (`role NAME ARGS...`).
pub fn role_command(role: &str, args: &[String]) -> Command {
    let mut command = Command::new(&binaries().bench);
    command.arg("role").arg(role).args(args);
    command
}

/// Reads `P:mirror` `state`.
pub async fn mirror_state(conn: &mut redis::aio::MultiplexedConnection) -> Option<String> {
    world::mirror_state(conn, PREFIX).await
}

/// Polls `P:mirror` `state` every 0.5 ms until it is `want`; returns when it was seen.
pub async fn wait_state(
    conn: &mut redis::aio::MultiplexedConnection,
    mirror: &mut Guarded,
    want: &str,
    timeout: Duration,
) -> Option<Instant> {
    world::wait_for_state(conn, PREFIX, mirror, want, timeout).await
}

/// Compares Redis with ZooKeeper (zkmirror's independent `verify`) and returns the report and
/// how long the comparison took.
pub async fn verify(
    client: &Client,
    conn: &mut redis::aio::MultiplexedConnection,
) -> (zkmirror::verify::Report, Duration) {
    let started = Instant::now();
    let report = zkmirror::verify::compare(client, conn, PREFIX, ROOT).await.expect("verify::compare");
    (report, started.elapsed())
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// CPU time (user + system) and peak RSS (VmHWM, KiB) of a running process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu: Duration,
    pub peak_rss_kib: u64,
}

pub fn process_usage(pid: u32) -> Usage {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Usage::default();
    };
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Usage { cpu: Duration::from_millis(ticks * 1000 / hz), peak_rss_kib }
}

/// CPU time of several processes and of the whole machine, to turn into utilisation over an
/// interval. The machine's share tells whether something outside the benchmark (another build,
/// another test run) competed for the cores while a figure was measured.
pub struct CpuSample {
    at: Instant,
    cpu: Vec<Duration>,
    waited: Vec<Duration>,
    machine_busy: Duration,
}

/// Utilisation over an interval, in percent of one core (100 = one core busy).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUse {
    /// One per pid given to [`CpuSample::take`], in that order.
    pub processes: Vec<f64>,
    /// The whole machine (at most 100 × cores).
    pub machine: f64,
    /// The machine less the benchmark's own processes: load from outside the benchmark.
    pub outside: f64,
    /// One per pid: time its threads were ready to run but had no CPU (the kernel's run-queue
    /// wait), in percent of the interval, summed over threads. A process that waits about as
    /// long as it runs is short of CPU, whatever its own code does.
    pub waiting: Vec<f64>,
}

impl CpuSample {
    /// `pids` should name every process of the benchmark that uses CPU (this one included), so
    /// that the rest is what happened outside it.
    pub fn take(pids: &[u32]) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            cpu: pids.iter().map(|&p| process_usage(p).cpu).collect(),
            waited: pids.iter().map(|&p| run_queue_wait(p)).collect(),
            machine_busy: machine_busy(),
        }
    }

    pub fn since(&self, pids: &[u32]) -> CpuUse {
        let secs = self.at.elapsed().as_secs_f64();
        let processes: Vec<f64> = pids
            .iter()
            .zip(&self.cpu)
            .map(|(&p, before)| 100.0 * process_usage(p).cpu.saturating_sub(*before).as_secs_f64() / secs)
            .collect();
        let machine = 100.0 * machine_busy().saturating_sub(self.machine_busy).as_secs_f64() / secs;
        let outside = (machine - processes.iter().sum::<f64>()).max(0.0);
        let waiting = pids
            .iter()
            .zip(&self.waited)
            .map(|(&p, before)| 100.0 * run_queue_wait(p).saturating_sub(*before).as_secs_f64() / secs)
            .collect();
        CpuUse { processes, machine, outside, waiting }
    }
}

/// Time the threads of `pid` spent ready to run but waiting for a CPU, summed over its live
/// threads (/proc/PID/task/*/schedstat, second field, ns). Zero if the kernel keeps no
/// schedstats.
pub fn run_queue_wait(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().nth(1).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(nanos)
}

/// Busy CPU time of the whole machine since boot (all cores), from /proc/stat.
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(busy * 1000 / hz)
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// Nearest-rank percentiles of a sample, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub min_ms: f64,
}

impl Percentiles {
    /// From signed nanoseconds (a latency measured across two processes can come out slightly
    /// negative when the acknowledging process was descheduled; such values are kept as they are).
    pub fn of(mut samples_ns: Vec<i64>) -> Percentiles {
        if samples_ns.is_empty() {
            return Percentiles::default();
        }
        samples_ns.sort_unstable();
        let rank = |q: f64| {
            let i = ((q * samples_ns.len() as f64).ceil() as usize).clamp(1, samples_ns.len()) - 1;
            samples_ns[i] as f64 / 1e6
        };
        Percentiles {
            count: samples_ns.len(),
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            max_ms: *samples_ns.last().unwrap() as f64 / 1e6,
            min_ms: samples_ns[0] as f64 / 1e6,
        }
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// One figure judged against one target of the performance issue.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

impl Verdict {
    pub fn new(what: impl Into<String>, target: impl Into<String>, measured: impl Into<String>, met: bool) -> Verdict {
        Verdict { what: what.into(), target: target.into(), measured: measured.into(), met }
    }

    /// `met`/`MISSED`, for the tables.
    pub fn mark(&self) -> &'static str {
        mark(self.met)
    }
}

pub fn mark(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

// ---------------------------------------------------------------------------------------------
// Machine and versions
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_mb: u64,
    pub kernel: String,
    pub cpu_model: String,
    pub hostname: String,
    pub loadavg_at_start: String,
}

pub fn machine() -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mb: memory_kib / 1024,
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        cpu_model,
        hostname: read_trimmed("/proc/sys/kernel/hostname"),
        loadavg_at_start: loadavg(),
    }
}

pub fn loadavg() -> String {
    read_trimmed("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".into())
}

/// `2025-01-31T12:00:00Z`, from `date` (the benchmark has no date library).
pub fn utc_now() -> String {
    command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_else(|| "unknown".into())
}

/// The commit the benchmark was built from, `+dirty` when the work tree had changes.
pub fn git_revision() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let Some(rev) = command_output("git", &["-C", dir, "rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = command_output("git", &["-C", dir, "status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{rev}+dirty")
    } else {
        rev
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// ZooKeeper's version from the `srvr` four-letter word.
pub fn zookeeper_version(zk: &ZkServer) -> String {
    zk.four_letter_word("srvr")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Zookeeper version:")).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// The packets ZooKeeper has received so far (`mntr`'s `zk_packets_received`): every request
/// of every client, pings included. 0 if the server does not say.
pub fn zookeeper_packets_received(zk: &ZkServer) -> u64 {
    zk.four_letter_word("mntr")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("zk_packets_received")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Redis's version from `INFO server`.
pub async fn redis_version(conn: &mut redis::aio::MultiplexedConnection) -> String {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await.unwrap_or_default();
    info_field(&info, "redis_version").unwrap_or_else(|| "unknown".into())
}

/// CPU seconds Redis's main thread (the one that runs every command and script) has used so
/// far, from `INFO cpu` (getrusage, microseconds): the Redis time of a phase is the difference,
/// which other load on the machine does not inflate as it does the wall time.
pub async fn redis_main_cpu_s(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await.expect("INFO cpu");
    let field = |name: &str| info_field(&info, name).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    field("used_cpu_user_main_thread") + field("used_cpu_sys_main_thread")
}

/// A field of an `INFO` answer.
pub fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_owned()))
}

/// The versions found while the servers of the first section ran.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Versions {
    pub zkmirror: String,
    /// `zkmirror --version` of the binary that was measured.
    pub zkmirror_binary: String,
    pub zkmirror_git: String,
    pub zookeeper: String,
    pub redis: String,
}

/// Versions of the servers, noted once from the first pair started.
static SERVER_VERSIONS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// A fresh ZooKeeper (tuned for throughput, see `ZkServer::start_for_benchmark`) and a fresh
/// redis-server, both on loopback, both killed when dropped.
pub struct Servers {
    pub zk: ZkServer,
    pub redis: RedisServer,
}

impl Servers {
    pub async fn start() -> Servers {
        let zk = ZkServer::start_for_benchmark();
        let redis = RedisServer::start();
        record_versions(&zk, &redis.url()).await;
        Servers { zk, redis }
    }
}

/// Notes the servers' versions for the report, from the first section that starts servers.
pub async fn record_versions(zk: &ZkServer, redis_url: &str) {
    if SERVER_VERSIONS.get().is_none() {
        let mut conn = redis_conn(redis_url).await;
        let _ = SERVER_VERSIONS.set((zookeeper_version(zk), redis_version(&mut conn).await));
    }
}

pub fn versions() -> Versions {
    let (zookeeper, redis) = SERVER_VERSIONS.get().cloned().unwrap_or_else(|| ("unknown".into(), "unknown".into()));
    Versions {
        zkmirror: env!("CARGO_PKG_VERSION").to_owned(),
        zkmirror_binary: zkmirror_binary_version(),
        zkmirror_git: GIT_AT_START.get().cloned().unwrap_or_else(git_revision),
        zookeeper,
        redis,
    }
}

/// Quantiles (ms) of a Prometheus histogram the mirror serves at `addr`, interpolated linearly
/// inside the bucket that holds each rank: as precise as the buckets (50 µs steps below 0.5 ms).
pub fn scrape_histogram_ms(addr: &str, name: &str) -> Option<HistogramQuantiles> {
    let (200, body) = zkmirror_testkit::http_get(addr, "/metrics").ok()? else { return None };
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = body
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let quantile = |q: f64| {
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &buckets {
            if count >= rank {
                if le.is_infinite() {
                    return lower * 1000.0;
                }
                let share = if count > below { (rank - below) / (count - below) } else { 1.0 };
                return (lower + share * (le - lower)) * 1000.0;
            }
            (lower, below) = (le, count);
        }
        lower * 1000.0
    };
    Some(HistogramQuantiles {
        count: total as u64,
        p50_ms: quantile(0.5),
        p90_ms: quantile(0.9),
        p99_ms: quantile(0.99),
    })
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct HistogramQuantiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}
