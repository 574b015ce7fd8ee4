//! The rules: `decide` for commands, `observe` for what Meta tells Baton,
//! `settle` for Meta's answers to forwarded calls and sends, and `tick` for
//! expiry. All are pure: state, page and `now` come in, events or a
//! `Rejection` go out. The shell appends the events, then acts on them.

use crate::commands::{Command, InlineControl, MessagingType, Recipient, SendContent, SendMessage};
use crate::events::{Channel, HandoverNotice};
use crate::events::{
    CommandRefused, ControlBasis, ControlCallAccepted, ControlCallCompleted, ControlRule,
    ControlView, DeliveryCopy, DriftEvidence, Event, FactOrigin, GraphError, GraphOutcome,
    InboundEvent, MessagingEventCopyReceived, MessagingEventReceived, OneTimeTokenConsumed,
    OneTimeTokenIssued, Optin, OwnerBasis, OwnershipDriftDetected, SendAccepted, SendBasis,
    SendOutcome, SendOutcomeRecorded, ThreadControlExpired, ThreadControlExtended,
    ThreadControlPassed, ThreadControlReleased, ThreadControlRequested, ThreadControlTaken,
    ThreadRouted, WindowBasis,
};
use crate::ids::{AppId, CommandId, Span, Timestamp};
use crate::ledger::{Control, ThreadLedger};
use crate::page::{AppKind, Management, Page, RoutingMode};
use crate::policy::{
    self, TagStatus, TagUse, CONTROL_IDLE_AFTER, HUMAN_AGENT_WINDOW, MAX_EXTENSION,
    ONE_TIME_TOKEN_LIFETIME,
};
use crate::rejection::{Rejection, RejectionKind};

// ---- Control at an instant. -------------------------------------------------

/// When the current owner's control lapses, if it does: 24 h after the later of
/// the control change and the last user action, or the extension if later.
/// Handover v1 has no expiry.
pub fn control_expiry(ledger: &ThreadLedger, page: &Page) -> Option<Timestamp> {
    let Control::Active {
        since,
        extended_until,
        ..
    } = &ledger.control
    else {
        return None;
    };
    if !page.mode.control_expires() {
        return None;
    }
    let active_from = ledger.last_user_action.map_or(*since, |u| u.max(*since));
    let lapse = active_from.plus(CONTROL_IDLE_AFTER);
    Some(extended_until.map_or(lapse, |e| e.max(lapse)))
}

/// Who controls the thread at `now`, counting a lapsed control as idle even
/// before its `ThreadControlExpired` is recorded.
pub fn control_at(ledger: &ThreadLedger, page: &Page, now: Timestamp) -> ControlView {
    match control_expiry(ledger, page) {
        Some(expiry) if now >= expiry => ControlView::Idle,
        _ => ledger.control.view(),
    }
}

/// The app that may answer the thread at `now` in this mode: the owner, or the
/// idle holder (default app, legacy primary). `None` in zero-config idle and
/// when the owner is unknown.
pub fn answering_app<'a>(view: &'a ControlView, page: &'a Page) -> Option<&'a AppId> {
    match view {
        ControlView::Owner { app } => Some(app),
        ControlView::Idle => page.mode.idle_holder(),
        ControlView::Unknown => None,
    }
}

/// `ThreadControlExpired` when the owner's control has lapsed at `now`.
pub fn tick(ledger: &ThreadLedger, page: &Page, now: Timestamp) -> Option<Event> {
    let owner = ledger.control.owner()?;
    let expiry = control_expiry(ledger, page)?;
    (now >= expiry).then(|| {
        ThreadControlExpired {
            thread: ledger.key.clone(),
            at: now,
            owner: owner.clone(),
            expired_at: expiry,
        }
        .into()
    })
}

// ---- Commands. --------------------------------------------------------------

/// Decides a command on one thread. `Ok` holds the events to append before
/// anything is forwarded to Meta (`ControlCallAccepted`, or `SendAccepted` and
/// any token consumption); `Err` the refusal, which the shell records with
/// [`refusal`] and answers in Meta's error shape.
pub fn decide(
    ledger: &ThreadLedger,
    page: &Page,
    command: &Command,
    now: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    let app = command.app();
    if page.app(app).is_none() {
        return Err(Rejection::new(
            RejectionKind::AppNotOnPage,
            format!("app {app} is not connected to page {}", page.id),
        ));
    }
    // Nothing ever happened on this thread: the user never wrote to the
    // page. (A token send names its thread through the token; a `user_ref`
    // from the checkbox plugin comes before any thread.)
    let by_psid = match command {
        Command::SendMessage(send) => matches!(send.recipient, Recipient::Psid(_)),
        _ => true,
    };
    if ledger.version == 0 && by_psid {
        return Err(Rejection::new(
            RejectionKind::UnknownRecipient,
            format!(
                "No matching user found: {} never wrote to page {}",
                ledger.key.psid, page.id
            ),
        ));
    }
    let mut events = Vec::with_capacity(2);
    match command {
        Command::SendMessage(send) => {
            let basis = check_send(ledger, page, send, now)?;
            let token = match (&send.recipient, &basis.window) {
                (Recipient::OneTimeToken(token), WindowBasis::OneTimeToken { .. }) => {
                    Some(token.clone())
                }
                _ => None,
            };
            events.push(
                SendAccepted {
                    thread: ledger.key.clone(),
                    at: now,
                    send: send.clone(),
                    basis,
                    attempts_recorded: true,
                }
                .into(),
            );
            if let Some(token) = token {
                events.push(
                    OneTimeTokenConsumed {
                        thread: ledger.key.clone(),
                        at: now,
                        token,
                        send_id: send.send_id.clone(),
                    }
                    .into(),
                );
            }
        }
        control => {
            let basis = check_control(ledger, page, control, now)?;
            events.push(
                ControlCallAccepted {
                    thread: ledger.key.clone(),
                    at: now,
                    command: control.clone(),
                    basis,
                }
                .into(),
            );
        }
    }
    Ok(events)
}

/// `pass_thread_metadata`: only the app that controls the thread (its
/// owner, or the app that answers it while idle) may share metadata about
/// it, as for a pass; a user who never wrote is no one.
pub fn check_thread_metadata(
    ledger: &ThreadLedger,
    page: &Page,
    app: &AppId,
    now: Timestamp,
) -> Result<(), Rejection> {
    if page.app(app).is_none() {
        return Err(Rejection::new(
            RejectionKind::AppNotOnPage,
            format!("app {app} is not connected to page {}", page.id),
        ));
    }
    if ledger.version == 0 {
        return Err(Rejection::new(
            RejectionKind::UnknownRecipient,
            format!(
                "No matching user found: {} never wrote to page {}",
                ledger.key.psid, page.id
            ),
        ));
    }
    let view = control_at(ledger, page, now);
    match answering_app(&view, page) {
        Some(holder) if holder == app => Ok(()),
        holder => Err(Rejection::new(
            RejectionKind::NotControlOwner,
            format!(
                "pass_thread_metadata: calling app {app} is not the thread owner{}",
                holder.map_or_else(String::new, |h| format!("; app {h} controls this thread"))
            ),
        )),
    }
}

/// The event that records a refusal.
/// The payload of a refused send is kept whole only up to this many bytes;
/// a larger one is recorded as a summary, so a refusal costs bounded disk.
pub const REFUSED_PAYLOAD_KEPT_BYTES: usize = 1024;

pub fn refusal(
    ledger: &ThreadLedger,
    command: &Command,
    rejection: &Rejection,
    now: Timestamp,
) -> Event {
    let mut command = command.clone();
    if let Command::SendMessage(send) = &mut command {
        send.payload = summarize_payload(&send.payload);
    }
    CommandRefused {
        thread: ledger.key.clone(),
        at: now,
        command,
        rejection: rejection.clone(),
    }
    .into()
}

/// A refused send's payload as it is recorded: whole when small, else its
/// size and top-level keys.
fn summarize_payload(payload: &serde_json::Value) -> serde_json::Value {
    let bytes = serde_json::to_vec(payload).map_or(0, |b| b.len());
    if bytes <= REFUSED_PAYLOAD_KEPT_BYTES {
        return payload.clone();
    }
    let keys: Vec<&String> = payload
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    serde_json::json!({ "omitted": true, "bytes": bytes, "keys": keys })
}

/// `extend_thread_control`'s `duration`: 1 second to 7 days.
pub fn check_extension(duration_secs: u64) -> Result<(), Rejection> {
    let max = (MAX_EXTENSION.millis() / 1000) as u64;
    if duration_secs == 0 || duration_secs > max {
        return Err(Rejection::new(
            RejectionKind::InvalidDuration,
            format!("duration must be between 1 and {max} seconds, got {duration_secs}"),
        ));
    }
    Ok(())
}

/// The refusal for a One-Time Notification token that no thread knows.
pub fn unknown_token() -> Rejection {
    Rejection::new(
        RejectionKind::TokenUnknown,
        "one_time_notif_token is not a token this page was given",
    )
}

fn check_control(
    ledger: &ThreadLedger,
    page: &Page,
    command: &Command,
    now: Timestamp,
) -> Result<ControlBasis, Rejection> {
    let view = control_at(ledger, page, now);
    let app = command.app();
    let rule = match command {
        Command::PassThreadControl { target, .. } => {
            let rule = may_pass(&view, page, app)?;
            resolve_target(page, app, target.as_ref())?;
            rule
        }
        Command::TakeThreadControl { .. } => may_take(&view, page, app)?,
        Command::RequestThreadControl { .. } => may_request(&view, page, app)?.0,
        Command::ReleaseThreadControl { .. } => may_release(&view, page, app)?,
        Command::ExtendThreadControl { duration_secs, .. } => {
            check_extension(*duration_secs)?;
            may_extend(&view, page, app)?
        }
        Command::SendMessage(_) => unreachable!("sends are decided by check_send"),
    };
    Ok(ControlBasis {
        mode: page.mode.name().to_owned(),
        before: view,
        rule,
    })
}

fn not_control_owner(view: &ControlView, page: &Page, app: &AppId, call: &str) -> Rejection {
    let reason = match view {
        ControlView::Owner { app: owner } => {
            format!("{call}: calling app {app} is not the thread owner; app {owner} controls this thread")
        }
        ControlView::Idle => match page.mode.idle_holder() {
            Some(holder) => format!(
                "{call}: the thread is idle and app {app} does not hold it; only {holder} may act on an idle thread"
            ),
            None => format!("{call}: the thread is idle; nobody controls it"),
        },
        ControlView::Unknown => format!("{call}: calling app {app} is not the thread owner"),
    };
    Rejection::new(RejectionKind::NotControlOwner, reason)
}

fn may_pass(view: &ControlView, page: &Page, app: &AppId) -> Result<ControlRule, Rejection> {
    match (&page.mode, view) {
        (_, ControlView::Owner { app: owner }) if owner == app => Ok(ControlRule::OwnerMayPass),
        (RoutingMode::ZeroConfig, ControlView::Idle) => Ok(ControlRule::AnyAppMayPassIdleThread),
        (_, ControlView::Idle) if page.mode.idle_holder() == Some(app) => {
            Ok(ControlRule::IdleHolderMayPass)
        }
        // Meta contradicted the ledger: only Meta knows, so it decides.
        (_, ControlView::Unknown) => Ok(ControlRule::OwnerMayPass),
        _ => Err(not_control_owner(view, page, app, "pass_thread_control")),
    }
}

/// The app a pass goes to: `target_app_id`, or by default the default app
/// (Conversation Routing) or the primary (a legacy secondary passing back).
pub fn resolve_target(
    page: &Page,
    app: &AppId,
    target: Option<&AppId>,
) -> Result<AppId, Rejection> {
    let target = match (target, &page.mode) {
        (Some(t), _) => t.clone(),
        (None, RoutingMode::ConversationRouting { default_app }) => default_app.clone(),
        (None, RoutingMode::HandoverV1 { primary, .. }) if primary != app => primary.clone(),
        (None, RoutingMode::HandoverV1 { .. }) => {
            return Err(Rejection::new(
                RejectionKind::InvalidTarget,
                "target_app_id is required when the primary receiver passes control",
            ))
        }
        (None, RoutingMode::ZeroConfig) => {
            return Err(Rejection::new(
                RejectionKind::InvalidTarget,
                "target_app_id is required: a zero-config page has no default app",
            ))
        }
    };
    if &target == app {
        return Err(Rejection::new(
            RejectionKind::InvalidTarget,
            format!("app {app} cannot pass control to itself"),
        ));
    }
    if !page.knows_app(&target) {
        return Err(Rejection::new(
            RejectionKind::InvalidTarget,
            format!(
                "target_app_id {target} is not an app connected to page {}",
                page.id
            ),
        ));
    }
    Ok(target)
}

fn may_take(view: &ControlView, page: &Page, app: &AppId) -> Result<ControlRule, Rejection> {
    let profile = page.app(app);
    let allowed = profile.is_some_and(|p| p.may_take_control);
    match &page.mode {
        RoutingMode::ZeroConfig => Err(Rejection::new(
            RejectionKind::TakeNotSupported,
            "take_thread_control is not supported when Conversation Routing is not enabled (zero-config page: use request_thread_control, or set a default app)",
        )),
        RoutingMode::HandoverV1 { primary, .. } => {
            if primary != app {
                return Err(Rejection::new(
                    RejectionKind::TakeNotAllowed,
                    format!("only the primary receiver ({primary}) may take thread control"),
                ));
            }
            // Taking what one holds succeeds at Meta and changes nothing.
            match answering_app(view, page) {
                Some(holder) if holder == app => Ok(ControlRule::CallerAlreadyHolds),
                _ => Ok(ControlRule::PrimaryMayTake),
            }
        }
        RoutingMode::ConversationRouting { .. } => match view {
            ControlView::Owner { app: owner } if owner == app => Ok(ControlRule::CallerAlreadyHolds),
            ControlView::Idle => Ok(ControlRule::IdleThreadMayBeTaken),
            _ if allowed => Ok(ControlRule::AppMayTakeControl),
            _ => Err(Rejection::new(
                RejectionKind::TakeNotAllowed,
                format!("app {app} is not allowed to take control of conversations on page {} (Advanced Messaging setting)", page.id),
            )),
        },
    }
}

/// Whether `app` may request control, and which app Meta will tell.
fn may_request(
    view: &ControlView,
    page: &Page,
    app: &AppId,
) -> Result<(ControlRule, Option<AppId>), Rejection> {
    let already = || {
        Rejection::new(
            RejectionKind::AlreadyOwner,
            format!("app {app} already controls (or answers) this thread"),
        )
    };
    match (&page.mode, view) {
        (RoutingMode::HandoverV1 { primary, .. }, _) if primary == app => Err(Rejection::new(
            RejectionKind::NotSupportedInMode,
            "the primary receiver takes control rather than requesting it",
        )),
        (_, ControlView::Owner { app: owner }) if owner == app => Err(already()),
        (RoutingMode::ZeroConfig, ControlView::Idle) => {
            Ok((ControlRule::FirstRequesterGetsControl, None))
        }
        (_, ControlView::Idle) if page.mode.idle_holder() == Some(app) => Err(already()),
        (_, view) => Ok((
            ControlRule::RequestGoesToHolder,
            answering_app(view, page).cloned(),
        )),
    }
}

fn may_release(view: &ControlView, page: &Page, app: &AppId) -> Result<ControlRule, Rejection> {
    match view {
        ControlView::Owner { app: owner } if owner == app => Ok(ControlRule::OwnerMayRelease),
        ControlView::Unknown => Ok(ControlRule::OwnerMayRelease),
        // The legacy primary owns every thread nobody else holds: it is the
        // current owner, so Meta lets it release (the thread stays idle).
        ControlView::Idle
            if matches!(page.mode, RoutingMode::HandoverV1 { .. })
                && page.mode.idle_holder() == Some(app) =>
        {
            Ok(ControlRule::OwnerMayRelease)
        }
        _ => Err(not_control_owner(view, page, app, "release_thread_control")),
    }
}

fn may_extend(view: &ControlView, page: &Page, app: &AppId) -> Result<ControlRule, Rejection> {
    if !page.mode.control_expires() {
        // Legacy control never lapses: the holder (the primary, by default)
        // may extend, and nothing changes.
        return match answering_app(view, page) {
            Some(holder) if holder == app => Ok(ControlRule::OwnerMayExtend),
            _ => Err(not_control_owner(view, page, app, "extend_thread_control")),
        };
    }
    match view {
        ControlView::Owner { app: owner } if owner == app => Ok(ControlRule::OwnerMayExtend),
        ControlView::Unknown => Ok(ControlRule::OwnerMayExtend),
        _ => Err(not_control_owner(view, page, app, "extend_thread_control")),
    }
}

fn check_send(
    ledger: &ThreadLedger,
    page: &Page,
    send: &SendMessage,
    now: Timestamp,
) -> Result<SendBasis, Rejection> {
    if let Some(block) = &page.blocked {
        return Err(Rejection::new(
            RejectionKind::PageBlocked,
            format!(
                "page {} is blocked from messaging by Meta's policy enforcement since {}{}",
                page.id,
                block.since,
                block
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        ));
    }
    // Shape before state: these are refused whoever owns the thread.
    let is_message = matches!(send.content, SendContent::Message { .. });
    match (send.messaging_type, send.tag.as_deref()) {
        (Some(MessagingType::MessageTag), None) => {
            return Err(Rejection::new(
                RejectionKind::TagMismatch,
                "messaging_type MESSAGE_TAG requires a tag",
            ))
        }
        (Some(t), Some(tag)) if t != MessagingType::MessageTag => {
            return Err(Rejection::new(
                RejectionKind::TagMismatch,
                format!("tag {tag} requires messaging_type MESSAGE_TAG"),
            ))
        }
        (None, Some(tag)) => {
            return Err(Rejection::new(
                RejectionKind::TagMismatch,
                format!("tag {tag} requires messaging_type MESSAGE_TAG"),
            ))
        }
        (None, None) if is_message && !matches!(send.recipient, Recipient::OneTimeToken(_)) => {
            return Err(Rejection::new(
                RejectionKind::MessagingTypeRequired,
                "messaging_type is required (RESPONSE, UPDATE or MESSAGE_TAG)",
            ))
        }
        _ => {}
    }
    // Then the tag (known, in force, allowed to this app) and the token
    // recipient: a request Meta cannot carry out is refused as such, before
    // anyone asks who controls the thread (Meta must resolve a token before it
    // knows the thread at all).
    let tag = match (send.messaging_type, send.tag.as_deref()) {
        (Some(MessagingType::MessageTag), Some(tag)) => {
            Some((tag, tag_use(page, &send.app, tag, now)?))
        }
        _ => None,
    };
    let token = match &send.recipient {
        Recipient::OneTimeToken(token) => Some(token_basis(ledger, page, token, now)?),
        Recipient::Psid(_) | Recipient::UserRef(_) => None,
    };

    let view = control_at(ledger, page, now);
    let owner = owner_basis(&view, page, &send.app, &send.recipient)?;
    if let Some(inline) = &send.thread_control {
        match inline {
            InlineControl::Pass { app_id } => {
                may_pass(&view, page, &send.app)?;
                resolve_target(page, &send.app, app_id.as_ref())?;
            }
            InlineControl::Release => {
                may_release(&view, page, &send.app)?;
            }
        }
    }
    let window = match token {
        Some(basis) => basis,
        None => window_basis(ledger, send, tag, now)?,
    };
    Ok(SendBasis {
        mode: page.mode.name().to_owned(),
        owner,
        control: view,
        window,
    })
}

fn owner_basis(
    view: &ControlView,
    page: &Page,
    app: &AppId,
    recipient: &Recipient,
) -> Result<OwnerBasis, Rejection> {
    if matches!(page.mode, RoutingMode::ZeroConfig) {
        return Ok(OwnerBasis::ZeroConfig);
    }
    // A user_ref has no thread yet: it is as good as idle.
    let view = if matches!(recipient, Recipient::UserRef(_)) {
        &ControlView::Idle
    } else {
        view
    };
    match view {
        ControlView::Owner { app: owner } if owner == app => Ok(OwnerBasis::ThreadOwner),
        ControlView::Owner { app: owner } => Err(Rejection::new(
            RejectionKind::NotThreadOwner,
            format!("another app ({owner}) is controlling this thread; app {app} may not send to it"),
        )),
        ControlView::Idle if page.mode.idle_holder() == Some(app) => Ok(OwnerBasis::IdleHolder),
        ControlView::Idle => Err(Rejection::new(
            RejectionKind::NotThreadOwner,
            format!(
                "the thread is idle and only the default app ({}) may send to it; app {app} must get control first",
                page.mode.idle_holder().map(AppId::as_str).unwrap_or("none")
            ),
        )),
        ControlView::Unknown => Ok(OwnerBasis::OwnerUnknown),
    }
}

fn outside_window(ledger: &ThreadLedger, now: Timestamp) -> Rejection {
    let reason = match ledger.window {
        Some(w) => format!(
            "this message is sent outside of the allowed window: the window opened at {} closed at {} (now {now})",
            w.opened_at, w.closes_at
        ),
        None => "this message is sent outside of the allowed window: the person has not messaged the page".to_owned(),
    };
    Rejection::new(RejectionKind::OutsideWindow, reason)
}

/// The window part of a send whose tag and token were already checked.
fn window_basis(
    ledger: &ThreadLedger,
    send: &SendMessage,
    tag: Option<(&str, TagUse)>,
    now: Timestamp,
) -> Result<WindowBasis, Rejection> {
    if let Recipient::UserRef(_) = &send.recipient {
        return Ok(WindowBasis::UserRef);
    }
    match tag {
        Some((_, TagUse::HumanAgent)) => {
            let Some(last) = ledger.last_user_action else {
                return Err(outside_window(ledger, now));
            };
            let closes_at = last.plus(HUMAN_AGENT_WINDOW);
            if now >= closes_at {
                return Err(Rejection::new(
                    RejectionKind::OutsideWindow,
                    format!("HUMAN_AGENT allows 7 days after the person's last message ({last}); that closed at {closes_at}"),
                ));
            }
            return Ok(WindowBasis::HumanAgent {
                last_user_action_at: last,
                closes_at,
            });
        }
        Some((tag, _)) => {
            // An update tag still in force: outside the window, but only
            // toward a person who started a conversation.
            if ledger.last_user_action.is_none() {
                return Err(outside_window(ledger, now));
            }
            let valid_until = policy::TAG_TABLE
                .iter()
                .find(|e| e.name == tag)
                .and_then(|e| e.retired_at);
            return Ok(WindowBasis::MessageTag {
                tag: tag.to_owned(),
                valid_until,
            });
        }
        None => {}
    }
    match ledger.window {
        Some(w) if now < w.closes_at => Ok(WindowBasis::StandardWindow {
            opened_at: w.opened_at,
            closes_at: w.closes_at,
            reason: w.reason,
        }),
        _ => Err(outside_window(ledger, now)),
    }
}

/// What a tag allows this app at `now`, or why Meta refuses it (unknown,
/// retired, a permission the page or app lacks). Window checks come later.
fn tag_use(page: &Page, app: &AppId, tag: &str, now: Timestamp) -> Result<TagUse, Rejection> {
    match policy::tag_status(tag, now) {
        TagStatus::Unknown => Err(Rejection::new(
            RejectionKind::UnknownTag,
            format!("invalid parameter: tag {tag} is not a message tag Meta accepts"),
        )),
        TagStatus::Retired { since } => Err(Rejection::new(
            RejectionKind::RetiredTag,
            format!("invalid parameter: tag {tag} was retired by Meta at {since}; only HUMAN_AGENT remains for conversations"),
        )),
        TagStatus::InForce(TagUse::NeedsNewsPermission) => Err(Rejection::new(
            RejectionKind::TagNeedsPermission,
            format!("tag {tag} needs the News Messaging permission, which page {} does not have", page.id),
        )),
        TagStatus::InForce(TagUse::Unconfirmed) => Err(Rejection::new(
            RejectionKind::UnknownTag,
            format!("tag {tag} is not confirmed by Meta's current documentation; Baton does not send it"),
        )),
        TagStatus::InForce(TagUse::HumanAgent) => {
            if page.app(app).map(|p| p.kind) != Some(AppKind::Human) {
                return Err(Rejection::new(
                    RejectionKind::HumanAgentNotHuman,
                    format!("the HUMAN_AGENT tag is for human agents only; app {app} is a bot app"),
                ));
            }
            Ok(TagUse::HumanAgent)
        }
        TagStatus::InForce(use_ @ TagUse::OutsideWindow) => Ok(use_),
    }
}

fn token_basis(
    ledger: &ThreadLedger,
    page: &Page,
    token: &str,
    now: Timestamp,
) -> Result<WindowBasis, Rejection> {
    let Some(state) = ledger.token(token) else {
        return Err(unknown_token());
    };
    if ledger.key.page != page.id {
        return Err(Rejection::new(
            RejectionKind::TokenWrongPage,
            format!(
                "one_time_notif_token belongs to page {}, not {}",
                ledger.key.page, page.id
            ),
        ));
    }
    if let Some(used) = &state.consumed {
        return Err(Rejection::new(
            RejectionKind::TokenSpent,
            format!(
                "one_time_notif_token was already used at {} by send {}",
                used.at, used.send_id
            ),
        ));
    }
    if now >= state.expires_at {
        return Err(Rejection::new(
            RejectionKind::TokenExpired,
            format!("one_time_notif_token expired at {}", state.expires_at),
        ));
    }
    Ok(WindowBasis::OneTimeToken {
        token: token.to_owned(),
        issued_at: state.issued_at,
        expires_at: state.expires_at,
    })
}

// ---- Meta's answers. --------------------------------------------------------

/// Errors by which Meta says the caller does not control the thread.
pub fn is_not_owner_error(error: &GraphError) -> bool {
    crate::graph::classify(error) == crate::graph::AnswerClass::NotOwner
}

/// Meta's answer to a forwarded thread-control call (one `decide` accepted):
/// the completion, and on success the handover fact itself (release sends no
/// webhook, so Baton's own success is the only record of it). A refusal that
/// says "not the owner" is drift: the ledger now says it does not know.
pub fn settle_control(
    ledger: &ThreadLedger,
    page: &Page,
    command: &Command,
    outcome: &GraphOutcome,
    now: Timestamp,
) -> Vec<Event> {
    let thread = ledger.key.clone();
    let mut events: Vec<Event> = vec![ControlCallCompleted {
        thread: thread.clone(),
        at: now,
        call_id: command.id().clone(),
        outcome: outcome.clone(),
    }
    .into()];
    match outcome {
        GraphOutcome::Succeeded => {
            let origin = FactOrigin::Call {
                call_id: command.id().clone(),
            };
            if let Some(fact) = control_fact(ledger, page, command, origin, now) {
                events.extend(unless_superseded(ledger, page, command.id(), fact, now));
            }
        }
        GraphOutcome::Failed { error } if is_not_owner_error(error) => {
            events.push(drift_to_unknown(ledger, page, command.id(), error, now));
        }
        GraphOutcome::Failed { .. } | GraphOutcome::Unknown { .. } => {}
    }
    events
}

/// The fact of a call Meta accepted, unless the ledger saw control change
/// after Baton accepted the call (a Page Inbox takeover webhook, say): then
/// Meta's answer is older news. A fact that would change nothing is dropped;
/// one that would change the ledger is kept as stale evidence (Baton asks
/// Meta) instead of being applied.
fn unless_superseded(
    ledger: &ThreadLedger,
    page: &Page,
    call_id: &CommandId,
    fact: Event,
    now: Timestamp,
) -> Option<Event> {
    let superseded = ledger
        .calls_in_flight
        .iter()
        .find(|c| &c.call_id == call_id)
        .is_some_and(|c| ledger.control_changed_version > c.accepted_version);
    if !superseded {
        return Some(fact);
    }
    let view = control_at(ledger, page, now);
    let mut after = ledger.clone();
    after.apply(&fact);
    let claimed = control_at(&after, page, now);
    (claimed != view).then(|| {
        stale_evidence(
            ledger,
            &view,
            claimed,
            DriftEvidence::CallAnswer {
                command_id: call_id.clone(),
            },
            now,
            now,
        )
    })
}

fn drift_to_unknown(
    ledger: &ThreadLedger,
    page: &Page,
    command_id: &CommandId,
    error: &GraphError,
    now: Timestamp,
) -> Event {
    OwnershipDriftDetected {
        thread: ledger.key.clone(),
        at: now,
        ledger: control_at(ledger, page, now),
        observed: ControlView::Unknown,
        evidence: DriftEvidence::GraphRefusal {
            command_id: command_id.clone(),
            code: error.code,
            subcode: error.subcode,
        },
    }
    .into()
}

/// The handover fact a successful call (or inline control) produces.
fn control_fact(
    ledger: &ThreadLedger,
    page: &Page,
    command: &Command,
    origin: FactOrigin,
    now: Timestamp,
) -> Option<Event> {
    let thread = ledger.key.clone();
    let view = control_at(ledger, page, now);
    let previous = match &view {
        ControlView::Owner { app } => Some(app.clone()),
        _ => None,
    };
    // Meta's webhook for this very change may have been recorded first (Meta
    // sends it as it answers): the fact is then already in the ledger.
    let already = match command {
        Command::PassThreadControl { app, target, .. } => {
            resolve_target(page, app, target.as_ref())
                .is_ok_and(|to| view == ControlView::Owner { app: to })
        }
        Command::TakeThreadControl { app, .. } => {
            view == (ControlView::Owner { app: app.clone() })
                || (!page.mode.control_expires() && answering_app(&view, page) == Some(app))
        }
        // Legacy control does not expire: an extension changes nothing.
        Command::ExtendThreadControl { .. } => !page.mode.control_expires(),
        Command::RequestThreadControl { app, .. } => {
            ledger.pending_requests.iter().any(|r| &r.app == app)
        }
        // Settled twice (the echo, then Meta's answer): nothing left to release.
        Command::ReleaseThreadControl { .. } => view == ControlView::Idle,
        _ => false,
    };
    if already {
        return None;
    }
    let event: Event = match command {
        Command::PassThreadControl {
            app,
            target,
            metadata,
            ..
        } => ThreadControlPassed {
            thread,
            at: now,
            from: previous,
            to: resolve_target(page, app, target.as_ref()).ok()?,
            metadata: metadata.clone(),
            origin,
        }
        .into(),
        Command::TakeThreadControl { app, metadata, .. } => ThreadControlTaken {
            thread,
            at: now,
            from: previous,
            by: app.clone(),
            metadata: metadata.clone(),
            origin,
        }
        .into(),
        Command::RequestThreadControl { app, metadata, .. } => {
            let (rule, told) = may_request(&view, page, app).ok()?;
            ThreadControlRequested {
                thread,
                at: now,
                by: app.clone(),
                told,
                metadata: metadata.clone(),
                granted: rule == ControlRule::FirstRequesterGetsControl,
                origin,
            }
            .into()
        }
        Command::ReleaseThreadControl { app, metadata, .. } => ThreadControlReleased {
            thread,
            at: now,
            by: app.clone(),
            metadata: metadata.clone(),
            origin,
        }
        .into(),
        Command::ExtendThreadControl {
            app, duration_secs, ..
        } => {
            let asked = now.plus(Span::seconds(*duration_secs as i64));
            let until = control_expiry(ledger, page).map_or(asked, |e| e.max(asked));
            ThreadControlExtended {
                thread,
                at: now,
                by: app.clone(),
                duration_secs: *duration_secs,
                until,
                origin,
            }
            .into()
        }
        Command::SendMessage(send) => {
            let inline = send.thread_control.as_ref()?;
            let as_call = match inline {
                InlineControl::Pass { app_id } => Command::PassThreadControl {
                    call_id: send.send_id.clone(),
                    app: send.app.clone(),
                    target: app_id.clone(),
                    metadata: None,
                },
                InlineControl::Release => Command::ReleaseThreadControl {
                    call_id: send.send_id.clone(),
                    app: send.app.clone(),
                    metadata: None,
                },
            };
            return control_fact(ledger, page, &as_call, origin, now);
        }
    };
    Some(event)
}

/// Meta's answer to a send: the outcome, and for a sent message with inline
/// `thread_control` the same handover fact the separate call would give.
pub fn settle_send(
    ledger: &ThreadLedger,
    page: &Page,
    send: &SendMessage,
    outcome: &SendOutcome,
    now: Timestamp,
) -> Vec<Event> {
    let mut events: Vec<Event> = vec![SendOutcomeRecorded {
        thread: ledger.key.clone(),
        at: now,
        send_id: send.send_id.clone(),
        outcome: outcome.clone(),
    }
    .into()];
    match outcome {
        // Inline thread control rides on messages only: a sender action's
        // `thread_control` records nothing Meta has not confirmed.
        SendOutcome::Sent { .. } | SendOutcome::SettledByEcho { .. }
            if matches!(send.content, SendContent::Message { .. }) =>
        {
            let origin = FactOrigin::Call {
                call_id: send.send_id.clone(),
            };
            let command = Command::SendMessage(send.clone());
            if let Some(fact) = control_fact(ledger, page, &command, origin, now) {
                events.extend(unless_superseded(ledger, page, &send.send_id, fact, now));
            }
        }
        SendOutcome::Sent { .. } | SendOutcome::SettledByEcho { .. } => {}
        SendOutcome::Failed { error } if is_not_owner_error(error) => {
            events.push(drift_to_unknown(ledger, page, &send.send_id, error, now));
        }
        SendOutcome::Failed { .. } | SendOutcome::Unknown { .. } => {}
    }
    // A definite failure never used the token: the user's opt-in stands.
    if let (SendOutcome::Failed { .. }, Recipient::OneTimeToken(token)) = (outcome, &send.recipient)
    {
        events.push(
            crate::events::OneTimeTokenReleased {
                thread: ledger.key.clone(),
                at: now,
                token: token.clone(),
                send_id: send.send_id.clone(),
            }
            .into(),
        );
    }
    events
}

// ---- What Meta tells Baton. -------------------------------------------------

/// Something Meta told Baton about a thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The first copy of a messaging item (ingress dedupes by `dedupe_key`).
    Item {
        at: Timestamp,
        dedupe_key: String,
        delivery: DeliveryCopy,
        event: InboundEvent,
        raw: serde_json::Value,
    },
    /// Another app's copy of an item already recorded.
    Copy {
        at: Timestamp,
        dedupe_key: String,
        delivery: DeliveryCopy,
        /// The kind of the recorded item (a standby copy may lack a postback's payload).
        event: InboundEvent,
        raw: serde_json::Value,
    },
    /// Meta's `thread_owner` answer: `None` when the thread is idle.
    ThreadOwner {
        at: Timestamp,
        owner: Option<AppId>,
        /// The thread's version when Baton asked: a control change, or a
        /// control call accepted, folded since is newer than the answer.
        asked_at_version: u64,
    },
}

/// Folds what Meta says into facts: the item itself, the window it opens, the
/// token it issues, entry-point routing of an idle thread, and drift whenever
/// Meta's view contradicts the ledger (the ledger then follows Meta). A lapsed
/// control is recorded as expired first.
pub fn observe(
    ledger: &ThreadLedger,
    page: &Page,
    observation: Observation,
    now: Timestamp,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut ledger = ledger.clone();
    if let Some(expired) = tick(&ledger, page, now) {
        ledger.apply(&expired);
        events.push(expired);
    }
    let thread = ledger.key.clone();
    let view = control_at(&ledger, page, now);
    match observation {
        Observation::Item {
            at,
            dedupe_key,
            delivery,
            event,
            raw,
        } => {
            // A time from the future is kept verbatim and trusted for nothing.
            if at > now.plus(policy::FUTURE_TOLERANCE) {
                events.push(
                    MessagingEventReceived {
                        thread,
                        at,
                        dedupe_key,
                        delivery,
                        event,
                        window: None,
                        raw,
                        distrusted_time: true,
                    }
                    .into(),
                );
                return events;
            }
            let window = policy::window_grant_after(&event, at, ledger.ad_click_at);
            let token = match &event {
                InboundEvent::Optin {
                    optin: Optin::OneTimeNotification { token, payload },
                } => Some((token.clone(), payload.clone())),
                _ => None,
            };
            let handover = match &event {
                InboundEvent::Handover { notice } => Some(notice.clone()),
                _ => None,
            };
            let routing = match &handover {
                Some(notice) => handover_facts(&ledger, page, &view, &delivery, notice, at, now),
                None => routing_or_drift(
                    &ledger,
                    page,
                    &view,
                    &delivery,
                    &event,
                    &dedupe_key,
                    window.is_some() && enters_thread(&event),
                    at,
                    now,
                )
                .into_iter()
                .collect(),
            };
            events.push(
                MessagingEventReceived {
                    thread: thread.clone(),
                    at,
                    dedupe_key,
                    delivery,
                    event,
                    window,
                    raw,
                    distrusted_time: false,
                }
                .into(),
            );
            events.extend(routing);
            if let Some((token, payload)) = token {
                if ledger.token(&token).is_none() {
                    events.push(
                        OneTimeTokenIssued {
                            thread,
                            at,
                            token,
                            payload,
                            expires_at: at.plus(ONE_TIME_TOKEN_LIFETIME),
                        }
                        .into(),
                    );
                }
            }
        }
        Observation::Copy {
            at,
            dedupe_key,
            delivery,
            event,
            raw,
        } => {
            // Another app's copy of a handover webhook is the same fact again;
            // a copy timed in the future changes nothing. A copy of a user
            // message routes like the first one would: the copies of one
            // message reach Baton in any order (the first may be another
            // app's standby copy, the routing one held back by Meta).
            let activates = enters_thread(&event) && policy::window_grant(&event, at).is_some();
            // The fact was first recorded when its first copy arrived: a
            // copy is never newer than a control change Meta timed at the
            // same moment (the tie that arrival order breaks for distinct
            // facts goes to the ledger here).
            let not_newer = ledger
                .control_changed_at
                .is_some_and(|changed| at <= changed);
            let routing = match event {
                _ if at > now.plus(policy::FUTURE_TOLERANCE) => None,
                InboundEvent::Handover { .. } => None,
                // The first copy of an echo said all an echo can say.
                InboundEvent::Echo { .. } => None,
                _ if not_newer && ledger.control_changed_on_meta_clock => None,
                _ => routing_or_drift(
                    &ledger,
                    page,
                    &view,
                    &delivery,
                    &event,
                    &dedupe_key,
                    activates,
                    at,
                    now,
                ),
            };
            events.push(
                MessagingEventCopyReceived {
                    thread,
                    at,
                    dedupe_key,
                    delivery,
                    raw,
                }
                .into(),
            );
            events.extend(routing);
        }
        Observation::ThreadOwner {
            at,
            owner,
            asked_at_version,
        } => {
            let observed = match owner {
                Some(app) => ControlView::Owner { app },
                None => ControlView::Idle,
            };
            // A legacy primary holds every thread nobody else does: Meta names
            // it where the ledger says idle, and both mean the same.
            let as_meta_says = crate::graph::thread_owner_view(&page.mode, view.clone());
            // Control changed in the ledger after Baton asked (a take
            // answered while the question was on its way), or Baton forwarded
            // a control call since that is still unanswered (its answer
            // settles it): Meta's answer may describe the moment before,
            // so it is older news, kept and not applied.
            let older = ledger.control_changed_version > asked_at_version
                || ledger
                    .calls_in_flight
                    .iter()
                    .any(|call| call.accepted_version > asked_at_version);
            if observed == as_meta_says {
                events.push(
                    crate::events::OwnershipConfirmed {
                        thread,
                        at,
                        owner: view,
                    }
                    .into(),
                );
            } else if older {
                events.push(stale_evidence(
                    &ledger,
                    &view,
                    observed,
                    DriftEvidence::ThreadOwnerAnswer,
                    at,
                    now,
                ));
            } else {
                events.push(
                    OwnershipDriftDetected {
                        thread,
                        at,
                        ledger: view,
                        observed,
                        evidence: DriftEvidence::ThreadOwnerAnswer,
                    }
                    .into(),
                );
            }
        }
    }
    events
}

/// Whether a refusal that rests on the ledger's owner should first be checked
/// with Meta: nobody at Meta has confirmed the owner for `RECONFIRM_AFTER`.
pub fn needs_confirmation(ledger: &ThreadLedger, now: Timestamp) -> bool {
    ledger
        .confirmed_at
        .is_none_or(|c| now >= c.plus(policy::RECONFIRM_AFTER))
}

/// Whether a user action enters the thread, so that Conversation Routing
/// hands an idle thread to an app: a message (quick replies included), a
/// postback (Get Started) or a referral. A reaction or a plugin opt-in opens
/// the window but leaves an idle thread idle (reference §1.3: idle means "no
/// user→business message in the last 24 h"; routing happens "when a user
/// enters an idle thread or taps Get Started").
fn enters_thread(event: &InboundEvent) -> bool {
    matches!(
        event,
        InboundEvent::Message { .. }
            | InboundEvent::QuickReply { .. }
            | InboundEvent::Postback { .. }
            | InboundEvent::Referral { .. }
    )
}

/// Whether Meta's `at` lies within the clock-skew tolerance, either side,
/// of a control change Baton timed by its own clock: which came first is
/// then only a guess, and Meta is asked rather than the ledger changed.
fn a_guess_against_batons_clock(ledger: &ThreadLedger, at: Timestamp) -> bool {
    !ledger.control_changed_on_meta_clock
        && ledger.control_changed_at.is_some_and(|changed| {
            at.plus(policy::CLOCK_SKEW_TOLERANCE) >= changed
                && at <= changed.plus(policy::CLOCK_SKEW_TOLERANCE)
        })
}

/// Whether evidence Meta timed `at` is not newer than the ledger's last
/// control change: strictly older when both times are Meta's (a tie goes to
/// arrival order); at or before the change plus the clock-skew tolerance
/// when the change was timed by Baton's clock.
pub fn is_stale(ledger: &ThreadLedger, at: Timestamp) -> bool {
    match ledger.control_changed_at {
        None => false,
        // Both times are Meta's: strictly older is older; on a tie, arrival
        // order decides (the later arrival is the newer news).
        Some(changed) if ledger.control_changed_on_meta_clock => at < changed,
        // Meta's time against Baton's: Meta's clock may run ahead.
        Some(changed) => at <= changed.plus(policy::CLOCK_SKEW_TOLERANCE),
    }
}

/// The record of stale evidence that contradicts the ledger: kept, not
/// applied (Baton asks Meta).
fn stale_evidence(
    ledger: &ThreadLedger,
    view: &ControlView,
    claimed: ControlView,
    evidence: DriftEvidence,
    evidence_at: Timestamp,
    now: Timestamp,
) -> Event {
    crate::events::StaleEvidenceIgnored {
        thread: ledger.key.clone(),
        at: now,
        evidence_at,
        claimed,
        ledger: view.clone(),
        ledger_since: ledger.control_changed_at.unwrap_or(evidence_at),
        evidence,
    }
    .into()
}

/// Whether evidence delivered on `delivery.app`'s endpoint would take control
/// away from another managed app. The delivering app's own developers know its
/// Meta secret, so such evidence is confirmed with Meta (`thread_owner`)
/// before Baton refuses the current owner anything; evidence that an app
/// lost control, delivered on that app's own endpoint, is believed.
pub fn takes_from_another_app(
    ledger: &ThreadLedger,
    page: &Page,
    view: &ControlView,
    delivery: &DeliveryCopy,
    gains: &AppId,
    now: Timestamp,
) -> bool {
    let ControlView::Owner { app: owner } = view else {
        return false;
    };
    owner != &delivery.app
        && page
            .app(owner)
            .is_some_and(|p| p.management == Management::Managed)
        && !corroborated(ledger, page, gains, now)
}

/// The control calls Baton forwarded lately (`CallInFlight::lately`), and
/// has not had Meta's answer to yet, that hand the thread to `to`: a take
/// by `to`, or a pass whose target resolves to `to`. A call whose answer
/// never came (a crash between the call and its record) stops counting.
fn calls_handing_to<'a>(
    ledger: &'a ThreadLedger,
    page: &'a Page,
    to: &'a AppId,
    now: Timestamp,
) -> impl Iterator<Item = &'a crate::ledger::CallInFlight> + 'a {
    ledger.calls_in_flight.iter().filter(move |call| {
        call.lately(now)
            && match &call.hands {
                crate::ledger::Hands::Take => &call.by == to,
                crate::ledger::Hands::Pass { target } => {
                    resolve_target(page, &call.by, target.as_ref()).is_ok_and(|t| &t == to)
                }
            }
    })
}

/// Whether a handover notice (`from` → `to`) is what a control call Baton
/// forwarded lately, and has not had Meta's answer to yet, does: a pass by
/// `from` to `to`, or a take by `to`.
fn answers_call_in_flight(
    ledger: &ThreadLedger,
    page: &Page,
    from: Option<&AppId>,
    to: &AppId,
    now: Timestamp,
) -> bool {
    calls_handing_to(ledger, page, to, now).any(|call| match &call.hands {
        crate::ledger::Hands::Take => true,
        crate::ledger::Hands::Pass { .. } => from == Some(&call.by),
    })
}

/// Whether a control call Baton forwarded lately, and has not had Meta's
/// answer to yet, hands the thread to `gains` (Meta's webhook may beat its
/// answer).
fn corroborated(ledger: &ThreadLedger, page: &Page, gains: &AppId, now: Timestamp) -> bool {
    calls_handing_to(ledger, page, gains, now).next().is_some()
}

/// What the channel an app received an item on says about ownership.
#[allow(clippy::too_many_arguments)]
fn routing_or_drift(
    ledger: &ThreadLedger,
    page: &Page,
    view: &ControlView,
    delivery: &DeliveryCopy,
    event: &InboundEvent,
    dedupe_key: &str,
    activates: bool,
    at: Timestamp,
    now: Timestamp,
) -> Option<Event> {
    if matches!(page.mode, RoutingMode::ZeroConfig) {
        // Every app gets `messaging`; channels say nothing about control.
        return None;
    }
    if matches!(event, InboundEvent::Unknown { .. }) {
        // A kind of item Baton does not know (Meta's `pass_thread_metadata`
        // notice, which reaches the other apps on `messaging`, or anything
        // newer) says nothing about who controls the thread.
        return None;
    }
    let thread = ledger.key.clone();
    let drift = |observed: ControlView, evidence: DriftEvidence| -> Option<Event> {
        // Evidence no newer than the last control change does not override
        // it (an unknown owner has nothing to protect: any evidence helps).
        if is_stale(ledger, at) && *view != ControlView::Unknown {
            return Some(stale_evidence(ledger, view, observed, evidence, at, now));
        }
        // Evidence that moves control away from another managed app is
        // confirmed with Meta first: until then the owner is unknown.
        let observed = match observed {
            ControlView::Owner { app }
                if takes_from_another_app(ledger, page, view, delivery, &app, now) =>
            {
                ControlView::Unknown
            }
            other => other,
        };
        Some(
            OwnershipDriftDetected {
                thread: thread.clone(),
                at: now,
                ledger: view.clone(),
                observed,
                evidence,
            }
            .into(),
        )
    };
    if let InboundEvent::Echo { mid, app_id, .. } = event {
        // An echo is the Page speaking: its `app_id` is the app (or inbox) that sent it.
        let sender = app_id.as_ref()?;
        // Sent before control last changed (a reply then a release, delivered
        // late, or Meta's clock a little ahead): it says nothing about who
        // controls the thread now. But within the skew tolerance of a change
        // Baton timed, "before" is only a guess (the Page Inbox may have
        // taken the thread just after Baton's release): an echo from an app
        // Baton does not send for (a managed app's echo is its own send
        // through Baton, made before it handed over) that contradicts the
        // ledger is kept, not applied, and Meta is asked.
        if is_stale(ledger, at) {
            let a_guess = a_guess_against_batons_clock(ledger, at);
            let external = page
                .app(sender)
                .is_none_or(|p| p.management == Management::External);
            let contradicts = external && answering_app(view, page).is_some_and(|a| a != sender);
            return (a_guess && contradicts).then(|| {
                stale_evidence(
                    ledger,
                    view,
                    ControlView::Owner {
                        app: sender.clone(),
                    },
                    DriftEvidence::Echo {
                        app: sender.clone(),
                        mid: mid.clone(),
                    },
                    at,
                    now,
                )
            });
        }
        let allowed =
            answering_app(view, page).map_or(*view == ControlView::Unknown, |a| a == sender);
        if allowed || *view == ControlView::Unknown {
            return None;
        }
        return drift(
            ControlView::Owner {
                app: sender.clone(),
            },
            DriftEvidence::Echo {
                app: sender.clone(),
                mid: mid.clone(),
            },
        );
    }
    let routes_idle = matches!(page.mode, RoutingMode::ConversationRouting { .. });
    match (view, delivery.channel) {
        // A user action from before the last control change (a message
        // delivered late) routes nothing; one from its very moment does.
        // Against a change Baton timed (its own release), "before" is only a
        // guess within the skew tolerance (Meta's clock may run behind): a
        // copy that would route is kept, not applied, and Meta is asked.
        (ControlView::Idle, _)
            if ledger
                .control_changed_at
                .is_some_and(|changed| at < changed) =>
        {
            let a_guess = a_guess_against_batons_clock(ledger, at);
            let holder = page.mode.idle_holder() == Some(&delivery.app);
            let (claimed, evidence) = match delivery.channel {
                // It would route the thread to this app…
                Channel::Messaging if routes_idle => (
                    ControlView::Owner {
                        app: delivery.app.clone(),
                    },
                    DriftEvidence::MessagingDelivery {
                        app: delivery.app.clone(),
                    },
                ),
                // …or reveal that another app took it silently.
                Channel::Standby if holder => (
                    ControlView::Unknown,
                    DriftEvidence::StandbyDelivery {
                        app: delivery.app.clone(),
                    },
                ),
                _ => return None,
            };
            (a_guess && activates).then(|| stale_evidence(ledger, view, claimed, evidence, at, now))
        }
        (ControlView::Idle, Channel::Messaging) if routes_idle && activates => Some(
            ThreadRouted {
                thread: thread.clone(),
                at,
                owner: delivery.app.clone(),
                dedupe_key: dedupe_key.to_owned(),
            }
            .into(),
        ),
        // The app that answers an idle thread (the default app, or the
        // legacy primary) got the user on standby: another app took the
        // thread without a webhook Baton saw (the Page Inbox takes
        // silently). Who owns it is unknown until Meta says.
        (ControlView::Idle, Channel::Standby)
            if activates && page.mode.idle_holder() == Some(&delivery.app) =>
        {
            drift(
                ControlView::Unknown,
                DriftEvidence::StandbyDelivery {
                    app: delivery.app.clone(),
                },
            )
        }
        (ControlView::Idle, Channel::Standby) if routes_idle && activates => {
            // The holder is external (the Page Inbox as default app, say): its
            // copy never reaches Baton, so routing to it is recorded now.
            let holder = page.mode.idle_holder()?;
            let external = page
                .app(holder)
                .is_none_or(|p| p.management == Management::External);
            (external && holder != &delivery.app).then(|| {
                ThreadRouted {
                    thread: thread.clone(),
                    at,
                    owner: holder.clone(),
                    dedupe_key: dedupe_key.to_owned(),
                }
                .into()
            })
        }
        (_, Channel::Messaging) => match answering_app(view, page) {
            Some(holder) if holder == &delivery.app => None,
            _ => drift(
                ControlView::Owner {
                    app: delivery.app.clone(),
                },
                DriftEvidence::MessagingDelivery {
                    app: delivery.app.clone(),
                },
            ),
        },
        (ControlView::Owner { app }, Channel::Standby) if app == &delivery.app => drift(
            ControlView::Unknown,
            DriftEvidence::StandbyDelivery {
                app: delivery.app.clone(),
            },
        ),
        _ => None,
    }
}

/// The facts a handover webhook carries: nothing when it confirms the ledger
/// (often Baton's own call), else drift when Meta's previous owner is not the
/// ledger's, then the handover itself.
fn handover_facts(
    ledger: &ThreadLedger,
    page: &Page,
    view: &ControlView,
    delivery: &DeliveryCopy,
    notice: &HandoverNotice,
    at: Timestamp,
    now: Timestamp,
) -> Vec<Event> {
    let thread = ledger.key.clone();
    let origin = FactOrigin::Webhook {
        app: delivery.app.clone(),
    };
    let mut events = Vec::new();
    let (previous, new_owner) = match notice {
        HandoverNotice::Passed { from, to, .. } => (from.clone(), Some(to.clone())),
        HandoverNotice::Taken { from, by, .. } => (from.clone(), Some(by.clone())),
        HandoverNotice::Requested { .. } => (None, None),
    };
    if let Some(new_owner) = new_owner {
        if *view
            == (ControlView::Owner {
                app: new_owner.clone(),
            })
        {
            return events;
        }
        if is_stale(ledger, at) && *view != ControlView::Unknown {
            // Meta's webhook may beat its answer to Baton's own call. A
            // notice of exactly that call's handover that the clocks call
            // older news may be that call's news, or an older handover of
            // the same apps delivered late: it is neither applied nor kept as
            // contradicting the ledger, and Meta's answer, moments away,
            // settles it (applied, a late notice of an earlier identical
            // pass would put the ledger on Meta's clock, where a late
            // notice of the take between the two then won a tie). Only a
            // call accepted lately: one whose answer never came does not
            // hide Meta's notices for good.
            if answers_call_in_flight(ledger, page, previous.as_ref(), &new_owner, now) {
                return events;
            }
            // Meta's older news (a retried webhook delivered late): kept, not applied.
            events.push(stale_evidence(
                ledger,
                view,
                ControlView::Owner { app: new_owner },
                DriftEvidence::HandoverWebhook {
                    webhook: notice.webhook_name().to_owned(),
                },
                at,
                now,
            ));
            return events;
        }
        if takes_from_another_app(ledger, page, view, delivery, &new_owner, now) {
            // Anyone who knows the delivering app's secret could have written
            // this: the owner is unknown until Meta's `thread_owner` says.
            events.push(
                OwnershipDriftDetected {
                    thread,
                    at: now,
                    ledger: view.clone(),
                    observed: ControlView::Unknown,
                    evidence: DriftEvidence::HandoverWebhook {
                        webhook: notice.webhook_name().to_owned(),
                    },
                }
                .into(),
            );
            return events;
        }
        let meta_before = match previous {
            Some(app) => ControlView::Owner { app },
            None => ControlView::Idle,
        };
        if meta_before != *view {
            events.push(
                OwnershipDriftDetected {
                    thread: thread.clone(),
                    at: now,
                    ledger: view.clone(),
                    observed: meta_before,
                    evidence: DriftEvidence::HandoverWebhook {
                        webhook: notice.webhook_name().to_owned(),
                    },
                }
                .into(),
            );
        }
    }
    let fact: Event = match notice.clone() {
        HandoverNotice::Passed { from, to, metadata } => ThreadControlPassed {
            thread,
            at,
            from,
            to,
            metadata,
            origin,
        }
        .into(),
        HandoverNotice::Taken { from, by, metadata } => ThreadControlTaken {
            thread,
            at,
            from,
            by,
            metadata,
            origin,
        }
        .into(),
        HandoverNotice::Requested { by, metadata } => ThreadControlRequested {
            thread,
            at,
            by,
            told: Some(delivery.app.clone()),
            metadata,
            granted: false,
            origin,
        }
        .into(),
    };
    events.push(fact);
    events
}
