//! Reads what `verify` checks from the topics: every partition, from the start, in log order.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use hitl_runtime::{
    config::KafkaSettings,
    kafka::{self, ReadError},
};
use hitl_schema::{Codec, Decision, Outcome};
use rdkafka::{message::Headers, Message};

use crate::verify::Logged;

/// Every record of `topic`, in log order per partition.
pub fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Logged>, ReadError> {
    let mut records = Vec::new();
    kafka::read_topic(settings, topic, timeout, |message| {
        records.push(Logged {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: message.payload().map(<[u8]>::to_vec),
        });
    })?;
    // The consumer interleaves partitions; each partition's order is kept.
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// The id of every decision received on `topic` that has one (Avro or JSON; undecodable records
/// carry no id and have no trail).
pub fn decision_ids(
    settings: &KafkaSettings,
    topic: &str,
    codec: &Codec,
    timeout: Duration,
) -> Result<BTreeSet<String>, ReadError> {
    Ok(decisions(settings, topic, codec, timeout)?
        .into_keys()
        .collect())
}

/// Every decision received on `topic` that has an id (Avro or JSON), by id in log order.
pub fn decisions(
    settings: &KafkaSettings,
    topic: &str,
    codec: &Codec,
    timeout: Duration,
) -> Result<BTreeMap<String, Vec<Decision>>, ReadError> {
    let mut ids: BTreeMap<String, Vec<Decision>> = BTreeMap::new();
    kafka::read_topic(settings, topic, timeout, |message| {
        let Some(payload) = message.payload() else {
            return;
        };
        let json = message
            .headers()
            .and_then(|headers| headers.iter().find(|h| h.key == "content-type"))
            .and_then(|h| h.value)
            .is_some_and(|v| v.starts_with(b"application/json"));
        let decoded = if json {
            codec.decode_json::<Decision>(payload)
        } else {
            codec.decode::<Decision>(payload)
        };
        if let Ok(decision) = decoded {
            if !decision.decision_id.trim().is_empty() {
                ids.entry(decision.decision_id.clone())
                    .or_default()
                    .push(decision);
            }
        }
    })?;
    Ok(ids)
}

/// Every outcome published on `topic`.
pub fn outcomes(
    settings: &KafkaSettings,
    topic: &str,
    codec: &Codec,
    timeout: Duration,
) -> Result<Vec<Outcome>, ReadError> {
    let mut outcomes = Vec::new();
    kafka::read_topic(settings, topic, timeout, |message| {
        if let Some(Ok(outcome)) = message.payload().map(|p| codec.decode::<Outcome>(p)) {
            outcomes.push(outcome);
        }
    })?;
    Ok(outcomes)
}
