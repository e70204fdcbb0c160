//! The records a processor reads and writes.

use rdkafka::{
    message::{BorrowedMessage, Headers},
    Message,
};

/// One input record, borrowed from the consumer.
pub struct InputRecord<'a> {
    message: &'a BorrowedMessage<'a>,
}

impl<'a> InputRecord<'a> {
    pub(super) fn new(message: &'a BorrowedMessage<'a>) -> Self {
        Self { message }
    }
    pub fn topic(&self) -> &str {
        self.message.topic()
    }
    pub fn partition(&self) -> i32 {
        self.message.partition()
    }
    pub fn offset(&self) -> i64 {
        self.message.offset()
    }
    pub fn key(&self) -> Option<&[u8]> {
        self.message.key()
    }
    pub fn payload(&self) -> Option<&[u8]> {
        self.message.payload()
    }
    pub fn timestamp_millis(&self) -> Option<i64> {
        self.message.timestamp().to_millis()
    }
    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let headers = self.message.headers()?;
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
    }
}

/// One record to produce inside the current transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Explicit partition; `None` lets the partitioner hash the key.
    pub partition: Option<i32>,
    /// State that must never get ahead of the outputs it accounts for (a changelog entry, an audit
    /// record a restore reads back). With `Delivery::Idempotent` such records are sent only once
    /// every other record of the commit is acknowledged, so a crash in between repeats outputs
    /// (removed downstream by key) instead of losing them. Transactions need no ordering.
    pub last: bool,
}

impl OutputRecord {
    pub fn new(topic: impl Into<String>, key: impl Into<Vec<u8>>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            payload: Some(payload),
            headers: Vec::new(),
            partition: None,
            last: false,
        }
    }
    /// The contract's dead letter of `input`: its key and bytes, unchanged, to `dlq_topic`, with the
    /// `hitl.error.*` and `hitl.source.*` headers.
    pub fn dead_letter(
        dlq_topic: &str,
        input: &InputRecord<'_>,
        stage: &str,
        class: &str,
        message: &str,
    ) -> Self {
        Self {
            topic: dlq_topic.to_owned(),
            key: input.key().unwrap_or_default().to_vec(),
            payload: input.payload().map(<[u8]>::to_vec),
            headers: Vec::new(),
            partition: None,
            last: false,
        }
        .with_header("hitl.error.class", class)
        .with_header("hitl.error.message", message)
        .with_header("hitl.error.stage", stage)
        .with_header("hitl.source.topic", input.topic())
        .with_header("hitl.source.partition", input.partition().to_string())
        .with_header("hitl.source.offset", input.offset().to_string())
    }
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}
