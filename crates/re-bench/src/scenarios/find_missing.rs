//! find-missing: concurrent FindMissingBlobs calls, half the digests present.
use std::time::Instant;

use anyhow::{bail, Context};
use re_proto::reapi::FindMissingBlobsRequest;
use re_proto::DigestInfo;

use super::{per_sec, workers};
use crate::data::{blob, Blob};
use crate::stats::{spinner, RunResult};
use crate::Ctx;

pub async fn run(ctx: &Ctx, repeat: usize) -> anyhow::Result<Vec<RunResult>> {
    let k = ctx.opts.digests.max(1);
    let present_n = k / 2;
    let pb = spinner(ctx.progress, format!("uploading {present_n} blobs that will be present"));
    let present: Vec<Blob> = (0..present_n as u64).map(|i| Blob::new(blob(ctx.nonce, i, 64))).collect();
    ctx.clients.stubs().batch_upload(&present).await?;
    pb.finish_and_clear();
    // Present and never-uploaded digests, interleaved.
    let mut digests = Vec::with_capacity(k);
    for i in 0..k {
        let d = if i % 2 == 0 && i / 2 < present_n {
            present[i / 2].digest
        } else {
            DigestInfo::of_bytes(format!("re-bench missing {} {i}", ctx.nonce).as_bytes())
        };
        digests.push(d.into());
    }
    let expect_missing = k - present_n;
    let request = FindMissingBlobsRequest {
        instance_name: ctx.clients.instance.clone(),
        blob_digests: digests,
        digest_function: 0,
    };

    let mut out = Vec::new();
    for _ in 0..repeat {
        let bound = ctx.bound("calls");
        let rec = workers(ctx.opts.clients, &bound, |_| {
            let mut stubs = ctx.clients.stubs();
            let bound = bound.clone();
            let request = request.clone();
            async move {
                let mut rec = crate::stats::Recorder::default();
                while bound.next().is_some() {
                    let req = request.clone();
                    let t = Instant::now();
                    let resp = stubs.cas.find_missing_blobs(req).await.context("FindMissingBlobs")?.into_inner();
                    rec.record("FindMissingBlobs", t.elapsed());
                    if resp.missing_blob_digests.len() != expect_missing {
                        bail!(
                            "FindMissingBlobs reported {} missing, expected {expect_missing}",
                            resp.missing_blob_digests.len()
                        );
                    }
                    bound.done();
                }
                Ok(rec)
            }
        })
        .await?;
        let secs = bound.elapsed().as_secs_f64();
        let calls = bound.completed();
        out.push(
            RunResult::new(calls, bound.elapsed(), rec.summary())
                .rate("calls/s", per_sec(calls, secs))
                .rate("digests/s", per_sec(calls * k as u64, secs)),
        );
    }
    Ok(out)
}
