//! Given / when / then for pass, take, request, release and extend in the
//! three routing modes, and for idle expiry. Each test is a row of docs/domain.md.

mod support;

use domain::events::{ControlRule, ControlView, GraphError, GraphOutcome};
use domain::rules;
use domain::{Control, Event, RejectionKind};
use support::*;

fn rule(events: &[Event]) -> ControlRule {
    match &events[0] {
        Event::ControlCallAccepted(a) => a.basis.rule,
        other => panic!("expected ControlCallAccepted, got {other:?}"),
    }
}

// ---- Pass. ----

#[test]
fn cr_owner_passes_to_the_inbox_and_the_inbox_passes_back() {
    let s = Scenario::given(cr()).user_message(T0);
    assert_eq!(s.owner_at(T0), owner(bot()));
    let s = s.done(pass(bot(), Some(inbox())), hours(1));
    let last = s.history.last().unwrap();
    match last {
        Event::ThreadControlPassed(p) => {
            assert_eq!(p.from, Some(bot()));
            assert_eq!(p.to, inbox());
        }
        other => panic!("expected ThreadControlPassed, got {other:?}"),
    }
    assert_eq!(s.owner_at(hours(2)), owner(inbox()));
    // The inbox is external: its pass back arrives as a webhook to the bot.
    let s = s.passed_to(hours(3), bot());
    assert_eq!(s.owner_at(hours(3)), owner(bot()));
}

#[test]
fn cr_pass_from_non_owner_refused_100_2534037() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    assert_refused(
        s.when(&pass(bot(), Some(other())), hours(2)),
        RejectionKind::NotControlOwner,
        100,
        Some(2_534_037),
    );
}

#[test]
fn cr_pass_without_target_goes_to_the_default_app() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human())
        .done(pass(human(), None), hours(2));
    assert_eq!(s.owner_at(hours(2)), owner(bot()));
}

#[test]
fn pass_to_an_unknown_app_or_to_itself_refused() {
    let s = Scenario::given(cr()).user_message(T0);
    assert_refused(
        s.when(&pass(bot(), Some(stranger())), hours(1)),
        RejectionKind::InvalidTarget,
        100,
        None,
    );
    assert_refused(
        s.when(&pass(bot(), Some(bot())), hours(1)),
        RejectionKind::InvalidTarget,
        100,
        None,
    );
}

#[test]
fn cr_default_app_passes_an_idle_thread_previous_owner_null() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1));
    let events = assert_accepted(s.when(&pass(bot(), Some(human())), hours(2)));
    assert_eq!(rule(&events), ControlRule::IdleHolderMayPass);
    let s = s.done(pass(bot(), Some(human())), hours(2));
    match s.history.last().unwrap() {
        Event::ThreadControlPassed(p) => {
            assert_eq!(p.from, None, "idle thread: previous owner is null")
        }
        other => panic!("{other:?}"),
    }
    assert_refused(
        Scenario::given(cr())
            .user_message(T0)
            .done(release(bot()), hours(1))
            .when(&pass(human(), Some(other())), hours(2)),
        RejectionKind::NotControlOwner,
        100,
        Some(2_534_037),
    );
}

#[test]
fn zc_any_app_may_pass_an_idle_thread_but_must_name_a_target() {
    let s = Scenario::given(zc()).user_message(T0);
    let events = assert_accepted(s.when(&pass(other(), Some(human())), hours(1)));
    assert_eq!(rule(&events), ControlRule::AnyAppMayPassIdleThread);
    assert_refused(
        s.when(&pass(other(), None), hours(1)),
        RejectionKind::InvalidTarget,
        100,
        None,
    );
    let s = s.done(pass(other(), Some(human())), hours(1));
    assert_refused(
        s.when(&pass(other(), Some(bot())), hours(2)),
        RejectionKind::NotControlOwner,
        100,
        Some(2_534_037),
    );
}

#[test]
fn hop_secondary_passing_without_target_goes_to_the_primary() {
    let s = Scenario::given(hop())
        .user_message(T0)
        .done(pass(bot(), Some(human())), hours(1));
    let s = s.done(pass(human(), None), hours(2));
    match s.history.last().unwrap() {
        Event::ThreadControlPassed(p) => assert_eq!(p.to, bot()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hop_primary_must_name_a_target() {
    let s = Scenario::given(hop()).user_message(T0);
    assert_refused(
        s.when(&pass(bot(), None), hours(1)),
        RejectionKind::InvalidTarget,
        100,
        None,
    );
    assert_accepted(s.when(&pass(bot(), Some(inbox())), hours(1)));
}

// ---- Take. ----

#[test]
fn cr_take_by_an_allowed_app() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    let events = assert_accepted(s.when(&take(bot()), hours(2)));
    assert_eq!(rule(&events), ControlRule::AppMayTakeControl);
    let s = s.done(take(bot()), hours(2));
    match s.history.last().unwrap() {
        Event::ThreadControlTaken(t) => {
            assert_eq!(t.from, Some(human()));
            assert_eq!(t.by, bot());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cr_take_refused_for_an_app_without_permission() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    assert_refused(
        s.when(&take(other()), hours(2)),
        RejectionKind::TakeNotAllowed,
        200,
        None,
    );
}

#[test]
fn cr_any_app_may_take_an_idle_thread() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1));
    let events = assert_accepted(s.when(&take(other()), hours(2)));
    assert_eq!(rule(&events), ControlRule::IdleThreadMayBeTaken);
}

#[test]
fn take_by_the_holder_succeeds_and_changes_nothing() {
    // Meta answers success to a take by the app that already holds the thread.
    for page in [cr(), hop()] {
        let s = Scenario::given(page).user_message(T0);
        let before = s.ledger.control.clone();
        let s = s.done(take(bot()), hours(1));
        assert_eq!(s.ledger.control, before);
        assert!(!type_names(&s.history).contains(&"ThreadControlTaken"));
    }
}

#[test]
fn zc_take_refused_with_27() {
    let s = Scenario::given(zc()).user_message(T0);
    for a in [bot(), human(), inbox()] {
        assert_refused(
            s.when(&take(a), hours(1)),
            RejectionKind::TakeNotSupported,
            27,
            None,
        );
    }
}

#[test]
fn hop_only_the_primary_may_take() {
    let s = Scenario::given(hop())
        .user_message(T0)
        .done(pass(bot(), Some(human())), hours(1));
    assert_eq!(
        rule(&assert_accepted(s.when(&take(bot()), hours(2)))),
        ControlRule::PrimaryMayTake
    );
    assert_refused(
        s.when(&take(inbox()), hours(2)),
        RejectionKind::TakeNotAllowed,
        200,
        None,
    );
}

// ---- Request. ----

#[test]
fn cr_request_goes_to_the_owner_and_a_pass_clears_it() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    let s = s.done(request(bot()), hours(2));
    match s.history.last().unwrap() {
        Event::ThreadControlRequested(r) => {
            assert_eq!(r.told, Some(human()));
            assert!(!r.granted);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.ledger.pending_requests.len(), 1);
    assert_eq!(
        s.owner_at(hours(2)),
        owner(human()),
        "a request alone moves nothing"
    );
    let s = s.done(pass(human(), Some(bot())), hours(3));
    assert!(s.ledger.pending_requests.is_empty());
}

#[test]
fn cr_request_by_the_holder_refused() {
    let s = Scenario::given(cr()).user_message(T0);
    assert_refused(
        s.when(&request(bot()), hours(1)),
        RejectionKind::AlreadyOwner,
        100,
        None,
    );
}

#[test]
fn zc_first_requester_of_an_idle_thread_gets_control() {
    let s = Scenario::given(zc())
        .user_message(T0)
        .done(request(human()), hours(1));
    assert_eq!(s.owner_at(hours(1)), owner(human()));
    let s = s.done(request(other()), hours(2));
    assert_eq!(
        s.owner_at(hours(2)),
        owner(human()),
        "the second requester only asks the owner"
    );
    assert_eq!(s.ledger.pending_requests[0].app, other());
}

#[test]
fn hop_secondary_request_goes_to_primary_primary_may_not_request() {
    let s = Scenario::given(hop()).user_message(T0);
    let s2 = s.clone().done(request(inbox()), hours(1));
    match s2.history.last().unwrap() {
        Event::ThreadControlRequested(r) => assert_eq!(r.told, Some(bot())),
        other => panic!("{other:?}"),
    }
    assert_refused(
        s.when(&request(bot()), hours(1)),
        RejectionKind::NotSupportedInMode,
        100,
        None,
    );
}

// ---- Release. ----

#[test]
fn cr_release_makes_the_thread_idle_and_the_default_app_answers() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human())
        .done(release(human()), hours(2));
    assert_eq!(s.ledger.control, Control::Idle);
    assert!(matches!(
        s.history.last().unwrap(),
        Event::ThreadControlReleased(_)
    ));
    assert_accepted(s.when(&reply(bot()), hours(3)));
}

#[test]
fn release_by_a_non_owner_refused() {
    for page in all_modes() {
        let s = Scenario::given(page)
            .user_message(T0)
            .passed_to(hours(1), human());
        assert_refused(
            s.when(&release(other()), hours(2)),
            RejectionKind::NotControlOwner,
            100,
            Some(2_534_037),
        );
    }
    let idle = Scenario::given(cr())
        .user_message(T0)
        .done(release(bot()), hours(1));
    assert_refused(
        idle.when(&release(bot()), hours(2)),
        RejectionKind::NotControlOwner,
        100,
        Some(2_534_037),
    );
}

#[test]
fn hop_primary_may_release_the_thread_it_holds_by_default() {
    // Legacy: the primary owns every thread no secondary holds, so it is the
    // current owner; the thread stays with it (idle) and no fact is recorded.
    let s = Scenario::given(hop()).user_message(T0);
    let events = assert_accepted(s.when(&release(bot()), hours(1)));
    assert_eq!(rule(&events), ControlRule::OwnerMayRelease);
    let s = s.done(release(bot()), hours(1));
    assert_eq!(s.owner_at(hours(1)), ControlView::Idle);
    assert_refused(
        s.when(&release(human()), hours(2)),
        RejectionKind::NotControlOwner,
        100,
        Some(2_534_037),
    );
}

#[test]
fn hop_release_by_secondary_returns_to_primary() {
    let s = Scenario::given(hop())
        .user_message(T0)
        .done(pass(bot(), Some(human())), hours(1))
        .done(release(human()), hours(2));
    assert_eq!(
        rules::answering_app(&s.owner_at(hours(2)), &s.page),
        Some(&bot())
    );
}

// ---- Extend and expiry. ----

#[test]
fn cr_extend_pushes_expiry_up_to_seven_days() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(T0, human());
    assert_eq!(rules::control_expiry(&s.ledger, &s.page), Some(hours(24)));
    let s = s.done(extend(human(), 3 * 86_400), hours(1));
    assert_eq!(rules::control_expiry(&s.ledger, &s.page), Some(hours(73)));
    assert_eq!(s.owner_at(hours(72)), owner(human()));
    assert_eq!(s.owner_at(hours(73)), ControlView::Idle);
}

#[test]
fn extend_duration_must_be_between_one_second_and_seven_days() {
    let s = Scenario::given(cr()).user_message(T0);
    assert_refused(
        s.when(&extend(bot(), 0), hours(1)),
        RejectionKind::InvalidDuration,
        100,
        None,
    );
    assert_refused(
        s.when(&extend(bot(), 7 * 86_400 + 1), hours(1)),
        RejectionKind::InvalidDuration,
        100,
        None,
    );
    assert_accepted(s.when(&extend(bot(), 7 * 86_400), hours(1)));
    // A duration that would wrap when converted is refused too.
    assert_refused(
        s.when(&extend(bot(), u64::MAX), hours(1)),
        RejectionKind::InvalidDuration,
        100,
        None,
    );
}

#[test]
fn extend_by_a_non_owner_refused_and_a_no_op_in_handover_v1() {
    let s = Scenario::given(cr()).user_message(T0);
    assert_refused(
        s.when(&extend(human(), 60), hours(1)),
        RejectionKind::NotControlOwner,
        100,
        Some(2_534_037),
    );
    // Legacy control never lapses: the holder may extend; nothing changes.
    let s = Scenario::given(hop())
        .user_message(T0)
        .done(pass(bot(), Some(human())), hours(1));
    let before = s.ledger.control.clone();
    let s = s.done(extend(human(), 60), hours(2));
    assert_eq!(s.ledger.control, before);
    assert_refused(
        s.when(&extend(other(), 60), hours(2)),
        RejectionKind::NotControlOwner,
        100,
        Some(2_534_037),
    );
    // The primary, holding a thread by default, may extend it too.
    let s = Scenario::given(hop()).user_message(T0);
    assert!(rules::decide(&s.ledger, &s.page, &extend(bot(), 60), hours(1)).is_ok());
}

#[test]
fn control_lapses_after_24h_without_user_activity() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human())
        .user_message(hours(10));
    assert!(
        rules::tick(&s.ledger, &s.page, hours(33)).is_none(),
        "user activity at 10 h keeps control until 34 h"
    );
    let expired = rules::tick(&s.ledger, &s.page, hours(34)).expect("lapsed");
    match &expired {
        Event::ThreadControlExpired(e) => {
            assert_eq!(e.owner, human());
            assert_eq!(e.expired_at, hours(34));
        }
        other => panic!("{other:?}"),
    }
    let s = s.record(vec![expired]);
    assert_eq!(s.ledger.control, Control::Idle);
    assert!(rules::tick(&s.ledger, &s.page, hours(100)).is_none());
}

#[test]
fn hop_control_never_lapses() {
    let s = Scenario::given(hop())
        .user_message(T0)
        .done(pass(bot(), Some(human())), hours(1));
    assert!(rules::tick(&s.ledger, &s.page, hours(24 * 30)).is_none());
    assert_eq!(s.owner_at(hours(24 * 30)), owner(human()));
}

// ---- Meta's answers and inline control. ----

#[test]
fn meta_refusing_what_the_ledger_allowed_is_drift() {
    let s = Scenario::given(cr()).user_message(T0);
    let cmd = pass(bot(), Some(human()));
    let accepted = assert_accepted(s.when(&cmd, hours(1)));
    let s = s.record(accepted);
    let refusal = GraphOutcome::Failed {
        error: GraphError {
            code: 100,
            subcode: Some(2_534_037),
            message: "(#100) calling app is not the thread owner".into(),
            fbtrace_id: Some("Ax1".into()),
            is_transient: false,
        },
    };
    let events = rules::settle_control(&s.ledger, &s.page, &cmd, &refusal, hours(1));
    assert_eq!(
        type_names(&events),
        ["ControlCallCompleted", "OwnershipDriftDetected"]
    );
    let s = s.record(events);
    assert_eq!(s.owner_at(hours(1)), ControlView::Unknown);
}

#[test]
fn an_unknown_outcome_changes_nothing() {
    let s = Scenario::given(cr()).user_message(T0);
    let cmd = release(bot());
    let events = rules::settle_control(
        &s.ledger,
        &s.page,
        &cmd,
        &GraphOutcome::Unknown {
            reason: "timeout".into(),
        },
        hours(1),
    );
    assert_eq!(type_names(&events), ["ControlCallCompleted"]);
}

#[test]
fn inline_release_on_a_send_updates_the_ledger_like_the_call() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    let mut m = send_msg(human(), Some(domain::MessagingType::Response), None);
    m.thread_control = Some(domain::InlineControl::Release);
    let s = s.done(domain::Command::SendMessage(m), hours(2));
    assert!(matches!(
        s.history.last().unwrap(),
        Event::ThreadControlReleased(_)
    ));
    assert_eq!(s.ledger.control, Control::Idle);
}

#[test]
fn inline_pass_on_a_send_follows_the_pass_rules() {
    let s = Scenario::given(cr())
        .user_message(T0)
        .passed_to(hours(1), human());
    let mut m = send_msg(human(), Some(domain::MessagingType::Response), None);
    m.thread_control = Some(domain::InlineControl::Pass { app_id: None });
    let s2 = s
        .clone()
        .done(domain::Command::SendMessage(m.clone()), hours(2));
    assert_eq!(s2.owner_at(hours(2)), owner(bot()));
    m.thread_control = Some(domain::InlineControl::Pass {
        app_id: Some(stranger()),
    });
    assert_refused(
        s.when(&domain::Command::SendMessage(m), hours(2)),
        RejectionKind::InvalidTarget,
        100,
        None,
    );
}

#[test]
fn refusals_are_recorded_with_their_reason() {
    let s = Scenario::given(zc()).user_message(T0);
    let cmd = take(bot());
    let rejection = s.when(&cmd, hours(1)).unwrap_err();
    let event = rules::refusal(&s.ledger, &cmd, &rejection, hours(1));
    match &event {
        Event::CommandRefused(r) => {
            assert_eq!(r.rejection.code, 27);
            assert!(r.rejection.meta_message().starts_with("(#27) "));
        }
        other => panic!("{other:?}"),
    }
    let before = s.ledger.clone();
    let s = s.record(vec![event]);
    assert_eq!(
        s.ledger.control, before.control,
        "a refusal changes no state"
    );
    assert_eq!(s.ledger.version, before.version + 1);
}
