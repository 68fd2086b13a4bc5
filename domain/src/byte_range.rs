//! HTTP byte ranges (RFC 9110 §14, formerly RFC 7233) of a download: what a `Range` header
//! asks of a representation of a known length. One range only: a device resuming a download
//! asks for the rest of it; a request for several ranges is answered whole, which the RFC
//! allows (a server may ignore `Range`).

/// What to send for a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole representation (200): no header, one the server ignores (several ranges, a
    /// unit other than bytes, a malformed header).
    Whole,
    /// Bytes `start..=end` (206 with `Content-Range: bytes start-end/length`).
    Part { start: u64, end: u64 },
    /// No byte of the representation is in the range (416 with `Content-Range: bytes */length`).
    Unsatisfiable,
}

/// Answers `header` (the `Range` value, if any) for a representation of `length` bytes.
#[must_use]
pub fn answer(header: Option<&str>, length: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.is_empty(), number(first), number(last)) {
        // `bytes=-N`: the last N bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || length == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part {
                    start: length.saturating_sub(suffix),
                    end: length - 1,
                }
            }
        }
        (false, Some(start), None) if last.is_empty() => from(start, u64::MAX, length),
        (false, Some(start), Some(end)) if end >= start => from(start, end, length),
        // `bytes=5-2`, `bytes=-`, letters: not a valid range, so the header is ignored.
        _ => RangeAnswer::Whole,
    }
}

/// `start..=end` of `length` bytes (`end` past the last byte means up to it).
fn from(start: u64, end: u64, length: u64) -> RangeAnswer {
    if start >= length {
        RangeAnswer::Unsatisfiable
    } else {
        RangeAnswer::Part {
            start,
            end: end.min(length - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::{Part, Unsatisfiable, Whole};

    #[test]
    fn no_header_or_one_we_ignore_is_the_whole() {
        assert_eq!(answer(None, 10), Whole);
        assert_eq!(answer(Some("items=0-1"), 10), Whole);
        assert_eq!(answer(Some("bytes=0-1,4-5"), 10), Whole);
        assert_eq!(answer(Some("bytes=5-2"), 10), Whole);
        assert_eq!(answer(Some("bytes=-"), 10), Whole);
        assert_eq!(answer(Some("bytes=a-2"), 10), Whole);
        assert_eq!(answer(Some("bytes=1-b"), 10), Whole);
        assert_eq!(answer(Some("bytes=+1-2"), 10), Whole);
        assert_eq!(answer(Some("bytes=12"), 10), Whole);
    }

    #[test]
    fn a_range_within_the_length_is_sent_as_asked() {
        assert_eq!(answer(Some("bytes=0-0"), 10), Part { start: 0, end: 0 });
        assert_eq!(answer(Some("bytes=2-5"), 10), Part { start: 2, end: 5 });
        assert_eq!(answer(Some("bytes=9-9"), 10), Part { start: 9, end: 9 });
        assert_eq!(
            answer(Some(" bytes= 3 - 4 "), 10),
            Part { start: 3, end: 4 }
        );
    }

    #[test]
    fn an_open_or_overlong_range_ends_at_the_last_byte() {
        assert_eq!(answer(Some("bytes=4-"), 10), Part { start: 4, end: 9 });
        assert_eq!(answer(Some("bytes=4-10"), 10), Part { start: 4, end: 9 });
        assert_eq!(
            answer(Some("bytes=0-99999999999"), 10),
            Part { start: 0, end: 9 }
        );
    }

    #[test]
    fn a_suffix_is_the_last_bytes() {
        assert_eq!(answer(Some("bytes=-3"), 10), Part { start: 7, end: 9 });
        assert_eq!(answer(Some("bytes=-10"), 10), Part { start: 0, end: 9 });
        assert_eq!(answer(Some("bytes=-11"), 10), Part { start: 0, end: 9 });
        assert_eq!(answer(Some("bytes=-0"), 10), Unsatisfiable);
    }

    #[test]
    fn a_range_past_the_end_is_unsatisfiable() {
        assert_eq!(answer(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(answer(Some("bytes=10-12"), 10), Unsatisfiable);
        assert_eq!(answer(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(answer(Some("bytes=-1"), 0), Unsatisfiable);
        assert_eq!(answer(None, 0), Whole);
    }
}
