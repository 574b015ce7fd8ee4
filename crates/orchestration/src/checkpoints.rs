//! Anchoring the chain: when a checkpoint key is configured, the head of the
//! log (position, hash, time) is signed with Ed25519 on a schedule and
//! written to `<data_dir>/checkpoints/<position>.json`, outside the log, so
//! that `baton verify --checkpoint` detects a rewritten and re-hashed history
//! up to the last checkpoint. An export is signed too (`Baton::checkpoint_now`).

use std::sync::Arc;
use std::time::Duration;

use event_log::{CheckpointSigner, EventStore, SignedCheckpoint};

use crate::shutdown::Shutdown;
use crate::Baton;

/// Why no checkpoint was signed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFailure {
    #[error("no checkpoint_key is configured")]
    NoKey,
    #[error("the checkpoint key cannot be used")]
    Key(#[source] event_log::CheckpointError),
    #[error("the log's head cannot be read")]
    Head(#[source] event_log::StorageError),
    #[error("the checkpoint cannot be written")]
    Write(#[source] std::io::Error),
}

impl<S: EventStore + 'static> Baton<S> {
    /// The configured signer, if any.
    pub fn checkpoint_signer(&self) -> Result<CheckpointSigner, CheckpointFailure> {
        let path = self
            .config
            .checkpoint_key
            .as_ref()
            .ok_or(CheckpointFailure::NoKey)?;
        CheckpointSigner::from_file(path).map_err(CheckpointFailure::Key)
    }

    /// Signs the current head and writes it to `<data_dir>/checkpoints/`.
    pub async fn checkpoint_now(&self) -> Result<SignedCheckpoint, CheckpointFailure> {
        let signer = self.checkpoint_signer()?;
        self.sign_head(&signer).await
    }

    async fn sign_head(
        &self,
        signer: &CheckpointSigner,
    ) -> Result<SignedCheckpoint, CheckpointFailure> {
        let head = self.store.head().await.map_err(CheckpointFailure::Head)?;
        let signed = signer.sign(&head, self.clock.now().millis());
        event_log::write_checkpoint(&self.config.data_dir.join("checkpoints"), &signed)
            .map_err(CheckpointFailure::Write)?;
        Ok(signed)
    }
}

/// Signs a checkpoint every `checkpoint_every_secs` while the head moves,
/// and once more at the stop.
pub async fn run<S: EventStore + 'static>(baton: Arc<Baton<S>>, mut shutdown: Shutdown) {
    let signer = match baton.checkpoint_signer() {
        Ok(signer) => signer,
        Err(CheckpointFailure::NoKey) => return,
        Err(e) => {
            tracing::error!(error = %e, "checkpoints are off: the checkpoint key cannot be used");
            return;
        }
    };
    let every = Duration::from_secs(baton.config.checkpoint_every_secs);
    let mut signed_at = 0;
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(every) => false,
            () = shutdown.recv() => true,
        };
        let head = baton.store.head().await.map(|h| h.position).unwrap_or(0);
        if head > signed_at {
            match baton.sign_head(&signer).await {
                Ok(c) => {
                    signed_at = c.checkpoint.position;
                    tracing::info!(position = signed_at, "chain checkpoint signed");
                }
                Err(e) => tracing::error!(error = %e, "cannot sign a chain checkpoint"),
            }
        }
        if stopping {
            return;
        }
    }
}
