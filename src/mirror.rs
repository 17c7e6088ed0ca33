//! The mirror's public face: [`Mirror`] to configure and run one, [`MirrorHandle`] to observe
//! and stop it. The work itself is the engine (`src/engine`): an I/O-free core that holds
//! every decision, and a driver that does the I/O it asks for.

use std::sync::Arc;

use crate::config::MirrorConfig;
use crate::engine::{driver, record::Recorder, Core};
use crate::error::MirrorError;
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::status::{Counters, MirrorStatus, Phase};
use crate::store::Store;

/// A mirror of one subtree, ready to run.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use zkmirror::{Mirror, MirrorConfig};
/// let mirror = Mirror::new(MirrorConfig::new("127.0.0.1:2181", "redis://127.0.0.1/", "/app"))?;
/// let handle = mirror.handle();
/// let task = tokio::spawn(mirror.run());
/// // ... later
/// handle.stop();
/// task.await??;
/// # Ok(()) }
/// ```
pub struct Mirror {
    config: MirrorConfig,
    counters: Arc<Counters>,
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
    /// The ZooKeeper hub this mirror shares with the root's other targets, if any; without,
    /// it opens its own session.
    feed: Option<crate::zkhub::ZkFeed>,
}

/// Observes and stops a [`Mirror`] from anywhere; cheap to clone.
#[derive(Clone)]
pub struct MirrorHandle {
    counters: Arc<Counters>,
    trigger: ShutdownTrigger,
    root: Arc<str>,
}

impl MirrorHandle {
    /// Asks the mirror to stop; `run()` then returns `Ok(())`.
    pub fn stop(&self) {
        self.trigger.fire();
    }

    pub fn status(&self) -> MirrorStatus {
        self.counters.snapshot()
    }

    pub fn phase(&self) -> Phase {
        self.status().phase
    }

    /// The root this mirror copies.
    pub fn root(&self) -> &str {
        &self.root
    }
}

impl Mirror {
    /// Validates `config`; nothing connects until [`Mirror::run`].
    pub fn new(config: MirrorConfig) -> Result<Mirror, MirrorError> {
        config.validate()?;
        let (trigger, shutdown) = shutdown::channel();
        let counters = Arc::new(Counters::default());
        counters.set_phase(Phase::Syncing);
        Ok(Mirror { config, counters, trigger, shutdown, feed: None })
    }

    /// Reads ZooKeeper through `feed`'s hub instead of a session of its own.
    pub(crate) fn with_feed(mut self, feed: crate::zkhub::ZkFeed) -> Mirror {
        self.feed = Some(feed);
        self
    }

    pub fn handle(&self) -> MirrorHandle {
        MirrorHandle {
            counters: self.counters.clone(),
            trigger: self.trigger.clone(),
            root: Arc::from(self.config.root.as_str()),
        }
    }

    /// Runs until stopped through a handle. Unreachable servers are retried with backoff;
    /// only a rejected ZooKeeper credential ends it with an error.
    pub async fn run(self) -> Result<(), MirrorError> {
        let store = Store::new(&self.config)?;
        let core = Core::new(
            &self.config,
            Recorder::new(self.counters, &self.config.target, &self.config.prefix, &self.config.root),
            std::time::Instant::now(),
        );
        // With several targets the same root runs once per target: each line says which. A
        // lone target's lines stay as they were.
        let span = if self.config.target == crate::config::DEFAULT_TARGET {
            tracing::Span::none()
        } else {
            tracing::info_span!("target", name = %self.config.target)
        };
        tracing::Instrument::instrument(driver::drive(self.config, store, core, self.shutdown, self.feed), span).await
    }
}
