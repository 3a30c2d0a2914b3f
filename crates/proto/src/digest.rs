//! SHA-256 digests as a compact, hashable value type.
use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::error::Error;
use crate::reapi::Digest;

/// A validated SHA-256 digest: 32 raw bytes plus the blob size.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DigestInfo {
    pub hash: [u8; 32],
    pub size: u64,
}

impl DigestInfo {
    /// The digest of the empty blob, which every CAS must treat as present.
    pub const EMPTY: DigestInfo = DigestInfo {
        hash: [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae,
            0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
        ],
        size: 0,
    };

    pub fn new(hash: [u8; 32], size: u64) -> Self {
        Self { hash, size }
    }

    /// Hashes `data` in one go.
    pub fn of_bytes(data: &[u8]) -> Self {
        Self { hash: Sha256::digest(data).into(), size: data.len() as u64 }
    }

    /// Parses a 64-character lower-case hex hash and a size. Upper case is
    /// refused: the same blob must have one name, or a client could hold two
    /// names for it and the server fold them silently.
    pub fn from_hex(hash: &str, size: i64) -> Result<Self, Error> {
        if size < 0 {
            return Err(Error::InvalidArgument(format!("digest {hash}/{size}: size must not be negative")));
        }
        match decode_hash(hash.as_bytes()) {
            Some(out) => Ok(Self { hash: out, size: size as u64 }),
            None => Err(Error::InvalidArgument(format!(
                "digest {hash}/{size}: hash must be 64 lower-case hex characters (SHA-256 is the only digest function served)"
            ))),
        }
    }

    /// Like [`DigestInfo::from_hex`], from the hash's raw bytes (as they sit
    /// in a protobuf message), without making a `String` of them first.
    pub fn from_hex_bytes(hash: &[u8], size: i64) -> Result<Self, Error> {
        match (decode_hash(hash), size >= 0) {
            (Some(out), true) => Ok(Self { hash: out, size: size as u64 }),
            _ => Self::from_hex(&String::from_utf8_lossy(hash), size),
        }
    }

    pub fn hash_hex(&self) -> String {
        let mut out = [0u8; 64];
        for (pair, b) in out.chunks_exact_mut(2).zip(self.hash) {
            pair[0] = HEX_DIGITS[(b >> 4) as usize];
            pair[1] = HEX_DIGITS[(b & 0xf) as usize];
        }
        std::str::from_utf8(&out).expect("hex digits are ASCII").to_owned()
    }

    pub fn is_empty_blob(&self) -> bool {
        self.size == 0
    }

    pub fn to_proto(&self) -> Digest {
        Digest { hash: self.hash_hex(), size_bytes: self.size as i64 }
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

fn decode_hash(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    // SIMD where the CPU has it: FindMissingBlobs decodes thousands per call.
    let mut out = [0u8; 32];
    // Valid hex first (SIMD), then no upper-case letter (vectorised scan).
    let decoded = faster_hex::hex_decode(hex, &mut out).is_ok();
    (decoded && !hex.iter().any(|b| (b'A'..=b'F').contains(b))).then_some(out)
}

impl TryFrom<&Digest> for DigestInfo {
    type Error = Error;
    fn try_from(d: &Digest) -> Result<Self, Error> {
        DigestInfo::from_hex(&d.hash, d.size_bytes)
    }
}

impl TryFrom<Option<&Digest>> for DigestInfo {
    type Error = Error;
    fn try_from(d: Option<&Digest>) -> Result<Self, Error> {
        match d {
            Some(d) => DigestInfo::try_from(d),
            None => Err(Error::InvalidArgument("a required digest is missing".into())),
        }
    }
}

impl From<DigestInfo> for Digest {
    fn from(d: DigestInfo) -> Digest {
        d.to_proto()
    }
}

impl fmt::Display for DigestInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash_hex(), self.size)
    }
}

impl fmt::Debug for DigestInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental SHA-256 that tracks the byte count, for streamed uploads.
#[derive(Clone, Default)]
pub struct DigestHasher {
    inner: Sha256,
    len: u64,
}

impl DigestHasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn finish(self) -> DigestInfo {
        DigestInfo { hash: self.inner.finalize().into(), size: self.len }
    }
}

/// The digest a `blobs/HASH/SIZE` subject (a MISSING violation) names.
pub fn parse_blob_subject(subject: &str) -> Option<DigestInfo> {
    let mut parts = subject.strip_prefix("blobs/")?.split('/');
    let (hash, size) = (parts.next()?, parts.next()?.parse::<i64>().ok()?);
    if parts.next().is_some() {
        return None;
    }
    DigestInfo::from_hex(hash, size).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_constant_matches_sha256_of_nothing() {
        assert_eq!(DigestInfo::of_bytes(b""), DigestInfo::EMPTY);
    }

    #[test]
    fn hex_round_trip_and_validation() {
        let d = DigestInfo::of_bytes(b"hello");
        let back = DigestInfo::from_hex(&d.hash_hex(), 5).unwrap();
        assert_eq!(d, back);
        assert!(DigestInfo::from_hex("abc", 1).is_err());
        assert!(DigestInfo::from_hex(&d.hash_hex(), -1).is_err());
        assert!(DigestInfo::from_hex(&"zz".repeat(32), 1).is_err());
        assert!(DigestInfo::from_hex(&format!("{}g", &d.hash_hex()[..63]), 5).is_err());
        // A bad character anywhere is caught (the SIMD path checks 16 at a time).
        for pos in 0..64 {
            for bad in [b'g', b'G', b'/', b':', b'@', b'`', b' ', 0xff, 0] {
                let mut h = d.hash_hex().into_bytes();
                h[pos] = bad;
                assert!(DigestInfo::from_hex_bytes(&h, 5).is_err(), "byte {bad} at {pos}");
            }
        }
        assert_eq!(DigestInfo::from_hex_bytes(d.hash_hex().as_bytes(), 5).unwrap(), d);
        let upper = d.hash_hex().to_uppercase();
        assert!(DigestInfo::from_hex(&upper, 5).is_err(), "upper case is another name for the same blob");
        assert_eq!(d.hash_hex(), hex::encode(Sha256::digest(b"hello")));
        // Every byte value round-trips.
        for k in 0..8 {
            let all = DigestInfo::new(std::array::from_fn(|i| (k * 32 + i) as u8), 1);
            assert_eq!(DigestInfo::from_hex(&all.hash_hex(), 1).unwrap(), all);
            assert_eq!(all.hash_hex(), hex::encode(all.hash));
        }
    }

    #[test]
    fn incremental_hasher_equals_one_shot() {
        let mut h = DigestHasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), DigestInfo::of_bytes(b"hello"));
    }
}
