//! The persisted queue's one writer thread. Appends arrive on a channel; the thread writes
//! every append waiting at once (group commit), syncs them as `queue_sync` says, then answers
//! each with the record's acknowledgement. Between appends it records the watermark and
//! deletes segments wholly before it.

use super::segments::{self, Segment};
use super::{Shared, Sync};
use crate::ack::Hold;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request to the writer.
pub enum Op {
    /// Write a finished record (its room is reserved); answer with its acknowledgement.
    Append {
        record: Vec<u8>,
        events: u32,
        reply: tokio::sync::oneshot::Sender<Result<Hold, String>>,
    },
    /// Sync, record the watermark and stop.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// Most bytes written before the answers of one group go out.
const GROUP_BYTES: usize = 8 << 20;
/// How often the idle writer records the watermark.
const TICK: Duration = Duration::from_millis(100);

pub struct Writer {
    shared: Arc<Shared>,
    segments: Vec<Segment>,
    file: File,
    file_start: u64,
    file_len: u64,
    last_sync: Instant,
    unsynced: bool,
    /// With an interval: syncs run on their own thread, so appends never wait behind one.
    background: Option<Background>,
    /// The watermark and the count of records confirmed beyond it, as last recorded.
    checkpointed: (u64, usize),
}

impl Writer {
    /// A writer appending to a new segment at the log's head.
    pub fn open(shared: Arc<Shared>, head: u64) -> std::io::Result<Writer> {
        let segments = segments::list(&shared.dir)?;
        let checkpointed = (shared.ledger().watermark(), 0);
        let file = new_segment(&shared.dir, head)?;
        let background = match shared.sync {
            Sync::Interval(_) => Some(Background::start(shared.clone())?),
            Sync::Always => None,
        };
        let mut w = Writer {
            shared,
            segments,
            file,
            file_start: head,
            file_len: 0,
            last_sync: Instant::now(),
            unsynced: false,
            background,
            checkpointed,
        };
        w.note_segment(head);
        Ok(w)
    }

    fn note_segment(&mut self, start: u64) {
        if self.segments.last().map(|s| s.start) != Some(start) {
            self.segments.push(Segment {
                start,
                path: segments::segment_path(&self.shared.dir, start),
            });
        }
    }

    /// Serves appends until closed or every sender is gone.
    pub fn run(mut self, ops: Receiver<Op>) {
        let mut group = Vec::new();
        loop {
            match ops.recv_timeout(self.wait()) {
                Ok(op) => group.push(op),
                Err(RecvTimeoutError::Timeout) => {
                    self.idle();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let mut bytes = 0;
            while bytes < GROUP_BYTES {
                match ops.try_recv() {
                    Ok(op) => {
                        if let Op::Append { record, .. } = &op {
                            bytes += record.len();
                        }
                        group.push(op);
                    }
                    Err(_) => break,
                }
            }
            if self.serve(&mut group) {
                return;
            }
        }
        self.finish();
    }

    fn wait(&self) -> Duration {
        match self.shared.sync {
            Sync::Interval(d) if self.unsynced => d
                .saturating_sub(self.last_sync.elapsed())
                .min(TICK)
                .max(Duration::from_millis(1)),
            _ => TICK,
        }
    }

    /// Writes a group and answers it; true when it held a `Close`.
    fn serve(&mut self, group: &mut Vec<Op>) -> bool {
        let mut written = Vec::with_capacity(group.len());
        let mut close = None;
        for op in group.drain(..) {
            match op {
                Op::Append {
                    record,
                    events,
                    reply,
                } => {
                    let outcome = self.write(&record, events);
                    written.push((outcome, reply));
                }
                Op::Close(done) => close = Some(done),
            }
        }
        let synced = self.sync_for_answers();
        for (outcome, reply) in written {
            let answer = match (outcome, &synced) {
                (Ok(start), Ok(())) => Ok(self.shared.hold_for(start)),
                (Ok(start), Err(e)) => {
                    // Written but not known to be on disk: not acknowledged to the client;
                    // the record stays and is delivered (the client's resend is absorbed).
                    drop(self.shared.hold_for(start));
                    Err(e.clone())
                }
                (Err(e), _) => Err(e),
            };
            if let Err(Ok(unanswered)) = reply.send(answer) {
                // The input stopped waiting: its events are delivered from the record.
                drop(unanswered);
            }
        }
        self.idle();
        if let Some(done) = close {
            self.finish();
            let _ = done.send(());
            return true;
        }
        false
    }

    /// Writes one record at the head; its log offset.
    fn write(&mut self, record: &[u8], events: u32) -> Result<u64, String> {
        if self.file_len > 0 && self.file_len + record.len() as u64 > self.shared.segment_bytes {
            if let Err(e) = self.roll() {
                self.shared.ledger().unreserve(record.len() as u64);
                return Err(self.failed("start a new segment", e));
            }
        }
        if let Err(e) = self.file.write_all(record) {
            // Cut what part of the record was written, so the segment stays whole.
            let _ = self.file.set_len(self.file_len);
            self.shared.ledger().unreserve(record.len() as u64);
            return Err(self.failed("write", e));
        }
        self.file_len += record.len() as u64;
        self.unsynced = true;
        Ok(self.shared.ledger().written(record.len() as u64, events))
    }

    fn failed(&self, what: &str, e: std::io::Error) -> String {
        let msg = format!(
            "cannot {what} the persisted queue in {}: {e}",
            self.shared.dir.display()
        );
        tracing::error!(error = %msg, "persisted queue write failed; clients are refused until it succeeds");
        msg
    }

    /// Syncs when every answer waits for it (`queue_sync = "always"`).
    fn sync_for_answers(&mut self) -> Result<(), String> {
        if self.shared.sync == Sync::Always && self.unsynced {
            return self.sync().map_err(|e| self.failed("sync", e));
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        self.file.sync_data()?;
        self.shared
            .metrics
            .sync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn roll(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            if self.background.is_some() {
                self.sync_in_background();
            } else {
                self.sync()?;
            }
        }
        let start = self.file_start + self.file_len;
        self.file = new_segment(&self.shared.dir, start)?;
        self.file_start = start;
        self.file_len = 0;
        self.note_segment(start);
        Ok(())
    }

    /// Periodic work: the interval sync, the checkpoint, old segments.
    fn idle(&mut self) {
        if let Sync::Interval(d) = self.shared.sync {
            if self.unsynced && self.last_sync.elapsed() >= d {
                self.sync_in_background();
            }
        }
        let (watermark, confirmed) = {
            let ledger = self.shared.ledger();
            (ledger.watermark(), ledger.confirmed_beyond())
        };
        if (watermark, confirmed.len()) != self.checkpointed {
            match segments::write_checkpoint(&self.shared.dir, watermark, &confirmed) {
                Ok(()) => self.checkpointed = (watermark, confirmed.len()),
                Err(e) => {
                    self.failed("record the checkpoint of", e);
                }
            }
            self.delete_before(watermark);
        }
        self.shared.metrics.publish(&self.shared.ledger());
    }

    /// Deletes segments that end at or before `watermark` (never the one being written).
    fn delete_before(&mut self, watermark: u64) {
        while self.segments.len() > 1 && self.segments[1].start <= watermark {
            let old = self.segments.remove(0);
            if let Err(e) = std::fs::remove_file(&old.path) {
                tracing::warn!(segment = %old.path.display(), error = %e, "cannot delete a delivered queue segment");
            }
        }
    }

    fn finish(&mut self) {
        if self.unsynced {
            if let Err(e) = self.sync() {
                self.failed("sync", e);
            }
        }
        self.idle();
    }
}

impl Writer {
    /// Hands the segment to the sync thread (unless a sync is still running: the next tick
    /// tries again).
    fn sync_in_background(&mut self) {
        let Some(bg) = &self.background else { return };
        if bg.busy.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let handed = match self.file.try_clone() {
            Ok(f) => bg.files.send(f).is_ok(),
            Err(_) => false,
        };
        if handed {
            self.unsynced = false;
            self.last_sync = Instant::now();
        } else {
            bg.busy.store(false, std::sync::atomic::Ordering::Release);
            if let Err(e) = self.sync() {
                self.failed("sync", e);
            }
        }
    }
}

/// The thread that runs interval syncs.
struct Background {
    files: std::sync::mpsc::Sender<File>,
    busy: Arc<std::sync::atomic::AtomicBool>,
}

impl Background {
    fn start(shared: Arc<Shared>) -> std::io::Result<Background> {
        let (files, rx) = std::sync::mpsc::channel::<File>();
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = busy.clone();
        std::thread::Builder::new()
            .name("sheepdog-queue-sync".into())
            .spawn(move || {
                for file in rx {
                    let started = Instant::now();
                    match file.sync_data() {
                        Ok(()) => shared
                            .metrics
                            .sync_seconds
                            .observe(started.elapsed().as_secs_f64()),
                        Err(e) => tracing::error!(dir = %shared.dir.display(), error = %e, "cannot sync the persisted queue"),
                    }
                    flag.store(false, std::sync::atomic::Ordering::Release);
                }
            })?;
        Ok(Background { files, busy })
    }
}

fn new_segment(dir: &Path, start: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segments::segment_path(dir, start))?;
    // The new name must survive a machine crash too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}
