//! Baton's configuration: one typed tree read from TOML. Secrets may be given
//! inline or as `{ env = "NAME" }`; they are wrapped in [`Secret`], whose
//! `Debug` never shows them (the PostgreSQL URL of `store` must come from
//! the environment). A bad file fails at start with a message that names
//! the field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use domain::{AppId, AppKind, AppProfile, Management, Page, PageId, RoutingMode};
use serde::Deserialize;

/// A secret value: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A secret as written in the file.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretSource {
    Inline(String),
    Env { env: String },
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    data_dir: PathBuf,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default = "default_max_attachment")]
    max_attachment_bytes: usize,
    #[serde(default = "default_log_cache")]
    log_cache_bytes: u64,
    admin_token: Option<SecretSource>,
    auditor_token: Option<SecretSource>,
    metrics_token: Option<SecretSource>,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_app_requests")]
    app_requests_per_second: f64,
    #[serde(default)]
    webhook_source_networks: Vec<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    checkpoint_key: Option<PathBuf>,
    #[serde(default = "default_checkpoint_every")]
    checkpoint_every_secs: u64,
    #[serde(default = "default_snapshot_every")]
    snapshot_every_records: u64,
    #[serde(default = "default_reconcile_every")]
    reconcile_every_secs: u64,
    #[serde(default = "default_reconcile_budget")]
    reconcile_calls_per_page_per_hour: u32,
    #[serde(default = "default_subscription_check_every")]
    subscription_check_every_secs: u64,
    #[serde(default = "default_graph_timeout")]
    graph_timeout_ms: u64,
    #[serde(default = "default_body_timeout")]
    body_timeout_ms: u64,
    #[serde(default = "default_dead_letter_after")]
    dispatch_dead_letter_after_secs: u64,
    #[serde(default = "default_send_rate")]
    send_rate_per_second: f64,
    send_burst: Option<f64>,
    #[serde(default = "default_send_attempts")]
    send_max_attempts: u32,
    #[serde(default = "default_send_backoff")]
    send_backoff_ms: u64,
    #[serde(default = "default_stop_grace")]
    stop_grace_ms: u64,
    #[serde(default = "default_content_retention")]
    content_retention_days: u32,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    pages: Vec<RawPage>,
    #[serde(default)]
    apps: Vec<RawApp>,
}

/// `store = "sled"` (the default) or `store = { postgres = { … } }`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum RawStore {
    #[default]
    Sled,
    Postgres(RawPostgres),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    /// Must be `{ env = "NAME" }`: the URL may hold a password.
    url: SecretSource,
    #[serde(default)]
    shard: i32,
    #[serde(default = "default_lease_ms")]
    lease_ms: u64,
    #[serde(default)]
    advertise_url: Option<String>,
    #[serde(default)]
    node_id: Option<String>,
}

/// How long a claim on a shard's lease holds: a dead owner's pages wait at
/// most this long for another node to take over.
fn default_lease_ms() -> u64 {
    10_000
}

/// Where the event log lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreSetting {
    /// The embedded sled log in `<data_dir>/log` (the default: nothing to
    /// set up).
    #[default]
    Sled,
    /// One shard of a PostgreSQL database (`docs/scale-out.md`).
    Postgres(PostgresSetting),
}

/// A page that another shard decides for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elsewhere {
    pub shard: i32,
    /// The apps on the page.
    pub apps: Vec<AppId>,
}

/// `store = { postgres = { url = { env = "NAME" }, shard = N } }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSetting {
    /// `postgres://user:password@host:port/database`, read from the
    /// environment variable `url_env`, never from the file.
    pub url: Secret,
    /// The environment variable the URL came from, for messages.
    pub url_env: String,
    /// The shard of the log this node appends to (default 0).
    pub shard: i32,
    /// How long a claim on the shard's lease holds (renewed every third).
    pub lease_ms: u64,
    /// Where the other nodes route calls to this one; by default `http://`
    /// and the address it listens on.
    pub advertise_url: Option<String>,
    /// This node's id in the lease table (a new one per start by default).
    /// Set it to a name unique to the machine, and a node restarted after a
    /// crash takes its lease back at once instead of waiting for it to lapse.
    /// Two running nodes must never share one.
    pub node_id: Option<String>,
}

impl PostgresSetting {
    /// How to open the store: the URL and shard.
    pub fn store_config(&self) -> event_log::PgStoreConfig {
        event_log::PgStoreConfig::new(self.url.expose()).with_shard(self.shard)
    }
}

/// How long a page keeps what people wrote and were sent, unless it says
/// otherwise (`docs/privacy.md` gives the reasons): long enough to settle a
/// dispute about a conversation or to redrive a backend after a long
/// outage, short enough that content does not pile up for years. Ownership
/// and decision facts are kept regardless.
fn default_content_retention() -> u32 {
    90
}

/// sled's page cache (sled's own default is 1 GiB).
fn default_log_cache() -> u64 {
    64 * 1024 * 1024
}

/// Meta's limit on one uploaded attachment.
fn default_max_attachment() -> usize {
    25 * 1024 * 1024
}

fn default_max_body() -> usize {
    1024 * 1024
}

/// Open connections at once (both workers together): well under the usual
/// 1,024 file descriptors, so health checks and webhooks always find room.
fn default_max_connections() -> usize {
    512
}

/// Requests per second one app may make on Baton's API (a burst of as
/// many): well above one app's honest traffic (Meta's own send limit is 300/s
/// per page), low enough that one app cannot starve the others.
fn default_app_requests() -> f64 {
    5000.0
}

/// A projection snapshot per million records: at ≈ 3 records per
/// delivery, a start after a crash folds at most a few seconds' worth.
fn default_snapshot_every() -> u64 {
    1_000_000
}

/// Signed checkpoints of the chain's head, when a key is configured.
fn default_checkpoint_every() -> u64 {
    300
}

/// An active thread whose owner Meta has not confirmed for this long is
/// asked about (`thread_owner`): twice an hour at most, about a quarter of
/// Meta's 200 calls per engaged user per 24 h.
fn default_reconcile_every() -> u64 {
    1800
}

/// The scheduled `thread_owner` calls one page may spend per hour (the
/// threads unconfirmed longest go first; contradictions are not counted).
fn default_reconcile_budget() -> u32 {
    1000
}

/// Meta drops an app's subscription after an hour of failed webhooks; an
/// hourly look at `subscribed_apps` (one call per app and page) finds the
/// loss within the next hour at most.
fn default_subscription_check_every() -> u64 {
    3600
}

fn default_graph_timeout() -> u64 {
    10_000
}

fn default_body_timeout() -> u64 {
    10_000
}

fn default_dead_letter_after() -> u64 {
    24 * 3600
}

/// Meta's documented Send API limit for text: 300 calls/s per page.
fn default_send_rate() -> f64 {
    300.0
}

fn default_send_attempts() -> u32 {
    5
}

fn default_send_backoff() -> u64 {
    250
}

/// Long enough for connections already queued at the listener to be read
/// and answered 503 before it closes.
fn default_stop_grace() -> u64 {
    1000
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPage {
    id: String,
    #[serde(default)]
    name: String,
    routing: RawRouting,
    apps: Vec<String>,
    /// Overrides the global `content_retention_days` (0: keep forever).
    content_retention_days: Option<u32>,
    /// The shard of the PostgreSQL log that decides for this page.
    shard: Option<i32>,
}

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum RawRouting {
    ConversationRouting {
        default_app: String,
    },
    ZeroConfig,
    HandoverV1 {
        primary: String,
        #[serde(default)]
        secondaries: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    id: String,
    #[serde(default)]
    name: String,
    kind: AppKind,
    management: Management,
    #[serde(default)]
    may_take_control: bool,
    #[serde(default)]
    may_set_messenger_profile: bool,
    app_secret: Option<SecretSource>,
    verify_token: Option<SecretSource>,
    api_token: Option<SecretSource>,
    forward_secret: Option<SecretSource>,
    graph_base_url: Option<String>,
    backend_url: Option<String>,
    #[serde(default)]
    page_tokens: BTreeMap<String, SecretSource>,
}

/// A managed app: Baton holds its secrets and backend.
#[derive(Debug, Clone)]
pub struct ManagedApp {
    /// Meta's app secret: verifies Meta's webhooks; never leaves Baton.
    pub app_secret: Secret,
    pub verify_token: Secret,
    pub api_token: Secret,
    /// Signs what Baton forwards to the app's backend (required with a
    /// `backend_url`, and never equal to the app secret, so a backend holds
    /// no key Baton's ingress accepts).
    pub forward_secret: Option<Secret>,
    pub graph_base_url: String,
    pub backend_url: Option<String>,
    pub page_tokens: BTreeMap<PageId, Secret>,
    /// May change the pages' Messenger Profile (greeting, Get Started,
    /// menu): a setting of the whole page, so only apps allowed here.
    pub may_set_messenger_profile: bool,
}

/// An app as configured.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub id: AppId,
    pub name: String,
    pub profile: AppProfile,
    /// `None` for external apps (the Page Inbox, a third-party inbox).
    pub managed: Option<ManagedApp>,
}

/// The whole configuration, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    /// The largest attachment upload (`message_attachments`) read.
    pub max_attachment_bytes: usize,
    /// The most memory the log's page cache (sled's) may hold.
    pub log_cache_bytes: u64,
    /// Bearer token for Baton's own read and admin API (besides app tokens).
    pub admin_token: Option<Secret>,
    /// Read-only bearer token: every thread, timeline and export; no redrive.
    pub auditor_token: Option<Secret>,
    /// When set, `/metrics` needs this bearer token (or the admin's).
    pub metrics_token: Option<Secret>,
    /// Open connections at once (split between the HTTP workers).
    pub max_connections: usize,
    /// Requests per second each app may make on Baton's API; more get 429.
    pub app_requests_per_second: f64,
    /// When non-empty, webhooks are taken only from these networks.
    pub webhook_source_networks: Vec<Network>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Network>,
    /// The Ed25519 private key (`baton keygen`) that signs checkpoints of the
    /// chain's head into `<data_dir>/checkpoints/`, kept outside the log.
    pub checkpoint_key: Option<PathBuf>,
    /// How often a checkpoint is signed when the head has moved.
    pub checkpoint_every_secs: u64,
    /// A projection snapshot is written in the background each time the
    /// log has grown by this many records (0: only at a clean stop); see
    /// [`crate::snapshot`]. On sled only.
    pub snapshot_every_records: u64,
    /// An active thread unconfirmed by Meta for this long is reconciled on
    /// the schedule.
    pub reconcile_every_secs: u64,
    /// Scheduled reconciliations per page per hour at most.
    pub reconcile_calls_per_page_per_hour: u32,
    /// How often (Baton's clock) the subscription watchdog asks Meta's
    /// `subscribed_apps` whether each managed app is still subscribed to
    /// each of its pages; 0 turns the schedule off.
    pub subscription_check_every_secs: u64,
    /// How long a Graph API call may take before its outcome is unknown.
    pub graph_timeout_ms: u64,
    /// How long a client may take to send a request body (slow-loris guard).
    pub body_timeout_ms: u64,
    /// Dispatch gives up on an item this long after it was recorded (dead letter).
    pub dispatch_dead_letter_after_secs: u64,
    /// Sends per second per page (token bucket), and the bucket's size.
    pub send_rate_per_second: f64,
    pub send_burst: f64,
    /// Attempts per send when Meta throttles or fails before sending.
    pub send_max_attempts: u32,
    /// Base of the exponential backoff between those attempts.
    pub send_backoff_ms: u64,
    /// At a stop, how long Baton keeps accepting connections (answering
    /// every new request 503 "stopping") before it closes its listener.
    pub stop_grace_ms: u64,
    /// Where the event log lives: sled in `data_dir` (the default) or
    /// PostgreSQL.
    pub store: StoreSetting,
    /// The pages this node's shard decides for (every page, on sled or
    /// when no page names a shard).
    pub pages: BTreeMap<PageId, (String, Page)>,
    /// Pages configured with another shard: this node records nothing of
    /// theirs and routes their calls and webhooks to that shard's owner
    /// (`docs/scale-out.md`).
    pub elsewhere: BTreeMap<PageId, Elsewhere>,
    pub apps: BTreeMap<AppId, AppConfig>,
    /// Days each page keeps personal content (0: forever); see
    /// `docs/privacy.md`.
    pub content_retention_days: BTreeMap<PageId, u32>,
}

impl Config {
    /// Reads and checks a TOML file; secrets given as `{ env = "NAME" }` come
    /// from the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), |name| {
            std::env::var(name).ok()
        })
    }

    /// Parses TOML text; `env` resolves `{ env = "NAME" }` secrets.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        let listen: SocketAddr = raw.listen.parse().map_err(|e| {
            invalid(
                "listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8080 ({e})",
                    raw.listen
                ),
            )
        })?;
        if raw.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be greater than 0"));
        }
        let secret = |field: String, source: &SecretSource| -> Result<Secret, ConfigError> {
            match source {
                SecretSource::Inline(v) if v.is_empty() => Err(invalid(field, "is empty")),
                SecretSource::Inline(v) => Ok(Secret::new(v.clone())),
                SecretSource::Env { env: name } => match env(name) {
                    Some(v) if !v.is_empty() => Ok(Secret::new(v)),
                    _ => Err(invalid(
                        field,
                        format!("environment variable {name} is not set"),
                    )),
                },
            }
        };

        let mut apps = BTreeMap::new();
        for (i, a) in raw.apps.iter().enumerate() {
            let f = |name: &str| format!("apps[{i}].{name}");
            let id = AppId::parse(a.id.clone()).map_err(|e| invalid(f("id"), e.to_string()))?;
            if apps.contains_key(&id) {
                return Err(invalid(f("id"), format!("app {id} is configured twice")));
            }
            let mut profile = AppProfile::new(id.clone(), a.kind, a.management);
            profile.may_take_control = a.may_take_control;
            let managed = match a.management {
                Management::External => None,
                Management::Managed => {
                    let need =
                        |name: &str, v: &Option<SecretSource>| -> Result<Secret, ConfigError> {
                            match v {
                                Some(s) => secret(f(name), s),
                                None => Err(invalid(f(name), "is required for a managed app")),
                            }
                        };
                    let graph_base_url = a.graph_base_url.clone().ok_or_else(|| {
                        invalid(f("graph_base_url"), "is required for a managed app")
                    })?;
                    check_url(&f("graph_base_url"), &graph_base_url)?;
                    if let Some(url) = &a.backend_url {
                        check_url(&f("backend_url"), url)?;
                    }
                    let mut page_tokens = BTreeMap::new();
                    for (page, token) in &a.page_tokens {
                        let field = f(&format!("page_tokens.{page}"));
                        let page = PageId::parse(page.clone())
                            .map_err(|e| invalid(field.clone(), e.to_string()))?;
                        page_tokens.insert(page, secret(field, token)?);
                    }
                    let app_secret = need("app_secret", &a.app_secret)?;
                    let forward_secret = match (&a.forward_secret, &a.backend_url) {
                        (Some(s), _) => Some(secret(f("forward_secret"), s)?),
                        (None, Some(_)) => {
                            return Err(invalid(
                                f("forward_secret"),
                                "is required with a backend_url: Baton signs what it forwards with it, never with Meta's app secret",
                            ))
                        }
                        (None, None) => None,
                    };
                    if forward_secret
                        .as_ref()
                        .is_some_and(|fs| fs.expose() == app_secret.expose())
                    {
                        return Err(invalid(
                            f("forward_secret"),
                            "must differ from app_secret: a backend holding it could sign webhooks Baton accepts as Meta's",
                        ));
                    }
                    Some(ManagedApp {
                        app_secret,
                        forward_secret,
                        verify_token: need("verify_token", &a.verify_token)?,
                        api_token: need("api_token", &a.api_token)?,
                        graph_base_url,
                        backend_url: a.backend_url.clone(),
                        page_tokens,
                        may_set_messenger_profile: a.may_set_messenger_profile,
                    })
                }
            };
            apps.insert(
                id.clone(),
                AppConfig {
                    id,
                    name: a.name.clone(),
                    profile,
                    managed,
                },
            );
        }

        let mut pages = BTreeMap::new();
        let mut retention = BTreeMap::new();
        let mut shards = BTreeMap::new();
        for (i, p) in raw.pages.iter().enumerate() {
            let f = |name: &str| format!("pages[{i}].{name}");
            let id = PageId::parse(p.id.clone()).map_err(|e| invalid(f("id"), e.to_string()))?;
            if pages.contains_key(&id) {
                return Err(invalid(f("id"), format!("page {id} is configured twice")));
            }
            let mut profiles = Vec::new();
            for (j, app) in p.apps.iter().enumerate() {
                let field = f(&format!("apps[{j}]"));
                let app =
                    AppId::parse(app.clone()).map_err(|e| invalid(field.clone(), e.to_string()))?;
                let Some(config) = apps.get(&app) else {
                    return Err(invalid(
                        field,
                        format!("app {app} is not defined in [[apps]]"),
                    ));
                };
                if let Some(m) = &config.managed {
                    if !m.page_tokens.contains_key(&id) {
                        return Err(invalid(
                            format!("apps.{app}.page_tokens"),
                            format!("managed app {app} is on page {id} but has no page access token for it"),
                        ));
                    }
                }
                profiles.push(config.profile.clone());
            }
            let on_page = |field: String, app: &str| -> Result<AppId, ConfigError> {
                let id = AppId::parse(app.to_owned())
                    .map_err(|e| invalid(field.clone(), e.to_string()))?;
                if !p.apps.iter().any(|a| a == app) && !id.is_page_inbox() {
                    return Err(invalid(
                        field,
                        format!("app {id} is not listed in this page's apps"),
                    ));
                }
                Ok(id)
            };
            let mode = match &p.routing {
                RawRouting::ConversationRouting { default_app } => {
                    RoutingMode::ConversationRouting {
                        default_app: on_page(f("routing.default_app"), default_app)?,
                    }
                }
                RawRouting::ZeroConfig => RoutingMode::ZeroConfig,
                RawRouting::HandoverV1 {
                    primary,
                    secondaries,
                } => RoutingMode::HandoverV1 {
                    primary: on_page(f("routing.primary"), primary)?,
                    secondaries: secondaries
                        .iter()
                        .enumerate()
                        .map(|(k, s)| on_page(f(&format!("routing.secondaries[{k}]")), s))
                        .collect::<Result<_, _>>()?,
                },
            };
            retention.insert(
                id.clone(),
                p.content_retention_days
                    .unwrap_or(raw.content_retention_days),
            );
            if let Some(shard) = p.shard {
                shards.insert(id.clone(), (f("shard"), shard));
            }
            pages.insert(id.clone(), (p.name.clone(), Page::new(id, mode, profiles)));
        }
        // Tokens identify callers: two apps (or an app and the admin) must never share one.
        let mut tokens: Vec<(&str, String)> = apps
            .values()
            .filter_map(|a: &AppConfig| {
                Some((
                    a.managed.as_ref()?.api_token.expose(),
                    format!("apps.{}.api_token", a.id),
                ))
            })
            .collect();
        tokens.sort();
        if let Some(w) = tokens.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(invalid(
                w[1].1.clone(),
                format!("is the same token as {}: every app needs its own", w[0].1),
            ));
        }
        let optional = |name: &str, v: &Option<SecretSource>| match v {
            Some(s) => secret(name.to_owned(), s).map(Some),
            None => Ok(None),
        };
        let admin_token = optional("admin_token", &raw.admin_token)?;
        let auditor_token = optional("auditor_token", &raw.auditor_token)?;
        let metrics_token = optional("metrics_token", &raw.metrics_token)?;
        for (name, token) in [
            ("admin_token", &admin_token),
            ("auditor_token", &auditor_token),
            ("metrics_token", &metrics_token),
        ] {
            let Some(token) = token else { continue };
            if let Some((_, field)) = tokens.iter().find(|(t, _)| *t == token.expose()) {
                return Err(invalid(name, format!("is the same token as {field}")));
            }
            tokens.push((token.expose(), name.to_owned()));
        }
        let networks = |name: &str, list: &[String]| -> Result<Vec<Network>, ConfigError> {
            list.iter()
                .map(|n| Network::parse(n).map_err(|e| invalid(name, e)))
                .collect()
        };
        let webhook_source_networks =
            networks("webhook_source_networks", &raw.webhook_source_networks)?;
        let trusted_proxies = networks("trusted_proxies", &raw.trusted_proxies)?;
        if raw.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if raw.app_requests_per_second.is_nan() || raw.app_requests_per_second <= 0.0 {
            return Err(invalid("app_requests_per_second", "must be greater than 0"));
        }
        if raw.graph_timeout_ms == 0 {
            return Err(invalid("graph_timeout_ms", "must be greater than 0"));
        }
        if raw.send_rate_per_second.is_nan() || raw.send_rate_per_second <= 0.0 {
            return Err(invalid("send_rate_per_second", "must be greater than 0"));
        }
        if raw.send_burst.is_some_and(|b| b < 1.0) {
            return Err(invalid("send_burst", "must be at least 1"));
        }
        if raw.send_max_attempts == 0 {
            return Err(invalid("send_max_attempts", "must be at least 1"));
        }
        let store = match &raw.store {
            RawStore::Sled => StoreSetting::Sled,
            RawStore::Postgres(pg) => StoreSetting::Postgres(postgres_setting(pg, &env)?),
        };
        if let StoreSetting::Postgres(pg) = &store {
            if pg.advertise_url.is_none() && listen.ip().is_unspecified() {
                return Err(invalid(
                    "store.postgres.advertise_url",
                    format!(
                        "is required when listen ({listen}) is a wildcard address: \
                         the other nodes route calls to this URL"
                    ),
                ));
            }
        }
        let elsewhere = split_by_shard(&store, shards, &mut pages, &mut apps)?;
        retention.retain(|page, _| !elsewhere.contains_key(page));
        Ok(Config {
            listen,
            send_rate_per_second: raw.send_rate_per_second,
            send_burst: raw.send_burst.unwrap_or(raw.send_rate_per_second),
            send_max_attempts: raw.send_max_attempts,
            send_backoff_ms: raw.send_backoff_ms,
            stop_grace_ms: raw.stop_grace_ms,
            data_dir: raw.data_dir,
            log_format: raw.log_format,
            max_body_bytes: raw.max_body_bytes,
            max_attachment_bytes: raw.max_attachment_bytes,
            log_cache_bytes: raw.log_cache_bytes.max(1024 * 1024),
            admin_token,
            auditor_token,
            metrics_token,
            max_connections: raw.max_connections,
            app_requests_per_second: raw.app_requests_per_second,
            webhook_source_networks,
            trusted_proxies,
            checkpoint_key: raw.checkpoint_key,
            checkpoint_every_secs: raw.checkpoint_every_secs.max(1),
            snapshot_every_records: raw.snapshot_every_records,
            reconcile_every_secs: raw.reconcile_every_secs.max(1),
            reconcile_calls_per_page_per_hour: raw.reconcile_calls_per_page_per_hour,
            subscription_check_every_secs: raw.subscription_check_every_secs,
            graph_timeout_ms: raw.graph_timeout_ms,
            body_timeout_ms: raw.body_timeout_ms.max(1),
            dispatch_dead_letter_after_secs: raw.dispatch_dead_letter_after_secs.max(1),
            store,
            pages,
            elsewhere,
            apps,
            content_retention_days: retention,
        })
    }

    /// The sled log's directory: `<data_dir>/log`.
    pub fn sled_log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    /// How to open the PostgreSQL store, when `store` names it: the URL
    /// and shard from the setting (the content keys are in the database).
    pub fn postgres_store_config(&self) -> Option<event_log::PgStoreConfig> {
        let StoreSetting::Postgres(pg) = &self.store else {
            return None;
        };
        Some(pg.store_config())
    }

    pub fn managed(&self, app: &AppId) -> Option<(&AppConfig, &ManagedApp)> {
        let config = self.apps.get(app)?;
        Some((config, config.managed.as_ref()?))
    }

    pub fn page(&self, id: &PageId) -> Option<&Page> {
        self.pages.get(id).map(|(_, p)| p)
    }
}

/// Takes the pages another shard decides for out of `pages` (and their
/// tokens out of the apps), as the pages' `shard` settings say. A page names
/// its shard only on PostgreSQL, and then every page must: a page without
/// one would be decided in every shard.
fn split_by_shard(
    store: &StoreSetting,
    shards: BTreeMap<PageId, (String, i32)>,
    pages: &mut BTreeMap<PageId, (String, Page)>,
    apps: &mut BTreeMap<AppId, AppConfig>,
) -> Result<BTreeMap<PageId, Elsewhere>, ConfigError> {
    let Some((field, _)) = shards.values().next() else {
        return Ok(BTreeMap::new());
    };
    let StoreSetting::Postgres(pg) = store else {
        return Err(invalid(
            field.clone(),
            "pages are spread over shards only on store = { postgres = … }: \
             the embedded log serves one node",
        ));
    };
    if let Some((_, (field, _))) = shards.iter().find(|(_, (_, shard))| *shard < 0) {
        return Err(invalid(field.clone(), "must be 0 or more"));
    }
    if let Some(page) = pages.keys().find(|id| !shards.contains_key(*id)) {
        return Err(invalid(
            format!("pages.{page}.shard"),
            "is missing: other pages name their shard, so every page must \
             (a page without one would be decided in every shard)",
        ));
    }
    let mut elsewhere = BTreeMap::new();
    for (id, (_, shard)) in shards {
        if shard == pg.shard {
            continue;
        }
        let Some((_, page)) = pages.remove(&id) else {
            continue;
        };
        elsewhere.insert(
            id,
            Elsewhere {
                shard,
                apps: page.apps.keys().cloned().collect(),
            },
        );
    }
    for app in apps.values_mut() {
        if let Some(managed) = &mut app.managed {
            managed
                .page_tokens
                .retain(|page, _| !elsewhere.contains_key(page));
        }
    }
    Ok(elsewhere)
}

/// The PostgreSQL setting, its URL read from the environment. The URL is
/// never echoed in an error: it may hold a password.
fn postgres_setting(
    raw: &RawPostgres,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<PostgresSetting, ConfigError> {
    const URL: &str = "store.postgres.url";
    let name = match &raw.url {
        SecretSource::Env { env } => env,
        SecretSource::Inline(_) => {
            return Err(invalid(
                URL,
                "must come from the environment, as { env = \"BATON_DATABASE_URL\" }: \
                 the URL holds the database password, which has no place in the file",
            ))
        }
    };
    if name.is_empty() {
        return Err(invalid(URL, "names an empty environment variable"));
    }
    let url = match env(name) {
        Some(v) if !v.is_empty() => v,
        _ => {
            return Err(invalid(
                URL,
                format!("environment variable {name} is not set"),
            ))
        }
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid(
            URL,
            format!("environment variable {name} does not hold a postgres:// URL"),
        ));
    }
    if raw.shard < 0 {
        return Err(invalid("store.postgres.shard", "must be 0 or more"));
    }
    if !(300..=600_000).contains(&raw.lease_ms) {
        return Err(invalid(
            "store.postgres.lease_ms",
            "must be between 300 (0.3 s) and 600000 (10 min)",
        ));
    }
    if let Some(advertise) = &raw.advertise_url {
        check_url("store.postgres.advertise_url", advertise)?;
    }
    Ok(PostgresSetting {
        url: Secret::new(url),
        url_env: name.clone(),
        shard: raw.shard,
        lease_ms: raw.lease_ms,
        advertise_url: raw.advertise_url.clone(),
        node_id: match &raw.node_id {
            Some(id) if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) => {
                return Err(invalid(
                    "store.postgres.node_id",
                    "must be 1 to 200 printable characters",
                ))
            }
            other => other.clone(),
        },
    })
}

fn check_url(field: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{url:?} is not an http:// or https:// URL"),
        ))
    }
}

#[cfg(test)]
mod tests;

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Result<Network, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|e| format!("{text:?} is not an IP network: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0..={max}"))?,
        };
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}
