//! TLS for the Beats listener: PEM certificate and key (PKCS#8, PKCS#1 or SEC1), optional or
//! required client certificates checked against `ssl_certificate_authorities`, TLS 1.2 and
//! 1.3 with the ring provider. Every problem names the setting and the file.

use crate::config::problem::Problem;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Whether clients must present a certificate (Logstash's `ssl_client_authentication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    None,
    /// Checked when presented, accepted when absent.
    Optional,
    Required,
}

/// The TLS settings of the input, already known to be present.
pub struct TlsFiles<'a> {
    pub certificate: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub authorities: &'a [PathBuf],
    pub client_auth: ClientAuth,
}

impl TlsFiles<'_> {
    /// Whether any TLS setting is given.
    fn any_given(&self) -> bool {
        self.certificate.is_some()
            || self.key.is_some()
            || !self.authorities.is_empty()
            || self.client_auth != ClientAuth::None
    }
}

/// The problems of an input's TLS settings (the Beats and HTTP inputs share them): those of
/// the server configuration when TLS is on (`enabled`), or a warning when settings are given
/// while it is off. `serves` names what `ssl_enabled` would serve, for the hint.
pub fn settings_problems(enabled: bool, files: &TlsFiles<'_>, serves: &str) -> Vec<Problem> {
    if enabled {
        return server_config(files).err().unwrap_or_default();
    }
    if !files.any_given() {
        return Vec::new();
    }
    vec![
        Problem::at("ssl_enabled", "TLS settings are given but TLS is off")
            .hint(format!("set ssl_enabled = true to serve {serves}"))
            .warning(),
    ]
}

/// `ssl_handshake_timeout`'s default: 10 s.
pub fn default_handshake_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// `ssl_certificate_authorities`: one path or a list of paths.
pub fn path_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    Ok(crate::config::de::string_list(d)?
        .into_iter()
        .map(PathBuf::from)
        .collect())
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, Problem> {
    std::fs::read(path).map_err(|e| {
        Problem::at(key, format!("cannot read `{}`: {e}", path.display()))
            .hint("give the path of a readable PEM file")
    })
}

fn certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let pem = read(key, path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| Problem::at(key, format!("`{}` is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Problem::at(
            key,
            format!("`{}` holds no PEM certificate", path.display()),
        )
        .hint("expected a -----BEGIN CERTIFICATE----- block"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Problem> {
    let pem = read("ssl_key", path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(Problem::at(
            "ssl_key",
            format!("`{}` holds no PEM private key", path.display()),
        )
        .hint("expected a PKCS#8 (BEGIN PRIVATE KEY), PKCS#1 (BEGIN RSA PRIVATE KEY) or SEC1 (BEGIN EC PRIVATE KEY) block")),
        Err(e) => Err(Problem::at(
            "ssl_key",
            format!("`{}` is not valid PEM: {e}", path.display()),
        )),
    }
}

/// Builds the rustls server configuration, or every problem found on the way.
pub fn server_config(files: &TlsFiles<'_>) -> Result<Arc<rustls::ServerConfig>, Vec<Problem>> {
    let mut problems = Vec::new();
    let chain = certificate_chain(files, &mut problems);
    let key = key(files, &mut problems);
    let roots = client_roots(files, &mut problems);
    let (Some(chain), Some(key)) = (chain, key) else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let builder = builder(files.client_auth, roots).map_err(|p| vec![p])?;
    match builder.with_single_cert(chain, key) {
        Ok(config) => Ok(Arc::new(config)),
        Err(e) => Err(vec![key_mismatch(files, &e)]),
    }
}

/// The server's certificate chain from `ssl_certificate`, which must be set.
fn certificate_chain(
    files: &TlsFiles<'_>,
    problems: &mut Vec<Problem>,
) -> Option<Vec<CertificateDer<'static>>> {
    match files.certificate {
        Some(p) => certs("ssl_certificate", p)
            .map_err(|e| problems.push(e))
            .ok(),
        None => {
            problems.push(
                Problem::at(
                    "ssl_certificate",
                    "TLS is enabled but no certificate is set",
                )
                .hint("set ssl_certificate to a PEM certificate (chain) file"),
            );
            None
        }
    }
}

/// The server's private key from `ssl_key`, which must be set.
fn key(files: &TlsFiles<'_>, problems: &mut Vec<Problem>) -> Option<PrivateKeyDer<'static>> {
    match files.key {
        Some(p) => private_key(p).map_err(|e| problems.push(e)).ok(),
        None => {
            problems.push(
                Problem::at("ssl_key", "TLS is enabled but no private key is set")
                    .hint("set ssl_key to the PEM private key of ssl_certificate"),
            );
            None
        }
    }
}

/// The CAs that sign client certificates, which client authentication needs.
fn client_roots(files: &TlsFiles<'_>, problems: &mut Vec<Problem>) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for path in files.authorities {
        match certs("ssl_certificate_authorities", path) {
            Ok(list) => {
                for c in list {
                    if let Err(e) = roots.add(c) {
                        problems.push(Problem::at(
                            "ssl_certificate_authorities",
                            format!("`{}`: unusable CA certificate: {e}", path.display()),
                        ));
                    }
                }
            }
            Err(p) => problems.push(p),
        }
    }
    if files.client_auth != ClientAuth::None && files.authorities.is_empty() {
        problems.push(
            Problem::at(
                "ssl_certificate_authorities",
                "client authentication needs the CAs that sign client certificates",
            )
            .hint("list PEM files in ssl_certificate_authorities, or set ssl_client_authentication = \"none\""),
        );
    }
    roots
}

/// A server configuration that still needs its certificate and key.
type ServerBuilder = rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>;

/// A builder for TLS 1.2 and 1.3 that checks client certificates as `client_auth` says.
fn builder(
    client_auth: ClientAuth,
    roots: rustls::RootCertStore,
) -> Result<ServerBuilder, Problem> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Problem::at("ssl_enabled", format!("TLS setup failed: {e}")))?;
    if client_auth == ClientAuth::None {
        return Ok(builder.with_no_client_auth());
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let verifier = if client_auth == ClientAuth::Optional {
        verifier.allow_unauthenticated()
    } else {
        verifier
    };
    match verifier.build() {
        Ok(v) => Ok(builder.with_client_cert_verifier(v)),
        Err(e) => Err(Problem::at(
            "ssl_certificate_authorities",
            format!("cannot verify client certificates: {e}"),
        )),
    }
}

/// The problem of a key that is not the certificate's.
fn key_mismatch(files: &TlsFiles<'_>, e: &rustls::Error) -> Problem {
    Problem::at(
        "ssl_key",
        format!(
            "`{}` does not fit `{}`: {e}",
            files
                .key
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            files
                .certificate
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    )
    .hint("the key must be the private key of the first certificate in ssl_certificate")
}
