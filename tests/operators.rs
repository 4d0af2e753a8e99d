//! What operators see of the real binary: `--help` never shows secrets from the environment,
//! JSON logs with an access log line per request, and `/metrics` that `promtool check
//! metrics` accepts, with histograms (not summaries) and HELP text.
//!
//! The metrics check needs `promtool` on PATH (Debian: `sudo apt-get install prometheus`);
//! without it the test fails with that message.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SECRETS: [&str; 3] = ["db-password-xyz", "redis-password-xyz", "jwt-secret-xyz"];

fn parley() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
    command
        .env(
            "DATABASE_URL",
            "postgres://parley:db-password-xyz@127.0.0.1:1/parley",
        )
        .env("REDIS_URL", "redis://:redis-password-xyz@127.0.0.1:1")
        .env(
            "PARLEY_JWT_SECRET",
            "jwt-secret-xyz-jwt-secret-xyz-jwt-secret-xyz",
        );
    command
}

#[test]
fn help_never_prints_secrets_from_the_environment() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["events", "export", "--help"],
        vec!["projections", "status", "--help"],
        vec!["users", "grant", "--help"],
    ] {
        let output = parley().args(&args).output().expect("running parley");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "parley {args:?}: {text}");
        assert!(text.contains("Usage"), "parley {args:?}: {text}");
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "parley {args:?} shows {secret}: {text}"
            );
        }
    }
    let output = parley().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("DATABASE_URL") && text.contains("REDIS_URL"),
        "{text}"
    );
}

/// A server in embedded mode on a free port with JSON logs; its stderr lines, one by one.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: String,
}

impl Server {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parley"))
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("PARLEY_BIND", "127.0.0.1:0")
            .env("PARLEY_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting parley serve");
        let stderr: ChildStderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            lines,
            addr: String::new(),
        };
        let listening = server.line_where(|v| v["fields"]["message"] == "listening");
        server.addr = listening["fields"]["addr"]
            .as_str()
            .expect("the listening line names the address")
            .to_owned();
        server
    }

    /// The next log line that matches, every line on the way being JSON.
    fn line_where(&self, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("a log line within 20 s");
            let value: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
            if wanted(&value) {
                return value;
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_an_access_line_per_request() {
    let server = Server::start();
    for path in ["/healthz", "/no-such-page"] {
        let response = reqwest::Client::new()
            .get(server.url(path))
            .header("x-request-id", format!("req-{}", path.len()))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let line = server.line_where(|v| {
            v["fields"]["message"] == "finished processing request" && v["span"]["uri"] == path
        });
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["span"]["method"], "GET", "{line}");
        assert_eq!(
            line["span"]["request_id"],
            format!("req-{}", path.len()),
            "{line}"
        );
        assert_eq!(line["fields"]["status"], status, "{line}");
        assert!(line["fields"]["latency"].is_string(), "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_with_histograms_and_help() {
    let server = Server::start();
    let http = reqwest::Client::new();
    // Something in every family: requests, a GraphQL error, a command.
    http.get(server.url("/healthz")).send().await.unwrap();
    http.post(server.url("/graphql"))
        .json(&serde_json::json!({ "query": "{ nope" }))
        .send()
        .await
        .unwrap();
    http.post(server.url("/graphql"))
        .json(&serde_json::json!({ "query": "mutation { register(username: \"metrics_al\", password: \"password-123\") { token } }" }))
        .send()
        .await
        .unwrap();
    let text = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "parley_http_request_duration_seconds",
        "parley_command_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} histogram")),
            "{family} is not a histogram:\n{text}"
        );
        assert!(text.contains(&format!("{family}_bucket{{")), "{text}");
        assert!(text.contains(&format!("# HELP {family} ")), "{text}");
    }
    assert!(!text.contains(" summary"), "a summary is exported:\n{text}");
    assert!(
        text.contains("# HELP parley_http_requests_total "),
        "{text}"
    );
    assert!(
        text.contains("# HELP parley_graphql_errors_total "),
        "{text}"
    );

    let mut promtool = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => panic!(
            "\n\nThis test checks /metrics with `promtool check metrics` and cannot run promtool \
             ({error}). Install it (Debian/Ubuntu: `sudo apt-get install prometheus`; `.ci/run` \
             does this).\n"
        ),
    };
    {
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics refused /metrics:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
