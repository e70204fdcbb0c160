//! What a processor's hooks return when they fail, classified by the action the loop takes, and
//! why the loop stops.

use hitl_schema::CodecError;
use rdkafka::error::KafkaError;

/// Any error, boxed (a hook's transient or fatal cause).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An input record no retry will ever process: the loop writes it to the dead-letter topic
/// (`LoopSettings::dead_letter_topic`) with the contract's headers and goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("poison record ({class}, at {stage}): {message}")]
pub struct Poison {
    /// `hitl.error.stage`: where it went wrong (`decode`, `validate`, `route`, …).
    pub stage: String,
    /// `hitl.error.class`: a low-cardinality name of the error (`decode.avro`, `encode.encode`, …).
    pub class: String,
    /// `hitl.error.message`.
    pub message: String,
}

/// Why a processor hook failed, by the action the loop takes.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The input record is bad: every output the hook pushed for it is discarded, the record goes
    /// to the dead-letter topic, its offset commits with the transaction, the loop goes on. The
    /// processor must have left its state as if the record were consumed. Only `process` may
    /// return it.
    #[error(transparent)]
    Poison(#[from] Poison),
    /// Something outside is briefly unavailable (the broker, the schema registry): the loop
    /// aborts the open transaction, rewinds its inputs, calls `aborted`, backs off (exponentially,
    /// capped) and reads the same input again.
    #[error("transient: {0}")]
    Transient(#[source] BoxError),
    /// Nothing a retry would fix (a bug, state that cannot be rebuilt): the loop aborts the open
    /// transaction and stops with an error, so the service flushes its telemetry and exits
    /// non-zero, and its supervisor restarts it.
    #[error("fatal: {0}")]
    Fatal(#[source] BoxError),
}

impl ProcessError {
    pub fn poison(
        stage: impl Into<String>,
        class: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Poison(Poison {
            stage: stage.into(),
            class: class.into(),
            message: message.into(),
        })
    }

    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::Transient(error.into())
    }

    pub fn fatal(error: impl Into<BoxError>) -> Self {
        Self::Fatal(error.into())
    }

    /// An output (`what`) could not be encoded. An unreachable schema registry is transient; any
    /// other failure to encode a value the service built from validated input is a bug, so fatal:
    /// the output is never dropped while its input's offset commits.
    pub fn output_encoding(what: &'static str, error: CodecError) -> Self {
        let transient = is_transient_codec_error(&error);
        let error = OutputEncodeError {
            what,
            source: error,
        };
        if transient {
            Self::transient(error)
        } else {
            Self::fatal(error)
        }
    }
}

/// A codec error a retry may fix: the schema registry did not answer (or refused, which a retry
/// shows as a repeated warning rather than a lost record).
pub fn is_transient_codec_error(error: &CodecError) -> bool {
    matches!(error, CodecError::Registry(_))
}

/// An output the processor built could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what}: {source}")]
pub struct OutputEncodeError {
    pub what: &'static str,
    #[source]
    pub source: CodecError,
}

/// Why the loop stopped with an error: only fatal conditions end up here.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("cannot create Kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("fatal Kafka error: {0}")]
    Fatal(#[source] KafkaError),
    #[error(
        "the broker does not support Kafka transactions ({0}); set kafka.delivery = \"idempotent\" \
         (HITL_KAFKA__DELIVERY=idempotent) for brokers without transactions"
    )]
    TransactionsUnsupported(#[source] KafkaError),
    /// A hook returned a fatal error (or an error where only fatal ones make sense: `tick` has no
    /// input to dead-letter; after a failed `aborted` or `partitions_assigned` the processor's
    /// state is unknown).
    #[error("the processor's {hook} hook failed: {source}")]
    Processor {
        hook: &'static str,
        #[source]
        source: ProcessError,
    },
    #[error("a poison record, and no dead-letter topic to put it in: {0}")]
    NoDeadLetterTopic(#[source] Poison),
}
