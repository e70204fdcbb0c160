//! hitl-admin: operator commands.
//!
//!   hitl-admin topics create [--config FILE]    create every contract topic (idempotent)
//!   hitl-admin topics list   [--config FILE]    the contract topics and their creation configs
//!   hitl-admin dlq tail [--count N] [--config FILE]
//!                                               print dead letters with their error headers
//!
//! Settings: the `[kafka]`, `[topics]` and `[codec]` tables of any service's config file, and
//! `HITL_*` variables. Other tables are ignored by this tool.

use std::{process::ExitCode, time::Duration};

use hitl_runtime::{
    config::{KafkaSettings, Topics},
    outln,
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    Message, Offset, TopicPartitionList,
};

const USAGE: &str = "usage: hitl-admin topics create|list [--config FILE]
       hitl-admin dlq tail [--count N] [--config FILE]
       hitl-admin keys generate --key-id ID [--algorithm hmac-sha256|ed25519] [--grant TOML]";

/// The tables this tool reads; any others in the file are accepted and ignored.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
struct AdminSettings {
    kafka: KafkaSettings,
    topics: Topics,
}

impl hitl_runtime::Validate for AdminSettings {
    fn validate(&self, errors: &mut Vec<String>) {
        self.kafka.validate(errors);
        self.topics.validate(errors);
    }
}

fn main() -> ExitCode {
    let settings: AdminSettings = match hitl_runtime::cli::load_from_process() {
        Ok(settings) => settings,
        Err(error) => return hitl_runtime::cli::refuse_to_start(&error),
    };
    hitl_runtime::cli::finish(run(&settings))
}

/// Runs the command the arguments name; its exit status.
fn run(settings: &AdminSettings) -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    let words: Vec<&str> = args
        .iter()
        .skip(1)
        .map(String::as_str)
        .take_while(|a| !a.starts_with("--"))
        .collect();
    match words.as_slice() {
        ["topics", "create"] => {
            let runtime = tokio::runtime::Runtime::new()?;
            let created = runtime.block_on(hitl_runtime::kafka::ensure_topics(
                &settings.kafka,
                &settings.topics.specs(),
                settings.topics.replication_factor,
            ))?;
            for spec in settings.topics.specs() {
                let state = if created.contains(&spec.name) {
                    "created"
                } else {
                    "exists"
                };
                outln!("{state:<8} {}", spec.name)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ["topics", "list"] => {
            for spec in settings.topics.specs() {
                let configs: Vec<String> = spec
                    .configs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                outln!(
                    "{:<32} partitions={} {}",
                    spec.name,
                    spec.partitions,
                    configs.join(" ")
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ["keys", "generate"] => keys_generate(&args),
        ["dlq", "tail"] => {
            dlq_tail(settings, count_flag(&args)?)?;
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Prints a new random key: its secret (for the signer, to keep in a secret store) and the
/// `[[keys]]` entry for the verifiers' key file (docs/trust.md).
fn keys_generate(args: &[String]) -> anyhow::Result<ExitCode> {
    use hitl_runtime::auth::{random_secret, Algorithm, Signer};
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let key_id =
        flag("--key-id").ok_or_else(|| anyhow::anyhow!("--key-id is required\n{USAGE}"))?;
    let algorithm = match flag("--algorithm").as_deref() {
        None | Some("hmac-sha256") => Algorithm::HmacSha256,
        Some("ed25519") => Algorithm::Ed25519,
        Some(other) => anyhow::bail!("--algorithm `{other}`: hmac-sha256 or ed25519"),
    };
    let grant = flag("--grant").unwrap_or_else(|| "{ kind = \"gateway\" }".into());
    let secret = random_secret()?;
    let signer = Signer::new(&key_id, algorithm, &secret).map_err(anyhow::Error::msg)?;
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    outln!("# The signer's secret (keep it in your secret store; never commit it):")?;
    outln!("secret = \"{secret}\"")?;
    outln!()?;
    outln!("# The entry for the verifiers' key file (trust.keys_file):")?;
    outln!("[[keys]]")?;
    outln!("key_id = \"{key_id}\"")?;
    outln!("algorithm = \"{}\"", algorithm.as_str())?;
    match signer.public_key_hex() {
        Some(public) => outln!("public_key = \"{public}\"")?,
        None => outln!(
            "secret_file = \"/run/secrets/{key_id}\"   # the same secret: HMAC keys are shared"
        )?,
    }
    outln!("grant = {grant}")?;
    Ok(ExitCode::SUCCESS)
}

fn count_flag(args: &[String]) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == "--count") {
        None => Ok(20),
        Some(i) => Ok(args
            .get(i + 1)
            .ok_or_else(|| anyhow::anyhow!("--count needs a number"))?
            .parse()?),
    }
}

/// Prints the last `count` records of each DLQ partition with their error headers.
fn dlq_tail(settings: &AdminSettings, count: usize) -> anyhow::Result<()> {
    let topic = &settings.topics.decisions_dlq;
    let consumer: BaseConsumer =
        hitl_runtime::kafka::reader_config(&settings.kafka, true).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, partition.id(), Offset::OffsetTail(count as i64))?;
    }
    consumer.assign(&assignment)?;
    let mut idle = 0;
    while idle < 20 {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
            idle += 1;
            continue;
        };
        idle = 0;
        let header = |name: &str| {
            message
                .headers()
                .and_then(|headers| headers.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        outln!(
            "{}/{}@{} key={} class={} stage={} error={}",
            header("hitl.source.topic"),
            header("hitl.source.partition"),
            header("hitl.source.offset"),
            message
                .key()
                .map(String::from_utf8_lossy)
                .unwrap_or_default(),
            header("hitl.error.class"),
            header("hitl.error.stage"),
            header("hitl.error.message"),
        )?;
    }
    Ok(())
}
