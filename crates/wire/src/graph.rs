//! Graph API error JSON: `{"error":{"message","type","code","error_subcode","fbtrace_id"}}`,
//! built from a domain `Rejection` (Baton refusing as Meta would) or parsed
//! from Meta's answer.

use domain::events::GraphError;
use domain::Rejection;
use serde_json::{json, Value};

/// Meta's error body for a refusal.
pub fn error_body(
    code: u32,
    subcode: Option<u32>,
    message: &str,
    error_type: &str,
    fbtrace_id: &str,
) -> Value {
    let mut error = json!({
        "message": message,
        "type": error_type,
        "code": code,
        "fbtrace_id": fbtrace_id,
    });
    if let Some(sub) = subcode {
        error["error_subcode"] = json!(sub);
    }
    json!({ "error": error })
}

/// Meta's error body for a domain refusal, with `(#code) reason` as the message.
pub fn rejection_body(rejection: &Rejection, fbtrace_id: &str) -> Value {
    error_body(
        rejection.code,
        rejection.subcode,
        &rejection.meta_message(),
        "OAuthException",
        fbtrace_id,
    )
}

/// Reads Meta's error body, if that is what `body` is.
pub fn parse_error(body: &Value) -> Option<GraphError> {
    let e = body.get("error")?;
    let code = e.get("code").and_then(Value::as_u64)? as u32;
    Some(GraphError {
        code,
        subcode: e
            .get("error_subcode")
            .and_then(Value::as_u64)
            .map(|s| s as u32),
        message: e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        fbtrace_id: e
            .get("fbtrace_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        is_transient: e
            .get("is_transient")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::RejectionKind;

    #[test]
    fn rejection_round_trips_through_meta_shape() {
        let r = Rejection::new(
            RejectionKind::NotThreadOwner,
            "another app is controlling this thread",
        );
        let body = rejection_body(&r, "Baton1");
        assert_eq!(body["error"]["code"], 10);
        assert_eq!(body["error"]["error_subcode"], 2_018_300);
        assert_eq!(body["error"]["type"], "OAuthException");
        assert_eq!(
            body["error"]["message"],
            "(#10) another app is controlling this thread"
        );
        let parsed = parse_error(&body).unwrap();
        assert_eq!((parsed.code, parsed.subcode), (10, Some(2_018_300)));
        assert!(parse_error(&json!({"success": true})).is_none());
        let no_sub = error_body(
            190,
            None,
            "Invalid OAuth access token.",
            "OAuthException",
            "x",
        );
        assert!(no_sub["error"].get("error_subcode").is_none());
    }
}
