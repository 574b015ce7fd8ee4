//! The event schema of the log: every fact Baton records, each with an explicit
//! type name and schema version. Events are past tense and carry everything
//! `apply` needs, so folding them holds no rules. Encoding is compact JSON; the
//! snapshot tests in `tests/snapshots/` pin it, so a change is a reviewed diff.
//! Nothing here decides anything: see `rules` for that.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::commands::{Command, SendMessage};
use crate::ids::{AppId, CommandId, PageId, ThreadKey, Timestamp};
use crate::rejection::Rejection;

/// Which array of an entry Meta delivered an item on, for one app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// `entry[].messaging[]`: the app owns the thread or may answer it.
    Messaging,
    /// `entry[].standby[]`: the app may observe but not answer.
    Standby,
}

impl Channel {
    /// Meta's name for the array.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Messaging => "messaging",
            Channel::Standby => "standby",
        }
    }
}

/// One app's copy of an item: who Meta delivered it to, and on which channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeliveryCopy {
    pub app: AppId,
    pub channel: Channel,
}

/// A referral (m.me link, ad, plugin) as Meta describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none", default)]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none", default)]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ad_id: Option<String>,
}

impl Referral {
    /// A Click-to-Messenger ad referral (`source: ADS`).
    pub fn is_ad(&self) -> bool {
        self.source.as_deref() == Some("ADS")
    }
}

/// What an opt-in was for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "optin_type", rename_all = "snake_case")]
pub enum Optin {
    /// Send-to-Messenger or checkbox plugin (`optin.ref`, `user_ref`).
    Plugin {
        #[serde(rename = "ref", default)]
        reference: Option<String>,
        #[serde(default)]
        user_ref: Option<String>,
    },
    /// A One-Time Notification opt-in carrying a single-use token.
    OneTimeNotification {
        token: String,
        #[serde(default)]
        payload: Option<String>,
    },
    /// A (retired) recurring / marketing messages opt-in.
    NotificationMessages {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        status: Option<String>,
    },
    /// Any other opt-in type, named as Meta sent it.
    Other { name: String },
}

/// The parsed meaning of one `messaging[]`/`standby[]` item. The raw item is
/// kept beside it in the event, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InboundEvent {
    Message {
        mid: String,
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        attachment_types: Vec<String>,
        #[serde(default)]
        reply_to: Option<String>,
        #[serde(default)]
        referral: Option<Referral>,
    },
    QuickReply {
        mid: String,
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        payload: String,
    },
    Postback {
        #[serde(default)]
        mid: Option<String>,
        #[serde(default)]
        title: Option<String>,
        /// Absent on standby copies: Meta gives the payload only to the app that sent the button.
        #[serde(default)]
        payload: Option<String>,
        #[serde(default)]
        referral: Option<Referral>,
    },
    Reaction {
        mid: String,
        action: String,
        #[serde(default)]
        reaction: Option<String>,
    },
    Read {
        watermark: i64,
    },
    Delivery {
        watermark: i64,
        #[serde(default)]
        mids: Vec<String>,
    },
    Referral {
        referral: Referral,
    },
    Optin {
        optin: Optin,
    },
    AccountLinking {
        status: String,
        #[serde(default)]
        authorization_code: Option<String>,
    },
    /// A message the Page sent (by an app or a human in the inbox), echoed back.
    Echo {
        mid: String,
        #[serde(default)]
        app_id: Option<AppId>,
        #[serde(default)]
        metadata: Option<String>,
    },
    /// A `pass_thread_control`, `take_thread_control` or
    /// `request_thread_control` webhook.
    Handover {
        notice: HandoverNotice,
    },
    /// A kind Baton does not know: kept verbatim in `raw`.
    Unknown {
        #[serde(default)]
        key: Option<String>,
    },
}

impl InboundEvent {
    /// A short name for the kind, for logs and timelines.
    pub fn kind_name(&self) -> &'static str {
        match self {
            InboundEvent::Message { .. } => "message",
            InboundEvent::QuickReply { .. } => "quick_reply",
            InboundEvent::Postback { .. } => "postback",
            InboundEvent::Reaction { .. } => "reaction",
            InboundEvent::Read { .. } => "read",
            InboundEvent::Delivery { .. } => "delivery",
            InboundEvent::Referral { .. } => "referral",
            InboundEvent::Optin { .. } => "optin",
            InboundEvent::AccountLinking { .. } => "account_linking",
            InboundEvent::Echo { .. } => "echo",
            InboundEvent::Handover { notice } => notice.webhook_name(),
            InboundEvent::Unknown { .. } => "unknown",
        }
    }
}

/// A handover webhook, as Meta delivered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "webhook", rename_all = "snake_case")]
pub enum HandoverNotice {
    /// `pass_thread_control`: `from` is `None` when the thread was idle.
    Passed {
        from: Option<AppId>,
        to: AppId,
        #[serde(default)]
        metadata: Option<String>,
    },
    /// `take_thread_control`.
    Taken {
        from: Option<AppId>,
        by: AppId,
        #[serde(default)]
        metadata: Option<String>,
    },
    /// `request_thread_control`.
    Requested {
        by: AppId,
        #[serde(default)]
        metadata: Option<String>,
    },
}

impl HandoverNotice {
    /// Meta's webhook field name.
    pub fn webhook_name(&self) -> &'static str {
        match self {
            HandoverNotice::Passed { .. } => "pass_thread_control",
            HandoverNotice::Taken { .. } => "take_thread_control",
            HandoverNotice::Requested { .. } => "request_thread_control",
        }
    }
}

/// Why a user action opened (or refreshed) the messaging window, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowReason {
    /// The standard 24 h window.
    UserAction,
    /// The first message after a Click-to-Messenger ad: up to 7 days.
    ClickToMessengerAd,
}

/// The messaging window a user action grants, computed when the fact is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowGrant {
    pub opened_at: Timestamp,
    pub closes_at: Timestamp,
    pub reason: WindowReason,
}

/// Where a handover fact came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "origin", rename_all = "snake_case")]
pub enum FactOrigin {
    /// A Meta handover webhook delivered to this app.
    Webhook { app: AppId },
    /// Baton's own call to Meta, which Meta accepted (release sends no webhook).
    Call { call_id: CommandId },
}

impl FactOrigin {
    /// Whether the fact's time is Meta's (a webhook) rather than Baton's.
    pub fn is_webhook(&self) -> bool {
        matches!(self, FactOrigin::Webhook { .. })
    }
}

/// The ledger's or Meta's view of who controls a thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ControlView {
    Idle,
    Owner {
        app: AppId,
    },
    /// Meta said it is not who the ledger thought, without saying who it is.
    Unknown,
}

/// What showed that the ledger and Meta disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "evidence", rename_all = "snake_case")]
pub enum DriftEvidence {
    /// An app received a user event on `messaging` while the ledger gave the thread to another.
    MessagingDelivery { app: AppId },
    /// The app the ledger calls owner received a user event on `standby`.
    StandbyDelivery { app: AppId },
    /// A message echo sent by an app that does not hold the thread in the ledger.
    Echo { app: AppId, mid: String },
    /// A handover webhook whose previous owner is not the ledger's owner.
    HandoverWebhook { webhook: String },
    /// Meta refused a call or a send the ledger allowed.
    GraphRefusal {
        command_id: CommandId,
        code: u32,
        subcode: Option<u32>,
    },
    /// Meta's `thread_owner` answer.
    ThreadOwnerAnswer,
    /// Meta's success answer to a control call (or a send's inline control).
    CallAnswer { command_id: CommandId },
}

/// An error as Meta's Graph API returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphError {
    pub code: u32,
    #[serde(default)]
    pub subcode: Option<u32>,
    pub message: String,
    #[serde(default)]
    pub fbtrace_id: Option<String>,
    #[serde(default)]
    pub is_transient: bool,
}

/// Meta's answer to a thread-control call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum GraphOutcome {
    Succeeded,
    Failed {
        error: GraphError,
    },
    /// No answer (timeout after the request left, connection reset).
    Unknown {
        reason: String,
    },
}

/// What became of an accepted send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SendOutcome {
    Sent {
        message_id: String,
        #[serde(default)]
        recipient_id: Option<String>,
    },
    Failed {
        error: GraphError,
    },
    Unknown {
        reason: String,
    },
    /// An unknown outcome settled by the message's echo (matched by metadata or mid).
    SettledByEcho {
        mid: String,
    },
}

/// The rule that allowed a thread-control call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlRule {
    OwnerMayPass,
    IdleHolderMayPass,
    AnyAppMayPassIdleThread,
    AppMayTakeControl,
    IdleThreadMayBeTaken,
    PrimaryMayTake,
    RequestGoesToHolder,
    FirstRequesterGetsControl,
    OwnerMayRelease,
    OwnerMayExtend,
    /// A take by the app that already holds the thread: Meta answers success.
    CallerAlreadyHolds,
}

/// Why a thread-control call was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlBasis {
    pub mode: String,
    pub before: ControlView,
    pub rule: ControlRule,
}

/// Why the sender may write to this thread at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerBasis {
    /// The sender controls the thread.
    ThreadOwner,
    /// The thread is idle and the sender is the default app (or the legacy primary).
    IdleHolder,
    /// Zero-config: every connected app may reply.
    ZeroConfig,
    /// Meta contradicted the ledger and has not said who owns the thread:
    /// Baton lets Meta decide rather than guess.
    OwnerUnknown,
}

/// Why the message may be sent now, as far as time and consent go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "basis", rename_all = "snake_case")]
pub enum WindowBasis {
    StandardWindow {
        opened_at: Timestamp,
        closes_at: Timestamp,
        reason: WindowReason,
    },
    HumanAgent {
        last_user_action_at: Timestamp,
        closes_at: Timestamp,
    },
    MessageTag {
        tag: String,
        #[serde(default)]
        valid_until: Option<Timestamp>,
    },
    OneTimeToken {
        token: String,
        issued_at: Timestamp,
        expires_at: Timestamp,
    },
    /// A first message to a plugin `user_ref`, before a PSID exists.
    UserRef,
}

/// The whole basis of an accepted send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendBasis {
    pub mode: String,
    pub owner: OwnerBasis,
    pub control: ControlView,
    pub window: WindowBasis,
}

/// `messaging_policy_enforcement` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforcementAction {
    Warning,
    Block,
    Unblock,
    Other,
}

/// Which signature headers a delivery carried and whether they matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureResult {
    Valid,
    Invalid,
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureCheck {
    pub sha256: SignatureResult,
    pub sha1: SignatureResult,
}

/// A raw body as received: text when it is UTF-8, base64 otherwise, or the
/// text with the items its facts carry cut out (each stored once, in its
/// fact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "encoding", content = "data", rename_all = "snake_case")]
pub enum RawBody {
    Text(String),
    Base64(String),
    /// The body without the items recorded in the facts after it: each cut
    /// item's bytes are kept, exactly, as its fact's `raw`.
    Spliced {
        /// The body's bytes outside the cut items.
        skeleton: String,
        /// Where each cut item goes back, in order.
        cuts: Vec<Cut>,
    },
}

/// An item cut out of a delivery's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// The byte offset in the skeleton where the item's bytes go back.
    pub at: u32,
    /// How many positions after the delivery's record its fact is (in the
    /// same append: no record with an idempotency key between them).
    pub after: u32,
}

impl RawBody {
    /// The body's bytes: as they are, or the skeleton with each cut item
    /// put back, `item(after)` giving the `raw` of the fact that many
    /// positions after the delivery as the JSON text its record holds.
    /// `None` when a cut item cannot be had (`item` answered `None`), or
    /// the body is not one.
    pub fn bytes_with(&self, mut item: impl FnMut(u32) -> Option<String>) -> Option<Vec<u8>> {
        use base64::Engine;
        match self {
            RawBody::Text(text) => Some(text.clone().into_bytes()),
            RawBody::Base64(data) => base64::engine::general_purpose::STANDARD.decode(data).ok(),
            RawBody::Spliced { skeleton, cuts } => {
                let mut out = Vec::with_capacity(skeleton.len() + 256 * cuts.len());
                let mut from = 0;
                for cut in cuts {
                    let at = usize::try_from(cut.at).ok()?;
                    out.extend_from_slice(skeleton.as_bytes().get(from..at)?);
                    out.extend_from_slice(item(cut.after)?.as_bytes());
                    from = at;
                }
                out.extend_from_slice(skeleton.as_bytes().get(from..)?);
                Some(out)
            }
        }
    }
}

impl Default for RawBody {
    /// What an erased body reads as.
    fn default() -> RawBody {
        RawBody::Text(String::new())
    }
}

/// What came of parsing a delivery's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "parse", rename_all = "snake_case")]
pub enum ParseOutcome {
    Parsed { entries: u32, items: u32 },
    NotJson { error: String },
    NotAnEnvelope { error: String },
}

// ---- The events. -----------------------------------------------------------

/// A user event (or an echo) Meta delivered for a thread, recorded once however
/// many apps received a copy; the first copy is here, later ones are
/// `MessagingEventCopyReceived`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagingEventReceived {
    pub thread: ThreadKey,
    /// Meta's `timestamp` of the item.
    pub at: Timestamp,
    /// `mid`, or a key derived from the item when it has none.
    pub dedupe_key: String,
    pub delivery: DeliveryCopy,
    pub event: InboundEvent,
    /// The window this action opened, when it qualifies.
    #[serde(default)]
    pub window: Option<WindowGrant>,
    /// The item exactly as Meta delivered it to `delivery.app` (null once
    /// erased).
    #[serde(default)]
    pub raw: Value,
    /// `at` lies further in the future than Baton tolerates: the item is
    /// kept verbatim, but it moves no window, expiry or ownership.
    #[serde(default, skip_serializing_if = "is_false")]
    pub distrusted_time: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Meta's `thread_owner` answered what the ledger already held: the owner is
/// confirmed as of `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipConfirmed {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub owner: ControlView,
}

/// Evidence about who controls a thread that is older than the newer
/// evidence the ledger already holds (Meta's time at or before the last
/// control change, within the clock-skew tolerance) and contradicts it: kept,
/// but it does not override the ledger. Baton asks Meta's `thread_owner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleEvidenceIgnored {
    pub thread: ThreadKey,
    /// When Baton recorded it.
    pub at: Timestamp,
    /// Meta's time of the evidence.
    pub evidence_at: Timestamp,
    /// What the evidence claims.
    pub claimed: ControlView,
    /// What the ledger holds, and since when.
    pub ledger: ControlView,
    pub ledger_since: Timestamp,
    pub evidence: DriftEvidence,
}

/// Another app's copy (or another channel's) of an already recorded item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagingEventCopyReceived {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub dedupe_key: String,
    pub delivery: DeliveryCopy,
    #[serde(default)]
    pub raw: Value,
}

/// User activity on an idle thread gave it to an app (Conversation Routing's
/// entry-point routing: the default app, or the app Meta delivered it to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRouted {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub owner: AppId,
    pub dedupe_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadControlPassed {
    pub thread: ThreadKey,
    pub at: Timestamp,
    /// `None` when the thread was idle (Meta's `previous_owner_app_id: null`).
    pub from: Option<AppId>,
    pub to: AppId,
    #[serde(default)]
    pub metadata: Option<String>,
    pub origin: FactOrigin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadControlTaken {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub from: Option<AppId>,
    pub by: AppId,
    #[serde(default)]
    pub metadata: Option<String>,
    pub origin: FactOrigin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadControlRequested {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub by: AppId,
    /// The app Meta tells (the owner, the default app, the legacy primary).
    pub told: Option<AppId>,
    #[serde(default)]
    pub metadata: Option<String>,
    /// Zero-config: the first requester of an idle thread gets control at once.
    pub granted: bool,
    pub origin: FactOrigin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadControlReleased {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub by: AppId,
    #[serde(default)]
    pub metadata: Option<String>,
    pub origin: FactOrigin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadControlExtended {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub by: AppId,
    pub duration_secs: u64,
    pub until: Timestamp,
    pub origin: FactOrigin,
}

/// Control lapsed after 24 h without user activity (or past an extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadControlExpired {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub owner: AppId,
    pub expired_at: Timestamp,
}

/// Legacy `app_roles` webhook: the Page's primary/secondary receivers changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRolesChanged {
    pub page: PageId,
    pub at: Timestamp,
    pub roles: BTreeMap<AppId, Vec<String>>,
    #[serde(default)]
    pub delivery: Option<DeliveryCopy>,
    /// The item as Meta delivered it.
    #[serde(default)]
    pub raw: Value,
}

/// The ledger and Meta disagreed; the ledger now follows `observed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipDriftDetected {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub ledger: ControlView,
    pub observed: ControlView,
    pub evidence: DriftEvidence,
}

/// A thread-control call passed the rules and may be forwarded to Meta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlCallAccepted {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub command: Command,
    pub basis: ControlBasis,
}

/// Meta's answer to a forwarded thread-control call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlCallCompleted {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub call_id: CommandId,
    pub outcome: GraphOutcome,
}

/// A send passed the gate; it is in the outbox and may be attempted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendAccepted {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub send: SendMessage,
    pub basis: SendBasis,
    /// Whether the outbox records `SendAttempted` before each call (every
    /// acceptance since the outbox worker). An acceptance without it (an older
    /// log) may have been attempted already, so after a restart its outcome
    /// is unknown rather than sent again.
    #[serde(default)]
    pub attempts_recorded: bool,
}

/// A command (send or thread control) refused before it reached Meta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRefused {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub command: Command,
    pub rejection: Rejection,
}

/// The outbox is about to call Meta with an accepted send (attempt 1, 2, …).
/// Recorded before the call leaves, so after a crash Baton knows which sends
/// never reached Meta (no attempt: send them) and which may have (an attempt
/// without an answer: the outcome is unknown until the echo settles it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAttempted {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub send_id: CommandId,
    pub attempt: u32,
}

/// Meta answered an attempt with an error that says nothing was sent (a rate
/// limit or a temporary failure): the outbox tries again at `retry_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRetryScheduled {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub send_id: CommandId,
    pub attempt: u32,
    pub error: GraphError,
    pub retry_at: Timestamp,
}

/// What Meta made of an accepted send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendOutcomeRecorded {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub send_id: CommandId,
    pub outcome: SendOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeTokenIssued {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub token: String,
    #[serde(default)]
    pub payload: Option<String>,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeTokenConsumed {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub token: String,
    pub send_id: CommandId,
}

/// A token consumed by a send that Meta then refused for certain: Meta never
/// used it, so the user's opt-in is still good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeTokenReleased {
    pub thread: ThreadKey,
    pub at: Timestamp,
    pub token: String,
    pub send_id: CommandId,
}

/// `messaging_policy_enforcement`: a page-level warning, block or unblock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyEnforcementReceived {
    pub page: PageId,
    pub at: Timestamp,
    pub action: EnforcementAction,
    #[serde(default)]
    pub reason: Option<String>,
    pub delivery: DeliveryCopy,
    pub raw: Value,
}

/// An item that names no thread (an unknown kind without a sender): kept verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnattributedItemReceived {
    pub page: PageId,
    pub at: Timestamp,
    pub delivery: DeliveryCopy,
    #[serde(default)]
    pub raw: Value,
}

/// A webhook delivery whose signature verified, kept raw for audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDeliveryReceived {
    pub delivery_id: String,
    pub app: AppId,
    pub received_at: Timestamp,
    pub signature: SignatureCheck,
    /// Empty once erased.
    #[serde(default)]
    pub body: RawBody,
    pub parsed: ParseOutcome,
}

/// Dispatch gave up on forwarding one recorded item to an app's backend after
/// the configured age; the app's other events move on. Stream `dispatch/{app}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchDeadLettered {
    pub app: AppId,
    /// Log position of the item that could not be delivered.
    pub position: u64,
    #[serde(default)]
    pub thread: Option<ThreadKey>,
    pub at: Timestamp,
    pub attempts: u32,
    pub last_error: String,
}

/// Someone asked to deliver a dead-lettered item again. Stream `dispatch/{app}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchRedriveRequested {
    pub app: AppId,
    pub position: u64,
    pub at: Timestamp,
    /// Who asked (`cli`, `api:<token owner>`), for the audit trail.
    pub by: String,
}

/// What an app changed in the page's Messenger Profile (greeting, Get
/// Started, persistent menu, ice breakers, …), after Meta accepted it.
/// Stream `page/{page}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessengerProfileChanged {
    pub page: PageId,
    pub app: AppId,
    pub at: Timestamp,
    pub change: ProfileChange,
}

/// A Messenger Profile change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProfileChange {
    /// Properties set, as the app sent them.
    Set { properties: Value },
    /// Properties removed.
    Delete { fields: Vec<String> },
}

/// An attachment an app uploaded through Baton for reuse, after Meta gave
/// it an id. Stream `page/{page}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentUploaded {
    pub page: PageId,
    pub app: AppId,
    pub at: Timestamp,
    pub attachment_id: String,
    /// `image`, `video`, `audio` or `file`, as the app declared it.
    pub kind: Option<String>,
    /// The uploaded file's size and SHA-256, or the URL Meta fetched.
    pub bytes: u64,
    pub sha256: Option<String>,
    pub url: Option<String>,
}

/// The app that controls a thread shared information with the page's other
/// apps (`pass_thread_metadata`), after Meta accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadMetadataPassed {
    pub thread: ThreadKey,
    pub app: AppId,
    pub at: Timestamp,
    #[serde(default)]
    pub metadata: String,
}

/// A private reply to a user's comment on a Page post, after Meta accepted
/// it: one per comment. Stream `page/{page}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateReplySent {
    pub page: PageId,
    pub app: AppId,
    pub at: Timestamp,
    pub comment_id: String,
    /// The user Meta answered the reply went to, and the message's id.
    pub recipient_id: Option<String>,
    pub message_id: Option<String>,
}

/// A person's content on one page was erased (their request, the admin's,
/// or Meta's data-deletion callback): every key that sealed it was
/// destroyed. Ownership and decision facts stay. Stream: the thread's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentErased {
    pub thread: ThreadKey,
    pub at: Timestamp,
    /// Who asked: `admin:<name>`, `cli`, `meta:<app>` (the data-deletion
    /// callback).
    pub by: String,
    /// The request's id; for Meta's callback, the confirmation code it was
    /// answered with.
    pub request: String,
}

/// Content older than the page's retention was erased: every key of the
/// page's people made for a day before `before` was destroyed. Stream
/// `page/{page}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentExpired {
    pub page: PageId,
    pub at: Timestamp,
    /// Content recorded before this (a day boundary, UTC) is gone.
    pub before: Timestamp,
    pub retention_days: u32,
    pub keys: u64,
}

/// How Baton learned that an app is subscribed to a page again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum SubscriptionSource {
    /// The subscription watchdog saw the app listed again in Meta's
    /// `subscribed_apps` (someone fixed it at Meta).
    Check,
    /// Baton subscribed the app again (`POST subscribed_apps`) and Meta
    /// accepted; `by` is who asked (`api:admin`, `console:admin`, …).
    Resubscribe { by: String },
}

/// Meta no longer lists `app` among the apps subscribed to `page`'s
/// webhooks (Meta drops an app after an hour of failed deliveries): the
/// app gets no webhook for the page until it is subscribed again. Recorded
/// by the subscription watchdog once per loss. Stream `page/{page}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSubscriptionLost {
    pub page: PageId,
    pub app: AppId,
    /// When Baton's check saw it (Baton's clock): the loss happened before.
    pub at: Timestamp,
    /// The webhook fields the app was last seen subscribed with (empty when
    /// Baton never saw them): what a re-subscription asks for.
    #[serde(default)]
    pub last_fields: Vec<String>,
}

/// `app` is subscribed to `page`'s webhooks again, after a recorded
/// [`AppSubscriptionLost`]. Stream `page/{page}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSubscriptionRestored {
    pub page: PageId,
    pub app: AppId,
    pub at: Timestamp,
    /// The fields it is subscribed with now (as Meta listed them, or as
    /// Baton asked for them).
    #[serde(default)]
    pub fields: Vec<String>,
    pub source: SubscriptionSource,
}

/// Meta refused `app`'s page token for `page` with code 190 (invalid,
/// expired or revoked, whatever the subcode) after Baton last knew it
/// valid (or never knew): every call with it fails until the token is
/// replaced. Recorded once per breakage, not per failed call. Stream
/// `page/{page}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageTokenRejected {
    pub page: PageId,
    pub app: AppId,
    pub at: Timestamp,
    /// The Graph edge of the call Meta refused (`messages`, `subscribed_apps`, …).
    pub edge: String,
    pub code: u32,
    #[serde(default)]
    pub subcode: Option<u32>,
    pub message: String,
    #[serde(default)]
    pub fbtrace_id: Option<String>,
}

/// Meta accepted `app`'s page token for `page` again after a recorded
/// [`PageTokenRejected`] (the token was replaced). Stream `page/{page}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageTokenAccepted {
    pub page: PageId,
    pub app: AppId,
    pub at: Timestamp,
    /// The Graph edge of the call that succeeded.
    pub edge: String,
}

// ---- Type names, versions, encoding. ----------------------------------------

/// An event as the log stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    pub type_name: &'static str,
    pub schema_version: u16,
    pub payload: Vec<u8>,
}

/// Why stored bytes could not be read back as an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {type_name:?}")]
    UnknownType { type_name: String },
    #[error("{type_name} version {found} is newer than this build understands (up to {known})")]
    FutureVersion {
        type_name: String,
        found: u16,
        known: u16,
    },
    #[error("{type_name} version {found} has no upcaster to version {known}")]
    NoUpcaster {
        type_name: String,
        found: u16,
        known: u16,
    },
    #[error("{type_name} v{version} payload is not valid: {source}")]
    BadPayload {
        type_name: String,
        version: u16,
        source: serde_json::Error,
    },
}

/// Brings an old payload to the current version of its type. Each upcaster is
/// a pure function from one version's JSON to the next. The one so far,
/// `WebhookDeliveryReceived` 1 → 2, is the identity: v2 only added a shape
/// of the body. Add an arm when a type changes.
fn upcast<'a>(
    type_name: &str,
    found: u16,
    current: u16,
    payload: &'a [u8],
) -> Result<Cow<'a, [u8]>, DecodeError> {
    if found == current {
        return Ok(Cow::Borrowed(payload));
    }
    // Versions that only added a shape: the older payload is a newer one.
    // WebhookDeliveryReceived v2 (2026-12-03) may hold a spliced body
    // (`RawBody::Spliced`), which v1 readers would not know.
    if (type_name, found, current) == ("WebhookDeliveryReceived", 1, 2) {
        return Ok(Cow::Borrowed(payload));
    }
    if found > current {
        return Err(DecodeError::FutureVersion {
            type_name: type_name.to_owned(),
            found,
            known: current,
        });
    }
    Err(DecodeError::NoUpcaster {
        type_name: type_name.to_owned(),
        found,
        known: current,
    })
}

macro_rules! event_schema {
    ($($variant:ident = $version:literal),* $(,)?) => {
        /// Every fact Baton records. The variant name is the stored type name.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum Event {
            $($variant($variant),)*
        }

        impl Event {
            /// Every type name, in schema order.
            pub const TYPE_NAMES: &'static [&'static str] = &[$(stringify!($variant)),*];

            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Event::$variant(_) => stringify!($variant),)*
                }
            }

            pub fn schema_version(&self) -> u16 {
                match self {
                    $(Event::$variant(_) => $version,)*
                }
            }

            /// The payload bytes the log stores (compact JSON of the event's fields).
            pub fn encode(&self) -> EncodedEvent {
                let payload = match self {
                    $(Event::$variant(e) => serde_json::to_vec(e),)*
                };
                EncodedEvent {
                    type_name: self.type_name(),
                    schema_version: self.schema_version(),
                    // Serialising these plain structs cannot fail: every map key is a string.
                    payload: payload.expect("events serialise to JSON"),
                }
            }

            /// Reads stored bytes back, upcasting older versions.
            pub fn decode(type_name: &str, version: u16, payload: &[u8]) -> Result<Event, DecodeError> {
                match type_name {
                    $(stringify!($variant) => {
                        let bytes = upcast(type_name, version, $version, payload)?;
                        serde_json::from_slice::<$variant>(&bytes)
                            .map(Event::$variant)
                            .map_err(|source| DecodeError::BadPayload {
                                type_name: type_name.to_owned(),
                                version,
                                source,
                            })
                    })*
                    _ => Err(DecodeError::UnknownType { type_name: type_name.to_owned() }),
                }
            }
        }

        $(impl From<$variant> for Event {
            fn from(e: $variant) -> Event {
                Event::$variant(e)
            }
        })*
    };
}

event_schema! {
    WebhookDeliveryReceived = 2,
    MessagingEventReceived = 1,
    MessagingEventCopyReceived = 1,
    UnattributedItemReceived = 1,
    PolicyEnforcementReceived = 1,
    ThreadRouted = 1,
    ThreadControlPassed = 1,
    ThreadControlTaken = 1,
    ThreadControlRequested = 1,
    ThreadControlReleased = 1,
    ThreadControlExtended = 1,
    ThreadControlExpired = 1,
    AppRolesChanged = 1,
    OwnershipDriftDetected = 1,
    StaleEvidenceIgnored = 1,
    OwnershipConfirmed = 1,
    ControlCallAccepted = 1,
    ControlCallCompleted = 1,
    SendAccepted = 1,
    CommandRefused = 1,
    SendOutcomeRecorded = 1,
    SendAttempted = 1,
    SendRetryScheduled = 1,
    OneTimeTokenIssued = 1,
    OneTimeTokenConsumed = 1,
    OneTimeTokenReleased = 1,
    DispatchDeadLettered = 1,
    DispatchRedriveRequested = 1,
    MessengerProfileChanged = 1,
    AttachmentUploaded = 1,
    ThreadMetadataPassed = 1,
    PrivateReplySent = 1,
    ContentErased = 1,
    ContentExpired = 1,
    AppSubscriptionLost = 1,
    AppSubscriptionRestored = 1,
    PageTokenRejected = 1,
    PageTokenAccepted = 1,
}

impl Event {
    /// The thread this fact belongs to, if it belongs to one.
    pub fn thread(&self) -> Option<&ThreadKey> {
        match self {
            Event::MessagingEventReceived(e) => Some(&e.thread),
            Event::MessagingEventCopyReceived(e) => Some(&e.thread),
            Event::ThreadRouted(e) => Some(&e.thread),
            Event::ThreadControlPassed(e) => Some(&e.thread),
            Event::ThreadControlTaken(e) => Some(&e.thread),
            Event::ThreadControlRequested(e) => Some(&e.thread),
            Event::ThreadControlReleased(e) => Some(&e.thread),
            Event::ThreadControlExtended(e) => Some(&e.thread),
            Event::ThreadControlExpired(e) => Some(&e.thread),
            Event::OwnershipDriftDetected(e) => Some(&e.thread),
            Event::StaleEvidenceIgnored(e) => Some(&e.thread),
            Event::OwnershipConfirmed(e) => Some(&e.thread),
            Event::ControlCallAccepted(e) => Some(&e.thread),
            Event::ControlCallCompleted(e) => Some(&e.thread),
            Event::SendAccepted(e) => Some(&e.thread),
            Event::CommandRefused(e) => Some(&e.thread),
            Event::SendOutcomeRecorded(e) => Some(&e.thread),
            Event::SendAttempted(e) => Some(&e.thread),
            Event::SendRetryScheduled(e) => Some(&e.thread),
            Event::OneTimeTokenIssued(e) => Some(&e.thread),
            Event::OneTimeTokenConsumed(e) => Some(&e.thread),
            Event::OneTimeTokenReleased(e) => Some(&e.thread),
            Event::ThreadMetadataPassed(e) => Some(&e.thread),
            Event::ContentErased(e) => Some(&e.thread),
            Event::MessengerProfileChanged(_)
            | Event::ContentExpired(_)
            | Event::AppSubscriptionLost(_)
            | Event::AppSubscriptionRestored(_)
            | Event::PageTokenRejected(_)
            | Event::PageTokenAccepted(_)
            | Event::AttachmentUploaded(_)
            | Event::PrivateReplySent(_)
            | Event::WebhookDeliveryReceived(_)
            | Event::UnattributedItemReceived(_)
            | Event::PolicyEnforcementReceived(_)
            | Event::AppRolesChanged(_)
            | Event::DispatchDeadLettered(_)
            | Event::DispatchRedriveRequested(_) => None,
        }
    }

    /// The log stream this fact is appended to: the thread's stream, the
    /// page's, or the delivering app's for raw deliveries.
    pub fn stream_name(&self) -> String {
        match (self.thread(), self) {
            (Some(thread), _) => thread.stream_name(),
            (None, Event::WebhookDeliveryReceived(e)) => format!("deliveries/{}", e.app),
            (None, Event::DispatchDeadLettered(DispatchDeadLettered { app, .. }))
            | (None, Event::DispatchRedriveRequested(DispatchRedriveRequested { app, .. })) => {
                format!("dispatch/{app}")
            }
            (None, Event::UnattributedItemReceived(UnattributedItemReceived { page, .. }))
            | (None, Event::PolicyEnforcementReceived(PolicyEnforcementReceived { page, .. }))
            | (None, Event::AppRolesChanged(AppRolesChanged { page, .. }))
            | (None, Event::MessengerProfileChanged(MessengerProfileChanged { page, .. }))
            | (None, Event::AttachmentUploaded(AttachmentUploaded { page, .. }))
            | (None, Event::PrivateReplySent(PrivateReplySent { page, .. }))
            | (None, Event::ContentExpired(ContentExpired { page, .. }))
            | (None, Event::AppSubscriptionLost(AppSubscriptionLost { page, .. }))
            | (None, Event::AppSubscriptionRestored(AppSubscriptionRestored { page, .. }))
            | (None, Event::PageTokenRejected(PageTokenRejected { page, .. }))
            | (None, Event::PageTokenAccepted(PageTokenAccepted { page, .. })) => {
                format!("page/{page}")
            }
            // Every other event names its thread; this arm keeps the match total.
            (None, other) => format!("events/{}", other.type_name()),
        }
    }
}
