//! Warm mode: one started container per worker, each action an `exec` in it.
//!
//! The container's main process is a small `/bin/sh` loop (so the image
//! needs `/bin/sh`) that exits, and the engine removes the container, once
//! the server stops renewing its lease file for [`LEASE_EXPIRY_SECS`]: a
//! crashed server leaks nothing. The container is replaced after
//! `tasks_max` actions, after `seconds_idle` unused, when an action needs a
//! different image / network / user, and after a timeout, a cancellation or
//! a failed exec (removing it kills the action).
//!
//! One exec per action: the action runs under a `/bin/sh` wrapper that then
//! kills whatever it left running and reports the memory cgroup's OOM-kill
//! count after a marker on stderr (cut off by `io.rs`), so a memory-limit
//! kill is told apart from any other SIGKILL without a second exec.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerCreateBody;
use bollard::Docker;
use re_proto::{Error, Result};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::config::DockerWorkerConfig;
use super::engine::{status_of, Engine};
use super::io::{pump, Pumped};
use super::spec::{host_config, parse_oom_kills, parse_report, Spec, MOUNT_POINT};
use super::{archive, Launch};
use crate::action::PreparedAction;
use crate::run_frame::{ActionDir, Exit, Probe};

/// A warm container exits when its lease was not renewed for this long.
pub const LEASE_EXPIRY_SECS: u32 = 15;
const LEASE_RENEW: Duration = Duration::from_secs(3);

/// `sh -c WRAPPER re-server NONCE BASELINE ARGS...`: runs ARGS, kills every
/// process it may signal but PID 1 (the keepalive loop) and itself, then
/// prints `\x1eNONCE OOM USER SYS PEAK` on stderr: the memory cgroup's
/// `oom_kill` count, the CPU the cgroup used meanwhile (ns, user and system)
/// and its peak memory (bytes; since the container started). The kernel may
/// count an OOM kill a little after the victim died, so after a SIGKILL
/// (exit 137) the count is re-read for up to 2 s until it exceeds BASELINE.
/// Shell built-ins only, so the report costs no process of its own.
const WRAPPER: &str = r#"m=$1; b=$2; shift 2
u0=0; s0=0
[ -r /sys/fs/cgroup/cpuacct/cpuacct.usage_user ] && { read -r u0 < /sys/fs/cgroup/cpuacct/cpuacct.usage_user; read -r s0 < /sys/fs/cgroup/cpuacct/cpuacct.usage_sys; }
[ -r /sys/fs/cgroup/cpu.stat ] && while read -r k v; do case $k in user_usec) u0=${v}000;; system_usec) s0=${v}000;; esac; done < /sys/fs/cgroup/cpu.stat
"$@"; c=$?; kill -9 -1 2>/dev/null; n=0
u1=$u0; s1=$s0
[ -r /sys/fs/cgroup/cpuacct/cpuacct.usage_user ] && { read -r u1 < /sys/fs/cgroup/cpuacct/cpuacct.usage_user; read -r s1 < /sys/fs/cgroup/cpuacct/cpuacct.usage_sys; }
[ -r /sys/fs/cgroup/cpu.stat ] && while read -r k v; do case $k in user_usec) u1=${v}000;; system_usec) s1=${v}000;; esac; done < /sys/fs/cgroup/cpu.stat
p=0; for f in /sys/fs/cgroup/memory/memory.max_usage_in_bytes /sys/fs/cgroup/memory.peak; do [ -r "$f" ] && read -r p < "$f"; done
while :; do o=
  for f in /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events; do
    [ -r "$f" ] && while read -r k v; do [ "$k" = oom_kill ] && o=$v; done < "$f"
  done
  { [ "$c" != 137 ] || [ "${o:-0}" -gt "$b" ] || [ $n -ge 20 ]; } && break
  n=$((n+1)); sleep 0.1
done
printf '\036%s %s %s %s %s\n' "$m" "${o:-0}" "$((u1-u0))" "$((s1-s0))" "$p" >&2; exit $c"#;

/// Prints the memory cgroup's OOM counters (v1 or v2), built-ins only.
const READ_OOM_COUNTERS: &str = "for f in /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events; do \
[ -r \"$f\" ] && while read -r k v; do echo \"$k $v\"; done < \"$f\"; done";

/// Archive mode: empties the action's directory inside the container.
const CLEAR_EXEC_ROOT: &str = "rm -rf /re-server/exec";

struct Warm {
    id: String,
    spec: Spec,
    tasks: u64,
    last_used: Instant,
    /// The cgroup's OOM-kill count after the last action.
    oom_kills: u64,
}

/// The worker's warm container and its lease.
pub struct WarmContainer {
    worker: String,
    engine: Arc<Engine>,
    cfg: DockerWorkerConfig,
    /// The worker's host directory (bind-mounted in mount mode).
    mnt: PathBuf,
    archive: bool,
    slot: Arc<tokio::sync::Mutex<Option<Warm>>>,
    /// The container's id, readable while an action holds `slot` (archive
    /// mode renews the lease inside it).
    current: parking_lot::Mutex<Option<String>>,
    lease: AtomicU64,
}

/// One action's hold on the warm container, from `stage` to `release`.
pub struct WarmRun {
    slot: OwnedMutexGuard<Option<Warm>>,
    container: String,
    exec: String,
    nonce: String,
    /// Set when the container must not take another action.
    broken: bool,
}

impl WarmRun {
    pub fn container(&self) -> &str {
        &self.container
    }
}

impl WarmContainer {
    pub fn start(
        worker: &str,
        engine: Arc<Engine>,
        cfg: &DockerWorkerConfig,
        mnt: PathBuf,
        archive: bool,
    ) -> Arc<Self> {
        let warm = Arc::new(Self {
            worker: worker.to_string(),
            engine,
            cfg: cfg.clone(),
            mnt,
            archive,
            slot: Arc::default(),
            current: parking_lot::Mutex::new(None),
            lease: AtomicU64::new(0),
        });
        warm.renew_lease();
        tokio::spawn(Self::housekeeping(Arc::downgrade(&warm)));
        warm
    }

    fn renew_lease(&self) -> u64 {
        let n = self.lease.fetch_add(1, Ordering::Relaxed) + 1;
        if let Err(e) = std::fs::write(self.mnt.join("lease"), format!("{n}\n")) {
            warn!(worker = %self.worker, error = %e, "could not renew the warm container lease");
        }
        n
    }

    /// Archive mode: the container cannot see the host's lease file.
    async fn push_lease(&self, docker: &Docker, container: &str, n: u64) {
        let path = format!("{MOUNT_POINT}/lease");
        if let Err(e) = archive::upload_file(docker, container, &path, format!("{n}\n").as_bytes()).await {
            debug!(worker = %self.worker, container, error = %e, "could not renew the warm container lease");
        }
    }

    /// Renews the lease and removes the container when idle too long.
    async fn housekeeping(warm: Weak<Self>) {
        loop {
            tokio::time::sleep(LEASE_RENEW).await;
            let Some(w) = warm.upgrade() else { return };
            let n = w.renew_lease();
            let current = w.current.lock().clone();
            if let (true, Some(id)) = (w.archive, current) {
                if let Ok(docker) = w.engine.client() {
                    w.push_lease(&docker, &id, n).await;
                }
            }
            let idle = Duration::from_secs(w.cfg.seconds_idle);
            let idle_container = match w.slot.try_lock() {
                Ok(mut slot) if slot.as_ref().is_some_and(|c| c.last_used.elapsed() >= idle) => slot.take(),
                _ => None,
            };
            if let Some(c) = idle_container {
                debug!(worker = %w.worker, container = %c.id, "removing idle warm container");
                if let Ok(docker) = w.engine.client() {
                    w.remove(&docker, &c.id).await;
                }
            }
        }
    }

    async fn remove(&self, docker: &Docker, id: &str) {
        {
            let mut current = self.current.lock();
            if current.as_deref() == Some(id) {
                *current = None;
            }
        }
        self.engine.remove(docker, id).await;
    }

    /// Takes the warm container (making or replacing it as needed), copies
    /// the inputs in (archive mode) and creates the action's exec.
    pub async fn stage(
        &self,
        docker: &Docker,
        job: &PreparedAction,
        dir: &ActionDir,
        spec: &Spec,
        launch: Launch,
        cancel: &CancellationToken,
    ) -> Result<WarmRun> {
        let mut slot = self.slot.clone().lock_owned().await;
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        // A warm container that died (engine restart, lease expiry) is replaced once.
        for attempt in 1..=2 {
            let w = self.warm_container(docker, &mut slot, spec, job, cancel).await?;
            w.tasks += 1;
            w.last_used = Instant::now();
            let (container, baseline) = (w.id.clone(), w.oom_kills);
            if self.archive {
                if let Err(e) = archive::upload_dir(docker, &container, dir.root.clone(), "re-server", "exec").await {
                    slot.take();
                    self.remove(docker, &container).await;
                    if attempt == 1 {
                        debug!(worker = %self.worker, error = %e, "uploading inputs to the warm container failed; replacing it");
                        continue;
                    }
                    return Err(e);
                }
            }
            let mut cmd = vec!["/bin/sh".to_string(), "-c".into(), WRAPPER.into(), "re-server".into()];
            cmd.extend([nonce.clone(), baseline.to_string()]);
            cmd.extend(job.command.arguments.iter().cloned());
            let opts = CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd),
                env: Some(launch.env.clone()),
                user: spec.user.clone(),
                working_dir: Some(launch.working_dir.clone()),
                ..Default::default()
            };
            match docker.create_exec(&container, opts).await {
                Ok(e) => return Ok(WarmRun { slot, container, exec: e.id, nonce, broken: false }),
                Err(e) => {
                    slot.take();
                    self.remove(docker, &container).await;
                    if attempt == 1 && matches!(status_of(&e), Some(404) | Some(409)) {
                        debug!(worker = %self.worker, error = %e, "warm container gone; replacing it");
                        continue;
                    }
                    return Err(self.engine.error("creating the exec", e));
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Starts the exec and waits for it; a timeout or cancellation removes
    /// the container (killing the action).
    pub async fn run(
        &self,
        docker: &Docker,
        run: &mut WarmRun,
        job: &PreparedAction,
        dir: &ActionDir,
        cancel: &CancellationToken,
        probe: &Probe,
    ) -> Result<Exit> {
        probe.container_started(&run.container);
        let output = match docker.start_exec(&run.exec, None).await {
            Ok(StartExecResults::Attached { output, .. }) => output,
            Ok(StartExecResults::Detached) => {
                run.broken = true;
                return Err(Error::Internal("exec started detached".into()));
            }
            Err(e) => {
                run.broken = true;
                return Err(self.engine.error("starting the exec", e));
            }
        };
        let io = (dir.stdout.as_path(), dir.stderr.as_path());
        let engine_error = |e| self.engine.error("reading the action's output", e);
        let pumped = pump(output, io, Some(&run.nonce), job.timeout, cancel, engine_error).await;
        let marker = match pumped {
            Ok(Pumped::Ended { marker }) => marker,
            Ok(Pumped::Stopped(error)) => {
                run.broken = true;
                return Ok(Exit { code: -1, error: Some(error), usage: None });
            }
            Err(e) => {
                run.broken = true;
                if self.vanished(docker, &run.container).await {
                    return Err(Error::WorkerLost(format!("the warm container of {} vanished: {e}", self.worker)));
                }
                return Err(e);
            }
        };
        let code = match docker.inspect_exec(&run.exec).await {
            Ok(i) => i.exit_code.unwrap_or(-1) as i32,
            Err(e) => {
                run.broken = true;
                if self.vanished(docker, &run.container).await {
                    return Err(Error::WorkerLost(format!("the warm container of {} vanished: {e}", self.worker)));
                }
                return Err(self.engine.error("inspecting the exec", e));
            }
        };
        let report = marker.as_deref().and_then(parse_report);
        if report.is_none() && self.vanished(docker, &run.container).await {
            run.broken = true;
            return Err(Error::WorkerLost(format!(
                "the warm container {} of docker worker {} vanished while the action ran",
                &run.container[..run.container.len().min(12)],
                self.worker
            )));
        }
        let w = run.slot.as_mut().expect("held from stage");
        let usage = report.map(|(_, usage)| usage);
        let error = match report {
            Some((kills, _)) => {
                let oom = kills > w.oom_kills && code != 0;
                w.oom_kills = kills;
                oom.then(|| super::oom_error(&self.cfg, &self.worker))
            }
            None => {
                // The wrapper did not finish (killed by the action?): leftovers
                // may still run, so the container is not reused.
                debug!(worker = %self.worker, "the exec ended without its report; recycling the container");
                run.broken = true;
                // The OOM killer may pick the wrapper itself (memory is still
                // charged while the first victim's pages are freed): ask the
                // container's cgroup directly.
                if code == 137 && self.cfg.memory_limit.is_some() {
                    match self.oom_kills_since(docker, &run.container, w.oom_kills).await {
                        Some(kills) => {
                            w.oom_kills = kills;
                            Some(super::oom_error(&self.cfg, &self.worker))
                        }
                        None => {
                            warn!(worker = %self.worker, "exit 137 and no OOM kill counted");
                            None
                        }
                    }
                } else {
                    None
                }
            }
        };
        w.last_used = Instant::now();
        Ok(Exit { code, error, usage })
    }

    /// The container's OOM-kill count once it exceeds `baseline` (read for
    /// up to 2 s, as the kernel may count a kill late), or None.
    async fn oom_kills_since(&self, docker: &Docker, container: &str, baseline: u64) -> Option<u64> {
        for _ in 0..20 {
            let (_, text) = self.engine.exec_capture(docker, container, READ_OOM_COUNTERS).await.ok()?;
            match parse_oom_kills(&text) {
                Some(kills) if kills > baseline => return Some(kills),
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                None => return None,
            }
        }
        None
    }

    /// Whether `container` is gone or stopped: removed or killed from
    /// outside, or the engine restarted. Its keepalive loop never ends while
    /// the worker holds it, so a container not running was lost. Asked when
    /// an exec ended abnormally; the engine may report the container running
    /// for a moment after its processes were killed (`rm -f`), so a running
    /// answer is asked again for up to 2 s.
    async fn vanished(&self, docker: &Docker, container: &str) -> bool {
        for _ in 0..20 {
            match docker.inspect_container(container, None).await {
                Err(e) => return status_of(&e) == Some(404),
                Ok(c) if c.state.as_ref().and_then(|s| s.running) != Some(true) => return true,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        false
    }

    /// Ends the action's hold: archive mode clears the action's files in the
    /// container; a broken container is removed.
    pub async fn release(&self, docker: &Docker, mut run: WarmRun) {
        if !run.broken && self.archive {
            let cleared = self.engine.exec_capture(docker, &run.container, CLEAR_EXEC_ROOT).await;
            run.broken = !matches!(cleared, Ok((0, _)));
        }
        if run.broken {
            run.slot.take();
            self.remove(docker, &run.container).await;
        }
    }

    /// Removes the warm container now (server shutdown), rather than letting
    /// its lease run out.
    pub async fn shutdown(&self, docker: &Docker) {
        let current = self.slot.lock().await.take();
        if let Some(w) = current {
            self.remove(docker, &w.id).await;
        }
    }

    /// A started container to exec actions in, matching `spec`.
    async fn warm_container<'a>(
        &self,
        docker: &Docker,
        slot: &'a mut Option<Warm>,
        spec: &Spec,
        job: &PreparedAction,
        cancel: &CancellationToken,
    ) -> Result<&'a mut Warm> {
        if let Some(w) = slot.as_ref() {
            let why = if w.spec != *spec {
                Some("it was made for another image, network or user")
            } else if w.tasks >= self.cfg.tasks_max {
                Some("it ran tasks_max actions")
            } else if w.last_used.elapsed() >= Duration::from_secs(self.cfg.seconds_idle) {
                Some("it was idle for seconds_idle")
            } else {
                None
            };
            if let Some(why) = why {
                let old = slot.take().expect("checked");
                debug!(worker = %self.worker, container = %old.id, "recycling warm container: {why}");
                self.remove(docker, &old.id).await;
            }
        }
        if slot.is_none() {
            self.engine.pull(docker, &spec.image, job.timeout, cancel).await?;
            // Exits (and the engine removes it) once the lease stops changing.
            // Counts seconds from /proc/uptime, not loop turns: each action's
            // `kill -9 -1` kills the loop's `sleep`, so turns can be much shorter.
            let keepalive = format!(
                "last=; read -r up _ < /proc/uptime; t=${{up%.*}}; \
                 while :; do sleep 1 || :; cur=; read -r cur < {MOUNT_POINT}/lease 2>/dev/null; \
                 read -r up _ < /proc/uptime; now=${{up%.*}}; \
                 if [ \"$cur\" != \"$last\" ]; then last=$cur; t=$now; \
                 elif [ $((now - t)) -ge {LEASE_EXPIRY_SECS} ]; then exit 0; fi; done"
            );
            let mnt = (!self.archive).then_some(self.mnt.as_path());
            let body = ContainerCreateBody {
                image: Some(spec.image.clone()),
                entrypoint: Some(vec!["/bin/sh".into(), "-c".into(), keepalive]),
                cmd: Some(vec![]),
                working_dir: Some(MOUNT_POINT.into()),
                user: spec.user.clone(),
                labels: Some(self.engine.labels("warm")),
                tty: Some(false),
                open_stdin: Some(false),
                host_config: Some(host_config(&self.cfg, mnt, spec, true)),
                ..Default::default()
            };
            self.renew_lease();
            let id = self.engine.create(docker, body, &spec.image).await?;
            if let Err(e) = docker.start_container(&id, None).await {
                self.remove(docker, &id).await;
                return Err(self.engine.error("starting the warm container", e));
            }
            debug!(worker = %self.worker, container = %id, image = %spec.image, "warm container started");
            *self.current.lock() = Some(id.clone());
            if self.archive {
                let n = self.renew_lease();
                self.push_lease(docker, &id, n).await;
            }
            // A new container has a new memory cgroup: no OOM kills yet.
            *slot = Some(Warm { id, spec: spec.clone(), tasks: 0, last_used: Instant::now(), oom_kills: 0 });
        }
        Ok(slot.as_mut().expect("set above"))
    }
}
