//! Parsed documents of the query texts clients send again and again. Clients (Apollo,
//! graphql-ws, the web page, the load bench) send the same few operations with different
//! variables; parsing each again was a visible share of the server's CPU under load (pest,
//! and the allocations of a fresh tree). The innermost extension: the guard and the
//! conventions still check every document they get, cached or not; only documents that
//! parsed (and passed the parser's own limits) are kept, so an error is always the parser's.
//! Requests without text (automatic persisted queries by hash) pass through.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{ServerResult, Variables};
use lru::LruCache;

/// Longest query text kept (longer ones are parsed every time).
pub const MAX_CACHED_QUERY: usize = 8 * 1024;

/// The extension factory; the cache is shared by every request of the schema.
#[derive(Clone)]
pub struct ParseCache {
    documents: Arc<Mutex<LruCache<String, ExecutableDocument>>>,
}

impl ParseCache {
    /// Keeps up to `capacity` documents, least recently used out first.
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            documents: Arc::new(Mutex::new(LruCache::new(capacity))),
        }
    }

    fn get(&self, query: &str) -> Option<ExecutableDocument> {
        self.documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(query)
            .cloned()
    }

    fn put(&self, query: &str, document: &ExecutableDocument) {
        self.documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(query.to_owned(), document.clone());
    }
}

impl ExtensionFactory for ParseCache {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Extension for ParseCache {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // No text: an automatic persisted query, whose document the APQ extension has
        // already (its own cache, by hash); an empty key would hand one operation's document
        // to another.
        if query.is_empty() || query.len() > MAX_CACHED_QUERY {
            return next.run(ctx, query, variables).await;
        }
        if let Some(document) = self.get(query) {
            return Ok(document);
        }
        let document = next.run(ctx, query, variables).await?;
        self.put(query, &document);
        Ok(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_is_kept_and_the_least_recently_used_goes_first() {
        let cache = ParseCache::new(2);
        let parse = |q: &str| async_graphql::parser::parse_query(q).unwrap();
        for query in ["{ a }", "{ b }"] {
            cache.put(query, &parse(query));
        }
        assert!(cache.get("{ a }").is_some());
        cache.put("{ c }", &parse("{ c }"));
        assert!(
            cache.get("{ b }").is_none(),
            "b was the least recently used"
        );
        assert!(cache.get("{ a }").is_some());
        assert!(cache.get("{ c }").is_some());
    }
}
