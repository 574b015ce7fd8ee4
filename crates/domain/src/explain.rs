//! Plain-language lines for events, for timelines and audits: what happened
//! and why, in one sentence. Pure formatting; no rule is decided here.

use crate::commands::Command;
use crate::events::{
    ControlView, DriftEvidence, Event, FactOrigin, GraphOutcome, HandoverNotice, InboundEvent,
    SendOutcome, WindowBasis,
};

fn evidence(e: &DriftEvidence) -> String {
    match e {
        DriftEvidence::MessagingDelivery { app } => {
            format!("{app} received a user event on messaging")
        }
        DriftEvidence::StandbyDelivery { app } => format!("{app} received a user event on standby"),
        DriftEvidence::Echo { app, .. } => format!("{app} sent a message to the thread"),
        DriftEvidence::HandoverWebhook { webhook } => {
            format!("a {webhook} webhook named another previous owner")
        }
        DriftEvidence::GraphRefusal { code, subcode, .. } => format!(
            "Meta refused a call with {code}{}",
            subcode.map(|s| format!("/{s}")).unwrap_or_default()
        ),
        DriftEvidence::ThreadOwnerAnswer => "Meta's thread_owner answered".to_owned(),
        DriftEvidence::CallAnswer { command_id } => {
            format!("Meta accepted call {command_id}")
        }
    }
}

fn view(v: &ControlView) -> String {
    match v {
        ControlView::Idle => "idle".to_owned(),
        ControlView::Owner { app } => format!("owned by {app}"),
        ControlView::Unknown => "owner unknown".to_owned(),
    }
}

fn origin(o: &FactOrigin) -> String {
    match o {
        FactOrigin::Webhook { app } => format!("Meta's webhook to {app}"),
        FactOrigin::Call { call_id } => format!("Baton's call {call_id}, accepted by Meta"),
    }
}

fn command(c: &Command) -> String {
    match c {
        Command::PassThreadControl { app, target, .. } => match target {
            Some(t) => format!("{app} asked to pass control to {t}"),
            None => format!("{app} asked to pass control to the default app"),
        },
        Command::TakeThreadControl { app, .. } => format!("{app} asked to take control"),
        Command::RequestThreadControl { app, .. } => format!("{app} asked to request control"),
        Command::ReleaseThreadControl { app, .. } => format!("{app} asked to release control"),
        Command::ExtendThreadControl {
            app, duration_secs, ..
        } => {
            format!("{app} asked to extend control by {duration_secs} s")
        }
        Command::SendMessage(s) => format!("{} asked to send {}", s.app, s.send_id),
    }
}

/// One line describing the event.
pub fn explain(event: &Event) -> String {
    match event {
        Event::WebhookDeliveryReceived(e) => format!(
            "webhook delivery {} for app {} received",
            e.delivery_id, e.app
        ),
        Event::MessagingEventReceived(e) => {
            let what = match &e.event {
                InboundEvent::Handover { notice } => match notice {
                    HandoverNotice::Passed { from, to, .. } => format!(
                        "pass_thread_control webhook: {} → {to}",
                        from.as_ref().map_or("idle".to_owned(), |f| f.to_string())
                    ),
                    HandoverNotice::Taken { from, by, .. } => format!(
                        "take_thread_control webhook: {by} took it from {}",
                        from.as_ref().map_or("idle".to_owned(), |f| f.to_string())
                    ),
                    HandoverNotice::Requested { by, .. } => {
                        format!("request_thread_control webhook: {by} asks for control")
                    }
                },
                InboundEvent::Echo { app_id, .. } => format!(
                    "echo of a message sent by {}",
                    app_id
                        .as_ref()
                        .map_or("an unknown app".to_owned(), |a| a.to_string())
                ),
                other => format!("user {}", other.kind_name()),
            };
            let window = match &e.window {
                Some(w) => format!("; window open until {}", w.closes_at),
                None => String::new(),
            };
            format!(
                "{what} delivered to {} on {}{window}",
                e.delivery.app,
                e.delivery.channel.name()
            )
        }
        Event::MessagingEventCopyReceived(e) => format!(
            "copy of {} delivered to {} on {}",
            e.dedupe_key,
            e.delivery.app,
            e.delivery.channel.name()
        ),
        Event::UnattributedItemReceived(e) => {
            format!("an item naming no thread of page {} kept verbatim", e.page)
        }
        Event::PolicyEnforcementReceived(e) => format!(
            "Meta's policy enforcement on page {}: {:?}{}",
            e.page,
            e.action,
            e.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        Event::ThreadRouted(e) => format!("user activity on an idle thread: routed to {}", e.owner),
        Event::ThreadControlPassed(e) => format!(
            "control passed from {} to {} ({})",
            e.from.as_ref().map_or("idle".to_owned(), |f| f.to_string()),
            e.to,
            origin(&e.origin)
        ),
        Event::ThreadControlTaken(e) => format!(
            "control taken by {} from {} ({})",
            e.by,
            e.from.as_ref().map_or("idle".to_owned(), |f| f.to_string()),
            origin(&e.origin)
        ),
        Event::ThreadControlRequested(e) => format!(
            "{} requested control{}{} ({})",
            e.by,
            e.told
                .as_ref()
                .map(|t| format!("; {t} was told"))
                .unwrap_or_default(),
            if e.granted {
                "; granted at once (zero-config)"
            } else {
                ""
            },
            origin(&e.origin)
        ),
        Event::ThreadControlReleased(e) => format!(
            "{} released control: the thread is idle ({})",
            e.by,
            origin(&e.origin)
        ),
        Event::ThreadControlExtended(e) => format!(
            "{} extended control until {} ({})",
            e.by,
            e.until,
            origin(&e.origin)
        ),
        Event::ThreadControlExpired(e) => format!(
            "control of {} lapsed at {} after 24 h without user activity: the thread is idle",
            e.owner, e.expired_at
        ),
        Event::AppRolesChanged(e) => format!("app roles changed on page {}", e.page),
        Event::OwnershipDriftDetected(e) => format!(
            "drift: the ledger had the thread {}, but {}; now {}",
            view(&e.ledger),
            evidence(&e.evidence),
            view(&e.observed)
        ),
        Event::ControlCallAccepted(e) => format!(
            "{}: accepted ({:?}, thread {})",
            command(&e.command),
            e.basis.rule,
            view(&e.basis.before)
        ),
        Event::ControlCallCompleted(e) => match &e.outcome {
            GraphOutcome::Succeeded => format!("Meta accepted call {}", e.call_id),
            GraphOutcome::Failed { error } => format!(
                "Meta refused call {} with {}{}: {}",
                e.call_id,
                error.code,
                error.subcode.map(|s| format!("/{s}")).unwrap_or_default(),
                error.message
            ),
            GraphOutcome::Unknown { reason } => {
                format!("no answer from Meta for call {}: {reason}", e.call_id)
            }
        },
        Event::SendAccepted(e) => {
            let basis = match &e.basis.window {
                WindowBasis::StandardWindow { closes_at, .. } => {
                    format!("inside the window until {closes_at}")
                }
                WindowBasis::HumanAgent { closes_at, .. } => {
                    format!("HUMAN_AGENT by a human until {closes_at}")
                }
                WindowBasis::MessageTag { tag, .. } => format!("tag {tag}"),
                WindowBasis::OneTimeToken { token, .. } => {
                    format!("one-time notification token {token}")
                }
                WindowBasis::UserRef => "first message to a plugin user_ref".to_owned(),
            };
            format!(
                "send {} by {} accepted: {:?}, {basis}",
                e.send.send_id, e.send.app, e.basis.owner
            )
        }
        Event::CommandRefused(e) => format!(
            "{}: refused with {}{} — {}",
            command(&e.command),
            e.rejection.code,
            e.rejection
                .subcode
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            e.rejection.reason
        ),
        Event::SendOutcomeRecorded(e) => match &e.outcome {
            SendOutcome::Sent { message_id, .. } => {
                format!("send {} delivered to Meta as {message_id}", e.send_id)
            }
            SendOutcome::Failed { error } => format!(
                "send {} failed at Meta with {}{}: {}",
                e.send_id,
                error.code,
                error.subcode.map(|s| format!("/{s}")).unwrap_or_default(),
                error.message
            ),
            SendOutcome::Unknown { reason } => {
                format!("send {} outcome unknown: {reason}", e.send_id)
            }
            SendOutcome::SettledByEcho { mid } => {
                format!("send {} confirmed by its echo {mid}", e.send_id)
            }
        },
        Event::OwnershipConfirmed(e) => format!(
            "Meta's thread_owner confirmed the ledger: the thread {}",
            view(&e.owner)
        ),
        Event::StaleEvidenceIgnored(e) => format!(
            "older evidence ({}) that {} kept but not applied: the ledger's {} since {} is newer; Baton asks Meta",
            evidence(&e.evidence),
            view(&e.claimed),
            view(&e.ledger),
            e.ledger_since
        ),
        Event::SendAttempted(e) => {
            format!("send {} handed to Meta (attempt {})", e.send_id, e.attempt)
        }
        Event::SendRetryScheduled(e) => format!(
            "send {} not sent by Meta on attempt {} ({}{}: {}); tried again at {}",
            e.send_id,
            e.attempt,
            e.error.code,
            e.error.subcode.map(|s| format!("/{s}")).unwrap_or_default(),
            e.error.message,
            e.retry_at
        ),
        Event::OneTimeTokenIssued(e) => format!(
            "one-time notification token issued, valid until {}",
            e.expires_at
        ),
        Event::OneTimeTokenConsumed(e) => {
            format!("one-time notification token used by send {}", e.send_id)
        }
        Event::OneTimeTokenReleased(e) => format!(
            "one-time notification token given back: Meta refused send {} for certain",
            e.send_id
        ),
        Event::DispatchDeadLettered(e) => format!(
            "delivery of position {} to {}'s backend dead-lettered after {} attempts: {}",
            e.position, e.app, e.attempts, e.last_error
        ),
        Event::DispatchRedriveRequested(e) => format!(
            "{} asked to deliver position {} to {} again",
            e.by, e.position, e.app
        ),
        Event::MessengerProfileChanged(e) => match &e.change {
            crate::events::ProfileChange::Set { properties } => {
                let keys: Vec<&str> = properties
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                format!(
                    "{} set the page's Messenger Profile: {}",
                    e.app,
                    keys.join(", ")
                )
            }
            crate::events::ProfileChange::Delete { fields } => format!(
                "{} removed from the page's Messenger Profile: {}",
                e.app,
                fields.join(", ")
            ),
        },
        Event::AttachmentUploaded(e) => format!(
            "{} uploaded a reusable {} attachment ({}): id {}",
            e.app,
            e.kind.as_deref().unwrap_or("untyped"),
            match (&e.url, &e.sha256) {
                (Some(url), _) => format!("from {url}"),
                (None, Some(sha)) => format!("{} bytes, sha256 {sha}", e.bytes),
                (None, None) => format!("{} bytes", e.bytes),
            },
            e.attachment_id
        ),
        Event::ThreadMetadataPassed(e) => format!(
            "{}, controlling the thread, shared metadata with the page's other apps: {:?}",
            e.app, e.metadata
        ),
        Event::PrivateReplySent(e) => format!(
            "{} replied privately to comment {} (message {})",
            e.app,
            e.comment_id,
            e.message_id.as_deref().unwrap_or("?")
        ),
        Event::ContentErased(e) => format!(
            "the person's content on this page was erased at the request of {} (request {}); \
             who owned the thread and why stays on record",
            e.by, e.request
        ),
        Event::ContentExpired(e) => format!(
            "content recorded before {} was erased: the page keeps content {} days",
            e.before, e.retention_days
        ),
        Event::AppSubscriptionLost(e) => format!(
            "Meta no longer lists {} as subscribed to page {}'s webhooks: it gets no webhook \
             for the page until it is subscribed again",
            e.app, e.page
        ),
        Event::AppSubscriptionRestored(e) => match &e.source {
            crate::events::SubscriptionSource::Check => format!(
                "Meta lists {} as subscribed to page {}'s webhooks again ({})",
                e.app,
                e.page,
                e.fields.join(", ")
            ),
            crate::events::SubscriptionSource::Resubscribe { by } => format!(
                "{} was subscribed to page {}'s webhooks again at the request of {by} ({})",
                e.app,
                e.page,
                e.fields.join(", ")
            ),
        },
        Event::PageTokenRejected(e) => format!(
            "Meta refused {}'s page token for page {} on {} with {}{}: {}; \
             every call with it fails until the token is replaced",
            e.app,
            e.page,
            e.edge,
            e.code,
            e.subcode.map(|s| format!("/{s}")).unwrap_or_default(),
            e.message
        ),
        Event::PageTokenAccepted(e) => format!(
            "Meta accepts {}'s page token for page {} again ({})",
            e.app, e.page, e.edge
        ),
    }
}
