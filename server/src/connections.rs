//! The HTTP port's connections: accepted, served over HTTP/1.1 and closed, within the bounds a
//! public port needs whoever is on the other end.
//!
//! - **At most `max_connections` at once.** Past that, the accept loop waits for one to close:
//!   further clients wait in the kernel's listen backlog, holding no file descriptor of the node
//!   (which its parts, the log and the metadata store's connections need as well), rather than
//!   each being taken on, until the process runs out of them and stops accepting anyone.
//! - **A request head within `keep_alive_timeout_seconds`** of the connection opening or of
//!   the previous answer: a client that trickles its head (slowloris), or a kept-alive
//!   connection left idle, is closed then and its slot freed.
//!
//! The body has its own bound, `http_receive_timeout_seconds` between two of its chunks, in
//! [`crate::body::read`], where a stall can be answered with a status.

use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http::Api;
use crate::state::ServerSettings;

/// The bounds on the port's connections, checked: built only from settings that hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits {
    max_connections: usize,
    keep_alive_timeout: Duration,
}

/// Most connections `max_connections` may allow: far more than a node's file descriptors.
const MOST_CONNECTIONS: usize = 1 << 20;
/// Longest either timeout may be (a day): a deadline that far is as good as none.
const LONGEST_TIMEOUT_SECONDS: u64 = 86_400;

impl ConnectionLimits {
    /// The settings' bounds, checked before the node serves: none of them may be zero (no
    /// connection, or none given any time), nor so large that a deadline overflows the clock.
    pub(crate) fn of(settings: &ServerSettings) -> anyhow::Result<ConnectionLimits> {
        if !(1..=MOST_CONNECTIONS).contains(&settings.max_connections) {
            anyhow::bail!("max_connections is {}; it takes 1 to {MOST_CONNECTIONS}", settings.max_connections);
        }
        for (name, seconds) in [
            ("keep_alive_timeout_seconds", settings.keep_alive_timeout_seconds),
            ("http_receive_timeout_seconds", settings.http_receive_timeout_seconds),
        ] {
            if !(1..=LONGEST_TIMEOUT_SECONDS).contains(&seconds) {
                anyhow::bail!("{name} is {seconds}; it takes 1 to {LONGEST_TIMEOUT_SECONDS} seconds");
            }
        }
        Ok(ConnectionLimits {
            max_connections: settings.max_connections,
            keep_alive_timeout: Duration::from_secs(settings.keep_alive_timeout_seconds),
        })
    }
}

/// Serves `api` on the connections `listener` accepts until `shutdown` completes; then accepts
/// no more, lets each connection finish the request it is answering, and returns once all are
/// closed.
pub(crate) async fn serve<L: Listener>(
    mut listener: L,
    api: Api,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let stop = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.keep_alive_timeout).half_close(true);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let connection = http.serve_connection(TokioIo::new(io), api.clone());
        // A token of its own, cancelled with the loop's: every poll of a connection waiting
        // for its client looks at its token under the token's lock, and one token shared by
        // every connection would be one lock taken by all of them, on every core.
        let stop = stop.child_token();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            // The connection is polled first: the stop is looked at only when it is not ready.
            let finished = tokio::select! {
                biased;
                served = connection.as_mut() => Some(served),
                () = stop.cancelled() => None,
            };
            let served = match finished {
                Some(served) => served,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "an HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    stop.cancel();
    // Every slot back: every connection closed.
    let _ = slots.acquire_many(u32::try_from(limits.max_connections).unwrap_or(u32::MAX)).await;
}
