//! `hitl-audit [--config FILE] [--dev]` runs the audit service (`--dev` accepts the development
//! keys published in this repository; never in production).
//! `hitl-audit verify [--config FILE] [--public-key [KEY_ID=]HEX]... [--keys-file FILE]...
//!     [--expect-head FILE|HASH]... [--no-decisions] [--no-outcomes] [--allow-uncovered]
//!     [--audit-topic T] [--checkpoints-topic T]` proves the trail complete and untampered
//!     (exit 0), or lists every problem (exit 1). Every key that ever signed (key rotation) is
//!     given by `--public-key KEY_ID=HEX` or a keys file (lines `KEY_ID = HEX`, or `[[keys]]`
//!     tables with `key_id` and `public_key`); the report says which key signed what.
//! `hitl-audit keygen` prints a fresh signing key and its public key.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use hitl_audit::{
    crypto::{random_seed_hex, verifying_key, Hasher, Keys},
    head, reader,
    verify::{verify_with, Checks, ExpectedHead, Input},
    AuditSettings,
};
use hitl_runtime::{
    cli::{finish, load_from_process, refuse_to_start},
    config::{ConfigError, Settings},
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
    outln!(
        "signing_key = \"{seed}\"   # secret: [service] of the audit service (or a file: \
         signing_key_file)"
    )?;
    outln!(
        "public key: {}   # for `hitl-audit verify --public-key`",
        keys.public_hex()
    )?;
    Ok(())
}

/// The public keys of a keys file: `KEY_ID = HEX` lines, or `[[keys]]` tables with `key_id` and
/// `public_key` (other fields, such as `algorithm`, are ignored).
fn keys_file(path: &str) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("--keys-file {path}: {error}"))?;
    let unquote = |v: &str| v.trim().trim_matches('"').trim().to_owned();
    let mut keys = Vec::new();
    let mut table: (Option<String>, Option<String>) = (None, None);
    let mut in_tables = false;
    let flush = |table: &mut (Option<String>, Option<String>),
                 keys: &mut Vec<(String, String)>|
     -> anyhow::Result<()> {
        match std::mem::take(table) {
            (Some(id), Some(public)) => keys.push((id, public)),
            (None, None) => {}
            _ => anyhow::bail!("--keys-file {path}: a [[keys]] table needs key_id and public_key"),
        }
        Ok(())
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if line == "[[keys]]" {
            flush(&mut table, &mut keys)?;
            in_tables = true;
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            anyhow::bail!("--keys-file {path}: `{line}` is not NAME = VALUE");
        };
        let (name, value) = (unquote(name), unquote(value));
        if !in_tables {
            keys.push((name, value));
        } else if name == "key_id" {
            table.0 = Some(value);
        } else if name == "public_key" {
            table.1 = Some(value);
        }
    }
    flush(&mut table, &mut keys)?;
    Ok(keys)
}

/// What `--expect-head` names: a head file, or one checkpoint hash.
fn expected_head(given: &str) -> anyhow::Result<ExpectedHead> {
    if std::path::Path::new(given).exists() {
        return Ok(ExpectedHead::Partitions(
            head::read(std::path::Path::new(given)).map_err(anyhow::Error::msg)?,
        ));
    }
    if given.len() == 64 && given.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(ExpectedHead::Hash(given.to_ascii_lowercase()));
    }
    anyhow::bail!("--expect-head {given}: neither a head file nor a 64-digit checkpoint hash")
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
    for path in value_of(args, "--keys-file") {
        for (key_id, hex) in keys_file(path)? {
            public.insert(key_id, verifying_key("--keys-file", &hex)?);
        }
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
    let received = (!args.iter().any(|a| a == "--no-decisions"))
        .then(|| reader::decisions(&settings.kafka, &topics.decisions, &codec, timeout))
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
        decisions: received.as_ref().map(|r| r.keys().cloned().collect()),
        outcomes,
        require_checkpointed: !args.iter().any(|a| a == "--allow-uncovered"),
    };
    let hasher = settings
        .service
        .hash_key_text()
        .map_err(anyhow::Error::msg)?
        .map(|key| Hasher::new(key.as_bytes()));
    let checks = Checks {
        received,
        hasher,
        expect_heads: value_of(args, "--expect-head")
            .into_iter()
            .map(expected_head)
            .collect::<anyhow::Result<_>>()?,
    };
    let read = started.elapsed();
    let report = verify_with(&input, &public, &checks);
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
    let problems = hitl_audit::service::start_problems(&settings);
    if !problems.is_empty() {
        return refuse_to_start(&ConfigError::Invalid(problems));
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
