//! Given / when / then for what Meta tells Baton: entry-point routing of idle
//! threads, handover webhooks, and drift (the ledger follows Meta). Each test
//! is a row of docs/domain.md.

mod support;

use domain::events::HandoverNotice;
use domain::events::{Channel, ControlView, DriftEvidence};
use domain::rules::{self, Observation};
use domain::{Event, Span, Timestamp};
use support::*;

fn drift_of(events: &[Event]) -> Option<&domain::events::OwnershipDriftDetected> {
    events.iter().find_map(|e| match e {
        Event::OwnershipDriftDetected(d) => Some(d),
        _ => None,
    })
}

#[test]
fn cr_user_message_on_idle_thread_routes_to_the_app_meta_chose() {
    let s = Scenario::given(cr()).item(T0, human(), Channel::Messaging, message("m1"));
    assert_eq!(
        type_names(&s.history),
        ["MessagingEventReceived", "ThreadRouted"]
    );
    assert_eq!(s.owner_at(T0), owner(human()));
}

#[test]
fn cr_idle_thread_with_external_default_app_routes_to_it() {
    let s = Scenario::given(cr_inbox_default()).item(T0, bot(), Channel::Standby, message("m1"));
    assert_eq!(s.owner_at(T0), owner(inbox()));
}

#[test]
fn a_webhook_confirming_the_ledger_records_nothing_more() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(pass(bot(), Some(human())), hours(1));
    let n = s.history.len();
    let s = s.handover(
        hours(1),
        human(),
        HandoverNotice::Passed {
            from: Some(bot()),
            to: human(),
            metadata: None,
        },
    );
    assert_eq!(
        type_names(&s.history[n..]),
        ["MessagingEventReceived"],
        "the webhook is kept, nothing else"
    );
}

#[test]
fn page_inbox_takeover_seen_by_webhook_is_followed() {
    let s = Scenario::given(cr()).user_message(T0).handover(
        hours(1),
        bot(),
        HandoverNotice::Taken {
            from: Some(bot()),
            by: inbox(),
            metadata: None,
        },
    );
    assert!(
        drift_of(&s.history).is_none(),
        "the ledger agreed on the previous owner"
    );
    assert_eq!(s.owner_at(hours(1)), owner(inbox()));
}

#[test]
fn handover_webhook_from_an_unexpected_owner_records_drift_then_the_fact() {
    let s = Scenario::given(cr()).user_message(T0).handover(
        hours(1),
        bot(),
        HandoverNotice::Passed {
            from: Some(inbox()),
            to: human(),
            metadata: None,
        },
    );
    let d = drift_of(&s.history).expect("drift");
    assert_eq!(d.ledger, owner(bot()));
    assert_eq!(d.observed, owner(inbox()));
    assert!(matches!(
        s.history.last().unwrap(),
        Event::ThreadControlPassed(_)
    ));
    assert_eq!(s.owner_at(hours(1)), owner(human()));
}

#[test]
fn inbox_reply_echo_on_a_bot_thread_is_drift_to_the_inbox() {
    let s = Scenario::given(cr()).user_message(T0).item(
        hours(1),
        bot(),
        Channel::Standby,
        echo("m-human", inbox()),
    );
    let d = drift_of(&s.history).expect("drift");
    assert!(matches!(d.evidence, DriftEvidence::Echo { .. }));
    assert_eq!(s.owner_at(hours(1)), owner(inbox()));
}

#[test]
fn the_owners_own_echo_is_no_drift() {
    let s = Scenario::given(cr()).user_message(T0).item(
        hours(1),
        bot(),
        Channel::Messaging,
        echo("m-bot", bot()),
    );
    assert!(drift_of(&s.history).is_none());
}

#[test]
fn standby_copy_to_the_ledger_owner_is_drift_to_unknown_then_thread_owner_settles_it() {
    let s = Scenario::given(cr()).user_message(T0).item(
        hours(1),
        bot(),
        Channel::Standby,
        message("m2"),
    );
    let d = drift_of(&s.history).expect("drift");
    assert_eq!(d.observed, ControlView::Unknown);
    let answer = Observation::ThreadOwner {
        at: hours(1),
        owner: Some(inbox()),
        asked_at_version: s.ledger.version,
    };
    let events = rules::observe(&s.ledger, &s.page, answer, hours(1));
    let s = s.record(events);
    assert_eq!(s.owner_at(hours(1)), owner(inbox()));
}

#[test]
fn messaging_copy_to_a_non_owner_is_drift_to_that_app() {
    // The Page Inbox (external) owned the thread: Meta now routes to `other`.
    let s = Scenario::given(cr())
        .user_message(T0)
        .handover(
            hours(1),
            bot(),
            HandoverNotice::Taken {
                from: Some(bot()),
                by: inbox(),
                metadata: None,
            },
        )
        .item(hours(2), other(), Channel::Messaging, message("m2"));
    let d = drift_of(&s.history).expect("drift");
    assert!(matches!(
        d.evidence,
        DriftEvidence::MessagingDelivery { .. }
    ));
    assert_eq!(s.owner_at(hours(2)), owner(other()));
}

#[test]
fn metas_webhook_of_batons_own_call_beating_its_answer_is_no_drift() {
    // The bot passed to the human app; within the same millisecond (inside
    // the skew tolerance of that change, timed by Baton) the human app
    // passes back. Meta's webhook of that pass reaches Baton before Meta's
    // answer to the call: it may be the call's news, so it is no drift and
    // no stale evidence, and it is left to the answer.
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(pass(bot(), Some(human())), hours(1));
    let back = pass(human(), None);
    let accepted = rules::decide(&s.ledger, &s.page, &back, hours(1)).unwrap();
    let s = s.record(accepted);
    let s = s.handover(
        hours(1),
        bot(),
        HandoverNotice::Passed {
            from: Some(human()),
            to: bot(),
            metadata: None,
        },
    );
    let names = type_names(&s.history);
    assert!(
        !names.contains(&"StaleEvidenceIgnored") && drift_of(&s.history).is_none(),
        "{names:?}"
    );
    // Not applied either: it may be an older handover of the same apps,
    // delivered late. Meta's answer settles it.
    assert_eq!(s.owner_at(hours(1)), owner(human()));
    let settled = rules::settle_control(
        &s.ledger,
        &s.page,
        &back,
        &domain::events::GraphOutcome::Succeeded,
        hours(1),
    );
    let s = s.record(settled);
    assert_eq!(s.owner_at(hours(1)), owner(bot()));
    assert!(drift_of(&s.history).is_none());
    // A notice of some other handover at that moment is still older news.
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(pass(bot(), Some(human())), hours(1))
        .handover(
            hours(1),
            other(),
            HandoverNotice::Taken {
                from: Some(bot()),
                by: other(),
                metadata: None,
            },
        );
    assert!(type_names(&s.history).contains(&"StaleEvidenceIgnored"));
}

#[test]
fn a_late_notice_of_an_earlier_identical_pass_does_not_let_a_late_take_win_a_tie() {
    // All at one instant (Meta's clock and Baton's): the bot passed to the
    // human, took the thread back, and passes to the human again. While
    // that pass awaits Meta's answer, the webhook of the first pass arrives
    // late (it looks exactly like the call's own), then, after the answer,
    // the webhook of the take. The human owns the thread, and may release
    // it (the SDK compatibility test on PostgreSQL, once).
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(pass(bot(), Some(human())), T0)
        .done(take(bot()), T0);
    let again = pass(bot(), Some(human()));
    let accepted = rules::decide(&s.ledger, &s.page, &again, T0).unwrap();
    let s = s.record(accepted);
    let s = s.handover(
        T0,
        human(),
        HandoverNotice::Passed {
            from: Some(bot()),
            to: human(),
            metadata: None,
        },
    );
    let settled = rules::settle_control(
        &s.ledger,
        &s.page,
        &again,
        &domain::events::GraphOutcome::Succeeded,
        T0,
    );
    let s = s.record(settled);
    assert_eq!(s.owner_at(T0), owner(human()));
    let s = s.handover(
        T0,
        human(),
        HandoverNotice::Taken {
            from: Some(human()),
            by: bot(),
            metadata: None,
        },
    );
    assert_eq!(
        s.owner_at(T0),
        owner(human()),
        "{:?}",
        type_names(&s.history)
    );
    assert!(s.when(&release(human()), T0).is_ok());
}

#[test]
fn a_call_whose_answer_never_came_does_not_hide_metas_notices_for_good() {
    // The human's pass back was accepted, and its answer never recorded (a
    // crash). A notice of that very handover, timed then, delivered late:
    // within a minute of the acceptance it is left to the answer; after it,
    // it is older news kept and checked with Meta, as any other.
    let given = || {
        let s = Scenario::given(cr())
            .user_message(T0)
            .done(pass(bot(), Some(human())), hours(1));
        let back = pass(human(), None);
        let accepted = rules::decide(&s.ledger, &s.page, &back, hours(1)).unwrap();
        s.record(accepted)
    };
    let notice = || HandoverNotice::Passed {
        from: Some(human()),
        to: bot(),
        metadata: None,
    };
    let handover = |s: Scenario, now: Timestamp| {
        s.item_seen_at(
            hours(1),
            now,
            bot(),
            Channel::Messaging,
            domain::events::InboundEvent::Handover { notice: notice() },
        )
    };
    let soon = handover(given(), hours(1).plus(Span::seconds(30)));
    assert!(!type_names(&soon.history).contains(&"StaleEvidenceIgnored"));
    let late = handover(given(), hours(1).plus(Span::minutes(2)));
    assert!(
        type_names(&late.history).contains(&"StaleEvidenceIgnored"),
        "{:?}",
        type_names(&late.history)
    );
}

/// Meta's notice that the bot passed the thread to the human, timed `at`,
/// delivered on the human's endpoint and seen at `now`.
fn bot_passed_to_human(s: Scenario, at: Timestamp, now: Timestamp) -> Scenario {
    s.item_seen_at(
        at,
        now,
        human(),
        Channel::Messaging,
        domain::events::InboundEvent::Handover {
            notice: HandoverNotice::Passed {
                from: Some(bot()),
                to: human(),
                metadata: None,
            },
        },
    )
}

#[test]
fn a_call_whose_answer_never_came_corroborates_nothing_after_a_minute() {
    // The bot owns the thread. Its pass to the human was accepted, and the
    // answer never recorded (a crash between the call and its record). A
    // pass notice on the human's endpoint, which anyone who knows the
    // human app's secret could write, is corroborated by that call within
    // a minute of its acceptance; after it, it is checked with Meta as any
    // other such evidence.
    let given = || {
        let s = Scenario::given(cr()).user_message(T0);
        let accepted =
            rules::decide(&s.ledger, &s.page, &pass(bot(), Some(human())), hours(1)).unwrap();
        s.record(accepted)
    };
    let soon = hours(1).plus(Span::seconds(30));
    assert_eq!(
        bot_passed_to_human(given(), soon, soon).owner_at(soon),
        owner(human())
    );
    let late = hours(2);
    let s = bot_passed_to_human(given(), late, late);
    assert_eq!(
        s.owner_at(late),
        ControlView::Unknown,
        "{:?}",
        type_names(&s.history)
    );
    // The minute runs on Baton's clock, not the notice's (whoever signs a
    // webhook sets its time): timed within the minute, seen after it.
    let s = bot_passed_to_human(given(), soon, late);
    assert_eq!(
        s.owner_at(late),
        ControlView::Unknown,
        "{:?}",
        type_names(&s.history)
    );
}

#[test]
fn a_send_with_an_inline_pass_corroborates_for_a_minute_from_its_latest_attempt() {
    // The bot owns the thread and sends with an inline pass to the human.
    // The outbox holds the send (a paused page, a backoff) and attempts it
    // five minutes after its acceptance. Meta's pass notice on the human's
    // endpoint half a minute after that attempt is the send's news; a
    // minute after it, it is checked with Meta.
    let attempted = hours(1).plus(Span::minutes(5));
    let given = || {
        let s = Scenario::given(cr()).user_message(T0);
        let mut m = send_msg(bot(), Some(domain::MessagingType::Response), None);
        m.thread_control = Some(domain::InlineControl::Pass {
            app_id: Some(human()),
        });
        let send_id = m.send_id.clone();
        let accepted = rules::decide(
            &s.ledger,
            &s.page,
            &domain::Command::SendMessage(m),
            hours(1),
        )
        .unwrap();
        let s = s.record(accepted);
        let thread = s.ledger.key.clone();
        s.record(vec![domain::events::SendAttempted {
            thread,
            at: attempted,
            send_id,
            attempt: 1,
        }
        .into()])
    };
    let soon = attempted.plus(Span::seconds(30));
    assert_eq!(
        bot_passed_to_human(given(), soon, soon).owner_at(soon),
        owner(human())
    );
    let late = attempted.plus(Span::minutes(2));
    let s = bot_passed_to_human(given(), late, late);
    assert_eq!(
        s.owner_at(late),
        ControlView::Unknown,
        "{:?}",
        type_names(&s.history)
    );
}

#[test]
fn an_item_of_a_kind_baton_does_not_know_is_no_evidence_of_ownership() {
    // The bot owns the thread. Meta tells the human app, on `messaging`,
    // that the bot passed it metadata (`pass_thread_metadata`), which Baton
    // keeps as an unknown item; so does a kind Meta adds later. Neither says
    // the human app owns the thread, on either channel.
    let unknown = |key: &str| domain::events::InboundEvent::Unknown {
        key: Some(key.into()),
    };
    let s = Scenario::given(cr())
        .user_message(T0)
        .item(
            hours(1),
            human(),
            Channel::Messaging,
            unknown("pass_thread_metadata"),
        )
        .item(hours(2), bot(), Channel::Standby, unknown("something_new"));
    assert!(
        drift_of(&s.history).is_none(),
        "{:?}",
        type_names(&s.history)
    );
    assert_eq!(s.owner_at(hours(2)), owner(bot()));
    // A message on the same channel still is.
    let s = s.item(hours(3), human(), Channel::Messaging, message("m2"));
    assert!(drift_of(&s.history).is_some());
}

#[test]
fn evidence_that_takes_control_from_another_managed_app_is_confirmed_with_meta_first() {
    // The bot owns the thread. A messaging copy on another app's endpoint, or
    // a take webhook on the human's endpoint, could be written by anyone who
    // knows that app's secret: the owner is unknown until thread_owner says.
    let given = || Scenario::given(cr()).user_message(T0);
    let s = given().item(hours(1), other(), Channel::Messaging, message("m2"));
    assert_eq!(
        drift_of(&s.history).map(|d| &d.observed),
        Some(&ControlView::Unknown)
    );
    assert_eq!(s.owner_at(hours(1)), ControlView::Unknown);
    let s = given().handover(
        hours(1),
        human(),
        HandoverNotice::Taken {
            from: Some(bot()),
            by: human(),
            metadata: None,
        },
    );
    assert_eq!(s.owner_at(hours(1)), ControlView::Unknown);
    assert!(
        !type_names(&s.history).contains(&"ThreadControlTaken"),
        "the claimed take is not applied"
    );
    // Meta's answer settles it.
    let events = rules::observe(
        &s.ledger,
        &s.page,
        Observation::ThreadOwner {
            at: hours(1),
            owner: Some(bot()),
            asked_at_version: s.ledger.version,
        },
        hours(1),
    );
    let s = s.record(events);
    assert_eq!(s.owner_at(hours(1)), owner(bot()));
    // The same take, delivered on the bot's own endpoint (it lost control), is believed.
    let s = given().handover(
        hours(1),
        bot(),
        HandoverNotice::Taken {
            from: Some(bot()),
            by: human(),
            metadata: None,
        },
    );
    assert_eq!(s.owner_at(hours(1)), owner(human()));
}

#[test]
fn zero_config_channels_say_nothing_about_control() {
    let s = Scenario::given(zc())
        .item(T0, bot(), Channel::Messaging, message("m1"))
        .item(T0, human(), Channel::Messaging, echo("m-e", human()));
    assert!(drift_of(&s.history).is_none());
    assert_eq!(s.owner_at(T0), ControlView::Idle);
}

#[test]
fn thread_owner_answer_agreeing_with_the_ledger_is_a_confirmation() {
    let s = Scenario::given(cr()).user_message(T0);
    let events = rules::observe(
        &s.ledger,
        &s.page,
        Observation::ThreadOwner {
            at: hours(1),
            owner: Some(bot()),
            asked_at_version: s.ledger.version,
        },
        hours(1),
    );
    assert_eq!(type_names(&events), ["OwnershipConfirmed"]);
    let s = s.record(events);
    assert_eq!(s.owner_at(hours(1)), owner(bot()), "nothing changes");
    assert_eq!(s.ledger.confirmed_at, Some(hours(1)));
    // Ten minutes on, a refusal resting on it is checked with Meta first.
    assert!(!rules::needs_confirmation(
        &s.ledger,
        hours(1).plus(Span::seconds(599))
    ));
    assert!(rules::needs_confirmation(
        &s.ledger,
        hours(1).plus(Span::seconds(600))
    ));
    // A legacy primary's idle thread: Meta names the primary; that agrees.
    let s = Scenario::given(hop()).user_message(T0);
    let events = rules::observe(
        &s.ledger,
        &s.page,
        Observation::ThreadOwner {
            at: hours(1),
            owner: Some(bot()),
            asked_at_version: s.ledger.version,
        },
        hours(1),
    );
    assert_eq!(type_names(&events), ["OwnershipConfirmed"]);
}

#[test]
fn a_late_observation_records_the_lapse_first() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    let s = s.user_message(hours(30));
    assert_eq!(
        type_names(&s.history[s.history.len() - 3..]),
        [
            "ThreadControlExpired",
            "MessagingEventReceived",
            "ThreadRouted"
        ]
    );
    assert_eq!(s.owner_at(hours(30)), owner(bot()));
}

#[test]
fn an_external_request_webhook_is_a_pending_request() {
    let s = Scenario::given(cr()).user_message(T0).handover(
        hours(1),
        bot(),
        HandoverNotice::Requested {
            by: inbox(),
            metadata: Some("agent wants in".into()),
        },
    );
    assert_eq!(s.ledger.pending_requests.len(), 1);
    assert_eq!(s.ledger.pending_requests[0].app, inbox());
    assert_eq!(s.owner_at(hours(1)), owner(bot()));
}

#[test]
fn a_copy_is_recorded_without_reopening_anything() {
    let s = Scenario::given(cr()).user_message(T0);
    let copy = Observation::Copy {
        at: T0,
        dedupe_key: format!("k-{}", T0.millis()),
        delivery: domain::events::DeliveryCopy {
            app: human(),
            channel: Channel::Standby,
        },
        event: message("m"),
        raw: serde_json::json!({}),
    };
    let events = rules::observe(&s.ledger, &s.page, copy, T0);
    assert_eq!(type_names(&events), ["MessagingEventCopyReceived"]);
}

#[test]
fn an_echo_sent_before_the_last_control_change_is_no_drift() {
    // The human app replies and releases in one call; the reply's echo
    // arrives after the release was recorded.
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human())
        .done(release(human()), hours(2));
    let late_echo = Observation::Item {
        at: hours(2),
        dedupe_key: "echo-late".into(),
        delivery: domain::events::DeliveryCopy {
            app: bot(),
            channel: Channel::Standby,
        },
        event: echo("m-reply", human()),
        raw: serde_json::json!({}),
    };
    let events = rules::observe(&s.ledger, &s.page, late_echo, hours(3));
    assert!(drift_of(&events).is_none(), "{events:#?}");
    let s = s.record(events);
    assert_eq!(s.owner_at(hours(3)), ControlView::Idle);
}

#[test]
fn cr_a_reaction_or_a_plugin_optin_opens_the_window_but_leaves_an_idle_thread_idle() {
    use domain::events::{InboundEvent, Optin};
    let reaction = InboundEvent::Reaction {
        mid: "m0".into(),
        action: "react".into(),
        reaction: Some("love".into()),
    };
    let optin = InboundEvent::Optin {
        optin: Optin::Plugin {
            reference: Some("landing".into()),
            user_ref: None,
        },
    };
    for event in [reaction, optin] {
        let s = Scenario::given(cr()).item(T0, bot(), Channel::Messaging, event.clone());
        assert_eq!(
            type_names(&s.history),
            ["MessagingEventReceived"],
            "{event:?} routes nothing"
        );
        assert_eq!(s.owner_at(T0), ControlView::Idle, "{event:?}");
        assert!(
            s.ledger.window.is_some_and(|w| w.closes_at > T0),
            "{event:?} opens the window"
        );
    }
}

// ---- Order: a fact never overrides newer evidence (issue 12). ----

fn stale_of(events: &[Event]) -> Option<&domain::events::StaleEvidenceIgnored> {
    events.iter().find_map(|e| match e {
        Event::StaleEvidenceIgnored(s) => Some(s),
        _ => None,
    })
}

#[test]
fn a_late_messaging_retry_does_not_undo_a_newer_pass() {
    // The bot passed to the human at 1 h; Meta retries the bot's copy of a
    // message sent at 0:30 only now.
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human())
        .item(
            hours(1).plus(Span::seconds(-1800)),
            bot(),
            Channel::Messaging,
            message("m-old"),
        );
    assert_eq!(
        s.owner_at(hours(2)),
        owner(human()),
        "the newer pass stands"
    );
    let stale = stale_of(&s.history).expect("kept as stale evidence");
    assert_eq!(stale.claimed, owner(bot()));
    assert!(drift_of(&s.history).is_none());
}

#[test]
fn an_old_pass_webhook_replayed_after_a_newer_pass_is_kept_not_applied() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human())
        .passed_to(hours(2), bot())
        // Meta retries the 1 h webhook (bot → human) at 3 h, on the human's endpoint.
        .handover(
            hours(1),
            human(),
            HandoverNotice::Passed {
                from: Some(bot()),
                to: human(),
                metadata: None,
            },
        );
    assert_eq!(s.owner_at(hours(3)), owner(bot()));
    assert!(stale_of(&s.history).is_some());
}

#[test]
fn a_thread_owner_answer_overtaken_by_a_take_is_kept_not_applied() {
    // Baton asks Meta who owns the thread while the human does; before the
    // answer is recorded the bot takes the thread through Baton (Meta
    // accepts). Meta's answer, "the human", describes the moment before.
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    let asked_at_version = s.ledger.version;
    let s = s.done(take(bot()), hours(2));
    assert_eq!(s.owner_at(hours(2)), owner(bot()));
    let answer = Observation::ThreadOwner {
        at: hours(2),
        owner: Some(human()),
        asked_at_version,
    };
    let events = rules::observe(&s.ledger, &s.page, answer.clone(), hours(2));
    let s = s.record(events);
    assert_eq!(s.owner_at(hours(2)), owner(bot()), "the take stands");
    let stale = stale_of(&s.history).expect("kept as older news");
    assert_eq!(stale.claimed, owner(human()));
    assert_eq!(stale.evidence, DriftEvidence::ThreadOwnerAnswer);

    // The same answer to a question asked after the take is Meta's word.
    let answer = Observation::ThreadOwner {
        at: hours(2),
        owner: Some(human()),
        asked_at_version: s.ledger.version,
    };
    let events = rules::observe(&s.ledger, &s.page, answer, hours(2));
    assert!(drift_of(&events).is_some());
    let s = s.record(events);
    assert_eq!(s.owner_at(hours(2)), owner(human()));
}

#[test]
fn a_thread_owner_answer_while_a_newer_call_is_unanswered_is_kept_not_applied() {
    // Asked, then the bot's take is accepted and forwarded; Meta's answer
    // to the question comes back before the take's.
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    let asked_at_version = s.ledger.version;
    let accepted = rules::decide(&s.ledger, &s.page, &take(bot()), hours(2)).unwrap();
    let s = s.record(accepted);
    assert!(!s.ledger.calls_in_flight.is_empty());
    let answer = Observation::ThreadOwner {
        at: hours(2),
        owner: None,
        asked_at_version,
    };
    let events = rules::observe(&s.ledger, &s.page, answer, hours(2));
    assert!(drift_of(&events).is_none());
    assert_eq!(stale_of(&events).expect("kept").claimed, ControlView::Idle);
}

#[test]
fn a_late_standby_copy_does_not_make_the_owner_unknown() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human())
        // The human's standby copy of a message from before the pass.
        .item(
            hours(1).plus(Span::seconds(-600)),
            human(),
            Channel::Standby,
            message("m-0"),
        );
    assert_eq!(s.owner_at(hours(1)), owner(human()));
}

#[test]
fn evidence_within_the_clock_skew_of_the_last_change_is_not_newer() {
    // Meta's clock 2 s ahead: the bot's copy timed 2 s after the pass is the same moment.
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human())
        .item(
            hours(1).plus(Span::seconds(2)),
            bot(),
            Channel::Messaging,
            message("m-skew"),
        );
    assert_eq!(s.owner_at(hours(1)), owner(human()));
    // Well after the skew, the same evidence counts (and is confirmed with Meta first).
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human())
        .item(hours(2), bot(), Channel::Messaging, message("m-late"));
    assert!(drift_of(&s.history).is_some());
}

#[test]
fn a_far_future_timestamp_is_kept_but_moves_nothing() {
    let s = Scenario::given(cr()).user_message(T0);
    let now = hours(1);
    for far in [
        Timestamp::from_millis(T0.millis() + 10 * 365 * 86_400_000),
        Timestamp::from_millis(i64::MAX),
    ] {
        let events = rules::observe(
            &s.ledger,
            &s.page,
            Observation::Item {
                at: far,
                dedupe_key: "m-future".into(),
                delivery: domain::events::DeliveryCopy {
                    app: human(),
                    channel: Channel::Messaging,
                },
                event: message("m-future"),
                raw: serde_json::json!({}),
            },
            now,
        );
        let [Event::MessagingEventReceived(e)] = events.as_slice() else {
            panic!("only the item is kept: {events:?}")
        };
        assert!(e.distrusted_time && e.window.is_none());
        let after = s.clone().record(events);
        assert_eq!(
            after.ledger.window, s.ledger.window,
            "the window did not move"
        );
        assert_eq!(
            rules::control_expiry(&after.ledger, &after.page),
            Some(hours(24)),
            "nor did expiry, and nothing overflowed"
        );
        assert_eq!(after.owner_at(now), owner(bot()), "nor ownership");
    }
}

#[test]
fn the_default_apps_standby_copy_on_an_idle_thread_reveals_a_silent_takeover() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1))
        // The Page Inbox took the idle thread without a webhook: the next
        // message reaches the bot (the default app) on standby.
        .item(hours(2), bot(), Channel::Standby, message("m-2"));
    assert_eq!(s.owner_at(hours(2)), ControlView::Unknown, "asked of Meta");
}

#[test]
fn the_legacy_primarys_standby_copy_reveals_a_silent_takeover_too() {
    let s = Scenario::given(hop())
        .user_message(T0)
        // The Page Inbox (a secondary) took the thread the primary holds by
        // default, without a webhook: the primary gets the user on standby.
        .item(hours(2), bot(), Channel::Standby, message("m-2"));
    assert_eq!(s.owner_at(hours(2)), ControlView::Unknown, "asked of Meta");
}

#[test]
fn the_routing_copy_arriving_after_another_apps_standby_copy_still_routes() {
    // Meta held the bot's messaging copy; the human's standby copy came first.
    let s = Scenario::given(cr())
        .item(T0, human(), Channel::Standby, message("m-1"))
        .copy(T0, bot(), Channel::Messaging, message("m-1"), T0);
    assert_eq!(
        s.owner_at(hours(1)),
        ControlView::Owner { app: bot() },
        "routed to the app Meta chose"
    );
}

#[test]
fn an_inbox_echo_within_the_skew_of_batons_release_is_kept_and_checked_with_meta() {
    // Baton's release at 1 h (its own clock); the Page Inbox's echo carries
    // Meta's 1 h too: before or after the release, only Meta can say.
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1))
        .item(hours(1), bot(), Channel::Standby, echo("m-9", inbox()));
    assert_eq!(s.owner_at(hours(1)), ControlView::Idle, "not applied");
    let stale = stale_of(&s.history).expect("kept, and Meta is asked");
    assert_eq!(stale.claimed, owner(inbox()));
    // Meta's clock 2 s behind: the same guess.
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1))
        .item(
            hours(1).plus(Span::seconds(-2)),
            bot(),
            Channel::Standby,
            echo("m-10", inbox()),
        );
    assert!(stale_of(&s.history).is_some());
    // An echo clearly older (a reply delivered late) says nothing.
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1))
        .item(
            hours(1).plus(Span::seconds(-60)),
            bot(),
            Channel::Standby,
            echo("m-8", inbox()),
        );
    assert!(stale_of(&s.history).is_none());
}

#[test]
fn a_message_timed_just_before_batons_release_is_checked_with_meta() {
    // Meta's clock 2 s behind Baton's: the user wrote after the release, but
    // Meta's time says 2 s before it. Only Meta can say who holds it now.
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1))
        .item(
            hours(1).plus(Span::seconds(-2)),
            bot(),
            Channel::Messaging,
            message("m-2"),
        );
    assert_eq!(s.owner_at(hours(1)), ControlView::Idle, "not applied");
    assert_eq!(
        stale_of(&s.history).expect("Meta is asked").claimed,
        owner(bot())
    );
    // Well before the release (a late delivery): nothing to ask.
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1))
        .item(
            hours(1).plus(Span::seconds(-60)),
            bot(),
            Channel::Messaging,
            message("m-3"),
        );
    assert!(stale_of(&s.history).is_none());
}

#[test]
fn a_late_copy_of_an_echo_recorded_before_a_takeover_changes_nothing() {
    // The bot's echo (first copy on its own endpoint), then the Page Inbox
    // takes the thread in the same second; the human's copy of that echo,
    // held by Meta, arrives last. The fact was recorded before the takeover.
    let s = Scenario::given(hop())
        .user_message(T0)
        .item(T0, bot(), Channel::Messaging, echo("m-1", bot()))
        .handover(
            T0,
            bot(),
            HandoverNotice::Taken {
                from: Some(bot()),
                by: inbox(),
                metadata: None,
            },
        )
        .copy(T0, human(), Channel::Standby, echo("m-1", bot()), hours(1));
    assert_eq!(s.owner_at(hours(1)), owner(inbox()));
    assert!(drift_of(&s.history[s.history.len() - 1..]).is_none());
}

#[test]
fn the_default_apps_standby_copy_just_before_batons_release_is_checked_with_meta() {
    // Meta's clock 2 s behind: the user wrote after the release (the Page
    // Inbox had taken the thread silently), Meta's time says 2 s before it.
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1))
        .item(
            hours(1).plus(Span::seconds(-2)),
            bot(),
            Channel::Standby,
            message("m-2"),
        );
    assert_eq!(
        stale_of(&s.history).expect("Meta is asked").claimed,
        ControlView::Unknown
    );
}
