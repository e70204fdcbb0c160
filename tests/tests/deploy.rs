//! What operators deploy: alert rules (promtool), the Grafana dashboard and docker-compose.yml are
//! checked as far as this machine allows (no Docker engine here): rules pass `promtool check` and
//! their unit tests, every metric they name is really exposed by the running services, and the compose
//! file's images are pinned and its HITL_* variables are accepted by the real config loader.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use hitl_assignment::AssignmentSettings;
use hitl_audit::AuditSettings;
use hitl_router::RouterSettings;
use hitl_runtime::config::Settings;
use hitl_tests::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .expect("promtool not found: scripts/setup.sh installs it (Debian package `prometheus`)");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

/// Every `hitl_…` metric name in a text, with histogram/counter suffixes as exposed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("hitl_") {
        let start = i + found;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        let preceded_by_word =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded_by_word {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn dashboards_and_alerts_only_use_metrics_the_services_expose() {
    let topics = unique_topics("deploy");
    create_topics(&topics);
    let dir = tempfile::tempdir().unwrap();
    let shadow = dir.path().join("shadow.yaml");
    std::fs::copy(repo().join("config/policy.yaml"), &shadow).unwrap();
    let config = format!(
        "{}\n{}\n[service]\npolicy_path = \"{}\"\nshadow_policy_path = \"{}\"\ninstance_id = \"{}\"\n\
         group_id = \"{}\"\n",
        kafka_toml(),
        topics_toml(&topics),
        repo().join("config/policy.yaml").display(),
        shadow.display(),
        unique("deploy"),
        unique("deploy-group"),
    );
    let router = Service::start("hitl-router", dir.path(), &config);
    // Labelled families appear once they have a sample: route a decision (with a shadow policy),
    // dead-letter junk, and make a policy reload fail.
    let producer = producer();
    let decision = hitl_schema::Decision {
        decision_id: "deploy-1".into(),
        workflow: "payments.fraud".into(),
        subject: "s".into(),
        action: "allow".into(),
        confidence: 0.95,
        risk_score: Some(0.1),
        amount: Some(10.0),
        priority: None,
        producer: "p".into(),
        model_name: "m".into(),
        model_version: None,
        features: Default::default(),
        context: Default::default(),
        sensitive_fields: vec![],
        created_at: hitl_runtime::now_millis(),
        sla_ms: None,
    };
    let bytes = hitl_schema::Codec::single_object()
        .encode_to_vec("", &decision)
        .unwrap();
    produce(&producer, &topics.decisions, "deploy-1", &bytes, &[]);
    produce(&producer, &topics.decisions, "junk", b"junk", &[]);
    flush(&producer);
    std::fs::write(&shadow, "version: broken\ndefault: nonsense\n").unwrap();
    wait_for(
        std::time::Duration::from_secs(60),
        "every family to have a sample",
        || {
            router.metric("hitl_router_dead_letters_total{class=\"decode.framing\"}")?;
            router.metric("hitl_router_policy_reloads_total{result=\"refused\"}")?;
            router
                .metric("hitl_router_shadow_evaluations_total{agrees=\"true\"}")
                .map(|_| ())
        },
    );
    let assignment = Service::start(
        "hitl-assignment",
        dir.path(),
        &format!(
            "{}\n{}\n[service]\ninstance_id = \"{}\"\ngroup_id = \"{}\"\ngauge_interval = \"200ms\"\n\
             tick_interval = \"100ms\"\n[service.pools.fast]\nlease = \"1s\"\nverdict_grace = \"0s\"\n\
             escalate_after_expiries = 1\nescalate_at_sla = []\nmin_sla = \"0s\"\n\
             on_sla_breach = {{ action = \"fallback\", status = \"REJECTED\" }}\n",
            kafka_toml(),
            topics_toml(&topics),
            unique("deploy-asg"),
            unique("deploy-asg-group"),
        ),
    );
    let audit = Service::start(
        "hitl-audit",
        dir.path(),
        &format!(
            "{}\n{}\n[service]\ninstance_id = \"{}\"\ngroup_id = \"{}\"\nsigning_key = \"{}\"\n\
             hash_key = \"deploy-test-hash-key\"\ncheckpoint_interval = \"500ms\"\n",
            kafka_toml(),
            topics_toml(&topics),
            unique("deploy-audit"),
            unique("deploy-audit-group"),
            "ab".repeat(32),
        ),
    );
    exercise_assignment(&topics, &assignment);
    wait_for(
        std::time::Duration::from_secs(60),
        "every audit family",
        || {
            for series in [
                r#"hitl_audit_feedback_records_total{source="QA_SAMPLE",overridden="false"}"#,
                r#"hitl_audit_feedback_records_total{source="HUMAN",overridden="false"}"#,
            ] {
                audit.metric(series)?;
            }
            Some(())
        },
    );
    // Samples, and families declared by their HELP line (labelled families have no sample until a
    // labelled value exists), from both services.
    let mut exposed = BTreeSet::new();
    let mut declared = BTreeSet::new();
    for service in [&router, &assignment, &audit] {
        let (_, raw) = http_get(&service.http, "/metrics").unwrap();
        exposed.extend(
            raw.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| line.split(['{', ' ']).next())
                .map(str::to_owned),
        );
        declared.extend(
            raw.lines()
                .filter_map(|line| line.strip_prefix("# HELP "))
                .filter_map(|rest| rest.split(' ').next())
                .map(str::to_owned),
        );
    }

    let alerts = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let mut used = metric_names(&alerts);
    for board in ["router", "oncall", "executive"] {
        let text =
            std::fs::read_to_string(repo().join(format!("deploy/grafana/{board}.json"))).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{board} has no panels");
        for panel in panels {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                assert!(!expr.trim().is_empty(), "empty expr in {}", panel["title"]);
                used.extend(metric_names(expr));
            }
        }
    }
    for name in &used {
        let family = ["_bucket", "_total", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            exposed.contains(name) || declared.contains(family) || declared.contains(name),
            "{name} is used by deploy/ but no service exposes it"
        );
    }
}

/// Gives every labelled assignment family a sample: an assignment, a QA label, a human outcome, a
/// lease expiry with escalation, an SLA fallback, a rejected verdict, a refused roster entry and a
/// dead letter.
fn exercise_assignment(topics: &hitl_runtime::config::Topics, assignment: &Service) {
    use hitl_schema::*;
    let codec = Codec::single_object();
    let producer = producer();
    let status = ReviewerStatus {
        reviewer_id: "deploy-reviewer".into(),
        roles: vec![],
        skills: vec![],
        pools: vec![],
        capacity: 2,
        partition: Some(0),
        presence: Presence::Online,
        updated_at: hitl_runtime::now_millis(),
    };
    let bytes = codec.encode_to_vec(&topics.reviewers, &status).unwrap();
    produce(&producer, &topics.reviewers, "deploy-reviewer", &bytes, &[]);
    // And one that is refused: unsigned.
    produce_unsigned(&producer, &topics.reviewers, "deploy-impostor", &bytes, &[]);
    flush(&producer);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let lease_secret = hex::decode(&trust().lease_secret).unwrap();
    let verdict = |id: &str, attempt: u32, kind: VerdictKind| {
        let verdict = Verdict {
            decision_id: id.into(),
            // The lease id the service derives under the test's lease secret.
            assignment_id: hitl_assignment::core::lease_token(
                &lease_secret,
                id,
                attempt,
                "deploy-reviewer",
            ),
            reviewer_id: "deploy-reviewer".into(),
            verdict: kind,
            amended_action: None,
            rationale: String::new(),
            decided_at: hitl_runtime::now_millis(),
            pool: "fast".into(),
        };
        let bytes = codec.encode_to_vec(&topics.verdicts, &verdict).unwrap();
        produce(&producer, &topics.verdicts, "fast", &bytes, &[]);
        flush(&producer);
    };
    // A verdict nobody asked for, rejected once the service has joined and restored its state:
    // from then on the SLA clocks below run against a working service.
    verdict("nobody", 1, VerdictKind::Approve);
    let within = std::time::Duration::from_secs(60);
    wait_for(within, "the service to read verdicts", || {
        assignment
            .metric(r#"hitl_assignment_rejected_verdicts_total{reason="unknown_decision"}"#)
            .map(|_| ())
    });
    let now = hitl_runtime::now_millis();
    let request = |id: &str, kind: ReviewKind, sla_ms: i64| ReviewRequest {
        decision: std::sync::Arc::new(Decision {
            decision_id: id.into(),
            workflow: "deploy".into(),
            subject: "s".into(),
            action: "allow".into(),
            confidence: 0.5,
            risk_score: None,
            amount: None,
            priority: None,
            producer: "model".into(),
            model_name: "m".into(),
            model_version: None,
            features: Default::default(),
            context: Default::default(),
            sensitive_fields: vec![],
            created_at: now,
            sla_ms: None,
        }),
        kind,
        pool: "fast".into(),
        required_roles: vec![],
        priority_tier: "normal".into(),
        sla_deadline: now + sla_ms,
        quorum: 1,
        policy_rule: "r".into(),
        policy_version: "v".into(),
        auto_status: None,
        routed_at: now,
    };
    // The router's part of their lifecycle (the audit labels only decisions it has seen).
    for id in ["expires", "qa", "human"] {
        let mut routed = LifecycleEvent::new(
            format!("{id}:router:routed"),
            id,
            LifecycleKind::Routed,
            "router",
            now,
        );
        routed.decision = Some(request(id, ReviewKind::Review, 0).decision.clone());
        routed.attributes.insert("route".into(), "human".into());
        let bytes = codec.encode_to_vec(&topics.lifecycle, &routed).unwrap();
        produce(&producer, &topics.lifecycle, id, &bytes, &[]);
    }
    // "expires" is held and never answered; "qa" is labeled; "human" follows once "qa" is done.
    for (id, kind, sla) in [
        ("expires", ReviewKind::Review, 4_000),
        ("qa", ReviewKind::QaSample, 600_000),
        ("human", ReviewKind::Review, 600_000),
    ] {
        let bytes = codec
            .encode_to_vec(&topics.review_requests, &request(id, kind, sla))
            .unwrap();
        produce(&producer, &topics.review_requests, "fast", &bytes, &[]);
    }
    flush(&producer);
    wait_for(within, "two assignments", || {
        (assignment
            .metric(r#"hitl_assignment_verdicts_total{pool="fast",verdict="APPROVE"}"#)
            .is_some()
            || assignment.metric("hitl_assignment_reviewer_utilisation")? >= 1.0)
            .then_some(())
    });
    verdict("qa", 1, VerdictKind::Approve);
    produce(&producer, &topics.verdicts, "fast", b"junk", &[]);
    flush(&producer);
    wait_for(within, "the third item assigned", || {
        assignment
            .metric(r#"hitl_assignment_qa_labels_total{pool="fast",agrees="true"}"#)
            .map(|_| ())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    verdict("human", 1, VerdictKind::Approve);
    let series = [
        r#"hitl_assignment_outcomes_total{pool="fast",decided_by="HUMAN",overridden="false"}"#,
        r#"hitl_assignment_outcomes_total{pool="fast",decided_by="SLA_FALLBACK",overridden="true"}"#,
        r#"hitl_assignment_sla_breaches_total{pool="fast"}"#,
        r#"hitl_assignment_reassignments_total{pool="fast",reason="lease_expired"}"#,
        r#"hitl_assignment_escalations_total{pool="fast",reason="lease_expiries"}"#,
        r#"hitl_assignment_rejected_verdicts_total{reason="unknown_decision"}"#,
        r#"hitl_assignment_dead_letters_total{class="decode.framing"}"#,
        r#"hitl_assignment_queue_depth{pool="fast",tier="normal"}"#,
    ];
    let deadline = std::time::Instant::now() + within;
    let missing = loop {
        let missing = series.iter().find(|s| assignment.metric(s).is_none());
        if missing.is_none() || std::time::Instant::now() >= deadline {
            break missing;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        missing.is_none(),
        "{missing:?} not exposed; log:\n{}",
        assignment.log_tail()
    );
}

#[test]
fn compose_file_is_valid_pinned_and_its_settings_load() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let compose: serde_norway::Value =
        serde_norway::from_str(&text).expect("docker-compose.yml is YAML");
    let services = compose["services"].as_mapping().expect("services");
    for name in [
        "kafka",
        "topics",
        "router",
        "assignment",
        "audit",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for (name, service) in services {
        if let Some(image) = service["image"].as_str() {
            let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest",
                "{name:?}: image {image} is not pinned"
            );
        } else {
            assert_eq!(
                service["build"].as_str(),
                Some("."),
                "{name:?} neither builds nor names an image"
            );
        }
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(repo().join(host).exists(), "{name:?} mounts missing {host}");
        }
        // The HITL_* variables must be accepted by the config loader, on top of the image's config.
        let environment: HashMap<String, String> = service["environment"]
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
            .filter(|(k, _)| k.starts_with("HITL_"))
            .collect();
        if environment.is_empty() {
            continue;
        }
        let mut environment = environment;
        // Inside the image these paths exist; here, point them at the repository's copies.
        if name.as_str() == Some("topics") {
            // hitl-admin reads no keys; the router's settings type stands in for its own here.
            environment.insert("HITL_TRUST__DEV".into(), "true".into());
            environment.insert(
                "HITL_TRUST__KEYS_FILE".into(),
                repo().join("config/dev-keys.toml").display().to_string(),
            );
        }
        if environment.contains_key("HITL_TRUST__KEYS_FILE") {
            environment.insert(
                "HITL_TRUST__KEYS_FILE".into(),
                repo().join("config/dev-keys.toml").display().to_string(),
            );
        }
        if !matches!(name.as_str(), Some("assignment" | "audit")) {
            environment.insert(
                "HITL_SERVICE__POLICY_PATH".into(),
                repo().join("config/policy.yaml").display().to_string(),
            );
        }
        let loaded = if name.as_str() == Some("audit") {
            hitl_runtime::load::<Settings<AuditSettings>>(
                Some(&repo().join("config/audit.toml")),
                &environment,
            )
            .map(|_| ())
        } else if name.as_str() == Some("assignment") {
            hitl_runtime::load::<Settings<AssignmentSettings>>(
                Some(&repo().join("config/assignment.toml")),
                &environment,
            )
            .map(|_| ())
        } else {
            hitl_runtime::load::<Settings<RouterSettings>>(
                Some(&repo().join("config/router.toml")),
                &environment,
            )
            .map(|_| ())
        };
        assert!(loaded.is_ok(), "{name:?}: {}", loaded.unwrap_err());
    }
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(Path::new(&repo().join("config/router.toml")).exists());
}
