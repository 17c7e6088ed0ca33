//! The schema's Lua scripts against a real redis-server: each ordering rule of
//! `schema/layout.md` has a case here that fails without it.

mod common;

use common::RedisServer;
use zkmirror::testing::{BatchOutcome, Store, Write, Znode, ZnodeStat};
use zkmirror::MirrorConfig;

fn store(redis: &RedisServer) -> Store {
    Store::new(&MirrorConfig::new("127.0.0.1:1", redis.url(), "/app")).expect("store")
}

fn znode(path: &str, data: &str, czxid: i64, mzxid: i64) -> Znode {
    Znode {
        path: path.to_owned(),
        data: data.as_bytes().to_vec(),
        stat: ZnodeStat { czxid, mzxid, pzxid: czxid, data_length: data.len() as i32, ..ZnodeStat::default() },
        children: Vec::new(),
    }
}

async fn apply(store: &Store, writes: Vec<Write>) -> BatchOutcome {
    store.apply(&writes, 0, 1).await.expect("batch applies")
}

async fn get(store: &Store, key: String) -> Option<String> {
    let value = store.query(redis::cmd("GET").arg(key)).await.expect("GET");
    redis::from_redis_value(value).expect("string")
}

async fn stream_len(store: &Store) -> usize {
    redis::from_redis_value(store.query(redis::cmd("XLEN").arg("zk:changes")).await.expect("XLEN")).expect("int")
}

#[tokio::test]
async fn an_older_read_never_replaces_a_newer_one() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    let out = apply(&store, vec![Write::Put(znode("/app", "new", 10, 20))]).await;
    assert_eq!(out.written, 1);
    let out = apply(&store, vec![Write::Put(znode("/app", "old", 10, 15))]).await;
    assert_eq!(out.refused, 1);
    assert_eq!(get(&store, "zk:{/app}".into()).await.as_deref(), Some("new"));
}

#[tokio::test]
async fn an_identical_read_writes_nothing() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    apply(&store, vec![Write::Put(znode("/app", "v", 10, 20))]).await;
    let entries = stream_len(&store).await;
    let out = apply(&store, vec![Write::Put(znode("/app", "v", 10, 20))]).await;
    assert_eq!((out.unchanged, out.written), (1, 0));
    assert_eq!(stream_len(&store).await, entries, "an unchanged znode was announced");
}

#[tokio::test]
async fn a_deleted_znode_is_not_resurrected_but_a_recreated_one_is_accepted() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    apply(&store, vec![Write::Put(znode("/app/x", "v1", 10, 10))]).await;
    let out = apply(&store, vec![Write::Delete { path: "/app/x".into(), tomb_zxid: Some(30) }]).await;
    assert_eq!(out.deleted, 1);
    // A late write of a read made before the delete (same incarnation, even a newer version).
    let out = apply(&store, vec![Write::Put(znode("/app/x", "v2", 10, 25))]).await;
    assert_eq!(out.refused, 1);
    assert_eq!(get(&store, "zk:{/app/x}".into()).await, None);
    assert!(get(&store, "zk:{/app/x}:tomb".into()).await.is_some(), "tombstone missing");
    // A re-created znode has a czxid above the tombstone.
    let out = apply(&store, vec![Write::Put(znode("/app/x", "reborn", 40, 40))]).await;
    assert_eq!(out.written, 1);
    assert_eq!(get(&store, "zk:{/app/x}".into()).await.as_deref(), Some("reborn"));
}

#[tokio::test]
async fn a_delete_never_removes_a_newer_incarnation() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    apply(&store, vec![Write::Put(znode("/app/x", "reborn", 50, 50))]).await;
    let out = apply(&store, vec![Write::Delete { path: "/app/x".into(), tomb_zxid: Some(30) }]).await;
    assert_eq!((out.refused, out.deleted), (1, 0));
    assert_eq!(get(&store, "zk:{/app/x}".into()).await.as_deref(), Some("reborn"));
}

#[tokio::test]
async fn hiding_an_unreadable_znode_leaves_no_tombstone() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    apply(&store, vec![Write::Put(znode("/app/x", "v", 10, 10))]).await;
    apply(&store, vec![Write::Hide { path: "/app/x".into() }]).await;
    assert_eq!(get(&store, "zk:{/app/x}".into()).await, None);
    assert_eq!(get(&store, "zk:{/app/x}:tomb".into()).await, None);
    // Readable again, same incarnation: accepted.
    let out = apply(&store, vec![Write::Put(znode("/app/x", "v", 10, 10))]).await;
    assert_eq!(out.written, 1);
}

#[tokio::test]
async fn without_scripts_loaded_the_batch_fails_with_noscript() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let error = store.apply(&[Write::Put(znode("/app", "v", 1, 1))], 0, 1).await.expect_err("no scripts loaded");
    assert!(error.is_noscript(), "{error}");
}

#[tokio::test]
async fn keys_altered_behind_the_mirrors_back_are_rewritten_by_the_same_read() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    let mut parent = znode("/app", "v", 10, 20);
    parent.children = vec!["a".into(), "b".into()];
    parent.stat.num_children = 2;
    apply(&store, vec![Write::Put(parent.clone())]).await;
    // Another writer changes the value, a Stat field and the children set, keeping the version.
    store.query(redis::cmd("SET").arg("zk:{/app}").arg("tampered")).await.unwrap();
    store.query(redis::cmd("HSET").arg("zk:{/app}:meta").arg("mtime").arg("1")).await.unwrap();
    let out = apply(&store, vec![Write::Put(parent.clone())]).await;
    assert_eq!(out.written, 1, "altered data and meta were not repaired");
    assert_eq!(get(&store, "zk:{/app}".into()).await.as_deref(), Some("v"));
    store.query(redis::cmd("SREM").arg("zk:{/app}:children").arg("b")).await.unwrap();
    store.query(redis::cmd("SADD").arg("zk:{/app}:children").arg("x")).await.unwrap();
    let out = apply(&store, vec![Write::Put(parent.clone())]).await;
    assert_eq!(out.written, 1, "an altered children set of the same size was not repaired");
    let members: Vec<String> =
        redis::from_redis_value(store.query(redis::cmd("SMEMBERS").arg("zk:{/app}:children")).await.unwrap()).unwrap();
    let mut members = members;
    members.sort();
    assert_eq!(members, vec!["a", "b"]);
    let out = apply(&store, vec![Write::Put(parent)]).await;
    assert_eq!(out.unchanged, 1);
}
