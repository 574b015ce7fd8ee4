//! Test support: webhook receivers on port 0 and a two-app world.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use emulator::{AppConfig, Emulator, EmulatorHandle, PageConfig, World};
use serde_json::{json, Value};

pub const PAGE: &str = "1001";
pub const BOT: &str = "111";
pub const CRM: &str = "222";
pub const BOT_SECRET: &str = "bot-secret";
pub const CRM_SECRET: &str = "crm-secret";
pub const BOT_TOKEN: &str = "tok-bot";
pub const CRM_TOKEN: &str = "tok-crm";
pub const USER: &str = "9001";

/// One webhook as an app received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub sig256: Option<String>,
    pub sig1: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Default)]
struct State {
    got: Mutex<Vec<Received>>,
    statuses: Mutex<VecDeque<u16>>,
    /// (status, content type, body) for the next answers.
    answers: Mutex<VecDeque<(u16, String, String)>>,
}

/// A small HTTP server collecting webhook bodies and headers.
pub struct Receiver {
    pub url: String,
    state: Arc<State>,
    handle: ServerHandle,
}

async fn receive(req: HttpRequest, body: web::Bytes, st: web::Data<State>) -> HttpResponse {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    st.got.lock().unwrap().push(Received {
        sig256: h("X-Hub-Signature-256"),
        sig1: h("X-Hub-Signature"),
        content_type: h("Content-Type"),
        body: body.to_vec(),
    });
    if let Some((status, content_type, body)) = st.answers.lock().unwrap().pop_front() {
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .content_type(content_type)
            .body(body);
    }
    let status = st.statuses.lock().unwrap().pop_front().unwrap_or(200);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
}

impl Receiver {
    pub fn start() -> Receiver {
        let state = Arc::new(State::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/webhook", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let data = web::Data::from(state.clone());
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let srv = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route("/webhook", web::post().to(receive))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(0)
                .listen(listener)
                .unwrap()
                .run();
                tx.send(srv.handle()).unwrap();
                let _ = srv.await;
            })
        });
        Receiver {
            url,
            state,
            handle: rx.recv().unwrap(),
        }
    }

    /// Answer the next `n` webhooks with `status`.
    pub fn fail_next(&self, status: u16, n: usize) {
        let mut q = self.state.statuses.lock().unwrap();
        for _ in 0..n {
            q.push_back(status);
        }
    }

    /// Answer the next request with this status, content type and body.
    pub fn answer_next(&self, status: u16, content_type: &str, body: &str) {
        self.state.answers.lock().unwrap().push_back((
            status,
            content_type.to_string(),
            body.to_string(),
        ));
    }

    /// Forget queued failure statuses: answer 200 from now on.
    pub fn answer_ok(&self) {
        self.state.statuses.lock().unwrap().clear();
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.state.got.lock().unwrap().clear();
    }

    /// Every (channel, item) received, in order.
    pub fn items(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for r in self.received() {
            for entry in r.json()["entry"].as_array().unwrap() {
                for ch in ["messaging", "standby"] {
                    if let Some(items) = entry[ch].as_array() {
                        for i in items {
                            out.push((ch.to_string(), i.clone()));
                        }
                    }
                }
            }
        }
        out
    }

    /// Items carrying `key` (e.g. `message`, `pass_thread_control`).
    pub fn items_with(&self, key: &str) -> Vec<(String, Value)> {
        self.items()
            .into_iter()
            .filter(|(_, i)| i.get(key).is_some())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// The emulator plus a receiver per managed app.
pub struct Fixture {
    pub emu: EmulatorHandle,
    pub bot: Receiver,
    pub crm: Receiver,
    pub http: reqwest::Client,
}

pub fn apps(bot: &Receiver, crm: &Receiver) -> (AppConfig, AppConfig) {
    (
        AppConfig::new(BOT, BOT_SECRET)
            .with_callback(&bot.url)
            .with_token(PAGE, BOT_TOKEN),
        AppConfig::new(CRM, CRM_SECRET)
            .with_callback(&crm.url)
            .with_token(PAGE, CRM_TOKEN),
    )
}

impl Fixture {
    /// A Conversation Routing page whose default app is the bot.
    pub fn cr() -> Fixture {
        Self::with(|w, bot, crm| {
            w.with_page(PageConfig::conversation_routing(PAGE, BOT))
                .with_app(bot)
                .with_app(crm)
        })
    }

    pub fn with(make: impl FnOnce(World, AppConfig, AppConfig) -> World) -> Fixture {
        let bot = Receiver::start();
        let crm = Receiver::start();
        let (a, b) = apps(&bot, &crm);
        let emu = Emulator::start(make(World::default(), a, b)).unwrap();
        Fixture {
            emu,
            bot,
            crm,
            http: reqwest::Client::new(),
        }
    }

    /// POST a JSON body to `/v21.0/me/{edge}` with `token`.
    pub async fn post(&self, token: &str, edge: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/me/{edge}", self.emu.graph_url()))
            .query(&[("access_token", token)])
            .json(&body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    pub async fn get(&self, token: &str, edge_and_query: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}/me/{edge_and_query}", self.emu.graph_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// DELETE `/v21.0/me/{edge_and_query}` with a JSON body.
    pub async fn delete(&self, token: &str, edge_and_query: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .delete(format!("{}/me/{edge_and_query}", self.emu.graph_url()))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// POST a raw body with `content_type` to `/v21.0/me/{edge}?access_token=`.
    pub async fn post_raw(
        &self,
        token: &str,
        edge: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/me/{edge}", self.emu.graph_url()))
            .query(&[("access_token", token)])
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    pub async fn send_text(&self, token: &str, text: &str) -> (u16, Value) {
        self.post(
            token,
            "messages",
            json!({"recipient": {"id": USER}, "messaging_type": "RESPONSE", "message": {"text": text}}),
        )
        .await
    }
}

/// (code, subcode) of a Graph error answer.
pub fn code(body: &Value) -> (i64, Option<i64>) {
    (
        body["error"]["code"].as_i64().unwrap_or(-1),
        body["error"]["error_subcode"].as_i64(),
    )
}
