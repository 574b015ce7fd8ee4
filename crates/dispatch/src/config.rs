//! Dispatch configuration: one typed tree (per-app backends, global retry and
//! dead-letter policy) and the injectable clock. It reads no files and no
//! environment; the shell builds it from its own configuration.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use domain::ids::{AppId, Span};
pub use orchestration::{Clock, ManualClock, SystemClock};

/// An app secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret bytes, for signing only.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One managed app's backend.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub app: AppId,
    /// Where the app's webhook handler listens (`http://…/webhook`).
    pub url: String,
    /// The app secret the envelopes are signed with.
    pub secret: Secret,
}

/// Where a backend without a cursor file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Position 1: everything ever recorded for the app (nothing is lost).
    #[default]
    Beginning,
    /// The log's head when the dispatcher starts: only what arrives later.
    Head,
}

/// Dispatch configuration.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub backends: Vec<BackendConfig>,
    /// Directory holding one cursor file per app (`<app>.cursor`).
    pub cursor_dir: PathBuf,
    /// First retry delay; doubles per attempt up to `backoff_cap`, with jitter.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Dead-letter an item after this many failed attempts (`None`: only age counts).
    pub max_attempts: Option<u32>,
    /// Dead-letter an item that is still failing this long after it was
    /// recorded (or after its redrive was requested), by `clock`.
    pub dead_letter_age: Span,
    /// Requests in flight per backend (each thread has at most one).
    pub concurrency: usize,
    /// Items read from the log but not yet settled, per backend. When full,
    /// the backend stops reading until something settles.
    pub max_pending: usize,
    /// Timeout of one POST, connection included.
    pub http_timeout: Duration,
    /// Least time between two cursor writes of one backend. A crash repeats
    /// at most what settled in this interval (plus what was in flight).
    pub cursor_flush_interval: Duration,
    /// Records per log read.
    pub read_batch: usize,
    pub start_at: StartAt,
    pub clock: Arc<dyn Clock>,
    /// When set, cursors live in this shared store (written under the
    /// owner's epoch) instead of files in `cursor_dir`.
    pub shared_cursors: Option<Arc<dyn crate::cursor::SharedCursors>>,
}

impl DispatchConfig {
    /// Defaults an operator would expect: retries from 500 ms up to 5 min,
    /// dead letter after 24 h, 8 requests per backend, 10 s timeout.
    pub fn new(backends: Vec<BackendConfig>, cursor_dir: impl Into<PathBuf>) -> DispatchConfig {
        DispatchConfig {
            backends,
            cursor_dir: cursor_dir.into(),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(300),
            max_attempts: None,
            dead_letter_age: Span::hours(24),
            concurrency: 8,
            max_pending: 10_000,
            http_timeout: Duration::from_secs(10),
            cursor_flush_interval: Duration::from_millis(200),
            read_batch: 512,
            start_at: StartAt::Beginning,
            clock: Arc::new(SystemClock),
            shared_cursors: None,
        }
    }
}
