//! A real Redis Cluster for the tests and the benchmark: `redis-server --cluster-enabled yes`
//! per node, each in its own temp dir on its own loopback port (its cluster bus port chosen free
//! too), joined by `redis-cli --cluster create ... --cluster-yes`. Every process is killed by pid
//! when the [`ClusterSetup`] is dropped (the nodes are [`crate::servers`]' guarded processes; the
//! `redis-cli` runs are waited for).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::servers::{free_port, SentinelNode};

const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// How long the nodes may take to agree (`cluster_state:ok` on every node).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A Redis Cluster: `masters` primaries, each with `replicas` replicas.
pub struct ClusterSetup {
    nodes: Vec<SentinelNode>,
    /// With TLS: each node's `tls-port`, in the order of `nodes`.
    tls_ports: Vec<u16>,
}

/// `cluster-node-timeout`: how long a silent primary counts as alive (small, for the failover
/// test: a replica is promoted about twice this after its primary died).
const NODE_TIMEOUT_MS: u64 = 1000;

impl ClusterSetup {
    /// 3 primaries, no replicas.
    pub fn start() -> ClusterSetup {
        ClusterSetup::start_with(3, 0)
    }

    pub fn start_with(masters: usize, replicas: usize) -> ClusterSetup {
        ClusterSetup::launch(masters, replicas, None)
    }

    /// 3 primaries whose clients, cluster bus and replication speak TLS (`tls-port`,
    /// `tls-cluster yes`, `tls-replication yes`, the server certificate of `tls`, clients
    /// authenticated when `tls.auth_clients`); each node's plain `port` stays open for the
    /// harness's own `redis-cli`. [`ClusterSetup::tls_url`] names the TLS ports.
    pub fn start_tls(tls: &crate::servers::RedisTls) -> ClusterSetup {
        ClusterSetup::launch(3, 0, Some(tls))
    }

    fn launch(masters: usize, replicas: usize, tls: Option<&crate::servers::RedisTls>) -> ClusterSetup {
        let mut tls_ports = Vec::new();
        let nodes: Vec<SentinelNode> = (0..masters * (1 + replicas))
            .map(|_| {
                let tls_port = std::cell::Cell::new(0);
                let node = SentinelNode::start("redis-cluster-node", false, |_| {
                    let mut lines = format!(
                        "save \"\"\nappendonly no\ncluster-enabled yes\ncluster-config-file nodes.conf\n\
                         cluster-node-timeout {NODE_TIMEOUT_MS}\ncluster-port {}\n\
                         cluster-require-full-coverage no\ncluster-allow-replica-migration no\n\
                         cluster-replica-validity-factor 0\nreplica-serve-stale-data yes\n",
                        free_port()
                    );
                    if let Some(tls) = tls {
                        tls_port.set(free_port());
                        let path = |p: &std::path::Path| format!("\"{}\"", p.display());
                        lines.push_str(&format!(
                            "tls-port {}\ntls-cluster yes\ntls-replication yes\ntls-cert-file {}\ntls-key-file {}\n\
                             tls-ca-cert-file {}\ntls-auth-clients {}\n",
                            tls_port.get(),
                            path(&tls.server.cert),
                            path(&tls.server.key),
                            path(&tls.client_ca),
                            if tls.auth_clients.is_some() { "yes" } else { "no" },
                        ));
                    }
                    lines
                });
                tls_ports.push(tls_port.get());
                node
            })
            .collect();
        let mut create = Command::new(REDIS_CLI);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.arg("--cluster-replicas").arg(replicas.to_string()).arg("--cluster-yes");
        let output = create.output().unwrap_or_else(|e| panic!("running redis-cli --cluster create: {e}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let setup = ClusterSetup { nodes, tls_ports: tls.map(|_| tls_ports).unwrap_or_default() };
        setup.wait_ready(masters);
        setup
    }

    /// Until every live node says `cluster_state:ok`, knows every node and sees all 16,384 slots
    /// served, and `masters` primaries.
    pub fn wait_ready(&self, masters: usize) {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < READY_TIMEOUT {
            let live: Vec<u16> = self.live_ports();
            let infos: Vec<String> = live.iter().map(|p| cli(*p, &["CLUSTER", "INFO"])).collect();
            let ok = infos.iter().all(|i| {
                i.contains("cluster_state:ok")
                    && i.contains("cluster_slots_ok:16384")
                    && i.contains(&format!("cluster_size:{masters}"))
            });
            let replicas_synced = live.iter().all(|p| {
                let info = cli(*p, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            });
            if ok && replicas_synced {
                eprintln!("[harness] Redis Cluster of {} nodes ready after {:?}", live.len(), started.elapsed());
                return;
            }
            last = format!("{infos:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("Redis Cluster not ready after {READY_TIMEOUT:?}: {last}");
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.process.is_some()).map(|n| n.port).collect()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...` (every node, replicas included).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `rediss+cluster://127.0.0.1:T1,...`: the nodes' TLS ports (a cluster started with
    /// [`ClusterSetup::start_tls`]).
    pub fn tls_url(&self) -> String {
        assert!(!self.tls_ports.is_empty(), "this cluster speaks no TLS");
        let hosts: Vec<String> = self.tls_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("rediss+cluster://{}", hosts.join(","))
    }

    /// `redis://127.0.0.1:PORT/` of one node.
    pub fn node_url(port: u16) -> String {
        format!("redis://127.0.0.1:{port}/")
    }

    /// The ports of the primaries now, each with its node id and its number of slots, as a live
    /// node's `CLUSTER NODES` says (`fail` nodes left out).
    pub fn primaries(&self) -> Vec<(u16, String, usize)> {
        let Some(port) = self.live_ports().first().copied() else { return Vec::new() };
        let nodes = cli(port, &["CLUSTER", "NODES"]);
        let mut primaries = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let node_port = fields[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            let slots: usize = fields[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
                    None => 1,
                })
                .sum();
            primaries.push((node_port, fields[0].to_owned(), slots));
        }
        primaries.sort();
        primaries
    }

    /// The primary serving `key` now (`CLUSTER KEYSLOT`, then `CLUSTER SLOTS` via `redis-cli`).
    pub fn primary_of(&self, key: &str) -> u16 {
        self.try_primary_of(key).unwrap_or_else(|why| panic!("{why}"))
    }

    fn try_primary_of(&self, key: &str) -> Result<u16, String> {
        let Some(port) = self.live_ports().first().copied() else { return Err("no live node".to_owned()) };
        let slot: usize =
            cli(port, &["CLUSTER", "KEYSLOT", key]).trim().parse().map_err(|e| format!("CLUSTER KEYSLOT: {e}"))?;
        let nodes = cli(port, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().filter(|r| !r.starts_with('[')).any(|r| match r.split_once('-') {
                Some((a, b)) => a.parse::<usize>().unwrap_or(1) <= slot && slot <= b.parse::<usize>().unwrap_or(0),
                None => r.parse::<usize>().ok() == Some(slot),
            });
            if serves {
                return Ok(fields[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).unwrap_or(0));
            }
        }
        Err(format!("no primary serves slot {slot}: {nodes}"))
    }

    /// Moves `slots` slots from the primary `from` to the primary `to` (node ids), keys and all
    /// (`redis-cli --cluster reshard`: `CLUSTER SETSLOT ... IMPORTING/MIGRATING`, `MIGRATE`,
    /// `SETSLOT ... NODE`, slot by slot). Blocks until done.
    pub fn reshard(&self, from: &str, to: &str, slots: usize) {
        let port = self.live_ports()[0];
        let output = Command::new(REDIS_CLI)
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--cluster-from", from, "--cluster-to", to, "--cluster-slots", &slots.to_string()])
            .args(["--cluster-yes", "--cluster-pipeline", "10"])
            .output()
            .unwrap_or_else(|e| panic!("running redis-cli --cluster reshard: {e}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster reshard failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Moves the slot of `key` from its primary to the primary `to` (a port) by hand, slowly, the
    /// way `redis-cli --cluster reshard` does it for each slot: `SETSLOT IMPORTING` on the target,
    /// `SETSLOT MIGRATING` on the source, a pause (commands on the slot meet `TRYAGAIN`, or `ASK`
    /// once their keys are gone), `MIGRATE` of every key, a pause (`ASK`), then `SETSLOT NODE` on
    /// every primary (`MOVED` from then on). Answers whether the slot moved (false: `key`'s
    /// primary is `to` already).
    pub fn migrate_slot_of(&self, key: &str, to: u16, pause: Duration) -> bool {
        let from = self.primary_of(key);
        if from == to {
            return false;
        }
        let slot = cli(from, &["CLUSTER", "KEYSLOT", key]).trim().to_owned();
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
        let (from_id, to_id) = (id(from), id(to));
        let ok = |port: u16, args: &[&str]| {
            let out = cli(port, args);
            assert!(out.contains("OK") || out.contains("NOKEY"), "{args:?} on port {port}: {out:?}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        std::thread::sleep(pause);
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "REPLACE", "KEYS"];
            args.extend(keys.iter().copied());
            ok(from, &args);
        }
        std::thread::sleep(pause);
        ok(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for (port, _, _) in self.primaries() {
            if port != from && port != to {
                ok(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
        true
    }

    /// Kills the node on `port` (SIGKILL, reaped): `kill -9`.
    pub fn kill_node(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap_or_else(|| panic!("no node on port {port}"));
        node.process = None;
    }

    /// The port of the replica of the primary on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let id = cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
        let nodes = cli(port, &["CLUSTER", "NODES"]);
        nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == id)
            .and_then(|f| f[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()))
            .unwrap_or_else(|| panic!("no replica of port {port}: {nodes}"))
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the node on `port`.
    pub fn pause_node(&mut self, port: u16, paused: bool) {
        let node = self.nodes.iter().find(|n| n.port == port).unwrap_or_else(|| panic!("no node on port {port}"));
        let pid = node.process.as_ref().map(|p| p.pid()).unwrap_or_else(|| panic!("port {port} is killed"));
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: a plain syscall on a child this process spawned and has not reaped.
        let rc = unsafe { libc::kill(pid as i32, signal) };
        assert_eq!(rc, 0, "signalling redis-server pid {pid}: {}", std::io::Error::last_os_error());
    }

    /// Runs `args` on the node on `port` through `redis-cli` and answers its output.
    pub fn ask(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }

    /// Waits until a primary other than `old` serves the slots `old` served and every live node
    /// says `cluster_state:ok`; answers its port.
    pub fn wait_for_failover(&self, old: u16, key: &str, deadline: Duration) -> u16 {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < deadline {
            let ok = self.live_ports().iter().all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                let now = self.try_primary_of(key).unwrap_or(old);
                if now != old {
                    return now;
                }
            }
            last = self.live_ports().first().map(|p| cli(*p, &["CLUSTER", "NODES"])).unwrap_or_default();
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("no failover of port {old} within {deadline:?}: {last}");
    }
}

/// `redis-cli -p PORT ARGS...`: its output, or the error as text (diagnostics and polling).
fn cli(port: u16, args: &[&str]) -> String {
    match Command::new(REDIS_CLI).arg("-p").arg(port.to_string()).args(args).output() {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(e) => format!("redis-cli: {e}"),
    }
}
