//! Kafka client setup: one place that turns `KafkaSettings` into librdkafka configs, and topic
//! bootstrap.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
    types::RDKafkaErrorCode,
    ClientConfig,
};

use crate::config::{Delivery, GroupProtocol, KafkaSettings, TopicSpec};

/// Settings common to every client: brokers, security, then the raw overrides.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set(
            "security.protocol",
            settings.security_protocol.as_librdkafka(),
        );
    if let Some(mechanism) = &settings.sasl_mechanism {
        config.set("sasl.mechanisms", mechanism);
    }
    if let Some(username) = &settings.sasl_username {
        config.set("sasl.username", username);
    }
    if let Some(password) = &settings.sasl_password {
        config.set("sasl.password", password.expose());
    }
    for (key, path) in [
        ("ssl.ca.location", &settings.ssl_ca_location),
        (
            "ssl.certificate.location",
            &settings.ssl_certificate_location,
        ),
        ("ssl.key.location", &settings.ssl_key_location),
    ] {
        if let Some(path) = path {
            config.set(key, path.to_string_lossy());
        }
    }
    if let Some(password) = &settings.ssl_key_password {
        config.set("ssl.key.password", password.expose());
    }
    config
}

fn apply_overrides(config: &mut ClientConfig, settings: &KafkaSettings) {
    for (key, value) in &settings.librdkafka {
        config.set(key, value);
    }
}

/// The consumer of a service loop: manual offsets (committed with the outputs), `read_committed`,
/// the configured group protocol and assignor, and (with static membership, classic protocol)
/// `group.instance.id` = `instance_id`, so a restarted instance takes its partitions back without a
/// rebalance.
pub fn loop_consumer_config(
    settings: &KafkaSettings,
    group_id: &str,
    instance_id: &str,
) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("group.id", group_id)
        .set("group.protocol", settings.group_protocol.as_librdkafka())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    match settings.group_protocol {
        GroupProtocol::Classic => {
            config
                .set("session.timeout.ms", millis(settings.session_timeout))
                .set(
                    "heartbeat.interval.ms",
                    millis(settings.session_timeout / 3),
                )
                .set(
                    "partition.assignment.strategy",
                    &settings.partition_assignment_strategy,
                );
        }
        // The broker owns sessions, heartbeats and assignment under KIP-848; librdkafka refuses
        // the classic settings.
        GroupProtocol::Consumer => {
            config.set("group.remote.assignor", &settings.group_remote_assignor);
        }
    }
    // Under KIP-848 a member that joins with the `group.instance.id` of a member the broker still
    // counts as alive (one killed without leaving) is refused with the fatal
    // UNRELEASED_INSTANCE_ID until that member's session ends, so a supervisor's immediate
    // restart would fail; dynamic membership joins at once and gets the partitions when the dead
    // member's session ends. Static membership is therefore a classic-protocol setting.
    if settings.static_membership && settings.group_protocol == GroupProtocol::Classic {
        config.set("group.instance.id", instance_id);
    }
    apply_overrides(&mut config, settings);
    config
}

/// The producer of a service loop: transactional with a stable `transactional.id`, or idempotent.
pub fn loop_producer_config(settings: &KafkaSettings, transactional_id: &str) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .set("message.max.bytes", settings.message_max_bytes.to_string());
    if settings.delivery == Delivery::Transactional {
        config.set("transactional.id", transactional_id).set(
            "transaction.timeout.ms",
            millis(settings.transaction_timeout),
        );
    }
    apply_overrides(&mut config, settings);
    config
}

/// A plain (idempotent, non-transactional) producer, for tools and load generators.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.max.bytes", settings.message_max_bytes.to_string());
    apply_overrides(&mut config, settings);
    config
}

/// A consumer that reads topics without a group (manual assignment), for tools and tests.
pub fn reader_config(settings: &KafkaSettings, isolation_read_committed: bool) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("group.id", "hitl-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            if isolation_read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    apply_overrides(&mut config, settings);
    config
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
/// Returns the names it created.
///
/// A principal without the Create permission (under least-privilege ACLs the operator creates the
/// topics) is refused every topic, existing or not (TopicAuthorizationFailed): those are left to
/// the operator, not an error.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    specs: &[TopicSpec],
    replication_factor: i32,
) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings).create()?;
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            spec.configs.iter().fold(
                NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(settings.request_timeout));
    let results = admin.create_topics(new_topics.iter(), &options).await?;
    let mut created = Vec::new();
    let mut refused = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, RDKafkaErrorCode::TopicAuthorizationFailed)) => refused.push(name),
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = %name, error = %code, "cannot create topic");
                })
            }
        }
    }
    if !refused.is_empty() {
        // Under least-privilege ACLs the operator creates the topics. A principal without Create
        // cannot tell a missing topic from one it may not see: it goes on as with
        // `create_topics = false`.
        tracing::info!(
            topics = refused.len(),
            "not authorized to create topics: leaving them to the operator (`hitl-admin topics create`)"
        );
        tracing::debug!(topics = ?refused, "not authorized to create");
    }
    Ok(created)
}

/// Why a partition could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("reading {topic}[{partition}] took more than {timeout:?} ({records} records read)")]
    Timeout {
        topic: String,
        partition: i32,
        timeout: Duration,
        records: u64,
    },
}

/// The number of partitions of `topic` (0 if it does not exist).
pub fn partition_count(settings: &KafkaSettings, topic: &str) -> Result<i32, ReadError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = reader_config(settings, false).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), settings.request_timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32))
}

/// Reads one partition from its start to its end, calling `each` for every record in order, and
/// returns how many there were.
pub fn read_partition(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    timeout: Duration,
    each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<u64, ReadError> {
    read_to_end(settings, topic, &[partition], timeout, each)
}

/// Reads one partition from its first record stamped `from_millis` or later (the broker's
/// ListOffsets by time; from the start if it cannot answer), calling `each` for every record in
/// order until it returns `false` or the end. Returns how many records were read.
pub fn read_partition_since(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from_millis: i64,
    timeout: Duration,
    each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
) -> Result<u64, ReadError> {
    read_range(
        settings,
        topic,
        &[partition],
        Some(from_millis),
        None,
        timeout,
        each,
    )
}

/// Like [`read_partition_since`], but starts no further back than `at_most` offsets before the
/// partition's end: a bounded read of the most recent records stamped `from_millis` or later.
/// (Transaction markers take offsets too, so it may deliver a few less than `at_most`.)
pub fn read_partition_recent(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from_millis: i64,
    at_most: u64,
    timeout: Duration,
    each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
) -> Result<u64, ReadError> {
    read_range(
        settings,
        topic,
        &[partition],
        Some(from_millis),
        Some(at_most),
        timeout,
        each,
    )
}

/// Reads every partition of `topic` from its start to its end with one consumer, calling `each`
/// for every record (in order within a partition). Returns how many there were.
pub fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
    each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<u64, ReadError> {
    let partitions: Vec<i32> = (0..partition_count(settings, topic)?).collect();
    read_to_end(settings, topic, &partitions, timeout, each)
}

/// Reads `partitions` of `topic` from their start to their end.
///
/// The end is each partition's end offset as the reader sees it when it starts: the last stable
/// offset (LSO) when reading committed — everything below it is decided, committed or aborted —
/// else the high watermark. A record appended later is not part of this read. A partition is done
/// when a record at the end's last offset arrives, or when the consumer reports the partition's
/// end (`enable.partition.eof`): transaction markers and aborted records take offsets but are
/// never delivered, and a partition written by transactions ends with a marker, so "the last
/// record's offset + 1 reached the end" alone would wait for ever there.
fn read_to_end(
    settings: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<u64, ReadError> {
    read_range(
        settings,
        topic,
        partitions,
        None,
        None,
        timeout,
        |message| {
            each(message);
            true
        },
    )
}

/// The context of a reader that asked for partition-EOF events: reaching a partition's end is how
/// it knows it is done, not an error worth logging.
pub struct EndReaderContext;

impl rdkafka::ClientContext for EndReaderContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::debug!(%reason, "end of partition");
        } else {
            tracing::error!(%error, %reason, "librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndReaderContext {}

/// A partition's end offset (LSO or high watermark, per the reader's isolation level), asked
/// again while the cluster answers with a passing error: a partition created a moment ago, or one
/// whose leader is moving, has no leader in the metadata for a little while
/// (`NotLeaderForPartition`, `LeaderNotAvailable`, `UnknownTopicOrPartition`).
fn end_offset<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
    started: std::time::Instant,
    timeout: Duration,
) -> Result<i64, ReadError> {
    use rdkafka::consumer::Consumer;
    let mut backoff = Duration::from_millis(20);
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match consumer.fetch_watermarks(topic, partition, left) {
            Ok((_, end)) => return Ok(end),
            Err(error) if is_passing(&error) && started.elapsed() + backoff < timeout => {
                tracing::debug!(%error, %topic, partition, "no end offset yet; asking again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Errors that pass on their own while a partition gets (or changes) its leader.
fn is_passing(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            NotLeaderForPartition
                | LeaderNotAvailable
                | UnknownTopicOrPartition
                | UnknownPartition
                | RequestTimedOut
                | OperationTimedOut
                | BrokerTransportFailure
                | AllBrokersDown
        )
    )
}

/// `read_to_end`, starting at the first record stamped `from_millis` or later when given, no
/// further back than `at_most` offsets before the end when given, and stopping early when `each`
/// returns `false`.
fn read_range(
    settings: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
    from_millis: Option<i64>,
    at_most: Option<u64>,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
) -> Result<u64, ReadError> {
    use rdkafka::{
        consumer::{BaseConsumer, Consumer},
        Message, Offset, TopicPartitionList,
    };
    let started = std::time::Instant::now();
    if partitions.is_empty() {
        return Ok(0);
    }
    let consumer: BaseConsumer<EndReaderContext> = reader_config(
        settings,
        settings.delivery == crate::config::Delivery::Transactional,
    )
    .set("enable.partition.eof", "true")
    .create_with_context(EndReaderContext)?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::with_capacity(partitions.len());
    let read_committed = settings.delivery == crate::config::Delivery::Transactional;
    // Everything committed so far is the whole of the partition only once no transaction is
    // open on it: an open one (a crashed or paused writer's, until it commits, aborts or times
    // out) holds the last stable offset back, and records committed after it began by another
    // writer would be missed. Wait until the stable end reaches the end as it is now.
    let uncommitted: Option<BaseConsumer<EndReaderContext>> = if read_committed {
        Some(reader_config(settings, false).create_with_context(EndReaderContext)?)
    } else {
        None
    };
    for &partition in partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        let mut end = end_offset(&consumer, topic, partition, started, timeout)?;
        if let Some(uncommitted) = &uncommitted {
            let high = end_offset(uncommitted, topic, partition, started, timeout)?;
            let mut said = false;
            while end < high {
                if !said {
                    tracing::info!(%topic, partition, stable = end, high, "waiting for a transaction open on the partition to end before reading it");
                    said = true;
                }
                if started.elapsed() > timeout {
                    return Err(ReadError::Timeout {
                        topic: topic.to_owned(),
                        partition,
                        timeout,
                        records: 0,
                    });
                }
                std::thread::sleep(Duration::from_millis(200));
                end = end_offset(&consumer, topic, partition, started, timeout)?;
            }
        }
        ends.push(end);
    }
    if let Some(from_millis) = from_millis {
        let mut by_time = TopicPartitionList::new();
        for &partition in partitions {
            by_time.add_partition_offset(topic, partition, Offset::Offset(from_millis))?;
        }
        match consumer.offsets_for_times(by_time, timeout) {
            Ok(found) => {
                for element in found.elements() {
                    match element.offset() {
                        // Nothing stamped that late: nothing to read there.
                        Offset::End => return Ok(0),
                        Offset::Offset(offset) => assignment.set_partition_offset(
                            topic,
                            element.partition(),
                            Offset::Offset(offset),
                        )?,
                        _ => {}
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, %topic, "no offsets by time; reading from the start")
            }
        }
    }
    if let Some(at_most) = at_most {
        let at_most = i64::try_from(at_most).unwrap_or(i64::MAX);
        for (index, &partition) in partitions.iter().enumerate() {
            let floor = ends[index].saturating_sub(at_most).max(0);
            let start = assignment
                .find_partition(topic, partition)
                .map(|element| element.offset());
            // Offset::Beginning (no time given, or none found) is below any floor.
            let later = match start {
                Some(Offset::Offset(offset)) => offset.max(floor),
                _ => floor,
            };
            assignment.set_partition_offset(topic, partition, Offset::Offset(later))?;
        }
    }
    consumer.assign(&assignment)?;
    // A partition is read once a record at or past its end was delivered, or once the consumer
    // reported reaching the partition's current end (PartitionEOF: its fetch position reached the
    // LSO, which never moves back, so everything below our end was delivered or skipped as
    // aborted or a marker).
    let mut done: Vec<bool> = ends.iter().map(|&end| end <= 0).collect();
    let mut records = 0u64;
    loop {
        if done.iter().all(|&done| done) {
            return Ok(records);
        }
        if started.elapsed() > timeout {
            return Err(ReadError::Timeout {
                topic: topic.to_owned(),
                partition: if partitions.len() == 1 {
                    partitions[0]
                } else {
                    -1
                },
                timeout,
                records,
            });
        }
        let index_of = |partition: i32| partitions.iter().position(|&p| p == partition);
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                if let Some(index) = index_of(partition) {
                    done[index] = true;
                }
            }
            Some(Err(error)) => tracing::warn!(%error, %topic, "read error"),
            Some(Ok(message)) => {
                records += 1;
                if !each(&message) {
                    return Ok(records);
                }
                if let Some(index) = index_of(message.partition()) {
                    // The committed offset convention: the end is the offset after the last record.
                    if message.offset() + 1 >= ends[index] {
                        done[index] = true;
                    }
                }
            }
        }
    }
}
