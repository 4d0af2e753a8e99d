//! Checks on a parsed request before anything runs: input the store cannot represent (NUL
//! characters) is refused as `BAD_USER_INPUT`, and an operation may sign in or register at
//! most once (each costs an argon2 hash).

use std::collections::HashSet;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, FragmentDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::parser::Positioned;
use async_graphql::{Name, ServerError, ServerResult, Variables};
use async_graphql_value::{ConstValue, Value};

/// Fields that each cost a password hash.
const PASSWORD_FIELDS: [&str; 2] = ["login", "register"];
/// Most password fields in one operation (and one batch).
pub const MAX_PASSWORD_FIELDS: usize = 1;

fn bad_input(message: impl Into<String>) -> ServerError {
    let mut error = ServerError::new(message, None);
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", "BAD_USER_INPUT");
    error
}

/// Whether text may be stored: PostgreSQL text and JSON cannot hold U+0000.
pub fn representable(text: &str) -> bool {
    !text.contains('\0')
}

fn const_has_nul(value: &ConstValue) -> bool {
    match value {
        ConstValue::String(s) => !representable(s),
        ConstValue::List(items) => items.iter().any(const_has_nul),
        ConstValue::Object(fields) => fields
            .iter()
            .any(|(k, v)| !representable(k) || const_has_nul(v)),
        _ => false,
    }
}

fn value_has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => !representable(s),
        Value::List(items) => items.iter().any(value_has_nul),
        Value::Object(fields) => fields.values().any(value_has_nul),
        _ => false,
    }
}

fn set_has_nul(set: &SelectionSet) -> bool {
    set.items.iter().any(|selection| match &selection.node {
        Selection::Field(field) => {
            let field = &field.node;
            field.arguments.iter().any(|(_, v)| value_has_nul(&v.node))
                || field
                    .directives
                    .iter()
                    .any(|d| d.node.arguments.iter().any(|(_, v)| value_has_nul(&v.node)))
                || set_has_nul(&field.selection_set.node)
        }
        Selection::InlineFragment(fragment) => set_has_nul(&fragment.node.selection_set.node),
        Selection::FragmentSpread(_) => false,
    })
}

/// Whether a document or its variables hold a NUL character anywhere.
pub fn has_nul(document: &ExecutableDocument, variables: &Variables) -> bool {
    variables.values().any(const_has_nul)
        || document
            .fragments
            .values()
            .any(|f| set_has_nul(&f.node.selection_set.node))
        || document.operations.iter().any(|(_, op)| {
            set_has_nul(&op.node.selection_set.node)
                || op.node.variable_definitions.iter().any(|v| {
                    v.node
                        .default_value
                        .as_ref()
                        .is_some_and(|d| const_has_nul(&d.node))
                })
        })
}

fn count_password_fields(
    set: &SelectionSet,
    fragments: &std::collections::HashMap<Name, Positioned<FragmentDefinition>>,
    seen: &mut HashSet<Name>,
) -> usize {
    set.items
        .iter()
        .map(|selection| match &selection.node {
            Selection::Field(field) => {
                usize::from(PASSWORD_FIELDS.contains(&field.node.name.node.as_str()))
            }
            Selection::InlineFragment(fragment) => {
                count_password_fields(&fragment.node.selection_set.node, fragments, seen)
            }
            Selection::FragmentSpread(spread) => {
                let name = &spread.node.fragment_name.node;
                // A fragment counts each time it is spread, but a cycle (refused later by
                // validation) is not followed.
                if !seen.insert(name.clone()) {
                    return 0;
                }
                let count = fragments.get(name).map_or(0, |f| {
                    count_password_fields(&f.node.selection_set.node, fragments, seen)
                });
                seen.remove(name);
                count
            }
        })
        .sum()
}

/// How many `login`/`register` fields the mutations of a document select (every operation
/// of the document counts: only one runs, but which one is the client's choice).
pub fn password_fields(document: &ExecutableDocument) -> usize {
    let operations: Vec<_> = match &document.operations {
        DocumentOperations::Single(op) => vec![op],
        DocumentOperations::Multiple(ops) => ops.values().collect(),
    };
    operations
        .into_iter()
        .filter(|op| op.node.ty == OperationType::Mutation)
        .map(|op| {
            count_password_fields(
                &op.node.selection_set.node,
                &document.fragments,
                &mut HashSet::new(),
            )
        })
        .sum()
}

/// The password fields of a query text (0 if it does not parse: it fails later anyway).
pub fn password_fields_in(query: &str) -> usize {
    if !PASSWORD_FIELDS.iter().any(|f| query.contains(f)) {
        return 0;
    }
    async_graphql::parser::parse_query(query).map_or(0, |doc| password_fields(&doc))
}

fn too_many_password_fields() -> ServerError {
    bad_input(format!(
        "at most {MAX_PASSWORD_FIELDS} login or register per request"
    ))
}

/// The error for a batch with too many password fields.
pub fn check_batch(queries: &[&str]) -> Result<(), String> {
    let total: usize = queries.iter().map(|q| password_fields_in(q)).sum();
    if total > MAX_PASSWORD_FIELDS {
        Err(too_many_password_fields().message)
    } else {
        Ok(())
    }
}

/// The extension that applies these checks to every operation (HTTP and WebSocket).
pub struct RequestGuard;

impl ExtensionFactory for RequestGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestGuardExtension)
    }
}

struct RequestGuardExtension;

#[async_trait::async_trait]
impl Extension for RequestGuardExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        if !representable(query) {
            return Err(bad_input("the query holds a NUL character"));
        }
        let document = next.run(ctx, query, variables).await?;
        if has_nul(&document, variables) {
            return Err(bad_input("text must not hold the NUL character (U+0000)"));
        }
        if password_fields(&document) > MAX_PASSWORD_FIELDS {
            return Err(too_many_password_fields());
        }
        Ok(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(query: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(query).unwrap()
    }

    #[test]
    fn password_fields_are_counted_through_aliases_and_fragments() {
        assert_eq!(password_fields_in("{ __typename }"), 0);
        assert_eq!(
            password_fields_in(r#"mutation { login(username: "a", password: "b") { token } }"#),
            1
        );
        assert_eq!(
            password_fields_in(
                r#"mutation { a: login(username: "a", password: "b") { token } b: login(username: "a", password: "c") { token } }"#
            ),
            2
        );
        assert_eq!(
            password_fields_in(
                r#"mutation { ...F ...F } fragment F on Mutation { register(username: "a", password: "b") { token } }"#
            ),
            2
        );
        assert_eq!(
            password_fields_in(
                r#"mutation { ... on Mutation { login(username: "a", password: "b") { token } } x: register(username: "a", password: "b") { token } }"#
            ),
            2
        );
        // A cycle is not followed forever.
        assert_eq!(
            password_fields_in("mutation { ...A } fragment A on Mutation { ...A }"),
            0
        );
        // A query's `login` field (if one existed) is not a mutation.
        assert_eq!(password_fields_in("{ login }"), 0);
    }

    #[test]
    fn nul_is_found_in_arguments_variables_and_defaults() {
        let none = Variables::default();
        assert!(!has_nul(&doc(r#"{ a(x: "ok") }"#), &none));
        assert!(has_nul(&doc(r#"{ a(x: "o\u0000k") }"#), &none));
        assert!(has_nul(&doc(r#"{ a(x: ["ok", {y: "\u0000"}]) }"#), &none));
        assert!(has_nul(
            &doc(r#"query($v: String = "\u0000") { a(x: $v) }"#),
            &none
        ));
        assert!(has_nul(
            &doc(r#"{ ...F } fragment F on Query { a(x: "\u0000") }"#),
            &none
        ));
        let vars = Variables::from_json(serde_json::json!({ "b": { "c": ["x\u{0}"] } }));
        assert!(has_nul(&doc("query($b: In) { a(b: $b) }"), &vars));
    }
}
