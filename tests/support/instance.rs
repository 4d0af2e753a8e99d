//! The real `parley` binary as a separate process, so `kill -9` is real: started on a fixed
//! loopback port (a restarted instance comes back at the same address), its stderr kept for
//! the failure message.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::services::{free_port, signal_process};

/// The signing secret all instances share (a token from one is valid on every other).
pub const JWT_SECRET: &str = "fault-test-secret-that-is-long-enough-0123456789";

/// How to start an instance.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    pub name: String,
    pub database_url: String,
    pub redis_url: Option<String>,
}

pub struct Instance {
    pub spec: InstanceSpec,
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.spec.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Instance {
    /// Starts `parley serve` and waits until it answers `/healthz`.
    pub async fn start(spec: InstanceSpec) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut instance = Self {
            spec,
            addr,
            child: None,
            log: Arc::default(),
        };
        instance.spawn().await;
        instance
    }

    async fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
        for var in ["DATABASE_URL", "REDIS_URL", "PARLEY_DB_POOL_SIZE"] {
            command.env_remove(var);
        }
        command
            .arg("serve")
            .env("PARLEY_BIND", self.addr.to_string())
            .env("DATABASE_URL", &self.spec.database_url)
            .env("PARLEY_JWT_SECRET", JWT_SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(redis) = &self.spec.redis_url {
            command.env("REDIS_URL", redis);
        }
        let mut child = command.spawn().expect("starting parley");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        let name = self.spec.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("PARLEY_FAULTS_ECHO").is_some() {
                    eprintln!("[{name}] {line}");
                }
                let mut log = log.lock().expect("lock");
                if log.len() > 2000 {
                    log.drain(..1000);
                }
                log.push(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let http = reqwest::Client::new();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "parley {} exited at start ({status}); stderr:\n{}",
                    self.spec.name,
                    self.log_tail(40)
                );
            }
            let healthy = http
                .get(self.url("/healthz"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "parley {} did not answer /healthz within 60 s; stderr:\n{}",
                self.spec.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `kill -9`, and waits until the process is gone.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal_process(pid, "KILL");
            }
            let _ = child.wait().await;
        }
    }

    /// Starts it again, on the same address, after [`Self::kill9`].
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill9");
        self.spawn().await;
    }

    /// The last `n` lines the process logged.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().expect("lock");
        log[log.len().saturating_sub(n)..].join("\n")
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}
