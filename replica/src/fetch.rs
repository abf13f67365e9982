//! The fetcher: obtains the files of pending parts by hash. Sources are tried in order: the
//! node that wrote the part, then every other live holder, then the object store (the bucket
//! comes first while the node bootstraps from it). Every byte is hashed on arrival and a part
//! becomes visible only if it matches. A merged part whose sources are all on this node is
//! rebuilt from them instead, and kept only if it hashes to its id. A part that no source has is reported lost. Fetches
//! run at bounded concurrency, retry with backoff, and never touch the insert path.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tandem_coordinator::OBJECT_STORE_HOLDER;
use tandem_parts::{MirrorError, PartError, PartId, UnsyncedPart};
use tandem_proto::WIRE_FORMAT_VERSION;
use tandem_proto::v1::FetchPartRequest;
use tandem_proto::v1::interserver_client::InterserverClient;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::catalog::{FetchFailure, FetchRequest, PendingPart};
use crate::interserver::{secrets_to_present, with_secret};
use crate::live_nodes::NodeInfo;
use crate::receive::StreamFailure;
use crate::replica::Replica;

const MAX_BACKOFF: Duration = Duration::from_secs(10);
const MAX_LOST_BACKOFF: Duration = Duration::from_secs(60);

/// Why one source could not provide a part.
#[derive(Debug)]
enum SourceError {
    /// The bytes did not hash to the part id (or the source said its copy is corrupt).
    Corrupt(String),
    /// The source does not have the part.
    Missing,
    Failed(String),
}

/// Where a part can come from.
#[derive(Debug, Clone)]
enum Source {
    Peer(NodeInfo),
    ObjectStore,
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::Peer(info) => &info.node_id,
            Source::ObjectStore => "object store",
        }
    }
}

pub struct Fetcher {
    node: Arc<Replica>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Parts being fetched now: a repeated request for one of them is dropped.
    in_flight: Mutex<HashSet<(String, PartId)>>,
}

/// Runs the fetcher until shutdown, taking requests from the catalog.
pub async fn run(node: Arc<Replica>, mut requests: mpsc::UnboundedReceiver<FetchRequest>, shutdown: CancellationToken) {
    let fetcher = Arc::new(Fetcher {
        node: node.clone(),
        channels: Mutex::new(HashMap::new()),
        in_flight: Mutex::new(HashSet::new()),
    });
    let permits = Arc::new(Semaphore::new(node.config.settings.fetch_concurrency.max(1)));
    let retry = node.fetch_requests.clone();
    // Each fetch is a task of this set: finished ones are reaped as the loop goes, and the rest
    // end with the loop (a part half-written is discarded: the store empties its `tmp/` at open).
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let request = tokio::select! {
            r = requests.recv() => match r { Some(r) => r, None => break },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        if node.catalog.pending(&request.table, &request.id).is_none() {
            continue;
        }
        let key = (request.table.clone(), request.id);
        if !fetcher.in_flight.lock().expect("in-flight lock").insert(key.clone()) {
            continue;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => break,
        };
        let fetcher = fetcher.clone();
        let retry = retry.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let result = fetcher.fetch(&request).await;
            fetcher.in_flight.lock().expect("in-flight lock").remove(&key);
            drop(permit);
            let node = &fetcher.node;
            match result {
                Ok(()) => {}
                Err(failure) => {
                    let lost = failure.is_lost();
                    let Some(attempts) = node.catalog.fetch_failed(&request.table, &request.id, &failure) else {
                        return;
                    };
                    node.metrics.fetch_failures.inc();
                    // A lost part is still asked for (a holder may come back), but rarely.
                    let max = if lost { MAX_LOST_BACKOFF } else { MAX_BACKOFF };
                    let backoff = (Duration::from_millis(200) * 2u32.saturating_pow(attempts.min(10))).min(max);
                    if lost {
                        tracing::error!(table = %request.table, part = %request.id, attempts, retry_in_ms = backoff.as_millis() as u64, reason = %failure, "part is lost");
                    } else {
                        tracing::warn!(table = %request.table, part = %request.id, attempts, retry_in_ms = backoff.as_millis() as u64, reason = %failure, "part fetch failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => { let _ = retry.send(request); }
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        });
    }
    tasks.shutdown().await;
}

impl Fetcher {
    /// No chunk for this long ends a fetch from that source.
    fn chunk_timeout(&self) -> Duration {
        Duration::from_secs(self.node.config.settings.fetch_chunk_timeout_seconds.max(1))
    }

    /// Fetches one pending part from the first source that provides valid bytes. The error
    /// says what each source answered, and whether the part is lost (no source has it).
    async fn fetch(&self, request: &FetchRequest) -> Result<(), FetchFailure> {
        let node = &self.node;
        let Some(pending) = node.catalog.pending(&request.table, &request.id) else { return Ok(()) };
        let id = request.id;
        // `local_replicas`: a part that other nodes keep is read from the bucket here.
        let local_replicas = node.catalog.table(&request.table).and_then(|t| t.def.settings.local_replicas);
        if let (Some(n), Some(_)) = (local_replicas, &node.bucket) {
            let live: Vec<String> =
                node.live_nodes().await?.into_iter().filter(|n| n.holds_parts()).map(|n| n.node_id).collect();
            let writer = pending.manifest.node.as_deref();
            if !crate::schema::keeps_locally(&id, writer, &node.config.node_id, &live, n) {
                node.catalog.read_from_bucket(&request.table, &id);
                return Ok(());
            }
        }
        // A merged part whose sources are all here may be rebuilt locally: no bytes cross the
        // network, at the price of the merge's CPU again. Fetching it is the default; rebuilding is
        // then the fallback when no source has it (its leader died right after registering).
        let always_fetch = node.config.settings.always_fetch_merged_part;
        if !always_fetch && self.rebuild(request, &pending).await {
            return Ok(());
        }
        let fetched = self.fetch_from_sources(request, &pending).await;
        if always_fetch && fetched.is_err() && self.rebuild(request, &pending).await {
            return Ok(());
        }
        fetched
    }

    /// Rebuilds a merged part from this node's copies of its sources; false when that cannot be
    /// done (not a merged part, a source missing, different bytes).
    async fn rebuild(&self, request: &FetchRequest, pending: &PendingPart) -> bool {
        let node = &self.node;
        if !crate::merges::rebuild_locally(node, &request.table, &request.id, &pending.manifest).await {
            return false;
        }
        if node.catalog.activate(&request.table, &request.id) {
            tracing::info!(table = %request.table, part = %request.id, "merged part rebuilt from local sources");
            if let Err(e) = node
                .coordinator
                .add_holder_at(&request.table, &request.id, pending.revision, &node.config.node_id)
                .await
            {
                tracing::warn!(part = %request.id, error = %e, "cannot record this node as a holder");
            }
        }
        true
    }

    /// Fetches a part from the peers that hold it, then the object store.
    async fn fetch_from_sources(&self, request: &FetchRequest, pending: &PendingPart) -> Result<(), FetchFailure> {
        let node = &self.node;
        let id = request.id;
        // The holders the watch delivered (the writer's key comes with the registration); the
        // store is asked when they name no live peer.
        let live = node.live_nodes().await?;
        let mut holders: Vec<String> = node.catalog.holders(&id).into_iter().collect();
        if !live.iter().any(|n| n.node_id != node.config.node_id && holders.contains(&n.node_id)) {
            holders = node.coordinator.part_holders(&request.table, &id).await?;
        }
        let peers = order_sources(&holders, &live, pending.manifest.node.as_deref(), &node.config.node_id);
        let mut sources: Vec<Source> = peers.into_iter().map(Source::Peer).collect();
        if let Some(bucket) = &node.bucket {
            if bucket.is_bootstrapping() {
                sources.insert(0, Source::ObjectStore);
            } else {
                sources.push(Source::ObjectStore);
            }
        }
        if sources.is_empty() {
            let holders = holders.join(", ");
            return Err(FetchFailure::Lost(format!(
                "no live node holds part {id} (recorded holders: {holders}) and no object store is configured"
            )));
        }
        let mut problems = Vec::new();
        let mut everywhere_missing = true;
        for source in sources {
            let started = Instant::now();
            let result = match &source {
                Source::Peer(info) => self.fetch_from_peer(info, &request.table, &request.id).await,
                Source::ObjectStore => self.fetch_from_object_store(&request.table, &request.id).await,
            };
            match result {
                Ok(Received { bytes, file }) => {
                    if !pending.manifest.merged_from.is_empty() {
                        node.metrics.merged_parts_fetched.inc();
                    }
                    match source {
                        Source::Peer(_) => {
                            node.metrics.fetch_bytes.inc_by(bytes);
                            node.metrics.fetch_parts.inc();
                        }
                        Source::ObjectStore => {
                            node.metrics.object_store_fetched_bytes.inc_by(bytes);
                            node.metrics.object_store_fetched_parts.inc();
                        }
                    }
                    // Queries read the copy at once; the cluster counts on it (a holder, for
                    // quorums, drains and eviction) once it is on disk.
                    if node.catalog.activate(&request.table, &request.id) {
                        tracing::info!(table = %request.table, part = %id, from = %source.name(), bytes,
                            ms = started.elapsed().as_millis() as u64, "part fetched");
                        let synced = tokio::task::spawn_blocking(move || file.sync()).await;
                        if let Err(error) = synced.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()))
                        {
                            tracing::error!(part = %id, %error, "a fetched part could not be synced to disk; fetching it again");
                            node.catalog.demote(
                                &request.table,
                                &id,
                                format!("the fetched copy could not be synced: {error}"),
                            );
                            return Ok(());
                        }
                        match node
                            .coordinator
                            .add_holder_at(&request.table, &id, pending.revision, &node.config.node_id)
                            .await
                        {
                            Ok(_) => {}
                            Err(e) => tracing::warn!(part = %id, error = %e, "cannot record this node as a holder"),
                        }
                    }
                    return Ok(());
                }
                Err(SourceError::Corrupt(reason)) => {
                    everywhere_missing = false;
                    node.metrics.fetch_corrupt.inc();
                    if matches!(source, Source::ObjectStore) {
                        node.metrics.object_store_corrupt_objects.inc();
                        self.discard_corrupt_object(&request.table, &request.id).await;
                    }
                    tracing::error!(table = %request.table, part = %id, from = %source.name(), %reason, "refused a part whose bytes do not match its hash");
                    problems.push(format!("{}: corrupt ({reason})", source.name()));
                }
                Err(SourceError::Missing) => problems.push(format!("{}: does not have it", source.name())),
                Err(SourceError::Failed(reason)) => {
                    everywhere_missing = false;
                    problems.push(format!("{}: {reason}", source.name()));
                }
            }
        }
        // Lost only when every source answered that it does not have the part and no live
        // node is recorded as holding it; an unreachable source leaves the question open.
        let lost = everywhere_missing
            && !live.iter().any(|n| n.node_id != node.config.node_id && holders.contains(&n.node_id));
        let summary = problems.join("; ");
        Err(if lost {
            FetchFailure::Lost(format!("no live node and not the object store has part {id} ({summary})"))
        } else {
            FetchFailure::Failed(summary)
        })
    }

    /// Deletes an object whose bytes do not match its name (after checking again) and forgets
    /// that the object store holds the part, so a node that has a good copy uploads it again.
    /// The name is the hash, so a corrupt object can never become right by itself.
    async fn discard_corrupt_object(&self, table: &str, id: &PartId) {
        let Some(bucket) = &self.node.bucket else { return };
        if !matches!(bucket.mirror.download(table, id).await, Err(MirrorError::Corrupt { .. })) {
            return;
        }
        if let Err(e) = bucket.mirror.delete(table, id).await {
            tracing::warn!(%table, part = %id, error = %e, "cannot delete a corrupt object");
            return;
        }
        match self.node.coordinator.remove_holder(table, id, OBJECT_STORE_HOLDER).await {
            Ok(()) => tracing::warn!(%table, part = %id, "deleted a corrupt object; the part will be uploaded again"),
            Err(e) => tracing::warn!(%table, part = %id, error = %e, "cannot record that a corrupt object was deleted"),
        }
    }

    async fn fetch_from_object_store(&self, table: &str, id: &PartId) -> Result<Received, SourceError> {
        let bucket = self.node.bucket.as_ref().ok_or(SourceError::Missing)?;
        let opened = bucket.mirror.open(table, id).await;
        bucket.record(&self.node.metrics, &opened);
        let stream = match opened {
            Ok(stream) => stream,
            Err(MirrorError::NotFound { .. }) => return Err(SourceError::Missing),
            Err(e) => return Err(SourceError::Failed(e.to_string())),
        };
        let chunks = stream.map(|chunk| chunk.map_err(|e| SourceError::Failed(e.to_string())));
        self.receive(id, chunks).await
    }

    fn channel(&self, addr: &str) -> Result<Channel, SourceError> {
        let mut channels = self.channels.lock().expect("channel cache lock");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = crate::peer_tls::peer_endpoint(self.node.interserver_tls.as_ref(), addr)
            .map_err(|e| SourceError::Failed(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    async fn fetch_from_peer(&self, source: &NodeInfo, table: &str, id: &PartId) -> Result<Received, SourceError> {
        let channel = self.channel(&source.grpc_addr)?;
        let mut client = InterserverClient::new(channel).max_decoding_message_size(16 << 20);
        let failed = |status: tonic::Status| SourceError::Failed(format!("{}: {}", status.code(), status.message()));
        let mut answer = None;
        // The current secret first; the previous one for a peer a rotation has not reached yet.
        for secret in secrets_to_present(self.node.config.cluster_secret.as_ref()) {
            let message = FetchPartRequest {
                format_version: WIRE_FORMAT_VERSION,
                table: table.to_string(),
                part_id: id.to_string(),
            };
            let request = with_secret(message, secret).map_err(|e| SourceError::Failed(e.to_string()))?;
            let response = tokio::time::timeout(self.chunk_timeout(), client.fetch_part(request))
                .await
                .map_err(|_| SourceError::Failed("no answer".into()))?;
            match response {
                Err(status) if status.code() == tonic::Code::Unauthenticated => answer = Some(Err(status)),
                other => {
                    answer = Some(other);
                    break;
                }
            }
        }
        let response = match answer {
            Some(answer) => answer.map_err(failed)?,
            None => return Err(SourceError::Failed("no secret to present".into())),
        };
        let chunks = response.into_inner().map(|chunk| match chunk {
            Ok(chunk) => Ok(chunk.data),
            Err(status) if status.code() == tonic::Code::DataLoss => {
                Err(SourceError::Corrupt(status.message().to_string()))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Err(SourceError::Missing),
            Err(status) => Err(SourceError::Failed(format!("{}: {}", status.code(), status.message()))),
        });
        self.receive(id, chunks).await
    }

    /// Writes a stream of chunks into the local store as part `id`; the store's writer hashes
    /// them and keeps the file only if it matches. The file is in place, not yet synced.
    async fn receive(
        &self,
        id: &PartId,
        chunks: impl futures::Stream<Item = Result<bytes::Bytes, SourceError>> + Unpin,
    ) -> Result<Received, SourceError> {
        let store = self.node.catalog.store().clone();
        let (failure, written) = crate::receive::receive(store, *id, chunks, self.chunk_timeout(), |writer| {
            let bytes = writer.bytes_written();
            Ok(Received { bytes, file: writer.finish_unsynced()? })
        })
        .await
        .map_err(|e| SourceError::Failed(e.to_string()))?;
        let failure = failure.map(|failure| match failure {
            StreamFailure::Stalled(wait) => SourceError::Failed(format!("no data for {wait:?}")),
            StreamFailure::Source(e) => e,
        });
        match (failure, written) {
            // The receiver's own check decides first: bytes that do not hash to the id are refused.
            (_, Err(PartError::Corrupt { reason, .. })) => Err(SourceError::Corrupt(reason)),
            (Some(failure), _) => Err(failure),
            (None, Err(e)) => Err(SourceError::Failed(e.to_string())),
            (None, Ok(received)) => Ok(received),
        }
    }
}

/// A part received from a source: its size, and its file, in place but not yet synced.
struct Received {
    bytes: u64,
    file: UnsyncedPart,
}

/// Sources in the order they are tried: the writer first (if it is a live holder), then the
/// other live holders. Never this node itself.
fn order_sources(holders: &[String], live: &[NodeInfo], writer: Option<&str>, me: &str) -> Vec<NodeInfo> {
    let mut sources: Vec<NodeInfo> =
        live.iter().filter(|n| n.node_id != me && holders.contains(&n.node_id)).cloned().collect();
    sources.sort_by_key(|n| (Some(n.node_id.as_str()) != writer, n.node_id.clone()));
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_first_then_other_live_holders_never_self() {
        let holders = ["n1".to_string(), "n2".to_string(), "n3".to_string(), "n4".to_string()];
        let live = [NodeInfo::named("n4"), NodeInfo::named("n3"), NodeInfo::named("n2"), NodeInfo::named("n5")];
        let order: Vec<_> = order_sources(&holders, &live, Some("n3"), "n2").into_iter().map(|n| n.node_id).collect();
        assert_eq!(order, ["n3", "n4"], "n1 is dead, n2 is this node, n5 holds nothing");
    }
}
