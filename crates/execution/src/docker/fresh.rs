//! Fresh mode: a new container per action whose main process is the action
//! (`docker run --rm` semantics), removed afterwards whatever happened.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{AttachContainerOptionsBuilder, EventsOptionsBuilder, WaitContainerOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use re_proto::{Error, Result};
use tokio_util::sync::CancellationToken;

use super::config::DockerWorkerConfig;
use super::engine::{engine_message, status_of, Engine};
use super::io::{pump, LogStream, Pumped};
use super::spec::{host_config, Spec};
use super::{archive, Launch};
use crate::action::PreparedAction;
use crate::run_frame::{ActionDir, Exit, Probe};

/// Makes, runs and removes the worker's containers.
pub struct FreshContainers {
    pub worker: String,
    pub engine: Arc<Engine>,
    pub cfg: DockerWorkerConfig,
}

/// A created container, attached, not yet started.
pub struct FreshRun {
    pub container: String,
    output: Option<LogStream>,
}

impl FreshContainers {
    /// Pulls (if configured), creates the container, copies the inputs in
    /// (archive mode) and attaches to its output.
    pub async fn stage(
        &self,
        docker: &Docker,
        job: &PreparedAction,
        dir: &ActionDir,
        spec: &Spec,
        launch: Launch,
        cancel: &CancellationToken,
    ) -> Result<FreshRun> {
        let (engine, cfg) = (&self.engine, &self.cfg);
        engine.pull(docker, &spec.image, job.timeout, cancel).await?;
        let args = &job.command.arguments;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(vec![args[0].clone()]),
            cmd: Some(args[1..].to_vec()),
            env: Some(launch.env),
            working_dir: Some(launch.working_dir),
            user: spec.user.clone(),
            labels: Some(engine.labels("fresh")),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(host_config(cfg, launch.mount.as_deref(), spec, false)),
            ..Default::default()
        };
        let container = engine.create(docker, body, &spec.image).await?;
        let attached = async {
            if launch.mount.is_none() {
                archive::upload_dir(docker, &container, dir.root.clone(), "re-server", "exec").await?;
            }
            let opts = AttachContainerOptionsBuilder::default().stream(true).stdout(true).stderr(true).build();
            let attached =
                docker.attach_container(&container, Some(opts)).await.map_err(|e| engine.error("attaching", e))?;
            Ok::<_, Error>(attached.output)
        }
        .await;
        match attached {
            Ok(output) => Ok(FreshRun { container, output: Some(output) }),
            Err(e) => {
                engine.remove(docker, &container).await;
                Err(e)
            }
        }
    }

    /// Starts the container and waits for the action to end.
    pub async fn run(
        &self,
        docker: &Docker,
        run: &mut FreshRun,
        job: &PreparedAction,
        dir: &ActionDir,
        cancel: &CancellationToken,
        probe: &Probe,
    ) -> Result<Exit> {
        probe.container_started(&run.container);
        let (engine, cfg, worker) = (&self.engine, &self.cfg, self.worker.as_str());
        let id = run.container.as_str();
        let started = unix_now();
        if let Err(e) = docker.start_container(id, None).await {
            let msg = engine_message(&e);
            // A program that cannot be started is the action's fault.
            let ours = status_of(&e).is_some()
                && ["executable file not found", "no such file or directory", "permission denied"]
                    .iter()
                    .any(|m| msg.contains(m));
            return Err(if ours {
                Error::InvalidArgument(format!("cannot start '{}': {msg}", job.command.arguments[0]))
            } else {
                engine.error("starting the container", e)
            });
        }
        let output = run.output.take().expect("attached in stage");
        let io = (dir.stdout.as_path(), dir.stderr.as_path());
        let engine_error = |e| engine.error("reading the action's output", e);
        if let Pumped::Stopped(error) = pump(output, io, None, job.timeout, cancel, engine_error).await? {
            return Ok(Exit { code: -1, error: Some(error), usage: None });
        }
        // The output ended: the process has exited. Its cgroup may still be
        // there (the engine removes it when it notices); everything in it was
        // this action's. Otherwise the frame's samples stand in.
        let usage = tokio::task::spawn_blocking({
            let id = id.to_string();
            move || crate::cgroup::container_usage(&id)
        })
        .await?
        .filter(|u| u.peak_memory_bytes > 0)
        .map(|u| crate::usage::ResourceUsage {
            user_cpu: u.user_cpu,
            system_cpu: u.system_cpu,
            peak_memory_bytes: u.peak_memory_bytes,
            source: "cgroup",
        });
        // Wait for the engine to agree the process has exited.
        let opts = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut wait = docker.wait_container(id, Some(opts));
        let _ = tokio::time::timeout(Duration::from_secs(30), wait.next()).await;
        let state = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| engine.error("inspecting the container", e))?
            .state
            .unwrap_or_default();
        let code = state.exit_code.unwrap_or(-1) as i32;
        // OOMKilled is set when any process of the container was killed; only
        // a failed action is blamed on it (one that recovered succeeded).
        // The engine sets the flag from an OOM event that may arrive after the
        // exit; a SIGKILLed action under a memory limit asks the event log.
        let oom = state.oom_killed == Some(true)
            || (code == 137 && cfg.memory_limit.is_some() && self.oom_event_since(docker, id, started).await);
        let error = (oom && code != 0).then(|| super::oom_error(cfg, worker));
        Ok(Exit { code, error, usage })
    }

    /// Whether the engine logged an `oom` event for `container` since
    /// `since` (unix seconds), waiting up to 2 s for a late one.
    async fn oom_event_since(&self, docker: &Docker, container: &str, since: u64) -> bool {
        let filters = HashMap::from([("container", vec![container]), ("event", vec!["oom"])]);
        let opts = EventsOptionsBuilder::default()
            .since(&since.saturating_sub(1).to_string())
            .until(&(unix_now() + 2).to_string())
            .filters(&filters)
            .build();
        let mut events = docker.events(Some(opts));
        matches!(tokio::time::timeout(Duration::from_secs(5), events.next()).await, Ok(Some(Ok(_))))
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
