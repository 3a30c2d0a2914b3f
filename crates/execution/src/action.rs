//! Turns an ExecuteRequest's action digest into a validated, runnable job.
//! Every client-supplied path is checked here, once; workers and output
//! collection use the results (`working_directory`, `outputs`) as they are.
use std::path::PathBuf;
use std::time::Duration;

use prost::Message;
use re_cas::BlobStore;
use re_proto::reapi::{Action, Command};
use re_proto::{DigestInfo, Error, Result};

use crate::input_tree::{self, InputTree};
use crate::paths;
use crate::platform::Properties;

#[derive(Debug, Clone)]
pub struct PreparedAction {
    pub action_digest: DigestInfo,
    pub action: Action,
    pub command: Command,
    pub inputs: InputTree,
    /// Action.platform, or Command.platform from clients before REAPI 2.2.
    pub platform: Properties,
    pub timeout: Duration,
    /// Every blob the action reads (pinned while it is queued or running).
    pub blobs: Vec<DigestInfo>,
    /// The command's working directory, relative to the input root.
    pub working_directory: PathBuf,
    /// Every declared output, in the order the Command lists them.
    pub outputs: Vec<OutputPath>,
}

/// What kind of entry a declared output may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// `output_paths` (REAPI 2.1+): whatever the action produced.
    Any,
    /// `output_files` (Bazel before 6.3).
    File,
    /// `output_directories` (Bazel before 6.3).
    Directory,
}

/// One declared output, checked to stay inside the input root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPath {
    /// As the client wrote it (relative to the working directory); results name it so.
    pub path: String,
    /// Where it is, relative to the input root.
    pub relative: PathBuf,
    pub kind: OutputKind,
}

async fn fetch<M: Message + Default>(cas: &dyn BlobStore, d: DigestInfo, what: &str) -> Result<Option<M>> {
    match cas.get(d).await? {
        Some(raw) => {
            M::decode(raw).map(Some).map_err(|e| Error::InvalidArgument(format!("{what} {d} does not decode: {e}")))
        }
        None => Ok(None),
    }
}

/// What the pool allows one action.
#[derive(Debug, Clone, Copy)]
pub struct ActionLimits {
    /// When the Action sets no timeout.
    pub default_timeout: Duration,
    /// A longer Action.timeout is refused (the spec requires it).
    pub max_timeout: Duration,
    /// Files, directories and symlinks of the input tree.
    pub max_input_entries: usize,
    /// Disk an action may use for its inputs and what it writes.
    pub max_disk_bytes: u64,
}

pub async fn prepare(cas: &dyn BlobStore, action_digest: DigestInfo, limits: &ActionLimits) -> Result<PreparedAction> {
    let ActionLimits { default_timeout, max_timeout, max_input_entries, max_disk_bytes } = *limits;
    let missing = |blobs: Vec<DigestInfo>| Error::MissingBlobs {
        message: "the action's inputs are not all in the CAS".into(),
        blobs,
    };
    let action: Action = fetch(cas, action_digest, "Action").await?.ok_or_else(|| missing(vec![action_digest]))?;
    let command_digest =
        DigestInfo::try_from(action.command_digest.as_ref()).map_err(|e| e.in_field("Action.command_digest"))?;
    let root_digest =
        DigestInfo::try_from(action.input_root_digest.as_ref()).map_err(|e| e.in_field("Action.input_root_digest"))?;
    let command: Option<Command> = fetch(cas, command_digest, "Command").await?;
    let inputs = input_tree::resolve(cas, root_digest, max_input_entries).await;
    let (command, inputs) = match (command, inputs) {
        (Some(c), Ok(i)) => (c, i),
        (c, Err(Error::MissingBlobs { mut blobs, .. })) => {
            if c.is_none() {
                blobs.push(command_digest);
            }
            return Err(missing(blobs));
        }
        (None, _) => return Err(missing(vec![command_digest])),
        (_, Err(e)) => return Err(e),
    };
    validate_command(&command)?;
    let input_bytes: u64 = inputs.files.iter().map(|f| f.digest.size).sum();
    if input_bytes > max_disk_bytes {
        return Err(Error::ResourceExhausted(format!(
            "the action's inputs take {input_bytes} bytes, more than this server gives one action \
             (max_action_disk_bytes = {max_disk_bytes})"
        )));
    }
    let (working_directory, outputs) = resolve_paths(&command)?;

    let timeout = match &action.timeout {
        Some(t) if t.seconds > 0 || t.nanos > 0 => {
            let t = Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
            if t > max_timeout {
                return Err(Error::InvalidArgument(format!(
                    "action timeout {}s exceeds this server's maximum of {}s",
                    t.as_secs(),
                    max_timeout.as_secs()
                )));
            }
            t
        }
        _ => default_timeout,
    };
    let platform = action.platform.as_ref().or(command.platform.as_ref());
    let mut platform: Properties =
        platform.map(|p| p.properties.iter().map(|p| (p.name.clone(), p.value.clone())).collect()).unwrap_or_default();
    platform.sort();
    let mut blobs = inputs.blobs();
    blobs.push(action_digest);
    blobs.push(command_digest);
    Ok(PreparedAction { action_digest, action, command, inputs, platform, timeout, blobs, working_directory, outputs })
}

/// The working directory and outputs. A Command that lists `output_paths`
/// (REAPI 2.1+) is read from them alone; otherwise from `output_files` and
/// `output_directories`, which Bazel 4 sends.
fn resolve_paths(c: &Command) -> Result<(PathBuf, Vec<OutputPath>)> {
    let wd = paths::relative_path(&c.working_directory, "working_directory", true)?;
    let declared: Vec<(&String, OutputKind)> = if c.output_paths.is_empty() {
        let files = c.output_files.iter().map(|p| (p, OutputKind::File));
        files.chain(c.output_directories.iter().map(|p| (p, OutputKind::Directory))).collect()
    } else {
        c.output_paths.iter().map(|p| (p, OutputKind::Any)).collect()
    };
    let mut outputs = Vec::with_capacity(declared.len());
    for (path, kind) in declared {
        let (what, allow_empty) = match kind {
            OutputKind::Any => ("output path", false),
            OutputKind::File => ("output file", false),
            OutputKind::Directory => ("output directory", true),
        };
        let relative = wd.join(paths::relative_path(path, what, allow_empty)?);
        outputs.push(OutputPath { path: path.clone(), relative, kind });
    }
    Ok((wd, outputs))
}

fn validate_command(c: &Command) -> Result<()> {
    if c.arguments.is_empty() || c.arguments[0].is_empty() {
        return Err(Error::InvalidArgument("Command.arguments is empty: nothing to run".into()));
    }
    for v in &c.environment_variables {
        if v.name.is_empty() || v.name.contains('=') || v.name.contains('\0') || v.value.contains('\0') {
            return Err(Error::InvalidArgument(format!("environment variable '{}' is malformed", v.name)));
        }
    }
    Ok(())
}
