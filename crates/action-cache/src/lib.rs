//! The action cache: stores of `ActionResult`s keyed by action digest, and the
//! ActionCache gRPC service that only hands out results whose blobs are all
//! still in the CAS.

pub mod completeness;
pub mod config;
pub mod service;
pub mod store;

pub use config::{ActionCacheBackend, ActionCacheConfig};
pub use service::ActionCacheService;
pub use store::{open_store, ActionCacheStore, FilesystemActionCache, MemoryActionCache};
