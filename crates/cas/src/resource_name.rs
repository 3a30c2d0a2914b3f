//! ByteStream resource names:
//! `{instance}/blobs/{hash}/{size}`, `{instance}/compressed-blobs/{compressor}/{hash}/{size}`,
//! and for writes the same after `{instance}/uploads/{uuid}/`. An optional
//! digest-function segment (`sha256/`) may precede the hash; trailing segments are ignored.
use re_proto::{DigestInfo, Error, Result};

use crate::compression::Compressor;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceName {
    pub instance: String,
    pub upload_id: Option<String>,
    pub compressor: Compressor,
    pub digest: DigestInfo,
}

fn bad(name: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("bad resource name '{name}': {why}"))
}

impl ResourceName {
    pub fn parse_read(name: &str) -> Result<Self> {
        let r = Self::parse(name)?;
        if r.upload_id.is_some() {
            return Err(bad(name, "reads take {instance}/blobs/{hash}/{size}, not an uploads/ name"));
        }
        Ok(r)
    }

    pub fn parse_write(name: &str) -> Result<Self> {
        let r = Self::parse(name)?;
        if r.upload_id.is_none() {
            return Err(bad(name, "writes take {instance}/uploads/{uuid}/blobs/{hash}/{size}"));
        }
        Ok(r)
    }

    fn parse(name: &str) -> Result<Self> {
        let parts: Vec<&str> = name.split('/').collect();
        let kind_at = parts
            .iter()
            .position(|p| matches!(*p, "uploads" | "blobs" | "compressed-blobs"))
            .ok_or_else(|| bad(name, "expected a 'blobs', 'compressed-blobs' or 'uploads' segment"))?;
        let instance = parts[..kind_at].join("/");
        let mut rest = &parts[kind_at..];
        let mut upload_id = None;
        if rest[0] == "uploads" {
            let id = rest.get(1).filter(|s| !s.is_empty()).ok_or_else(|| bad(name, "missing upload id"))?;
            upload_id = Some(id.to_string());
            rest = &rest[2..];
        }
        let compressor = match rest.first() {
            Some(&"blobs") => {
                rest = &rest[1..];
                Compressor::Identity
            }
            Some(&"compressed-blobs") => {
                let c = rest.get(1).ok_or_else(|| bad(name, "missing compressor"))?;
                let c = Compressor::from_resource_segment(c)
                    .ok_or_else(|| bad(name, &format!("unsupported compressor '{c}'")))?;
                rest = &rest[2..];
                c
            }
            _ => return Err(bad(name, "expected 'blobs' or 'compressed-blobs'")),
        };
        if rest.first().is_some_and(|s| s.eq_ignore_ascii_case("sha256")) {
            rest = &rest[1..];
        } else if rest.first().is_some_and(|s| s.len() != 64) {
            return Err(bad(name, &format!("unsupported digest function '{}'; only SHA-256 is served", rest[0])));
        }
        let (hash, size) = match rest {
            [hash, size, ..] => (*hash, *size),
            _ => return Err(bad(name, "missing hash or size")),
        };
        // Digits only: `+33` or ` 33` would be another name for the same blob.
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(name, "size is not a decimal number"));
        }
        let size: i64 = size.parse().map_err(|_| bad(name, "size is out of range"))?;
        let digest = DigestInfo::from_hex(hash, size).map_err(|e| bad(name, &e.to_string()))?;
        Ok(Self { instance, upload_id, compressor, digest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_all_forms() {
        let r = ResourceName::parse_read(&format!("blobs/{H}/0")).unwrap();
        assert_eq!(r.instance, "");
        assert_eq!(r.compressor, Compressor::Identity);
        let r = ResourceName::parse_read(&format!("a/b/compressed-blobs/zstd/{H}/0")).unwrap();
        assert_eq!(r.instance, "a/b");
        assert_eq!(r.compressor, Compressor::Zstd);
        let r = ResourceName::parse_write(&format!("main/uploads/u-1/blobs/sha256/{H}/0/extra")).unwrap();
        assert_eq!(r.instance, "main");
        assert_eq!(r.upload_id.as_deref(), Some("u-1"));
    }

    #[test]
    fn rejects_malformed_names() {
        for name in [
            "nothing".to_string(),
            format!("blobs/{H}"),
            format!("blobs/{H}/x"),
            format!("blobs/{H}/+0"),
            format!("blobs/{}/0", H.to_uppercase()),
            format!("compressed-blobs/lz4/{H}/0"),
            format!("blobs/blake3/{H}/0"),
            "blobs/abc/1".to_string(),
        ] {
            assert!(ResourceName::parse_read(&name).is_err(), "{name}");
        }
        assert!(ResourceName::parse_write(&format!("blobs/{H}/0")).is_err());
        assert!(ResourceName::parse_read(&format!("uploads/x/blobs/{H}/0")).is_err());
    }
}
