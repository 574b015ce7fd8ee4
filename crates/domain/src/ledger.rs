//! The thread ledger: the state of one thread (ownership, pending requests,
//! the messaging window, One-Time Notification tokens), and `apply`, which
//! folds one event into it. `apply` holds no rules and never fails: every
//! event says what changed, and unknown combinations are simply recorded.

use serde::{Deserialize, Serialize};

use crate::events::{ControlView, Event, InboundEvent, WindowGrant};
use crate::ids::{AppId, CommandId, ThreadKey, Timestamp};

/// Who controls the thread, as last recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Control {
    /// Nobody: the default app (or legacy primary) answers, or in zero-config anyone.
    Idle,
    /// An app holds control since `since`; it lapses 24 h after the later of
    /// `since` and the last user action, or at `extended_until` if that is later
    /// (see `rules::control_expiry`).
    Active {
        owner: AppId,
        since: Timestamp,
        #[serde(default)]
        extended_until: Option<Timestamp>,
    },
    /// Meta contradicted the ledger without saying who owns the thread.
    Unknown { since: Timestamp },
}

impl Control {
    pub fn view(&self) -> ControlView {
        match self {
            Control::Idle => ControlView::Idle,
            Control::Active { owner, .. } => ControlView::Owner { app: owner.clone() },
            Control::Unknown { .. } => ControlView::Unknown,
        }
    }

    pub fn owner(&self) -> Option<&AppId> {
        match self {
            Control::Active { owner, .. } => Some(owner),
            _ => None,
        }
    }
}

/// A `request_thread_control` waiting for the holder to honour it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub app: AppId,
    pub at: Timestamp,
    #[serde(default)]
    pub metadata: Option<String>,
}

/// A One-Time Notification token for this thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenState {
    pub token: String,
    #[serde(default)]
    pub payload: Option<String>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    #[serde(default)]
    pub consumed: Option<TokenUse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUse {
    pub at: Timestamp,
    pub send_id: CommandId,
}

/// A call that may hand the thread to another app, forwarded to Meta and not
/// yet answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallInFlight {
    pub call_id: crate::ids::CommandId,
    pub by: AppId,
    pub hands: Hands,
    /// When Baton accepted the call.
    pub accepted_at: Timestamp,
    /// The thread's version right after the acceptance: a control change
    /// folded after it is newer news than the call's answer.
    #[serde(default)]
    pub accepted_version: u64,
    /// When it last left for Meta, if later than its acceptance: a send's
    /// latest attempt (the outbox may hold a send for minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_at: Option<Timestamp>,
}

/// Whom an in-flight call hands the thread to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Hands {
    /// A pass to `target` (`None`: the mode's default target).
    Pass { target: Option<AppId> },
    /// A take: to the caller.
    Take,
}

impl CallInFlight {
    /// The in-flight record of a command, for the commands that move control.
    pub fn of(
        command: &crate::commands::Command,
        accepted_at: Timestamp,
        accepted_version: u64,
    ) -> Option<Self> {
        use crate::commands::{Command, InlineControl};
        let (call_id, by, hands) = match command {
            Command::PassThreadControl {
                call_id,
                app,
                target,
                ..
            } => (
                call_id,
                app,
                Hands::Pass {
                    target: target.clone(),
                },
            ),
            Command::TakeThreadControl { call_id, app, .. } => (call_id, app, Hands::Take),
            Command::SendMessage(send) => match &send.thread_control {
                Some(InlineControl::Pass { app_id }) => (
                    &send.send_id,
                    &send.app,
                    Hands::Pass {
                        target: app_id.clone(),
                    },
                ),
                _ => return None,
            },
            _ => return None,
        };
        Some(Self {
            call_id: call_id.clone(),
            by: by.clone(),
            hands,
            accepted_at,
            accepted_version,
            left_at: None,
        })
    }

    /// Whether it left for Meta lately enough (`policy::OWN_CALL_ANSWER_WITHIN`
    /// before `now`) that Meta's news of it may still be on its way; a call
    /// whose answer never came (a crash before it was recorded) stops
    /// counting then.
    pub fn lately(&self, now: Timestamp) -> bool {
        let left = self
            .left_at
            .unwrap_or(self.accepted_at)
            .max(self.accepted_at);
        now <= left.plus(crate::policy::OWN_CALL_ANSWER_WITHIN)
    }
}

/// The state of one thread, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadLedger {
    pub key: ThreadKey,
    pub control: Control,
    pub pending_requests: Vec<PendingRequest>,
    /// The latest user action that opened or refreshed the window.
    pub last_user_action: Option<Timestamp>,
    /// The widest window granted so far (its `closes_at` only grows).
    pub window: Option<WindowGrant>,
    /// A Click-to-Messenger ad click into the thread (a referral or a
    /// postback from an ad) not yet followed by a message: the user's first
    /// message after it opens the 7-day window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_click_at: Option<Timestamp>,
    pub tokens: Vec<TokenState>,
    /// When control last changed hands (or lapsed): older evidence of who
    /// controls the thread, such as a late echo, says nothing about now.
    #[serde(default)]
    pub control_changed_at: Option<Timestamp>,
    /// Whether `control_changed_at` is Meta's time (a webhook, a routed
    /// message) rather than Baton's (its own call's answer, expiry, drift):
    /// Meta's clock may run ahead of Baton's, so only a comparison across
    /// the two clocks needs the skew tolerance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub control_changed_on_meta_clock: bool,
    /// The thread's version at the last control change (the log's order,
    /// whatever the clocks say).
    #[serde(default)]
    pub control_changed_version: u64,
    /// When the person's content on this page was last erased: evidence
    /// Meta timed before it that arrives later (a late copy, a retry) is
    /// recorded without its content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<Timestamp>,
    /// When Meta last said who owns the thread: its `thread_owner` answer,
    /// its answer to a control call, a handover webhook, its routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<Timestamp>,
    /// Thread-control calls Baton forwarded whose answer is not recorded yet
    /// (a send's inline control included): Meta's webhook may come first,
    /// and evidence that matches one corroborates it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls_in_flight: Vec<CallInFlight>,
    /// How many events of this thread have been applied (the stream version).
    pub version: u64,
}

impl ThreadLedger {
    pub fn new(key: ThreadKey) -> Self {
        Self {
            key,
            control: Control::Idle,
            pending_requests: Vec::new(),
            last_user_action: None,
            window: None,
            ad_click_at: None,
            tokens: Vec::new(),
            control_changed_at: None,
            control_changed_on_meta_clock: false,
            control_changed_version: 0,
            erased_at: None,
            confirmed_at: None,
            calls_in_flight: Vec::new(),
            version: 0,
        }
    }

    /// Folds a whole history.
    pub fn from_events<'a>(key: ThreadKey, events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut ledger = Self::new(key);
        for event in events {
            ledger.apply(event);
        }
        ledger
    }

    /// Whether the ledger holds any of the person's content: what apps
    /// passed each other about them (a pending request's metadata) or what
    /// they opted in to (a token's payload).
    pub fn holds_content(&self) -> bool {
        self.pending_requests.iter().any(|r| r.metadata.is_some())
            || self.tokens.iter().any(|t| t.payload.is_some())
    }

    /// Drops the person's content the ledger holds ([`Self::holds_content`]).
    pub fn forget_content(&mut self) {
        for request in &mut self.pending_requests {
            request.metadata = None;
        }
        for token in &mut self.tokens {
            token.payload = None;
        }
    }

    pub fn token(&self, token: &str) -> Option<&TokenState> {
        self.tokens.iter().find(|t| t.token == token)
    }

    /// Folds one event. Events of other threads and page-level events are ignored.
    pub fn apply(&mut self, event: &Event) {
        match event.thread() {
            Some(thread) if *thread == self.key => {}
            _ => return,
        }
        self.version += 1;
        match event {
            Event::MessagingEventReceived(e) => {
                match &e.event {
                    InboundEvent::Referral { referral }
                    | InboundEvent::Postback {
                        referral: Some(referral),
                        ..
                    } if referral.is_ad() && !e.distrusted_time => {
                        self.ad_click_at = Some(self.ad_click_at.map_or(e.at, |c| c.max(e.at)));
                    }
                    InboundEvent::Message { .. } if self.ad_click_at.is_some_and(|c| c <= e.at) => {
                        self.ad_click_at = None;
                    }
                    _ => {}
                }
                if let Some(grant) = e.window {
                    self.last_user_action = Some(match self.last_user_action {
                        Some(last) => last.max(grant.opened_at),
                        None => grant.opened_at,
                    });
                    let wider = match self.window {
                        Some(current) => grant.closes_at > current.closes_at,
                        None => true,
                    };
                    if wider {
                        self.window = Some(grant);
                    }
                }
            }
            Event::ThreadRouted(e) => {
                self.give_control(e.owner.clone(), e.at, true);
                self.confirmed(e.at);
            }
            Event::ThreadControlPassed(e) => {
                self.give_control(e.to.clone(), e.at, e.origin.is_webhook());
                self.confirmed(e.at);
            }
            Event::ThreadControlTaken(e) => {
                self.give_control(e.by.clone(), e.at, e.origin.is_webhook());
                self.confirmed(e.at);
            }
            Event::ThreadControlRequested(e) => {
                if e.granted {
                    self.give_control(e.by.clone(), e.at, e.origin.is_webhook());
                } else {
                    self.pending_requests.retain(|r| r.app != e.by);
                    self.pending_requests.push(PendingRequest {
                        app: e.by.clone(),
                        at: e.at,
                        metadata: e.metadata.clone(),
                    });
                }
            }
            Event::ThreadControlReleased(e) => {
                self.control = Control::Idle;
                self.pending_requests.clear();
                self.control_changed_at = Some(e.at);
                self.control_changed_version = self.version;
                self.control_changed_on_meta_clock = e.origin.is_webhook();
                self.confirmed(e.at);
            }
            Event::ThreadControlExpired(e) => {
                self.control = Control::Idle;
                self.pending_requests.clear();
                self.control_changed_at = Some(e.expired_at);
                self.control_changed_version = self.version;
                self.control_changed_on_meta_clock = false;
            }
            Event::ThreadControlExtended(e) => match &mut self.control {
                Control::Active { extended_until, .. } => *extended_until = Some(e.until),
                _ => {
                    self.control = Control::Active {
                        owner: e.by.clone(),
                        since: e.at,
                        extended_until: Some(e.until),
                    }
                }
            },
            Event::OwnershipDriftDetected(e) => {
                if e.evidence == crate::events::DriftEvidence::ThreadOwnerAnswer {
                    self.confirmed(e.at);
                }
                self.follow_drift(e);
            }
            Event::OneTimeTokenIssued(e) => {
                if self.token(&e.token).is_none() {
                    self.tokens.push(TokenState {
                        token: e.token.clone(),
                        payload: e.payload.clone(),
                        issued_at: e.at,
                        expires_at: e.expires_at,
                        consumed: None,
                    });
                }
            }
            Event::OneTimeTokenConsumed(e) => {
                if let Some(t) = self.tokens.iter_mut().find(|t| t.token == e.token) {
                    t.consumed.get_or_insert(TokenUse {
                        at: e.at,
                        send_id: e.send_id.clone(),
                    });
                }
            }
            Event::OneTimeTokenReleased(e) => {
                if let Some(t) = self.tokens.iter_mut().find(|t| t.token == e.token) {
                    if t.consumed.as_ref().is_some_and(|u| u.send_id == e.send_id) {
                        t.consumed = None;
                    }
                }
            }
            Event::OwnershipConfirmed(e) => self.confirmed(e.at),
            Event::ControlCallAccepted(e) => {
                self.calls_in_flight
                    .extend(CallInFlight::of(&e.command, e.at, self.version))
            }
            Event::ControlCallCompleted(e) => {
                self.calls_in_flight.retain(|c| c.call_id != e.call_id)
            }
            Event::SendAccepted(e) => self.calls_in_flight.extend(CallInFlight::of(
                &crate::commands::Command::SendMessage(e.send.clone()),
                e.at,
                self.version,
            )),
            // The minute a call in flight counts for runs from its latest
            // attempt (see `CallInFlight::lately`).
            Event::SendAttempted(e) => {
                if let Some(call) = self
                    .calls_in_flight
                    .iter_mut()
                    .find(|c| c.call_id == e.send_id)
                {
                    call.left_at = Some(call.left_at.map_or(e.at, |l| l.max(e.at)));
                }
            }
            Event::SendOutcomeRecorded(e) => {
                // An unknown outcome may still be settled by the echo (and
                // its inline control): the call stays in flight until then.
                if !matches!(e.outcome, crate::events::SendOutcome::Unknown { .. }) {
                    self.calls_in_flight.retain(|c| c.call_id != e.send_id)
                }
            }
            // Decisions and outcomes are history, not state: the outbox and the
            // timeline are projections of their own.
            Event::MessagingEventCopyReceived(_)
            | Event::CommandRefused(_)
            | Event::SendRetryScheduled(_)
            | Event::StaleEvidenceIgnored(_)
            | Event::WebhookDeliveryReceived(_)
            | Event::UnattributedItemReceived(_)
            | Event::PolicyEnforcementReceived(_)
            | Event::AppRolesChanged(_)
            | Event::DispatchDeadLettered(_)
            | Event::DispatchRedriveRequested(_)
            | Event::MessengerProfileChanged(_)
            | Event::AttachmentUploaded(_)
            | Event::ThreadMetadataPassed(_)
            | Event::PrivateReplySent(_)
            | Event::ContentExpired(_)
            | Event::AppSubscriptionLost(_)
            | Event::AppSubscriptionRestored(_)
            | Event::PageTokenRejected(_)
            | Event::PageTokenAccepted(_) => {}
            // What the apps said to each other about the person goes too.
            Event::ContentErased(e) => {
                self.forget_content();
                self.erased_at = Some(self.erased_at.map_or(e.at, |t| t.max(e.at)));
            }
        }
    }

    fn follow_drift(&mut self, e: &crate::events::OwnershipDriftDetected) {
        match &e.observed {
            ControlView::Idle => {
                self.control = Control::Idle;
                self.pending_requests.clear();
                self.control_changed_at = Some(e.at);
                self.control_changed_version = self.version;
                self.control_changed_on_meta_clock = false;
            }
            ControlView::Owner { app } => self.give_control(app.clone(), e.at, false),
            ControlView::Unknown => {
                self.control = Control::Unknown { since: e.at };
                self.control_changed_at = Some(e.at);
                self.control_changed_version = self.version;
                self.control_changed_on_meta_clock = false;
            }
        }
    }

    fn confirmed(&mut self, at: Timestamp) {
        self.confirmed_at = Some(self.confirmed_at.map_or(at, |c| c.max(at)));
    }

    fn give_control(&mut self, owner: AppId, at: Timestamp, meta_clock: bool) {
        self.pending_requests.clear();
        self.control_changed_at = Some(at);
        self.control_changed_version = self.version;
        self.control_changed_on_meta_clock = meta_clock;
        self.control = Control::Active {
            owner,
            since: at,
            extended_until: None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ContentErased, OneTimeTokenIssued};
    use crate::ids::{PageId, Psid};

    #[test]
    fn an_erasure_drops_the_opt_in_payloads_the_ledger_holds() {
        let key = ThreadKey::new(PageId::parse("1").unwrap(), Psid::parse("u").unwrap());
        let at = Timestamp::from_millis(5);
        let mut ledger = ThreadLedger::from_events(
            key.clone(),
            &[Event::OneTimeTokenIssued(OneTimeTokenIssued {
                thread: key.clone(),
                at,
                token: "otn".into(),
                payload: Some("size 9".into()),
                expires_at: Timestamp::from_millis(10),
            })],
        );
        assert!(ledger.holds_content());
        ledger.apply(&Event::ContentErased(ContentErased {
            thread: key,
            at,
            by: "cli".into(),
            request: "r".into(),
        }));
        assert!(!ledger.holds_content());
        assert_eq!(ledger.tokens[0].payload, None);
        assert_eq!(ledger.tokens[0].token, "otn", "the token itself stays");
    }
}
