//! Deterministic pseudo-random content and the REAPI messages built from it.
use bytes::Bytes;
use prost::Message;
use re_proto::reapi::{command, platform, Action, Command, Platform};
use re_proto::DigestInfo;

/// SplitMix64: tiny, fast, good enough that blobs do not compress.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Log-uniform in `[lo, hi]`: many small values, a few large ones, like
    /// the file sizes of a source tree.
    pub fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = ((lo.max(1) as f64).ln(), (hi as f64).ln());
        ((l + (h - l) * self.next_f64()).exp() as u64).clamp(lo, hi)
    }
}

/// Fills `buf` with the stream of `seed`.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut rng = Rng::new(seed);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let last = rng.next_u64().to_le_bytes();
    let n = rest.len();
    rest.copy_from_slice(&last[..n]);
}

/// A blob of `size` pseudo-random bytes, unique per `(seed, id)`: the first
/// 16 bytes carry both so two ids never collide even for tiny sizes.
pub fn blob(seed: u64, id: u64, size: usize) -> Bytes {
    let mut v = vec![0u8; size];
    fill(&mut v, seed ^ id.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let tag = [id.to_le_bytes(), seed.to_le_bytes()].concat();
    let n = tag.len().min(size);
    v[..n].copy_from_slice(&tag[..n]);
    Bytes::from(v)
}

/// A blob together with its digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: DigestInfo,
    pub data: Bytes,
}

impl Blob {
    pub fn new(data: Bytes) -> Self {
        Self { digest: DigestInfo::of_bytes(&data), data }
    }

    pub fn of_message<M: Message>(m: &M) -> Self {
        Self::new(Bytes::from(m.encode_to_vec()))
    }
}

/// A random 64-bit value (from a v4 UUID), so every run differs from the last.
pub fn run_nonce() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// Parses `KEY=VALUE` platform properties into a sorted Platform (None if empty).
pub fn platform(props: &[String]) -> anyhow::Result<Option<Platform>> {
    if props.is_empty() {
        return Ok(None);
    }
    let mut properties = Vec::new();
    for p in props {
        let (name, value) =
            p.split_once('=').ok_or_else(|| anyhow::anyhow!("--platform expects KEY=VALUE, got '{p}'"))?;
        properties.push(platform::Property { name: name.into(), value: value.into() });
    }
    // The spec asks for properties sorted by name, then value.
    properties.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    Ok(Some(Platform { properties }))
}

/// A Command and the Action running it over `input_root`; `salt` goes into an
/// environment variable so every distinct salt is a distinct action.
pub struct ActionBlobs {
    pub command: Blob,
    pub action: Blob,
}

impl ActionBlobs {
    #[allow(deprecated)] // Command.platform: still read by servers before REAPI 2.2.
    pub fn new(args: &[String], salt: &str, platform: Option<&Platform>, input_root: DigestInfo) -> Self {
        let command = Command {
            arguments: args.to_vec(),
            environment_variables: vec![command::EnvironmentVariable {
                name: "RE_BENCH_SALT".into(),
                value: salt.into(),
            }],
            // Servers older than REAPI 2.2 read the platform from the Command.
            platform: platform.cloned(),
            ..Default::default()
        };
        let command = Blob::of_message(&command);
        let action = Action {
            command_digest: Some(command.digest.into()),
            input_root_digest: Some(input_root.into()),
            platform: platform.cloned(),
            ..Default::default()
        };
        let action = Blob::of_message(&action);
        Self { command, action }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_deterministic_and_distinct() {
        assert_eq!(blob(1, 2, 100), blob(1, 2, 100));
        assert_ne!(blob(1, 2, 100), blob(1, 3, 100));
        assert_ne!(blob(1, 2, 4), blob(1, 3, 4));
        assert_eq!(blob(1, 2, 3).len(), 3);
    }

    #[test]
    fn log_range_stays_in_bounds() {
        let mut r = Rng::new(7);
        for _ in 0..1000 {
            let v = r.log_range(100, 65536);
            assert!((100..=65536).contains(&v));
        }
    }

    #[test]
    fn platform_is_sorted() {
        let p = platform(&["b=1".into(), "a=2".into()]).unwrap().unwrap();
        assert_eq!(p.properties[0].name, "a");
        assert!(platform(&["bad".into()]).is_err());
    }
}
