//! The integration tests' harness is the dev-only crate `zkmirror-testkit` (`testkit/`), shared
//! with the benchmark. This module only re-exports it, so that every test binary keeps saying
//! `mod common;` and `common::world::…`, `common::servers::free_port`, `common::ZkServer`, ….

pub use zkmirror_testkit::*;
