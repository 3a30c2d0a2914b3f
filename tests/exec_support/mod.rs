//! Builds actions in the CAS and runs them through Execution.Execute, as a
//! REAPI client would. Shared by the execution and docker end-to-end tests;
//! every test binary that includes it also includes `common`.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use re_proto::google::longrunning::{operation, Operation};
use re_proto::reapi::execution_client::ExecutionClient;
use re_proto::reapi::{
    command::EnvironmentVariable, platform::Property, Action, Command, Digest, Directory, ExecuteOperationMetadata,
    ExecuteRequest, ExecuteResponse, ExecutedActionMetadata, ExecutionPolicy, FileNode, Platform, RequestMetadata,
};
use tonic::transport::Channel;

use crate::common::{digest, put_blobs, read_blob};

/// An action under construction; `upload` puts every blob in the CAS.
#[derive(Clone, Default)]
pub struct ActionSpec {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub output_files: Vec<String>,
    pub output_directories: Vec<String>,
    pub output_paths: Vec<String>,
    pub working_directory: String,
    /// (name, contents, executable) at the input root.
    pub input_files: Vec<(String, Vec<u8>, bool)>,
    pub platform: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub do_not_cache: bool,
    /// Makes otherwise identical actions distinct.
    pub salt: String,
    /// Leave input file blobs out of the CAS (to provoke MISSING).
    pub skip_input_upload: bool,
    /// Use this root Directory instead of building one from input_files.
    pub root_override: Option<Directory>,
}

impl ActionSpec {
    pub fn sh(script: &str) -> Self {
        Self { args: vec!["/bin/sh".into(), "-c".into(), script.into()], ..Default::default() }
    }

    pub fn root(&self) -> (Directory, Vec<(Digest, Bytes)>) {
        if let Some(d) = &self.root_override {
            return (d.clone(), vec![]);
        }
        let mut dir = Directory::default();
        let mut blobs = Vec::new();
        let mut files = self.input_files.clone();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, data, exec) in files {
            let d = digest(&data);
            dir.files.push(FileNode { name, digest: Some(d.clone()), is_executable: exec, node_properties: None });
            blobs.push((d, Bytes::from(data)));
        }
        (dir, blobs)
    }

    #[allow(deprecated)]
    pub fn messages(&self) -> (Action, Command, Vec<(Digest, Bytes)>) {
        let mut platform = Platform {
            properties: self.platform.iter().map(|(k, v)| Property { name: k.clone(), value: v.clone() }).collect(),
        };
        platform.properties.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
        let mut env = self.env.clone();
        env.sort();
        let command = Command {
            arguments: self.args.clone(),
            environment_variables: env.into_iter().map(|(name, value)| EnvironmentVariable { name, value }).collect(),
            output_files: self.output_files.clone(),
            output_directories: self.output_directories.clone(),
            output_paths: self.output_paths.clone(),
            working_directory: self.working_directory.clone(),
            ..Default::default()
        };
        let (root, file_blobs) = self.root();
        let root_bytes = Bytes::from(root.encode_to_vec());
        let cmd_bytes = Bytes::from(command.encode_to_vec());
        let action = Action {
            command_digest: Some(digest(&cmd_bytes)),
            input_root_digest: Some(digest(&root_bytes)),
            timeout: self
                .timeout
                .map(|t| prost_types::Duration { seconds: t.as_secs() as i64, nanos: t.subsec_nanos() as i32 }),
            do_not_cache: self.do_not_cache,
            salt: Bytes::from(self.salt.clone().into_bytes()),
            platform: if platform.properties.is_empty() { None } else { Some(platform) },
        };
        let mut blobs = vec![(digest(&cmd_bytes), cmd_bytes), (digest(&root_bytes), root_bytes)];
        if !self.skip_input_upload {
            blobs.extend(file_blobs);
        }
        (action, command, blobs)
    }

    /// Uploads Command, input root, inputs and Action; returns the action digest.
    pub async fn upload(&self, channel: &Channel, instance: &str) -> Digest {
        let (action, _, mut blobs) = self.messages();
        let action_bytes = Bytes::from(action.encode_to_vec());
        let action_digest = digest(&action_bytes);
        blobs.push((action_digest.clone(), action_bytes));
        put_blobs(channel, instance, blobs).await;
        action_digest
    }
}

/// Options for one Execute call.
#[derive(Clone, Default)]
pub struct ExecOpts {
    pub skip_cache_lookup: bool,
    pub priority: i32,
    pub invocation: Option<String>,
    /// RequestMetadata's action_mnemonic and target_id, as Bazel sends them.
    pub mnemonic: Option<String>,
    pub target: Option<String>,
}

pub fn execute_request(instance: &str, digest: &Digest, opts: &ExecOpts) -> tonic::Request<ExecuteRequest> {
    let mut req = tonic::Request::new(ExecuteRequest {
        instance_name: instance.into(),
        skip_cache_lookup: opts.skip_cache_lookup,
        action_digest: Some(digest.clone()),
        execution_policy: Some(ExecutionPolicy { priority: opts.priority }),
        ..Default::default()
    });
    if opts.invocation.is_some() || opts.mnemonic.is_some() || opts.target.is_some() {
        let md = RequestMetadata {
            tool_invocation_id: opts.invocation.clone().unwrap_or_default(),
            action_mnemonic: opts.mnemonic.clone().unwrap_or_default(),
            target_id: opts.target.clone().unwrap_or_default(),
            ..Default::default()
        };
        req.metadata_mut().insert_bin(
            re_proto::REQUEST_METADATA_HEADER,
            tonic::metadata::MetadataValue::from_bytes(&md.encode_to_vec()),
        );
    }
    req
}

/// Reads an operation stream to its end; returns every Operation seen.
pub async fn drain(mut stream: tonic::Streaming<Operation>) -> Result<Vec<Operation>, tonic::Status> {
    let mut ops = Vec::new();
    while let Some(op) =
        tokio::time::timeout(Duration::from_secs(120), stream.message()).await.expect("operation stream stalled")?
    {
        let done = op.done;
        ops.push(op);
        if done {
            break;
        }
    }
    Ok(ops)
}

pub fn response_of(op: &Operation) -> ExecuteResponse {
    match &op.result {
        Some(operation::Result::Response(any)) => {
            ExecuteResponse::decode(any.value.as_slice()).expect("ExecuteResponse")
        }
        other => panic!("operation {} has no response: {other:?}", op.name),
    }
}

pub fn stage_of(op: &Operation) -> i32 {
    ExecuteOperationMetadata::decode(op.metadata.as_ref().expect("metadata").value.as_slice()).expect("metadata").stage
}

/// Execute and wait: the final ExecuteResponse and the operation name.
pub async fn run(
    channel: &Channel,
    instance: &str,
    digest: &Digest,
    opts: &ExecOpts,
) -> Result<(String, ExecuteResponse), tonic::Status> {
    let mut exec = ExecutionClient::new(channel.clone());
    let stream = exec.execute(execute_request(instance, digest, opts)).await?.into_inner();
    let ops = drain(stream).await?;
    let last = ops.last().expect("at least one operation");
    assert!(last.done, "stream ended before the operation was done");
    Ok((last.name.clone(), response_of(last)))
}

/// Uploads and runs `spec`; returns (response, stdout).
pub async fn run_spec(
    channel: &Channel,
    instance: &str,
    spec: &ActionSpec,
    opts: &ExecOpts,
) -> Result<(ExecuteResponse, String), tonic::Status> {
    let digest = spec.upload(channel, instance).await;
    let (_, resp) = run(channel, instance, &digest, opts).await?;
    let stdout = match resp.result.as_ref().and_then(|r| r.stdout_digest.clone()) {
        Some(d) => String::from_utf8_lossy(&read_blob(channel, instance, &d).await).into_owned(),
        None => String::new(),
    };
    Ok((resp, stdout))
}

/// Asserts the worker stamped every phase of the action, in phase order, and
/// that `virtual_execution_duration` is exactly the execution phase.
pub fn assert_timestamps_in_order(meta: &ExecutedActionMetadata) {
    let phases = [
        ("queued", &meta.queued_timestamp),
        ("worker_start", &meta.worker_start_timestamp),
        ("input_fetch_start", &meta.input_fetch_start_timestamp),
        ("input_fetch_completed", &meta.input_fetch_completed_timestamp),
        ("execution_start", &meta.execution_start_timestamp),
        ("execution_completed", &meta.execution_completed_timestamp),
        ("output_upload_start", &meta.output_upload_start_timestamp),
        ("output_upload_completed", &meta.output_upload_completed_timestamp),
        ("worker_completed", &meta.worker_completed_timestamp),
    ];
    let nanos = |seconds: i64, nanos: i32| i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let mut previous: Option<(&str, i128)> = None;
    for (phase, t) in phases {
        let t = t.as_ref().unwrap_or_else(|| panic!("{phase}_timestamp is not set: {meta:?}"));
        let at = nanos(t.seconds, t.nanos);
        if let Some((before, then)) = previous {
            assert!(then <= at, "{before}_timestamp is after {phase}_timestamp: {meta:?}");
        }
        previous = Some((phase, at));
    }
    let stamp = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| nanos(t.seconds, t.nanos)).unwrap();
    let execution = stamp(&meta.execution_completed_timestamp) - stamp(&meta.execution_start_timestamp);
    let virtual_duration = meta.virtual_execution_duration.as_ref().expect("virtual_execution_duration is set");
    assert_eq!(
        nanos(virtual_duration.seconds, virtual_duration.nanos),
        execution,
        "virtual_execution_duration is not execution_completed - execution_start: {meta:?}"
    );
}
