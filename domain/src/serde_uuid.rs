//! UUIDs travel as Avro `string` with logical type `uuid`; the Avro serializer is not
//! human-readable, so `Uuid`'s own impl would pick bytes. These helpers force the string form.

use serde::{Deserialize, Deserializer, Serializer};
use uuid::Uuid;

pub fn serialize<S: Serializer>(id: &Uuid, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&id.hyphenated())
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
    let text = String::deserialize(d)?;
    Uuid::parse_str(&text).map_err(serde::de::Error::custom)
}

pub mod option {
    use super::*;

    #[allow(clippy::ref_option)] // serde's `with` hands us `&Option<T>`
    pub fn serialize<S: Serializer>(id: &Option<Uuid>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_some(&id.hyphenated().to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| Uuid::parse_str(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}
