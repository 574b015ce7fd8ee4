//! The one client for Meta's Graph API: every upstream call goes through it,
//! with a timeout and, where it was built with a retry budget, retries only
//! of what the domain's table classes as "not sent". It returns Meta's
//! answer as data; deciding what it means is the domain's job.

use std::time::Duration;

use domain::events::GraphError;
use serde_json::Value;

/// What came back from Meta.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphAnswer {
    /// A 2xx with its JSON body.
    Ok(Value),
    /// Meta's error JSON (or a synthetic one for an answer that was not JSON).
    Err {
        status: u16,
        error: GraphError,
        body: Value,
    },
    /// The request may have reached Meta but no answer came (timeout, reset).
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    retries: usize,
}

impl GraphClient {
    pub fn new(timeout: Duration, retries: usize) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .expect("a reqwest client with only timeouts set always builds");
        Self { http, retries }
    }

    /// `POST {base}/{version}/{node}/{edge}` with a JSON body and the page token.
    pub async fn post(
        &self,
        base: &str,
        version: &str,
        node: &str,
        edge: &str,
        token: &str,
        body: &Value,
    ) -> GraphAnswer {
        let url = url(base, version, &format!("{node}/{edge}"));
        self.json_call(reqwest::Method::POST, &url, token, body)
            .await
    }

    /// `POST {base}/{version}/{node}/{edge}?query` without a body (Graph
    /// reads a POST's parameters from the query string too), with the page
    /// token.
    pub async fn post_query(
        &self,
        base: &str,
        version: &str,
        node: &str,
        edge: &str,
        token: &str,
        query: &[(&str, &str)],
    ) -> GraphAnswer {
        let url = url(base, version, &format!("{node}/{edge}"));
        self.query_call(reqwest::Method::POST, &url, token, query)
            .await
    }

    /// `DELETE {base}/{version}/{node}/{edge}` with a JSON body and the page token.
    pub async fn delete(
        &self,
        base: &str,
        version: &str,
        node: &str,
        edge: &str,
        token: &str,
        body: &Value,
    ) -> GraphAnswer {
        let url = url(base, version, &format!("{node}/{edge}"));
        self.json_call(reqwest::Method::DELETE, &url, token, body)
            .await
    }

    /// `GET {base}/{version}/{node}/{edge}?query` with the page token.
    pub async fn get(
        &self,
        base: &str,
        version: &str,
        node: &str,
        edge: &str,
        token: &str,
        query: &[(&str, &str)],
    ) -> GraphAnswer {
        self.get_node(base, version, &format!("{node}/{edge}"), token, query)
            .await
    }

    /// `GET {base}/{version}/{path}?query` with the page token (`path` is
    /// a node, or a node and its edge).
    pub async fn get_node(
        &self,
        base: &str,
        version: &str,
        path: &str,
        token: &str,
        query: &[(&str, &str)],
    ) -> GraphAnswer {
        let url = url(base, version, path);
        self.query_call(reqwest::Method::GET, &url, token, query)
            .await
    }

    /// `POST {base}/{version}/{node}/{edge}` with `body` as it came (a
    /// multipart upload) under its own content type, and the page token.
    #[allow(clippy::too_many_arguments)]
    pub async fn post_raw(
        &self,
        base: &str,
        version: &str,
        node: &str,
        edge: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> GraphAnswer {
        let url = url(base, version, &format!("{node}/{edge}"));
        self.with_retries(|| {
            self.http
                .post(&url)
                .bearer_auth(token)
                .header("content-type", content_type)
                .body(body.clone())
        })
        .await
    }

    /// A call whose parameters are all in the query string.
    async fn query_call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        query: &[(&str, &str)],
    ) -> GraphAnswer {
        self.with_retries(|| {
            self.http
                .request(method.clone(), url)
                .bearer_auth(token)
                .query(query)
        })
        .await
    }

    async fn json_call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        body: &Value,
    ) -> GraphAnswer {
        self.with_retries(|| {
            self.http
                .request(method.clone(), url)
                .bearer_auth(token)
                .json(body)
        })
        .await
    }

    async fn with_retries(&self, request: impl Fn() -> reqwest::RequestBuilder) -> GraphAnswer {
        let mut attempt = 0;
        loop {
            let answer = Self::once(request()).await;
            // The domain's table says what may be tried again.
            let retry = match &answer {
                GraphAnswer::Err { error, .. } => {
                    domain::graph::classify(error) == domain::graph::AnswerClass::NotSent
                }
                _ => false,
            };
            if !retry || attempt >= self.retries {
                return answer;
            }
            attempt += 1;
            tracing::debug!(attempt, "retrying a transient Graph failure");
        }
    }

    async fn once(request: reqwest::RequestBuilder) -> GraphAnswer {
        let response = match request.send().await {
            Ok(r) => r,
            // Nothing reached Meta: safe to call again.
            Err(e) if e.is_connect() => {
                return GraphAnswer::Err {
                    status: 503,
                    error: GraphError {
                        code: 2,
                        subcode: None,
                        message: format!("Graph API unreachable: {e}"),
                        fbtrace_id: None,
                        is_transient: true,
                    },
                    body: Value::Null,
                }
            }
            Err(e) => return GraphAnswer::Unknown(format!("no answer from the Graph API: {e}")),
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return GraphAnswer::Unknown(format!("the Graph API answer was cut off: {e}"))
            }
        };
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return GraphAnswer::Ok(body);
        }
        if status >= 500 && body.get("error").is_none() {
            // A proxy's or Meta's edge error: the call may have been carried out.
            return GraphAnswer::Unknown(format!("HTTP {status} from the Graph API without an error body; the call may have been carried out"));
        }
        let error = wire::graph::parse_error(&body).unwrap_or_else(|| GraphError {
            code: if status >= 500 { 2 } else { 1 },
            subcode: None,
            message: format!("HTTP {status} from the Graph API without an error body"),
            fbtrace_id: None,
            is_transient: status >= 500,
        });
        GraphAnswer::Err {
            status,
            error,
            body,
        }
    }
}

/// `{base}/{version}/{path}`.
fn url(base: &str, version: &str, path: &str) -> String {
    format!("{}/{version}/{path}", base.trim_end_matches('/'))
}
