//! What ClickHouse's HTTP interface adds around every answer, and clients read: the
//! `X-ClickHouse-*` headers (query id, time zone, server name, summary, exception code), errors
//! in `Code: N. DB::Exception: ...` form, and response bodies compressed as
//! `enable_http_compression=1` with an `Accept-Encoding` asks (gzip, deflate, zstd, lz4).

use std::cell::RefCell;
use std::io::Write;

use axum::body::Body;
use axum::http::header::InvalidHeaderValue;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;

use crate::header_names::{X_CLICKHOUSE_QUERY_ID, X_CLICKHOUSE_TIMEZONE};
use crate::url_params::UrlParams;

/// The time zone every date and time is read and shown in.
pub const SERVER_TIMEZONE: &str = "UTC";

/// The ClickHouse version whose HTTP behaviour tandem follows, as `version()` answers it:
/// clients gate features on it.
pub const CLICKHOUSE_VERSION: &str = "24.8.1.1";

/// The parts of a request that shape its answer's envelope, read before anything can fail.
pub struct Exchange {
    query_id: HeaderValue,
    compression: Option<Compression>,
}

impl Exchange {
    pub fn of(params: &UrlParams, headers: &HeaderMap) -> Exchange {
        let given = params.get("query_id").filter(|id| !id.is_empty() && id.len() <= 256);
        let query_id = given.and_then(|id| HeaderValue::from_str(id).ok()).unwrap_or_else(|| {
            let mut text = uuid::Uuid::encode_buffer();
            HeaderValue::from_str(random_query_id().hyphenated().encode_lower(&mut text))
                .unwrap_or(HeaderValue::from_static(""))
        });
        let enabled = params.get("enable_http_compression").is_some_and(|v| v == "1" || v == "true");
        let compression = if enabled { Compression::negotiate(headers) } else { None };
        Exchange { query_id, compression }
    }
}

/// A random (version 4) UUID for a request that sent no query id. The operating system's
/// generator is asked for a few kilobytes at a time, per thread: a `getrandom` call per
/// request was a percent of a small insert's CPU.
fn random_query_id() -> uuid::Uuid {
    const RANDOM_BYTES: usize = 4096;
    thread_local! {
        static RANDOM: RefCell<(Box<[u8; RANDOM_BYTES]>, usize)> =
            RefCell::new((Box::new([0; RANDOM_BYTES]), RANDOM_BYTES));
    }
    RANDOM.with_borrow_mut(|(bytes, used)| {
        if *used + 16 > RANDOM_BYTES {
            if getrandom::fill(&mut bytes[..]).is_err() {
                return uuid::Uuid::new_v4();
            }
            *used = 0;
        }
        let id = bytes.get(*used..).and_then(|rest| rest.first_chunk::<16>()).copied().unwrap_or_default();
        *used += 16;
        uuid::Builder::from_random_bytes(id).into_uuid()
    })
}

/// Adds the headers every answer carries and, for a successful one, compresses its body.
pub fn finish_response(mut response: Response, exchange: &Exchange) -> Response {
    let headers = response.headers_mut();
    headers.insert(X_CLICKHOUSE_QUERY_ID, exchange.query_id.clone());
    headers.insert(X_CLICKHOUSE_TIMEZONE, HeaderValue::from_static(SERVER_TIMEZONE));
    match (exchange.compression, response.status().is_success()) {
        (Some(compression), true) => compress(response, compression),
        _ => response,
    }
}

/// `X-ClickHouse-Summary`: what a statement read and wrote, as ClickHouse's JSON of strings.
pub fn summary(
    written_rows: u64,
    written_bytes: u64,
    result_rows: u64,
    result_bytes: u64,
) -> Result<HeaderValue, InvalidHeaderValue> {
    // Written directly, in ClickHouse's key order: every insert answers with it. A JSON map
    // built and serialized for seven numbers was 2% of a 10-row insert's CPU, and `format!`'s
    // machinery still 1.5% of its instructions. The header value takes the text's buffer
    // rather than a copy.
    let mut number = itoa::Buffer::new();
    let mut summary = String::with_capacity(192);
    summary.push_str("{\"read_rows\":\"0\",\"read_bytes\":\"0\",\"written_rows\":\"");
    summary.push_str(number.format(written_rows));
    summary.push_str("\",\"written_bytes\":\"");
    summary.push_str(number.format(written_bytes));
    summary.push_str("\",\"total_rows_to_read\":\"0\",\"result_rows\":\"");
    summary.push_str(number.format(result_rows));
    summary.push_str("\",\"result_bytes\":\"");
    summary.push_str(number.format(result_bytes));
    summary.push_str("\"}");
    HeaderValue::from_maybe_shared(Bytes::from(summary))
}

/// An encoding of response bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Deflate,
    Zstd,
    /// The LZ4 frame format, as ClickHouse and its clients mean by `lz4`.
    Lz4,
}

impl Compression {
    /// The first encoding of `Accept-Encoding` tandem can write (clients list theirs in order
    /// of preference); `q=0` excludes one.
    fn negotiate(headers: &HeaderMap) -> Option<Compression> {
        let accepted = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
        accepted.split(',').find_map(|item| {
            let mut parts = item.split(';');
            let name = parts.next()?.trim().to_ascii_lowercase();
            let refused =
                parts.any(|p| matches!(p.trim().replace(' ', "").as_str(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            if refused {
                return None;
            }
            match name.as_str() {
                "gzip" | "x-gzip" => Some(Compression::Gzip),
                "deflate" => Some(Compression::Deflate),
                "zstd" => Some(Compression::Zstd),
                "lz4" => Some(Compression::Lz4),
                _ => None,
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Deflate => "deflate",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }
}

/// A compressor that hands out its output as it is produced, so a streamed result stays
/// streamed.
enum Compressor {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Lz4(lz4_flex::frame::FrameEncoder<Vec<u8>>),
}

impl Compressor {
    fn new(compression: Compression) -> std::io::Result<Compressor> {
        Ok(match compression {
            Compression::Gzip => {
                Compressor::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()))
            }
            Compression::Deflate => {
                Compressor::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast()))
            }
            Compression::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 1)?),
            Compression::Lz4 => Compressor::Lz4(lz4_flex::frame::FrameEncoder::new(Vec::new())),
        })
    }

    /// Compresses `chunk`, returning what the compressor has written so far.
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<Vec<u8>> {
        Ok(match self {
            Compressor::Gzip(e) => {
                e.write_all(chunk)?;
                std::mem::take(e.get_mut())
            }
            Compressor::Deflate(e) => {
                e.write_all(chunk)?;
                std::mem::take(e.get_mut())
            }
            Compressor::Zstd(e) => {
                e.write_all(chunk)?;
                std::mem::take(e.get_mut())
            }
            Compressor::Lz4(e) => {
                e.write_all(chunk)?;
                std::mem::take(e.get_mut())
            }
        })
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Compressor::Gzip(e) => e.finish(),
            Compressor::Deflate(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
            Compressor::Lz4(e) => e.finish().map_err(std::io::Error::other),
        }
    }
}

fn compress(response: Response, compression: Compression) -> Response {
    let Ok(compressor) = Compressor::new(compression) else { return response };
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(compression.name()));
    let stream = body.into_data_stream();
    let compressed = futures::stream::unfold(Some((stream, compressor)), |state| async move {
        let (mut stream, mut compressor) = state?;
        loop {
            match stream.next().await {
                Some(Ok(chunk)) => match compressor.write(&chunk) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Some((Ok(Bytes::from(out)), Some((stream, compressor)))),
                    Err(e) => return Some((Err(e), None)),
                },
                // An aborted result stays aborted: the client must not take it for a whole one.
                Some(Err(e)) => return Some((Err(std::io::Error::other(e)), None)),
                None => return Some((compressor.finish().map(Bytes::from), None)),
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(compressed))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn accepting(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_summary_is_json_with_clickhouse_keys() {
        assert_eq!(
            summary(10, 250, 3, u64::MAX).unwrap(),
            r#"{"read_rows":"0","read_bytes":"0","written_rows":"10","written_bytes":"250","total_rows_to_read":"0","result_rows":"3","result_bytes":"18446744073709551615"}"#,
            "ClickHouse's keys, in its order"
        );
        let summary: serde_json::Value =
            serde_json::from_str(summary(10, 250, 3, 40).unwrap().to_str().unwrap()).unwrap();
        assert_eq!(
            summary,
            serde_json::json!({
                "read_rows": "0", "read_bytes": "0", "written_rows": "10", "written_bytes": "250",
                "total_rows_to_read": "0", "result_rows": "3", "result_bytes": "40",
            })
        );
    }

    #[test]
    fn generated_query_ids_are_distinct_version_4_uuids() {
        let ids: std::collections::HashSet<uuid::Uuid> = (0..1000).map(|_| random_query_id()).collect();
        assert_eq!(ids.len(), 1000, "past several refills of the random bytes, no id repeats");
        assert!(ids.iter().all(|id| id.get_version_num() == 4 && id.get_variant() == uuid::Variant::RFC4122));
    }

    #[test]
    fn the_first_encoding_tandem_writes_wins() {
        assert_eq!(Compression::negotiate(&accepting("lz4,zstd,br,gzip,deflate")), Some(Compression::Lz4));
        assert_eq!(Compression::negotiate(&accepting("br, gzip;q=0.8")), Some(Compression::Gzip));
        assert_eq!(Compression::negotiate(&accepting("gzip;q=0, zstd")), Some(Compression::Zstd));
        assert_eq!(Compression::negotiate(&accepting("br")), None);
    }

    #[test]
    fn compressed_streams_decompress_to_their_input() {
        let input: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for compression in [Compression::Gzip, Compression::Deflate, Compression::Zstd, Compression::Lz4] {
            let mut compressor = Compressor::new(compression).unwrap();
            let mut out = Vec::new();
            for chunk in input.chunks(7_000) {
                out.extend(compressor.write(chunk).unwrap());
            }
            out.extend(compressor.finish().unwrap());
            let mut back = Vec::new();
            match compression {
                Compression::Gzip => flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut back).unwrap(),
                Compression::Deflate => flate2::read::ZlibDecoder::new(&out[..]).read_to_end(&mut back).unwrap(),
                Compression::Zstd => {
                    zstd::stream::read::Decoder::new(&out[..]).unwrap().read_to_end(&mut back).unwrap()
                }
                Compression::Lz4 => lz4_flex::frame::FrameDecoder::new(&out[..]).read_to_end(&mut back).unwrap(),
            };
            assert_eq!(back, input, "{compression:?}");
        }
    }
}
