//! The filesystem CAS at fleet size: a store of N small blobs (default
//! 1,000,000) is opened (start-up time, index memory per blob), then
//! FindMissingBlobs of 1,000 digests (half present) is timed against it and
//! against a store of 1,000 blobs (p50 ratio). MODE `packed` (the default)
//! stores the blobs in packs, as the server does for small blobs; `files`
//! gives each its own file. The store is made once under DIR and kept for
//! later runs (delete DIR to start over).
//!
//! cargo run --release -p re-cas --example fleet_store -- [N] [DIR] [packed|files]
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use re_cas::filesystem_store::blob_file_name;
use re_cas::{BlobStore, FilesystemStore};
use re_proto::DigestInfo;

fn blob(i: u64) -> Vec<u8> {
    format!("fleet-blob-{i:012}").into_bytes()
}

/// Packing threshold of the store in `packed` mode (the server's default).
const SMALL: u64 = 16 << 10;

/// Stores blobs 0..n through the store's own put (packed).
async fn fill_packed(root: &Path, n: u64) {
    let marker = root.join(format!(".filled-{n}"));
    if marker.exists() {
        return;
    }
    let started = Instant::now();
    let store = FilesystemStore::open(root.to_path_buf(), u64::MAX / 2, false, SMALL).await.unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let puts = chunk.iter().map(|&i| {
            let data = bytes::Bytes::from(blob(i));
            let store = &store;
            async move { store.put(DigestInfo::of_bytes(&data), data).await.unwrap() }
        });
        futures::future::join_all(puts).await;
    }
    drop(store);
    std::fs::write(&marker, b"").unwrap();
    eprintln!("packed {n} blobs in {:.1} s", started.elapsed().as_secs_f64());
}

/// Makes the blob files of blobs 0..n where a store opened at `root` finds them.
fn fill(root: &Path, n: u64) {
    let marker = root.join(format!(".filled-{n}"));
    if marker.exists() {
        return;
    }
    let started = Instant::now();
    let blobs = root.join("blobs");
    for p in 0..=255u8 {
        std::fs::create_dir_all(blobs.join(hex::encode([p]))).unwrap();
    }
    for i in 0..n {
        let data = blob(i);
        let d = DigestInfo::of_bytes(&data);
        std::fs::write(blobs.join(hex::encode([d.hash[0]])).join(blob_file_name(&d)), &data).unwrap();
    }
    std::fs::write(&marker, b"").unwrap();
    eprintln!("made {n} blob files in {:.1} s", started.elapsed().as_secs_f64());
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

/// Round `round`'s 1,000 digests: every other one stored (of blobs 0..n).
fn query(round: u64, n: u64) -> Vec<DigestInfo> {
    (0..1000u64)
        .map(|k| {
            let i = if k % 2 == 0 { (round * 7919 + k * 104_729) % n } else { u64::MAX - round * 1000 - k };
            DigestInfo::of_bytes(&blob(i))
        })
        .collect()
}

/// p50 and p99 of FindMissing over 1,000 digests, 500 of them stored.
async fn find_missing(store: &FilesystemStore, n: u64) -> (Duration, Duration) {
    let mut times = Vec::new();
    for round in 0..2000u64 {
        let digests = query(round, n);
        let started = Instant::now();
        let missing = store.find_missing(&digests).await.unwrap();
        times.push(started.elapsed());
        assert_eq!(missing.len(), 500);
    }
    times.sort_unstable();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

/// The floor: the same lookups in a plain hash set of the same digests
/// (no LRU order to refresh, no lock), p50 over 2,000 rounds.
fn set_lookup_p50(n: u64) -> Duration {
    let set: std::collections::HashSet<DigestInfo> = (0..n).map(|i| DigestInfo::of_bytes(&blob(i))).collect();
    let mut times = Vec::new();
    for round in 0..2000u64 {
        let digests = query(round, n);
        let started = Instant::now();
        let missing = digests.iter().filter(|d| !set.contains(d)).count();
        times.push(started.elapsed());
        assert_eq!(missing, 500);
    }
    times.sort_unstable();
    times[times.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).map(|a| a.parse().unwrap()).unwrap_or(1_000_000);
    let packed = args.get(3).map(String::as_str) != Some("files");
    let default_root = format!("/tmp/re-fleet-cas-{}-{n}", if packed { "packed" } else { "files" });
    let root = PathBuf::from(args.get(2).cloned().unwrap_or(default_root));
    let small_root = PathBuf::from(format!("{}-small", root.display()));
    let threshold = if packed { SMALL } else { 0 };
    if packed {
        fill_packed(&root, n).await;
        fill_packed(&small_root, 1000).await;
    } else {
        fill(&root, n);
        fill(&small_root, 1000);
    }

    let before = rss_bytes();
    let started = Instant::now();
    let store = FilesystemStore::open(root.clone(), u64::MAX / 2, false, threshold).await.unwrap();
    let ready = started.elapsed();
    // SAFETY: malloc_trim only returns freed heap to the kernel.
    unsafe { libc::malloc_trim(0) };
    let per_blob = (rss_bytes().saturating_sub(before)) as f64 / n as f64;
    assert_eq!(store.len() as u64, n);
    let (big_p50, big_p99) = find_missing(&store, n).await;
    drop(store);
    let small = FilesystemStore::open(small_root, u64::MAX / 2, false, threshold).await.unwrap();
    let (small_p50, small_p99) = find_missing(&small, 1000).await;

    println!("mode: {}", if packed { "packed" } else { "files" });
    println!("| blobs | ready in | index memory per blob | FindMissing(1,000) p50 | p99 |");
    println!("|---|---|---|---|---|");
    println!(
        "| {n} | {:.2} s | {per_blob:.0} B | {:.0} µs | {:.0} µs |",
        ready.as_secs_f64(),
        us(big_p50),
        us(big_p99)
    );
    println!("| 1000 | | | {:.0} µs | {:.0} µs |", us(small_p50), us(small_p99));
    println!("\nFindMissing p50 ratio {n} / 1,000 blobs: {:.2}", us(big_p50) / us(small_p50));
    let (floor_big, floor_small) = (set_lookup_p50(n), set_lookup_p50(1000));
    println!(
        "floor, HashSet lookups of the same digests: {:.0} µs at {n}, {:.0} µs at 1,000: ratio {:.2}",
        us(floor_big),
        us(floor_small),
        us(floor_big) / us(floor_small)
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
