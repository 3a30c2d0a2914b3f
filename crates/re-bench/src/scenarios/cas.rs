//! cas-upload / cas-download: one large blob through ByteStream.
use std::time::{Duration, Instant};

use bytes::BytesMut;
use re_proto::DigestInfo;

use super::per_sec;
use crate::data::fill;
use crate::stats::{spinner, Recorder, RunResult};
use crate::Ctx;

/// Seed of the cas-download blob: fixed, so repeated invocations against the
/// same server reuse the stored copy.
const DOWNLOAD_SEED: u64 = 0x5eed_b10b;

fn mb_per_s(bytes: u64, busy: Duration) -> f64 {
    per_sec(bytes, busy.as_secs_f64()) / 1e6
}

/// Writes `tag` over the start of the buffer so each upload is a new blob.
fn stamp(buf: &mut [u8], tag: [u64; 3]) {
    let bytes: Vec<u8> = tag.iter().flat_map(|t| t.to_le_bytes()).collect();
    let n = bytes.len().min(buf.len());
    buf[..n].copy_from_slice(&bytes[..n]);
}

pub async fn upload(ctx: &Ctx, repeat: usize) -> anyhow::Result<Vec<RunResult>> {
    let size = ctx.opts.size as usize;
    let chunk = ctx.opts.chunk as usize;
    let pb = spinner(ctx.progress, format!("generating a {size}-byte blob"));
    let mut buf = BytesMut::zeroed(size);
    fill(&mut buf, ctx.nonce);
    pb.finish_and_clear();
    let mut stubs = ctx.clients.stubs();
    let mut out = Vec::new();
    for run in 0..repeat {
        let bound = ctx.bound("uploads");
        let mut rec = Recorder::default();
        let (mut bytes, mut busy) = (0u64, Duration::ZERO);
        while let Some(i) = bound.next() {
            // New content (so the server cannot answer "already have it"),
            // hashed before the clock starts.
            stamp(&mut buf, [ctx.nonce, run as u64, i]);
            let digest = DigestInfo::of_bytes(&buf);
            let data = buf.split().freeze();
            let t = Instant::now();
            let res = stubs.bytestream_write(digest, data.clone(), chunk).await;
            let d = t.elapsed();
            if let Err(e) = res {
                bound.finish();
                return Err(e);
            }
            rec.record("ByteStream.Write", d);
            busy += d;
            bytes += size as u64;
            bound.done();
            buf = data.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..]));
        }
        bound.finish();
        out.push(
            RunResult::new(bound.completed(), bound.elapsed(), rec.summary())
                .rate("MB/s", mb_per_s(bytes, busy))
                .counter("bytes", bytes),
        );
    }
    Ok(out)
}

pub async fn download(ctx: &Ctx, repeat: usize) -> anyhow::Result<Vec<RunResult>> {
    let size = ctx.opts.size as usize;
    let mut stubs = ctx.clients.stubs();
    let pb = spinner(ctx.progress, format!("preparing a {size}-byte blob"));
    let mut buf = BytesMut::zeroed(size);
    fill(&mut buf, DOWNLOAD_SEED);
    let digest = DigestInfo::of_bytes(&buf);
    // Write it unless the server has it already (ByteStream returns early then).
    stubs.bytestream_write(digest, buf.freeze(), ctx.opts.chunk as usize).await?;
    pb.finish_and_clear();
    let mut out = Vec::new();
    for _ in 0..repeat {
        let bound = ctx.bound("downloads");
        let mut rec = Recorder::default();
        let (mut bytes, mut busy) = (0u64, Duration::ZERO);
        while bound.next().is_some() {
            let t = Instant::now();
            let res = stubs.bytestream_read(digest, ctx.opts.verify).await;
            let d = t.elapsed();
            match res {
                Ok(n) => bytes += n,
                Err(e) => {
                    bound.finish();
                    return Err(e);
                }
            }
            rec.record("ByteStream.Read", d);
            busy += d;
            bound.done();
        }
        bound.finish();
        out.push(
            RunResult::new(bound.completed(), bound.elapsed(), rec.summary())
                .rate("MB/s", mb_per_s(bytes, busy))
                .counter("bytes", bytes),
        );
    }
    Ok(out)
}
