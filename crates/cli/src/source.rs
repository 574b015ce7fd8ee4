//! Where the offline commands read the log from: the configured store (a
//! stopped server's sled data directory, or the PostgreSQL database of
//! `store = { postgres = … }`), an NDJSON export on disk, or an export
//! fetched from a running server. Records come out in position order; NDJSON is checked
//! against the hash chain as it is read, so a fold never trusts a damaged
//! file. It never writes to a log (see `redrive` for the one command that does).

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use event_log::{
    AnyStore, ChainVerifier, EventStore, OpenError, PgStore, PgStoreConfig, Record, SledStore,
    VerifyError,
};

use crate::http::ServerArgs;
use crate::CheckFailed;

/// The log-source flags shared by the read commands.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Data directory of a STOPPED server (the log is DIR/log; sled locks it
    /// while the server runs).
    #[arg(long, value_name = "DIR", conflicts_with = "export")]
    pub data_dir: Option<PathBuf>,
    /// The server's TOML configuration: its store (`data_dir` for sled, or
    /// PostgreSQL; unless --data-dir, --export or --server is given) and
    /// the pages' routing modes.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An NDJSON export (`baton export`, or GET /api/admin/export) to read
    /// instead of a data directory.
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
}

impl SourceArgs {
    /// The configuration, when `--config` was given.
    pub fn load_config(&self) -> anyhow::Result<Option<server::Config>> {
        self.config
            .as_deref()
            .map(|path| {
                server::Config::load(path)
                    .with_context(|| format!("configuration {}", path.display()))
            })
            .transpose()
    }
}

/// An event store to open: where a configuration (or `--data-dir`) says
/// the log is.
#[derive(Debug, Clone)]
pub enum LogAt {
    /// A sled log directory (`<data_dir>/log`).
    Sled(PathBuf),
    /// A shard of a PostgreSQL database; `url_env` names the environment
    /// variable the URL came from (the URL itself is never printed).
    Postgres {
        config: PgStoreConfig,
        url_env: String,
    },
}

impl LogAt {
    /// Where `config` keeps its log: sled in `<data_dir>/log`, or the
    /// PostgreSQL database of its `store` setting.
    pub fn configured(config: &server::Config) -> LogAt {
        match (&config.store, config.postgres_store_config()) {
            (server::config::StoreSetting::Postgres(pg), Some(pg_config)) => LogAt::Postgres {
                config: pg_config,
                url_env: pg.url_env.clone(),
            },
            _ => LogAt::Sled(config.sled_log_dir()),
        }
    }

    /// `--data-dir DIR` (a sled log in DIR/log), else the store the
    /// configuration `--config FILE` names; with the data directory
    /// (checkpoints are written under it). `None` when neither was given.
    pub fn from_flags(
        data_dir: Option<&Path>,
        config: Option<&Path>,
    ) -> anyhow::Result<Option<(PathBuf, LogAt)>> {
        Ok(match (data_dir, config) {
            (Some(dir), _) => Some((dir.to_path_buf(), LogAt::Sled(dir.join("log")))),
            (None, Some(path)) => {
                let config = server::Config::load(path)
                    .with_context(|| format!("configuration {}", path.display()))?;
                Some((config.data_dir.clone(), LogAt::configured(&config)))
            }
            (None, None) => None,
        })
    }

    /// A human name for messages.
    pub fn describe(&self) -> String {
        match self {
            LogAt::Sled(path) => format!("the event log in {}", path.display()),
            LogAt::Postgres { config, url_env } => format!(
                "the event log in PostgreSQL (shard {} of ${url_env})",
                config.shard
            ),
        }
    }

    /// Where the log is, shorter: sled's directory, or [`LogAt::describe`].
    pub fn location(&self) -> String {
        match self {
            LogAt::Sled(path) => path.display().to_string(),
            LogAt::Postgres { .. } => self.describe(),
        }
    }

    /// Opens the store (for sled, explaining the lock when a server still
    /// runs). A PostgreSQL database is not migrated: one whose schema is
    /// behind is refused, pointing at `baton migrate`.
    pub async fn open(&self) -> anyhow::Result<AnyStore> {
        match self {
            LogAt::Sled(path) => open_sled(path).map(AnyStore::Sled),
            LogAt::Postgres { config, .. } => PgStore::connect(config.clone().without_migrating())
                .await
                .map(AnyStore::Postgres)
                .with_context(|| format!("opening {}", self.describe())),
        }
    }
}

/// A resolved log source.
#[derive(Debug)]
pub enum Source {
    /// The configured store.
    Log(LogAt),
    /// An NDJSON file.
    File(PathBuf),
    /// An NDJSON export fetched from a running server.
    Fetched { url: String, body: Vec<u8> },
}

impl Source {
    /// Picks the source: `--export`, else `--data-dir`, else the running
    /// server's export (`--server`), else the configuration's `data_dir`.
    pub async fn resolve(
        args: &SourceArgs,
        config: Option<&server::Config>,
        server: &ServerArgs,
    ) -> anyhow::Result<Source> {
        if let Some(file) = &args.export {
            return Ok(Source::File(file.clone()));
        }
        if let Some(dir) = &args.data_dir {
            return Ok(Source::Log(LogAt::Sled(dir.join("log"))));
        }
        if let Some(remote) = server.remote()? {
            let url = remote.url("/api/admin/export");
            let body = remote.get("/api/admin/export").await?;
            return Ok(Source::Fetched { url, body });
        }
        if let Some(config) = config {
            return Ok(Source::Log(LogAt::configured(config)));
        }
        bail!("say where the log is: --data-dir DIR, --config FILE, --export FILE or --server URL")
    }

    /// A human name for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Log(log) => log.describe(),
            Source::File(path) => format!("the export {}", path.display()),
            Source::Fetched { url, .. } => format!("the export from {url}"),
        }
    }

    /// Opens the source for reading in position order.
    pub async fn open(&self) -> anyhow::Result<Reader> {
        Ok(match self {
            Source::Log(log) => {
                let store = log.open().await?;
                Reader::Store {
                    store: Some(store),
                    next: 1,
                }
            }
            Source::File(path) => Reader::Lines(LineReader::new(Box::new(BufReader::new(
                File::open(path).with_context(|| format!("opening {}", path.display()))?,
            )))),
            Source::Fetched { body, .. } => {
                Reader::Lines(LineReader::new(Box::new(Cursor::new(body.clone()))))
            }
        })
    }

    /// How many records the source holds (a file is counted by lines, so
    /// this is an upper bound for a damaged one).
    pub async fn count(&self) -> anyhow::Result<u64> {
        match self {
            Source::Log(log) => {
                let store = log.open().await?;
                let head = store.head().await.context("reading the log head")?;
                store.close().await;
                Ok(head.position)
            }
            Source::File(path) => {
                let reader = BufReader::new(
                    File::open(path).with_context(|| format!("opening {}", path.display()))?,
                );
                count_lines(reader).with_context(|| format!("reading {}", path.display()))
            }
            Source::Fetched { body, .. } => Ok(count_lines(Cursor::new(body))?),
        }
    }
}

fn count_lines(mut reader: impl BufRead) -> std::io::Result<u64> {
    let (mut n, mut last) = (0, b'\n');
    loop {
        let buf = reader.fill_buf()?;
        let Some(&end) = buf.last() else { break };
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        last = end;
        let len = buf.len();
        reader.consume(len);
    }
    // A last line without its newline still counts.
    Ok(if last == b'\n' { n } else { n + 1 })
}

/// Opens a stopped server's sled log, explaining the lock when the server
/// still runs.
pub fn open_sled(path: &Path) -> anyhow::Result<SledStore> {
    if !path.is_dir() {
        bail!(
            "there is no event log at {} (is the data directory right? the log lives in <data_dir>/log)",
            path.display()
        );
    }
    SledStore::open(path).map_err(|e| match e {
        OpenError::Locked { .. } => anyhow!(
            "the event log in {} is locked: a running server (or another baton command) holds it. \
             Stop the server first, or ask the running server instead with \
             --server URL --token ADMIN_TOKEN",
            path.display()
        ),
        other => anyhow!(other),
    })
}

/// Reads NDJSON lines and checks each against the chain.
pub struct LineReader {
    reader: Box<dyn BufRead>,
    verifier: ChainVerifier,
    line: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for LineReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader")
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl LineReader {
    fn new(reader: Box<dyn BufRead>) -> LineReader {
        LineReader {
            reader,
            verifier: ChainVerifier::new(),
            line: 0,
            buf: Vec::new(),
        }
    }

    fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        self.buf.clear();
        if self.reader.read_until(b'\n', &mut self.buf)? == 0 {
            return Ok(None);
        }
        self.line += 1;
        let text = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
        let record = event_log::parse_ndjson_line(text).map_err(|reason| {
            CheckFailed(
                VerifyError::Malformed {
                    line: self.line,
                    position: self.verifier.head().position + 1,
                    reason,
                }
                .to_string(),
            )
        })?;
        self.verifier.check(&record).map_err(|(position, fault)| {
            CheckFailed(
                VerifyError::Broken {
                    position,
                    line: Some(self.line),
                    fault,
                }
                .to_string(),
            )
        })?;
        Ok(Some(record))
    }
}

/// Records in position order, a batch at a time.
#[derive(Debug)]
pub enum Reader {
    Store { store: Option<AnyStore>, next: u64 },
    Lines(LineReader),
}

const BATCH: usize = 1024;

impl Reader {
    /// The next batch; empty at the end.
    pub async fn next_batch(&mut self) -> anyhow::Result<Vec<Record>> {
        match self {
            Reader::Store { store, next } => {
                let Some(s) = store.as_ref() else {
                    return Ok(Vec::new());
                };
                let records = s
                    .read_all(*next, BATCH)
                    .await
                    .context("reading the event log")?;
                match records.last() {
                    Some(last) => *next = last.position + 1,
                    None => {
                        // Release sled's lock (or the database connections)
                        // as soon as the reading is done.
                        if let Some(s) = store.take() {
                            s.close().await;
                        }
                    }
                }
                Ok(records)
            }
            Reader::Lines(lines) => {
                let mut out = Vec::with_capacity(BATCH);
                while out.len() < BATCH {
                    match lines.next_record()? {
                        Some(r) => out.push(r),
                        None => break,
                    }
                }
                Ok(out)
            }
        }
    }
}
