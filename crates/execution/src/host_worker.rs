//! Runs actions as processes on this machine: a fresh directory per action,
//! inputs linked from the CAS, a clean environment, its own process group.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use re_cas::BlobStore;
use re_proto::reapi::{ActionResult, ExecutedActionMetadata};
use re_proto::{Error, Result};
use tokio_util::sync::CancellationToken;

use crate::action::PreparedAction;
use crate::config::HostWorkerConfig;
use crate::input_tree::{self, LinkMode};
use crate::outputs;
use crate::platform::Properties;
use crate::user::UserIds;
use crate::worker::{RunOutcome, Worker};

pub struct HostWorker {
    id: String,
    properties: Properties,
    cas: Arc<dyn BlobStore>,
    work_dir: PathBuf,
    /// Whitelisted server variables, captured once at start.
    base_env: Vec<(String, String)>,
    user: Option<UserIds>,
    link_mode: LinkMode,
}

/// What every host worker advertises before its configured properties.
pub fn host_properties() -> Properties {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let isa = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "aarch64" => "arm-a64",
        other => other,
    };
    vec![("OSFamily".into(), std::env::consts::OS.into()), ("Arch".into(), arch.into()), ("ISA".into(), isa.into())]
}

impl HostWorker {
    pub fn new(
        id: String,
        config: &HostWorkerConfig,
        work_dir: PathBuf,
        user: Option<UserIds>,
        cas: Arc<dyn BlobStore>,
    ) -> Result<Self> {
        let mut properties = host_properties();
        properties.extend(config.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
        let base_env =
            config.env_whitelist.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))).collect();
        std::fs::create_dir_all(&work_dir).map_err(|e| Error::io(format!("creating {}", work_dir.display()), e))?;
        let link_mode = if config.link_inputs { LinkMode::HardLink } else { LinkMode::Copy };
        Ok(Self { id, properties, cas, work_dir, base_env, user, link_mode })
    }

    async fn run_inner(
        &self,
        job: &PreparedAction,
        cancel: &CancellationToken,
        dir: &Path,
        meta: &mut ExecutedActionMetadata,
    ) -> Result<(ActionResult, Option<Error>)> {
        let exec_root = dir.join("root");
        tokio::fs::create_dir_all(&exec_root).await.map_err(|e| Error::io("creating action directory", e))?;

        meta.input_fetch_start_timestamp = Some(SystemTime::now().into());
        input_tree::materialise(&self.cas, &job.inputs, &exec_root, self.link_mode).await?;
        let (root, command, user) = (exec_root.clone(), job.command.clone(), self.user);
        tokio::task::spawn_blocking(move || -> Result<()> {
            outputs::create_output_parents(&root, &command)?;
            if let Some(u) = user {
                crate::user::chown_dirs(&root, u)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("prepare task failed: {e}")))??;
        meta.input_fetch_completed_timestamp = Some(SystemTime::now().into());

        let stdout_path = dir.join("stdout");
        let stderr_path = dir.join("stderr");
        let wd =
            exec_root.join(crate::paths::relative_path(&job.command.working_directory, "working_directory", true)?);
        let args = &job.command.arguments;
        let mut cmd = tokio::process::Command::new(&args[0]);
        cmd.args(&args[1..])
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .envs(job.command.environment_variables.iter().map(|v| (&v.name, &v.value)))
            .current_dir(&wd)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).map_err(|e| Error::io("creating stdout file", e))?)
            .stderr(std::fs::File::create(&stderr_path).map_err(|e| Error::io("creating stderr file", e))?)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(u) = self.user {
            cmd.uid(u.uid).gid(u.gid);
        }

        meta.execution_start_timestamp = Some(SystemTime::now().into());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Err(Error::InvalidArgument(format!("cannot start '{}': {e}", args[0])));
            }
        };
        let pgid = child.id().map(|p| p as i32);
        let mut error = None;
        let status = tokio::select! {
            s = child.wait() => Some(s.map_err(|e| Error::io("waiting for action", e))?),
            _ = tokio::time::sleep(job.timeout) => {
                error = Some(Error::DeadlineExceeded(format!("action timed out after {}s and was killed", job.timeout.as_secs())));
                None
            }
            _ = cancel.cancelled() => {
                error = Some(Error::Cancelled("action was cancelled".into()));
                None
            }
        };
        // Kill the whole group: whatever the action left behind goes too.
        if let Some(pg) = pgid {
            // SAFETY: plain syscall on a process group we created.
            unsafe { libc::killpg(pg, libc::SIGKILL) };
        }
        let status = match status {
            Some(s) => s,
            None => child.wait().await.map_err(|e| Error::io("reaping action", e))?,
        };
        meta.execution_completed_timestamp = Some(SystemTime::now().into());
        let exit_code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });

        let io = (stdout_path.as_path(), stderr_path.as_path());
        let result =
            outputs::action_result(&self.cas, &exec_root, &job.command, exit_code, error.is_none(), io, meta).await?;
        Ok((result, error))
    }
}

#[async_trait]
impl Worker for HostWorker {
    fn id(&self) -> &str {
        &self.id
    }

    fn properties(&self) -> &Properties {
        &self.properties
    }

    async fn run(&self, job: &PreparedAction, cancel: CancellationToken) -> RunOutcome {
        let mut meta = ExecutedActionMetadata {
            worker: self.id.clone(),
            worker_start_timestamp: Some(SystemTime::now().into()),
            ..Default::default()
        };
        let dir = self.work_dir.join(uuid::Uuid::new_v4().simple().to_string());
        let outcome = self.run_inner(job, &cancel, &dir, &mut meta).await;
        meta.worker_completed_timestamp = Some(SystemTime::now().into());
        remove_dir(dir).await;
        let (mut result, error) = match outcome {
            Ok((r, e)) => (r, e),
            Err(e) => (ActionResult::default(), Some(e)),
        };
        crate::worker::set_virtual_duration(&mut meta);
        result.execution_metadata = Some(meta);
        RunOutcome { result, error }
    }
}

/// Removes an action directory, even if the action made parts read-only.
pub async fn remove_dir(dir: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || {
        if std::fs::remove_dir_all(&dir).is_err() {
            let _ = std::process::Command::new("chmod").arg("-R").arg("u+rwx").arg(&dir).status();
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove action directory");
            }
        }
    })
    .await;
}
