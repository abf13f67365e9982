//! SQL functions as tandem's sessions see them: DataFusion's, ClickHouse's (the date and time
//! functions, conversions and aggregates dashboards use, as DataFusion scalar and aggregate
//! functions), and DataFusion's functions whose output size is an argument, bounded.

mod aggregate;
mod bounded;
pub mod distinct;
pub mod quantile;
mod scalar;
mod syntax;
mod time;

pub use time::{TickBuckets, fixed_time_bucket};

use std::sync::LazyLock;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

pub use syntax::rewrite as rewrite_clickhouse_syntax;

/// tandem's functions, built once: DataFusion looks functions up by their name in lower case,
/// so each ClickHouse name (`toStartOfHour`) also answers to that (leaked once per process: the
/// aliases must be `'static`). The time buckets carry that alias themselves: a wrapper adding
/// it would hide them from the grouping that recognizes them ([`fixed_time_bucket`]).
static FUNCTIONS: LazyLock<(Vec<ScalarUDF>, Vec<AggregateUDF>)> = LazyLock::new(|| {
    let lower = |name: &str| -> &'static str { Box::leak(name.to_lowercase().into_boxed_str()) };
    let scalars = time::functions().into_iter().chain(scalar::functions()).map(|f| {
        let alias = lower(f.name());
        if f.aliases().iter().any(|a| a == alias) { f } else { f.with_aliases([alias]) }
    });
    let aggregates = aggregate::functions().into_iter().map(|f| {
        let alias = lower(f.name());
        f.with_aliases([alias])
    });
    (scalars.collect(), aggregates.collect())
});

/// Registers tandem's functions in a session (replacing DataFusion's of the same name, such as
/// `now()`, whose ClickHouse meaning differs).
pub fn register(ctx: &SessionContext) {
    bounded::register_bounded(ctx);
    for function in &FUNCTIONS.0 {
        ctx.register_udf(function.clone());
    }
    for function in &FUNCTIONS.1 {
        ctx.register_udaf(function.clone());
    }
}

#[cfg(test)]
mod tests;
