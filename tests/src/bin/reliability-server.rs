//! `reliability-server CONFIG`: runs Baton's server on the configured store
//! (the sled log in the data directory, or PostgreSQL with
//! `store = { postgres = … }`), prints `listening on URL`, and serves until
//! it is killed or stopped. The reliability suite kills it with SIGKILL
//! mid-load, and stops it with SIGTERM (the same stop `baton serve` makes).

use std::io::Write;
use std::sync::Arc;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: reliability-server CONFIG");
    let config = server::Config::load(std::path::Path::new(&path)).expect("configuration");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        match config.postgres_store_config() {
            None => {
                let store = event_log::SledStore::open(config.sled_log_dir()).expect("event log");
                serve(config, store).await
            }
            Some(pg) => {
                let store = event_log::PgStore::connect(pg)
                    .await
                    .expect("event log in PostgreSQL");
                serve(config, store).await
            }
        }
    });
}

async fn serve<S: event_log::EventStore + 'static>(config: server::Config, store: S) {
    let running = server::start(config, Arc::new(store), Arc::new(server::SystemClock))
        .await
        .expect("server");
    println!("listening on {}", running.base_url());
    std::io::stdout().flush().expect("stdout");
    server::serve_until_signal(running).await.expect("serve");
}
