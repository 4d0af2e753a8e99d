//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
//! `PARLEY_LOG_FORMAT=json`, one JSON object per line (for log collectors). Every HTTP request
//! gets an access log line at `info` (see [`crate::http`]).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The log format `PARLEY_LOG_FORMAT` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// From `PARLEY_LOG_FORMAT` (`text`, the default, or `json`); anything else is an error.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("PARLEY_LOG_FORMAT") {
            Err(_) => Ok(Self::Text),
            Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
                "" | "text" => Ok(Self::Text),
                "json" => Ok(Self::Json),
                other => Err(format!(
                    "PARLEY_LOG_FORMAT must be `text` or `json`, not {other:?}"
                )),
            },
        }
    }
}

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = LogFormat::from_env().unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(2);
    });
    // A second init (tests building several apps in one process) keeps the first subscriber.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
