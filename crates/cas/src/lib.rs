//! Content-addressable storage: the [`BlobStore`] interface, its memory and
//! filesystem implementations, and the CAS and ByteStream gRPC services.

pub mod bytestream_http;
pub mod bytestream_service;
pub mod cas_service;
pub mod chunk_pool;
pub mod compression;
pub mod config;
mod filesystem_packed;
mod filesystem_scan;
pub mod filesystem_store;
pub mod filesystem_writer;
pub mod find_missing_http;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc_frames;
pub mod lru_index;
pub mod memory_store;
pub mod metered;
mod packs;
pub mod pins;
pub mod resource_name;
pub mod store;

pub use bytestream_service::ByteStreamService;
pub use cas_service::CasService;
pub use config::{CasBackend, CasConfig};
pub use filesystem_store::FilesystemStore;
pub use memory_store::MemoryStore;
pub use store::{BlobStore, BlobWriter, ByteStreamChunks};

use std::sync::Arc;

/// Builds the store `config` (already resolved) describes; the filesystem
/// one rebuilds its index first.
pub async fn open_store(config: &CasConfig) -> re_proto::Result<Arc<dyn BlobStore>> {
    Ok(match config.backend {
        CasBackend::Memory => Arc::new(MemoryStore::new(config.max_size_bytes)),
        CasBackend::Filesystem => Arc::new(
            FilesystemStore::open(
                config.root_dir.clone(),
                config.max_size_bytes,
                config.fsync_writes,
                config.small_blob_max_bytes,
            )
            .await?,
        ),
    })
}
