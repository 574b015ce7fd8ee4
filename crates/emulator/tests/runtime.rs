//! The emulator starts and stops under every runtime Baton's tests use, and
//! as a process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use emulator::{AppConfig, Emulator, PageConfig, World};

fn world() -> World {
    World::default()
        .with_page(PageConfig::conversation_routing("1", "10"))
        .with_app(AppConfig::new("10", "s").with_token("1", "t"))
}

async fn smoke(emu: &emulator::EmulatorHandle) {
    let c = emu.control();
    c.user_text("1", "u", "hi").await.unwrap();
    let r = reqwest::get(format!(
        "{}/me/thread_owner?recipient=u&access_token=t",
        emu.graph_url()
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(c.clock().await.unwrap().now_ms, emulator::DEFAULT_EPOCH_MS);
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_thread_tokio() {
    let emu = Emulator::start(world()).unwrap();
    smoke(&emu).await;
    emu.stop().await;
}

#[tokio::test]
async fn current_thread_tokio() {
    let emu = Emulator::start(world()).unwrap();
    smoke(&emu).await;
    emu.stop().await;
}

#[actix_web::test]
async fn actix_runtime() {
    let emu = Emulator::start(world()).unwrap();
    smoke(&emu).await;
    drop(emu);
}

#[test]
fn world_parses_from_toml_and_json() {
    let toml = r#"
epoch_ms = 1000
[[pages]]
id = "1"
routing = { mode = "handover_v1", primary = "10", secondaries = ["20"] }
[[apps]]
id = "10"
secret = "s"
page_tokens = { "1" = "t" }
may_take = true
"#;
    let w = World::parse(toml).unwrap();
    assert_eq!(w.epoch_ms, 1000);
    assert_eq!(
        w.apps[0].subscribed_fields.len(),
        emulator::DEFAULT_FIELDS.len()
    );
    let json = serde_json::to_string(&w).unwrap();
    assert_eq!(World::parse(&json).unwrap(), w);
    assert!(!format!("{:?}", w.apps[0]).contains("\"s\""));
}

#[test]
fn binary_prints_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("world.json");
    std::fs::write(&cfg, serde_json::to_string(&world()).unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton-emulator"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::get(format!("http://{addr}/_emulator/clock"))
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200);
}

#[test]
fn the_documented_example_world_parses() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/emulator.md"
    ))
    .unwrap();
    let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let w = World::parse(&doc[start..end]).unwrap();
    assert_eq!(w.pages[0].link_routes["sales"], "222");
    assert!(w.apps[1].human_agent);
    assert_eq!(
        w.apps[1].data_deletion_url.as_deref(),
        Some("http://127.0.0.1:8080/meta/data_deletion/222")
    );
    assert_eq!(w.apps[0].data_deletion_url, None);
}

/// Started by hand with a world that does not pin `epoch_ms`, Meta's clock
/// is the wall clock (so windows behave as they would at Meta); a pinned
/// world or `--epoch-ms` keeps its start.
#[test]
fn the_binary_starts_on_the_wall_clock_unless_the_start_is_pinned() {
    let clock_of = |args: &[&str]| -> i64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_baton-emulator"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap()
            .to_string();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let now = rt.block_on(async {
            let v: serde_json::Value = reqwest::get(format!("http://{addr}/_emulator/clock"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["now_ms"].as_i64().unwrap()
        });
        child.kill().unwrap();
        child.wait().unwrap();
        now
    };
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let unpinned = clock_of(&[]);
    assert!((unpinned - wall).abs() < 60_000, "{unpinned} vs {wall}");
    assert_eq!(clock_of(&["--epoch-ms", "1000"]), 1000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("world.toml");
    std::fs::write(&cfg, "epoch_ms = 2000\n").unwrap();
    assert_eq!(clock_of(&["--config", cfg.to_str().unwrap()]), 2000);
}
