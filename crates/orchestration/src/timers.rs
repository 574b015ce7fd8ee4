//! Expiry: control lapses after 24 h without user activity. The timer wakes
//! on the projections' next expiry (an index in time order, never a scan of
//! every thread) and records `ThreadControlExpired` through the recorder.
//! Time is the clock's, so tests move the clock and call
//! [`Baton::expire_due`] instead of waiting.

use std::sync::Arc;
use std::time::Duration;

use domain::rules;
use event_log::EventStore;

use crate::record::OnBusy;
use crate::shutdown::Shutdown;
use crate::Baton;

/// The longest the timer sleeps: it re-reads the clock at least this often
/// (a clock that is moved by hand, or a new expiry folded meanwhile).
const MAX_SLEEP: Duration = Duration::from_secs(1);

impl<S: EventStore + 'static> Baton<S> {
    /// Records expiry for every thread whose control has lapsed; returns how many.
    pub async fn expire_due(&self) -> usize {
        let now = self.clock.now();
        let due = self.projections.read().due_expiries(now);
        let mut expired = 0;
        for key in due {
            match self
                .recorder
                .record_on(&key, OnBusy::Fail, |_, ledger, page| {
                    (rules::tick(ledger, page, now).into_iter().collect(), ())
                })
                .await
            {
                Ok(r) => expired += r.events.len(),
                Err(e) => {
                    tracing::warn!(thread = %key, error = %e, "cannot record expiry; will retry")
                }
            }
        }
        expired
    }
}

/// Runs [`Baton::expire_due`] whenever the next expiry is due, until `shutdown`.
pub async fn run<S: EventStore + 'static>(baton: Arc<Baton<S>>, mut shutdown: Shutdown) {
    loop {
        let wait = baton
            .projections
            .read()
            .next_expiry()
            .map_or(MAX_SLEEP, |at| {
                let left = (at.millis() - baton.clock.now().millis()).max(0) as u64;
                Duration::from_millis(left).min(MAX_SLEEP)
            });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.recv() => return,
        }
        let n = baton.expire_due().await;
        if n > 0 {
            tracing::info!(expired = n, "thread control expired");
        }
    }
}
