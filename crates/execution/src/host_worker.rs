//! Runs actions as processes on this machine: a fresh directory per action,
//! a clean environment, its own process group (killed with the action).
//! Each action directory records its process group (`leftovers.rs`), so
//! processes a killed server left behind are stopped when it starts again.
use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;
use re_proto::{Error, Result};
use tokio_util::sync::CancellationToken;

use crate::action::PreparedAction;
use crate::config::HostWorkerConfig;
use crate::input_tree::LinkMode;
use crate::platform::Properties;
use crate::run_frame::{ActionDir, DirAccess, Exit, Launcher};
use crate::user::UserIds;

pub struct HostLauncher {
    id: String,
    properties: Properties,
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

impl HostLauncher {
    /// `config` is resolved: its work_dir is set and its user looked up.
    pub fn new(id: String, config: &HostWorkerConfig) -> Result<Self> {
        let mut properties = host_properties();
        properties.extend(config.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
        let base_env =
            config.env_whitelist.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))).collect();
        let work_dir = config.work_dir.join(&id);
        std::fs::create_dir_all(&work_dir).map_err(|e| Error::io(format!("creating {}", work_dir.display()), e))?;
        crate::leftovers::reap(&work_dir);
        let user = config.user_ids();
        let share = config.link_inputs && crate::user::may_share_cas_files(user.map(|u| u.uid));
        let link_mode = if share { LinkMode::HardLink } else { LinkMode::Copy };
        Ok(Self { id, properties, work_dir, base_env, user, link_mode })
    }
}

#[async_trait]
impl Launcher for HostLauncher {
    type Plan = ();
    type Staged = tokio::process::Command;

    fn id(&self) -> &str {
        &self.id
    }

    fn properties(&self) -> &Properties {
        &self.properties
    }

    fn plan(&self, _job: &PreparedAction) -> Result<()> {
        Ok(())
    }

    fn action_dir(&self) -> ActionDir {
        let scratch = self.work_dir.join(uuid::Uuid::new_v4().simple().to_string());
        ActionDir {
            root: scratch.join("root"),
            stdout: scratch.join("stdout"),
            stderr: scratch.join("stderr"),
            scratch,
        }
    }

    fn link_mode(&self, _plan: &()) -> LinkMode {
        self.link_mode
    }

    fn dir_access(&self, _plan: &()) -> DirAccess {
        self.user.map_or(DirAccess::Server, DirAccess::Owner)
    }

    async fn stage(
        &self,
        _plan: (),
        job: &PreparedAction,
        dir: &ActionDir,
        _cancel: &CancellationToken,
    ) -> Result<tokio::process::Command> {
        let args = &job.command.arguments;
        let mut cmd = tokio::process::Command::new(&args[0]);
        cmd.args(&args[1..])
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .envs(job.command.environment_variables.iter().map(|v| (&v.name, &v.value)))
            .current_dir(dir.root.join(&job.working_directory))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&dir.stdout).map_err(|e| Error::io("creating stdout file", e))?)
            .stderr(std::fs::File::create(&dir.stderr).map_err(|e| Error::io("creating stderr file", e))?)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(u) = self.user {
            cmd.uid(u.uid).gid(u.gid);
        }
        Ok(cmd)
    }

    async fn run(
        &self,
        cmd: &mut tokio::process::Command,
        job: &PreparedAction,
        dir: &ActionDir,
        cancel: &CancellationToken,
    ) -> Result<Exit> {
        let program = &job.command.arguments[0];
        let since = crate::leftovers::Since::now();
        let mut child = cmd.spawn().map_err(|e| Error::InvalidArgument(format!("cannot start '{program}': {e}")))?;
        let pgid = child.id().map(|p| p as i32);
        if let Some(pg) = pgid {
            let scratch = dir.scratch.clone();
            re_proto::blocking::run(move || crate::leftovers::record(&scratch, pg, since))
                .await?
                .map_err(|e| Error::io("recording the action's process group", e))?;
        }
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
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        Ok(Exit { code, error })
    }
}
