//! The GraphQL API of `shared/API.md`: schema, resolvers and transport (HTTP and WebSocket).

mod context;
pub(crate) mod conventions;
pub(crate) mod error;
pub(crate) mod guard;
mod loaders;
mod mutation;
mod parse_cache;
mod query;
mod subscription;
mod timestamp;
mod types;

use async_graphql::extensions::apollo_persisted_queries::{
    ApolloPersistedQueries, LruCacheStorage,
};
use async_graphql::{SDLExportOptions, Schema};

pub use context::{Actor, ClientIp, RequestId, SubscriptionBudget};
pub use error::{refusal as refusal_body, ApiError};
pub use guard::{password_fields_in, representable, MAX_PASSWORD_FIELDS};
pub use loaders::UserLoader;
pub use mutation::Mutation;
pub use query::Query;
pub use subscription::{Subscription, TYPING_TTL};

use crate::app::App;

pub type ParleySchema = Schema<Query, Mutation, Subscription>;

/// Deepest query accepted.
pub const MAX_DEPTH: usize = 12;
/// Most complex query accepted: each field counts 1, a list field its page size (or an
/// assumed size) times its selection, time travel 100.
pub const MAX_COMPLEXITY: usize = 20_000;
/// Automatic persisted queries kept (least recently used go first); only queries of at
/// most [`MAX_PERSISTED_QUERY`] bytes are kept.
pub const PERSISTED_QUERIES: usize = 1000;
/// Longest query text an APQ registration keeps (longer ones run, uncached).
pub const MAX_PERSISTED_QUERY: usize = 16 * 1024;
/// Parsed documents kept for query texts that come again (see `parse_cache`).
pub const PARSED_QUERIES: usize = 512;

/// The schema over `app`.
pub fn schema(app: App) -> ParleySchema {
    Schema::build(Query, Mutation, Subscription)
        .data(app)
        // Depth is limited by `Conventions` (which does not count `__Type.ofType`).
        .limit_complexity(MAX_COMPLEXITY)
        .extension(error::ErrorCodes)
        .extension(conventions::Conventions {
            max_depth: MAX_DEPTH,
        })
        .extension(ApolloPersistedQueries::new(LruCacheStorage::new(
            PERSISTED_QUERIES,
        )))
        .extension(guard::RequestGuard)
        // Innermost: everything above checks the document it returns, cached or not.
        .extension(parse_cache::ParseCache::new(PARSED_QUERIES))
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
