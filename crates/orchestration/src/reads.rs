//! Graph-compatible reads answered from the ledger: `thread_owner` and
//! `secondary_receivers`, with Meta's visibility rules (from the domain's
//! table). An owner the ledger does not know is asked of Meta first.

use domain::events::{ControlView, GraphError};
use domain::graph::{self, OwnerVisibility};
use domain::{rules, Psid, ThreadKey};
use event_log::EventStore;
use serde_json::{json, Value};

use crate::graph_client::GraphAnswer;
use crate::{Acting, Baton};

/// A node a Graph read names: the page itself (`me`, or its id), or a user
/// of the page (their profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Page,
    User(Psid),
}

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

    /// `GET /{node}?fields=…` for `acting`, answered by Meta through the
    /// app's page token and passed through: the page (`me`, with
    /// `messaging_feature_status` when asked) or the profile of a user who
    /// wrote to the page. A user Baton never saw on the page is an object
    /// that does not exist (as Meta answers an app about a stranger), and
    /// Meta is not asked.
    pub async fn read_node(
        &self,
        acting: &Acting,
        node: &Node,
        fields: Option<&str>,
    ) -> GraphAnswer {
        let path = match node {
            Node::Page => "me".to_owned(),
            Node::User(psid) => {
                let thread = ThreadKey::new(acting.page.clone(), psid.clone());
                if self.projections.read().thread(&thread).is_none() {
                    return GraphAnswer::Err {
                        status: 400,
                        error: graph::error(
                            graph::code::INVALID_PARAMETER,
                            Some(graph::code::SUB_NO_SUCH_OBJECT),
                            format!("(#100) Object with ID '{psid}' does not exist, cannot be loaded due to missing permissions, or does not support this operation (no user with that id wrote to page {})", acting.page),
                        ),
                        body: Value::Null,
                    };
                }
                psid.as_str().to_owned()
            }
        };
        let Some((_, managed)) = self.config.managed(&acting.app) else {
            return GraphAnswer::Err {
                status: 400,
                error: graph::error(
                    graph::code::ACCESS_DENIED,
                    None,
                    format!("(#200) app {} is not managed by Baton", acting.app),
                ),
                body: Value::Null,
            };
        };
        let Some(token) = managed.page_tokens.get(&acting.page) else {
            return GraphAnswer::Err {
                status: 400,
                error: graph::error(
                    graph::code::ACCESS_DENIED,
                    None,
                    format!(
                        "(#200) app {} has no token for page {}",
                        acting.app, acting.page
                    ),
                ),
                body: Value::Null,
            };
        };
        let query: Vec<(&str, &str)> = fields.map(|f| ("fields", f)).into_iter().collect();
        self.graph
            .get_node(
                &managed.graph_base_url,
                &acting.version,
                &path,
                token.expose(),
                &query,
            )
            .await
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
