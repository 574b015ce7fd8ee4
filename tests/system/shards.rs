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
use std::time::Duration;

use domain::Event;
use emulator::{AppConfig, Emulator, NewPerson, PageConfig, World};
use event_log::{EventStore, PgStore};
use serde_json::json;
use server::Config;

use crate::cluster::{answer, start_in_process};
use crate::reliability::{verified_message_facts, Backend};
use crate::support::*;

/// Decided by shard 0 and shard 1.
const PAGES: [&str; 2] = ["5550031", "5550032"];

fn config(shard: i32, database: &str, graph: &str, backend: &str) -> Config {
    let [p0, p1] = PAGES;
    let routing = cr_mode();
    // Shard 0's nodes take larger bodies than shard 1's: a delivery one
    // takes and the other refuses.
    let max_body = if shard == 0 { 1 << 20 } else { 1 << 16 };
    let text = format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "unused"
max_body_bytes = {max_body}
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

/// A node of `shard` named `name`, in this process: the first of a shard
/// owns it.
async fn node(
    dir: &Path,
    shard: i32,
    name: &str,
    graph: &str,
    backend: &str,
) -> server::Running<PgStore> {
    let store_config = postgres_config(dir);
    let config = config(shard, &store_config.url, graph, backend);
    let store = PgStore::connect(store_config.with_shard(shard))
        .await
        .unwrap();
    start_in_process(config, store, name).await
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
    /// The deliveries it keeps, and those kept with their words: sealed,
    /// or (their items kept by their facts) with the rest of their body.
    deliveries: usize,
    worded_deliveries: usize,
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
    let deliveries: Vec<serde_json::Value> = records
        .iter()
        .filter(|r| r.type_name == "WebhookDeliveryReceived")
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    let worded_deliveries = deliveries
        .iter()
        .filter(|d| d.get("sealed").is_some() || d.get("body").is_some())
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
        deliveries: deliveries.len(),
        worded_deliveries,
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
    let zero = node(dir.path(), 0, "shard-0-a", &graph, &backend.url).await;
    let one = node(dir.path(), 1, "shard-1-a", &graph, &backend.url).await;
    // A follower of shard 1: what it does not decide goes to shard 1's owner,
    // or to shard 0's for page 0.
    let one_b = node(dir.path(), 1, "shard-1-b", &graph, &backend.url).await;
    assert!(zero.state.baton.is_owner() && one.state.baton.is_owner());
    assert!(!one_b.state.baton.is_owner());
    let c = one_b.base_url();
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
    let both = both_pages(["u0", "u1"], "m.both");
    let res = deliver(&http, &b, &both).await;
    assert_eq!(res.status(), 200);
    // Meta's retry of it: each shard finds it recorded.
    let res = deliver(&http, &b, &both).await;
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
    // The delivery with both pages is kept without its words in both: only
    // page 1's shard knows whether its item came after an erasure there
    // (each item's own raw copy is sealed with its fact, in its shard).
    assert_eq!((log0.worded_deliveries, log1.worded_deliveries), (1, 1));
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
    // Shard 1's follower routes page 1 to its owner and page 0 to shard 0's,
    // and records a page 0 webhook in shard 0 (handed on to its owner).
    assert_eq!(answer(thread(&c)).await, through_a);
    let page0 = |base: &str| {
        http.get(format!("{base}/api/threads/{p0}/u0"))
            .bearer_auth(ADMIN_TOKEN)
    };
    let (via_c, via_a) = (answer(page0(&c)).await, answer(page0(&a)).await);
    assert_eq!(via_c.0, 200);
    assert_eq!(via_c, via_a);
    let res = deliver(&http, &c, &one_item(p0, "m.via.c")).await;
    assert_eq!(res.status(), 200);
    assert!(shard_log(dir.path(), 0)
        .await
        .facts
        .contains(&format!("{p0}:mid:m.via.c")));
    // `me` of an app on pages in both shards names no page: 400 on every
    // node, as without shards.
    for base in [&a, &b, &c] {
        let (status, error) = answer(
            http.post(format!("{base}/v21.0/me/messages"))
                .bearer_auth("baton-bot")
                .json(&text("u1", "which page?")),
        )
        .await;
        assert_eq!(status, 400, "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("serves several pages"),
            "{error}"
        );
    }
    // `me` of the human with its token in the query, and the dry run
    // without a page: shard 1 decides; the dry run naming page 1: too.
    let (status, error) = answer(
        http.post(format!("{a}/v21.0/me/messages?access_token=baton-human"))
            .json(&text("u1", "human again")),
    )
    .await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (400, &json!(10)),
        "{error}"
    );
    let (status, check) = answer(
        http.post(format!("{a}/api/sends/check"))
            .bearer_auth("baton-human")
            .json(&text("u1", "may I?")),
    )
    .await;
    assert_eq!(
        (status, &check["allowed"], &check["code"]),
        (200, &json!(false), &json!(10)),
        "{check}"
    );
    let mut with_page = text("u1", "may the bot?");
    with_page["page_id"] = json!(p1);
    let (status, check) = answer(
        http.post(format!("{a}/api/sends/check"))
            .bearer_auth("baton-bot")
            .json(&with_page),
    )
    .await;
    assert_eq!((status, &check["allowed"]), (200, &json!(true)), "{check}");
    // The same with the page as a number, in the query: as the handler
    // reads it.
    let (status, check) = answer(
        http.post(format!("{a}/api/sends/check?page_id={p1}"))
            .bearer_auth("baton-bot")
            .json(&text("u1", "may the bot?")),
    )
    .await;
    assert_eq!((status, &check["allowed"]), (200, &json!(true)), "{check}");
    // The human's messageable list (its one page is page 1) is shard 1's
    // to answer: asked of shard 0's node as if routed there already, it
    // is refused rather than answered from shard 0's empty view.
    let human_list = |base: &str| {
        http.get(format!("{base}/api/apps/{HUMAN}/messageable"))
            .bearer_auth(ADMIN_TOKEN)
    };
    assert_eq!(answer(human_list(&a)).await, answer(human_list(&b)).await);
    let routed_twice = human_list(&a).header(server::routing::ROUTED, "node-x");
    assert_eq!(answer(routed_twice).await.0, 503);
    // The messageable list of page 1, asked of shard 0's node.
    let (status, list) = answer(
        http.get(format!("{a}/api/apps/{BOT}/messageable?page={p1}"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert!(list.to_string().contains("\"u1\""), "{list}");
    // Routed once already: not routed again.
    let (status, error) = answer(thread(&a).header(server::routing::ROUTED, "node-x")).await;
    assert_eq!(status, 503);
    assert_eq!(error["error"], "owner_unavailable", "{error}");
    // A forged delivery for page 1 is refused by shard 0's node itself,
    // and nothing reaches shard 1.
    let before = head(&one).await;
    let res = post_signed(&http, &a, BOT, "not-the-secret", &one_item(p1, "m.forged"))
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let error: serde_json::Value = res.json().await.unwrap();
    // This node's refusal, not shard 1's passed on.
    assert_eq!(error["error"], "invalid_signature", "{error}");
    assert_eq!(head(&one).await, before);

    // Shard 1's refusal of its part is passed on as it is permanent: a
    // delivery too large for shard 1's nodes, which shard 0's take.
    let before = head(&one).await;
    let mut big = item(p1, "u1", "m.big");
    big["message"]["text"] = json!("x".repeat(100_000));
    let big = envelope(json!([{"id": p1, "time": T0.millis(), "messaging": [big]}]));
    let res = deliver(&http, &a, &big).await;
    assert_eq!(res.status(), 413);
    let error: serde_json::Value = res.json().await.unwrap();
    assert_eq!(error["error"], "refused_by_other_shard", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("shard 1"),
        "{error}"
    );
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
    for base in [&a, &b, &c] {
        let unknown = http.get(format!(
            "{base}/privacy/deletions/0123456789abcdef0123456789abcdef"
        ));
        assert_eq!(answer(unknown).await.0, 404, "no shard knows the code");
    }
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
    // An owner that takes connections and never answers (frozen, its lease
    // still live) holds a webhook for 5 s at most, then 503.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let database = postgres_config(dir.path()).url;
    event_log::postgres::testing::TestServer::shared()
        .unwrap()
        .psql(
            database.rsplit('/').next().unwrap(),
            &format!(
                "UPDATE event_log_leases SET address = 'http://{}' WHERE shard = 1",
                silent.local_addr().unwrap()
            ),
        )
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Until the node's 250 ms cache of shard 1's owner has turned over.
        let res = deliver(&http, &a, &one_item(p1, "m.frozen.1")).await;
        assert_eq!(res.status(), 503);
        let error: serde_json::Value = res.json().await.unwrap();
        if error["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within 5s")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{error}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(silent);
    let res = deliver(&http, &a, &one_item(p1, "m.later.1")).await;
    assert_eq!(res.status(), 503);
    let error: serde_json::Value = res.json().await.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("shard 1"),
        "{error}"
    );
    let res = deliver(&http, &a, &one_item(p0, "m.later.0")).await;
    assert_eq!(res.status(), 200);
    let both = both_pages(["u8", "u8"], "m.half");
    let res = deliver(&http, &a, &both).await;
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
    one_b.stop().await;
}

/// Posts `body` to `base`'s webhook path for the bot, signed as Meta does.
async fn deliver(http: &reqwest::Client, base: &str, body: &[u8]) -> reqwest::Response {
    post_signed(http, base, BOT, BOT_SECRET, body)
        .await
        .unwrap()
}

/// A delivery with one item on each page, from `psids`, its mids `mid.0`
/// and `mid.1`.
fn both_pages(psids: [&str; 2], mid: &str) -> Vec<u8> {
    let entries: Vec<serde_json::Value> = PAGES
        .iter()
        .zip(psids)
        .enumerate()
        .map(|(i, (page, psid))| {
            json!({"id": page, "time": T0.millis(),
                   "messaging": [item(page, psid, &format!("{mid}.{i}"))]})
        })
        .collect();
    envelope(json!(entries))
}

/// A delivery of one item on `page`.
fn one_item(page: &str, mid: &str) -> Vec<u8> {
    envelope(json!([
        {"id": page, "time": T0.millis(), "messaging": [item(page, "u9", mid)]},
    ]))
}
