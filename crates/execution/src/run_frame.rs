//! The action frame: what every action goes through on any worker, in named
//! phases, and the one place that stamps `ExecutedActionMetadata`.
//!
//! | phase     | what happens                                                   | timestamps            |
//! |-----------|----------------------------------------------------------------|-----------------------|
//! | plan      | the worker checks the action against its config (`Launcher::plan`) | queued, worker_start |
//! | prepare   | fresh action directory, inputs materialised, output parents made, directory access for the action's user | input_fetch_*  |
//! | stage     | whatever must exist before the process starts (`Launcher::stage`: a container, copied-in inputs) | |
//! | execute   | launch and wait: the only part a worker must implement (`Launcher::run`) | execution_*  |
//! | upload    | outputs brought back (`Launcher::retrieve`), stored in the CAS (`outputs.rs`) | output_upload_* |
//! | cleanup   | `Launcher::release`, the action directory removed              | worker_completed, virtual duration |
//!
//! Timing, resource accounting and worker state are concerns of the frame,
//! not of the workers: a new worker type implements [`Launcher`] and gets
//! them all.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use re_cas::BlobStore;
use re_proto::reapi::{ActionResult, ExecutedActionMetadata};
use re_proto::{Error, Result};
use tokio_util::sync::CancellationToken;

use crate::action::PreparedAction;
use crate::cgroup::CgroupUsage;
use crate::input_tree::{self, LinkMode};
use crate::outputs;
use crate::platform::Properties;
use crate::process::Sample;
use crate::usage::ResourceUsage;
use crate::user::UserIds;
use crate::worker::{RunOutcome, Worker};
use crate::worker_status::WorkerStatus;

/// Where one action's files are, on the machine that runs it.
#[derive(Debug, Clone)]
pub struct ActionDir {
    /// The input root: inputs are placed here, outputs collected from here.
    pub root: PathBuf,
    /// Files the launcher writes the action's stdout and stderr to.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Removed (with everything below it) once the action is over.
    pub scratch: PathBuf,
}

/// Who must be able to write in the action's directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirAccess {
    /// The server's own user runs the action.
    Server,
    /// This user runs it: the directories become theirs.
    Owner(UserIds),
    /// A user the server cannot name (inside a container): world-writable.
    Anyone,
}

/// How the action's process ended.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    /// Why it did not run to its end (timeout, cancellation, memory limit);
    /// outputs are then not collected.
    pub error: Option<Error>,
    /// What it used, where the launcher could measure it.
    pub usage: Option<ResourceUsage>,
}

/// Lets a launcher tell the frame what it started, so the frame can show
/// and sample it while it runs.
pub struct Probe {
    status: Arc<WorkerStatus>,
    pid: AtomicI32,
    /// The container, and what its cgroup had used before the action.
    container: parking_lot::Mutex<Option<(String, CgroupUsage)>>,
    /// The last sample, with the highest memory seen.
    sampled: parking_lot::Mutex<Option<Sample>>,
}

impl Probe {
    fn new(status: Arc<WorkerStatus>) -> Self {
        Self { status, pid: AtomicI32::new(0), container: Default::default(), sampled: Default::default() }
    }

    /// The action runs as process `pid` (its group leader) on this machine.
    pub fn process_started(&self, pid: u32) {
        self.pid.store(pid as i32, Ordering::Relaxed);
        self.status.set_pid(pid);
    }

    /// The action runs in container `id` (a warm one may have run others:
    /// its CPU so far is not the action's).
    pub fn container_started(&self, id: &str) {
        let before = crate::cgroup::container_usage(id).unwrap_or_default();
        *self.container.lock() = Some((id.to_string(), before));
        self.status.set_container(id);
    }

    /// Samples what runs now (blocking: reads /proc or the cgroup).
    fn sample(&self) -> Option<Sample> {
        let pid = self.pid.load(Ordering::Relaxed);
        let now = if pid > 0 {
            crate::process::sample_group(pid)?
        } else {
            let (id, before) = self.container.lock().clone()?;
            let now = crate::cgroup::container_usage(&id)?;
            Sample {
                user_cpu: now.user_cpu.saturating_sub(before.user_cpu),
                system_cpu: now.system_cpu.saturating_sub(before.system_cpu),
                memory_bytes: now.memory_bytes,
            }
        };
        let mut last = self.sampled.lock();
        let peak = last.map_or(0, |s| s.memory_bytes).max(now.memory_bytes);
        *last = Some(Sample { memory_bytes: peak, ..now });
        Some(now)
    }

    /// The samples as the action's usage, for launchers that cannot measure
    /// it at the end (a fresh container's cgroup goes with it).
    fn sampled_usage(&self) -> Option<ResourceUsage> {
        let s = (*self.sampled.lock())?;
        Some(ResourceUsage {
            user_cpu: s.user_cpu,
            system_cpu: s.system_cpu,
            peak_memory_bytes: s.memory_bytes,
            source: "sampled",
        })
    }
}

/// The worker-specific part of running an action.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// What the launcher decided about one action before anything was made.
    type Plan: Send + Sync;
    /// What `stage` made and `run`, `retrieve` and `release` use.
    type Staged: Send;

    fn id(&self) -> &str;
    fn properties(&self) -> &Properties;
    /// False while the launcher cannot take work (e.g. its engine is down).
    async fn is_healthy(&self) -> bool {
        true
    }
    /// Checks the action against the worker's configuration.
    fn plan(&self, job: &PreparedAction) -> Result<Self::Plan>;
    /// A directory for this action; it may exist already (it is emptied).
    fn action_dir(&self) -> ActionDir;
    fn link_mode(&self, plan: &Self::Plan) -> LinkMode;
    fn dir_access(&self, plan: &Self::Plan) -> DirAccess;
    /// Everything the process needs before it can start.
    async fn stage(
        &self,
        plan: Self::Plan,
        job: &PreparedAction,
        dir: &ActionDir,
        cancel: &CancellationToken,
    ) -> Result<Self::Staged>;
    /// Starts the process, writes its output to `dir.stdout` / `dir.stderr`
    /// and waits for it; stops promptly on timeout or when `cancel` fires.
    /// Tells `probe` what it started.
    async fn run(
        &self,
        staged: &mut Self::Staged,
        job: &PreparedAction,
        dir: &ActionDir,
        cancel: &CancellationToken,
        probe: &Probe,
    ) -> Result<Exit>;
    /// Makes the outputs visible under `dir.root` (after a clean exit).
    async fn retrieve(&self, _staged: &mut Self::Staged, _job: &PreparedAction, _dir: &ActionDir) -> Result<()> {
        Ok(())
    }
    /// Undoes what `stage` made that must not outlive the action.
    async fn release(&self, _staged: Self::Staged) {}
    /// The server is stopping: release what lives between actions.
    async fn shutdown(&self) {}
}

/// A worker: one launcher in the frame.
pub struct ActionFrame<L> {
    launcher: L,
    cas: Arc<dyn BlobStore>,
    /// `max_action_disk_bytes`: what an action's directory may hold.
    max_disk_bytes: u64,
    status: Arc<WorkerStatus>,
}

/// How often a running action's directory is measured and its process
/// sampled (also the worker's heartbeat while it runs).
const DISK_CHECK: Duration = Duration::from_secs(1);

impl<L: Launcher> ActionFrame<L> {
    pub fn new(launcher: L, cas: Arc<dyn BlobStore>, max_disk_bytes: u64, status: Arc<WorkerStatus>) -> Self {
        Self { launcher, cas, max_disk_bytes, status }
    }

    /// The execute phase: the launcher runs the process while its directory
    /// is measured; one that grows past `max_disk_bytes` is stopped.
    async fn execute(
        &self,
        staged: &mut L::Staged,
        job: &PreparedAction,
        dir: &ActionDir,
        cancel: &CancellationToken,
    ) -> Result<Exit> {
        let stop = cancel.child_token();
        let probe = Arc::new(Probe::new(self.status.clone()));
        let run = self.launcher.run(staged, job, dir, &stop, &probe);
        tokio::pin!(run);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + DISK_CHECK, DISK_CHECK);
        let mut used = None;
        let exit = loop {
            tokio::select! {
                exit = &mut run => break exit,
                _ = tick.tick(), if used.is_none() => {
                    let (scratch, sampled) = (dir.scratch.clone(), probe.clone());
                    let (bytes, sample) =
                        tokio::task::spawn_blocking(move || (disk_use(&scratch), sampled.sample())).await?;
                    match sample {
                        Some(s) => self.status.sample(s.cpu_seconds(), s.memory_bytes),
                        None => self.status.beat(),
                    }
                    if bytes > self.max_disk_bytes {
                        used = Some(bytes);
                        stop.cancel();
                    }
                }
            }
        };
        let exit = exit.map(|mut e| {
            e.usage = e.usage.or_else(|| probe.sampled_usage());
            e
        });
        match used {
            Some(bytes) if !cancel.is_cancelled() => Ok(Exit {
                code: -1,
                usage: exit.ok().and_then(|e| e.usage),
                error: Some(Error::ResourceExhausted(format!(
                    "killed: the action's directory grew to {bytes} bytes, more than this server gives one \
                     action (max_action_disk_bytes = {})",
                    self.max_disk_bytes
                ))),
            }),
            _ => exit,
        }
    }

    pub fn launcher(&self) -> &L {
        &self.launcher
    }

    /// Every phase from plan to upload; `meta` gets their timestamps.
    async fn phases(
        &self,
        job: &PreparedAction,
        dir: &ActionDir,
        cancel: &CancellationToken,
        meta: &mut ExecutedActionMetadata,
    ) -> Result<(ActionResult, Option<Error>, Option<ResourceUsage>)> {
        let plan = self.launcher.plan(job)?;

        meta.input_fetch_start_timestamp = Some(now());
        prepare(&self.cas, job, dir, self.launcher.link_mode(&plan), self.launcher.dir_access(&plan)).await?;
        meta.input_fetch_completed_timestamp = Some(now());

        let mut staged = self.launcher.stage(plan, job, dir, cancel).await?;
        meta.execution_start_timestamp = Some(now());
        let exit = self.execute(&mut staged, job, dir, cancel).await;
        meta.execution_completed_timestamp = Some(now());

        let uploaded = match exit {
            Ok(exit) => {
                meta.output_upload_start_timestamp = Some(now());
                if let Some(usage) = &exit.usage {
                    meta.auxiliary_metadata.push(usage.to_any());
                }
                let ran_to_end = exit.error.is_none();
                let retrieved = match ran_to_end {
                    true => self.launcher.retrieve(&mut staged, job, dir).await,
                    false => Ok(()),
                };
                let result = match retrieved {
                    Ok(()) => {
                        let io = (dir.stdout.as_path(), dir.stderr.as_path());
                        outputs::action_result(&self.cas, &dir.root, &job.outputs, io, exit.code, ran_to_end).await
                    }
                    Err(e) => Err(e),
                };
                meta.output_upload_completed_timestamp = Some(now());
                result.map(|r| (r, exit.error, exit.usage))
            }
            Err(e) => Err(e),
        };
        self.launcher.release(staged).await;
        uploaded
    }
}

#[async_trait]
impl<L: Launcher> Worker for ActionFrame<L> {
    fn id(&self) -> &str {
        self.launcher.id()
    }

    fn properties(&self) -> &Properties {
        self.launcher.properties()
    }

    fn status(&self) -> &Arc<WorkerStatus> {
        &self.status
    }

    async fn is_healthy(&self) -> bool {
        self.launcher.is_healthy().await
    }

    async fn shutdown(&self) {
        self.launcher.shutdown().await
    }

    async fn run(&self, job: &PreparedAction, queued_at: SystemTime, cancel: CancellationToken) -> RunOutcome {
        let mut meta = ExecutedActionMetadata {
            worker: self.launcher.id().to_string(),
            queued_timestamp: Some(queued_at.into()),
            worker_start_timestamp: Some(now()),
            ..Default::default()
        };
        let dir = self.launcher.action_dir();
        let outcome = self.phases(job, &dir, &cancel, &mut meta).await;
        meta.worker_completed_timestamp = Some(now());
        meta.virtual_execution_duration = virtual_duration(&meta);
        let (mut result, error, usage) = match outcome {
            Ok((r, e, u)) => (r, e, u),
            Err(e) => (ActionResult::default(), Some(e), None),
        };
        result.execution_metadata = Some(meta);
        let stderr_tail = match &error {
            Some(_) => tail_of(&dir.stderr).await,
            None if result.exit_code != 0 => tail_of(&dir.stderr).await,
            None => String::new(),
        };
        RunOutcome { result, error, usage, stderr_tail, cleanup: Some(Box::pin(remove_dir(dir.scratch))) }
    }
}

fn now() -> prost_types::Timestamp {
    SystemTime::now().into()
}

/// The execution phase's length (REAPI 2.3's `virtual_execution_duration`).
fn virtual_duration(meta: &ExecutedActionMetadata) -> Option<prost_types::Duration> {
    let d = |t: &prost_types::Timestamp| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    let (start, end) = (meta.execution_start_timestamp.as_ref()?, meta.execution_completed_timestamp.as_ref()?);
    d(end).checked_sub(d(start)).and_then(|d| prost_types::Duration::try_from(d).ok())
}

/// The prepare phase: an empty `dir.root`, the inputs in it, the working
/// directory and the outputs' parents made, and the directories opened to
/// the action's user. Blobs are located first; the files are then made in
/// one blocking task.
async fn prepare(
    cas: &Arc<dyn BlobStore>,
    job: &PreparedAction,
    dir: &ActionDir,
    mode: LinkMode,
    access: DirAccess,
) -> Result<()> {
    let inputs = input_tree::locate(cas, &job.inputs).await?;
    let (root, wd, outputs) = (dir.root.clone(), job.working_directory.clone(), job.outputs.clone());
    re_proto::blocking::run(move || -> Result<()> {
        if std::fs::symlink_metadata(&root).is_ok() {
            remove_tree(&root);
        }
        std::fs::create_dir_all(&root).map_err(|e| Error::io("creating action directory", e))?;
        inputs.place(&root, mode)?;
        outputs::create_output_parents(&root, &wd, &outputs)?;
        match access {
            DirAccess::Server => Ok(()),
            DirAccess::Owner(ids) => crate::user::chown_dirs(&root, ids),
            DirAccess::Anyone => crate::user::open_dirs(&root),
        }
    })
    .await?
}

/// The last 1,000 characters an action wrote to stderr (for the operators'
/// list of recent actions).
async fn tail_of(path: &Path) -> String {
    let path = path.to_path_buf();
    re_proto::blocking::run(move || {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&path) else { return String::new() };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4000)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len().saturating_sub(1000)..].iter().collect()
    })
    .await
    .unwrap_or_default()
}

/// Bytes of the files below `dir` (each file once, however many links).
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total += meta.len();
            }
        }
    }
    total
}

/// Removes an action directory, even if the action made parts read-only.
pub async fn remove_dir(dir: PathBuf) {
    let _ = re_proto::blocking::run(move || remove_tree(&dir)).await;
}

fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_err() {
        let _ = std::process::Command::new("chmod").arg("-R").arg("u+rwx").arg(dir).status();
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove action directory");
        }
    }
}
