//! The router's I/O shell: Kafka records in, the pure core in the middle, Kafka records out.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hitl_runtime::{
    auth::{self, KeySet, Signer},
    config::{KafkaSettings, Topics},
    pipeline::is_transient_codec_error,
    trace::{self, Span, SpanKind, TraceContext, Tracer},
    InputRecord, OutputRecord, ProcessError, Processor, Validate,
};
use hitl_schema::{Codec, Decision, LifecycleEvent, LifecycleKind};
use serde::{Deserialize, Serialize};

use crate::{
    core::{self, Routed},
    dedup::{self, SeenIds},
    metrics::RouterMetrics,
    policy::{Policy, PolicyError},
    validate,
};

/// The router's `[service]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettings {
    /// The active routing policy (YAML).
    pub policy_path: PathBuf,
    /// A candidate policy evaluated beside the active one; never changes an outcome.
    pub shadow_policy_path: Option<PathBuf>,
    /// Names this instance: its `transactional.id` is `hitl-router-<instance_id>`, stable across restarts.
    pub instance_id: String,
    pub group_id: String,
    /// Larger records go to the DLQ unread.
    pub max_record_bytes: usize,
    /// Ingest rate limit (decisions per second); 0: unlimited.
    pub max_decisions_per_second: u32,
    /// The most decision ids remembered to drop duplicates: the memory bound of de-duplication,
    /// 40–100 bytes an id (docs/design.md, "Durable de-duplication in the router"). When it
    /// evicts ids younger than `dedup_horizon` it, not the horizon, decides how far back
    /// duplicates are caught
    /// (`hitl_router_dedup_evicted_total{reason="capacity"}`, a warning in the log). 0 turns
    /// de-duplication off, the `topics.router_seen` changelog with it.
    pub dedup_window: usize,
    /// How long a routed decision id is remembered: a decision re-published (same
    /// `decision_id`) within this time of its routing is dropped, across restarts, rebalances and
    /// instances, because every routed id is written to `topics.router_seen` in the transaction
    /// that routes it and restored from there for each partition this instance is given. At most
    /// `topics.router_seen_retention`.
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// The longest the restore of one partition's remembered ids may take. Past it the router
    /// stops (its supervisor restarts it) rather than route without them.
    #[serde(with = "humantime_serde")]
    pub dedup_restore_timeout: Duration,
    /// How often the policy files are checked for changes (SIGHUP reloads at once).
    #[serde(with = "humantime_serde")]
    pub policy_check_interval: Duration,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Accept only decisions signed by a trusted publisher key whose grant names the decision's
    /// `producer` (docs/trust.md). Turning it off lets any client that can write the topic choose
    /// `producer`, and so defeat separation of duties.
    pub require_signed_decisions: bool,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            policy_path: PathBuf::from("config/policy.yaml"),
            shadow_policy_path: None,
            instance_id: "0".into(),
            group_id: "hitl-router".into(),
            max_record_bytes: 64 * 1024,
            max_decisions_per_second: 0,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            dedup_horizon: hitl_runtime::config::DEFAULT_ROUTER_SEEN_RETENTION,
            dedup_restore_timeout: Duration::from_secs(300),
            policy_check_interval: Duration::from_secs(2),
            create_topics: true,
            require_signed_decisions: true,
        }
    }
}

impl Validate for RouterSettings {
    fn validate(&self, errors: &mut Vec<String>) {
        if !self.policy_path.is_file() {
            errors.push(format!(
                "service.policy_path: {} is not a file",
                self.policy_path.display()
            ));
        }
        if let Some(path) = &self.shadow_policy_path {
            if !path.is_file() {
                errors.push(format!(
                    "service.shadow_policy_path: {} is not a file",
                    path.display()
                ));
            }
        }
        hitl_runtime::config::validate_instance(&self.instance_id, &self.group_id, errors);
        if self.max_record_bytes < 64 {
            errors.push("service.max_record_bytes: must be at least 64".into());
        }
        // A decision is re-encoded into every output (JSON input as Avro: at most twice its
        // size), and the audit trail keeps it (escaped as JSON: at most six times more).
        if self.max_record_bytes > MAX_DECISION_BYTES {
            errors.push(format!(
                "service.max_record_bytes: {} is over {MAX_DECISION_BYTES}, the most a decision \
                 may take so that every record built from it fits a 1 MB Kafka record",
                self.max_record_bytes
            ));
        }
        if self.policy_check_interval.is_zero() {
            errors.push("service.policy_check_interval: must be more than 0".into());
        }
        if self.dedup_window > 0 && self.dedup_horizon < Duration::from_secs(1) {
            errors.push("service.dedup_horizon: must be at least 1s".into());
        }
        if self.dedup_restore_timeout < Duration::from_secs(1) {
            errors.push("service.dedup_restore_timeout: must be at least 1s".into());
        }
    }
}

/// The default of `service.dedup_window`: a million ids, 50–100 MB.
pub const DEFAULT_DEDUP_WINDOW: usize = 1_000_000;

/// The settings of different sections that must agree: the de-duplication horizon cannot be
/// longer than the changelog keeps what it restores from. Each problem names its field.
pub fn dedup_problems(settings: &hitl_runtime::Settings<RouterSettings>) -> Vec<String> {
    let service = &settings.service;
    let retention = settings.topics.router_seen_retention;
    if service.dedup_window > 0 && service.dedup_horizon > retention {
        vec![format!(
            "service.dedup_horizon: {} is longer than topics.router_seen_retention ({}): after a \
             restart or a rebalance duplicates would be caught only as far back as the changelog \
             keeps",
            humantime::format_duration(service.dedup_horizon),
            humantime::format_duration(retention),
        )]
    } else {
        Vec::new()
    }
}

/// The longest record key an oversize record's DEAD_LETTERED event is filed under.
const MAX_DEAD_LETTER_KEY_BYTES: usize = 256;

/// The largest decision record the router accepts (`service.max_record_bytes` at most).
pub const MAX_DECISION_BYTES: usize = 64 * 1024;

/// The trust settings the router cannot run without: a key to sign its lifecycle events with,
/// and (when decisions must be signed) at least one publisher key. Each problem names its field.
pub fn trust_problems(settings: &hitl_runtime::Settings<RouterSettings>) -> Vec<String> {
    let mut problems = Vec::new();
    if matches!(settings.trust.signer(), Ok(None)) {
        problems.push(
            "trust.signing_key_id: the router signs its lifecycle events for the audit; set \
             trust.signing_key_id and trust.signing_secret (or signing_secret_file)"
                .into(),
        );
    }
    if settings.service.require_signed_decisions {
        let publishers = settings.trust.key_set().map_or(0, |keys| {
            keys.keys()
                .filter(|key| matches!(key.grant, hitl_runtime::auth::Grant::Publisher { .. }))
                .count()
        });
        if publishers == 0 {
            problems.push(
                "trust.keys_file: decisions must be signed (service.require_signed_decisions) \
                 but no publisher key is trusted"
                    .into(),
            );
        }
    }
    problems
}

impl RouterSettings {
    pub fn transactional_id(&self) -> String {
        format!("hitl-router-{}", self.instance_id)
    }
    pub fn rate_limit(&self) -> Option<NonZeroU32> {
        NonZeroU32::new(self.max_decisions_per_second)
    }
}

/// A policy file and what was last loaded from it.
struct PolicySource {
    path: PathBuf,
    text: String,
    policy: Policy,
}

impl PolicySource {
    fn load(path: &Path) -> Result<Self, LoadError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| LoadError::Io(path.to_owned(), error))?;
        let policy =
            Policy::from_yaml(&text).map_err(|error| LoadError::Policy(path.to_owned(), error))?;
        Ok(Self {
            path: path.to_owned(),
            text,
            policy,
        })
    }

    /// Reloads if the file changed. `Ok(true)`: a new policy is active. A bad file keeps the old one.
    fn reload_if_changed(&mut self) -> Result<bool, LoadError> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|error| LoadError::Io(self.path.clone(), error))?;
        if text == self.text {
            return Ok(false);
        }
        let policy =
            Policy::from_yaml(&text).map_err(|error| LoadError::Policy(self.path.clone(), error));
        // Remember the text either way, so a bad file is reported once, not every check.
        self.text = text;
        self.policy = policy?;
        Ok(true)
    }
}

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Policy(PathBuf, #[source] PolicyError),
}

/// Encodes what routing one decision produced into output records (review request, outcome, then
/// the lifecycle event), each with the `traceparent` header. Every record is encoded from the routed
/// values, the decoded and validated decision included, never copied from the input's bytes; the
/// decision and the outcome that several records embed are encoded once and copied.
pub fn encode_routed(
    codec: &Codec,
    topics: &Topics,
    routed: &Routed,
    traceparent: &str,
    output: &mut Vec<OutputRecord>,
) -> Result<(), hitl_schema::CodecError> {
    let decision_id = &routed.lifecycle.decision_id;
    let record = |topic: &str, key: &str, payload: Vec<u8>| {
        OutputRecord::new(topic, key.as_bytes(), payload).with_header("traceparent", traceparent)
    };
    let mut review_payload = Vec::new();
    let shared_decision = match &routed.review {
        Some(review) => {
            review_payload.reserve(512);
            let topic = &topics.review_requests;
            Some(codec.encode_review_request(topic, review, &mut review_payload)?)
        }
        None => None,
    };
    let mut outcome_payload = Vec::new();
    let shared_outcome = match &routed.outcome {
        Some(outcome) => {
            outcome_payload.reserve(256);
            Some(codec.encode_shared(&topics.outcomes, outcome, &mut outcome_payload)?)
        }
        None => None,
    };
    let mut lifecycle_payload = Vec::with_capacity(768);
    codec.encode_lifecycle_event(
        &topics.lifecycle,
        &routed.lifecycle,
        shared_decision,
        shared_outcome,
        &mut lifecycle_payload,
    )?;
    if let Some(review) = &routed.review {
        output.push(record(
            &topics.review_requests,
            &review.pool,
            review_payload,
        ));
    }
    if routed.outcome.is_some() {
        output.push(record(&topics.outcomes, decision_id, outcome_payload));
    }
    output.push(record(&topics.lifecycle, decision_id, lifecycle_payload));
    Ok(())
}

/// The router's span for one input record, ending now.
fn record_span(
    input: &InputRecord<'_>,
    context: TraceContext,
    parent: Option<&TraceContext>,
    started_nanos: u64,
) -> Span {
    Span::new(
        "hitl.router route",
        SpanKind::Consumer,
        context,
        parent,
        started_nanos,
    )
    .attribute("messaging.system", "kafka")
    .attribute("messaging.operation.type", "process")
    .attribute("messaging.destination.name", input.topic().to_owned())
    .attribute(
        "messaging.destination.partition.id",
        input.partition().to_string(),
    )
    .attribute("messaging.kafka.offset", input.offset())
    .ended_at(trace::now_nanos())
}

/// Why the router processor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Policy(#[from] LoadError),
    #[error("codec: {0}")]
    Codec(#[from] hitl_schema::CodecError),
    #[error("{0}")]
    Trust(String),
}

/// Where a record went wrong, for the DLQ's `hitl.error.stage`.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Authenticate,
    Decode,
    Validate,
    Route,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Self::Authenticate => "authenticate",
            Self::Decode => "decode",
            Self::Validate => "validate",
            Self::Route => "route",
        }
    }
}

struct Rejection {
    stage: Stage,
    class: String,
    message: String,
    decision_id: Option<String>,
}

/// The router as a `Processor` of the transactional loop.
pub struct RouterProcessor {
    codec: Codec,
    /// Signs the lifecycle events.
    signer: Option<Signer>,
    /// The publisher keys decisions are checked against, if they must be signed.
    publishers: Option<KeySet>,
    topics: Topics,
    max_record_bytes: usize,
    active: PolicySource,
    shadow: Option<PolicySource>,
    /// The decision ids routed within the horizon, of the partitions this instance owns.
    seen: SeenIds,
    /// The decisions partitions this instance owns (`seen` restores the new ones).
    owned: std::collections::BTreeSet<i32>,
    /// Where `seen` is restored from (`topics.router_seen`).
    kafka: KafkaSettings,
    /// `service.dedup_restore_timeout`.
    restore_timeout: Duration,
    /// When the count bound last evicted ids younger than the horizon was logged (at most once a
    /// minute), and how many it evicted since.
    capacity_warned: Option<Instant>,
    capacity_evicted_unlogged: u64,
    metrics: Arc<RouterMetrics>,
    reload_requested: Arc<AtomicBool>,
    check_interval: Duration,
    last_check: Instant,
    tracer: Tracer,
}

impl RouterProcessor {
    /// Builds the processor: loads the policies (failing on a bad one), builds the codec, and
    /// registers the router's metrics. `reload_requested` is set by SIGHUP; spans go to `tracer`.
    pub fn build(
        settings: &hitl_runtime::Settings<RouterSettings>,
        registry: &mut prometheus_client::registry::Registry,
        reload_requested: Arc<AtomicBool>,
        tracer: Tracer,
    ) -> Result<Self, BuildError> {
        let codec = settings.codec.build(settings.kafka.request_timeout)?;
        let metrics = Arc::new(RouterMetrics::register(registry));
        let mut processor = Self::new(
            &settings.service,
            codec,
            settings.topics.clone(),
            settings.kafka.clone(),
            metrics,
            reload_requested,
            tracer,
        )?;
        processor.signer = settings.trust.signer().map_err(BuildError::Trust)?;
        if settings.service.require_signed_decisions {
            processor.publishers = Some(settings.trust.key_set().map_err(BuildError::Trust)?);
        } else {
            tracing::warn!("service.require_signed_decisions is off: any client that can write the decisions topic chooses `producer` (separation of duties does not hold)");
        }
        Ok(processor)
    }

    /// Signs lifecycle events with `signer` and accepts only decisions signed by `publishers`.
    pub fn with_trust(mut self, signer: Option<Signer>, publishers: Option<KeySet>) -> Self {
        self.signer = signer;
        self.publishers = publishers;
        self
    }

    fn new(
        settings: &RouterSettings,
        codec: Codec,
        topics: Topics,
        kafka: KafkaSettings,
        metrics: Arc<RouterMetrics>,
        reload_requested: Arc<AtomicBool>,
        tracer: Tracer,
    ) -> Result<Self, LoadError> {
        let active = PolicySource::load(&settings.policy_path)?;
        let shadow = settings
            .shadow_policy_path
            .as_deref()
            .map(PolicySource::load)
            .transpose()?;
        metrics.policies_loaded(
            &active.policy.version,
            shadow.as_ref().map(|s| s.policy.version.as_str()),
        );
        tracing::info!(version = %active.policy.version, rules = active.policy.rules.len(), shadow = ?shadow.as_ref().map(|s| &s.policy.version), "policy loaded");
        Ok(Self {
            codec,
            signer: None,
            publishers: None,
            topics,
            max_record_bytes: settings.max_record_bytes,
            active,
            shadow,
            seen: SeenIds::new(dedup::Limits {
                horizon_millis: i64::try_from(settings.dedup_horizon.as_millis())
                    .unwrap_or(i64::MAX),
                max_ids: settings.dedup_window,
            }),
            owned: std::collections::BTreeSet::new(),
            kafka,
            restore_timeout: settings.dedup_restore_timeout,
            capacity_warned: None,
            capacity_evicted_unlogged: 0,
            metrics,
            reload_requested,
            check_interval: settings.policy_check_interval,
            last_check: Instant::now(),
            tracer,
        })
    }

    fn reload_policies(&mut self) {
        let sources = std::iter::once(&mut self.active).chain(self.shadow.as_mut());
        let mut changed = false;
        for source in sources {
            match source.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => {
                    changed = true;
                    self.metrics.reload(true);
                    tracing::info!(path = %source.path.display(), version = %source.policy.version, "policy reloaded");
                }
                Err(error) => {
                    self.metrics.reload(false);
                    tracing::error!(%error, version = %source.policy.version, "new policy refused; the old one keeps running");
                }
            }
        }
        if changed {
            self.metrics.policies_loaded(
                &self.active.policy.version,
                self.shadow.as_ref().map(|s| s.policy.version.as_str()),
            );
        }
    }

    fn decode(&self, input: &InputRecord<'_>) -> Result<Decision, Rejection> {
        let reject = |class: String, message: String| Rejection {
            stage: Stage::Decode,
            class,
            message,
            decision_id: None,
        };
        let payload = input
            .payload()
            .ok_or_else(|| reject("empty".into(), "record has no value".into()))?;
        if payload.len() > self.max_record_bytes {
            // Refused unread; its key (the decision id, by the contract) files the refusal in
            // the trail, so that `verify` finds every decision received accounted for.
            let key = input
                .key()
                .and_then(|key| std::str::from_utf8(key).ok())
                .filter(|key| key.len() <= MAX_DEAD_LETTER_KEY_BYTES)
                .map(str::to_owned);
            return Err(Rejection {
                decision_id: key,
                ..reject(
                    "oversize".into(),
                    format!(
                        "record of {} bytes exceeds max_record_bytes {}",
                        payload.len(),
                        self.max_record_bytes
                    ),
                )
            });
        }
        let is_json = input
            .header("content-type")
            .is_some_and(|value| value.starts_with(b"application/json"));
        let decoded = if is_json {
            self.codec.decode_json(payload)
        } else {
            self.codec.decode(payload)
        };
        decoded.map_err(|error| reject(format!("decode.{}", error.class()), error.to_string()))
    }

    /// Dead-letters `input` (and, when it names a decision, files a DEAD_LETTERED lifecycle event
    /// for the audit trail). If that event cannot be encoded, the loop dead-letters the input
    /// itself (`Poison`, class `encode.<…>`), or retries it if the schema registry is unreachable.
    fn dead_letter(
        &mut self,
        input: &InputRecord<'_>,
        rejection: Rejection,
        started: u64,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        // The audit trail hears of it too, when there is an id to file it under.
        let decision_id = rejection
            .decision_id
            .as_ref()
            .filter(|id| !id.trim().is_empty());
        let mut lifecycle = None;
        if let Some(decision_id) = decision_id {
            let event = LifecycleEvent::new(
                format!("{decision_id}:router:dead-lettered"),
                decision_id.clone(),
                LifecycleKind::DeadLettered,
                core::SERVICE,
                hitl_runtime::now_millis(),
            )
            .with_reason(format!("{}: {}", rejection.class, rejection.message));
            let payload = match self.codec.encode_to_vec(&self.topics.lifecycle, &event) {
                Ok(payload) => payload,
                Err(error) if is_transient_codec_error(&error) => {
                    return Err(ProcessError::output_encoding(
                        "the dead-letter lifecycle event",
                        error,
                    ))
                }
                Err(error) => {
                    let class = format!("encode.{}", error.class());
                    self.metrics.dead_lettered(&class);
                    return Err(ProcessError::poison(
                        rejection.stage.as_str(),
                        class,
                        format!(
                            "cannot encode the dead-letter lifecycle event ({error}) of a record \
                             rejected with {}: {}",
                            rejection.class, rejection.message
                        ),
                    ));
                }
            };
            let parent = input.header("traceparent").and_then(TraceContext::parse);
            let context = TraceContext::child(
                parent.as_ref(),
                decision_id.as_bytes(),
                self.tracer.sample_ratio(),
            );
            if self.tracer.records(&context) {
                self.tracer.export(
                    record_span(input, context, parent.as_ref(), started)
                        .attribute("hitl.decision_id", decision_id.clone())
                        .attribute("hitl.route", "dead_letter")
                        .failed(format!("{}: {}", rejection.class, rejection.message)),
                );
            }
            let mut record =
                OutputRecord::new(&self.topics.lifecycle, decision_id.as_bytes(), payload)
                    .with_header("traceparent", context.header());
            if let Some(signer) = &self.signer {
                record.sign(signer, auth::Kind::Lifecycle);
            }
            lifecycle = Some(record);
        }
        self.metrics.dead_lettered(&rejection.class);
        tracing::warn!(
            topic = input.topic(), partition = input.partition(), offset = input.offset(),
            class = %rejection.class, error = %rejection.message, "dead-lettered"
        );
        let mut record = OutputRecord::dead_letter(
            &self.topics.decisions_dlq,
            input,
            rejection.stage.as_str(),
            &rejection.class,
            &rejection.message,
        );
        if let Some(content_type) = input.header("content-type") {
            record = record.with_header("content-type", content_type);
        }
        output.push(record);
        output.extend(lifecycle);
        Ok(())
    }
}

/// What restoring one partition's remembered ids read and kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeenRestore {
    /// Changelog records read.
    pub records: u64,
    /// Records that are not a changelog entry (skipped, logged).
    pub unreadable: u64,
    /// What the core kept and skipped.
    pub restored: dedup::Restored,
    pub took: Duration,
}

/// Restores `partition`'s remembered ids into `seen` from the changelog `topic`: the entries
/// written since `now_millis - horizon` (ListOffsets by time), and no more than the count bound
/// (the read starts at most `max_ids` offsets before the end), so the restore takes as long as
/// what it keeps, not as long as the topic.
pub fn restore_seen_partition(
    seen: &mut SeenIds,
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    now_millis: i64,
    timeout: Duration,
) -> Result<SeenRestore, hitl_runtime::kafka::ReadError> {
    let started = Instant::now();
    let limits = seen.limits();
    let mut report = SeenRestore::default();
    seen.forget_partition(partition);
    report.records = hitl_runtime::kafka::read_partition_recent(
        kafka,
        topic,
        partition,
        now_millis.saturating_sub(limits.horizon_millis),
        limits.max_ids as u64,
        timeout,
        |message| {
            use rdkafka::Message;
            match dedup::decode_entry(message.key(), message.payload()) {
                Some((digest, at)) => {
                    seen.restore_entry(partition, digest, at, now_millis, &mut report.restored)
                }
                None => {
                    report.unreadable += 1;
                    tracing::warn!(%topic, partition, offset = message.offset(), "not a seen-id entry; skipped");
                }
            }
            true
        },
    )?;
    report.took = started.elapsed();
    Ok(report)
}

impl RouterProcessor {
    /// Remembers a routed decision's id in the open transaction, and writes it to the changelog
    /// in the same transaction, to the partition numbered like its input's: whoever owns that
    /// input partition next restores it from there. With idempotent delivery the entry is sent
    /// only after the routing's outputs are acknowledged (`last`): a crash in between routes the
    /// decision again (outputs repeat, removed downstream by key) rather than drop it unrouted.
    fn remember(
        &mut self,
        partition: i32,
        digest: dedup::Digest,
        now_millis: i64,
        output: &mut Vec<OutputRecord>,
    ) {
        if !self.seen.insert(partition, digest, now_millis) {
            return;
        }
        let (key, value) = dedup::encode_entry(digest, now_millis);
        let mut record = OutputRecord::new(&self.topics.router_seen, key.to_vec(), value.to_vec());
        record.partition = Some(partition);
        record.last = true;
        output.push(record);
    }

    /// Restores the remembered ids of newly owned `partitions`. Without them the router would
    /// route re-published decisions again: a failure is fatal (the restarted router tries again).
    fn restore_seen(&mut self, partitions: &[i32]) -> Result<(), ProcessError> {
        let topic = self.topics.router_seen.clone();
        let available =
            hitl_runtime::kafka::partition_count(&self.kafka, &topic).map_err(|error| {
                ProcessError::fatal(format!("cannot read the partitions of {topic}: {error}"))
            })?;
        if let Some(&missing) = partitions.iter().find(|&&partition| partition >= available) {
            return Err(ProcessError::fatal(format!(
                "topics.router_seen `{topic}` has {available} partitions, but decisions \
                 partition {missing} is assigned: it needs as many partitions as \
                 topics.decisions (`hitl-admin topics create` makes it so)"
            )));
        }
        let now = hitl_runtime::now_millis();
        for &partition in partitions {
            let report = restore_seen_partition(
                &mut self.seen,
                &self.kafka,
                &topic,
                partition,
                now,
                self.restore_timeout,
            )
            .map_err(|error| {
                ProcessError::fatal(format!(
                    "cannot restore the remembered decision ids of partition {partition} from \
                     {topic}: {error}"
                ))
            })?;
            self.metrics
                .dedup_restored(report.restored.ids, report.took);
            tracing::info!(
                partition,
                records = report.records,
                ids = report.restored.ids,
                expired = report.restored.expired,
                repeated = report.restored.repeated,
                unreadable = report.unreadable,
                remembered = self.seen.len(),
                took_ms = report.took.as_millis() as u64,
                "remembered decision ids restored"
            );
            self.count_evicted(report.restored.evicted, now);
        }
        Ok(())
    }

    /// Counts evictions, and says (at most once a minute) when the count bound, not the horizon,
    /// decides how far back duplicates are caught.
    fn count_evicted(&mut self, evicted: dedup::Evicted, now_millis: i64) {
        self.metrics
            .dedup_evicted(evicted.expired, evicted.over_capacity);
        self.metrics.dedup_gauges(
            self.seen.len(),
            self.seen.heap_bytes(),
            self.seen.oldest(),
            now_millis,
        );
        if evicted.over_capacity == 0 {
            return;
        }
        self.capacity_evicted_unlogged += evicted.over_capacity;
        if self
            .capacity_warned
            .is_some_and(|warned| warned.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.capacity_warned = Some(Instant::now());
        let limits = self.seen.limits();
        let reach = evicted
            .capacity_reach
            .map(|at| Duration::from_millis(now_millis.saturating_sub(at).max(0) as u64));
        tracing::warn!(
            evicted = self.capacity_evicted_unlogged,
            max_ids = limits.max_ids,
            horizon = %humantime::format_duration(Duration::from_millis(limits.horizon_millis as u64)),
            reach = ?reach,
            "service.dedup_window is full: remembered ids are evicted before service.dedup_horizon, \
             so duplicates are caught only this far back; raise dedup_window (memory) or lower the horizon"
        );
        self.capacity_evicted_unlogged = 0;
    }
}

impl Processor for RouterProcessor {
    fn process(
        &mut self,
        input: &InputRecord<'_>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        let started_nanos = if self.tracer.is_enabled() {
            trace::now_nanos()
        } else {
            0
        };
        // Who published it: a trusted publisher key, checked on the record's exact bytes before
        // anything else is believed.
        let publisher = match &self.publishers {
            None => Ok(None),
            Some(keys) => keys
                .verify(
                    auth::Kind::Decision,
                    input.key(),
                    input.payload(),
                    input.header(auth::HEADER),
                )
                .map(|key| Some((key.key_id.clone(), key))),
        };
        let decision = match self.decode(input) {
            Ok(decision) => decision,
            Err(rejection) => return self.dead_letter(input, rejection, started_nanos, output),
        };
        let publisher = publisher.and_then(|key| match key {
            Some((key_id, key)) => key
                .may_publish_as(&decision.producer)
                .map(|()| Some(key_id)),
            None => Ok(None),
        });
        let publisher = match publisher {
            Ok(publisher) => publisher,
            Err(error) => {
                let rejection = Rejection {
                    stage: Stage::Authenticate,
                    class: format!("auth.{}", error.reason()),
                    message: error.to_string(),
                    decision_id: Some(decision.decision_id),
                };
                return self.dead_letter(input, rejection, started_nanos, output);
            }
        };
        let problems = validate::problems(&decision);
        if !problems.is_empty() {
            let rejection = Rejection {
                stage: Stage::Validate,
                class: "validation".into(),
                message: problems.join("; "),
                decision_id: Some(decision.decision_id),
            };
            return self.dead_letter(input, rejection, started_nanos, output);
        }
        let digest = dedup::digest(&decision.decision_id);
        if self.seen.contains(digest) {
            self.metrics.duplicate();
            tracing::debug!(decision_id = %decision.decision_id, partition = input.partition(), offset = input.offset(), "duplicate decision dropped");
            return Ok(());
        }

        let now = hitl_runtime::now_millis();
        let parent = input.header("traceparent").and_then(TraceContext::parse);
        let context = TraceContext::child(
            parent.as_ref(),
            decision.decision_id.as_bytes(),
            self.tracer.sample_ratio(),
        );
        let traceparent = context.header();
        let workflow = decision.workflow.clone();
        let age = now - decision.created_at;
        let started = Instant::now();
        let mut routed = core::route(
            &self.active.policy,
            self.shadow.as_ref().map(|source| &source.policy),
            decision,
            now,
            Some(traceparent.clone()),
        );
        if let Some(key_id) = publisher {
            routed
                .lifecycle
                .attributes
                .insert("publisher_key".into(), key_id);
        }
        self.metrics.evaluated(started.elapsed(), age);
        let produced = output.len();
        let encoded = encode_routed(&self.codec, &self.topics, &routed, &traceparent, output);
        if let (Ok(()), Some(signer)) = (&encoded, &self.signer) {
            for record in &mut output[produced..] {
                if record.topic == self.topics.lifecycle {
                    record.sign(signer, auth::Kind::Lifecycle);
                } else if record.topic == self.topics.review_requests {
                    record.sign(signer, auth::Kind::ReviewRequest);
                }
            }
        }
        if let Err(error) = encoded {
            output.truncate(produced);
            if is_transient_codec_error(&error) {
                return Err(ProcessError::output_encoding("the routed records", error));
            }
            let rejection = Rejection {
                stage: Stage::Route,
                class: format!("encode.{}", error.class()),
                message: error.to_string(),
                decision_id: Some(routed.lifecycle.decision_id.clone()),
            };
            return self.dead_letter(input, rejection, started_nanos, output);
        }
        self.remember(input.partition(), digest, now, output);
        if self.tracer.records(&context) {
            self.tracer.export(
                record_span(input, context, parent.as_ref(), started_nanos)
                    .attribute("hitl.decision_id", routed.lifecycle.decision_id.clone())
                    .attribute("hitl.workflow", workflow.clone())
                    .attribute("hitl.route", routed.route)
                    .attribute("hitl.policy.rule", routed.rule.clone())
                    .attribute("hitl.policy.version", self.active.policy.version.clone())
                    .attribute(
                        "hitl.qa_sample",
                        routed
                            .review
                            .as_ref()
                            .is_some_and(|review| review.kind == hitl_schema::ReviewKind::QaSample),
                    ),
            );
        }
        self.metrics.routed(routed.route, &workflow);
        if routed
            .review
            .as_ref()
            .is_some_and(|review| review.kind == hitl_schema::ReviewKind::QaSample)
        {
            self.metrics.qa_sampled();
        }
        if let Some(agrees) = routed.shadow_agrees {
            self.metrics.shadow(agrees);
        }
        Ok(())
    }

    fn tick(
        &mut self,
        now_millis: i64,
        _output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        let evicted = self.seen.evict(now_millis);
        self.count_evicted(evicted, now_millis);
        let requested = self.reload_requested.swap(false, Ordering::Relaxed);
        if requested || self.last_check.elapsed() >= self.check_interval {
            self.last_check = Instant::now();
            self.reload_policies();
        }
        Ok(())
    }

    fn committed(&mut self) {
        let now = hitl_runtime::now_millis();
        let evicted = self.seen.commit(now);
        self.count_evicted(evicted, now);
    }

    fn aborted(&mut self) -> Result<(), ProcessError> {
        self.seen.abort();
        Ok(())
    }

    fn partitions_assigned(&mut self, partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        let owned: std::collections::BTreeSet<i32> = partitions
            .iter()
            .filter(|(topic, _)| *topic == self.topics.decisions)
            .map(|(_, partition)| *partition)
            .collect();
        let forgotten = self
            .seen
            .retain_partitions(|partition| owned.contains(&partition));
        let new: Vec<i32> = owned.difference(&self.owned).copied().collect();
        if forgotten > 0 {
            tracing::info!(
                forgotten,
                "the remembered ids of partitions gone are forgotten"
            );
        }
        self.owned = owned;
        if self.seen.enabled() && !new.is_empty() {
            self.restore_seen(&new)?;
        }
        self.metrics.dedup_gauges(
            self.seen.len(),
            self.seen.heap_bytes(),
            self.seen.oldest(),
            hitl_runtime::now_millis(),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hitl_schema::{Codec, Decision, ReviewKind};
    use proptest::prelude::*;

    use super::*;

    const POLICY: &str = include_str!("../../../config/policy.yaml");
    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn decision(id: String, confidence: f64, risk: f64, amount: f64) -> Decision {
        Decision {
            decision_id: id,
            workflow: "payments.card".into(),
            subject: "txn-1".into(),
            action: "block".into(),
            confidence,
            risk_score: Some(risk),
            amount: Some(amount),
            priority: Some("urgent".into()),
            producer: "fraud-gbm".into(),
            model_name: "fraud-gbm".into(),
            model_version: None,
            features: BTreeMap::from([("velocity_1h".into(), 3.0)]),
            context: BTreeMap::from([("merchant".into(), "m-77".into())]),
            sensitive_fields: vec!["merchant".into()],
            created_at: 1_764_000_000_000,
            sla_ms: None,
        }
    }

    /// Encodes one routing and checks every output record against what a user would check: its
    /// topic, key and traceparent, and a payload that is exactly the codec's encoding of the routed
    /// value. Returns the routing's kind: (outcome?, review kind).
    fn check_encoding(decision: Decision) -> (bool, Option<ReviewKind>) {
        let policy = Policy::from_yaml(POLICY).unwrap();
        let codec = Codec::single_object();
        let topics = Topics::default();
        let routed = core::route(
            &policy,
            None,
            decision,
            1_764_000_000_050,
            Some(TRACEPARENT.into()),
        );
        let mut output = Vec::new();
        encode_routed(&codec, &topics, &routed, TRACEPARENT, &mut output).unwrap();

        let mut expected = Vec::new();
        if let Some(review) = &routed.review {
            let payload = codec
                .encode_to_vec(&topics.review_requests, review)
                .unwrap();
            expected.push((&topics.review_requests, review.pool.as_str(), payload));
        }
        let decision_id = routed.lifecycle.decision_id.as_str();
        if let Some(outcome) = &routed.outcome {
            let payload = codec.encode_to_vec(&topics.outcomes, outcome).unwrap();
            expected.push((&topics.outcomes, decision_id, payload));
        }
        let payload = codec
            .encode_to_vec(&topics.lifecycle, &routed.lifecycle)
            .unwrap();
        expected.push((&topics.lifecycle, decision_id, payload));

        assert_eq!(output.len(), expected.len());
        for (record, (topic, key, payload)) in output.iter().zip(expected) {
            assert_eq!(&record.topic, topic);
            assert_eq!(record.key, key.as_bytes());
            assert_eq!(record.payload.as_deref(), Some(&payload[..]));
            assert_eq!(
                record.headers,
                vec![("traceparent".to_owned(), TRACEPARENT.as_bytes().to_vec())]
            );
        }
        (
            routed.outcome.is_some(),
            routed.review.as_ref().map(|review| review.kind),
        )
    }

    #[test]
    fn every_kind_of_routing_encodes_its_records_exactly() {
        let mut kinds = std::collections::BTreeSet::new();
        for i in 0..200 {
            let id = format!("d-{i}");
            // Auto-approved (5% QA-sampled), then human (large amount), then the default pool.
            kinds.insert(format!(
                "{:?}",
                check_encoding(decision(id.clone(), 0.95, 0.1, 10.0))
            ));
            kinds.insert(format!(
                "{:?}",
                check_encoding(decision(id.clone(), 0.5, 0.1, 2e4))
            ));
            kinds.insert(format!(
                "{:?}",
                check_encoding(decision(id, 0.5, 0.5, 10.0))
            ));
        }
        let expected = [
            "(false, Some(Review))",
            "(true, None)",
            "(true, Some(QaSample))",
        ];
        assert_eq!(kinds, expected.into_iter().map(String::from).collect());
    }

    #[test]
    fn a_horizon_longer_than_the_changelog_keeps_is_refused() {
        let mut settings = hitl_runtime::Settings::<RouterSettings>::default();
        assert_eq!(dedup_problems(&settings), Vec::<String>::new());
        settings.service.dedup_horizon =
            settings.topics.router_seen_retention + Duration::from_secs(1);
        let problems = dedup_problems(&settings);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("service.dedup_horizon: "),
            "{problems:?}"
        );
        assert!(problems[0].contains("topics.router_seen_retention"));
        settings.service.dedup_window = 0;
        assert!(
            dedup_problems(&settings).is_empty(),
            "off: no changelog to agree with"
        );
    }

    proptest! {
        #[test]
        fn routed_records_are_the_codec_encoding_of_the_routed_values(
            id in "[a-z0-9-]{1,40}",
            confidence in 0.0f64..=1.0,
            risk in 0.0f64..=1.0,
            amount in 0.0f64..1e5,
        ) {
            check_encoding(decision(id, confidence, risk, amount));
        }
    }
}
