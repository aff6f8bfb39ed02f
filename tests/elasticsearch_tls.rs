//! The Elasticsearch output to an `https://` cluster that demands a client certificate: a TLS
//! proxy in front of osmem-server trusts only certificates of a test CA, sheepdog trusts the
//! proxy through `tls_ca` and presents `tls_certificate`/`tls_key`.

mod common;

use common::{free_port, make_pki, Osmem, Pki, Sheepdog};
use serde_json::json;
use sheepdog::inputs::beats::tls::{server_config, ClientAuth, TlsFiles};
use std::time::Duration;

/// A TLS terminator on `listen` demanding a client certificate of the test CA, forwarding
/// each connection to `upstream` (osmem-server's address); runs on its own thread.
fn start_tls_proxy(pki: &Pki, listen: String, upstream: String) {
    let authorities = vec![pki.ca.clone()];
    let config = server_config(&TlsFiles {
        certificate: Some(&pki.server_cert),
        key: Some(&pki.server_key),
        authorities: &authorities,
        client_auth: ClientAuth::Required,
    })
    .unwrap_or_else(|p| panic!("{p:?}"));
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = std::net::TcpListener::bind(&listen).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut es) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut es).await;
                });
            }
        });
    });
}

#[test]
fn delivers_to_a_cluster_that_demands_a_client_certificate() {
    let es = Osmem::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let port = free_port();
    let upstream = es.url.trim_start_matches("http://").to_string();
    start_tls_proxy(&pki, format!("127.0.0.1:{port}"), upstream);

    // Without a client certificate the cluster's door stays shut.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let anonymous = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let refused = anonymous
        .get(format!("https://localhost:{port}/"))
        .send()
        .and_then(|r| r.error_for_status());
    assert!(
        refused.is_err(),
        "the proxy must demand a client certificate"
    );

    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[api]
address = "${{API_ADDR}}"

[[inputs]]
type = "http"
id = "http"
address = "${{HTTP_ADDR}}"

[[outputs]]
type = "elasticsearch"
id = "es"
hosts = "https://localhost:{port}"
index = "tls-test"
tls_ca = "{ca}"
tls_certificate = "{cert}"
tls_key = "{key}"
"#,
            ca = pki.ca.display(),
            cert = pki.client_cert.display(),
            key = pki.client_key.display(),
        ),
    )
    .unwrap();
    let mut dog = Sheepdog::start(&config, &[]);
    let body: String = (0..20)
        .map(|i| {
            format!(
                "{}\n",
                json!({"request_id": format!("tls-{i}"), "model": "m"})
            )
        })
        .collect();
    let (code, text) = dog.post(body, "application/x-ndjson");
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        es.wait_count("tls-test", 20, Duration::from_secs(30)),
        20,
        "{}",
        dog.log()
    );
    assert!(dog.stop().success());
}
