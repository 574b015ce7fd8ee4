//! Expiry: control lapses after 24 h without user activity. The timer fires
//! from the projections (`rules::tick` with the shell's clock) and records
//! `ThreadControlExpired`; time is a value, so tests move the clock and call
//! [`expire_due`] instead of waiting.

use std::time::Duration;

use domain::rules;
use domain::ThreadKey;
use event_log::EventStore;

use crate::record::record_with;
use crate::AppState;

/// Records expiry for every thread whose control has lapsed; returns how many.
pub async fn expire_due<S: EventStore + 'static>(state: &AppState<S>) -> usize {
    let now = state.clock.now();
    let due: Vec<ThreadKey> = {
        let snapshot = state.projections.read();
        snapshot
            .threads
            .iter()
            .filter(|(key, ledger)| {
                snapshot
                    .pages
                    .get(&key.page)
                    .is_some_and(|p| rules::tick(ledger, p, now).is_some())
            })
            .map(|(key, _)| key.clone())
            .collect()
    };
    let mut expired = 0;
    for key in due {
        match record_with(state, &key, |_, ledger, page| {
            (rules::tick(ledger, page, now).into_iter().collect(), ())
        })
        .await
        {
            Ok(((), events)) => expired += events.len(),
            Err(e) => tracing::warn!(thread = %key, error = %e, "cannot record expiry; will retry"),
        }
    }
    expired
}

/// Runs [`expire_due`] every `every`, forever.
pub async fn run<S: EventStore + 'static>(state: std::sync::Arc<AppState<S>>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let n = expire_due(&state).await;
        if n > 0 {
            tracing::info!(expired = n, "thread control expired");
        }
    }
}
