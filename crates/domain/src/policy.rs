//! Meta's send policy as data: the messaging window (which user actions open
//! it and for how long), the dated message-tag table, and the One-Time
//! Notification token lifetime. A decision at time T consults the table as it
//! stood at T, so replaying old decisions gives old answers.

use crate::events::{InboundEvent, Optin, WindowGrant, WindowReason};
use crate::ids::{Span, Timestamp};

/// The standard messaging window.
pub const STANDARD_WINDOW: Span = Span::hours(24);
/// The window a first message after a Click-to-Messenger ad may open.
pub const AD_WINDOW: Span = Span::days(7);
/// How long after the user's last action a human agent may still answer.
pub const HUMAN_AGENT_WINDOW: Span = Span::days(7);
/// Control lapses after this long without user activity.
pub const CONTROL_IDLE_AFTER: Span = Span::hours(24);
/// The longest `extend_thread_control` accepts.
pub const MAX_EXTENSION: Span = Span::days(7);
/// One-Time Notification tokens expire this long after they are issued.
pub const ONE_TIME_TOKEN_LIFETIME: Span = Span::days(365);

/// The window a user action grants, or `None` for actions that do not open it
/// (echoes, reads, deliveries, marketing and One-Time Notification opt-ins,
/// account linking, unknown kinds).
pub fn window_grant(event: &InboundEvent, at: Timestamp) -> Option<WindowGrant> {
    let reason = match event {
        InboundEvent::Message { referral, .. } => {
            if referral.as_ref().is_some_and(|r| r.is_ad()) {
                WindowReason::ClickToMessengerAd
            } else {
                WindowReason::UserAction
            }
        }
        InboundEvent::QuickReply { .. }
        | InboundEvent::Postback { .. }
        | InboundEvent::Reaction { .. }
        | InboundEvent::Referral { .. } => WindowReason::UserAction,
        InboundEvent::Optin {
            optin: Optin::Plugin { .. },
        } => WindowReason::UserAction,
        InboundEvent::Optin { .. }
        | InboundEvent::Read { .. }
        | InboundEvent::Delivery { .. }
        | InboundEvent::AccountLinking { .. }
        | InboundEvent::Echo { .. }
        | InboundEvent::Handover { .. }
        | InboundEvent::Unknown { .. } => return None,
    };
    let length = match reason {
        WindowReason::UserAction => STANDARD_WINDOW,
        WindowReason::ClickToMessengerAd => AD_WINDOW,
    };
    Some(WindowGrant {
        opened_at: at,
        closes_at: at.plus(length),
        reason,
    })
}

/// The window a user action grants on a thread whose last ad click (not yet
/// followed by a message) was at `ad_click`: the first message after a
/// Click-to-Messenger ad click opens 7 days even when the click came as its
/// own referral (an ad clicked by a user with an existing thread).
pub fn window_grant_after(
    event: &InboundEvent,
    at: Timestamp,
    ad_click: Option<Timestamp>,
) -> Option<WindowGrant> {
    let grant = window_grant(event, at)?;
    let first_after_click =
        matches!(event, InboundEvent::Message { .. }) && ad_click.is_some_and(|c| c <= at);
    Some(if first_after_click {
        WindowGrant {
            closes_at: at.plus(AD_WINDOW),
            reason: WindowReason::ClickToMessengerAd,
            ..grant
        }
    } else {
        grant
    })
}

/// What a tag allows while it is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagUse {
    /// Human agents only, up to 7 days after the user's last action.
    HumanAgent,
    /// Non-promotional updates outside the window, to a user who started a conversation.
    OutsideWindow,
    /// News Messaging pages only: refused (Baton has no such permission model).
    NeedsNewsPermission,
    /// Listed in old references but not confirmed today: refused rather than guessed.
    Unconfirmed,
}

/// One row of the dated tag table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagEntry {
    pub name: &'static str,
    pub use_: TagUse,
    /// From this instant Meta answers error 100.
    pub retired_at: Option<Timestamp>,
}

/// 2020-03-04T00:00:00Z: the pre-2020 tags stopped working.
pub const RETIRED_2020: Timestamp = Timestamp::from_millis(1_583_280_000_000);
/// 2026-04-27T00:00:00Z: CONFIRMED_EVENT_UPDATE, ACCOUNT_UPDATE and POST_PURCHASE_UPDATE retired.
pub const RETIRED_2026: Timestamp = Timestamp::from_millis(1_777_248_000_000);

/// Meta's message tags with their retirement dates (reference §3.4).
#[rustfmt::skip]
pub const TAG_TABLE: &[TagEntry] = &[
    TagEntry { name: "HUMAN_AGENT", use_: TagUse::HumanAgent, retired_at: None },
    TagEntry { name: "CONFIRMED_EVENT_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2026) },
    TagEntry { name: "POST_PURCHASE_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2026) },
    TagEntry { name: "ACCOUNT_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2026) },
    TagEntry { name: "NON_PROMOTIONAL_SUBSCRIPTION", use_: TagUse::NeedsNewsPermission, retired_at: None },
    TagEntry { name: "CUSTOMER_FEEDBACK", use_: TagUse::Unconfirmed, retired_at: None },
    TagEntry { name: "COMMUNITY_ALERT", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "CONFIRMED_EVENT_REMINDER", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "PAIRING_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "APPLICATION_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "PAYMENT_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "PERSONAL_FINANCE_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "SHIPPING_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "RESERVATION_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "ISSUE_RESOLUTION", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "APPOINTMENT_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "GAME_EVENT", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "TRANSPORTATION_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "FEATURE_FUNCTIONALITY_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "TICKET_UPDATE", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
    TagEntry { name: "BUSINESS_PRODUCTIVITY", use_: TagUse::OutsideWindow, retired_at: Some(RETIRED_2020) },
];

/// A tag's standing at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagStatus {
    InForce(TagUse),
    Retired { since: Timestamp },
    Unknown,
}

/// Looks a tag up in the table as it stood at `at` (tags are case-sensitive, as Meta's enum is).
pub fn tag_status(tag: &str, at: Timestamp) -> TagStatus {
    match TAG_TABLE.iter().find(|e| e.name == tag) {
        None => TagStatus::Unknown,
        Some(entry) => match entry.retired_at {
            Some(since) if at >= since => TagStatus::Retired { since },
            _ => TagStatus::InForce(entry.use_),
        },
    }
}

/// How far Meta's clock may run ahead of Baton's (or a webhook trail a
/// control change Baton recorded) and still count as the same moment:
/// evidence timed within this of the last control change is not newer than
/// it.
pub const CLOCK_SKEW_TOLERANCE: Span = Span::seconds(5);

/// A timestamp further in the future than this (by Baton's clock) is kept
/// verbatim but distrusted: it moves no window, expiry or ownership.
pub const FUTURE_TOLERANCE: Span = Span::seconds(300);

/// How long Meta's word on a thread's owner is trusted before a refusal that
/// rests on it is checked with Meta first (`thread_owner`).
pub const RECONFIRM_AFTER: Span = Span::seconds(600);

/// How long after Baton accepted a control call a handover notice of
/// exactly that call, that the clocks call older news, is taken to be its
/// news and left to Meta's answer: a call whose answer has not come by then
/// (a crash, an answer that could not be recorded) no longer hides Meta's
/// notices, which are then kept as stale evidence and checked with Meta.
pub const OWN_CALL_ANSWER_WITHIN: Span = Span::seconds(60);
