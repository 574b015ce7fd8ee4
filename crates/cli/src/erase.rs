//! `baton erase`: erase one person's content on one page (`docs/privacy.md`),
//! through the running server's admin API or, offline, in a stopped
//! server's data directory: the person's keys are destroyed, then
//! `ContentErased` is appended. The log's records are not touched, so
//! `baton verify` passes afterwards.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use domain::events::ContentErased;
use domain::ids::{PageId, Psid, ThreadKey};
use event_log::EventStore;
use orchestration::record::{OnBusy, Planned};
use serde_json::json;

use crate::http::{stopped_log, ServerArgs};

/// `baton erase` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct EraseArgs {
    /// The page the person wrote to.
    #[arg(long, value_name = "PAGE_ID")]
    pub page: String,
    /// The person's page-scoped id on that page.
    #[arg(long, value_name = "PSID")]
    pub psid: String,
    /// Data directory of a STOPPED server.
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// The server's TOML configuration, for its store (`data_dir`, or
    /// PostgreSQL).
    #[arg(long, short, value_name = "FILE", conflicts_with = "server")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `baton erase`.
pub async fn erase(args: EraseArgs) -> anyhow::Result<ExitCode> {
    let page =
        PageId::parse(args.page.clone()).with_context(|| format!("page id {:?}", args.page))?;
    let psid = Psid::parse(args.psid.clone()).with_context(|| format!("psid {:?}", args.psid))?;
    if let Some(remote) = args.server.remote()? {
        return remote
            .post_and_report(
                "/api/admin/erasures",
                &json!({"page_id": page.as_str(), "psid": psid.as_str()}),
            )
            .await;
    }
    let log = stopped_log(args.data_dir.as_deref(), args.config.as_deref())?;
    let store = log.open().await?;
    let thread = ThreadKey::new(page, psid);
    let result = async {
        let keys = store
            .vault()
            .erase_subject(&domain::privacy::subject(&thread))
            .context("rewriting the key vault")?;
        let fact = ContentErased {
            thread: thread.clone(),
            at: orchestration::clock::Clock::now(&orchestration::clock::SystemClock),
            by: "cli".into(),
            request: uuid::Uuid::new_v4().simple().to_string(),
        };
        let appended =
            orchestration::record::append(&store, vec![Planned::new(fact.into())], OnBusy::Retry)
                .await
                .context("appending ContentErased")?;
        anyhow::Ok((keys, appended.first().map_or(0, |a| a.position)))
    }
    .await;
    store.close().await;
    let (keys, position) = result?;
    println!(
        "erased the content of {} on page {}: {keys} key(s) destroyed; ContentErased appended at position {position}",
        thread.psid, thread.page
    );
    Ok(ExitCode::SUCCESS)
}
