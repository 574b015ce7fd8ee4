//! Commands: what an app asks Baton to do, in the imperative. They mirror
//! Meta's Graph calls; parsing the Graph request into them is the wire layer's
//! job, deciding on them is `rules`'.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{AppId, CommandId, Psid};

/// `messaging_type` of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MessagingType {
    Response,
    Update,
    MessageTag,
    Utility,
}

/// Who a send is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", content = "value", rename_all = "snake_case")]
pub enum Recipient {
    /// `recipient.id`.
    Psid(Psid),
    /// `recipient.one_time_notif_token`: the shell finds the token's thread.
    OneTimeToken(String),
    /// `recipient.user_ref` from the checkbox or chat plugin, before a PSID exists.
    UserRef(String),
}

/// `sender_action` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SenderAction {
    TypingOn,
    TypingOff,
    MarkSeen,
    React,
    Unreact,
}

/// What a send carries, as far as the rules care. The full Graph body travels
/// in `SendMessage::payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "content", rename_all = "snake_case")]
pub enum SendContent {
    Message {
        #[serde(default)]
        metadata: Option<String>,
    },
    SenderAction {
        action: SenderAction,
    },
}

/// The inline `thread_control` of a send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "control_type", rename_all = "snake_case")]
pub enum InlineControl {
    /// Pass to `app_id`, or to the default app when absent.
    Pass {
        #[serde(default)]
        app_id: Option<AppId>,
    },
    Release,
}

/// `POST /{page}/messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendMessage {
    pub send_id: CommandId,
    pub app: AppId,
    pub recipient: Recipient,
    #[serde(default)]
    pub messaging_type: Option<MessagingType>,
    #[serde(default)]
    pub tag: Option<String>,
    pub content: SendContent,
    #[serde(default)]
    pub thread_control: Option<InlineControl>,
    /// The Graph request body to forward (never holds an access token).
    #[serde(default)]
    pub payload: Value,
    /// The app's `Idempotency-Key`: a retry with the same key gets the first answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The Graph API version the app called (`v21.0`): the outbox calls Meta
    /// with the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_version: Option<String>,
    /// A digest of the request an `Idempotency-Key` was first used with: the
    /// key is bound to it, and a different request with the same key is an
    /// error, not a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
}

/// A command an app issues, as itself, on one thread.
// Commands are short-lived values, decided and recorded at once: boxing the
// send to shrink the control calls would cost an allocation on every send.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    PassThreadControl {
        call_id: CommandId,
        app: AppId,
        /// `target_app_id`; absent means the default app (or the legacy primary).
        #[serde(default)]
        target: Option<AppId>,
        #[serde(default)]
        metadata: Option<String>,
    },
    TakeThreadControl {
        call_id: CommandId,
        app: AppId,
        #[serde(default)]
        metadata: Option<String>,
    },
    RequestThreadControl {
        call_id: CommandId,
        app: AppId,
        #[serde(default)]
        metadata: Option<String>,
    },
    ReleaseThreadControl {
        call_id: CommandId,
        app: AppId,
        #[serde(default)]
        metadata: Option<String>,
    },
    ExtendThreadControl {
        call_id: CommandId,
        app: AppId,
        duration_secs: u64,
    },
    SendMessage(SendMessage),
}

impl Command {
    pub fn id(&self) -> &CommandId {
        match self {
            Command::PassThreadControl { call_id, .. }
            | Command::TakeThreadControl { call_id, .. }
            | Command::RequestThreadControl { call_id, .. }
            | Command::ReleaseThreadControl { call_id, .. }
            | Command::ExtendThreadControl { call_id, .. } => call_id,
            Command::SendMessage(s) => &s.send_id,
        }
    }

    /// The app acting.
    pub fn app(&self) -> &AppId {
        match self {
            Command::PassThreadControl { app, .. }
            | Command::TakeThreadControl { app, .. }
            | Command::RequestThreadControl { app, .. }
            | Command::ReleaseThreadControl { app, .. }
            | Command::ExtendThreadControl { app, .. } => app,
            Command::SendMessage(s) => &s.app,
        }
    }

    /// The id Baton gave the call (a send's id for a send).
    pub fn call_id(&self) -> Option<&CommandId> {
        match self {
            Command::PassThreadControl { call_id, .. }
            | Command::TakeThreadControl { call_id, .. }
            | Command::RequestThreadControl { call_id, .. }
            | Command::ReleaseThreadControl { call_id, .. }
            | Command::ExtendThreadControl { call_id, .. } => Some(call_id),
            Command::SendMessage(s) => Some(&s.send_id),
        }
    }

    /// Meta's name for the call.
    pub fn name(&self) -> &'static str {
        match self {
            Command::PassThreadControl { .. } => "pass_thread_control",
            Command::TakeThreadControl { .. } => "take_thread_control",
            Command::RequestThreadControl { .. } => "request_thread_control",
            Command::ReleaseThreadControl { .. } => "release_thread_control",
            Command::ExtendThreadControl { .. } => "extend_thread_control",
            Command::SendMessage(_) => "messages",
        }
    }
}
