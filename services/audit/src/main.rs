//! `hitl-audit [--config FILE]` runs the audit service.
//! `hitl-audit verify [--config FILE] [--public-key [KEY_ID=]HEX]... [--no-decisions] [--no-outcomes]
//!     [--allow-uncovered] [--audit-topic T] [--checkpoints-topic T]` proves the trail complete and
//!     untampered (exit 0), or lists every problem (exit 1).
//! `hitl-audit keygen` prints a fresh signing key and its public key.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use hitl_audit::{
    crypto::{random_seed_hex, verifying_key, Keys},
    reader,
    verify::{verify, Input},
    AuditSettings,
};
use hitl_runtime::{
    cli::{finish, load_from_process, refuse_to_start},
    config::Settings,
    out, outln, shutdown, telemetry,
};
use hitl_schema::Codec;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn value_of<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str())
        .collect()
}

fn keygen() -> anyhow::Result<()> {
    let seed = random_seed_hex()?;
    let keys = Keys::new(&seed, "k1", "unused-for-keygen")?;
    outln!("signing_key = \"{seed}\"   # secret: [service] of the audit service")?;
    outln!(
        "public key: {}   # for `hitl-audit verify --public-key`",
        keys.public_hex()
    )?;
    Ok(())
}

/// Whether the trail verifies clean.
fn run_verify(settings: &Settings<AuditSettings>, args: &[String]) -> anyhow::Result<bool> {
    let mut public = BTreeMap::new();
    for given in value_of(args, "--public-key") {
        let (key_id, hex) = given
            .split_once('=')
            .unwrap_or((&settings.service.key_id, given));
        public.insert(key_id.to_owned(), verifying_key("--public-key", hex)?);
    }
    if public.is_empty() {
        // Without a public key given, the configured signing key's public half.
        let keys = settings.service.keys().map_err(|problems| {
            anyhow::anyhow!(
                "give --public-key, or configure the signing key:\n  - {}",
                problems.join("\n  - ")
            )
        })?;
        public.insert(keys.key_id().to_owned(), keys.verifying_key());
    }
    let topics = &settings.topics;
    let audit_topic = value_of(args, "--audit-topic")
        .first()
        .map_or(topics.audit.clone(), |t| (*t).to_owned());
    let checkpoints_topic = value_of(args, "--checkpoints-topic")
        .first()
        .map_or(topics.audit_checkpoints.clone(), |t| (*t).to_owned());
    let timeout = Duration::from_secs(600);
    let codec = settings.codec.build(settings.kafka.request_timeout)?;
    let started = std::time::Instant::now();
    // Read in this order on a live system: what must be in the trail (decisions, outcomes), then
    // the checkpoints, then the trail itself — each thing read earlier was written before what the
    // later reads must contain. (An audit service lagging behind still shows as incomplete.)
    let decisions = (!args.iter().any(|a| a == "--no-decisions"))
        .then(|| reader::decision_ids(&settings.kafka, &topics.decisions, &codec, timeout))
        .transpose()?;
    let outcomes = (!args.iter().any(|a| a == "--no-outcomes"))
        .then(|| {
            reader::outcomes(
                &settings.kafka,
                &topics.outcomes,
                &Codec::single_object(),
                timeout,
            )
        })
        .transpose()?;
    let checkpoints = reader::read_topic(&settings.kafka, &checkpoints_topic, timeout)?;
    let input = Input {
        audit: reader::read_topic(&settings.kafka, &audit_topic, timeout)?,
        checkpoints,
        decisions,
        outcomes,
        require_checkpointed: !args.iter().any(|a| a == "--allow-uncovered"),
    };
    let read = started.elapsed();
    let report = verify(&input, &public);
    out!("{report}")?;
    outln!(
        "(read in {:.2}s, verified in {:.2}s)",
        read.as_secs_f64(),
        (started.elapsed() - read).as_secs_f64()
    )?;
    Ok(report.is_clean())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("keygen") {
        return finish(keygen().map(|()| ExitCode::SUCCESS));
    }
    let settings: Settings<AuditSettings> = match load_from_process() {
        Ok(settings) => settings,
        Err(error) => return refuse_to_start(&error),
    };
    if args.get(1).map(String::as_str) == Some("verify") {
        // Not clean: status 1, as for an error.
        return finish(run_verify(&settings, &args).map(|clean| {
            if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }));
    }
    finish(serve(settings).map(|()| ExitCode::SUCCESS))
}

/// Runs the audit service until a shutdown signal.
fn serve(settings: Settings<AuditSettings>) -> anyhow::Result<()> {
    telemetry::init(&settings.telemetry);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = shutdown::cancel_on(shutdown::shutdown_signal());
        hitl_audit::run(settings, shutdown).await
    })
}
