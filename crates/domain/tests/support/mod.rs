//! Given / when / then for the domain's rules: fixtures for the three routing
//! modes and a scenario builder that records history through the real rules.
#![allow(dead_code)]

use domain::events::{Channel, DeliveryCopy, HandoverNotice, InboundEvent, Optin, Referral};
use domain::rules::{self, Observation};
use domain::{
    AppId, AppKind, AppProfile, Command, CommandId, Event, Management, MessagingType, Page, PageId,
    Psid, Recipient, Rejection, RejectionKind, RoutingMode, SendContent, SendMessage, Span,
    ThreadKey, ThreadLedger, Timestamp,
};

/// 2026-11-01T09:00:00Z.
pub const T0: Timestamp = Timestamp::from_millis(1_793_523_600_000);

pub fn at(offset: Span) -> Timestamp {
    T0.plus(offset)
}

pub fn hours(n: i64) -> Timestamp {
    at(Span::hours(n))
}

pub fn app(id: &str) -> AppId {
    AppId::parse(id).unwrap()
}

/// The bot: managed, allowed to take control.
pub fn bot() -> AppId {
    app("1001")
}
/// The human inbox app Baton manages.
pub fn human() -> AppId {
    app("1002")
}
/// Another managed bot, not allowed to take.
pub fn other() -> AppId {
    app("1003")
}
pub fn inbox() -> AppId {
    AppId::page_inbox()
}
/// An app that is on no page.
pub fn stranger() -> AppId {
    app("9999")
}

pub fn page_id() -> PageId {
    PageId::parse("5550001").unwrap()
}

pub fn thread() -> ThreadKey {
    ThreadKey::new(page_id(), Psid::parse("user-1").unwrap())
}

fn apps() -> Vec<AppProfile> {
    vec![
        AppProfile::new(bot(), AppKind::Bot, Management::Managed).allowed_to_take(),
        AppProfile::new(human(), AppKind::Human, Management::Managed),
        AppProfile::new(other(), AppKind::Bot, Management::Managed),
        AppProfile::new(inbox(), AppKind::Human, Management::External).allowed_to_take(),
    ]
}

/// Conversation Routing with the bot as default app.
pub fn cr() -> Page {
    Page::new(
        page_id(),
        RoutingMode::ConversationRouting { default_app: bot() },
        apps(),
    )
}

/// Conversation Routing with the Page Inbox (external) as default app.
pub fn cr_inbox_default() -> Page {
    Page::new(
        page_id(),
        RoutingMode::ConversationRouting {
            default_app: inbox(),
        },
        apps(),
    )
}

pub fn zc() -> Page {
    Page::new(page_id(), RoutingMode::ZeroConfig, apps())
}

/// Handover v1 with the bot as primary receiver.
pub fn hop() -> Page {
    Page::new(
        page_id(),
        RoutingMode::HandoverV1 {
            primary: bot(),
            secondaries: vec![human(), other(), inbox()],
        },
        apps(),
    )
}

pub fn all_modes() -> Vec<Page> {
    vec![cr(), zc(), hop()]
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn id() -> CommandId {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    CommandId::parse(format!("cmd-{n}")).unwrap()
}

// ---- Commands. ----

pub fn pass(by: AppId, target: Option<AppId>) -> Command {
    Command::PassThreadControl {
        call_id: id(),
        app: by,
        target,
        metadata: Some("handing over".into()),
    }
}
pub fn take(by: AppId) -> Command {
    Command::TakeThreadControl {
        call_id: id(),
        app: by,
        metadata: None,
    }
}
pub fn request(by: AppId) -> Command {
    Command::RequestThreadControl {
        call_id: id(),
        app: by,
        metadata: Some("please".into()),
    }
}
pub fn release(by: AppId) -> Command {
    Command::ReleaseThreadControl {
        call_id: id(),
        app: by,
        metadata: None,
    }
}
pub fn extend(by: AppId, secs: u64) -> Command {
    Command::ExtendThreadControl {
        call_id: id(),
        app: by,
        duration_secs: secs,
    }
}

pub fn send_msg(
    by: AppId,
    messaging_type: Option<MessagingType>,
    tag: Option<&str>,
) -> SendMessage {
    SendMessage {
        send_id: id(),
        app: by,
        recipient: Recipient::Psid(thread().psid),
        messaging_type,
        tag: tag.map(str::to_owned),
        content: SendContent::Message { metadata: None },
        thread_control: None,
        payload: serde_json::json!({"message": {"text": "hello"}}),
        idempotency_key: None,
        graph_version: None,
        request_digest: None,
    }
}

pub fn reply(by: AppId) -> Command {
    Command::SendMessage(send_msg(by, Some(MessagingType::Response), None))
}

pub fn tagged(by: AppId, tag: &str) -> Command {
    Command::SendMessage(send_msg(by, Some(MessagingType::MessageTag), Some(tag)))
}

pub fn token_send(by: AppId, token: &str) -> Command {
    let mut s = send_msg(by, None, None);
    s.recipient = Recipient::OneTimeToken(token.to_owned());
    Command::SendMessage(s)
}

// ---- Inbound items. ----

pub fn message(mid: &str) -> InboundEvent {
    InboundEvent::Message {
        mid: mid.into(),
        text: Some("hi".into()),
        attachment_types: vec![],
        reply_to: None,
        referral: None,
    }
}

pub fn ad_message(mid: &str) -> InboundEvent {
    InboundEvent::Message {
        mid: mid.into(),
        text: Some("from the ad".into()),
        attachment_types: vec![],
        reply_to: None,
        referral: Some(Referral {
            source: Some("ADS".into()),
            kind: Some("OPEN_THREAD".into()),
            ad_id: Some("ad-7".into()),
            ..Referral::default()
        }),
    }
}

pub fn otn_optin(token: &str) -> InboundEvent {
    InboundEvent::Optin {
        optin: Optin::OneTimeNotification {
            token: token.into(),
            payload: Some("back-in-stock".into()),
        },
    }
}

pub fn echo(mid: &str, sender: AppId) -> InboundEvent {
    InboundEvent::Echo {
        mid: mid.into(),
        app_id: Some(sender),
        metadata: None,
    }
}

/// A scenario: a page, one thread, and the history so far.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub page: Page,
    pub ledger: ThreadLedger,
    pub history: Vec<Event>,
}

impl Scenario {
    pub fn given(page: Page) -> Self {
        Self {
            page,
            ledger: ThreadLedger::new(thread()),
            history: Vec::new(),
        }
    }

    pub fn record(mut self, events: Vec<Event>) -> Self {
        for e in &events {
            self.ledger.apply(e);
            self.page.apply(e);
        }
        self.history.extend(events);
        self
    }

    /// Meta delivers an item to `app` on `channel` (first copy).
    pub fn item(
        self,
        when: Timestamp,
        delivery_app: AppId,
        channel: Channel,
        event: InboundEvent,
    ) -> Self {
        self.item_seen_at(when, when, delivery_app, channel, event)
    }

    /// An item Meta timed `when`, delivered to Baton at `now`.
    pub fn item_seen_at(
        self,
        when: Timestamp,
        now: Timestamp,
        delivery_app: AppId,
        channel: Channel,
        event: InboundEvent,
    ) -> Self {
        let obs = Observation::Item {
            at: when,
            dedupe_key: format!("k-{}", when.millis()),
            delivery: DeliveryCopy {
                app: delivery_app,
                channel,
            },
            event,
            raw: serde_json::json!({"timestamp": when.millis()}),
        };
        let events = rules::observe(&self.ledger, &self.page, obs, now);
        self.record(events)
    }

    /// Another app's copy of an item already recorded (ingress dedupes it
    /// into a copy), observed at `now`.
    pub fn copy(
        self,
        when: Timestamp,
        delivery_app: AppId,
        channel: Channel,
        event: InboundEvent,
        now: Timestamp,
    ) -> Self {
        let obs = Observation::Copy {
            at: when,
            dedupe_key: format!("k-{}", when.millis()),
            delivery: DeliveryCopy {
                app: delivery_app,
                channel,
            },
            event,
            raw: serde_json::json!({"timestamp": when.millis()}),
        };
        let events = rules::observe(&self.ledger, &self.page, obs, now);
        self.record(events)
    }

    /// The user writes; Meta delivers it to whoever answers the thread now.
    pub fn user_message(self, when: Timestamp) -> Self {
        let view = rules::control_at(&self.ledger, &self.page, when);
        let target = rules::answering_app(&view, &self.page)
            .cloned()
            .unwrap_or_else(bot);
        self.item(
            when,
            target,
            Channel::Messaging,
            message(&format!("m-{}", when.millis())),
        )
    }

    pub fn handover(self, when: Timestamp, to_app: AppId, notice: HandoverNotice) -> Self {
        self.item(
            when,
            to_app,
            Channel::Messaging,
            InboundEvent::Handover { notice },
        )
    }

    /// The thread's controller passes it to `to`, through Baton, and Meta
    /// accepts: the confirmed way control changes hands. (A pass webhook
    /// alone, on `to`'s endpoint, takes control away from another app and is
    /// confirmed with Meta first: see `handover`.)
    pub fn passed_to(self, when: Timestamp, to: AppId) -> Self {
        let from = self
            .ledger
            .control
            .owner()
            .cloned()
            .or_else(|| self.page.mode.idle_holder().cloned())
            // Zero-config: any app may pass an idle thread.
            .or_else(|| self.page.apps.keys().find(|a| **a != to).cloned())
            .expect("a thread someone controls or may pass");
        self.done(
            Command::PassThreadControl {
                call_id: domain::CommandId::parse(format!("pass-{}", when.millis())).unwrap(),
                app: from,
                target: Some(to),
                metadata: None,
            },
            when,
        )
    }

    /// Decide and, when accepted, let Meta accept too (record the outcome).
    pub fn done(self, command: Command, when: Timestamp) -> Self {
        let decided = rules::decide(&self.ledger, &self.page, &command, when)
            .unwrap_or_else(|r| panic!("expected {} to be accepted, got {r}", command.name()));
        let s = self.record(decided);
        let settled = match &command {
            Command::SendMessage(send) => rules::settle_send(
                &s.ledger,
                &s.page,
                send,
                &domain::events::SendOutcome::Sent {
                    message_id: "mid.out".into(),
                    recipient_id: None,
                },
                when,
            ),
            c => rules::settle_control(
                &s.ledger,
                &s.page,
                c,
                &domain::events::GraphOutcome::Succeeded,
                when,
            ),
        };
        s.record(settled)
    }

    pub fn when(&self, command: &Command, now: Timestamp) -> Result<Vec<Event>, Rejection> {
        rules::decide(&self.ledger, &self.page, command, now)
    }

    pub fn owner_at(&self, now: Timestamp) -> domain::events::ControlView {
        rules::control_at(&self.ledger, &self.page, now)
    }
}

pub fn owner(app: AppId) -> domain::events::ControlView {
    domain::events::ControlView::Owner { app }
}

#[track_caller]
pub fn assert_refused(
    result: Result<Vec<Event>, Rejection>,
    kind: RejectionKind,
    code: u32,
    subcode: Option<u32>,
) -> Rejection {
    match result {
        Ok(events) => panic!("expected refusal {kind:?}, got accepted: {events:#?}"),
        Err(r) => {
            assert_eq!(r.kind, kind, "wrong refusal: {r}");
            assert_eq!((r.code, r.subcode), (code, subcode), "wrong Meta code: {r}");
            assert!(!r.reason.is_empty());
            r
        }
    }
}

#[track_caller]
pub fn assert_accepted(result: Result<Vec<Event>, Rejection>) -> Vec<Event> {
    match result {
        Ok(events) => {
            assert!(!events.is_empty());
            events
        }
        Err(r) => panic!("expected acceptance, got {r}"),
    }
}

pub fn type_names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::type_name).collect()
}
