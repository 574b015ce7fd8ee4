//! Baton's domain: identifiers, the event schema of the log, the per-thread
//! ledger and every rule Meta's Messenger Platform imposes on thread control
//! and sending. It is pure: no I/O, no clock, no randomness, no async. Time,
//! ids and outside facts come in as arguments; events and rejections go out as
//! data. `tests/purity.rs` fails the build if an I/O crate sneaks in.
//!
//! The shape follows event sourcing: [`rules::decide`] turns a command into
//! events or a [`Rejection`], [`rules::observe`] turns what Meta said into
//! events, [`rules::settle_control`] / [`rules::settle_send`] record Meta's
//! answers, [`rules::tick`] records expiry, and [`ThreadLedger::apply`] folds
//! events with no rules at all.

pub mod commands;
pub mod events;
pub mod explain;
pub mod graph;
pub mod ids;
pub mod ledger;
pub mod page;
pub mod policy;
pub mod privacy;
pub mod rejection;
pub mod rules;

pub use commands::{
    Command, InlineControl, MessagingType, Recipient, SendContent, SendMessage, SenderAction,
};
pub use events::{DecodeError, EncodedEvent, Event};
pub use ids::{
    AppId, CommandId, IdError, PageId, Psid, Span, ThreadKey, Timestamp, PAGE_INBOX_APP_ID,
};
pub use ledger::{Control, ThreadLedger};
pub use page::{AppKind, AppProfile, Management, Page, RoutingMode};
pub use rejection::{Rejection, RejectionKind};
