//! Builds the worker pool and scheduler from a resolved `[execution]`.
use std::sync::Arc;

use re_action_cache::ActionCacheStore;
use re_cas::BlobStore;
use re_proto::Result;
use tracing::info;

use crate::config::{ExecutionBackend, ExecutionConfig, WorkerConfig};
use crate::docker::DockerLauncher;
use crate::host_worker::HostLauncher;
use crate::run_frame::ActionFrame;
use crate::scheduler::Scheduler;
use crate::worker::Worker;

/// `None` when execution is disabled. `ac` should be completeness-checked
/// (`re_action_cache::CompletenessCheckingStore`): its hits answer Execute.
pub async fn start_pool(
    config: &ExecutionConfig,
    cas: Arc<dyn BlobStore>,
    ac: Arc<dyn ActionCacheStore>,
) -> Result<Option<Arc<Scheduler>>> {
    if config.backend == ExecutionBackend::None {
        info!("Execution disabled ([execution] backend = \"none\")");
        return Ok(None);
    }
    let mut workers: Vec<Arc<dyn Worker>> = Vec::new();
    let max_disk = config.pool.max_action_disk_bytes;
    let (mut host_n, mut docker_n) = (0, 0);
    for group in &config.pool.workers {
        match group {
            WorkerConfig::Host(h) => {
                for _ in 0..h.count {
                    host_n += 1;
                    let launcher = HostLauncher::new(format!("host-worker-{host_n}"), h)?;
                    info!("Registered host worker: {}", crate::run_frame::Launcher::id(&launcher));
                    workers.push(Arc::new(ActionFrame::new(launcher, cas.clone(), max_disk)));
                }
            }
            WorkerConfig::Docker(d) => {
                for _ in 0..d.count {
                    docker_n += 1;
                    let id = format!("docker-worker-{docker_n}");
                    let launcher = DockerLauncher::new(id.clone(), d)?;
                    info!("Registered docker worker: {id} (engine {}, image {})", launcher.engine(), d.image);
                    workers.push(Arc::new(ActionFrame::new(launcher, cas.clone(), max_disk)));
                }
            }
        }
    }
    info!("Worker pool started with {} workers", workers.len());
    Ok(Some(Scheduler::start(&config.pool, cas, ac, workers)))
}
