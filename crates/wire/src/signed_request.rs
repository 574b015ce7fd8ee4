//! Meta's `signed_request`, as its data-deletion callback sends it:
//! `<base64url HMAC-SHA256 of the payload part>.<base64url JSON payload>`,
//! keyed with the app secret. The signature is checked in constant time
//! before the payload is read; nothing in an unverified payload is trusted.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedRequestError {
    #[error("signed_request must be <signature>.<payload>")]
    Malformed,
    #[error("signed_request's signature or payload is not base64url")]
    NotBase64,
    #[error("signed_request's signature does not match the app secret")]
    BadSignature,
    #[error("signed_request's payload is not a JSON object")]
    NotJson,
    #[error("signed_request's algorithm is {0:?}, not HMAC-SHA256")]
    Algorithm(String),
    #[error("signed_request names no user_id")]
    NoUser,
}

/// What a verified data-deletion request says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionRequest {
    /// The person's app-scoped id (ASID), not a PSID.
    pub user_id: String,
    /// `issued_at`, seconds since the epoch, when present.
    pub issued_at: Option<i64>,
}

/// Checks `signed_request` against `secret` and reads the deletion request.
pub fn verify_deletion_request(
    secret: &[u8],
    signed_request: &str,
) -> Result<DeletionRequest, SignedRequestError> {
    let (signature, payload) = signed_request
        .trim()
        .split_once('.')
        .ok_or(SignedRequestError::Malformed)?;
    // Meta pads nothing, but some encoders do: accept either.
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| SignedRequestError::NotBase64)
    };
    let signature = decode(signature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(payload.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| SignedRequestError::BadSignature)?;
    let payload: Value =
        serde_json::from_slice(&decode(payload)?).map_err(|_| SignedRequestError::NotJson)?;
    if !payload.is_object() {
        return Err(SignedRequestError::NotJson);
    }
    match payload.get("algorithm").and_then(Value::as_str) {
        Some(a) if a.eq_ignore_ascii_case("HMAC-SHA256") => {}
        other => {
            return Err(SignedRequestError::Algorithm(
                other.unwrap_or_default().to_owned(),
            ))
        }
    }
    let user_id = match payload.get("user_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(SignedRequestError::NoUser),
    };
    Ok(DeletionRequest {
        user_id,
        issued_at: payload.get("issued_at").and_then(Value::as_i64),
    })
}

/// Builds a signed request as Meta does (for the emulator's counterpart in
/// tests and for tools).
pub fn sign_request(secret: &[u8], payload: &Value) -> String {
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(payload.as_bytes());
    format!(
        "{}.{payload}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> Value {
        json!({"algorithm": "HMAC-SHA256", "expires": 0, "issued_at": 1793523600, "user_id": "asid-1"})
    }

    #[test]
    fn a_correctly_signed_request_is_read() {
        let signed = sign_request(b"secret", &request());
        assert_eq!(
            verify_deletion_request(b"secret", &signed),
            Ok(DeletionRequest {
                user_id: "asid-1".into(),
                issued_at: Some(1793523600)
            })
        );
    }

    #[test]
    fn forged_or_broken_requests_are_refused() {
        let signed = sign_request(b"secret", &request());
        assert_eq!(
            verify_deletion_request(b"other secret", &signed),
            Err(SignedRequestError::BadSignature)
        );
        // Another user id under the original signature.
        let (sig, _) = signed.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD
            .encode(json!({"algorithm": "HMAC-SHA256", "user_id": "victim"}).to_string());
        assert_eq!(
            verify_deletion_request(b"secret", &format!("{sig}.{forged_payload}")),
            Err(SignedRequestError::BadSignature)
        );
        assert_eq!(
            verify_deletion_request(b"secret", "no-dot"),
            Err(SignedRequestError::Malformed)
        );
        assert_eq!(
            verify_deletion_request(b"secret", "!!.??"),
            Err(SignedRequestError::NotBase64)
        );
        let weak = sign_request(b"secret", &json!({"algorithm": "none", "user_id": "x"}));
        assert_eq!(
            verify_deletion_request(b"secret", &weak),
            Err(SignedRequestError::Algorithm("none".into()))
        );
        let nobody = sign_request(b"secret", &json!({"algorithm": "HMAC-SHA256"}));
        assert_eq!(
            verify_deletion_request(b"secret", &nobody),
            Err(SignedRequestError::NoUser)
        );
    }
}
