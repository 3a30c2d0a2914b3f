//! The filesystem store's side of its packs: what the pack writer asks of
//! the index ([`PackedIndex`]) and reading a packed blob back.
use re_proto::DigestInfo;

use crate::filesystem_store::{Shared, Stored};
use crate::packs::{Location, PackedIndex};

impl Shared {
    pub(crate) fn forget_packed(&self, digest: DigestInfo, at: Location) {
        if let Some((packs, _)) = &self.packs {
            packs.forget(digest, at);
        }
    }

    /// Reads a packed blob (blocking), following it if compaction moved it
    /// meanwhile; a damaged or lost one is dropped from the index.
    pub(crate) fn read_packed(&self, digest: DigestInfo, mut at: Location) -> std::io::Result<Option<Vec<u8>>> {
        let Some((packs, _)) = &self.packs else { return Ok(None) };
        for _ in 0..3 {
            if let Some(data) = packs.read(digest, at)? {
                return Ok(Some(data));
            }
            match self.index.peek(&digest) {
                Some(Stored::Packed(moved)) if moved != at => at = moved,
                _ => break,
            }
        }
        if self.index.remove_if(&digest, &Stored::Packed(at)) {
            packs.forget(digest, at);
        }
        Ok(None)
    }
}

impl PackedIndex for Shared {
    fn holds(&self, digest: &DigestInfo) -> bool {
        self.index.contains(digest)
    }

    fn location(&self, digest: &DigestInfo) -> Option<Location> {
        match self.index.peek(digest)? {
            Stored::Packed(at) => Some(at),
            Stored::File { .. } => None,
        }
    }

    fn packed(&self, digest: DigestInfo, at: Location) {
        self.index_insert(digest, Stored::Packed(at));
    }

    fn moved(&self, digest: DigestInfo, from: Location, to: Location) -> bool {
        self.index.replace_if(&digest, &Stored::Packed(from), Stored::Packed(to))
    }

    fn packed_in(&self, pack: u32) -> Vec<(DigestInfo, Location)> {
        self.index.collect_where(|d, v| match v {
            Stored::Packed(at) if at.pack == pack => Some((*d, *at)),
            _ => None,
        })
    }
}
