//! Shard leases and fencing, for stores that several nodes share
//! (`docs/scale-out.md`). One node at a time owns a shard and decides for
//! its pages; the others record webhooks and route the rest to it. The
//! lease lives in the store, with an epoch that grows each time it changes
//! hands, and the store refuses an owner's write whose epoch is no longer
//! the live lease's.

use std::time::Duration;

use tokio::sync::watch;

use crate::error::StorageError;

/// What a node's appends carry, and so what the store lets it write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// Not the owner: appends carry no epoch. Such a node records webhooks
    /// and nothing it decides (it routes app calls to the owner).
    Follower,
    /// The owner under this epoch: appends carry it, and the store refuses
    /// them once the lease has moved on or lapsed.
    Owner(u64),
    /// Stepping down: every append is refused (`AppendError::Fenced`) until
    /// the node's owner tasks have stopped and it becomes a follower.
    Closed,
}

/// The shard's lease as a claim found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The holder's node id.
    pub holder: String,
    /// The lease's epoch.
    pub epoch: u64,
    /// Where the holder takes routed calls.
    pub address: String,
    /// Whether the claimant holds it now.
    pub mine: bool,
    /// How long the lease runs from the claim, by the store's clock (zero
    /// when it has lapsed).
    pub remaining: Duration,
}

/// A store that holds a lease per shard and fences appends with it.
pub trait Leases: Send + Sync + 'static {
    /// Takes the shard's lease for `node` for `ttl`, unless another node
    /// holds a live one, and answers with the lease as it stands afterwards.
    /// `held` is the epoch this process holds: the lease is renewed under
    /// it; any other claim that wins gets a new epoch, so a node restarted
    /// under the same id takes its lease back at once and fences the
    /// process it replaced.
    fn claim(
        &self,
        node: &str,
        address: &str,
        ttl: Duration,
        held: Option<u64>,
    ) -> impl std::future::Future<Output = Result<Claim, StorageError>> + Send;

    /// Ends `node`'s lease at once (a clean stop), so another node can take
    /// over without waiting for it to lapse. Does nothing if `node` does not
    /// hold it.
    fn release(
        &self,
        node: &str,
    ) -> impl std::future::Future<Output = Result<(), StorageError>> + Send;

    /// The live lease of `shard`, any shard of the store (not only the one
    /// this store appends to), or `None` while it is vacant or lapsed: where
    /// to route a call about a page another shard decides for. `mine` is
    /// always false.
    fn lease_of(
        &self,
        shard: i32,
    ) -> impl std::future::Future<Output = Result<Option<Claim>, StorageError>> + Send;

    /// Sets what this node's appends carry from now on.
    fn set_fence(&self, fence: Fence);

    /// What this node's appends carry; it turns [`Fence::Closed`] by itself
    /// when the store refuses an append as stale.
    fn fence(&self) -> watch::Receiver<Fence>;

    /// Appends the store refused as stale since it was opened.
    fn fenced_appends(&self) -> u64;
}
