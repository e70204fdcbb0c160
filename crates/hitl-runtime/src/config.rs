//! Configuration shared by every service, and the layered loader:
//! built-in defaults → TOML file → `HITL_…` environment (`HITL_KAFKA__BOOTSTRAP_SERVERS`,
//! `__` separates levels). Structs deny unknown fields; durations are human strings (`"250ms"`);
//! secrets print as `***`; after loading, `Validate` lists every problem at once.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A configuration error. `Invalid` carries every problem found, each naming its field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(String),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// A secret: kept as given, printed as `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Checks a loaded configuration; pushes one message per problem, each starting with the field path.
pub trait Validate {
    fn validate(&self, errors: &mut Vec<String>);

    /// The secrets this section holds (field path, bytes), refused when they are development
    /// keys published in this repository unless the service runs with `--dev`.
    fn secrets(&self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
}

/// The checks every service makes of its `service.instance_id` (it names the stable
/// `transactional.id`) and `service.group_id`.
pub fn validate_instance(instance_id: &str, group_id: &str, errors: &mut Vec<String>) {
    if instance_id.is_empty()
        || !instance_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        errors.push(format!(
            "service.instance_id: `{instance_id}` must be letters, digits, - _ ."
        ));
    }
    if group_id.is_empty() {
        errors.push("service.group_id: must not be empty".into());
    }
}

/// Loads `T` from its defaults, an optional TOML file and the given environment (pass
/// `std::env::vars().collect()` in `main`; tests pass their own map), then validates it.
pub fn load<T>(file: Option<&Path>, environment: &HashMap<String, String>) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    let defaults = config::Config::try_from(&T::default())
        .map_err(|error| ConfigError::Load(format!("defaults: {error}")))?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Load(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    let hitl_environment: HashMap<String, String> = environment
        .iter()
        .filter(|(key, _)| key.starts_with("HITL_") && key.contains("__"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix("HITL")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(hitl_environment)),
    );
    let loaded: T = builder
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|error| ConfigError::Load(error.to_string()))?;
    let mut errors = Vec::new();
    loaded.validate(&mut errors);
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

/// How a service makes its outputs and its input progress durable together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Kafka transactions: outputs and input offsets commit atomically (Apache Kafka).
    #[default]
    Transactional,
    /// Idempotent producer; outputs are flushed (acknowledged) before input offsets are committed.
    /// A crash in between re-emits outputs, which every hitl consumer de-duplicates by key. For
    /// brokers without transaction support. Outputs are at least once; every hitl consumer
    /// removes repeats by key.
    Idempotent,
}

/// Which consumer group protocol the loop's consumer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// The classic rebalance protocol (every Kafka version).
    #[default]
    Classic,
    /// KIP-848, `group.protocol=consumer` (Apache Kafka 4.0 and newer).
    Consumer,
}

impl GroupProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Consumer => "consumer",
        }
    }
}

/// How to reach Kafka, and the client settings the services reason about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    pub security_protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` with a `sasl_*` protocol.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    /// CA bundle to verify brokers with, for `ssl`/`sasl_ssl`.
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub ssl_certificate_location: Option<PathBuf>,
    pub ssl_key_location: Option<PathBuf>,
    pub ssl_key_password: Option<Secret>,
    /// The consumer group protocol: `classic` (JoinGroup/SyncGroup, client-side assignors) or
    /// `consumer` (KIP-848: the broker assigns partitions, incrementally, with `group_remote_assignor`).
    pub group_protocol: GroupProtocol,
    /// Consumer-group session timeout (`classic` only; under `consumer` the broker's
    /// `group.consumer.session.timeout.ms` applies). Kafka's default is 45 s.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// `classic` only: `range` or `roundrobin` (eager), or `cooperative-sticky`.
    pub partition_assignment_strategy: String,
    /// `consumer` only: the broker-side assignor, `range` or `uniform`.
    pub group_remote_assignor: String,
    /// Static group membership (KIP-345): each instance joins with `group.instance.id` = its
    /// `transactional.id`, so a restarted instance gets its partitions back at once, without a
    /// rebalance and without waiting out the dead member's session. The cost: an instance that
    /// stops for good keeps its partitions until its session times out. Classic protocol only:
    /// under KIP-848 the broker refuses a restarted member whose predecessor's session is still
    /// open (UNRELEASED_INSTANCE_ID, fatal), so the consumer protocol always joins dynamically.
    pub static_membership: bool,
    /// Transactions, or idempotent produce-then-commit (see `Delivery`).
    pub delivery: Delivery,
    /// How long the broker lets a transaction stay open.
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    /// Commit the open transaction at least this often…
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// …or after this many input records, whichever comes first.
    pub commit_max_records: usize,
    /// Deadline for a single blocking client call (init, commit, abort, admin).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The largest record the services' producers send (`message.max.bytes`; keep it at or below
    /// the topics' `max.message.bytes`). Every output a service builds must fit it with margin
    /// ([`KafkaSettings::output_limit`]); an input whose outputs would not is dead-lettered.
    pub message_max_bytes: usize,
    /// Raw librdkafka settings, applied last (they win).
    pub librdkafka: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// The most bytes (key, value and headers) one output record may take: `message_max_bytes`
    /// less a margin for the record batch's framing.
    pub fn output_limit(&self) -> usize {
        self.message_max_bytes.saturating_sub(OUTPUT_MARGIN_BYTES)
    }
}

/// What `KafkaSettings::output_limit` keeps free of `message_max_bytes` (batch and record framing).
pub const OUTPUT_MARGIN_BYTES: usize = 16 * 1024;

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            group_protocol: GroupProtocol::Classic,
            session_timeout: Duration::from_secs(45),
            partition_assignment_strategy: "range".into(),
            group_remote_assignor: "range".into(),
            static_membership: true,
            delivery: Delivery::Transactional,
            transaction_timeout: Duration::from_secs(60),
            commit_interval: Duration::from_millis(100),
            commit_max_records: 5_000,
            request_timeout: Duration::from_secs(30),
            message_max_bytes: 1_000_000,
            librdkafka: BTreeMap::new(),
        }
    }
}

impl Validate for KafkaSettings {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.bootstrap_servers.trim().is_empty() {
            errors.push("kafka.bootstrap_servers: must name at least one broker".into());
        }
        for server in self
            .bootstrap_servers
            .split(',')
            .filter(|s| !s.trim().is_empty())
        {
            let server = server.trim();
            let port = server.rsplit_once(':').map(|(_, port)| port);
            if port.and_then(|port| port.parse::<u16>().ok()).is_none() {
                errors.push(format!(
                    "kafka.bootstrap_servers: `{server}` is not host:port"
                ));
            }
        }
        if self.message_max_bytes < 256 * 1024 {
            errors.push(format!(
                "kafka.message_max_bytes: {} is below 262144: the services' outputs need room",
                self.message_max_bytes
            ));
        }
        let sasl = matches!(
            self.security_protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        if sasl {
            match self.sasl_mechanism.as_deref() {
                Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" | "OAUTHBEARER" | "GSSAPI") => {}
                Some(other) => errors.push(format!(
                    "kafka.sasl_mechanism: `{other}` is not PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or GSSAPI"
                )),
                None => errors.push("kafka.sasl_mechanism: required with a sasl_* security_protocol".into()),
            }
            if matches!(
                self.sasl_mechanism.as_deref(),
                Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512")
            ) && (self.sasl_username.is_none() || self.sasl_password.is_none())
            {
                errors.push(
                    "kafka.sasl_username/sasl_password: required with this sasl_mechanism".into(),
                );
            }
        }
        for (field, path) in [
            ("ssl_ca_location", &self.ssl_ca_location),
            ("ssl_certificate_location", &self.ssl_certificate_location),
            ("ssl_key_location", &self.ssl_key_location),
        ] {
            if let Some(path) = path {
                if !path.exists() {
                    errors.push(format!("kafka.{field}: {} does not exist", path.display()));
                }
            }
        }
        if !matches!(
            self.partition_assignment_strategy.as_str(),
            "range" | "roundrobin" | "cooperative-sticky" | "range,roundrobin"
        ) {
            errors.push(format!(
                "kafka.partition_assignment_strategy: `{}` is not range, roundrobin or cooperative-sticky",
                self.partition_assignment_strategy
            ));
        }
        if !matches!(self.group_remote_assignor.as_str(), "range" | "uniform") {
            errors.push(format!(
                "kafka.group_remote_assignor: `{}` is not range or uniform",
                self.group_remote_assignor
            ));
        }
        if self.session_timeout < Duration::from_secs(1) {
            errors.push("kafka.session_timeout: must be at least 1s".into());
        }
        if self.commit_interval.is_zero() {
            errors.push("kafka.commit_interval: must be more than 0".into());
        }
        if self.commit_interval >= self.transaction_timeout {
            errors.push(
                "kafka.commit_interval: must be shorter than kafka.transaction_timeout".into(),
            );
        }
        if self.commit_max_records == 0 {
            errors.push("kafka.commit_max_records: must be at least 1".into());
        }
    }
}

/// Topic names (every one configurable) and how `hitl-admin topics create` makes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub decisions: String,
    pub decisions_dlq: String,
    pub review_requests: String,
    pub assignments: String,
    /// ASSIGNED events with the sensitive context values in clear, for reviewers holding the
    /// pool's PII role only: readable by a PII-cleared principal alone (`hitl.assignments` carries
    /// every assignment with those values masked).
    pub assignments_pii: String,
    pub verdicts: String,
    pub reviewers: String,
    pub outcomes: String,
    pub lifecycle: String,
    pub audit: String,
    pub audit_checkpoints: String,
    pub feedback: String,
    pub assignment_state: String,
    /// The router's changelog of the decision ids it routed (durable de-duplication): keyed by
    /// the id's digest, written in the transaction that routes the decision, to the partition
    /// numbered like the decision's. Written and read by the router alone.
    pub router_seen: String,
    /// How long `router_seen` keeps an entry (its `retention.ms` when created; compacted too).
    /// The router's `service.dedup_horizon` may not be longer.
    #[serde(with = "humantime_serde")]
    pub router_seen_retention: Duration,
    /// Partitions of each topic when created (review-requests and verdicts must match; so must
    /// decisions and router_seen).
    pub partitions: i32,
    pub replication_factor: i32,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            decisions: "hitl.decisions".into(),
            decisions_dlq: "hitl.decisions.dlq".into(),
            review_requests: "hitl.review-requests".into(),
            assignments: "hitl.assignments".into(),
            assignments_pii: "hitl.assignments.pii".into(),
            verdicts: "hitl.verdicts".into(),
            reviewers: "hitl.reviewers".into(),
            outcomes: "hitl.outcomes".into(),
            lifecycle: "hitl.lifecycle".into(),
            audit: "hitl.audit".into(),
            audit_checkpoints: "hitl.audit.checkpoints".into(),
            feedback: "hitl.feedback".into(),
            assignment_state: "hitl.assignment.state".into(),
            router_seen: "hitl.router.seen".into(),
            router_seen_retention: DEFAULT_ROUTER_SEEN_RETENTION,
            partitions: 4,
            replication_factor: 1,
        }
    }
}

/// How long `topics.router_seen` keeps an entry by default: a week, like the decisions topic,
/// so that a decision still in that topic (a consumer group reset to its start replays it) is not
/// routed twice.
pub const DEFAULT_ROUTER_SEEN_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Topics {
    /// The names and partition count as a TOML `[topics]` table (for generated service configs:
    /// tests, the chaos driver).
    pub fn toml_table(&self) -> String {
        format!(
            "[topics]\ndecisions = \"{}\"\ndecisions_dlq = \"{}\"\nreview_requests = \"{}\"\nassignments = \"{}\"\n\
             assignments_pii = \"{}\"\nverdicts = \"{}\"\nreviewers = \"{}\"\noutcomes = \"{}\"\nlifecycle = \"{}\"\naudit = \"{}\"\n\
             audit_checkpoints = \"{}\"\nfeedback = \"{}\"\nassignment_state = \"{}\"\nrouter_seen = \"{}\"\npartitions = {}\n",
            self.decisions,
            self.decisions_dlq,
            self.review_requests,
            self.assignments,
            self.assignments_pii,
            self.verdicts,
            self.reviewers,
            self.outcomes,
            self.lifecycle,
            self.audit,
            self.audit_checkpoints,
            self.feedback,
            self.assignment_state,
            self.router_seen,
            self.partitions,
        )
    }

    /// Every topic with the configs it is created with.
    pub fn specs(&self) -> Vec<TopicSpec> {
        let spec = |name: &str, policy: &str, retention: &str| TopicSpec {
            name: name.to_owned(),
            partitions: self.partitions,
            configs: vec![
                ("cleanup.policy", policy.to_owned()),
                ("retention.ms", retention.to_owned()),
            ],
        };
        let compacted = |name: &str, retention: &str| spec(name, "compact", retention);
        let deleted = |name: &str, retention: &str| spec(name, "delete", retention);
        // Inputs whose time decides an outcome carry the broker's append time, not their
        // writer's clock (docs/design.md, "Time").
        let appended = |name: &str, retention: &str| {
            let mut spec = deleted(name, retention);
            spec.configs
                .push(("message.timestamp.type", "LogAppendTime".to_owned()));
            spec
        };
        let router_seen_retention = self.router_seen_retention.as_millis().to_string();
        const WEEK: &str = "604800000";
        const MONTH: &str = "2592000000";
        const FOREVER: &str = "-1";
        vec![
            deleted(&self.decisions, WEEK),
            deleted(&self.decisions_dlq, MONTH),
            appended(&self.review_requests, WEEK),
            deleted(&self.assignments, WEEK),
            deleted(&self.assignments_pii, WEEK),
            appended(&self.verdicts, WEEK),
            compacted(&self.reviewers, FOREVER),
            deleted(&self.outcomes, MONTH),
            deleted(&self.lifecycle, MONTH),
            compacted(&self.audit, FOREVER),
            deleted(&self.audit_checkpoints, FOREVER),
            deleted(&self.feedback, FOREVER),
            compacted(&self.assignment_state, FOREVER),
            // Each id is written once; compaction only keeps the latest entry of an id routed
            // again after the horizon, and deletion forgets what is past the retention.
            spec(&self.router_seen, "compact,delete", &router_seen_retention),
        ]
    }
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub configs: Vec<(&'static str, String)>,
}

impl Validate for Topics {
    fn validate(&self, errors: &mut Vec<String>) {
        let names = [
            ("decisions", &self.decisions),
            ("decisions_dlq", &self.decisions_dlq),
            ("review_requests", &self.review_requests),
            ("assignments", &self.assignments),
            ("assignments_pii", &self.assignments_pii),
            ("verdicts", &self.verdicts),
            ("reviewers", &self.reviewers),
            ("outcomes", &self.outcomes),
            ("lifecycle", &self.lifecycle),
            ("audit", &self.audit),
            ("audit_checkpoints", &self.audit_checkpoints),
            ("feedback", &self.feedback),
            ("assignment_state", &self.assignment_state),
            ("router_seen", &self.router_seen),
        ];
        for (field, name) in names {
            let legal = !name.is_empty()
                && name.len() <= 249
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !legal {
                errors.push(format!(
                    "topics.{field}: `{name}` is not a legal Kafka topic name"
                ));
            }
        }
        if self.partitions < 1 {
            errors.push("topics.partitions: must be at least 1".into());
        }
        if self.replication_factor < 1 {
            errors.push("topics.replication_factor: must be at least 1".into());
        }
        if self.router_seen_retention < Duration::from_secs(1) {
            errors.push("topics.router_seen_retention: must be at least 1s".into());
        }
    }
}

/// The HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging and tracing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// An `EnvFilter` directive, e.g. `info,hitl_router=debug`.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Base URL of an OTLP/HTTP receiver (an OpenTelemetry collector, Jaeger, Tempo), e.g.
    /// `http://127.0.0.1:4318`; spans are posted to `<url>/v1/traces` as OTLP JSON. Unset: no
    /// spans are exported (trace context still travels in the records' headers).
    pub otlp_endpoint: Option<String>,
    /// Extra HTTP headers for the OTLP endpoint, e.g. an API key.
    pub otlp_headers: BTreeMap<String, String>,
    #[serde(with = "humantime_serde")]
    pub otlp_timeout: Duration,
    /// How often queued spans are posted (sooner when a batch of 512 is full).
    #[serde(with = "humantime_serde")]
    pub trace_export_interval: Duration,
    /// Share of new traces recorded (0..=1), decided from the trace id, so every service agrees;
    /// a producer's own `traceparent` decides for its decisions.
    pub trace_sample_ratio: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            otlp_headers: BTreeMap::new(),
            otlp_timeout: Duration::from_secs(5),
            trace_export_interval: Duration::from_secs(1),
            trace_sample_ratio: 1.0,
        }
    }
}

impl Validate for TelemetrySettings {
    fn validate(&self, errors: &mut Vec<String>) {
        if let Some(endpoint) = &self.otlp_endpoint {
            if endpoint.starts_with("https://") {
                errors.push(format!(
                    "telemetry.otlp_endpoint: {endpoint}: https is not built in; export to a \
                     local OpenTelemetry collector over http:// and let it forward over TLS"
                ));
            } else if !endpoint.starts_with("http://") || endpoint.len() <= "http://".len() {
                errors.push(format!(
                    "telemetry.otlp_endpoint: {endpoint:?} is not an http:// URL"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            errors.push(format!(
                "telemetry.trace_sample_ratio: {} is outside 0..=1",
                self.trace_sample_ratio
            ));
        }
        if self.otlp_timeout.is_zero() {
            errors.push("telemetry.otlp_timeout: must be more than 0".into());
        }
        if self.trace_export_interval.is_zero() {
            errors.push("telemetry.trace_export_interval: must be more than 0".into());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CodecFormat {
    #[default]
    SingleObject,
    Confluent,
}

/// How records are framed on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodecSettings {
    pub format: CodecFormat,
    /// Base URL of a Confluent-compatible schema registry; required with `format = "confluent"`.
    pub registry_url: Option<String>,
    /// Extra writer schemas (other versions of the contract's), so their records can be read.
    pub writer_schema_dir: Option<PathBuf>,
}

impl Default for CodecSettings {
    fn default() -> Self {
        Self {
            format: CodecFormat::SingleObject,
            registry_url: None,
            writer_schema_dir: None,
        }
    }
}

impl Validate for CodecSettings {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.format == CodecFormat::Confluent && self.registry_url.is_none() {
            errors.push("codec.registry_url: required with codec.format = \"confluent\"".into());
        }
        if let Some(dir) = &self.writer_schema_dir {
            if !dir.is_dir() {
                errors.push(format!(
                    "codec.writer_schema_dir: {} is not a directory",
                    dir.display()
                ));
            }
        }
    }
}

impl CodecSettings {
    /// Builds the codec these settings describe.
    pub fn build(
        &self,
        request_timeout: Duration,
    ) -> Result<hitl_schema::Codec, hitl_schema::CodecError> {
        let mut codec = match (&self.format, &self.registry_url) {
            (CodecFormat::Confluent, Some(url)) => {
                hitl_schema::Codec::confluent(std::sync::Arc::new(
                    hitl_schema::RegistryClient::new(url.clone(), request_timeout),
                ))
            }
            _ => hitl_schema::Codec::single_object(),
        };
        if let Some(dir) = &self.writer_schema_dir {
            codec = codec.with_writer_schema_dir(dir)?;
        }
        Ok(codec)
    }
}

/// A service's whole configuration: the sections every service has, plus its own `[service]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings<S> {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub http: HttpSettings,
    pub telemetry: TelemetrySettings,
    pub codec: CodecSettings,
    /// Keys: what this service signs with and whom it trusts (`crate::auth`).
    pub trust: TrustSettings,
    /// The service's own settings.
    pub service: S,
}

impl<S: Validate> Validate for Settings<S> {
    fn validate(&self, errors: &mut Vec<String>) {
        self.kafka.validate(errors);
        self.topics.validate(errors);
        self.telemetry.validate(errors);
        self.codec.validate(errors);
        self.trust.validate(errors);
        self.service.validate(errors);
        if !self.trust.dev {
            for (field, secret) in self.service.secrets() {
                if crate::auth::Fingerprint::of(&field, &secret).is_development_key() {
                    errors.push(format!("{field}: {DEV_KEY_REFUSED}"));
                }
            }
        }
    }
}

/// Why a published development key is refused.
pub const DEV_KEY_REFUSED: &str = "is a development key published in the hitl repository \
     (anyone can sign with it); generate your own (`hitl-admin keys generate`), or start with \
     `--dev` for development";

/// What this service signs with and whom it trusts (`[trust]`; docs/trust.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrustSettings {
    /// Development mode: the keys published in this repository are accepted. Set by starting with
    /// `--dev` (or `HITL_TRUST__DEV=true`); never in production.
    pub dev: bool,
    /// The keys this service trusts and what each may write (TOML, `[[keys]]`).
    pub keys_file: Option<PathBuf>,
    /// The id of the key this service signs its lifecycle events with.
    pub signing_key_id: Option<String>,
    /// `hmac-sha256` (default) or `ed25519`.
    pub signing_algorithm: Option<crate::auth::Algorithm>,
    /// The signing secret, hex; prefer `HITL_TRUST__SIGNING_SECRET` or `signing_secret_file`.
    pub signing_secret: Option<Secret>,
    /// A file holding the signing secret in hex (a mounted secret).
    pub signing_secret_file: Option<PathBuf>,
}

impl TrustSettings {
    /// The key this service signs with, if one is configured.
    pub fn signer(&self) -> Result<Option<crate::auth::Signer>, String> {
        let secret = crate::auth::load_secret(
            "trust.signing_secret",
            self.signing_secret.as_ref(),
            self.signing_secret_file.as_ref(),
            None,
        )?;
        match (&self.signing_key_id, secret) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(
                "trust.signing_secret: trust.signing_key_id is set but no secret \
                 (signing_secret, signing_secret_file or HITL_TRUST__SIGNING_SECRET)"
                    .into(),
            ),
            (None, Some(_)) => {
                Err("trust.signing_key_id: a signing secret needs its key id".into())
            }
            (Some(key_id), Some(secret)) => {
                let fingerprint = crate::auth::Fingerprint::of(key_id, &secret);
                if fingerprint.is_development_key() && !self.dev {
                    return Err(format!("trust.signing_secret: {DEV_KEY_REFUSED}"));
                }
                crate::auth::Signer::new(
                    key_id,
                    self.signing_algorithm
                        .unwrap_or(crate::auth::Algorithm::HmacSha256),
                    &secret,
                )
                .map(Some)
                .map_err(|error| format!("trust.signing_secret: {error}"))
            }
        }
    }

    /// The keys this service trusts (none without `keys_file`).
    pub fn key_set(&self) -> Result<crate::auth::KeySet, String> {
        let Some(path) = &self.keys_file else {
            return Ok(crate::auth::KeySet::default());
        };
        let (set, fingerprints) = crate::auth::load_key_file(path)
            .map_err(|error| format!("trust.keys_file: {error}"))?;
        if !self.dev {
            if let Some(dev) = fingerprints.iter().find(|f| f.is_development_key()) {
                return Err(format!(
                    "trust.keys_file: key `{}` in {} {DEV_KEY_REFUSED}",
                    dev.key_id,
                    path.display()
                ));
            }
        }
        Ok(set)
    }
}

impl Validate for TrustSettings {
    fn validate(&self, errors: &mut Vec<String>) {
        if let Err(error) = self.signer() {
            errors.push(error);
        }
        if let Err(error) = self.key_set() {
            errors.push(error);
        }
    }
}

/// For services (and tools) with nothing of their own to configure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NoServiceSettings {}

impl Validate for NoServiceSettings {
    fn validate(&self, _errors: &mut Vec<String>) {}
}
