//! Runs actions as processes on this machine: a fresh directory per action,
//! a clean environment, its own process group (killed with the action).
//! Each action directory records its process group (`leftovers.rs`), so
//! processes a killed server left behind are stopped when it starts again.
use std::path::PathBuf;

use async_trait::async_trait;
use re_proto::{Error, Result};
use tokio_util::sync::CancellationToken;

use crate::action::PreparedAction;
use crate::config::HostWorkerConfig;
use crate::input_tree::LinkMode;
use crate::platform::Properties;
use crate::run_frame::{ActionDir, DirAccess, Exit, Launcher, Probe};
use crate::sandbox::Sandbox;
use crate::spawner::{Command, Spawner};
use crate::user::UserIds;

pub struct HostLauncher {
    id: String,
    properties: Properties,
    work_dir: PathBuf,
    /// Whitelisted server variables, captured once at start.
    base_env: Vec<(String, String)>,
    user: Option<UserIds>,
    link_mode: LinkMode,
    sandbox: Option<Sandbox>,
    spawner: Spawner,
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
    pub fn new(id: String, config: &HostWorkerConfig, spawner: Spawner) -> Result<Self> {
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
        let sandbox = config.sandbox().cloned();
        Ok(Self { id, properties, work_dir, base_env, user, link_mode, sandbox, spawner })
    }
}

#[async_trait]
impl Launcher for HostLauncher {
    type Plan = ();
    /// Taken when it is started.
    type Staged = Option<Command>;

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
    ) -> Result<Option<Command>> {
        let args = &job.command.arguments;
        // The action's variables override the whitelisted server ones.
        let mut env = self.base_env.clone();
        for v in &job.command.environment_variables {
            env.retain(|(k, _)| *k != v.name);
            env.push((v.name.clone(), v.value.clone()));
        }
        let cmd = Command {
            program: args[0].clone(),
            args: args[1..].to_vec(),
            env,
            cwd: dir.root.join(&job.working_directory),
            stdout: dir.stdout.clone(),
            stderr: dir.stderr.clone(),
            user: self.user.map(|u| (u.uid, u.gid)),
        };
        Ok(Some(match &self.sandbox {
            Some(sandbox) => sandbox.wrap(cmd, &dir.root),
            None => cmd,
        }))
    }

    async fn run(
        &self,
        cmd: &mut Option<Command>,
        job: &PreparedAction,
        dir: &ActionDir,
        cancel: &CancellationToken,
        probe: &Probe,
    ) -> Result<Exit> {
        let since = crate::leftovers::Since::now();
        let cmd = cmd.take().ok_or_else(|| Error::Internal("the action's process was started twice".into()))?;
        let mut process = self.spawner.spawn(cmd).await?;
        probe.process_started(process.pid() as u32);
        let (scratch, pg) = (dir.scratch.clone(), process.pid());
        re_proto::blocking::run(move || crate::leftovers::record(&scratch, pg, since))
            .await?
            .map_err(|e| Error::io("recording the action's process group", e))?;
        let mut error = None;
        let reaped = tokio::select! {
            r = process.wait() => Some(r?),
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
        process.kill_group();
        let reaped = match reaped {
            Some(r) => r,
            None => process.wait().await?,
        };
        if self.sandbox.is_some() && reaped.code == 1 && error.is_none() {
            if let Some(why) = sandboxed_exec_failure(dir).await {
                return Err(Error::InvalidArgument(format!("cannot start '{}': {why}", job.command.arguments[0])));
            }
        }
        Ok(Exit { code: reaped.code, error, usage: Some(reaped.usage) })
    }
}

/// Why bubblewrap could not exec the action's program (it says so on the
/// action's stderr and exits 1), as the spawner reports it without a sandbox.
async fn sandboxed_exec_failure(dir: &ActionDir) -> Option<String> {
    let path = dir.stderr.clone();
    let head = re_proto::blocking::run(move || {
        use std::io::Read;
        let mut head = String::new();
        let _ = std::fs::File::open(path).ok()?.take(4096).read_to_string(&mut head);
        Some(head)
    })
    .await
    .ok()??;
    let line = head.lines().next()?.strip_prefix("bwrap: execvp ")?;
    // "PROGRAM: REASON"
    Some(line.split_once(": ").map_or(line, |(_, why)| why).to_string())
}
