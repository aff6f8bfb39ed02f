//! `scripts/demo --serve` as a newcomer runs it: the script starts osmem-server, sheepdog on the
//! shipped pipeline and a stream of sample events on the ports given in its environment, prints
//! the addresses and curl lines, and stops everything it started on SIGINT. The test runs the
//! printed curl lines verbatim and checks their answers, then checks the printed pids are gone.
//!
//! Needs bash, curl, python3 and osmem-server (`scripts/test` installs it).

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The running script; on drop (a failed assertion) it and every process below it are killed.
struct Demo {
    child: Child,
    stdout: Receiver<String>,
    lines: Vec<String>,
    stderr: Arc<Mutex<String>>,
    pids: Vec<(String, u32)>,
}

impl Demo {
    fn start(env: &[(&str, String)]) -> Demo {
        let bin_dir = bin_dir();
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/demo"))
            .arg("--serve")
            .current_dir(std::env::temp_dir())
            .env("SHEEPDOG_BIN_DIR", &bin_dir)
            .env("DEMO_RATE", "20")
            .env_remove("ES_INDEX_PREFIX")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run scripts/demo --serve");
        let (tx, stdout) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Demo {
            child,
            stdout,
            lines: Vec::new(),
            stderr,
            pids: Vec::new(),
        }
    }

    /// Reads stdout until a line contains `marker`; panics with everything seen after `timeout`.
    fn read_until(&mut self, marker: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(marker);
                    self.lines.push(line);
                    if done {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {marker:?} within {timeout:?}\n{}", self.output())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "scripts/demo closed stdout before {marker:?}\n{}",
                        self.output()
                    )
                }
            }
        }
    }

    fn output(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            self.lines.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// The printed curl lines, in order.
    fn curls(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| l.starts_with("  curl "))
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// `<name> pid <n>` as printed.
    fn pid(&self, name: &str) -> u32 {
        let key = format!("{name} pid ");
        let line = self
            .lines
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key:?} line\n{}", self.output()));
        line.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_for(timeout, "scripts/demo to exit after SIGINT", || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            for pid in descendants(self.child.id()) {
                signal(pid, "KILL");
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where cargo put the sheepdog binary under test; the load generator (another workspace
/// member, which `cargo test` at the root builds too) is built there first when missing.
fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_sheepdog"))
        .parent()
        .unwrap()
        .to_path_buf();
    if !dir.join("sheepdog-loadgen").exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "sheepdog-loadgen"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build -p sheepdog-loadgen");
        assert!(status.success(), "cargo build -p sheepdog-loadgen failed");
    }
    dir
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Runs one printed command line in a shell, as a user pasting it would; returns its stdout.
fn run_printed(line: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(line).output().unwrap();
    assert!(
        out.status.success(),
        "`{line}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn alive(pid: u32) -> bool {
    // A zombie has released everything but its process-table entry: count it as gone only
    // once it is reaped, so an unwaited child fails the test too.
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Every process below `pid`, from the parent links in /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        let ppid: u32 = after.split_whitespace().nth(1).unwrap().parse().unwrap();
        parent_of.push((child, ppid));
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

fn check_printed_addresses(demo: &Demo, addr: &dyn Fn(&str) -> String) {
    let api = addr("API_ADDR");
    for want in [
        format!("status page   http://{api}/"),
        format!("health        http://{api}/health"),
        format!("metrics       http://{api}/metrics"),
    ] {
        assert!(
            demo.lines.iter().any(|l| l.trim() == want),
            "missing {want:?}\n{}",
            demo.output()
        );
    }
    let c = client();
    let health = c.get(format!("http://{api}/health")).send().unwrap();
    assert_eq!(health.status(), 200, "{}", demo.output());
    let metrics = c
        .get(format!("http://{api}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("sheepdog_"), "{metrics}");
    let http = addr("HTTP_ADDR");
    assert!(demo
        .lines
        .iter()
        .any(|l| l.contains(&format!("http://{http}/"))));
}

/// The "find it" query returns the posted event, enriched by the shipped filter chain.
fn check_own_event(find: &str, demo: &Demo) {
    let hit = wait_for(
        Duration::from_secs(60),
        "the posted event in search",
        || {
            let reply = json(&run_printed(find));
            reply["hits"]["hits"].get(0).map(|h| h["_source"].clone())
        },
    );
    assert_eq!(hit["request_id"], "my-first-request", "{hit}");
    assert_eq!(hit["model"], "gpt-4.1", "{hit}");
    // 12500 tokens at the shipped gpt-4.1 price of 8 USD per million.
    assert_eq!(hit["cost_usd"].as_f64(), Some(0.1), "{hit}");
    assert_eq!(hit["latency_bucket"], "fast", "{hit}");
    assert_eq!(hit["status_category"], "success", "{hit}");
    let tags = hit["tags"].as_array().cloned().unwrap_or_default();
    assert!(tags.contains(&Value::from("direct-upload")), "{hit}");
    assert!(hit["@timestamp"].is_string(), "{hit}\n{}", demo.output());
}

/// Cost by model covers the posted event and the sample stream's models, with costs.
fn check_cost_by_model(query: &str) {
    let buckets = wait_for(
        Duration::from_secs(60),
        "sample events of three models",
        || {
            let reply = json(&run_printed(query));
            let buckets = reply["aggregations"]["by_model"]["buckets"]
                .as_array()?
                .clone();
            (buckets.len() >= 3).then_some(buckets)
        },
    );
    for b in &buckets {
        assert!(b["total_cost"]["value"].as_f64().unwrap() > 0.0, "{b}");
        assert!(b["request_count"]["value"].as_f64().unwrap() >= 1.0, "{b}");
        assert!(b["p99_latency"]["values"].is_object(), "{b}");
    }
    let gpt = buckets
        .iter()
        .find(|b| b["key"] == "gpt-4.1")
        .expect("a gpt-4.1 bucket");
    assert!(gpt["total_cost"]["value"].as_f64().unwrap() >= 0.1, "{gpt}");
}

#[test]
fn serve_prints_working_commands_and_stops_everything_on_sigint() {
    let names = ["OSMEM_ADDR", "HTTP_ADDR", "BEATS_ADDR", "API_ADDR"];
    let env: Vec<(&str, String)> = names
        .iter()
        .map(|n| (*n, format!("127.0.0.1:{}", free_port())))
        .collect();
    let addr = |name: &str| env.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let mut demo = Demo::start(&env);
    demo.read_until("Press Ctrl-C", Duration::from_secs(180));
    for name in ["osmem-server", "sheepdog", "sample events"] {
        let pid = demo.pid(name);
        demo.pids.push((name.to_string(), pid));
        assert!(alive(pid), "{name} pid {pid} is not running");
    }
    assert!(demo
        .lines
        .iter()
        .any(|l| l.contains(&format!("http://{}", addr("OSMEM_ADDR")))));
    check_printed_addresses(&demo, &addr);

    let curls = demo.curls();
    assert_eq!(
        curls.len(),
        3,
        "post, find, cost by model\n{}",
        demo.output()
    );
    assert_eq!(run_printed(&curls[0]).trim(), "ok");
    check_own_event(&curls[1], &demo);
    check_cost_by_model(&curls[2]);

    // The printed pids are the script's own children, not wrappers around them.
    let below = descendants(demo.child.id());
    for (name, pid) in &demo.pids {
        assert!(
            descendants(*pid).is_empty(),
            "{name} pid {pid} has children: {:?}",
            descendants(*pid)
        );
        assert!(below.contains(pid), "{name} pid {pid} is not the script's");
    }

    signal(demo.child.id(), "INT");
    let status = demo.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{}", demo.output());
    demo.read_until("demo: stopped", Duration::from_secs(5));
    let pids = demo.pids.clone();
    for (name, pid) in pids {
        wait_for(
            Duration::from_secs(10),
            &format!("{name} pid {pid} to go"),
            || (!alive(pid)).then_some(()),
        );
    }
    // Nothing the script started outlives it (the sample sender, a pending `sleep`, ...).
    for pid in below {
        wait_for(
            Duration::from_secs(10),
            &format!("pid {pid} started by the script to go"),
            || (!alive(pid)).then_some(()),
        );
    }
    for name in ["HTTP_ADDR", "API_ADDR", "OSMEM_ADDR"] {
        assert!(
            std::net::TcpListener::bind(addr(name)).is_ok(),
            "{name} {} is still taken",
            addr(name)
        );
    }
}

#[test]
fn serve_refuses_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let env = [("HTTP_ADDR", taken.local_addr().unwrap().to_string())];
    let mut demo = Demo::start(&env);
    let status = demo.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1));
    // The reader thread may still hold the last bytes the script wrote before it exited.
    let err = wait_for(Duration::from_secs(5), "the refusal on stderr", || {
        let err = demo.stderr.lock().unwrap().clone();
        err.contains("is in use").then_some(err)
    });
    let want = format!("demo: HTTP_ADDR={} is in use", env[0].1);
    assert!(err.contains(&want), "{err}");
}
