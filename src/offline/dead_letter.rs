//! `sheepdog dead-letter list|replay`: the Elasticsearch outputs' dead-letter stores, grouped
//! by reason or sent to the cluster again. Works beside a running daemon (the store's lock
//! keeps both sides' lines whole) or with it stopped.

use crate::outputs::OutputConfig;
use crate::BuildContext;
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// What to do with the stores.
pub enum Action {
    /// Print each store's documents grouped by reason.
    List,
    /// Send the documents whose reason contains `reason` (all when `None`) again.
    Replay { reason: Option<String> },
}

/// Runs the command on every Elasticsearch output of `config` (or only `output`); returns the
/// exit code: 0 done, 1 a store could not be read or a replay left documents it could not
/// send, 2 an invalid pipeline file or an unknown output.
pub fn command(config: &Path, output: Option<&str>, action: Action) -> u8 {
    let loaded = match crate::load(
        config,
        &crate::config::process_env,
        crate::Verify::Background,
    ) {
        Ok(l) => l,
        Err(text) => {
            eprintln!("{text}");
            return 2;
        }
    };
    let ctx = BuildContext::new(
        loaded.config.pipeline.data_dir.clone(),
        CancellationToken::new(),
    );
    let outputs: Vec<_> = loaded
        .config
        .outputs
        .iter()
        .filter_map(|stage| match &stage.config {
            OutputConfig::Elasticsearch(c) => Some((stage.id.as_str(), c)),
            _ => None,
        })
        .filter(|(id, _)| output.is_none_or(|o| o == *id))
        .collect();
    if outputs.is_empty() {
        eprintln!(
            "sheepdog dead-letter: {} has no Elasticsearch output{}",
            config.display(),
            output
                .map(|o| format!(" with id `{o}`"))
                .unwrap_or_default()
        );
        return 2;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sheepdog dead-letter: cannot start the runtime: {e}");
            return 1;
        }
    };
    let mut code = 0;
    for (id, output) in outputs {
        let result = runtime.block_on(async {
            let store = output.dead_letter_store(&ctx)?;
            run_one(id, &store, &action).await
        });
        match result {
            Ok(c) => code = code.max(c),
            Err(e) => {
                eprintln!("sheepdog dead-letter: output `{id}`: {e:#}");
                code = 1;
            }
        }
    }
    code
}

async fn run_one(
    id: &str,
    store: &crate::outputs::elasticsearch::replay::Store,
    action: &Action,
) -> anyhow::Result<u8> {
    let path = store.path.display();
    match action {
        Action::List => {
            let groups = store.list()?;
            print!(
                "output {id}: {path}: {}",
                crate::outputs::elasticsearch::replay::format_groups(&groups)
            );
            Ok(0)
        }
        Action::Replay { reason } => {
            let s = store.replay(reason.as_deref()).await?;
            println!(
                "output {id}: {path}: replayed {}: indexed {}, refused again {}, not taken now {}; {} not selected, left in the store",
                s.replayed, s.indexed, s.refused, s.deferred, s.skipped
            );
            Ok(if s.deferred > 0 { 1 } else { 0 })
        }
    }
}
