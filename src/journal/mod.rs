//! The persisted queue (`[pipeline] queue = "persisted"`): a write-ahead log under
//! `DATA_DIR/queue/` in front of the in-memory queue. An input writes the documents it is
//! about to queue as one record (the bytes it received, no re-serialisation) and answers its
//! client (HTTP 200, Beats ACK) only once the record is written, and synced as `queue_sync`
//! says. The events then travel in memory as before, with the record's [`Hold`]; the record
//! stays until every output that must confirm its events has (Elasticsearch: indexed or
//! dead-lettered). At start-up, every record not yet confirmed is replayed into the pipeline
//! before the inputs accept anything; a record whose delivery failed at run time (an output
//! stopped, a client went away between the write and the queue) is read back and delivered
//! again.
//!
//! ## Why a segment log of our own
//!
//! The access pattern is a FIFO: appends at the head, one pass over the unconfirmed tail at
//! start-up, whole files dropped once passed. An embedded key-value store (sled, redb,
//! RocksDB) gives ordered keys, point reads and deletes we do not need, and pays for them: a
//! copy-on-write B-tree writes each record again into its pages and rewrites pages on
//! delete, and every commit that must be durable syncs the tree's metadata too; an LSM store
//! adds compaction threads and write amplification that compete with the filter workers on a
//! 2-core machine. The log writes each byte once, with one `write` per group of records and
//! (with `queue_sync = "always"`) one `fdatasync` per group. Crash behaviour is simple to
//! state and test: records are checksummed (CRC-32), a write cut short by a crash is found at
//! the end of the last segment, logged with its byte count and cut off; everything before it
//! is replayed. Measured with `tools/store-probe` (400 KB records, a FIFO's appends and
//! deletes): without a sync per record the log wrote 2,770 MB/s and redb (a transaction per
//! record) 278 MB/s; and only a durable redb commit (two syncs) survives a process crash, where
//! the log's `write` into the kernel does. With a sync per record the disk sets both paces.
//! Details in BENCHMARKS.md ("Persisted queue").
//!
//! ## What each `queue_sync` survives
//!
//! - `"always"`: answers wait for `fdatasync`: an acknowledged event survives a process
//!   crash and a machine crash or power cut.
//! - an interval (`"1s"`, the default): answers wait for the `write` into the kernel, which
//!   survives a process crash (`kill -9`, OOM kill); a machine crash can lose what was
//!   written since the last sync, at most the interval.
//!
//! `queue_max_bytes` bounds the log from the oldest unconfirmed record to the head; when it
//! is reached inputs wait (HTTP: 429 after `queue_wait`; Beats: ACK withheld, keepalives).

mod ledger;
mod record;
mod segments;
mod writer;

pub use record::{DocKind, RecordBuilder, DOC_OVERHEAD};

use crate::ack::Hold;
use crate::budget::{MemoryBudget, Use};
use crate::queue::{QueueError, QueueSender};
use ledger::Ledger;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// When written records are synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Before every answer (group commit).
    Always,
    /// At most this long after a write.
    Interval(Duration),
}

impl Sync {
    /// `"always"` or a duration such as `"1s"` or `"200ms"`.
    pub fn parse(text: &str) -> Result<Sync, String> {
        if text.trim() == "always" {
            return Ok(Sync::Always);
        }
        match crate::config::de::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(Sync::Interval(d)),
            Ok(_) => Err("use \"always\" instead of a zero interval".into()),
            Err(e) => Err(format!(
                "`{text}` is neither \"always\" nor a duration ({e})"
            )),
        }
    }
}

/// Why a record was not written.
#[derive(Debug)]
pub enum JournalError {
    /// No room within the wait allowed.
    Full,
    /// The queue is closing.
    Closed,
    /// The disk refused the write or the sync.
    Io(String),
}

/// How a persisted queue is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub sync: Sync,
}

/// A segment holds at most this many bytes (a record larger than it gets one of its own).
const SEGMENT_BYTES: u64 = 64 << 20;
/// Pause before a record whose delivery failed is delivered again.
const REDO_PAUSE: Duration = Duration::from_millis(500);

struct Metrics {
    append_seconds: crate::metrics::Histogram,
    bytes: crate::metrics::Gauge,
    records: crate::metrics::Gauge,
    sync_seconds: crate::metrics::Histogram,
    replayed: crate::metrics::Counter,
}

impl Metrics {
    fn register(r: &crate::metrics::Registry) -> Metrics {
        Metrics {
            append_seconds: r.histogram(
                "sheepdog_persisted_queue_append_seconds",
                "Time from handing a record to the queue's writer to its answer (written, and synced with queue_sync = always)",
                &[],
                &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0],
            ),
            bytes: r.gauge(
                "sheepdog_persisted_queue_bytes",
                "Bytes of the persisted queue from the oldest unconfirmed record to the head",
                &[],
            ),
            records: r.gauge(
                "sheepdog_persisted_queue_records",
                "Records in the persisted queue not yet confirmed by the outputs",
                &[],
            ),
            sync_seconds: r.histogram(
                "sheepdog_persisted_queue_sync_seconds",
                "Time one fdatasync of the persisted queue took",
                &[],
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            ),
            replayed: r.counter(
                "sheepdog_persisted_queue_replayed_events_total",
                "Events read back from the persisted queue (at start-up or after a failed delivery)",
                &[],
            ),
        }
    }

    fn publish(&self, ledger: &Ledger) {
        self.bytes.set(ledger.used() as i64);
        self.records.set(ledger.unconfirmed().0 as i64);
    }
}

/// What the writer thread, the acknowledgements and the appenders share.
pub(crate) struct Shared {
    dir: PathBuf,
    sync: Sync,
    max_bytes: u64,
    segment_bytes: u64,
    ledger: Mutex<Ledger>,
    /// Woken when the watermark moves (room appeared).
    room: Notify,
    redo: tokio::sync::mpsc::UnboundedSender<u64>,
    metrics: Metrics,
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The acknowledgement of the record at `start`.
    fn hold_for(self: &Arc<Self>, start: u64) -> Hold {
        let shared = Arc::clone(self);
        Hold::new(move |delivered| shared.settle(start, delivered))
    }

    fn settle(&self, start: u64, delivered: bool) {
        if delivered {
            if self.ledger().confirm(start) {
                self.room.notify_waiters();
            }
        } else {
            // Delivered again from the record (after a restart if the pipeline is stopping).
            let _ = self.redo.send(start);
        }
    }
}

/// An open persisted queue.
pub struct Journal {
    shared: Arc<Shared>,
    ops: Mutex<Option<std::sync::mpsc::Sender<writer::Op>>>,
    /// Records found at start-up, delivered by [`Journal::replay`].
    found: Mutex<Vec<segments::Found>>,
    redo: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<u64>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: std::fs::File,
}

impl Journal {
    /// Opens (or creates) the queue in `settings.dir`: cuts a torn tail, finds the records
    /// to replay and starts the writer.
    pub fn open(
        settings: &Settings,
        metrics: &crate::metrics::Registry,
    ) -> Result<Journal, String> {
        let dir = &settings.dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the queue directory {}: {e}", dir.display()))?;
        let lock = segments::lock(dir)?;
        let checkpoint = segments::read_checkpoint(dir);
        let mut scan = segments::scan(dir, checkpoint.watermark)
            .map_err(|e| format!("cannot read the persisted queue in {}: {e}", dir.display()))?;
        log_scan(dir, &scan);
        let ledger = ledger_for(&scan, &checkpoint.confirmed);
        scan.records
            .retain(|f| !checkpoint.confirmed.contains(&f.start));
        let (redo_tx, redo_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            sync: settings.sync,
            max_bytes: settings.max_bytes,
            segment_bytes: SEGMENT_BYTES.min(settings.max_bytes.max(1 << 20)),
            ledger: Mutex::new(ledger),
            room: Notify::new(),
            redo: redo_tx,
            metrics: Metrics::register(metrics),
        });
        let w = writer::Writer::open(shared.clone(), scan.head)
            .map_err(|e| format!("cannot open a queue segment in {}: {e}", dir.display()))?;
        let (ops_tx, ops_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sheepdog-queue".into())
            .spawn(move || w.run(ops_rx))
            .map_err(|e| format!("cannot start the queue writer: {e}"))?;
        Ok(Journal {
            shared,
            ops: Mutex::new(Some(ops_tx)),
            found: Mutex::new(scan.records),
            redo: Mutex::new(Some(redo_rx)),
            thread: Mutex::new(Some(thread)),
            _lock: lock,
        })
    }

    /// Writes `record`, waiting up to `wait` for room (`None`: as long as it takes), and
    /// returns its acknowledgement once it is written and synced as `queue_sync` says.
    pub async fn append(
        &self,
        record: RecordBuilder,
        wait: Option<Duration>,
    ) -> Result<Hold, JournalError> {
        let events = record.docs();
        let record = record.finish();
        let len = record.len() as u64;
        self.reserve(len, wait).await?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let op = writer::Op::Append {
            record,
            events,
            reply,
        };
        let sent = match &*self.ops.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(ops) => ops.send(op).is_ok(),
            None => false,
        };
        if !sent {
            self.shared.ledger().unreserve(len);
            return Err(JournalError::Closed);
        }
        let started = std::time::Instant::now();
        let answer = answer.await;
        self.shared
            .metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(hold)) => Ok(hold),
            Ok(Err(e)) => Err(JournalError::Io(e)),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Promises `len` bytes of room, waiting for the watermark to move.
    async fn reserve(&self, len: u64, wait: Option<Duration>) -> Result<(), JournalError> {
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.ledger().try_reserve(len, self.shared.max_bytes) {
                return Ok(());
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return Err(JournalError::Full);
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Queues the events of every record found at start-up; returns how many. Ends early
    /// (the rest stays for the next start) when the pipeline stops.
    pub async fn replay(&self, queue: &QueueSender, budget: &MemoryBudget) -> u64 {
        let found = std::mem::take(&mut *self.found.lock().unwrap_or_else(|p| p.into_inner()));
        if found.is_empty() {
            return 0;
        }
        let bytes: u64 = found.iter().map(|f| f.len).sum();
        tracing::info!(
            records = found.len(),
            bytes,
            "replaying the persisted queue before the inputs start"
        );
        let mut events = 0;
        for f in found {
            match self.requeue(f.start, queue, budget).await {
                Ok(n) => events += n,
                Err(QueueError::Closed(_)) => break,
                Err(QueueError::Full(_)) => unreachable!("send waits for room"),
            }
        }
        tracing::info!(events, "persisted queue replayed");
        events
    }

    /// Reads the record at `start` back and queues its events with a new acknowledgement.
    async fn requeue(
        &self,
        start: u64,
        queue: &QueueSender,
        budget: &MemoryBudget,
    ) -> Result<u64, QueueError> {
        let decoded = segments::read_at(&self.shared.dir, start)
            .map_err(|e| e.to_string())
            .and_then(|bytes| record::decode(&bytes).map(|d| (bytes.len(), d)));
        let (len, decoded) = match decoded {
            Ok(d) => d,
            Err(e) => {
                // Checked at start-up or written by this process: only a disk fault gets here.
                tracing::error!(offset = start, error = %e, "cannot read a persisted queue record back; its events are not delivered");
                self.shared.settle(start, true);
                return Ok(0);
            }
        };
        let n = decoded.events.len() as u64;
        self.shared.ledger().set_events(start, n as u32);
        self.shared.metrics.replayed.add(n);
        let mut charge = budget.force(crate::budget::event_bytes(len), Use::Queue);
        let hold = self.shared.hold_for(start);
        queue
            .send_held(&decoded.source, decoded.events, &mut charge, Some(hold))
            .await?;
        Ok(n)
    }

    /// Delivers again, until `shutdown`, every record whose delivery failed.
    pub async fn redeliver(
        self: Arc<Self>,
        queue: QueueSender,
        budget: MemoryBudget,
        shutdown: CancellationToken,
    ) {
        let Some(mut failed) = self.redo.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        loop {
            let start = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = failed.recv() => match s { Some(s) => s, None => return },
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REDO_PAUSE) => {}
            }
            tracing::warn!(
                offset = start,
                "a persisted record's delivery failed; delivering it again"
            );
            if self.requeue(start, &queue, &budget).await.is_err() {
                return;
            }
        }
    }

    /// Syncs, records the watermark and stops the writer; logs what stays for the next start.
    pub async fn close(&self) {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(ops) = ops {
            let (done, closed) = tokio::sync::oneshot::channel();
            if ops.send(writer::Op::Close(done)).is_ok() {
                let _ = closed.await;
            }
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let (records, events) = self.shared.ledger().unconfirmed();
        if records > 0 {
            tracing::warn!(records, events, "events not yet confirmed stay in the persisted queue; they are delivered at the next start");
        }
    }

    /// Records and events not yet confirmed.
    pub fn unconfirmed(&self) -> (usize, u64) {
        self.shared.ledger().unconfirmed()
    }
}

fn log_scan(dir: &std::path::Path, scan: &segments::Scan) {
    if scan.torn_bytes > 0 {
        tracing::warn!(dir = %dir.display(), bytes = scan.torn_bytes, "cut a torn record off the end of the persisted queue (a write the process did not finish; it was never acknowledged)");
    }
    if scan.damaged_bytes > 0 {
        tracing::error!(dir = %dir.display(), bytes = scan.damaged_bytes, "skipped damaged bytes inside the persisted queue (checksum mismatch); the records in them are lost");
    }
}

/// A ledger holding the records the scan found, open unless the checkpoint says they were
/// `confirmed`.
fn ledger_for(scan: &segments::Scan, confirmed: &std::collections::HashSet<u64>) -> Ledger {
    let first = scan.records.first().map_or(scan.head, |f| f.start);
    let mut ledger = Ledger::new(first);
    for f in &scan.records {
        if f.start > ledger.head() {
            ledger.skip(f.start - ledger.head());
        }
        let start = ledger.written(f.len, 0);
        if confirmed.contains(&start) {
            ledger.confirm(start);
        }
    }
    if scan.head > ledger.head() {
        ledger.skip(scan.head - ledger.head());
    }
    ledger
}

#[cfg(test)]
mod tests;
