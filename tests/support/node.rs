//! Node.js for the tests that drive the server with real JavaScript clients (`tests/js/`).
//!
//! Needs Node.js 18+ and npm on `PATH`; without them the tests fail (they never skip). The
//! npm packages are installed from `tests/js/package-lock.json` (`npm ci`) when
//! `tests/js/node_modules` lacks one of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The npm packages the scripts import (all of `tests/js/package.json`).
const PACKAGES: [&str; 6] = [
    "graphql-ws",
    "ws",
    "graphql",
    "playwright-core",
    "@apollo/client",
    "graphql-sse",
];

pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

pub fn describe(output: &Output) -> String {
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
            "\n\nThis test runs a script of tests/js with Node.js and needs `{tool}` on PATH \
             ({error}). Install Node.js 18 or newer with npm (https://nodejs.org, or \
             `sudo apt-get install nodejs npm`), then run the tests again.\n"
        ),
    }
}

/// Makes sure Node.js and the npm packages are there (installs them once per process).
pub fn npm_packages() {
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
        "the scripts of tests/js need Node.js 18 or newer (for fetch); found {node}"
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

/// Runs `node tests/js/<script> <args…>` (packages installed first) within `limit`; fails the
/// test with the script's output unless it exits 0. Returns its stdout.
pub async fn run(script: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> String {
    npm_packages();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(js_dir().join(script))
        .args(args)
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("node {script} did not finish within {limit:?}"))
        .expect("running node");
    assert!(
        output.status.success(),
        "node tests/js/{script} {} failed: {}",
        args.join(" "),
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
