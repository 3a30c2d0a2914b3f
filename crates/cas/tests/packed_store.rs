//! The filesystem store's packs of small blobs: served like files, kept
//! across restarts, emptied packs deleted, sparse ones compacted, damaged
//! bytes never served.
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use re_cas::{BlobStore, FilesystemStore};
use re_proto::DigestInfo;

const SMALL: u64 = 16 << 10;

fn blob(tag: &str, i: usize, len: usize) -> Bytes {
    let mut data = format!("{tag}-{i:08}-").into_bytes();
    data.resize(len, (i % 251) as u8);
    Bytes::from(data)
}

async fn put_all(store: &FilesystemStore, blobs: &[Bytes]) -> Vec<DigestInfo> {
    let puts = blobs.iter().map(|b| async move {
        let d = DigestInfo::of_bytes(b);
        store.put(d, b.clone()).await.unwrap();
        d
    });
    futures::future::join_all(puts).await
}

fn pack_files(root: &Path) -> Vec<PathBuf> {
    let mut packs: Vec<PathBuf> = std::fs::read_dir(root.join("packs")).unwrap().flatten().map(|e| e.path()).collect();
    packs.sort();
    packs
}

fn pack_bytes(root: &Path) -> u64 {
    pack_files(root).iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum()
}

fn blob_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("blobs")).unwrap().flatten().map(|d| std::fs::read_dir(d.path()).unwrap().count()).sum()
}

/// Waits (bounded) for the pack writer's housekeeping to reach `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting: {what}");
}

async fn read_all(store: &FilesystemStore, d: DigestInfo, offset: u64) -> Vec<u8> {
    let mut chunks = store.read(d, offset, 0).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = chunks.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

#[tokio::test]
async fn small_blobs_are_packed_served_and_kept_across_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(root.path().into(), 1 << 30, false, SMALL).await.unwrap();
    let small: Vec<Bytes> = (0..300).map(|i| blob("small", i, 4096)).collect();
    let big = blob("big", 0, SMALL as usize + 1);
    let digests = put_all(&store, &small).await;
    let big_d = put_all(&store, std::slice::from_ref(&big)).await[0];
    assert_eq!(store.packed_len(), 300);
    assert_eq!(blob_files(root.path()), 1, "only the big blob has a file");
    assert!(store.file_path(digests[0]).is_none(), "a packed blob has no file to link");
    assert!(store.file_path(big_d).is_some());
    assert_eq!(store.get(digests[7]).await.unwrap().unwrap(), small[7]);
    assert_eq!(read_all(&store, digests[9], 100).await, small[9][100..]);
    // A wrong digest is refused before anything is written.
    let wrong = DigestInfo::of_bytes(b"something else");
    assert!(store.put(DigestInfo::new(wrong.hash, 4096), small[0].clone()).await.is_err());
    // Outputs of actions are packed too.
    let out = root.path().join("out.bin");
    std::fs::write(&out, blob("output", 1, 1000)).unwrap();
    let out_d = store.put_file(&out).await.unwrap();
    assert_eq!(store.packed_len(), 301);
    drop(store);

    let store = FilesystemStore::open(root.path().into(), 1 << 30, false, SMALL).await.unwrap();
    assert_eq!(store.len(), 302);
    assert!(store.find_missing(&digests).await.unwrap().is_empty());
    for (d, b) in digests.iter().zip(&small).step_by(37) {
        assert_eq!(&store.get(*d).await.unwrap().unwrap(), b);
    }
    assert_eq!(store.get(out_d).await.unwrap().unwrap(), blob("output", 1, 1000));
    drop(store);

    // Packing turned off: what was packed is still served.
    let store = FilesystemStore::open(root.path().into(), 1 << 30, false, 0).await.unwrap();
    assert_eq!(store.get(digests[3]).await.unwrap().unwrap(), small[3]);
    let later = put_all(&store, &[blob("later", 0, 4096)]).await[0];
    assert!(store.file_path(later).is_some(), "with packing off a new blob gets a file");
}

#[tokio::test]
async fn evicted_packs_are_deleted_and_sparse_ones_compacted() {
    let root = tempfile::tempdir().unwrap();
    // 512 KiB store: packs are sealed at 64 KiB (16 blobs of 4 KiB).
    let max = 512 << 10;
    let store = FilesystemStore::open(root.path().into(), max, false, SMALL).await.unwrap();
    // Stored one at a time, so each pack holds 16 consecutive blobs.
    let mut old = Vec::new();
    for i in 0..64 {
        old.extend(put_all(&store, &[blob("old", i, 4096)]).await);
    }
    // Every other blob of the first 64 is used: when the next 64 evict the
    // rest, the packs the used ones are in are left half full.
    let kept: Vec<DigestInfo> = old.iter().step_by(2).copied().collect();
    assert!(store.find_missing(&kept).await.unwrap().is_empty());
    for i in 0..96 {
        put_all(&store, &[blob("new", i, 4096)]).await;
        // Keeps the used half the most recent.
        assert!(store.find_missing(&kept).await.unwrap().is_empty());
    }
    assert!(store.size_bytes() <= max);
    // Half-full packs are compacted, empty ones deleted: the packs shrink
    // to about the live bytes (at most 1/0.7 of them, plus the open pack).
    let live = store.size_bytes();
    eventually("packs shrink to the live bytes", || pack_bytes(root.path()) <= live * 10 / 7 + (64 << 10) + 4096).await;
    // What the store reports taking is what its packs take (all its blobs
    // are packed): the live bytes plus the dead ones not reclaimed yet.
    eventually("disk bytes match the packs", || store.disk_bytes() == pack_bytes(root.path())).await;
    assert!(store.disk_bytes() >= store.size_bytes());
    let first_packs: Vec<PathBuf> = pack_files(root.path()).into_iter().take(1).collect();
    assert!(!first_packs.iter().any(|p| p.ends_with("00000001.pack")), "the first pack was compacted away");
    for (i, d) in old.iter().enumerate().step_by(2) {
        assert_eq!(store.get(*d).await.unwrap().unwrap(), blob("old", i, 4096), "blob {i} after compaction");
    }
    drop(store);
    // What compaction moved is found where it went after a restart.
    let store = FilesystemStore::open(root.path().into(), max, false, SMALL).await.unwrap();
    assert!(store.find_missing(&kept).await.unwrap().is_empty());
    assert_eq!(store.get(kept[5]).await.unwrap().unwrap(), blob("old", 10, 4096));
}

#[tokio::test]
async fn a_damaged_pack_is_never_served() {
    let root = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(root.path().into(), 1 << 30, false, SMALL).await.unwrap();
    let blobs: Vec<Bytes> = (0..4).map(|i| blob("damage", i, 4096)).collect();
    let mut digests = Vec::new();
    for b in &blobs {
        digests.extend(put_all(&store, std::slice::from_ref(b)).await);
    }
    drop(store);
    // Flip one byte of the second blob, cut the pack short in the fourth.
    let pack = pack_files(root.path()).into_iter().find(|p| std::fs::metadata(p).unwrap().len() > 0).unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[4096 + 10] ^= 0xff;
    bytes.truncate(3 * 4096 + 100);
    let mode = std::fs::metadata(&pack).unwrap().permissions();
    std::fs::remove_file(&pack).unwrap();
    std::fs::write(&pack, &bytes).unwrap();
    std::fs::set_permissions(&pack, mode).unwrap();

    let store = FilesystemStore::open(root.path().into(), 1 << 30, false, SMALL).await.unwrap();
    // The cut-short blob is dropped at start.
    assert_eq!(store.find_missing(&digests).await.unwrap(), vec![digests[3]]);
    assert_eq!(store.get(digests[0]).await.unwrap().unwrap(), blobs[0]);
    assert!(store.get(digests[1]).await.unwrap().is_none(), "damaged bytes served");
    assert!(store.read(digests[1], 0, 0).await.is_err());
    // Once found damaged it is missing, so a client uploads it again.
    assert_eq!(store.find_missing(&digests[..3]).await.unwrap(), vec![digests[1]]);
    put_all(&store, &blobs[1..2]).await;
    assert_eq!(store.get(digests[1]).await.unwrap().unwrap(), blobs[1]);
}

#[tokio::test]
async fn a_lost_pack_drops_its_blobs_at_start() {
    let root = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(root.path().into(), 1 << 30, false, SMALL).await.unwrap();
    let digests = put_all(&store, &[blob("lost", 0, 4096), blob("lost", 1, 4096)]).await;
    drop(store);
    for p in pack_files(root.path()) {
        std::fs::remove_file(p).unwrap();
    }
    let store = FilesystemStore::open(root.path().into(), 1 << 30, false, SMALL).await.unwrap();
    assert_eq!(store.find_missing(&digests).await.unwrap(), digests);
    assert!(store.is_empty());
}
