//! `baton replay`: fold the whole log into the server's projections, print a
//! summary and their digest, check that folding is deterministic (all at
//! once equals two halves with a clone between), and optionally compare the
//! digest with a running server's at the same position. Read-only.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use domain::Control;
use orchestration::State;
use serde::Deserialize;
use serde_json::json;

use crate::http::ServerArgs;
use crate::source::{Source, SourceArgs};

const PROGRESS_EVERY: u64 = 50_000;

/// `GET /api/admin/projections`.
#[derive(Debug, Deserialize)]
struct LiveProjections {
    position: u64,
    threads: u64,
    digest: String,
}

/// `baton replay`.
pub async fn replay(
    source: SourceArgs,
    server: ServerArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = source.load_config()?;
    let pages: Vec<domain::Page> = config
        .as_ref()
        .map(|c| c.pages.values().map(|(_, p)| p.clone()).collect())
        .unwrap_or_default();
    // Ask the server first: the export fetched afterwards reaches at least
    // the position its projections had.
    let live = match server.remote()? {
        Some(remote) => {
            let body = remote.get("/api/admin/projections").await?;
            Some(
                serde_json::from_slice::<LiveProjections>(&body)
                    .context("reading the server's projections answer")?,
            )
        }
        None => None,
    };
    let src = Source::resolve(&source, config.as_ref(), &server).await?;
    let total = src.count().await?;
    let half = total / 2;
    let progress = std::io::stderr().is_terminal();

    let fresh = State::new(pages);
    let mut full = fresh.clone();
    // The self-check: positions 1..=n/2, a clone, then the rest.
    let mut split = fresh.clone();
    if half == 0 {
        split = split.clone();
    }
    let mut at_live: Option<(String, usize)> = None;
    let mut reader = src.open().await?;
    loop {
        let batch = reader.next_batch().await?;
        if batch.is_empty() {
            break;
        }
        for record in &batch {
            full.apply_record(record);
            split.apply_record(record);
            if record.position == half {
                split = split.clone();
            }
            if live.as_ref().is_some_and(|l| l.position == record.position) {
                at_live = Some((full.digest(), full.thread_count()));
            }
            if progress && record.position % PROGRESS_EVERY == 0 {
                eprint!("\rreplayed {} of {total} records", record.position);
            }
        }
    }
    if progress && total >= PROGRESS_EVERY {
        eprintln!();
    }
    if live.as_ref().is_some_and(|l| l.position == 0) {
        at_live = Some((fresh.digest(), 0));
    }

    let digest = full.digest();
    let halves_agree = full == split && digest == split.digest();
    let (mut idle, mut unknown) = (0u64, 0u64);
    let mut active: BTreeMap<String, u64> = BTreeMap::new();
    for ledger in full.ledgers() {
        match &ledger.control {
            Control::Idle => idle += 1,
            Control::Active { owner, .. } => *active.entry(owner.to_string()).or_default() += 1,
            Control::Unknown { .. } => unknown += 1,
        }
    }
    let active_total: u64 = active.values().sum();
    let comparison = live.as_ref().map(|l| match &at_live {
        Some((d, _)) if *d == l.digest => Ok(()),
        Some((d, _)) => Err(format!(
            "the replay's digest at position {} is {d}, the server's is {}",
            l.position, l.digest
        )),
        None => Err(format!(
            "{} ends at position {}, before the server's position {}",
            src.describe(),
            full.position,
            l.position
        )),
    });

    if json {
        println!(
            "{}",
            json!({
                "position": full.position,
                "threads": full.thread_count(),
                "owners": {"idle": idle, "active": active, "unknown": unknown},
                "undecodable": full.undecodable,
                "digest": digest,
                "halves_agree": halves_agree,
                "server": live.as_ref().map(|l| json!({
                    "position": l.position,
                    "threads": l.threads,
                    "digest": l.digest,
                    "replay_digest": at_live.as_ref().map(|(d, _)| d),
                    "matches": matches!(comparison, Some(Ok(()))),
                })),
            })
        );
    } else {
        println!("replayed {}", src.describe());
        println!("position      {}", full.position);
        println!("threads       {}", full.thread_count());
        println!("  idle        {idle}");
        println!("  active      {active_total}");
        for (owner, n) in &active {
            println!("    {owner:<18} {n}");
        }
        println!("  unknown     {unknown}");
        if full.undecodable > 0 {
            println!(
                "undecodable   {} records (newer schema; skipped)",
                full.undecodable
            );
        }
        println!("digest        {digest}");
        println!(
            "self-check    {}",
            if halves_agree {
                "ok: folding in two halves gives the same state"
            } else {
                "FAILED: folding in two halves gives another state"
            }
        );
        match (&live, &comparison) {
            (Some(l), Some(Ok(()))) => println!(
                "server        ok: the digest at position {} matches the server's",
                l.position
            ),
            (_, Some(Err(why))) => println!("server        DIFFERS: {why}"),
            _ => {}
        }
    }
    if !halves_agree {
        eprintln!("baton: replay is not deterministic: folding in two halves gives another state");
        return Ok(ExitCode::from(1));
    }
    if let Some(Err(why)) = comparison {
        eprintln!("baton: replay differs from the server: {why}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
