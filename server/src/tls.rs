//! HTTPS for the HTTP API (rustls). The certificate chain and key are read from PEM files, and
//! read again when either file changes, so a rotated certificate (cert-manager renews the
//! Secret, the kubelet updates the mounted files) is served without a restart. Handshakes run
//! concurrently, each within a timeout, so a slow or silent client holds up no one else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// How often the certificate files are checked for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate file {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read the TLS key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the TLS certificate {cert} and key {key} do not go together: {reason}")]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
    #[error("--tls-cert-file and --tls-key-file go together: set both for HTTPS, or neither")]
    Incomplete,
}

/// The certificate in force, swapped when its files change.
#[derive(Debug)]
struct ReloadingCertificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().map_or_else(|poisoned| poisoned.into_inner().clone(), |current| current.clone()))
    }
}

/// HTTPS settings loaded and checked: what [`TlsListener::bind`] serves with.
pub struct Https {
    certificate: Arc<ReloadingCertificate>,
    acceptor: TlsAcceptor,
}

impl Https {
    /// HTTPS when both files are given, plain HTTP when neither is.
    pub fn load(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Https>, TlsError> {
        let (cert, key) = match (cert, key) {
            (Some(cert), Some(key)) => (cert.to_path_buf(), key.to_path_buf()),
            (None, None) => return Ok(None),
            _ => return Err(TlsError::Incomplete),
        };
        let current = load(&cert, &key)?;
        let certificate = Arc::new(ReloadingCertificate { cert, key, current: RwLock::new(Arc::new(current)) });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Mismatch {
                cert: certificate.cert.clone(),
                key: certificate.key.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Https { certificate, acceptor: TlsAcceptor::from(Arc::new(config)) }))
    }
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate { path: cert.to_path_buf(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate { path: cert.to_path_buf(), reason: "no certificate in it".into() });
    }
    // Only the parser's verdict: the key file's contents never reach a message.
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.to_path_buf(), reason: e.to_string() })?;
    CertifiedKey::from_der(chain, private, &default_provider()).map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Checks the files every [`RELOAD_EVERY`] and serves their new contents once both load
/// (a half-written pair keeps the old certificate until the next check).
async fn reload_on_change(certificate: Arc<ReloadingCertificate>) {
    let stamp = |c: &ReloadingCertificate| (modified(&c.cert), modified(&c.key));
    let mut seen = stamp(&certificate);
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let now = stamp(&certificate);
        if now == seen {
            continue;
        }
        let (cert, key) = (certificate.cert.clone(), certificate.key.clone());
        match tokio::task::spawn_blocking(move || load(&cert, &key)).await {
            Ok(Ok(loaded)) => {
                if let Ok(mut current) = certificate.current.write() {
                    *current = Arc::new(loaded);
                }
                seen = now;
                tracing::info!(cert = %certificate.cert.display(), "serving the renewed TLS certificate");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the TLS files changed but do not load; serving the previous certificate")
            }
            Err(e) => tracing::warn!(error = %e, "reloading the TLS certificate failed"),
        }
    }
}

/// Accepted connections after their TLS handshake, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    tasks: tokio::task::JoinSet<()>,
}

impl TlsListener {
    /// Accepts on `listener`, completing handshakes in the background. The accept loop and the
    /// certificate reloader stop when the listener is dropped.
    pub fn bind(listener: TcpListener, https: Https) -> std::io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(64);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(reload_on_change(https.certificate));
        let acceptor = https.acceptor;
        tasks.spawn(async move {
            let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = ready_tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (acceptor, ready_tx) = (acceptor.clone(), ready_tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready_tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        });
        Ok(TlsListener { ready, local_addr, tasks })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (it only does once this listener is gone): wait forever, as
            // a listener with nothing more to accept.
            None => {
                self.tasks.shutdown().await;
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
