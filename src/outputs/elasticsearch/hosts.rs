//! The cluster URLs, checked, with any `user:password@` taken out of them into the auth
//! settings: the URLs the output keeps (logged, named in `/health` and on the status page,
//! handed to reqwest) never hold a credential, and a problem about a host prints it redacted.

use crate::config::de;
use crate::config::problem::Problem;
use crate::config::secret::{Secret, REDACTED};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// `hosts` as written: an array or a comma-separated string. Debug prints each URL redacted,
/// so a printed config shows no credentials.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct HostList(#[serde(deserialize_with = "de::string_list")] pub Vec<String>);

impl fmt::Debug for HostList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|h| redact(h)))
            .finish()
    }
}

/// Credentials written into host URLs (`http://elastic:changeme@es:9200`), percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlCredentials {
    pub user: String,
    /// `None` for `http://elastic@es:9200`, which names the user only.
    pub password: Option<Secret>,
}

/// Hosts as the output uses them.
#[derive(Debug, Default)]
pub struct Hosts {
    /// Base URLs with a scheme, without credentials or a trailing slash.
    pub urls: Vec<String>,
    /// What the URLs carried; every URL that carries credentials carries these.
    pub credentials: Option<UrlCredentials>,
}

/// Checks `hosts` (a scheme is added when missing) and takes credentials out of them.
pub fn parse(hosts: &HostList, problems: &mut Vec<Problem>) -> Hosts {
    if hosts.0.is_empty() {
        problems.push(
            Problem::at("hosts", "no Elasticsearch host given").hint(
                "set hosts = \"http://localhost:9200\" (or ES_HOSTS for the shipped pipeline)",
            ),
        );
    }
    let mut out = Hosts::default();
    for host in &hosts.0 {
        let shown = redact(host);
        let with_scheme = if host.contains("://") {
            host.clone()
        } else {
            format!("http://{host}")
        };
        match reqwest::Url::parse(&with_scheme) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                if url.query().is_some() {
                    problems.push(
                        Problem::at("hosts", format!("host `{shown}` has a query string"))
                            .hint("give the base URL only, e.g. https://es1:9200"),
                    );
                }
                out.add(&url, &strip_userinfo(&with_scheme), problems);
            }
            Ok(url) => problems.push(
                Problem::at(
                    "hosts",
                    format!(
                        "host `{shown}` is not an http(s) URL (scheme `{}`)",
                        url.scheme()
                    ),
                )
                .hint("write e.g. http://localhost:9200 or https://es1:9200"),
            ),
            Err(e) => problems.push(
                Problem::at("hosts", format!("host `{shown}` is not a URL: {e}"))
                    .hint("write e.g. http://localhost:9200 or https://es1:9200"),
            ),
        }
    }
    out
}

impl Hosts {
    /// Keeps `stripped` (the URL without its user info) and the credentials `url` carries,
    /// which must be those of every other host that carries any: one cluster, one login.
    fn add(&mut self, url: &reqwest::Url, stripped: &str, problems: &mut Vec<Problem>) {
        self.urls.push(stripped.trim_end_matches('/').to_string());
        if url.username().is_empty() && url.password().is_none() {
            return;
        }
        let found = UrlCredentials {
            user: percent_decode(url.username()),
            password: url.password().map(|p| Secret::new(percent_decode(p))),
        };
        match &self.credentials {
            None => self.credentials = Some(found),
            Some(first) if *first == found => {}
            Some(_) => problems.push(
                Problem::at("hosts", "host URLs carry different credentials")
                    .hint("every host of one cluster takes the same login: write it once, in user and password"),
            ),
        }
    }
}

/// `text` with the user info of its URL (everything before `@` in the authority) replaced by
/// `[redacted]`, for messages about a host; `text` itself when it has none. Works on text that
/// does not parse as a URL too.
pub fn redact(text: &str) -> Cow<'_, str> {
    match userinfo_span(text) {
        Some((start, at)) => Cow::Owned(format!("{}{REDACTED}{}", &text[..start], &text[at..])),
        None => Cow::Borrowed(text),
    }
}

/// `text` without the user info of its URL and its `@`.
fn strip_userinfo(text: &str) -> String {
    match userinfo_span(text) {
        Some((start, at)) => format!("{}{}", &text[..start], &text[at + 1..]),
        None => text.to_string(),
    }
}

/// Where the user info starts and where its closing `@` is: the authority runs from after
/// `://` (or the start) to the first `/`, `?` or `#`, and its user info ends at its last `@`.
fn userinfo_span(text: &str) -> Option<(usize, usize)> {
    let start = text.find("://").map_or(0, |i| i + 3);
    let rest = &text[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rfind('@').map(|at| (start, start + at))
}

/// Decodes `%XX` escapes (a password with `@` or `:` is written `%40`, `%3A` in a URL).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> (Hosts, Vec<String>) {
        let mut problems = Vec::new();
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        let h = parse(&HostList(list), &mut problems);
        (h, problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn credentials_are_taken_out_of_the_urls() {
        let (h, problems) = hosts(&[
            "http://elastic:changeme@es1:9200/",
            "elastic:changeme@es2:9200",
            "https://es3:9200",
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            h.urls,
            ["http://es1:9200", "http://es2:9200", "https://es3:9200"]
        );
        let c = h.credentials.unwrap();
        assert_eq!(c.user, "elastic");
        assert_eq!(c.password.unwrap().expose(), "changeme");

        let (h, _) = hosts(&["http://elastic@es:9200"]);
        assert_eq!(h.urls, ["http://es:9200"]);
        let c = h.credentials.unwrap();
        assert_eq!((c.user.as_str(), c.password), ("elastic", None));

        let (h, _) = hosts(&["https://us%40er:p%40ss%3Aw0rd@es:9200"]);
        assert_eq!(h.urls, ["https://es:9200"]);
        let c = h.credentials.unwrap();
        assert_eq!(c.user, "us@er");
        assert_eq!(c.password.unwrap().expose(), "p@ss:w0rd");

        let (h, _) = hosts(&["http://es:9200"]);
        assert_eq!((h.urls.len(), h.credentials), (1, None));
    }

    #[test]
    fn different_credentials_are_a_problem() {
        let (_, problems) = hosts(&["http://a:pw1@es1:9200", "http://a:pw2@es2:9200"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("error: hosts: host URLs carry different credentials"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("pw1") && !problems[0].contains("pw2"));
    }

    #[test]
    fn problems_print_the_host_redacted() {
        let (_, problems) = hosts(&[
            "ftp://elastic:s3cr3t@es:21",
            "http://elastic:s3cr3t@es:9200?x=1",
            "http://elastic:s3cr3t@:9200",
        ]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        for p in &problems {
            assert!(!p.contains("s3cr3t"), "{p}");
            assert!(p.contains("[redacted]@"), "{p}");
        }
    }

    #[test]
    fn a_printed_host_list_is_redacted() {
        let list: HostList =
            serde_json::from_value(serde_json::json!("http://u:s3cr3t@es1:9200, es2")).unwrap();
        assert_eq!(
            format!("{list:?}"),
            r#"["http://[redacted]@es1:9200", "es2"]"#
        );
    }

    #[test]
    fn redact_and_strip_work_on_the_authority_only() {
        assert_eq!(
            redact("http://u:p@es:9200/x@y"),
            "http://[redacted]@es:9200/x@y"
        );
        assert_eq!(redact("u:p@es"), "[redacted]@es");
        assert_eq!(redact("http://es:9200/a@b"), "http://es:9200/a@b");
        assert_eq!(redact("http://a@b:p@es"), "http://[redacted]@es");
        assert_eq!(strip_userinfo("https://u:p@es:9200/"), "https://es:9200/");
        assert_eq!(strip_userinfo("es:9200"), "es:9200");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%e1%bb%97i"), "ỗi");
    }
}
