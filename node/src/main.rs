use clap::{Parser, Subcommand};
use tandem_node::drain::DrainArgs;
use tandem_node::{NodeConfig, ServeArgs};

/// mimalloc rather than glibc's malloc: a request makes many small, short-lived allocations
/// across the runtime's threads (measured: about a quarter of the server's time under many
/// small inserts went to glibc's malloc and free).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where the kernel backs anonymous memory with transparent huge pages by default
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `always`), every page the allocator takes
/// fresh or takes back after purging it is a 2 MiB page zeroed on first touch. Flushes and
/// merges allocate and free large buffers all the time: measured under many small inserts, 17%
/// of the server's time went to zeroing huge pages, and disabling them gave about 20% more
/// inserts per second. The flag covers the whole process, mappings already made included.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(%error, "could not disable transparent huge pages (prctl PR_SET_THP_DISABLE)");
    }
}

/// tandem: a replicated, append-mostly analytical store for time-series and event data.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (with no flags: one node on 127.0.0.1:8123, data in ./tandem-data).
    Serve(Box<ServeArgs>),
    /// Ask a running node to drain (POST /drain): the Kubernetes preStop hook.
    Drain(DrainArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| "info,datafusion=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    disable_transparent_huge_pages();
    match Cli::parse().command {
        Command::Serve(args) => {
            let config = NodeConfig::resolve(&args)?;
            if args.check_config {
                println!("{config:#?}");
                return Ok(());
            }
            tandem_node::start(config).await?.run_until_signal().await;
            Ok(())
        }
        Command::Drain(args) => {
            let (status, report) = args.run().await?;
            println!("{}", report.trim_end());
            anyhow::ensure!(status == 200, "the node did not drain (HTTP {status})");
            Ok(())
        }
    }
}
