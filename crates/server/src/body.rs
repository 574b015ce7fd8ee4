//! Reading a request body: one reader for every route, with the size limit
//! (`max_body_bytes`, checked against `Content-Length` before reading and
//! while reading) and the time limit (`body_timeout_ms`: a slow client is cut
//! off). Each surface turns a [`BodyError`] into its own error shape.

use std::time::Duration;

use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    TooLarge { limit: usize },
    Timeout { ms: u64 },
    Broken(String),
}

/// Reads the whole body of `req` within `limit` bytes and `timeout`.
pub async fn read(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<web::Bytes, BodyError> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = web::BytesMut::new();
    let reading = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, reading).await {
        Ok(Ok(())) => Ok(body.freeze()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BodyError::Timeout {
            ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}
