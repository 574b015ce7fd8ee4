//! Signed checkpoints through the public API: a log rewritten and re-hashed
//! passes the plain chain check but not its checkpoint; checkpoints signed
//! by another key, or edited, fail their signature; key files.

use event_log::{
    export_ndjson, import_ndjson, ndjson_line, parse_ndjson_line, verify, verify_anchored,
    verify_ndjson, verify_ndjson_anchored, write_checkpoint, Anchors, ChainFault, CheckpointError,
    CheckpointSigner, EventStore, Head, MemoryStore, NewRecord, PublicKey, Record,
    SignedCheckpoint, SledStore, VerifyError,
};

const AT: i64 = 1_700_000_000_000;

fn signer() -> CheckpointSigner {
    CheckpointSigner::from_seed(&[1; 32])
}

/// A log of 10 records on three streams.
async fn log<S: EventStore>(store: &S) {
    for n in 1..=10u32 {
        let record = NewRecord::new(
            format!("thread/p/{}", n % 3),
            "Tested",
            1,
            format!(r#"{{"n":{n}}}"#),
        );
        store.append(vec![record]).await.unwrap();
    }
}

async fn exported<S: EventStore>(store: &S) -> Vec<u8> {
    let mut out = Vec::new();
    export_ndjson(store, &mut out).await.unwrap();
    out
}

/// Rewrites the payload of the record at `position` in an NDJSON export and
/// recomputes its hash and every later `prev_hash` and `hash`, as someone
/// with write access to the file (but not the key) can.
fn rewrite_and_rehash(file: &[u8], position: u64, payload: &[u8]) -> Vec<u8> {
    let mut records: Vec<Record> = file
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| parse_ndjson_line(l).unwrap())
        .collect();
    let at = usize::try_from(position - 1).unwrap();
    records[at].payload = payload.to_vec();
    for i in at..records.len() {
        if i > 0 {
            records[i].prev_hash = records[i - 1].hash;
        }
        records[i].hash = records[i].compute_hash();
    }
    records
        .iter()
        .flat_map(|r| format!("{}\n", ndjson_line(r)).into_bytes())
        .collect()
}

fn head_at(file: &[u8], position: u64) -> Head {
    let line = file
        .split(|&b| b == b'\n')
        .nth(usize::try_from(position - 1).unwrap())
        .unwrap();
    let r = parse_ndjson_line(line).unwrap();
    Head {
        position: r.position,
        hash: r.hash,
    }
}

fn anchors<'a>(checkpoints: impl IntoIterator<Item = &'a SignedCheckpoint>) -> Anchors {
    Anchors::verified(checkpoints.into_iter().cloned(), &signer().public_key()).unwrap()
}

fn mismatch_at(result: Result<event_log::AnchoredReport, CheckpointError>) -> (u64, u64) {
    match result {
        Err(CheckpointError::Chain(VerifyError::Broken {
            position,
            fault: ChainFault::CheckpointMismatch { anchored, .. },
            ..
        })) => (position, anchored),
        other => panic!("expected a checkpoint mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rewritten_and_rehashed_log_passes_the_chain_but_fails_its_checkpoint() {
    let store = MemoryStore::new();
    log(&store).await;
    let file = exported(&store).await;
    let head = store.head().await.unwrap();
    let at_head = signer().sign(&head, AT);
    let at_6 = signer().sign(&head_at(&file, 6), AT);

    // The untouched export is anchored up to the head.
    let report = verify_ndjson_anchored(&file[..], &anchors([&at_head])).unwrap();
    assert_eq!((report.anchored_position(), report.unanchored()), (10, 0));
    assert_eq!(report.chain.head, head);
    let report = verify_anchored(&store, &anchors([&at_6])).await.unwrap();
    assert_eq!((report.anchored_position(), report.unanchored()), (6, 4));

    // Record 3 rewritten, everything after it re-hashed: the plain chain
    // check passes, as it did before checkpoints existed...
    let forged = rewrite_and_rehash(&file, 3, br#"{"n":"forged"}"#);
    assert_ne!(forged, file);
    assert_eq!(verify_ndjson(&forged[..]).unwrap().records, 10);
    // ...but the record at the checkpoint's position no longer carries the
    // signed hash. The failure names the checkpoint's position: all it can
    // tell is that a record in 1..=10 (or 1..=6) changed.
    assert_eq!(
        mismatch_at(verify_ndjson_anchored(&forged[..], &anchors([&at_head]))),
        (10, 0)
    );
    let both = anchors([&at_head, &at_6]);
    assert_eq!(
        mismatch_at(verify_ndjson_anchored(&forged[..], &both)),
        (6, 0)
    );
    let err = verify_ndjson_anchored(&forged[..], &both).unwrap_err();
    assert_eq!(err.position(), Some(6));
    assert!(err.to_string().contains("line 6"), "{err}");
    assert!(err.to_string().contains("signed checkpoint"), "{err}");

    // Imported into a sled store (the import checks the chain only), the
    // forged log passes `verify` and fails `verify_anchored` just the same.
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    import_ndjson(&sled, &forged[..]).await.unwrap();
    verify(&sled).await.unwrap();
    assert_eq!(mismatch_at(verify_anchored(&sled, &both).await), (6, 0));
    sled.close().await;

    // A record rewritten between two checkpoints is placed between them.
    let forged = rewrite_and_rehash(&file, 8, br#"{"n":"forged"}"#);
    assert_eq!(
        mismatch_at(verify_ndjson_anchored(&forged[..], &both)),
        (10, 6)
    );
}

/// What checkpoints do not detect, stated as tests so the docs stay true.
#[tokio::test]
async fn records_after_the_last_checkpoint_are_not_anchored() {
    let store = MemoryStore::new();
    log(&store).await;
    let file = exported(&store).await;
    let at_6 = signer().sign(&head_at(&file, 6), AT);

    // A rewrite after the last checkpoint, re-hashed, still passes: the
    // report says how many records are not anchored.
    let forged = rewrite_and_rehash(&file, 8, br#"{"n":"forged"}"#);
    let report = verify_ndjson_anchored(&forged[..], &anchors([&at_6])).unwrap();
    assert_eq!((report.anchored_position(), report.unanchored()), (6, 4));

    // Cutting records after the checkpoint passes too (compare the head with
    // the live one); cutting the checkpoint's own position does not.
    let lines: Vec<&[u8]> = file.split_inclusive(|&b| b == b'\n').collect();
    let cut_after = lines[..7].concat();
    let report = verify_ndjson_anchored(&cut_after[..], &anchors([&at_6])).unwrap();
    assert_eq!(report.chain.head.position, 7);
    let cut_before = lines[..5].concat();
    match verify_ndjson_anchored(&cut_before[..], &anchors([&at_6])) {
        Err(
            e @ CheckpointError::BeyondHead {
                position: 6,
                head: 5,
            },
        ) => assert_eq!(e.position(), Some(6)),
        other => panic!("expected BeyondHead, got {other:?}"),
    }

    // Anyone with the private key can sign the forged log.
    let forged = rewrite_and_rehash(&file, 3, br#"{"n":"forged"}"#);
    let forged_head = verify_ndjson(&forged[..]).unwrap().head;
    let resigned = signer().sign(&forged_head, AT);
    verify_ndjson_anchored(&forged[..], &anchors([&resigned])).unwrap();
}

#[tokio::test]
async fn a_checkpoint_signed_with_another_key_fails() {
    let store = MemoryStore::new();
    log(&store).await;
    let head = store.head().await.unwrap();
    let other = CheckpointSigner::from_seed(&[2; 32]);
    let signed = other.sign(&head, AT);
    let ours = signer().public_key();
    match signed.verify(&ours) {
        Err(CheckpointError::WrongKey {
            position: 10,
            signed_by,
            expected,
        }) => {
            assert_eq!(signed_by, other.key_id());
            assert_eq!(expected, ours.key_id());
        }
        other => panic!("expected WrongKey, got {other:?}"),
    }
    // Claiming our key id does not help: the signature is still another key's.
    let mut claimed = signed.clone();
    claimed.checkpoint.key_id = ours.key_id();
    assert!(matches!(
        claimed.verify(&ours),
        Err(CheckpointError::BadSignature { position: 10, .. })
    ));
    // A set with one bad checkpoint is refused whole.
    let good = signer().sign(&head, AT);
    let err = Anchors::verified([good, claimed], &ours).unwrap_err();
    assert_eq!(err.position(), Some(10));
}

#[test]
fn an_edited_checkpoint_fails_the_signature_check() {
    let key = signer().public_key();
    let head = Head {
        position: 10,
        hash: event_log::ChainHash([5; 32]),
    };
    let signed = signer().sign(&head, AT);
    signed.verify(&key).unwrap();

    type Edit = fn(&mut SignedCheckpoint);
    let edits: [(&str, Edit); 3] = [
        ("position", |s| s.checkpoint.position = 9),
        ("hash", |s| s.checkpoint.hash.0[31] ^= 1),
        ("time", |s| s.checkpoint.at_ms += 1),
    ];
    for (what, edit) in edits {
        let mut edited = signed.clone();
        edit(&mut edited);
        let err = edited.verify(&key).unwrap_err();
        assert!(
            matches!(err, CheckpointError::BadSignature { .. }),
            "{what}: {err:?}"
        );
    }
    // The same through the JSON form, as someone editing the file would.
    let json = signed.to_json();
    let edited = json.replace("\"position\": 10", "\"position\": 9");
    assert_ne!(edited, json);
    let err = SignedCheckpoint::from_json(edited.as_bytes())
        .unwrap()
        .verify(&key)
        .unwrap_err();
    assert!(matches!(
        err,
        CheckpointError::BadSignature { position: 9, .. }
    ));
    assert_eq!(err.position(), Some(9));
}

#[test]
fn key_files_are_private_refuse_overwriting_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton-checkpoint.key");
    let generated = CheckpointSigner::generate().unwrap();
    let public_path = generated.write_key_files(&path).unwrap();
    assert_eq!(public_path, dir.path().join("baton-checkpoint.key.pub"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let private = std::fs::read_to_string(&path).unwrap();
    assert_eq!(private.trim().len(), 64);

    let loaded = CheckpointSigner::from_file(&path).unwrap();
    let public = PublicKey::from_file(&public_path).unwrap();
    assert_eq!(loaded.public_key(), generated.public_key());
    assert_eq!(public, generated.public_key());
    // Two generated keys differ.
    assert_ne!(
        CheckpointSigner::generate().unwrap().public_key(),
        generated.public_key()
    );

    // Never overwritten, not even the public half alone.
    let again = CheckpointSigner::generate().unwrap();
    assert!(matches!(
        again.write_key_files(&path),
        Err(CheckpointError::KeyExists { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        again.write_key_files(&path),
        Err(CheckpointError::KeyExists { path: p }) if p == public_path
    ));
    assert!(!path.exists());

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let open = dir.path().join("open.key");
        std::fs::write(&open, private).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            CheckpointSigner::from_file(&open),
            Err(CheckpointError::KeyFileTooOpen { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o400)).unwrap();
        CheckpointSigner::from_file(&open).unwrap();
    }
}

#[test]
fn write_checkpoint_keeps_the_first_and_refuses_a_contradiction() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let head = Head {
        position: 7,
        hash: event_log::ChainHash([3; 32]),
    };
    let first = signer().sign(&head, AT);
    let path = write_checkpoint(&checkpoints, &first).unwrap();
    assert_eq!(path, checkpoints.join("7.json"));
    assert_eq!(SignedCheckpoint::read_file(&path).unwrap(), first);

    // The same head signed later: the earlier file stays.
    let later = signer().sign(&head, AT + 60_000);
    assert_eq!(write_checkpoint(&checkpoints, &later).unwrap(), path);
    assert_eq!(SignedCheckpoint::read_file(&path).unwrap(), first);

    // Another hash for position 7 is evidence of a replaced log: refused.
    let other = signer().sign(
        &Head {
            position: 7,
            hash: event_log::ChainHash([4; 32]),
        },
        AT,
    );
    let err = write_checkpoint(&checkpoints, &other).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(SignedCheckpoint::read_file(&path).unwrap(), first);
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(&checkpoints).unwrap().count(), 1);
}
