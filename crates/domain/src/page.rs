//! Pages and the apps on them: routing modes, app kinds, and the page-level
//! facts (legacy roles, policy enforcement) that rules consult. Configuration
//! parsing lives in the server; this module only holds the typed result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::{EnforcementAction, Event};
use crate::ids::{AppId, PageId, Timestamp};

/// What an app is: only `Human` apps may use the `HUMAN_AGENT` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    Bot,
    Human,
}

/// Whether Baton holds the app's secrets and backend (managed) or only knows
/// its id and sees it through Meta's webhooks (external: the Page Inbox, a
/// third-party inbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Management {
    Managed,
    External,
}

/// One app connected to a Page, as far as the rules care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppProfile {
    pub id: AppId,
    pub kind: AppKind,
    pub management: Management,
    /// The business allowed this app to take control of conversations
    /// (Conversation Routing's per-app toggle under Advanced Messaging).
    pub may_take_control: bool,
}

impl AppProfile {
    pub fn new(id: AppId, kind: AppKind, management: Management) -> Self {
        Self {
            id,
            kind,
            management,
            may_take_control: false,
        }
    }

    pub fn allowed_to_take(mut self) -> Self {
        self.may_take_control = true;
        self
    }
}

/// How Meta routes a Page's conversations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RoutingMode {
    /// Conversation Routing (Meta's current model): a default app answers idle
    /// threads; control lapses after 24 h without user activity.
    ConversationRouting { default_app: AppId },
    /// No default app: every app receives `messaging` and may reply; take is blocked.
    ZeroConfig,
    /// The legacy Handover Protocol v1: a primary receiver owns threads by
    /// default, secondaries get control by pass.
    HandoverV1 {
        primary: AppId,
        secondaries: Vec<AppId>,
    },
}

impl RoutingMode {
    pub fn name(&self) -> &'static str {
        match self {
            RoutingMode::ConversationRouting { .. } => "conversation_routing",
            RoutingMode::ZeroConfig => "zero_config",
            RoutingMode::HandoverV1 { .. } => "handover_v1",
        }
    }

    /// The app that answers a thread nobody has taken: the default app under
    /// Conversation Routing, the primary receiver under Handover v1, nobody in
    /// zero-config (there, everyone may).
    pub fn idle_holder(&self) -> Option<&AppId> {
        match self {
            RoutingMode::ConversationRouting { default_app } => Some(default_app),
            RoutingMode::ZeroConfig => None,
            RoutingMode::HandoverV1 { primary, .. } => Some(primary),
        }
    }

    /// Whether control lapses after a period without user activity.
    pub fn control_expires(&self) -> bool {
        !matches!(self, RoutingMode::HandoverV1 { .. })
    }
}

/// A page-wide messaging block from Meta's `messaging_policy_enforcement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagingBlock {
    pub since: Timestamp,
    pub reason: Option<String>,
}

/// A Page as the rules see it: its routing mode, its apps and the page-level
/// facts folded from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub id: PageId,
    pub mode: RoutingMode,
    pub apps: BTreeMap<AppId, AppProfile>,
    /// Set while Meta has blocked the Page from messaging.
    pub blocked: Option<MessagingBlock>,
    /// Meta's time of the newest block or unblock applied: an older one,
    /// retried late, does not undo it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement_at: Option<crate::ids::Timestamp>,
}

impl Page {
    pub fn new(id: PageId, mode: RoutingMode, apps: impl IntoIterator<Item = AppProfile>) -> Self {
        Self {
            id,
            mode,
            apps: apps.into_iter().map(|a| (a.id.clone(), a)).collect(),
            blocked: None,
            enforcement_at: None,
        }
    }

    pub fn app(&self, id: &AppId) -> Option<&AppProfile> {
        self.apps.get(id)
    }

    /// An app Baton may route a thread to: one configured on the page, or the
    /// Page Inbox, which is a routing participant on every Page.
    pub fn knows_app(&self, id: &AppId) -> bool {
        self.apps.contains_key(id) || id.is_page_inbox()
    }

    /// Folds a page-level fact. Like the thread ledger's `apply`, it holds no
    /// rules: the event says what changed.
    pub fn apply(&mut self, event: &Event) {
        match event {
            // Block and unblock apply in Meta's order, not arrival order:
            // one older than the newest applied (a late retry) is history.
            Event::PolicyEnforcementReceived(e)
                if e.page == self.id
                    && matches!(
                        e.action,
                        EnforcementAction::Block | EnforcementAction::Unblock
                    )
                    && self.enforcement_at.is_none_or(|last| e.at > last) =>
            {
                self.enforcement_at = Some(e.at);
                self.blocked = match e.action {
                    EnforcementAction::Block => Some(MessagingBlock {
                        since: e.at,
                        reason: e.reason.clone(),
                    }),
                    _ => None,
                };
            }
            Event::AppRolesChanged(e) if e.page == self.id => {
                if let RoutingMode::HandoverV1 {
                    primary,
                    secondaries,
                } = &mut self.mode
                {
                    let mut new_primary = None;
                    let mut new_secondaries = Vec::new();
                    for (app, roles) in &e.roles {
                        if roles.iter().any(|r| r == "primary_receiver") {
                            new_primary = Some(app.clone());
                        } else if roles.iter().any(|r| r == "secondary_receiver") {
                            new_secondaries.push(app.clone());
                        }
                    }
                    if let Some(p) = new_primary {
                        *primary = p;
                    }
                    if !new_secondaries.is_empty() {
                        *secondaries = new_secondaries;
                    }
                }
            }
            _ => {}
        }
    }
}
