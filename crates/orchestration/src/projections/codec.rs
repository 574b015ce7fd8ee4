//! The compact encoding of the projections' three big collections in a
//! snapshot: the threads, the dedupe index and the retention queue, which
//! hold an entry per person or per item (millions), where JSON and the
//! domain types' serde (internally tagged enums) cost more to read back
//! than folding the log did. Big-endian integers; a string is a u32
//! length and its bytes; an optional time is a byte 0, or 1 and the time.
//!
//! A thread's rare parts (pending requests, tokens, calls in flight) are a
//! JSON blob, empty for most threads. Every struct is taken apart with all
//! its fields named, so a field added to the ledger does not compile here
//! until it is encoded.

use std::collections::BTreeMap;

use event_log::sharded::ShardedMap;

use domain::events::{Channel, WindowGrant, WindowReason};
use domain::ledger::{CallInFlight, PendingRequest, TokenState};
use domain::{AppId, CommandId, Control, PageId, Psid, ThreadKey, ThreadLedger, Timestamp};
use serde::{Deserialize, Serialize};

use super::{Forget, ItemCopy, TimeIndex, Tracked};

/// Bytes being written.
#[derive(Debug, Default)]
pub(super) struct Out(pub(super) Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub(super) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn time(&mut self, t: Timestamp) {
        self.0.extend_from_slice(&t.millis().to_be_bytes());
    }

    fn opt_time(&mut self, t: Option<Timestamp>) {
        match t {
            None => self.u8(0),
            Some(t) => {
                self.u8(1);
                self.time(t);
            }
        }
    }

    fn str(&mut self, s: &str) {
        self.0
            .extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A section: its length (u64), then its bytes.
    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

/// Bytes being read; every read is `None` past the end.
#[derive(Debug)]
pub(super) struct In<'a>(pub(super) &'a [u8]);

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_be_bytes)
    }

    fn time(&mut self) -> Option<Timestamp> {
        self.take(8)?
            .try_into()
            .ok()
            .map(|b| Timestamp::from_millis(i64::from_be_bytes(b)))
    }

    fn opt_time(&mut self) -> Option<Option<Timestamp>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.time().map(Some),
            _ => None,
        }
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.u32()?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    pub(super) fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }

    /// A count of entries, each at least `min` bytes: bounded by what is
    /// left, so a corrupt count cannot reserve memory it does not hold.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n <= self.0.len() / min.max(1)).then_some(n)
    }
}

/// A thread's rare parts, as written.
#[derive(Serialize)]
struct RareOut<'a> {
    pending_requests: &'a [PendingRequest],
    tokens: &'a [TokenState],
    calls_in_flight: &'a [CallInFlight],
}

/// A thread's rare parts, as read.
#[derive(Deserialize)]
struct RareIn {
    pending_requests: Vec<PendingRequest>,
    tokens: Vec<TokenState>,
    calls_in_flight: Vec<CallInFlight>,
}

/// Writes a thread without the person's content it holds (pending
/// requests' metadata, tokens' payloads). Whether there was any to leave out.
pub(super) fn put_tracked(out: &mut Out, tracked: &Tracked) -> Result<bool, serde_json::Error> {
    let stripped = tracked.ledger.holds_content();
    let bare;
    let tracked = if stripped {
        let mut copy = tracked.clone();
        copy.ledger.forget_content();
        bare = copy;
        &bare
    } else {
        tracked
    };
    let Tracked {
        ledger,
        expiry,
        confirmation,
    } = tracked;
    let ThreadLedger {
        key,
        control,
        pending_requests,
        last_user_action,
        window,
        ad_click_at,
        tokens,
        control_changed_at,
        control_changed_on_meta_clock,
        control_changed_version,
        erased_at,
        confirmed_at,
        calls_in_flight,
        version,
    } = ledger;
    out.str(key.page.as_str());
    out.str(key.psid.as_str());
    match control {
        Control::Idle => out.u8(0),
        Control::Active {
            owner,
            since,
            extended_until,
        } => {
            out.u8(1);
            out.str(owner.as_str());
            out.time(*since);
            out.opt_time(*extended_until);
        }
        Control::Unknown { since } => {
            out.u8(2);
            out.time(*since);
        }
    }
    out.opt_time(*last_user_action);
    match window {
        None => out.u8(0),
        Some(WindowGrant {
            opened_at,
            closes_at,
            reason,
        }) => {
            out.u8(match reason {
                WindowReason::UserAction => 1,
                WindowReason::ClickToMessengerAd => 2,
            });
            out.time(*opened_at);
            out.time(*closes_at);
        }
    }
    out.opt_time(*ad_click_at);
    out.opt_time(*control_changed_at);
    out.u8(u8::from(*control_changed_on_meta_clock));
    out.u64(*control_changed_version);
    out.opt_time(*erased_at);
    out.opt_time(*confirmed_at);
    out.u64(*version);
    out.opt_time(*expiry);
    out.opt_time(*confirmation);
    if pending_requests.is_empty() && tokens.is_empty() && calls_in_flight.is_empty() {
        out.str("");
    } else {
        let rare = RareOut {
            pending_requests,
            tokens,
            calls_in_flight,
        };
        out.str(&serde_json::to_string(&rare)?);
    }
    Ok(stripped)
}

/// The last id of a kind a decoder read, handed out again while the next
/// one is the same: a snapshot's threads share a few pages and owners, and
/// this spares each of them a lookup in the process's table of kept ids
/// (a lock and a hash, which two decoders would contend on).
struct Last<T>(Option<T>);

impl<T: Clone> Last<T> {
    fn id(
        &mut self,
        text: &str,
        as_str: fn(&T) -> &str,
        parse: fn(&str) -> Result<T, domain::IdError>,
    ) -> Option<T> {
        match &self.0 {
            Some(last) if as_str(last) == text => Some(last.clone()),
            _ => {
                let id = parse(text).ok()?;
                self.0 = Some(id.clone());
                Some(id)
            }
        }
    }
}

/// The ids a decoder of threads has just read.
struct LastIds {
    page: Last<PageId>,
    owner: Last<AppId>,
}

fn get_tracked(input: &mut In<'_>, last: &mut LastIds) -> Option<Box<Tracked>> {
    let key = ThreadKey::new(
        last.page
            .id(input.str()?, PageId::as_str, PageId::parse_str)?,
        Psid::parse_str(input.str()?).ok()?,
    );
    let control = match input.u8()? {
        0 => Control::Idle,
        1 => Control::Active {
            owner: last
                .owner
                .id(input.str()?, AppId::as_str, AppId::parse_str)?,
            since: input.time()?,
            extended_until: input.opt_time()?,
        },
        2 => Control::Unknown {
            since: input.time()?,
        },
        _ => return None,
    };
    let last_user_action = input.opt_time()?;
    let window = match input.u8()? {
        0 => None,
        reason @ (1 | 2) => Some(WindowGrant {
            opened_at: input.time()?,
            closes_at: input.time()?,
            reason: if reason == 1 {
                WindowReason::UserAction
            } else {
                WindowReason::ClickToMessengerAd
            },
        }),
        _ => return None,
    };
    let ad_click_at = input.opt_time()?;
    let control_changed_at = input.opt_time()?;
    let control_changed_on_meta_clock = match input.u8()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let control_changed_version = input.u64()?;
    let erased_at = input.opt_time()?;
    let confirmed_at = input.opt_time()?;
    let version = input.u64()?;
    let expiry = input.opt_time()?;
    let confirmation = input.opt_time()?;
    let rare = match input.str()? {
        "" => RareIn {
            pending_requests: Vec::new(),
            tokens: Vec::new(),
            calls_in_flight: Vec::new(),
        },
        json => serde_json::from_str(json).ok()?,
    };
    Some(Box::new(Tracked {
        ledger: ThreadLedger {
            key,
            control,
            pending_requests: rare.pending_requests,
            last_user_action,
            window,
            ad_click_at,
            tokens: rare.tokens,
            control_changed_at,
            control_changed_on_meta_clock,
            control_changed_version,
            erased_at,
            confirmed_at,
            calls_in_flight: rare.calls_in_flight,
            version,
        },
        expiry,
        confirmation,
    }))
}

/// The threads, keyed by their ledger's own key, and the timers' indexes
/// rebuilt from the times each was filed under.
pub(super) fn get_threads(
    section: &[u8],
) -> Option<(ShardedMap<ThreadKey, Box<Tracked>>, TimeIndex, TimeIndex)> {
    let mut input = In(section);
    let n = input.count(20)?;
    let mut threads = ShardedMap::with_capacity(n);
    // The timers' indexes are built whole at the end (sorted, then built
    // bottom-up), not one insertion at a time.
    let mut expiries = Vec::new();
    let mut confirmations = Vec::new();
    let mut last = LastIds {
        page: Last(None),
        owner: Last(None),
    };
    for _ in 0..n {
        let tracked = get_tracked(&mut input, &mut last)?;
        let key = tracked.ledger.key.clone();
        if let Some(at) = tracked.expiry {
            expiries.push((at, key.clone()));
        }
        if let Some(at) = tracked.confirmation {
            confirmations.push((at, key.clone()));
        }
        if threads.insert(key, tracked).is_some() {
            return None;
        }
    }
    let index = |entries: Vec<_>| TimeIndex {
        order: entries.into_iter().collect(),
    };
    input
        .0
        .is_empty()
        .then(|| (threads, index(expiries), index(confirmations)))
}

fn channel_byte(channel: Channel) -> u8 {
    match channel {
        Channel::Messaging => 0,
        Channel::Standby => 1,
    }
}

/// Writes one dedupe entry: the item's digest and its copies.
pub(super) fn put_copies(out: &mut Out, digest: u64, copies: &[ItemCopy]) {
    out.u64(digest);
    out.u64(copies.len() as u64);
    for (app, channel) in copies {
        out.str(app.as_str());
        out.u8(channel_byte(*channel));
    }
}

pub(super) fn get_seen(section: &[u8]) -> Option<ShardedMap<u64, Box<[ItemCopy]>>> {
    let mut input = In(section);
    let n = input.count(16)?;
    let mut seen = ShardedMap::with_capacity(n);
    let mut last = Last(None);
    for _ in 0..n {
        let digest = input.u64()?;
        let copies = input.count(5)?;
        let mut list = Vec::with_capacity(copies);
        for _ in 0..copies {
            let app = last.id(input.str()?, AppId::as_str, AppId::parse_str)?;
            let channel = match input.u8()? {
                0 => Channel::Messaging,
                1 => Channel::Standby,
                _ => return None,
            };
            list.push((app, channel));
        }
        seen.insert(digest, list.into_boxed_slice());
    }
    input.0.is_empty().then_some(seen)
}

/// Writes one entry of the retention queue.
pub(super) fn put_forget(out: &mut Out, (at, seq): (Timestamp, u64), what: &Forget) {
    out.time(at);
    out.u64(seq);
    match what {
        Forget::Seen(digest) => {
            out.u8(0);
            out.u64(*digest);
        }
        Forget::Key(key) => {
            out.u8(1);
            out.str(key.0.as_str());
            out.str(&key.1);
        }
        Forget::Send(id) => {
            out.u8(2);
            out.str(id.as_str());
        }
        Forget::Reply(key) => {
            out.u8(3);
            out.str(key.0.as_str());
            out.str(&key.1);
        }
    }
}

pub(super) fn get_forget(section: &[u8]) -> Option<BTreeMap<(Timestamp, u64), Forget>> {
    let mut input = In(section);
    let n = input.count(17)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let key = (input.time()?, input.u64()?);
        let what = match input.u8()? {
            0 => Forget::Seen(input.u64()?),
            1 => Forget::Key(Box::new((
                AppId::parse_str(input.str()?).ok()?,
                input.str()?.to_owned(),
            ))),
            2 => Forget::Send(CommandId::parse_str(input.str()?).ok()?),
            3 => Forget::Reply(Box::new((
                PageId::parse_str(input.str()?).ok()?,
                input.str()?.to_owned(),
            ))),
            _ => return None,
        };
        entries.push((key, what));
    }
    input.0.is_empty().then(|| entries.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::ledger::{Hands, TokenUse};

    fn key(psid: &str) -> ThreadKey {
        ThreadKey::new(
            PageId::parse("5550001").unwrap(),
            Psid::parse(psid).unwrap(),
        )
    }

    /// A thread with every field set, and one with none.
    fn threads() -> Vec<Tracked> {
        let t = Timestamp::from_millis;
        let app = AppId::parse("1001").unwrap();
        let full = Tracked {
            ledger: ThreadLedger {
                key: key("full"),
                control: Control::Active {
                    owner: app.clone(),
                    since: t(1),
                    extended_until: Some(t(2)),
                },
                pending_requests: vec![PendingRequest {
                    app: app.clone(),
                    at: t(3),
                    metadata: None,
                }],
                last_user_action: Some(t(4)),
                window: Some(WindowGrant {
                    opened_at: t(5),
                    closes_at: t(6),
                    reason: WindowReason::ClickToMessengerAd,
                }),
                ad_click_at: Some(t(7)),
                tokens: vec![TokenState {
                    token: "otn".into(),
                    payload: None,
                    issued_at: t(8),
                    expires_at: t(9),
                    consumed: Some(TokenUse {
                        at: t(10),
                        send_id: CommandId::parse("s1").unwrap(),
                    }),
                }],
                control_changed_at: Some(t(11)),
                control_changed_on_meta_clock: true,
                control_changed_version: 12,
                erased_at: Some(t(13)),
                confirmed_at: Some(t(14)),
                calls_in_flight: vec![CallInFlight {
                    call_id: CommandId::parse("c1").unwrap(),
                    by: app,
                    hands: Hands::Take,
                    accepted_at: t(15),
                    accepted_version: 16,
                    left_at: Some(t(16)),
                }],
                version: 17,
            },
            expiry: Some(t(18)),
            confirmation: Some(t(-19)),
        };
        let mut unknown = Tracked {
            ledger: ThreadLedger::new(key("unknown")),
            expiry: None,
            confirmation: None,
        };
        unknown.ledger.control = Control::Unknown { since: t(20) };
        let idle = Tracked {
            ledger: ThreadLedger::new(key("idle")),
            expiry: None,
            confirmation: None,
        };
        vec![full, unknown, idle]
    }

    #[test]
    fn threads_read_back_as_written() {
        let mut out = Out::default();
        out.u64(3);
        for t in threads() {
            assert!(
                !put_tracked(&mut out, &t).unwrap(),
                "no content to leave out"
            );
        }
        let (read, expiries, confirmations) = get_threads(&out.0).unwrap();
        for t in threads() {
            assert_eq!(read.get(&t.ledger.key).map(|b| &**b), Some(&t));
        }
        assert_eq!(expiries.order.len(), 1);
        assert_eq!(confirmations.order.len(), 1);
        // Every byte counts: one short, or one more, is refused.
        assert!(get_threads(&out.0[..out.0.len() - 1]).is_none());
        let mut longer = out.0.clone();
        longer.push(0);
        assert!(get_threads(&longer).is_none());
    }

    #[test]
    fn the_persons_content_is_left_out_and_said_so() {
        let mut t = threads().remove(0);
        t.ledger.pending_requests[0].metadata = Some("SECRET words".into());
        t.ledger.tokens[0].payload = Some("SECRET opt-in".into());
        let mut out = Out::default();
        out.u64(1);
        assert!(put_tracked(&mut out, &t).unwrap());
        assert!(!out.0.windows(6).any(|w| w == b"SECRET"));
        let (read, _, _) = get_threads(&out.0).unwrap();
        let ledger = &read[&t.ledger.key].ledger;
        assert_eq!(ledger.pending_requests[0].metadata, None);
        assert_eq!(ledger.tokens[0].payload, None);
        assert!(!ledger.holds_content());
    }

    #[test]
    fn the_dedupe_index_and_the_retention_queue_read_back_as_written() {
        let app = AppId::parse("1001").unwrap();
        let copies: Box<[ItemCopy]> = vec![
            (app.clone(), Channel::Messaging),
            (app.clone(), Channel::Standby),
        ]
        .into();
        let mut out = Out::default();
        out.u64(1);
        put_copies(&mut out, 42, &copies);
        let seen = get_seen(&out.0).unwrap();
        assert_eq!(seen.get(&42), Some(&copies));
        let forget: BTreeMap<(Timestamp, u64), Forget> = [
            Forget::Seen(42),
            Forget::Key(Box::new((app, "k".into()))),
            Forget::Send(CommandId::parse("s1").unwrap()),
            Forget::Reply(Box::new((PageId::parse("5550001").unwrap(), "c".into()))),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, f)| ((Timestamp::from_millis(9), i as u64), f))
        .collect();
        let mut out = Out::default();
        out.u64(forget.len() as u64);
        for (k, v) in &forget {
            put_forget(&mut out, *k, v);
        }
        assert_eq!(get_forget(&out.0), Some(forget));
        // A count larger than the bytes could hold is refused up front.
        let mut lying = Out::default();
        lying.u64(u64::MAX);
        assert!(get_forget(&lying.0).is_none());
        assert!(get_seen(&lying.0).is_none());
        assert!(get_threads(&lying.0).is_none());
    }
}
