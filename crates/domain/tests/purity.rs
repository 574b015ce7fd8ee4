//! The domain crate must stay pure: this test reads `cargo metadata` and fails
//! if the crate's normal (non-dev) dependency closure reaches an I/O, async or
//! randomness crate.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "sled",
    "reqwest",
    "rand",
    "mio",
    "hyper",
    "async-std",
];

fn forbidden(name: &str) -> bool {
    FORBIDDEN.contains(&name) || name.starts_with("actix") || name.starts_with("rand_")
}

#[test]
fn domain_depends_on_no_io_async_or_randomness_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            manifest,
        ])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = names
        .iter()
        .find(|(_, name)| **name == "domain")
        .map(|(id, _)| *id)
        .expect("domain is in the workspace");

    // Walk normal and build dependencies only: dev-dependencies (proptest pulls
    // in rand) never reach a consumer of the crate.
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let runtime = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if runtime {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    let closure: BTreeSet<&str> = seen.iter().map(|id| names[id]).collect();
    let bad: Vec<&&str> = closure.iter().filter(|n| forbidden(n)).collect();
    assert!(
        bad.is_empty(),
        "the domain crate must stay pure, but its dependency closure contains {bad:?} (closure: {closure:?})"
    );
    assert!(
        closure.contains("serde"),
        "sanity: the walk found the real dependencies: {closure:?}"
    );
}
