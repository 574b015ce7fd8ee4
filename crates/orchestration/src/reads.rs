//! Graph-compatible reads answered from the ledger: `thread_owner` and
//! `secondary_receivers`, with Meta's visibility rules (from the domain's
//! table). An owner the ledger does not know is asked of Meta first.

use domain::events::{ControlView, GraphError};
use domain::graph::{self, OwnerVisibility};
use domain::{rules, Psid, ThreadKey};
use event_log::EventStore;
use serde_json::{json, Value};

use crate::{Acting, Baton};

impl<S: EventStore + 'static> Baton<S> {
    /// `GET thread_owner?recipient=PSID` for `acting`, in Meta's shape.
    pub async fn thread_owner(&self, acting: &Acting, psid: Psid) -> Result<Value, GraphError> {
        let thread = ThreadKey::new(acting.page.clone(), psid);
        let view = || {
            let now = self.clock.now();
            let snapshot = self.projections.read();
            let page = snapshot.pages.get(&thread.page)?.clone();
            let ledger = snapshot.ledger(&thread);
            Some((
                rules::control_at(&ledger, &page, now),
                rules::control_expiry(&ledger, &page),
                page,
            ))
        };
        let not_configured = || {
            graph::error(
                graph::code::INVALID_PARAMETER,
                Some(graph::code::SUB_NO_SUCH_OBJECT),
                format!("(#100) page {} is not configured", thread.page),
            )
        };
        let (mut control, mut expiry, mut page) = view().ok_or_else(not_configured)?;
        if control == ControlView::Unknown {
            self.reconcile(&thread, &acting.version).await;
            (control, expiry, page) = view().ok_or_else(not_configured)?;
        }
        let control = graph::thread_owner_view(&page.mode, control);
        match graph::thread_owner_visibility(&page.mode, &acting.app, &control) {
            OwnerVisibility::Refused(error) => return Err(error),
            OwnerVisibility::Hidden => return Ok(json!({ "data": [] })),
            OwnerVisibility::Shown => {}
        }
        Ok(match control {
            ControlView::Owner { app } => {
                let mut owner = json!({ "app_id": app.as_str() });
                if let Some(e) = expiry {
                    owner["expiration"] = json!(e.millis() / 1000);
                }
                json!({ "data": [{ "thread_owner": owner }] })
            }
            _ => json!({ "data": [] }),
        })
    }

    /// `GET secondary_receivers` for `acting`, in Meta's shape.
    pub fn secondary_receivers(&self, acting: &Acting) -> Result<Value, GraphError> {
        let Some((_, page)) = self.config.pages.get(&acting.page) else {
            return Err(graph::error(
                graph::code::INVALID_PARAMETER,
                Some(graph::code::SUB_NO_SUCH_OBJECT),
                format!("(#100) page {} is not configured", acting.page),
            ));
        };
        let ids = graph::secondary_receivers(&page.mode, &acting.app, page.apps.keys())?;
        let data: Vec<Value> = ids
            .into_iter()
            .map(|id| {
                let name = self
                    .config
                    .apps
                    .get(id)
                    .map(|a| a.name.clone())
                    .unwrap_or_default();
                json!({ "id": id.as_str(), "name": name })
            })
            .collect();
        Ok(json!({ "data": data, "paging": {} }))
    }
}
