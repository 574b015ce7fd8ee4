//! A send's lifecycle as a state machine with no I/O (in the style of
//! quinn-proto): it is rebuilt from the projection's [`OpenSend`], says what
//! comes next ([`SendMachine::poll`]), and turns Meta's answer into the next
//! step ([`SendMachine::on_answer`]). The outbox worker carries the steps
//! out, recording each before acting on it. A live send, a send resumed after
//! a restart and a send waiting for a retry run through the same code.

use std::time::Duration;

use domain::events::{GraphError, SendOutcome};
use domain::graph::{classify, AnswerClass};
use domain::Timestamp;

use crate::graph_client::GraphAnswer;
use crate::projections::OpenSend;

/// How the outbox retries: from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts at most, the first included.
    pub max_attempts: u32,
    /// The first backoff; it doubles with each attempt.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// The wait after `attempt` failed as "not sent".
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff
            .saturating_mul(1 << attempt.min(10))
            .min(Duration::from_secs(300))
    }
}

/// What the outbox does next with a pending send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Record attempt `attempt`, then call Meta (after the page's rate limit).
    Attempt { attempt: u32 },
    /// Nothing before `retry_at` (Meta said "not sent" and to wait).
    WaitUntil { retry_at: Timestamp },
    /// Record this outcome: the last attempt left and its answer was lost
    /// (Baton stopped during the call), so Meta may or may not have it.
    Settle(SendOutcome),
}

/// What Meta's answer to an attempt leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAnswer {
    /// Record `SendRetryScheduled`, wait `after`; hold the whole page that
    /// long when Meta throttled it.
    Retry {
        error: GraphError,
        after: Duration,
        pause_page: bool,
    },
    /// Record the outcome.
    Settle(SendOutcome),
}

/// A pending send's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendMachine {
    attempts: u32,
    answered: bool,
    retry_at: Option<Timestamp>,
    policy: RetryPolicy,
}

impl SendMachine {
    /// The machine for a pending send, from what the log says of it.
    pub fn resume(open: &OpenSend, policy: RetryPolicy) -> Self {
        Self {
            attempts: open.attempts,
            answered: open.answered,
            retry_at: open.retry_at,
            policy,
        }
    }

    /// What to do next. Only called for a send no attempt of this process is
    /// carrying: an attempt without an answer is then one a stop interrupted.
    pub fn poll(&self) -> Next {
        if !self.answered {
            return Next::Settle(SendOutcome::Unknown {
                reason: "Baton stopped before Meta's answer was recorded".to_owned(),
            });
        }
        match self.retry_at {
            Some(retry_at) if self.attempts > 0 => Next::WaitUntil { retry_at },
            _ => Next::Attempt {
                attempt: self.attempts + 1,
            },
        }
    }

    /// Meta's answer to `attempt`, classified by the domain's table: retry
    /// only what Meta says was not sent, and never past the attempt budget.
    pub fn on_answer(&self, attempt: u32, answer: &GraphAnswer) -> AfterAnswer {
        match answer {
            GraphAnswer::Ok(body) => AfterAnswer::Settle(SendOutcome::Sent {
                message_id: body["message_id"].as_str().unwrap_or_default().to_owned(),
                recipient_id: body["recipient_id"].as_str().map(str::to_owned),
            }),
            GraphAnswer::Unknown(reason) => AfterAnswer::Settle(SendOutcome::Unknown {
                reason: reason.clone(),
            }),
            GraphAnswer::Err { error, .. } => {
                let class = classify(error);
                let retryable = matches!(class, AnswerClass::RateLimited | AnswerClass::NotSent);
                if retryable && attempt < self.policy.max_attempts.max(1) {
                    return AfterAnswer::Retry {
                        error: error.clone(),
                        after: self.policy.backoff(attempt),
                        pause_page: class == AnswerClass::RateLimited,
                    };
                }
                if class == AnswerClass::MaybeSent {
                    return AfterAnswer::Settle(SendOutcome::Unknown {
                        reason: format!(
                            "Meta answered {} but the message may have been sent",
                            error.message
                        ),
                    });
                }
                AfterAnswer::Settle(SendOutcome::Failed {
                    error: error.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{AppId, CommandId, Recipient, SendContent, SendMessage};
    use serde_json::{json, Value};

    fn open(attempts: u32, answered: bool, retry_at: Option<Timestamp>) -> OpenSend {
        OpenSend {
            accepted_at: 1,
            send: SendMessage {
                send_id: CommandId::parse("s1").unwrap(),
                app: AppId::parse("1").unwrap(),
                recipient: Recipient::Psid(domain::Psid::parse("u").unwrap()),
                messaging_type: None,
                tag: None,
                content: SendContent::Message { metadata: None },
                thread_control: None,
                payload: Value::Null,
                idempotency_key: None,
                graph_version: None,
                request_digest: None,
            },
            attempts,
            answered,
            retry_at,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff: Duration::from_millis(100),
    };

    fn err(code: u32, subcode: Option<u32>) -> GraphAnswer {
        GraphAnswer::Err {
            status: 400,
            error: domain::graph::error(code, subcode, "x"),
            body: Value::Null,
        }
    }

    #[test]
    fn a_new_send_is_attempted_and_an_interrupted_one_is_unknown() {
        let m = SendMachine::resume(&open(0, true, None), POLICY);
        assert_eq!(m.poll(), Next::Attempt { attempt: 1 });
        let m = SendMachine::resume(&open(1, false, None), POLICY);
        assert!(matches!(
            m.poll(),
            Next::Settle(SendOutcome::Unknown { .. })
        ));
        let at = Timestamp::from_millis(5);
        let m = SendMachine::resume(&open(1, true, Some(at)), POLICY);
        assert_eq!(m.poll(), Next::WaitUntil { retry_at: at });
    }

    #[test]
    fn answers_follow_the_domain_table() {
        let m = SendMachine::resume(&open(1, false, None), POLICY);
        assert!(matches!(
            m.on_answer(1, &GraphAnswer::Ok(json!({"message_id": "m1"}))),
            AfterAnswer::Settle(SendOutcome::Sent { .. })
        ));
        assert!(matches!(
            m.on_answer(1, &err(613, None)),
            AfterAnswer::Retry {
                pause_page: true,
                ..
            }
        ));
        assert!(matches!(
            m.on_answer(1, &err(2, None)),
            AfterAnswer::Retry {
                pause_page: false,
                ..
            }
        ));
        // The budget is spent: the last error stands.
        assert!(matches!(
            m.on_answer(3, &err(2, None)),
            AfterAnswer::Settle(SendOutcome::Failed { .. })
        ));
        assert!(matches!(
            m.on_answer(1, &err(1, Some(1_357_046))),
            AfterAnswer::Settle(SendOutcome::Unknown { .. })
        ));
        assert!(matches!(
            m.on_answer(1, &err(10, Some(2_018_278))),
            AfterAnswer::Settle(SendOutcome::Failed { .. })
        ));
        assert!(matches!(
            m.on_answer(1, &GraphAnswer::Unknown("timeout".into())),
            AfterAnswer::Settle(SendOutcome::Unknown { .. })
        ));
    }
}
