//! `${VAR}` and `${VAR:-default}` substitution in configuration strings. `$${` writes a
//! literal `${`. The environment is passed in, so tests never touch the process environment.

/// Looks a variable up; `std::env::var` in the daemon, a map in tests.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A reference problem found while substituting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// `${NAME}` without default and the variable is not set.
    Unset(String),
    /// `${` without a closing `}` or with an invalid name.
    Malformed(String),
}

/// Substitutes every reference in `input`. Collects all problems instead of stopping at one.
pub fn substitute(input: &str, lookup: Lookup) -> Result<String, Vec<EnvError>> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut errors = Vec::new();
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            continue;
        }
        let Some(close) = after.find('}') else {
            errors.push(EnvError::Malformed(after.to_string()));
            rest = "";
            break;
        };
        let inner = &after[2..close];
        let (name, default) = match inner.find(":-") {
            Some(i) => (&inner[..i], Some(&inner[i + 2..])),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            errors.push(EnvError::Malformed(after[..=close].to_string()));
        } else {
            match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => errors.push(EnvError::Unset(name.to_string())),
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("es1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_with_defaults() {
        assert_eq!(
            substitute("http://${HOST}:9200", &env).unwrap(),
            "http://es1:9200"
        );
        assert_eq!(substitute("${PORT:-9200}", &env).unwrap(), "9200");
        assert_eq!(substitute("${EMPTY:-x}", &env).unwrap(), "x");
        assert_eq!(substitute("${EMPTY}", &env).unwrap(), "");
        assert_eq!(substitute("${NOPE:-}", &env).unwrap(), "");
        assert_eq!(
            substitute("cost $5 $${HOST}", &env).unwrap(),
            "cost $5 ${HOST}"
        );
    }

    #[test]
    fn reports_every_unset_variable() {
        let errs = substitute("${A}/${HOST}/${B}", &env).unwrap_err();
        assert_eq!(
            errs,
            vec![EnvError::Unset("A".into()), EnvError::Unset("B".into())]
        );
        assert!(matches!(
            substitute("${A", &env).unwrap_err()[0],
            EnvError::Malformed(_)
        ));
        assert!(matches!(
            substitute("${A B}", &env).unwrap_err()[0],
            EnvError::Malformed(_)
        ));
    }
}
