//! The console's pages. Each reads through the query layer the CLI and the
//! JSON API use, and renders it; nothing here decides anything.

use std::collections::{BTreeMap, HashMap};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::events::{ControlView, SendOutcome};
use domain::{rules, AppId, Event, PageId, Psid, ThreadKey, Timestamp};
use event_log::{EventStore, Record};
use maud::{html, Markup};
use orchestration::audit::ThreadHistory;
use orchestration::health::SubscriptionState;
use orchestration::record::Content;

use super::{check_csrf, layout, problem, read_form, session, Session, Viewer};
use crate::AppState;

/// "Expiring soon": control or the window ends within this long.
const SOON_MS: i64 = 3_600_000;
/// Threads one list shows at most.
const MAX_ROWS: usize = 500;
/// Records the refusal report reads at most, newest first.
const REFUSAL_SCAN: u64 = 200_000;

fn when(t: Timestamp) -> Markup {
    html! { time datetime=(t.to_string()) { (t.to_string()) } }
}

fn countdown(t: Option<Timestamp>) -> Markup {
    match t {
        Some(t) => html! {
            time.countdown datetime=(t.to_string()) data-deadline=(t.millis()) { (t.to_string()) }
        },
        None => html! { span.muted { "—" } },
    }
}

fn page_of(raw: &str) -> Result<PageId, HttpResponse> {
    PageId::parse(raw).map_err(|e| problem(StatusCode::BAD_REQUEST, &format!("page id: {e}")))
}

fn visible_page<S>(
    state: &AppState<S>,
    session: &Session,
    page: &PageId,
) -> Result<(), HttpResponse> {
    if session.viewer.sees_page(state, page) {
        Ok(())
    } else {
        // The same answer for a page that exists elsewhere and one that does
        // not: an app learns nothing about other pages.
        Err(problem(
            StatusCode::NOT_FOUND,
            &format!("There is no page {page} here that you may see."),
        ))
    }
}

fn visible_pages<S>(state: &AppState<S>, session: &Session) -> Vec<PageId> {
    state
        .config
        .pages
        .keys()
        .filter(|p| session.viewer.sees_page(state, p))
        .cloned()
        .collect()
}

/// One thread as the lists show it.
pub struct ThreadRow {
    pub key: ThreadKey,
    pub state: &'static str,
    pub owner: Option<AppId>,
    pub control_expires_at: Option<Timestamp>,
    pub window_closes_at: Option<Timestamp>,
    pub last_activity: Option<Timestamp>,
}

impl ThreadRow {
    fn soon(&self, now: Timestamp) -> bool {
        [self.control_expires_at, self.window_closes_at]
            .into_iter()
            .flatten()
            .any(|t| t > now && t.millis() - now.millis() <= SOON_MS)
    }
}

/// The current row of a thread, from the live projections.
pub fn thread_row<S>(state: &AppState<S>, key: &ThreadKey, now: Timestamp) -> Option<ThreadRow> {
    let snapshot = state.projections.read();
    let ledger = snapshot.thread(key)?;
    let page = snapshot.pages.get(&key.page)?;
    let view = rules::control_at(ledger, page, now);
    let (state_name, owner) = match &view {
        ControlView::Idle => ("idle", None),
        ControlView::Owner { app } => ("active", Some(app.clone())),
        ControlView::Unknown => ("drift", None),
    };
    Some(ThreadRow {
        key: key.clone(),
        state: state_name,
        owner,
        control_expires_at: match view {
            ControlView::Owner { .. } => rules::control_expiry(ledger, page),
            _ => None,
        },
        window_closes_at: ledger.window.map(|w| w.closes_at),
        last_activity: ledger.last_user_action,
    })
}

fn row_markup(row: &ThreadRow) -> Markup {
    let id = format!("{}/{}", row.key.page, row.key.psid);
    html! {
        tr data-thread=(id) {
            td { (row.key.page) }
            td { a href={"/console/threads/" (row.key.page) "/" (row.key.psid)} { (row.key.psid) } }
            td data-field="state" { (row.state) }
            td data-field="owner" { @match &row.owner { Some(a) => (a), None => span.muted { "—" } } }
            td data-field="window" { (countdown(row.window_closes_at)) }
            td data-field="activity" { @match row.last_activity { Some(t) => (when(t)), None => span.muted { "—" } } }
        }
    }
}

/// The session and the fields of a form posted from the console, its CSRF
/// token checked.
async fn posted_form<S: EventStore + 'static>(
    state: &AppState<S>,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(Session, HashMap<String, String>), HttpResponse> {
    let session = session(state, req)?;
    let form = read_form(state, req, payload).await?;
    check_csrf(&session, &form)?;
    Ok((session, form))
}

macro_rules! signed_in {
    ($state:expr, $req:expr) => {
        match session(&$state, &$req) {
            Ok(s) => s,
            Err(res) => return res,
        }
    };
}

// ---- 1. Pages and apps. ---------------------------------------------------

/// `GET /console`.
pub async fn overview<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> HttpResponse {
    let session = signed_in!(state, req);
    let statuses: HashMap<String, dispatch::BackendStatus> = state
        .dispatcher
        .as_ref()
        .map(|d| d.status().into_iter().map(|s| (s.app.clone(), s)).collect())
        .unwrap_or_default();
    let mut dead: HashMap<AppId, usize> = HashMap::new();
    for app in state.config.apps.keys() {
        if let Ok(list) = dispatch::dead_letters(state.store.as_ref(), app).await {
            dead.insert(
                app.clone(),
                list.iter().filter(|d| !d.redrive_requested).count(),
            );
        }
    }
    let health = state.baton.page_health(None);
    let health: HashMap<(PageId, AppId), orchestration::health::AppHealth> = health
        .pages
        .into_iter()
        .flat_map(|p| {
            let page = p.id;
            p.apps
                .into_iter()
                .map(move |a| ((page.clone(), a.id.clone()), a))
        })
        .collect();
    let body = html! {
        @for page_id in visible_pages(&state, &session) {
            @let (name, page) = &state.config.pages[&page_id];
            section aria-labelledby={"page-" (page_id)} {
                h2 id={"page-" (page_id)} { "Page " (page_id) @if !name.is_empty() { " · " (name) } }
                p { "Routing: " strong { (page.mode.name()) }
                    @if let Some(default) = page.mode.idle_holder() { " · default app " strong { (default) } } }
                div.scroll { table {
                    caption { "Apps on page " (page_id) }
                    thead { tr { th scope="col" { "App" } th scope="col" { "Kind" } th scope="col" { "Backend" }
                        th scope="col" { "Page token" } th scope="col" { "Subscribed" } } }
                    tbody {
                        @for (app_id, profile) in &page.apps {
                            @if session.viewer.sees_app(app_id) {
                                @let managed = state.config.managed(app_id).is_some();
                                @let h = health.get(&(page_id.clone(), app_id.clone()));
                                tr {
                                    th scope="row" { (app_id) @if let Some(a) = state.config.apps.get(app_id) { @if !a.name.is_empty() { " · " (a.name) } } }
                                    td { (format!("{:?}", profile.kind).to_lowercase()) @if !managed { " (external)" } }
                                    td { @match statuses.get(app_id.as_str()) {
                                        Some(s) => { "lag " (s.queue_depth) " · failures " (s.failures) " · dead letters " (dead.get(app_id).copied().unwrap_or(0)) }
                                        None => span.muted { @if managed { "no backend_url" } @else { "not managed" } },
                                    } }
                                    td { @match h.map(|h| &h.token) {
                                        Some(t) => (token_cell(t)),
                                        None => span.muted { "unknown" },
                                    } }
                                    td { @match h.map(|h| &h.subscription) {
                                        Some(sub) => {
                                            (subscription_cell(sub))
                                            @if managed && session.viewer.may_act() && sub.state == SubscriptionState::Unsubscribed {
                                                form method="post" action={"/console/pages/" (page_id) "/apps/" (app_id) "/resubscribe"} {
                                                    input type="hidden" name="csrf" value=(session.csrf);
                                                    button type="submit" aria-label={"Subscribe " (app_id) " to page " (page_id) " again"} { "Re-subscribe" }
                                                }
                                            }
                                        }
                                        None => span.muted { "unknown" },
                                    } }
                                }
                            }
                        }
                    }
                } }
            }
        }
    };
    layout(&session, "/console", "Pages and apps", body)
}

fn token_cell(t: &orchestration::health::TokenHealth) -> Markup {
    use orchestration::health::TokenState;
    html! {
        @match t.state {
            TokenState::Valid => { span.ok { "valid" } @if let Some(at) = t.answered_at { " · " (when(at)) } }
            TokenState::Invalid => {
                strong.error { "invalid" }
                @if let Some(since) = t.invalid_since { " since " (when(since)) }
                @if let Some(e) = &t.error { br; "(#" (e.code) @if let Some(s) = e.subcode { "/" (s) } ") " (e.message) }
            }
            TokenState::Unknown => span.muted { "unknown (no call yet)" },
        }
    }
}

fn subscription_cell(s: &orchestration::health::SubscriptionHealth) -> Markup {
    html! {
        @match s.state {
            SubscriptionState::Subscribed => { span.ok { "subscribed" } @if let Some(at) = s.checked_at { " · checked " (when(at)) } }
            SubscriptionState::Unsubscribed => { strong.error { "dropped" } @if let Some(since) = s.since { " since " (when(since)) } }
            SubscriptionState::Unknown => span.muted { "not checked yet" },
        }
        @if let Some(e) = &s.check_error { br; span.muted { "last check failed: " (e.message) } }
    }
}

/// `POST /console/pages/{page}/apps/{app}/resubscribe` (admin only,
/// CSRF-checked): subscribes the app to the page again at Meta.
pub async fn resubscribe<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> HttpResponse {
    let (session, _) = match posted_form(&state, &req, payload).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    if !session.viewer.may_act() {
        return problem(
            StatusCode::FORBIDDEN,
            "Only the admin may subscribe an app again.",
        );
    }
    let (page, app) = path.into_inner();
    let (Ok(page), Ok(app)) = (PageId::parse(page), AppId::parse(app)) else {
        return problem(StatusCode::BAD_REQUEST, "bad page or app id");
    };
    match state.baton.resubscribe(&page, &app, "console:admin").await {
        Ok(_) => HttpResponse::SeeOther()
            .insert_header((actix_web::http::header::LOCATION, "/console"))
            .finish(),
        Err(e) => problem(
            StatusCode::BAD_GATEWAY,
            &format!("Not subscribed again: {e}"),
        ),
    }
}

// ---- 2. Threads. ----------------------------------------------------------

/// `GET /console/threads?page=&app=&state=`.
pub async fn threads<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let session = signed_in!(state, req);
    let now = state.clock.now();
    let pages = visible_pages(&state, &session);
    let want_page = query.get("page").filter(|p| !p.is_empty());
    let want_app = query.get("app").filter(|a| !a.is_empty());
    let want_state = query.get("state").filter(|s| !s.is_empty());
    let keys: Vec<ThreadKey> = {
        let snapshot = state.projections.read();
        let mut keys: Vec<ThreadKey> = snapshot
            .ledgers()
            .map(|ledger| &ledger.key)
            .filter(|k| pages.contains(&k.page))
            .filter(|k| want_page.is_none_or(|p| k.page.as_str() == p.as_str()))
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    let mut rows = Vec::new();
    for key in &keys {
        let Some(row) = thread_row(&state, key, now) else {
            continue;
        };
        if want_app.is_some_and(|a| row.owner.as_ref().is_none_or(|o| o.as_str() != a.as_str())) {
            continue;
        }
        let keep = match want_state.map(String::as_str) {
            None => true,
            Some("expiring") => row.soon(now),
            Some(s) => row.state == s,
        };
        if keep {
            rows.push(row);
        }
        if rows.len() >= MAX_ROWS {
            break;
        }
    }
    let apps: Vec<&AppId> = state
        .config
        .apps
        .keys()
        .filter(|a| session.viewer.sees_app(a))
        .collect();
    let selected = |v: Option<&String>, x: &str| v.is_some_and(|v| v == x);
    let body = html! {
        form.filters method="get" action="/console/threads" {
            label for="f-page" { "Page" }
            select id="f-page" name="page" {
                option value="" { "All pages" }
                @for p in &pages { option value=(p) selected[selected(want_page, p.as_str())] { (p) } }
            }
            label for="f-app" { "Owner" }
            select id="f-app" name="app" {
                option value="" { "Any app" }
                @for a in &apps { option value=(a) selected[selected(want_app, a.as_str())] { (a) } }
            }
            label for="f-state" { "State" }
            select id="f-state" name="state" {
                option value="" { "Any state" }
                @for (v, label) in [("idle", "Idle"), ("active", "Active"), ("expiring", "Expiring within an hour"), ("drift", "Drift, under reconciliation")] {
                    option value=(v) selected[selected(want_state, v)] { (label) }
                }
            }
            button type="submit" { "Filter" }
        }
        p.live role="status" aria-live="polite" data-live-status { "Live updates connecting…" }
        div.scroll { table data-live="threads" {
            caption { (rows.len()) " threads" @if rows.len() >= MAX_ROWS { " (the first " (MAX_ROWS) ")" } }
            thead { tr { th scope="col" { "Page" } th scope="col" { "Thread (PSID)" } th scope="col" { "State" }
                th scope="col" { "Owner" } th scope="col" { "Window closes" } th scope="col" { "Last user activity" } } }
            tbody { @for row in &rows { (row_markup(row)) } }
        } }
    };
    layout(&session, "/console/threads", "Threads", body)
}

// ---- 4. A thread. ---------------------------------------------------------

/// The thread's records and the page's, merged in log order, decoded with
/// their content (erased content marked).
async fn thread_records<S: EventStore>(
    state: &AppState<S>,
    key: &ThreadKey,
) -> Result<Vec<(Record, Event, Content)>, HttpResponse> {
    let unavailable = |e: event_log::StorageError| {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("The log cannot be read: {e}"),
        )
    };
    let mut records = Vec::new();
    for stream in [key.stream_name(), format!("page/{}", key.page)] {
        let mut from = 1;
        loop {
            let batch = state
                .store
                .read_stream(&stream, from, 1024)
                .await
                .map_err(unavailable)?;
            let Some(last) = batch.last() else { break };
            from = last.stream_version + 1;
            records.extend(batch);
        }
    }
    records.sort_by_key(|r| r.position);
    Ok(records
        .into_iter()
        .filter_map(|r| {
            let opened = orchestration::record::open(Some(state.store.vault()), &r).ok()?;
            Some((r, opened.event, opened.content))
        })
        .collect())
}

fn parse_at(query: &HashMap<String, String>) -> Result<Option<Timestamp>, HttpResponse> {
    match query.get("at").filter(|a| !a.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .map(|ms| Some(Timestamp::from_millis(ms)))
            .map_err(|_| {
                problem(
                    StatusCode::BAD_REQUEST,
                    "at must be a time in milliseconds since the epoch",
                )
            }),
    }
}

fn state_panel(history: &ThreadHistory, now: Timestamp) -> Markup {
    let at = history.state(now);
    html! {
        dl.state id="state" data-at=(at.at.millis()) {
            dt { "At" } dd { (when(at.at)) }
            dt { "State" } dd data-field="state" { (at.state) }
            dt { "Owner" } dd data-field="owner" { @match &at.owner { Some(a) => (a), None => "—" } }
            dt { "Answering app" } dd { @match &at.answering_app { Some(a) => (a), None => "—" } }
            dt { "Control expires" } dd { @match at.control_expires_at { Some(t) => (when(t)), None => "—" } }
            dt { "Window" } dd { @match at.window {
                Some((closes, true)) => { "open until " (when(closes)) }
                Some((closes, false)) => { "closed at " (when(closes)) }
                None => "no qualifying user action",
            } }
            dt { "Pending requests" } dd { (history.ledger.pending_requests.len()) }
        }
    }
}

/// The thread a console URL names, folded up to the query's `at` (all of it
/// without one), with its records.
async fn thread_history<S: EventStore>(
    state: &AppState<S>,
    session: &Session,
    path: web::Path<(String, String)>,
    query: &HashMap<String, String>,
) -> Result<(ThreadKey, ThreadHistory, Vec<(Record, Event, Content)>), HttpResponse> {
    let at = parse_at(query)?;
    let (page, psid) = path.into_inner();
    let page = page_of(&page)?;
    visible_page(state, session, &page)?;
    let psid =
        Psid::parse(psid).map_err(|e| problem(StatusCode::BAD_REQUEST, &format!("psid: {e}")))?;
    let key = ThreadKey::new(page.clone(), psid);
    let Some(page_rules) = state.config.page(&page).cloned() else {
        return Err(problem(StatusCode::NOT_FOUND, "no such page"));
    };
    let records = thread_records(state, &key).await?;
    let mut history = ThreadHistory::new(key.clone(), page_rules, at);
    for (record, event, _) in &records {
        history.observe(record, event);
    }
    Ok((key, history, records))
}

/// `GET /console/threads/{page}/{psid}?at=T`.
pub async fn thread<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let session = signed_in!(state, req);
    let (key, history, records) = match thread_history(&state, &session, path, &query).await {
        Ok(x) => x,
        Err(res) => return res,
    };
    let now = state.clock.now();
    let mine: Vec<&(Record, Event, Content)> = records
        .iter()
        .filter(|(_, e, _)| orchestration::audit::concerns(e, &key))
        .collect();
    let times: Vec<i64> = mine
        .iter()
        .map(|(r, e, _)| orchestration::audit::record_time(r, e).millis())
        .collect();
    // Whole seconds, so the slider's ends (step 1 s) cover the first and
    // the last event.
    let first = times
        .iter()
        .copied()
        .min()
        .unwrap_or(now.millis())
        .div_euclid(1000)
        * 1000;
    let last = (times.iter().copied().max().unwrap_or(now.millis()) + 999).div_euclid(1000) * 1000;
    let shown_at = history
        .cutoff()
        .map_or(last, |t| t.millis())
        .clamp(first, last.max(first));
    // Sends, with their outcomes.
    let mut outcomes: HashMap<String, &SendOutcome> = HashMap::new();
    for (_, e, _) in &mine {
        if let Event::SendOutcomeRecorded(o) = e {
            outcomes.insert(o.send_id.to_string(), &o.outcome);
        }
    }
    let path = format!("/console/threads/{}/{}", key.page, key.psid);
    let body = html! {
        p { "Page " (key.page) " · PSID " (key.psid) " · " a href={"/console/threads?page=" (key.page)} { "all threads of this page" } }
        section aria-labelledby="state-h" {
            h2 id="state-h" { "State at a time" }
            form.slider method="get" action=(path) data-state-url={(path) "/state"} {
                label for="at" { "Time: drag to see the state at that moment" }
                input id="at" name="at" type="range" min=(first) max=(last.max(first)) step="1000" value=(shown_at)
                    aria-valuetext=(Timestamp::from_millis(shown_at).to_string());
                output for="at" id="at-label" { (Timestamp::from_millis(shown_at).to_string()) }
                button type="submit" { "Show" }
            }
            div data-live-thread=(format!("{}/{}", key.page, key.psid)) { (state_panel(&history, now)) }
        }
        section aria-labelledby="timeline-h" {
            h2 id="timeline-h" { "Timeline" }
            ol.timeline {
                @for (record, event, content) in &mine {
                    @let t = orchestration::audit::record_time(record, event);
                    li data-time=(t.millis()) class=[classify(event)] {
                        (when(t)) " · " code { (event.type_name()) } " · "
                        (domain::explain::explain(event))
                        @if content.is_gone() { " " strong.erased { "(content erased)" } }
                    }
                }
            }
        }
        section aria-labelledby="sends-h" {
            h2 id="sends-h" { "Sends" }
            div.scroll { table {
                caption { "Sends on this thread and what became of them" }
                thead { tr { th scope="col" { "When" } th scope="col" { "App" } th scope="col" { "Decision" } th scope="col" { "Outcome" } } }
                tbody {
                    @for (record, event, _) in &mine {
                        @match event {
                            Event::SendAccepted(s) => tr {
                                td { (when(orchestration::audit::record_time(record, event))) }
                                td { (s.send.app) }
                                td { "accepted" }
                                td { @match outcomes.get(&s.send.send_id.to_string()) {
                                    Some(SendOutcome::Sent { message_id, .. }) => { "sent · " (message_id) }
                                    Some(SendOutcome::Failed { error }) => { "failed · (#" (error.code) ") " (error.message) }
                                    Some(SendOutcome::Unknown { reason }) => { "unknown · " (reason) }
                                    Some(SendOutcome::SettledByEcho { mid }) => { "sent (settled by its echo) · " (mid) }
                                    None => "pending",
                                } }
                            },
                            Event::CommandRefused(r) if matches!(r.command, domain::Command::SendMessage(_)) => tr {
                                td { (when(r.at)) }
                                td { (r.command.app()) }
                                td { "refused" }
                                td { "(#" (r.rejection.code) @if let Some(s) = r.rejection.subcode { "/" (s) } ") " (r.rejection.reason) }
                            },
                            _ => {}
                        }
                    }
                }
            } }
        }
    };
    layout(
        &session,
        "/console/threads",
        &format!("Thread {}", key.psid),
        body,
    )
}

fn classify(event: &Event) -> Option<&'static str> {
    match event {
        Event::CommandRefused(_) => Some("refusal"),
        Event::OwnershipDriftDetected(_) | Event::StaleEvidenceIgnored(_) => Some("drift"),
        Event::OwnershipConfirmed(_) => Some("reconciled"),
        _ => None,
    }
}

/// `GET /console/threads/{page}/{psid}/state?at=T`: the state panel alone,
/// for the time slider.
pub async fn thread_state<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let session = signed_in!(state, req);
    match thread_history(&state, &session, path, &query).await {
        Ok((_, history, _)) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header(("Cache-Control", "no-store"))
            .body(state_panel(&history, state.clock.now()).into_string()),
        Err(res) => res,
    }
}

// ---- 3. Who can I message now? ---------------------------------------------

/// `GET /console/messageable?app=`.
pub async fn messageable<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let session = signed_in!(state, req);
    let apps: Vec<AppId> = state
        .config
        .apps
        .iter()
        .filter(|(id, a)| a.managed.is_some() && session.viewer.sees_app(id))
        .map(|(id, _)| id.clone())
        .collect();
    let chosen = match (query.get("app"), &session.viewer) {
        (Some(a), _) if !a.is_empty() => match AppId::parse(a.as_str()) {
            Ok(a) if apps.contains(&a) => Some(a),
            _ => {
                return problem(
                    StatusCode::NOT_FOUND,
                    "There is no managed app by that id that you may see.",
                )
            }
        },
        (_, Viewer::App(me)) => Some(me.clone()),
        _ => apps.first().cloned(),
    };
    let rows = chosen
        .as_ref()
        .map(|app| state.baton.messageable(app, None, 1000))
        .unwrap_or_default();
    let body = html! {
        p { "The threads where a send by the app would be accepted now, by the same rules as a real send. Meta offers no API for this. As JSON: "
            code { "GET /api/apps/{app_id}/messageable" } "." }
        form.filters method="get" action="/console/messageable" {
            label for="m-app" { "App" }
            select id="m-app" name="app" {
                @for a in &apps { option value=(a) selected[chosen.as_ref() == Some(a)] { (a) } }
            }
            button type="submit" { "Show" }
        }
        div.scroll { table data-messageable {
            caption { (rows.len()) " threads " @if let Some(a) = &chosen { (a) } " may message now" }
            thead { tr { th scope="col" { "Page" } th scope="col" { "Thread (PSID)" } th scope="col" { "As" } th scope="col" { "Basis" } } }
            tbody {
                @for m in &rows {
                    tr data-thread={(m.page) "/" (m.psid)} {
                        td { (m.page) }
                        td { a href={"/console/threads/" (m.page) "/" (m.psid)} { (m.psid) } }
                        td { (basis_name(&m.owner)) }
                        td { (basis_name(&m.window)) }
                    }
                }
            }
        } }
    };
    layout(
        &session,
        "/console/messageable",
        "Who can I message now?",
        body,
    )
}

/// The snake-case name a basis serialises to (a plain string, or its
/// `basis` tag).
fn basis_name<T: serde::Serialize + std::fmt::Debug>(basis: &T) -> String {
    match serde_json::to_value(basis) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(v) => v
            .get("basis")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| format!("{basis:?}"), str::to_owned),
        Err(_) => format!("{basis:?}"),
    }
}

// ---- 5. Refusals. -----------------------------------------------------------

/// `GET /console/refusals?hours=N`.
pub async fn refusals<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let session = signed_in!(state, req);
    let hours: i64 = match query.get("hours").filter(|h| !h.is_empty()) {
        None => 24,
        Some(h) => match h.parse::<i64>() {
            Ok(h) if (1..=24 * 366).contains(&h) => h,
            _ => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "hours must be a whole number from 1 to 8784",
                )
            }
        },
    };
    let now = state.clock.now();
    let since = Timestamp::from_millis(now.millis() - hours * 3_600_000);
    let head = state.store.head().await.map(|h| h.position).unwrap_or(0);
    let mut from = head.saturating_sub(REFUSAL_SCAN) + 1;
    let mut found: Vec<domain::events::CommandRefused> = Vec::new();
    while from <= head {
        let Ok(batch) = state.store.read_all(from, 4096).await else {
            break;
        };
        let Some(last) = batch.last() else { break };
        from = last.position + 1;
        for r in &batch {
            if r.type_name != "CommandRefused" {
                continue;
            }
            if let Ok(Event::CommandRefused(e)) =
                Event::decode(&r.type_name, r.schema_version, &r.payload)
            {
                if e.at >= since
                    && session.viewer.sees_page(&state, &e.thread.page)
                    && session.viewer.sees_app(e.command.app())
                {
                    found.push(e);
                }
            }
        }
    }
    let mut by_code: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut by_app: BTreeMap<String, usize> = BTreeMap::new();
    for e in &found {
        let code = match e.rejection.subcode {
            Some(s) => format!("{}/{}", e.rejection.code, s),
            None => e.rejection.code.to_string(),
        };
        let entry = by_code
            .entry(code)
            .or_insert((0, e.rejection.reason.clone()));
        entry.0 += 1;
        *by_app.entry(e.command.app().to_string()).or_default() += 1;
    }
    let body = html! {
        form.filters method="get" action="/console/refusals" {
            label for="r-hours" { "Over the last (hours)" }
            input id="r-hours" name="hours" type="number" min="1" max="8784" value=(hours);
            button type="submit" { "Show" }
        }
        div.scroll { table {
            caption { (found.len()) " refusals by code since " (since.to_string()) }
            thead { tr { th scope="col" { "Code" } th scope="col" { "Count" } th scope="col" { "An example reason" } } }
            tbody { @for (code, (n, reason)) in &by_code { tr { td { (code) } td { (n) } td { (reason) } } } }
        } }
        div.scroll { table {
            caption { "By app" }
            thead { tr { th scope="col" { "App" } th scope="col" { "Count" } } }
            tbody { @for (app, n) in &by_app { tr { td { (app) } td { (n) } } } }
        } }
        h2 { "Latest" }
        ul { @for e in found.iter().rev().take(100) {
            li { (when(e.at)) " · " (e.command.app()) " · "
                a href={"/console/threads/" (e.thread.page) "/" (e.thread.psid)} { (e.thread.psid) }
                " · (#" (e.rejection.code) ") " (e.rejection.reason) }
        } }
    };
    layout(&session, "/console/refusals", "Refusals", body)
}

// ---- 6. Delivery. -----------------------------------------------------------

/// `GET /console/delivery`.
pub async fn delivery<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> HttpResponse {
    let session = signed_in!(state, req);
    let statuses = state
        .dispatcher
        .as_ref()
        .map(|d| d.status())
        .unwrap_or_default();
    let mut sections = Vec::new();
    for s in statuses {
        let Ok(app) = AppId::parse(s.app.as_str()) else {
            continue;
        };
        if !session.viewer.sees_app(&app) {
            continue;
        }
        let dead = dispatch::dead_letters(state.store.as_ref(), &app)
            .await
            .unwrap_or_default();
        sections.push((app, s, dead));
    }
    let body = html! {
        @if sections.is_empty() { p { "No backend you may see has a backend_url: dispatch is off." } }
        @for (app, s, dead) in &sections {
            section aria-labelledby={"app-" (app)} {
                h2 id={"app-" (app)} { "App " (app) }
                dl.state {
                    dt { "Cursor" } dd { (s.cursor) }
                    dt { "Read up to" } dd { (s.read_position) }
                    dt { "Waiting (lag)" } dd { (s.queue_depth) }
                    dt { "Oldest waiting" } dd { @match s.oldest_pending_age_ms { Some(ms) => { (ms / 1000) " s" } None => "—" } }
                    dt { "Delivered" } dd { (s.delivered) }
                    dt { "Failures" } dd { (s.failures) }
                    dt { "Last error" } dd { @match &s.last_error { Some(e) => (e), None => "—" } }
                }
                div.scroll { table {
                    caption { (dead.len()) " dead letters" }
                    thead { tr { th scope="col" { "Item position" } th scope="col" { "Thread" } th scope="col" { "Given up at" }
                        th scope="col" { "Last error" } th scope="col" { "Redrive" } } }
                    tbody { @for d in dead {
                        tr {
                            td { (d.event.position) }
                            td { @match &d.event.thread { Some(t) => a href={"/console/threads/" (t.page) "/" (t.psid)} { (t.psid) }, None => "—" } }
                            td { (when(d.event.at)) }
                            td { (d.event.last_error) }
                            td {
                                @if d.redrive_requested { "requested" }
                                @else if session.viewer.may_act() {
                                    form method="post" action={"/console/delivery/" (app) "/redrive"} {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        input type="hidden" name="position" value=(d.event.position);
                                        button type="submit" aria-label={"Redrive item " (d.event.position) " to " (app)} { "Redrive" }
                                    }
                                } @else { span.muted { "admin only" } }
                            }
                        }
                    } }
                } }
            }
        }
    };
    layout(&session, "/console/delivery", "Delivery", body)
}

/// `POST /console/delivery/{app}/redrive` (admin only, CSRF-checked).
pub async fn redrive<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let (session, form) = match posted_form(&state, &req, payload).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    if !session.viewer.may_act() {
        return problem(StatusCode::FORBIDDEN, "Only the admin may redrive.");
    }
    let Ok(app) = AppId::parse(path.into_inner()) else {
        return problem(StatusCode::BAD_REQUEST, "bad app id");
    };
    let Some(position) = form.get("position").and_then(|p| p.parse::<u64>().ok()) else {
        return problem(StatusCode::BAD_REQUEST, "position must be a log position");
    };
    match dispatch::request_redrive(
        state.store.as_ref(),
        &app,
        position,
        "console:admin",
        state.clock.now(),
    )
    .await
    {
        Ok(_) => HttpResponse::SeeOther()
            .insert_header((actix_web::http::header::LOCATION, "/console/delivery"))
            .finish(),
        Err(dispatch::RedriveError::NotDeadLettered { .. }) => problem(
            StatusCode::NOT_FOUND,
            &format!("App {app} has no dead letter at position {position}."),
        ),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

// ---- 7. Integrity. ---------------------------------------------------------

fn latest_checkpoint(dir: &std::path::Path) -> Option<event_log::SignedCheckpoint> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| event_log::SignedCheckpoint::read_file(&e.path()).ok())
        .max_by_key(|c| c.checkpoint.position)
}

fn integrity_page<S: EventStore>(
    state: &AppState<S>,
    session: &Session,
    head: event_log::Head,
    result: Option<Markup>,
) -> HttpResponse {
    let checkpoint = latest_checkpoint(&state.config.data_dir.join("checkpoints"));
    let body = html! {
        dl.state {
            dt { "Records" } dd { (head.position) }
            dt { "Head hash" } dd { code.hash { (head.hash.to_hex()) } }
            dt { "Last signed checkpoint" } dd { @match &checkpoint {
                Some(c) => { "position " (c.checkpoint.position) " · key " (c.checkpoint.key_id) " · " (when(Timestamp::from_millis(c.checkpoint.at_ms))) }
                None => "none (no checkpoint_key configured, or none signed yet)",
            } }
        }
        form method="post" action="/console/integrity/verify" {
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" { "Verify the whole chain now" }
        }
        @if let Some(result) = result { div role="status" data-verify-result { (result) } }
    };
    layout(session, "/console/integrity", "Integrity", body)
}

/// `GET /console/integrity`.
pub async fn integrity<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> HttpResponse {
    let session = signed_in!(state, req);
    let head = state.store.head().await.unwrap_or_default();
    integrity_page(&state, &session, head, None)
}

/// `POST /console/integrity/verify`: re-reads and re-hashes the whole log.
pub async fn verify<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (session, _) = match posted_form(&state, &req, payload).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let head = state.store.head().await.unwrap_or_default();
    let result = match event_log::verify(state.store.as_ref()).await {
        Ok(report) => {
            html! { p.ok { "The chain verifies: " (report.records) " records, head " code.hash { (report.head.hash.to_hex()) } "." } }
        }
        Err(e) => html! { p.error { "The chain does NOT verify: " (e.to_string()) } },
    };
    integrity_page(&state, &session, head, Some(result))
}

// ---- 8. Metrics. -----------------------------------------------------------

/// `GET /console/metrics`.
pub async fn metrics<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> HttpResponse {
    let session = signed_in!(state, req);
    let mut samples = state.samples.snapshot();
    samples.push(super::live::partial(&state).await);
    let body = super::live::charts(&samples);
    layout(&session, "/console/metrics", "Live metrics", body)
}
