//! Page health: whether each managed app is still subscribed to each of its
//! pages' webhooks at Meta, and whether its page token still works.
//!
//! * **The subscription watchdog** asks Meta's `subscribed_apps` with each
//!   managed app's page token, every `subscription_check_every_secs` of
//!   Baton's clock (and whenever [`Baton::check_subscriptions`] is called),
//!   and records a change as a fact on the page's stream:
//!   `AppSubscriptionLost` when an app it knew subscribed (or knew nothing
//!   about) is no longer listed, `AppSubscriptionRestored` when a lost one is
//!   listed again. It never re-subscribes on its own: Meta drops an app after
//!   an hour of failed webhooks, and subscribing it again before its
//!   callback is fixed only loses more deliveries. The admin re-subscribes
//!   ([`Baton::resubscribe`]).
//! * **Token health**: every Graph call Baton makes with a page token
//!   reports its answer here ([`Baton::note_token`]). A 2xx says the token
//!   works, a 190 (any subcode) says it does not; other answers say nothing
//!   about the token. The last such answer is kept in memory; the change to
//!   "rejected" (and back) is recorded as a fact (`PageTokenRejected`,
//!   `PageTokenAccepted`), once per change, not per call.
//!
//! Decisions are made against the facts folded in the projections
//! (`State::page_health`), so a restart does not record the same loss or
//! breakage twice; recording is serialised by one lock. [`Baton::page_health`]
//! is the read the HTTP API and the console render.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use domain::events::{
    AppSubscriptionLost, AppSubscriptionRestored, GraphError, PageTokenAccepted, PageTokenRejected,
    SubscriptionSource,
};
use domain::graph::code;
use domain::{AppId, AppKind, Event, PageId, Span, Timestamp};
use event_log::EventStore;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{ManagedApp, Secret};
use crate::graph_client::GraphAnswer;
use crate::projections::{AppPageFacts, State, SubscriptionFact};
use crate::reconcile::DEFAULT_GRAPH_VERSION;
use crate::record::{OnBusy, Planned, RecordError};
use crate::shutdown::Shutdown;
use crate::Baton;

/// The webhook fields a re-subscription asks for when Baton never saw the
/// app's own: the ones `docs/operations.md` tells operators to subscribe,
/// Meta's reads, deliveries and reactions, and policy enforcement.
pub const DEFAULT_FIELDS: &[&str] = &[
    "messages",
    "messaging_postbacks",
    "messaging_handovers",
    "standby",
    "message_echoes",
    "messaging_optins",
    "messaging_referrals",
    "message_reads",
    "message_deliveries",
    "message_reactions",
    "messaging_policy_enforcement",
];

/// How often the watchdog looks at Baton's clock (tests move the clock
/// instead of waiting an hour).
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What Baton learned about one app on one page, in memory.
#[derive(Debug, Clone, Default)]
struct Watch {
    /// The last check Meta answered: when, and whether the app was listed.
    checked: Option<(Timestamp, bool)>,
    /// The fields the app was last seen subscribed with.
    fields: Option<Vec<String>>,
    /// The last check that got no list: when, and why.
    failed: Option<(Timestamp, String)>,
}

/// The last Graph answer that said whether a page token works.
#[derive(Debug, Clone)]
struct TokenAnswer {
    at: Timestamp,
    edge: String,
    /// `None`: Meta accepted it.
    error: Option<TokenError>,
}

/// The in-memory half of page health, and the locks that keep its facts
/// single.
#[derive(Debug)]
pub(crate) struct HealthState {
    watches: Mutex<HashMap<(PageId, AppId), Watch>>,
    tokens: Mutex<HashMap<(PageId, AppId), TokenAnswer>>,
    /// One decision to record a health fact at a time: two calls failing
    /// together record one rejection.
    writes: tokio::sync::Mutex<()>,
    /// One watchdog round at a time (the schedule's, or a caller's).
    round: tokio::sync::Mutex<()>,
    /// Rounds finished since start.
    rounds: watch::Sender<u64>,
}

impl HealthState {
    pub(crate) fn new() -> Self {
        Self {
            watches: Mutex::default(),
            tokens: Mutex::default(),
            writes: tokio::sync::Mutex::new(()),
            round: tokio::sync::Mutex::new(()),
            rounds: watch::Sender::new(0),
        }
    }
}

// ---- What the reads return. -------------------------------------------------

/// Every page's health, as one app or the admin may see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PagesHealth {
    /// Baton's clock when it was read.
    pub at: Timestamp,
    /// `subscription_check_every_secs` (0: the watchdog is off).
    pub check_every_secs: u64,
    pub pages: Vec<PageHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageHealth {
    pub id: PageId,
    pub name: String,
    /// `conversation_routing`, `zero_config` or `handover_v1`.
    pub mode: &'static str,
    /// The app answering idle threads: the default app, or the legacy
    /// primary; none in zero-config.
    pub default_app: Option<AppId>,
    pub apps: Vec<AppHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppHealth {
    pub id: AppId,
    pub name: String,
    pub kind: AppKind,
    /// External apps (the Page Inbox) are known by id only: Baton holds no
    /// token for them, so both their states are `unknown`.
    pub managed: bool,
    pub subscription: SubscriptionHealth,
    pub token: TokenHealth,
}

/// Whether the app gets the page's webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    Subscribed,
    Unsubscribed,
    /// Not checked since Baton started, and no fact on record.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionHealth {
    pub state: SubscriptionState,
    /// When the recorded loss or restoration happened, if the state comes
    /// from one; `null` for an app subscribed since before Baton recorded
    /// anything.
    pub since: Option<Timestamp>,
    /// The last check Meta answered (since Baton started).
    pub checked_at: Option<Timestamp>,
    /// The webhook fields the app was last seen subscribed with.
    pub fields: Vec<String>,
    /// The last check, when it got no list (the token refused, Meta down).
    pub check_error: Option<CheckError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckError {
    pub at: Timestamp,
    pub message: String,
}

/// Whether the page token works, by the last Graph answer that said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    Valid,
    Invalid,
    /// No answer that says, since Baton started, and no rejection on record.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenHealth {
    pub state: TokenState,
    /// When the last answer that said came (for an invalid token known only
    /// from the log: when the rejection was recorded).
    pub answered_at: Option<Timestamp>,
    /// The Graph edge of that answer's call.
    pub edge: Option<String>,
    /// When the recorded rejection happened (while the token is invalid).
    pub invalid_since: Option<Timestamp>,
    /// Meta's error, while the token is invalid.
    pub error: Option<TokenError>,
}

/// Meta's 190 for a page token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenError {
    pub code: u32,
    pub subcode: Option<u32>,
    pub message: String,
    pub fbtrace_id: Option<String>,
}

/// What one watchdog round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionRound {
    /// (page, app) pairs Meta answered about.
    pub checked: usize,
    /// Pairs whose check got no list (a refused token, no answer).
    pub failed: usize,
    /// Losses and restorations recorded.
    pub lost: usize,
    pub restored: usize,
}

/// A re-subscription Meta accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resubscribed {
    pub page: PageId,
    pub app: AppId,
    pub at: Timestamp,
    pub fields: Vec<String>,
    /// Whether an `AppSubscriptionRestored` was recorded (only after a
    /// recorded loss).
    pub restored: bool,
}

/// Why an app could not be subscribed again.
#[derive(Debug, thiserror::Error)]
pub enum ResubscribeError {
    #[error("page {0} is not configured")]
    UnknownPage(PageId),
    #[error("app {app} is not configured on page {page}")]
    NotOnPage { page: PageId, app: AppId },
    #[error("app {0} is external: Baton holds no token to subscribe it with")]
    External(AppId),
    #[error("app {app} has no page token for page {page}")]
    NoToken { page: PageId, app: AppId },
    /// Meta refused (its error as it came).
    #[error("Meta refused the subscription: ({}) {}", .error.code, .error.message)]
    Meta { status: u16, error: GraphError },
    #[error("Meta did not answer: {0}")]
    NoAnswer(String),
}

// ---- The rules of what gets recorded (pure). --------------------------------

/// What a Graph answer says about the token it was made with: `Some(None)`
/// works, `Some(Some(error))` refused (190, any subcode), `None` says
/// nothing (another error, no answer).
fn token_verdict(answer: &GraphAnswer) -> Option<Option<TokenError>> {
    match answer {
        GraphAnswer::Ok(_) => Some(None),
        GraphAnswer::Err { error, .. } if error.code == code::INVALID_TOKEN => {
            Some(Some(TokenError {
                code: error.code,
                subcode: error.subcode,
                message: error.message.clone(),
                fbtrace_id: error.fbtrace_id.clone(),
            }))
        }
        _ => None,
    }
}

/// The fact a token verdict calls for, given whether a rejection stands
/// on record: a rejection when there is none, an acceptance when there is.
fn token_fact(
    rejected: bool,
    verdict: &Option<TokenError>,
    page: &PageId,
    app: &AppId,
    edge: &str,
    now: Timestamp,
) -> Option<Event> {
    match (verdict, rejected) {
        (Some(error), false) => Some(
            PageTokenRejected {
                page: page.clone(),
                app: app.clone(),
                at: now,
                edge: edge.to_owned(),
                code: error.code,
                subcode: error.subcode,
                message: error.message.clone(),
                fbtrace_id: error.fbtrace_id.clone(),
            }
            .into(),
        ),
        (None, true) => Some(
            PageTokenAccepted {
                page: page.clone(),
                app: app.clone(),
                at: now,
                edge: edge.to_owned(),
            }
            .into(),
        ),
        _ => None,
    }
}

/// The fact a check calls for, given the last one on record: a loss when
/// the app is not listed and no loss stands (an app Baton knew nothing about
/// counts as subscribed: it was configured so), a restoration when it is
/// listed and a loss stands.
fn subscription_fact(
    known: Option<&SubscriptionFact>,
    listed: Option<&[String]>,
    last_fields: &[String],
    page: &PageId,
    app: &AppId,
    now: Timestamp,
) -> Option<Event> {
    let lost = known.is_some_and(SubscriptionFact::is_lost);
    match (listed, lost) {
        (None, false) => Some(
            AppSubscriptionLost {
                page: page.clone(),
                app: app.clone(),
                at: now,
                last_fields: last_fields.to_vec(),
            }
            .into(),
        ),
        (Some(fields), true) => Some(
            AppSubscriptionRestored {
                page: page.clone(),
                app: app.clone(),
                at: now,
                fields: fields.to_vec(),
                source: SubscriptionSource::Check,
            }
            .into(),
        ),
        _ => None,
    }
}

/// The fields Meta lists for `app` in a `subscribed_apps` answer, or `None`
/// when the app is not listed. (One page of answers: a page has at most a
/// handful of apps.)
fn listed_fields(body: &Value, app: &AppId) -> Option<Vec<String>> {
    let entry = body["data"]
        .as_array()?
        .iter()
        .find(|e| wire::webhook::id_string(&e["id"]).as_deref() == Some(app.as_str()))?;
    Some(
        entry["subscribed_fields"]
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn facts_of<'a>(state: &'a State, page: &PageId, app: &AppId) -> Option<&'a AppPageFacts> {
    state.page_health.get(&(page.clone(), app.clone()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- The shell. -------------------------------------------------------------

impl<S> Baton<S> {
    /// Follows the watchdog's finished rounds (the count since start): a
    /// console's live view, or a test waiting for the schedule.
    pub fn subscription_rounds(&self) -> watch::Receiver<u64> {
        self.health.rounds.subscribe()
    }

    /// Every configured page's health (routing, default app, and per app:
    /// kind, subscription, token); with `only`, the pages that app is on and
    /// only its own entry (what an app token may see).
    pub fn page_health(&self, only: Option<&AppId>) -> PagesHealth {
        let snapshot = self.projections.read();
        let watches = lock(&self.health.watches);
        let tokens = lock(&self.health.tokens);
        let mut pages = Vec::new();
        for (id, (name, page)) in &self.config.pages {
            if only.is_some_and(|a| !page.apps.contains_key(a)) {
                continue;
            }
            let mut apps = Vec::new();
            for (app_id, profile) in &page.apps {
                if only.is_some_and(|a| a != app_id) {
                    continue;
                }
                let config = self.config.apps.get(app_id);
                let watched = self
                    .config
                    .managed(app_id)
                    .is_some_and(|(_, m)| m.page_tokens.contains_key(id));
                let key = (id.clone(), app_id.clone());
                let facts = snapshot.page_health.get(&key);
                let (subscription, token) = if watched {
                    (
                        subscription_health(facts, watches.get(&key)),
                        token_health(facts, tokens.get(&key)),
                    )
                } else {
                    (subscription_health(None, None), token_health(None, None))
                };
                apps.push(AppHealth {
                    id: app_id.clone(),
                    name: config.map(|c| c.name.clone()).unwrap_or_default(),
                    kind: profile.kind,
                    managed: config.is_some_and(|c| c.managed.is_some()),
                    subscription,
                    token,
                });
            }
            pages.push(PageHealth {
                id: id.clone(),
                name: name.clone(),
                mode: page.mode.name(),
                default_app: page.mode.idle_holder().cloned(),
                apps,
            });
        }
        PagesHealth {
            at: self.clock.now(),
            check_every_secs: self.config.subscription_check_every_secs,
            pages,
        }
    }

    /// The (page, app) pairs the watchdog asks about: every configured page
    /// and each managed app on it with a token for it.
    fn watched(&self) -> Vec<(PageId, AppId, &ManagedApp, &Secret)> {
        let mut pairs = Vec::new();
        for (page_id, (_, page)) in &self.config.pages {
            for app in page.apps.keys() {
                let Some((_, managed)) = self.config.managed(app) else {
                    continue;
                };
                if let Some(token) = managed.page_tokens.get(page_id) {
                    pairs.push((page_id.clone(), app.clone(), managed, token));
                }
            }
        }
        pairs
    }
}

fn subscription_health(facts: Option<&AppPageFacts>, watch: Option<&Watch>) -> SubscriptionHealth {
    let fact = facts.and_then(|f| f.subscription.as_ref());
    let checked = watch.and_then(|w| w.checked);
    // The newer evidence decides: the last check, or the last fact (a
    // check that changed something records its fact at the same time).
    let state = match (checked, fact) {
        (Some((at, listed)), fact) if fact.is_none_or(|f| f.at() < at) => {
            if listed {
                SubscriptionState::Subscribed
            } else {
                SubscriptionState::Unsubscribed
            }
        }
        (_, Some(SubscriptionFact::Lost { .. })) => SubscriptionState::Unsubscribed,
        (_, Some(SubscriptionFact::Restored { .. })) => SubscriptionState::Subscribed,
        (_, None) => SubscriptionState::Unknown,
    };
    let since = match (state, fact) {
        (SubscriptionState::Unsubscribed, Some(f @ SubscriptionFact::Lost { .. }))
        | (SubscriptionState::Subscribed, Some(f @ SubscriptionFact::Restored { .. })) => {
            Some(f.at())
        }
        _ => None,
    };
    let fields = watch
        .and_then(|w| w.fields.clone())
        .or_else(|| match fact {
            Some(SubscriptionFact::Restored { fields, .. }) => Some(fields.clone()),
            Some(SubscriptionFact::Lost { last_fields, .. }) => Some(last_fields.clone()),
            None => None,
        })
        .unwrap_or_default();
    SubscriptionHealth {
        state,
        since,
        checked_at: checked.map(|(at, _)| at),
        fields,
        check_error: watch
            .and_then(|w| w.failed.clone())
            .map(|(at, message)| CheckError { at, message }),
    }
}

fn token_health(facts: Option<&AppPageFacts>, answer: Option<&TokenAnswer>) -> TokenHealth {
    let rejected = facts.and_then(|f| f.token_rejected.as_ref());
    match answer {
        Some(a) => TokenHealth {
            state: if a.error.is_some() {
                TokenState::Invalid
            } else {
                TokenState::Valid
            },
            answered_at: Some(a.at),
            edge: Some(a.edge.clone()),
            invalid_since: a
                .error
                .as_ref()
                .map(|_| rejected.map_or(a.at, |r| r.at.min(a.at))),
            error: a.error.clone(),
        },
        None => match rejected {
            Some(r) => TokenHealth {
                state: TokenState::Invalid,
                answered_at: Some(r.at),
                edge: Some(r.edge.clone()),
                invalid_since: Some(r.at),
                error: Some(TokenError {
                    code: r.code,
                    subcode: r.subcode,
                    message: r.message.clone(),
                    fbtrace_id: r.fbtrace_id.clone(),
                }),
            },
            None => TokenHealth {
                state: TokenState::Unknown,
                answered_at: None,
                edge: None,
                invalid_since: None,
                error: None,
            },
        },
    }
}

impl<S: EventStore + 'static> Baton<S> {
    /// Notes what Meta's answer to a call made with `app`'s page token for
    /// `page` says about that token (see the module's doc), and records the
    /// change from working (or unknown) to rejected, or back.
    pub async fn note_token(&self, page: &PageId, app: &AppId, edge: &str, answer: &GraphAnswer) {
        let Some(verdict) = token_verdict(answer) else {
            return;
        };
        let now = self.clock.now();
        {
            let mut tokens = lock(&self.health.tokens);
            let key = (page.clone(), app.clone());
            if tokens.get(&key).is_none_or(|last| last.at <= now) {
                tokens.insert(
                    key,
                    TokenAnswer {
                        at: now,
                        edge: edge.to_owned(),
                        error: verdict.clone(),
                    },
                );
            }
        }
        // The common case (nothing changed) takes no lock and appends nothing.
        let rejected =
            |state: &State| facts_of(state, page, app).is_some_and(|f| f.token_rejected.is_some());
        if token_fact(
            rejected(&self.projections.read()),
            &verdict,
            page,
            app,
            edge,
            now,
        )
        .is_none()
        {
            return;
        }
        let recorded = self
            .record_health(|state| token_fact(rejected(state), &verdict, page, app, edge, now))
            .await;
        match recorded {
            Ok(Some(Event::PageTokenRejected(e))) => tracing::warn!(
                %page, %app, edge, code = e.code, subcode = ?e.subcode,
                "Meta refused the page token: every call with it fails until it is replaced"
            ),
            Ok(Some(_)) => tracing::info!(%page, %app, edge, "Meta accepts the page token again"),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(%page, %app, error = %e, "a page token's change could not be recorded")
            }
        }
    }

    /// Records what `decide` returns against the projections, one decision
    /// at a time.
    async fn record_health(
        &self,
        mut decide: impl FnMut(&State) -> Option<Event>,
    ) -> Result<Option<Event>, RecordError> {
        let _one = self.health.writes.lock().await;
        let recorded = self
            .recorder
            .record(OnBusy::Retry, |state| {
                let event = decide(state);
                Ok((event.iter().cloned().map(Planned::new).collect(), event))
            })
            .await?;
        Ok(recorded.value)
    }

    /// One watchdog round: asks Meta's `subscribed_apps` for every watched
    /// (page, app) with that app's page token, and records each loss and
    /// restoration. Rounds run one at a time.
    pub async fn check_subscriptions(&self) -> SubscriptionRound {
        let _round = self.health.round.lock().await;
        let mut round = SubscriptionRound::default();
        for (page, app, managed, token) in self.watched() {
            self.check_one(&page, &app, managed, token, &mut round)
                .await;
        }
        self.health.rounds.send_modify(|n| *n += 1);
        round
    }

    #[tracing::instrument(skip_all, fields(%page, %app))]
    async fn check_one(
        &self,
        page: &PageId,
        app: &AppId,
        managed: &ManagedApp,
        token: &Secret,
        round: &mut SubscriptionRound,
    ) {
        let answer = self
            .graph
            .get(
                &managed.graph_base_url,
                DEFAULT_GRAPH_VERSION,
                page.as_str(),
                "subscribed_apps",
                token.expose(),
                &[],
            )
            .await;
        self.note_token(page, app, "subscribed_apps", &answer).await;
        let now = self.clock.now();
        let key = (page.clone(), app.clone());
        let body = match answer {
            GraphAnswer::Ok(body) => body,
            GraphAnswer::Err { error, .. } => {
                let why = format!(
                    "({}{}) {}",
                    error.code,
                    error.subcode.map(|s| format!("/{s}")).unwrap_or_default(),
                    error.message
                );
                tracing::warn!(error = %why, "subscribed_apps could not be read");
                lock(&self.health.watches).entry(key).or_default().failed = Some((now, why));
                round.failed += 1;
                return;
            }
            GraphAnswer::Unknown(why) => {
                tracing::warn!(error = %why, "subscribed_apps could not be read");
                lock(&self.health.watches).entry(key).or_default().failed = Some((now, why));
                round.failed += 1;
                return;
            }
        };
        round.checked += 1;
        let listed = listed_fields(&body, app);
        let seen_before = {
            let mut watches = lock(&self.health.watches);
            let watch = watches.entry(key).or_default();
            let before = watch.fields.clone();
            watch.checked = Some((now, listed.is_some()));
            watch.failed = None;
            if let Some(fields) = &listed {
                watch.fields = Some(fields.clone());
            }
            before
        };
        let decide = |state: &State| {
            let known = facts_of(state, page, app).and_then(|f| f.subscription.as_ref());
            let last_fields = seen_before
                .clone()
                .or_else(|| match known {
                    Some(SubscriptionFact::Restored { fields, .. }) => Some(fields.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            subscription_fact(known, listed.as_deref(), &last_fields, page, app, now)
        };
        if decide(&self.projections.read()).is_none() {
            return;
        }
        match self.record_health(decide).await {
            Ok(Some(Event::AppSubscriptionLost(_))) => {
                round.lost += 1;
                tracing::warn!("Meta no longer lists the app as subscribed to the page: it gets no webhook until it is subscribed again");
            }
            Ok(Some(_)) => {
                round.restored += 1;
                tracing::info!("the app is subscribed to the page again");
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "a subscription change could not be recorded"),
        }
    }

    /// Subscribes `app` to `page`'s webhooks again (`POST subscribed_apps`
    /// with the app's page token), with the fields it was last seen
    /// subscribed with, else [`DEFAULT_FIELDS`]; records
    /// `AppSubscriptionRestored` (naming `by`) when a loss stands on record.
    #[tracing::instrument(skip_all, fields(%page, %app, by))]
    pub async fn resubscribe(
        &self,
        page: &PageId,
        app: &AppId,
        by: &str,
    ) -> Result<Resubscribed, ResubscribeError> {
        let Some(configured) = self.config.page(page) else {
            return Err(ResubscribeError::UnknownPage(page.clone()));
        };
        if !configured.apps.contains_key(app) {
            return Err(ResubscribeError::NotOnPage {
                page: page.clone(),
                app: app.clone(),
            });
        }
        let Some((_, managed)) = self.config.managed(app) else {
            return Err(ResubscribeError::External(app.clone()));
        };
        let Some(token) = managed.page_tokens.get(page) else {
            return Err(ResubscribeError::NoToken {
                page: page.clone(),
                app: app.clone(),
            });
        };
        let fields = self.resubscribe_fields(page, app);
        let list = fields.join(",");
        let answer = self
            .graph
            .post_query(
                &managed.graph_base_url,
                DEFAULT_GRAPH_VERSION,
                page.as_str(),
                "subscribed_apps",
                token.expose(),
                &[("subscribed_fields", list.as_str())],
            )
            .await;
        self.note_token(page, app, "subscribed_apps", &answer).await;
        match answer {
            GraphAnswer::Ok(_) => {}
            GraphAnswer::Err { status, error, .. } => {
                tracing::warn!(code = error.code, message = %error.message, "Meta refused the re-subscription");
                return Err(ResubscribeError::Meta { status, error });
            }
            GraphAnswer::Unknown(why) => return Err(ResubscribeError::NoAnswer(why)),
        }
        let now = self.clock.now();
        {
            let mut watches = lock(&self.health.watches);
            let watch = watches.entry((page.clone(), app.clone())).or_default();
            watch.fields = Some(fields.clone());
        }
        let restored = AppSubscriptionRestored {
            page: page.clone(),
            app: app.clone(),
            at: now,
            fields: fields.clone(),
            source: SubscriptionSource::Resubscribe { by: by.to_owned() },
        };
        let recorded = self
            .record_health(|state| {
                let lost = facts_of(state, page, app)
                    .and_then(|f| f.subscription.as_ref())
                    .is_some_and(SubscriptionFact::is_lost);
                lost.then(|| restored.clone().into())
            })
            .await;
        let restored = match recorded {
            Ok(event) => event.is_some(),
            Err(e) => {
                // Meta subscribed it: the answer stands, and the next check
                // records the restoration.
                tracing::error!(error = %e, "a re-subscription Meta accepted could not be recorded");
                false
            }
        };
        tracing::info!(restored, "the app was subscribed to the page again");
        Ok(Resubscribed {
            page: page.clone(),
            app: app.clone(),
            at: now,
            fields,
            restored,
        })
    }

    /// The fields to subscribe `app` with: as last seen (this run, or the
    /// log's last fact), else [`DEFAULT_FIELDS`].
    fn resubscribe_fields(&self, page: &PageId, app: &AppId) -> Vec<String> {
        let key = (page.clone(), app.clone());
        let seen = lock(&self.health.watches)
            .get(&key)
            .and_then(|w| w.fields.clone());
        let recorded = || match self
            .projections
            .read()
            .page_health
            .get(&key)
            .and_then(|f| f.subscription.clone())
        {
            Some(SubscriptionFact::Lost { last_fields, .. }) => Some(last_fields),
            Some(SubscriptionFact::Restored { fields, .. }) => Some(fields),
            None => None,
        };
        seen.or_else(recorded)
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| DEFAULT_FIELDS.iter().map(|f| (*f).to_owned()).collect())
    }
}

/// Runs a watchdog round every `subscription_check_every_secs` of Baton's
/// clock (the first one that long after start), until `shutdown`.
pub async fn run<S: EventStore + 'static>(baton: Arc<Baton<S>>, mut shutdown: Shutdown) {
    let every = baton.config.subscription_check_every_secs;
    if every == 0 {
        return;
    }
    let every = Span::seconds(i64::try_from(every).unwrap_or(i64::MAX / 1000));
    let mut due = baton.clock.now().plus(every);
    loop {
        let now = baton.clock.now();
        if now >= due {
            let round = baton.check_subscriptions().await;
            if round.lost + round.restored + round.failed > 0 {
                tracing::info!(
                    checked = round.checked,
                    failed = round.failed,
                    lost = round.lost,
                    restored = round.restored,
                    "subscription watchdog round"
                );
            }
            due = now.plus(every);
        }
        tokio::select! {
            () = tokio::time::sleep(WATCH_EVERY) => {}
            () = shutdown.recv() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids() -> (PageId, AppId) {
        (
            PageId::parse("5550001").unwrap(),
            AppId::parse("1001").unwrap(),
        )
    }

    fn refused() -> GraphAnswer {
        GraphAnswer::Err {
            status: 400,
            error: GraphError {
                code: 190,
                subcode: Some(460),
                message: "Error validating access token".into(),
                fbtrace_id: None,
                is_transient: false,
            },
            body: Value::Null,
        }
    }

    #[test]
    fn a_190_of_any_subcode_refuses_the_token_a_2xx_accepts_it_other_answers_say_nothing() {
        assert_eq!(token_verdict(&GraphAnswer::Ok(json!({}))), Some(None));
        let Some(Some(e)) = token_verdict(&refused()) else {
            panic!("190 refuses the token");
        };
        assert_eq!((e.code, e.subcode), (190, Some(460)));
        let not_owner = GraphAnswer::Err {
            status: 400,
            error: domain::graph::error(10, Some(2_018_300), "not the owner"),
            body: Value::Null,
        };
        assert_eq!(token_verdict(&not_owner), None);
        assert_eq!(token_verdict(&GraphAnswer::Unknown("timeout".into())), None);
    }

    #[test]
    fn a_token_change_is_recorded_once_each_way() {
        let (page, app) = ids();
        let now = Timestamp::from_millis(1);
        let Some(Some(error)) = token_verdict(&refused()) else {
            unreachable!()
        };
        let bad = Some(error);
        assert!(matches!(
            token_fact(false, &bad, &page, &app, "messages", now),
            Some(Event::PageTokenRejected(_))
        ));
        assert_eq!(token_fact(true, &bad, &page, &app, "messages", now), None);
        assert_eq!(token_fact(false, &None, &page, &app, "messages", now), None);
        assert!(matches!(
            token_fact(true, &None, &page, &app, "messages", now),
            Some(Event::PageTokenAccepted(_))
        ));
    }

    #[test]
    fn a_loss_is_recorded_once_and_a_restoration_only_after_a_loss() {
        let (page, app) = ids();
        let now = Timestamp::from_millis(5);
        let fields = vec!["messages".to_owned()];
        let lost = SubscriptionFact::Lost {
            at: now,
            last_fields: fields.clone(),
        };
        let restored = SubscriptionFact::Restored {
            at: now,
            fields: fields.clone(),
        };
        // Never recorded anything, not listed: a loss (with what was seen).
        match subscription_fact(None, None, &fields, &page, &app, now) {
            Some(Event::AppSubscriptionLost(e)) => assert_eq!(e.last_fields, fields),
            other => panic!("{other:?}"),
        }
        assert!(subscription_fact(Some(&restored), None, &[], &page, &app, now).is_some());
        // A loss on record is not recorded again.
        assert_eq!(
            subscription_fact(Some(&lost), None, &[], &page, &app, now),
            None
        );
        // Listed: nothing, unless a loss stands.
        assert_eq!(
            subscription_fact(None, Some(&fields), &[], &page, &app, now),
            None
        );
        assert_eq!(
            subscription_fact(Some(&restored), Some(&fields), &[], &page, &app, now),
            None
        );
        assert!(matches!(
            subscription_fact(Some(&lost), Some(&fields), &[], &page, &app, now),
            Some(Event::AppSubscriptionRestored(e)) if e.source == SubscriptionSource::Check
        ));
    }

    #[test]
    fn the_calling_app_is_found_in_metas_list_by_string_or_number() {
        let (_, app) = ids();
        let body = json!({"data": [
            {"id": 1001, "name": "Bot", "subscribed_fields": ["messages", "standby"]},
            {"id": "1002", "name": "Human"}
        ]});
        assert_eq!(
            listed_fields(&body, &app),
            Some(vec!["messages".to_owned(), "standby".to_owned()])
        );
        assert_eq!(
            listed_fields(&body, &AppId::parse("1002").unwrap()),
            Some(vec![])
        );
        assert_eq!(listed_fields(&body, &AppId::parse("1003").unwrap()), None);
        assert_eq!(listed_fields(&json!({"data": []}), &app), None);
    }

    #[test]
    fn the_newer_of_the_last_check_and_the_last_fact_gives_the_state() {
        let t = Timestamp::from_millis;
        let facts = AppPageFacts {
            subscription: Some(SubscriptionFact::Lost {
                at: t(10),
                last_fields: vec![],
            }),
            ..AppPageFacts::default()
        };
        // After a restart: the fact alone, with its time.
        let h = subscription_health(Some(&facts), None);
        assert_eq!(
            (h.state, h.since, h.checked_at),
            (SubscriptionState::Unsubscribed, Some(t(10)), None)
        );
        // A later check that lists it (the fact not yet recorded) wins.
        let watch = Watch {
            checked: Some((t(20), true)),
            ..Watch::default()
        };
        let h = subscription_health(Some(&facts), Some(&watch));
        assert_eq!(
            (h.state, h.since, h.checked_at),
            (SubscriptionState::Subscribed, None, Some(t(20)))
        );
        // Nothing known at all.
        assert_eq!(
            subscription_health(None, None).state,
            SubscriptionState::Unknown
        );
    }
}
