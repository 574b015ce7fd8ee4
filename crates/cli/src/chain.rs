//! `baton verify` and `baton export`: walk the hash chain (and check it
//! against signed checkpoints), write NDJSON (and sign its head). Both only
//! read the log.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use event_log::{AnchoredReport, Anchors, CheckpointError, VerifyError, VerifyReport};
use serde_json::json;

use crate::anchor::{self, AnchorArgs};
use crate::http::ServerArgs;
use crate::source::{LogAt, Source, SourceArgs};
use crate::CheckFailed;

/// `baton verify`: the chain from position 1 and, with `--checkpoint`, the
/// signed checkpoints (signatures first, then the chain against them).
pub async fn verify(
    source: SourceArgs,
    server: ServerArgs,
    anchor: AnchorArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let loaded = match anchor.load()? {
        None => None,
        Some(Ok(loaded)) => Some(loaded),
        Some(Err(bad)) => {
            anchor::print_bad_checkpoint(&bad, json);
            return Ok(ExitCode::from(1));
        }
    };
    let config = source.load_config()?;
    let src = Source::resolve(&source, config.as_ref(), &server).await?;
    let anchors = loaded.as_ref().map(|l| &l.anchors);
    let result = match &src {
        Source::Log(log) => {
            let store = log.open().await?;
            let result = match anchors {
                Some(a) => event_log::verify_anchored(&store, a)
                    .await
                    .map(Checked::from),
                None => event_log::verify(&store)
                    .await
                    .map(Checked::from)
                    .map_err(Into::into),
            };
            store.close().await;
            result
        }
        Source::File(path) => {
            let reader = BufReader::new(
                File::open(path).with_context(|| format!("opening {}", path.display()))?,
            );
            verify_ndjson(reader, anchors)
        }
        Source::Fetched { body, .. } => verify_ndjson(&body[..], anchors),
    };
    match result {
        Ok(Checked { chain, anchored }) => {
            let VerifyReport { records, head } = chain;
            if json {
                let anchored_position = anchored
                    .as_ref()
                    .and_then(|a| a.anchored.as_ref())
                    .map(|c| c.position);
                println!(
                    "{}",
                    json!({
                        "ok": true,
                        "records": records,
                        "head_position": head.position,
                        "head_hash": head.hash.to_hex(),
                        "checkpoints": anchored.as_ref().map_or(0, |a| a.checkpoints),
                        "key_id": loaded.as_ref().map(|l| l.key.key_id()),
                        "anchored_position": anchored_position,
                        "not_anchored": head.position - anchored_position.unwrap_or(0),
                    })
                );
            } else {
                println!("ok: {records} records checked in {}", src.describe());
                println!("head position {}", head.position);
                println!("head hash     {}", head.hash);
                anchor::print_anchored(anchored.as_ref(), loaded.as_ref().map(|l| &l.key));
            }
            Ok(ExitCode::SUCCESS)
        }
        // A read or I/O failure says nothing about the chain: usage or I/O error.
        Err(CheckpointError::Chain(
            e @ (VerifyError::Io(_) | VerifyError::Storage(event_log::StorageError::Engine(_))),
        )) => Err(anyhow::Error::new(e).context(format!("reading {}", src.describe()))),
        Err(e) => {
            let line = match &e {
                CheckpointError::Chain(chain) => chain.line(),
                _ => None,
            };
            if json {
                println!(
                    "{}",
                    json!({"ok": false, "position": e.position(), "line": line, "error": e.to_string()})
                );
            } else {
                println!("FAILED: {}", src.describe());
                match (&e, e.position(), line) {
                    (CheckpointError::Chain(_), Some(p), Some(l)) => {
                        println!("first bad position {p} (line {l})")
                    }
                    (CheckpointError::Chain(_), Some(p), None) => {
                        println!("first bad position {p}")
                    }
                    (_, Some(p), _) => println!("checkpoint position {p}"),
                    _ => {}
                }
                println!("{e}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// What a verification covered: the chain, and the anchoring when asked.
struct Checked {
    chain: VerifyReport,
    anchored: Option<AnchoredReport>,
}

impl From<VerifyReport> for Checked {
    fn from(chain: VerifyReport) -> Checked {
        Checked {
            chain,
            anchored: None,
        }
    }
}

impl From<AnchoredReport> for Checked {
    fn from(anchored: AnchoredReport) -> Checked {
        Checked {
            chain: anchored.chain,
            anchored: Some(anchored),
        }
    }
}

fn verify_ndjson(
    reader: impl BufRead,
    anchors: Option<&Anchors>,
) -> Result<Checked, CheckpointError> {
    match anchors {
        Some(a) => event_log::verify_ndjson_anchored(reader, a).map(Checked::from),
        None => event_log::verify_ndjson(reader)
            .map(Checked::from)
            .map_err(Into::into),
    }
}

/// Where `baton export` reads from.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Data directory of a STOPPED server (the log is DIR/log).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The server's TOML configuration, for its store (`data_dir`, or
    /// PostgreSQL).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write the NDJSON here (atomically: a temporary file renamed at the
    /// end) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also sign the exported head with this private key (`baton keygen`),
    /// after checking the written file's chain, into `<out>.checkpoint.json`.
    #[arg(long, value_name = "PATH", requires = "out")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `baton export`.
pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    // Read the key before writing anything: a bad key is a usage error.
    let signer = args.key.as_deref().map(anchor::load_signer).transpose()?;
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
            let Some((_, log)) = LogAt::from_flags(data_dir.as_deref(), config.as_deref())? else {
                anyhow::bail!(
                    "say where the log is: --data-dir DIR, --config FILE or --server URL --token ADMIN_TOKEN"
                )
            };
            let store = log.open().await?;
            let head = event_log::export_ndjson_noted(&store, &mut out, |r| {
                orchestration::record::content_note(event_log::EventStore::vault(&store), r)
            })
            .await;
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
    let (Some(partial), Some(path)) = (partial, &args.out) else {
        eprintln!("{summary}");
        return Ok(ExitCode::SUCCESS);
    };
    let signed = match &signer {
        Some(signer) => match sign_export(signer, &partial) {
            Ok(signed) => Some(signed),
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        },
        None => None,
    };
    std::fs::rename(&partial, path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    println!("{summary} to {}", path.display());
    if let (Some(signed), Some(signer)) = (signed, &signer) {
        let mut name = path.as_os_str().to_owned();
        name.push(".checkpoint.json");
        let checkpoint = PathBuf::from(name);
        event_log::write_checkpoint_file(&checkpoint, &signed)
            .with_context(|| format!("writing {}", checkpoint.display()))?;
        println!(
            "signed position {} with key {} to {}",
            signed.checkpoint.position,
            signer.key_id(),
            checkpoint.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Verifies the chain of the file just written and signs its head: a
/// checkpoint vouches for every record up to it, so a broken chain (a damaged
/// log, or a tampered server answer) is never signed.
fn sign_export(
    signer: &event_log::CheckpointSigner,
    file: &Path,
) -> anyhow::Result<event_log::SignedCheckpoint> {
    let reader =
        BufReader::new(File::open(file).with_context(|| format!("opening {}", file.display()))?);
    let report = match event_log::verify_ndjson(reader) {
        Ok(report) => report,
        Err(e @ VerifyError::Io(_)) => {
            return Err(anyhow::Error::new(e).context(format!("reading {}", file.display())))
        }
        Err(e) => {
            return Err(CheckFailed(format!(
                "the exported chain does not verify, so it was not signed (nor kept): {e}"
            ))
            .into())
        }
    };
    if report.head.position == 0 {
        anyhow::bail!("the log is empty: there is no head to sign");
    }
    Ok(signer.sign(&report.head, anchor::now_ms()?))
}
