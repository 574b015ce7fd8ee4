//! Token checks shared by every HTTP surface: constant-time comparison, the
//! bearer header, and the admin token. Which token may do what is decided by
//! each surface; this module only answers "does it match".

use actix_web::HttpRequest;

use crate::AppState;

/// Compares secrets without an early exit on the first differing byte.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether `token` is the configured admin token.
pub fn is_admin<S>(state: &AppState<S>, token: &str) -> bool {
    state
        .config
        .admin_token
        .as_ref()
        .is_some_and(|a| ct_eq(a.expose().as_bytes(), token.as_bytes()))
}
