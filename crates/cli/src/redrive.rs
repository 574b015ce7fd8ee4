//! `baton redrive`: ask for a dead-lettered item to be delivered to an app's
//! backend again, through the running server's API or, offline, by appending
//! `DispatchRedriveRequested` to a stopped server's log (its dispatcher picks
//! it up when the server starts). The only command that writes to a log, and
//! only after checking that the position is a dead letter of that app.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use domain::{AppId, Event, Timestamp};
use event_log::{AnyStore, EventStore};
use serde_json::json;

use crate::http::{stopped_log, ServerArgs};

/// `baton redrive` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RedriveArgs {
    /// The app whose backend should receive the item again.
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
    /// Log position of the dead-lettered item, or of its
    /// `DispatchDeadLettered` record.
    #[arg(long, value_name = "N")]
    pub position: u64,
    /// Data directory of a STOPPED server: append the request to its log.
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// The server's TOML configuration, for its store (`data_dir`, or
    /// PostgreSQL).
    #[arg(long, short, value_name = "FILE", conflicts_with = "server")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `baton redrive`.
pub async fn redrive(args: RedriveArgs) -> anyhow::Result<ExitCode> {
    let app = AppId::parse(args.app.clone()).with_context(|| format!("app id {:?}", args.app))?;
    if let Some(remote) = args.server.remote()? {
        return remote
            .post_and_report(
                &format!("/api/apps/{app}/redrive"),
                &json!({"position": args.position}),
            )
            .await;
    }
    let log = stopped_log(args.data_dir.as_deref(), args.config.as_deref())?;
    let store = log.open().await?;
    let result = offline(&store, &app, args.position).await;
    store.close().await;
    match result? {
        Ok((item, appended)) => {
            println!(
                "appended DispatchRedriveRequested at position {appended}: item {item} will be delivered to {app} again when the server runs"
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            eprintln!("baton: {refusal}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Checks the position and appends the request. `Ok(Err(why))` is a refusal.
async fn offline(
    store: &AnyStore,
    app: &AppId,
    position: u64,
) -> anyhow::Result<Result<(u64, u64), String>> {
    let head = store.head().await.context("reading the log head")?;
    if position == 0 || position > head.position {
        return Ok(Err(format!(
            "position {position} does not exist: the log holds positions 1 to {}",
            head.position
        )));
    }
    let record = store
        .read_all(position, 1)
        .await
        .context("reading the log")?
        .into_iter()
        .next()
        .filter(|r| r.position == position)
        .with_context(|| format!("position {position} could not be read"))?;
    let event = match Event::decode(&record.type_name, record.schema_version, &record.payload) {
        Ok(event) => event,
        Err(e) => {
            return Ok(Err(format!(
                "position {position} holds a {} this build cannot read: {e}",
                record.type_name
            )))
        }
    };
    let delivered_to = |copy: &domain::events::DeliveryCopy| copy.app == *app;
    let item = match &event {
        Event::DispatchDeadLettered(dl) if dl.app == *app => dl.position,
        Event::MessagingEventReceived(e) if delivered_to(&e.delivery) => position,
        Event::MessagingEventCopyReceived(e) if delivered_to(&e.delivery) => position,
        Event::PolicyEnforcementReceived(e) if delivered_to(&e.delivery) => position,
        Event::UnattributedItemReceived(e) if delivered_to(&e.delivery) => position,
        Event::AppRolesChanged(e) if e.delivery.as_ref().is_some_and(delivered_to) => position,
        other => {
            return Ok(Err(format!(
                "position {position} holds a {}, not an item delivered to {app} nor one of its dead letters",
                other.type_name()
            )))
        }
    };
    // Like the server's redrive (the same function), only a dead letter is
    // redriven: an item the backend acknowledged needs no second delivery.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    match dispatch::request_redrive(store, app, item, "cli", Timestamp::from_millis(now)).await {
        Ok(at) => Ok(Ok((item, at))),
        Err(dispatch::RedriveError::NotDeadLettered { .. }) => Ok(Err(format!(
            "position {item} was delivered to {app} but never dead-lettered: there is nothing to redrive"
        ))),
        Err(e) => Err(anyhow::Error::new(e).context("appending the redrive request")),
    }
}
