//! Reconciliation: ask Meta who owns a thread (`thread_owner`, with the token
//! of an app that may see it: the default app's or the legacy primary's) and
//! record the answer as a fact; the ledger follows Meta when they differ.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use domain::events::{ControlView, DriftEvidence, Event};
use domain::rules::{self, Observation};
use domain::{AppId, PageId, Span, ThreadKey, Timestamp};
use event_log::EventStore;
use tokio::sync::mpsc;

use crate::config::{ManagedApp, Secret};
use crate::graph_client::GraphAnswer;
use crate::outbox::limiter::RateLimiter;
use crate::record::OnBusy;
use crate::shutdown::Shutdown;
use crate::Baton;

/// Threads waiting to be reconciled at most.
pub const QUEUE: usize = 1024;

/// The Graph API version the reconciler asks with when no call named one.
pub const DEFAULT_GRAPH_VERSION: &str = "v21.0";

impl<S: EventStore + 'static> Baton<S> {
    /// Asks Meta who owns `thread` and records what Meta says; returns
    /// whether Meta was asked. Does nothing when no managed app may see
    /// ownership (zero-config, an external default app): webhooks then tell.
    #[tracing::instrument(skip_all, fields(page = %thread.page, psid = %thread.psid))]
    pub async fn reconcile(&self, thread: &ThreadKey, version: &str) -> bool {
        let Some((viewer, managed, token)) = self.owner_viewer(&thread.page) else {
            return false;
        };
        // What the ledger had folded when Baton asked: a control change or
        // call after it makes Meta's answer older news.
        let asked_at_version = self
            .projections
            .read()
            .thread(thread)
            .map_or(0, |ledger| ledger.version);
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
        self.note_token(&thread.page, viewer, "thread_owner", &answer)
            .await;
        let GraphAnswer::Ok(body) = answer else {
            tracing::warn!("thread_owner could not be read to settle drift");
            return true;
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
                    asked_at_version,
                };
                (rules::observe(ledger, page, observation, now), ())
            })
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, "thread_owner answer could not be recorded");
        }
        true
    }

    /// Asks Meta about the active threads whose owner it has not confirmed
    /// for `reconcile_every_secs`, longest unconfirmed first, within each
    /// page's budget of `reconcile_calls_per_page_per_hour`; returns how
    /// many were asked. Threads of unknown owner go first, at once.
    pub async fn reconcile_due(&self) -> usize {
        let _round = self.reconcile_round.lock().await;
        let now = self.clock.now();
        let every = i64::try_from(self.config.reconcile_every_secs).unwrap_or(i64::MAX);
        let before = now.plus(Span(-Span::seconds(every).millis()));
        // Pages where nobody may see ownership are passed over.
        let due = self
            .projections
            .read()
            .unconfirmed_since(before, SCHEDULE_BATCH, |t| {
                self.owner_viewer(&t.page).is_some()
            });
        let mut asked = 0;
        for thread in due {
            let allowed = self
                .reconcile_budget
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .try_acquire(&thread.page, now);
            if allowed.is_err() {
                continue; // this page's budget is spent; the others go on
            }
            if self.reconcile(&thread, DEFAULT_GRAPH_VERSION).await {
                asked += 1;
            }
        }
        asked
    }

    /// The managed app that may see `page`'s thread owners (the default app,
    /// or the legacy primary), with its page token.
    fn owner_viewer(&self, page: &PageId) -> Option<(&AppId, &ManagedApp, &Secret)> {
        let viewer = self.config.page(page)?.mode.idle_holder()?;
        let (_, managed) = self.config.managed(viewer)?;
        let token = managed.page_tokens.get(page)?;
        Some((viewer, managed, token))
    }
}

impl<S> Baton<S> {
    /// Asks for a reconciliation of every thread whose owner `recorded`
    /// made unknown, or where it kept stale evidence that contradicts the
    /// ledger (an effect carried out after the events are durable).
    pub fn reconcile_unknown_owners(&self, recorded: &[Event]) {
        for thread in contradicted(recorded) {
            // Counted before it is queued: the reconciler may be done with
            // it before `try_send` returns.
            {
                let mut reconciling = self.reconciling_now();
                let doubt = reconciling.entry(thread.clone()).or_default();
                doubt.queued += 1;
                doubt.checked = false;
            }
            if let Err(e) = self.reconciles.try_send(thread.clone()) {
                self.reconciled(thread, 1);
                tracing::warn!(%thread, error = %e, "reconciliation queue full; the next contradiction asks again");
            }
        }
    }

    fn reconciling_now(&self) -> std::sync::MutexGuard<'_, HashMap<ThreadKey, Doubt>> {
        self.reconciling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The reconciler's turn has come for `times` of the requests queued
    /// for `thread`.
    fn reconciled(&self, thread: &ThreadKey, times: usize) {
        let mut reconciling = self.reconciling_now();
        if let Some(doubt) = reconciling.get_mut(thread) {
            debug_assert!(doubt.queued >= times, "more reconciled than queued");
            doubt.queued = doubt.queued.saturating_sub(times);
            if doubt.queued == 0 {
                reconciling.remove(thread);
            }
        }
    }

    /// Whether `command` would be refused on `thread` because the ledger
    /// says another app owns it, while that owner is in doubt: Meta's news
    /// contradicted it and the reconciler has not asked Meta yet, or (with
    /// `or_unconfirmed`) nobody at Meta has confirmed it lately. Such a
    /// refusal is checked with Meta first: refusing on it could refuse the
    /// owner at Meta.
    pub(crate) fn owner_refusal_in_doubt(
        &self,
        thread: &ThreadKey,
        command: &domain::commands::Command,
        now: Timestamp,
        or_unconfirmed: bool,
    ) -> bool {
        let contradicted = self
            .reconciling_now()
            .get(thread)
            .is_some_and(|doubt| !doubt.checked);
        if !contradicted && !or_unconfirmed {
            return false;
        }
        let snapshot = self.projections.read();
        snapshot.pages.get(&thread.page).is_some_and(|page| {
            let ledger = snapshot.ledger(thread);
            ledger.version > 0
                && (contradicted || rules::needs_confirmation(&ledger, now))
                && matches!(
                    rules::decide(&ledger, page, command, now),
                    Err(r) if matches!(
                        r.kind,
                        domain::RejectionKind::NotThreadOwner | domain::RejectionKind::NotControlOwner
                    )
                )
        })
    }
}

impl<S: EventStore + 'static> Baton<S> {
    /// Asks Meta about `thread` now, ahead of the reconciler (which still
    /// asks when its turn comes). Once Meta was asked, the thread is no
    /// longer in doubt for the calls after this one, until Meta's news
    /// contradicts the ledger again: one question per contradiction.
    pub(crate) async fn reconcile_ahead(&self, thread: &ThreadKey, version: &str) {
        if self.reconcile(thread, version).await {
            if let Some(doubt) = self.reconciling_now().get_mut(thread) {
                doubt.checked = true;
            }
        }
    }
}

/// A thread whose ledger Meta's news contradicted, queued for the reconciler.
#[derive(Debug, Default)]
pub struct Doubt {
    /// Requests for it in the reconciler's queue or being carried out.
    queued: usize,
    /// A caller asked Meta since the last contradiction.
    checked: bool,
}

/// The threads whose recorded events call for asking Meta who owns them: a
/// drift to an unknown owner, or stale evidence that contradicts the ledger.
pub fn contradicted(recorded: &[Event]) -> impl Iterator<Item = &ThreadKey> {
    recorded.iter().filter_map(|e| match e {
        Event::OwnershipDriftDetected(d) if d.observed == ControlView::Unknown => Some(&d.thread),
        // Meta's own answer found older than the ledger is not asked again:
        // what made it older (a call's answer, a newer webhook) is newer news.
        Event::StaleEvidenceIgnored(s) if s.evidence != DriftEvidence::ThreadOwnerAnswer => {
            Some(&s.thread)
        }
        _ => None,
    })
}

/// Threads the schedule looks at per round at most.
const SCHEDULE_BATCH: usize = 256;

/// How often the schedule looks for unconfirmed active threads.
const SCHEDULE_EVERY: Duration = Duration::from_secs(1);

/// The budget for one page: `per_hour` calls, at most half of them at once.
pub(crate) fn budget(per_hour: u32) -> RateLimiter<PageId, Timestamp> {
    let per_hour = f64::from(per_hour.max(1));
    RateLimiter::new(per_hour / 3600.0, (per_hour / 2.0).max(1.0))
}

/// Reconciles the threads asked for, one at a time, until `shutdown`.
pub async fn run<S: EventStore + 'static>(
    baton: Arc<Baton<S>>,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<ThreadKey>>>,
    mut shutdown: Shutdown,
) {
    // One term at a time holds the queue; the next owner's term takes it over.
    let mut queue = queue.lock().await;
    loop {
        let first = tokio::select! {
            next = queue.recv() => match next {
                Some(thread) => thread,
                None => return,
            },
            () = tokio::time::sleep(SCHEDULE_EVERY) => {
                let asked = baton.reconcile_due().await;
                if asked > 0 {
                    tracing::info!(asked, "scheduled reconciliation of unconfirmed active threads");
                }
                continue;
            }
            () = shutdown.recv() => return,
        };
        // Several requests for one thread ask Meta once.
        let mut batch = vec![first];
        let mut times: HashMap<ThreadKey, usize> = HashMap::from([(batch[0].clone(), 1)]);
        while let Ok(more) = queue.try_recv() {
            let seen = times.entry(more.clone()).or_default();
            if *seen == 0 {
                batch.push(more);
            }
            *seen += 1;
        }
        for thread in batch {
            baton.reconcile(&thread, DEFAULT_GRAPH_VERSION).await;
            baton.reconciled(&thread, times[&thread]);
        }
    }
}
