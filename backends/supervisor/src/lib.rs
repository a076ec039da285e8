//! Starting the right BitNet server for this machine and keeping it serving:
//! the catalog of bundled builds, the pure selection over a hardware report,
//! and the job that spawns, watches, restarts and falls back.

pub mod catalog;
pub mod classify;
pub mod config;
pub mod endpoint;
pub mod health;
pub mod job;
pub mod merit;
pub mod output;
pub mod port;
pub mod process;
pub mod proxy;
pub mod secret;
pub mod select;
pub mod stats;
pub mod sweep;

pub use catalog::{Catalog, CatalogError, GpuApi, Variant};
pub use classify::{Exit, Failure};
pub use config::{ConfigError, ConfigFile, Policy, Settings};
pub use job::{Endpoint, Job, JobError, JobSpec, JobState, Lease};
pub use merit::{Basis, Measured, Merit};
pub use proxy::{Proxy, ProxyError, SseStream};
pub use select::{select, Candidate, Inputs, Launch, Preferences, Selection, Skipped};
