//! hitl's record types, their Avro schemas (`schemas/*.avsc`, compiled in) and wire codecs.

mod binary;
mod codec;
mod datum;
mod record;
mod registry;
pub mod sample;
mod splice;
pub mod types;

pub use codec::{Codec, WireFormat};
pub use record::{all_schemas, Record};
pub use registry::RegistryClient;
pub use splice::Encoded;
pub use types::*;

/// Why a record could not be encoded or decoded. `class()` names the error for DLQ headers and
/// metrics.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("bad framing: {0}")]
    Framing(String),
    #[error("unknown writer schema: {0}")]
    UnknownSchema(String),
    #[error("undecodable Avro datum: {0}")]
    Avro(String),
    #[error("undecodable JSON: {0}")]
    Json(String),
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("bad schema: {0}")]
    Schema(String),
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("Confluent framing needs a schema registry, and none is configured")]
    NoRegistry,
}

impl CodecError {
    /// A stable, low-cardinality name for the kind of error.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Framing(_) => "framing",
            Self::UnknownSchema(_) => "unknown_schema",
            Self::Avro(_) => "avro",
            Self::Json(_) => "json",
            Self::Encode(_) => "encode",
            Self::Schema(_) => "schema",
            Self::Registry(_) | Self::NoRegistry => "registry",
        }
    }
}
