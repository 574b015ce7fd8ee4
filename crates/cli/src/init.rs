//! `baton init`: writes a working, commented configuration for one Page
//! with a bot and a human inbox under Conversation Routing, with freshly
//! generated secrets and tokens, and says what to copy where.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// `baton init` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Write the configuration here. It must not exist yet.
    #[arg(long, short, value_name = "FILE", default_value = "baton.toml")]
    pub out: PathBuf,
    /// The Facebook Page's id.
    #[arg(long, value_name = "ID")]
    pub page: String,
    /// The Page's name, for people reading the configuration and the audit.
    #[arg(long, value_name = "NAME", default_value = "My Page")]
    pub page_name: String,
    /// The bot's Meta app id (the Page's default app).
    #[arg(long, value_name = "ID")]
    pub bot_app: String,
    /// The human inbox's Meta app id.
    #[arg(long, value_name = "ID")]
    pub human_app: String,
    /// Meta's Graph API (or the emulator's, to try Baton offline).
    #[arg(long, value_name = "URL", default_value = "https://graph.facebook.com")]
    pub graph_base_url: String,
    /// Where the log and dispatch's cursors live.
    #[arg(long, value_name = "DIR", default_value = "./data/baton")]
    pub data_dir: PathBuf,
    /// The address Baton listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
}

/// 32 random bytes from the kernel, as 64 hexadecimal characters.
fn secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading randomness from /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The configuration text; every secret is generated here.
pub fn render(args: &InitArgs) -> anyhow::Result<String> {
    for (what, id) in [
        ("--page", &args.page),
        ("--bot-app", &args.bot_app),
        ("--human-app", &args.human_app),
    ] {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            anyhow::bail!("{what} must be Meta's numeric id, got {id:?}");
        }
    }
    if args.bot_app == args.human_app {
        anyhow::bail!("--bot-app and --human-app must be two different apps");
    }
    let InitArgs {
        page,
        page_name,
        bot_app,
        human_app,
        graph_base_url,
        data_dir,
        listen,
        ..
    } = args;
    let data_dir = data_dir.display();
    let (admin, auditor) = (secret()?, secret()?);
    let (bot_forward, human_forward) = (secret()?, secret()?);
    let (bot_api, human_api) = (secret()?, secret()?);
    let (bot_verify, human_verify) = (secret()?, secret()?);
    Ok(format!(
        r#"# Baton configuration written by `baton init`: Page {page} with a bot ({bot_app})
# and a human inbox ({human_app}) under Conversation Routing. Every secret below was
# generated for this file; keep it private (chmod 600) or move the secrets to the
# environment with {{ env = "NAME" }}. Still to fill in: each app's Meta app secret
# and Page token (REPLACE_…), and each backend's URL. docs/operations.md explains
# every setting.

listen = "{listen}"
data_dir = "{data_dir}"
log_format = "text"                  # or "json"
# max_body_bytes = 1048576           # larger webhook bodies get 413
# max_attachment_bytes = 26214400    # attachment uploads (message_attachments) up to Meta's 25 MiB
# log_cache_bytes = 67108864         # sled's page cache (its own default is 1 GiB)
admin_token = "{admin}"              # Baton's admin API: export, redrive, everything
auditor_token = "{auditor}"          # read-only: every thread, timeline and export
# metrics_token = "…"                # when set, /metrics needs it (or the admin token)
# graph_timeout_ms = 10000           # a Graph call slower than this has an unknown outcome
# body_timeout_ms = 10000            # a request body slower than this is cut off (408)
# send_rate_per_second = 300.0       # per page, Meta's text limit; send_burst defaults to it
# send_max_attempts = 5              # attempts when Meta throttles or fails before sending
# send_backoff_ms = 250              # base of the exponential backoff between them
# dispatch_dead_letter_after_secs = 86400  # forwarding to a backend gives up on an item after this
# stop_grace_ms = 1000               # at SIGTERM, keep answering 503 "stopping" this long
# max_connections = 512              # open connections at once
# app_requests_per_second = 5000.0   # per app on Baton's API; more get 429
# webhook_source_networks = []       # when set, webhooks only from these networks (CIDR)
# trusted_proxies = []               # proxies whose X-Forwarded-For is believed
# checkpoint_key = "/etc/baton/checkpoint.key"  # `baton keygen`: signs the chain's head
# checkpoint_every_secs = 300
# snapshot_every_records = 1000000   # a projection snapshot each time the log grows this much (0: only at a stop)
# reconcile_every_secs = 1800        # ask Meta about a thread an app holds, unconfirmed this long
# reconcile_calls_per_page_per_hour = 1000

[[pages]]
id = "{page}"
name = "{page_name}"
routing = {{ mode = "conversation_routing", default_app = "{bot_app}" }}
# Other modes: {{ mode = "zero_config" }}
#              {{ mode = "handover_v1", primary = "{bot_app}", secondaries = ["{human_app}"] }}
apps = ["{bot_app}", "{human_app}", "263902037430900"]

[[apps]]
id = "{bot_app}"
name = "Bot"
kind = "bot"
management = "managed"
may_take_control = true
may_set_messenger_profile = true     # may change the page's greeting, Get Started, menu
app_secret = "REPLACE_WITH_THE_BOT_APPS_META_APP_SECRET"  # or {{ env = "BATON_BOT_APP_SECRET" }}
forward_secret = "{bot_forward}"   # signs what Baton forwards; give it to the bot's backend
verify_token = "{bot_verify}"      # enter it in Meta's webhook settings for this app
api_token = "{bot_api}"            # the bot calls Baton's Graph API with this token
graph_base_url = "{graph_base_url}"
backend_url = "http://127.0.0.1:3001/webhook"  # where the bot receives its events
page_tokens = {{ "{page}" = "REPLACE_WITH_THE_BOT_APPS_PAGE_TOKEN" }}

[[apps]]
id = "{human_app}"
name = "Human inbox"
kind = "human"
management = "managed"
app_secret = "REPLACE_WITH_THE_HUMAN_APPS_META_APP_SECRET"
forward_secret = "{human_forward}"
verify_token = "{human_verify}"
api_token = "{human_api}"
graph_base_url = "{graph_base_url}"
backend_url = "http://127.0.0.1:3002/webhook"
page_tokens = {{ "{page}" = "REPLACE_WITH_THE_HUMAN_APPS_PAGE_TOKEN" }}

[[apps]]
id = "263902037430900"
name = "Page Inbox"
kind = "human"
management = "external"
"#
    ))
}

/// `baton init`.
pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let text = render(&args)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&args.out)
        .with_context(|| format!("creating {} (it must not exist yet)", args.out.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", args.out.display()))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} (mode 0600)", args.out.display());
    println!(
        "next: fill in each app's Meta app secret and Page token (REPLACE_…) and the backend URLs,"
    );
    println!("      enter each app's verify_token and https://<host>/webhooks/<app id> in Meta's webhook settings,");
    println!("      then: baton serve --config {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
