//! The assignment service's I/O shell: review requests and verdicts in (the loop's input), the roster
//! from `hitl.reviewers` (every partition, beside the loop), the pure core in the middle, and
//! assignments, outcomes, lifecycle events and the changelog out.
//!
//! State lives in the core and in the compacted changelog `hitl.assignment.state`: each pool's
//! entries go to the changelog partition with the same number as the pool's review-request
//! partition, so an instance that is given partition p restores exactly the pools of p.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use hitl_runtime::{
    auth::{self, AuthError, KeySet, Signer},
    config::{Delivery, KafkaSettings, Secret, Topics},
    kafka::reader_config,
    trace::{self, Span, SpanKind, TraceContext, Tracer},
    InputRecord, OutputRecord, ProcessError, Processor, Validate,
};
use hitl_schema::{Codec, ReviewRequest, ReviewerStatus, Verdict};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    Message, Offset, TopicPartitionList,
};
use serde::{Deserialize, Serialize};

use crate::{
    core::{Core, Effect, Observation, Rejection, ReviewSpan, StateRecord},
    metrics::AssignmentMetrics,
    pools::{CoreConfig, PoolPolicy},
    queue::DecayParams,
};

/// The assignment service's `[service]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssignmentSettings {
    /// Names this instance: its `transactional.id` is `hitl-assignment-<instance_id>`.
    pub instance_id: String,
    pub group_id: String,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// How often timers (lease expiry, SLA) are checked and queues re-examined.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    /// How long an owned input partition with nothing to read holds timers back (see
    /// `docs/design.md`, "Time"): after a restart or a rebalance, lease expiries and SLA
    /// deadlines wait until the backlog is read, or this long if there is none.
    #[serde(with = "humantime_serde")]
    pub input_quiet: Duration,
    /// How often queue gauges are recomputed (a walk over every item).
    #[serde(with = "humantime_serde")]
    pub gauge_interval: Duration,
    /// How long restoring one changelog partition may take before the service gives up.
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
    /// Larger input records go to the DLQ unread.
    pub max_record_bytes: usize,
    /// Priority with SLA decay.
    pub decay: DecayParams,
    /// Policy of every pool not listed in `pools`.
    pub default_pool: PoolPolicy,
    /// Per-pool policies, by pool name.
    pub pools: BTreeMap<String, PoolPolicy>,
    /// Queued items examined per assignment pass at most.
    pub max_scan: usize,
    /// How long decided ids are remembered (late verdicts, re-delivered requests).
    #[serde(with = "humantime_serde")]
    pub done_retention: Duration,
    /// The secret lease ids are derived with (hex, at least 32 bytes); prefer
    /// `HITL_SERVICE__LEASE_SECRET` or `lease_secret_file`.
    pub lease_secret: Option<Secret>,
    /// A file holding the lease secret in hex (a mounted secret).
    pub lease_secret_file: Option<PathBuf>,
    /// Larger verdicts go to the DLQ unread.
    pub max_verdict_bytes: usize,
    /// A verdict whose rationale is longer is rejected (`oversize`).
    pub max_rationale_bytes: usize,
}

impl Default for AssignmentSettings {
    fn default() -> Self {
        let core = CoreConfig::default();
        Self {
            instance_id: "0".into(),
            group_id: "hitl-assignment".into(),
            create_topics: true,
            tick_interval: Duration::from_millis(250),
            input_quiet: Duration::from_secs(3),
            gauge_interval: Duration::from_secs(5),
            restore_timeout: Duration::from_secs(300),
            max_record_bytes: 1024 * 1024,
            decay: core.decay,
            default_pool: core.default_pool,
            pools: core.pools,
            max_scan: core.max_scan,
            done_retention: core.done_retention,
            lease_secret: None,
            lease_secret_file: None,
            max_verdict_bytes: 16 * 1024,
            max_rationale_bytes: 4 * 1024,
        }
    }
}

impl AssignmentSettings {
    pub fn transactional_id(&self) -> String {
        format!("hitl-assignment-{}", self.instance_id)
    }

    pub fn core_config(&self) -> CoreConfig {
        CoreConfig {
            decay: self.decay.clone(),
            default_pool: self.default_pool.clone(),
            pools: self.pools.clone(),
            max_scan: self.max_scan,
            done_retention: self.done_retention,
            lease_secret: self.lease_secret().ok().flatten().unwrap_or_default(),
        }
    }

    /// The lease secret's bytes, if configured.
    pub fn lease_secret(&self) -> Result<Option<Vec<u8>>, String> {
        hitl_runtime::auth::load_secret(
            "service.lease_secret",
            self.lease_secret.as_ref(),
            self.lease_secret_file.as_ref(),
            None,
        )
    }
}

/// The trust settings the assignment service cannot run without: a key to sign its lifecycle
/// events with, and the router's key (review requests are accepted from the router only). Each
/// problem names its field.
pub fn trust_problems(settings: &hitl_runtime::Settings<AssignmentSettings>) -> Vec<String> {
    let mut problems = Vec::new();
    if matches!(settings.trust.signer(), Ok(None)) {
        problems.push(
            "trust.signing_key_id: the assignment service signs its lifecycle events for the \
             audit; set trust.signing_key_id and trust.signing_secret (or signing_secret_file)"
                .into(),
        );
    }
    let routers = settings.trust.key_set().map_or(0, |keys| {
        keys.keys()
            .filter(|key| key.may_speak_for("router").is_ok())
            .count()
    });
    if routers == 0 {
        problems.push(
            "trust.keys_file: no key of the router is trusted (grant service = \"router\"): \
             review requests are accepted only when the router signed them"
                .into(),
        );
    }
    problems
}

impl Validate for AssignmentSettings {
    fn validate(&self, errors: &mut Vec<String>) {
        hitl_runtime::config::validate_instance(&self.instance_id, &self.group_id, errors);
        if self.tick_interval < Duration::from_millis(10) {
            errors.push("service.tick_interval: must be at least 10ms".into());
        }
        if self.gauge_interval.is_zero() {
            errors.push("service.gauge_interval: must be more than 0".into());
        }
        if self.restore_timeout < Duration::from_secs(1) {
            errors.push("service.restore_timeout: must be at least 1s".into());
        }
        if self.max_record_bytes < 64 {
            errors.push("service.max_record_bytes: must be at least 64".into());
        }
        if !(256..=256 * 1024).contains(&self.max_verdict_bytes) {
            errors.push("service.max_verdict_bytes: must be within 256 and 262144".into());
        }
        if self.max_rationale_bytes > self.max_verdict_bytes {
            errors.push("service.max_rationale_bytes: must not exceed max_verdict_bytes".into());
        }
        match self.lease_secret() {
            Err(error) => errors.push(error),
            Ok(None) => errors.push(
                "service.lease_secret: required (hex, 32 bytes or more): lease ids are derived \
                 from it; set lease_secret_file or HITL_SERVICE__LEASE_SECRET"
                    .into(),
            ),
            Ok(Some(secret)) if secret.len() < 32 => errors.push(format!(
                "service.lease_secret: {} bytes; at least 32 are needed",
                secret.len()
            )),
            Ok(Some(_)) => {}
        }
        errors.extend(self.core_config().problems("service."));
    }

    fn secrets(&self) -> Vec<(String, Vec<u8>)> {
        self.lease_secret()
            .ok()
            .flatten()
            .map(|secret| ("service.lease_secret".to_owned(), secret))
            .into_iter()
            .collect()
    }
}

/// A roster change read from `hitl.reviewers`.
#[derive(Debug, Clone, PartialEq)]
pub enum RosterUpdate {
    Status(ReviewerStatus),
    Removed(String),
    /// An entry that was not applied (unsigned, untrusted, another reviewer's, roles not granted).
    Refused {
        reason: &'static str,
    },
    /// Every partition was read to its end once: the roster is complete as of start.
    Loaded,
}

/// The longest reviewer id, role, skill or pool name a roster entry may hold, in bytes.
pub const MAX_ROSTER_TEXT_BYTES: usize = 256;
/// The most roles, skills or pools a roster entry may list.
pub const MAX_ROSTER_LIST: usize = 64;

/// Whether a roster entry (or, without `status`, the tombstone of reviewer `key`) is
/// authenticated: signed by a trusted key that may act for that reviewer and claim its roles.
pub fn check_roster_entry(
    keys: &KeySet,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    header: Option<&[u8]>,
    reviewer_id: &str,
    status: Option<&ReviewerStatus>,
) -> Result<(), AuthError> {
    let signer = keys.verify(auth::Kind::Reviewer, key, payload, header)?;
    signer.may_act_for(reviewer_id)?;
    if let Some(status) = status {
        let lists = [&status.roles, &status.skills, &status.pools];
        let too_long = status.reviewer_id.len() > MAX_ROSTER_TEXT_BYTES
            || lists.iter().any(|list| {
                list.len() > MAX_ROSTER_LIST
                    || list.iter().any(|text| text.len() > MAX_ROSTER_TEXT_BYTES)
            });
        if too_long {
            return Err(AuthError::NotAllowed(format!(
                "an entry over its bounds (ids and names at most {MAX_ROSTER_TEXT_BYTES} bytes, \
                 at most {MAX_ROSTER_LIST} roles, skills and pools)"
            )));
        }
        if key.is_some_and(|key| key != status.reviewer_id.as_bytes()) {
            return Err(AuthError::NotAllowed(format!(
                "the entry of `{}` is keyed by another reviewer id",
                status.reviewer_id
            )));
        }
        signer.may_claim_roles(&status.roles)?;
    }
    Ok(())
}

/// Reads every partition of the reviewers topic from its start, for ever, and sends each change.
/// Runs on its own thread until `stop` is set or the receiver is gone.
pub fn spawn_roster_reader(
    kafka: &KafkaSettings,
    topic: String,
    codec: Codec,
    keys: Arc<KeySet>,
    updates: mpsc::Sender<RosterUpdate>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut config = reader_config(kafka, kafka.delivery == Delivery::Transactional);
    config.set("enable.partition.eof", "true");
    std::thread::Builder::new()
        .name("roster-reader".into())
        .spawn(move || {
            let consumer: BaseConsumer<hitl_runtime::kafka::EndReaderContext> =
                match config.create_with_context(hitl_runtime::kafka::EndReaderContext) {
                Ok(consumer) => consumer,
                Err(error) => {
                    tracing::error!(%error, "roster reader: cannot create consumer");
                    return;
                }
            };
            // Wait for the topic's partitions.
            let partitions = loop {
                if stop.is_cancelled() {
                    return;
                }
                match consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                    Ok(metadata) => {
                        let count = metadata
                            .topics()
                            .iter()
                            .find(|t| t.name() == topic)
                            .map_or(0, |t| t.partitions().len());
                        if count > 0 {
                            break count as i32;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "roster reader: no metadata yet"),
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            let mut assignment = TopicPartitionList::new();
            for partition in 0..partitions {
                let _ = assignment.add_partition_offset(&topic, partition, Offset::Beginning);
            }
            if let Err(error) = consumer.assign(&assignment) {
                tracing::error!(%error, "roster reader: cannot assign partitions");
                return;
            }
            tracing::info!(%topic, partitions, "reading the reviewer roster");
            // The newest `updated_at` accepted per reviewer.
            let mut latest: HashMap<String, i64> = HashMap::new();
            // Partitions read to their end once; all of them: the roster is loaded.
            let mut at_end: BTreeSet<i32> = BTreeSet::new();
            let mut loaded = false;
            while !stop.is_cancelled() {
                let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let message = match polled {
                    Ok(message) => message,
                    Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                        at_end.insert(partition);
                        if !loaded && at_end.len() >= partitions as usize {
                            loaded = true;
                            tracing::info!(reviewers = latest.len(), "reviewer roster loaded");
                            if updates.send(RosterUpdate::Loaded).is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "roster reader: consume error");
                        continue;
                    }
                };
                let header = message
                    .headers()
                    .and_then(|headers| {
                        headers
                            .iter()
                            .find(|header| header.key == auth::HEADER)
                            .and_then(|header| header.value)
                    });
                let update = match message.payload() {
                    None => match message.key().map(String::from_utf8_lossy) {
                        Some(id) => match check_roster_entry(
                            &keys,
                            message.key(),
                            None,
                            header,
                            &id,
                            None,
                        ) {
                            Ok(()) => RosterUpdate::Removed(id.into_owned()),
                            Err(error) => {
                                tracing::warn!(reviewer_id = %id.chars().take(128).collect::<String>(), %error, offset = message.offset(), "roster tombstone refused");
                                RosterUpdate::Refused { reason: error.reason() }
                            }
                        },
                        None => continue,
                    },
                    Some(payload) => match codec.decode::<ReviewerStatus>(payload) {
                        Ok(status) => match check_roster_entry(
                            &keys,
                            message.key(),
                            Some(payload),
                            header,
                            &status.reviewer_id,
                            Some(&status),
                        )
                        .and_then(|()| {
                            // A signed entry copied from the topic and sent again later (to
                            // bring back roles taken away since) is older than what was seen.
                            match latest.get(&status.reviewer_id) {
                                Some(seen) if *seen > status.updated_at => {
                                    Err(AuthError::NotAllowed(format!(
                                        "a replayed entry: updated_at {} is older than {seen}",
                                        status.updated_at
                                    )))
                                }
                                _ => Ok(()),
                            }
                        }) {
                            Ok(()) => {
                                latest.insert(status.reviewer_id.clone(), status.updated_at);
                                RosterUpdate::Status(status)
                            }
                            Err(error) => {
                                tracing::warn!(reviewer_id = %status.reviewer_id.chars().take(128).collect::<String>(), %error, offset = message.offset(), "roster entry refused");
                                RosterUpdate::Refused { reason: error.reason() }
                            }
                        },
                        Err(error) => {
                            tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "roster reader: undecodable reviewer status skipped");
                            RosterUpdate::Refused { reason: "undecodable" }
                        }
                    },
                };
                if updates.send(update).is_err() {
                    return;
                }
            }
        })
}

/// What a restore read and kept.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Restored {
    /// Changelog records read (every version of every entry).
    pub records: u64,
    /// Records that could not be decoded (skipped, logged).
    pub unreadable: u64,
    /// The pools found, each on this partition.
    pub pools: BTreeSet<String>,
    pub took: Duration,
}

/// Restores one changelog partition into `core`: reads it from its start to its end, applying
/// each entry in order (the latest version of a decision wins; `None` is a tombstone).
pub fn restore_partition(
    core: &mut Core,
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> anyhow::Result<Restored> {
    let started = Instant::now();
    let mut restored = Restored::default();
    restored.records = hitl_runtime::kafka::read_partition(
        kafka,
        topic,
        partition,
        timeout,
        |message| {
            let Some(key) = message.key() else { return };
            let decision_id = String::from_utf8_lossy(key);
            let record = match message.payload().map(serde_json::from_slice::<StateRecord>) {
                None => None,
                Some(Ok(record)) => Some(record),
                Some(Err(error)) => {
                    restored.unreadable += 1;
                    tracing::error!(%decision_id, %error, partition, offset = message.offset(), "unreadable changelog entry skipped");
                    return;
                }
            };
            if let Some(record) = &record {
                if !restored.pools.contains(record.pool()) {
                    restored.pools.insert(record.pool().to_owned());
                }
            }
            core.restore_entry(&decision_id, record);
        },
    )?;
    core.finish_restore();
    restored.took = started.elapsed();
    Ok(restored)
}

/// The assignment service as a `Processor` of the loop.
pub struct AssignmentProcessor {
    core: Core,
    codec: Codec,
    topics: Topics,
    kafka: KafkaSettings,
    settings: AssignmentSettings,
    metrics: Arc<AssignmentMetrics>,
    roster: mpsc::Receiver<RosterUpdate>,
    /// The latest status of every reviewer, to rebuild the core after an abort.
    statuses: BTreeMap<String, ReviewerStatus>,
    /// The partition (of review requests, verdicts and the changelog) each known pool lives on.
    pool_partition: HashMap<String, i32>,
    /// Review-request partitions this instance owns.
    owned: BTreeSet<i32>,
    /// The roster was read to its end once (`RosterUpdate::Loaded`).
    roster_loaded: bool,
    effects: Vec<Effect>,
    last_gauges: Instant,
    tracer: Tracer,
    /// Who may write verdicts (gateways, reviewers' own keys) and review requests (the router).
    keys: Arc<KeySet>,
    /// Signs the lifecycle events.
    signer: Option<Signer>,
}

impl AssignmentProcessor {
    pub(crate) fn new(
        settings: &hitl_runtime::Settings<AssignmentSettings>,
        codec: Codec,
        metrics: Arc<AssignmentMetrics>,
        roster: mpsc::Receiver<RosterUpdate>,
        tracer: Tracer,
        keys: Arc<KeySet>,
        signer: Option<Signer>,
    ) -> Self {
        Self {
            keys,
            signer,
            core: Core::new(settings.service.core_config()),
            codec,
            topics: settings.topics.clone(),
            kafka: settings.kafka.clone(),
            settings: settings.service.clone(),
            metrics,
            roster,
            statuses: BTreeMap::new(),
            pool_partition: HashMap::new(),
            owned: BTreeSet::new(),
            roster_loaded: false,
            effects: Vec::new(),
            last_gauges: Instant::now(),
            tracer,
        }
    }

    /// Applies roster changes that arrived since the last call.
    fn drain_roster(&mut self, now: i64) {
        while let Ok(update) = self.roster.try_recv() {
            match update {
                RosterUpdate::Status(status) => {
                    self.core.reviewer_status(&status, now, &mut self.effects);
                    self.statuses.insert(status.reviewer_id.clone(), status);
                }
                RosterUpdate::Removed(id) => {
                    self.core.reviewer_removed(&id, now, &mut self.effects);
                    self.statuses.remove(&id);
                }
                RosterUpdate::Refused { reason } => self.metrics.roster_refused(reason),
                RosterUpdate::Loaded => self.roster_loaded = true,
            }
        }
    }

    /// Waits (applying what arrives) until the roster has been read to its end once: a verdict
    /// read before its reviewer's entry would be rejected as from an unknown reviewer, and an
    /// item assigned to whoever happened to be read first.
    fn await_roster(&mut self) -> Result<(), ProcessError> {
        let deadline = Instant::now() + self.settings.restore_timeout;
        while !self.roster_loaded {
            let now = hitl_runtime::now_millis();
            self.drain_roster(now);
            if self.roster_loaded {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ProcessError::fatal(anyhow::anyhow!(
                    "the reviewer roster ({}) was not read to its end within restore_timeout",
                    self.topics.reviewers
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Restores the pools of one partition from the changelog.
    fn restore(&mut self, partition: i32) -> anyhow::Result<()> {
        let restored = restore_partition(
            &mut self.core,
            &self.kafka,
            &self.topics.assignment_state,
            partition,
            self.settings.restore_timeout,
        )?;
        for pool in &restored.pools {
            self.pool_partition.insert(pool.clone(), partition);
        }
        self.metrics.restored(restored.records, restored.took);
        tracing::info!(
            partition,
            records = restored.records,
            unreadable = restored.unreadable,
            pools = restored.pools.len(),
            pending = self.core.len(),
            took_ms = restored.took.as_millis() as u64,
            "state restored from the changelog"
        );
        Ok(())
    }

    /// Restores the pools of `partitions` from the changelog. Without its state the service must
    /// not take input, and a half-restored core cannot be trusted: a failure is fatal (the
    /// restarted service restores from scratch).
    fn restore_partitions(
        &mut self,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Result<(), ProcessError> {
        for partition in partitions {
            self.restore(partition).map_err(|error| {
                ProcessError::fatal(error.context(format!(
                    "cannot restore the state of partition {partition} from the changelog"
                )))
            })?;
        }
        Ok(())
    }

    /// Turns the core's effects into output records (and metrics). An output that cannot be
    /// encoded fails the hook (see `ProcessError::output_encoding`): it is never dropped.
    fn emit(&mut self, output: &mut Vec<OutputRecord>) -> Result<(), ProcessError> {
        let partitions = self.topics.partitions;
        for effect in self.effects.drain(..) {
            match effect {
                Effect::Assignment {
                    partition,
                    mut event,
                    pii,
                    trace,
                } => {
                    let topic = if pii {
                        &self.topics.assignments_pii
                    } else {
                        &self.topics.assignments
                    };
                    // Where the reviewer app must send the verdict: the partition this pool's
                    // review requests arrive on (verdicts are co-partitioned with them).
                    event.verdict_partition = self.pool_partition.get(&event.pool).copied();
                    let payload = self.codec.encode_to_vec(topic, &event).map_err(|error| {
                        ProcessError::output_encoding("an assignment event", error)
                    })?;
                    let mut record =
                        OutputRecord::new(topic, event.reviewer_id.as_bytes(), payload);
                    record.partition = partition.filter(|p| *p < partitions);
                    output.push(with_trace(record, trace));
                }
                Effect::Outcome(outcome, trace) => {
                    let payload = self
                        .codec
                        .encode_to_vec(&self.topics.outcomes, &outcome)
                        .map_err(|error| ProcessError::output_encoding("an outcome", error))?;
                    output.push(with_trace(
                        OutputRecord::new(
                            &self.topics.outcomes,
                            outcome.decision_id.as_bytes(),
                            payload,
                        ),
                        trace,
                    ));
                }
                Effect::Lifecycle(event) => {
                    let payload = self
                        .codec
                        .encode_to_vec(&self.topics.lifecycle, &event)
                        .map_err(|error| {
                            ProcessError::output_encoding("a lifecycle event", error)
                        })?;
                    let mut record = OutputRecord::new(
                        &self.topics.lifecycle,
                        event.decision_id.as_bytes(),
                        payload,
                    );
                    if let Some(traceparent) = event.traceparent {
                        record = record.with_header("traceparent", traceparent);
                    }
                    if let Some(signer) = &self.signer {
                        record.sign(signer, auth::Kind::Lifecycle);
                    }
                    output.push(record);
                }
                Effect::State {
                    pool,
                    decision_id,
                    change,
                } => {
                    // Every pool the core knows came from a request or a restore, which both
                    // record its partition: a pool without one is a bug, and dropping its
                    // changelog entry would lose state.
                    let partition = self.pool_partition.get(&*pool).copied().ok_or_else(|| {
                        ProcessError::fatal(format!(
                            "changelog entry of decision {decision_id} in pool {pool}, which has no partition"
                        ))
                    })?;
                    output.push(OutputRecord {
                        topic: self.topics.assignment_state.clone(),
                        key: decision_id.as_bytes().to_vec(),
                        payload: self.core.state_payload(&decision_id, &pool, change),
                        headers: Vec::new(),
                        partition: Some(partition),
                        // The changelog must never get ahead of the outputs it accounts for.
                        last: true,
                    });
                }
                Effect::Observed(observation) => self.metrics.observe(&observation),
                Effect::ReviewSpan(span) => {
                    if self.tracer.records(&span.context) {
                        self.tracer.export(review_span(&span));
                    }
                }
            }
        }
        Ok(())
    }

    fn dead_letter(
        &mut self,
        input: &InputRecord<'_>,
        stage: &str,
        class: &str,
        message: &str,
        output: &mut Vec<OutputRecord>,
    ) {
        self.metrics.dead_lettered(class);
        tracing::warn!(
            topic = input.topic(), partition = input.partition(), offset = input.offset(),
            %class, error = %message, "dead-lettered"
        );
        output.push(OutputRecord::dead_letter(
            &self.topics.decisions_dlq,
            input,
            stage,
            class,
            message,
        ));
    }

    fn payload<'a>(&self, input: &'a InputRecord<'_>) -> Result<&'a [u8], (String, String)> {
        let payload = input
            .payload()
            .ok_or_else(|| ("empty".to_owned(), "record has no value".to_owned()))?;
        if payload.len() > self.settings.max_record_bytes {
            return Err((
                "oversize".into(),
                format!(
                    "record of {} bytes exceeds max_record_bytes {}",
                    payload.len(),
                    self.settings.max_record_bytes
                ),
            ));
        }
        Ok(payload)
    }

    /// A review request appended at `at`, read at `now`.
    fn request(
        &mut self,
        input: &InputRecord<'_>,
        at: i64,
        now: i64,
        output: &mut Vec<OutputRecord>,
    ) {
        let decoded = self.payload(input).and_then(|payload| {
            self.codec
                .decode::<ReviewRequest>(payload)
                .map_err(|error| (format!("decode.{}", error.class()), error.to_string()))
        });
        let request = match decoded {
            Ok(request) => request,
            Err((class, message)) => {
                return self.dead_letter(input, "decode", &class, &message, output)
            }
        };
        // Only the router routes: a review request it did not sign is refused (a client that
        // could write the topic would otherwise choose the pool, the roles and the quorum).
        let signed_by_router = self
            .keys
            .verify(
                auth::Kind::ReviewRequest,
                input.key(),
                input.payload(),
                input.header(auth::HEADER),
            )
            .and_then(|key| key.may_speak_for("router"));
        if let Err(error) = signed_by_router {
            return self.dead_letter(
                input,
                "authenticate",
                &format!("auth.{}", error.reason()),
                &error.to_string(),
                output,
            );
        }
        let mut problems = Vec::new();
        if request.decision.decision_id.trim().is_empty() {
            problems.push("decision.decision_id is empty");
        }
        if request.pool.trim().is_empty() {
            problems.push("pool is empty");
        }
        if request.quorum < 1 {
            problems.push("quorum is below 1");
        }
        if !problems.is_empty() {
            return self.dead_letter(
                input,
                "validate",
                "validation",
                &problems.join("; "),
                output,
            );
        }
        if let Some(previous) = self
            .pool_partition
            .insert(request.pool.clone(), input.partition())
            .filter(|previous| *previous != input.partition())
        {
            tracing::warn!(pool = %request.pool, previous, now = input.partition(), "a pool moved partitions: produce review requests and verdicts keyed by pool with one partitioner");
        }
        let trace = input.header("traceparent").and_then(TraceContext::parse);
        self.core
            .request_traced_at(&request, trace, at, now, &mut self.effects);
    }

    /// A verdict appended at `at`, read at `now`.
    fn verdict(
        &mut self,
        input: &InputRecord<'_>,
        at: i64,
        now: i64,
        output: &mut Vec<OutputRecord>,
    ) {
        let size = input.payload().map_or(0, <[u8]>::len);
        if size > self.settings.max_verdict_bytes {
            let message = format!(
                "verdict of {size} bytes exceeds max_verdict_bytes {}",
                self.settings.max_verdict_bytes
            );
            return self.dead_letter(input, "decode", "oversize", &message, output);
        }
        let decoded = self.payload(input).and_then(|payload| {
            let is_json = input
                .header("content-type")
                .is_some_and(|value| value.starts_with(b"application/json"));
            let decoded = if is_json {
                self.codec.decode_json::<Verdict>(payload)
            } else {
                self.codec.decode::<Verdict>(payload)
            };
            decoded.map_err(|error| (format!("decode.{}", error.class()), error.to_string()))
        });
        match decoded {
            Ok(verdict) => {
                let started = trace::now_nanos();
                let from = self.effects.len();
                // Who sent it: a trusted key that may act for the reviewer it names, checked on
                // the record's exact bytes. Anything else is recorded and never applied.
                let refused = match self
                    .keys
                    .verify(
                        auth::Kind::Verdict,
                        input.key(),
                        input.payload(),
                        input.header(auth::HEADER),
                    )
                    .and_then(|key| key.may_act_for(&verdict.reviewer_id))
                {
                    Err(AuthError::NotAllowed(why)) => Some((Rejection::NotAuthorized, why)),
                    Err(error) => Some((Rejection::Unauthenticated, error.to_string())),
                    Ok(()) if verdict.rationale.len() > self.settings.max_rationale_bytes => {
                        Some((
                            Rejection::Oversize,
                            format!(
                                "rationale of {} bytes is over max_rationale_bytes {}",
                                verdict.rationale.len(),
                                self.settings.max_rationale_bytes
                            ),
                        ))
                    }
                    Ok(()) => None,
                };
                match refused {
                    Some((reason, why)) => {
                        tracing::warn!(decision_id = %hitl_assignment_truncate(&verdict.decision_id), reason = reason.as_str(), %why, "verdict refused");
                        self.core
                            .refuse_verdict(&verdict, reason, at, &mut self.effects);
                    }
                    None => self.core.verdict_at(&verdict, at, now, &mut self.effects),
                }
                if self.tracer.is_enabled() {
                    self.verdict_span(input, &verdict, from, started);
                }
            }
            Err((class, message)) => self.dead_letter(input, "decode", &class, &message, output),
        }
    }

    /// Exports the span of a verdict: a child of the reviewer app's span when its `traceparent`
    /// is in the decision's trace, else of the item's review span; an error span when rejected.
    fn verdict_span(&self, input: &InputRecord<'_>, verdict: &Verdict, from: usize, started: u64) {
        let effects = &self.effects[from..];
        let item = effects.iter().find_map(|effect| match effect {
            Effect::Lifecycle(event) => event
                .traceparent
                .as_deref()
                .and_then(|header| TraceContext::parse(header.as_bytes())),
            _ => None,
        });
        let sent = input.header("traceparent").and_then(TraceContext::parse);
        let parent = match (sent, item) {
            (Some(sent), Some(item)) if sent.trace_id == item.trace_id => sent,
            (_, Some(item)) => item,
            (Some(sent), None) => sent,
            (None, None) => return,
        };
        let salt = format!("{}:{}:{}", input.topic(), input.partition(), input.offset());
        let context = TraceContext::child(Some(&parent), salt.as_bytes(), 1.0);
        if !self.tracer.records(&context) {
            return;
        }
        let rejected = effects.iter().find_map(|effect| match effect {
            Effect::Observed(Observation::VerdictRejected { reason }) => Some(*reason),
            _ => None,
        });
        let mut span = Span::new(
            "hitl.assignment verdict",
            SpanKind::Consumer,
            context,
            Some(&parent),
            started,
        )
        .attribute("hitl.decision_id", verdict.decision_id.clone())
        .attribute("hitl.assignment_id", verdict.assignment_id.clone())
        .attribute(
            "hitl.verdict",
            format!("{:?}", verdict.verdict).to_uppercase(),
        )
        .attribute("hitl.pool", verdict.pool.clone())
        .ended_at(trace::now_nanos());
        if let Some(reason) = rejected {
            span = span.failed(format!("verdict rejected: {}", reason.as_str()));
        }
        self.tracer.export(span);
    }
}

/// At most 128 characters of an id that came from outside, for a log line.
fn hitl_assignment_truncate(text: &str) -> String {
    text.chars().take(128).collect()
}

/// `record` with the `traceparent` of `trace`, if any.
fn with_trace(record: OutputRecord, trace: Option<TraceContext>) -> OutputRecord {
    match trace {
        Some(trace) => record.with_header("traceparent", trace.header()),
        None => record,
    }
}

/// The exported span of an item's time in this service.
fn review_span(span: &ReviewSpan) -> Span {
    Span {
        parent_span_id: Some(span.parent_span_id),
        ..Span::new(
            "hitl.assignment review",
            SpanKind::Internal,
            span.context,
            None,
            trace::millis_to_nanos(span.enqueued_at),
        )
    }
    .attribute("hitl.decision_id", span.decision_id.clone())
    .attribute("hitl.pool", span.pool.to_string())
    .attribute("hitl.result", span.result)
    .attribute("hitl.quorum", i64::from(span.quorum))
    .attribute("hitl.escalation_level", i64::from(span.level))
    .attribute("hitl.verdicts", span.verdicts as i64)
    .attribute("hitl.assignments", i64::from(span.assignments))
    .attribute("hitl.sla_breached", span.sla_breached)
    .attribute("hitl.qa_sample", span.qa_sample)
    .ended_at(trace::millis_to_nanos(span.finished_at))
}

impl Processor for AssignmentProcessor {
    fn process(
        &mut self,
        input: &InputRecord<'_>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        // An input happens when the broker appended it (the verdict topic's `LogAppendTime`):
        // a verdict sent in time is judged in time, however late it is read. On a `CreateTime`
        // topic the writer chose the timestamp, so it is read time instead.
        let wall = hitl_runtime::now_millis();
        let at = input.append_time_millis().map_or(wall, |at| at.min(wall));
        self.drain_roster(wall);
        if input.topic() == self.topics.review_requests {
            self.request(input, at, wall, output);
        } else if input.topic() == self.topics.verdicts {
            self.verdict(input, at, wall, output);
        }
        self.emit(output)
    }

    fn input_quiet(&self) -> Option<Duration> {
        Some(self.settings.input_quiet)
    }

    fn tick(
        &mut self,
        now_millis: i64,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        self.tick_watermarked(now_millis, Some(Some(now_millis)), output)
    }

    /// Timers fire by the input watermark: a lease expiry or an SLA deadline at instant `t` fires
    /// only once every verdict appended before `t` has been applied. With no partition owned (a
    /// rebalance under way) nothing fires and nothing is written: the pools may be another
    /// instance's already.
    fn tick_watermarked(
        &mut self,
        now_millis: i64,
        watermark: Option<Option<i64>>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        let Some(watermark) = watermark.unwrap_or(Some(now_millis)) else {
            return Ok(());
        };
        self.drain_roster(now_millis);
        if watermark > i64::MIN {
            self.core
                .tick_watermarked(now_millis, watermark, &mut self.effects);
        }
        self.emit(output)?;
        if self.last_gauges.elapsed() >= self.settings.gauge_interval {
            self.last_gauges = Instant::now();
            let online = self
                .statuses
                .values()
                .filter(|s| s.presence == hitl_schema::Presence::Online)
                .count();
            self.metrics.gauges(
                &self.core.gauges(),
                self.core.utilisation(),
                online,
                now_millis,
            );
        }
        Ok(())
    }

    fn aborted(&mut self) -> Result<(), ProcessError> {
        // What the core did since the last commit is gone from Kafka's point of view: rebuild it
        // from the changelog (and the roster), then read the inputs again.
        tracing::warn!("transaction aborted: rebuilding state from the changelog");
        self.core = Core::new(self.settings.core_config());
        self.effects.clear();
        let now = hitl_runtime::now_millis();
        let statuses: Vec<ReviewerStatus> = self.statuses.values().cloned().collect();
        for status in &statuses {
            self.core.reviewer_status(status, now, &mut self.effects);
        }
        self.effects.clear();
        let owned: Vec<i32> = self.owned.iter().copied().collect();
        self.restore_partitions(owned)
    }

    fn partitions_assigned(&mut self, partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        let owned: BTreeSet<i32> = partitions
            .iter()
            .filter(|(topic, _)| *topic == self.topics.review_requests)
            .map(|(_, partition)| *partition)
            .collect();
        let verdicts: BTreeSet<i32> = partitions
            .iter()
            .filter(|(topic, _)| *topic == self.topics.verdicts)
            .map(|(_, partition)| *partition)
            .collect();
        if owned != verdicts {
            tracing::error!(?owned, ?verdicts, "review-request and verdict partitions differ: use the `range` assignor and the same partition count for both topics");
        }
        let pool_partition = &self.pool_partition;
        self.core.retain_pools(|pool| {
            pool_partition
                .get(pool)
                .is_some_and(|partition| owned.contains(partition))
        });
        let new: Vec<i32> = owned.difference(&self.owned).copied().collect();
        self.owned = owned;
        if !new.is_empty() {
            self.await_roster()?;
        }
        self.restore_partitions(new)
    }
}
