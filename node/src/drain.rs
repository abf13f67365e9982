//! `tandem drain`: the client side of a drain, what a Kubernetes preStop hook runs.

use std::time::Duration;

/// A user and password to sign in with (a node with users requires SYSTEM on `*.*` to drain).
pub struct DrainCredentials {
    pub user: String,
    pub password: tandem_access::Password,
}

/// `tandem drain`: asks the node at `addr` to drain (what a Kubernetes preStop hook runs, since
/// `/drain` takes POST and the image has no shell or curl). Returns the status and the report.
pub async fn ask_to_drain(
    addr: std::net::SocketAddr,
    timeout_seconds: u64,
    credentials: Option<&DrainCredentials>,
) -> anyhow::Result<(u16, String)> {
    use anyhow::Context;
    use base64::Engine;
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = hyper::Request::post(format!("/drain?timeout_seconds={timeout_seconds}"))
        .header(hyper::header::HOST, addr.to_string());
    if let Some(DrainCredentials { user, password }) = credentials {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.reveal()));
        request = request.header(hyper::header::AUTHORIZATION, format!("Basic {basic}"));
    }
    let request = request.body(http_body_util::Empty::<bytes::Bytes>::new())?;
    // The node answers within its own timeout; a little more covers the round trip.
    let wait = Duration::from_secs(timeout_seconds.saturating_add(10));
    let response = tokio::time::timeout(wait, sender.send_request(request)).await.context("no answer in time")??;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(wait, response.into_body().collect()).await.context("no answer in time")??;
    Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
}
