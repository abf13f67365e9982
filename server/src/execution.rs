//! What a query may use, and the machinery that holds it to that: a slot among
//! `max_concurrent_queries`, a memory pool of its own inside the node's pool (operators that
//! can spill to disk do so when it is full; others fail the query with a message naming the
//! limit), a deadline, and counters of the rows and bytes it returns.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryLimit, MemoryPool, MemoryReservation};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::NodeError;
use crate::limits::Limits;
use crate::url_params::UrlParams;

/// The node's share of query resources: the memory pool all queries draw from, the spill
/// directory, and the slots of concurrent queries.
pub struct QueryRuntime {
    base: Arc<RuntimeEnv>,
    server_pool: Arc<dyn MemoryPool>,
    slots: Arc<Semaphore>,
    limits: Limits,
}

impl QueryRuntime {
    /// Spill files go under `spill_dir`: emptied here (what a crash left behind), and by
    /// DataFusion as queries end. Parts that are not on this node's disk are read from `bucket`,
    /// registered at `bucket_store::BUCKET_URL`.
    pub fn new(
        limits: &Limits,
        spill_dir: &Path,
        bucket: Arc<dyn datafusion::object_store::ObjectStore>,
    ) -> Result<Self, NodeError> {
        if let Err(e) = std::fs::remove_dir_all(spill_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %spill_dir.display(), error = %e, "cannot empty the spill directory");
        }
        std::fs::create_dir_all(spill_dir).map_err(|e| {
            NodeError::internal(format!("cannot create the spill directory {}: {e}", spill_dir.display()))
        })?;
        let server_pool: Arc<dyn MemoryPool> =
            Arc::new(GreedyMemoryPool::new(usize::try_from(limits.server_memory_bytes()).unwrap_or(usize::MAX)));
        let base = RuntimeEnvBuilder::new()
            .with_memory_pool(server_pool.clone())
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill_dir.to_path_buf()])),
            )
            .build_arc()?;
        let url = datafusion::execution::object_store::ObjectStoreUrl::parse(crate::bucket_store::BUCKET_URL)?;
        base.register_object_store(url.as_ref(), bucket);
        Ok(QueryRuntime {
            base,
            server_pool,
            slots: Arc::new(Semaphore::new(limits.max_concurrent_queries.max(1))),
            limits: limits.clone(),
        })
    }

    /// The runtime queries are planned in: the node's object stores and metadata cache, and
    /// its memory pool as a whole.
    pub fn base(&self) -> Arc<RuntimeEnv> {
        self.base.clone()
    }

    /// Admits a query with the limits its request asks for (URL parameters named as the
    /// limits; each can only tighten the server's), or refuses it at once (429) when every
    /// slot is taken.
    pub fn admit(&self, params: &UrlParams) -> Result<Admitted, NodeError> {
        let limits = QueryLimits::from_request(&self.limits, params)?;
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            NodeError::Overloaded(format!(
                "this node is running max_concurrent_queries = {} queries; retry shortly or use another node",
                self.limits.max_concurrent_queries
            ))
        })?;
        let pool = Arc::new(QueryPool {
            server: self.server_pool.clone(),
            limit: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            used: AtomicUsize::new(0),
            exhausted: Mutex::new(None),
        });
        let runtime = Arc::new(RuntimeEnv {
            memory_pool: pool.clone(),
            disk_manager: self.base.disk_manager.clone(),
            cache_manager: self.base.cache_manager.clone(),
            object_store_registry: self.base.object_store_registry.clone(),
        });
        let deadline = limits.execution_time.map(|t| Instant::now() + t);
        Ok(Admitted { runtime, pool, limits, deadline, _slot: slot })
    }
}

/// One query's limits, as resolved for its request.
#[derive(Clone, Debug)]
pub struct QueryLimits {
    pub memory_bytes: u64,
    pub execution_time: Option<Duration>,
    pub result_rows: Option<u64>,
    pub result_bytes: Option<u64>,
}

impl QueryLimits {
    fn from_request(server: &Limits, params: &UrlParams) -> Result<Self, NodeError> {
        let asked = |name: &str| -> Result<Option<u64>, NodeError> {
            params
                .get(name)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        NodeError::bad_request(format!("setting `{name}` takes a non-negative integer, got `{v}`"))
                    })
                })
                .transpose()
        };
        // 0 means "no limit", in a request as on the server: the tighter non-zero one wins.
        let tighter = |server: u64, asked: Option<u64>| match (server, asked.unwrap_or(0)) {
            (0, 0) => None,
            (0, a) => Some(a),
            (s, 0) => Some(s),
            (s, a) => Some(s.min(a)),
        };
        let memory_bytes = match asked("max_memory_usage")? {
            Some(bytes) if bytes > 0 => bytes.min(server.query_memory_bytes()),
            _ => server.query_memory_bytes(),
        };
        Ok(QueryLimits {
            memory_bytes,
            execution_time: tighter(server.max_execution_time, asked("max_execution_time")?).map(Duration::from_secs),
            result_rows: tighter(server.max_result_rows, asked("max_result_rows")?),
            result_bytes: tighter(server.max_result_bytes, asked("max_result_bytes")?),
        })
    }
}

/// An admitted query: its runtime (memory pool, spill directory), its limits, its deadline,
/// and its slot, released when this is dropped (the query's result stream holds it).
pub struct Admitted {
    pub runtime: Arc<RuntimeEnv>,
    pool: Arc<QueryPool>,
    pub limits: QueryLimits,
    pub deadline: Option<Instant>,
    _slot: OwnedSemaphorePermit,
}

impl Admitted {
    /// Runs `work` within the query's deadline.
    pub async fn within_deadline<T>(&self, work: impl Future<Output = Result<T, NodeError>>) -> Result<T, NodeError> {
        match self.deadline {
            None => work.await,
            Some(deadline) => {
                tokio::time::timeout_at(deadline, work).await.map_err(|_| self.timed_out()).and_then(|r| r)
            }
        }
    }

    pub fn timed_out(&self) -> NodeError {
        let seconds = self.limits.execution_time.map(|t| t.as_secs()).unwrap_or_default();
        NodeError::QueryTimeout(format!(
            "the query ran longer than max_execution_time = {seconds} s and was stopped; narrow it (a time range, \
             a LIMIT) or pass a larger max_execution_time"
        ))
    }

    /// The error a failed query answers: a memory refusal names the pool that refused.
    pub fn error(&self, e: DataFusionError) -> NodeError {
        let exhausted = match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => self.pool.exhausted.lock().map(|e| *e).unwrap_or(None),
            _ => None,
        };
        match exhausted {
            Some(Exhausted::Query) => NodeError::QueryLimit(format!(
                "the query needs more memory than max_memory_usage = {} bytes (sorts and aggregations spill to disk \
                 first; joins and some others cannot); narrow it or pass a larger max_memory_usage",
                self.limits.memory_bytes
            )),
            Some(Exhausted::Server) => NodeError::Overloaded(format!(
                "the queries running on this node hold all of max_server_memory_usage ({e}); retry shortly"
            )),
            None => e.into(),
        }
    }

    /// Checks the result so far against `max_result_rows` and `max_result_bytes`.
    pub fn check_result(&self, rows: u64, bytes: u64) -> Result<(), NodeError> {
        if let Some(max) = self.limits.result_rows.filter(|max| rows > *max) {
            return Err(NodeError::QueryLimit(format!(
                "the result has more than max_result_rows = {max} rows; add a LIMIT or pass a larger max_result_rows"
            )));
        }
        if let Some(max) = self.limits.result_bytes.filter(|max| bytes > *max) {
            return Err(NodeError::QueryLimit(format!(
                "the result takes more than max_result_bytes = {max} bytes; select fewer rows or columns, or pass a \
                 larger max_result_bytes"
            )));
        }
        Ok(())
    }
}

/// Which pool refused memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exhausted {
    Query,
    Server,
}

/// One query's memory: its own limit, drawn from the node's pool.
#[derive(Debug)]
struct QueryPool {
    server: Arc<dyn MemoryPool>,
    limit: usize,
    used: AtomicUsize,
    exhausted: Mutex<Option<Exhausted>>,
}

impl QueryPool {
    fn refused(&self, which: Exhausted) {
        if let Ok(mut exhausted) = self.exhausted.lock() {
            exhausted.get_or_insert(which);
        }
    }
}

impl fmt::Display for QueryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query(used: {}, limit: {}, within {})", self.used.load(Ordering::Relaxed), self.limit, self.server)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "query"
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.server.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.server.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> datafusion::error::Result<()> {
        let grown = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            used.checked_add(additional).filter(|total| *total <= self.limit)
        });
        if grown.is_err() {
            self.refused(Exhausted::Query);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "query memory limit of {} bytes reached by {}",
                self.limit,
                reservation.consumer().name()
            )));
        }
        if let Err(e) = self.server.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            self.refused(Exhausted::Server);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}
