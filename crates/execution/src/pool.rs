//! Builds the worker pool and scheduler from a resolved `[execution]`: one
//! group per `[[execution.pool.workers]]` table, each able to make more of
//! its workers (replacements, `POST /api/workers/add`).
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use re_action_cache::ActionCacheStore;
use re_cas::BlobStore;
use re_metrics::Metrics;
use re_proto::{Error, Result};
use tracing::info;

use crate::config::{ExecutionBackend, ExecutionConfig, WorkerConfig};
use crate::docker::DockerLauncher;
use crate::host_worker::{host_properties, HostLauncher};
use crate::run_frame::ActionFrame;
use crate::scheduler::Scheduler;
use crate::spawner::Spawner;
use crate::worker::Worker;
use crate::worker_status::WorkerStatus;
use crate::workers::{StartingGroup, WorkerGroup};

/// `None` when execution is disabled. `ac` should be completeness-checked
/// (`re_action_cache::CompletenessCheckingStore`): its hits answer Execute.
/// Host workers start their processes through `spawner`.
pub async fn start_pool(
    config: &ExecutionConfig,
    cas: Arc<dyn BlobStore>,
    ac: Arc<dyn ActionCacheStore>,
    metrics: Option<Arc<Metrics>>,
    spawner: Option<Spawner>,
) -> Result<Option<Arc<Scheduler>>> {
    if config.backend == ExecutionBackend::None {
        info!("Execution disabled ([execution] backend = \"none\")");
        return Ok(None);
    }
    let groups = build_groups(config, cas.clone(), spawner)?;
    let total: usize = groups.iter().map(|(_, w)| w.len()).sum();
    info!("Worker pool started with {total} workers");
    Ok(Some(Scheduler::start(&config.pool, cas, ac, groups, metrics)))
}

/// The configured groups and their first workers, whose actions read and
/// write `cas` (the server's store, or a worker agent's local cache).
pub fn build_groups(
    config: &ExecutionConfig,
    cas: Arc<dyn BlobStore>,
    spawner: Option<Spawner>,
) -> Result<Vec<StartingGroup>> {
    let max_disk = config.pool.max_action_disk_bytes;
    let (host_ids, docker_ids) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut groups = Vec::new();
    for (i, table) in config.pool.workers.iter().enumerate() {
        let name = table.name(i);
        let group = match table {
            WorkerConfig::Host(h) => {
                let mut properties = host_properties();
                properties.extend(h.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
                let (cfg, cas, group) = (h.clone(), cas.clone(), name.clone());
                let spawner = spawner.clone().ok_or_else(|| {
                    Error::Internal("host workers need the process spawner (started by the binary)".into())
                })?;
                let make = Box::new(move |id: String| -> Result<Arc<dyn Worker>> {
                    let status = Arc::new(WorkerStatus::new(&id, &group, "host"));
                    let launcher = HostLauncher::new(id, &cfg, spawner.clone())?;
                    Ok(Arc::new(ActionFrame::new(launcher, cas.clone(), max_disk, status)))
                });
                WorkerGroup::new(name, "host", h.memory_per_worker_bytes, properties, host_ids.clone(), make)
            }
            WorkerConfig::Docker(d) => {
                let mut properties = crate::docker::spec::docker_properties();
                properties.extend(d.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
                let memory = d.memory_limit.unwrap_or(512 << 20);
                let (cfg, cas, group) = (d.clone(), cas.clone(), name.clone());
                let make = Box::new(move |id: String| -> Result<Arc<dyn Worker>> {
                    let status = Arc::new(WorkerStatus::new(&id, &group, "docker"));
                    let launcher = DockerLauncher::new(id, &cfg)?;
                    Ok(Arc::new(ActionFrame::new(launcher, cas.clone(), max_disk, status)))
                });
                WorkerGroup::new(name, "docker", memory, properties, docker_ids.clone(), make)
            }
        };
        let count = match table {
            WorkerConfig::Host(h) => h.count,
            WorkerConfig::Docker(d) => d.count,
        };
        let group = Arc::new(group);
        let workers = (0..count).map(|_| group.make()).collect::<Result<Vec<_>>>()?;
        for w in &workers {
            info!("Registered {} worker {} (group {})", group.kind, w.id(), group.name);
        }
        groups.push((group, workers));
    }
    Ok(groups)
}
