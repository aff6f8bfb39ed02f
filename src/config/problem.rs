//! A configuration problem: where it is (a key path, later turned into file:line:column),
//! what is wrong, and how to fix it.

use std::fmt;

/// One step of a path into the TOML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

impl fmt::Display for PathSeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathSeg::Key(k) => write!(f, "{k}"),
            PathSeg::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// Renders `inputs[0].address`.
pub fn path_to_string(path: &[PathSeg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathSeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<PathSeg>,
    pub message: String,
    pub hint: Option<String>,
    pub severity: Severity,
}

impl Problem {
    /// An error at `key` of the component being validated (the caller prefixes the stage path).
    pub fn at(key: &str, message: impl Into<String>) -> Self {
        let path = if key.is_empty() {
            Vec::new()
        } else {
            key.split('.')
                .map(|k| PathSeg::Key(k.to_string()))
                .collect()
        };
        Problem {
            path,
            message: message.into(),
            hint: None,
            severity: Severity::Error,
        }
    }

    pub fn at_path(path: Vec<PathSeg>, message: impl Into<String>) -> Self {
        Problem {
            path,
            message: message.into(),
            hint: None,
            severity: Severity::Error,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Places the problem under `prefix` (for example `filters[3]`).
    pub fn prefixed(mut self, prefix: &[PathSeg]) -> Self {
        let mut path = prefix.to_vec();
        path.append(&mut self.path);
        self.path = path;
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{level}: {}: {}",
            path_to_string(&self.path),
            self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Suggests the closest candidate to a misspelt name.
pub fn did_you_mean<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(input, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        assert_eq!(
            did_you_mean("adress", &["address", "tags"]),
            Some("address")
        );
        assert_eq!(did_you_mean("zzzz", &["address", "tags"]), None);
    }

    #[test]
    fn renders_paths() {
        let p = Problem::at("source", "bad")
            .prefixed(&[PathSeg::Key("filters".into()), PathSeg::Index(2)]);
        assert_eq!(p.to_string(), "error: filters[2].source: bad");
    }
}
