//! Scenarios against real ZooKeeper and Redis servers: arrange a tree, do something to the
//! world, assert that Redis converges to the exact copy.
//!
//! Most tests share one ZooKeeper (each under its own root) and start their own Redis, which is
//! cheap. Tests that cut ZooKeeper do it through their own proxy, not by stopping the server.

mod common;

use std::time::Duration;

use common::world::{
    assert_converges, create_tree, redis_conn, stored_mzxid, test_config, wait_for_field, RunningMirror,
};
use common::{create_all, unique_root, wait_until, zk_client, RedisServer, TcpProxy, ZkServer};
use zkmirror::Phase;
use zookeeper_client::{Acls, CreateMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_sync_copies_a_few_thousand_znodes_exactly() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("cold");
    create_all(&client, &root, b"root data").await;
    let created = create_tree(&client, &root, 15, 3, 64).await;
    assert_eq!(created, 15 + 225 + 3375);

    let mirror = RunningMirror::start(test_config(&zk.connect_string(), &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;
    let report = assert_converges(&client, &redis.url(), "zk", &root).await;
    assert_eq!(report.znodes as usize, created + 1);

    // The documented layout, spelled out literally rather than through the library.
    let mut conn = redis_conn(&redis.url()).await;
    let data: Vec<u8> = redis::cmd("GET").arg(format!("zk:{{{root}/n3/n4}}")).query_async(&mut conn).await.unwrap();
    assert_eq!(data, vec![b'x'; 64]);
    let children: Vec<String> =
        redis::cmd("SMEMBERS").arg(format!("zk:{{{root}}}:children")).query_async(&mut conn).await.unwrap();
    assert_eq!(children.len(), 15);
    // The status hash follows the phase within a heartbeat.
    wait_for_field(&conn, "zk:mirror", "state", "live").await;
    let status = mirror.handle.status();
    assert!(status.applied_zxid > 0, "{status:?}");
    let zxid: String = redis::cmd("HGET").arg("zk:mirror").arg("zxid").query_async(&mut conn).await.unwrap();
    assert!(zxid.parse::<i64>().unwrap() >= status.applied_zxid, "status zxid {zxid} behind {status:?}");
    mirror.stop().await;
    let state: String = redis::cmd("HGET").arg("zk:mirror").arg("state").query_async(&mut conn).await.unwrap();
    assert_eq!(state, "stopped");
}

/// A cold sync sweeps Redis for keys of gone znodes only when Redis held some key of the
/// subtree before it began: into an empty Redis it skips the sweep, and keys left from an
/// earlier copy are still found and removed. Told apart by `SCAN` calls: the look before the
/// first write takes one page of an empty Redis, while a sweep pages through the copy's keys,
/// which the tree makes more than one page (`COUNT 1000`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_sync_sweeps_only_when_redis_held_the_subtree() {
    let zk = ZkServer::shared();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("sweep");
    create_all(&client, &root, b"").await;
    create_tree(&client, &root, 25, 2, 8).await;
    let scans = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("cmdstat_scan calls"))
    };
    // A reconnect on a loaded machine would start a reconcile, which sweeps: a long session
    // timeout keeps the connection through a slow moment.
    let config = |redis_url: &str| {
        let mut config = test_config(&zk.connect_string(), redis_url, &root);
        config.session_timeout = Duration::from_secs(20);
        config
    };

    // Into an empty Redis: no sweep, even with znodes deleted while the cold sync runs (the
    // watch, in place before the walk, reports each one the walk may already have written).
    let redis = RedisServer::start();
    let mirror = RunningMirror::start(config(&redis.url()));
    for i in 0..25 {
        client.delete(&format!("{root}/n4/n{i}"), None).await.unwrap();
    }
    client.delete(&format!("{root}/n4"), None).await.unwrap();
    mirror.wait_for_phase(Phase::Live).await;
    let mut conn = redis_conn(&redis.url()).await;
    // Read before verifying, which pages through SCAN too.
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    assert_eq!(scans(info), 1, "a cold sync into an empty Redis swept it");
    assert_converges(&client, &redis.url(), "zk", &root).await;
    mirror.stop().await;

    // Into a Redis holding keys of znodes that do not exist (one named by no children set at
    // all): the cold sync sweeps and removes them.
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis.url()).await;
    let gone = format!("{root}/gone");
    let orphan = format!("{root}/n1/nobody/knows");
    let _: () = redis::pipe()
        .set(format!("zk:{{{gone}}}"), "old")
        .hset(format!("zk:{{{gone}}}:meta"), "czxid", "1")
        .set(format!("zk:{{{orphan}}}"), "old")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mirror = RunningMirror::start(config(&redis.url()));
    mirror.wait_for_phase(Phase::Live).await;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    assert!(scans(info) >= 3, "the cold sync did not sweep a Redis that held the subtree");
    for key in [format!("zk:{{{gone}}}"), format!("zk:{{{gone}}}:meta"), format!("zk:{{{orphan}}}")] {
        let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
        assert!(!exists, "{key} survived the cold sync");
    }
    assert_converges(&client, &redis.url(), "zk", &root).await;
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_live_change_is_applied() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("live");
    create_all(&client, &format!("{root}/db/url"), b"postgres://a").await;
    create_all(&client, &format!("{root}/gone/deep/leaf"), b"bye").await;
    let mirror = RunningMirror::start(test_config(&zk.connect_string(), &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &redis.url(), "zk", &root).await;

    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    // data change, create, create with children, delete a subtree leaf-first, re-create
    client.set_data(&format!("{root}/db/url"), b"postgres://b", None).await.unwrap();
    client.create(&format!("{root}/new"), b"fresh", &persistent).await.unwrap();
    client.create(&format!("{root}/new/child"), b"", &persistent).await.unwrap();
    client.delete(&format!("{root}/gone/deep/leaf"), None).await.unwrap();
    client.delete(&format!("{root}/gone/deep"), None).await.unwrap();
    client.delete(&format!("{root}/gone"), None).await.unwrap();
    client.delete(&format!("{root}/db/url"), None).await.unwrap();
    client.create(&format!("{root}/db/url"), b"postgres://c", &persistent).await.unwrap();
    assert_converges(&client, &redis.url(), "zk", &root).await;

    // The change stream announced the deletes and puts, in the order applied.
    let mut conn = redis_conn(&redis.url()).await;
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg("zk:changes").arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let ops: Vec<(String, String)> = entries
        .iter()
        .map(|(_, fields)| {
            let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone()).unwrap_or_default();
            (get("op"), get("path"))
        })
        .collect();
    for path in ["/gone/deep/leaf", "/gone/deep", "/gone"] {
        assert!(ops.contains(&("del".into(), format!("{root}{path}"))), "no del of {path} in {ops:?}");
    }
    assert!(ops.contains(&("put".into(), format!("{root}/new/child"))), "{ops:?}");
    let last_url_put = ops.iter().rposition(|op| op == &("put".to_string(), format!("{root}/db/url")));
    let last_url_del = ops.iter().rposition(|op| op == &("del".to_string(), format!("{root}/db/url")));
    assert!(last_url_del < last_url_put, "re-create must come after delete: {ops:?}");
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_data_and_names_are_mirrored_exactly() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("edge");
    create_all(&client, &root, b"").await;
    create_all(&client, &format!("{root}/binary"), &[0, 159, 146, 150, 0, 255, b'\n', 0]).await;
    create_all(&client, &format!("{root}/empty"), b"").await;
    for name in ["with space", "ünïcødé ✓", "a:b", "{brace}", "x}:meta", "}", "{"] {
        create_all(&client, &format!("{root}/names/{name}"), name.as_bytes()).await;
    }
    let mut chain = format!("{root}/chain");
    for depth in 0..60 {
        chain.push_str(&format!("/d{depth}"));
    }
    create_all(&client, &chain, b"bottom").await;
    // The largest value the server accepts (jute.maxbuffer 0xfffff less the request's own
    // overhead): find it by trying, then mirror it.
    let big_path = format!("{root}/big");
    let mut size = 0xfffff;
    let stat = loop {
        match client.create(&big_path, &vec![7u8; size], &CreateMode::Persistent.with_acls(Acls::anyone_all())).await {
            Ok((stat, _)) => break stat,
            Err(_) if size > 1_000_000 => size -= 64,
            Err(e) => panic!("cannot create a {size}-byte znode: {e}"),
        }
    };
    assert!(stat.data_length as usize > 1_000_000);

    create_all(&client, &format!("{root}/queue"), b"").await;
    let persistent_seq = CreateMode::PersistentSequential.with_acls(Acls::anyone_all());
    for _ in 0..3 {
        client.create(&format!("{root}/queue/item-"), b"1", &persistent_seq).await.unwrap();
    }

    let mirror = RunningMirror::start(test_config(&zk.connect_string(), &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &redis.url(), "zk", &root).await;

    let mut conn = redis_conn(&redis.url()).await;
    let big: Vec<u8> = redis::cmd("GET").arg(format!("zk:{{{big_path}}}")).query_async(&mut conn).await.unwrap();
    assert_eq!(big.len(), size);
    let odd: Vec<u8> =
        redis::cmd("GET").arg(format!("zk:{{{root}/names/x}}:meta}}")).query_async(&mut conn).await.unwrap();
    assert_eq!(odd, b"x}:meta");
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_and_sequential_znodes_live_and_die_with_their_session() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("ephemeral");
    create_all(&client, &format!("{root}/workers"), b"").await;
    let mirror = RunningMirror::start(test_config(&zk.connect_string(), &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;

    let owner = zk_client(&zk.connect_string()).await;
    let ephemeral = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let (_, first) = owner.create(&format!("{root}/workers/w-"), b"10.0.0.1", &ephemeral).await.unwrap();
    let (_, second) = owner.create(&format!("{root}/workers/w-"), b"10.0.0.2", &ephemeral).await.unwrap();
    let first_path = format!("{root}/workers/w-{first}");
    let second_path = format!("{root}/workers/w-{second}");
    assert_converges(&client, &redis.url(), "zk", &root).await;
    let mut conn = redis_conn(&redis.url()).await;
    let owner_field: String = redis::cmd("HGET")
        .arg(format!("zk:{{{first_path}}}:meta"))
        .arg("ephemeral_owner")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(owner_field, owner.session_id().0.to_string());

    drop(owner); // closes the session: ZooKeeper deletes both ephemerals
    assert_converges(&client, &redis.url(), "zk", &root).await;
    for path in [&first_path, &second_path] {
        let exists: bool = redis::cmd("EXISTS").arg(format!("zk:{{{path}}}")).query_async(&mut conn).await.unwrap();
        assert!(!exists, "{path} still in Redis after its session ended");
    }
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_znode_with_twenty_thousand_children() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("wide");
    create_all(&client, &format!("{root}/wide"), b"").await;
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let names: Vec<String> = (0..20_000).map(|i| format!("{root}/wide/c{i:05}")).collect();
    // Half before the mirror starts (cold sync), half while it runs (live, coalesced).
    for chunk in names[..10_000].chunks(2000) {
        let creates: Vec<_> = chunk.iter().map(|p| client.create(p, b"v", &persistent)).collect();
        for result in futures::future::join_all(creates).await {
            result.unwrap();
        }
    }
    let mirror = RunningMirror::start(test_config(&zk.connect_string(), &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;
    for chunk in names[10_000..].chunks(2000) {
        let creates: Vec<_> = chunk.iter().map(|p| client.create(p, b"v", &persistent)).collect();
        for result in futures::future::join_all(creates).await {
            result.unwrap();
        }
    }
    assert_converges(&client, &redis.url(), "zk", &root).await;
    let mut conn = redis_conn(&redis.url()).await;
    let count: usize =
        redis::cmd("SCARD").arg(format!("zk:{{{root}/wide}}:children")).query_async(&mut conn).await.unwrap();
    assert_eq!(count, 20_000);
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_znodes_are_skipped_then_mirrored_once_readable_and_acl_changes_arrive() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("noauth");
    create_all(&client, &format!("{root}/open"), b"public").await;
    // A znode only its creator (digest user "owner") may read.
    let owner = zk_client(&zk.connect_string()).await;
    owner.auth("digest", b"owner:secret").await.unwrap();
    let secret = format!("{root}/secret");
    owner.create(&secret, b"classified", &CreateMode::Persistent.with_acls(Acls::creator_all())).await.unwrap();

    let mut config = test_config(&zk.connect_string(), &redis.url(), &root);
    config.anti_entropy_interval = Duration::from_millis(500);
    let mirror = RunningMirror::start(config);
    mirror.wait_for_phase(Phase::Live).await;
    // verify reads with the same (anonymous) identity: the secret must be absent from Redis.
    assert_converges(&client, &redis.url(), "zk", &root).await;
    let mut conn = redis_conn(&redis.url()).await;
    let leaked: bool = redis::cmd("EXISTS").arg(format!("zk:{{{secret}}}")).query_async(&mut conn).await.unwrap();
    assert!(!leaked, "an unreadable znode was copied");
    assert!(mirror.handle.status().unreadable > 0);

    // Opening it sends no event; the anti-entropy pass must find it.
    owner.set_acl(&secret, &Acls::anyone_all(), None).await.unwrap();
    let mirrored = wait_until(common::world::CONVERGE, "the opened znode is mirrored", || {
        let mut conn = conn.clone();
        let secret = secret.clone();
        async move {
            let data: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("zk:{{{secret}}}"))
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            data.ok_or_else(|| "not yet".to_string())
        }
    })
    .await;
    assert_eq!(mirrored, b"classified");
    // An ACL change on a readable znode only bumps aversion: also found by anti-entropy.
    client.set_acl(&format!("{root}/open"), &Acls::anyone_read(), None).await.unwrap();
    assert_converges(&client, &redis.url(), "zk", &root).await;
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_during_a_short_disconnect_appear_and_the_watch_is_restored() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(zk.addr());
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("disconnect");
    create_all(&client, &format!("{root}/a"), b"1").await;
    create_all(&client, &format!("{root}/b"), b"1").await;
    let mut config = test_config(&proxy.connect_string(), &redis.url(), &root);
    config.session_timeout = Duration::from_secs(4);
    let mirror = RunningMirror::start(config);
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &redis.url(), "zk", &root).await;

    proxy.cut();
    wait_until(common::world::CONVERGE, "the mirror notices the cut", || {
        let phase = mirror.handle.phase();
        async move {
            if phase == Phase::Degraded {
                Ok(())
            } else {
                Err(phase.to_string())
            }
        }
    })
    .await;
    client.set_data(&format!("{root}/a"), b"2", None).await.unwrap();
    client.delete(&format!("{root}/b"), None).await.unwrap();
    create_all(&client, &format!("{root}/c"), b"3").await;
    proxy.restore(); // well within the 4 s session: the session survives
    assert_converges(&client, &redis.url(), "zk", &root).await;

    // zookeeper-client does not restore persistent watches on reconnect; with anti-entropy off,
    // only a re-added watch can deliver this change.
    client.set_data(&format!("{root}/a"), b"after reconnect", None).await.unwrap();
    assert_converges(&client, &redis.url(), "zk", &root).await;
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_leads_to_a_new_session_and_an_exact_copy() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(zk.addr());
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("expiry");
    create_all(&client, &format!("{root}/a"), b"1").await;
    create_all(&client, &format!("{root}/b/c"), b"1").await;
    let mut config = test_config(&proxy.connect_string(), &redis.url(), &root);
    config.session_timeout = Duration::from_millis(800);
    let mirror = RunningMirror::start(config);
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &redis.url(), "zk", &root).await;
    let mut conn = redis_conn(&redis.url()).await;
    let walks_before = mirror.handle.status().walks;

    proxy.cut();
    client.set_data(&format!("{root}/a"), b"2", None).await.unwrap();
    client.delete(&format!("{root}/b/c"), None).await.unwrap();
    create_all(&client, &format!("{root}/d"), b"4").await;
    // Outlast the session timeout several times so the server expires the session.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Readers kept the old copy meanwhile: nothing was blanked.
    assert!(stored_mzxid(&mut conn, "zk", &format!("{root}/b/c")).await.is_some());
    proxy.restore();
    assert_converges(&client, &redis.url(), "zk", &root).await;
    assert!(mirror.handle.status().walks > walks_before, "no reconcile ran after expiry");

    client.set_data(&format!("{root}/d"), b"live again", None).await.unwrap();
    assert_converges(&client, &redis.url(), "zk", &root).await;
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_or_flushed_is_refilled() {
    let zk = ZkServer::shared();
    let mut redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("redis-loss");
    create_all(&client, &root, b"r").await;
    create_tree(&client, &root, 5, 2, 10).await;
    let mirror = RunningMirror::start(test_config(&zk.connect_string(), &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &redis.url(), "zk", &root).await;

    redis.restart(); // comes back empty, without our scripts
    assert_converges(&client, &redis.url(), "zk", &root).await;

    let mut conn = redis_conn(&redis.url()).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    assert_converges(&client, &redis.url(), "zk", &root).await;

    // Down for a while, with changes meanwhile: the mirror keeps running and catches up.
    redis.stop();
    client.set_data(&format!("{root}/n1"), b"while redis was down", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mirror.handle.phase(), Phase::Degraded);
    redis.restart();
    assert_converges(&client, &redis.url(), "zk", &root).await;
    mirror.wait_for_phase(Phase::Live).await;
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mirror_restarts_onto_the_existing_copy_without_blanking_it() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("restart");
    create_all(&client, &root, b"").await;
    create_tree(&client, &root, 10, 2, 20).await;
    let config = test_config(&zk.connect_string(), &redis.url(), &root);
    let mirror = RunningMirror::start(config.clone());
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &redis.url(), "zk", &root).await;
    mirror.kill().await;

    // While no mirror runs: change, delete, create.
    client.set_data(&format!("{root}/n0/n0"), b"changed", None).await.unwrap();
    client.delete(&format!("{root}/n9/n9"), None).await.unwrap();
    create_all(&client, &format!("{root}/n10"), b"new").await;

    let mut conn = redis_conn(&redis.url()).await;
    let unchanged_before = stored_mzxid(&mut conn, "zk", &format!("{root}/n5/n5")).await;
    let restarted = RunningMirror::start(config);
    // An unchanged znode never disappears while the new mirror reconciles.
    for _ in 0..20 {
        assert_eq!(stored_mzxid(&mut conn, "zk", &format!("{root}/n5/n5")).await, unchanged_before);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    restarted.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &redis.url(), "zk", &root).await;
    let status = restarted.handle.status();
    assert!(status.unchanged >= 100, "the restart rewrote what was already exact: {status:?}");
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mirrors_racing_converge_and_versions_never_go_backwards() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(zk.addr());
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("race");
    let hot = format!("{root}/hot");
    create_all(&client, &hot, b"0").await;
    let mut first_config = test_config(&proxy.connect_string(), &redis.url(), &root);
    first_config.session_timeout = Duration::from_secs(4);
    let first = RunningMirror::start(first_config);
    let second = RunningMirror::start(test_config(&zk.connect_string(), &redis.url(), &root));
    first.wait_for_phase(Phase::Live).await;
    second.wait_for_phase(Phase::Live).await;

    // A reader polls the hot znode's mzxid the whole time and records any step backwards.
    let reader_conn = redis_conn(&redis.url()).await;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let reader_hot = hot.clone();
    let reader = tokio::spawn(async move {
        let mut conn = reader_conn;
        let (mut last, mut backwards, mut reads) = (0i64, Vec::new(), 0u64);
        while !*stop_rx.borrow_and_update() {
            if let Some(mzxid) = stored_mzxid(&mut conn, "zk", &reader_hot).await {
                if mzxid < last {
                    backwards.push((last, mzxid));
                }
                last = last.max(mzxid);
                reads += 1;
            }
        }
        (backwards, reads)
    });
    for i in 0..300 {
        client.set_data(&hot, i.to_string().as_bytes(), None).await.unwrap();
        if i == 100 {
            proxy.cut(); // the first mirror falls behind and reconciles later
        }
        if i == 200 {
            proxy.restore();
        }
    }
    assert_converges(&client, &redis.url(), "zk", &root).await;
    stop_tx.send(true).unwrap();
    let (backwards, reads) = reader.await.unwrap();
    assert!(reads > 0, "the reader never read");
    assert!(backwards.is_empty(), "mzxid went backwards: {backwards:?}");
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_root_is_waited_for_and_a_vanished_root_is_removed() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("absent");
    let mirror = RunningMirror::start(test_config(&zk.connect_string(), &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;
    // The mirror never creates the root: ZooKeeper stays untouched.
    assert_eq!(client.check_stat(&root).await.unwrap(), None);

    create_all(&client, &format!("{root}/x"), b"appeared").await;
    let report = assert_converges(&client, &redis.url(), "zk", &root).await;
    assert_eq!(report.znodes, 2);

    client.delete(&format!("{root}/x"), None).await.unwrap();
    client.delete(&root, None).await.unwrap();
    assert_converges(&client, &redis.url(), "zk", &root).await;
    let mut conn = redis_conn(&redis.url()).await;
    let left: Vec<String> = redis::cmd("KEYS").arg(format!("zk:{{{root}*")).query_async(&mut conn).await.unwrap();
    assert!(left.iter().all(|k| k.ends_with(":tomb")), "keys left behind: {left:?}");

    create_all(&client, &root, b"back").await;
    assert_converges(&client, &redis.url(), "zk", &root).await;
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_to_both_servers() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start_with_password("mirror", "redis-secret");
    let root = unique_root("auth");
    let owner = zk_client(&zk.connect_string()).await;
    owner.auth("digest", b"mirror:zk-secret").await.unwrap();
    create_all(&owner, &root, b"").await;
    owner
        .create(
            &format!("{root}/private"),
            b"for the mirror only",
            &CreateMode::Persistent.with_acls(Acls::creator_all()),
        )
        .await
        .unwrap();

    let mut config = test_config(&zk.connect_string(), &redis.url_with_credentials(), &root);
    config.zk_auth = Some("mirror:zk-secret".parse().unwrap());
    assert!(!format!("{config:?}").contains("secret"), "credentials leak through Debug");
    let mirror = RunningMirror::start(config);
    mirror.wait_for_phase(Phase::Live).await;
    // Compare with the same identity the mirror has: the private znode must be there.
    let report = assert_converges(&owner, &redis.url_with_credentials(), "zk", &root).await;
    assert_eq!((report.znodes, report.unreadable), (2, 0));
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_unreachable_at_start_are_retried_until_they_answer() {
    let zk = ZkServer::shared();
    let mut redis = RedisServer::start();
    let proxy = TcpProxy::start(zk.addr());
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("unreachable");
    create_all(&client, &format!("{root}/a"), b"1").await;

    // Neither server answers when the mirror starts.
    proxy.cut();
    redis.stop();
    let mirror = RunningMirror::start(test_config(&proxy.connect_string(), &redis.url(), &root));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(mirror.handle.phase(), Phase::Live, "live without any server");
    assert!(!mirror.handle.status().synced);

    proxy.restore();
    redis.restart();
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &redis.url(), "zk", &root).await;
    mirror.stop().await;
}
