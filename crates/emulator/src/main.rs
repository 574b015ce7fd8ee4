//! `baton-emulator`: runs the Meta emulator as a process.
//!
//! Prints `listening on http://ADDR` as its first stdout line, then serves
//! until killed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "baton-emulator",
    about = "A stand-in for Meta's Graph API and webhooks"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// World description (JSON or TOML).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let world = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            emulator::World::parse(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => emulator::World::default(),
    };
    let handle = emulator::Emulator::start_on(world, args.listen).context("starting emulator")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", handle.base_url())?;
    out.flush()?;
    drop(out);
    // Serve until the process is killed.
    loop {
        std::thread::park();
    }
}
