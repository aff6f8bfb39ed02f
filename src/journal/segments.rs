//! The persisted queue's files under `DATA_DIR/queue/`: segments named by the log offset of
//! their first byte (`00000000000000000000.log`), a checkpoint holding the watermark, and a
//! lock file so that two processes never share one queue.

use super::record::{framing, Framing, HEADER};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A segment file and the log offset of its first byte.
#[derive(Debug, Clone)]
pub struct Segment {
    pub start: u64,
    pub path: PathBuf,
}

pub fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.log"))
}

/// Segments in log order.
pub fn list(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let start = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(start) = start {
            out.push(Segment { start, path });
        }
    }
    out.sort_by_key(|s| s.start);
    Ok(out)
}

/// Takes the queue directory's lock, failing at once when another process holds it.
pub fn lock(dir: &Path) -> Result<File, String> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if r != 0 {
        return Err(format!(
            "the persisted queue in {} is in use by another sheepdog (give each its own data_dir)",
            dir.display()
        ));
    }
    Ok(file)
}

/// What the last checkpoint recorded: the watermark, and the records beyond it that were
/// already confirmed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub watermark: u64,
    pub confirmed: std::collections::HashSet<u64>,
}

/// The last checkpoint (an empty one without a file or with one that does not parse).
pub fn read_checkpoint(dir: &Path) -> Checkpoint {
    let Ok(text) = std::fs::read_to_string(dir.join("checkpoint")) else {
        return Checkpoint::default();
    };
    let mut lines = text.lines();
    let Some(watermark) = lines.next().and_then(|l| l.trim().parse().ok()) else {
        return Checkpoint::default();
    };
    let confirmed = lines
        .next()
        .unwrap_or("")
        .split_ascii_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    Checkpoint {
        watermark,
        confirmed,
    }
}

/// Records the watermark and the records confirmed beyond it: written beside and renamed
/// over, so a crash leaves the old or the new one. Not synced: a stale checkpoint only makes
/// a restart replay records already delivered, which idempotent document ids absorb.
pub fn write_checkpoint(dir: &Path, watermark: u64, confirmed: &[u64]) -> std::io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut text = format!("{watermark}\n");
    for c in confirmed {
        text.push_str(&c.to_string());
        text.push(' ');
    }
    text.push('\n');
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join("checkpoint"))
}

/// A record found by the start-up scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: u64,
    pub len: u64,
}

/// What the start-up scan found: the records to replay and where the log ends.
#[derive(Debug, Default)]
pub struct Scan {
    pub records: Vec<Found>,
    pub head: u64,
    /// Bytes cut from the end of the last segment (a write the process did not finish).
    pub torn_bytes: u64,
    /// Bytes skipped inside earlier segments because they were damaged.
    pub damaged_bytes: u64,
}

/// Scans the segments for records from `watermark` on: deletes segments wholly before it,
/// checks every record's checksum, cuts a torn tail off the last segment.
pub fn scan(dir: &Path, watermark: u64) -> std::io::Result<Scan> {
    let segments = list(dir)?;
    let mut out = Scan::default();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        let len = std::fs::metadata(&seg.path)?.len();
        if i < last && seg.start + len <= watermark {
            std::fs::remove_file(&seg.path)?;
            continue;
        }
        let from = watermark.saturating_sub(seg.start).min(len);
        let valid = scan_segment(seg, from, len, &mut out.records)?;
        let bad = len - valid;
        if i == last {
            if bad > 0 {
                OpenOptions::new()
                    .write(true)
                    .open(&seg.path)?
                    .set_len(valid)?;
                out.torn_bytes = bad;
            }
            out.head = seg.start + valid;
        } else {
            out.damaged_bytes += bad;
        }
        out.head = out.head.max(seg.start + valid);
    }
    if segments.is_empty() {
        out.head = watermark;
    }
    Ok(out)
}

/// Records of one segment from byte `from` (falling back to the segment's start when `from`
/// is not a record boundary); returns where the valid records end.
fn scan_segment(
    seg: &Segment,
    from: u64,
    len: u64,
    found: &mut Vec<Found>,
) -> std::io::Result<u64> {
    let mut file = std::io::BufReader::with_capacity(1 << 20, File::open(&seg.path)?);
    let before = found.len();
    let end = scan_from(&mut file, seg.start, from, len, found)?;
    if from > 0 && end == from && from < len {
        // The checkpoint does not point at a record: read the segment from its start.
        tracing::warn!(segment = %seg.path.display(), offset = from, "queue checkpoint is not at a record boundary; replaying the whole segment");
        found.truncate(before);
        return scan_from(&mut file, seg.start, 0, len, found);
    }
    Ok(end)
}

fn scan_from<R: Read + Seek>(
    file: &mut R,
    seg_start: u64,
    from: u64,
    len: u64,
    found: &mut Vec<Found>,
) -> std::io::Result<u64> {
    file.seek(SeekFrom::Start(from))?;
    let mut at = from;
    let mut buf = Vec::new();
    while at < len {
        match read_record(file, len - at, &mut buf)? {
            Some(n) => {
                found.push(Found {
                    start: seg_start + at,
                    len: n as u64,
                });
                at += n as u64;
            }
            None => break,
        }
    }
    Ok(at)
}

/// Reads the record at the reader's position into `buf` when it is whole and its checksum
/// matches (`left`: bytes left in the file); its length, or `None`.
pub fn read_record<R: Read>(
    file: &mut R,
    left: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    if left < HEADER as u64 {
        return Ok(None);
    }
    buf.resize(HEADER, 0);
    file.read_exact(buf)?;
    let payload = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as u64;
    if HEADER as u64 + payload > left {
        return Ok(None);
    }
    buf.resize(HEADER + payload as usize, 0);
    file.read_exact(&mut buf[HEADER..])?;
    match framing(buf) {
        Framing::Whole(n) => Ok(Some(n)),
        Framing::Short | Framing::Corrupt => Ok(None),
    }
}

/// Reads the whole record starting at log offset `start` (from whichever segment holds it).
pub fn read_at(dir: &Path, start: u64) -> std::io::Result<Vec<u8>> {
    let seg = list(dir)?
        .into_iter()
        .rev()
        .find(|s| s.start <= start)
        .ok_or_else(|| std::io::Error::other(format!("no segment holds offset {start}")))?;
    let mut file = File::open(&seg.path)?;
    let len = file.metadata()?.len();
    let at = start - seg.start;
    file.seek(SeekFrom::Start(at))?;
    let mut buf = Vec::new();
    match read_record(&mut file, len.saturating_sub(at), &mut buf)? {
        Some(_) => Ok(buf),
        None => Err(std::io::Error::other(format!(
            "the record at offset {start} in {} is damaged",
            seg.path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{DocKind, RecordBuilder};
    use super::*;
    use std::io::Write;

    fn record(n: i64) -> Vec<u8> {
        let mut b = RecordBuilder::new("t", None, &[], 16);
        b.push(DocKind::Json, n, format!("{{\"n\":{n}}}").as_bytes());
        b.finish()
    }

    #[test]
    fn the_scan_cuts_a_torn_tail_and_starts_at_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (a, b, c) = (record(1), record(2), record(3));
        let mut f = File::create(segment_path(d, 0)).unwrap();
        f.write_all(&a).unwrap();
        f.write_all(&b).unwrap();
        drop(f);
        let second = (a.len() + b.len()) as u64;
        let mut f = File::create(segment_path(d, second)).unwrap();
        f.write_all(&c).unwrap();
        f.write_all(&record(4)[..10]).unwrap();
        drop(f);
        let s = scan(d, a.len() as u64).unwrap();
        assert_eq!(
            s.records,
            [
                Found {
                    start: a.len() as u64,
                    len: b.len() as u64
                },
                Found {
                    start: second,
                    len: c.len() as u64
                }
            ]
        );
        assert_eq!((s.torn_bytes, s.damaged_bytes), (10, 0));
        assert_eq!(s.head, second + c.len() as u64);
        let len = std::fs::metadata(segment_path(d, second)).unwrap().len();
        assert_eq!(len, c.len() as u64, "the torn bytes were cut from the file");
        assert_eq!(read_at(d, second).unwrap(), c);
        // Past the first segment's end: it is deleted.
        let s = scan(d, second).unwrap();
        assert_eq!(s.records.len(), 1);
        assert!(!segment_path(d, 0).exists());
    }

    #[test]
    fn a_checkpoint_inside_a_record_replays_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (record(1), record(2));
        let mut f = File::create(segment_path(dir.path(), 0)).unwrap();
        f.write_all(&a).unwrap();
        f.write_all(&b).unwrap();
        drop(f);
        let s = scan(dir.path(), 3).unwrap();
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.torn_bytes, 0);
    }

    #[test]
    fn the_lock_keeps_a_second_process_out() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock(dir.path()).unwrap();
        // flock locks are per open file description: a second open conflicts.
        let err = lock(dir.path()).unwrap_err();
        assert!(err.contains("in use by another sheepdog"), "{err}");
    }
}
