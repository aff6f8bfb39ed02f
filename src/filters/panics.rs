//! A filter stage that panics on an event loses that event to nothing: the stage catches the
//! panic ([`super::FilterStage::apply_batch`]), takes the event out of its batch as a
//! [`Panicked`], and the worker appends it to the filter dead-letter file
//! (`<data_dir>/filter_dead_letter.ndjson`) with the stage id and the panic message.
//!
//! The process's panic hook ([`install_hook`]) stays quiet about panics a stage catches (the
//! stage logs them once, with its id) and hands every other panic to the default hook, so a
//! panic anywhere else is printed as before.

use crate::event::{format_timestamp_ms, now_ms, Event};
use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// An event a stage panicked on, taken out of its batch as the stage left it.
pub struct Panicked {
    pub stage: String,
    /// The panic message, with `at file:line` when the hook saw where.
    pub message: String,
    pub event: Event,
}

thread_local! {
    /// Whether a filter stage on this thread is catching panics (the hook then stays quiet).
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// The message and location of the last panic the hook kept quiet about.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Marks this thread as catching panics for a filter stage until dropped.
pub(super) struct Catching {
    before: bool,
}

impl Catching {
    pub(super) fn start() -> Catching {
        Catching {
            before: CATCHING.with(|c| c.replace(true)),
        }
    }
}

impl Drop for Catching {
    fn drop(&mut self) {
        CATCHING.with(|c| c.set(self.before));
    }
}

/// Installs a panic hook that records, instead of printing, the panics a filter stage
/// catches, and passes every other panic to the hook that was there before.
pub fn install_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !CATCHING.with(Cell::get) {
            return previous(info);
        }
        let mut text = payload_text(info.payload());
        if let Some(at) = info.location() {
            text = format!("{text} at {}:{}", at.file(), at.line());
        }
        LAST.with(|l| *l.borrow_mut() = Some(text));
    }));
}

/// The message of a caught panic: what the hook recorded (with its location) or, without
/// the hook, the payload's text.
pub(super) fn message(payload: &(dyn std::any::Any + Send)) -> String {
    LAST.with(|l| l.borrow_mut().take())
        .unwrap_or_else(|| payload_text(payload))
}

/// A panic payload as text: the `&str` or `String` that `panic!` carries.
fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Appends panicked events, one JSON line each, to a file opened on first use (a pipeline
/// whose stages never panic creates no file). The line has the shape of the Elasticsearch
/// dead-letter file's, with the stage instead of index and status:
/// `{"@timestamp":…,"stage":…,"error":{"type":"panic","reason":…},"document":{…}}`.
pub struct DeadLetters {
    path: PathBuf,
    // Appends come from the filter workers and happen only when a stage panicked; a std mutex
    // around the file, never held across an await, keeps lines whole.
    file: Mutex<Option<File>>,
}

impl DeadLetters {
    /// `<data_dir>/filter_dead_letter.ndjson`.
    pub fn in_dir(data_dir: &Path) -> DeadLetters {
        DeadLetters {
            path: data_dir.join("filter_dead_letter.ndjson"),
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `panicked` in one write; when that fails, logs each event in full instead, so
    /// it is still not lost.
    pub fn write(&self, panicked: &[Panicked]) {
        let now = now_ms();
        let mut buf = Vec::with_capacity(panicked.len() * 1024);
        for p in panicked {
            encode_line(p, now, &mut buf);
        }
        if let Err(e) = self.append(&buf) {
            tracing::error!(path = %self.path.display(), error = %e, events = %String::from_utf8_lossy(&buf), "cannot write the filter dead-letter file; the events are logged here instead");
        }
    }

    fn append(&self, buf: &[u8]) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let file = guard.as_mut().expect("opened above");
        file.write_all(buf)?;
        file.flush()
    }
}

/// One dead-letter line for `p`, written at `now_ms`.
pub fn encode_line(p: &Panicked, now_ms: i64, out: &mut Vec<u8>) {
    use crate::json::write::write_str;
    out.extend_from_slice(b"{\"@timestamp\":");
    write_str(&format_timestamp_ms(now_ms), out);
    out.extend_from_slice(b",\"stage\":");
    write_str(&p.stage, out);
    out.extend_from_slice(b",\"error\":{\"type\":\"panic\",\"reason\":");
    write_str(&p.message, out);
    out.extend_from_slice(b"},\"document\":");
    p.event.fields().write_json(out);
    out.extend_from_slice(b"}\n");
}
