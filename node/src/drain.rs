//! Draining a node before it stops (Kubernetes' preStop hook): `/ready` turns 503 so load
//! balancers stop sending it work, and the drain waits until every part that only this node
//! holds has another copy, on a live peer or in the object store. With asynchronous acks a node
//! can hold acknowledged rows nobody else has yet; a drain keeps them available while the
//! node is down (they are never lost: the node's disk keeps them either way).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::node::Node;

/// How a drain ended.
#[derive(Debug, Serialize)]
pub struct DrainReport {
    /// Every part on this node also has a copy elsewhere.
    pub drained: bool,
    /// Active parts whose only copy is on this node.
    pub parts_only_here: usize,
    /// Why the drain ended without `drained`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Marks the node draining and waits up to `timeout` until no part is only on this node.
pub async fn drain(node: &Node, timeout: Duration) -> DrainReport {
    if !node.draining.swap(true, Ordering::AcqRel) {
        tracing::info!(timeout_seconds = timeout.as_secs(), "draining: /ready answers 503 from now on");
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let only_here = parts_only_here(node);
        if !node.draining.load(Ordering::Acquire) {
            return DrainReport {
                drained: false,
                parts_only_here: only_here,
                reason: Some("cancelled by /drain?cancel=1".into()),
            };
        }
        if only_here == 0 {
            tracing::info!("drained: every part on this node has another copy");
            return DrainReport { drained: true, parts_only_here: 0, reason: None };
        }
        if !can_hand_over(node).await {
            return DrainReport {
                drained: false,
                parts_only_here: only_here,
                reason: Some(
                    "no other live node and no object store to copy them to; they stay on this node's disk".into(),
                ),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                parts_only_here = only_here,
                "drain timed out; these parts are unavailable until this node returns"
            );
            return DrainReport {
                drained: false,
                parts_only_here: only_here,
                reason: Some(format!(
                    "timed out after {} s waiting for peers or the object store to copy them",
                    timeout.as_secs()
                )),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Undoes a drain: the node is ready again and merges resume; a drain in progress answers
/// that it was cancelled.
pub fn cancel(node: &Node) {
    if node.draining.swap(false, Ordering::AcqRel) {
        tracing::info!("drain cancelled: /ready answers 200 again");
    }
}

/// Active parts held by no other node and not uploaded to the object store.
pub fn parts_only_here(node: &Node) -> usize {
    let me = &node.config.node_id;
    node.catalog
        .snapshot()
        .values()
        .flat_map(|table| table.parts.keys())
        .filter(|id| {
            let id = id.to_string();
            !node.catalog.in_object_store(&id) && node.catalog.holders(&id).iter().all(|holder| holder == me)
        })
        .count()
}

/// Whether anything can take a copy: another live node, or the object store.
async fn can_hand_over(node: &Node) -> bool {
    if node.bucket.is_some() {
        return true;
    }
    if !node.config.is_cluster() {
        return false;
    }
    match crate::membership::live_nodes(node).await {
        Ok(live) => live.iter().any(|n| n.node_id != node.config.node_id),
        // etcd unreachable: keep waiting until the deadline, it may come back.
        Err(_) => true,
    }
}

/// `tandem drain`: asks the node at `addr` to drain (what a Kubernetes preStop hook runs, since
/// `/drain` takes POST and the image has no shell or curl). Returns the status and the report.
pub async fn ask_to_drain(addr: std::net::SocketAddr, timeout_seconds: u64) -> anyhow::Result<(u16, String)> {
    use anyhow::Context;
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(format!("/drain?timeout_seconds={timeout_seconds}"))
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    // The node answers within its own timeout; a little more covers the round trip.
    let wait = Duration::from_secs(timeout_seconds.saturating_add(10));
    let response = tokio::time::timeout(wait, sender.send_request(request)).await.context("no answer in time")??;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(wait, response.into_body().collect()).await.context("no answer in time")??;
    Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
}
