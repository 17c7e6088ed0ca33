//! `put_batch.lua` (several puts per call, one Redis) against `put.lua` (one put per call, as a
//! Redis Cluster gets them): the same writes on the same stored state, on two real
//! redis-servers, must give the same outcome write by write and leave the same keys and stream
//! entries behind. Each ordering rule of `schema/layout.md` has a case here.

mod common;

use std::collections::BTreeMap;

use common::world::znode;
use common::RedisServer;
use zkmirror::testing::{Refusal, Store, Write, WriteOutcome, Znode};
use zkmirror::{Leadership, MirrorConfig};

/// Both paths on servers of their own: `batched` sends puts through `put_batch.lua`, `single`
/// through `put.lua`, one znode per call.
struct Pair {
    _redis: [RedisServer; 2],
    batched: Store,
    single: Store,
}

impl Pair {
    async fn start(fence: Option<i64>) -> Pair {
        let redis = [RedisServer::start(), RedisServer::start()];
        let store = |redis: &RedisServer| {
            let mut config = MirrorConfig::new("127.0.0.1:1", redis.url(), "/app");
            config.leadership = fence.map(|fence| Leadership { instance: "i".into(), since_ms: 1, fence });
            Store::new(&config).expect("store")
        };
        let batched = store(&redis[0]);
        let single = store(&redis[1]).with_put_batches(false);
        for store in [&batched, &single] {
            store.load_scripts().await.expect("scripts load");
        }
        Pair { _redis: redis, batched, single }
    }

    /// The same state in both servers: these writes through `put.lua`, in this history.
    async fn seed(&self, writes: Vec<Write>, epoch: u64) {
        for store in [&self.batched, &self.single] {
            let seeding = store.clone().with_put_batches(false);
            seeding.apply(&writes, None, 1, None, epoch).await.expect("seeding applies");
        }
    }

    /// The same raw command in both servers (keys altered behind the mirror's back).
    async fn raw(&self, args: &[&str]) {
        for store in [&self.batched, &self.single] {
            let mut cmd = redis::cmd(args[0]);
            for arg in &args[1..] {
                cmd.arg(*arg);
            }
            store.query(&cmd).await.unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    /// Applies `writes` through both paths; asserts the outcomes and what Redis holds are the
    /// same, and answers the outcomes.
    async fn both(&self, writes: &[Write], deadline: Option<u64>, epoch: u64) -> Vec<WriteOutcome> {
        let batched = self.batched.apply(writes, None, 7, deadline, epoch).await.expect("the batched path applies");
        let single = self.single.apply(writes, None, 7, deadline, epoch).await.expect("put.lua applies");
        // The error texts differ (the batch names the key); the outcome does not.
        let kind = |outcomes: &[WriteOutcome]| -> Vec<WriteOutcome> {
            outcomes
                .iter()
                .map(|o| match o {
                    WriteOutcome::Failed(why) => {
                        WriteOutcome::Failed(why.split_whitespace().next().unwrap_or("").to_owned())
                    }
                    other => other.clone(),
                })
                .collect()
        };
        assert_eq!(kind(&batched.outcomes), kind(&single.outcomes), "outcomes, write by write");
        assert_eq!(dump(&self.batched).await, dump(&self.single).await, "what Redis holds");
        batched.outcomes
    }
}

/// Everything Redis holds, comparable across servers: each key's type and value (a stream's
/// entries without their ids, a tombstone's value and whether it expires).
async fn dump(store: &Store) -> BTreeMap<String, String> {
    let keys: Vec<String> =
        redis::from_redis_value(store.query(redis::cmd("KEYS").arg("*")).await.expect("KEYS")).expect("key names");
    let mut held = BTreeMap::new();
    for key in keys {
        let kind: String =
            redis::from_redis_value(store.query(redis::cmd("TYPE").arg(&key)).await.expect("TYPE")).expect("type");
        let value = match kind.as_str() {
            "string" => {
                let value: String =
                    redis::from_redis_value(store.query(redis::cmd("GET").arg(&key)).await.expect("GET")).expect("GET");
                let ttl: i64 = redis::from_redis_value(store.query(redis::cmd("PTTL").arg(&key)).await.expect("PTTL"))
                    .expect("PTTL");
                format!("{value} expires:{}", ttl > 0)
            }
            "hash" => {
                let fields: BTreeMap<String, String> =
                    redis::from_redis_value(store.query(redis::cmd("HGETALL").arg(&key)).await.expect("HGETALL"))
                        .expect("HGETALL");
                format!("{fields:?}")
            }
            "set" => {
                let mut members: Vec<String> =
                    redis::from_redis_value(store.query(redis::cmd("SMEMBERS").arg(&key)).await.expect("SMEMBERS"))
                        .expect("SMEMBERS");
                members.sort();
                format!("{members:?}")
            }
            "stream" => {
                let entries: Vec<(String, Vec<String>)> = redis::from_redis_value(
                    store.query(redis::cmd("XRANGE").arg(&key).arg("-").arg("+")).await.expect("XRANGE"),
                )
                .expect("XRANGE");
                format!("{:?}", entries.into_iter().map(|(_, fields)| fields).collect::<Vec<_>>())
            }
            other => other.to_owned(),
        };
        held.insert(key, format!("{kind} {value}"));
    }
    held
}

fn with_children(mut znode: Znode, children: &[&str]) -> Znode {
    znode.children = children.iter().map(|c| c.to_string()).collect();
    znode.stat.num_children = children.len() as i32;
    znode
}

fn put(znode: Znode) -> Write {
    Write::Put(znode)
}

fn failed(outcome: &WriteOutcome, key: &str) -> bool {
    matches!(outcome, WriteOutcome::Failed(why) if why.contains("WRONGTYPE") && why.contains(key))
}

/// Every case of put.lua's header in one batch, on stored state that differs per path: the
/// batch takes its per-znode path and must judge each znode as put.lua does.
#[tokio::test]
async fn a_batch_answers_each_put_as_put_lua_does() {
    let pair = Pair::start(None).await;
    // History 1 for most, one older and one newer history.
    pair.seed(
        vec![
            put(znode("/app/newer", "new", 10, 20)),
            put(znode("/app/same", "v", 11, 11)),
            put(znode("/app/buried", "v", 12, 12)),
            put(with_children(znode("/app/kids", "v", 13, 13), &["a", "b"])),
            put(znode("/app/altered", "v", 14, 14)),
            put(znode("/app/badkids", "v", 15, 15)),
            put(znode("/app/dup", "v", 16, 16)),
        ],
        1,
    )
    .await;
    pair.seed(vec![Write::Delete { path: "/app/buried".into(), tomb_zxid: Some(30) }], 1).await;
    pair.seed(vec![put(znode("/app/oldhistory", "v", 100, 100))], 0).await;
    pair.seed(vec![put(znode("/app/newhistory", "v", 1, 1))], 2).await;
    // Keys altered behind the mirror's back, and keys of the wrong type.
    pair.raw(&["SREM", "zk:{/app/kids}:children", "b"]).await;
    pair.raw(&["SADD", "zk:{/app/kids}:children", "c"]).await;
    pair.raw(&["SET", "zk:{/app/altered}", "someone else's"]).await;
    pair.raw(&["SET", "zk:{/app/badmeta}:meta", "junk"]).await;
    pair.raw(&["HSET", "zk:{/app/badtomb}:tomb", "f", "junk"]).await;
    pair.raw(&["DEL", "zk:{/app/badkids}:children"]).await;
    pair.raw(&["SET", "zk:{/app/badkids}:children", "junk"]).await;
    pair.raw(&["SADD", "zk:{/app/stray}:children", "ghost"]).await;

    let mut badkids = znode("/app/badkids", "v2", 15, 25);
    badkids.stat.pzxid = 15;
    let writes = vec![
        put(znode("/app/newer", "old", 10, 15)),
        put(znode("/app/same", "v", 11, 11)),
        put(znode("/app/buried", "late", 12, 12)),
        put(znode("/app/buried", "again", 31, 31)),
        put(with_children(znode("/app/kids", "v", 13, 13), &["a", "b"])),
        put(znode("/app/altered", "v", 14, 14)),
        put(znode("/app/badmeta", "v", 40, 40)),
        put(znode("/app/badtomb", "v", 41, 41)),
        put(badkids),
        put(znode("/app/stray", "v", 42, 42)),
        put(znode("/app/oldhistory", "v", 5, 5)),
        put(znode("/app/newhistory", "v", 50, 50)),
        put(znode("/app/dup", "v3", 16, 30)),
        put(znode("/app/dup", "v2", 16, 20)),
        put(with_children(znode("/app/fresh", "f", 43, 43), &["x", "y"])),
    ];
    let outcomes = pair.both(&writes, None, 1).await;
    use WriteOutcome::{Refused, Unchanged, Written};
    assert_eq!(outcomes[0], Refused(Refusal::Older), "never backwards");
    assert_eq!(outcomes[1], Unchanged, "an identical read writes nothing");
    assert_eq!(outcomes[2], Refused(Refusal::Tombstoned), "never resurrect");
    assert_eq!(outcomes[3], Written, "a re-created znode is accepted");
    assert_eq!(outcomes[4], Written, "an altered children set is repaired");
    assert_eq!(outcomes[5], Written, "altered data is repaired");
    assert!(failed(&outcomes[6], "zk:{/app/badmeta}:meta"), "{:?}", outcomes[6]);
    assert!(failed(&outcomes[7], "zk:{/app/badtomb}:tomb"), "{:?}", outcomes[7]);
    assert!(failed(&outcomes[8], "zk:{/app/badkids}:children"), "{:?}", outcomes[8]);
    assert_eq!(outcomes[9], Written, "a stray children set is replaced");
    assert_eq!(outcomes[10], Written, "an older history's version is replaced whatever its zxids");
    assert_eq!(outcomes[11], Refused(Refusal::NewerHistory));
    assert_eq!(outcomes[12..], [Written, Refused(Refusal::Older), Written], "a path twice: the second compares");

    // A read held past its deadline: every put of the batch refused, nothing written.
    let late = vec![put(znode("/app/late", "v", 60, 60)), put(znode("/app/newer", "v", 10, 90))];
    assert_eq!(pair.both(&late, Some(1), 1).await, [Refused(Refusal::Stale), Refused(Refusal::Stale)]);
}

/// A batch of znodes Redis holds nothing of (a cold sync) is written without comparisons (one
/// EXISTS for all): it must still compare a path that comes twice, keep a batch's puts in
/// order around a delete, and fail only the znode whose key is of the wrong type.
#[tokio::test]
async fn a_batch_of_new_znodes_is_written_as_put_lua_writes_it() {
    let pair = Pair::start(None).await;
    let mut writes: Vec<Write> = (0..300)
        .map(|i| put(with_children(znode(&format!("/app/n{i}"), "v", 100 + i, 100 + i), &["a", "b", "c"])))
        .collect();
    // Twice in one batch: a newer read, then an older one (the second must be refused).
    writes.insert(10, put(znode("/app/twice", "new", 50, 60)));
    writes.insert(20, put(znode("/app/twice", "old", 50, 55)));
    // A delete between puts: the puts around it in order, and it sees the first ones.
    writes.insert(150, Write::Delete { path: "/app/n3".into(), tomb_zxid: Some(103) });
    writes.insert(160, put(znode("/app/n3", "late", 103, 103)));
    let outcomes = pair.both(&writes, None, 0).await;
    assert_eq!(outcomes.len(), writes.len());
    assert_eq!(outcomes[10], WriteOutcome::Written);
    assert_eq!(outcomes[20], WriteOutcome::Refused(Refusal::Older), "the same path twice in a batch compares");
    assert_eq!(outcomes[150], WriteOutcome::Deleted);
    assert_eq!(outcomes[160], WriteOutcome::Refused(Refusal::Tombstoned));
    let written = outcomes.iter().filter(|o| **o == WriteOutcome::Written).count();
    assert_eq!(written, 301, "the 300 new znodes and the first read of the twice-written one");

    // One bad key in an otherwise new batch fails that znode alone.
    pair.raw(&["HSET", "zk:{/app/m5}", "not", "data"]).await;
    pair.raw(&["SET", "zk:{/app/m6}:meta", "junk"]).await;
    let writes: Vec<Write> = (0..10).map(|i| put(znode(&format!("/app/m{i}"), "v", 500 + i, 500 + i))).collect();
    let outcomes = pair.both(&writes, None, 0).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 6 {
            assert!(failed(outcome, "zk:{/app/m6}:meta"), "{outcome:?}");
        } else {
            assert_eq!(*outcome, WriteOutcome::Written, "m{i}: a data key of any type is replaced, as put.lua does");
        }
    }
}

/// The fence in a batch: a znode whose slot has seen a newer leader is refused, with nothing
/// of it written, the others are written and raise their slots' fence, as with put.lua.
#[tokio::test]
async fn a_batch_is_fenced_per_znode_as_put_lua_is() {
    let pair = Pair::start(Some(20)).await;
    let fence_of = |path: &str| zkmirror::testing::Keys::new("zk").fence_for(&format!("zk:{{{path}}}"));
    // A newer leader (30) has written in the slot of /app/b only; an older one (10) in /app/c's.
    pair.raw(&["SET", &fence_of("/app/b"), "30"]).await;
    pair.raw(&["SET", &fence_of("/app/c"), "10"]).await;
    let writes = vec![
        put(znode("/app/a", "v", 10, 10)),
        put(znode("/app/b", "v", 11, 11)),
        put(znode("/app/c", "v", 12, 12)),
        put(znode("/app/a", "v", 10, 10)),
    ];
    let outcomes = pair.both(&writes, None, 0).await;
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Written,
            WriteOutcome::Refused(Refusal::Fenced { seen: 30 }),
            WriteOutcome::Written,
            WriteOutcome::Unchanged
        ]
    );
}
