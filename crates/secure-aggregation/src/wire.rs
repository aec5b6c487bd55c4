//! Binary fields of the JSON messages, as standard base64: keys, ciphertexts, shares and the
//! masked vector (unsigned 64-bit little-endian words).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serializer};

fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    STANDARD
        .decode(text.as_bytes())
        .map_err(|e| serde::de::Error::custom(format!("not standard base64: {e}")))
}

/// `Vec<u8>` as base64.
pub mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        text(deserializer)
    }
}

/// A participant index (`u32`) read from an integer or from a float without a fraction: JSON
/// Schema's `integer`, which the published OpenAPI document uses, admits `3.0`.
pub mod index {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        struct Whole;
        impl serde::de::Visitor<'_> for Whole {
            type Value = u32;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a participant index: a whole number in 0..=4294967295")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
                u32::try_from(v).map_err(|_| E::custom(format!("{v} is not a participant index")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
                u32::try_from(v).map_err(|_| E::custom(format!("{v} is not a participant index")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u32, E> {
                if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
                    Ok(v as u32)
                } else {
                    Err(E::custom(format!("{v} is not a participant index")))
                }
            }
        }
        deserializer.deserialize_any(Whole)
    }
}

/// `[u8; 32]` (a public key or a commitment) as base64.
pub mod key {
    use super::*;

    pub fn serialize<S: Serializer>(value: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let bytes = text(deserializer)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::custom(format!("{} bytes, expected 32", bytes.len())))
    }
}

/// `Vec<u64>` as the base64 of its little-endian bytes (8 bytes a word, a third of decimal
/// JSON's size for random ring elements).
pub mod words {
    use super::*;

    pub fn serialize<S: Serializer>(value: &[u64], serializer: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = value.iter().flat_map(|w| w.to_le_bytes()).collect();
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u64>, D::Error> {
        let bytes = text(deserializer)?;
        if bytes.len() % 8 != 0 {
            return Err(serde::de::Error::custom(format!(
                "{} bytes is not a whole number of 64-bit words",
                bytes.len()
            )));
        }
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
            .collect())
    }
}

/// The JSON Schemas of the encodings above, named as the OpenAPI document of `fedsyn serve`
/// names them (`#/components/schemas/Bytes32`, …): the message types point their fields here.
pub mod schema {
    use std::borrow::Cow;

    use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

    /// Declares a unit type whose schema is the given JSON, under the type's name.
    macro_rules! named_schema {
        ($(#[$doc:meta])* $name:ident, $schema:tt) => {
            $(#[$doc])*
            pub struct $name;

            impl JsonSchema for $name {
                fn schema_name() -> Cow<'static, str> {
                    stringify!($name).into()
                }

                fn json_schema(_: &mut SchemaGenerator) -> Schema {
                    json_schema!($schema)
                }
            }
        };
    }

    named_schema!(
        /// 32 bytes ([`super::key`]): canonical padded base64 of 44 characters.
        Bytes32,
        {
            "type": "string", "contentEncoding": "base64",
            "pattern": "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
            "description": "32 bytes in canonical standard base64 (44 characters; unused bits zero)"
        }
    );

    named_schema!(
        /// Any bytes ([`super::bytes`]).
        Base64,
        {
            "type": "string", "contentEncoding": "base64",
            "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$",
            "description": "Bytes in canonical standard base64 (padded; unused bits zero)"
        }
    );

    named_schema!(
        /// 64-bit words ([`super::words`]): a whole number of 8-byte groups.
        Words64,
        {
            "type": "string", "contentEncoding": "base64",
            "pattern": "^(?:[A-Za-z0-9+/]{32})*(?:[A-Za-z0-9+/]{10}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/]{21}[AQgw]==)?$",
            "description": "Unsigned 64-bit words, little-endian, in canonical standard base64 (a whole number of 8-byte words)"
        }
    );

    named_schema!(
        /// A participant's index ([`super::index`]): 32-bit unsigned, `3.0` read as 3.
        Index,
        {
            "type": "integer", "minimum": 0, "maximum": 4294967295u32,
            "description": "A participant's index in the session (32-bit unsigned)"
        }
    );
}
