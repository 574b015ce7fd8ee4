//! Token checks shared by every HTTP surface: constant-time comparison, the
//! bearer header, and who a token belongs to (the admin, or one managed app).
//! Which identity may do what is decided by each surface; this module only
//! answers "whose token is this".

use actix_web::HttpRequest;
use orchestration::config::{AppConfig, ManagedApp};
use orchestration::Config;

/// Compares secrets in constant time, their lengths included: both sides
/// are hashed to 32 bytes first, and the digests compared without an early
/// exit.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
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
    /// Reads everything, changes nothing.
    Auditor,
    App(&'a AppConfig, &'a ManagedApp),
}

impl Identity<'_> {
    /// The admin or the auditor: they read every page's threads and sends.
    pub fn reads_everything(&self) -> bool {
        matches!(self, Identity::Admin | Identity::Auditor)
    }
}

/// The identity whose token `token` is, if any. Every configured token is
/// compared in constant time.
pub fn identify<'a>(config: &'a Config, token: &str) -> Option<Identity<'a>> {
    let is = |t: &Option<orchestration::Secret>| {
        t.as_ref()
            .is_some_and(|a| ct_eq(a.expose().as_bytes(), token.as_bytes()))
    };
    if is(&config.admin_token) {
        return Some(Identity::Admin);
    }
    if is(&config.auditor_token) {
        return Some(Identity::Auditor);
    }
    config
        .apps
        .values()
        .filter_map(|a| Some((a, a.managed.as_ref()?)))
        .find(|(_, m)| ct_eq(m.api_token.expose().as_bytes(), token.as_bytes()))
        .map(|(a, m)| Identity::App(a, m))
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn comparison_does_not_depend_on_length() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret-but-longer"));
        assert!(!ct_eq(b"", b"x"));
    }
}
