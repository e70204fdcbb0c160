//! The audit service's I/O shell: lifecycle events in, audit records, checkpoints and feedback out.
//! A decision's audit record goes to the audit partition with the number of its lifecycle
//! partition (both keyed by decision_id), and each partition's checkpoints to the checkpoint
//! partition with that number, so an instance given lifecycle partition p restores from audit
//! partition p and checkpoint partition p.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use hitl_runtime::{
    auth::{self, Grant, KeySet},
    config::{KafkaSettings, Secret, Topics},
    kafka::{read_partition, read_partition_since},
    trace::{self, Span, SpanKind, TraceContext, Tracer},
    InputRecord, OutputRecord, ProcessError, Processor, Validate,
};
use hitl_schema::{AuditCheckpoint, AuditRecord, Codec, DecidedBy, LifecycleEvent, LifecycleKind};
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    bounds::Limits,
    checkpoint::Checkpointer,
    crypto::{checkpoint_hash, Keys},
    head::{self, Head, Heads},
    metrics::AuditMetrics,
    trail::{AuditCore, Claim, Effect, Note, Noted, Reload},
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
    /// Prefer `signing_key_file` (a mounted secret) or `HITL_SERVICE__SIGNING_KEY`.
    pub signing_key: Option<Secret>,
    /// A file holding the signing key (64 hex digits).
    pub signing_key_file: Option<PathBuf>,
    /// Names the key in every record and checkpoint (rotate keys by changing both; `verify`
    /// takes every key id's public key).
    pub key_id: String,
    /// Key of the keyed hashes of sensitive context values and reviewer pseudonyms (16 or more
    /// characters). Prefer `hash_key_file` or `HITL_SERVICE__HASH_KEY`.
    pub hash_key: Option<Secret>,
    /// A file holding the hash key (its text, trimmed).
    pub hash_key_file: Option<PathBuf>,
    /// Where the newest committed checkpoint of each partition is kept outside Kafka (`head`
    /// module): `hitl-audit verify --expect-head FILE` finds a trail whose newest records and
    /// checkpoints were deleted together. Unset: not kept.
    pub head_file: Option<PathBuf>,
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
    /// A decision id (the key of every output).
    pub max_id_bytes: usize,
    /// What one event may add to a timeline (its entry), and an outcome.
    pub max_entry_bytes: usize,
    /// The decision as stored (sensitive values hashed).
    pub max_decision_bytes: usize,
    /// Lifecycle events in one audit record's timeline (those that can repeat without bound —
    /// rejected verdicts, assignments, revocations — fill at most 3/4 of it).
    pub max_timeline_entries: usize,
    /// Bytes of one timeline's entries (same share).
    pub max_timeline_bytes: usize,
    /// Refusal notes kept one by one per trail; later refusals are counted in its summary.
    pub max_refusal_notes: usize,
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
            signing_key_file: None,
            key_id: "k1".into(),
            hash_key: None,
            hash_key_file: None,
            head_file: None,
            checkpoint_every_records: 1000,
            checkpoint_interval: Duration::from_secs(10),
            tick_interval: Duration::from_millis(250),
            restore_timeout: Duration::from_secs(600),
            max_record_bytes: 1024 * 1024,
            max_id_bytes: Limits::default().max_id_bytes,
            max_entry_bytes: Limits::default().max_entry_bytes,
            max_decision_bytes: Limits::default().max_decision_bytes,
            max_timeline_entries: Limits::default().max_timeline_entries,
            max_timeline_bytes: Limits::default().max_timeline_bytes,
            max_refusal_notes: Limits::default().max_notes,
            seal_after: Duration::from_secs(600),
        }
    }
}

impl AuditSettings {
    pub fn transactional_id(&self) -> String {
        format!("hitl-audit-{}", self.instance_id)
    }

    /// The bounds on what events add to trails.
    pub fn limits(&self) -> Limits {
        Limits {
            max_id_bytes: self.max_id_bytes,
            max_entry_bytes: self.max_entry_bytes,
            max_decision_bytes: self.max_decision_bytes,
            max_timeline_entries: self.max_timeline_entries,
            max_timeline_bytes: self.max_timeline_bytes,
            max_notes: self.max_refusal_notes,
        }
    }

    /// The signing key's hex seed, given inline (or by environment) or in a file.
    fn signing_seed(&self) -> Result<Option<String>, String> {
        read_secret(
            "service.signing_key",
            self.signing_key.as_ref(),
            self.signing_key_file.as_ref(),
        )
    }

    /// The hash key, given inline (or by environment) or in a file.
    pub fn hash_key_text(&self) -> Result<Option<String>, String> {
        read_secret(
            "service.hash_key",
            self.hash_key.as_ref(),
            self.hash_key_file.as_ref(),
        )
    }

    /// The keys, or every problem with them (each naming its field).
    pub fn keys(&self) -> Result<Keys, Vec<String>> {
        let mut problems = Vec::new();
        let seed = self.signing_seed().unwrap_or_else(|error| {
            problems.push(error);
            None
        });
        let hash_key = self.hash_key_text().unwrap_or_else(|error| {
            problems.push(error);
            None
        });
        if seed.is_none() && problems.is_empty() {
            problems.push(
                "service.signing_key: required (64 hex digits, or service.signing_key_file; \
                 `hitl-audit keygen` makes one)"
                    .into(),
            );
        }
        match &hash_key {
            None if problems.is_empty() => problems.push(
                "service.hash_key: required (a secret of 16 or more characters, or \
                 service.hash_key_file)"
                    .into(),
            ),
            Some(key) if key.len() < 16 => {
                problems.push("service.hash_key: must be at least 16 characters".into())
            }
            _ => {}
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Keys::new(
            seed.as_deref().unwrap_or_default(),
            &self.key_id,
            hash_key.as_deref().unwrap_or_default(),
        )
        .map_err(|error| vec![format!("service.{error}")])
    }
}

/// A secret given inline (which `HITL_SERVICE__<NAME>` also sets) or in a file (trimmed); not both.
fn read_secret(
    field: &str,
    inline: Option<&Secret>,
    file: Option<&PathBuf>,
) -> Result<Option<String>, String> {
    match (inline, file) {
        (None, None) => Ok(None),
        (Some(secret), None) => Ok(Some(secret.expose().trim().to_owned())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|text| Some(text.trim().to_owned()))
            .map_err(|error| format!("{field}_file: cannot read {}: {error}", path.display())),
        (Some(_), Some(_)) => Err(format!("{field}: give {field} or {field}_file, not both")),
    }
}

/// Everything that keeps the audit service from starting with these settings, each naming its
/// field: its keys, a trusted service key (`[trust] keys_file`), and size bounds that fit the
/// producer's `kafka.message_max_bytes`. `main` refuses to start on any (exit status 2).
pub fn start_problems(settings: &hitl_runtime::Settings<AuditSettings>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(keys) = settings.service.keys() {
        problems.extend(keys);
    }
    match settings.trust.key_set() {
        Ok(keys) => {
            if let Err(problem) = require_service_key(&keys, settings) {
                problems.push(problem);
            }
        }
        Err(problem) => problems.push(problem),
    }
    problems.extend(settings.service.limits().problems(
        settings.kafka.output_limit(),
        settings.service.checkpoint_every_records,
    ));
    if let Some(path) = &settings.service.head_file {
        if let Err(error) = head::read(path) {
            problems.push(format!("service.head_file: {error}"));
        }
    }
    problems
}

fn require_service_key(
    keys: &KeySet,
    settings: &hitl_runtime::Settings<AuditSettings>,
) -> Result<(), String> {
    if keys
        .keys()
        .any(|key| matches!(key.grant, Grant::Service { .. }))
    {
        return Ok(());
    }
    Err(match &settings.trust.keys_file {
        None => {
            "trust.keys_file: required: the audit service ingests only lifecycle events signed \
                 by a service key (a [[keys]] entry with grant = { kind = \"service\", service = \
                 \"router\" }, and one for \"assignment\")"
                .to_owned()
        }
        Some(path) => format!(
            "trust.keys_file: {} trusts no service key (grant = {{ kind = \"service\", ... }}): \
             the audit service would accept no lifecycle event",
            path.display()
        ),
    })
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
        // The bounds alone here; against kafka.message_max_bytes in `start_problems`.
        errors.extend(
            self.limits()
                .problems(usize::MAX, self.checkpoint_every_records),
        );
        if self.seal_after.is_zero() {
            errors.push("service.seal_after: must be more than 0".into());
        }
        // Keys are checked when the service starts (`verify` needs none of them).
        let given = self.signing_key.is_some()
            || self.hash_key.is_some()
            || self.signing_key_file.is_some()
            || self.hash_key_file.is_some();
        if given {
            if let Err(problems) = self.keys() {
                errors.extend(problems);
            }
        }
    }

    /// The signing key (and its public key: it is published too) and the hash key, refused when
    /// they are the development keys of this repository unless the service runs with `--dev`.
    fn secrets(&self) -> Vec<(String, Vec<u8>)> {
        let mut secrets = Vec::new();
        if let Ok(Some(seed)) = self.signing_seed() {
            if let Ok(keys) = Keys::new(&seed, &self.key_id, "unused-here-0123456789") {
                secrets.push((
                    "service.signing_key".to_owned(),
                    hex::decode(&seed).unwrap_or_default(),
                ));
                secrets.push((
                    "service.signing_key (its public key)".to_owned(),
                    keys.verifying_key().to_bytes().to_vec(),
                ));
            }
        }
        if let Ok(Some(hash_key)) = self.hash_key_text() {
            secrets.push(("service.hash_key".to_owned(), hash_key.into_bytes()));
        }
        secrets
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
    AuditCore::new(keys)
        .with_seal_after(settings.seal_after.as_millis() as i64)
        .with_limits(settings.limits())
}

/// The kinds of lifecycle event each hitl service writes, and the outcomes it may carry: a
/// service key may speak for its own service only, and only of what that service does.
fn may_write(event: &LifecycleEvent) -> Result<(), String> {
    let auto = event
        .outcome
        .as_ref()
        .map(|outcome| outcome.decided_by == DecidedBy::Auto);
    let kind = event.kind;
    match event.service.as_str() {
        "router" => {
            if !matches!(
                kind,
                LifecycleKind::Routed | LifecycleKind::QaSampled | LifecycleKind::DeadLettered
            ) {
                return Err(format!("the router writes no {} events", kind.as_str()));
            }
            if auto == Some(false) {
                return Err("the router decides automatic outcomes only".into());
            }
        }
        "assignment" => {
            if matches!(kind, LifecycleKind::Routed | LifecycleKind::QaSampled) {
                return Err(format!(
                    "the assignment service writes no {} events",
                    kind.as_str()
                ));
            }
            if auto == Some(true) {
                return Err("the assignment service decides no automatic outcomes".into());
            }
        }
        crate::trail::AUDIT_SERVICE => {
            return Err(
                "no lifecycle event may claim service `audit` (the audit's own notes)".into(),
            )
        }
        _ => {}
    }
    Ok(())
}

/// The key id a `hitl-auth` header names (for notes and logs; cut to 64 characters).
fn header_key_id(header: Option<&[u8]>) -> Option<String> {
    let header = std::str::from_utf8(header?).ok()?;
    let key_id = header.split(':').nth(1)?;
    Some(key_id.chars().take(64).collect())
}

/// Why an input is refused before the core sees it.
struct Refusal<'a> {
    reason: &'static str,
    class: String,
    message: String,
    claimed: Option<&'a LifecycleEvent>,
    authenticated: bool,
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
    /// The service keys whose lifecycle events are ingested.
    trusted: KeySet,
    /// The newest committed checkpoint per partition (`head_file`), and those of the open
    /// transaction.
    heads: Heads,
    pending_heads: Vec<Head>,
    heads_unwritten: bool,
}

impl AuditProcessor {
    /// Builds the processor and registers its metrics (the service does this in `run`; the
    /// benchmark harness runs it on its own loop). Refuses settings `start_problems` finds.
    pub fn build(
        settings: &hitl_runtime::Settings<AuditSettings>,
        registry: &mut prometheus_client::registry::Registry,
        tracer: Tracer,
    ) -> anyhow::Result<Self> {
        let problems = start_problems(settings);
        if !problems.is_empty() {
            anyhow::bail!("refusing to start:\n  - {}", problems.join("\n  - "));
        }
        let keys = settings.service.keys().map_err(|problems| {
            anyhow::anyhow!("refusing to start:\n  - {}", problems.join("\n  - "))
        })?;
        let trusted = settings.trust.key_set().map_err(anyhow::Error::msg)?;
        let mut services: Vec<String> = trusted
            .keys()
            .filter_map(|key| match &key.grant {
                Grant::Service { service } => Some(format!("{} ({service})", key.key_id)),
                _ => None,
            })
            .collect();
        services.sort();
        tracing::info!(key_id = %keys.key_id(), public_key = %keys.public_hex(), service_keys = %services.join(", "), "audit signing key; lifecycle events are ingested only when signed by a service key");
        let heads = match &settings.service.head_file {
            Some(path) => head::read(path).map_err(anyhow::Error::msg)?,
            None => Heads::new(),
        };
        let codec = settings.codec.build(settings.kafka.request_timeout)?;
        let metrics = Arc::new(AuditMetrics::register(registry));
        let mut processor = Self::new(settings, keys, codec, metrics, tracer, trusted);
        processor.heads = heads;
        Ok(processor)
    }

    fn new(
        settings: &hitl_runtime::Settings<AuditSettings>,
        keys: Keys,
        codec: Codec,
        metrics: Arc<AuditMetrics>,
        tracer: Tracer,
        trusted: KeySet,
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
            trusted,
            heads: Heads::new(),
            pending_heads: Vec::new(),
            heads_unwritten: false,
        }
    }

    /// Exports a partition's newest checkpoint as a metric.
    fn show_head(&self, head: &Head) {
        self.metrics.head(head.partition, head.sequence, &head.hash);
    }

    /// Restores partition p: the latest record of every decision from the audit topic, and the
    /// checkpoint chain; records no checkpoint covers yet are queued for the next one.
    fn restore(&mut self, partition: i32) -> anyhow::Result<()> {
        let started = Instant::now();
        let timeout = self.settings.restore_timeout;
        let mut last_checkpoint: Option<AuditCheckpoint> = None;
        let mut covered: HashSet<(String, i64)> = HashSet::new();
        let codec = &self.codec;
        let head = self.heads.get(&partition).cloned();
        let mut at_head: Option<String> = None;
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
                        if head
                            .as_ref()
                            .is_some_and(|h| h.sequence == checkpoint.sequence)
                        {
                            at_head = Some(checkpoint_hash(&checkpoint));
                        }
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
        if let Some(head) = head {
            if at_head.as_deref() != Some(head.hash.as_str()) {
                let newest = last_checkpoint
                    .as_ref()
                    .map_or("none".to_owned(), |c| c.sequence.to_string());
                anyhow::bail!(
                    "audit partition {partition}: the head file {} names checkpoint {} ({}), but \
                     {} {}: the newest checkpoints (and the records they cover) were deleted or \
                     replaced. Investigate with `hitl-audit verify --expect-head {}`; to continue \
                     from the chain as it is, move the head file away",
                    self.settings
                        .head_file
                        .as_deref()
                        .unwrap_or(std::path::Path::new(""))
                        .display(),
                    head.sequence,
                    head.hash,
                    self.topics.audit_checkpoints,
                    if at_head.is_some() {
                        format!(
                            "holds another checkpoint {} (its newest is {newest})",
                            head.sequence
                        )
                    } else {
                        format!("ends at checkpoint {newest}")
                    },
                    self.settings
                        .head_file
                        .as_deref()
                        .unwrap_or(std::path::Path::new(""))
                        .display(),
                );
            }
        }
        if let Some(last) = &last_checkpoint {
            self.show_head(&Head::of(last));
        }
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
                tracing::error!(partition, error = format!("{error:#}"), "cannot restore");
                ProcessError::fatal(error.context(format!(
                    "cannot restore the audit state of partition {partition}"
                )))
            })?;
        }
        Ok(())
    }

    /// Turns the core's effects into output records (and metrics); records get the
    /// `traceparent` of `trace`, this service's span of the event that caused them; a refusal
    /// dead-letters `input`. An output that cannot be encoded fails the hook (see
    /// `ProcessError::output_encoding`): it is never dropped.
    fn emit(
        &mut self,
        input: Option<&InputRecord<'_>>,
        trace: Option<&TraceContext>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        let now = hitl_runtime::now_millis();
        let traced = |record: OutputRecord| match trace {
            Some(trace) => record.with_header("traceparent", trace.header()),
            None => record,
        };
        // Drained from a local (the loop calls `self`), then put back: its capacity is reused.
        let mut effects = std::mem::take(&mut self.effects);
        for effect in effects.drain(..) {
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
                Effect::Refused {
                    reason,
                    class,
                    message,
                } => {
                    self.metrics.rejected(reason);
                    if let Some(input) = input {
                        self.dead_letter(input, "audit", &class, &message, output);
                    }
                }
            }
        }
        self.effects = effects;
        Ok(())
    }

    fn checkpoints(
        &mut self,
        now: i64,
        force: bool,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        let every_ms = self.settings.checkpoint_interval.as_millis() as i64;
        let every = self.settings.checkpoint_every_records;
        for (partition, checkpointer) in &mut self.checkpointers {
            // At most `every` records per checkpoint (its size bound), as many as are due.
            while checkpointer.due(now, every, every_ms)
                || (force && !checkpointer.pending.is_empty())
            {
                let checkpoint = checkpointer.cut_at_most(self.core.keys(), now, every);
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
                self.pending_heads.push(Head::of(&checkpoint));
            }
        }
        Ok(())
    }

    fn dead_letter(
        &self,
        input: &InputRecord<'_>,
        stage: &str,
        class: &str,
        message: &str,
        output: &mut Vec<OutputRecord>,
    ) {
        self.metrics.dead_lettered(class);
        tracing::warn!(topic = input.topic(), partition = input.partition(), offset = input.offset(), %class, error = %message, "dead-lettered");
        output.push(OutputRecord::dead_letter(
            &self.topics.decisions_dlq,
            input,
            stage,
            class,
            message,
        ));
    }

    /// Refuses an input before the core: dead-letters it, counts it, and notes it in the trail of
    /// the decision its key names, if this instance holds one (reloading a sealed trail that has
    /// room for another note).
    fn refuse(
        &mut self,
        input: &InputRecord<'_>,
        refusal: Refusal<'_>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        self.metrics.rejected(refusal.reason);
        self.dead_letter(input, "auth", &refusal.class, &refusal.message, output);
        let decision_id = input
            .key()
            .and_then(|key| std::str::from_utf8(key).ok())
            .filter(|key| !key.is_empty() && key.len() <= self.settings.max_id_bytes);
        let Some(decision_id) = decision_id else {
            return Ok(());
        };
        let header = input.header(auth::HEADER);
        let mut digest = Sha256::new();
        digest.update(input.payload().unwrap_or_default());
        digest.update([0]);
        digest.update(header.unwrap_or_default());
        let note = Note {
            id: hex::encode(&digest.finalize()[..8]),
            reason: refusal.reason,
            class: refusal.class,
            authenticated: refusal.authenticated,
            claim: refusal.claimed.map(Claim::of),
            key_id: header_key_id(header),
            source: Some(format!("{}/{}", input.partition(), input.offset())),
        };
        let now = hitl_runtime::now_millis();
        if let Noted::Reload(reload) = self.core.note(decision_id, &note, now, &mut self.effects) {
            let partition = reload.partition;
            match self.reload(reload, decision_id) {
                Ok(true) => {
                    self.metrics.reloaded("reloaded");
                    self.core.note(decision_id, &note, now, &mut self.effects);
                }
                Ok(false) => self.metrics.reloaded("missing"),
                Err(error) => {
                    self.metrics.reloaded("failed");
                    self.effects.clear();
                    return Err(ProcessError::transient(error.context(format!(
                        "cannot reload the sealed trail of decision {decision_id} from {} \
                         partition {partition} to note a refused input",
                        self.topics.audit
                    ))));
                }
            }
        }
        self.emit(None, None, output)
    }
}

impl Processor for AuditProcessor {
    fn process(
        &mut self,
        input: &InputRecord<'_>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        let Some(payload) = input.payload() else {
            self.dead_letter(input, "decode", "empty", "record has no value", output);
            return Ok(());
        };
        if payload.len() > self.settings.max_record_bytes {
            let message = format!(
                "record of {} bytes exceeds max_record_bytes ({})",
                payload.len(),
                self.settings.max_record_bytes
            );
            self.metrics.rejected("oversize");
            self.dead_letter(input, "decode", "oversize", &message, output);
            return Ok(());
        }
        // Only what a trusted service key signed is read as an event (docs/trust.md).
        let signer = match self.trusted.verify(
            auth::Kind::Lifecycle,
            input.key(),
            Some(payload),
            input.header(auth::HEADER),
        ) {
            Ok(key) => key,
            Err(error) => {
                let claimed = self.codec.decode::<LifecycleEvent>(payload).ok();
                let refusal = Refusal {
                    reason: error.reason(),
                    class: format!("auth.{}", error.reason()),
                    message: error.to_string(),
                    claimed: claimed.as_ref(),
                    authenticated: false,
                };
                return self.refuse(input, refusal, output);
            }
        };
        let event = match self.codec.decode::<LifecycleEvent>(payload) {
            Ok(event) => event,
            Err(error) => {
                let class = format!("decode.{}", error.class());
                self.dead_letter(input, "decode", &class, &error.to_string(), output);
                return Ok(());
            }
        };
        if event.decision_id.is_empty() || event.event_id.is_empty() {
            self.dead_letter(
                input,
                "decode",
                "validation",
                "decision_id and event_id are required",
                output,
            );
            return Ok(());
        }
        let allowed = signer
            .may_speak_for(&event.service)
            .map_err(|error| error.to_string())
            .and_then(|()| may_write(&event))
            .map_err(|why| format!("key `{}`: {why}", signer.key_id));
        if let Err(message) = allowed {
            let refusal = Refusal {
                reason: "not_allowed",
                class: "auth.not_allowed".into(),
                message,
                claimed: Some(&event),
                authenticated: false,
            };
            return self.refuse(input, refusal, output);
        }
        if input.key() != Some(event.decision_id.as_bytes()) {
            let refusal = Refusal {
                reason: "invalid",
                class: "validation.key".into(),
                message: "the record's key is not the event's decision_id".into(),
                claimed: Some(&event),
                authenticated: true,
            };
            return self.refuse(input, refusal, output);
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
                    self.dead_letter(input, "audit", "audit.reload", &message, output);
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
        let source = format!("{}/{}", input.partition(), input.offset());
        self.core
            .event_from(input.partition(), &event, Some(source), &mut self.effects);
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
        self.emit(Some(input), context.as_ref(), output)
    }

    fn tick(
        &mut self,
        now_millis: i64,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        self.core.flush_summaries(&mut self.effects);
        self.emit(None, None, output)?;
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

    fn committed(&mut self) {
        let pending = std::mem::take(&mut self.pending_heads);
        for head in &pending {
            self.show_head(head);
        }
        if head::advance(&mut self.heads, pending) {
            self.heads_unwritten = true;
        }
        if let (true, Some(path)) = (self.heads_unwritten, &self.settings.head_file) {
            match head::write(path, &self.heads) {
                Ok(()) => self.heads_unwritten = false,
                // Tried again after the next commit; the file only lags (a lower bound).
                Err(error) => {
                    tracing::error!(%error, path = %path.display(), "cannot write the checkpoint head file")
                }
            }
        }
    }

    fn aborted(&mut self) -> Result<(), ProcessError> {
        tracing::warn!("transaction aborted: rebuilding state from the audit topic");
        let keys = Arc::new(self.core.keys().clone());
        self.core = new_core(keys, &self.settings);
        self.effects.clear();
        self.pending_heads.clear();
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
