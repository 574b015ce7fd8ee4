//! Fuzzes the webhook envelope parser: any bytes must parse or fail with an
//! error, never panic, and every item of a parsed envelope has a dedupe key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = domain::Timestamp::from_millis(1_793_523_600_000);
    if let Ok(envelope) = wire::webhook::parse_envelope(data, now) {
        for entry in &envelope.entries {
            for item in &entry.items {
                assert!(!item.kind.dedupe_key().is_empty());
            }
        }
    }
});
