//! zstd / deflate for `compressed-blobs` resource names and batch requests.
//! Decoders stop at the size the digest declares, so a small upload cannot
//! expand into an unbounded amount of memory.
use std::io::Write;

use bytes::Bytes;
use re_proto::reapi::compressor::Value as CompressorValue;
use re_proto::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    Identity,
    Zstd,
    Deflate,
}

/// Decoder input is fed in slices this big so expansion is checked often.
const FEED: usize = 16 * 1024;
const ZSTD_LEVEL: i32 = 1;

impl Compressor {
    /// The lower-case name used in `compressed-blobs/{name}/...`.
    pub fn from_resource_segment(s: &str) -> Option<Self> {
        match s {
            "identity" => Some(Self::Identity),
            "zstd" => Some(Self::Zstd),
            "deflate" => Some(Self::Deflate),
            _ => None,
        }
    }

    pub fn from_proto(v: i32) -> Option<Self> {
        match CompressorValue::try_from(v).ok()? {
            CompressorValue::Identity => Some(Self::Identity),
            CompressorValue::Zstd => Some(Self::Zstd),
            CompressorValue::Deflate => Some(Self::Deflate),
            _ => None,
        }
    }

    pub fn to_proto(self) -> CompressorValue {
        match self {
            Self::Identity => CompressorValue::Identity,
            Self::Zstd => CompressorValue::Zstd,
            Self::Deflate => CompressorValue::Deflate,
        }
    }

    /// Parses a `[capabilities] supported_compressors` entry.
    pub fn from_config_name(s: &str) -> Option<Self> {
        Self::from_resource_segment(&s.to_ascii_lowercase())
    }
}

enum DecoderInner {
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
    Deflate(flate2::write::DeflateDecoder<Vec<u8>>),
}

/// Incremental decoder: feed compressed chunks, get uncompressed bytes.
pub struct StreamDecoder {
    inner: DecoderInner,
    produced: u64,
    limit: u64,
}

fn corrupt(e: std::io::Error) -> Error {
    Error::InvalidArgument(format!("compressed data is corrupt: {e}"))
}

impl StreamDecoder {
    /// `limit` is the uncompressed size the digest declares.
    pub fn new(kind: Compressor, limit: u64) -> Result<Self> {
        let inner = match kind {
            Compressor::Zstd => DecoderInner::Zstd(
                zstd::stream::write::Decoder::new(Vec::new()).map_err(|e| Error::Internal(format!("zstd: {e}")))?,
            ),
            Compressor::Deflate => DecoderInner::Deflate(flate2::write::DeflateDecoder::new(Vec::new())),
            Compressor::Identity => return Err(Error::Internal("identity needs no decoder".into())),
        };
        Ok(Self { inner, produced: 0, limit })
    }

    pub fn decode(&mut self, input: &[u8]) -> Result<Bytes> {
        let mut out = Vec::new();
        for piece in input.chunks(FEED) {
            match &mut self.inner {
                DecoderInner::Zstd(d) => {
                    d.write_all(piece).map_err(corrupt)?;
                    d.flush().map_err(corrupt)?;
                    out.append(d.get_mut());
                }
                DecoderInner::Deflate(d) => {
                    d.write_all(piece).map_err(corrupt)?;
                    out.append(d.get_mut());
                }
            }
            if self.produced + out.len() as u64 > self.limit {
                return Err(Error::InvalidArgument(format!(
                    "compressed data expands beyond the {} bytes its digest declares",
                    self.limit
                )));
            }
        }
        self.produced += out.len() as u64;
        Ok(out.into())
    }

    /// Flushes what the decoder still holds.
    pub fn finish(&mut self) -> Result<Bytes> {
        let out = match &mut self.inner {
            DecoderInner::Zstd(d) => {
                d.flush().map_err(corrupt)?;
                std::mem::take(d.get_mut())
            }
            DecoderInner::Deflate(d) => {
                d.try_finish().map_err(corrupt)?;
                std::mem::take(d.get_mut())
            }
        };
        self.produced += out.len() as u64;
        if self.produced > self.limit {
            return Err(Error::InvalidArgument("compressed data expands beyond its digest's size".into()));
        }
        Ok(out.into())
    }
}

enum EncoderInner {
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Deflate(flate2::write::DeflateEncoder<Vec<u8>>),
}

/// Incremental encoder for compressed reads.
pub struct StreamEncoder {
    inner: EncoderInner,
}

impl StreamEncoder {
    pub fn new(kind: Compressor) -> Result<Self> {
        let inner = match kind {
            Compressor::Zstd => EncoderInner::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
                    .map_err(|e| Error::Internal(format!("zstd: {e}")))?,
            ),
            Compressor::Deflate => {
                EncoderInner::Deflate(flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast()))
            }
            Compressor::Identity => return Err(Error::Internal("identity needs no encoder".into())),
        };
        Ok(Self { inner })
    }

    pub fn encode(&mut self, input: &[u8]) -> Result<Bytes> {
        let io = |e: std::io::Error| Error::Internal(format!("compressing: {e}"));
        Ok(match &mut self.inner {
            EncoderInner::Zstd(e) => {
                e.write_all(input).map_err(io)?;
                std::mem::take(e.get_mut()).into()
            }
            EncoderInner::Deflate(e) => {
                e.write_all(input).map_err(io)?;
                std::mem::take(e.get_mut()).into()
            }
        })
    }

    pub fn finish(self) -> Result<Bytes> {
        let io = |e: std::io::Error| Error::Internal(format!("compressing: {e}"));
        Ok(match self.inner {
            EncoderInner::Zstd(e) => e.finish().map_err(io)?.into(),
            EncoderInner::Deflate(e) => e.finish().map_err(io)?.into(),
        })
    }
}

/// Decompresses a whole (small) buffer, checking it against `limit`.
pub fn decompress_all(kind: Compressor, data: &[u8], limit: u64) -> Result<Bytes> {
    if kind == Compressor::Identity {
        return Ok(Bytes::copy_from_slice(data));
    }
    let mut d = StreamDecoder::new(kind, limit)?;
    let mut out = d.decode(data)?.to_vec();
    out.extend_from_slice(&d.finish()?);
    Ok(out.into())
}

/// Compresses a whole (small) buffer.
pub fn compress_all(kind: Compressor, data: &[u8]) -> Result<Bytes> {
    if kind == Compressor::Identity {
        return Ok(Bytes::copy_from_slice(data));
    }
    let mut e = StreamEncoder::new(kind)?;
    let mut out = e.encode(data)?.to_vec();
    out.extend_from_slice(&e.finish()?);
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_pieces() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for kind in [Compressor::Zstd, Compressor::Deflate] {
            let mut enc = StreamEncoder::new(kind).unwrap();
            let mut compressed = Vec::new();
            for piece in data.chunks(70_000) {
                compressed.extend_from_slice(&enc.encode(piece).unwrap());
            }
            compressed.extend_from_slice(&enc.finish().unwrap());
            let mut dec = StreamDecoder::new(kind, data.len() as u64).unwrap();
            let mut back = Vec::new();
            for piece in compressed.chunks(1000) {
                back.extend_from_slice(&dec.decode(piece).unwrap());
            }
            back.extend_from_slice(&dec.finish().unwrap());
            assert_eq!(back, data, "{kind:?}");
        }
    }

    #[test]
    fn expansion_past_the_declared_size_is_refused() {
        let compressed = compress_all(Compressor::Zstd, &vec![0u8; 1 << 20]).unwrap();
        let err = decompress_all(Compressor::Zstd, &compressed, 1000).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
    }

    #[test]
    fn garbage_is_invalid_argument() {
        let err = decompress_all(Compressor::Zstd, b"definitely not zstd", 100).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
}
