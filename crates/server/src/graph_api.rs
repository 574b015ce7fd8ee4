//! The Graph-compatible API apps call instead of Meta: `/v{n}/{me|page_id}/…`
//! with Meta's request shapes (JSON or form fields, `access_token` in the
//! query, body or a bearer header, `appsecret_proof` checked when present)
//! and Meta's error JSON, built in one place ([`GraphFailure`]). Handlers
//! parse the request into a domain command, call the application layer
//! (which decides, records, calls Meta and records its answer), and render.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::events::GraphError;
use domain::graph::{code, limits};
use domain::{AppId, Command, CommandId, PageId, Psid, Rejection};
use event_log::EventStore;
use hmac::{Hmac, Mac};
use orchestration::control::CallError;
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

impl GraphFailure {
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
    let from_pairs = |map: &mut Map<String, Value>, text: &str| -> Result<(), GraphFailure> {
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
    };
    from_pairs(&mut map, req.query_string())?;
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
            from_pairs(&mut map, text)?;
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
    let mut params = params(req, body)?;
    let token = params
        .remove("access_token")
        .and_then(|v| v.as_str().map(str::to_owned))
        .or_else(|| crate::auth::bearer(req).map(str::to_owned));
    let Some(token) = token else {
        return Err(GraphFailure::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_TOKEN,
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
                return Err(GraphFailure::new(
                    StatusCode::BAD_REQUEST,
                    code::ACCESS_DENIED,
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
            return Err(GraphFailure::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_PARAMETER,
                Some(code::SUB_NO_SUCH_OBJECT),
                format!("(#100) Object with ID '{node}' does not exist"),
            ));
        };
        if !state.config.pages.contains_key(&page) {
            return Err(GraphFailure::new(StatusCode::BAD_REQUEST, code::INVALID_PARAMETER, Some(code::SUB_NO_SUCH_OBJECT), format!("(#100) Object with ID '{page}' does not exist, cannot be loaded due to missing permissions, or does not support this operation")));
        }
        if !pages_of_app.contains(&&page) {
            // As the domain refuses an app that is not on the page: to that
            // app, the page is an object it cannot load.
            return Err(GraphFailure::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_PARAMETER,
                Some(code::SUB_NO_SUCH_OBJECT),
                format!("(#100) Object with ID '{page}' does not exist, cannot be loaded due to missing permissions, or does not support this operation (app {} is not connected to it)", app.id),
            ));
        }
        page
    };
    Ok(Caller {
        acting: Acting {
            app: app.id.clone(),
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
    crate::body::read(req, payload, state.config.max_body_bytes, timeout)
        .await
        .map_err(|e| match e {
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
        })
}

fn invalid_token() -> GraphFailure {
    GraphFailure::new(
        StatusCode::BAD_REQUEST,
        code::INVALID_TOKEN,
        None,
        "Invalid OAuth access token - Cannot parse access token",
    )
}

/// `POST /{version}/{node}/{edge}`.
pub async fn post_edge<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<(String, String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, GraphFailure> {
    let (version, node, edge) = path.into_inner();
    let body = graph_body(&state, &req, payload).await?;
    let caller = authenticate(&state, &req, &node, &version, &body)?;
    if edge == "messages" {
        return crate::sends::messages(&state, caller, &req).await;
    }
    let psid = recipient_psid(&caller.params)?;
    let command = control_command(&caller, &edge)?;
    let body = state.baton.control(&caller.acting, psid, command).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /{version}/{node}/{edge}`.
pub async fn get_edge<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<(String, String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, GraphFailure> {
    let (version, node, edge) = path.into_inner();
    let caller = authenticate(&state, &req, &node, &version, &[])?;
    let body = match edge.as_str() {
        "thread_owner" => {
            let psid = match caller.params.get("recipient") {
                Some(v @ Value::Object(_)) => v.get("id").and_then(wire::webhook::id_string),
                Some(other) => wire::webhook::id_string(other),
                None => None,
            }
            .ok_or_else(|| bad_param("The parameter recipient is required"))?;
            let psid = Psid::parse(psid)
                .map_err(|e| bad_param(format!("param recipient is not valid: {e}")))?;
            state.baton.thread_owner(&caller.acting, psid).await?
        }
        "secondary_receivers" => state.baton.secondary_receivers(&caller.acting)?,
        _ => {
            return Err(bad_param(format!(
                "Unsupported get request: edge {edge:?} is not served by Baton"
            )))
        }
    };
    Ok(HttpResponse::Ok().json(body))
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
