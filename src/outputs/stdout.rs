//! `stdout`: writes each event as one JSON line to standard output (for debugging a pipeline,
//! like Logstash's `stdout { codec => json_lines }`).

use super::{BoxFuture, Output, Started};
use crate::config::problem::Problem;
use crate::event::Event;
use crate::BuildContext;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Also print `@metadata` under the key `@metadata`. Default false.
    #[serde(default)]
    pub metadata: bool,
}

struct StdoutOutput {
    metadata: bool,
    tx: mpsc::Sender<Vec<u8>>,
}

impl Config {
    pub fn validate(&self, _ctx: &BuildContext) -> Vec<Problem> {
        Vec::new()
    }

    pub fn start(&self, _id: &str, ctx: &BuildContext) -> anyhow::Result<Started> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        let _ = ctx;
        let task = tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            while let Some(buf) = rx.recv().await {
                if out.write_all(&buf).await.is_err() {
                    break;
                }
                let _ = out.flush().await;
            }
        });
        Ok(Started {
            output: Box::new(StdoutOutput {
                metadata: self.metadata,
                tx,
            }),
            task,
        })
    }
}

impl Output for StdoutOutput {
    fn submit<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut buf = Vec::with_capacity(events.len() * 256);
            for e in events {
                if self.metadata && !e.metadata().is_empty() {
                    let mut doc = e.fields().clone();
                    doc.insert(
                        crate::event::METADATA,
                        serde_json::Value::from(e.metadata().clone()),
                    );
                    doc.write_json(&mut buf);
                } else {
                    e.fields().write_json(&mut buf);
                }
                buf.push(b'\n');
            }
            let _ = self.tx.send(buf).await;
        })
    }
}
