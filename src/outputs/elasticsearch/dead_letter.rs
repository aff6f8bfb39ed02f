//! The dead-letter file: documents Elasticsearch refused for good (mapping conflicts and other
//! 4xx item errors), one JSON line each with the document as sent, its index, the status, the
//! error type and reason, and when it was written.

use crate::event::{format_timestamp_ms, now_ms};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One refused document.
pub struct Letter<'a> {
    pub index: &'a str,
    pub status: u16,
    pub error_type: &'a str,
    pub reason: &'a str,
    /// The document bytes as sent (a JSON object).
    pub document: &'a [u8],
}

/// Appends letters to a file opened on first use (so a daemon that never rejects anything
/// creates no file).
pub struct DeadLetterFile {
    path: PathBuf,
    // Writes come from concurrent bulk tasks and are rare and short; a std mutex guarding a
    // buffered append, never held across an await, keeps lines whole.
    file: Mutex<Option<File>>,
}

impl DeadLetterFile {
    pub fn new(path: PathBuf) -> Self {
        DeadLetterFile {
            path,
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes all `letters` in one append.
    pub fn write(&self, letters: &[Letter<'_>]) -> std::io::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut buf = Vec::with_capacity(letters.len() * 512);
        for letter in letters {
            encode_line(letter, now, &mut buf);
        }
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            if let Some(parent) = self.path.parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let file = guard.as_mut().expect("opened above");
        file.write_all(&buf)?;
        file.flush()
    }
}

/// `{"@timestamp":…,"index":…,"status":…,"error":{"type":…,"reason":…},"document":{…}}\n`
pub fn encode_line(letter: &Letter<'_>, now_ms: i64, out: &mut Vec<u8>) {
    let str_json = |s: &str, out: &mut Vec<u8>| {
        let _ = serde_json::to_writer(&mut *out, s);
    };
    out.extend_from_slice(b"{\"@timestamp\":");
    str_json(&format_timestamp_ms(now_ms), out);
    out.extend_from_slice(b",\"index\":");
    str_json(letter.index, out);
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(letter.status).as_bytes());
    out.extend_from_slice(b",\"error\":{\"type\":");
    str_json(letter.error_type, out);
    out.extend_from_slice(b",\"reason\":");
    str_json(letter.reason, out);
    out.extend_from_slice(b"},\"document\":");
    if letter.document.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.extend_from_slice(letter.document);
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format_is_exact() {
        let letter = Letter {
            index: "holysheep-logs-2026.11.27",
            status: 400,
            error_type: "mapper_parsing_exception",
            reason: "failed to parse field [total_tokens]: For input string: \"abc\"",
            document: br#"{"total_tokens":"abc"}"#,
        };
        let mut out = Vec::new();
        encode_line(&letter, 1_795_774_502_123, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"@timestamp":"2026-11-27T10:15:02.123Z","index":"holysheep-logs-2026.11.27","#,
                r#""status":400,"error":{"type":"mapper_parsing_exception","#,
                r#""reason":"failed to parse field [total_tokens]: For input string: \"abc\""},"#,
                r#""document":{"total_tokens":"abc"}}"#,
                "\n"
            )
        );
    }

    #[test]
    fn appends_and_creates_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dead_letter.ndjson");
        let file = DeadLetterFile::new(path.clone());
        let letter = |doc: &'static [u8]| Letter {
            index: "i",
            status: 400,
            error_type: "t",
            reason: "r",
            document: doc,
        };
        file.write(&[letter(b"{\"a\":1}")]).unwrap();
        file.write(&[letter(b"{\"a\":2}"), letter(b"{\"a\":3}")])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["document"].clone())
            .collect();
        assert_eq!(
            docs,
            [
                serde_json::json!({"a":1}),
                serde_json::json!({"a":2}),
                serde_json::json!({"a":3})
            ]
        );
    }
}
