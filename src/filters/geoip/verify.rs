//! Bounds-checked verification of a MaxMind DB file before the stage looks anything up in it
//! (with its own tree walk, `database::Loaded::find`, and decoder, `record`; `maxminddb` only
//! maps the file). The metadata, every search-tree path and every data record the tree points
//! at are walked once, so a corrupt or truncated file is refused with its reason up front
//! instead of answering lookups with wrong or missing fields.

const METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";
/// Zero bytes between the search tree and the data section.
pub const DATA_SEPARATOR: usize = 16;
/// Deeper nesting than any MaxMind database uses; bounds the walk's recursion.
const MAX_DEPTH: u32 = 32;

/// A set of byte offsets into a section, one bit each: the walk asks it about every pointer it
/// meets, millions of times for a full GeoLite2-City, where a hashed set took most of the
/// start-up time.
struct Offsets {
    bits: Vec<u64>,
    count: usize,
}

impl Offsets {
    fn new(len: usize) -> Self {
        Offsets {
            bits: vec![0; len.div_ceil(64)],
            count: 0,
        }
    }

    /// Adds `offset`; true when it was not there yet. Offsets past the section are never added
    /// (the walk reports them as corrupt before asking).
    fn insert(&mut self, offset: usize) -> bool {
        let Some(word) = self.bits.get_mut(offset / 64) else {
            return true;
        };
        let bit = 1u64 << (offset % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        self.count += usize::from(fresh);
        fresh
    }

    fn count(&self) -> usize {
        self.count
    }
}

/// What verification learned about the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub database_type: String,
    pub ip_version: u64,
    pub node_count: usize,
    pub record_size: usize,
    pub build_epoch: u64,
    pub data_records: usize,
}

/// Why a file is not a usable MaxMind DB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Corrupt(pub String);

fn corrupt<T>(msg: impl Into<String>) -> Result<T, Corrupt> {
    Err(Corrupt(msg.into()))
}

/// Checks `buf` as a MaxMind DB: metadata, search tree bounds and every reachable data record.
pub fn verify(buf: &[u8]) -> Result<Summary, Corrupt> {
    let (marker, meta) = read_metadata(buf)?;
    let Metadata {
        database_type,
        node_count,
        record_size,
        ip_version,
        build_epoch,
    } = meta;
    if !matches!(record_size, 24 | 28 | 32) {
        return corrupt(format!("record size {record_size} (expected 24, 28 or 32)"));
    }
    if !matches!(ip_version, 4 | 6) {
        return corrupt(format!("ip_version {ip_version} (expected 4 or 6)"));
    }
    let tree_size = node_count
        .checked_mul(record_size)
        .map(|n| n / 4)
        .unwrap_or(usize::MAX);
    let data_start = tree_size.saturating_add(DATA_SEPARATOR);
    if data_start > marker {
        return corrupt(format!(
            "node count {node_count} needs a {tree_size}-byte search tree but the file has only {marker} bytes before its metadata"
        ));
    }
    check_depths(buf, node_count, record_size, ip_version)?;
    let data_records = check_data_records(buf, node_count, record_size, data_start)?;
    Ok(Summary {
        database_type,
        ip_version,
        node_count,
        record_size,
        build_epoch,
        data_records,
    })
}

/// The metadata fields verification needs.
struct Metadata {
    database_type: String,
    node_count: usize,
    record_size: usize,
    ip_version: u64,
    build_epoch: u64,
}

/// Finds, walks and reads the metadata at the end of `buf`; returns where its marker starts
/// (the end of the data section) and its fields.
fn read_metadata(buf: &[u8]) -> Result<(usize, Metadata), Corrupt> {
    let Some(marker) = memchr::memmem::rfind(buf, METADATA_MARKER) else {
        return corrupt("no MaxMind DB metadata marker (not an .mmdb file, or truncated)");
    };
    let meta_start = marker + METADATA_MARKER.len();
    let meta = Walker {
        buf: &buf[meta_start..],
    };
    // The metadata is walked before any value is read from it.
    meta.check(0, 0, &mut Offsets::new(meta.buf.len()))
        .map_err(|e| Corrupt(format!("metadata: {}", e.0)))?;
    let fields = meta.top_level_map(0)?;
    let uint = |k: &str| -> Result<u64, Corrupt> {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| match v {
                Leaf::Uint(n) => Some(*n),
                _ => None,
            })
            .ok_or_else(|| Corrupt(format!("metadata has no numeric `{k}`")))
    };
    let database_type = fields
        .iter()
        .find(|(k, _)| k == "database_type")
        .and_then(|(_, v)| match v {
            Leaf::Str(s) => Some(s.clone()),
            _ => None,
        })
        .ok_or_else(|| Corrupt("metadata has no `database_type`".into()))?;
    let node_count = uint("node_count")? as usize;
    let record_size = uint("record_size")? as usize;
    let ip_version = uint("ip_version")?;
    let build_epoch = uint("build_epoch").unwrap_or(0);
    if uint("binary_format_major_version")? != 2 {
        return corrupt("unsupported binary format (major version is not 2)");
    }
    Ok((
        marker,
        Metadata {
            database_type,
            node_count,
            record_size,
            ip_version,
            build_epoch,
        },
    ))
}

/// Walks every data record a search-tree record points at, each once; returns how many there
/// are.
fn check_data_records(
    buf: &[u8],
    node_count: usize,
    record_size: usize,
    data_start: usize,
) -> Result<usize, Corrupt> {
    // Data records are read from the data section start to the end of the file.
    let data = Walker {
        buf: &buf[data_start..],
    };
    let mut records = Offsets::new(data.buf.len());
    let mut seen = Offsets::new(data.buf.len());
    for node in 0..node_count {
        for side in 0..2 {
            let value = read_record(buf, node, side, record_size);
            if value <= node_count {
                continue;
            }
            let Some(offset) = value.checked_sub(node_count + DATA_SEPARATOR) else {
                return corrupt(format!(
                    "search tree node {node} points into the data separator ({value})"
                ));
            };
            if offset >= data.buf.len() {
                return corrupt(format!(
                    "search tree node {node} points past the end of the file (record {value})"
                ));
            }
            if records.insert(offset) {
                data.check(offset, 0, &mut seen)
                    .map_err(|e| Corrupt(format!("data record at offset {offset}: {}", e.0)))?;
            }
        }
    }
    Ok(records.count())
}

/// Every path from the root must leave the tree within the address's bits; otherwise a lookup
/// ends on an inner node ("invalid node in search tree") and a cycle would be followed.
/// A node is revisited only when reached deeper than before (the deeper visit is the stricter
/// one), so the walk is bounded by `node_count * bits` even for a malicious tree.
fn check_depths(
    buf: &[u8],
    node_count: usize,
    record_size: usize,
    ip_version: u64,
) -> Result<(), Corrupt> {
    let bits: u8 = if ip_version == 6 { 128 } else { 32 };
    if node_count == 0 {
        return Ok(());
    }
    let mut deepest = vec![0u8; node_count];
    let mut seen = vec![false; node_count];
    let mut stack: Vec<(usize, u8)> = vec![(0, 0)];
    while let Some((node, depth)) = stack.pop() {
        if seen[node] && deepest[node] >= depth {
            continue;
        }
        seen[node] = true;
        deepest[node] = depth;
        if depth >= bits {
            return corrupt(format!(
                "search tree is deeper than {bits} bits at node {node} (a cycle or a broken record)"
            ));
        }
        for side in 0..2 {
            let next = read_record(buf, node, side, record_size);
            if next < node_count {
                stack.push((next, depth + 1));
            }
        }
    }
    Ok(())
}

fn read_record(buf: &[u8], node: usize, side: usize, record_size: usize) -> usize {
    let base = node * record_size / 4;
    let be = |b: &[u8]| b.iter().fold(0usize, |acc, &x| (acc << 8) | x as usize);
    match record_size {
        24 => be(&buf[base + side * 3..base + side * 3 + 3]),
        28 => {
            let middle = buf[base + 3];
            let high = if side == 0 {
                middle >> 4
            } else {
                middle & 0x0f
            } as usize;
            (high << 24) | be(&buf[base + side * 4..base + side * 4 + 3])
        }
        _ => be(&buf[base + side * 4..base + side * 4 + 4]),
    }
}

enum Leaf {
    Uint(u64),
    Str(String),
    Other,
}

/// Walks encoded values as the MaxMind DB format lays them out (and `record` reads them),
/// checking every bound.
struct Walker<'a> {
    buf: &'a [u8],
}

impl Walker<'_> {
    fn bytes(&self, at: usize, len: usize) -> Result<&[u8], Corrupt> {
        at.checked_add(len)
            .and_then(|end| self.buf.get(at..end))
            .ok_or_else(|| Corrupt(format!("value at {at} runs past the end of the file")))
    }

    /// Control byte(s): returns (type, size, offset of the payload).
    fn header(&self, at: usize) -> Result<(u8, usize, usize), Corrupt> {
        let ctrl = self.bytes(at, 1)?[0];
        let mut pos = at + 1;
        let mut kind = ctrl >> 5;
        if kind == 0 {
            let ext = self.bytes(pos, 1)?[0];
            pos += 1;
            if ext > 8 {
                return corrupt(format!("unknown extended type {ext} at {at}"));
            }
            kind = ext + 7;
        }
        let raw = (ctrl & 0x1f) as usize;
        // The decoder reads extended sizes for every type but extended-with-type 0.
        let extra = raw.saturating_sub(28);
        let size_bytes = self.bytes(pos, extra)?;
        pos += extra;
        let be = size_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        let size = match raw {
            s if s < 29 => s,
            29 => 29 + be,
            30 => 285 + be,
            _ => 65_821 + be,
        };
        Ok((kind, size, pos))
    }

    /// Checks the value at `at` and returns the offset after it.
    fn check(&self, at: usize, depth: u32, seen: &mut Offsets) -> Result<usize, Corrupt> {
        if depth > MAX_DEPTH {
            return corrupt(format!("values nested deeper than {MAX_DEPTH} at {at}"));
        }
        let (kind, size, pos) = self.header(at)?;
        match kind {
            1 => {
                let len = ((size >> 3) & 0x3) + 1;
                let raw = self.bytes(pos, len)?;
                let base = if len == 4 { 0 } else { size & 0x7 };
                let target = raw.iter().fold(base, |acc, &b| (acc << 8) | b as usize)
                    + [0, 0, 2048, 526_336, 0][len];
                if target >= self.buf.len() {
                    return corrupt(format!("pointer at {at} leads past the end of the file"));
                }
                if self.header(target)?.0 == 1 {
                    return corrupt(format!("pointer at {at} leads to another pointer"));
                }
                if seen.insert(target) {
                    self.check(target, depth + 1, seen)?;
                }
                Ok(pos + len)
            }
            2 => {
                let s = self.bytes(pos, size)?;
                if std::str::from_utf8(s).is_err() {
                    return corrupt(format!("string at {at} is not UTF-8"));
                }
                Ok(pos + size)
            }
            3 | 15 => {
                let want = if kind == 3 { 8 } else { 4 };
                if size != want {
                    return corrupt(format!("float of size {size} at {at}"));
                }
                self.bytes(pos, size).map(|_| pos + size)
            }
            4 => self.bytes(pos, size).map(|_| pos + size),
            5 | 6 | 8 | 9 | 10 => {
                let max = match kind {
                    5 => 2,
                    6 | 8 => 4,
                    9 => 8,
                    _ => 16,
                };
                if size > max {
                    return corrupt(format!("integer of size {size} at {at}"));
                }
                self.bytes(pos, size).map(|_| pos + size)
            }
            7 | 11 => {
                let items = if kind == 7 { size * 2 } else { size };
                let mut next = pos;
                for _ in 0..items {
                    next = self.check(next, depth + 1, seen)?;
                }
                Ok(next)
            }
            14 if size <= 1 => Ok(pos),
            _ => corrupt(format!("invalid value (type {kind}, size {size}) at {at}")),
        }
    }

    /// The metadata map's keys with their numeric or string values (already checked).
    fn top_level_map(&self, at: usize) -> Result<Vec<(String, Leaf)>, Corrupt> {
        let (kind, size, mut pos) = self.header(at)?;
        if kind != 7 {
            return corrupt("metadata is not a map");
        }
        let mut out = Vec::with_capacity(size);
        for _ in 0..size {
            let key = match self.leaf(pos)? {
                (Leaf::Str(s), next) => {
                    pos = next;
                    s
                }
                _ => return corrupt("metadata key is not a string"),
            };
            let (value, next) = self.leaf(pos)?;
            pos = next;
            out.push((key, value));
        }
        Ok(out)
    }

    fn leaf(&self, at: usize) -> Result<(Leaf, usize), Corrupt> {
        let (kind, size, pos) = self.header(at)?;
        let end = self.check(at, 0, &mut Offsets::new(self.buf.len()))?;
        let leaf = match kind {
            2 => Leaf::Str(String::from_utf8_lossy(self.bytes(pos, size)?).into_owned()),
            5 | 6 | 9 => Leaf::Uint(
                self.bytes(pos, size)?
                    .iter()
                    .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
            ),
            _ => Leaf::Other,
        };
        Ok((leaf, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/geoip/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn accepts_the_test_databases() {
        let s = verify(&fixture("GeoLite2-City-Test.mmdb")).unwrap();
        assert_eq!(s.database_type, "GeoLite2-City");
        assert_eq!(s.ip_version, 6);
        assert!(s.data_records > 10);
        let s = verify(&fixture("GeoLite2-ASN-Test.mmdb")).unwrap();
        assert_eq!(s.database_type, "GeoLite2-ASN");
    }

    #[test]
    fn refuses_broken_files_without_panicking() {
        for name in [
            "MaxMind-DB-test-broken-pointers-24.mmdb",
            "MaxMind-DB-test-broken-search-tree-24.mmdb",
            "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
        ] {
            let err = verify(&fixture(name)).expect_err(name);
            assert!(!err.0.is_empty(), "{name}");
        }
        assert!(verify(b"").is_err());
        assert!(verify(b"not a database at all").is_err());
        let city = fixture("GeoLite2-City-Test.mmdb");
        // Every truncation is refused or verified, never a panic.
        for cut in (0..city.len()).step_by(97) {
            let _ = verify(&city[..cut]);
        }
        // Flipped bytes in the tree and data section likewise.
        for i in (0..city.len()).step_by(13) {
            let mut bad = city.clone();
            bad[i] ^= 0xa5;
            let _ = verify(&bad);
        }
    }
}
