//! Micro-benchmarks: platform matching, queue selection and input-tree
//! materialisation (hard links from a filesystem CAS vs copies).
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use prost::Message;
use re_cas::{BlobStore, FilesystemStore};
use re_execution::action::PreparedAction;
use re_execution::input_tree::{self, LinkMode};
use re_execution::operation::Operation;
use re_execution::platform::{MatchMode, PlatformMatcher, Properties};
use re_execution::queue::{Queue, QueuedJob, RequestInfo};
use re_proto::reapi::{Directory, DirectoryNode, FileNode};
use re_proto::DigestInfo;

fn props(p: &[(&str, &str)]) -> Properties {
    p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn matching(c: &mut Criterion) {
    let m = PlatformMatcher::new([("cores".to_string(), MatchMode::Minimum)].into_iter().collect());
    let worker =
        props(&[("OSFamily", "linux"), ("Arch", "amd64"), ("ISA", "x86-64"), ("pool", "fast"), ("cores", "16")]);
    let wanted = props(&[("OSFamily", "Linux"), ("pool", "fast"), ("cores", "4")]);
    c.bench_function("platform_match_3_of_5", |b| b.iter(|| assert!(m.matches(&worker, &wanted))));
}

fn queue(c: &mut Criterion) {
    let m = PlatformMatcher::default();
    let make = |i: u32, platform: &Properties| QueuedJob {
        op: Operation::new(DigestInfo::new([0; 32], i as u64)),
        job: Arc::new(PreparedAction {
            action_digest: DigestInfo::new([0; 32], i as u64),
            action: Default::default(),
            command: Default::default(),
            inputs: Default::default(),
            platform: platform.clone(),
            timeout: Duration::from_secs(1),
            blobs: vec![],
            working_directory: Default::default(),
            outputs: vec![],
        }),
        priority: (i % 3) as i32,
        request: RequestInfo { invocation: format!("build-{}", i % 4), ..Default::default() },
        queued_at: SystemTime::now(),
        attempts: 0,
    };
    let gpu = props(&[("pool", "gpu")]);
    let none = Properties::new();
    c.bench_function("queue_take_from_1000_skipping_unmatched", |b| {
        b.iter_batched(
            || {
                let mut q = Queue::default();
                for i in 0..1000 {
                    q.push(make(i, if i < 900 { &gpu } else { &none }));
                }
                q
            },
            // Returned, so dropping the queue is not timed.
            |mut q| {
                assert!(q.take_for(&m, &none).is_some());
                q
            },
            BatchSize::LargeInput,
        )
    });
}

fn materialise(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cas_dir = tempfile::tempdir().unwrap();
    let cas: Arc<dyn BlobStore> =
        Arc::new(rt.block_on(FilesystemStore::open(cas_dir.path().to_path_buf(), 1 << 34, false, 0)).unwrap());
    // 10 directories of 100 files of 4 KiB.
    let mut root = Directory::default();
    rt.block_on(async {
        for d in 0..10 {
            let mut dir = Directory::default();
            for f in 0..100 {
                let data = Bytes::from(format!("{d}/{f}").repeat(400).into_bytes());
                let digest = DigestInfo::of_bytes(&data);
                cas.put(digest, data).await.unwrap();
                dir.files.push(FileNode {
                    name: format!("f{f:03}"),
                    digest: Some(digest.into()),
                    ..Default::default()
                });
            }
            let raw = Bytes::from(dir.encode_to_vec());
            let digest = DigestInfo::of_bytes(&raw);
            cas.put(digest, raw).await.unwrap();
            root.directories.push(DirectoryNode { name: format!("d{d}"), digest: Some(digest.into()) });
        }
    });
    let raw = Bytes::from(root.encode_to_vec());
    let root_digest = DigestInfo::of_bytes(&raw);
    rt.block_on(cas.put(root_digest, raw)).unwrap();
    let tree = rt.block_on(input_tree::resolve(cas.as_ref(), root_digest, 1_000_000)).unwrap();
    let mut group = c.benchmark_group("materialise_1000_files");
    group.sample_size(10);
    for (name, mode) in [("hardlink", LinkMode::HardLink), ("copy", LinkMode::Copy)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |dest| rt.block_on(input_tree::locate(&cas, &tree)).unwrap().place(dest.path(), mode).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
    c.bench_function("resolve_input_tree_1000_files", |b| {
        b.iter(|| rt.block_on(input_tree::resolve(cas.as_ref(), root_digest, 1_000_000)).unwrap())
    });
}

criterion_group!(benches, matching, queue, materialise);
criterion_main!(benches);
