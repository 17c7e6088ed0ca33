//! The write queue: reads that are ready to be written, and the one Redis pipeline in flight.
//!
//! One pipeline at a time keeps writes in read order without any per-path bookkeeping; under
//! load, writes that become ready while one is in flight share the next (group commit).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::store::Write;

/// Most writes in one Redis pipeline.
pub(crate) const MAX_BATCH_WRITES: usize = 1000;
/// Most payload bytes in one Redis pipeline (a few 1 MB znodes at most), unless the memory
/// budget asks for less (see [`WriteQueue::new`]).
pub(crate) const MAX_BATCH_BYTES: usize = 8 << 20;
/// Copies of a pipeline alive while it is in flight: the writes, the encoded pipeline, and
/// the connection's send buffer.
const IN_FLIGHT_COPIES: usize = 3;

/// A write waiting for Redis, with what it settles once acknowledged.
pub(crate) struct Pending {
    pub write: Write,
    /// The walk generation that read it, if a walk did.
    pub walk: Option<u64>,
    /// The watch event this read answers (see [`super::watermark`]).
    pub mark: Option<u64>,
    /// When the read was sent (unix ms): Redis refuses the write once it is too old.
    pub read_at_ms: u64,
}

/// The pipeline in flight and what it settles.
pub(crate) struct Batch {
    pub writes: Arc<Vec<Write>>,
    /// Writes per walk generation, to close the walk's accounting when Redis acknowledges.
    pub walk_writes: Vec<(u64, usize)>,
    /// The mark each write answers, in write order (see [`super::watermark`]).
    pub marks: Vec<Option<u64>>,
    /// The walk generation that read each write, in write order: a walk's refused puts are
    /// evidence that ZooKeeper went back (see [`super::history`]).
    pub walks: Vec<Option<u64>>,
    /// `mtime` of the live (event-driven) puts, for the propagation-delay histogram.
    pub live_mtimes: Vec<i64>,
    /// The watermark this batch raises `P:mirror` `zxid` to, after its writes.
    pub zxid: Option<i64>,
    pub bytes: usize,
    /// When the batch's oldest read was sent (unix ms), if it has any write.
    pub oldest_read_ms: Option<u64>,
    /// Sent again after Redis answered NOSCRIPT once.
    pub retried: bool,
}

pub(crate) struct WriteQueue {
    ready: VecDeque<Pending>,
    ready_bytes: usize,
    in_flight: Option<Batch>,
    max_batch_bytes: usize,
}

impl Default for WriteQueue {
    fn default() -> Self {
        WriteQueue::new(64 << 20)
    }
}

impl WriteQueue {
    /// A queue for a mirror with this memory budget: one pipeline takes at most an eighth of
    /// it (and at most [`MAX_BATCH_BYTES`]), so the copies of the one in flight leave room for
    /// reads.
    pub fn new(memory_budget: usize) -> WriteQueue {
        WriteQueue {
            ready: VecDeque::new(),
            ready_bytes: 0,
            in_flight: None,
            max_batch_bytes: (memory_budget / 8).clamp(64 << 10, MAX_BATCH_BYTES),
        }
    }

    pub fn push(&mut self, pending: Pending) {
        self.ready_bytes += pending.write.weight();
        self.ready.push_back(pending);
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.in_flight.is_none()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Bytes held: ready writes, and the pipeline in flight [`IN_FLIGHT_COPIES`] times.
    pub fn bytes(&self) -> usize {
        self.ready_bytes + self.in_flight.as_ref().map_or(0, |b| IN_FLIGHT_COPIES * b.bytes)
    }

    /// Takes everything ready, up to the batch bounds, as the next pipeline. `zxid`: the
    /// watermark to publish after the writes, if it moved.
    pub fn start_batch(&mut self, zxid: Option<i64>) -> Option<(Arc<Vec<Write>>, Option<u64>)> {
        if self.in_flight.is_some() || (self.ready.is_empty() && zxid.is_none()) {
            return None;
        }
        let mut batch = Batch {
            writes: Arc::new(Vec::new()),
            walk_writes: Vec::new(),
            marks: Vec::new(),
            walks: Vec::new(),
            live_mtimes: Vec::new(),
            zxid,
            bytes: 0,
            oldest_read_ms: None,
            retried: false,
        };
        let mut writes = Vec::new();
        while let Some(pending) = self.ready.pop_front() {
            let weight = pending.write.weight();
            self.ready_bytes -= weight;
            batch.bytes += weight;
            if let (Write::Put(znode), None) = (&pending.write, pending.walk) {
                batch.live_mtimes.push(znode.stat.mtime);
            }
            if let Some(generation) = pending.walk {
                match batch.walk_writes.last_mut() {
                    Some((g, n)) if *g == generation => *n += 1,
                    _ => batch.walk_writes.push((generation, 1)),
                }
            }
            batch.marks.push(pending.mark);
            batch.walks.push(pending.walk);
            batch.oldest_read_ms = Some(batch.oldest_read_ms.map_or(pending.read_at_ms, |t| t.min(pending.read_at_ms)));
            writes.push(pending.write);
            if writes.len() >= MAX_BATCH_WRITES || batch.bytes >= self.max_batch_bytes {
                break;
            }
        }
        batch.writes = Arc::new(writes);
        let sent = (batch.writes.clone(), batch.oldest_read_ms);
        self.in_flight = Some(batch);
        Some(sent)
    }

    #[cfg(test)]
    pub fn in_flight_writes(&self) -> Vec<&Write> {
        self.in_flight.as_ref().map(|b| b.writes.iter().collect()).unwrap_or_default()
    }

    /// The pipeline in flight, once Redis answered it.
    pub fn finish_batch(&mut self) -> Option<Batch> {
        self.in_flight.take()
    }

    /// Puts a batch back in flight (sent again after NOSCRIPT).
    pub fn resend(&mut self, batch: Batch) -> (Arc<Vec<Write>>, Option<u64>) {
        let sent = (batch.writes.clone(), batch.oldest_read_ms);
        self.in_flight = Some(batch);
        sent
    }

    /// Drops every ready write (Redis lost, session expired: a walk rewrites them). Their
    /// marks go with them: the caller blocks the watermark, which forgets every open mark.
    pub fn clear_ready(&mut self) {
        self.ready.clear();
        self.ready_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::znode::{Znode, ZnodeStat};

    fn put(path: &str, bytes: usize) -> Write {
        Write::Put(Znode { path: path.to_owned(), data: vec![0; bytes], stat: ZnodeStat::default(), children: vec![] })
    }

    #[test]
    fn a_batch_stops_at_the_byte_bound_and_counts_what_it_holds() {
        let mut q = WriteQueue::default();
        for i in 0..20 {
            q.push(Pending { write: put(&format!("/r/{i}"), 1 << 20), walk: Some(1), mark: None, read_at_ms: 1 });
        }
        let held = q.bytes();
        assert!(held > 20 << 20);
        let writes = q.start_batch(None).map(|(w, _)| w.len());
        assert_eq!(writes, Some(8), "8 MiB per pipeline");
        // The pipeline in flight counts twice; the rest stays ready.
        assert!(q.bytes() > held);
        assert!(q.start_batch(None).is_none(), "one pipeline at a time");
        let batch = q.finish_batch().map(|b| b.walk_writes);
        assert_eq!(batch, Some(vec![(1, 8)]));
        assert_eq!(q.ready_len(), 12);
    }

    #[test]
    fn a_watermark_alone_makes_a_batch() {
        let mut q = WriteQueue::default();
        assert!(q.start_batch(None).is_none());
        assert_eq!(q.start_batch(Some(7)).map(|(w, oldest)| (w.len(), oldest)), Some((0, None)));
        assert_eq!(q.finish_batch().and_then(|b| b.zxid), Some(7));
    }
}
