//! Property tests over random sequences of user actions, handover webhooks,
//! commands, Meta answers and clock moves, in all three routing modes:
//! `apply` never panics; a thread never has two owners; folding everything at
//! once equals folding one event at a time (through the stored encoding);
//! no accepted send breaks the window, tag or token rules, checked against an
//! oracle written independently of `rules`. 256 cases each unless
//! `PROPTEST_CASES` says more.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use domain::events::HandoverNotice;
use domain::events::*;
use domain::rules::{self, Observation};
use domain::*;
use proptest::prelude::*;
use support::*;

const SPANS: &[i64] = &[
    0,
    1,
    60_000,
    3_600_000,
    23 * 3_600_000,
    24 * 3_600_000 - 1,
    24 * 3_600_000,
    6 * 86_400_000,
    7 * 86_400_000,
    400 * 86_400_000,
];

fn apps() -> Vec<AppId> {
    vec![bot(), human(), other(), inbox(), stranger()]
}

const TAGS: &[&str] = &[
    "HUMAN_AGENT",
    "ACCOUNT_UPDATE",
    "SHIPPING_UPDATE",
    "BOGUS",
    "NON_PROMOTIONAL_SUBSCRIPTION",
];

#[derive(Debug, Clone)]
enum Step {
    Advance(usize),
    AdvanceBy(i64),
    User {
        app: usize,
        standby: bool,
        kind: u8,
        n: u8,
    },
    Handover {
        kind: u8,
        a: usize,
        b: usize,
        prev_null: bool,
    },
    Cmd {
        kind: u8,
        app: usize,
        target: Option<usize>,
        extra: u16,
    },
    Settle {
        ok: bool,
        not_owner: bool,
    },
    Tick,
    ThreadOwner(Option<usize>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..SPANS.len()).prop_map(Step::Advance),
        1 => (0i64..(3 * 86_400_000)).prop_map(Step::AdvanceBy),
        4 => (0..5usize, any::<bool>(), 0u8..12, 0u8..3).prop_map(|(app, standby, kind, n)| Step::User { app, standby, kind, n }),
        1 => (0u8..3, 0..5usize, 0..5usize, any::<bool>()).prop_map(|(kind, a, b, prev_null)| Step::Handover { kind, a, b, prev_null }),
        5 => (0u8..6, 0..5usize, proptest::option::of(0..5usize), any::<u16>()).prop_map(|(kind, app, target, extra)| Step::Cmd { kind, app, target, extra }),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(ok, not_owner)| Step::Settle { ok, not_owner }),
        1 => Just(Step::Tick),
        1 => proptest::option::of(0..5usize).prop_map(Step::ThreadOwner),
    ]
}

fn page_for(mode: u8) -> Page {
    match mode % 3 {
        0 => cr(),
        1 => zc(),
        _ => hop(),
    }
}

fn inbound(kind: u8, n: u8, app: &AppId, now: Timestamp) -> InboundEvent {
    let mid = format!("m-{}-{kind}-{n}", now.millis());
    match kind {
        0 | 1 => message(&mid),
        2 => ad_message(&mid),
        3 => InboundEvent::Postback {
            mid: None,
            title: None,
            payload: Some("P".into()),
            referral: None,
        },
        4 => InboundEvent::Reaction {
            mid,
            action: "react".into(),
            reaction: None,
        },
        5 => InboundEvent::Read {
            watermark: now.millis(),
        },
        6 => InboundEvent::Delivery {
            watermark: now.millis(),
            mids: vec![],
        },
        7 => echo(&mid, app.clone()),
        8 => otn_optin(&format!("tok-{n}")),
        9 => InboundEvent::AccountLinking {
            status: "linked".into(),
            authorization_code: None,
        },
        10 => InboundEvent::QuickReply {
            mid,
            text: None,
            payload: "Q".into(),
        },
        _ => InboundEvent::Unknown {
            key: Some("game_play".into()),
        },
    }
}

fn command(kind: u8, app: &AppId, target: Option<AppId>, extra: u16) -> Command {
    let call_id = id();
    match kind {
        0 => Command::PassThreadControl {
            call_id,
            app: app.clone(),
            target,
            metadata: None,
        },
        1 => Command::TakeThreadControl {
            call_id,
            app: app.clone(),
            metadata: None,
        },
        2 => Command::RequestThreadControl {
            call_id,
            app: app.clone(),
            metadata: None,
        },
        3 => Command::ReleaseThreadControl {
            call_id,
            app: app.clone(),
            metadata: None,
        },
        4 => Command::ExtendThreadControl {
            call_id,
            app: app.clone(),
            duration_secs: u64::from(extra) * 20,
        },
        _ => {
            let messaging_type = match extra % 5 {
                0 => None,
                1 => Some(MessagingType::Update),
                2 | 3 => Some(MessagingType::MessageTag),
                _ => Some(MessagingType::Response),
            };
            let tag = (messaging_type == Some(MessagingType::MessageTag) || extra % 41 == 0)
                .then(|| TAGS[(extra as usize / 5) % TAGS.len()].to_owned());
            let recipient = if extra % 7 == 0 {
                Recipient::OneTimeToken(format!("tok-{}", extra % 3))
            } else {
                Recipient::Psid(thread().psid)
            };
            let content = if extra % 11 == 0 {
                SendContent::SenderAction {
                    action: SenderAction::MarkSeen,
                }
            } else {
                SendContent::Message { metadata: None }
            };
            let thread_control = match extra % 13 {
                0 => Some(InlineControl::Release),
                1 => Some(InlineControl::Pass { app_id: target }),
                _ => None,
            };
            Command::SendMessage(SendMessage {
                send_id: call_id,
                app: app.clone(),
                recipient,
                messaging_type,
                tag,
                content,
                thread_control,
                payload: serde_json::Value::Null,
                idempotency_key: None,
                graph_version: None,
                request_digest: None,
            })
        }
    }
}

/// Runs the steps through the real rules, checking the step invariants, and
/// returns the page and the whole history.
fn run(mode: u8, early: bool, steps: &[Step]) -> Result<(Page, Vec<Event>), TestCaseError> {
    let mut page = page_for(mode);
    let mut ledger = ThreadLedger::new(thread());
    let mut history: Vec<Event> = Vec::new();
    let mut now = if early {
        domain::policy::RETIRED_2026.plus(Span::days(-10))
    } else {
        T0
    };
    let mut last_accepted: Option<Command> = None;
    let apps = apps();
    let record = |events: Vec<Event>,
                  ledger: &mut ThreadLedger,
                  page: &mut Page,
                  history: &mut Vec<Event>| {
        for e in &events {
            ledger.apply(e);
            page.apply(e);
        }
        history.extend(events);
    };
    for step in steps {
        let events = match step {
            Step::Advance(i) => {
                now = now.plus(Span(SPANS[*i]));
                Vec::new()
            }
            Step::AdvanceBy(ms) => {
                now = now.plus(Span(*ms));
                Vec::new()
            }
            Step::User {
                app,
                standby,
                kind,
                n,
            } => {
                let app = &apps[*app];
                let obs = Observation::Item {
                    at: now,
                    dedupe_key: format!("k-{}-{kind}-{n}", now.millis()),
                    delivery: DeliveryCopy {
                        app: app.clone(),
                        channel: if *standby {
                            Channel::Standby
                        } else {
                            Channel::Messaging
                        },
                    },
                    event: inbound(*kind, *n, app, now),
                    raw: serde_json::Value::Null,
                };
                rules::observe(&ledger, &page, obs, now)
            }
            Step::Handover {
                kind,
                a,
                b,
                prev_null,
            } => {
                let (a, b) = (apps[*a].clone(), apps[*b].clone());
                let from = (!prev_null).then(|| a.clone());
                let notice = match kind {
                    0 => HandoverNotice::Passed {
                        from,
                        to: b.clone(),
                        metadata: None,
                    },
                    1 => HandoverNotice::Taken {
                        from,
                        by: b.clone(),
                        metadata: None,
                    },
                    _ => HandoverNotice::Requested {
                        by: b.clone(),
                        metadata: None,
                    },
                };
                let obs = Observation::Item {
                    at: now,
                    dedupe_key: format!("h-{}-{kind}-{}", now.millis(), history.len()),
                    delivery: DeliveryCopy {
                        app: a,
                        channel: Channel::Messaging,
                    },
                    event: InboundEvent::Handover { notice },
                    raw: serde_json::Value::Null,
                };
                rules::observe(&ledger, &page, obs, now)
            }
            Step::Cmd {
                kind,
                app,
                target,
                extra,
            } => {
                let cmd = command(*kind, &apps[*app], target.map(|t| apps[t].clone()), *extra);
                match rules::decide(&ledger, &page, &cmd, now) {
                    Ok(events) => {
                        last_accepted = Some(cmd);
                        events
                    }
                    Err(rejection) => {
                        prop_assert!(!rejection.reason.is_empty());
                        vec![rules::refusal(&ledger, &cmd, &rejection, now)]
                    }
                }
            }
            Step::Settle { ok, not_owner } => match last_accepted.take() {
                None => Vec::new(),
                Some(cmd) => {
                    let error = GraphError {
                        code: if *not_owner { 10 } else { 2 },
                        subcode: not_owner.then_some(2_018_300),
                        message: "x".into(),
                        fbtrace_id: None,
                        is_transient: !not_owner,
                    };
                    match &cmd {
                        Command::SendMessage(send) => {
                            let outcome = if *ok {
                                SendOutcome::Sent {
                                    message_id: "m".into(),
                                    recipient_id: None,
                                }
                            } else {
                                SendOutcome::Failed { error }
                            };
                            rules::settle_send(&ledger, &page, send, &outcome, now)
                        }
                        control => {
                            let outcome = if *ok {
                                GraphOutcome::Succeeded
                            } else {
                                GraphOutcome::Failed { error }
                            };
                            rules::settle_control(&ledger, &page, control, &outcome, now)
                        }
                    }
                }
            },
            Step::Tick => rules::tick(&ledger, &page, now).into_iter().collect(),
            Step::ThreadOwner(owner) => rules::observe(
                &ledger,
                &page,
                Observation::ThreadOwner {
                    at: now,
                    owner: owner.map(|o| apps[o].clone()),
                    asked_at_version: ledger.version,
                },
                now,
            ),
        };
        record(events, &mut ledger, &mut page, &mut history);
        check_single_owner(&ledger, &page, now)?;
    }
    Ok((page, history))
}

/// Outside zero-config, at most one app may write to the thread at any
/// instant, and it is the app the ledger says answers it.
fn check_single_owner(
    ledger: &ThreadLedger,
    page: &Page,
    now: Timestamp,
) -> Result<(), TestCaseError> {
    if matches!(page.mode, RoutingMode::ZeroConfig) {
        return Ok(());
    }
    let view = rules::control_at(ledger, page, now);
    if view == ControlView::Unknown {
        return Ok(());
    }
    let may_write: Vec<AppId> = apps()
        .into_iter()
        .filter(|a| {
            let cmd = reply(a.clone());
            match rules::decide(ledger, page, &cmd, now) {
                Ok(_) => true,
                // A thread nobody wrote to has no writer at all.
                Err(r) => !matches!(
                    r.kind,
                    RejectionKind::NotThreadOwner
                        | RejectionKind::AppNotOnPage
                        | RejectionKind::UnknownRecipient
                ),
            }
        })
        .collect();
    prop_assert!(
        may_write.len() <= 1,
        "two apps may write at once: {may_write:?} ({view:?})"
    );
    if let Some(a) = may_write.first() {
        prop_assert_eq!(Some(a), rules::answering_app(&view, page));
    }
    Ok(())
}

fn config() -> ProptestConfig {
    // At least 256 cases; PROPTEST_CASES may ask for more (the long form).
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: default.cases.max(256),
        ..default
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_thread_never_has_two_owners(mode in 0u8..3, early in any::<bool>(), steps in proptest::collection::vec(step(), 1..60)) {
        run(mode, early, &steps)?;
    }

    #[test]
    fn folding_at_once_equals_folding_one_by_one_through_the_encoding(mode in 0u8..3, steps in proptest::collection::vec(step(), 1..60)) {
        let (_, history) = run(mode, false, &steps)?;
        let all_at_once = ThreadLedger::from_events(thread(), &history);
        let mut one_by_one = ThreadLedger::new(thread());
        for event in &history {
            let enc = event.encode();
            let decoded = Event::decode(enc.type_name, enc.schema_version, &enc.payload).unwrap();
            prop_assert_eq!(&decoded, event);
            // Persist and reload the ledger between events, as a projection snapshot would.
            let snapshot = serde_json::to_vec(&one_by_one).unwrap();
            one_by_one = serde_json::from_slice(&snapshot).unwrap();
            one_by_one.apply(&decoded);
        }
        prop_assert_eq!(all_at_once, one_by_one);
    }

    #[test]
    fn no_accepted_send_breaks_the_window_tag_or_token_rules(mode in 0u8..3, early in any::<bool>(), steps in proptest::collection::vec(step(), 1..80)) {
        let (page, history) = run(mode, early, &steps)?;
        check_sends_against_oracle(&page, &history)?;
    }

    #[test]
    fn apply_never_panics_on_arbitrary_events(events in proptest::collection::vec(arbitrary_event(), 0..40)) {
        let mut ledger = ThreadLedger::new(thread());
        let mut page = cr();
        for e in &events {
            ledger.apply(e);
            page.apply(e);
            // And the rules accept whatever state that left.
            let _ = rules::decide(&ledger, &page, &reply(bot()), hours(1));
            let _ = rules::tick(&ledger, &page, hours(48));
        }
        prop_assert_eq!(ledger.version, events.iter().filter(|e| e.thread() == Some(&thread())).count() as u64);
    }
}

/// An independent reading of Meta's policy: which actions open the window, for
/// how long, which tags are in force, how tokens are spent.
fn check_sends_against_oracle(page: &Page, history: &[Event]) -> Result<(), TestCaseError> {
    let mut window_end: Option<Timestamp> = None;
    let mut last_action: Option<Timestamp> = None;
    let mut issued: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut spent: BTreeSet<String> = BTreeSet::new();
    let retired_2026 = [
        "ACCOUNT_UPDATE",
        "CONFIRMED_EVENT_UPDATE",
        "POST_PURCHASE_UPDATE",
    ];
    for event in history {
        match event {
            Event::MessagingEventReceived(e) => {
                let length = match &e.event {
                    InboundEvent::Message {
                        referral: Some(r), ..
                    } if r.source.as_deref() == Some("ADS") => Some(Span::days(7)),
                    InboundEvent::Message { .. }
                    | InboundEvent::QuickReply { .. }
                    | InboundEvent::Postback { .. }
                    | InboundEvent::Reaction { .. }
                    | InboundEvent::Referral { .. }
                    | InboundEvent::Optin {
                        optin: Optin::Plugin { .. },
                    } => Some(Span::hours(24)),
                    _ => None,
                };
                if let Some(len) = length {
                    let end = e.at.plus(len);
                    window_end = Some(window_end.map_or(end, |w| w.max(end)));
                    last_action = Some(last_action.map_or(e.at, |l| l.max(e.at)));
                }
                if let InboundEvent::Optin {
                    optin: Optin::OneTimeNotification { token, .. },
                } = &e.event
                {
                    issued.entry(token.clone()).or_insert(e.at);
                }
            }
            Event::SendAccepted(a) => {
                let send = &a.send;
                let now = a.at;
                match (&send.recipient, send.tag.as_deref()) {
                    (Recipient::OneTimeToken(token), _) => {
                        let at = issued.get(token);
                        prop_assert!(at.is_some(), "token {token} was never issued");
                        prop_assert!(
                            now < at.unwrap().plus(Span::days(365)),
                            "token {token} used after a year"
                        );
                        prop_assert!(!spent.contains(token), "token {token} used twice");
                    }
                    (_, Some("HUMAN_AGENT")) => {
                        prop_assert_eq!(page.app(&send.app).map(|p| p.kind), Some(AppKind::Human));
                        prop_assert!(
                            last_action.is_some_and(|l| now < l.plus(Span::days(7))),
                            "HUMAN_AGENT past 7 days"
                        );
                    }
                    (_, Some(tag)) => {
                        prop_assert!(
                            retired_2026.contains(&tag),
                            "tag {tag} is not usable at all"
                        );
                        prop_assert!(
                            now < domain::policy::RETIRED_2026,
                            "tag {tag} used after its retirement"
                        );
                        prop_assert!(last_action.is_some());
                    }
                    (_, None) => {
                        prop_assert!(
                            window_end.is_some_and(|w| now < w),
                            "send at {now} outside the window (ends {window_end:?})"
                        );
                    }
                }
            }
            Event::OneTimeTokenReleased(r) => {
                // Meta refused that send for certain: the token is good again.
                spent.remove(&r.token);
            }
            Event::OneTimeTokenConsumed(c) => {
                prop_assert!(
                    spent.insert(c.token.clone()),
                    "token {} consumed twice",
                    c.token
                );
            }
            _ => {}
        }
    }
    Ok(())
}

fn arbitrary_event() -> impl Strategy<Value = Event> {
    let app = (0..5usize).prop_map(|i| apps()[i].clone());
    let t = (0i64..(30 * 86_400_000)).prop_map(|ms| T0.plus(Span(ms)));
    let key = prop_oneof![
        Just(thread()),
        Just(ThreadKey::new(
            page_id(),
            Psid::parse("someone-else").unwrap()
        ))
    ];
    (
        0u8..10,
        key,
        app.clone(),
        proptest::option::of(app),
        t,
        any::<u64>(),
    )
        .prop_map(|(kind, thread, a, b, at, n)| match kind {
            0 => ThreadControlPassed {
                thread,
                at,
                from: b,
                to: a,
                metadata: None,
                origin: FactOrigin::Webhook { app: bot() },
            }
            .into(),
            1 => ThreadControlTaken {
                thread,
                at,
                from: b,
                by: a,
                metadata: None,
                origin: FactOrigin::Webhook { app: bot() },
            }
            .into(),
            2 => ThreadControlReleased {
                thread,
                at,
                by: a,
                metadata: None,
                origin: FactOrigin::Webhook { app: bot() },
            }
            .into(),
            3 => ThreadControlExpired {
                thread,
                at,
                owner: a,
                expired_at: at,
            }
            .into(),
            4 => ThreadControlRequested {
                thread,
                at,
                by: a,
                told: b,
                metadata: None,
                granted: n % 2 == 0,
                origin: FactOrigin::Webhook { app: bot() },
            }
            .into(),
            5 => ThreadControlExtended {
                thread,
                at,
                by: a,
                duration_secs: n % 1_000_000,
                until: at.plus(Span((n % 1_000_000) as i64)),
                origin: FactOrigin::Webhook { app: bot() },
            }
            .into(),
            6 => OwnershipDriftDetected {
                thread,
                at,
                ledger: ControlView::Idle,
                observed: match n % 3 {
                    0 => ControlView::Idle,
                    1 => ControlView::Unknown,
                    _ => ControlView::Owner { app: a },
                },
                evidence: DriftEvidence::ThreadOwnerAnswer,
            }
            .into(),
            7 => OneTimeTokenIssued {
                thread,
                at,
                token: format!("tok-{}", n % 3),
                payload: None,
                expires_at: at.plus(Span::days(365)),
            }
            .into(),
            8 => OneTimeTokenConsumed {
                thread,
                at,
                token: format!("tok-{}", n % 4),
                send_id: id(),
            }
            .into(),
            _ => MessagingEventReceived {
                thread,
                at,
                dedupe_key: n.to_string(),
                delivery: DeliveryCopy {
                    app: a,
                    channel: Channel::Messaging,
                },
                event: message("m"),
                window: Some(WindowGrant {
                    opened_at: at,
                    closes_at: at.plus(Span((n % 700_000_000) as i64)),
                    reason: WindowReason::UserAction,
                }),
                raw: serde_json::Value::Null,
                distrusted_time: false,
            }
            .into(),
        })
}
