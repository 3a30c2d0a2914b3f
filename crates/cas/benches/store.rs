//! Micro-benchmarks of the storage layer: SHA-256 digesting, FilesystemStore
//! put/get/find_missing, and the start-up index rebuild of 100,000 blobs.
//!
//! Run with `cargo bench -p re-cas --bench store`; a subset with e.g.
//! `cargo bench -p re-cas --bench store -- rebuild`.
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use re_cas::filesystem_store::blob_file_name;
use re_cas::{BlobStore, FilesystemStore};
use re_proto::digest::DigestHasher;
use re_proto::DigestInfo;

const KIB4: usize = 4 * 1024;
const MIB1: usize = 1024 * 1024;
const MAX_BYTES: u64 = 64 * 1024 * 1024 * 1024;
const REBUILD_BLOBS: usize = 100_000;

/// Pseudo-random bytes (xorshift), unique per `seed`.
fn data(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v[..8.min(len)].copy_from_slice(&seed.to_le_bytes()[..8.min(len)]);
    Bytes::from(v)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("sha256");
    g.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for (label, len) in [("4KiB", KIB4), ("1MiB", MIB1)] {
        let buf = data(1, len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("DigestInfo::of_bytes", label), &buf, |b, buf| {
            b.iter(|| DigestInfo::of_bytes(buf))
        });
        // Fed in 64 KiB pieces, as a streamed upload would be.
        g.bench_with_input(BenchmarkId::new("DigestHasher", label), &buf, |b, buf| {
            b.iter(|| {
                let mut h = DigestHasher::new();
                for piece in buf.chunks(64 * 1024) {
                    h.update(piece);
                }
                h.finish()
            })
        });
    }
    g.finish();
}

fn filesystem_store(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = rt.block_on(FilesystemStore::open(dir.path().join("cas"), MAX_BYTES, false, 0)).expect("open store");
    let store = &store;

    // Blobs that are present, for get and find_missing.
    let small: Vec<(DigestInfo, Bytes)> = (0..1000u64)
        .map(|i| {
            let d = data(1_000_000 + i, KIB4);
            (DigestInfo::of_bytes(&d), d)
        })
        .collect();
    let big = data(7, MIB1);
    let big_digest = DigestInfo::of_bytes(&big);
    rt.block_on(async {
        for (d, b) in &small {
            store.put(*d, b.clone()).await.unwrap();
        }
        store.put(big_digest, big.clone()).await.unwrap();
    });

    let mut g = c.benchmark_group("filesystem_store");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));

    let mut seed = 10_000_000u64;
    g.throughput(Throughput::Bytes(KIB4 as u64));
    g.bench_function("put_4KiB_new", |b| {
        b.to_async(&rt).iter_batched(
            || {
                seed += 1;
                let d = data(seed, KIB4);
                (DigestInfo::of_bytes(&d), d)
            },
            |(digest, d)| async move { store.put(digest, d).await.unwrap() },
            BatchSize::SmallInput,
        )
    });
    let mut i = 0usize;
    g.bench_function("get_4KiB", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % small.len();
            let digest = small[i].0;
            async move { assert!(store.get(digest).await.unwrap().is_some()) }
        })
    });

    g.throughput(Throughput::Bytes(MIB1 as u64));
    g.bench_function("put_1MiB_new", |b| {
        b.to_async(&rt).iter_batched(
            || {
                seed += 1;
                let mut v = big.to_vec();
                v[..8].copy_from_slice(&seed.to_le_bytes());
                let d = Bytes::from(v);
                (DigestInfo::of_bytes(&d), d)
            },
            |(digest, d)| async move { store.put(digest, d).await.unwrap() },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("get_1MiB", |b| {
        b.to_async(&rt).iter(|| async { assert_eq!(store.get(big_digest).await.unwrap().unwrap().len(), MIB1) })
    });

    // 1000 digests, half present: the FindMissingBlobs shape re-bench uses.
    let query: Vec<DigestInfo> = (0..1000)
        .map(|i| if i % 2 == 0 { small[i / 2].0 } else { DigestInfo::of_bytes(format!("absent {i}").as_bytes()) })
        .collect();
    g.throughput(Throughput::Elements(query.len() as u64));
    g.bench_function("find_missing_1000_half_present", |b| {
        b.to_async(&rt).iter(|| async { assert_eq!(store.find_missing(&query).await.unwrap().len(), 500) })
    });
    g.finish();
}

/// Writes `n` small blobs straight into a store layout under `root`.
fn populate(root: &Path, n: usize) {
    for i in 0..n as u64 {
        let content = format!("blob {i}");
        let d = DigestInfo::of_bytes(content.as_bytes());
        let name = blob_file_name(&d);
        let path = root.join("blobs").join(&name[..2]).join(name);
        std::fs::write(path, content).expect("write blob file");
    }
}

fn index_rebuild(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("cas");
    // Opening an empty store creates the blobs/xx directories.
    drop(rt.block_on(FilesystemStore::open(root.clone(), MAX_BYTES, false, 0)).expect("open store"));
    let t = std::time::Instant::now();
    populate(&root, REBUILD_BLOBS);
    eprintln!("index_rebuild: created {REBUILD_BLOBS} blob files in {:.1?}", t.elapsed());

    let mut g = c.benchmark_group("index_rebuild");
    g.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(REBUILD_BLOBS as u64));
    g.bench_function("open_100000_blobs", |b| {
        b.to_async(&rt).iter(|| async {
            let s = FilesystemStore::open(root.clone(), MAX_BYTES, false, 0).await.unwrap();
            assert_eq!(s.len(), REBUILD_BLOBS);
        })
    });
    g.finish();
}

criterion_group!(benches, hashing, filesystem_store, index_rebuild);
criterion_main!(benches);
