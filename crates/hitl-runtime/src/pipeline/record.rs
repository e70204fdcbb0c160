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
    /// When the broker appended it: the record's timestamp on a `LogAppendTime` topic; `None` on
    /// a `CreateTime` topic, where the timestamp is whatever its writer chose.
    pub fn append_time_millis(&self) -> Option<i64> {
        match self.message.timestamp() {
            rdkafka::Timestamp::LogAppendTime(millis) => Some(millis),
            _ => None,
        }
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
    /// The bytes this record takes in a batch, near enough: key, value, header names and values.
    pub fn size(&self) -> usize {
        self.key.len()
            + self.payload.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }

    /// Signs this record (its key and value) as `kind` with `signer`: the `hitl-auth` header.
    pub fn sign(&mut self, signer: &crate::auth::Signer, kind: crate::auth::Kind) {
        let header = signer.sign(kind, Some(&self.key), self.payload.as_deref());
        self.headers
            .push((crate::auth::HEADER.to_owned(), header.into_bytes()));
    }

    /// Whether this is a dead letter (it has the contract's `hitl.error.class` header).
    pub fn is_dead_letter(&self) -> bool {
        self.headers
            .iter()
            .any(|(name, _)| name == "hitl.error.class")
    }

    /// Makes a dead letter fit `limit` bytes: a longer value is cut to what fits, and the headers
    /// `hitl.error.truncated` (the original length) and `hitl.source.sha256` (of the whole original
    /// value) say so; header values are cut to 4 KiB. The key is kept whole only up to 4 KiB too.
    pub fn fit_dead_letter(&mut self, limit: usize) {
        if self.size() <= limit {
            return;
        }
        const MAX_FIELD: usize = 4 * 1024;
        for (_, value) in &mut self.headers {
            value.truncate(MAX_FIELD);
        }
        self.key.truncate(MAX_FIELD);
        if let Some(payload) = &mut self.payload {
            use sha2::Digest;
            let original = payload.len();
            let digest = hex::encode(sha2::Sha256::digest(&payload[..]));
            let room = limit.saturating_sub(
                self.key.len() + 256 + {
                    self.headers
                        .iter()
                        .map(|(name, value)| name.len() + value.len())
                        .sum::<usize>()
                },
            );
            payload.truncate(room);
            self.headers
                .push(("hitl.error.truncated".into(), original.to_string().into()));
            self.headers
                .push(("hitl.source.sha256".into(), digest.into()));
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}
