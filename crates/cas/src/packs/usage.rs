//! How many bytes each pack holds and how many of them are still indexed:
//! what decides that a pack is deleted or compacted. Owned by the writer
//! thread, the only one that changes packs.
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Bytes appended (the file's length).
    pub total: u64,
    /// Bytes of blobs still indexed.
    pub live: u64,
}

#[derive(Debug, Default)]
pub(crate) struct PackUsage {
    packs: HashMap<u32, Usage>,
    /// Packs compaction could not empty (their entries changed under it);
    /// not tried again until the next start.
    given_up: HashSet<u32>,
}

impl PackUsage {
    pub fn set(&mut self, pack: u32, usage: Usage) {
        self.packs.insert(pack, usage);
    }

    pub fn appended(&mut self, pack: u32, bytes: u64) {
        self.packs.entry(pack).or_default().total += bytes;
    }

    pub fn live_added(&mut self, pack: u32, bytes: u64) {
        self.packs.entry(pack).or_default().live += bytes;
    }

    pub fn live_removed(&mut self, pack: u32, bytes: u64) {
        if let Some(u) = self.packs.get_mut(&pack) {
            u.live = u.live.saturating_sub(bytes);
        }
    }

    pub fn get(&self, pack: u32) -> Usage {
        self.packs.get(&pack).copied().unwrap_or_default()
    }

    pub fn remove(&mut self, pack: u32) {
        self.packs.remove(&pack);
        self.given_up.remove(&pack);
    }

    /// Bytes in packs not indexed any more.
    pub fn dead_bytes(&self) -> u64 {
        self.packs.values().map(|u| u.total.saturating_sub(u.live)).sum()
    }

    pub fn give_up(&mut self, pack: u32) {
        self.given_up.insert(pack);
    }

    /// Packs other than `active` that hold nothing live.
    pub fn empty(&self, active: u32) -> Vec<u32> {
        self.packs.iter().filter(|(p, u)| **p != active && u.live == 0).map(|(p, _)| *p).collect()
    }

    /// The sealed pack with the smallest live share, if one is below
    /// `below` (a fraction).
    pub fn sparsest(&self, active: u32, below: f64) -> Option<u32> {
        self.packs
            .iter()
            .filter(|(p, u)| **p != active && !self.given_up.contains(p) && u.total > 0)
            .map(|(p, u)| (*p, u.live as f64 / u.total as f64))
            .filter(|(_, share)| *share < below)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(p, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_sparsest_sealed_pack_below_the_share() {
        let mut u = PackUsage::default();
        u.set(1, Usage { total: 100, live: 60 });
        u.set(2, Usage { total: 100, live: 20 });
        u.set(3, Usage { total: 100, live: 0 });
        u.set(4, Usage { total: 100, live: 10 });
        // 4 is the active pack: never compacted, never deleted.
        assert_eq!(u.sparsest(4, 0.7), Some(3));
        assert_eq!(u.empty(4), vec![3]);
        u.remove(3);
        assert_eq!(u.sparsest(4, 0.7), Some(2));
        u.give_up(2);
        assert_eq!(u.sparsest(4, 0.7), Some(1));
        assert_eq!(u.sparsest(4, 0.5), None);
        // Packs 1, 2 and 4 are left: 40 + 80 + 90 bytes not indexed.
        assert_eq!(u.dead_bytes(), 210);
        u.live_removed(1, 1000);
        assert_eq!(u.get(1).live, 0);
    }
}
