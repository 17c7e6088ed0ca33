//! A small shutdown signal, as in tokio's mini-redis: the owner calls [`ShutdownTrigger::fire`],
//! every task holding a [`Shutdown`] sees it in its `select!`.

use tokio::sync::watch;

/// The sending half; cloning it is cheap, firing it twice is harmless.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger {
    sender: std::sync::Arc<watch::Sender<bool>>,
}

/// The receiving half, handed to each task.
#[derive(Clone, Debug)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// A connected trigger and signal.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender: std::sync::Arc::new(sender) }, Shutdown { receiver })
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        self.sender.send_replace(true);
    }
}

impl Shutdown {
    /// Completes once the trigger fired (or was dropped: nobody can stop us any more, but the
    /// owner is gone, so stopping is right).
    pub async fn fired(&mut self) {
        let _ = self.receiver.wait_for(|fired| *fired).await;
    }
}
