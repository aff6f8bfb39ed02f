//! `file`: appends each event as one JSON line to a file (like Logstash's `file` output with
//! the json_lines codec). Writes are batched per submit and flushed once the queue is empty.

use super::{BoxFuture, Output, Started};
use crate::config::problem::Problem;
use crate::event::Event;
use crate::BuildContext;
use anyhow::Context;
use serde::Deserialize;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// File to append to; its directory is created when missing.
    pub path: PathBuf,
}

struct FileOutput {
    tx: mpsc::Sender<Vec<u8>>,
}

impl Config {
    pub fn validate(&self, _ctx: &BuildContext) -> Vec<Problem> {
        if self.path.as_os_str().is_empty() {
            return vec![Problem::at("path", "path is empty").hint("path = \"data/events.ndjson\"")];
        }
        Vec::new()
    }

    pub async fn start(&self, id: &str, _ctx: &BuildContext) -> anyhow::Result<Started> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.with_context(|| {
                format!("output `{id}`: cannot create directory {}", dir.display())
            })?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .with_context(|| format!("output `{id}`: cannot open {}", self.path.display()))?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        let path = self.path.clone();
        let task = tokio::spawn(async move {
            while let Some(buf) = rx.recv().await {
                if let Err(e) = file.write_all(&buf).await {
                    tracing::error!(path = %path.display(), error = %e, "file output cannot write");
                }
                if rx.is_empty() {
                    let _ = file.flush().await;
                }
            }
            let _ = file.flush().await;
        });
        Ok(Started {
            output: Box::new(FileOutput { tx }),
            task,
        })
    }
}

impl Output for FileOutput {
    fn submit<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut buf = Vec::with_capacity(events.len() * 256);
            for e in events {
                e.fields().write_json(&mut buf);
                buf.push(b'\n');
            }
            let _ = self.tx.send(buf).await;
        })
    }
}
