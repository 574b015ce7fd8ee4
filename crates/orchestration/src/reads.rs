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
        let answer = self
            .graph
            .get_node(
                &managed.graph_base_url,
                &acting.version,
                &path,
                token.expose(),
                &query,
            )
            .await;
        // The edge names the kind of read, never the person read about.
        let edge = match node {
            Node::Page => "page",
            Node::User(_) => "user_profile",
        };
        self.note_token(&acting.page, &acting.app, edge, &answer)
            .await;
        answer
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

/// A thread an app may message now, and on what basis.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Messageable {
    pub page: String,
    pub psid: String,
    /// Why the app may speak in the thread (it holds it, it answers it idle, …).
    pub owner: domain::events::OwnerBasis,
    /// Why it may speak now: the open window, the HUMAN_AGENT window, or an
    /// unused One-Time Notification token (the first that applies).
    pub window: domain::events::WindowBasis,
}

impl<S: EventStore + 'static> Baton<S> {
    /// "Who can I message now?" (Meta has no API for it): the threads of
    /// `app`'s pages (or of `page` alone) where a send by `app` would be
    /// accepted now, by the same rules as a real send: a plain response in
    /// the window, else HUMAN_AGENT for a human app, else an unused One-Time
    /// Notification token. At most `limit`, in thread order.
    pub fn messageable(
        &self,
        app: &domain::AppId,
        page: Option<&domain::PageId>,
        limit: usize,
    ) -> Vec<Messageable> {
        use domain::{Command, MessagingType, Recipient, SendContent, SendMessage};
        let now = self.clock.now();
        let snapshot = self.projections.read();
        let mut keys: Vec<&ThreadKey> = snapshot
            .ledgers()
            .map(|ledger| &ledger.key)
            .filter(|k| page.is_none_or(|p| &k.page == p))
            .filter(|k| {
                snapshot
                    .pages
                    .get(&k.page)
                    .is_some_and(|p| p.app(app).is_some())
            })
            .collect();
        keys.sort();
        let send = |recipient: Recipient, messaging_type, tag: Option<&str>| {
            Command::SendMessage(SendMessage {
                send_id: domain::CommandId::parse("messageable-check").expect("a valid id"),
                app: app.clone(),
                recipient,
                messaging_type,
                tag: tag.map(str::to_owned),
                content: SendContent::Message { metadata: None },
                thread_control: None,
                payload: json!({}),
                idempotency_key: None,
                graph_version: None,
                request_digest: None,
            })
        };
        let mut out = Vec::new();
        for key in keys {
            if out.len() >= limit {
                break;
            }
            let (Some(ledger), Some(page)) = (snapshot.thread(key), snapshot.pages.get(&key.page))
            else {
                continue;
            };
            let psid = || Recipient::Psid(key.psid.clone());
            let mut candidates = vec![
                send(psid(), Some(MessagingType::Response), None),
                send(psid(), Some(MessagingType::MessageTag), Some("HUMAN_AGENT")),
            ];
            candidates.extend(
                ledger
                    .tokens
                    .iter()
                    .filter(|t| t.consumed.is_none())
                    .map(|t| send(Recipient::OneTimeToken(t.token.clone()), None, None)),
            );
            let basis = candidates.iter().find_map(|command| {
                rules::decide(ledger, page, command, now)
                    .ok()?
                    .into_iter()
                    .find_map(|e| match e {
                        domain::Event::SendAccepted(a) => Some(a.basis),
                        _ => None,
                    })
            });
            if let Some(basis) = basis {
                out.push(Messageable {
                    page: key.page.to_string(),
                    psid: key.psid.to_string(),
                    owner: basis.owner,
                    window: basis.window,
                });
            }
        }
        out
    }
}
