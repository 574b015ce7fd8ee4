//! The README's promise: `baton demo` leaves a log that `baton verify` and
//! `baton replay` accept, and an export of it with one changed byte fails
//! both with exit code 1 and the position.

use std::process::Command;

fn baton(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .output()
        .expect("baton runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_demo_log_verifies_replays_and_a_tampered_export_fails() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let data = data.to_str().unwrap();
    let (code, out) = baton(&["demo", "--data-dir", data]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("REFUSED 10/2018278"), "{out}");
    assert!(out.contains("Audit timeline"), "{out}");

    let config = format!("{data}/baton.toml");
    let (code, out) = baton(&["verify", "--data-dir", data]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = baton(&["replay", "--data-dir", data, "--config", &config]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("digest"), "{out}");

    let export = dir.path().join("demo.ndjson");
    let (code, out) = baton(&[
        "export",
        "--data-dir",
        data,
        "--out",
        export.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&export).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Change one byte inside the payload of the record at position 5.
    let line = &mut lines[4];
    let at = line.find("\"payload\"").expect("a payload") + 12;
    let mut bytes = line.clone().into_bytes();
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    *line = String::from_utf8(bytes).unwrap();
    let tampered = dir.path().join("tampered.ndjson");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let (code, out) = baton(&["verify", "--export", tampered.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("position 5"), "{out}");
    let (code, out) = baton(&["replay", "--export", tampered.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("position 5"), "{out}");
}
