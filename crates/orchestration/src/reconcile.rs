//! Reconciliation: ask Meta who owns a thread (`thread_owner`, with the token
//! of an app that may see it: the default app's or the legacy primary's) and
//! record the answer as a fact; the ledger follows Meta when they differ.

use std::collections::HashSet;
use std::sync::Arc;

use domain::events::{ControlView, Event};
use domain::rules::{self, Observation};
use domain::{AppId, ThreadKey};
use event_log::EventStore;
use tokio::sync::mpsc;

use crate::graph_client::GraphAnswer;
use crate::record::OnBusy;
use crate::shutdown::Shutdown;
use crate::Baton;

/// Threads waiting to be reconciled at most.
pub const QUEUE: usize = 1024;

/// The Graph API version the reconciler asks with when no call named one.
pub const DEFAULT_GRAPH_VERSION: &str = "v21.0";

impl<S: EventStore + 'static> Baton<S> {
    /// Asks Meta who owns `thread` and records what Meta says. Does nothing
    /// when no managed app may see ownership (zero-config, an external
    /// default app): webhooks then tell.
    #[tracing::instrument(skip_all, fields(page = %thread.page, psid = %thread.psid))]
    pub async fn reconcile(&self, thread: &ThreadKey, version: &str) {
        let Some(page) = self.config.page(&thread.page) else {
            return;
        };
        let Some(viewer) = page.mode.idle_holder() else {
            return; // zero-config: nobody can see ownership
        };
        let Some((_, managed)) = self.config.managed(viewer) else {
            return; // the default app is external: wait for webhooks instead
        };
        let Some(token) = managed.page_tokens.get(&thread.page) else {
            return;
        };
        let answer = self
            .graph
            .get(
                &managed.graph_base_url,
                version,
                thread.page.as_str(),
                "thread_owner",
                token.expose(),
                &[("recipient", thread.psid.as_str())],
            )
            .await;
        let GraphAnswer::Ok(body) = answer else {
            tracing::warn!("thread_owner could not be read to settle drift");
            return;
        };
        let owner = body["data"]
            .as_array()
            .and_then(|d| d.first())
            .and_then(|d| wire::webhook::id_string(&d["thread_owner"]["app_id"]))
            .and_then(|s| AppId::parse(s).ok());
        let now = self.clock.now();
        let recorded = self
            .recorder
            .record_on(thread, OnBusy::Retry, |_, ledger, page| {
                let observation = Observation::ThreadOwner {
                    at: now,
                    owner: owner.clone(),
                };
                (rules::observe(ledger, page, observation, now), ())
            })
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, "thread_owner answer could not be recorded");
        }
    }
}

impl<S> Baton<S> {
    /// Asks for a reconciliation of every thread whose owner `recorded`
    /// made unknown, or where it kept stale evidence that contradicts the
    /// ledger (an effect carried out after the events are durable).
    pub fn reconcile_unknown_owners(&self, recorded: &[Event]) {
        for thread in contradicted(recorded) {
            if let Err(e) = self.reconciles.try_send(thread.clone()) {
                tracing::warn!(%thread, error = %e, "reconciliation queue full; the next contradiction asks again");
            }
        }
    }
}

/// The threads whose recorded events call for asking Meta who owns them: a
/// drift to an unknown owner, or stale evidence that contradicts the ledger.
pub fn contradicted(recorded: &[Event]) -> impl Iterator<Item = &ThreadKey> {
    recorded.iter().filter_map(|e| match e {
        Event::OwnershipDriftDetected(d) if d.observed == ControlView::Unknown => Some(&d.thread),
        Event::StaleEvidenceIgnored(s) => Some(&s.thread),
        _ => None,
    })
}

/// Reconciles the threads asked for, one at a time, until `shutdown`.
pub async fn run<S: EventStore + 'static>(
    baton: Arc<Baton<S>>,
    mut queue: mpsc::Receiver<ThreadKey>,
    mut shutdown: Shutdown,
) {
    loop {
        let first = tokio::select! {
            next = queue.recv() => match next {
                Some(thread) => thread,
                None => return,
            },
            () = shutdown.recv() => return,
        };
        // Several requests for one thread ask Meta once.
        let mut batch = vec![first];
        let mut seen: HashSet<ThreadKey> = batch.iter().cloned().collect();
        while let Ok(more) = queue.try_recv() {
            if seen.insert(more.clone()) {
                batch.push(more);
            }
        }
        for thread in batch {
            baton.reconcile(&thread, DEFAULT_GRAPH_VERSION).await;
        }
    }
}
