//! Token checks shared by every HTTP surface: constant-time comparison, the
//! bearer header, and who a token belongs to (the admin, or one managed app).
//! Which identity may do what is decided by each surface; this module only
//! answers "whose token is this".

use actix_web::HttpRequest;
use orchestration::config::{AppConfig, ManagedApp};
use orchestration::Config;

/// Compares secrets without an early exit on the first differing byte.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer …` (or Graph's `OAuth …`) header.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })
}

/// Who a token belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    Admin,
    App(&'a AppConfig, &'a ManagedApp),
}

/// The identity whose token `token` is, if any. Every configured token is
/// compared in constant time.
pub fn identify<'a>(config: &'a Config, token: &str) -> Option<Identity<'a>> {
    if config
        .admin_token
        .as_ref()
        .is_some_and(|a| ct_eq(a.expose().as_bytes(), token.as_bytes()))
    {
        return Some(Identity::Admin);
    }
    config
        .apps
        .values()
        .filter_map(|a| Some((a, a.managed.as_ref()?)))
        .find(|(_, m)| ct_eq(m.api_token.expose().as_bytes(), token.as_bytes()))
        .map(|(a, m)| Identity::App(a, m))
}
