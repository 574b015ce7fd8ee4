//! The `baton` binary on PostgreSQL (`store = { postgres = … }`, the URL in
//! `BATON_DATABASE_URL`), against a real throwaway server
//! (`event_log::postgres::testing::TestServer`): `migrate` applies the
//! schema once, `serve` runs on it, and `verify`, `export`, `replay`,
//! `audit` and `checkpoint` answer exactly as they do for the same log on
//! sled.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use event_log::postgres::testing::TestServer;
use event_log::{EventStore, PgStore};
use test_support::{ADMIN_TOKEN, BOT, BOT_SECRET, PAGE, T0};

const URL_ENV: &str = "BATON_DATABASE_URL";
const STORE: &str = r#"store = { postgres = { url = { env = "BATON_DATABASE_URL" } } }"#;

/// Runs `baton` with `BATON_DATABASE_URL` set to `url` (when given).
fn baton(url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .args(args)
        .env_remove(URL_ENV)
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_ADMIN_TOKEN");
    if let Some(url) = url {
        command.env(URL_ENV, url);
    }
    command.output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn all(out: &Output) -> String {
    format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// `text` with its `data_dir` line pointing at `dir`, and `store` set to
/// PostgreSQL.
fn on_postgres(text: &str, dir: &Path) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("data_dir") {
                format!("data_dir = {:?}", dir.display().to_string())
            } else {
                l.to_owned()
            }
        })
        .collect();
    format!("{STORE}\n{}\n", lines.join("\n"))
}

/// A fresh database on the shared server, and a temporary directory with
/// the test configuration moved to it (`baton.toml`): server, URL,
/// directory, configuration file.
fn a_node_on_a_new_database() -> (
    &'static TestServer,
    String,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let server = TestServer::shared().unwrap();
    let url = server.create_database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = on_postgres(
        &test_support::BatonToml::new("http://127.0.0.1:9").render(),
        dir.path(),
    );
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, text).unwrap();
    (server, url, dir, config)
}

#[test]
fn migrate_applies_the_schema_once_and_says_so() {
    let (server, url, dir, config) = a_node_on_a_new_database();
    let config = config.to_str().unwrap();
    let database = url.rsplit('/').next().unwrap().to_owned();

    // An offline command pointed at a database without the schema refuses,
    // naming `baton migrate`, and creates nothing there.
    let out = baton(Some(&url), &["verify", "--config", config]);
    assert_ne!(code(&out), 0, "{}", all(&out));
    assert!(
        all(&out).contains("version 0, older than this build needs")
            && all(&out).contains("run `baton migrate` first"),
        "{}",
        all(&out)
    );
    let tables = server
        .psql(
            &database,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        )
        .unwrap();
    assert_eq!(tables.trim(), "0", "nothing created");

    let out = baton(Some(&url), &["migrate", "--config", config]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(
        stdout(&out)
            .contains("applied 4 migration(s) to the PostgreSQL database of $BATON_DATABASE_URL"),
        "{}",
        all(&out)
    );
    let out = baton(Some(&url), &["migrate", "--config", config]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(stdout(&out).contains("up to date"), "{}", all(&out));
    let tables = server
        .psql(
            url.rsplit('/').next().unwrap(),
            "SELECT count(*) FROM event_log_migrations",
        )
        .unwrap();
    assert_eq!(tables.trim(), "4");

    // The URL comes from the environment: without it, a usage error naming it.
    let out = baton(None, &["migrate", "--config", config]);
    assert_eq!(code(&out), 2, "{}", all(&out));
    assert!(
        all(&out)
            .contains("store.postgres.url: environment variable BATON_DATABASE_URL is not set"),
        "{}",
        all(&out)
    );
    // A server that is not there: an error, no panic, no password shown.
    let gone = "postgres://baton:hunter2@127.0.0.1:1/nothing";
    let out = baton(Some(gone), &["migrate", "--config", config]);
    assert_eq!(code(&out), 2, "{}", all(&out));
    assert!(!all(&out).contains("hunter2"), "{}", all(&out));

    // On sled there is nothing to migrate.
    let sled = dir.path().join("sled.toml");
    std::fs::write(
        &sled,
        test_support::BatonToml::new("http://127.0.0.1:9")
            .data_dir(dir.path())
            .render(),
    )
    .unwrap();
    let out = baton(None, &["migrate", "--config", sled.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(stdout(&out).contains("nothing to migrate"), "{}", all(&out));
}

#[test]
fn serve_runs_on_postgres_and_the_offline_commands_read_it() {
    let (server, url, dir, config) = a_node_on_a_new_database();
    let config = config.to_str().unwrap();

    let mut serve = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--config", config])
        .env(URL_ENV, &url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("baton listening on ")
        .unwrap_or_else(|| panic!("baton serve says where it listens: {line:?}"))
        .to_owned();
    let rt = test_support::runtime();
    let live: serde_json::Value = rt.block_on(async {
        let http = reqwest::Client::new();
        for (n, psid) in ["u1", "u2", "u1"].iter().enumerate() {
            let body = test_support::envelope(serde_json::json!([{
                "id": PAGE, "time": T0.millis(),
                "messaging": [test_support::message_item(psid, &format!("m.{n}"), T0.millis())]
            }]));
            let res = http
                .post(format!("{base}/webhooks/{BOT}"))
                .header("content-type", "application/json")
                .header(
                    "x-hub-signature-256",
                    wire::signature::sign_sha256(BOT_SECRET.as_bytes(), &body),
                )
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
        }
        http.get(format!("{base}/api/admin/projections"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let killed = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(serve.wait().unwrap().success(), "baton serve stops cleanly");

    let position = live["position"].as_u64().unwrap();
    assert!(position >= 3, "{live}");
    let out = baton(Some(&url), &["verify", "--config", config]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!(
            "ok: {position} records checked in the event log in PostgreSQL (shard 0 of $BATON_DATABASE_URL)"
        )),
        "{}",
        all(&out)
    );
    let out = baton(Some(&url), &["replay", "--config", config, "--json"]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let replay: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(replay["digest"], live["digest"], "replay equals live");
    // The content keys are in the database, not in `data_dir`.
    assert!(!dir.path().join("vault").exists());
    let keys = server
        .psql(
            url.rsplit('/').next().unwrap(),
            "SELECT count(*) FROM event_log_keys",
        )
        .unwrap();
    assert!(keys.trim().parse::<u32>().unwrap() > 0, "keys: {keys}");
}

/// The same log on sled and on PostgreSQL (the demo's, imported record for
/// record, with its keys): every read command prints the same thing but
/// for the name of the store.
#[test]
fn the_read_commands_answer_alike_on_sled_and_on_postgres() {
    let server = TestServer::shared().unwrap();
    let url = server.create_database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sled_dir = dir.path().join("demo");
    let out = baton(None, &["demo", "--data-dir", sled_dir.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let sled_config = sled_dir.join("baton.toml");

    // Import the demo's log into PostgreSQL, and its keys into the
    // database's keys table.
    let pg_dir = dir.path().join("pg");
    std::fs::create_dir_all(&pg_dir).unwrap();
    let export = dir.path().join("demo.ndjson");
    let out = baton(
        None,
        &[
            "export",
            "--data-dir",
            sled_dir.to_str().unwrap(),
            "--out",
            export.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 0, "{}", all(&out));
    let rt = test_support::runtime();
    rt.block_on(async {
        let store = PgStore::connect(event_log::PgStoreConfig::new(url.clone()))
            .await
            .unwrap();
        let file = std::io::BufReader::new(std::fs::File::open(&export).unwrap());
        event_log::import_ndjson(&store, file).await.unwrap();
        let keys = event_log::KeyVault::open(&sled_dir.join("log").join("vault")).unwrap();
        assert!(store.import_keys(&keys).await.unwrap() > 0);
        assert!(store.head().await.unwrap().position > 0);
        store.close().await;
    });
    let pg_config = pg_dir.join("baton.toml");
    std::fs::write(
        &pg_config,
        on_postgres(&std::fs::read_to_string(&sled_config).unwrap(), &pg_dir),
    )
    .unwrap();

    let sled_name = format!("the event log in {}", sled_dir.join("log").display());
    let pg_name = "the event log in PostgreSQL (shard 0 of $BATON_DATABASE_URL)";
    let both = |args: &[&str]| {
        let run = |config: &Path| {
            let mut full: Vec<&str> = args.to_vec();
            full.extend(["--config", config.to_str().unwrap()]);
            let out = baton(Some(&url), &full);
            assert_eq!(code(&out), 0, "baton {full:?}: {}", all(&out));
            stdout(&out)
        };
        let on_sled = run(&sled_config).replace(&sled_name, "LOG");
        let on_pg = run(&pg_config).replace(pg_name, "LOG");
        assert_eq!(on_sled, on_pg, "baton {args:?} differs between the stores");
        on_pg
    };
    assert!(both(&["verify"]).contains("ok: "));
    both(&["verify", "--json"]);
    assert!(both(&["replay"]).contains("self-check    ok"));
    both(&["replay", "--json"]);
    assert!(both(&["audit", "sends"]).contains("accepted"));
    both(&["audit", "sends", "--json"]);
    both(&["audit", "sends", "--refused", "--json"]);
    // Exported bytes are the same, content notes included (the keys came along).
    let pg_export = dir.path().join("pg.ndjson");
    let out = baton(
        Some(&url),
        &[
            "export",
            "--config",
            pg_config.to_str().unwrap(),
            "--out",
            pg_export.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert_eq!(
        std::fs::read(&export).unwrap(),
        std::fs::read(&pg_export).unwrap(),
        "the export of the imported log is the sled export, byte for byte"
    );
    // A checkpoint of the PostgreSQL log goes under its data directory.
    let key = dir.path().join("baton.key");
    let out = baton(None, &["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let out = baton(
        Some(&url),
        &[
            "checkpoint",
            "--config",
            pg_config.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(pg_dir.join("checkpoints").is_dir(), "{}", all(&out));
}
