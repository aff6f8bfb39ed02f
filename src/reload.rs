//! SIGHUP: the running daemon re-reads its pipeline file.
//!
//! A file that fails `check` is refused: each problem is logged as `file:line:column`, `/health`
//! says so, and the running pipeline goes on untouched. A valid file takes over:
//! - its filter chain (prices, conditions, enrichments) between two batches: the workers pick
//!   the new chain up for their next batch, so every event passes one whole chain, old or new,
//!   once;
//! - changed outputs and alert rules, and changed or new inputs, as [`crate::live`] says (no
//!   event lost or doubled; listeners on an unchanged address never close);
//! - `pipeline.memory_limit` at once.
//!
//! The API and the other `[pipeline]` settings (workers, queue) apply at the next restart; the
//! log names each such section the file changed.
//!
//! `/health` has a `pipeline` component whose reason names the file and the SHA-256 of the
//! version running (`sha256sum` prints the same digest).

use crate::filters::FilterStage;
use crate::health::{HealthHandle, Status};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// The filter chain the workers run, replaced whole by a reload.
pub type Chain = Arc<Vec<FilterStage>>;

/// The first 12 hex digits of the SHA-256 of `text`.
pub fn version_of(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The top-level sections of a pipeline file a reload does not apply, that differ between
/// `old` and `new` (both TOML texts, before `${VAR}` substitution: the process's environment
/// does not change while it runs).
pub fn sections_needing_restart(old: &str, new: &str) -> Vec<String> {
    let parse = |text: &str| text.parse::<toml::Table>().unwrap_or_default();
    let (old, new) = (parse(old), parse(new));
    let mut changed = Vec::new();
    for key in ["api"] {
        if old.get(key) != new.get(key) {
            changed.push(key.to_string());
        }
    }
    let settings = |t: &toml::Table| -> toml::Table {
        let mut s = t
            .get("pipeline")
            .and_then(|p| p.as_table())
            .cloned()
            .unwrap_or_default();
        s.remove("memory_limit");
        s
    };
    if settings(&old) != settings(&new) {
        changed.push("pipeline (except memory_limit)".to_string());
    }
    changed
}

/// Reloads the pipeline file on request and hands a valid file's filter chain to the workers.
pub struct Reloader {
    path: PathBuf,
    text: String,
    version: String,
    chain: watch::Sender<Chain>,
    ctx: crate::BuildContext,
    health: HealthHandle,
}

impl Reloader {
    /// `text` is the file as the running pipeline was built from it.
    pub fn new(
        path: PathBuf,
        text: String,
        chain: watch::Sender<Chain>,
        ctx: &crate::BuildContext,
    ) -> Self {
        let version = version_of(&text);
        let health = ctx.health.register("pipeline");
        health.set(Status::Ok, running(&path, &version));
        tracing::info!(file = %path.display(), version, "pipeline file running");
        Reloader {
            path,
            text,
            version,
            chain,
            ctx: ctx.clone(),
            health,
        }
    }

    /// Re-reads the file: takes over a valid one's filter chain, refuses an invalid one.
    pub(crate) async fn reload(&mut self, live: &mut crate::live::Live) {
        let path = self.path.clone();
        tracing::info!(file = %path.display(), "SIGHUP: reloading the pipeline file");
        // Building the chain may walk a GeoIP database for seconds: off the async threads.
        // One read: the version named is the text that was parsed.
        let loaded = tokio::task::spawn_blocking(move || {
            let source = crate::config::Source::read(&path).map_err(|e| format!("{e:#}"))?;
            crate::load_source(&source, &crate::config::process_env, crate::Verify::Now)
                .map(|loaded| (source.text, loaded))
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("reload failed: {e}")));
        match loaded {
            Ok((text, loaded)) => self.take_over(text, loaded, live).await,
            Err(problems) => self.refuse(&problems),
        }
    }

    async fn take_over(
        &mut self,
        text: String,
        loaded: crate::Loaded,
        live: &mut crate::live::Live,
    ) {
        let version = version_of(&text);
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        for section in sections_needing_restart(&self.text, &text) {
            tracing::warn!(section, version, "the reloaded file changes this section; it applies at the next restart, the running one goes on");
        }
        self.ctx
            .budget
            .set_limit(loaded.config.pipeline.memory_limit);
        live.reload(&self.text, &text, &loaded.config, &self.ctx)
            .await;
        let stages = loaded.stages.len();
        // Workers take the new chain for their next batch; the old one is dropped with the
        // last batch that used it.
        self.chain.send_replace(Arc::new(loaded.stages));
        tracing::info!(
            file = %self.path.display(),
            version,
            previous = self.version,
            filters = stages,
            "pipeline reloaded: the new filter chain runs from the next batch"
        );
        self.text = text;
        self.version = version;
        self.health
            .set(Status::Ok, running(&self.path, &self.version));
    }

    fn refuse(&self, problems: &str) {
        for problem in problems.lines() {
            tracing::error!(problem, "reload refused: the pipeline file has errors");
        }
        tracing::error!(
            file = %self.path.display(),
            version = self.version,
            "reload refused; the running pipeline goes on unchanged"
        );
        let first = problems.lines().next().unwrap_or("invalid file");
        self.health.set(
            Status::Degraded,
            format!(
                "{}; reload refused: {first}",
                running(&self.path, &self.version)
            ),
        );
    }
}

fn running(path: &std::path::Path, version: &str) -> String {
    format!("running {} version {version}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_the_start_of_the_sha256() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(version_of("abc"), "ba7816bf8f01");
    }

    #[test]
    fn only_sections_a_reload_does_not_apply_are_named() {
        let base = r#"
[pipeline]
workers = 2
memory_limit = "64MiB"
[[inputs]]
type = "http"
address = "127.0.0.1:1"
[[filters]]
type = "cost"
[[outputs]]
type = "stdout"
"#;
        let filters_and_budget = base
            .replace("type = \"cost\"", "type = \"cost\"\nid = \"c2\"")
            .replace("64MiB", "128MiB");
        assert!(sections_needing_restart(base, &filters_and_budget).is_empty());
        let more = base
            .replace("127.0.0.1:1", "127.0.0.1:2")
            .replace("workers = 2", "workers = 3")
            .replace("\"stdout\"", "\"file\"");
        assert_eq!(
            sections_needing_restart(base, &more),
            ["pipeline (except memory_limit)"],
            "inputs and outputs are reloaded"
        );
    }
}
