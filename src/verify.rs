//! An independent check that Redis holds exactly the subtree: data bytes, all eleven `Stat`
//! fields, children sets, and no key beyond them.
//!
//! It shares only the key names ([`Keys`]) and the root's [`Filter`] with the mirror, none of
//! its logic: it reads ZooKeeper and Redis itself and compares. The tests use it as their oracle
//! and the benchmark uses it to decide when a copy is exact.
//!
//! With a filter, the walk descends only where [`Filter::may_descend`] allows (as the mirror's
//! does), only admitted znodes are expected to have keys, and a key of any other path below the
//! root is an extra key. A copied znode's children set still lists all of ZooKeeper's children.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use redis::aio::ConnectionLike;
use zookeeper_client::Client;

use crate::error::ZkError;
use crate::filter::Filter;
use crate::path;
use crate::schema::{KeyKind, Keys, STAT_FIELDS};
use crate::zkwalk;
use crate::znode::{Fetched, Znode};

/// One way in which Redis differs from ZooKeeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub key: String,
    pub what: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.what)
    }
}

/// The result of one comparison.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Znodes read from ZooKeeper.
    pub znodes: u64,
    /// Znodes ZooKeeper would not show the reader (`NoAuth`): expected absent from Redis.
    pub unreadable: u64,
    pub differences: Vec<Difference>,
    /// Keys that differed at first but matched within the grace period of
    /// [`compare_settled`] (changes in flight); always 0 from [`compare`].
    pub settled: u64,
}

impl Report {
    pub fn is_exact(&self) -> bool {
        self.differences.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_exact() {
            return write!(f, "exact: {} znodes match ({} unreadable, skipped)", self.znodes, self.unreadable);
        }
        writeln!(f, "{} differences over {} znodes:", self.differences.len(), self.znodes)?;
        for d in self.differences.iter().take(20) {
            writeln!(f, "  {d}")?;
        }
        if self.differences.len() > 20 {
            writeln!(f, "  ... and {} more", self.differences.len() - 20)?;
        }
        Ok(())
    }
}

/// Errors that stop a comparison (as opposed to differences, which it reports).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A read failed (it names the path); `NoAuth` is not an error but counted as unreadable.
    #[error(transparent)]
    Zk(#[from] ZkError),
    #[error("cannot read from Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

struct Expected {
    path: String,
    data: Vec<u8>,
    meta: [String; 11],
    children: Vec<String>,
}

/// Compares the whole subtree at `root` with the keys under `prefix` (no filter).
pub async fn compare<C: ConnectionLike + Send>(
    zk: &Client,
    redis: &mut C,
    prefix: &str,
    root: &str,
) -> Result<Report, VerifyError> {
    compare_with_filter(zk, redis, prefix, root, &Filter::all()).await
}

/// Compares the subtree at `root` with the keys under `prefix`, as a mirror with `filter`
/// copies it: znodes the filter leaves out must have no keys.
pub async fn compare_with_filter<C: ConnectionLike + Send>(
    zk: &Client,
    redis: &mut C,
    prefix: &str,
    root: &str,
    filter: &Filter,
) -> Result<Report, VerifyError> {
    let keys = Keys::new(prefix);
    let mut report = Report::default();
    let mut expected_keys: HashSet<String> = HashSet::new();
    let mut walk = zkwalk::snapshots(zk, root);
    let mut batch: Vec<Expected> = Vec::new();
    while let Some((path, read)) = walk.next().await {
        match read? {
            Fetched::Present(znode) => {
                if filter.may_descend(root, &path) {
                    walk.descend(&path, &znode.children);
                }
                if !filter.admits(root, &path) {
                    continue;
                }
                report.znodes += 1;
                expected_keys.insert(keys.data(&path));
                expected_keys.insert(keys.meta(&path));
                if !znode.children.is_empty() {
                    expected_keys.insert(keys.children(&path));
                }
                batch.push(Expected::from(znode));
                if batch.len() >= 256 {
                    check_batch(redis, &keys, &mut batch, &mut report).await?;
                }
            }
            // Deleted while we walked.
            Fetched::Absent { .. } => {}
            // Nothing below it is looked at: its children are as hidden as its data.
            Fetched::Unreadable { .. } => report.unreadable += 1,
        }
    }
    check_batch(redis, &keys, &mut batch, &mut report).await?;
    find_extra_keys(redis, &keys, root, filter, &expected_keys, &mut report).await?;
    report.differences.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(report)
}

/// How often [`compare_settled`] looks again at what differed.
const RECHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Above this many differing znodes a re-check walks the whole subtree again instead.
const RECHECK_PATHS_MAX: usize = 10_000;

/// Compares like [`compare_with_filter`], then, while differences remain and `grace` has not
/// passed, looks again at just the differing keys (ZooKeeper and Redis read anew) and keeps
/// only those that still differ. A change in flight, applied by a live mirror a moment later,
/// therefore is not reported; a copy that is really wrong is, after at most `grace`.
pub async fn compare_settled<C: ConnectionLike + Send>(
    zk: &Client,
    redis: &mut C,
    prefix: &str,
    root: &str,
    filter: &Filter,
    grace: Duration,
) -> Result<Report, VerifyError> {
    let deadline = Instant::now() + grace;
    let mut report = compare_with_filter(zk, redis, prefix, root, filter).await?;
    let first: BTreeSet<String> = report.differences.iter().map(|d| d.key.clone()).collect();
    while !report.is_exact() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(RECHECK_INTERVAL.min(deadline - now)).await;
        report.differences = recheck(zk, redis, prefix, root, filter, &report.differences).await?;
    }
    let still: HashSet<&str> = report.differences.iter().map(|d| d.key.as_str()).collect();
    report.settled = first.iter().filter(|k| !still.contains(k.as_str())).count() as u64;
    Ok(report)
}

/// The differences among `differing` keys now, reading their znodes again.
async fn recheck<C: ConnectionLike + Send>(
    zk: &Client,
    redis: &mut C,
    prefix: &str,
    root: &str,
    filter: &Filter,
    differing: &[Difference],
) -> Result<Vec<Difference>, VerifyError> {
    let keys = Keys::new(prefix);
    let mut paths: BTreeSet<String> = BTreeSet::new();
    let mut outside_layout: Vec<&str> = Vec::new();
    for d in differing {
        match keys.parse(&d.key) {
            Some((_, path)) => {
                paths.insert(path.to_owned());
            }
            None => outside_layout.push(&d.key),
        }
    }
    if paths.len() > RECHECK_PATHS_MAX {
        return Ok(compare_with_filter(zk, redis, prefix, root, filter).await?.differences);
    }
    let mut out = Vec::new();
    let mut present = Vec::new();
    let mut absent = Vec::new();
    // Left out by the filter: Redis must hold none of its keys, whatever ZooKeeper has.
    let (copied, left_out): (Vec<String>, Vec<String>) = paths.into_iter().partition(|p| filter.copies(root, p));
    absent.extend(left_out);
    for chunk in copied.chunks(zkwalk::WalkLimits::SNAPSHOTS.batch) {
        for (path, read) in zkwalk::read_snapshots(zk.clone(), chunk.to_vec()).await {
            match read? {
                Fetched::Present(znode) => present.push(Expected::from(znode)),
                // Gone from ZooKeeper, or hidden from us: Redis must hold none of its keys.
                Fetched::Absent { .. } | Fetched::Unreadable { .. } => absent.push(path),
            }
        }
    }
    let mut report = Report::default();
    check_batch(redis, &keys, &mut present, &mut report).await?;
    out.append(&mut report.differences);
    let mut candidates: Vec<String> =
        absent.iter().flat_map(|p| [keys.data(p), keys.meta(p), keys.children(p)]).collect();
    candidates.extend(outside_layout.iter().map(|k| (*k).to_owned()));
    if !candidates.is_empty() {
        let mut pipe = redis::pipe();
        for key in &candidates {
            pipe.cmd("EXISTS").arg(key);
        }
        let exists: Vec<bool> = pipe.query_async(redis).await?;
        for (key, exists) in candidates.into_iter().zip(exists) {
            if exists {
                let what = match keys.parse(&key) {
                    Some((_, path)) => extra_key(root, filter, path),
                    None => "key outside the layout".to_owned(),
                };
                out.push(Difference { key, what });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

impl From<Znode> for Expected {
    fn from(znode: Znode) -> Expected {
        let Znode { path, data, stat, mut children } = znode;
        children.sort();
        Expected { path, data, meta: stat.fields(), children }
    }
}

async fn check_batch<C: ConnectionLike + Send>(
    redis: &mut C,
    keys: &Keys,
    batch: &mut Vec<Expected>,
    report: &mut Report,
) -> Result<(), VerifyError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for e in batch.iter() {
        pipe.cmd("GET").arg(keys.data(&e.path));
        pipe.cmd("HGETALL").arg(keys.meta(&e.path));
        pipe.cmd("SMEMBERS").arg(keys.children(&e.path));
    }
    let answers: Vec<redis::Value> = pipe.ignore_errors().query_async(redis).await?;
    for (e, answer) in batch.iter().zip(answers.chunks(3)) {
        let [data, meta, children] = answer else { continue };
        compare_znode(keys, e, data, meta, children, &mut report.differences);
    }
    batch.clear();
    Ok(())
}

fn compare_znode(
    keys: &Keys,
    e: &Expected,
    data: &redis::Value,
    meta: &redis::Value,
    children: &redis::Value,
    out: &mut Vec<Difference>,
) {
    let mut differ = |key: String, what: String| out.push(Difference { key, what });
    match redis::from_redis_value_ref::<Option<Vec<u8>>>(data) {
        Ok(Some(stored)) if stored == e.data => {}
        Ok(Some(stored)) => differ(
            keys.data(&e.path),
            format!("data differs: Redis has {}, ZooKeeper has {}", show_bytes(&stored), show_bytes(&e.data)),
        ),
        Ok(None) => differ(keys.data(&e.path), "missing".into()),
        Err(err) => differ(keys.data(&e.path), format!("unreadable: {err}")),
    }
    match redis::from_redis_value_ref::<HashMap<String, String>>(meta) {
        Ok(stored) if stored.is_empty() => differ(keys.meta(&e.path), "missing".into()),
        Ok(stored) => {
            for (field, want) in STAT_FIELDS.iter().zip(&e.meta) {
                match stored.get(*field) {
                    Some(have) if have == want => {}
                    Some(have) => differ(keys.meta(&e.path), format!("{field} is {have}, ZooKeeper says {want}")),
                    None => differ(keys.meta(&e.path), format!("{field} missing, ZooKeeper says {want}")),
                }
            }
            if !stored.contains_key("mirrored_at") {
                differ(keys.meta(&e.path), "mirrored_at missing".into());
            }
        }
        Err(err) => differ(keys.meta(&e.path), format!("unreadable: {err}")),
    }
    match redis::from_redis_value_ref::<BTreeSet<String>>(children) {
        Ok(stored) => {
            let want: BTreeSet<String> = e.children.iter().cloned().collect();
            if stored != want {
                let extra: Vec<_> = stored.difference(&want).take(5).collect();
                let missing: Vec<_> = want.difference(&stored).take(5).collect();
                differ(
                    keys.children(&e.path),
                    format!("children differ: extra in Redis {extra:?}, missing from Redis {missing:?}"),
                );
            }
        }
        Err(err) => differ(keys.children(&e.path), format!("unreadable: {err}")),
    }
}

async fn find_extra_keys<C: ConnectionLike + Send>(
    redis: &mut C,
    keys: &Keys,
    root: &str,
    filter: &Filter,
    expected: &HashSet<String>,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let pattern = keys.prefix_pattern();
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(redis).await?;
        for key in found {
            if expected.contains(&key) || key == keys.status() || key == keys.changes() {
                continue;
            }
            match keys.parse(&key) {
                // Tombstones are part of the layout and expire by themselves.
                Some((KeyKind::Tomb, _)) => {}
                // Znodes of other roots sharing the prefix are not ours to judge.
                Some((_, path)) if !path::is_within(path, root) => {}
                Some((_, path)) => {
                    let what = extra_key(root, filter, path);
                    report.differences.push(Difference { key, what })
                }
                None if key.starts_with(&format!("{}:{{", keys.prefix())) => {
                    report.differences.push(Difference { key, what: "key outside the layout".into() })
                }
                None => {}
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Why a key of `path` should not exist.
fn extra_key(root: &str, filter: &Filter, path: &str) -> String {
    if filter.copies(root, path) {
        "extra key: no such znode".to_owned()
    } else {
        format!("extra key: the filter leaves {path} out ({})", filter.describe())
    }
}

fn show_bytes(bytes: &[u8]) -> String {
    const SHOWN: usize = 40;
    let shown = &bytes[..bytes.len().min(SHOWN)];
    let text = String::from_utf8_lossy(shown);
    let ellipsis = if bytes.len() > SHOWN { "…" } else { "" };
    format!("{} bytes {:?}{}", bytes.len(), text, ellipsis)
}
