//! Given / when / then for the send gate: ownership per mode and state, the
//! messaging window, message tags, One-Time Notification tokens. Each test is
//! a row of docs/domain.md.

mod support;

use domain::events::{Channel, ControlView, InboundEvent, OwnerBasis, Referral, WindowBasis};
use domain::page::MessagingBlock;
use domain::rules;
use domain::{Command, Event, MessagingType, RejectionKind, SendContent, SenderAction, Span};
use support::*;

fn basis(events: &[Event]) -> &domain::events::SendBasis {
    match &events[0] {
        Event::SendAccepted(a) => &a.basis,
        other => panic!("expected SendAccepted, got {other:?}"),
    }
}

// ---- Ownership. ----

#[test]
fn cr_owner_may_send_in_window() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    let events = assert_accepted(s.when(&reply(human()), hours(2)));
    assert_eq!(basis(&events).owner, OwnerBasis::ThreadOwner);
    assert_eq!(type_names(&events), ["SendAccepted"]);
}

#[test]
fn cr_non_owner_send_refused_2018300() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    assert_refused(
        s.when(&reply(bot()), hours(2)),
        RejectionKind::NotThreadOwner,
        10,
        Some(2_018_300),
    );
}

#[test]
fn cr_idle_thread_default_app_may_send() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1));
    assert_eq!(s.owner_at(hours(2)), ControlView::Idle);
    let events = assert_accepted(s.when(&reply(bot()), hours(2)));
    assert_eq!(basis(&events).owner, OwnerBasis::IdleHolder);
}

#[test]
fn cr_idle_thread_non_default_app_refused() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1));
    assert_refused(
        s.when(&reply(human()), hours(2)),
        RejectionKind::NotThreadOwner,
        10,
        Some(2_018_300),
    );
}

#[test]
fn cr_lapsed_control_counts_as_idle_for_sends() {
    // The human got control at T0 and the user never wrote again: at 25 h the
    // thread is idle, so the human may not send even with HUMAN_AGENT.
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(T0, human());
    assert_accepted(s.when(&tagged(human(), "HUMAN_AGENT"), hours(23)));
    assert_refused(
        s.when(&tagged(human(), "HUMAN_AGENT"), hours(25)),
        RejectionKind::NotThreadOwner,
        10,
        Some(2_018_300),
    );
}

#[test]
fn zc_any_app_may_send() {
    let s = Scenario::given(zc()).user_message(T0);
    for a in [bot(), human(), other()] {
        let events = assert_accepted(s.when(&reply(a), hours(1)));
        assert_eq!(basis(&events).owner, OwnerBasis::ZeroConfig);
    }
}

#[test]
fn hop_primary_answers_idle_thread_secondary_refused() {
    let s = Scenario::given(hop()).user_message(T0);
    let events = assert_accepted(s.when(&reply(bot()), hours(1)));
    assert_eq!(basis(&events).owner, OwnerBasis::IdleHolder);
    assert_refused(
        s.when(&reply(human()), hours(1)),
        RejectionKind::NotThreadOwner,
        10,
        Some(2_018_300),
    );
}

#[test]
fn hop_secondary_owner_may_send_primary_may_not() {
    let s = Scenario::given(hop())
        .user_message(T0)
        .done(pass(bot(), Some(human())), hours(1));
    assert_accepted(s.when(&reply(human()), hours(2)));
    assert_refused(
        s.when(&reply(bot()), hours(2)),
        RejectionKind::NotThreadOwner,
        10,
        Some(2_018_300),
    );
}

#[test]
fn unknown_owner_lets_meta_decide() {
    let s = Scenario::given(cr()).user_message(T0).item(
        hours(1),
        bot(),
        Channel::Standby,
        message("m-standby"),
    );
    assert_eq!(s.owner_at(hours(1)), ControlView::Unknown);
    let events = assert_accepted(s.when(&reply(human()), hours(1)));
    assert_eq!(basis(&events).owner, OwnerBasis::OwnerUnknown);
}

#[test]
fn app_not_on_page_refused() {
    for page in all_modes() {
        let s = Scenario::given(page).user_message(T0);
        assert_refused(
            s.when(&reply(stranger()), hours(1)),
            RejectionKind::AppNotOnPage,
            100,
            Some(33),
        );
        assert_refused(
            s.when(&take(stranger()), hours(1)),
            RejectionKind::AppNotOnPage,
            100,
            Some(33),
        );
    }
}

#[test]
fn blocked_page_refuses_sends() {
    let mut s = Scenario::given(cr()).user_message(T0);
    s.page.blocked = Some(MessagingBlock {
        since: T0,
        reason: Some("spam".into()),
    });
    assert_refused(
        s.when(&reply(bot()), hours(1)),
        RejectionKind::PageBlocked,
        10,
        Some(1_893_063),
    );
}

// ---- The window. ----

#[test]
fn window_open_one_ms_before_24h() {
    let s = Scenario::given(cr()).user_message(T0);
    assert_accepted(s.when(&reply(bot()), T0.plus(Span(Span::hours(24).millis() - 1))));
}

#[test]
fn window_closed_exactly_at_24h() {
    let s = Scenario::given(cr()).user_message(T0);
    assert_refused(
        s.when(&reply(bot()), hours(24)),
        RejectionKind::OutsideWindow,
        10,
        Some(2_018_278),
    );
    let update = Command::SendMessage(send_msg(bot(), Some(MessagingType::Update), None));
    assert_refused(
        s.when(&update, hours(24)),
        RejectionKind::OutsideWindow,
        10,
        Some(2_018_278),
    );
}

#[test]
fn no_user_action_means_no_window() {
    // The thread exists (an echo of the page's message), but the user never acted.
    let s = Scenario::given(cr()).item(T0, bot(), Channel::Messaging, echo("m-0", bot()));
    assert_refused(
        s.when(&reply(bot()), T0),
        RejectionKind::OutsideWindow,
        10,
        Some(2_018_278),
    );
}

#[test]
fn each_qualifying_action_refreshes_the_window() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .user_message(hours(20));
    assert_accepted(s.when(&reply(bot()), hours(43)));
    assert_refused(
        s.when(&reply(bot()), hours(44)),
        RejectionKind::OutsideWindow,
        10,
        Some(2_018_278),
    );
}

#[test]
fn reads_deliveries_echoes_and_account_linking_do_not_open_the_window() {
    let kinds = [
        InboundEvent::Read { watermark: 1 },
        InboundEvent::Delivery {
            watermark: 1,
            mids: vec![],
        },
        echo("m-echo", bot()),
        InboundEvent::AccountLinking {
            status: "linked".into(),
            authorization_code: Some("x".into()),
        },
        InboundEvent::Unknown {
            key: Some("game_play".into()),
        },
        otn_optin("tok-w"),
    ];
    for kind in kinds {
        let s = Scenario::given(cr()).item(T0, bot(), Channel::Messaging, kind.clone());
        assert!(
            s.ledger.window.is_none(),
            "{} opened the window",
            kind.kind_name()
        );
        assert_refused(
            s.when(&reply(bot()), hours(1)),
            RejectionKind::OutsideWindow,
            10,
            Some(2_018_278),
        );
    }
}

#[test]
fn postbacks_quick_replies_reactions_referrals_and_plugin_optins_open_the_window() {
    let kinds = [
        InboundEvent::Postback {
            mid: None,
            title: Some("Get Started".into()),
            payload: Some("START".into()),
            referral: None,
        },
        InboundEvent::QuickReply {
            mid: "m-q".into(),
            text: Some("Yes".into()),
            payload: "YES".into(),
        },
        InboundEvent::Reaction {
            mid: "m-r".into(),
            action: "react".into(),
            reaction: Some("love".into()),
        },
        InboundEvent::Referral {
            referral: Referral {
                reference: Some("summer".into()),
                source: Some("SHORTLINK".into()),
                ..Referral::default()
            },
        },
        InboundEvent::Optin {
            optin: domain::events::Optin::Plugin {
                reference: Some("checkout".into()),
                user_ref: None,
            },
        },
    ];
    for kind in kinds {
        let s = Scenario::given(cr()).item(T0, bot(), Channel::Messaging, kind.clone());
        assert!(
            s.ledger.window.is_some(),
            "{} did not open the window",
            kind.kind_name()
        );
        assert_accepted(s.when(&reply(bot()), hours(23)));
    }
}

#[test]
fn click_to_messenger_ad_message_opens_seven_days() {
    let s = Scenario::given(cr()).item(T0, bot(), Channel::Messaging, ad_message("m-ad"));
    let events = assert_accepted(s.when(&reply(bot()), hours(6 * 24)));
    assert!(matches!(
        basis(&events).window,
        WindowBasis::StandardWindow {
            reason: domain::events::WindowReason::ClickToMessengerAd,
            ..
        }
    ));
    assert_refused(
        s.when(&reply(bot()), hours(7 * 24)),
        RejectionKind::OutsideWindow,
        10,
        Some(2_018_278),
    );
}

#[test]
fn a_later_24h_action_does_not_shrink_an_ad_window() {
    let s = Scenario::given(cr())
        .item(T0, bot(), Channel::Messaging, ad_message("m-ad"))
        .user_message(hours(1));
    assert_accepted(s.when(&reply(bot()), hours(100)));
}

#[test]
fn the_first_message_after_an_ad_click_into_an_existing_thread_opens_seven_days() {
    let ad_click = InboundEvent::Referral {
        referral: domain::events::Referral {
            source: Some("ADS".into()),
            kind: Some("OPEN_THREAD".into()),
            ad_id: Some("ad-7".into()),
            ..Default::default()
        },
    };
    // An existing thread: the click arrives as its own referral (24 h), then
    // the user's first message after it opens 7 days.
    let s = Scenario::given(cr())
        .user_message(T0)
        .item(hours(2), bot(), Channel::Messaging, ad_click.clone())
        .user_message(hours(3));
    assert_accepted(s.when(&reply(bot()), hours(3 + 6 * 24)));
    assert_refused(
        s.when(&reply(bot()), hours(3 + 7 * 24)),
        RejectionKind::OutsideWindow,
        10,
        Some(2_018_278),
    );
    // Only the first message after the click: a second one gives 24 h.
    let s = Scenario::given(cr())
        .item(hours(2), bot(), Channel::Messaging, ad_click)
        .user_message(hours(3))
        .user_message(hours(4));
    assert_accepted(s.when(&reply(bot()), hours(3 + 6 * 24)));
    // Without a click, a message gives 24 h.
    let s = Scenario::given(cr())
        .user_message(T0)
        .user_message(hours(3));
    assert_refused(
        s.when(&reply(bot()), hours(3 + 25)),
        RejectionKind::OutsideWindow,
        10,
        Some(2_018_278),
    );
}

#[test]
fn messages_need_a_messaging_type() {
    let s = Scenario::given(cr()).user_message(T0);
    let bare = Command::SendMessage(send_msg(bot(), None, None));
    assert_refused(
        s.when(&bare, hours(1)),
        RejectionKind::MessagingTypeRequired,
        100,
        None,
    );
}

#[test]
fn sender_actions_are_gated_like_messages() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    let action = |by| {
        let mut m = send_msg(by, None, None);
        m.content = SendContent::SenderAction {
            action: SenderAction::TypingOn,
        };
        Command::SendMessage(m)
    };
    assert_accepted(s.when(&action(human()), hours(2)));
    assert_refused(
        s.when(&action(bot()), hours(2)),
        RejectionKind::NotThreadOwner,
        10,
        Some(2_018_300),
    );
    assert_refused(
        s.when(&action(human()), hours(30)),
        RejectionKind::NotThreadOwner,
        10,
        Some(2_018_300),
    );
    let s = Scenario::given(zc()).user_message(T0);
    assert_refused(
        s.when(&action(human()), hours(30)),
        RejectionKind::OutsideWindow,
        10,
        Some(2_018_278),
    );
}

// ---- Tags. ----

#[test]
fn human_agent_from_human_app_on_day_six_accepted() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(T0, human())
        .done(extend(human(), 7 * 86_400), hours(1));
    let events = assert_accepted(s.when(&tagged(human(), "HUMAN_AGENT"), hours(6 * 24)));
    assert!(matches!(
        basis(&events).window,
        WindowBasis::HumanAgent { .. }
    ));
}

#[test]
fn human_agent_from_bot_app_refused() {
    let s = Scenario::given(cr()).user_message(T0);
    let r = assert_refused(
        s.when(&tagged(bot(), "HUMAN_AGENT"), hours(1)),
        RejectionKind::HumanAgentNotHuman,
        10,
        None,
    );
    assert!(r.reason.contains("human agents only"));
}

#[test]
fn human_agent_after_seven_days_refused() {
    let s = Scenario::given(zc()).user_message(T0);
    assert_accepted(s.when(&tagged(human(), "HUMAN_AGENT"), hours(7 * 24 - 1)));
    assert_refused(
        s.when(&tagged(human(), "HUMAN_AGENT"), hours(7 * 24)),
        RejectionKind::OutsideWindow,
        10,
        Some(2_018_278),
    );
}

#[test]
fn retired_tags_refused_with_100_from_2026_04_27_by_the_dated_table() {
    let before = domain::policy::RETIRED_2026.plus(Span(-Span::HOUR.millis()));
    for tag in [
        "CONFIRMED_EVENT_UPDATE",
        "POST_PURCHASE_UPDATE",
        "ACCOUNT_UPDATE",
    ] {
        let s = Scenario::given(cr()).user_message(before.plus(Span::days(-30)));
        // A decision replayed at a date before the retirement uses the old table.
        let events = assert_accepted(s.when(&tagged(bot(), tag), before));
        assert!(matches!(
            basis(&events).window,
            WindowBasis::MessageTag { .. }
        ));
        assert_refused(
            s.when(&tagged(bot(), tag), domain::policy::RETIRED_2026),
            RejectionKind::RetiredTag,
            100,
            None,
        );
        let s = Scenario::given(cr()).user_message(T0);
        assert_refused(
            s.when(&tagged(bot(), tag), hours(1)),
            RejectionKind::RetiredTag,
            100,
            None,
        );
    }
}

#[test]
fn pre_2020_tags_refused() {
    let s = Scenario::given(cr()).user_message(T0);
    for tag in ["SHIPPING_UPDATE", "ISSUE_RESOLUTION", "PAYMENT_UPDATE"] {
        assert_refused(
            s.when(&tagged(bot(), tag), hours(1)),
            RejectionKind::RetiredTag,
            100,
            None,
        );
    }
}

#[test]
fn unknown_and_unconfirmed_tags_refused() {
    let s = Scenario::given(cr()).user_message(T0);
    assert_refused(
        s.when(&tagged(bot(), "FRIENDLY_REMINDER"), hours(1)),
        RejectionKind::UnknownTag,
        100,
        None,
    );
    assert_refused(
        s.when(&tagged(bot(), "human_agent"), hours(1)),
        RejectionKind::UnknownTag,
        100,
        None,
    );
    assert_refused(
        s.when(&tagged(bot(), "CUSTOMER_FEEDBACK"), hours(1)),
        RejectionKind::UnknownTag,
        100,
        None,
    );
}

#[test]
fn news_tag_needs_a_permission_baton_does_not_model() {
    let s = Scenario::given(cr()).user_message(T0);
    assert_refused(
        s.when(&tagged(bot(), "NON_PROMOTIONAL_SUBSCRIPTION"), hours(1)),
        RejectionKind::TagNeedsPermission,
        10,
        Some(2_018_065),
    );
}

#[test]
fn tag_and_messaging_type_must_agree() {
    let s = Scenario::given(cr()).user_message(T0);
    let no_tag = Command::SendMessage(send_msg(bot(), Some(MessagingType::MessageTag), None));
    assert_refused(
        s.when(&no_tag, hours(1)),
        RejectionKind::TagMismatch,
        100,
        None,
    );
    let stray = Command::SendMessage(send_msg(
        bot(),
        Some(MessagingType::Response),
        Some("HUMAN_AGENT"),
    ));
    assert_refused(
        s.when(&stray, hours(1)),
        RejectionKind::TagMismatch,
        100,
        None,
    );
}

// ---- One-Time Notification tokens. ----

fn with_token(page: domain::Page) -> Scenario {
    Scenario::given(page).user_message(T0).item(
        hours(1),
        bot(),
        Channel::Messaging,
        otn_optin("tok-1"),
    )
}

#[test]
fn otn_token_sends_once_outside_the_window() {
    let s = with_token(cr());
    let events = assert_accepted(s.when(&token_send(bot(), "tok-1"), hours(24 * 30)));
    assert_eq!(
        type_names(&events),
        ["SendAccepted", "OneTimeTokenConsumed"]
    );
    assert!(matches!(
        basis(&events).window,
        WindowBasis::OneTimeToken { .. }
    ));
    let s = s.record(events);
    assert_refused(
        s.when(&token_send(bot(), "tok-1"), hours(24 * 30)),
        RejectionKind::TokenSpent,
        100,
        None,
    );
}

#[test]
fn otn_token_expires_after_a_year() {
    let s = with_token(cr());
    assert_accepted(s.when(&token_send(bot(), "tok-1"), hours(365 * 24)));
    assert_refused(
        s.when(&token_send(bot(), "tok-1"), hours(365 * 24 + 1)),
        RejectionKind::TokenExpired,
        100,
        None,
    );
}

#[test]
fn otn_token_is_valid_only_for_its_page() {
    let s = with_token(cr());
    let mut other_page = cr();
    other_page.id = domain::PageId::parse("5550002").unwrap();
    assert_refused(
        rules::decide(
            &s.ledger,
            &other_page,
            &token_send(bot(), "tok-1"),
            hours(2),
        ),
        RejectionKind::TokenWrongPage,
        100,
        None,
    );
}

#[test]
fn otn_unknown_token_refused() {
    let s = with_token(cr());
    assert_refused(
        s.when(&token_send(bot(), "tok-404"), hours(2)),
        RejectionKind::TokenUnknown,
        100,
        None,
    );
    assert_eq!(rules::unknown_token().kind, RejectionKind::TokenUnknown);
}

#[test]
fn otn_token_send_still_needs_ownership() {
    let s = with_token(cr()).passed_to(hours(2), human());
    assert_refused(
        s.when(&token_send(bot(), "tok-1"), hours(3)),
        RejectionKind::NotThreadOwner,
        10,
        Some(2_018_300),
    );
}

#[test]
fn tag_and_token_problems_are_refused_before_ownership() {
    // The human app owns the thread; the others' requests are malformed in
    // ways Meta refuses whoever controls the thread.
    let s = with_token(cr()).passed_to(hours(2), human());
    assert_refused(
        s.when(&tagged(bot(), "HUMAN_AGENT"), hours(3)),
        RejectionKind::HumanAgentNotHuman,
        10,
        None,
    );
    assert_refused(
        s.when(&tagged(other(), "ACCOUNT_UPDATE"), hours(3)),
        RejectionKind::RetiredTag,
        100,
        None,
    );
    assert_refused(
        s.when(&tagged(other(), "NON_PROMOTIONAL_SUBSCRIPTION"), hours(3)),
        RejectionKind::TagNeedsPermission,
        10,
        Some(2_018_065),
    );
    assert_refused(
        s.when(&token_send(other(), "tok-404"), hours(3)),
        RejectionKind::TokenUnknown,
        100,
        None,
    );
    assert_refused(
        s.when(&token_send(bot(), "tok-1"), hours(24 * 366)),
        RejectionKind::TokenExpired,
        100,
        None,
    );
}

#[test]
fn an_optin_copy_does_not_issue_the_token_twice() {
    let s = with_token(cr()).item(hours(1), bot(), Channel::Messaging, otn_optin("tok-1"));
    assert_eq!(s.ledger.tokens.len(), 1);
}

#[test]
fn otn_token_comes_back_when_meta_refuses_the_send_for_certain() {
    let s = with_token(cr());
    let cmd = token_send(bot(), "tok-1");
    let accepted = assert_accepted(s.when(&cmd, hours(48)));
    let s = s.record(accepted);
    assert_refused(
        s.when(&token_send(bot(), "tok-1"), hours(48)),
        RejectionKind::TokenSpent,
        100,
        None,
    );
    let domain::Command::SendMessage(send) = &cmd else {
        unreachable!()
    };
    let failed = domain::events::SendOutcome::Failed {
        error: domain::events::GraphError {
            code: 551,
            subcode: Some(1_545_041),
            message: "unavailable".into(),
            fbtrace_id: None,
            is_transient: false,
        },
    };
    let events = rules::settle_send(&s.ledger, &s.page, send, &failed, hours(48));
    assert_eq!(
        type_names(&events),
        ["SendOutcomeRecorded", "OneTimeTokenReleased"]
    );
    let s = s.record(events);
    assert_accepted(s.when(&token_send(bot(), "tok-1"), hours(49)));
    // An unknown outcome keeps it spent: Meta may have used it.
    let unknown = domain::events::SendOutcome::Unknown {
        reason: "timeout".into(),
    };
    assert_eq!(
        type_names(&rules::settle_send(
            &s.ledger,
            &s.page,
            send,
            &unknown,
            hours(49)
        )),
        ["SendOutcomeRecorded"]
    );
}

#[test]
fn a_user_who_never_wrote_is_no_matching_user_for_sends_and_control_calls() {
    let s = Scenario::given(cr());
    assert_refused(
        s.when(&reply(bot()), hours(1)),
        RejectionKind::UnknownRecipient,
        100,
        Some(2_018_001),
    );
    assert_refused(
        s.when(&pass(bot(), Some(human())), hours(1)),
        RejectionKind::UnknownRecipient,
        100,
        Some(2_018_001),
    );
    // Once the user wrote, the thread exists.
    assert_accepted(
        Scenario::given(cr())
            .user_message(T0)
            .when(&reply(bot()), hours(1)),
    );
}
