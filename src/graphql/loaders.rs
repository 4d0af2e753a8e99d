//! Batch loading of users, so a page of 100 messages costs one directory query.

use std::collections::HashMap;
use std::time::Duration;

use async_graphql::dataloader::Loader;
use parley_domain::UserId;
use parley_projections::{ReadModels, UserView};

use crate::projected::Projected;

/// Loads users referenced by other objects (senders, hosts, members). Those users exist in
/// the event store; if the directory has not caught up with one yet (projector lag of a few
/// milliseconds), the loader waits for the projector's next checkpoints, briefly.
#[derive(Clone, Debug)]
pub struct UserLoader {
    models: ReadModels,
    projected: Projected,
}

impl UserLoader {
    pub fn new(models: ReadModels, projected: Projected) -> Self {
        Self { models, projected }
    }
}

impl Loader<UserId> for UserLoader {
    type Value = UserView;
    type Error = String;

    async fn load(&self, keys: &[UserId]) -> Result<HashMap<UserId, UserView>, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut checkpoints = self.projected.watch();
        let mut found = self.models.users(keys).await.map_err(|e| e.to_string())?;
        while found.len() < keys.len() {
            let moved = tokio::time::timeout_at(deadline, checkpoints.changed()).await;
            if !matches!(moved, Ok(Ok(()))) {
                break;
            }
            let missing: Vec<UserId> = keys
                .iter()
                .copied()
                .filter(|k| !found.contains_key(k))
                .collect();
            found.extend(
                self.models
                    .users(&missing)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(found)
    }
}
