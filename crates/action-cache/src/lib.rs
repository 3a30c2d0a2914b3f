//! The action cache: stores of `ActionResult`s keyed by action digest, the
//! completeness-checking layer that hides results whose blobs left the CAS,
//! and the ActionCache gRPC service.

pub mod completeness;
pub mod config;
pub mod metered;
pub mod service;
pub mod store;

pub use completeness::CompletenessCheckingStore;
pub use config::{ActionCacheBackend, ActionCacheConfig};
pub use metered::MeteredActionCache;
pub use service::ActionCacheService;
pub use store::{open_store, ActionCacheStore, FilesystemActionCache, MemoryActionCache};
