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
    server::init_tracing(config.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        match config.store.clone() {
            server::config::StoreSetting::Sled => {
                let store = event_log::SledStore::open(config.sled_log_dir()).expect("event log");
                let running =
                    server::start(config, Arc::new(store), Arc::new(server::SystemClock)).await;
                serve(running.expect("server")).await
            }
            // Under the shard's lease, as `baton serve` runs on PostgreSQL.
            server::config::StoreSetting::Postgres(setting) => {
                let store = event_log::PgStore::connect(setting.store_config())
                    .await
                    .expect("event log in PostgreSQL");
                let running = server::start_leased(
                    config,
                    Arc::new(store),
                    Arc::new(server::SystemClock),
                    server::Cluster::from_setting(&setting),
                )
                .await;
                serve(running.expect("server")).await
            }
        }
    });
}

async fn serve<S: event_log::EventStore + 'static>(running: server::Running<S>) {
    println!("listening on {}", running.base_url());
    std::io::stdout().flush().expect("stdout");
    server::serve_until_signal(running).await.expect("serve");
}
