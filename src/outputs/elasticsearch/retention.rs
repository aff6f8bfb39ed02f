//! Index retention (`retention_days`): once at start and then daily, deletes the output's daily
//! indices (`<prefix><date>`, from the `index` template) dated before today minus the retention.
//! Which names count and which dates expire is decided by pure functions; an index whose name is
//! not exactly the prefix followed by a valid date in the template's format is never touched.

use super::retry;
use super::service::Service;
use crate::metrics::Counter;
use chrono::NaiveDate;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Time between rounds that went through.
const DAILY: Duration = Duration::from_secs(24 * 60 * 60);
/// Time before a round that failed (cluster unreachable, a delete refused) is tried again.
const AFTER_FAILURE: Duration = Duration::from_secs(5 * 60);

/// One element of a daily date pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Year,
    Month,
    Day,
    Sep(char),
}

/// The names of an output's daily indices: a literal prefix and a date pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyIndices {
    prefix: String,
    date: Vec<Token>,
}

/// Characters Elasticsearch refuses in index names, plus wildcards and `%` that would change
/// the meaning of the listing URL.
const FORBIDDEN: &[char] = &[
    '*', '?', ',', '/', '\\', '"', '<', '>', '|', ' ', '#', ':', '%', '+',
];

impl DailyIndices {
    /// Reads `<literal prefix>%{+<yyyy, MM, dd and separators>}` from an index template; any
    /// other shape (field references, text after the date, no prefix, hours) is an error that
    /// says why.
    pub fn from_template(source: &str) -> Result<Self, String> {
        let Some((prefix, rest)) = source.split_once("%{") else {
            return Err("the index has no date pattern".into());
        };
        let Some(pattern) = rest.strip_suffix('}').and_then(|r| r.strip_prefix('+')) else {
            return Err("the index must end with one date pattern `%{+...}`".into());
        };
        if pattern.contains('}') || pattern.contains("%{") {
            return Err("the index must end with one date pattern `%{+...}`".into());
        }
        if prefix.is_empty() {
            return Err("the index has no literal prefix before its date".into());
        }
        if let Some(c) = prefix
            .chars()
            .find(|c| FORBIDDEN.contains(c) || c.is_uppercase())
        {
            return Err(format!("the prefix `{prefix}` holds `{c}`"));
        }
        let date = date_tokens(pattern)?;
        Ok(DailyIndices {
            prefix: prefix.to_string(),
            date,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The date of an index whose name is exactly the prefix followed by a valid calendar date
    /// in the pattern; `None` for anything else.
    pub fn date_of(&self, index: &str) -> Option<NaiveDate> {
        let mut rest = index.strip_prefix(&self.prefix)?.as_bytes();
        let (mut year, mut month, mut day) = (0, 0, 0);
        for token in &self.date {
            match token {
                Token::Sep(c) => {
                    let mut buf = [0u8; 4];
                    rest = rest.strip_prefix(c.encode_utf8(&mut buf).as_bytes())?;
                }
                Token::Year => year = take_digits(&mut rest, 4)?,
                Token::Month => month = take_digits(&mut rest, 2)?,
                Token::Day => day = take_digits(&mut rest, 2)?,
            }
        }
        if !rest.is_empty() {
            return None;
        }
        NaiveDate::from_ymd_opt(year as i32, month, day)
    }

    /// The date of `index` when it is one of these indices and has expired, else `None`.
    pub fn expired(&self, index: &str, today: NaiveDate, days: u32) -> Option<NaiveDate> {
        self.date_of(index).filter(|&d| is_expired(d, today, days))
    }
}

/// The oldest date kept: today minus `days`.
pub fn cutoff(today: NaiveDate, days: u32) -> NaiveDate {
    today
        .checked_sub_days(chrono::Days::new(u64::from(days)))
        .unwrap_or(NaiveDate::MIN)
}

/// Whether an index dated `date` is deleted: it is older than the cutoff, so every event in it
/// is at least `days` days old. Today's index and newer are never deleted, whatever `days`.
pub fn is_expired(date: NaiveDate, today: NaiveDate, days: u32) -> bool {
    date < today && date < cutoff(today, days)
}

fn date_tokens(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        let token = match (c, run) {
            ('y' | 'Y', 4) => Token::Year,
            ('M', 2) => Token::Month,
            ('d', 2) => Token::Day,
            (c, _) if c.is_alphanumeric() => {
                return Err(format!(
                    "the date pattern `{pattern}` has `{}`; retention needs a daily pattern of yyyy, MM and dd",
                    chars[i..i + run].iter().collect::<String>()
                ))
            }
            (c, _) if FORBIDDEN.contains(&c) || c.is_uppercase() => {
                return Err(format!("the date pattern `{pattern}` holds `{c}`"))
            }
            (c, _) => {
                tokens.push(Token::Sep(c));
                i += 1;
                continue;
            }
        };
        tokens.push(token);
        i += run;
    }
    for (want, name) in [
        (Token::Year, "yyyy"),
        (Token::Month, "MM"),
        (Token::Day, "dd"),
    ] {
        if tokens.iter().filter(|&&t| t == want).count() != 1 {
            return Err(format!(
                "the date pattern `{pattern}` needs exactly one {name} (a daily pattern such as YYYY.MM.dd)"
            ));
        }
    }
    Ok(tokens)
}

/// Exactly `n` ASCII digits off the front of `rest`.
fn take_digits(rest: &mut &[u8], n: usize) -> Option<u32> {
    let digits = rest.get(..n)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    *rest = &rest[n..];
    Some(digits.iter().fold(0, |v, d| v * 10 + u32::from(d - b'0')))
}

/// What the retention task needs.
pub struct Retention {
    pub output: String,
    pub indices: DailyIndices,
    pub days: u32,
    pub service: Arc<Service>,
    pub deleted: Counter,
}

/// Runs a round now and then daily (sooner after a failed round) until `shutdown`.
pub async fn run(r: Retention, shutdown: CancellationToken) {
    tracing::info!(output = %r.output, prefix = %r.indices.prefix, days = r.days, "index retention on: deleting daily indices older than retention_days");
    loop {
        let today = chrono::Utc::now().date_naive();
        let wait = tokio::select! {
            _ = shutdown.cancelled() => return,
            ok = r.round(today) => if ok { DAILY } else { AFTER_FAILURE },
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

impl Retention {
    /// Lists the prefix's indices and deletes the expired ones; false when anything failed.
    async fn round(&self, today: NaiveDate) -> bool {
        let cutoff = cutoff(today, self.days);
        let names = match self.list().await {
            Ok(names) => names,
            Err(reason) => {
                tracing::warn!(output = %self.output, reason = %reason, "index retention: cannot list indices; trying again later");
                return false;
            }
        };
        let mut ok = true;
        for name in &names {
            let Some(date) = self.indices.expired(name, today, self.days) else {
                continue;
            };
            ok &= self.delete(name, date, cutoff).await;
        }
        ok
    }

    /// Names of the indices matching `<prefix>*`.
    async fn list(&self) -> Result<Vec<String>, String> {
        let path = format!(
            "/_cat/indices/{}*?format=json&h=index&expand_wildcards=open,closed",
            self.indices.prefix()
        );
        let reply = self
            .service
            .send(reqwest::Method::GET, &path, None, "")
            .await
            .map_err(|e| e.reason)?;
        if !(200..300).contains(&reply.status) {
            return Err(format!(
                "HTTP {}: {}",
                reply.status,
                retry::error_summary(&reply.body)
            ));
        }
        #[derive(serde::Deserialize)]
        struct Row {
            index: String,
        }
        let rows: Vec<Row> = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("unexpected _cat/indices reply: {e}"))?;
        Ok(rows.into_iter().map(|r| r.index).collect())
    }

    /// Deletes one expired index; false when the cluster did not.
    async fn delete(&self, name: &str, date: NaiveDate, cutoff: NaiveDate) -> bool {
        let reply = self
            .service
            .send(reqwest::Method::DELETE, &format!("/{name}"), None, "")
            .await;
        match reply {
            Ok(reply) if (200..300).contains(&reply.status) => {
                self.deleted.inc();
                tracing::info!(output = %self.output, index = %name, date = %date, cutoff = %cutoff, days = self.days, "deleted expired index (retention_days)");
                true
            }
            // Gone already (deleted by hand or by another sheepdog): nothing to retry.
            Ok(reply) if reply.status == 404 => true,
            Ok(reply) => {
                tracing::warn!(output = %self.output, index = %name, status = reply.status, reason = %retry::error_summary(&reply.body), "index retention: delete refused; trying again later");
                false
            }
            Err(e) => {
                tracing::warn!(output = %self.output, index = %name, reason = %e.reason, "index retention: delete failed; trying again later");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn only_exact_prefix_and_valid_dates_match() {
        let logs = DailyIndices::from_template("holysheep-logs-%{+YYYY.MM.dd}").unwrap();
        let today = day("2024-03-10");
        // (index name, date it is read as, expired with 7 days)
        let table: &[(&str, Option<&str>, bool)] = &[
            ("holysheep-logs-2024.03.02", Some("2024-03-02"), true),
            ("holysheep-logs-2024.03.03", Some("2024-03-03"), false),
            ("holysheep-logs-2024.03.10", Some("2024-03-10"), false),
            ("holysheep-logs-2024.03.11", Some("2024-03-11"), false),
            ("holysheep-logs-2023.12.31", Some("2023-12-31"), true),
            ("holysheep-logs-2024.02.29", Some("2024-02-29"), true),
            ("holysheep-logs-2023.02.29", None, false),
            ("holysheep-logs-2024.13.01", None, false),
            ("holysheep-logs-2024.00.01", None, false),
            ("holysheep-logs-2024.01.32", None, false),
            ("holysheep-logs-2024.01.01-old", None, false),
            ("holysheep-logs-x-2024.01.01", None, false),
            ("holysheep-logs-2024.1.01", None, false),
            ("holysheep-logs-2024.01.1", None, false),
            ("holysheep-logs-2024-01-01", None, false),
            ("holysheep-logs-+024.01.01", None, false),
            ("holysheep-logs-２０２４.01.01", None, false),
            ("holysheep-logs-20240.01.01", None, false),
            ("holysheep-logs-", None, false),
            ("holysheep-logs", None, false),
            ("other-2020.01.01", None, false),
            ("xholysheep-logs-2020.01.01", None, false),
            (".holysheep-logs-2020.01.01", None, false),
        ];
        for &(name, date, expired) in table {
            assert_eq!(logs.date_of(name), date.map(day), "{name}");
            assert_eq!(
                logs.expired(name, today, 7).is_some(),
                expired,
                "{name} with 7 days on {today}"
            );
        }
    }

    #[test]
    fn other_daily_formats() {
        let compact = DailyIndices::from_template("app_%{+yyyyMMdd}").unwrap();
        assert_eq!(compact.prefix(), "app_");
        assert_eq!(compact.date_of("app_20240102"), Some(day("2024-01-02")));
        assert_eq!(compact.date_of("app_2024012"), None);
        assert_eq!(compact.date_of("app_202401021"), None);
        let dashed = DailyIndices::from_template("x-%{+dd-MM-YYYY}").unwrap();
        assert_eq!(dashed.date_of("x-02-01-2024"), Some(day("2024-01-02")));
        assert_eq!(dashed.date_of("x-2024-01-02"), None);
    }

    #[test]
    fn templates_retention_refuses_say_why() {
        let table: &[(&str, &str)] = &[
            ("holysheep-logs", "no date pattern"),
            ("logs-%{+YYYY.MM.dd}-x", "must end with one date pattern"),
            (
                "logs-%{[service]}-%{+YYYY.MM.dd}",
                "must end with one date pattern",
            ),
            (
                "%{[service]}-%{+YYYY.MM.dd}",
                "must end with one date pattern",
            ),
            ("logs-%{service}", "must end with one date pattern"),
            ("%{+YYYY.MM.dd}", "no literal prefix"),
            ("Logs-%{+YYYY.MM.dd}", "holds `L`"),
            ("lo*gs-%{+YYYY.MM.dd}", "holds `*`"),
            ("logs-%{+YYYY.MM}", "needs exactly one dd"),
            ("logs-%{+YYYY.MM.dd.HH}", "has `HH`"),
            ("logs-%{+xxxx.ww}", "has `xxxx`"),
            ("logs-%{+YY.MM.dd}", "has `YY`"),
            ("logs-%{+YYYY.MM.dd.dd}", "needs exactly one dd"),
        ];
        for &(template, want) in table {
            let err = DailyIndices::from_template(template).unwrap_err();
            assert!(err.contains(want), "{template}: {err}");
        }
    }

    #[test]
    fn age_is_a_function_of_today_and_days() {
        let today = day("2024-01-10");
        // (index date, retention days, deleted)
        let table: &[(&str, u32, bool)] = &[
            ("2024-01-10", 1, false),
            ("2024-01-09", 1, false),
            ("2024-01-08", 1, true),
            ("2024-01-03", 7, false),
            ("2024-01-02", 7, true),
            ("2023-12-11", 30, false),
            ("2023-12-10", 30, true),
            ("2024-01-11", 1, false),
            ("2030-01-01", 1, false),
            ("2024-01-10", 0, false),
            ("2024-01-11", 0, false),
            ("1970-01-01", u32::MAX, false),
        ];
        for &(date, days, deleted) in table {
            assert_eq!(
                is_expired(day(date), today, days),
                deleted,
                "{date} with {days} days on {today}"
            );
        }
        assert_eq!(cutoff(today, 7), day("2024-01-03"));
    }
}
