//! What operators deploy: alert rules (promtool), the Grafana dashboard and docker-compose.yml are
//! checked as far as this machine allows (no Docker engine here): rules pass `promtool check` and
//! their unit tests, every metric they name is really exposed by a running router, and the compose
//! file's images are pinned and its HITL_* variables are accepted by the real config loader.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

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
fn dashboards_and_alerts_only_use_metrics_the_router_exposes() {
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
    let (_, exposed) = http_get(&router.http, "/metrics").unwrap();
    let exposed: BTreeSet<String> = exposed
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();

    let alerts = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let dashboard_text =
        std::fs::read_to_string(repo().join("deploy/grafana/router.json")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut used = metric_names(&alerts);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty(), "empty expr in {}", panel["title"]);
            used.extend(metric_names(expr));
        }
    }
    // Families that appear only once labelled values exist (shadow agreement, reload results) are
    // declared through their HELP line even before.
    let (_, raw) = http_get(&router.http, "/metrics").unwrap();
    let declared: BTreeSet<String> = raw
        .lines()
        .filter_map(|line| line.strip_prefix("# HELP "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect();
    for name in &used {
        let family = ["_bucket", "_total", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            exposed.contains(name) || declared.contains(family) || declared.contains(name),
            "{name} is used by deploy/ but the router does not expose it"
        );
    }
}

#[test]
fn compose_file_is_valid_pinned_and_its_settings_load() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let compose: serde_norway::Value =
        serde_norway::from_str(&text).expect("docker-compose.yml is YAML");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["kafka", "topics", "router", "prometheus", "grafana"] {
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
        environment.insert(
            "HITL_SERVICE__POLICY_PATH".into(),
            repo().join("config/policy.yaml").display().to_string(),
        );
        let loaded = hitl_runtime::load::<Settings<RouterSettings>>(
            Some(&repo().join("config/router.toml")),
            &environment,
        );
        assert!(loaded.is_ok(), "{name:?}: {}", loaded.unwrap_err());
    }
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(Path::new(&repo().join("config/router.toml")).exists());
}
