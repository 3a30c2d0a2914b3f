//! exec-noop / exec-cached: Execution.Execute of no-op actions.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use prost::Message;
use re_proto::google::longrunning::operation;
use re_proto::reapi::{Directory, ExecuteRequest, ExecuteResponse, FileNode};
use re_proto::DigestInfo;

use super::{per_sec, workers};
use crate::conn::Stubs;
use crate::data::{blob, platform, ActionBlobs, Blob};
use crate::stats::{Bound, Recorder, RunResult};
use crate::Ctx;

/// Calls Execute and reads the Operation stream until the operation is done;
/// returns its ExecuteResponse (errors for a failed status or exit code).
pub(super) async fn execute(
    stubs: &mut Stubs,
    action: DigestInfo,
    skip_cache_lookup: bool,
) -> anyhow::Result<ExecuteResponse> {
    let resp = execute_response(stubs, action, skip_cache_lookup).await?;
    if let Some(s) = resp.status.as_ref().filter(|s| s.code != 0) {
        bail!("Execute: action {action} failed: code {} {}", s.code, s.message);
    }
    let Some(result) = resp.result.as_ref() else { bail!("Execute: action {action}: response without ActionResult") };
    if result.exit_code != 0 {
        bail!(
            "Execute: action {action} exited with {} (stderr: {})",
            result.exit_code,
            String::from_utf8_lossy(&result.stderr_raw)
        );
    }
    Ok(resp)
}

/// Calls Execute and returns the final ExecuteResponse whatever its status.
pub(super) async fn execute_response(
    stubs: &mut Stubs,
    action: DigestInfo,
    skip_cache_lookup: bool,
) -> anyhow::Result<ExecuteResponse> {
    let req = ExecuteRequest {
        instance_name: stubs.instance.clone(),
        skip_cache_lookup,
        action_digest: Some(action.into()),
        ..Default::default()
    };
    let mut stream = stubs.exec.execute(req).await.context("Execute")?.into_inner();
    while let Some(op) = stream.message().await.context("Execute stream")? {
        if !op.done {
            continue;
        }
        let resp = match op.result {
            Some(operation::Result::Response(any)) => ExecuteResponse::decode(&any.value[..])
                .with_context(|| format!("operation response is not an ExecuteResponse ({})", any.type_url))?,
            Some(operation::Result::Error(s)) => {
                bail!("Execute: operation {} failed: code {} {}", op.name, s.code, s.message)
            }
            None => bail!("Execute: operation {} is done but has no result", op.name),
        };
        // Read to the end of the stream rather than dropping it: a client that
        // resets thousands of finished streams makes h2 servers answer
        // GOAWAY(ENHANCE_YOUR_CALM, "too_many_internal_resets").
        while stream.message().await.context("Execute stream")?.is_some() {}
        return Ok(resp);
    }
    bail!("Execute: the stream ended before the operation was done")
}

fn require_exec(ctx: &Ctx) -> anyhow::Result<()> {
    if !ctx.clients.exec_enabled {
        bail!("the server does not offer remote execution (Capabilities: exec_enabled = false)");
    }
    Ok(())
}

/// Uploads an action's Command and Action, executes it, records timings.
async fn run_one(
    stubs: &mut Stubs,
    rec: &mut Recorder,
    a: &ActionBlobs,
    skip_cache_lookup: bool,
) -> anyhow::Result<ExecuteResponse> {
    let t = Instant::now();
    rec.time("BatchUpdateBlobs", stubs.batch_upload_one(&[a.command.clone(), a.action.clone()])).await?;
    let resp = rec.time("Execute", execute(stubs, a.action.digest, skip_cache_lookup)).await?;
    rec.record("action (end to end)", t.elapsed());
    Ok(resp)
}

/// The input root every exec-noop action gets: `--input-files` files of
/// `--input-size` bytes, uploaded once, before timing.
async fn shared_input_root(ctx: &Ctx) -> anyhow::Result<DigestInfo> {
    let o = &ctx.opts;
    if o.input_files == 0 {
        return Ok(DigestInfo::EMPTY);
    }
    let mut stubs = ctx.clients.stubs();
    let mut files = Vec::new();
    for i in 0..o.input_files {
        let b = Blob::new(blob(ctx.nonce, i as u64, o.input_size as usize));
        if b.data.len() as u64 > stubs.max_batch / 2 {
            stubs.bytestream_write(b.digest, b.data.clone(), o.chunk as usize).await?;
        } else {
            stubs.batch_upload(std::slice::from_ref(&b)).await?;
        }
        files.push(FileNode { name: format!("in{i:05}"), digest: Some(b.digest.into()), ..Default::default() });
    }
    let root = Blob::of_message(&Directory { files, ..Default::default() });
    stubs.batch_upload(std::slice::from_ref(&root)).await?;
    eprintln!("re-bench: every action reads {} input files of {} bytes", o.input_files, o.input_size);
    Ok(root.digest)
}

pub async fn noop(ctx: &Ctx, repeat: usize) -> anyhow::Result<Vec<RunResult>> {
    require_exec(ctx)?;
    let input_root = shared_input_root(ctx).await?;
    let args = Arc::new(ctx.command_args());
    let platform = Arc::new(platform(&ctx.opts.platform)?);
    let mut out = Vec::new();
    for run in 0..repeat {
        let bound = ctx.bound("actions");
        let cached = Arc::new(AtomicU64::new(0));
        let rec = workers(ctx.opts.concurrency, &bound, |_| {
            let (mut stubs, bound, args, platform, cached) =
                (ctx.clients.stubs(), bound.clone(), args.clone(), platform.clone(), cached.clone());
            let (nonce, skip) = (ctx.nonce, ctx.opts.skip_cache_lookup);
            async move {
                let mut rec = Recorder::default();
                while let Some(i) = bound.next() {
                    // Building and hashing the action is client work, before the clock.
                    let a = ActionBlobs::new(
                        &args,
                        &format!("{nonce:x}-{run}-{i}"),
                        platform.as_ref().as_ref(),
                        input_root,
                    );
                    let resp = run_one(&mut stubs, &mut rec, &a, skip).await?;
                    if resp.cached_result {
                        cached.fetch_add(1, Ordering::Relaxed);
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
                .counter("cached", cached.load(Ordering::Relaxed)),
        );
    }
    Ok(out)
}

pub async fn cached(ctx: &Ctx, repeat: usize) -> anyhow::Result<Vec<RunResult>> {
    require_exec(ctx)?;
    let args = ctx.command_args();
    let platform = platform(&ctx.opts.platform)?;
    let distinct = ctx.opts.distinct.max(1);
    let actions: Arc<Vec<ActionBlobs>> = Arc::new(
        (0..distinct)
            .map(|i| {
                ActionBlobs::new(&args, &format!("{:x}-cached-{i}", ctx.nonce), platform.as_ref(), DigestInfo::EMPTY)
            })
            .collect(),
    );
    // Untimed warm-up: run each action once so the action cache holds it.
    eprintln!("re-bench: executing {distinct} actions once to fill the action cache");
    let warm = Bound::new(Some(distinct as u64), None, "actions", ctx.progress);
    workers(ctx.opts.concurrency, &warm, |_| {
        let (mut stubs, bound, actions) = (ctx.clients.stubs(), warm.clone(), actions.clone());
        async move {
            let mut rec = Recorder::default();
            while let Some(i) = bound.next() {
                run_one(&mut stubs, &mut rec, &actions[i as usize], false).await?;
                bound.done();
            }
            Ok(rec)
        }
    })
    .await?;

    let mut out = Vec::new();
    for _ in 0..repeat {
        let bound = ctx.bound("actions");
        let misses = Arc::new(AtomicU64::new(0));
        let rec = workers(ctx.opts.concurrency, &bound, |_| {
            let (mut stubs, bound, actions, misses) =
                (ctx.clients.stubs(), bound.clone(), actions.clone(), misses.clone());
            async move {
                let mut rec = Recorder::default();
                while let Some(i) = bound.next() {
                    let a = &actions[i as usize % actions.len()];
                    let resp = rec.time("Execute", execute(&mut stubs, a.action.digest, false)).await?;
                    if !resp.cached_result {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                    bound.done();
                }
                Ok(rec)
            }
        })
        .await?;
        let n = bound.completed();
        let misses = misses.load(Ordering::Relaxed);
        if misses > 0 {
            eprintln!("re-bench: warning: {misses} of {n} executions were not served from the cache");
        }
        out.push(
            RunResult::new(n, bound.elapsed(), rec.summary())
                .rate("actions/s", per_sec(n, bound.elapsed().as_secs_f64()))
                .counter("cached", n - misses),
        );
    }
    Ok(out)
}
