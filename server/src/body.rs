//! Request bodies: read up to the body limit, and decompressed as their `Content-Encoding`
//! says (gzip, deflate, zstd, lz4 as ClickHouse sends them), with the decompressed size held
//! to the same limit, so a decompression bomb answers 413 after reading at most the limit.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::Read;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::error::NodeError;

/// A `Content-Encoding` tandem decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Zstd,
    Lz4,
}

impl Encoding {
    /// The encoding of a request from its headers; an unknown one is a 415-like 400 that names
    /// what is supported.
    pub fn of(headers: &HeaderMap) -> Result<Encoding, NodeError> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else { return Ok(Encoding::Identity) };
        let text = value
            .to_str()
            .map_err(|_| NodeError::bad_request("the Content-Encoding header is not ASCII"))?
            .trim()
            .to_ascii_lowercase();
        Ok(match text.as_str() {
            "" | "identity" => Encoding::Identity,
            "gzip" | "x-gzip" => Encoding::Gzip,
            "deflate" => Encoding::Deflate,
            "zstd" => Encoding::Zstd,
            "lz4" => Encoding::Lz4,
            _ => {
                return Err(NodeError::bad_request(format!(
                    "Content-Encoding `{}` is not supported; send gzip, deflate, zstd, lz4 or an uncompressed body",
                    crate::formats::truncate(&text, 40)
                )));
            }
        })
    }
}

/// Reads the body, refusing (413) as soon as it exceeds `limit` bytes, compressed or not, and
/// (408) once no chunk of it has arrived for `receive_timeout`: a client that stalls mid-body
/// holds a request's memory and a connection only that long.
pub async fn read(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    receive_timeout: Duration,
) -> Result<Bytes, NodeError> {
    let encoding = Encoding::of(headers)?;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(NodeError::BodyTooLarge { limit });
    }
    // A body that arrives in one chunk (a small insert's does) is kept as it came, uncopied.
    let mut first: Option<Bytes> = None;
    let mut gathered = BytesMut::new();
    let mut stream = body.into_data_stream();
    let stalled = || NodeError::BodyStalled { seconds: receive_timeout.as_secs() };
    while let Some(chunk) = tokio::time::timeout(receive_timeout, stream.next()).await.map_err(|_| stalled())? {
        let chunk = chunk.map_err(|e| NodeError::bad_request(format!("cannot read the request body: {e}")))?;
        let received = first.as_ref().map_or(0, Bytes::len) + gathered.len() + chunk.len();
        if received > limit {
            return Err(NodeError::BodyTooLarge { limit });
        }
        if first.is_none() && gathered.is_empty() {
            first = Some(chunk);
            continue;
        }
        if let Some(first) = first.take() {
            gathered.reserve(declared.unwrap_or(0).max(received));
            gathered.extend_from_slice(&first);
        }
        gathered.extend_from_slice(&chunk);
    }
    let raw = first.unwrap_or_else(|| gathered.freeze());
    if encoding == Encoding::Identity {
        return Ok(raw);
    }
    tokio::task::spawn_blocking(move || decompress(encoding, &raw, limit)).await.map_err(NodeError::internal)?
}

/// Decompresses `data`, stopping with 413 once the output would exceed `limit`.
pub fn decompress(encoding: Encoding, data: &[u8], limit: usize) -> Result<Bytes, NodeError> {
    let name = format!("{encoding:?}").to_ascii_lowercase();
    let malformed = |e: std::io::Error| {
        NodeError::bad_request(format!("the body is not valid {name} (Content-Encoding: {name}): {e}"))
    };
    let mut reader: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => return Ok(Bytes::copy_from_slice(data)),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Encoding::Deflate => Box::new(flate2::read::ZlibDecoder::new(data)),
        Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(data).map_err(malformed)?),
        Encoding::Lz4 => {
            Box::new(Lz4Frames { decoder: lz4_flex::frame::FrameDecoder::new(std::io::Cursor::new(data)) })
        }
    };
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk).map_err(malformed)?;
        if n == 0 {
            return Ok(Bytes::from(out));
        }
        if out.len() + n > limit {
            return Err(NodeError::DecompressedTooLarge { limit, compressed: data.len() });
        }
        out.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// LZ4 frames one after another, as one stream (clickhouse-connect compresses each block of an
/// insert as a frame of its own).
struct Lz4Frames<'a> {
    decoder: lz4_flex::frame::FrameDecoder<std::io::Cursor<&'a [u8]>>,
}

impl Read for Lz4Frames<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // A frame ended: another may follow.
            let cursor = self.decoder.get_ref();
            let data: &[u8] = cursor.get_ref();
            let rest = usize::try_from(cursor.position()).ok().and_then(|at| data.get(at..)).unwrap_or_default();
            if rest.is_empty() {
                return Ok(0);
            }
            self.decoder = lz4_flex::frame::FrameDecoder::new(std::io::Cursor::new(rest));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use std::io::Write;

    use super::*;

    fn compress(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        match encoding {
            Encoding::Identity => data.to_vec(),
            Encoding::Gzip => {
                let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            Encoding::Deflate => {
                let mut w = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            Encoding::Zstd => zstd::stream::encode_all(data, 1).unwrap(),
            Encoding::Lz4 => {
                let mut w = lz4_flex::frame::FrameEncoder::new(Vec::new());
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
        }
    }

    #[test]
    fn every_encoding_round_trips_and_bombs_stop_at_the_limit() {
        let rows = b"1,2024-01-01 00:00:00,1.5\n".repeat(1000);
        let zeros = vec![0u8; 8 << 20];
        for encoding in [Encoding::Gzip, Encoding::Deflate, Encoding::Zstd, Encoding::Lz4] {
            let packed = compress(encoding, &rows);
            assert_eq!(decompress(encoding, &packed, rows.len()).unwrap().as_ref(), rows.as_slice(), "{encoding:?}");
            // Frames one after another (as clients compress block by block) are one body.
            if encoding != Encoding::Deflate {
                let twice = [packed.clone(), packed].concat();
                let whole = [rows.clone(), rows.clone()].concat();
                assert_eq!(
                    decompress(encoding, &twice, whole.len()).unwrap().as_ref(),
                    whole.as_slice(),
                    "{encoding:?}"
                );
            }
            let bomb = compress(encoding, &zeros);
            assert!(bomb.len() < zeros.len() / 50, "{encoding:?} compresses zeros well");
            let err = decompress(encoding, &bomb, 1 << 20).unwrap_err();
            assert!(matches!(err, NodeError::DecompressedTooLarge { limit, .. } if limit == 1 << 20), "{encoding:?}");
            let err = decompress(encoding, b"definitely not compressed", 1 << 20).unwrap_err();
            assert!(matches!(err, NodeError::BadRequest(_)), "{encoding:?}: {err}");
        }
    }
}
