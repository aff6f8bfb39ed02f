//! The files in `deploy/` as operators install them: the systemd unit (required keys, and
//! `systemd-analyze verify` finds nothing), the environment template (every variable of the
//! shipped pipelines, with their defaults; the shipped pipeline passes `check` with it), and
//! the Filebeat configuration, run by the real Filebeat 8.1.3 against the real binary and
//! osmem-server with only its paths and host substituted.
//!
//! Needs systemd-analyze (`scripts/ci-deps/systemd.sh`), Filebeat (`scripts/ci-deps/beats.sh`,
//! or `$FILEBEAT_BIN`) and osmem-server.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn deploy(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("deploy").join(name)).unwrap()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sheepdog-deploy-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// --- systemd unit -------------------------------------------------------------------------------

/// `[Section]` -> key -> every value given (systemd keys may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut unit: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        assert!(!section.is_empty(), "line {}: key before a section", n + 1);
        unit.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    unit
}

fn env_template() -> BTreeMap<String, String> {
    deploy("sheepdog.env")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').expect("VAR=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn unit_has_the_required_settings() {
    let unit = parse_unit(&deploy("sheepdog.service"));
    let service = &unit["Service"];
    let one = |k: &str| -> &str {
        let v = service
            .get(k)
            .unwrap_or_else(|| panic!("[Service] has no {k}"));
        assert_eq!(v.len(), 1, "{k} is given {} times", v.len());
        &v[0]
    };
    for (k, want) in [
        ("User", "sheepdog"),
        ("Group", "sheepdog"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/sheepdog"),
        ("StateDirectory", "sheepdog"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("EnvironmentFile", "/etc/sheepdog/sheepdog.env"),
        ("WorkingDirectory", "/var/lib/sheepdog"),
    ] {
        assert_eq!(one(k), want, "[Service] {k}");
    }
    let nofile: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE is a number");
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/sheepdog run --config /etc/sheepdog/holysheep.toml --log-json"
    );
    // The drain (shutdown_timeout = "30s" in the shipped pipeline) must end before systemd
    // sends SIGKILL.
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    let shipped = std::fs::read_to_string(repo_root().join("pipelines/holysheep.toml")).unwrap();
    assert!(shipped.contains("shutdown_timeout = \"30s\""));
    assert!(stop > 30, "TimeoutStopSec={stop}s");
    // The data directory the template hands to the pipeline is the one the unit lets it write.
    assert_eq!(env_template()["DATA_DIR"], one("ReadWritePaths"));
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: run scripts/ci-deps/systemd.sh (scripts/test does)"
    );
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = scratch_dir("unit");
    let unit = deploy("sheepdog.service")
        .replace("/usr/local/bin/sheepdog", env!("CARGO_BIN_EXE_sheepdog"));
    let path = dir.join("sheepdog.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys and bad values are warnings on stderr with exit status 0.
    assert!(
        !stderr.contains("sheepdog.service"),
        "systemd-analyze verify complains:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unit_parser_sees_repeated_and_empty_keys() {
    let unit = parse_unit("[Service]\nA=\nB=1\nB=2\n# C=3\n");
    assert_eq!(unit["Service"]["A"], [""]);
    assert_eq!(unit["Service"]["B"], ["1", "2"]);
    assert!(!unit["Service"].contains_key("C"));
}

// --- environment template -----------------------------------------------------------------------

/// Every `${VAR}` / `${VAR:-default}` in the non-comment lines of `text`: name -> default
/// (`None` without one).
fn pipeline_variables(text: &str) -> BTreeMap<String, Option<String>> {
    let re = regex::Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}").unwrap();
    let mut vars = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for c in re.captures_iter(line) {
            let default = c.get(2).map(|m| m.as_str().to_string());
            vars.insert(c[1].to_string(), default);
        }
    }
    vars
}

fn shipped_pipelines() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![repo_root().join("pipelines")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    assert!(files
        .iter()
        .any(|f| f.ends_with("pipelines/holysheep.toml")));
    files
}

/// The comment above `VAR=` in the template, which ends with `[pipeline default: X]`.
fn template_comment<'a>(template: &'a str, var: &str) -> Option<&'a str> {
    let lines: Vec<&str> = template.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("{var}=")))?;
    lines[..at].last().and_then(|l| l.strip_prefix("# "))
}

#[test]
fn env_template_has_every_pipeline_variable_with_its_default() {
    let template = deploy("sheepdog.env");
    let assigned = env_template();
    let mut missing = Vec::new();
    for file in shipped_pipelines() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (var, default) in pipeline_variables(&text) {
            let Some(comment) = template_comment(&template, &var) else {
                missing.push(format!("{var} (read by {})", file.display()));
                continue;
            };
            let want = match default.as_deref() {
                None | Some("") => "[pipeline default: empty]".to_string(),
                Some(d) => format!("[pipeline default: {d}]"),
            };
            assert!(
                comment.ends_with(&want),
                "the comment above {var}= in deploy/sheepdog.env should end with {want}: {comment}"
            );
            assert!(assigned.contains_key(&var));
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/sheepdog.env lacks {}",
        missing.join(", ")
    );
}

#[test]
fn variable_scan_reads_defaults_and_skips_comments() {
    let vars = pipeline_variables(
        "# ${IN_COMMENT}\na = \"${A:-x:y}\"\nb = \"${B}-${C:-}\"\nc = \"$${D}\"\n",
    );
    assert_eq!(vars.get("A"), Some(&Some("x:y".into())));
    assert_eq!(vars.get("B"), Some(&None));
    assert_eq!(vars.get("C"), Some(&Some(String::new())));
    assert!(!vars.contains_key("IN_COMMENT"));
    let template = "# the a [pipeline default: 1]\nA=1\nB=2\n";
    assert_eq!(
        template_comment(template, "A"),
        Some("the a [pipeline default: 1]")
    );
    assert_eq!(template_comment(template, "C"), None);
}

/// `sheepdog check` of a shipped pipeline with only the environment template set, from an
/// empty directory; (passed, output).
fn check_with_env_template(pipeline: &str) -> (bool, String) {
    let dir = scratch_dir("env");
    let mut cmd = Command::new(sheepdog_binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(&dir)
        .args(["check", "--config"])
        .arg(repo_root().join(pipeline));
    for (k, v) in env_template() {
        cmd.env(k, v);
    }
    cmd.env("DATA_DIR", &dir);
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
    (out.status.success(), text)
}

#[test]
fn shipped_pipeline_checks_with_the_env_template() {
    let (passed, text) = check_with_env_template("pipelines/holysheep.toml");
    assert!(passed, "{text}");
    assert!(text.contains("OK"), "{text}");
}

/// The Kafka tiers pass `check` in a build with the `kafka` feature; a build without it names
/// the feature.
#[test]
fn kafka_pipelines_check_with_the_env_template() {
    for pipeline in [
        "pipelines/kafka-shipper.toml",
        "pipelines/kafka-indexer.toml",
    ] {
        let (passed, text) = check_with_env_template(pipeline);
        if cfg!(feature = "kafka") {
            assert!(passed, "{pipeline}: {text}");
            assert!(text.contains("OK"), "{pipeline}: {text}");
        } else {
            assert!(!passed, "{pipeline}: {text}");
            assert!(
                text.contains("this build has no Kafka support; build with --features kafka"),
                "{pipeline}: {text}"
            );
        }
    }
}

// --- Filebeat -------------------------------------------------------------------------------------

/// deploy/filebeat.yml with its log paths moved under `dir` and the output at `beats_addr`.
fn filebeat_config(dir: &Path, beats_addr: &str) -> PathBuf {
    let shipped = deploy("filebeat.yml");
    for needle in [
        "/var/log/holysheep/*.log",
        "/var/log/applications/*.log",
        "/var/log/filebeat",
        "\"sheepdog:5044\"",
    ] {
        assert!(
            shipped.contains(needle),
            "deploy/filebeat.yml lacks {needle}"
        );
    }
    let settings: Vec<&str> = shipped
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    for gone in ["output.elasticsearch", "setup.ilm", "setup.kibana"] {
        assert!(
            !settings.iter().any(|l| l.contains(gone)),
            "deploy/filebeat.yml sets {gone}"
        );
    }
    let d = dir.display();
    let yml = shipped
        .replace("/var/log/holysheep/", &format!("{d}/holysheep/"))
        .replace("/var/log/applications/", &format!("{d}/applications/"))
        .replace("/var/log/filebeat", &format!("{d}/fblogs"))
        .replace("\"sheepdog:5044\"", &format!("\"{beats_addr}\""));
    let path = dir.join("filebeat.yml");
    std::fs::write(&path, yml).unwrap();
    path
}

fn filebeat(config: &Path, dir: &Path, args: &[&str]) -> Command {
    let bin = filebeat_binary();
    let mut cmd = Command::new(&bin);
    cmd.args(args)
        .arg("--strict.perms=false")
        .arg("-c")
        .arg(config)
        .arg("--path.home")
        .arg(bin.parent().unwrap())
        .arg("--path.data")
        .arg(dir.join("fbdata"))
        .arg("--path.logs")
        .arg(dir.join("fblogs"));
    cmd
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const REQUEST_LOG: &str = r#"{"timestamp":"2025-01-15T10:30:00.000Z","request_id":"fb-req-1","model":"claude-sonnet-4.5","user_id":"user_7","status":"success","status_code":200,"latency_ms":120,"total_tokens":2000}
{"timestamp":"2025-01-15T10:30:01+07:00","request_id":"fb-req-2","model":"gpt-4.1","user_id":"user_8","status":"error","status_code":429,"error_message":"HTTP 429: rate limited","latency_ms":25,"total_tokens":500}
{"request_id": "fb-req-3", broken
"#;

const APP_LOG: &str = r#"{"level":"ERROR","logger":"relay","message":"upstream timeout"}
Traceback (most recent call last):
  File "relay.py", line 10, in call
TimeoutError: read timed out
{"level":"INFO","logger":"relay","message":"retry ok"}
"#;

fn documents(es: &Osmem, n: usize, log: impl Fn() -> String) -> Vec<Value> {
    let found = es.wait_count("holysheep-logs-*", n as u64, Duration::from_secs(90));
    assert_eq!(found, n as u64, "documents indexed\n{}", log());
    let reply = es.search(
        "holysheep-logs-*",
        &serde_json::json!({"size": 100, "query": {"match_all": {}}}),
    );
    reply["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["_source"].clone())
        .collect()
}

fn by_request_id<'a>(docs: &'a [Value], id: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["request_id"] == id)
        .unwrap_or_else(|| panic!("no document with request_id {id}: {docs:#?}"))
}

fn check_request_logs(docs: &[Value]) {
    let one = by_request_id(docs, "fb-req-1");
    assert_eq!(one["service"], "holysheep-api", "{one}");
    assert_eq!(one["environment"], "production", "{one}");
    assert_eq!(one["@timestamp"], "2025-01-15T10:30:00.000Z", "{one}");
    assert_eq!(one["cost_usd"].as_f64(), Some(0.03), "{one}");
    assert_eq!(one["latency_bucket"], "normal", "{one}");
    assert_eq!(one["status_category"], "success", "{one}");
    assert_eq!(one["agent"]["type"], "filebeat", "{one}");
    assert!(one["host"]["name"].is_string(), "add_host_metadata: {one}");
    assert!(
        one["log"]["file"]["path"]
            .as_str()
            .unwrap()
            .ends_with("holysheep/requests.log"),
        "{one}"
    );
    let two = by_request_id(docs, "fb-req-2");
    assert_eq!(two["@timestamp"], "2025-01-15T03:30:01.000Z", "{two}");
    assert_eq!(two["status_category"], "error", "{two}");
    assert_eq!(two["cost_usd"].as_f64(), Some(0.004), "{two}");
    // The broken line is kept, with Filebeat's JSON error (json.add_error_key).
    let broken = docs
        .iter()
        .find(|d| d["error"]["message"].is_string())
        .unwrap_or_else(|| panic!("no document with error.message: {docs:#?}"));
    assert_eq!(broken["service"], "holysheep-api", "{broken}");
}

fn check_application_logs(docs: &[Value]) {
    let apps: Vec<&Value> = docs
        .iter()
        .filter(|d| d["fields"]["log_type"] == "application")
        .collect();
    assert_eq!(apps.len(), 2, "{docs:#?}");
    for a in &apps {
        // [fields][service] copied to the root by the pipeline's mutate stage.
        assert_eq!(a["service"], "application", "{a}");
        assert!(a.get("environment").is_none(), "{a}");
    }
    let traceback = apps
        .iter()
        .find(|a| a["message"].as_str().unwrap().contains("upstream timeout"))
        .expect("the multiline event");
    let message = traceback["message"].as_str().unwrap();
    assert_eq!(message.lines().count(), 4, "{message}");
    assert!(
        message.ends_with("TimeoutError: read timed out"),
        "{message}"
    );
    let flags = traceback["log"]["flags"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(flags.contains(&Value::from("multiline")), "{traceback}");
    let retry = apps
        .iter()
        .find(|a| a["parsed"]["message"] == "retry ok")
        .unwrap_or_else(|| panic!("the single-line event, parsed: {apps:#?}"));
    assert_eq!(retry["parsed"]["level"], "INFO", "{retry}");
}

#[test]
fn filebeat_config_ships_both_inputs_to_sheepdog() {
    let es = Osmem::start();
    let dog = Sheepdog::start("pipelines/holysheep.toml", &[("ES_HOSTS", &es.url)]);
    let dir = scratch_dir("filebeat");
    let config = filebeat_config(&dir, &dog.beats_addr);

    let out = filebeat(&config, &dir, &["test", "config"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("Config OK"), "{said}");
    let out = filebeat(&config, &dir, &["test", "output"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "filebeat test output:\n{said}");

    for (sub, file, text) in [
        ("holysheep", "requests.log", REQUEST_LOG),
        ("applications", "app.log", APP_LOG),
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join(file), text).unwrap();
    }
    let log_path = dir.join("filebeat.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _fb = Running(
        filebeat(&config, &dir, &["-e"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start filebeat"),
    );
    let docs = documents(&es, 5, || {
        format!(
            "--- filebeat\n{}\n--- sheepdog\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default(),
            dog.log()
        )
    });
    check_request_logs(&docs);
    check_application_logs(&docs);
    let _ = std::fs::remove_dir_all(dir);
}
