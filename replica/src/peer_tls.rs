//! Mutual TLS between nodes: every node serves its interserver gRPC with a certificate from the
//! cluster's CA and presents the same certificate to the peers it fetches from; a connection
//! without a certificate from that CA is refused at the handshake, before any call.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::config::ReplicaSettings;

/// Mutual TLS of the interserver gRPC: the identity a node serves and presents, and the CA its
/// peers' certificates must come from. Read once at start.
pub(crate) struct InterserverTls {
    server: ServerTlsConfig,
    client: ClientTlsConfig,
}

impl InterserverTls {
    /// The TLS configuration of `settings` (none without the files; all three or none).
    pub(crate) fn load(settings: &ReplicaSettings) -> anyhow::Result<Option<InterserverTls>> {
        let (ca, cert, key) =
            match (&settings.interserver_ca_file, &settings.interserver_cert_file, &settings.interserver_key_file) {
                (None, None, None) => return Ok(None),
                (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
                _ => anyhow::bail!(
                    "interserver TLS needs all of --interserver-ca-file, --interserver-cert-file and \
                 --interserver-key-file"
                ),
            };
        let read = |path: &std::path::PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("cannot read the interserver {what} {}", path.display()))
        };
        let (ca, cert, key) = (read(ca, "CA file")?, read(cert, "certificate file")?, read(key, "key file")?);
        let identity = Identity::from_pem(&cert, &key);
        let server = ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(Certificate::from_pem(&ca))
            .timeout(Duration::from_secs(10));
        let client = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)).identity(identity);
        // Building both here finds a bad certificate or key now, not at the first peer.
        tonic::transport::Server::builder()
            .tls_config(server.clone())
            .context("the interserver certificate or key is not valid")?;
        Endpoint::from_static("https://127.0.0.1:1")
            .tls_config(client.clone())
            .context("the interserver CA or certificate is not valid")?;
        Ok(Some(InterserverTls { server, client }))
    }

    pub(crate) fn server(&self) -> ServerTlsConfig {
        self.server.clone()
    }
}

/// The endpoint of a peer's interserver service: over mutual TLS when this node has it.
pub(crate) fn peer_endpoint(
    tls: Option<&InterserverTls>,
    grpc_addr: &str,
) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{grpc_addr}"))?.tls_config(tls.client.clone()),
        None => Endpoint::from_shared(format!("http://{grpc_addr}")),
    }
}
