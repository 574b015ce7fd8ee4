//! The Graph-compatible API apps call instead of Meta: `/v{n}/{me|page_id}/…`
//! with Meta's request shapes (JSON or form fields, `access_token` in the
//! query, body or a bearer header, `appsecret_proof` checked when present)
//! and Meta's error JSON, built in one place ([`GraphFailure`]). Handlers
//! parse the request into a domain command, call the application layer
//! (which decides, records, calls Meta and records its answer), and render.

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use domain::events::GraphError;
use domain::graph::{code, limits};
use domain::{AppId, Command, CommandId, PageId, Psid, Rejection};
use event_log::EventStore;
use hmac::{Hmac, Mac};
use orchestration::control::CallError;
use orchestration::graph_client::GraphAnswer;
use orchestration::page_api::{ProfileCall, Upload};
use orchestration::reads::Node;
use orchestration::{Acting, RecordError};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::auth::{identify, Identity};
use crate::body::BodyError;
use crate::error::error_chain;
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
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            res.insert_header(("Retry-After", "1"));
        }
        res.json(self.body_json())
    }
}

impl GraphFailure {
    /// The error body: Meta's own when it gave one, else built in its shape.
    pub fn body_json(&self) -> Value {
        if let Some(body) = &self.body {
            return body.clone();
        }
        let trace = format!("Baton{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        wire::graph::error_body(
            self.code,
            self.subcode,
            &self.message,
            "OAuthException",
            &trace,
        )
    }

    /// An error of Baton's own making, in Meta's shape.
    pub fn new(
        status: StatusCode,
        code: u32,
        subcode: Option<u32>,
        message: impl AsRef<str>,
    ) -> Self {
        Self {
            status,
            code,
            subcode,
            message: message.as_ref().to_owned(),
            body: None,
        }
    }

    /// `(#100)`: a parameter is missing or invalid.
    pub fn bad_param(message: impl AsRef<str>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_PARAMETER,
            None,
            format!("(#100) {}", message.as_ref()),
        )
    }

    /// `(#2)` with 503: Baton could not record, so nothing happened.
    pub fn unavailable(e: &RecordError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::TEMPORARY,
            None,
            format!("(#2) Service temporarily unavailable: {}", error_chain(e)),
        )
    }
}

impl From<&Rejection> for GraphFailure {
    fn from(r: &Rejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, r.code, r.subcode, r.meta_message())
    }
}

impl From<GraphError> for GraphFailure {
    fn from(e: GraphError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.code, e.subcode, e.message)
    }
}

impl From<CallError> for GraphFailure {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Refused(r) => (&r).into(),
            CallError::NotRecorded(e) => Self::unavailable(&e),
            CallError::CannotAct(error) => Self {
                status: StatusCode::FORBIDDEN,
                ..error.into()
            },
            CallError::Meta {
                status,
                error,
                body,
            } => Self {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                code: error.code,
                subcode: error.subcode,
                message: error.message,
                body: body.get("error").is_some().then_some(body),
            },
            CallError::NoAnswer(reason) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                code::TEMPORARY,
                None,
                format!("(#2) Meta did not answer ({reason}); Baton recorded the call and asked Meta who owns the thread"),
            ),
            CallError::AnswerNotRecorded(e) => {
                tracing::error!(error = %error_chain(&e), "Meta answered but the answer could not be recorded");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code::TEMPORARY,
                    None,
                    format!("(#2) Meta answered this call but Baton could not record its answer ({}); read thread_owner before retrying", error_chain(&e)),
                )
            }
        }
    }
}

fn bad_param(message: impl AsRef<str>) -> GraphFailure {
    GraphFailure::bad_param(message)
}

/// The caller of a Graph-shaped request, authenticated, with its parameters.
#[derive(Debug)]
pub struct Caller {
    pub acting: Acting,
    pub params: Map<String, Value>,
}

/// Reads parameters from the query string and the body (JSON or form), as
/// Meta does; form values holding JSON (`recipient={"id":"…"}`) are parsed.
/// A parameter given twice (a duplicated JSON key or form field) is refused
/// rather than letting one copy silently win, and every field is held to the
/// domain's size limits.
pub fn params(req: &HttpRequest, body: &[u8]) -> Result<Map<String, Value>, GraphFailure> {
    let mut map = Map::new();
    form_pairs(&mut map, req.query_string())?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if content_type.starts_with("application/x-www-form-urlencoded") {
            let text =
                std::str::from_utf8(body).map_err(|_| bad_param("the form body is not UTF-8"))?;
            form_pairs(&mut map, text)?;
        } else {
            match strict_json(body) {
                Ok(Value::Object(o)) => {
                    for (k, v) in o {
                        if map.insert(k.clone(), v).is_some() {
                            return Err(bad_param(format!("param {k} is given more than once")));
                        }
                    }
                }
                Ok(_) => return Err(bad_param("the JSON body must be an object")),
                Err(e) => return Err(bad_param(format!("the body is not valid JSON: {e}"))),
            }
        }
    }
    domain::graph::check_field_limits(&map).map_err(bad_param)?;
    Ok(map)
}

/// Adds form-encoded `text`'s fields to `map`; values holding JSON
/// (`recipient={"id":"…"}`) are parsed. A field given twice is refused.
fn form_pairs(map: &mut Map<String, Value>, text: &str) -> Result<(), GraphFailure> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(text)
        .map_err(|e| bad_param(format!("cannot read the parameters: {e}")))?;
    for (k, v) in pairs {
        let trimmed = v.trim_start();
        let value = if trimmed.starts_with('{') || trimmed.starts_with('[') {
            match strict_json(v.as_bytes()) {
                Ok(json) => json,
                Err(e) if e.contains("duplicate") => {
                    return Err(bad_param(format!("param {k}: {e}")))
                }
                Err(_) => Value::String(v),
            }
        } else {
            Value::String(v)
        };
        if map.insert(k.clone(), value).is_some() {
            return Err(bad_param(format!("param {k} is given more than once")));
        }
    }
    Ok(())
}

/// Parses JSON, refusing an object with the same key twice.
pub fn strict_json(bytes: &[u8]) -> Result<Value, String> {
    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

    struct Strict(Value);
    struct StrictVisitor;

    impl<'de> serde::Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor).map(Strict)
        }
    }

    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(Strict(v)) = seq.next_element()? {
                items.push(v);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
            let mut map = Map::new();
            while let Some(key) = access.next_key::<String>()? {
                let Strict(value) = access.next_value()?;
                if map.insert(key.clone(), value).is_some() {
                    return Err(de::Error::custom(format!("duplicate key {key:?}")));
                }
            }
            Ok(Value::Object(map))
        }
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Strict(value) = serde::Deserialize::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
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
    let params = params(req, body)?;
    let bearer = crate::auth::bearer(req).map(str::to_owned);
    authenticate_params(state, bearer, params, node, version)
}

/// [`authenticate`] on parameters already read (a batch's item): the token
/// is `access_token` among them, else `bearer`.
pub fn authenticate_params<S>(
    state: &AppState<S>,
    bearer: Option<String>,
    params: Map<String, Value>,
    node: &str,
    version: &str,
) -> Result<Caller, GraphFailure> {
    let (app, params) = identify_app(state, bearer, params)?;
    let page = page_of_node(state, &app, node, version)?;
    Ok(Caller {
        acting: Acting {
            app,
            page,
            version: version.to_owned(),
        },
        params,
    })
}

/// The app a request's token names, admitted by its request limit, with its
/// `appsecret_proof` checked; the parameters without token and proof.
fn identify_app<S>(
    state: &AppState<S>,
    bearer: Option<String>,
    mut params: Map<String, Value>,
) -> Result<(AppId, Map<String, Value>), GraphFailure> {
    let token = params
        .remove("access_token")
        .and_then(|v| v.as_str().map(str::to_owned))
        .or(bearer);
    let Some(token) = token else {
        return Err(GraphFailure::new(
            StatusCode::BAD_REQUEST,
            code::NO_TOKEN,
            None,
            "An access token is required to request this resource.",
        ));
    };
    let Some(Identity::App(app, managed)) = identify(&state.config, &token) else {
        return Err(invalid_token());
    };
    if !state.admit(&app.id) {
        return Err(GraphFailure::new(
            StatusCode::TOO_MANY_REQUESTS,
            code::APP_RATE_LIMITED,
            None,
            format!("(#4) Application request limit reached: app {} makes more than {} requests per second", app.id, state.config.app_requests_per_second),
        ));
    }
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
    Ok((app.id.clone(), params))
}

/// The pages `app` is connected to, this shard's and the others'.
fn pages_of_app<'a, S>(state: &'a AppState<S>, app: &AppId) -> Vec<&'a PageId> {
    let here = state
        .config
        .pages
        .iter()
        .filter(|(_, (_, p))| p.apps.contains_key(app))
        .map(|(id, _)| id);
    let elsewhere = state
        .config
        .elsewhere
        .iter()
        .filter(|(_, e)| e.apps.contains(app))
        .map(|(id, _)| id);
    here.chain(elsewhere).collect()
}

/// Whether `node` names a page (`me`, or a configured page's id) rather
/// than a user.
pub fn is_page_node<S>(state: &AppState<S>, node: &str) -> bool {
    node == "me" || PageId::parse(node).is_ok_and(|p| state.config.pages.contains_key(&p))
}

/// The page a request's node names: `me` is the app's only page.
fn page_of_node<S>(
    state: &AppState<S>,
    app: &AppId,
    node: &str,
    version: &str,
) -> Result<PageId, GraphFailure> {
    let pages_of_app = pages_of_app(state, app);
    if node == "me" {
        return match pages_of_app.as_slice() {
            // Another shard's page: routed there, unless the request came
            // routed already (the nodes disagree on the page's shard).
            [one] if state.config.elsewhere.contains_key(*one) => Err(GraphFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::TEMPORARY,
                None,
                format!("(#2) page {one} is decided by another shard; retry shortly"),
            )),
            [one] => Ok((*one).clone()),
            [] => Err(GraphFailure::new(
                StatusCode::BAD_REQUEST,
                code::ACCESS_DENIED,
                None,
                format!("(#200) app {app} is not connected to any page"),
            )),
            _ => Err(bad_param(format!(
                "app {app} serves several pages: call /{version}/{{page_id}}/… instead of /me"
            ))),
        };
    }
    let Ok(page) = PageId::parse(node) else {
        return Err(no_such_object(node, ""));
    };
    if !state.config.pages.contains_key(&page) {
        return Err(no_such_object(node, ""));
    }
    if !pages_of_app.contains(&&page) {
        // As the domain refuses an app that is not on the page: to that
        // app, the page is an object it cannot load.
        return Err(no_such_object(
            node,
            &format!(" (app {app} is not connected to it)"),
        ));
    }
    Ok(page)
}

/// Meta's 100/33 for an object the caller cannot load.
fn no_such_object(node: &str, why: &str) -> GraphFailure {
    GraphFailure::new(
        StatusCode::BAD_REQUEST,
        code::INVALID_PARAMETER,
        Some(code::SUB_NO_SUCH_OBJECT),
        format!("(#100) Object with ID '{node}' does not exist, cannot be loaded due to missing permissions, or does not support this operation{why}"),
    )
}

/// The caller reading a user's node: the user must have written to one of
/// the app's pages (the first such page is the one asked).
pub fn authenticate_for_user<S>(
    state: &AppState<S>,
    bearer: Option<String>,
    params: Map<String, Value>,
    psid: &Psid,
    version: &str,
) -> Result<Caller, GraphFailure> {
    let (app, params) = identify_app(state, bearer, params)?;
    let seen = {
        let snapshot = state.baton.projections.read();
        pages_of_app(state, &app)
            .into_iter()
            .find(|page| {
                snapshot
                    .thread(&domain::ThreadKey::new((*page).clone(), psid.clone()))
                    .is_some()
            })
            .cloned()
    };
    let page = seen.ok_or_else(|| {
        no_such_object(
            psid.as_str(),
            &format!(" (no user with that id wrote to a page of app {app})"),
        )
    })?;
    Ok(Caller {
        acting: Acting {
            app,
            page,
            version: version.to_owned(),
        },
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
        Some(Value::String(s)) if s.chars().count() < max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(bad_param(format!(
            "param {key} must be shorter than {max} characters"
        ))),
        Some(_) => Err(bad_param(format!("param {key} must be a string"))),
    }
}

pub fn new_id() -> CommandId {
    CommandId::parse(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid id")
}

/// The body of a Graph-shaped request. A token given in the query or the
/// `Authorization` header is checked before a byte of the body is read; the
/// body is read under the size and time limits.
pub async fn graph_body<S>(
    state: &AppState<S>,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<web::Bytes, GraphFailure> {
    graph_body_within(state, req, payload, state.config.max_body_bytes).await
}

/// [`graph_body`] with a size limit of its own (an attachment upload).
pub async fn graph_body_within<S>(
    state: &AppState<S>,
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, GraphFailure> {
    let early = serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .ok()
        .and_then(|q| {
            q.into_iter()
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v)
        })
        .or_else(|| crate::auth::bearer(req).map(str::to_owned));
    if let Some(token) = early {
        if !matches!(identify(&state.config, &token), Some(Identity::App(..))) {
            return Err(invalid_token());
        }
    }
    let timeout = std::time::Duration::from_millis(state.config.body_timeout_ms);
    crate::body::read(req, payload, limit, timeout)
        .await
        .map_err(GraphFailure::from)
}

impl From<BodyError> for GraphFailure {
    fn from(e: BodyError) -> GraphFailure {
        match e {
            BodyError::TooLarge { limit } => GraphFailure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::INVALID_PARAMETER,
                None,
                format!("(#100) the request body is larger than {limit} bytes"),
            ),
            BodyError::Timeout { ms } => GraphFailure::new(
                StatusCode::REQUEST_TIMEOUT,
                code::TEMPORARY,
                None,
                format!("(#2) the request body did not arrive within {ms} ms"),
            ),
            BodyError::Broken(e) => bad_param(format!("the request body could not be read: {e}")),
        }
    }
}

fn invalid_token() -> GraphFailure {
    GraphFailure::new(
        StatusCode::BAD_REQUEST,
        code::INVALID_TOKEN,
        None,
        "Invalid OAuth access token - Cannot parse access token",
    )
}

/// One Graph call apart from HTTP: a request's, or one item of a batch.
#[derive(Debug)]
pub struct GraphCall {
    pub method: Method,
    pub version: String,
    pub node: String,
    pub edge: Option<String>,
    pub params: Map<String, Value>,
    /// The token of the `Authorization` header (or of the batch).
    pub bearer: Option<String>,
    pub idempotency_key: Option<String>,
}

/// Serves one call: Meta's answer body, or its error.
pub async fn serve<S: EventStore + 'static>(
    state: &AppState<S>,
    call: GraphCall,
) -> Result<Value, GraphFailure> {
    let GraphCall {
        method,
        version,
        node,
        edge,
        params,
        bearer,
        idempotency_key,
    } = call;
    match (method.as_str(), edge.as_deref()) {
        ("GET", None) if is_page_node(state, &node) => {
            let caller = authenticate_params(state, bearer, params, &node, &version)?;
            let fields = caller.params.get("fields").and_then(Value::as_str);
            passed_through(
                state
                    .baton
                    .read_node(&caller.acting, &Node::Page, fields)
                    .await,
            )
        }
        ("GET", None) => {
            let psid = Psid::parse(&node).map_err(|_| no_such_object(&node, ""))?;
            let caller = authenticate_for_user(state, bearer, params, &psid, &version)?;
            let fields = caller.params.get("fields").and_then(Value::as_str);
            let node = Node::User(psid);
            passed_through(state.baton.read_node(&caller.acting, &node, fields).await)
        }
        ("POST", Some("messages")) => {
            let caller = authenticate_params(state, bearer, params, &node, &version)?;
            if let Some(comment) = caller
                .params
                .get("recipient")
                .and_then(|r| r.get("comment_id"))
            {
                // A private reply: to a comment, not to a thread.
                let comment = wire::webhook::id_string(comment)
                    .ok_or_else(|| bad_param("param recipient.comment_id must be a comment id"))?;
                let payload = Value::Object(caller.params.clone());
                return passed_through(
                    state
                        .baton
                        .private_reply(&caller.acting, comment, payload)
                        .await,
                );
            }
            crate::sends::messages(state, caller, idempotency_key).await
        }
        (method @ ("GET" | "POST" | "DELETE"), Some("messenger_profile")) => {
            let caller = authenticate_params(state, bearer, params, &node, &version)?;
            let fields = |p: &Map<String, Value>| -> Result<Vec<String>, GraphFailure> {
                let fields: Vec<String> = match p.get("fields") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                    Some(Value::String(s)) => s
                        .split(',')
                        .map(|f| f.trim().to_owned())
                        .filter(|f| !f.is_empty())
                        .collect(),
                    _ => Vec::new(),
                };
                if fields.is_empty() {
                    return Err(bad_param("The parameter fields is required"));
                }
                Ok(fields)
            };
            let call = match method {
                "GET" => ProfileCall::Get {
                    fields: fields(&caller.params)?.join(","),
                },
                "DELETE" => ProfileCall::Delete {
                    fields: fields(&caller.params)?,
                },
                _ if caller.params.is_empty() => {
                    return Err(bad_param(
                        "At least one Messenger Profile property is required",
                    ))
                }
                _ => ProfileCall::Set {
                    properties: Value::Object(caller.params.clone()),
                },
            };
            passed_through(state.baton.messenger_profile(&caller.acting, call).await)
        }
        ("POST", Some("pass_thread_metadata")) => {
            let caller = authenticate_params(state, bearer, params, &node, &version)?;
            let psid = recipient_psid(&caller.params)?;
            let metadata = optional_string(&caller.params, "metadata", limits::METADATA_MAX_CHARS)?
                .ok_or_else(|| bad_param("The parameter metadata is required"))?;
            passed_through(
                state
                    .baton
                    .pass_thread_metadata(&caller.acting, psid, metadata)
                    .await,
            )
        }
        ("POST", Some("message_attachments")) => {
            let caller = authenticate_params(state, bearer, params, &node, &version)?;
            let upload = json_upload(&caller.params)?;
            passed_through(state.baton.upload_attachment(&caller.acting, upload).await)
        }
        ("POST", Some(edge)) if CONTROL_EDGES.contains(&edge) => {
            let caller = authenticate_params(state, bearer, params, &node, &version)?;
            let psid = recipient_psid(&caller.params)?;
            let command = control_command(&caller, edge)?;
            Ok(state.baton.control(&caller.acting, psid, command).await?)
        }
        ("GET", Some(edge @ ("thread_owner" | "secondary_receivers"))) => {
            let caller = authenticate_params(state, bearer, params, &node, &version)?;
            Ok(if edge == "thread_owner" {
                let psid = match caller.params.get("recipient") {
                    Some(v @ Value::Object(_)) => v.get("id").and_then(wire::webhook::id_string),
                    Some(other) => wire::webhook::id_string(other),
                    None => None,
                }
                .ok_or_else(|| bad_param("The parameter recipient is required"))?;
                let psid = Psid::parse(psid)
                    .map_err(|e| bad_param(format!("param recipient is not valid: {e}")))?;
                state.baton.thread_owner(&caller.acting, psid).await?
            } else {
                state.baton.secondary_receivers(&caller.acting)?
            })
        }
        (method, edge) => {
            // Authenticate first, so a stranger learns nothing of what is served.
            identify_app(state, bearer, params)?;
            let path = match edge {
                Some(edge) => format!("/{version}/{node}/{edge}"),
                None => format!("/{version}/{node}"),
            };
            Err(GraphFailure::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_PARAMETER,
                None,
                format!("(#100) Unsupported {method} request: {path} is not served by Baton (see docs/api.md)"),
            ))
        }
    }
}

/// An attachment upload given as JSON or form fields: `message.attachment`
/// with a `payload.url` for Meta to fetch.
fn json_upload(params: &Map<String, Value>) -> Result<Upload, GraphFailure> {
    let attachment = &params
        .get("message")
        .ok_or_else(|| bad_param("The parameter message is required"))?["attachment"];
    let kind = attachment["type"].as_str().map(str::to_owned);
    if !matches!(kind.as_deref(), Some("image" | "video" | "audio" | "file")) {
        return Err(bad_param(
            "param message.attachment.type must be image, video, audio or file",
        ));
    }
    let url = attachment["payload"]["url"].as_str().map(str::to_owned);
    if url.is_none() {
        return Err(bad_param(
            "param message.attachment.payload.url is required (or upload the file as multipart/form-data)",
        ));
    }
    let body = serde_json::to_vec(&Value::Object(
        params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    ))
    .expect("a JSON value always serialises");
    Ok(Upload {
        content_type: "application/json".into(),
        body,
        kind,
        file_bytes: 0,
        file_sha256: None,
        url,
    })
}

/// A `multipart/form-data` upload, passed through as it came: its
/// `message` part says the type, its `filedata` part is the file (measured
/// and hashed for the record).
fn multipart_upload(content_type: &str, body: &[u8]) -> Result<Upload, GraphFailure> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .next()
        .ok_or_else(|| bad_param("the multipart body names no boundary"))?;
    let delimiter = format!("--{boundary}");
    let text = body;
    let mut kind = None;
    let mut file: Option<&[u8]> = None;
    let mut rest = text;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    while let Some(start) = find(rest, delimiter.as_bytes()) {
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..head_end]).to_ascii_lowercase();
        let content = &rest[head_end + 4..];
        let end = find(content, format!("\r\n{delimiter}").as_bytes()).unwrap_or(content.len());
        let part = &content[..end];
        if head.contains("name=\"message\"") {
            let message: Value = serde_json::from_slice(part)
                .map_err(|e| bad_param(format!("the message part is not JSON: {e}")))?;
            kind = message["attachment"]["type"].as_str().map(str::to_owned);
        } else if head.contains("name=\"filedata\"") {
            file = Some(part);
        }
        rest = &content[end..];
    }
    let file = file.ok_or_else(|| bad_param("the multipart body has no filedata part"))?;
    if !matches!(kind.as_deref(), Some("image" | "video" | "audio" | "file")) {
        return Err(bad_param(
            "the message part's attachment.type must be image, video, audio or file",
        ));
    }
    use sha2::Digest;
    Ok(Upload {
        content_type: content_type.to_owned(),
        body: body.to_vec(),
        kind,
        file_bytes: file.len() as u64,
        file_sha256: Some(hex::encode(Sha256::digest(file))),
        url: None,
    })
}

/// The thread-control edges, all `POST`.
const CONTROL_EDGES: [&str; 5] = [
    "pass_thread_control",
    "take_thread_control",
    "request_thread_control",
    "release_thread_control",
    "extend_thread_control",
];

/// Meta's answer to a read Baton passed through, in the same shape.
fn passed_through(answer: GraphAnswer) -> Result<Value, GraphFailure> {
    match answer {
        GraphAnswer::Ok(body) => Ok(body),
        GraphAnswer::Err {
            status,
            error,
            body,
        } => Err(GraphFailure {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code: error.code,
            subcode: error.subcode,
            message: error.message,
            body: body.get("error").is_some().then_some(body),
        }),
        GraphAnswer::Unknown(why) => Err(GraphFailure::new(
            StatusCode::GATEWAY_TIMEOUT,
            code::TEMPORARY,
            None,
            format!("(#2) {why}"),
        )),
    }
}

/// `POST /{version}/{node}/{edge}`.
pub async fn post_edge<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<(String, String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, GraphFailure> {
    let (version, node, edge) = path.into_inner();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if edge == "message_attachments"
        && content_type
            .to_ascii_lowercase()
            .starts_with("multipart/form-data")
    {
        // A file upload: read under the attachment limit, passed through.
        let body =
            graph_body_within(&state, &req, payload, state.config.max_attachment_bytes).await?;
        let bearer = crate::auth::bearer(&req).map(str::to_owned);
        let caller = authenticate_params(&state, bearer, params(&req, &[])?, &node, &version)?;
        let upload = multipart_upload(&content_type, &body)?;
        return Ok(HttpResponse::Ok().json(passed_through(
            state.baton.upload_attachment(&caller.acting, upload).await,
        )?));
    }
    let key = crate::sends::idempotency_key(&req)?;
    serve_edge(
        &state,
        &req,
        payload,
        Method::POST,
        (version, node, edge),
        key,
    )
    .await
}

/// Reads the body, then serves the call to `edge`.
async fn serve_edge<S: EventStore + 'static>(
    state: &AppState<S>,
    req: &HttpRequest,
    payload: web::Payload,
    method: Method,
    (version, node, edge): (String, String, String),
    idempotency_key: Option<String>,
) -> Result<HttpResponse, GraphFailure> {
    let body = graph_body(state, req, payload).await?;
    let call = GraphCall {
        method,
        version,
        node,
        edge: Some(edge),
        params: params(req, &body)?,
        bearer: crate::auth::bearer(req).map(str::to_owned),
        idempotency_key,
    };
    Ok(HttpResponse::Ok().json(serve(state, call).await?))
}

/// `DELETE /{version}/{node}/{edge}` (the Messenger Profile).
pub async fn delete_edge<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<(String, String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, GraphFailure> {
    serve_edge(
        &state,
        &req,
        payload,
        Method::DELETE,
        path.into_inner(),
        None,
    )
    .await
}

/// `GET /{version}/{node}/{edge}` and `GET /{version}/{node}`.
pub async fn get<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> Result<HttpResponse, GraphFailure> {
    let info = req.match_info();
    let call = GraphCall {
        method: Method::GET,
        version: info.get("version").unwrap_or_default().to_owned(),
        node: info.get("node").unwrap_or_default().to_owned(),
        edge: info.get("edge").map(str::to_owned),
        params: params(&req, &[])?,
        bearer: crate::auth::bearer(&req).map(str::to_owned),
        idempotency_key: None,
    };
    Ok(HttpResponse::Ok().json(serve(&state, call).await?))
}

/// Meta's limit on the calls of one batch.
pub const MAX_BATCH: usize = 50;

/// `POST /{version}/` with `batch`: each item is served as a call of its
/// own (the same gate, record and send path), in order, and answered in
/// Meta's batch shape: `[{"code", "headers", "body": "<JSON text>"}]`.
pub async fn batch<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, GraphFailure> {
    let version = req
        .match_info()
        .get("version")
        .unwrap_or_default()
        .to_owned();
    let body = graph_body(&state, &req, payload).await?;
    let mut params = params(&req, &body)?;
    let items = match params.remove("batch") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad_param("param batch must be a JSON array of requests")),
        None => return Err(bad_param("The parameter batch is required")),
    };
    if items.len() > MAX_BATCH {
        return Err(bad_param(format!(
            "(#100) Too many requests in batch message. Maximum batch size is {MAX_BATCH}"
        )));
    }
    let include_headers = params
        .remove("include_headers")
        .is_none_or(|v| v != Value::Bool(false) && v != Value::String("false".into()));
    // The batch's own token (and proof) stand for every item without one.
    let token = params
        .remove("access_token")
        .and_then(|v| v.as_str().map(str::to_owned))
        .or_else(|| crate::auth::bearer(&req).map(str::to_owned));
    // Checked once for the whole batch: no token, or one Baton does not know.
    identify_app(&state, token.clone(), params.clone())?;
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        let answer = match batch_call(&version, &item, token.clone()) {
            Ok(call) => serve(&state, call).await,
            Err(e) => Err(e),
        };
        let (status, body) = match answer {
            Ok(body) => (StatusCode::OK, body),
            Err(e) => (e.status, e.body_json()),
        };
        let mut out = serde_json::json!({
            "code": status.as_u16(),
            "body": body.to_string(),
        });
        if include_headers {
            out["headers"] = serde_json::json!([
                {"name": "Content-Type", "value": "application/json; charset=UTF-8"}
            ]);
        }
        answers.push(out);
    }
    Ok(HttpResponse::Ok().json(answers))
}

/// One batch item as a call: `method`, `relative_url` (`[v{n}/]node[/edge][?query]`)
/// and a form-encoded `body`.
fn batch_call(
    version: &str,
    item: &Value,
    token: Option<String>,
) -> Result<GraphCall, GraphFailure> {
    let item = item
        .as_object()
        .ok_or_else(|| bad_param("each batch item must be an object"))?;
    let method = match item.get("method").and_then(Value::as_str).unwrap_or("GET") {
        m if m.eq_ignore_ascii_case("GET") => Method::GET,
        m if m.eq_ignore_ascii_case("POST") => Method::POST,
        m if m.eq_ignore_ascii_case("DELETE") => Method::DELETE,
        other => {
            return Err(bad_param(format!(
                "batch item method {other:?} is not supported"
            )))
        }
    };
    let url = item
        .get("relative_url")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_param("each batch item needs a relative_url"))?;
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut version = version.to_owned();
    if segments.first().is_some_and(|s| crate::is_graph_version(s)) {
        version = segments.remove(0).to_owned();
    }
    let (node, edge) = match segments.as_slice() {
        [node] => ((*node).to_owned(), None),
        [node, edge] => ((*node).to_owned(), Some((*edge).to_owned())),
        _ => {
            return Err(bad_param(format!(
                "batch item relative_url {url:?} names no Graph node"
            )))
        }
    };
    let mut params = Map::new();
    form_pairs(&mut params, query)?;
    if let Some(body) = item.get("body").and_then(Value::as_str) {
        form_pairs(&mut params, body)?;
    }
    domain::graph::check_field_limits(&params).map_err(bad_param)?;
    Ok(GraphCall {
        method,
        version,
        node,
        edge,
        params,
        bearer: token,
        idempotency_key: None,
    })
}

/// Parses a thread-control edge's parameters into its command.
fn control_command(caller: &Caller, edge: &str) -> Result<Command, GraphFailure> {
    let metadata = optional_string(&caller.params, "metadata", limits::METADATA_MAX_CHARS)?;
    let call_id = new_id();
    let app = caller.acting.app.clone();
    Ok(match edge {
        "pass_thread_control" => {
            let target = match caller.params.get("target_app_id").filter(|v| !v.is_null()) {
                None => None,
                Some(v) => Some(
                    wire::webhook::id_string(v)
                        .and_then(|s| AppId::parse(s).ok())
                        .ok_or_else(|| bad_param("param target_app_id must be an app id"))?,
                ),
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
        "extend_thread_control" => {
            let duration = match caller.params.get("duration") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                _ => return Err(bad_param("The parameter duration is required")),
            };
            let duration_secs = duration
                .ok_or_else(|| bad_param("param duration must be a whole number of seconds"))?;
            // A duration Meta would refuse is a bad parameter: refused here,
            // recorded nowhere.
            domain::rules::check_extension(duration_secs)
                .map_err(|r| bad_param(format!("param duration: {}", r.reason)))?;
            Command::ExtendThreadControl {
                call_id,
                app,
                duration_secs,
            }
        }
        _ => {
            return Err(bad_param(format!(
                "Unsupported post request: edge {edge:?} is not served by Baton"
            )))
        }
    })
}
