//! The read scheduler: which paths to read next, in how many multi-read requests, and how much
//! may be in flight at once (by request, by path and by bytes).
//!
//! The policy was tuned by benchmark (see `docs/performance-method.md`); it lives here, apart
//! from the event loop, so that it can be unit-tested without servers.

use std::collections::{HashMap, VecDeque};

/// Most paths in one multi-read request while the mirror keeps up.
pub(crate) const MAX_READ_BATCH: usize = 64;
/// Most paths in one multi-read request under a backlog of changes. With the requests in
/// flight bounded, their size sets how many changes per second the mirror can read (paths in
/// flight / ZooKeeper's latency, which grows with its queue at high write rates).
pub(crate) const MAX_READ_BATCH_BACKLOG: usize = 256;
/// Most read requests in flight while a walk reads the tree (cold sync, reconcile): enough to
/// keep ZooKeeper busy with 64-path multi-reads.
pub(crate) const WALK_READ_REQUESTS: usize = 16;
/// Most read requests in flight for changes alone, once a backlog of a full request
/// ([`MAX_READ_BATCH_BACKLOG`] paths) waits. Short of that, one: while it is answered, newly
/// dirty paths gather and leave together in the next multi-read (group commit, as on the Redis
/// side). A lone change is still read at once, and under load ZooKeeper serves one request per
/// many changes instead of one per few, which would take its CPU from the writers (measured on
/// 2 cores at ZooKeeper's ceiling: 5–7 % more writes per second with one request than with
/// four, and the mirror's lag no worse).
pub(crate) const LIVE_READ_REQUESTS: usize = 4;
/// Read requests an anti-entropy walk may have in flight: it runs while the mirror is live, so
/// it yields ZooKeeper and Redis to the changes readers are waiting for.
pub(crate) const ANTI_ENTROPY_READ_REQUESTS: usize = 2;

/// What kind of reading is going on, as far as the request policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// Only changes (no walk reading, or a walk that is sweeping).
    Changes,
    /// A cold sync or reconcile walk reads the tree.
    Walk,
    /// An anti-entropy walk reads the tree while the mirror is live.
    AntiEntropy,
}

/// What is in flight now, and the limits that apply.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadRoom {
    pub mode: ReadMode,
    pub dirty: usize,
    /// Paths waiting to be read: dirty paths and the walk's stack.
    pub waiting: usize,
    pub requests_in_flight: usize,
    pub paths_in_flight: usize,
    /// Most paths in flight: the configured read window, lowered by the memory budget.
    pub max_paths: usize,
    /// Most paths in one request (the memory budget's share for one reply).
    pub max_request: usize,
}

impl ReadRoom {
    /// The most requests that may be in flight at once in this mode.
    pub fn max_requests(&self) -> usize {
        match self.mode {
            ReadMode::Walk => WALK_READ_REQUESTS,
            _ if self.dirty >= MAX_READ_BATCH_BACKLOG => LIVE_READ_REQUESTS,
            _ => 1,
        }
    }

    /// How many paths the next request may carry, or `None` if no request may be sent now.
    /// Dirty paths are spread over the free requests, each between [`MAX_READ_BATCH`] and
    /// [`MAX_READ_BATCH_BACKLOG`] paths.
    pub fn next_request_size(&self) -> Option<usize> {
        let max_requests = self.max_requests();
        if self.requests_in_flight >= max_requests || self.paths_in_flight >= self.max_paths {
            return None;
        }
        let free_requests = max_requests - self.requests_in_flight;
        let per_request = self
            .dirty
            .div_ceil(free_requests)
            .clamp(MAX_READ_BATCH, MAX_READ_BATCH_BACKLOG)
            .min(self.max_request.max(1));
        let size = (self.max_paths - self.paths_in_flight).min(per_request);
        // While something is in flight, a window freed a few paths at a time (as writes drain)
        // must not go out as many tiny requests: wait until half a request's worth is free.
        let worth = per_request.min(self.waiting.max(1)).min(self.max_paths);
        if self.requests_in_flight > 0 && size < worth.div_ceil(2) {
            return None;
        }
        Some(size)
    }

    /// Whether the walk may contribute paths to a request now: an anti-entropy walk keeps to
    /// [`ANTI_ENTROPY_READ_REQUESTS`].
    pub fn walk_may_read(&self) -> bool {
        self.mode != ReadMode::AntiEntropy || self.requests_in_flight < ANTI_ENTROPY_READ_REQUESTS
    }
}

/// Paths waiting to be read, each once, in the order they were first marked. Each carries the
/// sequence number of the earliest watch event that marked it since it was last sent: the
/// watermark (see [`super::watermark`]) waits for that event's read to be written.
#[derive(Default)]
pub(crate) struct DirtyPaths {
    order: VecDeque<String>,
    marks: HashMap<String, Option<u64>>,
    /// Kept as paths come and go: summing on every event would make a burst quadratic.
    bytes: usize,
}

/// What one dirty path costs, roughly: the path twice (queue and map) and their overhead.
fn dirty_cost(path: &str) -> usize {
    2 * path.len() + 64
}

impl DirtyPaths {
    /// Marks `path` dirty. `mark` is the event sequence number that asks for the read (None
    /// for a sweep candidate). One later read answers every mark of the path, so the path keeps
    /// the earliest; the other one, if any, is returned: the caller closes it.
    #[must_use = "a superseded mark must be closed"]
    pub fn push(&mut self, path: &str, mark: Option<u64>) -> Option<u64> {
        match self.marks.get_mut(path) {
            Some(existing) => match (*existing, mark) {
                (Some(a), Some(b)) => {
                    *existing = Some(a.min(b));
                    Some(a.max(b))
                }
                (None, b) => {
                    *existing = b;
                    None
                }
                (Some(_), None) => None,
            },
            None => {
                self.marks.insert(path.to_owned(), mark);
                self.order.push_back(path.to_owned());
                self.bytes += dirty_cost(path);
                None
            }
        }
    }

    /// Whether `path` is dirty and already carries a mark (so another mark adds nothing).
    pub fn is_marked(&self, path: &str) -> bool {
        matches!(self.marks.get(path), Some(Some(_)))
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn pop(&mut self) -> Option<(String, Option<u64>)> {
        let path = self.order.pop_front()?;
        self.bytes -= dirty_cost(&path);
        let mark = self.marks.remove(&path).flatten();
        Some((path, mark))
    }

    pub fn clear(&mut self) {
        self.order.clear();
        self.marks.clear();
        self.bytes = 0;
    }

    /// Bytes held, roughly (for the memory budget's accounting of what the mirror holds).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(mode: ReadMode, dirty: usize, requests: usize, paths: usize, max_paths: usize) -> ReadRoom {
        ReadRoom {
            mode,
            dirty,
            waiting: dirty.max(1000),
            requests_in_flight: requests,
            paths_in_flight: paths,
            max_paths,
            max_request: usize::MAX,
        }
    }

    #[test]
    fn a_lone_change_is_read_at_once_in_one_request() {
        let r = room(ReadMode::Changes, 1, 0, 0, 1024);
        assert_eq!(r.next_request_size(), Some(MAX_READ_BATCH));
        // While that request is answered, further changes wait and gather.
        assert_eq!(room(ReadMode::Changes, 5, 1, 1, 1024).next_request_size(), None);
    }

    #[test]
    fn a_backlog_spreads_over_four_requests_of_up_to_256_paths() {
        let r = room(ReadMode::Changes, 10_000, 0, 0, 1024);
        assert_eq!(r.max_requests(), LIVE_READ_REQUESTS);
        assert_eq!(r.next_request_size(), Some(MAX_READ_BATCH_BACKLOG));
        // The read window still bounds the total: 24 free paths wait for more to be free.
        assert_eq!(room(ReadMode::Changes, 10_000, 3, 1000, 1024).next_request_size(), None);
        assert_eq!(room(ReadMode::Changes, 10_000, 3, 768, 1024).next_request_size(), Some(256));
    }

    #[test]
    fn a_walk_keeps_sixteen_requests_and_anti_entropy_two() {
        assert_eq!(room(ReadMode::Walk, 0, 15, 960, 1024).next_request_size(), Some(64));
        assert_eq!(room(ReadMode::Walk, 0, 16, 960, 1024).next_request_size(), None);
        assert!(room(ReadMode::AntiEntropy, 0, 1, 64, 1024).walk_may_read());
        assert!(!room(ReadMode::AntiEntropy, 0, 2, 64, 1024).walk_may_read());
    }

    #[test]
    fn the_memory_budget_lowers_the_paths_in_flight() {
        // A budget that allows 8 paths: the request carries at most 8, then nothing more.
        assert_eq!(room(ReadMode::Walk, 0, 0, 0, 8).next_request_size(), Some(8));
        assert_eq!(room(ReadMode::Walk, 0, 1, 8, 8).next_request_size(), None);
        assert_eq!(room(ReadMode::Walk, 0, 0, 0, 0).next_request_size(), None);
    }

    #[test]
    fn a_window_freed_a_few_paths_at_a_time_does_not_send_tiny_requests() {
        // 62 paths allowed, 60 in flight in one request: 2 free is not worth a request...
        assert_eq!(room(ReadMode::Changes, 5_000, 1, 60, 62).next_request_size(), None);
        // ...half a request is, and so is anything once nothing is in flight.
        assert_eq!(room(ReadMode::Changes, 5_000, 1, 30, 62).next_request_size(), Some(32));
        assert_eq!(room(ReadMode::Changes, 5_000, 0, 0, 2).next_request_size(), Some(2));
        // A lone waiting path is worth a request of its own.
        let lone = ReadRoom { waiting: 1, ..room(ReadMode::Walk, 0, 1, 60, 62) };
        assert_eq!(lone.next_request_size(), Some(2));
    }

    #[test]
    fn one_request_carries_at_most_the_budgets_share() {
        let r = ReadRoom { max_request: 8, ..room(ReadMode::Walk, 0, 0, 0, 48) };
        assert_eq!(r.next_request_size(), Some(8));
        // Half of 8 free is worth a request while others are in flight.
        assert_eq!(ReadRoom { max_request: 8, ..room(ReadMode::Walk, 0, 5, 44, 48) }.next_request_size(), Some(4));
    }

    #[test]
    fn dirty_paths_are_read_once_and_keep_their_earliest_mark() {
        let mut dirty = DirtyPaths::default();
        assert_eq!(dirty.push("/r/a", Some(3)), None);
        assert_eq!(dirty.push("/r/a", Some(5)), Some(5), "the later mark is superseded");
        assert_eq!(dirty.push("/r/a", Some(1)), Some(3), "an earlier one replaces it");
        assert_eq!(dirty.push("/r/b", None), None);
        assert_eq!(dirty.push("/r/b", Some(7)), None);
        assert!(dirty.is_marked("/r/b"));
        assert_eq!(dirty.bytes(), 2 * (2 * 4 + 64));
        assert_eq!(dirty.pop(), Some(("/r/a".to_owned(), Some(1))));
        assert_eq!(dirty.pop(), Some(("/r/b".to_owned(), Some(7))));
        assert_eq!(dirty.pop(), None);
    }
}
