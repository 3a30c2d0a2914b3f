//! batch-update: BatchUpdateBlobs of new small blobs from concurrent clients.
use std::time::Instant;

use anyhow::bail;

use super::{per_sec, workers};
use crate::data::{blob, Blob};
use crate::stats::{Recorder, RunResult};
use crate::Ctx;

pub async fn run(ctx: &Ctx, repeat: usize) -> anyhow::Result<Vec<RunResult>> {
    let batch = ctx.opts.batch.max(1);
    let size = ctx.opts.blob_size as usize;
    let total = (batch as u64) * (size as u64 + 128);
    if total > ctx.clients.max_batch {
        bail!(
            "a batch of {batch} x {size} bytes is over the server's max_batch_total_size_bytes ({}); lower --batch",
            ctx.clients.max_batch
        );
    }
    let mut out = Vec::new();
    for run in 0..repeat {
        let seed = ctx.nonce ^ ((run as u64) << 48);
        let bound = ctx.bound("batches");
        let rec = workers(ctx.opts.clients, &bound, |_| {
            let mut stubs = ctx.clients.stubs();
            let bound = bound.clone();
            async move {
                let mut rec = Recorder::default();
                while let Some(i) = bound.next() {
                    // Generating and hashing the batch is client work, outside the RPC timing.
                    let blobs: Vec<Blob> =
                        (0..batch as u64).map(|j| Blob::new(blob(seed, i * batch as u64 + j, size))).collect();
                    let t = Instant::now();
                    stubs.batch_upload_one(&blobs).await?;
                    rec.record("BatchUpdateBlobs", t.elapsed());
                    bound.done();
                }
                Ok(rec)
            }
        })
        .await?;
        let secs = bound.elapsed().as_secs_f64();
        let calls = bound.completed();
        let blobs = calls * batch as u64;
        out.push(
            RunResult::new(calls, bound.elapsed(), rec.summary())
                .rate("blobs/s", per_sec(blobs, secs))
                .rate("MB/s", per_sec(blobs * size as u64, secs) / 1e6)
                .counter("blobs", blobs),
        );
    }
    Ok(out)
}
