//! Talking to a running server's admin API (`--server URL --token TOKEN`):
//! the NDJSON export, the projections digest and redrive. Plain HTTP calls;
//! the answers are interpreted by the commands.

use anyhow::{bail, Context};

/// `--server` and `--token`, shared by the commands that can ask a running server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Base URL of a running server, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The server's admin token (`admin_token` in its configuration).
    #[arg(
        long,
        value_name = "ADMIN_TOKEN",
        env = "BATON_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

impl ServerArgs {
    /// The server to ask, when `--server` was given (then `--token` is needed).
    pub fn remote(&self) -> anyhow::Result<Option<Remote>> {
        let Some(base) = &self.server else {
            return Ok(None);
        };
        let Some(token) = &self.token else {
            bail!("--server needs --token ADMIN_TOKEN (or BATON_ADMIN_TOKEN)");
        };
        Ok(Some(Remote {
            base: base.trim_end_matches('/').to_owned(),
            token: token.clone(),
            http: reqwest::Client::new(),
        }))
    }
}

/// A running server and its admin token.
#[derive(Debug)]
pub struct Remote {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Remote {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`; a non-2xx answer is an error naming the status and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let url = self.url(path);
        let res = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = res.status();
        let body = res
            .bytes()
            .await
            .with_context(|| format!("reading the answer of GET {url}"))?;
        if !status.is_success() {
            bail!(
                "GET {url} answered HTTP {status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        Ok(body.to_vec())
    }

    /// `POST path` with a JSON body; answers the status and body, whatever they are.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(reqwest::StatusCode, String)> {
        let url = self.url(path);
        let res = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = res.status();
        let text = res
            .text()
            .await
            .with_context(|| format!("reading the answer of POST {url}"))?;
        Ok((status, text))
    }

    /// `POST path` with a JSON body, printing the request and the answer;
    /// exits 0 on a 2xx, else 1.
    pub async fn post_and_report(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<std::process::ExitCode> {
        let (status, answer) = self.post_json(path, body).await?;
        println!("POST {} → HTTP {status}", self.url(path));
        if !answer.trim().is_empty() {
            println!("{}", answer.trim());
        }
        Ok(if status.is_success() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::from(1)
        })
    }
}

/// The log of a stopped server: `--data-dir` (sled), else the store the
/// configuration `--config` names.
pub fn stopped_log(
    data_dir: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<crate::source::LogAt> {
    match crate::source::LogAt::from_flags(data_dir, config)? {
        Some((_, log)) => Ok(log),
        None => anyhow::bail!(
            "say where: --server URL --token ADMIN_TOKEN for a running server, or --data-dir DIR (or --config FILE) for a stopped one"
        ),
    }
}
