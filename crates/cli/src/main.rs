//! The `baton` binary. `serve` runs the server on the configured store (the
//! embedded sled log, or PostgreSQL; `migrate` prepares the latter); the
//! other commands serve operators and auditors over the same crates: verify
//! the chain (and its signed checkpoints), export NDJSON, sign checkpoints,
//! replay the projections, audit a thread or the sends, redrive a dead
//! letter. They read the configured store (a STOPPED server's data
//! directory, for sled), an NDJSON export, or ask a running server over its
//! admin API.
//! Exit codes: 0 ok, 1 a check failed, 2 usage or I/O error.

mod anchor;
mod audit;
mod chain;
mod erase;
mod http;
mod init;
mod redrive;
mod replay;
mod source;
mod time;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use domain::Timestamp;

use crate::http::ServerArgs;
use crate::source::SourceArgs;

const EXIT_CODES: &str = "\
Exit codes: 0 ok; 1 a check failed (chain broken, a checkpoint fails, replay differs, redrive refused); 2 usage or I/O error.

The log lives in <data_dir>/log, which a running server locks: offline commands need the
server stopped, or use --server URL --token ADMIN_TOKEN to ask the running server. With
store = { postgres = ... } in the configuration, --config FILE reads the log from PostgreSQL.";

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: an event-sourced orchestrator for Meta's Messenger Platform",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A check failed (a broken chain in a file being read, a replay that
/// differs): exit code 1, unlike usage and I/O errors (2).
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play a whole conversation offline and print its audit timeline
    ///
    /// Starts the Meta emulator, Baton on an embedded sled log, a sample bot
    /// backend and a sample human-inbox backend, then: the user asks for a
    /// human, the bot passes control, the human answers, a send outside the
    /// window is refused with its reason, the human hands back, the bot
    /// answers again. With --data-dir the log (and its baton.toml) is kept
    /// for `baton verify`, `replay` and `audit`.
    #[command(after_help = EXIT_CODES)]
    Demo {
        /// Keep the demo's data directory here (it must not hold a log yet).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Run the server: webhook ingress, the Graph-compatible API, dispatch, health and metrics, on the configured store (sled in `data_dir` by default, or PostgreSQL).
    Serve {
        /// The TOML configuration (see deploy/baton.example.toml).
        #[arg(long, short, env = "BATON_CONFIG")]
        config: PathBuf,
    },
    /// Apply the event log's schema migrations to the configured PostgreSQL
    ///
    /// Idempotent, and safe while other nodes run or migrate (one
    /// transaction under an advisory lock). `baton serve` applies them too;
    /// run this first to keep schema changes a separate, deliberate step.
    /// On the embedded sled store there is nothing to do.
    #[command(after_help = EXIT_CODES)]
    Migrate {
        /// The TOML configuration (its `store` setting).
        #[arg(long, short, env = "BATON_CONFIG")]
        config: PathBuf,
    },
    /// Check the log's hash chain from position 1, and its signed checkpoints
    ///
    /// Prints the records checked and the head hash, or the first bad
    /// position (and NDJSON line) and exits 1. The chain alone does not
    /// detect a log rewritten and re-hashed from some record on: with
    /// --checkpoint and --public-key, each checkpoint's signature is checked,
    /// then the record at its position must carry the signed hash; the output
    /// says up to which position the chain is anchored.
    #[command(after_help = EXIT_CODES)]
    Verify {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        anchor: anchor::AnchorArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the log as NDJSON, one record per line
    ///
    /// Every hashed field is kept, so the file verifies on another machine.
    /// Reads a stopped server's data directory, or asks a running server.
    /// With --key, also checks the written chain and signs its head into
    /// `<out>.checkpoint.json`.
    #[command(after_help = EXIT_CODES)]
    Export(chain::ExportArgs),
    /// Write a working, commented configuration for a Page with a bot and a human inbox
    ///
    /// Every secret and token is generated; what is left to fill in (each
    /// app's Meta app secret and Page token, the backends' URLs) is marked
    /// REPLACE. The file is created with mode 0600 and never overwritten.
    #[command(after_help = EXIT_CODES)]
    Init(init::InitArgs),
    /// Create a checkpoint signing key: PATH (private, mode 0600) and PATH.pub
    ///
    /// Prints the public key and its key id. Never overwrites a file.
    #[command(after_help = EXIT_CODES)]
    Keygen(anchor::KeygenArgs),
    /// Sign the head of a STOPPED server's log as a checkpoint
    ///
    /// Verifies the whole chain first (exit 1, nothing signed, if it is
    /// broken), then writes `DIR/checkpoints/<position>.json` (or --out).
    /// `baton verify --checkpoint` later proves that no record up to that
    /// position was rewritten, even with every later hash recomputed.
    #[command(after_help = EXIT_CODES)]
    Checkpoint(anchor::CheckpointArgs),
    /// Rebuild the projections from the log and print their digest
    ///
    /// Also checks that folding is deterministic (all at once equals two
    /// halves with a clone between) and, with --server, that the digest at
    /// the server's position matches the server's; exits 1 if not.
    #[command(after_help = EXIT_CODES)]
    Replay {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A thread's state at a time and why, or every send and refusal
    Audit {
        #[command(subcommand)]
        what: Audit,
    },
    /// Deliver a dead-lettered item to an app's backend again
    ///
    /// With --server, asks the running server. Offline (--data-dir or
    /// --config), appends a DispatchRedriveRequested to the stopped server's
    /// log after checking that the position is a dead letter of that app (or
    /// the item it names); the dispatcher picks it up when the server starts.
    #[command(after_help = EXIT_CODES)]
    Redrive(redrive::RedriveArgs),
    /// Erase one person's content on one page (their words, what was sent to them, the raw deliveries)
    ///
    /// With --server URL --token ADMIN_TOKEN, through the running server's
    /// admin API; with --data-dir (or --config), in a stopped server's data
    /// directory. The person's content keys are destroyed and ContentErased
    /// is recorded; ownership and decision facts stay, and `baton verify`
    /// still passes. See docs/privacy.md.
    #[command(after_help = EXIT_CODES)]
    Erase(erase::EraseArgs),
}

#[derive(Debug, Subcommand)]
enum Audit {
    /// Who owned a thread at a time, and the facts and decisions that led there
    ///
    /// Folds the thread's events whose own time is at or before --at, then
    /// shows the state (idle/active/unknown, owner, answering app, control
    /// expiry, window, tokens, pending requests) and the history, one line
    /// per event. Needs --config for the page's routing mode.
    #[command(after_help = EXIT_CODES)]
    Thread {
        /// The page id.
        page: String,
        /// The user's page-scoped id.
        psid: String,
        /// Fold the facts up to this time: RFC 3339 (2026-11-01T14:02:00Z) or
        /// epoch milliseconds. Default: now.
        #[arg(long, value_name = "TIME", value_parser = time::parse)]
        at: Option<Timestamp>,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List sends: accepted ones with basis and outcome, refused ones with code and reason
    #[command(after_help = EXIT_CODES)]
    Sends {
        /// Only the refused sends.
        #[arg(long)]
        refused: bool,
        /// Only sends decided at or after this time (RFC 3339 or epoch ms).
        #[arg(long, value_name = "TIME", value_parser = time::parse)]
        since: Option<Timestamp>,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
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
        Err(e) if e.downcast_ref::<CheckFailed>().is_some() => {
            eprintln!("baton: {e:#}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo { data_dir } => {
            let mut out = std::io::stdout();
            match data_dir {
                Some(dir) => demo::run_in(&dir, &mut out).await?,
                None => demo::run(&mut out).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config } => serve(config).await,
        Command::Migrate { config } => migrate(config).await,
        Command::Verify {
            source,
            server,
            anchor,
            json,
        } => chain::verify(source, server, anchor, json).await,
        Command::Export(args) => chain::export(args).await,
        Command::Init(args) => init::init(args),
        Command::Keygen(args) => anchor::keygen(args),
        Command::Checkpoint(args) => anchor::checkpoint(args).await,
        Command::Replay {
            source,
            server,
            json,
        } => replay::replay(source, server, json).await,
        Command::Audit {
            what:
                Audit::Thread {
                    page,
                    psid,
                    at,
                    source,
                    server,
                    json,
                },
        } => audit::thread(page, psid, at, source, server, json).await,
        Command::Audit {
            what:
                Audit::Sends {
                    refused,
                    since,
                    source,
                    server,
                    json,
                },
        } => audit::sends(refused, since, source, server, json).await,
        Command::Redrive(args) => redrive::redrive(args).await,
        Command::Erase(args) => erase::erase(args).await,
    }
}

async fn serve(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config =
        server::Config::load(&path).with_context(|| format!("configuration {}", path.display()))?;
    server::init_tracing(config.log_format);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    // The server is generic over the store: each arm runs it on the
    // concrete type, so sled's path is what it was before PostgreSQL.
    match config.store.clone() {
        server::config::StoreSetting::Sled => {
            // The projection snapshot is read while the log opens.
            let reading = server::snapshot::start_reading(&config);
            let store = event_log::SledStore::open_with(
                config.sled_log_dir(),
                event_log::StoreConfig {
                    cache_capacity_bytes: config.log_cache_bytes,
                    ..event_log::StoreConfig::default()
                },
            )
            .context("opening the event log")?;
            let running = server::start_reading(
                config,
                Arc::new(store),
                Arc::new(server::SystemClock),
                reading,
            )
            .await?;
            serve_running(running).await
        }
        server::config::StoreSetting::Postgres(setting) => {
            let store = event_log::PgStore::connect(setting.store_config())
                .await
                .context("opening the event log in PostgreSQL")?;
            let running = server::start_leased(
                config,
                Arc::new(store),
                Arc::new(server::SystemClock),
                server::Cluster::from_setting(&setting),
            )
            .await?;
            serve_running(running).await
        }
    }
}

async fn serve_running<S: event_log::EventStore + 'static>(
    running: server::Running<S>,
) -> anyhow::Result<ExitCode> {
    println!("baton listening on {}", running.base_url());
    server::serve_until_signal(running)
        .await
        .context("server")?;
    Ok(ExitCode::SUCCESS)
}

/// `baton migrate`.
async fn migrate(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config =
        server::Config::load(&path).with_context(|| format!("configuration {}", path.display()))?;
    let server::config::StoreSetting::Postgres(pg) = &config.store else {
        println!(
            "nothing to migrate: the store is the embedded sled log in {} (store = \"sled\")",
            config.sled_log_dir().display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let applied = event_log::postgres::migrate(pg.url.expose())
        .await
        .with_context(|| format!("migrating the PostgreSQL database of ${}", pg.url_env))?;
    match applied {
        0 => println!(
            "the PostgreSQL database of ${} is up to date: no migration to apply",
            pg.url_env
        ),
        n => println!(
            "applied {n} migration(s) to the PostgreSQL database of ${}",
            pg.url_env
        ),
    }
    Ok(ExitCode::SUCCESS)
}
