//! Section 2, propagation latency: how long after ZooKeeper acknowledges a `setData` a separate
//! Redis reader first sees it, and whether any read shows something a reader must never see.
//!
//! Three processes besides the servers and the mirror:
//!
//! ```text
//!   writer  ──(pipe: "leaf seq" before each setData)──▶  reader
//!     │ setData on its own ZooKeeper session                 │ MULTI GET data, HGET meta mzxid EXEC
//!     ▼ log: seq, leaf, zxid, ack time                       ▼ log: each distinct (leaf, seq, mzxid) seen, when
//!   orchestrator (this process) joins the two logs afterwards
//! ```
//!
//! * The writer sets a unique value (its sequence number, padded to 100 bytes) on a random leaf
//!   out of `WATCHED` leaves, open loop at the target rate, one request at a time, and records
//!   CLOCK_MONOTONIC right after the acknowledgement and the `mzxid` ZooKeeper returned.
//! * Before each `setData` it tells the reader which leaf is about to change. The reader polls
//!   every leaf with a change it has not seen yet, back to back (one `MULTI` per round), and
//!   sweeps all watched leaves every millisecond (so anomalies on the other leaves are seen too);
//!   it sleeps in `ppoll` on the pipe when there is nothing pending.
//! * Latency of a change = time the reply of the first read showing that change (or a later one
//!   on the same leaf) arrived − the writer's acknowledgement time. It is an upper bound, tight
//!   to one poll round (reported as the resolution).
//! * Reference pass, before the mirror starts: the same writer and pacing on 50 other leaves,
//!   and after each acknowledgement a `getData` of the same leaf, timed. That read is the one a
//!   mirror must make when the event arrives (ZooKeeper 3.8 sends no data or zxid with events),
//!   so its round trip is a floor under the propagation latency on this machine.
//! * Torn pair: a read whose data is sequence `s` but whose `mzxid` is not the zxid the writer got
//!   for `s` (lower: data newer than meta; higher: meta newer than data). Backwards: a `mzxid`
//!   below one already seen on that key. Blank: data or meta absent.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zkmirror::testing::Keys;

use crate::support::{self, mono_ns, CpuSample, CpuUse, Guarded, Percentiles, Rng, Servers, Verdict, DATA_LEN, PREFIX};

/// Leaves the writer picks among (and the reader sweeps).
pub const WATCHED: usize = 50;
/// How often the reader reads every watched leaf, besides the pending ones.
const SWEEP_EVERY: Duration = Duration::from_millis(1);
/// After the writer ends, how long the reader keeps waiting for changes it has not seen.
const DRAIN: Duration = Duration::from_secs(3);
/// Sequence value standing for the data the tree was created with.
const INITIAL: i64 = -1;
/// Sequence value for data that is neither.
const GARBLED: i64 = -2;

// ---------------------------------------------------------------------------------------------
// What the helper processes write
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
pub struct WriterLog {
    /// `(seq, leaf, zxid, send_ns, ack_ns)` per change, in order (CLOCK_MONOTONIC).
    pub changes: Vec<(u64, u32, i64, u64, u64)>,
    /// CLOCK_REALTIME of each acknowledgement, to compare with the mirror's `mirrored_at`.
    pub ack_realtime_ns: Vec<u64>,
    pub started_ns: u64,
    pub ended_ns: u64,
    /// With `--read-after-ack` (the reference pass): per change, the round trip of a `getData`
    /// of the same leaf sent the moment the `setData` was acknowledged.
    #[serde(default)]
    pub read_after_ack_ns: Vec<i64>,
}

/// One run of identical reads of one leaf.
#[derive(Clone, Serialize, Deserialize)]
pub struct Seen {
    pub leaf: u32,
    /// The writer's sequence number in the data, [`INITIAL`] or [`GARBLED`].
    pub seq: i64,
    /// `None`: the key was absent (a blank read).
    pub mzxid: Option<i64>,
    /// The meta's `mirrored_at` (unix ms at which the mirror sent this version to Redis).
    pub mirrored_at_ms: Option<u64>,
    /// Reply time of the first and last read in the run.
    pub first_ns: u64,
    pub last_ns: u64,
    pub reads: u64,
}

#[derive(Default, Serialize, Deserialize)]
pub struct ReaderLog {
    pub seen: Vec<Seen>,
    pub reads: u64,
    pub blank_reads: u64,
    pub backwards_mzxid_reads: u64,
    pub backwards_data_reads: u64,
    /// Rounds that polled pending leaves, and their durations (request sent → reply read).
    pub pending_rounds: u64,
    pub pending_round_mean_us: f64,
    pub pending_round_p99_us: f64,
    pub pending_round_max_us: f64,
    pub sweeps: u64,
    pub sweep_mean_us: f64,
    pub sweep_period_ms: f64,
    pub duration_s: f64,
}

// ---------------------------------------------------------------------------------------------
// The result
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub znodes: usize,
    pub watched_leaves: usize,
    pub target_rate: f64,
    pub seconds: f64,
    pub changes: usize,
    pub achieved_rate: f64,
    /// Acknowledgement → first read showing it, over the changes that were seen.
    pub latency: Percentiles,
    /// Acknowledgement → the `mirrored_at` stamp of the version first seen: the part of the
    /// latency before the mirror sent its write to Redis (1 ms resolution: `mirrored_at` is
    /// unix ms, truncated; wall clock, compared with the writer's CLOCK_REALTIME).
    pub ack_to_mirrored_at: Percentiles,
    /// The writer's own `setData` round trip during the run (send → acknowledgement).
    pub zk_write: Percentiles,
    /// Reference pass, before the mirror starts, same writer and pacing: ZooKeeper's `setData`
    /// round trip, and the round trip of a `getData` sent at each acknowledgement, which is
    /// when a mirror learns of the change and must read it (3.8 sends no data with events).
    pub reference_seconds: f64,
    pub reference_zk_write: Percentiles,
    pub reference_zk_read_after_ack: Percentiles,
    /// The mirror's own histograms of its read and write round trips (bucket-interpolated).
    pub mirror_zk_read: support::HistogramQuantiles,
    pub mirror_redis_write: support::HistogramQuantiles,
    pub never_observed: usize,
    /// Changes seen by the reader before the writer had its acknowledgement (negative latency).
    pub observed_before_ack: usize,
    pub backwards_reads: u64,
    pub backwards_data_reads: u64,
    pub torn_data_newer_reads: u64,
    pub torn_meta_newer_reads: u64,
    pub blank_reads: u64,
    pub garbled_reads: u64,
    pub reader_reads: u64,
    /// Resolution: one polling round of the pending leaves.
    pub poll_round_mean_us: f64,
    pub poll_round_p99_us: f64,
    pub poll_round_max_us: f64,
    pub sweep_period_ms: f64,
    pub cpu_percent_mirror: f64,
    pub cpu_percent_zookeeper: f64,
    pub cpu_percent_redis: f64,
    pub cpu_percent_writer: f64,
    pub cpu_percent_reader: f64,
    /// CPU used by processes outside the benchmark meanwhile (another build, say).
    pub cpu_percent_outside: f64,
    pub verified_exact: bool,
}

// ---------------------------------------------------------------------------------------------
// Orchestration
// ---------------------------------------------------------------------------------------------

pub async fn run(nodes: usize, rate: f64, seconds: f64) -> Latency {
    let servers = Servers::start().await;
    let zk = servers.zk.connect_string();
    let redis_url = servers.redis.url();
    let client = support::zk_client(&zk).await;
    eprintln!("[latency] populating {nodes} znodes ...");
    support::populate(&client, nodes).await;
    let links = MirrorLinks { zk: zk.clone(), redis: redis_url.clone(), extra: Vec::new(), log_name: "latency" };
    let pids = [servers.zk.pid().unwrap_or(0), servers.redis.pid().unwrap_or(0)];
    run_on(&zk, &redis_url, pids, &links, nodes, rate, seconds).await
}

/// How the mirror reaches the servers: the same as the writer and the reader (plain TCP), or
/// other ports with TLS flags (the TLS section), while the writer and the reader stay plain.
pub struct MirrorLinks {
    pub zk: String,
    pub redis: String,
    pub extra: Vec<String>,
    pub log_name: &'static str,
}

/// The propagation measurement on servers that exist and a tree of `nodes` znodes under the
/// benchmark's root that is already there: the writer writes ZooKeeper at `zk`, the reader
/// polls Redis at `redis_url`, the mirror connects as `links` say. `server_pids`: ZooKeeper's
/// and Redis's, for the CPU figures.
pub async fn run_on(
    zk: &str,
    redis_url: &str,
    server_pids: [u32; 2],
    links: &MirrorLinks,
    nodes: usize,
    rate: f64,
    seconds: f64,
) -> Latency {
    let zk = zk.to_owned();
    let redis_url = redis_url.to_owned();
    let client = support::zk_client(&zk).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut support::redis_conn(&redis_url).await).await.expect("FLUSHALL");
    // The watched leaves and the mzxid of their initial value (what `INITIAL` stands for).
    let leaves = support::leaf_paths(nodes);
    let mut rng = Rng::new(0x5eed_0001);
    let watched = pick_leaves(&mut rng, &leaves, &[]);
    // The reference pass writes other leaves, so that its values never meet the reader.
    let reference_leaves = pick_leaves(&mut rng, &leaves, &watched);
    // An earlier pass on the same tree (the TLS section runs two) left its sequence numbers in
    // these leaves: back to the tree's initial value, or its values would read as backwards.
    let initial = vec![b'v'; support::DATA_LEN];
    for path in watched.iter().chain(&reference_leaves) {
        client.set_data(path, &initial, None).await.unwrap_or_else(|e| panic!("resetting {path}: {e}"));
    }
    let mut initial_mzxid = Vec::new();
    for path in &watched {
        initial_mzxid.push(client.get_data(path).await.expect("get_data").1.mzxid);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let paths_file = dir.path().join("watched");
    std::fs::write(&paths_file, watched.join("\n")).expect("writing the watched leaves");
    let writer_out = dir.path().join("writer.json");
    let reader_out = dir.path().join("reader.json");
    let reference_paths_file = dir.path().join("reference-leaves");
    std::fs::write(&reference_paths_file, reference_leaves.join("\n")).expect("writing the reference leaves");
    let writer_args = |paths: &Path, seconds: f64, out: &Path| {
        vec![
            "--zk".into(),
            zk.clone(),
            "--paths-file".into(),
            path_arg(paths),
            "--rate".into(),
            rate.to_string(),
            "--seconds".into(),
            seconds.to_string(),
            "--out".into(),
            path_arg(out),
        ]
    };

    // The reference: ZooKeeper alone at the same pacing, no mirror and no reader.
    let reference_seconds = seconds.min(5.0);
    let reference_out = dir.path().join("reference.json");
    let mut args = writer_args(&reference_paths_file, reference_seconds, &reference_out);
    args.push("--read-after-ack".into());
    let mut reference = support::role_command("latency-writer", &args);
    reference.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut reference = Guarded::spawn("the latency writer (reference pass)", reference);
    eprintln!("[latency] reference pass: {rate}/s for {reference_seconds} s, ZooKeeper alone ...");
    start_writer(&mut reference);
    reference.wait_success();
    let reference_log: WriterLog = read_json(&reference_out);

    let mut conn = support::redis_conn(&redis_url).await;
    let metrics_addr = format!("127.0.0.1:{}", zkmirror_testkit::servers::free_port());
    let mut extra: Vec<&str> = vec!["--metrics-addr", &metrics_addr];
    extra.extend(links.extra.iter().map(String::as_str));
    let mut mirror = support::spawn_mirror_with(&links.zk, &links.redis, links.log_name, &extra);
    support::wait_state(&mut conn, &mut mirror, "live", Duration::from_secs(600))
        .await
        .unwrap_or_else(|| panic!("the mirror did not reach `live`; see target/bench-logs/{}.log", links.log_name));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut writer = support::role_command("latency-writer", &writer_args(&paths_file, seconds, &writer_out));
    writer.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut writer = Guarded::spawn("the latency writer", writer);
    let to_reader = writer.child.stdout.take().expect("writer stdout");
    let mut reader = support::role_command(
        "latency-reader",
        &[
            "--redis".into(),
            redis_url.clone(),
            "--paths-file".into(),
            path_arg(&paths_file),
            "--out".into(),
            path_arg(&reader_out),
        ],
    );
    reader.stdin(Stdio::from(to_reader)).stdout(Stdio::piped());
    let mut reader = Guarded::spawn("the latency reader", reader);
    let mut ready = String::new();
    BufReader::new(reader.child.stdout.take().expect("reader stdout")).read_line(&mut ready).expect("reader ready");
    assert_eq!(ready.trim(), "ready", "the reader did not start");

    let pids = [mirror.pid(), server_pids[0], server_pids[1], writer.pid(), reader.pid(), std::process::id()];
    let cpu = CpuSample::take(&pids);
    eprintln!("[latency] writing {rate}/s for {seconds} s on {} leaves; reader polling ...", watched.len());
    start_writer(&mut writer);
    writer.wait_exited_unreaped();
    let cpu = cpu.since(&pids);
    writer.wait_success();
    reader.wait_success();

    let writer_log: WriterLog = read_json(&writer_out);
    let reader_log: ReaderLog = read_json(&reader_out);
    let (report, _) = support::verify(&client, &mut conn).await;
    mirror.assert_running();
    // The mirror's own view of its two round trips per change (includes its cold sync's reads
    // and writes, which are few requests next to 4,000 changes).
    let mirror_zk_read = support::scrape_histogram_ms(&metrics_addr, "zkmirror_zookeeper_read_seconds");
    let mirror_redis_write = support::scrape_histogram_ms(&metrics_addr, "zkmirror_redis_write_seconds");
    mirror.stop();
    let mut latency = analyse(nodes, rate, seconds, &initial_mzxid, &writer_log, &reader_log, cpu, report.is_exact());
    latency.reference_seconds = reference_seconds;
    latency.mirror_zk_read = mirror_zk_read.unwrap_or_default();
    latency.mirror_redis_write = mirror_redis_write.unwrap_or_default();
    latency.reference_zk_write = Percentiles::of(write_round_trips(&reference_log));
    latency.reference_zk_read_after_ack = Percentiles::of(reference_log.read_after_ack_ns.clone());
    latency
}

/// Up to [`WATCHED`] distinct leaves picked at random, none of them in `taken`.
fn pick_leaves(rng: &mut Rng, leaves: &[String], taken: &[String]) -> Vec<String> {
    let mut picked: Vec<String> = Vec::new();
    while picked.len() < WATCHED.min(leaves.len() - taken.len()) {
        let path = &leaves[rng.below(leaves.len())];
        if !taken.contains(path) && !picked.contains(path) {
            picked.push(path.clone());
        }
    }
    picked
}

/// Lets a writer that waits for `go` on its stdin begin.
fn start_writer(writer: &mut Guarded) {
    writer.child.stdin.take().expect("writer stdin").write_all(b"go\n").expect("starting the writer");
}

fn write_round_trips(log: &WriterLog) -> Vec<i64> {
    log.changes.iter().map(|&(_, _, _, send_ns, ack_ns)| ack_ns as i64 - send_ns as i64).collect()
}

#[allow(clippy::too_many_arguments)]
fn analyse(
    nodes: usize,
    rate: f64,
    seconds: f64,
    initial_mzxid: &[i64],
    writer: &WriterLog,
    reader: &ReaderLog,
    cpu: CpuUse,
    verified_exact: bool,
) -> Latency {
    let zxid_of: HashMap<u64, i64> = writer.changes.iter().map(|&(seq, _, zxid, _, _)| (seq, zxid)).collect();
    let mut seen_by_leaf: HashMap<u32, Vec<&Seen>> = HashMap::new();
    for s in &reader.seen {
        seen_by_leaf.entry(s.leaf).or_default().push(s);
    }
    let mut latencies = Vec::new();
    let mut never_observed = 0;
    let mut observed_before_ack = 0;
    // Every change, for whoever wants to look at the outliers (not part of the figures).
    let mut to_mirror = Vec::new();
    let mut detail = String::from("seq\tleaf\tzxid\tsent_ms\tack_ms\tseen_ms\tlatency_ms\tack_to_mirrored_at_ms\n");
    for (i, &(seq, leaf, zxid, send_ns, ack_ns)) in writer.changes.iter().enumerate() {
        let first = seen_by_leaf.get(&leaf).and_then(|seen| {
            seen.iter().filter(|s| s.seq >= seq as i64 && s.mzxid.is_some()).min_by_key(|s| s.first_ns)
        });
        let ms = |t: u64| (t as i64 - writer.started_ns as i64) as f64 / 1e6;
        match first {
            Some(s) => {
                let t = s.first_ns;
                let latency = t as i64 - ack_ns as i64;
                if latency < 0 {
                    observed_before_ack += 1;
                }
                latencies.push(latency);
                // The mirror's own timestamp of the version first seen (unix ms, truncated).
                let mirror_part = match (s.mirrored_at_ms, writer.ack_realtime_ns.get(i)) {
                    (Some(at), Some(&ack)) => {
                        let part = (at * 1_000_000) as i64 - ack as i64;
                        to_mirror.push(part);
                        format!("{:.3}", part as f64 / 1e6)
                    }
                    _ => String::new(),
                };
                detail += &format!(
                    "{seq}\t{leaf}\t{zxid}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{mirror_part}\n",
                    ms(send_ns),
                    ms(ack_ns),
                    ms(t),
                    latency as f64 / 1e6
                );
            }
            None => {
                never_observed += 1;
                detail += &format!("{seq}\t{leaf}\t{zxid}\t{:.3}\t{:.3}\tnever\t\n", ms(send_ns), ms(ack_ns));
            }
        }
    }
    let _ = std::fs::write(support::log_dir().join("latency-changes.tsv"), detail);
    let (mut torn_data_newer, mut torn_meta_newer, mut garbled) = (0, 0, 0);
    for s in &reader.seen {
        let Some(mzxid) = s.mzxid else { continue };
        let expected = match s.seq {
            INITIAL => Some(initial_mzxid[s.leaf as usize]),
            GARBLED => {
                garbled += s.reads;
                None
            }
            seq => zxid_of.get(&(seq as u64)).copied(),
        };
        match expected {
            Some(e) if mzxid < e => torn_data_newer += s.reads,
            Some(e) if mzxid > e => torn_meta_newer += s.reads,
            _ => {}
        }
    }
    let span_s = (writer.ended_ns.saturating_sub(writer.started_ns)) as f64 / 1e9;
    Latency {
        znodes: nodes,
        watched_leaves: initial_mzxid.len(),
        target_rate: rate,
        seconds,
        changes: writer.changes.len(),
        achieved_rate: writer.changes.len() as f64 / span_s.max(1e-9),
        latency: Percentiles::of(latencies),
        ack_to_mirrored_at: Percentiles::of(to_mirror),
        zk_write: Percentiles::of(write_round_trips(writer)),
        reference_seconds: 0.0,
        reference_zk_write: Percentiles::default(),
        reference_zk_read_after_ack: Percentiles::default(),
        mirror_zk_read: Default::default(),
        mirror_redis_write: Default::default(),
        never_observed,
        observed_before_ack,
        backwards_reads: reader.backwards_mzxid_reads,
        backwards_data_reads: reader.backwards_data_reads,
        torn_data_newer_reads: torn_data_newer,
        torn_meta_newer_reads: torn_meta_newer,
        blank_reads: reader.blank_reads,
        garbled_reads: garbled,
        reader_reads: reader.reads,
        poll_round_mean_us: reader.pending_round_mean_us,
        poll_round_p99_us: reader.pending_round_p99_us,
        poll_round_max_us: reader.pending_round_max_us,
        sweep_period_ms: reader.sweep_period_ms,
        cpu_percent_mirror: cpu.processes[0],
        cpu_percent_zookeeper: cpu.processes[1],
        cpu_percent_redis: cpu.processes[2],
        cpu_percent_writer: cpu.processes[3],
        cpu_percent_reader: cpu.processes[4],
        cpu_percent_outside: cpu.outside,
        verified_exact,
    }
}

pub fn verdicts(r: &Latency) -> Vec<Verdict> {
    let at = format!("at {:.0}/s", r.target_rate);
    let torn = r.torn_data_newer_reads + r.torn_meta_newer_reads;
    vec![
        Verdict::new(
            format!("propagation p50 {at}"),
            "≤ 0.5 ms",
            format!("{:.3} ms", r.latency.p50_ms),
            r.latency.count > 0 && r.latency.p50_ms <= 0.5,
        ),
        Verdict::new(
            format!("propagation p99 {at}"),
            "≤ 1.5 ms",
            format!("{:.3} ms", r.latency.p99_ms),
            r.latency.count > 0 && r.latency.p99_ms <= 1.5,
        ),
        Verdict::new("changes never seen by the reader", "0", r.never_observed.to_string(), r.never_observed == 0),
        Verdict::new("backwards reads (mzxid went down)", "0", r.backwards_reads.to_string(), r.backwards_reads == 0),
        Verdict::new("torn reads (data and mzxid disagree)", "0", torn.to_string(), torn == 0),
        Verdict::new("blank reads (key absent)", "0", r.blank_reads.to_string(), r.blank_reads == 0),
    ]
}

pub fn print(r: &Latency, verdicts: &[Verdict]) {
    println!();
    println!(
        "2. Propagation latency ({} changes at {:.0}/s target, {:.1}/s achieved, {} random leaves of {} znodes, separate writer and reader processes)",
        r.changes, r.target_rate, r.achieved_rate, r.watched_leaves, r.znodes
    );
    println!(
        "   ack → first read showing it: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (min {:.3} ms, {} seen before the ack)",
        r.latency.p50_ms, r.latency.p90_ms, r.latency.p99_ms, r.latency.max_ms, r.latency.min_ms, r.observed_before_ack
    );
    println!(
        "   of which ack → the mirror's mirrored_at stamp (1 ms resolution): p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        r.ack_to_mirrored_at.p50_ms, r.ack_to_mirrored_at.p90_ms, r.ack_to_mirrored_at.p99_ms, r.ack_to_mirrored_at.max_ms
    );
    println!(
        "   ZooKeeper itself: setData round trip p50 {:.3} ms p99 {:.3} ms during the run; reference pass without the mirror ({:.0} s, same pacing): setData p50 {:.3} ms p99 {:.3} ms, and a getData sent at each ack p50 {:.3} ms p99 {:.3} ms (the read a mirror must make; 3.8 sends no data with events)",
        r.zk_write.p50_ms, r.zk_write.p99_ms, r.reference_seconds, r.reference_zk_write.p50_ms, r.reference_zk_write.p99_ms,
        r.reference_zk_read_after_ack.p50_ms, r.reference_zk_read_after_ack.p99_ms
    );
    println!(
        "   the mirror's own round trips (its histograms, bucket-interpolated): ZooKeeper read p50 {:.3} ms p99 {:.3} ms ({} requests); Redis write p50 {:.3} ms p99 {:.3} ms ({} pipelines)",
        r.mirror_zk_read.p50_ms, r.mirror_zk_read.p99_ms, r.mirror_zk_read.count,
        r.mirror_redis_write.p50_ms, r.mirror_redis_write.p99_ms, r.mirror_redis_write.count
    );
    println!(
        "   resolution: one poll round of the pending leaves, mean {:.1} µs (p99 {:.1} µs, max {:.1} µs); all {} leaves also swept every {:.2} ms; {} reads in all",
        r.poll_round_mean_us, r.poll_round_p99_us, r.poll_round_max_us, r.watched_leaves, r.sweep_period_ms, r.reader_reads
    );
    println!(
        "   reads: backwards {}  torn {} (data newer {}, meta newer {})  blank {}  garbled {}  (backwards data seq {})",
        r.backwards_reads,
        r.torn_data_newer_reads + r.torn_meta_newer_reads,
        r.torn_data_newer_reads,
        r.torn_meta_newer_reads,
        r.blank_reads,
        r.garbled_reads,
        r.backwards_data_reads
    );
    println!(
        "   CPU during the run, % of one core: mirror {:.0}, ZooKeeper {:.0}, Redis {:.0}, writer {:.0}, reader {:.0}; outside the benchmark {:.0}; copy exact afterwards: {}",
        r.cpu_percent_mirror,
        r.cpu_percent_zookeeper,
        r.cpu_percent_redis,
        r.cpu_percent_writer,
        r.cpu_percent_reader,
        r.cpu_percent_outside,
        if r.verified_exact { "yes" } else { "NO" }
    );
    for v in verdicts {
        println!("   {:<42} {:>12}  target {:<10} {}", v.what, v.measured, v.target, v.mark());
    }
}

// ---------------------------------------------------------------------------------------------
// The writer process
// ---------------------------------------------------------------------------------------------

/// `role latency-writer --zk Z --paths-file F --rate R --seconds S --out F`. Waits for `go` on
/// stdin; announces each change on stdout (to the reader) before sending it.
pub fn writer_main(args: &RoleArgs) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let paths = read_paths(&args.paths_file);
        let client = support::zk_client(&args.zk).await;
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).expect("waiting for go");
        let mut announce = std::io::stdout().lock();
        let mut rng = Rng::new(0x5eed_0002);
        let total = (args.rate * args.seconds).round() as u64;
        let period = Duration::from_secs_f64(1.0 / args.rate);
        let start = tokio::time::Instant::now();
        let mut log = WriterLog {
            changes: Vec::with_capacity(total as usize),
            ack_realtime_ns: Vec::with_capacity(total as usize),
            started_ns: mono_ns(),
            ended_ns: 0,
            read_after_ack_ns: Vec::new(),
        };
        for seq in 0..total {
            tokio::time::sleep_until(start + period * seq as u32).await;
            let leaf = rng.below(paths.len());
            let mut value = format!("{seq:020}").into_bytes();
            value.resize(DATA_LEN, b'.');
            writeln!(announce, "{leaf} {seq}").expect("announcing to the reader");
            announce.flush().expect("announcing to the reader");
            let send_ns = mono_ns();
            let stat = client.set_data(&paths[leaf], &value, None).await.expect("setData");
            let ack_ns = mono_ns();
            log.ack_realtime_ns.push(support::realtime_ns());
            log.changes.push((seq, leaf as u32, stat.mzxid, send_ns, ack_ns));
            if args.read_after_ack {
                client.get_data(&paths[leaf]).await.expect("getData");
                log.read_after_ack_ns.push(mono_ns() as i64 - ack_ns as i64);
            }
        }
        log.ended_ns = mono_ns();
        write_json(&args.out, &log);
    });
}

// ---------------------------------------------------------------------------------------------
// The reader process
// ---------------------------------------------------------------------------------------------

/// Per leaf: what the last read showed and the highest values seen so far.
#[derive(Default, Clone)]
struct LeafState {
    last: Option<usize>,
    max_mzxid: i64,
    max_seq: i64,
}

/// `role latency-reader --redis URL --paths-file F --out F`. Prints `ready`, then reads
/// announcements from stdin until it closes, polling as described in the module docs.
pub fn reader_main(args: &RoleArgs) {
    let paths = read_paths(&args.paths_file);
    let keys = Keys::new(PREFIX);
    let keys: Vec<(String, String)> = paths.iter().map(|p| (keys.data(p), keys.meta(p))).collect();
    let mut conn = support::redis_sync_conn(&args.redis);
    set_nonblocking(0);
    println!("ready");
    std::io::stdout().flush().expect("stdout");

    let started = mono_ns();
    let mut log = ReaderLog::default();
    let mut state = vec![LeafState { last: None, max_mzxid: i64::MIN, max_seq: i64::MIN }; keys.len()];
    let mut pending: Vec<(usize, i64)> = Vec::new();
    let mut input = Vec::new();
    let mut eof_at: Option<u64> = None;
    let mut round_ns: Vec<i64> = Vec::new();
    let (mut sweep_ns, mut next_sweep) = (0u64, mono_ns());
    let all: Vec<usize> = (0..keys.len()).collect();
    loop {
        if eof_at.is_none() && read_announcements(&mut input, &mut pending) {
            eof_at = Some(mono_ns());
        }
        let now = mono_ns();
        if let Some(eof) = eof_at {
            if pending.is_empty() || now - eof > DRAIN.as_nanos() as u64 {
                break;
            }
        }
        if !pending.is_empty() {
            let mut leaves: Vec<usize> = pending.iter().map(|&(l, _)| l).collect();
            leaves.sort_unstable();
            leaves.dedup();
            let t0 = mono_ns();
            let shown = read_round(&mut conn, &keys, &leaves);
            let t1 = mono_ns();
            round_ns.push((t1 - t0) as i64);
            log.pending_rounds += 1;
            record(&mut log, &mut state, &leaves, &shown, t1);
            pending.retain(|&(leaf, seq)| state[leaf].max_seq < seq);
        } else if now >= next_sweep {
            let t0 = mono_ns();
            let shown = read_round(&mut conn, &keys, &all);
            let t1 = mono_ns();
            sweep_ns += t1 - t0;
            log.sweeps += 1;
            record(&mut log, &mut state, &all, &shown, t1);
            next_sweep = t1 + SWEEP_EVERY.as_nanos() as u64;
        } else {
            wait_readable(0, Duration::from_nanos(next_sweep - now));
        }
        // A sweep is due even while changes are pending, so that no leaf goes unread for long.
        if !pending.is_empty() && mono_ns() >= next_sweep {
            let t0 = mono_ns();
            let shown = read_round(&mut conn, &keys, &all);
            let t1 = mono_ns();
            sweep_ns += t1 - t0;
            log.sweeps += 1;
            record(&mut log, &mut state, &all, &shown, t1);
            pending.retain(|&(leaf, seq)| state[leaf].max_seq < seq);
            next_sweep = t1 + SWEEP_EVERY.as_nanos() as u64;
        }
    }
    let ended = mono_ns();
    log.duration_s = (ended - started) as f64 / 1e9;
    log.pending_round_mean_us =
        if round_ns.is_empty() { 0.0 } else { round_ns.iter().sum::<i64>() as f64 / round_ns.len() as f64 / 1e3 };
    let rounds = Percentiles::of(round_ns);
    log.pending_round_p99_us = rounds.p99_ms * 1e3;
    log.pending_round_max_us = rounds.max_ms * 1e3;
    log.sweep_mean_us = if log.sweeps == 0 { 0.0 } else { sweep_ns as f64 / log.sweeps as f64 / 1e3 };
    log.sweep_period_ms = if log.sweeps == 0 { 0.0 } else { log.duration_s * 1e3 / log.sweeps as f64 };
    write_json(&args.out, &log);
}

/// What one read of one leaf showed.
struct Shown {
    data: Option<Vec<u8>>,
    mzxid: Option<i64>,
    mirrored_at_ms: Option<u64>,
}

/// Reads data, `mzxid` and `mirrored_at` of `leaves` in one MULTI/EXEC.
fn read_round(conn: &mut redis::Connection, keys: &[(String, String)], leaves: &[usize]) -> Vec<Shown> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for &leaf in leaves {
        pipe.get(&keys[leaf].0).cmd("HMGET").arg(&keys[leaf].1).arg("mzxid").arg("mirrored_at");
    }
    let values: Vec<redis::Value> = pipe.query(conn).expect("reading the watched leaves");
    let mut values = values.into_iter();
    let mut shown = Vec::with_capacity(leaves.len());
    for _ in leaves {
        let data: Option<Vec<u8>> = redis::from_redis_value(values.next().expect("data")).expect("data");
        let meta: (Option<String>, Option<String>) =
            redis::from_redis_value(values.next().expect("meta")).expect("meta");
        shown.push(Shown {
            data,
            mzxid: meta.0.and_then(|z| z.parse().ok()),
            mirrored_at_ms: meta.1.and_then(|t| t.parse().ok()),
        });
    }
    shown
}

/// Appends what one round showed to the log, counting blank and backwards reads.
fn record(log: &mut ReaderLog, state: &mut [LeafState], leaves: &[usize], shown: &[Shown], at: u64) {
    for (&leaf, Shown { data, mzxid, mirrored_at_ms }) in leaves.iter().zip(shown) {
        log.reads += 1;
        let st = &mut state[leaf];
        let (seq, mzxid) = match (data, mzxid) {
            (Some(data), Some(mzxid)) => (sequence_of(data), Some(*mzxid)),
            _ => {
                log.blank_reads += 1;
                (GARBLED, None)
            }
        };
        if let Some(z) = mzxid {
            if z < st.max_mzxid {
                log.backwards_mzxid_reads += 1;
            }
            if seq < st.max_seq && seq != GARBLED {
                log.backwards_data_reads += 1;
            }
            st.max_mzxid = st.max_mzxid.max(z);
            st.max_seq = st.max_seq.max(seq);
        }
        match st.last.map(|i| &mut log.seen[i]) {
            Some(last) if last.seq == seq && last.mzxid == mzxid => {
                last.reads += 1;
                last.last_ns = at;
            }
            _ => {
                log.seen.push(Seen {
                    leaf: leaf as u32,
                    seq,
                    mzxid,
                    mirrored_at_ms: *mirrored_at_ms,
                    first_ns: at,
                    last_ns: at,
                    reads: 1,
                });
                st.last = Some(log.seen.len() - 1);
            }
        }
    }
}

/// The writer's sequence number in a value, [`INITIAL`] for the tree's initial data.
fn sequence_of(data: &[u8]) -> i64 {
    if data.len() >= 20 && data[..20].iter().all(u8::is_ascii_digit) {
        std::str::from_utf8(&data[..20]).ok().and_then(|s| s.parse().ok()).unwrap_or(GARBLED)
    } else if !data.is_empty() && data.iter().all(|&b| b == b'v') {
        INITIAL
    } else {
        GARBLED
    }
}

/// Reads what is available on stdin (non-blocking) and queues `leaf seq` lines; true at EOF.
fn read_announcements(input: &mut Vec<u8>, pending: &mut Vec<(usize, i64)>) -> bool {
    let mut buf = [0u8; 4096];
    let eof = loop {
        // SAFETY: reading into a buffer we own from fd 0.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // 0: the writer closed the pipe; -1: nothing to read now (EAGAIN).
            break n == 0;
        }
        input.extend_from_slice(&buf[..n as usize]);
    };
    while let Some(end) = input.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = input.drain(..=end).collect();
        let line = String::from_utf8_lossy(&line);
        let mut parts = line.split_whitespace();
        if let (Some(leaf), Some(seq)) = (parts.next(), parts.next()) {
            pending.push((leaf.parse().expect("leaf"), seq.parse().expect("seq")));
        }
    }
    eof
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Sleeps until `fd` is readable or `timeout` passes (ppoll: microsecond timeouts).
fn wait_readable(fd: i32, timeout: Duration) {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ts = libc::timespec { tv_sec: timeout.as_secs() as _, tv_nsec: timeout.subsec_nanos() as _ };
    // SAFETY: one pollfd we own, a timespec we own, no signal mask.
    unsafe {
        libc::ppoll(&mut pfd, 1, &ts, std::ptr::null());
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the roles
// ---------------------------------------------------------------------------------------------

/// Arguments of the helper roles (each uses the ones it needs).
#[derive(clap::Args, Clone, Debug)]
pub struct RoleArgs {
    #[arg(long, default_value = "")]
    pub zk: String,
    #[arg(long, default_value = "")]
    pub redis: String,
    #[arg(long)]
    pub paths_file: PathBuf,
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    #[arg(long)]
    pub out: PathBuf,
    /// In-flight requests (ceiling writer).
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// Distinguishes the values of one ceiling step from another's.
    #[arg(long, default_value_t = 0)]
    pub tag: u64,
    /// Latency writer: after each acknowledgement, read the same leaf and record the round
    /// trip (the reference pass, without a mirror).
    #[arg(long)]
    pub read_after_ack: bool,
}

pub fn read_paths(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn path_arg(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_owned()
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) {
    let text = serde_json::to_string(value).expect("serialising");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Reads that saw a version go backwards, a torn pair, a blank or garbage, over `passes`: what
/// must stay 0 whatever the links (the TLS and several-targets sections compare two kinds).
pub fn broken_reads(passes: &[Latency]) -> u64 {
    passes
        .iter()
        .map(|l| {
            l.backwards_reads + l.torn_data_newer_reads + l.torn_meta_newer_reads + l.blank_reads + l.garbled_reads
        })
        .sum()
}

/// The median over `passes` of one figure of each.
pub fn median_of(passes: &[Latency], figure: fn(&Latency) -> f64) -> f64 {
    crate::support::median(&passes.iter().map(figure).collect::<Vec<_>>())
}
