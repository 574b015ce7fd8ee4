//! Erasure and retention of personal content (`docs/privacy.md`).
//!
//! Content is sealed in the log under per-person, per-day keys (see
//! `record::Planned::seal`). Erasing a person destroys all their keys on a
//! page; retention destroys a page's keys for days older than it keeps.
//! Either way the keys go first and the fact is recorded after: a crash in
//! between leaves the content gone and the request unanswered, so the
//! caller asks again and the fact lands then. Nothing in the log changes,
//! so the chain verifies as before.

use std::sync::Arc;
use std::time::Duration;

use domain::events::{ContentErased, ContentExpired};
use domain::ids::{AppId, PageId, Psid, ThreadKey, Timestamp};
use event_log::EventStore;
use serde_json::Value;

use crate::record::{day_of, start_of_day, OnBusy, Planned, RecordError};
use crate::shutdown::Shutdown;
use crate::Baton;

/// Why content could not be erased.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("page {0} is not configured")]
    UnknownPage(PageId),
    #[error("the key vault cannot be rewritten")]
    Vault(#[source] std::io::Error),
    #[error("the erasure cannot be recorded")]
    Record(#[source] RecordError),
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub thread: ThreadKey,
    /// Keys destroyed (one per day the person had content).
    pub keys: usize,
    pub at: Timestamp,
}

/// Why Meta's data-deletion callback could not be honoured.
#[derive(Debug, thiserror::Error)]
pub enum DeletionError {
    #[error("no managed app {0} is configured here")]
    UnknownApp(AppId),
    #[error(transparent)]
    Refused(#[from] wire::signed_request::SignedRequestError),
    #[error("Meta's ID Matching API did not map the person's app-scoped id: {0}")]
    Mapping(String),
    #[error(transparent)]
    Erase(#[from] EraseError),
}

/// What a data-deletion request erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The code Meta shows the person; it names the request in the log.
    pub confirmation_code: String,
    pub erasures: Vec<Erasure>,
}

/// The confirmation code of Meta's data-deletion request: derived from the
/// signed request, so that every shard the request is handed to records its
/// erasures under the same code, and Meta's retry of it gets the same
/// answer. Only a holder of the signed request (Meta, the person, Baton)
/// can work it out; it names no person.
pub fn confirmation_code(app: &AppId, signed_request: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"baton data-deletion code\0")
        .chain_update(app.as_str().as_bytes())
        .chain_update(b"\0")
        .chain_update(signed_request.as_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

/// How often the retention schedule looks at Baton's clock.
const RETENTION_EVERY: Duration = Duration::from_secs(1);

impl<S: EventStore + 'static> Baton<S> {
    /// Erases everything the person of `thread` said or was sent on that
    /// page, and records who asked (`by`) and the request's id. Ownership and
    /// decision facts stay. Erasing twice is harmless: the second destroys
    /// nothing and is recorded too.
    pub async fn erase(
        &self,
        thread: &ThreadKey,
        by: &str,
        request: &str,
    ) -> Result<Erasure, EraseError> {
        if self.config.page(&thread.page).is_none() {
            return Err(EraseError::UnknownPage(thread.page.clone()));
        }
        let keys = self
            .store
            .vault()
            .erase_subject(&domain::privacy::subject(thread))
            .map_err(EraseError::Vault)?;
        let at = self.clock.now();
        let fact = ContentErased {
            thread: thread.clone(),
            at,
            by: by.to_owned(),
            request: request.to_owned(),
        };
        self.recorder
            .record(OnBusy::Retry, |_| {
                Ok((vec![Planned::new(fact.clone().into())], ()))
            })
            .await
            .map_err(EraseError::Record)?;
        tracing::info!(page = %thread.page, keys, by, "a person's content was erased");
        Ok(Erasure {
            thread: thread.clone(),
            keys,
            at,
        })
    }

    /// Meta's data-deletion callback for `app`: checks the signed request
    /// with the app's secret, maps the person's app-scoped id to their PSIDs
    /// on the pages Baton manages for the app (Meta's ID Matching API, with
    /// the app's token), and erases each. The confirmation code names the
    /// request in every `ContentErased` it records.
    pub async fn data_deletion(
        &self,
        app: &AppId,
        signed_request: &str,
    ) -> Result<Deletion, DeletionError> {
        let Some((_, managed)) = self.config.managed(app) else {
            return Err(DeletionError::UnknownApp(app.clone()));
        };
        let request = wire::signed_request::verify_deletion_request(
            managed.app_secret.expose().as_bytes(),
            signed_request,
        )?;
        // Meta signed it, but it becomes part of a URL path: ids only.
        if !request
            .user_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(DeletionError::Mapping(format!(
                "the signed request's user_id {:?} is not an id",
                request.user_id
            )));
        }
        let app_token = format!("{app}|{}", managed.app_secret.expose());
        let answer = self
            .graph
            .get(
                &managed.graph_base_url,
                crate::reconcile::DEFAULT_GRAPH_VERSION,
                &request.user_id,
                "ids_for_pages",
                &app_token,
                &[],
            )
            .await;
        let body = match answer {
            crate::graph_client::GraphAnswer::Ok(body) => body,
            crate::graph_client::GraphAnswer::Err { error, .. } => {
                return Err(DeletionError::Mapping(format!(
                    "({}) {}",
                    error.code, error.message
                )))
            }
            crate::graph_client::GraphAnswer::Unknown(why) => {
                return Err(DeletionError::Mapping(why.to_string()))
            }
        };
        let threads: Vec<ThreadKey> = body
            .get("data")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|entry| {
                let psid = Psid::parse(entry.get("id")?.as_str()?).ok()?;
                let page = PageId::parse(entry.get("page")?.get("id")?.as_str()?).ok()?;
                let on_page = self
                    .config
                    .page(&page)
                    .is_some_and(|p| p.apps.contains_key(app));
                on_page.then(|| ThreadKey::new(page, psid))
            })
            .collect();
        let confirmation_code = confirmation_code(app, signed_request);
        // Meta's retry of the request: what it erased stays erased, and is
        // not listed twice under its code.
        let done: Vec<ThreadKey> = self
            .projections
            .read()
            .erasures
            .get(&confirmation_code)
            .map(|list| list.iter().map(|(t, _)| t.clone()).collect())
            .unwrap_or_default();
        let by = format!("meta:{app}");
        let mut erasures = Vec::with_capacity(threads.len());
        for thread in threads.iter().filter(|t| !done.contains(t)) {
            erasures.push(self.erase(thread, &by, &confirmation_code).await?);
        }
        tracing::info!(%app, people = erasures.len(), code = %confirmation_code, "Meta's data-deletion request honoured");
        Ok(Deletion {
            confirmation_code,
            erasures,
        })
    }

    /// Erases, on every page that keeps content for a limited time, the
    /// content of days older than that; records one `ContentExpired` per page
    /// that lost keys. Returns those facts.
    pub async fn expire_content(&self) -> Result<Vec<ContentExpired>, EraseError> {
        let now = self.clock.now();
        let today = day_of(now);
        let mut expired = Vec::new();
        for (page, days) in &self.config.content_retention_days {
            if *days == 0 {
                continue;
            }
            let before = today.saturating_sub(*days);
            let keys = self
                .store
                .vault()
                .erase_before(&format!("{page}/"), before)
                .map_err(EraseError::Vault)?;
            if keys == 0 {
                continue;
            }
            let fact = ContentExpired {
                page: page.clone(),
                at: now,
                before: start_of_day(before),
                retention_days: *days,
                keys: keys as u64,
            };
            self.recorder
                .record(OnBusy::Retry, |_| {
                    Ok((vec![Planned::new(fact.clone().into())], ()))
                })
                .await
                .map_err(EraseError::Record)?;
            tracing::info!(%page, keys, retention_days = days, "content past its retention was erased");
            expired.push(fact);
        }
        Ok(expired)
    }
}

/// Runs retention whenever Baton's clock enters a new day, until `shutdown`.
pub async fn run<S: EventStore + 'static>(baton: Arc<Baton<S>>, mut shutdown: Shutdown) {
    if baton
        .config
        .content_retention_days
        .values()
        .all(|d| *d == 0)
    {
        return;
    }
    let mut done_for: Option<u32> = None;
    loop {
        let today = day_of(baton.clock.now());
        if done_for != Some(today) {
            match baton.expire_content().await {
                Ok(_) => done_for = Some(today),
                Err(e) => tracing::error!(error = %e, "retention could not run; trying again"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETENTION_EVERY) => {}
            () = shutdown.recv() => return,
        }
    }
}
