//! Integration-test harness: a real broker, real service processes, unique names per test.
//!
//! - `broker()` starts one Apache Kafka (`scripts/kafka.sh`: single node, KRaft, free loopback
//!   ports, a fresh log dir) for the whole test binary, watched by a shell loop that kills it when
//!   the test process exits; or uses `HITL_BOOTSTRAP_SERVERS` (an external Kafka).
//! - `Service` runs a built service binary (`target/<profile>/hitl-*`) with a generated config file,
//!   and can SIGTERM or SIGKILL it.
//! - `read_topic` reads a topic from the beginning until a condition holds or a deadline passes.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use hitl_runtime::config::{KafkaSettings, Topics};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::{Header, Headers, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer},
    ClientConfig, Message, Offset, TopicPartitionList,
};

pub use hitl_schema;

/// The broker the tests talk to.
#[derive(Debug)]
pub struct Broker {
    pub bootstrap: String,
    /// The SASL_PLAINTEXT (SCRAM-SHA-512, ACLs enforced) listener of a broker the harness started;
    /// user `admin`, password `admin-secret`, is a super user. `None` on an external cluster.
    pub sasl_bootstrap: Option<String>,
    /// The broker's state folder (data, `broker.log`), when the harness started it.
    pub dir: Option<PathBuf>,
    /// The broker's process id, when the harness started it (tests pause it with SIGSTOP).
    pub pid: Option<u32>,
    /// The watchdog shell that kills the broker when this test process goes away.
    _watchdog: Option<std::sync::Mutex<Child>>,
}

/// A SCRAM-SHA-512 user of the harness's broker with no ACLs (the authorizer denies it everything).
pub const SCRAM_USER: &str = "hitl-test-user";
pub const SCRAM_PASSWORD: &str = "hitl-test-secret";

/// The repository's root.
pub fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

/// Starts (once) or finds the broker.
pub fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        if let Ok(bootstrap) = std::env::var("HITL_BOOTSTRAP_SERVERS") {
            return Broker {
                bootstrap,
                sasl_bootstrap: std::env::var("HITL_SASL_BOOTSTRAP_SERVERS").ok(),
                dir: None,
                pid: None,
                _watchdog: None,
            };
        }
        let dir = std::env::temp_dir().join(unique("hitl-test-kafka"));
        let status = Command::new(repository().join("scripts/kafka.sh"))
            .args(["start", "--port", "0", "--sasl-port", "0"])
            .args(["--scram-user", &format!("{SCRAM_USER}:{SCRAM_PASSWORD}")])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .status()
            .expect("run scripts/kafka.sh");
        assert!(
            status.success(),
            "scripts/kafka.sh could not start Apache Kafka in {}",
            dir.display()
        );
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|error| panic!("{}/{name}: {error}", dir.display()))
                .trim()
                .to_owned()
        };
        let pid: u32 = read("pid").parse().expect("broker pid");
        // The watchdog kills the broker, and removes its log dir, when this test process goes away
        // however it ends (the broker log stays when a test failed: HITL_KEEP_BROKER_LOGS=1).
        let script = format!(
            "while kill -0 {parent} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             kill -9 {pid} 2>/dev/null; [ -n \"$HITL_KEEP_BROKER_LOGS\" ] || rm -rf {dir}",
            parent = std::process::id(),
            dir = dir.display(),
        );
        let watchdog = Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start broker watchdog");
        Broker {
            bootstrap: read("address"),
            sasl_bootstrap: Some(read("sasl_address")),
            dir: Some(dir),
            pid: Some(pid),
            _watchdog: Some(std::sync::Mutex::new(watchdog)),
        }
    })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{name}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The contract topics, all prefixed with a unique name.
pub fn unique_topics(test: &str) -> Topics {
    let prefix = unique(test);
    let defaults = Topics::default();
    let named = |name: &str| format!("{prefix}.{name}");
    Topics {
        decisions: named(&defaults.decisions),
        decisions_dlq: named(&defaults.decisions_dlq),
        review_requests: named(&defaults.review_requests),
        assignments: named(&defaults.assignments),
        assignments_pii: named(&defaults.assignments_pii),
        verdicts: named(&defaults.verdicts),
        reviewers: named(&defaults.reviewers),
        outcomes: named(&defaults.outcomes),
        lifecycle: named(&defaults.lifecycle),
        audit: named(&defaults.audit),
        audit_checkpoints: named(&defaults.audit_checkpoints),
        feedback: named(&defaults.feedback),
        assignment_state: named(&defaults.assignment_state),
        router_seen: named(&defaults.router_seen),
        router_seen_retention: defaults.router_seen_retention,
        partitions: 4,
        replication_factor: 1,
    }
}

/// Kafka settings for clients in tests.
pub fn kafka_settings() -> KafkaSettings {
    KafkaSettings {
        bootstrap_servers: broker().bootstrap.clone(),
        ..KafkaSettings::default()
    }
}

/// Creates the topics (idempotent).
pub fn create_topics(topics: &Topics) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(hitl_runtime::kafka::ensure_topics(
            &kafka_settings(),
            &topics.specs(),
            1,
        ))
        .expect("create topics");
}

/// Renders `topics` as a TOML `[topics]` table.
pub fn topics_toml(topics: &Topics) -> String {
    topics.toml_table()
}

/// A built binary of the workspace, next to the test executable's directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` before the tests (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A running service process.
pub struct Service {
    child: Child,
    pub http: String,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Service {
    /// Starts `binary` with `config_toml` (whose `[http]` table this adds) and waits for `/readyz`.
    pub fn start(binary_name: &str, dir: &Path, config_toml: &str) -> Self {
        let service = Self::spawn(binary_name, dir, config_toml);
        service.wait_ready(Duration::from_secs(60));
        service
    }

    /// Starts without waiting.
    pub fn spawn(binary_name: &str, dir: &Path, config_toml: &str) -> Self {
        Self::spawn_with_env(binary_name, dir, config_toml, &[])
    }

    /// Starts without waiting, with more environment variables.
    pub fn spawn_with_env(
        binary_name: &str,
        dir: &Path,
        config_toml: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let http = format!("127.0.0.1:{}", free_port());
        let config = dir.join(format!("{}.toml", unique(binary_name)));
        std::fs::write(
            &config,
            format!("{config_toml}\n[http]\nlisten = \"{http}\"\n"),
        )
        .unwrap();
        let log = config.with_extension("log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(binary(binary_name));
        if !config_toml.contains("[trust]") {
            command.envs(trust_environment(binary_name));
        }
        command.envs(env.iter().copied());
        let child = command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn service");
        Self {
            child,
            http,
            log,
            config,
        }
    }

    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if http_get(&self.http, "/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "service on {} not ready within {within:?}; log:\n{}",
            self.http,
            self.log_tail()
        );
    }

    /// The value of a metric line (`name{labels}` exactly as exposed), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(&self.http, "/metrics")?;
        body.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    pub fn log_tail(&self) -> String {
        self.log_lines(40)
    }

    /// The last `count` lines of the service's log.
    pub fn log_lines(&self, count: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(count)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no chance to commit or clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; whether it did within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what each of its services was doing.
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log.display(),
                self.log_lines(120)
            );
        }
    }
}

/// Sends a signal by name (`HUP`, `TERM`) to a process.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `check` until it returns `Some` or `within` passes (then panics naming `what`).
pub fn wait_for<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain producer.
pub fn producer() -> BaseProducer {
    hitl_runtime::kafka::producer_config(&kafka_settings())
        .create()
        .expect("producer")
}

/// The keys of this test process (random, made at first use): what the services trust and sign
/// with, and what the tests' clients sign with (docs/trust.md).
pub struct TestTrust {
    /// The key file every service started by [`Service::spawn`] trusts.
    pub keys_file: PathBuf,
    pub router: hitl_runtime::auth::Signer,
    pub assignment: hitl_runtime::auth::Signer,
    /// A publisher allowed to publish as the producers the tests use ([`TEST_PRODUCERS`]).
    pub publisher: hitl_runtime::auth::Signer,
    /// A reviewer gateway: verdicts and roster entries for anyone.
    pub gateway: hitl_runtime::auth::Signer,
    /// Reviewer `mallory`'s own app key: only `mallory`, no roles.
    pub mallory: hitl_runtime::auth::Signer,
    /// Reviewer `alice`'s own app key: only `alice`, roles `senior` and `pii`.
    pub alice: hitl_runtime::auth::Signer,
    /// Hex secrets by key id, for clients in other languages.
    pub secrets: BTreeMap<String, String>,
    pub lease_secret: String,
}

/// The producers the test publisher key may publish as.
pub const TEST_PRODUCERS: &[&str] = &[
    "fraud-model",
    "fraud-gbm",
    "toxicity-bert",
    "ci-pipeline",
    "model",
    "p",
    "python-model",
];

/// This process's [`TestTrust`].
pub fn trust() -> &'static TestTrust {
    static TRUST: OnceLock<TestTrust> = OnceLock::new();
    TRUST.get_or_init(|| {
        use hitl_runtime::auth::{random_secret, Algorithm, Signer};
        // Beside the broker's state when the harness started it (removed with it when the test
        // process ends); else in the temporary folder.
        let dir = match &broker().dir {
            Some(dir) => dir.join("trust"),
            None => std::env::temp_dir().join(format!("hitl-test-trust-{}", std::process::id())),
        };
        std::fs::create_dir_all(&dir).unwrap();
        let mut secrets = BTreeMap::new();
        let mut entries = String::new();
        let mut key = |key_id: &str, grant: &str| {
            let secret = hex::encode(random_secret().unwrap());
            entries.push_str(&format!(
                "[[keys]]\nkey_id = \"{key_id}\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{secret}\"\ngrant = {grant}\n\n"
            ));
            secrets.insert(key_id.to_owned(), secret.clone());
            Signer::new(key_id, Algorithm::HmacSha256, &hex::decode(&secret).unwrap()).unwrap()
        };
        let producers = TEST_PRODUCERS
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let router = key("router-test", "{ kind = \"service\", service = \"router\" }");
        let assignment = key(
            "assignment-test",
            "{ kind = \"service\", service = \"assignment\" }",
        );
        let publisher = key(
            "publisher-test",
            &format!("{{ kind = \"publisher\", producers = [{producers}] }}"),
        );
        let gateway = key("gateway-test", "{ kind = \"gateway\" }");
        let mallory = key(
            "app-mallory",
            "{ kind = \"reviewer\", reviewer_id = \"mallory\", roles = [] }",
        );
        let alice = key(
            "app-alice",
            "{ kind = \"reviewer\", reviewer_id = \"alice\", roles = [\"senior\", \"pii\"] }",
        );
        let keys_file = dir.join("keys.toml");
        std::fs::write(&keys_file, entries).unwrap();
        TestTrust {
            keys_file,
            router,
            assignment,
            publisher,
            gateway,
            mallory,
            alice,
            secrets,
            lease_secret: hex::encode(random_secret().unwrap()),
        }
    })
}

/// The environment that gives a service this process's keys (unless its config has `[trust]`).
pub fn trust_environment(binary_name: &str) -> Vec<(String, String)> {
    let trust = trust();
    let mut environment = vec![(
        "HITL_TRUST__KEYS_FILE".to_owned(),
        trust.keys_file.display().to_string(),
    )];
    let signer = match binary_name {
        "hitl-router" => Some("router-test"),
        "hitl-assignment" => Some("assignment-test"),
        _ => None,
    };
    if let Some(key_id) = signer {
        environment.push(("HITL_TRUST__SIGNING_KEY_ID".into(), key_id.into()));
        environment.push((
            "HITL_TRUST__SIGNING_SECRET".into(),
            trust.secrets[key_id].clone(),
        ));
    }
    if binary_name == "hitl-assignment" {
        environment.push((
            "HITL_SERVICE__LEASE_SECRET".into(),
            trust.lease_secret.clone(),
        ));
    }
    environment
}

/// How a test's record on `topic` is signed by [`produce`]: decisions by the test publisher,
/// verdicts and roster entries by the test gateway, review requests by the router's key,
/// lifecycle events by the key of the service they name. `None`: not a signed topic.
pub fn test_signature(topic: &str, key: &str, payload: &[u8]) -> Option<String> {
    use hitl_runtime::auth::Kind;
    let trust = trust();
    let (signer, kind) = if topic.ends_with(".decisions") {
        (&trust.publisher, Kind::Decision)
    } else if topic.ends_with(".verdicts") {
        (&trust.gateway, Kind::Verdict)
    } else if topic.ends_with(".reviewers") {
        (&trust.gateway, Kind::Reviewer)
    } else if topic.ends_with(".review-requests") {
        (&trust.router, Kind::ReviewRequest)
    } else if topic.ends_with(".lifecycle") {
        let service = hitl_schema::Codec::single_object()
            .decode::<hitl_schema::LifecycleEvent>(payload)
            .map(|event| event.service)
            .unwrap_or_default();
        let signer = if service == "assignment" {
            &trust.assignment
        } else {
            &trust.router
        };
        (signer, Kind::Lifecycle)
    } else {
        return None;
    };
    let value = (!payload.is_empty()).then_some(payload);
    Some(signer.sign(kind, Some(key.as_bytes()), value))
}

/// Produces one record, signed the way a trusted client signs it ([`test_signature`]) unless
/// `headers` already has `hitl-auth`, and waits for it to be acknowledged.
pub fn produce(
    producer: &BaseProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) {
    let signature = if headers
        .iter()
        .any(|(name, _)| *name == hitl_runtime::auth::HEADER)
    {
        None
    } else {
        test_signature(topic, key, payload)
    };
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(signature) = &signature {
        all.push((hitl_runtime::auth::HEADER, signature));
    }
    produce_unsigned(producer, topic, key, payload, &all);
}

/// Produces one record exactly as given (no signature added), and waits for it to be acknowledged.
pub fn produce_unsigned(
    producer: &BaseProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    let mut record = BaseRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(owned);
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((_, returned)) => {
                producer.poll(Duration::from_millis(10));
                record = returned;
            }
        }
    }
}

pub fn flush(producer: &BaseProducer) {
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// A record as read back.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Reads `topic` from the beginning (read_committed) until `done(records)` or `within` passes.
pub fn read_topic(
    topic: &str,
    within: Duration,
    done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    read_topic_with(topic, true, within, done)
}

/// Like `read_topic`, choosing the isolation level (`false` also returns records of open or
/// aborted transactions, for diagnosis).
pub fn read_topic_with(
    topic: &str,
    read_committed: bool,
    within: Duration,
    mut done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    let consumer = reader_from_start(topic, read_committed);
    let deadline = Instant::now() + within;
    let mut records = Vec::new();
    while !done(&records) && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            records.push(received(&message));
        }
    }
    records
}

/// A consumer assigned every partition of `topic`, from the start.
fn reader_from_start(topic: &str, read_committed: bool) -> BaseConsumer {
    let consumer: BaseConsumer =
        hitl_runtime::kafka::reader_config(&kafka_settings(), read_committed)
            .create()
            .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// A consumed record as the tests keep it.
fn received(message: &rdkafka::message::BorrowedMessage<'_>) -> Received {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Received {
        partition: message.partition(),
        offset: message.offset(),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// Reads until at least `count` records arrived, or `within` passes.
pub fn read_at_least(topic: &str, count: usize, within: Duration) -> Vec<Received> {
    read_topic(topic, within, |records| records.len() >= count)
}

/// Reads everything currently in `topic`: stops after `quiet` without a new record.
pub fn read_all(topic: &str, quiet: Duration) -> Vec<Received> {
    let mut last_len = 0;
    let mut last_change = Instant::now();
    read_topic(topic, Duration::from_secs(120), |records| {
        if records.len() != last_len {
            last_len = records.len();
            last_change = Instant::now();
        }
        last_change.elapsed() >= quiet
    })
}

/// A client config for ad-hoc needs.
pub fn client_config() -> ClientConfig {
    hitl_runtime::kafka::client_config(&kafka_settings())
}

/// The delivery mode under test: `HITL_TEST_DELIVERY`, default `transactional`.
pub fn delivery() -> String {
    std::env::var("HITL_TEST_DELIVERY").unwrap_or_else(|_| "transactional".into())
}

/// True when the services under test run Kafka transactions (outputs of aborted transactions are
/// never visible, so tests may demand exactly-once effects on the topics themselves).
pub fn transactional() -> bool {
    delivery() == "transactional"
}

/// The `[kafka]` table services under test get: this broker, the delivery mode, and a short
/// session timeout (with static membership a stopped instance keeps its partitions until its
/// session ends; tests that stop one instance for good wait for that).
pub fn kafka_toml() -> String {
    format!(
        "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout = \"6s\"\ncommit_interval = \"100ms\"\n\
         delivery = \"{}\"\n{}",
        broker().bootstrap,
        delivery(),
        std::env::var("HITL_TEST_GROUP_PROTOCOL")
            .map(|protocol| format!("group_protocol = \"{protocol}\"\n"))
            .unwrap_or_default(),
    )
}

/// A live reader of a topic: every partition from its start, polled as records arrive (a reviewer
/// app, an actuator).
pub struct Tail {
    consumer: BaseConsumer,
}

impl Tail {
    pub fn new(topic: &str) -> Self {
        Self {
            consumer: reader_from_start(topic, true),
        }
    }

    /// The next record, if one arrives within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Received> {
        let message = self.consumer.poll(timeout)?.ok()?;
        Some(received(&message))
    }

    /// Reads until `done` returns true for the records read so far (kept in `seen`), or `within`
    /// passes. Returns whether `done` held.
    pub fn until(
        &self,
        seen: &mut Vec<Received>,
        within: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if done(seen) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if let Some(record) = self.next(Duration::from_millis(100)) {
                seen.push(record);
            }
        }
    }
}

/// The Python with the test packages (`tests/python/requirements.txt`): `HITL_PYTHON`, else the
/// venv `scripts/test.sh` makes in `.hitl/venv`, else `python3`.
pub fn python() -> PathBuf {
    if let Ok(python) = std::env::var("HITL_PYTHON") {
        return python.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.hitl/venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// A simulated reviewer app until `stop` is set: tails the assignments topic and, for each new
/// assignment (not a renewal or revocation), sends the verdicts `answer` returns for it (given
/// the event and the record's headers), keyed by pool.
pub fn reviewer_app(
    topics: &Topics,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut answer: impl FnMut(&hitl_schema::AssignmentEvent, &BTreeMap<String, String>) -> Vec<hitl_schema::Verdict>
        + Send
        + 'static,
) -> std::thread::JoinHandle<()> {
    use hitl_schema::{AssignmentEvent, AssignmentKind, Codec};
    let topics = topics.clone();
    std::thread::spawn(move || {
        let tail = Tail::new(&topics.assignments);
        let codec = Codec::single_object();
        let producer = producer();
        while !stop.load(Ordering::Relaxed) {
            let Some(record) = tail.next(Duration::from_millis(100)) else {
                continue;
            };
            let Ok(event) =
                codec.decode::<AssignmentEvent>(record.payload.as_deref().unwrap_or_default())
            else {
                continue;
            };
            if event.kind != AssignmentKind::Assigned || event.reason.is_some() {
                continue;
            }
            for verdict in answer(&event, &record.headers) {
                let payload = codec.encode_to_vec(&topics.verdicts, &verdict).unwrap();
                produce(&producer, &topics.verdicts, &verdict.pool, &payload, &[]);
            }
            producer.poll(Duration::ZERO);
        }
        flush(&producer);
    })
}

/// For a `reviewer_app`: approve every assignment, and before the first approval send a verdict on
/// the same lease by someone else ("mallory"), which must be rejected. `first` starts true.
pub fn approve_after_one_foreign(
    first: &mut bool,
    event: &hitl_schema::AssignmentEvent,
) -> Vec<hitl_schema::Verdict> {
    let approve = verdict_on(event, hitl_schema::VerdictKind::Approve);
    if !std::mem::take(first) {
        return vec![approve];
    }
    let mut foreign = approve.clone();
    foreign.reviewer_id = "mallory".into();
    vec![foreign, approve]
}

/// A verdict on `event`'s assignment by its reviewer, decided now.
pub fn verdict_on(
    event: &hitl_schema::AssignmentEvent,
    kind: hitl_schema::VerdictKind,
) -> hitl_schema::Verdict {
    hitl_schema::Verdict {
        decision_id: event.decision_id.clone(),
        assignment_id: event.assignment_id.clone(),
        reviewer_id: event.reviewer_id.clone(),
        verdict: kind,
        amended_action: (kind == hitl_schema::VerdictKind::Amend).then(|| "hold".to_owned()),
        rationale: "looked at it".into(),
        decided_at: hitl_runtime::now_millis(),
        pool: event.pool.clone(),
    }
}

/// Makes the broker compact `topic` within seconds, as a test needs it (the topic stays
/// `cleanup.policy=compact`): segments roll after 100 ms (at the next append; the active segment is
/// never cleaned), any dirty ratio and any age are cleanable, tombstones go 100 ms after a clean.
pub fn compact_quickly(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config().create().expect("admin client");
    // AlterConfigs replaces the topic's whole override set: restate the contract's settings too.
    let config = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("cleanup.policy", "compact")
        .set("retention.ms", "-1")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("min.compaction.lag.ms", "0")
        .set("max.compaction.lag.ms", "100")
        .set("delete.retention.ms", "100");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(admin.alter_configs(&[config], &AdminOptions::new()))
        .expect("alter configs");
    for result in results {
        result.unwrap_or_else(|error| panic!("alter configs of {topic}: {error:?}"));
    }
}

/// Appends a tombstone for `key` to every partition of `topic`: it rolls each partition's
/// segment (after `compact_quickly`'s `segment.ms`), so that what came before can be cleaned.
pub fn roll_segments(topic: &str, partitions: i32, key: &str) {
    let producer = producer();
    for partition in 0..partitions {
        let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(key).partition(partition);
        producer
            .send(record)
            .map_err(|(error, _)| error)
            .expect("send tombstone");
    }
    flush(&producer);
}

/// Every record of `topic` (read_committed, including tombstones) once `done` holds for them,
/// calling `roll` (which appends to every partition, e.g. `roll_segments`) while waiting; panics
/// after `within`.
pub fn wait_for_compaction(
    topic: &str,
    within: Duration,
    mut roll: impl FnMut(),
    mut done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    let deadline = Instant::now() + within;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        roll();
        let records = read_all(topic, Duration::from_millis(700));
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} not compacted within {within:?}: {} records",
            records.len()
        );
    }
}
