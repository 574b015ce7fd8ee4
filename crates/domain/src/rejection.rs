//! Rejections: a business "no" as a value, carrying Meta's error code and
//! subcode (so the Graph-compatible API can answer exactly as Meta would) and
//! a reason a person can act on. The code table is in one place: `RejectionKind::meta_code`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every reason Baton refuses a command, with a stable snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionKind {
    /// The acting app is not connected to the page.
    AppNotOnPage,
    /// A user who never wrote to the page (no thread): Meta finds no one.
    UnknownRecipient,
    /// Meta has blocked the Page from messaging (policy enforcement).
    PageBlocked,
    /// A send from an app that does not control the thread.
    NotThreadOwner,
    /// A thread-control call from an app that does not control the thread.
    NotControlOwner,
    /// Outside the 24 h window (or past 7 days for HUMAN_AGENT).
    OutsideWindow,
    /// `HUMAN_AGENT` from an app that is not a human agent app.
    HumanAgentNotHuman,
    /// A tag Meta retired, refused as Meta would at that date.
    RetiredTag,
    /// A tag Meta does not know (or Baton cannot vouch for).
    UnknownTag,
    /// A tag that needs a permission the page does not have (News Messaging).
    TagNeedsPermission,
    /// `messaging_type: MESSAGE_TAG` without a tag, or a tag without it.
    TagMismatch,
    /// A message without `messaging_type`.
    MessagingTypeRequired,
    /// One-Time Notification token problems.
    TokenUnknown,
    TokenSpent,
    TokenExpired,
    TokenWrongPage,
    /// `take_thread_control` in zero-config.
    TakeNotSupported,
    /// `take_thread_control` by an app the business did not allow to take.
    TakeNotAllowed,
    /// The caller already controls the thread.
    AlreadyOwner,
    /// A pass target that is not an app on the page, or the caller itself.
    InvalidTarget,
    /// `extend_thread_control` duration outside 1 s ..= 7 days.
    InvalidDuration,
    /// A call that the page's routing mode does not offer.
    NotSupportedInMode,
}

impl RejectionKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [RejectionKind] = {
        use RejectionKind::*;
        &[
            AppNotOnPage,
            UnknownRecipient,
            PageBlocked,
            NotThreadOwner,
            NotControlOwner,
            OutsideWindow,
            HumanAgentNotHuman,
            RetiredTag,
            UnknownTag,
            TagNeedsPermission,
            TagMismatch,
            MessagingTypeRequired,
            TokenUnknown,
            TokenSpent,
            TokenExpired,
            TokenWrongPage,
            TakeNotSupported,
            TakeNotAllowed,
            AlreadyOwner,
            InvalidTarget,
            InvalidDuration,
            NotSupportedInMode,
        ]
    };

    /// Meta's `(code, error_subcode)` for this refusal: what Meta answers for the
    /// same request, so an SDK behind Baton sees what it would see without it.
    pub fn meta_code(self) -> (u32, Option<u32>) {
        use RejectionKind::*;
        match self {
            // Meta's answer to a call on a Page the caller has no access to:
            // "object does not exist or you lack permission".
            AppNotOnPage => (100, Some(33)),
            UnknownRecipient => (100, Some(2_018_001)),
            PageBlocked => (10, Some(1_893_063)),
            NotThreadOwner => (10, Some(2_018_300)),
            NotControlOwner => (100, Some(2_534_037)),
            OutsideWindow => (10, Some(2_018_278)),
            HumanAgentNotHuman => (10, None),
            RetiredTag | UnknownTag | TagMismatch | MessagingTypeRequired => (100, None),
            TagNeedsPermission => (10, Some(2_018_065)),
            TokenUnknown | TokenSpent | TokenExpired | TokenWrongPage => (100, None),
            TakeNotSupported => (27, None),
            TakeNotAllowed => (200, None),
            AlreadyOwner | InvalidTarget | InvalidDuration | NotSupportedInMode => (100, None),
        }
    }

    /// The stable name (for Baton's own API and logs).
    pub fn name(self) -> &'static str {
        use RejectionKind::*;
        match self {
            AppNotOnPage => "app_not_on_page",
            UnknownRecipient => "unknown_recipient",
            PageBlocked => "page_blocked",
            NotThreadOwner => "not_thread_owner",
            NotControlOwner => "not_control_owner",
            OutsideWindow => "outside_window",
            HumanAgentNotHuman => "human_agent_not_human",
            RetiredTag => "retired_tag",
            UnknownTag => "unknown_tag",
            TagNeedsPermission => "tag_needs_permission",
            TagMismatch => "tag_mismatch",
            MessagingTypeRequired => "messaging_type_required",
            TokenUnknown => "token_unknown",
            TokenSpent => "token_spent",
            TokenExpired => "token_expired",
            TokenWrongPage => "token_wrong_page",
            TakeNotSupported => "take_not_supported",
            TakeNotAllowed => "take_not_allowed",
            AlreadyOwner => "already_owner",
            InvalidTarget => "invalid_target",
            InvalidDuration => "invalid_duration",
            NotSupportedInMode => "not_supported_in_mode",
        }
    }
}

/// A refusal: Meta's code and subcode, and why, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub code: u32,
    #[serde(default)]
    pub subcode: Option<u32>,
    pub reason: String,
}

impl Rejection {
    pub fn new(kind: RejectionKind, reason: impl Into<String>) -> Self {
        let (code, subcode) = kind.meta_code();
        Self {
            kind,
            code,
            subcode,
            reason: reason.into(),
        }
    }

    /// Meta's message form: `(#10) reason`.
    pub fn meta_message(&self) -> String {
        format!("(#{}) {}", self.code, self.reason)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.subcode {
            Some(sub) => write!(
                f,
                "{} [{}/{}]: {}",
                self.kind.name(),
                self.code,
                sub,
                self.reason
            ),
            None => write!(f, "{} [{}]: {}", self.kind.name(), self.code, self.reason),
        }
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::RejectionKind;

    /// `ALL` lists every kind: a new variant fails to compile here until it
    /// is given a place, and the test fails until it is in `ALL`.
    #[test]
    fn all_lists_every_kind() {
        use RejectionKind::*;
        let index = |k: RejectionKind| -> usize {
            match k {
                AppNotOnPage => 0,
                UnknownRecipient => 1,
                PageBlocked => 2,
                NotThreadOwner => 3,
                NotControlOwner => 4,
                OutsideWindow => 5,
                HumanAgentNotHuman => 6,
                RetiredTag => 7,
                UnknownTag => 8,
                TagNeedsPermission => 9,
                TagMismatch => 10,
                MessagingTypeRequired => 11,
                TokenUnknown => 12,
                TokenSpent => 13,
                TokenExpired => 14,
                TokenWrongPage => 15,
                TakeNotSupported => 16,
                TakeNotAllowed => 17,
                AlreadyOwner => 18,
                InvalidTarget => 19,
                InvalidDuration => 20,
                NotSupportedInMode => 21,
            }
        };
        for (i, k) in RejectionKind::ALL.iter().enumerate() {
            assert_eq!(index(*k), i, "{k:?}");
        }
        assert_eq!(RejectionKind::ALL.len(), 22);
    }
}
