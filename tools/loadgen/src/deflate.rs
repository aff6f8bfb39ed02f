//! A small deflate encoder (greedy LZ77, fixed Huffman codes) that keeps marked byte ranges
//! ("holes", the `sent_at_us` digits) patchable after compression, so Beats windows can be
//! compressed once and still carry a fresh send time in every event.
//!
//! The first hole is written as a stored block, whose bytes sit verbatim in the output; every
//! later hole is a 16-byte back-reference to the previous hole, so the decoder copies the patched
//! digits forward. No other match starts in, ends in or refers into a hole. General-purpose
//! encoders give no such guarantee, which is why this exists.

const WINDOW: usize = 32 * 1024;
const MIN_MATCH: usize = 4;
const MAX_MATCH: usize = 258;
const HASH_BITS: u32 = 15;
/// Candidates tried per position; start-up time only.
const CHAIN: usize = 32;

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    /// Appends `len` bits of `value`, least significant first (deflate's bit order).
    fn put(&mut self, value: u32, len: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += len;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Huffman codes are defined most significant bit first.
    fn put_code(&mut self, code: u32, len: u32) {
        self.put(code.reverse_bits() >> (32 - len), len);
    }

    fn align(&mut self) {
        if self.n > 0 {
            self.put(0, 8 - self.n);
        }
    }

    fn symbol(&mut self, s: u16) {
        let s = u32::from(s);
        match s {
            0..=143 => self.put_code(0x30 + s, 8),
            144..=255 => self.put_code(0x190 + s - 144, 9),
            256..=279 => self.put_code(s - 256, 7),
            _ => self.put_code(0xc0 + s - 280, 8),
        }
    }

    fn copy(&mut self, len: usize, dist: usize) {
        let li = LEN_BASE.partition_point(|&b| usize::from(b) <= len) - 1;
        self.symbol(257 + li as u16);
        self.put(
            (len - usize::from(LEN_BASE[li])) as u32,
            u32::from(LEN_EXTRA[li]),
        );
        let di = DIST_BASE.partition_point(|&b| usize::from(b) <= dist) - 1;
        self.put_code(di as u32, 5);
        self.put(
            (dist - usize::from(DIST_BASE[di])) as u32,
            u32::from(DIST_EXTRA[di]),
        );
    }

    fn fixed_block_start(&mut self) {
        self.put(0, 1); // not final
        self.put(1, 2); // fixed Huffman
    }

    /// Ends the current fixed block and writes `data` as a stored block; returns where `data`
    /// starts in the output. Continues with a new fixed block.
    fn stored(&mut self, data: &[u8]) -> usize {
        self.symbol(256);
        self.put(0, 1);
        self.put(0, 2);
        self.align();
        let len = data.len() as u16;
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&(!len).to_le_bytes());
        let at = self.out.len();
        self.out.extend_from_slice(data);
        self.fixed_block_start();
        at
    }
}

fn hash(b: &[u8]) -> usize {
    (u32::from_le_bytes([b[0], b[1], b[2], b[3]]).wrapping_mul(2_654_435_761) >> (32 - HASH_BITS))
        as usize
}

/// Raw deflate of `raw` (no zlib header or trailer). `holes` are sorted, non-overlapping starts of
/// `hole_len`-byte ranges. Returns the stream and the offsets in it where hole bytes are stored
/// verbatim; writing the same bytes at every offset patches all holes.
pub fn compress_patchable(raw: &[u8], holes: &[usize], hole_len: usize) -> (Vec<u8>, Vec<usize>) {
    let mut bits = Bits {
        out: Vec::with_capacity(raw.len() / 3),
        acc: 0,
        n: 0,
    };
    let mut head = vec![u32::MAX; 1 << HASH_BITS];
    // Hash chains: the previous position with the same hash, per position.
    let mut prev = vec![u32::MAX; raw.len()];
    let mut stored_at = Vec::new();
    bits.fixed_block_start();
    let n = raw.len();
    let mut next_hole = 0usize; // index into holes
    let mut prev_hole: Option<usize> = None;
    let mut pos = 0usize;
    // End of the hole-free run that contains `p` (the next hole start at or after p, or n).
    let seg_end = |p: usize| {
        holes
            .get(holes.partition_point(|&h| h < p))
            .copied()
            .unwrap_or(n)
    };
    while pos < n {
        if holes.get(next_hole) == Some(&pos) {
            match prev_hole {
                Some(prev) if pos - prev <= WINDOW => bits.copy(hole_len, pos - prev),
                _ => stored_at.push(bits.stored(&raw[pos..pos + hole_len])),
            }
            prev_hole = Some(pos);
            pos += hole_len;
            next_hole += 1;
            continue;
        }
        let end = holes.get(next_hole).copied().unwrap_or(n);
        if pos + MIN_MATCH <= end {
            let h = hash(&raw[pos..]);
            let (best_len, best_dist) = longest_match(raw, pos, end, head[h], &prev, seg_end);
            prev[pos] = head[h];
            head[h] = pos as u32;
            if best_len >= MIN_MATCH {
                bits.copy(best_len, best_dist);
                for p in pos + 1..(pos + best_len).min(end.saturating_sub(MIN_MATCH - 1)) {
                    let h = hash(&raw[p..]);
                    prev[p] = head[h];
                    head[h] = p as u32;
                }
                pos += best_len;
                continue;
            }
        }
        bits.symbol(u16::from(raw[pos]));
        pos += 1;
    }
    bits.symbol(256);
    // A final, empty fixed block.
    bits.put(1, 1);
    bits.put(1, 2);
    bits.symbol(256);
    bits.align();
    (bits.out, stored_at)
}

/// The longest earlier match for the bytes at `pos` (up to `end`) along the hash chain that
/// starts at `cand`, as (length, distance); a match never runs into a hole.
fn longest_match(
    raw: &[u8],
    pos: usize,
    end: usize,
    mut cand: u32,
    prev: &[u32],
    seg_end: impl Fn(usize) -> usize,
) -> (usize, usize) {
    let (mut best_len, mut best_dist) = (0, 0);
    for _ in 0..CHAIN {
        if cand == u32::MAX || pos - cand as usize > WINDOW {
            break;
        }
        let c = cand as usize;
        let max = MAX_MATCH.min(end - pos).min(seg_end(c) - c);
        let len = raw[c..c + max]
            .iter()
            .zip(&raw[pos..pos + max])
            .take_while(|(a, b)| a == b)
            .count();
        if len > best_len {
            (best_len, best_dist) = (len, pos - c);
            if len == max {
                break;
            }
        }
        cand = prev[c];
    }
    (best_len, best_dist)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inflate(z: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(z)
            .read_to_end(&mut out)
            .expect("valid deflate");
        out
    }

    #[test]
    fn round_trips_without_holes() {
        for data in [&b""[..], b"a", b"abcabcabcabcabcabc", &[7u8; 100_000][..]] {
            let (z, stored) = compress_patchable(data, &[], 16);
            assert!(stored.is_empty());
            assert_eq!(inflate(&z), data);
        }
        let text: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("{{\"n\":{},\"s\":\"x{}\"}}\n", i % 977, i % 13).into_bytes())
            .collect();
        let (z, _) = compress_patchable(&text, &[], 16);
        assert_eq!(inflate(&z), text);
        assert!(
            z.len() * 4 < text.len(),
            "ratio {}",
            text.len() as f64 / z.len() as f64
        );
    }

    #[test]
    fn patching_stored_bytes_changes_every_hole_and_nothing_else() {
        // Content full of the same digits as the holes, to tempt references into them.
        let mut raw = Vec::new();
        let mut holes = Vec::new();
        for i in 0..3000 {
            raw.extend_from_slice(
                format!("{{\"v\":1999{},\"w\":\"999{}\",\"t\":", i % 7, i % 3).as_bytes(),
            );
            holes.push(raw.len());
            raw.extend_from_slice(b"1999999999999999");
            raw.extend_from_slice(b"}\n");
            if i == 1500 {
                // A gap longer than the window forces a second stored copy.
                raw.extend(std::iter::repeat_n(b'x', 40_000));
            }
        }
        let (mut z, stored) = compress_patchable(&raw, &holes, 16);
        assert_eq!(stored.len(), 2);
        for digits in [
            b"0123456789012345",
            b"5678901234567890",
            b"0000000000111111",
            b"9876543210987654",
        ] {
            for &o in &stored {
                z[o..o + 16].copy_from_slice(digits);
            }
            let mut want = raw.clone();
            for &h in &holes {
                want[h..h + 16].copy_from_slice(digits);
            }
            assert!(
                inflate(&z) == want,
                "mismatch for {:?}",
                std::str::from_utf8(digits)
            );
        }
    }
}
