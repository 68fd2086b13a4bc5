//! Release versions: [`SemVer`], a version string checked on parsing and ordered by semantic
//! version precedence (so a rollout can tell an upgrade from a downgrade).
//!
//! The rule accepted is the one the API has always applied: the part before the first `-` or
//! `+` is `MAJOR.MINOR.PATCH`, three non-empty runs of ASCII digits; what follows is kept as
//! given. That is looser than Semantic Versioning 2.0.0 (leading zeros such as `01.2.3` and any
//! pre-release or build text pass); tightening it would refuse requests accepted today.

use std::cmp::Ordering;

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SemVerError {
    #[error("{0:?} is not a semantic version (MAJOR.MINOR.PATCH)")]
    NotSemVer(String),
    #[error("a version is at most {MAX_SEMVER_LEN} characters")]
    TooLong,
}

/// The longest version, in characters.
pub const MAX_SEMVER_LEN: usize = 256;

/// A semantic version, kept exactly as written.
///
/// Equality is on the text; the order is Semantic Versioning 2.0.0 precedence (numeric
/// `MAJOR.MINOR.PATCH`, a pre-release below its release, pre-release identifiers compared
/// numerically or in ASCII order), with versions of equal precedence (`1.0.0+a`, `1.0.0+b`,
/// `01.0.0`) ordered by their text so that the order is total. [`SemVer::precedence`] compares
/// precedence alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct SemVer(String);

/// Where the `MAJOR.MINOR.PATCH` core of a checked version ends.
fn core_end(v: &str) -> usize {
    v.find(['-', '+']).unwrap_or(v.len())
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Compares two runs of ASCII digits by value, whatever their length.
fn cmp_numeric(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Compares pre-release identifiers: numeric ones by value and below alphanumeric ones, which
/// compare in ASCII order.
fn cmp_identifier(a: &str, b: &str) -> Ordering {
    match (is_numeric(a), is_numeric(b)) {
        (true, true) => cmp_numeric(a, b),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.cmp(b),
    }
}

impl SemVer {
    fn core(&self) -> impl Iterator<Item = &str> {
        self.0[..core_end(&self.0)].split('.')
    }

    /// The pre-release part (after `-`, up to `+`), if any.
    #[must_use]
    pub fn pre_release(&self) -> Option<&str> {
        let rest = &self.0[core_end(&self.0)..];
        let pre = rest.strip_prefix('-')?;
        Some(pre.split_once('+').map_or(pre, |(p, _)| p))
    }

    /// The build metadata (after the first `+`), if any; it plays no part in precedence.
    #[must_use]
    pub fn build(&self) -> Option<&str> {
        self.0.split_once('+').map(|(_, b)| b)
    }

    /// Semantic Versioning precedence: `Equal` for versions that differ only in build metadata
    /// or leading zeros.
    #[must_use]
    pub fn precedence(&self, other: &Self) -> Ordering {
        let core = self
            .core()
            .zip(other.core())
            .map(|(a, b)| cmp_numeric(a, b))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal);
        core.then_with(|| match (self.pre_release(), other.pre_release()) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(a), Some(b)) => {
                let (mut a, mut b) = (a.split('.'), b.split('.'));
                loop {
                    match (a.next(), b.next()) {
                        (None, None) => return Ordering::Equal,
                        (None, Some(_)) => return Ordering::Less,
                        (Some(_), None) => return Ordering::Greater,
                        (Some(x), Some(y)) => match cmp_identifier(x, y) {
                            Ordering::Equal => {}
                            o => return o,
                        },
                    }
                }
            }
        })
    }
}

impl Ord for SemVer {
    fn cmp(&self, other: &Self) -> Ordering {
        self.precedence(other).then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SemVer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

crate::text::parsed_text!(SemVer, SemVerError, |v| {
    if v.chars().count() > MAX_SEMVER_LEN {
        return Err(SemVerError::TooLong);
    }
    let parts: Vec<&str> = v[..core_end(&v)].split('.').collect();
    if parts.len() == 3 && parts.iter().all(|p| is_numeric(p)) {
        Ok(v)
    } else {
        Err(SemVerError::NotSemVer(v))
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> SemVer {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn versions_are_major_minor_patch_of_digits_with_anything_after() {
        for ok in [
            "0.0.0",
            "1.2.3",
            "10.20.30",
            "01.2.3",
            "1.2.3-rc.1",
            "1.2.3+build.5",
            "1.2.3-rc.1+build.5",
            "1.2.3-",
            "1.2.3+",
            "1.2.3-+",
            "1.2.3+b-1",
            "99999999999999999999999.0.0",
        ] {
            assert_eq!(SemVer::try_from(ok).map(String::from), Ok(ok.to_owned()));
        }
        for bad in [
            "", " ", "1", "1.2", "1.2.3.4", "1..3", ".1.2", "1.2.", "v1.2.3", "1.2.x", " 1.2.3",
            "1.2.3 ", "1.2 .3", "-1.2.3", "+1.2.3", "１.2.3", "1.2.3\n",
        ] {
            assert_eq!(
                SemVer::try_from(bad),
                Err(SemVerError::NotSemVer(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            "4.3".parse::<SemVer>().unwrap_err().to_string(),
            "\"4.3\" is not a semantic version (MAJOR.MINOR.PATCH)"
        );
    }

    #[test]
    fn the_parts_after_the_core_are_read_as_semver_says() {
        assert_eq!(v("1.2.3").pre_release(), None);
        assert_eq!(v("1.2.3").build(), None);
        assert_eq!(v("1.2.3-rc.1").pre_release(), Some("rc.1"));
        assert_eq!(v("1.2.3-rc.1+b.2").pre_release(), Some("rc.1"));
        assert_eq!(v("1.2.3-rc.1+b.2").build(), Some("b.2"));
        assert_eq!(
            v("1.2.3+b-2").pre_release(),
            None,
            "a '-' in the build is no pre-release"
        );
        assert_eq!(v("1.2.3+b-2").build(), Some("b-2"));
        assert_eq!(v("1.2.3-").pre_release(), Some(""));
    }

    #[test]
    fn versions_order_by_precedence() {
        // The example chain of Semantic Versioning 2.0.0, section 11, and the core before it.
        let chain = [
            "0.9.9",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "1.2.0",
            "1.10.0",
            "2.0.0",
            "10.0.0",
            "100000000000000000000.0.0",
        ];
        for (i, a) in chain.iter().enumerate() {
            for (j, b) in chain.iter().enumerate() {
                assert_eq!(v(a).precedence(&v(b)), i.cmp(&j), "{a} vs {b}");
                assert_eq!(v(a).cmp(&v(b)), i.cmp(&j), "{a} vs {b}");
                assert_eq!(v(a).partial_cmp(&v(b)), Some(i.cmp(&j)), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn build_metadata_and_leading_zeros_do_not_change_precedence() {
        assert_eq!(v("1.0.0+a").precedence(&v("1.0.0+b")), Ordering::Equal);
        assert_eq!(v("1.0.0+a").precedence(&v("1.0.0")), Ordering::Equal);
        assert_eq!(v("01.0.0").precedence(&v("1.0.0")), Ordering::Equal);
        assert_eq!(v("1.0.0-01").precedence(&v("1.0.0-1")), Ordering::Equal);
        assert_eq!(
            v("1.0.0-rc.1+x").precedence(&v("1.0.0-rc.1")),
            Ordering::Equal
        );
        // The total order still separates them, by text, consistently with equality.
        assert_eq!(v("1.0.0+a").cmp(&v("1.0.0+b")), Ordering::Less);
        assert_eq!(v("1.0.0").cmp(&v("1.0.0+a")), Ordering::Less);
        assert_eq!(v("1.0.0").cmp(&v("1.0.0")), Ordering::Equal);
        assert_ne!(v("01.0.0"), v("1.0.0"));
    }

    #[test]
    fn numeric_identifiers_rank_below_alphanumeric_ones() {
        assert_eq!(v("1.0.0-9").precedence(&v("1.0.0-a")), Ordering::Less);
        assert_eq!(v("1.0.0-a").precedence(&v("1.0.0-9")), Ordering::Greater);
        assert_eq!(v("1.0.0-1a").precedence(&v("1.0.0-2")), Ordering::Greater);
        assert_eq!(
            v("1.0.0-").precedence(&v("1.0.0-0")),
            Ordering::Greater,
            "empty is text"
        );
        assert_eq!(
            v("1.0.0-B").precedence(&v("1.0.0-a")),
            Ordering::Less,
            "ASCII order"
        );
    }

    #[test]
    fn versions_print_as_given_and_deserialize_only_when_valid() {
        use serde::de::value::{Error, StrDeserializer};
        use serde::de::IntoDeserializer;
        let x = v("1.2.3-rc.1+b");
        assert_eq!(x.to_string(), "1.2.3-rc.1+b");
        assert_eq!(x.as_str(), "1.2.3-rc.1+b");
        assert_eq!(AsRef::<str>::as_ref(&x), "1.2.3-rc.1+b");
        assert_eq!(x.into_string(), "1.2.3-rc.1+b");
        let ok: StrDeserializer<'_, Error> = "2.0.0".into_deserializer();
        assert_eq!(SemVer::deserialize(ok), Ok(v("2.0.0")));
        let bad: StrDeserializer<'_, Error> = "2.0".into_deserializer();
        let err = SemVer::deserialize(bad).unwrap_err().to_string();
        assert!(err.contains("is not a semantic version"), "{err}");
    }
}
