//! Wire codecs.
//!
//! - **Avro single-object encoding** (default): `C3 01`, the 8-byte little-endian CRC-64-AVRO
//!   fingerprint of the writer schema, then the Avro binary datum. Any Avro library can read it with
//!   only the `.avsc` file.
//! - **Confluent Schema Registry framing** (option): `00`, a 4-byte big-endian schema id, the datum.
//! - **JSON** for decisions from producers that cannot speak Avro (`content-type: application/json`).
//!
//! Decoding accepts both binary framings whatever the configured writer format, so a topic can be
//! migrated from one to the other without stopping readers. A datum written with another version of a
//! schema is decoded with that *writer* schema and mapped onto the Rust type by field name: added
//! fields with defaults are filled in, removed ones skipped (Avro's evolution rules).
//!
//! Decoding is exact: bytes after the datum are an error. Datums of this build's schemas are read
//! and written by `Record::read_datum`/`write_datum`: hand-written for the router's hot records
//! (`datum.rs`), `serde_avro_fast` for the others and for other writer schemas.

use std::{collections::HashMap, path::Path, sync::Arc};

use serde_avro_fast::{ser::SerializerConfig, Schema};

use crate::{record::Record, registry::RegistryClient, CodecError};

const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
const SINGLE_OBJECT_HEADER_LEN: usize = 10;
const CONFLUENT_MAGIC: u8 = 0;
const CONFLUENT_HEADER_LEN: usize = 5;

/// How records are framed when written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireFormat {
    #[default]
    SingleObject,
    ConfluentRegistry,
}

/// Encodes and decodes contract records. Cheap to share (`Arc` inside).
#[derive(Debug, Clone, Default)]
pub struct Codec {
    format: WireFormat,
    registry: Option<Arc<RegistryClient>>,
    /// Writer schemas other than the compiled-in ones (other versions), by fingerprint.
    extra_writer_schemas: Arc<HashMap<[u8; 8], Arc<Schema>>>,
}

impl Codec {
    /// Single-object encoding, no registry.
    pub fn single_object() -> Self {
        Self::default()
    }

    /// Confluent framing through a registry.
    pub fn confluent(registry: Arc<RegistryClient>) -> Self {
        Self {
            format: WireFormat::ConfluentRegistry,
            registry: Some(registry),
            extra_writer_schemas: Arc::default(),
        }
    }

    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// Makes another version of a schema known as a writer schema, so records framed with its
    /// fingerprint can be read.
    pub fn with_writer_schema(mut self, schema_json: &str) -> Result<Self, CodecError> {
        let schema: Schema =
            schema_json
                .parse()
                .map_err(|error: serde_avro_fast::schema::SchemaError| {
                    CodecError::Schema(error.to_string())
                })?;
        let mut schemas = (*self.extra_writer_schemas).clone();
        schemas.insert(*schema.rabin_fingerprint(), Arc::new(schema));
        self.extra_writer_schemas = Arc::new(schemas);
        Ok(self)
    }

    /// Loads every `*.avsc` file of a directory as a known writer schema.
    pub fn with_writer_schema_dir(mut self, dir: &Path) -> Result<Self, CodecError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|error| CodecError::Schema(format!("{}: {error}", dir.display())))?;
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "avsc"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path)
                .map_err(|error| CodecError::Schema(format!("{}: {error}", path.display())))?;
            self = self
                .with_writer_schema(&text)
                .map_err(|error| CodecError::Schema(format!("{}: {error}", path.display())))?;
        }
        Ok(self)
    }

    /// Appends the framed encoding of `value` to `out`. `topic` names the registry subject
    /// (`<topic>-value`) in Confluent mode.
    pub fn encode<T: Record>(
        &self,
        topic: &str,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        self.write_header::<T>(topic, out)?;
        value.write_datum(out)
    }

    /// The framed encoding of `value` in a new buffer.
    pub fn encode_to_vec<T: Record>(&self, topic: &str, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        self.encode(topic, value, &mut out)?;
        Ok(out)
    }

    /// Decodes a framed record of type `T`.
    pub fn decode<T: Record>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        if bytes.starts_with(&SINGLE_OBJECT_MAGIC) {
            let header = bytes
                .get(..SINGLE_OBJECT_HEADER_LEN)
                .ok_or_else(|| CodecError::Framing("single-object header is cut short".into()))?;
            let fingerprint: [u8; 8] = header[2..].try_into().expect("8 bytes");
            let datum = &bytes[SINGLE_OBJECT_HEADER_LEN..];
            if &fingerprint == T::schema().rabin_fingerprint() {
                return T::read_datum(datum);
            }
            let writer = self.extra_writer_schemas.get(&fingerprint).ok_or_else(|| {
                CodecError::UnknownSchema(format!(
                    "fingerprint {} is not {} nor a known writer schema",
                    hex_string(&fingerprint),
                    T::FULL_NAME
                ))
            })?;
            return serde_read_datum(datum, writer, T::FULL_NAME);
        }
        if bytes.first() == Some(&CONFLUENT_MAGIC) {
            let header = bytes
                .get(..CONFLUENT_HEADER_LEN)
                .ok_or_else(|| CodecError::Framing("Confluent header is cut short".into()))?;
            let id = u32::from_be_bytes(header[1..].try_into().expect("4 bytes"));
            let registry = self.registry.as_ref().ok_or(CodecError::NoRegistry)?;
            let writer = registry
                .schema_by_id(id)
                .map_err(|error| CodecError::UnknownSchema(format!("schema id {id}: {error}")))?;
            let datum = &bytes[CONFLUENT_HEADER_LEN..];
            if writer.rabin_fingerprint() == T::schema().rabin_fingerprint() {
                return T::read_datum(datum);
            }
            return serde_read_datum(datum, &writer, T::FULL_NAME);
        }
        Err(CodecError::Framing(match bytes.first() {
            None => "empty record".into(),
            Some(byte) => {
                format!("unknown framing: first byte 0x{byte:02x} (expected C3 01 or 00)")
            }
        }))
    }

    /// The Avro datum of a record this codec framed (its header removed).
    pub fn datum<'a>(&self, framed: &'a [u8]) -> &'a [u8] {
        if framed.starts_with(&SINGLE_OBJECT_MAGIC) {
            framed.get(SINGLE_OBJECT_HEADER_LEN..).unwrap_or_default()
        } else if framed.first() == Some(&CONFLUENT_MAGIC) {
            framed.get(CONFLUENT_HEADER_LEN..).unwrap_or_default()
        } else {
            framed
        }
    }

    pub(crate) fn write_header<T: Record>(
        &self,
        topic: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        match self.format {
            WireFormat::SingleObject => {
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(T::schema().rabin_fingerprint());
            }
            WireFormat::ConfluentRegistry => {
                let registry = self.registry.as_ref().ok_or(CodecError::NoRegistry)?;
                let id = registry.register(&format!("{topic}-value"), T::SCHEMA_JSON)?;
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        Ok(())
    }

    /// Decodes a JSON record (fields by name, defaults applied). The error never quotes the
    /// input's values (`json_error_without_values`).
    pub fn decode_json<T: Record>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes)
            .map_err(|error| CodecError::Json(json_error_without_values(&error)))
    }
}

/// serde_json's message, without the values of the input it quotes: `invalid type: string
/// "<value>", expected a map` becomes `invalid type: string, expected a map`, and an unknown
/// variant is not named. The value may be a sensitive one (a `context` sent as a string), and the
/// message goes to logs, dead-letter headers and spans. Field names, positions and syntax errors
/// are kept.
fn json_error_without_values(error: &serde_json::Error) -> String {
    let message = error.to_string();
    for prefix in ["invalid type: ", "invalid value: ", "unknown variant "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        // The expectation comes from the schema, never from the input: the last one is it.
        let (unexpected, expected) = rest
            .rfind(", expected ")
            .map_or((rest, ""), |end| rest.split_at(end));
        let kind = unexpected
            .split(['"', '`'])
            .next()
            .unwrap_or_default()
            .trim_end();
        return format!("{}{expected}", format!("{prefix}{kind}").trim_end());
    }
    message
}

/// The `serde_avro_fast` encoding of `value` with `schema`.
pub(crate) fn serde_write_datum<T: serde::Serialize + ?Sized>(
    value: &T,
    schema: &Schema,
    full_name: &str,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let mut config = SerializerConfig::new(schema);
    serde_avro_fast::to_datum(value, &mut *out, &mut config)
        .map_err(|error| CodecError::Encode(format!("{full_name}: {error}")))?;
    Ok(())
}

/// Reads exactly one datum written with `writer` through `serde_avro_fast`, mapping its fields onto
/// `T` by name; bytes left over are an error.
pub(crate) fn serde_read_datum<T: serde::de::DeserializeOwned>(
    datum: &[u8],
    writer: &Schema,
    full_name: &str,
) -> Result<T, CodecError> {
    use std::io::BufRead;
    let mut state = serde_avro_fast::de::DeserializerState::from_slice(datum, writer);
    let value = T::deserialize(state.deserializer())
        .map_err(|error| CodecError::Avro(format!("{full_name}: {error}")))?;
    let left = state.into_reader().fill_buf().map_or(0, |rest| rest.len());
    if left > 0 {
        return Err(CodecError::Avro(format!(
            "{full_name}: {left} trailing bytes after the datum"
        )));
    }
    Ok(value)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
