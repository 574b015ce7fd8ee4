//! `reliability-server CONFIG`: runs Baton's server on the sled log in the
//! configured data directory, prints `listening on URL`, and serves until it
//! is killed or stopped. The reliability suite kills it with SIGKILL mid-load,
//! and stops it with SIGTERM (the same stop `baton serve` makes).

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
        let store =
            Arc::new(event_log::SledStore::open(config.data_dir.join("log")).expect("event log"));
        let running = server::start(config, store, Arc::new(server::SystemClock))
            .await
            .expect("server");
        println!("listening on {}", running.base_url());
        std::io::stdout().flush().expect("stdout");
        server::serve_until_signal(running).await.expect("serve");
    });
}
