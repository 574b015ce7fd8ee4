//! Who decides for the shard (`docs/scale-out.md`). On the embedded store a
//! node is always the owner. On a shared store (PostgreSQL) one node at a
//! time holds the shard's lease: it runs the owner's work (the outbox, the
//! timers, reconciliation, checkpoints, retention, the watchdog, dispatch),
//! and its appends carry the lease's epoch, which the database checks. The
//! others record webhooks and route the rest to it.
//!
//! `lead` keeps the lease: it claims it every third of its length, and
//! when it wins, catches the projections up to the log's head (the old
//! owner's last decisions) before it starts a term; when it loses it, or
//! the store refuses an append as stale, it closes the fence (every append
//! refused), ends the term, waits for the owner's work to stop, and only
//! then records as a follower. A clean stop releases the lease, so another
//! node takes over at once rather than when it lapses.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use event_log::{EventStore, Fence, Leases};
use tokio::sync::watch;

use crate::shutdown::{Shutdown, Trigger};
use crate::Baton;

/// This node's part in deciding for the shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It decides: under `epoch` of the shard's lease, or always (`None`)
    /// on a store of its own.
    Owner { epoch: Option<u64> },
    /// Another node decides: calls other than webhooks go to `owner` (its
    /// address), or wait while no node holds the lease (`None`).
    Follower { owner: Option<String> },
}

impl Role {
    pub fn is_owner(&self) -> bool {
        matches!(self, Role::Owner { .. })
    }
}

/// How this node takes part in the shard's lease.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// This node's id in the lease table: configured (a restart takes the
    /// node's lease back at once, under a new epoch), or a new one per start.
    pub node: String,
    /// Where other nodes route calls to this one (`http://host:port`).
    pub address: String,
    /// How long a claim holds; renewed every third of it.
    pub ttl: Duration,
}

/// The node's role and how many owner terms are still running.
#[derive(Debug)]
pub(crate) struct Leadership {
    role: watch::Sender<Role>,
    running: watch::Sender<usize>,
}

impl Leadership {
    pub(crate) fn new(role: Role) -> Self {
        Leadership {
            role: watch::Sender::new(role),
            running: watch::Sender::new(0),
        }
    }
}

impl<S> Baton<S> {
    /// This node's role now, and its changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.leadership.role.subscribe()
    }

    /// This node's role at this moment.
    pub fn role_now(&self) -> Role {
        self.leadership.role.borrow().clone()
    }

    /// Whether this node decides for the shard now.
    pub fn is_owner(&self) -> bool {
        self.leadership.role.borrow().is_owner()
    }
}

/// Runs `work` once per term of ownership, until `shutdown`: each term gets
/// a [`Shutdown`] of its own, fired when the node steps down or stops, and
/// the next term starts only after `work` returned.
pub async fn each_term<S, F, Fut>(baton: Arc<Baton<S>>, mut shutdown: Shutdown, mut work: F)
where
    F: FnMut(Shutdown) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut role = baton.role();
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            owner = role.wait_for(Role::is_owner) => if owner.is_err() { return },
        }
        let term = Trigger::new();
        baton.leadership.running.send_modify(|n| *n += 1);
        let run = work(term.subscribe());
        tokio::pin!(run);
        let stop = tokio::select! {
            () = &mut run => None,
            _ = shutdown.recv() => Some(true),
            _ = role.wait_for(|r| !r.is_owner()) => Some(false),
        };
        if stop.is_some() {
            term.fire();
            run.await;
        }
        baton.leadership.running.send_modify(|n| *n -= 1);
        match stop {
            // The work ended by itself (its store closed, or it could not
            // start): it runs again in the next term, if there is one.
            None => {
                tokio::select! {
                    _ = shutdown.recv() => return,
                    _ = role.wait_for(|r| !r.is_owner()) => {}
                }
            }
            Some(true) => return,
            Some(false) => {}
        }
    }
}

/// Keeps this node's claim on the shard's lease until `shutdown`; see the
/// module's documentation. [`Baton::start_leased`] spawns it after the
/// first claim.
pub(crate) async fn lead<S: EventStore + Leases>(
    baton: Arc<Baton<S>>,
    lease: LeaseSettings,
    mut shutdown: Shutdown,
) {
    let mut fence = baton.store.fence();
    let every = (lease.ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = tokio::time::sleep(every) => {}
            _ = closed(&mut fence) => {}
        }
        if *fence.borrow() == Fence::Closed {
            // The database refused an append as stale: the lease moved on.
            step_down(&baton, None).await;
        }
        claim(&baton, &lease).await;
    }
    // The owner's work stops with the node's (its terms see `shutdown`),
    // still under the epoch, so it records the outcomes of its calls.
    wait_for_terms(&baton).await;
    baton.store.set_fence(Fence::Follower);
    if let Err(e) = baton.store.release(&lease.node).await {
        tracing::warn!(error = %e, "could not release the shard's lease; it lapses instead");
    }
}

/// One claim, and the role it implies.
pub(crate) async fn claim<S: EventStore + Leases>(baton: &Baton<S>, lease: &LeaseSettings) {
    let held = match *baton.leadership.role.borrow() {
        Role::Owner { epoch } => epoch,
        Role::Follower { .. } => None,
    };
    let claim = match baton
        .store
        .claim(&lease.node, &lease.address, lease.ttl, held)
        .await
    {
        Ok(claim) => claim,
        Err(e) => {
            // The database's clock ends the lease; until then this node's
            // writes still pass, and once it ends they are refused.
            tracing::warn!(error = %e, "could not claim the shard's lease");
            return;
        }
    };
    baton
        .metrics
        .lease_state(claim.mine, claim.epoch, baton.store.fenced_appends());
    let current = baton.leadership.role.borrow().clone();
    match current {
        Role::Owner { epoch } if claim.mine && epoch == Some(claim.epoch) => {}
        _ if claim.mine => {
            if current.is_owner() {
                step_down(baton, None).await;
            }
            step_up(baton, claim.epoch).await;
        }
        _ => {
            let owner = (!claim.remaining.is_zero()).then_some(claim.address);
            if current.is_owner() {
                step_down(baton, owner).await;
            } else if current
                != (Role::Follower {
                    owner: owner.clone(),
                })
            {
                baton.leadership.role.send_replace(Role::Follower { owner });
            }
        }
    }
}

/// Becomes the owner under `epoch`: appends carry it, the projections
/// catch up with everything the last owner wrote, then the work starts.
async fn step_up<S: EventStore + Leases>(baton: &Baton<S>, epoch: u64) {
    baton.store.set_fence(Fence::Owner(epoch));
    tracing::info!(epoch, "won the shard's lease; catching up with the log");
    match baton.store.head().await {
        Ok(head) => baton.projections.wait_for(head.position).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the log's head; not taking over yet");
            baton.store.set_fence(Fence::Follower);
            return;
        }
    }
    tracing::info!(epoch, "this node owns the shard");
    baton.metrics.lease_terms_started();
    baton
        .leadership
        .role
        .send_replace(Role::Owner { epoch: Some(epoch) });
}

/// Stops deciding: nothing is appended until the owner's work has stopped,
/// then the node records as a follower.
async fn step_down<S: EventStore + Leases>(baton: &Baton<S>, owner: Option<String>) {
    baton.store.set_fence(Fence::Closed);
    baton.leadership.role.send_replace(Role::Follower { owner });
    wait_for_terms(baton).await;
    baton.store.set_fence(Fence::Follower);
    tracing::warn!("this node no longer owns the shard; it records webhooks and routes the rest");
}

/// Resolves when the fence closes (never, if it cannot change any more).
async fn closed(fence: &mut watch::Receiver<Fence>) {
    if fence.wait_for(|f| *f == Fence::Closed).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn wait_for_terms<S>(baton: &Baton<S>) {
    let mut running = baton.leadership.running.subscribe();
    let _ = running.wait_for(|n| *n == 0).await;
}
