//! The interserver gRPC service: peers fetch part files by hash. Every call must present the
//! cluster secret (the current one, or the previous one while a rotation rolls out), and with
//! interserver TLS every connection a certificate from the cluster's CA; only a node started
//! with `--insecure` has neither.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tandem_parts::PartId;
use tandem_proto::v1::interserver_server::{Interserver, InterserverServer};
use tandem_proto::v1::{FetchPartRequest, PartChunk, StatusRequest, StatusResponse};
use tandem_proto::{SECRET_METADATA_KEY, WIRE_FORMAT_VERSION};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::ClusterSecret;
use crate::metrics::Metrics;
use crate::replica::Replica;

const CHUNK_BYTES: usize = 1 << 20;

pub struct InterserverService {
    node: Arc<Replica>,
}

/// Checks the cluster secret a call presents. The presented value and the accepted secrets are
/// compared as blake3 hashes: fixed-length values compared in constant time, so timing reveals
/// neither a secret nor its length.
#[derive(Clone)]
pub struct SecretCheck {
    /// Empty only without a secret (`--insecure`): every call is let in.
    accepted: Arc<Vec<blake3::Hash>>,
    metrics: Arc<Metrics>,
}

impl SecretCheck {
    fn new(secret: Option<&ClusterSecret>, metrics: Arc<Metrics>) -> Self {
        let accepted = secret
            .map(|s| std::iter::once(&s.current).chain(&s.previous).map(|s| blake3::hash(s.as_bytes())).collect())
            .unwrap_or_default();
        SecretCheck { accepted: Arc::new(accepted), metrics }
    }
}

impl tonic::service::Interceptor for SecretCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.accepted.is_empty() {
            return Ok(request);
        }
        let presented = request.metadata().get(SECRET_METADATA_KEY).map(|v| v.as_bytes()).unwrap_or_default();
        let presented = blake3::hash(presented);
        // Every accepted secret is compared (no early exit).
        let matches = self.accepted.iter().fold(false, |found, secret| found | (*secret == presented));
        if matches {
            Ok(request)
        } else {
            // Counted, and logged only at debug: a refusal is also how a node on the other side of
            // a rotation learns to present the previous secret, and a flood of bad calls must not
            // flood the log.
            self.metrics.interserver_auth_failures.inc();
            tracing::debug!("refused an interserver call without a valid cluster secret");
            Err(Status::unauthenticated("this node requires the cluster secret (x-tandem-cluster-secret)"))
        }
    }
}

/// The secrets a call presents, in turn while the peer refuses them: none (`--insecure`), or the
/// current secret then the previous one (a peer the rotation has not reached yet knows only that).
pub fn secrets_to_present(secret: Option<&ClusterSecret>) -> Vec<Option<&str>> {
    match secret {
        None => vec![None],
        Some(secret) => std::iter::once(&secret.current).chain(&secret.previous).map(|s| Some(s.as_str())).collect(),
    }
}

/// A request carrying `secret` (when there is one).
pub fn with_secret<T>(message: T, secret: Option<&str>) -> Result<Request<T>, InvalidSecret> {
    let mut request = Request::new(message);
    if let Some(secret) = secret {
        request.metadata_mut().insert(SECRET_METADATA_KEY, secret.parse().map_err(|_| InvalidSecret)?);
    }
    Ok(request)
}

/// A cluster secret that cannot travel as gRPC metadata (it must be visible ASCII).
#[derive(Debug, thiserror::Error)]
#[error("the cluster secret cannot be sent as gRPC metadata: use visible ASCII characters")]
pub struct InvalidSecret;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<PartChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Interserver for InterserverService {
    type FetchPartStream = ChunkStream;

    async fn fetch_part(&self, request: Request<FetchPartRequest>) -> Result<Response<ChunkStream>, Status> {
        let request = request.into_inner();
        let id: PartId = request.part_id.parse().map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let path = self.node.catalog.store().path(&id);
        // The file is opened and read with blocking calls on one blocking thread each: tokio's
        // file type takes a thread hop for every open, metadata and read, and under load each
        // hop waits for a core (a 10,000-row part, one chunk, took four).
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<(std::fs::File, u64)> {
            let file = std::fs::File::open(&path)?;
            let size = file.metadata()?.len();
            Ok((file, size))
        })
        .await
        .map_err(|e| Status::internal(format!("cannot open part {id}: {e}")))?;
        let (file, total_size) =
            opened.map_err(|_| Status::not_found(format!("part {id} is not on node {}", self.node.config.node_id)))?;
        let node = self.node.clone();
        let table = request.table;
        let stream = async_stream(move |tx| async move {
            let sender = tx.clone();
            let sent = tokio::task::spawn_blocking(move || send_chunks(file, total_size, &sender))
                .await
                .map_err(|e| e.to_string())
                .and_then(|sent| sent.map_err(|e| e.to_string()));
            let (offset, actual) = match sent {
                Ok(Some(sent)) => sent,
                // The receiver went away.
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(format!("cannot read part {id}: {e}")))).await;
                    return;
                }
            };
            node.metrics.served_bytes.inc_by(offset);
            // The receiver checks the hash too; this side learns that its own copy rotted.
            if actual != id {
                tracing::error!(part = %id, %actual, "a served part file does not match its hash; quarantining it");
                quarantine_served(&node, &table, &id).await;
                let _ = tx
                    .send(Err(Status::data_loss(format!("part {id} on this node is corrupt; fetch it elsewhere"))))
                    .await;
            }
        });
        Ok(Response::new(stream))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let pending = self.node.catalog.snapshot().values().map(|t| t.pending.len() as u64).sum();
        Ok(Response::new(StatusResponse {
            format_version: WIRE_FORMAT_VERSION,
            node_id: self.node.config.node_id.clone(),
            applied_revision: self.node.catalog.applied_revision(),
            complete_revision: self.node.catalog.complete_revision(),
            pending_parts: pending,
        }))
    }
}

/// Sends a part file as chunks (blocking), hashing what it sends; answers the bytes sent and
/// their hash, or None when the receiver went away.
fn send_chunks(
    mut file: std::fs::File,
    total_size: u64,
    tx: &tokio::sync::mpsc::Sender<Result<PartChunk, Status>>,
) -> std::io::Result<Option<(u64, PartId)>> {
    use std::io::Read;
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    let mut buffer = vec![0u8; CHUNK_BYTES.min(total_size.max(1) as usize)];
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        let chunk = PartChunk {
            format_version: WIRE_FORMAT_VERSION,
            offset,
            data: bytes::Bytes::copy_from_slice(&buffer[..n]),
            total_size,
        };
        offset += n as u64;
        if tx.blocking_send(Ok(chunk)).is_err() {
            return Ok(None);
        }
    }
    Ok(Some((offset, PartId::from_hash(hasher.finalize()))))
}

async fn quarantine_served(node: &Arc<Replica>, table: &str, id: &PartId) {
    let store = node.catalog.store().clone();
    let id_copy = *id;
    let _ = tokio::task::spawn_blocking(move || store.quarantine(&id_copy)).await;
    let reason = "the local file was found corrupt while serving it; fetching a good copy";
    node.withdraw_corrupt_copy(table, id, reason.to_string()).await;
}

/// Why a peer could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error(transparent)]
    InvalidSecret(#[from] InvalidSecret),
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

/// Asks a peer how far it has applied the cluster's changes.
pub async fn peer_status(node: &Replica, grpc_addr: &str) -> Result<StatusResponse, PeerError> {
    use tandem_proto::v1::interserver_client::InterserverClient;
    let endpoint = crate::peer_tls::peer_endpoint(node.interserver_tls.as_ref(), grpc_addr)?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(5));
    let mut client = InterserverClient::new(endpoint.connect().await?);
    let mut refused = None;
    for secret in secrets_to_present(node.config.cluster_secret.as_ref()) {
        let request = with_secret(StatusRequest { format_version: WIRE_FORMAT_VERSION }, secret)?;
        match client.status(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if status.code() == tonic::Code::Unauthenticated => refused = Some(status),
            Err(status) => return Err(status.into()),
        }
    }
    Err(refused.unwrap_or_else(|| Status::unauthenticated("no secret to present")).into())
}

/// A stream fed by a task through a small channel.
fn async_stream<F, Fut>(produce: F) -> ChunkStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<PartChunk, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// Serves the interserver service on `listener` until shutdown.
pub async fn serve(node: Arc<Replica>, listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    let check = SecretCheck::new(node.config.cluster_secret.as_ref(), node.metrics.clone());
    let service = InterserverServer::with_interceptor(InterserverService { node: node.clone() }, check);
    // Without TCP_NODELAY the last segment of a chunk waits for a delayed ACK (about 40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &node.interserver_tls {
        builder = match builder.tls_config(tls.server()) {
            Ok(builder) => builder,
            Err(e) => {
                tracing::error!(error = %e, "interserver TLS failed");
                return;
            }
        };
    }
    let result = builder.add_service(service).serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await;
    if let Err(e) = result {
        tracing::error!(error = %e, "interserver service failed");
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        // As many cases as the front end's fuzz tests (PROPTEST_CASES overrides both).
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000),
            ..ProptestConfig::default()
        })]

    #[test]
    fn interserver_messages(data in proptest::collection::vec(any::<u8>(), 0..256), id in "[0-9a-f]{0,70}|\\PC{0,80}") {
        use prost::Message;
        use tandem_proto::v1::{PartChunk, StatusResponse};
        let _ = PartChunk::decode(data.as_slice());
        let _ = StatusRequest::decode(data.as_slice());
        let _ = StatusResponse::decode(data.as_slice());
        // What the part server does with a request: a part id is a hash, never a path.
        let requests = [FetchPartRequest::decode(data.as_slice()).ok(), Some(FetchPartRequest { format_version: 1, table: String::new(), part_id: id })];
        for request in requests.into_iter().flatten() {
            if let Ok(part) = request.part_id.parse::<PartId>() {
                prop_assert_eq!(part.to_string(), request.part_id.clone());
                prop_assert!(request.part_id.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
    }
    }
}
