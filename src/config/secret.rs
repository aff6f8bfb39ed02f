//! [`Secret`]: a password, token or API key from the configuration. It is written as a string
//! in the pipeline file (usually `${VAR}`), prints as `[redacted]`, and its value is read only
//! through [`Secret::expose`], so a `{:?}` of a config or a log field cannot leak it.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// A string that is never printed. Debug and Display write `[redacted]`; the value is
/// reached only through [`Secret::expose`], at the one place that sends it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

/// What Debug and Display write instead of the value.
pub const REDACTED: &str = "[redacted]";

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the header or handshake that needs it. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no value was given (an empty string means "not set" in the pipeline file).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

/// Takes a string. Anything else is refused without echoing it (serde's own message for a
/// wrong type quotes the value, e.g. "invalid type: integer `1234`").
struct SecretVisitor;

/// The error for a secret written as something other than a string.
fn not_a_string<E: de::Error>(kind: &str) -> E {
    E::custom(format!(
        "a secret must be a string, not {kind} (quote it, e.g. password = \"${{ES_PASSWORD}}\")"
    ))
}

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(not_a_string("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(not_a_string("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(not_a_string("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(not_a_string("a number"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(not_a_string("a list"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(not_a_string("a table"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Holder {
        #[serde(default)]
        password: Secret,
        token: Option<Secret>,
    }

    #[test]
    fn prints_redacted_and_exposes_on_request() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2");
        assert!(!s.is_empty());
        assert!(Secret::default().is_empty());
    }

    #[test]
    fn deserializes_like_a_string() {
        let h: Holder = toml::from_str("password = \"hunter2\"\ntoken = \"t0k3n\"").unwrap();
        assert_eq!(h.password.expose(), "hunter2");
        assert_eq!(h.token.as_ref().map(Secret::expose), Some("t0k3n"));
        let debug = format!("{h:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("t0k3n"),
            "{debug}"
        );
        assert_eq!(
            debug,
            "Holder { password: [redacted], token: Some([redacted]) }"
        );

        let h: Holder = toml::from_str("").unwrap();
        assert!(h.password.is_empty() && h.token.is_none());
        // Through serde_json too (how `deserialize_at` sees a value is not tied to TOML).
        let h: Holder = serde_json::from_str(r#"{"password":"p","token":null}"#).unwrap();
        assert_eq!(h.password.expose(), "p");
    }

    #[test]
    fn a_wrong_type_is_refused_without_echoing_the_value() {
        for (text, kind) in [
            ("password = 73519", "a number"),
            ("password = 7351.9", "a number"),
            ("password = true", "a boolean"),
            ("password = [\"x7351\"]", "a list"),
        ] {
            let err = toml::from_str::<Holder>(text)
                .unwrap_err()
                .message()
                .to_string();
            assert!(
                err.contains(&format!("a secret must be a string, not {kind}")),
                "{err}"
            );
            assert!(!err.contains("7351"), "{err}");
        }
    }
}
