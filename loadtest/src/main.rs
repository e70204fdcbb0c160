//! hitl-loadtest: `demo` (a live mixed load with a summary), `bench-router` (throughput ratio),
//! `bench-restore` (assignment state restore time), `bench-audit` (audit throughput, verify speed),
//! `audit-memory` (the audit core's memory per decision), `dedup-memory` (the router's memory per
//! remembered decision id) and `bench-dedup-restore` (restoring those ids).

use std::{process::ExitCode, time::Duration};

use hitl_router::RouterSettings;
use hitl_runtime::config::Settings;

/// mimalloc: the routing path is allocation-heavy (maps and strings of every record).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage:
  hitl-loadtest demo [--config FILE] [--rate N] [--duration SECS] [--no-reviewers]
  hitl-loadtest bench-router [--config FILE] [--count N] [--rounds N]
  hitl-loadtest bench-restore [--config FILE] [--count N]
  hitl-loadtest bench-audit [--config FILE] [--decisions N]
  hitl-loadtest audit-memory [--decisions N] [--whole]   (no broker needed)
  hitl-loadtest chaos [--decisions N] [--rate N] [--kills N] [--bounces N] [--pause SECS]
      [--poison-per-mille N] [--seed N] [--drain-timeout SECS] [--dir DIR] [--keep] [--examples N]
      [--report-only]   (starts its own broker and services from the binaries beside this one)
  hitl-loadtest chaos-verify --expectations FILE [--bootstrap HOST:PORT] [--examples N] [--report-only]
  hitl-loadtest dedup-memory [--count N]                 (no broker needed)
  hitl-loadtest bench-dedup-restore [--config FILE] [--count N]
Settings come from the router's config file and HITL_* variables (see config/router.toml); the
clients' signing keys from `--clients FILE` (default config/dev-clients.toml; see docs/trust.md).
`--dev` accepts the development keys of config/router.toml.";

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match args.iter().position(|arg| arg == name) {
        None => Ok(default),
        Some(index) => args
            .get(index + 1)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{name} needs a number\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("chaos") => return hitl_runtime::cli::finish(chaos(&args)),
        Some("chaos-verify") => return hitl_runtime::cli::finish(chaos_verify(&args)),
        _ => {}
    }
    if args.get(1).map(String::as_str) == Some("audit-memory") {
        return hitl_runtime::cli::finish(audit_memory(&args).map(|()| ExitCode::SUCCESS));
    }
    if args.get(1).map(String::as_str) == Some("dedup-memory") {
        let count = match flag(&args, "--count", 1_000_000u64) {
            Ok(count) => count,
            Err(error) => return hitl_runtime::cli::finish::<anyhow::Error>(Err(error)),
        };
        return hitl_runtime::cli::finish(
            hitl_loadtest::dedup::memory(count).map(|()| ExitCode::SUCCESS),
        );
    }
    let settings: Settings<RouterSettings> = match hitl_runtime::cli::load_from_process() {
        Ok(settings) => settings,
        Err(error) => return hitl_runtime::cli::refuse_to_start(&error),
    };
    if let Err(error) = hitl_loadtest::clients::init(&args) {
        return hitl_runtime::cli::finish::<anyhow::Error>(Err(error));
    }
    hitl_runtime::cli::finish(run(&args, settings))
}

fn audit_memory(args: &[String]) -> anyhow::Result<()> {
    let decisions = flag(args, "--decisions", 500_000u64)?;
    let whole = args.iter().any(|arg| arg == "--whole");
    hitl_loadtest::audit::memory(decisions, !whole)
}

fn text_flag(args: &[String], name: &str) -> Option<String> {
    args.windows(2)
        .find(|pair| pair[0] == name)
        .map(|pair| pair[1].clone())
}

/// `chaos`: the whole system under faults, checked by the independent verifier. Exits 1 on a
/// violation unless `--report-only`.
fn chaos(args: &[String]) -> anyhow::Result<ExitCode> {
    hitl_runtime::telemetry::init(&hitl_runtime::config::TelemetrySettings {
        log_level: "warn".into(),
        ..Default::default()
    });
    let bin_dir = std::env::current_exe()?
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no folder for this binary"))?
        .to_owned();
    let repository = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no repository"))?
        .to_owned();
    let defaults = hitl_loadtest::chaos::Options::ci(bin_dir, repository);
    let options = hitl_loadtest::chaos::Options {
        decisions: flag(args, "--decisions", defaults.decisions)?,
        rate: flag(args, "--rate", defaults.rate)?,
        kills: flag(args, "--kills", defaults.kills)?,
        bounces: flag(args, "--bounces", defaults.bounces)?,
        pause: Duration::from_secs(flag(args, "--pause", defaults.pause.as_secs())?),
        poison_per_mille: flag(args, "--poison-per-mille", defaults.poison_per_mille)?,
        seed: flag(args, "--seed", defaults.seed)?,
        drain_timeout: Duration::from_secs(flag(
            args,
            "--drain-timeout",
            defaults.drain_timeout.as_secs(),
        )?),
        examples: flag(args, "--examples", defaults.examples)?,
        dir: text_flag(args, "--dir").map(Into::into),
        keep: args.iter().any(|arg| arg == "--keep"),
        ..defaults
    };
    let run = hitl_loadtest::chaos::run(&options)?;
    println!("{}", run.text);
    let clean = run.report.violations.is_empty();
    Ok(if clean || args.iter().any(|arg| arg == "--report-only") {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `chaos-verify`: the verifier alone, against the topics a kept chaos run left.
fn chaos_verify(args: &[String]) -> anyhow::Result<ExitCode> {
    let path = text_flag(args, "--expectations")
        .ok_or_else(|| anyhow::anyhow!("--expectations FILE is needed\n{USAGE}"))?;
    let mut expectations: hitl_loadtest::chaos::verify::Expectations =
        serde_json::from_slice(&std::fs::read(&path)?)?;
    if let Some(bootstrap) = text_flag(args, "--bootstrap") {
        expectations.bootstrap = bootstrap;
    }
    let report = hitl_loadtest::chaos::verify::verify(&expectations)?;
    println!(
        "{}",
        report.render(&expectations, flag(args, "--examples", 3usize)?)
    );
    let clean = report.violations.is_empty();
    Ok(if clean || args.iter().any(|arg| arg == "--report-only") {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs the command that needs a broker; its exit status.
fn run(args: &[String], settings: Settings<RouterSettings>) -> anyhow::Result<ExitCode> {
    hitl_runtime::telemetry::init(&hitl_runtime::config::TelemetrySettings {
        log_level: "warn".into(),
        ..settings.telemetry.clone()
    });
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(hitl_runtime::kafka::ensure_topics(
        &settings.kafka,
        &settings.topics.specs(),
        settings.topics.replication_factor,
    ))?;
    match args.get(1).map(String::as_str) {
        Some("demo") => {
            let rate = flag(args, "--rate", 200u64)?;
            let duration = flag(args, "--duration", 30u64)?;
            let reviewers = !args.iter().any(|arg| arg == "--no-reviewers");
            let tally = hitl_loadtest::demo::run(
                &settings.kafka,
                &settings.topics,
                rate,
                Duration::from_secs(duration),
                reviewers,
            )?;
            anyhow::ensure!(
                tally.routed() > 0,
                "nothing was routed: is the router running?"
            );
            Ok(ExitCode::SUCCESS)
        }
        Some("bench-audit") => {
            let decisions = flag(args, "--decisions", 100_000u64)?;
            hitl_loadtest::audit::run(&settings.kafka, &runtime, decisions)?;
            Ok(ExitCode::SUCCESS)
        }
        Some("bench-dedup-restore") => {
            let count = flag(args, "--count", 1_000_000u64)?;
            hitl_loadtest::dedup::restore(&settings.kafka, &runtime, count)?;
            Ok(ExitCode::SUCCESS)
        }
        Some("bench-restore") => {
            let count = flag(args, "--count", 1_000_000u64)?;
            hitl_loadtest::restore::run(&settings.kafka, &runtime, count)?;
            Ok(ExitCode::SUCCESS)
        }
        Some("bench-router") => {
            let count = flag(args, "--count", 100_000u64)?;
            let rounds = flag(args, "--rounds", 3u32)?;
            let mut bench = settings.clone();
            let prefix = format!("bench-{:x}", hitl_runtime::now_millis());
            bench.topics = hitl_runtime::config::Topics {
                decisions: format!("{prefix}.decisions"),
                decisions_dlq: format!("{prefix}.dlq"),
                review_requests: format!("{prefix}.review-requests"),
                outcomes: format!("{prefix}.outcomes"),
                lifecycle: format!("{prefix}.lifecycle"),
                ..settings.topics.clone()
            };
            // The baselines' outputs: the passthrough's one topic, and a second one so that the
            // two-record baseline writes to two topics as the router does (an outcome or a review
            // request, and a lifecycle event).
            let baseline = |suffix: &str| hitl_runtime::config::TopicSpec {
                name: format!("{prefix}.decisions.{suffix}"),
                partitions: bench.topics.partitions,
                configs: vec![],
            };
            let mut specs = bench.topics.specs();
            specs.retain(|spec| spec.name.starts_with(&prefix));
            specs.push(baseline("passthrough"));
            specs.push(baseline("passthrough-lifecycle"));
            runtime.block_on(hitl_runtime::kafka::ensure_topics(&bench.kafka, &specs, 1))?;
            hitl_loadtest::bench::run(&bench, count, rounds)?;
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}
