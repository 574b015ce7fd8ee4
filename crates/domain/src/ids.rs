//! Identifiers and time: the opaque ids Meta hands out and the millisecond clock
//! values the rest of the domain computes with. Nothing here reads a clock.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

/// The Page Inbox (Meta Business Suite inbox) app id: a routing participant on
/// every Page, which takes control silently when a human replies from it.
pub const PAGE_INBOX_APP_ID: &str = "263902037430900";

/// Why an identifier was refused at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} bytes")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} contains a character that is not allowed ({found:?}): ids are opaque but printable, without '/' or white space")]
    BadCharacter { kind: &'static str, found: char },
}

const MAX_ID_LEN: usize = 128;

fn check_id(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            max: MAX_ID_LEN,
        });
    }
    if let Some(found) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
    {
        return Err(IdError::BadCharacter { kind, found });
    }
    Ok(())
}

/// Ids of which a deployment has few (its pages and apps) are kept once per
/// process: a million threads' keys and owners point at one copy of the
/// page's id and each app's. Only ids the configuration names are kept
/// ([`PageId::keep`], [`AppId::keep`]); parsing only looks the table up, so
/// ids from requests and deliveries never grow it, and a lookup takes a
/// shared lock. The table stops growing at this many ids all the same.
const KEPT_MAX: usize = 4_096;

type Kept = LazyLock<RwLock<HashSet<Arc<str>>>>;

static KEPT: Kept = LazyLock::new(|| RwLock::new(HashSet::new()));

/// The process's kept copy of `value`, or a copy of its own.
fn kept_or_owned(value: &str) -> Arc<str> {
    kept_in(&KEPT, value).unwrap_or_else(|| Arc::from(value))
}

/// `table`'s copy of `value`, if it keeps one.
fn kept_in(table: &RwLock<HashSet<Arc<str>>>, value: &str) -> Option<Arc<str>> {
    table
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(value)
        .cloned()
}

/// Keeps `value` in `table` while it holds fewer than `max` ids, and hands
/// back the kept copy (`value` itself when there is no room).
fn keep_in(table: &RwLock<HashSet<Arc<str>>>, max: usize, value: &Arc<str>) -> Arc<str> {
    let mut table = table.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(kept) = table.get(value) {
        return kept.clone();
    }
    if table.len() < max {
        table.insert(value.clone());
    }
    value.clone()
}

/// An id's own copy (ids of which there is one per person or command).
fn owned(value: &str) -> Arc<str> {
    Arc::from(value)
}

// An id is shared, not copied: a thread's key sits in the ledger map, the
// ledger itself and the timers' indexes, and every clone of it is a pointer
// to one allocation (a reference count bumped, not a string copied).
macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $store:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Parses an id: any printable string without white space or '/', at most 128 bytes.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                Self::parse_str(&value.into())
            }

            /// [`Self::parse`] from borrowed text: a kept id costs no
            /// allocation, any other one only its own copy.
            pub fn parse_str(value: &str) -> Result<Self, IdError> {
                check_id($kind, value)?;
                Ok(Self($store(value)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                String::from(&*id.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

opaque_id!(
    /// A Facebook Page id (`entry[].id`, `recipient.id` of user events).
    PageId,
    "page id",
    kept_or_owned
);
opaque_id!(
    /// A Page-scoped user id: unique per (person, Page), shared by every app on the Page.
    Psid,
    "psid",
    owned
);
opaque_id!(
    /// A Meta app id (managed by Baton, or external such as the Page Inbox).
    AppId,
    "app id",
    kept_or_owned
);
opaque_id!(
    /// An id the shell gives a command (a send or a thread-control call) so its
    /// decision and its outcome can be joined in the log.
    CommandId,
    "command id",
    owned
);

macro_rules! kept_id {
    ($name:ident) => {
        impl $name {
            /// Keeps this id once per process (for ids the configuration
            /// names): every later parse of it shares the kept copy.
            pub fn keep(&self) -> Self {
                Self(keep_in(&KEPT, KEPT_MAX, &self.0))
            }
        }
    };
}

kept_id!(PageId);
kept_id!(AppId);

static PAGE_INBOX: LazyLock<AppId> = LazyLock::new(|| AppId(Arc::from(PAGE_INBOX_APP_ID)).keep());

impl AppId {
    /// The Page Inbox's app id.
    pub fn page_inbox() -> Self {
        PAGE_INBOX.clone()
    }

    pub fn is_page_inbox(&self) -> bool {
        &*self.0 == PAGE_INBOX_APP_ID
    }
}

/// A conversation thread: one person on one Page.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ThreadKey {
    pub page: PageId,
    pub psid: Psid,
}

impl ThreadKey {
    pub fn new(page: PageId, psid: Psid) -> Self {
        Self { page, psid }
    }

    /// The name of this thread's stream in the event log.
    pub fn stream_name(&self) -> String {
        format!("thread/{}/{}", self.page, self.psid)
    }
}

impl fmt::Display for ThreadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.page, self.psid)
    }
}

/// A point in time, in milliseconds since the Unix epoch (Meta's own unit).
/// The domain never reads a clock: the shell passes `now` in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating at the ends of the range.
    pub const fn plus(self, d: Span) -> Self {
        Self(self.0.saturating_add(d.0))
    }

    /// How long from `earlier` to `self` (negative when `earlier` is later).
    pub const fn since(self, earlier: Timestamp) -> Span {
        Span(self.0.saturating_sub(earlier.0))
    }
}

impl Timestamp {
    /// The calendar date and time in UTC: `(year, month, day, hour, minute, second, millisecond)`.
    pub fn to_utc(self) -> (i64, u32, u32, u32, u32, u32, u32) {
        let ms = self.0.rem_euclid(1000) as u32;
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        (year, month, day, rem / 3600, rem / 60 % 60, rem % 60, ms)
    }
}

/// RFC 3339 in UTC, e.g. `2026-11-01T09:00:00.000Z`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d, h, mi, s, ms) = self.to_utc();
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

/// A length of time in milliseconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Span(pub i64);

impl Span {
    pub const SECOND: Span = Span(1_000);
    pub const MINUTE: Span = Span(60_000);
    pub const HOUR: Span = Span(3_600_000);
    pub const DAY: Span = Span(86_400_000);

    pub const fn seconds(n: i64) -> Self {
        Span(n.saturating_mul(1_000))
    }

    pub const fn minutes(n: i64) -> Self {
        Span(n.saturating_mul(60_000))
    }

    pub const fn hours(n: i64) -> Self {
        Span(n.saturating_mul(3_600_000))
    }

    pub const fn days(n: i64) -> Self {
        Span(n.saturating_mul(86_400_000))
    }

    pub const fn millis(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_and_app_ids_the_configuration_keeps_are_shared_and_others_are_not() {
        let configured = AppId::parse("4242000000001").unwrap().keep();
        let a = AppId::parse("4242000000001".to_owned()).unwrap();
        let b = AppId::parse("4242000000001").unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0), "one copy of a kept app id");
        assert!(Arc::ptr_eq(&a.0, &configured.0));
        let page = PageId::parse("4242000000002").unwrap().keep();
        assert!(Arc::ptr_eq(
            &page.0,
            &PageId::parse("4242000000002").unwrap().0
        ));
        // An id nobody kept (a user's profile node, a made-up app in a
        // webhook's path) is parsed into a copy of its own, and not kept.
        let stray = PageId::parse("4242000000009").unwrap();
        assert!(!Arc::ptr_eq(
            &stray.0,
            &PageId::parse("4242000000009").unwrap().0
        ));
        assert!(kept_in(&KEPT, "4242000000009").is_none());
        let u = Psid::parse("4242000000001").unwrap();
        assert!(
            !Arc::ptr_eq(&u.0, &a.0),
            "a psid is never shared with an app id"
        );
        assert_eq!(a, b);
        assert_eq!(String::from(a), "4242000000001");
        assert!(AppId::page_inbox().is_page_inbox());
    }

    #[test]
    fn the_kept_table_stops_growing_at_its_bound() {
        let table = RwLock::new(HashSet::new());
        let ids: Vec<Arc<str>> = (0..100)
            .map(|n| keep_in(&table, 10, &Arc::from(format!("page-{n}"))))
            .collect();
        assert_eq!(table.read().unwrap().len(), 10);
        let again = keep_in(&table, 10, &Arc::from("page-3"));
        assert!(Arc::ptr_eq(&again, &ids[3]), "a kept id is shared");
        assert!(
            kept_in(&table, "page-50").is_none(),
            "past the bound, not kept"
        );
        assert_eq!(&*keep_in(&table, 10, &Arc::from("page-50")), "page-50");
    }

    #[test]
    fn ids_are_opaque_but_checked() {
        assert!(PageId::parse("1234567890").is_ok());
        assert!(Psid::parse("abc-DEF_12").is_ok());
        assert_eq!(PageId::parse(""), Err(IdError::Empty { kind: "page id" }));
        assert!(matches!(
            Psid::parse("a/b"),
            Err(IdError::BadCharacter { found: '/', .. })
        ));
        assert!(matches!(
            AppId::parse("a b"),
            Err(IdError::BadCharacter { found: ' ', .. })
        ));
        assert!(matches!(
            AppId::parse("9".repeat(129)),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn ids_deserialize_through_the_same_check() {
        let ok: PageId = serde_json::from_str("\"42\"").unwrap();
        assert_eq!(ok.as_str(), "42");
        assert!(serde_json::from_str::<PageId>("\"\"").is_err());
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        assert_eq!(
            Timestamp::from_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_793_523_600_000).to_string(),
            "2026-11-01T09:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_777_248_000_001).to_string(),
            "2026-04-27T00:00:00.001Z"
        );
        assert_eq!(
            Timestamp::from_millis(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(-1).to_string(),
            "1969-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn thread_stream_name() {
        let key = ThreadKey::new(PageId::parse("p1").unwrap(), Psid::parse("u1").unwrap());
        assert_eq!(key.stream_name(), "thread/p1/u1");
    }
}
