//! `sheepdog tap`: events from stdin through the filter chain, each printed as one JSON line
//! with `@metadata` (plus `[@metadata][index]` and `[@metadata][outputs]`). Input is read and
//! printed in batches, so it may be larger than memory; nothing is sent and no port is bound.

use super::split::Splitter;
use super::Chain;
use crate::event::{now_ms, Event};
use std::io::{self, Read, Write};
use std::path::Path;

/// Events run through the chain at once.
pub const BATCH: usize = 1024;

/// Runs `tap` on the process's stdin and stdout; returns the exit code: 0 when the input was
/// read to its end, 1 when reading or writing failed, 2 when the pipeline file is invalid.
pub fn command(config: &Path) -> u8 {
    let (chain, warnings) = match Chain::load(config, &crate::config::process_env) {
        Ok(v) => v,
        Err(text) => {
            eprintln!("{text}");
            return 2;
        }
    };
    for w in &warnings {
        eprintln!("{w}");
    }
    let stdout = io::stdout().lock();
    match run(&chain, io::stdin().lock(), io::BufWriter::new(stdout)) {
        Ok(_) => 0,
        // The reader went away (`| head`): what it wanted was printed.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("sheepdog tap: {e}");
            1
        }
    }
}

/// Reads every document from `input`, runs the chain over batches of up to [`BATCH`] events
/// and writes each resulting event as a JSON line to `out`. A batch is also cut when no more
/// input is buffered, so events from a slow producer are printed without waiting for the
/// batch to fill. Returns how many events were written.
pub fn run(chain: &Chain, input: impl Read, mut out: impl Write) -> io::Result<u64> {
    let mut splitter = Splitter::new(input);
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let mut written = 0u64;
    let mut failures = 0u64;
    let mut line = Vec::with_capacity(1024);
    loop {
        let received = now_ms();
        let end = loop {
            match splitter.next_document()? {
                Some(doc) => batch.push(crate::inputs::http::parse_object(
                    doc,
                    received,
                    &mut failures,
                )),
                None => break true,
            }
            if batch.len() >= BATCH || !splitter.has_buffered() {
                break false;
            }
        };
        chain.apply(&mut batch);
        for event in batch.drain(..) {
            line.clear();
            super::event_json(&event, &chain.route(&event)).write_json(&mut line);
            line.push(b'\n');
            out.write_all(&line)?;
            written += 1;
        }
        out.flush()?;
        if end {
            return Ok(written);
        }
    }
}
