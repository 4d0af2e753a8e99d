//! The API from a real JavaScript client: `tests/js/api_client.mjs` (the `graphql-ws` npm
//! package over the `ws` WebSocket, `fetch` for HTTP) against a test server on each store.
//!
//! Needs Node.js 18+ and npm on `PATH`; without them the tests fail (they never skip). The
//! npm packages are installed from `tests/js/package-lock.json` (`npm ci`) when
//! `tests/js/node_modules` lacks them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use support::api::{Store, TestServer};

/// The npm packages the script imports.
const PACKAGES: [&str; 3] = ["graphql-ws", "ws", "graphql"];

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `tool --version`, failing the test with what to install when it cannot.
fn version_of(tool: &str) -> String {
    let output = Command::new(tool).arg("--version").output();
    match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        Ok(output) => panic!("`{tool} --version` failed: {}", describe(&output)),
        Err(error) => panic!(
            "\n\nThis test runs tests/js/api_client.mjs with Node.js and needs `{tool}` on PATH \
             ({error}). Install Node.js 18 or newer with npm (https://nodejs.org, or \
             `sudo apt-get install nodejs npm`), then run the tests again.\n"
        ),
    }
}

/// Makes sure the npm packages are installed (once per test process).
fn npm_packages() {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _once = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = js_dir();
    let node = version_of("node");
    let major: u32 = node
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 18,
        "tests/js/api_client.mjs needs Node.js 18 or newer (for fetch); found {node}"
    );
    let installed = PACKAGES.iter().all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .is_file()
    });
    if installed {
        return;
    }
    version_of("npm");
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("running npm ci");
    assert!(
        output.status.success(),
        "`npm ci --prefix tests/js` failed (is the npm registry reachable?): {}",
        describe(&output)
    );
}

async fn the_js_client_works(store: Store) {
    npm_packages();
    let server = TestServer::start(store).await;
    let script = js_dir().join("api_client.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(server.url(""))
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("node api_client.mjs finishes within 120 s")
        .expect("running node");
    assert!(
        output.status.success(),
        "node tests/js/api_client.mjs {} failed: {}",
        server.url(""),
        describe(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
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
