//! The schema's Lua scripts against a real redis-server: each ordering rule of
//! `schema/layout.md` has a case here that fails without it.

mod common;

use common::world::znode;
use common::RedisServer;
use zkmirror::testing::{BatchOutcome, Refusal, Store, Write, WriteOutcome, Znode, ZnodeStat};
use zkmirror::MirrorConfig;

fn store(redis: &RedisServer) -> Store {
    Store::new(&MirrorConfig::new("127.0.0.1:1", redis.url(), "/app")).expect("store")
}

/// The Stat of the same znode after a `setACL` (which bumps `aversion` and nothing else).
fn closed(mut stat: ZnodeStat) -> ZnodeStat {
    stat.aversion += 1;
    stat
}

async fn apply(store: &Store, writes: Vec<Write>) -> BatchOutcome {
    let applied = store.apply(&writes, None, 1, None, 0).await.expect("batch applies");
    applied.counts()
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
    apply(&store, vec![Write::Hide { path: "/app/x".into(), stat: closed(znode("/app/x", "v", 10, 10).stat) }]).await;
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
    let error =
        store.apply(&[Write::Put(znode("/app", "v", 1, 1))], None, 1, None, 0).await.expect_err("no scripts loaded");
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

async fn exists(store: &Store, key: &str) -> bool {
    redis::from_redis_value(store.query(redis::cmd("EXISTS").arg(key)).await.expect("EXISTS")).expect("int")
}

/// Defect 14 of issue 10: a failing script in a pipeline failed the whole batch, which the
/// mirror took for "Redis down", for ever. A key of the wrong type is one znode's problem.
#[tokio::test]
async fn a_key_of_the_wrong_type_fails_its_own_write_and_no_other() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    apply(&store, vec![Write::Put(znode("/app/x", "v", 10, 10)), Write::Put(znode("/app/y", "v", 11, 11))]).await;
    // Someone else's keys inside the layout: x's data is a hash, y's meta a string.
    for (key, field) in [("zk:{/app/x}", "f"), ("zk:{/app/y}:meta", "")] {
        store.query(redis::cmd("DEL").arg(key)).await.unwrap();
        if field.is_empty() {
            store.query(redis::cmd("SET").arg(key).arg("junk")).await.unwrap();
        } else {
            store.query(redis::cmd("HSET").arg(key).arg(field).arg("junk")).await.unwrap();
        }
    }
    let entries = stream_len(&store).await;
    let writes = vec![
        Write::Put(znode("/app/a", "a", 20, 20)),
        Write::Put(znode("/app/x", "v", 10, 10)),
        Write::Put(znode("/app/y", "v2", 11, 30)),
        Write::Put(znode("/app/b", "b", 21, 21)),
    ];
    let applied = store.apply(&writes, None, 1, None, 0).await.expect("a bad key fails its write, not the batch");
    assert_eq!(applied.outcomes[0], WriteOutcome::Written);
    assert!(matches!(&applied.outcomes[1], WriteOutcome::Failed(why) if why.contains("WRONGTYPE")), "{applied:?}");
    assert!(matches!(&applied.outcomes[2], WriteOutcome::Failed(why) if why.contains("WRONGTYPE")), "{applied:?}");
    assert_eq!(applied.outcomes[3], WriteOutcome::Written);
    assert_eq!(applied.counts().failed, 2);
    assert_eq!(applied.failures().map(|(i, _)| i).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(get(&store, "zk:{/app/a}".into()).await.as_deref(), Some("a"));
    assert_eq!(get(&store, "zk:{/app/b}".into()).await.as_deref(), Some("b"));
    // The failed writes wrote nothing: y's data is still the old version, no stream entry.
    assert_eq!(get(&store, "zk:{/app/y}".into()).await.as_deref(), Some("v"));
    assert_eq!(stream_len(&store).await, entries + 2, "only a and b are announced");
}

/// `P:changes` of the wrong type: put.lua used to write the keys, then fail on XADD, leaving a
/// change readers of the stream never hear of. Now nothing is written and the answer names
/// the key.
#[tokio::test]
async fn a_change_stream_of_the_wrong_type_is_named_and_nothing_is_half_written() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    apply(&store, vec![Write::Put(znode("/app/old", "v", 5, 5))]).await;
    store.query(redis::cmd("DEL").arg("zk:changes")).await.unwrap();
    store.query(redis::cmd("HSET").arg("zk:changes").arg("not").arg("a stream")).await.unwrap();
    let writes =
        vec![Write::Put(znode("/app/new", "v", 10, 10)), Write::Delete { path: "/app/old".into(), tomb_zxid: Some(9) }];
    let applied = store.apply(&writes, None, 1, None, 0).await.expect("a bad stream fails the writes, not the batch");
    for outcome in &applied.outcomes {
        assert!(
            matches!(outcome, WriteOutcome::Failed(why) if why.contains("zk:changes") && why.contains("WRONGTYPE")),
            "{applied:?}"
        );
    }
    for key in ["zk:{/app/new}", "zk:{/app/new}:meta", "zk:{/app/old}:tomb"] {
        assert!(!exists(&store, key).await, "{key} was written although its stream entry could not be");
    }
    assert!(exists(&store, "zk:{/app/old}:meta").await, "the delete removed keys without its stream entry");
}

/// A tombstone ttl below 1 ms made every delete fail (`SET ... PX 0`) after nothing else had
/// been checked; now the script refuses up front, names the setting, and writes nothing.
#[tokio::test]
async fn a_tombstone_ttl_below_a_millisecond_fails_deletes_without_touching_keys() {
    let redis = RedisServer::start();
    let mut config = MirrorConfig::new("127.0.0.1:1", redis.url(), "/app");
    config.tombstone_ttl = std::time::Duration::from_micros(500);
    let store = Store::new(&config).expect("store");
    store.load_scripts().await.unwrap();
    apply(&store, vec![Write::Put(znode("/app/x", "v", 10, 10))]).await;
    let applied = store
        .apply(&[Write::Delete { path: "/app/x".into(), tomb_zxid: Some(12) }], None, 1, None, 0)
        .await
        .expect("batch");
    assert!(matches!(&applied.outcomes[0], WriteOutcome::Failed(why) if why.contains("tombstone ttl")), "{applied:?}");
    assert!(exists(&store, "zk:{/app/x}:meta").await);
}

async fn last_entry_reason(store: &Store) -> Option<String> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::from_redis_value(
        store.query(redis::cmd("XREVRANGE").arg("zk:changes").arg("+").arg("-").arg("COUNT").arg(1)).await.unwrap(),
    )
    .expect("stream entries");
    entries.into_iter().next()?.1.into_iter().find(|(k, _)| k == "reason").map(|(_, v)| v)
}

/// Defect 12 of issue 10: `hide` removed keys without any comparison, so a stale `NoAuth`
/// answer (another mirror, a lagging server) removed a znode whose ACL had been opened and
/// which a newer readable read had already written; no watch brings it back. A hide is now
/// ordered by the Stat of the unreadable znode, like a put.
#[tokio::test]
async fn a_stale_hide_never_removes_a_newer_readable_read() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    let secret = znode("/app/x", "v", 10, 10);
    // Unreadable at aversion 0; the ACL was opened (aversion 1) and that read was written.
    let opened = Znode { stat: closed(secret.stat), ..secret.clone() };
    apply(&store, vec![Write::Put(opened.clone())]).await;
    let stale =
        store.apply(&[Write::Hide { path: "/app/x".into(), stat: secret.stat }], None, 1, None, 0).await.unwrap();
    assert_eq!(stale.outcomes, [WriteOutcome::Refused(Refusal::Older)]);
    assert_eq!(get(&store, "zk:{/app/x}".into()).await.as_deref(), Some("v"), "a stale hide removed a newer read");
    // Closed again (aversion 2): that hide is newer and removes the keys.
    let fresh = store
        .apply(&[Write::Hide { path: "/app/x".into(), stat: closed(opened.stat) }], None, 1, None, 0)
        .await
        .unwrap();
    assert_eq!(fresh.outcomes, [WriteOutcome::Deleted]);
    assert_eq!(get(&store, "zk:{/app/x}".into()).await, None);
    assert_eq!(last_entry_reason(&store).await.as_deref(), Some("hide"));
}

/// A hide at the very Stat a readable read was written at (two identities, one state) hides:
/// what this mirror may not read stays out.
#[tokio::test]
async fn a_hide_at_the_stored_stat_hides() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    let x = znode("/app/x", "v", 10, 10);
    apply(&store, vec![Write::Put(x.clone())]).await;
    let out = store.apply(&[Write::Hide { path: "/app/x".into(), stat: x.stat }], None, 1, None, 0).await.unwrap();
    assert_eq!(out.outcomes, [WriteOutcome::Deleted]);
}

/// A path the filter leaves out loses its keys whatever Redis holds: the configuration, not a
/// read, decided it, so there is nothing to order by.
#[tokio::test]
async fn an_excluded_path_loses_its_keys_unconditionally() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    apply(&store, vec![Write::Put(znode("/app/x", "v", 50, 90))]).await;
    let out = store.apply(&[Write::Exclude { path: "/app/x".into() }], None, 1, None, 0).await.unwrap();
    assert_eq!(out.outcomes, [WriteOutcome::Deleted]);
    assert_eq!(get(&store, "zk:{/app/x}:meta".into()).await, None);
    assert_eq!(get(&store, "zk:{/app/x}:tomb".into()).await, None);
    assert_eq!(last_entry_reason(&store).await.as_deref(), Some("hide"));
}

/// Defect 16 of issue 10: Redis loss was noticed only through the root's `:meta` key, absent
/// when the filter does not admit the root. The status write itself now says whether the
/// status hash existed before it, so a flush is seen on the next heartbeat; the write needs
/// no prior `load_scripts` (a Redis restarted empty has none).
#[tokio::test]
async fn a_status_write_tells_whether_redis_lost_the_status_since_the_last_one() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let fields = |state: &str| vec![("state", state.to_owned()), ("heartbeat", "1".to_owned())];
    assert!(!store.write_status(&fields("syncing")).await.expect("first write").existed, "a fresh Redis held a status");
    assert!(store.write_status(&fields("live")).await.expect("second write").existed);
    store.query(&redis::cmd("FLUSHALL")).await.unwrap();
    store.query(redis::cmd("SCRIPT").arg("FLUSH")).await.unwrap();
    let after_flush = store.write_status(&fields("live")).await.expect("a write after the flush");
    assert!(!after_flush.existed, "the flush went unnoticed");
    assert!(store.write_status(&fields("live")).await.expect("the next write").existed);
    let state: Option<String> =
        redis::from_redis_value(store.query(redis::cmd("HGET").arg("zk:mirror").arg("state")).await.expect("HGET"))
            .expect("string");
    assert_eq!(state.as_deref(), Some("live"));
}

/// Redis's own clock, in unix ms.
async fn redis_now_ms(store: &Store) -> u64 {
    let (secs, micros): (u64, u64) = redis::from_redis_value(store.query(&redis::cmd("TIME")).await.expect("TIME"))
        .expect("TIME answers two numbers");
    secs * 1000 + micros / 1000
}

#[tokio::test]
async fn a_read_held_past_its_deadline_is_never_written() {
    // A mirror paused past the tombstone ttl still holds reads from before the pause: the
    // delete they predate has left no tombstone by now, so only their age can refuse them.
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    let now = redis_now_ms(&store).await;
    let past = Some(now - 1_000);
    let future = Some(now + 60_000);
    let put = || vec![Write::Put(znode("/app/gone", "stale", 10, 10))];
    let applied = store.apply(&put(), None, 1, past, 0).await.unwrap();
    assert_eq!(applied.outcomes, [WriteOutcome::Refused(Refusal::Stale)]);
    assert_eq!(get(&store, "zk:{/app/gone}".into()).await, None, "a stale put writes nothing");
    assert_eq!(stream_len(&store).await, 0, "and announces nothing");
    let applied = store.apply(&put(), None, 1, future, 0).await.unwrap();
    assert_eq!(applied.outcomes, [WriteOutcome::Written]);
    // A delete or hide read too long ago is refused as well: the znode may exist again.
    let delete = vec![Write::Delete { path: "/app/gone".into(), tomb_zxid: Some(11) }];
    let applied = store.apply(&delete, None, 1, past, 0).await.unwrap();
    assert_eq!(applied.outcomes, [WriteOutcome::Refused(Refusal::Stale)]);
    assert_eq!(get(&store, "zk:{/app/gone}".into()).await.as_deref(), Some("stale"));
    let applied = store.apply(&delete, None, 1, future, 0).await.unwrap();
    assert_eq!(applied.outcomes, [WriteOutcome::Deleted]);
}

async fn apply_in(store: &Store, writes: Vec<Write>, epoch: u64) -> Vec<WriteOutcome> {
    store.apply(&writes, None, 1, None, epoch).await.expect("batch applies").outcomes
}

/// Defect 13 of issue 10: after ZooKeeper was restored from a backup every zxid is lower than
/// Redis holds, so the zxid order refused every write for ever. Histories (`epoch`) order
/// first: a newer history replaces an older one's version whatever its zxids, and an older
/// history's write is refused.
#[tokio::test]
async fn a_newer_history_replaces_higher_zxids_and_an_older_one_is_refused() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    apply(&store, vec![Write::Put(znode("/app", "old history", 500, 900))]).await;
    let out = apply_in(&store, vec![Write::Put(znode("/app", "restored", 10, 20))], 0).await;
    assert_eq!(out, [WriteOutcome::Refused(Refusal::Older)], "within one history, zxids order");
    let out = apply_in(&store, vec![Write::Put(znode("/app", "restored", 10, 20))], 1).await;
    assert_eq!(out, [WriteOutcome::Written]);
    assert_eq!(get(&store, "zk:{/app}".into()).await.as_deref(), Some("restored"));
    let epoch = store.query(redis::cmd("HGET").arg("zk:{/app}:meta").arg("epoch")).await.unwrap();
    assert_eq!(redis::from_redis_value::<String>(epoch).unwrap(), "1");
    // The same read again is unchanged; a late write of the old history is refused.
    let out = apply_in(&store, vec![Write::Put(znode("/app", "restored", 10, 20))], 1).await;
    assert_eq!(out, [WriteOutcome::Unchanged]);
    let out = apply_in(&store, vec![Write::Put(znode("/app", "old history", 500, 901))], 0).await;
    assert_eq!(out, [WriteOutcome::Refused(Refusal::NewerHistory)]);
    let out = apply_in(&store, vec![Write::Delete { path: "/app".into(), tomb_zxid: Some(950) }], 0).await;
    assert_eq!(out, [WriteOutcome::Refused(Refusal::NewerHistory)]);
    assert_eq!(get(&store, "zk:{/app}".into()).await.as_deref(), Some("restored"));
}

#[tokio::test]
async fn deletes_and_tombstones_are_judged_by_their_history() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    // An old-history znode with a high czxid is deleted by a new-history delete with a low T.
    apply(&store, vec![Write::Put(znode("/app/x", "v", 800, 800))]).await;
    let out = apply_in(&store, vec![Write::Delete { path: "/app/x".into(), tomb_zxid: Some(30) }], 1).await;
    assert_eq!(out, [WriteOutcome::Deleted]);
    assert_eq!(get(&store, "zk:{/app/x}:tomb".into()).await.as_deref(), Some("30@1"));
    // Its tombstone refuses older reads of history 1, and anything of history 0.
    let out = apply_in(&store, vec![Write::Put(znode("/app/x", "late", 25, 25))], 1).await;
    assert_eq!(out, [WriteOutcome::Refused(Refusal::Tombstoned)]);
    let out = apply_in(&store, vec![Write::Put(znode("/app/x", "late", 900, 900))], 0).await;
    assert_eq!(out, [WriteOutcome::Refused(Refusal::NewerHistory)]);
    // An old-history tombstone (a plain zxid) does not block a create of the new history.
    apply(&store, vec![Write::Put(znode("/app/y", "v", 700, 700))]).await;
    apply(&store, vec![Write::Delete { path: "/app/y".into(), tomb_zxid: Some(750) }]).await;
    assert_eq!(get(&store, "zk:{/app/y}:tomb".into()).await.as_deref(), Some("750"));
    let out = apply_in(&store, vec![Write::Put(znode("/app/y", "born again", 40, 40))], 1).await;
    assert_eq!(out, [WriteOutcome::Written]);
}

#[tokio::test]
async fn the_watermark_restarts_once_in_a_newer_history() {
    let redis = RedisServer::start();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    store.write_status(&[("state", "live".to_owned())]).await.unwrap();
    let claim = |zxid: i64, epoch: u64| {
        let store = store.clone();
        async move {
            store.apply(&[], Some(zxid), 1, None, epoch).await.expect("claim");
            store.stored_mark().await.expect("stored mark")
        }
    };
    assert_eq!(claim(900, 0).await, zkmirror::testing::StoredMark { zxid: Some(900), epoch: 0 });
    assert_eq!(claim(20, 0).await.zxid, Some(900), "within a history it only grows");
    assert_eq!(claim(0, 1).await, zkmirror::testing::StoredMark { zxid: Some(0), epoch: 1 });
    assert_eq!(claim(40, 1).await.zxid, Some(40));
    assert_eq!(
        claim(950, 0).await,
        zkmirror::testing::StoredMark { zxid: Some(40), epoch: 1 },
        "an older history claims nothing"
    );
}
