//! Starting the right BitNet server for this machine: the catalog of
//! bundled builds and the pure selection over a hardware report. The job
//! that spawns, watches, restarts and falls back comes next (issue 4).

pub mod catalog;
pub mod select;

pub use catalog::{Catalog, CatalogError, GpuApi, Variant};
pub use select::{select, Candidate, Inputs, Launch, Preferences, Selection, Skipped};
