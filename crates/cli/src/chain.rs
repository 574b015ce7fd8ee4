//! `baton verify` and `baton export`: walk the hash chain, write NDJSON.
//! Both only read the log.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use event_log::{VerifyError, VerifyReport};
use serde_json::json;

use crate::http::ServerArgs;
use crate::source::{open_sled, Source, SourceArgs};

/// `baton verify`.
pub async fn verify(
    source: SourceArgs,
    server: ServerArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = source.load_config()?;
    let src = Source::resolve(&source, config.as_ref(), &server).await?;
    let result = match &src {
        Source::Sled(path) => {
            let store = open_sled(path)?;
            let result = event_log::verify(&store).await;
            store.close().await;
            result
        }
        Source::File(path) => event_log::verify_ndjson(BufReader::new(
            File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        Source::Fetched { body, .. } => event_log::verify_ndjson(&body[..]),
    };
    match result {
        Ok(VerifyReport { records, head }) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "records": records, "head_position": head.position, "head_hash": head.hash.to_hex()})
                );
            } else {
                println!("ok: {records} records checked in {}", src.describe());
                println!("head position {}", head.position);
                println!("head hash     {}", head.hash);
            }
            Ok(ExitCode::SUCCESS)
        }
        // A read or I/O failure says nothing about the chain: usage or I/O error.
        Err(
            e @ (VerifyError::Io(_) | VerifyError::Storage(event_log::StorageError::Engine(_))),
        ) => Err(anyhow::Error::new(e).context(format!("reading {}", src.describe()))),
        Err(e) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": false, "position": e.position(), "line": e.line(), "error": e.to_string()})
                );
            } else {
                println!("FAILED: {}", src.describe());
                match (e.position(), e.line()) {
                    (Some(p), Some(l)) => println!("first bad position {p} (line {l})"),
                    (Some(p), None) => println!("first bad position {p}"),
                    _ => {}
                }
                println!("{e}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// Where `baton export` reads from.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Data directory of a STOPPED server (the log is DIR/log).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The server's TOML configuration, for its `data_dir`.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write the NDJSON here (atomically: a temporary file renamed at the
    /// end) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `baton export`.
pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (mut out, partial): (Box<dyn Write>, Option<PathBuf>) = match &args.out {
        Some(path) => {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".partial");
            let partial = path.with_file_name(name);
            let file = File::create(&partial)
                .with_context(|| format!("creating {}", partial.display()))?;
            (Box::new(BufWriter::new(file)), Some(partial))
        }
        None => (Box::new(BufWriter::new(std::io::stdout().lock())), None),
    };
    let written = async {
        let summary = match (args.server.remote()?, &args.data_dir, &args.config) {
        (Some(remote), None, _) => {
            let body = remote.get("/api/admin/export").await?;
            out.write_all(&body).context("writing the export")?;
            let lines = body.iter().filter(|&&b| b == b'\n').count();
            format!("exported {lines} records from {}", remote.url(""))
        }
        (Some(_), Some(_), _) => anyhow::bail!("give either --data-dir or --server, not both"),
        (None, data_dir, config) => {
            let dir = match (data_dir, config) {
                (Some(dir), _) => dir.clone(),
                (None, Some(path)) => {
                    server::Config::load(path)
                        .with_context(|| format!("configuration {}", path.display()))?
                        .data_dir
                }
                (None, None) => anyhow::bail!(
                    "say where the log is: --data-dir DIR, --config FILE or --server URL --token ADMIN_TOKEN"
                ),
            };
            let store = open_sled(&dir.join("log"))?;
            let head = event_log::export_ndjson(&store, &mut out).await;
            store.close().await;
            let head = head.context("exporting the log")?;
            format!(
                "exported {} records, head hash {}",
                head.position, head.hash
            )
        }
    };
        out.flush().context("writing the export")?;
        anyhow::Ok(summary)
    }
    .await;
    let summary = match written {
        Ok(summary) => summary,
        Err(e) => {
            // Leave no half-written export behind.
            if let Some(partial) = &partial {
                let _ = std::fs::remove_file(partial);
            }
            return Err(e);
        }
    };
    drop(out);
    if let (Some(partial), Some(path)) = (partial, &args.out) {
        std::fs::rename(&partial, path)
            .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
        println!("{summary} to {}", path.display());
    } else {
        eprintln!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}
