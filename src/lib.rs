//! zkmirror keeps an exact, versioned copy of a ZooKeeper subtree in Redis, so that any program
//! reads configuration with a plain `GET` while ZooKeeper stays the source of truth.
//!
//! The whole job is a snapshot, then the changes after it (see [`mirror`]): one persistent
//! recursive watch is placed first, then the subtree is walked and written, then every event
//! marks a path to read and write again. Reconnects, session expiry and Redis losses run the
//! same walk again. The Redis layout is a public contract, documented in `schema/layout.md`.
//!
//! # Layout
//! - [`service`]: the daemon — one mirror per root, reloads, metrics endpoint, progress.
//! - [`settings`]: TOML file, environment and flags, layered; errors name file, line, key.
//! - [`mirror`]: the engine — phases, the event loop, the hand-off from walk to live.
//! - [`zk`]: the ZooKeeper side — session, watch, whole-znode reads. Never writes to ZooKeeper.
//! - [`store`]: the Redis side — batched writes through the Lua scripts, status, sweep.
//! - [`schema`]: every key name and script; mirrors `schema/layout.md`.
//! - [`znode`]: the small types crossing from the ZooKeeper side to the Redis side.
//! - [`config`]: what a mirror needs to know, validated before anything connects.
//! - [`filter`]: which znodes below a root are copied (globs, depth).
//! - [`verify`]: an independent comparison of a subtree with its copy, key by key.
//! - [`reader`]: reads the copy the way an application does (`get`, `ls`, the status hash).
//! - [`lag`]: how far the copy is behind ZooKeeper, measured on the subtree itself.
//! - [`transfer`]: import a tree into ZooKeeper from a directory or a tree file; export one.
//! - [`observe`]: Prometheus metric names and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`nodelay`]: turns off Nagle's algorithm on the ZooKeeper client's sockets (the client
//!   cannot).
//! - [`status`], [`shutdown`], [`path`], [`error`]: the small pieces.
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

pub mod config;
mod engine;
pub mod error;
pub mod filter;
pub mod lag;
pub mod mirror;
pub mod nodelay;
pub mod observe;
pub mod path;
pub mod reader;
pub mod schema;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod transfer;
pub mod verify;
pub mod zk;
pub mod zkwalk;
pub mod znode;

pub use config::{MirrorConfig, ZkDigest};
pub use error::{ConfigError, MirrorError, StoreError, ZkError};
pub use mirror::{Mirror, MirrorHandle};
pub use status::{MirrorStatus, Phase};
