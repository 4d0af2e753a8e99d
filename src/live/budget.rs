//! The subscription budget of one WebSocket connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A connection asked for more subscriptions than its budget.
#[derive(Debug, thiserror::Error)]
#[error("at most {max} subscriptions per connection")]
pub struct BudgetSpent {
    pub max: usize,
}

/// How many subscriptions one WebSocket connection may hold at once.
#[derive(Clone, Debug)]
pub struct SubscriptionBudget {
    active: Arc<AtomicUsize>,
    max: usize,
}

/// Held by a running subscription; gives its slot back when dropped.
#[derive(Debug)]
pub struct SubscriptionSlot {
    active: Arc<AtomicUsize>,
}

impl SubscriptionBudget {
    pub fn new(max: usize) -> Self {
        Self {
            active: Arc::default(),
            max,
        }
    }

    /// A slot, while fewer than the budget's subscriptions run.
    pub fn take(&self) -> Result<SubscriptionSlot, BudgetSpent> {
        let taken = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => {
                metrics::gauge!("parley_active_subscriptions").increment(1.0);
                Ok(SubscriptionSlot {
                    active: self.active.clone(),
                })
            }
            Err(_) => Err(BudgetSpent { max: self.max }),
        }
    }
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("parley_active_subscriptions").decrement(1.0);
    }
}
