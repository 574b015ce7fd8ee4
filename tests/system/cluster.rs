//! The cluster test (issue 15): three Baton processes share one PostgreSQL
//! database, one shard, one lease. The emulator plays Meta for three pages
//! and delivers each webhook to the next live node in turn (a load balancer
//! that drops a node it cannot reach); the bot sends through the nodes in
//! turn too, retrying with its `Idempotency-Key` when a node is gone or the
//! lease is moving, and passes threads to the Page Inbox and takes them back
//! the same way. Under that load, the owner is killed with SIGKILL; the
//! next owner is frozen with SIGSTOP until its lease lapses and another node
//! takes over, then thawed with SIGCONT.
//!
//! Afterwards: every webhook a node acknowledged is in the log exactly once;
//! the bot's backend got every item, in order per thread; no send reached
//! Meta twice and every acknowledged send reached it; every control call
//! answered 200 reached Meta, and Baton's ledger agrees with Meta on who
//! owns each thread whose control moved; the frozen node came
//! back as a follower (whatever it tried to write under its old epoch was
//! refused by the database); and the shard's chain verifies. The counts and
//! the takeover times are printed.
//!
//! It needs a store the nodes share, so it runs in `system-postgres` only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator::{AppConfig, Emulator, PageConfig, World};
use event_log::EventStore;
use serde_json::json;
use server::{Config, ManualClock};

use crate::reliability::{spawn_server, verified_message_facts, Backend};
use crate::support::*;

const PAGES: [&str; 3] = ["5550011", "5550012", "5550013"];
const THREADS_PER_PAGE: usize = 3;
const MESSAGES: usize = 72;
/// A send every this many messages; a pass to the Page Inbox and a take
/// back as many messages later.
const SEND_EVERY: usize = 4;
/// Short, so that the test waits little for a lease to lapse.
const LEASE_MS: u64 = 1_000;

struct Node {
    name: String,
    child: Child,
    url: String,
}

fn node_config(dir: &Path, name: &str, graph: &str, backend: &str) -> PathBuf {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let routing = cr_mode();
    let pages: String = PAGES
        .iter()
        .map(|page| {
            format!(
                "[[pages]]\nid = \"{page}\"\nname = \"Page {page}\"\nrouting = {routing}\napps = [\"{BOT}\", \"{PAGE_INBOX}\"]\n\n"
            )
        })
        .collect();
    let tokens: Vec<String> = PAGES
        .iter()
        .map(|page| format!("\"{page}\" = \"page-token-{page}\""))
        .collect();
    let tokens = tokens.join(", ");
    let text = format!(
        r#"
listen = "127.0.0.1:0"
data_dir = {data:?}
admin_token = "{ADMIN_TOKEN}"
graph_timeout_ms = 2000
send_backoff_ms = 1
stop_grace_ms = 0
send_rate_per_second = 1000
send_burst = 1000
store = {{ postgres = {{ url = {{ env = "BATON_DATABASE_URL" }}, node_id = "{name}", lease_ms = {LEASE_MS} }} }}

{pages}
[[apps]]
id = "{BOT}"
name = "Bot"
kind = "bot"
management = "managed"
app_secret = "{BOT_SECRET}"
forward_secret = "{BOT_FORWARD_SECRET}"
verify_token = "verify-bot"
api_token = "baton-bot"
graph_base_url = "{graph}"
page_tokens = {{ {tokens} }}
backend_url = "{backend}"
may_take_control = true

[[apps]]
id = "{PAGE_INBOX}"
kind = "human"
management = "external"
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(name: &str, config: &Path, database: &str) -> Node {
    let (child, url) = spawn_server(
        config,
        vec![("BATON_DATABASE_URL".to_owned(), database.to_owned())],
        "warn,orchestration::leadership=info",
        // Each node's warnings (lease changes among them), for a failure's reader.
        Stdio::from(std::fs::File::create(config.with_extension("log")).unwrap()),
    );
    Node {
        name: name.to_owned(),
        child,
        url,
    }
}

fn signal(node: &Node, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {}", node.name);
}

/// A gauge of the node's `/metrics`, or `None` when it does not answer.
async fn gauge(http: &reqwest::Client, url: &str, name: &str) -> Option<u64> {
    let text = http
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (at most 60 s, then fails) until `ready` answers.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut ready: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = ready().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The index of the node among `candidates` that owns the shard.
async fn owner(http: &reqwest::Client, nodes: &[String], candidates: &[usize]) -> Option<usize> {
    for &i in candidates {
        if gauge(http, &nodes[i], "baton_lease_owner").await == Some(1) {
            return Some(i);
        }
    }
    None
}

fn world() -> World {
    let fields: Vec<&str> = emulator::DEFAULT_FIELDS.to_vec();
    let mut bot = AppConfig::new(BOT, BOT_SECRET)
        .with_fields(&fields)
        .may_take(true);
    let mut world = World::default();
    for page in PAGES {
        bot = bot.with_token(page, format!("page-token-{page}"));
        world = world.with_page(PageConfig::conversation_routing(page, BOT));
    }
    world.with_app(bot)
}

fn thread_of(n: usize) -> (&'static str, String) {
    let page = PAGES[n % PAGES.len()];
    let psid = format!(
        "{}{}",
        &page[page.len() - 2..],
        700_000 + (n / PAGES.len()) % THREADS_PER_PAGE
    );
    (page, psid)
}

/// What the load saw: acknowledged webhooks (page, psid, mid) and sends
/// (idempotency key → text) that a node answered 200.
#[derive(Default)]
struct Seen {
    acked: Vec<(String, String, String)>,
    sent: BTreeMap<String, String>,
    refused_or_gone: usize,
    /// Control calls answered 200, and refused after a retry (an earlier
    /// attempt whose answer was lost had taken effect).
    controlled: usize,
    control_refused: usize,
    /// The threads whose control moved, and how many times the bot passed
    /// each to the Page Inbox and took it back.
    control_threads: BTreeMap<(String, String), usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_a_kill_and_a_freeze_without_losing_or_repeating_anything() {
    if store_under_test() != StoreKind::Postgres {
        report("cluster: needs a store the nodes share; it runs in system-postgres");
        return;
    }
    // Kept when the test fails, for the nodes' logs; removed when it passes.
    let dir = tempfile::tempdir().unwrap().keep();
    eprintln!("cluster: nodes' logs in {}", dir.display());
    let database = postgres_config(dir.as_path()).url;
    let emulator = Emulator::start(world()).expect("emulator starts");
    let ctl = emulator.control();
    // Baton's nodes run on the system clock: the emulator's goes with it, so
    // that the messaging window is open for the sends.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    ctl.set_clock(now_ms).await.unwrap();
    let backend = Backend::start();
    let mut nodes: Vec<Node> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|name| {
            let config = node_config(dir.as_path(), name, &emulator.base_url(), &backend.url);
            spawn(name, &config, &database)
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let http = reqwest::Client::new();
    let first = until("one node owns the shard", || {
        owner(&http, &urls, &[0, 1, 2])
    })
    .await;

    // The load: webhooks to the live nodes in turn, sends through them.
    let live: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(urls.clone()));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = {
        let (live, seen, ctl, http, retries) = (
            live.clone(),
            seen.clone(),
            ctl.clone(),
            http.clone(),
            retries.clone(),
        );
        tokio::spawn(async move {
            for n in 0..MESSAGES {
                let (page, psid) = thread_of(n);
                let url = {
                    let live = live.lock().unwrap();
                    live[n % live.len()].clone()
                };
                ctl.set_callback(BOT, Some(&format!("{url}/webhooks/{BOT}")))
                    .await
                    .unwrap();
                let result = ctl.user_text(page, &psid, &format!("m{n}")).await.unwrap();
                let mid = result.mid.clone().unwrap();
                if result.deliveries.iter().any(|d| d.ok) {
                    let mut seen = seen.lock().unwrap();
                    seen.acked.push((page.to_owned(), psid.clone(), mid));
                } else {
                    seen.lock().unwrap().refused_or_gone += 1;
                }
                if n % SEND_EVERY == 1 {
                    // The bot hands the thread to the Page Inbox and takes
                    // it back, through the live nodes in turn.
                    *seen
                        .lock()
                        .unwrap()
                        .control_threads
                        .entry((page.to_owned(), psid.clone()))
                        .or_default() += 1;
                    for (edge, body) in [
                        (
                            "pass_thread_control",
                            json!({"recipient": {"id": psid}, "target_app_id": PAGE_INBOX}),
                        ),
                        ("take_thread_control", json!({"recipient": {"id": psid}})),
                    ] {
                        let mut attempt = 0;
                        let status = until(&format!("{edge} on m{n} is answered"), || {
                            attempt += 1;
                            let url = {
                                let live = live.lock().unwrap();
                                live[(n + attempt) % live.len()].clone()
                            };
                            let (http, body, retries) =
                                (http.clone(), body.clone(), retries.clone());
                            async move {
                                let res = http
                                    .post(format!("{url}/v21.0/{page}/{edge}"))
                                    .bearer_auth("baton-bot")
                                    .json(&body)
                                    .timeout(Duration::from_secs(20))
                                    .send()
                                    .await
                                    .ok()?;
                                if res.status() == 503 {
                                    retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    return None;
                                }
                                let status = res.status().as_u16();
                                Some((status, attempt, res.text().await.unwrap_or_default()))
                            }
                        })
                        .await;
                        let mut seen = seen.lock().unwrap();
                        match status {
                            (200, _, _) => seen.controlled += 1,
                            // Only a retry may find its call already done
                            // (Meta's refusal: the bot no longer, or
                            // already, controls the thread).
                            (400, attempts, _) if attempts > 1 => seen.control_refused += 1,
                            (other, attempts, body) => {
                                panic!("{edge} on m{n}: {other} at attempt {attempts}: {body}")
                            }
                        }
                    }
                }
                if n % SEND_EVERY == SEND_EVERY - 1 {
                    let key = format!("reply-{n}");
                    let text = format!("reply to m{n}");
                    let body = json!({
                        "recipient": {"id": psid},
                        "messaging_type": "RESPONSE",
                        "message": {"text": text},
                    });
                    until(&format!("{key} is answered"), || {
                        let url = {
                            let live = live.lock().unwrap();
                            live[(n / SEND_EVERY) % live.len()].clone()
                        };
                        let (http, body, key, retries) =
                            (http.clone(), body.clone(), key.clone(), retries.clone());
                        async move {
                            let res = http
                                .post(format!("{url}/v21.0/{page}/messages"))
                                .bearer_auth("baton-bot")
                                .header("Idempotency-Key", &key)
                                .json(&body)
                                .timeout(Duration::from_secs(20))
                                .send()
                                .await
                                .ok()?;
                            if res.status() == 200 {
                                return Some(());
                            }
                            // 503 while the lease moves, in Meta's shape:
                            // retried with the same key.
                            assert_eq!(
                                res.status(),
                                503,
                                "{key}: {}",
                                res.text().await.unwrap_or_default()
                            );
                            retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            None
                        }
                    })
                    .await;
                    seen.lock().unwrap().sent.insert(key, text);
                }
                progress_tx.send_replace(n + 1);
            }
        })
    };

    // Fault 1: the owner dies (SIGKILL) a third of the way in.
    progress.wait_for(|n| *n >= MESSAGES / 3).await.unwrap();
    live.lock().unwrap().retain(|u| *u != urls[first]);
    let killed_at = Instant::now();
    nodes[first].child.kill().unwrap();
    nodes[first].child.wait().unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let second = until("another node takes over from the killed one", || {
        owner(&http, &urls, &others)
    })
    .await;
    let after_kill = killed_at.elapsed();
    eprintln!(
        "cluster: {} owns after the kill, in {after_kill:?}",
        nodes[second].name
    );

    // Fault 2: the new owner freezes (SIGSTOP) two thirds of the way in,
    // until its lease lapses and the last node takes over; then it thaws.
    progress.wait_for(|n| *n >= 2 * MESSAGES / 3).await.unwrap();
    live.lock().unwrap().retain(|u| *u != urls[second]);
    let frozen_at = Instant::now();
    signal(&nodes[second], "-STOP");
    let third = [others.iter().copied().find(|i| *i != second).unwrap()];
    until("the last node takes over from the frozen one", || {
        owner(&http, &urls, &third)
    })
    .await;
    let after_freeze = frozen_at.elapsed();
    // A webhook reaches the frozen node: it waits in the socket, and the node
    // handles it when it thaws, still believing it owns the shard unless its
    // lease keeper looked first. Either it is refused (the database fences
    // the old epoch) or recorded as a follower's: both are right.
    let (page, psid) = thread_of(0);
    let late = {
        let (http, url) = (http.clone(), urls[second].clone());
        let body = envelope(json!([{
            "id": page, "time": now_ms,
            "messaging": [message_item(&psid, "m.frozen", now_ms)]
        }]));
        tokio::spawn(async move {
            post_signed(&http, &url, BOT, BOT_SECRET, &body)
                .await
                .map(|r| r.status().as_u16())
        })
    };
    eprintln!(
        "cluster: {} owns after the freeze, in {after_freeze:?}",
        nodes[third[0]].name
    );
    signal(&nodes[second], "-CONT");
    let late = late.await.unwrap().unwrap();
    if late == 200 {
        seen.lock()
            .unwrap()
            .acked
            .push((page.to_owned(), psid.clone(), "m.frozen".to_owned()));
    }
    let epoch = gauge(&http, &urls[third[0]], "baton_lease_epoch")
        .await
        .unwrap();
    until("the thawed node is a follower of the new epoch", || {
        let (http, url) = (http.clone(), urls[second].clone());
        async move {
            let owner = gauge(&http, &url, "baton_lease_owner").await?;
            let seen = gauge(&http, &url, "baton_lease_epoch").await?;
            (owner == 0 && seen == epoch).then_some(())
        }
    })
    .await;
    let fenced = gauge(&http, &urls[second], "baton_fenced_appends_total")
        .await
        .unwrap();
    eprintln!("cluster: {} thawed, a follower", nodes[second].name);
    live.lock().unwrap().push(urls[second].clone());
    load.await.unwrap();
    eprintln!("cluster: the load is done");

    // Dispatch catches up: every acknowledged item reaches the backend.
    let Seen {
        acked,
        sent,
        refused_or_gone,
        controlled,
        control_refused,
        control_threads,
    } = std::mem::take(&mut *seen.lock().unwrap());
    backend.wait_for_distinct(acked.len()).await;

    // Every acknowledged webhook is in the log exactly once; the chain verifies.
    let store = event_log::PgStore::connect(event_log::PgStoreConfig::new(database.clone()))
        .await
        .unwrap();
    let (records, facts) = verified_message_facts(&store).await;
    for (page, _, mid) in &acked {
        assert_eq!(
            facts.get(&format!("{page}:mid:{mid}")),
            Some(&1),
            "acknowledged {mid} must be recorded exactly once"
        );
    }

    // No owner wrote after its lease moved on: each epoch's records all
    // come before the next epoch's (the database refused the rest).
    let epochs = event_log::postgres::testing::TestServer::shared()
        .unwrap()
        .psql(
            database.rsplit('/').next().unwrap(),
            "SELECT epoch, min(position), max(position) FROM event_log_records \
             WHERE epoch IS NOT NULL GROUP BY epoch ORDER BY epoch",
        )
        .unwrap();
    let epochs: Vec<(u64, u64, u64)> = epochs
        .lines()
        .map(|l| {
            let f: Vec<u64> = l.split('|').map(|x| x.parse().unwrap()).collect();
            (f[0], f[1], f[2])
        })
        .collect();
    assert!(epochs.len() >= 3, "three owners wrote: {epochs:?}");
    for pair in epochs.windows(2) {
        assert!(
            pair[0].2 < pair[1].1,
            "epoch {} wrote at {} after epoch {} began at {}",
            pair[0].0,
            pair[0].2,
            pair[1].0,
            pair[1].1
        );
    }

    // Order per thread at the backend: each thread's mids arrive (first
    // arrivals) in the order the person wrote them.
    let written: BTreeMap<String, Vec<String>> =
        acked
            .iter()
            .fold(BTreeMap::new(), |mut by_thread, (_, psid, mid)| {
                by_thread
                    .entry(psid.clone())
                    .or_insert_with(Vec::new)
                    .push(mid.clone());
                by_thread
            });
    let arrived = backend.per_thread();
    for (psid, mids) in &written {
        let got: Vec<&String> = arrived[psid].iter().filter(|m| mids.contains(m)).collect();
        let want: Vec<&String> = mids.iter().collect();
        assert_eq!(got, want, "thread {psid}: order at the backend");
    }

    // No send reached Meta twice; every answered send reached it.
    let calls = ctl.calls().await.unwrap();
    let mut texts: BTreeMap<String, usize> = BTreeMap::new();
    for call in calls
        .iter()
        .filter(|c| c.endpoint == "messages" && c.status == 200)
    {
        if let Some(text) = call.params["message"]["text"].as_str() {
            *texts.entry(text.to_owned()).or_default() += 1;
        }
    }
    for text in sent.values() {
        assert_eq!(
            texts.get(text),
            Some(&1),
            "{text:?} reached Meta exactly once"
        );
    }
    assert!(
        texts.values().all(|n| *n == 1),
        "no send reached Meta twice: {texts:?}"
    );

    // The control calls under load reached Meta exactly as made: on each
    // thread, one pass and one take per step, in order, none lost and none
    // twice; and they left Baton's ledger where Meta is: every thread the
    // bot passed and took back is the bot's at both.
    let mut at_meta: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for call in calls.iter().filter(|c| c.status == 200) {
        let edge = match call.endpoint.as_str() {
            "pass_thread_control" => "pass",
            "take_thread_control" => "take",
            _ => continue,
        };
        let psid = call.params["recipient"]["id"].as_str().unwrap_or_default();
        let page = call.page_id.clone().unwrap_or_default();
        at_meta
            .entry((page, psid.to_owned()))
            .or_default()
            .push(edge);
    }
    for (thread, steps) in &control_threads {
        let want: Vec<&str> = ["pass", "take"].repeat(*steps);
        assert_eq!(
            at_meta.get(thread),
            Some(&want),
            "{thread:?}: control calls at Meta"
        );
    }
    assert_eq!(at_meta.len(), control_threads.len());
    for (page, psid) in control_threads.keys() {
        let at_meta = ctl.thread(page, psid).await.unwrap().owner;
        assert_eq!(at_meta.as_deref(), Some(BOT), "{page}/{psid} at Meta");
        let url = live.lock().unwrap()[0].clone();
        until(
            &format!("Baton's ledger of {page}/{psid} says the bot owns it"),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let thread: serde_json::Value = http
                        .get(format!("{url}/api/threads/{page}/{psid}"))
                        .bearer_auth(ADMIN_TOKEN)
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    (thread["owner"] == BOT).then_some(())
                }
            },
        )
        .await;
    }
    let control_at_meta = calls
        .iter()
        .filter(|c| c.endpoint.ends_with("_thread_control") && c.status == 200)
        .count();

    let distinct: BTreeSet<&String> = acked.iter().map(|(_, _, m)| m).collect();
    report(&format!(
        "cluster: 3 nodes, {} pages, {MESSAGES} messages: {} acknowledged (each recorded once), \
         {refused_or_gone} not acknowledged (node gone or lease moving), {} records, chain verified; \
         backend got {} distinct items in order per thread; {} sends answered, each at Meta once; \
         {controlled} control calls answered 200 ({control_refused} refused on a retry, their first attempt done), \
         {control_at_meta} at Meta (on each thread pass, take, … in order, none twice), \
         {} threads' owner the same at Meta and in Baton's ledger; \
         {} answers 503 on the way, retried (sends with the same key); \
         lease {LEASE_MS} ms: new owner {:.2} s after kill -9, {:.2} s after SIGSTOP; \
         the thawed node's appends refused as stale: {fenced}, its late webhook answered {late}; \
         records per epoch (epoch, first, last position): {epochs:?}",
        PAGES.len(),
        acked.len(),
        records.len(),
        distinct.len(),
        sent.len(),
        control_threads.len(),
        retries.load(std::sync::atomic::Ordering::Relaxed),
        after_kill.as_secs_f64(),
        after_freeze.as_secs_f64(),
    ));

    for node in &mut nodes {
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A text send's body.
fn hi() -> serde_json::Value {
    json!({"recipient": {"id": "u1"}, "message": {"text": "hi"}})
}

/// Sends `request` and answers its status and JSON body; a 503 must carry
/// `Retry-After: 1`.
pub(crate) async fn answer(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    if status == 503 {
        assert_eq!(res.headers()["retry-after"], "1");
    }
    (status, res.json().await.unwrap())
}

/// A node of a two-node cluster on the database of `dir`, in this process.
async fn node_in_process(dir: &Path, name: &str) -> server::Running<event_log::PgStore> {
    let store = event_log::PgStore::connect(postgres_config(dir))
        .await
        .unwrap();
    let config = Config::parse(
        &config_toml("http://127.0.0.1:9", &cr_mode()),
        "node.toml",
        |_| None,
    )
    .unwrap();
    start_in_process(config, store, name).await
}

/// Starts `config` on `store` as the node `name`, in this process, on the
/// test's clock.
pub(crate) async fn start_in_process(
    config: Config,
    store: event_log::PgStore,
    name: &str,
) -> server::Running<event_log::PgStore> {
    let cluster = server::Cluster {
        // Long: while an owner is down, its lease stays live for the test.
        lease: Duration::from_secs(60),
        advertise_url: None,
        node_id: Some(name.to_owned()),
    };
    let clock = Arc::new(ManualClock::new(T0));
    server::start_leased(config, Arc::new(store), clock, cluster)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_routes_to_the_owner_and_refuses_in_the_callers_shape_when_it_cannot() {
    if store_under_test() != StoreKind::Postgres {
        report("cluster: needs a store the nodes share; it runs in system-postgres");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let owner = node_in_process(dir.path(), "node-a").await;
    let follower = node_in_process(dir.path(), "node-b").await;
    assert!(owner.state.baton.is_owner());
    assert!(!follower.state.baton.is_owner());
    let http = reqwest::Client::new();
    let (a, b) = (owner.base_url(), follower.base_url());

    // A webhook is recorded by whichever node Meta reaches.
    let body = envelope(json!([{"id": PAGE, "time": T0.millis(),
        "messaging": [message_item("u1", "m.1", T0.millis())]}]));
    let res = post_signed(&http, &b, BOT, BOT_SECRET, &body)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Baton's API, asked of the follower, is the owner's answer, once the
    // owner has folded the follower's record.
    let head = owner.state.baton.store.head().await.unwrap().position;
    owner.state.baton.projections.wait_for(head).await;
    let projections = |base: String| {
        let http = http.clone();
        async move {
            let res = http
                .get(format!("{base}/api/admin/projections"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.json::<serde_json::Value>().await.unwrap()
        }
    };
    assert_eq!(projections(b.clone()).await, projections(a.clone()).await);
    // A bad token is refused by the owner, in Meta's shape, through the follower.
    let (status, error) = answer(
        http.post(format!("{b}/v21.0/me/messages"))
            .bearer_auth("not-a-token")
            .json(&hi()),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], 190, "{error}");
    // A body the follower reads before routing it meets the handlers'
    // limits: too large, the owner's 413 in Meta's shape; one that never
    // comes, cut off by the follower in each surface's shape.
    let (status, error) = answer(
        http.post(format!("{b}/v21.0/me/messages"))
            .bearer_auth("baton-bot")
            .body(vec![b' '; 70_000]),
    )
    .await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (413, &json!(100)),
        "{error}"
    );
    for (path, shape) in [
        ("/v21.0/me/messages", "graph"),
        ("/api/sends/check", "baton"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer baton-bot\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        );
        let (status, body) = crate::hostile::raw(follower.addr, head.as_bytes()).await;
        assert_eq!(status, 408, "{path}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        match shape {
            "graph" => assert_eq!(body["error"]["code"], 2, "{path}: {body}"),
            _ => assert_eq!(body["error"], "body_timeout", "{path}: {body}"),
        }
    }

    // A request already routed once is not routed again.
    let request = http
        .get(format!("{b}/api/admin/projections"))
        .bearer_auth(ADMIN_TOKEN)
        .header(server::routing::ROUTED, "node-x");
    let (status, error) = answer(request).await;
    assert_eq!(status, 503);
    assert_eq!(error["error"], "owner_unavailable", "{error}");

    // The owner dies; its lease is still live. The follower still records
    // webhooks, and answers everything else 503 in the caller's shape.
    owner.crash().await;
    let body = envelope(json!([{"id": PAGE, "time": T0.millis(),
        "messaging": [message_item("u1", "m.2", T0.millis())]}]));
    let res = post_signed(&http, &b, BOT, BOT_SECRET, &body)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, error) = answer(
        http.post(format!("{b}/v21.0/me/messages"))
            .bearer_auth("baton-bot")
            .json(&hi()),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(error["error"]["code"], 2, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{error}"
    );
    let (status, error) = answer(
        http.get(format!("{b}/api/threads/{PAGE}/u1"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(error["error"], "owner_unavailable", "{error}");
    // Its own health and metrics are its own.
    let res = http.get(format!("{b}/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("baton_lease_owner 0"));
    follower.stop().await;
}
