//! Webhook signatures: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>` and the
//! legacy `X-Hub-Signature: sha1=<hex HMAC-SHA1>`, keyed with the app secret,
//! over the raw body. Comparison is constant-time (`Mac::verify_slice`). It
//! never logs or returns the secret.

use domain::events::{SignatureCheck, SignatureResult};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;
type HmacSha1 = Hmac<Sha1>;

/// `sha256=<lowercase hex>` for `X-Hub-Signature-256`.
pub fn sign_sha256(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `sha1=<lowercase hex>` for `X-Hub-Signature`.
pub fn sign_sha1(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha1::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

fn check<M: Mac + hmac::digest::KeyInit>(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
    prefix: &str,
) -> SignatureResult {
    let Some(header) = header else {
        return SignatureResult::Absent;
    };
    let Some(hex_part) = header.trim().strip_prefix(prefix) else {
        return SignatureResult::Invalid;
    };
    let Ok(expected) = hex::decode(hex_part) else {
        return SignatureResult::Invalid;
    };
    let mut mac = <M as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    match mac.verify_slice(&expected) {
        Ok(()) => SignatureResult::Valid,
        Err(_) => SignatureResult::Invalid,
    }
}

/// Checks whichever signature headers are present.
pub fn check_signatures(
    secret: &[u8],
    body: &[u8],
    sha256_header: Option<&str>,
    sha1_header: Option<&str>,
) -> SignatureCheck {
    SignatureCheck {
        sha256: check::<HmacSha256>(secret, body, sha256_header, "sha256="),
        sha1: check::<HmacSha1>(secret, body, sha1_header, "sha1="),
    }
}

/// The verdict on a delivery: accepted when every header present verifies
/// and at least one is present. A present but wrong header is never
/// outweighed by a correct one: that is what a forger would send.
pub fn accepted(check: &SignatureCheck) -> bool {
    let results = [check.sha256, check.sha1];
    results.contains(&SignatureResult::Valid) && !results.contains(&SignatureResult::Invalid)
}

/// Why a delivery's signature was refused, for the 401 body (no secrets).
pub fn refusal_reason(check: &SignatureCheck) -> &'static str {
    match (check.sha256, check.sha1) {
        (SignatureResult::Absent, SignatureResult::Absent) => {
            "missing signature: send X-Hub-Signature-256 (sha256=<hex HMAC-SHA256 of the raw body with the app secret>)"
        }
        (SignatureResult::Invalid, _) => "X-Hub-Signature-256 does not match the body for this app's secret",
        _ => "X-Hub-Signature does not match the body for this app's secret",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog").
        assert_eq!(
            sign_sha256(b"key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert_eq!(
            sign_sha1(b"key", b"The quick brown fox jumps over the lazy dog"),
            "sha1=de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"
        );
    }

    #[test]
    fn verdicts() {
        let body = br#"{"object":"page"}"#;
        let good256 = sign_sha256(b"s3cret", body);
        let good1 = sign_sha1(b"s3cret", body);
        let both = check_signatures(b"s3cret", body, Some(&good256), Some(&good1));
        assert!(accepted(&both));
        assert!(accepted(&check_signatures(
            b"s3cret",
            body,
            None,
            Some(&good1)
        )));
        assert!(accepted(&check_signatures(
            b"s3cret",
            body,
            Some(&good256),
            None
        )));
        let none = check_signatures(b"s3cret", body, None, None);
        assert!(!accepted(&none));
        assert!(refusal_reason(&none).starts_with("missing"));
        let wrong_key = check_signatures(b"other", body, Some(&good256), None);
        assert_eq!(wrong_key.sha256, SignatureResult::Invalid);
        assert!(!accepted(&wrong_key));
        let mixed = check_signatures(b"s3cret", body, Some(&good256), Some("sha1=00"));
        assert!(!accepted(&mixed), "a wrong header is never outweighed");
        for bad in ["sha256=zz", "md5=abc", "", "sha256=", "f7bc83"] {
            assert_eq!(
                check_signatures(b"s3cret", body, Some(bad), None).sha256,
                SignatureResult::Invalid,
                "{bad}"
            );
        }
        let upper = format!(
            "sha256={}",
            good256.trim_start_matches("sha256=").to_uppercase()
        );
        assert!(
            accepted(&check_signatures(b"s3cret", body, Some(&upper), None)),
            "hex case does not matter"
        );
        let tampered = check_signatures(b"s3cret", br#"{"object":"pagE"}"#, Some(&good256), None);
        assert!(!accepted(&tampered));
    }
}
