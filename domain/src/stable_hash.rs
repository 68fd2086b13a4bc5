//! FNV-1a over a tuple of strings: the same value in every process, build and platform (unlike
//! `std`'s `DefaultHasher`), for keys that processes must agree on and draws that must repeat.

/// The bytes of `parts`, each but the last followed by a 0 byte, so ("ab", "c") and ("a", "bc")
/// differ.
fn separated<'a>(parts: &'a [&'a str]) -> impl Iterator<Item = u8> + 'a {
    parts.iter().enumerate().flat_map(move |(i, p)| {
        let sep = (i + 1 < parts.len()).then_some(0u8);
        p.bytes().chain(sep)
    })
}

/// 32-bit FNV-1a of `parts`.
#[must_use]
pub fn fnv1a_32(parts: &[&str]) -> u32 {
    separated(parts).fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// 64-bit FNV-1a of `parts`.
#[must_use]
pub fn fnv1a_64(parts: &[&str]) -> u64 {
    separated(parts).fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_separators() {
        // The published FNV-1a test vectors.
        assert_eq!(fnv1a_32(&[""]), 0x811c_9dc5);
        assert_eq!(fnv1a_32(&["a"]), 0xe40c_292c);
        assert_eq!(fnv1a_64(&[""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(&["a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(&["foobar"]), 0x8594_4171_f739_67e8);
        // A separator between parts, none after the last.
        assert_eq!(fnv1a_32(&["a", "b"]), fnv1a_32(&["a\0b"]));
        assert_ne!(fnv1a_32(&["ab", "c"]), fnv1a_32(&["a", "bc"]));
        assert_ne!(fnv1a_64(&["ab", "c"]), fnv1a_64(&["a", "bc"]));
        assert_ne!(fnv1a_64(&["a", ""]), fnv1a_64(&["a"]));
    }
}
