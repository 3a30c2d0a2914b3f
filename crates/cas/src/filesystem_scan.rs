//! Rebuilding the filesystem store's index at start: the blob files of the
//! 256 directories and the packed blobs the packs recovered, inserted
//! oldest first so the LRU order survives a restart.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use re_proto::{DigestInfo, Error, Result};

use crate::filesystem_store::{parse_blob_file_name, stamp, ScanReport, Shared, Stored};
use crate::packs::Recovered;

/// Threads reading the blob directories at start-up.
const SCAN_THREADS: usize = 16;

/// A blob found at start: (mtime, order among equal mtimes, digest, where).
type Found = (SystemTime, u64, DigestInfo, Stored);

impl Shared {
    pub(crate) fn scan(&self, packed: Vec<Recovered>) -> Result<ScanReport> {
        let start = Instant::now();
        std::fs::create_dir_all(&self.blobs_dir)
            .map_err(|e| Error::io(format!("creating {}", self.blobs_dir.display()), e))?;
        // The 256 directories are read by several threads at once: on a cold
        // disk each file's metadata is a read the device can overlap with
        // others (1M blobs: 11 s with one thread, see docs/benchmarks.md).
        let next = AtomicUsize::new(0);
        let scanned: Vec<Result<(Vec<Found>, usize)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..SCAN_THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        let mut found = Vec::new();
                        let mut discarded = 0;
                        loop {
                            let prefix = next.fetch_add(1, Ordering::Relaxed);
                            if prefix > 255 {
                                return Ok((found, discarded));
                            }
                            discarded += self.scan_dir(prefix as u8, &mut found)?;
                        }
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("scan threads do not panic")).collect()
        });
        let mut found: Vec<Found> = Vec::with_capacity(packed.len());
        // Blobs of one pack share its mtime; their offsets keep their order.
        found.extend(
            packed.into_iter().map(|(t, d, at)| (t, (at.pack as u64) << 32 | at.offset as u64, d, Stored::Packed(at))),
        );
        let mut discarded = 0;
        for part in scanned {
            let (f, d) = part?;
            found.extend(f);
            discarded += d;
        }
        found.sort_unstable_by_key(|(t, order, _, _)| (*t, *order));
        let mut bytes = 0;
        let blobs = found.len();
        for (_, _, d, stored) in found {
            bytes += d.size;
            self.index_insert(d, stored);
        }
        Ok(ScanReport { blobs, bytes, discarded, elapsed_ms: start.elapsed().as_millis() })
    }

    /// Indexes one of the 256 directories into `found`; returns how many
    /// files it discarded.
    fn scan_dir(&self, prefix: u8, found: &mut Vec<Found>) -> Result<usize> {
        let dir = self.blobs_dir.join(hex::encode([prefix]));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut discarded = 0;
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let parsed = name.to_str().and_then(parse_blob_file_name);
            let meta = entry.metadata().ok();
            match (parsed, meta) {
                // A file whose length differs from its name was cut short (power
                // loss); a `.tmp-` file is an upload that can never complete.
                (Some(d), Some(m)) if m.len() == d.size => {
                    let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((mtime, 0, d, Stored::File { stamp: stamp(&m) }));
                }
                _ => {
                    discarded += 1;
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(discarded)
    }
}
