//! The outbox is a worker, not the HTTP request: a client that hangs up does
//! not stop its send, sends accepted before a stop are resumed by the same
//! worker after the restart, and a retry with the same `Idempotency-Key`
//! waits for the first send's outcome.

use std::time::Duration;

use domain::events::SendOutcome;
use emulator::FaultSpec;
use serde_json::Value;
use server::projections::SendStatus;

use crate::stack::*;
use crate::support::*;

/// Posts a send that the client gives up on after `patience`.
async fn send_and_hang_up(stack: &Stack, body: Value, key: Option<&str>, patience: Duration) {
    let http = reqwest::Client::builder()
        .timeout(patience)
        .build()
        .unwrap();
    let mut req = http
        .post(stack.baton.url("/v21.0/me/messages"))
        .bearer_auth("baton-bot")
        .json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let res = req.send().await;
    assert!(
        res.as_ref().is_err_and(|e| e.is_timeout()),
        "the client hung up before the answer: {res:?}"
    );
}

/// Waits until `n` sends have a recorded outcome; returns the outcomes.
async fn outcomes(stack: &Stack, n: usize) -> Vec<SendStatus> {
    stack
        .baton
        .running
        .state
        .projections
        .wait_until(|s| {
            let done: Vec<SendStatus> = s
                .sends
                .values()
                .map(|r| r.status.clone())
                .filter(|st| *st != SendStatus::Pending)
                .collect();
            (done.len() >= n).then_some(done)
        })
        .await
        .expect("the projections follow the log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_does_not_stop_its_send() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    // Meta holds its answer until released; the client gives up first.
    stack.hold_next_answer("messages").await;
    send_and_hang_up(
        &stack,
        text("u1", "still sent"),
        None,
        Duration::from_millis(300),
    )
    .await;
    stack.ctl.release_held().await.unwrap();
    let done = outcomes(&stack, 1).await;
    assert!(
        matches!(done.as_slice(), [SendStatus::Sent { .. }]),
        "{done:?}"
    );
    let recorded: Vec<SendOutcome> = stack.baton.send_outcomes().await;
    assert!(
        matches!(recorded.as_slice(), [SendOutcome::Sent { .. }]),
        "Meta's answer is the outcome: {recorded:?}"
    );
    stack.ctl.wait_deliveries().await.unwrap();
    assert_eq!(stack.page_messages("u1").await, ["still sent"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_accepted_before_a_stop_are_resumed_by_the_worker_after_the_restart() {
    // One call allowed now, the next in 1000 s: the rest wait in the outbox.
    let slow = Tuning {
        rate: 0.001,
        burst: 1.0,
        ..Tuning::default()
    };
    let stack = Stack::start_tuned(Mode::ConversationRouting, slow).await;
    stack.user_says("u1", "hello").await;
    stack.user_says("u2", "hello").await;
    let (status, _) = stack.send("baton-bot", text("u1", "first")).await;
    assert_eq!(status, 200);
    let patience = Duration::from_millis(300);
    send_and_hang_up(&stack, text("u1", "second"), Some("k-2"), patience).await;
    send_and_hang_up(&stack, text("u2", "third"), None, patience).await;
    let open = stack
        .baton
        .running
        .state
        .projections
        .read()
        .open_sends
        .len();
    assert_eq!(open, 2, "accepted, durable, waiting for the page's rate");
    assert_eq!(stack.baton.count("SendAttempted").await, 1);

    let stack = stack.restart_baton(Tuning::default()).await;
    let done = outcomes(&stack, 3).await;
    assert!(
        done.iter().all(|s| matches!(s, SendStatus::Sent { .. })),
        "{done:?}"
    );
    stack.ctl.wait_deliveries().await.unwrap();
    assert_eq!(stack.page_messages("u1").await, ["first", "second"]);
    assert_eq!(stack.page_messages("u2").await, ["third"]);
    assert_eq!(
        stack.baton.count("SendAttempted").await,
        3,
        "each send attempted once"
    );
    // The app's retry with its key gets the outcome the worker recorded.
    let (status, body) = stack
        .send_with_key("baton-bot", text("u1", "second"), Some("k-2"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["message_id"].is_string(), "{body}");
    assert_eq!(stack.page_messages("u1").await, ["first", "second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_retried_while_in_flight_waits_for_the_same_outcome() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack
        .ctl
        .add_fault(&FaultSpec::Delay {
            count: 1,
            endpoint: Some("messages".into()),
            millis: Some(300),
        })
        .await
        .unwrap();
    let body = text("u1", "once");
    let (first, second) = tokio::join!(
        stack.send_with_key("baton-bot", body.clone(), Some("same")),
        async {
            // The retry comes while the first is held at Meta.
            stack
                .baton
                .running
                .state
                .projections
                .wait_until(|s| {
                    s.open_sends()
                        .any(|(_, _, o)| o.attempts == 1)
                        .then_some(())
                })
                .await;
            stack
                .send_with_key("baton-bot", body.clone(), Some("same"))
                .await
        }
    );
    assert_eq!(first.0, 200, "{first:?}");
    assert_eq!(first, second, "the retry gets the first send's answer");
    assert_eq!(stack.page_messages("u1").await, ["once"]);
}
