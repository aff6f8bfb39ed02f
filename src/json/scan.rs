//! Byte-level scanning of JSON string contents, shared by the event decoder and the document
//! writer: eight bytes at a time, for the bytes a JSON string cannot hold unescaped (control
//! characters, `"` and `\`).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `w` that are a control character, `"` or `\`, each marked by its high bit.
/// Bits above the lowest mark can be false alarms (a borrow carries into the next byte), so
/// only the lowest one is used.
#[inline]
fn specials(w: u64) -> u64 {
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    control | zero_bytes(w ^ (ONES * u64::from(b'"'))) | zero_bytes(w ^ (ONES * u64::from(b'\\')))
}

/// The length of the run of bytes before the first `"`, `\` or control character.
#[inline]
pub fn plain_run(bytes: &[u8]) -> usize {
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let word = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("eight bytes"));
        let marks = specials(word);
        if marks != 0 {
            return i + (marks.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    // The last few bytes, padded with a plain byte.
    let mut tail = [b'a'; 8];
    tail[..bytes.len() - i].copy_from_slice(&bytes[i..]);
    let marks = specials(u64::from_le_bytes(tail));
    if marks != 0 {
        i + (marks.trailing_zeros() / 8) as usize
    } else {
        bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_special_byte_at_every_position() {
        let reference = |b: &[u8]| {
            b.iter()
                .position(|&c| c < 0x20 || c == b'"' || c == b'\\')
                .unwrap_or(b.len())
        };
        for len in 0..40 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0u8, 0x1f, b'\n'] {
                    // Bytes around the special one include the neighbours of the tested values
                    // (0x20, '!', '#', '[', ']') and bytes above 0x7f.
                    let mut bytes: Vec<u8> = (0..len)
                        .map(|i| [b' ', b'!', b'#', b'[', b']', 0xc3, 0xa9, b'a'][i % 8])
                        .collect();
                    if at < len {
                        bytes[at] = special;
                    }
                    assert_eq!(plain_run(&bytes), reference(&bytes), "{bytes:?}");
                }
            }
        }
    }
}
