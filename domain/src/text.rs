//! Text newtypes that can only be made by parsing: [`parsed_text!`] gives each the same
//! conversions (`FromStr`, `TryFrom<String>`/`<&str>`, `Display`, `AsRef<str>`, into `String`,
//! serde through `try_from`), so that holding one proves its text passed the check.

/// Implements the conversions of a `struct $name(String)` whose text `$parse` checks (and may
/// normalise): `fn(String) -> Result<String, $err>`.
macro_rules! parsed_text {
    ($name:ident, $err:ty, $parse:expr) => {
        impl $name {
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }

            #[must_use]
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $err;

            fn try_from(text: String) -> Result<Self, $err> {
                let parse: fn(String) -> Result<String, $err> = $parse;
                parse(text).map($name)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = $err;

            fn try_from(text: &str) -> Result<Self, $err> {
                Self::try_from(text.to_owned())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $err;

            fn from_str(text: &str) -> Result<Self, $err> {
                Self::try_from(text)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

pub(crate) use parsed_text;
