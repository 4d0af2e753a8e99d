//! The API from a real JavaScript client: `tests/js/api_client.mjs` (the `graphql-ws` npm
//! package over the `ws` WebSocket, `fetch` for HTTP) against a test server on each store.
//!
//! Needs Node.js 18+ and npm on `PATH` (see `support::node`); without them the tests fail
//! (they never skip).

mod support;

use std::time::Duration;

use support::api::{Store, TestServer};

async fn the_js_client_works(store: Store) {
    let server = TestServer::start(store).await;
    let stdout = support::node::run(
        "api_client.mjs",
        &[&server.url("")],
        &[],
        Duration::from_secs(120),
    )
    .await;
    assert!(stdout.contains("all assertions passed"), "{stdout}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graphql_ws_npm_client_works_on_postgres() {
    the_js_client_works(Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graphql_ws_npm_client_works_on_the_embedded_store() {
    the_js_client_works(Store::Memory).await;
}
