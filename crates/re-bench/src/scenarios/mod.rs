//! The scenarios. Each prepares what it needs once (untimed), then runs
//! `repeat` timed runs.
mod batch;
mod bazel;
mod cas;
mod exec;
mod find_missing;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::stats::{Bound, Recorder, RunResult};
use crate::{Ctx, Scenario};

pub async fn run(
    s: Scenario,
    ctx: &Ctx,
    repeat: usize,
    params: &mut BTreeMap<String, String>,
) -> anyhow::Result<Vec<RunResult>> {
    match s {
        Scenario::CasUpload => cas::upload(ctx, repeat).await,
        Scenario::CasDownload => cas::download(ctx, repeat).await,
        Scenario::FindMissing => find_missing::run(ctx, repeat).await,
        Scenario::BatchUpdate => batch::run(ctx, repeat).await,
        Scenario::ExecNoop => exec::noop(ctx, repeat).await,
        Scenario::ExecCached => exec::cached(ctx, repeat).await,
        Scenario::BazelLike => bazel::run(ctx, repeat, params).await,
    }
}

/// Runs `n` workers made by `make(worker_index)` until they all return;
/// the first error stops the others and is returned.
pub async fn workers<F, Fut>(n: usize, bound: &Arc<Bound>, make: F) -> anyhow::Result<Recorder>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Recorder>> + Send + 'static,
{
    let mut set = JoinSet::new();
    for w in 0..n.max(1) {
        set.spawn(make(w));
    }
    let mut rec = Recorder::default();
    let mut err = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(r)) => rec.merge(r),
            Ok(Err(e)) => {
                bound.abort();
                err.get_or_insert(e);
            }
            Err(e) => {
                bound.abort();
                err.get_or_insert(e.into());
            }
        }
    }
    bound.finish();
    match err {
        Some(e) => Err(e),
        None => Ok(rec),
    }
}

/// `done / secs`, 0 for an empty run.
pub fn per_sec(done: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        done as f64 / secs
    } else {
        0.0
    }
}
