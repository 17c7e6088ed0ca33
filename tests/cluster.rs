//! Redis Cluster (`redis+cluster://`), against a real cluster per test (`testkit::cluster`: 3
//! primaries, and one replica each for the failover test), ZooKeeper the plain shared server.
//! Each fault test polls a reader during the fault that asserts no version goes backwards (and,
//! while the mirror says `live`, that `P:mirror` `zxid` claims nothing Redis lacks), and ends with
//! the exact-match check (`verify`, which scans every primary). See "Behind Redis Cluster" in
//! schema/layout.md for what is promised across slots.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::binary;
use common::chaos::{universe, Load};
use common::cluster::ClusterSetup;
use common::world::{any_conn, assert_converges_on, create_tree, test_config, RunningMirror, CONVERGE};
use common::{create_all, unique_root, wait_until, zk_client, ZkServer};
use tokio::sync::watch;
use zkmirror::redis_conn::RedisConn;
use zookeeper_client::Client;

fn binary_path() -> &'static str {
    env!("CARGO_BIN_EXE_zkmirror")
}

/// A path's data, and its meta's `mzxid` and `data_length`.
type Pair = (Option<Vec<u8>>, (Option<String>, Option<String>));

/// What the reader saw.
#[derive(Debug, Default)]
struct Reads {
    reads: u64,
    /// A read below an earlier read of the same path: never allowed (outside `may_step_back`).
    backwards: Vec<(String, i64, i64)>,
    /// Steps back on paths a failover may lose (their primary was killed): allowed, counted.
    back_across_failover: Vec<(String, i64, i64)>,
    torn: Vec<String>,
    /// `P:mirror` said `live` with a `zxid` covering a change Redis did not hold.
    dishonest: Vec<(String, i64, Option<i64>)>,
    /// Every `P:mirror` `state` read.
    states: HashSet<String>,
}

/// Polls every path of the chaos universe (each path's data and meta in one `MULTI` on its
/// slot's primary), after reading `P:mirror` `state` and `zxid`; checks that no version goes
/// backwards and that a `live` claim holds: a path whose ZooKeeper `mzxid` (read afterwards) is at
/// or below the claimed `zxid` must be held at that very version.
async fn read_during_fault(
    mut conn: RedisConn,
    root: String,
    zk: Client,
    may_step_back: HashSet<String>,
    mut stopped: watch::Receiver<bool>,
) -> Reads {
    let paths = universe(&root);
    let mut seen = Reads::default();
    let mut highest: HashMap<String, i64> = HashMap::new();
    while !*stopped.borrow_and_update() {
        let status: redis::RedisResult<(Option<String>, Option<String>)> =
            redis::cmd("HMGET").arg("zk:mirror").arg("state").arg("zxid").query_async(&mut conn).await;
        let Ok((state, zxid)) = status else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        seen.states.extend(state.clone());
        let mut stored: HashMap<&str, i64> = HashMap::new();
        let mut complete = true;
        for path in &paths {
            let mut pipe = redis::pipe();
            pipe.atomic().cmd("GET").arg(format!("zk:{{{path}}}"));
            pipe.cmd("HMGET").arg(format!("zk:{{{path}}}:meta")).arg("mzxid").arg("data_length");
            let answer: redis::RedisResult<Pair> = pipe.query_async(&mut conn).await;
            let Ok((data, (mzxid, length))) = answer else {
                complete = false;
                continue;
            };
            seen.reads += 1;
            match (data, mzxid, length) {
                (None, None, None) => {}
                (Some(data), Some(mzxid), Some(length)) if length.parse::<usize>().ok() == Some(data.len()) => {
                    let mzxid: i64 = mzxid.parse().unwrap_or(i64::MIN);
                    stored.insert(path, mzxid);
                    if let Some(before) = highest.get(path).filter(|before| mzxid < **before) {
                        if may_step_back.contains(path) {
                            seen.back_across_failover.push((path.clone(), *before, mzxid));
                        } else {
                            seen.backwards.push((path.clone(), *before, mzxid));
                        }
                    }
                    let high = highest.entry(path.clone()).or_insert(mzxid);
                    *high = (*high).max(mzxid);
                }
                _ => seen.torn.push(path.clone()),
            }
        }
        let claimed = zxid.and_then(|z| z.parse::<i64>().ok()).filter(|_| state.as_deref() == Some("live"));
        if let (Some(claimed), true) = (claimed, complete) {
            for path in &paths {
                if let Ok(Some(stat)) = zk.check_stat(path).await {
                    if stat.mzxid <= claimed && stored.get(path.as_str()) != Some(&stat.mzxid) {
                        seen.dishonest.push((path.clone(), stat.mzxid, stored.get(path.as_str()).copied()));
                    }
                }
            }
        }
    }
    seen
}

struct Fault {
    load: Load,
    stop_reader: watch::Sender<bool>,
    reader: tokio::task::JoinHandle<Reads>,
}

/// Starts the chaos load on `root` and the reader.
async fn start_fault(
    cluster_url: &str,
    zk_connect: &str,
    root: &str,
    seed: u64,
    may_step_back: HashSet<String>,
) -> Fault {
    let load = Load::start(zk_connect, root, seed);
    let (stop_reader, stopped) = watch::channel(false);
    let conn = any_conn(cluster_url).await;
    let reader =
        tokio::spawn(read_during_fault(conn, root.to_owned(), zk_client(zk_connect).await, may_step_back, stopped));
    Fault { load, stop_reader, reader }
}

/// Stops the load, waits for the exact copy, stops the reader and checks what it saw.
async fn finish_fault(fault: Fault, zk: &Client, conn: &RedisConn, root: &str) -> Reads {
    let load = fault.load.stop().await;
    assert_converges_on(zk, conn, "zk", root).await;
    fault.stop_reader.send_replace(true);
    let seen = fault.reader.await.expect("the reader task panicked");
    assert!(load.applied > 100, "the load hardly ran: {load:?}");
    assert!(seen.reads > 100, "the reader hardly read: {} reads", seen.reads);
    assert!(seen.backwards.is_empty(), "a version went backwards: {:?}", seen.backwards);
    assert!(seen.torn.is_empty(), "data and meta disagreed: {:?}", seen.torn);
    assert!(seen.dishonest.is_empty(), "P:mirror zxid claimed changes Redis did not hold: {:?}", seen.dishonest);
    eprintln!("reads {}, steps back across a failover {} (allowed)", seen.reads, seen.back_across_failover.len());
    seen
}

/// The change stream's entries for `path`, in order: (op, mzxid).
async fn stream_of(conn: &mut RedisConn, path: &str) -> Vec<(String, String)> {
    let entries: Vec<(String, HashMap<String, String>)> =
        redis::cmd("XRANGE").arg("zk:changes").arg("-").arg("+").query_async(conn).await.expect("XRANGE");
    entries
        .into_iter()
        .filter(|(_, fields)| fields.get("path").map(String::as_str) == Some(path))
        .map(|(_, fields)| (fields["op"].clone(), fields["mzxid"].clone()))
        .collect()
}

/// (1) A cold sync, live changes and the delete of a whole subtree through the Cluster URL: the
/// copy, spread over three primaries, is exact (`verify` scans each); every applied change has its
/// entry in the change stream (appended after the znode's script, in another slot); the one-shot
/// commands read through the same URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_sync_live_changes_and_a_deleted_subtree_are_exact_across_the_cluster() {
    let cluster = ClusterSetup::start();
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("cluster-cold");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 4, 3, 16).await;
    let mirror = RunningMirror::start(test_config(&zk_connect, &cluster.url(), &root));
    let conn = any_conn(&cluster.url()).await;
    assert_converges_on(&zk, &conn, "zk", &root).await;
    // The keys really are spread: every primary holds some of them.
    for (port, _, _) in cluster.primaries() {
        let keys = cluster.ask(port, &["DBSIZE"]);
        assert!(keys.trim().parse::<u64>().unwrap_or(0) > 5, "primary {port} holds {keys} keys");
    }

    zk.set_data(&format!("{root}/n0"), b"changed", None).await.expect("set");
    create_all(&zk, &format!("{root}/new/deeper"), b"fresh").await;
    // The whole subtree /n1 (1 + 4 + 16 znodes), deepest first.
    let mut doomed = vec![format!("{root}/n1")];
    for i in 0..4 {
        doomed.push(format!("{root}/n1/n{i}"));
        for j in 0..4 {
            doomed.push(format!("{root}/n1/n{i}/n{j}"));
        }
    }
    for path in doomed.iter().rev() {
        zk.delete(path, None).await.expect("delete");
    }
    assert_converges_on(&zk, &conn, "zk", &root).await;
    let mut conn2 = conn.clone();
    let changed = stream_of(&mut conn2, &format!("{root}/n0")).await;
    assert_eq!(changed.len(), 2, "the put of the cold sync and the change: {changed:?}");
    assert_eq!(changed[1].0, "put");
    let deleted = stream_of(&mut conn2, &format!("{root}/n1/n2/n3")).await;
    assert_eq!(deleted.iter().map(|(op, _)| op.as_str()).collect::<Vec<_>>(), ["put", "del"], "{deleted:?}");

    let url = cluster.url();
    let status = binary::run(binary_path(), &["status", "--redis", &url]).await;
    assert_eq!(status.code, 0, "status: {}\n{}", status.stdout, status.stderr);
    let verify = binary::run(binary_path(), &["verify", "--zk", &zk_connect, "--redis", &url, "--root", &root]).await;
    assert_eq!(verify.code, 0, "verify: {}\n{}", verify.stdout, verify.stderr);
    let get = binary::run(binary_path(), &["get", &format!("{root}/n0"), "--redis", &url]).await;
    assert_eq!(get.code, 0, "get: {}\n{}", get.stdout, get.stderr);
    assert!(get.stdout.contains("changed"), "{}", get.stdout);
    let ls = binary::run(binary_path(), &["ls", &root, "--redis", &url]).await;
    assert_eq!(ls.code, 0, "ls: {}\n{}", ls.stdout, ls.stderr);
    assert!(ls.stdout.contains("new") && !ls.stdout.contains("n1"), "{}", ls.stdout);
    mirror.stop().await;

    // Keys verify must find on every primary (it scans each): one extra znode per node, and the
    // mirror's sweep must find and confirm the same when it walks again.
    let mut conn3 = conn.clone();
    let mut extras: HashMap<u16, String> = HashMap::new();
    for i in 0.. {
        let path = format!("{root}/extra{i}");
        extras.entry(cluster.primary_of(&format!("zk:{{{path}}}"))).or_insert(path);
        if extras.len() == cluster.primaries().len() {
            break;
        }
    }
    for path in extras.values() {
        let _: () =
            redis::cmd("SET").arg(format!("zk:{{{path}}}")).arg("x").query_async(&mut conn3).await.expect("SET");
    }
    let report = zkmirror::verify::compare(&zk, &mut conn3, "zk", &root).await.expect("verify");
    let text = report.to_string();
    for path in extras.values() {
        assert!(text.contains(path.as_str()), "verify missed {path}: {text}");
    }
    let verify = binary::run(binary_path(), &["verify", "--zk", &zk_connect, "--redis", &url, "--root", &root]).await;
    assert_ne!(verify.code, 0, "verify missed the extra keys: {}\n{}", verify.stdout, verify.stderr);
    // A restarted mirror's sweep (SCAN on every primary) removes them all.
    let mirror = RunningMirror::start(test_config(&zk_connect, &cluster.url(), &root));
    assert_converges_on(&zk, &conn, "zk", &root).await;
    mirror.stop().await;
}

/// (2) Slots migrated under a write load (`redis-cli --cluster reshard`: `SETSLOT MIGRATING`/
/// `IMPORTING`, `MIGRATE`, `SETSLOT NODE`, twice, there and back): the mirror's scripts meet
/// `ASK`, `TRYAGAIN` and `MOVED` and are sent again one by one; nothing is lost or goes
/// backwards, and the copy is exact at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_migrated_under_load_lose_nothing_and_nothing_goes_backwards() {
    let cluster = ClusterSetup::start();
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("cluster-reshard");
    create_all(&zk, &root, b"root").await;
    let mirror = RunningMirror::start(test_config(&zk_connect, &cluster.url(), &root));
    let conn = any_conn(&cluster.url()).await;
    assert_converges_on(&zk, &conn, "zk", &root).await;

    let fault = start_fault(&cluster.url(), &zk_connect, &root, 21, HashSet::new()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0].1.clone(), primaries[1].1.clone());
    let cluster = std::sync::Arc::new(cluster);
    let resharding = cluster.clone();
    let keys: Vec<String> = universe(&root)
        .iter()
        .map(|p| format!("zk:{{{p}}}"))
        .chain(["zk:changes".to_owned(), "zk:mirror".to_owned()])
        .collect();
    let moved = tokio::task::spawn_blocking(move || {
        // Many slots at once, redis-cli's way; then, slowly, the very slots the load writes, the
        // change stream's and the status's, each to the next primary.
        resharding.reshard(&from, &to, 2000);
        let ports: Vec<u16> = resharding.primaries().into_iter().map(|(port, _, _)| port).collect();
        let mut moved = 0;
        for key in &keys {
            let owner = resharding.primary_of(key);
            let next = ports[(ports.iter().position(|p| *p == owner).unwrap_or(0) + 1) % ports.len()];
            moved += usize::from(resharding.migrate_slot_of(key, next, Duration::from_millis(150)));
        }
        // Once more for the root's slot (written at every create and delete below it), held in
        // migration for seconds, as a large slot or a slow `redis-cli --cluster` takes: its
        // scripts are answered TRYAGAIN for all that time, which must still be no outage.
        let root_key = &keys[0];
        let owner = resharding.primary_of(root_key);
        let next = ports[(ports.iter().position(|p| *p == owner).unwrap_or(0) + 1) % ports.len()];
        moved += usize::from(resharding.migrate_slot_of(root_key, next, Duration::from_secs(3)));
        moved
    })
    .await
    .expect("reshard");
    assert!(moved > 10, "only {moved} slots moved");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = finish_fault(fault, &zk, &conn, &root).await;
    // Redirects are followed, not taken for an outage: the mirror stayed live throughout.
    assert!(!seen.states.contains("degraded") && !seen.states.contains("reconciling"), "{:?}", seen.states);
    mirror.stop().await;
}

/// (3) A primary killed (`kill -9`) under load, its replica promoted (`cluster-node-timeout` 1 s):
/// the mirror sees the new primary's id, takes it for an outage and reconciles the whole subtree,
/// so writes the replica never received are rewritten; while it says `live`, `P:mirror` `zxid`
/// claims nothing Redis lacks; versions go back only on paths of the killed primary (what
/// asynchronous replication may lose), and the copy is exact at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_its_replica_promoted_the_copy_is_repaired() {
    let mut cluster = ClusterSetup::start_with(3, 1);
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("cluster-failover");
    create_all(&zk, &root, b"root").await;
    let mirror = RunningMirror::start(test_config(&zk_connect, &cluster.url(), &root));
    let conn = any_conn(&cluster.url()).await;
    assert_converges_on(&zk, &conn, "zk", &root).await;

    // The victim: the primary of a leaf's keys, not the status's node (so that the status can
    // say what the mirror sees; a failover of the status's node is test 3b's case).
    let status_node = cluster.primary_of("zk:mirror");
    let leaf = universe(&root)
        .into_iter()
        .find(|p| cluster.primary_of(&format!("zk:{{{p}}}")) != status_node)
        .expect("a znode on another primary than the status");
    let victim = cluster.primary_of(&format!("zk:{{{leaf}}}"));
    let on_victim: HashSet<String> =
        universe(&root).into_iter().filter(|p| cluster.primary_of(&format!("zk:{{{p}}}")) == victim).collect();
    assert!(!on_victim.is_empty());
    let fault = start_fault(&cluster.url(), &zk_connect, &root, 33, on_victim).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill_node(victim);
    let key = format!("zk:{{{leaf}}}");
    let promoted = tokio::task::block_in_place(|| cluster.wait_for_failover(victim, &key, Duration::from_secs(60)));
    assert_ne!(promoted, victim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = finish_fault(fault, &zk, &conn, &root).await;
    // Once its writes failed, the status said so (its node may well be up), rather than `live`
    // over a zxid the promoted node may not hold.
    assert!(seen.states.contains("degraded"), "states seen during the failover: {:?}", seen.states);
    // The claim, once exact, is there again and honest (the reader checked it while live).
    let mut c = conn.clone();
    let zxid: Option<String> = redis::cmd("HGET").arg("zk:mirror").arg("zxid").query_async(&mut c).await.expect("HGET");
    assert!(zxid.is_some());
    mirror.stop().await;
}

/// (3b) The deterministic case: the victim's replica is paused and cut off while the mirror
/// writes, so the primary acknowledges writes the replica never gets; the primary is then killed
/// and the replica promoted. ZooKeeper stays quiet afterwards and the status hash is on another
/// primary, so the mirror meets no error at all: only the new primary's id in the slot map
/// (refreshed every second) tells it, and only its reconcile can bring the lost writes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_promoted_replica_never_received_are_repaired() {
    let mut cluster = ClusterSetup::start_with(3, 1);
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("cluster-lost");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 12, 1, 8).await;
    let mirror = RunningMirror::start(test_config(&zk_connect, &cluster.url(), &root));
    let conn = any_conn(&cluster.url()).await;
    assert_converges_on(&zk, &conn, "zk", &root).await;

    let status_node = cluster.primary_of("zk:mirror");
    let victim = cluster
        .primaries()
        .into_iter()
        .map(|(port, _, _)| port)
        .find(|port| {
            *port != status_node && (0..12).any(|i| cluster.primary_of(&format!("zk:{{{root}/n{i}}}")) == *port)
        })
        .expect("a primary without the status hash that holds some znodes");
    let lost: Vec<String> = (0..12)
        .map(|i| format!("{root}/n{i}"))
        .filter(|p| cluster.primary_of(&format!("zk:{{{p}}}")) == victim)
        .collect();
    let replica = cluster.replica_of(victim);
    cluster.pause_node(replica, true);
    let killed = cluster.ask(victim, &["CLIENT", "KILL", "TYPE", "replica"]);
    assert!(killed.trim().parse::<u32>().unwrap_or(0) >= 1, "CLIENT KILL TYPE replica: {killed:?}");
    for path in &lost {
        zk.set_data(path, b"acknowledged-then-lost", None).await.expect("set");
    }
    assert_converges_on(&zk, &conn, "zk", &root).await;
    cluster.kill_node(victim);
    cluster.pause_node(replica, false);
    let promoted = tokio::task::block_in_place(|| {
        cluster.wait_for_failover(victim, &format!("zk:{{{}}}", lost[0]), Duration::from_secs(60))
    });
    assert_eq!(promoted, replica);
    let mut node = common::world::redis_conn(&ClusterSetup::node_url(replica)).await;
    let held: Option<Vec<u8>> =
        redis::cmd("GET").arg(format!("zk:{{{}}}", lost[0])).query_async(&mut node).await.expect("GET");
    eprintln!("the promoted replica held {:?} for {}", held.map(|d| String::from_utf8_lossy(&d).into_owned()), lost[0]);
    // No ZooKeeper change from here on: only a reconcile can bring the lost writes back.
    assert_converges_on(&zk, &conn, "zk", &root).await;
    mirror.stop().await;
}

/// The mechanism behind (3), at the store: once the slot map shows a primary it did not know (a
/// promoted replica), every command fails as in an outage until the scripts are loaded again
/// (the engine's probe after an outage, always followed by a reconcile walk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_fails_commands_after_a_failover_until_the_scripts_are_reloaded() {
    use zkmirror::testing::Store;
    let mut cluster = ClusterSetup::start_with(3, 1);
    let config = test_config(&ZkServer::shared().connect_string(), &cluster.url(), "/cluster-store");
    let store = Store::new(&config).expect("store");
    store.load_scripts().await.expect("scripts on every primary");
    store.write_status(&[("state", "live".to_owned())]).await.expect("status");
    let victim = cluster.primary_of("zk:mirror");
    cluster.kill_node(victim);
    tokio::task::block_in_place(|| cluster.wait_for_failover(victim, "zk:mirror", Duration::from_secs(60)));
    let refusal = wait_until(CONVERGE, "a command meets the change of primaries", || async {
        match store.write_status(&[("state", "live".to_owned())]).await {
            Err(e) if e.to_string().contains("primaries of the Redis Cluster changed") => Ok(e.to_string()),
            Err(e) => Err(format!("another error: {e}")),
            Ok(_) => Err("a write went through to the new primary unannounced".to_owned()),
        }
    })
    .await;
    assert!(refusal.contains("reconciling"), "{refusal}");
    assert!(store.write_status(&[("state", "live".to_owned())]).await.is_err());
    store.load_scripts().await.expect("the scripts load on the new primaries");
    store.write_status(&[("state", "live".to_owned())]).await.expect("status on the new primary");
}

/// (4) `SCRIPT FLUSH` on one primary while the mirror writes under load: its scripts answer
/// `NOSCRIPT` there; the mirror loads the scripts on every primary again and reconciles; nothing
/// goes backwards, and the copy is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_on_one_primary_while_running_recovers() {
    let cluster = ClusterSetup::start();
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("cluster-noscript");
    create_all(&zk, &root, b"root").await;
    let mirror = RunningMirror::start(test_config(&zk_connect, &cluster.url(), &root));
    let conn = any_conn(&cluster.url()).await;
    assert_converges_on(&zk, &conn, "zk", &root).await;
    let fault = start_fault(&cluster.url(), &zk_connect, &root, 45, HashSet::new()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node = cluster.primary_of(&format!("zk:{{{root}/k1}}"));
    for _ in 0..3 {
        assert!(cluster.ask(node, &["SCRIPT", "FLUSH"]).contains("OK"));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    finish_fault(fault, &zk, &conn, &root).await;
    // The scripts are back on the flushed node.
    let loaded = cluster.ask(node, &["SCRIPT", "EXISTS", &zkmirror_put_sha()]);
    assert!(loaded.trim() == "1", "put.lua on port {node}: {loaded:?}");
    mirror.stop().await;
}

/// The SHA1 of put.lua as loaded (common.lua, then the script).
fn zkmirror_put_sha() -> String {
    let text = format!("{}\n{}", include_str!("../schema/common.lua"), include_str!("../schema/put.lua"));
    redis::Script::new(&text).get_hash().to_owned()
}

/// (5) `--ha` in a cluster: a new leader's fence reaches every slot on every primary, so a deposed
/// leader's write is refused in slots on every node, also on nodes the new leader has not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_writes_are_refused_on_every_primary() {
    use zkmirror::testing::{Refusal, Store, Write, WriteOutcome, Znode, ZnodeStat};
    use zkmirror::{Leadership, MirrorConfig};
    let cluster = ClusterSetup::start();
    let store = |fence: i64| {
        let mut config = MirrorConfig::new("127.0.0.1:1", cluster.url(), "/app");
        config.leadership = Some(Leadership { instance: format!("i-{fence}"), since_ms: 1, fence });
        Store::new(&config).expect("store")
    };
    let znode = |path: &str, mzxid: i64| Znode {
        path: path.to_owned(),
        data: b"x".to_vec(),
        stat: ZnodeStat { czxid: 5, mzxid, pzxid: 5, data_length: 1, ..ZnodeStat::default() },
        children: Vec::new(),
    };
    let (old, new) = (store(10), store(20));
    old.load_scripts().await.expect("scripts");
    old.publish_fence().await.expect("the first leader publishes");
    // One path per primary.
    let primaries: Vec<u16> = cluster.primaries().into_iter().map(|(port, _, _)| port).collect();
    let mut paths: HashMap<u16, String> = HashMap::new();
    for i in 0.. {
        let path = format!("/app/p{i}");
        paths.entry(cluster.primary_of(&format!("zk:{{{path}}}"))).or_insert(path);
        if paths.len() == primaries.len() {
            break;
        }
    }
    let writes: Vec<Write> = paths.values().map(|p| Write::Put(znode(p, 5))).collect();
    let applied = old.apply(&writes, None, 1, None, 0).await.expect("the first leader writes");
    assert!(applied.outcomes.iter().all(|o| *o == WriteOutcome::Written), "{applied:?}");

    new.publish_fence().await.expect("the newer leader publishes");
    let late: Vec<Write> = paths.values().map(|p| Write::Put(znode(p, 9))).collect();
    let applied = old.apply(&late, None, 2, None, 0).await.expect("answered");
    assert_eq!(
        applied.outcomes,
        vec![WriteOutcome::Refused(Refusal::Fenced { seen: 20 }); late.len()],
        "the deposed leader's writes on ports {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    // Every fence key on every node holds the new token: count them per primary.
    let mut fenced = 0;
    for port in &primaries {
        let mut node = common::world::redis_conn(&ClusterSetup::node_url(*port)).await;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("zk:fence:*")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut node)
                .await
                .expect("SCAN");
            fenced += keys.len();
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    assert_eq!(fenced, 16_384);
    let mut conn = any_conn(&cluster.url()).await;
    let token: Option<String> = redis::cmd("GET")
        .arg(zkmirror::testing::Keys::new("zk").fence(9999))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(token.as_deref(), Some("20"));
}

/// `rediss+cluster://` with mutual TLS: every node speaks TLS to clients (and on its cluster
/// bus) and demands a client certificate; the mirror reaches each primary at the TLS port the
/// cluster reports, with the CA and identity of `--redis-tls-*`: the copy is exact, and `verify`
/// through the binary with the same files agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_every_node_of_the_cluster() {
    use common::tls::Pki;
    use zkmirror::redis_conn::RedisFiles;
    let pki = Pki::generate();
    let cluster = ClusterSetup::start_tls(&common::RedisTls::mutual(&pki));
    let url = cluster.tls_url();
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("cluster-tls");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 4, 2, 8).await;
    let files = RedisFiles {
        tls_ca: Some(&pki.ca),
        tls_cert: Some(&pki.client.cert),
        tls_key: Some(&pki.client.key),
        password_file: None,
    };
    let (tls, password) = files.load(&url).expect("the test's TLS files load");
    let mut config = test_config(&zk_connect, &url, &root);
    config.redis_tls = tls.clone();
    config.redis_password = password;
    let mirror = RunningMirror::start(config);
    let conn = zkmirror::redis_conn::connect_any(&url, &tls, None, &redis::AsyncConnectionConfig::new())
        .await
        .expect("a TLS connection to the cluster");
    assert_converges_on(&zk, &conn, "zk", &root).await;
    zk.set_data(&format!("{root}/n2"), b"over-tls", None).await.expect("set");
    assert_converges_on(&zk, &conn, "zk", &root).await;
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client.cert), path(&pki.client.key));
    let args = [
        "verify",
        "--zk",
        &zk_connect,
        "--redis",
        &url,
        "--root",
        &root,
        "--redis-tls-ca",
        &ca,
        "--redis-tls-cert",
        &cert,
        "--redis-tls-key",
        &key,
    ];
    let verify = binary::run(binary_path(), &args).await;
    assert_eq!(verify.code, 0, "verify: {}\n{}", verify.stdout, verify.stderr);
    mirror.stop().await;
}

/// Bad Cluster URLs are refused before anything connects: exit 2, a message naming what is
/// wrong, never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_urls_exit_2_with_a_clear_message() {
    let zk = ZkServer::shared().connect_string();
    for (url, needle) in [
        ("redis+cluster://u:hunter2@", "names no node"),
        ("redis+cluster://u:hunter2@127.0.0.1", "is not HOST:PORT"),
        ("redis+cluster://u:hunter2@127.0.0.1:7000/2", "database 0 only"),
    ] {
        binary::assert_url_refused_everywhere(binary_path(), &zk, url, needle, "hunter2").await;
    }
}

/// `zkmirror run` of `root` on the cluster at `url`, logging at `rust_log` into a folder of
/// its own (returned with it: the log lives as long as the folder).
fn run_on_cluster(zk_connect: &str, url: &str, root: &str, rust_log: &str) -> (tempfile::TempDir, binary::Daemon) {
    let logs = tempfile::tempdir().expect("a folder for the log");
    let log = logs.path().join("run.log");
    let daemon =
        binary::Daemon::start(binary_path(), &["--zk", zk_connect, "--redis", url, "--root", root], rust_log, &log);
    (logs, daemon)
}

/// The log's warnings about a `maxmemory-policy`.
fn policy_warnings(log: &str) -> usize {
    log.lines().filter(|l| l.contains("WARN") && l.contains("maxmemory-policy")).count()
}

/// Each primary of a cluster has its own `maxmemory-policy`: the start-up check asks every one
/// and warns about each evicting one by its address (before, only the first primary was asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_policy_on_any_primary_is_warned_about_by_node() {
    let cluster = ClusterSetup::start();
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("cluster-policy");
    create_all(&zk, &root, b"root").await;
    let policies = ["allkeys-lru", "volatile-ttl", "allkeys-random"];
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), policies.len(), "a 3-primary cluster");
    for ((port, _, _), policy) in primaries.iter().zip(policies) {
        assert!(cluster.ask(*port, &["CONFIG", "SET", "maxmemory-policy", policy]).contains("OK"));
    }
    let (_logs, mut daemon) = run_on_cluster(&zk_connect, &cluster.url(), &root, "info");
    for ((port, _, _), policy) in primaries.iter().zip(policies) {
        // The node in the message, not the seed URL every line carries in its `redis` field.
        let named = format!("maxmemory-policy is {policy}, not noeviction, on 127.0.0.1:{port}:");
        let line = daemon.wait_for_log(&named).await;
        assert!(line.contains("WARN") && line.contains("noeviction"), "{line}");
    }
    daemon.wait_for_log("cold sync done").await;
    let text = daemon.stop();
    assert_eq!(policy_warnings(&text), 3, "one warning per primary:\n{text}");
}

/// A primary that cannot be reached does not keep the others from being checked: it is asked
/// again later, and the evicting policies of the two that answer are warned about at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_check_goes_on_past_a_primary_that_is_down() {
    let mut cluster = ClusterSetup::start();
    let zk_connect = ZkServer::shared().connect_string();
    let root = unique_root("cluster-policy-down");
    let primaries = cluster.primaries();
    let (down, up) = (primaries[0].0, [primaries[1].0, primaries[2].0]);
    for port in up {
        assert!(cluster.ask(port, &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]).contains("OK"));
    }
    cluster.kill_node(down);
    let (_logs, mut daemon) = run_on_cluster(&zk_connect, &cluster.url(), &root, "info,zkmirror::service=debug");
    for port in up {
        let named = format!("maxmemory-policy is allkeys-lru, not noeviction, on 127.0.0.1:{port}:");
        let line = daemon.wait_for_log(&named).await;
        assert!(line.contains("WARN"), "{line}");
    }
    // Asked again at least once before the end, so that "each once" below means something.
    daemon.wait_for_lines(&[&format!("cannot check Redis's maxmemory-policy on 127.0.0.1:{down} yet")], 2).await;
    let text = daemon.stop();
    assert_eq!(
        policy_warnings(&text),
        2,
        "one warning per evicting primary, each once, though the check is retried:\n{text}"
    );
}
