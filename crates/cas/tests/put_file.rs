//! `BlobStore::put_file` on both backends: one read of the file gives its
//! digest and a readable blob; storing it again or storing an empty file
//! leaves nothing behind.
use std::sync::Arc;

use re_cas::{BlobStore, FilesystemStore, MemoryStore};
use re_proto::DigestInfo;

async fn check(store: Arc<dyn BlobStore>, scratch: &std::path::Path) {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let path = scratch.join("out.bin");
    std::fs::write(&path, &data).unwrap();
    let d = store.put_file(&path).await.unwrap();
    assert_eq!(d, DigestInfo::of_bytes(&data));
    assert!(store.find_missing(&[d]).await.unwrap().is_empty());
    assert!(store.get(d).await.unwrap().unwrap() == data, "stored bytes differ");
    // Again: same digest, still one copy.
    let before = store.size_bytes();
    assert_eq!(store.put_file(&path).await.unwrap(), d);
    assert_eq!(store.size_bytes(), before);
    // Empty file: the empty digest, nothing stored.
    let empty = scratch.join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(store.put_file(&empty).await.unwrap(), DigestInfo::EMPTY);
    assert_eq!(store.size_bytes(), before);
    // A missing file is an error, not a panic.
    assert!(store.put_file(&scratch.join("nope")).await.is_err());
}

#[tokio::test]
async fn memory_store_put_file() {
    let scratch = tempfile::tempdir().unwrap();
    check(Arc::new(MemoryStore::new(1 << 30)), scratch.path()).await;
}

#[tokio::test]
async fn filesystem_store_put_file_leaves_no_temp_files() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(FilesystemStore::open(root.path().to_path_buf(), 1 << 30, false, 0).await.unwrap());
    check(store, scratch.path()).await;
    let mut temps = Vec::new();
    for dir in std::fs::read_dir(root.path().join("blobs")).unwrap().flatten() {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            if f.file_name().to_string_lossy().starts_with(".tmp-") {
                temps.push(f.path());
            }
        }
    }
    assert!(temps.is_empty(), "temp files left: {temps:?}");
}

#[tokio::test]
async fn filesystem_store_refuses_files_larger_than_the_store() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(root.path().to_path_buf(), 1024, false, 0).await.unwrap();
    let path = scratch.path().join("big");
    std::fs::write(&path, vec![7u8; 4096]).unwrap();
    let err = store.put_file(&path).await.unwrap_err();
    assert!(err.to_string().contains("larger than the whole CAS"), "{err}");
}
