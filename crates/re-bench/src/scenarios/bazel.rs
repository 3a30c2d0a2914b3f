//! bazel-like: what Bazel sends per action, with a configurable hit rate.
//!
//! Hit: GetActionResult finds a result, then BatchReadBlobs fetches its
//! outputs. Miss: GetActionResult (NOT_FOUND), FindMissingBlobs over every
//! input plus the Directory, Command and Action, BatchUpdateBlobs of the
//! missing small blobs, ByteStream.Write of the missing ones over 1 MiB, then
//! Execute when the server executes (else the client "runs" it and stores
//! an output plus UpdateActionResult, as a cache-only Bazel does).
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use re_proto::reapi::{
    ActionResult, BatchReadBlobsRequest, Directory, FileNode, FindMissingBlobsRequest, GetActionResultRequest,
    OutputFile, Platform, UpdateActionResultRequest,
};
use re_proto::DigestInfo;

use super::exec::execute;
use super::{per_sec, workers};
use crate::conn::{batches, Stubs};
use crate::data::{blob, platform, ActionBlobs, Blob, Rng};
use crate::stats::{spinner, Recorder, RunResult};
use crate::Ctx;

/// Blobs above this go through ByteStream, as Bazel does.
const BYTESTREAM_THRESHOLD: u64 = 1024 * 1024;
/// Shared inputs (toolchain, headers) every action draws from.
const SHARED_POOL: usize = 500;

struct Setup {
    args: Vec<String>,
    platform: Option<Platform>,
    shared: Vec<Blob>,
    /// Actions whose results are in the action cache, with their outputs.
    hits: Vec<CachedAction>,
    execute: bool,
}

/// An action the client ran once and cached: what it takes to cache it again.
struct CachedAction {
    action: ActionBlobs,
    outputs: [Blob; 2],
}

impl CachedAction {
    fn result(&self) -> ActionResult {
        ActionResult {
            output_files: vec![output_file("out/lib.o", &self.outputs[0]), output_file("out/lib.d", &self.outputs[1])],
            exit_code: 0,
            ..Default::default()
        }
    }

    /// Uploads its blobs and stores its result, as a client that ran it does.
    async fn store(&self, stubs: &mut Stubs) -> anyhow::Result<()> {
        let (a, o) = (&self.action, &self.outputs);
        stubs.batch_upload(&[a.command.clone(), a.action.clone(), o[0].clone(), o[1].clone()]).await?;
        update_action_result(stubs, a.action.digest, self.result()).await
    }
}

fn output_file(path: &str, b: &Blob) -> OutputFile {
    OutputFile { path: path.into(), digest: Some(b.digest.into()), ..Default::default() }
}

async fn update_action_result(stubs: &mut Stubs, action: DigestInfo, result: ActionResult) -> anyhow::Result<()> {
    stubs
        .ac
        .update_action_result(UpdateActionResultRequest {
            instance_name: stubs.instance.clone(),
            action_digest: Some(action.into()),
            action_result: Some(result),
            ..Default::default()
        })
        .await
        .context("UpdateActionResult")?;
    Ok(())
}

async fn setup(ctx: &Ctx) -> anyhow::Result<Setup> {
    let o = &ctx.opts;
    let args = ctx.command_args();
    let platform = platform(&o.platform)?;
    let mut stubs = ctx.clients.stubs();
    let pb = spinner(ctx.progress, "uploading shared inputs and filling the action cache");
    let mut rng = Rng::new(ctx.nonce);
    let shared: Vec<Blob> = (0..SHARED_POOL as u64)
        .map(|i| Blob::new(blob(ctx.nonce, 1 << 40 | i, rng.log_range(100, o.max_input_size) as usize)))
        .collect();
    stubs.batch_upload(&shared).await?;
    let mut hits = Vec::new();
    for h in 0..o.distinct.max(1) as u64 {
        let action = ActionBlobs::new(&args, &format!("{:x}-hit-{h}", ctx.nonce), platform.as_ref(), DigestInfo::EMPTY);
        let outputs = [Blob::new(blob(ctx.nonce, 2 << 40 | h, 2048)), Blob::new(blob(ctx.nonce, 3 << 40 | h, 300))];
        let cached = CachedAction { action, outputs };
        cached.store(&mut stubs).await?;
        hits.push(cached);
    }
    pb.finish_and_clear();
    Ok(Setup { args, platform, shared, hits, execute: ctx.clients.exec_enabled && !o.no_exec })
}

/// Per-run tallies.
#[derive(Default)]
struct Tally {
    hits: AtomicU64,
    misses: AtomicU64,
    uploaded_blobs: AtomicU64,
    uploaded_bytes: AtomicU64,
    /// `--recover`: cached actions found evicted (run and cached again).
    evicted_hits: AtomicU64,
    /// `--recover`: Execute refused for MISSING inputs, re-uploaded, retried.
    missing_retries: AtomicU64,
}

pub async fn run(ctx: &Ctx, repeat: usize, params: &mut BTreeMap<String, String>) -> anyhow::Result<Vec<RunResult>> {
    let s = Arc::new(setup(ctx).await?);
    params.insert("on_miss".into(), if s.execute { "Execute" } else { "UpdateActionResult" }.into());
    let mut out = Vec::new();
    for run in 0..repeat {
        let bound = ctx.bound("actions");
        let tally = Arc::new(Tally::default());
        let rec = workers(ctx.opts.concurrency, &bound, |_| {
            let (mut stubs, bound, s, tally) = (ctx.clients.stubs(), bound.clone(), s.clone(), tally.clone());
            let (o, nonce) = (ctx.opts.clone(), ctx.nonce);
            async move {
                let mut rec = Recorder::default();
                while let Some(i) = bound.next() {
                    let mut rng = Rng::new(nonce ^ ((run as u64) << 56) ^ i.wrapping_mul(0x9e37_79b9));
                    if rng.next_f64() < o.hit_rate {
                        let cached = &s.hits[rng.range(0, s.hits.len() as u64 - 1) as usize];
                        let t = Instant::now();
                        if hit(&mut stubs, &mut rec, cached, o.recover).await? {
                            tally.hits.fetch_add(1, Ordering::Relaxed);
                        } else {
                            // Evicted: the client runs it and caches it again.
                            cached.store(&mut stubs).await?;
                            tally.evicted_hits.fetch_add(1, Ordering::Relaxed);
                        }
                        rec.record("action (end to end)", t.elapsed());
                    } else {
                        let salt = format!("{nonce:x}-{run}-{i}");
                        miss(&mut stubs, &mut rec, &s, &o, &mut rng, &salt, nonce, &tally).await?;
                        tally.misses.fetch_add(1, Ordering::Relaxed);
                    }
                    bound.done();
                }
                Ok(rec)
            }
        })
        .await?;
        let n = bound.completed();
        out.push(
            RunResult::new(n, bound.elapsed(), rec.summary())
                .rate("actions/s", per_sec(n, bound.elapsed().as_secs_f64()))
                .counter("hits", tally.hits.load(Ordering::Relaxed))
                .counter("misses", tally.misses.load(Ordering::Relaxed))
                .counter("up_blobs", tally.uploaded_blobs.load(Ordering::Relaxed))
                .counter("up_bytes", tally.uploaded_bytes.load(Ordering::Relaxed))
                .counter("evicted_hits", tally.evicted_hits.load(Ordering::Relaxed))
                .counter("missing_retries", tally.missing_retries.load(Ordering::Relaxed)),
        );
    }
    Ok(out)
}

async fn get_action_result(
    stubs: &mut Stubs,
    rec: &mut Recorder,
    action: DigestInfo,
) -> anyhow::Result<Option<ActionResult>> {
    let req = GetActionResultRequest {
        instance_name: stubs.instance.clone(),
        action_digest: Some(action.into()),
        ..Default::default()
    };
    match rec.time("GetActionResult", stubs.ac.get_action_result(req)).await {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s).context("GetActionResult"),
    }
}

/// A cache hit: true if the result and its outputs came back; false if
/// they were evicted and `recover` (else an error).
async fn hit(stubs: &mut Stubs, rec: &mut Recorder, cached: &CachedAction, recover: bool) -> anyhow::Result<bool> {
    let action = cached.action.action.digest;
    let outputs: Vec<DigestInfo> = cached.outputs.iter().map(|b| b.digest).collect();
    let Some(result) = get_action_result(stubs, rec, action).await? else {
        if recover {
            return Ok(false);
        }
        bail!("GetActionResult: action {action} should be cached but was not found (evicted?)");
    };
    if result.output_files.len() != outputs.len() {
        bail!("GetActionResult: action {action} came back with {} outputs", result.output_files.len());
    }
    let req = BatchReadBlobsRequest {
        instance_name: stubs.instance.clone(),
        digests: outputs.iter().map(|d| (*d).into()).collect(),
        ..Default::default()
    };
    let resp = rec.time("BatchReadBlobs", stubs.cas.batch_read_blobs(req)).await.context("BatchReadBlobs")?;
    for r in resp.into_inner().responses {
        if let Some(s) = r.status.filter(|s| s.code != 0) {
            if recover && s.code == tonic::Code::NotFound as i32 {
                return Ok(false);
            }
            bail!("BatchReadBlobs: {:?}: code {} {}", r.digest, s.code, s.message);
        }
    }
    Ok(true)
}

/// Uploads what of `all` the server lacks: FindMissingBlobs, then batches
/// and ByteStream for the large ones. Returns (blobs, bytes) uploaded.
async fn upload_missing(
    stubs: &mut Stubs,
    rec: &mut Recorder,
    all: &[Blob],
    chunk: usize,
) -> anyhow::Result<(u64, u64)> {
    let req = FindMissingBlobsRequest {
        instance_name: stubs.instance.clone(),
        blob_digests: all.iter().map(|b| b.digest.into()).collect(),
        digest_function: 0,
    };
    let missing =
        rec.time("FindMissingBlobs", stubs.cas.find_missing_blobs(req)).await.context("FindMissingBlobs")?.into_inner();
    let missing: HashSet<DigestInfo> = missing
        .missing_blob_digests
        .iter()
        .map(DigestInfo::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("FindMissingBlobs returned a bad digest: {e}"))?;
    let (large, small): (Vec<&Blob>, Vec<&Blob>) =
        all.iter().filter(|b| missing.contains(&b.digest)).partition(|b| b.digest.size > BYTESTREAM_THRESHOLD);
    let small: Vec<Blob> = small.into_iter().cloned().collect();
    for group in batches(&small, stubs.max_batch) {
        rec.time("BatchUpdateBlobs", stubs.batch_upload_one(group)).await?;
    }
    for b in &large {
        rec.time("ByteStream.Write", stubs.bytestream_write(b.digest, b.data.clone(), chunk)).await?;
    }
    let n = (small.len() + large.len()) as u64;
    Ok((n, small.iter().map(|b| b.digest.size).chain(large.iter().map(|b| b.digest.size)).sum()))
}

/// Whether Execute was refused because inputs are missing (FAILED_PRECONDITION).
fn missing_inputs(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>().is_some_and(|s| s.code() == tonic::Code::FailedPrecondition)
}

#[allow(clippy::too_many_arguments)]
async fn miss(
    stubs: &mut Stubs,
    rec: &mut Recorder,
    s: &Setup,
    o: &crate::Opts,
    rng: &mut Rng,
    salt: &str,
    nonce: u64,
    tally: &Tally,
) -> anyhow::Result<()> {
    // The inputs: some shared with every action, the rest new (sources just
    // edited, outputs of earlier actions). Generated before the clock starts.
    let n_shared = ((o.inputs as f64) * o.shared_inputs).round() as usize;
    let mut inputs: Vec<Blob> = Vec::with_capacity(o.inputs);
    for j in 0..o.inputs {
        if j < n_shared {
            inputs.push(s.shared[rng.range(0, s.shared.len() as u64 - 1) as usize].clone());
        } else {
            let size = if rng.next_f64() < o.large_fraction {
                rng.range(2 << 20, 8 << 20)
            } else {
                rng.log_range(100, o.max_input_size)
            };
            inputs.push(Blob::new(blob(nonce ^ rng.next_u64(), j as u64, size as usize)));
        }
    }
    let dir = Directory {
        files: inputs
            .iter()
            .enumerate()
            .map(|(j, b)| FileNode { name: format!("f{j:05}"), digest: Some(b.digest.into()), ..Default::default() })
            .collect(),
        ..Default::default()
    };
    let dir = Blob::of_message(&dir);
    let a = ActionBlobs::new(&s.args, salt, s.platform.as_ref(), dir.digest);

    let t = Instant::now();
    if get_action_result(stubs, rec, a.action.digest).await?.is_some() {
        bail!("GetActionResult: a new action {} was reported cached", a.action.digest);
    }
    let mut all: Vec<Blob> = inputs;
    all.extend([dir, a.command.clone(), a.action.clone()]);
    let mut seen = HashSet::new();
    all.retain(|b| seen.insert(b.digest));
    let (blobs, bytes) = upload_missing(stubs, rec, &all, o.chunk as usize).await?;
    tally.uploaded_blobs.fetch_add(blobs, Ordering::Relaxed);
    tally.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);

    if s.execute {
        let mut attempt = 0;
        let resp = loop {
            match rec.time("Execute", execute(stubs, a.action.digest, false)).await {
                Ok(resp) => break resp,
                // Evicted between the upload and Execute: upload again, retry.
                Err(e) if o.recover && attempt < 3 && missing_inputs(&e) => {
                    attempt += 1;
                    tally.missing_retries.fetch_add(1, Ordering::Relaxed);
                    upload_missing(stubs, rec, &all, o.chunk as usize).await?;
                }
                Err(e) => return Err(e),
            }
        };
        if resp.cached_result {
            bail!("Execute: a new action {} was served from the cache", a.action.digest);
        }
    } else {
        // The client ran it locally: store one output and the result.
        let output = Blob::new(blob(nonce ^ rng.next_u64(), 7, rng.log_range(100, 16 * 1024) as usize));
        rec.time("BatchUpdateBlobs", stubs.batch_upload_one(std::slice::from_ref(&output))).await?;
        let result =
            ActionResult { output_files: vec![output_file("out/a.o", &output)], exit_code: 0, ..Default::default() };
        rec.time("UpdateActionResult", update_action_result(stubs, a.action.digest, result)).await?;
    }
    rec.record("action (end to end)", t.elapsed());
    Ok(())
}
