//! The durable cursor of one backend: the lowest log position not yet settled
//! for the app, plus the positions above it that are already settled (so a
//! restart repeats as little as possible). Written atomically: temp file,
//! fsync, rename, fsync of the directory. It knows nothing of HTTP.
//!
//! On a store that several nodes share, the cursors live in that store
//! instead ([`SharedCursors`]), written under the owner's epoch, so a new
//! owner dispatches from where the old one stopped.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use domain::ids::AppId;
use serde::{Deserialize, Serialize};

/// Settled positions above the cursor kept in the file at most; beyond that
/// only the cursor is kept and a restart repeats more (never less).
pub const MAX_SETTLED_KEPT: usize = 4096;

/// What the cursor file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorState {
    /// Lowest position not yet settled (everything below it is settled).
    pub cursor: u64,
    /// Positions at or above `cursor` that are settled, ascending.
    #[serde(default)]
    pub settled: Vec<u64>,
}

/// One app's cursor file.
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
}

impl CursorFile {
    pub fn new(dir: &Path, app: &AppId) -> CursorFile {
        CursorFile {
            path: dir.join(format!("{app}.cursor")),
            tmp: dir.join(format!("{app}.cursor.tmp")),
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored state, or `None` when the app has no cursor yet.
    pub fn load(&self) -> io::Result<Option<CursorState>> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the stored state atomically and durably.
    pub fn store(&self, state: &CursorState) -> io::Result<()> {
        let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
        let mut file = File::create(&self.tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.path)?;
        // The rename is durable only once the directory entry is.
        #[cfg(unix)]
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

/// A boxed future, so that [`SharedCursors`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Cursors kept in the store that the nodes share.
pub trait SharedCursors: std::fmt::Debug + Send + Sync + 'static {
    /// `app`'s stored cursor, or `None` when it has none yet.
    fn load<'a>(&'a self, app: &'a AppId) -> BoxFuture<'a, io::Result<Option<CursorState>>>;
    /// Replaces `app`'s cursor; refused unless this node owns the shard.
    fn store<'a>(&'a self, app: &'a AppId, state: &'a CursorState)
        -> BoxFuture<'a, io::Result<()>>;
}

impl SharedCursors for event_log::PgStore {
    fn load<'a>(&'a self, app: &'a AppId) -> BoxFuture<'a, io::Result<Option<CursorState>>> {
        Box::pin(async move {
            match self
                .load_dispatch_cursor(app.as_str())
                .await
                .map_err(io::Error::other)?
            {
                None => Ok(None),
                Some(json) => serde_json::from_str(&json)
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        })
    }

    fn store<'a>(
        &'a self,
        app: &'a AppId,
        state: &'a CursorState,
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let json = serde_json::to_string(state).map_err(io::Error::other)?;
            self.store_dispatch_cursor(app.as_str(), &json)
                .await
                .map_err(io::Error::other)
        })
    }
}

impl SharedCursors for event_log::AnyStore {
    fn load<'a>(&'a self, app: &'a AppId) -> BoxFuture<'a, io::Result<Option<CursorState>>> {
        match self {
            event_log::AnyStore::Postgres(pg) => SharedCursors::load(pg, app),
            event_log::AnyStore::Sled(_) => Box::pin(async { Err(no_shared_cursors()) }),
        }
    }

    fn store<'a>(
        &'a self,
        app: &'a AppId,
        state: &'a CursorState,
    ) -> BoxFuture<'a, io::Result<()>> {
        match self {
            event_log::AnyStore::Postgres(pg) => SharedCursors::store(pg, app, state),
            event_log::AnyStore::Sled(_) => Box::pin(async { Err(no_shared_cursors()) }),
        }
    }
}

fn no_shared_cursors() -> io::Error {
    io::Error::other("the embedded sled log keeps no shared cursors: they are files in data_dir")
}

/// Where one backend's cursor is kept.
#[derive(Debug, Clone)]
pub enum CursorSlot {
    /// A file of its own (the embedded store).
    File(CursorFile),
    /// The shared store's row for the app.
    Shared {
        cursors: Arc<dyn SharedCursors>,
        app: AppId,
    },
}

impl CursorSlot {
    pub async fn load(&self) -> io::Result<Option<CursorState>> {
        match self {
            CursorSlot::File(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.load())
                    .await
                    .map_err(io::Error::other)?
            }
            CursorSlot::Shared { cursors, app } => cursors.load(app).await,
        }
    }

    pub async fn store(&self, state: &CursorState) -> io::Result<()> {
        match self {
            CursorSlot::File(file) => {
                let (file, state) = (file.clone(), state.clone());
                tokio::task::spawn_blocking(move || file.store(&state))
                    .await
                    .map_err(io::Error::other)?
            }
            CursorSlot::Shared { cursors, app } => cursors.store(app, state).await,
        }
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            CursorSlot::File(file) => file.path().display().to_string(),
            CursorSlot::Shared { app, .. } => format!("the shared store's cursor of app {app}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_a_round_trip_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let file = CursorFile::new(dir.path(), &AppId::parse("111").unwrap());
        assert_eq!(file.load().unwrap(), None);
        let first = CursorState {
            cursor: 7,
            settled: vec![9, 12],
        };
        file.store(&first).unwrap();
        assert_eq!(file.load().unwrap(), Some(first));
        let second = CursorState {
            cursor: 13,
            settled: vec![],
        };
        file.store(&second).unwrap();
        assert_eq!(file.load().unwrap(), Some(second));
        assert!(!dir.path().join("111.cursor.tmp").exists());
    }

    #[test]
    fn a_corrupt_cursor_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = CursorFile::new(dir.path(), &AppId::parse("111").unwrap());
        fs::write(file.path(), b"{not json").unwrap();
        assert_eq!(file.load().unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
