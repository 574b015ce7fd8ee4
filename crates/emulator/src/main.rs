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
    /// Where Meta's clock starts (ms since the epoch). Default: the world's
    /// `epoch_ms` when it sets one, else the wall clock.
    #[arg(long)]
    epoch_ms: Option<i64>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (mut world, pinned) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let world = emulator::World::parse(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            (world, text.contains("epoch_ms"))
        }
        None => (emulator::World::default(), false),
    };
    // A process started by hand runs on the wall clock (Baton's clock), so
    // windows open and close as they would at Meta; tests and worlds that
    // set `epoch_ms` keep their fixed start.
    if let Some(ms) = args.epoch_ms {
        world.epoch_ms = ms;
    } else if !pinned {
        world.epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(world.epoch_ms, |d| {
                i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
            });
    }
    eprintln!(
        "baton-emulator: Meta's clock starts at {} ms since the epoch ({})",
        world.epoch_ms,
        if args.epoch_ms.is_some() || pinned {
            "as configured"
        } else {
            "the wall clock; --epoch-ms or epoch_ms pins it"
        }
    );
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
