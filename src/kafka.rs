//! What the `kafka` input and output share: the connection settings (brokers, TLS and SASL,
//! named as librdkafka names them, and a pass-through table for the rest), their validation,
//! and the librdkafka client context that routes its log lines to `tracing` and its errors to
//! `/health`. Built only with the `kafka` cargo feature.

use crate::config::problem::{PathSeg, Problem};
use crate::config::secret::Secret;
use crate::health::{HealthHandle, Status};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// The connection settings of one Kafka client, as the input's and output's configs hold them
/// (serde cannot flatten into a `deny_unknown_fields` struct, so each config keeps the fields
/// and lends them here).
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// `bootstrap.servers`: `host:port` entries.
    pub brokers: &'a [String],
    /// `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: &'a str,
    /// `sasl.mechanism`: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: &'a str,
    pub sasl_username: &'a str,
    pub sasl_password: &'a Secret,
    /// `ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`.
    pub ssl_ca_location: Option<&'a PathBuf>,
    pub ssl_certificate_location: Option<&'a PathBuf>,
    pub ssl_key_location: Option<&'a PathBuf>,
    pub ssl_key_password: &'a Secret,
    /// `ssl.endpoint.identification.algorithm`: `https` when true, `none` when false.
    pub ssl_endpoint_identification: bool,
    /// Any other librdkafka property, set last.
    pub librdkafka: &'a BTreeMap<String, String>,
}

/// The security protocols librdkafka knows.
const PROTOCOLS: &[&str] = &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
/// The SASL mechanisms supported (GSSAPI and OAUTHBEARER need more than a user and password).
const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl Connection<'_> {
    /// Every problem with the connection settings; `managed` are the librdkafka properties the
    /// component sets itself and that the pass-through table must not change.
    pub fn problems(&self, managed: &[&str]) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.brokers.is_empty() {
            problems.push(
                Problem::at("brokers", "no brokers")
                    .hint("e.g. brokers = \"kafka1:9092,kafka2:9092\""),
            );
        }
        for broker in self.brokers {
            if !looks_like_host_port(broker) {
                problems.push(
                    Problem::at("brokers", format!("`{broker}` is not host:port"))
                        .hint("e.g. \"kafka1:9092\" (no scheme)"),
                );
            }
        }
        self.security_problems(&mut problems);
        for key in self.librdkafka.keys() {
            if managed.contains(&key.as_str()) || CONNECTION_KEYS.contains(&key.as_str()) {
                problems.push(
                    Problem::at_path(
                        vec![PathSeg::Key("librdkafka".into()), PathSeg::Key(key.clone())],
                        format!("`{key}` is set by sheepdog"),
                    )
                    .hint("use the option of the same meaning (see the README's kafka reference) or remove it"),
                );
            }
        }
        problems
    }

    /// Problems with `security_protocol`, SASL and TLS settings.
    fn security_problems(&self, problems: &mut Vec<Problem>) {
        let protocol = self.security_protocol.to_ascii_lowercase();
        if !PROTOCOLS.contains(&protocol.as_str()) {
            problems.push(
                Problem::at(
                    "security_protocol",
                    format!("unknown security protocol `{}`", self.security_protocol),
                )
                .hint(format!("one of: {}", PROTOCOLS.join(", "))),
            );
        }
        let sasl = protocol.starts_with("sasl_");
        if sasl {
            if !MECHANISMS.contains(&self.sasl_mechanism) {
                problems.push(
                    Problem::at(
                        "sasl_mechanism",
                        format!("unsupported SASL mechanism `{}`", self.sasl_mechanism),
                    )
                    .hint(format!("one of: {}", MECHANISMS.join(", "))),
                );
            }
            if self.sasl_username.is_empty() || self.sasl_password.is_empty() {
                problems.push(
                    Problem::at(
                        "sasl_username",
                        "SASL needs `sasl_username` and `sasl_password`",
                    )
                    .hint("sasl_password = \"${KAFKA_PASSWORD}\""),
                );
            }
        } else if !self.sasl_username.is_empty() || !self.sasl_password.is_empty() {
            problems.push(
                Problem::at(
                    "sasl_username",
                    "SASL credentials are set but `security_protocol` does not use SASL",
                )
                .hint("set security_protocol = \"sasl_ssl\" (or \"sasl_plaintext\")"),
            );
        }
        for (key, path) in [
            ("ssl_ca_location", self.ssl_ca_location),
            ("ssl_certificate_location", self.ssl_certificate_location),
            ("ssl_key_location", self.ssl_key_location),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    problems.push(Problem::at(
                        key,
                        format!("`{}` is not a readable file", path.display()),
                    ));
                }
            }
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            problems.push(Problem::at(
                "ssl_certificate_location",
                "a client certificate needs both `ssl_certificate_location` and `ssl_key_location`",
            ));
        }
    }

    /// The librdkafka configuration for these settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.brokers.join(","))
            .set(
                "security.protocol",
                self.security_protocol.to_ascii_lowercase(),
            )
            .set_log_level(RDKafkaLogLevel::Info);
        if self
            .security_protocol
            .to_ascii_lowercase()
            .starts_with("sasl_")
        {
            config
                .set("sasl.mechanism", self.sasl_mechanism)
                .set("sasl.username", self.sasl_username)
                .set("sasl.password", self.sasl_password.expose());
        }
        let paths = [
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
        ];
        for (key, path) in paths {
            if let Some(path) = path {
                config.set(key, path.display().to_string());
            }
        }
        if !self.ssl_key_password.is_empty() {
            config.set("ssl.key.password", self.ssl_key_password.expose());
        }
        if !self.ssl_endpoint_identification {
            config.set("ssl.endpoint.identification.algorithm", "none");
        }
        for (key, value) in self.librdkafka {
            config.set(key, value);
        }
        config
    }
}

/// librdkafka properties that the connection options above set.
const CONNECTION_KEYS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

/// `host:port` with a numeric port and no scheme.
fn looks_like_host_port(broker: &str) -> bool {
    match broker.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains("://") && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// The librdkafka client context: log lines go to `tracing` (target `sheepdog::kafka`), and
/// client-wide errors (all brokers down, authentication failed) to the component's health.
pub struct Context {
    pub component: String,
    health: HealthHandle,
    /// The health is `down` (set by an error, cleared by the next success: an atomic, so the
    /// per-message check costs no lock).
    down: AtomicBool,
}

impl Context {
    pub fn new(component: String, health: HealthHandle) -> Context {
        Context {
            component,
            health,
            down: AtomicBool::new(false),
        }
    }

    /// The client works (a message delivered or consumed, partitions assigned): `ok` again
    /// after an error.
    pub fn working(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            self.health.ok();
            tracing::info!(component = %self.component, "kafka client working again");
        }
    }

    /// Reports the component stopped (shutdown).
    pub fn stopped(&self) {
        self.health.set(Status::Degraded, "stopped");
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let component = self.component.as_str();
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(component, facility = fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(component, facility = fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(component, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(component, facility = fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(component = %self.component, %error, reason, "kafka client error");
        self.down.store(true, Ordering::Release);
        self.health.set(Status::Down, format!("kafka: {reason}"));
    }
}

/// The settings' fields, for the input's and output's `Config` structs: the same names, types
/// and defaults in both.
pub fn d_protocol() -> String {
    "plaintext".into()
}
pub fn d_mechanism() -> String {
    "PLAIN".into()
}
pub fn d_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection<'a>(
        brokers: &'a [String],
        protocol: &'a str,
        user: &'a str,
        password: &'a Secret,
        extra: &'a BTreeMap<String, String>,
    ) -> Connection<'a> {
        Connection {
            brokers,
            security_protocol: protocol,
            sasl_mechanism: "SCRAM-SHA-512",
            sasl_username: user,
            sasl_password: password,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: password,
            ssl_endpoint_identification: true,
            librdkafka: extra,
        }
    }

    fn keys(problems: &[Problem]) -> Vec<String> {
        problems
            .iter()
            .map(|p| crate::config::problem::path_to_string(&p.path))
            .collect()
    }

    #[test]
    fn brokers_protocols_and_sasl_are_checked() {
        let none = BTreeMap::new();
        let empty = Secret::default();
        let pw = Secret::new("s3cret");
        let good = vec!["k1:9092".to_string(), "10.0.0.2:9093".to_string()];
        assert!(connection(&good, "plaintext", "", &empty, &none)
            .problems(&[])
            .is_empty());
        assert!(connection(&good, "SASL_SSL", "u", &pw, &none)
            .problems(&[])
            .is_empty());
        let bad = vec!["kafka://k1:9092".to_string(), "k2".to_string()];
        assert_eq!(
            keys(&connection(&bad, "plaintext", "", &empty, &none).problems(&[])),
            ["brokers", "brokers"]
        );
        assert_eq!(
            keys(&connection(&[], "tls", "", &empty, &none).problems(&[])),
            ["brokers", "security_protocol"]
        );
        assert_eq!(
            keys(&connection(&good, "sasl_ssl", "", &empty, &none).problems(&[])),
            ["sasl_username"]
        );
        assert_eq!(
            keys(&connection(&good, "ssl", "u", &pw, &none).problems(&[])),
            ["sasl_username"]
        );
    }

    #[test]
    fn the_pass_through_table_cannot_change_managed_settings() {
        let good = vec!["k1:9092".to_string()];
        let empty = Secret::default();
        let extra: BTreeMap<String, String> = [
            ("enable.auto.commit", "true"),
            ("sasl.password", "x"),
            ("fetch.wait.max.ms", "100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let problems =
            connection(&good, "plaintext", "", &empty, &extra).problems(&["enable.auto.commit"]);
        assert_eq!(
            keys(&problems),
            ["librdkafka.enable.auto.commit", "librdkafka.sasl.password"]
        );
    }

    #[test]
    fn the_client_config_names_settings_as_librdkafka_does() {
        let good = vec!["k1:9092".to_string(), "k2:9092".to_string()];
        let pw = Secret::new("s3cret");
        let extra: BTreeMap<String, String> =
            [("fetch.wait.max.ms".to_string(), "100".to_string())].into();
        let mut c = connection(&good, "SASL_SSL", "u", &pw, &extra);
        c.ssl_endpoint_identification = false;
        let config = c.client_config();
        assert_eq!(config.get("bootstrap.servers"), Some("k1:9092,k2:9092"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(
            config.get("ssl.endpoint.identification.algorithm"),
            Some("none")
        );
        assert_eq!(config.get("fetch.wait.max.ms"), Some("100"));
    }
}
