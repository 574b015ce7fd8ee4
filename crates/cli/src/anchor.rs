//! Signed checkpoints from the command line: `baton keygen`, `baton
//! checkpoint`, and the `--checkpoint`/`--public-key` flags of `baton
//! verify`. The signing and checking live in `event_log::checkpoint`; this
//! reads flags and files and prints. It never writes to a log.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use domain::Timestamp;
use event_log::{
    AnchoredReport, Anchors, CheckpointError, CheckpointSigner, PublicKey, SignedCheckpoint,
};
use serde_json::json;

use crate::source::LogAt;

/// `baton keygen` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct KeygenArgs {
    /// Write the private key here (mode 0600) and the public key to PATH.pub.
    /// Neither may exist yet.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

/// `baton keygen`.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let signer = CheckpointSigner::generate().context("reading randomness from /dev/urandom")?;
    let public_path = signer.write_key_files(&args.out)?;
    println!(
        "private key  {} (mode 0600: keep it secret; whoever holds it can sign any log)",
        args.out.display()
    );
    println!("public key   {}", public_path.display());
    println!("key id       {}", signer.key_id());
    println!("public key   {}", signer.public_key());
    Ok(ExitCode::SUCCESS)
}

/// `baton checkpoint` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckpointArgs {
    /// Data directory of a STOPPED server (the log is DIR/log).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The server's TOML configuration, for its `data_dir`.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The private key file (`baton keygen`); it must not be readable by
    /// group or others.
    #[arg(long, value_name = "PATH")]
    pub key: PathBuf,
    /// Write the checkpoint here instead of `DIR/checkpoints/<position>.json`.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `baton checkpoint`: verify the whole chain, then sign its head.
pub async fn checkpoint(args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let signer = load_signer(&args.key)?;
    let Some((dir, log)) = LogAt::from_flags(args.data_dir.as_deref(), args.config.as_deref())?
    else {
        bail!("say where the log is: --data-dir DIR or --config FILE")
    };
    let store = log.open().await?;
    let verified = event_log::verify(&store).await;
    store.close().await;
    // Sign only a chain that verifies: a checkpoint vouches for everything
    // up to its position.
    let head = match verified {
        Ok(report) => report.head,
        // A read failure says nothing about the chain: an I/O error (exit 2).
        Err(
            e @ (event_log::VerifyError::Io(_)
            | event_log::VerifyError::Storage(event_log::StorageError::Engine(_))),
        ) => {
            return Err(anyhow::Error::new(e).context(format!("reading {}", log.location())));
        }
        Err(e) => {
            println!("FAILED: {}", log.describe());
            if let Some(p) = e.position() {
                println!("first bad position {p}");
            }
            println!("{e}");
            println!("nothing signed");
            return Ok(ExitCode::from(1));
        }
    };
    if head.position == 0 {
        bail!("{} is empty: there is no head to sign", log.describe());
    }
    let signed = signer.sign(&head, now_ms()?);
    let path = match &args.out {
        Some(out) => {
            event_log::write_checkpoint_file(out, &signed)
                .with_context(|| format!("writing {}", out.display()))?;
            out.clone()
        }
        None => {
            let checkpoints = dir.join("checkpoints");
            event_log::write_checkpoint(&checkpoints, &signed)
                .with_context(|| format!("writing a checkpoint in {}", checkpoints.display()))?
        }
    };
    println!(
        "signed position {} (hash {}) with key {}",
        head.position,
        head.hash,
        signer.key_id()
    );
    println!("checkpoint   {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Reads a private key file, saying which flag it came from.
pub fn load_signer(path: &Path) -> anyhow::Result<CheckpointSigner> {
    CheckpointSigner::from_file(path).with_context(|| format!("--key {}", path.display()))
}

/// Milliseconds since the Unix epoch, from this machine's clock: the
/// signing time written into a checkpoint.
pub fn now_ms() -> anyhow::Result<i64> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    i64::try_from(since.as_millis()).context("the system clock is out of range")
}

/// `--checkpoint` and `--public-key` of `baton verify`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AnchorArgs {
    /// A signed checkpoint (`baton checkpoint`, `baton export --key`), or a
    /// directory of them (every *.json file in it). Repeatable. Each
    /// signature is checked with --public-key, then the record at each
    /// checkpoint's position must carry the signed hash.
    #[arg(long, value_name = "FILE|DIR", requires = "public_key")]
    pub checkpoint: Vec<PathBuf>,
    /// The public key of the checkpoints: a file (KEY.pub from `baton
    /// keygen`) or its 64 hexadecimal characters.
    #[arg(long, value_name = "PATH|HEX", requires = "checkpoint")]
    pub public_key: Option<String>,
}

/// Checkpoints whose signatures verified, ready for the chain walk.
#[derive(Debug)]
pub struct Loaded {
    pub anchors: Anchors,
    pub key: PublicKey,
}

/// A checkpoint that failed before the chain was read: which file, and why.
#[derive(Debug)]
pub struct BadCheckpoint {
    pub file: PathBuf,
    pub error: CheckpointError,
}

impl AnchorArgs {
    /// Reads the key and every checkpoint file and checks each signature.
    /// `Ok(None)` without --checkpoint; `Ok(Some(Err(..)))` when a checkpoint
    /// is not one or its signature fails (a failed check, exit 1); `Err` for
    /// usage and I/O errors (exit 2).
    pub fn load(&self) -> anyhow::Result<Option<Result<Loaded, BadCheckpoint>>> {
        if self.checkpoint.is_empty() {
            return Ok(None);
        }
        let Some(key_arg) = &self.public_key else {
            bail!("--checkpoint needs --public-key PATH|HEX");
        };
        let key = public_key(key_arg)?;
        let mut files = Vec::new();
        for path in &self.checkpoint {
            if path.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                    .with_context(|| format!("listing {}", path.display()))?
                    .map(|entry| entry.map(|e| e.path()))
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("listing {}", path.display()))?;
                found.retain(|p| p.extension().is_some_and(|e| e == "json") && p.is_file());
                if found.is_empty() {
                    bail!("there is no checkpoint (*.json) in {}", path.display());
                }
                found.sort();
                files.extend(found);
            } else {
                files.push(path.clone());
            }
        }
        let mut checkpoints = Vec::with_capacity(files.len());
        for file in files {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let checked = SignedCheckpoint::from_json(&bytes)
                .and_then(|signed| signed.verify(&key).map(|()| signed));
            match checked {
                Ok(signed) => checkpoints.push(signed),
                Err(error) => return Ok(Some(Err(BadCheckpoint { file, error }))),
            }
        }
        let anchors = Anchors::verified(checkpoints, &key)?;
        Ok(Some(Ok(Loaded { anchors, key })))
    }
}

/// `--public-key`: an existing file, else the hexadecimal key itself.
fn public_key(arg: &str) -> anyhow::Result<PublicKey> {
    let path = Path::new(arg);
    if path.exists() {
        return PublicKey::from_file(path).with_context(|| format!("--public-key {arg}"));
    }
    PublicKey::from_hex(arg)
        .with_context(|| format!("--public-key {arg:?}: not a file, nor 64 hexadecimal characters"))
}

/// Prints a checkpoint that failed its signature (or is not one).
pub fn print_bad_checkpoint(bad: &BadCheckpoint, json: bool) {
    let position = bad.error.position();
    if json {
        println!(
            "{}",
            json!({"ok": false, "checkpoint": bad.file.display().to_string(), "position": position, "error": bad.error.to_string()})
        );
        return;
    }
    println!("FAILED: checkpoint {}", bad.file.display());
    if let Some(p) = position {
        println!("checkpoint position {p}");
    }
    println!("{}", bad.error);
    println!("the chain was not checked against it");
}

/// The anchoring lines of a successful `baton verify`.
pub fn print_anchored(report: Option<&AnchoredReport>, key: Option<&PublicKey>) {
    let (Some(report), Some(key)) = (report, key) else {
        println!("not anchored: no checkpoint given");
        return;
    };
    let n = report.checkpoints;
    let plural = if n == 1 { "" } else { "s" };
    match &report.anchored {
        Some(last) => {
            println!(
                "anchored      up to position {} by {n} checkpoint{plural} of key {} (signed {})",
                last.position,
                key.key_id(),
                crate::time::format(Timestamp::from_millis(last.at_ms)),
            );
            println!(
                "not anchored  {} records after position {}",
                report.unanchored(),
                last.position
            );
        }
        None => {
            println!("anchored      nothing: every checkpoint is at position 0");
            println!("not anchored  {} records", report.unanchored());
        }
    }
}
