//! The `baton` binary. `serve` runs the server on the embedded sled log.
//! Exit codes: 0 ok, 1 a check failed, 2 usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: an event-sourced orchestrator for Meta's Messenger Platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: webhook ingress, health and metrics, on the sled log in `data_dir`.
    Serve {
        /// The TOML configuration (see deploy/baton.example.toml).
        #[arg(long, short, env = "BATON_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve(config).await,
    }
}

async fn serve(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config =
        server::Config::load(&path).with_context(|| format!("configuration {}", path.display()))?;
    server::init_tracing(config.log_format);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let store =
        event_log::SledStore::open(config.data_dir.join("log")).context("opening the event log")?;
    let store = Arc::new(store);
    let running = server::start(config, store, Arc::new(server::SystemClock)).await?;
    println!("baton listening on {}", running.base_url());
    let handle = running.handle.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("interrupt: stopping");
            handle.stop(true).await;
        }
    });
    running.wait().await.context("server")?;
    Ok(ExitCode::SUCCESS)
}
