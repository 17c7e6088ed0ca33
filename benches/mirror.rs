//! zkmirror's benchmark (not a test). One command, on fresh ZooKeeper and Redis servers of its
//! own on loopback, measures in one run and prints a table per section plus a JSON file:
//!
//! 1. **Cold sync** ([`cold_sync`]): per tree size, the raw pipelined read of the tree with the
//!    same ZooKeeper client (the reference) against zkmirror's cold sync until Redis is exact;
//!    ratio, the mirror's CPU seconds and peak RSS.
//! 2. **Propagation latency** ([`latency`]): a separate writer process sets values at 200/s, a
//!    separate reader process polls Redis; ack → first read showing it, and any backwards,
//!    torn or blank read.
//! 3. **Write ceiling** ([`ceiling`]): a pipelined writer raises the `setData` rate step by step
//!    until ZooKeeper saturates; the mirror's lag and the time until Redis is exact again.
//! 4. **Reconcile** ([`reconcile`]): cut and restore the mirror's ZooKeeper connection on a quiet
//!    tree; time against the raw read and the Redis writes made.
//! 5. **Memory** ([`memory`]): the mirror's peak RSS over cold syncs of very different trees.
//! 6. **Failover** ([`failover`]): two `--ha` instances; kill -9 or SIGTERM the leader, change a
//!    znode at once; kill → the change visible in Redis, and the standby's CPU and RSS.
//! 7. **TLS** ([`tls`]): mutual TLS to both servers against plain TCP to the same servers,
//!    alternately: cold sync and propagation, as TLS / plain ratios.
//! 8. **Redis Cluster** ([`cluster`], `--only cluster`): a 3-primary cluster against one
//!    redis-server in the same run, alternately: cold sync and propagation, as cluster / single
//!    ratios, beside the machine's cores.
//! 9. **Several targets** ([`targets`], `--only targets`): one process writing three independent Redis servers
//!    against one, alternately: cold sync and propagation, as 3 / 1 ratios.
//!
//! Every figure is printed next to the reference it is measured against and the target,
//! judged from the measurement (never hard-coded). How each figure is measured, and its
//! resolution: `docs/performance-method.md`.
//!
//! Run it with `scripts/bench` (`--quick` for a short variant, `--help` for the options). The
//! mirror is the real `zkmirror run` binary in a separate process. The writer and the reader
//! are this binary again, started with the hidden `role NAME` subcommand.
//!
//! # Layout
//! - `mirror/support.rs`: clock, tree, processes, /proc, percentiles, machine, verdicts. The
//!   servers, processes, clients and waits it shares with the tests come from the dev-only
//!   `zkmirror-testkit` crate (`testkit/`).
//! - `mirror/cold_sync.rs`, `mirror/latency.rs`, `mirror/ceiling.rs`, `mirror/reconcile.rs`,
//!   `mirror/memory.rs`, `mirror/failover.rs`, `mirror/tls.rs`: one section each: its orchestration, its helper roles, its table and its verdicts.

#[path = "mirror/ceiling.rs"]
mod ceiling;
#[path = "mirror/cluster.rs"]
mod cluster;
#[path = "mirror/cold_sync.rs"]
mod cold_sync;
#[path = "mirror/failover.rs"]
mod failover;
#[path = "mirror/latency.rs"]
mod latency;
#[path = "mirror/memory.rs"]
mod memory;
#[path = "mirror/reconcile.rs"]
mod reconcile;
#[path = "mirror/support.rs"]
mod support;
#[path = "mirror/targets.rs"]
mod targets;
#[path = "mirror/tls.rs"]
mod tls;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use support::Verdict;

#[derive(Parser)]
#[command(
    name = "mirror",
    about = "zkmirror's benchmark: cold sync, propagation latency, write ceiling, reconcile, memory, failover"
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    /// Tree size for the cold sync (repeatable). Default: 20000 and 200000 (--quick: 20000).
    #[arg(long = "nodes")]
    nodes: Vec<usize>,
    /// A short variant for development: 20,000 znodes, one run, 5 s of latency, 3 s steps.
    #[arg(long)]
    quick: bool,
    /// Run only these sections (repeatable). Default: all.
    #[arg(long = "only", value_enum)]
    only: Vec<Section>,
    /// Tree size for the latency, ceiling and reconcile sections.
    #[arg(long, default_value_t = 20_000)]
    tree_nodes: usize,
    /// Interleaved runs of the raw read and the cold sync per size. Default 3 (--quick: 1).
    #[arg(long)]
    runs: Option<usize>,
    /// Propagation latency: changes per second.
    #[arg(long, default_value_t = 200.0)]
    latency_rate: f64,
    /// Propagation latency: seconds of writing. Default 20 (--quick: 5).
    #[arg(long)]
    latency_seconds: Option<f64>,
    /// Write ceiling: the target rates, in order; stepping stops once ZooKeeper achieves less
    /// than 90 % of a target.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000,10000,20000,40000,80000,160000")]
    rates: Vec<f64>,
    /// Write ceiling: seconds per step. Default 10 (--quick: 3).
    #[arg(long)]
    step_seconds: Option<f64>,
    /// Write ceiling: most setData requests in flight. 200 already saturates ZooKeeper here
    /// (a quick run reached 12,910/s with 200 and 11,221/s with 1000); a deeper pipeline only
    /// lengthens ZooKeeper's queue, which every reader of ZooKeeper, the mirror included, waits in.
    #[arg(long, default_value_t = 200)]
    window: usize,
    /// Failover: takeovers of each kind (kill -9 and SIGTERM, alternately). Default 10
    /// (--quick: 3).
    #[arg(long)]
    failover_rounds: Option<usize>,
    /// Failover: the instances' `--session-timeout`, in ms (the benchmark's ZooKeeper has
    /// tickTime=200, so it grants 400 to 4000).
    #[arg(long, default_value_t = 2000)]
    failover_session_ms: u64,
    /// Where to write the figures as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    ColdSync,
    Latency,
    Ceiling,
    Reconcile,
    Memory,
    Failover,
    /// Section 7: mutual TLS on both sides against plain TCP, same servers.
    Tls,
    /// Section 8: a 3-primary Redis Cluster against one redis-server, same run.
    Cluster,
    /// Section 9: one process writing three independent Redis targets against one.
    Targets,
}

/// The helper processes: this binary started again by the benchmark itself.
#[derive(Subcommand)]
enum Role {
    #[command(hide = true)]
    Role {
        #[arg(value_enum)]
        name: RoleName,
        #[command(flatten)]
        args: latency::RoleArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleName {
    LatencyWriter,
    LatencyReader,
    CeilingWriter,
}

fn main() {
    let cli = Cli::parse();
    if let Some(Role::Role { name, args }) = &cli.role {
        match name {
            RoleName::LatencyWriter => latency::writer_main(args),
            RoleName::LatencyReader => latency::reader_main(args),
            RoleName::CeilingWriter => ceiling::writer_main(args),
        }
        return;
    }
    let sizes = if !cli.nodes.is_empty() {
        cli.nodes.clone()
    } else if cli.quick {
        vec![20_000]
    } else {
        vec![20_000, 200_000]
    };
    let runs = cli.runs.unwrap_or(if cli.quick { 1 } else { 3 });
    let latency_seconds = cli.latency_seconds.unwrap_or(if cli.quick { 5.0 } else { 20.0 });
    let step_seconds = cli.step_seconds.unwrap_or(if cli.quick { 3.0 } else { 10.0 });
    let failover_rounds = cli.failover_rounds.unwrap_or(if cli.quick { 3 } else { 10 });
    let runs_section = |s: Section| cli.only.is_empty() || cli.only.contains(&s);

    support::pin_binaries();
    let machine = support::machine();
    let date = support::utc_now();
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // Each section starts its own servers (and drops them) so that none inherits another's load.
    let cold: Vec<cold_sync::ColdSync> = if runs_section(Section::ColdSync) {
        sizes.iter().map(|&n| runtime.block_on(cold_sync::run(n, runs))).collect()
    } else {
        Vec::new()
    };
    let latency = runs_section(Section::Latency)
        .then(|| runtime.block_on(latency::run(cli.tree_nodes, cli.latency_rate, latency_seconds)));
    let ceiling = runs_section(Section::Ceiling)
        .then(|| runtime.block_on(ceiling::run(cli.tree_nodes, &cli.rates, step_seconds, cli.window)));
    let reconcile =
        runs_section(Section::Reconcile).then(|| runtime.block_on(reconcile::run(cli.tree_nodes, runs.max(1))));
    let memory = runs_section(Section::Memory).then(|| runtime.block_on(memory::run()));
    let tls_section = runs_section(Section::Tls)
        .then(|| runtime.block_on(tls::run(cli.tree_nodes, runs, cli.latency_rate, latency_seconds.min(10.0))));
    let targets_section = runs_section(Section::Targets)
        .then(|| runtime.block_on(targets::run(cli.tree_nodes, runs, cli.latency_rate, latency_seconds.min(10.0))));
    let failover = runs_section(Section::Failover)
        .then(|| runtime.block_on(failover::run(failover_rounds, cli.failover_session_ms)));
    let cluster_section = runs_section(Section::Cluster).then(|| {
        let changes = if cli.quick { 200 } else { 1000 };
        runtime.block_on(cluster::run(sizes[0], runs, changes))
    });
    let versions = support::versions();
    support::unpin_binaries();
    let loadavg_at_end = support::loadavg();

    println!();
    println!(
        "zkmirror {} (git {}; measured binary: {}) benchmark, {date}; ZooKeeper {}, Redis {}",
        versions.zkmirror, versions.zkmirror_git, versions.zkmirror_binary, versions.zookeeper, versions.redis
    );
    println!(
        "machine: {} cores ({}), {} MB, Linux {}; load average at start {}, at end {}; took {:.0} s",
        machine.cores,
        machine.cpu_model,
        machine.memory_mb,
        machine.kernel,
        machine.loadavg_at_start,
        loadavg_at_end,
        started.elapsed().as_secs_f64()
    );
    println!(
        "tree: complete {}-ary, {} bytes per znode; servers: fresh per section, loopback; the mirror: `zkmirror run`, default settings",
        support::FANOUT,
        support::DATA_LEN
    );
    let mut verdicts: Vec<Verdict> = Vec::new();
    if !cold.is_empty() {
        let v = cold_sync::verdicts(&cold);
        cold_sync::print(&cold, &v);
        verdicts.extend(v);
    }
    if let Some(r) = &latency {
        let v = latency::verdicts(r);
        latency::print(r, &v);
        verdicts.extend(v);
    }
    if let Some(r) = &ceiling {
        let v = ceiling::verdicts(r);
        ceiling::print(r, &v);
        verdicts.extend(v);
    }
    if let Some(r) = &reconcile {
        let v = reconcile::verdicts(r);
        reconcile::print(r, &v);
        verdicts.extend(v);
    }
    if let Some(m) = &memory {
        let v = memory::verdicts(m);
        memory::print(m, &v);
        verdicts.extend(v);
    }
    if let Some(f) = &failover {
        let v = failover::verdicts(f);
        failover::print(f, &v);
        verdicts.extend(v);
    }
    if let Some(t) = &tls_section {
        let v = tls::verdicts(t);
        tls::print(t, &v);
        verdicts.extend(v);
    }
    if let Some(c) = &cluster_section {
        let v = cluster::verdicts(c);
        cluster::print(c, &v);
        verdicts.extend(v);
    }
    if let Some(t) = &targets_section {
        let v = targets::verdicts(t);
        targets::print(t, &v);
        verdicts.extend(v);
    }
    println!();
    let met = verdicts.iter().filter(|v| v.met).count();
    println!("Targets: {met} of {} met", verdicts.len());
    for v in &verdicts {
        println!("  {:<7} {:<62} {:>28}  (target {})", v.mark(), v.what, v.measured, v.target);
    }

    if let Some(path) = &cli.json {
        let figures = json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "date": date,
            "duration_s": started.elapsed().as_secs_f64(),
            "versions": versions,
            "machine": machine,
            "loadavg_at_end": loadavg_at_end,
            "settings": {
                "data_len": support::DATA_LEN,
                "fanout": support::FANOUT,
                "quick": cli.quick,
                "runs": runs,
                "tree_nodes": cli.tree_nodes,
                "latency_rate": cli.latency_rate,
                "latency_seconds": latency_seconds,
                "rates": cli.rates,
                "step_seconds": step_seconds,
                "window": cli.window,
                "failover_rounds": failover_rounds,
                "failover_session_ms": cli.failover_session_ms,
            },
            "cold_sync": cold,
            "latency": latency,
            "ceiling": ceiling,
            "reconcile": reconcile,
            "memory": memory,
            "failover": failover,
            "tls": tls_section,
            "cluster": cluster_section,
            "several_targets": targets_section,
            "targets": verdicts,
        });
        let text = serde_json::to_string_pretty(&figures).expect("serialising the figures");
        std::fs::write(path, text + "\n").unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("figures written to {}", path.display());
    }
}
