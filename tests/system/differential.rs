//! The differential test: one table of requests, each put through Baton's
//! domain gate (`domain::rules::decide` on a ledger folded from the case's
//! history) and through the emulator (Meta as documented, over HTTP on port 0).
//! Both must give the same answer: accepted, or refused with the same `code`
//! and `error_subcode`. The two were written apart (the emulator from Meta's
//! documentation, not from Baton's code), so each checks the other.
//!
//! It compares answers only, not the webhooks or events that follow; the
//! domain's and the emulator's own tests cover those. Every history step other
//! than the last request must be accepted by both sides, or the case is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use domain::events::{
    Channel, DeliveryCopy, EnforcementAction, GraphOutcome, InboundEvent, Optin,
    PolicyEnforcementReceived, Referral as DomainReferral, SendOutcome,
};
use domain::rules::{self, Observation};
use domain::{
    AppId, AppKind, AppProfile, Command, CommandId, Event, InlineControl, Management,
    MessagingType, Page, PageId, Psid, Recipient, RejectionKind, RoutingMode, SendContent,
    SendMessage, SenderAction, Span, ThreadKey, ThreadLedger, Timestamp,
};
use emulator::{
    AppConfig, Emulator, EmulatorHandle, PageConfig, Referral, UserMessage, UserPostback,
    UserReaction, UserReceipt, World, PAGE_INBOX_APP_ID,
};
use serde_json::{json, Value};

// ---- The world both sides share. ----------------------------------------------

/// A bot: the default app (Conversation Routing) and the primary receiver (v1).
const BOT: &str = "1001";
/// A human agent app (the Human Agent feature), allowed to take control.
const AGENT: &str = "1002";
/// Another bot, not allowed to take control.
const HELPER: &str = "1003";
/// An app connected to another page only.
const STRANGER: &str = "1009";
const INBOX: &str = PAGE_INBOX_APP_ID;

const CR_PAGE: &str = "7001";
const ZC_PAGE: &str = "7002";
const HOP_PAGE: &str = "7003";
/// The stranger's page.
const OTHER_PAGE: &str = "7009";
const PSID: &str = "2000001";

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Cr,
    Zc,
    Hop,
}

impl Mode {
    fn page(self) -> &'static str {
        match self {
            Mode::Cr => CR_PAGE,
            Mode::Zc => ZC_PAGE,
            Mode::Hop => HOP_PAGE,
        }
    }
}

fn app(id: &str) -> AppId {
    AppId::parse(id).expect("app id")
}

fn domain_page(mode: Mode) -> Page {
    let routing = match mode {
        Mode::Cr => RoutingMode::ConversationRouting {
            default_app: app(BOT),
        },
        Mode::Zc => RoutingMode::ZeroConfig,
        Mode::Hop => RoutingMode::HandoverV1 {
            primary: app(BOT),
            secondaries: vec![app(AGENT), app(HELPER)],
        },
    };
    Page::new(
        PageId::parse(mode.page()).expect("page id"),
        routing,
        [
            AppProfile::new(app(BOT), AppKind::Bot, Management::Managed),
            AppProfile::new(app(AGENT), AppKind::Human, Management::Managed).allowed_to_take(),
            AppProfile::new(app(HELPER), AppKind::Bot, Management::Managed),
        ],
    )
}

fn token(app: &str, page: &str) -> String {
    format!("tok-{app}-{page}")
}

/// The page token an app calls a page with: the stranger only has its own
/// page's, which Meta refuses for any other page.
fn token_for(app: &str, page: &str) -> String {
    if app == STRANGER {
        token(STRANGER, OTHER_PAGE)
    } else {
        token(app, page)
    }
}

fn emulator_world(start_ms: i64) -> World {
    let mut world = World::default()
        .with_page(PageConfig::conversation_routing(CR_PAGE, BOT))
        .with_page(PageConfig::zero_config(ZC_PAGE))
        .with_page(PageConfig::handover_v1(HOP_PAGE, BOT, &[AGENT, HELPER]))
        .with_page(PageConfig::zero_config(OTHER_PAGE));
    for (id, human, may_take) in [
        (BOT, false, false),
        (AGENT, true, true),
        (HELPER, false, false),
    ] {
        let mut config = AppConfig::new(id, format!("secret-{id}"))
            .human_agent(human)
            .may_take(may_take);
        for page in [CR_PAGE, ZC_PAGE, HOP_PAGE] {
            config = config.with_token(page, token(id, page));
        }
        world = world.with_app(config);
    }
    world = world.with_app(
        AppConfig::new(STRANGER, "secret-stranger")
            .with_token(OTHER_PAGE, token(STRANGER, OTHER_PAGE)),
    );
    world.epoch_ms = start_ms;
    world
}

// ---- The table's vocabulary. ------------------------------------------------------

/// Who a send goes to.
#[derive(Clone, Debug)]
enum To {
    User,
    /// The n-th One-Time Notification token of the case's history.
    Token(usize),
    /// A token nobody issued.
    UnknownToken,
    /// A plugin `user_ref` from the history.
    UserRef(&'static str),
}

#[derive(Clone, Debug)]
enum Inline {
    Release,
    Pass(Option<&'static str>),
}

#[derive(Clone, Debug)]
struct Send {
    app: &'static str,
    to: To,
    messaging_type: Option<MessagingType>,
    tag: Option<&'static str>,
    action: Option<SenderAction>,
    inline: Option<Inline>,
    /// The page the call is made on, when not the case's.
    via: Option<Mode>,
}

impl Send {
    fn new(app: &'static str, messaging_type: Option<MessagingType>) -> Self {
        Send {
            app,
            to: To::User,
            messaging_type,
            tag: None,
            action: None,
            inline: None,
            via: None,
        }
    }
    fn tag(mut self, tag: &'static str) -> Self {
        self.tag = Some(tag);
        self
    }
    fn to(mut self, to: To) -> Self {
        self.to = to;
        self
    }
    fn inline(mut self, inline: Inline) -> Self {
        self.inline = Some(inline);
        self
    }
    fn via(mut self, mode: Mode) -> Self {
        self.via = Some(mode);
        self
    }
}

/// A `RESPONSE` message to the user.
fn reply(app: &'static str) -> Send {
    Send::new(app, Some(MessagingType::Response))
}
fn typed(app: &'static str, t: MessagingType) -> Send {
    Send::new(app, Some(t))
}
/// A message without `messaging_type`.
fn untyped(app: &'static str) -> Send {
    Send::new(app, None)
}
fn tagged(app: &'static str, tag: &'static str) -> Send {
    Send::new(app, Some(MessagingType::MessageTag)).tag(tag)
}
fn action(app: &'static str, action: SenderAction) -> Send {
    Send {
        action: Some(action),
        ..Send::new(app, None)
    }
}
/// A message to the n-th token, without `messaging_type` (as Meta's OTN docs send it).
fn to_token(app: &'static str, n: usize) -> Send {
    untyped(app).to(To::Token(n))
}

/// One Graph call.
#[derive(Clone, Debug)]
enum Call {
    Send(Send),
    Pass(&'static str, Option<&'static str>),
    Take(&'static str),
    Request(&'static str),
    Release(&'static str),
    Extend(&'static str, u64),
}

impl From<Send> for Call {
    fn from(s: Send) -> Self {
        Call::Send(s)
    }
}

fn pass(by: &'static str, to: &'static str) -> Call {
    Call::Pass(by, Some(to))
}

/// What happened before the request, in order, at the case's clock.
#[derive(Clone, Debug)]
enum Step {
    /// The user writes.
    Message,
    /// The user writes right after clicking a Click-to-Messenger ad.
    AdMessage,
    /// The user taps a postback button.
    Postback,
    /// The user reacts to the last message.
    Reaction,
    /// A read receipt: the thread exists, the window does not open.
    Read,
    /// The user accepts a One-Time Notification request.
    OtnOptin,
    /// A checkbox plugin opt-in with this `user_ref`.
    PluginOptin(&'static str),
    /// Meta's policy enforcement blocks the page.
    Block,
    Advance(i64),
    /// A call both sides must accept.
    Do(Call),
}

fn done(call: impl Into<Call>) -> Step {
    Step::Do(call.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Accepted,
    Refused(RejectionKind),
}
use Expect::{Accepted, Refused};

#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    mode: Mode,
    start_ms: i64,
    history: Vec<Step>,
    call: Call,
    expect: Expect,
}

fn case(
    name: &'static str,
    mode: Mode,
    history: Vec<Step>,
    call: impl Into<Call>,
    expect: Expect,
) -> Case {
    Case {
        name,
        mode,
        start_ms: emulator::DEFAULT_EPOCH_MS,
        history,
        call: call.into(),
        expect,
    }
}

impl Case {
    fn starting_at(mut self, ms: i64) -> Self {
        self.start_ms = ms;
        self
    }
}

// ---- The table. ---------------------------------------------------------------------

// One case per line, so the table reads as a table.
#[rustfmt::skip]
fn table() -> Vec<Case> {
    use Mode::{Cr, Hop, Zc};
    use RejectionKind as K;
    use Step::*;
    let retired = domain::policy::RETIRED_2026.millis();
    // 2026-04-01T00:00Z: the three update tags still worked.
    let before_retirement = retired - 26 * DAY;
    vec![
        // Who may send.
        case("cr_owner_replies", Cr, vec![Message], reply(BOT), Accepted),
        case("cr_non_owner_refused", Cr, vec![Message], reply(HELPER), Refused(K::NotThreadOwner)),
        case("cr_idle_thread_default_app_sends", Cr, vec![Message, done(Call::Release(BOT))], reply(BOT), Accepted),
        case("cr_idle_thread_other_app_refused", Cr, vec![Message, done(Call::Release(BOT))], reply(AGENT), Refused(K::NotThreadOwner)),
        case("cr_new_owner_after_pass_sends", Cr, vec![Message, done(pass(BOT, AGENT))], reply(AGENT), Accepted),
        case("cr_former_owner_refused_after_pass", Cr, vec![Message, done(pass(BOT, AGENT))], reply(BOT), Refused(K::NotThreadOwner)),
        case("cr_lapsed_control_is_idle_for_the_former_owner", Cr, vec![AdMessage, done(pass(BOT, AGENT)), Advance(30 * HOUR)], reply(AGENT), Refused(K::NotThreadOwner)),
        case("cr_lapsed_control_the_default_app_answers", Cr, vec![AdMessage, done(pass(BOT, AGENT)), Advance(30 * HOUR)], reply(BOT), Accepted),
        case("cr_extended_control_outlives_24h", Cr, vec![AdMessage, done(pass(BOT, AGENT)), done(Call::Extend(AGENT, 3 * 86_400)), Advance(30 * HOUR)], typed(AGENT, MessagingType::Update), Accepted),
        case("cr_user_activity_keeps_control", Cr, vec![Message, done(pass(BOT, AGENT)), Advance(20 * HOUR), Message, Advance(20 * HOUR)], reply(AGENT), Accepted),
        case("cr_a_message_after_the_lapse_goes_to_the_default_app", Cr, vec![Message, done(pass(BOT, AGENT)), Advance(25 * HOUR), Message], reply(AGENT), Refused(K::NotThreadOwner)),
        case("cr_former_owner_passes_after_the_lapse", Cr, vec![AdMessage, done(pass(BOT, AGENT)), Advance(30 * HOUR)], pass(AGENT, HELPER), Refused(K::NotControlOwner)),
        case("zc_any_app_sends", Zc, vec![Message], reply(HELPER), Accepted),
        case("zc_others_still_send_to_an_owned_thread", Zc, vec![Message, done(Call::Request(AGENT))], reply(HELPER), Accepted),
        case("hop_primary_answers_an_idle_thread", Hop, vec![Message], reply(BOT), Accepted),
        case("hop_secondary_refused_on_an_idle_thread", Hop, vec![Message], reply(AGENT), Refused(K::NotThreadOwner)),
        case("hop_secondary_owner_sends", Hop, vec![Message, done(pass(BOT, AGENT))], reply(AGENT), Accepted),
        case("hop_primary_refused_while_a_secondary_owns", Hop, vec![Message, done(pass(BOT, AGENT))], reply(BOT), Refused(K::NotThreadOwner)),
        case("app_not_on_page_sends", Cr, vec![Message], reply(STRANGER), Refused(K::AppNotOnPage)),
        case("a_user_who_never_wrote_cannot_be_sent_to", Cr, vec![], reply(BOT), Refused(K::UnknownRecipient)),
        case("a_user_who_never_wrote_cannot_be_passed", Hop, vec![], pass(BOT, AGENT), Refused(K::UnknownRecipient)),
        case("blocked_page_refuses_messages", Cr, vec![Message, Block], reply(BOT), Refused(K::PageBlocked)),
        case("blocked_page_refuses_sender_actions", Zc, vec![Message, Block], action(HELPER, SenderAction::TypingOn), Refused(K::PageBlocked)),
        case("blocked_page_still_passes_control", Cr, vec![Message, Block], pass(BOT, AGENT), Accepted),
        // A reaction or a plugin opt-in leaves an idle thread idle, so any app may take it.
        case("cr_reaction_leaves_an_idle_thread_idle", Cr, vec![Message, done(Call::Release(BOT)), Reaction], Call::Take(HELPER), Accepted),
        case("cr_plugin_optin_leaves_an_idle_thread_idle", Cr, vec![PluginOptin("ref-2")], Call::Take(HELPER), Accepted),
        case("sender_action_from_a_non_owner", Cr, vec![Message], action(HELPER, SenderAction::TypingOn), Refused(K::NotThreadOwner)),
        // The messaging window.
        case("window_open_one_ms_before_24h", Cr, vec![Message, Advance(DAY - 1)], reply(BOT), Accepted),
        case("window_closed_at_24h", Cr, vec![Message, Advance(DAY)], reply(BOT), Refused(K::OutsideWindow)),
        case("zc_update_outside_the_window", Zc, vec![Message, Advance(DAY)], typed(HELPER, MessagingType::Update), Refused(K::OutsideWindow)),
        case("no_user_action_no_window", Cr, vec![Read], reply(BOT), Refused(K::OutsideWindow)),
        case("postback_opens_the_window", Cr, vec![Postback, Advance(23 * HOUR)], reply(BOT), Accepted),
        case("reaction_refreshes_the_window", Cr, vec![Message, Advance(20 * HOUR), Reaction, Advance(10 * HOUR)], reply(BOT), Accepted),
        case("read_does_not_refresh_the_window", Zc, vec![Message, Advance(20 * HOUR), Read, Advance(5 * HOUR)], reply(BOT), Refused(K::OutsideWindow)),
        case("ad_message_opens_seven_days", Zc, vec![AdMessage, Advance(6 * DAY)], reply(BOT), Accepted),
        case("ad_window_closes_at_seven_days", Zc, vec![AdMessage, Advance(7 * DAY)], reply(BOT), Refused(K::OutsideWindow)),
        case("a_later_ad_message_opens_seven_days_too", Zc, vec![Message, Advance(HOUR), AdMessage, Advance(3 * DAY)], typed(BOT, MessagingType::Update), Accepted),
        case("a_later_24h_action_does_not_shrink_an_ad_window", Zc, vec![AdMessage, Advance(DAY), Message, Advance(3 * DAY)], reply(BOT), Accepted),
        case("utility_inside_the_window", Cr, vec![Message], typed(BOT, MessagingType::Utility), Accepted),
        case("sender_action_inside_the_window", Cr, vec![Message], action(BOT, SenderAction::MarkSeen), Accepted),
        case("sender_action_outside_the_window", Zc, vec![Message, Advance(25 * HOUR)], action(HELPER, SenderAction::TypingOn), Refused(K::OutsideWindow)),
        // messaging_type and tags.
        case("message_without_messaging_type", Cr, vec![Message], untyped(BOT), Refused(K::MessagingTypeRequired)),
        case("message_tag_without_a_tag", Cr, vec![Message], Send::new(BOT, Some(MessagingType::MessageTag)), Refused(K::TagMismatch)),
        case("tag_with_response", Zc, vec![Message], reply(AGENT).tag("HUMAN_AGENT"), Refused(K::TagMismatch)),
        case("tag_without_messaging_type", Cr, vec![Message], untyped(BOT).tag("ACCOUNT_UPDATE"), Refused(K::TagMismatch)),
        case("human_agent_from_a_bot", Cr, vec![Message], tagged(BOT, "HUMAN_AGENT"), Refused(K::HumanAgentNotHuman)),
        case("human_agent_from_a_bot_that_does_not_own", Cr, vec![Message, done(pass(BOT, AGENT))], tagged(HELPER, "HUMAN_AGENT"), Refused(K::HumanAgentNotHuman)),
        case("human_agent_on_day_six", Cr, vec![Message, done(pass(BOT, AGENT)), done(Call::Extend(AGENT, 7 * 86_400)), Advance(6 * DAY)], tagged(AGENT, "HUMAN_AGENT"), Accepted),
        case("human_agent_after_seven_days", Zc, vec![Message, Advance(7 * DAY)], tagged(AGENT, "HUMAN_AGENT"), Refused(K::OutsideWindow)),
        case("hop_human_agent_after_seven_days", Hop, vec![Message, done(pass(BOT, AGENT)), Advance(8 * DAY)], tagged(AGENT, "HUMAN_AGENT"), Refused(K::OutsideWindow)),
        case("human_agent_in_lower_case", Zc, vec![Message], tagged(AGENT, "human_agent"), Refused(K::UnknownTag)),
        case("account_update_retired", Cr, vec![Message], tagged(BOT, "ACCOUNT_UPDATE"), Refused(K::RetiredTag)),
        case("post_purchase_update_retired", Zc, vec![Message, Advance(3 * DAY)], tagged(BOT, "POST_PURCHASE_UPDATE"), Refused(K::RetiredTag)),
        case("retired_tag_from_a_non_owner", Cr, vec![Message], tagged(HELPER, "ACCOUNT_UPDATE"), Refused(K::RetiredTag)),
        case("pre_2020_tag", Zc, vec![Message], tagged(BOT, "SHIPPING_UPDATE"), Refused(K::RetiredTag)),
        case("unknown_tag", Zc, vec![Message], tagged(BOT, "FRIENDLY_REMINDER"), Refused(K::UnknownTag)),
        case("customer_feedback_unconfirmed", Zc, vec![Message], tagged(BOT, "CUSTOMER_FEEDBACK"), Refused(K::UnknownTag)),
        case("news_tag_needs_a_permission", Zc, vec![Message], tagged(BOT, "NON_PROMOTIONAL_SUBSCRIPTION"), Refused(K::TagNeedsPermission)),
        case("update_tag_before_its_retirement", Cr, vec![Message, Advance(3 * DAY)], tagged(BOT, "ACCOUNT_UPDATE"), Accepted).starting_at(before_retirement),
        case("update_tag_needs_a_conversation", Zc, vec![Read], tagged(BOT, "CONFIRMED_EVENT_UPDATE"), Refused(K::OutsideWindow)).starting_at(before_retirement),
        case("update_tag_at_its_retirement", Zc, vec![Message, Advance(HOUR)], tagged(BOT, "CONFIRMED_EVENT_UPDATE"), Refused(K::RetiredTag)).starting_at(retired - HOUR),
        // One-Time Notification tokens and plugin user refs.
        case("token_outside_the_window", Cr, vec![Message, OtnOptin, Advance(30 * DAY)], to_token(BOT, 0), Accepted),
        case("token_one_ms_before_a_year", Cr, vec![Message, OtnOptin, Advance(365 * DAY - 1)], to_token(BOT, 0), Accepted),
        case("token_spent", Cr, vec![Message, OtnOptin, Advance(30 * DAY), done(to_token(BOT, 0))], to_token(BOT, 0), Refused(K::TokenSpent)),
        case("token_expired_after_a_year", Cr, vec![Message, OtnOptin, Advance(365 * DAY)], to_token(BOT, 0), Refused(K::TokenExpired)),
        case("token_with_a_response_type_outside_the_window", Cr, vec![Message, OtnOptin, Advance(3 * DAY)], reply(BOT).to(To::Token(0)), Accepted),
        case("utility_outside_the_window", Cr, vec![Message, Advance(3 * DAY)], typed(BOT, MessagingType::Utility), Refused(K::OutsideWindow)),
        case("token_unknown", Cr, vec![Message], untyped(BOT).to(To::UnknownToken), Refused(K::TokenUnknown)),
        case("token_of_another_page", Cr, vec![Message, OtnOptin], to_token(BOT, 0).via(Zc), Refused(K::TokenWrongPage)),
        case("token_still_needs_ownership", Cr, vec![Message, OtnOptin, done(pass(BOT, AGENT))], to_token(BOT, 0), Refused(K::NotThreadOwner)),
        case("spent_token_from_a_non_owner", Cr, vec![Message, OtnOptin, done(to_token(BOT, 0)), done(pass(BOT, AGENT))], to_token(HELPER, 0), Refused(K::TokenSpent)),
        case("user_ref_default_app", Cr, vec![PluginOptin("ref-1")], reply(BOT).to(To::UserRef("ref-1")), Accepted),
        case("user_ref_other_app", Cr, vec![PluginOptin("ref-1")], reply(HELPER).to(To::UserRef("ref-1")), Refused(K::NotThreadOwner)),
        case("user_ref_needs_a_messaging_type", Cr, vec![PluginOptin("ref-1")], untyped(BOT).to(To::UserRef("ref-1")), Refused(K::MessagingTypeRequired)),
        // Inline thread control on a send.
        case("inline_release_by_the_owner", Cr, vec![Message], reply(BOT).inline(Inline::Release), Accepted),
        case("inline_pass_to_the_agent", Cr, vec![Message], reply(BOT).inline(Inline::Pass(Some(AGENT))), Accepted),
        case("inline_pass_to_an_unknown_app", Cr, vec![Message], reply(BOT).inline(Inline::Pass(Some(STRANGER))), Refused(K::InvalidTarget)),
        case("inline_release_of_an_idle_thread", Cr, vec![Message, done(Call::Release(BOT))], reply(BOT).inline(Inline::Release), Refused(K::NotControlOwner)),
        case("inline_control_is_checked_before_the_window", Cr, vec![Message, Advance(2 * DAY)], reply(BOT).inline(Inline::Pass(Some(STRANGER))), Refused(K::InvalidTarget)),
        // pass_thread_control.
        case("cr_owner_passes", Cr, vec![Message], pass(BOT, AGENT), Accepted),
        case("cr_owner_passes_to_the_page_inbox", Cr, vec![Message], pass(BOT, INBOX), Accepted),
        case("cr_non_owner_passes", Cr, vec![Message], pass(HELPER, AGENT), Refused(K::NotControlOwner)),
        case("cr_pass_without_target_goes_to_the_default_app", Cr, vec![Message, done(pass(BOT, AGENT))], Call::Pass(AGENT, None), Accepted),
        case("cr_pass_to_itself", Cr, vec![Message], pass(BOT, BOT), Refused(K::InvalidTarget)),
        case("cr_pass_to_an_app_not_on_the_page", Cr, vec![Message], pass(BOT, STRANGER), Refused(K::InvalidTarget)),
        case("cr_default_app_passes_an_idle_thread", Cr, vec![Message, done(Call::Release(BOT))], pass(BOT, HELPER), Accepted),
        case("cr_default_app_passes_an_idle_thread_to_itself", Cr, vec![Message, done(Call::Release(BOT))], Call::Pass(BOT, None), Refused(K::InvalidTarget)),
        case("zc_any_app_passes_an_idle_thread", Zc, vec![Message], pass(HELPER, AGENT), Accepted),
        case("zc_pass_needs_a_target", Zc, vec![Message], Call::Pass(HELPER, None), Refused(K::InvalidTarget)),
        case("zc_non_owner_passes_an_owned_thread", Zc, vec![Message, done(Call::Request(AGENT))], pass(HELPER, BOT), Refused(K::NotControlOwner)),
        case("hop_secondary_passes_back_without_target", Hop, vec![Message, done(pass(BOT, AGENT))], Call::Pass(AGENT, None), Accepted),
        case("hop_primary_must_name_a_target", Hop, vec![Message], Call::Pass(BOT, None), Refused(K::InvalidTarget)),
        case("hop_secondary_passes_what_it_does_not_own", Hop, vec![Message], pass(AGENT, HELPER), Refused(K::NotControlOwner)),
        // take_thread_control.
        case("zc_take_is_not_supported", Zc, vec![Message], Call::Take(AGENT), Refused(K::TakeNotSupported)),
        case("cr_allowed_app_takes", Cr, vec![Message], Call::Take(AGENT), Accepted),
        case("cr_app_without_permission_takes", Cr, vec![Message], Call::Take(HELPER), Refused(K::TakeNotAllowed)),
        case("cr_any_app_takes_an_idle_thread", Cr, vec![Message, done(Call::Release(BOT))], Call::Take(HELPER), Accepted),
        case("cr_owner_takes", Cr, vec![Message], Call::Take(BOT), Accepted),
        case("hop_secondary_takes", Hop, vec![Message], Call::Take(AGENT), Refused(K::TakeNotAllowed)),
        case("hop_primary_takes_from_a_secondary", Hop, vec![Message, done(pass(BOT, AGENT))], Call::Take(BOT), Accepted),
        case("hop_primary_takes_what_it_holds", Hop, vec![Message], Call::Take(BOT), Accepted),
        case("app_not_on_page_takes", Cr, vec![Message], Call::Take(STRANGER), Refused(K::AppNotOnPage)),
        // request_thread_control.
        case("cr_request_goes_to_the_owner", Cr, vec![Message], Call::Request(AGENT), Accepted),
        case("cr_owner_requests", Cr, vec![Message], Call::Request(BOT), Refused(K::AlreadyOwner)),
        case("cr_default_app_requests_an_idle_thread", Cr, vec![Message, done(Call::Release(BOT))], Call::Request(BOT), Refused(K::AlreadyOwner)),
        case("cr_other_app_requests_an_idle_thread", Cr, vec![Message, done(Call::Release(BOT))], Call::Request(HELPER), Accepted),
        case("zc_first_requester_gets_control", Zc, vec![Message], Call::Request(AGENT), Accepted),
        case("zc_owner_requests_again", Zc, vec![Message, done(Call::Request(AGENT))], Call::Request(AGENT), Refused(K::AlreadyOwner)),
        case("hop_primary_requests", Hop, vec![Message], Call::Request(BOT), Refused(K::NotSupportedInMode)),
        case("hop_secondary_requests", Hop, vec![Message], Call::Request(AGENT), Accepted),
        case("hop_secondary_owner_requests", Hop, vec![Message, done(pass(BOT, AGENT))], Call::Request(AGENT), Refused(K::AlreadyOwner)),
        // release_thread_control.
        case("cr_owner_releases", Cr, vec![Message], Call::Release(BOT), Accepted),
        case("cr_non_owner_releases", Cr, vec![Message], Call::Release(HELPER), Refused(K::NotControlOwner)),
        case("cr_release_of_an_idle_thread", Cr, vec![Message, done(Call::Release(BOT))], Call::Release(BOT), Refused(K::NotControlOwner)),
        case("zc_release_of_an_idle_thread", Zc, vec![Message], Call::Release(HELPER), Refused(K::NotControlOwner)),
        case("hop_secondary_owner_releases", Hop, vec![Message, done(pass(BOT, AGENT))], Call::Release(AGENT), Accepted),
        case("hop_primary_releases_what_it_holds", Hop, vec![Message], Call::Release(BOT), Accepted),
        // extend_thread_control.
        case("cr_owner_extends", Cr, vec![Message], Call::Extend(BOT, 3_600), Accepted),
        case("cr_owner_extends_seven_days", Cr, vec![Message], Call::Extend(BOT, 7 * 86_400), Accepted),
        case("cr_non_owner_extends", Cr, vec![Message], Call::Extend(AGENT, 3_600), Refused(K::NotControlOwner)),
        case("cr_extend_of_an_idle_thread", Cr, vec![Message, done(Call::Release(BOT))], Call::Extend(BOT, 3_600), Refused(K::NotControlOwner)),
        case("extend_by_zero_seconds", Cr, vec![Message], Call::Extend(BOT, 0), Refused(K::InvalidDuration)),
        case("extend_beyond_seven_days", Zc, vec![Message, done(Call::Request(AGENT))], Call::Extend(AGENT, 7 * 86_400 + 1), Refused(K::InvalidDuration)),
        case("zc_owner_extends", Zc, vec![Message, done(Call::Request(AGENT))], Call::Extend(AGENT, 3_600), Accepted),
        case("an_extension_never_shortens_control", Cr, vec![AdMessage, done(Call::Extend(BOT, 3 * 86_400)), done(Call::Extend(BOT, 3_600)), Advance(2 * DAY)], Call::Release(BOT), Accepted),
        case("zc_control_lapses_after_24h", Zc, vec![Message, done(Call::Request(AGENT)), Advance(25 * HOUR)], pass(HELPER, BOT), Accepted),
        case("hop_primary_extends_what_it_holds", Hop, vec![Message], Call::Extend(BOT, 3_600), Accepted),
        case("hop_secondary_owner_extends", Hop, vec![Message, done(pass(BOT, AGENT))], Call::Extend(AGENT, 3_600), Accepted),
    ]
}

// ---- Answers. -----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    Accepted,
    Refused { code: u32, subcode: Option<u32> },
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Accepted => write!(f, "accepted"),
            Answer::Refused {
                code,
                subcode: Some(s),
            } => write!(f, "refused {code}/{s}"),
            Answer::Refused {
                code,
                subcode: None,
            } => write!(f, "refused {code}"),
        }
    }
}

// ---- One case, run on both sides. ----------------------------------------------------

struct Run {
    name: &'static str,
    mode: Mode,
    emu: EmulatorHandle,
    http: reqwest::Client,
    page: Page,
    ledger: ThreadLedger,
    now: Timestamp,
    tokens: Vec<String>,
    last_mid: Option<String>,
    seq: u64,
}

impl Run {
    fn start(case: &Case) -> Run {
        let emu = Emulator::start(emulator_world(case.start_ms)).expect("the emulator starts");
        let page = domain_page(case.mode);
        let key = ThreadKey::new(page.id.clone(), Psid::parse(PSID).expect("psid"));
        Run {
            name: case.name,
            mode: case.mode,
            emu,
            http: reqwest::Client::new(),
            page,
            ledger: ThreadLedger::new(key),
            now: Timestamp::from_millis(case.start_ms),
            tokens: Vec::new(),
            last_mid: None,
            seq: 0,
        }
    }

    fn next_id(&mut self) -> CommandId {
        self.seq += 1;
        CommandId::parse(format!("diff-{}", self.seq)).expect("command id")
    }

    fn record(&mut self, events: Vec<Event>) {
        for event in &events {
            self.ledger.apply(event);
            self.page.apply(event);
        }
    }

    async fn step(&mut self, step: &Step) {
        let page = self.mode.page();
        let control = self.emu.control();
        let event = match step {
            Step::Message | Step::AdMessage => {
                let ad = matches!(step, Step::AdMessage);
                let message = UserMessage {
                    text: Some("hello".into()),
                    referral: ad.then(|| Referral {
                        source: Some("ADS".into()),
                        ad_id: Some("ad-1".into()),
                        ..Referral::default()
                    }),
                    ..UserMessage::default()
                };
                let r = control
                    .user_message(page, PSID, &message)
                    .await
                    .expect("message");
                let mid = r.mid.expect("a message has a mid");
                self.last_mid = Some(mid.clone());
                InboundEvent::Message {
                    mid,
                    text: Some("hello".into()),
                    attachment_types: Vec::new(),
                    reply_to: None,
                    referral: ad.then(|| DomainReferral {
                        source: Some("ADS".into()),
                        kind: Some("OPEN_THREAD".into()),
                        ad_id: Some("ad-1".into()),
                        ..DomainReferral::default()
                    }),
                }
            }
            Step::Postback => {
                let postback = UserPostback {
                    title: "Get Started".into(),
                    payload: "START".into(),
                    referral: None,
                };
                let r = control
                    .user_postback(page, PSID, &postback)
                    .await
                    .expect("postback");
                InboundEvent::Postback {
                    mid: r.mid,
                    title: Some("Get Started".into()),
                    payload: Some("START".into()),
                    referral: None,
                }
            }
            Step::Reaction => {
                let mid = self
                    .last_mid
                    .clone()
                    .expect("a reaction needs a message first");
                let reaction = UserReaction {
                    mid: mid.clone(),
                    ..UserReaction::default()
                };
                control
                    .user_reaction(page, PSID, &reaction)
                    .await
                    .expect("reaction");
                InboundEvent::Reaction {
                    mid,
                    action: "react".into(),
                    reaction: Some("love".into()),
                }
            }
            Step::Read => {
                control
                    .user_read(page, PSID, &UserReceipt::default())
                    .await
                    .expect("read");
                InboundEvent::Read {
                    watermark: self.now.millis(),
                }
            }
            Step::OtnOptin => {
                let r = control
                    .user_otn_optin(page, PSID, "BACK_IN_STOCK")
                    .await
                    .expect("opt-in");
                let token = r.token.expect("an opt-in issues a token");
                self.tokens.push(token.clone());
                InboundEvent::Optin {
                    optin: Optin::OneTimeNotification {
                        token,
                        payload: Some("BACK_IN_STOCK".into()),
                    },
                }
            }
            Step::PluginOptin(user_ref) => {
                control
                    .user_plugin_optin(page, PSID, None, Some(user_ref))
                    .await
                    .expect("plugin opt-in");
                InboundEvent::Optin {
                    optin: Optin::Plugin {
                        reference: None,
                        user_ref: Some((*user_ref).to_owned()),
                    },
                }
            }
            Step::Block => {
                control
                    .policy_enforcement(page, "block", Some("spam"))
                    .await
                    .expect("block");
                let event: Event = PolicyEnforcementReceived {
                    page: self.page.id.clone(),
                    at: self.now,
                    action: EnforcementAction::Block,
                    reason: Some("spam".into()),
                    delivery: DeliveryCopy {
                        app: app(BOT),
                        channel: Channel::Messaging,
                    },
                    raw: json!({}),
                }
                .into();
                self.record(vec![event]);
                return;
            }
            Step::Advance(ms) => {
                control.advance(*ms).await.expect("advance");
                self.now = self.now.plus(Span(*ms));
                return;
            }
            Step::Do(call) => {
                let (domain, emulator) = self.both(call, true).await;
                if domain.0 != Answer::Accepted || emulator != Answer::Accepted {
                    panic!(
                        "{}: history step {call:?} must be accepted by both: domain {} ({:?}), emulator {emulator}",
                        self.name, domain.0, domain.1
                    );
                }
                return;
            }
        };
        // Meta delivers the item on `messaging` to the app that answers the
        // thread; Baton learns routing from that, so the domain is told the same.
        let view = control.thread(page, PSID).await.expect("thread view");
        let managed = [BOT, AGENT, HELPER];
        let delivered_to = view
            .messaging_apps
            .iter()
            .find(|a| managed.contains(&a.as_str()))
            .cloned()
            .unwrap_or_else(|| BOT.to_owned());
        self.seq += 1;
        let observation = Observation::Item {
            at: self.now,
            dedupe_key: format!("item-{}", self.seq),
            delivery: DeliveryCopy {
                app: app(&delivered_to),
                channel: Channel::Messaging,
            },
            event,
            raw: json!({}),
        };
        let events = rules::observe(&self.ledger, &self.page, observation, self.now);
        self.record(events);
    }

    /// Puts one call through both sides: the domain's answer (with the kind of
    /// refusal) and the emulator's. With `settle`, an accepted call is
    /// recorded as Meta's success, as the shell would.
    async fn both(
        &mut self,
        call: &Call,
        settle: bool,
    ) -> ((Answer, Option<RejectionKind>), Answer) {
        let (command, page_of_call, ledger) = self.command(call);
        let domain = match rules::decide(&ledger, &page_of_call, &command, self.now) {
            Ok(events) => {
                if settle {
                    self.record(events);
                    let settled = match &command {
                        Command::SendMessage(send) => rules::settle_send(
                            &self.ledger,
                            &self.page,
                            send,
                            &SendOutcome::Sent {
                                message_id: "m_out".into(),
                                recipient_id: None,
                            },
                            self.now,
                        ),
                        other => rules::settle_control(
                            &self.ledger,
                            &self.page,
                            other,
                            &GraphOutcome::Succeeded,
                            self.now,
                        ),
                    };
                    self.record(settled);
                }
                (Answer::Accepted, None)
            }
            Err(r) => (
                Answer::Refused {
                    code: r.code,
                    subcode: r.subcode,
                },
                Some(r.kind),
            ),
        };
        let emulator = self.graph(call).await;
        (domain, emulator)
    }

    /// The domain's command, the page it is decided on, and the ledger it is
    /// decided against (a plugin `user_ref` has no thread yet: a fresh one).
    fn command(&mut self, call: &Call) -> (Command, Page, ThreadLedger) {
        let id = self.next_id();
        let command = match call {
            Call::Send(s) => Command::SendMessage(SendMessage {
                send_id: id,
                app: app(s.app),
                recipient: match &s.to {
                    To::User => Recipient::Psid(self.ledger.key.psid.clone()),
                    To::Token(n) => Recipient::OneTimeToken(self.tokens[*n].clone()),
                    To::UnknownToken => Recipient::OneTimeToken("otn_unknown".into()),
                    To::UserRef(r) => Recipient::UserRef((*r).to_owned()),
                },
                messaging_type: s.messaging_type,
                tag: s.tag.map(str::to_owned),
                content: match s.action {
                    Some(action) => SendContent::SenderAction { action },
                    None => SendContent::Message { metadata: None },
                },
                thread_control: s.inline.as_ref().map(|i| match i {
                    Inline::Release => InlineControl::Release,
                    Inline::Pass(to) => InlineControl::Pass {
                        app_id: to.map(app),
                    },
                }),
                payload: self.send_body(s),
                idempotency_key: None,
                graph_version: None,
                request_digest: None,
            }),
            Call::Pass(by, target) => Command::PassThreadControl {
                call_id: id,
                app: app(by),
                target: target.map(app),
                metadata: None,
            },
            Call::Take(by) => Command::TakeThreadControl {
                call_id: id,
                app: app(by),
                metadata: None,
            },
            Call::Request(by) => Command::RequestThreadControl {
                call_id: id,
                app: app(by),
                metadata: None,
            },
            Call::Release(by) => Command::ReleaseThreadControl {
                call_id: id,
                app: app(by),
                metadata: None,
            },
            Call::Extend(by, secs) => Command::ExtendThreadControl {
                call_id: id,
                app: app(by),
                duration_secs: *secs,
            },
        };
        let (page, ledger) = match call {
            Call::Send(Send {
                via: Some(mode), ..
            }) => (domain_page(*mode), self.ledger.clone()),
            Call::Send(Send {
                to: To::UserRef(_), ..
            }) => (
                self.page.clone(),
                ThreadLedger::new(self.ledger.key.clone()),
            ),
            _ => (self.page.clone(), self.ledger.clone()),
        };
        (command, page, ledger)
    }

    fn send_body(&self, s: &Send) -> Value {
        let recipient = match &s.to {
            To::User => json!({ "id": PSID }),
            To::Token(n) => json!({ "one_time_notif_token": self.tokens[*n] }),
            To::UnknownToken => json!({ "one_time_notif_token": "otn_unknown" }),
            To::UserRef(r) => json!({ "user_ref": r }),
        };
        let mut body = json!({ "recipient": recipient });
        if let Some(t) = s.messaging_type {
            body["messaging_type"] = serde_json::to_value(t).expect("messaging_type");
        }
        if let Some(tag) = s.tag {
            body["tag"] = json!(tag);
        }
        match s.action {
            Some(a) => body["sender_action"] = serde_json::to_value(a).expect("sender_action"),
            None => body["message"] = json!({ "text": "hello from the table" }),
        }
        match &s.inline {
            Some(Inline::Release) => body["thread_control"] = json!({ "control_type": "release" }),
            Some(Inline::Pass(to)) => {
                body["thread_control"] = json!({ "control_type": "pass" });
                if let Some(to) = to {
                    body["thread_control"]["app_id"] = json!(to);
                }
            }
            None => {}
        }
        body
    }

    async fn graph(&self, call: &Call) -> Answer {
        let recipient = json!({ "id": PSID });
        let (by, page, edge, body) = match call {
            Call::Send(s) => (
                s.app,
                s.via.unwrap_or(self.mode).page(),
                "messages",
                self.send_body(s),
            ),
            Call::Pass(by, target) => {
                let mut body = json!({ "recipient": recipient });
                if let Some(t) = target {
                    body["target_app_id"] = json!(t);
                }
                (*by, self.mode.page(), "pass_thread_control", body)
            }
            Call::Take(by) => (
                *by,
                self.mode.page(),
                "take_thread_control",
                json!({ "recipient": recipient }),
            ),
            Call::Request(by) => (
                *by,
                self.mode.page(),
                "request_thread_control",
                json!({ "recipient": recipient }),
            ),
            Call::Release(by) => (
                *by,
                self.mode.page(),
                "release_thread_control",
                json!({ "recipient": recipient }),
            ),
            Call::Extend(by, secs) => (
                *by,
                self.mode.page(),
                "extend_thread_control",
                json!({ "recipient": recipient, "duration": secs }),
            ),
        };
        let response = self
            .http
            .post(format!("{}/{page}/{edge}", self.emu.graph_url()))
            .bearer_auth(token_for(by, page))
            .json(&body)
            .send()
            .await
            .expect("the emulator answers");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON answer");
        if status == 200 {
            return Answer::Accepted;
        }
        let code = body["error"]["code"].as_u64().unwrap_or_else(|| {
            panic!(
                "{}: the emulator answered {status} without an error code: {body}",
                self.name
            )
        });
        Answer::Refused {
            code: code as u32,
            subcode: body["error"]["error_subcode"].as_u64().map(|s| s as u32),
        }
    }
}

// ---- The test. ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_and_emulator_agree_on_the_table() {
    let cases = table();
    assert!(cases.len() >= 50, "the table has {} cases", cases.len());
    let names: BTreeSet<_> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    let mut disagreements = Vec::new();
    let mut wrong_expectations = Vec::new();
    let mut seen_kinds = BTreeSet::new();
    let mut tally: BTreeMap<Answer, usize> = BTreeMap::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cases {
        let mut run = Run::start(case);
        for step in &case.history {
            run.step(step).await;
        }
        let ((domain, kind), emulator) = run.both(&case.call, false).await;
        run.emu.stop().await;

        *tally.entry(domain).or_default() += 1;
        if let Some(kind) = kind {
            seen_kinds.insert(kind.name());
            *kinds.entry(kind.name()).or_default() += 1;
        }
        if domain != emulator {
            let line = format!(
                "DISAGREE {}: domain {domain}{}, emulator {emulator}",
                case.name,
                kind.map(|k| format!(" ({})", k.name())).unwrap_or_default()
            );
            println!("{line}");
            disagreements.push(line);
        }
        let expected = match case.expect {
            Expect::Accepted => kind.is_none(),
            Expect::Refused(k) => kind == Some(k),
        };
        if !expected {
            wrong_expectations.push(format!(
                "{}: expected {:?}, the domain answered {domain} {kind:?}",
                case.name, case.expect
            ));
        }
    }
    let agree = cases.len() - disagreements.len();
    println!("differential: {} cases, {agree} agree", cases.len());
    println!(
        "differential answers: {}",
        tally
            .iter()
            .map(|(answer, n)| format!("{answer} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "differential refusals: {}",
        kinds
            .iter()
            .map(|(kind, n)| format!("{kind} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let missing: Vec<&str> = RejectionKind::ALL
        .iter()
        .map(|k| k.name())
        .filter(|name| !seen_kinds.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "refusal kinds no case shows: {missing:?}"
    );
    assert!(
        wrong_expectations.is_empty(),
        "cases that do not test what they say:\n{}",
        wrong_expectations.join("\n")
    );
    assert!(
        disagreements.is_empty(),
        "the domain and the emulator disagree:\n{}",
        disagreements.join("\n")
    );
}
