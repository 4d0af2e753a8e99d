//! The GraphQL API of `shared/API.md`: schema, resolvers and transport (HTTP and WebSocket).

mod context;
mod error;
mod guard;
mod loaders;
mod mutation;
mod query;
mod subscription;
mod transport;
mod types;

use async_graphql::{SDLExportOptions, Schema};

pub use context::{Actor, ClientIp, RequestId, SubscriptionBudget};
pub use error::{refusal as refusal_body, ApiError};
pub use guard::{password_fields_in, representable, MAX_PASSWORD_FIELDS};
pub use loaders::UserLoader;
pub use mutation::Mutation;
pub use query::Query;
pub use subscription::{Subscription, TYPING_TTL};
pub use transport::{routes, WsConfig, MAX_BODY};

use crate::app::App;

pub type ParleySchema = Schema<Query, Mutation, Subscription>;

/// Deepest query accepted.
pub const MAX_DEPTH: usize = 12;
/// Most complex query accepted: each field counts 1, a list field its page size (or an
/// assumed size) times its selection, time travel 100.
pub const MAX_COMPLEXITY: usize = 20_000;

/// The schema over `app`.
pub fn schema(app: App) -> ParleySchema {
    Schema::build(Query, Mutation, Subscription)
        .data(app)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .extension(error::ErrorCodes)
        .extension(guard::RequestGuard)
        .finish()
}

/// The schema as SDL, sorted, as checked in at `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(Query, Mutation, Subscription)
        .finish()
        .sdl_with_options(
            SDLExportOptions::new()
                .sorted_fields()
                .sorted_arguments()
                .sorted_enum_items(),
        )
}
