//! Pages spread over shards (issue 15): two pages, each decided by its own
//! shard of one PostgreSQL database, and two nodes, each the owner of one
//! shard. Meta (the emulator) sends every webhook of the bot to one node, as
//! it does (one callback URL per app), and the apps call whichever node they
//! reach.
//!
//! Each page's items are recorded in its own shard only, a delivery that
//! carries both pages in both, and each owner dispatches its own pages; a
//! send, a thread read, an erasure and `me` of an app whose pages are all in
//! the other shard are decided by that shard's owner; Meta's data-deletion
//! request erases the person in both shards under one code; a forged
//! delivery is refused before it is handed on; a request routed once is not
//! routed again. When
//! the other shard's owner is gone, its pages' webhooks and calls get 503
//! (Meta retries), while this shard's pages go on. Both chains verify.
//!
//! It needs a store the nodes share, so it runs in `system-postgres` only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use domain::Event;
use emulator::{AppConfig, Emulator, NewPerson, PageConfig, World};
use event_log::{EventStore, PgStore};
use serde_json::json;
use server::{Config, ManualClock};

use crate::cluster::answer;
use crate::reliability::{verified_message_facts, Backend};
use crate::support::*;

/// Decided by shard 0 and shard 1.
const PAGES: [&str; 2] = ["5550031", "5550032"];

fn config(shard: i32, database: &str, graph: &str, backend: &str) -> Config {
    let [p0, p1] = PAGES;
    let routing = cr_mode();
    let text = format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "unused"
admin_token = "{ADMIN_TOKEN}"
graph_timeout_ms = 2000
body_timeout_ms = 300
send_backoff_ms = 1
stop_grace_ms = 0
send_rate_per_second = 1000
send_burst = 1000
store = {{ postgres = {{ url = {{ env = "BATON_DATABASE_URL" }}, shard = {shard} }} }}

[[pages]]
id = "{p0}"
shard = 0
routing = {routing}
apps = ["{BOT}"]

[[pages]]
id = "{p1}"
shard = 1
routing = {routing}
apps = ["{BOT}", "{HUMAN}"]

[[apps]]
id = "{BOT}"
kind = "bot"
management = "managed"
app_secret = "{BOT_SECRET}"
forward_secret = "{BOT_FORWARD_SECRET}"
verify_token = "verify-bot"
api_token = "baton-bot"
graph_base_url = "{graph}"
page_tokens = {{ "{p0}" = "page-token-{p0}", "{p1}" = "page-token-{p1}" }}
backend_url = "{backend}"

[[apps]]
id = "{HUMAN}"
kind = "human"
management = "managed"
app_secret = "{HUMAN_SECRET}"
verify_token = "verify-human"
api_token = "baton-human"
graph_base_url = "{graph}"
page_tokens = {{ "{p1}" = "page-token-human" }}
"#
    );
    Config::parse(&text, "node.toml", |name| {
        (name == "BATON_DATABASE_URL").then(|| database.to_owned())
    })
    .unwrap()
}

/// The node that owns `shard`, in this process.
async fn node(dir: &Path, shard: i32, graph: &str, backend: &str) -> server::Running<PgStore> {
    let store_config = postgres_config(dir);
    let config = config(shard, &store_config.url, graph, backend);
    let store = PgStore::connect(store_config.with_shard(shard))
        .await
        .unwrap();
    let cluster = server::Cluster {
        // Long: a crashed owner's lease stays live for the test.
        lease: Duration::from_secs(60),
        advertise_url: None,
        node_id: Some(format!("shard-{shard}")),
    };
    let clock = Arc::new(ManualClock::new(T0));
    let node = server::start_leased(config, Arc::new(store), clock, cluster)
        .await
        .unwrap();
    assert!(node.state.baton.is_owner());
    node
}

fn world() -> World {
    let [p0, p1] = PAGES;
    let bot = AppConfig::new(BOT, BOT_SECRET)
        .with_fields(emulator::DEFAULT_FIELDS)
        .with_token(p0, format!("page-token-{p0}"))
        .with_token(p1, format!("page-token-{p1}"));
    let human = AppConfig::new(HUMAN, HUMAN_SECRET).with_token(p1, "page-token-human");
    World::default()
        .with_page(PageConfig::conversation_routing(p0, BOT))
        .with_page(PageConfig::conversation_routing(p1, BOT))
        .with_app(bot)
        .with_app(human)
}

fn item(page: &str, psid: &str, mid: &str) -> serde_json::Value {
    json!({"sender": {"id": psid}, "recipient": {"id": page}, "timestamp": T0.millis(),
           "message": {"mid": mid, "text": "hello"}})
}

/// A shard's log, read by a store of its own after its chain verified.
struct ShardLog {
    /// Its message facts' dedupe keys (each once).
    facts: Vec<String>,
    /// The deliveries it keeps.
    deliveries: usize,
    /// Its erasures: page, psid, request.
    erasures: Vec<(String, String, String)>,
}

async fn shard_log(dir: &Path, shard: i32) -> ShardLog {
    let store = PgStore::connect(postgres_config(dir).with_shard(shard))
        .await
        .unwrap();
    let (records, facts) = verified_message_facts(&store).await;
    store.close().await;
    assert!(facts.values().all(|n| *n == 1), "each item once: {facts:?}");
    let deliveries = records
        .iter()
        .filter(|r| r.type_name == "WebhookDeliveryReceived")
        .count();
    let erasures = records
        .iter()
        .filter_map(
            |r| match Event::decode(&r.type_name, r.schema_version, &r.payload) {
                Ok(Event::ContentErased(e)) => Some((
                    e.thread.page.to_string(),
                    e.thread.psid.to_string(),
                    e.request,
                )),
                _ => None,
            },
        )
        .collect();
    ShardLog {
        facts: facts.into_keys().collect(),
        deliveries,
        erasures,
    }
}

async fn head(node: &server::Running<PgStore>) -> u64 {
    node.state.baton.store.head().await.unwrap().position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_spread_over_shards_are_each_decided_by_their_own_shards_owner() {
    if store_under_test() != StoreKind::Postgres {
        report("shards: needs a store the nodes share; it runs in system-postgres");
        return;
    }
    let [p0, p1] = PAGES;
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(world()).expect("emulator starts");
    let ctl = emulator.control();
    ctl.set_clock(T0.millis()).await.unwrap();
    let backend = Backend::start();
    let graph = emulator.base_url();
    let zero = node(dir.path(), 0, &graph, &backend.url).await;
    let one = node(dir.path(), 1, &graph, &backend.url).await;
    let (a, b) = (zero.base_url(), one.base_url());
    let http = reqwest::Client::new();

    // Meta sends the bot's webhooks to shard 0's node, for both pages.
    ctl.set_callback(BOT, Some(&format!("{a}/webhooks/{BOT}")))
        .await
        .unwrap();
    let to_p0 = ctl.user_text(p0, "u0", "to page 0").await.unwrap();
    let to_p1 = ctl.user_text(p1, "u1", "to page 1").await.unwrap();
    for sent in [&to_p0, &to_p1] {
        assert!(
            sent.deliveries.iter().all(|d| d.ok),
            "{:?}",
            sent.deliveries
        );
    }
    let (mid0, mid1) = (to_p0.mid.unwrap(), to_p1.mid.unwrap());
    // One delivery carrying both pages, to shard 1's node.
    let both = envelope(json!([
        {"id": p0, "time": T0.millis(), "messaging": [item(p0, "u0", "m.both.0")]},
        {"id": p1, "time": T0.millis(), "messaging": [item(p1, "u1", "m.both.1")]},
    ]));
    let res = post_signed(&http, &b, BOT, BOT_SECRET, &both)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Meta's retry of it: each shard finds it recorded.
    let res = post_signed(&http, &b, BOT, BOT_SECRET, &both)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Each page's items in its own shard only; the delivery with both pages
    // kept in both, the one with page 1 only not in shard 0.
    let (log0, log1) = (
        shard_log(dir.path(), 0).await,
        shard_log(dir.path(), 1).await,
    );
    let (facts0, deliveries0) = (log0.facts, log0.deliveries);
    let (facts1, deliveries1) = (log1.facts, log1.deliveries);
    let sorted = |mut keys: Vec<String>| {
        keys.sort();
        keys
    };
    assert_eq!(
        facts0,
        sorted(vec![
            format!("{p0}:mid:{mid0}"),
            format!("{p0}:mid:m.both.0")
        ])
    );
    assert_eq!(
        facts1,
        sorted(vec![
            format!("{p1}:mid:{mid1}"),
            format!("{p1}:mid:m.both.1")
        ])
    );
    assert_eq!((deliveries0, deliveries1), (2, 2));
    // Each owner dispatched its own page's items to the bot's backend.
    backend.wait_for_distinct(4).await;
    let arrived = backend.per_thread();
    assert_eq!(arrived["u0"], [mid0.clone(), "m.both.0".to_owned()]);
    assert_eq!(arrived["u1"], [mid1.clone(), "m.both.1".to_owned()]);

    // A send on page 1 through shard 0's node is decided and recorded by
    // shard 1's owner, and reaches Meta once.
    let before = head(&zero).await;
    let (status, sent) = answer(
        http.post(format!("{a}/v21.0/{p1}/messages"))
            .bearer_auth("baton-bot")
            .json(&text("u1", "reply on page 1")),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let calls = ctl.calls().await.unwrap();
    let sends: Vec<_> = calls
        .iter()
        .filter(|c| c.endpoint == "messages" && c.status == 200)
        .collect();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].page_id.as_deref(), Some(p1));
    assert_eq!(head(&zero).await, before, "shard 0 recorded nothing of it");
    // `me` of the human, whose only page is in shard 1, its token in the
    // body: shard 1's owner decides, from page 1's thread, that the bot
    // controls it (shard 0 knows no page of the human's, nor the thread).
    let (status, error) = answer(http.post(format!("{a}/v21.0/me/messages")).json(
        &json!({"access_token": "baton-human", "recipient": {"id": "u1"},
                "messaging_type": "RESPONSE", "message": {"text": "human here"}}),
    ))
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        (&error["error"]["code"], &error["error"]["error_subcode"]),
        (&json!(10), &json!(2_018_300)),
        "{error}"
    );
    // A thread of page 1, read through either node, is shard 1's answer.
    let thread = |base: &str| {
        http.get(format!("{base}/api/threads/{p1}/u1"))
            .bearer_auth(ADMIN_TOKEN)
    };
    let (through_a, through_b) = (answer(thread(&a)).await, answer(thread(&b)).await);
    assert_eq!(through_a.0, 200);
    assert_eq!(through_a, through_b);
    // Routed once already: not routed again.
    let (status, error) = answer(thread(&a).header(server::routing::ROUTED, "node-x")).await;
    assert_eq!(status, 503);
    assert_eq!(error["error"], "owner_unavailable", "{error}");
    // A forged delivery for page 1 is refused by shard 0's node itself,
    // and nothing reaches shard 1.
    let before = head(&one).await;
    let forged = envelope(json!([
        {"id": p1, "time": T0.millis(), "messaging": [item(p1, "u1", "m.forged")]},
    ]));
    let res = post_signed(&http, &a, BOT, "not-the-secret", &forged)
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(head(&one).await, before);

    // Carol wrote on both pages. Her request to Meta to delete her data
    // reaches shard 1's node; each shard erases her thread on its own page,
    // under one confirmation code, whose status page lists both.
    ctl.register_person(&NewPerson {
        psids: [
            (p0.to_owned(), "c0".to_owned()),
            (p1.to_owned(), "c1".to_owned()),
        ]
        .into(),
        asids: [(BOT.to_owned(), "asid-carol".to_owned())].into(),
    })
    .await
    .unwrap();
    for (page, psid) in [(p0, "c0"), (p1, "c1")] {
        let sent = ctl.user_text(page, psid, "CAROL my card").await.unwrap();
        assert!(sent.deliveries.iter().all(|d| d.ok));
    }
    ctl.set_data_deletion_url(BOT, Some(&format!("{b}/privacy/{BOT}/data-deletion")))
        .await
        .unwrap();
    let deletion = ctl.data_deletion(BOT, "asid-carol").await.unwrap();
    assert_eq!(deletion.status, Some(200), "{deletion:?}");
    let code = deletion.body["confirmation_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let erased = |log: ShardLog| log.erasures;
    assert_eq!(
        erased(shard_log(dir.path(), 0).await),
        [(p0.to_owned(), "c0".to_owned(), code.clone())]
    );
    assert_eq!(
        erased(shard_log(dir.path(), 1).await),
        [(p1.to_owned(), "c1".to_owned(), code.clone())]
    );
    for base in [&a, &b] {
        let (_, status) = answer(http.get(format!("{base}/privacy/deletions/{code}"))).await;
        let mut pages: Vec<&str> = status["erased"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["page_id"].as_str().unwrap())
            .collect();
        pages.sort();
        assert_eq!(pages, [p0, p1], "{status}");
    }
    let unknown = http.get(format!(
        "{a}/privacy/deletions/0123456789abcdef0123456789abcdef"
    ));
    assert_eq!(answer(unknown).await.0, 404, "no shard knows the code");
    // The admin's erasure of a page 1 person, asked of shard 0's node, is
    // recorded by shard 1 (the page is named in the body).
    let (status, erasure) = answer(
        http.post(format!("{a}/api/admin/erasures"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"page_id": p1, "psid": "u1"})),
    )
    .await;
    assert_eq!(status, 200, "{erasure}");
    // The page of an erasure is in its body: a body that never comes is
    // cut off before any routing, in Baton's shape, and a body that names
    // no page is this shard's to refuse.
    let slow = format!(
        "POST /api/admin/erasures HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    let (status, body) = crate::hostile::raw(zero.addr, slow.as_bytes()).await;
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("body_timeout"), "{body}");
    let (status, refused) = answer(
        http.post(format!("{a}/api/admin/erasures"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"psid": "u1"})),
    )
    .await;
    assert_eq!(
        (status, &refused["error"]),
        (400, &json!("bad_request")),
        "{refused}"
    );
    let by_admin = erased(shard_log(dir.path(), 1).await);
    assert_eq!(by_admin.len(), 2);
    assert_eq!((by_admin[1].0.as_str(), by_admin[1].1.as_str()), (p1, "u1"));
    assert_eq!(erased(shard_log(dir.path(), 0).await).len(), 1);

    // Shard 1's owner dies (its lease still live). Page 1's webhooks and
    // calls get 503, which Meta and the apps retry; page 0's go on, and
    // its half of a delivery with both pages is recorded.
    one.crash().await;
    let res = post_signed(&http, &a, BOT, BOT_SECRET, &one_item(p1, "m.later.1"))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let error: serde_json::Value = res.json().await.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("shard 1"),
        "{error}"
    );
    let res = post_signed(&http, &a, BOT, BOT_SECRET, &one_item(p0, "m.later.0"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let both = envelope(json!([
        {"id": p0, "time": T0.millis(), "messaging": [item(p0, "u8", "m.half.0")]},
        {"id": p1, "time": T0.millis(), "messaging": [item(p1, "u8", "m.half.1")]},
    ]));
    let res = post_signed(&http, &a, BOT, BOT_SECRET, &both)
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let (status, error) = answer(
        http.post(format!("{a}/v21.0/{p1}/messages"))
            .bearer_auth("baton-bot")
            .json(&text("u1", "while shard 1 is down")),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(error["error"]["code"], 2, "{error}");
    let facts0 = shard_log(dir.path(), 0).await.facts;
    assert!(facts0.contains(&format!("{p0}:mid:m.later.0")));
    assert!(facts0.contains(&format!("{p0}:mid:m.half.0")));
    assert!(facts0.iter().all(|f| f.starts_with(p0)), "{facts0:?}");
    zero.stop().await;
}

/// A delivery of one item on `page`.
fn one_item(page: &str, mid: &str) -> Vec<u8> {
    envelope(json!([
        {"id": page, "time": T0.millis(), "messaging": [item(page, "u9", mid)]},
    ]))
}
