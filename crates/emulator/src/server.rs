//! The HTTP face of the emulator: Graph API routes, the control API under
//! `/_emulator/`, and the in-process handle.
//!
//! The server runs on its own thread with its own actix runtime, so it works
//! the same from `#[tokio::test]` (either flavour), `#[actix_web::test]` or a
//! plain binary. Handlers only parse, lock the engine briefly and answer.

// Handler-local `Result<_, HttpResponse>` values carry the finished error
// answer for one request; their size does not matter, so the lint is off.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::body::{BodyStream, MessageBody};
use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{
    ActionResult, BatchResult, CommentResult, DataDeletion, DataDeletionResult, DeliveryResult,
    FaultSpec, InboxText, NewPerson, PolicyEnforcement, Referral, ReleaseDeliveries,
    SetDataDeletionUrl, SetOwner, SetSkew, Unsubscribe, UserComment, UserMessage, UserOtnOptin,
    UserPostback, UserReaction, UserReceipt,
};
use crate::client::ControlClient;
use crate::delivery::{self, Job, Work};
use crate::engine::{
    BodyError, ControlError, Engine, FilePart, GraphRequest, Hold, Planned, MAX_ATTACHMENT_BYTES,
};
use crate::multipart;
use crate::world::{AppConfig, PageConfig, World};
use crate::EmulatorError;

/// State shared by the handlers and the delivery worker.
#[derive(Debug)]
pub(crate) struct Shared {
    engine: Mutex<Engine>,
    queue: mpsc::UnboundedSender<Job>,
    release: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock leaves consistent-enough test state;
        // keep serving rather than poisoning every later call.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues planned items (or holds them while batching). Must be called
    /// with the engine lock held so that queue order equals engine order.
    fn enqueue(
        &self,
        eng: &mut Engine,
        planned: Vec<Planned>,
        wait: bool,
    ) -> Option<oneshot::Receiver<Vec<DeliveryResult>>> {
        if let Some(batch) = eng.batch.as_mut() {
            batch.extend(planned);
            return None;
        }
        let deliveries = delivery::single_deliveries(eng, planned);
        self.push(Work::Send(deliveries), wait)
    }

    fn push(&self, work: Work, wait: bool) -> Option<oneshot::Receiver<Vec<DeliveryResult>>> {
        if !wait && matches!(&work, Work::Send(d) if d.is_empty()) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let done = wait.then_some(tx);
        let _ = self.queue.send(Job { work, done });
        wait.then_some(rx)
    }
}

async fn results(rx: Option<oneshot::Receiver<Vec<DeliveryResult>>>) -> Vec<DeliveryResult> {
    match rx {
        Some(rx) => rx.await.unwrap_or_default(),
        None => Vec::new(),
    }
}

/// The emulator entry point.
#[derive(Debug)]
pub struct Emulator;

impl Emulator {
    /// Starts the emulator on `127.0.0.1:0`.
    pub fn start(world: World) -> Result<EmulatorHandle, EmulatorError> {
        Self::start_on(world, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts the emulator on `addr` (port 0 picks a free port). The server
    /// runs on a dedicated thread; this returns once it is listening.
    pub fn start_on(world: World, addr: SocketAddr) -> Result<EmulatorHandle, EmulatorError> {
        let engine = Engine::new(world)?;
        let listener = std::net::TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("baton-emulator".into())
            .spawn(move || {
                let system = actix_web::rt::System::new();
                system.block_on(async move {
                    let (qtx, qrx) = mpsc::unbounded_channel();
                    let (release, _) = watch::channel(0u64);
                    let shared = Arc::new(Shared {
                        engine: Mutex::new(engine),
                        queue: qtx,
                        release,
                    });
                    let worker = actix_web::rt::spawn(delivery::worker(qrx, shared.clone()));
                    let data = web::Data::from(shared);
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
                            .app_data(
                                web::JsonConfig::default()
                                    .limit(8 * 1024 * 1024)
                                    .error_handler(json_error),
                            )
                            .configure(routes)
                    })
                    .workers(2)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .listen(listener);
                    let server = match server {
                        Ok(s) => s.run(),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(server.handle()));
                    let _ = server.await;
                    worker.abort();
                });
            })?;
        let server = ready_rx
            .recv()
            .map_err(|_| EmulatorError::Start("server thread ended".into()))??;
        Ok(EmulatorHandle {
            addr: local,
            server,
            thread: Some(thread),
        })
    }
}

/// A running emulator. Dropping it stops the server.
#[derive(Debug)]
pub struct EmulatorHandle {
    addr: SocketAddr,
    server: ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmulatorHandle {
    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v21.0`, a Graph API base for clients.
    pub fn graph_url(&self) -> String {
        format!("{}/v21.0", self.base_url())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A typed client for the control API.
    pub fn control(&self) -> ControlClient {
        ControlClient::new(self.base_url())
    }

    /// Stops the server and waits for its thread.
    pub async fn stop(mut self) {
        self.server.stop(true).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Sends the stop command at once; the future only waits for it.
            drop(self.server.stop(false));
        }
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/_emulator")
            .route("/world", web::get().to(get_world))
            .route("/pages", web::post().to(put_page))
            .route("/apps", web::post().to(put_app))
            .route("/apps/{app}/callback", web::put().to(set_callback))
            .route(
                "/apps/{app}/data_deletion_url",
                web::put().to(set_data_deletion_url),
            )
            .route("/apps/{app}/unsubscribe", web::post().to(unsubscribe))
            .route(
                "/apps/{app}/tokens/{page}/revoke",
                web::post().to(revoke_token),
            )
            .route("/people", web::post().to(register_person))
            .route("/data_deletion", web::post().to(data_deletion))
            .route("/clock", web::get().to(get_clock))
            .route("/clock/advance", web::post().to(advance_clock))
            .route("/clock/set", web::post().to(set_clock))
            .route("/clock/skew", web::post().to(set_skew))
            .route("/faults", web::get().to(get_faults))
            .route("/faults", web::post().to(add_fault))
            .route("/faults", web::delete().to(clear_faults))
            .route("/faults/release", web::post().to(release_held))
            .route("/calls", web::get().to(get_calls))
            .route("/calls", web::delete().to(clear_calls))
            .route("/deliveries", web::get().to(get_deliveries))
            .route("/deliveries", web::delete().to(clear_calls))
            .route("/deliveries/wait", web::post().to(wait_deliveries))
            .route("/deliveries/release", web::post().to(release_deliveries))
            .route("/deliveries/{seq}/redeliver", web::post().to(redeliver))
            .route("/logs", web::delete().to(clear_calls))
            .route("/batch/begin", web::post().to(batch_begin))
            .route("/batch/flush", web::post().to(batch_flush))
            .route(
                "/pages/{page}/policy_enforcement",
                web::post().to(policy_enforcement),
            )
            .route("/pages/{page}/comments", web::post().to(user_comment))
            .route(
                "/pages/{page}/messenger_profile",
                web::get().to(get_messenger_profile),
            )
            .route("/attachments/{id}", web::get().to(get_attachment))
            .route("/pages/{page}/threads/{psid}", web::get().to(get_thread))
            .route(
                "/pages/{page}/threads/{psid}/owner",
                web::put().to(set_owner),
            )
            .route(
                "/pages/{page}/users/{psid}/{action}",
                web::post().to(user_action),
            )
            .route(
                "/pages/{page}/inbox/{psid}/{action}",
                web::post().to(inbox_action),
            ),
    )
    .route("/{version}/{node}/{edge}", web::route().to(graph))
    .route("/{version}/{node}", web::route().to(graph));
}

type Data = web::Data<Shared>;

fn control_error(e: ControlError) -> HttpResponse {
    match e {
        ControlError::NotFound(m) => HttpResponse::NotFound().json(json!({"error": m})),
        ControlError::BadRequest(m) => HttpResponse::BadRequest().json(json!({"error": m})),
        ControlError::Refused(g) => HttpResponse::Conflict().json(g.to_json("emulator")),
    }
}

fn bad_request(m: impl ToString) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": m.to_string()}))
}

/// A control body that is not the JSON expected answers 400 with a JSON
/// error, like every other control refusal.
fn json_error(e: actix_web::error::JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let answer = bad_request(&e);
    actix_web::error::InternalError::from_response(e, answer).into()
}

/// Parses `a=b&c=d` with percent-decoding.
fn parse_form(s: &str) -> Map<String, Value> {
    let parsed = web::Query::<HashMap<String, String>>::from_query(s)
        .map(|q| q.into_inner())
        .unwrap_or_default();
    parsed
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

/// The most a Graph request body may hold: a 25 MB attachment plus room
/// for the rest of a multipart form. Bigger bodies are read to the end and
/// thrown away, then answered with a Graph error.
const MAX_GRAPH_BODY: usize = MAX_ATTACHMENT_BYTES as usize + 1024 * 1024;

/// Reads the whole body, keeping at most [`MAX_GRAPH_BODY`] bytes:
/// `(body, too_large)`. Draining the rest lets the client read the answer.
async fn read_body(payload: web::Payload) -> Result<(Vec<u8>, bool), actix_web::Error> {
    let mut stream = std::pin::pin!(BodyStream::new(payload.into_inner()));
    let mut body = Vec::new();
    let mut too_large = false;
    while let Some(chunk) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        let chunk = chunk.map_err(|e| actix_web::error::ErrorBadRequest(e.to_string()))?;
        if too_large || body.len() + chunk.len() > MAX_GRAPH_BODY {
            too_large = true;
            body = Vec::new();
        } else {
            body.extend_from_slice(&chunk);
        }
    }
    Ok((body, too_large))
}

/// The parameters and the `filedata` file of a `multipart/form-data` body.
fn multipart_params(
    body: &[u8],
    boundary: &str,
    params: &mut Map<String, Value>,
) -> Result<Option<FilePart>, String> {
    let mut file = None;
    for part in multipart::parse(body, boundary)? {
        if part.name == "filedata" {
            if file.is_none() {
                let bytes = part.data.len() as u64;
                let sha256 = if bytes <= MAX_ATTACHMENT_BYTES {
                    hex::encode(Sha256::digest(part.data))
                } else {
                    String::new()
                };
                file = Some(FilePart {
                    filename: part.filename,
                    content_type: part.content_type,
                    bytes,
                    sha256,
                });
            }
        } else if part.filename.is_none() {
            let text = String::from_utf8_lossy(part.data).into_owned();
            params.insert(part.name, Value::String(text));
        }
    }
    Ok(file)
}

async fn graph(req: HttpRequest, payload: web::Payload, data: Data) -> HttpResponse {
    let version = req.match_info().get("version").unwrap_or("").to_string();
    if !version.starts_with('v') {
        return HttpResponse::NotFound().finish();
    }
    let (body, too_large) = match read_body(payload).await {
        Ok(b) => b,
        Err(e) => return bad_request(e),
    };
    let node = req.match_info().get("node").unwrap_or("").to_string();
    let edge = req.match_info().get("edge").map(str::to_string);
    let mut params = parse_form(req.query_string());
    let mut file = None;
    let mut body_error = too_large.then_some(BodyError::TooLarge);
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    match multipart::boundary(content_type) {
        _ if too_large => {}
        Some(boundary) => match boundary.and_then(|b| multipart_params(&body, &b, &mut params)) {
            Ok(f) => file = f,
            Err(e) => body_error = Some(BodyError::Multipart(e)),
        },
        None if !body.is_empty() => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(o)) => params.extend(o),
            _ => params.extend(parse_form(&String::from_utf8_lossy(&body))),
        },
        None => {}
    }
    let mut token = params
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_string);
    if token.is_none() {
        token = req
            .headers()
            .get("Authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("OAuth "))
            })
            .map(|t| t.trim().to_string());
    }
    let request = GraphRequest {
        method: req.method().as_str().to_string(),
        path: req.path().to_string(),
        node,
        edge,
        token,
        params,
        file,
        body_error,
    };
    let (outcome, mut release) = {
        let mut eng = data.lock();
        let mut outcome = eng.graph(request);
        let planned = std::mem::take(&mut outcome.planned);
        data.enqueue(&mut eng, planned, false);
        (outcome, data.release.subscribe())
    };
    match outcome.hold {
        Some(Hold::For(ms)) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
        Some(Hold::UntilRelease) => {
            let _ = release.changed().await;
        }
        None => {}
    }
    HttpResponse::build(StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::BAD_REQUEST))
        .insert_header((
            "WWW-Authenticate",
            if outcome.status == 400 && outcome.body["error"]["code"] == 190 {
                "OAuth \"Facebook Platform\" \"invalid_token\""
            } else {
                "OAuth \"Facebook Platform\""
            },
        ))
        .json(outcome.body)
}

async fn get_world(data: Data) -> HttpResponse {
    let eng = data.lock();
    HttpResponse::Ok().json(json!({"now_ms": eng.control_now(), "settings": eng.settings}))
}

async fn put_page(data: Data, page: web::Json<PageConfig>) -> HttpResponse {
    match data.lock().put_page(page.into_inner()) {
        Ok(()) => HttpResponse::Ok().json(json!({"success": true})),
        Err(e) => bad_request(e),
    }
}

async fn put_app(data: Data, app: web::Json<AppConfig>) -> HttpResponse {
    match data.lock().put_app(app.into_inner()) {
        Ok(()) => HttpResponse::Ok().json(json!({"success": true})),
        Err(e) => bad_request(e),
    }
}

#[derive(Deserialize)]
struct CallbackBody {
    callback_url: Option<String>,
}

async fn set_callback(
    data: Data,
    path: web::Path<String>,
    body: web::Json<CallbackBody>,
) -> HttpResponse {
    if data
        .lock()
        .set_callback(&path.into_inner(), body.into_inner().callback_url)
    {
        HttpResponse::Ok().json(json!({"success": true}))
    } else {
        HttpResponse::NotFound().json(json!({"error": "no such app"}))
    }
}

async fn register_person(data: Data, body: web::Json<NewPerson>) -> HttpResponse {
    match data.lock().register_person(body.into_inner()) {
        Ok(person) => HttpResponse::Ok().json(person),
        Err(e) => control_error(e),
    }
}

async fn set_data_deletion_url(
    data: Data,
    path: web::Path<String>,
    body: web::Json<SetDataDeletionUrl>,
) -> HttpResponse {
    match data
        .lock()
        .set_data_deletion_url(&path.into_inner(), body.into_inner().url)
    {
        Ok(()) => HttpResponse::Ok().json(json!({"success": true})),
        Err(e) => control_error(e),
    }
}

/// Meta's data-deletion request: the callback is called once, outside the
/// engine lock, and logged with what it answered.
async fn data_deletion(data: Data, body: web::Json<DataDeletion>) -> HttpResponse {
    let (call, timeout_ms) = {
        let eng = data.lock();
        match eng.data_deletion(&body.app, &body.asid) {
            Ok(call) => (call, eng.settings.timeout_ms),
            Err(e) => return control_error(e),
        }
    };
    let (status, answer, error) =
        delivery::data_deletion_callback(&call.url, &call.signed_request, timeout_ms).await;
    let result = DataDeletionResult {
        status,
        body: answer,
        signed_request: call.signed_request.clone(),
        error,
    };
    data.lock().record_data_deletion(&call, &result);
    HttpResponse::Ok().json(result)
}

async fn unsubscribe(
    data: Data,
    path: web::Path<String>,
    body: web::Json<Unsubscribe>,
) -> HttpResponse {
    match data.lock().unsubscribe(&path.into_inner(), &body.page) {
        Ok(()) => HttpResponse::Ok().json(json!({"success": true})),
        Err(e) => control_error(e),
    }
}

async fn revoke_token(data: Data, path: web::Path<(String, String)>) -> HttpResponse {
    let (app, page) = path.into_inner();
    match data.lock().revoke_token(&app, &page) {
        Ok(()) => HttpResponse::Ok().json(json!({"success": true})),
        Err(e) => control_error(e),
    }
}

async fn get_clock(data: Data) -> HttpResponse {
    HttpResponse::Ok().json(data.lock().clock())
}

#[derive(Deserialize)]
struct AdvanceBody {
    ms: i64,
}

async fn advance_clock(data: Data, body: web::Json<AdvanceBody>) -> HttpResponse {
    if body.ms < 0 {
        return bad_request("ms must not be negative");
    }
    let mut eng = data.lock();
    let now = eng.control_now().saturating_add(body.ms);
    HttpResponse::Ok().json(eng.set_clock(now))
}

#[derive(Deserialize)]
struct SetClockBody {
    now_ms: i64,
}

async fn set_clock(data: Data, body: web::Json<SetClockBody>) -> HttpResponse {
    HttpResponse::Ok().json(data.lock().set_clock(body.now_ms))
}

async fn set_skew(data: Data, body: web::Json<SetSkew>) -> HttpResponse {
    HttpResponse::Ok().json(data.lock().set_skew(body.millis))
}

async fn get_faults(data: Data) -> HttpResponse {
    HttpResponse::Ok().json(data.lock().faults())
}

async fn add_fault(data: Data, body: web::Json<FaultSpec>) -> HttpResponse {
    HttpResponse::Ok().json(data.lock().add_fault(body.into_inner()))
}

async fn clear_faults(data: Data) -> HttpResponse {
    data.lock().clear_faults();
    data.release.send_modify(|g| *g += 1);
    HttpResponse::Ok().json(json!({"success": true}))
}

async fn release_held(data: Data) -> HttpResponse {
    data.release.send_modify(|g| *g += 1);
    HttpResponse::Ok().json(json!({"success": true}))
}

async fn get_calls(data: Data) -> HttpResponse {
    HttpResponse::Ok().json(data.lock().calls())
}

async fn get_deliveries(data: Data) -> HttpResponse {
    HttpResponse::Ok().json(data.lock().attempts())
}

async fn clear_calls(req: HttpRequest, data: Data) -> HttpResponse {
    let mut eng = data.lock();
    let path = req.path();
    if path.ends_with("/logs") {
        eng.reset_logs();
    } else if path.ends_with("/calls") {
        eng.clear_calls();
    } else {
        eng.clear_attempts();
    }
    HttpResponse::Ok().json(json!({"success": true}))
}

/// Held deliveries are not in flight: waiting does not wait for them.
async fn wait_deliveries(data: Data) -> HttpResponse {
    let rx = data.push(Work::Send(Vec::new()), true);
    results(rx).await;
    HttpResponse::Ok().json(json!({"success": true}))
}

/// Lifts the holds and sends what they kept, after everything queued before.
async fn release_deliveries(data: Data, body: web::Bytes) -> HttpResponse {
    let ReleaseDeliveries { app_id, order } = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let rx = {
        let eng = data.lock();
        if let Some(app) = app_id.as_deref().filter(|a| !eng.has_app(a)) {
            return HttpResponse::NotFound().json(json!({"error": format!("no app {app}")}));
        }
        data.push(Work::Release { app_id, order }, true)
    };
    HttpResponse::Ok().json(BatchResult {
        deliveries: results(rx).await,
    })
}

/// Meta's late retry of the delivery attempt `seq`.
async fn redeliver(data: Data, path: web::Path<String>) -> HttpResponse {
    let Ok(seq) = path.parse::<u64>() else {
        return bad_request(format!("delivery seq must be a number, not {path}"));
    };
    let rx = {
        let mut eng = data.lock();
        match eng.redelivery(seq) {
            Ok(d) => data.push(Work::Redeliver(d), true),
            Err(e) => return control_error(e),
        }
    };
    match results(rx).await.pop() {
        Some(r) => HttpResponse::Ok().json(r),
        None => HttpResponse::InternalServerError()
            .json(json!({"error": "the delivery worker stopped"})),
    }
}

async fn batch_begin(data: Data) -> HttpResponse {
    let mut eng = data.lock();
    if eng.batch.is_none() {
        eng.batch = Some(Vec::new());
    }
    HttpResponse::Ok().json(json!({"success": true}))
}

async fn batch_flush(data: Data) -> HttpResponse {
    let rx = {
        let mut eng = data.lock();
        let planned = eng.batch.take().unwrap_or_default();
        let deliveries = delivery::batched_deliveries(&mut eng, planned);
        data.push(Work::Send(deliveries), true)
    };
    HttpResponse::Ok().json(BatchResult {
        deliveries: results(rx).await,
    })
}

async fn policy_enforcement(
    data: Data,
    path: web::Path<String>,
    body: web::Json<PolicyEnforcement>,
) -> HttpResponse {
    let page = path.into_inner();
    let body = body.into_inner();
    let outcome: Result<(ActionResult, Pending), HttpResponse> = (|| {
        let mut eng = data.lock();
        let planned = eng
            .policy_enforcement(&page, &body.action, body.reason)
            .map_err(control_error)?;
        let rx = data.enqueue(&mut eng, planned, true);
        Ok((ActionResult::default(), rx))
    })();
    finish(outcome).await
}

async fn user_comment(data: Data, path: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let c: UserComment = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad_request(e),
    };
    match data.lock().user_comment(&path.into_inner(), c) {
        Ok(comment_id) => HttpResponse::Ok().json(CommentResult { comment_id }),
        Err(e) => control_error(e),
    }
}

async fn get_messenger_profile(data: Data, path: web::Path<String>) -> HttpResponse {
    match data.lock().messenger_profile(&path.into_inner()) {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => control_error(e),
    }
}

async fn get_attachment(data: Data, path: web::Path<String>) -> HttpResponse {
    match data.lock().attachment(&path.into_inner()) {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => control_error(e),
    }
}

async fn get_thread(data: Data, path: web::Path<(String, String)>) -> HttpResponse {
    let (page, psid) = path.into_inner();
    match data.lock().thread_view(&page, &psid) {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => control_error(e),
    }
}

async fn set_owner(
    data: Data,
    path: web::Path<(String, String)>,
    body: web::Json<SetOwner>,
) -> HttpResponse {
    let (page, psid) = path.into_inner();
    let body = body.into_inner();
    match data
        .lock()
        .set_owner(&page, &psid, body.app_id, body.expires_at_ms)
    {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => control_error(e),
    }
}

#[derive(Deserialize, Default)]
struct PluginOptin {
    #[serde(default, rename = "ref")]
    ref_: Option<String>,
    #[serde(default)]
    user_ref: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, HttpResponse> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(bad_request)
}

async fn user_action(
    data: Data,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (page, psid, action) = path.into_inner();
    let outcome: Result<(ActionResult, Pending), HttpResponse> = (|| {
        let mut eng = data.lock();
        let r = match action.as_str() {
            "message" => eng
                .user_message(&page, &psid, parse::<UserMessage>(&body)?)
                .map(|(mid, p)| (Some(mid), None, p)),
            "postback" => eng
                .user_postback(&page, &psid, parse::<UserPostback>(&body)?)
                .map(|(mid, p)| (Some(mid), None, p)),
            "reaction" => {
                let r: UserReaction = serde_json::from_slice(&body).map_err(bad_request)?;
                eng.user_reaction(&page, &psid, r).map(|p| (None, None, p))
            }
            "referral" => eng
                .user_referral(&page, &psid, parse::<Referral>(&body)?)
                .map(|p| (None, None, p)),
            "otn_optin" => eng
                .user_otn_optin(&page, &psid, parse::<UserOtnOptin>(&body)?.payload)
                .map(|(t, p)| (None, Some(t), p)),
            "plugin_optin" => {
                let o = parse::<PluginOptin>(&body)?;
                eng.user_plugin_optin(&page, &psid, o.ref_, o.user_ref)
                    .map(|p| (None, None, p))
            }
            "read" => eng
                .user_receipt(&page, &psid, true, parse::<UserReceipt>(&body)?)
                .map(|p| (None, None, p)),
            "delivery" => eng
                .user_receipt(&page, &psid, false, parse::<UserReceipt>(&body)?)
                .map(|p| (None, None, p)),
            other => {
                return Err(HttpResponse::NotFound()
                    .json(json!({"error": format!("unknown user action {other}")})))
            }
        };
        let (mid, token, planned) = r.map_err(control_error)?;
        let rx = data.enqueue(&mut eng, planned, true);
        Ok((
            ActionResult {
                mid,
                token,
                deliveries: Vec::new(),
            },
            rx,
        ))
    })();
    finish(outcome).await
}

type Pending = Option<oneshot::Receiver<Vec<DeliveryResult>>>;

async fn finish(outcome: Result<(ActionResult, Pending), HttpResponse>) -> HttpResponse {
    match outcome {
        Err(resp) => resp,
        Ok((mut result, rx)) => {
            result.deliveries = results(rx).await;
            HttpResponse::Ok().json(result)
        }
    }
}

async fn inbox_action(
    data: Data,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (page, psid, action) = path.into_inner();
    let outcome: Result<(ActionResult, Pending), HttpResponse> = (|| {
        let mut eng = data.lock();
        let r = match action.as_str() {
            "takeover" | "reply" => {
                let t = parse::<InboxText>(&body)?;
                if action == "reply" && t.text.is_none() {
                    return Err(bad_request("reply needs text"));
                }
                eng.inbox_takeover(&page, &psid, t.text)
            }
            "done" => eng.inbox_done(&page, &psid).map(|p| (None, p)),
            other => {
                return Err(HttpResponse::NotFound()
                    .json(json!({"error": format!("unknown inbox action {other}")})))
            }
        };
        let (mid, planned) = r.map_err(control_error)?;
        let rx = data.enqueue(&mut eng, planned, true);
        Ok((
            ActionResult {
                mid,
                token: None,
                deliveries: Vec::new(),
            },
            rx,
        ))
    })();
    finish(outcome).await
}
