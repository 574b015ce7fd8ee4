//! Meta's Graph API rules that are not about one thread's state: what an
//! answer from Meta means for a send (retry, settle, reconcile), who may see
//! `thread_owner` and `secondary_receivers`, the parameter limits, and the
//! error codes Baton answers with. One table each; the shell asks here and
//! never writes a code of Meta's itself. Source: the reference's §4 (error
//! codes), §5 (rate limits) and the thread-control table.
//!
//! Pure, like the rest of the crate: it reads no clock and makes no call.

use crate::events::{ControlView, GraphError};
use crate::ids::AppId;
use crate::page::RoutingMode;

/// Meta's error codes and subcodes that Baton itself answers with.
pub mod code {
    /// `(#1)` unknown error.
    pub const UNKNOWN: u32 = 1;
    /// `(#2)` temporary or unexpected error: Baton's "service unavailable" too.
    pub const TEMPORARY: u32 = 2;
    /// `(#4)` application request limit reached.
    pub const APP_RATE_LIMITED: u32 = 4;
    /// `(#10)` permission or policy.
    pub const PERMISSION: u32 = 10;
    /// `(#100)` invalid parameter.
    pub const INVALID_PARAMETER: u32 = 100;
    /// `(#104)` no access token at all.
    pub const NO_TOKEN: u32 = 104;
    /// `(#10900)` a private reply to a comment already answered.
    pub const ALREADY_REPLIED: u32 = 10_900;
    /// `(#190)` invalid OAuth access token.
    pub const INVALID_TOKEN: u32 = 190;
    /// `(#200)` permissions error (the app is not on the page).
    pub const ACCESS_DENIED: u32 = 200;
    /// `100/33`: the object does not exist or cannot be loaded.
    pub const SUB_NO_SUCH_OBJECT: u32 = 33;
    /// `100/2018234`: a legacy secondary cannot see another secondary's ownership.
    pub const SUB_SECONDARY_CANNOT_SEE: u32 = 2_018_234;
    /// `100/2018171`: only the legacy primary receiver may do this.
    pub const SUB_PRIMARY_ONLY: u32 = 2_018_171;
    /// `1/1357046`: invalid JSON reply, but the message may have been sent.
    pub const SUB_MAYBE_SENT: u32 = 1_357_046;
}

/// Meta's parameter limits on the requests Baton parses.
pub mod limits {
    /// `message.text`: at most 2000 characters (UTF-8), never empty.
    pub const MESSAGE_TEXT_MAX_CHARS: usize = 2000;
    /// `message.metadata` and thread-control `metadata`: fewer than 1000 characters.
    pub const METADATA_MAX_CHARS: usize = 1000;
    /// Any other string field of a request, nested ones included (Meta's
    /// longest message fields, URLs and template texts, are shorter).
    pub const FIELD_MAX_CHARS: usize = 4096;
    /// Nesting of a request's JSON (Meta's templates nest a few levels).
    pub const MAX_DEPTH: usize = 16;
    /// Elements of any array in a request (quick replies: 13, template elements: 10).
    pub const MAX_ARRAY_ITEMS: usize = 100;
}

/// Checks every field of a request's parameters against [`limits`]: no
/// string longer than `FIELD_MAX_CHARS`, no array longer than
/// `MAX_ARRAY_ITEMS`, no nesting deeper than `MAX_DEPTH`. The error names the
/// field.
pub fn check_field_limits(
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    fn walk(value: &serde_json::Value, path: &str, depth: usize) -> Result<(), String> {
        use serde_json::Value;
        if depth > limits::MAX_DEPTH {
            return Err(format!(
                "param {path} is nested deeper than {} levels",
                limits::MAX_DEPTH
            ));
        }
        match value {
            Value::String(s) if s.chars().count() > limits::FIELD_MAX_CHARS => Err(format!(
                "param {path} is longer than {} characters",
                limits::FIELD_MAX_CHARS
            )),
            Value::Array(items) if items.len() > limits::MAX_ARRAY_ITEMS => Err(format!(
                "param {path} has more than {} elements",
                limits::MAX_ARRAY_ITEMS
            )),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| walk(v, &format!("{path}[{i}]"), depth + 1)),
            Value::Object(map) => map
                .iter()
                .try_for_each(|(k, v)| walk(v, &format!("{path}.{k}"), depth + 1)),
            _ => Ok(()),
        }
    }
    params.iter().try_for_each(|(k, v)| walk(v, k, 1))
}

/// What Meta's answer to a send or call means for what Baton does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerClass {
    /// Throttled (4, 17, 32, 613, 80001, 80006): nothing was sent; hold the
    /// page's sends, then retry.
    RateLimited,
    /// A temporary failure Meta documents as not sent (2, 1200, 2018321, or
    /// the request never reached Meta): retry with backoff.
    NotSent,
    /// The request may have been carried out (`1/1357046`): never resend;
    /// settle it from the echo.
    MaybeSent,
    /// Another app controls the thread (`10/2018300`, `100/2534037`): final,
    /// and the ledger disagrees with Meta, so Baton asks `thread_owner`.
    NotOwner,
    /// Any other error: final, not retried.
    Final,
}

/// The table from Meta's `(code, subcode)` to what it means.
pub fn classify(error: &GraphError) -> AnswerClass {
    match (error.code, error.subcode) {
        (10, Some(2_018_300)) | (100, Some(2_534_037)) => AnswerClass::NotOwner,
        (code::UNKNOWN, Some(code::SUB_MAYBE_SENT)) => AnswerClass::MaybeSent,
        (4 | 17 | 32 | 613 | 80_001 | 80_006, _) => AnswerClass::RateLimited,
        (code::TEMPORARY | 1200 | 2_018_321, _) => AnswerClass::NotSent,
        _ if error.is_transient => AnswerClass::NotSent,
        _ => AnswerClass::Final,
    }
}

/// Who `thread_owner` names for a thread in `control`: on a legacy page the
/// primary holds every thread nobody else does, so an idle thread reads as
/// the primary's (as Meta answers); otherwise the ledger's view.
pub fn thread_owner_view(mode: &RoutingMode, control: ControlView) -> ControlView {
    match (mode, control) {
        (RoutingMode::HandoverV1 { primary, .. }, ControlView::Idle) => ControlView::Owner {
            app: primary.clone(),
        },
        (_, control) => control,
    }
}

/// What an app may see of `thread_owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerVisibility {
    /// The owner (and expiry) as the ledger has it.
    Shown,
    /// `{"data": []}`, as for an idle thread.
    Hidden,
    /// Meta refuses the read.
    Refused(GraphError),
}

/// Conversation Routing: the owner and the default app see the owner, others
/// an empty answer. Legacy: the primary always sees it; a secondary only when
/// it or the primary owns the thread, else `100/2018234`. Idle and unknown
/// threads read as empty for everyone.
pub fn thread_owner_visibility(
    mode: &RoutingMode,
    caller: &AppId,
    control: &ControlView,
) -> OwnerVisibility {
    let ControlView::Owner { app: owner } = control else {
        return OwnerVisibility::Shown;
    };
    let visible = match mode {
        RoutingMode::HandoverV1 { primary, .. } => {
            caller == primary || owner == caller || owner == primary
        }
        RoutingMode::ConversationRouting { default_app } => {
            caller == default_app || owner == caller
        }
        RoutingMode::ZeroConfig => true,
    };
    match (visible, mode) {
        (true, _) => OwnerVisibility::Shown,
        (false, RoutingMode::HandoverV1 { .. }) => OwnerVisibility::Refused(error(
            code::INVALID_PARAMETER,
            Some(code::SUB_SECONDARY_CANNOT_SEE),
            "(#100) A secondary receiver cannot see another secondary receiver's thread ownership",
        )),
        (false, _) => OwnerVisibility::Hidden,
    }
}

/// Who `secondary_receivers` lists for `caller`: in legacy mode only the
/// primary may ask (else `100/2018171`) and gets the secondaries; under
/// Conversation Routing and zero-config, the page's other apps.
pub fn secondary_receivers<'a>(
    mode: &'a RoutingMode,
    caller: &AppId,
    page_apps: impl IntoIterator<Item = &'a AppId>,
) -> Result<Vec<&'a AppId>, GraphError> {
    let mut ids: Vec<&AppId> = match mode {
        RoutingMode::HandoverV1 {
            primary,
            secondaries,
        } => {
            if primary != caller {
                return Err(error(
                    code::INVALID_PARAMETER,
                    Some(code::SUB_PRIMARY_ONLY),
                    "(#100) Only the primary receiver can list secondary receivers",
                ));
            }
            secondaries.iter().collect()
        }
        _ => page_apps.into_iter().filter(|a| *a != caller).collect(),
    };
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// A Graph error of Baton's own making, in Meta's terms.
pub fn error(code: u32, subcode: Option<u32>, message: impl Into<String>) -> GraphError {
    GraphError {
        code,
        subcode,
        message: message.into(),
        fbtrace_id: None,
        is_transient: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(code: u32, subcode: Option<u32>) -> GraphError {
        error(code, subcode, "x")
    }

    #[test]
    fn the_classification_table() {
        let rows = [
            (e(10, Some(2_018_300)), AnswerClass::NotOwner),
            (e(100, Some(2_534_037)), AnswerClass::NotOwner),
            (e(1, Some(1_357_046)), AnswerClass::MaybeSent),
            (e(613, None), AnswerClass::RateLimited),
            (e(613, Some(2_534_040)), AnswerClass::RateLimited),
            (e(4, Some(2_018_022)), AnswerClass::RateLimited),
            (e(17, None), AnswerClass::RateLimited),
            (e(32, None), AnswerClass::RateLimited),
            (e(80_006, None), AnswerClass::RateLimited),
            (e(2, None), AnswerClass::NotSent),
            (e(1200, None), AnswerClass::NotSent),
            (e(2_018_321, None), AnswerClass::NotSent),
            (e(10, Some(2_018_278)), AnswerClass::Final),
            (e(100, None), AnswerClass::Final),
            (e(190, None), AnswerClass::Final),
            (e(1, Some(99)), AnswerClass::Final),
            (e(551, Some(1_545_041)), AnswerClass::Final),
        ];
        for (error, class) in rows {
            assert_eq!(classify(&error), class, "{error:?}");
        }
        let mut transient = e(1, None);
        transient.is_transient = true;
        assert_eq!(classify(&transient), AnswerClass::NotSent);
    }

    #[test]
    fn visibility_table() {
        let a = |s: &str| AppId::parse(s).unwrap();
        let owner = |s: &str| ControlView::Owner { app: a(s) };
        let cr = RoutingMode::ConversationRouting {
            default_app: a("1"),
        };
        let v1 = RoutingMode::HandoverV1 {
            primary: a("1"),
            secondaries: vec![a("2"), a("3")],
        };
        assert_eq!(
            thread_owner_visibility(&cr, &a("1"), &owner("2")),
            OwnerVisibility::Shown
        );
        assert_eq!(
            thread_owner_visibility(&cr, &a("2"), &owner("2")),
            OwnerVisibility::Shown
        );
        assert_eq!(
            thread_owner_visibility(&cr, &a("3"), &owner("2")),
            OwnerVisibility::Hidden
        );
        assert_eq!(
            thread_owner_visibility(&cr, &a("3"), &ControlView::Idle),
            OwnerVisibility::Shown
        );
        assert_eq!(
            thread_owner_visibility(&v1, &a("2"), &owner("1")),
            OwnerVisibility::Shown
        );
        assert!(matches!(
            thread_owner_visibility(&v1, &a("3"), &owner("2")),
            OwnerVisibility::Refused(GraphError {
                code: 100,
                subcode: Some(2_018_234),
                ..
            })
        ));
        let apps = [a("1"), a("2"), a("3")];
        assert_eq!(
            secondary_receivers(&cr, &a("2"), apps.iter()).unwrap(),
            vec![&a("1"), &a("3")]
        );
        assert_eq!(
            secondary_receivers(&v1, &a("2"), apps.iter())
                .unwrap_err()
                .subcode,
            Some(2_018_171)
        );
    }
}
