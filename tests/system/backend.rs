//! A backend for the system tests that fails until told otherwise and
//! counts what it refused and received (the console's dead letter, what
//! dispatch sends after an erasure).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};

/// A backend that fails until told otherwise, counting what it received.
#[derive(Default)]
pub struct Flaky {
    pub failing: AtomicBool,
    pub refused: AtomicUsize,
    pub received: AtomicUsize,
    /// The bodies received (not the refused ones).
    pub bodies: Mutex<Vec<Vec<u8>>>,
    /// Woken at every request.
    knock: tokio::sync::Notify,
}

async fn flaky_hook(state: web::Data<Arc<Flaky>>, body: web::Bytes) -> HttpResponse {
    let answer = if state.failing.load(Ordering::SeqCst) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        HttpResponse::InternalServerError().finish()
    } else {
        state.bodies.lock().unwrap().push(body.to_vec());
        state.received.fetch_add(1, Ordering::SeqCst);
        HttpResponse::Ok().finish()
    };
    state.knock.notify_waiters();
    answer
}

impl Flaky {
    /// Waits until `count` reaches `n`.
    pub async fn wait(&self, what: &str, count: impl Fn(&Flaky) -> usize, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let knocked = self.knock.notified();
            if count(self) >= n {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, knocked).await.is_ok(),
                "waited 30 s for {what}"
            );
        }
    }
}

/// A failing backend: its URL, its state, its server.
pub fn flaky_backend() -> (String, Arc<Flaky>, actix_web::dev::ServerHandle) {
    let flaky = Arc::new(Flaky::default());
    flaky.failing.store(true, Ordering::SeqCst);
    let data = web::Data::new(flaky.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/webhook", web::post().to(flaky_hook))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}/webhook", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, flaky, handle)
}
