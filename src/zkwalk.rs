//! The one depth-first walk of a ZooKeeper subtree used by everything outside the engine:
//! `verify`, `lag`, `export` and the benchmark's reference reads.
//!
//! Why one walker: each of them used to keep its own stack, its own window of reads in flight
//! and its own decoding of a `getData`+`getChildren` multi-read, and they drifted apart (batch
//! sizes, NoAuth, what happens to a path deleted mid-walk). Here the walk only schedules: a
//! stack of paths still to read, at most [`WalkLimits::requests`] batched reads in flight, and
//! the answers handed back one path at a time. What a path's read *is* comes from the caller
//! (see [`Walk::new`]); the common case, whole-znode snapshots decoded once by
//! [`crate::zk::fetch_many`], is [`snapshots`].
//!
//! The caller decides where the walk goes: nothing below a path is read unless the caller
//! passes its children to [`Walk::descend`]. That is how `verify` follows the filter and stops
//! at an unreadable znode, and how `export` skips `/zookeeper` and ephemeral znodes.
//!
//! Memory stays bounded whatever the tree's size: the stack holds only the unread siblings along
//! the current branch (depth first, not breadth first), at most `requests × batch` paths are in
//! flight, and when answers are heavy the batch shrinks so that what is in flight stays near
//! [`WalkLimits::bytes`] (a tree of 1 MB values is read a few znodes per request, not 64).
//!
//! Architecture invariant: reads only; never writes to ZooKeeper and knows nothing of Redis.

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use zookeeper_client::Client;

use crate::error::ZkError;
use crate::path;
use crate::znode::Fetched;

/// How much a walk keeps in flight.
#[derive(Clone, Copy, Debug)]
pub struct WalkLimits {
    /// Most paths in one read request.
    pub batch: usize,
    /// Most read requests in flight at once.
    pub requests: usize,
    /// Bytes of answers the walk aims to keep in flight at most (see [`Walk::weighing`]). A
    /// single znode larger than this is still read, one per request.
    pub bytes: usize,
}

impl WalkLimits {
    /// Snapshot walks (`verify`, `export`): 64-path multi-reads, the engine's batch size, four in
    /// flight (256 paths, what each of them had in flight before), and 16 MB of answers: a
    /// multi-read reply is built whole in ZooKeeper's heap, so heavy ones are kept small.
    pub const SNAPSHOTS: WalkLimits = WalkLimits { batch: 64, requests: 4, bytes: 16 << 20 };
}

/// One read request: the paths, and what each was found to be, in any order.
pub type ReadBatch<T> = Box<dyn Fn(Vec<String>) -> BoxFuture<'static, Vec<(String, T)>> + Send + Sync>;

/// A depth-first walk of the subtree at a root; see the module documentation.
pub struct Walk<T> {
    stack: Vec<String>,
    read: ReadBatch<T>,
    weigh: fn(&T) -> usize,
    limits: WalkLimits,
    /// Paths per request now: `limits.batch`, lowered while answers are heavy.
    batch: usize,
    in_flight: FuturesUnordered<BoxFuture<'static, Vec<(String, T)>>>,
    /// The answers of the last request, not yet handed out.
    ready: std::vec::IntoIter<(String, T)>,
}

impl<T: Send + 'static> Walk<T> {
    /// A walk that starts at `root` and reads paths with `read`, a batch at a time. `read` is
    /// called when a request is due; requests it sends right away (as `zookeeper_client` does
    /// when a read is called, not when its future is polled) leave in stack order.
    pub fn new(
        root: &str,
        limits: WalkLimits,
        read: impl Fn(Vec<String>) -> BoxFuture<'static, Vec<(String, T)>> + Send + Sync + 'static,
    ) -> Walk<T> {
        let limits = WalkLimits { batch: limits.batch.max(1), requests: limits.requests.max(1), ..limits };
        Walk {
            stack: vec![root.to_owned()],
            read: Box::new(read),
            weigh: |_| 0,
            limits,
            // Slow start: values' sizes are unknown until answers come, and a reply of 64 1 MB
            // znodes is 64 MB in ZooKeeper's heap.
            batch: limits.batch.min(4),
            in_flight: FuturesUnordered::new(),
            ready: Vec::new().into_iter(),
        }
    }

    /// Tells the walk how many bytes an answer holds, so that it can shrink its batches when
    /// answers are heavy (see [`WalkLimits::bytes`]). Without it every answer weighs nothing.
    pub fn weighing(mut self, weigh: fn(&T) -> usize) -> Walk<T> {
        self.weigh = weigh;
        self
    }

    /// The next path read and what the read found; `None` once every path the walk was given
    /// has been read and handed out.
    pub async fn next(&mut self) -> Option<(String, T)> {
        loop {
            if let Some(answer) = self.ready.next() {
                // Full requests only while answers are still being handed out: the caller is
                // about to push more children, and a request cut short now would go out small.
                self.send(false);
                return Some(answer);
            }
            self.send(true);
            let answers = self.in_flight.next().await?;
            self.adapt(&answers);
            self.ready = answers.into_iter();
        }
    }

    /// Reads the children `names` of `parent` later (depth first: before `parent`'s siblings).
    pub fn descend<S: AsRef<str>>(&mut self, parent: &str, names: impl IntoIterator<Item = S>) {
        self.stack.extend(names.into_iter().map(|name| path::child(parent, name.as_ref())));
    }

    /// Sends requests while there is room; with `partial`, also one shorter than a batch.
    fn send(&mut self, partial: bool) {
        while self.in_flight.len() < self.limits.requests && !self.stack.is_empty() {
            if !partial && self.stack.len() < self.batch {
                return;
            }
            let paths = self.stack.split_off(self.stack.len().saturating_sub(self.batch));
            self.in_flight.push((self.read)(paths));
        }
    }

    /// Sets the batch size from the heaviest answer of the last request: at most
    /// `bytes / requests` bytes per request, between 1 and `limits.batch` paths.
    fn adapt(&mut self, answers: &[(String, T)]) {
        let heaviest = answers.iter().map(|(_, answer)| (self.weigh)(answer)).max().unwrap_or(0);
        let per_request = self.limits.bytes / self.limits.requests;
        let fits = match per_request.checked_div(heaviest) {
            Some(fits) => fits.clamp(1, self.limits.batch),
            None => self.limits.batch,
        };
        // Shrink at once, grow at most twofold per answer.
        self.batch = fits.min(self.batch.saturating_mul(2));
    }
}

/// A walk of whole-znode snapshots: each batch is one multi-read of a `getData` and a
/// `getChildren` per path, decoded by [`crate::zk::fetch_many`] (a path found absent is read
/// once more there, for its tombstone zxid). An error names the path it is reported for, not
/// every path of the failed request.
pub fn snapshots(zk: &Client, root: &str) -> Walk<Result<Fetched, ZkError>> {
    let zk = zk.clone();
    Walk::new(root, WalkLimits::SNAPSHOTS, move |paths| read_snapshots(zk.clone(), paths).boxed()).weighing(weight)
}

/// Snapshots of `paths` in one multi-read (see [`snapshots`]), in `paths` order.
pub async fn read_snapshots(zk: Client, paths: Vec<String>) -> Vec<(String, Result<Fetched, ZkError>)> {
    crate::zk::fetch_many(zk, paths)
        .await
        .into_iter()
        .map(|(path, result)| {
            let result = result.map_err(|error| match error {
                ZkError::Read { source, .. } => ZkError::Read { path: path.clone(), source },
                other => other,
            });
            (path, result)
        })
        .collect()
}

fn weight(answer: &Result<Fetched, ZkError>) -> usize {
    match answer {
        Ok(Fetched::Present(znode)) => {
            znode.data.len() + znode.path.len() + znode.children.iter().map(String::len).sum::<usize>()
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// A tree in memory: path → (children, bytes). Reads record the batches they were given.
    struct Fake {
        tree: BTreeMap<String, (Vec<String>, usize)>,
        batches: Mutex<Vec<Vec<String>>>,
    }

    fn fake(paths: &[(&str, &[&str], usize)]) -> Arc<Fake> {
        let tree = paths
            .iter()
            .map(|(p, c, bytes)| ((*p).to_owned(), (c.iter().map(|c| (*c).to_owned()).collect(), *bytes)))
            .collect();
        Arc::new(Fake { tree, batches: Mutex::new(Vec::new()) })
    }

    type Answer = Option<(Vec<String>, usize)>;

    fn walk(tree: &Arc<Fake>, limits: WalkLimits) -> Walk<Answer> {
        let tree = Arc::clone(tree);
        Walk::new("/r", limits, move |paths| {
            tree.batches.lock().expect("not poisoned").push(paths.clone());
            let answers = paths.into_iter().map(|p| (p.clone(), tree.tree.get(&p).cloned())).collect();
            futures::future::ready(answers).boxed()
        })
        .weighing(|answer| answer.as_ref().map_or(0, |(_, bytes)| *bytes))
    }

    fn run(mut walk: Walk<Answer>, descend: impl Fn(&str) -> bool) -> Vec<String> {
        futures::executor::block_on(async {
            let mut seen = Vec::new();
            while let Some((path, answer)) = walk.next().await {
                if let Some((children, _)) = answer {
                    if descend(&path) {
                        walk.descend(&path, &children);
                    }
                }
                seen.push(path);
            }
            seen.sort();
            seen
        })
    }

    const WIDE: WalkLimits = WalkLimits { batch: 2, requests: 2, bytes: 1 << 20 };

    #[test]
    fn every_path_is_read_once_and_only_where_the_caller_descends() {
        let tree = fake(&[
            ("/r", &["a", "b"], 1),
            ("/r/a", &["x", "y", "z"], 1),
            ("/r/a/x", &[], 1),
            ("/r/a/y", &[], 1),
            ("/r/a/z", &[], 1),
            ("/r/b", &["q"], 1),
            ("/r/b/q", &[], 1),
        ]);
        let all = run(walk(&tree, WIDE), |_| true);
        assert_eq!(all, ["/r", "/r/a", "/r/a/x", "/r/a/y", "/r/a/z", "/r/b", "/r/b/q"]);
        let read: usize = tree.batches.lock().expect("not poisoned").iter().map(Vec::len).sum();
        assert_eq!(read, 7, "each path read once");
        assert!(tree.batches.lock().expect("not poisoned").iter().all(|b| b.len() <= 2), "batches bounded");

        let tree = fake(&[("/r", &["a", "b"], 1), ("/r/a", &["x"], 1), ("/r/b", &["q"], 1)]);
        assert_eq!(run(walk(&tree, WIDE), |p| p != "/r/a"), ["/r", "/r/a", "/r/b", "/r/b/q"]);
    }

    #[test]
    fn a_path_gone_mid_walk_is_handed_out_and_not_descended() {
        let tree = fake(&[("/r", &["a", "gone"], 1), ("/r/a", &[], 1)]);
        assert_eq!(run(walk(&tree, WIDE), |_| true), ["/r", "/r/a", "/r/gone"]);
    }

    #[test]
    fn heavy_answers_shrink_the_batch_and_light_ones_restore_it() {
        // 1,000-byte znodes with 2,000 bytes per request (4,000 over 2 requests): two per request.
        let limits = WalkLimits { batch: 8, requests: 2, bytes: 4_000 };
        let children: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
        let names: Vec<&str> = children.iter().map(String::as_str).collect();
        let mut paths: Vec<(String, usize)> = vec![("/r".to_owned(), 1_000)];
        paths.extend(children.iter().map(|c| (format!("/r/{c}"), 1_000)));
        let entries: Vec<(&str, &[&str], usize)> = paths
            .iter()
            .map(|(p, bytes)| (p.as_str(), if p == "/r" { names.as_slice() } else { &[][..] }, *bytes))
            .collect();
        let tree = fake(&entries);
        assert_eq!(run(walk(&tree, limits), |_| true).len(), 21);
        let batches = tree.batches.lock().expect("not poisoned");
        assert!(batches.iter().all(|b| b.len() <= 2), "heavy answers, small requests: {batches:?}");

        let light: Vec<(&str, &[&str], usize)> = entries.iter().map(|(p, c, _)| (*p, *c, 10)).collect();
        let tree = fake(&light);
        assert_eq!(run(walk(&tree, limits), |_| true).len(), 21);
        let batches = tree.batches.lock().expect("not poisoned");
        assert!(batches.iter().any(|b| b.len() == 8), "light answers, full requests: {batches:?}");
    }
}
