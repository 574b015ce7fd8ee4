//! One shutdown signal for every task (in the style of mini-redis's
//! `Shutdown`): the server's signal handler or a test fires the [`Trigger`];
//! each task selects on its [`Shutdown`], finishes its unit of work (records
//! an outcome, flushes a cursor) and returns. Nothing is aborted.

use tokio::sync::watch;

/// Fires the shutdown once; every [`Shutdown`] made from it sees it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A task's view of the shutdown signal.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Trigger {
    pub fn new() -> Self {
        Self(watch::Sender::new(false))
    }

    /// A receiver for one task.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }

    /// Tells every task to finish. Calling it again does nothing.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    pub fn fired(&self) -> bool {
        *self.0.borrow()
    }
}

impl Default for Trigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// Whether the shutdown has been fired.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the shutdown is fired (at once if it already was). A
    /// dropped trigger counts as fired.
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}
