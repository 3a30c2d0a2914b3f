//! Size-bounded LRU index shared by the memory and filesystem stores.
use lru::LruCache;
use parking_lot::Mutex;
use re_proto::DigestInfo;

use crate::pins::PinSet;

pub struct LruIndex<V> {
    inner: Mutex<Inner<V>>,
    max_bytes: u64,
}

struct Inner<V> {
    entries: LruCache<DigestInfo, V>,
    total_bytes: u64,
    /// Entries evicted since the index was made.
    evicted: u64,
}

impl<V: Clone> LruIndex<V> {
    pub fn new(max_bytes: u64) -> Self {
        Self { inner: Mutex::new(Inner { entries: LruCache::unbounded(), total_bytes: 0, evicted: 0 }), max_bytes }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Digests not in the index; present ones become most recently used.
    pub fn missing(&self, digests: &[DigestInfo]) -> Vec<DigestInfo> {
        let mut inner = self.inner.lock();
        digests.iter().filter(|d| !d.is_empty_blob() && inner.entries.get(d).is_none()).copied().collect()
    }

    /// The value, leaving its LRU position alone.
    pub fn peek(&self, digest: &DigestInfo) -> Option<V> {
        self.inner.lock().entries.peek(digest).cloned()
    }

    /// The value, refreshing its LRU position.
    pub fn get(&self, digest: &DigestInfo) -> Option<V> {
        self.inner.lock().entries.get(digest).cloned()
    }

    /// Adds an entry and returns what had to be evicted to stay under the limit.
    /// Pinned entries are never evicted, even if that leaves the index over.
    pub fn insert(&self, digest: DigestInfo, value: V, pins: &PinSet) -> Vec<(DigestInfo, V)> {
        self.insert_replacing(digest, value, pins).1
    }

    /// As [`insert`](Self::insert), also returning the value `digest` had.
    pub fn insert_replacing(&self, digest: DigestInfo, value: V, pins: &PinSet) -> (Option<V>, Vec<(DigestInfo, V)>) {
        let mut inner = self.inner.lock();
        let replaced = inner.entries.put(digest, value);
        if replaced.is_none() {
            inner.total_bytes += digest.size;
        }
        let mut evicted = Vec::new();
        let mut kept_pinned = Vec::new();
        while inner.total_bytes > self.max_bytes {
            let Some((d, v)) = inner.entries.pop_lru() else { break };
            if d == digest || pins.is_pinned(&d) {
                kept_pinned.push((d, v));
                continue;
            }
            inner.total_bytes -= d.size;
            evicted.push((d, v));
        }
        for (d, v) in kept_pinned.into_iter().rev() {
            inner.entries.put(d, v);
        }
        inner.evicted += evicted.len() as u64;
        // The new entry stays the most recently used.
        inner.entries.promote(&digest);
        (replaced, evicted)
    }

    /// Swaps `digest`'s value for `new` if it is still `expected`, leaving
    /// its LRU position alone (the blob moved, nobody used it).
    pub fn replace_if(&self, digest: &DigestInfo, expected: &V, new: V) -> bool
    where
        V: PartialEq,
    {
        match self.inner.lock().entries.peek_mut(digest) {
            Some(v) if v == expected => {
                *v = new;
                true
            }
            _ => false,
        }
    }

    /// Removes `digest` if its value is still `expected`.
    pub fn remove_if(&self, digest: &DigestInfo, expected: &V) -> bool
    where
        V: PartialEq,
    {
        let mut inner = self.inner.lock();
        if inner.entries.peek(digest) != Some(expected) {
            return false;
        }
        inner.entries.pop(digest);
        inner.total_bytes -= digest.size;
        true
    }

    /// Every entry whose value `keep` selects (one pass under the lock).
    pub fn collect_where<T>(&self, mut keep: impl FnMut(&DigestInfo, &V) -> Option<T>) -> Vec<T> {
        self.inner.lock().entries.iter().filter_map(|(d, v)| keep(d, v)).collect()
    }

    /// Entries evicted since the index was made.
    pub fn evicted(&self) -> u64 {
        self.inner.lock().evicted
    }

    /// Presence without touching the LRU order.
    pub fn contains(&self, digest: &DigestInfo) -> bool {
        self.inner.lock().entries.contains(digest)
    }

    pub fn remove(&self, digest: &DigestInfo) -> Option<V> {
        let mut inner = self.inner.lock();
        let removed = inner.entries.pop(digest);
        if removed.is_some() {
            inner.total_bytes -= digest.size;
        }
        removed
    }

    pub fn total_bytes(&self) -> u64 {
        self.inner.lock().total_bytes
    }

    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8, size: u64) -> DigestInfo {
        DigestInfo::new([n; 32], size)
    }

    #[test]
    fn evicts_least_recently_used_first_and_touch_refreshes() {
        let idx = LruIndex::new(30);
        let pins = PinSet::default();
        assert!(idx.insert(d(1, 10), (), &pins).is_empty());
        assert!(idx.insert(d(2, 10), (), &pins).is_empty());
        assert!(idx.insert(d(3, 10), (), &pins).is_empty());
        // Touch 1 through a find-missing: 2 is now the oldest.
        assert!(idx.missing(&[d(1, 10)]).is_empty());
        let evicted: Vec<_> = idx.insert(d(4, 10), (), &pins).into_iter().map(|e| e.0).collect();
        assert_eq!(evicted, vec![d(2, 10)]);
        assert_eq!(idx.total_bytes(), 30);
    }

    #[test]
    fn pinned_entries_survive_eviction() {
        let idx = LruIndex::new(20);
        let pins = PinSet::default();
        idx.insert(d(1, 10), (), &pins);
        idx.insert(d(2, 10), (), &pins);
        pins.pin(&[d(1, 10)]);
        let evicted: Vec<_> = idx.insert(d(3, 10), (), &pins).into_iter().map(|e| e.0).collect();
        assert_eq!(evicted, vec![d(2, 10)]);
        assert!(idx.contains(&d(1, 10)));
        pins.unpin(&[d(1, 10)]);
        let evicted: Vec<_> = idx.insert(d(4, 10), (), &pins).into_iter().map(|e| e.0).collect();
        assert_eq!(evicted, vec![d(1, 10)]);
    }

    #[test]
    fn empty_blob_is_never_missing() {
        let idx: LruIndex<()> = LruIndex::new(10);
        assert!(idx.missing(&[DigestInfo::EMPTY]).is_empty());
    }
}
