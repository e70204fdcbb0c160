//! The layered loader: defaults → file → environment; unknown fields and bad values refused with
//! every problem named; secrets never printed.

use std::collections::HashMap;

use hitl_runtime::{
    config::{Delivery, NoServiceSettings, SecurityProtocol, Settings},
    load, ConfigError,
};

type Plain = Settings<NoServiceSettings>;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn defaults_alone_are_valid() {
    let settings: Plain = load(None, &env(&[])).unwrap();
    assert_eq!(settings.topics.decisions, "hitl.decisions");
    assert_eq!(settings.kafka.delivery, Delivery::Transactional);
    assert_eq!(
        settings.kafka.session_timeout,
        std::time::Duration::from_secs(45)
    );
}

#[test]
fn file_overrides_defaults_and_environment_overrides_file() {
    let config = file(
        "[kafka]\nbootstrap_servers = \"a:1\"\ncommit_interval = \"250ms\"\ndelivery = \"idempotent\"\n\
         [kafka.librdkafka]\n\"socket.keepalive.enable\" = \"true\"\n[topics]\npartitions = 8\n",
    );
    let settings: Plain = load(
        Some(config.path()),
        &env(&[
            ("HITL_KAFKA__BOOTSTRAP_SERVERS", "b:2,c:3"),
            ("HITL_TOPICS__DECISIONS", "my.decisions"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(settings.kafka.bootstrap_servers, "b:2,c:3");
    assert_eq!(
        settings.kafka.commit_interval,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(settings.kafka.delivery, Delivery::Idempotent);
    assert_eq!(settings.kafka.librdkafka["socket.keepalive.enable"], "true");
    assert_eq!(settings.topics.partitions, 8);
    assert_eq!(settings.topics.decisions, "my.decisions");
}

#[test]
fn every_problem_is_listed_with_its_field() {
    let config = file(
        "[kafka]\nbootstrap_servers = \"nohost\"\ncommit_interval = \"0s\"\nsecurity_protocol = \"sasl_ssl\"\n\
         partition_assignment_strategy = \"sticky-ish\"\nssl_ca_location = \"/does/not/exist.pem\"\n\
         [topics]\ndecisions = \"bad topic!\"\npartitions = 0\n[codec]\nformat = \"confluent\"\n",
    );
    let error = load::<Plain>(Some(config.path()), &env(&[])).unwrap_err();
    let ConfigError::Invalid(problems) = &error else {
        panic!("{error}")
    };
    let text = problems.join("\n");
    for field in [
        "kafka.bootstrap_servers",
        "kafka.commit_interval",
        "kafka.sasl_mechanism",
        "kafka.partition_assignment_strategy",
        "kafka.ssl_ca_location",
        "topics.decisions",
        "topics.partitions",
        "codec.registry_url",
    ] {
        assert!(text.contains(field), "{field} missing from:\n{text}");
    }
}

#[test]
fn unknown_fields_and_bad_types_are_refused_by_name() {
    let typo = file("[kafka]\nbootstrap_server = \"a:1\"\n");
    let error = load::<Plain>(Some(typo.path()), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("bootstrap_server"), "{error}");
    let bad_duration = file("[kafka]\ncommit_interval = \"soon\"\n");
    let error = load::<Plain>(Some(bad_duration.path()), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("commit_interval"), "{error}");
    let bad_env = load::<Plain>(None, &env(&[("HITL_TOPICS__PARTITIONS", "many")]))
        .unwrap_err()
        .to_string();
    assert!(bad_env.contains("partitions"), "{bad_env}");
    let missing =
        load::<Plain>(Some(std::path::Path::new("/no/such/file.toml")), &env(&[])).unwrap_err();
    assert!(missing.to_string().contains("does not exist"));
}

#[test]
fn secrets_are_not_printed() {
    let config = file(
        "[kafka]\nsecurity_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
         sasl_username = \"svc\"\nsasl_password = \"hunter2\"\n",
    );
    let settings: Plain = load(Some(config.path()), &env(&[])).unwrap();
    assert_eq!(
        settings.kafka.security_protocol,
        SecurityProtocol::SaslPlaintext
    );
    assert_eq!(
        settings.kafka.sasl_password.as_ref().unwrap().expose(),
        "hunter2"
    );
    let printed = format!("{settings:?}");
    assert!(!printed.contains("hunter2") && printed.contains("***"));
    let client = hitl_runtime::kafka::client_config(&settings.kafka);
    assert_eq!(client.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
    assert_eq!(client.get("sasl.password"), Some("hunter2"));
}

/// Every key published in `config/` is known as a development key (so a service refuses it
/// without `--dev`), and the refusal names the field.
#[test]
fn the_published_development_keys_are_all_known_and_refused_without_dev() {
    use hitl_runtime::auth::{load_key_file, Fingerprint};
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config");
    let keys = std::path::Path::new(config).join("dev-keys.toml");
    let (set, fingerprints) = load_key_file(&keys).unwrap();
    assert!(set.len() >= 4);
    for fingerprint in &fingerprints {
        assert!(
            fingerprint.is_development_key(),
            "{} in config/dev-keys.toml is not in auth::DEVELOPMENT_KEYS",
            fingerprint.key_id
        );
    }
    // The clients' secrets (config/dev-clients.toml) and the services' own.
    let clients =
        std::fs::read_to_string(std::path::Path::new(config).join("dev-clients.toml")).unwrap();
    let router = std::fs::read_to_string(std::path::Path::new(config).join("router.toml")).unwrap();
    let assignment =
        std::fs::read_to_string(std::path::Path::new(config).join("assignment.toml")).unwrap();
    for text in [clients, router, assignment] {
        for line in text.lines() {
            let Some(value) = line
                .split_once('=')
                .filter(|(name, _)| {
                    let name = name.trim();
                    name == "secret" || name.ends_with("_secret")
                })
                .map(|(_, value)| value.trim().trim_matches('"'))
            else {
                continue;
            };
            let bytes = hex::decode(value).unwrap();
            assert!(
                Fingerprint::of("", &bytes).is_development_key(),
                "{line}: a published secret that is not in auth::DEVELOPMENT_KEYS"
            );
        }
    }
    // Refused without --dev, naming the field; accepted with it.
    let router = std::path::Path::new(config).join("router.toml");
    let environment = env(&[("HITL_TRUST__KEYS_FILE", keys.to_str().unwrap())]);
    let refused = load::<Plain>(Some(&router_without_service(&router)), &environment).unwrap_err();
    let ConfigError::Invalid(problems) = refused else {
        panic!("{refused}")
    };
    assert!(problems
        .iter()
        .any(|p| p.starts_with("trust.signing_secret: is a development key")));
    assert!(problems
        .iter()
        .any(|p| p.starts_with("trust.keys_file: key `") && p.contains("development key")));
    let mut dev = environment.clone();
    dev.insert("HITL_TRUST__DEV".into(), "true".into());
    load::<Plain>(Some(&router_without_service(&router)), &dev).unwrap();
}

/// `config/router.toml` without its `[service]` table (which `NoServiceSettings` refuses).
fn router_without_service(path: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(path).unwrap();
    let kept: String = text.split("\n[service]").next().unwrap().to_owned();
    let out = std::env::temp_dir().join(format!(
        "hitl-router-no-service-{}.toml",
        std::process::id()
    ));
    std::fs::write(&out, kept).unwrap();
    out
}
