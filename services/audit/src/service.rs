//! The audit service's I/O shell: lifecycle events in, audit records, checkpoints and feedback out.
//! A decision's audit record goes to the audit partition with the number of its lifecycle
//! partition (both keyed by decision_id), and each partition's checkpoints to the checkpoint
//! partition with that number, so an instance given lifecycle partition p restores from audit
//! partition p and checkpoint partition p.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use hitl_runtime::{
    config::{KafkaSettings, Secret, Topics},
    kafka::{read_partition, read_partition_since},
    trace::{self, Span, SpanKind, TraceContext, Tracer},
    InputRecord, OutputRecord, ProcessError, Processor, Validate,
};
use hitl_schema::{AuditCheckpoint, AuditRecord, Codec, LifecycleEvent};
use rdkafka::Message;
use serde::{Deserialize, Serialize};

use crate::{
    checkpoint::Checkpointer,
    crypto::Keys,
    metrics::AuditMetrics,
    trail::{AuditCore, Effect, Reload},
};

/// The audit service's `[service]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Names this instance: its `transactional.id` is `hitl-audit-<instance_id>`.
    pub instance_id: String,
    pub group_id: String,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Ed25519 signing key: 64 hex digits (a 32-byte seed). `hitl-audit keygen` makes one.
    pub signing_key: Option<Secret>,
    /// Names the key in every record and checkpoint (rotate keys by changing both).
    pub key_id: String,
    /// Key of the keyed hashes of sensitive context values and reviewer pseudonyms.
    pub hash_key: Option<Secret>,
    /// A checkpoint every this many records per partition…
    pub checkpoint_every_records: usize,
    /// …or this long after the previous one, whichever comes first.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
    /// Larger input records go to the DLQ unread.
    pub max_record_bytes: usize,
    /// How long a finished trail (decided, QA label in or expired) stays whole in memory after its
    /// latest event; then only a summary stays, and a new event reads it back from the audit topic.
    #[serde(with = "humantime_serde")]
    pub seal_after: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            instance_id: "0".into(),
            group_id: "hitl-audit".into(),
            create_topics: true,
            signing_key: None,
            key_id: "k1".into(),
            hash_key: None,
            checkpoint_every_records: 1000,
            checkpoint_interval: Duration::from_secs(10),
            tick_interval: Duration::from_millis(250),
            restore_timeout: Duration::from_secs(600),
            max_record_bytes: 4 * 1024 * 1024,
            seal_after: Duration::from_secs(600),
        }
    }
}

impl AuditSettings {
    pub fn transactional_id(&self) -> String {
        format!("hitl-audit-{}", self.instance_id)
    }

    /// The keys, or every problem with them (each naming its field).
    pub fn keys(&self) -> Result<Keys, Vec<String>> {
        let mut problems = Vec::new();
        let seed = self.signing_key.as_ref().map(Secret::expose);
        let hash_key = self.hash_key.as_ref().map(Secret::expose);
        if seed.is_none() {
            problems.push(
                "service.signing_key: required (64 hex digits; `hitl-audit keygen` makes one)"
                    .into(),
            );
        }
        match hash_key {
            None => problems
                .push("service.hash_key: required (a secret of 16 or more characters)".into()),
            Some(key) if key.len() < 16 => {
                problems.push("service.hash_key: must be at least 16 characters".into())
            }
            Some(_) => {}
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Keys::new(
            seed.unwrap_or_default(),
            &self.key_id,
            hash_key.unwrap_or_default(),
        )
        .map_err(|error| vec![format!("service.{error}")])
    }
}

impl Validate for AuditSettings {
    fn validate(&self, errors: &mut Vec<String>) {
        hitl_runtime::config::validate_instance(&self.instance_id, &self.group_id, errors);
        if self.key_id.is_empty() {
            errors.push("service.key_id: must not be empty".into());
        }
        if self.checkpoint_every_records == 0 {
            errors.push("service.checkpoint_every_records: must be at least 1".into());
        }
        if self.checkpoint_interval < Duration::from_millis(100) {
            errors.push("service.checkpoint_interval: must be at least 100ms".into());
        }
        if self.tick_interval < Duration::from_millis(10) {
            errors.push("service.tick_interval: must be at least 10ms".into());
        }
        if self.max_record_bytes < 64 {
            errors.push("service.max_record_bytes: must be at least 64".into());
        }
        if self.seal_after.is_zero() {
            errors.push("service.seal_after: must be more than 0".into());
        }
        // Keys are checked when the service starts (`verify` needs none of them).
        if self.signing_key.is_some() || self.hash_key.is_some() {
            if let Err(problems) = self.keys() {
                errors.extend(problems);
            }
        }
    }
}

/// Keeps in `latest` the newest record of `decision_id` seen so far: `Some(None)` after a
/// tombstone, `None` before any record of it.
fn keep_latest(
    codec: &Codec,
    decision_id: &str,
    message: &rdkafka::message::BorrowedMessage<'_>,
    latest: &mut Option<Option<AuditRecord>>,
) {
    if message.key() != Some(decision_id.as_bytes()) {
        return;
    }
    match message
        .payload()
        .map(|payload| codec.decode::<AuditRecord>(payload))
    {
        None => *latest = Some(None),
        Some(Ok(record)) => {
            let newer = match latest {
                Some(Some(kept)) => kept.version < record.version,
                _ => true,
            };
            if newer {
                *latest = Some(Some(record));
            }
        }
        Some(Err(error)) => {
            tracing::error!(%error, offset = message.offset(), "unreadable audit record skipped")
        }
    }
}

fn new_core(keys: Arc<Keys>, settings: &AuditSettings) -> AuditCore {
    AuditCore::new(keys).with_seal_after(settings.seal_after.as_millis() as i64)
}

/// The audit service as a `Processor` of the loop.
pub struct AuditProcessor {
    core: AuditCore,
    codec: Codec,
    topics: Topics,
    kafka: KafkaSettings,
    settings: AuditSettings,
    metrics: Arc<AuditMetrics>,
    checkpointers: BTreeMap<i32, Checkpointer>,
    effects: Vec<Effect>,
    last_gauges: Instant,
    tracer: Tracer,
}

impl AuditProcessor {
    /// Builds the processor and registers its metrics (the service does this in `run`; the
    /// benchmark harness runs it on its own loop).
    pub fn build(
        settings: &hitl_runtime::Settings<AuditSettings>,
        registry: &mut prometheus_client::registry::Registry,
        tracer: Tracer,
    ) -> anyhow::Result<Self> {
        let keys = settings.service.keys().map_err(|problems| {
            anyhow::anyhow!("refusing to start:\n  - {}", problems.join("\n  - "))
        })?;
        tracing::info!(key_id = %keys.key_id(), public_key = %keys.public_hex(), "audit signing key");
        let codec = settings.codec.build(settings.kafka.request_timeout)?;
        let metrics = Arc::new(AuditMetrics::register(registry));
        Ok(Self::new(settings, keys, codec, metrics, tracer))
    }

    fn new(
        settings: &hitl_runtime::Settings<AuditSettings>,
        keys: Keys,
        codec: Codec,
        metrics: Arc<AuditMetrics>,
        tracer: Tracer,
    ) -> Self {
        Self {
            core: new_core(Arc::new(keys), &settings.service),
            codec,
            topics: settings.topics.clone(),
            kafka: settings.kafka.clone(),
            settings: settings.service.clone(),
            metrics,
            checkpointers: BTreeMap::new(),
            effects: Vec::new(),
            last_gauges: Instant::now(),
            tracer,
        }
    }

    /// Restores partition p: the latest record of every decision from the audit topic, and the
    /// checkpoint chain; records no checkpoint covers yet are queued for the next one.
    fn restore(&mut self, partition: i32) -> anyhow::Result<()> {
        let started = Instant::now();
        let timeout = self.settings.restore_timeout;
        let mut last_checkpoint: Option<AuditCheckpoint> = None;
        let mut covered: HashSet<(String, i64)> = HashSet::new();
        let codec = &self.codec;
        read_partition(
            &self.kafka,
            &self.topics.audit_checkpoints,
            partition,
            timeout,
            |message| {
                let Some(payload) = message.payload() else {
                    return;
                };
                match codec.decode::<AuditCheckpoint>(payload) {
                    Ok(checkpoint) if checkpoint.partition == partition => {
                        covered.extend(
                            checkpoint
                                .entries
                                .iter()
                                .map(|e| (e.decision_id.clone(), e.version)),
                        );
                        last_checkpoint = Some(checkpoint);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::error!(%error, partition, offset = message.offset(), "unreadable checkpoint skipped")
                    }
                }
            },
        )?;
        let mut checkpointer = Checkpointer::resume(
            partition,
            last_checkpoint.as_ref(),
            hitl_runtime::now_millis(),
        );
        let core = &mut self.core;
        let now = hitl_runtime::now_millis();
        let mut restored = 0u64;
        let records = read_partition(
            &self.kafka,
            &self.topics.audit,
            partition,
            timeout,
            |message| {
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned());
                match message.payload() {
                    None => {
                        if let Some(key) = key {
                            core.forget(&key);
                        }
                    }
                    Some(payload) => match codec.decode::<AuditRecord>(payload) {
                        Ok(record) => {
                            if !covered.contains(&(record.decision_id.clone(), record.version)) {
                                checkpointer.append(&record);
                            }
                            let newer = core
                                .version(&record.decision_id)
                                .is_none_or(|version| version < record.version);
                            if newer {
                                core.restore(partition, record);
                                restored += 1;
                                // Keep memory bounded while restoring a long history.
                                if restored % 10_000 == 0 {
                                    core.seal_idle(now);
                                }
                            }
                        }
                        Err(error) => {
                            tracing::error!(%error, partition, offset = message.offset(), "unreadable audit record skipped")
                        }
                    },
                }
            },
        )?;
        self.core.seal_idle(now);
        self.checkpointers.insert(partition, checkpointer);
        let took = started.elapsed();
        self.metrics.restored(took);
        tracing::info!(
            partition,
            records,
            trails = self.core.len(),
            sealed = self.core.sealed_len(),
            took_ms = took.as_millis() as u64,
            "audit state restored"
        );
        Ok(())
    }

    /// Reads a sealed decision's latest audit record back from its partition and restores its
    /// trail. `Ok(false)`: the topic holds none (deleted by a tombstone).
    ///
    /// The record was written when its latest event was processed, so it is looked for first in
    /// the records stamped within `RELOAD_WINDOW` of that time (ListOffsets by time), which
    /// bounds the read however old the decision is; then, if the sealed version is not found
    /// there (clocks far apart, a service that was far behind, a broker that cannot seek by
    /// time), in the whole partition.
    fn reload(&mut self, reload: Reload, decision_id: &str) -> anyhow::Result<bool> {
        const RELOAD_WINDOW: i64 = 5 * 60 * 1000;
        let started = Instant::now();
        let (partition, from) = (reload.partition, reload.written_at - RELOAD_WINDOW);
        let until = reload.written_at + RELOAD_WINDOW;
        let mut latest = None;
        let mut windowed = 0;
        if reload.written_at > 0 {
            windowed = read_partition_since(
                &self.kafka,
                &self.topics.audit,
                partition,
                from,
                self.settings.restore_timeout,
                |message| {
                    keep_latest(&self.codec, decision_id, message, &mut latest);
                    // Stop past the window (records without a time are read on).
                    !matches!(message.timestamp().to_millis(), Some(at) if at > until)
                },
            )?;
        }
        // Not there, or an older version only (the record was written late, past the window).
        let found = |latest: &Option<Option<AuditRecord>>| match latest {
            Some(Some(record)) => record.version >= reload.version,
            Some(None) => true,
            None => false,
        };
        let mut scanned = 0;
        if !found(&latest) {
            latest = None;
            scanned = read_partition(
                &self.kafka,
                &self.topics.audit,
                partition,
                self.settings.restore_timeout,
                |message| keep_latest(&self.codec, decision_id, message, &mut latest),
            )?;
        }
        let Some(Some(record)) = latest else {
            return Ok(false);
        };
        tracing::info!(%decision_id, partition, version = record.version, windowed, scanned, took_ms = started.elapsed().as_millis() as u64, "sealed trail reloaded for a new event");
        self.core.restore(partition, record);
        Ok(true)
    }

    /// Restores `partitions` from the audit and checkpoint topics. A failure is fatal: a
    /// half-restored trail cannot be trusted, and the restarted service restores from scratch.
    fn restore_partitions(
        &mut self,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Result<(), ProcessError> {
        for partition in partitions {
            self.restore(partition).map_err(|error| {
                ProcessError::fatal(error.context(format!(
                    "cannot restore the audit state of partition {partition}"
                )))
            })?;
        }
        Ok(())
    }

    /// Turns the core's effects into output records (and metrics); records get the
    /// `traceparent` of `trace`, this service's span of the event that caused them. An output
    /// that cannot be encoded fails the hook (see `ProcessError::output_encoding`): it is never
    /// dropped.
    fn emit(
        &mut self,
        trace: Option<&TraceContext>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        let now = hitl_runtime::now_millis();
        let traced = |record: OutputRecord| match trace {
            Some(trace) => record.with_header("traceparent", trace.header()),
            None => record,
        };
        for effect in self.effects.drain(..) {
            match effect {
                Effect::Record { partition, record } => {
                    let payload = self
                        .codec
                        .encode_to_vec(&self.topics.audit, &record)
                        .map_err(|error| ProcessError::output_encoding("an audit record", error))?;
                    let mut out = OutputRecord::new(
                        &self.topics.audit,
                        record.decision_id.as_bytes(),
                        payload,
                    );
                    out.partition = Some(partition);
                    // Restores read it back: after the labels it accounts for.
                    out.last = true;
                    output.push(traced(out));
                    self.checkpointers
                        .entry(partition)
                        .or_insert_with(|| Checkpointer::new(partition, now))
                        .append(&record);
                }
                Effect::Feedback(feedback) => {
                    let payload = self
                        .codec
                        .encode_to_vec(&self.topics.feedback, &feedback)
                        .map_err(|error| {
                            ProcessError::output_encoding("a feedback record", error)
                        })?;
                    output.push(traced(OutputRecord::new(
                        &self.topics.feedback,
                        feedback.decision_id.as_bytes(),
                        payload,
                    )));
                }
                Effect::Observed(observation) => self.metrics.observe(&observation, now),
            }
        }
        Ok(())
    }

    fn checkpoints(
        &mut self,
        now: i64,
        force: bool,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        let every_ms = self.settings.checkpoint_interval.as_millis() as i64;
        for (partition, checkpointer) in &mut self.checkpointers {
            let due = checkpointer.due(now, self.settings.checkpoint_every_records, every_ms)
                || (force && !checkpointer.pending.is_empty());
            if !due {
                continue;
            }
            let checkpoint = checkpointer.cut(self.core.keys(), now);
            let payload = self
                .codec
                .encode_to_vec(&self.topics.audit_checkpoints, &checkpoint)
                .map_err(|error| ProcessError::output_encoding("a checkpoint", error))?;
            let mut out = OutputRecord::new(
                &self.topics.audit_checkpoints,
                partition.to_string().into_bytes(),
                payload,
            );
            out.partition = Some(*partition);
            out.last = true;
            output.push(out);
            self.metrics.checkpoint();
        }
        Ok(())
    }

    fn dead_letter(
        &self,
        input: &InputRecord<'_>,
        class: &str,
        message: &str,
        output: &mut Vec<OutputRecord>,
    ) {
        self.metrics.dead_lettered(class);
        tracing::warn!(topic = input.topic(), partition = input.partition(), offset = input.offset(), %class, error = %message, "dead-lettered");
        output.push(OutputRecord::dead_letter(
            &self.topics.decisions_dlq,
            input,
            "decode",
            class,
            message,
        ));
    }
}

impl Processor for AuditProcessor {
    fn process(
        &mut self,
        input: &InputRecord<'_>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        let Some(payload) = input.payload() else {
            self.dead_letter(input, "empty", "record has no value", output);
            return Ok(());
        };
        if payload.len() > self.settings.max_record_bytes {
            let message = format!("record of {} bytes exceeds max_record_bytes", payload.len());
            self.dead_letter(input, "oversize", &message, output);
            return Ok(());
        }
        let event = match self.codec.decode::<LifecycleEvent>(payload) {
            Ok(event) => event,
            Err(error) => {
                let class = format!("decode.{}", error.class());
                self.dead_letter(input, &class, &error.to_string(), output);
                return Ok(());
            }
        };
        if event.decision_id.is_empty() || event.event_id.is_empty() {
            self.dead_letter(
                input,
                "validation",
                "decision_id and event_id are required",
                output,
            );
            return Ok(());
        }
        if let Some(reload) = self.core.needs_reload(&event) {
            let partition = reload.partition;
            match self.reload(reload, &event.decision_id) {
                Ok(true) => self.metrics.reloaded("reloaded"),
                Ok(false) => {
                    self.metrics.reloaded("missing");
                    let message = format!(
                        "decision {} was sealed, but its audit record is not on {} partition {partition}",
                        event.decision_id, self.topics.audit
                    );
                    self.dead_letter(input, "audit.reload", &message, output);
                    return Ok(());
                }
                Err(error) => {
                    // Without the trail the event cannot be applied, and it must not be skipped:
                    // the loop aborts, rebuilds the state (`aborted`), backs off and reads the
                    // event again.
                    self.metrics.reloaded("failed");
                    return Err(ProcessError::transient(error.context(format!(
                        "cannot reload the sealed trail of decision {} from {} partition {partition}",
                        event.decision_id, self.topics.audit
                    ))));
                }
            }
        }
        let started = if self.tracer.is_enabled() {
            trace::now_nanos()
        } else {
            0
        };
        self.core
            .event(input.partition(), &event, &mut self.effects);
        // The event's trace context: its own field, or the record's header.
        let parent = event
            .traceparent
            .as_deref()
            .map(str::as_bytes)
            .or_else(|| input.header("traceparent"))
            .and_then(TraceContext::parse);
        let context = parent.as_ref().map(|parent| {
            let mut salt = event.event_id.clone().into_bytes();
            salt.extend_from_slice(b":audit");
            TraceContext::child(Some(parent), &salt, 1.0)
        });
        if let Some(context) = context.filter(|context| self.tracer.records(context)) {
            let version = self.effects.iter().find_map(|effect| match effect {
                Effect::Record { record, .. } => Some(record.version),
                _ => None,
            });
            let feedback = self
                .effects
                .iter()
                .any(|effect| matches!(effect, Effect::Feedback(_)));
            let mut span = Span::new(
                "hitl.audit record",
                SpanKind::Consumer,
                context,
                parent.as_ref(),
                started,
            )
            .attribute("hitl.decision_id", event.decision_id.clone())
            .attribute("hitl.event.kind", format!("{:?}", event.kind))
            .attribute("hitl.event.service", event.service.clone())
            .attribute("hitl.feedback_written", feedback)
            .ended_at(trace::now_nanos());
            if let Some(version) = version {
                span = span.attribute("hitl.audit.version", version);
            }
            self.tracer.export(span);
        }
        self.emit(context.as_ref(), output)
    }

    fn tick(
        &mut self,
        now_millis: i64,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        self.core.seal_idle(now_millis);
        self.checkpoints(now_millis, false, output)?;
        if self.last_gauges.elapsed() >= Duration::from_secs(2) {
            self.last_gauges = Instant::now();
            let (decided, complete) = self.core.completeness();
            self.metrics
                .gauges(self.core.len(), self.core.sealed_len(), decided, complete);
        }
        Ok(())
    }

    fn aborted(&mut self) -> Result<(), ProcessError> {
        tracing::warn!("transaction aborted: rebuilding state from the audit topic");
        let keys = Arc::new(self.core.keys().clone());
        self.core = new_core(keys, &self.settings);
        self.effects.clear();
        let partitions: Vec<i32> = self.checkpointers.keys().copied().collect();
        self.checkpointers.clear();
        self.restore_partitions(partitions)
    }

    fn partitions_assigned(&mut self, partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        let owned: BTreeSet<i32> = partitions
            .iter()
            .filter(|(topic, _)| *topic == self.topics.lifecycle)
            .map(|(_, partition)| *partition)
            .collect();
        self.core.retain_partitions(|p| owned.contains(&p));
        let new: Vec<i32> = owned
            .iter()
            .copied()
            .filter(|p| !self.checkpointers.contains_key(p))
            .collect();
        self.checkpointers.retain(|p, _| owned.contains(p));
        self.restore_partitions(new)
    }
}
