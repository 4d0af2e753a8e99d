//! GraphQL-over-HTTP conventions that async-graphql leaves to the server:
//!
//! - **Depth limit that tools can live with.** The depth of an operation counts every field
//!   except `__Type.ofType`: the standard introspection query (graphql-js
//!   `getIntrospectionQuery()`) unwraps list/non-null wrappers through nine nested `ofType`
//!   fields, which says nothing about the cost of the query. Every other field counts, so
//!   ordinary operations keep the same limit as before, and so does an introspection query
//!   that nests `fields { type { fields … } }` (the expensive shape).
//! - **Error codes** for requests that never ran: `GRAPHQL_PARSE_FAILED` (the text is not
//!   GraphQL), `GRAPHQL_VALIDATION_FAILED` (unknown fields, wrong arguments, limits),
//!   `PERSISTED_QUERY_NOT_FOUND` (an APQ hash the server does not know yet).
//! - **Fields in request order.** async-graphql 7 resolves the fields of an object
//!   concurrently and keeps them in completion order (`{ me rooms }` could answer `rooms`
//!   first); the spec says request order, so the response is put back in that order from the
//!   operation's selection sets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextValidation,
};
use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Selection, SelectionSet,
};
use async_graphql::{
    Request, Response, ServerError, ServerResult, ValidationResult, Value, Variables,
};

pub const PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
pub const VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
pub const PERSISTED_QUERY_NOT_FOUND: &str = "PERSISTED_QUERY_NOT_FOUND";

/// The extension; register it before `ApolloPersistedQueries` so it sees that one's errors.
#[derive(Debug, Clone, Copy)]
pub struct Conventions {
    /// Deepest operation accepted (`ofType` not counted).
    pub max_depth: usize,
}

impl ExtensionFactory for Conventions {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PerRequest {
            max_depth: self.max_depth,
            document: Mutex::new(None),
        })
    }
}

/// One request's state: its parsed document, to put the response in request order.
struct PerRequest {
    max_depth: usize,
    document: Mutex<Option<ExecutableDocument>>,
}

fn with_code(mut error: ServerError, code: &str) -> ServerError {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code);
    }
    error
}

#[async_trait::async_trait]
impl Extension for PerRequest {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        next.run(ctx, request).await.map_err(|error| {
            if error.message == "PersistedQueryNotFound" {
                with_code(error, PERSISTED_QUERY_NOT_FOUND)
            } else {
                with_code(error, "BAD_USER_INPUT")
            }
        })
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await.map_err(|error| {
            // The parser's own limits (fragment recursion, directives) are limits, not
            // syntax errors.
            let limit =
                error.message.contains("recursion depth") || error.message.contains("directives");
            with_code(
                error,
                if limit {
                    VALIDATION_FAILED
                } else {
                    PARSE_FAILED
                },
            )
        })?;
        if depth(&document, self.max_depth) > self.max_depth {
            return Err(with_code(
                ServerError::new("Query is nested too deep.", None),
                VALIDATION_FAILED,
            ));
        }
        *self.document.lock().unwrap_or_else(|e| e.into_inner()) = Some(document.clone());
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        let document = self
            .document
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(document) = document {
            let operation = match (&document.operations, operation_name) {
                (DocumentOperations::Single(op), _) => Some(op),
                (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
                (DocumentOperations::Multiple(ops), None) => ops.values().next(),
            };
            if let Some(operation) = operation {
                in_request_order(
                    &mut response.data,
                    &[&operation.node.selection_set.node],
                    &document,
                );
            }
        }
        response
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|error| with_code(error, VALIDATION_FAILED))
                .collect()
        })
    }
}

/// Reorders the keys of `value` (an object, or a list of them) as `sets` select them, fragments
/// inlined, recursively.
fn in_request_order(value: &mut Value, sets: &[&SelectionSet], document: &ExecutableDocument) {
    match value {
        Value::List(items) => {
            for item in items {
                in_request_order(item, sets, document);
            }
        }
        Value::Object(object) => {
            let mut keys: Vec<(&str, Vec<&SelectionSet>)> = Vec::new();
            for set in sets {
                collect_keys(set, document, &mut keys, 0);
            }
            let mut ordered = IndexMap::with_capacity(object.len());
            for (key, sub) in keys {
                if let Some((name, mut child)) = object.shift_remove_entry(key) {
                    if !sub.is_empty() {
                        in_request_order(&mut child, &sub, document);
                    }
                    ordered.insert(name, child);
                }
            }
            // Anything not selected by name (there should be nothing) keeps its place at the end.
            ordered.extend(std::mem::take(object));
            *object = ordered;
        }
        _ => {}
    }
}

/// The response keys of `set` in order, each with the selection sets below it.
fn collect_keys<'a>(
    set: &'a SelectionSet,
    document: &'a ExecutableDocument,
    keys: &mut Vec<(&'a str, Vec<&'a SelectionSet>)>,
    nesting: usize,
) {
    // Validation refused fragment cycles before execution; this only bounds the walk.
    if nesting > 64 {
        return;
    }
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => {
                let key = field.node.response_key().node.as_str();
                let sub = &field.node.selection_set.node;
                match keys.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, subs)) => subs.push(sub),
                    None => keys.push((key, vec![sub])),
                }
            }
            Selection::InlineFragment(fragment) => {
                collect_keys(
                    &fragment.node.selection_set.node,
                    document,
                    keys,
                    nesting + 1,
                );
            }
            Selection::FragmentSpread(spread) => {
                if let Some(definition) = document.fragments.get(&spread.node.fragment_name.node) {
                    collect_keys(
                        &definition.node.selection_set.node,
                        document,
                        keys,
                        nesting + 1,
                    );
                }
            }
        }
    }
}

/// The deepest operation of `document`, fragments inlined, `ofType` fields not counted.
/// Stops counting past `limit` (so a hostile document costs at most its size times the
/// limit); fragment cycles (refused later by validation) count as too deep.
pub fn depth(document: &ExecutableDocument, limit: usize) -> usize {
    let mut walker = Walker {
        document,
        limit,
        fragments: HashMap::new(),
        visiting: Vec::new(),
    };
    document
        .operations
        .iter()
        .map(|(_, op)| walker.selection_set(&op.node.selection_set.node))
        .max()
        .unwrap_or(0)
}

struct Walker<'a> {
    document: &'a ExecutableDocument,
    limit: usize,
    /// Depth of each fragment's selection set, once known.
    fragments: HashMap<&'a str, usize>,
    visiting: Vec<&'a str>,
}

impl<'a> Walker<'a> {
    fn selection_set(&mut self, set: &'a SelectionSet) -> usize {
        let mut deepest = 0;
        for item in &set.items {
            let here = match &item.node {
                Selection::Field(field) => {
                    let own = usize::from(field.node.name.node.as_str() != "ofType");
                    own + self.selection_set(&field.node.selection_set.node)
                }
                Selection::InlineFragment(fragment) => {
                    self.selection_set(&fragment.node.selection_set.node)
                }
                Selection::FragmentSpread(spread) => {
                    self.fragment(spread.node.fragment_name.node.as_str())
                }
            };
            deepest = deepest.max(here);
            if deepest > self.limit {
                break;
            }
        }
        deepest
    }

    fn fragment(&mut self, name: &'a str) -> usize {
        if let Some(depth) = self.fragments.get(name) {
            return *depth;
        }
        if self.visiting.contains(&name) {
            return self.limit + 1;
        }
        let Some((key, definition)) = self.document.fragments.get_key_value(name) else {
            // Unknown fragment: validation reports it.
            return 0;
        };
        self.visiting.push(key.as_str());
        let depth = self.selection_set(&definition.node.selection_set.node);
        self.visiting.pop();
        self.fragments.insert(key.as_str(), depth);
        depth
    }
}

#[cfg(test)]
mod tests {
    use super::depth;

    fn of(query: &str) -> usize {
        depth(&async_graphql::parser::parse_query(query).unwrap(), 12)
    }

    #[test]
    fn counts_fields_and_fragments_but_not_of_type() {
        assert_eq!(of("{ __typename }"), 1);
        assert_eq!(of("{ me { rooms { name } } }"), 3);
        assert_eq!(
            of("{ me { ...F } } fragment F on User { rooms { ... on Room { name } } }"),
            3
        );
        assert_eq!(
            of("{ __schema { types { fields { type { ofType { ofType { ofType { name } } } } } } } }"),
            5
        );
    }

    #[test]
    fn fragment_cycles_count_as_too_deep() {
        assert_eq!(
            of("{ me { ...A } } fragment A on User { ...B } fragment B on User { ...A }"),
            14
        );
    }
}
