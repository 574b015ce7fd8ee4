//! Running Node.js tools from the system tests: a process with a time limit,
//! and `npm ci` of a pinned package set, installed once under the cargo
//! target directory (the SDK compatibility test and the console's browser
//! test).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs `cmd` to completion within `limit`, off the runtime's workers; on
/// timeout, kills it (by its id) and fails.
pub async fn run(mut cmd: Command, what: &str, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = child.id();
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(limit, waited).await {
        Ok(out) => out
            .expect("the waiting thread")
            .unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("{what} did not finish within {limit:?}");
        }
    }
}

/// Installs `src`'s package.json and package-lock.json with `npm ci` under
/// the cargo target directory, once per version of those two files, and
/// returns the `node_modules` directory. `check` looks at a fresh
/// installation before it is moved into place.
pub async fn npm_ci(name: &str, src: &Path, limit: Duration, check: impl FnOnce(&Path)) -> PathBuf {
    let read = |file: &str| {
        std::fs::read(src.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", src.join(file).display()))
    };
    let (package, lock) = (read("package.json"), read("package-lock.json"));
    let mut hasher = DefaultHasher::new();
    (&package, &lock).hash(&mut hasher);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let dir = base.join(format!("{:016x}", hasher.finish()));
    let modules = dir.join("node_modules");
    if dir.join(".installed").exists() {
        return modules;
    }
    std::fs::create_dir_all(&base).unwrap();
    // Installed aside, then moved into place whole: a run that stops half
    // way, or another test process installing at once, leaves no partial
    // installation behind.
    let staging = tempfile::Builder::new()
        .prefix("staging-")
        .tempdir_in(&base)
        .unwrap();
    std::fs::write(staging.path().join("package.json"), &package).unwrap();
    std::fs::write(staging.path().join("package-lock.json"), &lock).unwrap();
    let mut npm = Command::new("npm");
    npm.args([
        "ci",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
    ])
    .current_dir(staging.path());
    let out = run(npm, "npm ci", limit).await;
    assert!(
        out.status.success(),
        "`npm ci` could not install {} from the npm registry into {}: {}\n{}\n{}",
        src.join("package-lock.json").display(),
        staging.path().display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    check(&staging.path().join("node_modules"));
    std::fs::write(staging.path().join(".installed"), name).unwrap();
    if let Err(e) = std::fs::rename(staging.path(), &dir) {
        assert!(
            dir.join(".installed").exists(),
            "cannot move the packages into {}: {e}",
            dir.display()
        );
    }
    modules
}
