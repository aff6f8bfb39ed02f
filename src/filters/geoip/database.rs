//! A MaxMind database file that can be replaced while sheepdog runs: opened by memory map,
//! verified, and published through an `ArcSwapOption` that lookups read without locking. A
//! watcher task polls the file's identity (device, inode, size, mtime) and swaps in a
//! replacement once it verifies; a broken replacement is refused and the old one stays.

use super::verify::{self, Summary};
use arc_swap::{ArcSwapOption, Guard};
use maxminddb::{Mmap, Reader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// An opened, verified database.
pub struct Loaded {
    pub reader: Reader<Mmap>,
    pub summary: Summary,
    pub fingerprint: Fingerprint,
    /// Distinguishes cached answers of this file from those of its predecessors.
    pub generation: u64,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Files verified in this process, so the several builds of one configuration at start-up
/// (load, validate, run) walk an unchanged file only once.
static VERIFIED: Mutex<Vec<(PathBuf, Fingerprint, Summary)>> = Mutex::new(Vec::new());

/// Opens, maps and verifies `path` as a `kind` database. Blocking: the full verification
/// walks every record (a few hundred milliseconds for the full City database).
pub fn open(path: &Path, kind: Kind) -> Result<Loaded, OpenError> {
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
    let mmap = unsafe { Mmap::map(&file) }.map_err(unreadable)?;
    let known = VERIFIED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(p, f, _)| p == path && *f == fingerprint)
        .map(|(_, _, s)| s.clone());
    let summary = match known {
        Some(s) => s,
        None => {
            let s = verify::verify(&mmap).map_err(|e| OpenError::Corrupt {
                path: path.to_path_buf(),
                reason: e.0,
            })?;
            let mut verified = VERIFIED.lock().unwrap_or_else(|e| e.into_inner());
            verified.retain(|(p, _, _)| p != path);
            verified.push((path.to_path_buf(), fingerprint, s.clone()));
            s
        }
    };
    if !kind.accepts(&summary.database_type) {
        return Err(OpenError::WrongType {
            path: path.to_path_buf(),
            found: summary.database_type,
            expected: kind.expected(),
        });
    }
    let reader = Reader::from_source(mmap).map_err(|e| OpenError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Loaded {
        reader,
        summary,
        fingerprint,
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
    })
}

/// A database path and the file currently in use for it, if any.
pub struct WatchedDb {
    pub path: PathBuf,
    pub kind: Kind,
    current: ArcSwapOption<Loaded>,
    /// Why the file on disk is not (or no longer) the one in use; empty when all is well.
    /// Written by the builder and the watcher only, read for health.
    problem: Mutex<Option<String>>,
    /// The identity of the file when it was first opened (or found missing or broken).
    tried: Option<Fingerprint>,
}

impl WatchedDb {
    /// Opens `path` now; a missing or broken file leaves the slot empty with the reason kept.
    pub fn open(path: PathBuf, kind: Kind) -> (Self, Option<OpenError>) {
        // Taken before opening: if the file changes meanwhile, the watcher retries it.
        let before = Fingerprint::current(&path);
        let (loaded, err) = match open(&path, kind) {
            Ok(l) => (Some(Arc::new(l)), None),
            Err(e) => (None, Some(e)),
        };
        let db = WatchedDb {
            problem: Mutex::new(err.as_ref().map(ToString::to_string)),
            tried: before,
            path,
            kind,
            current: ArcSwapOption::new(loaded),
        };
        (db, err)
    }

    /// The database in use; cheap enough to call once per batch or event.
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

    /// The fingerprint the watcher compares against at start: the loaded file's, or that of
    /// the file found at start when it was refused (so it is retried only once it changes).
    pub fn initial_fingerprint(&self) -> Option<Fingerprint> {
        match &*self.current.load() {
            Some(l) => Some(l.fingerprint),
            None => self.tried,
        }
    }

    /// Re-opens the file if its identity changed since `seen`; returns the new identity.
    /// Blocking (verification); the watcher runs it off the async workers.
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
        match open(&self.path, self.kind) {
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
                tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    kept_previous = kept,
                    "GeoIP database replacement refused"
                );
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
