//! Opening the packs at start: every index entry whose pack still holds its
//! bytes is kept; entries of missing or cut-short packs are dropped, packs
//! nothing points into are deleted, and a new pack is begun (a crash may
//! have left unindexed bytes at the end of the last one).
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use fjall::{Config, PartitionCreateOptions};
use re_proto::{DigestInfo, Error, Result};

use super::usage::{PackUsage, Usage};
use super::writer::Writer;
use super::{modified, parse_entry, parse_pack_name, store_error, Job, Location, PackFiles};

/// A packed blob found at start, with its pack's modification time (the
/// last time anything was appended to it: its blobs are at most that old).
pub(crate) type Recovered = (SystemTime, DigestInfo, Location);

pub(super) fn recover(
    root: &Path,
    pack_max: u64,
    fsync: bool,
    files: Arc<PackFiles>,
    jobs: mpsc::Receiver<Job>,
) -> Result<(Writer, Vec<Recovered>)> {
    let dir = root.join("packs");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut packs: HashMap<u32, (u64, SystemTime)> = HashMap::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))? {
        let Ok(entry) = entry else { continue };
        let Some(pack) = entry.file_name().to_str().and_then(parse_pack_name) else { continue };
        let file = File::open(entry.path()).map_err(|e| Error::io(format!("opening {}", entry.path().display()), e))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        packs.insert(pack, (len, modified(&file)));
        files.insert(pack, Arc::new(file));
    }

    // The index is read only here, once, in key order: a small block cache
    // does; small write buffers keep its memory fixed and small too.
    let keyspace = Config::new(root.join("pack-index"))
        .cache_size(1 << 20)
        .max_write_buffer_size(16 << 20)
        .open()
        .map_err(|e| store_error("opening", e))?;
    let index =
        keyspace.open_partition("blobs", PartitionCreateOptions::default()).map_err(|e| store_error("opening", e))?;

    let mut usage = PackUsage::default();
    for (pack, (len, _)) in &packs {
        usage.set(*pack, Usage { total: *len, live: 0 });
    }
    let mut recovered = Vec::new();
    let mut stale = Vec::new();
    for kv in index.iter() {
        let (k, v) = kv.map_err(|e| store_error("reading", e))?;
        let entry = parse_entry(&k, &v);
        let held = entry.and_then(|(d, at)| {
            let (len, mtime) = packs.get(&at.pack)?;
            (at.offset as u64 + d.size <= *len).then_some((*mtime, d, at))
        });
        match held {
            Some(found) => {
                usage.live_added(found.2.pack, found.1.size);
                recovered.push(found);
            }
            None => stale.push(k),
        }
    }
    if !stale.is_empty() {
        tracing::warn!(entries = stale.len(), "pack index entries point past their packs; dropping them");
        let mut batch = keyspace.batch();
        for k in stale {
            batch.remove(&index, k);
        }
        batch.commit().map_err(|e| store_error("dropping stale entries", e))?;
    }

    let active = packs.keys().max().map_or(1, |p| p + 1);
    let writer = Writer::new(dir, keyspace, index, files, usage, active, pack_max, fsync, jobs)?;
    Ok((writer, recovered))
}
