//! `hitl-loadtest chaos`: the whole system on a real Apache Kafka under faults, checked at the end
//! by an independent verifier ([`verify`]).
//!
//! The driver starts its own broker (`scripts/kafka.sh`, free loopback port, a fresh folder; it
//! knows the broker's pid and pauses only that one), two instances each of the router, the
//! assignment service and the audit service (so partitions move between instances), simulated
//! reviewers ([`reviewers`]) and a publisher of signed decisions from three workflows at a steady
//! rate, with about 1 % poison records (undecodable, unsigned, forged, oversize, invalid, bad
//! JSON, a producer the key may not name) and a few re-published decisions. Pools have leases of
//! seconds and SLAs of tens of seconds (`min_sla` lowered to allow them), so expiries, renewals,
//! escalations, breaches and fallbacks all happen. Meanwhile it runs the fault schedule: every instance SIGKILLed `kills` times at
//! random moments and restarted after a random 0.3–8 s (longer than the 6 s session timeout
//! sometimes, so partitions move), `bounces` SIGTERM restarts per instance, and one SIGSTOP of the
//! broker for `pause` then SIGCONT. For each kill it records the time from the restart to
//! `/readyz` and to the first input processed (`hitl_loop_records_in_total`).
//!
//! When the load and the faults are over, the reviewers answer everything promptly, the driver
//! waits until every valid decision has an outcome, or is set aside (a quorum item of a `hold`
//! pool at its top tier whose eligible reviewers are all excluded waits, by design, for one to
//! join), or `drain_timeout` passes; it stops the router and the assignment service, waits for the
//! audit to catch up, stops the audit, and runs the verifier over the raw topics.

pub mod reviewers;
pub mod verify;

use std::{
    collections::{BTreeMap, BTreeSet, BinaryHeap},
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hitl_runtime::{
    auth::{random_secret, Algorithm, Kind, Signer},
    config::{KafkaSettings, Topics},
};
use hitl_schema::{Codec, OutcomeStatus};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::{Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer},
    Message, Offset, TopicPartitionList,
};

use crate::mix::{generate, Generated, Rng};
use verify::{Expectations, Fault, PoolRules, Report, TopicNames};

/// How big and how hostile a run is.
#[derive(Debug, Clone)]
pub struct Options {
    pub decisions: u64,
    /// Decisions per second.
    pub rate: u64,
    /// SIGKILLs per service instance.
    pub kills: u32,
    /// SIGTERM restarts per service instance.
    pub bounces: u32,
    /// How long the broker is paused (SIGSTOP) once, mid-run; zero: no pause.
    pub pause: Duration,
    pub poison_per_mille: u64,
    /// Decisions published a second time (a producer's retry).
    pub duplicate_per_mille: u64,
    pub seed: u64,
    /// Where the service binaries are (`target/<profile>`).
    pub bin_dir: PathBuf,
    /// The repository (for `scripts/kafka.sh`).
    pub repository: PathBuf,
    /// The run's folder (broker data, configs, logs, the expectations file); a temporary one if
    /// `None`, removed at the end unless `keep`.
    pub dir: Option<PathBuf>,
    pub keep: bool,
    /// How long to wait, once load and faults are over, for every decision to be decided.
    pub drain_timeout: Duration,
    /// Violations printed in full per class.
    pub examples: usize,
}

impl Options {
    /// The CI size: 5,000 decisions, 3 kills and 1 bounce per instance, one broker pause.
    pub fn ci(bin_dir: PathBuf, repository: PathBuf) -> Self {
        Self {
            decisions: 5_000,
            rate: 80,
            kills: 3,
            bounces: 1,
            pause: Duration::from_secs(15),
            poison_per_mille: 10,
            duplicate_per_mille: 5,
            seed: 0x0c4a05,
            bin_dir,
            repository,
            dir: None,
            keep: false,
            drain_timeout: Duration::from_secs(120),
            examples: 3,
        }
    }
}

/// One kill (or bounce) and how long the instance took to come back.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub instance: String,
    pub signal: &'static str,
    pub at_ms: i64,
    /// Kill → restart (the driver's chosen delay).
    pub down: Duration,
    /// Restart → `/readyz`.
    pub ready: Option<Duration>,
    /// Restart → first input record processed.
    pub processing: Option<Duration>,
}

/// What a run produced.
pub struct ChaosRun {
    pub report: Report,
    pub expectations: Expectations,
    pub recoveries: Vec<Recovery>,
    /// The printed summary (also written to `<dir>/report.txt`).
    pub text: String,
    pub elapsed: Duration,
    /// Instances that exited or hung by themselves, or ignored a SIGTERM.
    pub findings: usize,
}

// ------------------------------------------------------------------------------ pools, policy

struct PoolDef {
    name: Option<&'static str>,
    lease_ms: u64,
    grace_ms: u64,
    escalate_after_expiries: u32,
    escalate_at_sla: &'static [f64],
    tiers: &'static [(&'static str, &'static [&'static str])],
    fallback: Option<(OutcomeStatus, &'static str)>,
}

const GRACE_MS: u64 = 1000;

/// Every pool's `min_sla`: the policy's SLAs (15–40 s) are meant as they are, so that breaches
/// and fallbacks happen within the run (the default bound, 1 min, would lift them all).
const MIN_SLA: &str = "5s";

/// The pools of the chaos run: leases of seconds (shorter than any pause), SLAs of tens of
/// seconds; `hold` for general and large payments, `fallback` for content and deploys.
const POOLS: &[PoolDef] = &[
    PoolDef {
        name: None,
        lease_ms: 3000,
        grace_ms: GRACE_MS,
        escalate_after_expiries: 2,
        escalate_at_sla: &[0.6],
        tiers: &[("senior", &["senior"])],
        fallback: None,
    },
    PoolDef {
        name: Some("payments-senior"),
        lease_ms: 4000,
        grace_ms: GRACE_MS,
        escalate_after_expiries: 2,
        escalate_at_sla: &[0.5],
        tiers: &[("head-of-risk", &["head-of-risk"])],
        fallback: None,
    },
    PoolDef {
        name: Some("trust-safety"),
        lease_ms: 3000,
        grace_ms: GRACE_MS,
        escalate_after_expiries: 2,
        escalate_at_sla: &[0.5],
        tiers: &[("senior", &["senior"])],
        fallback: Some((OutcomeStatus::Rejected, "remove")),
    },
    PoolDef {
        name: Some("release-managers"),
        lease_ms: 3000,
        grace_ms: GRACE_MS,
        escalate_after_expiries: 2,
        escalate_at_sla: &[0.6],
        tiers: &[("senior", &["senior"])],
        fallback: Some((OutcomeStatus::Rejected, "hold-deploy")),
    },
    PoolDef {
        name: Some("qa"),
        lease_ms: 4000,
        grace_ms: GRACE_MS,
        escalate_after_expiries: 0,
        escalate_at_sla: &[],
        tiers: &[],
        fallback: None,
    },
];

const POLICY: &str = r#"version: "chaos-1"
qa_seed: 11
qa_review: { pool: qa, tier: low, sla: 20s }
rules:
  - name: certain-fraud
    when: { workflow: ["payments.*"], action: [block], confidence: { gte: 0.98 }, amount: { lt: 5000 } }
    then: auto_reject
    qa_sample_rate: 0.05
  - name: large-payments-two-person
    when: { workflow: ["payments.*"], amount: { gte: 10000 } }
    then: { review: { pool: payments-senior, roles: [senior], tier: high, sla: 40s, quorum: 2 } }
  - name: confident-low-risk
    when: { confidence: { gte: 0.9 }, risk_score: { lt: 0.3 } }
    then: auto_approve
    qa_sample_rate: 0.05
  - name: risky-content
    when: { workflow: ["moderation.*"], risk_score: { gte: 0.7 } }
    then: { review: { pool: trust-safety, roles: [moderator], tier: urgent, sla: 15s } }
  - name: deploy-gates
    when: { workflow: [cicd.deploy] }
    then: { review: { pool: release-managers, roles: [release-manager], tier: high, sla: 25s } }
default:
  review: { pool: general, tier: normal, sla: 30s }
"#;

fn pool_toml(pool: &PoolDef) -> String {
    let header = match pool.name {
        None => "[service.default_pool]".to_owned(),
        Some(name) => format!("[service.pools.{name}]"),
    };
    let tiers = pool
        .tiers
        .iter()
        .map(|(name, roles)| {
            format!(
                "{{ name = \"{name}\", roles = [{}] }}",
                roles
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let breach = match pool.fallback {
        None => "{ action = \"hold\" }".to_owned(),
        Some((status, action)) => format!(
            "{{ action = \"fallback\", status = \"{}\", final_action = \"{action}\" }}",
            status.as_str()
        ),
    };
    format!(
        "{header}\nlease = \"{}ms\"\nverdict_grace = \"{}ms\"\nescalate_after_expiries = {}\n\
         escalate_at_sla = [{}]\ntiers = [{tiers}]\non_sla_breach = {breach}\npii_roles = [\"pii\"]\n\
         max_assignments_per_minute = 0\nmin_sla = \"{MIN_SLA}\"\n",
        pool.lease_ms,
        pool.grace_ms,
        pool.escalate_after_expiries,
        pool.escalate_at_sla
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn pool_rules(pool: &PoolDef) -> PoolRules {
    PoolRules {
        verdict_grace_ms: pool.grace_ms as i64,
        tiers: pool
            .tiers
            .iter()
            .map(|(_, roles)| roles.iter().map(|r| (*r).to_owned()).collect())
            .collect(),
        fallback: pool
            .fallback
            .map(|(status, action)| (status, Some(action.to_owned()))),
    }
}

// ------------------------------------------------------------------------------ processes

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A GET that gives up after 2 s in all (an instance whose runtime is stuck may accept the
/// connection and never answer, or answer a byte at a time; the driver's loop must not stall on
/// it: kills, restarts and the pause are due on time).
fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut stream =
        TcpStream::connect_timeout(&address.parse().ok()?, Duration::from_millis(500)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(_) => return None,
        }
    }
    let response = String::from_utf8_lossy(&bytes).into_owned();
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// One service instance the driver runs, kills and restarts.
struct Instance {
    /// `router-0`, `assignment-1`, …
    name: String,
    binary: PathBuf,
    /// The config without its `[http]` table (a fresh port each start).
    config: String,
    config_path: PathBuf,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    http: String,
    started: Instant,
    /// Sent SIGTERM at this moment and not yet gone (the driver restarts it once it exits).
    terminating: Option<Instant>,
}

impl Instance {
    fn spawn(&mut self) -> anyhow::Result<()> {
        self.http = format!("127.0.0.1:{}", free_port()?);
        std::fs::write(
            &self.config_path,
            format!("{}\n[http]\nlisten = \"{}\"\n", self.config, self.http),
        )?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        writeln!(log, "=== chaos: start at {}", hitl_runtime::now_millis())?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config_path)
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.started = Instant::now();
        self.terminating = None;
        Ok(())
    }

    fn ready(&self) -> bool {
        http_get(&self.http, "/readyz").is_some_and(|(status, _)| status == 200)
    }

    /// Input records processed since this process started.
    fn records_in(&self) -> Option<f64> {
        let (_, body) = http_get(&self.http, "/metrics")?;
        body.lines().find_map(|line| {
            line.strip_prefix("hitl_loop_records_in_total ")?
                .trim()
                .parse()
                .ok()
        })
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (up to `patience`, then SIGKILL); whether it exited by itself.
    fn terminate(&mut self, patience: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The exit status, if the process ended without being told to.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What a supervisor (systemd, Kubernetes) would do for the instances: restart one that exited
/// by itself, and one whose `/healthz` failed for `LIVENESS` (a liveness probe). Each is recorded
/// as a fault: it is a finding.
struct Supervisor {
    unhealthy_since: BTreeMap<usize, Instant>,
    last_check: Instant,
    restarts: Vec<String>,
}

/// How long `/healthz` may fail before the supervisor restarts the instance (on top of the 30 s
/// the loop may go without iterating before `/healthz` fails).
const LIVENESS: Duration = Duration::from_secs(30);

impl Supervisor {
    fn new() -> Self {
        Self {
            unhealthy_since: BTreeMap::new(),
            last_check: Instant::now(),
            restarts: Vec::new(),
        }
    }

    fn check(
        &mut self,
        instances: &mut [Instance],
        faults: &mut Vec<Fault>,
        since: Instant,
    ) -> anyhow::Result<()> {
        for (index, instance) in instances.iter_mut().enumerate() {
            if instance.terminating.is_some() {
                // The driver's own SIGTERM: the driver restarts it.
                continue;
            }
            let what = if let Some(status) = instance.exited() {
                instance.child = None;
                format!("{} exited by itself ({status})", instance.name)
            } else {
                continue;
            };
            self.restart(index, instance, what, faults, since)?;
        }
        if self.last_check.elapsed() < Duration::from_secs(5) {
            return Ok(());
        }
        self.last_check = Instant::now();
        for (index, instance) in instances.iter_mut().enumerate() {
            if instance.child.is_none()
                || instance.terminating.is_some()
                || instance.started.elapsed() < Duration::from_secs(60)
            {
                self.unhealthy_since.remove(&index);
                continue;
            }
            let healthy = http_get(&instance.http, "/healthz").is_some_and(|(s, _)| s == 200);
            if healthy {
                self.unhealthy_since.remove(&index);
                continue;
            }
            let since_when = *self
                .unhealthy_since
                .entry(index)
                .or_insert_with(Instant::now);
            if since_when.elapsed() >= LIVENESS {
                instance.kill9();
                let what = format!(
                    "{} unhealthy (/healthz failing for {}s): killed and restarted",
                    instance.name,
                    since_when.elapsed().as_secs()
                );
                self.restart(index, instance, what, faults, since)?;
            }
        }
        Ok(())
    }

    fn restart(
        &mut self,
        index: usize,
        instance: &mut Instance,
        what: String,
        faults: &mut Vec<Fault>,
        since: Instant,
    ) -> anyhow::Result<()> {
        say(format!("+{:.1}s {what}", since.elapsed().as_secs_f64()));
        faults.push(Fault {
            at_ms: hitl_runtime::now_millis(),
            what: what.clone(),
        });
        self.restarts.push(what);
        self.unhealthy_since.remove(&index);
        instance.spawn()
    }
}

/// Whether the consumer group `group` has read all of `topic`: per partition, its committed
/// offset is at most one short of the end (a partition written by transactions ends with a
/// commit marker, which takes an offset and is never read).
fn group_caught_up(kafka: &KafkaSettings, group: &str, topic: &str) -> anyhow::Result<bool> {
    let consumer: BaseConsumer = hitl_runtime::kafka::client_config(kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut list = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        list.add_partition(topic, partition.id());
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    for element in committed.elements() {
        let (_, high) =
            consumer.fetch_watermarks(topic, element.partition(), Duration::from_secs(10))?;
        let at = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        };
        if high - at > 1 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The broker this run started: its pid (the only process the run pauses) and its folder.
struct Broker {
    pid: u32,
    bootstrap: String,
    dir: PathBuf,
    repository: PathBuf,
    _watchdog: Child,
}

impl Broker {
    fn start(repository: &Path, dir: &Path) -> anyhow::Result<Self> {
        let status = Command::new(repository.join("scripts/kafka.sh"))
            .args(["start", "--port", "0", "--heap", "768m", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .status()?;
        anyhow::ensure!(
            status.success(),
            "scripts/kafka.sh could not start Apache Kafka in {}",
            dir.display()
        );
        let read = |name: &str| -> anyhow::Result<String> {
            Ok(std::fs::read_to_string(dir.join(name))?.trim().to_owned())
        };
        let pid: u32 = read("pid")?.parse()?;
        // Kills the broker if this process goes away however it ends (SIGKILL also ends a
        // stopped process).
        let watchdog = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "while kill -0 {parent} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
                 kill -9 {pid} 2>/dev/null",
                parent = std::process::id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self {
            pid,
            bootstrap: read("address")?,
            dir: dir.to_owned(),
            repository: repository.to_owned(),
            _watchdog: watchdog,
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        signal(self.pid, "CONT");
        let _ = Command::new(self.repository.join("scripts/kafka.sh"))
            .args(["stop", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        signal(self.pid, "KILL");
    }
}

// ------------------------------------------------------------------------------ the run

fn hex_secret() -> anyhow::Result<String> {
    Ok(hex::encode(random_secret()?))
}

/// How long an instance may take to exit after SIGTERM before it is SIGKILLed (a Kubernetes pod's
/// default grace period).
const TERM_PATIENCE: Duration = Duration::from_secs(30);

/// How long after the load and the last fault restarted instances are still watched for their
/// first input processed.
const RECOVERY_WATCH: Duration = Duration::from_secs(20);

/// Fault actions, in time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Kill(usize),
    Bounce(usize),
    Restart(usize, bool),
    Pause,
    Resume,
}

/// What the publisher remembers of what it published.
#[derive(Default)]
struct Published {
    valid: BTreeSet<String>,
    poison: BTreeMap<String, String>,
    duplicates: u64,
    republished: BTreeSet<String>,
}

fn percentile(values: &[Duration], p: f64) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
}

fn say(line: impl AsRef<str>) {
    eprintln!("[chaos] {}", line.as_ref());
}

/// Runs the chaos suite; `Err` only when the run itself could not be carried out.
pub fn run(options: &Options) -> anyhow::Result<ChaosRun> {
    let started = Instant::now();
    let started_ms = hitl_runtime::now_millis();
    let dir = options.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "hitl-chaos-{}-{:x}",
            std::process::id(),
            started_ms
        ))
    });
    std::fs::create_dir_all(&dir)?;
    say(format!("run folder {}", dir.display()));
    let broker = Broker::start(&options.repository, &dir.join("kafka"))?;
    say(format!("broker pid {} on {}", broker.pid, broker.bootstrap));
    let result = run_with(options, &dir, &broker, started, started_ms);
    drop(broker);
    // Kept (logs, broker data, expectations.json for chaos-verify) when there is anything to look
    // at: a violation, or an instance that exited, hung or ignored SIGTERM.
    let clean = result
        .as_ref()
        .is_ok_and(|run| run.report.violations.is_empty() && run.findings == 0);
    if clean && options.dir.is_none() && !options.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        say(format!("run folder kept: {}", dir.display()));
    }
    result
}

fn run_with(
    options: &Options,
    dir: &Path,
    broker: &Broker,
    started: Instant,
    started_ms: i64,
) -> anyhow::Result<ChaosRun> {
    let prefix = format!("chaos{:x}", started_ms % 0xffff_ffff);
    let defaults = Topics::default();
    let named = |name: &str| format!("{prefix}.{name}");
    let topics = Topics {
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
        partitions: 4,
        ..defaults.clone()
    };
    let kafka = KafkaSettings {
        bootstrap_servers: broker.bootstrap.clone(),
        ..KafkaSettings::default()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(hitl_runtime::kafka::ensure_topics(
            &kafka,
            &topics.specs(),
            1,
        ))?;

    // Keys: random, this run's own (no development key, so no --dev).
    let mut keys_toml = String::new();
    let mut secrets: BTreeMap<&str, String> = BTreeMap::new();
    for (key_id, grant) in [
        ("router-chaos", "{ kind = \"service\", service = \"router\" }".to_owned()),
        ("assignment-chaos", "{ kind = \"service\", service = \"assignment\" }".to_owned()),
        (
            "publisher-chaos",
            "{ kind = \"publisher\", producers = [\"fraud-gbm\", \"toxicity-bert\", \"ci-pipeline\"] }"
                .to_owned(),
        ),
        ("gateway-chaos", "{ kind = \"gateway\" }".to_owned()),
    ] {
        let secret = hex_secret()?;
        keys_toml.push_str(&format!(
            "[[keys]]\nkey_id = \"{key_id}\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{secret}\"\ngrant = {grant}\n\n"
        ));
        secrets.insert(key_id, secret);
    }
    let keys_file = dir.join("keys.toml");
    std::fs::write(&keys_file, keys_toml)?;
    let signer = |key_id: &str| -> anyhow::Result<Signer> {
        Signer::new(
            key_id,
            Algorithm::HmacSha256,
            &hex::decode(&secrets[key_id])?,
        )
        .map_err(|e| anyhow::anyhow!(e))
    };
    let publisher = Arc::new(signer("publisher-chaos")?);
    let gateway = Arc::new(signer("gateway-chaos")?);
    let lease_secret = hex_secret()?;
    let audit_signing_key = hex_secret()?;
    let audit_hash_key = hex_secret()?;

    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, POLICY)?;
    let topics_toml = topics.toml_table();
    let shared = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout = \"6s\"\ncommit_interval = \"100ms\"\n\n{topics_toml}\n\
         [telemetry]\nlog_level = \"info\"\n\n",
        broker.bootstrap
    );
    let audit_service = format!(
        "[service]\ngroup_id = \"{prefix}-audit\"\nsigning_key = \"{audit_signing_key}\"\nkey_id = \"chaos-1\"\n\
         hash_key = \"{audit_hash_key}\"\ncheckpoint_interval = \"1s\"\ncheckpoint_every_records = 1000\n\
         tick_interval = \"100ms\"\n"
    );
    let pools: String = POOLS.iter().map(pool_toml).collect::<Vec<_>>().join("\n");
    let mut instances: Vec<Instance> = Vec::new();
    for service in ["router", "assignment", "audit"] {
        for index in 0..2 {
            let name = format!("{service}-{index}");
            let config = match service {
                "router" => format!(
                    "{shared}[service]\ninstance_id = \"{prefix}-{index}\"\ngroup_id = \"{prefix}-router\"\npolicy_path = \"{}\"\n",
                    policy_path.display()
                ),
                "assignment" => format!(
                    "{shared}[service]\ninstance_id = \"{prefix}-{index}\"\ngroup_id = \"{prefix}-assignment\"\n\
                     tick_interval = \"100ms\"\ngauge_interval = \"1s\"\n\n{pools}"
                ),
                _ => format!(
                    "{shared}{}instance_id = \"{prefix}-{index}\"\n",
                    audit_service
                ),
            };
            let mut env = vec![(
                "HITL_TRUST__KEYS_FILE".to_owned(),
                keys_file.display().to_string(),
            )];
            let key_id = match service {
                "router" => Some("router-chaos"),
                "assignment" => Some("assignment-chaos"),
                _ => None,
            };
            if let Some(key_id) = key_id {
                env.push(("HITL_TRUST__SIGNING_KEY_ID".into(), key_id.into()));
                env.push(("HITL_TRUST__SIGNING_SECRET".into(), secrets[key_id].clone()));
            }
            if service == "assignment" {
                env.push(("HITL_SERVICE__LEASE_SECRET".into(), lease_secret.clone()));
            }
            instances.push(Instance {
                config_path: dir.join(format!("{name}.toml")),
                log_path: dir.join(format!("{name}.log")),
                binary: options.bin_dir.join(format!("hitl-{service}")),
                name,
                config,
                env,
                child: None,
                http: String::new(),
                started: Instant::now(),
                terminating: None,
            });
        }
    }
    // `hitl-audit verify` reads the audit's own config (its signing key gives the public key).
    let verify_config = dir.join("audit-verify.toml");
    std::fs::write(
        &verify_config,
        format!(
            "{shared}{audit_service}instance_id = \"{prefix}-verify\"\n[http]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )?;
    let audit_verify_command: Vec<String> = vec![
        options.bin_dir.join("hitl-audit").display().to_string(),
        "verify".into(),
        "--config".into(),
        verify_config.display().to_string(),
    ];
    for instance in &mut instances {
        instance.spawn()?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for instance in &mut instances {
        while !instance.ready() {
            if let Some(status) = instance.exited() {
                anyhow::bail!(
                    "{} exited at start ({status}); see {}",
                    instance.name,
                    instance.log_path.display()
                );
            }
            anyhow::ensure!(Instant::now() < deadline, "{} not ready", instance.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    say(format!(
        "6 instances ready after {:.1}s",
        started.elapsed().as_secs_f64()
    ));

    // Reviewers.
    let control = Arc::new(reviewers::Control::default());
    let reviewer_tally = Arc::new(Mutex::new(reviewers::Tally::default()));
    let reviewer_thread = reviewers::spawn(
        kafka.clone(),
        topics.clone(),
        gateway.clone(),
        Duration::from_millis(GRACE_MS),
        options.seed ^ 0x5eed,
        control.clone(),
        reviewer_tally.clone(),
    );

    // Publisher.
    let published = Arc::new(Mutex::new(Published::default()));
    let produced = Arc::new(AtomicU64::new(0));
    let publishing_done = Arc::new(AtomicBool::new(false));
    let publisher_thread = {
        let (kafka, topic, published, produced, done, publisher, options) = (
            kafka.clone(),
            topics.decisions.clone(),
            published.clone(),
            produced.clone(),
            publishing_done.clone(),
            publisher.clone(),
            options.clone(),
        );
        let run_id = prefix.clone();
        std::thread::spawn(move || {
            publish(
                &kafka, &topic, &run_id, &options, &publisher, &published, &produced, &done,
            )
        })
    };

    // The fault schedule over the load's duration.
    let load = Duration::from_secs_f64(options.decisions as f64 / options.rate.max(1) as f64);
    let mut rng = Rng::new(options.seed);
    let pause_at = load.mul_f64(0.45);
    // No kill just before, during or just after the pause (the pause is its own fault).
    let pause_window = (
        pause_at.saturating_sub(Duration::from_secs(3)),
        pause_at + options.pause + Duration::from_secs(3),
    );
    let mut schedule: BinaryHeap<std::cmp::Reverse<(Duration, Action)>> = BinaryHeap::new();
    let random_moment = |rng: &mut Rng| loop {
        let at = load.mul_f64(0.05 + 0.9 * rng.unit());
        if options.pause.is_zero() || at < pause_window.0 || at > pause_window.1 {
            return at;
        }
    };
    for index in 0..instances.len() {
        for _ in 0..options.kills {
            schedule.push(std::cmp::Reverse((
                random_moment(&mut rng),
                Action::Kill(index),
            )));
        }
        for _ in 0..options.bounces {
            schedule.push(std::cmp::Reverse((
                random_moment(&mut rng),
                Action::Bounce(index),
            )));
        }
    }
    if !options.pause.is_zero() {
        schedule.push(std::cmp::Reverse((pause_at, Action::Pause)));
        schedule.push(std::cmp::Reverse((
            pause_at + options.pause,
            Action::Resume,
        )));
    }
    let load_started = Instant::now();
    let mut faults: Vec<Fault> = Vec::new();
    let mut recoveries: Vec<Recovery> = Vec::new();
    // Restarted instances still being watched: (recovery index, instance).
    let mut watching: Vec<(usize, usize)> = Vec::new();
    let mut down_since: BTreeMap<usize, Instant> = BTreeMap::new();
    let mut last_progress = Instant::now();
    let mut paused = false;
    let mut supervisor = Supervisor::new();
    let mut outcome_watch = OutcomeWatch::new(&kafka, &topics.outcomes)?;
    // When the last fault was done and the publisher finished: instances restarted since are
    // watched for at most `RECOVERY_WATCH` more (a router restarted after the last decision was
    // published has no input to show it processing).
    let mut faults_over: Option<Instant> = None;
    // Instances sent SIGTERM, not gone yet: index → the restart delay once they are.
    let mut restart_after_exit: BTreeMap<usize, Duration> = BTreeMap::new();
    loop {
        let now = load_started.elapsed();
        while let Some(std::cmp::Reverse((at, action))) = schedule.peek().copied() {
            if at > now {
                break;
            }
            schedule.pop();
            let at_ms = hitl_runtime::now_millis();
            match action {
                Action::Kill(index) | Action::Bounce(index) => {
                    let instance = &mut instances[index];
                    if instance.child.is_none() || instance.terminating.is_some() || paused {
                        // Down already (or the broker is paused): a little later.
                        schedule.push(std::cmp::Reverse((now + Duration::from_secs(3), action)));
                        continue;
                    }
                    let bounce = matches!(action, Action::Bounce(_));
                    let what = if bounce {
                        // Not waited for here (the loop goes on with the other faults): once
                        // it has exited it is restarted after the delay; if it has not within
                        // TERM_PATIENCE it is SIGKILLed, and that is a finding.
                        if let Some(child) = &instance.child {
                            signal(child.id(), "TERM");
                        }
                        instance.terminating = Some(Instant::now());
                        format!("SIGTERM {}", instance.name)
                    } else {
                        instance.kill9();
                        format!("SIGKILL {}", instance.name)
                    };
                    let delay = if bounce {
                        Duration::from_millis(200 + rng.below(800))
                    } else {
                        Duration::from_millis(300 + rng.below(7700))
                    };
                    say(format!(
                        "+{:.1}s {what}; restart in {:.1}s",
                        now.as_secs_f64(),
                        delay.as_secs_f64()
                    ));
                    faults.push(Fault { at_ms, what });
                    recoveries.push(Recovery {
                        instance: instance.name.clone(),
                        signal: if bounce { "SIGTERM" } else { "SIGKILL" },
                        at_ms,
                        down: delay,
                        ready: None,
                        processing: None,
                    });
                    down_since.insert(index, Instant::now());
                    if bounce {
                        restart_after_exit.insert(index, delay);
                    } else {
                        schedule.push(std::cmp::Reverse((
                            now + delay,
                            Action::Restart(index, bounce),
                        )));
                    }
                }
                Action::Restart(index, _) => {
                    let instance = &mut instances[index];
                    instance.spawn()?;
                    if let Some(recovery) =
                        recoveries.iter().rposition(|r| r.instance == instance.name)
                    {
                        if let Some(since) = down_since.remove(&index) {
                            recoveries[recovery].down = since.elapsed();
                        }
                        watching.push((recovery, index));
                    }
                }
                Action::Pause => {
                    signal(broker.pid, "STOP");
                    paused = true;
                    say(format!(
                        "+{:.1}s SIGSTOP broker (pid {}) for {:?}",
                        now.as_secs_f64(),
                        broker.pid,
                        options.pause
                    ));
                    faults.push(Fault {
                        at_ms,
                        what: format!("broker paused for {:?}", options.pause),
                    });
                }
                Action::Resume => {
                    signal(broker.pid, "CONT");
                    paused = false;
                    say(format!("+{:.1}s SIGCONT broker", now.as_secs_f64()));
                    faults.push(Fault {
                        at_ms,
                        what: "broker resumed".into(),
                    });
                }
            }
        }
        // Instances told to stop (SIGTERM): restarted once gone, SIGKILLed if they take too long.
        let mut gone = Vec::new();
        for (&index, &delay) in &restart_after_exit {
            let instance = &mut instances[index];
            let since = instance.terminating.unwrap_or_else(Instant::now);
            if instance.exited().is_some() {
                instance.child = None;
                gone.push((index, delay));
            } else if since.elapsed() >= TERM_PATIENCE {
                instance.kill9();
                let what = format!(
                    "{} still running {}s after SIGTERM: SIGKILLed",
                    instance.name,
                    TERM_PATIENCE.as_secs()
                );
                say(format!(
                    "+{:.1}s {what}",
                    load_started.elapsed().as_secs_f64()
                ));
                faults.push(Fault {
                    at_ms: hitl_runtime::now_millis(),
                    what: what.clone(),
                });
                supervisor.restarts.push(what);
                gone.push((index, delay));
            }
        }
        for (index, delay) in gone {
            restart_after_exit.remove(&index);
            schedule.push(std::cmp::Reverse((
                load_started.elapsed() + delay,
                Action::Restart(index, true),
            )));
        }
        // Recovery of restarted instances: ready, then processing.
        watching.retain(|&(recovery, index)| {
            let instance = &instances[index];
            let record = &mut recoveries[recovery];
            if instance.child.is_none() {
                return false;
            }
            if record.ready.is_none() && instance.ready() {
                record.ready = Some(instance.started.elapsed());
            }
            if record.ready.is_some()
                && record.processing.is_none()
                && instance.records_in().is_some_and(|n| n > 0.0)
            {
                record.processing = Some(instance.started.elapsed());
            }
            record.processing.is_none() && instance.started.elapsed() < Duration::from_secs(120)
        });
        // An instance that ended or hung without being told to is a finding: recorded, restarted.
        supervisor.check(&mut instances, &mut faults, load_started)?;
        outcome_watch.poll(Duration::from_millis(50));
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            say(format!(
                "+{:.0}s published {} of {}, outcomes {}",
                load_started.elapsed().as_secs_f64(),
                produced.load(Ordering::Relaxed),
                options.decisions,
                outcome_watch.decided.len()
            ));
        }
        if publishing_done.load(Ordering::Relaxed)
            && schedule.is_empty()
            && restart_after_exit.is_empty()
        {
            let since = *faults_over.get_or_insert_with(Instant::now);
            if watching.is_empty() || since.elapsed() >= RECOVERY_WATCH {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    publisher_thread
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))?;
    let load_elapsed = load_started.elapsed();
    say(format!(
        "load and faults over after {:.1}s; draining",
        load_elapsed.as_secs_f64()
    ));

    // Drain: reviewers answer everything; wait for every valid decision's outcome, or until the
    // only undecided ones are set aside (nobody eligible is left for them in a pool that holds:
    // they wait for a reviewer to join, which no one here will).
    control.drain.store(true, Ordering::Relaxed);
    let published = std::mem::take(&mut *published.lock().expect("published"));
    let drain_started = Instant::now();
    let mut last_print = Instant::now();
    let mut lifecycle_watch = LifecycleWatch::new(&kafka, &topics.lifecycle)?;
    while drain_started.elapsed() < options.drain_timeout {
        outcome_watch.poll(Duration::from_millis(100));
        lifecycle_watch.poll(Duration::from_millis(100));
        let undecided: Vec<&String> = published
            .valid
            .iter()
            .filter(|id| !outcome_watch.decided.contains(*id))
            .collect();
        let aside = undecided
            .iter()
            .filter(|id| lifecycle_watch.set_aside(id))
            .count();
        if undecided.len() == aside {
            if aside > 0 {
                say(format!(
                    "drained: {aside} decisions set aside (no eligible reviewer left), the rest decided"
                ));
            }
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            say(format!(
                "draining: {} decisions without an outcome ({aside} of them set aside)",
                undecided.len()
            ));
        }
        supervisor.check(&mut instances, &mut faults, load_started)?;
    }
    let drained_in = drain_started.elapsed();
    // QA samples and held items may still be moving: wait until the lifecycle is quiet.
    let quiet_started = Instant::now();
    let mut last_seen = (0u64, Instant::now());
    while quiet_started.elapsed() < Duration::from_secs(60) {
        lifecycle_watch.poll(Duration::from_millis(200));
        if lifecycle_watch.records != last_seen.0 {
            last_seen = (lifecycle_watch.records, Instant::now());
        } else if last_seen.1.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    control.stop.store(true, Ordering::Relaxed);
    reviewer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("reviewers panicked"))?;
    for instance in instances
        .iter_mut()
        .filter(|i| !i.name.starts_with("audit"))
    {
        instance.terminate(Duration::from_secs(30));
    }
    // The audit catches up with the lifecycle, then checkpoints what it wrote (every second).
    let audit_started = Instant::now();
    while audit_started.elapsed() < Duration::from_secs(120) {
        if group_caught_up(&kafka, &format!("{prefix}-audit"), &topics.lifecycle)? {
            break;
        }
        supervisor.check(&mut instances, &mut faults, load_started)?;
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    for instance in &mut instances {
        instance.terminate(Duration::from_secs(30));
    }
    say(format!(
        "stopped; verifying (audit settled in {:.1}s)",
        audit_started.elapsed().as_secs_f64()
    ));

    let expectations = Expectations {
        bootstrap: broker.bootstrap.clone(),
        topics: TopicNames {
            decisions_dlq: topics.decisions_dlq.clone(),
            review_requests: topics.review_requests.clone(),
            assignments: topics.assignments.clone(),
            verdicts: topics.verdicts.clone(),
            outcomes: topics.outcomes.clone(),
            lifecycle: topics.lifecycle.clone(),
            feedback: topics.feedback.clone(),
        },
        decisions: published.valid.clone(),
        republished: published.republished.clone(),
        poison: published.poison.clone(),
        pools: POOLS
            .iter()
            .filter_map(|p| Some((p.name?.to_owned(), pool_rules(p))))
            .collect(),
        default_pool: pool_rules(&POOLS[0]),
        roster: reviewers::roster().into_iter().collect(),
        faults: faults.clone(),
        started_ms,
        audit_verify: Some(audit_verify_command),
    };
    std::fs::write(
        dir.join("expectations.json"),
        serde_json::to_vec_pretty(&expectations)?,
    )?;
    let report = verify::verify(&expectations)?;

    // The summary.
    let mut text = String::new();
    let reviewers = reviewer_tally.lock().expect("tally").clone();
    text.push_str(&format!(
        "== chaos run: {} decisions at {}/s, {} poison, {} re-published; {} kills and {} bounces per instance (6 instances), broker paused {:?}\n",
        published.valid.len(),
        options.rate,
        published.poison.len(),
        published.duplicates,
        options.kills,
        options.bounces,
        options.pause
    ));
    text.push_str(&format!(
        "   load+faults {:.1}s, drain {:.1}s, total {:.1}s; exited, hung or ignored SIGTERM (restarted by the supervisor or the driver): {}\n",
        load_elapsed.as_secs_f64(),
        drained_in.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        supervisor.restarts.len()
    ));
    for restart in &supervisor.restarts {
        text.push_str(&format!("     {restart}\n"));
    }
    text.push_str(&format!(
        "   reviewers: {} leases answered or ignored, {} ignored (left to expire), {} late on purpose, {} revocations read, {} renewals read; sent {:?}\n",
        reviewers.assigned, reviewers.ignored, reviewers.late, reviewers.revoked, reviewers.renewed_events, reviewers.sent
    ));
    text.push_str("== recovery after each signal (restart → ready → first input processed)\n");
    for service in ["router", "assignment", "audit"] {
        for signal in ["SIGKILL", "SIGTERM"] {
            let of: Vec<&Recovery> = recoveries
                .iter()
                .filter(|r| r.instance.starts_with(service) && r.signal == signal)
                .collect();
            if of.is_empty() {
                continue;
            }
            let ready: Vec<Duration> = of.iter().filter_map(|r| r.ready).collect();
            let processing: Vec<Duration> = of.iter().filter_map(|r| r.processing).collect();
            let down: Vec<Duration> = of.iter().map(|r| r.down).collect();
            let kill_to_processing: Vec<Duration> = of
                .iter()
                .filter_map(|r| Some(r.down + r.processing?))
                .collect();
            let ms =
                |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{}ms", d.as_millis()));
            text.push_str(&format!(
                "   {service:<10} {signal} ×{:<3} down p50 {} | restart→ready p50 {} max {} | restart→processing p50 {} max {} ({} of {}) | signal→processing p50 {} max {}\n",
                of.len(),
                ms(percentile(&down, 0.5)),
                ms(percentile(&ready, 0.5)),
                ms(percentile(&ready, 1.0)),
                ms(percentile(&processing, 0.5)),
                ms(percentile(&processing, 1.0)),
                processing.len(),
                of.len(),
                ms(percentile(&kill_to_processing, 0.5)),
                ms(percentile(&kill_to_processing, 1.0)),
            ));
        }
    }
    text.push_str(&report.render(&expectations, options.examples));
    let _ = std::fs::write(dir.join("report.txt"), &text);
    Ok(ChaosRun {
        report,
        expectations,
        recoveries,
        text,
        elapsed: started.elapsed(),
        findings: supervisor.restarts.len(),
    })
}

/// Whether the pool named `pool` holds items on an SLA breach (no fallback).
fn pool_holds(pool: &str) -> bool {
    POOLS
        .iter()
        .find(|p| p.name == Some(pool))
        .unwrap_or(&POOLS[0])
        .fallback
        .is_none()
}

/// Where the assignment service left a decision: set aside (in a pool that holds) and not handed
/// out since, and its open leases.
#[derive(Default)]
struct AsideState {
    aside: bool,
    open: BTreeSet<String>,
}

/// A live reader of the lifecycle (read_committed, from the start): its record count, and per
/// decision whether it is set aside (as the verifier judges it: a QUEUED set_aside=true with no
/// ASSIGNED or set_aside=false after it, in a pool that holds, and no lease open).
struct LifecycleWatch {
    consumer: BaseConsumer,
    codec: Codec,
    records: u64,
    decisions: std::collections::HashMap<String, AsideState>,
}

impl LifecycleWatch {
    fn new(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<Self> {
        Ok(Self {
            consumer: OutcomeWatch::new(kafka, topic)?.consumer,
            codec: Codec::single_object(),
            records: 0,
            decisions: std::collections::HashMap::new(),
        })
    }

    fn set_aside(&self, decision: &str) -> bool {
        self.decisions
            .get(decision)
            .is_some_and(|d| d.aside && d.open.is_empty())
    }

    fn poll(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let Some(Ok(message)) = self.consumer.poll(Duration::from_millis(20)) else {
                continue;
            };
            self.records += 1;
            let Ok(event) = self
                .codec
                .decode::<hitl_schema::LifecycleEvent>(message.payload().unwrap_or_default())
            else {
                continue;
            };
            if event.service != "assignment" {
                continue;
            }
            use hitl_schema::LifecycleKind as K;
            let state = self.decisions.entry(event.decision_id).or_default();
            let attribute = |name: &str| event.attributes.get(name).map(String::as_str);
            let lease = event.assignment_id.clone().unwrap_or_default();
            match event.kind {
                K::Queued => match attribute("set_aside") {
                    Some("true") => state.aside = attribute("pool").is_some_and(pool_holds),
                    Some("false") => state.aside = false,
                    _ => {}
                },
                K::Assigned => {
                    state.aside = false;
                    state.open.insert(lease);
                }
                K::Revoked => {
                    state.open.remove(&lease);
                }
                K::Verdict if attribute("verdict") != Some("RENEW") => {
                    state.open.remove(&lease);
                }
                _ => {}
            }
        }
    }
}

/// A live reader of the outcomes topic (read_committed, every partition from the start)
/// collecting the decided decision ids (the record keys).
struct OutcomeWatch {
    consumer: BaseConsumer,
    decided: BTreeSet<String>,
}

impl OutcomeWatch {
    fn new(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = hitl_runtime::kafka::reader_config(kafka, true).create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer,
            decided: BTreeSet::new(),
        })
    }

    fn poll(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(message)) = self.consumer.poll(Duration::from_millis(20)) {
                if let Some(key) = message.key() {
                    self.decided
                        .insert(String::from_utf8_lossy(key).into_owned());
                }
            }
        }
    }
}

/// Publishes `options.decisions` valid decisions at `options.rate`, with poison records and
/// re-published decisions mixed in.
#[allow(clippy::too_many_arguments)]
fn publish(
    kafka: &KafkaSettings,
    topic: &str,
    run_id: &str,
    options: &Options,
    publisher: &Signer,
    published: &Mutex<Published>,
    produced: &AtomicU64,
    done: &AtomicBool,
) {
    let producer: BaseProducer = hitl_runtime::kafka::producer_config(kafka)
        .set("message.timeout.ms", "600000")
        .create()
        .expect("producer");
    let codec = Codec::single_object();
    let mut rng = Rng::new(options.seed ^ 0xdec1);
    let started = Instant::now();
    let mut index = 0u64;
    let mut poison_index = 0u64;
    let mut recent: Vec<(String, Vec<u8>)> = Vec::new();
    let send = |key: &str, payload: &[u8], headers: OwnedHeaders| {
        let mut record = BaseRecord::<str, [u8]>::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        while let Err((_, returned)) = producer.send(record) {
            producer.poll(Duration::from_millis(10));
            record = returned;
        }
    };
    let signed = |key: &str, payload: &[u8]| {
        let signature = publisher.sign(Kind::Decision, Some(key.as_bytes()), Some(payload));
        OwnedHeaders::new().insert(Header {
            key: hitl_runtime::auth::HEADER,
            value: Some(&signature),
        })
    };
    while index < options.decisions {
        let due = (started.elapsed().as_secs_f64() * options.rate as f64) as u64;
        while index < due.min(options.decisions) {
            let now = hitl_runtime::now_millis();
            let Generated::Decision(decision) = generate(&mut rng, run_id, index, now, 0) else {
                unreachable!("no invalid records asked for");
            };
            let payload = codec.encode_to_vec("", &*decision).expect("encodes");
            send(
                &decision.decision_id,
                &payload,
                signed(&decision.decision_id, &payload),
            );
            published
                .lock()
                .expect("published")
                .valid
                .insert(decision.decision_id.clone());
            recent.push((decision.decision_id.clone(), payload));
            if recent.len() > 2000 {
                recent.drain(..1000);
            }
            index += 1;
            produced.store(index, Ordering::Relaxed);
            if rng.below(1000) < options.duplicate_per_mille && !recent.is_empty() {
                let (key, payload) = &recent[rng.below(recent.len() as u64) as usize];
                send(key, payload, signed(key, payload));
                let mut published = published.lock().expect("published");
                published.duplicates += 1;
                published.republished.insert(key.clone());
            }
            if rng.below(1000) < options.poison_per_mille {
                let (key, kind, payload, headers) =
                    poison(&codec, publisher, run_id, poison_index, &mut rng, now);
                poison_index += 1;
                send(&key, &payload, headers);
                published
                    .lock()
                    .expect("published")
                    .poison
                    .insert(key, kind.to_owned());
            }
        }
        producer.poll(Duration::from_millis(5));
    }
    let _ = producer.flush(Duration::from_secs(600));
    done.store(true, Ordering::Relaxed);
}

/// One poison record: (key, kind, bytes, headers).
fn poison(
    codec: &Codec,
    publisher: &Signer,
    run_id: &str,
    index: u64,
    rng: &mut Rng,
    now: i64,
) -> (String, &'static str, Vec<u8>, OwnedHeaders) {
    let key = format!("{run_id}-poison-{index:06}");
    let sign = |payload: &[u8]| {
        let signature = publisher.sign(Kind::Decision, Some(key.as_bytes()), Some(payload));
        OwnedHeaders::new().insert(Header {
            key: hitl_runtime::auth::HEADER,
            value: Some(&signature),
        })
    };
    let valid = || {
        let Generated::Decision(mut decision) = generate(&mut rng.clone(), run_id, 0, now, 0)
        else {
            unreachable!()
        };
        decision.decision_id = key.clone();
        decision
    };
    match index % 7 {
        0 => {
            let payload = b"\x00not avro at all".to_vec();
            let headers = sign(&payload);
            (key, "undecodable", payload, headers)
        }
        1 => {
            let payload = codec.encode_to_vec("", &*valid()).expect("encodes");
            (key, "unsigned", payload, OwnedHeaders::new())
        }
        2 => {
            let payload = codec.encode_to_vec("", &*valid()).expect("encodes");
            let headers = OwnedHeaders::new().insert(Header {
                key: hitl_runtime::auth::HEADER,
                value: Some(&publisher.sign(Kind::Decision, Some(b"another-key"), Some(&payload))),
            });
            (key, "forged signature", payload, headers)
        }
        3 => {
            let mut decision = valid();
            for i in 0..5 {
                decision
                    .context
                    .insert(format!("blob{i}"), "x".repeat(15 * 1024));
            }
            let payload = codec.encode_to_vec("", &*decision).expect("encodes");
            let headers = sign(&payload);
            (key, "oversize", payload, headers)
        }
        4 => {
            let mut decision = valid();
            decision.confidence = 1.7;
            let payload = codec.encode_to_vec("", &*decision).expect("encodes");
            let headers = sign(&payload);
            (key, "invalid (confidence 1.7)", payload, headers)
        }
        5 => {
            let payload = br#"{"decision_id": 42}"#.to_vec();
            let headers = sign(&payload).insert(Header {
                key: "content-type",
                value: Some("application/json"),
            });
            (key, "bad JSON", payload, headers)
        }
        _ => {
            let mut decision = valid();
            decision.producer = "someone-else".into();
            let payload = codec.encode_to_vec("", &*decision).expect("encodes");
            let headers = sign(&payload);
            (key, "producer not granted", payload, headers)
        }
    }
}
