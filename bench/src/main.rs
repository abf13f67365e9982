//! `tandem-bench`: parses the options and runs the scenarios; the report goes to stdout, each
//! node's log to `--log-dir`.

use clap::Parser;
use tandem_bench::BenchArgs;

/// Measure insert throughput, query latency, merges, replication and the object store on fresh
/// nodes (real `tandem` processes: build it first with `cargo build --release --bin tandem`).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tandem_bench::run(Cli::parse().args).await
}
