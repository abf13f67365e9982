use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp as EtcdTxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::CoordError;
use crate::kv::{
    Compare, KeyValue, KvBackend, LeaseId, Revision, TxnOp, TxnResult, WatchEvent, WatchEventKind, WatchResponse,
    WatchStream, receiver_stream,
};

/// Every unary call to etcd gets this long; a call that takes longer is reported as
/// `Unavailable` (and, for a write, its outcome is uncertain: re-read before concluding).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per page when listing a prefix, so no response nears gRPC's message size limit.
const PAGE_SIZE: i64 = 1000;

/// TLS to etcd: the CA that signed the members' certificates, and this client's certificate
/// and key when the members require client certificates. All PEM.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").field("client_identity", &self.client_identity.is_some()).finish_non_exhaustive()
    }
}

/// The cluster metadata store: etcd through `etcd-client`.
///
/// Watches use `require_leader`, so a member cut off from its cluster ends the watch instead
/// of serving stale events; the caller then re-lists and watches again.
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
}

impl EtcdKv {
    /// Connects to the given endpoints (`http://host:2379`, comma-separated lists split by
    /// the caller). Connecting does not wait for etcd to be reachable.
    pub async fn connect(endpoints: &[String]) -> Result<Self, CoordError> {
        Self::connect_with(endpoints, None).await
    }

    /// Connects over TLS when `tls` is given (the endpoints must then be `https://`).
    pub async fn connect_with(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<Self, CoordError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(tls) = tls {
            if let Some(plain) = endpoints.iter().find(|e| !e.starts_with("https://")) {
                return Err(CoordError::Backend(format!(
                    "etcd endpoint {plain} is not https:// but TLS is configured; use https:// endpoints"
                )));
            }
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.client_identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        let client = tokio::time::timeout(CALL_TIMEOUT, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| {
                CoordError::Unavailable(format!(
                    "etcd at {} did not answer within {CALL_TIMEOUT:?}",
                    endpoints.join(",")
                ))
            })?
            .map_err(|e| map_error(e, &endpoints.join(",")))?;
        let kv = EtcdKv { client };
        // The connection is lazy: one read proves the endpoints answer and accept this client
        // (a TLS member refusing its certificate fails here, at start, with the reason).
        kv.get("/tandem-connection-check")
            .await
            .map_err(|e| CoordError::Unavailable(format!("cannot use etcd at {}: {e}", endpoints.join(","))))?;
        Ok(kv)
    }

    fn client(&self) -> Client {
        self.client.clone()
    }
}

fn map_error(e: etcd_client::Error, context: &str) -> CoordError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::Cancelled => CoordError::Unavailable(format!("etcd ({context}): {}", status.message())),
            tonic::Code::NotFound if status.message().contains("lease not found") => CoordError::LeaseExpired(0),
            _ => CoordError::Backend(format!("etcd ({context}): {}: {}", status.code(), status.message())),
        },
        E::LeaseKeepAliveError(message) if message.contains("lease not found") => CoordError::LeaseExpired(0),
        E::TransportError(t) => CoordError::Unavailable(format!("etcd ({context}) unreachable: {t}")),
        E::IoError(io) => CoordError::Unavailable(format!("etcd ({context}): {io}")),
        other => CoordError::Backend(format!("etcd ({context}): {other}")),
    }
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, CoordError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(result) => result.map_err(|e| map_error(e, what)),
        Err(_) => Err(CoordError::Unavailable(format!("etcd did not answer {what} within {CALL_TIMEOUT:?}"))),
    }
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue, CoordError> {
    Ok(KeyValue {
        key: kv.key_str().map_err(|e| CoordError::Backend(format!("non-UTF-8 key in etcd: {e}")))?.to_string(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    })
}

fn convert_op(op: TxnOp) -> EtcdTxnOp {
    match op {
        TxnOp::Put { key, value, lease } => EtcdTxnOp::put(key, value, lease.map(|l| PutOptions::new().with_lease(l))),
        TxnOp::Delete { key } => EtcdTxnOp::delete(key, None),
        TxnOp::DeletePrefix { prefix } => EtcdTxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix())),
        TxnOp::Get { key } => EtcdTxnOp::get(key, None),
    }
}

#[async_trait]
impl KvBackend for EtcdKv {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, CoordError> {
        let mut client = self.client();
        let response = timed("get", client.get(key, None)).await?;
        response.kvs().first().map(convert).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), CoordError> {
        let mut client = self.client();
        let mut out = Vec::new();
        let mut revision = 0;
        // Paged, every page read at the revision of the first, so the result is one snapshot.
        let mut from = prefix.to_string();
        let end = prefix_end(prefix);
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE_SIZE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = timed("range", client.get(from.clone(), Some(options))).await?;
            if revision == 0 {
                revision = response.header().map(|h| h.revision()).unwrap_or(0);
            }
            let kvs = response.kvs();
            for kv in kvs {
                out.push(convert(kv)?);
            }
            match (response.more(), out.last()) {
                (true, Some(last)) => from = format!("{}\u{0}", last.key),
                _ => break,
            }
        }
        Ok((out, revision))
    }

    async fn count(&self, prefix: &str) -> Result<u64, CoordError> {
        let mut client = self.client();
        let options = GetOptions::new().with_range(prefix_end(prefix)).with_count_only();
        let response = timed("count", client.get(prefix, Some(options))).await?;
        Ok(response.count().max(0) as u64)
    }

    async fn range_first(&self, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, CoordError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut client = self.client();
        let options = GetOptions::new().with_range(prefix_end(prefix)).with_limit(limit as i64);
        let response = timed("range", client.get(prefix, Some(options))).await?;
        response.kvs().iter().map(convert).collect()
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    ) -> Result<TxnResult, CoordError> {
        let compares: Vec<EtcdCompare> = compares
            .into_iter()
            .map(|c| match c {
                Compare::Absent(key) => EtcdCompare::create_revision(key, CompareOp::Equal, 0),
                Compare::ModRevision(key, revision) => EtcdCompare::mod_revision(key, CompareOp::Equal, revision),
            })
            .collect();
        let txn = Txn::new()
            .when(compares)
            .and_then(success.into_iter().map(convert_op).collect::<Vec<_>>())
            .or_else(failure.into_iter().map(convert_op).collect::<Vec<_>>());
        let mut client = self.client();
        let response = timed("txn", client.txn(txn)).await?;
        let mut gets = Vec::new();
        for op in response.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                gets.push(get.kvs().first().map(convert).transpose()?);
            }
        }
        Ok(TxnResult {
            succeeded: response.succeeded(),
            revision: response.header().map(|h| h.revision()).unwrap_or(0),
            gets,
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, CoordError> {
        let mut client = self.client();
        let options = WatchOptions::new().with_prefix().with_start_revision(from.max(1));
        let mut stream = timed("watch", client.watch(prefix, Some(options))).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = stream.next() => m,
                    _ = tx.closed() => return,
                };
                let response = match message {
                    None => {
                        let _ = tx.send(Err(CoordError::Unavailable("etcd ended the watch".into()))).await;
                        return;
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(map_error(e, "watch"))).await;
                        return;
                    }
                    Some(Ok(response)) => response,
                };
                if response.canceled() {
                    let item = if response.compact_revision() > 0 {
                        Ok(WatchResponse::Compacted { compact_revision: response.compact_revision() })
                    } else {
                        Err(CoordError::Unavailable(format!("etcd cancelled the watch: {}", response.cancel_reason())))
                    };
                    let _ = tx.send(item).await;
                    return;
                }
                // One response may hold several revisions; deliver one batch per revision.
                let mut batches: Vec<(Revision, Vec<WatchEvent>)> = Vec::new();
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let kv = match convert(kv) {
                        Ok(kv) => kv,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let kind = match event.event_type() {
                        EventType::Put => WatchEventKind::Put,
                        EventType::Delete => WatchEventKind::Delete,
                    };
                    let revision = kv.mod_revision;
                    match batches.last_mut() {
                        Some((r, events)) if *r == revision => events.push(WatchEvent { kind, kv }),
                        _ => batches.push((revision, vec![WatchEvent { kind, kv }])),
                    }
                }
                for (revision, events) in batches {
                    if tx.send(Ok(WatchResponse::Events { revision, events })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(receiver_stream(rx))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let mut client = self.client();
        let response = timed("lease grant", client.lease_grant(ttl.as_secs().max(1) as i64, None)).await?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordError> {
        let renew = async {
            let mut client = self.client();
            let (mut keeper, mut responses) = timed("lease keep-alive", client.lease_keep_alive(lease)).await?;
            timed("lease keep-alive", keeper.keep_alive()).await?;
            match tokio::time::timeout(CALL_TIMEOUT, responses.next()).await {
                Ok(Some(Ok(response))) if response.ttl() > 0 => Ok(()),
                Ok(Some(Ok(_))) | Ok(None) => Err(CoordError::LeaseExpired(lease)),
                Ok(Some(Err(e))) => Err(map_error(e, "lease keep-alive")),
                Err(_) => {
                    Err(CoordError::Unavailable(format!("etcd did not renew lease {lease} within {CALL_TIMEOUT:?}")))
                }
            }
        };
        renew.await.map_err(|e| match e {
            CoordError::LeaseExpired(_) => CoordError::LeaseExpired(lease),
            other => other,
        })
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CoordError> {
        let mut client = self.client();
        match timed("lease revoke", client.lease_revoke(lease)).await {
            Ok(_) | Err(CoordError::LeaseExpired(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<(), CoordError> {
        let mut client = self.client();
        timed("compact", client.compact(revision, None)).await?;
        Ok(())
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
