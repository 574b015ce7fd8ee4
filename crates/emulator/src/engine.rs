//! The emulated Meta: pages, apps, threads, ownership rules, the Send API
//! checks, webhook routing, the clock, faults and the logs.
//!
//! Everything here is synchronous and runs under one lock; it never touches a
//! socket. Webhooks leave as [`Planned`] values that the delivery worker sends.
//! The rules follow Meta's documentation (see `docs/emulator.md`), not Baton's
//! `domain` crate, on purpose.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use crate::api::{
    AttachmentView, CallRecord, ClockView, DataDeletionResult, DeliveryAttempt, FaultSpec,
    FaultView, NewPerson, OtnTokenView, Person, Referral, ReleaseOrder, ThreadView, TranscriptLine,
    UserComment, UserMessage, UserPostback, UserReaction, UserReceipt,
};
use crate::delivery::Delivery;
use crate::world::{
    normalize_field, AppConfig, PageConfig, Routing, WebhookSettings, World, PAGE_INBOX_APP_ID,
};

pub(crate) const DAY_MS: i64 = 86_400_000;
const HUMAN_AGENT_MS: i64 = 7 * DAY_MS;
const MAX_EXTEND_SECONDS: i64 = 7 * 86_400;
const OTN_LIFETIME_MS: i64 = 365 * DAY_MS;
/// 2026-04-27T00:00:00Z: CONFIRMED_EVENT_UPDATE, POST_PURCHASE_UPDATE and
/// ACCOUNT_UPDATE answer error 100 from then on.
pub(crate) const TAGS_RETIRED_MS: i64 = 1_777_248_000_000;
const RETIRED_2026_TAGS: &[&str] = &[
    "CONFIRMED_EVENT_UPDATE",
    "POST_PURCHASE_UPDATE",
    "ACCOUNT_UPDATE",
];
/// The News Messaging tag: no emulated page has that permission (10/2018065).
const NEWS_TAG: &str = "NON_PROMOTIONAL_SUBSCRIPTION";
/// Meta's attachment limit, "25 MB", taken as 25 MiB.
pub(crate) const MAX_ATTACHMENT_BYTES: u64 = 25 * 1024 * 1024;
const ATTACHMENT_TYPES: &[&str] = &["image", "video", "audio", "file"];
/// Attachment ids are numeric strings, like Meta's: this plus a sequence.
const ATTACHMENT_ID_BASE: u64 = 1_000_000_000_000_000;
/// A private reply must come within 7 days of the comment.
const PRIVATE_REPLY_MS: i64 = 7 * DAY_MS;
/// `metadata` of `pass_thread_metadata` must be shorter than this (chars).
const MAX_METADATA_CHARS: usize = 1000;
/// The Messenger Profile properties the emulator knows.
const PROFILE_PROPERTIES: &[&str] = &[
    "get_started",
    "greeting",
    "persistent_menu",
    "ice_breakers",
    "whitelisted_domains",
    "account_linking_url",
    "home_url",
    "commands",
    "title",
    "description",
];

/// Which array of a webhook entry an item goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    Messaging,
    Standby,
}

impl Channel {
    pub(crate) fn key(self) -> &'static str {
        match self {
            Channel::Messaging => "messaging",
            Channel::Standby => "standby",
        }
    }
}

/// A webhook item bound for one app, not yet sent.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    pub app_id: String,
    pub page_id: String,
    pub channel: Channel,
    pub item: Value,
}

/// A Graph API error, rendered as Meta's error JSON.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GraphError {
    pub status: u16,
    /// The error `type`: `OAuthException` unless said otherwise.
    pub type_: &'static str,
    pub code: i64,
    pub subcode: Option<i64>,
    pub message: String,
    pub transient: bool,
}

/// Meta's answer to a token it invalidated (190/460).
const SESSION_INVALIDATED: &str = "Error validating access token: The session has been invalidated because the user changed their password or Facebook has changed the session for security reasons.";

impl GraphError {
    pub(crate) fn new(code: i64, subcode: Option<i64>, message: &str) -> Self {
        let message = if code == 190 || code == 2 {
            message.to_string()
        } else {
            format!("(#{code}) {message}")
        };
        GraphError {
            status: 400,
            type_: "OAuthException",
            code,
            subcode,
            message,
            transient: false,
        }
    }

    /// 100/33 for an object the caller may not see, as Meta words it for a
    /// node: a `GraphMethodException` without the `(#100)` prefix.
    fn no_object(method: &str, id: &str) -> Self {
        GraphError {
            type_: "GraphMethodException",
            message: format!(
                "Unsupported {} request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation",
                method.to_lowercase()
            ),
            ..Self::new(100, Some(33), "")
        }
    }

    fn param(message: &str) -> Self {
        Self::new(100, None, message)
    }

    fn not_owner() -> Self {
        Self::new(
            100,
            Some(2_534_037),
            "The action is invalid because the calling app is not the thread owner",
        )
    }

    pub(crate) fn to_json(&self, trace: &str) -> Value {
        let mut e = Map::new();
        e.insert("message".into(), json!(self.message));
        e.insert("type".into(), json!(self.type_));
        e.insert("code".into(), json!(self.code));
        if let Some(s) = self.subcode {
            e.insert("error_subcode".into(), json!(s));
        }
        if self.transient {
            e.insert("is_transient".into(), json!(true));
        }
        e.insert("fbtrace_id".into(), json!(trace));
        json!({ "error": e })
    }
}

/// A Graph call without a token (104).
fn missing_token() -> GraphError {
    GraphError::new(
        104,
        None,
        "An access token is required to request this resource.",
    )
}

/// A take or request by the app that already holds the thread (100).
fn already_owner() -> GraphError {
    GraphError::param("The calling app already controls this thread")
}

fn bad(m: impl Into<String>) -> ControlError {
    ControlError::BadRequest(m.into())
}

/// A callback URL must be http(s).
fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(format!("{url:?} is not an http(s) URL"))
    }
}

/// A data-deletion callback ready to send.
#[derive(Clone, Debug)]
pub(crate) struct DataDeletionCall {
    pub app_id: String,
    pub url: String,
    pub signed_request: String,
}

/// Why a control API call failed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ControlError {
    NotFound(String),
    BadRequest(String),
    /// A Meta rule refused the action (e.g. Page Inbox "done" on a thread it
    /// does not own).
    Refused(GraphError),
}

/// A handover notification to one app.
#[derive(Clone, Debug)]
enum Notice {
    Pass {
        to: String,
        previous: Option<String>,
        new: String,
        metadata: Option<String>,
    },
    Take {
        to: String,
        previous: Option<String>,
        new: String,
        metadata: Option<String>,
    },
    Request {
        to: String,
        requester: String,
        metadata: Option<String>,
    },
}

#[derive(Clone, Debug, Default)]
struct Thread {
    owner: Option<String>,
    expires_at_ms: Option<i64>,
    last_user_action_ms: Option<i64>,
    ads_window_until_ms: Option<i64>,
    /// The user clicked a Click-to-Messenger ad (a referral or postback with
    /// `source: ADS`) and has not written since.
    ad_clicked: bool,
}

impl Thread {
    fn expire(&mut self, now: i64) -> bool {
        match self.expires_at_ms {
            Some(at) if at <= now && self.owner.is_some() => {
                self.owner = None;
                self.expires_at_ms = None;
                true
            }
            _ => false,
        }
    }

    fn window_open(&self, now: i64) -> bool {
        self.last_user_action_ms.is_some_and(|t| now - t < DAY_MS)
            || self.ads_window_until_ms.is_some_and(|u| now < u)
    }
}

#[derive(Clone, Debug)]
struct OtnToken {
    page_id: String,
    psid: String,
    payload: String,
    created_ms: i64,
    used: bool,
}

#[derive(Clone, Debug)]
struct UserRef {
    psid: String,
    used: bool,
}

/// A user's comment on a Page post, which the page may answer once with a
/// private reply.
#[derive(Clone, Debug)]
struct Comment {
    page_id: String,
    psid: String,
    created_ms: i64,
    /// The `mid` of the private reply, once sent.
    replied: Option<String>,
}

/// The `filedata` part of a multipart Graph request, already hashed.
#[derive(Clone, Debug)]
pub(crate) struct FilePart {
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub bytes: u64,
    /// Lowercase hex SHA-256; empty when the file is over the limit.
    pub sha256: String,
}

/// Why a Graph request body could not be used.
#[derive(Clone, Debug)]
pub(crate) enum BodyError {
    /// Over the body limit (a 25 MB file plus the form).
    TooLarge,
    /// A `multipart/form-data` body that does not parse.
    Multipart(String),
}

/// What a Graph call needs, already parsed from HTTP.
#[derive(Clone, Debug)]
pub(crate) struct GraphRequest {
    pub method: String,
    pub path: String,
    pub node: String,
    pub edge: Option<String>,
    pub token: Option<String>,
    pub params: Map<String, Value>,
    /// The `filedata` part of a multipart body.
    pub file: Option<FilePart>,
    pub body_error: Option<BodyError>,
}

/// How a held answer is released.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Hold {
    For(u64),
    UntilRelease,
}

/// What a Graph call produced.
#[derive(Debug)]
pub(crate) struct GraphOutcome {
    pub status: u16,
    pub body: Value,
    pub planned: Vec<Planned>,
    pub hold: Option<Hold>,
}

#[derive(Clone, Debug)]
struct ActiveFault {
    id: u64,
    remaining: u32,
    spec: FaultSpec,
}

/// A webhook fault picked for one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WebhookFault {
    Drop,
    Duplicate,
    Hold,
}

/// The whole emulated platform.
#[derive(Debug)]
pub(crate) struct Engine {
    pages: BTreeMap<String, PageConfig>,
    apps: BTreeMap<String, AppConfig>,
    /// page token → (app, page).
    tokens: HashMap<String, (String, String)>,
    /// Page tokens Meta invalidated: every Graph call with one answers
    /// 190/460. A revoked token stays revoked, even if configured again.
    revoked: BTreeSet<String>,
    /// (page, app) → the fields the app is subscribed to on that page. An
    /// empty set is an app that unsubscribed or that Meta unsubscribed; it
    /// is kept so that a rebuild does not subscribe it again.
    subs: BTreeMap<(String, String), BTreeSet<String>>,
    /// person id → the person's PSIDs and ASIDs (the ID Matching API).
    people: BTreeMap<String, Person>,
    threads: BTreeMap<(String, String), Thread>,
    /// (page, PSID) → the thread's messages, kept apart from [`Thread`],
    /// which a call copies to change and stores back whole: a transcript
    /// only grows, once a call can no longer fail.
    transcripts: BTreeMap<(String, String), Vec<TranscriptLine>>,
    otn: BTreeMap<String, OtnToken>,
    user_refs: BTreeMap<(String, String), UserRef>,
    /// Pages Meta's policy enforcement blocked from sending, with the reason.
    blocked: BTreeMap<String, Option<String>>,
    /// page → its Messenger Profile (one object, shared by every app).
    profiles: BTreeMap<String, Map<String, Value>>,
    /// attachment id → what was uploaded.
    attachments: BTreeMap<String, AttachmentView>,
    /// comment id → the comment.
    comments: BTreeMap<String, Comment>,
    /// The control clock: only the control API moves it.
    control_ms: i64,
    /// Meta's clock minus the control clock.
    skew_ms: i64,
    seq: u64,
    calls: Vec<CallRecord>,
    attempts: Vec<DeliveryAttempt>,
    faults: Vec<ActiveFault>,
    /// Deliveries kept by `webhook_hold` faults, oldest first.
    held: Vec<Delivery>,
    pub(crate) batch: Option<Vec<Planned>>,
    pub(crate) settings: WebhookSettings,
}

type Answer = Result<(Value, Vec<Planned>), GraphError>;

fn param_str(p: &Map<String, Value>, key: &str) -> Option<String> {
    match p.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An object parameter, given as JSON or as a JSON-encoded string (form style).
fn param_obj(p: &Map<String, Value>, key: &str) -> Option<Map<String, Value>> {
    match p.get(key)? {
        Value::Object(o) => Some(o.clone()),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => Some(o),
            _ => None,
        },
        _ => None,
    }
}

/// `recipient` as `{id}` (object or JSON string) or a bare PSID.
fn recipient_psid(p: &Map<String, Value>) -> Option<String> {
    if let Some(o) = param_obj(p, "recipient") {
        return param_str(&o, "id");
    }
    param_str(p, "recipient").filter(|s| !s.is_empty())
}

/// App ids are numbers in Meta's echo samples; keep non-numeric ids strings.
fn id_value(id: &str) -> Value {
    match id.parse::<u64>() {
        Ok(n) if !id.starts_with('0') || id == "0" => json!(n),
        _ => json!(id),
    }
}

fn referral_json(r: &Referral) -> Value {
    let mut m = Map::new();
    if let Some(x) = &r.ref_ {
        m.insert("ref".into(), json!(x));
    }
    m.insert(
        "source".into(),
        json!(r.source.clone().unwrap_or_else(|| "SHORTLINK".into())),
    );
    m.insert(
        "type".into(),
        json!(r.type_.clone().unwrap_or_else(|| "OPEN_THREAD".into())),
    );
    if let Some(x) = &r.ad_id {
        m.insert("ad_id".into(), json!(x));
    }
    Value::Object(m)
}

/// A referral from a Click-to-Messenger ad.
fn is_ad(r: Option<&Referral>) -> bool {
    r.and_then(|r| r.source.as_deref()) == Some("ADS")
}

fn field_for(event_key: &str) -> &'static str {
    match event_key {
        "message" => "messages",
        "echo" => "message_echoes",
        "postback" => "messaging_postbacks",
        "read" => "message_reads",
        "delivery" => "message_deliveries",
        "optin" => "messaging_optins",
        "referral" => "messaging_referrals",
        "reaction" => "message_reactions",
        _ => "messaging_handovers",
    }
}

impl Engine {
    pub(crate) fn new(world: World) -> Result<Engine, crate::EmulatorError> {
        let mut e = Engine {
            pages: BTreeMap::new(),
            apps: BTreeMap::new(),
            tokens: HashMap::new(),
            revoked: BTreeSet::new(),
            subs: BTreeMap::new(),
            people: BTreeMap::new(),
            threads: BTreeMap::new(),
            transcripts: BTreeMap::new(),
            otn: BTreeMap::new(),
            user_refs: BTreeMap::new(),
            blocked: BTreeMap::new(),
            profiles: BTreeMap::new(),
            attachments: BTreeMap::new(),
            comments: BTreeMap::new(),
            control_ms: world.epoch_ms,
            skew_ms: 0,
            seq: 0,
            calls: Vec::new(),
            attempts: Vec::new(),
            faults: Vec::new(),
            held: Vec::new(),
            batch: None,
            settings: world.webhooks.clone(),
        };
        let mut inbox = AppConfig::new(PAGE_INBOX_APP_ID, "");
        inbox.name = "Page Inbox".into();
        inbox.may_take = true;
        inbox.human_agent = true;
        e.apps.insert(inbox.id.clone(), inbox);
        for app in world.apps {
            e.put_app(app)?;
        }
        for page in world.pages {
            e.put_page(page)?;
        }
        Ok(e)
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Meta's clock (the control clock plus the skew): what every rule and
    /// every timestamp Meta writes uses.
    pub(crate) fn now(&self) -> i64 {
        self.control_ms.saturating_add(self.skew_ms)
    }

    /// The control clock.
    pub(crate) fn control_now(&self) -> i64 {
        self.control_ms
    }

    // ----- world ---------------------------------------------------------

    pub(crate) fn put_page(&mut self, page: PageConfig) -> Result<(), crate::EmulatorError> {
        if page.id.is_empty() {
            return Err(crate::EmulatorError::Config("page id is empty".into()));
        }
        self.pages.insert(page.id.clone(), page);
        self.rebuild();
        Ok(())
    }

    pub(crate) fn put_app(&mut self, app: AppConfig) -> Result<(), crate::EmulatorError> {
        if app.id.is_empty() {
            return Err(crate::EmulatorError::Config("app id is empty".into()));
        }
        if let Some(url) = app.data_deletion_url.as_deref() {
            check_url(url).map_err(crate::EmulatorError::Config)?;
        }
        let id = app.id.clone();
        self.apps.insert(id.clone(), app);
        self.subs.retain(|(_, a), _| a != &id);
        self.rebuild();
        Ok(())
    }

    pub(crate) fn has_app(&self, app_id: &str) -> bool {
        self.apps.contains_key(app_id)
    }

    pub(crate) fn set_callback(&mut self, app_id: &str, url: Option<String>) -> bool {
        match self.apps.get_mut(app_id) {
            Some(app) => {
                app.callback_url = url;
                true
            }
            None => false,
        }
    }

    // ----- identity, data deletion, subscriptions, tokens -------------------

    /// Registers a person with their PSIDs (page → psid) and ASIDs
    /// (app → asid). Every page and app must exist, no id may be empty, and
    /// no id may already belong to someone else on that page or app.
    pub(crate) fn register_person(&mut self, p: NewPerson) -> Result<Person, ControlError> {
        if p.psids.is_empty() && p.asids.is_empty() {
            return Err(bad("a person needs at least one psid or asid"));
        }
        for (page, psid) in &p.psids {
            if !self.pages.contains_key(page) {
                return Err(bad(format!("no page {page}")));
            }
            if psid.trim().is_empty() {
                return Err(bad(format!("the psid on page {page} is empty")));
            }
            if let Some(o) = self
                .people
                .values()
                .find(|o| o.psids.get(page) == Some(psid))
            {
                return Err(bad(format!(
                    "psid {psid} on page {page} already belongs to {}",
                    o.id
                )));
            }
        }
        for (app, asid) in &p.asids {
            if !self.apps.contains_key(app) {
                return Err(bad(format!("no app {app}")));
            }
            if asid.trim().is_empty() {
                return Err(bad(format!("the asid in app {app} is empty")));
            }
            if let Some(o) = self
                .people
                .values()
                .find(|o| o.asids.get(app) == Some(asid))
            {
                return Err(bad(format!(
                    "asid {asid} in app {app} already belongs to {}",
                    o.id
                )));
            }
        }
        let person = Person {
            id: format!("person_{}", self.next_seq()),
            psids: p.psids,
            asids: p.asids,
        };
        self.people.insert(person.id.clone(), person.clone());
        Ok(person)
    }

    /// The person `app_id` knows by `asid`.
    fn person_by_asid(&self, app_id: &str, asid: &str) -> Option<&Person> {
        self.people
            .values()
            .find(|p| p.asids.get(app_id).is_some_and(|a| a == asid))
    }

    /// Sets (`None`: removes) an app's data-deletion callback URL.
    pub(crate) fn set_data_deletion_url(
        &mut self,
        app_id: &str,
        url: Option<String>,
    ) -> Result<(), ControlError> {
        let app = self
            .apps
            .get_mut(app_id)
            .ok_or_else(|| ControlError::NotFound(format!("no app {app_id}")))?;
        if let Some(u) = &url {
            check_url(u).map_err(ControlError::BadRequest)?;
        }
        app.data_deletion_url = url;
        Ok(())
    }

    /// What Meta sends when the person known to `app_id` as `asid` asks to
    /// delete their data: a `signed_request` for the app's data-deletion
    /// callback, issued at Meta's clock (in seconds).
    pub(crate) fn data_deletion(
        &self,
        app_id: &str,
        asid: &str,
    ) -> Result<DataDeletionCall, ControlError> {
        let app = self
            .apps
            .get(app_id)
            .ok_or_else(|| bad(format!("no app {app_id}")))?;
        let url = app
            .data_deletion_url
            .clone()
            .ok_or_else(|| bad(format!("app {app_id} has no data_deletion_url")))?;
        if self.person_by_asid(app_id, asid).is_none() {
            return Err(bad(format!(
                "app {app_id} knows no person with asid {asid}"
            )));
        }
        let payload = json!({
            "algorithm": "HMAC-SHA256",
            "expires": 0,
            "issued_at": self.now().div_euclid(1000),
            "user_id": asid,
        });
        Ok(DataDeletionCall {
            app_id: app_id.to_string(),
            url,
            signed_request: crate::delivery::signed_request(&app.secret, &payload.to_string()),
        })
    }

    /// Logs a data-deletion callback in the call log: `endpoint`
    /// `data_deletion_callback`, `path` the URL, `status` 0 and `response`
    /// `{"error"}` when no answer came back.
    pub(crate) fn record_data_deletion(
        &mut self,
        call: &DataDeletionCall,
        result: &DataDeletionResult,
    ) {
        let seq = self.next_seq();
        self.calls.push(CallRecord {
            seq,
            at_ms: self.now(),
            method: "POST".into(),
            path: call.url.clone(),
            endpoint: "data_deletion_callback".into(),
            app_id: Some(call.app_id.clone()),
            page_id: None,
            params: json!({ "signed_request": call.signed_request }),
            status: result.status.unwrap_or(0),
            response: match &result.error {
                Some(e) if result.status.is_none() => json!({ "error": e }),
                _ => result.body.clone(),
            },
            fault: None,
        });
    }

    /// Meta drops `app_id`'s subscription to `page_id`, as after an hour of
    /// failed webhooks: the app gets no webhook for that page until it
    /// subscribes again (`POST subscribed_apps`, or `POST /_emulator/apps`).
    pub(crate) fn unsubscribe(&mut self, app_id: &str, page_id: &str) -> Result<(), ControlError> {
        if !self.apps.contains_key(app_id) {
            return Err(ControlError::NotFound(format!("no app {app_id}")));
        }
        if !self.pages.contains_key(page_id) {
            return Err(bad(format!("no page {page_id}")));
        }
        if !self.connected(page_id).contains(app_id) {
            return Err(bad(format!(
                "app {app_id} is not connected to page {page_id}"
            )));
        }
        self.subs
            .insert((page_id.to_string(), app_id.to_string()), BTreeSet::new());
        Ok(())
    }

    /// Meta invalidates `app_id`'s token for `page_id`: every Graph call
    /// with it answers 190/460 from now on.
    pub(crate) fn revoke_token(&mut self, app_id: &str, page_id: &str) -> Result<(), ControlError> {
        let app = self
            .apps
            .get(app_id)
            .ok_or_else(|| ControlError::NotFound(format!("no app {app_id}")))?;
        let token = app.page_tokens.get(page_id).ok_or_else(|| {
            ControlError::NotFound(format!("app {app_id} has no token for page {page_id}"))
        })?;
        self.revoked.insert(token.clone());
        Ok(())
    }

    /// The app an app access token `{app_id}|{app_secret}` stands for.
    fn app_token(&self, token: &str) -> Option<String> {
        let (id, secret) = token.split_once('|')?;
        let app = self.apps.get(id)?;
        (!app.secret.is_empty() && app.secret == secret).then(|| app.id.clone())
    }

    /// Rebuilds the token index and gives every connected (page, app) pair
    /// without a subscription the app's configured fields: an app with a
    /// callback is subscribed from the start, and so is one whose callback
    /// comes later. The Page Inbox gets no webhooks and is never subscribed.
    fn rebuild(&mut self) {
        self.tokens.clear();
        for app in self.apps.values() {
            for (page, token) in &app.page_tokens {
                self.tokens
                    .insert(token.clone(), (app.id.clone(), page.clone()));
            }
        }
        let pages: Vec<String> = self.pages.keys().cloned().collect();
        for page in pages {
            for app in self.connected(&page) {
                if app == PAGE_INBOX_APP_ID {
                    continue;
                }
                let fields = self.apps[&app]
                    .subscribed_fields
                    .iter()
                    .map(|f| normalize_field(f))
                    .collect();
                self.subs.entry((page.clone(), app)).or_insert(fields);
            }
        }
    }

    /// Apps connected to a page: those holding a token for it, those its
    /// routing names, and the Page Inbox.
    fn connected(&self, page_id: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        out.insert(PAGE_INBOX_APP_ID.to_string());
        for app in self.apps.values() {
            if app.page_tokens.contains_key(page_id) {
                out.insert(app.id.clone());
            }
        }
        if let Some(page) = self.pages.get(page_id) {
            match &page.routing {
                Routing::ConversationRouting { default_app } => {
                    out.insert(default_app.clone());
                }
                Routing::ZeroConfig => {}
                Routing::HandoverV1 {
                    primary,
                    secondaries,
                } => {
                    out.insert(primary.clone());
                    out.extend(secondaries.iter().cloned());
                }
            }
        }
        out.retain(|a| self.apps.contains_key(a));
        out
    }

    fn page(&self, page_id: &str) -> Result<PageConfig, ControlError> {
        self.pages
            .get(page_id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no page {page_id}")))
    }

    // ----- clock -----------------------------------------------------------

    pub(crate) fn clock(&self) -> ClockView {
        ClockView {
            now_ms: self.control_ms,
            skew_ms: self.skew_ms,
            meta_now_ms: self.now(),
            expired: Vec::new(),
        }
    }

    /// Sets the control clock; Meta's clock follows, skew included.
    pub(crate) fn set_clock(&mut self, now_ms: i64) -> ClockView {
        self.control_ms = now_ms;
        self.expire_all()
    }

    /// Sets Meta's clock to the control clock plus `skew_ms` from now on.
    pub(crate) fn set_skew(&mut self, skew_ms: i64) -> ClockView {
        self.skew_ms = skew_ms;
        self.expire_all()
    }

    /// Lapses the control that Meta's clock has passed.
    fn expire_all(&mut self) -> ClockView {
        let now = self.now();
        let mut expired = Vec::new();
        for ((page, psid), th) in self.threads.iter_mut() {
            if th.expire(now) {
                expired.push(format!("{page}/{psid}"));
            }
        }
        ClockView {
            expired,
            ..self.clock()
        }
    }

    // ----- faults ----------------------------------------------------------

    pub(crate) fn add_fault(&mut self, spec: FaultSpec) -> FaultView {
        let count = match &spec {
            FaultSpec::ServerError { count, .. }
            | FaultSpec::RateLimit { count, .. }
            | FaultSpec::GraphError { count, .. }
            | FaultSpec::Delay { count, .. }
            | FaultSpec::WebhookDrop { count, .. }
            | FaultSpec::WebhookDuplicate { count, .. }
            | FaultSpec::WebhookHold { count, .. } => *count,
        };
        let f = ActiveFault {
            id: self.next_seq(),
            remaining: count,
            spec,
        };
        self.faults.push(f.clone());
        FaultView {
            id: f.id,
            remaining: f.remaining,
            spec: f.spec,
        }
    }

    pub(crate) fn faults(&self) -> Vec<FaultView> {
        self.faults
            .iter()
            .map(|f| FaultView {
                id: f.id,
                remaining: f.remaining,
                spec: f.spec.clone(),
            })
            .collect()
    }

    pub(crate) fn clear_faults(&mut self) {
        self.faults.clear();
    }

    fn take_fault(&mut self, matches: impl Fn(&FaultSpec) -> bool) -> Option<FaultSpec> {
        let i = self
            .faults
            .iter()
            .position(|f| f.remaining > 0 && matches(&f.spec))?;
        self.faults[i].remaining -= 1;
        let spec = self.faults[i].spec.clone();
        if self.faults[i].remaining == 0 {
            self.faults.remove(i);
        }
        Some(spec)
    }

    fn take_graph_fault(&mut self, endpoint: &str) -> Option<FaultSpec> {
        let hit = |e: &Option<String>| e.as_deref().is_none_or(|e| e == endpoint);
        self.take_fault(|s| match s {
            FaultSpec::ServerError { endpoint, .. }
            | FaultSpec::RateLimit { endpoint, .. }
            | FaultSpec::GraphError { endpoint, .. }
            | FaultSpec::Delay { endpoint, .. } => hit(endpoint),
            _ => false,
        })
    }

    /// The webhook fault for the next delivery to `app`, if any; a delivery
    /// being released (`may_hold` false) is not held again.
    pub(crate) fn take_webhook_fault(&mut self, app: &str, may_hold: bool) -> Option<WebhookFault> {
        let hit = |a: &Option<String>| a.as_deref().is_none_or(|a| a == app);
        match self.take_fault(|s| match s {
            FaultSpec::WebhookDrop { app_id, .. } | FaultSpec::WebhookDuplicate { app_id, .. } => {
                hit(app_id)
            }
            FaultSpec::WebhookHold { app_id, .. } => may_hold && hit(app_id),
            _ => false,
        })? {
            FaultSpec::WebhookDrop { .. } => Some(WebhookFault::Drop),
            FaultSpec::WebhookHold { .. } => Some(WebhookFault::Hold),
            _ => Some(WebhookFault::Duplicate),
        }
    }

    /// Keeps a delivery a `webhook_hold` fault caught.
    pub(crate) fn hold(&mut self, d: Delivery) {
        self.held.push(d);
    }

    /// Lifts the holds naming `app_id` (every hold when `None`) and hands back
    /// the deliveries they kept for it, in `order`, bound for each app's
    /// current callback URL. A hold on every app outlives a release for one.
    pub(crate) fn release_held(
        &mut self,
        app_id: Option<&str>,
        order: ReleaseOrder,
    ) -> Vec<Delivery> {
        self.faults.retain(|f| match &f.spec {
            FaultSpec::WebhookHold {
                app_id: held_for, ..
            } => app_id.is_some() && held_for.as_deref() != app_id,
            _ => true,
        });
        let (mut out, keep): (Vec<Delivery>, Vec<Delivery>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|d| app_id.is_none_or(|a| a == d.app_id));
        self.held = keep;
        if order == ReleaseOrder::Reverse {
            out.reverse();
        }
        for d in &mut out {
            d.url = self.current_url(&d.app_id, &d.url);
        }
        out
    }

    /// Meta's late retry of the delivery attempt `seq`: the same body and
    /// signatures, as a new delivery to the app's current callback URL.
    pub(crate) fn redelivery(&mut self, seq: u64) -> Result<Delivery, ControlError> {
        let a = self
            .attempts
            .iter()
            .find(|a| a.seq == seq)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no delivery attempt {seq}")))?;
        Ok(Delivery {
            id: self.next_seq(),
            url: self.current_url(&a.app_id, &a.url),
            app_id: a.app_id,
            channel: a.channel,
            body: a.body,
            signature_256: a.signature_256,
            signature_1: a.signature_1,
        })
    }

    /// The app's callback URL now, or `fallback` if it has none any more.
    fn current_url(&self, app_id: &str, fallback: &str) -> String {
        self.apps
            .get(app_id)
            .and_then(|a| a.callback_url.clone())
            .unwrap_or_else(|| fallback.to_string())
    }

    // ----- logs ------------------------------------------------------------

    pub(crate) fn calls(&self) -> &[CallRecord] {
        &self.calls
    }

    pub(crate) fn attempts(&self) -> &[DeliveryAttempt] {
        &self.attempts
    }

    pub(crate) fn record_attempt(&mut self, mut a: DeliveryAttempt) {
        a.seq = self.next_seq();
        a.at_ms = self.now();
        self.attempts.push(a);
    }

    pub(crate) fn clear_calls(&mut self) {
        self.calls.clear();
    }

    pub(crate) fn clear_attempts(&mut self) {
        self.attempts.clear();
    }

    pub(crate) fn reset_logs(&mut self) {
        self.calls.clear();
        self.attempts.clear();
    }

    /// Who delivers where: (callback URL, secret) of an app.
    pub(crate) fn endpoint_of(&self, app_id: &str) -> Option<(String, String)> {
        let app = self.apps.get(app_id)?;
        Some((app.callback_url.clone()?, app.secret.clone()))
    }

    // ----- routing ---------------------------------------------------------

    fn messaging_apps(&self, page: &PageConfig, th: &Thread) -> BTreeSet<String> {
        match &page.routing {
            Routing::ConversationRouting { default_app } => {
                BTreeSet::from([th.owner.clone().unwrap_or_else(|| default_app.clone())])
            }
            Routing::ZeroConfig => self.connected(&page.id),
            Routing::HandoverV1 { primary, .. } => {
                BTreeSet::from([th.owner.clone().unwrap_or_else(|| primary.clone())])
            }
        }
    }

    fn subscribed(&self, page: &str, app: &str, field: &str) -> bool {
        self.subs
            .get(&(page.to_string(), app.to_string()))
            .is_some_and(|f| f.contains(field))
    }

    fn has_callback(&self, app: &str) -> bool {
        self.apps.get(app).is_some_and(|a| a.callback_url.is_some())
    }

    /// Plans one user/page event for every connected app: `messaging` for
    /// the apps that own or may answer the thread, `standby` for the others.
    fn route(&self, page: &PageConfig, th: &Thread, event_key: &str, item: Value) -> Vec<Planned> {
        let field = field_for(event_key);
        let messaging = self.messaging_apps(page, th);
        let mut out = Vec::new();
        for app in self.connected(&page.id) {
            if !self.has_callback(&app) || !self.subscribed(&page.id, &app, field) {
                continue;
            }
            if messaging.contains(&app) {
                out.push(Planned {
                    app_id: app,
                    page_id: page.id.clone(),
                    channel: Channel::Messaging,
                    item: item.clone(),
                });
            } else if self.subscribed(&page.id, &app, "standby") {
                let mut item = item.clone();
                if event_key == "postback" {
                    if let Some(pb) = item.get_mut("postback").and_then(Value::as_object_mut) {
                        pb.remove("payload");
                    }
                }
                out.push(Planned {
                    app_id: app,
                    page_id: page.id.clone(),
                    channel: Channel::Standby,
                    item,
                });
            }
        }
        out
    }

    fn plan_notices(&self, page_id: &str, psid: &str, notices: Vec<Notice>) -> Vec<Planned> {
        let now = self.now();
        let mut out = Vec::new();
        for n in notices {
            let (to, key, mut body) = match n {
                Notice::Pass {
                    to,
                    previous,
                    new,
                    metadata,
                } => (
                    to,
                    "pass_thread_control",
                    json!({"previous_owner_app_id": previous, "new_owner_app_id": new, "metadata": metadata}),
                ),
                Notice::Take {
                    to,
                    previous,
                    new,
                    metadata,
                } => (
                    to,
                    "take_thread_control",
                    json!({"previous_owner_app_id": previous, "new_owner_app_id": new, "metadata": metadata}),
                ),
                Notice::Request {
                    to,
                    requester,
                    metadata,
                } => (
                    to,
                    "request_thread_control",
                    json!({"requested_owner_app_id": requester, "metadata": metadata}),
                ),
            };
            if body["metadata"].is_null() {
                if let Some(o) = body.as_object_mut() {
                    o.remove("metadata");
                }
            }
            if !self.has_callback(&to) || !self.subscribed(page_id, &to, "messaging_handovers") {
                continue;
            }
            let mut item = json!({
                "sender": {"id": psid},
                "recipient": {"id": page_id},
                "timestamp": now,
            });
            item[key] = body;
            out.push(Planned {
                app_id: to,
                page_id: page_id.to_string(),
                channel: Channel::Messaging,
                item,
            });
        }
        out
    }

    fn thread_mut(&mut self, page_id: &str, psid: &str) -> &mut Thread {
        let now = self.now();
        let th = self
            .threads
            .entry((page_id.to_string(), psid.to_string()))
            .or_default();
        th.expire(now);
        th
    }

    fn thread_clone(&mut self, page_id: &str, psid: &str) -> Option<Thread> {
        let now = self.now();
        let th = self
            .threads
            .get_mut(&(page_id.to_string(), psid.to_string()))?;
        th.expire(now);
        Some(th.clone())
    }

    fn transcript_mut(&mut self, page_id: &str, psid: &str) -> &mut Vec<TranscriptLine> {
        self.transcripts
            .entry((page_id.to_string(), psid.to_string()))
            .or_default()
    }

    fn store(&mut self, page_id: &str, psid: &str, th: Thread) {
        self.threads
            .insert((page_id.to_string(), psid.to_string()), th);
    }

    // ----- thread control rules -------------------------------------------

    fn pass(
        &self,
        page: &PageConfig,
        th: &mut Thread,
        caller: &str,
        target: Option<String>,
        metadata: Option<String>,
    ) -> Result<Vec<Notice>, GraphError> {
        let now = self.now();
        let connected = self.connected(&page.id);
        let check_target = |t: &str| {
            if t == caller {
                Err(GraphError::param(
                    "The target app is already the calling app",
                ))
            } else if !connected.contains(t) {
                Err(GraphError::param(
                    "Invalid target_app_id: the app is not connected to this page",
                ))
            } else {
                Ok(())
            }
        };
        match &page.routing {
            Routing::ConversationRouting { default_app } => {
                let allowed = match &th.owner {
                    Some(o) => o == caller,
                    None => caller == default_app,
                };
                if !allowed {
                    return Err(GraphError::not_owner());
                }
                let target = target.unwrap_or_else(|| default_app.clone());
                check_target(&target)?;
                let previous = th.owner.clone();
                th.owner = Some(target.clone());
                th.expires_at_ms = Some(now + DAY_MS);
                Ok(vec![Notice::Pass {
                    to: target.clone(),
                    previous,
                    new: target,
                    metadata,
                }])
            }
            Routing::ZeroConfig => {
                if th.owner.as_deref().is_some_and(|o| o != caller) {
                    return Err(GraphError::not_owner());
                }
                let target = target.ok_or_else(|| {
                    GraphError::param("target_app_id is required: the page has no default app")
                })?;
                check_target(&target)?;
                let previous = th.owner.clone();
                th.owner = Some(target.clone());
                th.expires_at_ms = Some(now + DAY_MS);
                Ok(vec![Notice::Pass {
                    to: target.clone(),
                    previous,
                    new: target,
                    metadata,
                }])
            }
            Routing::HandoverV1 { primary, .. } => {
                let effective = th.owner.clone().unwrap_or_else(|| primary.clone());
                if effective != caller {
                    return Err(GraphError::not_owner());
                }
                let target = match target {
                    Some(t) => t,
                    None if caller == primary => {
                        return Err(GraphError::param(
                            "target_app_id is required when the primary receiver passes",
                        ))
                    }
                    None => primary.clone(),
                };
                check_target(&target)?;
                th.owner = (target != *primary).then(|| target.clone());
                th.expires_at_ms = None;
                Ok(vec![Notice::Pass {
                    to: target.clone(),
                    previous: Some(caller.to_string()),
                    new: target,
                    metadata,
                }])
            }
        }
    }

    fn take(
        &self,
        page: &PageConfig,
        th: &mut Thread,
        caller: &str,
        metadata: Option<String>,
        forced: bool,
    ) -> Result<Vec<Notice>, GraphError> {
        let now = self.now();
        let previous =
            match &page.routing {
                Routing::ZeroConfig if !forced => return Err(GraphError::new(
                    27,
                    None,
                    "Take thread control is not supported when Conversation Routing is not enabled",
                )),
                Routing::ConversationRouting { .. } | Routing::ZeroConfig => {
                    let may_take = self.apps.get(caller).is_some_and(|a| a.may_take);
                    // Taking a thread one already owns succeeds and changes nothing.
                    if th.owner.as_deref() == Some(caller) {
                        return Ok(Vec::new());
                    }
                    if th.owner.is_some() && !may_take && !forced {
                        return Err(GraphError::new(
                            200,
                            None,
                            "This app is not allowed to take control of this conversation",
                        ));
                    }
                    let previous = th.owner.clone();
                    th.owner = Some(caller.to_string());
                    th.expires_at_ms = Some(now + DAY_MS);
                    previous
                }
                Routing::HandoverV1 { primary, .. } => {
                    if caller != primary && !forced {
                        return Err(GraphError::new(
                            200,
                            None,
                            "Only the primary receiver can take thread control",
                        ));
                    }
                    let previous = th.owner.clone().unwrap_or_else(|| primary.clone());
                    // The primary taking a thread it holds succeeds and changes nothing.
                    if previous == caller {
                        return Ok(Vec::new());
                    }
                    th.owner = (caller != primary).then(|| caller.to_string());
                    th.expires_at_ms = None;
                    Some(previous)
                }
            };
        Ok(match previous {
            Some(p) if p != caller => vec![Notice::Take {
                to: p.clone(),
                previous: Some(p),
                new: caller.to_string(),
                metadata,
            }],
            _ => Vec::new(),
        })
    }

    fn request(
        &self,
        page: &PageConfig,
        th: &mut Thread,
        caller: &str,
        metadata: Option<String>,
    ) -> Result<Vec<Notice>, GraphError> {
        let now = self.now();
        let to = match &page.routing {
            Routing::ConversationRouting { default_app } => {
                th.owner.clone().unwrap_or_else(|| default_app.clone())
            }
            Routing::ZeroConfig => match &th.owner {
                Some(o) if o == caller => return Err(already_owner()),
                Some(o) => o.clone(),
                None => {
                    // Zero-config: the first app to request an idle thread gets it.
                    th.owner = Some(caller.to_string());
                    th.expires_at_ms = Some(now + DAY_MS);
                    return Ok(Vec::new());
                }
            },
            Routing::HandoverV1 { primary, .. } => {
                if caller == primary {
                    return Err(GraphError::param(
                        "The primary receiver cannot request thread control",
                    ));
                }
                if th.owner.as_deref() == Some(caller) {
                    return Err(already_owner());
                }
                primary.clone()
            }
        };
        // Asking for what one already holds (the owner, or the default app of
        // an idle thread) is refused rather than sent to oneself.
        if to == caller {
            return Err(already_owner());
        }
        Ok(vec![Notice::Request {
            to,
            requester: caller.to_string(),
            metadata,
        }])
    }

    fn release(&self, page: &PageConfig, th: &mut Thread, caller: &str) -> Result<(), GraphError> {
        match &page.routing {
            Routing::HandoverV1 { primary, .. } if th.owner.is_none() && caller == primary => {
                Ok(())
            }
            _ if th.owner.as_deref() == Some(caller) => {
                th.owner = None;
                th.expires_at_ms = None;
                Ok(())
            }
            _ => Err(GraphError::new(
                100,
                Some(2_534_037),
                "Only the current thread owner can release thread control",
            )),
        }
    }

    fn extend(
        &self,
        page: &PageConfig,
        th: &mut Thread,
        caller: &str,
        duration: Option<String>,
    ) -> Result<(), GraphError> {
        let secs: i64 = duration
            .as_deref()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| GraphError::param("param duration must be a number of seconds"))?;
        if !(1..=MAX_EXTEND_SECONDS).contains(&secs) {
            return Err(GraphError::param(
                "param duration must be between 1 and 604800 seconds (7 days)",
            ));
        }
        match &page.routing {
            // Legacy control never lapses: the owner (the primary, by
            // default) may extend, and nothing changes.
            Routing::HandoverV1 { primary, .. } => {
                if th.owner.clone().unwrap_or_else(|| primary.clone()) != caller {
                    return Err(GraphError::not_owner());
                }
                Ok(())
            }
            _ => {
                if th.owner.as_deref() != Some(caller) {
                    return Err(GraphError::not_owner());
                }
                let until = self.now() + secs * 1000;
                th.expires_at_ms = Some(th.expires_at_ms.map_or(until, |e| e.max(until)));
                Ok(())
            }
        }
    }

    fn may_send(page: &PageConfig, th: &Thread, app: &str) -> bool {
        match &page.routing {
            Routing::ZeroConfig => true,
            Routing::ConversationRouting { default_app } => {
                th.owner.as_deref().unwrap_or(default_app) == app
            }
            Routing::HandoverV1 { primary, .. } => th.owner.as_deref().unwrap_or(primary) == app,
        }
    }

    // ----- Graph API ---------------------------------------------------------

    pub(crate) fn graph(&mut self, req: GraphRequest) -> GraphOutcome {
        let seq = self.next_seq();
        let trace = format!("Emu{seq:09}");
        let endpoint = req.edge.clone().unwrap_or_else(|| "node".into());
        // Who called: the app and page of a page token, or the app of an app
        // access token.
        let (who_app, who_page) = match req.token.as_deref() {
            Some(t) => match self.tokens.get(t) {
                Some((app, page)) => (Some(app.clone()), Some(page.clone())),
                None => (self.app_token(t), None),
            },
            None => (None, None),
        };
        let mut hold = None;
        let mut fault_name = None;
        let fault_answer: Option<GraphError> = match self.take_graph_fault(&endpoint) {
            None => None,
            Some(FaultSpec::ServerError { status, .. }) => {
                fault_name = Some("server_error".to_string());
                Some(GraphError {
                    status: status.unwrap_or(500),
                    type_: "OAuthException",
                    code: 2,
                    subcode: None,
                    message: "An unexpected error has occurred. Please retry your request later."
                        .into(),
                    transient: true,
                })
            }
            Some(FaultSpec::RateLimit { .. }) => {
                fault_name = Some("rate_limit".to_string());
                Some(GraphError::new(
                    613,
                    None,
                    "Calls to this api have exceeded the rate limit.",
                ))
            }
            Some(FaultSpec::GraphError {
                status,
                code,
                subcode,
                message,
                ..
            }) => {
                fault_name = Some("graph_error".to_string());
                let mut e = GraphError::new(
                    code,
                    subcode,
                    message.as_deref().unwrap_or("Injected error"),
                );
                e.status = status.unwrap_or(400);
                Some(e)
            }
            Some(FaultSpec::Delay { millis, .. }) => {
                fault_name = Some("delay".to_string());
                hold = Some(millis.map_or(Hold::UntilRelease, Hold::For));
                None
            }
            Some(_) => None,
        };
        let result = match fault_answer {
            Some(e) => Err(e),
            None => self.dispatch(&req, &endpoint),
        };
        let (status, body, planned) = match result {
            Ok((body, planned)) => (200, body, planned),
            Err(e) => (e.status, e.to_json(&trace), Vec::new()),
        };
        let mut params = req.params.clone();
        params.remove("access_token");
        if let Some(f) = &req.file {
            params.insert(
                "filedata".into(),
                json!({"filename": f.filename, "content_type": f.content_type, "bytes": f.bytes}),
            );
        }
        self.calls.push(CallRecord {
            seq,
            at_ms: self.now(),
            method: req.method.clone(),
            path: req.path.clone(),
            endpoint,
            app_id: who_app,
            page_id: who_page,
            params: Value::Object(params),
            status,
            response: body.clone(),
            fault: fault_name,
        });
        GraphOutcome {
            status,
            body,
            planned,
            hold,
        }
    }

    fn auth(&self, token: Option<&str>, node: &str) -> Result<(String, PageConfig), GraphError> {
        let token = token.ok_or_else(missing_token)?;
        if self.revoked.contains(token) {
            return Err(GraphError::new(190, Some(460), SESSION_INVALIDATED));
        }
        let (app, page_id) = self.tokens.get(token).ok_or_else(|| {
            GraphError::new(
                190,
                None,
                "Invalid OAuth access token - Cannot parse access token",
            )
        })?;
        let page = self.pages.get(page_id).ok_or_else(|| {
            GraphError::new(
                190,
                Some(460),
                "Error validating access token: the page is gone",
            )
        })?;
        // A user's node (their profile) is readable with the token of a page
        // they wrote to.
        let user = self
            .threads
            .contains_key(&(page_id.clone(), node.to_string()));
        if node != "me" && node != page_id && !user {
            return Err(GraphError::new(
                100,
                Some(33),
                &format!(
                    "Unsupported request. Object with ID '{node}' does not exist, cannot be loaded due to missing permissions, or does not support this operation"
                ),
            ));
        }
        Ok((app.clone(), page.clone()))
    }

    fn dispatch(&mut self, req: &GraphRequest, endpoint: &str) -> Answer {
        // The one edge on an app-scoped user id: it takes an app token.
        if endpoint == "ids_for_pages" {
            return self.ids_for_pages(req);
        }
        let (app, page) = self.auth(req.token.as_deref(), &req.node)?;
        let p = &req.params;
        let method = req.method.as_str();
        match &req.body_error {
            Some(BodyError::TooLarge) if endpoint == "message_attachments" => {
                return Err(GraphError::new(
                    100,
                    Some(2_018_109),
                    "Attachment size exceeds the allowable limit (25 MB)",
                ))
            }
            Some(BodyError::TooLarge) => {
                return Err(GraphError::param("The request body is too large"))
            }
            Some(BodyError::Multipart(e)) => {
                return Err(GraphError::param(&format!("Invalid multipart body: {e}")))
            }
            None => {}
        }
        match (method, endpoint) {
            ("GET", "node") if req.node != "me" && req.node != page.id => {
                Ok((user_profile(&req.node, param_str(p, "fields")), Vec::new()))
            }
            ("GET", "node") => {
                let mut out = json!({"id": page.id, "name": page.name});
                if param_str(p, "fields").is_some_and(|f| f.contains("messaging_feature_status")) {
                    out["messaging_feature_status"] = json!({
                        "hop_v2": !matches!(page.routing, Routing::HandoverV1 { .. }),
                        "msgr_multi_app": true,
                        "ig_multi_app": false,
                    });
                }
                Ok((out, Vec::new()))
            }
            ("POST", "messages") => self.send(&app, &page, p),
            ("POST", "message_attachments") => self.upload(&app, &page, p, req.file.as_ref()),
            ("POST", "pass_thread_metadata") => self.pass_metadata(&app, &page, p),
            ("GET", "messenger_profile") => self.get_profile(&page, p),
            ("POST", "messenger_profile") => self.set_profile(&page, p),
            ("DELETE", "messenger_profile") => self.delete_profile(&page, p),
            ("POST", "pass_thread_control")
            | ("POST", "take_thread_control")
            | ("POST", "request_thread_control")
            | ("POST", "release_thread_control")
            | ("POST", "extend_thread_control") => self.control_call(&app, &page, endpoint, p),
            ("GET", "thread_owner") => self.thread_owner(&app, &page, p),
            ("GET", "secondary_receivers") => match &page.routing {
                Routing::HandoverV1 {
                    primary,
                    secondaries,
                } => {
                    if &app != primary {
                        return Err(GraphError::new(
                            10,
                            Some(2_018_171),
                            "Only the primary receiver can list secondary receivers",
                        ));
                    }
                    let data: Vec<Value> = secondaries
                        .iter()
                        .map(|s| {
                            let name = self.apps.get(s).map(|a| a.name.clone()).unwrap_or_default();
                            json!({"id": s, "name": name})
                        })
                        .collect();
                    Ok((json!({"data": data}), Vec::new()))
                }
                _ => Err(GraphError::new(
                    10,
                    Some(2_018_171),
                    "This is only available to primary and secondary receivers",
                )),
            },
            ("GET", "subscribed_apps") => {
                let data: Vec<Value> = self
                    .subs
                    .iter()
                    .filter(|((pg, _), f)| pg == &page.id && !f.is_empty())
                    .map(|((_, a), f)| {
                        let name = self
                            .apps
                            .get(a)
                            .map(|x| x.name.clone())
                            .filter(|n| !n.is_empty())
                            .unwrap_or_else(|| a.clone());
                        json!({"id": a, "name": name, "subscribed_fields": f})
                    })
                    .collect();
                Ok((json!({"data": data}), Vec::new()))
            }
            ("POST", "subscribed_apps") => {
                let fields: BTreeSet<String> = match p.get("subscribed_fields") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .map(normalize_field)
                        .collect(),
                    Some(Value::String(s)) => s
                        .split(',')
                        .filter(|f| !f.trim().is_empty())
                        .map(normalize_field)
                        .collect(),
                    _ => return Err(GraphError::param("param subscribed_fields is required")),
                };
                // An empty list would subscribe to nothing: Meta asks for one.
                if fields.is_empty() {
                    return Err(GraphError::param(
                        "param subscribed_fields must be non-empty.",
                    ));
                }
                self.subs.insert((page.id.clone(), app), fields);
                Ok((json!({"success": true}), Vec::new()))
            }
            ("DELETE", "subscribed_apps") => {
                self.subs.insert((page.id.clone(), app), BTreeSet::new());
                Ok((json!({"success": true}), Vec::new()))
            }
            (
                _,
                "node"
                | "messages"
                | "pass_thread_control"
                | "take_thread_control"
                | "request_thread_control"
                | "release_thread_control"
                | "extend_thread_control"
                | "thread_owner"
                | "secondary_receivers"
                | "subscribed_apps"
                | "message_attachments"
                | "pass_thread_metadata"
                | "messenger_profile",
            ) => Err(GraphError::new(
                100,
                Some(33),
                &format!("Unsupported {} request", method.to_lowercase()),
            )),
            _ => Err(GraphError::new(
                2500,
                None,
                &format!("Unknown path components: /{endpoint}"),
            )),
        }
    }

    /// The ID Matching API: `GET /{asid}/ids_for_pages` with the app token
    /// `{app_id}|{app_secret}` lists the person's PSIDs on the pages the app
    /// has a page token for. An ASID the app does not know is an object the
    /// caller cannot see (100/33), whoever else knows it.
    fn ids_for_pages(&self, req: &GraphRequest) -> Answer {
        let token = req.token.as_deref().ok_or_else(missing_token)?;
        if self.revoked.contains(token) {
            return Err(GraphError::new(190, Some(460), SESSION_INVALIDATED));
        }
        let app = self.app_token(token).ok_or_else(|| {
            GraphError::new(
                190,
                None,
                "Invalid OAuth access token - Cannot parse access token",
            )
        })?;
        if req.method != "GET" {
            return Err(GraphError::no_object(&req.method, &req.node));
        }
        let person = self
            .person_by_asid(&app, &req.node)
            .ok_or_else(|| GraphError::no_object("GET", &req.node))?;
        let configured = &self.apps[&app].page_tokens;
        let data: Vec<Value> = person
            .psids
            .iter()
            .filter(|(page, _)| configured.contains_key(*page))
            .filter_map(|(page, psid)| {
                let p = self.pages.get(page)?;
                let name = if p.name.is_empty() { &p.id } else { &p.name };
                Some(json!({"id": psid, "page": {"id": p.id, "name": name}}))
            })
            .collect();
        Ok((
            json!({"data": data, "paging": {"cursors": {"before": "", "after": ""}}}),
            Vec::new(),
        ))
    }

    fn control_call(
        &mut self,
        app: &str,
        page: &PageConfig,
        endpoint: &str,
        p: &Map<String, Value>,
    ) -> Answer {
        let psid = recipient_psid(p)
            .ok_or_else(|| GraphError::param("param recipient must be non-empty."))?;
        let mut th = self
            .thread_clone(&page.id, &psid)
            .ok_or_else(|| GraphError::new(100, Some(2_018_001), "No matching user found"))?;
        let metadata = param_str(p, "metadata");
        let notices = match endpoint {
            "pass_thread_control" => {
                self.pass(page, &mut th, app, param_str(p, "target_app_id"), metadata)?
            }
            "take_thread_control" => self.take(page, &mut th, app, metadata, false)?,
            "request_thread_control" => self.request(page, &mut th, app, metadata)?,
            "release_thread_control" => {
                self.release(page, &mut th, app)?;
                Vec::new()
            }
            _ => {
                self.extend(page, &mut th, app, param_str(p, "duration"))?;
                Vec::new()
            }
        };
        self.store(&page.id, &psid, th);
        let planned = self.plan_notices(&page.id, &psid, notices);
        Ok((json!({"success": true}), planned))
    }

    fn thread_owner(&mut self, app: &str, page: &PageConfig, p: &Map<String, Value>) -> Answer {
        let psid = recipient_psid(p)
            .ok_or_else(|| GraphError::param("param recipient must be non-empty."))?;
        let th = self
            .thread_clone(&page.id, &psid)
            .ok_or_else(|| GraphError::new(100, Some(2_018_001), "No matching user found"))?;
        let owner_json = |owner: &str, exp: Option<i64>| {
            let mut o = json!({"app_id": owner});
            if let Some(e) = exp {
                o["expiration"] = json!(e / 1000);
            }
            json!({"data": [{"thread_owner": o}]})
        };
        let body = match (&page.routing, &th.owner) {
            (Routing::ConversationRouting { default_app }, Some(o)) => {
                if app == o || app == default_app {
                    owner_json(o, th.expires_at_ms)
                } else {
                    json!({"data": []})
                }
            }
            (Routing::ZeroConfig, Some(o)) => owner_json(o, th.expires_at_ms),
            (Routing::HandoverV1 { primary, .. }, owner) => {
                let effective = owner.clone().unwrap_or_else(|| primary.clone());
                if app == primary || app == effective || &effective == primary {
                    owner_json(&effective, None)
                } else {
                    return Err(GraphError::new(
                        100,
                        Some(2_018_234),
                        "A secondary receiver cannot see the thread owner",
                    ));
                }
            }
            (_, None) => json!({"data": []}),
        };
        Ok((body, Vec::new()))
    }

    fn send(&mut self, app: &str, page: &PageConfig, p: &Map<String, Value>) -> Answer {
        let now = self.now();
        // Checks run in one order: the page, the request's own parameters
        // (type, tag, the tag's permission), the recipient (Meta must resolve
        // it before it knows the thread), then the thread (owner, inline
        // control, window). Baton's domain keeps the same order.
        if self.blocked.contains_key(&page.id) {
            return Err(GraphError::new(
                10,
                Some(1_893_063),
                "This Page is temporarily restricted from sending messages (policy enforcement)",
            ));
        }
        let recipient = param_obj(p, "recipient")
            .ok_or_else(|| GraphError::param("param recipient must be non-empty."))?;
        let message = param_obj(p, "message");
        let sender_action = param_str(p, "sender_action");
        match (&message, &sender_action) {
            (Some(_), Some(_)) => {
                return Err(GraphError::param(
                    "sender_action cannot be sent with message",
                ))
            }
            (None, None) => return Err(GraphError::param("param message must be non-empty.")),
            (None, Some(a)) => {
                let ok = ["typing_on", "typing_off", "mark_seen", "react", "unreact"]
                    .contains(&a.to_lowercase().as_str());
                if !ok {
                    return Err(GraphError::param("param sender_action is invalid"));
                }
            }
            _ => {}
        }
        // Enum values are matched exactly, as Meta documents them (upper case).
        let messaging_type = param_str(p, "messaging_type");
        if let Some(t) = &messaging_type {
            if !["RESPONSE", "UPDATE", "MESSAGE_TAG", "UTILITY"].contains(&t.as_str()) {
                return Err(GraphError::param("param messaging_type is invalid"));
            }
        }
        let tag = param_str(p, "tag");
        // Meta's docs send to a One-Time Notification token, and a private
        // reply to a comment, without a messaging_type.
        let to_comment = recipient.contains_key("comment_id");
        let exempt = recipient.contains_key("one_time_notif_token") || to_comment;
        match (messaging_type.as_deref(), &tag) {
            (Some("MESSAGE_TAG"), None) => {
                return Err(GraphError::param(
                    "param tag is required when messaging_type is MESSAGE_TAG",
                ))
            }
            (_, Some(t)) if messaging_type.as_deref() != Some("MESSAGE_TAG") => {
                return Err(GraphError::param(&format!(
                    "param tag {t} requires messaging_type MESSAGE_TAG"
                )))
            }
            // Meta's docs make messaging_type required on messages.
            (None, None) if message.is_some() && !exempt => {
                return Err(GraphError::param(
                    "param messaging_type is required (RESPONSE, UPDATE or MESSAGE_TAG)",
                ))
            }
            _ => {}
        }
        if let Some(t) = &tag {
            if t == NEWS_TAG {
                return Err(GraphError::new(
                    10,
                    Some(2_018_065),
                    "The NON_PROMOTIONAL_SUBSCRIPTION tag needs the News Messaging permission, which this Page does not have",
                ));
            }
            let legacy_ok = RETIRED_2026_TAGS.contains(&t.as_str()) && now < TAGS_RETIRED_MS;
            if t != "HUMAN_AGENT" && !legacy_ok {
                return Err(GraphError::param(&format!(
                    "Invalid parameter: tag {t} is not supported"
                )));
            }
        }
        let tagged = tag.is_some();
        let human_agent = tag.as_deref() == Some("HUMAN_AGENT");
        if human_agent && !self.apps.get(app).is_some_and(|a| a.human_agent) {
            return Err(GraphError::new(
                10,
                None,
                "The HUMAN_AGENT tag requires the Human Agent feature for this app",
            ));
        }
        // An attachment sent by id must be one uploaded for this page.
        if let Some(id) = message
            .as_ref()
            .and_then(|m| param_obj(m, "attachment"))
            .and_then(|a| param_obj(&a, "payload"))
            .and_then(|pl| param_str(&pl, "attachment_id"))
        {
            if self
                .attachments
                .get(&id)
                .is_none_or(|a| a.page_id != page.id)
            {
                return Err(GraphError::param(&format!(
                    "Invalid attachment id: {id} was not uploaded for this page"
                )));
            }
        }
        if to_comment {
            return self.private_reply(app, page, &recipient, message, sender_action, p);
        }

        // Who is the recipient?
        enum Kind {
            Psid,
            Otn(String),
            UserRef(String),
        }
        let (psid, kind) = if let Some(id) = param_str(&recipient, "id") {
            (id, Kind::Psid)
        } else if let Some(t) = param_str(&recipient, "one_time_notif_token") {
            let tok = self
                .otn
                .get(&t)
                .filter(|x| x.page_id == page.id)
                .ok_or_else(|| GraphError::param("Invalid one_time_notif_token"))?;
            if tok.used {
                return Err(GraphError::param(
                    "The one_time_notif_token was already used",
                ));
            }
            if now >= tok.created_ms + OTN_LIFETIME_MS {
                return Err(GraphError::param("The one_time_notif_token has expired"));
            }
            (tok.psid.clone(), Kind::Otn(t))
        } else if let Some(r) = param_str(&recipient, "user_ref") {
            let u = self
                .user_refs
                .get(&(page.id.clone(), r.clone()))
                .filter(|u| !u.used)
                .ok_or_else(|| GraphError::new(100, Some(2_018_001), "No matching user found"))?;
            (u.psid.clone(), Kind::UserRef(r))
        } else if recipient.contains_key("notification_messages_token") {
            return Err(GraphError::param(
                "Recurring notifications (notification_messages_token) are retired",
            ));
        } else {
            return Err(GraphError::param("param recipient is invalid"));
        };
        let mut th = self
            .thread_clone(&page.id, &psid)
            .ok_or_else(|| GraphError::new(100, Some(2_018_001), "No matching user found"))?;
        if !Self::may_send(page, &th, app) {
            return Err(GraphError::new(
                10,
                Some(2_018_300),
                "This message is being sent by an app that does not control this thread: another app is controlling this thread",
            ));
        }
        // Validate inline control before the window: a malformed hand-over is
        // refused as such, whatever the window.
        let control = match sender_action {
            Some(_) => None,
            None => param_obj(p, "thread_control"),
        };
        let mut after = th.clone();
        let mut notices = Vec::new();
        if let Some(c) = &control {
            let kind = param_str(c, "control_type").unwrap_or_else(|| "release".into());
            match kind.as_str() {
                "pass" => {
                    notices = self.pass(page, &mut after, app, param_str(c, "app_id"), None)?;
                }
                "release" => self.release(page, &mut after, app)?,
                _ => {
                    return Err(GraphError::param(
                        "param thread_control.control_type is invalid",
                    ))
                }
            }
        }
        if matches!(kind, Kind::Psid) {
            let open = if human_agent {
                th.last_user_action_ms
                    .is_some_and(|t| now - t < HUMAN_AGENT_MS)
            } else if tagged {
                // A (not yet retired) update tag works outside the window, but
                // only toward a person who started a conversation.
                th.last_user_action_ms.is_some()
            } else {
                th.window_open(now)
            };
            if !open {
                return Err(GraphError::new(
                    10,
                    Some(2_018_278),
                    "This message is sent outside of allowed window.",
                ));
            }
        }
        if sender_action.is_some() {
            return Ok((json!({"recipient_id": psid}), Vec::new()));
        }
        let message = message.unwrap_or_default();
        match &kind {
            Kind::Otn(t) => {
                if let Some(tok) = self.otn.get_mut(t) {
                    tok.used = true;
                }
            }
            Kind::UserRef(r) => {
                if let Some(u) = self.user_refs.get_mut(&(page.id.clone(), r.clone())) {
                    u.used = true;
                }
            }
            Kind::Psid => {}
        }
        let metadata = param_str(&message, "metadata");
        let (mid, mut planned) = self.echo(page, &mut th, &psid, app, message, metadata);
        if control.is_some() {
            th = after;
        }
        self.store(&page.id, &psid, th);
        planned.extend(self.plan_notices(&page.id, &psid, notices));
        let body = match kind {
            Kind::UserRef(_) => json!({"message_id": mid}),
            _ => json!({"recipient_id": psid, "message_id": mid}),
        };
        Ok((body, planned))
    }

    /// A private reply: one message per comment, within 7 days of it, from
    /// any app of the page, whoever controls the thread. It lands in the
    /// user's thread (created if needed) and echoes like any page message,
    /// but opens no window and changes no control.
    fn private_reply(
        &mut self,
        app: &str,
        page: &PageConfig,
        recipient: &Map<String, Value>,
        message: Option<Map<String, Value>>,
        sender_action: Option<String>,
        p: &Map<String, Value>,
    ) -> Answer {
        let now = self.now();
        let id = param_str(recipient, "comment_id").unwrap_or_default();
        let comment = self
            .comments
            .get(&id)
            .filter(|c| c.page_id == page.id)
            .cloned()
            .ok_or_else(|| {
                GraphError::param(&format!(
                    "Invalid parameter: the comment {id} does not exist"
                ))
            })?;
        if comment.replied.is_some() {
            // The Graph reference's private-reply codes: 10900 "already
            // replied", 10903 "can't reply".
            return Err(GraphError::new(
                10900,
                None,
                "The comment has already been replied to",
            ));
        }
        if now - comment.created_ms >= PRIVATE_REPLY_MS {
            return Err(GraphError::new(
                10903,
                None,
                "This message is sent outside of allowed window",
            ));
        }
        if sender_action.is_some() {
            return Err(GraphError::param(
                "sender_action cannot be sent to a comment_id recipient",
            ));
        }
        if p.contains_key("thread_control") {
            return Err(GraphError::param(
                "thread_control cannot be used with a comment_id recipient",
            ));
        }
        let message = message.unwrap_or_default();
        let psid = comment.psid;
        let mut th = self.thread_mut(&page.id, &psid).clone();
        let metadata = param_str(&message, "metadata");
        let (mid, planned) = self.echo(page, &mut th, &psid, app, message, metadata);
        self.store(&page.id, &psid, th);
        if let Some(c) = self.comments.get_mut(&id) {
            c.replied = Some(mid.clone());
        }
        Ok((json!({"recipient_id": psid, "message_id": mid}), planned))
    }

    /// Whether `app` holds the thread for the purposes of pass, release and
    /// `pass_thread_metadata`: the owner; when idle, the default app (CR),
    /// the primary (v1), or anyone (zero-config, as for pass).
    fn holds(page: &PageConfig, th: &Thread, app: &str) -> bool {
        match &page.routing {
            Routing::ConversationRouting { default_app } => {
                th.owner.as_deref().unwrap_or(default_app) == app
            }
            Routing::ZeroConfig => th.owner.as_deref().is_none_or(|o| o == app),
            Routing::HandoverV1 { primary, .. } => th.owner.as_deref().unwrap_or(primary) == app,
        }
    }

    /// `pass_thread_metadata`: the app holding the thread shares `metadata`
    /// with every other app of the page subscribed to `messaging_handovers`.
    fn pass_metadata(&mut self, app: &str, page: &PageConfig, p: &Map<String, Value>) -> Answer {
        let psid = recipient_psid(p)
            .ok_or_else(|| GraphError::param("param recipient must be non-empty."))?;
        let metadata = param_str(p, "metadata")
            .filter(|m| !m.is_empty())
            .ok_or_else(|| GraphError::param("param metadata must be non-empty."))?;
        if metadata.chars().count() >= MAX_METADATA_CHARS {
            return Err(GraphError::param(
                "param metadata must be shorter than 1000 characters",
            ));
        }
        let th = self
            .thread_clone(&page.id, &psid)
            .ok_or_else(|| GraphError::new(100, Some(2_018_001), "No matching user found"))?;
        if !Self::holds(page, &th, app) {
            return Err(GraphError::not_owner());
        }
        let item = json!({
            "sender": {"id": psid},
            "recipient": {"id": page.id},
            "timestamp": self.now(),
            "pass_thread_metadata": {"app_id": app, "metadata": metadata},
        });
        let planned = self
            .connected(&page.id)
            .into_iter()
            .filter(|to| {
                to != app
                    && self.has_callback(to)
                    && self.subscribed(&page.id, to, "messaging_handovers")
            })
            .map(|to| Planned {
                app_id: to,
                page_id: page.id.clone(),
                channel: Channel::Messaging,
                item: item.clone(),
            })
            .collect();
        Ok((json!({"success": true}), planned))
    }

    /// The Attachment Upload API: a file (`filedata`) or a URL, remembered
    /// under a new numeric id for this page.
    fn upload(
        &mut self,
        app: &str,
        page: &PageConfig,
        p: &Map<String, Value>,
        file: Option<&FilePart>,
    ) -> Answer {
        let message = param_obj(p, "message")
            .ok_or_else(|| GraphError::param("param message must be non-empty."))?;
        let attachment = param_obj(&message, "attachment")
            .ok_or_else(|| GraphError::param("param message.attachment must be non-empty."))?;
        let type_ = param_str(&attachment, "type").unwrap_or_default();
        if !ATTACHMENT_TYPES.contains(&type_.as_str()) {
            return Err(GraphError::param(
                "param message.attachment.type must be one of image, video, audio, file",
            ));
        }
        let payload = param_obj(&attachment, "payload").ok_or_else(|| {
            GraphError::param("param message.attachment.payload must be non-empty.")
        })?;
        let is_reusable = match payload.get("is_reusable") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(_) => {
                return Err(GraphError::param(
                    "param message.attachment.payload.is_reusable must be a boolean",
                ))
            }
        };
        let url = match payload.get("url") {
            None | Some(Value::Null) => None,
            Some(Value::String(u)) if u.starts_with("https://") || u.starts_with("http://") => {
                Some(u.clone())
            }
            Some(_) => {
                return Err(GraphError::param(
                    "param message.attachment.payload.url must be an http(s) URL",
                ))
            }
        };
        let (bytes, sha256) = match (file, &url) {
            (Some(_), Some(_)) => {
                return Err(GraphError::param(
                    "Give either message.attachment.payload.url or a filedata file, not both",
                ))
            }
            (None, None) => {
                return Err(GraphError::param(
                    "param message.attachment.payload.url or a filedata file is required",
                ))
            }
            (Some(f), None) if f.bytes > MAX_ATTACHMENT_BYTES => {
                return Err(GraphError::new(
                    100,
                    Some(2_018_109),
                    "Attachment size exceeds the allowable limit (25 MB)",
                ))
            }
            (Some(f), None) if f.bytes == 0 => {
                return Err(GraphError::param("The filedata file is empty"))
            }
            (Some(f), None) => (Some(f.bytes), Some(f.sha256.clone())),
            (None, Some(_)) => (None, None),
        };
        let id = (ATTACHMENT_ID_BASE + self.next_seq()).to_string();
        self.attachments.insert(
            id.clone(),
            AttachmentView {
                id: id.clone(),
                page_id: page.id.clone(),
                app_id: app.to_string(),
                type_,
                bytes,
                sha256,
                url,
                is_reusable,
                filename: file.and_then(|f| f.filename.clone()),
                content_type: file.and_then(|f| f.content_type.clone()),
                created_ms: self.now(),
            },
        );
        Ok((json!({"attachment_id": id}), Vec::new()))
    }

    /// `POST messenger_profile`: checks every property, then merges them all
    /// (or nothing).
    fn set_profile(&mut self, page: &PageConfig, p: &Map<String, Value>) -> Answer {
        let mut updates = Map::new();
        for (key, value) in p {
            match key.as_str() {
                "access_token" => {}
                "platform" => {
                    if param_str(p, "platform").as_deref() != Some("messenger") {
                        return Err(GraphError::param(
                            "param platform must be messenger (the emulator has no Instagram)",
                        ));
                    }
                }
                k if PROFILE_PROPERTIES.contains(&k) => {
                    updates.insert(k.to_string(), profile_value(k, value)?);
                }
                k => {
                    return Err(GraphError::param(&format!(
                        "Invalid parameter: {k} is not a Messenger Profile property"
                    )))
                }
            }
        }
        if updates.is_empty() {
            return Err(GraphError::param(
                "At least one Messenger Profile property must be set",
            ));
        }
        self.profiles
            .entry(page.id.clone())
            .or_default()
            .extend(updates);
        Ok((json!({"result": "success"}), Vec::new()))
    }

    /// `GET messenger_profile?fields=…`: the asked properties that are set.
    fn get_profile(&self, page: &PageConfig, p: &Map<String, Value>) -> Answer {
        let fields = profile_fields(p)?;
        let out: Map<String, Value> = self
            .profiles
            .get(&page.id)
            .map(|prof| {
                prof.iter()
                    .filter(|(k, _)| fields.contains(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let data = if out.is_empty() {
            json!([])
        } else {
            json!([out])
        };
        Ok((json!({ "data": data }), Vec::new()))
    }

    /// `DELETE messenger_profile` with `fields`: unsets them.
    fn delete_profile(&mut self, page: &PageConfig, p: &Map<String, Value>) -> Answer {
        let fields = profile_fields(p)?;
        if let Some(prof) = self.profiles.get_mut(&page.id) {
            prof.retain(|k, _| !fields.contains(k));
        }
        Ok((json!({"result": "success"}), Vec::new()))
    }

    /// Records a page message and plans its echo.
    fn echo(
        &mut self,
        page: &PageConfig,
        th: &mut Thread,
        psid: &str,
        app: &str,
        mut message: Map<String, Value>,
        metadata: Option<String>,
    ) -> (String, Vec<Planned>) {
        let mid = format!("m_{}", self.next_seq());
        let at_ms = self.now();
        self.transcript_mut(&page.id, psid).push(TranscriptLine {
            mid: mid.clone(),
            from: "page".into(),
            app_id: Some(app.to_string()),
            text: param_str(&message, "text"),
            metadata: metadata.clone(),
            at_ms,
        });
        message.remove("metadata");
        message.remove("quick_replies");
        message.insert("is_echo".into(), json!(true));
        message.insert("app_id".into(), id_value(app));
        if let Some(m) = metadata {
            message.insert("metadata".into(), json!(m));
        }
        message.insert("mid".into(), json!(mid));
        let item = json!({
            "sender": {"id": page.id},
            "recipient": {"id": psid},
            "timestamp": self.now(),
            "message": message,
        });
        let planned = self.route(page, th, "echo", item);
        (mid, planned)
    }

    // ----- user actions (control API) -------------------------------------

    /// A qualifying user action (one that opens the window): refreshes the
    /// window and, for an action that enters the thread (a message, a
    /// postback such as Get Started, a referral), hands an idle Conversation
    /// Routing thread to the default app (or the app of the m.me link rule).
    /// A reaction or a plugin opt-in keeps an idle thread idle: the reference
    /// defines idle as "no user→business message in the last 24 h" and routes
    /// "when a user enters an idle thread or taps Get Started".
    fn user_activity(
        &self,
        page: &PageConfig,
        th: &mut Thread,
        enters: bool,
        link_ref: Option<&str>,
    ) {
        let now = self.now();
        th.last_user_action_ms = Some(now);
        match &page.routing {
            Routing::ConversationRouting { default_app } => {
                if th.owner.is_none() {
                    if enters {
                        let target = link_ref
                            .and_then(|r| page.link_routes.get(r))
                            .filter(|a| self.apps.contains_key(*a))
                            .unwrap_or(default_app);
                        th.owner = Some(target.clone());
                        th.expires_at_ms = Some(now + DAY_MS);
                    }
                } else {
                    th.expires_at_ms = Some(th.expires_at_ms.unwrap_or(0).max(now + DAY_MS));
                }
            }
            Routing::ZeroConfig => {
                if th.owner.is_some() {
                    th.expires_at_ms = Some(th.expires_at_ms.unwrap_or(0).max(now + DAY_MS));
                }
            }
            Routing::HandoverV1 { .. } => {}
        }
    }

    fn user_item(&self, page: &PageConfig, psid: &str, key: &str, body: Value) -> Value {
        let mut item = json!({
            "sender": {"id": psid},
            "recipient": {"id": page.id},
            "timestamp": self.now(),
        });
        item[key] = body;
        item
    }

    pub(crate) fn user_message(
        &mut self,
        page_id: &str,
        psid: &str,
        m: UserMessage,
    ) -> Result<(String, Vec<Planned>), ControlError> {
        let page = self.page(page_id)?;
        let mid = m
            .mid
            .clone()
            .unwrap_or_else(|| format!("m_{}", self.next_seq()));
        let now = self.now();
        let mut th = self.thread_mut(page_id, psid).clone();
        let link_ref = m.referral.as_ref().and_then(|r| r.ref_.clone());
        self.user_activity(&page, &mut th, true, link_ref.as_deref());
        // The user's first message after a Click-to-Messenger ad click (one
        // carrying the ad's referral, or the first after a referral or postback
        // from an ad) opens up to 7 days, in a new thread or an existing one.
        // A wider window never shrinks.
        let after_ad_click = std::mem::take(&mut th.ad_clicked);
        if after_ad_click || is_ad(m.referral.as_ref()) {
            let until = now + 7 * DAY_MS;
            th.ads_window_until_ms = Some(th.ads_window_until_ms.map_or(until, |u| u.max(until)));
        }
        let mut msg = json!({"mid": mid});
        if let Some(t) = &m.text {
            msg["text"] = json!(t);
        }
        if let Some(q) = &m.quick_reply_payload {
            msg["quick_reply"] = json!({"payload": q});
        }
        if let Some(a) = &m.attachments {
            msg["attachments"] = a.clone();
        }
        if let Some(r) = &m.referral {
            msg["referral"] = referral_json(r);
        }
        self.transcript_mut(page_id, psid).push(TranscriptLine {
            mid: mid.clone(),
            from: "user".into(),
            app_id: None,
            text: m.text.clone(),
            metadata: None,
            at_ms: now,
        });
        let item = self.user_item(&page, psid, "message", msg);
        let planned = self.route(&page, &th, "message", item);
        self.store(page_id, psid, th);
        Ok((mid, planned))
    }

    pub(crate) fn user_postback(
        &mut self,
        page_id: &str,
        psid: &str,
        pb: UserPostback,
    ) -> Result<(String, Vec<Planned>), ControlError> {
        let page = self.page(page_id)?;
        let mid = format!("m_{}", self.next_seq());
        let mut th = self.thread_mut(page_id, psid).clone();
        let link_ref = pb.referral.as_ref().and_then(|r| r.ref_.clone());
        self.user_activity(&page, &mut th, true, link_ref.as_deref());
        th.ad_clicked |= is_ad(pb.referral.as_ref());
        let mut body = json!({"mid": mid, "title": pb.title, "payload": pb.payload});
        if let Some(r) = &pb.referral {
            body["referral"] = referral_json(r);
        }
        let item = self.user_item(&page, psid, "postback", body);
        let planned = self.route(&page, &th, "postback", item);
        self.store(page_id, psid, th);
        Ok((mid, planned))
    }

    pub(crate) fn user_reaction(
        &mut self,
        page_id: &str,
        psid: &str,
        r: UserReaction,
    ) -> Result<Vec<Planned>, ControlError> {
        let page = self.page(page_id)?;
        let mut th = self.thread_mut(page_id, psid).clone();
        self.user_activity(&page, &mut th, false, None);
        let action = r.action.unwrap_or_else(|| "react".into());
        let mut body = json!({"mid": r.mid, "action": action});
        if action != "unreact" {
            body["reaction"] = json!(r.reaction.unwrap_or_else(|| "love".into()));
            body["emoji"] = json!(r.emoji.unwrap_or_else(|| "\u{2764}".into()));
        }
        let item = self.user_item(&page, psid, "reaction", body);
        let planned = self.route(&page, &th, "reaction", item);
        self.store(page_id, psid, th);
        Ok(planned)
    }

    pub(crate) fn user_referral(
        &mut self,
        page_id: &str,
        psid: &str,
        r: Referral,
    ) -> Result<Vec<Planned>, ControlError> {
        let page = self.page(page_id)?;
        let mut th = self.thread_mut(page_id, psid).clone();
        self.user_activity(&page, &mut th, true, r.ref_.as_deref());
        th.ad_clicked |= is_ad(Some(&r));
        let item = self.user_item(&page, psid, "referral", referral_json(&r));
        let planned = self.route(&page, &th, "referral", item);
        self.store(page_id, psid, th);
        Ok(planned)
    }

    pub(crate) fn user_otn_optin(
        &mut self,
        page_id: &str,
        psid: &str,
        payload: String,
    ) -> Result<(String, Vec<Planned>), ControlError> {
        let page = self.page(page_id)?;
        let token = format!("otn_{}", self.next_seq());
        let th = self.thread_mut(page_id, psid).clone();
        self.otn.insert(
            token.clone(),
            OtnToken {
                page_id: page_id.to_string(),
                psid: psid.to_string(),
                payload: payload.clone(),
                created_ms: self.now(),
                used: false,
            },
        );
        let body = json!({"type": "one_time_notif_req", "payload": payload, "one_time_notif_token": token});
        let item = self.user_item(&page, psid, "optin", body);
        Ok((token, self.route(&page, &th, "optin", item)))
    }

    /// Send-to-Messenger / checkbox plugin opt-in: opens the window; a
    /// `user_ref` becomes a single-use Send API recipient.
    pub(crate) fn user_plugin_optin(
        &mut self,
        page_id: &str,
        psid: &str,
        ref_: Option<String>,
        user_ref: Option<String>,
    ) -> Result<Vec<Planned>, ControlError> {
        let page = self.page(page_id)?;
        let mut th = self.thread_mut(page_id, psid).clone();
        self.user_activity(&page, &mut th, false, None);
        let mut body = json!({});
        if let Some(r) = &ref_ {
            body["ref"] = json!(r);
        }
        if let Some(u) = &user_ref {
            body["user_ref"] = json!(u);
            self.user_refs.insert(
                (page_id.to_string(), u.clone()),
                UserRef {
                    psid: psid.to_string(),
                    used: false,
                },
            );
        }
        let item = self.user_item(&page, psid, "optin", body);
        let planned = self.route(&page, &th, "optin", item);
        self.store(page_id, psid, th);
        Ok(planned)
    }

    pub(crate) fn user_receipt(
        &mut self,
        page_id: &str,
        psid: &str,
        read: bool,
        r: UserReceipt,
    ) -> Result<Vec<Planned>, ControlError> {
        let page = self.page(page_id)?;
        let th = self.thread_mut(page_id, psid).clone();
        let watermark = r.watermark.unwrap_or(self.now());
        let (key, body) = if read {
            ("read", json!({"watermark": watermark}))
        } else {
            let mut b = json!({"watermark": watermark});
            if let Some(m) = r.mids {
                b["mids"] = json!(m);
            }
            ("delivery", b)
        };
        let item = self.user_item(&page, psid, key, body);
        Ok(self.route(&page, &th, key, item))
    }

    /// The user comments on a Page post. The comment opens no window and
    /// creates no thread; the page may answer it once with a private reply.
    pub(crate) fn user_comment(
        &mut self,
        page_id: &str,
        c: UserComment,
    ) -> Result<String, ControlError> {
        let page = self.page(page_id)?;
        if c.psid.trim().is_empty() {
            return Err(ControlError::BadRequest("psid must be non-empty".into()));
        }
        let post_id = c.post_id.unwrap_or_else(|| format!("{}_1", page.id));
        if post_id.trim().is_empty() {
            return Err(ControlError::BadRequest("post_id must be non-empty".into()));
        }
        let id = format!("{post_id}_{}", self.next_seq());
        self.comments.insert(
            id.clone(),
            Comment {
                page_id: page.id,
                psid: c.psid,
                created_ms: self.now(),
                replied: None,
            },
        );
        Ok(id)
    }

    /// The page's whole Messenger Profile (`{}` when nothing is set).
    pub(crate) fn messenger_profile(&self, page_id: &str) -> Result<Value, ControlError> {
        self.page(page_id)?;
        Ok(Value::Object(
            self.profiles.get(page_id).cloned().unwrap_or_default(),
        ))
    }

    pub(crate) fn attachment(&self, id: &str) -> Result<AttachmentView, ControlError> {
        self.attachments
            .get(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no attachment {id}")))
    }

    // ----- policy enforcement ------------------------------------------------

    /// Meta's policy enforcement acts on the page: `block` refuses every send
    /// (messages and sender actions) with 10/1893063 until `unblock`;
    /// thread-control calls are not affected. Apps subscribed to
    /// `messaging_policy_enforcement` get the webhook.
    pub(crate) fn policy_enforcement(
        &mut self,
        page_id: &str,
        action: &str,
        reason: Option<String>,
    ) -> Result<Vec<Planned>, ControlError> {
        let page = self.page(page_id)?;
        match action {
            "block" => {
                self.blocked.insert(page.id.clone(), reason.clone());
            }
            "unblock" => {
                self.blocked.remove(&page.id);
            }
            "warning" => {}
            other => {
                return Err(ControlError::BadRequest(format!(
                    "action must be block, unblock or warning, not {other}"
                )))
            }
        }
        let mut body = json!({ "action": action });
        if let (Some(r), false) = (&reason, action == "unblock") {
            body["reason"] = json!(r);
        }
        let item = json!({
            "recipient": {"id": page.id},
            "timestamp": self.now(),
            "policy_enforcement": body,
        });
        Ok(self
            .connected(&page.id)
            .into_iter()
            .filter(|app| {
                self.has_callback(app)
                    && self.subscribed(&page.id, app, "messaging_policy_enforcement")
            })
            .map(|app| Planned {
                app_id: app,
                page_id: page.id.clone(),
                channel: Channel::Messaging,
                item: item.clone(),
            })
            .collect())
    }

    // ----- Page Inbox ----------------------------------------------------------

    /// A human replies in Business Suite (or moves the thread to Main): the
    /// Page Inbox takes control; with text, its echo follows.
    pub(crate) fn inbox_takeover(
        &mut self,
        page_id: &str,
        psid: &str,
        text: Option<String>,
    ) -> Result<(Option<String>, Vec<Planned>), ControlError> {
        let page = self.page(page_id)?;
        let mut th = self.thread_mut(page_id, psid).clone();
        let notices = self
            .take(&page, &mut th, PAGE_INBOX_APP_ID, None, true)
            .map_err(ControlError::Refused)?;
        let mut planned = self.plan_notices(page_id, psid, notices);
        let mut mid = None;
        if let Some(t) = text {
            let mut msg = Map::new();
            msg.insert("text".into(), json!(t));
            let (m, p) = self.echo(&page, &mut th, psid, PAGE_INBOX_APP_ID, msg, None);
            mid = Some(m);
            planned.extend(p);
        }
        self.store(page_id, psid, th);
        Ok((mid, planned))
    }

    /// The human marks the thread done: control goes back to the default app
    /// (primary in Handover v1; idle in zero-config).
    pub(crate) fn inbox_done(
        &mut self,
        page_id: &str,
        psid: &str,
    ) -> Result<Vec<Planned>, ControlError> {
        let page = self.page(page_id)?;
        let mut th = self.thread_mut(page_id, psid).clone();
        let notices = match &page.routing {
            Routing::ZeroConfig => {
                self.release(&page, &mut th, PAGE_INBOX_APP_ID)
                    .map_err(ControlError::Refused)?;
                Vec::new()
            }
            _ => self
                .pass(&page, &mut th, PAGE_INBOX_APP_ID, None, None)
                .map_err(ControlError::Refused)?,
        };
        self.store(page_id, psid, th);
        Ok(self.plan_notices(page_id, psid, notices))
    }

    /// Sets the owner behind everyone's back (no webhooks): the silent
    /// takeover, e.g. by the Page Inbox. Webhooks route by the new owner from
    /// then on, so the apps see the next user event on `standby`.
    pub(crate) fn set_owner(
        &mut self,
        page_id: &str,
        psid: &str,
        owner: Option<String>,
        expires_at_ms: Option<i64>,
    ) -> Result<ThreadView, ControlError> {
        let page = self.page(page_id)?;
        if let Some(o) = &owner {
            if !self.apps.contains_key(o) {
                return Err(ControlError::BadRequest(format!("no app {o}")));
            }
        }
        let now = self.now();
        let v1 = matches!(page.routing, Routing::HandoverV1 { .. });
        let th = self.thread_mut(page_id, psid);
        th.expires_at_ms = match (&owner, v1) {
            (None, _) | (_, true) => None,
            (Some(_), false) => Some(expires_at_ms.unwrap_or(now + DAY_MS)),
        };
        th.owner = owner;
        self.thread_view(page_id, psid)
    }

    pub(crate) fn thread_view(
        &mut self,
        page_id: &str,
        psid: &str,
    ) -> Result<ThreadView, ControlError> {
        let page = self.page(page_id)?;
        let now = self.now();
        let th = self
            .thread_clone(page_id, psid)
            .ok_or_else(|| ControlError::NotFound(format!("no thread {page_id}/{psid}")))?;
        let otn_tokens = self
            .otn
            .iter()
            .filter(|(_, t)| t.page_id == page_id && t.psid == psid)
            .map(|(k, t)| OtnTokenView {
                token: k.clone(),
                payload: t.payload.clone(),
                created_ms: t.created_ms,
                expires_ms: t.created_ms + OTN_LIFETIME_MS,
                used: t.used,
            })
            .collect();
        Ok(ThreadView {
            page_id: page_id.to_string(),
            psid: psid.to_string(),
            owner: th.owner.clone(),
            expires_at_ms: th.expires_at_ms,
            idle: th.owner.is_none(),
            messaging_apps: self.messaging_apps(&page, &th).into_iter().collect(),
            last_user_action_ms: th.last_user_action_ms,
            window_open: th.window_open(now),
            ads_window_until_ms: th.ads_window_until_ms,
            otn_tokens,
            transcript: self
                .transcripts
                .get(&(page_id.to_string(), psid.to_string()))
                .cloned()
                .unwrap_or_default(),
        })
    }
}

/// A user's profile as the Graph API answers `GET /{psid}?fields=…` to a
/// page the user wrote to: `id` always, the requested fields (by default
/// `name`, `first_name`, `last_name`, `profile_pic`) made up from the PSID.
fn user_profile(psid: &str, fields: Option<String>) -> Value {
    let all = [
        ("name", json!(format!("User {psid}"))),
        ("first_name", json!("User")),
        ("last_name", json!(psid)),
        (
            "profile_pic",
            json!(format!("https://emulator.invalid/pic/{psid}.jpg")),
        ),
    ];
    let wanted: Vec<String> = fields
        .unwrap_or_else(|| "name,first_name,last_name,profile_pic".into())
        .split(',')
        .map(|f| f.trim().to_owned())
        .collect();
    let mut out = json!({ "id": psid });
    for (name, value) in all {
        if wanted.iter().any(|w| w == name) {
            out[name] = value;
        }
    }
    out
}

/// The `fields` of a Messenger Profile GET or DELETE: a JSON array (or a
/// JSON-encoded one) or a comma-separated list, every name a known property.
fn profile_fields(p: &Map<String, Value>) -> Result<BTreeSet<String>, GraphError> {
    let list: Vec<String> = match p.get("fields") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| GraphError::param("param fields must be a list of names"))?,
        Some(Value::String(s)) => match serde_json::from_str::<Vec<String>>(s) {
            Ok(a) => a,
            Err(_) => s.split(',').map(|f| f.trim().to_string()).collect(),
        },
        _ => Vec::new(),
    };
    let list: BTreeSet<String> = list.into_iter().filter(|f| !f.is_empty()).collect();
    if list.is_empty() {
        return Err(GraphError::param("param fields must be non-empty."));
    }
    if let Some(bad) = list
        .iter()
        .find(|f| !PROFILE_PROPERTIES.contains(&f.as_str()))
    {
        return Err(GraphError::param(&format!(
            "Invalid parameter: {bad} is not a Messenger Profile property"
        )));
    }
    Ok(list)
}

/// A Messenger Profile property's value, JSON-decoded when it came as a
/// form string, with its shape checked: objects for `get_started` (with a
/// `payload`) and `home_url` (with a `url`), arrays of objects for
/// `greeting` (each with `locale` and `text`), `persistent_menu`,
/// `ice_breakers` and `commands`, an array of strings for
/// `whitelisted_domains`, strings for the rest.
fn profile_value(key: &str, value: &Value) -> Result<Value, GraphError> {
    let value = match value {
        Value::String(s) if s.starts_with('{') || s.starts_with('[') => {
            serde_json::from_str(s).unwrap_or_else(|_| value.clone())
        }
        v => v.clone(),
    };
    let objects = |v: &Value, need: &[&str]| {
        v.as_array().is_some_and(|a| {
            a.iter().all(|o| {
                o.as_object()
                    .is_some_and(|o| need.iter().all(|n| o.get(*n).is_some_and(Value::is_string)))
            })
        })
    };
    let ok = match key {
        "get_started" => value["payload"].is_string(),
        "home_url" => value["url"].is_string(),
        "greeting" => objects(&value, &["locale", "text"]),
        "persistent_menu" | "ice_breakers" | "commands" => objects(&value, &[]),
        "whitelisted_domains" => value
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string)),
        _ => value.is_string(),
    };
    if ok {
        Ok(value)
    } else {
        Err(GraphError::param(&format!(
            "Invalid parameter: {key} has the wrong shape"
        )))
    }
}
