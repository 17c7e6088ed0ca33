//! zkmirror keeps an exact, versioned copy of a ZooKeeper subtree in Redis, so that any program
//! reads configuration with a plain `GET` while ZooKeeper stays the source of truth.
//!
//! The whole job is a snapshot, then the changes after it (see [`mirror`]): one persistent
//! recursive watch is placed first, then the subtree is walked and written, then every event
//! marks a path to read and write again. Reconnects, session expiry and Redis losses run the
//! same walk again. The Redis layout is a public contract, documented in `schema/layout.md`.
//!
//! # Public API
//! What an embedder needs, and nothing else: [`Mirror`], [`MirrorConfig`] (with [`ZkDigest`]
//! and [`filter::Filter`]), [`MirrorHandle`], the status types [`MirrorStatus`] and [`Phase`],
//! the errors ([`ConfigError`], [`MirrorError`], [`ZkError`], [`StoreError`]), [`reader`] (read
//! the copy as an application does) and [`verify`] (the independent comparison, which
//! `zkmirror verify` and the tests use too). Everything else is `pub(crate)`.
//!
//! Two modules are public only for this package's own targets and are hidden from the docs;
//! neither is a stable API:
//! - `cli`: the operator commands, compiled into the library so that the binary
//!   (`src/main.rs`, a separate crate target) needs nothing else public. It is the binary's
//!   edge: the one place in the library that uses `anyhow`.
//! - `testing`: what only the integration tests and the benchmark reach into (the Redis
//!   writer, key names, the ZooKeeper walker), re-exported from the private modules.
//!
//! # Layout
//! - `service`: the daemon — one mirror per (prefix, root), reloads, metrics endpoint, progress.
//! - `settings`: TOML file, environment and flags, layered; errors name file, line, key.
//! - [`mirror`]: the engine — phases, the event loop, the hand-off from walk to live.
//! - `zk`: the ZooKeeper side — session, watch, whole-znode reads. Never writes to ZooKeeper.
//! - `election`: leadership among `--ha` instances — the one writer to ZooKeeper (its own
//!   lock znodes under the election path, nothing else).
//! - `zkwalk`: the one depth-first walk of a subtree outside the engine (verify, lag, export,
//!   the benchmark), bounded in paths and bytes.
//! - [`redis_conn`]: the one way a Redis client is built: URL, TLS material (CA, client
//!   identity), password file; loaded and checked with the settings.
//! - `store`: the Redis side — batched writes through the Lua scripts, status, sweep.
//! - `schema`: every key name and script; mirrors `schema/layout.md`.
//! - `znode`: the small types crossing from the ZooKeeper side to the Redis side.
//! - `config`: what a mirror needs to know, validated before anything connects.
//! - [`filter`]: which znodes below a root are copied (globs, depth).
//! - [`verify`]: an independent comparison of a subtree with its copy, key by key.
//! - [`reader`]: reads the copy the way an application does (`get`, `ls`, the status hash).
//! - `lag`: how far the copy is behind ZooKeeper, measured on the subtree itself.
//! - `transfer`: import a tree into ZooKeeper from a directory or a tree file; export one.
//! - `observe`: Prometheus metric names and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - `nodelay`: turns off Nagle's algorithm on the ZooKeeper client's sockets (the client
//!   cannot).
//! - `backoff`: exponential backoff with jitter for every retry loop.
//! - `cli`: the `zkmirror` commands (see above).
//! - `status`, `shutdown`, `path`, `error`: the small pieces.
//!
//! # Embedding
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = zkmirror::MirrorConfig::new("127.0.0.1:2181", "redis://127.0.0.1/", "/app");
//! let mirror = zkmirror::Mirror::new(config)?;
//! let handle = mirror.handle();
//! let task = tokio::spawn(mirror.run());
//! println!("{:?}", handle.status());
//! handle.stop();
//! task.await??;
//! # Ok(()) }
//! ```

mod backoff;
#[doc(hidden)]
pub mod cli;
mod clock;
pub mod cluster;
mod config;
mod election;
mod engine;
mod error;
mod fence;
pub mod filter;
mod lag;
pub mod mirror;
mod nodelay;
mod observe;
mod path;
pub mod reader;
pub mod redis_conn;
mod registry;
mod schema;
pub mod sentinel;
mod service;
mod settings;
mod shutdown;
mod status;
mod store;
pub mod tls;
mod transfer;
pub mod verify;
mod zk;
mod zkhub;
mod zkwalk;
mod znode;

pub use config::{Leadership, MirrorConfig, ZkDigest};
pub use error::{ConfigError, MirrorError, StoreError, ZkError};
pub use mirror::{Mirror, MirrorHandle};
pub use status::{MirrorStatus, Phase};
pub use tls::{TlsFileError, TlsFiles};
pub use zk::ZkConnect;

/// What only this package's integration tests and benchmark use; not a stable API (see the
/// crate docs). Re-exported here so that the modules themselves stay private.
#[doc(hidden)]
pub mod testing {
    pub use crate::path::is_within;
    pub use crate::schema::{status_field, KeyKind, Keys, Scripts, STAT_FIELDS};
    pub use crate::service::{ReloadOutcome, Service};
    pub use crate::settings::{Overrides, Settings};
    pub use crate::store::{Applied, BatchOutcome, Refusal, Store, StoredMark, Write, WriteOutcome};
    pub use crate::zk::ZkSession;
    pub use crate::zkwalk::{Walk, WalkLimits};
    pub use crate::znode::{Fetched, Znode, ZnodeStat};
}
