//! The bulk retry policy as pure functions: what to do with a bulk reply (every item indexed,
//! some items to resend or dead-letter, the whole request to resend or split) and how long to
//! wait before the next attempt.

use serde::Deserialize;
use std::time::Duration;

/// Why Elasticsearch refused one document for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Position of the item in the request.
    pub item: usize,
    pub status: u16,
    /// `error.type`, e.g. `mapper_parsing_exception`.
    pub error_type: String,
    /// `error.reason`, with `caused_by.reason` appended when present.
    pub reason: String,
}

/// What to do after a bulk request was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every item was indexed.
    AllIndexed,
    /// Per-item results: `retry` items (429, 5xx) are resent, `rejected` items go to the
    /// dead-letter file, the rest were indexed; `duplicates` of those were `create`s answered
    /// 409 because a document with their `_id` exists: sent before, already indexed.
    Items {
        retry: Vec<usize>,
        rejected: Vec<Rejection>,
        duplicates: usize,
    },
    /// Resend the whole request later (connection trouble, 429, 5xx, auth, unreadable reply).
    RetryAll { reason: String },
    /// The request body was too large (413): split it and resend the halves.
    Split,
    /// The request itself was refused (400 on the whole bulk): every item is dead-lettered.
    RejectAll { status: u16, reason: String },
}

#[derive(Deserialize)]
struct Head {
    errors: bool,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    items: Vec<ItemEntry>,
}

/// One entry of `items`: an object keyed by the action name.
#[derive(Deserialize)]
struct ItemEntry {
    index: Option<ItemResult>,
    create: Option<ItemResult>,
    update: Option<ItemResult>,
    delete: Option<ItemResult>,
}

#[derive(Deserialize)]
struct ItemResult {
    status: u16,
    error: Option<ItemError>,
}

#[derive(Deserialize)]
struct ItemError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    caused_by: Option<Box<ItemError>>,
}

/// Statuses worth another try: Elasticsearch pushing back or failing inside.
pub fn is_retryable_status(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Classifies the reply to a bulk request of `items` items. `body` is only parsed as far as
/// needed: when `errors` is false the items are not looked at.
pub fn classify(status: u16, body: &[u8], items: usize) -> Verdict {
    match status {
        200..=299 => {}
        413 => return Verdict::Split,
        400 => {
            return Verdict::RejectAll {
                status,
                reason: error_summary(body),
            }
        }
        _ => {
            return Verdict::RetryAll {
                reason: format!("HTTP {status}: {}", error_summary(body)),
            }
        }
    }
    match serde_json::from_slice::<Head>(body) {
        Ok(Head { errors: false }) => return Verdict::AllIndexed,
        Ok(Head { errors: true }) => {}
        Err(e) => {
            return Verdict::RetryAll {
                reason: format!("unreadable bulk reply: {e}"),
            }
        }
    }
    let reply: Reply = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Verdict::RetryAll {
                reason: format!("unreadable bulk reply items: {e}"),
            }
        }
    };
    if reply.items.len() != items {
        return Verdict::RetryAll {
            reason: format!(
                "bulk reply has {} items for {items} documents sent",
                reply.items.len()
            ),
        };
    }
    classify_items(reply.items)
}

/// Sorts the per-item results of a bulk reply into indexed, duplicates, to resend and refused.
fn classify_items(entries: Vec<ItemEntry>) -> Verdict {
    let mut retry = Vec::new();
    let mut rejected = Vec::new();
    let mut duplicates = 0;
    for (i, entry) in entries.into_iter().enumerate() {
        let created = entry.create.is_some();
        let Some(result) = entry
            .index
            .or(entry.create)
            .or(entry.update)
            .or(entry.delete)
        else {
            retry.push(i);
            continue;
        };
        if (200..300).contains(&result.status) {
            continue;
        }
        if created && result.status == 409 {
            duplicates += 1;
            continue;
        }
        if is_retryable_status(result.status) {
            retry.push(i);
            continue;
        }
        let (error_type, reason) = match result.error {
            Some(e) => (e.kind.clone(), describe(&e)),
            None => (String::new(), format!("status {}", result.status)),
        };
        rejected.push(Rejection {
            item: i,
            status: result.status,
            error_type,
            reason,
        });
    }
    if retry.is_empty() && rejected.is_empty() && duplicates == 0 {
        Verdict::AllIndexed
    } else {
        Verdict::Items {
            retry,
            rejected,
            duplicates,
        }
    }
}

fn describe(e: &ItemError) -> String {
    let mut out = e.reason.clone().unwrap_or_default();
    if let Some(cause) = e.caused_by.as_deref().and_then(|c| c.reason.as_deref()) {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(cause);
    }
    out
}

/// A short description of an error reply: `error.type: error.reason` when it is JSON, else the
/// first 200 bytes of the text.
pub fn error_summary(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Top {
        error: serde_json::Value,
    }
    if let Ok(top) = serde_json::from_slice::<Top>(body) {
        if let Ok(e) = serde_json::from_value::<ItemError>(top.error.clone()) {
            if !e.kind.is_empty() {
                return format!("{}: {}", e.kind, describe(&e));
            }
        }
        if let Some(s) = top.error.as_str() {
            return s.to_string();
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.trim();
    if text.is_empty() {
        "empty reply".to_string()
    } else {
        text.to_string()
    }
}

/// Capped exponential backoff: `initial * 2^attempt` up to `max`, scaled by `jitter` in
/// `[0, 1)` into the upper half of the range so that many senders do not retry in step.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.min(20));
    let capped = exp.min(max);
    capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(item: usize, status: u16, error_type: &str, reason: &str) -> Rejection {
        Rejection {
            item,
            status,
            error_type: error_type.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn whole_request_statuses() {
        let table: &[(u16, &str, Verdict)] = &[
            (
                200,
                r#"{"took":3,"errors":false,"items":[{"index":{"status":201}}]}"#,
                Verdict::AllIndexed,
            ),
            (413, "", Verdict::Split),
            (
                429,
                r#"{"error":{"type":"es_rejected_execution_exception","reason":"queue full"},"status":429}"#,
                Verdict::RetryAll {
                    reason: "HTTP 429: es_rejected_execution_exception: queue full".into(),
                },
            ),
            (
                503,
                "Service Unavailable",
                Verdict::RetryAll {
                    reason: "HTTP 503: Service Unavailable".into(),
                },
            ),
            (
                401,
                r#"{"error":{"type":"security_exception","reason":"missing authentication credentials"},"status":401}"#,
                Verdict::RetryAll {
                    reason: "HTTP 401: security_exception: missing authentication credentials"
                        .into(),
                },
            ),
            (
                400,
                r#"{"error":{"type":"illegal_argument_exception","reason":"Malformed action/metadata line [1]"},"status":400}"#,
                Verdict::RejectAll {
                    status: 400,
                    reason: "illegal_argument_exception: Malformed action/metadata line [1]".into(),
                },
            ),
            (
                200,
                "<html>proxy error</html>",
                Verdict::RetryAll {
                    reason: "unreadable bulk reply: expected value at line 1 column 1".into(),
                },
            ),
        ];
        for (status, body, want) in table {
            assert_eq!(
                &classify(*status, body.as_bytes(), 1),
                want,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn per_item_results_in_a_200() {
        // The shape osmem-server and Elasticsearch send: errors=true, per-item 201/400/429/503.
        let body = r#"{"errors":true,"took":1,"items":[
            {"index":{"_index":"l-2026.11.27","_id":"a","status":201,"result":"created"}},
            {"index":{"_index":"l-2026.11.27","_id":"b","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [total_tokens] of type [long]","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"abc\""}}}},
            {"index":{"_index":"l-2026.11.27","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution"}}},
            {"create":{"_index":"l-2026.11.27","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
            {"index":{"_index":"l-2026.11.27","status":409,"error":{"type":"version_conflict_engine_exception","reason":"document already exists"}}},
            {"index":{"_index":"l-2026.11.27","status":200,"result":"updated"}}
        ]}"#;
        assert_eq!(
            classify(200, body.as_bytes(), 6),
            Verdict::Items {
                retry: vec![2, 3],
                rejected: vec![
                    rejection(
                        1,
                        400,
                        "mapper_parsing_exception",
                        "failed to parse field [total_tokens] of type [long]: For input string: \"abc\""
                    ),
                    rejection(
                        4,
                        409,
                        "version_conflict_engine_exception",
                        "document already exists"
                    ),
                ],
                duplicates: 0,
            }
        );
        // errors=true but every item fine (can happen with noop updates)
        let body = r#"{"errors":true,"items":[{"index":{"status":201}}]}"#;
        assert_eq!(classify(200, body.as_bytes(), 1), Verdict::AllIndexed);
        // a reply that does not match what was sent is never taken as success
        let body = r#"{"errors":true,"items":[{"index":{"status":201}}]}"#;
        assert_eq!(
            classify(200, body.as_bytes(), 2),
            Verdict::RetryAll {
                reason: "bulk reply has 1 items for 2 documents sent".into()
            }
        );
    }

    #[test]
    fn a_409_on_create_is_already_indexed() {
        let conflict = r#"{"create":{"_index":"l","_id":"r-1","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[r-1]: version conflict, document already exists (current version [1])"}}}"#;
        let created = r#"{"create":{"_index":"l","_id":"r-2","status":201,"result":"created"}}"#;
        let pushed_back = r#"{"create":{"_index":"l","_id":"r-3","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}}"#;
        // An `index` answered 409 (a versioning conflict) is a refusal, not a duplicate.
        let index_conflict = r#"{"index":{"_index":"l","_id":"r-4","status":409,"error":{"type":"version_conflict_engine_exception","reason":"version conflict"}}}"#;
        let table: &[(&[&str], Verdict)] = &[
            (
                &[conflict, created],
                Verdict::Items {
                    retry: vec![],
                    rejected: vec![],
                    duplicates: 1,
                },
            ),
            (
                &[conflict, conflict, pushed_back],
                Verdict::Items {
                    retry: vec![2],
                    rejected: vec![],
                    duplicates: 2,
                },
            ),
            (
                &[created, index_conflict],
                Verdict::Items {
                    retry: vec![],
                    rejected: vec![rejection(
                        1,
                        409,
                        "version_conflict_engine_exception",
                        "version conflict",
                    )],
                    duplicates: 0,
                },
            ),
            (&[created, created], Verdict::AllIndexed),
        ];
        for (items, want) in table {
            let body = format!(r#"{{"errors":true,"items":[{}]}}"#, items.join(","));
            assert_eq!(&classify(200, body.as_bytes(), items.len()), want, "{body}");
        }
    }

    #[test]
    fn errors_false_does_not_need_items() {
        let body = br#"{"errors":false,"items":"not even a list"}"#;
        assert_eq!(classify(201, body, 1000), Verdict::AllIndexed);
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let ms = Duration::from_millis;
        let table = [
            (0, 0.0, ms(50)),
            (0, 1.0, ms(100)),
            (1, 1.0, ms(200)),
            (3, 0.5, ms(600)),
            (10, 1.0, ms(10_000)),
            (10, 0.0, ms(5_000)),
            (u32::MAX, 1.0, ms(10_000)),
        ];
        for (attempt, jitter, want) in table {
            assert_eq!(
                backoff(attempt, ms(100), ms(10_000), jitter),
                want,
                "attempt {attempt} jitter {jitter}"
            );
        }
        assert!(is_retryable_status(429) && is_retryable_status(502));
        assert!(!is_retryable_status(400) && !is_retryable_status(404));
    }
}
