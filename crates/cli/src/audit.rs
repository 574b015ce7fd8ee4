//! `baton audit`: answers an auditor's questions from the log alone. `thread`
//! folds one thread's facts up to a time and shows the state then and the
//! history that led there; `sends` lists what was sent and what was refused,
//! and why. The rules come from `domain`; nothing here decides anything.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{bail, Context};
use domain::events::{OwnerBasis, SendOutcome, WindowBasis};
use domain::{Command, Event, PageId, Psid, ThreadKey, Timestamp};
use event_log::Record;
use serde_json::json;

use orchestration::audit::ThreadHistory;

use crate::http::ServerArgs;
use crate::source::{Source, SourceArgs};
use crate::time;

/// Calls `f` with every decodable event of the source, in log order.
/// Undecodable records (a newer schema) are counted, not fatal.
async fn each_event(src: &Source, mut f: impl FnMut(&Record, Event)) -> anyhow::Result<u64> {
    let mut undecodable = 0;
    let mut reader = src.open().await?;
    loop {
        let batch = reader.next_batch().await?;
        if batch.is_empty() {
            return Ok(undecodable);
        }
        for record in &batch {
            match Event::decode(&record.type_name, record.schema_version, &record.payload) {
                Ok(event) => f(record, event),
                Err(_) => undecodable += 1,
            }
        }
    }
}

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millis(ms)
}

/// `baton audit thread`.
pub async fn thread(
    page: String,
    psid: String,
    at: Option<Timestamp>,
    source: SourceArgs,
    server: ServerArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(config) = source.load_config()? else {
        bail!("audit thread needs --config FILE: the page's routing mode decides who may answer");
    };
    let page_id = PageId::parse(page.clone()).with_context(|| format!("page id {page:?}"))?;
    let psid = Psid::parse(psid.clone()).with_context(|| format!("PSID {psid:?}"))?;
    let Some(page) = config.page(&page_id).cloned() else {
        bail!("page {page_id} is not in the configuration");
    };
    let key = ThreadKey::new(page_id, psid);
    let src = Source::resolve(&source, Some(&config), &server).await?;

    let mut history = ThreadHistory::new(key.clone(), page, at);
    let undecodable = each_event(&src, |record, event| history.observe(record, &event)).await?;
    let view = history.state(now());
    let ThreadHistory {
        page,
        ledger,
        steps,
        later,
        ..
    } = history;
    let at = view.at;
    let state = view.state;
    let owner = view.owner.as_ref().map(ToString::to_string);
    let answering = view.answering_app.as_ref().map(ToString::to_string);
    let expiry = view.control_expires_at;
    let window = view.window;
    let tokens: Vec<_> = ledger
        .tokens
        .iter()
        .filter(|t| t.consumed.is_none() && at < t.expires_at && t.issued_at <= at)
        .collect();

    if json {
        println!(
            "{}",
            json!({
                "thread": key.to_string(),
                "page": key.page.to_string(),
                "psid": key.psid.to_string(),
                "mode": page.mode.name(),
                "at": time::format(at),
                "at_ms": at.millis(),
                "state": state,
                "owner": owner,
                "answering_app": answering,
                "control_expires_at": expiry.map(time::format),
                "window_closes_at": window.map(|(c, _)| time::format(c)),
                "window_open": window.is_some_and(|(_, open)| open),
                "tokens_available": tokens.iter().map(|t| json!({
                    "token": t.token,
                    "payload": t.payload,
                    "expires_at": time::format(t.expires_at),
                })).collect::<Vec<_>>(),
                "pending_requests": ledger.pending_requests.iter().map(|r| json!({
                    "app": r.app.to_string(),
                    "at": time::format(r.at),
                })).collect::<Vec<_>>(),
                "history": steps.iter().map(|s| json!({
                    "position": s.position,
                    "time": time::format(s.at),
                    "type": s.type_name,
                    "explanation": s.explanation,
                })).collect::<Vec<_>>(),
                "later_events": later,
                "undecodable_records": undecodable,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }

    let none = || "-".to_owned();
    println!(
        "thread {key} ({}) at {}",
        page.mode.name(),
        time::format(at)
    );
    println!("state             {state}");
    println!("owner             {}", owner.unwrap_or_else(none));
    println!("answering app     {}", answering.unwrap_or_else(none));
    println!(
        "control expires   {}",
        expiry.map(time::format).unwrap_or_else(none)
    );
    println!(
        "window closes     {}",
        match window {
            Some((closes, true)) => format!("{} (open)", time::format(closes)),
            Some((closes, false)) => format!("{} (closed)", time::format(closes)),
            None => "- (no qualifying user action)".to_owned(),
        }
    );
    println!(
        "tokens available  {}",
        if tokens.is_empty() {
            "0".to_owned()
        } else {
            let list: Vec<String> = tokens
                .iter()
                .map(|t| format!("{} until {}", t.token, time::format(t.expires_at)))
                .collect();
            format!("{} ({})", tokens.len(), list.join(", "))
        }
    );
    println!(
        "pending requests  {}",
        if ledger.pending_requests.is_empty() {
            "none".to_owned()
        } else {
            ledger
                .pending_requests
                .iter()
                .map(|r| format!("{} since {}", r.app, time::format(r.at)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!();
    if steps.is_empty() {
        println!(
            "no facts or decisions for this thread up to {}",
            time::format(at)
        );
    } else {
        println!("how it got there ({} events):", steps.len());
        println!("{:>8}  {:<24}  {:<26}  WHAT", "POSITION", "TIME", "TYPE");
        for s in &steps {
            println!(
                "{:>8}  {:<24}  {:<26}  {}",
                s.position,
                time::format(s.at),
                s.type_name,
                s.explanation
            );
        }
    }
    if later > 0 {
        println!("({later} later events of this thread not shown)");
    }
    if undecodable > 0 {
        println!("({undecodable} records of a newer schema could not be read)");
    }
    Ok(ExitCode::SUCCESS)
}

/// One send, accepted or refused.
struct SendRow {
    position: u64,
    at: Timestamp,
    thread: String,
    app: String,
    send_id: String,
    accepted: bool,
    /// Accepted: the basis. Refused: code/subcode and reason.
    detail: String,
    code: Option<(u32, Option<u32>)>,
    outcome: Option<String>,
}

fn owner_basis(b: OwnerBasis) -> &'static str {
    match b {
        OwnerBasis::ThreadOwner => "thread owner",
        OwnerBasis::IdleHolder => "idle holder",
        OwnerBasis::ZeroConfig => "zero-config",
        OwnerBasis::OwnerUnknown => "owner unknown (Meta decides)",
    }
}

fn window_basis(w: &WindowBasis) -> String {
    match w {
        WindowBasis::StandardWindow { closes_at, .. } => {
            format!("window until {}", time::format(*closes_at))
        }
        WindowBasis::HumanAgent { closes_at, .. } => {
            format!("HUMAN_AGENT until {}", time::format(*closes_at))
        }
        WindowBasis::MessageTag { tag, .. } => format!("tag {tag}"),
        WindowBasis::OneTimeToken { token, .. } => format!("one-time token {token}"),
        WindowBasis::UserRef => "plugin user_ref".to_owned(),
    }
}

fn outcome(o: &SendOutcome) -> String {
    match o {
        SendOutcome::Sent { message_id, .. } => format!("sent as {message_id}"),
        SendOutcome::Failed { error } => format!(
            "failed at Meta {}{}: {}",
            error.code,
            error.subcode.map(|s| format!("/{s}")).unwrap_or_default(),
            error.message
        ),
        SendOutcome::Unknown { reason } => format!("unknown: {reason}"),
        SendOutcome::SettledByEcho { mid } => format!("sent, confirmed by echo {mid}"),
    }
}

/// `baton audit sends`.
pub async fn sends(
    refused_only: bool,
    since: Option<Timestamp>,
    source: SourceArgs,
    server: ServerArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = source.load_config()?;
    let src = Source::resolve(&source, config.as_ref(), &server).await?;
    let mut rows: Vec<SendRow> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    each_event(&src, |record, event| match event {
        Event::SendAccepted(e) => {
            by_id.insert(e.send.send_id.to_string(), rows.len());
            rows.push(SendRow {
                position: record.position,
                at: e.at,
                thread: e.thread.to_string(),
                app: e.send.app.to_string(),
                send_id: e.send.send_id.to_string(),
                accepted: true,
                detail: format!(
                    "{}, {}",
                    owner_basis(e.basis.owner),
                    window_basis(&e.basis.window)
                ),
                code: None,
                outcome: None,
            });
        }
        Event::SendOutcomeRecorded(e) => {
            if let Some(&i) = by_id.get(e.send_id.as_str()) {
                // A later outcome (an echo settling an unknown one) wins.
                rows[i].outcome = Some(outcome(&e.outcome));
            }
        }
        Event::CommandRefused(e) => {
            if let Command::SendMessage(send) = &e.command {
                rows.push(SendRow {
                    position: record.position,
                    at: e.at,
                    thread: e.thread.to_string(),
                    app: send.app.to_string(),
                    send_id: send.send_id.to_string(),
                    accepted: false,
                    detail: e.rejection.reason.clone(),
                    code: Some((e.rejection.code, e.rejection.subcode)),
                    outcome: None,
                });
            }
        }
        _ => {}
    })
    .await?;
    rows.retain(|r| (!refused_only || !r.accepted) && since.is_none_or(|s| r.at >= s));

    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "position": r.position,
                    "time": time::format(r.at),
                    "thread": r.thread,
                    "app": r.app,
                    "send_id": r.send_id,
                    "result": if r.accepted { "accepted" } else { "refused" },
                    "basis": r.accepted.then_some(&r.detail),
                    "outcome": r.accepted.then(|| r.outcome.clone().unwrap_or_else(|| "pending".to_owned())),
                    "code": r.code.map(|(c, _)| c),
                    "subcode": r.code.and_then(|(_, s)| s),
                    "reason": (!r.accepted).then_some(&r.detail),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no {}sends", if refused_only { "refused " } else { "" });
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>8}  {:<24}  {:<22}  {:<16}  {:<9}  WHY / OUTCOME",
        "POSITION", "TIME", "THREAD", "APP", "RESULT"
    );
    for r in &rows {
        let why = if r.accepted {
            format!(
                "{} → {}",
                r.detail,
                r.outcome.as_deref().unwrap_or("pending")
            )
        } else {
            let (code, sub) = r.code.unwrap_or_default();
            format!(
                "{code}{}: {}",
                sub.map(|s| format!("/{s}")).unwrap_or_default(),
                r.detail
            )
        };
        println!(
            "{:>8}  {:<24}  {:<22}  {:<16}  {:<9}  {why}",
            r.position,
            time::format(r.at),
            r.thread,
            r.app,
            if r.accepted { "accepted" } else { "refused" },
        );
    }
    let refused = rows.iter().filter(|r| !r.accepted).count();
    println!(
        "{} sends: {} accepted, {refused} refused",
        rows.len(),
        rows.len() - refused
    );
    Ok(ExitCode::SUCCESS)
}
