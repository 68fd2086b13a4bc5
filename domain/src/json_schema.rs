//! JSON Schemas of the rules the domain's parsed types enforce, for the API's OpenAPI document.
//!
//! Each schema is built from the same constants as the check it describes, so the document
//! cannot promise less or more than the server enforces. Patterns are ECMA-262 that Python's
//! `re` reads the same way (schemathesis checks the document against the server with it).

use std::ops::RangeInclusive;

use utoipa::openapi::schema::{ArrayBuilder, ArrayItems, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};

use crate::ids::MAX_DEVICE_ID_LEN;

/// The characters Rust's `str::trim` removes (Unicode `White_Space`), spelled out because
/// regular expression dialects disagree on `\s` (Python counts U+001C..U+001F as space).
const BLANK: &str = r"\t\n\x0B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// Text that is not blank and holds no NUL character (PostgreSQL cannot store one).
fn non_blank_pattern() -> String {
    format!(r"^[^\u0000]*[^\u0000{BLANK}][^\u0000]*$")
}

/// Non-blank text of at most `max` characters, without NUL.
#[must_use]
pub fn text(max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(non_blank_pattern()))
}

/// A release id of the catalogue: a letter or digit, then letters, digits and `.` `_` `-`.
#[must_use]
pub fn release_id() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"))
}

/// Makes a schema also accept `null` (an `Option` that serde reads from `null`).
#[must_use]
pub fn or_null(schema: ObjectBuilder, ty: Type) -> ObjectBuilder {
    schema.schema_type(SchemaType::from_iter([ty, Type::Null]))
}

/// A device, gateway or rollout id: ASCII letters, digits and `.` `_` `:` `-`.
#[must_use]
pub fn device_id() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_DEVICE_ID_LEN))
        .pattern(Some(r"^[A-Za-z0-9._:-]+$"))
}

/// A semantic version: `MAJOR.MINOR.PATCH` of digits, then anything after `-` or `+`.
#[must_use]
pub fn semver() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(crate::version::MAX_SEMVER_LEN))
        .pattern(Some(r"^[0-9]+\.[0-9]+\.[0-9]+([-+][^\u0000]*)?$"))
}

/// A SHA-256 digest: 64 hexadecimal digits (either case; stored in lowercase).
#[must_use]
pub fn sha256() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^[0-9A-Fa-f]{64}$"))
}

/// An integer in an inclusive range.
#[must_use]
pub fn integer(range: &RangeInclusive<i64>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(*range.start()))
        .maximum(Some(*range.end()))
}

/// A number in an inclusive range.
#[must_use]
pub fn number(range: &RangeInclusive<f64>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .minimum(Some(*range.start()))
        .maximum(Some(*range.end()))
}

/// One of the given words.
#[must_use]
pub fn one_of_words<'a>(words: impl IntoIterator<Item = &'a str>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(words))
}

/// An array of `item`s.
#[must_use]
pub fn array_of(item: impl Into<RefOr<Schema>>, max: Option<usize>) -> ArrayBuilder {
    ArrayBuilder::new()
        .items(ArrayItems::RefOrSchema(Box::new(item.into())))
        .max_items(max)
}

/// `object` with the given description, refusing properties it does not name.
#[must_use]
pub fn closed_object(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(
            utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern must say "blank" exactly where `str::trim` leaves nothing.
    #[test]
    fn the_blank_class_is_what_trim_removes() {
        let listed: Vec<char> = (0..=0x3000u32)
            .filter_map(char::from_u32)
            .filter(|c| c.is_whitespace())
            .collect();
        let expected = [
            '\t', '\n', '\u{b}', '\u{c}', '\r', ' ', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}',
            '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}',
            '\u{2008}', '\u{2009}', '\u{200a}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}',
            '\u{3000}',
        ];
        assert_eq!(listed, expected);
        assert!(non_blank_pattern().contains(BLANK));
    }
}
