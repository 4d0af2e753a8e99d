//! `parley events export`: the positioned log, streamed to JSONL or CSV.
//!
//! Output is a pure function of (range, filters): events in position order, one per line,
//! with a fixed column order, JSON objects with sorted keys (serde_json's default map) and
//! `recordedAt` in one canonical form, so two exports of the same range are byte-identical.
//! Secrets are redacted (`password_hash` of `UserRegistered` becomes `"[redacted]"`).
//!
//! The log is read in keyset-paged statements of [`EXPORT_PAGE`] events by one task while
//! another thread formats and writes the previous page: memory holds a few pages whatever
//! the log's size, and no transaction stays open. The range is pinned when the export
//! starts (an open upper bound becomes the head at that moment), so events committed
//! meanwhile never make it longer.

use std::io::{self, BufWriter, Write};
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::events::EventFilter;
use crate::log::LogEvent;
use crate::postgres::PgEventLog;
use crate::GlobalPosition;

/// Events read per statement.
pub const EXPORT_PAGE: i64 = 5000;

/// Pages read ahead of the writer.
const READ_AHEAD: usize = 2;

/// The columns, in their fixed order (CSV header; JSONL keys).
pub const COLUMNS: [&str; 9] = [
    "position",
    "aggregateType",
    "aggregateId",
    "sequence",
    "eventType",
    "eventVersion",
    "payload",
    "metadata",
    "recordedAt",
];

/// The output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// A header row, then one row per event; payload and metadata as compact JSON text.
    Csv,
}

impl FromStr for ExportFormat {
    type Err = ExportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jsonl" => Ok(Self::Jsonl),
            "csv" => Ok(Self::Csv),
            other => Err(ExportError::UnknownFormat(other.to_owned())),
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("unknown export format {0:?} (expected jsonl or csv)")]
    UnknownFormat(String),
    #[error("reading the event log: {0}")]
    Database(#[from] sqlx::Error),
    #[error("writing the export: {0}")]
    Io(#[from] io::Error),
    #[error("writing the export: {0}")]
    Csv(#[from] csv::Error),
    #[error("the export's writer thread failed: {0}")]
    Writer(String),
}

/// How far an export has come, reported after every page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportProgress {
    /// Events written so far.
    pub events: u64,
    /// The position of the last event read (matching or not: how far through the range).
    pub position: GlobalPosition,
    /// The pinned range: first and last position.
    pub first: GlobalPosition,
    pub last: GlobalPosition,
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    pub events: u64,
    pub bytes: u64,
    /// The pinned range: first and last position covered.
    pub first: GlobalPosition,
    pub last: GlobalPosition,
}

/// Formats events one at a time in the export format.
#[derive(Debug)]
pub struct EventWriter<W: Write> {
    out: Out<W>,
    events: u64,
}

#[derive(Debug)]
enum Out<W: Write> {
    Jsonl(BufWriter<Counting<W>>),
    Csv(Box<csv::Writer<Counting<W>>>),
}

/// Counts the bytes that reach the underlying writer.
#[derive(Debug)]
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

const BUFFER: usize = 256 * 1024;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonLine<'a> {
    position: i64,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: i64,
    event_type: &'a str,
    event_version: &'a str,
    payload: &'a Value,
    metadata: &'a Value,
    recorded_at: &'a str,
}

impl<W: Write> EventWriter<W> {
    /// A writer in `format` (CSV starts with its header row).
    pub fn new(out: W, format: ExportFormat) -> Result<Self, ExportError> {
        let counting = Counting {
            inner: out,
            bytes: 0,
        };
        let out = match format {
            ExportFormat::Jsonl => Out::Jsonl(BufWriter::with_capacity(BUFFER, counting)),
            ExportFormat::Csv => {
                let mut csv = csv::WriterBuilder::new()
                    .buffer_capacity(BUFFER)
                    .from_writer(counting);
                csv.write_record(COLUMNS)?;
                Out::Csv(Box::new(csv))
            }
        };
        Ok(Self { out, events: 0 })
    }

    /// Writes one event, exactly as given (redact first: see [`LogEvent::redacted`]).
    pub fn write(&mut self, event: &LogEvent) -> Result<(), ExportError> {
        let recorded_at = event.recorded_at_rfc3339();
        match &mut self.out {
            Out::Jsonl(out) => {
                let line = JsonLine {
                    position: event.position.0,
                    aggregate_type: &event.aggregate_type,
                    aggregate_id: &event.aggregate_id,
                    sequence: event.sequence,
                    event_type: &event.event_type,
                    event_version: &event.event_version,
                    payload: &event.payload,
                    metadata: &event.metadata,
                    recorded_at: &recorded_at,
                };
                serde_json::to_writer(&mut *out, &line).map_err(io::Error::from)?;
                out.write_all(b"\n")?;
            }
            Out::Csv(out) => {
                out.write_record([
                    event.position.0.to_string().as_str(),
                    &event.aggregate_type,
                    &event.aggregate_id,
                    event.sequence.to_string().as_str(),
                    &event.event_type,
                    &event.event_version,
                    &event.payload.to_string(),
                    &event.metadata.to_string(),
                    &recorded_at,
                ])?;
            }
        }
        self.events += 1;
        Ok(())
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Flushes everything and hands back the underlying writer and the bytes it received.
    pub fn finish(self) -> Result<(W, u64), ExportError> {
        let counting = match self.out {
            Out::Jsonl(out) => out.into_inner().map_err(|e| e.into_error())?,
            Out::Csv(out) => out
                .into_inner()
                .map_err(|e| ExportError::Io(e.into_error()))?,
        };
        let Counting { mut inner, bytes } = counting;
        inner.flush()?;
        Ok((inner, bytes))
    }
}

/// Streams the events `filter` selects, in position order, redacted, to `out` in `format`.
/// `progress` is called after every page (from the writer thread). Returns the writer (for
/// the caller to sync and publish, e.g. rename a temporary file) and a summary.
pub async fn export<W>(
    log: &PgEventLog,
    filter: &EventFilter,
    format: ExportFormat,
    out: W,
    progress: impl FnMut(ExportProgress) + Send + 'static,
) -> Result<(W, ExportSummary), ExportError>
where
    W: Write + Send + 'static,
{
    let head = log.head().await?;
    let pinned = filter.capped_at(head);
    let first = pinned.from().unwrap_or(GlobalPosition(1));
    let last = pinned.to().unwrap_or(head);
    // `None`: the aggregate id names no aggregate; the export is empty but well-formed.
    let resolved = log.resolve(&pinned).await?;

    let (pages, mut received) = mpsc::channel::<Result<Vec<LogEvent>, sqlx::Error>>(READ_AHEAD);
    let reader = resolved.map(|filter| {
        let log = log.clone();
        tokio::spawn(async move {
            let mut after = GlobalPosition(first.0 - 1);
            loop {
                let page = log.page(after, EXPORT_PAGE, &filter).await;
                let done = match &page {
                    Ok(events) => {
                        after = events.last().map_or(after, |e| e.position);
                        (events.len() as i64) < EXPORT_PAGE
                    }
                    Err(_) => true,
                };
                if pages.send(page).await.is_err() || done {
                    return;
                }
            }
        })
    });

    let writer = tokio::task::spawn_blocking(move || {
        let mut progress = progress;
        let mut writer = EventWriter::new(out, format)?;
        while let Some(page) = received.blocking_recv() {
            let page = page?;
            let position = page.last().map_or(last, |e| e.position);
            for event in page {
                writer.write(&event.redacted())?;
            }
            progress(ExportProgress {
                events: writer.events(),
                position,
                first,
                last,
            });
        }
        let events = writer.events();
        let (out, bytes) = writer.finish()?;
        Ok::<_, ExportError>((
            out,
            ExportSummary {
                events,
                bytes,
                first,
                last,
            },
        ))
    });
    let written = writer
        .await
        .map_err(|e| ExportError::Writer(e.to_string()))?;
    if let Some(reader) = reader {
        // The writer stops early only on an error, which it returns; the reader then ends
        // at its next send.
        if written.is_ok() {
            reader
                .await
                .map_err(|e| ExportError::Writer(e.to_string()))?;
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use serde_json::json;

    use super::*;

    fn event() -> LogEvent {
        LogEvent {
            position: GlobalPosition(42),
            aggregate_type: "Room".to_owned(),
            aggregate_id: "0192f0c4-0000-7000-8000-000000000001".to_owned(),
            sequence: 3,
            event_type: "MessageSent".to_owned(),
            event_version: "1.0".to_owned(),
            payload: json!({"MessageSent": {"seq": 2, "body": "hi, \"you\"\nthere"}}),
            metadata: json!({"timestamp": "t", "actor": "a", "request_id": "r"}),
            recorded_at: DateTime::from_timestamp(1_795_733_754, 555_283_000).expect("in range"),
        }
    }

    fn render(format: ExportFormat) -> String {
        let mut writer = EventWriter::new(Vec::new(), format).expect("writer");
        writer.write(&event()).expect("write");
        let (bytes, count) = writer.finish().expect("finish");
        assert_eq!(count as usize, bytes.len());
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn a_jsonl_line_has_fixed_keys_in_order_and_sorted_json_inside() {
        assert_eq!(
            render(ExportFormat::Jsonl),
            concat!(
                r#"{"position":42,"aggregateType":"Room","aggregateId":"0192f0c4-0000-7000-8000-000000000001","#,
                r#""sequence":3,"eventType":"MessageSent","eventVersion":"1.0","#,
                r#""payload":{"MessageSent":{"body":"hi, \"you\"\nthere","seq":2}},"#,
                r#""metadata":{"actor":"a","request_id":"r","timestamp":"t"},"#,
                r#""recordedAt":"2026-11-26T22:55:54.555283Z"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn a_csv_export_has_a_header_and_json_text_columns() {
        let csv = render(ExportFormat::Csv);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("position,aggregateType,aggregateId,sequence,eventType,eventVersion,payload,metadata,recordedAt")
        );
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let record = reader.records().next().expect("a row").expect("valid csv");
        assert_eq!(&record[0], "42");
        let payload: Value = serde_json::from_str(&record[6]).expect("payload is JSON text");
        assert_eq!(payload, event().payload);
        assert_eq!(&record[8], "2026-11-26T22:55:54.555283Z");
    }

    #[test]
    fn formats_are_parsed_by_name() {
        assert_eq!(
            "jsonl".parse::<ExportFormat>().ok(),
            Some(ExportFormat::Jsonl)
        );
        assert_eq!("csv".parse::<ExportFormat>().ok(), Some(ExportFormat::Csv));
        assert!(matches!(
            "xml".parse::<ExportFormat>(),
            Err(ExportError::UnknownFormat(f)) if f == "xml"
        ));
    }
}
