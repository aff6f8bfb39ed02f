//! A MaxMind database file that can be replaced while sheepdog runs: opened by memory map,
//! verified (in the background when the daemon starts), and published through an `ArcSwapOption` that lookups read without locking. A
//! watcher task polls the file's identity (device, inode, size, mtime) and swaps in a
//! replacement once it verifies; a broken replacement is refused and the old one stays.

use super::verify::{self, Corrupt, Summary};
use arc_swap::{ArcSwapOption, Guard};
use maxminddb::Mmap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Which database a file must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GeoLite2/GeoIP2 City (or Country, which has a subset of the same fields).
    City,
    /// GeoLite2-ASN (or GeoIP2-ISP).
    Asn,
}

impl Kind {
    fn accepts(self, database_type: &str) -> bool {
        match self {
            Kind::City => database_type.contains("City") || database_type.contains("Country"),
            Kind::Asn => database_type.contains("ASN") || database_type.contains("ISP"),
        }
    }

    pub fn expected(self) -> &'static str {
        match self {
            Kind::City => "a GeoLite2-City (or GeoIP2-City/Country) database",
            Kind::Asn => "a GeoLite2-ASN database",
        }
    }
}

/// The identity of a file on disk; a replaced file differs in at least one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// The file's current identity, `None` when it does not exist or cannot be read.
    pub fn current(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Fingerprint::of(&m))
    }
}

/// Why a database file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("cannot read {}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid MaxMind database: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{} is a {found} database, expected {expected}", .path.display())]
    WrongType {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
}

/// Verification results and generation numbers shared by the geoip stages of one pipeline
/// (one [`crate::filters::BuildState`]), so stages that use the same file walk it once, and two
/// pipelines in one process (or two tests) never see each other's files.
#[derive(Debug, Default)]
pub struct Registry {
    /// The latest verification per path, keyed by the file's identity. The cell is shared so a
    /// second build asking for the same file while the first is still walking it waits for
    /// that walk instead of starting another.
    verified: Mutex<Vec<Verification>>,
    generation: AtomicU64,
}

type Verified = Arc<OnceLock<Result<Summary, Corrupt>>>;

#[derive(Debug)]
struct Verification {
    path: PathBuf,
    fingerprint: Fingerprint,
    result: Verified,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Walks `buf` (the file at `path` with identity `fingerprint`) unless this registry
    /// already did. Blocking.
    fn verify(
        &self,
        path: &Path,
        fingerprint: Fingerprint,
        buf: &[u8],
    ) -> Result<Summary, Corrupt> {
        let cell = {
            // Held for a scan of a handful of entries, never during the walk itself.
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            match verified
                .iter()
                .find(|v| v.path == path && v.fingerprint == fingerprint)
            {
                Some(v) => v.result.clone(),
                None => {
                    verified.retain(|v| v.path != path);
                    let result = Verified::default();
                    verified.push(Verification {
                        path: path.to_path_buf(),
                        fingerprint,
                        result: result.clone(),
                    });
                    result
                }
            }
        };
        cell.get_or_init(|| verify::verify(buf)).clone()
    }

    /// Distinguishes cached answers of one opened file from those of every other.
    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// An opened, verified database. Lookups walk its search tree and decode records with
/// [`super::record`]; nothing reads the map before [`verify::verify`] accepted it.
pub struct Loaded {
    map: Mmap,
    pub summary: Summary,
    pub fingerprint: Fingerprint,
    /// Distinguishes cached answers of this file from those of its predecessors.
    pub generation: u64,
    /// Where IPv4 lookups start: the node reached by 96 zero bits in an IPv6 tree.
    ipv4_start: usize,
    data_start: usize,
}

impl Loaded {
    /// The data-section offset of the record for `ip`, `None` when the database has none.
    /// An IPv6 address in an IPv4-only database has none.
    #[inline]
    pub fn find(&self, ip: IpAddr) -> Option<usize> {
        let (bits, start, addr): (u32, usize, u128) = match ip {
            IpAddr::V4(v4) => (32, self.ipv4_start, u128::from(u32::from(v4))),
            IpAddr::V6(_) if self.summary.ip_version == 4 => return None,
            IpAddr::V6(v6) => (128, 0, u128::from(v6)),
        };
        let tree = &self.map[..self.data_start];
        let nodes = self.summary.node_count;
        let size = self.summary.record_size;
        let mut node = start;
        for i in (0..bits).rev() {
            if node >= nodes {
                break;
            }
            node = read_node(tree, node, (addr >> i) as usize & 1, size)?;
        }
        // Verification guarantees every path leaves the tree within the address's bits.
        node.checked_sub(nodes + verify::DATA_SEPARATOR)
    }

    /// The data section; record offsets and pointers are relative to its start.
    pub fn data(&self) -> &[u8] {
        &self.map[self.data_start..]
    }
}

/// One record of a search-tree node; `None` only for a node past the tree (never after
/// verification).
#[inline]
fn read_node(tree: &[u8], node: usize, side: usize, record_size: usize) -> Option<usize> {
    let base = node * record_size / 4;
    let b = tree.get(base..base + record_size / 4)?;
    let be3 = |x: &[u8]| (x[0] as usize) << 16 | (x[1] as usize) << 8 | x[2] as usize;
    Some(match (record_size, side) {
        (24, 0) => be3(&b[0..3]),
        (24, _) => be3(&b[3..6]),
        (28, 0) => (b[3] as usize & 0xf0) << 20 | be3(&b[0..3]),
        (28, _) => (b[3] as usize & 0x0f) << 24 | be3(&b[4..7]),
        (_, 0) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
        _ => u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize,
    })
}

/// Opens, maps and verifies `path` as a `kind` database. Blocking: the full verification
/// walks every record (over a second for the full City database), once per file identity
/// and registry.
pub fn open(path: &Path, kind: Kind, registry: &Registry) -> Result<Loaded, OpenError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => OpenError::Missing(path.to_path_buf()),
        _ => OpenError::Unreadable {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let unreadable = |source| OpenError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            reason: "it is not a regular file".into(),
        });
    }
    let fingerprint = Fingerprint::of(&meta);
    // SAFETY: the map is read-only. Updates must replace the file by rename (geoipupdate
    // does), which leaves this mapping on the old inode; truncating the file in place while it
    // is mapped would fault, as with any mmap reader (see GeoLite2/README.md).
    let map = unsafe { Mmap::map(&file) }.map_err(unreadable)?;
    let summary = registry
        .verify(path, fingerprint, &map)
        .map_err(|e| OpenError::Corrupt {
            path: path.to_path_buf(),
            reason: e.0,
        })?;
    if !kind.accepts(&summary.database_type) {
        return Err(OpenError::WrongType {
            path: path.to_path_buf(),
            found: summary.database_type,
            expected: kind.expected(),
        });
    }
    let data_start = summary.node_count * summary.record_size / 4 + verify::DATA_SEPARATOR;
    let mut ipv4_start = 0;
    if summary.ip_version == 6 {
        for _ in 0..96 {
            if ipv4_start >= summary.node_count {
                break;
            }
            ipv4_start = read_node(&map[..data_start], ipv4_start, 0, summary.record_size)
                .unwrap_or(summary.node_count);
        }
    }
    Ok(Loaded {
        map,
        summary,
        fingerprint,
        generation: registry.next_generation(),
        ipv4_start,
        data_start,
    })
}

/// A database path and the file currently in use for it, if any.
pub struct WatchedDb {
    pub path: PathBuf,
    pub kind: Kind,
    registry: Arc<Registry>,
    current: ArcSwapOption<Loaded>,
    /// Why the file on disk is not (or no longer) the one in use; empty when all is well.
    /// Written by the builder and the loader/watcher only, read for health.
    problem: Mutex<Option<String>>,
    /// The identity of the file when it was first tried (loaded, or found missing or broken).
    tried: Mutex<Option<Fingerprint>>,
}

impl WatchedDb {
    /// A slot for `path` with nothing loaded yet; a missing file is reported at once (a cheap
    /// check), everything else when [`WatchedDb::refresh`] first opens it.
    pub fn new(path: PathBuf, kind: Kind, registry: Arc<Registry>) -> (Self, Option<OpenError>) {
        let missing = (!path.exists()).then(|| OpenError::Missing(path.clone()));
        let db = WatchedDb {
            problem: Mutex::new(missing.as_ref().map(ToString::to_string)),
            tried: Mutex::new(None),
            path,
            kind,
            registry,
            current: ArcSwapOption::new(None),
        };
        (db, missing)
    }

    /// Opens and verifies the file now (blocking); a missing or broken file leaves the slot
    /// empty with the reason kept.
    pub fn open_now(&self) -> Option<OpenError> {
        // Taken before opening: if the file changes meanwhile, the watcher retries it.
        let before = Fingerprint::current(&self.path);
        *self.tried.lock().unwrap_or_else(|e| e.into_inner()) = before;
        match open(&self.path, self.kind, &self.registry) {
            Ok(l) => {
                self.current.store(Some(Arc::new(l)));
                self.set_problem(None);
                None
            }
            Err(e) => {
                self.set_problem(Some(e.to_string()));
                Some(e)
            }
        }
    }

    /// The database in use; cheap enough to call once per batch or event.
    #[inline]
    pub fn current(&self) -> Guard<Option<Arc<Loaded>>> {
        self.current.load()
    }

    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_problem(&self, p: Option<String>) {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// The fingerprint the watcher compares against after [`WatchedDb::open_now`]: the loaded
    /// file's, or that of the file found then when it was refused (so it is retried only once
    /// it changes).
    pub fn initial_fingerprint(&self) -> Option<Fingerprint> {
        match &*self.current.load() {
            Some(l) => Some(l.fingerprint),
            None => *self.tried.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Re-opens the file if its identity changed since `seen` (`None`: never opened, so any
    /// existing file is opened); returns the new identity. Blocking (verification); the
    /// loader and watcher run it off the async workers.
    pub fn refresh(&self, seen: Option<Fingerprint>) -> Option<Fingerprint> {
        let now = Fingerprint::current(&self.path);
        if now == seen {
            return seen;
        }
        let Some(_) = now else {
            if self.current.load().is_some() {
                tracing::warn!(path = %self.path.display(), "GeoIP database file disappeared; keeping the one already loaded");
            }
            return now;
        };
        match open(&self.path, self.kind, &self.registry) {
            Ok(loaded) => {
                tracing::info!(
                    path = %self.path.display(),
                    database_type = %loaded.summary.database_type,
                    build_epoch = loaded.summary.build_epoch,
                    records = loaded.summary.data_records,
                    "GeoIP database loaded"
                );
                // The fingerprint of the opened file, which may be newer than `now`.
                let fp = loaded.fingerprint;
                self.current.store(Some(Arc::new(loaded)));
                self.set_problem(None);
                Some(fp)
            }
            Err(e) => {
                let kept = self.current.load().is_some();
                if seen.is_none() && !kept {
                    tracing::error!(
                        path = %self.path.display(),
                        error = %e,
                        "GeoIP database unusable; events pass through without GeoIP fields until the file is replaced (see GeoLite2/README.md)"
                    );
                } else {
                    tracing::error!(
                        path = %self.path.display(),
                        error = %e,
                        kept_previous = kept,
                        "GeoIP database replacement refused"
                    );
                }
                self.set_problem(Some(if kept {
                    format!("replacement refused ({e}); still using the previous database")
                } else {
                    e.to_string()
                }));
                now
            }
        }
    }
}
