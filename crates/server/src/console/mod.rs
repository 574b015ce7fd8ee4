//! The web console at `/console` (`docs/console.md`): server-rendered HTML
//! (maud) with one small embedded script for live updates, for operators
//! and auditors. Every read goes through the same query layer as the CLI
//! and the JSON API (`orchestration::audit`, `Baton::messageable`,
//! dispatch's status and dead letters).
//!
//! Sign-in takes the admin token, the read-only auditor token, or an app's
//! Baton token (that app's pages only), in a form body, never a URL. The
//! session lives in memory; its cookie is `HttpOnly`, `SameSite=Strict`,
//! scoped to `/console` (and `Secure` over HTTPS). Every state-changing
//! form carries the session's CSRF token.

// A page that cannot be shown is a whole response (a sign-in redirect, an
// error page): handlers return it as the error, on a cold path.
#![allow(clippy::result_large_err)]

mod live;
mod views;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::{AppId, PageId};
use event_log::EventStore;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::auth::{ct_eq, identify, Identity};
use crate::AppState;

pub use live::{sample, Samples};

/// The session cookie's name.
pub const COOKIE: &str = "baton_console";
/// How long a session lasts without a new sign-in.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; the oldest goes first.
const MAX_SESSIONS: usize = 10_000;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// Who is looking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    Admin,
    Auditor,
    App(AppId),
}

impl Viewer {
    fn name(&self) -> String {
        match self {
            Viewer::Admin => "admin".into(),
            Viewer::Auditor => "auditor (read-only)".into(),
            Viewer::App(app) => format!("app {app}"),
        }
    }

    /// Whether this viewer sees `page`.
    pub fn sees_page<S>(&self, state: &AppState<S>, page: &PageId) -> bool {
        match self {
            Viewer::Admin | Viewer::Auditor => state.config.page(page).is_some(),
            Viewer::App(app) => state
                .config
                .page(page)
                .is_some_and(|p| p.apps.contains_key(app)),
        }
    }

    /// Whether this viewer sees `app` (its status, its threads).
    pub fn sees_app(&self, app: &AppId) -> bool {
        match self {
            Viewer::Admin | Viewer::Auditor => true,
            Viewer::App(me) => me == app,
        }
    }

    fn may_act(&self) -> bool {
        matches!(self, Viewer::Admin)
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub viewer: Viewer,
    pub csrf: String,
    expires: Instant,
}

/// Signed-in sessions, in memory (a restart signs everyone out).
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Sessions {
    fn start(&self, viewer: Viewer) -> (String, Session) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let session = Session {
            viewer,
            csrf: random_hex(),
            expires: now + SESSION_TTL,
        };
        let id = random_hex();
        map.insert(id.clone(), session.clone());
        (id, session)
    }

    fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn end(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The session of a request, or the answer that sends it to sign in.
pub fn session<S>(state: &AppState<S>, req: &HttpRequest) -> Result<Session, HttpResponse> {
    req.cookie(COOKIE)
        .and_then(|c| state.console.get(c.value()))
        .ok_or_else(|| {
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console/login"))
                .finish()
        })
}

/// Checks a form's CSRF token against the session's.
pub fn check_csrf(session: &Session, form: &HashMap<String, String>) -> Result<(), HttpResponse> {
    match form.get("csrf") {
        Some(token) if ct_eq(token.as_bytes(), session.csrf.as_bytes()) => Ok(()),
        _ => Err(problem(
            actix_web::http::StatusCode::FORBIDDEN,
            "This form has expired or did not come from the console. Reload the page and try again.",
        )),
    }
}

/// A plain error page.
pub fn problem(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(
            html! {
                (DOCTYPE)
                html lang="en" {
                    head { meta charset="utf-8"; meta name="viewport" content="width=device-width, initial-scale=1";
                        title { "Baton console: " (status.as_u16()) }
                        style { (PreEscaped(CSS)) } }
                    body { main id="main" {
                        h1 { (status.canonical_reason().unwrap_or("Error")) }
                        p role="alert" { (message) }
                        p { a href="/console" { "Back to the console" } }
                    } }
                }
            }
            .into_string(),
        )
}

/// The console's sections, for the navigation.
const NAV: &[(&str, &str)] = &[
    ("/console", "Pages and apps"),
    ("/console/threads", "Threads"),
    ("/console/messageable", "Who can I message?"),
    ("/console/refusals", "Refusals"),
    ("/console/delivery", "Delivery"),
    ("/console/integrity", "Integrity"),
    ("/console/metrics", "Metrics"),
];

/// A whole console page.
pub fn layout(session: &Session, current: &str, title: &str, body: Markup) -> HttpResponse {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Baton console" }
                style { (PreEscaped(CSS)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    p.brand { "Baton" }
                    nav aria-label="Console sections" {
                        ul {
                            @for (href, label) in NAV {
                                li { a href=(href) aria-current=[(*href == current).then_some("page")] { (label) } }
                            }
                        }
                    }
                    form.signout method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        span { "Signed in as " (session.viewer.name()) " " }
                        button type="submit" { "Sign out" }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
                script { (PreEscaped(JS)) }
            }
        }
    };
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ))
        .body(page.into_string())
}

fn login_page(error: Option<&str>) -> HttpResponse {
    let status = if error.is_some() {
        actix_web::http::StatusCode::UNAUTHORIZED
    } else {
        actix_web::http::StatusCode::OK
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(
            html! {
                (DOCTYPE)
                html lang="en" {
                    head {
                        meta charset="utf-8";
                        meta name="viewport" content="width=device-width, initial-scale=1";
                        title { "Sign in · Baton console" }
                        style { (PreEscaped(CSS)) }
                    }
                    body {
                        main id="main" {
                            h1 { "Baton console" }
                            @if let Some(error) = error { p.error role="alert" { (error) } }
                            form.login method="post" action="/console/login" {
                                label for="token" { "Token (admin, auditor, or your app's Baton token)" }
                                input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                                button type="submit" { "Sign in" }
                            }
                        }
                    }
                }
            }
            .into_string(),
        )
}

/// `GET /console/login`.
pub async fn login_form() -> HttpResponse {
    login_page(None)
}

pub(crate) async fn read_form<S: EventStore + 'static>(
    state: &AppState<S>,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<HashMap<String, String>, HttpResponse> {
    let body = crate::body::read(
        req,
        payload,
        state.config.max_body_bytes,
        Duration::from_millis(state.config.body_timeout_ms),
    )
    .await
    .map_err(|e| {
        problem(
            actix_web::http::StatusCode::BAD_REQUEST,
            &format!("The form could not be read: {e:?}"),
        )
    })?;
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .map(|pairs| pairs.into_iter().collect())
        .map_err(|_| {
            problem(
                actix_web::http::StatusCode::BAD_REQUEST,
                "The form could not be read.",
            )
        })
}

/// `POST /console/login`: the token in the form body.
pub async fn login<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let form = match read_form(&state, &req, payload).await {
        Ok(form) => form,
        Err(res) => return res,
    };
    let token = form.get("token").map(String::as_str).unwrap_or_default();
    let viewer = match identify(&state.config, token) {
        Some(Identity::Admin) => Viewer::Admin,
        Some(Identity::Auditor) => Viewer::Auditor,
        Some(Identity::App(app, _)) => Viewer::App(app.id.clone()),
        None => {
            return login_page(Some(
                "That token is not the admin's, the auditor's, or a managed app's.",
            ))
        }
    };
    let (id, _) = state.console.start(viewer);
    let secure = req.connection_info().scheme() == "https";
    let cookie = Cookie::build(COOKIE, id)
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(actix_web::cookie::time::Duration::seconds(
            SESSION_TTL.as_secs() as i64,
        ))
        .finish();
    HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header((header::LOCATION, "/console"))
        .finish()
}

/// `POST /console/logout`.
pub async fn logout<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let session = match session(&state, &req) {
        Ok(s) => s,
        Err(res) => return res,
    };
    let form = match read_form(&state, &req, payload).await {
        Ok(form) => form,
        Err(res) => return res,
    };
    if let Err(res) = check_csrf(&session, &form) {
        return res;
    }
    if let Some(c) = req.cookie(COOKIE) {
        state.console.end(c.value());
    }
    let mut gone = Cookie::build(COOKIE, "").path("/console").finish();
    gone.make_removal();
    HttpResponse::SeeOther()
        .cookie(gone)
        .insert_header((header::LOCATION, "/console/login"))
        .finish()
}

/// The console's routes.
pub fn routes<S: EventStore + 'static>(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/console/login")
            .get(login_form)
            .post(login::<S>),
    )
    .service(web::resource("/console/logout").post(logout::<S>))
    .service(web::resource("/console").get(views::overview::<S>))
    .service(web::resource("/console/threads").get(views::threads::<S>))
    .service(web::resource("/console/threads/{page}/{psid}").get(views::thread::<S>))
    .service(web::resource("/console/threads/{page}/{psid}/state").get(views::thread_state::<S>))
    .service(web::resource("/console/messageable").get(views::messageable::<S>))
    .service(web::resource("/console/refusals").get(views::refusals::<S>))
    .service(web::resource("/console/delivery").get(views::delivery::<S>))
    .service(web::resource("/console/delivery/{app}/redrive").post(views::redrive::<S>))
    .service(
        web::resource("/console/pages/{page}/apps/{app}/resubscribe").post(views::resubscribe::<S>),
    )
    .service(web::resource("/console/integrity").get(views::integrity::<S>))
    .service(web::resource("/console/integrity/verify").post(views::verify::<S>))
    .service(web::resource("/console/metrics").get(views::metrics::<S>))
    .service(web::resource("/console/live").get(live::stream::<S>));
}
