//! `tandem-bench`: parses the options, sends the nodes' logs to a file, runs the scenarios.

use clap::Parser;
use tandem_bench::BenchArgs;

/// Measure insert throughput, query latency, merges, replication and the object store on fresh
/// nodes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
    /// Where the nodes' logs go (the report itself goes to stdout).
    #[arg(long, default_value = "tandem-bench.log")]
    log_file: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log = std::fs::File::create(&cli.log_file)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| "info,datafusion=warn".into()),
        )
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .init();
    println!("tandem-bench: the nodes' logs go to {}", cli.log_file.display());
    tandem_bench::run(cli.args).await
}
