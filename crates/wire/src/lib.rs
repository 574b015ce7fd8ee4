//! Meta's wire formats, parsed at the edge into the domain's types: webhook
//! envelopes (every entry, every `messaging[]` and `standby[]` item, ids as
//! strings or numbers, timestamps as numbers or strings), the two webhook
//! signature schemes, and Graph's error JSON. No I/O: bytes in, values out.

pub mod graph;
pub mod signature;
pub mod signed_request;
pub mod webhook;
