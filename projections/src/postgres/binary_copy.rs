//! Reading the log the fastest way PostgreSQL has to hand rows out: `COPY (SELECT …) TO
//! STDOUT (FORMAT binary)`, parsed here without allocating.
//!
//! The binary format is a header (`PGCOPY\n\xff\r\n\0`, flags, an extension area), then per
//! row a field count and per field a length and its bytes in the type's binary form, then a
//! trailer (a field count of -1). PostgreSQL sends one `CopyData` message per row (the header
//! rides with the first), but nothing here relies on that: rows split across chunks are
//! carried over. Several COPY outputs may be fed one after another (one per page).
//!
//! The rows are the [`COPY_COLUMNS`] of `events`: `bigint`s are 8 bytes big-endian, `text`
//! its UTF-8 bytes, `timestamptz` microseconds since 2000-01-01 UTC as an 8-byte integer.

use chrono::{DateTime, Utc};

use crate::events::EventFilter;
use crate::GlobalPosition;

/// The columns of a row, in order (payload and metadata as text: exactly as stored for
/// `json`, whatever the column type). The payload comes as stored, with its erasable text
/// apart (NULL once erased): putting it back here is much cheaper than in the database
/// (see [`crate::erasure::with_text`]).
pub(crate) const COPY_COLUMNS: &str = "position, aggregate_type, aggregate_id, sequence, \
    event_type, event_version, payload::text, metadata::text, recorded_at, erasable";

const FIELDS: i16 = 10;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One row of `events` as the binary COPY output carries it, borrowed from the chunk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CopyRow<'a> {
    pub position: i64,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a str,
    pub metadata: &'a str,
    pub recorded_at: DateTime<Utc>,
    /// The text the payload's placeholder stands for; `None` if it has none or it was erased.
    pub erasable: Option<&'a str>,
}

/// The statement for the events `filter` selects with `after < position <= up_to`, in
/// position order, as binary COPY output. COPY takes no parameters, so values are written
/// into the statement: integers as such, strings as escape-string literals.
pub(crate) fn copy_statement(
    after: GlobalPosition,
    up_to: GlobalPosition,
    filter: &EventFilter,
) -> String {
    let mut sql = format!(
        "COPY (SELECT {COPY_COLUMNS} FROM events WHERE position > {} AND position <= {}",
        after.0, up_to.0
    );
    if let Some(kind) = filter.aggregate_type() {
        sql.push_str(" AND aggregate_type = ");
        push_literal(&mut sql, kind.as_str());
    }
    if let Some(id) = filter.aggregate_id() {
        sql.push_str(" AND aggregate_id = ");
        push_literal(&mut sql, id);
    }
    if !filter.event_types().is_empty() {
        sql.push_str(" AND event_type IN (");
        for (i, event_type) in filter.event_types().iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            push_literal(&mut sql, event_type);
        }
        sql.push(')');
    }
    sql.push_str(" ORDER BY position) TO STDOUT (FORMAT binary)");
    sql
}

/// `value` as an escape-string literal (`E'…'`), which means the same whatever
/// `standard_conforming_strings` says: backslashes and quotes are escaped.
fn push_literal(sql: &mut String, value: &str) {
    sql.push_str("E'");
    for c in value.chars() {
        match c {
            '\\' => sql.push_str("\\\\"),
            '\'' => sql.push_str("\\'"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
}

/// What went wrong in a COPY stream (never expected from a real server).
#[derive(Debug, thiserror::Error)]
#[error("unexpected binary COPY data: {0}")]
pub(crate) struct CopyFormatError(&'static str);

/// A streaming parser of binary COPY output.
#[derive(Debug, Default)]
pub(crate) struct CopyParser {
    /// Bytes of an incomplete header or row, waiting for the next chunk.
    carry: Vec<u8>,
    /// Inside a COPY's rows (after its header, before its trailer).
    in_rows: bool,
}

enum Step<'a> {
    /// Not enough bytes for the next header, row or trailer.
    More,
    /// A header or trailer of this many bytes.
    Frame(usize),
    /// A row of this many bytes.
    Row(usize, CopyRow<'a>),
}

impl CopyParser {
    /// Parses `chunk` (following what was fed before), calling `row` for every complete row.
    pub fn feed<E: From<CopyFormatError>>(
        &mut self,
        chunk: &[u8],
        row: &mut impl FnMut(&CopyRow<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.carry.is_empty() {
            let used = self.parse(chunk, row)?;
            self.carry.extend_from_slice(&chunk[used..]);
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(chunk);
            let used = self.parse(&carry, row)?;
            carry.drain(..used);
            self.carry = carry;
        }
        Ok(())
    }

    /// Checks that the stream ended after a complete COPY output.
    pub fn finish(&self) -> Result<(), CopyFormatError> {
        if self.in_rows || !self.carry.is_empty() {
            return Err(CopyFormatError("the stream ended inside a COPY output"));
        }
        Ok(())
    }

    /// Parses as much of `buf` as is complete; returns the bytes used.
    fn parse<E: From<CopyFormatError>>(
        &mut self,
        buf: &[u8],
        row: &mut impl FnMut(&CopyRow<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            let step = if self.in_rows {
                parse_row(rest)?
            } else {
                parse_header(rest)?
            };
            match step {
                Step::More => return Ok(at),
                Step::Frame(used) => {
                    self.in_rows = !self.in_rows;
                    at += used;
                }
                Step::Row(used, parsed) => {
                    row(&parsed)?;
                    at += used;
                }
            }
        }
    }
}

fn parse_header(buf: &[u8]) -> Result<Step<'_>, CopyFormatError> {
    if buf.len() < 19 {
        if buf.is_empty() || SIGNATURE.starts_with(&buf[..buf.len().min(11)]) {
            return Ok(Step::More);
        }
        return Err(CopyFormatError("not a binary COPY header"));
    }
    if &buf[..11] != SIGNATURE {
        return Err(CopyFormatError("not a binary COPY header"));
    }
    let extension = u32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]) as usize;
    if buf.len() < 19 + extension {
        return Ok(Step::More);
    }
    Ok(Step::Frame(19 + extension))
}

fn parse_row(buf: &[u8]) -> Result<Step<'_>, CopyFormatError> {
    let Some(count) = buf.get(..2) else {
        return Ok(Step::More);
    };
    let count = i16::from_be_bytes([count[0], count[1]]);
    if count == -1 {
        return Ok(Step::Frame(2));
    }
    if count != FIELDS {
        return Err(CopyFormatError("a row with an unexpected number of fields"));
    }
    let mut at = 2;
    let mut fields: [&[u8]; FIELDS as usize] = [&[]; FIELDS as usize];
    let mut erased = false;
    for (i, field) in fields.iter_mut().enumerate() {
        let Some(len) = buf.get(at..at + 4) else {
            return Ok(Step::More);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        // Every column read here is NOT NULL but the last, `erasable`.
        if len == -1 && i == FIELDS as usize - 1 {
            erased = true;
            continue;
        }
        let len = usize::try_from(len).map_err(|_| CopyFormatError("a NULL field"))?;
        let Some(bytes) = buf.get(at..at + len) else {
            return Ok(Step::More);
        };
        *field = bytes;
        at += len;
    }
    let recorded_at = DateTime::from_timestamp_micros(
        int8(fields[8])?
            .checked_add(PG_EPOCH_MICROS)
            .ok_or(CopyFormatError("a timestamp out of range"))?,
    )
    .ok_or(CopyFormatError("a timestamp out of range"))?;
    Ok(Step::Row(
        at,
        CopyRow {
            position: int8(fields[0])?,
            aggregate_type: text(fields[1])?,
            aggregate_id: text(fields[2])?,
            sequence: int8(fields[3])?,
            event_type: text(fields[4])?,
            event_version: text(fields[5])?,
            payload: text(fields[6])?,
            metadata: text(fields[7])?,
            recorded_at,
            erasable: if erased { None } else { Some(text(fields[9])?) },
        },
    ))
}

fn int8(bytes: &[u8]) -> Result<i64, CopyFormatError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| CopyFormatError("an integer that is not 8 bytes"))?;
    Ok(i64::from_be_bytes(bytes))
}

fn text(bytes: &[u8]) -> Result<&str, CopyFormatError> {
    std::str::from_utf8(bytes).map_err(|_| CopyFormatError("text that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventFilter;

    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    fn copy_output(rows: &[(i64, &str)]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        for (position, body) in rows {
            out.extend_from_slice(&FIELDS.to_be_bytes());
            field(&mut out, &position.to_be_bytes());
            field(&mut out, b"Room");
            field(&mut out, b"r-1");
            field(&mut out, &7i64.to_be_bytes());
            field(&mut out, b"MessageSent");
            field(&mut out, b"1.0");
            field(&mut out, body.as_bytes());
            field(&mut out, b"{}");
            // 2026-11-26T22:55:54.555283Z
            field(
                &mut out,
                &(1_795_733_754_555_283i64 - PG_EPOCH_MICROS).to_be_bytes(),
            );
            out.extend_from_slice(&(-1i32).to_be_bytes());
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn parse_in_chunks(bytes: &[u8], chunk: usize) -> Vec<(i64, String, String)> {
        let mut parser = CopyParser::default();
        let mut rows = Vec::new();
        for piece in bytes.chunks(chunk) {
            parser
                .feed::<CopyFormatError>(piece, &mut |row| {
                    rows.push((
                        row.position,
                        row.payload.to_owned(),
                        row.recorded_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    ));
                    Ok(())
                })
                .expect("valid");
        }
        parser.finish().expect("complete");
        rows
    }

    #[test]
    fn rows_are_read_whatever_the_chunking_and_across_several_outputs() {
        let mut bytes = copy_output(&[(1, r#"{"a":1}"#), (2, "{\"b\":\"é ✓\"}")]);
        bytes.extend(copy_output(&[]));
        bytes.extend(copy_output(&[(5, "{}")]));
        let expected = vec![
            (
                1,
                r#"{"a":1}"#.to_owned(),
                "2026-11-26T22:55:54.555283Z".to_owned(),
            ),
            (
                2,
                "{\"b\":\"é ✓\"}".to_owned(),
                "2026-11-26T22:55:54.555283Z".to_owned(),
            ),
            (5, "{}".to_owned(), "2026-11-26T22:55:54.555283Z".to_owned()),
        ];
        for chunk in [1, 2, 3, 7, 19, 64, bytes.len()] {
            assert_eq!(
                parse_in_chunks(&bytes, chunk),
                expected,
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn a_truncated_or_foreign_stream_is_an_error() {
        let bytes = copy_output(&[(1, "{}")]);
        let mut parser = CopyParser::default();
        parser
            .feed::<CopyFormatError>(&bytes[..bytes.len() - 5], &mut |_| Ok(()))
            .expect("so far so good");
        assert!(parser.finish().is_err());

        let mut parser = CopyParser::default();
        assert!(parser
            .feed::<CopyFormatError>(b"1\tRoom\tr-1\n", &mut |_| Ok(()))
            .is_err());
    }

    #[test]
    fn filter_values_become_escaped_literals() {
        let filter = EventFilter::parse(
            Some(3),
            None,
            Some("Room"),
            Some("it's a \\ room"),
            &["MessageSent".to_owned(), "MemberJoined".to_owned()],
        )
        .expect("valid filter");
        assert_eq!(
            copy_statement(GlobalPosition(2), GlobalPosition(9), &filter),
            format!(
                "COPY (SELECT {COPY_COLUMNS} FROM events WHERE position > 2 AND position <= 9 \
                 AND aggregate_type = E'Room' AND aggregate_id = E'it\\'s a \\\\ room' \
                 AND event_type IN (E'MemberJoined', E'MessageSent') ORDER BY position) \
                 TO STDOUT (FORMAT binary)"
            )
        );
    }
}
