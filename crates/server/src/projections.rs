//! Projections: the thread ledgers, the pages and the dedupe index, folded
//! from the log by the domain's `apply`. One follower task reads the log in
//! order from the subscription, so state is a function of the log alone;
//! request handlers read snapshots and wait for the follower to reach the
//! positions they appended (read-your-writes). It never writes to the log.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use domain::events::{Channel, Event};
use domain::{AppId, Page, PageId, ThreadKey, ThreadLedger};
use event_log::{EventStore, Record, StorageError};
use tokio::sync::watch;

/// Which apps (and on which channel) have delivered an item already.
pub type Copies = Vec<(AppId, Channel)>;

/// The folded state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub pages: HashMap<PageId, Page>,
    pub threads: HashMap<ThreadKey, ThreadLedger>,
    /// Dedupe index: a 64-bit digest of each item's dedupe key → its copies.
    seen: HashMap<u64, Copies>,
    /// The last log position folded in.
    pub position: u64,
    /// Records whose payload could not be decoded (a newer schema): skipped.
    pub undecodable: u64,
}

fn digest(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl State {
    pub fn new(pages: impl IntoIterator<Item = Page>) -> Self {
        Self {
            pages: pages.into_iter().map(|p| (p.id.clone(), p)).collect(),
            threads: HashMap::new(),
            seen: HashMap::new(),
            position: 0,
            undecodable: 0,
        }
    }

    pub fn copies(&self, dedupe_key: &str) -> Option<&Copies> {
        self.seen.get(&digest(dedupe_key))
    }

    pub fn thread(&self, key: &ThreadKey) -> Option<&ThreadLedger> {
        self.threads.get(key)
    }

    /// Folds one stored record.
    pub fn apply_record(&mut self, record: &Record) {
        self.position = record.position;
        match Event::decode(&record.type_name, record.schema_version, &record.payload) {
            Ok(event) => self.apply(&event),
            Err(_) => self.undecodable += 1,
        }
    }

    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::MessagingEventReceived(e) => {
                self.seen
                    .entry(digest(&e.dedupe_key))
                    .or_default()
                    .push((e.delivery.app.clone(), e.delivery.channel));
            }
            Event::MessagingEventCopyReceived(e) => {
                self.seen
                    .entry(digest(&e.dedupe_key))
                    .or_default()
                    .push((e.delivery.app.clone(), e.delivery.channel));
            }
            _ => {}
        }
        if let Some(thread) = event.thread() {
            self.threads
                .entry(thread.clone())
                .or_insert_with(|| ThreadLedger::new(thread.clone()))
                .apply(event);
        } else {
            for page in self.pages.values_mut() {
                page.apply(event);
            }
        }
    }
}

/// Shared projections plus the follower's progress.
#[derive(Debug)]
pub struct Projections {
    state: RwLock<State>,
    position: watch::Sender<u64>,
}

impl Projections {
    pub fn new(state: State) -> Arc<Self> {
        let position = state.position;
        Arc::new(Self {
            state: RwLock::new(state),
            position: watch::Sender::new(position),
        })
    }

    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Waits until the follower has folded `position`.
    pub async fn wait_for(&self, position: u64) {
        let mut rx = self.position.subscribe();
        // `wait_for` returns at once when the value already satisfies it; an
        // error means the follower is gone, and then nothing will come.
        let _ = rx.wait_for(|p| *p >= position).await;
    }

    /// Folds every durable record from the current position to the head.
    pub async fn catch_up<S: EventStore>(&self, store: &S) -> Result<(), StorageError> {
        loop {
            let from = self.position() + 1;
            let records = store.read_all(from, 1024).await?;
            if records.is_empty() {
                return Ok(());
            }
            let last = {
                let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                for r in &records {
                    state.apply_record(r);
                }
                state.position
            };
            self.position.send_replace(last);
        }
    }

    /// Follows the log forever: wakes on each durable group, folds it.
    pub async fn follow<S: EventStore>(self: Arc<Self>, store: Arc<S>) {
        let mut head = store.subscribe();
        loop {
            if let Err(e) = self.catch_up(store.as_ref()).await {
                tracing::error!(error = %e, "projection follower cannot read the log; retrying on the next append");
            }
            if head.changed().await.is_err() {
                return;
            }
        }
    }
}
