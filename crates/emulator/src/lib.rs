//! A stand-in for Meta's Messenger Platform: the Graph API endpoints Baton
//! uses and signed webhook delivery, written from Meta's documented behaviour.
//!
//! It exists so that Baton's system tests, benchmarks and demo have a Meta to
//! talk to. It deliberately does not depend on any Baton crate: it is an
//! independent second opinion on the rules. It is not a full Graph API: it
//! does not fetch attachment URLs, render templates or model Instagram.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use emulator::{AppConfig, Emulator, PageConfig, World};
//! let world = World::default()
//!     .with_page(PageConfig::conversation_routing("PAGE", "111"))
//!     .with_app(AppConfig::new("111", "secret").with_token("PAGE", "tok-111"));
//! let emu = Emulator::start(world)?;
//! emu.control().user_text("PAGE", "PSID", "hello").await?;
//! emu.stop().await;
//! # Ok(()) }
//! ```

pub mod api;
mod client;
mod delivery;
mod engine;
mod multipart;
mod server;
mod world;

pub use api::*;
pub use client::{ClientError, ControlClient};
pub use delivery::{signature_1, signature_256, signed_request};
pub use server::{Emulator, EmulatorHandle};
pub use world::{
    AppConfig, PageConfig, Routing, WebhookSettings, World, DEFAULT_EPOCH_MS, DEFAULT_FIELDS,
    PAGE_INBOX_APP_ID,
};

/// Why the emulator could not start or load its world.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("invalid world configuration: {0}")]
    Config(String),
    #[error("could not bind or serve: {0}")]
    Io(#[from] std::io::Error),
    #[error("could not start: {0}")]
    Start(String),
}
