//! A non-Rust client (Python: confluent-kafka + fastavro, from `schemas/*.avsc` alone) produces
//! decisions and decodes the router's outputs. `scripts/test.sh` installs the Python packages into
//! `.hitl/venv`; `HITL_PYTHON` picks another interpreter.

use std::{path::PathBuf, process::Command};

use hitl_tests::*;

fn python() -> PathBuf {
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

#[test]
fn python_client_interop() {
    let python = python();
    let probe = Command::new(&python)
        .args(["-c", "import confluent_kafka, fastavro"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{} lacks confluent-kafka/fastavro: run scripts/test.sh (it installs tests/python/requirements.txt \
         into .hitl/venv) or set HITL_PYTHON",
        python.display()
    );
    let topics = unique_topics("python");
    create_topics(&topics);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: interop\nrules:\n  - { name: confident, when: { confidence: { gte: 0.9 } }, then: auto_approve }\n\
         default: { review: { pool: general, sla: 1h } }\n",
    )
    .unwrap();
    let config = format!(
        "{}\n{}\n[service]\npolicy_path = \"{}\"\ninstance_id = \"{}\"\ngroup_id = \"{}\"\n",
        kafka_toml(),
        topics_toml(&topics),
        policy.display(),
        unique("py"),
        unique("py-group"),
    );
    let _router = Service::start("hitl-router", dir.path(), &config);
    let output = Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/interop.py"))
        .env("HITL_BOOTSTRAP", &broker().bootstrap)
        .env("HITL_TOPIC_DECISIONS", &topics.decisions)
        .env("HITL_TOPIC_OUTCOMES", &topics.outcomes)
        .env("HITL_TOPIC_REVIEW_REQUESTS", &topics.review_requests)
        .env("HITL_TOPIC_LIFECYCLE", &topics.lifecycle)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python interop failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
}
