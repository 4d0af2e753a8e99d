//! The web pages in a real Chromium: `tests/js/browser.mjs` (playwright-core driving
//! Debian's `chromium`) against a test server: two people chatting through the page at `/`,
//! and GraphiQL at `/graphql` running a query, all from the server's embedded assets.
//! Screenshots are kept in `target/browser-artifacts/`.
//!
//! Needs Chromium at `/usr/bin/chromium` (or `PARLEY_CHROMIUM`), Node.js 18+ and npm; without
//! them the test fails with what to install (it never skips).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::api::{Store, TestServer};

fn chromium() -> PathBuf {
    let path = std::env::var_os("PARLEY_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.is_file(),
        "\n\nThe browser test needs Chromium at {} and found nothing there. Install it \
         (Debian/Ubuntu: `sudo apt-get update && sudo apt-get install -y chromium`; `.ci/run` \
         does this) or point PARLEY_CHROMIUM at a Chromium binary.\n",
        path.display()
    );
    path
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("creating target/browser-artifacts");
    dir
}

async fn two_people_chat_in_chromium(store: Store) {
    let chromium = chromium();
    let server = TestServer::start(store).await;
    let dir = artifacts();
    let stdout = support::node::run(
        "browser.mjs",
        &[&server.url(""), dir.to_str().expect("a UTF-8 path")],
        &[("PARLEY_CHROMIUM", chromium.to_str().expect("a UTF-8 path"))],
        Duration::from_secs(180),
    )
    .await;
    assert!(stdout.contains("all assertions passed"), "{stdout}");
    for shot in ["chat-alice.png", "chat-bob.png", "graphiql.png"] {
        let size = std::fs::metadata(dir.join(shot)).map_or(0, |m| m.len());
        assert!(
            size > 10_000,
            "screenshot {shot} missing or empty ({size} bytes)"
        );
    }
    server.stop().await;
}

// The pages are the subject here, not the store (the API suite runs on both): the embedded
// store keeps this test independent of other load on a shared PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_through_the_page_and_graphiql_runs_a_query() {
    two_people_chat_in_chromium(Store::Memory).await;
}
