//! Builds the worker pool and scheduler from `[execution]`.
use std::path::Path;
use std::sync::Arc;

use re_action_cache::ActionCacheStore;
use re_cas::BlobStore;
use re_proto::Result;
use tracing::info;

use crate::config::{ExecutionBackend, ExecutionConfig, HostWorkerConfig, WorkerConfig};
use crate::docker_worker::DockerWorker;
use crate::host_worker::HostWorker;
use crate::scheduler::Scheduler;
use crate::worker::Worker;

/// `None` when execution is disabled.
pub async fn start_pool(
    config: &ExecutionConfig,
    cas: Arc<dyn BlobStore>,
    ac: Arc<dyn ActionCacheStore>,
    data_dir: &Path,
) -> Result<Option<Arc<Scheduler>>> {
    if config.backend == ExecutionBackend::None {
        info!("Execution disabled ([execution] backend = \"none\")");
        return Ok(None);
    }
    let groups = if config.pool.workers.is_empty() {
        vec![WorkerConfig::Host(HostWorkerConfig::default_for_cpus())]
    } else {
        config.pool.workers.clone()
    };
    let mut workers: Vec<Arc<dyn Worker>> = Vec::new();
    let mut host_n = 0;
    let mut docker_n = 0;
    for group in &groups {
        match group {
            WorkerConfig::Host(h) => {
                let user = match &h.run_as_user {
                    Some(u) => Some(crate::user::resolve(u, h.run_as_group.as_deref())?),
                    None => match &h.run_as_group {
                        Some(_) => {
                            return Err(re_proto::Error::InvalidArgument("run_as_group needs run_as_user".into()))
                        }
                        None => None,
                    },
                };
                let base = h.work_dir.clone().unwrap_or_else(|| data_dir.join("work"));
                for _ in 0..h.count {
                    host_n += 1;
                    let id = format!("host-worker-{host_n}");
                    let w = HostWorker::new(id.clone(), h, base.join(&id), user, cas.clone())?;
                    info!("Registered host worker: {id}");
                    workers.push(Arc::new(w));
                }
            }
            WorkerConfig::Docker(d) => {
                d.validate()?;
                let base = d.work_dir.clone().unwrap_or_else(|| data_dir.join("work"));
                for _ in 0..d.count {
                    docker_n += 1;
                    let id = format!("docker-worker-{docker_n}");
                    let w = DockerWorker::start(id.clone(), d, base.join(&id), cas.clone())?;
                    info!("Registered docker worker: {id} (engine {}, image {})", w.engine(), d.image);
                    workers.push(w);
                }
            }
        }
    }
    info!("Worker pool started with {} workers", workers.len());
    Ok(Some(Scheduler::start(&config.pool, cas, ac, workers)))
}
