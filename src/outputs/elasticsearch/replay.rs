//! Acting on the dead-letter store: `sheepdog dead-letter list` groups the refused documents by
//! reason, `sheepdog dead-letter replay` sends them to the cluster again (after a mapping was
//! fixed, say). A replayed document leaves the store only once the cluster indexed it; one
//! refused again stays with the new reason, and one the cluster could not take right now (429,
//! 5xx, no connection) stays as it was.

use super::dead_letter::{append_lines, encode_line, store_files, take_for_replay, Letter};
use super::retry::{classify, Rejection, Verdict};
use super::service::Service;
use crate::event::now_ms;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An Elasticsearch output's dead-letter file and a client for its cluster.
pub struct Store {
    pub path: PathBuf,
    service: Service,
}

impl Store {
    pub(super) fn new(path: PathBuf, service: Service) -> Self {
        Store { path, service }
    }

    /// The store's documents grouped by reason.
    pub fn list(&self) -> std::io::Result<Vec<Group>> {
        list(&self.path)
    }

    /// Replays the documents whose grouped reason contains `reason` (all when `None`).
    pub async fn replay(&self, reason: Option<&str>) -> anyhow::Result<Summary> {
        replay(&self.service, &self.path, reason).await
    }
}

/// Documents sent in one bulk request at most.
const REPLAY_BATCH_EVENTS: usize = 500;
/// Bulk body size at which a request goes out before it has `REPLAY_BATCH_EVENTS` documents.
const REPLAY_BATCH_BYTES: usize = 5 * 1024 * 1024;

/// One line of the store as read back.
#[derive(Deserialize)]
struct StoredLetter<'a> {
    #[serde(rename = "@timestamp", default)]
    timestamp: String,
    #[serde(default)]
    index: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    error: StoredError,
    #[serde(borrow)]
    document: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct StoredError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    reason: String,
}

/// Refused documents sharing one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `<error type>: <reason>` with quoted values replaced by `…`.
    pub reason: String,
    pub count: usize,
    pub first: String,
    pub last: String,
}

/// The reason a letter is grouped and selected by: its error type and reason, with what is
/// quoted in the reason (a quote opens after a space or punctuation) (field values, document ids) replaced by `…` so that documents
/// refused for the same cause share it.
fn group_reason(kind: &str, reason: &str) -> String {
    let mut out = String::with_capacity(kind.len() + reason.len() + 2);
    out.push_str(if kind.is_empty() { "unknown" } else { kind });
    out.push_str(": ");
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for c in reason.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                // An apostrophe inside a word (`field's`) opens nothing.
                if (c == '\'' || c == '"') && !previous.is_alphanumeric() {
                    quote = Some(c);
                }
            }
        }
        previous = c;
    }
    if quote.is_some() {
        out.push('…');
    }
    out
}

/// The store's documents grouped by reason, largest group first; lines that are not letters
/// (a torn last line) form the group `unreadable`.
fn list(path: &Path) -> std::io::Result<Vec<Group>> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for file in store_files(path)? {
        let text = std::fs::read(&file)?;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let (reason, at) = match serde_json::from_slice::<StoredLetter>(line) {
                Ok(l) => (group_reason(&l.error.kind, &l.error.reason), l.timestamp),
                Err(_) => (
                    "unreadable: not a dead-letter line".to_string(),
                    String::new(),
                ),
            };
            let group = groups.entry(reason.clone()).or_insert_with(|| Group {
                reason,
                count: 0,
                first: at.clone(),
                last: at.clone(),
            });
            group.count += 1;
            if !at.is_empty() && (group.first.is_empty() || at < group.first) {
                group.first = at.clone();
            }
            if at > group.last {
                group.last = at;
            }
        }
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    Ok(groups)
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Documents sent.
    pub replayed: usize,
    /// Indexed now, gone from the store.
    pub indexed: usize,
    /// Refused again: kept with the new reason.
    pub refused: usize,
    /// Not taken right now (429, 5xx, no connection): kept as they were.
    pub deferred: usize,
    /// Not selected by `--reason`, or unreadable: kept untouched.
    pub skipped: usize,
}

/// Sends the store's documents whose grouped reason contains `reason` (all when `None`) to the
/// cluster through `service`, and keeps in the store only what was not indexed.
async fn replay(service: &Service, path: &Path, reason: Option<&str>) -> anyhow::Result<Summary> {
    use anyhow::Context;
    let mut summary = Summary::default();
    for copy in take_for_replay(path)
        .with_context(|| format!("cannot take `{}` for replay", path.display()))?
    {
        let text =
            std::fs::read(&copy).with_context(|| format!("cannot read `{}`", copy.display()))?;
        let kept = replay_lines(service, &text, reason, &mut summary).await;
        append_lines(path, &kept).with_context(|| {
            format!("cannot write the kept letters back to `{}`", path.display())
        })?;
        std::fs::remove_file(&copy)
            .with_context(|| format!("cannot remove `{}`", copy.display()))?;
    }
    Ok(summary)
}

/// Replays the letters of one store file; returns the lines to keep.
async fn replay_lines(
    service: &Service,
    text: &[u8],
    reason: Option<&str>,
    summary: &mut Summary,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut batch: Vec<(&[u8], StoredLetter)> = Vec::new();
    let mut body = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let letter = match serde_json::from_slice::<StoredLetter>(line) {
            Ok(l) if l.document.is_some() && selected(&l, reason) => l,
            _ => {
                summary.skipped += 1;
                keep_line(&mut kept, line);
                continue;
            }
        };
        push_action(&mut body, &letter);
        batch.push((line, letter));
        if batch.len() >= REPLAY_BATCH_EVENTS || body.len() >= REPLAY_BATCH_BYTES {
            send_batch(service, &mut batch, &mut body, &mut kept, summary).await;
        }
    }
    if !batch.is_empty() {
        send_batch(service, &mut batch, &mut body, &mut kept, summary).await;
    }
    kept
}

fn selected(letter: &StoredLetter, reason: Option<&str>) -> bool {
    reason.is_none_or(|r| group_reason(&letter.error.kind, &letter.error.reason).contains(r))
}

fn keep_line(kept: &mut Vec<u8>, line: &[u8]) {
    kept.extend_from_slice(line);
    kept.push(b'\n');
}

/// `{"index":{"_index":…[,"_id":…]}}\n<document>\n`
fn push_action(body: &mut Vec<u8>, letter: &StoredLetter) {
    let mut meta = serde_json::Map::new();
    meta.insert("_index".into(), letter.index.clone().into());
    if let Some(id) = &letter.id {
        meta.insert("_id".into(), id.clone().into());
    }
    let action = serde_json::json!({ "index": meta });
    let _ = serde_json::to_writer(&mut *body, &action);
    body.push(b'\n');
    body.extend_from_slice(letter.document.map_or("null", |d| d.get()).as_bytes());
    body.push(b'\n');
}

/// Sends one bulk request of replayed letters and sorts them into indexed, refused (kept with
/// the new reason) and deferred (kept as they were).
async fn send_batch(
    service: &Service,
    batch: &mut Vec<(&[u8], StoredLetter<'_>)>,
    body: &mut Vec<u8>,
    kept: &mut Vec<u8>,
    summary: &mut Summary,
) {
    summary.replayed += batch.len();
    let request = bytes::Bytes::from(std::mem::take(body));
    let verdict = match service.bulk(request).await {
        Ok(reply) => classify(reply.status, &reply.body, batch.len()),
        Err(e) => Verdict::RetryAll { reason: e.reason },
    };
    let (retry, rejected) = match verdict {
        Verdict::AllIndexed => (Vec::new(), Vec::new()),
        Verdict::Items {
            retry, rejected, ..
        } => (retry, rejected),
        Verdict::RetryAll { reason } | Verdict::RejectAll { reason, .. } => {
            tracing::warn!(%reason, documents = batch.len(), "replay request not taken; the documents stay in the store");
            ((0..batch.len()).collect(), Vec::new())
        }
        Verdict::Split => {
            tracing::warn!(
                "replay request too large for the cluster; the documents stay in the store"
            );
            ((0..batch.len()).collect(), Vec::new())
        }
    };
    for &i in &retry {
        keep_line(kept, batch[i].0);
    }
    let now = now_ms();
    for Rejection {
        item,
        status,
        error_type,
        reason,
    } in &rejected
    {
        let letter = &batch[*item].1;
        encode_line(
            &Letter {
                index: &letter.index,
                id: letter.id.as_deref(),
                status: *status,
                error_type,
                reason,
                document: letter.document.map_or("", |d| d.get()).as_bytes(),
            },
            now,
            kept,
        );
    }
    summary.deferred += retry.len();
    summary.refused += rejected.len();
    summary.indexed += batch.len() - retry.len() - rejected.len();
    batch.clear();
}

/// The text `sheepdog dead-letter list` prints for one store.
pub fn format_groups(groups: &[Group]) -> String {
    use std::fmt::Write;
    let total: usize = groups.iter().map(|g| g.count).sum();
    let mut out = format!("{total} documents\n");
    for g in groups {
        let _ = writeln!(
            out,
            "{:>8}  {} .. {}  {}",
            g.count,
            if g.first.is_empty() { "-" } else { &g.first },
            if g.last.is_empty() { "-" } else { &g.last },
            g.reason
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_group_without_their_quoted_values() {
        let a = group_reason(
            "mapper_parsing_exception",
            "failed to parse field [total_tokens] of type [long] in document with id 'x1'. Preview of field's value: 'many'",
        );
        let b = group_reason(
            "mapper_parsing_exception",
            "failed to parse field [total_tokens] of type [long] in document with id 'y2'. Preview of field's value: 'lots'",
        );
        assert_eq!(a, b);
        assert_eq!(
            a,
            "mapper_parsing_exception: failed to parse field [total_tokens] of type [long] in document with id '…'. Preview of field's value: '…'"
        );
        assert_eq!(group_reason("", "x \"open"), "unknown: x \"…");
    }

    #[test]
    fn list_counts_groups_and_unreadable_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead_letter.ndjson");
        let line = |at: &str, field: &str| {
            let mut out = Vec::new();
            let reason = format!("failed to parse field [{field}]: 'v'");
            encode_line(
                &Letter {
                    index: "i",
                    id: None,
                    status: 400,
                    error_type: "mapper_parsing_exception",
                    reason: &reason,
                    document: b"{}",
                },
                chrono::DateTime::parse_from_rfc3339(at)
                    .unwrap()
                    .timestamp_millis(),
                &mut out,
            );
            out
        };
        let mut text = Vec::new();
        text.extend(line("2026-11-29T10:00:00Z", "a"));
        text.extend(line("2026-11-29T09:00:00Z", "a"));
        text.extend(line("2026-11-29T11:00:00Z", "b"));
        text.extend(b"{\"torn");
        std::fs::write(&path, &text).unwrap();
        let groups = list(&path).unwrap();
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].count, 2);
        assert_eq!(groups[0].first, "2026-11-29T09:00:00.000Z");
        assert_eq!(groups[0].last, "2026-11-29T10:00:00.000Z");
        assert!(groups[0].reason.contains("[a]"));
        assert!(groups.iter().any(|g| g.reason.starts_with("unreadable")));
        assert!(format_groups(&groups).starts_with("4 documents\n"));
    }

    #[test]
    fn actions_carry_the_index_and_the_id_when_known() {
        let line = br#"{"@timestamp":"t","index":"logs-1","id":"r-1","status":400,"error":{"type":"x","reason":"y"},"document":{"a":1}}"#;
        let letter: StoredLetter = serde_json::from_slice(line).unwrap();
        let mut body = Vec::new();
        push_action(&mut body, &letter);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{\"index\":{\"_id\":\"r-1\",\"_index\":\"logs-1\"}}\n{\"a\":1}\n"
        );
    }
}
