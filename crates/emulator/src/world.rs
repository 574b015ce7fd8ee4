//! The world the emulator simulates: pages, apps and delivery settings.
//!
//! This is configuration only (JSON or TOML); the rules that act on it live in
//! `engine`. Secrets and page tokens never reach `Debug` output.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The Page Inbox (Meta Business Suite) app id. It is present on every page.
pub const PAGE_INBOX_APP_ID: &str = "263902037430900";

/// 2026-11-01T09:00:00Z in epoch milliseconds, the default clock start.
pub const DEFAULT_EPOCH_MS: i64 = 1_793_523_600_000;

/// The webhook fields an app subscribes to when its configuration names none.
pub const DEFAULT_FIELDS: &[&str] = &[
    "messages",
    "messaging_postbacks",
    "messaging_handovers",
    "standby",
    "message_echoes",
    "messaging_optins",
    "messaging_referrals",
    "message_reads",
    "message_deliveries",
    "message_reactions",
];

/// Everything the emulator starts from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct World {
    /// Where the emulator's clock starts (epoch ms).
    #[serde(default = "default_epoch")]
    pub epoch_ms: i64,
    #[serde(default)]
    pub pages: Vec<PageConfig>,
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    #[serde(default)]
    pub webhooks: WebhookSettings,
}

fn default_epoch() -> i64 {
    DEFAULT_EPOCH_MS
}

impl Default for World {
    fn default() -> Self {
        World {
            epoch_ms: DEFAULT_EPOCH_MS,
            pages: Vec::new(),
            apps: Vec::new(),
            webhooks: WebhookSettings::default(),
        }
    }
}

impl World {
    /// Adds a page (builder style).
    pub fn with_page(mut self, page: PageConfig) -> Self {
        self.pages.push(page);
        self
    }

    /// Adds an app (builder style).
    pub fn with_app(mut self, app: AppConfig) -> Self {
        self.apps.push(app);
        self
    }

    /// Parses a world from JSON, or from TOML when it does not look like JSON.
    pub fn parse(text: &str) -> Result<World, crate::EmulatorError> {
        if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| crate::EmulatorError::Config(e.to_string()))
        } else {
            toml::from_str(text).map_err(|e| crate::EmulatorError::Config(e.to_string()))
        }
    }
}

/// How webhook deliveries behave.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WebhookSettings {
    /// Attempts per delivery (the first plus retries) while the callback does
    /// not answer 200. Retries are immediate: the emulator never sleeps.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Per-attempt HTTP timeout in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Escape non-ASCII characters as `\uXXXX` in bodies, as Meta does.
    #[serde(default = "yes")]
    pub escape_unicode: bool,
}

fn default_attempts() -> u32 {
    3
}
fn default_timeout() -> u64 {
    20_000
}
fn yes() -> bool {
    true
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            max_attempts: default_attempts(),
            timeout_ms: default_timeout(),
            escape_unicode: true,
        }
    }
}

/// A Facebook Page.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PageConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub routing: Routing,
    /// Conversation Routing link rules: m.me `ref` → app that gets control
    /// when a user enters an idle thread through that link.
    #[serde(default)]
    pub link_routes: BTreeMap<String, String>,
}

impl PageConfig {
    pub fn new(id: impl Into<String>, routing: Routing) -> Self {
        let id = id.into();
        PageConfig {
            name: format!("Page {id}"),
            id,
            routing,
            link_routes: BTreeMap::new(),
        }
    }

    /// A Conversation Routing page with `default_app` as the default app.
    pub fn conversation_routing(id: impl Into<String>, default_app: impl Into<String>) -> Self {
        Self::new(
            id,
            Routing::ConversationRouting {
                default_app: default_app.into(),
            },
        )
    }

    /// A page without a default app.
    pub fn zero_config(id: impl Into<String>) -> Self {
        Self::new(id, Routing::ZeroConfig)
    }

    /// A legacy Handover Protocol v1 page.
    pub fn handover_v1(
        id: impl Into<String>,
        primary: impl Into<String>,
        secondaries: &[&str],
    ) -> Self {
        Self::new(
            id,
            Routing::HandoverV1 {
                primary: primary.into(),
                secondaries: secondaries.iter().map(|s| s.to_string()).collect(),
            },
        )
    }
}

/// A page's routing mode.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Routing {
    /// Meta's current model: a default app, idle/active threads, 24 h expiry.
    ConversationRouting { default_app: String },
    /// No default app: every app gets `messaging`, take is refused.
    ZeroConfig,
    /// Legacy primary/secondary receivers.
    HandoverV1 {
        primary: String,
        #[serde(default)]
        secondaries: Vec<String>,
    },
}

/// A Meta app connected to one or more pages.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct AppConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// The app secret that signs this app's webhook deliveries.
    #[serde(default)]
    pub secret: String,
    /// Where webhooks go; `None` for apps that never get webhooks.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Webhook fields; [`DEFAULT_FIELDS`] when absent.
    #[serde(default = "default_fields")]
    pub subscribed_fields: Vec<String>,
    /// page id → page access token this app uses on the Graph API.
    #[serde(default)]
    pub page_tokens: BTreeMap<String, String>,
    /// Conversation Routing toggle "Allow this app to take control".
    #[serde(default)]
    pub may_take: bool,
    /// Whether the app has the Human Agent feature (the `HUMAN_AGENT` tag).
    #[serde(default)]
    pub human_agent: bool,
    /// Meta's data-deletion callback: where Meta POSTs a `signed_request`
    /// when a person asks to delete their data. `None`: the app has none.
    #[serde(default)]
    pub data_deletion_url: Option<String>,
}

fn default_fields() -> Vec<String> {
    DEFAULT_FIELDS.iter().map(|s| s.to_string()).collect()
}

impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppConfig")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("callback_url", &self.callback_url)
            .field("subscribed_fields", &self.subscribed_fields)
            .field("pages", &self.page_tokens.keys().collect::<Vec<_>>())
            .field("may_take", &self.may_take)
            .field("human_agent", &self.human_agent)
            .field("data_deletion_url", &self.data_deletion_url)
            .finish()
    }
}

impl AppConfig {
    /// An app with a secret, the default fields and nothing else.
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        let id = id.into();
        AppConfig {
            name: format!("App {id}"),
            id,
            secret: secret.into(),
            callback_url: None,
            subscribed_fields: default_fields(),
            page_tokens: BTreeMap::new(),
            may_take: false,
            human_agent: false,
            data_deletion_url: None,
        }
    }

    pub fn with_callback(mut self, url: impl Into<String>) -> Self {
        self.callback_url = Some(url.into());
        self
    }

    pub fn with_token(mut self, page_id: impl Into<String>, token: impl Into<String>) -> Self {
        self.page_tokens.insert(page_id.into(), token.into());
        self
    }

    pub fn with_fields(mut self, fields: &[&str]) -> Self {
        self.subscribed_fields = fields.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn may_take(mut self, yes: bool) -> Self {
        self.may_take = yes;
        self
    }

    pub fn human_agent(mut self, yes: bool) -> Self {
        self.human_agent = yes;
        self
    }

    pub fn with_data_deletion_url(mut self, url: impl Into<String>) -> Self {
        self.data_deletion_url = Some(url.into());
        self
    }
}

/// Meta spells some fields two ways; the emulator keeps one spelling.
pub(crate) fn normalize_field(field: &str) -> String {
    match field.trim() {
        "messaging_handover" => "messaging_handovers".to_string(),
        "messaging_referral" => "messaging_referrals".to_string(),
        other => other.to_string(),
    }
}
