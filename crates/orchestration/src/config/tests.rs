use super::*;

const GOOD: &str = r#"
listen = "127.0.0.1:0"
data_dir = "/tmp/baton"

[[pages]]
id = "5550001"
name = "Shop"
routing = { mode = "conversation_routing", default_app = "1001" }
apps = ["1001", "1002", "263902037430900"]

[[apps]]
id = "1001"
name = "Bot"
kind = "bot"
management = "managed"
may_take_control = true
app_secret = { env = "BOT_SECRET" }
verify_token = "verify-bot"
api_token = "baton-bot"
graph_base_url = "http://127.0.0.1:9"
backend_url = "http://127.0.0.1:10/webhook"
forward_secret = "bot-forward-secret"
page_tokens = { "5550001" = "page-token-bot" }

[[apps]]
id = "1002"
kind = "human"
management = "managed"
app_secret = "human-secret"
verify_token = "verify-human"
api_token = "baton-human"
graph_base_url = "http://127.0.0.1:9"
page_tokens = { "5550001" = "page-token-human" }

[[apps]]
id = "263902037430900"
name = "Page Inbox"
kind = "human"
management = "external"
"#;

fn env(name: &str) -> Option<String> {
    (name == "BOT_SECRET").then(|| "bot-secret-from-env".to_owned())
}

#[test]
fn a_good_file_parses_into_typed_pages_and_apps() {
    let c = Config::parse(GOOD, "good.toml", env).unwrap();
    let page = c.page(&PageId::parse("5550001").unwrap()).unwrap();
    assert_eq!(page.apps.len(), 3);
    let (_, bot) = c.managed(&AppId::parse("1001").unwrap()).unwrap();
    assert_eq!(bot.app_secret.expose(), "bot-secret-from-env");
    assert!(c.managed(&AppId::page_inbox()).is_none());
}

#[test]
fn the_subscription_watchdog_runs_hourly_unless_told_otherwise() {
    let c = Config::parse(GOOD, "good.toml", env).unwrap();
    assert_eq!(c.subscription_check_every_secs, 3600);
    let off = format!("subscription_check_every_secs = 0\n{GOOD}");
    let c = Config::parse(&off, "off.toml", env).unwrap();
    assert_eq!(c.subscription_check_every_secs, 0);
}

#[test]
fn secrets_never_reach_debug() {
    let c = Config::parse(GOOD, "good.toml", env).unwrap();
    let debug = format!("{c:?}");
    for secret in [
        "bot-secret-from-env",
        "human-secret",
        "page-token-bot",
        "baton-bot",
        "verify-bot",
        "bot-forward-secret",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug");
    }
}

#[track_caller]
fn fails_naming(text: &str, field: &str) {
    let err = Config::parse(text, "bad.toml", env)
        .unwrap_err()
        .to_string();
    assert!(err.contains(field), "error {err:?} does not name {field:?}");
}

#[test]
fn bad_files_fail_naming_the_field() {
    fails_naming(&GOOD.replace("127.0.0.1:0", "nowhere"), "listen");
    fails_naming(
        &GOOD.replace("{ env = \"BOT_SECRET\" }", "{ env = \"MISSING\" }"),
        "apps[0].app_secret",
    );
    fails_naming(
        &GOOD.replace("api_token = \"baton-human\"\n", ""),
        "apps[1].api_token",
    );
    fails_naming(
        &GOOD.replace("default_app = \"1001\"", "default_app = \"4242\""),
        "pages[0].routing.default_app",
    );
    fails_naming(
        &GOOD.replace("apps = [\"1001\", \"1002\"", "apps = [\"1001\", \"7777\""),
        "pages[0].apps[1]",
    );
    fails_naming(
        &GOOD.replace(
            "kind = \"human\"\nmanagement = \"managed\"",
            "kind = \"robot\"\nmanagement = \"managed\"",
        ),
        "kind",
    );
    fails_naming(
        &GOOD.replace("page_tokens = { \"5550001\" = \"page-token-human\" }", ""),
        "page_tokens",
    );
    fails_naming(
        &GOOD.replace("http://127.0.0.1:10/webhook", "ftp://x"),
        "apps[0].backend_url",
    );
    fails_naming(&format!("{GOOD}\nsurprise = 1\n"), "surprise");
    // Baton forwards with its own secret, never with Meta's app secret.
    fails_naming(
        &GOOD.replace("forward_secret = \"bot-forward-secret\"\n", ""),
        "apps[0].forward_secret",
    );
    fails_naming(
        &GOOD.replace("\"bot-forward-secret\"", "{ env = \"BOT_SECRET\" }"),
        "apps[0].forward_secret",
    );
    fails_naming(
        &GOOD.replace(
            "data_dir = \"/tmp/baton\"",
            "data_dir = \"/tmp/baton\"\nauditor_token = \"baton-bot\"",
        ),
        "auditor_token",
    );
    fails_naming(
        &GOOD.replace(
            "data_dir = \"/tmp/baton\"",
            "data_dir = \"/tmp/baton\"\nwebhook_source_networks = [\"10.0.0.0/99\"]",
        ),
        "webhook_source_networks",
    );
    fails_naming(
        &GOOD.replace("id = \"1002\"", "id = \"10 02\""),
        "apps[1].id",
    );
}

const PG_URL: &str = "postgres://baton:db-password@db.internal:5432/baton";

fn pg_env(name: &str) -> Option<String> {
    match name {
        "BATON_DATABASE_URL" => Some(PG_URL.to_owned()),
        "NOT_A_URL" => Some("mysql://baton@db/baton".to_owned()),
        "EMPTY" => Some(String::new()),
        other => env(other),
    }
}

/// `GOOD` with a top-level `store = …` line.
fn with_store(store: &str) -> String {
    format!("store = {store}\n{GOOD}")
}

#[test]
fn the_store_is_sled_unless_postgres_is_asked_for() {
    let c = Config::parse(GOOD, "good.toml", pg_env).unwrap();
    assert_eq!(c.store, StoreSetting::Sled);
    let c = Config::parse(&with_store("\"sled\""), "sled.toml", pg_env).unwrap();
    assert_eq!(c.store, StoreSetting::Sled);

    let text = with_store(r#"{ postgres = { url = { env = "BATON_DATABASE_URL" } } }"#);
    let c = Config::parse(&text, "pg.toml", pg_env).unwrap();
    let StoreSetting::Postgres(pg) = &c.store else {
        panic!("expected postgres, got {:?}", c.store)
    };
    assert_eq!(pg.url.expose(), PG_URL);
    assert_eq!(pg.url_env, "BATON_DATABASE_URL");
    assert_eq!(pg.shard, 0, "shard 0 unless given");
    assert!(
        !format!("{c:?}").contains("db-password"),
        "the database URL leaked into Debug"
    );

    let text = with_store(r#"{ postgres = { url = { env = "BATON_DATABASE_URL" }, shard = 3 } }"#);
    let c = Config::parse(&text, "pg.toml", pg_env).unwrap();
    assert!(matches!(
        c.store,
        StoreSetting::Postgres(PostgresSetting { shard: 3, .. })
    ));
}

#[test]
fn bad_store_settings_fail_naming_the_field_without_the_url() {
    let fails = |store: &str, field: &str, says: &str| {
        let err = Config::parse(&with_store(store), "bad.toml", pg_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "error {err:?} does not name {field:?}");
        assert!(err.contains(says), "error {err:?} does not say {says:?}");
        assert!(!err.contains("db-password"), "error {err:?} shows the URL");
    };
    // The URL holds the password: never in the file.
    fails(
        &format!(r#"{{ postgres = {{ url = "{PG_URL}" }} }}"#),
        "store.postgres.url",
        "environment",
    );
    fails(
        r#"{ postgres = { url = { env = "MISSING" } } }"#,
        "store.postgres.url",
        "MISSING is not set",
    );
    fails(
        r#"{ postgres = { url = { env = "EMPTY" } } }"#,
        "store.postgres.url",
        "EMPTY is not set",
    );
    fails(
        r#"{ postgres = { url = { env = "NOT_A_URL" } } }"#,
        "store.postgres.url",
        "postgres:// URL",
    );
    fails(
        r#"{ postgres = { url = { env = "BATON_DATABASE_URL" }, shard = -1 } }"#,
        "store.postgres.shard",
        "0 or more",
    );
    fails(
        r#"{ postgres = { url = { env = "BATON_DATABASE_URL" }, shards = 2 } }"#,
        "bad.toml",
        "shards",
    );
    fails(r#"{ postgres = { } }"#, "bad.toml", "url");
    fails(r#""mysql""#, "bad.toml", "mysql");
    fails(
        r#"{ postgres = { url = { env = "BATON_DATABASE_URL" }, lease_ms = 100 } }"#,
        "store.postgres.lease_ms",
        "between 300",
    );
    fails(
        r#"{ postgres = { url = { env = "BATON_DATABASE_URL" }, node_id = "" } }"#,
        "store.postgres.node_id",
        "printable",
    );
    fails(
        r#"{ postgres = { url = { env = "BATON_DATABASE_URL" }, advertise_url = "10.0.0.1:8080" } }"#,
        "store.postgres.advertise_url",
        "http://",
    );
}

#[test]
fn a_cluster_node_is_configured_with_its_id_address_and_lease() {
    let text = with_store(
        r#"{ postgres = { url = { env = "BATON_DATABASE_URL" }, node_id = "baton-a", advertise_url = "http://10.0.0.11:8080", lease_ms = 5000 } }"#,
    );
    let c = Config::parse(&text, "node.toml", pg_env).unwrap();
    let StoreSetting::Postgres(pg) = &c.store else {
        panic!("expected postgres, got {:?}", c.store)
    };
    assert_eq!(pg.node_id.as_deref(), Some("baton-a"));
    assert_eq!(pg.advertise_url.as_deref(), Some("http://10.0.0.11:8080"));
    assert_eq!(pg.lease_ms, 5000);
    let defaults = with_store(r#"{ postgres = { url = { env = "BATON_DATABASE_URL" } } }"#);
    let c = Config::parse(&defaults, "node.toml", pg_env).unwrap();
    assert!(matches!(
        c.store,
        StoreSetting::Postgres(PostgresSetting {
            lease_ms: 10_000,
            node_id: None,
            advertise_url: None,
            ..
        })
    ));

    // Listening on every address, the node cannot know which one the others
    // reach it at: it must say.
    let wildcard = defaults.replacen("listen = \"127.0.0.1:", "listen = \"0.0.0.0:", 1);
    assert_ne!(wildcard, defaults, "GOOD listens on 127.0.0.1");
    let err = Config::parse(&wildcard, "node.toml", pg_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("store.postgres.advertise_url"), "{err}");
    let advertised = wildcard.replace(
        "env = \"BATON_DATABASE_URL\" }",
        "env = \"BATON_DATABASE_URL\" }, advertise_url = \"http://10.0.0.11:8080\"",
    );
    Config::parse(&advertised, "node.toml", pg_env).unwrap();
}

/// `GOOD` with a second page, and a `shard` for each page when given.
fn two_pages(store: &str, shards: [Option<i32>; 2]) -> String {
    let second = r#"
[[pages]]
id = "5550002"
routing = { mode = "conversation_routing", default_app = "1001" }
apps = ["1001"]
"#;
    let mut text = with_store(store).replacen(
        "apps = [\"1001\", \"1002\", \"263902037430900\"]\n",
        &format!("apps = [\"1001\", \"1002\", \"263902037430900\"]\n{second}"),
        1,
    );
    text = text.replace(
        "page_tokens = { \"5550001\" = \"page-token-bot\" }",
        "page_tokens = { \"5550001\" = \"page-token-bot\", \"5550002\" = \"page-token-bot-2\" }",
    );
    for (id, shard) in ["5550001", "5550002"].iter().zip(shards) {
        if let Some(shard) = shard {
            text = text.replacen(
                &format!("id = \"{id}\"\n"),
                &format!("id = \"{id}\"\nshard = {shard}\n"),
                1,
            );
        }
    }
    text
}

#[test]
fn pages_spread_over_shards_leave_a_node_only_its_own() {
    let pg = |shard: i32| {
        format!(r#"{{ postgres = {{ url = {{ env = "BATON_DATABASE_URL" }}, shard = {shard} }} }}"#)
    };
    let page = |id: &str| PageId::parse(id.to_owned()).unwrap();

    // No page names a shard: the node's shard decides for every page.
    let c = Config::parse(&two_pages(&pg(3), [None, None]), "n.toml", pg_env).unwrap();
    assert_eq!(c.pages.len(), 2);
    assert!(c.elsewhere.is_empty());

    // Shard 1's node keeps page 2 and routes page 1 to shard 0, whose
    // tokens and retention it does not hold.
    let text = two_pages(&pg(1), [Some(0), Some(1)]);
    let c = Config::parse(&text, "n.toml", pg_env).unwrap();
    assert_eq!(c.pages.keys().collect::<Vec<_>>(), [&page("5550002")]);
    let elsewhere = &c.elsewhere[&page("5550001")];
    assert_eq!(elsewhere.shard, 0);
    assert_eq!(elsewhere.apps.len(), 3);
    let bot = c
        .managed(&AppId::parse("1001".to_owned()).unwrap())
        .unwrap()
        .1;
    assert_eq!(
        bot.page_tokens.keys().collect::<Vec<_>>(),
        [&page("5550002")]
    );
    assert!(!c.content_retention_days.contains_key(&page("5550001")));
    // And shard 0's the other way round.
    let c = Config::parse(&two_pages(&pg(0), [Some(0), Some(1)]), "n.toml", pg_env).unwrap();
    assert_eq!(c.pages.keys().collect::<Vec<_>>(), [&page("5550001")]);
    assert_eq!(c.elsewhere[&page("5550002")].shard, 1);

    let refused = |text: &str, field: &str, why: &str| {
        let err = Config::parse(text, "n.toml", pg_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains(field) && err.contains(why), "{err}");
    };
    // One page naming its shard makes every page name one.
    refused(
        &two_pages(&pg(0), [Some(0), None]),
        "pages.5550002.shard",
        "every page must",
    );
    refused(
        &two_pages(&pg(0), [Some(-1), Some(0)]),
        "pages[0].shard",
        "0 or more",
    );
    // The embedded log serves one node: it has no shards to spread pages over.
    refused(
        &two_pages("\"sled\"", [Some(0), Some(1)]),
        "pages[0].shard",
        "only on store = { postgres",
    );
}
