//! Reference-counted set of blobs that eviction must skip (inputs of queued
//! or running actions).
use dashmap::DashMap;
use re_proto::DigestInfo;

#[derive(Default)]
pub struct PinSet {
    counts: DashMap<DigestInfo, u32>,
}

impl PinSet {
    pub fn pin(&self, digests: &[DigestInfo]) {
        for d in digests {
            *self.counts.entry(*d).or_insert(0) += 1;
        }
    }

    pub fn unpin(&self, digests: &[DigestInfo]) {
        for d in digests {
            if let dashmap::Entry::Occupied(mut e) = self.counts.entry(*d) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }

    pub fn is_pinned(&self, digest: &DigestInfo) -> bool {
        self.counts.contains_key(digest)
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}
