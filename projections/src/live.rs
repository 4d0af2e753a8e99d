//! The live feed: batches of events, published by the projector right after the transaction
//! that applied them to the read models commits. A subscriber therefore never sees an event
//! it could not page back to.

use tokio::sync::broadcast;

use crate::log::LiveBatch;

/// How many batches a slow subscriber may fall behind before it is told it lagged.
const CAPACITY: usize = 1024;

/// In-process fan-out of projected batches. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LiveFeed {
    sender: broadcast::Sender<LiveBatch>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveFeed {
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }

    /// Publishes a committed batch. Having no subscriber is fine.
    pub fn publish(&self, batch: LiveBatch) {
        let _ = self.sender.send(batch);
    }

    /// Batches published from now on. A receiver that falls more than 1024 batches behind
    /// gets `RecvError::Lagged` and must resume from the read models by cursor.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveBatch> {
        self.sender.subscribe()
    }
}
