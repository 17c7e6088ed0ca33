//! Redis behind Sentinel (`redis+sentinel://`), against real servers: a primary, a replica and
//! three sentinels per test (`testkit::servers::SentinelSetup`), ZooKeeper the plain shared
//! server. The mirror follows the primary through a failover and repairs what the failover lost
//! (replication is asynchronous); the one-shot commands read from the current primary; bad
//! URLs are refused at load.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::binary;
use common::chaos::{universe, Load};
use common::servers::SentinelSetup;
use common::world::{assert_converges, create_tree, test_config, RunningMirror, CONVERGE};
use common::{create_all, unique_root, wait_until, zk_client, ZkServer};
use tokio::sync::watch;
use zookeeper_client::Client;

/// How long a failover may take: `down-after-milliseconds` 1 s, the vote, the promotion, on a
/// loaded machine.
const FAILOVER: Duration = Duration::from_secs(60);

fn binary_path() -> &'static str {
    env!("CARGO_BIN_EXE_zkmirror")
}

/// A connection to the primary the sentinels of `url` name now, as the mirror makes it.
async fn primary_conn(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    zkmirror::redis_conn::connect(url, &Default::default(), None, &config)
        .await
        .unwrap_or_else(|e| panic!("connecting to the primary of {url}: {e}"))
}

/// `P:mirror` `zxid` on `conn`, if any.
async fn claimed_zxid(conn: &mut redis::aio::MultiplexedConnection) -> Option<i64> {
    let zxid: Option<String> = redis::cmd("HGET").arg("zk:mirror").arg("zxid").query_async(conn).await.ok()?;
    zxid?.parse().ok()
}

/// (a) A cold sync and live changes through the Sentinel URL: the copy on the primary the
/// sentinels name is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_sync_and_live_changes_through_the_sentinel_url() {
    let setup = SentinelSetup::start("zkm-a");
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("sentinel-cold");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 4, 2, 16).await;
    let mirror = RunningMirror::start(test_config(&zk_connect, &setup.url(), &root));
    let primary = setup.primary_url().await;
    assert_converges(&zk, &primary, "zk", &root).await;
    zk.set_data(&format!("{root}/n0"), b"changed", None).await.expect("set");
    create_all(&zk, &format!("{root}/new"), b"fresh").await;
    zk.delete(&format!("{root}/n1/n0"), None).await.expect("delete");
    assert_converges(&zk, &primary, "zk", &root).await;
    mirror.stop().await;
}

/// What the failover reader saw.
#[derive(Debug, Default)]
struct FailoverReads {
    reads: u64,
    /// Reads below an earlier read of the SAME server: never allowed.
    backwards: Vec<(String, i64, i64)>,
    /// Reads below an earlier read of a server read before (the old primary): what a failover
    /// may lose. Allowed; counted.
    back_across_failover: Vec<(String, i64, i64)>,
    torn: Vec<String>,
    /// `run_id`s of the servers read, in order.
    servers: Vec<String>,
    /// Times `P:mirror` `zxid` claimed a change Redis did not hold: `(path, zk mzxid, stored)`.
    dishonest: Vec<(String, i64, Option<i64>)>,
}

/// Polls every path of the chaos universe through the Sentinel URL (reconnecting to whatever
/// primary the sentinels name after a failure), and on each pass checks the watermark's claim:
/// for every path whose current ZooKeeper `mzxid` is at or below the `zxid` Redis claimed in the
/// same `MULTI` as the reads, Redis must hold that very version.
async fn read_through_failover(
    url: String,
    root: String,
    zk: Client,
    mut stopped: watch::Receiver<bool>,
) -> FailoverReads {
    let paths = universe(&root);
    let mut seen = FailoverReads::default();
    let mut highest_anywhere: HashMap<String, i64> = HashMap::new();
    let mut highest_here: HashMap<String, i64> = HashMap::new();
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    while !*stopped.borrow_and_update() {
        let Some(c) = conn.as_mut() else {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(2)));
            match zkmirror::redis_conn::connect(&url, &Default::default(), None, &config).await {
                Ok(mut fresh) => {
                    let info: String =
                        redis::cmd("INFO").arg("server").query_async(&mut fresh).await.unwrap_or_default();
                    let run_id = info.lines().find_map(|l| l.trim_end().strip_prefix("run_id:")).unwrap_or("?");
                    if seen.servers.last().map(String::as_str) != Some(run_id) {
                        seen.servers.push(run_id.to_owned());
                        highest_here.clear();
                    }
                    conn = Some(fresh);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("HGET").arg("zk:mirror").arg("zxid");
        for path in &paths {
            pipe.cmd("GET").arg(format!("zk:{{{path}}}"));
            pipe.cmd("HMGET").arg(format!("zk:{{{path}}}:meta")).arg("mzxid").arg("data_length");
        }
        type Pair = (Option<Vec<u8>>, (Option<String>, Option<String>));
        let answer: redis::RedisResult<(Option<String>, Vec<Pair>)> = async {
            let values: Vec<redis::Value> = pipe.query_async(c).await?;
            let mut values = values.into_iter();
            let zxid: Option<String> = redis::from_redis_value(values.next().unwrap_or(redis::Value::Nil))?;
            let rest: Vec<redis::Value> = values.collect();
            let mut pairs = Vec::new();
            for pair in rest.chunks(2) {
                let data: Option<Vec<u8>> = redis::from_redis_value(pair[0].clone())?;
                let meta: (Option<String>, Option<String>) = redis::from_redis_value(pair[1].clone())?;
                pairs.push((data, meta));
            }
            Ok((zxid, pairs))
        }
        .await;
        let (zxid, pairs) = match answer {
            Ok(answer) => answer,
            Err(_) => {
                conn = None;
                continue;
            }
        };
        let mut stored: HashMap<&str, i64> = HashMap::new();
        for (path, (data, (mzxid, length))) in paths.iter().zip(pairs) {
            seen.reads += 1;
            match (data, mzxid, length) {
                (None, None, None) => {}
                (Some(data), Some(mzxid), Some(length)) if length.parse::<usize>().ok() == Some(data.len()) => {
                    let mzxid: i64 = mzxid.parse().unwrap_or(i64::MIN);
                    stored.insert(path, mzxid);
                    if let Some(before) = highest_here.get(path).filter(|before| mzxid < **before) {
                        seen.backwards.push((path.clone(), *before, mzxid));
                    } else if let Some(before) = highest_anywhere.get(path).filter(|before| mzxid < **before) {
                        seen.back_across_failover.push((path.clone(), *before, mzxid));
                    }
                    let here = highest_here.entry(path.clone()).or_insert(mzxid);
                    *here = (*here).max(mzxid);
                    let anywhere = highest_anywhere.entry(path.clone()).or_insert(mzxid);
                    *anywhere = (*anywhere).max(mzxid);
                }
                _ => seen.torn.push(path.clone()),
            }
        }
        // The claim, judged against ZooKeeper read after it: a path's current version at or
        // below the claimed zxid was already current when Redis claimed it.
        if let Some(claimed) = zxid.and_then(|z| z.parse::<i64>().ok()) {
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

/// (b) The primary killed (`kill -9`) under load while a reader polls through the Sentinel URL:
/// the mirror follows the new primary and repairs it. What is promised across the failover,
/// exactly (see "Behind Redis Sentinel" in schema/layout.md):
/// - on any one server, no read ever sees a version go backwards (before the failover on the
///   old primary, after it on the new one, including while the mirror repairs it);
/// - from the old primary to the new one, a read may go back (writes the old one acknowledged
///   and never replicated are lost): allowed, and only there;
/// - `P:mirror` `zxid` never claims a change the server read does not hold, on either server;
/// - once the load stops, the new primary is the exact copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_under_load_the_mirror_follows_the_new_primary_and_repairs_it() {
    let mut setup = SentinelSetup::start("zkm-b");
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("sentinel-failover");
    create_all(&zk, &root, b"root").await;
    let mirror = RunningMirror::start(test_config(&zk_connect, &setup.url(), &root));
    let old = setup.first_primary_port();
    assert_converges(&zk, &setup.primary_url().await, "zk", &root).await;

    let load = Load::start(&zk_connect, &root, 14);
    let (stop_reader, stopped) = watch::channel(false);
    let reader = tokio::spawn(read_through_failover(setup.url(), root.clone(), zk_client(&zk_connect).await, stopped));
    // Let the load and the reader run on the first primary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    setup.kill_node(old);
    let new = setup.wait_for_new_primary(old, FAILOVER).await;
    assert_ne!(new, old);
    // The load goes on against the new primary for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let load = load.stop().await;
    let new_url = format!("redis://127.0.0.1:{new}/");
    assert_converges(&zk, &new_url, "zk", &root).await;
    stop_reader.send_replace(true);
    let seen = reader.await.expect("the reader task panicked");

    assert!(load.applied > 100, "the load hardly ran: {load:?}");
    assert!(seen.reads > 100, "the reader hardly read: {} reads", seen.reads);
    assert!(seen.servers.len() >= 2, "the reader never reached the new primary: {:?}", seen.servers);
    assert!(seen.backwards.is_empty(), "a version went backwards on one server: {:?}", seen.backwards);
    assert!(seen.torn.is_empty(), "data and meta disagreed: {:?}", seen.torn);
    assert!(seen.dishonest.is_empty(), "P:mirror zxid claimed changes Redis did not hold: {:?}", seen.dishonest);
    eprintln!(
        "reads {}, back across the failover {} (allowed), servers {:?}",
        seen.reads,
        seen.back_across_failover.len(),
        seen.servers
    );
    // The claim on the new primary, once exact, covers the whole tree.
    let mut conn = primary_conn(&setup.url()).await;
    wait_until(CONVERGE, "P:mirror zxid is claimed on the new primary", || {
        let mut conn = conn.clone();
        async move { claimed_zxid(&mut conn).await.ok_or("no zxid yet") }
    })
    .await;
    assert!(claimed_zxid(&mut conn).await.is_some());
    mirror.stop().await;
}

/// (b) The deterministic case: the replica is paused and cut off while the mirror writes, so
/// the primary acknowledges writes the replica never gets; the primary is then killed and the replica
/// promoted. The new primary holds the status hash (replicated long before) and an older copy:
/// nothing there says keys were lost. The mirror must still rewrite what differs, because it now
/// writes to another server (the Sentinel link reports the change of primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_promoted_replica_never_received_are_repaired() {
    let mut setup = SentinelSetup::start("zkm-lost");
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("sentinel-lost");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 3, 1, 8).await;
    let mirror = RunningMirror::start(test_config(&zk_connect, &setup.url(), &root));
    let old = setup.first_primary_port();
    let replica = setup.other_node_port(old);
    assert_converges(&zk, &setup.primary_url().await, "zk", &root).await;

    setup.pause_node(replica, true);
    setup.cut_replication(old);
    // Writes the primary acknowledges and the paused replica never receives.
    for i in 0..3 {
        zk.set_data(&format!("{root}/n{i}"), format!("lost-{i}").as_bytes(), None).await.expect("set");
    }
    create_all(&zk, &format!("{root}/born-while-paused"), b"x").await;
    assert_converges(&zk, &format!("redis://127.0.0.1:{old}/"), "zk", &root).await;
    setup.kill_node(old);
    setup.pause_node(replica, false);
    let new = setup.wait_for_new_primary(old, FAILOVER).await;
    assert_eq!(new, replica);
    // The new primary has the status hash and lacks the last writes (unless the mirror repaired
    // it already: then this test proves less, and says so).
    let mut conn = common::world::redis_conn(&format!("redis://127.0.0.1:{new}/")).await;
    let born: bool = redis::cmd("EXISTS")
        .arg(format!("zk:{{{root}/born-while-paused}}"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    eprintln!("the new primary held the znode created while cut off: {born}");
    // No ZooKeeper change from here on: only a reconcile can bring the lost writes back.
    assert_converges(&zk, &format!("redis://127.0.0.1:{new}/"), "zk", &root).await;
    mirror.stop().await;
}

/// The mechanism behind the repair, at the store: once the Sentinel link reaches another server
/// than the one it wrote to, every command fails (as in an outage) until the scripts are loaded
/// again (the engine's probe after an outage, always followed by a reconcile walk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_fails_commands_after_a_change_of_primary_until_the_scripts_are_reloaded() {
    use zkmirror::testing::Store;
    let mut setup = SentinelSetup::start("zkm-store");
    let config = test_config(&ZkServer::shared().connect_string(), &setup.url(), "/sentinel-store");
    let store = Store::new(&config).expect("store");
    store.load_scripts().await.expect("scripts on the first primary");
    store.write_status(&[("state", "live".to_owned())]).await.expect("status on the first primary");
    let old = setup.first_primary_port();
    setup.kill_node(old);
    let new = setup.wait_for_new_primary(old, FAILOVER).await;
    // The first command may still meet the dead connection; the next resolves the new primary.
    let refusal = wait_until(CONVERGE, "a command meets the change of primary", || async {
        match store.write_status(&[("state", "live".to_owned())]).await {
            Err(e) if e.to_string().contains("changed from") => Ok(e.to_string()),
            Err(e) => Err(format!("another error: {e}")),
            Ok(_) => Err("a write went through to the new primary unannounced".to_owned()),
        }
    })
    .await;
    assert!(
        refusal.contains(&format!("127.0.0.1:{old}")) && refusal.contains(&format!("127.0.0.1:{new}")),
        "{refusal}"
    );
    // Refused again until acknowledged.
    assert!(store.write_status(&[("state", "live".to_owned())]).await.is_err());
    store.load_scripts().await.expect("the scripts load on the new primary");
    store.write_status(&[("state", "live".to_owned())]).await.expect("status on the new primary");
}

/// (c) `status` and `verify` through the Sentinel URL read the current primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_verify_through_the_sentinel_url() {
    let setup = SentinelSetup::start("zkm-c");
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("sentinel-cli");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 3, 1, 8).await;
    let mirror = RunningMirror::start(test_config(&zk_connect, &setup.url(), &root));
    assert_converges(&zk, &setup.primary_url().await, "zk", &root).await;
    let url = setup.url();
    let status = binary::run(binary_path(), &["status", "--redis", &url]).await;
    assert_eq!(status.code, 0, "status: {}\n{}", status.stdout, status.stderr);
    let verify = binary::run(binary_path(), &["verify", "--zk", &zk_connect, "--redis", &url, "--root", &root]).await;
    assert_eq!(verify.code, 0, "verify: {}\n{}", verify.stdout, verify.stderr);
    let get = binary::run(binary_path(), &["get", &format!("{root}/n0"), "--redis", &url]).await;
    assert_eq!(get.code, 0, "get: {}\n{}", get.stdout, get.stderr);
    mirror.stop().await;
    // A sentinel set that names no such service: no answer, and the message says why.
    let unknown = url.replace("/zkm-c", "/no-such-service");
    let out = binary::run(binary_path(), &["status", "--redis", &unknown]).await;
    out.refused(&["cannot connect to Redis at", "no-such-service"]);
}

/// (d) Bad Sentinel URLs are refused before anything connects: exit 2, a message naming what
/// is missing, never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sentinel_urls_exit_2_with_a_clear_message() {
    let zk = ZkServer::shared().connect_string();
    for (url, needle) in [
        ("redis+sentinel://u:hunter2@127.0.0.1:26379", "no service"),
        ("redis+sentinel://u:hunter2@/svc", "no sentinel"),
        ("redis+sentinel://u:hunter2@127.0.0.1/svc", "is not HOST:PORT"),
    ] {
        binary::assert_url_refused_everywhere(binary_path(), &zk, url, needle, "hunter2").await;
    }
}
