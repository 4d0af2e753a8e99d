//! `parley events export`: the positioned log, streamed to JSONL or CSV.
//!
//! Output is a pure function of (range, filters): events in position order, one per line,
//! with a fixed column order, payload and metadata in canonical JSON (compact, keys sorted:
//! what serde_json writes for a `Value`) and `recordedAt` in one form, so two exports of the
//! same range are byte-identical. JSON the server wrote itself is already canonical and is
//! copied as is; anything else is re-serialized (see `canonical_json.rs`).
//! Secrets are redacted (`password_hash` of `UserRegistered` becomes `"[redacted]"`).
//!
//! The log is read by one task as PostgreSQL's binary `COPY` output (the cheapest form the
//! server has: no per-row protocol messages of the query path, no text escaping), one
//! statement per [`EXPORT_PAGE`] positions, while another thread parses it in place and
//! formats and writes it (see `postgres/binary_copy.rs`). Between the two travel buffers of
//! [`BATCH_BYTES`], at most [`READ_AHEAD`] of them: memory stays flat whatever the log's size,
//! and no statement runs longer than one page. The range is pinned when the export starts (an
//! open upper bound becomes the head at that moment), so events committed meanwhile never
//! make it longer.

use std::io::{self, BufWriter, Write};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use tokio::sync::mpsc;

use crate::canonical_json::write_canonical;
use crate::events::EventFilter;
use crate::log::{redacted_text, write_rfc3339_micros, LogEvent, RawLogEvent};
use crate::postgres::binary_copy::{copy_statement, CopyFormatError, CopyParser, CopyRow};
use crate::postgres::PgEventLog;
use crate::GlobalPosition;

/// Positions read per statement (one `COPY`): about a second of reading at most.
pub const EXPORT_PAGE: i64 = 100_000;

/// Bytes of COPY output handed to the writer at a time.
const BATCH_BYTES: usize = 256 * 1024;

/// Buffers read ahead of the writer.
const READ_AHEAD: usize = 8;

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
    #[error("reading the event log: {0}")]
    Format(String),
}

impl From<CopyFormatError> for ExportError {
    fn from(error: CopyFormatError) -> Self {
        Self::Format(error.to_string())
    }
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
    /// Reused buffers for the canonical payload and metadata of the event being written.
    payload: Vec<u8>,
    metadata: Vec<u8>,
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

/// The fields of one event, with payload and metadata as canonical JSON text.
struct Fields<'a> {
    position: i64,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: i64,
    event_type: &'a str,
    event_version: &'a str,
    recorded_at: &'a DateTime<Utc>,
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
        Ok(Self {
            out,
            events: 0,
            payload: Vec::with_capacity(1024),
            metadata: Vec::with_capacity(256),
        })
    }

    /// Writes one decoded event, exactly as given (redact first: [`LogEvent::redacted`]).
    pub fn write(&mut self, event: &LogEvent) -> Result<(), ExportError> {
        self.payload.clear();
        self.metadata.clear();
        // A `Value` serializes canonically already (sorted keys, compact).
        serde_json::to_writer(&mut self.payload, &event.payload).map_err(io::Error::from)?;
        serde_json::to_writer(&mut self.metadata, &event.metadata).map_err(io::Error::from)?;
        self.write_fields(&Fields {
            position: event.position.0,
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            event_type: &event.event_type,
            event_version: &event.event_version,
            recorded_at: &event.recorded_at,
        })
    }

    /// Writes one event read as text, exactly as given (redact first:
    /// [`RawLogEvent::redacted`]); its JSON is brought to the same canonical form.
    pub fn write_raw(&mut self, event: &RawLogEvent) -> Result<(), ExportError> {
        self.write_text(
            &Fields {
                position: event.position.0,
                aggregate_type: &event.aggregate_type,
                aggregate_id: &event.aggregate_id,
                sequence: event.sequence,
                event_type: &event.event_type,
                event_version: &event.event_version,
                recorded_at: &event.recorded_at,
            },
            &event.payload,
            &event.metadata,
        )
    }

    /// Writes one row of binary COPY output, secrets redacted.
    fn write_copy_row(&mut self, row: &CopyRow<'_>) -> Result<(), ExportError> {
        let payload = crate::erasure::restored(
            row.aggregate_type,
            row.event_type,
            row.payload,
            row.erasable,
        );
        let redacted = redacted_text(row.event_type, &payload).map_err(io::Error::from)?;
        self.write_text(
            &Fields {
                position: row.position,
                aggregate_type: row.aggregate_type,
                aggregate_id: row.aggregate_id,
                sequence: row.sequence,
                event_type: row.event_type,
                event_version: row.event_version,
                recorded_at: &row.recorded_at,
            },
            redacted.as_deref().unwrap_or(&payload),
            row.metadata,
        )
    }

    /// Writes `fields` with payload and metadata given as JSON text (made canonical).
    fn write_text(
        &mut self,
        fields: &Fields<'_>,
        payload: &str,
        metadata: &str,
    ) -> Result<(), ExportError> {
        self.payload.clear();
        self.metadata.clear();
        write_canonical(payload, &mut self.payload).map_err(io::Error::from)?;
        write_canonical(metadata, &mut self.metadata).map_err(io::Error::from)?;
        self.write_fields(fields)
    }

    fn write_fields(&mut self, fields: &Fields<'_>) -> Result<(), ExportError> {
        match &mut self.out {
            Out::Jsonl(out) => {
                let string = |out: &mut BufWriter<Counting<W>>, s: &str| {
                    serde_json::to_writer(out, s).map_err(io::Error::from)
                };
                write!(out, "{{\"position\":{}", fields.position)?;
                out.write_all(b",\"aggregateType\":")?;
                string(out, fields.aggregate_type)?;
                out.write_all(b",\"aggregateId\":")?;
                string(out, fields.aggregate_id)?;
                write!(out, ",\"sequence\":{}", fields.sequence)?;
                out.write_all(b",\"eventType\":")?;
                string(out, fields.event_type)?;
                out.write_all(b",\"eventVersion\":")?;
                string(out, fields.event_version)?;
                out.write_all(b",\"payload\":")?;
                out.write_all(&self.payload)?;
                out.write_all(b",\"metadata\":")?;
                out.write_all(&self.metadata)?;
                out.write_all(b",\"recordedAt\":\"")?;
                write_rfc3339_micros(fields.recorded_at, out)?;
                out.write_all(b"\"}\n")?;
            }
            Out::Csv(out) => {
                let mut recorded_at = Vec::with_capacity(27);
                write_rfc3339_micros(fields.recorded_at, &mut recorded_at)?;
                out.write_record([
                    fields.position.to_string().as_bytes(),
                    fields.aggregate_type.as_bytes(),
                    fields.aggregate_id.as_bytes(),
                    fields.sequence.to_string().as_bytes(),
                    fields.event_type.as_bytes(),
                    fields.event_version.as_bytes(),
                    &self.payload,
                    &self.metadata,
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

/// What the reader hands the writer.
enum Read {
    /// Binary COPY output (whole statements' outputs one after another, cut anywhere).
    Data(Vec<u8>),
    /// Every event up to this position has been sent.
    Reached(GlobalPosition),
}

/// Reads the events of `filter` with positions in `first..=last`, as binary COPY output, one
/// statement per [`EXPORT_PAGE`] positions, into `sink` (a read error is the last thing
/// sent). Stops when the range is done or nobody listens any more.
fn read_pages(
    log: PgEventLog,
    filter: EventFilter,
    first: GlobalPosition,
    last: GlobalPosition,
    sink: mpsc::Sender<Result<Read, sqlx::Error>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut after = GlobalPosition(first.0 - 1);
        while after < last {
            let up_to = GlobalPosition(after.0.saturating_add(EXPORT_PAGE).min(last.0));
            let statement = copy_statement(after, up_to, &filter);
            match copy_page(&log, &statement, &sink).await {
                Ok(true) => {}
                // The writer stopped (it reports why).
                Ok(false) => return,
                Err(error) => {
                    let _ = sink.send(Err(error)).await;
                    return;
                }
            }
            if sink.send(Ok(Read::Reached(up_to))).await.is_err() {
                return;
            }
            after = up_to;
        }
    })
}

/// Runs one COPY statement, sending its output on in [`BATCH_BYTES`] buffers. `false` if
/// the writer went away.
async fn copy_page(
    log: &PgEventLog,
    statement: &str,
    sink: &mpsc::Sender<Result<Read, sqlx::Error>>,
) -> Result<bool, sqlx::Error> {
    let mut conn = log.pool().acquire().await?;
    let mut stream = conn.copy_out_raw(statement).await?;
    let mut batch = Vec::with_capacity(BATCH_BYTES + 64 * 1024);
    while let Some(chunk) = stream.try_next().await? {
        batch.extend_from_slice(&chunk);
        if batch.len() >= BATCH_BYTES {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_BYTES + 64 * 1024));
            if sink.send(Ok(Read::Data(full))).await.is_err() {
                drop(stream);
                // Mid-COPY: the connection cannot go back to the pool.
                conn.close_on_drop();
                return Ok(false);
            }
        }
    }
    drop(stream);
    Ok(batch.is_empty() || sink.send(Ok(Read::Data(batch))).await.is_ok())
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

    let (pages, mut received) = mpsc::channel::<Result<Read, sqlx::Error>>(READ_AHEAD);
    let reader = match resolved {
        // Nothing to read: dropping the sender ends the writer's loop at once.
        None => {
            drop(pages);
            None
        }
        Some(filter) => Some(read_pages(log.clone(), filter, first, last, pages)),
    };
    // Where the reader must have got to for the export to be complete.
    let end = if reader.is_some() && first <= last {
        last
    } else {
        GlobalPosition(first.0 - 1)
    };

    let writer = tokio::task::spawn_blocking(move || {
        let mut progress = progress;
        let mut writer = EventWriter::new(out, format)?;
        let mut parser = CopyParser::default();
        let mut reached = GlobalPosition(first.0 - 1);
        while let Some(read) = received.blocking_recv() {
            match read? {
                Read::Data(data) => {
                    parser.feed(&data, &mut |row| writer.write_copy_row(row))?;
                }
                Read::Reached(position) => {
                    reached = position;
                    progress(ExportProgress {
                        events: writer.events(),
                        position,
                        first,
                        last,
                    });
                }
            }
        }
        parser.finish()?;
        if reached != end {
            return Err(ExportError::Writer(format!(
                "the reader stopped at position {reached} of {end}"
            )));
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
        let payload: serde_json::Value =
            serde_json::from_str(&record[6]).expect("payload is JSON text");
        assert_eq!(payload, event().payload);
        assert_eq!(&record[8], "2026-11-26T22:55:54.555283Z");
    }

    #[test]
    fn raw_and_decoded_events_are_written_identically() {
        for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
            let decoded = event();
            let raw = RawLogEvent {
                position: decoded.position,
                aggregate_type: decoded.aggregate_type.clone(),
                aggregate_id: decoded.aggregate_id.clone(),
                sequence: decoded.sequence,
                event_type: decoded.event_type.clone(),
                event_version: decoded.event_version.clone(),
                // Stored text in another key order and spacing.
                payload: r#"{ "MessageSent": { "seq": 2, "body": "hi, \"you\"\nthere" } }"#
                    .to_owned(),
                metadata: r#"{"timestamp":"t","request_id":"r","actor":"a"}"#.to_owned(),
                recorded_at: decoded.recorded_at,
            };
            let mut writer = EventWriter::new(Vec::new(), format).expect("writer");
            writer.write_raw(&raw).expect("write");
            let (bytes, _) = writer.finish().expect("finish");
            assert_eq!(String::from_utf8(bytes).expect("utf-8"), render(format));
        }
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
