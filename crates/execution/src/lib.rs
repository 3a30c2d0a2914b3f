//! Remote execution: the pool scheduler, workers, and the Execution and
//! Operations gRPC services.
//!
//! Request flow: `ExecutionService::execute` → `Scheduler::execute` (cache
//! lookup, dedup, `action::prepare`, platform check in `platform.rs`, pin
//! inputs, queue) → a worker task takes it (`queue.rs` order) →
//! `Worker::run`: the action frame (`run_frame.rs`: directory, inputs,
//! launch, outputs, timestamps) around a launcher, either a host process
//! (`host_worker.rs`) or a container (`docker/`: warm exec or fresh
//! container, mount or archive file transfer) → `Scheduler::finish` (action
//! cache, operation completed) → the Execute stream sends the final Operation.

// Bazel 4 sends Command.platform, output_files and output_directories, which
// REAPI 2.1/2.2 deprecated; serving those clients means reading them.
#![allow(deprecated)]

pub mod action;
pub mod admission;
pub mod agents;
pub mod cgroup;
pub mod config;
pub mod docker;
pub mod execution_service;
pub mod host_worker;
pub mod input_tree;
pub mod leftovers;
pub mod operation;
pub mod operations_service;
pub mod outputs;
pub mod paths;
pub mod platform;
pub mod pool;
pub mod pool_status;
pub mod process;
pub mod queue;
pub mod recent;
pub mod run_frame;
pub mod sandbox;
pub mod scheduler;
pub mod spawner;
pub mod usage;
pub mod user;
pub mod worker;
pub mod worker_status;
pub mod workers;

pub use config::ExecutionConfig;
pub use execution_service::ExecutionService;
pub use operations_service::OperationsService;
pub use pool::start_pool;
pub use scheduler::Scheduler;
