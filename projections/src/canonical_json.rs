//! Canonical JSON text without building a tree: compact, object keys sorted (and duplicate
//! keys resolved to the last, as `serde_json::Value` does), strings and numbers written the
//! way serde_json writes them. The output equals `serde_json::to_string(&value)` of the same
//! text parsed into a `Value`, but nothing is allocated for values that are already in that
//! form — which is everything Parley writes itself. Exports spend most of their time here.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Number;

/// Appends the canonical form of the JSON text `input` to `out`.
pub(crate) fn write_canonical(input: &str, out: &mut Vec<u8>) -> serde_json::Result<()> {
    if is_canonical(input.as_bytes()) {
        out.extend_from_slice(input.as_bytes());
        return Ok(());
    }
    let value: &RawValue = serde_json::from_str(input)?;
    write_value(value.get(), out)
}

/// Whether `input` is already exactly what serde_json writes for it: one pass, no
/// allocation. `false` only means "take the slow path", so anything unusual (floats, rare
/// escapes, deep nesting) may answer `false`.
fn is_canonical(input: &[u8]) -> bool {
    let mut at = 0;
    scan_value(input, &mut at, 0) && at == input.len()
}

/// Nesting deeper than this takes the slow path (which has serde_json's own limit).
const MAX_DEPTH: usize = 64;

fn scan_value(b: &[u8], at: &mut usize, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match b.get(*at) {
        Some(b'{') => scan_object(b, at, depth),
        Some(b'[') => scan_array(b, at, depth),
        Some(b'"') => scan_string(b, at).is_some(),
        Some(b't') => scan_literal(b, at, b"true"),
        Some(b'f') => scan_literal(b, at, b"false"),
        Some(b'n') => scan_literal(b, at, b"null"),
        Some(b'-' | b'0'..=b'9') => scan_integer(b, at),
        _ => false,
    }
}

fn scan_object(b: &[u8], at: &mut usize, depth: usize) -> bool {
    *at += 1;
    if b.get(*at) == Some(&b'}') {
        *at += 1;
        return true;
    }
    let mut previous: Option<&[u8]> = None;
    loop {
        // Keys with escapes would sort by their decoded text: slow path.
        let Some(key) = scan_string(b, at).filter(|k| !k.contains(&b'\\')) else {
            return false;
        };
        // Strictly increasing: sorted, and no duplicates.
        if previous.is_some_and(|p| p >= key) {
            return false;
        }
        previous = Some(key);
        if b.get(*at) != Some(&b':') {
            return false;
        }
        *at += 1;
        if !scan_value(b, at, depth + 1) {
            return false;
        }
        match b.get(*at) {
            Some(b',') => *at += 1,
            Some(b'}') => {
                *at += 1;
                return true;
            }
            _ => return false,
        }
    }
}

fn scan_array(b: &[u8], at: &mut usize, depth: usize) -> bool {
    *at += 1;
    if b.get(*at) == Some(&b']') {
        *at += 1;
        return true;
    }
    loop {
        if !scan_value(b, at, depth + 1) {
            return false;
        }
        match b.get(*at) {
            Some(b',') => *at += 1,
            Some(b']') => {
                *at += 1;
                return true;
            }
            _ => return false,
        }
    }
}

/// A string's raw content, if serde_json would write it exactly so: only the escapes it
/// uses itself (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and `\u00xx` in lower-case hex
/// for the other control characters).
fn scan_string<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let start = *at + 1;
    let mut i = start;
    loop {
        match *b.get(i)? {
            b'"' => {
                *at = i + 1;
                return Some(&b[start..i]);
            }
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = b.get(i + 2..i + 6)?;
                    let digit = |c: u8| match c {
                        b'0'..=b'9' => Some(c - b'0'),
                        b'a'..=b'f' => Some(c - b'a' + 10),
                        _ => None,
                    };
                    if hex[0] != b'0' || hex[1] != b'0' {
                        return None;
                    }
                    let code = digit(hex[2])? * 16 + digit(hex[3])?;
                    if code >= 0x20 || matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
}

fn scan_literal(b: &[u8], at: &mut usize, literal: &[u8]) -> bool {
    if b.get(*at..*at + literal.len()) == Some(literal) {
        *at += literal.len();
        true
    } else {
        false
    }
}

/// An integer serde_json keeps exact and writes back unchanged: no sign on zero, no leading
/// zero, at most 18 digits. Anything else (floats included) takes the slow path.
fn scan_integer(b: &[u8], at: &mut usize) -> bool {
    let start = *at;
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let digits = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let count = i - digits;
    let valid = match count {
        0 => false,
        1 => b[digits] != b'0' || digits == start,
        _ => b[digits] != b'0' && count <= 18,
    };
    if !valid || matches!(b.get(i), Some(b'.' | b'e' | b'E')) {
        return false;
    }
    *at = i;
    true
}

fn write_value(raw: &str, out: &mut Vec<u8>) -> serde_json::Result<()> {
    match raw.as_bytes().first() {
        Some(b'{') => {
            let Entries(mut entries) = serde_json::from_str(raw)?;
            // Stable, so among equal keys the last one written stays last.
            entries.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
            out.push(b'{');
            let mut first = true;
            for (i, (key, value)) in entries.iter().enumerate() {
                if entries
                    .get(i + 1)
                    .is_some_and(|next| next.0.as_ref() == key.as_ref())
                {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_key(key, out)?;
                out.push(b':');
                write_value(value.get(), out)?;
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(raw)?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item.get(), out)?;
            }
            out.push(b']');
        }
        Some(b'"') if !raw.contains('\\') => out.extend_from_slice(raw.as_bytes()),
        Some(b'"') => {
            let text: String = serde_json::from_str(raw)?;
            serde_json::to_writer(&mut *out, &text)?;
        }
        Some(b't' | b'f' | b'n') => out.extend_from_slice(raw.as_bytes()),
        _ => {
            let number: Number = serde_json::from_str(raw)?;
            serde_json::to_writer(&mut *out, &number)?;
        }
    }
    Ok(())
}

fn write_key(key: &Key<'_>, out: &mut Vec<u8>) -> serde_json::Result<()> {
    match key {
        // Read without escapes, so it needs none: written as it was.
        Key(Cow::Borrowed(text)) => {
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
        }
        Key(Cow::Owned(text)) => serde_json::to_writer(&mut *out, text)?,
    }
    Ok(())
}

/// An object key, borrowed from the input unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl AsRef<str> for Key<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

/// An object's entries in input order, values still as text.
struct Entries<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;

        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::write_canonical;

    fn canonical(input: &str) -> String {
        let mut out = Vec::new();
        write_canonical(input, &mut out).expect("valid JSON");
        String::from_utf8(out).expect("utf-8")
    }

    fn via_value(input: &str) -> String {
        serde_json::to_string(&serde_json::from_str::<Value>(input).expect("valid JSON"))
            .expect("serializable")
    }

    #[test]
    fn the_output_is_what_a_value_round_trip_gives() {
        for input in [
            r#"{"b":1,"a":{"d":[1,2,{"z":null,"y":true}],"c":"x"}}"#,
            r#" { "MessageSent" : { "seq" : 3 , "body" : "hi \"you\"\n\u00e9\/" , "sent_at":"t" } } "#,
            r#"{"a":1,"a":2,"b":[],"c":{}}"#,
            r#"{"k\u0065y":1,"key2":2,"é":3,"e":4}"#,
            r#"[1.0, 1e2, -0, 12345678901234567890, 0.1, -3, 2.5E-3]"#,
            r#""plain""#,
            "null",
            r#"{"nested":{"deeper":{"deepest":[{"b":2,"a":1}]}}}"#,
        ] {
            assert_eq!(canonical(input), via_value(input), "for {input}");
        }
    }

    #[test]
    fn the_fast_path_takes_only_what_serde_json_would_write_unchanged() {
        for input in [
            r#"{"a":1,"b":{"c":[true,false,null],"d":"x\"y\\z\n\t\u001f"}}"#,
            r#"{"MessageSent":{"body":"é ✓","sender":"s","seq":0}}"#,
            r#"[-1,0,123456789012345678,{}]"#,
        ] {
            assert!(super::is_canonical(input.as_bytes()), "{input}");
            assert_eq!(canonical(input), via_value(input));
        }
        for input in [
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a": 1}"#,
            r#" {"a":1}"#,
            r#"{"a":1.5}"#,
            r#"{"a":-0}"#,
            r#"{"a":1e2}"#,
            r#"{"a":1234567890123456789012}"#,
            r#"{"a":"\/"}"#,
            r#"{"a":"\u00e9"}"#,
            r#"{"a":"\u000a"}"#,
            r#"{"a":"\u001F"}"#,
            r#"{"k\u0065y":1}"#,
        ] {
            assert!(!super::is_canonical(input.as_bytes()), "{input}");
            assert_eq!(canonical(input), via_value(input), "{input}");
        }
    }

    #[test]
    fn what_parley_stores_takes_the_fast_path() {
        // The store writes payloads as serde_json serializes a `Value`.
        let payload = serde_json::json!({"MessageSent": {
            "message_id": "0192f0c4-0000-7000-8000-000000000001",
            "seq": 17,
            "sender": "0192f0c4-0000-7000-8000-00000000a11c",
            "body": "line one\nline \"two\"\ttabbed \u{1} \u{7f} ✓ 🎉 \\ end",
            "client_msg_id": "c-17",
            "sent_at": "2026-11-20T22:55:54.555283123Z"
        }});
        let stored = payload.to_string();
        assert!(super::is_canonical(stored.as_bytes()), "{stored}");
        assert_eq!(canonical(&stored), stored);
    }

    #[test]
    fn invalid_json_is_an_error() {
        let mut out = Vec::new();
        assert!(write_canonical("{\"a\":", &mut out).is_err());
    }
}
