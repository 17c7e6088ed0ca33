//! The chaos suite's two actors: [`Load`], a steady random load of creates, sets, deletes and
//! multis on a subtree, and [`Reader`], which polls the copy in a tight loop and counts every
//! read that breaks a promise. [`stream_disorder`] checks the change stream afterwards.
//!
//! Both survive what the scenarios do to the servers: the load reconnects after a ZooKeeper
//! restart or an expiry, the reader after a Redis restart, and neither panics on a failed
//! request (they count it), so a scenario ends with the same checks whatever it broke.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zookeeper_client::{Acls, Client, CreateMode, MultiWriter};

/// Leaves `k0..` the load sets, creates and deletes one at a time.
const LEAVES: usize = 12;
/// Subtrees `s0..`, each created and deleted whole, with children `c0..`.
const SUBTREES: usize = 3;
const SUBTREE_CHILDREN: usize = 3;
/// Pause between two operations of the load: steady, not saturating (a few hundred per second).
const LOAD_PACE: Duration = Duration::from_millis(3);

/// Every path the load may create, the parents of subtrees included: what the reader polls.
pub fn universe(root: &str) -> Vec<String> {
    let mut paths = vec![root.to_owned()];
    paths.extend((0..LEAVES).map(|i| format!("{root}/k{i}")));
    for s in 0..SUBTREES {
        paths.push(format!("{root}/s{s}"));
        paths.extend((0..SUBTREE_CHILDREN).map(|c| format!("{root}/s{s}/c{c}")));
    }
    paths
}

/// A small deterministic generator (xorshift64*): the load is reproducible from its seed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % below.max(1)
    }
}

/// What the load did.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadReport {
    /// Operations ZooKeeper applied (a multi counts once).
    pub applied: u64,
    /// Operations that failed: connection loss, no node, node exists (the load does not track
    /// the tree, it only keeps it changing).
    pub failed: u64,
}

/// A background writer on the subtree, on its own sessions.
pub struct Load {
    stop: watch::Sender<bool>,
    task: JoinHandle<LoadReport>,
}

impl Load {
    /// Starts writing below `root` (which must exist) at once.
    pub fn start(connect: &str, root: &str, seed: u64) -> Load {
        let (stop, stopped) = watch::channel(false);
        let (connect, root) = (connect.to_owned(), root.to_owned());
        let task = tokio::spawn(run_load(connect, root, seed | 1, stopped));
        Load { stop, task }
    }

    /// Stops the load and says what it did; once this returns, ZooKeeper is quiet (as far as
    /// the load goes).
    pub async fn stop(self) -> LoadReport {
        self.stop.send_replace(true);
        self.task.await.expect("the load task panicked")
    }
}

async fn connect_client(connect: &str) -> Option<Client> {
    let connecting = Client::connector().with_session_timeout(crate::ZK_SESSION_TIMEOUT).connect(connect);
    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(Ok(client)) => Some(client),
        _ => None,
    }
}

async fn run_load(connect: String, root: String, seed: u64, mut stopped: watch::Receiver<bool>) -> LoadReport {
    let mut dice = Dice(seed);
    let mut report = LoadReport::default();
    let mut client: Option<Client> = None;
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    while !*stopped.borrow_and_update() {
        let Some(zk) = client.as_ref() else {
            client = connect_client(&connect).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        let leaf = format!("{root}/k{}", dice.roll(LEAVES));
        let subtree = format!("{root}/s{}", dice.roll(SUBTREES));
        let value = format!("v{}", dice.roll(1_000_000));
        let op = tokio::time::timeout(Duration::from_secs(5), async {
            match dice.roll(10) {
                0..=3 => zk.set_data(&leaf, value.as_bytes(), None).await.map(drop),
                4 | 5 => zk.create(&leaf, value.as_bytes(), &options).await.map(drop),
                6 => zk.delete(&leaf, None).await,
                7 => {
                    // A whole subtree at once, then (another turn) gone at once.
                    let mut multi = zk.new_multi_writer();
                    build_subtree(&mut multi, &subtree, &value, &options);
                    multi.commit().await.map(drop).map_err(zookeeper_client::Error::from)
                }
                8 => {
                    let mut multi = zk.new_multi_writer();
                    delete_subtree(&mut multi, &subtree);
                    multi.commit().await.map(drop).map_err(zookeeper_client::Error::from)
                }
                _ => {
                    let mut multi = zk.new_multi_writer();
                    let other = format!("{root}/k{}", dice.roll(LEAVES));
                    let _ = multi.add_set_data(&leaf, value.as_bytes(), None);
                    let _ = multi.add_set_data(&other, value.as_bytes(), None);
                    multi.commit().await.map(drop).map_err(zookeeper_client::Error::from)
                }
            }
        })
        .await;
        match op {
            Ok(Ok(())) => report.applied += 1,
            Ok(Err(error)) => {
                report.failed += 1;
                if matches!(
                    error,
                    zookeeper_client::Error::SessionExpired
                        | zookeeper_client::Error::ClientClosed
                        | zookeeper_client::Error::ConnectionLoss
                ) {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(_) => {
                report.failed += 1;
                client = None;
            }
        }
        tokio::time::sleep(LOAD_PACE).await;
    }
    report
}

fn build_subtree(
    multi: &mut MultiWriter<'_>,
    subtree: &str,
    value: &str,
    options: &zookeeper_client::CreateOptions<'_>,
) {
    let _ = multi.add_create(subtree, value.as_bytes(), options);
    for c in 0..SUBTREE_CHILDREN {
        let _ = multi.add_create(&format!("{subtree}/c{c}"), value.as_bytes(), options);
    }
}

fn delete_subtree(multi: &mut MultiWriter<'_>, subtree: &str) {
    for c in 0..SUBTREE_CHILDREN {
        let _ = multi.add_delete(&format!("{subtree}/c{c}"), None);
    }
    let _ = multi.add_delete(subtree, None);
}

/// What the reader saw. `backwards` and `torn` must be zero in every scenario; blank reads are
/// allowed only where Redis itself lost its data.
#[derive(Clone, Debug, Default)]
pub struct ReadReport {
    /// Consistent reads of one znode (data and meta in one `MULTI`).
    pub reads: u64,
    /// Reads where a path's `mzxid` was below one read earlier: `(path, earlier, now)`.
    pub backwards: Vec<(String, i64, i64)>,
    /// Reads where data and meta disagreed (one without the other, or the data's length not
    /// the meta's `data_length`).
    pub torn: Vec<String>,
    /// Reads that failed (Redis unreachable or restarting).
    pub failed: u64,
}

/// One znode's data, `mzxid` and `data_length`, read in one `MULTI`.
type StoredPair = (Option<Vec<u8>>, Option<String>, Option<String>);

/// Polls every path of [`universe`] in a tight loop.
pub struct Reader {
    stop: watch::Sender<bool>,
    task: JoinHandle<ReadReport>,
}

impl Reader {
    pub fn start(redis_url: &str, prefix: &str, root: &str) -> Reader {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run_reader(redis_url.to_owned(), prefix.to_owned(), universe(root), stopped));
        Reader { stop, task }
    }

    pub async fn stop(self) -> ReadReport {
        self.stop.send_replace(true);
        self.task.await.expect("the reader task panicked")
    }
}

async fn redis_connection(url: &str) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client.get_multiplexed_async_connection_with_config(&config).await.ok()
}

async fn run_reader(url: String, prefix: String, paths: Vec<String>, mut stopped: watch::Receiver<bool>) -> ReadReport {
    let mut report = ReadReport::default();
    let mut highest: HashMap<String, i64> = HashMap::new();
    let mut conn: Option<MultiplexedConnection> = None;
    while !*stopped.borrow_and_update() {
        let Some(c) = conn.as_mut() else {
            conn = redis_connection(&url).await;
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        for path in &paths {
            let data_key = format!("{prefix}:{{{path}}}");
            let meta_key = format!("{prefix}:{{{path}}}:meta");
            let answer: redis::RedisResult<StoredPair> = redis::pipe()
                .atomic()
                .cmd("GET")
                .arg(&data_key)
                .cmd("HGET")
                .arg(&meta_key)
                .arg("mzxid")
                .cmd("HGET")
                .arg(&meta_key)
                .arg("data_length")
                .query_async(c)
                .await;
            let (data, mzxid, length) = match answer {
                Ok(values) => values,
                Err(_) => {
                    report.failed += 1;
                    conn = None;
                    break;
                }
            };
            report.reads += 1;
            match (data, mzxid, length) {
                (None, None, None) => {}
                (Some(data), Some(mzxid), Some(length)) if length.parse::<usize>().ok() == Some(data.len()) => {
                    let mzxid: i64 = mzxid.parse().unwrap_or(i64::MIN);
                    let seen = highest.entry(path.clone()).or_insert(mzxid);
                    if mzxid < *seen {
                        report.backwards.push((path.clone(), *seen, mzxid));
                    }
                    *seen = (*seen).max(mzxid);
                }
                _ => report.torn.push(path.clone()),
            }
        }
    }
    report
}

/// Entries of the change stream `P:changes` that are out of order for their path: a `put`
/// whose `mzxid` is below an earlier entry's for the same path, or not above that of an
/// earlier `del` (a deleted version coming back). Returns `(entry id, path, why)`.
pub async fn stream_disorder(conn: &mut MultiplexedConnection, prefix: &str) -> Vec<(String, String, String)> {
    type Entries = Vec<(String, HashMap<String, String>)>;
    let entries: Entries = redis::cmd("XRANGE")
        .arg(format!("{prefix}:changes"))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap_or_default();
    let mut last: HashMap<String, (i64, bool)> = HashMap::new();
    let mut disorder = Vec::new();
    for (id, fields) in entries {
        let (Some(path), Some(op)) = (fields.get("path"), fields.get("op")) else { continue };
        let Some(mzxid) = fields.get("mzxid").and_then(|m| m.parse::<i64>().ok()) else { continue };
        if let Some((before, was_delete)) = last.get(path) {
            let out_of_order = if op == "put" && *was_delete { mzxid <= *before } else { mzxid < *before };
            if out_of_order {
                disorder.push((id.clone(), path.clone(), format!("{op} mzxid {mzxid} after {before}")));
            }
        }
        // A hide (lost READ permission) is no delete: the same version may come back.
        let deleted = op == "del" && fields.get("reason").map(String::as_str) == Some("delete");
        last.insert(path.clone(), (mzxid, deleted));
    }
    disorder
}

/// Ends a scenario: stops the load (ZooKeeper is then quiet), waits until Redis is the exact
/// copy of `root`, stops the reader, and asserts every promise: the load applied more than
/// `min_applied` changes and the reader read more than 100 times, no read saw a version go
/// backwards or a torn pair, and the change stream (prefix `zk`) holds nothing out of order.
/// Returns what the load and the reader reported.
pub async fn finish(
    load: Load,
    reader: Reader,
    zk: &Client,
    redis_url: &str,
    root: &str,
    min_applied: u64,
) -> (LoadReport, ReadReport) {
    let load = load.stop().await;
    crate::world::assert_converges(zk, redis_url, "zk", root).await;
    let seen = reader.stop().await;
    assert!(load.applied > min_applied, "the load hardly ran: {load:?}");
    assert!(seen.reads > 100, "the reader hardly read: {seen:?}");
    assert!(seen.backwards.is_empty(), "mzxid went backwards: {:?}", seen.backwards);
    assert!(seen.torn.is_empty(), "data and meta disagreed: {:?}", seen.torn);
    let mut conn = crate::world::redis_conn(redis_url).await;
    let disorder = stream_disorder(&mut conn, "zk").await;
    assert!(disorder.is_empty(), "change stream out of order: {disorder:?}");
    (load, seen)
}
