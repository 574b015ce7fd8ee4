//! Scheduled reconciliation: Baton asks Meta's `thread_owner` about active
//! threads whose owner Meta has not confirmed for `reconcile_every_secs`,
//! within each page's budget, so a change nobody told Baton about (a silent
//! Page Inbox takeover, a lost webhook) is learned in a bounded time.

use domain::events::ControlView;
use domain::Span;
use emulator::SetOwner;

use crate::stack::*;
use crate::support::*;

/// Moves both clocks by `step` until `until`, running a scheduled round
/// after each move; returns how far the clocks moved.
async fn rounds(stack: &Stack, step: Span, until: impl Fn(&Stack) -> bool, most: usize) -> Span {
    let mut moved = Span(0);
    for _ in 0..most {
        if until(stack) {
            break;
        }
        stack.advance(step).await;
        moved = Span(moved.millis() + step.millis());
        stack.baton.running.state.reconcile_due().await;
    }
    moved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_takeover_of_an_active_thread_is_learned_on_the_schedule_within_the_budget() {
    // Eight scheduled calls an hour for the page: four at once, then one per 7.5 min.
    let stack = Stack::start_with(
        Mode::ConversationRouting,
        Tuning::default(),
        &["reconcile_calls_per_page_per_hour = 8"],
    )
    .await;
    let users = ["u0", "u1", "u2", "u3", "u4", "u5"];
    for u in users {
        stack.user_says(u, "hello").await;
    }
    assert_eq!(stack.ledger_view("u5"), owner(BOT));
    // A minute later the Page Inbox takes u5 at Meta; no webhook says so.
    stack.advance(Span::MINUTE).await;
    stack
        .ctl
        .set_owner(
            PAGE,
            "u5",
            &SetOwner {
                app_id: Some(PAGE_INBOX.into()),
                expires_at_ms: None,
            },
        )
        .await
        .unwrap();
    stack.ctl.reset_logs().await.unwrap();
    // Nothing is asked before the owners are 30 minutes unconfirmed.
    let before = rounds(&stack, Span::MINUTE, |_| false, 28).await;
    assert_eq!(before, Span::minutes(28));
    assert_eq!(stack.upstream_calls("/thread_owner").await, 0);
    // The first due round spends the page's burst on the four oldest...
    let learned = rounds(
        &stack,
        Span::MINUTE,
        |s| s.ledger_view("u5") == owner(PAGE_INBOX),
        60,
    )
    .await;
    let window = Span(before.millis() + learned.millis());
    let calls = stack.upstream_calls("/thread_owner").await;
    report(&format!(
        "reconciliation: a silent takeover learned {} min after it happened ({calls} thread_owner calls, budget 8/h)",
        window.millis() / 60_000,
    ));
    // ...and u5, the sixth, waits for the budget: 2 more tokens at 7.5 min each.
    assert_eq!(calls, 6, "each thread asked once, none twice");
    assert!(
        window.millis() >= Span::minutes(29 + 15).millis() - Span::MINUTE.millis(),
        "the budget held u5 back: {window:?}"
    );
    assert!(
        window.millis() <= Span::minutes(29 + 15 + 1).millis(),
        "{window:?}"
    );
    for u in users {
        stack.assert_consistent(u).await;
    }
    let (status, body) = stack.send("baton-bot", text("u5", "Hi!")).await;
    assert_eq!(
        status, 400,
        "the bot no longer talks over the inbox: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_asks_about_active_threads_at_most_twice_an_hour_and_never_about_idle_ones() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    let active = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7"];
    let idle = ["i0", "i1", "i2"];
    for u in active.iter().chain(&idle) {
        stack.user_says(u, "hello").await;
    }
    for u in idle {
        let (status, _) = stack
            .graph_post(
                "baton-bot",
                "release_thread_control",
                serde_json::json!({"recipient": {"id": u}}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(stack.ledger_view(u), ControlView::Idle);
    }
    stack.ctl.reset_logs().await.unwrap();
    // Six hours in six-minute steps; half the active users write every hour.
    let hours = 6;
    for step in 1..=hours * 10 {
        stack.advance(Span::minutes(6)).await;
        if step % 10 == 0 {
            for u in &active[..4] {
                stack.user_says(u, "still there?").await;
            }
        }
        stack.baton.running.state.reconcile_due().await;
    }
    let calls = stack.ctl.calls().await.unwrap();
    let asked: Vec<String> = calls
        .iter()
        .filter(|c| c.path.ends_with("/thread_owner"))
        .map(|c| {
            c.params["recipient"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        asked.iter().all(|u| u.starts_with('a')),
        "idle threads are never asked: {asked:?}"
    );
    let per_thread_hour = asked.len() as f64 / (active.len() * hours) as f64;
    report(&format!(
        "reconciliation: {per_thread_hour:.2} thread_owner calls per active thread per hour ({} calls, {} active threads, {hours} h)",
        asked.len(),
        active.len()
    ));
    assert!(per_thread_hour <= 2.0, "{per_thread_hour}");
    assert!(
        per_thread_hour >= 1.0,
        "the schedule runs: {per_thread_hour}"
    );
    for u in active.iter().chain(&idle) {
        stack.assert_consistent(u).await;
    }
}
