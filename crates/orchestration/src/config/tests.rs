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
