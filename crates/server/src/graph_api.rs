//! The Graph-compatible API apps call instead of Meta: `/v{n}/{me|page_id}/…`
//! with Meta's request shapes (JSON or form fields, `access_token` in the
//! query, body or a bearer header, `appsecret_proof` checked when present)
//! and Meta's error JSON. Each call is decided by the domain, recorded, and
//! only then forwarded to Meta with the page token Baton holds; Meta's answer
//! is recorded too. A refused call never reaches Meta.

use std::collections::BTreeSet;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::events::{ControlView, Event, GraphOutcome};
use domain::rules::{self, Observation};
use domain::{AppId, Command, CommandId, PageId, Psid, Rejection, RoutingMode, ThreadKey};
use event_log::EventStore;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::auth::ct_eq;
use crate::graph_client::GraphAnswer;
use crate::record::{record_with, RecordError};
use crate::AppState;

/// An answer in Meta's error shape: the Graph-compatible API's one error type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphFailure {
    pub status: StatusCode,
    pub code: u32,
    pub subcode: Option<u32>,
    pub message: String,
    /// Meta's own error body, passed through as Meta sent it.
    pub body: Option<Value>,
}

impl std::fmt::Display for GraphFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl actix_web::ResponseError for GraphFailure {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.insert_header(("Retry-After", "1"));
        }
        if let Some(body) = &self.body {
            return res.json(body);
        }
        let trace = format!("Baton{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        res.json(wire::graph::error_body(
            self.code,
            self.subcode,
            &self.message,
            "OAuthException",
            &trace,
        ))
    }
}

pub fn meta_error(
    status: StatusCode,
    code: u32,
    subcode: Option<u32>,
    message: impl AsRef<str>,
) -> GraphFailure {
    GraphFailure {
        status,
        code,
        subcode,
        message: message.as_ref().to_owned(),
        body: None,
    }
}

fn bad_param(message: impl AsRef<str>) -> GraphFailure {
    meta_error(
        StatusCode::BAD_REQUEST,
        100,
        None,
        format!("(#100) {}", message.as_ref()),
    )
}

pub fn rejection_response(r: &Rejection) -> GraphFailure {
    meta_error(StatusCode::BAD_REQUEST, r.code, r.subcode, r.meta_message())
}

pub fn record_error(e: &RecordError) -> GraphFailure {
    meta_error(
        StatusCode::SERVICE_UNAVAILABLE,
        2,
        None,
        format!("(#2) Service temporarily unavailable: {e}"),
    )
}

/// The caller of a Graph-shaped request, authenticated.
#[derive(Debug)]
pub struct Caller {
    pub app: AppId,
    pub page: PageId,
    pub version: String,
    pub params: Map<String, Value>,
}

/// Reads parameters from the query string and the body (JSON or form), as
/// Meta does; form values holding JSON (`recipient={"id":"…"}`) are parsed.
pub fn params(req: &HttpRequest, body: &[u8]) -> Result<Map<String, Value>, GraphFailure> {
    let mut map = Map::new();
    let from_pairs = |map: &mut Map<String, Value>, text: &str| -> Result<(), GraphFailure> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(text)
            .map_err(|e| bad_param(format!("cannot read the parameters: {e}")))?;
        for (k, v) in pairs {
            let trimmed = v.trim_start();
            let value = if trimmed.starts_with('{') || trimmed.starts_with('[') {
                serde_json::from_str(&v).unwrap_or(Value::String(v))
            } else {
                Value::String(v)
            };
            map.insert(k, value);
        }
        Ok(())
    };
    from_pairs(&mut map, req.query_string())?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(map);
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let text =
            std::str::from_utf8(body).map_err(|_| bad_param("the form body is not UTF-8"))?;
        from_pairs(&mut map, text)?;
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => map.extend(o),
            Ok(_) => return Err(bad_param("the JSON body must be an object")),
            Err(e) => return Err(bad_param(format!("the body is not valid JSON: {e}"))),
        }
    }
    Ok(map)
}

/// Finds the app by its Baton token, checks `appsecret_proof`, resolves the
/// page (`me` = the app's only page) and checks the app is on it.
pub fn authenticate<S>(
    state: &AppState<S>,
    req: &HttpRequest,
    node: &str,
    version: &str,
    body: &[u8],
) -> Result<Caller, GraphFailure> {
    let mut params = params(req, body)?;
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })
        .map(str::to_owned);
    let token = params
        .remove("access_token")
        .and_then(|v| v.as_str().map(str::to_owned))
        .or(bearer);
    let invalid_token = || {
        meta_error(
            StatusCode::BAD_REQUEST,
            190,
            None,
            "Invalid OAuth access token - Cannot parse access token",
        )
    };
    let Some(token) = token else {
        return Err(meta_error(
            StatusCode::BAD_REQUEST,
            190,
            None,
            "An access token is required to request this resource.",
        ));
    };
    let Some((app, managed)) = state
        .config
        .apps
        .values()
        .filter_map(|a| Some((a, a.managed.as_ref()?)))
        .find(|(_, m)| ct_eq(m.api_token.expose().as_bytes(), token.as_bytes()))
    else {
        return Err(invalid_token());
    };
    if let Some(proof) = params.remove("appsecret_proof") {
        let proof = proof.as_str().unwrap_or_default().to_owned();
        let mut mac = Hmac::<Sha256>::new_from_slice(managed.app_secret.expose().as_bytes())
            .expect("HMAC takes any key");
        mac.update(token.as_bytes());
        let ok = hex::decode(&proof).is_ok_and(|p| mac.verify_slice(&p).is_ok());
        if !ok {
            return Err(bad_param(
                "Invalid appsecret_proof provided in the API argument",
            ));
        }
    }
    let pages_of_app: Vec<&PageId> = state
        .config
        .pages
        .iter()
        .filter(|(_, (_, p))| p.apps.contains_key(&app.id))
        .map(|(id, _)| id)
        .collect();
    let page = if node == "me" {
        match pages_of_app.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(meta_error(
                    StatusCode::BAD_REQUEST,
                    200,
                    None,
                    format!("(#200) app {} is not connected to any page", app.id),
                ))
            }
            _ => {
                return Err(bad_param(format!(
                    "app {} serves several pages: call /{version}/{{page_id}}/… instead of /me",
                    app.id
                )))
            }
        }
    } else {
        let Ok(page) = PageId::parse(node) else {
            return Err(meta_error(
                StatusCode::BAD_REQUEST,
                100,
                Some(33),
                format!("(#100) Object with ID '{node}' does not exist"),
            ));
        };
        if !state.config.pages.contains_key(&page) {
            return Err(meta_error(StatusCode::BAD_REQUEST, 100, Some(33), format!("(#100) Object with ID '{page}' does not exist, cannot be loaded due to missing permissions, or does not support this operation")));
        }
        if !pages_of_app.contains(&&page) {
            return Err(meta_error(
                StatusCode::FORBIDDEN,
                200,
                None,
                format!("(#200) app {} is not connected to page {page}", app.id),
            ));
        }
        page
    };
    Ok(Caller {
        app: app.id.clone(),
        page,
        version: version.to_owned(),
        params,
    })
}

/// `recipient.id` as a PSID.
pub fn recipient_psid(params: &Map<String, Value>) -> Result<Psid, GraphFailure> {
    let Some(recipient) = params.get("recipient") else {
        return Err(bad_param("The parameter recipient is required"));
    };
    let id = recipient
        .get("id")
        .and_then(wire::webhook::id_string)
        .ok_or_else(|| bad_param("param recipient must be an object with an id"))?;
    Psid::parse(id).map_err(|e| bad_param(format!("param recipient.id is not valid: {e}")))
}

fn optional_string(
    params: &Map<String, Value>,
    key: &str,
    max: usize,
) -> Result<Option<String>, GraphFailure> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(bad_param(format!(
            "param {key} must be at most {max} characters"
        ))),
        Some(other) => Ok(Some(other.to_string())),
    }
}

fn new_id() -> CommandId {
    CommandId::parse(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid id")
}

/// `POST /{version}/{node}/{edge}`.
pub async fn post_edge<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<(String, String, String)>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, GraphFailure> {
    let (version, node, edge) = path.into_inner();
    let caller = authenticate(&state, &req, &node, &version, &body)?;
    let _span =
        tracing::info_span!("graph", app = %caller.app, page = %caller.page, %edge).entered();
    match edge.as_str() {
        "pass_thread_control"
        | "take_thread_control"
        | "request_thread_control"
        | "release_thread_control"
        | "extend_thread_control" => control(&state, caller, &edge).await,
        "messages" => crate::sends::messages(&state, caller, &req).await,
        _ => Err(bad_param(format!(
            "Unsupported post request: edge {edge:?} is not served by Baton"
        ))),
    }
}

/// `GET /{version}/{node}/{edge}`.
pub async fn get_edge<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<(String, String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, GraphFailure> {
    let (version, node, edge) = path.into_inner();
    let caller = match authenticate(&state, &req, &node, &version, &[]) {
        Ok(c) => c,
        Err(res) => return Err(res),
    };
    match edge.as_str() {
        "thread_owner" => thread_owner(&state, caller).await,
        "secondary_receivers" => secondary_receivers(&state, caller),
        _ => Err(bad_param(format!(
            "Unsupported get request: edge {edge:?} is not served by Baton"
        ))),
    }
}

async fn control<S: EventStore + 'static>(
    state: &AppState<S>,
    caller: Caller,
    edge: &str,
) -> Result<HttpResponse, GraphFailure> {
    let psid = match recipient_psid(&caller.params) {
        Ok(p) => p,
        Err(res) => return Err(res),
    };
    let metadata = match optional_string(&caller.params, "metadata", 1000) {
        Ok(m) => m,
        Err(res) => return Err(res),
    };
    let call_id = new_id();
    let app = caller.app.clone();
    let command = match edge {
        "pass_thread_control" => {
            let target = match caller.params.get("target_app_id").filter(|v| !v.is_null()) {
                None => None,
                Some(v) => match wire::webhook::id_string(v).and_then(|s| AppId::parse(s).ok()) {
                    Some(t) => Some(t),
                    None => return Err(bad_param("param target_app_id must be an app id")),
                },
            };
            Command::PassThreadControl {
                call_id,
                app,
                target,
                metadata,
            }
        }
        "take_thread_control" => Command::TakeThreadControl {
            call_id,
            app,
            metadata,
        },
        "request_thread_control" => Command::RequestThreadControl {
            call_id,
            app,
            metadata,
        },
        "release_thread_control" => Command::ReleaseThreadControl {
            call_id,
            app,
            metadata,
        },
        _ => {
            let duration = match caller.params.get("duration") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                _ => return Err(bad_param("The parameter duration is required")),
            };
            let Some(duration_secs) = duration else {
                return Err(bad_param(
                    "param duration must be a whole number of seconds",
                ));
            };
            Command::ExtendThreadControl {
                call_id,
                app,
                duration_secs,
            }
        }
    };
    let thread = ThreadKey::new(caller.page.clone(), psid.clone());
    let now = state.clock.now();

    // 1. Decide and record.
    let decided = record_with(state, &thread, |_, ledger, page| {
        match rules::decide(ledger, page, &command, now) {
            Ok(events) => (events, Ok(())),
            Err(r) => (vec![rules::refusal(ledger, &command, &r, now)], Err(r)),
        }
    })
    .await;
    match decided {
        Err(e) => return Err(record_error(&e)),
        Ok((Err(rejection), _)) => {
            tracing::info!(code = rejection.code, reason = %rejection.reason, "thread-control call refused");
            return Err(rejection_response(&rejection));
        }
        Ok((Ok(()), _)) => {}
    }

    // 2. Forward with the acting app's page token.
    let mut upstream = json!({ "recipient": { "id": psid.as_str() } });
    match &command {
        Command::PassThreadControl {
            target: Some(t), ..
        } => upstream["target_app_id"] = json!(t.as_str()),
        Command::ExtendThreadControl { duration_secs, .. } => {
            upstream["duration"] = json!(duration_secs)
        }
        _ => {}
    }
    if let Some(m) = optional_string(&caller.params, "metadata", 1000)
        .ok()
        .flatten()
    {
        upstream["metadata"] = json!(m);
    }
    let Some((_, managed)) = state.config.managed(&caller.app) else {
        return Err(bad_param("the calling app is not managed by Baton"));
    };
    let Some(token) = managed.page_tokens.get(&caller.page) else {
        return Err(meta_error(
            StatusCode::FORBIDDEN,
            200,
            None,
            format!("(#200) no page token for page {}", caller.page),
        ));
    };
    let answer = state
        .graph
        .post(
            &managed.graph_base_url,
            &caller.version,
            caller.page.as_str(),
            edge,
            token.expose(),
            &upstream,
        )
        .await;
    let outcome = match &answer {
        GraphAnswer::Ok(_) => GraphOutcome::Succeeded,
        GraphAnswer::Err { error, .. } => GraphOutcome::Failed {
            error: error.clone(),
        },
        GraphAnswer::Unknown(reason) => GraphOutcome::Unknown {
            reason: reason.clone(),
        },
    };

    // 3. Record Meta's answer (and the handover fact, or drift).
    let now = state.clock.now();
    let settled = crate::record::record_settlement(state, &thread, |_, ledger, page| {
        (
            rules::settle_control(ledger, page, &command, &outcome, now),
            (),
        )
    })
    .await;
    match settled {
        Err(e) => {
            tracing::error!(error = %e, "Meta answered but the answer could not be recorded");
            return Err(meta_error(
                StatusCode::SERVICE_UNAVAILABLE,
                2,
                None,
                format!("(#2) Meta answered this call but Baton could not record its answer ({e}); read thread_owner before retrying"),
            ));
        }
        Ok(((), events)) => {
            let drifted = events
                .iter()
                .any(|e| matches!(e, Event::OwnershipDriftDetected(d) if d.observed == ControlView::Unknown));
            if drifted || matches!(outcome, GraphOutcome::Unknown { .. }) {
                reconcile(state, &thread, &caller.version).await;
            }
        }
    }

    graph_answer(answer)
}

/// Meta's answer, passed back to the app as Meta gave it.
pub fn graph_answer(answer: GraphAnswer) -> Result<HttpResponse, GraphFailure> {
    match answer {
        GraphAnswer::Ok(body) if body.is_object() => Ok(HttpResponse::Ok().json(body)),
        GraphAnswer::Ok(_) => Ok(HttpResponse::Ok().json(json!({ "success": true }))),
        GraphAnswer::Err { status, body, error } => Err(GraphFailure {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code: error.code,
            subcode: error.subcode,
            message: error.message,
            body: body.get("error").is_some().then_some(body),
        }),
        GraphAnswer::Unknown(reason) => Err(meta_error(
            StatusCode::GATEWAY_TIMEOUT,
            2,
            None,
            format!("(#2) Meta did not answer ({reason}); Baton recorded the call and asked Meta who owns the thread"),
        )),
    }
}

/// Asks Meta who owns the thread, with a token that may see it (the default
/// app's or the primary's), and records what Meta says.
pub async fn reconcile<S: EventStore + 'static>(
    state: &AppState<S>,
    thread: &ThreadKey,
    version: &str,
) {
    let Some(page) = state.config.page(&thread.page) else {
        return;
    };
    let Some(viewer) = page.mode.idle_holder() else {
        return; // zero-config: nobody can see ownership
    };
    let Some((_, managed)) = state.config.managed(viewer) else {
        return; // the default app is external: wait for webhooks instead
    };
    let Some(token) = managed.page_tokens.get(&thread.page) else {
        return;
    };
    let answer = state
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
        tracing::warn!(%thread, "thread_owner could not be read to settle drift");
        return;
    };
    let owner = body["data"]
        .as_array()
        .and_then(|d| d.first())
        .and_then(|d| {
            d["thread_owner"]["app_id"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| d["thread_owner"]["app_id"].as_u64().map(|n| n.to_string()))
        })
        .and_then(|s| AppId::parse(s).ok());
    let now = state.clock.now();
    let observation = || Observation::ThreadOwner {
        at: now,
        owner: owner.clone(),
    };
    if let Err(e) = record_with(state, thread, |_, ledger, page| {
        (rules::observe(ledger, page, observation(), now), ())
    })
    .await
    {
        tracing::error!(error = %e, "thread_owner answer could not be recorded");
    }
}

/// `GET thread_owner?recipient=`: answered from the ledger with Meta's
/// visibility rules (the owner and the default app see it; a legacy
/// secondary sees it only when it or the primary owns the thread).
async fn thread_owner<S: EventStore + 'static>(
    state: &AppState<S>,
    caller: Caller,
) -> Result<HttpResponse, GraphFailure> {
    let psid = match caller.params.get("recipient").and_then(|v| match v {
        Value::Object(_) => v.get("id").and_then(wire::webhook::id_string),
        other => wire::webhook::id_string(other),
    }) {
        Some(p) => match Psid::parse(p) {
            Ok(p) => p,
            Err(e) => return Err(bad_param(format!("param recipient is not valid: {e}"))),
        },
        None => return Err(bad_param("The parameter recipient is required")),
    };
    let thread = ThreadKey::new(caller.page.clone(), psid);
    let now = state.clock.now();
    let view = |state: &AppState<S>| {
        let snapshot = state.projections.read();
        let page = snapshot.pages.get(&thread.page).cloned();
        let ledger = snapshot
            .thread(&thread)
            .cloned()
            .unwrap_or_else(|| domain::ThreadLedger::new(thread.clone()));
        page.map(|p| {
            (
                rules::control_at(&ledger, &p, now),
                rules::control_expiry(&ledger, &p),
                p,
            )
        })
    };
    let Some((mut control, mut expiry, mut page)) = view(state) else {
        return Err(bad_param("page not configured"));
    };
    if control == ControlView::Unknown {
        reconcile(state, &thread, &caller.version).await;
        if let Some(v) = view(state) {
            (control, expiry, page) = v;
        }
    }
    let visible = match (&page.mode, &control) {
        (RoutingMode::HandoverV1 { primary, .. }, ControlView::Owner { app }) => {
            &caller.app == primary || app == &caller.app || app == primary
        }
        (RoutingMode::ConversationRouting { default_app }, ControlView::Owner { app }) => {
            &caller.app == default_app || app == &caller.app
        }
        _ => true,
    };
    if !visible {
        if matches!(page.mode, RoutingMode::HandoverV1 { .. }) {
            return Err(meta_error(StatusCode::BAD_REQUEST, 100, Some(2_018_234), "(#100) A secondary receiver cannot see another secondary receiver's thread ownership"));
        }
        return Ok(HttpResponse::Ok().json(json!({ "data": [] })));
    }
    match control {
        ControlView::Owner { app } => {
            let mut owner = json!({ "app_id": app.as_str() });
            if let Some(e) = expiry {
                owner["expiration"] = json!(e.millis() / 1000);
            }
            Ok(HttpResponse::Ok().json(json!({ "data": [{ "thread_owner": owner }] })))
        }
        _ => Ok(HttpResponse::Ok().json(json!({ "data": [] }))),
    }
}

/// `GET secondary_receivers`: the legacy primary lists the secondaries;
/// under Conversation Routing, the other apps on the page.
fn secondary_receivers<S>(
    state: &AppState<S>,
    caller: Caller,
) -> Result<HttpResponse, GraphFailure> {
    let Some((_, page)) = state.config.pages.get(&caller.page) else {
        return Err(bad_param("page not configured"));
    };
    let ids: BTreeSet<&AppId> = match &page.mode {
        RoutingMode::HandoverV1 {
            primary,
            secondaries,
        } => {
            if primary != &caller.app {
                return Err(meta_error(
                    StatusCode::BAD_REQUEST,
                    100,
                    Some(2_018_171),
                    "(#100) Only the primary receiver can list secondary receivers",
                ));
            }
            secondaries.iter().collect()
        }
        _ => page.apps.keys().filter(|a| **a != caller.app).collect(),
    };
    let data: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            let name = state
                .config
                .apps
                .get(id)
                .map(|a| a.name.clone())
                .unwrap_or_default();
            json!({ "id": id.as_str(), "name": name })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data, "paging": {} })))
}
