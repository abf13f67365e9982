//! `tandem drain`: the client side of a drain, what a Kubernetes preStop hook runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Flags of `tandem drain`.
#[derive(clap::Args)]
pub struct DrainArgs {
    /// HTTP address of the node.
    #[arg(long, default_value = "127.0.0.1:8123")]
    http_addr: SocketAddr,
    /// Seconds the node may wait for its parts to get another copy.
    #[arg(long, default_value_t = 60)]
    timeout_seconds: u64,
    /// User to sign in as, when the node has users (it needs SYSTEM on *.*).
    #[arg(long, env = "TANDEM_DRAIN_USER", default_value = "default")]
    user: String,
    /// File holding that user's password (the admin password file, in a Kubernetes pod).
    #[arg(long, env = "TANDEM_DRAIN_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// PEM CA of the node's HTTPS certificate: connect over HTTPS, trusting only this CA.
    #[arg(long, env = "TANDEM_DRAIN_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The name the node's certificate must be issued for (with --ca-file); default: the IP
    /// address of --http-addr.
    #[arg(long, env = "TANDEM_DRAIN_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
}

impl DrainArgs {
    /// Asks the node to drain as the flags say: the status and the node's report.
    pub async fn run(&self) -> anyhow::Result<(u16, String)> {
        let credentials = match &self.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the password file {}", path.display()))?;
                Some(DrainCredentials { user: self.user.clone(), password: tandem_access::Password::new(text.trim()) })
            }
            None => None,
        };
        let tls = match &self.ca_file {
            Some(path) => Some(DrainTls {
                ca_pem: std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?,
                server_name: self.tls_server_name.clone().unwrap_or_else(|| self.http_addr.ip().to_string()),
            }),
            None => None,
        };
        ask_to_drain(self.http_addr, self.timeout_seconds, credentials.as_ref(), tls.as_ref()).await
    }
}

/// A user and password to sign in with (a node with users requires SYSTEM on `*.*` to drain).
pub struct DrainCredentials {
    pub user: String,
    pub password: tandem_access::Password,
}

/// HTTPS to the node: the CA its certificate comes from, and the name the certificate must be
/// issued for.
pub struct DrainTls {
    pub ca_pem: Vec<u8>,
    pub server_name: String,
}

/// `tandem drain`: asks the node at `addr` to drain (what a Kubernetes preStop hook runs, since
/// `/drain` takes POST and the image has no shell or curl), over HTTPS with `tls`. Returns the
/// status and the report.
pub async fn ask_to_drain(
    addr: SocketAddr,
    timeout_seconds: u64,
    credentials: Option<&DrainCredentials>,
    tls: Option<&DrainTls>,
) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    let mut request = hyper::Request::post(format!("/drain?timeout_seconds={timeout_seconds}"))
        .header(hyper::header::HOST, addr.to_string());
    if let Some(DrainCredentials { user, password }) = credentials {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.reveal()));
        request = request.header(hyper::header::AUTHORIZATION, format!("Basic {basic}"));
    }
    let request = request.body(http_body_util::Empty::<bytes::Bytes>::new())?;
    // The node answers within its own timeout; a little more covers the round trip.
    let wait = Duration::from_secs(timeout_seconds.saturating_add(10));
    match tls {
        None => send(TokioIo::new(stream), request, wait).await,
        Some(tls) => {
            let stream = tls_connector(tls)?
                .connect(server_name(&tls.server_name)?, stream)
                .await
                .with_context(|| format!("TLS handshake with {addr} failed"))?;
            send(TokioIo::new(stream), request, wait).await
        }
    }
}

fn server_name(name: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(name.to_string()).with_context(|| format!("`{name}` is not a DNS name or an IP address"))
}

fn tls_connector(tls: &DrainTls) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots.add(certificate.context("the CA file holds no valid PEM certificate")?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "the CA file holds no certificate");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn send<I>(
    io: I,
    request: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
    wait: Duration,
) -> anyhow::Result<(u16, String)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    let response = tokio::time::timeout(wait, sender.send_request(request)).await.context("no answer in time")??;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(wait, response.into_body().collect()).await.context("no answer in time")??;
    Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
}
