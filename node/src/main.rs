use clap::{Parser, Subcommand};
use tandem_node::{NodeConfig, ServeArgs};

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

#[derive(clap::Args)]
struct DrainArgs {
    /// HTTP address of the node.
    #[arg(long, default_value = "127.0.0.1:8123")]
    http_addr: std::net::SocketAddr,
    /// Seconds the node may wait for its parts to get another copy.
    #[arg(long, default_value_t = 60)]
    timeout_seconds: u64,
    /// User to sign in as, when the node has users (it needs SYSTEM on *.*).
    #[arg(long, env = "TANDEM_DRAIN_USER", default_value = "default")]
    user: String,
    /// File holding that user's password (the admin password file, in a Kubernetes pod).
    #[arg(long, env = "TANDEM_DRAIN_PASSWORD_FILE")]
    password_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| "info,datafusion=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
            let credentials = match &args.password_file {
                Some(path) => Some(tandem_node::drain::DrainCredentials {
                    user: args.user.clone(),
                    password: tandem_access::Password::new(
                        std::fs::read_to_string(path)
                            .map_err(|e| anyhow::anyhow!("cannot read the password file {}: {e}", path.display()))?
                            .trim(),
                    ),
                }),
                None => None,
            };
            let (status, report) =
                tandem_node::drain::ask_to_drain(args.http_addr, args.timeout_seconds, credentials.as_ref()).await?;
            println!("{}", report.trim_end());
            anyhow::ensure!(status == 200, "the node did not drain (HTTP {status})");
            Ok(())
        }
    }
}
