//! The dead-letter file: documents Elasticsearch refused for good (mapping conflicts and other
//! 4xx item errors), one JSON line each with the document as sent, its index, the status, the
//! error type and reason, and when it was written.
//!
//! `sheepdog dead-letter replay` works on the file while the daemon may be appending to it.
//! Both sides hold an exclusive `flock` on the file while they touch it: the replay renames the
//! file aside under the lock (the daemon's next append then finds its open file no longer at
//! the path and starts a new one), works on the renamed copy, and appends what it keeps back
//! under the same lock. A replay that dies midway leaves its `<name>.replay-*` copy, which the
//! next `list` or `replay` reads as part of the store.

use crate::event::{format_timestamp_ms, now_ms};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One refused document.
pub struct Letter<'a> {
    pub index: &'a str,
    /// The document's `_id`, when the output gave it one (a replay sends it again).
    pub id: Option<&'a str>,
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
        loop {
            if guard.is_none() {
                *guard = Some(open_for_append(&self.path)?);
            }
            let file = guard.as_mut().expect("opened above");
            if append_if_current(file, &self.path, &buf)? {
                return Ok(());
            }
            // A replay moved the file aside: append to a new one at the path.
            *guard = None;
        }
    }
}

fn open_for_append(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Whether `file` is still the file at `path` (not renamed away or replaced).
fn is_at_path(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Appends whole lines to the dead-letter file at `path` under its lock, as the daemon does.
pub fn append_lines(path: &Path, lines: &[u8]) -> std::io::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    loop {
        let mut file = open_for_append(path)?;
        if append_if_current(&mut file, path, lines)? {
            return Ok(());
        }
    }
}

/// Appends `bytes` to `file` under its lock, if it is still the file at `path`; `Ok(false)`
/// (nothing written) when a replay moved it aside meanwhile.
fn append_if_current(file: &mut File, path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    file.lock()?;
    if !is_at_path(file, path) {
        file.unlock()?;
        return Ok(false);
    }
    let written = file.write_all(bytes).and_then(|()| file.flush());
    file.unlock()?;
    written.map(|()| true)
}

/// Moves the dead-letter file at `path` aside for a replay, under its lock, and returns every
/// copy to work on: this one and those a replay that did not finish left behind.
pub fn take_for_replay(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut taken = leftover_copies(path)?;
    loop {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(taken),
            Err(e) => return Err(e),
        };
        file.lock()?;
        if !is_at_path(&file, path) {
            file.unlock()?;
            continue;
        }
        let aside = replay_copy_path(path);
        std::fs::rename(path, &aside)?;
        file.unlock()?;
        taken.push(aside);
        return Ok(taken);
    }
}

/// Every file the store consists of: the file itself (when present) and unfinished replay
/// copies.
pub fn store_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = leftover_copies(path)?;
    if path.is_file() {
        files.push(path.to_path_buf());
    }
    Ok(files)
}

fn replay_copy_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{name}.replay-{}-{}", std::process::id(), now_ms()))
}

/// `<name>.replay-*` files beside `path`, oldest first.
fn leftover_copies(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!("{name}.replay-");
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut copies: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    copies.sort();
    Ok(copies)
}

/// `{"@timestamp":…,"index":…[,"id":…],"status":…,"error":{"type":…,"reason":…},"document":{…}}\n`
pub fn encode_line(letter: &Letter<'_>, now_ms: i64, out: &mut Vec<u8>) {
    let str_json = |s: &str, out: &mut Vec<u8>| {
        let _ = serde_json::to_writer(&mut *out, s);
    };
    out.extend_from_slice(b"{\"@timestamp\":");
    str_json(&format_timestamp_ms(now_ms), out);
    out.extend_from_slice(b",\"index\":");
    str_json(letter.index, out);
    if let Some(id) = letter.id {
        out.extend_from_slice(b",\"id\":");
        str_json(id, out);
    }
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
            id: Some("req-7"),
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
                r#""id":"req-7","status":400,"error":{"type":"mapper_parsing_exception","#,
                r#""reason":"failed to parse field [total_tokens]: For input string: \"abc\""},"#,
                r#""document":{"total_tokens":"abc"}}"#,
                "\n"
            )
        );
    }

    /// A refused document `doc` with made-up index and error.
    fn letter(doc: &[u8]) -> Letter<'_> {
        Letter {
            index: "i",
            id: None,
            status: 400,
            error_type: "t",
            reason: "r",
            document: doc,
        }
    }

    #[test]
    fn a_replay_takes_the_file_aside_and_the_writer_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead_letter.ndjson");
        let file = DeadLetterFile::new(path.clone());
        file.write(&[letter(b"{\"a\":1}")]).unwrap();
        let taken = take_for_replay(&path).unwrap();
        assert_eq!(taken.len(), 1);
        assert!(!path.exists());
        // The daemon keeps writing: to a new file at the path, not into the copy.
        file.write(&[letter(b"{\"a\":2}")]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&taken[0]).unwrap().lines().count(),
            1
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        // What the replay keeps goes back beside the daemon's new letters.
        append_lines(&path, b"{\"kept\":1}\n").unwrap();
        file.write(&[letter(b"{\"a\":3}")]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        // A copy left by a replay that died is part of the store and of the next replay.
        assert_eq!(store_files(&path).unwrap().len(), 2);
        let again = take_for_replay(&path).unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0], taken[0]);
    }

    #[test]
    fn appends_and_creates_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dead_letter.ndjson");
        let file = DeadLetterFile::new(path.clone());
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
