//! Remote execution: the pool scheduler, workers, and the Execution and
//! Operations gRPC services.

pub mod config;

pub use config::ExecutionConfig;
