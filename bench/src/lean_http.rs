//! The small-insert scenario's HTTP/1.1 client: one keep-alive connection, one request at a
//! time, sent and answered inside the caller's task.
//!
//! The client shares the machine's two cores with the servers it measures, so every microsecond
//! it spends on a request is one the server does not get. hyper's connection-level client cost
//! about 11 µs of CPU a request here (its connection runs in a task of its own, so each request
//! crosses tasks twice, and each request builds a header map); this one writes the request
//! head and body in one call and reads the answer with `httparse`, as a load generator such as
//! wrk does. It speaks only what the scenario needs: `Content-Length` requests, and answers
//! framed by `Content-Length` or chunked.

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most header lines an answer may carry.
const MAX_HEADERS: usize = 64;
/// Largest answer (head and body) the client keeps.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Where requests go and how: the server's address, the method and request target.
pub struct Target {
    pub address: String,
    pub method: &'static str,
    pub path_and_query: String,
}

/// One answer: the status code and the body.
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

/// A keep-alive connection to `Target::address`, opened when first needed and again after a
/// failure.
#[derive(Default)]
pub struct Connection {
    stream: Option<TcpStream>,
    request: Vec<u8>,
    answer: Vec<u8>,
    body: Vec<u8>,
}

impl Connection {
    /// Sends `body` to `target` and reads the whole answer. Any error closes the connection; the
    /// next request opens a new one.
    pub async fn send(&mut self, target: &Target, body: &[u8]) -> anyhow::Result<Answer<'_>> {
        match self.exchange(target, body).await {
            Ok((status, keep_alive)) => {
                if !keep_alive {
                    self.stream = None;
                }
                Ok(Answer { status, body: &self.body })
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    async fn exchange(&mut self, target: &Target, body: &[u8]) -> anyhow::Result<(u16, bool)> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(&target.address)
                    .await
                    .with_context(|| format!("cannot connect to {}", target.address))?;
                stream.set_nodelay(true)?;
                self.stream.insert(stream)
            }
        };
        self.request.clear();
        self.request.extend_from_slice(target.method.as_bytes());
        self.request.push(b' ');
        self.request.extend_from_slice(target.path_and_query.as_bytes());
        self.request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.request.extend_from_slice(target.address.as_bytes());
        self.request.extend_from_slice(b"\r\nContent-Length: ");
        self.request.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        self.request.extend_from_slice(b"\r\n\r\n");
        self.request.extend_from_slice(body);
        stream.write_all(&self.request).await?;

        self.answer.clear();
        self.body.clear();
        let (status, head_len, framing, keep_alive) = loop {
            read_more(stream, &mut self.answer).await?;
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = response.parse(&self.answer)? {
                let status = response.code.context("an answer without a status")?;
                let (framing, keep_alive) = framing(response.headers)?;
                break (status, head_len, framing, keep_alive);
            }
        };
        match framing {
            Framing::Length(length) => {
                while self.answer.len() < head_len + length {
                    read_more(stream, &mut self.answer).await?;
                }
                self.body.extend_from_slice(&self.answer[head_len..head_len + length]);
            }
            Framing::Chunked => {
                let mut at = head_len;
                loop {
                    let (size, size_len) = loop {
                        match httparse::parse_chunk_size(&self.answer[at..]) {
                            Ok(httparse::Status::Complete((size_len, size))) => break (size as usize, size_len),
                            Ok(httparse::Status::Partial) => read_more(stream, &mut self.answer).await?,
                            Err(_) => bail!("a malformed chunk size"),
                        }
                    };
                    at += size_len;
                    // The chunk, then its CRLF (after the last, empty chunk: the end of the
                    // trailers, which this server never sends).
                    while self.answer.len() < at + size + 2 {
                        read_more(stream, &mut self.answer).await?;
                    }
                    self.body.extend_from_slice(&self.answer[at..at + size]);
                    at += size + 2;
                    if size == 0 {
                        break;
                    }
                }
            }
        }
        Ok((status, keep_alive))
    }
}

enum Framing {
    Length(usize),
    Chunked,
}

/// How the answer's body is framed, and whether the connection stays open after it.
fn framing(headers: &[httparse::Header]) -> anyhow::Result<(Framing, bool)> {
    let mut framing = None;
    let mut keep_alive = true;
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            let length: usize = std::str::from_utf8(header.value)?.trim().parse()?;
            framing = Some(Framing::Length(length));
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if !header.value.eq_ignore_ascii_case(b"chunked") {
                bail!("an answer in a transfer encoding other than chunked");
            }
            framing = Some(Framing::Chunked);
        } else if header.name.eq_ignore_ascii_case("connection") {
            keep_alive = !header.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok((framing.context("an answer with neither Content-Length nor chunked encoding")?, keep_alive))
}

/// Appends what the socket has to `buffer`.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> anyhow::Result<()> {
    if buffer.len() >= MAX_ANSWER_BYTES {
        bail!("an answer over {MAX_ANSWER_BYTES} bytes");
    }
    buffer.reserve(16 * 1024);
    if stream.read_buf(buffer).await? == 0 {
        bail!("the server closed the connection");
    }
    Ok(())
}
