//! Integers as JSON has them: JSON has one number type, and JSON Schema calls `5.0` an
//! integer, so an integer field takes any number with no fractional part (serde alone refuses
//! `5.0` for an `i32`). A fraction, or a value out of the field's range, is still refused.

use serde::de::{Deserializer, Error, Unexpected, Visitor};

struct Integer;

impl Visitor<'_> for Integer {
    type Value = i128;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<i128, E> {
        Ok(v.into())
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<i128, E> {
        Ok(v.into())
    }

    // Bounded and integral: checked first. The bound only keeps the cast in `i128`'s range; a
    // value near it is out of every field's range anyway.
    #[allow(clippy::cast_possible_truncation)]
    fn visit_f64<E: Error>(self, v: f64) -> Result<i128, E> {
        if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e38 {
            Ok(v as i128)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

fn in_range<T: TryFrom<i128>, E: Error>(v: i128) -> Result<T, E> {
    T::try_from(v).map_err(|_| {
        E::custom(format!(
            "invalid value: integer `{v}`, expected {}",
            std::any::type_name::<T>()
        ))
    })
}

/// An integer field (`#[serde(deserialize_with = "crate::json_number::int")]`).
pub fn int<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
    in_range(d.deserialize_any(Integer)?)
}

/// An optional integer field: absent or `null` is `None` (use with `#[serde(default)]`).
pub fn opt_int<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
    struct OptInteger;
    impl<'de> Visitor<'de> for OptInteger {
        type Value = Option<i128>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer or null")
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Integer).map(Some)
        }
    }
    match d.deserialize_option(OptInteger)? {
        None => Ok(None),
        Some(v) => in_range(v).map(Some),
    }
}

/// An optional UUID in its hyphenated form alone, as the OpenAPI document's pattern states.
pub fn opt_hyphenated_uuid<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<uuid::Uuid>, D::Error> {
    let text: Option<String> = serde::Deserialize::deserialize(d)?;
    text.map(|t| {
        if t.len() == 36 {
            uuid::Uuid::try_parse(&t).map_err(D::Error::custom)
        } else {
            Err(D::Error::custom(format!(
                "{t:?} is not a hyphenated UUID (8-4-4-4-12 hexadecimal digits)"
            )))
        }
    })
    .transpose()
}

/// The pattern of [`opt_hyphenated_uuid`].
pub const UUID_PATTERN: &str =
    "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::int")]
        small: i32,
        #[serde(default, deserialize_with = "super::opt_int")]
        maybe: Option<i64>,
        #[serde(default, deserialize_with = "super::opt_hyphenated_uuid")]
        id: Option<uuid::Uuid>,
    }

    fn read(json: &str) -> Result<T, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_numbers_are_integers_and_fractions_or_overflow_are_not() {
        let t = read(r#"{"small": 5.0, "maybe": -7}"#).unwrap();
        assert_eq!((t.small, t.maybe), (5, Some(-7)));
        assert_eq!(read(r#"{"small": 2147483647}"#).unwrap().small, i32::MAX);
        assert_eq!(read(r#"{"small": 1, "maybe": null}"#).unwrap().maybe, None);
        assert_eq!(read(r#"{"small": 1}"#).unwrap().maybe, None);
        assert_eq!(
            read(r#"{"small": 1, "maybe": 9223372036854775807}"#)
                .unwrap()
                .maybe,
            Some(i64::MAX)
        );
        // The messages say what was expected.
        assert!(read(r#"{"small": "5"}"#)
            .unwrap_err()
            .contains("expected an integer"));
        let e = read(r#"{"small": 1, "maybe": "5"}"#).unwrap_err();
        assert!(e.contains("expected an integer"), "{e}");
        for bad in [
            r#"{"small": 5.5}"#,
            r#"{"small": 2147483648}"#,
            r#"{"small": -2147483649.0}"#,
            r#"{"small": "5"}"#,
            r#"{"small": null}"#,
            r#"{"small": 1e300}"#,
            r#"{"small": 1, "maybe": 9223372036854775808}"#,
            r#"{"small": 1, "maybe": 0.5}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uuids_are_read_in_the_hyphenated_form_only() {
        let id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        let t = read(&format!(r#"{{"small": 1, "id": "{id}"}}"#)).unwrap();
        assert_eq!(t.id.unwrap().to_string(), id);
        for bad in [
            "67e5504410b1426f9247bb680e5fe0c8",
            "",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
        ] {
            assert!(
                read(&format!(r#"{{"small": 1, "id": "{bad}"}}"#)).is_err(),
                "{bad}"
            );
        }
        let pattern_len = 8 + 4 + 4 + 4 + 12 + 4;
        assert_eq!(id.len(), pattern_len);
    }
}
