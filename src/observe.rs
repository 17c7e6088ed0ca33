//! Metrics and health: the Prometheus names the mirror records, and the HTTP endpoint that
//! serves them with `/healthz` and `/readyz`.
//!
//! Recording goes through the `metrics` facade, so an embedding application that installs no
//! recorder pays nothing; `zkmirror run --metrics-addr` installs the Prometheus one.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::info;

use crate::mirror::MirrorHandle;
use crate::shutdown::Shutdown;

/// The handles one engine records into, registered once with its `root` and `prefix` labels.
pub(crate) struct EngineMetrics {
    pub events: Counter,
    pub reads: Counter,
    pub written: Counter,
    pub unchanged: Counter,
    pub refused: Counter,
    /// Writes whose script failed for that znode alone (a key of the wrong type).
    pub failed: Counter,
    pub deleted: Counter,
    pub skipped_noauth: Counter,
    pub skipped_filtered: Counter,
    pub batches: Counter,
    pub batch_size: Histogram,
    pub propagation: Histogram,
    /// Round trip of one ZooKeeper read request (a `getData` or a multi-read).
    pub zk_read: Histogram,
    /// Round trip of one Redis pipeline of writes.
    pub redis_write: Histogram,
    pub applied_zxid: Gauge,
    pub nodes: Gauge,
    pub zk_connected: Gauge,
    pub redis_connected: Gauge,
    pub walk_duration: Histogram,
    root: String,
    prefix: String,
    target: String,
}

/// A mirror that stopped (its target dropped, its registration gone, its root removed) is no
/// longer connected to anything: its gauges say so rather than their last value. The series
/// stay (the exporter keeps what it was given), frozen at zero.
impl Drop for EngineMetrics {
    fn drop(&mut self) {
        self.zk_connected.set(0.0);
        self.redis_connected.set(0.0);
    }
}

impl EngineMetrics {
    /// Every series carries `root`, `prefix` and `target`: one process may mirror the same root
    /// under two prefixes, or into several Redis targets (each a mirror of its own), and their
    /// series must not collide.
    pub fn new(target: &str, prefix: &str, root: &str) -> EngineMetrics {
        let labels = [("root", root.to_owned()), ("prefix", prefix.to_owned()), ("target", target.to_owned())];
        let with = |name: &'static str, value: &'static str| {
            let mut l: Vec<(&'static str, String)> = labels.to_vec();
            l.push((name, value.to_owned()));
            l
        };
        EngineMetrics {
            events: counter!("zkmirror_events_received_total", &labels),
            reads: counter!("zkmirror_zookeeper_reads_total", &labels),
            written: counter!("zkmirror_znode_writes_total", &with("outcome", "written")),
            unchanged: counter!("zkmirror_znode_writes_total", &with("outcome", "unchanged")),
            refused: counter!("zkmirror_znode_writes_total", &with("outcome", "refused")),
            failed: counter!("zkmirror_znode_writes_total", &with("outcome", "failed")),
            deleted: counter!("zkmirror_znode_writes_total", &with("outcome", "deleted")),
            skipped_noauth: counter!("zkmirror_skipped_znodes_total", &with("reason", "noauth")),
            skipped_filtered: counter!("zkmirror_skipped_znodes_total", &with("reason", "filtered")),
            batches: counter!("zkmirror_redis_batches_total", &labels),
            batch_size: histogram!("zkmirror_redis_batch_size", &labels),
            propagation: histogram!("zkmirror_propagation_delay_seconds", &labels),
            zk_read: histogram!(ZK_READ_SECONDS, &labels),
            redis_write: histogram!(REDIS_WRITE_SECONDS, &labels),
            applied_zxid: gauge!("zkmirror_applied_zxid", &labels),
            nodes: gauge!("zkmirror_znodes_mirrored", &labels),
            zk_connected: gauge!("zkmirror_zookeeper_connected", &labels),
            redis_connected: gauge!("zkmirror_redis_connected", &labels),
            walk_duration: histogram!("zkmirror_walk_duration_seconds", &labels),
            root: root.to_owned(),
            prefix: prefix.to_owned(),
            target: target.to_owned(),
        }
    }

    /// Counts a finished walk (cold sync, reconcile, anti-entropy) by its reason.
    pub fn walk_done(&self, reason: &'static str, seconds: f64) {
        counter!("zkmirror_walks_total", "root" => self.root.clone(), "prefix" => self.prefix.clone(),
                 "target" => self.target.clone(), "reason" => reason)
        .increment(1);
        self.walk_duration.record(seconds);
    }
}

/// The leadership of one `--ha` instance, labelled with its name: whether it leads now, how
/// often its role changed, and how long it has led in total (over this process's life).
pub(crate) struct LeaderMetrics {
    leader: Gauge,
    changes: Counter,
    seconds: Counter,
    /// Time led before the current term, and when the current term began.
    led: std::time::Duration,
    since: Option<std::time::Instant>,
}

impl LeaderMetrics {
    pub fn new(instance: &str) -> LeaderMetrics {
        let labels = [("instance", instance.to_owned())];
        let metrics = LeaderMetrics {
            leader: gauge!("zkmirror_leader", &labels),
            changes: counter!("zkmirror_leadership_changes_total", &labels),
            seconds: counter!("zkmirror_leader_seconds_total", &labels),
            led: std::time::Duration::ZERO,
            since: None,
        };
        metrics.leader.set(0.0);
        metrics
    }

    pub fn leading(&mut self) {
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            self.leader.set(1.0);
            self.changes.increment(1);
        }
    }

    pub fn standing_by(&mut self) {
        if let Some(since) = self.since.take() {
            self.led += since.elapsed();
            self.leader.set(0.0);
            self.changes.increment(1);
        }
        self.tick();
    }

    /// Brings `zkmirror_leader_seconds_total` up to date (whole seconds).
    pub fn tick(&self) {
        let total = self.led + self.since.map_or(std::time::Duration::ZERO, |s| s.elapsed());
        self.seconds.absolute(total.as_secs());
    }
}

const ZK_READ_SECONDS: &str = "zkmirror_zookeeper_read_seconds";
const REDIS_WRITE_SECONDS: &str = "zkmirror_redis_write_seconds";

/// Installs the Prometheus recorder for this process.
pub fn install_prometheus() -> Result<PrometheusHandle, String> {
    // The two round trips every change makes are sub-millisecond on a healthy network; their
    // buckets are fine enough there to tell which side a slow change waited on.
    let round_trip = [
        0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5,
        1.0, 5.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full(ZK_READ_SECONDS.into()), &round_trip)
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(REDIS_WRITE_SECONDS.into()),
                &round_trip,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("zkmirror_redis_batch_size".into()),
                &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0],
            )
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

/// What `/readyz` asks: are all mirrors past their first sync with both servers connected?
/// `Ok` carries the body of the answer.
pub type Readiness = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Readiness of a set of mirrors.
pub fn readiness_of(handles: impl Fn() -> Vec<MirrorHandle> + Send + Sync + 'static) -> Readiness {
    Arc::new(move || mirrors_ready(&handles).map(|()| "ready\n".to_owned()))
}

/// Readiness of an `--ha` instance: a standby is ready (it does what it should: stand by, with
/// its election session), and says so in the body; a leader is ready once its mirrors are.
/// Probing `/readyz` thus keeps every healthy instance in rotation; who leads is in the body,
/// in `zkmirror_leader` and in `zkmirror status --instances`.
pub fn ha_readiness_of(
    handles: impl Fn() -> Vec<MirrorHandle> + Send + Sync + 'static,
    role: tokio::sync::watch::Receiver<crate::election::Role>,
    instance: String,
) -> Readiness {
    Arc::new(move || match &*role.borrow() {
        crate::election::Role::Leader { fence, .. } => {
            mirrors_ready(&handles).map(|()| format!("ready as leader (instance {instance}, fence {fence})\n"))
        }
        _ => Ok(format!("ready as standby (instance {instance}; another instance leads, or none yet)\n")),
    })
}

fn mirrors_ready(handles: &impl Fn() -> Vec<MirrorHandle>) -> Result<(), String> {
    {
        let handles = handles();
        if handles.is_empty() {
            return Err("no root configured".into());
        }
        for handle in handles {
            let status = handle.status();
            if !status.synced {
                return Err(format!("{}: cold sync not done", handle.root()));
            }
            if !status.zk_connected {
                return Err(format!("{}: ZooKeeper not connected", handle.root()));
            }
            if !status.redis_connected {
                return Err(format!("{}: Redis not connected", handle.root()));
            }
        }
        Ok(())
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    prometheus: PrometheusHandle,
    readiness: Readiness,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(prometheus.render())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let verdict = readiness();
                async move {
                    match verdict {
                        Ok(body) => (StatusCode::OK, body),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    }
                }
            }),
        );
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.fired().await }).await
}
